//! The Loc-RIB's thread: a shell around the synchronous [`Rib`] core.
//! It reads the channel in batches, hands each message to `Rib::apply`
//! and sends what the core decides: exports to the subscribed neighbors
//! (waiting when one's channel is full, so the RIB goes no faster than
//! the slowest reader), FIB changes to the writer, and the core's own
//! timers back to itself.

use std::collections::HashMap;

use bgp::Prefix;
use tokio::sync::mpsc;

use crate::routing::peer_info::PeerId;
use crate::routing::rib::{Backlog, DrainConfig, FibChange, Outputs, Restart, Rib, RibMsg, ToPeer};

/// The RIB thread's outputs: channels and the daemon's runtime.
struct Shell {
    subscribers: HashMap<PeerId, mpsc::Sender<ToPeer>>,
    fib: Option<mpsc::UnboundedSender<Vec<FibChange>>>,
    /// Weak, so that the RIB (and its thread) ends when the last sender
    /// outside it is dropped.
    self_tx: mpsc::WeakUnboundedSender<RibMsg>,
    /// The daemon's runtime, for the timers.
    runtime: tokio::runtime::Handle,
}

impl Outputs for Shell {
    fn export(&mut self, peer: PeerId, m: ToPeer) {
        if let Some(tx) = self.subscribers.get(&peer) {
            // The RIB thread has no runtime of its own: it waits here.
            let _ = tx.blocking_send(m);
        }
    }

    fn fib(&mut self, ops: Vec<FibChange>) {
        if let Some(fib) = &self.fib {
            if fib.send(ops).is_ok() {
                crate::routing::rib::FIB_PROGRESS
                    .queued
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn later(&mut self, delay: std::time::Duration, m: RibMsg) {
        let tx = self.self_tx.clone();
        crate::tasks::spawn_on(&self.runtime, crate::tasks::Task::Timer, async move {
            tokio::time::sleep(delay).await;
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(m);
            }
        });
    }
}

impl Shell {
    /// The thread: takes what is queued in batches and applies it.
    fn run(mut self, mut rib: Rib, mut rx: mpsc::UnboundedReceiver<RibMsg>) {
        while let Some(msg) = rx.blocking_recv() {
            #[cfg(feature = "failpoints")]
            crate::failpoint::rib_stall();
            // Take whatever else is queued too (up to 256 messages):
            // changes move in batches.
            let mut next = Some(msg);
            let mut taken = 0;
            while let Some(m) = next {
                match &m {
                    RibMsg::Subscribe { peer, tx, .. } => {
                        self.subscribers.insert(*peer, tx.clone());
                    }
                    RibMsg::Unsubscribe(peer) => {
                        self.subscribers.remove(peer);
                    }
                    _ => {}
                }
                rib.apply(m, &mut self);
                taken += 1;
                next = if taken < 256 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            rib.end_batch(&mut self);
        }
    }
}

pub fn spawn(
    local_as: u32,
    local_routes: Vec<Prefix>,
    fib: Option<mpsc::UnboundedSender<Vec<FibChange>>>,
    multipath: bool,
    restart: Option<Restart>,
    drain_cfg: DrainConfig,
    backlog: Backlog,
) -> std::io::Result<mpsc::UnboundedSender<RibMsg>> {
    // Unbounded so that peers never wait on the RIB (which may be waiting
    // to hand them exports) and their messages stay in order.
    let (tx, rx) = mpsc::unbounded_channel();
    let deferral = restart.as_ref().map(|r| r.deferral);
    let rib = Rib::new(
        local_as,
        local_routes,
        fib.is_some(),
        multipath,
        restart,
        drain_cfg,
        backlog,
    );
    let shell = Shell {
        subscribers: HashMap::new(),
        fib,
        self_tx: tx.downgrade(),
        runtime: tokio::runtime::Handle::current(),
    };
    if let Some(d) = deferral {
        let t = tx.clone();
        crate::tasks::spawn(crate::tasks::Task::Timer, async move {
            tokio::time::sleep(d).await;
            let _ = t.send(RibMsg::DeferralOver);
        });
    }
    // The RIB has a core of its own: peers decode, judge and encode on
    // the daemon's thread while best paths and exports are chosen here.
    // It ends when the last sender is dropped.
    crate::tasks::thread(crate::tasks::Thread::Rib, move || shell.run(rib, rx))?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::peer_info::{ConnId, PeerInfo};
    use crate::routing::policy::{Policy, GRACEFUL_SHUTDOWN, NO_EXPORT};
    use crate::routing::rib::*;
    use bgp::AsPath;
    use bgp::{NextHop, PathAttributes};
    use std::cmp::Ordering;
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use tokio::sync::oneshot;

    /// A RIB with one subscriber, neighbor 9 in AS 65009 taking IPv4
    /// through `policy`: the RIB, what the neighbor is sent, its count.
    fn subscribed(
        policy: Policy,
    ) -> (
        mpsc::UnboundedSender<RibMsg>,
        mpsc::Receiver<ToPeer>,
        Exported,
    ) {
        subscribed_with_fib(policy, None)
    }

    /// As [`subscribed`], the RIB's kernel changes going to `fib`.
    fn subscribed_with_fib(
        policy: Policy,
        fib: Option<mpsc::UnboundedSender<Vec<FibChange>>>,
    ) -> (
        mpsc::UnboundedSender<RibMsg>,
        mpsc::Receiver<ToPeer>,
        Exported,
    ) {
        let rib = spawn(
            64612,
            Vec::new(),
            fib,
            false,
            None,
            DrainConfig {
                local_pref: 0,
                prepend: 0,
                withdraw_after: None,
            },
            Backlog::default(),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(64);
        let count = Exported::default();
        rib.send(RibMsg::Subscribe {
            peer: PeerId(9),
            asn: Some(65009),
            ebgp: true,
            policy: Arc::new(policy),
            tx,
            exported: count.clone(),
            families: vec![bgp::Afi::Ipv4],
        })
        .unwrap();
        (rib, rx, count)
    }

    /// An attribute set as AS 65001 sends it.
    fn from_65001() -> Arc<PathAttributes> {
        Arc::new(PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(AsPath::from_sequence([65001])),
            ..Default::default()
        })
    }

    fn peer(id: u64, asn: u32, ebgp: bool, rid: &str) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            id: PeerId(id),
            name: format!("p{id}"),
            address: format!("10.0.0.{id}").parse().unwrap(),
            asn,
            router_id: rid.parse().unwrap(),
            ebgp,
            vm: None,
            group: None,
            interface: None,
            kernel: false,
        })
    }

    fn path(peer: Arc<PeerInfo>, f: impl FnOnce(&mut PathAttributes)) -> Path {
        let mut a = PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(AsPath::from_sequence([peer.asn])),
            ..Default::default()
        };
        f(&mut a);
        Path::new(Some(peer), None, Arc::new(a))
    }

    #[test]
    fn best_path_tie_breakers_in_order() {
        let a = peer(1, 65001, true, "10.0.0.1");
        let b = peer(2, 65002, true, "10.0.0.2");
        // Local preference first.
        let x = path(a.clone(), |x| x.local_pref = Some(200));
        let y = path(b.clone(), |_| {});
        assert_eq!(compare(&x, &y), Ordering::Less);
        // Then AS-path length.
        let x = path(a.clone(), |x| {
            x.as_path = Some(AsPath::from_sequence([65001, 1]))
        });
        assert_eq!(compare(&x, &y), Ordering::Greater);
        // Then origin.
        let x = path(a.clone(), |x| x.origin = Some(bgp::Origin::Incomplete));
        assert_eq!(compare(&x, &y), Ordering::Greater);
        // MED counts only within one neighbor AS.
        let x = path(a.clone(), |x| x.med = Some(50));
        assert_eq!(
            compare(&x, &y),
            Ordering::Less,
            "different AS: MED ignored, router id decides"
        );
        let c = peer(3, 65001, true, "10.0.0.0");
        let z = path(c.clone(), |x| x.med = Some(10));
        assert_eq!(compare(&z, &x), Ordering::Less, "same AS: lower MED wins");
        // eBGP over iBGP.
        let i = peer(4, 64612, false, "10.0.0.0");
        let w = path(i, |x| x.as_path = Some(AsPath::from_sequence([65009])));
        assert_eq!(compare(&y, &w), Ordering::Less);
        // Lowest router id, then lowest address.
        let d = peer(5, 65002, true, "10.0.0.2");
        assert_eq!(
            compare(&path(b.clone(), |_| {}), &path(d, |_| {})),
            Ordering::Less
        );
        // Local routes beat everything.
        let local = Path::new(None, None, Arc::new(PathAttributes::default()));
        assert_eq!(compare(&local, &x), Ordering::Less);
    }

    /// A reader waits while the RIB is more than BACKLOG_MAX behind, and
    /// goes on once it has caught up to the limit.
    #[tokio::test]
    async fn readers_wait_for_the_backlog() {
        let b = Backlog::default();
        b.add(BACKLOG_MAX + 10);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.within_limit().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "past the limit: waits");
        b.applied(9);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "one over the limit: still waits");
        b.applied(1);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken at the limit")
            .unwrap();
        // Within the limit, at once.
        b.within_limit().await;
    }

    /// A neighbor configured for one family is exported that family's
    /// prefixes only, counts no other, and a session's refeed of the other
    /// family is empty.
    #[tokio::test]
    async fn export_only_the_neighbors_families() {
        let mut accept_all = Policy::hypervisor_default();
        accept_all.default_accept = true;
        let (rib, mut rx, count) = subscribed(accept_all);
        let attrs = from_65001();
        let v4: Prefix = "198.51.100.0/24".parse().unwrap();
        let v6: Prefix = "2001:db8:1::/48".parse().unwrap();
        rib.send(RibMsg::Update {
            peer: peer(1, 65001, true, "10.0.0.1"),
            announce: vec![
                (v4, NextHop::V4("10.0.0.1".parse().unwrap()), attrs.clone()),
                (
                    v6,
                    NextHop::V6 {
                        global: "2001:db8::1".parse().unwrap(),
                        link_local: None,
                    },
                    attrs,
                ),
            ],
            withdraw: Vec::new(),
        })
        .unwrap();
        // Answered once the update has been exported.
        let (q, a) = oneshot::channel();
        rib.send(RibMsg::Stats(q)).unwrap();
        assert_eq!(a.await.unwrap().prefixes, 2, "both in the Loc-RIB");
        let mut exported = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let ToPeer::Export(changes) = m {
                exported.extend(changes.into_iter().map(|(p, _)| p));
            }
        }
        assert_eq!(exported, vec![v4]);
        assert_eq!(count.get(bgp::Afi::Ipv4), 1);
        assert_eq!(count.get(bgp::Afi::Ipv6), 0);
        for (family, want) in [
            (bgp::AfiSafi::IPV4_UNICAST, vec![v4]),
            (bgp::AfiSafi::IPV6_UNICAST, vec![]),
        ] {
            rib.send(RibMsg::Refeed {
                peer: PeerId(9),
                conn: ConnId(3),
                family,
            })
            .unwrap();
            match rx.recv().await {
                Some(ToPeer::Refeed {
                    conn: ConnId(3),
                    family: f,
                    routes,
                    end: true,
                }) if f == family => {
                    let got: Vec<Prefix> = routes.into_iter().map(|(p, _)| p).collect();
                    assert_eq!(got, want, "{family}");
                }
                _ => panic!("no refeed of {family}"),
            }
        }
    }

    /// A peer renamed (its VM found in the inventory) announces its routes
    /// again with the same attribute sets: an export that depends on the
    /// VM changes, and the neighbor is told, though nothing else did.
    #[tokio::test]
    async fn a_renamed_peer_is_exported_by_its_new_name() {
        let web = Policy {
            name: "web".into(),
            as_path: crate::routing::policy::AsPathMode::Keep,
            default_accept: false,
            terms: vec![crate::routing::policy::Term::accept(
                crate::routing::policy::Match {
                    vm: Some("web1".into()),
                    ..Default::default()
                },
            )],
        };
        let (rib, mut rx, count) = subscribed(web);
        let attrs = from_65001();
        let p: Prefix = "198.51.100.0/24".parse().unwrap();
        let nh = NextHop::V4("10.0.0.1".parse().unwrap());
        let unnamed = peer(1, 65001, true, "10.0.0.1");
        let mut named = (*unnamed).clone();
        named.vm = Some("web1".into());
        let sent = |rx: &mut mpsc::Receiver<ToPeer>| {
            let mut v = Vec::new();
            while let Ok(m) = rx.try_recv() {
                if let ToPeer::Export(changes) = m {
                    v.extend(changes.into_iter().map(|(p, a)| (p, a.is_some())));
                }
            }
            v
        };
        let stats = || async {
            let (q, a) = oneshot::channel();
            rib.send(RibMsg::Stats(q)).unwrap();
            a.await.unwrap()
        };
        for (who, want, n) in [
            (unnamed.clone(), vec![], 0),
            (Arc::new(named), vec![(p, true)], 1),
            (unnamed, vec![(p, false)], 0),
        ] {
            rib.send(RibMsg::Update {
                peer: who.clone(),
                announce: vec![(p, nh, attrs.clone())],
                withdraw: Vec::new(),
            })
            .unwrap();
            stats().await;
            assert_eq!(sent(&mut rx), want, "as {:?}", who.vm);
            assert_eq!(count.get(bgp::Afi::Ipv4), n);
        }
    }

    /// A withdrawal goes out exactly when the neighbor has the route under
    /// the rules in force, though the route's export was decided (and
    /// kept on it) under other rules before a reload.
    #[tokio::test]
    async fn a_withdrawal_follows_the_policy_reloaded_since() {
        let mut accept_all = Policy::hypervisor_default();
        accept_all.default_accept = true;
        let accept_all = Arc::new(accept_all);
        let refuse_all = Arc::new(Policy {
            name: "none".into(),
            as_path: crate::routing::policy::AsPathMode::Keep,
            default_accept: false,
            terms: Vec::new(),
        });
        let (rib, mut rx, count) = subscribed((*refuse_all).clone());
        let p: Prefix = "198.51.100.0/24".parse().unwrap();
        let from = peer(1, 65001, true, "10.0.0.1");
        let nh = NextHop::V4("10.0.0.1".parse().unwrap());
        let announce = RibMsg::Update {
            peer: from.clone(),
            announce: vec![(p, nh, from_65001())],
            withdraw: Vec::new(),
        };
        let withdraw = || RibMsg::Update {
            peer: from.clone(),
            announce: Vec::new(),
            withdraw: vec![p],
        };
        let policy = |p: &Arc<Policy>| RibMsg::SetPolicy {
            peer: PeerId(9),
            policy: p.clone(),
        };
        let steps = [
            (announce, vec![], 0),
            (policy(&accept_all), vec![(p, true)], 1),
            (withdraw(), vec![(p, false)], 0),
            (
                RibMsg::Update {
                    peer: from.clone(),
                    announce: vec![(p, nh, from_65001())],
                    withdraw: Vec::new(),
                },
                vec![(p, true)],
                1,
            ),
            (policy(&refuse_all), vec![(p, false)], 0),
            (withdraw(), vec![], 0),
        ];
        for (i, (m, want, n)) in steps.into_iter().enumerate() {
            rib.send(m).unwrap();
            let (q, a) = oneshot::channel();
            rib.send(RibMsg::Stats(q)).unwrap();
            a.await.unwrap();
            let mut sent = Vec::new();
            while let Ok(m) = rx.try_recv() {
                if let ToPeer::Export(changes) = m {
                    sent.extend(changes.into_iter().map(|(p, a)| (p, a.is_some())));
                }
            }
            assert_eq!(sent, want, "step {i}");
            assert_eq!(count.get(bgp::Afi::Ipv4), n, "step {i}");
        }
    }

    /// RFC 8326 §4 locally: a drained VM's path loses best-path selection
    /// to another VM's path for the same prefix, upstream and in the
    /// kernel, and wins it back when the drain ends. A path its sender
    /// marked GRACEFUL_SHUTDOWN loses the same way, and so does a VM's
    /// path marked NO_EXPORT.
    #[tokio::test]
    async fn a_drained_path_loses_to_another_vm() {
        let (fib_tx, mut fib_rx) = mpsc::unbounded_channel();
        let mut accept_all = Policy::hypervisor_default();
        accept_all.default_accept = true;
        let (rib, mut rx, _) = subscribed_with_fib(accept_all, Some(fib_tx));
        let vm = |id: u64, rid: &str| {
            let mut p = (*peer(id, 64613, true, rid)).clone();
            p.group = Some("vms".into());
            p.interface = Some(crate::southbound::net::Interface {
                name: format!("tap{id}"),
                index: id as u32,
            });
            p.kernel = true;
            Arc::new(p)
        };
        // tap1 has the lower router id: best while nothing is drained.
        let (a, b) = (vm(1, "10.0.0.1"), vm(2, "10.0.0.2"));
        let p: Prefix = "10.3.0.53/32".parse().unwrap();
        let attrs = |communities: Vec<u32>| {
            Arc::new(PathAttributes {
                origin: Some(bgp::Origin::Igp),
                as_path: Some(AsPath::from_sequence([64613])),
                communities,
                ..Default::default()
            })
        };
        let announce = |from: &Arc<PeerInfo>, communities| RibMsg::Update {
            peer: from.clone(),
            announce: vec![(
                p,
                NextHop::V4(from.address.to_string().parse().unwrap()),
                attrs(communities),
            )],
            withdraw: Vec::new(),
        };
        let settle = || async {
            let (q, r) = oneshot::channel();
            rib.send(RibMsg::Stats(q)).unwrap();
            r.await.unwrap();
        };
        let drain = |vm: &str, state| {
            let (reply, r) = oneshot::channel();
            rib.send(RibMsg::Drain {
                vm: Some(vm.into()),
                state,
                reply,
            })
            .unwrap();
            r
        };
        // What the neighbor was sent last for `p`: its communities.
        let mut sent = move || {
            let mut last = None;
            while let Ok(m) = rx.try_recv() {
                if let ToPeer::Export(changes) = m {
                    for (_, a) in changes {
                        last = Some(a.map(|a| a.communities.clone()));
                    }
                }
            }
            last
        };
        // Where the kernel was told `p` goes.
        let mut kernel = move || {
            let mut last = None;
            while let Ok(ops) = fib_rx.try_recv() {
                for op in ops {
                    if let FibChange::Install { hops, .. } = op {
                        last = Some(hops.iter().map(|h| h.1).collect::<Vec<_>>());
                    }
                }
            }
            last
        };
        rib.send(announce(&a, vec![])).unwrap();
        rib.send(announce(&b, vec![])).unwrap();
        settle().await;
        assert_eq!(sent(), Some(Some(vec![])));
        assert_eq!(kernel(), Some(vec![Some(1)]));

        // Draining tap1: tap2's path is best, sent without GRACEFUL_SHUTDOWN.
        assert_eq!(
            drain("tap1", Some(DrainState::Shutdown)).await.unwrap(),
            Ok(1)
        );
        settle().await;
        assert_eq!(
            sent(),
            None,
            "tap2's path goes out as tap1's did: no change"
        );
        assert_eq!(kernel(), Some(vec![Some(2)]));
        // Withdrawn: still nothing to change upstream, tap2 carries it.
        assert_eq!(
            drain("tap1", Some(DrainState::Withdrawn)).await.unwrap(),
            Ok(1)
        );
        settle().await;
        assert_eq!(sent(), None);
        assert_eq!(kernel(), None);
        // Both drained: tap1 is best again, and withdrawn upstream.
        assert_eq!(
            drain("tap2", Some(DrainState::Shutdown)).await.unwrap(),
            Ok(1)
        );
        settle().await;
        assert_eq!(sent(), Some(None));
        assert_eq!(kernel(), Some(vec![Some(1)]));
        // tap1 undrained: best, sent plain.
        assert_eq!(drain("tap1", None).await.unwrap(), Ok(1));
        settle().await;
        assert_eq!(sent(), Some(Some(vec![])));
        assert_eq!(kernel(), None, "tap1 was in the kernel already");
        // tap1's own BGP speaker marks its path GRACEFUL_SHUTDOWN (a drain
        // from inside the guest): tap2's path wins.
        assert_eq!(drain("tap2", None).await.unwrap(), Ok(1));
        rib.send(announce(&a, vec![GRACEFUL_SHUTDOWN])).unwrap();
        settle().await;
        assert_eq!(sent(), None, "tap2's plain path is best, as tap1's was");
        assert_eq!(kernel(), Some(vec![Some(2)]));
        // A VM that marks its path NO_EXPORT cannot take the prefix off
        // upstream for the other: tap1's is plain again, tap2's NO_EXPORT.
        rib.send(announce(&a, vec![])).unwrap();
        rib.send(announce(&b, vec![NO_EXPORT])).unwrap();
        settle().await;
        assert_eq!(sent(), None, "still a plain path upstream");
        assert_eq!(kernel(), Some(vec![Some(1)]));
        // Alone, it is best (and not exported).
        rib.send(RibMsg::Update {
            peer: a.clone(),
            announce: Vec::new(),
            withdraw: vec![p],
        })
        .unwrap();
        settle().await;
        assert_eq!(sent(), Some(None));
        assert_eq!(
            kernel(),
            Some(vec![Some(2)]),
            "still installed: it is valid here"
        );
    }

    /// A peer that withdraws its table takes its attribute sets with it:
    /// they do not wait for the next table to grow the set.
    #[tokio::test]
    async fn a_withdrawn_table_leaves_no_attribute_sets() {
        // The neighbor takes nothing: no exported sets, only the peer's.
        let (rib, _rx, _count) = subscribed(Policy {
            name: "none".into(),
            as_path: crate::routing::policy::AsPathMode::Keep,
            default_accept: false,
            terms: Vec::new(),
        });
        let from = peer(1, 65001, true, "10.0.0.1");
        let nh = NextHop::V4("10.0.0.1".parse().unwrap());
        let prefixes: Vec<Prefix> = (0..3000u32)
            .map(|i| Prefix::new(Ipv4Addr::from((10 << 24) | (i << 8)).into(), 24).unwrap())
            .collect();
        let announce = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let attrs = Arc::new(PathAttributes {
                    origin: Some(bgp::Origin::Igp),
                    as_path: Some(AsPath::from_sequence([65001, i as u32])),
                    ..Default::default()
                });
                (*p, nh, attrs)
            })
            .collect();
        let stats = || async {
            let (q, a) = oneshot::channel();
            rib.send(RibMsg::Stats(q)).unwrap();
            a.await.unwrap()
        };
        rib.send(RibMsg::Update {
            peer: from.clone(),
            announce,
            withdraw: Vec::new(),
        })
        .unwrap();
        let s = stats().await;
        assert_eq!((s.prefixes, s.attribute_sets), (3000, 3000));
        rib.send(RibMsg::Update {
            peer: from.clone(),
            announce: Vec::new(),
            withdraw: prefixes,
        })
        .unwrap();
        // Dropped a little later (SWEEP_DELAY), not while the withdrawal
        // goes out.
        let mut s = stats().await;
        let until = std::time::Instant::now() + SWEEP_DELAY * 10;
        while s.attribute_sets > 0 && std::time::Instant::now() < until {
            tokio::time::sleep(SWEEP_DELAY / 10).await;
            s = stats().await;
        }
        assert_eq!((s.prefixes, s.attribute_sets), (0, 0));
    }
}

//! UPDATE processing from the wire through authorisation and policy into
//! the Loc-RIB, the kernel and the export to an upstream neighbor: the
//! path a hostile VM's bytes take. A VM ("vm-a", allowed 10.3.0.0/24 and
//! 2001:db8:3::/48 by its inventory entry or, after some policy steps, by
//! the group filter; next hop its own address) sends a stream of arbitrary
//! messages, loses its session with or without graceful restart, and gets
//! new policy snapshots. Beside it, "vm-b" owns 10.3.0.77/32, inside
//! vm-a's range.
//!
//! After every step, whatever the input:
//! - the Loc-RIB holds exactly vm-a's accepted routes, plus vm-b's;
//! - each of vm-a's routes passes an oracle written apart from the
//!   authorisation code: inside vm-a's space, not vm-b's, a next hop of
//!   vm-a's own, an AS path within the limit that begins with vm-a's AS
//!   and holds no AS 0, no AS of ours and no confederation segment, no
//!   unknown attribute, no more than max-prefixes;
//! - refused routes kept stay within `MAX_KEPT_REFUSED`;
//! - the kernel and the upstream neighbor were told exactly that set;
//! - vm-b's route stays vm-b's, in the RIB, the kernel and upstream.
//!
//! The steps between messages (a teardown ends in PeerDown, a lost session
//! marks routes stale or withdraws them) mirror what the peer task does
//! with the Adj-RIB-In's answers; the Adj-RIB-In and the Loc-RIB are the
//! daemon's own.
//!
//! Input: one byte of negotiated context, then steps, each one byte of
//! kind followed by what it needs.

#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bgp::{AfiSafi, Context, Message, NextHop, PathAttributes, Prefix};
use libfuzzer_sys::fuzz_target;
use tapir::adj_rib_in::{AdjRibIn, Judge, PathRules, MAX_KEPT_REFUSED};
use tapir::authorisation::VmPolicy;
use tapir::config::{ImportRules, MaxPrefixAction};
use tapir::net::Interface;
use tapir::policy::Policy;
use tapir::peer_info::PeerInfo;
use tapir::rib::{self, DrainConfig, FibChange, RibMsg, ToPeer};
use tokio::sync::{mpsc, oneshot};

const LOCAL_AS: u32 = 64600;
const VM_AS: u32 = 64613;
const UPSTREAM: u64 = 1000;

fn vm(id: u64, name: &str, address: IpAddr, index: u32) -> Arc<PeerInfo> {
    Arc::new(PeerInfo {
        id,
        name: name.into(),
        address,
        asn: VM_AS,
        router_id: Ipv4Addr::new(10, 192, 24, id as u8),
        ebgp: true,
        vm: Some(name.into()),
        group: Some("vms".into()),
        interface: Some(Interface {
            name: format!("tap{index}"),
            index,
        }),
        kernel: true,
    })
}

fn policy(max_prefixes: usize, teardown: bool, b_owns_more: bool, entry: bool) -> VmPolicy {
    let mut owners = vec![("10.3.0.77/32".parse().unwrap(), "vm-b".to_string())];
    if b_owns_more {
        // A registration moved part of vm-a's space to vm-b.
        owners.push(("10.3.0.128/25{25,32}".parse().unwrap(), "vm-b".to_string()));
    }
    if entry {
        // The inventory's list holds vm-a's own prefixes too.
        owners.push(("10.3.0.0/24{24,32}".parse().unwrap(), "vm-a".to_string()));
    }
    let set = |v: &[&str]| tapir::prefix_set::PrefixSet {
        patterns: v.iter().map(|p| p.parse().unwrap()).collect(),
    };
    VmPolicy {
        group: "vms".into(),
        entry: entry.then(|| {
            (
                "vm-a".into(),
                vec![
                    "10.3.0.0/24{24,32}".parse().unwrap(),
                    "2001:db8:3::/48{48,128}".parse().unwrap(),
                ],
            )
        }),
        group_filter: (!entry).then(|| {
            (
                "BGP-FROM-VMS".into(),
                set(&["10.3.0.0/24{32,32}", "2001:db8:3::/48{128,128}"]),
            )
        }),
        owners: owners.into(),
        protected: [].into(),
        own_addresses: vec![
            IpAddr::V4(Ipv4Addr::new(10, 192, 24, 4)),
            IpAddr::V6("2001:db8::4".parse::<Ipv6Addr>().unwrap()),
            IpAddr::V6("fe80::4".parse::<Ipv6Addr>().unwrap()),
        ],
        max_prefixes,
        max_prefixes_action: if teardown {
            MaxPrefixAction::Teardown
        } else {
            MaxPrefixAction::Reject
        },
        import_rules: ImportRules::vm_default(),
    }
}

/// vm-a's session: eBGP from AS 64613, under its group's rules.
fn rules(pol: &VmPolicy) -> PathRules<'_> {
    PathRules {
        local_as: LOCAL_AS,
        peer_as: VM_AS,
        ebgp: true,
        enforce_first_as: pol.import_rules.enforce_first_as,
        allow_attributes: pol.import_rules.allow_attributes.as_deref(),
    }
}

/// What vm-a may have accepted, written apart from `VmPolicy::judge`.
fn allowed(p: &Prefix, nh: &NextHop, pol: &VmPolicy) -> bool {
    let inside = |base: &str, min: u8, max: u8| {
        let b: Prefix = base.parse().unwrap();
        b.contains(p) && (min..=max).contains(&p.len())
    };
    let (v4_min, v6_min) = if pol.entry.is_some() {
        (24, 48)
    } else {
        (32, 128)
    };
    let space = inside("10.3.0.0/24", v4_min, 32) || inside("2001:db8:3::/48", v6_min, 128);
    let b_owns_more = pol.owners.iter().filter(|o| o.1 == "vm-b").count() > 1;
    let vm_b = p.to_string() == "10.3.0.77/32" || (b_owns_more && inside("10.3.0.128/25", 25, 32));
    let own_v6 = |a: Ipv6Addr| {
        a == "2001:db8::4".parse::<Ipv6Addr>().unwrap()
            || a == "fe80::4".parse::<Ipv6Addr>().unwrap()
    };
    let hop = match *nh {
        NextHop::V4(a) => a == Ipv4Addr::new(10, 192, 24, 4),
        NextHop::V6 { global, link_local } => {
            (own_v6(global) || global.is_unspecified() && link_local.is_some())
                && link_local.is_none_or(own_v6)
        }
    };
    space && !vm_b && hop
}

struct World {
    rib: mpsc::UnboundedSender<RibMsg>,
    fib_rx: mpsc::UnboundedReceiver<Vec<FibChange>>,
    export_rx: mpsc::Receiver<ToPeer>,
    /// What the kernel and the upstream were told, replayed.
    fib: BTreeMap<Prefix, Vec<(IpAddr, Option<u32>)>>,
    exported: BTreeMap<Prefix, Arc<PathAttributes>>,
}

impl World {
    /// Waits until the RIB has handled everything sent so far, then checks
    /// the invariants.
    async fn check(
        &mut self,
        adj: &AdjRibIn,
        pol: &VmPolicy,
        max_as_path_length: usize,
        b_prefix: Prefix,
    ) {
        let (tx, rx) = oneshot::channel();
        self.rib.send(RibMsg::Show(tx)).unwrap();
        let table = rx.await.unwrap();
        while let Ok(changes) = self.fib_rx.try_recv() {
            for c in changes {
                match c {
                    FibChange::Install { prefix, hops } => {
                        self.fib.insert(prefix, hops.to_vec());
                    }
                    FibChange::Remove { prefix } => {
                        assert!(
                            self.fib.remove(&prefix).is_some(),
                            "{prefix} removed, never installed"
                        );
                    }
                }
            }
        }
        while let Ok(m) = self.export_rx.try_recv() {
            if let ToPeer::Export(changes) = m {
                for (p, a) in changes {
                    match a {
                        Some(a) => {
                            self.exported.insert(p, a);
                        }
                        None => {
                            assert!(
                                self.exported.remove(&p).is_some(),
                                "{p} withdrawn, never sent"
                            );
                        }
                    }
                }
            }
        }
        let mut want: BTreeMap<Prefix, NextHop> = adj
            .iter()
            .filter(|(_, r)| !r.rejected)
            .map(|(p, r)| (p, r.next_hop()))
            .collect();
        // Every accepted route, stale ones too (a new snapshot judges them
        // all), passes the oracle and the limits.
        for (p, nh) in &want {
            assert!(
                allowed(p, nh, pol),
                "{p} via {nh} accepted against the policy"
            );
        }
        assert!(
            adj.len() - adj.accepted() <= MAX_KEPT_REFUSED,
            "{} refused routes kept",
            adj.len() - adj.accepted()
        );
        assert!(
            want.len() <= pol.max_prefixes,
            "more than max-prefixes accepted"
        );
        for (p, r) in adj.iter().filter(|(_, r)| !r.rejected) {
            let asns: usize = r
                .attrs()
                .as_path
                .as_ref()
                .map_or(0, |a| a.segments.iter().map(|s| s.asns().len()).sum());
            assert!(
                asns <= max_as_path_length,
                "{p}: AS path of {asns} accepted"
            );
            // A hostile path never passes: it begins with the VM's AS, and
            // holds no AS 0, no AS of ours, no confederation segment.
            let path = r.attrs().as_path.clone().unwrap_or_default();
            assert_eq!(
                path.segments.first(),
                path.segments
                    .first()
                    .filter(|s| matches!(s, bgp::AsSegment::Sequence(v) if v[0] == VM_AS)),
                "{p}: AS path {path:?} accepted"
            );
            assert!(!path.segments.is_empty(), "{p}: empty AS path accepted");
            for s in &path.segments {
                assert!(
                    matches!(s, bgp::AsSegment::Sequence(_) | bgp::AsSegment::Set(_))
                        && !s.asns().contains(&0)
                        && !s.asns().contains(&LOCAL_AS),
                    "{p}: AS path {path:?} accepted"
                );
            }
            assert!(
                r.attrs().unknown.is_empty(),
                "{p}: unknown attributes kept from a VM"
            );
        }
        assert!(!want.contains_key(&b_prefix), "vm-a got vm-b's prefix");
        want.insert(b_prefix, NextHop::V4(Ipv4Addr::new(10, 192, 24, 9)));
        let in_rib: BTreeMap<String, String> = table
            .iter()
            .map(|e| (e.prefix.clone(), e.from.clone()))
            .collect();
        let want_rib: BTreeMap<String, String> = want
            .keys()
            .map(|p| {
                let from = if *p == b_prefix { "vm-b" } else { "vm-a" };
                (p.to_string(), from.to_string())
            })
            .collect();
        assert_eq!(in_rib, want_rib, "Loc-RIB differs from the accepted routes");
        let fib: Vec<&Prefix> = self.fib.keys().collect();
        let want_keys: Vec<&Prefix> = want.keys().collect();
        assert_eq!(fib, want_keys, "the kernel was told something else");
        for (p, hops) in &self.fib {
            let via = match want[p] {
                NextHop::V4(a) => IpAddr::V4(a),
                NextHop::V6 {
                    link_local: Some(l),
                    ..
                } => IpAddr::V6(l),
                NextHop::V6 { global, .. } => IpAddr::V6(global),
            };
            assert_eq!(hops.len(), 1);
            assert_eq!(hops[0].0, via, "{p}: kernel next hop");
        }
        let exported: Vec<&Prefix> = self.exported.keys().collect();
        assert_eq!(
            exported, want_keys,
            "the upstream neighbor was told something else"
        );
        for a in self.exported.values() {
            let path = a.as_path.as_ref().expect("exported without AS_PATH");
            assert_eq!(path.segments.first().map(|s| s.asns()[0]), Some(LOCAL_AS));
            assert!(a.next_hop.is_none() && a.local_pref.is_none());
        }
    }
}

fn run(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut families = Vec::new();
    if flags & 1 != 0 {
        families.push(AfiSafi::IPV4_UNICAST);
    }
    if flags & 2 != 0 {
        families.push(AfiSafi::IPV6_UNICAST);
    }
    let cxt = Context {
        four_octet_as: flags & 4 != 0,
        families,
        ipv4_over_ipv6_next_hop: flags & 8 != 0,
        max_message_len: 4096,
        // vm-a is in another AS.
        external: true,
    };
    let max_prefixes = [2, 5, 50, 1000][(flags >> 4 & 3) as usize];
    let teardown = flags & 0x40 != 0;
    let max_as_path_length = if flags & 0x80 != 0 { 3 } else { 64 };

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (fib_tx, fib_rx) = mpsc::unbounded_channel();
        let rib = rib::spawn(
            LOCAL_AS,
            Vec::new(),
            Some(fib_tx),
            false,
            None,
            DrainConfig {
                local_pref: 0,
                withdraw_after: None,
            },
            Default::default(),
        )
        .expect("RIB thread");
        let (export_tx, export_rx) = mpsc::channel(1 << 16);
        rib.send(RibMsg::Subscribe {
            peer: UPSTREAM,
            asn: None,
            ebgp: true,
            policy: Arc::new(Policy::hypervisor_default()),
            tx: export_tx,
            exported: Default::default(),
            families: vec![bgp::Afi::Ipv4, bgp::Afi::Ipv6],
        })
        .unwrap();
        let a = vm(1, "vm-a", IpAddr::V4(Ipv4Addr::new(10, 192, 24, 4)), 4);
        let b = vm(2, "vm-b", IpAddr::V4(Ipv4Addr::new(10, 192, 24, 9)), 9);
        let b_prefix: Prefix = "10.3.0.77/32".parse().unwrap();
        rib.send(RibMsg::Update {
            peer: b,
            announce: vec![(
                b_prefix,
                NextHop::V4(Ipv4Addr::new(10, 192, 24, 9)),
                Arc::new(PathAttributes {
                    origin: Some(bgp::Origin::Igp),
                    as_path: Some(bgp::AsPath::default()),
                    ..Default::default()
                }),
            )],
            withdraw: Vec::new(),
        })
        .unwrap();
        let mut world = World {
            rib: rib.clone(),
            fib_rx,
            export_rx,
            fib: BTreeMap::new(),
            exported: BTreeMap::new(),
        };
        let mut pol = policy(max_prefixes, teardown, false, true);
        let mut adj = AdjRibIn::default();
        world.check(&adj, &pol, max_as_path_length, b_prefix).await;

        let mut steps = 0;
        while let Some((&kind, tail)) = rest.split_first() {
            rest = tail;
            steps += 1;
            if steps > 64 {
                break;
            }
            let judge = Judge {
                max_as_path_length,
                policy: Some(&pol),
                path: rules(&pol),
            };
            match kind % 8 {
                // A new policy snapshot (a registration changed).
                6 => {
                    pol = policy(max_prefixes, teardown, kind & 0x80 != 0, kind & 0x40 == 0);
                    let judge = Judge {
                        max_as_path_length,
                        policy: Some(&pol),
                        path: rules(&pol),
                    };
                    let c = adj.rejudge(&judge);
                    rib.send(RibMsg::Update {
                        peer: a.clone(),
                        announce: c.announce,
                        withdraw: c.withdraw,
                    })
                    .unwrap();
                }
                // The session goes down: routes kept stale (graceful
                // restart) or withdrawn.
                7 => {
                    if kind & 0x80 != 0 {
                        adj.mark_stale();
                    } else {
                        adj.clear();
                        rib.send(RibMsg::PeerDown(a.id)).unwrap();
                    }
                }
                // The next message on the wire.
                _ => match Message::decode(rest, &cxt) {
                    Ok(Some((msg, used))) => {
                        rest = &rest[used..];
                        if let Message::Update(u) = msg {
                            if let Some(f) = u.end_of_rib() {
                                if let Some(afi) = f.unicast_afi() {
                                    let gone = adj.flush_stale(Some(afi));
                                    rib.send(RibMsg::Update {
                                        peer: a.clone(),
                                        announce: Vec::new(),
                                        withdraw: gone,
                                    })
                                    .unwrap();
                                }
                            } else {
                                let c = adj.apply(*u, true, &judge);
                                rib.send(RibMsg::Update {
                                    peer: a.clone(),
                                    announce: c.announce,
                                    withdraw: c.withdraw,
                                })
                                .unwrap();
                                if c.teardown.is_some() {
                                    adj.clear();
                                    rib.send(RibMsg::PeerDown(a.id)).unwrap();
                                }
                            }
                        }
                    }
                    // Incomplete: the stream ends here.
                    Ok(None) => break,
                    // A NOTIFICATION goes out and the session is reset.
                    Err(_) => {
                        adj.clear();
                        rib.send(RibMsg::PeerDown(a.id)).unwrap();
                        break;
                    }
                },
            }
            world.check(&adj, &pol, max_as_path_length, b_prefix).await;
        }
        world.check(&adj, &pol, max_as_path_length, b_prefix).await;
    });
}

fuzz_target!(|data: &[u8]| run(data));

//! The Loc-RIB's sans-IO core: best paths, what goes to the kernel and to
//! each upstream neighbor, drains (RFC 8326), graceful restart, policy.
//! Messages in, outputs collected; no thread, no channel read.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bgp::{AfiSafi, NextHop, PathAttributes, Prefix};
use tapir::routing::peer_info::{PeerId, PeerInfo};
use tapir::routing::policy::{Policy, GRACEFUL_SHUTDOWN, NO_EXPORT};
use tapir::routing::rib::{
    Backlog, DrainConfig, DrainState, FibChange, Outputs, Restart, Rib, RibMsg, ToPeer,
};
use tapir::southbound::net::Interface;
use tokio::sync::{mpsc, oneshot};

use crate::harness::{attrs, prefix, LOCAL_AS, VM_AS};

const TOR: PeerId = PeerId(100);
const TOR_AS: u32 = 64612;

/// Every output, in order, and the transcript.
#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    /// What the kernel holds, as "prefix -> hops".
    kernel: std::collections::BTreeMap<Prefix, String>,
    /// What tor holds, as "prefix -> attributes".
    tor: std::collections::BTreeMap<Prefix, String>,
    later: Vec<(Duration, RibMsg)>,
    ready: usize,
    /// Export messages to tor (each a batch of changes).
    exports: usize,
    /// Batches of FIB changes.
    fib_batches: usize,
}

fn show_attrs(a: &PathAttributes) -> String {
    let path = a
        .as_path
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let comms: Vec<String> = a
        .communities
        .iter()
        .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
        .collect();
    let mut s = format!("path [{path}]");
    if !comms.is_empty() {
        s.push_str(&format!(" communities [{}]", comms.join(" ")));
    }
    if let Some(lp) = a.local_pref {
        s.push_str(&format!(" local-pref {lp}"));
    }
    s
}

impl Outputs for Collected {
    fn export(&mut self, peer: PeerId, m: ToPeer) {
        match m {
            ToPeer::Export(changes) => {
                self.exports += 1;
                for (p, a) in changes {
                    match a {
                        Some(a) => {
                            let v = show_attrs(&a);
                            self.lines
                                .push(format!("< to #{}: announce {p} {v}", peer.0));
                            self.tor.insert(p, v);
                        }
                        None => {
                            self.lines.push(format!("< to #{}: withdraw {p}", peer.0));
                            self.tor.remove(&p);
                        }
                    }
                }
            }
            ToPeer::Refeed { routes, end, .. } => {
                for (p, a) in routes {
                    let v = show_attrs(&a);
                    self.lines.push(format!("< to #{}: table {p} {v}", peer.0));
                    self.tor.insert(p, v);
                }
                if end {
                    self.lines.push(format!("< to #{}: end of table", peer.0));
                }
            }
            ToPeer::RibReady => {
                self.ready += 1;
                self.lines
                    .push(format!("< to #{}: the Loc-RIB is complete", peer.0));
            }
        }
    }

    fn fib(&mut self, ops: Vec<FibChange>) {
        self.fib_batches += 1;
        for op in ops {
            match op {
                FibChange::Install { prefix, hops } => {
                    let h: Vec<String> = hops
                        .iter()
                        .map(|(via, dev)| format!("via {via} dev {dev:?}"))
                        .collect();
                    let h = h.join(", ");
                    self.lines.push(format!("< kernel: install {prefix} {h}"));
                    self.kernel.insert(prefix, h);
                }
                FibChange::Remove { prefix } => {
                    self.lines.push(format!("< kernel: remove {prefix}"));
                    self.kernel.remove(&prefix);
                }
                FibChange::Settings { protocol, metric } => {
                    self.lines
                        .push(format!("< kernel: protocol {protocol} metric {metric}"));
                }
            }
        }
    }

    fn later(&mut self, delay: Duration, m: RibMsg) {
        self.lines
            .push(format!("< timer: in {} s", delay.as_secs_f64()));
        self.later.push((delay, m));
    }
}

struct H {
    rib: Rib,
    out: Collected,
}

fn drain_cfg(withdraw_after: Option<u64>) -> DrainConfig {
    DrainConfig {
        local_pref: 0,
        prepend: 0,
        withdraw_after: withdraw_after.map(Duration::from_secs),
    }
}

impl H {
    fn new(multipath: bool) -> H {
        Self::with(multipath, None, drain_cfg(None), vec![])
    }

    fn with(
        multipath: bool,
        restart: Option<Restart>,
        drain: DrainConfig,
        local: Vec<Prefix>,
    ) -> H {
        H {
            rib: Rib::new(
                LOCAL_AS,
                local,
                true,
                multipath,
                restart,
                drain,
                Backlog::default(),
            ),
            out: Collected::default(),
        }
    }

    fn apply(&mut self, what: &str, m: RibMsg) {
        self.out.lines.push(format!("> {what}"));
        self.rib.apply(m, &mut self.out);
        self.rib.end_batch(&mut self.out);
    }

    /// tor subscribes (eBGP, AS 64612) with `policy`, IPv4 only.
    fn tor(&mut self, policy: Policy) {
        let (tx, _rx) = mpsc::channel(1);
        self.apply(
            "tor subscribes",
            RibMsg::Subscribe {
                peer: TOR,
                asn: Some(TOR_AS),
                ebgp: true,
                policy: Arc::new(policy),
                tx,
                exported: Default::default(),
                families: vec![bgp::Afi::Ipv4],
            },
        );
    }

    fn announce(&mut self, vm: &Arc<PeerInfo>, prefixes: &[&str], a: PathAttributes) {
        let nh = match vm.address {
            IpAddr::V4(a) => NextHop::V4(a),
            IpAddr::V6(_) => unreachable!(),
        };
        let a = Arc::new(a);
        self.apply(
            &format!("{} announces {}", vm.name, prefixes.join(" ")),
            RibMsg::Update {
                peer: vm.clone(),
                announce: prefixes
                    .iter()
                    .map(|p| (prefix(p), nh, a.clone()))
                    .collect(),
                withdraw: vec![],
            },
        );
    }

    fn withdraw(&mut self, vm: &Arc<PeerInfo>, prefixes: &[&str]) {
        self.apply(
            &format!("{} withdraws {}", vm.name, prefixes.join(" ")),
            RibMsg::Update {
                peer: vm.clone(),
                announce: vec![],
                withdraw: prefixes.iter().map(|p| prefix(p)).collect(),
            },
        );
    }

    fn drain(
        &mut self,
        vm: &str,
        state: Option<DrainState>,
    ) -> Result<usize, tapir::routing::rib::UnknownVm> {
        let (tx, mut rx) = oneshot::channel();
        self.apply(
            &format!("drain {vm} {state:?}"),
            RibMsg::Drain {
                vm: Some(vm.into()),
                state,
                reply: tx,
            },
        );
        rx.try_recv().expect("the drain is answered at once")
    }

    fn refeed(&mut self) {
        self.apply(
            "tor's session asks for the table",
            RibMsg::Refeed {
                peer: TOR,
                conn: tapir::routing::peer_info::ConnId(1),
                family: AfiSafi::IPV4_UNICAST,
            },
        );
    }

    fn text(&self) -> String {
        self.out.lines.join("\n") + "\n"
    }

    fn kernel(&self) -> Vec<String> {
        self.out
            .kernel
            .iter()
            .map(|(p, h)| format!("{p} {h}"))
            .collect()
    }

    fn tor_table(&self) -> Vec<String> {
        self.out
            .tor
            .iter()
            .map(|(p, a)| format!("{p} {a}"))
            .collect()
    }
}

/// A VM on tap `index`, its address 10.192.24.`index`.
fn vm(id: u64, index: u8) -> Arc<PeerInfo> {
    Arc::new(PeerInfo {
        id: PeerId(id),
        name: format!("vm{index}"),
        address: IpAddr::V4(Ipv4Addr::new(10, 192, 24, index)),
        asn: VM_AS,
        router_id: Ipv4Addr::new(10, 192, 24, index),
        ebgp: true,
        vm: Some(format!("vm{index}")),
        group: Some("vms".into()),
        interface: Some(Interface {
            name: format!("tap{index}"),
            index: index as u32,
        }),
        kernel: true,
    })
}

fn vm_attrs() -> PathAttributes {
    attrs(&[VM_AS])
}

#[test]
fn a_vms_route_goes_to_the_kernel_and_upstream() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    h.announce(&vm(1, 11), &["10.3.0.1/32"], vm_attrs());
    assert_eq!(h.kernel(), ["10.3.0.1/32 via 10.192.24.11 dev Some(11)"]);
    assert_eq!(h.tor_table().len(), 1);
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_withdrawal_leaves_the_kernel_and_upstream() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    let a = vm(1, 11);
    h.announce(&a, &["10.3.0.1/32", "10.3.0.2/32"], vm_attrs());
    h.withdraw(&a, &["10.3.0.1/32"]);
    assert_eq!(h.kernel(), ["10.3.0.2/32 via 10.192.24.11 dev Some(11)"]);
    assert_eq!(h.tor_table().len(), 1);
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_peer_down_takes_all_its_routes() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    let a = vm(1, 11);
    h.announce(&a, &["10.3.0.1/32", "10.3.0.2/32"], vm_attrs());
    h.apply("vm11's session goes down", RibMsg::PeerDown(PeerId(1)));
    assert!(h.kernel().is_empty());
    assert!(h.tor_table().is_empty());
}

/// A lost session with a big table: what another VM also announces fails
/// over to it, the rest is withdrawn, and it all goes out in batches (the
/// first withdrawals leave before the last are decided).
#[test]
fn a_big_peer_down_fails_over_and_goes_out_in_batches() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    let (a, b) = (vm(1, 11), vm(2, 12));
    let all: Vec<String> = (0..20_000u32)
        .map(|i| format!("10.{}.{}.{}/32", 100 + i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let shared: Vec<&str> = refs.iter().copied().step_by(3).collect();
    h.announce(&a, &refs, vm_attrs());
    h.announce(&b, &shared, vm_attrs());
    assert_eq!(h.kernel().len(), all.len());
    let (exports, batches) = (h.out.exports, h.out.fib_batches);
    h.out.lines.clear();
    h.apply("vm11's session goes down", RibMsg::PeerDown(PeerId(1)));
    // The shared prefixes now via vm12, and only they.
    let expect: Vec<String> = shared
        .iter()
        .map(|p| format!("{p} via 10.192.24.12 dev Some(12)"))
        .collect();
    let mut kernel = h.kernel();
    kernel.sort();
    let mut expect_sorted = expect.clone();
    expect_sorted.sort();
    assert_eq!(kernel, expect_sorted);
    assert_eq!(h.tor_table().len(), shared.len());
    // tor never lost a shared prefix.
    let withdrawn: std::collections::HashSet<&str> = h
        .out
        .lines
        .iter()
        .filter_map(|l| l.split_once(": withdraw ").map(|(_, p)| p))
        .collect();
    assert!(shared.iter().all(|p| !withdrawn.contains(p)));
    assert_eq!(withdrawn.len(), all.len() - shared.len());
    assert!(
        h.out.exports - exports > 1,
        "one export for the whole table"
    );
    assert!(
        h.out.fib_batches - batches > 1,
        "one FIB batch for the whole table"
    );
}

#[test]
fn anycast_from_two_vms_has_one_best_path_and_fails_over() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    let (a, b) = (vm(1, 11), vm(2, 12));
    h.announce(&a, &["10.3.0.53/32"], vm_attrs());
    h.announce(&b, &["10.3.0.53/32"], vm_attrs());
    // The lower router id wins.
    assert_eq!(h.kernel(), ["10.3.0.53/32 via 10.192.24.11 dev Some(11)"]);
    h.withdraw(&a, &["10.3.0.53/32"]);
    assert_eq!(h.kernel(), ["10.3.0.53/32 via 10.192.24.12 dev Some(12)"]);
    // tor never lost the prefix.
    assert_eq!(h.tor_table().len(), 1);
    assert!(!h.text().contains("withdraw 10.3.0.53/32"), "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn multipath_installs_every_equally_good_vm() {
    let mut h = H::new(true);
    let (a, b) = (vm(1, 11), vm(2, 12));
    h.announce(&a, &["10.3.0.53/32"], vm_attrs());
    h.announce(&b, &["10.3.0.53/32"], vm_attrs());
    assert_eq!(
        h.kernel(),
        ["10.3.0.53/32 via 10.192.24.11 dev Some(11), via 10.192.24.12 dev Some(12)"]
    );
    // A longer path is not as good: not in the ECMP route.
    let c = vm(3, 13);
    h.announce(&c, &["10.3.0.53/32"], attrs(&[VM_AS, VM_AS]));
    assert_eq!(h.kernel().len(), 1);
    assert!(!h.kernel()[0].contains("10.192.24.13"));
}

#[test]
fn a_drained_vm_is_announced_with_graceful_shutdown_then_withdrawn() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    let a = vm(1, 11);
    h.announce(&a, &["10.3.0.1/32"], vm_attrs());
    assert_eq!(h.drain("vm11", Some(DrainState::Shutdown)), Ok(1));
    let shut = format!("{}:{}", GRACEFUL_SHUTDOWN >> 16, GRACEFUL_SHUTDOWN & 0xffff);
    assert!(h.tor_table()[0].contains(&shut), "{:?}", h.tor_table());
    assert_eq!(h.drain("vm11", Some(DrainState::Withdrawn)), Ok(1));
    assert!(h.tor_table().is_empty());
    // The VM still serves: the kernel keeps its route.
    assert_eq!(h.kernel().len(), 1);
    assert_eq!(h.drain("vm11", None), Ok(1));
    assert_eq!(h.tor_table().len(), 1);
    assert!(!h.tor_table()[0].contains(&shut));
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_drain_with_prepend_lengthens_the_path_and_undrain_restores_it() {
    let mut cfg = drain_cfg(None);
    cfg.prepend = 3;
    let mut h = H::with(false, None, cfg, vec![]);
    h.tor(Policy::hypervisor_default());
    let a = vm(1, 11);
    h.announce(&a, &["10.3.0.1/32"], vm_attrs());
    let before = h.tor_table()[0].clone();
    assert_eq!(before.matches(&LOCAL_AS.to_string()).count(), 1, "{before}");
    h.drain("vm11", Some(DrainState::Shutdown)).unwrap();
    // Three more of our AS, and the community as before.
    let drained = h.tor_table()[0].clone();
    assert_eq!(
        drained.matches(&LOCAL_AS.to_string()).count(),
        4,
        "{drained}"
    );
    assert!(drained.contains("65535:0"), "{drained}");
    h.drain("vm11", None).unwrap();
    assert_eq!(h.tor_table()[0], before);
}

#[test]
fn a_drained_path_loses_to_another_vms_in_the_kernel() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    let (a, b) = (vm(1, 11), vm(2, 12));
    h.announce(&a, &["10.3.0.53/32"], vm_attrs());
    h.announce(&b, &["10.3.0.53/32"], vm_attrs());
    assert!(h.kernel()[0].contains("10.192.24.11"));
    h.drain("vm11", Some(DrainState::Shutdown)).unwrap();
    assert!(h.kernel()[0].contains("10.192.24.12"), "{}", h.text());
    // tor keeps the prefix, without the drain's community (vm12 is fine).
    assert_eq!(h.tor_table().len(), 1);
    assert!(!h.tor_table()[0].contains("65535:0"));
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_drain_with_a_delay_withdraws_when_it_runs_out() {
    let mut h = H::with(false, None, drain_cfg(Some(30)), vec![]);
    h.tor(Policy::hypervisor_default());
    let a = vm(1, 11);
    h.announce(&a, &["10.3.0.1/32"], vm_attrs());
    h.drain("vm11", Some(DrainState::Shutdown)).unwrap();
    assert_eq!(h.out.later.len(), 1);
    assert_eq!(h.out.later[0].0, Duration::from_secs(30));
    let (_, m) = h.out.later.remove(0);
    h.apply("30 s later", m);
    assert!(h.tor_table().is_empty(), "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn draining_an_unknown_vm_is_an_error() {
    let mut h = H::new(false);
    let e = h.drain("nosuchvm", Some(DrainState::Shutdown)).unwrap_err();
    assert_eq!(e, tapir::routing::rib::UnknownVm("nosuchvm".into()));
    assert!(e.to_string().contains("nosuchvm"), "{e}");
}

#[test]
fn a_vms_no_export_route_stays_off_tor() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    let mut a = vm_attrs();
    a.communities.push(NO_EXPORT);
    h.announce(&vm(1, 11), &["10.3.0.1/32"], a);
    assert!(h.tor_table().is_empty());
    // It still serves locally.
    assert_eq!(h.kernel().len(), 1);
}

#[test]
fn a_path_with_tors_as_is_not_sent_back_to_tor() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    h.announce(&vm(1, 11), &["10.3.0.1/32"], attrs(&[VM_AS, TOR_AS]));
    assert!(h.tor_table().is_empty(), "{}", h.text());
}

#[test]
fn the_whole_table_goes_to_a_new_session_with_an_end_marker() {
    let mut h = H::new(false);
    h.announce(&vm(1, 11), &["10.3.0.1/32", "10.3.0.2/32"], vm_attrs());
    h.tor(Policy::hypervisor_default());
    // Subscribing counts; the session asks for the table.
    assert!(h.tor_table().is_empty());
    h.refeed();
    assert_eq!(h.tor_table().len(), 2);
    assert!(
        h.text().ends_with("< to #100: end of table\n"),
        "{}",
        h.text()
    );
    insta::assert_snapshot!(h.text());
}

#[test]
fn tapirs_own_routes_go_upstream_but_not_into_the_kernel() {
    let mut h = H::with(false, None, drain_cfg(None), vec![prefix("10.3.9.0/24")]);
    h.tor(Policy::hypervisor_default());
    h.refeed();
    assert_eq!(h.tor_table().len(), 1);
    assert!(h.kernel().is_empty());
}

#[test]
fn a_stricter_export_policy_withdraws_what_it_no_longer_allows() {
    let mut h = H::new(false);
    h.tor(Policy::hypervisor_default());
    h.announce(&vm(1, 11), &["10.3.0.1/32"], vm_attrs());
    assert_eq!(h.tor_table().len(), 1);
    let mut p = Policy::hypervisor_default();
    p.name = "NOTHING".into();
    p.terms.clear();
    h.apply(
        "a reload gives tor an export policy that accepts nothing",
        RibMsg::SetPolicy {
            peer: TOR,
            policy: Arc::new(p),
        },
    );
    assert!(h.tor_table().is_empty(), "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn after_a_restart_the_kernels_old_routes_wait_for_the_vms() {
    let restarting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let restart = Restart {
        stale: vec![prefix("10.3.0.1/32"), prefix("10.3.0.2/32")],
        deferral: Duration::from_secs(60),
        restarting: restarting.clone(),
    };
    let mut h = H::with(false, Some(restart), drain_cfg(None), vec![]);
    h.tor(Policy::hypervisor_default());
    // Nothing ready yet: the session's table has no end marker.
    h.refeed();
    assert!(!h.text().contains("end of table"));
    h.announce(&vm(1, 11), &["10.3.0.1/32"], vm_attrs());
    h.apply("the deferral is over", RibMsg::DeferralOver);
    // The route no VM announced again is gone; the other stays.
    assert_eq!(h.kernel(), ["10.3.0.1/32 via 10.192.24.11 dev Some(11)"]);
    assert!(
        h.text().contains("< kernel: remove 10.3.0.2/32"),
        "{}",
        h.text()
    );
    assert_eq!(h.out.ready, 1);
    assert!(!restarting.load(std::sync::atomic::Ordering::Relaxed));
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_question_is_answered_after_what_came_before_it() {
    let mut h = H::new(false);
    let a = vm(1, 11);
    // Both in one batch: the Show sees the route.
    let (tx, mut rx) = oneshot::channel();
    h.rib.apply(
        RibMsg::Update {
            peer: a.clone(),
            announce: vec![(
                prefix("10.3.0.1/32"),
                NextHop::V4(Ipv4Addr::new(10, 192, 24, 11)),
                Arc::new(vm_attrs()),
            )],
            withdraw: vec![],
        },
        &mut h.out,
    );
    h.rib.apply(RibMsg::Show(tx), &mut h.out);
    let shown = rx.try_recv().unwrap();
    assert_eq!(shown.len(), 1);
    assert!(shown[0].installed);
}

#[test]
fn a_reloaded_kernel_section_reshapes_and_rekeys_our_routes() {
    let mut h = H::new(false);
    let (a, b) = (vm(1, 11), vm(2, 12));
    h.announce(&a, &["10.3.0.53/32"], vm_attrs());
    h.announce(&b, &["10.3.0.53/32"], vm_attrs());
    assert_eq!(h.kernel(), ["10.3.0.53/32 via 10.192.24.11 dev Some(11)"]);
    let kernel = |install, multipath, rekey| RibMsg::Kernel {
        install,
        multipath,
        rekey,
    };
    // multipath on: one ECMP route.
    h.apply("multipath on", kernel(true, true, None));
    assert_eq!(
        h.kernel(),
        ["10.3.0.53/32 via 10.192.24.11 dev Some(11), via 10.192.24.12 dev Some(12)"]
    );
    // A new protocol and metric: the settings, then every route again.
    h.apply(
        "protocol 181 metric 190",
        kernel(true, true, Some((181, 190))),
    );
    let text = h.text();
    let tail: Vec<&str> = text.lines().rev().take(2).collect();
    assert_eq!(
        tail,
        [
            "< kernel: install 10.3.0.53/32 via 10.192.24.11 dev Some(11), via 10.192.24.12 dev Some(12)",
            "< kernel: protocol 181 metric 190",
        ],
        "{text}"
    );
    // install off: out of the kernel; on: back.
    h.apply("install off", kernel(false, true, None));
    assert!(h.kernel().is_empty());
    h.apply("install on", kernel(true, true, None));
    assert_eq!(h.kernel().len(), 1);
}

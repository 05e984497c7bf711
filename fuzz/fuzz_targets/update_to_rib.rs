//! UPDATE processing from the wire through authorisation and policy into
//! the Loc-RIB, the kernel and the export to an upstream neighbor: the
//! path a hostile VM's bytes take, through the daemon's own sans-IO cores.
//! A VM ("vm-a", allowed 10.3.0.0/24 and 2001:db8:3::/48 by its inventory
//! entry or, after some policy steps, by the group filter; next hop its
//! own address) opens a session to the real `PeerCore` and sends a stream
//! of arbitrary messages, loses its session with or without graceful
//! restart and comes back, and gets new policy snapshots. What the core
//! asks of the Loc-RIB goes to the real `Rib::apply`. Beside it, "vm-b"
//! owns 10.3.0.77/32, inside vm-a's range.
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
//! Input: one byte of session settings (the families, 4-octet AS and
//! extended next hop vm-a's OPEN offers; max-prefixes, teardown, the
//! AS-path limit), then steps, each one byte of kind followed by what it
//! needs.

#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgp::capability::{Capability, ExtendedNextHop, GracefulRestart, GracefulRestartFamily};
use bgp::{AfiSafi, Context, Message, NextHop, PathAttributes, Prefix};
use libfuzzer_sys::fuzz_target;
use tapir::northbound::config::{ImportRules, MaxPrefixAction, RemoteAsConfig, SessionSettings};
use tapir::peer::{Action, Identity, Input, PeerConfig, PeerCore};
use tapir::routing::adj_rib_in::MAX_KEPT_REFUSED;
use tapir::routing::authorisation::VmPolicy;
use tapir::routing::peer_info::{ConnId, PeerId, PeerInfo};
use tapir::routing::policy::Policy;
use tapir::routing::rib::{DrainConfig, FibChange, Outputs, Rib, RibMsg, ToPeer};
use tapir::southbound::net::Interface;
use tokio::sync::{mpsc, oneshot};

const LOCAL_AS: u32 = 64600;
const VM_AS: u32 = 64613;
const VM_A: PeerId = PeerId(1);
const UPSTREAM: PeerId = PeerId(1000);
const VM_A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 192, 24, 4);

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
    let set = |v: &[&str]| tapir::routing::prefix_set::PrefixSet {
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

/// vm-a's session, as the hypervisor role makes it.
fn session(pol: &VmPolicy, max_as_path_length: usize) -> PeerConfig {
    PeerConfig {
        name: "vm-a".into(),
        address: IpAddr::V4(VM_A_ADDR),
        port: 179,
        interface: Some(Interface {
            name: "tap4".into(),
            index: 4,
        }),
        session: SessionSettings::new(RemoteAsConfig::External, ImportRules::vm_default())
            .max_as_path_length(max_as_path_length),
        local_address: None,
        passive: false,
        families: vec![bgp::Afi::Ipv4, bgp::Afi::Ipv6],
        export: None,
        kernel: true,
        vm: Some("vm-a".into()),
        group: Some("vms".into()),
        graceful_restart: Some(120),
        extended_next_hop: true,
        policy: Some(Arc::new(pol.clone())),
        global_v6_from: None,
        takeover: false,
    }
}

/// vm-a's OPEN, from the settings byte; `restarted`: it comes back from a
/// restart with its forwarding state (graceful restart, RFC 4724).
fn open(flags: u8, restarted: bool) -> Vec<u8> {
    let mut families = Vec::new();
    if flags & 1 != 0 {
        families.push(AfiSafi::IPV4_UNICAST);
    }
    if flags & 2 != 0 {
        families.push(AfiSafi::IPV6_UNICAST);
    }
    let mut caps: Vec<Capability> = families
        .iter()
        .map(|f| Capability::Multiprotocol(*f))
        .collect();
    caps.push(Capability::RouteRefresh);
    if flags & 4 != 0 {
        caps.push(Capability::FourOctetAs(VM_AS));
    }
    if flags & 8 != 0 {
        caps.push(Capability::ExtendedNextHop(vec![ExtendedNextHop {
            nlri: AfiSafi::IPV4_UNICAST,
            next_hop_afi: 2,
        }]));
    }
    caps.push(Capability::GracefulRestart(GracefulRestart {
        restarting: restarted,
        notification: false,
        restart_time: 120,
        families: families
            .iter()
            .map(|f| GracefulRestartFamily {
                family: *f,
                forwarding_preserved: restarted,
            })
            .collect(),
    }));
    let o = bgp::open::Open {
        version: 4,
        my_as: VM_AS as u16,
        hold_time: 90,
        bgp_id: VM_A_ADDR,
        capabilities: caps,
    };
    let mut b = Message::Open(o).encode(&Context::default());
    b.extend(Message::Keepalive.encode(&Context::default()));
    b
}

/// What the kernel and the upstream neighbor were told, replayed.
#[derive(Default)]
struct World {
    fib: BTreeMap<Prefix, Vec<(IpAddr, Option<u32>)>>,
    exported: BTreeMap<Prefix, Arc<PathAttributes>>,
}

impl Outputs for World {
    fn export(&mut self, peer: PeerId, m: ToPeer) {
        assert_eq!(peer, UPSTREAM);
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

    fn fib(&mut self, ops: Vec<FibChange>) {
        for c in ops {
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
                FibChange::Settings { .. } => {}
            }
        }
    }

    fn later(&mut self, _: Duration, _: RibMsg) {}
}

/// vm-a's PeerCore and the Loc-RIB, joined as the peer task and the RIB
/// thread join them.
struct Harness {
    core: PeerCore,
    rib: Rib,
    world: World,
    now: Instant,
    /// vm-a's connection, while there is one.
    conn: Option<ConnId>,
}

impl Harness {
    /// Carries out what the core asked: its Loc-RIB messages go to the
    /// Loc-RIB; the rest is the socket's business.
    fn pump(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Rib(m) => self.rib.apply(m, &mut self.world),
                Action::Accept { conn } | Action::Attach { conn } => self.conn = Some(conn),
                Action::Close { conn } if Some(conn) == self.conn => self.conn = None,
                _ => {}
            }
        }
        self.rib.end_batch(&mut self.world);
    }

    /// vm-a connects and opens its session.
    fn connect(&mut self, open: &[u8]) {
        self.core.handle(
            self.now,
            Input::Incoming {
                local: Some(SocketAddr::new(Ipv4Addr::new(10, 192, 24, 1).into(), 179)),
                remote_port: 40000,
            },
        );
        self.pump();
        self.bytes(open.to_vec());
    }

    fn bytes(&mut self, data: Vec<u8>) {
        if let Some(conn) = self.conn {
            self.core.handle(
                self.now,
                Input::Bytes {
                    conn,
                    data,
                    queued: 0,
                },
            );
            self.pump();
        }
    }

    /// Checks the invariants.
    fn check(&mut self, pol: &VmPolicy, max_as_path_length: usize, b_prefix: Prefix) {
        let (tx, mut rx) = oneshot::channel();
        self.rib.apply(RibMsg::Show(tx), &mut self.world);
        let table = rx.try_recv().expect("the Loc-RIB answers at once");
        let adj = self.core.adj_rib_in();
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
                // A VM without an inventory entry is known by its tap.
                let a_name = pol.entry.as_ref().map_or("tap4", |e| e.0.as_str());
                let from = if *p == b_prefix { "vm-b" } else { a_name };
                (p.to_string(), from.to_string())
            })
            .collect();
        assert_eq!(in_rib, want_rib, "Loc-RIB differs from the accepted routes");
        let fib: Vec<&Prefix> = self.world.fib.keys().collect();
        let want_keys: Vec<&Prefix> = want.keys().collect();
        assert_eq!(fib, want_keys, "the kernel was told something else");
        for (p, hops) in &self.world.fib {
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
        let exported: Vec<&Prefix> = self.world.exported.keys().collect();
        assert_eq!(
            exported, want_keys,
            "the upstream neighbor was told something else"
        );
        for a in self.world.exported.values() {
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
    let max_prefixes = [2, 5, 50, 1000][(flags >> 4 & 3) as usize];
    let teardown = flags & 0x40 != 0;
    let max_as_path_length = if flags & 0x80 != 0 { 3 } else { 64 };
    let mut pol = policy(max_prefixes, teardown, false, true);
    let now = Instant::now();
    let env = Identity {
        router_id: Ipv4Addr::new(10, 192, 24, 1),
        local_as: LOCAL_AS,
        restarting: Arc::new(AtomicBool::new(false)),
        gr_helper_max: Arc::new(AtomicU16::new(300)),
        bfd: false,
        // BMP's encoding of every UPDATE runs under the fuzzer too (a
        // collector connected, VM sessions reported).
        bmp: Some(tapir::northbound::bmp::Scope {
            active: Arc::new(AtomicBool::new(true)),
            neighbors: false,
        }),
    };
    let mut h = Harness {
        core: PeerCore::new(session(&pol, max_as_path_length), env, VM_A, now),
        rib: Rib::new(
            LOCAL_AS,
            Vec::new(),
            true,
            false,
            None,
            DrainConfig {
                local_pref: 0,
                prepend: 0,
                withdraw_after: None,
            },
            Default::default(),
        ),
        world: World::default(),
        now,
        conn: None,
    };
    let (export_tx, _export_rx) = mpsc::channel(1);
    h.rib.apply(
        RibMsg::Subscribe {
            peer: UPSTREAM,
            asn: None,
            ebgp: true,
            policy: Arc::new(Policy::hypervisor_default()),
            tx: export_tx,
            exported: Default::default(),
            families: vec![bgp::Afi::Ipv4, bgp::Afi::Ipv6],
        },
        &mut h.world,
    );
    let b = Arc::new(PeerInfo {
        id: PeerId(2),
        name: "vm-b".into(),
        address: IpAddr::V4(Ipv4Addr::new(10, 192, 24, 9)),
        asn: VM_AS,
        router_id: Ipv4Addr::new(10, 192, 24, 9),
        ebgp: true,
        vm: Some("vm-b".into()),
        group: Some("vms".into()),
        interface: Some(Interface {
            name: "tap9".into(),
            index: 9,
        }),
        kernel: true,
    });
    let b_prefix: Prefix = "10.3.0.77/32".parse().unwrap();
    h.rib.apply(
        RibMsg::Update {
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
        },
        &mut h.world,
    );
    h.rib.end_batch(&mut h.world);
    h.core.start(now);
    h.pump();
    h.connect(&open(flags, false));
    h.check(&pol, max_as_path_length, b_prefix);

    let mut steps = 0;
    while let Some((&kind, tail)) = rest.split_first() {
        rest = tail;
        steps += 1;
        if steps > 64 {
            break;
        }
        // A session that ended (a NOTIFICATION either way) comes back.
        if h.conn.is_none() {
            h.connect(&open(flags, false));
        }
        match kind % 8 {
            // A new policy snapshot (a registration changed).
            6 => {
                pol = policy(max_prefixes, teardown, kind & 0x80 != 0, kind & 0x40 == 0);
                h.core.handle(h.now, Input::Policy(Arc::new(pol.clone())));
                h.pump();
            }
            // The session goes down: the connection is lost (graceful
            // restart: routes kept stale) or vm-a sends a Cease; then
            // vm-a comes back, with or without its forwarding state.
            7 => {
                if kind & 0x80 != 0 {
                    if let Some(conn) = h.conn {
                        h.core.handle(h.now, Input::Closed { conn });
                        h.pump();
                    }
                } else {
                    let cease = bgp::notification::Notification::new(
                        bgp::notification::code::CEASE,
                        bgp::notification::cease::ADMINISTRATIVE_RESET,
                    );
                    h.bytes(Message::Notification(cease).encode(&Context::default()));
                }
                h.connect(&open(flags, kind & 0x40 != 0));
            }
            // The next message on the wire, as its header says.
            _ => {
                if rest.len() < 19 {
                    h.bytes(rest.to_vec());
                    rest = &[];
                } else {
                    let len = u16::from_be_bytes([rest[16], rest[17]]) as usize;
                    let take = if (19..=rest.len()).contains(&len) {
                        len
                    } else {
                        rest.len()
                    };
                    h.bytes(rest[..take].to_vec());
                    rest = &rest[take..];
                }
            }
        }
        h.check(&pol, max_as_path_length, b_prefix);
    }
}

fuzz_target!(|data: &[u8]| run(data));

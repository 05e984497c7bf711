//! The conformance harness: a real [`PeerCore`] against a remote BGP
//! speaker (the protocol crate's sans-IO [`Session`]) over a pretend TCP
//! connection, on a fake clock. No socket, no task, no root.
//!
//! Every step writes its input (`>`) and what came out of the core (`<`)
//! to a transcript: what the remote speaker received, decoded by its own
//! session (`peer gets`), and what the core asked of the daemon (the
//! Loc-RIB, BFD, sockets). Tests snapshot the transcript and assert the
//! facts that matter on the remote's side.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgp::attribute::{AsPath, AsSegment, Origin};
use bgp::session::{self, Event, RemoteAs, Session, State};
use bgp::{AfiSafi, Message, NextHop, PathAttributes, Prefix};
use tapir::northbound::config::{ImportRules, MaxPrefixAction, RemoteAsConfig, SessionSettings};
use tapir::peer::{Action, Identity, Input, PeerConfig, PeerCore};
use tapir::routing::authorisation::VmPolicy;
use tapir::routing::peer_info::ConnId;
use tapir::routing::policy::Policy;
use tapir::routing::rib::RibMsg;
use tapir::southbound::net::Interface;

pub const LOCAL_AS: u32 = 64600;
pub const VM_AS: u32 = 64613;
pub const TOR_AS: u32 = 64612;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 192, 24, 1);
pub const VM_ADDR: Ipv4Addr = Ipv4Addr::new(10, 192, 24, 11);
pub const TOR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const HV_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// The remote speaker's settings.
pub struct Remote {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub graceful_restart: Option<u16>,
    pub families: Vec<AfiSafi>,
    /// Our address as it sees it.
    pub ours: Ipv4Addr,
    /// Its OPEN says it restarted with its forwarding state kept.
    pub restarting: bool,
}

impl Remote {
    pub fn vm() -> Remote {
        Remote {
            asn: VM_AS,
            router_id: VM_ADDR,
            hold_time: 90,
            graceful_restart: None,
            families: vec![AfiSafi::IPV4_UNICAST],
            ours: GATEWAY,
            restarting: false,
        }
    }

    pub fn tor() -> Remote {
        Remote {
            asn: TOR_AS,
            router_id: TOR_ADDR,
            hold_time: 90,
            graceful_restart: None,
            families: vec![AfiSafi::IPV4_UNICAST],
            ours: HV_ADDR,
            restarting: false,
        }
    }

    fn session(&self) -> Session {
        Session::new(session::Config {
            local_as: self.asn,
            remote_as: RemoteAs::Exact(LOCAL_AS),
            router_id: self.router_id,
            hold_time: self.hold_time,
            connect_retry: Duration::from_secs(5),
            connect_retry_max: Duration::from_secs(5),
            passive: true,
            families: self.families.clone(),
            extended_next_hop: false,
            graceful_restart: self.graceful_restart,
            restarting: self.restarting,
            keep_raw_updates: false,
        })
    }
}

/// A VM's session on tap11, as the hypervisor role makes it.
pub fn vm_config(policy: VmPolicy) -> PeerConfig {
    PeerConfig {
        name: "vm11".into(),
        address: IpAddr::V4(VM_ADDR),
        port: 179,
        interface: Some(Interface {
            name: "tap11".into(),
            index: 11,
        }),
        session: SessionSettings::new(RemoteAsConfig::External, ImportRules::vm_default())
            .max_as_path_length(32),
        local_address: None,
        passive: false,
        families: vec![bgp::Afi::Ipv4],
        export: None,
        kernel: true,
        vm: Some("vm11".into()),
        group: Some("vms".into()),
        graceful_restart: Some(120),
        extended_next_hop: false,
        policy: Some(Arc::new(policy)),
        global_v6_from: None,
        takeover: false,
    }
}

/// An upstream neighbor (the top-of-rack) with an accept-all export.
pub fn tor_config() -> PeerConfig {
    PeerConfig {
        name: "tor".into(),
        address: IpAddr::V4(TOR_ADDR),
        port: 179,
        interface: None,
        session: SessionSettings::new(
            RemoteAsConfig::Exact(TOR_AS),
            ImportRules::neighbor_default(),
        )
        .max_as_path_length(32),
        local_address: None,
        passive: false,
        families: vec![bgp::Afi::Ipv4],
        export: Some(Arc::new(Policy::hypervisor_default())),
        kernel: false,
        vm: None,
        group: None,
        graceful_restart: None,
        extended_next_hop: false,
        policy: None,
        global_v6_from: None,
        takeover: false,
    }
}

/// vm11's authorisation: 10.3.0.0/24 up to /32 is its own; vm12 owns
/// 10.3.0.77/32 inside it.
pub fn vm_policy(max_prefixes: usize, action: MaxPrefixAction) -> VmPolicy {
    VmPolicy {
        group: "vms".into(),
        entry: Some(("vm11".into(), vec!["10.3.0.0/24{24,32}".parse().unwrap()])),
        group_filter: None,
        owners: vec![
            ("10.3.0.0/24{24,32}".parse().unwrap(), "vm11".to_string()),
            ("10.3.0.77/32".parse().unwrap(), "vm12".to_string()),
        ]
        .into(),
        own_addresses: vec![IpAddr::V4(VM_ADDR)],
        protected: [IpAddr::V4(TOR_ADDR)].into(),
        max_prefixes,
        max_prefixes_action: action,
        import_rules: ImportRules::vm_default(),
    }
}

/// Attributes of a route the remote announces: origin IGP, `path`.
pub fn attrs(path: &[u32]) -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath {
            segments: vec![AsSegment::Sequence(path.to_vec())],
        }),
        ..Default::default()
    }
}

pub fn prefix(s: &str) -> Prefix {
    s.parse().unwrap()
}

pub struct Harness {
    pub core: PeerCore,
    pub remote: Session,
    /// The remote's settings for its next connection.
    pub remote_cfg: Remote,
    pub now: Instant,
    /// The connection the remote is on, as the core numbers it.
    pub conn: Option<ConnId>,
    /// A connection attempt the core asked for.
    connecting: Option<ConnId>,
    /// A connection offered to the core, waiting for its answer.
    offered: bool,
    /// A connection whose writer is stopped: nothing more reaches the
    /// remote on it.
    stuck: Option<ConnId>,
    pub transcript: Vec<String>,
    /// Every message for the Loc-RIB, in order.
    pub rib: Vec<RibMsg>,
    /// What the remote speaker holds from us.
    pub table: std::collections::BTreeMap<Prefix, String>,
}

impl Harness {
    pub fn new(cfg: PeerConfig, remote: Remote) -> Harness {
        Self::with_identity(cfg, remote, false, true)
    }

    pub fn with_identity(cfg: PeerConfig, remote: Remote, restarting: bool, bfd: bool) -> Harness {
        let now = Instant::now();
        let env = Identity {
            router_id: GATEWAY,
            local_as: LOCAL_AS,
            restarting: Arc::new(AtomicBool::new(restarting)),
            gr_helper_max: Arc::new(AtomicU16::new(300)),
            bfd,
            bmp: None,
        };
        Harness {
            core: PeerCore::new(cfg, env, tapir::routing::peer_info::PeerId(7), now),
            remote: remote.session(),
            remote_cfg: remote,
            now,
            conn: None,
            connecting: None,
            offered: false,
            stuck: None,
            transcript: Vec::new(),
            rib: Vec::new(),
            table: Default::default(),
        }
    }

    fn note(&mut self, line: String) {
        self.transcript.push(line);
    }

    /// The transcript so far, one line each.
    pub fn text(&self) -> String {
        self.transcript.join("\n") + "\n"
    }

    pub fn start(&mut self) {
        self.note("> start".into());
        self.core.start(self.now);
        self.pump();
    }

    /// Our connection attempt reaches the remote, which accepts it.
    pub fn tcp_connects(&mut self) {
        let conn = self.connecting.take().expect("no connection attempt");
        self.note(format!("> connection {conn} made"));
        // A new connection: the remote's session starts afresh.
        self.remote = self.remote_cfg.session();
        self.remote.start(self.now);
        self.remote.accepted(self.now);
        self.conn = Some(conn);
        self.core.handle(
            self.now,
            Input::Connected {
                conn,
                result: Ok(Some(SocketAddr::new(self.remote_cfg.ours.into(), 40000))),
            },
        );
        self.pump();
    }

    /// Our connection attempt fails: refused (the peer's kernel answers).
    pub fn tcp_refused(&mut self) {
        self.tcp_fails(std::io::ErrorKind::ConnectionRefused);
    }

    /// Our connection attempt fails with `kind` (`HostUnreachable`:
    /// nothing answered ARP/ND for the address).
    pub fn tcp_fails(&mut self, kind: std::io::ErrorKind) {
        let conn = self.connecting.take().expect("no connection attempt");
        if kind == std::io::ErrorKind::ConnectionRefused {
            self.note(format!("> connection {conn} refused"));
        } else {
            self.note(format!("> connection {conn} failed: {kind}"));
        }
        self.core.handle(
            self.now,
            Input::Connected {
                conn,
                result: Err(kind.into()),
            },
        );
        self.pump();
    }

    /// A connection from the peer's address is offered to the core.
    fn offer(&mut self) {
        self.offered = true;
        self.core.handle(
            self.now,
            Input::Incoming {
                local: Some(SocketAddr::new(self.remote_cfg.ours.into(), 179)),
                remote_port: 40000,
            },
        );
        self.pump();
    }

    /// The remote connects to us (a fresh remote session).
    pub fn remote_connects(&mut self) {
        self.note("> the peer connects".into());
        self.remote = self.remote_cfg.session();
        self.remote.start(self.now);
        self.remote.connected(self.now);
        self.offer();
    }

    /// The connection drops under both (no NOTIFICATION).
    pub fn tcp_lost(&mut self) {
        let conn = self.conn.take().expect("no connection");
        self.note(format!("> connection {conn} lost"));
        self.remote.closed(self.now);
        self.drain_remote_events();
        self.core.handle(self.now, Input::Closed { conn });
        self.pump();
    }

    /// The remote sends an UPDATE announcing `prefixes` with `a`, next
    /// hop `nh`.
    pub fn announce(&mut self, prefixes: &[&str], nh: Ipv4Addr, a: PathAttributes) {
        self.note(format!(
            "> peer announces {} via {nh} path {}",
            prefixes.join(" "),
            a.as_path
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default()
        ));
        let ps: Vec<Prefix> = prefixes.iter().map(|p| prefix(p)).collect();
        let cxt = self.remote.context();
        for m in bgp::update::encode_announce(&a, NextHop::V4(nh), &ps, &cxt) {
            self.remote.send(self.now, m);
        }
        self.pump();
    }

    pub fn withdraw(&mut self, prefixes: &[&str]) {
        self.note(format!("> peer withdraws {}", prefixes.join(" ")));
        let ps: Vec<Prefix> = prefixes.iter().map(|p| prefix(p)).collect();
        let cxt = self.remote.context();
        for m in bgp::update::encode_withdraw(&ps, &cxt) {
            self.remote.send(self.now, m);
        }
        self.pump();
    }

    pub fn end_of_rib(&mut self) {
        self.note("> peer sends End-of-RIB".into());
        self.remote.send(
            self.now,
            bgp::update::encode_end_of_rib(AfiSafi::IPV4_UNICAST),
        );
        self.pump();
    }

    /// Raw bytes from the remote, as if its session had sent them.
    pub fn raw(&mut self, what: &str, bytes: Vec<u8>) {
        self.note(format!("> peer sends {what}"));
        let conn = self.conn.expect("no connection");
        self.core.handle(
            self.now,
            Input::Bytes {
                conn,
                data: bytes,
                queued: 0,
            },
        );
        self.pump();
    }

    pub fn route_refresh(&mut self) {
        self.note("> peer sends ROUTE-REFRESH ipv4".into());
        self.remote.request_refresh(AfiSafi::IPV4_UNICAST);
        self.pump();
    }

    /// The remote ends the session with a NOTIFICATION.
    pub fn remote_stops(&mut self, n: bgp::notification::Notification) {
        self.note(format!("> peer sends NOTIFICATION {n}"));
        self.remote.stop(self.now, n);
        self.pump();
    }

    /// Something for the core from the daemon (not the remote).
    pub fn input(&mut self, what: &str, input: Input) {
        self.note(format!("> {what}"));
        if let Input::SendQueueOver { conn, .. } | Input::SendHoldExpired { conn } = input {
            self.stuck = Some(conn);
        }
        self.core.handle(self.now, input);
        self.pump();
    }

    /// A second connection from the peer's address while the first is up
    /// (a second remote that the test does not drive further).
    pub fn offer_second_connection(&mut self) {
        self.note("> another connection from the peer".into());
        self.offer();
        self.offered = false;
    }

    /// Lets `d` pass for the core only: the remote is frozen (sends
    /// nothing, not even KEEPALIVEs).
    pub fn advance_core_only(&mut self, d: Duration) {
        self.note(format!("> {} s pass; the peer is frozen", d.as_secs_f64()));
        let end = self.now + d;
        while let Some(t) = self.core.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.core.handle_timeout(self.now);
            while let Some(a) = self.core.poll_action() {
                if let Action::Send { .. } = a {
                    // Nothing reaches a frozen peer.
                    let Action::Send { conn, bytes } = a else {
                        unreachable!()
                    };
                    let line = describe(&bytes, &self.remote.context());
                    self.note(format!("< send {conn}: {line}"));
                    continue;
                }
                self.act(a);
            }
        }
        self.now = end;
    }

    /// Lets `d` pass on the fake clock, firing every timer due on the way.
    pub fn advance(&mut self, d: Duration) {
        self.note(format!("> {} s pass", d.as_secs_f64()));
        let end = self.now + d;
        loop {
            let next = [self.core.poll_timeout(), self.remote.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            if self.core.poll_timeout().is_some_and(|c| c <= self.now) {
                self.core.handle_timeout(self.now);
            }
            if self.remote.poll_timeout().is_some_and(|c| c <= self.now) {
                self.remote.handle_timeout(self.now);
            }
            self.pump();
        }
        self.now = end;
    }

    fn drain_remote_events(&mut self) {
        while let Some(ev) = self.remote.poll_event() {
            match ev {
                Event::Established(n) => {
                    self.note(format!("  peer: Established (hold time {})", n.hold_time))
                }
                Event::Down(r) => {
                    self.note(format!("  peer: session down ({r})"));
                    self.table.clear();
                }
                Event::Update(u) => {
                    for p in u.withdrawn_all() {
                        self.table.remove(&p);
                    }
                    for (p, nh) in u.announced() {
                        let path = u
                            .attributes
                            .as_path
                            .as_ref()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let comms: Vec<String> = u
                            .attributes
                            .communities
                            .iter()
                            .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                            .collect();
                        self.table.insert(
                            p,
                            format!("via {nh} path [{path}] communities [{}]", comms.join(" ")),
                        );
                    }
                }
                Event::Disconnect => {
                    // The remote closed its end: the core sees the close.
                    if let Some(conn) = self.conn.take() {
                        self.core.handle(self.now, Input::Closed { conn });
                    }
                }
                Event::Connect | Event::StateChanged { .. } | Event::RawUpdate(_) => {}
                Event::RouteRefresh(_) => {}
            }
        }
    }

    /// Moves actions and bytes between the core and the remote until
    /// neither has anything left to do.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(a) = self.core.poll_action() {
                progressed = true;
                self.act(a);
            }
            while let Some(bytes) = self.remote.poll_transmit() {
                progressed = true;
                if let Some(conn) = self.conn {
                    self.core.handle(
                        self.now,
                        Input::Bytes {
                            conn,
                            data: bytes,
                            queued: 0,
                        },
                    );
                }
            }
            self.drain_remote_events();
            if !progressed {
                break;
            }
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Connect { conn } => {
                self.note(format!("< connect {conn}"));
                self.connecting = Some(conn);
            }
            Action::CancelConnect => {
                if self.connecting.take().is_some() {
                    self.note("< cancel the connection attempt".into());
                }
            }
            Action::Accept { conn } => {
                self.note(format!("< accept as {conn}"));
                assert!(
                    std::mem::take(&mut self.offered),
                    "accepted nothing offered"
                );
                self.conn = Some(conn);
            }
            Action::Refuse => {
                self.note("< refuse the connection (Cease, Connection Rejected)".into());
                assert!(std::mem::take(&mut self.offered), "refused nothing offered");
            }
            Action::Attach { conn } => {
                self.note(format!("< attach {conn}"));
            }
            Action::Send { conn, bytes } => {
                let line = describe(&bytes, &self.remote.context());
                if Some(conn) == self.stuck {
                    self.note(format!(
                        "< send {conn}: {line} (lost: the writer is stopped)"
                    ));
                    return;
                }
                self.note(format!("< send {conn}: {line}"));
                if Some(conn) == self.conn {
                    self.remote.receive(self.now, &bytes);
                }
            }
            Action::Close { conn } => {
                self.note(format!("< close {conn}"));
                if Some(conn) == self.conn {
                    self.conn = None;
                    self.remote.closed(self.now);
                }
            }
            Action::Rib(m) => {
                self.note(format!("< rib: {}", describe_rib(&m)));
                self.rib.push(m);
            }
            Action::BfdAdd { timers, pin_peer } => self.note(format!(
                "< bfd add {} ms x {} pinned {pin_peer}",
                timers.interval.as_millis(),
                timers.multiplier
            )),
            Action::BfdRemove((a, i)) => self.note(format!("< bfd remove {a} {i:?}")),
            Action::Bmp { .. } => {}
        }
    }

    /// The state of the remote's session.
    pub fn remote_state(&self) -> State {
        self.remote.state()
    }

    /// The accepted routes the core has sent the Loc-RIB and not
    /// withdrawn since, as "prefix via next hop".
    pub fn rib_routes(&self) -> Vec<String> {
        let mut held = std::collections::BTreeMap::new();
        for m in &self.rib {
            match m {
                RibMsg::Update {
                    announce, withdraw, ..
                } => {
                    for p in withdraw {
                        held.remove(p);
                    }
                    for (p, nh, _) in announce {
                        held.insert(*p, nh.to_string());
                    }
                }
                RibMsg::PeerDown(_) => held.clear(),
                _ => {}
            }
        }
        held.iter().map(|(p, nh)| format!("{p} via {nh}")).collect()
    }
}

/// One message as the remote decodes it, in a line.
pub fn describe(bytes: &[u8], cxt: &bgp::Context) -> String {
    match Message::decode(bytes, cxt) {
        Ok(Some((Message::Open(o), _))) => {
            let caps: Vec<String> = o.capabilities.iter().map(|c| c.describe()).collect();
            format!(
                "OPEN as {} hold {} id {} [{}]",
                o.asn(),
                o.hold_time,
                o.bgp_id,
                caps.join(", ")
            )
        }
        Ok(Some((Message::Keepalive, _))) => "KEEPALIVE".into(),
        Ok(Some((Message::Notification(n), _))) => format!("NOTIFICATION {n}"),
        Ok(Some((Message::RouteRefresh(r), _))) => format!("ROUTE-REFRESH {}", r.family),
        Ok(Some((Message::Update(u), _))) => {
            if let Some(f) = u.end_of_rib() {
                return format!("UPDATE End-of-RIB {f}");
            }
            let mut parts = Vec::new();
            let w = u.withdrawn_all();
            if !w.is_empty() {
                let w: Vec<String> = w.iter().map(|p| p.to_string()).collect();
                parts.push(format!("withdraw {}", w.join(" ")));
            }
            let a = u.announced();
            if !a.is_empty() {
                let ps: Vec<String> = a.iter().map(|(p, _)| p.to_string()).collect();
                let path = u
                    .attributes
                    .as_path
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                parts.push(format!(
                    "announce {} next hop {} path [{}]",
                    ps.join(" "),
                    a[0].1,
                    path
                ));
            }
            format!("UPDATE {}", parts.join("; "))
        }
        Ok(None) => "(incomplete)".into(),
        Err(n) => format!("(undecodable: {n})"),
    }
}

fn describe_rib(m: &RibMsg) -> String {
    match m {
        RibMsg::Update {
            peer,
            announce,
            withdraw,
        } => {
            let mut parts = Vec::new();
            for (p, nh, _) in announce {
                parts.push(format!("+{p} via {nh}"));
            }
            for p in withdraw {
                parts.push(format!("-{p}"));
            }
            format!("update from {} ({})", peer.name, parts.join(" "))
        }
        RibMsg::PeerDown(_) => "peer down: every route withdrawn".into(),
        RibMsg::Unsubscribe(_) => "unsubscribe".into(),
        RibMsg::Refeed { family, conn, .. } => format!("refeed {family} for {conn}"),
        RibMsg::SetPolicy { policy, .. } => format!("export policy {}", policy.name),
        _ => "other".into(),
    }
}

//! The sans-IO core of a peer: everything a neighbor's task decides, with
//! no socket, task or channel in it. It owns the neighbor's sessions (one,
//! or two while a connection collision or a takeover is resolved), its
//! Adj-RIB-In and its graceful-restart state, and drives the sans-IO
//! [`bgp::session`].
//!
//! The task around it (`peer/mod.rs`) feeds it [`Input`]s with the time,
//! and carries out the [`Action`]s it yields: connect, send, close, a
//! message to the Loc-RIB, a BFD session to start or end. Its timers (the
//! sessions', the stale routes', the nudge and the IPv6 resend) come out
//! of [`PeerCore::poll_timeout`]. Unit and conformance tests drive it on a
//! fake clock.
//!
//! ```text
//!   Input ──▶ PeerCore::handle(now, input) ──▶ poll_action() ──▶ Action
//!             (Sessions, Adj-RIB-In, GR)        poll_timeout() ──▶ Instant
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgp::collision::{self, Loser};
use bgp::notification::{cease, Notification};
use bgp::session::{self, Event, Session, State};
use bgp::update::{encode_announce, encode_end_of_rib};
use bgp::{AfiSafi, NextHop, PathAttributes, Prefix};
use tracing::{debug, info, warn};

use crate::northbound::config::{Neighbor, RemoteAsConfig, SessionSettings};
use crate::northbound::control::{PeerStatus, RouteEntry};
use crate::routing::adj_rib_in::{AdjRibIn, Judge, PathRules};
use crate::routing::authorisation::VmPolicy;
use crate::routing::peer_info::{ConnId, PeerId, PeerInfo};
use crate::routing::policy::Policy;
use crate::routing::rib::RibMsg;
use crate::southbound::net::Interface;

mod admin;
mod bmp;
pub use admin::{AdminError, ExportAsk};

/// BIRD (2.0.12 at least) sometimes sends nothing for up to 3 s after it
/// accepts a new session from the VM's hypervisor in place of an old one
/// (a graceful-restart takeover after a migration): the export is queued,
/// but its main loop sleeps in poll() until the next packet or its 3 s
/// tick. A VM that has sent no UPDATE this long after Established gets our
/// End-of-RIB once more: a packet, which wakes it, and harmless to any
/// speaker. (It was a ROUTE-REFRESH until FRR 8.4 showed that one arriving
/// before its first UPDATE leaves it never withdrawing what it announced
/// on that session.)
pub const NUDGE_AFTER: Duration = Duration::from_millis(10);

/// BIRD 2.0.12 sending its table sometimes stops short of the end: once
/// its sending has caught up with its table walk, the walk's last
/// UPDATEs wait until its main loop next wakes, which is the next packet
/// it receives or its 3 s tick (measured: every 100k run into tapir,
/// which reads fast enough to catch up, and 4 in 20 into BIRD). A peer
/// whose table is on its way (UPDATEs, no End-of-RIB yet) and that has
/// sent nothing for this long gets one KEEPALIVE, which wakes it; at most
/// one a second (RFC 4271 §4.4).
pub const WAKE_AFTER: Duration = Duration::from_millis(40);

/// What the daemon as a whole tells every peer core.
#[derive(Clone, Debug)]
pub struct Identity {
    pub router_id: std::net::Ipv4Addr,
    pub local_as: u32,
    /// True while tapir comes back from a graceful restart: OPENs carry
    /// the Restart State and Forwarding State bits (RFC 4724 §4.1).
    pub restarting: Arc<std::sync::atomic::AtomicBool>,
    /// As a helper: the longest a peer's restart time is honoured
    /// (`[graceful-restart] helper-max-time`; a reload sets it).
    pub gr_helper_max: Arc<std::sync::atomic::AtomicU16>,
    /// A BFD task runs: sessions with `bfd` set ask it for a BFD session.
    pub bfd: bool,
    /// BMP collectors are configured: sessions in its scope tell them
    /// what happens.
    pub bmp: Option<crate::northbound::bmp::Scope>,
}

/// What happens to a peer, in the order it happens.
#[derive(Debug)]
pub enum Input {
    /// A connection the listener accepted from the neighbor's address
    /// (its local end). The core answers [`Action::Accept`] or
    /// [`Action::Refuse`].
    Incoming {
        local: Option<SocketAddr>,
        remote_port: u16,
    },
    /// Our connection attempt for `conn` ended: its local end, or why it
    /// failed. On success the core answers [`Action::Attach`] if it still
    /// wants the connection.
    Connected {
        conn: ConnId,
        result: std::io::Result<Option<SocketAddr>>,
    },
    /// Bytes read from `conn`; `queued`: bytes still waiting in its
    /// outbox (what we sent that has not left yet).
    Bytes {
        conn: ConnId,
        data: Vec<u8>,
        queued: usize,
    },
    /// The peer closed `conn`, or it failed.
    Closed { conn: ConnId },
    /// The writer of `conn` made no progress for the send hold time.
    SendHoldExpired { conn: ConnId },
    /// More than `max-send-queue` bytes wait for `conn`'s socket (the
    /// task has already dropped its writer).
    SendQueueOver { conn: ConnId, queued: usize },
    /// A new authorisation snapshot: every route is judged again.
    Policy(Arc<VmPolicy>),
    /// Changes to what the Loc-RIB exports to this neighbor (`None`:
    /// withdrawn).
    Export(Vec<(Prefix, Option<Arc<PathAttributes>>)>),
    /// The whole table of a family for `conn`; End-of-RIB follows `end`.
    Refeed {
        conn: ConnId,
        family: AfiSafi,
        routes: Vec<(Prefix, Arc<PathAttributes>)>,
        end: bool,
    },
    /// A reload changed what applies from the next session on.
    NextSession(Box<PeerConfig>),
    /// A reload changed the export policy (no session reset).
    SetExport(Arc<Policy>),
    /// The Loc-RIB is complete after a restart: End-of-RIB may go out.
    RibReady,
    /// BFD saw the path fail.
    BfdDown,
    /// The kernel has just learned the VM's link-layer address.
    Reachable,
    /// Stop with this NOTIFICATION; the routes leave the Loc-RIB.
    Shutdown(Notification),
    /// Stop without a NOTIFICATION (a graceful restart of tapir).
    Abort,
    /// The BMP exporter asks for the session's state or statistics.
    Bmp(crate::northbound::bmp::Ask),
}

/// What the task around the core must do, in order.
pub enum Action {
    /// Open a connection for `conn` to the neighbor (`PeerCore::connect_to`
    /// says where and how), in place of any attempt in flight.
    Connect { conn: ConnId },
    /// Give up the connection attempt in flight, if any.
    CancelConnect,
    /// The connection just offered (`Input::Incoming`) is now `conn`.
    Accept { conn: ConnId },
    /// The connection offered is refused: send it Cease / Connection
    /// Rejected and close it.
    Refuse,
    /// The connection `Input::Connected` announced is now `conn`.
    Attach { conn: ConnId },
    /// Bytes for `conn`'s socket.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// Close `conn`'s socket once what is queued has left; what it reads
    /// from now on is ignored.
    Close { conn: ConnId },
    /// A message for the Loc-RIB.
    Rib(RibMsg),
    /// Start a BFD session with the peer (the BGP session is up).
    BfdAdd {
        timers: crate::southbound::bfd::BfdTimers,
        /// A static neighbor's peer never changes; a VM's or a gateway's
        /// may be taken over after a move.
        pin_peer: bool,
    },
    /// End the BFD session started for (peer, interface index).
    BfdRemove((IpAddr, Option<u32>)),
    /// A BMP message for the exporter.
    Bmp {
        to: crate::northbound::bmp::To,
        kind: crate::northbound::bmp::Kind,
        bytes: Vec<u8>,
    },
}

/// One connection and the session that runs on it.
struct Conn {
    id: ConnId,
    session: Session,
    /// A socket carries it (the task has it): bytes may be sent.
    attached: bool,
    /// Its local end, once attached.
    local: Option<SocketAddr>,
    /// The peer's TCP port, once attached.
    remote_port: u16,
    /// Bytes still in its outbox at the last read.
    queued: usize,
    /// Families whose whole table is on its way to the peer (after
    /// Established or a ROUTE-REFRESH).
    answering: Vec<Answering>,
}

pub struct PeerCore {
    cfg: PeerConfig,
    env: Identity,
    /// The time of the input being handled.
    now: Instant,
    conns: Vec<Conn>,
    next_id: u64,
    adj_rib_in: AdjRibIn,
    state_since: Instant,
    flaps: u64,
    /// Stopped by `tapir neighbor disable`: no connection either way
    /// until enabled.
    disabled: bool,
    /// The session has been Established: a VM session is never a probe
    /// again, and its attempts no longer back off.
    ever_established: bool,
    /// This peer's identity in the Loc-RIB.
    id: PeerId,
    /// Set while Established: what the Loc-RIB knows of this peer.
    info: Option<Arc<PeerInfo>>,
    /// How many prefixes the Loc-RIB exports to this neighbor, by family
    /// (upstream neighbors only).
    exported: crate::routing::rib::Exported,
    /// The peer's graceful restart capability from the last session.
    peer_gr: Option<bgp::capability::GracefulRestart>,
    /// When routes kept for a restarting peer are given up.
    stale_until: Option<Instant>,
    /// A VM session that has sent nothing since Established gets our
    /// End-of-RIB again at this time (see `NUDGE_AFTER`).
    nudge_at: Option<Instant>,
    /// The peer's table is on its way (UPDATEs since Established, no
    /// End-of-RIB yet): a KEEPALIVE goes out at this time if nothing more
    /// arrives meanwhile (see `WAKE_AFTER`).
    wake_at: Option<Instant>,
    /// When the last such KEEPALIVE went out.
    woken_at: Option<Instant>,
    /// The families whose End-of-RIB the peer has yet to send: its table
    /// is complete when none is left.
    tables_pending: Vec<AfiSafi>,
    /// Started after our own restart: the session waits for the Loc-RIB
    /// (`Input::RibReady`), and a table sent meanwhile went without
    /// End-of-RIB.
    awaiting_rib: bool,
    /// IPv6 routes went unannounced for want of a global next hop (a
    /// link-local session whose interface has no usable global address
    /// yet): the family is sent again at this time.
    resend_v6_at: Option<Instant>,
    /// The BFD session started for this session: (peer, interface index).
    bfd_registered: Option<(IpAddr, Option<u32>)>,
    /// Messages sent and received, all connections, by type code.
    sent: [u64; 6],
    received: [u64; 6],
    /// Lines the peer's bytes may make us log (malformed attributes,
    /// refused routes).
    log_budget: crate::log_budget::LogBudget,
    /// The last NOTIFICATION each way, as text.
    last_sent: Option<String>,
    last_received: Option<String>,
    actions: VecDeque<Action>,
    /// A global IPv6 address of an interface (by index), for the next hop
    /// of a link-local session (`global_v6_from`).
    global_v6: fn(u32) -> Option<Ipv6Addr>,
    /// BMP reports this session: a collector is connected while set.
    bmp_on: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The BMP per-peer header while Established and reported.
    bmp_peer: Option<crate::northbound::bmp::wire::Peer>,
    /// The UPDATE being handled, as received (BMP's pre-policy view).
    bmp_raw: Option<Vec<u8>>,
    /// Stopping without a NOTIFICATION (`Input::Abort`): a session that
    /// ends now was closed by us.
    aborting: bool,
    /// When `Input::Reachable` last started an attempt (one per
    /// connect-retry at most: a VM flapping its MAC gets no more).
    retried_at: Option<Instant>,
}

/// The longest wait between connection attempts to a VM address that
/// never answered.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The same while nothing answers at all (the attempt failed with "host
/// unreachable" or "network unreachable", or timed out: no ARP/ND reply,
/// no RST): the VM is not running here yet. A guest firewall that drops
/// SYNs, or rejects them with "host prohibited", looks the same.
pub const PROBE_ABSENT_MAX: Duration = Duration::from_secs(4);

/// A session's settings; `probe`: a VM address that has never had a
/// session, whose attempts back off.
fn session_config(cfg: &PeerConfig, env: &Identity, probe: bool) -> session::Config {
    session::Config {
        local_as: env.local_as,
        remote_as: cfg.session.remote_as.to_session(),
        router_id: env.router_id,
        hold_time: cfg.session.hold_time,
        connect_retry: cfg.session.connect_retry,
        // A VM address where nothing speaks BGP is a probe: tried less
        // and less often, up to once a minute, until something answers.
        connect_retry_max: if probe {
            PROBE_BACKOFF_MAX.max(cfg.session.connect_retry)
        } else {
            cfg.session.connect_retry
        },
        passive: cfg.passive,
        families: cfg.families.iter().map(|a| AfiSafi::unicast(*a)).collect(),
        extended_next_hop: cfg.extended_next_hop,
        graceful_restart: cfg.graceful_restart,
        restarting: cfg.graceful_restart.is_some() && env.restarting.load(Relaxed),
        keep_raw_updates: bmp::monitored(cfg, env),
    }
}

impl PeerCore {
    /// A peer with no connection yet; `start` begins.
    pub fn new(cfg: PeerConfig, env: Identity, id: PeerId, now: Instant) -> PeerCore {
        let bmp_on = bmp::monitored(&cfg, &env)
            .then(|| env.bmp.as_ref().map(|s| s.active.clone()))
            .flatten();
        PeerCore {
            cfg,
            env,
            now,
            // Nearly always one (two only while a collision is resolved): a
            // first push would make room for four, 2 KiB a peer.
            conns: Vec::with_capacity(1),
            next_id: 1,
            adj_rib_in: AdjRibIn::default(),
            state_since: now,
            flaps: 0,
            disabled: false,
            ever_established: false,
            id,
            info: None,
            exported: Default::default(),
            peer_gr: None,
            stale_until: None,
            nudge_at: None,
            wake_at: None,
            woken_at: None,
            tables_pending: Vec::new(),
            awaiting_rib: false,
            resend_v6_at: None,
            bfd_registered: None,
            sent: [0; 6],
            received: [0; 6],
            log_budget: Default::default(),
            last_sent: None,
            last_received: None,
            actions: VecDeque::new(),
            global_v6: crate::southbound::net::global_address,
            bmp_on,
            bmp_peer: None,
            bmp_raw: None,
            aborting: false,
            retried_at: None,
        }
    }

    /// Where the global IPv6 next hop of a link-local session comes from
    /// (tests: a fixed address instead of the host's interfaces).
    pub fn with_global_v6(mut self, f: fn(u32) -> Option<Ipv6Addr>) -> PeerCore {
        self.global_v6 = f;
        self
    }

    pub fn cfg(&self) -> &PeerConfig {
        &self.cfg
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The neighbor's routes, as judged (tests and fuzzing look in).
    pub fn adj_rib_in(&self) -> &AdjRibIn {
        &self.adj_rib_in
    }

    /// The Loc-RIB's count of what it exports to this neighbor.
    pub fn exported(&self) -> &crate::routing::rib::Exported {
        &self.exported
    }

    /// The subscription an upstream neighbor asks of the Loc-RIB (the
    /// task adds its mailbox): (asn if fixed, eBGP, export policy).
    pub fn subscription(&self) -> Option<(Option<u32>, bool, Arc<Policy>)> {
        let policy = self.cfg.export.clone()?;
        let asn = match self.cfg.session.remote_as {
            RemoteAsConfig::Exact(a) => Some(a),
            _ => None,
        };
        let ebgp = match self.cfg.session.remote_as {
            RemoteAsConfig::Internal => false,
            RemoteAsConfig::Exact(a) => a != self.env.local_as,
            _ => true,
        };
        Some((asn, ebgp, policy))
    }

    /// The state of the primary session.
    pub fn state(&self) -> State {
        self.conns
            .first()
            .map_or(State::Idle, |c| c.session.state())
    }

    /// RFC 9687: how long a write may make no progress before the peer is
    /// taken to have stopped reading. The configured value, else 8 minutes
    /// or twice the hold time, whichever is larger.
    pub fn send_hold_time(&self) -> Duration {
        self.cfg.session.limits.send_hold_time.unwrap_or_else(|| {
            Duration::from_secs(480.max(2 * u64::from(self.cfg.session.hold_time)))
        })
    }

    /// The address a connection attempt goes to (a link-local one scoped
    /// to the session's interface).
    pub fn connect_to(&self) -> SocketAddr {
        match (self.cfg.address, &self.cfg.interface) {
            (IpAddr::V6(a), Some(i)) if crate::southbound::net::is_link_local(a) => {
                SocketAddr::V6(std::net::SocketAddrV6::new(a, self.cfg.port, 0, i.index))
            }
            (a, _) => SocketAddr::new(a, self.cfg.port),
        }
    }

    /// Starts the first session. After a graceful restart, an upstream
    /// session waits until the Loc-RIB is complete (`Input::RibReady`):
    /// the neighbor keeps our routes meanwhile (its restart timer), and
    /// then gets the whole table and End-of-RIB at once, so it never sees
    /// a partial table (RFC 4724 §4.1).
    pub fn start(&mut self, now: Instant) {
        self.now = now;
        let mut primary = self.new_conn();
        let wait_for_rib = self.cfg.export.is_some() && self.env.restarting.load(Relaxed);
        self.awaiting_rib = wait_for_rib;
        if !wait_for_rib {
            primary.session.start(now);
        }
        self.conns.push(primary);
        self.process();
    }

    /// The next time `handle_timeout` must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .iter()
            .filter_map(|c| c.session.poll_timeout())
            .chain(self.stale_until)
            .chain(self.nudge_at)
            .chain(self.wake_at)
            .chain(self.resend_v6_at)
            .min()
    }

    /// The next action for the task, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        let a = self.actions.pop_front();
        if a.is_none() && self.actions.capacity() > 0 {
            // Idle sessions (a thousand VMs) keep no queue.
            self.actions = VecDeque::new();
        }
        a
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        for c in &mut self.conns {
            c.session.handle_timeout(now);
        }
        if self.stale_until.is_some_and(|t| t <= now) {
            self.flush_stale(None);
        }
        if self.nudge_at.is_some_and(|t| t <= now) {
            self.nudge();
        }
        if self.wake_at.is_some_and(|t| t <= now) {
            self.wake();
        }
        if self.resend_v6_at.is_some_and(|t| t <= now) {
            self.resend_v6_at = None;
            if let Some(i) = self.established() {
                self.send_family(i, AfiSafi::IPV6_UNICAST);
            }
        }
        self.process();
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = now;
        match input {
            Input::Incoming { local, remote_port } => self.incoming(local, remote_port),
            Input::Connected { conn, result } => self.connected(conn, result),
            Input::Bytes { conn, data, queued } => self.bytes(conn, &data, queued),
            Input::Closed { conn } => {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    c.session.closed(now);
                }
            }
            Input::SendHoldExpired { conn } => {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    warn!(
                        send_hold_time = ?self.cfg.session.limits.send_hold_time,
                        "send hold timer expired (RFC 9687): the peer stopped reading; connection closed"
                    );
                    crate::limits::hit(crate::limits::Limit::SendHoldTime);
                    // The NOTIFICATION cannot go out (the writer is stuck);
                    // it records why the session ended.
                    let n = Notification::new(bgp::notification::code::SEND_HOLD_TIMER_EXPIRED, 0);
                    c.session.reset(now, n);
                }
            }
            Input::SendQueueOver { conn, queued } => {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    // The peer reads slower than we produce: drop what is
                    // queued rather than grow without end.
                    warn!(
                        queued,
                        limit = self.cfg.session.limits.max_send_queue,
                        "send queue over max-send-queue: connection closed (Cease, Out of Resources)"
                    );
                    crate::limits::hit(crate::limits::Limit::SendQueue);
                    let n =
                        Notification::new(bgp::notification::code::CEASE, cease::OUT_OF_RESOURCES);
                    c.session.reset(now, n);
                }
            }
            Input::Policy(p) => {
                let vm = p.entry.as_ref().map(|(n, _)| n.clone());
                self.cfg.policy = Some(p);
                self.judge_all();
                if vm != self.cfg.vm {
                    self.rename(vm);
                }
            }
            Input::Export(changes) => self.export_changes(changes),
            Input::Refeed {
                conn,
                family,
                routes,
                end,
            } => self.refeed(conn, family, &routes, end),
            Input::BfdDown => {
                // RFC 9384: Cease / BFD Down; routes go with the session.
                let n = Notification::new(bgp::notification::code::CEASE, cease::BFD_DOWN);
                for c in &mut self.conns {
                    if c.session.state() == State::Established {
                        warn!("BFD down: ending the BGP session");
                        c.session.reset(now, n.clone());
                    }
                }
            }
            Input::Reachable => self.reachable(),
            Input::NextSession(c) => self.next_session(*c),
            Input::SetExport(policy) => {
                if self.cfg.export.as_ref().is_some_and(|p| **p != *policy) {
                    info!(policy = %policy.name, "export policy changed");
                    self.cfg.export = Some(policy.clone());
                    self.tell_rib(RibMsg::SetPolicy {
                        peer: self.id,
                        policy,
                    });
                }
            }
            Input::RibReady => self.rib_ready(),
            Input::Shutdown(notification) => {
                self.bfd_remove();
                for c in &mut self.conns {
                    c.session.stop(now, notification.clone());
                }
                self.process();
                self.close_all();
                self.tell_rib(RibMsg::PeerDown(self.id));
                self.tell_rib(RibMsg::Unsubscribe(self.id));
                return;
            }
            Input::Bmp(ask) => self.bmp_ask(ask),
            Input::Abort => {
                self.aborting = true;
                // The session ends without a Down event: BMP is told.
                self.bmp_down(&session::DownReason::ConnectionClosed);
                for c in &mut self.conns {
                    c.session.abort(now);
                }
                self.process();
                self.close_all();
                return;
            }
        }
        self.process();
    }

    /// A new connection number.
    fn next_conn(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    fn new_conn(&mut self) -> Conn {
        Conn {
            id: self.next_conn(),
            session: Session::new(session_config(&self.cfg, &self.env, self.may_probe())),
            attached: false,
            local: None,
            remote_port: 0,
            queued: 0,
            answering: Vec::new(),
        }
    }

    /// The Established connection, if any.
    fn established(&self) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.session.state() == State::Established)
    }

    /// Ends every connection (the task stops).
    fn close_all(&mut self) {
        for c in std::mem::take(&mut self.conns) {
            self.actions.push_back(Action::Close { conn: c.id });
        }
    }

    /// A connection on its way out: what its session still has to send
    /// goes first (a NOTIFICATION), then the socket closes.
    fn release(&mut self, i: usize) {
        self.flush_transmit(i);
        let id = self.conns[i].id;
        if self.conns[i].attached {
            self.actions.push_back(Action::Close { conn: id });
        }
        self.conns[i].attached = false;
    }

    /// Hands what the session of connection `i` has to send to its socket.
    fn flush_transmit(&mut self, i: usize) -> bool {
        let mut any = false;
        while let Some(b) = self.conns[i].session.poll_transmit() {
            any = true;
            count_sent(&mut self.sent, &mut self.last_sent, &b);
            if self.conns[i].attached {
                let conn = self.conns[i].id;
                self.actions.push_back(Action::Send { conn, bytes: b });
            }
        }
        any
    }

    fn incoming(&mut self, local: Option<SocketAddr>, remote_port: u16) {
        let now = self.now;
        let state = self.conns[0].session.state();
        match state {
            _ if self.disabled => {
                info!("connection refused: the neighbor is disabled (tapir neighbor enable)");
                self.actions.push_back(Action::Refuse);
            }
            State::Idle | State::Connect | State::Active => {
                // The peer was faster than our own attempt: use its
                // connection and drop ours (§8.2.2, Connect state).
                self.actions.push_back(Action::CancelConnect);
                let old = self.conns[0].id;
                if self.conns[0].attached {
                    self.actions.push_back(Action::Close { conn: old });
                }
                let id = self.next_conn();
                let c = &mut self.conns[0];
                c.id = id;
                c.attached = true;
                c.local = local;
                c.remote_port = remote_port;
                self.actions.push_back(Action::Accept { conn: id });
                self.conns[0].session.accepted(now);
            }
            // RFC 4724 §4.2: a peer that can restart gracefully and opens a
            // new connection while the session is up may have restarted; for
            // a VM's gateway it may be the new hypervisor after a migration.
            // The connection runs beside the session until its OPEN says
            // which (`take_over`).
            State::Established
                if self.cfg.takeover && self.conns.len() == 1 && self.peer_gr.is_some() =>
            {
                debug!("new connection while Established: its OPEN decides (RFC 4724 §4.2)");
                self.second_conn(local, remote_port);
            }
            State::OpenSent | State::OpenConfirm if self.conns.len() == 1 => {
                // A collision in the making (§6.8): run both until the
                // peer's identifier is known.
                self.second_conn(local, remote_port);
            }
            _ => {
                info!("connection refused: a session with this neighbor is already up");
                self.actions.push_back(Action::Refuse);
            }
        }
    }

    fn second_conn(&mut self, local: Option<SocketAddr>, remote_port: u16) {
        let mut c = self.new_conn();
        c.attached = true;
        c.local = local;
        c.remote_port = remote_port;
        self.actions.push_back(Action::Accept { conn: c.id });
        c.session.accepted(self.now);
        self.conns.push(c);
    }

    fn connected(&mut self, conn: ConnId, result: std::io::Result<Option<SocketAddr>>) {
        let Some(i) = self.conns.iter().position(|c| c.id == conn) else {
            return;
        };
        let state = self.conns[i].session.state();
        match result {
            Ok(local) if matches!(state, State::Connect | State::Active) => {
                let remote_port = self.connect_to().port();
                let c = &mut self.conns[i];
                c.attached = true;
                c.local = local;
                c.remote_port = remote_port;
                self.actions.push_back(Action::Attach { conn });
                self.conns[i].session.connected(self.now);
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "connect failed");
                if self.may_probe() {
                    // Nothing answers there, not even ARP/ND (the guest
                    // is paused for an incoming migration, or still
                    // boots): tried every few seconds, not backed off to
                    // a minute, as a VM whose kernel refuses BGP is. The
                    // kernel tells "host unreachable" to one socket a
                    // second at most (its ICMP rate limit towards our
                    // own address), so with many such VMs most attempts
                    // just time out: the same.
                    let absent = matches!(
                        e.kind(),
                        std::io::ErrorKind::HostUnreachable
                            | std::io::ErrorKind::NetworkUnreachable
                            | std::io::ErrorKind::TimedOut
                    );
                    self.conns[i].session.set_connect_retry_max(if absent {
                        PROBE_ABSENT_MAX
                    } else {
                        PROBE_BACKOFF_MAX
                    });
                }
                self.conns[i].session.connect_failed(self.now);
            }
        }
    }

    /// The VM's link-layer address has just become known: the guest runs
    /// here now (a live migration's switchover, a boot). A session waiting
    /// to try again tries at once: QEMU's guest announces itself with a
    /// gratuitous ARP after a migration, and a probe backed off to a
    /// minute would otherwise leave the VM's prefixes unrouted that long.
    /// A VM can cause this at will, by changing its MAC: at most one such
    /// attempt per connect-retry interval (at least a second).
    fn reachable(&mut self) {
        if self.cfg.group.is_none() || self.disabled {
            return;
        }
        let now = self.now;
        let every = self.cfg.session.connect_retry.max(Duration::from_secs(1));
        if self
            .retried_at
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        if self
            .conns
            .first_mut()
            .is_some_and(|c| c.session.retry_now(now))
        {
            self.retried_at = Some(now);
            debug!("the VM's link-layer address is known: trying at once");
        }
    }

    fn bytes(&mut self, conn: ConnId, data: &[u8], queued: usize) {
        let raw = self.bmp_live();
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
            c.queued = queued;
            // UPDATEs' bytes kept only while a BMP collector listens.
            c.session.set_keep_raw_updates(raw);
            let before = c.session.messages_received();
            c.session.receive(self.now, data);
            let after = c.session.messages_received();
            for (t, (a, b)) in after.iter().zip(before).enumerate() {
                self.received[t] += a - b;
            }
            if after[3] > before[3] {
                if let Some(session::DownReason::NotificationReceived(n)) = c.session.last_error() {
                    self.last_received = Some(n.to_string());
                }
            }
            // Anything from the peer moves the wake-up on (its UPDATEs set
            // it, as they are handled).
            if self.wake_at.is_some() {
                self.wake_at = Some(self.now + WAKE_AFTER);
            }
        }
        self.take_over();
    }

    /// For this connection only: another's session will have asked for
    /// its own.
    fn refeed(
        &mut self,
        conn: ConnId,
        family: AfiSafi,
        routes: &[(Prefix, Arc<PathAttributes>)],
        end: bool,
    ) {
        let Some(i) = self
            .conns
            .iter()
            .position(|c| c.id == conn && c.session.state() == State::Established)
        else {
            return;
        };
        self.send_announcements(i, routes);
        if end {
            let mut again = false;
            for a in &mut self.conns[i].answering {
                if a.family == family && !a.done {
                    a.done = true;
                    again |= std::mem::take(&mut a.again);
                }
            }
            self.conns[i]
                .session
                .send(self.now, encode_end_of_rib(family));
            if again {
                self.send_family(i, family);
            }
        }
    }

    fn next_session(&mut self, c: PeerConfig) {
        info!("new timers take effect at the next session");
        self.cfg.session.limits.send_hold_time = c.session.limits.send_hold_time;
        self.cfg.session.limits.max_as_path_length = c.session.limits.max_as_path_length;
        self.cfg.session.limits.max_send_queue = c.session.limits.max_send_queue;
        self.cfg.session.hold_time = c.session.hold_time;
        self.cfg.session.connect_retry = c.session.connect_retry;
        self.cfg.session.bfd = c.session.bfd;
        self.cfg.graceful_restart = c.graceful_restart;
        // Each session takes the new settings at its next connection.
        for i in 0..self.conns.len() {
            let config = session_config(&self.cfg, &self.env, self.may_probe());
            self.conns[i].session.set_config(config);
        }
        if c.session.import_rules != self.cfg.session.import_rules {
            info!("new import rules: routes judged again");
            self.cfg.session.import_rules = c.session.import_rules;
            self.judge_all();
        }
    }

    fn rib_ready(&mut self) {
        // The Loc-RIB says so to every newcomer too: only a peer that
        // waited for it has anything to do.
        if !std::mem::take(&mut self.awaiting_rib) {
            return;
        }
        if self.conns.len() == 1 && self.conns[0].session.state() == State::Idle && !self.disabled {
            self.conns[0].session.start(self.now);
        }
        // A session that came up meanwhile has had the table as it was,
        // without End-of-RIB: the whole table again, then End-of-RIB, from
        // the RIB (so never before the table).
        if let Some(i) = self.established() {
            for f in self.conns[i].session.context().families {
                self.send_family(i, f);
            }
        }
    }

    /// Moves bytes and events out of the sessions until there are none.
    fn process(&mut self) {
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < self.conns.len() {
                progressed |= self.flush_transmit(i);
                while let Some(ev) = self.conns[i].session.poll_event() {
                    progressed = true;
                    self.event(i, ev);
                }
                i += 1;
            }
            // A possible takeover waits for the new connection's OPEN.
            let undecided = self.takeover_candidate()
                && matches!(
                    self.conns[1].session.state(),
                    State::Active | State::Connect | State::OpenSent
                );
            if self.conns.len() == 2 && !undecided {
                if let Some(loser) =
                    collision::resolve(&self.conns[0].session, &self.conns[1].session)
                {
                    let i = match loser {
                        Loser::First => 0,
                        Loser::Second => 1,
                    };
                    info!(
                        inbound = self.conns[i].session.is_inbound(),
                        "connection collision: closing one connection (RFC 4271 §6.8)"
                    );
                    self.conns[i].session.close_collision(self.now);
                    progressed = true;
                }
            }
            // A secondary connection that went Idle is done; a primary that
            // went Idle (it lost a collision, or failed) hands over to the
            // secondary, which is a live connection.
            if self.conns.len() == 2 {
                if self.conns[1].session.state() == State::Idle {
                    self.remove(1);
                    progressed = true;
                } else if self.conns[0].session.state() == State::Idle {
                    self.remove(0);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn remove(&mut self, i: usize) {
        self.release(i);
        self.conns.remove(i);
    }

    fn event(&mut self, i: usize, ev: Event) {
        let primary = i == 0;
        match ev {
            Event::Connect => {
                let conn = self.conns[i].id;
                self.actions.push_back(Action::Connect { conn });
            }
            Event::Disconnect => {
                // Queued bytes (a NOTIFICATION) go out before the close;
                // a fresh id, so that late bytes from the old socket are
                // ignored.
                self.release(i);
                self.conns[i].id = self.next_conn();
            }
            Event::StateChanged { from, to } => {
                if primary {
                    self.state_since = self.now;
                }
                // Attempts that fail before Established are routine for VM
                // addresses that do not speak BGP: debug, not info.
                if to == State::Established || from == State::Established {
                    info!(from = %from, to = %to, "session state changed");
                } else {
                    debug!(from = %from, to = %to, "session state changed");
                }
            }
            Event::Established(n) => self.established_event(i, &n),
            Event::Down(reason) => self.down(reason),
            Event::Update(u) => {
                self.nudge_at = None;
                // Part of a table not complete yet: see `WAKE_AFTER`.
                if !self.tables_pending.is_empty() && u.end_of_rib().is_none() {
                    self.wake_at = Some(self.now + WAKE_AFTER);
                }
                self.apply_update(*u)
            }
            Event::RawUpdate(raw) => self.bmp_raw = Some(raw),
            Event::RouteRefresh(family) => self.route_refresh(i, family),
        }
    }

    fn established_event(&mut self, i: usize, n: &session::Negotiated) {
        info!(
            asn = n.remote_as,
            remote_id = %n.remote_id,
            hold_time = n.hold_time,
            "session established"
        );
        self.state_since = self.now;
        if !self.ever_established {
            self.ever_established = true;
            for c in &mut self.conns {
                c.session
                    .set_connect_retry_max(self.cfg.session.connect_retry);
            }
        }
        // A peer that can restart gracefully ends each family's table with
        // End-of-RIB (RFC 4724); with a hold time of 0 no KEEPALIVE is
        // sent at all (RFC 4271 §4.4): no wake-up for either.
        self.tables_pending = if n.peer_graceful_restart.is_some() && n.hold_time > 0 {
            n.context.families.clone()
        } else {
            Vec::new()
        };
        self.wake_at = None;
        self.info = Some(Arc::new(PeerInfo {
            id: self.id,
            name: self.cfg.name.clone(),
            address: self.cfg.address,
            asn: n.remote_as,
            router_id: n.remote_id,
            ebgp: n.remote_as != self.env.local_as,
            vm: self.cfg.vm.clone(),
            group: self.cfg.group.clone(),
            interface: self.cfg.interface.clone(),
            kernel: self.cfg.kernel,
        }));
        self.peer_gr = n.peer_graceful_restart.clone();
        // RFC 4724 §4.2: stale routes of a family the new session's
        // capability no longer lists, or lists without the Forwarding
        // State bit, go at once (all, without one).
        if self.adj_rib_in.has_stale() {
            self.flush_stale_families_not_kept(true);
        }
        if let (Some(timers), true) = (self.cfg.session.bfd, self.env.bfd) {
            self.bfd_registered = Some((
                self.cfg.address,
                self.cfg.interface.as_ref().map(|i| i.index),
            ));
            self.actions.push_back(Action::BfdAdd {
                timers,
                pin_peer: self.cfg.policy.is_none() && !self.cfg.takeover,
            });
        }
        self.bmp_up(i, crate::northbound::bmp::To::All);
        for f in n.context.families.clone() {
            self.send_family(i, f);
        }
        if self.cfg.group.is_some() {
            self.nudge_at = Some(self.now + NUDGE_AFTER);
        }
    }

    fn down(&mut self, reason: session::DownReason) {
        self.flaps += 1;
        self.bmp_down(&reason);
        self.wake_at = None;
        self.bfd_remove();
        let held_back = self.log_budget.finish();
        if held_back > 0 {
            warn!(
                lines = held_back,
                "log lines about this peer's messages held back (over the budget)"
            );
        }
        // RFC 4724 §4.2: a peer that can restart gracefully and lost its
        // connection (no NOTIFICATION) keeps its routes, marked stale, for
        // its restart time.
        let helper = matches!(reason, session::DownReason::ConnectionClosed)
            && self
                .peer_gr
                .as_ref()
                .is_some_and(|g| g.restart_time > 0 && !g.families.is_empty());
        if helper && !self.adj_rib_in.is_empty() {
            let asked = self.peer_gr.as_ref().map_or(0, |g| g.restart_time);
            let t = asked.min(self.env.gr_helper_max.load(Relaxed));
            warn!(reason = %reason, routes = self.adj_rib_in.len(), restart_time = t, asked, "session down, routes kept as stale (graceful restart)");
            self.adj_rib_in.mark_stale();
            // Counted from the first time down: a session that comes and
            // goes before its End-of-RIB does not start the clock again.
            let until = self.now + Duration::from_secs(t as u64);
            self.stale_until = Some(self.stale_until.map_or(until, |s| s.min(until)));
            // RFC 4724 §4.2: only the families in the capability.
            self.flush_stale_families_not_kept(false);
            return;
        }
        warn!(reason = %reason, routes = self.adj_rib_in.len(), "session down, routes withdrawn");
        self.adj_rib_in.clear();
        self.info = None;
        self.stale_until = None;
        self.tell_rib(RibMsg::PeerDown(self.id));
    }

    fn route_refresh(&mut self, i: usize, family: AfiSafi) {
        let upstream = self.cfg.export.is_some();
        let c = &mut self.conns[i];
        // An answer that has left entirely (the RIB handed it all over and
        // nothing is queued) is answered no longer.
        let sent = (!c.attached || c.queued == 0) && !c.session.has_transmit();
        c.answering.retain(|a| !(a.done && sent));
        if let Some(a) = c.answering.iter_mut().find(|a| a.family == family) {
            crate::limits::hit(crate::limits::Limit::RefreshPending);
            debug!(%family, "route refresh requested while one is answered: coalesced");
            // A neighbor with a table to get: one more answer, once this
            // one is handed over (a VM's is End-of-RIB alone, and the one
            // queued does).
            if upstream {
                a.again = true;
                if a.done {
                    a.again = false;
                    self.send_family(i, family);
                }
            }
            return;
        }
        debug!(%family, "route refresh requested");
        self.send_family(i, family);
    }

    /// Queues a message for the Loc-RIB (never waits, keeps order).
    fn tell_rib(&mut self, m: RibMsg) {
        self.actions.push_back(Action::Rib(m));
    }

    /// Tells the Loc-RIB what changed among the accepted routes.
    fn rib_update(
        &mut self,
        announce: Vec<(Prefix, NextHop, Arc<PathAttributes>)>,
        withdraw: Vec<Prefix>,
    ) {
        if let (Some(info), false) = (&self.info, announce.is_empty() && withdraw.is_empty()) {
            let peer = info.clone();
            self.tell_rib(RibMsg::Update {
                peer,
                announce,
                withdraw,
            });
        }
    }

    /// A new connection while the session is up (see `incoming`), once
    /// its OPEN is in. A different BGP identifier (another hypervisor,
    /// after a migration) or the Restart State bit (the same one,
    /// restarted) means the peer restarted: the old connection is closed as
    /// if lost, its routes kept as stale, and the new one carries on (RFC
    /// 4724 §4.2). Otherwise it is a plain collision with an Established
    /// session, which the session wins (RFC 4271 §6.8).
    fn take_over(&mut self) {
        let now = self.now;
        if !self.takeover_candidate() {
            return;
        }
        let Some(open) = self.conns[1].session.remote_open() else {
            return;
        };
        let old_id = self.conns[0].session.remote_open().map(|o| o.bgp_id);
        let restarted = open
            .capabilities
            .iter()
            .any(|c| matches!(c, bgp::capability::Capability::GracefulRestart(g) if g.restarting));
        if old_id != Some(open.bgp_id) || restarted {
            info!(old = ?old_id, new = %open.bgp_id, restarted, "peer restarted: the new connection takes the session over (RFC 4724 §4.2)");
            self.conns[0].session.closed(now);
        } else {
            info!("connection collision with the Established session: the new connection is closed (RFC 4271 §6.8)");
            self.conns[1].session.close_collision(now);
        }
    }

    /// A second, inbound connection beside an Established session that
    /// may take it over (`take_over`).
    fn takeover_candidate(&self) -> bool {
        self.cfg.takeover
            && self.peer_gr.is_some()
            && self.conns.len() == 2
            && self.conns[0].session.state() == State::Established
            && self.conns[1].session.is_inbound()
    }

    /// See `NUDGE_AFTER`.
    fn nudge(&mut self) {
        self.nudge_at = None;
        let Some(c) = self
            .conns
            .iter_mut()
            .find(|c| c.session.state() == State::Established)
        else {
            return;
        };
        // Our End-of-RIB says our table is complete: not while we wait for
        // the Loc-RIB after our own restart.
        if self.awaiting_rib {
            return;
        }
        let now = self.now;
        for f in c.session.context().families.clone() {
            c.session.send(now, encode_end_of_rib(f));
        }
        debug!("no UPDATE yet from the VM: End-of-RIB sent again to wake it");
    }

    /// See `WAKE_AFTER`. RFC 4271 §4.4: no KEEPALIVE within a second of
    /// another, ours or the regular ones; the wake-up waits for that.
    fn wake(&mut self) {
        self.wake_at = None;
        let now = self.now;
        let Some(i) = self.established() else { return };
        let s = &self.conns[i].session;
        let second = Duration::from_secs(1);
        let mut earliest = self.woken_at.map(|t| t + second);
        if let (Some(due), Some(n)) = (s.keepalive_deadline(), s.negotiated()) {
            if due.saturating_duration_since(now) < second {
                // The regular one is about to go, and wakes the peer.
                return;
            }
            let last = due.checked_sub(Duration::from_secs(n.keepalive.into()));
            earliest = earliest.max(last.map(|l| l + second));
        }
        if let Some(e) = earliest.filter(|e| *e > now) {
            self.wake_at = Some(e);
            return;
        }
        debug!("the peer's table stopped short of End-of-RIB: KEEPALIVE to wake it");
        self.woken_at = Some(now);
        self.conns[i].session.send(
            now,
            bgp::Message::Keepalive.encode(&bgp::Context::default()),
        );
    }

    fn apply_update(&mut self, u: bgp::Update) {
        #[cfg(feature = "failpoints")]
        failpoint(&u);
        for p in &u.problems {
            if self.may_log() {
                warn!(
                    attribute = p.type_code,
                    treat_as_withdraw = p.withdraw,
                    reason = p.reason,
                    "malformed attribute in UPDATE (RFC 7606)"
                );
            }
        }
        self.bmp_pre();
        if let Some(f) = u.end_of_rib() {
            self.bmp_end_of_rib(f);
            self.tables_pending.retain(|t| *t != f);
            if self.tables_pending.is_empty() {
                self.wake_at = None;
            }
            // RFC 4724 §4.2: what was not announced again is gone.
            if let Some(afi) = f.unicast_afi() {
                self.flush_stale(Some(afi));
            }
            return;
        }
        let ebgp = self.info.as_ref().is_none_or(|i| i.ebgp);
        let policy = self.cfg.policy.clone();
        let judge = Judge {
            max_as_path_length: self.cfg.session.limits.max_as_path_length,
            policy: policy.as_deref(),
            path: path_rules(&self.cfg, self.info.as_deref(), self.env.local_as),
        };
        let changes = self.adj_rib_in.apply(u, ebgp, &judge);
        self.log_refused(&changes.refused);
        self.bmp_post(&changes.announce, &changes.withdraw);
        self.rib_update(changes.announce, changes.withdraw);
        if let Some((p, limit)) = changes.teardown {
            self.teardown_max_prefixes(&p, limit);
        }
    }

    /// Removes the stale routes of the families the peer's graceful
    /// restart capability does not list (`forwarding`: or lists without
    /// the Forwarding State bit, as a restarted session does when it lost
    /// its forwarding state).
    fn flush_stale_families_not_kept(&mut self, forwarding: bool) {
        for afi in [bgp::Afi::Ipv4, bgp::Afi::Ipv6] {
            let kept = self.peer_gr.as_ref().is_some_and(|g| {
                g.families.iter().any(|f| {
                    f.family == AfiSafi::unicast(afi) && (!forwarding || f.forwarding_preserved)
                })
            });
            if !kept {
                self.flush_stale(Some(afi));
            }
        }
    }

    /// Whether a line the peer's bytes call for may be logged now (the
    /// session's budget); says first how many were held back before.
    fn may_log(&mut self) -> bool {
        let v = self.log_budget.line(self.now);
        if v.held_back > 0 {
            warn!(
                lines = v.held_back,
                window = ?crate::log_budget::WINDOW,
                "log lines about this peer's messages held back (over the budget)"
            );
        }
        v.log
    }

    /// Removes routes still stale (of one family, or all), as after the
    /// peer's End-of-RIB or its restart time (RFC 4724 §4.2).
    fn flush_stale(&mut self, afi: Option<bgp::Afi>) {
        let withdraw = self.adj_rib_in.flush_stale(afi);
        if !self.adj_rib_in.has_stale() {
            self.stale_until = None;
        }
        if !withdraw.is_empty() {
            info!(
                routes = withdraw.len(),
                "stale routes removed (graceful restart)"
            );
            self.bmp_pre_withdraw(&withdraw);
            self.bmp_post(&[], &withdraw);
            match &self.info {
                Some(_) => self.rib_update(Vec::new(), withdraw),
                None => self.tell_rib(RibMsg::Update {
                    peer: Arc::new(self.stale_info()),
                    announce: Vec::new(),
                    withdraw,
                }),
            }
        }
    }

    /// What the RIB knows of this peer when the session is down (only its
    /// id matters for a withdrawal).
    fn stale_info(&self) -> PeerInfo {
        PeerInfo {
            id: self.id,
            name: self.cfg.name.clone(),
            address: self.cfg.address,
            asn: 0,
            router_id: std::net::Ipv4Addr::UNSPECIFIED,
            ebgp: true,
            vm: self.cfg.vm.clone(),
            group: self.cfg.group.clone(),
            interface: self.cfg.interface.clone(),
            kernel: self.cfg.kernel,
        }
    }

    /// Judges every route again (a new policy snapshot).
    fn judge_all(&mut self) {
        let policy = self.cfg.policy.clone();
        let judge = Judge {
            max_as_path_length: self.cfg.session.limits.max_as_path_length,
            policy: policy.as_deref(),
            path: path_rules(&self.cfg, self.info.as_deref(), self.env.local_as),
        };
        let changes = self.adj_rib_in.rejudge(&judge);
        self.log_refused(&changes.refused);
        for (p, _, _) in &changes.announce {
            if self.may_log() {
                info!(prefix = %p, "route now accepted");
            }
        }
        self.bmp_post(&changes.announce, &changes.withdraw);
        self.rib_update(changes.announce, changes.withdraw);
    }

    /// Routes newly refused, within the session's log budget.
    fn log_refused(&mut self, refused: &[(Prefix, crate::routing::authorisation::Rejection)]) {
        for (p, r) in refused {
            if self.may_log() {
                info!(prefix = %p, reason = %r.reason, kind = %r.kind, "route refused");
            }
        }
    }

    /// The VM behind this session got (or lost) an inventory entry, for
    /// example from `tapir vm add` after its tap came up: the session is
    /// named after the VM (or its tap) from now on, in `show` and in the
    /// Loc-RIB (drain, origin). The accepted routes go to the RIB again
    /// under the new name; it keeps paths per session, so they are
    /// replaced in place and nothing flaps upstream.
    fn rename(&mut self, vm: Option<String>) {
        let name = vm.clone().unwrap_or_else(|| {
            self.cfg
                .interface
                .as_ref()
                .map_or_else(|| self.cfg.address.to_string(), |i| i.name.clone())
        });
        info!(old = %self.cfg.name, new = %name, "VM session renamed");
        self.cfg.name = name.clone();
        self.cfg.vm = vm.clone();
        let Some(info) = &self.info else { return };
        let mut renamed = (**info).clone();
        renamed.name = name;
        renamed.vm = vm;
        self.info = Some(Arc::new(renamed));
        let accepted = self.adj_rib_in.accepted_routes();
        self.rib_update(accepted, Vec::new());
    }

    /// Cease / Maximum Number of Prefixes Reached (RFC 4486 §4: AFI,
    /// SAFI and the limit as data).
    fn teardown_max_prefixes(&mut self, p: &Prefix, limit: usize) {
        warn!(limit, "max-prefixes exceeded: session torn down");
        let mut data = bgp::AfiSafi::unicast(p.afi()).afi.to_be_bytes().to_vec();
        data.push(1);
        data.extend_from_slice(&(limit.min(u32::MAX as usize) as u32).to_be_bytes());
        let n = Notification::with_data(bgp::notification::code::CEASE, cease::MAX_PREFIXES, data);
        let now = self.now;
        for c in &mut self.conns {
            c.session.reset(now, n.clone());
        }
    }

    /// Ends the BFD session this session started, if any (by what was
    /// registered: a reload may have turned BFD off since).
    fn bfd_remove(&mut self) {
        if let Some(key) = self.bfd_registered.take() {
            self.actions.push_back(Action::BfdRemove(key));
        }
    }

    /// The next hop we announce for a family: our end of the connection
    /// (next-hop-self).
    fn next_hop_self(&self, i: usize, afi: bgp::Afi) -> Option<NextHop> {
        self.conns[i]
            .local
            .and_then(|l| match (afi, l.ip().to_canonical()) {
                (bgp::Afi::Ipv4, IpAddr::V4(a)) => Some(NextHop::V4(a)),
                (bgp::Afi::Ipv6, IpAddr::V6(a)) if !crate::southbound::net::is_link_local(a) => {
                    Some(NextHop::V6 {
                        global: a,
                        link_local: None,
                    })
                }
                (bgp::Afi::Ipv6, IpAddr::V6(a)) => self
                    .cfg
                    .global_v6_from
                    .and_then(self.global_v6)
                    .map(|g| NextHop::V6 {
                        global: g,
                        link_local: Some(a),
                    }),
                _ => None,
            })
    }

    /// Sends announcements, packed: prefixes sharing one attribute set go
    /// in as few UPDATEs as fit.
    fn send_announcements(&mut self, i: usize, items: &[(Prefix, Arc<PathAttributes>)]) {
        let conn_state = self.conns[i].session.state();
        if conn_state != State::Established {
            return;
        }
        let cxt = self.conns[i].session.context();
        // The Loc-RIB interns attribute sets: equal ones are one Arc, so
        // the pointer groups them (in the order they first appear).
        let mut groups: Vec<(Arc<PathAttributes>, Vec<Prefix>)> = Vec::new();
        let mut index: foldhash::HashMap<*const PathAttributes, usize> = Default::default();
        let mut last: Option<(*const PathAttributes, usize)> = None;
        for (p, a) in items {
            if !cxt.has_family(AfiSafi::unicast(p.afi())) {
                continue;
            }
            // Neighbours mostly share a set: the last one first.
            let i = match last {
                Some((ptr, i)) if ptr == Arc::as_ptr(a) => i,
                _ => *index.entry(Arc::as_ptr(a)).or_insert_with(|| {
                    groups.push((a.clone(), Vec::new()));
                    groups.len() - 1
                }),
            };
            last = Some((Arc::as_ptr(a), i));
            groups[i].1.push(*p);
        }
        let now = self.now;
        for (attrs, prefixes) in groups {
            for afi in [bgp::Afi::Ipv4, bgp::Afi::Ipv6] {
                let ps: Vec<Prefix> = prefixes
                    .iter()
                    .filter(|p| p.afi() == afi)
                    .copied()
                    .collect();
                if ps.is_empty() {
                    continue;
                }
                let Some(nh) = self.next_hop_self(i, afi) else {
                    if afi == bgp::Afi::Ipv6 && self.cfg.global_v6_from.is_some() {
                        // The address may still be in duplicate address
                        // detection: try again shortly.
                        if self.resend_v6_at.is_none() {
                            warn!("no usable global IPv6 address on the interface for the next hop yet: IPv6 routes wait");
                        }
                        self.resend_v6_at = Some(now + std::time::Duration::from_secs(1));
                    } else {
                        warn!(family = ?afi, "no usable local address for the next hop; routes not announced");
                    }
                    continue;
                };
                for m in encode_announce(&attrs, nh, &ps, &cxt) {
                    self.conns[i].session.send(now, m);
                }
            }
        }
    }

    /// The whole Adj-RIB-Out of a family, then End-of-RIB (after
    /// Established, or for a ROUTE-REFRESH): the Loc-RIB derives it and
    /// sends it back as `ToPeer::Refeed`. A neighbor that is exported
    /// nothing gets End-of-RIB alone.
    fn send_family(&mut self, i: usize, family: AfiSafi) {
        if family.unicast_afi().is_none() {
            return;
        }
        let answering = |done| Answering {
            family,
            done,
            again: false,
        };
        if self.cfg.export.is_none() {
            self.conns[i].answering.push(answering(true));
            self.conns[i]
                .session
                .send(self.now, encode_end_of_rib(family));
            return;
        }
        self.conns[i].answering.push(answering(false));
        self.tell_rib(RibMsg::Refeed {
            peer: self.id,
            conn: self.conns[i].id,
            family,
        });
    }

    /// Sends a batch of export changes from the Loc-RIB (which sends a
    /// withdrawal only for what it had exported).
    fn export_changes(&mut self, changes: Vec<(Prefix, Option<Arc<PathAttributes>>)>) {
        let mut announce = Vec::new();
        let mut withdraw = Vec::new();
        for (p, a) in changes {
            match a {
                Some(a) => announce.push((p, a)),
                None => withdraw.push(p),
            }
        }
        let Some(i) = self
            .conns
            .iter()
            .position(|c| c.session.state() == State::Established)
        else {
            return;
        };
        let cxt = self.conns[i].session.context();
        let now = self.now;
        for afi in [bgp::Afi::Ipv4, bgp::Afi::Ipv6] {
            let w: Vec<Prefix> = withdraw
                .iter()
                .filter(|p| p.afi() == afi)
                .copied()
                .collect();
            if !w.is_empty() && cxt.has_family(AfiSafi::unicast(afi)) {
                for m in bgp::update::encode_withdraw(&w, &cxt) {
                    self.conns[i].session.send(now, m);
                }
            }
        }
        self.send_announcements(i, &announce);
    }

    /// A VM address that has never had a session: its attempts back off.
    fn may_probe(&self) -> bool {
        self.cfg.group.is_some() && !self.ever_established
    }

    /// A VM address that has never had a session and where nothing has
    /// spoken BGP since the last attempt: a probe, not a session. (A VM
    /// session that was up stays a session when it goes down.)
    pub fn probing(&self) -> bool {
        let s = &self.conns[0].session;
        self.cfg.group.is_some() && !self.disabled && !self.ever_established && !s.answered()
    }

    pub fn status(&self, now: Instant) -> PeerStatus {
        let s = &self.conns[0].session;
        let n = s.negotiated();
        PeerStatus {
            name: self.cfg.name.clone(),
            address: self.cfg.address.to_string(),
            remote_as: self.cfg.session.remote_as.to_string(),
            asn: n.map(|n| n.remote_as),
            state: s.state().to_string(),
            since_secs: now.saturating_duration_since(self.state_since).as_secs(),
            local_address: self.conns[0]
                .local
                .map(|l| l.ip().to_canonical().to_string()),
            remote_id: n.map(|n| n.remote_id.to_string()),
            hold_time: n.map(|n| n.hold_time),
            keepalive: n.map(|n| n.keepalive),
            families: n
                .map(|n| n.context.families.iter().map(|f| f.to_string()).collect())
                .unwrap_or_default(),
            peer_capabilities: n
                .map(|n| n.peer_capabilities.iter().map(|c| c.describe()).collect())
                .unwrap_or_default(),
            routes_received: self.adj_rib_in.len(),
            routes_accepted: self.adj_rib_in.accepted(),
            rejections: self
                .adj_rib_in
                .rejections()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            interface: self.cfg.interface.as_ref().map(|i| i.name.clone()),
            routes_exported: if s.state() == State::Established {
                s.context()
                    .families
                    .iter()
                    .filter_map(|f| f.unicast_afi())
                    .map(|a| self.exported.get(a))
                    .sum()
            } else {
                0
            },
            flaps: self.flaps,
            last_error: s.last_error().map(|e| e.to_string()),
            vm: self.cfg.vm.clone(),
            group: self.cfg.group.clone(),
            messages_received: by_type(&self.received),
            messages_sent: by_type(&self.sent),
            last_notification_sent: self.last_sent.clone(),
            last_notification_received: self.last_received.clone(),
            configured_hold_time: self.cfg.session.hold_time,
            connect_retry_secs: s.retry_delay().as_secs(),
            kind: if self.cfg.group.is_some() {
                "vm"
            } else {
                "static"
            }
            .into(),
            probing: self.probing(),
            disabled: self.disabled,
            hold_timer_left_ms: s
                .hold_deadline()
                .map(|d| d.saturating_duration_since(now).as_millis() as u64),
            keepalive_timer_left_ms: s
                .keepalive_deadline()
                .map(|d| d.saturating_duration_since(now).as_millis() as u64),
        }
    }

    pub fn routes(&self) -> Vec<RouteEntry> {
        self.adj_rib_in
            .iter()
            .map(|(p, r)| RouteEntry {
                peer_address: self.cfg.address.to_string(),
                vm: self.cfg.vm.clone(),
                interface: self.cfg.interface.as_ref().map(|i| i.name.clone()),
                accepted: !r.rejected,
                rejected_reason: self.adj_rib_in.rejection(&p).map(|x| x.reason.clone()),
                ..RouteEntry::new(&p, &self.cfg.name, r.next_hop().to_string(), r.attrs())
            })
            .collect()
    }
}

fn count_sent(counts: &mut [u64; 6], last: &mut Option<String>, message: &[u8]) {
    if let Some(n) = message.get(18).and_then(|t| counts.get_mut(*t as usize)) {
        *n += 1;
    }
    if message.get(18) == Some(&3) {
        if let Ok(Some((bgp::Message::Notification(n), _))) =
            bgp::Message::decode(message, &bgp::Context::default())
        {
            *last = Some(n.to_string());
        }
    }
}

/// Message counts by type name, for `show` and metrics.
fn by_type(counts: &[u64; 6]) -> BTreeMap<String, u64> {
    [
        "",
        "open",
        "update",
        "notification",
        "keepalive",
        "route-refresh",
    ]
    .iter()
    .zip(counts)
    .skip(1)
    .map(|(n, c)| (n.to_string(), *c))
    .collect()
}

/// Everything a peer task needs to know about its neighbor: a static
/// neighbor from the config, or a VM found on a tap.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    /// The tap the session lives on (SO_BINDTODEVICE, and the scope of a
    /// link-local address).
    pub interface: Option<Interface>,
    pub local_address: Option<IpAddr>,
    pub passive: bool,
    pub families: Vec<bgp::Afi>,
    /// Upstream neighbors: the export policy (they get the Loc-RIB).
    pub export: Option<Arc<Policy>>,
    /// Install this peer's accepted routes into the kernel.
    pub kernel: bool,
    /// For a VM: its inventory name and group.
    pub vm: Option<String>,
    pub group: Option<String>,
    /// Graceful restart time to advertise (RFC 4724), if any.
    pub graceful_restart: Option<u16>,
    /// Offer IPv4 unicast with IPv6 next hops (RFC 8950).
    pub extended_next_hop: bool,
    /// Remote AS, timers, BFD, limits, import rules, keys: as configured
    /// for the neighbor, the VM's group or the gateway.
    pub session: SessionSettings,
    /// For a VM: what it may announce. Static neighbors accept everything.
    pub policy: Option<Arc<VmPolicy>>,
    /// A session over IPv6 link-local announces a global address of this
    /// interface (by index) as its IPv6 next hop, beside the link-local one
    /// (RFC 2545), looked up when routes go out; without one, IPv6 routes
    /// cannot be announced over link-local.
    pub global_v6_from: Option<u32>,
    /// A new connection from the peer while the session is up takes the
    /// session over (RFC 4724 §4.2) if the peer can restart gracefully.
    /// Set for a VM's gateway: after a migration the new hypervisor opens
    /// that connection, and the old one leads to nobody.
    pub takeover: bool,
}

impl From<&Neighbor> for PeerConfig {
    fn from(n: &Neighbor) -> PeerConfig {
        PeerConfig {
            name: n.name.clone(),
            address: n.address,
            port: n.port,
            interface: None,
            local_address: n.local_address,
            passive: n.passive,
            families: n.families.clone(),
            export: Some(n.export.clone()),
            kernel: n.kernel_import,
            vm: None,
            group: None,
            graceful_restart: None,
            extended_next_hop: false,
            session: n.session.clone(),
            policy: None,
            global_v6_from: None,
            takeover: false,
        }
    }
}

impl PeerConfig {
    /// A static neighbor, with the daemon-wide graceful restart time.
    pub fn from_neighbor(n: &Neighbor, restart_time: u16) -> PeerConfig {
        let mut c = PeerConfig::from(n);
        c.graceful_restart = (restart_time > 0).then_some(restart_time);
        c
    }
}

/// The AS path checks for a session's routes (the peer's AS from its
/// OPEN, in `info` once the session is up).
fn path_rules<'a>(cfg: &'a PeerConfig, info: Option<&PeerInfo>, local_as: u32) -> PathRules<'a> {
    let (peer_as, ebgp) = info.map_or((0, true), |i| (i.asn, i.ebgp));
    // A VM's come with its policy snapshot, so a reload of its group
    // judges its routes again.
    let rules = match &cfg.policy {
        Some(p) => &p.import_rules,
        None => &cfg.session.import_rules,
    };
    PathRules {
        local_as,
        peer_as,
        ebgp,
        enforce_first_as: rules.enforce_first_as,
        allow_attributes: rules.allow_attributes.as_deref(),
    }
}

/// Builds with the `failpoints` feature only (the lab tests):
/// `TAPIR_FAILPOINT=panic-on-prefix:P`, read once, makes a session task
/// panic on an announcement of P (the robustness test).
#[cfg(feature = "failpoints")]
fn failpoint(u: &bgp::Update) {
    static PREFIX: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| crate::failpoint::arg("panic-on-prefix"));
    if let Some(p) = prefix {
        if u.announced().iter().any(|(q, _)| q.to_string() == *p) {
            panic!("failpoint: announcement of {p}");
        }
    }
}

/// A family's whole table on its way to the peer.
struct Answering {
    family: AfiSafi,
    /// The RIB has handed all of it over (End-of-RIB is queued).
    done: bool,
    /// Another ROUTE-REFRESH came meanwhile: once this answer is handed
    /// over, one more follows (what went out before the request was
    /// judged by the peer's old policy). However many came, one.
    again: bool,
}

//! One task per configured neighbor. It owns the neighbor's sessions (one,
//! or two while a connection collision is being resolved), its Adj-RIB-In
//! and what it has exported, and drives the sans-IO [`bgp::session`] with
//! sockets and timers.
//!
//! ```text
//!   listener ──Incoming──▶ ┌────────────┐ ──bytes──▶ writer task ──▶ socket
//!   reader task ──Bytes──▶ │ peer task  │
//!   connect task ─Connected▶│ (Session,  │ ◀──Status/Routes── control socket
//!                          │ Adj-RIB-In)│
//!                          └────────────┘
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use std::sync::atomic::Ordering::Relaxed;

use bgp::collision::{self, Loser};
use bgp::notification::{cease, Notification};
use bgp::session::{self, Event, Session, State};
use bgp::update::{encode_announce, encode_end_of_rib};
use bgp::{AfiSafi, NextHop, PathAttributes, Prefix};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::adj_rib_in::{AdjRibIn, Judge, PathRules};
use crate::authorisation::VmPolicy;
use crate::config::{ImportRules, Neighbor, RemoteAsConfig};
use crate::control::{PeerStatus, RouteEntry};
use crate::policy::Policy;
use crate::rib::{PeerId, PeerInfo, RibMsg};

/// Read sizes: a quiet session's KEEPALIVEs, and a table transfer.
const READ_SMALL: usize = 4096;
const READ_BULK: usize = 65536;
/// Reads of one connection handed to its session task and not handled
/// yet, at most: a reader that ran ahead would hold a table transfer's
/// worth of bytes in the task's queue.
const READ_WINDOW: usize = 4;

/// How long a closed connection is drained before it is cut off.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// BIRD (2.0.12 at least) sometimes sends nothing for up to 3 s after it
/// accepts a new session from the VM's hypervisor in place of an old one
/// (a graceful-restart takeover after a migration): the export is queued,
/// but its main loop sleeps in poll() until the next packet or its 3 s
/// tick. A VM that has sent no UPDATE this long after Established gets one
/// ROUTE-REFRESH (RFC 2918), which wakes it and asks for its routes anyway.
const NUDGE_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// GTSM (RFC 5082): our packets leave with TTL 255, and the kernel drops
/// the peer's that arrive with less (it is more than one hop away).
fn gtsm(sock: &impl std::os::fd::AsFd, ipv6: bool) -> std::io::Result<()> {
    let s = socket2::SockRef::from(sock);
    if ipv6 {
        s.set_unicast_hops_v6(255)?;
    }
    // Also for IPv4 on an IPv6 socket (mapped addresses).
    let _ = s.set_ttl_v4(255);
    crate::sys::set_min_ttl(sock, ipv6, 255)
}

/// How a writer ended.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// The queue closed; everything went out.
    Done,
    /// The socket failed.
    Failed,
    /// A write made no progress for the send hold time (RFC 9687).
    Stalled,
}

/// Bytes on their way to one connection's socket. The session appends
/// whole messages; the writer takes everything there is at once, so a
/// burst of small UPDATEs leaves in few full segments (one `write` per
/// [`WRITE_CHUNK`]), while a lone message still leaves at once
/// (TCP_NODELAY). What is queued costs its bytes and nothing per message.
#[derive(Default)]
struct Outbox {
    state: std::sync::Mutex<OutboxState>,
    ready: tokio::sync::Notify,
    /// Bytes appended and not yet written to the socket.
    queued: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct OutboxState {
    bytes: Vec<u8>,
    /// No more will come: the writer sends what there is, then shuts the
    /// socket down.
    closed: bool,
}

/// The most one `write` takes: each is timed against the send hold time
/// on its own, so a slow reader that keeps reading never trips it.
const WRITE_CHUNK: usize = 65536;

/// A writer's buffers keep at most this much room while the connection is
/// quiet (a thousand idle VM sessions must not each hold a table
/// transfer's worth).
const IDLE_ROOM: usize = 4096;

impl Outbox {
    /// Appends one message; returns the bytes now queued.
    fn push(&self, b: &[u8]) -> usize {
        let total = self.queued.fetch_add(b.len(), Relaxed) + b.len();
        self.state
            .lock()
            .expect("outbox lock")
            .bytes
            .extend_from_slice(b);
        self.ready.notify_one();
        total
    }

    fn close(&self) {
        self.state.lock().expect("outbox lock").closed = true;
        self.ready.notify_one();
    }

    fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }
}

/// Writes what the outbox holds to the socket, in order, until it is
/// closed and empty; a write that cannot finish within `send_hold` gives
/// up.
async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    out: &Outbox,
    send_hold: std::time::Duration,
) -> Written {
    let mut spare = Vec::new();
    loop {
        let (bytes, closed) = {
            let mut s = out.state.lock().expect("outbox lock");
            (std::mem::replace(&mut s.bytes, spare), s.closed)
        };
        if bytes.is_empty() {
            if closed {
                break;
            }
            spare = bytes;
            if spare.capacity() > IDLE_ROOM {
                spare = Vec::new();
            }
            out.ready.notified().await;
            continue;
        }
        for chunk in bytes.chunks(WRITE_CHUNK) {
            match tokio::time::timeout(send_hold, w.write_all(chunk)).await {
                Ok(Ok(())) => {
                    out.queued.fetch_sub(chunk.len(), Relaxed);
                }
                Ok(Err(_)) => return Written::Failed,
                Err(_) => return Written::Stalled,
            }
        }
        spare = bytes;
        spare.clear();
    }
    let _ = tokio::time::timeout(send_hold, w.shutdown()).await;
    Written::Done
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

/// An interface a session is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
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
    pub remote_as: RemoteAsConfig,
    pub local_address: Option<IpAddr>,
    pub hold_time: u16,
    pub connect_retry: std::time::Duration,
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
    /// Run BFD with these timers while the session is up.
    pub bfd: Option<crate::bfd::BfdTimers>,
    /// RFC 9687 send hold time; None: the default (see `send_hold_time`).
    pub send_hold_time: Option<std::time::Duration>,
    /// Routes with longer AS paths are treated as withdrawn.
    pub max_as_path_length: usize,
    /// What the peer's paths must look like.
    pub import_rules: ImportRules,
    /// Bytes queued for the socket beyond which the connection is closed.
    pub max_send_queue: usize,
    /// TCP-MD5 key (RFC 2385) for this session's connections.
    pub password: Option<Arc<[u8]>>,
    /// GTSM (RFC 5082).
    pub ttl_security: bool,
    /// TCP-AO (RFC 5925) key for this session's connections.
    pub tcp_ao: Option<Arc<crate::sys::AoKey>>,
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
            remote_as: n.remote_as.clone(),
            local_address: n.local_address,
            hold_time: n.hold_time,
            connect_retry: n.connect_retry,
            passive: n.passive,
            families: n.families.clone(),
            export: Some(n.export.clone()),
            kernel: n.kernel_import,
            vm: None,
            group: None,
            graceful_restart: None,
            extended_next_hop: false,
            bfd: n.bfd,
            send_hold_time: n.limits.send_hold_time,
            max_as_path_length: n.limits.max_as_path_length,
            import_rules: n.import_rules.clone(),
            max_send_queue: n.limits.max_send_queue,
            password: n.password.as_deref().map(Arc::from),
            ttl_security: n.ttl_security,
            tcp_ao: n.tcp_ao.clone().map(Arc::new),
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
        None => &cfg.import_rules,
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
    let prefix = PREFIX.get_or_init(|| {
        std::env::var("TAPIR_FAILPOINT")
            .ok()
            .and_then(|f| f.strip_prefix("panic-on-prefix:").map(str::to_string))
    });
    if let Some(p) = prefix {
        if u.announced().iter().any(|(q, _)| q.to_string() == *p) {
            panic!("failpoint: announcement of {p}");
        }
    }
}

/// What the rest of the daemon knows of every peer.
#[derive(Clone, Debug)]
pub struct Local {
    pub router_id: std::net::Ipv4Addr,
    pub local_as: u32,
    /// The Loc-RIB task: accepted routes go there, exports come from it.
    pub rib: mpsc::UnboundedSender<RibMsg>,
    /// What the Loc-RIB has yet to apply: sockets wait while it is long.
    pub rib_backlog: crate::rib::Backlog,
    /// The BFD task, if any session asks for BFD.
    pub bfd: Option<mpsc::UnboundedSender<crate::bfd::BfdMsg>>,
    /// True while tapir comes back from a graceful restart: OPENs carry
    /// the Restart State and Forwarding State bits (RFC 4724 §4.1).
    pub restarting: Arc<std::sync::atomic::AtomicBool>,
    /// As a helper: the longest a peer's restart time is honoured
    /// (`[graceful-restart] helper-max-time`; a reload sets it).
    pub gr_helper_max: Arc<std::sync::atomic::AtomicU16>,
}

pub enum PeerMsg {
    /// A connection the listener accepted from this neighbor's address.
    Incoming(TcpStream),
    Status(oneshot::Sender<PeerStatus>),
    /// A new authorisation snapshot: every route is judged again.
    Policy(Arc<VmPolicy>),
    /// Changes to what the Loc-RIB exports to this neighbor (`None`:
    /// withdrawn); attributes come without next hop (next-hop-self).
    Export(Vec<(Prefix, Option<Arc<PathAttributes>>)>),
    Routes(oneshot::Sender<Vec<RouteEntry>>),
    /// Stop with this NOTIFICATION (a Cease) and end the task; answers
    /// when done.
    Shutdown(Notification, oneshot::Sender<()>),
    /// A reload changed what applies from the next session on: timers,
    /// BFD, the graceful restart time.
    NextSession(Box<PeerConfig>),
    /// The writer made no progress for the send hold time (RFC 9687).
    SendHoldExpired {
        conn: u64,
    },
    /// Stop without a NOTIFICATION (tapir restarts gracefully: peers keep
    /// our routes, RFC 4724 §4.1).
    Abort(oneshot::Sender<()>),
    /// The Loc-RIB is complete (after a restart's deferral): End-of-RIB may
    /// go out.
    RibReady,
    /// The whole table of a family for connection `conn`, from the Loc-RIB
    /// (`RibMsg::Refeed`): End-of-RIB follows the one marked `end`.
    Refeed {
        conn: u64,
        family: AfiSafi,
        routes: Vec<(Prefix, Arc<PathAttributes>)>,
        end: bool,
    },
    /// A reload changed the export policy (no session reset).
    SetExport(Arc<Policy>),
    /// BFD saw the path fail (it was Up, it is Down).
    BfdDown,
    Connected {
        conn: u64,
        result: std::io::Result<TcpStream>,
    },
    Bytes {
        conn: u64,
        data: Vec<u8>,
        /// One of the connection's reads in flight (`READ_WINDOW`),
        /// given back when this is handled.
        _read: tokio::sync::OwnedSemaphorePermit,
    },
    Closed {
        conn: u64,
    },
}

#[derive(Clone)]
pub struct PeerHandle {
    pub address: IpAddr,
    pub tx: mpsc::Sender<PeerMsg>,
}

/// One TCP connection and the session that runs on it.
struct Conn {
    id: u64,
    session: Session,
    /// What goes to the writer task (none once the socket is dropped).
    writer: Option<Arc<Outbox>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    local: Option<SocketAddr>,
    writer_task: Option<tokio::task::JoinHandle<()>>,
    /// Families whose whole table is on its way to the peer (after
    /// Established or a ROUTE-REFRESH).
    answering: Vec<Answering>,
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

impl Conn {
    fn drop_socket(&mut self) {
        // Closing the outbox lets the writer send what is queued (a
        // NOTIFICATION), then shut our side down. The reader keeps
        // draining until the peer closes, so that unread input does not
        // turn the close into a reset that discards the NOTIFICATION; its
        // bytes now carry a stale connection id and are ignored. A peer
        // that never closes is cut off after LINGER.
        if let Some(o) = self.writer.take() {
            o.close();
        }
        if let Some(r) = self.reader.take() {
            tokio::spawn(async move {
                tokio::time::sleep(LINGER).await;
                r.abort();
            });
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.drop_socket();
    }
}

pub struct Peer {
    cfg: PeerConfig,
    local: Arc<Local>,
    tx: mpsc::Sender<PeerMsg>,
    conns: Vec<Conn>,
    next_id: u64,
    connecting: Option<tokio::task::JoinHandle<()>>,
    adj_rib_in: AdjRibIn,
    state_since: Instant,
    flaps: u64,
    /// This peer's identity in the Loc-RIB.
    id: PeerId,
    /// Set while Established: what the Loc-RIB knows of this peer.
    info: Option<Arc<PeerInfo>>,
    /// How many prefixes the Loc-RIB exports to this neighbor, by family
    /// (upstream neighbors only).
    exported: crate::rib::Exported,
    /// The peer's graceful restart capability from the last session.
    peer_gr: Option<bgp::capability::GracefulRestart>,
    /// When routes kept for a restarting peer are given up.
    stale_until: Option<Instant>,
    /// A VM session that has sent nothing since Established gets a
    /// ROUTE-REFRESH at this time (see `NUDGE_AFTER`).
    nudge_at: Option<Instant>,
    /// IPv6 routes went unannounced for want of a global next hop (a
    /// link-local session whose interface has no usable global address
    /// yet): the family is sent again at this time.
    resend_v6_at: Option<Instant>,
    /// The BFD session started for this session: (peer, interface index).
    bfd_registered: Option<(IpAddr, Option<u32>)>,
    /// Messages sent and received, all connections, by type code.
    sent: [u64; 6],
    /// Lines the peer's bytes may make us log (malformed attributes,
    /// refused routes).
    log_budget: crate::log_budget::LogBudget,
    received: [u64; 6],
    /// The last NOTIFICATION each way, as text.
    last_sent: Option<String>,
    last_received: Option<String>,
}

static NEXT_PEER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn spawn(cfg: PeerConfig, local: Arc<Local>) -> PeerHandle {
    let (tx, rx) = mpsc::channel(256);
    let handle = PeerHandle {
        address: cfg.address,
        tx: tx.clone(),
    };
    let peer = Peer {
        cfg,
        local,
        tx,
        // Nearly always one (two only while a collision is resolved): a
        // first push would make room for four, 2 KiB a peer.
        conns: Vec::with_capacity(1),
        next_id: 1,
        connecting: None,
        adj_rib_in: AdjRibIn::default(),
        state_since: Instant::now(),
        flaps: 0,
        id: NEXT_PEER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        info: None,
        exported: Default::default(),
        peer_gr: None,
        stale_until: None,
        nudge_at: None,
        resend_v6_at: None,
        bfd_registered: None,
        sent: [0; 6],
        log_budget: Default::default(),
        received: [0; 6],
        last_sent: None,
        last_received: None,
    };
    // The span goes with the task (never `enter()` across an await).
    let span = tracing::info_span!(
        "peer",
        peer = %peer.cfg.name,
        address = %peer.cfg.address,
        interface = peer.cfg.interface.as_ref().map(|i| i.name.as_str()).unwrap_or("")
    );
    // A bug that panics in one session ends that session, not the daemon:
    // its routes leave the RIB, and the task's end closes its handle, which
    // the daemon (static neighbors) or the hypervisor task (VMs) notice and
    // start it afresh from the current configuration.
    let (id, local) = (peer.id, peer.local.clone());
    let bfd_key = peer.cfg.bfd.map(|_| {
        (
            peer.cfg.address,
            peer.cfg.interface.as_ref().map(|i| i.index),
        )
    });
    let supervised = async move {
        use futures_util::FutureExt;
        let run = std::panic::AssertUnwindSafe(peer.run(rx)).catch_unwind();
        if let Err(p) = run.await {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "session task failed: the session ends and its routes are withdrawn");
            let _ = local.rib.send(RibMsg::PeerDown(id));
            let _ = local.rib.send(RibMsg::Unsubscribe(id));
            if let (Some(key), Some(bfd)) = (bfd_key, &local.bfd) {
                let _ = bfd.send(crate::bfd::BfdMsg::Remove(key));
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(supervised, span));
    handle
}

fn session_config(cfg: &PeerConfig, local: &Local) -> session::Config {
    session::Config {
        local_as: local.local_as,
        remote_as: cfg.remote_as.to_session(),
        router_id: local.router_id,
        hold_time: cfg.hold_time,
        connect_retry: cfg.connect_retry,
        passive: cfg.passive,
        families: cfg.families.iter().map(|a| AfiSafi::unicast(*a)).collect(),
        extended_next_hop: cfg.extended_next_hop,
        graceful_restart: cfg.graceful_restart,
        restarting: cfg.graceful_restart.is_some()
            && local.restarting.load(std::sync::atomic::Ordering::Relaxed),
    }
}

impl Peer {
    async fn run(mut self, mut rx: mpsc::Receiver<PeerMsg>) {
        if let Some(policy) = self.cfg.export.clone() {
            let _ = self.local.rib.send(RibMsg::Subscribe {
                peer: self.id,
                asn: match self.cfg.remote_as {
                    RemoteAsConfig::Exact(a) => Some(a),
                    _ => None,
                },
                ebgp: match self.cfg.remote_as {
                    RemoteAsConfig::Internal => false,
                    RemoteAsConfig::Exact(a) => a != self.local.local_as,
                    _ => true,
                },
                policy,
                tx: self.tx.clone(),
                exported: self.exported.clone(),
                families: self.cfg.families.clone(),
            });
        }
        let mut primary = self.new_conn();
        // After a graceful restart, an upstream session waits until the
        // Loc-RIB is complete: the neighbor keeps our routes meanwhile (its
        // restart timer), and then gets the whole table and End-of-RIB at
        // once, so it never sees a partial table (RFC 4724 §4.1).
        let wait_for_rib = self.cfg.export.is_some()
            && self
                .local
                .restarting
                .load(std::sync::atomic::Ordering::Relaxed);
        if !wait_for_rib {
            primary.session.start(Instant::now());
        }
        self.conns.push(primary);
        self.process();
        loop {
            let deadline = self
                .conns
                .iter()
                .filter_map(|c| c.session.poll_timeout())
                .chain(self.stale_until)
                .chain(self.nudge_at)
                .chain(self.resend_v6_at)
                .min();
            let msg = match deadline {
                Some(d) => tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(d)) => {
                        let now = Instant::now();
                        for c in &mut self.conns {
                            c.session.handle_timeout(now);
                        }
                        if self.stale_until.is_some_and(|t| t <= now) {
                            self.flush_stale(None);
                        }
                        if self.nudge_at.is_some_and(|t| t <= now) {
                            self.nudge();
                        }
                        if self.resend_v6_at.is_some_and(|t| t <= now) {
                            self.resend_v6_at = None;
                            if let Some(i) = self
                                .conns
                                .iter()
                                .position(|c| c.session.state() == State::Established)
                            {
                                self.send_family(i, AfiSafi::IPV6_UNICAST);
                            }
                        }
                        self.process();
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(msg) = msg else { break };
            if let PeerMsg::Abort(done) = msg {
                let now = Instant::now();
                for c in &mut self.conns {
                    c.session.abort(now);
                }
                self.process();
                self.conns.clear();
                let _ = done.send(());
                break;
            }
            if let PeerMsg::Shutdown(notification, done) = msg {
                self.bfd_remove();
                let now = Instant::now();
                for c in &mut self.conns {
                    c.session.stop(now, notification.clone());
                }
                self.process();
                self.conns.clear();
                let _ = self.local.rib.send(RibMsg::PeerDown(self.id));
                let _ = self.local.rib.send(RibMsg::Unsubscribe(self.id));
                let _ = done.send(());
                break;
            }
            self.handle(msg);
            self.process();
        }
    }

    /// RFC 9687: how long a write may make no progress before the peer is
    /// taken to have stopped reading. The configured value, else 8 minutes
    /// or twice the hold time, whichever is larger.
    fn send_hold_time(&self) -> std::time::Duration {
        self.cfg.send_hold_time.unwrap_or_else(|| {
            std::time::Duration::from_secs(480.max(2 * u64::from(self.cfg.hold_time)))
        })
    }

    fn new_conn(&mut self) -> Conn {
        let id = self.next_id;
        self.next_id += 1;
        Conn {
            id,
            session: Session::new(session_config(&self.cfg, &self.local)),
            writer: None,
            reader: None,
            local: None,
            writer_task: None,
            answering: Vec::new(),
        }
    }

    fn attach(&self, conn: &mut Conn, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        if self.cfg.ttl_security {
            let v6 = stream.local_addr().is_ok_and(|a| a.is_ipv6());
            if let Err(e) = gtsm(&stream, v6) {
                warn!(error = %e, "cannot set up GTSM (RFC 5082) on the connection");
            }
        }
        if let Some(i) = &self.cfg.interface {
            // The session lives on its tap: replies never leave by another
            // interface, even if routes change.
            if let Err(e) = socket2::SockRef::from(&stream).bind_device(Some(i.name.as_bytes())) {
                warn!(error = %e, interface = %i.name, "cannot bind the session to its interface");
            }
        }
        conn.local = stream.local_addr().ok();
        let (r, w) = stream.into_split();
        // A fresh outbox for this connection: what a dead one left queued
        // is gone with it.
        let outbox = Arc::new(Outbox::default());
        let tx = self.tx.clone();
        let id = conn.id;
        let send_hold = self.send_hold_time();
        let out = outbox.clone();
        conn.writer_task = Some(tokio::spawn(async move {
            if write_loop(w, &out, send_hold).await == Written::Stalled {
                let _ = tx.send(PeerMsg::SendHoldExpired { conn: id }).await;
            }
        }));
        let tx = self.tx.clone();
        let backlog = self.local.rib_backlog.clone();
        let window = Arc::new(tokio::sync::Semaphore::new(READ_WINDOW));
        conn.reader = Some(tokio::spawn(async move {
            // No buffer is held while the socket is quiet (a thousand idle
            // VM sessions must not keep 64 KiB each): one is made when
            // there is something to read, small unless the last read
            // filled its buffer (a table transfer), and handed over as is.
            let mut bulk = false;
            loop {
                // The Loc-RIB is behind: what the peer sends waits in
                // its TCP window (keepalives too, for a few ms at most).
                backlog.within_limit().await;
                let Ok(read) = window.clone().acquire_owned().await else {
                    return;
                };
                if r.readable().await.is_err() {
                    let _ = tx.send(PeerMsg::Closed { conn: id }).await;
                    return;
                }
                let mut buf = vec![0u8; if bulk { READ_BULK } else { READ_SMALL }];
                match r.try_read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Ok(0) | Err(_) => {
                        let _ = tx.send(PeerMsg::Closed { conn: id }).await;
                        return;
                    }
                    Ok(n) => {
                        bulk = n == buf.len();
                        buf.truncate(n);
                        if tx
                            .send(PeerMsg::Bytes {
                                conn: id,
                                data: buf,
                                _read: read,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }));
        conn.writer = Some(outbox);
    }

    fn handle(&mut self, msg: PeerMsg) {
        let now = Instant::now();
        match msg {
            PeerMsg::Incoming(stream) => self.incoming(now, stream),
            PeerMsg::Connected { conn, result } => {
                let Some(i) = self.conns.iter().position(|c| c.id == conn) else {
                    return;
                };
                let state = self.conns[i].session.state();
                match result {
                    Ok(stream) if matches!(state, State::Connect | State::Active) => {
                        let mut c = self.conns.remove(i);
                        self.attach(&mut c, stream);
                        c.session.connected(now);
                        self.conns.insert(i, c);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "connect failed");
                        self.conns[i].session.connect_failed(now);
                    }
                }
            }
            PeerMsg::Bytes { conn, data, .. } => {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    let before = c.session.messages_received();
                    c.session.receive(now, &data);
                    let after = c.session.messages_received();
                    for (t, (a, b)) in after.iter().zip(before).enumerate() {
                        self.received[t] += a - b;
                    }
                    if after[3] > before[3] {
                        if let Some(session::DownReason::NotificationReceived(n)) =
                            c.session.last_error()
                        {
                            self.last_received = Some(n.to_string());
                        }
                    }
                }
                self.take_over(now);
            }
            PeerMsg::Closed { conn } => {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    c.session.closed(now);
                }
            }
            PeerMsg::Status(tx) => {
                let _ = tx.send(self.status());
            }
            PeerMsg::Routes(tx) => {
                let _ = tx.send(self.routes());
            }
            PeerMsg::Policy(p) => {
                let vm = p.entry.as_ref().map(|(n, _)| n.clone());
                self.cfg.policy = Some(p);
                self.judge_all();
                if vm != self.cfg.vm {
                    self.rename(vm);
                }
            }
            PeerMsg::Export(changes) => self.export(changes),
            PeerMsg::Refeed {
                conn,
                family,
                routes,
                end,
            } => {
                // For this connection only: another's session will have
                // asked for its own.
                if let Some(i) = self
                    .conns
                    .iter()
                    .position(|c| c.id == conn && c.session.state() == State::Established)
                {
                    self.send_announcements(i, &routes);
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
                            .send(Instant::now(), encode_end_of_rib(family));
                        if again {
                            self.send_family(i, family);
                        }
                    }
                }
            }
            PeerMsg::BfdDown => {
                // RFC 9384: Cease / BFD Down; routes go with the session.
                let n = Notification::new(bgp::notification::code::CEASE, cease::BFD_DOWN);
                let now = Instant::now();
                for c in &mut self.conns {
                    if c.session.state() == State::Established {
                        warn!("BFD down: ending the BGP session");
                        c.session.reset(now, n.clone());
                    }
                }
            }
            PeerMsg::SendHoldExpired { conn } => {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    warn!(
                        send_hold_time = ?self.cfg.send_hold_time,
                        "send hold timer expired (RFC 9687): the peer stopped reading; connection closed"
                    );
                    crate::limits::hit(crate::limits::Limit::SendHoldTime);
                    // The NOTIFICATION cannot go out (the writer is stuck);
                    // it records why the session ended.
                    let n = Notification::new(bgp::notification::code::SEND_HOLD_TIMER_EXPIRED, 0);
                    c.session.reset(now, n);
                }
            }
            PeerMsg::NextSession(c) => {
                info!("new timers take effect at the next session");
                self.cfg.send_hold_time = c.send_hold_time;
                self.cfg.max_as_path_length = c.max_as_path_length;
                self.cfg.max_send_queue = c.max_send_queue;
                self.cfg.hold_time = c.hold_time;
                self.cfg.connect_retry = c.connect_retry;
                self.cfg.bfd = c.bfd;
                self.cfg.graceful_restart = c.graceful_restart;
                if c.import_rules != self.cfg.import_rules {
                    info!("new import rules: routes judged again");
                    self.cfg.import_rules = c.import_rules;
                    self.judge_all();
                }
            }
            PeerMsg::SetExport(policy) => {
                if self.cfg.export.as_ref().is_some_and(|p| **p != *policy) {
                    info!(policy = %policy.name, "export policy changed");
                    self.cfg.export = Some(policy.clone());
                    self.to_rib(RibMsg::SetPolicy {
                        peer: self.id,
                        policy,
                    });
                }
            }
            PeerMsg::RibReady => {
                if self.conns.len() == 1 && self.conns[0].session.state() == State::Idle {
                    self.conns[0].session.start(Instant::now());
                }
                // A session that came up meanwhile has had the table as it
                // was, without End-of-RIB: the whole table again, then
                // End-of-RIB, from the RIB (so never before the table).
                if let Some(i) = self
                    .conns
                    .iter()
                    .position(|c| c.session.state() == State::Established)
                {
                    for f in self.conns[i].session.context().families {
                        self.send_family(i, f);
                    }
                }
            }
            PeerMsg::Shutdown(..) | PeerMsg::Abort(_) => {}
        }
    }

    fn incoming(&mut self, now: Instant, stream: TcpStream) {
        let state = self.conns[0].session.state();
        match state {
            State::Idle | State::Connect | State::Active => {
                // The peer was faster than our own attempt: use its
                // connection and drop ours (§8.2.2, Connect state).
                if let Some(c) = self.connecting.take() {
                    c.abort();
                }
                let mut c = self.conns.remove(0);
                c.drop_socket();
                c.id = self.next_id;
                self.next_id += 1;
                self.attach(&mut c, stream);
                c.session.accepted(now);
                self.conns.insert(0, c);
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
                let mut c = self.new_conn();
                self.attach(&mut c, stream);
                c.session.accepted(now);
                self.conns.push(c);
            }
            State::OpenSent | State::OpenConfirm if self.conns.len() == 1 => {
                // A collision in the making (§6.8): run both until the
                // peer's identifier is known.
                let mut c = self.new_conn();
                self.attach(&mut c, stream);
                c.session.accepted(now);
                self.conns.push(c);
            }
            _ => {
                info!("connection refused: a session with this neighbor is already up");
                tokio::spawn(async move {
                    let mut s = stream;
                    let n = Notification::new(
                        bgp::notification::code::CEASE,
                        cease::CONNECTION_REJECTED,
                    );
                    let bytes = bgp::Message::Notification(n).encode(&bgp::Context::default());
                    let _ = s.write_all(&bytes).await;
                    let _ = s.shutdown().await;
                });
            }
        }
    }

    /// A new connection while the session is up (see `incoming`), once
    /// its OPEN is in. A different BGP identifier (another hypervisor,
    /// after a migration) or the Restart State bit (the same one,
    /// restarted) means the peer restarted: the old connection is closed as
    /// if lost, its routes kept as stale, and the new one carries on (RFC
    /// 4724 §4.2). Otherwise it is a plain collision with an Established
    /// session, which the session wins (RFC 4271 §6.8).
    fn take_over(&mut self, now: Instant) {
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

    /// Moves bytes and events out of the sessions until there are none.
    fn process(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.conns.len() {
                while let Some(b) = self.conns[i].session.poll_transmit() {
                    count_sent(&mut self.sent, &mut self.last_sent, &b);
                    let c = &mut self.conns[i];
                    if let Some(w) = &c.writer {
                        let total = w.push(&b);
                        if total > self.cfg.max_send_queue {
                            // The peer reads slower than we produce: drop
                            // what is queued rather than grow without end.
                            warn!(
                                queued = total,
                                limit = self.cfg.max_send_queue,
                                "send queue over max-send-queue: connection closed (Cease, Out of Resources)"
                            );
                            crate::limits::hit(crate::limits::Limit::SendQueue);
                            if let Some(t) = c.writer_task.take() {
                                t.abort();
                            }
                            c.writer = None;
                            let n = Notification::new(
                                bgp::notification::code::CEASE,
                                cease::OUT_OF_RESOURCES,
                            );
                            c.session.reset(Instant::now(), n);
                        }
                    }
                    progressed = true;
                }
                while let Some(ev) = self.conns[i].session.poll_event() {
                    progressed = true;
                    self.event(i, ev);
                }
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
                    self.conns[i].session.close_collision(Instant::now());
                    progressed = true;
                }
            }
            // A secondary connection that went Idle is done; a primary that
            // went Idle (it lost a collision, or failed) hands over to the
            // secondary, which is a live connection.
            if self.conns.len() == 2 {
                if self.conns[1].session.state() == State::Idle {
                    self.flush_and_remove(1);
                    progressed = true;
                } else if self.conns[0].session.state() == State::Idle {
                    self.flush_and_remove(0);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn flush_and_remove(&mut self, i: usize) {
        let mut c = self.conns.remove(i);
        while let Some(b) = c.session.poll_transmit() {
            count_sent(&mut self.sent, &mut self.last_sent, &b);
            if let Some(w) = &c.writer {
                w.push(&b);
            }
        }
        c.drop_socket();
    }

    fn event(&mut self, i: usize, ev: Event) {
        let primary = i == 0;
        match ev {
            Event::Connect => {
                let id = self.conns[i].id;
                if let Some(c) = self.connecting.take() {
                    c.abort();
                }
                let tx = self.tx.clone();
                let addr = match (self.cfg.address, &self.cfg.interface) {
                    (IpAddr::V6(a), Some(i)) if crate::authorisation::is_link_local(a) => {
                        SocketAddr::V6(std::net::SocketAddrV6::new(a, self.cfg.port, 0, i.index))
                    }
                    (a, _) => SocketAddr::new(a, self.cfg.port),
                };
                let local = self.cfg.local_address;
                let device = self.cfg.interface.as_ref().map(|i| i.name.clone());
                let timeout = self.cfg.connect_retry;
                let password = self.cfg.password.clone();
                let gtsm = self.cfg.ttl_security;
                let ao = self.cfg.tcp_ao.clone();
                self.connecting = Some(tokio::spawn(async move {
                    let result = match tokio::time::timeout(
                        timeout,
                        connect(
                            addr,
                            local,
                            device,
                            password.as_deref(),
                            gtsm,
                            ao.as_deref(),
                        ),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connect timed out",
                        )),
                    };
                    let _ = tx.send(PeerMsg::Connected { conn: id, result }).await;
                }));
            }
            Event::Disconnect => {
                // Queued bytes (a NOTIFICATION) go out before the close.
                while let Some(b) = self.conns[i].session.poll_transmit() {
                    count_sent(&mut self.sent, &mut self.last_sent, &b);
                    if let Some(w) = &self.conns[i].writer {
                        w.push(&b);
                    }
                }
                self.conns[i].drop_socket();
                // Fresh id so that late bytes from the old socket are ignored.
                self.conns[i].id = self.next_id;
                self.next_id += 1;
            }
            Event::StateChanged { from, to } => {
                if primary {
                    self.state_since = Instant::now();
                }
                // Attempts that fail before Established are routine for VM
                // addresses that do not speak BGP: debug, not info.
                if to == State::Established || from == State::Established {
                    info!(from = %from, to = %to, "session state changed");
                } else {
                    debug!(from = %from, to = %to, "session state changed");
                }
            }
            Event::Established(n) => {
                info!(
                    asn = n.remote_as,
                    remote_id = %n.remote_id,
                    hold_time = n.hold_time,
                    "session established"
                );
                self.state_since = Instant::now();
                self.info = Some(Arc::new(PeerInfo {
                    id: self.id,
                    name: self.cfg.name.clone(),
                    address: self.cfg.address,
                    asn: n.remote_as,
                    router_id: n.remote_id,
                    ebgp: n.remote_as != self.local.local_as,
                    vm: self.cfg.vm.clone(),
                    group: self.cfg.group.clone(),
                    interface: self.cfg.interface.clone(),
                    kernel: self.cfg.kernel,
                }));
                self.peer_gr = n.peer_graceful_restart.clone();
                // RFC 4724 §4.2: stale routes of a family the new session's
                // capability no longer lists, or lists without the
                // Forwarding State bit, go at once (all, without one).
                if self.adj_rib_in.has_stale() {
                    self.flush_stale_families_not_kept(true);
                }
                if let (Some(timers), Some(bfd)) = (self.cfg.bfd, &self.local.bfd) {
                    self.bfd_registered = Some((
                        self.cfg.address,
                        self.cfg.interface.as_ref().map(|i| i.index),
                    ));
                    let _ = bfd.send(crate::bfd::BfdMsg::Add {
                        peer: self.cfg.address,
                        interface: self.cfg.interface.clone(),
                        timers,
                        notify: self.tx.clone(),
                        name: self.cfg.name.clone(),
                        // A static neighbor's peer never changes; a VM's
                        // or a gateway's may be taken over after a move.
                        pin_peer: self.cfg.policy.is_none() && !self.cfg.takeover,
                    });
                }
                let families = n.context.families.clone();
                for f in families {
                    self.send_family(i, f);
                }
                if self.cfg.group.is_some() {
                    self.nudge_at = Some(Instant::now() + NUDGE_AFTER);
                }
            }
            Event::Down(reason) => {
                self.flaps += 1;
                self.bfd_remove();
                let held_back = self.log_budget.finish();
                if held_back > 0 {
                    warn!(
                        lines = held_back,
                        "log lines about this peer's messages held back (over the budget)"
                    );
                }
                // RFC 4724 §4.2: a peer that can restart gracefully and
                // lost its connection (no NOTIFICATION) keeps its routes,
                // marked stale, for its restart time.
                let helper = matches!(reason, session::DownReason::ConnectionClosed)
                    && self
                        .peer_gr
                        .as_ref()
                        .is_some_and(|g| g.restart_time > 0 && !g.families.is_empty());
                if helper && !self.adj_rib_in.is_empty() {
                    let asked = self.peer_gr.as_ref().map_or(0, |g| g.restart_time);
                    let t = asked.min(self.local.gr_helper_max.load(Relaxed));
                    warn!(reason = %reason, routes = self.adj_rib_in.len(), restart_time = t, asked, "session down, routes kept as stale (graceful restart)");
                    self.adj_rib_in.mark_stale();
                    // Counted from the first time down: a session that
                    // comes and goes before its End-of-RIB does not start
                    // the clock again.
                    let until = Instant::now() + std::time::Duration::from_secs(t as u64);
                    self.stale_until = Some(self.stale_until.map_or(until, |s| s.min(until)));
                    // RFC 4724 §4.2: only the families in the capability.
                    self.flush_stale_families_not_kept(false);
                    return;
                }
                warn!(reason = %reason, routes = self.adj_rib_in.len(), "session down, routes withdrawn");
                self.adj_rib_in.clear();
                self.info = None;
                self.stale_until = None;
                self.to_rib(RibMsg::PeerDown(self.id));
            }
            Event::Update(u) => {
                self.nudge_at = None;
                self.apply_update(*u)
            }
            Event::RouteRefresh(family) => {
                let upstream = self.cfg.export.is_some();
                let c = &mut self.conns[i];
                // An answer that has left entirely (the RIB handed it all
                // over and nothing is queued) is answered no longer.
                let sent =
                    c.writer.as_ref().is_none_or(|w| w.queued() == 0) && !c.session.has_transmit();
                c.answering.retain(|a| !(a.done && sent));
                if let Some(a) = c.answering.iter_mut().find(|a| a.family == family) {
                    crate::limits::hit(crate::limits::Limit::RefreshPending);
                    debug!(%family, "route refresh requested while one is answered: coalesced");
                    // A neighbor with a table to get: one more answer, once
                    // this one is handed over (a VM's is End-of-RIB alone,
                    // and the one queued does).
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
        }
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
        let families = c.session.context().families.clone();
        let mut sent = false;
        for f in families {
            sent |= c.session.request_refresh(f);
        }
        if sent {
            debug!("no UPDATE yet from the VM: ROUTE-REFRESH sent");
        }
        self.process();
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
        if let Some(f) = u.end_of_rib() {
            // RFC 4724 §4.2: what was not announced again is gone.
            if let Some(afi) = f.unicast_afi() {
                self.flush_stale(Some(afi));
            }
            return;
        }
        let ebgp = self.info.as_ref().is_none_or(|i| i.ebgp);
        let policy = self.cfg.policy.clone();
        let judge = Judge {
            max_as_path_length: self.cfg.max_as_path_length,
            policy: policy.as_deref(),
            path: path_rules(&self.cfg, self.info.as_deref(), self.local.local_as),
        };
        let changes = self.adj_rib_in.apply(u, ebgp, &judge);
        self.log_refused(&changes.refused);
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
        let v = self.log_budget.line(Instant::now());
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
            match &self.info {
                Some(_) => self.rib_update(Vec::new(), withdraw),
                None => self.to_rib(RibMsg::Update {
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
            max_as_path_length: self.cfg.max_as_path_length,
            policy: policy.as_deref(),
            path: path_rules(&self.cfg, self.info.as_deref(), self.local.local_as),
        };
        let changes = self.adj_rib_in.rejudge(&judge);
        self.log_refused(&changes.refused);
        for (p, _, _) in &changes.announce {
            if self.may_log() {
                info!(prefix = %p, "route now accepted");
            }
        }
        self.rib_update(changes.announce, changes.withdraw);
    }

    /// Routes newly refused, within the session's log budget.
    fn log_refused(&mut self, refused: &[(Prefix, crate::authorisation::Rejection)]) {
        for (p, r) in refused {
            if self.may_log() {
                info!(prefix = %p, reason = %r.reason, kind = r.kind, "route refused");
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
        let now = Instant::now();
        for c in &mut self.conns {
            c.session.reset(now, n.clone());
        }
    }

    /// Ends the BFD session this session started, if any (by what was
    /// registered: a reload may have turned BFD off since).
    fn bfd_remove(&mut self) {
        if let (Some(key), Some(bfd)) = (self.bfd_registered.take(), &self.local.bfd) {
            let _ = bfd.send(crate::bfd::BfdMsg::Remove(key));
        }
    }

    /// Queues a message for the Loc-RIB (never waits, keeps order).
    fn to_rib(&self, m: RibMsg) {
        let _ = self.local.rib.send(m);
    }

    /// Tells the Loc-RIB what changed among the accepted routes.
    fn rib_update(
        &self,
        announce: Vec<(Prefix, NextHop, Arc<PathAttributes>)>,
        withdraw: Vec<Prefix>,
    ) {
        if let (Some(info), false) = (&self.info, announce.is_empty() && withdraw.is_empty()) {
            self.local.rib_backlog.add(announce.len() + withdraw.len());
            self.to_rib(RibMsg::Update {
                peer: info.clone(),
                announce,
                withdraw,
            });
        }
    }

    /// The next hop we announce for a family: our end of the connection
    /// (next-hop-self).
    fn next_hop_self(&self, i: usize, afi: bgp::Afi) -> Option<NextHop> {
        self.conns[i]
            .local
            .and_then(|l| match (afi, l.ip().to_canonical()) {
                (bgp::Afi::Ipv4, IpAddr::V4(a)) => Some(NextHop::V4(a)),
                (bgp::Afi::Ipv6, IpAddr::V6(a)) if !crate::authorisation::is_link_local(a) => {
                    Some(NextHop::V6 {
                        global: a,
                        link_local: None,
                    })
                }
                (bgp::Afi::Ipv6, IpAddr::V6(a)) => self
                    .cfg
                    .global_v6_from
                    .and_then(crate::guest::global_address)
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
        let now = Instant::now();
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
    /// sends it back as `PeerMsg::Refeed`. A neighbor that is exported
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
                .send(Instant::now(), encode_end_of_rib(family));
            return;
        }
        self.conns[i].answering.push(answering(false));
        self.to_rib(RibMsg::Refeed {
            peer: self.id,
            conn: self.conns[i].id,
            family,
        });
    }

    /// Sends a batch of export changes from the Loc-RIB (which sends a
    /// withdrawal only for what it had exported).
    fn export(&mut self, changes: Vec<(Prefix, Option<Arc<PathAttributes>>)>) {
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
        let now = Instant::now();
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

    fn status(&self) -> PeerStatus {
        let s = &self.conns[0].session;
        let n = s.negotiated();
        PeerStatus {
            name: self.cfg.name.clone(),
            address: self.cfg.address.to_string(),
            remote_as: self.cfg.remote_as.to_string(),
            asn: n.map(|n| n.remote_as),
            state: s.state().to_string(),
            since_secs: self.state_since.elapsed().as_secs(),
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
            configured_hold_time: self.cfg.hold_time,
            connect_retry_secs: self.cfg.connect_retry.as_secs(),
            hold_timer_left_ms: s
                .hold_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
            keepalive_timer_left_ms: s
                .keepalive_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
        }
    }

    fn routes(&self) -> Vec<RouteEntry> {
        self.adj_rib_in
            .iter()
            .map(|(p, r)| RouteEntry {
                prefix: p.to_string(),
                peer: self.cfg.name.clone(),
                peer_address: self.cfg.address.to_string(),
                vm: self.cfg.vm.clone(),
                interface: self.cfg.interface.as_ref().map(|i| i.name.clone()),
                best: false,
                installed: false,
                next_hop: r.next_hop().to_string(),
                as_path: r
                    .attrs()
                    .as_path
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                origin: r
                    .attrs()
                    .origin
                    .map(|o| o.name().to_string())
                    .unwrap_or_default(),
                med: r.attrs().med,
                local_pref: r.attrs().local_pref,
                communities: r
                    .attrs()
                    .communities
                    .iter()
                    .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                    .collect(),
                large_communities: r
                    .attrs()
                    .large_communities
                    .iter()
                    .map(|c| format!("{}:{}:{}", c.global, c.local1, c.local2))
                    .collect(),
                accepted: !r.rejected,
                rejected_reason: self.adj_rib_in.rejection(&p).map(|x| x.reason.clone()),
            })
            .collect()
    }
}

async fn connect(
    addr: SocketAddr,
    local: Option<IpAddr>,
    device: Option<String>,
    password: Option<&[u8]>,
    ttl_security: bool,
    tcp_ao: Option<&crate::sys::AoKey>,
) -> std::io::Result<TcpStream> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if ttl_security {
        gtsm(&sock, addr.is_ipv6())?;
    }
    if let Some(key) = password {
        crate::sys::set_tcp_md5(&sock, addr.is_ipv6(), addr.ip(), None, key)?;
    }
    if let Some(k) = tcp_ao {
        crate::sys::add_tcp_ao(&sock, addr.is_ipv6(), addr.ip(), None, k, false)?;
    }
    if let Some(d) = device {
        sock.bind_device(Some(d.as_bytes()))?;
    }
    if let Some(l) = local {
        sock.bind(SocketAddr::new(l, 0))?;
    }
    sock.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// RFC 9687: a peer that stops reading stalls our writes; after the
    /// send hold time the writer gives up instead of queueing forever.
    #[test]
    fn a_peer_that_stops_reading_trips_the_send_hold_timer() {
        rt().block_on(async {
            // A 1 KiB pipe whose far end never reads.
            let (ours, _theirs) = tokio::io::duplex(1024);
            let out = Outbox::default();
            for _ in 0..8 {
                out.push(&[0u8; 4096]);
            }
            let hold = std::time::Duration::from_millis(200);
            let w = write_loop(ours, &out, hold);
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), w)
                .await
                .expect("the writer must give up");
            assert_eq!(ended, Written::Stalled);
        });
    }

    /// A peer that reads, however slowly, never trips it, and everything
    /// arrives in order.
    #[test]
    fn a_slow_reader_gets_everything() {
        rt().block_on(async {
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let out = Arc::new(Outbox::default());
            let mut sent = Vec::new();
            for i in 0..16u8 {
                let m = vec![i; 3000];
                sent.extend_from_slice(&m);
                out.push(&m);
            }
            out.close();
            let hold = std::time::Duration::from_secs(5);
            let o = out.clone();
            let w = tokio::spawn(async move { write_loop(ours, &o, hold).await });
            let mut got = Vec::new();
            let mut buf = [0u8; 700];
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let n = theirs.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(w.await.unwrap(), Written::Done);
            assert_eq!(got, sent);
            // Every byte written is off the queue count.
            assert_eq!(out.queued(), 0);
        });
    }

    /// A writer that records each `write` call it gets.
    struct Writes(Arc<std::sync::Mutex<Vec<usize>>>);

    impl tokio::io::AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A burst of small UPDATEs queued while the writer was busy leaves
    /// in a few writes of up to 64 KiB, not one write per message; a
    /// message queued alone leaves at once, by itself.
    #[test]
    fn a_burst_goes_out_in_few_writes_and_a_lone_message_at_once() {
        rt().block_on(async {
            let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
            let out = Arc::new(Outbox::default());
            // 10,000 messages of 65 bytes (a one-prefix UPDATE) queued
            // before the writer runs.
            for _ in 0..10_000 {
                out.push(&[0u8; 65]);
            }
            let (o, w) = (out.clone(), Writes(writes.clone()));
            let task =
                tokio::spawn(
                    async move { write_loop(w, &o, std::time::Duration::from_secs(5)).await },
                );
            while out.queued() > 0 {
                tokio::task::yield_now().await;
            }
            let burst: Vec<usize> = std::mem::take(&mut *writes.lock().unwrap());
            assert_eq!(burst.iter().sum::<usize>(), 650_000);
            assert_eq!(burst.len(), 650_000usize.div_ceil(WRITE_CHUNK), "{burst:?}");
            // A lone KEEPALIVE later: written at once, alone.
            out.push(&[0xffu8; 19]);
            tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while out.queued() > 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("a lone message leaves without waiting for more");
            assert_eq!(*writes.lock().unwrap(), [19]);
            out.close();
            assert_eq!(task.await.unwrap(), Written::Done);
        });
    }
}

//! One task per configured neighbor: a thin shell around its sans-IO
//! [`PeerCore`] (`core.rs`), which decides everything. The task owns the
//! sockets: it feeds the core what happens (bytes read, a connection
//! accepted or made, a message from the Loc-RIB, the time) and carries out
//! what the core asks (connect, send, close, tell the Loc-RIB or BFD).
//!
//! ```text
//!   listener ──Incoming──▶ ┌────────────┐ ──Send──▶ outbox ─▶ writer task ─▶ socket
//!   reader task ──Bytes──▶ │ peer task  │ ──Rib───▶ Loc-RIB thread
//!   connect task ─Connected▶│  PeerCore  │ ──Bfd───▶ BFD task
//!   Loc-RIB ──Export/Refeed▶│            │ ◀──Status/Routes── control socket
//!                          └────────────┘
//! ```

pub mod core;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use std::sync::atomic::Ordering::Relaxed;

use bgp::notification::{cease, Notification};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::tasks::{self, Task};

use crate::northbound::control::{PeerStatus, RouteEntry};
use crate::routing::authorisation::VmPolicy;
use crate::routing::peer_info::ConnId;
use crate::routing::policy::Policy;
use crate::routing::rib::{RibMsg, ToPeer};

pub use self::core::{Action, Identity, Input, PeerConfig, PeerCore};

/// Read sizes: a quiet session's KEEPALIVEs, and a table transfer.
const READ_SMALL: usize = 4096;
const READ_BULK: usize = 65536;
/// Reads of one connection handed to its session task and not handled
/// yet, at most: a reader that ran ahead would hold a table transfer's
/// worth of bytes in the task's queue.
const READ_WINDOW: usize = 4;

/// How long a closed connection is drained before it is cut off.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// GTSM (RFC 5082): our packets leave with TTL 255, and the kernel drops
/// the peer's that arrive with less (it is more than one hop away).
fn gtsm(sock: &impl std::os::fd::AsFd, ipv6: bool) -> std::io::Result<()> {
    let s = socket2::SockRef::from(sock);
    if ipv6 {
        s.set_unicast_hops_v6(255)?;
    }
    // Also for IPv4 on an IPv6 socket (mapped addresses).
    let _ = s.set_ttl_v4(255);
    crate::southbound::sys::set_min_ttl(sock, ipv6, 255)
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

/// The daemon's handles every peer task gets: who we are, the Loc-RIB and
/// its backlog, the BFD task, the graceful-restart flags.
#[derive(Clone, Debug)]
pub struct DaemonHandles {
    pub router_id: std::net::Ipv4Addr,
    pub local_as: u32,
    /// The Loc-RIB task: accepted routes go there, exports come from it.
    pub rib: mpsc::UnboundedSender<RibMsg>,
    /// What the Loc-RIB has yet to apply: sockets wait while it is long.
    pub rib_backlog: crate::routing::rib::Backlog,
    /// The BFD task, if any session asks for BFD.
    pub bfd: Option<mpsc::UnboundedSender<crate::southbound::bfd::BfdMsg>>,
    /// True while tapir comes back from a graceful restart: OPENs carry
    /// the Restart State and Forwarding State bits (RFC 4724 §4.1).
    pub restarting: Arc<std::sync::atomic::AtomicBool>,
    /// As a helper: the longest a peer's restart time is honoured
    /// (`[graceful-restart] helper-max-time`; a reload sets it).
    pub gr_helper_max: Arc<std::sync::atomic::AtomicU16>,
    /// The BMP exporter, if `[[bmp]]` collectors are configured.
    pub bmp: Option<crate::northbound::bmp::Sink>,
}

impl DaemonHandles {
    /// What every peer core is told of the daemon.
    pub fn identity(&self) -> Identity {
        Identity {
            router_id: self.router_id,
            local_as: self.local_as,
            restarting: self.restarting.clone(),
            gr_helper_max: self.gr_helper_max.clone(),
            bfd: self.bfd.is_some(),
            bmp: self.bmp.as_ref().map(|s| s.scope()),
        }
    }
}

pub enum PeerMsg {
    /// A connection the listener accepted from this neighbor's address.
    Incoming(TcpStream),
    Status(oneshot::Sender<PeerStatus>),
    /// A new authorisation snapshot: every route is judged again.
    Policy(Arc<VmPolicy>),
    Routes(oneshot::Sender<Vec<RouteEntry>>),
    /// Stop with this NOTIFICATION (a Cease) and end the task; answers
    /// when done.
    Shutdown(Notification, oneshot::Sender<()>),
    /// A reload changed what applies from the next session on: timers,
    /// BFD, the graceful restart time.
    NextSession(Box<PeerConfig>),
    /// The writer made no progress for the send hold time (RFC 9687).
    SendHoldExpired {
        conn: ConnId,
    },
    /// Stop without a NOTIFICATION (tapir restarts gracefully: peers keep
    /// our routes, RFC 4724 §4.1).
    Abort(oneshot::Sender<()>),
    /// A reload changed the export policy (no session reset).
    SetExport(Arc<Policy>),
    /// BFD saw the path fail (it was Up, it is Down).
    BfdDown,
    /// The kernel has just learned the VM's link-layer address: it runs
    /// (here, now). A VM session waiting to try again tries at once.
    Reachable,
    /// The BMP exporter asks for the session's state or statistics;
    /// answered once it is queued.
    Bmp(crate::northbound::bmp::Ask, oneshot::Sender<()>),
    /// `tapir neighbor OP TARGET`: answered with `None` if `target` does
    /// not name this session.
    Admin {
        op: crate::northbound::control::NeighborOp,
        target: String,
        reply: oneshot::Sender<Option<Result<String, core::AdminError>>>,
    },
    /// `show routes --export`: answered with `None` unless this is an
    /// upstream neighbor that `target` (or, `None`, any) names.
    ShowExport {
        target: Option<String>,
        prefix: Option<bgp::Prefix>,
        reply: oneshot::Sender<Option<core::ExportAsk>>,
    },
    Connected {
        conn: ConnId,
        result: std::io::Result<TcpStream>,
    },
    Bytes {
        conn: ConnId,
        data: Vec<u8>,
        /// One of the connection's reads in flight (`READ_WINDOW`),
        /// given back when this is handled.
        read: tokio::sync::OwnedSemaphorePermit,
    },
    Closed {
        conn: ConnId,
    },
}

#[derive(Clone)]
pub struct PeerHandle {
    pub address: IpAddr,
    pub tx: mpsc::Sender<PeerMsg>,
}

impl crate::northbound::bmp::AskSession for PeerHandle {
    /// Waits until the session has queued its answer; false for a
    /// session whose task is gone, or that takes more than 5 s.
    async fn ask(&self, ask: crate::northbound::bmp::Ask) -> bool {
        let (tx, rx) = oneshot::channel();
        let asked = async { self.tx.send(PeerMsg::Bmp(ask, tx)).await.is_ok() && rx.await.is_ok() };
        tokio::time::timeout(std::time::Duration::from_secs(5), asked)
            .await
            .unwrap_or(false)
    }

    fn name(&self) -> String {
        self.address.to_string()
    }
}

/// The next message from the Loc-RIB, or never for a peer that takes no
/// exports.
async fn from_rib(rx: &mut Option<mpsc::Receiver<ToPeer>>) -> Option<ToPeer> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// The socket side of one of the core's connections.
struct Sock {
    conn: ConnId,
    /// What goes to the writer task (none once it is stopped).
    writer: Option<Arc<Outbox>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    writer_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        // Closing the outbox lets the writer send what is queued (a
        // NOTIFICATION), then shut our side down. The reader keeps
        // draining until the peer closes, so that unread input does not
        // turn the close into a reset that discards the NOTIFICATION; the
        // core ignores its bytes now. A peer that never closes is cut off
        // after LINGER.
        if let Some(o) = self.writer.take() {
            o.close();
        }
        if let Some(r) = self.reader.take() {
            tasks::spawn(Task::Timer, async move {
                tokio::time::sleep(LINGER).await;
                r.abort();
            });
        }
    }
}

struct Peer {
    core: PeerCore,
    local: Arc<DaemonHandles>,
    tx: mpsc::Sender<PeerMsg>,
    /// Given to the Loc-RIB when subscribing (upstream neighbors).
    rib_tx: Option<mpsc::Sender<ToPeer>>,
    socks: Vec<Sock>,
    connecting: Option<tokio::task::JoinHandle<()>>,
    /// A connection offered to the core (accepted, or made by us), until
    /// it answers whether it takes it.
    pending: Option<TcpStream>,
}

static NEXT_PEER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn spawn(cfg: PeerConfig, local: Arc<DaemonHandles>) -> PeerHandle {
    let (tx, rx) = mpsc::channel(tasks::PEER_MAILBOX);
    // What the Loc-RIB sends (exports, whole tables): a channel of its
    // own, for upstream neighbors only (a bounded channel allocates its
    // first block of slots at once: 2 KiB a VM session otherwise).
    let (rib_tx, rib_rx) = match cfg.export {
        Some(_) => {
            let (tx, rx) = mpsc::channel(tasks::EXPORTS);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let handle = PeerHandle {
        address: cfg.address,
        tx: tx.clone(),
    };
    let id = crate::routing::peer_info::PeerId(NEXT_PEER_ID.fetch_add(1, Relaxed));
    let peer = Peer {
        core: PeerCore::new(cfg, local.identity(), id, Instant::now()),
        local,
        tx,
        rib_tx,
        socks: Vec::new(),
        connecting: None,
        pending: None,
    };
    let cfg = peer.core.cfg();
    // The span goes with the task (never `enter()` across an await).
    let span = tracing::info_span!(
        "peer",
        peer = %cfg.name,
        address = %cfg.address,
        interface = cfg.interface.as_ref().map(|i| i.name.as_str()).unwrap_or("")
    );
    // A bug that panics in one session ends that session, not the daemon:
    // its routes leave the RIB, and the task's end closes its handle, which
    // the daemon (static neighbors) or the hypervisor task (VMs) notice and
    // start it afresh from the current configuration.
    let local = peer.local.clone();
    let bfd_key = cfg
        .session
        .bfd
        .map(|_| (cfg.address, cfg.interface.as_ref().map(|i| i.index)));
    let supervised = async move {
        use futures_util::FutureExt;
        let run = std::panic::AssertUnwindSafe(peer.run(rx, rib_rx)).catch_unwind();
        if let Err(p) = run.await {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "session task failed: the session ends and its routes are withdrawn");
            let _ = local.rib.send(RibMsg::PeerDown(id));
            let _ = local.rib.send(RibMsg::Unsubscribe(id));
            if let Some(bmp) = &local.bmp {
                bmp.gone(id.0);
            }
            if let (Some(key), Some(bfd)) = (bfd_key, &local.bfd) {
                let _ = bfd.send(crate::southbound::bfd::BfdMsg::Remove(key));
            }
        }
    };
    tasks::spawn(
        Task::Peer,
        tracing::Instrument::instrument(supervised, span),
    );
    handle
}

impl Peer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<PeerMsg>,
        mut rib_rx: Option<mpsc::Receiver<ToPeer>>,
    ) {
        if let (Some((asn, ebgp, policy)), Some(tx)) = (self.core.subscription(), &self.rib_tx) {
            let _ = self.local.rib.send(RibMsg::Subscribe {
                peer: self.core.id(),
                asn,
                ebgp,
                policy,
                tx: tx.clone(),
                exported: self.core.exported().clone(),
                families: self.core.cfg().families.clone(),
            });
        }
        self.core.start(Instant::now());
        self.act();
        loop {
            let deadline = self.core.poll_timeout();
            let msg = tokio::select! {
                m = rx.recv() => m,
                Some(m) = from_rib(&mut rib_rx) => {
                    let input = match m {
                        ToPeer::Export(changes) => Input::Export(changes),
                        ToPeer::Refeed { conn, family, routes, end } => {
                            Input::Refeed { conn, family, routes, end }
                        }
                        ToPeer::RibReady => Input::RibReady,
                    };
                    self.core.handle(Instant::now(), input);
                    self.act();
                    continue;
                }
                _ = sleep_until(deadline) => {
                    self.core.handle_timeout(Instant::now());
                    self.act();
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            let now = Instant::now();
            // A read in flight (`READ_WINDOW`), given back once handled.
            let mut _read = None;
            // The BMP exporter's question, answered once acted on.
            let mut asked = None;
            let input = match msg {
                PeerMsg::Status(tx) => {
                    let _ = tx.send(self.core.status(now));
                    continue;
                }
                PeerMsg::Routes(tx) => {
                    let _ = tx.send(self.core.routes());
                    continue;
                }
                PeerMsg::Admin { op, target, reply } => {
                    let done = self
                        .core
                        .answers_to(&target)
                        .then(|| self.core.admin(now, op));
                    self.act();
                    let _ = reply.send(done);
                    continue;
                }
                PeerMsg::ShowExport {
                    target,
                    prefix,
                    reply,
                } => {
                    let ask = self.core.ask_export(target.as_deref(), prefix);
                    self.act();
                    let _ = reply.send(ask);
                    continue;
                }
                PeerMsg::Abort(done) => {
                    self.core.handle(now, Input::Abort);
                    self.act();
                    let _ = done.send(());
                    break;
                }
                PeerMsg::Shutdown(notification, done) => {
                    self.core.handle(now, Input::Shutdown(notification));
                    self.act();
                    let _ = done.send(());
                    break;
                }
                PeerMsg::Incoming(stream) => {
                    let local = stream.local_addr().ok();
                    let remote_port = stream.peer_addr().map_or(0, |a| a.port());
                    self.pending = Some(stream);
                    Input::Incoming { local, remote_port }
                }
                PeerMsg::Connected { conn, result } => Input::Connected {
                    conn,
                    result: match result {
                        Ok(stream) => {
                            let local = stream.local_addr().ok();
                            self.pending = Some(stream);
                            Ok(local)
                        }
                        Err(e) => Err(e),
                    },
                },
                PeerMsg::Bytes { conn, data, read } => {
                    _read = Some(read);
                    let queued = self
                        .socks
                        .iter()
                        .find(|s| s.conn == conn)
                        .and_then(|s| s.writer.as_ref())
                        .map_or(0, |w| w.queued());
                    Input::Bytes { conn, data, queued }
                }
                PeerMsg::Closed { conn } => Input::Closed { conn },
                PeerMsg::SendHoldExpired { conn } => Input::SendHoldExpired { conn },
                PeerMsg::Policy(p) => Input::Policy(p),
                PeerMsg::NextSession(c) => Input::NextSession(c),
                PeerMsg::SetExport(p) => Input::SetExport(p),
                PeerMsg::BfdDown => Input::BfdDown,
                PeerMsg::Reachable => Input::Reachable,
                PeerMsg::Bmp(ask, done) => {
                    asked = Some(done);
                    Input::Bmp(ask)
                }
            };
            self.core.handle(now, input);
            self.act();
            if let Some(done) = asked {
                let _ = done.send(());
            }
            // A connection the core did not take is dropped.
            self.pending = None;
        }
    }

    /// Carries out what the core asks, in order.
    fn act(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect { conn } => self.connect(conn),
                Action::CancelConnect => {
                    if let Some(c) = self.connecting.take() {
                        c.abort();
                    }
                }
                Action::Accept { conn } | Action::Attach { conn } => {
                    if let Some(stream) = self.pending.take() {
                        self.attach(conn, stream);
                    }
                }
                Action::Refuse => {
                    if let Some(mut s) = self.pending.take() {
                        tasks::spawn(Task::Refuse, async move {
                            let n = Notification::new(
                                bgp::notification::code::CEASE,
                                cease::CONNECTION_REJECTED,
                            );
                            let bytes =
                                bgp::Message::Notification(n).encode(&bgp::Context::default());
                            let _ = s.write_all(&bytes).await;
                            let _ = s.shutdown().await;
                        });
                    }
                }
                Action::Send { conn, bytes } => self.send(conn, &bytes),
                Action::Close { conn } => self.socks.retain(|s| s.conn != conn),
                Action::Rib(m) => {
                    if let RibMsg::Update {
                        announce, withdraw, ..
                    } = &m
                    {
                        self.local.rib_backlog.add(announce.len() + withdraw.len());
                    }
                    let _ = self.local.rib.send(m);
                }
                Action::BfdAdd { timers, pin_peer } => {
                    if let Some(bfd) = &self.local.bfd {
                        let cfg = self.core.cfg();
                        let tx = self.tx.clone();
                        let _ = bfd.send(crate::southbound::bfd::BfdMsg::Add {
                            peer: cfg.address,
                            interface: cfg.interface.clone(),
                            timers,
                            notify: Box::new(move || {
                                let tx = tx.clone();
                                tasks::spawn(Task::Forward, async move {
                                    let _ = tx.send(PeerMsg::BfdDown).await;
                                });
                            }),
                            name: cfg.name.clone(),
                            pin_peer,
                        });
                    }
                }
                Action::BfdRemove(key) => {
                    if let Some(bfd) = &self.local.bfd {
                        let _ = bfd.send(crate::southbound::bfd::BfdMsg::Remove(key));
                    }
                }
                Action::Bmp { to, kind, bytes } => {
                    if let Some(bmp) = &self.local.bmp {
                        bmp.send(to, self.core.id().0, kind, bytes);
                    }
                }
            }
        }
    }

    fn send(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(s) = self.socks.iter_mut().find(|s| s.conn == conn) else {
            return;
        };
        let Some(w) = &s.writer else { return };
        let total = w.push(bytes);
        if total > self.core.cfg().session.limits.max_send_queue {
            if let Some(t) = s.writer_task.take() {
                t.abort();
            }
            s.writer = None;
            self.core.handle(
                Instant::now(),
                Input::SendQueueOver {
                    conn,
                    queued: total,
                },
            );
        }
    }

    fn connect(&mut self, conn: ConnId) {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        let tx = self.tx.clone();
        let cfg = self.core.cfg();
        let addr = self.core.connect_to();
        let local = cfg.local_address;
        let device = cfg.interface.as_ref().map(|i| i.name.clone());
        let timeout = cfg.session.connect_retry;
        let password = cfg.session.password.clone();
        let gtsm = cfg.session.ttl_security;
        let ao = cfg.session.tcp_ao.clone();
        self.connecting = Some(tasks::spawn(Task::Connect, async move {
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
            let _ = tx.send(PeerMsg::Connected { conn, result }).await;
        }));
    }

    /// Gives connection `conn` its socket: a reader task and a writer task.
    fn attach(&mut self, conn: ConnId, stream: TcpStream) {
        let cfg = self.core.cfg();
        let _ = stream.set_nodelay(true);
        if cfg.session.ttl_security {
            let v6 = stream.local_addr().is_ok_and(|a| a.is_ipv6());
            if let Err(e) = gtsm(&stream, v6) {
                warn!(error = %e, "cannot set up GTSM (RFC 5082) on the connection");
            }
        }
        if let Some(i) = &cfg.interface {
            // The session lives on its tap: replies never leave by another
            // interface, even if routes change.
            if let Err(e) = socket2::SockRef::from(&stream).bind_device(Some(i.name.as_bytes())) {
                warn!(error = %e, interface = %i.name, "cannot bind the session to its interface");
            }
        }
        let (r, w) = stream.into_split();
        // A fresh outbox for this connection: what a dead one left queued
        // is gone with it.
        let outbox = Arc::new(Outbox::default());
        let tx = self.tx.clone();
        let send_hold = self.core.send_hold_time();
        let out = outbox.clone();
        let writer_task = tasks::spawn(Task::PeerWriter, async move {
            if write_loop(w, &out, send_hold).await == Written::Stalled {
                let _ = tx.send(PeerMsg::SendHoldExpired { conn }).await;
            }
        });
        let tx = self.tx.clone();
        let backlog = self.local.rib_backlog.clone();
        let window = Arc::new(tokio::sync::Semaphore::new(READ_WINDOW));
        let reader = tasks::spawn(Task::PeerReader, async move {
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
                    let _ = tx.send(PeerMsg::Closed { conn }).await;
                    return;
                }
                let mut buf = vec![0u8; if bulk { READ_BULK } else { READ_SMALL }];
                match r.try_read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Ok(0) | Err(_) => {
                        let _ = tx.send(PeerMsg::Closed { conn }).await;
                        return;
                    }
                    Ok(n) => {
                        bulk = n == buf.len();
                        buf.truncate(n);
                        if tx
                            .send(PeerMsg::Bytes {
                                conn,
                                data: buf,
                                read,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        self.socks.push(Sock {
            conn,
            writer: Some(outbox),
            reader: Some(reader),
            writer_task: Some(writer_task),
        });
    }
}

async fn connect(
    addr: SocketAddr,
    local: Option<IpAddr>,
    device: Option<String>,
    password: Option<&[u8]>,
    ttl_security: bool,
    tcp_ao: Option<&crate::southbound::sys::AoKey>,
) -> std::io::Result<TcpStream> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if ttl_security {
        gtsm(&sock, addr.is_ipv6())?;
    }
    if let Some(key) = password {
        crate::southbound::sys::set_tcp_md5(&sock, addr.is_ipv6(), addr.ip(), None, key)?;
    }
    if let Some(k) = tcp_ao {
        crate::southbound::sys::add_tcp_ao(&sock, addr.is_ipv6(), addr.ip(), None, k, false)?;
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

//! BMP export (RFC 7854): every session's Peer Up and Peer Down, its
//! routes before and after policy (refused ones are in the pre-policy
//! view) and its statistics, to one or more collectors (`[[bmp]]`).
//!
//! Sessions never wait on it. A session encodes its BMP messages itself
//! (only while a collector is connected) and hands them to the [`Sink`],
//! which only queues; past [`crate::tasks::BMP_QUEUE_BYTES`] a message of
//! what happens is dropped, and then every collector's connection is
//! closed and opened again, so that it starts from a whole dump instead
//! of a view with a hole in it (a collector forgets a router's state when
//! its connection ends). The exporter task fans messages out to the
//! connected collectors; each collector's task connects (backing off from
//! 1 s to 60 s) and writes. A collector that connects gets every
//! session's state (Peer Up, both views, End-of-RIB), one session at a
//! time, the next asked for only once the queue has drained below
//! [`DUMP_LOW_WATER`]; what happens to a session reaches a collector only
//! after its state did, so that nothing comes before its Peer Up.
//!
//! VM sessions are reported; static neighbors and the guest's gateway too
//! with `neighbors = true`.

pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::northbound::config::BmpConfig;
use crate::tasks::{self, Task};

/// Who a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// Every connected collector (what happens now).
    All,
    /// One collector (its dump, its statistics).
    One(usize),
}

/// What a session is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Peer Up and both views of its routes, End-of-RIB after each.
    Dump(usize),
    /// A Statistics Report.
    Stats(usize),
}

/// What a message is, for the exporter's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Peer Up: the session's state starts (live, or a dump's first).
    /// Who it is, for a Peer Down of the exporter's own if the session's
    /// task fails (`Sink::gone`).
    Up(wire::Peer),
    /// Peer Down: its state ends.
    Down,
    /// The session's task ended without its Peer Down (a bug made it
    /// panic): the exporter sends one for it.
    Gone,
    /// Route Monitoring.
    Route,
    /// A Statistics Report.
    Stats,
}

struct Out {
    to: To,
    /// The session (its Loc-RIB id).
    peer: u64,
    kind: Kind,
    bytes: Arc<[u8]>,
}

/// What a session knows of the export: whether a collector is connected
/// now (nothing is encoded otherwise), and whether static neighbors are
/// reported too.
#[derive(Clone, Debug)]
pub struct Scope {
    pub active: Arc<AtomicBool>,
    pub neighbors: bool,
}

/// The queue below which the next session is asked for its dump.
pub const DUMP_LOW_WATER: usize = 4 << 20;

/// How the export is doing, for the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Per collector, in `[[bmp]]` order.
    pub collectors: Vec<CollectorCounters>,
}

#[derive(Debug, Default)]
pub struct CollectorCounters {
    pub address: String,
    pub up: AtomicBool,
    pub connects: AtomicU64,
    pub messages: AtomicU64,
    /// What waits for its socket (the dump's pace follows it).
    backlog: Arc<Backlog>,
}

/// Where sessions put their BMP messages: never waits.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Out>,
    queued: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    scope: Scope,
}

impl Sink {
    /// Queues one message of `peer`'s. What happens (`To::All`) is
    /// dropped if the queue is full, and the exporter then starts every
    /// collector over; what a collector asked for (a dump, paced by the
    /// asker) is always queued.
    pub fn send(&self, to: To, peer: u64, kind: Kind, bytes: Vec<u8>) {
        let n = bytes.len();
        let total = self.queued.fetch_add(n, Relaxed) + n;
        if to == To::All && total > tasks::BMP_QUEUE_BYTES {
            self.queued.fetch_sub(n, Relaxed);
            self.counters.dropped.fetch_add(1, Relaxed);
            return;
        }
        let out = Out {
            to,
            peer,
            kind,
            bytes: bytes.into(),
        };
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(n, Relaxed);
        }
    }

    /// The task of session `peer` failed (it panicked): if its Peer Up
    /// went out, the collectors get a Peer Down for it (local, without a
    /// NOTIFICATION), or they would show it up, with its routes, until
    /// it comes back.
    pub fn gone(&self, peer: u64) {
        let _ = self.tx.send(Out {
            to: To::All,
            peer,
            kind: Kind::Gone,
            bytes: Arc::from(Vec::new()),
        });
    }

    /// What sessions are told of the export.
    pub fn scope(&self) -> Scope {
        self.scope.clone()
    }

    /// Bytes queued and not yet handed to a collector's task.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }
}

enum Ctl {
    /// Collector `i` is connected: messages for it go to `tx`; `cut`
    /// ends the connection at once (it fell behind).
    Up {
        i: usize,
        tx: mpsc::UnboundedSender<(Arc<[u8]>, bool)>,
        cut: Arc<tokio::sync::Notify>,
    },
    /// Collector `i`'s connection ended.
    Gone(usize),
    /// tapir stops: Termination to every collector, then answer.
    Stop(oneshot::Sender<()>),
}

/// What waits for one collector's socket: what happens, and what it
/// asked for (its dump), counted apart: only the first may fall behind.
#[derive(Debug, Default)]
struct Backlog {
    live: AtomicUsize,
    asked: AtomicUsize,
}

/// The running export.
pub struct Bmp {
    pub sink: Sink,
    pub counters: Arc<Counters>,
    ctl: mpsc::Sender<Ctl>,
}

impl Bmp {
    /// Sends Termination to every connected collector and waits (a
    /// second at most) until it is written.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Stop(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
        }
    }
}

/// What one collector may have waiting before its connection is closed
/// (it reads too slowly; it gets a whole dump when it connects again).
const COLLECTOR_BACKLOG_BYTES: usize = 16 << 20;
/// The longest wait between connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A write that makes no progress this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the exporter and one task per collector; `ask` reaches every
/// session (the daemon forwards it, see [`ask_all`]).
pub fn start(collectors: &[BmpConfig], neighbors: bool, ask: mpsc::UnboundedSender<Ask>) -> Bmp {
    let counters = Arc::new(Counters {
        dropped: AtomicU64::new(0),
        collectors: collectors
            .iter()
            .map(|c| CollectorCounters {
                address: c.address.clone(),
                ..Default::default()
            })
            .collect(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let (ctl_tx, ctl_rx) = mpsc::channel(tasks::BMP_CONTROL);
    let active = Arc::new(AtomicBool::new(false));
    let sink = Sink {
        tx,
        queued: queued.clone(),
        counters: counters.clone(),
        scope: Scope {
            active: active.clone(),
            neighbors,
        },
    };
    for (i, c) in collectors.iter().enumerate() {
        tasks::spawn(
            Task::BmpCollector,
            collector(i, c.address.clone(), ctl_tx.clone(), counters.clone()),
        );
    }
    let hub = Hub {
        active,
        conns: vec![None; collectors.len()],
        stats_every: collectors.iter().map(|c| c.statistics_interval).collect(),
        queued,
        counters: counters.clone(),
        ask,
        sys_name: host_name(),
        up: HashMap::new(),
    };
    tasks::spawn(Task::Bmp, hub.run(rx, ctl_rx));
    Bmp {
        sink,
        counters,
        ctl: ctl_tx,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[derive(Clone)]
struct Conn {
    /// Each message, and whether the collector asked for it.
    tx: mpsc::UnboundedSender<(Arc<[u8]>, bool)>,
    backlog: Arc<Backlog>,
    cut: Arc<tokio::sync::Notify>,
    /// The sessions whose state it has (their Peer Up went to it): only
    /// their news go to it.
    known: std::collections::HashSet<u64>,
    /// When its next Statistics Reports are asked for.
    stats_at: Option<tokio::time::Instant>,
}

impl Conn {
    /// Closes the connection now; it comes back with a whole dump.
    fn cut(self) {
        self.cut.notify_one();
    }
}

struct Hub {
    /// Some collector is connected (sessions encode only then).
    active: Arc<AtomicBool>,
    conns: Vec<Option<Conn>>,
    stats_every: Vec<Option<Duration>>,
    /// Bytes sessions queued and the hub has not handed on.
    queued: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    ask: mpsc::UnboundedSender<Ask>,
    sys_name: String,
    /// The sessions whose Peer Up went out and no Peer Down since: who
    /// they are (`Sink::gone`).
    up: HashMap<u64, wire::Peer>,
}

impl Hub {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Out>, mut ctl: mpsc::Receiver<Ctl>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut dropped = 0;
        loop {
            tokio::select! {
                Some(out) = rx.recv() => {
                    self.queued.fetch_sub(out.bytes.len(), Relaxed);
                    self.hand_on(out);
                }
                Some(c) = ctl.recv() => match c {
                    Ctl::Up { i, tx, cut } => {
                        let backlog = self.counters.collectors[i].backlog.clone();
                        self.up(i, tx, backlog, cut)
                    }
                    Ctl::Gone(i) => self.conns[i] = None,
                    Ctl::Stop(done) => {
                        // The sessions' Peer Downs are queued: they go
                        // before Termination.
                        while let Ok(out) = rx.try_recv() {
                            self.queued.fetch_sub(out.bytes.len(), Relaxed);
                            self.hand_on(out);
                        }
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                },
                _ = tick.tick() => {
                    let now = self.counters.dropped.load(Relaxed);
                    if now != dropped {
                        dropped = now;
                        warn!(dropped = now, "BMP: messages dropped (queue full): every collector starts over");
                        for c in self.conns.iter_mut().filter_map(Option::take) {
                            c.cut();
                        }
                        // A dropped Peer Down would keep its session here
                        // for good: the dumps say again who is up.
                        self.up.clear();
                    }
                    self.statistics();
                }
            }
            self.active
                .store(self.conns.iter().any(Option::is_some), Relaxed);
        }
    }

    fn hand_on(&mut self, mut out: Out) {
        match out.kind {
            Kind::Up(p) => {
                self.up.insert(out.peer, p);
            }
            Kind::Down if out.to == To::All => {
                self.up.remove(&out.peer);
            }
            Kind::Gone => {
                let Some(p) = self.up.remove(&out.peer) else {
                    return;
                };
                let down = wire::peer_down(
                    &p,
                    &wire::Down::LocalNoNotification,
                    std::time::SystemTime::now(),
                );
                out.kind = Kind::Down;
                out.bytes = down.into();
            }
            _ => {}
        }
        let asked = out.to != To::All;
        for (i, slot) in self.conns.iter_mut().enumerate() {
            if asked && out.to != To::One(i) {
                continue;
            }
            let Some(c) = slot else { continue };
            // A session's news only after its state (its Peer Up, live or
            // dumped); its Peer Down ends that.
            let known = match out.kind {
                Kind::Up(_) => {
                    c.known.insert(out.peer);
                    true
                }
                Kind::Down | Kind::Gone => c.known.remove(&out.peer),
                Kind::Route | Kind::Stats => c.known.contains(&out.peer),
            };
            if !known {
                continue;
            }
            let n = out.bytes.len();
            let count = if asked {
                &c.backlog.asked
            } else {
                &c.backlog.live
            };
            if count.fetch_add(n, Relaxed) + n > COLLECTOR_BACKLOG_BYTES && !asked {
                warn!(
                    collector = %self.counters.collectors[i].address,
                    "BMP collector reads too slowly: connection closed, a whole dump when it is back"
                );
                if let Some(c) = slot.take() {
                    c.cut();
                }
                continue;
            }
            if c.tx.send((out.bytes.clone(), asked)).is_err() {
                *slot = None;
            }
        }
    }

    fn up(
        &mut self,
        i: usize,
        tx: mpsc::UnboundedSender<(Arc<[u8]>, bool)>,
        backlog: Arc<Backlog>,
        cut: Arc<tokio::sync::Notify>,
    ) {
        let descr = format!("tapir {}", env!("CARGO_PKG_VERSION"));
        let init: Arc<[u8]> = wire::initiation(&self.sys_name, &descr).into();
        backlog.asked.fetch_add(init.len(), Relaxed);
        let _ = tx.send((init, true));
        let stats_at = self.stats_every[i].map(|d| tokio::time::Instant::now() + d);
        self.conns[i] = Some(Conn {
            tx,
            backlog,
            cut,
            known: Default::default(),
            stats_at,
        });
        let _ = self.ask.send(Ask::Dump(i));
    }

    fn statistics(&mut self) {
        let now = tokio::time::Instant::now();
        for (i, slot) in self.conns.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if let (Some(at), Some(every)) = (c.stats_at, self.stats_every[i]) {
                if at <= now {
                    c.stats_at = Some(now + every);
                    let _ = self.ask.send(Ask::Stats(i));
                }
            }
        }
    }

    async fn stop(&mut self) {
        let bye: Arc<[u8]> = wire::termination("tapir stops").into();
        for c in self.conns.iter_mut().filter_map(Option::take) {
            let _ = c.tx.send((bye.clone(), true));
        }
        // Each collector's task writes what it has, then closes and
        // says so.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while self.counters.collectors.iter().any(|c| c.up.load(Relaxed)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// One collector: connect, write, and again after a loss.
async fn collector(i: usize, address: String, ctl: mpsc::Sender<Ctl>, counters: Arc<Counters>) {
    let me = &counters.collectors[i];
    let mut backoff = Duration::from_secs(1);
    let mut told = false;
    loop {
        let stream = match connect(&address).await {
            Ok(s) => s,
            Err(e) => {
                // The first failure in a row is a warning; the rest, at
                // the same back-off, would only repeat it.
                if !told {
                    warn!(collector = %address, error = %e, "BMP collector unreachable: trying again with back-off");
                    told = true;
                } else {
                    debug!(collector = %address, error = %e, "BMP collector still unreachable");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        told = false;
        info!(collector = %address, "BMP collector connected");
        let (tx, rx) = mpsc::unbounded_channel();
        // What the last connection left unwritten went with it (the hub
        // let go of it before this task got here).
        let backlog = me.backlog.clone();
        backlog.live.store(0, Relaxed);
        backlog.asked.store(0, Relaxed);
        let cut = Arc::new(tokio::sync::Notify::new());
        if ctl
            .send(Ctl::Up {
                i,
                tx,
                cut: cut.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        me.up.store(true, Relaxed);
        me.connects.fetch_add(1, Relaxed);
        let started = tokio::time::Instant::now();
        let why = serve(stream, rx, &backlog, &cut, me).await;
        me.up.store(false, Relaxed);
        if ctl.send(Ctl::Gone(i)).await.is_err() {
            return;
        }
        warn!(collector = %address, reason = why, "BMP collector connection ended");
        // A connection that lasted is not a failure to back off from.
        if started.elapsed() > BACKOFF_MAX {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(address: &str) -> std::io::Result<tokio::net::TcpStream> {
    let attempt = tokio::net::TcpStream::connect(address);
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 5 s",
        )),
    }
}

/// Writes what the hub hands over until the hub lets go (tapir stops),
/// cuts it (it fell behind, or the queue overflowed) or the collector
/// goes away.
async fn serve(
    stream: tokio::net::TcpStream,
    mut rx: mpsc::UnboundedReceiver<(Arc<[u8]>, bool)>,
    backlog: &Backlog,
    cut: &tokio::sync::Notify,
    me: &CollectorCounters,
) -> &'static str {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let mut buf = Vec::with_capacity(64 << 10);
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            _ = cut.notified() => return "started over",
            m = rx.recv() => {
                let Some(first) = m else {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, w.shutdown()).await;
                    return "closed by tapir";
                };
                // Whatever else is waiting goes in the same write.
                buf.clear();
                let (mut live, mut asked) = (0, 0);
                let mut n = 0;
                let mut next = Some(first);
                while let Some((m, was_asked)) = next.take() {
                    buf.extend_from_slice(&m);
                    *(if was_asked { &mut asked } else { &mut live }) += m.len();
                    n += 1;
                    if buf.len() < 64 << 10 {
                        next = rx.try_recv().ok();
                    }
                }
                tokio::select! {
                    _ = cut.notified() => return "started over",
                    r = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&buf)) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return "write failed",
                        Err(_) => return "write made no progress for 30 s",
                    }
                }
                backlog.live.fetch_sub(live, Relaxed);
                backlog.asked.fetch_sub(asked, Relaxed);
                me.messages.fetch_add(n, Relaxed);
            }
            r = r.read(&mut scratch) => match r {
                // A collector sends nothing (RFC 7854 §3.3); bytes are
                // ignored, the end of its stream ends ours.
                Ok(0) | Err(_) => return "closed by the collector",
                Ok(_) => {}
            }
        }
    }
}

/// Passes the exporter's questions on to every session `sessions()`
/// lists, one session at a time. A dump for collector `i` asks the next
/// session only once what waits for that collector (and in the queue) is
/// below [`DUMP_LOW_WATER`], so that a collector that connects costs the
/// sessions a little at a time, and its dump never sits whole in memory;
/// a collector that goes meanwhile ends its dump. A session that does not
/// answer in time is asked again at the end, once. Questions that pile up
/// meanwhile are asked once.
pub async fn ask_all<F, Fut, P>(
    mut asked: mpsc::UnboundedReceiver<Ask>,
    sink: Sink,
    counters: Arc<Counters>,
    sessions: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<P>>,
    P: AskSession,
{
    let waiting = |i: usize| {
        let b = &counters.collectors[i].backlog;
        sink.queued() + b.live.load(Relaxed) + b.asked.load(Relaxed)
    };
    while let Some(first) = asked.recv().await {
        let mut asks = vec![first];
        while let Ok(a) = asked.try_recv() {
            if !asks.contains(&a) {
                asks.push(a);
            }
        }
        'ask: for ask in asks {
            let (Ask::Dump(i) | Ask::Stats(i)) = ask;
            let mut skipped = Vec::new();
            for p in sessions().await {
                if let Ask::Dump(_) = ask {
                    while waiting(i) > DUMP_LOW_WATER {
                        if !counters.collectors[i].up.load(Relaxed) {
                            continue 'ask;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if !p.ask(ask).await {
                    skipped.push(p);
                }
            }
            for p in skipped {
                if !p.ask(ask).await {
                    warn!(session = %p.name(), ?ask, "BMP: a session did not answer the exporter twice; the collector misses it until it changes");
                }
            }
        }
    }
}

/// A session the exporter can ask.
pub trait AskSession {
    /// Asks; true once the session has queued its answer, false if it
    /// did not in time (or is gone).
    fn ask(&self, ask: Ask) -> impl std::future::Future<Output = bool>;
    /// What the session is called, for the log.
    fn name(&self) -> String;
}

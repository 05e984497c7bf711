//! Every task and thread the daemon runs, and the channels between them.
//!
//! Every task starts through [`spawn`] (or [`spawn_on`] from the RIB's
//! thread) under a [`Task`] kind, every thread through [`thread`] or
//! [`drop_elsewhere`], and every bounded channel's capacity is a constant
//! below: the modules say what a task does, this one what runs. A unit
//! test fails on a spawn anywhere else. The number of live tasks of each
//! kind is kept ([`live`]) and shown by `tapir show status`.
//!
//! ```text
//!  main thread: one single-threaded tokio runtime
//!  ┌──────────────────────────────────────────────────────────────────────┐
//!  │ Accept ──(conn)──► Peer ◄──(PeerMsg, PEER_MAILBOX)── Role, Daemon    │
//!  │                     │ ├─ PeerReader ─(bytes)─► Peer                  │
//!  │                     │ ├─ PeerWriter ◄─(Outbox)─ Peer                 │
//!  │                     │ ├─ Connect ─(socket)─► Peer                    │
//!  │                     │ └─ Refuse: a NOTIFICATION to a refused conn.   │
//!  │ KernelWatcher ─(KernelEvent, unbounded)─► Forward ─(RoleMsg)─► Role  │
//!  │ KernelScan ─(our routes in the kernel: RibMsg)─► rib thread          │
//!  │ Probe ─(found, PROBE_FOUND)─► Forward ─(RoleMsg)─► Role              │
//!  │ Role (hypervisor or guest: ROLE_MAILBOX) ─ starts/stops VM Peers     │
//!  │ Bfd ─(session down: a closure)─► Forward ─(PeerMsg)─► Peer           │
//!  │ Health (one per [[service]]) ─(RibMsg)─► rib thread                  │
//!  │ Control ─► ControlClient ─► Handles::request (answers every request) │
//!  │ Metrics ─► MetricsClient                                             │
//!  │ Netlink: drives each rtnetlink connection (watcher, dumps)           │
//!  │ Timer: one-shot sleeps (linger, deferral end, RIB's own timers)      │
//!  │ Watchdog: asks main loop and RIB, reads the FIB's progress; pings    │
//!  │ Peer ─(BMP messages, BMP_QUEUE_BYTES)─► Bmp ─► BmpCollector (each)  │
//!  │ Bmp ─(Ask)─► BmpAsk ─(PeerMsg::Bmp)─► every Peer                     │
//!  │ (tokio's blocking pool: the link dump at start)                      │
//!  └──────────┬───────────────────────────────────────────▲───────────────┘
//!             │ RibMsg (unbounded, in order)              │ ToPeer (EXPORTS,
//!             ▼                                           │ upstream peers only)
//!  tapir-rib thread: Shell around the sans-IO Rib ────────┘
//!             │ Vec<FibChange> (unbounded, batched)
//!             ▼
//!  tapir-fib thread: blocking netlink, up to 60 KiB of requests per
//!  sendmsg, no acknowledgement asked (the kernel answers errors only)
//!
//!  drop threads: a short-lived thread frees a large table (a lost
//!  session's Adj-RIB-In, the attribute sets a sweep found unused) so
//!  that neither the main thread nor the RIB waits on the allocator.
//! ```
//!
//! Channels: `RibMsg` is unbounded so that a peer never waits on the RIB
//! while the RIB waits to hand it exports; `ToPeer` is bounded so that a
//! slow upstream neighbor slows the RIB's export to it (backpressure).
//! Also unbounded, each with one reader that only forwards or applies:
//! kernel events, BFD requests, probe requests and the FIB writer's
//! batches. The other mailboxes are bounded (capacities below); replies
//! are oneshot channels.

use std::future::Future;

use futures_util::FutureExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::task::JoinHandle;

/// A session's mailbox: session events, role requests, `show` questions.
pub const PEER_MAILBOX: usize = 256;
/// What the Loc-RIB sends an upstream neighbor (exports, whole tables).
pub const EXPORTS: usize = 256;
/// The role's mailbox: kernel events, control requests, session news.
pub const ROLE_MAILBOX: usize = 1024;
/// Link-local neighbours that answered the probe, on their way to the role.
pub const PROBE_FOUND: usize = 256;
/// `tapir stop` (one is enough).
pub const STOP: usize = 1;
/// `tapir reload` and SIGHUP, queued while one is applied.
pub const RELOAD: usize = 4;
/// BMP messages the sessions queued for the exporter, in bytes; beyond,
/// messages are dropped and every collector starts over.
pub const BMP_QUEUE_BYTES: usize = 32 << 20;
/// The BMP exporter's control mailbox (collectors up and gone, stop).
pub const BMP_CONTROL: usize = 16;

/// The kinds of task, each with what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// One BGP session (static neighbor or VM address): the shell around
    /// `PeerCore`.
    Peer,
    /// Reads a session's socket into its mailbox.
    PeerReader,
    /// Writes a session's outbox to its socket.
    PeerWriter,
    /// An outgoing TCP connection being made.
    Connect,
    /// Answers a connection the session refuses with a NOTIFICATION.
    Refuse,
    /// Accepts BGP connections on one listening socket.
    Accept,
    /// The role: the hypervisor's (taps, VMs, their sessions) or the
    /// guest's (the default gateway).
    Role,
    /// Reads rtnetlink notifications and the periodic resync.
    KernelWatcher,
    /// Dumps our routes from the kernel for the Loc-RIB to repair.
    KernelScan,
    /// Drives an rtnetlink connection.
    Netlink,
    /// Passes kernel or probe events on to the role, or a BFD session's
    /// loss to its peer.
    Forward,
    /// Sends and reads the ICMPv6 echo that finds link-local VMs.
    Probe,
    /// The BFD sessions (one task for all).
    Bfd,
    /// One health-checked service.
    Health,
    /// Accepts control connections.
    Control,
    /// One control connection.
    ControlClient,
    /// Accepts metrics scrapes.
    Metrics,
    /// One metrics scrape.
    MetricsClient,
    /// A one-shot delay that then sends a message or acts once.
    Timer,
    /// Pings systemd's watchdog while the main loop, the Loc-RIB and the
    /// FIB writer answer.
    Watchdog,
    /// The BMP exporter: hands the sessions' messages to the collectors.
    Bmp,
    /// One BMP collector's connection.
    BmpCollector,
    /// Passes the BMP exporter's questions on to every session.
    BmpAsk,
}

impl Task {
    pub const ALL: [Task; 23] = [
        Task::Peer,
        Task::PeerReader,
        Task::PeerWriter,
        Task::Connect,
        Task::Refuse,
        Task::Accept,
        Task::Role,
        Task::KernelWatcher,
        Task::KernelScan,
        Task::Netlink,
        Task::Forward,
        Task::Probe,
        Task::Bfd,
        Task::Health,
        Task::Control,
        Task::ControlClient,
        Task::Metrics,
        Task::MetricsClient,
        Task::Timer,
        Task::Watchdog,
        Task::Bmp,
        Task::BmpCollector,
        Task::BmpAsk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Peer => "peer",
            Task::PeerReader => "peer-reader",
            Task::PeerWriter => "peer-writer",
            Task::Connect => "connect",
            Task::Refuse => "refuse",
            Task::Accept => "accept",
            Task::Role => "role",
            Task::KernelWatcher => "kernel-watcher",
            Task::KernelScan => "kernel-scan",
            Task::Netlink => "netlink",
            Task::Forward => "forward",
            Task::Probe => "probe",
            Task::Bfd => "bfd",
            Task::Health => "health",
            Task::Control => "control",
            Task::ControlClient => "control-client",
            Task::Metrics => "metrics",
            Task::MetricsClient => "metrics-client",
            Task::Timer => "timer",
            Task::Watchdog => "watchdog",
            Task::Bmp => "bmp",
            Task::BmpCollector => "bmp-collector",
            Task::BmpAsk => "bmp-ask",
        }
    }
}

/// Starts a child process (a health check's command). Not a task, but
/// what runs beside the daemon starts here all the same.
pub fn process(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    cmd.spawn()
}

/// The daemon's threads besides the main one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thread {
    /// The Loc-RIB.
    Rib,
    /// The FIB writer.
    Fib,
}

impl Thread {
    fn name(self) -> &'static str {
        match self {
            Thread::Rib => "tapir-rib",
            Thread::Fib => "tapir-fib",
        }
    }
}

static LIVE: [AtomicUsize; Task::ALL.len()] = [const { AtomicUsize::new(0) }; Task::ALL.len()];

/// Tasks of this kind now running.
pub fn live(task: Task) -> usize {
    LIVE[task as usize].load(Ordering::Relaxed)
}

/// Counts a task from its start until it ends or is aborted.
struct Alive(Task);

impl Alive {
    fn new(task: Task) -> Alive {
        LIVE[task as usize].fetch_add(1, Ordering::Relaxed);
        Alive(task)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        LIVE[self.0 as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// `fut`, counted as a task of kind `task` until it ends or is dropped.
/// A combinator, not an `async` block around `fut`: such a block keeps
/// `fut` twice in its state (the captured value and the one awaited),
/// which doubled every session task's memory (8 KiB a VM session).
fn counted<F: Future>(task: Task, fut: F) -> impl Future<Output = F::Output> {
    let alive = Alive::new(task);
    fut.map(move |out| {
        drop(alive);
        out
    })
}

/// Starts a task on the current runtime.
pub fn spawn<F>(task: Task, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(counted(task, fut))
}

/// Starts a task on `runtime` from a thread outside it (the RIB's).
pub fn spawn_on<F>(runtime: &tokio::runtime::Handle, task: Task, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime.spawn(counted(task, fut))
}

/// Runs a blocking call (a netlink dump) off the runtime's thread.
pub async fn blocking<F, R>(f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(f).await
}

/// Starts one of the daemon's threads.
pub fn thread<F>(thread: Thread, f: F) -> std::io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(thread.name().into())
        .spawn(f)
        .map(drop)
}

/// Frees `value` on a short-lived thread of its own. If no thread can be
/// started it is freed here.
pub fn drop_elsewhere<T: Send + 'static>(value: T) {
    // On failure the closure, and the value with it, is dropped here.
    let _ = std::thread::Builder::new()
        .name("drop".into())
        .spawn(move || drop(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    // Accept: no other unit test starts one (they run in parallel).
    #[test]
    fn counts_a_task_while_it_runs_and_after_abort() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let before = live(Task::Accept);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let done = spawn(Task::Accept, async move {
                let _ = rx.await;
            });
            assert_eq!(live(Task::Accept), before + 1);
            tx.send(()).unwrap();
            done.await.unwrap();
            assert_eq!(live(Task::Accept), before);
            let forever = spawn(Task::Accept, std::future::pending::<()>());
            assert_eq!(live(Task::Accept), before + 1);
            forever.abort();
            assert!(forever.await.unwrap_err().is_cancelled());
            assert_eq!(live(Task::Accept), before);
        });
    }

    /// Counting a task costs a few bytes, not a second copy of it.
    #[test]
    fn counting_does_not_copy_the_future() {
        let big = async {
            let buf = [0u8; 4096];
            std::future::ready(()).await;
            buf.len()
        };
        let plain = std::mem::size_of_val(&big);
        let wrapped = std::mem::size_of_val(&counted(Task::Timer, big));
        assert!(wrapped < plain + 64, "{plain} bytes became {wrapped}");
    }

    #[test]
    fn every_task_has_its_own_slot() {
        for (i, t) in Task::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i, "{t:?} out of order in Task::ALL");
        }
    }

    #[test]
    fn drop_elsewhere_frees_the_value() {
        let value = std::sync::Arc::new(());
        drop_elsewhere(value.clone());
        for _ in 0..1000 {
            if std::sync::Arc::strong_count(&value) == 1 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the value was never dropped");
    }

    /// Every spawn in the crate goes through this module.
    #[test]
    fn no_spawn_outside_this_module() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.file_name().is_some_and(|n| n == "tasks.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                // Unit tests may start helpers of their own (fake servers).
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for (n, line) in code.lines().enumerate() {
                    // `.spawn(` is any handle's, builder's or set's.
                    for pat in [
                        "tokio::spawn(",
                        ".spawn(",
                        "spawn_blocking(",
                        "spawn_local(",
                        "JoinSet",
                        "thread::spawn(",
                        "thread::Builder",
                    ] {
                        // At a word's start: `rib_thread::spawn(` is
                        // not `thread::spawn(`.
                        let hit = line.match_indices(pat).any(|(i, _)| {
                            pat.starts_with('.')
                                || !line[..i]
                                    .chars()
                                    .next_back()
                                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                        });
                        if hit {
                            found.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                        }
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "spawns outside tasks.rs:\n{}",
            found.join("\n")
        );
    }
}

//! `tapir run`: `Daemon` binds the listeners and the control socket and
//! starts every task (`start`), serves signals, reloads and failed
//! session tasks (`serve`), applies a changed config as a diff
//! (`reload`), and ends every session (`shutdown`, graceful or not).
//! `Handles::request` answers every control request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::northbound::config::Config;
use crate::northbound::control::{self, PeerStatus, Request, Response, RouteEntry};
use crate::northbound::inventory::Inventory;
use crate::peer::{self, DaemonHandles, PeerHandle, PeerMsg};
use crate::role::hypervisor;
use crate::role::RoleMsg;
use crate::tasks::{self, Task};
use bgp::notification::{cease, Notification};
use tokio::sync::mpsc;

/// Why the daemon could not start (or serve): nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("control socket {}: {source}", path.display())]
    ControlSocket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("netlink: {0} (tapir needs CAP_NET_ADMIN to install routes)")]
    FibWriter(std::io::Error),
    #[error("netlink: {0} (tapir needs CAP_NET_ADMIN to follow taps and routes)")]
    Watcher(std::io::Error),
    #[error("cannot start the RIB thread: {0}")]
    RibThread(std::io::Error),
    #[error("BFD sockets (UDP 3784): {0}")]
    Bfd(std::io::Error),
    #[error("registrations: {0}")]
    Inventory(#[from] crate::northbound::inventory::InventoryError),
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// A TCP-MD5 or TCP-AO key the listeners would not take.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("TCP-MD5 key for {}: {source} (does the kernel have CONFIG_TCP_MD5SIG?)", key_for(.addr, .len))]
    Md5 {
        addr: std::net::IpAddr,
        len: Option<u8>,
        source: std::io::Error,
    },
    #[error("TCP-AO key for {}: {source}", key_for(.addr, .len))]
    Ao {
        addr: std::net::IpAddr,
        len: Option<u8>,
        source: std::io::Error,
    },
    #[error("the TCP-AO key for {addr} changed: that takes a restart (tapir does not replace listener keys yet)")]
    AoChanged { addr: std::net::IpAddr },
}

fn key_for(addr: &std::net::IpAddr, len: &Option<u8>) -> String {
    match len {
        Some(l) => format!("{addr}/{l}"),
        None => addr.to_string(),
    }
}

/// Why a reload was refused (the running config stays) or only partly
/// applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::northbound::config::ConfigError),
    #[error(transparent)]
    Refused(#[from] crate::reload::Refusal),
    #[error(transparent)]
    Role(#[from] crate::role::RoleError),
    #[error("the hypervisor task is gone")]
    RoleGone,
    #[error("the config was applied, but {0}")]
    Keys(#[from] KeyError),
}

/// `tapir run`: start, serve until stopped, shut down.
pub async fn run(
    config: Config,
    overrides: crate::northbound::config::Overrides,
    config_path: &Path,
    socket: &Path,
) -> Result<(), StartError> {
    let mut daemon = Daemon::start(config, config_path, socket).await?;
    daemon.overrides = overrides;
    let graceful = daemon.serve().await?;
    daemon.shutdown(graceful).await;
    Ok(())
}

/// What the control socket, the metrics endpoint and the main loop share:
/// the handles of every task.
#[derive(Clone)]
struct Handles {
    /// The static neighbors' tasks; a reload changes them.
    peers: Peers,
    /// The role's task (hypervisor or guest), if any.
    role: Option<mpsc::Sender<RoleMsg>>,
    rib: mpsc::UnboundedSender<crate::routing::rib::RibMsg>,
    bfd: Option<mpsc::UnboundedSender<crate::southbound::bfd::BfdMsg>>,
    services: crate::role::health::Statuses,
    about: Arc<About>,
    /// To the main loop: stop (graceful or not), reload.
    stop: mpsc::Sender<bool>,
    reload: mpsc::Sender<ToMain>,
    /// How the last reload went (the metrics).
    reloaded: Arc<std::sync::Mutex<crate::reload::Outcome>>,
    /// How the BMP export is doing (the metrics), if `[[bmp]]` is set.
    bmp: Option<Arc<crate::northbound::bmp::Counters>>,
}

/// The listening sockets' descriptors (TCP-MD5 and TCP-AO keys, GTSM) and
/// the keys they hold, so that a reload applies the difference.
struct ListenerKeys {
    fds: Vec<(std::os::fd::OwnedFd, bool)>,
    md5: Md5Keys,
    ao: AoKeys,
}

impl ListenerKeys {
    fn new(listeners: &[TcpListener], config: &Config) -> Result<ListenerKeys, StartError> {
        let fds = listeners
            .iter()
            .map(|l| {
                use std::os::fd::AsFd;
                let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
                l.as_fd().try_clone_to_owned().map(|fd| (fd, v6))
            })
            .collect::<Result<_, _>>()
            .map_err(StartError::Listener)?;
        let mut keys = ListenerKeys {
            fds,
            md5: Md5Keys::new(),
            ao: AoKeys::new(),
        };
        keys.apply(config)?;
        Ok(keys)
    }

    fn apply(&mut self, config: &Config) -> Result<(), KeyError> {
        apply_listener_ttl(&self.fds, config);
        apply_md5(&self.fds, &mut self.md5, &md5_keys(config))?;
        apply_ao(&self.fds, &mut self.ao, &ao_keys(config))
    }
}

/// What the control socket asks of the main loop, which owns the
/// running config.
enum ToMain {
    Reload {
        dry_run: bool,
        reply: oneshot::Sender<Result<crate::reload::Report, ReloadError>>,
    },
    ShowConfig(oneshot::Sender<control::ConfigView>),
    /// The watchdog: the main loop answers.
    Ping(oneshot::Sender<()>),
}

/// The running daemon.
struct Daemon {
    config: Config,
    config_path: std::path::PathBuf,
    local: Arc<DaemonHandles>,
    handles: Handles,
    keys: ListenerKeys,
    /// Written at a graceful stop, read at the next start.
    marker: Option<std::path::PathBuf>,
    stop: mpsc::Receiver<bool>,
    reload: mpsc::Receiver<ToMain>,
    /// The text the running config was read from (at start or the last
    /// reload).
    config_text: String,
    /// The command line's values over the file's.
    overrides: crate::northbound::config::Overrides,
    /// The health-checked services' tasks (a reload changes them).
    services: crate::role::health::Services,
    /// The FIB writer runs (`[kernel] install` at start): `[kernel]`
    /// changes apply at a reload.
    fib_running: bool,
    /// The BMP export (`[[bmp]]`): Termination at the end.
    bmp: Option<crate::northbound::bmp::Bmp>,
    /// Removes the control socket when the daemon ends.
    _control: control::SocketGuard,
}

/// What a graceful stop writes in its marker: the kernel routes it left
/// are of this protocol and metric.
fn marker_text(config: &Config) -> String {
    format!("{} {}\n", config.kernel.protocol, config.kernel.metric)
}

/// Whether the last run stopped gracefully within the restart time (RFC
/// 4724 §4.1), leaving kernel routes of the protocol and metric this run
/// uses (a changed `[kernel]` is a cold start: the old routes would not
/// be ours); the marker file, consumed.
fn graceful_restart_marker(config: &Config) -> (Option<std::path::PathBuf>, bool) {
    let marker = config
        .state_dir
        .as_ref()
        .map(|d| d.join("graceful-restart"));
    let restarting = marker.as_ref().is_some_and(|m| {
        let recent = std::fs::metadata(m)
            .and_then(|md| md.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() <= config.graceful_restart.restart_time as u64);
        let same = std::fs::read_to_string(m).is_ok_and(|t| t == marker_text(config));
        if recent && !same {
            warn!("the last stop was graceful, but with another [kernel] protocol or metric (or an older tapir): starting cold");
        }
        recent && same
    });
    if let Some(m) = &marker {
        let _ = std::fs::remove_file(m);
    }
    (marker, restarting)
}

/// The kernel's FIB writer (if routes are installed) and, after a graceful
/// restart, what the Loc-RIB must know of it; a cold start removes what
/// an earlier run left.
async fn start_fib(
    config: &Config,
    restarting: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<
    (
        Option<mpsc::UnboundedSender<Vec<crate::routing::rib::FibChange>>>,
        Option<crate::routing::rib::Restart>,
    ),
    StartError,
> {
    let restart = |stale| crate::routing::rib::Restart {
        stale,
        deferral: config.graceful_restart.deferral,
        restarting: restarting.clone(),
    };
    let graceful = restarting.load(std::sync::atomic::Ordering::Relaxed);
    if !config.kernel.install {
        return Ok((None, graceful.then(|| restart(Vec::new()))));
    }
    let mut kept = None;
    if graceful {
        let stale = crate::southbound::kernel::our_routes(config.kernel.protocol)
            .await
            .unwrap_or_default();
        info!(
            kept = stale.len(),
            deferral = ?config.graceful_restart.deferral,
            "graceful restart: kernel routes kept until the VMs announce again"
        );
        kept = Some(restart(stale));
    } else {
        match crate::southbound::kernel::flush_stale(config.kernel.protocol).await {
            Ok(0) => {}
            Ok(n) => info!(
                routes = n,
                protocol = config.kernel.protocol,
                "stale routes of an earlier run removed"
            ),
            Err(e) => warn!(error = %e, "cannot read the kernel's routes"),
        }
    }
    let writer =
        crate::southbound::kernel::spawn_writer(config.kernel.protocol, config.kernel.metric)
            .map_err(StartError::FibWriter)?;
    Ok((Some(writer), kept))
}

/// Whether any session of `config` asks for BFD.
pub(crate) fn wants_bfd(config: &Config) -> bool {
    config.neighbors.iter().any(|n| n.session.bfd.is_some())
        || config.groups.iter().any(|g| g.session.bfd.is_some())
        || config
            .gateway
            .as_ref()
            .is_some_and(|g| g.template.session.bfd.is_some())
}

/// The role's task: the guest's (a gateway is configured) or the
/// hypervisor's (VM groups are), fed by the kernel watcher.
async fn start_role(
    config: &Config,
    inventory: Inventory,
    registered: usize,
    local: &Arc<DaemonHandles>,
) -> Result<Option<mpsc::Sender<RoleMsg>>, StartError> {
    if config.groups.is_empty() && config.gateway.is_none() {
        return Ok(None);
    }
    let role = match &config.gateway {
        Some(g) => {
            info!("guest role: following the default gateway");
            crate::role::guest::spawn(
                g.clone(),
                config.graceful_restart.restart_time,
                local.clone(),
            )
        }
        None => hypervisor::spawn(
            config.groups.clone(),
            config.neighbors.iter().map(|n| n.address).collect(),
            inventory,
            local.clone(),
            config.kernel.install,
            config.registration_grace,
        ),
    };
    let (ktx, mut krx) = mpsc::unbounded_channel();
    crate::southbound::kernel::watch(ktx)
        .await
        .map_err(StartError::Watcher)?;
    let to_role = role.clone();
    tasks::spawn(Task::Forward, async move {
        while let Some(e) = krx.recv().await {
            if to_role.send(RoleMsg::Kernel(e)).await.is_err() {
                return;
            }
        }
    });
    if config.gateway.is_none() {
        info!(
            groups = config.groups.len(),
            registered, "hypervisor role: following taps"
        );
    }
    Ok(Some(role))
}

impl Daemon {
    /// Binds every socket and starts every task; an error here leaves
    /// nothing running.
    async fn start(
        config: Config,
        config_path: &Path,
        socket: &Path,
    ) -> Result<Daemon, StartError> {
        for w in config.warnings() {
            warn!("{w}");
        }
        let (control_listener, guard) =
            control::bind(socket).map_err(|source| StartError::ControlSocket {
                path: socket.to_path_buf(),
                source,
            })?;
        let mut listeners = Vec::new();
        for addr in &config.listen {
            listeners.push(bind_bgp(*addr).map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?);
        }
        let keys = ListenerKeys::new(&listeners, &config)?;
        let (marker, restarting) = graceful_restart_marker(&config);
        let restarting = Arc::new(std::sync::atomic::AtomicBool::new(restarting));
        let (fib, restart) = start_fib(&config, &restarting).await?;
        let rib_backlog = crate::routing::rib::Backlog::default();
        let rib = crate::routing::rib_thread::spawn(
            config.local_as,
            config.announce.clone(),
            fib,
            config.kernel.multipath,
            restart,
            config.drain,
            rib_backlog.clone(),
        )
        .map_err(StartError::RibThread)?;
        if config.kernel.install {
            crate::southbound::fib::spawn_scanner(
                config.kernel.protocol,
                config.kernel.scan_interval,
                rib.clone(),
            );
        }
        let bfd = match wants_bfd(&config) {
            true => Some(crate::southbound::bfd::spawn().map_err(StartError::Bfd)?),
            false => None,
        };
        let (bmp_ask, bmp_asked) = mpsc::unbounded_channel();
        let bmp = (!config.bmp.is_empty())
            .then(|| crate::northbound::bmp::start(&config.bmp, config.bmp_neighbors, bmp_ask));
        let local = Arc::new(DaemonHandles {
            bmp: bmp.as_ref().map(|b| b.sink.clone()),
            router_id: config.router_id,
            local_as: config.local_as,
            bfd: bfd.clone(),
            rib: rib.clone(),
            rib_backlog,
            restarting,
            gr_helper_max: Arc::new(config.graceful_restart.helper_max_time.into()),
        });
        let mut inventory = Inventory::new(config.vms.clone(), config.state_dir.as_deref());
        let registered = inventory.load_registrations()?;
        // Health-checked services: their prefixes come and go in the Loc-RIB.
        let services = crate::role::health::Services::spawn(&config.services, rib.clone());
        let role = start_role(&config, inventory, registered, &local).await?;
        // The static neighbors, in the config's order.
        let peers: Peers = Arc::new(std::sync::RwLock::new(
            config
                .neighbors
                .iter()
                .map(|n| {
                    peer::spawn(
                        peer::PeerConfig::from_neighbor(n, config.graceful_restart.restart_time),
                        local.clone(),
                    )
                })
                .collect(),
        ));
        info!(
            router_id = %config.router_id,
            local_as = config.local_as,
            neighbors = config.neighbors.len(),
            socket = %socket.display(),
            "tapir started"
        );
        let (stop_tx, stop) = mpsc::channel(tasks::STOP);
        let (reload_tx, reload) = mpsc::channel(tasks::RELOAD);
        let handles = Handles {
            peers,
            role,
            rib,
            bfd,
            services: services.statuses(),
            about: Arc::new(About {
                local: local.clone(),
                config: config_path.display().to_string(),
                started: std::time::Instant::now(),
            }),
            stop: stop_tx,
            reload: reload_tx,
            reloaded: Default::default(),
            bmp: bmp.as_ref().map(|b| b.counters.clone()),
        };
        if let Some(b) = &bmp {
            let h = handles.clone();
            let sessions = move || {
                let h = h.clone();
                async move { all_peers(&snapshot(&h.peers), h.role.as_ref()).await }
            };
            tasks::spawn(
                Task::BmpAsk,
                crate::northbound::bmp::ask_all(
                    bmp_asked,
                    b.sink.clone(),
                    b.counters.clone(),
                    sessions,
                ),
            );
        }
        for l in listeners {
            tasks::spawn(Task::Accept, accept_bgp(l, handles.clone()));
        }
        if let Some(addr) = config.metrics {
            let listener = crate::northbound::metrics::bind(addr)
                .map_err(|source| StartError::Metrics { addr, source })?;
            let h = handles.clone();
            crate::northbound::metrics::serve(listener, move || h.clone().metrics());
            info!(listen = %addr, "metrics endpoint up");
        }
        tasks::spawn(
            Task::Control,
            serve_control(control_listener, handles.clone()),
        );
        let fib_running = config.kernel.install;
        Ok(Daemon {
            config,
            config_text: std::fs::read_to_string(config_path).unwrap_or_default(),
            overrides: Default::default(),
            services,
            fib_running,
            config_path: config_path.to_path_buf(),
            local,
            handles,
            keys,
            marker,
            stop,
            reload,
            bmp,
            _control: guard,
        })
    }

    /// Runs until a signal or `tapir stop`: reloads on SIGHUP and
    /// `tapir reload`, and starts failed session tasks again. True for a
    /// graceful stop.
    async fn serve(&mut self) -> Result<bool, StartError> {
        let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
        // Listening, the control socket answering: ready.
        crate::northbound::notify::notify("READY=1");
        if let Some(every) = crate::northbound::watchdog::interval() {
            crate::northbound::watchdog::spawn(
                every,
                self.handles.rib.clone(),
                self.handles.reload.clone(),
                ToMain::Ping,
            );
        }
        // Session tasks that failed (a bug) are started afresh.
        let mut health = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            let reply = tokio::select! {
                _ = health.tick() => {
                    respawn_failed(&self.handles.peers, &self.config, &self.local);
                    continue;
                }
                _ = term.recv() => {
                    // `systemctl restart` and upgrades: keep forwarding.
                    let g = self.graceful_on_sigterm();
                    info!(graceful = g, "SIGTERM: shutting down");
                    return Ok(g)
                }
                _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(false) }
                Some(g) = self.stop.recv() => { info!(graceful = g, "stop requested"); return Ok(g) }
                _ = hup.recv() => None,
                Some(m) = self.reload.recv() => Some(m),
            };
            match reply {
                None => {
                    let _ = self.reload(false).await;
                }
                Some(ToMain::Reload { dry_run, reply }) => {
                    let _ = reply.send(self.reload(dry_run).await);
                }
                Some(ToMain::ShowConfig(reply)) => {
                    let _ = reply.send(self.config_view());
                }
                Some(ToMain::Ping(reply)) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Whether SIGTERM stops for a graceful restart (RFC 4724): when the
    /// config offers one (`restart-time` above 0) and the next start can
    /// know it was one (a state directory for the marker).
    fn graceful_on_sigterm(&self) -> bool {
        self.config.graceful_restart.restart_time > 0 && self.marker.is_some()
    }

    /// `show config`: the running config's text, and how the file on disk
    /// differs from what runs.
    fn config_view(&self) -> control::ConfigView {
        let file = Config::load(&self.config_path).map(|c| self.overrides.apply(c));
        let (pending, error) = match file {
            Ok(file) => match crate::reload::plan(
                &self.config,
                &file,
                self.local.bfd.is_some(),
                self.fib_running,
            ) {
                Ok(p) => (p, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            },
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        control::ConfigView {
            path: self.config_path.display().to_string(),
            text: self.config_text.clone(),
            pending,
            file_error: error,
        }
    }

    /// One reload (`tapir reload`, SIGHUP): applied, logged and recorded
    /// for the metrics, whether it is refused or not; with `dry_run`, only
    /// what it would do.
    async fn reload(&mut self, dry_run: bool) -> Result<crate::reload::Report, ReloadError> {
        let result = self.apply_file(dry_run).await;
        if dry_run {
            return result;
        }
        self.handles
            .reloaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&result);
        match &result {
            Ok(r) => {
                for c in &r.changes {
                    info!(change = %c.what, effect = %c.effect, "reload");
                }
                let pending: Vec<&str> = r.pending_restart().map(|c| c.what.as_str()).collect();
                if pending.is_empty() {
                    info!(changes = r.changes.len(), "config reloaded");
                } else {
                    warn!(changes = r.changes.len(), awaiting_restart = ?pending, "config reloaded; some changes wait for a restart of tapir");
                }
            }
            Err(e) => warn!(error = %e, "reload refused; the running config stays"),
        }
        result
    }

    /// The config file applied as a diff, then the listeners' keys.
    async fn apply_file(&mut self, dry_run: bool) -> Result<crate::reload::Report, ReloadError> {
        let text = std::fs::read_to_string(&self.config_path).map_err(|e| {
            crate::northbound::config::ConfigError {
                file: self.config_path.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }
        })?;
        let file = self
            .overrides
            .apply(Config::parse(&text, &self.config_path)?);
        let changes = crate::reload::plan(
            &self.config,
            &file,
            self.local.bfd.is_some(),
            self.fib_running,
        )?;
        let report = crate::reload::Report { dry_run, changes };
        if dry_run {
            return Ok(report);
        }
        crate::northbound::notify::notify("RELOADING=1");
        let h = &self.handles;
        let mut result = reload(
            &mut self.config,
            file,
            &h.peers,
            &self.local,
            h.role.as_ref(),
            &mut self.services,
            self.fib_running,
        )
        .await
        .map(|()| report);
        if result.is_ok() {
            self.config_text = text;
            if let Err(e) = self.keys.apply(&self.config) {
                result = Err(e.into());
            }
        }
        crate::northbound::notify::notify("READY=1");
        result
    }

    /// Ends every session: with a Cease, or (graceful) without, leaving
    /// the routes in the kernel and a marker for the next start.
    async fn shutdown(self, graceful: bool) {
        crate::northbound::notify::notify("STOPPING=1");
        if graceful {
            // Peers that can help keep our routes; the kernel keeps forwarding.
            match &self.marker {
                Some(m) => {
                    if let Some(d) = m.parent() {
                        let _ = std::fs::create_dir_all(d);
                    }
                    if let Err(e) = std::fs::write(m, marker_text(&self.config)) {
                        warn!(error = %e, "cannot record the graceful restart; the next start will be a cold one");
                    }
                }
                None => {
                    warn!("no state-dir: the next start cannot know that this was a graceful stop")
                }
            }
        }
        let mut waits = Vec::new();
        for p in snapshot(&self.handles.peers) {
            let (tx, rx) = oneshot::channel();
            let msg = if graceful {
                PeerMsg::Abort(tx)
            } else {
                PeerMsg::Shutdown(
                    Notification::shutdown(cease::ADMINISTRATIVE_SHUTDOWN, "tapir shutting down"),
                    tx,
                )
            };
            if p.tx.send(msg).await.is_ok() {
                waits.push(rx);
            }
        }
        if let Some(role) = &self.handles.role {
            let (tx, rx) = oneshot::channel();
            if role
                .send(RoleMsg::Shutdown { graceful, done: tx })
                .await
                .is_ok()
            {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        // Let the writer tasks put the Cease (or the FIN) on the wire.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // The sessions' Peer Downs are queued: Termination goes last.
        if let Some(b) = &self.bmp {
            b.stop().await;
        }
        if !graceful && self.config.kernel.install {
            // A full stop takes our routes out of the kernel.
            match crate::southbound::kernel::flush_stale(self.config.kernel.protocol).await {
                Ok(n) if n > 0 => info!(routes = n, "kernel routes removed"),
                Err(e) => warn!(error = %e, "cannot remove our kernel routes"),
                _ => {}
            }
        }
    }
}

/// Hands each BGP connection to its static neighbor's task, or to the
/// role's task (a VM, the gateway); refuses the rest.
async fn accept_bgp(l: TcpListener, h: Handles) {
    loop {
        let (stream, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = from.ip().to_canonical();
        let neighbor = snapshot(&h.peers).into_iter().find(|p| p.address == ip);
        match (neighbor, &h.role) {
            (Some(p), _) => {
                let _ = p.tx.send(PeerMsg::Incoming(stream)).await;
            }
            (None, Some(role)) => {
                let _ = role.send(RoleMsg::Incoming(stream, from)).await;
            }
            (None, None) => {
                info!(from = %ip, "connection from an address that is no neighbor refused")
            }
        }
    }
}

/// Answers the control socket's clients, each on a task of its own.
async fn serve_control(listener: tokio::net::UnixListener, h: Handles) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let h = h.clone();
        tasks::spawn(
            Task::ControlClient,
            control::serve_client(stream, move |req| {
                let h = h.clone();
                async move { h.request(req).await }
            }),
        );
    }
}

impl Handles {
    /// One control request, answered.
    async fn request(self, req: Request) -> Response {
        match req {
            Request::ShowServices => Response::Services {
                services: self
                    .services
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            },
            Request::ShowStatus => Response::Status {
                status: status(
                    &self.about,
                    &snapshot(&self.peers),
                    self.role.as_ref(),
                    &self.rib,
                    self.bfd.clone(),
                )
                .await,
            },
            Request::ShowBfd => Response::Bfd {
                sessions: bfd_sessions(self.bfd.clone()).await,
            },
            Request::Reload { dry_run } => {
                let (reply, rx) = oneshot::channel();
                if self
                    .reload
                    .send(ToMain::Reload { dry_run, reply })
                    .await
                    .is_err()
                {
                    return shutting_down();
                }
                match rx.await {
                    Ok(Ok(report)) => Response::Reloaded { report },
                    Ok(Err(e)) => Response::Error {
                        message: e.to_string(),
                    },
                    Err(_) => shutting_down(),
                }
            }
            Request::ShowConfig => {
                let (tx, rx) = oneshot::channel();
                if self.reload.send(ToMain::ShowConfig(tx)).await.is_err() {
                    return shutting_down();
                }
                match rx.await {
                    Ok(config) => Response::Config { config },
                    Err(_) => shutting_down(),
                }
            }
            Request::Stop { graceful } => {
                let _ = self.stop.send(graceful).await;
                Response::Done {
                    message: if graceful {
                        "stopping for a graceful restart: peers keep our routes and the kernel keeps forwarding until tapir starts again (within the restart time); `systemctl restart tapir` does both steps".into()
                    } else {
                        "stopping: a Cease to every peer, our routes out of the kernel; the shipped unit (Restart=on-failure) leaves tapir stopped. (`systemctl restart tapir` restarts gracefully instead.)".into()
                    },
                }
            }
            Request::ShowPeers { all } => {
                let mut peers = peer_statuses(&snapshot(&self.peers), self.role.as_ref()).await;
                peers.retain(|p| all || !p.probing);
                Response::Peers { peers }
            }
            Request::ShowRoutes { query } => {
                show_routes(&snapshot(&self.peers), self.role.as_ref(), &self.rib, query).await
            }
            Request::ShowRib => show_rib(&self.rib).await,
            Request::ShowVms => show_vms(self.role.as_ref(), &self.rib, self.bfd.clone()).await,
            Request::Drain {
                vm,
                withdraw,
                undrain,
            } => drain(&self.rib, vm, withdraw, undrain).await,
            Request::Neighbor { op, target } => {
                neighbor(&snapshot(&self.peers), self.role.as_ref(), op, target).await
            }
            Request::VmAdd { mut vm } => {
                // Only `vm sync` makes synced entries.
                vm.synced = false;
                let done = format!("VM {} registered", vm.name);
                vm_request(self.role.as_ref(), |tx| RoleMsg::VmAdd(vm, tx), done).await
            }
            Request::VmRemove { name, nic } => {
                let done = match &nic {
                    Some(n) => format!("VM {name}: NIC {n} removed"),
                    None => format!("VM {name} removed"),
                };
                vm_request(
                    self.role.as_ref(),
                    |tx| RoleMsg::VmRemove(name, nic, tx),
                    done,
                )
                .await
            }
            Request::VmSync { vms, dry_run } => vm_sync(self.role.as_ref(), vms, dry_run).await,
        }
    }

    /// What the metrics endpoint reports, gathered from every task.
    async fn metrics(self) -> crate::northbound::metrics::Snapshot {
        let services = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peers = peer_statuses(&snapshot(&self.peers), self.role.as_ref()).await;
        let bfd = bfd_sessions(self.bfd.clone()).await;
        let (tx, rx) = oneshot::channel();
        // A Loc-RIB that does not answer within a second (stalled, or
        // under a load it should be left to) leaves its figures out of
        // this scrape rather than holding it.
        let asked = self
            .rib
            .send(crate::routing::rib::RibMsg::Stats(tx))
            .is_ok();
        let rib = async {
            match asked {
                true => tokio::time::timeout(std::time::Duration::from_secs(1), rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                false => None,
            }
        };
        let vms = async {
            match show_vms(self.role.as_ref(), &self.rib, None).await {
                Response::Vms { vms } => vms,
                _ => Vec::new(),
            }
        };
        // Both ask the Loc-RIB, each for a second at most: side by side,
        // a stalled Loc-RIB costs a scrape one second, not two.
        let (rib, vms) = tokio::join!(rib, vms);
        crate::northbound::metrics::Snapshot {
            peers,
            bfd,
            rib,
            services,
            vms,
            reloaded: *self.reloaded.lock().unwrap_or_else(|e| e.into_inner()),
            rib_backlog: self.about.local.rib_backlog.queued(),
            bmp: self.bmp.clone(),
        }
    }
}

/// Starts a static neighbor's task again if it ended without being told
/// to (it failed), from the current configuration.
fn respawn_failed(peers: &Peers, config: &Config, local: &Arc<DaemonHandles>) {
    let mut v = peers.write().unwrap_or_else(|e| e.into_inner());
    for (i, n) in config.neighbors.iter().enumerate() {
        if v.get(i).is_some_and(|h| h.tx.is_closed()) {
            warn!(neighbor = %n.name, "the neighbor's session task had failed: started again");
            v[i] = peer::spawn(
                peer::PeerConfig::from_neighbor(n, config.graceful_restart.restart_time),
                local.clone(),
            );
        }
    }
}

/// TCP-MD5 keys the listeners hold: an address, or a prefix (a group's
/// range, so that any VM in it can use the group's key), and its key.
type Md5Keys = std::collections::BTreeMap<(std::net::IpAddr, Option<u8>), Arc<[u8]>>;

fn md5_keys(config: &Config) -> Md5Keys {
    listener_keys(
        config,
        |n| n.session.password.as_ref(),
        |g| g.session.password.as_ref(),
    )
}

/// The keys the listening sockets must hold, by address: each
/// neighbor's, and each range of each group (`neighbor` and `group` pick
/// the key out of the session's settings).
fn listener_keys<K: Clone>(
    config: &Config,
    neighbor: impl Fn(&crate::northbound::config::Neighbor) -> Option<&K>,
    group: impl Fn(&crate::northbound::config::Group) -> Option<&K>,
) -> std::collections::BTreeMap<(std::net::IpAddr, Option<u8>), K> {
    let mut keys = std::collections::BTreeMap::new();
    for n in &config.neighbors {
        if let Some(k) = neighbor(n) {
            keys.insert((n.address, None), k.clone());
        }
    }
    for g in &config.groups {
        if let Some(k) = group(g) {
            for r in &g.ranges {
                keys.insert((r.addr(), Some(r.len())), k.clone());
            }
        }
    }
    keys
}

/// With GTSM anywhere, the listeners answer with TTL 255 (our SYN-ACK must
/// pass the peer's check); the minimum is set per session after accept.
fn apply_listener_ttl(listeners: &[(std::os::fd::OwnedFd, bool)], config: &Config) {
    let wanted = config.neighbors.iter().any(|n| n.session.ttl_security)
        || config.groups.iter().any(|g| g.session.ttl_security);
    if !wanted {
        return;
    }
    for (fd, v6) in listeners {
        let s = socket2::SockRef::from(fd);
        if *v6 {
            let _ = s.set_unicast_hops_v6(255);
        }
        let _ = s.set_ttl_v4(255);
    }
}

/// TCP-AO keys the listeners hold, as for TCP-MD5.
type AoKeys =
    std::collections::BTreeMap<(std::net::IpAddr, Option<u8>), Arc<crate::southbound::sys::AoKey>>;

fn ao_keys(config: &Config) -> AoKeys {
    listener_keys(
        config,
        |n| n.session.tcp_ao.as_ref(),
        |g| g.session.tcp_ao.as_ref(),
    )
}

/// Adds `new`'s TCP-AO keys that are not on the listeners yet; `applied`
/// is what they hold, kept up to date even when a key fails (a later
/// reload tries it again). A key taken out of the config stays on the
/// listeners until the restart, and a changed one needs a restart.
fn apply_ao(
    listeners: &[(std::os::fd::OwnedFd, bool)],
    applied: &mut AoKeys,
    new: &AoKeys,
) -> Result<(), KeyError> {
    for ((addr, len), key) in new {
        if applied.get(&(*addr, *len)).is_some_and(|k| k != key) {
            return Err(KeyError::AoChanged { addr: *addr });
        }
    }
    for ((addr, len), key) in new {
        if applied.get(&(*addr, *len)) == Some(key) {
            continue;
        }
        for (fd, v6) in listeners {
            if !(*v6 || addr.is_ipv4()) {
                continue;
            }
            crate::southbound::sys::add_tcp_ao(fd, *v6, *addr, *len, key, true).map_err(
                |source| KeyError::Ao {
                    addr: *addr,
                    len: *len,
                    source,
                },
            )?;
        }
        applied.insert((*addr, *len), key.clone());
    }
    Ok(())
}

/// Brings the listeners' TCP-MD5 keys to `new`; `applied` is what they
/// hold, kept up to date even when a key fails part-way (a later reload
/// tries it again).
fn apply_md5(
    listeners: &[(std::os::fd::OwnedFd, bool)],
    applied: &mut Md5Keys,
    new: &Md5Keys,
) -> Result<(), KeyError> {
    let gone: Vec<(std::net::IpAddr, Option<u8>)> = applied
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    for (addr, len) in gone {
        for (fd, v6) in listeners {
            if *v6 || addr.is_ipv4() {
                let _ = crate::southbound::sys::set_tcp_md5(fd, *v6, addr, len, b"");
            }
        }
        applied.remove(&(addr, len));
    }
    for ((addr, len), key) in new {
        if applied.get(&(*addr, *len)) == Some(key) {
            continue;
        }
        for (fd, v6) in listeners {
            if !(*v6 || addr.is_ipv4()) {
                continue;
            }
            crate::southbound::sys::set_tcp_md5(fd, *v6, *addr, *len, key).map_err(|source| {
                KeyError::Md5 {
                    addr: *addr,
                    len: *len,
                    source,
                }
            })?;
        }
        applied.insert((*addr, *len), key.clone());
    }
    Ok(())
}

/// The static neighbors' tasks, in the order of the config's neighbors.
type Peers = Arc<std::sync::RwLock<Vec<PeerHandle>>>;

fn snapshot(peers: &Peers) -> Vec<PeerHandle> {
    peers.read().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn stop_peer(h: &PeerHandle, subcode: u8) {
    let (tx, rx) = oneshot::channel();
    let n = Notification::new(bgp::notification::code::CEASE, subcode);
    if h.tx.send(PeerMsg::Shutdown(n, tx)).await.is_ok() {
        let _ = rx.await;
    }
}

/// Applies `file` as a diff to the running `current`: new neighbors
/// start, removed ones stop (Cease, Peer De-configured), changed ones
/// restart (Cease, Other Configuration Change) if what the session is
/// changed, else get new timers for their next session; `announce`,
/// policies, VM groups and the inventory apply without resetting a
/// session. What needs a restart keeps its running value
/// (`reload::effective`). The VM side may still refuse the file
/// (conflicts with registrations): then nothing changes.
async fn reload(
    current: &mut Config,
    new: Config,
    peers: &Peers,
    local: &Arc<DaemonHandles>,
    role: Option<&mpsc::Sender<RoleMsg>>,
    services: &mut crate::role::health::Services,
    fib_running: bool,
) -> Result<(), ReloadError> {
    for w in new.warnings() {
        warn!("reload: {w}");
    }
    let new = crate::reload::effective(current, new, fib_running);
    // The VM side first: it is the part that can still refuse the file.
    if let Some(role) = role {
        let (tx, rx) = oneshot::channel();
        role.send(RoleMsg::Reload {
            groups: new.groups.clone(),
            vms: new.vms.clone(),
            protected: new.neighbors.iter().map(|n| n.address).collect(),
            registration_grace: new.registration_grace,
            done: tx,
        })
        .await
        .map_err(|_| ReloadError::RoleGone)?;
        rx.await.map_err(|_| ReloadError::RoleGone)??;
    }
    local.gr_helper_max.store(
        new.graceful_restart.helper_max_time,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Services before `announce`: a prefix moving from one to the other
    // is withdrawn by the old service first, then announced.
    if new.services != current.services {
        services.apply(&new.services);
    }
    let (old, now): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) = (
        current.announce.iter().collect(),
        new.announce.iter().collect(),
    );
    let (k0, k1) = (&current.kernel, &new.kernel);
    if k0 != k1 {
        // The Loc-RIB reinstalls, removes or reshapes our routes; the FIB
        // writer removes each one's route under the old protocol and
        // metric right after its new one is in.
        let rekey = (k0.protocol != k1.protocol || k0.metric != k1.metric)
            .then_some((k1.protocol, k1.metric));
        let _ = local.rib.send(crate::routing::rib::RibMsg::Kernel {
            install: k1.install,
            multipath: k1.multipath,
            rekey,
        });
        crate::southbound::fib::set_scan(k1.protocol, k1.scan_interval);
    }
    let _ = local.rib.send(crate::routing::rib::RibMsg::Local {
        announce: now.difference(&old).map(|p| **p).collect(),
        withdraw: old.difference(&now).map(|p| **p).collect(),
    });
    let old = snapshot(peers);
    let restart_time = new.graceful_restart.restart_time;
    let mut next = Vec::new();
    for n in &new.neighbors {
        let cfg = peer::PeerConfig::from_neighbor(n, restart_time);
        let before = current
            .neighbors
            .iter()
            .zip(&old)
            .find(|(o, _)| o.name == n.name);
        match before {
            None => {
                info!(neighbor = %n.name, address = %n.address, "reload: new neighbor");
                next.push(peer::spawn(cfg, local.clone()));
            }
            Some((o, h)) if crate::reload::session_changed(o, n) => {
                info!(neighbor = %n.name, "reload: neighbor changed, session restarts");
                stop_peer(h, cease::OTHER_CONFIGURATION_CHANGE).await;
                next.push(peer::spawn(cfg, local.clone()));
            }
            Some((o, h)) => {
                if o.session.hold_time != n.session.hold_time
                    || o.session.connect_retry != n.session.connect_retry
                    || o.session.bfd != n.session.bfd
                    || o.session.limits != n.session.limits
                    || o.session.import_rules != n.session.import_rules
                    || current.graceful_restart.restart_time != restart_time
                {
                    let _ = h.tx.send(PeerMsg::NextSession(Box::new(cfg))).await;
                }
                let _ = h.tx.send(PeerMsg::SetExport(n.export.clone())).await;
                next.push(h.clone());
            }
        }
    }
    for (o, h) in current.neighbors.iter().zip(&old) {
        if !new.neighbors.iter().any(|n| n.name == o.name) {
            info!(neighbor = %o.name, "reload: neighbor removed");
            stop_peer(h, cease::PEER_DECONFIGURED).await;
        }
    }
    *peers.write().unwrap_or_else(|e| e.into_inner()) = next;
    *current = new;
    Ok(())
}

/// Binds a BGP listener. An IPv6 wildcard also takes IPv4 (mapped
/// addresses); on a host without IPv6 it falls back to IPv4.
fn bind_bgp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std_listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            error!(error = %e, "IPv6 listener failed; listening on IPv4 only");
            std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port())))?
        }
        Err(e) => return Err(e),
    };
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

/// Static peers and the VM sessions of the moment.
async fn all_peers(peers: &[PeerHandle], role: Option<&mpsc::Sender<RoleMsg>>) -> Vec<PeerHandle> {
    let mut all = peers.to_vec();
    if let Some(role) = role {
        let (tx, rx) = oneshot::channel();
        if role.send(RoleMsg::Peers(tx)).await.is_ok() {
            all.extend(rx.await.unwrap_or_default());
        }
    }
    all
}

/// What `show status` tells about the daemon itself.
struct About {
    local: Arc<DaemonHandles>,
    config: String,
    started: std::time::Instant,
}

async fn bfd_sessions(
    bfd: Option<mpsc::UnboundedSender<crate::southbound::bfd::BfdMsg>>,
) -> Vec<crate::southbound::bfd::BfdStatus> {
    let Some(b) = bfd else { return Vec::new() };
    let (tx, rx) = oneshot::channel();
    let _ = b.send(crate::southbound::bfd::BfdMsg::Show(tx));
    rx.await.unwrap_or_default()
}

async fn status(
    about: &About,
    peers: &[PeerHandle],
    role: Option<&mpsc::Sender<RoleMsg>>,
    rib: &mpsc::UnboundedSender<crate::routing::rib::RibMsg>,
    bfd: Option<mpsc::UnboundedSender<crate::southbound::bfd::BfdMsg>>,
) -> control::Status {
    let all = peer_statuses(peers, role).await;
    let (vms, statics): (Vec<_>, Vec<_>) = all.iter().partition(|p| p.interface.is_some());
    let up = |v: &[&PeerStatus]| v.iter().filter(|p| p.state == "Established").count();
    let (tx, rx) = oneshot::channel();
    let stats = match rib.send(crate::routing::rib::RibMsg::Stats(tx)) {
        Ok(()) => rx.await.unwrap_or_default(),
        Err(_) => Default::default(),
    };
    let bfd = bfd_sessions(bfd).await;
    control::Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        router_id: about.local.router_id.to_string(),
        local_as: about.local.local_as,
        config: about.config.clone(),
        uptime_secs: about.started.elapsed().as_secs(),
        neighbors_established: up(&statics),
        neighbors: statics.len(),
        vm_sessions_established: up(&vms),
        vm_sessions: vms.len(),
        rib_prefixes: stats.prefixes,
        rib_paths: stats.paths,
        kernel_routes: stats.installed,
        bfd_sessions_up: bfd.iter().filter(|b| b.state == "Up").count(),
        bfd_sessions: bfd.len(),
        restarting: about
            .local
            .restarting
            .load(std::sync::atomic::Ordering::Relaxed),
        tasks: Task::ALL
            .iter()
            .map(|&t| (t.name().to_string(), tasks::live(t)))
            .filter(|&(_, n)| n > 0)
            .collect(),
    }
}

/// The status of every session, static and VM.
async fn peer_statuses(
    peers: &[PeerHandle],
    role: Option<&mpsc::Sender<RoleMsg>>,
) -> Vec<PeerStatus> {
    let mut out: Vec<PeerStatus> = Vec::new();
    for p in all_peers(peers, role).await {
        let (tx, rx) = oneshot::channel();
        if p.tx.send(PeerMsg::Status(tx)).await.is_ok() {
            if let Ok(s) = rx.await {
                out.push(s);
            }
        }
    }
    out
}

/// `tapir neighbor OP TARGET`: done on every session `target` names.
async fn neighbor(
    peers: &[PeerHandle],
    role: Option<&mpsc::Sender<RoleMsg>>,
    op: control::NeighborOp,
    target: String,
) -> Response {
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for p in all_peers(peers, role).await {
        let (reply, rx) = oneshot::channel();
        let msg = PeerMsg::Admin {
            op,
            target: target.clone(),
            reply,
        };
        if p.tx.send(msg).await.is_err() {
            continue;
        }
        match rx.await {
            Ok(Some(Ok(m))) => done.push(m),
            Ok(Some(Err(e))) => failed.push(e.to_string()),
            _ => {}
        }
    }
    if done.is_empty() && failed.is_empty() {
        return Response::Error {
            message: format!(
                "no neighbor or VM session is named {target:?} (see `tapir show peers --all`)"
            ),
        };
    }
    // Something done is success (a VM's probes cannot be refreshed while
    // its session is); what was not is said too.
    let ok = !done.is_empty();
    done.extend(failed);
    let message = done.join("\n");
    match ok {
        true => Response::Done { message },
        false => Response::Error { message },
    }
}

/// `show routes --export NEIGHBOR [PREFIX]` and `--why PREFIX`: what goes
/// out after policy, as the Loc-RIB makes it for each neighbor.
async fn show_export(
    peers: &[PeerHandle],
    role: Option<&mpsc::Sender<RoleMsg>>,
    query: control::RouteQuery,
) -> Response {
    let prefix = match query.export_prefix() {
        Ok(p) => p,
        Err(e) => {
            return Response::Error {
                message: e.to_string(),
            }
        }
    };
    let mut asks = Vec::new();
    for p in all_peers(peers, role).await {
        let (reply, rx) = oneshot::channel();
        let msg = PeerMsg::ShowExport {
            target: query.export.clone(),
            prefix,
            reply,
        };
        if p.tx.send(msg).await.is_ok() {
            if let Ok(Some(ask)) = rx.await {
                asks.push(ask);
            }
        }
    }
    if asks.is_empty() {
        let message = match &query.export {
            Some(n) => format!("no neighbor named {n:?} gets routes from tapir (only [[neighbor]]s with an export policy do)"),
            None => "no neighbor gets routes from tapir".into(),
        };
        return Response::Error { message };
    }
    let (mut routes, mut verdicts) = (Vec::new(), Vec::new());
    for ask in asks {
        let view = ask.view.await.ok().flatten().unwrap_or_default();
        // What the session itself keeps back: a family it did not
        // negotiate, an IPv6 route without a global next hop.
        let held = |p: &bgp::Prefix| -> Option<&str> {
            let nh = match p {
                bgp::Prefix::V4(..) => &ask.next_hop_v4,
                bgp::Prefix::V6(..) => &ask.next_hop_v6,
            };
            if ask.families.is_empty() {
                Some("not sent: the session is not Established")
            } else if !ask.families.contains(&p.afi()) {
                Some("not sent: the family is not negotiated with the peer")
            } else if nh.is_none() {
                Some("not sent: no next hop of ours for its family on this session (an IPv6 route over link-local needs a global address)")
            } else {
                None
            }
        };
        if let (Some(p), true) = (prefix, query.why.is_some()) {
            let (sent, reason) = match held(&p) {
                Some(why) => (false, why.to_string()),
                None => (
                    view.routes.iter().any(|(q, _)| *q == p),
                    view.why.clone().unwrap_or_default(),
                ),
            };
            verdicts.push(control::ExportVerdict {
                neighbor: ask.name.clone(),
                prefix: p.to_string(),
                sent,
                reason,
            });
            continue;
        }
        for (p, a) in &view.routes {
            if held(p).is_some() {
                continue;
            }
            let nh = match p {
                bgp::Prefix::V4(..) => &ask.next_hop_v4,
                bgp::Prefix::V6(..) => &ask.next_hop_v6,
            };
            routes.push(RouteEntry::new(
                p,
                &ask.name,
                nh.clone().unwrap_or_default(),
                a,
            ));
        }
    }
    if query.why.is_some() {
        return Response::Why { verdicts };
    }
    routes.sort_by(|a, b| (&a.prefix, &a.peer).cmp(&(&b.prefix, &b.peer)));
    Response::Routes { routes }
}

/// `show routes`: every session's routes, marked with what the Loc-RIB
/// chose and whether that is in the kernel.
async fn show_routes(
    peers: &[PeerHandle],
    role: Option<&mpsc::Sender<RoleMsg>>,
    rib: &mpsc::UnboundedSender<crate::routing::rib::RibMsg>,
    query: control::RouteQuery,
) -> Response {
    // A bad query costs nothing: refused before any session is asked.
    if let Err(e) = query.check() {
        return Response::Error {
            message: e.to_string(),
        };
    }
    if query.export.is_some() || query.why.is_some() {
        return show_export(peers, role, query).await;
    }
    let mut out: Vec<RouteEntry> = Vec::new();
    for p in all_peers(peers, role).await {
        let (tx, rx) = oneshot::channel();
        if p.tx.send(PeerMsg::Routes(tx)).await.is_ok() {
            if let Ok(r) = rx.await {
                out.extend(r);
            }
        }
    }
    out.sort_by(|a, b| (&a.prefix, &a.peer).cmp(&(&b.prefix, &b.peer)));
    // Which of them the Loc-RIB chose, and whether that is in the kernel.
    let (tx, rx) = oneshot::channel();
    if rib.send(crate::routing::rib::RibMsg::Show(tx)).is_ok() {
        let best: std::collections::HashMap<String, crate::routing::rib::LocRibEntry> = rx
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.prefix.clone(), e))
            .collect();
        for r in &mut out {
            if let Some(b) = best.get(&r.prefix) {
                r.best = r.accepted
                    && b.from == r.peer
                    && b.next_hop.as_deref() == Some(r.next_hop.as_str());
                r.installed = r.best && b.installed;
                // Asked of the kernel, but refused: not there.
                let refused = || crate::southbound::fib::refused(&r.prefix.parse().ok()?);
                if r.installed {
                    if let Some(e) = refused() {
                        r.installed = false;
                        r.kernel_error = Some(e);
                    }
                }
            }
        }
    }
    let routes = match query.select(out) {
        Ok(r) => r,
        Err(e) => {
            return Response::Error {
                message: e.to_string(),
            }
        }
    };
    if query.count {
        return Response::RouteCount {
            count: control::RouteCount::of(&routes),
        };
    }
    Response::Routes { routes }
}

/// `tapir drain` and `undrain`.
async fn drain(
    rib: &mpsc::UnboundedSender<crate::routing::rib::RibMsg>,
    vm: Option<String>,
    withdraw: bool,
    undrain: bool,
) -> Response {
    let state = match (undrain, withdraw) {
        (true, _) => None,
        (false, true) => Some(crate::routing::rib::DrainState::Withdrawn),
        (false, false) => Some(crate::routing::rib::DrainState::Shutdown),
    };
    let (tx, rx) = oneshot::channel();
    if rib
        .send(crate::routing::rib::RibMsg::Drain {
            vm: vm.clone(),
            state,
            reply: tx,
        })
        .is_err()
    {
        return rib_gone();
    }
    match rx.await {
        Ok(Ok(n)) => Response::Done {
            message: format!(
                "{} {n} VM(s)",
                match state {
                    None => "undrained",
                    Some(crate::routing::rib::DrainState::Shutdown) =>
                        "draining (GRACEFUL_SHUTDOWN)",
                    Some(crate::routing::rib::DrainState::Withdrawn) => "withdrew",
                }
            ),
        },
        Ok(Err(e)) => Response::Error {
            message: e.to_string(),
        },
        Err(_) => rib_gone(),
    }
}

/// A request for the main loop while it stops.
fn shutting_down() -> Response {
    Response::Error {
        message: "shutting down".into(),
    }
}

/// A request for the role when there is none: no VM groups.
fn no_role() -> Response {
    Response::Error {
        message: "no VM groups are configured ([[group]])".into(),
    }
}

fn rib_gone() -> Response {
    Response::Error {
        message: "the RIB is not running".into(),
    }
}

/// `show rib`.
async fn show_rib(rib: &mpsc::UnboundedSender<crate::routing::rib::RibMsg>) -> Response {
    let (tx, rx) = oneshot::channel();
    if rib.send(crate::routing::rib::RibMsg::Show(tx)).is_err() {
        return rib_gone();
    }
    Response::Rib {
        rib: rx.await.unwrap_or_default(),
    }
}

/// `show vms`: the role's VMs with the Loc-RIB's drain state of each
/// and the BFD state of each session.
async fn show_vms(
    role: Option<&mpsc::Sender<RoleMsg>>,
    rib: &mpsc::UnboundedSender<crate::routing::rib::RibMsg>,
    bfd: Option<mpsc::UnboundedSender<crate::southbound::bfd::BfdMsg>>,
) -> Response {
    let Some(role) = role else { return no_role() };
    let (tx, rx) = oneshot::channel();
    if role.send(RoleMsg::ShowVms(tx)).await.is_err() {
        return no_role();
    }
    let mut vms = rx.await.unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    if rib
        .send(crate::routing::rib::RibMsg::DrainStates(tx))
        .is_ok()
    {
        // A Loc-RIB that does not answer within a second leaves the
        // drain column empty rather than holding the answer (or a scrape).
        let drains = tokio::time::timeout(std::time::Duration::from_secs(1), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for v in &mut vms {
            let key = v.name.clone().or_else(|| v.interface.clone());
            v.drain = key.and_then(|k| drains.get(&k).copied());
        }
    }
    let bfd = bfd_sessions(bfd).await;
    for v in &mut vms {
        for s in &mut v.sessions {
            let bare = s.address.split('%').next().unwrap_or(&s.address);
            s.bfd = bfd
                .iter()
                .find(|b| b.peer == bare && b.interface == v.interface)
                .map(|b| b.state.clone());
        }
    }
    Response::Vms { vms }
}

/// `tapir vm add` and `vm remove`: the role answers, `done` says what
/// happened when it agreed.
/// `tapir vm sync`: every entry checked as `vm add` would, then the
/// role applies (or only plans) the whole set.
async fn vm_sync(
    role: Option<&mpsc::Sender<RoleMsg>>,
    regs: Vec<crate::northbound::inventory::Registration>,
    dry_run: bool,
) -> Response {
    let Some(role) = role else { return no_role() };
    let mut vms = Vec::with_capacity(regs.len());
    for r in &regs {
        match r.to_entry() {
            Ok(e) => vms.push(e),
            Err(e) => {
                return Response::Error {
                    message: e.to_string(),
                }
            }
        }
    }
    let (tx, rx) = oneshot::channel();
    let msg = RoleMsg::VmSync {
        vms,
        dry_run,
        done: tx,
    };
    if role.send(msg).await.is_err() {
        return no_role();
    }
    match rx.await {
        Ok(Ok(plan)) => Response::Done {
            message: match dry_run {
                true => format!("{plan} (dry run: nothing changed)"),
                false => plan,
            },
        },
        Ok(Err(e)) => Response::Error {
            message: e.to_string(),
        },
        Err(_) => no_role(),
    }
}

async fn vm_request(
    role: Option<&mpsc::Sender<RoleMsg>>,
    msg: impl FnOnce(oneshot::Sender<Result<(), crate::role::RoleError>>) -> RoleMsg,
    done: String,
) -> Response {
    let Some(role) = role else { return no_role() };
    let (tx, rx) = oneshot::channel();
    if role.send(msg(tx)).await.is_err() {
        return no_role();
    }
    match rx.await {
        Ok(Ok(())) => Response::Done { message: done },
        Ok(Err(e)) => Response::Error {
            message: e.to_string(),
        },
        Err(_) => no_role(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graceful_marker_holds_only_for_the_same_kernel_protocol_and_metric() {
        let dir = std::env::temp_dir().join(format!("tapir-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "router-id = \"10.0.0.1\"\nlocal-as = 64612\nstate-dir = \"{}\"\n",
            dir.display()
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        let marker = dir.join("graceful-restart");
        for (written, restarting) in [
            (marker_text(&config), true),
            // An older tapir's marker, or another [kernel]: cold.
            (String::new(), false),
            ("186 20\n".to_string(), false),
        ] {
            std::fs::write(&marker, &written).unwrap();
            assert_eq!(
                graceful_restart_marker(&config),
                (Some(marker.clone()), restarting),
                "{written:?}"
            );
            // Consumed either way.
            assert!(!marker.exists());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

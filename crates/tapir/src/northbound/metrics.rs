//! The Prometheus endpoint (`[metrics] listen`, off by default). Each
//! scrape asks the running tasks for their state and answers with the
//! Prometheus text format (0.0.4); nothing is kept between scrapes.
//! docs/metrics.md lists the metrics.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::northbound::control::PeerStatus;
use crate::routing::rib::RibStats;
use crate::southbound::bfd::BfdStatus;
use crate::tasks::{self, Task};

type Labels = Vec<(String, String)>;

/// What one scrape reports.
pub struct Snapshot {
    pub peers: Vec<PeerStatus>,
    pub bfd: Vec<BfdStatus>,
    pub rib: Option<RibStats>,
    pub services: Vec<crate::role::health::ServiceStatus>,
    /// The role's VMs, with their drain state.
    pub vms: Vec<crate::northbound::control::VmStatus>,
    pub reloaded: crate::reload::Outcome,
    /// Route changes sent to the Loc-RIB and not applied yet.
    pub rib_backlog: usize,
    /// The BMP export, if `[[bmp]]` is set.
    pub bmp: Option<std::sync::Arc<crate::northbound::bmp::Counters>>,
}

/// Scrapes answered at once, at most; one more connection is closed at
/// once (a scraper retries), so that a flood of them costs the daemon
/// nothing but the accept.
const SCRAPES_AT_ONCE: usize = 2;

/// Serves `GET /metrics` on `listener`; `gather` takes a snapshot.
pub fn serve<F, Fut>(listener: TcpListener, gather: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Snapshot> + Send,
{
    tasks::spawn(Task::Metrics, async move {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(SCRAPES_AT_ONCE));
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(%from, "metrics: {SCRAPES_AT_ONCE} scrapes already being answered; closed");
                continue;
            };
            let gather = gather.clone();
            tasks::spawn(Task::MetricsClient, async move {
                if let Err(e) = answer(stream, gather).await {
                    debug!(%from, error = %e, "metrics: client dropped");
                }
                drop(slot);
            });
        }
    });
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

async fn answer<F, Fut>(mut stream: TcpStream, gather: F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Snapshot>,
{
    // The request head, at most 8 KiB and 5 s: a scraper, not a browser.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        let text = encode(&gather().await);
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn gauge(reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, f.clone()),
        None => reg.register(name, help, f.clone()),
    }
    f
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const STATES: [&str; 6] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
];

/// The text of one scrape.
pub fn encode(s: &Snapshot) -> String {
    let mut reg = Registry::with_prefix("tapir");
    let info = gauge(&mut reg, "build_info", "tapir's version", None);
    info.get_or_create(&l(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    encode_sessions(&mut reg, &s.peers);
    encode_vms(&mut reg, &s.vms);
    encode_bfd(&mut reg, &s.bfd);
    encode_rib_and_kernel(&mut reg, s.rib, s.rib_backlog);
    encode_services(&mut reg, &s.services);
    encode_limits(&mut reg);
    encode_config(&mut reg, &s.reloaded);
    if let Some(b) = &s.bmp {
        encode_bmp(&mut reg, b);
    }
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).is_err() {
        warn!("metrics: encoding failed");
    }
    out.push_str(&process_metrics());
    out
}

/// One series per session and state, message type and refusal reason.
fn encode_sessions(reg: &mut Registry, peers: &[crate::northbound::control::PeerStatus]) {
    // BGP sessions.
    let state = gauge(
        reg,
        "bgp_session_state",
        "1 for the session's current RFC 4271 state, 0 for the others",
        None,
    );
    let up = gauge(
        reg,
        "bgp_session_established",
        "1 if the session is Established",
        None,
    );
    let uptime = gauge(
        reg,
        "bgp_session_state_duration",
        "Time in the current state",
        Some(Unit::Seconds),
    );
    let flaps = counter(
        reg,
        "bgp_session_flaps",
        "Times the session left Established",
    );
    let msg_in = counter(
        reg,
        "bgp_messages_received",
        "BGP messages received, by type",
    );
    let msg_out = counter(reg, "bgp_messages_sent", "BGP messages sent, by type");
    let pfx_in = gauge(
        reg,
        "bgp_prefixes_received",
        "Prefixes in the session's Adj-RIB-In",
        None,
    );
    let pfx_ok = gauge(
        reg,
        "bgp_prefixes_accepted",
        "Received prefixes that passed authorisation and import",
        None,
    );
    let pfx_out = gauge(
        reg,
        "bgp_prefixes_exported",
        "Prefixes advertised to the peer",
        None,
    );
    let refused = counter(
        reg,
        "bgp_prefixes_rejected",
        "Refused announcements, by reason",
    );
    let probes = gauge(
        reg,
        "vm_probes",
        "VM addresses where nothing answers BGP yet, tried with back-off (not sessions)",
        None,
    );
    probes
        .get_or_create(&Vec::new())
        .set(peers.iter().filter(|p| p.probing).count() as i64);
    // A probe is not a session: it has no series of its own. No
    // interface label: a VM's tap may change (a restart, a migration and
    // back) and its series must not; `tapir_vm_info` names the tap.
    for p in peers.iter().filter(|p| !p.probing) {
        let address = zoned(&p.address, p.interface.as_deref());
        let base = l(&[("peer", &p.name), ("address", &address), ("kind", &p.kind)]);
        for st in STATES {
            let mut labels = base.clone();
            labels.push(("state".into(), st.into()));
            state.get_or_create(&labels).set(i64::from(p.state == st));
        }
        up.get_or_create(&base)
            .set(i64::from(p.state == "Established"));
        uptime.get_or_create(&base).set(p.since_secs as i64);
        flaps.get_or_create(&base).inc_by(p.flaps);
        for (t, n) in &p.messages_received {
            let mut labels = base.clone();
            labels.push(("type".into(), t.clone()));
            msg_in.get_or_create(&labels).inc_by(*n);
        }
        for (t, n) in &p.messages_sent {
            let mut labels = base.clone();
            labels.push(("type".into(), t.clone()));
            msg_out.get_or_create(&labels).inc_by(*n);
        }
        pfx_in.get_or_create(&base).set(p.routes_received as i64);
        pfx_ok.get_or_create(&base).set(p.routes_accepted as i64);
        pfx_out.get_or_create(&base).set(p.routes_exported as i64);
        for (reason, n) in &p.rejections {
            let mut labels = base.clone();
            labels.push(("reason".into(), reason.clone()));
            refused.get_or_create(&labels).inc_by(*n);
        }
    }
}

/// An address as a label: a link-local one with its tap (`fe80::1%tap12`),
/// which alone tells two VMs' sessions apart when their link-local
/// addresses are the same.
fn zoned(address: &str, interface: Option<&str>) -> String {
    match interface {
        Some(i) if address.starts_with("fe80:") && !address.contains('%') => {
            format!("{address}%{i}")
        }
        _ => address.to_string(),
    }
}

/// BFD sessions: up, flaps.
fn encode_bfd(reg: &mut Registry, bfd: &[crate::southbound::bfd::BfdStatus]) {
    // BFD.
    let bfd_up = gauge(reg, "bfd_session_up", "1 if the BFD session is Up", None);
    let bfd_flaps = counter(
        reg,
        "bfd_session_flaps",
        "Times the BFD session went from Up to Down",
    );
    for b in bfd {
        let address = zoned(&b.peer, b.interface.as_deref());
        let labels = l(&[("peer", &b.name), ("address", &address)]);
        bfd_up
            .get_or_create(&labels)
            .set(i64::from(b.state == "Up"));
        bfd_flaps.get_or_create(&labels).inc_by(b.flaps);
    }
    let detected = counter(
        reg,
        "bfd_detected_failures",
        "Failures BFD detected (Up to Down, the peer not AdminDown), each ending its BGP session",
    );
    detected
        .get_or_create(&vec![])
        .inc_by(crate::southbound::bfd::detected());
}

/// The Loc-RIB's sizes and the kernel writer's counters.
fn encode_rib_and_kernel(
    reg: &mut Registry,
    rib: Option<crate::routing::rib::RibStats>,
    backlog: usize,
) {
    let queued = gauge(
        reg,
        "rib_backlog",
        "Route changes sent to the Loc-RIB and not applied yet",
        None,
    );
    queued.get_or_create(&vec![]).set(backlog as i64);
    // The Loc-RIB and the kernel.
    if let Some(r) = rib {
        let rib = gauge(reg, "rib_prefixes", "Prefixes in the Loc-RIB", None);
        rib.get_or_create(&vec![]).set(r.prefixes as i64);
        let paths = gauge(reg, "rib_paths", "Paths in the Loc-RIB", None);
        paths.get_or_create(&vec![]).set(r.paths as i64);
        let attrs = gauge(
            reg,
            "rib_attribute_sets",
            "Distinct path attribute sets held",
            None,
        );
        attrs.get_or_create(&vec![]).set(r.attribute_sets as i64);
        let fib = gauge(
            reg,
            "kernel_routes",
            "Prefixes tapir has installed in the kernel",
            None,
        );
        fib.get_or_create(&vec![]).set(r.installed as i64);
        let repairs = counter(
            reg,
            "kernel_scan_repairs",
            "What kernel scans repaired: our routes installed again, foreign routes of our protocol removed",
        );
        repairs
            .get_or_create(&l(&[("action", "reinstalled")]))
            .inc_by(r.kernel_reinstalled);
        repairs
            .get_or_create(&l(&[("action", "removed")]))
            .inc_by(r.kernel_removed);
    }
    let k = &crate::southbound::kernel::KERNEL_STATS;
    let ops = counter(
        reg,
        "kernel_route_operations",
        "Route installs and removals sent to the kernel",
    );
    use std::sync::atomic::Ordering::Relaxed;
    ops.get_or_create(&l(&[("operation", "install")]))
        .inc_by(k.installs.load(Relaxed));
    ops.get_or_create(&l(&[("operation", "remove")]))
        .inc_by(k.removals.load(Relaxed));
    let errors = counter(
        reg,
        "kernel_route_errors",
        "Route installs the kernel refused, by errno",
    );
    for (reason, n) in crate::southbound::fib::by_reason() {
        errors.get_or_create(&l(&[("reason", reason)])).inc_by(n);
    }
    let refused = gauge(
        reg,
        "kernel_routes_refused",
        "Prefixes whose last install the kernel refused (tried again at each scan)",
        None,
    );
    refused
        .get_or_create(&vec![])
        .set(crate::southbound::fib::refused_now() as i64);
    let overruns = counter(
        reg,
        "kernel_netlink_overruns",
        "Times the kernel notification socket overran and notifications were lost",
    );
    overruns
        .get_or_create(&vec![])
        .inc_by(k.overruns.load(Relaxed));
    let resync = counter(
        reg,
        "kernel_resync_changes",
        "Link and route changes a resync found that notifications had missed",
    );
    resync
        .get_or_create(&vec![])
        .inc_by(k.resync_changes.load(Relaxed));
}

/// The hypervisor's VMs: one info series each (its tap and group, which
/// the session series leave out), and whether it is drained.
fn encode_vms(reg: &mut Registry, vms: &[crate::northbound::control::VmStatus]) {
    let info = gauge(
        reg,
        "vm_info",
        "1 for each VM, with its tap and group",
        None,
    );
    let drained = gauge(
        reg,
        "vm_drained",
        "1 while the VM is drained (tapir drain), 0 otherwise",
        None,
    );
    for v in vms {
        let Some(name) = v.name.as_ref().or(v.interface.as_ref()) else {
            continue;
        };
        info.get_or_create(&l(&[
            ("vm", name),
            ("interface", v.interface.as_deref().unwrap_or("")),
            ("group", v.group.as_deref().unwrap_or("")),
        ]))
        .set(1);
        drained
            .get_or_create(&l(&[("vm", name)]))
            .set(i64::from(v.drain.is_some()));
    }
}

/// How the last reload went.
fn encode_config(reg: &mut Registry, r: &crate::reload::Outcome) {
    let ok = gauge(
        reg,
        "config_last_reload_successful",
        "1 if the last reload was applied (or none was asked), 0 if it was refused",
        None,
    );
    ok.get_or_create(&vec![]).set(i64::from(r.ok));
    let at = gauge(
        reg,
        "config_last_reload_success_timestamp",
        "When the config was last applied (start or reload), Unix time",
        Some(Unit::Seconds),
    );
    let secs = r
        .applied_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    at.get_or_create(&vec![]).set(secs as i64);
    let pending = gauge(
        reg,
        "config_pending_restart",
        "Changes of the applied config that wait for a restart of tapir",
        None,
    );
    pending.get_or_create(&vec![]).set(r.pending_restart as i64);
}

/// The BMP export: each collector's connection, what it was sent.
fn encode_bmp(reg: &mut Registry, b: &crate::northbound::bmp::Counters) {
    use std::sync::atomic::Ordering::Relaxed;
    let up = gauge(
        reg,
        "bmp_collector_up",
        "1 while the BMP collector is connected",
        None,
    );
    let connects = counter(
        reg,
        "bmp_collector_connects",
        "Connections made to the BMP collector (each starts with a whole dump)",
    );
    let sent = counter(
        reg,
        "bmp_messages_sent",
        "BMP messages written to the collector",
    );
    for c in &b.collectors {
        let labels = l(&[("collector", &c.address)]);
        up.get_or_create(&labels).set(i64::from(c.up.load(Relaxed)));
        connects
            .get_or_create(&labels)
            .inc_by(c.connects.load(Relaxed));
        sent.get_or_create(&labels).inc_by(c.messages.load(Relaxed));
    }
    let dropped = counter(
        reg,
        "bmp_messages_dropped",
        "BMP messages dropped because the export queue was full (every collector then starts over)",
    );
    dropped
        .get_or_create(&vec![])
        .inc_by(b.dropped.load(Relaxed));
}

/// Health-checked services (guest role).
fn encode_services(reg: &mut Registry, services: &[crate::role::health::ServiceStatus]) {
    if !services.is_empty() {
        let healthy = gauge(
            reg,
            "service_healthy",
            "1 while a health-checked service is announced (guest role)",
            None,
        );
        let transitions = counter(
            reg,
            "service_transitions",
            "Times a health-checked service was announced or withdrawn",
        );
        for sv in services {
            let labels = l(&[("service", &sv.name)]);
            healthy.get_or_create(&labels).set(sv.healthy as i64);
            transitions.get_or_create(&labels).inc_by(sv.transitions);
        }
    }
}

/// Limits against broken or hostile peers, by limit.
fn encode_limits(reg: &mut Registry) {
    let limits = counter(
        reg,
        "limit_hits",
        "Times a limit against a broken or hostile peer was hit, by limit",
    );
    for lim in crate::limits::Limit::ALL {
        limits
            .get_or_create(&l(&[("limit", lim.name())]))
            .inc_by(crate::limits::hits(lim));
    }
}

/// The standard `process_*` metrics, from /proc/self.
fn process_metrics() -> String {
    let mut out = String::new();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    // utime (14), stime (15) and starttime (22), in clock ticks: USER_HZ,
    // which Linux fixes at 100 for what it shows in /proc.
    let ticks = 100.0;
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        out.push_str(&format!(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n",
            (u + s) / ticks
        ));
    }
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
        });
    if let Some(kib) = rss_kib {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            kib * 1024
        ));
    }
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ").map(|v| v.trim().parse::<f64>()))
        })
        .and_then(Result::ok);
    if let (Some(b), Some(start)) = (boot, field(22)) {
        out.push_str(&format!(
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
             # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n",
            b + start / ticks
        ));
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        out.push_str(&format!(
            "# HELP process_open_fds Number of open file descriptors.\n\
             # TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            d.count()
        ));
    }
    out
}

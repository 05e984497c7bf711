//! B1 and B2 with real live migration (issue 23; docs/benchmarks.md,
//! "Live migration with QEMU"): a QEMU guest (scripts/qemu-guest: Debian's
//! kernel, BIRD with the reference VM config) behind a tap that QEMU
//! creates in hv1's namespace, the project's Ganeti ifup hook run as
//! Ganeti runs it (QEMU's `script=`), migrated to a QEMU started with
//! `-incoming` on the other hypervisor by QMP's `migrate`, as Ganeti's KVM
//! hypervisor does; then the source quits and its tap goes. A benchmark
//! prints numbers; it asserts nothing about time.
//!
//! ```text
//! tapir-qemu-bench [--tapir PATH] [--reps 3] [--bird-reps 1] [--skip-bird]
//!                  [--incoming-wait SECS] [--no-tap-mac]
//! ```
//!
//! `--no-tap-mac`: the ifup hook without `TAP_MAC`, so that each tap
//! keeps its own random MAC (the gateway's MAC changes with a move).
//!
//! `--incoming-wait` (default 0.5): how long the destination QEMU waits
//! with its tap before the migration starts, as a large guest's memory
//! copy would make it wait (tapir there tries the VM meanwhile, and
//! nothing answers).
//!
//! For each move (hv1 → hv2, then back, `--reps` in all; `--bird-reps`,
//! default 1, for BIRD), as tor's BIRD shows it (polled every 5 ms):
//! - B1: the source's tap deleted (its QEMU quit after the migration; the
//!   time of the kernel's event, `ip -ts monitor link`) → tor has no path
//!   via the source;
//! - B2: the migration complete (QMP `query-migrate`: the guest runs at the
//!   destination) → tor's best path via the destination;
//! - lost: replies missing from a ping every 5 ms from tor to the guest's
//!   service address, from just before the migration to 3 s after B1 and
//!   B2 (or their limits).
//!
//! The guest's own view (its BIRD's session state and `since`, from its
//! console) is printed for each move. tapir runs on both hypervisors with
//! `examples/hypervisor.toml`; then BIRD with the reference config.
//! The last line reads `qemu-migration: n=N accel=tcg|kvm B1 median=X ms
//! B2 median=Y ms lost=Z` (tapir's figures).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lab::monitor::Monitor;
use lab::qemu::{self, Guest, Image};
use lab::reference;
use lab::tor::{self, Tor};
use lab::Lab;

const PREFIX: &str = "10.3.0.1/32";
const SERVICE: &str = "10.3.0.1";
const VM: u32 = 11;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// One move's figures.
struct Move {
    /// Where the guest went: tor breaks ties by the lower router id, so
    /// hv1's path wins while both are there, and hv2's can be best only
    /// once hv1's is gone: the two directions differ.
    to: &'static str,
    b1: Option<Duration>,
    b2: Option<Duration>,
    /// The same at tor's kernel: the tap's deletion to the source's route
    /// deleted there (only when it was tor's best, so that the kernel
    /// route goes rather than changes), and the migration's completion
    /// to the destination's route in tor's kernel.
    k1: Option<Duration>,
    k2: Option<Duration>,
    lost: Option<u64>,
}

/// Sent and received, from ping's summary.
fn ping_summary(text: &str) -> Option<(u64, u64)> {
    let l = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut n = l
        .split(',')
        .map(|p| p.split_whitespace().next()?.parse::<u64>().ok());
    Some((n.next()??, n.next()??))
}

/// Now, in seconds of the day (UTC, as `ip -ts monitor` prints it here).
fn time_of_day() -> f64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_secs_f64().rem_euclid(86400.0)
}

fn run(
    daemon: &str,
    tapir: &Path,
    img: &Image,
    accel: &str,
    reps: usize,
    incoming_wait: Duration,
    tap_mac: Option<&str>,
) -> Vec<Move> {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    let tor: Tor = tor::start_bird_with_kernel(&mut lab);
    let links = [
        ("hv1", Monitor::start(&mut lab, "hv1", "link")),
        ("hv2", Monitor::start(&mut lab, "hv2", "link")),
    ];
    let tor_routes = Monitor::start(&mut lab, "tor", "route");
    // tapir acts in milliseconds; BIRD waits for its hold timer (90 s),
    // which the limits cut short.
    let limit = Duration::from_secs(if daemon == "tapir" { 60 } else { 20 });
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .expect("examples/hypervisor.toml");
    for (hv, id) in [("hv1", "10.192.21.6"), ("hv2", "10.192.21.7")] {
        if daemon == "tapir" {
            let cfg = example.replace(
                "router-id = \"10.192.21.6\"",
                &format!("router-id = \"{id}\""),
            );
            let path = lab.write(&format!("{hv}/tapir.toml"), &cfg);
            lab.tapir_with_log(hv, tapir, &path, "info");
        } else {
            lab.bird(hv, &reference::hv_bird_config(id));
        }
    }
    let addr = |hv: &str| reference::hv_addresses(hv).0;
    let mut guest: Guest = {
        let s = qemu::ganeti_guest_with(&lab, "hv1", tapir, VM, PREFIX, tap_mac);
        lab.qemu("hv1", img, accel, &s, None)
    };
    let booted = Instant::now();
    if !guest.wait_established(Duration::from_secs(120)) {
        println!(
            "  {daemon}: the guest's BGP session never came up\n{}",
            guest.console()
        );
        return Vec::new();
    }
    println!(
        "  {daemon}: guest booted ({accel}), BGP Established after {:.1} s",
        booted.elapsed().as_secs_f64()
    );
    let via = |hv: &str| {
        let a = addr(hv);
        move |h: &[String]| h.first() == Some(&a)
    };
    if until(&tor, Duration::from_secs(60), via("hv1")).is_none() {
        println!("  {daemon}: {PREFIX} never via hv1 at tor");
        return Vec::new();
    }
    let mut moves = Vec::new();
    let mut at = "hv1";
    for rep in 0..reps {
        let to = if at == "hv1" { "hv2" } else { "hv1" };
        let s = qemu::ganeti_guest_with(&lab, to, tapir, VM, PREFIX, tap_mac);
        let port = 4444 + rep;
        let dest = lab.qemu(to, img, accel, &s, Some(&format!("{}:{port}", addr(to))));
        std::thread::sleep(incoming_wait);
        let ping = lab.spawn(
            "tor",
            &["ping", "-n", "-i", "0.005", "-W", "1", SERVICE],
            &format!("ping-{daemon}-{rep}.log"),
        );
        std::thread::sleep(Duration::from_millis(300));
        let monitor = &links.iter().find(|(h, _)| *h == at).expect("hypervisor").1;
        let mark = monitor.len();
        let mark_tor = tor_routes.len();
        let done = match guest.migrate(&format!("{}:{port}", addr(to)), Duration::from_secs(120)) {
            Ok(t) => t,
            Err(e) => {
                println!("  {daemon}: migration {at} -> {to} failed: {e}");
                break;
            }
        };
        let done_at = time_of_day();
        // The source is done: Ganeti stops it, and its tap goes.
        let _ = guest.qmp("quit", serde_json::Value::Null);
        // Both ends watched in one loop: tor's best path via the
        // destination (B2), and no path via the source (B1).
        let (to_addr, from_addr) = (addr(to), addr(at));
        let (mut b2_at, mut gone) = (None, None);
        while done.elapsed() < limit && (b2_at.is_none() || gone.is_none()) {
            let hops = tor.next_hops(PREFIX);
            if b2_at.is_none() && hops.first() == Some(&to_addr) {
                b2_at = Some(Instant::now());
            }
            if gone.is_none() && !hops.contains(&from_addr) {
                gone = Some(time_of_day());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let b2 = b2_at.map(|t| t.duration_since(done));
        let deleted = monitor.find(mark, &format!("tap{VM}"), Some(true));
        let b1 = match (deleted, gone) {
            (Some(d), Some(g)) => Some(lab::monitor::between(d, g)),
            _ => None,
        };
        let service = PREFIX.trim_end_matches("/32");
        let k1 = deleted.and_then(|d| {
            let g =
                tor_routes.find(mark_tor, &format!("{service} via {from_addr} "), Some(true))?;
            Some(lab::monitor::between(d, g))
        });
        let k2 = tor_routes
            .find(mark_tor, &format!("{service} via {to_addr} "), Some(false))
            .map(|a| lab::monitor::between(done_at, a));
        std::thread::sleep(Duration::from_secs(3));
        lab::run("kill", &["-INT", &ping.to_string()]);
        std::thread::sleep(Duration::from_millis(300));
        let log = lab.log(&format!("ping-{daemon}-{rep}.log"));
        let lost = ping_summary(&log).map(|(tx, rx)| tx.saturating_sub(rx));
        if lost.is_none() {
            println!(
                "  {daemon}: no ping summary: {}",
                log.lines().last().unwrap_or("")
            );
        }
        println!(
            "  {daemon}: move {} {at} -> {to}: B2 {} (kernel {}) B1 {} (kernel {}) lost {} | guest: {}",
            rep + 1,
            ms(b2),
            ms(k2),
            ms(b1),
            ms(k1),
            lost.map_or("?".into(), |l| l.to_string()),
            dest.bgp().unwrap_or_else(|| "no BGP line yet".into())
        );
        moves.push(Move {
            to,
            b1,
            b2,
            k1,
            k2,
            lost,
        });
        guest = dest;
        at = to;
        // The guest's session on its new hypervisor, before the next move.
        if !guest.wait_established(Duration::from_secs(120)) {
            println!("  {daemon}: the guest's session did not come up on {to}");
            break;
        }
    }
    moves
}

/// Polls tor's BIRD every 5 ms until `done` holds for the prefix's next
/// hops (best first), up to `limit`; returns when it did.
fn until(tor: &Tor, limit: Duration, done: impl Fn(&[String]) -> bool) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done(&tor.next_hops(PREFIX)) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

/// The median of one figure over `moves`, in ms: a move past its limit
/// sorts last, and `-` when the median is one.
fn median_ms<'a>(
    moves: impl Iterator<Item = &'a Move>,
    f: impl Fn(&Move) -> Option<Duration>,
) -> String {
    let all: Vec<Duration> = moves.map(|m| f(m).unwrap_or(Duration::MAX)).collect();
    match median(all) {
        Some(d) if d != Duration::MAX => format!("{:.1}", d.as_secs_f64() * 1000.0),
        _ => "-".to_string(),
    }
}

/// Medians, overall and by direction, and the replies lost in all (`?`
/// if a count is missing).
fn summary(daemon: &str, moves: &[Move]) -> (String, String, String) {
    let med = |f: &dyn Fn(&Move) -> Option<Duration>| median_ms(moves.iter(), f);
    let b1 = med(&|m| m.b1);
    let b2 = med(&|m| m.b2);
    let k1 = med(&|m| m.k1);
    let k2 = med(&|m| m.k2);
    let lost = if moves.iter().all(|m| m.lost.is_some()) {
        moves.iter().filter_map(|m| m.lost).sum::<u64>().to_string()
    } else {
        "?".into()
    };
    println!(
        "{daemon}: n={} B1 median {b1} ms (kernel {k1} ms), B2 median {b2} ms (kernel {k2} ms), lost {lost} ('-': past the limit, or not seen)",
        moves.len()
    );
    for to in ["hv2", "hv1"] {
        let some: Vec<&Move> = moves.iter().filter(|m| m.to == to).collect();
        let med = |f: &dyn Fn(&Move) -> Option<Duration>| median_ms(some.iter().copied(), f);
        if !some.is_empty() {
            println!(
                "  to {to} (n={}): B1 {} ms (kernel {}), B2 {} ms (kernel {})",
                some.len(),
                med(&|m| m.b1),
                med(&|m| m.k1),
                med(&|m| m.b2),
                med(&|m| m.k2)
            );
        }
    }
    (b1, b2, lost)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if !lab::is_root() {
        eprintln!("tapir-qemu-bench: run as root (network namespaces)");
        return ExitCode::FAILURE;
    }
    if let Some(why) = qemu::unavailable() {
        eprintln!("tapir-qemu-bench: cannot run guests here: {why}");
        return ExitCode::FAILURE;
    }
    let tapir = arg(&args, "--tapir").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/tapir")
    });
    if !tapir.exists() {
        eprintln!(
            "tapir-qemu-bench: no tapir at {} (cargo build --release -p tapir, or --tapir)",
            tapir.display()
        );
        return ExitCode::FAILURE;
    }
    let reps: usize = arg(&args, "--reps")
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let bird_reps: usize = arg(&args, "--bird-reps")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let incoming_wait = match arg(&args, "--incoming-wait").map(|w| w.parse::<f64>()) {
        None => Duration::from_millis(500),
        Some(Ok(w)) if (0.0..=600.0).contains(&w) => Duration::from_secs_f64(w),
        Some(_) => {
            eprintln!("tapir-qemu-bench: --incoming-wait takes seconds, 0 to 600");
            return ExitCode::FAILURE;
        }
    };
    let img = match qemu::image() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("tapir-qemu-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let probe = std::env::temp_dir().join(format!("tapir-qemu-probe-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&probe);
    let accel = qemu::accel(&img, &probe);
    let _ = std::fs::remove_dir_all(&probe);
    println!(
        "QEMU live migration of the reference guest (BIRD), accel={accel}, {reps} moves each, \
         the destination waiting {:.1} s before each",
        incoming_wait.as_secs_f64()
    );
    let tap_mac = (!args.iter().any(|a| a == "--no-tap-mac")).then_some(reference::TAP_MAC);
    if tap_mac.is_none() {
        println!("the ifup hook without TAP_MAC: every tap has a MAC of its own");
    }
    let t = run("tapir", &tapir, &img, accel, reps, incoming_wait, tap_mac);
    let (b1, b2, lost) = summary("tapir", &t);
    if !args.iter().any(|a| a == "--skip-bird") {
        let b = run(
            "bird",
            &tapir,
            &img,
            accel,
            bird_reps,
            incoming_wait,
            tap_mac,
        );
        summary("bird (reference hypervisor config)", &b);
    }
    println!(
        "qemu-migration: n={} accel={accel} B1 median={b1} ms B2 median={b2} ms lost={lost}",
        t.len()
    );
    if t.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

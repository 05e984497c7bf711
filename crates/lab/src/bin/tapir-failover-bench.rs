//! Benchmarks B1 and B2 (docs/design.md, Benchmarks): failover and migration as `tor` sees
//! them, tapir on the hypervisors against BIRD with the reference config.
//! A benchmark prints numbers; it asserts nothing about time.
//!
//! ```text
//! tapir-failover-bench --tapir PATH --example examples/hypervisor.toml
//!                      [--reps 20] [--bird-reps 1] [--skip-bird] [--skip-bfd]
//! ```
//!
//! - B1: vm11's tap is removed; the clock stops when tor no longer has its
//!   prefix.
//! - B2: vm11's tap moves to the other hypervisor (the VM keeps running,
//!   unmodified BIRD); the clock stops when tor's best path is via it. The
//!   guest runs the reference config (IPv4 `multihop`), then the variant
//!   with link-local and BFD (tapir only: BIRD's reference hypervisor
//!   config cannot take link-local sessions without a block per tap).
//! - BFD: the guest freezes; the clock stops when tor drops its prefix.
//!
//! Each figure comes two ways. "birdc": tor's BIRD polled every 5 ms from
//! the moment the lab's `ip` command starts, so it carries the command's
//! and the poll's milliseconds. "kernel": from `ip -ts monitor` timestamps,
//! the tap's netlink event in the hypervisor to the route's change in tor's
//! kernel table (tor's BIRD exports to it).
//!
//! `TAPIR_BENCH_PCAP=/path/prefix` also captures vm11's link.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lab::monitor::{between, Monitor};
use lab::reference;
use lab::tor::{self, Kind, Tor};
use lab::Lab;

/// `guest.toml` beside the `--example` file: the tapir guest's config.
static GUEST_EXAMPLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// How the migrating VM (vm11, BIRD unmodified) peers with its hypervisor.
#[derive(Clone, Copy, PartialEq)]
enum Guest {
    /// The reference VM config: IPv4, `multihop` to the gateway.
    Reference,
    /// IPv6 link-local single-hop with `bfd on` (300 ms x 3).
    LinkLocalBfd,
    /// tapir's guest role (`examples/guest.toml`): both families, BFD, a
    /// DNS health check; IPv4 is timed.
    Tapir,
}

impl Guest {
    fn prefix(self) -> &'static str {
        match self {
            Guest::Reference | Guest::Tapir => "10.3.0.1/32",
            Guest::LinkLocalBfd => "2001:db8:3::1/128",
        }
    }

    /// tor's next hop for the prefix via a hypervisor.
    fn via(self, hv: &str) -> String {
        let (v4, v6) = reference::hv_addresses(hv);
        match self {
            Guest::Reference | Guest::Tapir => v4,
            Guest::LinkLocalBfd => v6,
        }
    }

    fn bird_config(self) -> String {
        match self {
            Guest::Reference | Guest::Tapir => {
                reference::vm_bird_config(11, 64613, &[self.prefix()])
            }
            Guest::LinkLocalBfd => {
                reference::vm_bird_link_local_config(11, 64613, &[self.prefix()], "bfd on;")
                    .replace("protocol device { }", BIRD_BFD)
            }
        }
    }
}

const BIRD_BFD: &str =
    "protocol device { }\nprotocol bfd { interface \"eth0\" { interval 300 ms; multiplier 3; }; }";

/// Polls tor until `done` holds for `prefix`'s next hops (BIRD lists every
/// path, best first), up to `limit`; returns the time taken.
fn until(
    tor: &Tor,
    prefix: &str,
    limit: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done(&tor.next_hops(prefix)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

struct Setup {
    lab: Lab,
    tor: Tor,
    /// tor's kernel routes, and each hypervisor's links, as `ip -ts monitor`
    /// prints them.
    tor_routes: Monitor,
    links: [(&'static str, Monitor); 2],
}

impl Setup {
    fn links(&self, hv: &str) -> &Monitor {
        &self
            .links
            .iter()
            .find(|(h, _)| *h == hv)
            .expect("hypervisor")
            .1
    }
}

/// tor, hv1, hv2 and vm11 on hv1, with `daemon` on both hypervisors.
fn setup(daemon: &str, tapir: &std::path::Path, example: &str, guest: Guest) -> Setup {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", 11);
    let tor = tor::start_bird_with_kernel(&mut lab);
    let tor_routes = Monitor::start(&mut lab, "tor", "route");
    let links = [
        ("hv1", Monitor::start(&mut lab, "hv1", "link")),
        ("hv2", Monitor::start(&mut lab, "hv2", "link")),
    ];
    if guest == Guest::Tapir {
        // The reference VM in the guest role: its service addresses on
        // lo, a DNS server for the health check, tapir with the example.
        lab.addr("vm11", "lo", "10.3.0.1/32");
        lab.addr("vm11", "lo", "2001:db8:3::1/128");
        lab.up("vm11", "lo");
        std::fs::create_dir_all(lab.dir().join("vm11")).expect("vm11 directory");
        let dns = lab::tool(tapir, "dns-answer");
        lab.spawn(
            "vm11",
            &[
                &dns.to_string_lossy(),
                "10.3.0.1:53",
                "www.wikimedia.org",
                "10.3.0.1",
            ],
            "vm11/dns.log",
        );
        let guest_example = GUEST_EXAMPLE.get().expect("guest.toml beside --example");
        let path = lab.write("vm11/tapir.toml", guest_example);
        lab.tapir_with_log("vm11", tapir, &path, "info");
    } else {
        lab.bird("vm11", &guest.bird_config());
    }
    // For digging into a slow migration: every packet on the VM's link.
    if let Some(pcap) = std::env::var_os("TAPIR_BENCH_PCAP") {
        let pcap = format!("{}-{daemon}.pcap", pcap.to_string_lossy());
        lab.spawn(
            "vm11",
            &[
                "tcpdump",
                "--immediate-mode",
                "-i",
                "eth0",
                "-U",
                "-w",
                &pcap,
            ],
            "tcpdump-vm11.log",
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for (hv, id) in [("hv1", "10.192.21.6"), ("hv2", "10.192.21.7")] {
        if daemon == "tapir" {
            let mut cfg = example.replace(
                "router-id = \"10.192.21.6\"",
                &format!("router-id = \"{id}\""),
            );
            if guest != Guest::Reference {
                cfg = cfg.replace("# bfd = true", "bfd = true");
            }
            let path = lab.write(&format!("{hv}/tapir.toml"), &cfg);
            lab.tapir_with_log(hv, tapir, &path, "info");
        } else {
            lab.bird(hv, &lab::reference::hv_bird_config(id));
        }
    }
    Setup {
        lab,
        tor,
        tor_routes,
        links,
    }
}

fn stats(name: &str, v: &mut [Duration]) -> Option<Duration> {
    if v.is_empty() {
        println!("  {name:<28} no result");
        return None;
    }
    v.sort();
    let median = v[v.len() / 2];
    println!(
        "  {name:<28} n={:<3} median {:>9.1} ms   max {:>9.1} ms",
        v.len(),
        median.as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
    Some(median)
}

/// What one daemon reached: B1 and B2 as tor's BIRD shows them (`birdc`),
/// and the same from kernel timestamps (the tap's netlink event on the
/// hypervisor to the route's in tor's kernel table).
#[derive(Default)]
struct Figures {
    b1: Vec<Duration>,
    b2: Vec<Duration>,
    k1: Vec<Duration>,
    k2: Vec<Duration>,
}

/// B2 (`reps` moves back and forth between hv1 and hv2), then B1 (`reps`
/// taps removed) unless `b1` is false. Each step waits at most `limit`.
fn run(
    daemon: &str,
    tapir: &std::path::Path,
    example: &str,
    guest: Guest,
    reps: usize,
    b1: bool,
    limit: Duration,
) -> Figures {
    let prefix = guest.prefix();
    let addr = prefix.split('/').next().unwrap_or(prefix);
    let mut out = Figures::default();
    let mut s = setup(daemon, tapir, example, guest);
    let via1 = guest.via("hv1");
    if until(&s.tor, prefix, Duration::from_secs(120), |h| {
        h == [via1.as_str()]
    })
    .is_none()
    {
        println!("  {daemon}: the VM's route never reached tor");
        return out;
    }
    let mut at = "hv1";
    for _ in 0..reps {
        let to = if at == "hv1" { "hv2" } else { "hv1" };
        let via = guest.via(to);
        let (nl, nr) = (s.links(to).len(), s.tor_routes.len());
        let start = Instant::now();
        reference::migrate(&mut s.lab, at, to, "tap11", 11);
        if until(&s.tor, prefix, limit, |h| h.first() == Some(&via)).is_none() {
            println!("  {daemon}: B2 {at} -> {to}: not via {to} within {limit:?}");
            return out;
        }
        out.b2.push(start.elapsed());
        at = to;
        // Settle: only the new path left, before the next move.
        if until(&s.tor, prefix, limit, |h| h == [via.as_str()]).is_none() {
            println!("  {daemon}: B2: the old path stayed at tor for {limit:?}");
            return out;
        }
        let appeared = s.links(to).find(nl, "tap11@", Some(false));
        let routed = s
            .tor_routes
            .find(nr, &format!("{addr} via {via} "), Some(false));
        match (appeared, routed) {
            (Some(a), Some(r)) => out.k2.push(between(a, r)),
            _ => println!("  {daemon}: B2: no kernel timestamps ({appeared:?}, {routed:?})"),
        }
    }
    if !b1 {
        return out;
    }
    // B1: the tap removed. The VM's side of the pair goes with it, so
    // every repetition plugs the VM in again on a fresh tap first.
    let mut tap = "tap11".to_string();
    for i in 0..reps {
        let (nl, nr) = (s.links(at).len(), s.tor_routes.len());
        let start = Instant::now();
        reference::unplug(&mut s.lab, at, &tap);
        if until(&s.tor, prefix, limit, |h| h.is_empty()).is_none() {
            println!("  {daemon}: B1: still at tor after {limit:?}");
            break;
        }
        out.b1.push(start.elapsed());
        // The kernel may lag BIRD's table by a little.
        std::thread::sleep(Duration::from_millis(100));
        let gone = s.links(at).find(nl, &format!("{tap}@"), None);
        let withdrawn = s.tor_routes.find(nr, &format!("{addr} via "), Some(true));
        match (gone, withdrawn) {
            (Some(a), Some(r)) => out.k1.push(between(a, r)),
            _ => println!("  {daemon}: B1: no kernel timestamps ({gone:?}, {withdrawn:?})"),
        }
        if i + 1 == reps {
            break;
        }
        tap = format!("tap{}", 40 + i);
        reference::plug(&mut s.lab, at, &tap, 11, 11);
        if until(&s.tor, prefix, limit, |h| !h.is_empty()).is_none() {
            println!("  {daemon}: B1: the route did not come back after re-plugging");
            break;
        }
    }
    out
}

/// BFD detection: vm12 (link-local, `bfd on`, 300 ms x 3) freezes (its
/// BIRD stopped with SIGSTOP); the clock stops when tor no longer has its
/// prefix. tapir only: BIRD's reference hypervisor config has no BFD.
fn bfd_detection(tapir: &std::path::Path, example: &str, reps: usize) -> Vec<Duration> {
    let prefix = "2001:db8:3::2/128";
    let mut out = Vec::new();
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1"]);
    reference::add_vm(&mut lab, "hv1", 12);
    let tor = tor::start(&mut lab, Kind::Bird);
    let vm_cfg = reference::vm_bird_link_local_config(12, 64613, &[prefix], "bfd on;")
        .replace("protocol device { }", BIRD_BFD);
    let vm = lab.bird("vm12", &vm_cfg);
    let path = lab.write(
        "hv1/tapir.toml",
        &example.replace("# bfd = true", "bfd = true"),
    );
    lab.tapir_with_log("hv1", tapir, &path, "info");
    let pid = vm.pid.to_string();
    for _ in 0..reps {
        if until(&tor, prefix, Duration::from_secs(60), |h| !h.is_empty()).is_none() {
            println!("  BFD: the route did not reach tor");
            break;
        }
        // Let BFD settle at its fast rate.
        std::thread::sleep(Duration::from_secs(2));
        let start = Instant::now();
        lab.exec("vm12", &["kill", "-STOP", &pid]);
        let took = until(&tor, prefix, Duration::from_secs(30), |h| h.is_empty());
        lab.exec("vm12", &["kill", "-CONT", &pid]);
        if took.is_some() {
            out.push(start.elapsed());
        }
    }
    out
}

fn ratio(name: &str, tapir: Option<Duration>, bird: Option<Duration>) {
    if let (Some(a), Some(b)) = (tapir, bird) {
        println!(
            "  {name:<40} x{:.0}",
            b.as_secs_f64() / a.as_secs_f64().max(1e-6)
        );
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(tapir), Some(example)) = (arg(&args, "--tapir"), arg(&args, "--example")) else {
        eprintln!("usage: tapir-failover-bench --tapir PATH --example FILE [--reps 20] [--bird-reps 1] [--skip-bird] [--skip-bfd]");
        return ExitCode::FAILURE;
    };
    let tapir = PathBuf::from(tapir);
    let guest_path = std::path::Path::new(&example).with_file_name("guest.toml");
    match std::fs::read_to_string(&guest_path) {
        Ok(g) => {
            let _ = GUEST_EXAMPLE.set(g);
        }
        Err(e) => {
            eprintln!("{}: {e}", guest_path.display());
            return ExitCode::FAILURE;
        }
    }
    let example = match std::fs::read_to_string(&example) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{example}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reps: usize = arg(&args, "--reps")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bird_reps: usize = arg(&args, "--bird-reps")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let flag = |f: &str| args.iter().any(|a| a == f);
    let limit = Duration::from_secs(60);
    println!("B1: tap removed -> withdrawn at tor; B2: tap moved -> via the new hypervisor at tor");
    println!("(birdc: as tor's BIRD shows it, polled; kernel: tap event on the hypervisor -> route in tor's kernel)");
    println!("tapir, guest with the reference BIRD config (IPv4 multihop)");
    let mut t = run(
        "tapir",
        &tapir,
        &example,
        Guest::Reference,
        reps,
        true,
        limit,
    );
    let m1 = stats("B1 birdc", &mut t.b1);
    let k1 = stats("B1 kernel", &mut t.k1);
    let m2 = stats("B2 birdc", &mut t.b2);
    let k2 = stats("B2 kernel", &mut t.k2);
    println!("tapir, guest with BIRD link-local + BFD 300 ms x 3 (IPv6)");
    let mut l = run(
        "tapir",
        &tapir,
        &example,
        Guest::LinkLocalBfd,
        reps,
        false,
        limit,
    );
    stats("B2 birdc", &mut l.b2);
    stats("B2 kernel", &mut l.k2);
    println!("tapir, guest tapir (examples/guest.toml: IPv4 + IPv6 link-local, BFD, DNS check)");
    let mut g = run("tapir", &tapir, &example, Guest::Tapir, reps, false, limit);
    stats("B2 birdc", &mut g.b2);
    stats("B2 kernel", &mut g.k2);
    if !flag("--skip-bfd") {
        println!("tapir, BFD detection: guest frozen (SIGSTOP) -> withdrawn at tor");
        let mut d = bfd_detection(&tapir, &example, reps.min(10));
        stats("BFD 300 ms x 3, birdc", &mut d);
    }
    if !flag("--skip-bird") {
        println!("BIRD 2.0.12 on both hypervisors, reference config ({bird_reps} repetition(s); each waits for timers)");
        let mut b = run(
            "bird",
            &tapir,
            &example,
            Guest::Reference,
            bird_reps,
            true,
            Duration::from_secs(900),
        );
        let x1 = stats("B1 birdc", &mut b.b1);
        let y1 = stats("B1 kernel", &mut b.k1);
        let x2 = stats("B2 birdc", &mut b.b2);
        let y2 = stats("B2 kernel", &mut b.k2);
        println!("Ratios BIRD / tapir (medians)");
        ratio("B1 birdc", m1, x1);
        ratio("B1 kernel", k1, y1);
        ratio("B2 birdc", m2, x2);
        ratio("B2 kernel", k2, y2);
    }
    ExitCode::SUCCESS
}

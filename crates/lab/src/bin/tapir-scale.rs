//! Benchmark B4 (docs/design.md, Benchmarks): N VM sessions on one hypervisor. Each VM is a
//! network namespace behind its own tap, with the reference addressing
//! (its /32 routed `dev tapK proto static`, the gateway 10.192.24.1 on
//! every tap) and a small BGP speaker (this program, `peer`) that connects
//! to the gateway as BIRD's reference VM config does, and keeps the session
//! up. Prints the time from the daemon's start until all N are
//! Established, the daemon's memory per session, and its idle CPU; tapir
//! and BIRD (the reference hypervisor config) in the same run. Asserts
//! nothing about time. Memory is given two ways: the whole RSS over N,
//! and (for N > 20) what N sessions add beyond a run of the same daemon
//! with 10, over N − 10: the cost of a session without the program's own.
//!
//! ```text
//! tapir-scale run --tapir PATH [--vms 1000] [--daemons tapir,bird] [--idle 20] [--neigh-limits] [--bfd]
//! ```
//!
//! With `--bfd` every VM also runs single-hop BFD (RFC 5881, 300 ms × 3,
//! our `bfd` crate) with the gateway, and tapir's group has `bfd = true`;
//! the count of VMs whose BFD session is Up (as each VM sees it) is
//! printed. BIRD gets the reference config with `bfd on` added, and its
//! BFD protocol at the same timers: multihop (RFC 5883, UDP 4784), as its
//! BGP sessions are `multihop`, so there the VMs run BFD multihop too.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bgp::capability::Capability;
use bgp::{AfiSafi, Context, Message, Open};
use lab::{wait_for, Lab};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// VM k's address: 10.192.X.Y inside 10.192.0.0/16, never .24.1.
fn vm_addr(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 32, 0)) + k)
}

/// BFD with the gateway: from `local`, source port 49152, TTL 255, to and
/// from UDP 3784 (single-hop, RFC 5881) or 4784 (multihop, RFC 5883).
/// Prints each state change.
fn bfd_loop(local: Ipv4Addr, multihop: bool) -> std::io::Result<()> {
    let port = if multihop { 4784 } else { 3784 };
    let tx = UdpSocket::bind((local, 49152))?;
    tx.set_ttl(255)?;
    let rx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    let cfg = bfd::Config {
        // Unique enough among the gateway's sessions: it is ours that
        // must be unique to us, and the gateway tells them apart by
        // interface.
        local_discriminator: u32::from(local),
        desired_min_tx: Duration::from_millis(300),
        required_min_rx: Duration::from_millis(300),
        detect_mult: 3,
        auth: None,
        pin_peer: false,
    };
    let mut s = bfd::Session::new(cfg, Instant::now());
    let mut buf = [0u8; 256];
    loop {
        let now = Instant::now();
        if s.poll_timeout().is_some_and(|t| t <= now) {
            s.handle_timeout(now);
        }
        while let Some(p) = s.poll_transmit() {
            tx.send_to(&p, (Ipv4Addr::new(10, 192, 24, 1), port))?;
        }
        while let Some(bfd::Event::StateChanged { to, .. }) = s.poll_event() {
            println!("BFD {to:?}");
        }
        let wait = s
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
            .max(Duration::from_millis(1));
        rx.set_read_timeout(Some(wait))?;
        if let Ok((n, _)) = rx.recv_from(&mut buf) {
            let _ = s.receive(Instant::now(), &buf[..n]);
        }
    }
}

/// `peer --id ADDR [--bfd | --bfd-multihop]`: connects to 10.192.24.1:179
/// as AS 64613, answers the OPEN, sends a KEEPALIVE every 30 s; reconnects
/// a second after a loss. With `--bfd`, runs BFD with the gateway beside.
fn peer(args: &[String]) -> ExitCode {
    let id: Ipv4Addr = match arg(args, "--id").and_then(|v| v.parse().ok()) {
        Some(i) => i,
        None => {
            eprintln!("peer: --id ADDRESS");
            return ExitCode::FAILURE;
        }
    };
    let multihop = args.iter().any(|a| a == "--bfd-multihop");
    if multihop || args.iter().any(|a| a == "--bfd") {
        std::thread::spawn(move || {
            if let Err(e) = bfd_loop(id, multihop) {
                println!("BFD failed: {e}");
            }
        });
    }
    let open = Message::Open(Open::new(
        64613,
        90,
        id,
        vec![Capability::Multiprotocol(AfiSafi::IPV4_UNICAST)],
    ))
    .encode(&Context::default());
    let keepalive = Message::Keepalive.encode(&Context::default());
    loop {
        if let Ok(mut s) = TcpStream::connect("10.192.24.1:179") {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            if s.write_all(&open).is_ok() {
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => break,
                        // Anything (their OPEN, KEEPALIVEs) or a quiet
                        // 30 s: a KEEPALIVE back keeps the session up.
                        Ok(_) | Err(_) => {
                            if s.write_all(&keepalive).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// /proc/PID/stat utime + stime, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> u64 {
    Lab::rss_kib(pid).unwrap_or(0)
}

/// hv and N VMs, each with its tap, addresses and routes as the ifup hook
/// makes them, and its peer running.
/// `bfd`: the VMs' BFD flag (`--bfd`, `--bfd-multihop`), if any.
fn build(n: u32, me: &Path, bfd: Option<&str>) -> Lab {
    let mut lab = Lab::new();
    lab.add_host("hv");

    let vms: Vec<String> = (1..=n).map(|k| format!("s{k}")).collect();
    lab.add_hosts(&vms);
    let mut hv = String::new();
    for k in 1..=n {
        let tap = format!("tap{k}");
        hv += &format!(
            "link add {tap} type veth peer name eth0 netns {}\n",
            lab.netns(&format!("s{k}"))
        );
        hv += &format!("link set {tap} address 22:22:22:22:22:01\n");
        hv += &format!("link set {tap} up\n");
        hv += &format!("addr add 10.192.24.1/32 dev {tap} scope link\n");
        hv += &format!("route replace {}/32 dev {tap} proto static\n", vm_addr(k));
    }
    let file = lab.write("hv.batch", &hv);
    lab::run(
        "ip",
        &["-n", &lab.netns("hv"), "-batch", &file.to_string_lossy()],
    );
    for k in 1..=n {
        let a = vm_addr(k);
        let vm = format!(
            "link set lo up\nlink set eth0 up\naddr add {a}/32 dev eth0\n\
             route add 10.192.24.1/32 dev eth0 scope link\n\
             route add default via 10.192.24.1 dev eth0 onlink\n"
        );
        let file = lab.write(&format!("vm{k}.batch"), &vm);
        lab::run(
            "ip",
            &[
                "-n",
                &lab.netns(&format!("s{k}")),
                "-batch",
                &file.to_string_lossy(),
            ],
        );
    }
    std::fs::create_dir_all(lab.dir().join("peers")).expect("peers dir");
    for k in 1..=n {
        let me = me.to_string_lossy();
        let id = vm_addr(k).to_string();
        let mut argv = vec![&*me, "peer", "--id", &id];
        if let Some(flag) = bfd {
            argv.push(flag);
        }
        lab.spawn(&format!("s{k}"), &argv, &format!("peers/{k}.log"));
    }
    lab
}

const TAPIR_CONFIG: &str = r#"router-id = "10.192.21.6"
local-as = 64612
listen = ["[::]:179"]

[prefix-sets]
BGP-FROM-VMS = ["10.3.0.0/16{32,32}"]

[kernel]
install = false

[[group]]
name = "vms"
interfaces = ["tap*"]
ranges = ["10.192.0.0/16"]
remote-as = "external"
hold-time = 90
import = "BGP-FROM-VMS"
route-protocols = ["static"]
max-sessions = 4096
"#;

const BIRD_CONFIG: &str = "router id 10.192.21.6;\nprotocol device { }\n\
    protocol bgp vms {\n  ipv4 { import all; export none; };\n  \
    local 10.192.24.1 as 64612;\n  neighbor range 10.192.0.0/16 external;\n  multihop;\n}\n";

struct Figures {
    up: Option<Duration>,
    /// Sessions up when the wait ended.
    established: usize,
    rss_kib: u64,
    cpu_percent: f64,
    /// With `--bfd`: VMs whose BFD session is Up at the end, by their own
    /// account.
    bfd_up: Option<usize>,
}

/// VMs whose last BFD state change was to Up.
fn bfd_up(lab: &Lab, n: u32) -> usize {
    (1..=n)
        .filter(|k| {
            lab.log(&format!("peers/{k}.log"))
                .lines()
                .rev()
                .find(|l| l.starts_with("BFD "))
                == Some("BFD Up")
        })
        .count()
}

fn measure(daemon: &str, tapir: &Path, me: &Path, n: u32, idle: u64, bfd: bool) -> Figures {
    let flag = match (bfd, daemon) {
        (false, _) => None,
        (true, "tapir") => Some("--bfd"),
        (true, _) => Some("--bfd-multihop"),
    };
    let mut lab = build(n, me, flag);
    let start = Instant::now();
    let (pid, count): (u32, Box<dyn Fn() -> usize>) = match daemon {
        "tapir" => {
            let mut text = TAPIR_CONFIG.to_string();
            if bfd {
                text += "bfd = true\nbfd-interval = 300\nbfd-multiplier = 3\n";
            }
            let cfg = lab.write("hv/tapir.toml", &text);
            let t = lab.tapir_with_log("hv", tapir, &cfg, "warn");
            let pid = t.pid;
            (
                pid,
                Box::new(move || {
                    t.json("peers").as_array().map_or(0, |a| {
                        a.iter().filter(|p| p["state"] == "Established").count()
                    })
                }),
            )
        }
        _ => {
            let config = if bfd {
                BIRD_CONFIG.replace("  multihop;\n", "  multihop;\n  bfd on;\n")
                    + "protocol bfd {\n  multihop { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };\n}\n"
            } else {
                BIRD_CONFIG.to_string()
            };
            let b = lab.bird("hv", &config);
            let pid = b.pid;
            (
                pid,
                Box::new(move || {
                    b.try_cmd(&["show", "protocols"]).map_or(0, |o| {
                        o.lines().filter(|l| l.contains("Established")).count()
                    })
                }),
            )
        }
    };
    let up = wait_for(Duration::from_secs(120), || {
        (count() >= n as usize).then(|| start.elapsed())
    });
    let established = count();
    if bfd {
        // BFD comes up after the sessions: a few of its slow (1 s)
        // packets.
        wait_for(Duration::from_secs(30), || {
            (bfd_up(&lab, n) >= n as usize).then_some(())
        });
    }
    // Idle: every session up, nothing to do but keepalives.
    let t0 = cpu_ticks(pid).unwrap_or(0);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle));
    let ticks = cpu_ticks(pid).unwrap_or(0).saturating_sub(t0);
    // Clock ticks are 1/100 s on Linux.
    let cpu_percent = ticks as f64 / w0.elapsed().as_secs_f64();
    let rss = rss_kib(pid);
    let bfd_up = bfd.then(|| bfd_up(&lab, n));
    drop(lab);
    Figures {
        up,
        established,
        rss_kib: rss,
        cpu_percent,
        bfd_up,
    }
}

/// The kernel's neighbour tables are shared by all namespaces, and each
/// VM costs two entries (the VM on its tap, the gateway in the VM): past
/// `gc_thresh3` (1024 by default) the kernel drops entries and sessions
/// fail, for every daemon alike. A hypervisor with that many VMs raises
/// it; so does this bench, with `--neigh-limits`, and puts it back after.
struct NeighLimits(Vec<(String, String)>);

impl NeighLimits {
    fn raise(n: u32) -> std::io::Result<NeighLimits> {
        let mut old = Vec::new();
        for v in ["ipv4", "ipv6"] {
            for (k, x) in [("gc_thresh1", 2), ("gc_thresh2", 4), ("gc_thresh3", 8)] {
                let path = format!("/proc/sys/net/{v}/neigh/default/{k}");
                let before = std::fs::read_to_string(&path)?.trim().to_string();
                std::fs::write(&path, (n * x).max(1024).to_string())?;
                old.push((path, before));
            }
        }
        Ok(NeighLimits(old))
    }
}

impl Drop for NeighLimits {
    fn drop(&mut self) {
        for (path, v) in &self.0 {
            let _ = std::fs::write(path, v);
        }
    }
}

/// Sessions in the small run that the per-session memory is measured
/// beyond.
const BASE: u32 = 10;

fn run(args: &[String]) -> ExitCode {
    let Some(tapir) = arg(args, "--tapir").map(PathBuf::from) else {
        eprintln!("usage: tapir-scale run --tapir PATH [--vms 1000] [--daemons tapir,bird] [--idle 20] [--neigh-limits] [--bfd]");
        return ExitCode::FAILURE;
    };
    let n: u32 = arg(args, "--vms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    if !(1..=4000).contains(&n) {
        eprintln!("--vms: 1 to 4000");
        return ExitCode::FAILURE;
    }
    let idle: u64 = arg(args, "--idle")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let daemons = arg(args, "--daemons").unwrap_or_else(|| "tapir,bird".into());
    let bfd = args.iter().any(|a| a == "--bfd");
    let me = std::env::current_exe().expect("own path");
    let limit: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1024);
    let _limits = if args.iter().any(|a| a == "--neigh-limits") {
        match NeighLimits::raise(n) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("--neigh-limits: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        if 2 * n + 64 > limit {
            eprintln!(
                "{n} VMs need about {} neighbour entries, more than net.ipv4.neigh.default.gc_thresh3 = {limit}: \
                 add --neigh-limits to raise it for the run",
                2 * n
            );
            return ExitCode::FAILURE;
        }
        None
    };
    println!("B4 scale: {n} VM sessions on one hypervisor (each VM its own namespace and tap)");
    for d in daemons.split(',') {
        // The daemon with a few sessions first: what the N add beyond it
        // is the memory a session costs (the whole RSS over N counts the
        // program and its runtime too).
        let base = (n > 2 * BASE).then(|| measure(d, &tapir, &me, BASE, 1, bfd).rss_kib);
        let f = measure(d, &tapir, &me, n, idle, bfd);
        let up =
            f.up.map_or(format!("({} only, 120 s)", f.established), |t| {
                format!("{:.2} s", t.as_secs_f64())
            });
        let marginal = base.map_or(String::new(), |b| {
            format!(
                ", {:.1} beyond {BASE} sessions' {:.1} MiB",
                f.rss_kib.saturating_sub(b) as f64 / f64::from(n - BASE),
                b as f64 / 1024.0
            )
        });
        println!(
            "  {d:<6} all Established after {up:<22} RSS {:>7.1} MiB ({:.1} KiB/session{marginal})  idle CPU {:.2} % of a core over {idle} s{}",
            f.rss_kib as f64 / 1024.0,
            f.rss_kib as f64 / n as f64,
            f.cpu_percent,
            f.bfd_up
                .map(|b| format!("  BFD Up at {b} of {n} VMs"))
                .unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("run") => run(&args[2..]),
        Some("peer") => peer(&args[2..]),
        _ => {
            eprintln!("usage: tapir-scale run --tapir PATH [--vms 1000] [--daemons tapir,bird] [--idle 20] [--neigh-limits] [--bfd]");
            ExitCode::FAILURE
        }
    }
}

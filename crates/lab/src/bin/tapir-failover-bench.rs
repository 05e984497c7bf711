//! Benchmarks B1 and B2 (DESIGN §6): failover and migration as `tor` sees
//! them, tapir on the hypervisors against BIRD with the reference config.
//! A benchmark prints numbers; it asserts nothing about time.
//!
//! ```text
//! tapir-failover-bench --tapir PATH --example examples/hypervisor.toml
//!                      [--reps 20] [--bird-reps 1] [--skip-bird] [--skip-bfd]
//! ```
//!
//! - B1: vm11's tap is removed on hv1; the clock stops when tor's BIRD no
//!   longer has 10.3.0.1/32.
//! - B2: vm11's tap moves to hv2 (the VM keeps running, unmodified BIRD with
//!   the reference config); the clock stops when tor has the route via hv2.
//!
//! tor is polled through `birdc` every 5 ms, so figures carry about ±5 ms.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lab::reference::{self, HV_AS};
use lab::tor::{self, Kind, Tor};
use lab::Lab;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Next hops tor has for the prefix (BIRD lists every path, best first).
fn tor_hops(tor: &Tor) -> Vec<String> {
    tor_hops_for(tor, "10.3.0.1/32")
}

fn tor_hops_for(tor: &Tor, prefix: &str) -> Vec<String> {
    tor.next_hops(prefix)
}

/// Polls tor until `done`, up to `limit`; returns the time taken.
fn until(tor: &Tor, limit: Duration, done: impl Fn(&[String]) -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done(&tor_hops(tor)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn bird_hypervisor(id: &str) -> String {
    // The reference hypervisor config (DESIGN §5), and the export to tor.
    format!(
        "router id {id};\nprotocol device {{ }}\n\
         filter BGP_FROM_VMS {{ if net ~ [ 10.3.0.0/24{{32,32}} ] then accept; reject; }}\n\
         protocol bgp vms {{\n  ipv4 {{ import filter BGP_FROM_VMS; export none; }};\n  \
           local 10.192.24.1 as {HV_AS};\n  neighbor range 10.192.24.0/23 external;\n  multihop;\n}}\n\
         protocol bgp tor {{ local {id} as {HV_AS}; neighbor 10.192.21.1 as 65020;\n  \
           ipv4 {{ import none; export where source = RTS_BGP; }}; }}\n"
    )
}

struct Setup {
    lab: Lab,
    tor: Tor,
}

/// tor, hv1, hv2 and vm11 on hv1, with `daemon` on both hypervisors.
fn setup(daemon: &str, tapir: &std::path::Path, example: &str) -> Setup {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", 11);
    let tor = tor::start(&mut lab, Kind::Bird);
    lab.bird(
        "vm11",
        &reference::vm_bird_config(11, 64613, &["10.3.0.1/32"]),
    );
    for (hv, id) in [("hv1", "10.192.21.6"), ("hv2", "10.192.21.7")] {
        if daemon == "tapir" {
            let cfg = example.replace(
                "router-id = \"10.192.21.6\"",
                &format!("router-id = \"{id}\""),
            );
            let path = lab.write(&format!("{hv}/tapir.toml"), &cfg);
            lab.tapir_with_log(hv, tapir, &path, "info");
        } else {
            lab.bird(hv, &bird_hypervisor(id));
        }
    }
    Setup { lab, tor }
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

fn run(
    daemon: &str,
    tapir: &std::path::Path,
    example: &str,
    reps: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let limit = Duration::from_secs(400);
    let (mut b1, mut b2) = (Vec::new(), Vec::new());
    // B2: back and forth between hv1 and hv2.
    let mut s = setup(daemon, tapir, example);
    if until(&s.tor, Duration::from_secs(120), |h| h == ["10.192.21.6"]).is_none() {
        println!("  {daemon}: the VM's route never reached tor");
        return (b1, b2);
    }
    let mut at = "hv1";
    for _ in 0..reps {
        let (to, via) = if at == "hv1" {
            ("hv2", "10.192.21.7")
        } else {
            ("hv1", "10.192.21.6")
        };
        let start = Instant::now();
        reference::migrate(&mut s.lab, at, to, "tap11", 11);
        match until(&s.tor, limit, |h| {
            h.first().map(String::as_str) == Some(via)
        }) {
            Some(_) => b2.push(start.elapsed()),
            None => println!("  {daemon}: B2 {at} -> {to}: not via {to} within {limit:?}"),
        }
        at = to;
        // Settle: only the new path left, before the next move.
        let _ = until(&s.tor, limit, |h| h == [via]);
    }
    // B1: the tap removed. The VM's side of the pair goes with it, so
    // every repetition plugs the VM in again on a fresh tap first.
    let mut tap = "tap11".to_string();
    for i in 0..reps {
        let start = Instant::now();
        reference::unplug(&mut s.lab, at, &tap);
        match until(&s.tor, limit, |h| h.is_empty()) {
            Some(_) => b1.push(start.elapsed()),
            None => println!("  {daemon}: B1: still at tor after {limit:?}"),
        }
        if i + 1 == reps {
            break;
        }
        tap = format!("tap{}", 40 + i);
        reference::plug(&mut s.lab, at, &tap, 11, 11);
        if until(&s.tor, limit, |h| !h.is_empty()).is_none() {
            println!("  {daemon}: B1: the route did not come back after re-plugging");
            break;
        }
    }
    (b1, b2)
}

/// BFD detection: vm12 (link-local, `bfd on`, 300 ms x 3) freezes (its
/// BIRD stopped with SIGSTOP); the clock stops when tor no longer has its
/// prefix. tapir only: BIRD's reference hypervisor config has no BFD.
fn bfd_detection(tapir: &std::path::Path, example: &str, reps: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1"]);
    reference::add_vm(&mut lab, "hv1", 12);
    let tor = tor::start(&mut lab, Kind::Bird);
    let vm_cfg = reference::vm_bird_link_local_config(12, 64613, &["2001:db8:3::2/128"], "bfd on;").replace(
        "protocol device { }",
        "protocol device { }\nprotocol bfd { interface \"eth0\" { interval 300 ms; multiplier 3; }; }",
    );
    let vm = lab.bird("vm12", &vm_cfg);
    let cfg = example.replace(
        "graceful-restart-time = 120",
        "graceful-restart-time = 120\nbfd = true",
    );
    let path = lab.write("hv1/tapir.toml", &cfg);
    lab.tapir_with_log("hv1", tapir, &path, "info");
    let pid = vm.pid.to_string();
    for _ in 0..reps {
        if until_for(&tor, "2001:db8:3::2/128", Duration::from_secs(60), |h| {
            !h.is_empty()
        })
        .is_none()
        {
            println!("  BFD: the route did not reach tor");
            break;
        }
        // Let BFD settle at its fast rate.
        std::thread::sleep(Duration::from_secs(2));
        let start = Instant::now();
        lab.exec("vm12", &["kill", "-STOP", &pid]);
        let took = until_for(&tor, "2001:db8:3::2/128", Duration::from_secs(30), |h| {
            h.is_empty()
        });
        lab.exec("vm12", &["kill", "-CONT", &pid]);
        if took.is_some() {
            out.push(start.elapsed());
        }
    }
    out
}

fn until_for(
    tor: &Tor,
    prefix: &str,
    limit: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done(&tor_hops_for(tor, prefix)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(tapir), Some(example)) = (arg(&args, "--tapir"), arg(&args, "--example")) else {
        eprintln!("usage: tapir-failover-bench --tapir PATH --example FILE [--reps 20] [--bird-reps 1] [--skip-bird]");
        return ExitCode::FAILURE;
    };
    let tapir = PathBuf::from(tapir);
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
    println!(
        "B1 (tap removed -> withdrawn at tor) and B2 (tap moved -> via the new hypervisor at tor)"
    );
    let (mut t1, mut t2) = run("tapir", &tapir, &example, reps);
    let m1 = stats("tapir B1", &mut t1);
    let m2 = stats("tapir B2", &mut t2);
    if !args.iter().any(|a| a == "--skip-bfd") {
        let mut d = bfd_detection(&tapir, &example, reps.min(10));
        stats("tapir BFD 300 ms x 3", &mut d);
    }
    if !args.iter().any(|a| a == "--skip-bird") {
        println!("  BIRD 2.0.12 with the reference config ({bird_reps} repetition(s); each waits for timers)");
        let (mut x1, mut x2) = run("bird", &tapir, &example, bird_reps);
        let b1 = stats("BIRD B1", &mut x1);
        let b2 = stats("BIRD B2", &mut x2);
        if let (Some(a), Some(b)) = (m1, b1) {
            println!(
                "  B1 ratio BIRD/tapir: x{:.0}",
                b.as_secs_f64() / a.as_secs_f64()
            );
        }
        if let (Some(a), Some(b)) = (m2, b2) {
            println!(
                "  B2 ratio BIRD/tapir: x{:.0}",
                b.as_secs_f64() / a.as_secs_f64()
            );
        }
    }
    ExitCode::SUCCESS
}

//! The churn soak (hardening issue): many VMs, each with unmodified BIRD,
//! migrating between hv1 and hv2, restarting their BIRD and being
//! re-plugged, while invariants are checked after every round. Bounded in
//! operations and in time; prints figures, asserts nothing.
//!
//! ```text
//! tapir-churn --tapir PATH --example examples/hypervisor.toml
//!             [--vms 100] [--ops 200] [--minutes 10] [--seed 1]
//! ```
//!
//! Invariants, after each round has settled:
//! - tor has every VM's prefix, via exactly the hypervisor the VM is on;
//! - each hypervisor's kernel holds exactly its Loc-RIB's VM prefixes;
//! - no VM session is left on a tap that is gone, and none is missing.
//!
//! Figures: operations done, invariant violations, settle times, and each
//! tapir's RSS at the start and the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lab::reference;
use lab::tor::{self, Tor};
use lab::Lab;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A small deterministic generator (no dependency for a benchmark).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn prefix(n: u32) -> String {
    format!("10.3.0.{n}/32")
}

fn via(hv: &str) -> String {
    reference::hv_addresses(hv).0
}

/// Every path tor's BIRD has for the VM prefixes: prefix → next hops.
fn tor_paths(tor: &Tor) -> BTreeMap<String, BTreeSet<String>> {
    let Tor::Bird(b) = tor else {
        return BTreeMap::new();
    };
    let out = b
        .try_cmd(&["show", "route", "where", "net ~ [ 10.3.0.0/24+ ]"])
        .unwrap_or_default();
    let mut paths: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = String::new();
    for l in out.lines() {
        if !l.starts_with([' ', '\t']) {
            if let Some(p) = l.split_whitespace().next().filter(|p| p.contains('/')) {
                current = p.to_string();
            }
        }
        if let Some(i) = l.find("via ") {
            if let Some(nh) = l[i + 4..].split_whitespace().next() {
                paths
                    .entry(current.clone())
                    .or_default()
                    .insert(nh.to_string());
            }
        }
    }
    paths
}

fn tapir_json(lab: &Lab, tapir: &std::path::Path, hv: &str, what: &str) -> serde_json::Value {
    let sock = lab.dir().join(hv).join("tapir.sock");
    let o = std::process::Command::new(tapir)
        .arg("--socket")
        .arg(&sock)
        .args(["show", what, "--json"])
        .output();
    o.ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn rss_kib(pid: u32) -> u64 {
    Lab::rss_kib(pid).unwrap_or(0)
}

/// The invariants, once; returns the violations found.
fn violations(
    lab: &Lab,
    tor: &Tor,
    tapir: &std::path::Path,
    at: &BTreeMap<u32, &'static str>,
) -> Vec<String> {
    let mut v = Vec::new();
    let paths = tor_paths(tor);
    for (n, hv) in at {
        let want: BTreeSet<String> = [via(hv)].into();
        match paths.get(&prefix(*n)) {
            Some(got) if *got == want => {}
            got => v.push(format!("tor: {} via {got:?}, VM on {hv}", prefix(*n))),
        }
    }
    for hv in ["hv1", "hv2"] {
        // Kernel = Loc-RIB, for the VM prefixes.
        let rib: BTreeSet<String> = tapir_json(lab, tapir, hv, "rib")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["from"] != "local")
                    .filter_map(|e| e["prefix"].as_str())
                    .filter(|p| p.starts_with("10.3.0."))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let k = lab.ip(hv, &["-4", "route", "show", "proto", "180"]);
        let kernel: BTreeSet<String> = String::from_utf8_lossy(&k.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|p| p.starts_with("10.3.0."))
            .map(|p| {
                if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/32")
                }
            })
            .collect();
        if rib != kernel {
            v.push(format!(
                "{hv}: kernel and Loc-RIB differ: only in the RIB {:?}, only in the kernel {:?}",
                rib.difference(&kernel).collect::<Vec<_>>(),
                kernel.difference(&rib).collect::<Vec<_>>()
            ));
        }
        // Sessions: one IPv4 session per VM on this hypervisor, on its tap.
        let peers = tapir_json(lab, tapir, hv, "peers");
        let mine: BTreeSet<u32> = at
            .iter()
            .filter(|(_, h)| **h == hv)
            .map(|(n, _)| *n)
            .collect();
        let sessions: BTreeSet<u32> = peers
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["state"] == "Established")
                    .filter_map(|p| p["address"].as_str())
                    .filter_map(|a| a.strip_prefix("10.192.24.")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if sessions != mine {
            v.push(format!(
                "{hv}: IPv4 sessions up {:?} but VMs here {:?}",
                sessions.symmetric_difference(&mine).collect::<Vec<_>>(),
                mine.len()
            ));
        }
        let links = String::from_utf8_lossy(&lab.ip(hv, &["-o", "link"]).stdout).into_owned();
        for p in peers.as_array().into_iter().flatten() {
            if let Some(i) = p["interface"].as_str() {
                if !links.contains(&format!(": {i}@")) {
                    v.push(format!("{hv}: a session on {i}, which is gone"));
                }
            }
        }
    }
    v
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(tapir), Some(example)) = (arg(&args, "--tapir"), arg(&args, "--example")) else {
        eprintln!("usage: tapir-churn --tapir PATH --example FILE [--vms 100] [--ops 200] [--minutes 10] [--seed 1]");
        return ExitCode::FAILURE;
    };
    let tapir = PathBuf::from(tapir);
    let example = std::fs::read_to_string(&example).expect("example config");
    let num = |k: &str, d: u64| arg(&args, k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (vms, ops, minutes) = (
        num("--vms", 100) as u32,
        num("--ops", 200),
        num("--minutes", 10),
    );
    let mut rng = Rng(num("--seed", 1));
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let first = 100u32;
    let numbers: Vec<u32> = (first..first + vms).collect();

    let t0 = Instant::now();
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    let tor = tor::start_bird_with_kernel(&mut lab);
    let mut at: BTreeMap<u32, &'static str> = BTreeMap::new();
    let mut birds: BTreeMap<u32, u32> = BTreeMap::new();
    for (i, n) in numbers.iter().enumerate() {
        let hv = if i % 2 == 0 { "hv1" } else { "hv2" };
        reference::add_vm(&mut lab, hv, *n);
        at.insert(*n, hv);
    }
    let mut pids = Vec::new();
    for (hv, id) in [("hv1", "10.192.21.6"), ("hv2", "10.192.21.7")] {
        let cfg = example.replace(
            "router-id = \"10.192.21.6\"",
            &format!("router-id = \"{id}\""),
        );
        let path = lab.write(&format!("{hv}/tapir.toml"), &cfg);
        pids.push(lab.tapir_with_log(hv, &tapir, &path, "info").pid);
    }
    for n in &numbers {
        let b = lab.bird(
            &format!("vm{n}"),
            &reference::vm_bird_config(*n, 64613, &[&prefix(*n)]),
        );
        birds.insert(*n, b.pid);
    }
    println!(
        "churn soak: {vms} VMs (BIRD, reference config) on hv1 and hv2, built in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let settle = |lab: &Lab, at: &BTreeMap<u32, &'static str>| -> (Duration, Vec<String>) {
        let start = Instant::now();
        loop {
            let v = violations(lab, &tor, &tapir, at);
            if v.is_empty() || start.elapsed() > Duration::from_secs(60) {
                return (start.elapsed(), v);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let (t, v) = settle(&lab, &at);
    println!(
        "  initial convergence: {:.1} s, violations {}",
        t.as_secs_f64(),
        v.len()
    );
    for x in &v {
        println!("    {x}");
    }
    let rss_start: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    let (mut done, mut migrations, mut restarts, mut replugs) = (0u64, 0, 0, 0);
    let mut violation_count = v.len();
    let mut settle_times = Vec::new();
    let mut round = 0;
    while done < ops && Instant::now() < deadline {
        round += 1;
        // A round: ten operations on random VMs, then the invariants.
        for _ in 0..10.min(ops - done) {
            let n = numbers[rng.next(numbers.len())];
            let hv = at[&n];
            let tap = format!("tap{n}");
            match rng.next(3) {
                0 => {
                    let to = if hv == "hv1" { "hv2" } else { "hv1" };
                    reference::migrate(&mut lab, hv, to, &tap, n);
                    at.insert(n, to);
                    migrations += 1;
                }
                1 => {
                    if let Some(pid) = birds.remove(&n) {
                        lab.stop(pid);
                    }
                    let b = lab.bird(
                        &format!("vm{n}"),
                        &reference::vm_bird_config(n, 64613, &[&prefix(n)]),
                    );
                    birds.insert(n, b.pid);
                    restarts += 1;
                }
                _ => {
                    reference::unplug(&mut lab, hv, &tap);
                    reference::plug(&mut lab, hv, &tap, n, n);
                    replugs += 1;
                }
            }
            done += 1;
        }
        let (t, v) = settle(&lab, &at);
        settle_times.push(t);
        if !v.is_empty() {
            println!(
                "  round {round}: {} violations after {:.1} s",
                v.len(),
                t.as_secs_f64()
            );
            for x in v.iter().take(5) {
                println!("    {x}");
            }
        }
        violation_count += v.len();
        // RSS along the way: a plateau is allocator growth, a slope a leak.
        if round % 10 == 0 {
            let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
            println!(
                "  after {done} operations: RSS hv1 {} KiB, hv2 {} KiB",
                rss[0], rss[1]
            );
        }
    }
    let rss_end: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    settle_times.sort();
    let median = settle_times
        .get(settle_times.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = settle_times.last().copied().unwrap_or_default();
    println!(
        "  operations: {done} ({migrations} migrations, {restarts} BIRD restarts, {replugs} re-plugs) in {round} rounds, {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "  settle time per round (10 operations): median {:.1} s, max {:.1} s",
        median.as_secs_f64(),
        max.as_secs_f64()
    );
    println!("  invariant violations after settling: {violation_count}");
    for (i, hv) in ["hv1", "hv2"].iter().enumerate() {
        println!(
            "  {hv} tapir RSS: start {} KiB, end {} KiB",
            rss_start[i], rss_end[i]
        );
    }
    ExitCode::SUCCESS
}

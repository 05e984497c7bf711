//! Benchmark B3 (docs/design.md, Benchmarks): N prefixes injected by one peer, time until all
//! are received by another peer through the daemon under test, and the
//! daemon's peak RSS; tapir, BIRD, FRR and GoBGP in the same run, with
//! ratios. A benchmark prints numbers; it asserts nothing about time.
//!
//! ```text
//! tapir-bench run --tapir PATH [--prefixes N] [--prefixes6 N] [--daemons tapir,bird,frr,gobgp] [--kernel]
//! ```
//!
//! With `--prefixes6` a second injector and receiver carry that many IPv6
//! /48s over IPv6 sessions beside the IPv4 ones (each daemon's next hop is
//! its own address of the family); the clock runs from the first UPDATE
//! sent to the last prefix received on either.
//!
//! Once all have arrived (and the RSS is read), the injector withdraws
//! them all, and a second clock runs until the receiver has none left.
//!
//! With `--kernel` the clock stops when all N routes are in the daemon's
//! kernel table instead (routes/s into the FIB; GoBGP has no FIB of its
//! own): when the last prefix sent is routed (`ip route get`), if a count
//! of the table right after finds all N, else at the first count that does.
//! Then the daemon idles for 30 s with the routes installed, scanning its
//! kernel table every 10 s (tapir's `scan-interval`, BIRD's `scan time`),
//! and the CPU it spends meanwhile is printed: what keeping a full kernel
//! table checked costs.
//!
//! The injector and the receiver are this same program (`inject`, `sink`)
//! run inside their namespaces: our codec, UPDATEs encoded before the clock
//! starts, prefixes sharing attribute sets in groups of 16 with varied AS
//! paths and communities.
//!
//! ```text
//!  inj 10.0.1.2 ──── 10.0.1.1 dut 10.0.2.1 ──── 10.0.2.2 sink
//!  AS 65001            AS 64612 (daemon under test)   AS 65002
//! ```

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bgp::attribute::LargeCommunity;
use bgp::capability::Capability;
use bgp::{AfiSafi, AsPath, Context, Message, NextHop, Open, Origin, PathAttributes, Prefix};
use lab::{wait_for, Lab};

mod real;

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The i-th benchmark prefix: distinct /24s from 10.0.0.0 on (1M fit
/// below 26.0.0.0).
fn prefix(i: u32) -> Prefix {
    let a = 0x0a00_0000u32 + (i << 8);
    Prefix::new(Ipv4Addr::from(a).into(), 24).expect("valid /24")
}

/// The i-th IPv6 benchmark prefix: distinct /48s in 2a00::/16.
fn prefix6(i: u32) -> Prefix {
    let a = (0x2a00u128 << 112) | (u128::from(i) << 80);
    Prefix::new(Ipv6Addr::from(a).into(), 48).expect("valid /48")
}

/// Which benchmark prefix `p` is (`prefix` or `prefix6` of it), if it is
/// one.
fn plan_index(p: &Prefix) -> Option<u32> {
    match *p {
        Prefix::V4(a, 24) => {
            let x = u32::from(a).checked_sub(0x0a00_0000)?;
            Some(x >> 8)
        }
        Prefix::V6(a, 48) => {
            let a = u128::from(a);
            (a >> 112 == 0x2a00).then_some((a >> 80) as u32)
        }
        _ => None,
    }
}

/// The prefixes a receiver holds: a bit for each of the plan's first `n`
/// of each family, any other in a set. The receiver stands in for a router with a CPU of
/// its own; a bit costs it next to nothing, where a hash set of a million
/// entries missed the cache on every prefix and took a core from the
/// daemon under test at the end of each phase.
struct Held {
    /// IPv4, IPv6.
    bits: [Vec<u64>; 2],
    n: u32,
    len: usize,
    other: HashSet<Prefix>,
}

impl Held {
    fn new(n: usize) -> Held {
        Held {
            bits: [vec![0; n.div_ceil(64)], vec![0; n.div_ceil(64)]],
            n: u32::try_from(n).unwrap_or(u32::MAX),
            len: 0,
            other: HashSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.len + self.other.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&mut self, p: Prefix, on: bool) {
        match plan_index(&p).filter(|i| *i < self.n) {
            Some(i) => {
                let bits = &mut self.bits[usize::from(matches!(p, Prefix::V6(..)))];
                let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
                if (bits[w] & b != 0) != on {
                    bits[w] ^= b;
                    match on {
                        true => self.len += 1,
                        false => self.len -= 1,
                    }
                }
            }
            None if on => {
                self.other.insert(p);
            }
            None => {
                self.other.remove(&p);
            }
        }
    }
}

/// The injector's prefixes for its family: IPv4 /24s or IPv6 /48s.
fn family_prefix(next_hop: IpAddr) -> fn(u32) -> Prefix {
    match next_hop {
        IpAddr::V4(_) => prefix,
        IpAddr::V6(_) => prefix6,
    }
}

/// Attributes nearly unique per group `g`, as in a real table: AS paths
/// of 1 to 5 hops, a community on 30 %, a MED on the short paths.
fn diverse(g: u32) -> PathAttributes {
    let hops = 1 + g % 5;
    let mut path = vec![65001];
    let mut x = g;
    for _ in 1..hops {
        path.push(1000 + x % 60000);
        x = x / 7 + 13;
    }
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::from_sequence(path)),
        communities: if g % 10 < 3 {
            vec![(65001 << 16) | (g % 100)]
        } else {
            Vec::new()
        },
        med: (hops <= 2).then_some(g),
        ..Default::default()
    }
}

/// Pre-encoded UPDATEs: `share` prefixes per attribute set, the set of
/// each group `g` from `attrs(g)`.
fn encode_groups(
    n: u32,
    next_hop: IpAddr,
    share: u32,
    attrs: impl Fn(u32) -> PathAttributes,
) -> Vec<Vec<u8>> {
    let make = family_prefix(next_hop);
    let next_hop = match next_hop {
        IpAddr::V4(a) => NextHop::V4(a),
        IpAddr::V6(a) => NextHop::V6 {
            global: a,
            link_local: None,
        },
    };
    let cxt = Context::modern();
    let share = share.max(1);
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let ps: Vec<Prefix> = (i..(i + share).min(n)).map(make).collect();
        out.extend(bgp::update::encode_announce(
            &attrs(i / share),
            next_hop,
            &ps,
            &cxt,
        ));
        i += share;
    }
    out
}

/// Pre-encoded UPDATEs: `share` prefixes per attribute set, from
/// [`diverse`].
fn updates_sharing(n: u32, next_hop: IpAddr, share: u32) -> Vec<Vec<u8>> {
    encode_groups(n, next_hop, share, diverse)
}

/// Pre-encoded UPDATEs: groups of 16 prefixes per attribute set, with AS
/// paths `65001 X Y`, one community, a large community on every third set
/// and a MED on every fifth (the figures before real neighbours).
fn updates(n: u32, next_hop: IpAddr) -> Vec<Vec<u8>> {
    encode_groups(n, next_hop, 16, |g| PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::from_sequence([
            65001,
            100 + g % 1000,
            3000 + g % 777,
        ])),
        communities: vec![(65001 << 16) | (g % 50)],
        large_communities: if g % 3 == 0 {
            vec![LargeCommunity {
                global: 65001,
                local1: g % 7,
                local2: 1,
            }]
        } else {
            Vec::new()
        },
        med: (g % 5 == 0).then_some(g % 100),
        ..Default::default()
    })
}

fn open(asn: u32, id: Ipv4Addr, v6: bool) -> Vec<u8> {
    let family = if v6 {
        AfiSafi::IPV6_UNICAST
    } else {
        AfiSafi::IPV4_UNICAST
    };
    Message::Open(Open::new(
        asn,
        240,
        id,
        vec![Capability::Multiprotocol(family), Capability::RouteRefresh],
    ))
    .encode(&Context::default())
}

/// Reads whole messages; answers OPEN with KEEPALIVE. Calls `f` on each.
fn pump(s: &mut TcpStream, buf: &mut Vec<u8>, mut f: impl FnMut(&Message) -> bool) -> bool {
    let cxt = Context::modern();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        // What a read's messages used goes at once: the harness's own
        // work must stay small beside the daemon's.
        let mut at = 0;
        while let Ok(Some((m, used))) = Message::decode(&buf[at..], &cxt) {
            at += used;
            if let Message::Open(_) = m {
                let _ = s.write_all(&Message::Keepalive.encode(&cxt));
            }
            if let Message::Notification(n) = &m {
                eprintln!("NOTIFICATION {n}");
                return false;
            }
            if !f(&m) {
                return true;
            }
        }
        buf.drain(..at);
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn inject(args: &[String]) -> ExitCode {
    let connect = arg(args, "--connect").expect("--connect");
    let n: u32 = arg(args, "--prefixes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let id: Ipv4Addr = arg(args, "--id")
        .and_then(|v| v.parse().ok())
        .expect("--id");
    // The session's family follows the next hop (IPv4 by default).
    let next_hop: IpAddr = arg(args, "--next-hop")
        .and_then(|v| v.parse().ok())
        .unwrap_or(IpAddr::V4(id));
    // `--share K`: K prefixes per (nearly unique) attribute set; without
    // it, the groups of 16 the earlier figures used.
    let msgs = match arg(args, "--share").and_then(|v| v.parse().ok()) {
        Some(k) => updates_sharing(n, next_hop, k),
        None => updates(n, next_hop),
    };
    let all: Vec<Prefix> = (0..n).map(family_prefix(next_hop)).collect();
    let withdrawals = bgp::update::encode_withdraw(&all, &Context::modern());
    let flag = arg(args, "--withdraw-flag").map(PathBuf::from);
    let mut s = loop {
        match TcpStream::connect(&connect) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = s.set_nodelay(true);
    s.write_all(&open(65001, id, next_hop.is_ipv6()))
        .expect("send OPEN");
    let mut buf = Vec::new();
    let mut up = false;
    pump(&mut s, &mut buf, |m| {
        if let Message::Keepalive = m {
            up = true;
            return false;
        }
        true
    });
    if !up {
        eprintln!("inject: session did not come up");
        return ExitCode::FAILURE;
    }
    println!("START {}", now_nanos());
    let mut w = std::io::BufWriter::with_capacity(1 << 20, s.try_clone().expect("clone"));
    for m in &msgs {
        w.write_all(m).expect("send UPDATE");
    }
    w.flush().expect("flush");
    drop(w);
    println!("SENT {}", now_nanos());
    // Keep the session up (keepalives) until killed; withdraw everything
    // when the flag file appears.
    let mut last = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
    let mut chunk = [0u8; 4096];
    let mut withdrawn = false;
    loop {
        if !withdrawn && flag.as_ref().is_some_and(|f| f.exists()) {
            withdrawn = true;
            println!("WSTART {}", now_nanos());
            let mut w = std::io::BufWriter::with_capacity(1 << 20, s.try_clone().expect("clone"));
            for m in &withdrawals {
                w.write_all(m).expect("send withdrawal");
            }
            w.flush().expect("flush");
            println!("WSENT {}", now_nanos());
        }
        if last.elapsed() > Duration::from_secs(30) {
            let _ = s.write_all(&Message::Keepalive.encode(&Context::default()));
            last = Instant::now();
        }
        if let Ok(0) = s.read(&mut chunk) {
            return ExitCode::SUCCESS;
        }
    }
}

fn sink(args: &[String]) -> ExitCode {
    let listen = arg(args, "--listen").expect("--listen");
    let n: usize = arg(args, "--prefixes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let id: Ipv4Addr = arg(args, "--id")
        .and_then(|v| v.parse().ok())
        .expect("--id");
    let l = TcpListener::bind(&listen).expect("listen");
    let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
    let (mut s, _) = l.accept().expect("accept");
    s.write_all(&open(65002, id, v6)).expect("send OPEN");
    let mut buf = Vec::new();
    let mut have = Held::new(n);
    let mut announced = false;
    let mut full = false;
    let mut keepalive_at = Instant::now() + Duration::from_secs(30);
    let ok = pump(&mut s.try_clone().expect("clone"), &mut buf, |m| {
        if Instant::now() > keepalive_at {
            let _ = s.write_all(&Message::Keepalive.encode(&Context::default()));
            keepalive_at = Instant::now() + Duration::from_secs(30);
        }
        match m {
            Message::Keepalive if !announced => {
                announced = true;
                println!("ESTABLISHED {}", now_nanos());
            }
            Message::Update(u) => {
                for p in u.withdrawn_iter() {
                    have.set(p, false);
                }
                for (p, _) in u.announced_iter() {
                    have.set(p, true);
                }
                if !full && have.len() >= n {
                    full = true;
                    println!("DONE {}", now_nanos());
                }
                if full && have.is_empty() {
                    println!("WDONE {}", now_nanos());
                    return false;
                }
            }
            _ => {}
        }
        true
    });
    if !ok {
        eprintln!("sink: session ended with {} prefixes", have.len());
        return ExitCode::FAILURE;
    }
    // Stay until killed.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

struct Result {
    daemon: String,
    secs: f64,
    rss_mib: f64,
    /// RSS 2 s after the last prefix arrived.
    settled_mib: f64,
    /// Withdrawing all of them (not in `--kernel` runs).
    withdraw_secs: Option<f64>,
    /// CPU seconds over `KERNEL_IDLE` with the routes installed
    /// (`--kernel` runs only).
    idle_cpu: Option<f64>,
}

/// How often the daemons scan their kernel table in `--kernel` runs, and
/// how long the bench watches them idle with the routes installed.
const KERNEL_SCAN_SECS: u64 = 10;
const KERNEL_IDLE: Duration = Duration::from_secs(30);

fn wait_line(lab: &Lab, log: &str, key: &str, timeout: Duration) -> Option<u128> {
    wait_for(timeout, || {
        lab.log(log).lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.trim().parse::<u128>().ok())
        })
    })
}

/// Whether a lab host's kernel has a route to `a` (`ip route get`: one
/// lookup; the lab hosts have no default route).
fn routed(lab: &Lab, host: &str, a: Ipv4Addr) -> bool {
    std::process::Command::new("ip")
        .args(["-n", &lab.netns(host), "-4", "route", "get", &a.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Routes in the main IPv4 table of a lab host.
fn kernel_count(lab: &Lab, host: &str) -> usize {
    let o = std::process::Command::new("ip")
        .args([
            "-n",
            &lab.netns(host),
            "-4",
            "route",
            "show",
            "table",
            "main",
        ])
        .output();
    o.map(|o| o.stdout.iter().filter(|b| **b == b'\n').count())
        .unwrap_or(0)
}

fn bench_one(
    daemon: &str,
    tapir: &std::path::Path,
    n: u32,
    n6: u32,
    me: &str,
    kernel: bool,
) -> std::result::Result<Result, String> {
    let v6 = n6 > 0;
    let mut lab = Lab::new();
    for h in ["inj", "dut", "sink"] {
        lab.add_host(h);
    }
    lab.link("inj", "eth0", "dut", "inj0");
    lab.link("dut", "sink0", "sink", "eth0");
    lab.addr("inj", "eth0", "10.0.1.2/24");
    lab.addr("dut", "inj0", "10.0.1.1/24");
    lab.addr("dut", "sink0", "10.0.2.1/24");
    lab.addr("sink", "eth0", "10.0.2.2/24");
    if v6 {
        lab.addr("inj", "eth0", "fd00:1::2/64");
        lab.addr("dut", "inj0", "fd00:1::1/64");
        lab.addr("dut", "sink0", "fd00:2::1/64");
        lab.addr("sink", "eth0", "fd00:2::2/64");
    }
    for (h, d) in [
        ("inj", "eth0"),
        ("dut", "inj0"),
        ("dut", "sink0"),
        ("sink", "eth0"),
    ] {
        lab.up(h, d);
    }
    let ns = n.to_string();
    let ns6 = n6.to_string();
    let flag = lab.dir().join("withdraw.flag");
    // One receiver (and below one injector) per family: each session
    // carries one family, as the daemons' next hops are their own
    // addresses of that family.
    let mut sinks = vec![("sink.log", "10.0.2.2:179", "10.0.2.2", ns.as_str())];
    if v6 {
        sinks.push(("sink6.log", "[fd00:2::2]:179", "10.0.2.3", ns6.as_str()));
    }
    for (log, listen, id, count) in &sinks {
        lab.spawn(
            "sink",
            &[
                me,
                "sink",
                "--listen",
                listen,
                "--prefixes",
                count,
                "--id",
                id,
            ],
            log,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = start_dut(&mut lab, daemon, tapir, 65001, v6, kernel)?;
    let baseline = kernel_count(&lab, "dut");
    for (log, ..) in &sinks {
        if wait_line(&lab, log, "ESTABLISHED ", Duration::from_secs(60)).is_none() {
            return Err(format!(
                "{daemon}: no session to the receiver ({log})\n{}",
                lab.all_logs()
            ));
        }
    }
    let flag_arg = flag.to_string_lossy().into_owned();
    let mut injectors = vec![(
        "inject.log",
        "10.0.1.1:179",
        "10.0.1.2",
        "10.0.1.2",
        ns.as_str(),
    )];
    if v6 {
        injectors.push((
            "inject6.log",
            "[fd00:1::1]:179",
            "10.0.1.3",
            "fd00:1::2",
            ns6.as_str(),
        ));
    }
    for (log, connect, id, next_hop, count) in &injectors {
        lab.spawn(
            "inj",
            &[
                me,
                "inject",
                "--connect",
                connect,
                "--prefixes",
                count,
                "--id",
                id,
                "--next-hop",
                next_hop,
                "--withdraw-flag",
                &flag_arg,
            ],
            log,
        );
    }
    // The clock runs from the first injector's first UPDATE to the last
    // receiver's last prefix.
    let mut start = u128::MAX;
    for (log, ..) in &injectors {
        let t = wait_line(&lab, log, "START ", Duration::from_secs(60)).ok_or_else(|| {
            format!(
                "{daemon}: the injector's session did not come up ({log})\n{}",
                lab.all_logs()
            )
        })?;
        start = start.min(t);
    }
    let done = if kernel {
        // The clock stops when the last prefix sent is routed (a kernel
        // lookup, cheap: the daemons install in the order received), if
        // the whole table counted right after has all N; else when a
        // count first finds them all (a dump of 1M routes takes most of a
        // second, which would blur the time).
        let last = match prefix(n - 1) {
            Prefix::V4(a, _) => Ipv4Addr::from(u32::from(a) + 1),
            Prefix::V6(..) => unreachable!("IPv4 benchmark prefixes"),
        };
        let seen = wait_for(Duration::from_secs(600), || {
            routed(&lab, "dut", last).then(now_nanos)
        })
        .ok_or_else(|| format!("{daemon}: the last prefix did not reach the kernel in 600 s"))?;
        if kernel_count(&lab, "dut") >= baseline + n as usize {
            println!("  ({daemon}: the last prefix routed; all {n} there when counted after)");
            seen
        } else {
            println!("  ({daemon}: the last prefix routed before the others; timed by counting)");
            wait_for(Duration::from_secs(600), || {
                (kernel_count(&lab, "dut") >= baseline + n as usize).then(now_nanos)
            })
            .ok_or_else(|| format!("{daemon}: not all routes reached the kernel in 600 s"))?
        }
    } else {
        let mut done = 0;
        for (log, ..) in &sinks {
            let t = wait_line(&lab, log, "DONE ", Duration::from_secs(600))
                .ok_or_else(|| format!("{daemon}: not all prefixes arrived in 600 s ({log})"))?;
            done = done.max(t);
        }
        done
    };
    let rss = Lab::peak_rss_kib(pid).unwrap_or(0);
    // What stays once the burst is over: the tables themselves.
    std::thread::sleep(Duration::from_secs(2));
    let settled = Lab::rss_kib(pid).unwrap_or(0);
    let idle_cpu = kernel.then(|| {
        let c0 = real::cpu_secs(pid);
        std::thread::sleep(KERNEL_IDLE);
        real::cpu_secs(pid) - c0
    });
    let withdraw_secs = if kernel {
        None
    } else {
        std::fs::write(&flag, "").map_err(|e| e.to_string())?;
        let mut w_start = u128::MAX;
        for (log, ..) in &injectors {
            let t = wait_line(&lab, log, "WSTART ", Duration::from_secs(10))
                .ok_or_else(|| format!("{daemon}: the injector did not withdraw ({log})"))?;
            w_start = w_start.min(t);
        }
        let mut w_done = 0;
        for (log, ..) in &sinks {
            let t = wait_line(&lab, log, "WDONE ", Duration::from_secs(600))
                .ok_or_else(|| format!("{daemon}: not all withdrawals arrived in 600 s ({log})"))?;
            w_done = w_done.max(t);
        }
        Some(w_done.saturating_sub(w_start) as f64 / 1e9)
    };
    Ok(Result {
        daemon: daemon.to_string(),
        secs: (done.saturating_sub(start)) as f64 / 1e9,
        rss_mib: rss as f64 / 1024.0,
        settled_mib: settled as f64 / 1024.0,
        withdraw_secs,
        idle_cpu,
    })
}

/// Starts the daemon under test in `dut`: passive towards the injector
/// (AS `inj_as`, 10.0.1.2), connecting to the receiver (AS 65002,
/// 10.0.2.2); returns its pid.
fn start_dut(
    lab: &mut Lab,
    daemon: &str,
    tapir: &std::path::Path,
    inj_as: u32,
    v6: bool,
    kernel: bool,
) -> std::result::Result<u32, String> {
    // The configs below name the injector's AS as `{inj_as}`.
    let inj = |s: &str| s.replace("{inj_as}", &inj_as.to_string());
    let pid = match daemon {
        "tapir" => {
            let cfg = lab.write(
                "dut/tapir.toml",
                &inj("router-id = \"10.0.1.1\"\nlocal-as = 64612\n\n\
                 [[neighbor]]\nname = \"inj\"\naddress = \"10.0.1.2\"\nremote-as = {inj_as}\npassive = true\nhold-time = 240\n\n\
                 [[neighbor]]\nname = \"sink\"\naddress = \"10.0.2.2\"\nremote-as = 65002\nhold-time = 240\nexport = \"ALL\"\n\n\
                 [policy.ALL]\ndefault = \"accept\"\n\n[kernel]\ninstall = false\n"),
            );
            if v6 {
                let text = std::fs::read_to_string(&cfg).unwrap_or_default()
                    + &inj("\n[[neighbor]]\nname = \"inj6\"\naddress = \"fd00:1::2\"\nremote-as = {inj_as}\npassive = true\nhold-time = 240\n\n\
                       [[neighbor]]\nname = \"sink6\"\naddress = \"fd00:2::2\"\nremote-as = 65002\nhold-time = 240\nexport = \"ALL\"\n");
                std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
            }
            if kernel {
                let text = std::fs::read_to_string(&cfg)
                    .unwrap_or_default()
                    .replace(
                        "install = false",
                        &format!("install = true\nscan-interval = {KERNEL_SCAN_SECS}"),
                    )
                    .replace("passive = true\n", "passive = true\nkernel-import = true\n");
                std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
            }
            lab.tapir_with_log("dut", tapir, &cfg, "info").pid
        }
        "bird" => {
            let kernel_proto = if kernel {
                format!("protocol kernel {{ ipv4 {{ export all; }}; merge paths off; scan time {KERNEL_SCAN_SECS}; }}\n")
            } else {
                String::new()
            };
            lab.bird(
                "dut",
                &inj(&(kernel_proto.to_string() + "router id 10.0.1.1;\nprotocol device { }\n\
                 protocol bgp inj { local 10.0.1.1 as 64612; neighbor 10.0.1.2 as {inj_as}; passive on;\n  ipv4 { import all; export none; }; }\n\
                 protocol bgp sink { local 10.0.2.1 as 64612; neighbor 10.0.2.2 as 65002; connect delay time 0;\n  ipv4 { import none; export all; }; }\n"
                 + if v6 {
                    "protocol bgp inj6 { local fd00:1::1 as 64612; neighbor fd00:1::2 as {inj_as}; passive on;\n  ipv6 { import all; export none; }; }\n\
                     protocol bgp sink6 { local fd00:2::1 as 64612; neighbor fd00:2::2 as 65002; connect delay time 0;\n  ipv6 { import none; export all; }; }\n"
                 } else {
                    ""
                 })),
            )
            .pid
        }
        "frr" => {
            let v6_conf = if v6 {
                " neighbor fd00:1::2 remote-as {inj_as}\n neighbor fd00:1::2 passive\n neighbor fd00:2::2 remote-as 65002\n neighbor fd00:2::2 timers connect 1\n \
                 address-family ipv6 unicast\n  neighbor fd00:1::2 activate\n  neighbor fd00:2::2 activate\n exit-address-family\n"
            } else {
                ""
            };
            let v6_conf = inj(v6_conf);
            lab.frr_with(
                "dut",
                &format!("hostname dut\nrouter bgp 64612\n bgp router-id 10.0.1.1\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n \
                 neighbor 10.0.1.2 remote-as {inj_as}\n neighbor 10.0.1.2 passive\n neighbor 10.0.2.2 remote-as 65002\n neighbor 10.0.2.2 timers connect 1\n \
                 address-family ipv4 unicast\n  neighbor 10.0.1.2 activate\n  neighbor 10.0.2.2 activate\n exit-address-family\n{v6_conf}exit\n"),
                !kernel,
            );
            lab.frr_bgpd_pid.ok_or("no bgpd pid")?
        }
        "gobgp" if kernel => {
            return Err("gobgp: no kernel installation without zebra; left out".into())
        }
        "gobgp" => {
            let v6_conf = if v6 {
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"fd00:1::2\"\n    peer-as = {inj_as}\n\
                 [neighbors.transport.config]\n    passive-mode = true\n\
                 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n\
                 [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"fd00:2::2\"\n    peer-as = 65002\n\
                 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n"
            } else {
                ""
            };
            let g = lab.gobgp(
                "dut",
                &inj(&(String::from("[global.config]\n  as = 64612\n  router-id = \"10.0.1.1\"\n\
                 [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.0.1.2\"\n    peer-as = {inj_as}\n\
                 [neighbors.transport.config]\n    passive-mode = true\n\
                 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n\
                 [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.0.2.2\"\n    peer-as = 65002\n\
                 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n")
                    + v6_conf)),
            );
            g.pid
        }
        other => return Err(format!("unknown daemon {other}")),
    };
    Ok(pid)
}

fn run(args: &[String]) -> ExitCode {
    let Some(tapir) = arg(args, "--tapir").map(PathBuf::from) else {
        eprintln!(
            "usage: tapir-bench run --tapir PATH [--prefixes N] [--prefixes6 N] [--daemons tapir,bird,frr,gobgp] [--kernel]\n       tapir-bench run --tapir PATH [--prefixes N] [--daemons ...] --injector bird|frr|gobgp|own --receiver bird|frr|gobgp|own [--runs R] [--share K] [--withdraw session|updates]"
        );
        return ExitCode::FAILURE;
    };
    let count = |name: &str, default: u32, min: u32| match arg(args, name) {
        None => Ok(default),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (min..=1_000_000).contains(&n) => Ok(n),
            _ => Err(format!(
                "{name}: `{v}` is not a number from {min} to 1000000"
            )),
        },
    };
    let (n, n6) = match (count("--prefixes", 100_000, 1), count("--prefixes6", 0, 0)) {
        (Ok(n), Ok(n6)) => (n, n6),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let kernel = args.iter().any(|a| a == "--kernel");
    if kernel && n6 > 0 {
        eprintln!("--prefixes6: the kernel run installs IPv4 routes only");
        return ExitCode::FAILURE;
    }
    let daemons = arg(args, "--daemons").unwrap_or_else(|| {
        if kernel {
            "tapir,bird,frr"
        } else {
            "tapir,bird,frr,gobgp"
        }
        .into()
    });
    let me = std::env::current_exe().expect("own path");
    let me = me.to_string_lossy().into_owned();
    let real = [
        "--injector",
        "--receiver",
        "--runs",
        "--share",
        "--withdraw",
    ];
    if args.iter().any(|a| real.contains(&a.as_str())) {
        if kernel || n6 > 0 {
            eprintln!("--injector/--receiver runs are IPv4, without --kernel");
            return ExitCode::FAILURE;
        }
        return run_real(args, &tapir, &me, n, &daemons);
    }
    if kernel {
        println!("Kernel install: {n} IPv4 prefixes, injector -> daemon -> its kernel table, one run each");
    } else {
        let v6 = if n6 > 0 {
            format!(" + {n6} IPv6")
        } else {
            String::new()
        };
        println!(
            "B3 throughput: {n} IPv4{v6} prefixes, injector -> daemon -> receiver, one run each"
        );
    }
    let mut results = Vec::new();
    for d in daemons.split(',') {
        match bench_one(d, &tapir, n, n6, &me, kernel) {
            Ok(r) => {
                println!(
                    "  {:<6} {:>8.2} s  {:>8.0} prefixes/s  peak RSS {:>7.1} MiB  settled {:>7.1} MiB{}{}",
                    r.daemon,
                    r.secs,
                    f64::from(n + n6) / r.secs,
                    r.rss_mib,
                    r.settled_mib,
                    r.withdraw_secs
                        .map(|w| format!("  withdrawal {w:>6.2} s"))
                        .unwrap_or_default(),
                    r.idle_cpu
                        .map(|c| format!(
                            "  idle CPU {c:.2} s over {} s (scans every {KERNEL_SCAN_SECS} s)",
                            KERNEL_IDLE.as_secs()
                        ))
                        .unwrap_or_default()
                );
                results.push(r);
            }
            Err(e) => println!("  {d:<6} failed: {e}"),
        }
    }
    if let Some(t) = results.iter().find(|r| r.daemon == "tapir") {
        println!("ratios (other / tapir: above 1 means tapir is faster / smaller):");
        for r in results.iter().filter(|r| r.daemon != "tapir") {
            println!(
                "  {:<6} time x{:.2}  memory x{:.2}{}",
                r.daemon,
                r.secs / t.secs,
                r.rss_mib / t.rss_mib,
                match (r.withdraw_secs, t.withdraw_secs) {
                    (Some(a), Some(b)) => format!("  withdrawal x{:.2}", a / b),
                    _ => String::new(),
                }
            );
        }
    }
    ExitCode::SUCCESS
}

/// B3 with real neighbours ([`real`]): every daemon under test in turn,
/// `--runs` times, the daemons alternated.
fn run_real(args: &[String], tapir: &std::path::Path, me: &str, n: u32, daemons: &str) -> ExitCode {
    let kind = |name: &str| {
        arg(args, name)
            .unwrap_or_else(|| "bird".into())
            .parse::<real::Kind>()
    };
    let (injector, receiver) = match (kind("--injector"), kind("--receiver")) {
        (Ok(i), Ok(r)) => (i, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("--injector/--receiver {e}");
            return ExitCode::FAILURE;
        }
    };
    let num = |name: &str, default: u32, max: u32| match arg(args, name) {
        None => Ok(default),
        Some(v) => match v.parse::<u32>() {
            Ok(k) if (1..=max).contains(&k) => Ok(k),
            _ => Err(format!("{name}: `{v}` is not a number from 1 to {max}")),
        },
    };
    let (runs, share) = match (num("--runs", 3, 50), num("--share", 1, 1000)) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let withdraw = match arg(args, "--withdraw").as_deref() {
        None | Some("session") => real::Withdraw::Session,
        Some("updates") => real::Withdraw::Updates,
        Some(w) => {
            eprintln!("--withdraw `{w}`: session or updates");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "B3 with real neighbours: {n} IPv4 prefixes, {share} per attribute set; injector {injector} -> daemon -> receiver {receiver}; withdrawal by {}; {runs} runs each, daemons alternated",
        match withdraw {
            real::Withdraw::Session => "session loss",
            real::Withdraw::Updates => "UPDATEs",
        }
    );
    let names: Vec<&str> = daemons.split(',').collect();
    let mut all: Vec<Vec<real::Run>> = names.iter().map(|_| Vec::new()).collect();
    for r in 0..runs {
        for (d, runs_of) in names.iter().zip(all.iter_mut()) {
            let setup = real::Setup {
                daemon: d,
                tapir,
                me,
                injector,
                receiver,
                n,
                share,
                withdraw,
            };
            match real::run_once(&setup) {
                Ok(x) => {
                    println!(
                        "  run {} {:<6} converge {:>6.2} s  withdraw {:>6.2} s  peak RSS {:>7.1} MiB  CPU s: injector {:.2} daemon {:.2} receiver {:.2}  segments to receiver {}  withdrawal CPU s: daemon {:.2} receiver {:.2}",
                        r + 1, d, x.converge, x.withdraw, x.rss_mib, x.cpu_injector, x.cpu_dut, x.cpu_receiver, x.segments, x.withdraw_cpu_dut, x.withdraw_cpu_receiver
                    );
                    runs_of.push(x);
                }
                Err(e) => println!("  run {} {d:<6} failed: {e}", r + 1),
            }
        }
    }
    println!("summary (median / max over the runs that completed):");
    println!("  daemon  runs  converge s     withdraw s     peak RSS MiB  daemon CPU s  receiver CPU s  segments");
    let stats = |v: &[real::Run], f: fn(&real::Run) -> f64| {
        real::median_max(&v.iter().map(f).collect::<Vec<_>>())
    };
    let mut medians = Vec::new();
    for (d, v) in names.iter().zip(&all) {
        if v.is_empty() {
            println!("  {d:<6}  0");
            continue;
        }
        let c = stats(v, |x| x.converge);
        let w = stats(v, |x| x.withdraw);
        let m = stats(v, |x| x.rss_mib);
        let cd = stats(v, |x| x.cpu_dut);
        let cr = stats(v, |x| x.cpu_receiver);
        let sg = stats(v, |x| x.segments as f64);
        println!(
            "  {d:<6}  {:>4}  {:>5.2} / {:<5.2}  {:>5.2} / {:<5.2}  {:>6.1}        {:>5.2}         {:>5.2}           {:>8.0}",
            v.len(), c.0, c.1, w.0, w.1, m.1, cd.0, cr.0, sg.0
        );
        medians.push((*d, c.0, w.0, m.1, cd.0));
    }
    if let Some(t) = medians.iter().find(|x| x.0 == "tapir").copied() {
        println!("tapir / other (below 1: tapir faster, smaller):");
        for o in medians.iter().filter(|x| x.0 != "tapir") {
            println!(
                "  vs {:<6} converge x{:.2}  withdraw x{:.2}  peak RSS x{:.2}  daemon CPU x{:.2}",
                o.0,
                t.1 / o.1,
                t.2 / o.2,
                t.3 / o.3,
                t.4 / o.4
            );
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(&args),
        Some("inject") => inject(&args),
        Some("sink") => sink(&args),
        _ => {
            eprintln!("usage: tapir-bench run --tapir PATH [--prefixes N] [--prefixes6 N] [--daemons tapir,bird,frr,gobgp] [--kernel]\n       tapir-bench run --tapir PATH [--prefixes N] [--daemons ...] --injector bird|frr|gobgp|own --receiver bird|frr|gobgp|own [--runs R] [--share K] [--withdraw session|updates]");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiver finds every planned prefix at its own bit, and counts
    /// others (and repeats) as a set would.
    #[test]
    fn held_counts_as_a_set_does() {
        for i in [0, 1, 255, 999_999] {
            assert_eq!(plan_index(&prefix(i)), Some(i));
            assert_eq!(plan_index(&prefix6(i)), Some(i));
        }
        let mut h = Held::new(1000);
        let stray: Prefix = "192.0.2.0/24".parse().unwrap();
        for p in [prefix(0), prefix(999), prefix(1000), prefix6(0), stray] {
            h.set(p, true);
            h.set(p, true);
        }
        assert_eq!(h.len(), 5);
        for p in [prefix(0), prefix(999), prefix(1000), prefix6(0)] {
            h.set(p, false);
        }
        h.set(prefix(7), false);
        assert_eq!(h.len(), 1);
        h.set(stray, false);
        assert!(h.is_empty());
    }
}

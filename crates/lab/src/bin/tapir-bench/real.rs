//! B3 with real neighbours: the injector and the receiver are BIRD, FRR
//! or GoBGP themselves (or this program's own, `own`), so that what is
//! measured includes how a real speaker packs and paces its UPDATEs and
//! what a real receiver pays for what it is sent.
//!
//! ```text
//!  src 10.0.0.2 ── 10.0.0.1 inj 10.0.1.2 ── 10.0.1.1 dut 10.0.2.1 ── 10.0.2.2 rcv
//!  loader, AS 65001   AS 65010 (injector)    AS 64612 (under test)   AS 65002
//! ```
//!
//! The loader (`tapir-bench inject`) fills the injector daemon with N
//! prefixes while the injector's session to the daemon under test is off.
//! The clock starts when that session is Established (after it is turned
//! on) and the first 4 KiB of UPDATEs have reached the daemon under test
//! (BIRD as injector sits idle for up to 3 s after Established, whatever
//! the daemon), and stops when the receiver holds all N. Withdrawal is timed from
//! turning the session off (`session`: the daemon under test loses the
//! neighbor) or from the loader withdrawing everything (`updates`), until
//! the receiver holds none. Counts are read from each daemon's own CLI
//! every 20 ms.
//!
//! Printed per run: converge and withdrawal times, the daemon's peak RSS,
//! the CPU seconds of the injector, the daemon and the receiver while
//! converging, and the TCP segments the receiver got. A benchmark prints
//! numbers; it asserts nothing about time.

use std::process::Command;
use std::time::{Duration, Instant};

use lab::{wait_for, Lab};
use serde_json::Value;

/// Where a neighbour comes from: one of the daemons, or our own program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Own,
    Bird,
    Frr,
    Gobgp,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "own" => Ok(Kind::Own),
            "bird" => Ok(Kind::Bird),
            "frr" => Ok(Kind::Frr),
            "gobgp" => Ok(Kind::Gobgp),
            _ => Err(format!("`{s}`: one of own, bird, frr, gobgp")),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Own => "own",
            Kind::Bird => "bird",
            Kind::Frr => "frr",
            Kind::Gobgp => "gobgp",
        })
    }
}

/// How withdrawal is provoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdraw {
    /// The injector's session to the daemon under test goes down.
    Session,
    /// The injector withdraws every prefix by UPDATE.
    Updates,
}

/// A running neighbour daemon and how to ask it things.
enum Daemon {
    Bird(lab::bird::Bird),
    /// With bgpd's pid.
    Frr(lab::frr::Frr, u32),
    Gobgp(lab::gobgp::Gobgp),
}

impl Daemon {
    /// Prefixes in its BGP table (IPv4 unicast).
    fn count(&self) -> Option<usize> {
        match self {
            // The protocols' import counters, not `show route count`:
            // that walks the whole table, and asked every 20 ms it kept a
            // BIRD receiver with a million routes from reading its socket
            // for 70-80 ms at a time, slowing whichever daemon was tested.
            Daemon::Bird(b) => {
                let out = b.try_cmd(&["show", "protocols", "all"])?;
                let counts: Vec<usize> = out
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("Routes:"))
                    .filter_map(|r| r.split_whitespace().next()?.parse().ok())
                    .collect();
                (!counts.is_empty()).then(|| counts.iter().sum())
            }
            Daemon::Frr(f, _) => {
                let v: Value =
                    serde_json::from_str(&f.try_vtysh("show bgp ipv4 unicast summary json")?)
                        .ok()?;
                let peers = v
                    .get("peers")
                    .or_else(|| v.get("ipv4Unicast").and_then(|x| x.get("peers")))?;
                Some(
                    peers
                        .as_object()?
                        .values()
                        .filter_map(|p| p["pfxRcd"].as_u64())
                        .sum::<u64>() as usize,
                )
            }
            Daemon::Gobgp(g) => {
                let out = g.try_cli(&["global", "rib", "summary", "-a", "ipv4"])?;
                out.split("Destination:")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit() && c != ' ')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Daemon::Bird(b) => b.pid,
            Daemon::Frr(_, pid) => *pid,
            Daemon::Gobgp(g) => g.pid,
        }
    }

    /// Whether its session to `addr` (protocol `dut` in BIRD) is up.
    fn established(&self, addr: &str) -> bool {
        match self {
            Daemon::Bird(b) => b.is_established("dut"),
            Daemon::Frr(f, _) => f.neighbor_state(addr).as_deref() == Some("Established"),
            Daemon::Gobgp(g) => g.neighbor_state(addr) == Some(6),
        }
    }

    /// Turns the injector's session to the daemon under test on or off.
    fn session(&self, on: bool) {
        match self {
            Daemon::Bird(b) => {
                b.cmd(&[if on { "enable" } else { "disable" }, "dut"]);
            }
            Daemon::Frr(f, _) => {
                let line = if on {
                    "no neighbor 10.0.1.1 shutdown"
                } else {
                    "neighbor 10.0.1.1 shutdown"
                };
                f.configure(&["router bgp 65010", line]);
            }
            Daemon::Gobgp(g) => {
                if on {
                    g.cli(&["neighbor", "add", "10.0.1.1", "as", "64612"]);
                } else {
                    g.cli(&["neighbor", "del", "10.0.1.1"]);
                }
            }
        }
    }
}

/// FRR and the pid of the bgpd it just started.
fn frr(lab: &Lab, f: lab::frr::Frr) -> Daemon {
    Daemon::Frr(f, lab.frr_bgpd_pid.unwrap_or(0))
}

/// Starts the injector daemon in `inj`: it takes the loader's routes and
/// passes them on to the daemon under test once its session is on.
fn start_injector(lab: &mut Lab, kind: Kind) -> Daemon {
    match kind {
        Kind::Bird => Daemon::Bird(lab.bird(
            "inj",
            "router id 10.0.1.2;\nprotocol device { }\n\
             protocol bgp loader { local 10.0.0.1 as 65010; neighbor 10.0.0.2 as 65001; passive on; hold time 240;\n  ipv4 { import all; export none; }; }\n\
             protocol bgp dut { local 10.0.1.2 as 65010; neighbor 10.0.1.1 as 64612; disabled on; connect delay time 0; hold time 240;\n  ipv4 { import none; export all; }; }\n",
        )),
        Kind::Frr => {
            let f = lab.frr_with(
            "inj",
            "hostname inj\nrouter bgp 65010\n bgp router-id 10.0.1.2\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n \
             neighbor 10.0.0.2 remote-as 65001\n neighbor 10.0.0.2 passive\n neighbor 10.0.0.2 timers 80 240\n \
             neighbor 10.0.1.1 remote-as 64612\n neighbor 10.0.1.1 shutdown\n neighbor 10.0.1.1 timers connect 1\n \
             address-family ipv4 unicast\n  neighbor 10.0.0.2 activate\n  neighbor 10.0.1.1 activate\n exit-address-family\nexit\n",
            true,
        );
            frr(lab, f)
        }
        Kind::Gobgp => Daemon::Gobgp(lab.gobgp(
            "inj",
            "[global.config]\n  as = 65010\n  router-id = \"10.0.1.2\"\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.0.0.2\"\n    peer-as = 65001\n\
             [neighbors.transport.config]\n    passive-mode = true\n\
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n",
        )),
        Kind::Own => unreachable!("the own injector is a program, not a daemon"),
    }
}

/// Starts the receiver daemon in `rcv`.
fn start_receiver(lab: &mut Lab, kind: Kind) -> Daemon {
    match kind {
        Kind::Bird => Daemon::Bird(lab.bird(
            "rcv",
            "router id 10.0.2.2;\nprotocol device { }\n\
             protocol bgp dut { local 10.0.2.2 as 65002; neighbor 10.0.2.1 as 64612; hold time 240;\n  ipv4 { import all; export none; }; }\n",
        )),
        Kind::Frr => {
            let f = lab.frr_with(
            "rcv",
            "hostname rcv\nrouter bgp 65002\n bgp router-id 10.0.2.2\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n \
             neighbor 10.0.2.1 remote-as 64612\n neighbor 10.0.2.1 timers 80 240\n \
             address-family ipv4 unicast\n  neighbor 10.0.2.1 activate\n exit-address-family\nexit\n",
            true,
        );
            frr(lab, f)
        }
        Kind::Gobgp => Daemon::Gobgp(lab.gobgp(
            "rcv",
            "[global.config]\n  as = 65002\n  router-id = \"10.0.2.2\"\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.0.2.1\"\n    peer-as = 64612\n\
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n",
        )),
        Kind::Own => unreachable!("the own receiver is a program, not a daemon"),
    }
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc counts in clock ticks of 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// A counter of the network namespace process `pid` runs in, from
/// `/proc/PID/net/FILE` (`snmp` or `netstat`): the line pair starting
/// with `group`, the column `name`. No process is started to read it.
fn ns_counter(pid: u32, file: &str, group: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with(group));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// TCP segments received in the namespace of `pid` so far.
fn in_segments(pid: u32) -> u64 {
    ns_counter(pid, "snmp", "Tcp:", "InSegs")
}

/// IP bytes received in the namespace of `pid` so far.
fn in_octets(pid: u32) -> u64 {
    ns_counter(pid, "netstat", "IpExt:", "InOctets")
}

/// Polls `f` every 20 ms until it holds; the instant it was first seen
/// to hold.
fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Instant> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// One run's numbers.
pub struct Run {
    pub converge: f64,
    pub withdraw: f64,
    pub rss_mib: f64,
    pub cpu_injector: f64,
    pub cpu_dut: f64,
    pub cpu_receiver: f64,
    /// CPU seconds of the daemon and the receiver while withdrawing.
    pub withdraw_cpu_dut: f64,
    pub withdraw_cpu_receiver: f64,
    pub segments: u64,
}

/// What a run is: the daemon under test and its neighbours.
pub struct Setup<'a> {
    pub daemon: &'a str,
    pub tapir: &'a std::path::Path,
    pub me: &'a str,
    pub injector: Kind,
    pub receiver: Kind,
    pub n: u32,
    /// Prefixes per attribute set (1: nearly every prefix its own).
    pub share: u32,
    pub withdraw: Withdraw,
}

/// One run with fresh namespaces.
pub fn run_once(s: &Setup) -> Result<Run, String> {
    let mut lab = Lab::new();
    for h in ["src", "inj", "dut", "rcv"] {
        lab.add_host(h);
    }
    lab.link("src", "eth0", "inj", "src0");
    lab.link("inj", "dut0", "dut", "inj0");
    lab.link("dut", "rcv0", "rcv", "eth0");
    for (h, d, a) in [
        ("src", "eth0", "10.0.0.2/24"),
        ("inj", "src0", "10.0.0.1/24"),
        ("inj", "dut0", "10.0.1.2/24"),
        ("dut", "inj0", "10.0.1.1/24"),
        ("dut", "rcv0", "10.0.2.1/24"),
        ("rcv", "eth0", "10.0.2.2/24"),
    ] {
        lab.addr(h, d, a);
        lab.up(h, d);
    }
    let n = s.n as usize;
    let ns = s.n.to_string();
    let share = s.share.to_string();
    let flag = lab.dir().join("withdraw.flag");
    let flag_arg = flag.to_string_lossy().into_owned();

    // The receiver first, so that the daemon under test finds it.
    let mut sink_pid = 0;
    let receiver = match s.receiver {
        Kind::Own => {
            sink_pid = lab.spawn(
                "rcv",
                &[
                    s.me,
                    "sink",
                    "--listen",
                    "10.0.2.2:179",
                    "--prefixes",
                    &ns,
                    "--id",
                    "10.0.2.2",
                ],
                "sink.log",
            );
            None
        }
        k => Some(start_receiver(&mut lab, k)),
    };
    // The injector, filled by the loader before its session to the
    // daemon under test is on.
    let (inj_as, injector) = match s.injector {
        Kind::Own => (65001, None),
        k => (65010, Some(start_injector(&mut lab, k))),
    };
    if let Some(inj) = &injector {
        lab.spawn(
            "src",
            &[
                s.me,
                "inject",
                "--connect",
                "10.0.0.1:179",
                "--prefixes",
                &ns,
                "--id",
                "10.0.0.2",
                "--share",
                &share,
                "--withdraw-flag",
                &flag_arg,
            ],
            "load.log",
        );
        until(Duration::from_secs(600), || inj.count() >= Some(n)).ok_or_else(|| {
            format!(
                "{}: the injector never held {n}\n{}",
                s.injector,
                lab.all_logs()
            )
        })?;
    }
    // TAPIR_BENCH_PCAP=DIR: what the daemon under test gets and sends,
    // to DIR/DAEMON-in.pcap and DIR/DAEMON-out.pcap.
    if let Ok(dir) = std::env::var("TAPIR_BENCH_PCAP") {
        for (host, dev, side) in [("rcv", "eth0", "out"), ("inj", "dut0", "in")] {
            let file = format!("{dir}/{}-{side}.pcap", s.daemon);
            lab.spawn(
                host,
                &[
                    "tcpdump",
                    "-Z",
                    "root",
                    "-U",
                    "-i",
                    dev,
                    "-s",
                    "0",
                    "-w",
                    &file,
                    "tcp port 179",
                ],
                &format!("tcpdump-{side}.log"),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let dut = super::start_dut(&mut lab, s.daemon, s.tapir, inj_as, false, false)?;
    // TAPIR_BENCH_PERF=DIR: a CPU profile of the daemon under test, to
    // DIR/DAEMON.perf (perf record), for the whole run, or only while
    // withdrawing with TAPIR_BENCH_PERF_WITHDRAW=1.
    let profile = |lab: &mut Lab| {
        let dir = std::env::var("TAPIR_BENCH_PERF").ok()?;
        let file = format!("{dir}/{}.perf", s.daemon);
        let pid = dut.to_string();
        Some(lab.spawn(
            "dut",
            &[
                "perf",
                "record",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-p",
                &pid,
                "-o",
                &file,
            ],
            "perf.log",
        ))
    };
    let at_withdraw = std::env::var_os("TAPIR_BENCH_PERF_WITHDRAW").is_some();
    let mut perf = if at_withdraw { None } else { profile(&mut lab) };
    // The daemon under test and the receiver in session.
    let up = match &receiver {
        None => {
            super::wait_line(&lab, "sink.log", "ESTABLISHED ", Duration::from_secs(60)).is_some()
        }
        Some(r) => until(Duration::from_secs(60), || r.established("10.0.2.1")).is_some(),
    };
    if !up {
        return Err(format!(
            "{}: no session to the receiver\n{}",
            s.daemon,
            lab.all_logs()
        ));
    }
    let count = |r: &Option<Daemon>| r.as_ref().and_then(Daemon::count);
    let pids = |inj: u32| (cpu_secs(inj), cpu_secs(dut));
    let inj_pid = injector.as_ref().map_or(0, Daemon::pid);
    let rcv_pid = receiver.as_ref().map_or(sink_pid, Daemon::pid);
    let segs0 = in_segments(rcv_pid);
    let (ci0, cd0) = pids(inj_pid);
    let cr0 = cpu_secs(rcv_pid);

    // Converge.
    let start = match &injector {
        Some(inj) => {
            inj.session(true);
            until(Duration::from_secs(60), || inj.established("10.0.1.1")).ok_or_else(|| {
                format!(
                    "{}: the injector's session did not come up\n{}",
                    s.daemon,
                    lab.all_logs()
                )
            })?;
            // The clock starts when the UPDATEs start to arrive (BIRD as
            // injector may sit idle for up to its 3 s poll timeout after
            // Established, whatever the daemon under test).
            let base = in_octets(dut);
            let end = Instant::now() + Duration::from_secs(60);
            loop {
                if in_octets(dut) > base + 4096 || Instant::now() > end {
                    break Instant::now();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        None => {
            lab.spawn(
                "inj",
                &[
                    s.me,
                    "inject",
                    "--connect",
                    "10.0.1.1:179",
                    "--prefixes",
                    &ns,
                    "--id",
                    "10.0.1.2",
                    "--share",
                    &share,
                    "--withdraw-flag",
                    &flag_arg,
                ],
                "inject.log",
            );
            let t = super::wait_line(&lab, "inject.log", "START ", Duration::from_secs(60))
                .ok_or_else(|| format!("{}: the injector's session did not come up", s.daemon))?;
            Instant::now() - Duration::from_nanos((super::now_nanos().saturating_sub(t)) as u64)
        }
    };
    let done = match &receiver {
        Some(_) => until(Duration::from_secs(600), || count(&receiver) >= Some(n)),
        None => super::wait_line(&lab, "sink.log", "DONE ", Duration::from_secs(600)).map(|t| {
            Instant::now() - Duration::from_nanos((super::now_nanos().saturating_sub(t)) as u64)
        }),
    }
    .ok_or_else(|| {
        format!(
            "{}: the receiver never held {n}\n{}",
            s.daemon,
            lab.all_logs()
        )
    })?;
    let (ci1, cd1) = pids(inj_pid);
    let cr1 = cpu_secs(rcv_pid);
    let segments = in_segments(rcv_pid) - segs0;
    let rss = Lab::peak_rss_kib(dut).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));

    // Withdraw.
    if at_withdraw {
        perf = profile(&mut lab);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (wd0, wr0) = (cpu_secs(dut), cpu_secs(rcv_pid));
    let w_start = Instant::now();
    match (s.withdraw, &injector) {
        (Withdraw::Session, Some(inj)) => inj.session(false),
        (Withdraw::Session, None) => {
            // Our injector leaves: the session ends with its socket.
            let _ = Command::new("pkill")
                .args(["-f", "inject --connect 10.0.1.1"])
                .status();
        }
        (Withdraw::Updates, _) => std::fs::write(&flag, "").map_err(|e| e.to_string())?,
    }
    let w_done = match &receiver {
        Some(_) => until(Duration::from_secs(600), || count(&receiver) == Some(0)),
        None => wait_for(Duration::from_secs(600), || {
            lab.log("sink.log").contains("WDONE").then(Instant::now)
        }),
    }
    .ok_or_else(|| format!("{}: the receiver still holds routes after 600 s", s.daemon))?;
    if let Some(p) = perf {
        let _ = Command::new("kill").args(["-INT", &p.to_string()]).status();
        std::thread::sleep(Duration::from_secs(3));
    }
    Ok(Run {
        converge: done.duration_since(start).as_secs_f64(),
        withdraw: w_done.duration_since(w_start).as_secs_f64(),
        rss_mib: rss as f64 / 1024.0,
        cpu_injector: ci1 - ci0,
        cpu_dut: cd1 - cd0,
        cpu_receiver: cr1 - cr0,
        withdraw_cpu_dut: cpu_secs(dut) - wd0,
        withdraw_cpu_receiver: cpu_secs(rcv_pid) - wr0,
        segments,
    })
}

/// The median and the largest of some numbers.
pub fn median_max(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = match s.len() {
        0 => 0.0,
        l if l % 2 == 1 => s[l / 2],
        l => (s[l / 2 - 1] + s[l / 2]) / 2.0,
    };
    (m, s.last().copied().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_kinds() {
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(median_max(&[4.0, 1.0, 2.0, 3.0]), (2.5, 4.0));
        assert_eq!("bird".parse::<Kind>(), Ok(Kind::Bird));
        assert!("quagga".parse::<Kind>().unwrap_err().contains("one of"));
    }
}

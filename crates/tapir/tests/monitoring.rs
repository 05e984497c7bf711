//! What the fleet's monitoring sees: Debian's Prometheus server scrapes a
//! lab tapir, with contrib/prometheus/tapir.rules.yml loaded (its
//! durations shortened), while the scenario makes every alert's condition
//! happen; every alert must fire, and every query of the Grafana dashboard
//! (contrib/grafana/tapir.json) must return data. The alerts' own logic,
//! at their real durations, is promtool's unit test (the first test).
//! Needs root, promtool and prometheus (scripts/setup installs them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lab::reference;
use lab::tor::{self, Kind};
use lab::{wait_for, Lab};
use serde_json::Value;

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);
const METRICS: &str = "127.0.0.1:9179";
const PROMETHEUS: &str = "127.0.0.1:9090";

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(rel)
}

fn example() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(contrib("prometheus/tapir.rules.yml"))
        .output()
        .expect("promtool (scripts/setup installs it)");
    assert!(o.status.success(), "{o:?}");
    let o = Command::new("promtool")
        .args(["test", "rules"])
        .arg(contrib("prometheus/tapir.tests.yml"))
        .output()
        .expect("promtool");
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && out.contains("SUCCESS"), "{out}");
    // Every alert of the rules file has a case in the unit tests.
    let tests = std::fs::read_to_string(contrib("prometheus/tapir.tests.yml")).unwrap();
    for a in alert_names() {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "no promtool case for {a}"
        );
    }
}

/// The alerts the rules file defines.
fn alert_names() -> BTreeSet<String> {
    std::fs::read_to_string(contrib("prometheus/tapir.rules.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_string))
        .collect()
}

/// The rules with their waits cut to seconds, so that the lab sees each
/// fire: every `for:` 4 s; the flaps' 15 minutes 5 (three resets of a
/// BIRD session may take a minute or two: BIRD waits before it takes a
/// reset session again), the other ranges 40 s.
fn shortened_rules() -> String {
    let text = std::fs::read_to_string(contrib("prometheus/tapir.rules.yml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 4s", &line[..line.len() - line.trim_start().len()]),
            None => line.replace("[15m]", "[5m]").replace("[10m]", "[40s]"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert!(!out.contains("for: 2h") && !out.contains("[15m]"));
    out
}

/// Every query of the dashboard, with its variables given values.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana/tapir.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            out.push((
                p["title"].as_str().unwrap().to_string(),
                expr.replace("$instance", ".*")
                    .replace("$__rate_interval", "40s"),
            ));
        }
    }
    assert!(out.len() >= 15, "{out:?}");
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prom<'a> {
    lab: &'a Lab,
}

impl Prom<'_> {
    fn get(&self, path: &str) -> Option<Value> {
        let body = self
            .lab
            .http_get("hv1", Path::new(TAPIR), PROMETHEUS, path)?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The series an instant query returns.
    fn query(&self, q: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/query?query={}", urlencode(q)))
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Alerts firing now, by name.
    fn firing(&self) -> BTreeSet<String> {
        self.get("/api/v1/alerts")
            .and_then(|d| d["alerts"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect()
    }
}

/// Waits until `name` fires; adds every alert firing then to `fired`.
fn wait_fired(fired: &mut BTreeSet<String>, name: &str, prom: &Prom) {
    let now = wait_for(WAIT, || {
        let f = prom.firing();
        f.contains(name).then_some(f)
    })
    .unwrap_or_else(|| panic!("{name} never fired: {:?}", prom.firing()));
    fired.extend(now);
}

#[test]
fn prometheus_fires_every_alert_and_fills_every_panel() {
    let mut lab = reference::standard(&[11, 13]);
    let tor = tor::start(&mut lab, Kind::Bird);
    // vm11 runs BFD (multihop, as the reference config's sessions are).
    let vm_cfg = reference::vm_bird_config_with(11, 64613, &["10.3.0.1/32"], "bfd on;").replace(
        "protocol device { }",
        "protocol device { }\nprotocol bfd { multihop { interval 300 ms; multiplier 3; }; }",
    );
    let vm11 = lab.bird("vm11", &vm_cfg);
    // vm13 announces what it may not, and runs no BFD although its group
    // asks for it.
    let _vm13 = reference::vm_bird(&mut lab, 13, &["10.99.0.0/24"]);
    let stall = lab.dir().join("rib-stall");
    let base = example()
        .replace(
            "graceful-restart-time = 120",
            "graceful-restart-time = 120\nbfd = true",
        )
        .replace("scan-interval = 60", "scan-interval = 2")
        + &format!("\n[metrics]\nlisten = \"{METRICS}\"\n");
    assert!(base.contains("\nbfd = true") && base.contains("scan-interval = 2"));
    let cfg = lab.write("hv1/tapir.toml", &base);
    // The kernel refuses vm11's route for as long as the test runs; the
    // Loc-RIB stalls while the stall file exists.
    let failpoints = format!(
        "TAPIR_FAILPOINT=kernel-refuse:10.3.0.1/32:1000000,rib-stall:{}",
        stall.display()
    );
    let t = lab.tapir_with_env("hv1", Path::new(TAPIR), &cfg, "debug", &[&failpoints]);
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));

    // Prometheus in hv1's namespace: scrapes every 2 s, evaluates every 1 s.
    let rules = lab.write("prom/tapir.rules.yml", &shortened_rules());
    let prom_cfg = lab.write(
        "prom/prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 1900ms\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tapir\n    static_configs:\n      - targets: ['{METRICS}']\n",
            rules.display()
        ),
    );
    let data = lab.dir().join("prom/data");
    lab.spawn(
        "hv1",
        &[
            "prometheus",
            &format!("--config.file={}", prom_cfg.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address={PROMETHEUS}"),
        ],
        "prometheus.log",
    );
    let prom = Prom { lab: &lab };
    wait_for(WAIT, || {
        let up = prom.query("up{job=\"tapir\"} == 1");
        (!up.is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "Prometheus never scraped tapir\n{}",
            lab.log("prometheus.log")
        )
    });
    let rules_loaded = prom.get("/api/v1/rules").unwrap();
    let loaded = rules_loaded["groups"][0]["rules"].as_array().unwrap().len();
    assert_eq!(loaded, alert_names().len(), "{rules_loaded}");

    let mut fired = BTreeSet::new();

    // The kernel refuses vm11's route.
    wait_fired(&mut fired, "TapirKernelInstallsFailing", &prom);

    // A drain left in place.
    let (ok, _, err) = t.cli(&["drain", "recdns1001"]);
    assert!(ok, "{err}");
    wait_fired(&mut fired, "TapirVmDrainForgotten", &prom);

    // An upstream neighbor down.
    let (ok, _, err) = t.cli(&["neighbor", "disable", "tor-v4"]);
    assert!(ok, "{err}");
    wait_fired(&mut fired, "TapirUpstreamSessionDown", &prom);

    // A change that waits for a restart, then a file that does not parse.
    let cfg_path = lab.write(
        "hv1/tapir.toml",
        &base.replace(
            "router-id = \"10.192.21.6\"",
            "router-id = \"10.192.21.99\"",
        ),
    );
    assert_ne!(
        std::fs::read_to_string(&cfg_path).unwrap(),
        base,
        "router-id not found"
    );
    assert_eq!(t.cli_code(&["reload"]).0, Some(2));
    wait_fired(&mut fired, "TapirRestartPending", &prom);
    lab.write("hv1/tapir.toml", "local-as = \n");
    assert_eq!(t.cli_code(&["reload"]).0, Some(1));
    wait_fired(&mut fired, "TapirReloadFailed", &prom);

    // vm13 holds a refused route; its BFD never comes up.
    wait_fired(&mut fired, "TapirPrefixesRefused", &prom);
    wait_fired(&mut fired, "TapirBfdNotUp", &prom);

    // vm11's session reset three times.
    for _ in 0..3 {
        let (ok, _, err) = t.cli(&["neighbor", "restart", "recdns1001"]);
        assert!(ok, "{err}");
        // BIRD may wait out its error delay before it takes the session
        // again.
        wait_for(Duration::from_secs(90), || {
            std::thread::sleep(Duration::from_millis(500));
            t.json("peers")
                .as_array()?
                .iter()
                .any(|p| p["name"] == "recdns1001" && p["state"] == "Established")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{}", t.show(&["peers"])));
    }
    wait_fired(&mut fired, "TapirVmSessionFlapping", &prom);

    // Every panel of the dashboard has data now (BFD is up with vm11,
    // the kernel error counted, vm11 drained, tor-v4 down).
    wait_for(WAIT, || {
        prom.query("tapir_bfd_session_up == 1").first().cloned()
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["bfd"])));
    let empty: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .filter(|(_, q)| prom.query(q).is_empty())
        .collect();
    assert!(empty.is_empty(), "panels without data: {empty:?}");

    // A failure BFD detects: vm11's BIRD frozen, then thawed.
    lab.exec("vm11", &["kill", "-STOP", &vm11.pid.to_string()]);
    let bfd = wait_for(WAIT, || {
        prom.firing().contains("TapirBfdFailure").then_some(())
    });
    lab.exec("vm11", &["kill", "-CONT", &vm11.pid.to_string()]);
    assert!(bfd.is_some(), "{:?}\n{}", prom.firing(), t.show(&["bfd"]));
    fired.insert("TapirBfdFailure".into());

    // The Loc-RIB stalls (at its next message: a scrape's); tor-v4 comes
    // back meanwhile, and its routes wait for the Loc-RIB.
    std::fs::write(&stall, "").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, _, err) = t.cli(&["neighbor", "enable", "tor-v4"]);
    assert!(ok, "{err}");
    let backlog = wait_for(WAIT, || {
        prom.firing().contains("TapirRibBacklog").then_some(())
    });
    std::fs::remove_file(&stall).unwrap();
    assert!(backlog.is_some(), "{:?}", prom.firing());
    fired.insert("TapirRibBacklog".into());

    // tapir gone.
    Command::new("kill")
        .args(["-KILL", &t.pid.to_string()])
        .status()
        .unwrap();
    wait_fired(&mut fired, "TapirDown", &prom);

    assert_eq!(fired, alert_names());
}

/// Runs `tapir run` as under systemd, with a journald of its own: a
/// private /run/systemd and /run/log in a mount namespace of its own
/// (with the cgroup hierarchy, which `ip netns exec`'s fresh /sys lacks
/// and journald needs), systemd-journald started there, then tapir with
/// `$JOURNAL_STREAM` set. Anything but `run` is the plain CLI.
const UNDER_JOURNALD: &str = r#"#!/bin/bash
[ "$1" = run ] || exec @TAPIR@ "$@"
exec unshare -m bash -c '
  set -e
  mkdir -p /run/systemd /run/log
  mount -t tmpfs tmpfs /run/systemd
  mount -t tmpfs tmpfs /run/log
  mkdir -p /run/systemd/journal
  mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
  /lib/systemd/systemd-journald &
  for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
  exec env JOURNAL_STREAM=8:8 @TAPIR@ "$@"' bash "$@"
"#;

/// The journal entries of tapir's process that match `filters`
/// (`FIELD=value`), read by journalctl in tapir's mount namespace.
fn journal(pid: u32, filters: &[&str]) -> Vec<Value> {
    let pid_s = pid.to_string();
    let pid_filter = format!("_PID={pid}");
    let mut args = vec![
        "-t",
        &pid_s,
        "-m",
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        pid_filter.as_str(),
    ];
    args.extend_from_slice(filters);
    let o = Command::new("nsenter")
        .args(&args)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn under_systemd_every_field_is_a_journal_field() {
    let mut lab = reference::standard(&[11, 13]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let _vm13 = reference::vm_bird(&mut lab, 13, &["10.99.0.0/24"]);
    let script = lab.write(
        "hv1/under-journald",
        &UNDER_JOURNALD.replace("@TAPIR@", TAPIR),
    );
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir_with_env("hv1", &script, &cfg, "info", &[]);
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));

    // One session's lines by its name: `journalctl -u tapir PEER=tor-v4`.
    let tor_v4 = wait_for(WAIT, || {
        let e = journal(t.pid, &["PEER=tor-v4"]);
        e.into_iter().find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("session established"))
        })
    })
    .unwrap_or_else(|| panic!("{:?}", journal(t.pid, &[])));
    assert_eq!(tor_v4["PEER"], "tor-v4", "{tor_v4}");
    assert_eq!(tor_v4["SYSLOG_IDENTIFIER"], "tapir", "{tor_v4}");
    assert_eq!(tor_v4["PRIORITY"], "6", "{tor_v4}");
    // The message itself names the session too (plain `journalctl -u tapir`).
    assert!(
        tor_v4["MESSAGE"].as_str().unwrap().contains("peer=tor-v4"),
        "{tor_v4}"
    );
    assert!(journal(t.pid, &["PEER=tor-v4"])
        .iter()
        .all(|e| e["PEER"] == "tor-v4"));
    // The VM's session: by its tap and by its name; a route by its prefix.
    let vm = journal(t.pid, &["INTERFACE=tap11"]);
    assert!(
        vm.iter()
            .any(|e| e["PEER"] == "recdns1001" && e["ADDRESS"] == "10.192.24.11"),
        "{vm:?}"
    );
    let refused = wait_for(WAIT, || {
        journal(t.pid, &["PREFIX=10.99.0.0/24"])
            .into_iter()
            .find(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.contains("route refused"))
            })
    })
    .unwrap_or_else(|| panic!("{:?}", journal(t.pid, &["INTERFACE=tap13"])));
    assert_eq!(refused["INTERFACE"], "tap13", "{refused}");
    assert!(refused["REASON"].is_string(), "{refused}");
    // A warning is priority 4: a refused reload.
    lab.write("hv1/tapir.toml", "local-as = \n");
    assert_eq!(t.cli_code(&["reload"]).0, Some(1));
    let warned = wait_for(WAIT, || {
        let e = journal(t.pid, &["PRIORITY=4"]);
        e.iter()
            .any(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.contains("reload refused"))
            })
            .then_some(())
    });
    assert!(warned.is_some(), "{:?}", journal(t.pid, &[]));
    // Nothing went to stderr meanwhile: the journal has it all.
    assert!(
        !lab.log(&t.log).contains("session established"),
        "{}",
        lab.log(&t.log)
    );
}

/// The systemd watchdog: with `$WATCHDOG_USEC` (1 s here) tapir pings
/// `$NOTIFY_SOCKET` several times a second, stops while the Loc-RIB is
/// stalled (the `rib-stall` failpoint), says which part, and pings again
/// once it answers.
#[test]
fn the_watchdog_pings_only_while_every_part_answers() {
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let notify = lab.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let heard: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let (heard, done) = (heard.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    heard.lock().unwrap().push((Instant::now(), msg));
                }
            }
        })
    };
    let pings_since = |t0: Instant| {
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, m)| *at >= t0 && m == "WATCHDOG=1")
            .count()
    };
    let stall = lab.dir().join("rib-stall");
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir_with_env(
        "hv1",
        Path::new(TAPIR),
        &cfg,
        "info",
        &[
            &format!("NOTIFY_SOCKET={}", notify.display()),
            "WATCHDOG_USEC=1000000",
            &format!("TAPIR_FAILPOINT=rib-stall:{}", stall.display()),
        ],
    );
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    let start = Instant::now();
    wait_for(WAIT, || (pings_since(start) >= 4).then_some(()))
        .unwrap_or_else(|| panic!("no pings: {:?}", heard.lock().unwrap()));

    // The Loc-RIB stalls at its next message (the watchdog's own
    // question): the pings stop, and the log says which part.
    std::fs::write(&stall, "").unwrap();
    wait_for(WAIT, || {
        lab.log(&t.log)
            .contains("systemd watchdog: a part does not answer")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", lab.log(&t.log)));
    let quiet = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pings_since(quiet), 0, "{:?}", heard.lock().unwrap());
    let log = lab.log(&t.log);
    assert!(
        log.contains("part=\"the Loc-RIB thread\"") || log.contains("part=the Loc-RIB thread"),
        "{log}"
    );

    // It answers again: so do the pings.
    std::fs::remove_file(&stall).unwrap();
    let again = Instant::now();
    wait_for(WAIT, || (pings_since(again) >= 2).then_some(()))
        .unwrap_or_else(|| panic!("pings did not resume: {}", lab.log(&t.log)));
    assert!(lab.log(&t.log).contains("pings resumed"));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
}

const BMP_COLLECTOR: &str = "127.0.0.1:1790";

/// What pmbmpd logged, one JSON object a line.
fn bmp_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// pmbmpd's records of one BMP message type (`route_monitor`,
/// `peer_up`, `peer_down`, `stats`, `init`, `term`) about `peer`.
fn bmp_of<'a>(log: &'a [Value], kind: &str, peer: Option<&str>) -> Vec<&'a Value> {
    log.iter()
        .filter(|r| r["bmp_msg_type"] == kind)
        .filter(|r| peer.is_none_or(|p| r["peer_ip"] == p))
        .collect()
}

/// Starts Debian's pmbmpd in hv1, listening on `BMP_COLLECTOR`, logging
/// every BMP message as JSON to `<lab>/<name>.json` (its own output to
/// `<name>.log`); returns that file and its pid.
fn pmbmpd(lab: &mut Lab, name: &str) -> (PathBuf, u32) {
    let out = lab.dir().join(format!("{name}.json"));
    let cfg = lab.write(
        &format!("{name}.conf"),
        &format!(
            "bmp_daemon_ip: 127.0.0.1\nbmp_daemon_port: 1790\n\
             bmp_daemon_msglog_file: {}\nbmp_daemon_msglog_output: json\n",
            out.display()
        ),
    );
    let pid = lab.spawn(
        "hv1",
        &["pmbmpd", "-f", &cfg.display().to_string()],
        &format!("{name}.log"),
    );
    (out, pid)
}

/// The prefixes pmbmpd holds announced for `peer` in one view
/// (`post`: after policy), its log replayed in order.
fn bmp_view(log: &[Value], peer: &str, post: bool) -> BTreeSet<String> {
    let mut view = BTreeSet::new();
    for r in bmp_of(log, "route_monitor", Some(peer)) {
        if r["is_post"].as_i64() != Some(i64::from(post)) {
            continue;
        }
        let Some(p) = r["ip_prefix"].as_str() else {
            continue;
        };
        match r["log_type"].as_str() {
            Some("withdraw") => view.remove(p),
            _ => view.insert(p.to_string()),
        };
    }
    view
}

#[test]
fn a_bmp_collector_sees_every_vm_session_and_its_refused_routes() {
    let mut lab = reference::standard(&[11, 13]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm11 = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    // vm13 announces what its inventory entry does not allow.
    let _vm13 = reference::vm_bird(&mut lab, 13, &["10.99.0.0/24"]);
    let cfg =
        example() + &format!("\n[[bmp]]\naddress = \"{BMP_COLLECTOR}\"\nstatistics-interval = 2\n");
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    // tapir starts before the collector: it keeps trying.
    let t = lab.tapir_with_log("hv1", Path::new(TAPIR), &cfg, "debug");
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    wait_for(WAIT, || {
        (t.peer_state("tap13").as_deref() == Some("Established")).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["peers"])));

    let (out, collector) = pmbmpd(&mut lab, "bmp");
    let (vm11, vm13) = (reference::vm_v4(11), reference::vm_v4(13));
    // The whole state once it connects: vm11's route in both views,
    // vm13's only before policy, both sessions up, and statistics.
    let dumped = wait_for(Duration::from_secs(60), || {
        let log = bmp_log(&out);
        let ok = bmp_view(&log, &vm11, false).contains("10.3.0.1/32")
            && bmp_view(&log, &vm11, true).contains("10.3.0.1/32")
            && bmp_view(&log, &vm13, false).contains("10.99.0.0/24")
            && !bmp_of(&log, "stats", Some(&vm13)).is_empty();
        ok.then_some(log)
    })
    .unwrap_or_else(|| {
        panic!(
            "pmbmpd's log:\n{}\npmbmpd:\n{}\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            lab.log("bmp.log"),
            lab.all_logs()
        )
    });
    let text = serde_json::to_string(&dumped).unwrap();
    assert!(
        !bmp_view(&dumped, &vm13, true).contains("10.99.0.0/24"),
        "vm13's refused route is in the post-policy view: {text}"
    );
    assert_eq!(bmp_of(&dumped, "init", None).len(), 1, "{text}");
    // Peer Up names the session's VM and tap.
    let up = bmp_of(&dumped, "peer_up", Some(&vm11));
    assert!(
        up.iter()
            .any(|u| u.to_string().contains("vm=recdns1001") && u["local_ip"] == "10.192.24.1"),
        "{up:?}"
    );
    // The refused prefix is counted (type 0) and so is its reason (not
    // the VM's to announce: 65531).
    let stats = bmp_of(&dumped, "stats", Some(&vm13));
    // pmbmpd shows the value of a type it does not know in hex
    // ("00-00-00-02").
    let value = |v: &Value| {
        v.as_i64().or_else(|| {
            let hex: String = v.as_str()?.split('-').collect();
            i64::from_str_radix(&hex, 16).ok()
        })
    };
    let counted = |t: i64| {
        stats
            .iter()
            .any(|s| s["counter_type"] == t && value(&s["counter_value"]) >= Some(1))
    };
    assert!(counted(0) && counted(65531), "{stats:?}");

    // As it happens: vm13's session reset by the operator is a Peer Down
    // (we sent a NOTIFICATION: reason 1), then Up again with its routes.
    let ups = bmp_of(&dumped, "peer_up", Some(&vm13)).len();
    let (ok, _, err) = t.cli(&["neighbor", "restart", "tap13"]);
    assert!(ok, "{err}");
    let log = wait_for(Duration::from_secs(90), || {
        let log = bmp_log(&out);
        let again = bmp_of(&log, "peer_up", Some(&vm13)).len() > ups;
        again.then_some(log)
    })
    .unwrap_or_else(|| panic!("{}", std::fs::read_to_string(&out).unwrap_or_default()));
    let down = bmp_of(&log, "peer_down", Some(&vm13));
    assert!(down.iter().any(|d| d["reason_type"] == 1), "{down:?}");

    // The collector restarts: tapir connects again and sends the whole
    // state again, to the new collector's own log.
    lab.kill(collector);
    let (out2, _) = pmbmpd(&mut lab, "bmp2");
    wait_for(Duration::from_secs(90), || {
        let log = bmp_log(&out2);
        let ok = !bmp_of(&log, "init", None).is_empty()
            && bmp_view(&log, &vm11, true).contains("10.3.0.1/32")
            && bmp_view(&log, &vm13, false).contains("10.99.0.0/24");
        ok.then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{}\n{}",
            std::fs::read_to_string(&out2).unwrap_or_default(),
            t.show(&["status"])
        )
    });

    // tapir stops: the sessions' Peer Downs, then Termination.
    Command::new("kill")
        .args(["-TERM", &t.pid.to_string()])
        .status()
        .unwrap();
    let log = wait_for(WAIT, || {
        let log = bmp_log(&out2);
        (!bmp_of(&log, "term", None).is_empty()).then_some(log)
    })
    .unwrap_or_else(|| panic!("{}", std::fs::read_to_string(&out2).unwrap_or_default()));
    assert!(
        !bmp_of(&log, "peer_down", Some(&vm11)).is_empty(),
        "{}",
        serde_json::to_string(&log).unwrap()
    );
}

/// A session whose task fails (a bug; here the failpoint makes vm12's
/// panic on its prefix, again at each new session) is a Peer Down at the
/// collector each time, local and without a NOTIFICATION, not a peer left
/// up there with what it announced; vm11's session is not touched.
#[test]
fn a_failed_session_task_is_a_peer_down_at_the_bmp_collector() {
    let mut lab = reference::standard(&[11, 12]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm11 = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let _vm12 = lab.bird(
        "vm12",
        &reference::vm_bird_config_with(
            12,
            64613,
            &["10.3.0.66/32"],
            "connect delay time 1; error wait time 1, 2;",
        ),
    );
    let (out, _) = pmbmpd(&mut lab, "bmp");
    let cfg = example() + &format!("\n[[bmp]]\naddress = \"{BMP_COLLECTOR}\"\n");
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir_with_env(
        "hv1",
        Path::new(TAPIR),
        &cfg,
        "info",
        &["TAPIR_FAILPOINT=panic-on-prefix:10.3.0.66/32"],
    );
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    let (vm11, vm12) = (reference::vm_v4(11), reference::vm_v4(12));
    // Up and down, twice at least (vm12's sessions come back and fail).
    let log = wait_for(Duration::from_secs(60), || {
        let log = bmp_log(&out);
        (bmp_of(&log, "peer_down", Some(&vm12)).len() >= 2).then_some(log)
    })
    .unwrap_or_else(|| {
        panic!(
            "pmbmpd's log:\n{}\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            lab.log(&t.log)
        )
    });
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        lab.log(&t.log).contains("session task failed"),
        "{}",
        lab.log(&t.log)
    );
    // Each Down follows an Up: vm12 is never up twice at the collector.
    let mut up = false;
    for r in log.iter().filter(|r| r["peer_ip"] == vm12.as_str()) {
        match r["bmp_msg_type"].as_str() {
            Some("peer_up") => {
                assert!(!up, "two Peer Ups without a Peer Down: {text}");
                up = true;
            }
            Some("peer_down") => {
                assert!(up, "a Peer Down without a Peer Up: {text}");
                assert_eq!(r["reason_type"], 2, "{r}");
                up = false;
            }
            _ => {}
        }
    }
    assert!(!bmp_of(&log, "peer_up", Some(&vm11)).is_empty(), "{text}");
    assert!(bmp_of(&log, "peer_down", Some(&vm11)).is_empty(), "{text}");
}

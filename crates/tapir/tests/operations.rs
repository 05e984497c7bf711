//! What an operator runs tapir with: the metrics endpoint, checked with
//! Prometheus' own `promtool` and against what the peers and the kernel
//! show. Needs root and promtool (scripts/setup installs both).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lab::reference;
use lab::tor::{self, Kind};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);
const METRICS: &str = "127.0.0.1:9179";

fn example() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap()
}

fn kernel_routes(lab: &Lab) -> usize {
    ["-4", "-6"]
        .iter()
        .map(|fam| {
            String::from_utf8_lossy(
                &lab.ip("hv1", &[fam, "route", "show", "proto", "180"])
                    .stdout,
            )
            .lines()
            .count()
        })
        .sum()
}

fn promtool(text: &str) -> (bool, String) {
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "metrics"]);
    run_with_stdin(&mut cmd, text)
}

/// Runs `cmd` with `stdin` fed; success and everything it printed.
fn run_with_stdin(cmd: &mut Command, stdin: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs what the tests need)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn metrics_pass_promtool_and_match_what_peers_see() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let vm = lab.bird(
        "vm11",
        &reference::vm_bird_dual_config(11, 64613, &["10.3.0.1/32"], &["2001:db8:3::1/128"]),
    );
    let cfg = format!("{}\n[metrics]\nlisten = \"{METRICS}\"\n", example());
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let at_tor = wait_for(WAIT, || {
        (tor.route("10.3.0.1/32").is_some() && tor.route("2001:db8:3::1/128").is_some())
            .then_some(())
    });
    assert!(at_tor.is_some(), "{}", lab.all_logs());
    let scrape = |lab: &Lab| lab.http_get("hv1", Path::new(TAPIR), METRICS, "/metrics");
    let text = wait_for(WAIT, || {
        scrape(&lab).filter(|t| {
            lab::metric_sample(
                t,
                "tapir_bgp_prefixes_accepted",
                &[("address", "10.192.24.11")],
            ) == Some(1.0)
        })
    })
    .unwrap_or_else(|| panic!("{:?}", scrape(&lab)));

    // Prometheus' own checker: parses, and no naming lint.
    let (ok, out) = promtool(&text);
    assert!(ok && out.trim().is_empty(), "promtool: {out}\n{text}");
    if std::env::var_os("SHOW_METRICS").is_some() {
        eprintln!("{text}");
    }

    // The figures are what the peers and the kernel show.
    let est =
        |peer: &str| lab::metric_sample(&text, "tapir_bgp_session_established", &[("peer", peer)]);
    assert_eq!(est("tor-v4"), Some(1.0));
    assert_eq!(est("tor-v6"), Some(1.0));
    assert_eq!(
        lab::metric_sample(
            &text,
            "tapir_bgp_session_state",
            &[("peer", "tor-v4"), ("state", "Established")]
        ),
        Some(1.0)
    );
    assert_eq!(
        lab::metric_sample(
            &text,
            "tapir_bgp_session_state",
            &[("peer", "tor-v4"), ("state", "Idle")]
        ),
        Some(0.0)
    );
    // tor has the VM's prefix from us: one exported on each upstream session.
    assert_eq!(
        lab::metric_sample(&text, "tapir_bgp_prefixes_exported", &[("peer", "tor-v4")]),
        Some(1.0)
    );
    let updates_in = lab::metric_sample(
        &text,
        "tapir_bgp_messages_received_total",
        &[("address", "10.192.24.11"), ("type", "update")],
    );
    assert!(updates_in.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        lab::metric_sample(&text, "tapir_kernel_routes", &[]),
        Some(kernel_routes(&lab) as f64),
        "{text}"
    );
    assert!(lab::metric_sample(
        &text,
        "tapir_kernel_route_operations_total",
        &[("operation", "install")]
    )
    .is_some_and(|n| n >= 2.0));
    assert!(lab::metric_sample(&text, "tapir_rib_prefixes", &[]).is_some_and(|n| n >= 2.0));
    assert!(
        lab::metric_sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|n| n > 1e6)
    );
    // The VM's link-local address has no BGP session (its BIRD peers over
    // IPv4 and the global IPv6 address): a probe, with no session series.
    let up = wait_for(WAIT, || {
        scrape(&lab).filter(|t| lab::metric_sample(t, "tapir_vm_probes", &[]) == Some(1.0))
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", scrape(&lab), t.show(&["peers", "--all"])));
    let sessions: Vec<&str> = up
        .lines()
        .filter(|l| l.starts_with("tapir_bgp_session_established{"))
        .collect();
    assert_eq!(sessions.len(), 4, "{sessions:?}");
    assert!(sessions.iter().all(|l| l.ends_with(" 1")), "{sessions:?}");
    assert_eq!(
        sessions
            .iter()
            .filter(|l| l.contains("kind=\"vm\""))
            .count(),
        2,
        "{sessions:?}"
    );

    // The VM stops: its sessions go down and count a flap.
    lab.stop(vm.pid);
    let text = wait_for(WAIT, || {
        scrape(&lab).filter(|t| {
            lab::metric_sample(
                t,
                "tapir_bgp_session_established",
                &[("address", "10.192.24.11")],
            ) == Some(0.0)
        })
    })
    .unwrap_or_else(|| panic!("{:?}", scrape(&lab)));
    assert_eq!(
        lab::metric_sample(
            &text,
            "tapir_bgp_session_flaps_total",
            &[("address", "10.192.24.11")]
        ),
        Some(1.0),
        "{text}"
    );
    // Anything but /metrics is not found; the daemon is unaffected.
    assert!(lab
        .http_get("hv1", Path::new(TAPIR), METRICS, "/")
        .is_none());
    assert!(t.json("peers").as_array().is_some());
}

/// Blanks what changes from run to run (times, counts of periodic
/// messages, paths) so that the rest can be a snapshot.
fn stable(text: &str) -> String {
    // Each number one `#`: widths change too (a timer's 9.4 s, 29.4 s).
    let hash = |l: &str| -> String {
        let mut out = String::new();
        for c in l.chars() {
            if !c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('#') {
                out.push('#');
            }
        }
        out
    };
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("Config:") {
                "  Config:        <config>".to_string()
            } else if let Some(rest) = t.strip_prefix("tapir ") {
                // tapir VERSION up HH:MM:SS, router id …
                let (_, after) = rest.split_once(" up ").unwrap_or(("", rest));
                let (time, tail) = after.split_once(',').unwrap_or((after, ""));
                format!("tapir VERSION up {},{tail}", hash(time))
            } else if t.starts_with("Tasks:") {
                // Connections and timers come and go; asserted on above.
                "  Tasks:         <tasks>".to_string()
            } else if [
                "State:",
                "Hold timer:",
                "Keepalive timer:",
                "Messages in:",
                "Messages out:",
            ]
            .iter()
            .any(|k| t.starts_with(k))
            {
                hash(l)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn cli_status_peer_and_routes_show_what_peers_see() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let at_tor = wait_for(WAIT, || tor.route("10.3.0.1/32").map(|_| ()));
    assert!(at_tor.is_some(), "{}", lab.all_logs());
    // tor's own routes are in too (tor-v4 and tor-v6 both up).
    let both = wait_for(WAIT, || {
        let s = t.json("status");
        // recdns1001 is tried at its IPv4, IPv6 and link-local addresses;
        // it speaks BGP on the first only. tor sends one prefix per family.
        (s["neighbors_established"] == 2
            && s["vm_sessions_established"] == 1
            && s["vm_sessions"] == 3
            && s["rib_prefixes"] == 3)
            .then_some(s)
    });
    let s = both.unwrap_or_else(|| panic!("{}", t.show(&["status"])));
    assert_eq!(s["router_id"], "10.192.21.6");
    assert_eq!(s["local_as"], 64612);
    assert_eq!(
        s["kernel_routes"].as_u64(),
        Some(kernel_routes(&lab) as u64)
    );

    // One route, chosen and in the kernel; found by prefix or by address.
    for q in ["10.3.0.1/32", "10.3.0.1"] {
        let (ok, out, err) = t.cli(&["show", "routes", q, "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let r = v.as_array().unwrap();
        assert_eq!(r.len(), 1, "{out}");
        assert_eq!(r[0]["best"], true);
        assert_eq!(r[0]["installed"], true);
        assert_eq!(r[0]["vm"], "recdns1001");
    }
    let ip =
        String::from_utf8_lossy(&lab.ip("hv1", &["route", "show", "10.3.0.1"]).stdout).into_owned();
    // 180 is tapir's own protocol (named `tapir` where the package's
    // rt_protos.d entry is installed).
    assert!(
        ip.contains("proto 180") || ip.contains("proto tapir"),
        "{ip}"
    );
    let (ok, out, _) = t.cli(&["show", "routes", "--peer", "tor-v4", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let prefixes: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["192.0.2.0/24"]);
    let (ok, out, _) = t.cli(&["show", "routes", "--vm", "recdns1001"]);
    assert!(ok && out.contains("10.3.0.1/32 *K"), "{out}");
    let (ok, _, err) = t.cli(&["show", "routes", "10.3.0.300/32"]);
    assert!(!ok && err.contains("10.3.0.300/32"), "{err}");

    // One session in full. tor's BIRD offers 240 s, we 90: 90 it is.
    let (ok, out, err) = t.cli(&["show", "peer", "tor-v4", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["hold_time"], 90);
    assert_eq!(v[0]["keepalive"], 30);
    assert_eq!(v[0]["messages_received"]["open"], 1);
    assert!(v[0]["hold_timer_left_ms"]
        .as_u64()
        .is_some_and(|ms| ms <= 90_000));
    let (ok, _, err) = t.cli(&["show", "peer", "nobody"]);
    assert!(!ok && err.contains("nobody"), "{err}");

    insta::assert_snapshot!("show_peer_tor_v4", stable(&t.show(&["peer", "tor-v4"])));
    insta::assert_snapshot!("show_status", stable(&t.show(&["status"])));

    // One task per session (2 static, 3 VM addresses), one role, one
    // listener, one control socket; the reader and writer of each
    // established session (3). When the tap goes, so do the VM's tasks.
    let tasks = |s: &serde_json::Value, k: &str| s["tasks"][k].as_u64().unwrap_or(0);
    let expected = [
        ("peer", 5),
        ("role", 1),
        ("accept", 1),
        ("control", 1),
        ("peer-reader", 3),
        ("peer-writer", 3),
    ];
    let all = wait_for(WAIT, || {
        let s = t.json("status");
        expected
            .iter()
            .all(|&(k, n)| tasks(&s, k) == n)
            .then_some(())
    });
    assert!(all.is_some(), "{}", t.show(&["status"]));
    reference::unplug(&mut lab, "hv1", "tap11");
    let gone = wait_for(WAIT, || {
        let s = t.json("status");
        (tasks(&s, "peer") == 2 && tasks(&s, "peer-reader") == 2 && tasks(&s, "connect") == 0)
            .then_some(())
    });
    assert!(gone.is_some(), "{}", t.show(&["status"]));
}

/// The systemd unit's privilege model, in the lab: tapir as `nobody` with
/// only CAP_NET_ADMIN, CAP_NET_BIND_SERVICE and CAP_NET_RAW (what the
/// unit grants) does the whole hypervisor job, and tells systemd it is
/// ready (`Type=notify`) once its control socket answers.
#[test]
fn unprivileged_with_three_capabilities_and_systemd_readiness() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let cfg = lab.write("hv1/tapir.toml", &example());
    let run = lab.dir().join("hv1/run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    let notify_path = lab.dir().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket = run.join("tapir.sock");
    let caps = "-all,+net_admin,+net_bind_service,+net_raw";
    let pid = lab.spawn(
        "hv1",
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "env",
            &format!("NOTIFY_SOCKET={}", notify_path.display()),
            TAPIR,
            "--socket",
            &socket.to_string_lossy(),
            "run",
            "--config",
            &cfg.to_string_lossy(),
            "--state-dir",
            &run.join("state").to_string_lossy(),
        ],
        "hv1/tapir.log",
    );
    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 from tapir: {e}\n{}", lab.all_logs()));
    assert_eq!(&buf[..n], b"READY=1");
    let t = lab::tapir::Tapir {
        bin: TAPIR.into(),
        socket: socket.clone(),
        pid,
        log: "hv1/tapir.log".into(),
    };
    // Ready means answering.
    let (ok, _, err) = t.cli(&["show", "status"]);
    assert!(ok, "{err}");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 65534);
    // Port 179, sockets on the tap, the kernel's routes: all of it works.
    let at_tor = wait_for(WAIT, || tor.route("10.3.0.1/32").map(|_| ()));
    assert!(at_tor.is_some(), "{}", lab.all_logs());
    let installed = wait_for(WAIT, || {
        let o = lab.ip("hv1", &["route", "show", "10.3.0.1", "proto", "180"]);
        (!o.stdout.is_empty()).then_some(())
    });
    assert!(installed.is_some(), "{}", lab.all_logs());
    // It really runs as nobody, with no other capability.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let tapir_pid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().nth(1) == Some("65534"));
    assert_eq!(tapir_pid, Some(true), "{status}");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
    // CAP_NET_BIND_SERVICE 10, CAP_NET_ADMIN 12, CAP_NET_RAW 13.
    assert_eq!(eff, Some((1 << 10) | (1 << 12) | (1 << 13)), "{status}");
    lab.stop(pid);
}

/// The unit file parses and uses only keys systemd knows.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd/tapir.service"),
    )
    .unwrap();
    assert!(unit.contains("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW"));
    let dir = std::env::temp_dir().join(format!("tapir-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tapir.service");
    std::fs::write(&path, unit.replace("/usr/bin/tapir", TAPIR)).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && text.trim().is_empty(), "{text}");
}

/// The package's postinst on an upgrade while tapir runs: the same binary
/// is reloaded, a new one restarted (gracefully, by the unit's SIGTERM)
/// if the config checks, and left running if not; a first install, or an
/// upgrade while tapir is stopped, does neither. `systemctl` and `getent`
/// are stand-ins that log what they are asked; the installed tapir is a
/// file of the test's (the script's `/usr/bin/tapir` pointed at it), and
/// the running one a copy of sleep started from it.
#[test]
fn an_upgrade_reloads_the_same_binary_and_restarts_a_new_one() {
    let dir = std::env::temp_dir().join(format!("tapir-postinst-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("log");
    let script = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        Command::new("chmod").arg("755").arg(&p).status().unwrap();
        settle(&p);
    };
    script(
        "systemctl",
        &format!(
            "echo \"$*\" >> {log}\ncase \"$1\" in\n  is-active) [ -e {dir}/active ] ;;\n  show) cat {dir}/pid ;;\nesac",
            log = log.display(),
            dir = dir.display()
        ),
    );
    script("getent", "exit 0");
    std::fs::copy("/bin/sleep", bin.join("tapir")).unwrap();
    settle(&bin.join("tapir"));
    let mut daemon = Command::new(bin.join("tapir")).arg("60").spawn().unwrap();
    std::fs::write(dir.join("pid"), format!("{}\n", daemon.id())).unwrap();
    let installed = bin.join("tapir");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/debian/postinst"),
    )
    .unwrap();
    assert!(shipped.contains("/usr/bin/tapir"));
    let postinst = dir.join("postinst");
    std::fs::write(
        &postinst,
        shipped.replace("/usr/bin/tapir", &installed.display().to_string()),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |args: &[&str]| -> String {
        let _ = std::fs::remove_file(&log);
        let o = Command::new("sh")
            .arg(&postinst)
            .args(args)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        std::fs::read_to_string(&log).unwrap_or_default() + &String::from_utf8_lossy(&o.stderr)
    };
    let asked = |log: &str, what: &str| log.lines().any(|l| l == what);
    // A first install: nothing to reload or restart.
    let l = run(&["configure"]);
    assert!(
        !asked(&l, "reload tapir") && !asked(&l, "restart tapir"),
        "{l}"
    );
    // An upgrade, tapir stopped: left stopped.
    let l = run(&["configure", "0.0.9"]);
    assert!(
        !asked(&l, "reload tapir") && !asked(&l, "restart tapir"),
        "{l}"
    );
    // tapir runs the file that is installed: a reload.
    std::fs::write(dir.join("active"), "").unwrap();
    let l = run(&["configure", "0.0.9"]);
    assert!(
        asked(&l, "reload tapir") && !asked(&l, "restart tapir"),
        "{l}"
    );
    // The package brought another binary whose check of the config
    // fails: tapir keeps running the old one.
    std::fs::remove_file(&installed).unwrap();
    std::fs::copy("/bin/false", &installed).unwrap();
    settle(&installed);
    let l = run(&["configure", "0.0.9"]);
    assert!(
        !asked(&l, "restart tapir") && !asked(&l, "reload tapir"),
        "{l}"
    );
    assert!(l.contains("does not check"), "{l}");
    // Another binary that checks the config: a (graceful) restart, after
    // systemd reads the unit again.
    std::fs::remove_file(&installed).unwrap();
    std::fs::copy("/bin/true", &installed).unwrap();
    settle(&installed);
    let l = run(&["configure", "0.0.9"]);
    assert!(
        asked(&l, "restart tapir") && !asked(&l, "reload tapir"),
        "{l}"
    );
    assert!(asked(&l, "daemon-reload"), "{l}");
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the program just written at `path` can be run: a process
/// that another test thread forked while the file was open for writing
/// holds it open until its exec (ETXTBSY meanwhile).
fn settle(path: &Path) {
    for _ in 0..100 {
        match Command::new(path)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return,
        }
    }
    panic!("{} stays busy", path.display());
}

/// Runs a contrib script inside `host` with `vars` set and `stdin` fed.
fn hook(
    lab: &Lab,
    host: &str,
    script: &str,
    args: &[&str],
    vars: &[(&str, &str)],
    stdin: &str,
) -> (bool, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(script);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.netns(host), "env"]);
    for (k, v) in vars {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg("sh").arg(&path).args(args);
    run_with_stdin(&mut cmd, stdin)
}

fn registered(t: &lab::tapir::Tapir, name: &str) -> Option<serde_json::Value> {
    t.json("vms")
        .as_array()?
        .iter()
        .find(|v| v["name"] == name && v["source"] == "registered")
        .cloned()
}

/// The Ganeti scripts, run with the environment Ganeti gives them: the
/// ifup hook sets up the routed tap and registers the VM from its tags,
/// the migrate hooks drain and undrain it, ifdown forgets it. What counts
/// is what tor sees.
#[test]
fn ganeti_and_libvirt_hooks() {
    let mut lab = reference::standard(&[]);
    lab.add_host("vm12");
    reference::plug_bare(&mut lab, "hv1", "tap12", 12);
    // The NIC's MAC, as Ganeti gives it to the ifup hook.
    lab.ip(
        "vm12",
        &["link", "set", "eth0", "address", "aa:00:00:00:00:12"],
    );
    let tor = tor::start(&mut lab, Kind::Bird);
    // 10.3.0.99/32 passes the group's filter, but the VM's tags allow it
    // 10.3.0.2/32 only.
    let _vm = reference::vm_bird(&mut lab, 12, &["10.3.0.2/32", "10.3.0.99/32"]);
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let socket = t.socket.to_string_lossy().into_owned();
    let base = [("TAPIR", TAPIR), ("TAPIR_SOCKET", socket.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };

    // A bridged NIC is not ours: refused with the reason.
    let (ok, out) = hook(
        &lab,
        "hv1",
        "ganeti/kvm-ifup-custom",
        &[],
        &with(&[
            ("INSTANCE", "x"),
            ("INTERFACE", "tap12"),
            ("MODE", "bridged"),
        ]),
        "",
    );
    assert!(!ok && out.contains("not routed"), "{out}");

    let ifup = with(&[
        ("INSTANCE", "lb1002"),
        ("INTERFACE", "tap12"),
        ("MODE", "routed"),
        ("IP", "10.192.24.12"),
        ("MAC", "aa:00:00:00:00:12"),
        ("TAGS", "web tapir:prefix:10.3.0.2/32 tapir:asn:64613"),
        ("GATEWAY4", "10.192.24.1"),
    ]);
    let (ok, out) = hook(&lab, "hv1", "ganeti/kvm-ifup-custom", &[], &ifup, "");
    assert!(ok, "{out}");
    let r = wait_for(WAIT, || tor.route("10.3.0.2/32"));
    assert!(r.is_some(), "{}\n{}", t.show(&["vms"]), lab.all_logs());
    let vm = registered(&t, "lb1002").unwrap_or_else(|| panic!("{}", t.show(&["vms"])));
    assert_eq!(vm["interface"], "tap12");
    let refused = wait_for(WAIT, || {
        t.routes_for("10.3.0.99/32")
            .iter()
            .any(|r| r["accepted"] == false)
            .then_some(())
    });
    assert!(refused.is_some(), "{}", t.show(&["routes"]));
    assert!(tor.route("10.3.0.99/32").is_none());

    // Before a migration: only the primary drains.
    let pre = "ganeti/hooks/instance-migrate-pre.d/50-tapir-drain";
    let mut env = with(&[
        ("GANETI_HOOKS_PHASE", "pre"),
        ("GANETI_INSTANCE_NAME", "lb1002"),
        ("GANETI_INSTANCE_PRIMARY", "hv1.example.org"),
        ("TAPIR_NODE_NAME", "hv2.example.org"),
    ]);
    let (ok, out) = hook(&lab, "hv1", pre, &[], &env, "");
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!tor
        .route("10.3.0.2/32")
        .unwrap()
        .communities
        .contains(&"65535:0".to_string()));
    env.pop();
    env.push(("TAPIR_NODE_NAME", "hv1.example.org"));
    let (ok, out) = hook(&lab, "hv1", pre, &[], &env, "");
    assert!(ok, "{out}");
    let drained = wait_for(WAIT, || {
        tor.route("10.3.0.2/32")
            .filter(|r| r.communities.contains(&"65535:0".to_string()))
    });
    assert!(drained.is_some(), "{:?}", tor.route("10.3.0.2/32"));
    let post = "ganeti/hooks/instance-migrate-post.d/50-tapir-undrain";
    let (ok, out) = hook(
        &lab,
        "hv1",
        post,
        &[],
        &with(&[
            ("GANETI_HOOKS_PHASE", "post"),
            ("GANETI_INSTANCE_NAME", "lb1002"),
        ]),
        "",
    );
    assert!(ok, "{out}");
    let undrained = wait_for(WAIT, || {
        tor.route("10.3.0.2/32")
            .filter(|r| !r.communities.contains(&"65535:0".to_string()))
    });
    assert!(undrained.is_some(), "{:?}", tor.route("10.3.0.2/32"));

    // ifdown forgets the VM.
    let ifdown = with(&[
        ("INSTANCE", "lb1002"),
        ("INTERFACE", "tap12"),
        ("MODE", "routed"),
    ]);
    let (ok, out) = hook(&lab, "hv1", "ganeti/kvm-ifdown-custom", &[], &ifdown, "");
    assert!(ok, "{out}");
    assert!(registered(&t, "lb1002").is_none(), "{}", t.show(&["vms"]));

    // A tapir that hangs (stopped) holds no NIC up: every call to it gives
    // up after its timeout, and the hook succeeds and says why.
    lab.exec("hv1", &["kill", "-STOP", &t.pid.to_string()]);
    let (ok, out) = hook(&lab, "hv1", "ganeti/kvm-ifup-custom", &[], &ifup, "");
    lab.exec("hv1", &["kill", "-CONT", &t.pid.to_string()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("not registered with tapir") && out.contains("no answer from tapir"),
        "{out}"
    );
    let (ok, out) = hook(&lab, "hv1", "ganeti/kvm-ifdown-custom", &[], &ifdown, "");
    assert!(ok, "{out}");

    // libvirt: the domain's metadata says what to register.
    let xml = "<domain type='kvm'>\n  <name>lb1003</name>\n  <metadata>\n    <tapir:vm xmlns:tapir=\"urn:tapir:vm:1\">\n      <tapir:address>10.192.24.13</tapir:address>\n      <tapir:prefix>10.3.0.3/32</tapir:prefix>\n      <tapir:asn>64613</tapir:asn>\n    </tapir:vm>\n  </metadata>\n  <devices>\n    <interface type='ethernet'>\n      <target dev='vnet13'/>\n    </interface>\n  </devices>\n</domain>\n";
    let (ok, out) = hook(
        &lab,
        "hv1",
        "libvirt/qemu",
        &["lb1003", "started", "begin", "-"],
        &with(&[]),
        xml,
    );
    assert!(ok, "{out}");
    let vm = registered(&t, "lb1003").unwrap_or_else(|| panic!("{}", t.show(&["vms"])));
    assert_eq!(vm["interface"], "vnet13");
    assert!(vm["allowed"].to_string().contains("10.3.0.3/32"), "{vm}");
    let (ok, out) = hook(
        &lab,
        "hv1",
        "libvirt/qemu",
        &["lb1003", "stopped", "end", "-"],
        &with(&[]),
        xml,
    );
    assert!(ok, "{out}");
    assert!(registered(&t, "lb1003").is_none(), "{}", t.show(&["vms"]));
}

/// A control-socket client that sends requests and never reads the answers
/// (its socket buffer fills), or sends one endless line, holds up nobody
/// else: another client is answered at once, and the sessions carry on.
#[test]
fn stuck_control_clients_hold_up_nobody() {
    use std::os::unix::net::UnixStream;
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    assert!(wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some());
    // One client asks again and again and reads nothing.
    let mut greedy = UnixStream::connect(&t.socket).unwrap();
    greedy
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let req = b"{\"command\":\"show-peers\"}\n";
    for _ in 0..20_000 {
        if greedy.write_all(req).is_err() {
            break; // its buffers are full both ways
        }
    }
    // Another sends a line that never ends.
    let mut endless = UnixStream::connect(&t.socket).unwrap();
    endless
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let junk = vec![b'x'; 64 * 1024];
    for _ in 0..64 {
        if endless.write_all(&junk).is_err() {
            break;
        }
    }
    // Everyone else is served.
    let (ok, out, err) = t.cli(&["show", "status"]);
    assert!(ok, "{err}");
    assert!(out.contains("Neighbors:"), "{out}");
    assert!(tor.route("10.3.0.1/32").is_some());
    drop(greedy);
    drop(endless);
    let (ok, _, err) = t.cli(&["show", "peers"]);
    assert!(ok, "{err}");
}

/// A Ganeti instance with two routed NICs: its ifup hook runs once per
/// NIC with Ganeti's environment (INTERFACE_UUID and INTERFACE_INDEX
/// tell them apart), each NIC's registration stands beside the other's,
/// and one NIC's ifdown removes that NIC only. The two NICs are modelled
/// as two namespaces (vm12 behind tap12, vm14 behind tap14), each with
/// the instance's BGP speaker on its address. Then `tapir vm sync`
/// applies an inventory file as one change, leaving the hooks'
/// registrations alone.
#[test]
fn a_two_nic_instance_and_vm_sync() {
    let mut lab = reference::standard(&[]);
    for n in [12, 14] {
        lab.add_host(&format!("vm{n}"));
        reference::plug_bare(&mut lab, "hv1", &format!("tap{n}"), n);
    }
    let tor = tor::start(&mut lab, Kind::Bird);
    // The instance's tags allow both prefixes; each NIC announces one,
    // and NIC 1 also one the instance may not (the group allows it).
    let _nic0 = reference::vm_bird(&mut lab, 12, &["10.3.0.2/32"]);
    let _nic1 = reference::vm_bird(&mut lab, 14, &["10.3.0.4/32", "10.3.0.99/32"]);
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let socket = t.socket.to_string_lossy().into_owned();
    let tags = "tapir:prefix:10.3.0.2/32 tapir:prefix:10.3.0.4/32 tapir:asn:64613";
    let nic = |tap: &'static str, index: &'static str, ip: &'static str| {
        vec![
            ("TAPIR", TAPIR),
            ("TAPIR_SOCKET", socket.as_str()),
            ("INSTANCE", "lb1002"),
            ("INTERFACE", tap),
            ("INTERFACE_INDEX", index),
            (
                "INTERFACE_UUID",
                if index == "0" {
                    "5a1d-nic0"
                } else {
                    "5a1d-nic1"
                },
            ),
            ("MODE", "routed"),
            ("IP", ip),
            ("TAGS", tags),
            ("GATEWAY4", "10.192.24.1"),
        ]
    };
    let nic0 = nic("tap12", "0", "10.192.24.12");
    let nic1 = nic("tap14", "1", "10.192.24.14");
    for env in [&nic0, &nic1] {
        let (ok, out) = hook(&lab, "hv1", "ganeti/kvm-ifup-custom", &[], env, "");
        assert!(ok, "{out}");
    }
    let entries = |t: &lab::tapir::Tapir, source: &str| -> Vec<serde_json::Value> {
        t.json("vms")
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["source"] == source)
            .cloned()
            .collect()
    };
    // Both NICs registered, each on its tap, under the instance's name.
    let regs = entries(&t, "registered");
    let mut nics: Vec<(String, String)> = regs
        .iter()
        .filter(|v| v["name"] == "lb1002")
        .map(|v| (v["nic"].to_string(), v["interface"].to_string()))
        .collect();
    nics.sort();
    assert_eq!(
        nics,
        [
            ("\"5a1d-nic0\"".into(), "\"tap12\"".into()),
            ("\"5a1d-nic1\"".into(), "\"tap14\"".into())
        ],
        "{}",
        t.show(&["vms"])
    );
    // Each NIC's prefix at tor; what the instance may not announce is
    // refused (its entry holds on tap14 too).
    for p in ["10.3.0.2/32", "10.3.0.4/32"] {
        wait_for(WAIT, || tor.route(p))
            .unwrap_or_else(|| panic!("{p}\n{}\n{}", t.show(&["vms"]), lab.all_logs()));
    }
    wait_for(WAIT, || {
        t.routes_for("10.3.0.99/32")
            .iter()
            .any(|r| r["accepted"] == false)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["routes"])));
    assert!(tor.route("10.3.0.99/32").is_none());

    // NIC 1 goes (hot-unplugged): its registration only.
    let (ok, out) = hook(&lab, "hv1", "ganeti/kvm-ifdown-custom", &[], &nic1, "");
    assert!(ok, "{out}");
    let left: Vec<String> = entries(&t, "registered")
        .iter()
        .filter(|v| v["name"] == "lb1002")
        .map(|v| v["nic"].to_string())
        .collect();
    assert_eq!(left, ["\"5a1d-nic0\""], "{}", t.show(&["vms"]));
    assert!(tor.route("10.3.0.2/32").is_some());
    // NIC 0's ifup again (a restart) replaces NIC 0 only.
    let (ok, out) = hook(&lab, "hv1", "ganeti/kvm-ifup-custom", &[], &nic0, "");
    assert!(ok, "{out}");
    assert_eq!(entries(&t, "registered").len(), 1, "{}", t.show(&["vms"]));

    // vm sync: the source of truth's file, checked, planned, applied.
    let file = lab.write(
        "inventory.toml",
        "[[vm]]\nname = \"web1\"\naddresses = [\"10.192.24.31\"]\nprefixes = [\"10.3.1.1/32\"]\n\n\
         [[vm]]\nname = \"web2\"\naddresses = [\"10.192.24.32\"]\nprefixes = [\"10.3.1.2/32\"]\n",
    );
    let file_s = file.display().to_string();
    let (ok, out, err) = t.cli(&["vm", "sync", &file_s, "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("+ web1") && out.contains("+ web2") && out.contains("dry run"),
        "{out}"
    );
    assert!(entries(&t, "synced").is_empty(), "{}", t.show(&["vms"]));
    let (ok, out, err) = t.cli(&["vm", "sync", &file_s]);
    assert!(ok, "{err}");
    assert!(out.contains("2 added"), "{out}");
    assert_eq!(entries(&t, "synced").len(), 2, "{}", t.show(&["vms"]));
    // The next rendering: web1 changed, web2 gone, web3 new.
    lab.write(
        "inventory.toml",
        "[[vm]]\nname = \"web1\"\naddresses = [\"10.192.24.31\"]\nprefixes = [\"10.3.1.9/32\"]\n\n\
         [[vm]]\nname = \"web3\"\naddresses = [\"10.192.24.33\"]\nprefixes = [\"10.3.1.3/32\"]\n",
    );
    let (ok, out, err) = t.cli(&["vm", "sync", &file_s]);
    assert!(ok, "{err}");
    assert!(
        out.contains("~ web1") && out.contains("- web2") && out.contains("+ web3"),
        "{out}"
    );
    let synced: Vec<String> = entries(&t, "synced")
        .iter()
        .map(|v| v["name"].to_string())
        .collect();
    assert_eq!(synced, ["\"web1\"", "\"web3\""], "{}", t.show(&["vms"]));
    // The hook's registration is untouched.
    assert_eq!(entries(&t, "registered").len(), 1, "{}", t.show(&["vms"]));
    // A file that claims the hook-registered instance's prefix is refused
    // whole: nothing changes.
    lab.write(
        "inventory.toml",
        "[[vm]]\nname = \"web4\"\naddresses = [\"10.192.24.34\"]\nprefixes = [\"10.3.0.2/32\"]\n",
    );
    let (ok, _, err) = t.cli(&["vm", "sync", &file_s]);
    assert!(!ok && err.contains("owned by VM `lb1002`"), "{err}");
    assert_eq!(entries(&t, "synced").len(), 2, "{}", t.show(&["vms"]));
    // A file with a mistake is refused at its line, before tapir is asked.
    lab.write(
        "inventory.toml",
        "[[vm]]\nname = \"web5\"\naddresses = [\"10.192.24.35\"]\nprefixes = [\"10.3.1/32\"]\n",
    );
    let (ok, _, err) = t.cli(&["vm", "sync", &file_s]);
    assert!(!ok && err.contains("inventory.toml:4:"), "{err}");
    // A synced VM is not the hooks' to remove.
    let (ok, _, err) = t.cli(&["vm", "remove", "web1"]);
    assert!(!ok && err.contains("tapir vm sync"), "{err}");
}

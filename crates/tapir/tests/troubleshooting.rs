//! What an operator troubleshooting a hypervisor sees, checked against what
//! the peers and the VMs' kernels see: one row per real session, probes
//! that back off, what goes out to a neighbor and why, neighbor control,
//! reload. Needs root (scripts/setup installs the peers).

use std::path::Path;
use std::time::{Duration, Instant};

use lab::reference;
use lab::tor::{self, Kind};
use lab::{wait_for, Lab};
use serde_json::Value;

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);

fn example() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap()
}

fn rows(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn the_demo_shows_one_row_per_session_and_the_rest_as_probes() {
    let mut lab = reference::standard(&[11, 12, 13]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let tor = match tor {
        tor::Tor::Bird(b) => b,
        _ => unreachable!(),
    };
    let vms = [
        lab.bird(
            "vm11",
            &reference::vm_bird_config(11, 64613, &["10.3.0.1/32"]),
        ),
        lab.bird(
            "vm12",
            &reference::vm_bird_link_local_config(12, 64613, &["2001:db8:3::2/128"], ""),
        ),
        lab.bird(
            "vm13",
            &reference::vm_bird_config(13, 64613, &["10.3.0.1/32", "10.99.0.0/24"]),
        ),
    ];
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);

    // Every session is up as its peer sees it: the VMs' BIRDs and tor's.
    let up = wait_for(WAIT, || {
        (vms.iter().all(|b| b.is_established("bgp1")) && tor_sessions_up(&tor) == 2).then_some(())
    });
    assert!(up.is_some(), "{}", lab.all_logs());
    // …and `show peers` has those five, nothing else.
    let shown = wait_for(WAIT, || {
        let p = rows(&t.json("peers"));
        (p.len() == 5 && p.iter().all(|p| p["state"] == "Established")).then_some(p)
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["peers", "--all"])));
    let mut names: Vec<String> = shown
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["kind"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "recdns1001 vm",
            "tap12 vm",
            "tap13 vm",
            "tor-v4 static",
            "tor-v6 static"
        ]
    );
    let text = t.show(&["peers"]);
    assert_eq!(text.lines().count(), 6, "{text}");

    // The other six addresses (three per VM, one session each) are probes:
    // listed with --all, and as `probing` in the VM's row of `show vms`.
    let all = rows(&t.json_args(&["peers", "--all"]));
    assert_eq!(all.len(), 11, "{all:?}");
    let probes: Vec<&Value> = all.iter().filter(|p| p["probing"] == true).collect();
    assert_eq!(probes.len(), 6, "{all:?}");
    assert!(probes
        .iter()
        .all(|p| p["kind"] == "vm" && p["state"] != "Established"));
    let vms_json = rows(&t.json("vms"));
    let rec = vms_json
        .iter()
        .find(|v| v["name"] == "recdns1001")
        .unwrap_or_else(|| panic!("{vms_json:?}"));
    let sessions = rows(&rec["sessions"]);
    let states: Vec<&str> = sessions
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "Established").count(),
        1,
        "{rec}"
    );
    assert_eq!(
        states.iter().filter(|s| **s == "probing").count(),
        2,
        "{rec}"
    );
    let text = t.show(&["vms"]);
    assert!(text.contains("probing"), "{text}");
}

#[test]
fn an_address_where_nothing_answers_is_tried_less_and_less_often() {
    let mut lab = reference::standard(&[14]);
    // vm14 runs no BGP speaker: its kernel answers every attempt with a
    // RST, counted in the VM's own TCP statistics.
    let cfg = example().replace("name = \"vms\"\n", "name = \"vms\"\nconnect-retry = 1\n");
    assert!(cfg.contains("connect-retry = 1"));
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let probes = |t: &lab::tapir::Tapir| {
        rows(&t.json_args(&["peers", "--all"]))
            .into_iter()
            .filter(|p| p["probing"] == true)
            .collect::<Vec<_>>()
    };
    wait_for(WAIT, || (probes(&t).len() == 3).then_some(()))
        .unwrap_or_else(|| panic!("{}", t.show(&["peers", "--all"])));
    let before = out_rsts(&lab, "vm14");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let attempts = out_rsts(&lab, "vm14") - before;
    let secs = start.elapsed().as_secs();
    // Every second without back-off: 3 addresses × 20 s = 60. Doubling
    // from 1 s: at most 5 per address in 20 s (1, 2, 4, 8, 16 s apart).
    assert!(
        (3..=18).contains(&attempts),
        "{attempts} attempts in {secs} s\n{}",
        lab.all_logs()
    );
    for p in probes(&t) {
        assert!(p["connect_retry_secs"].as_u64().unwrap() >= 8, "{p}");
    }
    // None of them is a session.
    assert!(rows(&t.json("peers")).iter().all(|p| p["kind"] == "static"));
}

/// Sessions tor's BIRD has up with hypervisors (its `neighbor range`
/// makes one `dynbgpN` protocol per session).
fn tor_sessions_up(tor: &lab::bird::Bird) -> usize {
    tor.cmd(&["show", "protocols"])
        .lines()
        .filter(|l| l.starts_with("dynbgp") && l.trim_end().ends_with("Established"))
        .count()
}

/// RSTs `host`'s kernel has sent (`Tcp: OutRsts` in its /proc/net/snmp).
fn out_rsts(lab: &Lab, host: &str) -> u64 {
    let o = lab.exec(host, &["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "OutRsts")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// tor's BIRD protocol for the session from `addr` (dynamic: a new name
/// for each new session), with the time it came up.
fn tor_session(tor: &lab::bird::Bird, addr: &str) -> Option<(String, u64)> {
    let all = tor.cmd(&["show", "protocols", "all"]);
    let mut name = None;
    for l in all.lines() {
        if l.starts_with("dynbgp") {
            name = l.split_whitespace().next().map(str::to_string);
        }
        if l.trim() == format!("Neighbor address: {addr}") {
            let n = name.clone()?;
            return tor
                .is_established(&n)
                .then(|| tor.since_ms(&n).map(|s| (n, s)))?;
        }
    }
    None
}

/// `Import updates: received` of a BIRD protocol: UPDATEs that came in.
fn imported(b: &lab::bird::Bird, protocol: &str) -> u64 {
    b.cmd(&["show", "protocols", "all", protocol])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Import updates:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn neighbor_commands_act_on_that_session_alone() {
    let mut lab = reference::standard(&[11]);
    let tor = match tor::start(&mut lab, Kind::Bird) {
        tor::Tor::Bird(b) => b,
        _ => unreachable!(),
    };
    let vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let cfg = lab.write("hv1/tapir.toml", &example());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let (v4, v6) = reference::hv_addresses("hv1");
    let ready = |lab: &Lab| {
        wait_for(WAIT, || {
            let s4 = tor_session(&tor, &v4)?;
            let s6 = tor_session(&tor, &v6)?;
            tor.route("10.3.0.1/32")?;
            vm.is_established("bgp1").then_some((s4, s6))
        })
        .unwrap_or_else(|| panic!("{}\n{}", t.show(&["peers"]), lab.all_logs()))
    };
    let (s4, s6) = ready(&lab);
    let vm_since = vm.since_ms("bgp1");

    // restart: tor-v4 goes down and comes back; nothing else moves.
    let (ok, out, err) = t.cli(&["neighbor", "restart", "tor-v4"]);
    assert!(ok && out.contains("tor-v4: restarted"), "{out}{err}");
    let s4b = wait_for(WAIT, || tor_session(&tor, &v4).filter(|s| *s != s4))
        .unwrap_or_else(|| panic!("tor-v4 not back\n{}", lab.all_logs()));
    assert_eq!(ready(&lab).0, s4b);
    assert_eq!(tor_session(&tor, &v6), Some(s6.clone()), "tor-v6 was reset");
    assert!(lab::bird::same_instant(vm.since_ms("bgp1"), vm_since));

    // refresh: tor gets our routes again and we get its, no reset.
    let s4 = ready(&lab).0;
    let before = imported(&tor, &s4.0);
    let updates_from_tor = |t: &lab::tapir::Tapir| {
        t.json_args(&["peer", "tor-v4"])[0]["messages_received"]["update"]
            .as_u64()
            .unwrap_or(0)
    };
    let ours_before = updates_from_tor(&t);
    let (ok, out, err) = t.cli(&["neighbor", "refresh", "tor-v4"]);
    assert!(ok && out.contains("asked for the peer's"), "{out}{err}");
    wait_for(WAIT, || (imported(&tor, &s4.0) > before).then_some(()))
        .unwrap_or_else(|| panic!("tor got nothing again\n{}", lab.all_logs()));
    wait_for(WAIT, || (updates_from_tor(&t) > ours_before).then_some(()))
        .unwrap_or_else(|| panic!("tor sent nothing again\n{}", lab.all_logs()));
    assert_eq!(
        tor_session(&tor, &v4),
        Some(s4),
        "refresh reset the session"
    );

    // disable: down and kept down, the other sessions untouched.
    let (ok, out, err) = t.cli(&["neighbor", "disable", "tor-v4"]);
    assert!(ok && out.contains("disabled"), "{out}{err}");
    wait_for(WAIT, || tor_session(&tor, &v4).is_none().then_some(()))
        .unwrap_or_else(|| panic!("tor-v4 still up\n{}", lab.all_logs()));
    assert!(
        lab.log(&tor.log).contains("Administrative shutdown"),
        "{}",
        lab.log(&tor.log)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tor_session(&tor, &v4), None);
    let p = &t.json_args(&["peer", "tor-v4"])[0];
    assert_eq!(p["disabled"], true, "{p}");
    assert_eq!(tor_session(&tor, &v6), Some(s6));
    // A restart of a disabled session is refused, with the way out.
    let (ok, _, err) = t.cli(&["neighbor", "restart", "tor-v4"]);
    assert!(!ok && err.contains("neighbor enable tor-v4"), "{err}");

    // enable: back up.
    let (ok, out, err) = t.cli(&["nei", "en", "tor-v4"]);
    assert!(ok && out.contains("enabled"), "{out}{err}");
    ready(&lab);

    // A VM by its name: its session restarts.
    let (ok, out, err) = t.cli(&["neighbor", "restart", "recdns1001"]);
    assert!(ok && out.contains("recdns1001: restarted"), "{out}{err}");
    wait_for(WAIT, || {
        (vm.is_established("bgp1") && !lab::bird::same_instant(vm.since_ms("bgp1"), vm_since))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("vm11 not restarted\n{}", lab.all_logs()));

    // Nobody by that name: an error that says where to look.
    let (ok, _, err) = t.cli(&["neighbor", "restart", "tor-v5"]);
    assert!(!ok && err.contains("tapir show peers --all"), "{err}");
}

#[test]
fn reload_says_what_it_will_do_and_what_waits_for_a_restart() {
    let mut lab = reference::standard(&[11]);
    let tor = match tor::start(&mut lab, Kind::Bird) {
        tor::Tor::Bird(b) => b,
        _ => unreachable!(),
    };
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let base = example();
    let cfg = lab.write("hv1/tapir.toml", &base);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let (v4, _) = reference::hv_addresses("hv1");
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    let session = tor_session(&tor, &v4).unwrap();

    // A new `announce`: the dry run names it and changes nothing.
    let announcing = base.replace(
        "local-as = 64612\n",
        "local-as = 64612\nannounce = [\"198.51.100.0/24\"]\n",
    );
    assert_ne!(announcing, base);
    std::fs::write(&cfg, &announcing).unwrap();
    let (code, out, err) = t.cli_code(&["reload", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("announce 198.51.100.0/24: announced: applied, no session reset")
            && out.contains("dry run: nothing was changed"),
        "{out}"
    );
    let shown = t.show(&["config"]);
    assert!(
        shown.contains("# pending") && shown.contains("#   announce 198.51.100.0/24"),
        "{shown}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        tor.route("198.51.100.0/24").is_none(),
        "a dry run announced"
    );

    // The reload applies it: tor gets the prefix, no session reset.
    let (code, out, err) = t.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for(WAIT, || tor.route("198.51.100.0/24")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    assert_eq!(tor_session(&tor, &v4), Some(session.clone()));
    assert!(t.show(&["config"]).contains("# the file is what runs"));

    // A new router id cannot be applied: reload says so, exits 2, and the
    // change stays pending (reported again) until a restart.
    std::fs::write(&cfg, announcing.replace("10.192.21.6", "10.192.21.7")).unwrap();
    for _ in 0..2 {
        let (code, out, err) = t.cli_code(&["reload"]);
        assert_eq!(code, Some(2), "{out}{err}");
        assert!(
            out.contains("router-id 10.192.21.6 → 10.192.21.7: NEEDS A RESTART of tapir")
                && out.contains("waits for a restart of tapir: router-id"),
            "{out}"
        );
    }
    let shown = t.show(&["config"]);
    assert!(
        shown.contains("#   router-id 10.192.21.6 → 10.192.21.7"),
        "{shown}"
    );
    assert_eq!(tor_session(&tor, &v4), Some(session));

    // Withdrawn again by a reload.
    std::fs::write(&cfg, &base).unwrap();
    let (code, out, err) = t.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for(WAIT, || {
        tor.route("198.51.100.0/24").is_none().then_some(())
    })
    .unwrap_or_else(|| panic!("{}", lab.all_logs()));
}

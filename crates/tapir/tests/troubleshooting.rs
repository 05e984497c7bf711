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

/// tor with BIRD, as its own type (its protocols are asked directly).
fn bird_tor(lab: &mut Lab) -> lab::bird::Bird {
    match tor::start(lab, Kind::Bird) {
        tor::Tor::Bird(b) => b,
        _ => unreachable!(),
    }
}

fn rows(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn the_demo_shows_one_row_per_session_and_the_rest_as_probes() {
    let mut lab = reference::standard(&[11, 12, 13]);
    let tor = bird_tor(&mut lab);
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

/// One of tor's BIRD sessions: its protocol (dynamic, `dynbgpN`) and the
/// time it came up. Two readings are the same session when the name is the
/// same and the times are one instant: BIRD prints `since` from its clock
/// anew each time, so it can differ by a millisecond between readings.
#[derive(Debug, Clone)]
struct TorSession {
    name: String,
    since: u64,
}

impl PartialEq for TorSession {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && lab::bird::same_instant(Some(self.since), Some(other.since))
    }
}

/// tor's BIRD protocol for the session from `addr`, if it is established.
fn tor_session(tor: &lab::bird::Bird, addr: &str) -> Option<TorSession> {
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
                .then(|| tor.since_ms(&n).map(|since| TorSession { name: n, since }))?;
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
    let tor = bird_tor(&mut lab);
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
    let before = imported(&tor, &s4.name);
    let updates_from_tor = |t: &lab::tapir::Tapir| {
        t.json_args(&["peer", "tor-v4"])[0]["messages_received"]["update"]
            .as_u64()
            .unwrap_or(0)
    };
    let ours_before = updates_from_tor(&t);
    let (ok, out, err) = t.cli(&["neighbor", "refresh", "tor-v4"]);
    assert!(ok && out.contains("asked for the peer's"), "{out}{err}");
    wait_for(WAIT, || (imported(&tor, &s4.name) > before).then_some(()))
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
    let tor = bird_tor(&mut lab);
    let vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let base = example();
    let cfg = lab.write("hv1/tapir.toml", &base);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let (v4, _) = reference::hv_addresses("hv1");
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    let session = tor_session(&tor, &v4).unwrap();
    let vm_since = vm.since_ms("bgp1");

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

    // A group added before the VMs' own: their sessions are untouched.
    let grouped = base.replacen(
        "[[group]]\n",
        "[[group]]\nname = \"other\"\ninterfaces = [\"vnet*\"]\nranges = [\"10.250.0.0/24\"]\n\
         remote-as = \"external\"\nimport = \"BGP-FROM-VMS\"\n\n[[group]]\n",
        1,
    );
    assert_ne!(grouped, base);
    std::fs::write(&cfg, &grouped).unwrap();
    let (code, out, err) = t.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("group other added"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        lab::bird::same_instant(vm.since_ms("bgp1"), vm_since),
        "the VM's session was reset: {:?}",
        vm.protocol("bgp1")
    );
    assert!(tor.route("10.3.0.1/32").is_some());
}

/// The prefixes tor's BIRD holds from one of its protocols.
fn tor_prefixes_from(tor: &lab::bird::Bird, protocol: &str) -> Vec<String> {
    let mut out: Vec<String> = tor
        .cmd(&["show", "route", "protocol", protocol])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains('/'))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

#[test]
fn what_goes_out_is_what_tor_holds_and_why_says_which_term() {
    let mut lab = reference::standard(&[11, 13]);
    let bird_tor = tor::start(&mut lab, Kind::Bird);
    let tor = match &bird_tor {
        tor::Tor::Bird(b) => b,
        _ => unreachable!(),
    };
    let _vm = lab.bird(
        "vm11",
        &reference::vm_bird_dual_config(11, 64613, &["10.3.0.1/32"], &["2001:db8:3::1/128"]),
    );
    // The rogue: its routes never reach the Loc-RIB.
    let _vm13 = reference::vm_bird(&mut lab, 13, &["10.99.0.0/24"]);
    let cfg = example().replace(
        "local-as = 64612\n",
        "local-as = 64612\nannounce = [\"198.51.100.0/24\"]\n",
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let (v4, _) = reference::hv_addresses("hv1");
    let TorSession { name: session, .. } = wait_for(WAIT, || {
        bird_tor.route("10.3.0.1/32")?;
        bird_tor.route("198.51.100.0/24")?;
        tor_session(tor, &v4)
    })
    .unwrap_or_else(|| panic!("{}", lab.all_logs()));

    // --export tor-v4: exactly the prefixes tor holds from hv1's IPv4
    // session, with the AS path, communities and next hop tor sees.
    let sent = rows(&t.json_args(&["routes", "--export", "tor-v4"]));
    let mut prefixes: Vec<String> = sent
        .iter()
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .collect();
    prefixes.sort();
    assert_eq!(prefixes, tor_prefixes_from(tor, &session), "{sent:?}");
    assert_eq!(prefixes, ["10.3.0.1/32", "198.51.100.0/24"]);
    for r in &sent {
        let at_tor = bird_tor.route(r["prefix"].as_str().unwrap()).unwrap();
        let path: Vec<String> = at_tor.as_path.iter().map(|a| a.to_string()).collect();
        assert_eq!(r["as_path"], path.join(" "), "{r} vs {at_tor:?}");
        let communities: Vec<String> = r["communities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(communities, at_tor.communities, "{r}");
        assert_eq!(r["next_hop"], at_tor.next_hop, "{r}");
    }
    // One prefix; the text table says the same.
    let one = rows(&t.json_args(&["routes", "10.3.0.1/32", "--export", "tor-v4"]));
    assert_eq!(one.len(), 1, "{one:?}");
    let text = t.show(&["routes", "--export", "tor-v4"]);
    assert!(text.contains("198.51.100.0/24"), "{text}");

    // --why: the term that decided, for each upstream neighbor.
    let why = rows(&t.json_args(&["routes", "--why", "10.3.0.1/32"]));
    let v4_why = why.iter().find(|v| v["neighbor"] == "tor-v4").unwrap();
    assert_eq!(v4_why["sent"], true, "{why:?}");
    assert!(
        v4_why["reason"]
            .as_str()
            .unwrap()
            .contains("accepted by term 1 of policy TO-TOR"),
        "{v4_why}"
    );
    let v6_why = why.iter().find(|v| v["neighbor"] == "tor-v6").unwrap();
    assert_eq!(v6_why["sent"], false);
    assert!(v6_why["reason"]
        .as_str()
        .unwrap()
        .contains("family is not negotiated"));
    let local = rows(&t.json_args(&["routes", "--why", "198.51.100.0/24", "--export", "tor-v4"]));
    assert!(
        local[0]["reason"]
            .as_str()
            .unwrap()
            .contains("tapir itself (announce): sent: accepted by term 2 of policy TO-TOR"),
        "{local:?}"
    );
    let refused = rows(&t.json_args(&["routes", "--why", "10.99.0.0/24", "--export", "tor-v4"]));
    assert_eq!(refused[0]["sent"], false);
    assert!(
        refused[0]["reason"].as_str().unwrap().contains("no route"),
        "{refused:?}"
    );
    assert!(tor.route("10.99.0.0/24").is_none());

    // Mistakes are named.
    let (ok, _, err) = t.cli(&["show", "routes", "--export", "vm11"]);
    assert!(!ok && err.contains("export policy"), "{err}");
    let (ok, _, err) = t.cli(&["show", "routes", "--why", "10.3.0.1", "--export", "tor-v4"]);
    assert!(!ok && err.contains("give a prefix"), "{err}");
    let (ok, _, err) = t.cli(&["show", "routes", "--export", "tor-v4", "--refused"]);
    assert!(!ok && err.contains("about what came in"), "{err}");
}

/// `ip route show PREFIX proto PROTOCOL` in hv1, if it has one.
fn kernel_route(lab: &Lab, prefix: &str, protocol: &str) -> Option<String> {
    let o = lab.ip("hv1", &["route", "show", prefix, "proto", protocol]);
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!out.is_empty()).then_some(out)
}

#[test]
fn the_kernel_table_is_repaired_and_a_refusal_is_shown_and_retried() {
    let mut lab = reference::standard(&[11]);
    let _tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    // Another daemon's route, as FRR's zebra installs its BGP routes
    // (protocol 186, metric 20): tapir's start and scans leave it alone.
    lab.ip(
        "hv1",
        &[
            "route",
            "add",
            "10.3.0.88/32",
            "dev",
            "tap11",
            "proto",
            "186",
            "metric",
            "20",
        ],
    );
    let cfg = example().replace("scan-interval = 60", "scan-interval = 2");
    assert!(cfg.contains("scan-interval = 2"));
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    // The first three installs of 10.3.0.1/32 name an interface that does
    // not exist: the kernel refuses them (the gateway is unreachable
    // through it: ENETUNREACH).
    let t = lab.tapir_with_env(
        "hv1",
        Path::new(TAPIR),
        &cfg,
        "debug",
        &["TAPIR_FAILPOINT=kernel-refuse:10.3.0.1/32:3"],
    );
    let r = wait_for(WAIT, || {
        t.routes_for("10.3.0.1/32")
            .into_iter()
            .find(|r| r["kernel_error"].is_string())
    })
    .unwrap_or_else(|| panic!("{}\n{}", t.show(&["routes"]), lab.all_logs()));
    assert_eq!(r["best"], true, "{r}");
    assert_eq!(r["installed"], false, "{r}");
    // Seen after the first, second or third refusal: the next scan can
    // come within a second of the first (the count is checked in the log
    // below).
    let why = r["kernel_error"].as_str().unwrap();
    assert!(
        why.starts_with("ENETUNREACH (")
            && ["refused 1 time", "refused 2 times", "refused 3 times"]
                .iter()
                .any(|n| why.ends_with(n)),
        "{r}"
    );
    let text = t.show(&["routes", "10.3.0.1/32"]);
    assert!(
        text.contains("10.3.0.1/32 *K!") && text.contains("KERNEL REFUSED: ENETUNREACH"),
        "{text}"
    );
    // Tried again (after 1, 2, 4 s): the fourth install goes through.
    wait_for(WAIT, || kernel_route(&lab, "10.3.0.1/32", "180"))
        .unwrap_or_else(|| panic!("never installed\n{}", lab.log(&t.log)));
    let r = wait_for(WAIT, || {
        t.routes_for("10.3.0.1/32")
            .into_iter()
            .find(|r| r["installed"] == true)
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["routes"])));
    assert!(r["kernel_error"].is_null(), "{r}");
    let log = lab.log(&t.log);
    assert_eq!(log.matches("kernel refused a route").count(), 3, "{log}");

    // Someone deletes it: back within the scan interval.
    // (Not read back in between: the repair may be that quick.)
    let del = lab.ip("hv1", &["route", "del", "10.3.0.1/32", "proto", "180"]);
    assert!(del.status.success(), "{del:?}");
    wait_for(Duration::from_secs(10), || {
        kernel_route(&lab, "10.3.0.1/32", "180")
    })
    .unwrap_or_else(|| panic!("not repaired\n{}", lab.log(&t.log)));
    // A route of our protocol the Loc-RIB does not have: removed.
    lab.ip(
        "hv1",
        &[
            "route",
            "add",
            "10.3.0.77/32",
            "dev",
            "tap11",
            "proto",
            "180",
            "metric",
            "180",
        ],
    );
    wait_for(Duration::from_secs(10), || {
        kernel_route(&lab, "10.3.0.77/32", "180")
            .is_none()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not removed\n{}", lab.log(&t.log)));
    // And the other daemon's route is still there.
    assert!(kernel_route(&lab, "10.3.0.88/32", "186").is_some());
}

#[test]
fn a_restart_by_sigterm_keeps_the_prefix_at_tor_and_in_the_kernel() {
    let mut lab = reference::standard(&[11]);
    let bird_tor = tor::start(&mut lab, Kind::Bird);
    let vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    // The deferral long enough for the VM to be back on a loaded machine.
    let cfg = example() + "\n[graceful-restart]\nrestart-time = 120\ndeferral = 10\n";
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    wait_for(WAIT, || {
        bird_tor.route("10.3.0.1/32")?;
        kernel_route(&lab, "10.3.0.1/32", "180")
    })
    .unwrap_or_else(|| panic!("{}", lab.all_logs()));
    let vm_since = vm.since_ms("bgp1");

    // Watched every 10 ms from outside: tor's table and hv1's kernel.
    let ns = lab.netns("hv1");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (misses, checks, t2, first_log) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let (mut misses, mut checks) = (Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                checks += 1;
                let o = std::process::Command::new("ip")
                    .args(["-n", &ns, "route", "show", "10.3.0.1/32", "proto", "180"])
                    .output()
                    .unwrap();
                if o.stdout.is_empty() {
                    misses.push("kernel");
                }
                if bird_tor.route("10.3.0.1/32").is_none() {
                    misses.push("tor");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (misses, checks)
        });
        // What `systemctl restart tapir` does: SIGTERM, then a new start.
        lab.stop(t.pid);
        let first_log = lab.log(&t.log);
        let t2 = lab.tapir("hv1", Path::new(TAPIR), &cfg);
        // The VM is back, and the deferral is over (its stale routes
        // removed: a second more, for tor and the kernel to show it).
        wait_for(WAIT, || {
            t2.routes_for("10.3.0.1/32")
                .into_iter()
                .find(|r| r["installed"] == true)
        })
        .unwrap_or_else(|| panic!("{}", lab.all_logs()));
        wait_for(WAIT, || {
            lab.log(&t2.log)
                .contains("graceful restart complete")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("deferral never over\n{}", lab.all_logs()));
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (m, c) = watcher.join().unwrap();
        (m, c, t2, first_log)
    });
    assert!(checks > 100, "the watcher ran {checks} times");
    assert!(
        misses.is_empty(),
        "10.3.0.1/32 went missing during the restart: {misses:?}\n{}",
        lab.all_logs()
    );
    assert!(
        first_log.contains("SIGTERM: shutting down graceful=true"),
        "{first_log}"
    );
    assert!(bird_tor.route("10.3.0.1/32").is_some());
    assert!(t2.json("peers").as_array().is_some());
    // The VM's session was made anew (tapir's side restarted).
    assert!(!lab::bird::same_instant(vm.since_ms("bgp1"), vm_since));
}

#[test]
fn a_reload_moves_our_kernel_routes_to_a_new_protocol_and_metric() {
    let mut lab = reference::standard(&[11]);
    let bird_tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let base = example();
    let cfg = lab.write("hv1/tapir.toml", &base);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    wait_for(WAIT, || kernel_route(&lab, "10.3.0.1/32", "180"))
        .unwrap_or_else(|| panic!("{}", lab.all_logs()));

    // Another protocol and metric: the route moves, nothing stays behind.
    let moved = base.replace(
        "protocol = \"tapir\"\nmetric = 180\n",
        "protocol = \"181\"\nmetric = 190\n",
    );
    assert_ne!(moved, base);
    std::fs::write(&cfg, &moved).unwrap();
    let (code, out, err) = t.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("[kernel] protocol 180 → 181, metric 180 → 190: applied"),
        "{out}"
    );
    let now = wait_for(WAIT, || kernel_route(&lab, "10.3.0.1/32", "181"))
        .unwrap_or_else(|| panic!("{}", lab.log(&t.log)));
    assert!(now.contains("metric 190"), "{now}");
    wait_for(WAIT, || {
        kernel_route(&lab, "10.3.0.1/32", "180")
            .is_none()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the old route stayed\n{}", lab.log(&t.log)));
    assert!(bird_tor.route("10.3.0.1/32").is_some());

    // Install off: our routes leave the kernel, not tor; on: back.
    let off = moved.replace("install = true", "install = false");
    assert_ne!(off, moved);
    std::fs::write(&cfg, &off).unwrap();
    let (code, out, err) = t.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for(WAIT, || {
        kernel_route(&lab, "10.3.0.1/32", "181")
            .is_none()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", lab.log(&t.log)));
    assert!(bird_tor.route("10.3.0.1/32").is_some());
    std::fs::write(&cfg, &moved).unwrap();
    let (code, out, err) = t.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for(WAIT, || kernel_route(&lab, "10.3.0.1/32", "181"))
        .unwrap_or_else(|| panic!("{}", lab.log(&t.log)));
}

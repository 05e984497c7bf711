//! Limits against a hostile or broken VM (docs/security.md), in the lab:
//! each limit holds, is counted, and the honest sessions next to it carry
//! on. Needs root.

use std::path::Path;
use std::time::Duration;

use lab::bird::same_instant;
use lab::reference;
use lab::tor::{self, Kind};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);
const METRICS: &str = "127.0.0.1:9179";

/// The example with these lines added to its `[[group]]`, and metrics on.
fn config(group_extra: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
    let text = text.replace(
        "graceful-restart-time = 120",
        &format!("graceful-restart-time = 120\n{group_extra}"),
    );
    format!("{text}\n[metrics]\nlisten = \"{METRICS}\"\n")
}

fn limit_hits(lab: &Lab, limit: &str) -> f64 {
    metric(lab, "tapir_limit_hits_total", &[("limit", limit)])
}

/// A sample of tapir's metrics on hv1 (0 if absent).
fn metric(lab: &Lab, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = lab
        .http_get("hv1", Path::new(TAPIR), METRICS, "/metrics")
        .unwrap_or_default();
    lab::metric_sample(&text, name, labels).unwrap_or(0.0)
}

#[test]
fn long_as_paths_are_refused_and_the_rest_goes_through() {
    let mut lab = reference::standard(&[12]);
    let tor = tor::start(&mut lab, Kind::Bird);
    // vm12 (no inventory entry; the group filter allows 10.3.0.0/24{32,32})
    // sends 10.3.0.13/32 with ten more copies of its AS.
    let prepends = "bgp_path.prepend(64613); ".repeat(10);
    let vm = reference::vm_bird_config(12, 64613, &["10.3.0.12/32", "10.3.0.13/32"]).replace(
        "export where source = RTS_STATIC;",
        &format!(
            "export filter {{ if net = 10.3.0.13/32 then {{ {prepends} }} if source = RTS_STATIC then accept; reject; }};"
        ),
    );
    let _vm = lab.bird("vm12", &vm);
    let cfg = lab.write("hv1/tapir.toml", &config("max-as-path-length = 8"));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let ok = wait_for(WAIT, || tor.route("10.3.0.12/32"));
    assert!(ok.is_some(), "{}", lab.all_logs());
    let refused = wait_for(WAIT, || {
        t.routes_for("10.3.0.13/32")
            .into_iter()
            .find(|r| r["accepted"] == false)
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["routes"])));
    assert!(
        refused["rejected_reason"]
            .as_str()
            .is_some_and(|r| r.contains("max-as-path-length 8")),
        "{refused}"
    );
    assert!(tor.route("10.3.0.13/32").is_none());
    assert!(limit_hits(&lab, "as-path-length") >= 1.0);
}

#[test]
fn a_tap_with_many_addresses_gets_only_so_many_sessions() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    // The honest VM is tried at its IPv4, IPv6 and link-local addresses:
    // three sessions, the limit.
    let cfg = lab.write("hv1/tapir.toml", &config("max-sessions-per-interface = 3"));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    assert!(wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some());
    // Sessions and probes alike: the limit counts what is tried.
    let on_tap = |t: &lab::tapir::Tapir| {
        t.json_args(&["peers", "--all"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["interface"] == "tap11")
            .count()
    };
    let three = wait_for(WAIT, || (on_tap(&t) == 3).then_some(()));
    assert!(three.is_some(), "{}", t.show(&["peers", "--all"]));
    // Now the tap claims ten more addresses (a hook gone wrong, or a VM
    // that got them routed): no more sessions.
    for n in 50..60 {
        lab.ip(
            "hv1",
            &[
                "route",
                "add",
                &format!("10.192.24.{n}/32"),
                "dev",
                "tap11",
                "proto",
                "static",
            ],
        );
    }
    let hit = wait_for(WAIT, || {
        (limit_hits(&lab, "sessions-per-interface") >= 1.0).then_some(())
    });
    assert!(hit.is_some(), "{}", t.show(&["peers", "--all"]));
    assert_eq!(on_tap(&t), 3, "{}", t.show(&["peers", "--all"]));
    // The honest session never noticed.
    assert!(vm.is_established("bgp1"));
    assert!(tor.route("10.3.0.1/32").is_some());
}

#[test]
fn a_connection_flood_from_a_tap_is_cut_off() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let cfg = lab.write("hv1/tapir.toml", &config("connection-rate = 2"));
    let _t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    assert!(wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some());
    let since = wait_for(WAIT, || {
        vm.is_established("bgp1").then(|| vm.since_ms("bgp1"))
    })
    .unwrap();
    // 60 connections as fast as bash opens them, from the VM's address.
    lab.exec(
        "vm11",
        &[
            "bash",
            "-c",
            "for i in $(seq 60); do (exec 3<>/dev/tcp/10.192.24.1/179) 2>/dev/null; done; true",
        ],
    );
    let hit = wait_for(WAIT, || {
        (limit_hits(&lab, "connection-rate") >= 1.0).then_some(())
    });
    assert!(hit.is_some());
    // The honest session is the same one, up since before.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        same_instant(vm.since_ms("bgp1"), since),
        "{:?}",
        vm.protocol("bgp1")
    );
    assert!(vm.is_established("bgp1"));
    assert!(tor.route("10.3.0.1/32").is_some());
}

/// TCP-MD5 (RFC 2385) with BIRD: a group key that any VM in the group's
/// ranges uses, and a static neighbor's key from a file. A VM with the
/// wrong key, or none, gets no session; the others do not notice.
#[test]
fn tcp_md5_with_bird_for_groups_and_neighbors() {
    let mut lab = reference::standard(&[11, 12, 13]);
    // vm14 is a static neighbor on a tap outside the group, passive on our
    // side: its connections meet the listener's key.
    lab.add_host("vm14");
    reference::plug(&mut lab, "hv1", "ext14", 14, 14);
    let tor = tor::start(&mut lab, Kind::Bird);
    let good = lab.bird(
        "vm11",
        &reference::vm_bird_config_with(11, 64613, &["10.3.0.1/32"], "password \"vm-secret\";"),
    );
    let wrong = lab.bird(
        "vm12",
        &reference::vm_bird_config_with(12, 64613, &["10.3.0.12/32"], "password \"guess\";"),
    );
    let none = reference::vm_bird(&mut lab, 13, &["10.3.0.13/32"]);
    let nbr = lab.bird(
        "vm14",
        &reference::vm_bird_config_with(14, 65014, &["10.9.0.0/24"], "password \"nbr-secret\";"),
    );
    lab.write("hv1/nbr.key", "nbr-secret\n");
    let cfg = config("password = \"vm-secret\"").replace(
        "[[neighbor]]\nname = \"tor-v4\"",
        "[[neighbor]]\nname = \"md5-peer\"\naddress = \"10.192.24.14\"\nremote-as = 65014\npassword-file = \"nbr.key\"\npassive = true\n\n[[neighbor]]\nname = \"tor-v4\"",
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let up = wait_for(WAIT, || {
        (good.is_established("bgp1") && nbr.is_established("bgp1")).then_some(())
    });
    assert!(up.is_some(), "{}\n{}", t.show(&["peers"]), lab.all_logs());
    assert!(wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some());
    // Both others kept trying all along; give them a few more rounds.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !wrong.is_established("bgp1"),
        "{:?}",
        wrong.protocol("bgp1")
    );
    assert!(!none.is_established("bgp1"), "{:?}", none.protocol("bgp1"));
    assert!(tor.route("10.3.0.12/32").is_none());
    assert!(tor.route("10.3.0.13/32").is_none());
    let peer = t.json("peers");
    let state = |addr: &str| {
        peer.as_array()
            .unwrap()
            .iter()
            .find(|p| p["address"] == addr)
            .map(|p| p["state"].clone())
    };
    assert_eq!(state("10.192.24.14"), Some("Established".into()), "{peer}");
    assert_ne!(state("10.192.24.12"), Some("Established".into()), "{peer}");
}

/// GTSM (RFC 5082) for a single-hop group, with BIRD's `ttl security on`:
/// a link-local guest that uses it gets its session; one that sends with
/// a TTL below 255 does not.
#[test]
fn gtsm_for_a_single_hop_group_with_bird() {
    let mut lab = reference::standard(&[12, 13]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let good = lab.bird(
        "vm12",
        &reference::vm_bird_link_local_config(
            12,
            64613,
            &["2001:db8:3::12/128"],
            "ttl security on;",
        ),
    );
    let plain = lab.bird(
        "vm13",
        &reference::vm_bird_link_local_config(13, 64613, &["2001:db8:3::13/128"], ""),
    );
    let cfg = lab.write("hv1/tapir.toml", &config("ttl-security = true"));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let up = wait_for(WAIT, || good.is_established("bgp1").then_some(()));
    assert!(up.is_some(), "{}\n{}", t.show(&["peers"]), lab.all_logs());
    assert!(wait_for(WAIT, || tor.route("2001:db8:3::12/128")).is_some());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !plain.is_established("bgp1"),
        "{:?}",
        plain.protocol("bgp1")
    );
    assert!(tor.route("2001:db8:3::13/128").is_none());
}

/// A bug that panics in one VM's session task (forced with a failpoint,
/// built with the `failpoints` feature only) ends that session, not the daemon: the
/// other VM's session, the top-of-rack and the control socket carry on,
/// and the failed session is started again.
#[test]
fn a_panicking_session_task_takes_nothing_else_down() {
    let mut lab = reference::standard(&[11, 12]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let good = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let _bad = lab.bird(
        "vm12",
        &reference::vm_bird_config_with(
            12,
            64613,
            &["10.3.0.66/32"],
            "connect delay time 1; error wait time 1, 2;",
        ),
    );
    let cfg = lab.write("hv1/tapir.toml", &config(""));
    let t = lab.tapir_with_env(
        "hv1",
        Path::new(TAPIR),
        &cfg,
        "info",
        &["TAPIR_FAILPOINT=panic-on-prefix:10.3.0.66/32"],
    );
    assert!(
        wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some(),
        "{}",
        lab.all_logs()
    );
    let failed = wait_for(WAIT, || {
        let log = lab.log(&t.log);
        (log.contains("session task failed") && log.contains("had failed: starting it again"))
            .then_some(())
    });
    assert!(failed.is_some(), "{}", lab.log(&t.log));
    let since = wait_for(WAIT, || {
        good.is_established("bgp1").then(|| good.since_ms("bgp1"))
    })
    .unwrap();
    // Let it fail a few more times.
    std::thread::sleep(Duration::from_secs(5));
    let (ok, _, err) = t.cli(&["show", "status"]);
    assert!(ok, "the daemon is gone: {err}");
    assert!(
        same_instant(good.since_ms("bgp1"), since),
        "{:?}",
        good.protocol("bgp1")
    );
    assert!(tor.route("10.3.0.1/32").is_some());
    assert!(tor.route("10.3.0.66/32").is_none());
    lab.stop(t.pid);
}

/// The kernel drops notifications when tapir's netlink socket is full (a
/// burst of link changes). Here the socket is made tiny (a test-build
/// switch), tapir is paused, and a burst of 400 link changes hides a VM's
/// new host route among them, past the point where the socket is full:
/// tapir sees the overrun, resyncs at once (not at its 60 s tick), finds
/// the route and peers with the VM, whose prefix reaches tor.
#[test]
fn a_netlink_overrun_is_caught_up_at_once() {
    let mut lab = reference::standard(&[11]);
    // vm12's tap is up with the gateway address, but the hypervisor has
    // not routed its address yet: no session.
    lab.add_host("vm12");
    reference::plug_bare(&mut lab, "hv1", "tap12", 12);
    lab.up("hv1", "tap12");
    lab.ip(
        "hv1",
        &[
            "addr",
            "add",
            "10.192.24.1/32",
            "dev",
            "tap12",
            "scope",
            "link",
        ],
    );
    let tor = tor::start(&mut lab, Kind::Bird);
    let good = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let _vm12 = lab.bird(
        "vm12",
        &reference::vm_bird_config_with(
            12,
            64613,
            &["10.3.0.2/32"],
            "connect delay time 1; connect retry time 1; error wait time 1, 2;",
        ),
    );
    let cfg = lab.write("hv1/tapir.toml", &config(""));
    let t = lab.tapir_with_env(
        "hv1",
        Path::new(TAPIR),
        &cfg,
        "info",
        &["TAPIR_NETLINK_RCVBUF=1024"],
    );
    assert!(
        wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some(),
        "{}",
        lab.all_logs()
    );
    let since = good.since_ms("bgp1");
    assert!(tor.route("10.3.0.2/32").is_none());
    let mut batch = String::new();
    for i in 0..200 {
        batch += &format!("link add noise{i} type bridge\n");
    }
    batch += "route replace 10.192.24.12/32 proto static dev tap12\n";
    for i in 0..200 {
        batch += &format!("link del noise{i}\n");
    }
    let file = lab.write("hv1/burst", &batch);
    // tapir is stopped while the burst runs, so that the socket fills
    // before the route's notification comes: it is certainly lost.
    let signal = |s: &str| {
        let ok = std::process::Command::new("kill")
            .args([s, &t.pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    let out = lab.exec("hv1", &["ip", "-batch", &file.to_string_lossy()]);
    signal("-CONT");
    assert!(out.status.success(), "{out:?}");
    // Well before the periodic resync (60 s after start).
    let caught_up = wait_for(Duration::from_secs(15), || tor.route("10.3.0.2/32"));
    assert!(caught_up.is_some(), "{}", lab.log(&t.log));
    assert!(metric(&lab, "tapir_kernel_netlink_overruns_total", &[]) >= 1.0);
    let log = lab.log(&t.log);
    assert!(log.contains("socket overrun"), "{log}");
    assert!(
        log.contains("notifications had been lost; catching up"),
        "{log}"
    );
    // Nothing else moved.
    assert!(same_instant(good.since_ms("bgp1"), since));
    assert!(tor.route("10.3.0.1/32").is_some());
    lab.stop(t.pid);
}

/// TCP-AO (RFC 5925) needs Linux 6.7 built with CONFIG_TCP_AO. On such a
/// kernel tapir puts the group's key on its listeners and runs; on another
/// (this project's CI machine has none) it refuses to start and says why,
/// rather than run without the authentication the config asks for.
#[test]
fn tcp_ao_runs_where_the_kernel_has_it_and_says_so_where_not() {
    let mut lab = reference::standard(&[]);
    let cfg = config(
        "tcp-ao = { key = \"ao-secret\", algorithm = \"hmac(sha1)\", send-id = 1, recv-id = 1 }",
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let (ok, out, err) = lab::tapir::Tapir {
        bin: TAPIR.into(),
        socket: lab.dir().join("none.sock"),
        pid: 0,
        log: String::new(),
    }
    .cli(&["check", "--config", &cfg.to_string_lossy()]);
    assert!(ok, "{out}{err}");
    let socket = lab.dir().join("hv1/tapir.sock");
    let pid = lab.spawn(
        "hv1",
        &[
            TAPIR,
            "--socket",
            &socket.to_string_lossy(),
            "run",
            "--config",
            &cfg.to_string_lossy(),
        ],
        "hv1/tapir.log",
    );
    let t = lab::tapir::Tapir {
        bin: TAPIR.into(),
        socket,
        pid,
        log: "hv1/tapir.log".into(),
    };
    let outcome = wait_for(WAIT, || {
        if t.cli(&["show", "status"]).0 {
            return Some(true);
        }
        let log = lab.log(&t.log);
        log.contains("TCP-AO key for 10.192.24.0/23")
            .then_some(false)
    });
    match outcome {
        Some(true) => {} // a kernel with TCP-AO: running with the keys on
        Some(false) => {
            let log = lab.log(&t.log);
            assert!(log.contains("CONFIG_TCP_AO"), "{log}");
            // It did not stay up without its authentication.
            std::thread::sleep(Duration::from_millis(500));
            assert!(!t.cli(&["show", "status"]).0);
        }
        None => panic!("neither running nor a clear error:\n{}", lab.log(&t.log)),
    }
}

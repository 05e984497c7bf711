//! The routing core in the reference lab: VM routes reach the top-of-rack
//! (BIRD, FRR, GoBGP) with the AS path the policy asks for, the kernel of
//! hv1 holds what the Loc-RIB selected, and best-path selection between two
//! VMs announcing one anycast prefix. Needs root.

use std::path::Path;
use std::time::Duration;

use lab::bird::same_instant;
use lab::reference;
use lab::tor::{self, Kind, Tor, TorRoute};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);

fn example_with_mode(mode: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
    text.replace("as-path = \"strip\"", &format!("as-path = \"{mode}\""))
}

fn wait_tor(lab: &Lab, tor: &Tor, prefix: &str, want: impl Fn(&TorRoute) -> bool) -> TorRoute {
    wait_for(WAIT, || tor.route(prefix).filter(|r| want(r))).unwrap_or_else(|| {
        panic!(
            "tor: {prefix} not as expected: {:?}\n{}",
            tor.route(prefix),
            lab.all_logs()
        )
    })
}

fn kernel_routes(lab: &Lab) -> Vec<String> {
    let mut v = Vec::new();
    for fam in ["-4", "-6"] {
        let o = lab.ip("hv1", &[fam, "route", "show", "proto", "180"]);
        v.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string()),
        );
    }
    v
}

/// hv1 with vm11 (recdns1001) announcing its IPv4 and IPv6 service prefixes
/// over its two sessions, and tor of the given kind.
fn setup(kind: Kind, mode: &str) -> (Lab, Tor, lab::tapir::Tapir, lab::bird::Bird) {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, kind);
    let vm = lab.bird(
        "vm11",
        &reference::vm_bird_dual_config(11, 64613, &["10.3.0.1/32"], &["2001:db8:3::1/128"]),
    );
    let cfg = lab.write("hv1/tapir.toml", &example_with_mode(mode));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    (lab, tor, t, vm)
}

fn vm_routes_reach_tor(kind: Kind) {
    let (lab, tor, t, vm) = setup(kind, "strip");
    // strip: the VM's ASN is gone, the route leaves with 64612 alone.
    let r4 = wait_tor(&lab, &tor, "10.3.0.1/32", |_| true);
    assert_eq!(r4.next_hop, "10.192.21.6");
    assert_eq!(r4.as_path, vec![64612], "{r4:?}");
    assert!(r4.communities.contains(&"64612:100".to_string()), "{r4:?}");
    let r6 = wait_tor(&lab, &tor, "2001:db8:3::1/128", |_| true);
    assert_eq!(r6.next_hop, "2001:db8:21::6", "{r6:?}");
    assert_eq!(r6.as_path, vec![64612], "{r6:?}");
    // tor's own routes reach tapir but are not sent back to tor: the only
    // route tapir exports on tor-v4 is the VM's.
    let got = wait_for(WAIT, || {
        t.routes_for("192.0.2.0/24")
            .iter()
            .any(|r| r["accepted"] == true)
            .then_some(())
    });
    assert!(got.is_some(), "{}", t.show(&["routes"]));
    let peers = t.json("peers");
    let tor4 = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tor-v4")
        .unwrap();
    assert_eq!(tor4["routes_exported"], 1, "{tor4}");

    // The VM withdraws: tor loses the prefix, and so does hv1's kernel.
    vm.cmd(&["disable", "static4"]);
    let gone = wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()));
    assert!(
        gone.is_some(),
        "tor kept 10.3.0.1/32 after the VM withdrew it"
    );
    assert!(
        tor.route("2001:db8:3::1/128").is_some(),
        "the IPv6 prefix must stay"
    );
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        (!k.iter().any(|l| l.starts_with("10.3.0.1"))).then_some(k)
    });
    assert!(
        k.is_some(),
        "kernel kept 10.3.0.1: {:?}",
        kernel_routes(&lab)
    );
}

#[test]
fn vm_routes_reach_a_bird_tor() {
    vm_routes_reach_tor(Kind::Bird);
}

#[test]
fn vm_routes_reach_an_frr_tor() {
    vm_routes_reach_tor(Kind::Frr);
}

#[test]
fn vm_routes_reach_a_gobgp_tor() {
    vm_routes_reach_tor(Kind::Gobgp);
}

#[test]
fn every_as_path_mode_at_a_bird_tor() {
    every_as_path_mode(Kind::Bird);
}

#[test]
fn every_as_path_mode_at_an_frr_tor() {
    every_as_path_mode(Kind::Frr);
}

#[test]
fn every_as_path_mode_at_a_gobgp_tor() {
    every_as_path_mode(Kind::Gobgp);
}

fn every_as_path_mode(kind: Kind) {
    for (mode, want) in [
        ("keep", vec![64612, 64613]),
        ("strip", vec![64612]),
        ("strip-private", vec![64612]),
        ("prepend 2", vec![64612, 64612, 64612, 64613]),
    ] {
        let (lab, tor, _t, _vm) = setup(kind, mode);
        let r = wait_tor(&lab, &tor, "10.3.0.1/32", |r| r.as_path == want);
        assert_eq!(r.next_hop, "10.192.21.6", "{kind:?} {mode}");
        assert!(
            r.communities.contains(&"64612:100".to_string()),
            "{kind:?} {mode}: {r:?}"
        );
    }
}

#[test]
fn kernel_holds_what_the_loc_rib_selected() {
    let (mut lab, _tor, t, vm) = setup(Kind::Bird, "strip");
    let expect = |k: &[String]| {
        k.iter()
            .any(|l| l.starts_with("10.3.0.1 via 10.192.24.11 dev tap11"))
            && k.iter()
                .any(|l| l.starts_with("2001:db8:3::1 via fe80::") && l.contains("dev tap11"))
    };
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        expect(&k).then_some(k)
    })
    .unwrap_or_else(|| panic!("kernel: {:?}\n{}", kernel_routes(&lab), t.show(&["rib"])));
    // Exactly the VM routes of the Loc-RIB: tor's routes are not imported
    // (kernel-import is off for upstream neighbors by default).
    assert_eq!(k.len(), 2, "{k:?}");
    let rib = t.json("rib");
    let vm_routes: Vec<&str> = rib
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["from"] == "recdns1001")
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(vm_routes, vec!["10.3.0.1/32", "2001:db8:3::1/128"]);

    // Churn: withdraw and re-announce a few times; the kernel follows.
    for _ in 0..3 {
        vm.cmd(&["disable", "static4"]);
        assert!(wait_for(WAIT, || (!kernel_routes(&lab)
            .iter()
            .any(|l| l.starts_with("10.3.0.1")))
        .then_some(()))
        .is_some());
        vm.cmd(&["enable", "static4"]);
        assert!(wait_for(WAIT, || expect(&kernel_routes(&lab)).then_some(())).is_some());
    }
    assert_eq!(kernel_routes(&lab).len(), 2);

    // Stale routes of ours are removed when tapir starts again.
    lab.ip(
        "hv1",
        &[
            "route",
            "add",
            "10.3.0.99/32",
            "via",
            "10.192.24.11",
            "dev",
            "tap11",
            "proto",
            "180",
        ],
    );
    lab.stop(t.pid);
    let cfg = lab.dir().join("hv1/tapir.toml");
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        (expect(&k) && !k.iter().any(|l| l.starts_with("10.3.0.99"))).then_some(k)
    });
    assert!(
        k.is_some(),
        "{:?}\n{}",
        kernel_routes(&lab),
        t.show(&["rib"])
    );
}

#[test]
fn two_vms_one_anycast_prefix() {
    let mut lab = reference::standard(&[12, 13]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _a = reference::vm_bird(&mut lab, 12, &["10.3.0.53/32"]);
    let b = reference::vm_bird(&mut lab, 13, &["10.3.0.53/32"]);
    let cfg = lab.write("hv1/tapir.toml", &example_with_mode("strip"));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    // Equal paths: the lower router id (vm12, 10.192.24.12) wins.
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        k.iter()
            .any(|l| l.starts_with("10.3.0.53 via 10.192.24.12 dev tap12"))
            .then_some(k)
    });
    assert!(
        k.is_some(),
        "{:?}\n{}",
        kernel_routes(&lab),
        t.show(&["rib"])
    );
    // Both paths in the Loc-RIB, vm12's the best.
    let e = wait_for(WAIT, || {
        let rib = t.json("rib");
        rib.as_array()?
            .iter()
            .find(|r| r["prefix"] == "10.3.0.53/32" && r["others"][0] == "tap13")
            .cloned()
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["rib"])));
    assert_eq!(e["from"], "tap12");
    wait_tor(&lab, &tor, "10.3.0.53/32", |r| r.next_hop == "10.192.21.6");
    // vm12 goes away: vm13's path takes over in the kernel; tor keeps the prefix.
    reference::unplug(&mut lab, "hv1", "tap12");
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        k.iter()
            .any(|l| l.starts_with("10.3.0.53 via 10.192.24.13 dev tap13"))
            .then_some(k)
    });
    assert!(k.is_some(), "{:?}", kernel_routes(&lab));
    assert!(tor.route("10.3.0.53/32").is_some());
    assert!(b.is_established("bgp1"));
}

#[test]
fn two_vms_one_anycast_prefix_with_multipath() {
    let mut lab = reference::standard(&[12, 13]);
    let _a = reference::vm_bird(&mut lab, 12, &["10.3.0.53/32"]);
    let _b = reference::vm_bird(&mut lab, 13, &["10.3.0.53/32"]);
    let cfg = example_with_mode("strip").replace("metric = 180", "metric = 180\nmultipath = true");
    assert!(cfg.contains("multipath = true"));
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let both = |k: &[String]| {
        k.iter()
            .any(|l| l.starts_with("nexthop via 10.192.24.12 dev tap12"))
            && k.iter()
                .any(|l| l.starts_with("nexthop via 10.192.24.13 dev tap13"))
    };
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        both(&k).then_some(k)
    });
    assert!(
        k.is_some(),
        "no ECMP route: {:?}\n{}",
        kernel_routes(&lab),
        t.show(&["rib"])
    );
    // One VM leaves: a plain route via the other.
    reference::unplug(&mut lab, "hv1", "tap12");
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        k.iter()
            .any(|l| l.starts_with("10.3.0.53 via 10.192.24.13 dev tap13"))
            .then_some(k)
    });
    assert!(k.is_some(), "{:?}", kernel_routes(&lab));
}

#[test]
fn graceful_restart_keeps_forwarding_and_the_tor_route() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let vm = lab.bird(
        "vm11",
        &reference::vm_bird_dual_config(11, 64613, &["10.3.0.1/32"], &["2001:db8:3::1/128"]),
    );
    let cfg =
        example_with_mode("strip") + "\n[graceful-restart]\nrestart-time = 120\ndeferral = 10\n";
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let kernel_has = |lab: &Lab, p: &str| kernel_routes(lab).iter().any(|l| l.starts_with(p));
    wait_tor(&lab, &tor, "2001:db8:3::1/128", |_| true);
    wait_tor(&lab, &tor, "10.3.0.1/32", |_| true);
    assert!(wait_for(WAIT, || (kernel_has(&lab, "2001:db8:3::1 ")
        && kernel_has(&lab, "10.3.0.1 "))
    .then_some(()))
    .is_some());

    // Watch the IPv6 prefix in hv1's kernel and at tor during the restart
    // (the watcher reads the kernel with `ip -n`, so the lab stays ours).
    let ns = lab.netns("hv1");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (misses, checks) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let (mut misses, mut checks) = (Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                checks += 1;
                let o = std::process::Command::new("ip")
                    .args(["-n", &ns, "-6", "route", "show", "proto", "180"])
                    .output()
                    .unwrap();
                if !String::from_utf8_lossy(&o.stdout).contains("2001:db8:3::1 ") {
                    misses.push("kernel");
                }
                if tor.route("2001:db8:3::1/128").is_none() {
                    misses.push("tor");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (misses, checks)
        });
        let (ok, _, err) = t.cli(&["stop", "--graceful"]);
        assert!(ok, "{err}");
        let down = wait_for(Duration::from_secs(5), || {
            (!std::path::Path::new(&format!("/proc/{}", t.pid)).exists()
                || std::fs::read_to_string(format!("/proc/{}/stat", t.pid))
                    .is_ok_and(|s| s.contains(") Z ")))
            .then_some(())
        });
        assert!(down.is_some(), "tapir did not stop");
        lab.stop(t.pid);
        // While tapir is down the VM stops serving 10.3.0.1.
        vm.cmd(&["disable", "static4"]);
        std::thread::sleep(Duration::from_millis(500));
        let t2 = lab.tapir("hv1", Path::new(TAPIR), &cfg);
        // After the deferral, what the VM did not announce again is gone,
        // from hv1's kernel and (End-of-RIB) from tor.
        let gone = wait_for(WAIT, || {
            (!kernel_has(&lab, "10.3.0.1 ") && tor.route("10.3.0.1/32").is_none()).then_some(())
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = watcher.join().unwrap();
        assert!(
            gone.is_some(),
            "stale 10.3.0.1 kept: {:?} {:?}\n{}",
            kernel_routes(&lab),
            tor.route("10.3.0.1/32"),
            t2.show(&["rib"])
        );
        r
    });
    assert!(checks > 20, "the watcher ran {checks} times");
    assert!(
        misses.is_empty(),
        "the IPv6 prefix went missing during the restart: {misses:?}"
    );
    assert!(kernel_has(&lab, "2001:db8:3::1 "));
}

#[test]
fn graceful_restart_helper_keeps_a_crashed_vms_routes_until_its_end_of_rib() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    // BIRD's default is to be "aware" only: it must be told it can restart
    // gracefully, then it lists its families in the capability.
    let gr = |c: String| {
        c.replace("multihop;", "multihop; graceful restart on;")
            .replace("external;\n}", "external; graceful restart on;\n}")
    };
    let vm = lab.bird(
        "vm11",
        &gr(reference::vm_bird_dual_config(
            11,
            64613,
            &["10.3.0.1/32"],
            &["2001:db8:3::1/128"],
        )),
    );
    let cfg = lab.write("hv1/tapir.toml", &example_with_mode("strip"));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    wait_tor(&lab, &tor, "10.3.0.1/32", |_| true);
    // The VM's BIRD dies without a NOTIFICATION: its routes are kept as
    // stale (it advertised graceful restart), in the kernel and at tor.
    lab.kill(vm.pid);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        kernel_routes(&lab)
            .iter()
            .any(|l| l.starts_with("10.3.0.1 ")),
        "{:?}",
        kernel_routes(&lab)
    );
    assert!(tor.route("10.3.0.1/32").is_some());
    // It comes back serving only the IPv6 prefix: after its End-of-RIB the
    // stale IPv4 route is gone.
    let _vm = lab.bird(
        "vm11",
        &gr(reference::vm_bird_dual_config(
            11,
            64613,
            &[],
            &["2001:db8:3::1/128"],
        )),
    );
    let gone = wait_for(WAIT, || {
        (!kernel_routes(&lab)
            .iter()
            .any(|l| l.starts_with("10.3.0.1 "))
            && tor.route("10.3.0.1/32").is_none())
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "{:?}\n{}",
        kernel_routes(&lab),
        t.show(&["routes"])
    );
    assert!(tor.route("2001:db8:3::1/128").is_some());
}

#[test]
fn reload_applies_policy_changes_without_resetting_sessions() {
    let (mut lab, tor, t, vm) = setup(Kind::Bird, "strip");
    let cfg = lab.dir().join("hv1/tapir.toml");
    wait_tor(&lab, &tor, "10.3.0.1/32", |r| r.as_path == vec![64612]);
    wait_tor(&lab, &tor, "2001:db8:3::1/128", |_| true);
    // The VM's own view of its sessions: BIRD's "since" must not move.
    let vm_since = settled_since(&vm);
    let flaps = |t: &lab::tapir::Tapir| -> u64 {
        t.json("peers")
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["flaps"].as_u64().unwrap())
            .sum()
    };

    // Export policy: strip -> prepend 1.
    std::fs::write(&cfg, example_with_mode("prepend 1")).unwrap();
    let (ok, out, err) = t.cli(&["reload"]);
    assert!(ok, "{err}");
    assert!(out.contains("applied"), "{out}");
    wait_tor(&lab, &tor, "10.3.0.1/32", |r| {
        r.as_path == vec![64612, 64612, 64613]
    });

    // A broken file is refused whole; nothing changes.
    std::fs::write(&cfg, "router-id = \"10.192.21.6\"\nlocal-as = banana\n").unwrap();
    let (ok, _, err) = t.cli(&["reload"]);
    assert!(!ok);
    assert!(err.contains(":2:12:"), "{err}");
    assert_eq!(
        tor.route("10.3.0.1/32").unwrap().as_path,
        vec![64612, 64612, 64613]
    );

    // Import: recdns1001 may now announce its IPv6 prefix only, so its
    // IPv4 route is refused and leaves tor and the kernel.
    let narrowed = example_with_mode("prepend 1").replace(
        "prefixes = [\"10.3.0.1/32\", \"2001:db8:3::1/128\"]",
        "prefixes = [\"2001:db8:3::1/128\"]",
    );
    std::fs::write(&cfg, narrowed).unwrap();
    let (ok, _, err) = t.cli(&["reload"]);
    assert!(ok, "{err}");
    let gone = wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()));
    assert!(
        gone.is_some(),
        "{}\n{}\n{:?}",
        t.show(&["routes"]),
        t.show(&["rib"]),
        kernel_routes(&lab)
    );
    assert!(tor.route("2001:db8:3::1/128").is_some());
    assert!(!kernel_routes(&lab)
        .iter()
        .any(|l| l.starts_with("10.3.0.1 ")));
    // No session was reset along the way, as tapir and as the VM see it.
    assert_eq!(flaps(&t), 0, "{}", t.show(&["peers"]));
    assert!(
        same_instant(vm.since_ms("bgp1"), vm_since.0)
            && same_instant(vm.since_ms("bgp6"), vm_since.1),
        "{:?} {:?}, was {vm_since:?}",
        vm.protocol("bgp1"),
        vm.protocol("bgp6")
    );
    lab.stop(t.pid);
}

/// A ROUTE-REFRESH gets the whole table again without a session reset.
/// tor's BIRD refuses the VM's prefix, asks for the routes again (`reload
/// in`) and loses it; then it accepts it again and asks again: the prefix
/// can only come back in tapir's refeed.
#[test]
fn route_refresh_sends_the_table_again() {
    let (mut lab, tor, t, _vm) = setup(Kind::Bird, "strip");
    wait_tor(&lab, &tor, "10.3.0.1/32", |_| true);
    wait_tor(&lab, &tor, "2001:db8:3::1/128", |_| true);
    let Tor::Bird(bird) = &tor else {
        unreachable!()
    };
    // tor's sessions with hv1 (dynamic, so named by BIRD) and since when.
    let names: Vec<String> = bird
        .cmd(&["show", "protocols"])
        .lines()
        .filter(|l| l.contains(" BGP ") && l.trim_end().ends_with("Established"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let since: Vec<Option<u64>> = names.iter().map(|n| bird.since_ms(n)).collect();
    let reload = |config: String| {
        lab.write("tor/bird.conf", &config);
        let out = bird.cmd(&["configure"]);
        assert!(out.contains("Reconfigured"), "{out}");
        bird.cmd(&["reload", "in", "all"]);
    };
    let base = tor::bird_config();
    let refusing = base.replace(
        "filter from_hv {",
        "filter from_hv { if net = 10.3.0.1/32 then reject;",
    );
    assert_ne!(refusing, base);
    reload(refusing);
    let gone = wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()));
    assert!(gone.is_some(), "tor kept 10.3.0.1/32\n{}", lab.all_logs());
    reload(base);
    wait_tor(&lab, &tor, "10.3.0.1/32", |r| r.as_path == vec![64612]);
    assert!(tor.route("2001:db8:3::1/128").is_some());
    // Neither session was reset: both up since the same time.
    for (n, s) in names.iter().zip(&since) {
        assert!(
            bird.is_established(n) && same_instant(bird.since_ms(n), *s),
            "{:?}, was up since {s:?}",
            bird.protocol(n)
        );
    }
    // tapir counts what it exports on each session: the VM's prefix.
    for p in t.json("peers").as_array().unwrap() {
        if p["name"].as_str().is_some_and(|n| n.starts_with("tor")) {
            assert_eq!(p["routes_exported"], 1, "{p}");
        }
    }
    lab.stop(t.pid);
}

/// When the VM's two sessions came up (BIRD's "since"), once both are
/// Established.
fn settled_since(vm: &lab::bird::Bird) -> (Option<u64>, Option<u64>) {
    wait_for(WAIT, || {
        (vm.is_established("bgp1") && vm.is_established("bgp6"))
            .then(|| (vm.since_ms("bgp1"), vm.since_ms("bgp6")))
    })
    .expect("the VM's sessions come up")
}

/// The example without its `tor-v6` neighbor block.
fn without_tor_v6(cfg: &str) -> String {
    let start = cfg.find("[[neighbor]]\nname = \"tor-v6\"").unwrap();
    let end = start + cfg[start..].find("\n\n").unwrap() + 2;
    format!("{}{}", &cfg[..start], &cfg[end..])
}

#[test]
fn reload_adds_changes_and_removes_neighbors() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let vm = lab.bird(
        "vm11",
        &reference::vm_bird_dual_config(11, 64613, &["10.3.0.1/32"], &["2001:db8:3::1/128"]),
    );
    let full = example_with_mode("strip");
    let cfg = lab.write("hv1/tapir.toml", &without_tor_v6(&full));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    wait_tor(&lab, &tor, "10.3.0.1/32", |_| true);
    let vm_up = wait_for(WAIT, || {
        (vm.is_established("bgp1") && vm.is_established("bgp6")).then_some(())
    });
    assert!(vm_up.is_some(), "{}", lab.all_logs());
    let vm_since = settled_since(&vm);
    // Without tor-v6, tor has no IPv6 route from hv1.
    assert!(tor.route("2001:db8:3::1/128").is_none());

    // Added: the new neighbor's session comes up and tor learns the route.
    std::fs::write(&cfg, &full).unwrap();
    let (ok, out, err) = t.cli(&["reload"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("neighbor tor-v6 (2001:db8:21::1) added: a session starts"),
        "{out}"
    );
    wait_tor(&lab, &tor, "2001:db8:3::1/128", |_| true);

    // Changed timers: applied at the next session, nothing resets now.
    std::fs::write(&cfg, full.replacen("hold-time = 90", "hold-time = 30", 1)).unwrap();
    let (ok, out, err) = t.cli(&["reload"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "neighbor tor-v4: timers, BFD, limits or import rules: from its next session on"
        ),
        "{out}"
    );

    // Removed: tor-v4's session ends, so tor loses the IPv4 route; the
    // IPv6 one stays.
    std::fs::write(
        &cfg,
        full.replace(
            "name = \"tor-v4\"\naddress = \"10.192.21.1\"",
            "name = \"gone\"\naddress = \"10.192.21.1\"",
        )
        .replacen(
            "[[neighbor]]\nname = \"gone\"",
            "[[nope]]\nname = \"gone\"",
            1,
        ),
    )
    .unwrap();
    let (ok, _, _) = t.cli(&["reload"]);
    assert!(!ok, "an unknown table must be refused");
    assert!(
        tor.route("10.3.0.1/32").is_some(),
        "a refused reload changed something"
    );
    let start = full.find("[[neighbor]]\nname = \"tor-v4\"").unwrap();
    let end = start + full[start..].find("\n\n").unwrap() + 2;
    std::fs::write(&cfg, format!("{}{}", &full[..start], &full[end..])).unwrap();
    let (ok, out, err) = t.cli(&["reload"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("neighbor tor-v4 removed: its session closes"),
        "{out}"
    );
    let gone = wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()));
    assert!(gone.is_some(), "{}", t.show(&["peers"]));
    assert!(tor.route("2001:db8:3::1/128").is_some());
    let peers = t.json("peers");
    assert!(
        !peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "tor-v4"),
        "{peers}"
    );
    // The VM's sessions never noticed: BIRD shows the same "since".
    assert!(
        same_instant(vm.since_ms("bgp1"), vm_since.0)
            && same_instant(vm.since_ms("bgp6"), vm_since.1),
        "{:?} {:?}, was {vm_since:?}",
        vm.protocol("bgp1"),
        vm.protocol("bgp6")
    );
    lab.stop(t.pid);
}

#[test]
fn ibgp_vm_and_kernel_import_of_upstream_routes() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    // recdns1001 as an iBGP client (AS 64612, tapir its route reflector):
    // no AS hop is added, even with as-path = "keep".
    let vm_cfg = reference::vm_bird_config(11, 64612, &["10.3.0.1/32"])
        .replace("external;", "internal;")
        .replace(
            "export where source = RTS_STATIC;",
            "export where source = RTS_STATIC; next hop self;",
        );
    let _vm = lab.bird("vm11", &vm_cfg);
    let cfg = example_with_mode("keep")
        .replace("remote-as = \"external\"", "remote-as = \"internal\"")
        .replace("asn = 64613", "asn = 64612")
        .replace(
            "families = [\"ipv4\"]\nexport = \"TO-TOR\"",
            "families = [\"ipv4\"]\nexport = \"TO-TOR\"\nkernel-import = true",
        );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let r = wait_tor(&lab, &tor, "10.3.0.1/32", |_| true);
    assert_eq!(r.as_path, vec![64612], "{r:?}");
    assert_eq!(r.next_hop, "10.192.21.6");
    // tor-v4 has kernel-import: its route is in hv1's kernel; tor-v6 has
    // not: its route is not.
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        k.iter()
            .any(|l| l.starts_with("192.0.2.0/24 via 10.192.21.1"))
            .then_some(k)
    });
    assert!(
        k.is_some(),
        "{:?}\n{}",
        kernel_routes(&lab),
        t.show(&["rib"])
    );
    assert!(!kernel_routes(&lab)
        .iter()
        .any(|l| l.starts_with("2001:db8:ff::")));
    assert!(kernel_routes(&lab)
        .iter()
        .any(|l| l.starts_with("10.3.0.1 via 10.192.24.11 dev tap11")));
}

#[test]
fn ipv4_over_a_link_local_session_rfc8950() {
    let mut lab = reference::standard(&[12]);
    let tor = tor::start(&mut lab, Kind::Bird);
    // vm12 peers over IPv6 link-local only and also announces an IPv4
    // prefix, with its IPv6 address as next hop.
    let vm_cfg = reference::vm_bird_link_local_config(12, 64613, &["2001:db8:3::2/128"], "")
        .replace("protocol bgp {", "protocol static s4 { ipv4; route 10.3.0.12/32 unreachable; }\nprotocol bgp {")
        .replace(
            "ipv6 { import none; export where source = RTS_STATIC; };",
            "ipv6 { import none; export where source = RTS_STATIC; };\n    ipv4 { import none; export where source = RTS_STATIC; extended next hop on; };",
        );
    let vm = lab.bird("vm12", &vm_cfg);
    let cfg = lab.write("hv1/tapir.toml", &example_with_mode("strip"));
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let k = wait_for(WAIT, || {
        let k = kernel_routes(&lab);
        k.iter()
            .any(|l| l.starts_with("10.3.0.12 via inet6 fe80::") && l.contains("dev tap12"))
            .then_some(k)
    });
    assert!(
        k.is_some(),
        "{:?}\n{}\n{}",
        kernel_routes(&lab),
        t.show(&["routes"]),
        vm.cmd(&["show", "protocols", "all", "bgp1"])
    );
    let r = wait_tor(&lab, &tor, "10.3.0.12/32", |_| true);
    assert_eq!(r.next_hop, "10.192.21.6");
}

#[test]
fn drain_a_vm_before_a_move() {
    let (lab, tor, t, _vm) = setup(Kind::Bird, "strip");
    wait_tor(&lab, &tor, "10.3.0.1/32", |r| {
        !r.communities.contains(&"65535:0".to_string())
    });
    // RFC 8326: GRACEFUL_SHUTDOWN at tor, the kernel route stays (the VM
    // still serves until it moves).
    let (ok, out, err) = t.cli(&["drain", "recdns1001"]);
    assert!(ok, "{err}");
    assert!(out.contains("draining"), "{out}");
    wait_tor(&lab, &tor, "10.3.0.1/32", |r| {
        r.communities.contains(&"65535:0".to_string())
    });
    assert!(kernel_routes(&lab)
        .iter()
        .any(|l| l.starts_with("10.3.0.1 ")));
    let vms = t.json("vms");
    assert!(
        vms.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "recdns1001" && v["drain"] == "shutdown"),
        "{vms}"
    );
    assert!(t.show(&["rib"]).contains("draining"));
    // Withdraw: gone at tor, still in the kernel.
    let (ok, _, err) = t.cli(&["drain", "recdns1001", "--withdraw"]);
    assert!(ok, "{err}");
    assert!(wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(())).is_some());
    assert!(kernel_routes(&lab)
        .iter()
        .any(|l| l.starts_with("10.3.0.1 ")));
    // Undrain: back, without the community.
    let (ok, _, err) = t.cli(&["undrain", "recdns1001"]);
    assert!(ok, "{err}");
    wait_tor(&lab, &tor, "10.3.0.1/32", |r| {
        !r.communities.contains(&"65535:0".to_string())
    });
    // Unknown names are refused.
    let (ok, _, err) = t.cli(&["drain", "nosuchvm"]);
    assert!(!ok && err.contains("nosuchvm"), "{err}");
}

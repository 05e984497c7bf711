//! Live migration in the reference lab: the VM's tap moves from hv1 to hv2
//! and back, with unmodified BIRD in the VM (the reference config). The
//! destination opens the session itself; the BIRD guest drops its stale
//! session (graceful restart negotiated) and accepts it. What counts is
//! what tor sees. Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use lab::reference;
use lab::tor::{self, Kind, Tor};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");

fn tor_paths(tor: &Tor, prefix: &str) -> Vec<String> {
    tor.next_hops(prefix)
}

#[test]
fn migration_hv1_to_hv2_and_back() {
    let vm = reference::vm_bird_config(11, 64613, &["10.3.0.1/32"]);
    migrate_back_and_forth(&vm, "10.3.0.1/32", ["10.192.21.6", "10.192.21.7"], false);
}

/// The other guest style of the reference lab: an IPv6 link-local single-hop
/// session with BFD. The guest's NIC keeps its carrier (as in a live
/// migration), so its session to the same gateway address is taken over.
#[test]
fn migration_of_a_link_local_bfd_guest() {
    let vm = reference::vm_bird_link_local_config(11, 64613, &["2001:db8:3::1/128"], "bfd on;")
        .replace(
            "protocol device { }",
            "protocol device { }\nprotocol bfd { interface \"eth0\" { interval 300 ms; multiplier 3; }; }",
        );
    migrate_back_and_forth(
        &vm,
        "2001:db8:3::1/128",
        ["2001:db8:21::6", "2001:db8:21::7"],
        true,
    );
}

/// vm11 with BIRD config `vm` on hv1, then moved to hv2 and back; `via` is
/// tor's next hop for `prefix` through hv1 and hv2.
fn migrate_back_and_forth(vm: &str, prefix: &str, via: [&str; 2], bfd: bool) {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", 11);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = lab.bird("vm11", vm);
    let mut example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
    if bfd {
        example = example.replace("# bfd = true", "bfd = true");
    }
    // The same file on both; hv2 differs only in its router id.
    let c1 = lab.write("hv1/tapir.toml", &example);
    let c2 = lab.write(
        "hv2/tapir.toml",
        &example.replace("router-id = \"10.192.21.6\"", "router-id = \"10.192.21.7\""),
    );
    let t1 = lab.tapir("hv1", Path::new(TAPIR), &c1);
    let t2 = lab.tapir("hv2", Path::new(TAPIR), &c2);
    let settle = Duration::from_secs(30);
    assert!(
        wait_for(settle, || (tor_paths(&tor, prefix) == [via[0]])
            .then_some(()))
        .is_some(),
        "{:?}\n{}",
        tor_paths(&tor, prefix),
        lab.all_logs()
    );

    for (from, to, via) in [("hv1", "hv2", via[1]), ("hv2", "hv1", via[0])] {
        let start = Instant::now();
        reference::migrate(&mut lab, from, to, "tap11", 11);
        let dest = if to == "hv1" { &t1 } else { &t2 };
        let mut at_dest = None;
        let arrived = wait_for(settle, || {
            if at_dest.is_none()
                && dest
                    .routes_for(prefix)
                    .iter()
                    .any(|r| r["accepted"] == true)
            {
                at_dest = Some(start.elapsed());
            }
            tor_paths(&tor, prefix)
                .contains(&via.to_string())
                .then_some(())
        });
        let took = start.elapsed();
        assert!(
            arrived.is_some(),
            "{from} -> {to}: tor never saw the route via {via}: {:?}\n{}",
            tor_paths(&tor, prefix),
            lab.all_logs()
        );
        // After settling, only via the hypervisor the VM is on.
        let only = wait_for(settle, || (tor_paths(&tor, prefix) == [via]).then_some(()));
        assert!(
            only.is_some(),
            "{from} -> {to}: {:?}",
            tor_paths(&tor, prefix)
        );
        if bfd {
            // BFD is up again with the VM on the destination.
            let up = wait_for(settle, || {
                dest.json("bfd")
                    .as_array()?
                    .iter()
                    .any(|s| s["state"] == "Up")
                    .then_some(())
            });
            assert!(up.is_some(), "{from} -> {to}: {}", dest.show(&["bfd"]));
            // The guest's BFD never went down (which would end its BGP
            // session and hold it back for its error wait): past its
            // detection time, tor still has the route via the destination.
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(
                tor_paths(&tor, prefix),
                [via],
                "{from} -> {to}\n{}",
                lab.all_logs()
            );
        }
        eprintln!("migration {from} -> {to}: {to} has the VM's route after {at_dest:?}, tor via {to} after {took:?}");
    }
}

/// RFC 8326 upstream, with the top-of-rack snippets tapir ships
/// (`contrib/tor/bird.conf`, `contrib/tor/frr.conf`) as the tor's import
/// policy: an anycast prefix from a VM on each hypervisor; draining hv1's
/// VM makes hv2's path tor's best, and hv1's path stays, just not best.
fn drain_moves_tor_to_the_other_hypervisor(kind: Kind) {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", 12);
    reference::add_vm(&mut lab, "hv2", 13);
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/tor");
    let tor = match kind {
        Kind::Bird => tor::start_with_import(
            &mut lab,
            kind,
            &std::fs::read_to_string(contrib.join("bird.conf")).unwrap(),
            "tapir_graceful_shutdown",
        ),
        _ => tor::start_with_import(
            &mut lab,
            kind,
            &std::fs::read_to_string(contrib.join("frr.conf")).unwrap(),
            "TAPIR-FROM-HV",
        ),
    };
    // One anycast prefix from a VM on each hypervisor.
    let _a = reference::vm_bird(&mut lab, 12, &["10.3.0.53/32"]);
    let _b = reference::vm_bird(&mut lab, 13, &["10.3.0.53/32"]);
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
    let c1 = lab.write("hv1/tapir.toml", &example);
    let c2 = lab.write(
        "hv2/tapir.toml",
        &example.replace("router-id = \"10.192.21.6\"", "router-id = \"10.192.21.7\""),
    );
    let t1 = lab.tapir("hv1", Path::new(TAPIR), &c1);
    let _t2 = lab.tapir("hv2", Path::new(TAPIR), &c2);
    // Both paths at tor (BIRD lists them all; FRR's JSON too).
    let paths = |tor: &Tor| match tor {
        Tor::Frr(f) => f.paths("10.3.0.53/32").len(),
        _ => tor_paths(tor, "10.3.0.53/32").len(),
    };
    let best = |tor: &Tor| tor.route("10.3.0.53/32").map(|r| r.next_hop);
    let both = wait_for(Duration::from_secs(30), || (paths(&tor) == 2).then_some(()));
    assert!(both.is_some(), "{:?}\n{}", best(&tor), lab.all_logs());
    // Equal paths: tor picks hv1 (lower router id). Drain hv1's VM: the
    // GRACEFUL_SHUTDOWN path loses, hv2's becomes best.
    assert_eq!(best(&tor).as_deref(), Some("10.192.21.6"));
    let (ok, _, err) = t1.cli(&["drain", "tap12"]);
    assert!(ok, "{err}");
    let moved = wait_for(Duration::from_secs(30), || {
        (best(&tor).as_deref() == Some("10.192.21.7")).then_some(())
    });
    assert!(moved.is_some(), "{:?}", best(&tor));
    assert_eq!(
        paths(&tor),
        2,
        "the drained path is still there, just not best"
    );
}

#[test]
fn drain_moves_a_bird_tor_to_the_other_hypervisor() {
    drain_moves_tor_to_the_other_hypervisor(Kind::Bird);
}

#[test]
fn drain_moves_an_frr_tor_to_the_other_hypervisor() {
    drain_moves_tor_to_the_other_hypervisor(Kind::Frr);
}

/// RFC 8326 on the hypervisor itself: two VMs on hv1 announce the same
/// anycast prefix. Draining the one whose path is best moves the prefix
/// in hv1's kernel to the other VM, and tor keeps it from hv1 without
/// GRACEFUL_SHUTDOWN (the other VM still serves); withdrawing the drained
/// VM's routes leaves tor's route in place.
#[test]
fn drained_path_loses_on_the_hypervisor_to_another_vm() {
    let mut lab = reference::standard(&[12, 13]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let prefix = "10.3.0.53/32";
    let _a = reference::vm_bird(&mut lab, 12, &[prefix]);
    let _b = reference::vm_bird(&mut lab, 13, &[prefix]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml");
    let t = lab.tapir("hv1", Path::new(TAPIR), &example);
    // hv1's kernel route for the prefix: the tap it goes out of.
    let kernel_tap = |lab: &Lab| {
        let o = lab.ip("hv1", &["route", "show", prefix, "proto", "180"]);
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        s.split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .map(str::to_string)
    };
    let gshut = |tor: &Tor| {
        tor.route(prefix)
            .map(|r| r.communities.contains(&"65535:0".to_string()))
    };
    let both = wait_for(Duration::from_secs(30), || {
        (t.show(&["rib"]).contains("vm13") || t.show(&["rib"]).contains("tap13")).then_some(())?;
        (gshut(&tor) == Some(false) && kernel_tap(&lab).is_some()).then_some(())
    });
    assert!(both.is_some(), "{}\n{}", t.show(&["rib"]), lab.all_logs());
    // Both paths are equal but for the router id: vm12's is best.
    assert_eq!(
        kernel_tap(&lab).as_deref(),
        Some("tap12"),
        "{}",
        t.show(&["rib"])
    );
    let (ok, _, err) = t.cli(&["drain", "tap12"]);
    assert!(ok, "{err}");
    let moved = wait_for(Duration::from_secs(15), || {
        (kernel_tap(&lab).as_deref() == Some("tap13")).then_some(())
    });
    assert!(
        moved.is_some(),
        "kernel: {:?}\n{}",
        kernel_tap(&lab),
        t.show(&["rib"])
    );
    // Upstream: vm13's path, never the drained one's community.
    assert_eq!(gshut(&tor), Some(false), "{:?}", tor.route(prefix));
    let (ok, _, err) = t.cli(&["drain", "tap12", "--withdraw"]);
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gshut(&tor), Some(false), "{:?}", tor.route(prefix));
    assert_eq!(kernel_tap(&lab).as_deref(), Some("tap13"));
    // Undrained: vm12's path is best again.
    let (ok, _, err) = t.cli(&["undrain", "tap12"]);
    assert!(ok, "{err}");
    let back = wait_for(Duration::from_secs(15), || {
        (kernel_tap(&lab).as_deref() == Some("tap12")).then_some(())
    });
    assert!(back.is_some(), "kernel: {:?}", kernel_tap(&lab));
    assert_eq!(gshut(&tor), Some(false));
}

/// `[drain] prepend`: a drained VM's route reaches tor with hv1's AS three
/// times (once, plus two), GRACEFUL_SHUTDOWN as before; undrained, once.
#[test]
fn a_drain_with_prepend_lengthens_the_path_at_tor() {
    const WAIT: Duration = Duration::from_secs(30);
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
    let cfg = example.replace("[drain]\n", "[drain]\nprepend = 2\n");
    assert_ne!(cfg, example);
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let hv_as = |r: &lab::tor::TorRoute| r.as_path.iter().filter(|a| **a == 64612).count();
    let r =
        wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    assert_eq!(hv_as(&r), 1, "{r:?}");
    let (ok, _, err) = t.cli(&["drain", "recdns1001"]);
    assert!(ok, "{err}");
    let r = wait_for(WAIT, || tor.route("10.3.0.1/32").filter(|r| hv_as(r) == 3))
        .unwrap_or_else(|| panic!("{:?}", tor.route("10.3.0.1/32")));
    assert!(r.communities.contains(&"65535:0".to_string()), "{r:?}");
    let (ok, _, err) = t.cli(&["undrain", "recdns1001"]);
    assert!(ok, "{err}");
    let r = wait_for(WAIT, || tor.route("10.3.0.1/32").filter(|r| hv_as(r) == 1));
    assert!(r.is_some(), "{:?}", tor.route("10.3.0.1/32"));
}

/// A drain ends by itself once the VM's tap has left the hypervisor: the
/// VM plugged in again later (a migration back) is announced undrained,
/// without anyone remembering `tapir undrain`.
#[test]
fn a_drain_ends_when_the_vms_tap_leaves() {
    const WAIT: Duration = Duration::from_secs(30);
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml");
    let t = lab.tapir("hv1", Path::new(TAPIR), &example);
    let gshut = |r: &lab::tor::TorRoute| r.communities.contains(&"65535:0".to_string());
    wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    let (ok, _, err) = t.cli(&["drain", "recdns1001"]);
    assert!(ok, "{err}");
    wait_for(WAIT, || tor.route("10.3.0.1/32").filter(gshut))
        .unwrap_or_else(|| panic!("{:?}", tor.route("10.3.0.1/32")));
    // The tap leaves: the route goes, and a few seconds later the drain.
    reference::unplug(&mut lab, "hv1", "tap11");
    wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()))
        .unwrap_or_else(|| panic!("{:?}", tor.route("10.3.0.1/32")));
    wait_for(WAIT, || {
        lab.log(&t.log)
            .contains("drain ended: the VM's tap left this hypervisor")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", lab.log(&t.log)));
    // Back on hv1: announced as any other VM.
    reference::plug(&mut lab, "hv1", "tap11", 11, 11);
    let back =
        wait_for(WAIT, || tor.route("10.3.0.1/32")).unwrap_or_else(|| panic!("{}", lab.all_logs()));
    assert!(!gshut(&back), "{back:?}");
}

/// A live migration's destination as QEMU makes it: the tap, the VM's
/// route and so tapir's attempts come before the guest runs there, and
/// nothing answers ARP. When the guest runs, it sends a gratuitous ARP (as
/// QEMU's virtio guest does after a migration; here `arping -U`), which
/// updates hv1's failed entry for it, and its BIRD waits, its session
/// being elsewhere as far as it knows (`passive` here). The session is up
/// at once, not at tapir's next attempt (30 s apart here).
#[test]
fn a_guest_that_runs_after_its_tap_came_has_its_session_at_once() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, Kind::Bird);
    // Not running yet: its NIC answers no ARP.
    lab.ip("vm11", &["link", "set", "eth0", "arp", "off"]);
    let vm = lab.bird(
        "vm11",
        &reference::vm_bird_config_with(11, 64613, &["10.3.0.1/32"], "passive on;"),
    );
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
    let cfg = example.replacen(
        "name = \"vms\"\n",
        "name = \"vms\"\nconnect-retry = 30\n",
        1,
    );
    assert_ne!(cfg, example);
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    // tapir's first attempt found nobody: hv1's kernel gave up on the
    // VM's MAC.
    let neigh = |lab: &Lab| {
        let o = lab.ip("hv1", &["neigh", "show", "10.192.24.11", "dev", "tap11"]);
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    wait_for(Duration::from_secs(30), || {
        neigh(&lab).contains("FAILED").then_some(())
    })
    .unwrap_or_else(|| panic!("{}\n{}", neigh(&lab), lab.all_logs()));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!vm.is_established("bgp1"));
    assert!(tor.route("10.3.0.1/32").is_none());

    // The guest runs.
    lab.ip("vm11", &["link", "set", "eth0", "arp", "on"]);
    let ran = Instant::now();
    let garp = lab.exec(
        "vm11",
        &["arping", "-U", "-c", "1", "-I", "eth0", "10.192.24.11"],
    );
    assert!(garp.status.success(), "{garp:?}");
    let up = wait_for(Duration::from_secs(15), || {
        (vm.is_established("bgp1") && tor.route("10.3.0.1/32").is_some()).then_some(())
    });
    assert!(
        up.is_some(),
        "not up {:?} after the guest ran (the next attempt is 30 s after the first)\n{}\n{}",
        ran.elapsed(),
        t.show(&["peers", "--all"]),
        lab.all_logs()
    );
}

/// A real live migration (issue 23): a QEMU guest (scripts/qemu-guest:
/// Debian's kernel, BIRD with the reference VM config) behind a tap that
/// QEMU creates in hv1's namespace, with the project's Ganeti ifup hook
/// run as Ganeti runs it; QMP's `migrate` to a QEMU waiting with
/// `-incoming` on hv2; the source quits and its tap goes. tor then has the
/// guest's prefix via hv2 and none via hv1, and the guest's BIRD has its
/// session up again (with hv2 now).
///
/// QEMU comes from scripts/setup; without it the test fails and says so,
/// unless `TAPIR_LAB_SKIP_QEMU=1` asks to skip it (it then says that).
#[test]
fn a_qemu_guest_migrates_live() {
    if let Some(why) = lab::qemu::unavailable() {
        if std::env::var_os("TAPIR_LAB_SKIP_QEMU").is_some() {
            eprintln!("SKIPPED a_qemu_guest_migrates_live (TAPIR_LAB_SKIP_QEMU): {why}");
            return;
        }
        panic!("{why}; TAPIR_LAB_SKIP_QEMU=1 skips this test");
    }
    let img = lab::qemu::image().unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    let tor = tor::start(&mut lab, Kind::Bird);
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
    for (hv, id) in [("hv1", "10.192.21.6"), ("hv2", "10.192.21.7")] {
        let cfg = example.replace(
            "router-id = \"10.192.21.6\"",
            &format!("router-id = \"{id}\""),
        );
        let path = lab.write(&format!("{hv}/tapir.toml"), &cfg);
        lab.tapir(hv, Path::new(TAPIR), &path);
    }
    let accel = lab::qemu::accel(&img, lab.dir());
    let spec = lab::qemu::ganeti_guest(&lab, "hv1", Path::new(TAPIR), 11, "10.3.0.1/32");
    let src = lab.qemu("hv1", &img, accel, &spec, None);
    assert!(
        src.wait_established(Duration::from_secs(120)),
        "the guest's BGP session never came up ({accel}):\n{}\n{}",
        src.console(),
        lab.all_logs()
    );
    let (hv1, _) = reference::hv_addresses("hv1");
    let (hv2, _) = reference::hv_addresses("hv2");
    let best_via = |hv: &str| {
        wait_for(Duration::from_secs(60), || {
            (tor.next_hops("10.3.0.1/32").first().map(String::as_str) == Some(hv)).then_some(())
        })
        .is_some()
    };
    assert!(
        best_via(&hv1),
        "10.3.0.1/32 never via hv1:\n{}",
        lab.all_logs()
    );
    let before = src.established_since();
    assert!(before.is_some(), "{}", src.console());

    let spec = lab::qemu::ganeti_guest(&lab, "hv2", Path::new(TAPIR), 11, "10.3.0.1/32");
    let to = format!("{hv2}:4444");
    let dest = lab.qemu("hv2", &img, accel, &spec, Some(&to));
    src.migrate(&to, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("migration: {e}\n{}", lab.all_logs()));
    src.qmp("quit", serde_json::Value::Null).unwrap();
    // The source's tap is gone with its QEMU.
    let gone = wait_for(Duration::from_secs(10), || {
        (!lab
            .ip("hv1", &["link", "show"])
            .stdout
            .windows(5)
            .any(|w| w == b"tap11"))
        .then_some(())
    });
    assert!(gone.is_some(), "tap11 still on hv1");
    assert!(
        best_via(&hv2),
        "10.3.0.1/32 not via hv2 after the migration: {:?}\n{}\n{}",
        tor.next_hops("10.3.0.1/32"),
        dest.console(),
        lab.all_logs()
    );
    let hops = wait_for(Duration::from_secs(60), || {
        let h = tor.next_hops("10.3.0.1/32");
        (!h.contains(&hv1)).then_some(h)
    });
    assert!(hops.is_some(), "a path via hv1 stayed at tor");
    // The guest's own view: a new session (its BIRD's `since` moved on),
    // with hv2's tapir: the old one's TCP state means nothing there.
    let again = wait_for(Duration::from_secs(120), || {
        dest.established_since()
            .filter(|s| !lab::bird::same_instant(Some(*s), before))
    });
    assert!(again.is_some(), "before: {before:?}\n{}", dest.console());
}

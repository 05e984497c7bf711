//! The hypervisor role in the reference lab (docs/design.md), with unmodified
//! BIRD 2 in every VM and `examples/hypervisor.toml` on hv1. What is
//! asserted is what the VMs' BIRDs see and which routes tapir accepts or
//! refuses. Needs root.

use std::path::Path;
use std::time::Duration;

use lab::bird::Bird;
use lab::reference;
use lab::{wait_for, Lab};
use serde_json::Value;

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml")
}

/// BIRD timers that make the VM wait a minute before it connects by itself,
/// so a session that comes up sooner was opened by tapir.
const SLOW_VM: &str = "connect delay time 60; connect retry time 120; error wait time 60, 300;";

fn established(b: &Bird) -> bool {
    b.is_established("bgp1")
}

/// Routes tapir holds for `prefix` from peer `peer`.
fn route(t: &lab::tapir::Tapir, prefix: &str, peer: &str) -> Option<Value> {
    t.routes_for(prefix).into_iter().find(|r| r["peer"] == peer)
}

fn wait_route(lab: &Lab, t: &lab::tapir::Tapir, prefix: &str, peer: &str) -> Value {
    wait_for(WAIT, || route(t, prefix, peer)).unwrap_or_else(|| {
        panic!(
            "no route {prefix} from {peer}:\n{}\n{}\n{}",
            t.show(&["routes"]),
            t.show(&["peers"]),
            lab.all_logs()
        )
    })
}

fn wait_up(lab: &Lab, b: &Bird, what: &str) {
    if wait_for(WAIT, || established(b).then_some(())).is_none() {
        panic!(
            "{what}: BGP not up: {:?}\n{}",
            b.protocol("bgp1"),
            lab.all_logs()
        );
    }
}

#[test]
fn three_reference_vms_one_group() {
    let mut lab = reference::standard(&[11, 12, 13]);
    let vm11 = lab.bird(
        "vm11",
        &reference::vm_bird_config_with(11, 64613, &["10.3.0.1/32"], SLOW_VM),
    );
    let vm12 = lab.bird(
        "vm12",
        &reference::vm_bird_link_local_config(12, 64613, &["2001:db8:3::2/128"], SLOW_VM),
    );
    let vm13 = lab.bird(
        "vm13",
        &reference::vm_bird_config_with(13, 64613, &["10.3.0.1/32", "10.99.0.0/24"], SLOW_VM),
    );
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());

    // vm11, the reference config verbatim (multihop on the VM's side only).
    wait_up(&lab, &vm11, "vm11");
    let r = wait_route(&lab, &t, "10.3.0.1/32", "recdns1001");
    assert_eq!(r["accepted"], true, "{r}");
    assert_eq!(r["next_hop"], "10.192.24.11");

    // vm12 over IPv6 link-local only, served by the same group.
    wait_up(&lab, &vm12, "vm12");
    let r = wait_route(&lab, &t, "2001:db8:3::2/128", "tap12");
    assert!(r["next_hop"].as_str().unwrap().contains("fe80::"), "{r}");
    assert_eq!(r["accepted"], true, "{r}");

    // vm13, the rogue: its session is up, both prefixes refused.
    wait_up(&lab, &vm13, "vm13");
    let stolen = wait_route(&lab, &t, "10.3.0.1/32", "tap13");
    assert_eq!(stolen["accepted"], false, "{stolen}");
    assert!(
        stolen["rejected_reason"]
            .as_str()
            .unwrap()
            .contains("recdns1001"),
        "{stolen}"
    );
    let outside = wait_route(&lab, &t, "10.99.0.0/24", "tap13");
    assert_eq!(outside["accepted"], false, "{outside}");
    assert!(
        outside["rejected_reason"]
            .as_str()
            .unwrap()
            .contains("BGP-FROM-VMS"),
        "{outside}"
    );
    // The rejections are counted on the rogue's session.
    let peers = t.json("peers");
    let rogue = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tap13" && p["state"] == "Established")
        .unwrap_or_else(|| panic!("{peers}"));
    assert!(
        rogue["rejections"]["owned-by-other-vm"].as_u64().unwrap() >= 1,
        "{rogue}"
    );
    assert!(
        rogue["rejections"]["group-filter"].as_u64().unwrap() >= 1,
        "{rogue}"
    );
    // The others are unaffected.
    assert!(established(&vm11) && established(&vm12));
    assert_eq!(
        route(&t, "10.3.0.1/32", "recdns1001").unwrap()["accepted"],
        true
    );

    // `show vms` tells the operator who is who.
    let vms = t.json("vms");
    let rec = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "recdns1001")
        .unwrap();
    assert_eq!(rec["interface"], "tap11");
    assert_eq!(rec["source"], "config");
    let text = t.show(&["vms"]);
    assert!(
        text.contains("tap13") && text.contains("discovered"),
        "{text}"
    );
}

#[test]
fn a_vm_cannot_pose_as_another_from_the_wrong_tap() {
    let mut lab = reference::standard(&[11]);
    // vm14 sits behind tap14 (the hypervisor routes 10.192.24.14 there) but
    // configures vm11's address and announces from it.
    lab.add_host("vm14");
    reference::plug(&mut lab, "hv1", "tap14", 14, 11);
    let vm11 = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let spoof = lab.bird(
        "vm14",
        &reference::vm_bird_config_with(
            11,
            64613,
            &["10.3.0.7/32"],
            "connect delay time 1; connect retry time 2;",
        ),
    );
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    wait_up(&lab, &vm11, "vm11");
    wait_route(&lab, &t, "10.3.0.1/32", "recdns1001");
    // Give the spoofer many tries.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !established(&spoof),
        "the spoofing VM got a session: {:?}",
        spoof.protocol("bgp1")
    );
    assert!(
        t.routes_for("10.3.0.7/32").is_empty(),
        "{}",
        t.show(&["routes"])
    );
    assert!(established(&vm11));
}

#[test]
fn route_or_tap_removed_withdraws_and_the_vm_comes_back() {
    let mut lab = reference::standard(&[11]);
    let vm11 = lab.bird(
        "vm11",
        &reference::vm_bird_config_with(11, 64613, &["10.3.0.1/32"], SLOW_VM),
    );
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    wait_up(&lab, &vm11, "vm11");
    wait_route(&lab, &t, "10.3.0.1/32", "recdns1001");

    // The VM's route removed (the hypervisor's ifdown hook): session ends.
    lab.ip("hv1", &["route", "del", "10.192.24.11/32", "dev", "tap11"]);
    let gone = wait_for(Duration::from_secs(5), || {
        route(&t, "10.3.0.1/32", "recdns1001")
            .is_none()
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "route kept after the VM's route went away:\n{}",
        t.show(&["routes"])
    );
    let down = wait_for(Duration::from_secs(5), || {
        (!established(&vm11)).then_some(())
    });
    assert!(down.is_some(), "the VM still has its session");
    // Route back: session back at once (tapir connects).
    lab.ip(
        "hv1",
        &[
            "route",
            "replace",
            "10.192.24.11/32",
            "proto",
            "static",
            "dev",
            "tap11",
        ],
    );
    wait_route(&lab, &t, "10.3.0.1/32", "recdns1001");

    reference::unplug(&mut lab, "hv1", "tap11");
    let gone = wait_for(Duration::from_secs(5), || {
        route(&t, "10.3.0.1/32", "recdns1001")
            .is_none()
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "route kept after the tap went away:\n{}",
        t.show(&["routes"])
    );
    let peers = t.json("peers");
    assert!(
        !peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["interface"] == "tap11"),
        "session kept after the tap went away: {peers}"
    );

    // The same VM on a new tap (as after a migration): tapir opens the
    // session at once, BIRD's own timers would take a minute.
    reference::plug(&mut lab, "hv1", "tap21", 11, 11);
    let r = wait_route(&lab, &t, "10.3.0.1/32", "recdns1001");
    assert_eq!(r["accepted"], true);
    let peers = t.json("peers");
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["interface"] == "tap21" && p["state"] == "Established"),
        "{peers}"
    );
}

#[test]
fn tapir_restart_reconnects_without_the_vms_timers() {
    let mut lab = reference::standard(&[11, 12]);
    let vm11 = lab.bird(
        "vm11",
        &reference::vm_bird_config_with(11, 64613, &["10.3.0.1/32"], SLOW_VM),
    );
    let vm12 = lab.bird(
        "vm12",
        &reference::vm_bird_link_local_config(12, 64613, &["2001:db8:3::2/128"], SLOW_VM),
    );
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    wait_up(&lab, &vm11, "vm11");
    wait_up(&lab, &vm12, "vm12");
    lab.stop(t.pid);
    let down = wait_for(Duration::from_secs(10), || {
        (!established(&vm11) && !established(&vm12)).then_some(())
    });
    assert!(down.is_some(), "VM sessions did not notice tapir stopping");
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    // Both back well within BIRD's 60 s connect delay: tapir connected.
    let back = wait_for(Duration::from_secs(20), || {
        (established(&vm11) && established(&vm12)).then_some(())
    });
    assert!(
        back.is_some(),
        "VMs not back after tapir restarted: {:?} {:?}\n{}\n{}",
        vm11.protocol("bgp1"),
        vm12.protocol("bgp1"),
        t.show(&["peers"]),
        lab.all_logs()
    );
    wait_route(&lab, &t, "10.3.0.1/32", "recdns1001");
    wait_route(&lab, &t, "2001:db8:3::2/128", "tap12");
}

#[test]
fn registrations_change_what_a_vm_may_announce_and_survive_a_restart() {
    let mut lab = reference::standard(&[13]);
    let vm13 = reference::vm_bird(&mut lab, 13, &["10.3.0.1/32", "10.99.0.0/24"]);
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    wait_up(&lab, &vm13, "vm13");
    let accepted =
        |t: &lab::tapir::Tapir, p: &str| t.routes_for(p).first().map(|r| r["accepted"] == true);
    assert_eq!(wait_for(WAIT, || accepted(&t, "10.99.0.0/24")), Some(false));
    // The daemon filters: only what authorisation refused, and how many.
    let (ok, out, err) = t.cli(&["show", "routes", "--refused", "--json"]);
    assert!(ok, "{err}");
    let refused: serde_json::Value = serde_json::from_str(&out).unwrap();
    let refused: Vec<&str> = refused
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    // 10.3.0.1/32 is recdns1001's (vm11) in the inventory, not vm13's.
    assert_eq!(refused, ["10.3.0.1/32", "10.99.0.0/24"], "{out}");
    let (ok, out, err) = t.cli(&["sh", "routes", "--count", "--json"]);
    assert!(ok, "{err}");
    let count: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(count["routes"], 2, "{out}");
    assert_eq!(count["refused"], 2, "{out}");
    assert_eq!(count["installed"], 0, "{out}");
    // An address: the longest prefix that covers it.
    let (ok, out, err) = t.cli(&["show", "routes", "10.99.0.7", "--json"]);
    assert!(ok && out.contains("10.99.0.0/24"), "{out}{err}");

    // A hook registers the VM with the prefix it serves.
    let (ok, out, err) = t.cli(&[
        "vm",
        "add",
        "lb2001",
        "--interface",
        "tap13",
        "--address",
        "10.192.24.13",
        "--asn",
        "64613",
        "--prefix",
        "10.99.0.0/24",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("lb2001 registered"), "{out}");
    let now = wait_for(WAIT, || accepted(&t, "10.99.0.0/24").filter(|a| *a));
    assert!(
        now.is_some(),
        "registration did not take effect:\n{}",
        t.show(&["routes"])
    );
    // With an entry, the VM may announce its own prefixes only.
    let stolen = t.routes_for("10.3.0.1/32");
    assert_eq!(stolen[0]["accepted"], false);
    assert!(
        stolen[0]["rejected_reason"]
            .as_str()
            .unwrap()
            .contains("lb2001"),
        "{stolen:?}"
    );

    // Bad registrations: clear errors, nothing changes.
    let (ok, _, err) = t.cli(&[
        "vm",
        "add",
        "lb2001",
        "--address",
        "10.192.24.99",
        "--prefix",
        "10.3.0.9/32",
    ]);
    assert!(!ok && err.contains("already in the inventory"), "{err}");
    let (ok, _, err) = t.cli(&[
        "vm",
        "add",
        "thief",
        "--address",
        "10.192.24.98",
        "--prefix",
        "10.3.0.1/32",
    ]);
    assert!(!ok && err.contains("recdns1001"), "{err}");
    let (ok, _, err) = t.cli(&[
        "vm",
        "add",
        "x",
        "--address",
        "10.192.24.97",
        "--prefix",
        "10.3.0.1/24",
    ]);
    assert!(!ok && err.contains("host bits"), "{err}");
    let (ok, _, err) = t.cli(&["vm", "remove", "recdns1001"]);
    assert!(!ok && err.contains("config file"), "{err}");
    assert_eq!(accepted(&t, "10.99.0.0/24"), Some(true));

    // The registration survives a restart of tapir.
    lab.stop(t.pid);
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    let back = wait_for(WAIT, || accepted(&t, "10.99.0.0/24").filter(|a| *a));
    assert!(
        back.is_some(),
        "registration lost over a restart:\n{}\n{}",
        t.show(&["vms"]),
        lab.all_logs()
    );
    let vms = t.json("vms");
    let lb = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "lb2001")
        .unwrap_or_else(|| panic!("{vms}"));
    assert_eq!(lb["source"], "registered");

    // Unregistered: back to the group filter, which refuses 10.99.0.0/24.
    let (ok, _, err) = t.cli(&["vm", "remove", "lb2001"]);
    assert!(ok, "{err}");
    assert_eq!(
        wait_for(WAIT, || accepted(&t, "10.99.0.0/24").filter(|a| !*a)),
        Some(false)
    );
}

#[test]
fn max_prefixes_reject_and_teardown() {
    let mut lab = reference::standard(&[13, 14]);
    let three = ["10.3.0.5/32", "10.3.0.6/32", "10.3.0.7/32"];
    let vm13 = reference::vm_bird(&mut lab, 13, &three);
    let vm14 = reference::vm_bird(&mut lab, 14, &three);
    let example = std::fs::read_to_string(example()).unwrap();
    // Two groups: tap13 rejects past 2 prefixes, tap14 tears down.
    let cfg = example
        .replace("interfaces = [\"tap*\"]", "interfaces = [\"tap13\"]")
        .replace("max-prefixes = 100", "max-prefixes = 2")
        + "\n[[group]]\nname = \"strict\"\ninterfaces = [\"tap14\"]\nranges = [\"10.192.24.0/23\"]\n\
           remote-as = \"external\"\nimport = \"BGP-FROM-VMS\"\nmax-prefixes = 2\nmax-prefixes-action = \"teardown\"\n";
    let path = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &path);
    wait_up(&lab, &vm13, "vm13");
    let counted = wait_for(WAIT, || {
        let n: Vec<Value> = three
            .iter()
            .flat_map(|p| t.routes_for(p))
            .filter(|r| r["peer"] == "tap13")
            .collect();
        (n.len() == 3).then_some(n)
    })
    .unwrap_or_else(|| panic!("{}", t.show(&["routes"])));
    assert_eq!(
        counted.iter().filter(|r| r["accepted"] == true).count(),
        2,
        "{counted:?}"
    );
    assert!(counted.iter().any(|r| r["rejected_reason"]
        .as_str()
        .is_some_and(|s| s.contains("max-prefixes"))));
    assert!(established(&vm13), "reject must keep the session");
    // tap14: the third prefix ends the session with Cease / Maximum Number
    // of Prefixes Reached, as the VM's BIRD reports it.
    let torn = wait_for(WAIT, || {
        let p = vm14.cmd(&["show", "protocols", "all", "bgp1"]);
        p.contains("Maximum number of prefixes reached")
            .then_some(p)
    });
    assert!(
        torn.is_some(),
        "{}\n{}",
        vm14.cmd(&["show", "protocols", "all", "bgp1"]),
        lab.all_logs()
    );
}

#[test]
fn bfd_with_a_bird_vm_ends_the_session_when_the_vm_freezes() {
    let mut lab = reference::standard(&[12]);
    // vm12 as the reference lab has it: link-local, `bfd on`, 300 ms x 3.
    let vm_cfg = reference::vm_bird_link_local_config(12, 64613, &["2001:db8:3::2/128"], "bfd on;")
        .replace(
            "protocol device { }",
            "protocol device { }\nprotocol bfd { interface \"eth0\" { interval 300 ms; multiplier 3; }; }",
        );
    let vm = lab.bird("vm12", &vm_cfg);
    let cfg = std::fs::read_to_string(example()).unwrap().replace(
        "graceful-restart-time = 120",
        "graceful-restart-time = 120\nbfd = true\nbfd-interval = 300\nbfd-multiplier = 3",
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    wait_up(&lab, &vm, "vm12");
    wait_route(&lab, &t, "2001:db8:3::2/128", "tap12");
    // BFD up, as the VM's BIRD sees it and as tapir sees it.
    let up = wait_for(WAIT, || {
        let b = vm.cmd(&["show", "bfd", "sessions"]);
        let ours = t.json("bfd");
        (b.contains(" Up ") && ours.as_array()?.iter().any(|s| s["state"] == "Up")).then_some(b)
    });
    assert!(
        up.is_some(),
        "{}\n{}\n{}",
        vm.cmd(&["show", "bfd", "sessions"]),
        t.show(&["bfd"]),
        lab.all_logs()
    );
    // The VM freezes (its BIRD stops; the kernel still answers TCP): BFD
    // ends the BGP session long before the 90 s hold time would.
    let frozen = std::time::Instant::now();
    lab.exec("vm12", &["kill", "-STOP", &vm.pid.to_string()]);
    let gone = wait_for(Duration::from_secs(10), || {
        t.routes_for("2001:db8:3::2/128").is_empty().then_some(())
    });
    let took = frozen.elapsed();
    eprintln!("BFD: VM frozen -> route withdrawn in {took:?} (300 ms x 3)");
    lab.exec("vm12", &["kill", "-CONT", &vm.pid.to_string()]);
    assert!(
        gone.is_some(),
        "route kept after the VM froze:\n{}",
        t.show(&["bfd"])
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let peers = t.json("peers");
    assert!(
        peers.as_array().unwrap().iter().any(|p| p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("BFD Down"))),
        "{peers}"
    );
}

#[test]
fn bfd_multihop_with_the_reference_vm() {
    let mut lab = reference::standard(&[11]);
    // The reference config (`multihop`) with `bfd on`: BIRD runs BFD as
    // multihop (RFC 5883, port 4784); tapir follows it there.
    let vm_cfg = reference::vm_bird_config_with(11, 64613, &["10.3.0.1/32"], "bfd on;").replace(
        "protocol device { }",
        "protocol device { }\nprotocol bfd { multihop { interval 300 ms; multiplier 3; }; }",
    );
    let vm = lab.bird("vm11", &vm_cfg);
    let cfg = std::fs::read_to_string(example()).unwrap().replace(
        "graceful-restart-time = 120",
        "graceful-restart-time = 120\nbfd = true",
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    wait_up(&lab, &vm, "vm11");
    wait_route(&lab, &t, "10.3.0.1/32", "recdns1001");
    let up = wait_for(WAIT, || {
        vm.cmd(&["show", "bfd", "sessions"])
            .contains(" Up ")
            .then_some(())
    });
    assert!(
        up.is_some(),
        "{}\n{}\n{}",
        vm.cmd(&["show", "bfd", "sessions"]),
        t.show(&["bfd"]),
        lab.all_logs()
    );
    lab.exec("vm11", &["kill", "-STOP", &vm.pid.to_string()]);
    let gone = wait_for(Duration::from_secs(10), || {
        t.routes_for("10.3.0.1/32").is_empty().then_some(())
    });
    lab.exec("vm11", &["kill", "-CONT", &vm.pid.to_string()]);
    assert!(
        gone.is_some(),
        "route kept after the VM froze:\n{}",
        t.show(&["bfd"])
    );
}

/// Sends one BFD control packet from a VM's namespace to its gateway with
/// the given TTL.
fn send_bfd(lab: &Lab, vm: &str, from: &str, ttl: u8, my: u32, your: u32, state: u8) {
    let p = lab::BfdPacket {
        from,
        to: "10.192.24.1",
        ttl,
        my,
        your,
        state,
        port: 3784,
    };
    lab.send_bfd(Path::new(TAPIR), vm, &p);
}

#[test]
fn bfd_packets_with_wrong_ttl_or_discriminator_are_ignored() {
    let mut lab = reference::standard(&[11]);
    // The VM runs BGP but no BFD: the packets below are the only ones.
    let vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let cfg = std::fs::read_to_string(example()).unwrap().replace(
        "graceful-restart-time = 120",
        "graceful-restart-time = 120\nbfd = true",
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    wait_up(&lab, &vm, "vm11");
    let remote = |t: &lab::tapir::Tapir| -> Option<u64> {
        t.json("bfd")
            .as_array()?
            .iter()
            .find(|s| s["peer"] == "10.192.24.11")
            .and_then(|s| s["remote_discriminator"].as_u64())
    };
    assert_eq!(wait_for(WAIT, || remote(&t)), Some(0));
    // TTL 254: it may have crossed a router (RFC 5881 §5): ignored.
    send_bfd(&lab, "vm11", "10.192.24.11", 254, 4242, 0, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(remote(&t), Some(0), "a TTL 254 packet was taken");
    // TTL 255: taken (the session learns the peer's discriminator).
    send_bfd(&lab, "vm11", "10.192.24.11", 255, 4242, 0, 1);
    assert_eq!(
        wait_for(Duration::from_secs(5), || remote(&t).filter(|r| *r == 4242)),
        Some(4242)
    );
    // A Your Discriminator that is not ours: ignored. (4242 once more
    // first: the session forgets it when its detection time, 3 s from
    // 4242's last packet, runs out.)
    send_bfd(&lab, "vm11", "10.192.24.11", 255, 4242, 0, 1);
    send_bfd(&lab, "vm11", "10.192.24.11", 255, 5555, 999, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        remote(&t),
        Some(4242),
        "a packet for another session was taken"
    );
}

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
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", 11);
    let tor = tor::start(&mut lab, Kind::Bird);
    let _vm = lab.bird(
        "vm11",
        &reference::vm_bird_config(11, 64613, &["10.3.0.1/32"]),
    );
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap();
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
        wait_for(settle, || (tor_paths(&tor, "10.3.0.1/32")
            == ["10.192.21.6"])
        .then_some(()))
        .is_some(),
        "{:?}\n{}",
        tor_paths(&tor, "10.3.0.1/32"),
        lab.all_logs()
    );

    for (from, to, via) in [("hv1", "hv2", "10.192.21.7"), ("hv2", "hv1", "10.192.21.6")] {
        let start = Instant::now();
        reference::migrate(&mut lab, from, to, "tap11", 11);
        let dest = if to == "hv1" { &t1 } else { &t2 };
        let mut at_dest = None;
        let arrived = wait_for(settle, || {
            if at_dest.is_none()
                && dest
                    .routes_for("10.3.0.1/32")
                    .iter()
                    .any(|r| r["accepted"] == true)
            {
                at_dest = Some(start.elapsed());
            }
            tor_paths(&tor, "10.3.0.1/32")
                .contains(&via.to_string())
                .then_some(())
        });
        let took = start.elapsed();
        assert!(
            arrived.is_some(),
            "{from} -> {to}: tor never saw the route via {via}: {:?}\n{}",
            tor_paths(&tor, "10.3.0.1/32"),
            lab.all_logs()
        );
        // After settling, only via the hypervisor the VM is on.
        let only = wait_for(settle, || {
            (tor_paths(&tor, "10.3.0.1/32") == [via]).then_some(())
        });
        assert!(
            only.is_some(),
            "{from} -> {to}: {:?}",
            tor_paths(&tor, "10.3.0.1/32")
        );
        eprintln!("migration {from} -> {to}: {to} has the VM's route after {at_dest:?}, tor via {to} after {took:?}");
    }
}

#[test]
fn drained_path_loses_at_tor_when_another_exists() {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", 12);
    reference::add_vm(&mut lab, "hv2", 13);
    let tor = tor::start(&mut lab, Kind::Bird);
    // One anycast prefix from a VM on each hypervisor.
    let _a = lab.bird(
        "vm12",
        &reference::vm_bird_config(12, 64613, &["10.3.0.53/32"]),
    );
    let _b = lab.bird(
        "vm13",
        &reference::vm_bird_config(13, 64613, &["10.3.0.53/32"]),
    );
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
    let both = wait_for(Duration::from_secs(30), || {
        (tor_paths(&tor, "10.3.0.53/32").len() == 2).then_some(())
    });
    assert!(both.is_some(), "{:?}", tor_paths(&tor, "10.3.0.53/32"));
    // Equal paths: tor picks hv1 (lower router id). Drain hv1's VM: the
    // GRACEFUL_SHUTDOWN path loses, hv2's becomes best.
    assert_eq!(tor_paths(&tor, "10.3.0.53/32")[0], "10.192.21.6");
    let (ok, _, err) = t1.cli(&["drain", "tap12"]);
    assert!(ok, "{err}");
    let moved = wait_for(Duration::from_secs(30), || {
        (tor_paths(&tor, "10.3.0.53/32")[0] == "10.192.21.7").then_some(())
    });
    assert!(moved.is_some(), "{:?}", tor_paths(&tor, "10.3.0.53/32"));
    assert_eq!(
        tor_paths(&tor, "10.3.0.53/32").len(),
        2,
        "the drained path is still there, just not best"
    );
}

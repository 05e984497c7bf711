//! The demo: the reference lab (docs/design.md) with a BIRD top-of-rack, tapir on
//! hv1 running `examples/hypervisor.toml`, and the three reference VMs with
//! unmodified BIRD: vm11 (recdns1001, the reference `multihop` config), vm12
//! (IPv6 link-local only) and vm13 (a rogue announcing recdns1001's address
//! and a prefix outside the filter). Prints what tapir and its peers see,
//! then tears everything down.
//!
//! Usage: tapir-demo PATH-TO-TAPIR [PATH-TO-EXAMPLE-CONFIG]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lab::reference::{self, HV_AS, TOR_AS, TOR_V4, TOR_V6};
use lab::{wait_for, Lab};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(tapir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: tapir-demo PATH-TO-TAPIR [CONFIG]");
        return ExitCode::FAILURE;
    };
    let config = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("examples/hypervisor.toml"));
    let config = match config.canonicalize() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };

    println!("== building the reference lab: tor (BIRD), hv1 (tapir), vm11 vm12 vm13 (BIRD)");
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1"]);
    for n in [11, 12, 13] {
        reference::add_vm(&mut lab, "hv1", n);
    }
    let tor = lab.bird(
        "tor",
        &format!(
            "router id {TOR_V4};\nprotocol device {{ }}\n\
             protocol static {{ ipv4; route 0.0.0.0/0 unreachable; }}\n\
             protocol static {{ ipv6; route ::/0 unreachable; }}\n\
             protocol bgp hv4 {{ local {TOR_V4} as {TOR_AS}; neighbor range 10.192.21.0/24 as {HV_AS};\n  \
               ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n\
             protocol bgp hv6 {{ local {TOR_V6} as {TOR_AS}; neighbor range 2001:db8:21::/64 as {HV_AS};\n  \
               ipv6 {{ import all; export where source = RTS_STATIC; }}; }}\n"
        ),
    );
    let vm = lab.bird(
        "vm11",
        &reference::vm_bird_config(11, 64613, &["10.3.0.1/32"]),
    );
    let _vm12 = lab.bird(
        "vm12",
        &reference::vm_bird_link_local_config(12, 64613, &["2001:db8:3::2/128"], ""),
    );
    let _vm13 = lab.bird(
        "vm13",
        &reference::vm_bird_config(13, 64613, &["10.3.0.1/32", "10.99.0.0/24"]),
    );
    let t = lab.tapir("hv1", &tapir, &config);

    let up = wait_for(Duration::from_secs(30), || {
        let peers = t.json("peers");
        let n = peers
            .as_array()
            .map(|a| a.iter().filter(|p| p["state"] == "Established").count())
            .unwrap_or(0);
        let routes = ["10.3.0.1/32", "10.99.0.0/24", "2001:db8:3::2/128"]
            .iter()
            .map(|p| t.routes_for(p).len())
            .sum::<usize>();
        (n == 5 && routes == 4).then_some(())
    });
    println!("\n$ tapir show peers   # one row per session; --all adds the VM addresses that are only probed");
    println!("{}", t.show(&["peers"]));
    println!("$ tapir show routes\n{}", t.show(&["routes"]));
    println!("$ tapir show vms\n{}", t.show(&["vms"]));
    println!("$ tapir show rib\n{}", t.show(&["rib"]));
    let _ = wait_for(Duration::from_secs(10), || tor.route("10.3.0.1/32"));
    println!(
        "$ birdc show route 10.3.0.1/32 all   # in tor: the VM's prefix, AS path stripped to 64612\n{}",
        tor.route("10.3.0.1/32").unwrap_or_else(|| "(not there)\n".into())
    );
    for fam in ["-4", "-6"] {
        let k = lab.ip("hv1", &[fam, "route", "show", "proto", "180"]);
        println!(
            "$ ip {fam} route show proto 180   # in hv1 (180: tapir)\n{}",
            String::from_utf8_lossy(&k.stdout)
        );
    }
    println!(
        "$ birdc show protocols   # in tor\n{}",
        tor.cmd(&["show", "protocols"])
    );
    println!(
        "$ birdc show protocols   # in vm11 (the reference VM config)\n{}",
        vm.cmd(&["show", "protocols"])
    );
    if up.is_none() {
        eprintln!(
            "the demo did not converge in 30 s; logs:\n{}",
            lab.all_logs()
        );
        return ExitCode::FAILURE;
    }
    println!("== all sessions Established; tearing the lab down");
    ExitCode::SUCCESS
}

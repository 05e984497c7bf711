//! The BGP speakers that run in VMs, each unmodified and set up the way
//! its users typically write it, in a VM namespace behind a tap, against
//! the example hypervisor config (tapir on hv1 and hv2, BFD on):
//!
//! - BIRD 2: the reference config (IPv4 `multihop`), and IPv6 link-local
//!   with BFD;
//! - FRR 8.4: `neighbor 10.192.24.1 remote-as external` with
//!   `disable-connected-check`, and the gateway's link-local address on
//!   the interface;
//! - GoBGP 3: `ebgp-multihop`;
//! - ExaBGP 4.2: a static route, and its healthcheck process announcing
//!   and withdrawing a service address.
//!
//! For each, what `tor` sees: the prefix arrives via hv1, leaves when the
//! speaker withdraws it and comes back when it announces it again, leaves
//! when the VM's tap is gone from hv1, and arrives via hv2 when the tap
//! comes up there (a live migration as the network sees it: the VM keeps
//! running, and its session state, throughout).
//!
//! Needs root and the speakers (scripts/setup installs them).

use std::path::Path;
use std::time::Duration;

use lab::reference::{self, GATEWAY_LL, GATEWAY_V4, VM_AS};
use lab::tor::{self, Kind, Tor};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);
/// A speaker may wait out its own back-off before it takes the session
/// on the new hypervisor (BIRD's error delay, GoBGP's connect retry).
const MOVE_WAIT: Duration = Duration::from_secs(120);

fn example() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml"),
    )
    .unwrap()
}

/// tor, hv1 and hv2 running tapir with the example config (BFD on), and
/// vmN plugged into hv1 (its tap `tapN`).
fn lab_with(n: u32) -> (Lab, Tor) {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", n);
    let tor = tor::start(&mut lab, Kind::Bird);
    for (hv, id) in [("hv1", "10.192.21.6"), ("hv2", "10.192.21.7")] {
        let cfg = example()
            .replace(
                "router-id = \"10.192.21.6\"",
                &format!("router-id = \"{id}\""),
            )
            .replace("# bfd = true", "bfd = true");
        assert!(cfg.contains("\nbfd = true"));
        let path = lab.write(&format!("{hv}/tapir.toml"), &cfg);
        lab.tapir(hv, Path::new(TAPIR), &path);
    }
    (lab, tor)
}

/// tor's route for `prefix` via hypervisor `hv`, within `limit`.
fn via(tor: &Tor, prefix: &str, hv: &str, limit: Duration) -> bool {
    let (v4, v6) = reference::hv_addresses(hv);
    let want = if prefix.contains(':') { v6 } else { v4 };
    wait_for(limit, || tor.route(prefix).filter(|r| r.next_hop == want)).is_some()
}

/// tor has no route for `prefix` within `WAIT`: twice in a row, and only
/// while tor's BIRD answers (its CLI failing must not count as gone).
fn gone(tor: &Tor, prefix: &str) -> bool {
    let answers = || match tor {
        Tor::Bird(b) => b.try_cmd(&["show", "status"]).is_some(),
        _ => true,
    };
    let mut absent = 0;
    wait_for(WAIT, || {
        absent = if answers() && tor.route(prefix).is_none() && answers() {
            absent + 1
        } else {
            0
        };
        (absent >= 2).then_some(())
    })
    .is_some()
}

/// The matrix for one speaker in vmN announcing `prefix`: `withdraw` and
/// `announce` make the speaker do so its own way.
fn matrix(
    lab: &mut Lab,
    tor: &Tor,
    n: u32,
    prefix: &str,
    withdraw: &dyn Fn(),
    announce: &dyn Fn(),
    speaker: &dyn Fn() -> String,
) {
    let tap = format!("tap{n}");
    assert!(
        via(tor, prefix, "hv1", WAIT),
        "{prefix} never via hv1\n{}",
        lab.all_logs()
    );
    withdraw();
    assert!(
        gone(tor, prefix),
        "{prefix} stayed at tor after the speaker withdrew it\nthe speaker: {}\n{}",
        speaker(),
        lab.all_logs()
    );
    announce();
    assert!(
        via(tor, prefix, "hv1", WAIT),
        "{prefix} not back after the speaker announced it again\n{}",
        lab.all_logs()
    );
    // The tap is gone from hv1 (the VM stopped there, or left).
    reference::unplug(lab, "hv1", &tap);
    assert!(
        gone(tor, prefix),
        "{prefix} stayed at tor with {tap} gone\n{}",
        lab.all_logs()
    );
    // ... and comes up on hv2, the VM running on.
    reference::plug(lab, "hv2", &tap, n, n);
    assert!(
        via(tor, prefix, "hv2", MOVE_WAIT),
        "{prefix} never via hv2 after the move\n{}",
        lab.all_logs()
    );
}

#[test]
fn bird_reference_config() {
    let (mut lab, tor) = lab_with(11);
    let bird = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let toggle = |on: bool| {
        bird.cmd(&[if on { "enable" } else { "disable" }, "static1"]);
    };
    matrix(
        &mut lab,
        &tor,
        11,
        "10.3.0.1/32",
        &|| toggle(false),
        &|| toggle(true),
        &|| bird.cmd(&["show", "route", "all"]),
    );
}

#[test]
fn bird_link_local_with_bfd() {
    let (mut lab, tor) = lab_with(15);
    let cfg = reference::vm_bird_link_local_config(15, VM_AS, &["2001:db8:3::15/128"], "bfd on;")
        .replace(
            "protocol device { }",
            "protocol device { }\nprotocol bfd { interface \"eth0\" { interval 300 ms; multiplier 3; }; }",
        );
    let bird = lab.bird("vm15", &cfg);
    let toggle = |on: bool| {
        bird.cmd(&[if on { "enable" } else { "disable" }, "static1"]);
    };
    matrix(
        &mut lab,
        &tor,
        15,
        "2001:db8:3::15/128",
        &|| toggle(false),
        &|| toggle(true),
        &|| bird.cmd(&["show", "route", "all"]),
    );
    // The guest's BFD session is Up with hv2 now: taken over, not timed
    // out (which would cost the guest's BIRD its error delay).
    let up = wait_for(WAIT, || {
        let s = bird.cmd(&["show", "bfd", "sessions"]);
        s.lines().any(|l| l.contains(" Up ")).then_some(())
    });
    assert!(up.is_some(), "{}", bird.cmd(&["show", "bfd", "sessions"]));
}

/// hv1's `tapir show routes` and `show peers`, for a failure's message.
fn routes_at(socket: &Path) -> String {
    let out = |args: &[&str]| {
        let o = std::process::Command::new(TAPIR)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    out(&["show", "routes"]) + &out(&["show", "peers"])
}

fn frr_config(n: u32, neighbor: &str, family: &str, prefix: &str) -> String {
    let addr = reference::vm_v4(n);
    format!(
        "frr defaults traditional\n\
         hostname vm{n}\n\
         router bgp {VM_AS}\n \
          bgp router-id {addr}\n \
          no bgp ebgp-requires-policy\n \
          no bgp network import-check\n\
          {neighbor}\
          address-family {family} unicast\n  \
           network {prefix}\n\
          {activate}\
          exit-address-family\n",
        activate = if family == "ipv6" {
            format!("  neighbor {GATEWAY_LL} activate\n")
        } else {
            String::new()
        }
    )
}

#[test]
fn frr_multihop() {
    let (mut lab, tor) = lab_with(12);
    let neighbor = format!(
        " neighbor {GATEWAY_V4} remote-as external\n neighbor {GATEWAY_V4} disable-connected-check\n"
    );
    let frr = lab.frr("vm12", &frr_config(12, &neighbor, "ipv4", "10.3.0.12/32"));
    let hv1_socket = lab.dir().join("hv1/tapir.sock");
    let net = |on: bool| {
        let line = format!("{}network 10.3.0.12/32", if on { "" } else { "no " });
        frr.configure(&[
            &format!("router bgp {VM_AS}"),
            "address-family ipv4 unicast",
            &line,
        ]);
    };
    matrix(
        &mut lab,
        &tor,
        12,
        "10.3.0.12/32",
        &|| net(false),
        &|| net(true),
        &|| frr.vtysh("show bgp ipv4 unicast") + &routes_at(&hv1_socket),
    );
}

#[test]
fn frr_link_local() {
    let (mut lab, tor) = lab_with(16);
    let neighbor = format!(
        " neighbor {GATEWAY_LL} remote-as external\n neighbor {GATEWAY_LL} interface eth0\n"
    );
    let frr = lab.frr(
        "vm16",
        &frr_config(16, &neighbor, "ipv6", "2001:db8:3::16/128"),
    );
    let net = |on: bool| {
        let line = format!("{}network 2001:db8:3::16/128", if on { "" } else { "no " });
        frr.configure(&[
            &format!("router bgp {VM_AS}"),
            "address-family ipv6 unicast",
            &line,
        ]);
    };
    matrix(
        &mut lab,
        &tor,
        16,
        "2001:db8:3::16/128",
        &|| net(false),
        &|| net(true),
        &|| frr.vtysh("show bgp ipv6 unicast") + &frr.vtysh("show running-config"),
    );
}

#[test]
fn gobgp_multihop() {
    let (mut lab, tor) = lab_with(13);
    let addr = reference::vm_v4(13);
    let g = lab.gobgp(
        "vm13",
        &format!(
            "[global.config]\n  as = {VM_AS}\n  router-id = \"{addr}\"\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{GATEWAY_V4}\"\n    peer-as = {}\n\
             \x20 [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = 2\n\
             \x20 [neighbors.transport.config]\n    local-address = \"{addr}\"\n",
            reference::HV_AS
        ),
    );
    g.announce("10.3.0.13/32");
    matrix(
        &mut lab,
        &tor,
        13,
        "10.3.0.13/32",
        &|| {
            g.cli(&["global", "rib", "del", "-a", "ipv4", "10.3.0.13/32"]);
        },
        &|| g.announce("10.3.0.13/32"),
        &|| g.cli(&["global", "rib"]),
    );
}

#[test]
fn exabgp_static_route_and_healthcheck() {
    let (mut lab, tor) = lab_with(14);
    let addr = reference::vm_v4(14);
    // The healthcheck's command passes while this file exists.
    let up = lab.dir().join("vm14-service-up");
    std::fs::write(&up, "").unwrap();
    let cfg = lab.write(
        "vm14/exabgp.conf",
        &format!(
            "process service {{\n  \
               run /usr/bin/python3 -m exabgp healthcheck --cmd \"test -e {up}\" --ip 10.3.0.24/32 \
                 --no-ip-setup --no-syslog --withdraw-on-down --interval 1 --fast-interval 1 --rise 1 --fall 1;\n  \
               encoder text;\n\
             }}\n\
             neighbor {GATEWAY_V4} {{\n  \
               router-id {addr};\n  \
               local-address {addr};\n  \
               local-as {VM_AS};\n  \
               peer-as {};\n  \
               family {{ ipv4 unicast; }}\n  \
               static {{ route 10.3.0.14/32 next-hop self; }}\n  \
               api {{ processes [ service ]; }}\n\
             }}\n",
            reference::HV_AS,
            up = up.display()
        ),
    );
    lab.spawn(
        "vm14",
        &[
            "env",
            "exabgp.daemon.user=root",
            "exabgp.daemon.daemonize=false",
            "exabgp.log.destination=stdout",
            "exabgp.cli.enable=false",
            "exabgp",
            &cfg.display().to_string(),
        ],
        "vm14/exabgp.log",
    );
    // The static route, as any.
    assert!(
        via(&tor, "10.3.0.14/32", "hv1", WAIT),
        "10.3.0.14/32 never via hv1\n{}",
        lab.all_logs()
    );
    // The healthcheck's service address: withdrawn when the check fails.
    let up2 = up.clone();
    matrix(
        &mut lab,
        &tor,
        14,
        "10.3.0.24/32",
        &|| std::fs::remove_file(&up2).unwrap(),
        &|| std::fs::write(&up, "").unwrap(),
        &|| String::new(),
    );
    assert!(via(&tor, "10.3.0.14/32", "hv2", WAIT), "{}", lab.all_logs());
}

//! tapir against unmodified BIRD 2, FRR and GoBGP in the reference lab
//! (docs/design.md). Every assertion reads the other daemon's own CLI, or the
//! kernel, or tapir's CLI for what tapir received. Needs root.

use std::path::Path;
use std::time::Duration;

use lab::reference::{self, HV_AS, TOR_AS, TOR_V4, TOR_V6};
use lab::{gobgp, wait_for, Lab};
use serde_json::Value;

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);

/// hv1 with two upstream sessions to tor announcing one IPv4 and one IPv6
/// service prefix.
fn hv1_config() -> String {
    format!(
        r#"router-id = "10.192.21.6"
local-as = {HV_AS}
announce = ["10.3.0.1/32", "2001:db8:3::1/128"]

[[neighbor]]
name = "tor-v4"
address = "{TOR_V4}"
remote-as = {TOR_AS}
hold-time = 9
export = "OURS"

[[neighbor]]
name = "tor-v6"
address = "{TOR_V6}"
remote-as = {TOR_AS}
hold-time = 9
export = "OURS"

[policy.OURS]
default = "reject"

[[policy.OURS.term]]
match = {{ source = "local" }}
action = "accept"
"#
    )
}

fn bird_tor_config() -> String {
    format!(
        r#"log stderr all;
router id {TOR_V4};
protocol device {{ }}
protocol static s4 {{ ipv4; route 192.0.2.0/24 unreachable; }}
protocol static s6 {{ ipv6; route 2001:db8:ff::/48 unreachable; }}
# The hypervisors, as dynamic neighbors (docs/design.md).
protocol bgp hv4 {{
    local {TOR_V4} as {TOR_AS};
    neighbor range 10.192.21.0/24 as {HV_AS};
    ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
protocol bgp hv6 {{
    local {TOR_V6} as {TOR_AS};
    neighbor range 2001:db8:21::/64 as {HV_AS};
    ipv6 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

fn established_dynamic(bird: &lab::bird::Bird) -> usize {
    bird.cmd(&["show", "protocols"])
        .lines()
        .filter(|l| l.starts_with("dynbgp") && l.trim_end().ends_with("Established"))
        .count()
}

/// What tapir received from tor, checked through `tapir show routes`.
fn assert_tapir_received_tor_routes(t: &lab::tapir::Tapir, lab: &Lab) {
    let got = wait_for(WAIT, || {
        let v4 = t.routes_for("192.0.2.0/24");
        let v6 = t.routes_for("2001:db8:ff::/48");
        (!v4.is_empty() && !v6.is_empty()).then_some((v4, v6))
    });
    let Some((v4, v6)) = got else {
        panic!(
            "tapir did not receive tor's routes:\n{}\n{}",
            t.show(&["routes"]),
            lab.all_logs()
        );
    };
    assert_eq!(v4[0]["next_hop"], TOR_V4);
    assert_eq!(v4[0]["as_path"], TOR_AS.to_string());
    assert_eq!(v4[0]["peer"], "tor-v4");
    assert!(
        v6[0]["next_hop"].as_str().unwrap().starts_with(TOR_V6),
        "{v6:?}"
    );
    assert_eq!(v6[0]["as_path"], TOR_AS.to_string());
}

#[test]
fn example_config_with_bird_tor_and_reference_vm() {
    let mut lab = reference::standard(&[11]);
    let tor = lab.bird("tor", &bird_tor_config());
    let vm = reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml");
    let t = lab.tapir("hv1", Path::new(TAPIR), &example);

    // Both upstream sessions up, as tor's BIRD sees them.
    if wait_for(WAIT, || (established_dynamic(&tor) == 2).then_some(())).is_none() {
        panic!(
            "tor sessions not up:\n{}\n{}\n{}",
            tor.cmd(&["show", "protocols"]),
            t.show(&["peers"]),
            lab.all_logs()
        );
    }
    // The reference VM config (multihop, `neighbor 10.192.24.1 external`)
    // is up, as the VM's BIRD sees it.
    if wait_for(WAIT, || vm.is_established("bgp1").then_some(())).is_none() {
        panic!(
            "VM session not up:\n{:?}\n{}\n{}",
            vm.protocol("bgp1"),
            t.show(&["peers"]),
            lab.all_logs()
        );
    }
    // What the VM announced arrived with the VM as next hop.
    let r = wait_for(WAIT, || {
        let r = t.routes_for("10.3.0.1/32");
        (!r.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| panic!("no route from the VM:\n{}", t.show(&["routes"])));
    assert_eq!(r[0]["peer"], "recdns1001");
    assert_eq!(r[0]["next_hop"], "10.192.24.11");
    assert_eq!(r[0]["as_path"], "64613");
    assert_tapir_received_tor_routes(&t, &lab);

    // The table view lists every session as Established.
    let table = t.show(&["peers"]);
    assert_eq!(table.matches("Established").count(), 3, "{table}");
}

#[test]
fn bird_exchanges_ipv4_and_ipv6_routes() {
    let mut lab = reference::standard(&[]);
    let tor = lab.bird("tor", &bird_tor_config());
    let cfg = lab.write("hv1/tapir.toml", &hv1_config());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);

    let seen = wait_for(WAIT, || {
        let v4 = tor.route("10.3.0.1/32")?;
        let v6 = tor.route("2001:db8:3::1/128")?;
        Some((v4, v6))
    });
    let Some((v4, v6)) = seen else {
        panic!(
            "tor's BIRD did not get tapir's routes:\n{}\n{}",
            tor.cmd(&["show", "route", "all"]),
            lab.all_logs()
        );
    };
    assert!(v4.contains("BGP.next_hop: 10.192.21.6"), "{v4}");
    assert!(v4.contains(&format!("BGP.as_path: {HV_AS}\n")), "{v4}");
    assert!(v4.contains("BGP.origin: IGP"), "{v4}");
    assert!(v6.contains("BGP.next_hop: 2001:db8:21::6"), "{v6}");
    assert!(v6.contains(&format!("BGP.as_path: {HV_AS}\n")), "{v6}");
    assert_eq!(established_dynamic(&tor), 2);
    assert_tapir_received_tor_routes(&t, &lab);
}

#[test]
fn frr_exchanges_ipv4_and_ipv6_routes() {
    let mut lab = reference::standard(&[]);
    let frr = lab.frr(
        "tor",
        &format!(
            "hostname tor\n\
             router bgp {TOR_AS}\n \
             bgp router-id {TOR_V4}\n \
             no bgp ebgp-requires-policy\n \
             no bgp network import-check\n \
             no bgp default ipv4-unicast\n \
             neighbor HV4 peer-group\n \
             neighbor HV4 remote-as {HV_AS}\n \
             neighbor HV6 peer-group\n \
             neighbor HV6 remote-as {HV_AS}\n \
             bgp listen range 10.192.21.0/24 peer-group HV4\n \
             bgp listen range 2001:db8:21::/64 peer-group HV6\n \
             address-family ipv4 unicast\n  \
             network 192.0.2.0/24\n  \
             neighbor HV4 activate\n \
             exit-address-family\n \
             address-family ipv6 unicast\n  \
             network 2001:db8:ff::/48\n  \
             neighbor HV6 activate\n \
             exit-address-family\n\
             exit\n"
        ),
    );
    let cfg = lab.write("hv1/tapir.toml", &hv1_config());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);

    let seen = wait_for(WAIT, || {
        let v4 = frr.paths("10.3.0.1/32");
        let v6 = frr.paths("2001:db8:3::1/128");
        (!v4.is_empty() && !v6.is_empty()).then_some((v4, v6))
    });
    let Some((v4, v6)) = seen else {
        panic!(
            "FRR did not get tapir's routes:\n{}\n{}",
            frr.vtysh("show bgp summary"),
            lab.all_logs()
        );
    };
    assert_eq!(v4[0]["valid"], true, "{v4:?}");
    assert_eq!(v4[0]["nexthops"][0]["ip"], "10.192.21.6", "{v4:?}");
    assert_eq!(v4[0]["path"], HV_AS.to_string(), "{v4:?}");
    assert_eq!(v4[0]["origin"], "IGP", "{v4:?}");
    assert_eq!(v6[0]["valid"], true, "{v6:?}");
    assert_eq!(v6[0]["nexthops"][0]["ip"], "2001:db8:21::6", "{v6:?}");
    assert_eq!(
        frr.neighbor_state("10.192.21.6").as_deref(),
        Some("Established")
    );
    assert_eq!(
        frr.neighbor_state("2001:db8:21::6").as_deref(),
        Some("Established")
    );
    // zebra put tapir's route into tor's kernel table.
    let kernel = wait_for(WAIT, || {
        let o = lab.ip("tor", &["route", "show", "10.3.0.1/32"]);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.contains("via 10.192.21.6").then_some(s)
    });
    assert!(
        kernel.is_some(),
        "tor's kernel has no route to 10.3.0.1 via hv1"
    );
    assert_tapir_received_tor_routes(&t, &lab);
}

#[test]
fn gobgp_exchanges_ipv4_and_ipv6_routes() {
    let mut lab = reference::standard(&[]);
    let g = lab.gobgp(
        "tor",
        &format!(
            r#"[global.config]
  as = {TOR_AS}
  router-id = "{TOR_V4}"

[[peer-groups]]
  [peer-groups.config]
    peer-group-name = "hv4"
    peer-as = {HV_AS}
  [[peer-groups.afi-safis]]
    [peer-groups.afi-safis.config]
      afi-safi-name = "ipv4-unicast"

[[peer-groups]]
  [peer-groups.config]
    peer-group-name = "hv6"
    peer-as = {HV_AS}
  [[peer-groups.afi-safis]]
    [peer-groups.afi-safis.config]
      afi-safi-name = "ipv6-unicast"

[[dynamic-neighbors]]
  [dynamic-neighbors.config]
    prefix = "10.192.21.0/24"
    peer-group = "hv4"

[[dynamic-neighbors]]
  [dynamic-neighbors.config]
    prefix = "2001:db8:21::/64"
    peer-group = "hv6"
"#
        ),
    );
    g.announce("192.0.2.0/24");
    g.announce("2001:db8:ff::/48");
    let cfg = lab.write("hv1/tapir.toml", &hv1_config());
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);

    let seen = wait_for(WAIT, || {
        let v4 = g.paths("10.3.0.1/32");
        let v6 = g.paths("2001:db8:3::1/128");
        (!v4.is_empty() && !v6.is_empty()).then_some((v4, v6))
    });
    let Some((v4, v6)) = seen else {
        panic!(
            "GoBGP did not get tapir's routes:\n{}\n{}",
            g.cli(&["neighbor"]),
            lab.all_logs()
        );
    };
    let attr = |paths: &[Value], t: i64| -> Value {
        paths[0]["attrs"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["type"] == t).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(attr(&v4, 3)["nexthop"], "10.192.21.6", "{v4:?}");
    assert_eq!(attr(&v4, 2)["as_paths"][0]["asns"][0], HV_AS, "{v4:?}");
    assert_eq!(attr(&v6, 14)["nexthop"], "2001:db8:21::6", "{v6:?}");
    assert_eq!(g.neighbor_state("10.192.21.6"), Some(gobgp::ESTABLISHED));
    assert_eq!(g.neighbor_state("2001:db8:21::6"), Some(gobgp::ESTABLISHED));
    assert_tapir_received_tor_routes(&t, &lab);
}

#[test]
fn bfd_with_frr_bfdd_at_the_tor() {
    let mut lab = reference::standard(&[]);
    let tor = lab::tor::start_with(&mut lab, lab::tor::Kind::Frr, true);
    let lab::tor::Tor::Frr(frr) = &tor else {
        unreachable!()
    };
    let cfg = hv1_config().replace("hold-time = 9\n", "hold-time = 9\nbfd = true\n");
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    // FRR's bfdd sees both sessions up, and so does tapir.
    let up = wait_for(WAIT, || {
        let v: Value = serde_json::from_str(&frr.vtysh("show bfd peers json")).ok()?;
        let peers = v.as_array()?;
        let up = peers.iter().filter(|p| p["status"] == "up").count();
        (up == 2).then_some(v)
    });
    assert!(
        up.is_some(),
        "{}\n{}\n{}",
        frr.vtysh("show bfd peers"),
        t.show(&["bfd"]),
        lab.all_logs()
    );
    let ours = t.json("bfd");
    assert_eq!(
        ours.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "Up")
            .count(),
        2,
        "{ours}"
    );
}

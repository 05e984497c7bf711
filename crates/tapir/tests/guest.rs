//! The guest role (C12, docs/design.md) in the reference lab: tapir inside vm11,
//! with `examples/guest.toml`, against BIRD with the reference hypervisor
//! config and against tapir on the hypervisor. What counts is what tor
//! sees. Needs root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lab::reference;
use lab::tor::{self, Kind, Tor};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name),
    )
    .unwrap()
}

/// The service addresses on vm11's loopback, as an anycast VM has them.
fn service_addresses(lab: &Lab) {
    lab.addr("vm11", "lo", "10.3.0.1/32");
    lab.addr("vm11", "lo", "2001:db8:3::1/128");
    lab.up("vm11", "lo");
}

/// A DNS server on the service address answering the example's check.
fn dns_server(lab: &mut Lab) -> u32 {
    let bin = lab::tool(Path::new(TAPIR), "dns-answer");
    std::fs::create_dir_all(lab.dir().join("vm11")).unwrap();
    lab.spawn(
        "vm11",
        &[
            &bin.to_string_lossy(),
            "10.3.0.1:53",
            "www.wikimedia.org",
            "10.3.0.1",
        ],
        "vm11/dns.log",
    )
}

/// `tapir_service_healthy{service="recdns"}` from the guest's metrics.
fn healthy_metric(lab: &Lab) -> Option<f64> {
    let text = lab.http_get("vm11", Path::new(TAPIR), "127.0.0.1:9179", "/metrics")?;
    lab::metric_sample(&text, "tapir_service_healthy", &[("service", "recdns")])
}

fn via(tor: &Tor, prefix: &str) -> Vec<String> {
    tor.next_hops(prefix)
}

fn hv_tapir_config(router_id: &str) -> String {
    example("hypervisor.toml")
        .replace("# bfd = true", "bfd = true")
        .replace(
            "router-id = \"10.192.21.6\"",
            &format!("router-id = \"{router_id}\""),
        )
}

/// tapir in the VM against BIRD with the reference hypervisor config
/// (`neighbor range 10.192.24.0/23 external; multihop;`): the guest finds
/// the gateway itself and needs no `multihop`. A command check decides:
/// failing, the prefix leaves tor; passing again, it is back.
#[test]
fn guest_with_a_bird_hypervisor_and_a_health_check() {
    let mut lab = reference::standard(&[11]);
    service_addresses(&lab);
    let tor = tor::start(&mut lab, Kind::Bird);
    let hv = lab.bird("hv1", &reference::hv_bird_config("10.192.21.6"));
    let flag: PathBuf = lab.dir().join("vm11/healthy");
    std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
    // The reference hypervisor speaks IPv4 only, without BFD.
    let cfg = example("guest.toml")
        .replace("bfd = true", "bfd = false")
        .replace("hold-time = 90", "hold-time = 90\nfamilies = [\"ipv4\"]")
        .replace("prefixes = [\"10.3.0.1/32\", \"2001:db8:3::1/128\"]", "prefixes = [\"10.3.0.1/32\"]")
        .replace(
            "{ type = \"dns\", server = \"10.3.0.1\", name = \"www.wikimedia.org\", record = \"A\" },",
            &format!("{{ type = \"command\", command = [\"test\", \"-e\", \"{}\"] }},", flag.display()),
        )
        + "\n[metrics]\nlisten = \"127.0.0.1:9179\"\n";
    let cfg = lab.write("vm11/tapir.toml", &cfg);
    let guest = lab.tapir("vm11", Path::new(TAPIR), &cfg);
    // The session comes up; the check fails (no flag): nothing at tor.
    let up = wait_for(WAIT, || {
        hv.cmd(&["show", "protocols"])
            .lines()
            .any(|l| l.contains("Established") && l.starts_with("dyn"))
            .then_some(())
    });
    assert!(
        up.is_some(),
        "{}\n{}",
        hv.cmd(&["show", "protocols"]),
        lab.all_logs()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        tor.route("10.3.0.1/32").is_none(),
        "announced while unhealthy"
    );
    let services = guest.json("services");
    assert_eq!(services[0]["healthy"], false, "{services}");

    std::fs::write(&flag, "").unwrap();
    let back = wait_for(WAIT, || {
        (via(&tor, "10.3.0.1/32") == ["10.192.21.6"]).then_some(())
    });
    assert!(back.is_some(), "{}", lab.log(&guest.log));
    // The hypervisor learned it from the VM's own address.
    let r = hv.route("10.3.0.1/32").unwrap_or_default();
    assert!(r.contains("10.192.24.11"), "{r}");
    assert_eq!(healthy_metric(&lab), Some(1.0));

    std::fs::remove_file(&flag).unwrap();
    let gone = wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()));
    assert!(gone.is_some(), "{}", lab.log(&guest.log));
    let services = guest.json("services");
    assert_eq!(services[0]["healthy"], false, "{services}");
    assert!(
        services[0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("exited"),
        "{services}"
    );
    assert_eq!(healthy_metric(&lab), Some(0.0));
    // Back once more: the session never went down meanwhile.
    std::fs::write(&flag, "").unwrap();
    assert!(wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some());

    // A reload takes the service out: withdrawn at tor, without a restart.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let (start, end) = (
        text.find("[[service]]").unwrap(),
        text.find("[metrics]").unwrap(),
    );
    let without = format!("{}{}", &text[..start], &text[end..]);
    std::fs::write(&cfg, &without).unwrap();
    let (code, out, err) = guest.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("service recdns removed"), "{out}");
    let gone = wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()));
    assert!(gone.is_some(), "{}", lab.log(&guest.log));
    assert_eq!(guest.json("services"), serde_json::json!([]));
    // …and announces the prefix unconditionally instead.
    let announcing = without.replace(
        "local-as = 64613\n",
        "local-as = 64613\nannounce = [\"10.3.0.1/32\"]\n",
    );
    assert_ne!(announcing, without);
    std::fs::write(&cfg, &announcing).unwrap();
    let (code, out, err) = guest.cli_code(&["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some());
}

/// The example guest config verbatim against tapir on the hypervisor
/// (the example hypervisor config with BFD): IPv4 on-link and IPv6
/// link-local sessions to the gateway, BFD on both, a DNS health check.
/// The DNS server stops: both prefixes leave tor; it starts again: back.
/// The service address removed from lo: withdrawn too.
#[test]
fn guest_with_a_tapir_hypervisor_and_a_dns_check() {
    let mut lab = reference::standard(&[11]);
    service_addresses(&lab);
    let tor = tor::start(&mut lab, Kind::Bird);
    let c1 = lab.write("hv1/tapir.toml", &hv_tapir_config("10.192.21.6"));
    let hv = lab.tapir("hv1", Path::new(TAPIR), &c1);
    let mut dns = dns_server(&mut lab);
    let cfg = lab.write("vm11/tapir.toml", &example("guest.toml"));
    let guest = lab.tapir("vm11", Path::new(TAPIR), &cfg);
    for (prefix, hop) in [
        ("10.3.0.1/32", "10.192.21.6"),
        ("2001:db8:3::1/128", "2001:db8:21::6"),
    ] {
        let ok = wait_for(WAIT, || (via(&tor, prefix) == [hop]).then_some(()));
        assert!(
            ok.is_some(),
            "{prefix}: {:?}\n{}",
            via(&tor, prefix),
            lab.all_logs()
        );
    }
    // Both sessions and both BFD sessions are up, as the hypervisor sees
    // them.
    let sessions = hv.json("peers");
    let vm: Vec<_> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["interface"] == "tap11" && p["state"] == "Established")
        .collect();
    assert_eq!(vm.len(), 2, "{sessions}");
    let bfd = wait_for(WAIT, || {
        let b = hv.json("bfd");
        let up = b
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "Up")
            .count();
        (up == 2).then_some(())
    });
    assert!(bfd.is_some(), "{}", hv.show(&["bfd"]));
    // The routes came with the VM's own next hops.
    let routes = hv.routes_for("2001:db8:3::1/128");
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(
        routes[0]["next_hop"]
            .as_str()
            .unwrap()
            .contains("2001:db8:140::11"),
        "{routes:?}"
    );

    lab.kill(dns);
    for prefix in ["10.3.0.1/32", "2001:db8:3::1/128"] {
        let gone = wait_for(WAIT, || tor.route(prefix).is_none().then_some(()));
        assert!(gone.is_some(), "{prefix}\n{}", lab.log(&guest.log));
    }
    let s = guest.json("services");
    assert!(
        s[0]["last_error"].as_str().unwrap_or("").contains("dns"),
        "{s}"
    );
    dns = dns_server(&mut lab);
    for prefix in ["10.3.0.1/32", "2001:db8:3::1/128"] {
        assert!(wait_for(WAIT, || tor.route(prefix)).is_some(), "{prefix}");
    }
    // require-address: the service address leaves lo.
    lab.ip("vm11", &["addr", "del", "10.3.0.1/32", "dev", "lo"]);
    let gone = wait_for(WAIT, || tor.route("10.3.0.1/32").is_none().then_some(()));
    assert!(gone.is_some(), "{}", guest.show(&["services"]));
    let s = guest.json("services");
    assert!(
        s[0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("not configured"),
        "{s}"
    );
    lab.kill(dns);
}

/// Live migration with tapir on both sides: the VM's tap moves from hv1 to
/// hv2 and back. hv2 opens a session to the VM; the guest takes the old
/// one over at once (RFC 4724 §4.2), and tor's route follows the VM.
#[test]
fn guest_migration_between_tapir_hypervisors() {
    let mut lab = Lab::new();
    reference::build(&mut lab, &["hv1", "hv2"]);
    reference::add_vm(&mut lab, "hv1", 11);
    service_addresses(&lab);
    let tor = tor::start(&mut lab, Kind::Bird);
    let c1 = lab.write("hv1/tapir.toml", &hv_tapir_config("10.192.21.6"));
    let c2 = lab.write("hv2/tapir.toml", &hv_tapir_config("10.192.21.7"));
    let _t1 = lab.tapir("hv1", Path::new(TAPIR), &c1);
    let _t2 = lab.tapir("hv2", Path::new(TAPIR), &c2);
    let _dns = dns_server(&mut lab);
    let cfg = lab.write("vm11/tapir.toml", &example("guest.toml"));
    let guest = lab.tapir("vm11", Path::new(TAPIR), &cfg);
    let prefixes = [
        ("10.3.0.1/32", ["10.192.21.6", "10.192.21.7"]),
        ("2001:db8:3::1/128", ["2001:db8:21::6", "2001:db8:21::7"]),
    ];
    for (p, hops) in &prefixes {
        let ok = wait_for(WAIT, || (via(&tor, p) == [hops[0]]).then_some(()));
        assert!(ok.is_some(), "{p}: {:?}\n{}", via(&tor, p), lab.all_logs());
    }
    for (from, to, i) in [("hv1", "hv2", 1), ("hv2", "hv1", 0)] {
        let start = Instant::now();
        reference::migrate(&mut lab, from, to, "tap11", 11);
        for (p, hops) in &prefixes {
            let ok = wait_for(WAIT, || (via(&tor, p) == [hops[i]]).then_some(()));
            assert!(
                ok.is_some(),
                "{p} after {from} -> {to}: {:?}\n{}",
                via(&tor, p),
                lab.log(&guest.log)
            );
        }
        eprintln!("{from} -> {to}: tor follows in {:?}", start.elapsed());
    }
    assert!(lab
        .log(&guest.log)
        .contains("the new connection takes the session over"));
}

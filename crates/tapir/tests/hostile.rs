//! A hostile tenant: a raw BGP speaker in vm13, with its own address and
//! the example config on hv1, sends what a VM must not get past the
//! hypervisor. What is asserted is what the top-of-rack (BIRD) and hv1's
//! kernel hold, not what tapir says of itself. Needs root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bgp::attribute::{AsPath, AsSegment, Origin, PathAttributes, RawAttribute};
use bgp::{Context, NextHop, Prefix};
use lab::reference::{self, GATEWAY_V4};
use lab::tor::{self, Tor};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");
const WAIT: Duration = Duration::from_secs(30);
const VM_AS: u32 = 64613;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml")
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One UPDATE from vm13 for `prefix`, next hop its own address.
fn update(prefix: &str, attrs: PathAttributes) -> String {
    let p: Prefix = prefix.parse().unwrap();
    hexs(
        &bgp::update::encode_announce(
            &attrs,
            NextHop::V4(reference::vm_v4(13).parse().unwrap()),
            &[p],
            &Context::modern(),
        )[0],
    )
}

fn attrs(segments: Vec<AsSegment>) -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath { segments }),
        ..Default::default()
    }
}

fn seq(asns: &[u32]) -> Vec<AsSegment> {
    vec![AsSegment::Sequence(asns.to_vec())]
}

/// hv1's kernel route for `prefix` put there by tapir, if any.
fn kernel_route(lab: &Lab, prefix: &str) -> Option<String> {
    let o = lab.ip("hv1", &["route", "show", prefix, "proto", "180"]);
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The reference lab with the example config: BIRD on tor, the reference
/// BIRD VM vm11 (recdns1001, 10.3.0.1/32), and vm13 plugged in for the
/// raw speaker.
fn lab_with_vm11() -> (Lab, lab::tapir::Tapir, Tor) {
    let mut lab = reference::standard(&[11, 13]);
    let tor = tor::start(&mut lab, tor::Kind::Bird);
    reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    (lab, t, tor)
}

/// Starts the raw speaker in vm13, connected to its gateway, sending
/// `sends` once the session is up and staying for a while; `extra`
/// arguments come last (a later one overrides an earlier).
fn raw_speaker(lab: &mut Lab, sends: &[String], extra: &[&str]) -> u32 {
    let raw = lab::tool(Path::new(TAPIR), "bgp-raw-peer");
    let gw = format!("{GATEWAY_V4}:179");
    let id = reference::vm_v4(13);
    let asn = VM_AS.to_string();
    let mut args = vec![
        raw.to_str().unwrap(),
        "--connect",
        &gw,
        "--as",
        &asn,
        "--id",
        &id,
        "--pause-ms",
        "50",
        "--linger-ms",
        "120000",
    ];
    for s in sends {
        args.push("--send");
        args.push(s);
    }
    args.extend_from_slice(extra);
    lab.spawn("vm13", &args, "vm13-raw.log")
}

#[test]
fn a_vm_cannot_push_hostile_attributes_or_paths_upstream() {
    let (mut lab, t, tor) = lab_with_vm11();
    let unknown = RawAttribute {
        flags: 0xc0,
        type_code: 99,
        value: vec![0xde, 0xad, 0xbe, 0xef],
    };
    // Prefix, what it carries, and whether tor may see it.
    let cases: Vec<(&str, PathAttributes, &str)> = vec![
        (
            "10.3.0.101/32",
            PathAttributes {
                communities: vec![0xffff_ff01],
                ..attrs(seq(&[VM_AS]))
            },
            "no-export",
        ),
        (
            "10.3.0.102/32",
            PathAttributes {
                unknown: vec![unknown],
                ..attrs(seq(&[VM_AS]))
            },
            "unknown attribute",
        ),
        ("10.3.0.103/32", attrs(seq(&[VM_AS, 0])), "as-path-zero"),
        ("10.3.0.104/32", attrs(seq(&[64999, VM_AS])), "first-as"),
        (
            "10.3.0.105/32",
            attrs(seq(&[VM_AS, reference::HV_AS])),
            "as-path-loop",
        ),
        ("10.3.0.106/32", attrs(vec![]), "as-path-empty"),
        (
            "10.3.0.107/32",
            attrs(vec![
                AsSegment::ConfedSequence(vec![VM_AS]),
                AsSegment::Sequence(vec![VM_AS]),
            ]),
            "as-path-confed",
        ),
        (
            "10.3.0.109/32",
            PathAttributes {
                communities: vec![0xffff_ff02],
                ..attrs(seq(&[VM_AS]))
            },
            "no-advertise",
        ),
        // Sent last: once tor has it, tapir has handled all the others.
        ("10.3.0.110/32", attrs(seq(&[VM_AS])), "clean"),
    ];
    let sends: Vec<String> = cases.iter().map(|(p, a, _)| update(p, a.clone())).collect();
    let raw = raw_speaker(&mut lab, &sends, &[]);

    let last = wait_for(WAIT, || {
        tor.route("10.3.0.110/32")
            .filter(|_| tor.route("10.3.0.1/32").is_some())
    });
    assert!(
        last.is_some(),
        "tor never got vm13's clean route and vm11's:\n{}\n{}\n{}",
        t.show(&["peers"]),
        t.show(&["routes"]),
        lab.all_logs()
    );
    let Tor::Bird(tor_bird) = &tor else {
        unreachable!()
    };
    for (prefix, _, what) in &cases {
        let at_tor = tor.route(prefix);
        let in_kernel = kernel_route(&lab, prefix);
        match *what {
            "clean" => {
                assert_eq!(at_tor.as_ref().unwrap().as_path, [reference::HV_AS]);
                assert!(in_kernel.is_some(), "{prefix}: not in hv1's kernel");
            }
            // Used on the hypervisor, never passed on.
            "no-export" | "no-advertise" => {
                assert!(
                    at_tor.is_none(),
                    "{prefix} ({what}) reached tor: {at_tor:?}"
                );
                assert!(
                    in_kernel.as_deref().is_some_and(|r| r.contains("tap13")),
                    "{prefix} ({what}): not in hv1's kernel via tap13: {in_kernel:?}"
                );
            }
            // The route goes upstream, the attribute does not.
            "unknown attribute" => {
                assert!(at_tor.is_some(), "{prefix}: not at tor");
                let all = tor_bird.route(prefix).unwrap();
                // BIRD shows it as `BGP.63 [t]: de ad be ef`.
                assert!(
                    !all.contains("BGP.63") && !all.contains("de ad be ef"),
                    "{prefix}: the attribute reached tor:\n{all}"
                );
            }
            // Refused: treated as withdrawn, shown with the reason.
            kind => {
                assert!(
                    at_tor.is_none(),
                    "{prefix} ({what}) reached tor: {at_tor:?}"
                );
                assert!(
                    in_kernel.is_none(),
                    "{prefix} ({what}) in hv1's kernel: {in_kernel:?}"
                );
                let r = t.routes_for(prefix);
                assert!(
                    r.iter()
                        .any(|r| r["accepted"] == false && r["peer"] == "tap13"),
                    "{prefix}: {r:?}"
                );
                let refused = t.json("peers");
                let tap13 = refused
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "tap13" && p["state"] == "Established")
                    .unwrap_or_else(|| panic!("no session with vm13: {refused}"));
                assert!(
                    tap13["rejections"][kind].as_u64() == Some(1),
                    "{kind}: {tap13}"
                );
            }
        }
    }
    // Nothing of this cost vm11 or tor anything.
    let rec = tor.route("10.3.0.1/32").expect("vm11's route at tor");
    assert_eq!(rec.as_path, [reference::HV_AS]);
    assert!(
        rec.communities.contains(&"64612:100".to_string()),
        "{rec:?}"
    );
    lab.stop(raw);
}

/// FRR's view of hv1 at tor: its BFD session's state and uptime, and how
/// often its BGP session with hv1 dropped.
fn frr_view(frr: &lab::frr::Frr) -> Option<(String, u64, u64, String)> {
    let bfd = frr.json("show bfd peers json");
    let p = bfd
        .as_array()?
        .iter()
        .find(|p| p["peer"] == "10.192.21.6")?
        .clone();
    let bgp = frr.json("show bgp neighbors 10.192.21.6 json");
    let n = &bgp["10.192.21.6"];
    Some((
        p["status"].as_str()?.to_string(),
        p["uptime"].as_u64()?,
        n["connectionsDropped"].as_u64()?,
        n["bgpState"].as_str()?.to_string(),
    ))
}

#[test]
fn a_vm_forging_the_tors_bfd_packets_moves_nothing() {
    let mut lab = reference::standard(&[13]);
    let tor = tor::start_with(&mut lab, tor::Kind::Frr, true);
    let Tor::Frr(frr) = &tor else { unreachable!() };
    // The worst case: hv1 does not filter by reverse path, and vm13
    // sends from tor's address (its own, as far as its kernel knows).
    lab.exec("hv1", &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
    lab.addr("vm13", "lo", &format!("{}/32", reference::TOR_V4));
    let cfg = std::fs::read_to_string(example()).unwrap().replacen(
        "families = [\"ipv4\"]\n",
        "families = [\"ipv4\"]\nbfd = true\n",
        1,
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let up = wait_for(WAIT, || {
        frr_view(frr).filter(|v| v.0 == "up" && v.3 == "Established")
    });
    let Some((_, _, dropped, _)) = up else {
        panic!(
            "BFD or BGP with tor not up:\n{}\n{}\n{}",
            frr.vtysh("show bfd peers"),
            t.show(&["bfd"]),
            lab.all_logs()
        );
    };
    // The forger knows both discriminators (the worst case: they are
    // sequential, so a VM with a BFD session of its own can guess ours).
    let ours = t.json("bfd");
    let s = ours
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["peer"] == reference::TOR_V4)
        .unwrap_or_else(|| panic!("{ours}"))
        .clone();
    let (local, remote) = (
        s["local_discriminator"].as_u64().unwrap(),
        s["remote_discriminator"].as_u64().unwrap(),
    );
    let started = std::time::Instant::now();
    // Down and AdminDown, to the gateway and to hv1's uplink address, to
    // the single-hop and the multihop port, as a stranger and as tor.
    for _ in 0..5 {
        for to in [GATEWAY_V4, "10.192.21.6"] {
            for port in [3784, 4784] {
                for (my, your, state) in [(4242, 0, 1), (4242, 0, 0), (remote, local, 1)] {
                    let forged = lab::BfdPacket {
                        from: reference::TOR_V4,
                        to,
                        ttl: 255,
                        my: my as u32,
                        your: your as u32,
                        state,
                        port,
                    };
                    lab.send_bfd(Path::new(TAPIR), "vm13", &forged);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Long enough for a redirected or downed session to be seen at tor
    // (3 x 300 ms) and for BGP to notice.
    std::thread::sleep(Duration::from_secs(3));
    // A dynamic neighbor that dropped may be gone from FRR altogether.
    let after = frr_view(frr).unwrap_or_default();
    assert_eq!(
        (after.0.as_str(), after.3.as_str(), after.2),
        ("up", "Established", dropped),
        "tor's BFD or BGP session with hv1 moved:\n{}\n{}",
        frr.vtysh("show bfd peers"),
        lab.all_logs()
    );
    assert!(
        after.1 + 1 >= started.elapsed().as_secs(),
        "tor's BFD session restarted (up {} s, {:?} since the forgeries began)",
        after.1,
        started.elapsed()
    );
    // tor's operator takes BFD out of service (AdminDown, RFC 5882 §3.2):
    // not a failure, so BGP stays.
    frr.configure(&["bfd", "peer 10.192.21.6", "shutdown"]);
    let admin = wait_for(WAIT, || {
        let v = frr.json("show bfd peers json");
        let p = v
            .as_array()?
            .iter()
            .find(|p| p["peer"] == "10.192.21.6")?
            .clone();
        (p["status"] != "up").then_some(p)
    });
    assert!(admin.is_some(), "{}", frr.vtysh("show bfd peers"));
    std::thread::sleep(Duration::from_secs(3));
    let bgp = frr.json("show bgp neighbors 10.192.21.6 json");
    assert_eq!(
        (
            bgp["10.192.21.6"]["bgpState"].as_str(),
            bgp["10.192.21.6"]["connectionsDropped"].as_u64()
        ),
        (Some("Established"), Some(dropped)),
        "BGP went with BFD's AdminDown:\n{}",
        lab.all_logs()
    );
}

#[test]
fn a_vm_that_floods_route_refresh_and_never_reads_costs_little() {
    let (mut lab, t, tor) = lab_with_vm11();
    let up = wait_for(WAIT, || tor.route("10.3.0.1/32"));
    assert!(up.is_some(), "vm11's route never reached tor");
    std::thread::sleep(Duration::from_secs(1));
    let before = Lab::rss_kib(t.pid).expect("tapir's RSS");
    let refresh = bgp::Message::RouteRefresh(bgp::message::RouteRefresh {
        family: bgp::AfiSafi::IPV4_UNICAST,
        subtype: 0,
    })
    .encode(&Context::modern());
    let n = 200_000;
    let pid = raw_speaker(
        &mut lab,
        &[hexs(&refresh)],
        &["--pause-ms", "0", "--no-read", "--repeat", &n.to_string()],
    );
    // 200,000 requests are 4.6 MB: sent within a second or two. tapir's
    // memory is read while they arrive and after.
    let mut peak = before;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(Lab::rss_kib(t.pid).expect("tapir's RSS"));
    }
    eprintln!("tapir RSS {before} KiB before, {peak} KiB at most during {n} ROUTE-REFRESHes");
    assert!(
        peak < before + 2048,
        "tapir grew from {before} to {peak} KiB for {n} ROUTE-REFRESHes it could not send"
    );
    // tor and vm11 noticed nothing.
    let r = tor.route("10.3.0.1/32").expect("vm11's route at tor");
    assert_eq!(r.as_path, [reference::HV_AS]);
    assert_eq!(t.peer_state("recdns1001").as_deref(), Some("Established"));
    lab.stop(pid);
}

#[test]
fn forged_echo_replies_from_a_vm_grow_nothing_and_stall_nothing() {
    let (mut lab, t, tor) = lab_with_vm11();
    assert!(
        wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some(),
        "vm11's route never reached tor"
    );
    let before = Lab::rss_kib(t.pid).expect("tapir's RSS");
    // 50,000 echo replies from as many made-up link-local addresses, every
    // sequence number tried, 10,000 a second.
    let flood = lab::tool(Path::new(TAPIR), "echo-reply-flood");
    let o = lab.exec(
        "vm13",
        &[
            flood.to_str().unwrap(),
            "eth0",
            reference::GATEWAY_LL,
            "50000",
            "10000",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "50000", "{o:?}");
    // hv1 tries no sessions with the made-up addresses beyond the tap's
    // limit (max-sessions-per-interface, 8).
    let ss = lab.exec("hv1", &["ss", "-tanH"]);
    let forged = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains("fe80::dead:"))
        .count();
    assert!(forged <= 8, "{forged} connections to made-up addresses");
    // A VM that comes now is served as before: its route reaches tor.
    reference::add_vm(&mut lab, "hv1", 14);
    reference::vm_bird(&mut lab, 14, &["10.3.0.14/32"]);
    let r = wait_for(WAIT, || tor.route("10.3.0.14/32"));
    assert!(
        r.is_some(),
        "vm14's route did not reach tor after the flood:\n{}",
        lab.all_logs()
    );
    // Memory once all is handled: a neighbour per made-up address (and
    // the work to weigh it) was 3.2 MiB here before replies were matched
    // to our requests; vm14's session costs little.
    let after = Lab::rss_kib(t.pid).expect("tapir's RSS");
    eprintln!("tapir RSS {before} KiB before 50,000 forged echo replies, {after} KiB after");
    assert!(
        after < before + 1536,
        "tapir grew from {before} to {after} KiB"
    );
    let rec = tor.route("10.3.0.1/32").expect("vm11's route at tor");
    assert_eq!(rec.as_path, [reference::HV_AS]);
    assert_eq!(t.peer_state("recdns1001").as_deref(), Some("Established"));
}

/// The registrations in hv1's state file, by name.
fn registered(lab: &Lab) -> Vec<String> {
    let f = lab.dir().join("hv1/state/vms.json");
    let text = std::fs::read_to_string(f).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_new_vm_on_a_reused_tap_inherits_no_registration() {
    let mut lab = reference::standard(&[13]);
    let tor = tor::start(&mut lab, tor::Kind::Bird);
    let cfg = std::fs::read_to_string(example()).unwrap().replacen(
        "state-dir = \"/var/lib/tapir\"\n",
        "state-dir = \"/var/lib/tapir\"\nregistration-grace = 16\n",
        1,
    );
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    // The ifup hook registers VM "old" on tap13 with its prefix.
    let (ok, _, err) = t.cli(&[
        "vm",
        "add",
        "old",
        "--interface",
        "tap13",
        "--address",
        "10.192.24.13",
        "--asn",
        "64613",
        "--prefix",
        "10.3.0.50/32",
    ]);
    assert!(ok, "{err}");
    assert_eq!(registered(&lab), ["old"]);
    // Its NIC is plugged again (the same VM): the registration stays past
    // the grace period.
    reference::unplug(&mut lab, "hv1", "tap13");
    reference::plug(&mut lab, "hv1", "tap13", 13, 13);
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(registered(&lab), ["old"]);

    // The node loses "old" without its ifdown hook; a new VM, vm15, gets
    // tap13 and announces old's prefix and one the group filter allows.
    reference::unplug(&mut lab, "hv1", "tap13");
    lab.add_host("vm15");
    reference::plug(&mut lab, "hv1", "tap13", 15, 15);
    reference::vm_bird(&mut lab, 15, &["10.3.0.50/32", "10.3.0.51/32"]);
    // Before: vm15 took old's entry by the tap's name, so 10.3.0.51/32
    // was refused as not old's and 10.3.0.50/32 accepted.
    let served = wait_for(WAIT, || tor.route("10.3.0.51/32"));
    assert!(
        served.is_some(),
        "vm15 not served as a VM of its own:\n{}\n{}",
        t.show(&["routes"]),
        lab.all_logs()
    );
    // While old's registration lasts (16 s from its tap's removal; vm15
    // is served within about 3 to 7: BIRD's connect delay is 5 s), its
    // prefix is old's alone.
    assert_eq!(registered(&lab), ["old"], "dropped too soon for this test");
    assert!(
        tor.route("10.3.0.50/32").is_none() && kernel_route(&lab, "10.3.0.50/32").is_none(),
        "old's prefix reached tor or hv1's kernel via vm15"
    );
    let r = t.routes_for("10.3.0.50/32");
    assert!(
        !r.is_empty() && r.iter().all(|r| r["accepted"] == false),
        "vm15 inherited old's prefix: {r:?}"
    );
    // Once the grace period is over, the registration is gone; the prefix
    // is nobody's, and the group filter lets vm15 have it.
    let gone = wait_for(Duration::from_secs(40), || {
        registered(&lab).is_empty().then_some(())
    });
    assert!(gone.is_some(), "registration kept: {:?}", registered(&lab));
    let r = wait_for(WAIT, || tor.route("10.3.0.50/32"));
    assert!(r.is_some(), "{}", t.show(&["routes"]));
}

/// An anycast prefix that two VMs on hv1 announce: vm12 (BIRD) plainly,
/// vm13 (raw) with NO_EXPORT and the lower router ID, so that its path
/// would be best. tor keeps the prefix from hv1 (vm12's path), and hv1's
/// kernel sends it to vm12.
#[test]
fn a_vm_cannot_take_a_shared_prefix_off_tor_with_no_export() {
    let mut lab = reference::standard(&[12, 13]);
    let tor = tor::start(&mut lab, tor::Kind::Bird);
    let prefix = "10.3.0.53/32";
    reference::vm_bird(&mut lab, 12, &[prefix]);
    let t = lab.tapir("hv1", Path::new(TAPIR), &example());
    let r = wait_for(WAIT, || tor.route(prefix));
    assert!(r.is_some(), "{}", lab.all_logs());
    let no_export = update(
        prefix,
        PathAttributes {
            communities: vec![0xffff_ff01],
            med: Some(0),
            ..attrs(seq(&[VM_AS]))
        },
    );
    raw_speaker(&mut lab, &[no_export], &["--id", "10.0.0.1"]);
    let both = wait_for(WAIT, || {
        let r = t.routes_for(prefix);
        (r.len() == 2 && r.iter().all(|r| r["accepted"] == true)).then_some(())
    });
    assert!(
        both.is_some(),
        "{}\n{}",
        t.show(&["routes"]),
        lab.all_logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    // Before: vm13's path won, and its NO_EXPORT took the prefix off tor.
    let r = tor.route(prefix);
    assert!(
        r.as_ref()
            .is_some_and(|r| !r.communities.contains(&"65535:65281".to_string())),
        "tor: {r:?}\n{}",
        t.show(&["rib"])
    );
    let k = kernel_route(&lab, prefix).unwrap_or_default();
    assert!(k.contains("tap12"), "hv1's kernel: {k}");
}

/// A group filter written too wide (it lets VMs announce the uplink's
/// subnet): vm13 announces tor's own address and a prefix covering it.
/// Neither reaches hv1's kernel, which still reaches tor over the uplink,
/// nor tor; both are refused as covering a neighbor.
#[test]
fn no_vm_route_covers_the_tors_address() {
    let mut lab = reference::standard(&[13]);
    let tor = tor::start(&mut lab, tor::Kind::Bird);
    let cfg = std::fs::read_to_string(example()).unwrap().replace(
        r#"BGP-FROM-VMS = ["10.3.0.0/24{32,32}","#,
        r#"BGP-FROM-VMS = ["10.3.0.0/24{32,32}", "10.192.21.0/24{24,32}","#,
    );
    assert!(cfg.contains("10.192.21.0/24{24,32}"));
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let sends: Vec<String> = ["10.192.21.1/32", "10.192.21.0/25", "10.3.0.7/32"]
        .iter()
        .map(|p| update(p, attrs(seq(&[VM_AS]))))
        .collect();
    raw_speaker(&mut lab, &sends, &[]);
    // The control: vm13's ordinary route arrives.
    let r = wait_for(WAIT, || tor.route("10.3.0.7/32"));
    assert!(r.is_some(), "{}\n{}", t.show(&["routes"]), lab.all_logs());
    for p in ["10.192.21.1/32", "10.192.21.0/25"] {
        let r = t.routes_for(p);
        assert!(
            r.len() == 1 && r[0]["accepted"] == false,
            "{p}: {r:?}\n{}",
            t.show(&["routes"])
        );
        assert!(r[0].to_string().contains("covers neighbor"), "{r:?}");
        assert_eq!(kernel_route(&lab, p), None, "{p} in hv1's kernel");
    }
    let o = lab.ip("hv1", &["route", "get", reference::TOR_V4]);
    let get = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        !get.contains("tap13"),
        "hv1 reaches tor through vm13: {get}"
    );
}

/// The MAC of `host`'s eth0.
fn mac_of(lab: &Lab, host: &str) -> String {
    let o = lab.ip(host, &["-br", "link", "show", "eth0"]);
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    s.split_whitespace().nth(2).unwrap_or_default().to_string()
}

/// A registration with the VM's MAC (as the Ganeti ifup hook makes it)
/// holds while the kernel sees that MAC behind the VM's address. After a
/// missed ifdown, a new instance given the same tap name and the same
/// address, but its own NIC, inherits nothing.
#[test]
fn a_new_vm_with_a_reused_address_inherits_no_registration() {
    let mut lab = reference::standard(&[13]);
    let tor = tor::start(&mut lab, tor::Kind::Bird);
    let cfg = lab.write(
        "hv1/tapir.toml",
        &std::fs::read_to_string(example()).unwrap(),
    );
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let old_mac = mac_of(&lab, "vm13");
    let (ok, _, err) = t.cli(&[
        "vm",
        "add",
        "old",
        "--interface",
        "tap13",
        "--address",
        &reference::vm_v4(13),
        "--mac",
        &old_mac,
        "--asn",
        "64613",
        "--prefix",
        "10.3.0.50/32",
    ]);
    assert!(ok, "{err}");
    let _bird = reference::vm_bird(&mut lab, 13, &["10.3.0.50/32", "10.3.0.51/32"]);
    // The registered VM: its prefix at tor, the other not its own.
    let r = wait_for(WAIT, || tor.route("10.3.0.50/32"));
    assert!(r.is_some(), "{}\n{}", t.show(&["routes"]), lab.all_logs());
    assert!(tor.route("10.3.0.51/32").is_none());

    // The node loses "old" without its ifdown hook; a new instance gets
    // tap13 and the same address, with a NIC of its own, and the same
    // BGP config.
    reference::unplug(&mut lab, "hv1", "tap13");
    lab.ip(
        "vm13",
        &["link", "set", "eth0", "address", "aa:00:00:00:0f:15"],
    );
    reference::plug(&mut lab, "hv1", "tap13", 13, 13);
    // Before: the entry followed the address, so the new instance got
    // old's prefix and not the one the group filter allows it.
    let served = wait_for(WAIT, || tor.route("10.3.0.51/32"));
    assert!(
        served.is_some(),
        "the new instance not served as a VM of its own:\n{}\n{}",
        t.show(&["routes"]),
        lab.all_logs()
    );
    assert_eq!(registered(&lab), ["old"]);
    assert!(
        tor.route("10.3.0.50/32").is_none() && kernel_route(&lab, "10.3.0.50/32").is_none(),
        "old's prefix reached tor or hv1's kernel via the new instance"
    );
    // The old NIC back (the same VM after all): its registration holds.
    reference::unplug(&mut lab, "hv1", "tap13");
    lab.ip("vm13", &["link", "set", "eth0", "address", &old_mac]);
    reference::plug(&mut lab, "hv1", "tap13", 13, 13);
    let back = wait_for(WAIT, || {
        (tor.route("10.3.0.50/32").is_some() && tor.route("10.3.0.51/32").is_none()).then_some(())
    });
    assert!(back.is_some(), "{}", t.show(&["routes"]));
}

#[test]
fn a_vm_cannot_flood_the_log() {
    let (mut lab, t, tor) = lab_with_vm11();
    // An UPDATE of 4 KiB: one route, and 1,349 ATOMIC_AGGREGATE
    // attributes, 1,348 of them duplicates, each a problem RFC 7606 says
    // to discard.
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&[0x40, 1, 1, 0]);
    body.extend_from_slice(&[0x40, 2, 6, 2, 1]);
    body.extend_from_slice(&VM_AS.to_be_bytes());
    body.extend_from_slice(&[0x40, 3, 4, 10, 192, 24, 13]);
    let dups = 1348;
    for _ in 0..=dups {
        body.extend_from_slice(&[0x40, 6, 0]);
    }
    let attrs_len = (body.len() - 4) as u16;
    body[2..4].copy_from_slice(&attrs_len.to_be_bytes());
    body.extend_from_slice(&[32, 10, 3, 0, 60]);
    let noisy = bgp::message::frame(2, &body);
    assert!((4090..=4096).contains(&noisy.len()), "{}", noisy.len());
    let mut sends = vec![hexs(&noisy); 5];
    sends.push(update("10.3.0.61/32", attrs(seq(&[VM_AS]))));
    let raw = raw_speaker(&mut lab, &sends, &[]);
    let done = wait_for(WAIT, || {
        tor.route("10.3.0.61/32")
            .filter(|_| tor.route("10.3.0.1/32").is_some())
    });
    assert!(done.is_some(), "{}", lab.all_logs());
    // The route itself is kept (the duplicates are discarded).
    assert!(tor.route("10.3.0.60/32").is_some());
    let log = lab.log(&t.log);
    let lines = log
        .lines()
        .filter(|l| l.contains("malformed attribute in UPDATE"))
        .count();
    eprintln!("{lines} log lines for {} malformed attributes", 5 * dups);
    assert!(
        lines <= tapir::log_budget::LINES as usize,
        "{lines} log lines for {} malformed attributes",
        5 * dups
    );
    // When the session ends, what was held back is counted in one line.
    lab.stop(raw);
    let said = wait_for(WAIT, || {
        lab.log(&t.log)
            .lines()
            .find(|l| l.contains("held back"))
            .map(str::to_string)
    });
    let said =
        said.unwrap_or_else(|| panic!("no count of what was held back:\n{}", lab.log(&t.log)));
    let held = 5 * dups - tapir::log_budget::LINES as usize;
    assert!(said.contains(&held.to_string()), "{said}");
}

/// vm13's OPEN: IPv4 and IPv6 unicast, and graceful restart with
/// `restart_time` for IPv4 only, Forwarding State as `forwarding`.
fn open_with_gr(restart_time: u16, forwarding: bool) -> String {
    use bgp::capability::{Capability, GracefulRestart, GracefulRestartFamily};
    let caps = vec![
        Capability::Multiprotocol(bgp::AfiSafi::IPV4_UNICAST),
        Capability::Multiprotocol(bgp::AfiSafi::IPV6_UNICAST),
        Capability::GracefulRestart(GracefulRestart {
            restarting: false,
            notification: false,
            restart_time,
            families: vec![GracefulRestartFamily {
                family: bgp::AfiSafi::IPV4_UNICAST,
                forwarding_preserved: forwarding,
            }],
        }),
    ];
    let id = reference::vm_v4(13).parse().unwrap();
    hexs(&bgp::Message::Open(bgp::Open::new(VM_AS, 90, id, caps)).encode(&Context::modern()))
}

#[test]
fn graceful_restart_keeps_only_what_the_vm_can_keep() {
    let (mut lab, t, tor) = lab_with_vm11();
    let v6 = hexs(
        &bgp::update::encode_announce(
            &attrs(seq(&[VM_AS])),
            NextHop::V6 {
                global: reference::vm_v6(13).parse().unwrap(),
                link_local: None,
            },
            &["2001:db8:3::70/128".parse().unwrap()],
            &Context::modern(),
        )[0],
    );
    let v4 = update("10.3.0.70/32", attrs(seq(&[VM_AS])));
    let raw = raw_speaker(
        &mut lab,
        &[v4, v6],
        &["--open-hex", &open_with_gr(120, true)],
    );
    let both = wait_for(WAIT, || {
        tor.route("10.3.0.70/32")
            .and(tor.route("2001:db8:3::70/128"))
    });
    assert!(
        both.is_some(),
        "{}\n{}",
        t.show(&["routes"]),
        lab.all_logs()
    );
    // The VM dies without a NOTIFICATION. Its capability lists IPv4 only:
    // the IPv6 route goes at once, the IPv4 one is kept, stale.
    lab.kill(raw);
    let v6_gone = wait_for(WAIT, || {
        tor.route("2001:db8:3::70/128").is_none().then_some(())
    });
    assert!(
        v6_gone.is_some(),
        "the IPv6 route was kept: {}",
        t.show(&["routes"])
    );
    assert!(tor.route("10.3.0.70/32").is_some(), "the IPv4 route went");
    assert!(kernel_route(&lab, "10.3.0.70/32").is_some());
    // It comes back without the Forwarding State bit (it lost its
    // forwarding state): the stale IPv4 route goes at once, without
    // waiting for its End-of-RIB or the restart time.
    let raw = raw_speaker(&mut lab, &[], &["--open-hex", &open_with_gr(120, false)]);
    let v4_gone = wait_for(WAIT, || tor.route("10.3.0.70/32").is_none().then_some(()));
    assert!(
        v4_gone.is_some(),
        "the stale IPv4 route was kept: {}",
        t.show(&["routes"])
    );
    assert!(kernel_route(&lab, "10.3.0.70/32").is_none());
    assert_eq!(t.peer_state("tap13").as_deref(), Some("Established"));
    lab.stop(raw);
}

#[test]
fn a_vms_restart_time_is_clamped_and_flaps_do_not_extend_it() {
    let mut lab = reference::standard(&[13]);
    let tor = tor::start(&mut lab, tor::Kind::Bird);
    let cfg =
        std::fs::read_to_string(example()).unwrap() + "\n[graceful-restart]\nhelper-max-time = 4\n";
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    // The VM asks for the longest restart time there is.
    let open = open_with_gr(4095, true);
    let v4 = update("10.3.0.71/32", attrs(seq(&[VM_AS])));
    let raw = raw_speaker(&mut lab, &[v4], &["--open-hex", &open]);
    assert!(
        wait_for(WAIT, || tor.route("10.3.0.71/32")).is_some(),
        "{}",
        lab.all_logs()
    );
    lab.kill(raw);
    std::thread::sleep(Duration::from_secs(1));
    assert!(tor.route("10.3.0.71/32").is_some(), "not kept as stale");
    // It comes back and goes again, three times, never announcing anew:
    // 5.5 s more, past the 4 s from the first time it went.
    for _ in 0..3 {
        let raw = raw_speaker(&mut lab, &[], &["--open-hex", &open]);
        std::thread::sleep(Duration::from_millis(1500));
        lab.kill(raw);
    }
    let gone = wait_for(Duration::from_secs(2), || {
        tor.route("10.3.0.71/32").is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "the stale route outlived helper-max-time from the first time down: {}",
        t.show(&["routes"])
    );
    assert!(kernel_route(&lab, "10.3.0.71/32").is_none());
}

#[test]
fn a_route_too_large_to_pass_on_is_withdrawn_upstream_not_left_stale() {
    let (mut lab, t, tor) = lab_with_vm11();
    let small = update("10.3.0.80/32", attrs(seq(&[VM_AS])));
    // The same route with as many communities as vm13's message holds:
    // with tor's community added it no longer fits in one.
    let with = |n: u32| PathAttributes {
        communities: (0..n).map(|c| (65000 << 16) | c).collect(),
        ..attrs(seq(&[VM_AS]))
    };
    let one_message = |n: u32| {
        bgp::update::encode_announce(
            &with(n),
            NextHop::V4(reference::vm_v4(13).parse().unwrap()),
            &["10.3.0.80/32".parse().unwrap()],
            &Context::modern(),
        )
        .len()
            == 1
    };
    let n = (900..1100).take_while(|n| one_message(*n)).last().unwrap();
    let big = update("10.3.0.80/32", with(n));
    let marker = update("10.3.0.81/32", attrs(seq(&[VM_AS])));
    // tor's session is up (it has vm11's route) before vm13 speaks; then
    // five seconds apart: tor has the small one before the big one comes.
    assert!(
        wait_for(WAIT, || tor.route("10.3.0.1/32")).is_some(),
        "{}",
        lab.all_logs()
    );
    let raw = raw_speaker(&mut lab, &[small, big, marker], &["--pause-ms", "5000"]);
    assert!(
        wait_for(Duration::from_secs(5), || tor.route("10.3.0.80/32")).is_some(),
        "{}",
        lab.all_logs()
    );
    // Once the marker is at tor, the big announcement was handled.
    assert!(
        wait_for(WAIT, || tor.route("10.3.0.81/32")).is_some(),
        "{}",
        lab.all_logs()
    );
    let at_tor = tor.route("10.3.0.80/32");
    assert!(
        at_tor.is_none(),
        "tor kept the route's previous version: {at_tor:?}\n{}",
        t.show(&["routes"])
    );
    // It is still the VM's route on the hypervisor.
    assert!(kernel_route(&lab, "10.3.0.80/32").is_some());
    lab.stop(raw);
}

#[test]
fn an_external_neighbor_without_export_gets_nothing() {
    let mut lab = reference::standard(&[11]);
    let tor = tor::start(&mut lab, tor::Kind::Bird);
    reference::vm_bird(&mut lab, 11, &["10.3.0.1/32"]);
    // The example, with tor-v4's export line taken out.
    let cfg = std::fs::read_to_string(example()).unwrap().replacen(
        "families = [\"ipv4\"]\nexport = \"TO-TOR\"\n",
        "families = [\"ipv4\"]\n",
        1,
    );
    assert!(!cfg.contains("families = [\"ipv4\"]\nexport"));
    let cfg = lab.write("hv1/tapir.toml", &cfg);
    let t = lab.tapir("hv1", Path::new(TAPIR), &cfg);
    let installed = wait_for(WAIT, || kernel_route(&lab, "10.3.0.1/32"));
    assert!(installed.is_some(), "{}", lab.all_logs());
    assert!(wait_for(WAIT, || (t.peer_state("tor-v4").as_deref()
        == Some("Established"))
    .then_some(()))
    .is_some());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        tor.route("10.3.0.1/32").is_none(),
        "tor got a route from a neighbor without export"
    );
    assert!(
        lab.log(&t.log).contains("no export policy"),
        "no warning in the log"
    );
}

//! A peer that sends malformed or unexpected bytes gets the NOTIFICATION the
//! RFCs call for (or treat-as-withdraw, RFC 7606), and nothing else is
//! affected: the daemon keeps running, the other session stays up and keeps
//! its routes, as the other peer (BIRD) sees it. Needs root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bgp::attribute::{AsPath, Origin, PathAttributes};
use bgp::{Context, Message, NextHop, Prefix};
use lab::reference::{self, HV_AS, TOR_AS, TOR_V4};
use lab::{wait_for, Lab};

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");

/// The raw peer binary of the lab crate, built next to tapir.
fn raw_peer() -> PathBuf {
    lab::tool(Path::new(TAPIR), "bgp-raw-peer")
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Bench {
    lab: Lab,
    tapir: lab::tapir::Tapir,
    tor: lab::bird::Bird,
    raw: PathBuf,
}

impl Bench {
    fn new() -> Bench {
        let mut lab = Lab::new();
        reference::build(&mut lab, &["hv1"]);
        // A host for the misbehaving peer, on its own link to hv1.
        lab.add_host("raw");
        lab.link("hv1", "raw0", "raw", "eth0");
        lab.addr("hv1", "raw0", "10.99.0.1/24");
        lab.addr("raw", "eth0", "10.99.0.2/24");
        lab.up("hv1", "raw0");
        lab.up("raw", "eth0");
        let tor = lab.bird(
            "tor",
            &format!(
                "router id {TOR_V4};\nprotocol device {{ }}\n\
                 protocol bgp hv {{ local {TOR_V4} as {TOR_AS}; neighbor 10.192.21.6 as {HV_AS};\n  \
                 ipv4 {{ import all; export none; }}; }}\n"
            ),
        );
        let cfg = lab.write(
            "hv1/tapir.toml",
            &format!(
                r#"router-id = "10.192.21.6"
local-as = {HV_AS}
announce = ["10.3.0.1/32"]

[[neighbor]]
name = "tor"
address = "{TOR_V4}"
remote-as = {TOR_AS}

[[neighbor]]
name = "raw"
address = "10.99.0.2"
remote-as = 65099
passive = true
connect-retry = 1
"#
            ),
        );
        let tapir = lab.tapir("hv1", Path::new(TAPIR), &cfg);
        let b = Bench {
            lab,
            tapir,
            tor,
            raw: raw_peer(),
        };
        b.assert_tor_unaffected();
        b
    }

    /// Runs the raw peer with these arguments; returns the lines it printed.
    fn raw(&self, args: &[&str]) -> Vec<String> {
        let raw = self.raw.to_string_lossy().into_owned();
        let mut v = vec![raw.as_str(), "--connect", "10.99.0.1:179"];
        v.extend_from_slice(args);
        let out = self.lab.exec("raw", &v);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// tor's BIRD still has its session and tapir's route; tapir still runs.
    fn assert_tor_unaffected(&self) {
        let ok = wait_for(Duration::from_secs(20), || {
            (self.tor.is_established("hv") && self.tor.route("10.3.0.1/32").is_some()).then_some(())
        });
        assert!(
            ok.is_some(),
            "tor lost its session or route:\n{}",
            self.lab.all_logs()
        );
        assert_eq!(self.tapir.peer_state("tor").as_deref(), Some("Established"));
    }
}

fn update(attrs: &PathAttributes, prefix: &str) -> Vec<u8> {
    let p: Prefix = prefix.parse().unwrap();
    bgp::update::encode_announce(
        attrs,
        NextHop::V4("10.99.0.2".parse().unwrap()),
        &[p],
        &Context::modern(),
    )
    .remove(0)
}

fn good_attrs() -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::from_sequence([65099])),
        ..Default::default()
    }
}

#[test]
fn malformed_input_gets_the_right_notification_and_harms_nothing_else() {
    let b = Bench::new();
    let keepalive = Message::Keepalive.encode(&Context::default());

    // A broken marker: Message Header Error / Connection Not Synchronized.
    let mut bad_marker = keepalive.clone();
    bad_marker[0] = 0;
    let out = b.raw(&["--send", &hexs(&bad_marker)]);
    assert!(out.contains(&"NOTIFICATION 1 1 ".to_string()), "{out:?}");
    b.assert_tor_unaffected();

    // A KEEPALIVE with a body: Bad Message Length, with the length as data.
    let mut long_keepalive = bgp::message::frame(4, &[0]);
    long_keepalive[17] = 20;
    let out = b.raw(&["--send", &hexs(&long_keepalive)]);
    assert!(
        out.contains(&"NOTIFICATION 1 2 0014".to_string()),
        "{out:?}"
    );

    // An unknown message type: Bad Message Type, with the type as data.
    let out = b.raw(&["--send", &hexs(&bgp::message::frame(9, &[]))]);
    assert!(out.contains(&"NOTIFICATION 1 3 09".to_string()), "{out:?}");

    // Withdrawn Routes Length past the end: Malformed Attribute List.
    let out = b.raw(&["--send", &hexs(&bgp::message::frame(2, &[0, 50, 0, 0]))]);
    assert!(out.contains(&"NOTIFICATION 3 1 ".to_string()), "{out:?}");

    // An unrecognised well-known attribute: the attribute comes back as data.
    let body = [0, 0, 0, 4, 0x40, 99, 1, 7];
    let out = b.raw(&["--send", &hexs(&bgp::message::frame(2, &body))]);
    assert!(
        out.contains(&"NOTIFICATION 3 2 40630107".to_string()),
        "{out:?}"
    );

    // A prefix longer than 32 bits in the NLRI: Invalid Network Field.
    let mut bad_nlri = update(&good_attrs(), "10.66.0.0/24");
    let n = bad_nlri.len();
    bad_nlri[n - 4] = 33;
    let out = b.raw(&["--send", &hexs(&bad_nlri)]);
    assert!(out.contains(&"NOTIFICATION 3 10 ".to_string()), "{out:?}");

    // A second OPEN once established: FSM error in Established.
    let open = bgp::Message::Open(bgp::Open::new(
        65099,
        90,
        "10.99.0.2".parse().unwrap(),
        vec![],
    ))
    .encode(&Context::default());
    let out = b.raw(&["--send", &hexs(&open)]);
    assert!(out.contains(&"NOTIFICATION 5 3 ".to_string()), "{out:?}");

    // OPEN with version 3: Unsupported Version Number, data = 4.
    let mut v3 = open.clone();
    v3[19] = 3;
    let out = b.raw(&["--open-hex", &hexs(&v3)]);
    assert!(
        out.contains(&"NOTIFICATION 2 1 0004".to_string()),
        "{out:?}"
    );

    // The wrong AS: Bad Peer AS, data = the AS received.
    let out = b.raw(&["--as", "65098"]);
    assert!(
        out.contains(&"NOTIFICATION 2 2 fe4a".to_string()),
        "{out:?}"
    );

    // Hold time 1: Unacceptable Hold Time.
    let mut hold1 = open.clone();
    hold1[22..24].copy_from_slice(&1u16.to_be_bytes());
    let out = b.raw(&["--open-hex", &hexs(&hold1)]);
    assert!(out.contains(&"NOTIFICATION 2 6 ".to_string()), "{out:?}");

    b.assert_tor_unaffected();
    let peers = b.tapir.json("peers");
    let raw = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "raw")
        .unwrap();
    assert!(
        raw["last_error"].as_str().unwrap().contains("(2/6)"),
        "{raw}"
    );
}

#[test]
fn malformed_attribute_is_treat_as_withdraw_without_reset() {
    let b = Bench::new();
    let good = update(&good_attrs(), "10.66.0.0/24");
    // The same prefix again with an ORIGIN of length 2: RFC 7606 §7.1 says
    // treat-as-withdraw, and the session stays up.
    let mut bad = good.clone();
    // Locate ORIGIN (flags 0x40, type 1, length 1) and make its length 2 by
    // swallowing the next octet into it; lengths stay consistent.
    let i = bad.windows(3).position(|w| w == [0x40, 1, 1]).unwrap();
    bad[i + 2] = 2;
    let mut attrs_len = u16::from_be_bytes([bad[21], bad[22]]);
    attrs_len += 1;
    bad[21..23].copy_from_slice(&attrs_len.to_be_bytes());
    bad.insert(i + 4, 0);
    let total = bad.len() as u16;
    bad[16..18].copy_from_slice(&total.to_be_bytes());

    // The raw peer announces, waits a second, sends the malformed copy and
    // lingers; meanwhile tapir's view is read.
    let lines = std::thread::scope(|s| {
        let h = s.spawn(|| {
            b.raw(&[
                "--send",
                &hexs(&good),
                "--send",
                &hexs(&bad),
                "--pause-ms",
                "1000",
                "--linger-ms",
                "4000",
            ])
        });
        let seen = wait_for(Duration::from_secs(3), || {
            (!b.tapir.routes_for("10.66.0.0/24").is_empty()).then_some(())
        });
        assert!(seen.is_some(), "the good announcement never arrived");
        let gone = wait_for(Duration::from_secs(4), || {
            b.tapir.routes_for("10.66.0.0/24").is_empty().then_some(())
        });
        assert!(gone.is_some(), "treat-as-withdraw did not remove the route");
        assert_eq!(b.tapir.peer_state("raw").as_deref(), Some("Established"));
        h.join().unwrap()
    });
    assert!(
        !lines.iter().any(|l| l.starts_with("NOTIFICATION")),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("LINGER"),
        "{lines:?}"
    );
    b.assert_tor_unaffected();
}

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
        let mut lab = reference::standard(&[]);
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
export = "OURS"

[[neighbor]]
name = "raw"
address = "10.99.0.2"
remote-as = 65099
passive = true
connect-retry = 1

[policy.OURS]
default = "reject"

[[policy.OURS.term]]
match = {{ source = "local" }}
action = "accept"
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

    // The raw peer announces, waits two seconds (the good route is seen
    // meanwhile), sends the malformed copy and lingers; meanwhile
    // tapir's view is read.
    let lines = std::thread::scope(|s| {
        let h = s.spawn(|| {
            b.raw(&[
                "--send",
                &hexs(&good),
                "--send",
                &hexs(&bad),
                "--pause-ms",
                "2000",
                "--linger-ms",
                "4000",
            ])
        });
        let seen = wait_for(Duration::from_secs(4), || {
            (!b.tapir.routes_for("10.66.0.0/24").is_empty()).then_some(())
        });
        assert!(seen.is_some(), "the good announcement never arrived");
        let gone = wait_for(Duration::from_secs(5), || {
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

// ---- The malformed-input suite: one lab per class, in parallel. ----

const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
/// AS_PATH: one AS_SEQUENCE of 65099 (4-octet ASNs, as negotiated).
const AS_PATH_65099: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfe, 0x4b];
const NEXT_HOP_RAW: [u8; 7] = [0x40, 3, 4, 10, 99, 0, 2];
const NLRI_10_66: [u8; 4] = [24, 10, 66, 0];

/// An UPDATE with these path attributes (raw) and NLRI.
fn raw_update(attrs: &[&[u8]], nlri: &[u8]) -> Vec<u8> {
    let attrs: Vec<u8> = attrs.concat();
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(nlri);
    bgp::message::frame(2, &body)
}

/// The raw peer announces 10.66.0.0/24 well formed, then sends `bad`.
/// Returns whether tapir still has the route afterwards, having checked
/// that the session stayed up and no NOTIFICATION came.
fn after_good_then(bad: &[u8]) -> bool {
    let b = Bench::new();
    let good = raw_update(&[&ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW], &NLRI_10_66);
    // A marker after the bad message: once it is in, the bad one was read.
    let marker = raw_update(
        &[&ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW],
        &[24, 10, 77, 0],
    );
    let (lines, kept) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            b.raw(&[
                "--send",
                &hexs(&good),
                "--send",
                &hexs(bad),
                "--send",
                &hexs(&marker),
                "--pause-ms",
                "300",
                "--linger-ms",
                "3000",
            ])
        });
        let marked = wait_for(Duration::from_secs(5), || {
            (!b.tapir.routes_for("10.77.0.0/24").is_empty()).then_some(())
        });
        assert!(marked.is_some(), "the marker never arrived");
        let kept = !b.tapir.routes_for("10.66.0.0/24").is_empty();
        assert_eq!(b.tapir.peer_state("raw").as_deref(), Some("Established"));
        (h.join().unwrap(), kept)
    });
    assert!(
        !lines.iter().any(|l| l.starts_with("NOTIFICATION")),
        "{lines:?}"
    );
    b.assert_tor_unaffected();
    kept
}

/// The raw peer sends `args`; the NOTIFICATION it gets must start with
/// `expect` ("CODE SUBCODE [DATA]"); tor is unaffected.
fn resets_with(args: &[&str], expect: &str) {
    let b = Bench::new();
    let out = b.raw(args);
    assert!(
        out.iter()
            .any(|l| l.starts_with(&format!("NOTIFICATION {expect}"))),
        "expected NOTIFICATION {expect}: {out:?}"
    );
    b.assert_tor_unaffected();
}

// RFC 7606 treat-as-withdraw: the route goes, the session stays.

#[test]
fn taw_missing_origin() {
    let bad = raw_update(&[&AS_PATH_65099, &NEXT_HOP_RAW], &NLRI_10_66);
    assert!(!after_good_then(&bad));
}

#[test]
fn taw_origin_value_out_of_range() {
    let bad = raw_update(
        &[&[0x40, 1, 1, 5], &AS_PATH_65099, &NEXT_HOP_RAW],
        &NLRI_10_66,
    );
    assert!(!after_good_then(&bad));
}

#[test]
fn taw_as_path_segment_overruns() {
    // The segment says 3 ASNs; 1 follows.
    let path = [0x40, 2, 6, 2, 3, 0, 0, 0xfe, 0x4b];
    let bad = raw_update(&[&ORIGIN_IGP, &path, &NEXT_HOP_RAW], &NLRI_10_66);
    assert!(!after_good_then(&bad));
}

#[test]
fn taw_next_hop_of_the_wrong_length() {
    let nh = [0x40, 3, 5, 10, 99, 0, 2, 0];
    let bad = raw_update(&[&ORIGIN_IGP, &AS_PATH_65099, &nh], &NLRI_10_66);
    assert!(!after_good_then(&bad));
}

#[test]
fn taw_well_known_attribute_flagged_optional() {
    let origin = [0xc0, 1, 1, 0];
    let bad = raw_update(&[&origin, &AS_PATH_65099, &NEXT_HOP_RAW], &NLRI_10_66);
    assert!(!after_good_then(&bad));
}

#[test]
fn taw_attribute_length_overruns_the_list() {
    // The last attribute claims 200 bytes; the list ends after 4.
    let community = [0xc0, 8, 200, 0, 1, 0, 1];
    let bad = raw_update(
        &[&ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW, &community],
        &NLRI_10_66,
    );
    assert!(!after_good_then(&bad));
}

// RFC 7606 §3.g: a repeated attribute is dropped, the route stands.

#[test]
fn duplicate_attribute_is_discarded_and_the_route_kept() {
    let bad = raw_update(
        &[&ORIGIN_IGP, &ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW],
        &NLRI_10_66,
    );
    assert!(after_good_then(&bad));
}

// Session reset, with the NOTIFICATION the RFCs give.

#[test]
fn reset_header_length_below_19() {
    let mut m = Message::Keepalive.encode(&Context::default());
    m[16..18].copy_from_slice(&18u16.to_be_bytes());
    resets_with(&["--send", &hexs(&m)], "1 2 0012");
}

#[test]
fn reset_header_length_above_4096() {
    let mut m = bgp::message::frame(2, &[0, 0, 0, 0]);
    m[16..18].copy_from_slice(&5000u16.to_be_bytes());
    resets_with(&["--send", &hexs(&m)], "1 2 1388");
}

#[test]
fn reset_duplicate_mp_reach() {
    // Two MP_REACH_NLRI (IPv4 unicast, next hop 10.99.0.2, no NLRI).
    let mp = [0x80, 14, 9, 0, 1, 1, 4, 10, 99, 0, 2, 0];
    let bad = raw_update(&[&ORIGIN_IGP, &AS_PATH_65099, &mp, &mp], &[]);
    resets_with(&["--send", &hexs(&bad)], "3 1");
}

#[test]
fn reset_truncated_mp_reach() {
    // MP_REACH_NLRI for IPv6 announcing a 16-byte next hop with 3 bytes.
    let mp = [0x80, 14, 7, 0, 2, 1, 16, 0x20, 0x01, 0x0d];
    let bad = raw_update(&[&ORIGIN_IGP, &AS_PATH_65099, &mp], &[]);
    resets_with(&["--send", &hexs(&bad)], "3 9");
}

#[test]
fn reset_open_with_bgp_identifier_zero() {
    let open = bgp::Message::Open(bgp::Open::new(
        65099,
        90,
        "0.0.0.0".parse().unwrap(),
        vec![],
    ))
    .encode(&Context::default());
    resets_with(&["--open-hex", &hexs(&open)], "2 3");
}

#[test]
fn reset_open_with_an_unknown_optional_parameter() {
    // Version 4, AS 65099, hold 90, id 10.99.0.2, and one optional
    // parameter of type 99 (RFC 5492 knows only type 2, capabilities).
    let mut body = vec![4];
    body.extend_from_slice(&65099u16.to_be_bytes());
    body.extend_from_slice(&90u16.to_be_bytes());
    body.extend_from_slice(&[10, 99, 0, 2]);
    body.extend_from_slice(&[3, 99, 1, 0]);
    let open = bgp::message::frame(1, &body);
    resets_with(&["--open-hex", &hexs(&open)], "2 4");
}

#[test]
fn reset_update_before_established() {
    // An UPDATE instead of the KEEPALIVE that should follow the OPENs.
    let good = raw_update(&[&ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW], &NLRI_10_66);
    let open = bgp::Message::Open(bgp::Open::new(
        65099,
        90,
        "10.99.0.2".parse().unwrap(),
        vec![],
    ))
    .encode(&Context::default());
    let mut both = open.clone();
    both.extend_from_slice(&good);
    resets_with(&["--open-hex", &hexs(&both)], "5 ");
}

// RFC 7606 §7.7 and RFC 6793: attributes that are discarded, the route
// standing.

#[test]
fn malformed_local_pref_from_an_external_peer_is_discarded_and_the_route_kept() {
    // RFC 7606 §7.5: LOCAL_PREF of 2 bytes from eBGP is discarded, not
    // treat-as-withdraw as it is from iBGP.
    let local_pref = [0x40, 5, 2, 0, 100];
    let bad = raw_update(
        &[&ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW, &local_pref],
        &NLRI_10_66,
    );
    assert!(after_good_then(&bad));
}

#[test]
fn aggregator_of_the_wrong_length_is_discarded_and_the_route_kept() {
    // 4-octet AS negotiated: AGGREGATOR must be 8 bytes; this one is 6.
    let aggregator = [0xc0, 7, 6, 0xfe, 0x4b, 10, 99, 0, 2];
    let bad = raw_update(
        &[&ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW, &aggregator],
        &NLRI_10_66,
    );
    assert!(after_good_then(&bad));
}

#[test]
fn as4_path_from_a_4_octet_speaker_is_discarded_and_the_route_kept() {
    // A 4-octet speaker must not send AS4_PATH (RFC 6793 §4.2.3).
    let as4 = [0xc0, 17, 6, 2, 1, 0, 0, 0xfe, 0x4b];
    let bad = raw_update(
        &[&ORIGIN_IGP, &AS_PATH_65099, &NEXT_HOP_RAW, &as4],
        &NLRI_10_66,
    );
    assert!(after_good_then(&bad));
}

// RFC 7606 §7.11 (and RFC 4760): MP_UNREACH_NLRI.

#[test]
fn mp_unreach_withdraws_and_a_malformed_one_resets() {
    // Well formed: IPv4 unicast, 10.66.0.0/24 withdrawn.
    let unreach = [0x80, 15, 7, 0, 1, 1, 24, 10, 66, 0];
    assert!(!after_good_then(&raw_update(&[&unreach], &[])));
    // Its prefix runs past the attribute: session reset, Optional
    // Attribute Error.
    let broken = [0x80, 15, 5, 0, 1, 1, 24, 10];
    resets_with(&["--send", &hexs(&raw_update(&[&broken], &[]))], "3 9");
}

// A NOTIFICATION from the peer (RFC 4271 §6.4): the session closes, nothing
// is sent back, and the reason is what tapir reports.

#[test]
fn a_notification_from_the_peer_closes_the_session_quietly() {
    let b = Bench::new();
    let n = bgp::Message::Notification(bgp::Notification::new(6, 2)).encode(&Context::default());
    let out = b.raw(&["--send", &hexs(&n), "--linger-ms", "1500"]);
    assert!(
        !out.iter().any(|l| l.starts_with("NOTIFICATION")),
        "tapir answered a NOTIFICATION: {out:?}"
    );
    let raw = wait_for(Duration::from_secs(5), || {
        let peers = b.tapir.json("peers");
        peers
            .as_array()?
            .iter()
            .find(|p| {
                p["name"] == "raw"
                    && p["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("received"))
            })
            .cloned()
    })
    .unwrap_or_else(|| panic!("{}", b.tapir.show(&["peers"])));
    assert!(
        raw["last_error"].as_str().unwrap().contains("(6/2)"),
        "{raw}"
    );
    b.assert_tor_unaffected();
}

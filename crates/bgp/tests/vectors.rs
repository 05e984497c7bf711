//! Byte-exact vectors: every message that BIRD 2.0.12, FRR 8.4 and GoBGP
//! 3.10 sent to tapir in the reference lab (captured by
//! scripts/capture-vectors into tests/vectors/*.txt) decodes without a
//! problem, says what the peer's config made it say, and re-encodes to the
//! same bytes wherever our attribute and capability order is the sender's.

use std::net::Ipv4Addr;

use bgp::capability::Capability;
use bgp::{AfiSafi, AsPath, Context, Message, NextHop, Origin, Prefix};

struct Vector {
    session: String,
    kind: String,
    bytes: Vec<u8>,
}

fn load(peer: &str) -> Vec<Vector> {
    let path = format!("{}/tests/vectors/{peer}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let session = f.next().unwrap().to_string();
            let kind = f.next().unwrap().to_string();
            let hex = f.next().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            Vector {
                session,
                kind,
                bytes,
            }
        })
        .collect()
}

fn context(session: &str) -> Context {
    Context {
        four_octet_as: true,
        families: vec![if session == "ipv6" {
            AfiSafi::IPV6_UNICAST
        } else {
            AfiSafi::IPV4_UNICAST
        }],
        ..Context::default()
    }
}

/// Decodes every vector; checks the re-encoding; returns the messages.
fn check(peer: &str, byte_exact: &[(&str, &str)]) -> Vec<(String, Message)> {
    let vectors = load(peer);
    assert!(vectors.len() >= 6, "{peer}: too few vectors");
    let mut out = Vec::new();
    for v in vectors {
        let cxt = context(&v.session);
        let (msg, used) = Message::decode(&v.bytes, &cxt)
            .unwrap_or_else(|n| panic!("{peer} {} {}: {n}", v.session, v.kind))
            .unwrap_or_else(|| panic!("{peer} {} {}: incomplete", v.session, v.kind));
        assert_eq!(used, v.bytes.len());
        assert_eq!(msg.name(), v.kind);
        if let Message::Update(u) = &msg {
            assert!(u.problems.is_empty(), "{peer}: {:?}", u.problems);
        }
        let again = msg.encode(&cxt);
        if byte_exact.contains(&(v.session.as_str(), v.kind.as_str())) || v.kind == "KEEPALIVE" {
            assert_eq!(
                again, v.bytes,
                "{peer} {} {} not byte-exact",
                v.session, v.kind
            );
        } else {
            let back = Message::decode(&again, &cxt).unwrap().unwrap().0;
            assert_eq!(back, msg, "{peer} {} {}", v.session, v.kind);
        }
        out.push((v.session, msg));
    }
    out
}

fn open(msgs: &[(String, Message)], session: &str) -> bgp::Open {
    msgs.iter()
        .find_map(|(s, m)| match m {
            Message::Open(o) if s == session => Some(o.clone()),
            _ => None,
        })
        .unwrap()
}

/// The announcement of `prefix` in the captured UPDATEs.
fn route(msgs: &[(String, Message)], prefix: &str) -> (NextHop, bgp::PathAttributes) {
    let p: Prefix = prefix.parse().unwrap();
    msgs.iter()
        .find_map(|(_, m)| match m {
            Message::Update(u) => u
                .announced()
                .into_iter()
                .find(|(q, _)| *q == p)
                .map(|(_, nh)| (nh, u.attributes.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no announcement of {prefix}"))
}

fn tor() -> Ipv4Addr {
    "10.192.21.1".parse().unwrap()
}

#[test]
fn bird_vectors() {
    // BIRD always sets the extended-length flag on MP_REACH_NLRI, so its
    // IPv6 UPDATE has the same meaning in other bytes.
    let msgs = check(
        "bird",
        &[("ipv4", "OPEN"), ("ipv6", "OPEN"), ("ipv4", "UPDATE")],
    );
    let o = open(&msgs, "ipv4");
    assert_eq!((o.asn(), o.hold_time, o.bgp_id), (65020, 240, tor()));
    assert_eq!(o.families(), vec![AfiSafi::IPV4_UNICAST]);
    assert!(o.capabilities.contains(&Capability::RouteRefresh));
    assert!(o
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::GracefulRestart(g) if g.restart_time == 120)));
    // Enhanced route refresh (70) and long-lived GR (71): kept, not dropped.
    assert!(o.capabilities.contains(&Capability::Unknown {
        code: 70,
        value: vec![]
    }));
    assert!(o.capabilities.iter().any(|c| c.code() == 71));
    assert_eq!(open(&msgs, "ipv6").families(), vec![AfiSafi::IPV6_UNICAST]);

    let (nh, a) = route(&msgs, "192.0.2.0/24");
    assert_eq!(nh, NextHop::V4(tor()));
    assert_eq!(a.as_path, Some(AsPath::from_sequence([65020])));
    assert_eq!(a.origin, Some(Origin::Igp));
    // BIRD sends global and link-local next hops (32 bytes).
    let (nh, _) = route(&msgs, "2001:db8:ff::/48");
    match nh {
        NextHop::V6 {
            global,
            link_local: Some(ll),
        } => {
            assert_eq!(
                global,
                "2001:db8:21::1".parse::<std::net::Ipv6Addr>().unwrap()
            );
            assert_eq!(ll.segments()[0], 0xfe80);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn frr_vectors() {
    // FRR puts each capability in its own optional parameter and sets the
    // extended-length flag on AS_PATH: same meaning, other bytes.
    let msgs = check("frr", &[]);
    let o = open(&msgs, "ipv4");
    assert_eq!((o.asn(), o.hold_time, o.bgp_id), (65020, 180, tor()));
    // FQDN (73) carries tor's host name.
    assert!(o.capabilities.iter().any(
        |c| matches!(c, Capability::Unknown { code: 73, value } if value.ends_with(b"tor\0"))
    ));
    let (nh, a) = route(&msgs, "192.0.2.0/24");
    assert_eq!(nh, NextHop::V4(tor()));
    assert_eq!(a.as_path, Some(AsPath::from_sequence([65020])));
    assert_eq!(a.med, Some(0));
    let (nh, _) = route(&msgs, "2001:db8:ff::/48");
    assert!(
        matches!(
            nh,
            NextHop::V6 {
                link_local: Some(_),
                ..
            }
        ),
        "{nh:?}"
    );
}

#[test]
fn gobgp_vectors() {
    let msgs = check(
        "gobgp",
        &[("ipv4", "OPEN"), ("ipv6", "OPEN"), ("ipv4", "UPDATE")],
    );
    let o = open(&msgs, "ipv4");
    assert_eq!((o.asn(), o.hold_time, o.bgp_id), (65020, 90, tor()));
    // GoBGP offers IPv4 unicast over IPv6 next hops (RFC 8950).
    assert!(o
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::ExtendedNextHop(e) if e[0].nlri == AfiSafi::IPV4_UNICAST && e[0].next_hop_afi == 2)));
    let (nh, a) = route(&msgs, "192.0.2.0/24");
    assert_eq!(nh, NextHop::V4(tor()));
    assert_eq!(a.as_path, Some(AsPath::from_sequence([65020])));
    let (nh, _) = route(&msgs, "2001:db8:ff::/48");
    assert_eq!(
        nh,
        NextHop::V6 {
            global: "2001:db8:21::1".parse().unwrap(),
            link_local: None
        }
    );
}

//! Regression tests for defects found in review (RFC 6286 §2.3, RFC 7313, RFC 6793 §6, FSM events).
use std::time::{Duration, Instant};

use bgp::attribute::{decode_attributes, AsPath};
use bgp::collision::{self, Loser};
use bgp::message::{frame, kind, Message};
use bgp::session::{Config, Event, RemoteAs, Session, State};
use bgp::{AfiSafi, Context};

fn cfg(asn: u32, id: &str) -> Config {
    Config {
        local_as: asn,
        remote_as: RemoteAs::External,
        router_id: id.parse().unwrap(),
        hold_time: 90,
        connect_retry: Duration::from_secs(5),
        connect_retry_max: Duration::from_secs(5),
        passive: false,
        families: vec![AfiSafi::IPV4_UNICAST],
        extended_next_hop: false,
        graceful_restart: None,
        restarting: false,
        keep_raw_updates: false,
    }
}

fn pump(x: &mut Session, y: &mut Session, now: Instant) {
    while let Some(m) = x.poll_transmit() {
        y.receive(now, &m);
    }
}

/// Two connections between A and B, OPENs exchanged, all four in OpenConfirm.
/// conn1: a1 (A, outbound) <-> b1 (B, inbound); conn2: b2 (B, outbound) <-> a2 (A, inbound).
fn two_connections(ca: Config, cb: Config, now: Instant) -> [Session; 4] {
    let (mut a1, mut b1) = (Session::new(ca.clone()), Session::new(cb.clone()));
    let (mut a2, mut b2) = (Session::new(ca), Session::new(cb));
    a1.start(now);
    a1.connected(now);
    assert!(b1.accepted(now));
    b2.start(now);
    b2.connected(now);
    assert!(a2.accepted(now));
    let (oa1, ob1) = (a1.poll_transmit().unwrap(), b1.poll_transmit().unwrap());
    let (oa2, ob2) = (a2.poll_transmit().unwrap(), b2.poll_transmit().unwrap());
    b1.receive(now, &oa1);
    a1.receive(now, &ob1);
    b2.receive(now, &oa2);
    a2.receive(now, &ob2);
    for s in [&a1, &a2, &b1, &b2] {
        assert_eq!(s.state(), State::OpenConfirm);
    }
    [a1, a2, b1, b2]
}

/// RFC 6286 §2.3: equal BGP Identifiers (legal between different ASes, §2.1):
/// keep the connection initiated by the speaker with the larger AS.
#[test]
fn collision_with_equal_identifiers() {
    let now = Instant::now();
    let [a1, a2, b1, b2] = two_connections(cfg(65001, "10.0.0.1"), cfg(64512, "10.0.0.1"), now);
    let a_view = collision::resolve(&a1, &a2); // first = A's outbound (conn1)
    let b_view = collision::resolve(&b2, &b1); // first = B's outbound (conn2)
    let a_closes_conn1 = a_view == Some(Loser::First);
    let b_closes_conn1 = b_view == Some(Loser::Second);
    assert_eq!(
        a_closes_conn1,
        b_closes_conn1,
        "A closes conn{} and B closes conn{}: both connections die",
        if a_closes_conn1 { 1 } else { 2 },
        if b_closes_conn1 { 1 } else { 2 }
    );
    assert_eq!(a_view, Some(Loser::Second), "A (larger AS) must keep conn1");
}

/// A session closed for collision in OpenConfirm was never Established, yet it
/// reports Event::Down ("The session left Established; everything learned from
/// it is gone"), which tapir's peer task answers by clearing the Adj-RIB-In.
#[test]
fn collision_loser_in_openconfirm_reports_no_down() {
    let now = Instant::now();
    let [_a1, mut a2, _b1, _b2] =
        two_connections(cfg(64612, "10.0.0.9"), cfg(65020, "10.0.0.2"), now);
    while a2.poll_event().is_some() {}
    a2.close_collision(now);
    let evs: Vec<Event> = std::iter::from_fn(|| a2.poll_event()).collect();
    assert!(!evs.iter().any(|e| matches!(e, Event::Down(_))), "{evs:?}");
}

fn established_pair(now: Instant) -> (Session, Session) {
    let mut a = Session::new(cfg(64612, "10.0.0.1"));
    let mut b = Session::new(cfg(65020, "10.0.0.2"));
    a.start(now);
    a.connected(now);
    assert!(b.accepted(now));
    for _ in 0..4 {
        pump(&mut a, &mut b, now);
        pump(&mut b, &mut a, now);
    }
    assert_eq!(a.state(), State::Established);
    while a.poll_event().is_some() {}
    (a, b)
}

/// RFC 7313 §4: a ROUTE-REFRESH whose subtype is not 0, 1 or 2 MUST be ignored
/// (and BoRR/EoRR are not refresh requests).
#[test]
fn route_refresh_with_unknown_subtype_is_ignored() {
    let now = Instant::now();
    let (mut a, _b) = established_pair(now);
    a.receive(now, &frame(kind::ROUTE_REFRESH, &[0, 1, 7, 1]));
    let evs: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        !evs.iter().any(|e| matches!(e, Event::RouteRefresh(_))),
        "{evs:?}"
    );
}

/// RFC 7313 §5: the length rule is for subtypes 1 and 2; a ROUTE-REFRESH with
/// a subtype other than 0, 1, 2 MUST be ignored, not answered with a reset.
#[test]
fn unknown_subtype_route_refresh_of_odd_length_is_not_a_reset() {
    let m = frame(kind::ROUTE_REFRESH, &[0, 1, 9, 1, 0]);
    assert!(Message::decode(&m, &Context::default()).is_ok());
}

/// RFC 6793 §6: AS_CONFED_* segments in AS4_PATH are discarded, the rest of
/// the attribute is still used.
#[test]
fn as4_path_confed_segments_are_discarded() {
    let mut v = vec![0x40, 1, 1, 0]; // ORIGIN IGP
    v.extend([0x40, 2, 6, 2, 2, 0, 100, 0x5b, 0xa0]); // AS_PATH 100 23456
    v.extend([0x40, 3, 4, 10, 0, 0, 1]); // NEXT_HOP
                                         // AS4_PATH: (65000) 4200000001
    v.extend([
        0xc0, 17, 12, 3, 1, 0, 0, 0xfd, 0xe8, 2, 1, 0xfa, 0x56, 0xea, 0x01,
    ]);
    let d = decode_attributes(&v, &Context::default(), true).unwrap();
    assert_eq!(
        d.attrs.as_path,
        Some(AsPath::from_sequence([100, 4_200_000_001])),
        "got {}",
        d.attrs.as_path.as_ref().unwrap()
    );
}

/// With `keep_raw_updates` (a BMP monitor), each UPDATE's bytes as
/// received come just before its decoded event; KEEPALIVEs bring none,
/// and without the setting no UPDATE does.
#[test]
fn raw_updates_come_with_their_update_only_when_asked() {
    for keep in [true, false] {
        let now = Instant::now();
        let mut cb = cfg(64512, "10.0.0.2");
        cb.keep_raw_updates = keep;
        let (mut a, mut b) = (Session::new(cfg(65001, "10.0.0.1")), Session::new(cb));
        a.start(now);
        a.connected(now);
        assert!(b.accepted(now));
        for _ in 0..3 {
            pump(&mut a, &mut b, now);
            pump(&mut b, &mut a, now);
        }
        assert_eq!(b.state(), State::Established);
        while b.poll_event().is_some() {}
        let update = bgp::update::encode_end_of_rib(AfiSafi::IPV4_UNICAST);
        let mut bytes = update.clone();
        bytes.extend(Message::Keepalive.encode(&Context::default()));
        b.receive(now, &bytes);
        let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
        let raw: Vec<&Vec<u8>> = events
            .iter()
            .filter_map(|e| match e {
                Event::RawUpdate(r) => Some(r),
                _ => None,
            })
            .collect();
        match keep {
            true => {
                assert_eq!(raw, [&update]);
                assert!(matches!(events[0], Event::RawUpdate(_)));
                assert!(matches!(events[1], Event::Update(_)));
            }
            false => assert!(raw.is_empty()),
        }
    }
}

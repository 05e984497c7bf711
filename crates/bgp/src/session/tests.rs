//! Whole conversations between two in-memory sessions on a fake clock.

use super::*;
use crate::collision::{self, Loser};
use crate::notification::{cease, code};

fn config(asn: u32, id: &str, remote: RemoteAs) -> Config {
    Config {
        local_as: asn,
        remote_as: remote,
        router_id: id.parse().unwrap(),
        hold_time: 90,
        connect_retry: Duration::from_secs(5),
        connect_retry_max: Duration::from_secs(5),
        passive: false,
        families: vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
        extended_next_hop: false,
        graceful_restart: Some(120),
        restarting: false,
        keep_raw_updates: false,
    }
}

/// Two sessions joined by a perfect pipe, with one fake clock.
struct Pair {
    a: Session,
    b: Session,
    now: Instant,
    a_events: Vec<Event>,
    b_events: Vec<Event>,
}

impl Pair {
    fn new(a: Config, b: Config) -> Pair {
        Pair {
            a: Session::new(a),
            b: Session::new(b),
            now: Instant::now(),
            a_events: vec![],
            b_events: vec![],
        }
    }

    /// A connects to B, which accepts.
    fn connect(&mut self) {
        self.a.start(self.now);
        assert!(self.a.poll_event().is_some());
        self.a.connected(self.now);
        assert!(self.b.accepted(self.now));
        self.drive();
    }

    /// Moves bytes both ways until quiet.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.a.poll_transmit() {
                self.b.receive(self.now, &bytes);
                moved = true;
            }
            while let Some(bytes) = self.b.poll_transmit() {
                self.a.receive(self.now, &bytes);
                moved = true;
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.b_events.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    /// Advances the clock, firing timers as they fall due, without
    /// delivering any bytes (a silent peer).
    fn advance_silent(&mut self, d: Duration) -> Vec<Vec<u8>> {
        let end = self.now + d;
        let mut sent = Vec::new();
        while let Some(t) = self.a.poll_timeout().filter(|t| *t <= end) {
            self.now = t;
            self.a.handle_timeout(t);
            while let Some(b) = self.a.poll_transmit() {
                sent.push(b);
            }
        }
        self.now = end;
        sent
    }
}

fn established(p: &Pair) -> bool {
    p.a.state() == State::Established && p.b.state() == State::Established
}

#[test]
fn establishes_and_negotiates() {
    let mut a = config(64612, "10.192.21.6", RemoteAs::External);
    a.hold_time = 240;
    let mut b = config(4_200_000_000, "10.192.21.1", RemoteAs::Exact(64612));
    b.families = vec![AfiSafi::IPV4_UNICAST];
    let mut p = Pair::new(a, b);
    p.connect();
    assert!(established(&p));
    let n = p.a.negotiated().unwrap();
    assert_eq!(n.remote_as, 4_200_000_000);
    assert_eq!(n.hold_time, 90);
    assert_eq!(n.keepalive, 30);
    assert!(n.context.four_octet_as);
    assert_eq!(n.context.families, vec![AfiSafi::IPV4_UNICAST]);
    assert!(n.peer_graceful_restart.is_some());
    assert!(p
        .a_events
        .iter()
        .any(|e| matches!(e, Event::Established(_))));
}

#[test]
fn keepalive_cadence_is_a_third_of_hold() {
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::External),
        config(65020, "10.0.0.2", RemoteAs::External),
    );
    p.connect();
    let start = p.now;
    // In 100 s with hold 90 (keepalive 30) A sends keepalives at 30, 60, 90
    // -- but with nothing received for 90 s its hold timer expires at 90.
    let sent = p.advance_silent(Duration::from_secs(89));
    assert_eq!(sent.len(), 2, "keepalives at 30 s and 60 s");
    assert!(sent.iter().all(|m| m.len() == 19 && m[18] == 4));
    assert_eq!(p.a.state(), State::Established);
    assert!(p.now - start < Duration::from_secs(90));
}

#[test]
fn hold_timer_expiry_sends_notification_and_goes_idle() {
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::External),
        config(65020, "10.0.0.2", RemoteAs::External),
    );
    p.connect();
    let start = p.now;
    let sent = p.advance_silent(Duration::from_secs(91));
    let last = sent.last().unwrap();
    assert_eq!(&last[18..21], &[3, code::HOLD_TIMER_EXPIRED, 0]);
    assert_eq!(p.a.state(), State::Idle);
    let mut evs = vec![];
    while let Some(e) = p.a.poll_event() {
        evs.push(e);
    }
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::Down(DownReason::NotificationSent(n)) if n.code == 4)));
    // Automatic restart after the connect-retry time.
    let t = p.a.poll_timeout().unwrap();
    assert_eq!(t - start, Duration::from_secs(90 + 5));
    p.a.handle_timeout(t);
    assert_eq!(p.a.state(), State::Connect);
    assert_eq!(
        p.a.poll_event(),
        Some(Event::StateChanged {
            from: State::Idle,
            to: State::Connect
        })
    );
    assert_eq!(p.a.poll_event(), Some(Event::Connect));
}

#[test]
fn keepalives_keep_the_session_up() {
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::External),
        config(65020, "10.0.0.2", RemoteAs::External),
    );
    p.connect();
    for _ in 0..100 {
        let next = [p.a.poll_timeout(), p.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        p.now = next;
        p.a.handle_timeout(next);
        p.b.handle_timeout(next);
        p.drive();
    }
    assert!(established(&p), "{:?} {:?}", p.a.state(), p.b.state());
}

#[test]
fn bad_peer_as_is_refused_with_open_error() {
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::Exact(65001)),
        config(65020, "10.0.0.2", RemoteAs::External),
    );
    p.connect();
    assert_eq!(p.a.state(), State::Idle);
    assert_eq!(p.b.state(), State::Idle);
    match p.b.last_error() {
        Some(DownReason::NotificationReceived(n)) => {
            assert_eq!((n.code, n.subcode), (2, 2));
            assert_eq!(n.data, 65020u16.to_be_bytes());
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn as_zero_is_a_bad_peer_as_even_to_external_or_a_range() {
    for remote in [RemoteAs::External, RemoteAs::Ranges(vec![(0, 65535)])] {
        assert!(!remote.accepts(64612, 0), "{remote:?}");
        let mut p = Pair::new(
            config(0, "10.0.0.1", RemoteAs::External),
            config(64612, "10.0.0.2", remote),
        );
        p.connect();
        assert_eq!(p.b.state(), State::Idle);
        match p.b.last_error() {
            Some(DownReason::NotificationSent(n)) => assert_eq!((n.code, n.subcode), (2, 2)),
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn internal_and_external_policies() {
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::Internal),
        config(64613, "10.0.0.2", RemoteAs::External),
    );
    p.connect();
    assert_eq!(p.a.state(), State::Idle);
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::Internal),
        config(64612, "10.0.0.1", RemoteAs::Internal),
    );
    p.connect();
    // Same identifier within one AS: Bad BGP Identifier.
    match p.a.last_error() {
        Some(DownReason::NotificationSent(n)) => assert_eq!((n.code, n.subcode), (2, 3)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn unexpected_message_in_opensent_is_fsm_error() {
    let mut s = Session::new(config(64612, "10.0.0.1", RemoteAs::External));
    let now = Instant::now();
    s.start(now);
    s.connected(now);
    let _open = s.poll_transmit().unwrap();
    s.receive(now, &Message::Keepalive.encode(&Context::default()));
    let n = s.poll_transmit().unwrap();
    assert_eq!(
        &n[18..21],
        &[3, code::FSM, notification::fsm::UNEXPECTED_IN_OPENSENT]
    );
    assert_eq!(s.state(), State::Idle);
}

#[test]
fn garbage_gets_header_error() {
    let mut s = Session::new(config(64612, "10.0.0.1", RemoteAs::External));
    let now = Instant::now();
    s.start(now);
    s.connected(now);
    s.poll_transmit();
    s.receive(now, b"GET / HTTP/1.1\r\n\r\n");
    let n = s.poll_transmit().unwrap();
    assert_eq!(&n[18..21], &[3, 1, 1]);
    assert_eq!(s.state(), State::Idle);
}

#[test]
fn open_with_bad_version_is_refused() {
    let mut s = Session::new(config(64612, "10.0.0.1", RemoteAs::External));
    let now = Instant::now();
    s.start(now);
    s.connected(now);
    s.poll_transmit();
    let mut open = Message::Open(Open::new(65020, 90, "10.0.0.2".parse().unwrap(), vec![]))
        .encode(&Context::default());
    open[19] = 3;
    s.receive(now, &open);
    let n = s.poll_transmit().unwrap();
    assert_eq!(&n[18..23], &[3, 2, 1, 0, 4]);
}

#[test]
fn open_hold_time_in_opensent_expires() {
    let mut s = Session::new(config(64612, "10.0.0.1", RemoteAs::External));
    let t0 = Instant::now();
    s.start(t0);
    s.connected(t0);
    s.poll_transmit();
    assert_eq!(s.poll_timeout(), Some(t0 + OPEN_HOLD));
    s.handle_timeout(t0 + OPEN_HOLD);
    assert_eq!(&s.poll_transmit().unwrap()[18..20], &[3, 4]);
}

#[test]
fn passive_session_waits_and_connect_retry_repeats() {
    let mut c = config(64612, "10.0.0.1", RemoteAs::External);
    c.passive = true;
    let mut s = Session::new(c);
    let t0 = Instant::now();
    s.start(t0);
    assert_eq!(s.state(), State::Active);
    assert_eq!(s.poll_timeout(), None);
    while let Some(e) = s.poll_event() {
        assert_ne!(e, Event::Connect);
    }
    let mut a = Session::new(config(64612, "10.0.0.1", RemoteAs::External));
    a.start(t0);
    a.connect_failed(t0);
    assert_eq!(a.state(), State::Active);
    a.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(a.state(), State::Connect);
    let evs: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert_eq!(evs.iter().filter(|e| **e == Event::Connect).count(), 2);
}

#[test]
fn notification_received_ends_session() {
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::External),
        config(65020, "10.0.0.2", RemoteAs::External),
    );
    p.connect();
    p.b.stop(
        p.now,
        Notification::shutdown(cease::ADMINISTRATIVE_SHUTDOWN, "maintenance"),
    );
    p.drive();
    assert_eq!(p.a.state(), State::Idle);
    match p.a.last_error() {
        Some(DownReason::NotificationReceived(n)) => {
            assert_eq!(n.shutdown_message(), Some("maintenance"))
        }
        e => panic!("{e:?}"),
    }
    // A stopped session does not restart by itself; the other one does.
    assert_eq!(p.b.poll_timeout(), None);
    assert!(p.a.poll_timeout().is_some());
}

#[test]
fn updates_are_delivered_and_reset_hold() {
    let mut p = Pair::new(
        config(64612, "10.0.0.1", RemoteAs::External),
        config(65020, "10.0.0.2", RemoteAs::External),
    );
    p.connect();
    let attrs = crate::PathAttributes {
        origin: Some(crate::Origin::Igp),
        as_path: Some(crate::AsPath::from_sequence([64612])),
        ..Default::default()
    };
    for m in crate::update::encode_announce(
        &attrs,
        crate::NextHop::V4("10.0.0.1".parse().unwrap()),
        &["10.3.0.1/32".parse().unwrap()],
        &p.a.context(),
    ) {
        p.a.send(p.now, m);
    }
    p.drive();
    let got: Vec<_> = p
        .b_events
        .iter()
        .filter_map(|e| match e {
            Event::Update(u) => Some(u.announced()),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][0].0.to_string(), "10.3.0.1/32");
}

#[test]
fn collision_keeps_connection_of_higher_identifier() {
    // A (10.0.0.1) and B (10.0.0.2) connect to each other at once.
    let now = Instant::now();
    let ca = config(64612, "10.0.0.1", RemoteAs::External);
    let cb = config(65020, "10.0.0.2", RemoteAs::External);
    // Connection 1: A -> B. Connection 2: B -> A.
    let (mut a1, mut b1) = (Session::new(ca.clone()), Session::new(cb.clone()));
    let (mut a2, mut b2) = (Session::new(ca), Session::new(cb));
    a1.start(now);
    a1.connected(now);
    assert!(b1.accepted(now));
    b2.start(now);
    b2.connected(now);
    assert!(a2.accepted(now));
    // Deliver OPENs on both connections.
    let pump = |x: &mut Session, y: &mut Session| {
        while let Some(m) = x.poll_transmit() {
            y.receive(now, &m);
        }
    };
    pump(&mut a1, &mut b1);
    pump(&mut b1, &mut a1);
    pump(&mut a2, &mut b2);
    pump(&mut b2, &mut a2);
    assert_eq!(a1.state(), State::Established);
    assert_eq!(a2.state(), State::Established);
    // A's id is lower: the connection B opened (a2) is kept.
    assert_eq!(collision::resolve(&a1, &a2), Some(Loser::First));
    // B sees the same answer from its side.
    assert_eq!(collision::resolve(&b2, &b1), Some(Loser::Second));
    assert!(!collision::keep_locally_initiated(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        64612,
        65020
    ));
}

#[test]
fn collision_between_two_openconfirm_sessions() {
    let now = Instant::now();
    let ca = config(64612, "10.0.0.9", RemoteAs::External);
    let cb = config(65020, "10.0.0.2", RemoteAs::External);
    let (mut a1, mut b1) = (Session::new(ca.clone()), Session::new(cb.clone()));
    let (mut a2, mut b2) = (Session::new(ca), Session::new(cb));
    a1.start(now);
    a1.connected(now);
    b1.accepted(now);
    b2.start(now);
    b2.connected(now);
    a2.accepted(now);
    // Only OPENs cross (the KEEPALIVEs that follow are held back).
    let open_a1 = a1.poll_transmit().unwrap();
    let open_b1 = b1.poll_transmit().unwrap();
    let open_a2 = a2.poll_transmit().unwrap();
    let open_b2 = b2.poll_transmit().unwrap();
    b1.receive(now, &open_a1);
    a1.receive(now, &open_b1);
    b2.receive(now, &open_a2);
    a2.receive(now, &open_b2);
    assert_eq!(a1.state(), State::OpenConfirm);
    assert_eq!(a2.state(), State::OpenConfirm);
    // A has the higher id: its own connection (a1) is kept.
    assert_eq!(collision::resolve(&a1, &a2), Some(Loser::Second));
    a2.close_collision(now);
    let _keepalive = a2.poll_transmit().unwrap();
    let n = a2.poll_transmit().unwrap();
    assert_eq!(
        &n[18..21],
        &[3, code::CEASE, cease::CONNECTION_COLLISION_RESOLUTION]
    );
    assert_eq!(a2.state(), State::Idle);
    assert_eq!(a2.poll_timeout(), None, "the loser does not restart");
}

#[test]
fn restarting_speaker_sets_restart_and_forwarding_bits() {
    let mut a = config(64612, "10.0.0.1", RemoteAs::External);
    a.restarting = true;
    let mut p = Pair::new(a, config(65020, "10.0.0.2", RemoteAs::External));
    p.connect();
    let gr =
        p.b.negotiated()
            .unwrap()
            .peer_graceful_restart
            .clone()
            .unwrap();
    assert!(gr.restarting);
    assert_eq!(gr.restart_time, 120);
    assert!(gr.families.iter().all(|f| f.forwarding_preserved));
    assert_eq!(gr.families.len(), 2);
    // A restarting speaker's stop is silent: no NOTIFICATION on the wire.
    p.a.abort(p.now);
    assert_eq!(p.a.poll_transmit(), None);
    assert_eq!(p.a.state(), State::Idle);
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn new_settings_wait_for_the_next_connection() {
    let mut p = Pair::new(
        config(65001, "10.0.0.1", RemoteAs::Exact(65002)),
        config(65002, "10.0.0.2", RemoteAs::Exact(65001)),
    );
    p.connect();
    assert!(established(&p));
    let mut c = config(65001, "10.0.0.1", RemoteAs::Exact(65002));
    c.hold_time = 9;
    p.a.set_config(c);
    // The open connection keeps what it negotiated.
    assert_eq!(p.a.negotiated().unwrap().hold_time, 90);
    p.a.closed(p.now);
    p.b.closed(p.now);
    p.now += Duration::from_secs(6);
    p.a.handle_timeout(p.now);
    p.b = Session::new(config(65002, "10.0.0.2", RemoteAs::Exact(65001)));
    p.a.connected(p.now);
    assert!(p.b.accepted(p.now));
    p.drive();
    assert!(established(&p));
    assert_eq!(p.a.negotiated().unwrap().hold_time, 9);
    assert_eq!(p.b.negotiated().unwrap().hold_time, 9);
}

#[test]
fn attempts_nobody_answers_back_off_and_a_connection_resets_them() {
    let mut c = config(64612, "10.0.0.1", RemoteAs::External);
    c.connect_retry = Duration::from_secs(2);
    c.connect_retry_max = Duration::from_secs(60);
    let mut s = Session::new(c);
    let mut now = Instant::now();
    s.start(now);
    let mut waits = Vec::new();
    for _ in 0..8 {
        assert!(!s.answered());
        s.connect_failed(now);
        let next = s.poll_timeout().unwrap();
        waits.push((next - now).as_secs());
        now = next;
        s.handle_timeout(now);
        assert_eq!(s.state(), State::Connect);
    }
    assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    // A listener that closes without a word is no answer either.
    s.connected(now);
    assert_eq!(s.state(), State::OpenSent);
    s.closed(now);
    assert!(!s.answered());
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(60)));
    // A peer that speaks BGP resets the wait, even one that refuses us.
    now += Duration::from_secs(60);
    s.handle_timeout(now);
    s.connected(now);
    let peer = Open::new(64612, 90, "10.0.0.1".parse().unwrap(), vec![]);
    s.receive(now, &Message::Open(peer).encode(&Context::default()));
    assert!(s.answered());
    assert_eq!(s.retry_delay(), Duration::from_secs(2));
    assert_eq!(s.state(), State::Idle, "our own AS from an eBGP peer");
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(2)));
    // An operator's stop and start ends a back-off.
    for _ in 0..3 {
        s.handle_timeout(s.poll_timeout().unwrap());
        s.connect_failed(now);
    }
    assert!(s.retry_delay() > Duration::from_secs(2));
    s.stop(now, Notification::new(6, 4));
    s.start(now);
    assert_eq!(s.retry_delay(), Duration::from_secs(2));
}

#[test]
fn a_peer_that_became_reachable_is_tried_at_once() {
    let mut c = config(64612, "10.0.0.1", RemoteAs::External);
    c.connect_retry = Duration::from_secs(1);
    c.connect_retry_max = Duration::from_secs(60);
    let mut s = Session::new(c.clone());
    let mut now = Instant::now();
    // Not started: nothing to retry.
    assert!(!s.retry_now(now));
    s.start(now);
    while s.poll_event().is_some() {}
    // An attempt in flight is made anew.
    assert!(s.retry_now(now));
    assert_eq!(s.poll_event(), Some(Event::Connect));
    assert_eq!(s.state(), State::Connect);
    // Backed off to 16 s, the last attempt failed: waiting in Active.
    for _ in 0..4 {
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
    }
    s.connect_failed(now);
    assert_eq!(s.retry_delay(), Duration::from_secs(16));
    assert_eq!(s.state(), State::Active);
    while s.poll_event().is_some() {}
    now += Duration::from_secs(2);
    assert!(s.retry_now(now));
    assert_eq!(s.state(), State::Connect);
    assert!(std::iter::from_fn(|| s.poll_event()).any(|e| e == Event::Connect));
    assert_eq!(s.retry_delay(), Duration::from_secs(1));
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(1)));
    // Idle after a connection that ended: at once too.
    s.connected(now);
    assert_eq!(s.state(), State::OpenSent);
    s.closed(now);
    assert_eq!(s.state(), State::Idle);
    while s.poll_event().is_some() {}
    assert!(s.retry_now(now));
    assert_eq!(s.state(), State::Connect);
    // Stopped, or passive: never.
    s.stop(now, Notification::new(6, 2));
    assert!(!s.retry_now(now));
    c.passive = true;
    let mut p = Session::new(c);
    p.start(now);
    assert!(!p.retry_now(now));
    assert_eq!(p.state(), State::Active);
    // A passive session in Idle, waiting to listen again: left alone.
    assert!(p.accepted(now));
    p.closed(now);
    assert_eq!(p.state(), State::Idle);
    assert!(p.poll_timeout().is_some());
    assert!(!p.retry_now(now));
    assert_eq!(p.state(), State::Idle);
}

#[test]
fn without_a_maximum_attempts_do_not_back_off() {
    let mut s = Session::new(config(64612, "10.0.0.1", RemoteAs::External));
    let mut now = Instant::now();
    s.start(now);
    for _ in 0..4 {
        s.connect_failed(now);
        let next = s.poll_timeout().unwrap();
        assert_eq!(next - now, Duration::from_secs(5));
        now = next;
        s.handle_timeout(now);
    }
}

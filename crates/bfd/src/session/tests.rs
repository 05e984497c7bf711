//! Two sessions on a fake clock.

use super::*;

fn cfg(discr: u32, tx_ms: u64, rx_ms: u64, mult: u8) -> Config {
    Config {
        local_discriminator: discr,
        desired_min_tx: Duration::from_millis(tx_ms),
        required_min_rx: Duration::from_millis(rx_ms),
        detect_mult: mult,
        auth: None,
        pin_peer: false,
    }
}

struct Pair {
    a: Session,
    b: Session,
    now: Instant,
    /// Deliver packets from A to B (false: A is frozen, as a VM whose
    /// traffic is dropped).
    a_to_b: bool,
    events: Vec<(char, Event)>,
}

impl Pair {
    fn new(a: Config, b: Config) -> Pair {
        let now = Instant::now();
        Pair {
            a: Session::new(a, now),
            b: Session::new(b, now),
            now,
            a_to_b: true,
            events: vec![],
        }
    }

    /// Runs both sessions until `until`, delivering packets instantly.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= end);
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(p) = self.a.poll_transmit() {
                if self.a_to_b {
                    let _ = self.b.receive(self.now, &p);
                }
                moved = true;
            }
            while let Some(p) = self.b.poll_transmit() {
                let _ = self.a.receive(self.now, &p);
                moved = true;
            }
            while let Some(e) = self.a.poll_event() {
                self.events.push(('a', e));
            }
            while let Some(e) = self.b.poll_event() {
                self.events.push(('b', e));
            }
            if !moved {
                break;
            }
        }
    }
}

#[test]
fn three_way_handshake_brings_both_up() {
    let mut p = Pair::new(cfg(1, 300, 300, 3), cfg(2, 300, 300, 3));
    p.run(Duration::from_secs(3));
    assert_eq!(p.a.state(), State::Up);
    assert_eq!(p.b.state(), State::Up);
    assert_eq!(p.a.remote_discriminator(), 2);
    // Down -> Init -> Up on at least one side, Down -> Up on the other.
    let a: Vec<State> = p
        .events
        .iter()
        .filter(|(w, _)| *w == 'a')
        .map(|(_, Event::StateChanged { to, .. })| *to)
        .collect();
    assert!(a.ends_with(&[State::Up]), "{a:?}");
}

#[test]
fn timers_are_negotiated_and_slow_until_up() {
    let mut s = Session::new(cfg(1, 300, 300, 3), Instant::now());
    // Not Up: at least a second between packets.
    assert_eq!(s.transmit_interval(), Duration::from_secs(1));
    let mut p = Pair::new(cfg(1, 300, 300, 3), cfg(2, 50, 900, 5));
    p.run(Duration::from_secs(5));
    assert_eq!(p.a.state(), State::Up);
    // A sends no faster than B can receive; B as fast as it wants (A takes 300 ms).
    assert_eq!(p.a.transmit_interval(), Duration::from_millis(900));
    assert_eq!(p.b.transmit_interval(), Duration::from_millis(300));
    // A's detection time: B's multiplier times max(A's RequiredMinRx, B's DesiredMinTx).
    assert_eq!(p.a.detection_time(), Duration::from_millis(300 * 5));
    assert_eq!(p.b.detection_time(), Duration::from_millis(900 * 3));
    s.handle_timeout(Instant::now() + Duration::from_secs(2));
    assert!(s.poll_transmit().is_some());
}

#[test]
fn jitter_stays_within_bounds() {
    let now = Instant::now();
    let mut s = Session::new(cfg(9, 300, 300, 3), now);
    for _ in 0..1000 {
        let d = s.jittered(Duration::from_millis(1000));
        assert!(
            d >= Duration::from_millis(750) && d <= Duration::from_millis(1000),
            "{d:?}"
        );
    }
    let mut s = Session::new(cfg(9, 300, 300, 1), now);
    for _ in 0..1000 {
        assert!(s.jittered(Duration::from_millis(1000)) <= Duration::from_millis(900));
    }
}

#[test]
fn silence_brings_the_session_down_after_the_detection_time() {
    let mut p = Pair::new(cfg(1, 300, 300, 3), cfg(2, 300, 300, 3));
    p.run(Duration::from_secs(3));
    assert_eq!(p.b.state(), State::Up);
    // A is frozen: B hears nothing more. Step in 10 ms to see when B gives up.
    p.a_to_b = false;
    let frozen_at = p.now;
    let mut down_after = None;
    for _ in 0..300 {
        p.run(Duration::from_millis(10));
        if p.b.state() == State::Down {
            down_after = Some(p.now - frozen_at);
            break;
        }
    }
    let d = down_after.expect("B never went down");
    assert_eq!(p.b.diag(), Diag::ControlDetectionTimeExpired);
    // The last packet B got came at most one (jittered) interval before the
    // freeze; detection is 3 x 300 ms after it.
    assert!(d <= Duration::from_millis(900 + 10), "{d:?}");
    assert!(d >= Duration::from_millis(900 - 300), "{d:?}");
    assert_eq!(p.b.remote_discriminator(), 0);
}

#[test]
fn admin_down_tells_the_peer() {
    let mut p = Pair::new(cfg(1, 300, 300, 3), cfg(2, 300, 300, 3));
    p.run(Duration::from_secs(3));
    p.a.admin_down(p.now);
    p.pump();
    assert_eq!(p.a.state(), State::AdminDown);
    assert_eq!(p.b.state(), State::Down);
    assert_eq!(p.b.diag(), Diag::NeighborSignaledSessionDown);
    // B stays down while A is AdminDown.
    p.run(Duration::from_secs(5));
    assert_eq!(p.b.state(), State::Down);
    p.a.admin_up(p.now);
    p.run(Duration::from_secs(5));
    assert_eq!((p.a.state(), p.b.state()), (State::Up, State::Up));
}

#[test]
fn pinned_and_up_only_the_peers_discriminator_is_heard() {
    let pinned = Config {
        pin_peer: true,
        ..cfg(2, 300, 300, 3)
    };
    let mut p = Pair::new(cfg(1, 300, 300, 3), pinned);
    p.run(Duration::from_secs(3));
    assert_eq!((p.a.state(), p.b.state()), (State::Up, State::Up));
    // A forged Down from somebody else (Your Discriminator 0, or ours).
    for your in [0, 2] {
        let mut forged =
            Packet::decode(&Session::new(cfg(999, 300, 300, 3), p.now).packet()).unwrap();
        forged.your_discriminator = your;
        assert!(p.b.receive(p.now, &forged.encode(&[])).is_err());
        assert_eq!(p.b.state(), State::Up);
        assert_eq!(p.b.remote_discriminator(), 1);
    }
    // The peer's own AdminDown is heard, and is what the peer said.
    p.a.admin_down(p.now);
    p.pump();
    assert_eq!(p.b.state(), State::Down);
    assert_eq!(p.b.remote_state(), State::AdminDown);
}

#[test]
fn poll_gets_final_and_ends_the_sequence() {
    let mut p = Pair::new(cfg(1, 300, 300, 3), cfg(2, 300, 300, 3));
    p.run(Duration::from_secs(3));
    assert_eq!((p.a.state(), p.b.state()), (State::Up, State::Up));
    assert!(
        !p.a.polling,
        "the Poll that going Up started has been answered"
    );
    // Start a Poll Sequence by hand and carry the packets one by one.
    p.a.polling = true;
    let t = p.a.next_tx.unwrap();
    p.a.handle_timeout(t);
    let pkt = Packet::decode(&p.a.poll_transmit().unwrap()).unwrap();
    assert!(pkt.poll && !pkt.final_);
    p.b.receive(p.now, &pkt.encode(&[])).unwrap();
    let answer = Packet::decode(&p.b.poll_transmit().unwrap()).unwrap();
    assert!(answer.final_ && !answer.poll);
    p.a.receive(p.now, &answer.encode(&[])).unwrap();
    assert!(!p.a.polling);
}

#[test]
fn wrong_discriminators_and_auth_are_discarded() {
    let now = Instant::now();
    let mut a = Session::new(cfg(1, 300, 300, 3), now);
    let mut b = Session::new(cfg(2, 300, 300, 3), now);
    let p = a.poll_transmit().or_else(|| {
        a.handle_timeout(now);
        a.poll_transmit()
    });
    let mut pkt = Packet::decode(&p.unwrap()).unwrap();
    // Your Discriminator that is not B's.
    pkt.your_discriminator = 77;
    pkt.state = State::Init;
    assert!(b.receive(now, &pkt.encode(&[])).is_err());
    // Zero Your Discriminator outside Down.
    pkt.your_discriminator = 0;
    assert!(b.receive(now, &pkt.encode(&[])).is_err());
    // Authentication present but not configured.
    pkt.state = State::Down;
    pkt.auth = Some(Auth::SimplePassword {
        key_id: 1,
        password: b"x".to_vec(),
    });
    assert!(b.receive(now, &pkt.encode(&[])).is_err());
    assert_eq!(b.state(), State::Down);
    assert_eq!(
        b.remote_discriminator(),
        0,
        "nothing learned from discarded packets"
    );
}

#[test]
fn keyed_sha1_sessions_come_up_and_reject_a_wrong_key() {
    let auth = |k: &[u8]| {
        Some(AuthConfig::Sha1 {
            key_id: 1,
            key: k.to_vec(),
            meticulous: true,
        })
    };
    let mut ca = cfg(1, 300, 300, 3);
    ca.auth = auth(b"k1");
    let mut cb = cfg(2, 300, 300, 3);
    cb.auth = auth(b"k1");
    let mut p = Pair::new(ca.clone(), cb);
    p.run(Duration::from_secs(3));
    assert_eq!((p.a.state(), p.b.state()), (State::Up, State::Up));
    let mut wrong = cfg(2, 300, 300, 3);
    wrong.auth = auth(b"k2");
    let mut p = Pair::new(ca, wrong);
    p.run(Duration::from_secs(3));
    assert_eq!((p.a.state(), p.b.state()), (State::Down, State::Down));
}

#[test]
fn a_fresh_session_takes_over_from_the_system_the_peer_left() {
    // a (the VM) is Up with b (the hypervisor it leaves).
    let mut p = Pair::new(cfg(1, 300, 300, 3), cfg(2, 300, 300, 3));
    p.run(Duration::from_secs(3));
    assert_eq!(p.a.state(), State::Up);
    p.events.clear();
    // c answers at b's address now; a's packets still name b.
    let mut c = Session::new(cfg(3, 300, 300, 3), p.now);
    let pkt = loop {
        p.now += Duration::from_millis(10);
        p.a.handle_timeout(p.now);
        if let Some(x) = p.a.poll_transmit() {
            break x;
        }
    };
    assert!(c.receive(p.now, &pkt).is_err(), "not c's discriminator");
    // A Down packet is no session to take over.
    let down_pkt = Session::new(cfg(4, 300, 300, 3), p.now).packet();
    let mut d = Session::new(cfg(5, 300, 300, 3), p.now);
    assert!(d.take_over(p.now, &down_pkt).is_err());
    assert!(c.is_fresh());
    c.take_over(p.now, &pkt).unwrap();
    assert_eq!(c.state(), State::Init);
    assert_eq!(c.remote_discriminator(), 1);
    assert!(!c.is_fresh());
    assert!(c.take_over(p.now, &pkt).is_err(), "only once");
    p.b = c;
    p.pump();
    p.run(Duration::from_secs(3));
    assert_eq!(p.b.state(), State::Up);
    assert_eq!(p.a.state(), State::Up);
    assert_eq!(p.a.remote_discriminator(), 3);
    // a never left Up.
    assert!(
        p.events
            .iter()
            .all(|(w, Event::StateChanged { to, .. })| *w != 'a' || *to == State::Up),
        "{:?}",
        p.events
    );
}

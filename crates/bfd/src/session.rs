//! The BFD session state machine (RFC 5880 §6.8), asynchronous mode,
//! without IO: bytes and `now` in; packets, state changes and the next
//! deadline out. Demand mode and the echo function are not implemented
//! (both optional, §6.6 and §6.4); a peer asking for demand mode is served
//! in asynchronous mode.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::packet::{verify_sha1, Auth, Diag, Discard, Packet, State};

/// Authentication to send and require (§6.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfig {
    SimplePassword {
        key_id: u8,
        password: Vec<u8>,
    },
    Sha1 {
        key_id: u8,
        key: Vec<u8>,
        meticulous: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Our discriminator: non-zero, unique among our sessions.
    pub local_discriminator: u32,
    /// How often we want to send once Up.
    pub desired_min_tx: Duration,
    /// How often we can receive.
    pub required_min_rx: Duration,
    pub detect_mult: u8,
    pub auth: Option<AuthConfig>,
    /// Once Up, hear only the peer whose discriminator we learned: a
    /// packet with another My Discriminator is discarded (§6.8.6 lets a
    /// system be this strict). For a peer that never moves, such as a
    /// router; not where a new system may take the session over (a VM's
    /// gateway after a live migration).
    pub pin_peer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    StateChanged { from: State, to: State, diag: Diag },
}

/// While not Up, packets go out at most once a second (§6.8.3).
const SLOW: Duration = Duration::from_secs(1);

pub struct Session {
    cfg: Config,
    state: State,
    remote_state: State,
    remote_discriminator: u32,
    diag: Diag,
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_detect_mult: u8,
    /// A Poll Sequence is running (§6.5).
    polling: bool,
    /// The next packet answers a Poll.
    send_final: bool,
    next_tx: Option<Instant>,
    detect_at: Option<Instant>,
    rng: u64,
    tx_sequence: u32,
    rx_sequence: Option<u32>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl Session {
    pub fn new(cfg: Config, now: Instant) -> Session {
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ cfg.local_discriminator as u64;
        Session {
            cfg,
            state: State::Down,
            remote_state: State::Down,
            remote_discriminator: 0,
            diag: Diag::None,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: Duration::ZERO,
            remote_detect_mult: 0,
            polling: false,
            send_final: false,
            next_tx: Some(now),
            detect_at: None,
            rng: seed | 1,
            tx_sequence: 1,
            rx_sequence: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn diag(&self) -> Diag {
        self.diag
    }
    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discriminator
    }
    /// The state the peer last said it was in.
    pub fn remote_state(&self) -> State {
        self.remote_state
    }
    pub fn local_discriminator(&self) -> u32 {
        self.cfg.local_discriminator
    }

    /// Our DesiredMinTxInterval now: at least a second unless Up (§6.8.3).
    fn desired_min_tx(&self) -> Duration {
        if self.state == State::Up {
            self.cfg.desired_min_tx
        } else {
            self.cfg.desired_min_tx.max(SLOW)
        }
    }

    /// The interval we transmit at: the larger of ours and what the peer
    /// can receive (§6.8.2).
    pub fn transmit_interval(&self) -> Duration {
        self.desired_min_tx().max(self.remote_min_rx)
    }

    /// How long without a packet before the session goes down (§6.8.4).
    pub fn detection_time(&self) -> Duration {
        self.cfg.required_min_rx.max(self.remote_desired_min_tx) * self.remote_detect_mult as u32
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        // §6.8.7: 75–100% of the interval (75–90% with a multiplier of 1).
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = if self.cfg.detect_mult == 1 { 15 } else { 25 };
        let pct = 75 + (self.rng % (span + 1));
        d * pct as u32 / 100
    }

    fn set_state(&mut self, to: State, diag: Diag) {
        if self.state == to {
            return;
        }
        let from = self.state;
        self.state = to;
        self.diag = diag;
        self.events
            .push_back(Event::StateChanged { from, to, diag });
        // Going Up or leaving it changes DesiredMinTx: a Poll Sequence
        // tells the peer (§6.8.3).
        if to == State::Up || from == State::Up {
            self.polling = true;
        }
        if to == State::Down || to == State::AdminDown {
            self.polling = false;
        }
    }

    fn packet(&mut self) -> Vec<u8> {
        let final_ = std::mem::take(&mut self.send_final);
        let auth = self.cfg.auth.as_ref().map(|a| match a {
            AuthConfig::SimplePassword { key_id, password } => Auth::SimplePassword {
                key_id: *key_id,
                password: password.clone(),
            },
            AuthConfig::Sha1 {
                key_id, meticulous, ..
            } => Auth::Sha1 {
                meticulous: *meticulous,
                key_id: *key_id,
                sequence: self.tx_sequence,
                hash: [0; 20],
            },
        });
        self.tx_sequence = self.tx_sequence.wrapping_add(1);
        let key: &[u8] = match &self.cfg.auth {
            Some(AuthConfig::Sha1 { key, .. }) => key,
            _ => &[],
        };
        Packet {
            diag: self.diag,
            state: self.state,
            // §6.5: a packet never carries both.
            poll: self.polling && !final_,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.cfg.detect_mult,
            my_discriminator: self.cfg.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx: self.desired_min_tx().as_micros().min(u32::MAX as u128) as u32,
            required_min_rx: self.cfg.required_min_rx.as_micros().min(u32::MAX as u128) as u32,
            required_min_echo_rx: 0,
            auth,
        }
        .encode(key)
    }

    fn send_now(&mut self, now: Instant) {
        let p = self.packet();
        self.transmit.push_back(p);
        let i = self.transmit_interval();
        self.next_tx = Some(now + self.jittered(i));
    }

    /// Whether [`Session::take_over`] may be tried: nothing heard from the
    /// peer yet.
    pub fn is_fresh(&self) -> bool {
        self.state == State::Down && self.remote_discriminator == 0
    }

    /// Takes over a session the peer still holds Up (or Init) with another
    /// system that answered at our address before: the hypervisor a
    /// migrated VM left, which had the same gateway address. The peer's
    /// packet names that system's discriminator, not ours.
    ///
    /// An extension to §6.8.6, which would discard the packet and leave
    /// the peer to time out, take its BGP session down with it, and wait
    /// out its restart delays. Instead the session goes to Init and tells
    /// the peer so: a peer in Up stays Up on Init (§6.2), now knows our
    /// discriminator, and its next packet brings us Up. Only for a
    /// [`Session::is_fresh`] session; authentication is checked as usual.
    pub fn take_over(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Discard> {
        let p = Packet::decode(bytes)?;
        if !self.is_fresh() {
            return Err(Discard::NotForSession("take-over of a session in use"));
        }
        if !matches!(p.state, State::Up | State::Init) || p.your_discriminator == 0 {
            return Err(Discard::NotForSession("nothing to take over"));
        }
        self.authenticate(bytes, &p)?;
        self.remote_discriminator = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_min_rx = Duration::from_micros(p.required_min_rx as u64);
        self.remote_desired_min_tx = Duration::from_micros(p.desired_min_tx as u64);
        self.remote_detect_mult = p.detect_mult;
        self.set_state(State::Init, Diag::None);
        self.detect_at = Some(now + self.detection_time());
        self.send_now(now);
        Ok(())
    }

    /// A packet from the peer (§6.8.6). Discarded packets change nothing.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Discard> {
        let p = Packet::decode(bytes)?;
        self.authenticate(bytes, &p)?;
        if p.your_discriminator == 0 && !matches!(p.state, State::Down | State::AdminDown) {
            return Err(Discard::NotForSession("your discriminator 0 outside Down"));
        }
        if p.your_discriminator != 0 && p.your_discriminator != self.cfg.local_discriminator {
            return Err(Discard::NotForSession("your discriminator is not ours"));
        }
        // Pinned and Up, the peer is known by its discriminator: a packet
        // with another one is somebody else's (a forgery, or the peer's
        // new session, which the detection time lets in once this one is
        // down).
        if self.cfg.pin_peer
            && self.state == State::Up
            && p.my_discriminator != self.remote_discriminator
        {
            return Err(Discard::NotForSession(
                "my discriminator is not the peer's, and the session is up",
            ));
        }
        self.remote_discriminator = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_min_rx = Duration::from_micros(p.required_min_rx as u64);
        self.remote_desired_min_tx = Duration::from_micros(p.desired_min_tx as u64);
        self.remote_detect_mult = p.detect_mult;
        if p.final_ {
            self.polling = false;
        }
        if self.state == State::AdminDown {
            return Ok(());
        }
        if p.state == State::AdminDown {
            if self.state != State::Down {
                self.set_state(State::Down, Diag::NeighborSignaledSessionDown);
            }
        } else {
            match (self.state, p.state) {
                (State::Down, State::Down) => self.set_state(State::Init, Diag::None),
                (State::Down, State::Init) => self.set_state(State::Up, Diag::None),
                (State::Init, State::Init | State::Up) => self.set_state(State::Up, Diag::None),
                (State::Up, State::Down) => {
                    self.set_state(State::Down, Diag::NeighborSignaledSessionDown)
                }
                _ => {}
            }
        }
        // The detection timer runs from every valid packet once the peer
        // is known.
        self.detect_at = (self.state != State::Down || p.state != State::Down)
            .then(|| now + self.detection_time());
        if p.poll {
            // §6.5: answer a Poll with a Final at once.
            self.send_final = true;
            self.send_now(now);
        } else if matches!(self.state, State::Init | State::Up) && self.polling {
            // Tell the peer our new timers promptly.
            self.send_now(now);
        }
        Ok(())
    }

    /// Checks the packet's authentication against ours (§6.7).
    fn authenticate(&mut self, bytes: &[u8], p: &Packet) -> Result<(), Discard> {
        match (&self.cfg.auth, &p.auth) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(Discard::BadAuth(
                    "authentication present but not configured",
                ))
            }
            (Some(_), None) => return Err(Discard::BadAuth("authentication required")),
            (
                Some(AuthConfig::SimplePassword { key_id, password }),
                Some(Auth::SimplePassword {
                    key_id: k,
                    password: pw,
                }),
            ) => {
                if k != key_id || pw != password {
                    return Err(Discard::BadAuth("wrong password"));
                }
            }
            (
                Some(AuthConfig::Sha1 {
                    key_id,
                    key,
                    meticulous,
                }),
                Some(Auth::Sha1 {
                    key_id: k,
                    sequence,
                    ..
                }),
            ) => {
                if k != key_id || !verify_sha1(bytes, key) {
                    return Err(Discard::BadAuth("wrong SHA1 digest"));
                }
                // §6.7.4: sequence numbers must not go back (meticulous:
                // must go forward).
                if let Some(last) = self.rx_sequence {
                    let delta = sequence.wrapping_sub(last);
                    let ok = if *meticulous {
                        delta != 0 && delta < 1 << 31
                    } else {
                        delta < 1 << 31
                    };
                    if !ok {
                        return Err(Discard::BadAuth("sequence number went back"));
                    }
                }
                self.rx_sequence = Some(*sequence);
            }
            _ => return Err(Discard::BadAuth("wrong authentication type")),
        }
        Ok(())
    }

    /// Sets the session AdminDown (§6.8.16): the peer is told, nothing goes
    /// up until [`Session::admin_up`].
    pub fn admin_down(&mut self, now: Instant) {
        self.set_state(State::AdminDown, Diag::AdministrativelyDown);
        self.detect_at = None;
        self.send_now(now);
    }

    pub fn admin_up(&mut self, now: Instant) {
        if self.state == State::AdminDown {
            self.set_state(State::Down, Diag::None);
            self.send_now(now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.detect_at.is_some_and(|t| t <= now) {
            self.detect_at = None;
            if matches!(self.state, State::Init | State::Up) {
                // §6.8.4: detection time expired.
                self.set_state(State::Down, Diag::ControlDetectionTimeExpired);
                self.remote_discriminator = 0;
                self.remote_min_rx = Duration::from_micros(1);
            }
        }
        if self.next_tx.is_some_and(|t| t <= now) {
            self.send_now(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_tx, self.detect_at].into_iter().flatten().min()
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;

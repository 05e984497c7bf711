//! The BGP finite state machine (RFC 4271 §8), without IO.
//!
//! A [`Session`] is driven the way quinn-proto drives a connection: the
//! caller feeds it what happened ([`Session::start`], [`Session::connected`],
//! [`Session::receive`], [`Session::handle_timeout`], …) with the current
//! time, then drains what it wants done: bytes to send
//! ([`Session::poll_transmit`]), events ([`Session::poll_event`]: open or
//! close the TCP connection, the session is up or down, an UPDATE arrived),
//! and when to call back ([`Session::poll_timeout`]).
//!
//! One `Session` is one TCP connection's worth of protocol; two connections
//! to the same peer collide and are resolved with [`crate::collision`].

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::capability::{Capability, ExtendedNextHop, GracefulRestart, GracefulRestartFamily};
use crate::message::{self, Message, RouteRefresh};
use crate::notification::{self, Notification};
use crate::open::Open;
use crate::update::Update;
use crate::{AfiSafi, Context};

/// RFC 4271 §8.2.2 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which ASNs the peer may have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteAs {
    /// Exactly this one.
    Exact(u32),
    /// Any ASN but ours (eBGP).
    External,
    /// Ours (iBGP).
    Internal,
    /// Any ASN within one of these inclusive ranges.
    Ranges(Vec<(u32, u32)>),
}

impl RemoteAs {
    /// Whether a peer of AS `asn` may have the session. AS 0 never may
    /// (RFC 7607 §2: an OPEN from AS 0 is a Bad Peer AS).
    pub fn accepts(&self, local_as: u32, asn: u32) -> bool {
        if asn == 0 {
            return false;
        }
        match *self {
            RemoteAs::Exact(a) => a == asn,
            RemoteAs::External => asn != local_as,
            RemoteAs::Internal => asn == local_as,
            RemoteAs::Ranges(ref r) => r.iter().any(|&(a, b)| (a..=b).contains(&asn)),
        }
    }
}

/// Configuration of one session.
#[derive(Clone, Debug)]
pub struct Config {
    pub local_as: u32,
    pub remote_as: RemoteAs,
    pub router_id: Ipv4Addr,
    /// Hold time we propose; the smaller of both sides' wins (§4.2).
    pub hold_time: u16,
    /// ConnectRetryTimer, also the wait before an automatic restart.
    pub connect_retry: Duration,
    /// Each connection that ends (or attempt that runs out) without a
    /// BGP message from the peer doubles the wait before the next, up to
    /// this; the peer's first message resets it. Equal to
    /// `connect_retry`: no back-off.
    pub connect_retry_max: Duration,
    /// Only wait for the peer to connect (§8.1.1 PassiveTcpEstablishment).
    pub passive: bool,
    /// Families offered in the multiprotocol capability.
    pub families: Vec<AfiSafi>,
    /// Offer IPv4 unicast with IPv6 next hops (RFC 8950).
    pub extended_next_hop: bool,
    /// Graceful restart capability to send (RFC 4724); `None` sends none.
    pub graceful_restart: Option<u16>,
    /// We are restarting with our forwarding state kept (RFC 4724 §4.1):
    /// the Restart State bit and every family's Forwarding State bit.
    pub restarting: bool,
    /// Each UPDATE's bytes as received go out too ([`Event::RawUpdate`],
    /// before its [`Event::Update`]): for a BMP monitor.
    pub keep_raw_updates: bool,
}

impl Config {
    fn capabilities(&self) -> Vec<Capability> {
        let mut caps: Vec<Capability> = self
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        caps.push(Capability::RouteRefresh);
        if self.extended_next_hop && self.families.contains(&AfiSafi::IPV4_UNICAST) {
            caps.push(Capability::ExtendedNextHop(vec![ExtendedNextHop {
                nlri: AfiSafi::IPV4_UNICAST,
                next_hop_afi: 2,
            }]));
        }
        if let Some(time) = self.graceful_restart {
            caps.push(Capability::GracefulRestart(GracefulRestart {
                restarting: self.restarting,
                notification: false,
                restart_time: time.min(0x0fff),
                families: self
                    .families
                    .iter()
                    .map(|f| GracefulRestartFamily {
                        family: *f,
                        forwarding_preserved: self.restarting,
                    })
                    .collect(),
            }));
        }
        caps.push(Capability::FourOctetAs(self.local_as));
        caps
    }
}

/// What was agreed in the OPEN exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_as: u32,
    pub remote_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    pub context: Context,
    pub route_refresh: bool,
    /// The peer's graceful restart capability, if it sent one.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// Every capability the peer sent, unknown ones included.
    pub peer_capabilities: Vec<Capability>,
}

/// Why a session left OpenSent or later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    NotificationSent(Notification),
    NotificationReceived(Notification),
    ConnectionClosed,
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::NotificationSent(n) => write!(f, "sent {n}"),
            DownReason::NotificationReceived(n) => write!(f, "received {n}"),
            DownReason::ConnectionClosed => write!(f, "connection closed"),
        }
    }
}

/// What the session asks of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open a TCP connection to the peer, then call `connected` or
    /// `connect_failed`.
    Connect,
    /// Close the TCP connection once the queued bytes are sent.
    Disconnect,
    StateChanged {
        from: State,
        to: State,
    },
    Established(Box<Negotiated>),
    /// The session left Established (never sent for sessions that did not
    /// reach it); everything learned from it is gone.
    Down(DownReason),
    Update(Box<Update>),
    /// The next UPDATE's bytes as received, whole message (only with
    /// `keep_raw_updates`).
    RawUpdate(Vec<u8>),
    RouteRefresh(AfiSafi),
}

/// Hold time used until the OPEN exchange is done (§8.2.2: "large value").
const OPEN_HOLD: Duration = Duration::from_secs(240);

pub struct Session {
    config: Config,
    state: State,
    /// False after `stop`: no automatic restart.
    enabled: bool,
    /// The current connection was accepted, not opened by us.
    inbound: bool,
    rx: Vec<u8>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    connect_retry_at: Option<Instant>,
    /// The ConnectRetryTime in force: `connect_retry`, doubled for each
    /// attempt nobody answered.
    retry_delay: Duration,
    /// The peer spoke BGP (a message came) since the last connection
    /// that ended without one.
    answered: bool,
    /// The current connection brought a BGP message.
    heard: bool,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    negotiated: Option<Negotiated>,
    remote_open: Option<Open>,
    last_error: Option<DownReason>,
    /// Messages decoded, by type code (1 OPEN … 5 ROUTE-REFRESH).
    received: [u64; 6],
    /// Settings for the next connection (`set_config` while one is open).
    next_config: Option<Config>,
}

impl Session {
    pub fn new(config: Config) -> Session {
        Session {
            retry_delay: config.connect_retry,
            answered: false,
            heard: false,
            config,
            state: State::Idle,
            enabled: false,
            inbound: false,
            rx: Vec::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            connect_retry_at: None,
            hold_at: None,
            keepalive_at: None,
            negotiated: None,
            remote_open: None,
            last_error: None,
            received: [0; 6],
            next_config: None,
        }
    }

    /// New settings (a reload): at once if no connection is open, else
    /// from the next connection on; the open one keeps what it
    /// negotiated.
    pub fn set_config(&mut self, config: Config) {
        match self.state {
            State::Idle | State::Connect | State::Active => {
                self.retry_delay = config.connect_retry;
                self.config = config
            }
            State::OpenSent | State::OpenConfirm | State::Established => {
                self.next_config = Some(config)
            }
        }
    }

    /// A new maximum wait between attempts (see `Config::connect_retry_max`),
    /// in force at once.
    pub fn set_connect_retry_max(&mut self, max: Duration) {
        self.config.connect_retry_max = max;
        if let Some(next) = self.next_config.as_mut() {
            next.connect_retry_max = max;
        }
        self.retry_delay = self.retry_delay.min(max.max(self.config.connect_retry));
    }

    /// Messages received on this session so far, indexed by type code
    /// (1 OPEN, 2 UPDATE, 3 NOTIFICATION, 4 KEEPALIVE, 5 ROUTE-REFRESH).
    pub fn messages_received(&self) -> [u64; 6] {
        self.received
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }
    /// The peer's OPEN, once received.
    pub fn remote_open(&self) -> Option<&Open> {
        self.remote_open.as_ref()
    }
    pub fn is_inbound(&self) -> bool {
        self.inbound
    }
    /// Whether the peer answered: a BGP message came since the last
    /// connection that ended without one (refused, timed out, or closed
    /// before the peer said anything).
    pub fn answered(&self) -> bool {
        self.answered
    }
    /// The wait between connection attempts now (backed off while nobody
    /// answers).
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }
    pub fn last_error(&self) -> Option<&DownReason> {
        self.last_error.as_ref()
    }
    /// The context to encode UPDATEs with (defaults before Established).
    pub fn context(&self) -> Context {
        self.negotiated
            .as_ref()
            .map(|n| n.context.clone())
            .unwrap_or_default()
    }
    /// When the hold timer will expire, if it runs.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.hold_at
    }
    pub fn keepalive_deadline(&self) -> Option<Instant> {
        self.keepalive_at
    }

    fn set_state(&mut self, to: State) {
        if self.state != to {
            let from = self.state;
            self.state = to;
            self.events.push_back(Event::StateChanged { from, to });
        }
    }

    /// ManualStart / ManualStart_with_PassiveTcpEstablishment (§8.1.2).
    /// An operator's start also ends any back-off.
    ///
    /// (`set_connect_retry_max` changes the back-off of a running session.)
    pub fn start(&mut self, now: Instant) {
        self.enabled = true;
        if self.state != State::Idle {
            return;
        }
        self.retry_delay = self.config.connect_retry;
        self.begin(now);
    }

    fn begin(&mut self, now: Instant) {
        self.inbound = false;
        self.heard = false;
        if self.config.passive {
            self.connect_retry_at = None;
            self.set_state(State::Active);
        } else {
            self.connect_retry_at = Some(now + self.retry_delay);
            self.set_state(State::Connect);
            self.events.push_back(Event::Connect);
        }
    }

    /// ManualStop (§8.1.2): Cease with a shutdown communication if a
    /// connection is open, then Idle with no automatic restart.
    pub fn stop(&mut self, now: Instant, notification: Notification) {
        self.enabled = false;
        match self.state {
            State::OpenSent | State::OpenConfirm | State::Established => {
                self.fail(now, DownReason::NotificationSent(notification));
            }
            State::Idle => {}
            State::Connect | State::Active => {
                self.events.push_back(Event::Disconnect);
                self.enter_idle(now);
            }
        }
    }

    /// Ends the session with `notification` because of something the peer
    /// did (e.g. too many prefixes); it restarts by itself after the
    /// ConnectRetryTime, like after any other error.
    pub fn reset(&mut self, now: Instant, notification: Notification) {
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            self.fail(now, DownReason::NotificationSent(notification));
        }
    }

    /// Drops the connection without a NOTIFICATION, as a restarting
    /// speaker does so that its peers keep its routes (RFC 4724 §4.1); no
    /// automatic restart.
    pub fn abort(&mut self, now: Instant) {
        self.enabled = false;
        if self.state != State::Idle {
            self.events.push_back(Event::Disconnect);
            self.enter_idle(now);
        }
    }

    /// Something outside BGP says the peer has just become reachable (a
    /// VM's link-layer address became known: it runs, or runs here now).
    /// A session waiting to try again (Idle after an error, or Active after
    /// a failed attempt) tries at once, its back-off ended; so does one
    /// with an attempt in flight, made anew (its SYN may wait for a TCP
    /// retransmission, or have gone nowhere). One up, stopped or passive
    /// is left alone. Returns whether an attempt starts.
    pub fn retry_now(&mut self, now: Instant) -> bool {
        let waiting = match self.state {
            State::Idle => self.enabled,
            State::Active => self.connect_retry_at.is_some(),
            State::Connect => true,
            _ => false,
        };
        if !waiting || self.config.passive {
            return false;
        }
        self.retry_delay = self.config.connect_retry;
        self.begin(now);
        true
    }

    /// Our outgoing TCP connection is up (§8.1.4 Event 16/17).
    pub fn connected(&mut self, now: Instant) {
        match self.state {
            State::Connect | State::Active => self.send_open(now),
            _ => {}
        }
    }

    /// The peer's TCP connection was accepted for this session. Returns
    /// false (and changes nothing) if this session cannot take it; the
    /// caller then starts a second session for it (collision, §6.8).
    pub fn accepted(&mut self, now: Instant) -> bool {
        match self.state {
            State::Idle | State::Connect | State::Active => {
                self.enabled = true;
                self.inbound = true;
                self.heard = false;
                self.send_open(now);
                true
            }
            _ => false,
        }
    }

    /// Our outgoing connection attempt failed (§8.1.4 Event 18).
    pub fn connect_failed(&mut self, now: Instant) {
        if self.state == State::Connect {
            // Stay in Active until the ConnectRetryTimer fires again, no
            // later than the wait now in force (`set_connect_retry_max`
            // may just have shortened it).
            let at = now + self.retry_delay;
            self.connect_retry_at = Some(self.connect_retry_at.map_or(at, |t| t.min(at)));
            self.answered = false;
            self.set_state(State::Active);
        }
    }

    /// The TCP connection closed under us (§8.1.4 Event 18).
    pub fn closed(&mut self, now: Instant) {
        match self.state {
            State::OpenSent | State::OpenConfirm | State::Established => {
                self.last_error = Some(DownReason::ConnectionClosed);
                // Our half of the socket must go too (no CLOSE_WAIT).
                self.events.push_back(Event::Disconnect);
                if self.state == State::Established {
                    self.events
                        .push_back(Event::Down(DownReason::ConnectionClosed));
                }
                self.enter_idle(now);
            }
            _ => {}
        }
    }

    /// Whether each UPDATE's bytes go out too (`keep_raw_updates`), from
    /// the next bytes received on.
    pub fn set_keep_raw_updates(&mut self, on: bool) {
        self.config.keep_raw_updates = on;
    }

    /// The OPEN sent on the current connection (made again from the
    /// settings it was sent with), once one was.
    pub fn sent_open(&self) -> Option<Open> {
        matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        )
        .then(|| self.open())
    }

    fn open(&self) -> Open {
        Open::new(
            self.config.local_as,
            self.config.hold_time,
            self.config.router_id,
            self.config.capabilities(),
        )
    }

    fn send_open(&mut self, now: Instant) {
        let open = self.open();
        self.rx.clear();
        self.transmit
            .push_back(Message::Open(open).encode(&Context::default()));
        self.connect_retry_at = None;
        self.hold_at = Some(now + OPEN_HOLD);
        self.set_state(State::OpenSent);
    }

    /// Queues bytes for the peer (an UPDATE encoded with
    /// [`Session::context`]); ignored unless Established.
    pub fn send(&mut self, now: Instant, bytes: Vec<u8>) {
        if self.state != State::Established {
            return;
        }
        self.transmit.push_back(bytes);
        // §4.4: each UPDATE also resets the KeepaliveTimer.
        self.arm_keepalive(now);
    }

    /// Sends a ROUTE-REFRESH for `family` if the peer supports it.
    pub fn request_refresh(&mut self, family: AfiSafi) -> bool {
        let ok = self.state == State::Established
            && self.negotiated.as_ref().is_some_and(|n| n.route_refresh);
        if ok {
            let m = Message::RouteRefresh(RouteRefresh { family, subtype: 0 });
            self.transmit.push_back(m.encode(&self.context()));
        }
        ok
    }

    /// Closes this connection because it lost a collision (§6.8).
    pub fn close_collision(&mut self, now: Instant) {
        let n = Notification::new(
            notification::code::CEASE,
            notification::cease::CONNECTION_COLLISION_RESOLUTION,
        );
        self.enabled = false;
        self.fail(now, DownReason::NotificationSent(n));
    }

    /// Bytes from the peer.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) {
        if !matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            return;
        }
        self.rx.extend_from_slice(bytes);
        // The context changes only with the state (an OPEN received).
        let mut cxt = self.context();
        // Messages are taken from the front; what they used goes at once
        // at the end (a read holds many).
        let mut at = 0;
        loop {
            let (msg, used) = match Message::decode(&self.rx[at..], &cxt) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(n) => {
                    self.fail(now, DownReason::NotificationSent(n));
                    return;
                }
            };
            if let Some(n) = self.received.get_mut(self.rx[at + 18] as usize) {
                *n += 1;
            }
            if !self.heard {
                self.heard = true;
                self.answered = true;
                self.retry_delay = self.config.connect_retry;
            }
            if self.config.keep_raw_updates
                && self.state == State::Established
                && matches!(msg, Message::Update(_))
            {
                let raw = self.rx[at..at + used].to_vec();
                self.events.push_back(Event::RawUpdate(raw));
            }
            at += used;
            let state = self.state;
            self.handle_message(now, msg);
            if !matches!(
                self.state,
                State::OpenSent | State::OpenConfirm | State::Established
            ) {
                return;
            }
            if self.state != state {
                cxt = self.context();
            }
        }
        self.rx.drain(..at);
    }

    fn handle_message(&mut self, now: Instant, msg: Message) {
        if let Message::Notification(n) = msg {
            // §6.4: a NOTIFICATION closes the connection; nothing is sent back.
            self.last_error = Some(DownReason::NotificationReceived(n.clone()));
            self.events.push_back(Event::Disconnect);
            if self.state == State::Established {
                self.events
                    .push_back(Event::Down(DownReason::NotificationReceived(n)));
            }
            self.enter_idle(now);
            return;
        }
        let fsm_error =
            |sub| DownReason::NotificationSent(Notification::new(notification::code::FSM, sub));
        match (self.state, msg) {
            (State::OpenSent, Message::Open(open)) => self.handle_open(now, open),
            (State::OpenSent, _) => {
                self.fail(now, fsm_error(notification::fsm::UNEXPECTED_IN_OPENSENT))
            }
            (State::OpenConfirm, Message::Keepalive) => {
                self.restart_hold(now);
                self.set_state(State::Established);
                let n = self.negotiated.clone().expect("negotiated in OpenConfirm");
                self.events.push_back(Event::Established(Box::new(n)));
            }
            (State::OpenConfirm, _) => {
                self.fail(now, fsm_error(notification::fsm::UNEXPECTED_IN_OPENCONFIRM))
            }
            (State::Established, Message::Keepalive) => self.restart_hold(now),
            (State::Established, Message::Update(u)) => {
                self.restart_hold(now);
                self.events.push_back(Event::Update(u));
            }
            (State::Established, Message::RouteRefresh(r)) => {
                self.restart_hold(now);
                // RFC 7313 §4: only subtype 0 asks for a refresh; BoRR/EoRR
                // (1, 2) mark a refresh we asked for, others are ignored.
                if r.subtype == 0 && self.context().has_family(r.family) {
                    self.events.push_back(Event::RouteRefresh(r.family));
                }
            }
            (State::Established, _) => {
                self.fail(now, fsm_error(notification::fsm::UNEXPECTED_IN_ESTABLISHED))
            }
            _ => {}
        }
    }

    fn handle_open(&mut self, now: Instant, open: Open) {
        let asn = open.asn();
        let cfg = &self.config;
        if !cfg.remote_as.accepts(cfg.local_as, asn) {
            // §6.2: Bad Peer AS; the data is the AS field received.
            let n = Notification::with_data(
                notification::code::OPEN_MESSAGE,
                notification::open::BAD_PEER_AS,
                open.my_as.to_be_bytes(),
            );
            return self.fail(now, DownReason::NotificationSent(n));
        }
        // RFC 6286 §2.1: identifiers must differ within an AS.
        if asn == cfg.local_as && open.bgp_id == cfg.router_id {
            let n = Notification::new(
                notification::code::OPEN_MESSAGE,
                notification::open::BAD_BGP_IDENTIFIER,
            );
            return self.fail(now, DownReason::NotificationSent(n));
        }
        let hold_time = cfg.hold_time.min(open.hold_time);
        let peer_families = open.families();
        let ours: Vec<AfiSafi> = if cfg.families.is_empty() {
            vec![AfiSafi::IPV4_UNICAST]
        } else {
            cfg.families.clone()
        };
        let families: Vec<AfiSafi> = ours
            .into_iter()
            .filter(|f| peer_families.contains(f))
            .collect();
        let peer_ext_nh = open.capabilities.iter().any(|c| match c {
            Capability::ExtendedNextHop(e) => e
                .iter()
                .any(|e| e.nlri == AfiSafi::IPV4_UNICAST && e.next_hop_afi == 2),
            _ => false,
        });
        let negotiated = Negotiated {
            remote_as: asn,
            remote_id: open.bgp_id,
            hold_time,
            keepalive: hold_time / 3,
            context: Context {
                four_octet_as: open.four_octet_as(),
                families,
                ipv4_over_ipv6_next_hop: cfg.extended_next_hop && peer_ext_nh,
                max_message_len: message::MAX_MESSAGE_LEN,
                external: asn != cfg.local_as,
            },
            route_refresh: open
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::RouteRefresh)),
            peer_graceful_restart: open.capabilities.iter().find_map(|c| match c {
                Capability::GracefulRestart(g) => Some(g.clone()),
                _ => None,
            }),
            peer_capabilities: open.capabilities.clone(),
        };
        self.negotiated = Some(negotiated);
        self.remote_open = Some(open);
        self.transmit
            .push_back(Message::Keepalive.encode(&Context::default()));
        self.restart_hold(now);
        self.arm_keepalive(now);
        self.set_state(State::OpenConfirm);
    }

    fn restart_hold(&mut self, now: Instant) {
        let hold = self.negotiated.as_ref().map_or(0, |n| n.hold_time);
        // §4.4: a hold time of zero means no keepalives and no hold timer.
        self.hold_at = (hold > 0).then(|| now + Duration::from_secs(hold as u64));
    }

    fn arm_keepalive(&mut self, now: Instant) {
        let ka = self.negotiated.as_ref().map_or(0, |n| n.keepalive);
        self.keepalive_at = (ka > 0).then(|| now + Duration::from_secs(ka as u64));
    }

    /// Sends `reason`'s NOTIFICATION (if it is one we send), closes, and goes
    /// to Idle.
    fn fail(&mut self, now: Instant, reason: DownReason) {
        if let DownReason::NotificationSent(n) = &reason {
            self.transmit
                .push_back(Message::Notification(n.clone()).encode(&Context::default()));
        }
        self.events.push_back(Event::Disconnect);
        if self.state == State::Established {
            self.events.push_back(Event::Down(reason.clone()));
        }
        self.last_error = Some(reason);
        self.enter_idle(now);
    }

    fn enter_idle(&mut self, now: Instant) {
        self.hold_at = None;
        self.keepalive_at = None;
        self.negotiated = None;
        self.remote_open = None;
        self.rx.clear();
        self.inbound = false;
        if !std::mem::take(&mut self.heard) {
            self.back_off();
        }
        if let Some(c) = self.next_config.take() {
            self.retry_delay = c.connect_retry;
            self.config = c;
        }
        // Automatic restart (§8.1.1 AutomaticStart) after ConnectRetryTime,
        // unless stopped.
        self.connect_retry_at = self.enabled.then(|| now + self.retry_delay);
        self.set_state(State::Idle);
    }

    /// A connection ended, or an attempt ran out, without a word from the
    /// peer: the next attempt waits twice as long, up to the maximum.
    fn back_off(&mut self) {
        self.answered = false;
        self.retry_delay = (self.retry_delay * 2)
            .min(self.config.connect_retry_max.max(self.config.connect_retry));
    }

    /// The earliest time `handle_timeout` needs to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.connect_retry_at, self.hold_at, self.keepalive_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.hold_at.is_some_and(|t| t <= now) {
            // §6.5: Hold Timer Expired.
            let n = Notification::new(notification::code::HOLD_TIMER_EXPIRED, 0);
            self.fail(now, DownReason::NotificationSent(n));
            return;
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            self.transmit
                .push_back(Message::Keepalive.encode(&Context::default()));
            self.arm_keepalive(now);
        }
        if self.connect_retry_at.is_some_and(|t| t <= now) {
            self.connect_retry_at = None;
            match self.state {
                State::Idle if self.enabled => self.begin(now),
                State::Connect | State::Active if !self.config.passive => {
                    // §8.2.2: ConnectRetryTimer_Expires: drop the attempt
                    // and try again, later each time nobody answers.
                    self.back_off();
                    self.events.push_back(Event::Disconnect);
                    self.begin(now);
                }
                _ => {}
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Whether messages wait for [`Self::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;

//! BFD in the daemon: single-hop (RFC 5881) and multihop (RFC 5883)
//! sessions for BGP sessions that ask for it, driven by the sans-IO
//! [`bfd::Session`].
//!
//! One task owns every BFD session and four receiving sockets (UDP 3784
//! single-hop and 4784 multihop, IPv4 and IPv6). A single-hop packet is
//! taken only with TTL / hop limit 255 (RFC 5881 §5: it cannot have
//! crossed a router), and is matched to its session by
//! Your Discriminator, or before that by source address and the interface it
//! arrived on. Each session sends from its own socket: source port
//! 49152–65535, TTL 255, bound to the tap. When a session that was Up goes
//! Down, its BGP peer is told and ends the BGP session with Cease / BFD Down
//! (RFC 9384); a session that never came Up does not hold BGP back
//! (RFC 5882 §4.3).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub use crate::northbound::config::BfdTimers;
use crate::southbound::net::Interface;

/// BFD port for single-hop control packets (RFC 5881 §4).
const PORT: u16 = 3784;

/// How late a session's timer may be handled, to handle several in one
/// wakeup: small beside any interval (10 ms at the least) and its jitter.
const TIMER_SLACK: Duration = Duration::from_millis(2);
/// BFD port for multihop control packets (RFC 5883 §5).
const MULTIHOP_PORT: u16 = 4784;

/// Sessions are known by the peer's address and the interface.
pub type Key = (IpAddr, Option<u32>);

/// Tells the BGP session's task that the path failed.
pub type BfdNotify = Box<dyn Fn() + Send>;

pub enum BfdMsg {
    Add {
        peer: IpAddr,
        interface: Option<Interface>,
        timers: BfdTimers,
        /// Called when the session fails (it was Up, it is Down).
        notify: BfdNotify,
        name: String,
        /// Once Up, hear only the discriminator learned (a static
        /// neighbor's session).
        pin_peer: bool,
    },
    Remove(Key),
    Show(oneshot::Sender<Vec<BfdStatus>>),
}

/// One session, as `tapir show bfd` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BfdStatus {
    pub peer: String,
    pub name: String,
    pub interface: Option<String>,
    pub state: String,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    pub interval_ms: u64,
    pub detection_ms: u64,
    /// Times the session went from Up to Down.
    pub flaps: u64,
}

struct Entry {
    session: bfd::Session,
    socket: Arc<UdpSocket>,
    /// The port we send to: single-hop until the peer shows it runs the
    /// session as multihop (a BIRD VM with a `multihop` BGP session does).
    port: u16,
    local_port: u16,
    notify: BfdNotify,
    name: String,
    interface: Option<Interface>,
    /// A session without an interface (a static neighbor): the
    /// interface the kernel reaches the peer through, and when that was
    /// last asked. Packets from anywhere else are not the peer's (a VM
    /// forging the top-of-rack's address arrives on its tap).
    reached_on: Option<u32>,
    looked_up: Instant,
    was_up: bool,
    flaps: u64,
}

/// How often a static neighbor's interface may be looked up again when
/// its address shows up on another one (the route may have moved).
const LOOKUP_AGAIN: Duration = Duration::from_secs(1);

impl Entry {
    /// Whether a packet from the peer's address on `ifindex` comes from
    /// the interface the peer is on.
    fn on_peer_interface(&mut self, ifindex: u32, peer: IpAddr) -> bool {
        if let Some(i) = &self.interface {
            return i.index == ifindex;
        }
        if self.reached_on == Some(ifindex) {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.looked_up) < LOOKUP_AGAIN {
            return false;
        }
        self.looked_up = now;
        self.reached_on = crate::southbound::kernel::route_interface(peer).ok();
        self.reached_on == Some(ifindex)
    }
}

/// A received packet with what the kernel told about it.
struct Rx {
    from: IpAddr,
    ifindex: u32,
    ttl: u8,
    data: Vec<u8>,
    /// The port it came to (3784 single-hop, 4784 multihop).
    port: u16,
}

/// Requests are never dropped: a session added or removed that the BFD
/// task missed would run on, or never run, whatever BGP does. They are
/// one per session change, so the channel is unbounded.
pub fn spawn() -> std::io::Result<mpsc::UnboundedSender<BfdMsg>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let sockets = [
        rx_socket_v4(PORT)?,
        rx_socket_v6(PORT)?,
        rx_socket_v4(MULTIHOP_PORT)?,
        rx_socket_v6(MULTIHOP_PORT)?,
    ];
    crate::tasks::spawn(crate::tasks::Task::Bfd, run(rx, sockets));
    Ok(tx)
}

fn rx_socket_v4(port: u16) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", port))?;
    socket::setsockopt(&s, sockopt::Ipv4RecvTtl, &true).map_err(std::io::Error::from)?;
    socket::setsockopt(&s, sockopt::Ipv4PacketInfo, &true).map_err(std::io::Error::from)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

fn rx_socket_v6(port: u16) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
    s.set_only_v6(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    let s: std::net::UdpSocket = s.into();
    socket::setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(std::io::Error::from)?;
    socket::setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(std::io::Error::from)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Reads one packet with its TTL and incoming interface.
async fn receive(s: &UdpSocket, v6: bool, port: u16) -> std::io::Result<Rx> {
    s.async_io(Interest::READABLE, || recv_one(s, v6, port))
        .await
}

/// The packets already waiting after the one [`receive`] read: one wakeup
/// for all that arrived together.
fn receive_more(s: &UdpSocket, v6: bool, port: u16) -> Vec<std::io::Result<Rx>> {
    let mut out = Vec::new();
    while out.len() < 256 {
        match s.try_io(Interest::READABLE, || recv_one(s, v6, port)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            r => out.push(r),
        }
    }
    out
}

fn recv_one(s: &UdpSocket, v6: bool, port: u16) -> std::io::Result<Rx> {
    let fd = s.as_raw_fd();
    {
        let mut buf = [0u8; 512];
        let mut cmsg = nix::cmsg_space!(libc_in6_pktinfo, i32);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (from, n, ttl, ifindex) = if v6 {
            let m =
                socket::recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                    .map_err(std::io::Error::from)?;
            let (mut ttl, mut ifindex) = (0u8, 0u32);
            for c in m.cmsgs().map_err(std::io::Error::from)? {
                match c {
                    ControlMessageOwned::Ipv6HopLimit(h) => ttl = h.clamp(0, 255) as u8,
                    ControlMessageOwned::Ipv6PacketInfo(i) => ifindex = i.ipi6_ifindex,
                    _ => {}
                }
            }
            let a = m
                .address
                .ok_or_else(|| std::io::Error::other("no source"))?;
            (IpAddr::V6(a.ip()), m.bytes, ttl, ifindex)
        } else {
            let m = socket::recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                .map_err(std::io::Error::from)?;
            let (mut ttl, mut ifindex) = (0u8, 0u32);
            for c in m.cmsgs().map_err(std::io::Error::from)? {
                match c {
                    ControlMessageOwned::Ipv4Ttl(t) => ttl = t.clamp(0, 255) as u8,
                    ControlMessageOwned::Ipv4PacketInfo(i) => ifindex = i.ipi_ifindex as u32,
                    _ => {}
                }
            }
            let a = m
                .address
                .ok_or_else(|| std::io::Error::other("no source"))?;
            (IpAddr::V4(a.ip()), m.bytes, ttl, ifindex)
        };
        Ok(Rx {
            from,
            ifindex,
            ttl,
            data: buf[..n].to_vec(),
            port,
        })
    }
}

/// Sized like the largest control message we ask for (IPv6 packet info).
#[allow(non_camel_case_types)]
type libc_in6_pktinfo = [u8; 20];

/// A socket to send one session's packets from (RFC 5881 §4: source port
/// 49152–65535, TTL 255), bound to the tap.
fn tx_socket(
    peer: IpAddr,
    interface: Option<&Interface>,
    port: u16,
    dest_port: u16,
) -> std::io::Result<UdpSocket> {
    let domain = if peer.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
    // A session that moves to the multihop port keeps its source port.
    s.set_reuse_address(true)?;
    if let Some(i) = interface {
        s.bind_device(Some(i.name.as_bytes()))?;
    }
    let local: SocketAddr = match peer {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    };
    s.bind(&local.into())?;
    match peer {
        IpAddr::V4(_) => s.set_ttl_v4(255)?,
        IpAddr::V6(_) => {
            s.set_unicast_hops_v6(255)?;
            s.set_multicast_hops_v6(255)?;
        }
    }
    let to = match (peer, interface) {
        (IpAddr::V6(a), Some(i)) if crate::southbound::net::is_link_local(a) => {
            SocketAddr::V6(SocketAddrV6::new(a, dest_port, 0, i.index))
        }
        (a, _) => SocketAddr::new(a, dest_port),
    };
    // Single-hop peers require TTL 255 (RFC 5881 §5); multihop peers get it
    // too (RFC 5883 §2 leaves the value to us).
    s.connect(&to.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

async fn run(mut rx: mpsc::UnboundedReceiver<BfdMsg>, sockets: [UdpSocket; 4]) {
    let [v4, v6, mv4, mv6] = sockets;
    let mut sessions: HashMap<Key, Entry> = HashMap::new();
    // Each session's key by its discriminator, to find the session a
    // packet names without looking through all of them.
    let mut by_discr: HashMap<u32, Key> = HashMap::new();
    // When sessions want their timers handled. An entry may be out of
    // date (the session's deadline moved since): it is checked when due.
    // A thousand sessions at 300 ms cost one heap operation a packet, not
    // a pass over all of them.
    let mut timers: BinaryHeap<Reverse<(Instant, Key)>> = BinaryHeap::new();
    // Random, so that two hypervisors (a VM's old and new one) are unlikely
    // to hand out the same discriminators.
    let mut next_discr: u32 = {
        use std::hash::{BuildHasher, Hasher};
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u32;
        r.max(1)
    };
    let mut next_port: u16 = 49152;
    loop {
        // Timers due within TIMER_SLACK of each other are handled in one
        // wakeup (a thousand sessions at 300 ms are 3,800 deadlines a
        // second).
        let deadline = timers.peek().map(|Reverse((t, _))| *t + TIMER_SLACK);
        // The sessions to flush and re-arm after this turn.
        let mut touched: Vec<Key> = Vec::new();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { return };
                match m {
                    BfdMsg::Add { peer, interface, timers, notify, name, pin_peer } => {
                        let key = (peer, interface.as_ref().map(|i| i.index));
                        if sessions.contains_key(&key) {
                            continue;
                        }
                        let mut sock = None;
                        for _ in 0..16 {
                            let port = next_port;
                            next_port = if next_port == u16::MAX { 49152 } else { next_port + 1 };
                            match tx_socket(peer, interface.as_ref(), port, PORT) {
                                Ok(s) => { sock = Some((s, port)); break; }
                                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                                Err(e) => { warn!(%peer, error = %e, "BFD: cannot open a socket"); break; }
                            }
                        }
                        let Some((sock, local_port)) = sock else { continue };
                        next_discr = next_discr.wrapping_add(1).max(1);
                        let cfg = bfd::Config {
                            local_discriminator: next_discr,
                            desired_min_tx: timers.interval,
                            required_min_rx: timers.interval,
                            detect_mult: timers.multiplier,
                            auth: None,
                            pin_peer,
                        };
                        let reached_on = match &interface {
                            Some(_) => None,
                            None => match crate::southbound::kernel::route_interface(peer) {
                                Ok(i) => Some(i),
                                Err(e) => {
                                    warn!(%peer, error = %e, "BFD: no route to the peer yet; its packets wait for one");
                                    None
                                }
                            },
                        };
                        info!(%peer, name = %name, interval = ?timers.interval, multiplier = timers.multiplier, "BFD session started");
                        by_discr.insert(next_discr, key);
                        touched.push(key);
                        sessions.insert(key, Entry {
                            session: bfd::Session::new(cfg, Instant::now()),
                            socket: Arc::new(sock),
                            port: PORT,
                            local_port,
                            notify,
                            name,
                            interface,
                            reached_on,
                            looked_up: Instant::now(),
                            was_up: false,
                            flaps: 0,
                        });
                    }
                    BfdMsg::Remove(key) => {
                        if let Some(mut e) = sessions.remove(&key) {
                            by_discr.remove(&e.session.local_discriminator());
                            // Tell the peer (AdminDown) so it does not take
                            // our silence for a failure.
                            e.session.admin_down(Instant::now());
                            flush(&mut e).await;
                        }
                    }
                    BfdMsg::Show(tx) => {
                        let _ = tx.send(sessions.iter().map(|((peer, _), e)| BfdStatus {
                            peer: peer.to_string(),
                            name: e.name.clone(),
                            interface: e.interface.as_ref().map(|i| i.name.clone()),
                            state: e.session.state().name().to_string(),
                            local_discriminator: e.session.local_discriminator(),
                            remote_discriminator: e.session.remote_discriminator(),
                            interval_ms: e.session.transmit_interval().as_millis() as u64,
                            detection_ms: e.session.detection_time().as_millis() as u64,
                            flaps: e.flaps,
                        }).collect());
                    }
                }
            }
            r = receive(&v4, false, PORT) => deliver_all(&mut sessions, &by_discr, r, &v4, false, PORT, &mut touched),
            r = receive(&v6, true, PORT) => deliver_all(&mut sessions, &by_discr, r, &v6, true, PORT, &mut touched),
            r = receive(&mv4, false, MULTIHOP_PORT) => deliver_all(&mut sessions, &by_discr, r, &mv4, false, MULTIHOP_PORT, &mut touched),
            r = receive(&mv6, true, MULTIHOP_PORT) => deliver_all(&mut sessions, &by_discr, r, &mv6, true, MULTIHOP_PORT, &mut touched),
            _ = sleep => {
                let now = Instant::now();
                while let Some(Reverse((t, key))) = timers.peek().copied() {
                    if t > now {
                        break;
                    }
                    timers.pop();
                    // Out of date if the session is gone or its deadline
                    // moved (its current one is in the heap too).
                    if let Some(e) = sessions.get_mut(&key) {
                        if e.session.poll_timeout().is_some_and(|d| d <= now) {
                            e.session.handle_timeout(now);
                            touched.push(key);
                        }
                    }
                }
            }
        }
        for key in touched {
            if let Some(e) = sessions.get_mut(&key) {
                flush(e).await;
                if let Some(d) = e.session.poll_timeout() {
                    timers.push(Reverse((d, key)));
                }
            }
        }
    }
}

/// Hands `first` and every packet already waiting behind it on `s` to
/// their sessions (one wakeup for all that arrived together), noting the
/// sessions touched.
#[allow(clippy::too_many_arguments)]
fn deliver_all(
    sessions: &mut HashMap<Key, Entry>,
    by_discr: &HashMap<u32, Key>,
    first: std::io::Result<Rx>,
    s: &UdpSocket,
    v6: bool,
    port: u16,
    touched: &mut Vec<Key>,
) {
    for r in std::iter::once(first).chain(receive_more(s, v6, port)) {
        touched.extend(deliver(sessions, by_discr, r));
    }
}

/// Hands a packet to its session; the session's key, if one took it.
fn deliver(
    sessions: &mut HashMap<Key, Entry>,
    by_discr: &HashMap<u32, Key>,
    r: std::io::Result<Rx>,
) -> Option<Key> {
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "BFD receive failed");
            return None;
        }
    };
    // RFC 5881 §5: single-hop packets must arrive with TTL 255.
    if r.port == PORT && r.ttl != 255 {
        debug!(from = %r.from, ttl = r.ttl, "BFD packet with TTL below 255 dropped");
        return None;
    }
    let Ok(pkt) = bfd::Packet::decode(&r.data) else {
        debug!(from = %r.from, "malformed BFD packet dropped");
        return None;
    };
    // A discriminator names one of our sessions only if it is that peer's:
    // another system's discriminator (the hypervisor a VM left) may equal
    // one we gave an unrelated session.
    let named = by_discr
        .get(&pkt.your_discriminator)
        .copied()
        .filter(|k| k.0 == r.from && sessions.contains_key(k));
    let known = pkt.your_discriminator != 0 && named.is_some();
    if pkt.your_discriminator != 0 && !known {
        // Not ours: perhaps a VM that migrated here, still Up with its
        // previous hypervisor (same gateway address). A fresh session
        // with it on this tap takes that session over.
        let key = (r.from, Some(r.ifindex));
        let Some(e) = sessions.get_mut(&key) else {
            debug!(from = %r.from, "BFD packet for no session dropped");
            return None;
        };
        if !e.session.is_fresh() {
            debug!(from = %r.from, "BFD packet for another session dropped");
            return None;
        }
        match e.session.take_over(Instant::now(), &r.data) {
            Ok(()) => info!(
                name = %e.name,
                "BFD: took over the session the peer had with its previous hypervisor"
            ),
            Err(d) => {
                debug!(from = %r.from, reason = %d, "BFD packet discarded");
                return None;
            }
        }
        follow_port(e, &r);
        return Some(key);
    }
    let key = if pkt.your_discriminator != 0 {
        named?
    } else {
        if crate::southbound::net::is_link_local(match r.from {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
        }) || sessions.contains_key(&(r.from, Some(r.ifindex)))
        {
            (r.from, Some(r.ifindex))
        } else {
            (r.from, None)
        }
    };
    let Some(e) = sessions.get_mut(&key) else {
        debug!(from = %r.from, "BFD packet for no session dropped");
        return None;
    };
    // The packet must come from the session's peer, on its interface.
    if !e.on_peer_interface(r.ifindex, r.from) {
        debug!(from = %r.from, ifindex = r.ifindex, "BFD packet on the wrong interface dropped");
        return None;
    }
    let was_up = e.session.state() == bfd::State::Up;
    if let Err(d) = e.session.receive(Instant::now(), &r.data) {
        debug!(from = %r.from, reason = %d, "BFD packet discarded");
        return None;
    }
    // The port moves only on a packet the peer could not have sent
    // without hearing us: before the session is up, any that passed; once
    // up, one that names our discriminator.
    if !was_up || pkt.your_discriminator == e.session.local_discriminator() {
        follow_port(e, &r);
    }
    Some(key)
}

/// The peer runs the session on the other port (multihop, RFC 5883):
/// answer it there.
fn follow_port(e: &mut Entry, r: &Rx) {
    if r.port != e.port {
        match tx_socket(r.from, e.interface.as_ref(), e.local_port, r.port) {
            Ok(s) => {
                info!(name = %e.name, port = r.port, "BFD: the peer runs this session multihop");
                e.socket = Arc::new(s);
                e.port = r.port;
            }
            Err(err) => warn!(name = %e.name, error = %err, "BFD: cannot switch ports"),
        }
    }
}

/// Failures BFD detected since start (Up to Down, the peer not AdminDown):
/// each ended its BGP session. Kept past the session, whose own series go
/// with it.
static DETECTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many failures BFD has detected since start.
pub fn detected() -> u64 {
    DETECTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sends what the session queued and reports state changes.
async fn flush(e: &mut Entry) {
    while let Some(p) = e.session.poll_transmit() {
        let _ = e.socket.send(&p).await;
    }
    while let Some(bfd::Event::StateChanged { from, to, diag }) = e.session.poll_event() {
        info!(name = %e.name, from = from.name(), to = to.name(), ?diag, "BFD session state changed");
        if to == bfd::State::Up {
            e.was_up = true;
        }
        if from == bfd::State::Up {
            e.flaps += 1;
        }
        // RFC 5882 §3.2: a peer that says AdminDown has not failed (it is
        // being taken out of service on purpose); BGP decides for itself.
        if to == bfd::State::Down && from == bfd::State::Up && e.was_up {
            if e.session.remote_state() == bfd::State::AdminDown {
                info!(name = %e.name, "BFD: the peer went AdminDown; not a failure, BGP stays");
            } else {
                DETECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (e.notify)();
            }
        }
    }
}

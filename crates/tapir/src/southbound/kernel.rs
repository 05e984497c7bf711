//! What the kernel knows about taps, VM routes and neighbours, read and
//! followed through netlink (C3, C5, docs/design.md).
//!
//! [`watch`] subscribes to link, route and neighbour notifications first,
//! then dumps the current tables, so nothing that happens in between is
//! missed (events are idempotent, a duplicate is harmless). Everything is
//! reduced to [`KernelEvent`]s for the hypervisor task.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use futures_util::stream::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{IpVersion, MulticastGroup, RouteMessageBuilder};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::tasks::{self, Task, Thread};

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link exists (new or changed); `up` means administratively up with
    /// carrier.
    Link {
        index: u32,
        name: String,
        up: bool,
    },
    LinkGone {
        index: u32,
    },
    /// A `/32` or `/128` unicast route straight out of an interface (no
    /// gateway) in the main table, as the ifup hook installs for a VM.
    HostRoute {
        add: bool,
        addr: IpAddr,
        index: u32,
        protocol: u8,
    },
    /// A default route via a gateway in the main table (the guest role's
    /// gateway); `metric` tells two defaults apart, as the kernel does.
    DefaultRoute {
        add: bool,
        gateway: IpAddr,
        index: u32,
        metric: u32,
    },
    /// A usable IPv6 link-local neighbour on an interface.
    Neighbour {
        add: bool,
        addr: Ipv6Addr,
        index: u32,
    },
    /// The link-layer address the kernel has for a neighbour's address
    /// on an interface (`None`: none any more, or not usable).
    Lladdr {
        index: u32,
        addr: IpAddr,
        mac: Option<crate::northbound::inventory::Mac>,
    },
    /// A fresh dump of links and host routes, for a resync: notifications
    /// lost to a socket overrun are found as differences from it. (The
    /// watcher takes no other while one is held: the events' channel is
    /// unbounded.)
    Snapshot(Arc<Snapshot>),
}

/// Links and host routes as the kernel has them now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// index → (name, up).
    pub links: std::collections::BTreeMap<u32, (String, bool)>,
    /// address → (index, protocol).
    pub routes: std::collections::BTreeMap<IpAddr, (u32, u8)>,
    /// Default routes: (IPv4, index, metric, gateway), for the guest role.
    pub defaults: std::collections::BTreeSet<(bool, u32, u32, IpAddr)>,
}

impl Snapshot {
    /// The events that turn `links` and `routes` (what a follower of the
    /// notifications holds) into this snapshot.
    pub fn missed(
        &self,
        known_links: &[(u32, String, bool)],
        known_routes: &[(IpAddr, u32, u8)],
    ) -> Vec<KernelEvent> {
        let mut out = Vec::new();
        for (index, _, _) in known_links {
            if !self.links.contains_key(index) {
                out.push(KernelEvent::LinkGone { index: *index });
            }
        }
        for (index, (name, up)) in &self.links {
            let same = known_links
                .iter()
                .any(|(i, n, u)| i == index && n == name && u == up);
            if !same {
                out.push(KernelEvent::Link {
                    index: *index,
                    name: name.clone(),
                    up: *up,
                });
            }
        }
        for (addr, index, protocol) in known_routes {
            if self.routes.get(addr) != Some(&(*index, *protocol)) {
                out.push(KernelEvent::HostRoute {
                    add: false,
                    addr: *addr,
                    index: *index,
                    protocol: *protocol,
                });
            }
        }
        for (addr, (index, protocol)) in &self.routes {
            if !known_routes.contains(&(*addr, *index, *protocol)) {
                out.push(KernelEvent::HostRoute {
                    add: true,
                    addr: *addr,
                    index: *index,
                    protocol: *protocol,
                });
            }
        }
        out
    }
}

/// How often the watcher compares its view with a fresh dump.
const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// After an overrun, the resync waits this long for the burst to pass.
const OVERRUN_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Every link, as events, from a dump read one message at a time.
/// netlink-proto (`handle.link().get()`) decodes all of a dump before the
/// first message is taken, 13 KiB a link: 13 MB at a thousand taps, at
/// start and at every resync, and the heap stayed that large. `None` if
/// the dump failed: a partial list is no list (a resync would take the
/// missing links for gone).
async fn links() -> Option<Vec<KernelEvent>> {
    let e = match tasks::blocking(dump_links).await {
        Ok(Ok(v)) => return Some(v),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    warn!(error = %e, "link dump failed");
    None
}

fn dump_links() -> std::io::Result<Vec<KernelEvent>> {
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut out = Vec::new();
    let mut reply: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        reply.clear();
        if sock.recv(&mut reply, 0)? == 0 {
            return Err(bad("the dump ended without NLMSG_DONE".into()));
        }
        let mut at = 0;
        while at + 16 <= reply.len() {
            let len = u32::from_ne_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]])
                as usize;
            if len < 16 || at + len > reply.len() {
                return Err(bad(format!(
                    "a message of {len} bytes at {at} of {}",
                    reply.len()
                )));
            }
            let message = &reply[at..at + len];
            at += (len + 3) & !3;
            // One the decoder does not know is skipped, as netlink-proto
            // skips it; the others are still links.
            let m = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(message) {
                Ok(m) => m,
                Err(e) => {
                    debug!(error = %e, "a link message not understood, skipped");
                    continue;
                }
            };
            match m.payload {
                NetlinkPayload::Done(d) if d.code != 0 => {
                    return Err(std::io::Error::from_raw_os_error(-d.code));
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    return Err(std::io::Error::from_raw_os_error(code));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    out.extend(link_event(&l, false));
                }
                _ => {}
            }
        }
    }
}

/// The interface the kernel reaches `addr` through (RTM_GETROUTE, as `ip
/// route get`): where a directly connected peer's packets must come from.
/// A blocking request on a socket of its own; it takes microseconds.
pub fn route_interface(addr: IpAddr) -> std::io::Result<u32> {
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_REQUEST};
    let msg = match addr {
        IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(msg)),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut reply: Vec<u8> = Vec::with_capacity(8192);
    sock.recv(&mut reply, 0)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| bad(&e.to_string()))?;
    match m.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
            .ok_or_else(|| bad("the route names no interface")),
        NetlinkPayload::Error(e) => Err(std::io::Error::from_raw_os_error(
            e.code.map_or(0, |c| -c.get()),
        )),
        _ => Err(bad("no route in the answer")),
    }
}

/// The kernel's links and routes now; `None` if a dump failed (a partial
/// snapshot would make what it missed look gone).
async fn snapshot(handle: &rtnetlink::Handle) -> Option<Snapshot> {
    let mut s = Snapshot::default();
    for e in links().await? {
        if let KernelEvent::Link { index, name, up } = e {
            s.links.insert(index, (name, up));
        }
    }
    for v in [IpVersion::V4, IpVersion::V6] {
        let msg = match v {
            IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut routes = handle.route().get(msg).execute();
        loop {
            let m = match routes.try_next().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "route dump failed");
                    return None;
                }
            };
            match route_event(&m, true) {
                Some(KernelEvent::HostRoute {
                    add: true,
                    addr,
                    index,
                    protocol,
                }) => {
                    s.routes.insert(addr, (index, protocol));
                }
                Some(KernelEvent::DefaultRoute {
                    gateway,
                    index,
                    metric,
                    ..
                }) => {
                    s.defaults
                        .insert((gateway.is_ipv4(), index, metric, gateway));
                }
                _ => {}
            }
        }
    }
    Some(s)
}

fn link_event(m: &LinkMessage, gone: bool) -> Option<KernelEvent> {
    let index = m.header.index;
    if gone {
        return Some(KernelEvent::LinkGone { index });
    }
    let name = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let f = m.header.flags;
    let up = f.contains(LinkFlags::Up) && f.contains(LinkFlags::LowerUp);
    Some(KernelEvent::Link { index, name, up })
}

fn route_event(m: &RouteMessage, add: bool) -> Option<KernelEvent> {
    let h = &m.header;
    if h.kind != RouteType::Unicast {
        return None;
    }
    let mut table = h.table as u32;
    let mut dst = None;
    let mut oif = None;
    let mut gateway = None;
    let mut metric = 0;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Gateway(_) | RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    if h.destination_prefix_length == 0 && dst.is_none() {
        // A default route: the guest role's gateway.
        if table != RT_TABLE_MAIN {
            return None;
        }
        return Some(KernelEvent::DefaultRoute {
            add,
            gateway: gateway?,
            index: oif?,
            metric,
        });
    }
    // A route via a gateway is not a VM's own route.
    if gateway.is_some() {
        return None;
    }
    let addr = dst?;
    let host_len = if addr.is_ipv4() { 32 } else { 128 };
    if table != RT_TABLE_MAIN || h.destination_prefix_length != host_len {
        return None;
    }
    Some(KernelEvent::HostRoute {
        add,
        addr,
        index: oif?,
        protocol: u8::from(h.protocol),
    })
}

/// A neighbour entry's events: its link-layer address (any address),
/// and for an IPv6 link-local one, the neighbour itself.
fn neighbour_events(m: &NeighbourMessage, add: bool) -> Vec<KernelEvent> {
    let Some(addr) = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        _ => None,
    }) else {
        return Vec::new();
    };
    let usable = add
        && !matches!(
            m.header.state,
            NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None
        );
    let mac = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice())
            .ok()
            .map(crate::northbound::inventory::Mac),
        _ => None,
    });
    let index = m.header.ifindex;
    let mut out = Vec::with_capacity(2);
    if let IpAddr::V6(a) = addr {
        if a.segments()[0] & 0xffc0 == 0xfe80 {
            out.push(KernelEvent::Neighbour {
                add: usable,
                addr: a,
                index,
            });
        }
    }
    out.push(KernelEvent::Lladdr {
        index,
        addr,
        mac: mac.filter(|_| usable),
    });
    out
}

fn translate(msg: RouteNetlinkMessage) -> Vec<KernelEvent> {
    match msg {
        RouteNetlinkMessage::NewLink(m) => link_event(&m, false).into_iter().collect(),
        RouteNetlinkMessage::DelLink(m) => link_event(&m, true).into_iter().collect(),
        RouteNetlinkMessage::NewRoute(m) => route_event(&m, true).into_iter().collect(),
        RouteNetlinkMessage::DelRoute(m) => route_event(&m, false).into_iter().collect(),
        RouteNetlinkMessage::NewNeighbour(m) => neighbour_events(&m, true),
        RouteNetlinkMessage::DelNeighbour(m) => neighbour_events(&m, false),
        _ => Vec::new(),
    }
}

/// Follows the kernel until `tx` closes. Errors are startup errors (no
/// netlink socket); later trouble is logged.
///
/// `tx` is unbounded: netlink-proto decodes whatever the socket holds
/// (a whole dump at a time) into unbounded queues of its own, so waiting
/// on a full channel here only kept the decoded messages (3 KiB a link)
/// in those queues; a thousand taps at start held 13 MB of them. Each is
/// now made a small event at once.
pub async fn watch(tx: mpsc::UnboundedSender<KernelEvent>) -> std::io::Result<()> {
    let (mut conn, handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
    ])?;
    // A burst of link and route changes (a hypervisor starting hundreds of
    // VMs) must not overrun the socket: 8 MiB, where the default is ~200 KiB.
    {
        use netlink_sys::AsyncSocket;
        // Test builds only: `TAPIR_NETLINK_RCVBUF` makes it small, so
        // that the lab can provoke an overrun.
        let test_size: Option<usize> = if cfg!(debug_assertions) {
            std::env::var("TAPIR_NETLINK_RCVBUF")
                .ok()
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        let size = test_size.unwrap_or(8 << 20);
        // SO_RCVBUFFORCE: past net.core.rmem_max (tapir has CAP_NET_ADMIN).
        let sock = conn.socket_mut().socket_mut();
        let r = nix::sys::socket::setsockopt(&*sock, nix::sys::socket::sockopt::RcvBufForce, &size);
        if let Err(e) = r {
            warn!(error = %e, "cannot enlarge the netlink receive buffer");
        }
    }
    tasks::spawn(Task::Netlink, conn);
    // Set when notifications were lost (the socket overran): resync now
    // rather than at the next tick.
    let overrun = Arc::new(tokio::sync::Notify::new());
    let overrun2 = overrun.clone();
    let pending = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pending2 = pending.clone();
    let tx2 = tx.clone();
    tasks::spawn(Task::KernelWatcher, async move {
        for e in links().await.unwrap_or_default() {
            let _ = tx2.send(e);
        }
        for v in [IpVersion::V4, IpVersion::V6] {
            let msg = match v {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            let mut routes = handle.route().get(msg).execute();
            loop {
                match routes.try_next().await {
                    Ok(Some(m)) => {
                        if let Some(e) = route_event(&m, true) {
                            let _ = tx2.send(e);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "route dump failed");
                        break;
                    }
                }
            }
        }
        let mut neigh = handle.neighbours().get().execute();
        while let Ok(Some(m)) = neigh.try_next().await {
            for e in neighbour_events(&m, true) {
                let _ = tx2.send(e);
            }
        }
        // From now on, a resync now and then.
        let mut last = std::sync::Weak::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESYNC_EVERY) => {}
                _ = overrun2.notified() => {
                    // Let the burst that overran the socket pass first.
                    tokio::time::sleep(OVERRUN_SETTLE).await;
                }
            }
            // Not before the last one was taken: a daemon that falls
            // behind gets one at a time, not one per overrun.
            while last.strong_count() > 0 {
                if tx2.is_closed() {
                    return;
                }
                tokio::time::sleep(OVERRUN_SETTLE).await;
            }
            // An overrun from here on needs another resync.
            pending2.store(false, Relaxed);
            // A failed dump is tried again at the next tick.
            let Some(s) = snapshot(&handle).await else {
                continue;
            };
            let s = Arc::new(s);
            last = Arc::downgrade(&s);
            if tx2.send(KernelEvent::Snapshot(s)).is_err() {
                return;
            }
        }
    });
    tasks::spawn(Task::KernelWatcher, async move {
        while let Some((m, _)) = messages.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    for e in translate(inner) {
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                }
                NetlinkPayload::Overrun(_) => {
                    KERNEL_STATS.overruns.fetch_add(1, Relaxed);
                    // Logged once per burst: the resync clears the flag.
                    if !pending.swap(true, Relaxed) {
                        warn!("netlink notifications lost (socket overrun): resyncing");
                        overrun.notify_one();
                    }
                }
                _ => {}
            }
        }
        warn!("netlink notifications ended");
    });
    Ok(())
}

use crate::routing::rib::FibChange;
use bgp::Prefix;
use rtnetlink::packet_route::route::{RouteNextHop, RouteProtocol};

fn route_message(prefix: &Prefix, protocol: u8, metric: u32) -> RouteMessage {
    match *prefix {
        Prefix::V4(a, l) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, l)
            .protocol(RouteProtocol::from(protocol))
            .priority(metric)
            .build(),
        Prefix::V6(a, l) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, l)
            .protocol(RouteProtocol::from(protocol))
            .priority(metric)
            .build(),
    }
}

/// Every route of our protocol in the kernel (both families), to `f` as
/// the dump streams in; an error rather than a partial dump.
async fn each_of_ours(
    handle: &rtnetlink::Handle,
    protocol: u8,
    mut f: impl FnMut(RouteMessage),
) -> Result<(), rtnetlink::Error> {
    for v in [IpVersion::V4, IpVersion::V6] {
        let msg = match v {
            IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut routes = handle.route().get(msg).execute();
        while let Some(m) = routes.try_next().await? {
            if u8::from(m.header.protocol) == protocol {
                f(m);
            }
        }
    }
    Ok(())
}

/// Every route of our protocol in the kernel (both families).
async fn dump_ours(handle: &rtnetlink::Handle, protocol: u8) -> Vec<RouteMessage> {
    let mut out = Vec::new();
    if let Err(e) = each_of_ours(handle, protocol, |m| out.push(m)).await {
        warn!(error = %e, "route dump failed part-way");
    }
    out
}

/// The prefixes of the routes of our protocol in the kernel (kept by a
/// graceful restart).
pub async fn our_routes(protocol: u8) -> std::io::Result<Vec<Prefix>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tasks::spawn(Task::Netlink, conn);
    our_prefixes(&handle, protocol)
        .await
        .map_err(std::io::Error::other)
}

/// The prefixes of the routes of our protocol in the kernel, made while
/// the dump streams in (a million routes are never held as messages); an
/// error rather than a partial list.
pub(crate) async fn our_prefixes(
    handle: &rtnetlink::Handle,
    protocol: u8,
) -> Result<Vec<Prefix>, rtnetlink::Error> {
    let mut out = Vec::new();
    each_of_ours(handle, protocol, |m| {
        let dst = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        if let Some(p) = dst.and_then(|d| Prefix::new(d, m.header.destination_prefix_length).ok()) {
            out.push(p);
        }
    })
    .await?;
    Ok(out)
}

/// Removes routes of our protocol left by an earlier run (C9, docs/design.md).
pub async fn flush_stale(protocol: u8) -> std::io::Result<usize> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tasks::spawn(Task::Netlink, conn);
    let stale = dump_ours(&handle, protocol).await;
    let n = stale.len();
    for m in stale {
        if let Err(e) = handle.route().del(m).execute().await {
            warn!(error = %e, "cannot remove a stale route");
        }
    }
    Ok(n)
}

/// What the FIB writer did since start, for metrics.
#[derive(Default)]
pub struct KernelStats {
    pub installs: std::sync::atomic::AtomicU64,
    pub removals: std::sync::atomic::AtomicU64,
    /// Times the notification socket overran (notifications were lost).
    pub overruns: std::sync::atomic::AtomicU64,
    /// Changes a resync found that notifications had not told.
    pub resync_changes: std::sync::atomic::AtomicU64,
}

pub static KERNEL_STATS: KernelStats = KernelStats {
    installs: std::sync::atomic::AtomicU64::new(0),
    removals: std::sync::atomic::AtomicU64::new(0),
    overruns: std::sync::atomic::AtomicU64::new(0),
    resync_changes: std::sync::atomic::AtomicU64::new(0),
};

/// The kernel writer: applies batches of FIB changes from the Loc-RIB, in
/// order, each route with our protocol number and metric.
pub fn spawn_writer(
    protocol: u8,
    metric: u32,
) -> std::io::Result<mpsc::UnboundedSender<Vec<FibChange>>> {
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    // The kernel's errors for one 60 KiB write (a refusal each, at
    // worst) must fit: errors without the request copied back, and room
    // for a few thousand of them.
    sock.set_cap_ack(true)?;
    if let Err(e) =
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20))
    {
        warn!(error = %e, "cannot enlarge the FIB writer's receive buffer");
    }
    let (tx, rx) = mpsc::unbounded_channel::<Vec<FibChange>>();
    tasks::thread(Thread::Fib, move || {
        write_batches(sock, rx, protocol, metric)
    })?;
    Ok(tx)
}

use std::sync::atomic::Ordering::Relaxed;

/// The netlink message for one FIB change (None: nothing to send).
fn change_message(ch: &FibChange, protocol: u8, metric: u32) -> Option<(RouteNetlinkMessage, u16)> {
    use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
    match ch {
        FibChange::Install { prefix, hops } => {
            let prefix = *prefix;
            let mut m = route_message(&prefix, protocol, metric);
            let gw = |via: IpAddr| match (prefix, via) {
                (Prefix::V4(..), IpAddr::V4(g)) => {
                    Some(RouteAttribute::Gateway(RouteAddress::Inet(g)))
                }
                (Prefix::V6(..), IpAddr::V6(g)) => {
                    Some(RouteAttribute::Gateway(RouteAddress::Inet6(g)))
                }
                // An IPv4 prefix with an IPv6 next hop (RFC
                // 8950) needs RTA_VIA.
                (Prefix::V4(..), IpAddr::V6(g)) => Some(RouteAttribute::Via(
                    rtnetlink::packet_route::route::RouteVia::Inet6(g),
                )),
                (Prefix::V6(..), IpAddr::V4(_)) => None,
            };
            match &hops[..] {
                [] => return None,
                [(via, dev)] => {
                    let Some(a) = gw(*via) else {
                        warn!(%prefix, "IPv6 prefix with an IPv4 next hop not installed");
                        return None;
                    };
                    m.attributes.push(a);
                    #[cfg(feature = "failpoints")]
                    let dev = &refuse_failpoint(&prefix).or(*dev);
                    if let Some(d) = dev {
                        m.attributes.push(RouteAttribute::Oif(*d));
                    }
                }
                many => {
                    let hops: Vec<RouteNextHop> = many
                        .iter()
                        .filter_map(|(via, dev)| {
                            let mut h = RouteNextHop::default();
                            h.interface_index = dev.unwrap_or(0);
                            h.attributes = vec![gw(*via)?];
                            Some(h)
                        })
                        .collect();
                    m.attributes.push(RouteAttribute::MultiPath(hops));
                }
            }
            Some((
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE,
            ))
        }
        FibChange::Settings { .. } => None,
        FibChange::Remove { prefix } => {
            // Scope "nowhere" matches a route of any scope, as `ip route
            // del` does (a route without a gateway has scope link); no
            // metric matches any: a route of our protocol is ours whatever
            // its metric (one left by a run with another `metric`).
            let mut m = route_message(prefix, protocol, metric);
            m.header.scope = rtnetlink::packet_route::route::RouteScope::NoWhere;
            m.attributes
                .retain(|a| !matches!(a, RouteAttribute::Priority(_)));
            Some((RouteNetlinkMessage::DelRoute(m), NLM_F_REQUEST))
        }
    }
}

/// Writes batches of FIB changes on its own thread: many requests in one
/// `sendmsg`, no acknowledgement asked (the kernel answers only errors,
/// read between writes). A million routes go in at the kernel's pace, not
/// one round trip each.
fn write_batches(
    sock: netlink_sys::Socket,
    mut rx: mpsc::UnboundedReceiver<Vec<FibChange>>,
    mut protocol: u8,
    mut metric: u32,
) {
    // Sequence numbers: odd for installs, even for removals, so that an
    // error says which it was.
    let mut seq: u32 = 0;
    let mut w = Written {
        buf: Vec::with_capacity(WRITE_CHUNK + 4096),
        reply: Vec::with_capacity(65536),
        prefixes: Vec::new(),
        budget: Default::default(),
    };
    while let Some(batch) = rx.blocking_recv() {
        // A reload's new protocol and metric: the batch reinstalls every
        // route, and each one's route under the old ones goes after it.
        let mut old: Option<(u8, u32)> = None;
        for ch in &batch {
            if let FibChange::Settings {
                protocol: p,
                metric: m,
            } = ch
            {
                old = Some((protocol, metric)).filter(|o| *o != (*p, *m));
                (protocol, metric) = (*p, *m);
                continue;
            }
            let Some((msg, flags)) = change_message(ch, protocol, metric) else {
                continue;
            };
            let (install, prefix) = match ch {
                FibChange::Install { prefix, .. } => (true, *prefix),
                FibChange::Remove { prefix } => (false, *prefix),
                FibChange::Settings { .. } => continue,
            };
            if install {
                KERNEL_STATS.installs.fetch_add(1, Relaxed);
            } else {
                KERNEL_STATS.removals.fetch_add(1, Relaxed);
            }
            seq = seq.wrapping_add(1);
            let number = (seq << 1) | install as u32;
            w.push(&sock, msg, flags, number);
            w.prefixes.push((number, prefix));
            if let (true, Some((op, om))) = (install, old) {
                // Same protocol and metric: replaced in place, and this
                // finds nothing (a removal's error is no error).
                let mut gone = route_message(&prefix, op, om);
                gone.header.scope = rtnetlink::packet_route::route::RouteScope::NoWhere;
                seq = seq.wrapping_add(1);
                w.push(
                    &sock,
                    RouteNetlinkMessage::DelRoute(gone),
                    rtnetlink::packet_core::NLM_F_REQUEST,
                    seq << 1,
                );
            }
        }
        w.flush(&sock);
        crate::routing::rib::FIB_PROGRESS.done.fetch_add(1, Relaxed);
    }
}

/// Builds with the `failpoints` feature only (the lab tests):
/// `TAPIR_FAILPOINT=kernel-refuse:PREFIX:N` sends the first N installs
/// of PREFIX through an interface that does not exist, so that the kernel
/// refuses them (its gateway is unreachable through it: ENETUNREACH) and
/// the lab sees what tapir makes of a refusal.
#[cfg(feature = "failpoints")]
fn refuse_failpoint(prefix: &Prefix) -> Option<u32> {
    static SPEC: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static DONE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (p, n) = SPEC
        .get_or_init(|| {
            let f = crate::failpoint::arg("kernel-refuse")?;
            let (p, n) = f.rsplit_once(':')?;
            Some((p.to_string(), n.parse().ok()?))
        })
        .as_ref()?;
    (prefix.to_string() == *p && DONE.fetch_add(1, Relaxed) < *n).then_some(0x7fff_fff0)
}

/// The FIB writer's buffers: requests not yet sent, and the prefix of
/// each (by sequence number), to match the kernel's errors to.
struct Written {
    buf: Vec<u8>,
    reply: Vec<u8>,
    prefixes: Vec<(u32, Prefix)>,
    /// Refusals are logged at most so many lines in a window.
    budget: crate::log_budget::LogBudget,
}

/// Bytes of requests per `sendmsg`.
const WRITE_CHUNK: usize = 60 * 1024;

impl Written {
    /// Adds one request to `buf`, sending what is there first if it would
    /// not fit.
    fn push(
        &mut self,
        sock: &netlink_sys::Socket,
        msg: RouteNetlinkMessage,
        flags: u16,
        number: u32,
    ) {
        use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage};
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = number;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let len = m.buffer_len();
        if self.buf.len() + len > WRITE_CHUNK {
            self.flush(sock);
        }
        let at = self.buf.len();
        self.buf.resize(at + len, 0);
        m.serialize(&mut self.buf[at..]);
    }

    /// Sends what `buf` holds, then reads the errors the kernel sent back
    /// and matches them to their prefixes, in the order they were asked:
    /// a refused install stands as refused (`fib`) until one of that
    /// prefix goes through, or it is removed.
    fn flush(&mut self, sock: &netlink_sys::Socket) {
        if self.buf.is_empty() {
            return;
        }
        let sent = sock.send(&self.buf, 0);
        self.buf.clear();
        if let Err(e) = sent {
            // Nothing was applied: nothing is known of these prefixes.
            super::fib::count("write-failed");
            warn!(error = %e, "netlink write of route changes failed");
            self.prefixes.clear();
            return;
        }
        let errors = self.read_errors(sock);
        let now = std::time::Instant::now();
        for (seq, prefix) in self.prefixes.drain(..) {
            // A removal of a route already gone is no error.
            let refused = (seq & 1 == 1).then(|| errors.get(&seq)).flatten();
            let Some(&errno) = refused else {
                super::fib::clear(std::iter::once(prefix));
                continue;
            };
            let times = super::fib::record(prefix, errno);
            let v = self.budget.line(now);
            if v.held_back > 0 {
                warn!(
                    held_back = v.held_back,
                    "more routes were refused by the kernel than logged"
                );
            }
            if v.log {
                warn!(%prefix, error = %std::io::Error::from_raw_os_error(errno), reason = super::fib::errno_name(errno), times, "kernel refused a route; it is tried again");
            }
        }
    }

    /// The kernel's errors for what was sent, by sequence number.
    fn read_errors(&mut self, sock: &netlink_sys::Socket) -> std::collections::HashMap<u32, i32> {
        use rtnetlink::packet_core::NetlinkMessage;
        let mut errors = std::collections::HashMap::new();
        loop {
            self.reply.clear();
            match sock.recv(&mut self.reply, libc::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(_) => {}
                // Errors were lost (the buffer overran): read on; the
                // scan finds what they were about.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    super::fib::count("errors-lost");
                    continue;
                }
                Err(_) => break,
            }
            let reply = &self.reply;
            let mut at = 0;
            while at + 16 <= reply.len() {
                let len =
                    u32::from_ne_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]])
                        as usize;
                if len < 16 || at + len > reply.len() {
                    break;
                }
                if let Ok(m) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..at + len])
                {
                    if let (NetlinkPayload::Error(e), n) = (m.payload, m.header.sequence_number) {
                        if let Some(code) = e.code {
                            errors.insert(n, -code.get());
                        }
                    }
                }
                at += (len + 3) & !3;
            }
        }
        errors
    }
}

#[cfg(test)]
mod resync_tests {
    use super::*;

    /// What was missed is exactly the difference, both ways.
    #[test]
    fn a_snapshot_yields_the_missed_changes() {
        let a: IpAddr = "10.192.24.11".parse().unwrap();
        let b: IpAddr = "10.192.24.12".parse().unwrap();
        let c: IpAddr = "10.192.24.13".parse().unwrap();
        let known_links = vec![
            (5, "tap11".to_string(), true),
            (6, "tap12".to_string(), true),
        ];
        let known_routes = vec![(a, 5, 4), (b, 6, 4)];
        let mut s = Snapshot::default();
        // tap12 went away unnoticed; tap11 went down; tap13 came.
        s.links.insert(5, ("tap11".into(), false));
        s.links.insert(7, ("tap13".into(), true));
        s.routes.insert(a, (5, 4));
        s.routes.insert(c, (7, 4));
        let missed = s.missed(&known_links, &known_routes);
        assert_eq!(
            missed,
            vec![
                KernelEvent::LinkGone { index: 6 },
                KernelEvent::Link {
                    index: 5,
                    name: "tap11".into(),
                    up: false
                },
                KernelEvent::Link {
                    index: 7,
                    name: "tap13".into(),
                    up: true
                },
                KernelEvent::HostRoute {
                    add: false,
                    addr: b,
                    index: 6,
                    protocol: 4
                },
                KernelEvent::HostRoute {
                    add: true,
                    addr: c,
                    index: 7,
                    protocol: 4
                },
            ]
        );
        // Nothing missed: nothing to do.
        let same = s.missed(
            &[(5, "tap11".into(), false), (7, "tap13".into(), true)],
            &[(a, 5, 4), (c, 7, 4)],
        );
        assert!(same.is_empty());
    }
}

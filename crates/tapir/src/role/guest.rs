//! The guest role (C12, docs/design.md): tapir inside a VM. Its neighbor is the
//! VM's default gateway, found in the kernel's routing table and followed
//! when it changes: the IPv4 default route's next hop (on-link, no shared
//! subnet) and the IPv6 one (the hypervisor's link-local address, from a
//! static route or a router advertisement). One session per family, bound
//! to the interface, single-hop; no `multihop` anywhere.
//!
//! After a live migration the gateway has the same addresses on the new
//! hypervisor. The new hypervisor opens a session to the VM, which takes
//! the old one over at once (RFC 4724 §4.2, `PeerConfig::takeover`); BFD
//! failure or a reset from the new host end it otherwise, and the session
//! is retried after `connect-retry` (1 s), with no back-off.
//!
//! The task speaks the hypervisor role's [`RoleMsg`], so that the listener,
//! `show` and metrics treat both roles alike.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bgp::Afi;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::northbound::config::GatewayConfig;
use crate::peer::{self, DaemonHandles, PeerConfig, PeerHandle, PeerMsg};
use crate::role::RoleMsg;
use crate::southbound::kernel::KernelEvent;
use crate::southbound::net::global_address;
use crate::southbound::net::Interface;
use crate::tasks::{self, Task};

/// One gateway: its address and the interface it is reached on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gateway {
    pub address: IpAddr,
    pub index: u32,
}

struct Running {
    gateway: Gateway,
    handle: PeerHandle,
    /// Since when the kernel no longer shows this gateway.
    gone_since: Option<std::time::Instant>,
}

/// A gateway that leaves the routing table this long is given up: a
/// DHCP client or network manager that removes and re-adds the default
/// route must not cost the hypervisor a withdrawal of everything.
const GONE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

struct Guest {
    cfg: GatewayConfig,
    restart_time: u16,
    local: Arc<DaemonHandles>,
    /// index → name.
    links: BTreeMap<u32, String>,
    /// Default routes as the kernel has them: (family, interface,
    /// metric, gateway). An IPv4 default is one per (interface, metric):
    /// a new one replaces it, as `ip route replace` does; IPv6 routers
    /// (router advertisements) each have their own.
    defaults: std::collections::BTreeSet<(bool, u32, u32, IpAddr)>,
    running: Vec<Running>,
    /// Addresses already refused (logged at info once each, then at
    /// debug: a hypervisor retries every few seconds). At most
    /// REFUSED_KEPT.
    refused: std::collections::BTreeSet<IpAddr>,
}

/// Refused addresses remembered for logging, at most.
const REFUSED_KEPT: usize = 256;

pub fn spawn(
    cfg: GatewayConfig,
    restart_time: u16,
    local: Arc<DaemonHandles>,
) -> mpsc::Sender<RoleMsg> {
    let (tx, mut rx) = mpsc::channel(tasks::ROLE_MAILBOX);
    let mut g = Guest {
        cfg,
        restart_time,
        local,
        links: BTreeMap::new(),
        defaults: Default::default(),
        running: Vec::new(),
        refused: Default::default(),
    };
    tasks::spawn(Task::Role, async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let m = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = tick.tick() => {
                    g.tick().await;
                    continue;
                }
            };
            match m {
                RoleMsg::Kernel(e) => {
                    if g.kernel(e) {
                        g.follow().await;
                    }
                }
                RoleMsg::Incoming(stream, from) => g.incoming(stream, from).await,
                RoleMsg::Peers(tx) => {
                    let _ = tx.send(g.running.iter().map(|r| r.handle.clone()).collect());
                }
                RoleMsg::ShowVms(tx) => {
                    let _ = tx.send(Vec::new());
                }
                RoleMsg::VmAdd(_, tx) | RoleMsg::VmRemove(_, _, tx) => {
                    let _ = tx.send(Err(crate::role::RoleError::GuestRole));
                }
                RoleMsg::VmSync { done, .. } => {
                    let _ = done.send(Err(crate::role::RoleError::GuestRole));
                }
                RoleMsg::Reload { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                RoleMsg::Shutdown { graceful, done } => {
                    for r in std::mem::take(&mut g.running) {
                        if graceful {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            if r.handle.tx.send(PeerMsg::Abort(tx)).await.is_ok() {
                                let _ = rx.await;
                            }
                        } else {
                            crate::role::hypervisor::stop(&r.handle, "tapir shutting down").await;
                        }
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    });
    tx
}

impl Guest {
    /// Takes a kernel event in; true if the gateways may have changed.
    fn kernel(&mut self, e: KernelEvent) -> bool {
        match e {
            KernelEvent::Link { index, name, .. } => {
                let new = self.links.get(&index) != Some(&name);
                self.links.insert(index, name);
                new
            }
            KernelEvent::LinkGone { index } => {
                self.links.remove(&index);
                self.defaults.retain(|(_, i, _, _)| *i != index);
                true
            }
            KernelEvent::DefaultRoute {
                add,
                gateway,
                index,
                metric,
            } => {
                let v4 = gateway.is_ipv4();
                let key = (v4, index, metric, gateway);
                if add {
                    if v4 {
                        self.defaults
                            .retain(|(f, i, m, _)| !(*f && *i == index && *m == metric));
                    }
                    self.defaults.insert(key)
                } else {
                    self.defaults.remove(&key)
                }
            }
            // What notifications were lost: the kernel's tables afresh.
            KernelEvent::Snapshot(snap) => {
                let links: BTreeMap<u32, String> = snap
                    .links
                    .iter()
                    .map(|(i, (n, _))| (*i, n.clone()))
                    .collect();
                let defaults = snap.defaults.iter().copied().collect();
                let changed = links != self.links || defaults != self.defaults;
                if changed {
                    warn!("kernel resync: the gateways' routes had changed unseen; following them");
                }
                self.links = links;
                self.defaults = defaults;
                changed
            }
            _ => false,
        }
    }

    /// The gateways there should be sessions with.
    fn wanted(&self) -> Vec<Gateway> {
        let iface_index = |name: &str| {
            self.links
                .iter()
                .find(|(_, n)| n.as_str() == name)
                .map(|(i, _)| *i)
        };
        let families = &self.cfg.template.families;
        let mut out = Vec::new();
        if !self.cfg.addresses.is_empty() {
            let index = self.cfg.interface.as_deref().and_then(iface_index);
            for a in &self.cfg.addresses {
                let afi = if a.is_ipv4() { Afi::Ipv4 } else { Afi::Ipv6 };
                if !families.contains(&afi) {
                    continue;
                }
                match (self.cfg.interface.is_some(), index) {
                    (true, None) => {} // the interface is not there (yet)
                    (_, i) => out.push(Gateway {
                        address: *a,
                        index: i.unwrap_or(0),
                    }),
                }
            }
            return out;
        }
        // Per family, the default route the kernel uses: the lowest metric.
        let mut best: BTreeMap<bool, (u32, Gateway)> = BTreeMap::new();
        for (v4, index, metric, gw) in &self.defaults {
            let afi = if *v4 { Afi::Ipv4 } else { Afi::Ipv6 };
            if !families.contains(&afi) {
                continue;
            }
            let Some(name) = self.links.get(index) else {
                continue;
            };
            if self.cfg.interface.as_ref().is_some_and(|i| i != name) {
                continue;
            }
            if best.get(v4).is_none_or(|(m, _)| metric < m) {
                let g = Gateway {
                    address: *gw,
                    index: *index,
                };
                best.insert(*v4, (*metric, g));
            }
        }
        out.extend(best.into_values().map(|(_, g)| g));
        out.sort();
        out
    }

    /// Starts and stops sessions to match the gateways.
    /// A gateway gone for longer than `GONE_GRACE` loses its session; one
    /// that is back keeps it.
    async fn follow(&mut self) {
        let wanted = self.wanted();
        let now = std::time::Instant::now();
        let mut keep = Vec::new();
        for mut r in std::mem::take(&mut self.running) {
            if wanted.contains(&r.gateway) {
                r.gone_since = None;
                keep.push(r);
                continue;
            }
            let since = *r.gone_since.get_or_insert(now);
            if now.duration_since(since) < GONE_GRACE {
                keep.push(r);
            } else {
                info!(gateway = %r.gateway.address, "gateway gone: session stopped");
                crate::role::hypervisor::stop(&r.handle, "the gateway changed").await;
            }
        }
        self.running = keep;
        for g in wanted {
            if self.running.iter().any(|r| r.gateway == g) {
                continue;
            }
            let cfg = self.peer_config(&g);
            info!(gateway = %g.address, interface = ?cfg.interface.as_ref().map(|i| &i.name), families = ?cfg.families, "gateway found: session started");
            let handle = peer::spawn(cfg, self.local.clone());
            self.running.push(Running {
                gateway: g,
                handle,
                gone_since: None,
            });
        }
    }

    /// Every second: sessions whose task failed (a bug) start again, and
    /// gateways gone past their grace lose their session.
    async fn tick(&mut self) {
        let before = self.running.len();
        self.running.retain(|r| {
            let failed = r.handle.tx.is_closed();
            if failed {
                warn!(gateway = %r.gateway.address, "the gateway's session task had failed: starting it again");
            }
            !failed
        });
        if self.running.len() != before || self.running.iter().any(|r| r.gone_since.is_some()) {
            self.follow().await;
        }
    }

    fn peer_config(&self, g: &Gateway) -> PeerConfig {
        let mut n = self.cfg.template.clone();
        n.address = g.address;
        let afi = if g.address.is_ipv4() {
            Afi::Ipv4
        } else {
            Afi::Ipv6
        };
        n.families = vec![afi];
        n.name = match afi {
            Afi::Ipv4 => "gateway-v4".into(),
            Afi::Ipv6 => "gateway-v6".into(),
        };
        // Explicit gateways may be several of a family.
        let same_family = self
            .running
            .iter()
            .filter(|r| r.gateway.address.is_ipv4() == g.address.is_ipv4())
            .count();
        if same_family > 0 {
            n.name = format!("{}-{}", n.name, same_family + 1);
        }
        let mut c = PeerConfig::from_neighbor(&n, self.restart_time);
        c.interface = self.links.get(&g.index).map(|name| Interface {
            name: name.clone(),
            index: g.index,
        });
        c.takeover = true;
        if let IpAddr::V6(a) = g.address {
            if crate::southbound::net::is_link_local(a) {
                c.global_v6_from = Some(g.index);
                if global_address(g.index).is_none() {
                    warn!(interface = ?c.interface.as_ref().map(|i| &i.name), "no global IPv6 address on the gateway's interface (yet): IPv6 routes need one as their next hop");
                }
            }
        }
        c
    }

    async fn incoming(&mut self, stream: TcpStream, from: SocketAddr) {
        let ip = from.ip().to_canonical();
        let scope = match from {
            SocketAddr::V6(a) => a.scope_id(),
            SocketAddr::V4(_) => 0,
        };
        let found = self.running.iter().find(|r| {
            r.gateway.address == ip
                && match ip {
                    IpAddr::V6(a) if crate::southbound::net::is_link_local(a) => {
                        scope == r.gateway.index
                    }
                    _ => true,
                }
        });
        match found {
            Some(r) => {
                let _ = r.handle.tx.send(PeerMsg::Incoming(stream)).await;
            }
            None if self.refused.contains(&ip) || self.refused.len() >= REFUSED_KEPT => {
                debug!(from = %ip, "connection from an address that is not the gateway refused");
            }
            None => {
                self.refused.insert(ip);
                info!(from = %ip, "connection from an address that is not the gateway refused (again from it: logged at debug)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(cfg: GatewayConfig) -> Guest {
        let (rib, _) = mpsc::unbounded_channel();
        Guest {
            cfg,
            restart_time: 120,
            local: Arc::new(DaemonHandles {
                router_id: "10.192.24.11".parse().unwrap(),
                local_as: 64613,
                rib,
                rib_backlog: Default::default(),
                bfd: None,
                restarting: Arc::new(false.into()),
                gr_helper_max: Arc::new(120.into()),
                bmp: None,
            }),
            links: BTreeMap::new(),
            defaults: Default::default(),
            running: Vec::new(),
            refused: Default::default(),
        }
    }

    fn config(extra: &str) -> GatewayConfig {
        let text = format!(
            "router-id = \"10.192.24.11\"\nlocal-as = 64613\n[gateway]\nremote-as = 64612\n{extra}"
        );
        crate::northbound::config::Config::parse(&text, std::path::Path::new("/x.toml"))
            .unwrap()
            .gateway
            .unwrap()
    }

    #[test]
    fn gateways_follow_the_default_routes() {
        let mut g = guest(config(""));
        g.kernel(KernelEvent::Link {
            index: 2,
            name: "eth0".into(),
            up: true,
        });
        let v4: IpAddr = "10.192.24.1".parse().unwrap();
        let ll: IpAddr = "fe80::2022:22ff:fe22:2201".parse().unwrap();
        assert!(g.kernel(KernelEvent::DefaultRoute {
            add: true,
            gateway: v4,
            index: 2,
            metric: 0
        }));
        assert!(g.kernel(KernelEvent::DefaultRoute {
            add: true,
            gateway: ll,
            index: 2,
            metric: 1024
        }));
        let gw = |address| Gateway { address, index: 2 };
        assert_eq!(g.wanted(), [gw(v4), gw(ll)]);
        // `ip route replace default via …`: one NEWROUTE, the old gone.
        let other: IpAddr = "10.192.24.254".parse().unwrap();
        assert!(g.kernel(KernelEvent::DefaultRoute {
            add: true,
            gateway: other,
            index: 2,
            metric: 0
        }));
        assert_eq!(g.wanted(), [gw(other), gw(ll)]);
        // A removal of a route that is not there changes nothing.
        assert!(!g.kernel(KernelEvent::DefaultRoute {
            add: false,
            gateway: v4,
            index: 2,
            metric: 0
        }));
        g.kernel(KernelEvent::LinkGone { index: 2 });
        assert!(g.wanted().is_empty());

        // IPv6 only, and only out of eth1.
        let mut g = guest(config("families = [\"ipv6\"]\ninterface = \"eth1\"\n"));
        for (index, name) in [(2, "eth0"), (3, "eth1")] {
            g.kernel(KernelEvent::Link {
                index,
                name: name.into(),
                up: true,
            });
            for gateway in [v4, ll] {
                g.kernel(KernelEvent::DefaultRoute {
                    add: true,
                    gateway,
                    index,
                    metric: 0,
                });
            }
        }
        assert_eq!(
            g.wanted(),
            [Gateway {
                address: ll,
                index: 3
            }]
        );
        let c = g.peer_config(&g.wanted()[0]);
        assert_eq!(c.name, "gateway-v6");
        assert_eq!(c.families, [Afi::Ipv6]);
        assert_eq!(c.interface.as_ref().map(|i| i.name.as_str()), Some("eth1"));
        assert!(c.takeover);
    }

    #[test]
    fn explicit_gateways() {
        let mut g = guest(config(
            "addresses = [\"10.192.24.1\", \"fe80::1\"]\ninterface = \"eth0\"\n",
        ));
        assert!(g.wanted().is_empty(), "eth0 is not there yet");
        g.kernel(KernelEvent::Link {
            index: 4,
            name: "eth0".into(),
            up: true,
        });
        let w: Vec<IpAddr> = g.wanted().iter().map(|g| g.address).collect();
        assert_eq!(
            w,
            [
                "10.192.24.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}

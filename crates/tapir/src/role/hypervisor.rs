//! The hypervisor role: VM sessions on taps, found from kernel state
//! (C2–C5, docs/design.md).
//!
//! One task owns what is known of taps, VM routes, link-local neighbours,
//! the inventory and the VM sessions. A VM is known when a `/32`/`/128`
//! route of a configured protocol points out of a tap matching a group, when
//! a link-local neighbour shows up on such a tap, or when an inventory entry
//! names the tap. tapir then opens the session itself (and accepts the VM's
//! own connection; collisions are resolved per RFC 4271 §6.8). A tap going
//! down or away, or the VM's route going away, ends the session at once.
//!
//! Source binding: a connection is accepted only from an address the kernel
//! routes out of a group tap (link-local: the tap it arrived on). The TCP
//! handshake itself proves the peer sits behind that tap: the SYN-ACK goes
//! out where the kernel routes the address, so a VM spoofing another VM's
//! address never completes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bgp::notification::{cease, Notification};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::northbound::config::{Group, RemoteAsConfig, SessionSettings};
use crate::northbound::control::PeerStatus;
use crate::northbound::control::{VmSession, VmStatus};
use crate::northbound::inventory::{Inventory, Mac, Source, VmEntry};
use crate::peer::{self, DaemonHandles, PeerConfig, PeerHandle, PeerMsg};
use crate::role::{RoleError, RoleMsg};
use crate::routing::authorisation::VmPolicy;
use crate::southbound::kernel::KernelEvent;
use crate::southbound::net::{is_link_local, Interface};
use crate::tasks::{self, Task};

#[derive(Clone, PartialEq)]
struct Link {
    name: String,
    up: bool,
}

struct DynPeer {
    handle: PeerHandle,
    group: usize,
    policy: Arc<VmPolicy>,
    /// The VM's name when the session started (inventory name, or tap).
    name: String,
}

/// How long after its tap left a VM's drain ends (see
/// `Hypervisor::undrain_departed`).
const UNDRAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Hypervisor {
    /// VMs (by drain key: inventory name, or tap) whose tap left: when,
    /// and the tap's index. Unless the VM is back on a tap of ours by
    /// then, its drain ends after `UNDRAIN_AFTER` (its sessions and
    /// routes are gone).
    left: HashMap<String, (std::time::Instant, u32)>,
    groups: Vec<Group>,
    inventory: Inventory,
    local: Arc<DaemonHandles>,
    links: HashMap<u32, Link>,
    /// Host routes: address -> (interface index, route protocol).
    routes: HashMap<IpAddr, (u32, u8)>,
    /// The same, by interface.
    routed: HashMap<u32, BTreeSet<IpAddr>>,
    neighbours: HashMap<u32, BTreeSet<Ipv6Addr>>,
    /// The last MAC the kernel had behind a VM address on a tap (only for
    /// addresses that are a VM's there: routed, or a neighbour kept).
    macs: HashMap<(u32, IpAddr), Mac>,
    /// Taps whose sessions are to be brought in line with what is known:
    /// a kernel event costs what is on its tap, not on all of them.
    dirty: BTreeSet<u32>,
    sessions: BTreeMap<(u32, IpAddr), DynPeer>,
    /// Per tap: connection tokens left and when they were counted.
    conn_tokens: HashMap<u32, (f64, std::time::Instant)>,
    /// Limits already reported, so each is logged once (per tap or group).
    reported: BTreeSet<(&'static str, String)>,
    probe: mpsc::UnboundedSender<(u32, String)>,
    /// Install VM routes into the kernel.
    kernel: bool,
    /// How long a registration outlives its VM's absence.
    registration_grace: std::time::Duration,
    /// Addresses no VM route may cover (the static neighbors').
    protected: Arc<[IpAddr]>,
    /// Log lines about refused connections.
    refusals: crate::log_budget::LogBudget,
}

/// Link-local neighbours kept on a tap no group matches (yet): a reload
/// that adds a group finds the VMs already there.
const UNGROUPED_NEIGHBOURS: usize = 8;

pub fn spawn(
    groups: Vec<Group>,
    protected: Vec<IpAddr>,
    inventory: Inventory,
    local: Arc<DaemonHandles>,
    kernel: bool,
    registration_grace: std::time::Duration,
) -> mpsc::Sender<RoleMsg> {
    let (tx, rx) = mpsc::channel(tasks::ROLE_MAILBOX);
    // Link-local addresses that answer the probe come back as neighbours.
    let (found_tx, mut found_rx) = mpsc::channel(tasks::PROBE_FOUND);
    let probe = crate::southbound::probe::spawn(found_tx);
    let fwd = tx.clone();
    tasks::spawn(Task::Forward, async move {
        while let Some(e) = found_rx.recv().await {
            if fwd.send(RoleMsg::Kernel(e)).await.is_err() {
                return;
            }
        }
    });
    let mut hv = Hypervisor::new(groups, inventory, local, kernel, registration_grace, probe);
    hv.protected = protected.into();
    tasks::spawn(Task::Role, hv.run(rx));
    tx
}

impl Hypervisor {
    fn new(
        groups: Vec<Group>,
        inventory: Inventory,
        local: Arc<DaemonHandles>,
        kernel: bool,
        registration_grace: std::time::Duration,
        probe: mpsc::UnboundedSender<(u32, String)>,
    ) -> Hypervisor {
        Hypervisor {
            left: HashMap::new(),
            groups,
            inventory,
            local,
            links: HashMap::new(),
            routes: HashMap::new(),
            routed: HashMap::new(),
            neighbours: HashMap::new(),
            macs: HashMap::new(),
            dirty: BTreeSet::new(),
            sessions: BTreeMap::new(),
            conn_tokens: HashMap::new(),
            reported: BTreeSet::new(),
            registration_grace,
            protected: Arc::from([]),
            refusals: Default::default(),
            probe,
            kernel,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<RoleMsg>) {
        let mut health = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = health.tick() => {
                    // A VM session task that failed (a bug) ended: start it
                    // afresh, with the current policy.
                    let failed: Vec<_> = self
                        .sessions
                        .iter()
                        .filter(|(_, d)| d.handle.tx.is_closed())
                        .map(|(k, _)| *k)
                        .collect();
                    for k in &failed {
                        tracing::warn!(address = %k.1, "a VM session task had failed: starting it again");
                        self.sessions.remove(k);
                        self.dirty.insert(k.0);
                    }
                    self.undrain_departed();
                    if self.expire_registrations() {
                        self.reconcile_all().await;
                    } else {
                        self.reconcile().await;
                    }
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            match msg {
                RoleMsg::Kernel(e) => {
                    // Neighbour entries change state all the time on a
                    // thousand taps: only a real change costs a reconcile,
                    // of the taps it touched.
                    self.kernel(e);
                    self.reconcile().await;
                }
                RoleMsg::Incoming(stream, from) => self.incoming(stream, from).await,
                RoleMsg::ShowVms(tx) => {
                    let _ = tx.send(self.show_vms().await);
                }
                RoleMsg::Peers(tx) => {
                    let _ = tx.send(self.sessions.values().map(|d| d.handle.clone()).collect());
                }
                RoleMsg::VmAdd(reg, tx) => {
                    let r = reg
                        .to_entry()
                        .and_then(|e| self.inventory.register(e))
                        .map_err(RoleError::from);
                    if r.is_ok() {
                        info!(vm = %reg.name, "VM registered");
                    }
                    let _ = tx.send(r);
                    self.reconcile_all().await;
                }
                RoleMsg::VmRemove(name, nic, tx) => {
                    let r = self
                        .inventory
                        .unregister(&name, nic.as_deref())
                        .map(|_| ())
                        .map_err(RoleError::from);
                    if r.is_ok() {
                        info!(vm = %name, nic = nic.as_deref().unwrap_or("all"), "VM unregistered");
                    }
                    let _ = tx.send(r);
                    self.reconcile_all().await;
                }
                RoleMsg::VmSync { vms, dry_run, done } => {
                    let plan = self.inventory.sync_plan(&vms);
                    let r = match plan {
                        Ok(plan) if dry_run => Ok(plan.to_string()),
                        Ok(plan) => {
                            let text = plan.to_string();
                            let r = self.inventory.sync(plan).map(|_| text);
                            if let Ok(t) = &r {
                                info!(changes = %t.lines().last().unwrap_or(""), "VM inventory synced");
                            }
                            r
                        }
                        Err(e) => Err(e),
                    };
                    let _ = done.send(r.map_err(RoleError::from));
                    if !dry_run {
                        self.reconcile_all().await;
                    }
                }
                RoleMsg::Reload {
                    groups,
                    vms,
                    protected,
                    registration_grace,
                    done,
                } => {
                    let r = self.inventory.replace_config(vms).map_err(RoleError::from);
                    if r.is_ok() {
                        // Sessions know their group by position: the same
                        // group by name keeps its sessions when groups are
                        // added, removed or reordered (a removed one's get
                        // no position, and end).
                        for d in self.sessions.values_mut() {
                            let name = self.groups.get(d.group).map(|g| &g.name);
                            d.group = name
                                .and_then(|n| groups.iter().position(|g| g.name == *n))
                                .unwrap_or(usize::MAX);
                        }
                        self.groups = groups;
                        self.protected = protected.into();
                        self.registration_grace = registration_grace;
                        // Sessions whose group changed restart; the others
                        // get a new policy snapshot.
                        self.reconcile_all().await;
                    }
                    let _ = done.send(r);
                }
                RoleMsg::Shutdown { graceful, done } => {
                    for (_, d) in std::mem::take(&mut self.sessions) {
                        if graceful {
                            let (tx, rx) = oneshot::channel();
                            if d.handle.tx.send(PeerMsg::Abort(tx)).await.is_ok() {
                                let _ = rx.await;
                            }
                        } else {
                            stop(&d.handle, "tapir shutting down").await;
                        }
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Takes a kernel event in; marks the taps whose sessions it may
    /// change (none if it changed nothing tapir holds).
    fn kernel(&mut self, e: KernelEvent) {
        match e {
            KernelEvent::Link { index, name, up } => {
                let was_up = self.links.get(&index).is_some_and(|l| l.up);
                if up && !was_up && self.group_of_interface(&name).is_some() {
                    // Ask the VM to show its link-local address.
                    let _ = self.probe.send((index, name.clone()));
                }
                if was_up != up {
                    info!(interface = %name, up, "interface state");
                }
                let new = Link { name, up };
                if self.links.insert(index, new.clone()) != Some(new) {
                    self.dirty.insert(index);
                }
            }
            KernelEvent::Snapshot(s) => {
                // Neighbours are left alone: the probe finds some that the
                // kernel's table does not hold.
                let links: Vec<(u32, String, bool)> = self
                    .links
                    .iter()
                    .map(|(i, l)| (*i, l.name.clone(), l.up))
                    .collect();
                let routes: Vec<(IpAddr, u32, u8)> =
                    self.routes.iter().map(|(a, (i, p))| (*a, *i, *p)).collect();
                let missed = s.missed(&links, &routes);
                if !missed.is_empty() {
                    crate::southbound::kernel::KERNEL_STATS
                        .resync_changes
                        .fetch_add(missed.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        changes = missed.len(),
                        "netlink resync: notifications had been lost; catching up"
                    );
                    for e in missed {
                        self.kernel(e);
                    }
                }
            }
            KernelEvent::LinkGone { index } => {
                // A group tap: the VM it held, by every name a drain may
                // know it by (its sessions' names: its addresses may be
                // gone from the tables already, the kernel withdraws them
                // first).
                let tap = self.links.get(&index).map(|l| l.name.clone());
                if tap
                    .as_deref()
                    .is_some_and(|t| self.group_of_interface(t).is_some())
                {
                    let mut keys: BTreeSet<String> = self
                        .sessions
                        .range((index, IpAddr::from([0u8; 4]))..)
                        .take_while(|((i, _), _)| *i == index)
                        .map(|(_, d)| d.name.clone())
                        .collect();
                    keys.extend(
                        self.addresses_on(index)
                            .filter_map(|a| self.entry_for(index, &a))
                            .map(|e| e.name.clone()),
                    );
                    keys.extend(tap);
                    let now = std::time::Instant::now();
                    for key in keys {
                        self.left.insert(key, (now, index));
                    }
                }
                self.links.remove(&index);
                self.neighbours.remove(&index);
                for a in self.routed.remove(&index).unwrap_or_default() {
                    self.routes.remove(&a);
                }
                self.macs.retain(|k, _| k.0 != index);
                self.dirty.insert(index);
            }
            KernelEvent::HostRoute {
                add: true,
                addr,
                index,
                protocol,
            } => {
                let old = self.routes.insert(addr, (index, protocol));
                if old == Some((index, protocol)) {
                    return;
                }
                // An address that moved leaves its old tap too.
                if let Some((was, _)) = old.filter(|o| o.0 != index) {
                    self.unroute(was, &addr);
                    self.dirty.insert(was);
                }
                self.routed.entry(index).or_default().insert(addr);
                self.dirty.insert(index);
            }
            KernelEvent::HostRoute {
                add: false,
                addr,
                index,
                ..
            } => {
                if self.routes.get(&addr).is_some_and(|(i, _)| *i == index) {
                    self.routes.remove(&addr);
                    self.unroute(index, &addr);
                    self.dirty.insert(index);
                }
            }
            KernelEvent::Neighbour {
                add: true,
                addr,
                index,
            } => {
                // As many as the tap may have sessions: a VM that makes up
                // addresses (forged packets the kernel learns neighbours
                // from) grows nothing beyond that.
                let cap = self
                    .links
                    .get(&index)
                    .and_then(|l| self.group_of_interface(&l.name))
                    .map_or(UNGROUPED_NEIGHBOURS, |g| {
                        self.groups[g].max_sessions_per_interface
                    });
                let known = self.neighbours.entry(index).or_default();
                if known.contains(&addr) {
                    return;
                }
                if known.len() >= cap {
                    let scope = self
                        .links
                        .get(&index)
                        .map_or_else(|| index.to_string(), |l| l.name.clone());
                    self.limit_hit(
                        crate::limits::Limit::NeighboursPerInterface,
                        scope,
                        "link-local neighbours ignored: as many as max-sessions-per-interface on this interface already",
                    );
                    return;
                }
                known.insert(addr);
                self.dirty.insert(index);
            }
            KernelEvent::Lladdr { index, addr, mac } => {
                let on_tap = match addr {
                    IpAddr::V6(a) if is_link_local(a) => {
                        self.neighbours.get(&index).is_some_and(|n| n.contains(&a))
                    }
                    _ => self.routes.get(&addr).is_some_and(|r| r.0 == index),
                };
                // The last MAC seen stays while the address is on the tap:
                // the kernel forgets idle entries, the VM is still there.
                let Some(m) = mac.filter(|_| on_tap) else {
                    return;
                };
                if self.macs.insert((index, addr), m) != Some(m) {
                    self.dirty.insert(index);
                    // The VM runs here now (after a live migration, its
                    // gratuitous ARP): its session, if waiting to try
                    // again, tries at once. Not awaited, and only into a
                    // mailbox at least half free: a VM flapping its MAC
                    // never fills it (the role's own sends there wait).
                    if let Some(d) = self.sessions.get(&(index, addr)) {
                        if d.handle.tx.capacity() > tasks::PEER_MAILBOX / 2 {
                            let _ = d.handle.tx.try_send(PeerMsg::Reachable);
                        }
                    }
                }
            }
            // The guest role's business.
            KernelEvent::DefaultRoute { .. } => {}
            KernelEvent::Neighbour {
                add: false,
                addr,
                index,
            } => {
                if self
                    .neighbours
                    .get_mut(&index)
                    .is_some_and(|s| s.remove(&addr))
                {
                    self.macs.remove(&(index, IpAddr::V6(addr)));
                    self.dirty.insert(index);
                }
            }
        }
    }

    fn unroute(&mut self, index: u32, addr: &IpAddr) {
        self.macs.remove(&(index, *addr));
        if let Some(set) = self.routed.get_mut(&index) {
            set.remove(addr);
            if set.is_empty() {
                self.routed.remove(&index);
            }
        }
    }

    fn group_of_interface(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.matches_interface(name))
    }

    /// The group a VM address on an interface belongs to.
    fn group_for(&self, ifname: &str, addr: &IpAddr) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.matches_interface(ifname) && g.matches_address(addr))
    }

    /// Sessions that should exist on tap `index`: `true` if tapir opens
    /// them itself, `false` if it only accepts them. Costs what is on the
    /// tap: its routes, its neighbours and the entries that name it.
    fn wanted_on(&self, index: u32) -> BTreeMap<IpAddr, (usize, bool)> {
        let mut want = BTreeMap::new();
        let Some(link) = self.links.get(&index).filter(|l| l.up) else {
            return want;
        };
        for addr in self.routed.get(&index).into_iter().flatten() {
            let Some(&(_, proto)) = self.routes.get(addr) else {
                continue;
            };
            if let Some(g) = self.group_for(&link.name, addr) {
                let active = self.groups[g].route_protocols.contains(&proto);
                want.insert(*addr, (g, active));
            }
        }
        for addr in self.neighbours.get(&index).into_iter().flatten() {
            let a = IpAddr::V6(*addr);
            if let Some(g) = self.group_for(&link.name, &a) {
                want.insert(a, (g, true));
            }
        }
        for e in self.inventory.on_interface(&link.name) {
            for a in &e.addresses {
                if let Some(g) = self.group_for(&link.name, a) {
                    want.insert(*a, (g, true));
                }
            }
        }
        want
    }

    /// Every address on tap `index` that may be a VM's: routed to it, or a
    /// link-local neighbour there.
    fn addresses_on(&self, index: u32) -> impl Iterator<Item = IpAddr> + '_ {
        let routed = self.routed.get(&index).into_iter().flatten().copied();
        let neighbours = self
            .neighbours
            .get(&index)
            .into_iter()
            .flatten()
            .map(|a| IpAddr::V6(*a));
        routed.chain(neighbours)
    }

    fn policy(&self, index: u32, addr: &IpAddr, g: usize) -> VmPolicy {
        let group = &self.groups[g];
        let entry = self.entry_for(index, addr);
        let mut own: Vec<IpAddr> = vec![*addr];
        own.extend(self.addresses_on(index));
        if let Some(e) = entry {
            own.extend(e.addresses.iter().copied());
        }
        own.sort();
        own.dedup();
        VmPolicy {
            group: group.name.clone(),
            entry: entry.map(|e| (e.name.clone(), e.prefixes.clone())),
            group_filter: group.import.clone(),
            owners: self.inventory.owners().clone(),
            own_addresses: own,
            protected: self.protected.clone(),
            max_prefixes: group.max_prefixes,
            max_prefixes_action: group.max_prefixes_action,
            import_rules: group.session.import_rules.clone(),
        }
    }

    /// The inventory entry of the VM at `addr` on tap `index`. One tap holds
    /// one VM: an address the entry lists, or any address on a tap where
    /// one of its addresses is routed, is that VM's (on the tap the entry
    /// names, if it names one). A tap's name alone says nothing: after a
    /// missed ifdown it may hold another VM.
    fn entry_for(
        &self,
        index: u32,
        addr: &IpAddr,
    ) -> Option<&crate::northbound::inventory::VmEntry> {
        let ifname = self
            .links
            .get(&index)
            .map(|l| l.name.as_str())
            .unwrap_or("");
        let here = |e: &&VmEntry| self.mac_matches(e, index);
        self.inventory.find(ifname, addr).filter(here).or_else(|| {
            self.addresses_on(index)
                .find_map(|a| self.inventory.find(ifname, &a).filter(here))
        })
    }

    /// Ends the drain of VMs whose tap left `UNDRAIN_AFTER` ago and that
    /// are on no tap of ours now: a drain is for a move, and the move is
    /// over (or the VM stopped). Not at once: the VM's withdrawals go out
    /// first, so that no route of it goes upstream undrained meanwhile.
    fn undrain_departed(&mut self) {
        let due: Vec<(String, u32)> = self
            .left
            .iter()
            .filter(|(_, (at, _))| at.elapsed() >= UNDRAIN_AFTER)
            .map(|(k, (_, i))| (k.clone(), *i))
            .collect();
        for (key, gone) in due {
            self.left.remove(&key);
            // Back on a tap of ours: the same tap (a tap name alone says
            // nothing: a new tap may reuse it), or any tap by its name.
            let here = self.links.contains_key(&gone)
                || self.sessions.values().any(|d| d.name == key)
                || self.links.keys().any(|i| {
                    self.addresses_on(*i)
                        .any(|a| self.entry_for(*i, &a).is_some_and(|e| e.name == key))
                });
            if here {
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let asked = self
                .local
                .rib
                .send(crate::routing::rib::RibMsg::UndrainGone {
                    vm: key.clone(),
                    reply: tx,
                });
            if asked.is_ok() {
                // Not awaited here: the role goes on with its events.
                tasks::spawn(Task::Forward, async move {
                    if let Ok(true) = rx.await {
                        info!(vm = %key, "drain ended: the VM's tap left this hypervisor");
                    }
                });
            }
        }
    }

    /// Whether the entry's MAC, if it gives one, is the one the kernel has
    /// behind the VM's addresses on tap `index`: every MAC seen there is
    /// that one, and one was seen. Until the kernel has resolved the VM,
    /// the entry waits (the session runs under the group's filter).
    fn mac_matches(&self, e: &VmEntry, index: u32) -> bool {
        let Some(want) = e.mac else { return true };
        let mut seen = self
            .addresses_on(index)
            .filter_map(|a| self.macs.get(&(index, a)))
            .peekable();
        seen.peek().is_some() && seen.all(|m| *m == want)
    }

    /// Drops the registrations whose VM has been missing (no address of
    /// it routed to a tap, or not to the tap it names) for longer than the
    /// grace period; true if one went. Linear in taps and entries: it runs
    /// every two seconds.
    fn expire_registrations(&mut self) -> bool {
        let by_name: HashMap<&str, u32> = self
            .links
            .iter()
            .map(|(i, l)| (l.name.as_str(), *i))
            .collect();
        let here = |e: &crate::northbound::inventory::VmEntry| {
            let named = e.interface.as_deref().map(|n| by_name.get(n).copied());
            e.addresses.iter().any(|a| {
                let index = match a {
                    // A link-local entry names its tap (the inventory
                    // insists on it).
                    IpAddr::V6(v6) if is_link_local(*v6) => named
                        .flatten()
                        .filter(|i| self.neighbours.get(i).is_some_and(|n| n.contains(v6))),
                    _ => self.routes.get(a).map(|r| r.0),
                };
                index.is_some_and(|i| {
                    self.links.contains_key(&i)
                        && named.is_none_or(|n| n == Some(i))
                        && self.mac_matches(e, i)
                })
            })
        };
        // Each NIC of a VM on its own: one NIC up does not keep another's
        // registration alive.
        let present: Vec<(String, Option<String>)> = self
            .inventory
            .entries()
            .iter()
            .filter(|e| here(e))
            .map(|e| (e.name.clone(), e.nic.clone()))
            .collect();
        let gone = self
            .inventory
            .expire(std::time::Instant::now(), self.registration_grace, |e| {
                present.iter().any(|(n, c)| *n == e.name && *c == e.nic)
            });
        for name in &gone {
            warn!(vm = %name, grace = ?self.registration_grace, "registration dropped: its VM has not been seen on its tap for the grace period");
        }
        !gone.is_empty()
    }

    fn peer_config(&self, index: u32, addr: IpAddr, g: usize, policy: Arc<VmPolicy>) -> PeerConfig {
        let group = &self.groups[g];
        let ifname = self
            .links
            .get(&index)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        let entry = self.entry_for(index, &addr);
        PeerConfig {
            name: entry
                .map(|e| e.name.clone())
                .unwrap_or_else(|| ifname.clone()),
            address: addr,
            port: 179,
            interface: Some(Interface {
                name: ifname,
                index,
            }),
            local_address: None,
            passive: false,
            // Both families on every VM session: the VM's own config
            // decides which it uses (the capability intersection), and a
            // link-local session can carry IPv4 too (RFC 8950).
            families: vec![bgp::Afi::Ipv4, bgp::Afi::Ipv6],
            extended_next_hop: group.extended_next_hop,
            session: SessionSettings {
                remote_as: match entry.and_then(|e| e.asn) {
                    Some(a) => RemoteAsConfig::Exact(a),
                    None => group.session.remote_as.clone(),
                },
                ..group.session.clone()
            },
            export: None,
            kernel: self.kernel,
            vm: entry.map(|e| e.name.clone()),
            group: Some(group.name.clone()),
            graceful_restart: (group.graceful_restart_time > 0)
                .then_some(group.graceful_restart_time),
            policy: Some(policy),
            global_v6_from: None,
            takeover: false,
        }
    }

    /// Counts a limit hit; logs it the first time for `scope`.
    fn limit_hit(&mut self, limit: crate::limits::Limit, scope: String, what: &str) {
        crate::limits::hit(limit);
        if self.reported.insert((limit.name(), scope.clone())) {
            tracing::warn!(limit = limit.name(), scope = %scope, "{what}");
        }
    }

    /// Starts a session unless the tap or the group is at its limit.
    fn spawn_session(&mut self, index: u32, addr: IpAddr, g: usize) -> bool {
        let group = &self.groups[g];
        let (per_if, per_group) = (group.max_sessions_per_interface, group.max_sessions);
        let ifname = self
            .links
            .get(&index)
            .map_or_else(|| index.to_string(), |l| l.name.clone());
        if self.sessions_on(index).count() >= per_if {
            self.limit_hit(
                crate::limits::Limit::SessionsPerInterface,
                ifname,
                &format!("no session for {addr}: the interface has max-sessions-per-interface ({per_if}) already"),
            );
            return false;
        }
        if self.sessions.values().filter(|d| d.group == g).count() >= per_group {
            let name = group.name.clone();
            self.limit_hit(
                crate::limits::Limit::SessionsPerGroup,
                name,
                &format!("no session for {addr}: the group has max-sessions ({per_group}) already"),
            );
            return false;
        }
        self.reported.retain(|(_, scope)| *scope != ifname);
        let policy = Arc::new(self.policy(index, &addr, g));
        let cfg = self.peer_config(index, addr, g, policy.clone());
        info!(vm = %cfg.name, address = %addr, interface = ?cfg.interface.as_ref().map(|i| &i.name), group = %self.groups[g].name, "VM session started");
        let name = cfg.name.clone();
        let handle = peer::spawn(cfg, self.local.clone());
        self.sessions.insert(
            (index, addr),
            DynPeer {
                handle,
                group: g,
                policy,
                name,
            },
        );
        true
    }

    /// A token bucket per tap: `rate` connections a second, bursts of
    /// twice that.
    fn connection_allowed(&mut self, index: u32, rate: u32) -> bool {
        let now = std::time::Instant::now();
        let burst = f64::from(rate) * 2.0;
        let (tokens, last) = self.conn_tokens.entry(index).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(rate)).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The sessions on tap `index`.
    fn sessions_on(&self, index: u32) -> impl Iterator<Item = (u32, IpAddr)> + '_ {
        let tap = (index, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
            ..=(index, IpAddr::V6(Ipv6Addr::from(u128::MAX)));
        self.sessions.range(tap).map(|(k, _)| *k)
    }

    /// Brings the sessions of every tap in line with what is known (the
    /// inventory or the groups changed).
    async fn reconcile_all(&mut self) {
        let taps = self.links.keys().copied();
        let with_sessions = self.sessions.keys().map(|k| k.0);
        self.dirty = taps.chain(with_sessions).collect();
        self.reconcile().await;
    }

    /// Brings the sessions of the taps marked dirty in line with what is
    /// known.
    async fn reconcile(&mut self) {
        for index in std::mem::take(&mut self.dirty) {
            self.reconcile_tap(index).await;
        }
    }

    async fn reconcile_tap(&mut self, index: u32) {
        let want = self.wanted_on(index);
        let gone: Vec<(u32, IpAddr)> = self
            .sessions_on(index)
            .filter(|k| !want.contains_key(&k.1))
            .collect();
        for k in gone {
            if let Some(d) = self.sessions.remove(&k) {
                let why = match self.links.get(&k.0) {
                    None => "interface removed",
                    Some(l) if !l.up => "interface down",
                    _ => "VM route or neighbour removed",
                };
                info!(address = %k.1, reason = why, "VM session ended, its routes withdrawn");
                stop(&d.handle, why).await;
            }
        }
        for (&addr, &(g, active)) in &want {
            match self.sessions.get(&(index, addr)) {
                None if active => {
                    self.spawn_session(index, addr, g);
                }
                Some(d) if d.group == g => {
                    let p = Arc::new(self.policy(index, &addr, g));
                    if *p != *d.policy {
                        let _ = d.handle.tx.send(PeerMsg::Policy(p.clone())).await;
                        if let Some(d) = self.sessions.get_mut(&(index, addr)) {
                            d.policy = p;
                        }
                    }
                }
                Some(_) => {
                    // The VM moved to another group: start afresh.
                    if let Some(d) = self.sessions.remove(&(index, addr)) {
                        stop(&d.handle, "group changed").await;
                    }
                    self.spawn_session(index, addr, g);
                }
                None => {}
            }
        }
    }

    async fn incoming(&mut self, stream: TcpStream, from: SocketAddr) {
        let addr = from.ip().to_canonical();
        let index = match (addr, from) {
            (IpAddr::V6(a), SocketAddr::V6(s)) if is_link_local(a) => Some(s.scope_id()),
            _ => self.routes.get(&addr).map(|(i, _)| *i),
        };
        let Some((index, link)) = index.and_then(|i| self.links.get(&i).map(|l| (i, l))) else {
            self.refused(
                addr,
                "",
                "no route to this address out of a known interface",
            );
            return;
        };
        if !link.up {
            let name = link.name.clone();
            self.refused(addr, &name, "interface down");
            return;
        }
        let Some(g) = self.group_for(&link.name, &addr) else {
            let name = link.name.clone();
            self.refused(addr, &name, "no group for this interface and address");
            return;
        };
        let (rate, ifname) = (self.groups[g].connection_rate, link.name.clone());
        if !self.connection_allowed(index, rate) {
            self.limit_hit(
                crate::limits::Limit::ConnectionRate,
                ifname,
                &format!(
                    "connections refused: more than connection-rate ({rate}/s) from this interface"
                ),
            );
            return;
        }
        if !self.sessions.contains_key(&(index, addr)) && !self.spawn_session(index, addr, g) {
            return;
        }
        if let Some(d) = self.sessions.get(&(index, addr)) {
            let _ = d.handle.tx.send(PeerMsg::Incoming(stream)).await;
        }
    }

    /// Logs a refused connection, within a budget: a VM that connects
    /// from addresses outside its group's ranges as fast as it can must
    /// not fill the journal.
    fn refused(&mut self, from: IpAddr, interface: &str, why: &str) {
        let v = self.refusals.line(std::time::Instant::now());
        if v.held_back > 0 {
            info!(
                held_back = v.held_back,
                "connection refused: {} more lines held back", v.held_back
            );
        }
        if v.log {
            info!(from = %from, interface, "connection refused: {why}");
        }
    }

    async fn show_vms(&self) -> Vec<VmStatus> {
        let mut by_key: BTreeMap<(u32, Option<String>), VmStatus> = BTreeMap::new();
        for (&(index, addr), d) in &self.sessions {
            let ifname = self.links.get(&index).map(|l| l.name.clone());
            let entry = self.entry_for(index, &addr);
            let name = entry.map(|e| e.name.clone());
            let v = by_key
                .entry((index, name.clone()))
                .or_insert_with(|| VmStatus {
                    name: name.clone(),
                    nic: entry.and_then(|e| e.nic.clone()),
                    source: match entry.map(|e| e.source) {
                        Some(Source::Config) => "config",
                        Some(Source::Registered) => "registered",
                        Some(Source::Synced) => "synced",
                        None => "discovered",
                    }
                    .into(),
                    interface: ifname.clone(),
                    group: self.groups.get(d.group).map(|g| g.name.clone()),
                    addresses: Vec::new(),
                    allowed: match &d.policy.entry {
                        Some((_, p)) => p.iter().map(|p| p.to_string()).collect(),
                        None => d
                            .policy
                            .group_filter
                            .iter()
                            .map(|(n, _)| n.clone())
                            .collect(),
                    },
                    sessions: Vec::new(),
                    drain: None,
                });
            let (tx, rx) = oneshot::channel::<PeerStatus>();
            let st = if d.handle.tx.send(PeerMsg::Status(tx)).await.is_ok() {
                rx.await.ok()
            } else {
                None
            };
            let addr_s = display_addr(&addr, ifname.as_deref());
            v.addresses.push(addr_s.clone());
            v.sessions.push(VmSession {
                address: addr_s,
                state: match &st {
                    Some(s) if s.probing => "probing".into(),
                    Some(s) => s.state.clone(),
                    None => "Idle".into(),
                },
                routes_accepted: st.as_ref().map_or(0, |s| s.routes_accepted),
                routes_rejected: st
                    .as_ref()
                    .map_or(0, |s| s.routes_received - s.routes_accepted),
                bfd: None,
            });
        }
        let mut out: Vec<VmStatus> = by_key.into_values().collect();
        // Inventory entries with no session: listed as absent.
        for e in self.inventory.entries() {
            if out.iter().any(|v| {
                v.name.as_deref() == Some(e.name.as_str()) && (e.nic.is_none() || v.nic == e.nic)
            }) {
                continue;
            }
            out.push(VmStatus {
                name: Some(e.name.clone()),
                nic: e.nic.clone(),
                source: match e.source {
                    Source::Config => "config".into(),
                    Source::Registered => "registered".into(),
                    Source::Synced => "synced".into(),
                },
                interface: e.interface.clone(),
                group: None,
                addresses: e.addresses.iter().map(|a| a.to_string()).collect(),
                allowed: e.prefixes.iter().map(|p| p.to_string()).collect(),
                sessions: Vec::new(),
                drain: None,
            });
        }
        out
    }
}

fn display_addr(addr: &IpAddr, ifname: Option<&str>) -> String {
    match (addr, ifname) {
        (IpAddr::V6(a), Some(i)) if is_link_local(*a) => format!("{a}%{i}"),
        _ => addr.to_string(),
    }
}

pub(crate) async fn stop(h: &PeerHandle, why: &str) {
    let (tx, rx) = oneshot::channel();
    if h.tx
        .send(PeerMsg::Shutdown(
            Notification::shutdown(cease::ADMINISTRATIVE_SHUTDOWN, why),
            tx,
        ))
        .await
        .is_ok()
    {
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::northbound::inventory::Registration;
    use crate::southbound::kernel::KernelEvent::{HostRoute, Link, LinkGone, Neighbour};

    const STATIC: u8 = 4;

    /// The hypervisor task's state with the example config, no task
    /// running: sessions are never started here (they would connect).
    fn hypervisor() -> Hypervisor {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hypervisor.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = crate::northbound::config::Config::parse(&text, &path).unwrap();
        let local = Arc::new(DaemonHandles {
            router_id: config.router_id,
            local_as: config.local_as,
            rib: mpsc::unbounded_channel().0,
            rib_backlog: Default::default(),
            bfd: None,
            restarting: Default::default(),
            gr_helper_max: Default::default(),
            bmp: None,
        });
        Hypervisor::new(
            config.groups.clone(),
            Inventory::new(config.vms.clone(), None),
            local,
            true,
            std::time::Duration::from_secs(600),
            mpsc::unbounded_channel().0,
        )
    }

    fn vm_addr(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 192, 24, n as u8))
    }

    /// `n` taps, each with its VM's /32.
    fn with_taps(n: u32) -> Hypervisor {
        let mut hv = hypervisor();
        for i in 1..=n {
            hv.kernel(Link {
                index: i,
                name: format!("tap{i}"),
                up: true,
            });
            hv.kernel(HostRoute {
                add: true,
                addr: vm_addr(i),
                index: i,
                protocol: STATIC,
            });
        }
        hv.dirty.clear();
        hv
    }

    /// A kernel event costs its own tap: only that tap is reconciled (an
    /// address that moves: both), and a repeated event costs nothing.
    #[test]
    fn a_kernel_event_marks_only_its_taps() {
        let mut hv = with_taps(200);
        let ll: Ipv6Addr = "fe80::5054:ff:fe00:7".parse().unwrap();
        let dirty = |hv: &mut Hypervisor| std::mem::take(&mut hv.dirty);
        hv.kernel(Neighbour {
            add: true,
            addr: ll,
            index: 7,
        });
        assert_eq!(dirty(&mut hv), [7].into());
        hv.kernel(Neighbour {
            add: true,
            addr: ll,
            index: 7,
        });
        assert_eq!(dirty(&mut hv), [].into(), "nothing new");
        hv.kernel(HostRoute {
            add: true,
            addr: vm_addr(3),
            index: 4,
            protocol: STATIC,
        });
        assert_eq!(dirty(&mut hv), [3, 4].into());
        assert!(hv.wanted_on(3).is_empty());
        assert_eq!(
            hv.wanted_on(4).keys().copied().collect::<Vec<_>>(),
            [vm_addr(3), vm_addr(4)]
        );
        hv.kernel(HostRoute {
            add: false,
            addr: vm_addr(3),
            index: 3,
            protocol: STATIC,
        });
        assert_eq!(dirty(&mut hv), [].into(), "not routed to tap3 any more");
        hv.kernel(LinkGone { index: 4 });
        assert_eq!(dirty(&mut hv), [4].into());
        assert!(!hv.routes.contains_key(&vm_addr(4)) && !hv.routed.contains_key(&4));
        hv.kernel(Link {
            index: 9,
            name: "tap9".into(),
            up: false,
        });
        assert_eq!(dirty(&mut hv), [9].into());
        assert!(hv.wanted_on(9).is_empty(), "down: no session");
        // What one tap wants is what is on it: its /32, its neighbour.
        assert_eq!(
            hv.wanted_on(7).keys().copied().collect::<Vec<_>>(),
            [vm_addr(7), IpAddr::V6(ll)]
        );
    }

    /// A tap's VM is found by its addresses, never by the tap's name: the
    /// entry's VM on tap11 is recdns1001 only while its address is routed
    /// there; its address on another tap finds it there.
    #[test]
    fn a_tap_holds_the_vm_its_addresses_say() {
        let mut hv = with_taps(12);
        let name = |hv: &Hypervisor, tap: u32, addr: IpAddr| {
            hv.entry_for(tap, &addr).map(|e| e.name.clone())
        };
        let ll = IpAddr::V6("fe80::11".parse().unwrap());
        assert_eq!(name(&hv, 11, vm_addr(11)).as_deref(), Some("recdns1001"));
        assert_eq!(name(&hv, 11, ll).as_deref(), Some("recdns1001"), "same tap");
        assert_eq!(name(&hv, 12, vm_addr(12)), None);
        // recdns1001's address now routed to tap12: tap11's VM is nobody.
        hv.kernel(HostRoute {
            add: true,
            addr: vm_addr(11),
            index: 12,
            protocol: STATIC,
        });
        assert_eq!(name(&hv, 11, ll), None);
        assert_eq!(name(&hv, 12, vm_addr(12)).as_deref(), Some("recdns1001"));
        let p = hv.policy(12, &vm_addr(12), 0);
        assert_eq!(p.entry.map(|e| e.0).as_deref(), Some("recdns1001"));
        assert!(p.own_addresses.contains(&vm_addr(11)));
        assert!(
            Arc::ptr_eq(&p.owners, hv.inventory.owners()),
            "one shared list"
        );
    }

    /// An entry with a MAC is the VM's only where the kernel has that MAC
    /// behind the VM's address on the tap; the last MAC seen stays when
    /// the kernel forgets an idle entry.
    #[test]
    fn an_entry_with_a_mac_holds_only_behind_that_mac() {
        let mut hv = with_taps(13);
        let mac = |s: &str| s.parse::<Mac>().unwrap();
        hv.inventory
            .register(
                Registration {
                    name: "old".into(),
                    interface: Some("tap13".into()),
                    addresses: vec![vm_addr(13)],
                    asn: None,
                    prefixes: vec!["10.3.0.50/32".into()],
                    mac: Some("52:54:00:00:00:13".into()),
                    nic: None,
                    synced: false,
                }
                .to_entry()
                .unwrap(),
            )
            .unwrap();
        let name = |hv: &Hypervisor| hv.entry_for(13, &vm_addr(13)).map(|e| e.name.clone());
        assert_eq!(name(&hv), None, "no MAC seen yet");
        // The VM's session (its task's mailbox): a MAC newly known tells it
        // to try at once.
        let (tx, mut session) = mpsc::channel(tasks::PEER_MAILBOX);
        let busy = tx.clone();
        let policy = Arc::new(hv.policy(13, &vm_addr(13), 0));
        hv.sessions.insert(
            (13, vm_addr(13)),
            DynPeer {
                handle: PeerHandle {
                    address: vm_addr(13),
                    tx,
                },
                group: 0,
                policy,
                name: "tap13".into(),
            },
        );
        let mut told = || {
            std::iter::from_fn(|| session.try_recv().ok())
                .filter(|m| matches!(m, PeerMsg::Reachable))
                .count()
        };
        let seen = |hv: &mut Hypervisor, m: Option<Mac>| {
            hv.kernel(KernelEvent::Lladdr {
                index: 13,
                addr: vm_addr(13),
                mac: m,
            });
            std::mem::take(&mut hv.dirty)
        };
        assert_eq!(seen(&mut hv, Some(mac("52:54:00:00:00:13"))), [13].into());
        assert_eq!(told(), 1, "the first MAC: the VM runs here");
        assert_eq!(name(&hv).as_deref(), Some("old"));
        assert_eq!(seen(&mut hv, None), [].into(), "forgotten by the kernel");
        assert_eq!(seen(&mut hv, Some(mac("52:54:00:00:00:13"))), [].into());
        assert_eq!(told(), 0, "the same MAC again: nothing new");
        assert_eq!(name(&hv).as_deref(), Some("old"));
        assert_eq!(seen(&mut hv, Some(mac("aa:00:00:00:0f:15"))), [13].into());
        assert_eq!(told(), 1, "another MAC");
        assert_eq!(name(&hv), None, "another NIC behind the address");
        // A mailbox more than half full: nothing more goes into it.
        for _ in 0..=tasks::PEER_MAILBOX / 2 {
            busy.try_send(PeerMsg::BfdDown).unwrap();
        }
        assert_eq!(seen(&mut hv, Some(mac("52:54:00:00:00:13"))), [13].into());
        assert_eq!(told(), 0, "a busy session");
        assert_eq!(name(&hv).as_deref(), Some("old"), "its own MAC again");
        // A MAC for an address that is not on the tap is not kept, and
        // tells no session anything.
        hv.kernel(KernelEvent::Lladdr {
            index: 13,
            addr: vm_addr(99),
            mac: Some(mac("52:54:00:00:00:99")),
        });
        assert!(!hv.macs.contains_key(&(13, vm_addr(99))) && hv.dirty.is_empty());
        assert_eq!(told(), 0);
    }
}

//! The Loc-RIB: one task owns it (STYLE: one owner per piece of state).
//!
//! ```text
//!  peer tasks ──Update/PeerDown (batches)──▶ ┌──────────┐ ──Export (batches)──▶ upstream peer tasks
//!  config (local routes) ───────────────────▶│ RIB task │ ──FIB changes ──────▶ kernel writer
//!  control socket ──ShowRoutes─────────────▶ └──────────┘
//! ```
//!
//! Every prefix keeps its candidate paths; the best is chosen per RFC 4271
//! §9.1 (local routes first, then local-pref, AS-path length, origin, MED
//! among the same neighbor AS, eBGP over iBGP, router id, peer address).
//! Path attributes are interned: one shared copy per distinct set.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bgp::{NextHop, PathAttributes, Prefix};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::peer::{Interface, PeerMsg};
use crate::policy::{Policy, RouteFacts};
use crate::prefix_map::PrefixMap;

pub type PeerId = u64;

/// Changed prefixes propagated together, at most (and a bit over: one
/// message's worth). Large enough that exports go out in full UPDATEs,
/// small enough that a full table never waits in one list.
const CHUNK: usize = 4096;

/// Route changes sent to the Loc-RIB and not applied yet. Peers add what
/// they send; the RIB takes off what it has applied. A peer stops reading
/// its socket while this is past [`BACKLOG_MAX`], so a table transfer
/// waits in the sender's TCP window rather than in our memory.
pub type Backlog = Arc<BacklogCount>;

#[derive(Debug, Default)]
pub struct BacklogCount {
    count: std::sync::atomic::AtomicUsize,
    /// Woken when the count falls to the limit or below.
    drained: tokio::sync::Notify,
}

impl BacklogCount {
    /// A peer sent `n` route changes.
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n, Relaxed);
    }

    /// The RIB applied `n`; readers waiting are woken once the count is
    /// back within the limit.
    fn applied(&self, n: usize) {
        let before = self
            .count
            .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(n)))
            .unwrap_or(0);
        if before > BACKLOG_MAX && before.saturating_sub(n) <= BACKLOG_MAX {
            self.drained.notify_waiters();
        }
    }

    /// Returns once the count is within the limit (at once if it is).
    pub async fn within_limit(&self) {
        loop {
            // Registered before the check, so a wakeup between the two is
            // not lost.
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.count.load(Relaxed) <= BACKLOG_MAX {
                return;
            }
            drained.await;
        }
    }
}

/// Route changes queued for the Loc-RIB beyond which peers stop reading
/// (a few MiB of messages; the RIB applies this many in tens of ms).
pub const BACKLOG_MAX: usize = 65_536;

/// A neighbor's Adj-RIB-Out: what the Loc-RIB has exported to it. The RIB
/// writes it (and sends the changes as `PeerMsg::Export`); the neighbor's
/// task reads it to send the whole table again (a new session, a
/// ROUTE-REFRESH). One copy, where a table transfer would otherwise keep
/// two.
pub type AdjRibOut = Arc<std::sync::Mutex<PrefixMap<Arc<PathAttributes>>>>;

/// The peer a path came from, as best-path selection and policy see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub ebgp: bool,
    /// For VM sessions: the VM's name (if in the inventory) and group.
    pub vm: Option<String>,
    pub group: Option<String>,
    /// The tap a VM lives on: its routes go into the kernel through it.
    pub interface: Option<Interface>,
    /// Install this peer's routes in the kernel.
    pub kernel: bool,
}

/// A candidate path for a prefix: 16 bytes, its next hop and attributes
/// shared with the other prefixes of the UPDATE it came in.
#[derive(Clone, Debug)]
pub struct Path {
    /// `None` for a route tapir originates (`announce` in the config).
    pub peer: Option<Arc<PeerInfo>>,
    pub route: Arc<Route>,
}

/// What paths share: the next hop and the (interned) attributes.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub next_hop: Option<NextHop>,
    pub attrs: Arc<PathAttributes>,
}

impl Path {
    pub fn new(
        peer: Option<Arc<PeerInfo>>,
        next_hop: Option<NextHop>,
        attrs: Arc<PathAttributes>,
    ) -> Path {
        Path {
            peer,
            route: Arc::new(Route { next_hop, attrs }),
        }
    }

    pub fn attrs(&self) -> &Arc<PathAttributes> {
        &self.route.attrs
    }

    pub fn next_hop(&self) -> Option<NextHop> {
        self.route.next_hop
    }
}

/// A prefix's candidate paths: 16 bytes. Nearly every prefix has one,
/// kept inline: a `Vec` would cost an allocation a prefix. (The `Vec` of
/// several is boxed so that it fits beside one path's non-null pointer.)
#[derive(Clone, Debug)]
pub enum Paths {
    One(Path),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Path>>),
}

impl Default for Paths {
    fn default() -> Self {
        Paths::Many(Box::default())
    }
}

impl From<Path> for Paths {
    fn from(p: Path) -> Paths {
        Paths::One(p)
    }
}

impl std::ops::Deref for Paths {
    type Target = [Path];
    fn deref(&self) -> &[Path] {
        match self {
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v,
        }
    }
}

impl Paths {
    pub fn push(&mut self, p: Path) {
        match self {
            Paths::Many(v) if v.is_empty() => *self = Paths::One(p),
            Paths::Many(v) => v.push(p),
            Paths::One(_) => {
                let Paths::One(first) = std::mem::take(self) else {
                    unreachable!()
                };
                *self = Paths::Many(Box::new(vec![first, p]));
            }
        }
    }

    /// Puts `p` in place of the path from the same peer, if there is one.
    pub fn replace(&mut self, p: Path) {
        let same = |x: &Path| match (&x.peer, &p.peer) {
            (Some(a), Some(b)) => a.id == b.id,
            (None, None) => true,
            _ => false,
        };
        match self {
            Paths::One(x) if same(x) => *x = p,
            _ => {
                self.retain(|x| !same(x));
                self.push(p);
            }
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        match self {
            Paths::One(p) => {
                if !keep(p) {
                    *self = Paths::default();
                }
            }
            Paths::Many(v) => {
                v.retain(|p| keep(p));
                if v.len() == 1 {
                    let p = v.pop().expect("one path");
                    *self = Paths::One(p);
                }
            }
        }
    }
}

pub enum RibMsg {
    /// A batch from one peer: routes now accepted, prefixes no longer.
    Update {
        peer: Arc<PeerInfo>,
        announce: Vec<(Prefix, NextHop, Arc<PathAttributes>)>,
        withdraw: Vec<Prefix>,
    },
    /// Everything from this peer is gone.
    PeerDown(PeerId),
    /// An upstream neighbor that takes exports through `tx`.
    Subscribe {
        peer: PeerId,
        /// Its AS if known from the config (for the AS-loop check).
        asn: Option<u32>,
        ebgp: bool,
        policy: Arc<Policy>,
        tx: mpsc::Sender<PeerMsg>,
        /// Where the RIB keeps what it exported to this neighbor.
        out: AdjRibOut,
        /// The families its sessions may carry (the configured ones):
        /// prefixes of others are neither exported nor kept for it.
        families: Vec<bgp::Afi>,
    },
    Unsubscribe(PeerId),
    /// A reload changed a neighbor's export policy: send it the difference.
    SetPolicy {
        peer: PeerId,
        policy: Arc<Policy>,
    },
    Show(oneshot::Sender<Vec<LocRibEntry>>),
    /// tapir's own routes that come and go (the guest role's services,
    /// as their health checks pass and fail).
    Local {
        announce: Vec<Prefix>,
        withdraw: Vec<Prefix>,
    },
    /// Sizes, for metrics.
    Stats(oneshot::Sender<RibStats>),
    /// The restart deferral is over (RFC 4724 §4.1).
    DeferralOver,
    /// Drain (RFC 8326) one VM (by inventory name or tap), or all with
    /// `None`; `state` None undrains.
    Drain {
        vm: Option<String>,
        state: Option<DrainState>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// A drain's delay ran out: withdraw if still draining.
    DrainExpired {
        vm: String,
        generation: u64,
    },
    /// The drain state of every drained VM.
    DrainStates(oneshot::Sender<BTreeMap<String, DrainState>>),
}

/// Loc-RIB sizes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RibStats {
    pub prefixes: usize,
    pub paths: usize,
    /// Prefixes in the kernel.
    pub installed: usize,
    /// Distinct interned attribute sets.
    pub attribute_sets: usize,
}

/// A VM being drained before a planned move (RFC 8326).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainState {
    /// Announced with GRACEFUL_SHUTDOWN and low local-pref.
    Shutdown,
    /// Withdrawn upstream (still in the kernel: the VM still serves).
    Withdrawn,
}

/// How drains are done (`[drain]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    pub local_pref: u32,
    /// Withdraw this long after the drain starts (None: only when asked).
    pub withdraw_after: Option<std::time::Duration>,
}

/// RFC 8326 GRACEFUL_SHUTDOWN community.
pub const GRACEFUL_SHUTDOWN: u32 = 0xffff_0000;

/// The name a VM is drained by: its inventory name, or its tap.
pub fn drain_key(p: &PeerInfo) -> Option<String> {
    p.group.as_ref()?;
    p.vm.clone()
        .or_else(|| p.interface.as_ref().map(|i| i.name.clone()))
}

/// What the RIB is told about a graceful restart in progress.
pub struct Restart {
    /// Our routes the kernel kept from before the restart.
    pub stale: Vec<Prefix>,
    /// How long to wait for the VMs to announce again.
    pub deferral: std::time::Duration,
    /// Cleared when the deferral ends (OPENs stop saying "restarting").
    pub restarting: Arc<std::sync::atomic::AtomicBool>,
}

/// One prefix of the Loc-RIB, as `tapir show rib` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocRibEntry {
    pub prefix: String,
    /// Where the best path came from (`local` for tapir's own).
    pub from: String,
    pub next_hop: Option<String>,
    pub as_path: String,
    /// Other candidate paths, by origin.
    pub others: Vec<String>,
    /// The best path's VM is being drained (`shutdown` or `withdrawn`).
    pub drain: Option<DrainState>,
    /// The prefix is in the kernel (`[kernel] install`).
    #[serde(default)]
    pub installed: bool,
}

/// One kernel next hop: a gateway, out of an interface if known.
pub type FibHop = (IpAddr, Option<u32>);

/// A kernel route's next hops: nearly always one, kept inline (a table of
/// a million routes must not cost a million allocations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hops {
    One(FibHop),
    Many(Box<[FibHop]>),
}

impl Default for Hops {
    fn default() -> Self {
        Hops::Many(Box::new([]))
    }
}

impl std::ops::Deref for Hops {
    type Target = [FibHop];
    fn deref(&self) -> &[FibHop] {
        match self {
            Hops::One(h) => std::slice::from_ref(h),
            Hops::Many(v) => v,
        }
    }
}

impl From<Vec<FibHop>> for Hops {
    fn from(mut v: Vec<FibHop>) -> Hops {
        if v.len() == 1 {
            Hops::One(v.pop().expect("one hop"))
        } else {
            Hops::Many(v.into_boxed_slice())
        }
    }
}

/// A route change for the kernel writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FibChange {
    /// Several hops make an ECMP route.
    Install {
        prefix: Prefix,
        hops: Hops,
    },
    Remove {
        prefix: Prefix,
    },
}

struct Subscriber {
    asn: Option<u32>,
    ebgp: bool,
    policy: Arc<Policy>,
    tx: mpsc::Sender<PeerMsg>,
    families: Vec<bgp::Afi>,
}

pub struct Rib {
    local_as: u32,
    table: PrefixMap<Paths>,
    /// Every attribute set in use, once (the map's values are unused:
    /// its entry API finds or adds a set with one hash).
    interned: foldhash::HashMap<Arc<PathAttributes>, ()>,
    subscribers: HashMap<PeerId, Subscriber>,
    /// What each subscriber was last sent, to send only changes.
    sent: HashMap<PeerId, AdjRibOut>,
    fib: Option<mpsc::UnboundedSender<Vec<FibChange>>>,
    /// What the kernel was told, per prefix.
    installed: PrefixMap<Hops>,
    /// Install all equally good paths as one ECMP route.
    multipath: bool,
    /// False while a graceful restart's deferral runs.
    ready: bool,
    /// Kernel routes kept from before a restart, not yet confirmed.
    stale: Vec<Prefix>,
    drains: BTreeMap<String, (DrainState, u64)>,
    /// The interned set is swept of unused entries past this size.
    sweep_at: usize,
    drain_cfg: DrainConfig,
    drain_generation: u64,
    /// Weak, so that the RIB (and its thread) ends when the last sender
    /// outside it is dropped.
    self_tx: mpsc::WeakUnboundedSender<RibMsg>,
    restarting: Option<Arc<std::sync::atomic::AtomicBool>>,
    backlog: Backlog,
}

pub fn spawn(
    local_as: u32,
    local_routes: Vec<Prefix>,
    fib: Option<mpsc::UnboundedSender<Vec<FibChange>>>,
    multipath: bool,
    restart: Option<Restart>,
    drain_cfg: DrainConfig,
    backlog: Backlog,
) -> std::io::Result<mpsc::UnboundedSender<RibMsg>> {
    // Unbounded so that peers never wait on the RIB (which may be waiting
    // to hand them exports) and their messages stay in order.
    let (tx, rx) = mpsc::unbounded_channel();
    let mut installed = PrefixMap::new();
    let (ready, stale, restarting) = match restart {
        None => (true, Vec::new(), None),
        Some(r) => {
            // The kernel still has these; an empty hop list stands for
            // "there, from before" so that any new choice replaces it.
            for p in &r.stale {
                installed.insert(*p, Hops::default());
            }
            let t = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(r.deferral).await;
                let _ = t.send(RibMsg::DeferralOver);
            });
            (false, r.stale, Some(r.restarting))
        }
    };
    let mut rib = Rib {
        local_as,
        table: PrefixMap::new(),
        interned: Default::default(),
        subscribers: HashMap::new(),
        sent: HashMap::new(),
        fib,
        installed,
        multipath,
        ready,
        stale,
        restarting,
        drains: BTreeMap::new(),
        sweep_at: 1024,
        drain_cfg,
        drain_generation: 0,
        self_tx: tx.downgrade(),
        backlog,
    };
    rib.add_local(local_routes, &mut Vec::new());
    // The RIB has a core of its own: peers decode, judge and encode on
    // the daemon's thread while best paths and exports are chosen here.
    // It ends when the last sender is dropped.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("rib".into())
        .spawn(move || rt.block_on(rib.run(rx)))?;
    Ok(tx)
}

/// RFC 4271 §9.1.2.2 and the usual tie-breakers; `Less` means `a` is
/// better.
pub fn compare(a: &Path, b: &Path) -> Ordering {
    compare_for_multipath(a, b).then_with(|| match (&a.peer, &b.peer) {
        (Some(pa), Some(pb)) => u32::from(pa.router_id)
            .cmp(&u32::from(pb.router_id))
            .then_with(|| pa.address.cmp(&pb.address)),
        _ => Ordering::Equal,
    })
}

/// The comparison up to, not including, the router-id tie-breakers: paths
/// equal here are equally good for ECMP (as BIRD and FRR count them).
pub fn compare_for_multipath(a: &Path, b: &Path) -> Ordering {
    let (pa, pb) = match (&a.peer, &b.peer) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Less,
        (Some(_), None) => return Ordering::Greater,
        (Some(x), Some(y)) => (x, y),
    };
    let lp = |p: &Path| p.attrs().local_pref.unwrap_or(100);
    let len = |p: &Path| p.attrs().as_path.as_ref().map_or(0, |x| x.length());
    let origin = |p: &Path| p.attrs().origin.map_or(2, |o| o as u8);
    let neighbor_as = |p: &Path| p.attrs().as_path.as_ref().and_then(|x| x.first_asn());
    lp(b)
        .cmp(&lp(a))
        .then_with(|| len(a).cmp(&len(b)))
        .then_with(|| origin(a).cmp(&origin(b)))
        .then_with(|| {
            // MED only between routes from the same neighbor AS.
            if neighbor_as(a) == neighbor_as(b) {
                a.attrs().med.unwrap_or(0).cmp(&b.attrs().med.unwrap_or(0))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| pb.ebgp.cmp(&pa.ebgp))
}

/// Interns into `set` (see `Rib::intern`), for when `self` is borrowed.
fn intern_into(
    set: &mut foldhash::HashMap<Arc<PathAttributes>, ()>,
    attrs: PathAttributes,
) -> Arc<PathAttributes> {
    if let Some((a, _)) = set.get_key_value(&attrs) {
        return a.clone();
    }
    let a = Arc::new(attrs);
    set.insert(a.clone(), ());
    a
}

/// A best path's attribute set (by address) and where it came from: what
/// an export depends on when the policy matches no prefixes.
type ExportKey = (usize, Option<PeerId>);

/// What goes to neighbor `peer` for a best path `b` of `p`, if anything.
#[allow(clippy::too_many_arguments)]
fn export_attrs(
    b: &Path,
    p: &Prefix,
    peer: PeerId,
    asn: Option<u32>,
    ebgp: bool,
    policy: &Policy,
    local_as: u32,
    drains: &BTreeMap<String, (DrainState, u64)>,
    drain_cfg: DrainConfig,
) -> Option<PathAttributes> {
    // Never back to where it came from; never to a neighbor whose AS is
    // in the path (it would drop it anyway).
    if b.peer.as_ref().is_some_and(|q| q.id == peer) {
        return None;
    }
    if let (Some(asn), Some(path)) = (asn, &b.attrs().as_path) {
        if path.segments.iter().any(|s| s.asns().contains(&asn)) {
            return None;
        }
    }
    let facts = RouteFacts {
        prefix: p,
        attrs: b.attrs(),
        from: b.peer.as_deref(),
    };
    let mut a = policy.export(&facts, local_as, ebgp)?;
    // RFC 8326: a draining VM's routes go out with GRACEFUL_SHUTDOWN (and
    // low local-pref inside the AS), or not at all once withdrawn.
    if let Some(key) = b.peer.as_deref().and_then(drain_key) {
        match drains.get(&key).map(|d| d.0) {
            Some(DrainState::Withdrawn) => return None,
            Some(DrainState::Shutdown) => {
                if !a.communities.contains(&GRACEFUL_SHUTDOWN) {
                    a.communities.push(GRACEFUL_SHUTDOWN);
                }
                if !ebgp {
                    a.local_pref = Some(drain_cfg.local_pref);
                }
            }
            None => {}
        }
    }
    Some(a)
}

fn best(paths: &[Path]) -> Option<&Path> {
    paths.iter().min_by(|a, b| compare(a, b))
}

impl Rib {
    fn intern(&mut self, attrs: PathAttributes) -> Arc<PathAttributes> {
        intern_into(&mut self.interned, attrs)
    }

    /// Interns an attribute set that already sits behind an `Arc` (the
    /// peer's, shared by the prefixes of one UPDATE): no copy.
    fn intern_arc(&mut self, attrs: Arc<PathAttributes>) -> Arc<PathAttributes> {
        match self.interned.entry(attrs) {
            Entry::Occupied(e) => e.key().clone(),
            Entry::Vacant(e) => {
                let a = e.key().clone();
                e.insert(());
                a
            }
        }
    }

    /// Adds tapir's own path (no AS path, origin IGP) to each prefix that
    /// has none yet.
    fn add_local(&mut self, prefixes: Vec<Prefix>, changed: &mut Vec<Prefix>) {
        let attrs = self.intern(PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(bgp::AsPath::default()),
            ..Default::default()
        });
        let local = Arc::new(Route {
            next_hop: None,
            attrs,
        });
        for p in prefixes {
            let path = Path {
                peer: None,
                route: local.clone(),
            };
            let mut added = true;
            self.table.upsert(p, |v| match v {
                Some(v) if v.iter().any(|x| x.peer.is_none()) => {
                    added = false;
                    None
                }
                Some(v) => {
                    v.push(path);
                    None
                }
                None => Some(Paths::One(path)),
            });
            if added {
                changed.push(p);
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<RibMsg>) {
        // Send the local routes to the kernel? No: they are ours to
        // announce, not to forward.
        let mut changed: Vec<Prefix> = Vec::new();
        while let Some(msg) = rx.recv().await {
            // Take whatever else is queued too (up to 256 messages):
            // changes move in batches. What they change goes out every
            // CHUNK prefixes, so that a table transfer does not gather in
            // one list (and in one export batch per peer).
            let mut next = Some(msg);
            let mut taken = 0;
            while let Some(m) = next {
                // A question is answered once what came before it has
                // reached the kernel and the peers' queues.
                if matches!(
                    m,
                    RibMsg::Show(_) | RibMsg::Stats(_) | RibMsg::DrainStates(_)
                ) {
                    self.flush(&mut changed).await;
                }
                self.handle(m, &mut changed).await;
                if changed.len() >= CHUNK {
                    self.flush(&mut changed).await;
                }
                taken += 1;
                next = if taken < 256 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.flush(&mut changed).await;
            // Drop attribute sets nobody uses any more, once the set has
            // doubled since the last sweep (a sweep per batch would make a
            // table transfer quadratic).
            if self.interned.len() > self.sweep_at {
                self.interned.retain(|a, _| Arc::strong_count(a) > 1);
                self.sweep_at = (2 * self.interned.len()).max(1024);
            }
        }
    }

    async fn handle(&mut self, m: RibMsg, changed: &mut Vec<Prefix>) {
        match m {
            RibMsg::Update {
                peer,
                announce,
                withdraw,
            } => {
                self.backlog.applied(announce.len() + withdraw.len());
                for p in withdraw {
                    let there = self.table.change(&p, |v| match v {
                        // The common case, without making an empty list.
                        Paths::One(x) if x.peer.as_ref().is_some_and(|q| q.id == peer.id) => false,
                        _ => {
                            v.retain(|x| x.peer.as_ref().is_none_or(|q| q.id != peer.id));
                            !v.is_empty()
                        }
                    });
                    if there {
                        changed.push(p);
                    }
                }
                // The prefixes of one UPDATE share one attribute Arc and
                // next hop: interned once, one `Route` for all of them.
                let mut last: Option<(Arc<PathAttributes>, Arc<Route>)> = None;
                for (p, nh, attrs) in announce {
                    let route = match &last {
                        Some((from, to))
                            if Arc::ptr_eq(from, &attrs) && to.next_hop == Some(nh) =>
                        {
                            to.clone()
                        }
                        _ => {
                            let to = Arc::new(Route {
                                next_hop: Some(nh),
                                attrs: self.intern_arc(attrs.clone()),
                            });
                            last = Some((attrs, to.clone()));
                            to
                        }
                    };
                    let path = Path {
                        peer: Some(peer.clone()),
                        route,
                    };
                    self.table.upsert(p, |v| match v {
                        Some(v) => {
                            v.replace(path);
                            None
                        }
                        None => Some(Paths::One(path)),
                    });
                    changed.push(p);
                }
            }
            RibMsg::Local { announce, withdraw } => {
                for p in withdraw {
                    let there = self.table.change(&p, |v| {
                        v.retain(|x| x.peer.is_some());
                        !v.is_empty()
                    });
                    if there {
                        changed.push(p);
                    }
                }
                self.add_local(announce, changed);
            }
            RibMsg::PeerDown(id) => {
                self.table.retain(|p, v| {
                    let before = v.len();
                    v.retain(|x| x.peer.as_ref().is_none_or(|q| q.id != id));
                    if v.len() != before {
                        changed.push(p);
                    }
                    !v.is_empty()
                });
            }
            RibMsg::Subscribe {
                peer,
                asn,
                ebgp,
                policy,
                tx,
                out,
                families,
            } => {
                let ready_tx = tx.clone();
                self.subscribers.insert(
                    peer,
                    Subscriber {
                        asn,
                        ebgp,
                        policy,
                        tx,
                        families,
                    },
                );
                out.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.sent.insert(peer, out);
                // A full table for the newcomer.
                let all: Vec<Prefix> = self.table.keys().collect();
                self.export_to(peer, &all).await;
                if self.ready {
                    let _ = ready_tx.send(PeerMsg::RibReady).await;
                }
            }
            RibMsg::DeferralOver => {
                self.ready = true;
                if let Some(r) = self.restarting.take() {
                    r.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                // Kernel routes from before the restart that no VM
                // announced again are removed now.
                let stale = std::mem::take(&mut self.stale);
                let mut ops = Vec::new();
                for p in stale {
                    if self.installed.get(&p).is_some_and(|h| h.is_empty()) {
                        self.installed.remove(&p);
                        ops.push(FibChange::Remove { prefix: p });
                    }
                }
                tracing::info!(
                    removed = ops.len(),
                    "graceful restart complete: stale kernel routes removed, End-of-RIB sent"
                );
                if let (Some(fib), false) = (&self.fib, ops.is_empty()) {
                    let _ = fib.send(ops);
                }
                for s in self.subscribers.values() {
                    let _ = s.tx.send(PeerMsg::RibReady).await;
                }
            }
            RibMsg::SetPolicy { peer, policy } => {
                if let Some(s) = self.subscribers.get_mut(&peer) {
                    s.policy = policy;
                    let all: Vec<Prefix> = self.table.keys().collect();
                    self.export_to(peer, &all).await;
                }
            }
            RibMsg::Drain { vm, state, reply } => {
                let known: std::collections::BTreeSet<String> = self
                    .table
                    .values()
                    .flat_map(|v| v.iter())
                    .filter_map(|x| x.peer.as_deref().and_then(drain_key))
                    .collect();
                let targets: Vec<String> = match &vm {
                    Some(v) if known.contains(v) || self.drains.contains_key(v) => vec![v.clone()],
                    Some(v) => {
                        let _ = reply.send(Err(format!(
                            "no VM `{v}` has routes (give its inventory name or its tap)"
                        )));
                        return;
                    }
                    None => match state {
                        Some(_) => known.into_iter().collect(),
                        None => self.drains.keys().cloned().collect(),
                    },
                };
                for t in &targets {
                    match state {
                        None => {
                            self.drains.remove(t);
                        }
                        Some(s) => {
                            self.drain_generation += 1;
                            let g = self.drain_generation;
                            self.drains.insert(t.clone(), (s, g));
                            if let (DrainState::Shutdown, Some(d)) =
                                (s, self.drain_cfg.withdraw_after)
                            {
                                let tx = self.self_tx.clone();
                                let vm = t.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(d).await;
                                    if let Some(tx) = tx.upgrade() {
                                        let _ = tx.send(RibMsg::DrainExpired { vm, generation: g });
                                    }
                                });
                            }
                        }
                    }
                    tracing::info!(vm = %t, state = ?state, "drain");
                }
                let _ = reply.send(Ok(targets.len()));
                let all: Vec<Prefix> = self.table.keys().collect();
                changed.extend(all);
            }
            RibMsg::DrainExpired { vm, generation } => {
                if let Some(d) = self.drains.get_mut(&vm) {
                    if d.0 == DrainState::Shutdown && d.1 == generation {
                        d.0 = DrainState::Withdrawn;
                        tracing::info!(vm = %vm, "drain: withdrawn after the delay");
                        let all: Vec<Prefix> = self.table.keys().collect();
                        changed.extend(all);
                    }
                }
            }
            RibMsg::DrainStates(tx) => {
                let _ = tx.send(self.drains.iter().map(|(k, v)| (k.clone(), v.0)).collect());
            }
            RibMsg::Unsubscribe(peer) => {
                self.subscribers.remove(&peer);
                self.sent.remove(&peer);
            }
            RibMsg::Show(tx) => {
                let _ = tx.send(self.show());
            }
            RibMsg::Stats(tx) => {
                let _ = tx.send(RibStats {
                    prefixes: self.table.len(),
                    paths: self.table.values().map(|v| v.len()).sum(),
                    installed: self.installed.len(),
                    attribute_sets: self.interned.len(),
                });
            }
        }
    }

    /// Propagates `changed` (sorted and deduplicated here) and empties it.
    async fn flush(&mut self, changed: &mut Vec<Prefix>) {
        changed.sort_unstable();
        changed.dedup();
        self.propagate(changed).await;
        changed.clear();
    }

    async fn propagate(&mut self, changed: &[Prefix]) {
        if changed.is_empty() {
            return;
        }
        let ids: Vec<PeerId> = self.subscribers.keys().copied().collect();
        for id in ids {
            self.export_to(id, changed).await;
        }
        self.sync_fib(changed);
    }

    /// Sends `peer` what changed for it among `prefixes`, after its policy.
    async fn export_to(&mut self, peer: PeerId, prefixes: &[Prefix]) {
        let Some(sub) = self.subscribers.get(&peer) else {
            return;
        };
        let (asn, ebgp, policy) = (sub.asn, sub.ebgp, sub.policy.clone());
        // What the neighbor's sessions can carry: the rest is not its.
        let (v4, v6) = (
            sub.families.contains(&bgp::Afi::Ipv4),
            sub.families.contains(&bgp::Afi::Ipv6),
        );
        // Without prefix matches, what goes out depends only on the best
        // path's attribute set and where it came from: computed (and
        // interned) once per pair, not once per prefix.
        let per_prefix = policy.matches_prefixes();
        let mut cache: foldhash::HashMap<ExportKey, Option<Arc<PathAttributes>>> =
            Default::default();
        let mut last: Option<(ExportKey, Option<Arc<PathAttributes>>)> = None;
        let mut out: Vec<(Prefix, Option<Arc<PathAttributes>>)> = Vec::new();
        let Some(shared) = self.sent.get(&peer).cloned() else {
            return;
        };
        // The lock is not held across the send below.
        {
            let mut sent = shared.lock().unwrap_or_else(|e| e.into_inner());
            for p in prefixes {
                if !match p {
                    Prefix::V4(..) => v4,
                    Prefix::V6(..) => v6,
                } {
                    continue;
                }
                let export = match self.table.get(p).and_then(|v| best(v)) {
                    None => None,
                    Some(b) => {
                        let key = (
                            Arc::as_ptr(b.attrs()) as usize,
                            b.peer.as_ref().map(|q| q.id),
                        );
                        // Neighbouring prefixes mostly share their path (they
                        // came in one UPDATE): the last pair first.
                        let hit = match &last {
                            _ if per_prefix => None,
                            Some((k, a)) if *k == key => Some(a.clone()),
                            _ => cache.get(&key).cloned(),
                        };
                        let a = match hit {
                            Some(a) => a,
                            None => {
                                let a = export_attrs(
                                    b,
                                    p,
                                    peer,
                                    asn,
                                    ebgp,
                                    &policy,
                                    self.local_as,
                                    &self.drains,
                                    self.drain_cfg,
                                )
                                .map(|a| intern_into(&mut self.interned, a));
                                if !per_prefix {
                                    cache.insert(key, a.clone());
                                }
                                a
                            }
                        };
                        if !per_prefix {
                            last = Some((key, a.clone()));
                        }
                        a
                    }
                };
                match export {
                    Some(a) => match sent.insert(*p, a.clone()) {
                        // Interned: the same attributes are the same Arc.
                        Some(b) if Arc::ptr_eq(&a, &b) || *a == *b => {}
                        _ => out.push((*p, Some(a))),
                    },
                    None => {
                        if sent.remove(p).is_some() {
                            out.push((*p, None));
                        }
                    }
                }
            }
        }
        if out.is_empty() {
            return;
        }
        if let Some(sub) = self.subscribers.get(&peer) {
            let _ = sub.tx.send(PeerMsg::Export(out)).await;
        }
    }

    /// Installs the best path of each changed prefix if it came from a peer
    /// whose routes go into the kernel.
    fn sync_fib(&mut self, changed: &[Prefix]) {
        let Some(fib) = &self.fib else { return };
        let hop = |b: &Path| -> Option<FibHop> {
            let peer = b.peer.as_ref().filter(|q| q.kernel)?;
            let via = match b.next_hop()? {
                NextHop::V4(a) => IpAddr::V4(a),
                // The kernel wants the link-local gateway when there is
                // one (RFC 2545): it is what is on the tap.
                NextHop::V6 {
                    link_local: Some(l),
                    ..
                } => IpAddr::V6(l),
                NextHop::V6 { global, .. } => IpAddr::V6(global),
            };
            Some((via, peer.interface.as_ref().map(|i| i.index)))
        };
        let mut ops = Vec::new();
        for p in changed {
            let want: Hops = match self.table.get(p).and_then(|v| best(v).map(|b| (v, b))) {
                None => Hops::default(),
                Some((v, b)) if self.multipath => {
                    let mut hops: Vec<FibHop> = v
                        .iter()
                        .filter(|x| compare_for_multipath(x, b) == Ordering::Equal)
                        .filter_map(hop)
                        .collect();
                    hops.sort();
                    hops.dedup();
                    hops.into()
                }
                Some((_, b)) => match hop(b) {
                    Some(h) => Hops::One(h),
                    None => Hops::default(),
                },
            };
            match (want.is_empty(), self.installed.get(p)) {
                (false, Some(h)) if *h == want => {}
                (false, _) => {
                    ops.push(FibChange::Install {
                        prefix: *p,
                        hops: want.clone(),
                    });
                    self.installed.insert(*p, want);
                }
                (true, Some(_)) => {
                    ops.push(FibChange::Remove { prefix: *p });
                    self.installed.remove(p);
                }
                (true, None) => {}
            }
        }
        if !ops.is_empty() {
            let _ = fib.send(ops);
        }
    }

    fn show(&self) -> Vec<LocRibEntry> {
        let origin = |p: &Path| {
            p.peer
                .as_ref()
                .map_or("local".to_string(), |q| q.name.clone())
        };
        self.table
            .iter()
            .filter_map(|(p, v)| {
                let b = best(v)?;
                Some(LocRibEntry {
                    prefix: p.to_string(),
                    from: origin(b),
                    next_hop: b.next_hop().map(|n| n.to_string()),
                    as_path: b
                        .attrs()
                        .as_path
                        .as_ref()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    others: v
                        .iter()
                        .filter(|x| !std::ptr::eq(*x, b))
                        .map(origin)
                        .collect(),
                    drain: b
                        .peer
                        .as_deref()
                        .and_then(drain_key)
                        .and_then(|k| self.drains.get(&k).map(|d| d.0)),
                    installed: self.installed.contains_key(&p),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgp::AsPath;

    fn peer(id: u64, asn: u32, ebgp: bool, rid: &str) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            id,
            name: format!("p{id}"),
            address: format!("10.0.0.{id}").parse().unwrap(),
            asn,
            router_id: rid.parse().unwrap(),
            ebgp,
            vm: None,
            group: None,
            interface: None,
            kernel: false,
        })
    }

    fn path(peer: Arc<PeerInfo>, f: impl FnOnce(&mut PathAttributes)) -> Path {
        let mut a = PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(AsPath::from_sequence([peer.asn])),
            ..Default::default()
        };
        f(&mut a);
        Path::new(Some(peer), None, Arc::new(a))
    }

    #[test]
    fn best_path_tie_breakers_in_order() {
        let a = peer(1, 65001, true, "10.0.0.1");
        let b = peer(2, 65002, true, "10.0.0.2");
        // Local preference first.
        let x = path(a.clone(), |x| x.local_pref = Some(200));
        let y = path(b.clone(), |_| {});
        assert_eq!(compare(&x, &y), Ordering::Less);
        // Then AS-path length.
        let x = path(a.clone(), |x| {
            x.as_path = Some(AsPath::from_sequence([65001, 1]))
        });
        assert_eq!(compare(&x, &y), Ordering::Greater);
        // Then origin.
        let x = path(a.clone(), |x| x.origin = Some(bgp::Origin::Incomplete));
        assert_eq!(compare(&x, &y), Ordering::Greater);
        // MED counts only within one neighbor AS.
        let x = path(a.clone(), |x| x.med = Some(50));
        assert_eq!(
            compare(&x, &y),
            Ordering::Less,
            "different AS: MED ignored, router id decides"
        );
        let c = peer(3, 65001, true, "10.0.0.0");
        let z = path(c.clone(), |x| x.med = Some(10));
        assert_eq!(compare(&z, &x), Ordering::Less, "same AS: lower MED wins");
        // eBGP over iBGP.
        let i = peer(4, 64612, false, "10.0.0.0");
        let w = path(i, |x| x.as_path = Some(AsPath::from_sequence([65009])));
        assert_eq!(compare(&y, &w), Ordering::Less);
        // Lowest router id, then lowest address.
        let d = peer(5, 65002, true, "10.0.0.2");
        assert_eq!(
            compare(&path(b.clone(), |_| {}), &path(d, |_| {})),
            Ordering::Less
        );
        // Local routes beat everything.
        let local = Path::new(None, None, Arc::new(PathAttributes::default()));
        assert_eq!(compare(&local, &x), Ordering::Less);
    }

    /// A reader waits while the RIB is more than BACKLOG_MAX behind, and
    /// goes on once it has caught up to the limit.
    #[tokio::test]
    async fn readers_wait_for_the_backlog() {
        let b = Backlog::default();
        b.add(BACKLOG_MAX + 10);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.within_limit().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "past the limit: waits");
        b.applied(9);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "one over the limit: still waits");
        b.applied(1);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken at the limit")
            .unwrap();
        // Within the limit, at once.
        b.within_limit().await;
    }

    /// A neighbor configured for one family is exported that family's
    /// prefixes only, and keeps no other in its Adj-RIB-Out.
    #[tokio::test]
    async fn export_only_the_neighbors_families() {
        let rib = spawn(
            64612,
            Vec::new(),
            None,
            false,
            None,
            DrainConfig {
                local_pref: 0,
                withdraw_after: None,
            },
            Backlog::default(),
        )
        .unwrap();
        let mut accept_all = Policy::hypervisor_default();
        accept_all.default_accept = true;
        let (tx, mut rx) = mpsc::channel(64);
        let out = AdjRibOut::default();
        rib.send(RibMsg::Subscribe {
            peer: 9,
            asn: Some(65009),
            ebgp: true,
            policy: Arc::new(accept_all),
            tx,
            out: out.clone(),
            families: vec![bgp::Afi::Ipv4],
        })
        .unwrap();
        let attrs = Arc::new(PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(AsPath::from_sequence([65001])),
            ..Default::default()
        });
        let v4: Prefix = "198.51.100.0/24".parse().unwrap();
        let v6: Prefix = "2001:db8:1::/48".parse().unwrap();
        rib.send(RibMsg::Update {
            peer: peer(1, 65001, true, "10.0.0.1"),
            announce: vec![
                (v4, NextHop::V4("10.0.0.1".parse().unwrap()), attrs.clone()),
                (
                    v6,
                    NextHop::V6 {
                        global: "2001:db8::1".parse().unwrap(),
                        link_local: None,
                    },
                    attrs,
                ),
            ],
            withdraw: Vec::new(),
        })
        .unwrap();
        // Answered once the update has been exported.
        let (q, a) = oneshot::channel();
        rib.send(RibMsg::Stats(q)).unwrap();
        assert_eq!(a.await.unwrap().prefixes, 2, "both in the Loc-RIB");
        let mut exported = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let PeerMsg::Export(changes) = m {
                exported.extend(changes.into_iter().map(|(p, _)| p));
            }
        }
        assert_eq!(exported, vec![v4]);
        let kept: Vec<Prefix> = out.lock().unwrap().keys().collect();
        assert_eq!(kept, vec![v4]);
    }
}

#[cfg(test)]
mod paths_tests {
    use super::*;

    fn p(id: u64) -> Path {
        let peer = Arc::new(PeerInfo {
            id,
            name: format!("p{id}"),
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)),
            asn: 65000,
            router_id: Ipv4Addr::new(10, 0, 0, id as u8),
            ebgp: true,
            vm: None,
            group: None,
            interface: None,
            kernel: false,
        });
        Path::new(Some(peer), None, Arc::new(PathAttributes::default()))
    }

    fn ids(v: &Paths) -> Vec<u64> {
        v.iter().map(|x| x.peer.as_ref().unwrap().id).collect()
    }

    #[test]
    fn one_path_inline_then_many_then_back() {
        let mut v = Paths::default();
        assert!(v.is_empty());
        v.push(p(1));
        assert!(matches!(v, Paths::One(_)));
        v.push(p(2));
        v.push(p(3));
        assert_eq!(ids(&v), [1, 2, 3]);
        v.retain(|x| x.peer.as_ref().unwrap().id != 2);
        assert_eq!(ids(&v), [1, 3]);
        v.retain(|x| x.peer.as_ref().unwrap().id == 3);
        assert!(matches!(v, Paths::One(_)));
        assert_eq!(ids(&v), [3]);
        v.retain(|_| false);
        assert!(v.is_empty());
        // A peer's new path takes the place of its old one.
        let mut v = Paths::from(p(1));
        v.replace(p(1));
        assert!(matches!(v, Paths::One(_)));
        v.replace(p(2));
        v.replace(p(1));
        assert_eq!(ids(&v), [2, 1]);
        // A path is two pointers, and so is a prefix's entry.
        assert_eq!(std::mem::size_of::<Path>(), 16);
        assert_eq!(std::mem::size_of::<Paths>(), 16);
    }
}

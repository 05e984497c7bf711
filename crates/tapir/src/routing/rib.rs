//! The Loc-RIB, a synchronous core: `Rib::apply(msg, outputs)` and
//! `Rib::end_batch(outputs)`; its thread is in `rib_thread`.
//!
//! ```text
//!  peer tasks ──Update/PeerDown (batches)──▶ ┌──────────┐ ──Export (batches)──▶ upstream peer tasks
//!  config (local routes) ───────────────────▶│   Rib    │ ──FIB changes ──────▶ kernel writer
//!  control socket ──Show, Drain, Stats──────▶ └──────────┘ ──later(msg)───────▶ itself (timers)
//! ```
//!
//! Every prefix keeps its candidate paths; the best is chosen per RFC 4271
//! §9.1 (local routes first, then local-pref, AS-path length, origin, MED
//! among the same neighbor AS, eBGP over iBGP, router id, peer address).
//! Path attributes are interned: one shared copy per distinct set.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bgp::{NextHop, PathAttributes, Prefix};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use crate::northbound::config::DrainConfig;
use crate::routing::peer_info::{ConnId, PeerId, PeerInfo};
use crate::routing::policy::{
    Policy, RouteFacts, GRACEFUL_SHUTDOWN, NO_ADVERTISE, NO_EXPORT, NO_EXPORT_SUBCONFED,
};
use crate::routing::prefix_map::PrefixMap;

mod scan;
mod show;
pub use show::ExportView;

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
    /// Route changes sent and not applied yet.
    pub fn queued(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// A peer sent `n` route changes.
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n, Relaxed);
    }

    /// The RIB applied `n`; readers waiting are woken once the count is
    /// back within the limit.
    pub(crate) fn applied(&self, n: usize) {
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

/// How many prefixes of each family the Loc-RIB exports to a neighbor:
/// the size of its Adj-RIB-Out. tapir keeps no Adj-RIB-Out (as BIRD keeps
/// none without `export table`): what a neighbor has is the export of each
/// prefix's best path, derived again from the Loc-RIB when a session needs
/// the whole table, and a change sends the difference between the export
/// of the best path before it and after.
#[derive(Debug, Default)]
pub struct ExportCount {
    v4: std::sync::atomic::AtomicUsize,
    v6: std::sync::atomic::AtomicUsize,
}

impl ExportCount {
    fn of(&self, afi: bgp::Afi) -> &std::sync::atomic::AtomicUsize {
        match afi {
            bgp::Afi::Ipv4 => &self.v4,
            bgp::Afi::Ipv6 => &self.v6,
        }
    }

    /// Prefixes of `afi` exported.
    pub fn get(&self, afi: bgp::Afi) -> usize {
        self.of(afi).load(Relaxed)
    }

    fn add(&self, afi: bgp::Afi, delta: isize) {
        if delta != 0 {
            let _ = self
                .of(afi)
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add_signed(delta)));
        }
    }

    fn clear(&self) {
        self.v4.store(0, Relaxed);
        self.v6.store(0, Relaxed);
    }
}

pub type Exported = Arc<ExportCount>;

/// A candidate path for a prefix: 16 bytes, its next hop and attributes
/// shared with the other prefixes of the UPDATE it came in.
#[derive(Clone, Debug)]
pub struct Path {
    /// `None` for a route tapir originates (`announce` in the config).
    pub peer: Option<Arc<PeerInfo>>,
    pub route: Arc<Route>,
}

/// What paths share: the next hop and the (interned) attributes, from
/// one peer.
#[derive(Debug)]
pub struct Route {
    pub next_hop: Option<NextHop>,
    pub attrs: Arc<PathAttributes>,
    /// Whether its paths went out to each neighbor, as decided when they
    /// were exported: a withdrawal needs no policy run again.
    exports: ExportMemo,
}

impl PartialEq for Route {
    fn eq(&self, o: &Route) -> bool {
        self.next_hop == o.next_hop && self.attrs == o.attrs
    }
}

impl Route {
    pub fn new(next_hop: Option<NextHop>, attrs: Arc<PathAttributes>) -> Route {
        Route {
            next_hop,
            attrs,
            exports: ExportMemo::default(),
        }
    }
}

/// Neighbors a route's export was decided for, and the decision, valid
/// while the rules (policies, drains, neighbors) stay those of one
/// generation. Up to [`MEMO_SLOTS`] neighbors have a slot; the others are
/// decided each time. High 32 bits: the generation; then two bits a slot
/// (decided, exported). Only the RIB thread writes it.
#[derive(Debug, Default)]
struct ExportMemo(std::sync::atomic::AtomicU64);

const MEMO_SLOTS: u8 = 16;

/// A neighbor's slot in the memo under the present rules' generation.
#[derive(Clone, Copy)]
struct MemoSlot {
    generation: u32,
    slot: u8,
}

impl ExportMemo {
    fn get(&self, at: MemoSlot) -> Option<bool> {
        let v = self.0.load(Relaxed);
        if (v >> 32) as u32 != at.generation {
            return None;
        }
        let bits = v >> (2 * at.slot);
        (bits & 1 != 0).then_some(bits & 2 != 0)
    }

    fn set(&self, at: MemoSlot, exported: bool) {
        let v = self.0.load(Relaxed);
        // Decisions of another generation are void.
        let mut low = match (v >> 32) as u32 == at.generation {
            true => v & 0xffff_ffff,
            false => 0,
        };
        low &= !(3 << (2 * at.slot));
        low |= (1 | (u64::from(exported) << 1)) << (2 * at.slot);
        self.0
            .store((u64::from(at.generation) << 32) | low, Relaxed);
    }
}

impl Path {
    pub fn new(
        peer: Option<Arc<PeerInfo>>,
        next_hop: Option<NextHop>,
        attrs: Arc<PathAttributes>,
    ) -> Path {
        Path {
            peer,
            route: Arc::new(Route::new(next_hop, attrs)),
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

    /// Moves out the first path `pick` chooses.
    pub fn take(&mut self, pick: impl Fn(&Path) -> bool) -> Option<Path> {
        match self {
            Paths::One(p) if pick(p) => match std::mem::take(self) {
                Paths::One(p) => Some(p),
                Paths::Many(_) => None,
            },
            Paths::One(_) => None,
            Paths::Many(v) => {
                let i = v.iter().position(pick)?;
                let p = v.remove(i);
                if v.len() == 1 {
                    let last = v.pop().expect("one path");
                    *self = Paths::One(last);
                }
                Some(p)
            }
        }
    }
}

/// What the Loc-RIB sends a subscribed neighbor's task (on the channel
/// given in `RibMsg::Subscribe`).
#[derive(Debug)]
pub enum ToPeer {
    /// Changes to what is exported to the neighbor (`None`: withdrawn);
    /// attributes come without next hop (next-hop-self).
    Export(Vec<(Prefix, Option<Arc<PathAttributes>>)>),
    /// The whole table of a family for connection `conn` (`RibMsg::Refeed`):
    /// End-of-RIB follows the one marked `end`.
    Refeed {
        conn: ConnId,
        family: bgp::AfiSafi,
        routes: Vec<(Prefix, Arc<PathAttributes>)>,
        end: bool,
    },
    /// The Loc-RIB is complete (after a restart's deferral): End-of-RIB may
    /// go out.
    RibReady,
}

/// A drain named a VM the Loc-RIB has no routes from.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("no VM `{0}` has routes (give its inventory name or its tap)")]
pub struct UnknownVm(pub String);

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
        tx: mpsc::Sender<ToPeer>,
        /// Where the RIB counts what it exports to this neighbor.
        exported: Exported,
        /// The families its sessions may carry (the configured ones):
        /// prefixes of others are not exported to it.
        families: Vec<bgp::Afi>,
    },
    Unsubscribe(PeerId),
    /// A session of neighbor `peer` (connection `conn`) needs the whole
    /// table of a family: sent as `ToPeer::Refeed`, the last one marked.
    Refeed {
        peer: PeerId,
        conn: ConnId,
        family: bgp::AfiSafi,
    },
    /// A reload changed a neighbor's export policy: send it the difference.
    SetPolicy {
        peer: PeerId,
        policy: Arc<Policy>,
    },
    Show(oneshot::Sender<Vec<LocRibEntry>>),
    /// What neighbor `peer` is sent (only `prefix`, if given) and why
    /// `prefix` is or is not; `None` if it gets nothing from the Loc-RIB.
    ShowExport {
        peer: PeerId,
        prefix: Option<Prefix>,
        reply: oneshot::Sender<Option<ExportView>>,
    },
    /// tapir's own routes that come and go (the guest role's services,
    /// as their health checks pass and fail).
    Local {
        announce: Vec<Prefix>,
        withdraw: Vec<Prefix>,
    },
    /// Sizes, for metrics.
    Stats(oneshot::Sender<RibStats>),
    /// The prefixes of our protocol the kernel has (a scan), dumped when
    /// `queued` batches had gone to the FIB writer and all were applied:
    /// the difference with what was asked goes to the FIB writer again.
    KernelScan {
        present: Vec<Prefix>,
        queued: u64,
    },
    /// A reload changed `[kernel]`: install or not, ECMP or not, and
    /// (`rekey`) every route again with a new protocol and metric.
    Kernel {
        install: bool,
        multipath: bool,
        rekey: Option<(u8, u32)>,
    },
    /// The restart deferral is over (RFC 4724 §4.1).
    DeferralOver,
    /// Time to drop the attribute sets of a table that shrank (sent by
    /// the RIB to itself).
    Sweep,
    /// Drain (RFC 8326) one VM (by inventory name or tap), or all with
    /// `None`; `state` None undrains.
    Drain {
        vm: Option<String>,
        state: Option<DrainState>,
        reply: oneshot::Sender<Result<usize, UnknownVm>>,
    },
    /// The VM's tap left the hypervisor a while ago and it is on no tap
    /// now: its drain ends, if it has one (true then). Nothing to do, and
    /// nothing done, otherwise.
    UndrainGone {
        vm: String,
        reply: oneshot::Sender<bool>,
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
    /// What kernel scans found and repaired: our routes missing from the
    /// kernel (installed again), routes of our protocol the Loc-RIB did
    /// not have (removed).
    pub kernel_reinstalled: u64,
    pub kernel_removed: u64,
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

/// The name a VM is drained by: its inventory name, or its tap.
pub fn drain_key(p: &PeerInfo) -> Option<String> {
    drain_name(p).map(str::to_string)
}

fn drain_name(p: &PeerInfo) -> Option<&str> {
    p.group.as_ref()?;
    p.vm.as_deref()
        .or_else(|| p.interface.as_ref().map(|i| i.name.as_str()))
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

/// Batches of FIB changes handed to the FIB writer, and batches it has
/// applied: equal when the writer is idle. A kernel scan compares the
/// kernel with what was asked only then, and is dropped if more was
/// asked since (what is still queued is not missing).
pub struct FibProgress {
    pub queued: std::sync::atomic::AtomicU64,
    pub done: std::sync::atomic::AtomicU64,
}

pub static FIB_PROGRESS: FibProgress = FibProgress {
    queued: std::sync::atomic::AtomicU64::new(0),
    done: std::sync::atomic::AtomicU64::new(0),
};

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
    /// From here on, routes go in with this protocol and metric (a
    /// reload changed `[kernel]`).
    Settings {
        protocol: u8,
        metric: u32,
    },
}

struct Subscriber {
    asn: Option<u32>,
    ebgp: bool,
    policy: Arc<Policy>,
    families: Vec<bgp::Afi>,
    exported: Exported,
    /// Its place in the routes' export memos, if one was free.
    slot: Option<u8>,
}

impl Subscriber {
    fn takes(&self, p: &Prefix) -> bool {
        self.families.contains(&p.afi())
    }
}

/// A prefix whose best path may have changed, and the best path it had
/// when the neighbors were last sent its export: they have that path's
/// export, so what goes out is the difference.
struct Change {
    prefix: Prefix,
    was: Option<Path>,
}

impl Change {
    fn new(prefix: Prefix, paths: Option<&Paths>, sel: Selection) -> Change {
        Change {
            prefix,
            was: paths.and_then(|v| sel.best(v)).cloned(),
        }
    }
}

type Drains = BTreeMap<String, (DrainState, u64)>;

/// The rules the neighbors' exports were last computed by: the present
/// ones, or those before a reload changed a policy or a drain began or
/// ended.
#[derive(Clone, Copy)]
enum Before<'a> {
    Now,
    Policy(&'a Arc<Policy>),
    Drains(&'a Drains),
}

/// Computes what goes to one neighbor for best paths, once per attribute
/// set and origin when the policy looks at no prefix.
struct Exporter<'a> {
    peer: PeerId,
    asn: Option<u32>,
    ebgp: bool,
    policy: &'a Policy,
    local_as: u32,
    drains: &'a Drains,
    drain_cfg: DrainConfig,
    per_prefix: bool,
    cache: foldhash::HashMap<ExportKey, Option<Arc<PathAttributes>>>,
    last: Option<(ExportKey, Option<Arc<PathAttributes>>)>,
    /// Whether a path goes out, where only that was asked.
    decided: foldhash::HashMap<ExportKey, bool>,
    /// Where decisions under the present rules are kept on the routes:
    /// not for rules of before, nor for a policy that looks at prefixes.
    memo: Option<MemoSlot>,
}

/// How long after the Loc-RIB halved its unused attribute sets go.
pub(crate) const SWEEP_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Attribute sets, each once, each with its hash: a table that grows
/// moves its entries without hashing a set again (a table transfer grows
/// it from nothing to a hundred thousand sets).
#[derive(Default)]
struct Interned {
    table: hashbrown::HashTable<(u64, Arc<PathAttributes>)>,
    hasher: foldhash::fast::RandomState,
}

impl Interned {
    fn len(&self) -> usize {
        self.table.len()
    }

    /// The one copy of `attrs` (exports, mostly new sets).
    fn intern(&mut self, attrs: PathAttributes) -> Arc<PathAttributes> {
        self.intern_arc(Arc::new(attrs))
    }

    /// The one copy of a set that already sits behind an `Arc` (the
    /// peer's, shared by the prefixes of one UPDATE): no copy.
    fn intern_arc(&mut self, attrs: Arc<PathAttributes>) -> Arc<PathAttributes> {
        let h = self.hasher.hash_one(&*attrs);
        let same = |(k, a): &(u64, Arc<PathAttributes>)| {
            *k == h && (Arc::ptr_eq(a, &attrs) || **a == *attrs)
        };
        match self.table.entry(h, same, |(k, _)| *k) {
            hashbrown::hash_table::Entry::Occupied(e) => e.get().1.clone(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((h, attrs.clone()));
                attrs
            }
        }
    }

    /// Drops the sets nobody else holds. A withdrawn table leaves a
    /// million of them: another thread frees them, so that the RIB goes
    /// on with the withdrawals meanwhile.
    fn sweep(&mut self) {
        let dead: Vec<Arc<PathAttributes>> = self
            .table
            .extract_if(|(_, a)| Arc::strong_count(a) == 1)
            .map(|(_, a)| a)
            .collect();
        if dead.len() >= 10_000 {
            crate::tasks::drop_elsewhere(dead);
        }
    }
}

impl<'a> Exporter<'a> {
    /// Never back to where it came from; never to a neighbor whose AS is
    /// in the path (it would drop it anyway); not a draining VM's once
    /// withdrawn (RFC 8326); not against the well-known communities it
    /// arrived with (RFC 1997): NO_ADVERTISE to nobody, NO_EXPORT and
    /// NO_EXPORT_SUBCONFED to no external neighbor.
    fn barred(&self, b: &Path) -> bool {
        self.bar(b).is_some()
    }

    /// What bars `b` (see `barred`), if anything, as `show routes --why`
    /// says it.
    fn bar(&self, b: &Path) -> Option<&'static str> {
        if b.peer.as_ref().is_some_and(|q| q.id == self.peer) {
            return Some("it came from this neighbor");
        }
        let communities = &b.attrs().communities;
        if !communities.is_empty() {
            if communities.contains(&NO_ADVERTISE) {
                return Some("it carries NO_ADVERTISE");
            }
            if self.ebgp
                && communities
                    .iter()
                    .any(|&c| c == NO_EXPORT || c == NO_EXPORT_SUBCONFED)
            {
                return Some("it carries NO_EXPORT, and this neighbor is external");
            }
        }
        if let (Some(asn), Some(path)) = (self.asn, &b.attrs().as_path) {
            if path.segments.iter().any(|s| s.asns().contains(&asn)) {
                return Some("the neighbor's AS is in its AS path");
            }
        }
        (self.drain(b) == Some(DrainState::Withdrawn)).then_some("its VM is drained (withdrawn)")
    }

    fn drain(&self, b: &Path) -> Option<DrainState> {
        let key = b.peer.as_deref().and_then(drain_key)?;
        self.drains.get(&key).map(|d| d.0)
    }

    /// What goes to the neighbor for best path `b` of `p`, if anything.
    fn attrs(&self, b: &Path, p: &Prefix) -> Option<PathAttributes> {
        if self.barred(b) {
            return None;
        }
        let facts = RouteFacts {
            prefix: p,
            attrs: b.attrs(),
            from: b.peer.as_deref(),
        };
        let mut a = self.policy.export(&facts, self.local_as, self.ebgp)?;
        // RFC 8326: a draining VM's routes go out with GRACEFUL_SHUTDOWN
        // (and low local-pref inside the AS).
        if self.drain(b) == Some(DrainState::Shutdown) {
            if !a.communities.contains(&GRACEFUL_SHUTDOWN) {
                a.communities.push(GRACEFUL_SHUTDOWN);
            }
            if !self.ebgp {
                a.local_pref = Some(self.drain_cfg.local_pref);
            } else if self.drain_cfg.prepend > 0 {
                // `[drain] prepend`: a longer path, which any ToR prefers
                // less, policy or not.
                let mut path = a.as_path.take().unwrap_or_default();
                for _ in 0..self.drain_cfg.prepend {
                    path.prepend(self.local_as);
                }
                a.as_path = Some(path);
            }
        }
        // A route whose attributes do not fit in a message cannot be
        // sent: it is not exported (the neighbor gets a withdrawal if it
        // had the route), never left as it was.
        if !bgp::update::announce_fits(&a) {
            crate::limits::hit(crate::limits::Limit::UpdateTooLarge);
            return None;
        }
        Some(a)
    }

    /// Whether best path `b` of `p` goes to the neighbor at all (a
    /// withdrawal needs no more), without making its attributes.
    fn exports(&mut self, b: &Path, p: &Prefix) -> bool {
        if let Some(d) = self.memo.and_then(|m| b.route.exports.get(m)) {
            return d;
        }
        let key = export_key(b);
        if !self.per_prefix {
            if let Some((k, a)) = &self.last {
                if *k == key {
                    return a.is_some();
                }
            }
            if let Some(a) = self.cache.get(&key) {
                return a.is_some();
            }
            if let Some(d) = self.decided.get(&key) {
                return *d;
            }
        }
        let d = !self.barred(b)
            && self.policy.accepts(&RouteFacts {
                prefix: p,
                attrs: b.attrs(),
                from: b.peer.as_deref(),
            });
        // Kept on the route where it can be, else for this batch.
        match self.memo {
            Some(m) => b.route.exports.set(m, d),
            None if !self.per_prefix => {
                self.decided.insert(key, d);
            }
            None => {}
        }
        d
    }

    fn new(
        sub: &Subscriber,
        peer: PeerId,
        policy: &'a Policy,
        local_as: u32,
        drains: &'a Drains,
        drain_cfg: DrainConfig,
    ) -> Self {
        Exporter {
            peer,
            asn: sub.asn,
            ebgp: sub.ebgp,
            policy,
            local_as,
            drains,
            drain_cfg,
            per_prefix: policy.matches_prefixes(),
            cache: Default::default(),
            last: None,
            decided: Default::default(),
            memo: None,
        }
    }

    /// Keeps this exporter's decisions on the routes (it applies the
    /// present rules, of generation `generation`).
    fn memoized(mut self, sub: &Subscriber, generation: u32) -> Self {
        if !self.per_prefix {
            self.memo = sub.slot.map(|slot| MemoSlot { generation, slot });
        }
        self
    }

    /// The export of best path `b` of `p`, interned in `set`: equal
    /// exports are one `Arc` (the neighbor's task groups prefixes into
    /// UPDATEs by it), and one the Loc-RIB already has is not made again.
    fn export(&mut self, b: &Path, p: &Prefix) -> Option<Arc<PathAttributes>> {
        let a = self.export_once(b, p);
        if let Some(m) = self.memo {
            b.route.exports.set(m, a.is_some());
        }
        a
    }

    /// The attribute set `b` goes out with, once per source set and
    /// origin (`cache`). Export sets are not interned: in a full table
    /// nearly each is used once, and kept in the table until a sweep they
    /// were a third of the peak memory.
    fn export_once(&mut self, b: &Path, p: &Prefix) -> Option<Arc<PathAttributes>> {
        let key = export_key(b);
        // Neighbouring prefixes mostly share their path (they came in one
        // UPDATE): the last pair first.
        if !self.per_prefix {
            if let Some((k, a)) = &self.last {
                if *k == key {
                    return a.clone();
                }
            }
            if let Some(a) = self.cache.get(&key) {
                let a = a.clone();
                self.last = Some((key, a.clone()));
                return a;
            }
        }
        let a = self.attrs(b, p).map(Arc::new);
        if !self.per_prefix {
            self.cache.insert(key, a.clone());
            self.last = Some((key, a.clone()));
        }
        a
    }
}

pub struct Rib {
    local_as: u32,
    table: PrefixMap<Paths>,
    /// Every attribute set in use, once: the paths' and, until the next
    /// sweep, the exports'.
    interned: Interned,
    subscribers: HashMap<PeerId, Subscriber>,
    /// Routes go into the kernel (a FIB writer listens).
    fib: bool,
    /// What the kernel was told, per prefix.
    installed: PrefixMap<Hops>,
    /// Install all equally good paths as one ECMP route.
    multipath: bool,
    /// False while a graceful restart's deferral runs.
    ready: bool,
    /// Kernel routes kept from before a restart, not yet confirmed.
    stale: Vec<Prefix>,
    drains: Drains,
    /// The interned set is swept of unused entries past this size.
    sweep_at: usize,
    /// The most prefixes the Loc-RIB had since the last sweep: it is
    /// swept too once the table is down to half (a peer that withdrew or
    /// lost its table leaves its sets behind otherwise).
    table_peak: usize,
    /// A `Sweep` is on its way.
    sweep_due: bool,
    drain_cfg: DrainConfig,
    drain_generation: u64,
    /// The generation of the export rules (policies, drains, neighbors)
    /// that routes' export memos were decided under.
    rules: u32,
    /// Changes not yet propagated (the batch so far).
    pending: Vec<Change>,
    restarting: Option<Arc<std::sync::atomic::AtomicBool>>,
    backlog: Backlog,
    /// Kernel scans' repairs: (installed again, removed).
    kernel_repairs: (u64, u64),
}

/// Where the Loc-RIB's outputs go: the subscribed neighbors' export
/// channels, the kernel's FIB writer, and the RIB itself later (timers).
/// The RIB thread's `Shell` is one; tests collect them.
pub trait Outputs {
    /// A message for subscribed neighbor `peer` (may wait while its
    /// channel is full: the RIB goes no faster than the neighbor reads).
    fn export(&mut self, peer: PeerId, m: ToPeer);
    /// Route changes for the kernel.
    fn fib(&mut self, ops: Vec<FibChange>);
    /// `m` to the RIB itself after `delay`.
    fn later(&mut self, delay: std::time::Duration, m: RibMsg);
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

/// A best path's attribute set and where it came from (the `PeerInfo`,
/// both by address): what an export depends on when the policy matches no
/// prefixes. A peer renamed (its VM found in the inventory) has a new
/// `PeerInfo`, and its paths' exports may differ (drains, `vm` terms).
/// The paths hold both for as long as a key is used, so neither address
/// can be reused meanwhile.
type ExportKey = (usize, Option<usize>);

fn export_key(b: &Path) -> ExportKey {
    (
        Arc::as_ptr(b.attrs()) as usize,
        b.peer.as_ref().map(|q| Arc::as_ptr(q) as usize),
    )
}

/// Best-path selection under the drains in force (RFC 8326 §4): a path
/// from a drained VM, or one its sender marked GRACEFUL_SHUTDOWN, loses to
/// every other path, as if its LOCAL_PREF were 0. Traffic for an anycast
/// prefix moves to another VM on this hypervisor (kernel and upstream)
/// before the drained one stops.
///
/// A VM's path marked NO_EXPORT or NO_ADVERTISE loses the same way: the
/// export looks at the best path only, so one VM could otherwise take a
/// prefix it shares with others (an anycast service) off the top-of-rack
/// for all of them.
#[derive(Clone, Copy)]
struct Selection<'a> {
    drains: &'a Drains,
}

impl<'a> Selection<'a> {
    fn new(drains: &'a Drains) -> Self {
        Selection { drains }
    }

    /// Loses to any path that is not.
    fn demoted(&self, p: &Path) -> bool {
        let drained = || {
            p.peer
                .as_deref()
                .and_then(drain_name)
                .is_some_and(|k| self.drains.contains_key(k))
        };
        let from_vm = p.peer.as_ref().is_some_and(|q| q.group.is_some());
        let c = &p.attrs().communities;
        (!self.drains.is_empty() && drained())
            || c.contains(&GRACEFUL_SHUTDOWN)
            || from_vm && (c.contains(&NO_EXPORT) || c.contains(&NO_ADVERTISE))
    }

    fn compare(&self, a: &Path, b: &Path) -> Ordering {
        self.demoted(a)
            .cmp(&self.demoted(b))
            .then_with(|| compare(a, b))
    }

    /// Equally good for ECMP: a demoted path never shares with another.
    fn multipath_equal(&self, a: &Path, b: &Path) -> bool {
        self.demoted(a) == self.demoted(b) && compare_for_multipath(a, b) == Ordering::Equal
    }

    fn best<'p>(&self, paths: &'p [Path]) -> Option<&'p Path> {
        match paths {
            [one] => Some(one),
            _ => paths.iter().min_by(|a, b| self.compare(a, b)),
        }
    }
}

impl Rib {
    /// Adds tapir's own path (no AS path, origin IGP) to each prefix that
    /// has none yet.
    fn add_local(&mut self, prefixes: Vec<Prefix>, changed: &mut Vec<Change>) {
        let attrs = self.interned.intern(PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(bgp::AsPath::default()),
            ..Default::default()
        });
        let local = Arc::new(Route::new(None, attrs));
        let sel = Selection::new(&self.drains);
        for p in prefixes {
            let path = Path {
                peer: None,
                route: local.clone(),
            };
            let mut added = None;
            self.table.upsert(p, |v| match v {
                Some(v) if v.iter().any(|x| x.peer.is_none()) => None,
                Some(v) => {
                    added = Some(Change::new(p, Some(v), sel));
                    v.push(path);
                    None
                }
                None => {
                    added = Some(Change::new(p, None, sel));
                    Some(Paths::One(path))
                }
            });
            changed.extend(added);
        }
    }

    /// A Loc-RIB with tapir's own routes (`local_routes`); `fib`: routes
    /// go into the kernel. After a graceful restart (`restart`), the kernel
    /// still holds our old routes and the table is not complete until
    /// `RibMsg::DeferralOver`.
    pub fn new(
        local_as: u32,
        local_routes: Vec<Prefix>,
        fib: bool,
        multipath: bool,
        restart: Option<Restart>,
        drain_cfg: DrainConfig,
        backlog: Backlog,
    ) -> Rib {
        let mut installed = PrefixMap::new();
        let (ready, stale, restarting) = match restart {
            None => (true, Vec::new(), None),
            Some(r) => {
                // The kernel still has these; an empty hop list stands for
                // "there, from before" so that any new choice replaces it.
                for p in &r.stale {
                    installed.insert(*p, Hops::default());
                }
                (false, r.stale, Some(r.restarting))
            }
        };
        let mut rib = Rib {
            local_as,
            table: PrefixMap::new(),
            interned: Default::default(),
            subscribers: HashMap::new(),
            fib,
            installed,
            multipath,
            ready,
            stale,
            restarting,
            drains: BTreeMap::new(),
            sweep_at: 1024,
            table_peak: 0,
            sweep_due: false,
            drain_cfg,
            drain_generation: 0,
            rules: 1,
            pending: Vec::new(),
            backlog,
            kernel_repairs: (0, 0),
        };
        // Tapir's own routes are announced, not forwarded: not into the
        // kernel.
        rib.add_local(local_routes, &mut Vec::new());
        rib
    }

    /// Applies one message. What it changes goes out every CHUNK prefixes
    /// (so that a table transfer does not gather in one list, and in one
    /// export batch per neighbor), and at `end_batch`.
    pub fn apply(&mut self, m: RibMsg, sink: &mut dyn Outputs) {
        let mut changed = std::mem::take(&mut self.pending);
        // A question is answered once what came before it has reached the
        // kernel and the neighbors; a newcomer is counted, and a session
        // fed, from the table as its neighbors were told it (pending
        // changes would be sent to them again).
        if matches!(
            m,
            RibMsg::Show(_)
                | RibMsg::ShowExport { .. }
                | RibMsg::Stats(_)
                | RibMsg::DrainStates(_)
                | RibMsg::Subscribe { .. }
                | RibMsg::Refeed { .. }
        ) {
            self.flush(&mut changed, sink);
        }
        self.handle(m, &mut changed, sink);
        if changed.len() >= CHUNK {
            self.flush(&mut changed, sink);
        }
        self.pending = changed;
    }

    /// The end of a batch of messages: every pending change goes out.
    pub fn end_batch(&mut self, sink: &mut dyn Outputs) {
        let mut changed = std::mem::take(&mut self.pending);
        self.flush(&mut changed, sink);
        self.pending = changed;
    }

    fn handle(&mut self, m: RibMsg, changed: &mut Vec<Change>, sink: &mut dyn Outputs) {
        match m {
            RibMsg::Update {
                peer,
                announce,
                withdraw,
            } => self.update(&peer, announce, withdraw, changed),
            RibMsg::Local { announce, withdraw } => {
                let sel = Selection::new(&self.drains);
                for p in withdraw {
                    let mut change = None;
                    self.table.change(&p, |v| {
                        change = Some(Change::new(p, Some(v), sel));
                        v.retain(|x| x.peer.is_some());
                        !v.is_empty()
                    });
                    changed.extend(change);
                }
                self.add_local(announce, changed);
            }
            RibMsg::PeerDown(id) => self.peer_down(id, changed, sink),
            RibMsg::Subscribe {
                peer,
                asn,
                ebgp,
                policy,
                tx,
                exported,
                families,
            } => {
                // The channel is the thread's business (`Shell`).
                let _ = tx;
                exported.clear();
                self.rules_changed();
                let slot = (0..MEMO_SLOTS).find(|s| {
                    !self
                        .subscribers
                        .iter()
                        .any(|(id, x)| *id != peer && x.slot == Some(*s))
                });
                self.subscribers.insert(
                    peer,
                    Subscriber {
                        asn,
                        ebgp,
                        policy,
                        families,
                        exported,
                        slot,
                    },
                );
                // The newcomer has no session yet: its sessions ask for
                // the whole table once up. Here it is only counted.
                self.reexport(Some(peer), Before::Now, false, sink);
                if self.ready {
                    sink.export(peer, ToPeer::RibReady);
                }
            }
            RibMsg::Sweep => self.sweep(),
            RibMsg::DeferralOver => self.deferral_over(sink),
            RibMsg::SetPolicy { peer, policy } => {
                // What is pending goes out under the old policy first.
                self.flush(changed, sink);
                self.rules_changed();
                if let Some(s) = self.subscribers.get_mut(&peer) {
                    let old = std::mem::replace(&mut s.policy, policy);
                    self.reexport(Some(peer), Before::Policy(&old), true, sink);
                }
            }
            RibMsg::Refeed { peer, conn, family } => self.refeed(peer, conn, family, sink),
            RibMsg::Drain { vm, state, reply } => self.drain(vm, state, reply, changed, sink),
            RibMsg::UndrainGone { vm, reply } => {
                let drained = self.drains.contains_key(&vm);
                if drained {
                    let (tx, _) = oneshot::channel();
                    self.drain(Some(vm), None, tx, changed, sink);
                }
                let _ = reply.send(drained);
            }
            RibMsg::DrainExpired { vm, generation } => {
                let due = self
                    .drains
                    .get(&vm)
                    .is_some_and(|d| d.0 == DrainState::Shutdown && d.1 == generation);
                if due {
                    // What is pending goes out under the old drains first.
                    self.flush(changed, sink);
                    self.rules_changed();
                    let old = self.drains.clone();
                    if let Some(d) = self.drains.get_mut(&vm) {
                        d.0 = DrainState::Withdrawn;
                    }
                    tracing::info!(vm = %vm, "drain: withdrawn after the delay");
                    self.reexport(None, Before::Drains(&old), true, sink);
                }
            }
            RibMsg::DrainStates(tx) => {
                let _ = tx.send(self.drains.iter().map(|(k, v)| (k.clone(), v.0)).collect());
            }
            RibMsg::Unsubscribe(peer) => {
                self.subscribers.remove(&peer);
            }
            RibMsg::Show(tx) => {
                let _ = tx.send(self.show());
            }
            RibMsg::ShowExport {
                peer,
                prefix,
                reply,
            } => {
                let _ = reply.send(self.show_export(peer, prefix));
            }
            RibMsg::KernelScan { present, queued } => self.kernel_scan(present, queued, sink),
            RibMsg::Kernel {
                install,
                multipath,
                rekey,
            } => self.kernel_settings(install, multipath, rekey, sink),
            RibMsg::Stats(tx) => {
                let _ = tx.send(RibStats {
                    prefixes: self.table.len(),
                    paths: self.table.values().map(|v| v.len()).sum(),
                    installed: self.installed.len(),
                    attribute_sets: self.interned.len(),
                    kernel_reinstalled: self.kernel_repairs.0,
                    kernel_removed: self.kernel_repairs.1,
                });
            }
        }
    }

    /// A batch from one peer: its paths replace what it had for those
    /// prefixes, and withdrawn prefixes lose its path.
    fn update(
        &mut self,
        peer: &Arc<PeerInfo>,
        announce: Vec<(Prefix, NextHop, Arc<PathAttributes>)>,
        withdraw: Vec<Prefix>,
        changed: &mut Vec<Change>,
    ) {
        self.backlog.applied(announce.len() + withdraw.len());
        let sel = Selection::new(&self.drains);
        for p in withdraw {
            let mut change = None;
            let gone = self.table.take_unless(&p, |v| match v {
                // The common case: the prefix goes, and its one
                // path moves into the change record.
                Paths::One(x) if x.peer.as_ref().is_some_and(|q| q.id == peer.id) => false,
                _ => {
                    change = Some(Change::new(p, Some(v), sel));
                    v.retain(|x| x.peer.as_ref().is_none_or(|q| q.id != peer.id));
                    !v.is_empty()
                }
            });
            if let (None, Some(Paths::One(x))) = (&change, gone) {
                change = Some(Change {
                    prefix: p,
                    was: Some(x),
                });
            }
            changed.extend(change);
        }
        // The prefixes of one UPDATE share one attribute Arc and
        // next hop: interned once, one `Route` for all of them.
        let mut last: Option<(Arc<PathAttributes>, Arc<Route>)> = None;
        for (p, nh, attrs) in announce {
            let route = match &last {
                Some((from, to)) if Arc::ptr_eq(from, &attrs) && to.next_hop == Some(nh) => {
                    to.clone()
                }
                _ => {
                    let to = Arc::new(Route::new(
                        Some(nh),
                        self.interned.intern_arc(attrs.clone()),
                    ));
                    last = Some((attrs, to.clone()));
                    to
                }
            };
            let path = Path {
                peer: Some(peer.clone()),
                route,
            };
            let mut was = None;
            self.table.upsert(p, |v| match v {
                Some(v) => {
                    was = sel.best(v).cloned();
                    v.replace(path);
                    None
                }
                None => Some(Paths::One(path)),
            });
            changed.push(Change { prefix: p, was });
        }
    }

    /// `tapir drain`: starts or ends the drain of one VM, or of all.
    fn drain(
        &mut self,
        vm: Option<String>,
        state: Option<DrainState>,
        reply: oneshot::Sender<Result<usize, UnknownVm>>,
        changed: &mut Vec<Change>,
        sink: &mut dyn Outputs,
    ) {
        let known: std::collections::BTreeSet<String> = self
            .table
            .values()
            .flat_map(|v| v.iter())
            .filter_map(|x| x.peer.as_deref().and_then(drain_key))
            .collect();
        let targets: Vec<String> = match &vm {
            Some(v) if known.contains(v) || self.drains.contains_key(v) => vec![v.clone()],
            Some(v) => {
                let _ = reply.send(Err(UnknownVm(v.clone())));
                return;
            }
            None => match state {
                Some(_) => known.into_iter().collect(),
                None => self.drains.keys().cloned().collect(),
            },
        };
        // What is pending goes out under the old drains first.
        self.flush(changed, sink);
        self.rules_changed();
        let old = self.drains.clone();
        for t in &targets {
            match state {
                None => {
                    self.drains.remove(t);
                }
                Some(s) => {
                    self.drain_generation += 1;
                    let g = self.drain_generation;
                    self.drains.insert(t.clone(), (s, g));
                    if let (DrainState::Shutdown, Some(d)) = (s, self.drain_cfg.withdraw_after) {
                        let vm = t.clone();
                        sink.later(d, RibMsg::DrainExpired { vm, generation: g });
                    }
                }
            }
            tracing::info!(vm = %t, state = ?state, "drain");
        }
        let _ = reply.send(Ok(targets.len()));
        self.reexport(None, Before::Drains(&old), true, sink);
    }

    /// The graceful restart's deferral is over: the Loc-RIB is complete.
    fn deferral_over(&mut self, sink: &mut dyn Outputs) {
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
        if self.fib && !ops.is_empty() {
            sink.fib(ops);
        }
        for id in self.subscribers.keys() {
            sink.export(*id, ToPeer::RibReady);
        }
    }

    /// The export rules change (after pending changes went out under the
    /// old ones): what the routes' memos say is void.
    fn rules_changed(&mut self) {
        // Wrapping: a route would have to live through 2^32 changes of
        // the rules for its memo to be read as of today's.
        self.rules = self.rules.wrapping_add(1).max(1);
    }

    /// Propagates `changed` and empties it. A prefix changed more than
    /// once since the last flush keeps its first record: the best path
    /// the neighbors were sent the export of.
    /// A session's routes leave a chunk at a time: the neighbors' tasks
    /// send the first withdrawals, and the kernel writer removes the first
    /// routes, while the rest are decided here (a million routes took
    /// half a second before the first withdrawal left).
    fn peer_down(&mut self, id: PeerId, changed: &mut Vec<Change>, sink: &mut dyn Outputs) {
        let from = |x: &Path| x.peer.as_ref().is_some_and(|q| q.id == id);
        let gone: Vec<Prefix> = self
            .table
            .iter()
            .filter(|(_, v)| v.iter().any(from))
            .map(|(p, _)| p)
            .collect();
        let multipath = self.multipath;
        for part in gone.chunks(CHUNK) {
            let sel = Selection::new(&self.drains);
            for &prefix in part {
                self.table.change(&prefix, |v| {
                    let was_best = sel.best(v).is_some_and(from);
                    // A session has one path per prefix. When it was the
                    // best, it is what the change records (moved, not
                    // copied); when not, nothing changes but the kernel's
                    // next hops under multipath.
                    let path = v.take(from);
                    if was_best {
                        changed.push(Change { prefix, was: path });
                    } else if multipath {
                        changed.push(Change::new(prefix, Some(v), sel));
                    }
                    !v.is_empty()
                });
            }
            self.flush(changed, sink);
        }
    }

    fn flush(&mut self, changed: &mut Vec<Change>, sink: &mut dyn Outputs) {
        // Stable: of equal prefixes, the first recorded stays first.
        changed.sort_by_key(|c| c.prefix);
        changed.dedup_by(|later, first| later.prefix == first.prefix);
        // A lost session's whole table goes out a chunk at a time: the
        // neighbors' tasks encode and send the first withdrawals, and the
        // kernel writer removes the first routes, while the rest is
        // decided here.
        for part in changed.chunks(CHUNK) {
            self.propagate(part, sink);
        }
        changed.clear();
        // Drop attribute sets nobody uses any more, once the set has
        // doubled since the last sweep (a sweep per flush would make a
        // table transfer quadratic). Once the table has halved, a little
        // later: freeing a withdrawn table's sets as it goes took a third
        // of a withdrawal's time.
        self.table_peak = self.table_peak.max(self.table.len());
        if self.interned.len() > self.sweep_at {
            self.sweep();
        } else if self.table.len() * 2 < self.table_peak && !self.sweep_due {
            self.sweep_due = true;
            sink.later(SWEEP_DELAY, RibMsg::Sweep);
        }
    }

    fn sweep(&mut self) {
        self.interned.sweep();
        self.sweep_at = (2 * self.interned.len()).max(1024);
        self.table_peak = self.table.len();
        self.sweep_due = false;
    }

    fn propagate(&mut self, changed: &[Change], sink: &mut dyn Outputs) {
        if changed.is_empty() {
            return;
        }
        let ids: Vec<PeerId> = self.subscribers.keys().copied().collect();
        for id in ids {
            self.export_to(id, changed, Before::Now, true, sink);
        }
        self.sync_fib(changed.iter().map(|c| c.prefix), sink);
    }

    /// Every prefix again, for one neighbor or all, after the rules
    /// changed (`before`), or to count what a newcomer would be sent.
    fn reexport(
        &mut self,
        peer: Option<PeerId>,
        before: Before<'_>,
        send: bool,
        sink: &mut dyn Outputs,
    ) {
        let ids: Vec<PeerId> = match peer {
            Some(p) => vec![p],
            None => self.subscribers.keys().copied().collect(),
        };
        let all: Vec<Prefix> = self.table.keys().collect();
        for chunk in all.chunks(CHUNK) {
            // A newcomer was sent nothing; the others were sent the export
            // of the best path they still have, under the old rules (the
            // best path itself may change with the drains).
            let sel = match before {
                Before::Drains(d) => Selection::new(d),
                _ => Selection::new(&self.drains),
            };
            let changes: Vec<Change> = chunk
                .iter()
                .map(|p| match before {
                    Before::Now => Change {
                        prefix: *p,
                        was: None,
                    },
                    _ => Change::new(*p, self.table.get(p), sel),
                })
                .collect();
            for id in &ids {
                self.export_to(*id, &changes, before, send, sink);
            }
            if let Before::Drains(_) = before {
                // Where a drained path lost (or won back) best-path
                // selection, the kernel follows.
                let several: Vec<Prefix> = chunk
                    .iter()
                    .filter(|p| self.table.get(p).is_some_and(|v| v.len() > 1))
                    .copied()
                    .collect();
                self.sync_fib(several.into_iter(), sink);
            }
        }
    }

    /// Sends neighbor `peer` what changed for it among `changes`: the
    /// export of each prefix's best path now, where it differs from the
    /// export of the best path it had (by the rules `before`). Counts what
    /// is exported; sends only with `send`.
    /// What exporting to neighbor `peer` under the rules now takes: its
    /// subscription, the best-path selection under the drains in force,
    /// and its exporter (memoized).
    fn exporting_to(&self, peer: PeerId) -> Option<(&Subscriber, Selection<'_>, Exporter<'_>)> {
        let sub = self.subscribers.get(&peer)?;
        let now = self
            .exporter_with(sub, peer, &sub.policy, &self.drains)
            .memoized(sub, self.rules);
        Some((sub, Selection::new(&self.drains), now))
    }

    /// `sub`'s exporter under `policy` and `drains` (the ones now, or
    /// those before a change).
    fn exporter_with<'a>(
        &'a self,
        sub: &'a Subscriber,
        peer: PeerId,
        policy: &'a Policy,
        drains: &'a Drains,
    ) -> Exporter<'a> {
        Exporter::new(sub, peer, policy, self.local_as, drains, self.drain_cfg)
    }

    fn export_to(
        &mut self,
        peer: PeerId,
        changes: &[Change],
        before: Before<'_>,
        send: bool,
        sink: &mut dyn Outputs,
    ) {
        let Some((sub, sel, mut now)) = self.exporting_to(peer) else {
            return;
        };
        let table = &self.table;
        let mut then = match before {
            Before::Now => None,
            Before::Policy(p) => Some(self.exporter_with(sub, peer, p, &self.drains)),
            Before::Drains(d) => Some(self.exporter_with(sub, peer, &sub.policy, d)),
        };
        let mut out: Vec<(Prefix, Option<Arc<PathAttributes>>)> = Vec::new();
        let (mut d4, mut d6) = (0isize, 0isize);
        for c in changes {
            if !sub.takes(&c.prefix) {
                continue;
            }
            let b = table.get(&c.prefix).and_then(|v| sel.best(v));
            // The same attributes from the same peer under the same rules:
            // the same export.
            if let (Before::Now, Some(b), Some(w)) = (before, b, &c.was) {
                if export_key(b) == export_key(w) {
                    continue;
                }
            }
            let new = b.and_then(|b| now.export(b, &c.prefix));
            let e = then.as_mut().unwrap_or(&mut now);
            let delta = match (&new, c.was.as_ref().map(|w| (e, w))) {
                (None, None) => continue,
                // Gone: withdrawn if it had gone out.
                (None, Some((e, w))) => match e.exports(w, &c.prefix) {
                    true => -1,
                    false => continue,
                },
                (Some(_), None) => 1,
                (Some(n), Some((e, w))) => match e.export(w, &c.prefix) {
                    None => 1,
                    // Equal sets are mostly one Arc (interned).
                    Some(o) if Arc::ptr_eq(&o, n) || *o == **n => continue,
                    Some(_) => 0,
                },
            };
            match c.prefix {
                Prefix::V4(..) => d4 += delta,
                Prefix::V6(..) => d6 += delta,
            }
            out.push((c.prefix, new));
        }
        sub.exported.add(bgp::Afi::Ipv4, d4);
        sub.exported.add(bgp::Afi::Ipv6, d6);
        if out.is_empty() || !send {
            return;
        }
        sink.export(peer, ToPeer::Export(out));
    }

    /// The whole table of `family` for one session of neighbor `peer`,
    /// the last message marked (the session sends End-of-RIB after it).
    fn refeed(&mut self, peer: PeerId, conn: ConnId, family: bgp::AfiSafi, sink: &mut dyn Outputs) {
        let Some((sub, sel, mut now)) = self.exporting_to(peer) else {
            return;
        };
        let table = &self.table;
        let afi = family.unicast_afi();
        let mut chunks: Vec<Vec<(Prefix, Arc<PathAttributes>)>> = vec![Vec::new()];
        for (p, v) in table.iter() {
            if Some(p.afi()) != afi || !sub.takes(&p) {
                continue;
            }
            let Some(a) = sel.best(v).and_then(|b| now.export(b, &p)) else {
                continue;
            };
            match chunks.last_mut() {
                Some(c) if c.len() < CHUNK => c.push((p, a)),
                _ => chunks.push(vec![(p, a)]),
            }
        }
        // During a restart's deferral the table is not complete: no
        // End-of-RIB yet (RFC 4724 §4.1). `RibReady` makes the session ask
        // again when it is.
        let ready = self.ready;
        let n = chunks.len();
        for (i, routes) in chunks.into_iter().enumerate() {
            let end = ready && i + 1 == n;
            if routes.is_empty() && !end {
                continue;
            }
            sink.export(
                peer,
                ToPeer::Refeed {
                    conn,
                    family,
                    routes,
                    end,
                },
            );
        }
    }

    /// Installs the best path of each changed prefix if it came from a peer
    /// whose routes go into the kernel.
    fn sync_fib(&mut self, changed: impl Iterator<Item = Prefix>, sink: &mut dyn Outputs) {
        if !self.fib {
            return;
        }
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
        let sel = Selection::new(&self.drains);
        let mut ops = Vec::new();
        for p in changed {
            let p = &p;
            let want: Hops = match self.table.get(p).and_then(|v| sel.best(v).map(|b| (v, b))) {
                None => Hops::default(),
                Some((v, b)) if self.multipath => {
                    let mut hops: Vec<FibHop> = v
                        .iter()
                        .filter(|x| sel.multipath_equal(x, b))
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
            sink.fib(ops);
        }
    }
}

#[cfg(test)]
mod paths_tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn p(id: u64) -> Path {
        let peer = Arc::new(PeerInfo {
            id: PeerId(id),
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
        v.iter().map(|x| x.peer.as_ref().unwrap().id.0).collect()
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
        v.retain(|x| x.peer.as_ref().unwrap().id != PeerId(2));
        assert_eq!(ids(&v), [1, 3]);
        v.retain(|x| x.peer.as_ref().unwrap().id == PeerId(3));
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

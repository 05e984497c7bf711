//! A neighbor's Adj-RIB-In, sans-IO: every route the neighbor announced,
//! with the verdict on it (accepted, or refused and why), and what each
//! change means for the Loc-RIB.
//!
//! The peer task owns one and hands it decoded UPDATEs; the fuzz target
//! `update_to_rib` drives the same code with arbitrary ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use bgp::{NextHop, PathAttributes, Prefix, Update};
use tracing::debug;

use crate::northbound::config::MaxPrefixAction;
use crate::routing::authorisation::{RejectKind, Rejection, VmPolicy};
use crate::routing::prefix_map::PrefixMap;

/// Refused routes kept for display and re-judging, beyond which more are
/// only counted (a VM must not grow our memory by announcing junk).
pub const MAX_KEPT_REFUSED: usize = 1000;

/// What the prefixes of one UPDATE (with one next hop) share.
#[derive(Debug, PartialEq)]
pub struct Learned {
    pub next_hop: NextHop,
    pub attrs: Arc<PathAttributes>,
}

/// A route learned from the neighbor, as [`AdjRibIn::iter`] shows it.
#[derive(Clone, Copy, Debug)]
pub struct RouteIn<'a> {
    pub learned: &'a Arc<Learned>,
    /// The route is refused; why is in [`AdjRibIn::rejection`].
    pub rejected: bool,
    /// Kept from before the peer restarted (RFC 4724 §4.2), until it
    /// announces again or sends End-of-RIB.
    pub stale: bool,
}

impl RouteIn<'_> {
    pub fn next_hop(&self) -> NextHop {
        self.learned.next_hop
    }

    pub fn attrs(&self) -> &Arc<PathAttributes> {
        &self.learned.attrs
    }
}

/// What routes are judged by.
#[derive(Clone, Copy, Debug)]
pub struct Judge<'a> {
    /// Every peer: longer AS paths are refused.
    pub max_as_path_length: usize,
    /// VM sessions: the authorisation snapshot.
    pub policy: Option<&'a VmPolicy>,
    /// The AS path checks and what is kept of unknown attributes.
    pub path: PathRules<'a>,
}

/// Who is at each end of the session, and what a path from the peer must
/// look like (RFC 4271 §6.3 and §9.1.2, RFC 7607, RFC 5065 §5.3).
#[derive(Clone, Copy, Debug)]
pub struct PathRules<'a> {
    pub local_as: u32,
    /// The peer's AS, from its OPEN.
    pub peer_as: u32,
    pub ebgp: bool,
    /// eBGP: the path must begin with the peer's AS (so it is not empty).
    pub enforce_first_as: bool,
    /// Unknown optional transitive attributes kept: `None` keeps every
    /// one (and passes it on, RFC 4271 §5), `Some(types)` only those.
    pub allow_attributes: Option<&'a [u8]>,
}

impl PathRules<'_> {
    /// Rules that check nothing a peer-specific setting asks for: AS 0,
    /// confederation segments and our own AS are still refused.
    pub fn plain(local_as: u32, peer_as: u32, ebgp: bool) -> PathRules<'static> {
        PathRules {
            local_as,
            peer_as,
            ebgp,
            enforce_first_as: false,
            allow_attributes: None,
        }
    }

    /// Why a path is refused, if it is: the same for every prefix of an
    /// UPDATE, so judged once for all of them.
    pub fn check(&self, attrs: &PathAttributes, max_len: usize) -> Option<Rejection> {
        let refuse = |kind, reason: String| Some(Rejection { kind, reason });
        let empty = bgp::AsPath::default();
        let path = attrs.as_path.as_ref().unwrap_or(&empty);
        // A path this long is an attack or a loop, and costs memory and
        // CPU everywhere it goes.
        let asns: usize = path.segments.iter().map(|s| s.asns().len()).sum();
        if asns > max_len {
            crate::limits::hit(crate::limits::Limit::AsPathLength);
            return refuse(
                RejectKind::AsPathLength,
                format!("AS path of {asns} ASNs, more than max-as-path-length {max_len}"),
            );
        }
        if path.segments.iter().any(|s| s.asns().contains(&0)) {
            return refuse(
                RejectKind::AsPathZero,
                "AS 0 in the AS path (RFC 7607)".into(),
            );
        }
        if path.segments.iter().any(|s| {
            matches!(
                s,
                bgp::AsSegment::ConfedSequence(_) | bgp::AsSegment::ConfedSet(_)
            )
        }) {
            return refuse(
                RejectKind::AsPathConfed,
                "a confederation segment from outside our confederation (RFC 5065 §5.3)".into(),
            );
        }
        if path
            .segments
            .iter()
            .any(|s| s.asns().contains(&self.local_as))
        {
            return refuse(
                RejectKind::AsPathLoop,
                format!(
                    "our own AS {} is in the AS path (RFC 4271 §9.1.2)",
                    self.local_as
                ),
            );
        }
        if self.ebgp && self.enforce_first_as && path.first_asn() != Some(self.peer_as) {
            let kind = if path.segments.is_empty() {
                RejectKind::AsPathEmpty
            } else {
                RejectKind::FirstAs
            };
            let reason = match path.first_asn() {
                _ if path.segments.is_empty() => "an empty AS path from an external peer".into(),
                Some(a) => format!(
                    "the AS path begins with AS {a}, not the peer's AS {}",
                    self.peer_as
                ),
                None => format!(
                    "the AS path does not begin with the peer's AS {}",
                    self.peer_as
                ),
            };
            return refuse(kind, format!("{reason} (enforce-first-as, RFC 4271 §6.3)"));
        }
        None
    }

    /// Takes out the unknown attributes the rules do not keep; returns how
    /// many went.
    pub fn strip_unknown(&self, attrs: &mut PathAttributes) -> usize {
        let Some(keep) = self.allow_attributes else {
            return 0;
        };
        let before = attrs.unknown.len();
        attrs.unknown.retain(|a| keep.contains(&a.type_code));
        before - attrs.unknown.len()
    }
}

/// What changed among the accepted routes, for the Loc-RIB.
#[derive(Debug, Default)]
pub struct Changes {
    pub announce: Vec<(Prefix, NextHop, Arc<PathAttributes>)>,
    pub withdraw: Vec<Prefix>,
    /// `max-prefixes` was passed and the session must go (Cease 6/1):
    /// the prefix that passed it and the limit. Nothing after it in the
    /// UPDATE was applied.
    pub teardown: Option<(Prefix, usize)>,
    /// Routes refused now that were not refused for that reason before:
    /// for the log, which the session keeps within its budget.
    pub refused: Vec<(Prefix, Rejection)>,
}

#[derive(Debug, Default)]
pub struct AdjRibIn {
    /// Every route kept: 8 bytes each, the rest shared with the other
    /// prefixes of its UPDATE (a full table is a million of these).
    /// Whether one is refused or stale is kept apart: few are.
    routes: PrefixMap<Arc<Learned>>,
    /// Why each refused route is refused.
    refused: BTreeMap<Prefix, Rejection>,
    /// The routes kept from before the peer restarted (RFC 4724 §4.2)
    /// that it has not announced again.
    stale: PrefixMap<()>,
    /// Routes that are accepted.
    accepted: usize,
    /// Refusals by kind, counted per refused announcement.
    rejections: BTreeMap<RejectKind, u64>,
    /// Unknown attributes removed on import (`allow-attributes`).
    attributes_removed: u64,
    /// Each distinct next hop and attribute set once: a speaker may
    /// spread the prefixes of one set over several UPDATEs far apart
    /// (BIRD sent 303,000 UPDATEs for 100,000 sets, each set's over its
    /// whole table walk), and a copy per UPDATE cost a third of the heap.
    shared: SharedParts,
}

/// The routes' shared parts, each once, with its hash. Swept of the parts
/// no route holds any more once it has doubled since the last sweep.
#[derive(Default)]
struct SharedParts {
    table: hashbrown::HashTable<(u64, Arc<Learned>)>,
    hasher: foldhash::fast::RandomState,
    sweep_at: usize,
}

impl std::fmt::Debug for SharedParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedParts({})", self.table.len())
    }
}

impl SharedParts {
    /// The stored part equal to (`nh`, `attrs`), or a new one.
    fn get(&mut self, nh: NextHop, attrs: PathAttributes) -> Arc<Learned> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one((&nh, &attrs));
        let same = |(k, l): &(u64, Arc<Learned>)| *k == h && l.next_hop == nh && *l.attrs == attrs;
        if let Some((_, l)) = self.table.find(h, same) {
            return l.clone();
        }
        if self.table.len() >= self.sweep_at {
            self.table.retain(|(_, l)| Arc::strong_count(l) > 1);
            self.sweep_at = (2 * self.table.len()).max(1024);
        }
        let l = Arc::new(Learned {
            next_hop: nh,
            attrs: Arc::new(attrs),
        });
        self.table.insert_unique(h, (h, l.clone()), |(k, _)| *k);
        l
    }
}

/// Routes beyond which a table is freed by another thread.
const BIG_TABLE: usize = 10_000;

impl AdjRibIn {
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Routes that are accepted.
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    pub fn rejections(&self) -> &BTreeMap<RejectKind, u64> {
        &self.rejections
    }

    /// Unknown optional transitive attributes removed on import.
    pub fn attributes_removed(&self) -> u64 {
        self.attributes_removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (Prefix, RouteIn<'_>)> {
        self.routes.iter().map(|(p, learned)| {
            (
                p,
                RouteIn {
                    learned,
                    rejected: !self.refused.is_empty() && self.refused.contains_key(&p),
                    stale: !self.stale.is_empty() && self.stale.contains_key(&p),
                },
            )
        })
    }

    /// Why the route for `p` is refused, if it is.
    pub fn rejection(&self, p: &Prefix) -> Option<&Rejection> {
        self.refused.get(p)
    }

    /// The accepted routes, stale ones too (graceful restart), as the
    /// Loc-RIB has them.
    pub fn accepted_routes(&self) -> Vec<(Prefix, NextHop, Arc<PathAttributes>)> {
        self.iter()
            .filter(|(_, r)| !r.rejected)
            .map(|(p, r)| (p, r.next_hop(), r.attrs().clone()))
            .collect()
    }

    /// The session is gone and its routes with it.
    pub fn clear(&mut self) {
        // A full table is a million routes to free, their attribute sets
        // with them: that takes a while, and nobody waits for it. Another
        // thread does it, so that the withdrawals go out first.
        let routes = std::mem::take(&mut self.routes);
        if routes.len() >= BIG_TABLE {
            crate::tasks::drop_elsewhere(routes);
        }
        self.refused.clear();
        self.shared = SharedParts::default();
        self.stale.clear();
        self.rejections.clear();
        self.accepted = 0;
    }

    /// The session is gone but the peer restarts gracefully: its routes
    /// stay, marked stale.
    pub fn mark_stale(&mut self) {
        for p in self.routes.keys() {
            self.stale.insert(p, ());
        }
    }

    pub fn has_stale(&self) -> bool {
        !self.stale.is_empty()
    }

    /// Applies one UPDATE (not an End-of-RIB: see [`Self::flush_stale`]).
    /// From an external peer LOCAL_PREF is ignored (RFC 4271 §5.1.5).
    pub fn apply(&mut self, mut u: Update, ebgp: bool, judge: &Judge) -> Changes {
        let mut out = Changes::default();
        out.withdraw
            .reserve(u.withdrawn.len() + u.mp_unreach.as_ref().map_or(0, |m| m.withdrawn.len()));
        for p in u.withdrawn_iter() {
            if self.remove(&p).is_some_and(|(_, why)| why.is_none()) {
                out.withdraw.push(p);
            }
        }
        out.announce
            .reserve(u.nlri.len() + u.mp_reach.as_ref().map_or(0, |m| m.nlri.len()));
        let mut attrs = u.take_attributes();
        if ebgp {
            attrs.local_pref = None;
        }
        let removed = judge.path.strip_unknown(&mut attrs);
        if removed > 0 {
            debug!(
                attributes = removed,
                "unknown optional transitive attributes removed on import"
            );
            self.attributes_removed += removed as u64;
        }
        let path_verdict = judge.path.check(&attrs, judge.max_as_path_length);
        let mut attrs = Some(attrs);
        let mut learned: Option<Arc<Learned>> = None;
        for (p, nh) in u.announced_iter() {
            let rejected = match &path_verdict {
                Some(r) => Some(r.clone()),
                None => self.judge(&p, &nh, judge),
            };
            let shared = match &learned {
                Some(l) if l.next_hop == nh => l.clone(),
                _ => {
                    // One set per UPDATE; a second next hop in it (rare)
                    // shares the set.
                    let a = match (attrs.take(), &learned) {
                        (Some(a), _) => a,
                        (None, Some(l)) => (*l.attrs).clone(),
                        (None, None) => unreachable!("the set is taken once a part exists"),
                    };
                    let l = self.shared.get(nh, a);
                    learned = Some(l.clone());
                    l
                }
            };
            if rejected.is_none() {
                // Accepted, as nearly every route is: in place of the old
                // one, found once, and no longer stale.
                out.announce.push((p, nh, shared.attrs.clone()));
                self.insert(p, shared, None);
                if !self.stale.is_empty() {
                    self.stale.remove(&p);
                }
                continue;
            }
            let old = self.remove(&p).map(|(_, why)| why);
            let was_accepted = old.as_ref().is_some_and(|why| why.is_none());
            let changed = old.as_ref() != Some(&rejected);
            if let Some(r) = &rejected {
                *self.rejections.entry(r.kind).or_default() += 1;
                if changed {
                    out.refused.push((p, r.clone()));
                }
                if was_accepted {
                    out.withdraw.push(p);
                }
                if r.kind == RejectKind::MaxPrefixes {
                    if let Some(pol) = judge.policy {
                        if pol.max_prefixes_action == MaxPrefixAction::Teardown {
                            out.teardown = Some((p, pol.max_prefixes));
                            return out;
                        }
                    }
                }
                if self.routes.len() - self.accepted >= MAX_KEPT_REFUSED {
                    continue;
                }
            }
            self.insert(p, shared, rejected);
        }
        out
    }

    /// Removes routes still stale (of one family, or all), as after the
    /// peer's End-of-RIB or its restart time (RFC 4724 §4.2); returns the
    /// accepted ones, which the Loc-RIB must forget.
    pub fn flush_stale(&mut self, afi: Option<bgp::Afi>) -> Vec<Prefix> {
        let gone: Vec<Prefix> = self
            .stale
            .keys()
            .filter(|p| afi.is_none_or(|a| p.afi() == a))
            .collect();
        gone.into_iter()
            .filter(|p| self.remove(p).is_some_and(|(_, why)| why.is_none()))
            .collect()
    }

    /// Judges every route again (a new policy snapshot).
    pub fn rejudge(&mut self, judge: &Judge) -> Changes {
        let routes = std::mem::take(&mut self.routes);
        let mut refused = std::mem::take(&mut self.refused);
        self.accepted = 0;
        let mut out = Changes::default();
        for (p, r) in routes {
            let before = refused.remove(&p);
            let now = judge
                .path
                .check(&r.attrs, judge.max_as_path_length)
                .or_else(|| self.judge(&p, &r.next_hop, judge));
            match (&before, &now) {
                (Some(_), None) => out.announce.push((p, r.next_hop, r.attrs.clone())),
                (None, Some(x)) => {
                    out.refused.push((p, x.clone()));
                    out.withdraw.push(p);
                }
                _ => {}
            }
            self.insert(p, r, now);
        }
        out
    }

    /// Puts a route in, refused if `why` says so (stale if it was).
    fn insert(&mut self, p: Prefix, r: Arc<Learned>, why: Option<Rejection>) {
        if self.routes.insert(p, r).is_some() && self.take_refused(&p).is_none() {
            self.accepted -= 1;
        }
        match why {
            None => self.accepted += 1,
            Some(why) => {
                self.refused.insert(p, why);
            }
        }
    }

    /// Takes a route out, with why it was refused if it was.
    fn remove(&mut self, p: &Prefix) -> Option<(Arc<Learned>, Option<Rejection>)> {
        let old = self.routes.remove(p)?;
        if !self.stale.is_empty() {
            self.stale.remove(p);
        }
        let why = self.take_refused(p);
        if why.is_none() {
            self.accepted -= 1;
        }
        Some((old, why))
    }

    /// Why the route for `p` was refused, if it was, taken out.
    fn take_refused(&mut self, p: &Prefix) -> Option<Rejection> {
        match self.refused.is_empty() {
            true => None,
            false => self.refused.remove(p),
        }
    }

    /// The verdict on one announcement whose path passed, max-prefix
    /// count included.
    fn judge(&self, p: &Prefix, nh: &NextHop, judge: &Judge) -> Option<Rejection> {
        let policy = judge.policy?;
        if let Err(r) = policy.judge(p, nh) {
            return Some(r);
        }
        // Counted without the route this one replaces.
        let accepted = match self.accepted >= policy.max_prefixes {
            true => {
                self.accepted
                    - usize::from(self.routes.contains_key(p) && !self.refused.contains_key(p))
            }
            false => self.accepted,
        };
        (accepted >= policy.max_prefixes).then(|| Rejection {
            kind: RejectKind::MaxPrefixes,
            reason: format!("more than {} prefixes (max-prefixes)", policy.max_prefixes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn policy(max_prefixes: usize, action: MaxPrefixAction) -> VmPolicy {
        VmPolicy {
            group: "vms".into(),
            entry: Some(("vm".into(), vec!["10.3.0.0/24{24,32}".parse().unwrap()])),
            group_filter: None,
            owners: [].into(),
            protected: [].into(),
            own_addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 192, 24, 4))],
            max_prefixes,
            max_prefixes_action: action,
            import_rules: crate::northbound::config::ImportRules::vm_default(),
        }
    }

    /// A VM's session in the example config: eBGP, AS 64613.
    fn vm_rules() -> PathRules<'static> {
        PathRules {
            enforce_first_as: true,
            allow_attributes: Some(&[]),
            ..PathRules::plain(64612, 64613, true)
        }
    }

    fn announce(prefixes: &[&str], nh: [u8; 4], path_len: usize) -> Update {
        Update {
            attributes: PathAttributes {
                origin: Some(bgp::Origin::Igp),
                as_path: Some(bgp::AsPath {
                    segments: vec![bgp::AsSegment::Sequence(vec![64613; path_len])],
                }),
                next_hop: Some(Ipv4Addr::from(nh)),
                local_pref: Some(500),
                ..Default::default()
            },
            nlri: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    fn withdraw(prefixes: &[&str]) -> Update {
        Update {
            withdrawn: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    fn names(v: &[(Prefix, NextHop, Arc<PathAttributes>)]) -> Vec<String> {
        v.iter().map(|(p, _, _)| p.to_string()).collect()
    }

    /// One attribute set spread over several UPDATEs, apart, is stored
    /// once; another set is not taken for it; a withdrawn set's part goes
    /// at a sweep.
    #[test]
    fn a_set_spread_over_updates_is_stored_once() {
        let pol = policy(100_000, MaxPrefixAction::Reject);
        let judge = Judge {
            max_as_path_length: 10,
            policy: Some(&pol),
            path: vm_rules(),
        };
        let mut adj = AdjRibIn::default();
        let nh = [10, 192, 24, 4];
        adj.apply(announce(&["10.3.0.1/32"], nh, 1), true, &judge);
        adj.apply(announce(&["10.3.0.9/32"], nh, 2), true, &judge);
        let c = adj.apply(announce(&["10.3.0.2/32"], nh, 1), true, &judge);
        let routes = adj.accepted_routes();
        let set = |p: &str| {
            let p: Prefix = p.parse().unwrap();
            routes.iter().find(|r| r.0 == p).unwrap().2.clone()
        };
        assert!(Arc::ptr_eq(&set("10.3.0.1/32"), &set("10.3.0.2/32")));
        assert!(
            Arc::ptr_eq(&c.announce[0].2, &set("10.3.0.1/32")),
            "the Loc-RIB gets the one copy"
        );
        assert!(!Arc::ptr_eq(&set("10.3.0.1/32"), &set("10.3.0.9/32")));
        assert_eq!(adj.shared.table.len(), 2);
        // Many sets come and go: the table stays within twice what is held.
        for i in 0..5000u32 {
            let p = format!("10.3.0.{}/32", 100 + i % 100);
            let other = [10, 192, 100 + (i / 250) as u8, (i % 250) as u8];
            adj.apply(announce(&[p.as_str()], other, 3), true, &judge);
            adj.apply(withdraw(&[p.as_str()]), true, &judge);
        }
        assert!(
            adj.shared.table.len() <= 2 * 1024,
            "{}",
            adj.shared.table.len()
        );
    }

    #[test]
    fn refused_routes_are_kept_apart_and_withdrawals_only_name_accepted_ones() {
        let pol = policy(100, MaxPrefixAction::Reject);
        let judge = Judge {
            max_as_path_length: 4,
            policy: Some(&pol),
            path: vm_rules(),
        };
        let mut adj = AdjRibIn::default();
        let c = adj.apply(
            announce(&["10.3.0.1/32", "10.4.0.1/32"], [10, 192, 24, 4], 1),
            true,
            &judge,
        );
        assert_eq!(names(&c.announce), ["10.3.0.1/32"]);
        // eBGP: LOCAL_PREF is ignored.
        assert_eq!(c.announce[0].2.local_pref, None);
        assert_eq!((adj.len(), adj.accepted()), (2, 1));
        assert_eq!(
            adj.rejections().get(&RejectKind::NotInInventory),
            Some(&1),
            "{:?}",
            adj.rejections()
        );
        // Too long a path, or somebody else's next hop: refused, and the
        // accepted route it replaces is withdrawn.
        let c = adj.apply(
            announce(&["10.3.0.1/32"], [10, 192, 24, 4], 5),
            true,
            &judge,
        );
        assert!(c.announce.is_empty());
        assert_eq!(c.withdraw, ["10.3.0.1/32".parse::<Prefix>().unwrap()]);
        let c = adj.apply(withdraw(&["10.3.0.1/32", "10.4.0.1/32"]), true, &judge);
        assert!(
            c.withdraw.is_empty(),
            "neither was accepted: {:?}",
            c.withdraw
        );
        assert!(adj.is_empty());
        let c = adj.apply(
            announce(&["10.3.0.2/32"], [10, 192, 24, 5], 1),
            true,
            &judge,
        );
        assert!(c.announce.is_empty());
        assert_eq!(adj.rejections().get(&RejectKind::NextHop), Some(&1));
    }

    #[test]
    fn max_prefixes_refuses_or_tears_down() {
        let pol = policy(2, MaxPrefixAction::Reject);
        let judge = Judge {
            max_as_path_length: 64,
            policy: Some(&pol),
            path: vm_rules(),
        };
        let mut adj = AdjRibIn::default();
        let three = announce(
            &["10.3.0.1/32", "10.3.0.2/32", "10.3.0.3/32"],
            [10, 192, 24, 4],
            1,
        );
        let c = adj.apply(three.clone(), true, &judge);
        assert_eq!(names(&c.announce), ["10.3.0.1/32", "10.3.0.2/32"]);
        assert!(c.teardown.is_none());
        // One goes: the refused one is accepted when judged again.
        adj.apply(withdraw(&["10.3.0.1/32"]), true, &judge);
        let c = adj.rejudge(&judge);
        assert_eq!(names(&c.announce), ["10.3.0.3/32"]);

        let pol = policy(2, MaxPrefixAction::Teardown);
        let judge = Judge {
            max_as_path_length: 64,
            policy: Some(&pol),
            path: vm_rules(),
        };
        let mut adj = AdjRibIn::default();
        let c = adj.apply(three, true, &judge);
        assert_eq!(c.teardown, Some(("10.3.0.3/32".parse().unwrap(), 2)));
        assert_eq!(names(&c.announce), ["10.3.0.1/32", "10.3.0.2/32"]);
    }

    #[test]
    fn stale_routes_go_at_end_of_rib_unless_announced_again() {
        let judge = Judge {
            max_as_path_length: 64,
            policy: None,
            path: PathRules::plain(64612, 64613, false),
        };
        let mut adj = AdjRibIn::default();
        adj.apply(
            announce(&["10.3.0.1/32", "10.3.0.2/32"], [10, 192, 24, 4], 1),
            false,
            &judge,
        );
        adj.mark_stale();
        assert!(adj.has_stale());
        let c = adj.apply(
            announce(&["10.3.0.2/32"], [10, 192, 24, 4], 1),
            false,
            &judge,
        );
        // iBGP keeps LOCAL_PREF.
        assert_eq!(c.announce[0].2.local_pref, Some(500));
        let gone = adj.flush_stale(Some(bgp::Afi::Ipv4));
        assert_eq!(gone, ["10.3.0.1/32".parse::<Prefix>().unwrap()]);
        assert!(!adj.has_stale());
        assert_eq!(names(&adj.accepted_routes()), ["10.3.0.2/32"]);
    }

    #[test]
    fn hostile_paths_are_refused_and_unknown_attributes_removed() {
        use bgp::AsSegment::{ConfedSequence, Sequence};
        let pol = policy(100, MaxPrefixAction::Reject);
        let judge = Judge {
            max_as_path_length: 64,
            policy: Some(&pol),
            path: vm_rules(),
        };
        let mut adj = AdjRibIn::default();
        let c = adj.apply(
            announce(&["10.3.0.1/32"], [10, 192, 24, 4], 1),
            true,
            &judge,
        );
        assert_eq!(names(&c.announce), ["10.3.0.1/32"]);
        let cases = [
            ("as-path-zero", vec![Sequence(vec![64613, 0])]),
            ("first-as", vec![Sequence(vec![64999, 64613])]),
            ("as-path-loop", vec![Sequence(vec![64613, 64612])]),
            ("as-path-empty", vec![]),
            (
                "as-path-confed",
                vec![ConfedSequence(vec![64613]), Sequence(vec![64613])],
            ),
        ];
        for (i, (kind, segments)) in cases.into_iter().enumerate() {
            let mut u = announce(&["10.3.0.1/32"], [10, 192, 24, 4], 1);
            u.attributes.as_path = Some(bgp::AsPath { segments });
            let c = adj.apply(u, true, &judge);
            assert!(c.announce.is_empty(), "{kind}: {:?}", c.announce);
            // The accepted route it replaced goes; the next ones replace
            // a refused route, so nothing more is withdrawn.
            let withdrawn: &[&str] = if i == 0 { &["10.3.0.1/32"] } else { &[] };
            assert_eq!(
                c.withdraw.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                withdrawn,
                "{kind}"
            );
            let p: Prefix = "10.3.0.1/32".parse().unwrap();
            assert_eq!(adj.rejection(&p).map(|r| r.kind.name()), Some(kind));
        }
        // An iBGP peer may send an empty path, and one that does not
        // begin with its AS; AS 0 and our own AS stay refused.
        let ibgp = Judge {
            path: PathRules {
                ebgp: false,
                ..vm_rules()
            },
            ..judge
        };
        let mut u = announce(&["10.3.0.2/32"], [10, 192, 24, 4], 1);
        u.attributes.as_path = Some(bgp::AsPath::default());
        assert_eq!(names(&adj.apply(u, false, &ibgp).announce), ["10.3.0.2/32"]);
        let mut u = announce(&["10.3.0.3/32"], [10, 192, 24, 4], 1);
        u.attributes.as_path = Some(bgp::AsPath::from_sequence([64700, 64612]));
        assert!(adj.apply(u, false, &ibgp).announce.is_empty());

        // Unknown optional transitive attributes: removed from a VM unless
        // allowed; kept from a static neighbor.
        let with_unknown = || {
            let mut u = announce(&["10.3.0.4/32"], [10, 192, 24, 4], 1);
            u.attributes.unknown = vec![
                bgp::attribute::RawAttribute {
                    flags: 0xc0,
                    type_code: 99,
                    value: vec![1, 2, 3],
                },
                bgp::attribute::RawAttribute {
                    flags: 0xc0,
                    type_code: 100,
                    value: vec![4],
                },
            ];
            u
        };
        let c = adj.apply(with_unknown(), true, &judge);
        assert!(c.announce[0].2.unknown.is_empty());
        assert_eq!(adj.attributes_removed(), 2);
        let allow = [100u8];
        let allowed = Judge {
            path: PathRules {
                allow_attributes: Some(&allow),
                ..vm_rules()
            },
            ..judge
        };
        let c = adj.apply(with_unknown(), true, &allowed);
        let kept: Vec<u8> = c.announce[0]
            .2
            .unknown
            .iter()
            .map(|a| a.type_code)
            .collect();
        assert_eq!(kept, [100]);
        let neighbor = Judge {
            max_as_path_length: 64,
            policy: None,
            path: PathRules::plain(64612, 64613, true),
        };
        let c = AdjRibIn::default().apply(with_unknown(), true, &neighbor);
        assert_eq!(c.announce[0].2.unknown.len(), 2);
    }
}

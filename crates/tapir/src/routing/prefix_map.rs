//! An ordered map keyed by prefix, compact enough for the tables that hold
//! a full table: a neighbor's Adj-RIB-In, the Loc-RIB and what it put in
//! the kernel (there is no Adj-RIB-Out: what a neighbor was sent is
//! derived, docs/design.md).
//!
//! A `BTreeMap<Prefix, V>` keeps 18-byte keys in nodes that prefixes
//! arriving in order (as a peer sends its table) fill to about 60 %. Here
//! an IPv4 key is 8 bytes, so is an IPv6 key up to /56 (nearly every
//! prefix in a table: the rest, VM /128s among them, are three integers
//! in a map of their own), keys compare as integers, and entries sit in sorted leaves of up to
//! [`LEAF`], indexed by their first key in a small `BTreeMap`. A full leaf
//! that a key arrives past the end of starts a new leaf instead of
//! splitting, so a table sent in order fills its leaves completely; a key
//! that lands inside a full leaf splits it in halves, as a B-tree would.
//! A leaf is a ring buffer, so that taking its first entry (a table
//! withdrawn in order) moves nothing, and its index key stays as it was:
//! a lower bound of its keys, above the previous leaf's.
//! Iteration is in `Prefix` order (IPv4 before IPv6).

use std::collections::{btree_map, BTreeMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use bgp::Prefix;

/// Entries per leaf, at most. Small enough that an insert in the middle
/// moves little, large enough that the index is a rounding error.
pub const LEAF: usize = 64;

/// Sorted leaves, each indexed by a key at most its first (and above
/// every key of the leaf before).
#[derive(Clone)]
struct Leaves<K, V> {
    index: BTreeMap<K, VecDeque<(K, V)>>,
    len: usize,
}

impl<K, V> Default for Leaves<K, V> {
    fn default() -> Self {
        Leaves {
            index: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K: Copy + Ord, V> Leaves<K, V> {
    /// The leaf that holds `k` if any does, with its index key. Without a
    /// search: the last leaf when `k` is at or past its index key (a table
    /// sent, exported or installed in order works there), the first when
    /// `k` is within its keys (a table withdrawn in order).
    fn leaf(&self, k: &K) -> Option<(&K, &VecDeque<(K, V)>)> {
        match self.index.last_key_value() {
            Some(last) if last.0 <= k => return Some(last),
            _ => {}
        }
        match self.index.first_key_value() {
            // Below every leaf (a prefix just withdrawn in order).
            Some(first) if k < first.0 => None,
            Some(first) if first.1.back().is_some_and(|e| *k <= e.0) => Some(first),
            _ => self.index.range(..=*k).next_back(),
        }
    }

    /// As `leaf`, to change (borrowing the index only).
    fn leaf_mut<'a>(
        index: &'a mut BTreeMap<K, VecDeque<(K, V)>>,
        k: &K,
    ) -> Option<(K, &'a mut VecDeque<(K, V)>)> {
        if index.last_key_value().is_some_and(|(f, _)| f <= k) {
            let last = index.last_entry()?;
            return Some((*last.key(), last.into_mut()));
        }
        match index.first_key_value() {
            Some((f, _)) if k < f => return None,
            Some((_, l)) if l.back().is_some_and(|e| *k <= e.0) => {
                let first = index.first_entry()?;
                return Some((*first.key(), first.into_mut()));
            }
            _ => {}
        }
        index.range_mut(..=*k).next_back().map(|(f, l)| (*f, l))
    }

    fn get(&self, k: &K) -> Option<&V> {
        let (_, leaf) = self.leaf(k)?;
        let i = search(leaf, k).ok()?;
        Some(&leaf[i].1)
    }

    fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let (_, leaf) = Self::leaf_mut(&mut self.index, k)?;
        let i = search(leaf, k).ok()?;
        Some(&mut leaf[i].1)
    }

    fn insert(&mut self, k: K, v: V) -> Option<V> {
        let mut old = None;
        self.upsert(k, |e| match e {
            Some(x) => {
                old = Some(std::mem::replace(x, v));
                None
            }
            None => Some(v),
        });
        old
    }

    /// Finds `k` once: `f` gets its value to change, or `None` and then
    /// returns the value to insert, if any.
    fn upsert(&mut self, k: K, f: impl FnOnce(Option<&mut V>) -> Option<V>) {
        match Self::leaf_mut(&mut self.index, &k) {
            Some((first, leaf)) => match search(leaf, &k) {
                Ok(i) => {
                    f(Some(&mut leaf[i].1));
                    return;
                }
                Err(i) => {
                    let Some(v) = f(None) else { return };
                    if leaf.len() < LEAF {
                        leaf.insert(i, (k, v));
                    } else if i == leaf.len() {
                        // Past the end of a full leaf: a new one. Past the
                        // last key of all, a table is likely being sent in
                        // order and will fill it: room for a leaf at once.
                        let last = self.index.last_key_value().is_some_and(|l| *l.0 == first);
                        let mut new = VecDeque::with_capacity(if last { LEAF } else { 1 });
                        new.push_back((k, v));
                        self.index.insert(k, new);
                    } else {
                        let mut right = leaf.split_off(LEAF / 2);
                        if i <= LEAF / 2 {
                            leaf.insert(i, (k, v));
                        } else {
                            right.insert(i - LEAF / 2, (k, v));
                        }
                        self.index.insert(right[0].0, right);
                    }
                }
            },
            // Before every key: the first leaf takes it under its new
            // first key, or it starts a leaf of its own.
            None => {
                let Some(v) = f(None) else { return };
                match self.index.first_entry() {
                    Some(first) if first.get().len() < LEAF => {
                        let mut leaf = first.remove();
                        leaf.insert(0, (k, v));
                        self.index.insert(k, leaf);
                    }
                    _ => {
                        self.index.insert(k, VecDeque::from([(k, v)]));
                    }
                }
            }
        }
        self.len += 1;
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        let mut v = None;
        self.find_and(k, |leaf, i| {
            v = leaf.remove(i).map(|e| e.1);
            true
        });
        v
    }

    /// Finds `k` once and hands its value to `f`, which says whether to
    /// keep it. Whether `k` was there.
    fn change(&mut self, k: &K, f: impl FnOnce(&mut V) -> bool) -> bool {
        self.find_and(k, |leaf, i| {
            let gone = !f(&mut leaf[i].1);
            if gone {
                leaf.remove(i);
            }
            gone
        })
    }

    /// As `change`, returning the value `f` did not keep.
    fn take_unless(&mut self, k: &K, f: impl FnOnce(&mut V) -> bool) -> Option<V> {
        let mut out = None;
        self.find_and(k, |leaf, i| {
            if f(&mut leaf[i].1) {
                return false;
            }
            out = leaf.remove(i).map(|e| e.1);
            true
        });
        out
    }

    /// Finds `k` and calls `f` with its leaf and place, which says whether
    /// it took the entry out. Whether `k` was there.
    fn find_and(&mut self, k: &K, f: impl FnOnce(&mut VecDeque<(K, V)>, usize) -> bool) -> bool {
        let Some((first, leaf)) = Self::leaf_mut(&mut self.index, k) else {
            return false;
        };
        let Ok(i) = search(leaf, k) else {
            return false;
        };
        if f(leaf, i) {
            self.len -= 1;
            shrink(leaf);
            // A leaf's index key may be below its first key: no
            // re-indexing when that goes.
            if leaf.is_empty() {
                self.index.remove(&first);
            }
        }
        true
    }

    fn retain(&mut self, mut f: impl FnMut(K, &mut V) -> bool) {
        let mut len = 0;
        // Leaves come out in order, so the index is rebuilt in one pass.
        self.index = std::mem::take(&mut self.index)
            .into_values()
            .filter_map(|mut leaf| {
                leaf.retain_mut(|(k, v)| f(*k, v));
                shrink(&mut leaf);
                len += leaf.len();
                Some((leaf.front()?.0, leaf))
            })
            .collect();
        self.len = len;
    }

    fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.index.values().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (K, &mut V)> {
        self.index
            .values_mut()
            .flat_map(|l| l.iter_mut().map(|(k, v)| (*k, v)))
    }

    fn into_iter(self) -> std::iter::Flatten<btree_map::IntoValues<K, VecDeque<(K, V)>>> {
        self.index.into_values().flatten()
    }
}

/// Where `k` is in a leaf, or would go: past the last entry or at the
/// first without a search (the common cases of a table arriving in order
/// and of one withdrawn in order).
fn search<K: Ord, V>(leaf: &VecDeque<(K, V)>, k: &K) -> Result<usize, usize> {
    match (leaf.front(), leaf.back()) {
        (_, Some(last)) if last.0 < *k => Err(leaf.len()),
        (Some(first), _) if first.0 == *k => Ok(0),
        _ => leaf.binary_search_by(|e| e.0.cmp(k)),
    }
}

/// Gives memory back from a leaf that removals have mostly emptied (a
/// leaf emptied in order, as a withdrawal of all does, shrinks twice).
fn shrink<T>(leaf: &mut VecDeque<T>) {
    if leaf.capacity() > 16 && leaf.len() * 4 <= leaf.capacity() {
        leaf.shrink_to(leaf.len() * 2);
    }
}

/// An IPv4 prefix as 8 bytes that sort as `Prefix` does.
fn v4_key(a: Ipv4Addr, len: u8) -> u64 {
    (u64::from(u32::from(a)) << 8) | u64::from(len)
}

fn v4_prefix(k: u64) -> Prefix {
    Prefix::V4(Ipv4Addr::from((k >> 8) as u32), k as u8)
}

/// An IPv6 prefix as integers that sort as `Prefix` does: address, then
/// length. Public only as part of the owning iterator's type.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct V6Key {
    hi: u64,
    lo: u64,
    len: u8,
}

fn v6_key(a: Ipv6Addr, len: u8) -> V6Key {
    let a = u128::from(a);
    V6Key {
        hi: (a >> 64) as u64,
        lo: a as u64,
        len,
    }
}

fn v6_prefix(k: V6Key) -> Prefix {
    Prefix::V6(
        Ipv6Addr::from((u128::from(k.hi) << 64) | u128::from(k.lo)),
        k.len,
    )
}

/// IPv6 prefixes up to this long have an 8-byte key: the address's first
/// 56 bits and the length, sorting as `Prefix` does.
const V6_SHORT: u8 = 56;

/// Up to /56 the top 64 bits of the address end in 8 host bits (clear in
/// a `Prefix`, and cleared here all the same), where the length goes.
fn v6_short_key(a: Ipv6Addr, len: u8) -> u64 {
    ((u128::from(a) >> 64) as u64 & !0xff) | u64::from(len)
}

fn v6_short_prefix(k: u64) -> Prefix {
    Prefix::V6(Ipv6Addr::from(u128::from(k & !0xff) << 64), k as u8)
}

/// Two iterators in `Prefix` order, merged (IPv6 prefixes up to /56 and
/// longer ones). Public only as part of the owning iterator's type.
pub struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<T, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (Prefix, T)>,
    B: Iterator<Item = (Prefix, T)>,
{
    type Item = (Prefix, T);

    fn next(&mut self) -> Option<(Prefix, T)> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if y.0 < x.0 => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

fn merge<T, A, B>(a: A, b: B) -> Merge<A, B>
where
    A: Iterator<Item = (Prefix, T)>,
    B: Iterator<Item = (Prefix, T)>,
{
    Merge {
        a: a.peekable(),
        b: b.peekable(),
    }
}

/// An ordered map from prefixes to `V` (see the module documentation).
#[derive(Clone)]
pub struct PrefixMap<V> {
    v4: Leaves<u64, V>,
    /// Up to /56.
    v6: Leaves<u64, V>,
    /// Longer.
    v6_long: Leaves<V6Key, V>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            v4: Leaves::default(),
            v6: Leaves::default(),
            v6_long: Leaves::default(),
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for PrefixMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> PrefixMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len + self.v6_long.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, p: &Prefix) -> Option<&V> {
        match *p {
            Prefix::V4(a, l) => self.v4.get(&v4_key(a, l)),
            Prefix::V6(a, l) if l <= V6_SHORT => self.v6.get(&v6_short_key(a, l)),
            Prefix::V6(a, l) => self.v6_long.get(&v6_key(a, l)),
        }
    }

    pub fn contains_key(&self, p: &Prefix) -> bool {
        self.get(p).is_some()
    }

    pub fn get_mut(&mut self, p: &Prefix) -> Option<&mut V> {
        match *p {
            Prefix::V4(a, l) => self.v4.get_mut(&v4_key(a, l)),
            Prefix::V6(a, l) if l <= V6_SHORT => self.v6.get_mut(&v6_short_key(a, l)),
            Prefix::V6(a, l) => self.v6_long.get_mut(&v6_key(a, l)),
        }
    }

    /// Returns the value that was there.
    pub fn insert(&mut self, p: Prefix, v: V) -> Option<V> {
        match p {
            Prefix::V4(a, l) => self.v4.insert(v4_key(a, l), v),
            Prefix::V6(a, l) if l <= V6_SHORT => self.v6.insert(v6_short_key(a, l), v),
            Prefix::V6(a, l) => self.v6_long.insert(v6_key(a, l), v),
        }
    }

    /// Finds `p` once and hands its value to `f`, which says whether to
    /// keep it (else it is removed). Whether `p` was there.
    pub fn change(&mut self, p: &Prefix, f: impl FnOnce(&mut V) -> bool) -> bool {
        match *p {
            Prefix::V4(a, l) => self.v4.change(&v4_key(a, l), f),
            Prefix::V6(a, l) if l <= V6_SHORT => self.v6.change(&v6_short_key(a, l), f),
            Prefix::V6(a, l) => self.v6_long.change(&v6_key(a, l), f),
        }
    }

    /// As [`Self::change`], handing back the value `f` did not keep (to
    /// move out, not copy, what a removal takes away).
    pub fn take_unless(&mut self, p: &Prefix, f: impl FnOnce(&mut V) -> bool) -> Option<V> {
        match *p {
            Prefix::V4(a, l) => self.v4.take_unless(&v4_key(a, l), f),
            Prefix::V6(a, l) if l <= V6_SHORT => self.v6.take_unless(&v6_short_key(a, l), f),
            Prefix::V6(a, l) => self.v6_long.take_unless(&v6_key(a, l), f),
        }
    }

    pub fn remove(&mut self, p: &Prefix) -> Option<V> {
        match *p {
            Prefix::V4(a, l) => self.v4.remove(&v4_key(a, l)),
            Prefix::V6(a, l) if l <= V6_SHORT => self.v6.remove(&v6_short_key(a, l)),
            Prefix::V6(a, l) => self.v6_long.remove(&v6_key(a, l)),
        }
    }

    /// Finds `p` once: `f` gets its value to change, or `None` and then
    /// returns the value to insert, if any.
    pub fn upsert(&mut self, p: Prefix, f: impl FnOnce(Option<&mut V>) -> Option<V>) {
        match p {
            Prefix::V4(a, l) => self.v4.upsert(v4_key(a, l), f),
            Prefix::V6(a, l) if l <= V6_SHORT => self.v6.upsert(v6_short_key(a, l), f),
            Prefix::V6(a, l) => self.v6_long.upsert(v6_key(a, l), f),
        }
    }

    pub fn retain(&mut self, mut f: impl FnMut(Prefix, &mut V) -> bool) {
        self.v4.retain(|k, v| f(v4_prefix(k), v));
        self.v6.retain(|k, v| f(v6_short_prefix(k), v));
        self.v6_long.retain(|k, v| f(v6_prefix(k), v));
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn iter(&self) -> impl Iterator<Item = (Prefix, &V)> {
        self.v4.iter().map(|(k, v)| (v4_prefix(*k), v)).chain(merge(
            self.v6.iter().map(|(k, v)| (v6_short_prefix(*k), v)),
            self.v6_long.iter().map(|(k, v)| (v6_prefix(*k), v)),
        ))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Prefix, &mut V)> {
        self.v4
            .iter_mut()
            .map(|(k, v)| (v4_prefix(k), v))
            .chain(merge(
                self.v6.iter_mut().map(|(k, v)| (v6_short_prefix(k), v)),
                self.v6_long.iter_mut().map(|(k, v)| (v6_prefix(k), v)),
            ))
    }

    pub fn keys(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.iter().map(|(p, _)| p)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.iter_mut().map(|(_, v)| v)
    }
}

impl<V> IntoIterator for PrefixMap<V> {
    type Item = (Prefix, V);
    type IntoIter = std::iter::Chain<
        std::iter::Map<
            std::iter::Flatten<btree_map::IntoValues<u64, VecDeque<(u64, V)>>>,
            fn((u64, V)) -> (Prefix, V),
        >,
        Merge<
            std::iter::Map<
                std::iter::Flatten<btree_map::IntoValues<u64, VecDeque<(u64, V)>>>,
                fn((u64, V)) -> (Prefix, V),
            >,
            std::iter::Map<
                std::iter::Flatten<btree_map::IntoValues<V6Key, VecDeque<(V6Key, V)>>>,
                fn((V6Key, V)) -> (Prefix, V),
            >,
        >,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let v4: fn((u64, V)) -> (Prefix, V) = |(k, v)| (v4_prefix(k), v);
        let v6: fn((u64, V)) -> (Prefix, V) = |(k, v)| (v6_short_prefix(k), v);
        let v6_long: fn((V6Key, V)) -> (Prefix, V) = |(k, v)| (v6_prefix(k), v);
        self.v4.into_iter().map(v4).chain(merge(
            self.v6.into_iter().map(v6),
            self.v6_long.into_iter().map(v6_long),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Prefix, u32),
        Remove(Prefix),
        /// Insert a run of consecutive /24s, as a table sent in order.
        Run(u32, u16),
        Retain(u32),
        /// Add one; keep it if not then divisible.
        Change(Prefix, u32),
    }

    fn prefix() -> impl Strategy<Value = Prefix> {
        // Few distinct keys, so that inserts, removes and replaces meet.
        prop_oneof![
            (0u32..4096, 20u8..=32).prop_map(|(a, l)| Prefix::V4(Ipv4Addr::from(a << 8), l)),
            (0u16..512, 48u8..=64)
                .prop_map(|(a, l)| Prefix::V6(Ipv6Addr::new(0x2001, 0xdb8, a, 0, 0, 0, 0, 0), l)),
            // Both IPv6 maps (up to /56 and longer), VM /128s among them.
            (0u16..64, 0u16..4, prop_oneof![40u8..=72, 120u8..=128]).prop_map(|(a, b, l)| {
                let addr = Ipv6Addr::new(0x2001, 0xdb8, 0, a << 8, 0, 0, 0, b);
                Prefix::new(addr.into(), l).expect("a length up to 128")
            }),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (prefix(), any::<u32>()).prop_map(|(p, v)| Op::Insert(p, v)),
            3 => prefix().prop_map(Op::Remove),
            1 => (0u32..4096, 1u16..300).prop_map(|(a, n)| Op::Run(a, n)),
            1 => (2u32..5).prop_map(Op::Retain),
            2 => (prefix(), 2u32..4).prop_map(|(p, d)| Op::Change(p, d)),
        ]
    }

    proptest! {
        /// Any sequence of changes leaves the map equal to a `BTreeMap`
        /// given the same ones: the same lookups, the same order.
        #[test]
        fn behaves_as_a_btree_map(ops in prop::collection::vec(op(), 1..400)) {
            let mut m = PrefixMap::new();
            let mut o = BTreeMap::new();
            for op in ops {
                // Lookups of keys there or not, before each change.
                if let Op::Insert(p, _) | Op::Remove(p) | Op::Change(p, _) = &op {
                    prop_assert_eq!(m.get(p), o.get(p));
                    prop_assert_eq!(m.get_mut(p).map(|v| *v), o.get(p).copied());
                }
                match op {
                    Op::Insert(p, v) => prop_assert_eq!(m.insert(p, v), o.insert(p, v)),
                    Op::Remove(p) => prop_assert_eq!(m.remove(&p), o.remove(&p)),
                    Op::Run(a, n) => {
                        for i in 0..u32::from(n) {
                            let p = Prefix::V4(Ipv4Addr::from((a + i) << 8), 24);
                            prop_assert_eq!(m.insert(p, i), o.insert(p, i));
                        }
                    }
                    Op::Change(p, d) => {
                        let step = |v: &mut u32| {
                            *v = v.wrapping_add(1);
                            *v % d != 0
                        };
                        let want = match o.get_mut(&p) {
                            None => false,
                            Some(v) => {
                                if !step(v) {
                                    o.remove(&p);
                                }
                                true
                            }
                        };
                        prop_assert_eq!(m.change(&p, step), want);
                    }
                    Op::Retain(d) => {
                        m.retain(|_, v| *v % d != 0);
                        o.retain(|_, v| *v % d != 0);
                    }
                }
                prop_assert_eq!(m.len(), o.len());
            }
            let got: Vec<(Prefix, u32)> = m.iter().map(|(p, v)| (p, *v)).collect();
            let want: Vec<(Prefix, u32)> = o.iter().map(|(p, v)| (*p, *v)).collect();
            prop_assert_eq!(got, want);
            for (p, v) in &o {
                prop_assert_eq!(m.get(p), Some(v));
            }
            // Every leaf is sorted, within bounds, and indexed by a key at
            // most its first and above the leaf before.
            let mut before = None;
            for (first, leaf) in &m.v4.index {
                prop_assert!(!leaf.is_empty() && leaf.len() <= LEAF);
                prop_assert!(*first <= leaf[0].0);
                prop_assert!(before.is_none_or(|b| b < *first));
                prop_assert!(leaf.iter().zip(leaf.iter().skip(1)).all(|(a, b)| a.0 < b.0));
                before = leaf.back().map(|e| e.0);
            }
        }
    }

    #[test]
    fn a_table_sent_in_order_fills_its_leaves() {
        let mut m = PrefixMap::new();
        for i in 0..100_000u32 {
            m.insert(Prefix::V4(Ipv4Addr::from(i << 8), 24), ());
        }
        assert_eq!(m.len(), 100_000);
        let leaves = m.v4.index.len();
        assert_eq!(leaves, 100_000usize.div_ceil(LEAF), "every leaf full");
        // The same keys in reverse order are slower to place but still
        // at least half full.
        let mut r = PrefixMap::new();
        for i in (0..100_000u32).rev() {
            r.insert(Prefix::V4(Ipv4Addr::from(i << 8), 24), ());
        }
        assert!(r.v4.index.len() <= 2 * leaves + 1);
        assert!(r.iter().map(|(p, _)| p).eq(m.keys()));
    }
}

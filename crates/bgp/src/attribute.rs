//! Path attributes (RFC 4271 §4.3, §5) and their error handling (RFC 7606).
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Attr. Flags  |Attr. Type Code|  then a 1-octet length, or 2 octets
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  when the Extended Length bit is set
//! ```
//!
//! Decoding one attribute gives either its value or an [`AttrError`], which is
//! what RFC 7606 says to do about it: discard the attribute, treat the whole
//! UPDATE as a withdrawal of its prefixes, or reset the session with a given
//! NOTIFICATION.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::notification::{self, Notification};
use crate::prefix::Prefix;
use crate::{Afi, AfiSafi, Context, Reader, AS_TRANS};

pub mod flag {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

pub mod code {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const LARGE_COMMUNITIES: u8 = 32;
}

/// What RFC 7606 says to do about a malformed attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrError {
    /// Ignore this attribute, keep the rest (RFC 7606 §2 "attribute discard").
    Discard(&'static str),
    /// Keep the session, withdraw every prefix of the UPDATE (§2
    /// "treat-as-withdraw").
    Withdraw(&'static str),
    /// End the session with this NOTIFICATION (§2 "session reset").
    Reset(Notification),
}

/// A problem found in a received UPDATE that did not end the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrProblem {
    pub type_code: u8,
    pub withdraw: bool,
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Igp => "igp",
            Origin::Egp => "egp",
            Origin::Incomplete => "incomplete",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
    ConfedSequence(Vec<u32>),
    ConfedSet(Vec<u32>),
}

impl AsSegment {
    fn type_code(&self) -> u8 {
        match self {
            AsSegment::Set(_) => 1,
            AsSegment::Sequence(_) => 2,
            AsSegment::ConfedSequence(_) => 3,
            AsSegment::ConfedSet(_) => 4,
        }
    }
    pub fn asns(&self) -> &[u32] {
        match self {
            AsSegment::Set(v)
            | AsSegment::Sequence(v)
            | AsSegment::ConfedSequence(v)
            | AsSegment::ConfedSet(v) => v,
        }
    }
}

/// AS_PATH: segments in order, ASNs always held as 4 octets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    pub fn from_sequence(asns: impl IntoIterator<Item = u32>) -> AsPath {
        let v: Vec<u32> = asns.into_iter().collect();
        if v.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment::Sequence(v)],
        }
    }

    /// Path length for best-path selection (RFC 4271 §9.1.2.2: a set counts
    /// as one, confederation segments as none).
    pub fn length(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
                _ => 0,
            })
            .sum()
    }

    /// The first AS of the path (the neighbor AS for eBGP routes).
    pub fn first_asn(&self) -> Option<u32> {
        match self.segments.first()? {
            AsSegment::Sequence(v) => v.first().copied(),
            _ => None,
        }
    }

    /// Prepends `asn` (RFC 4271 §5.1.2).
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, asn),
            _ => self.segments.insert(0, AsSegment::Sequence(vec![asn])),
        }
    }

    fn needs_as4(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.asns().iter().any(|&a| a > u16::MAX as u32))
    }

    fn encode(&self, four_octet: bool, out: &mut Vec<u8>) {
        for s in &self.segments {
            // A segment holds at most 255 ASNs; longer ones are split.
            for chunk in s.asns().chunks(255) {
                out.push(s.type_code());
                out.push(chunk.len() as u8);
                for &a in chunk {
                    if four_octet {
                        out.extend_from_slice(&a.to_be_bytes());
                    } else {
                        let a = u16::try_from(a).unwrap_or(AS_TRANS);
                        out.extend_from_slice(&a.to_be_bytes());
                    }
                }
            }
        }
    }

    /// Decodes AS_PATH or AS4_PATH. RFC 7606 §7.2: a zero-length segment,
    /// an unknown segment type or an overrun makes the path malformed.
    fn decode(buf: &[u8], four_octet: bool) -> Option<AsPath> {
        let mut r = Reader::new(buf);
        let mut segments = Vec::new();
        while !r.is_empty() {
            let t = r.u8()?;
            let n = r.u8()? as usize;
            if n == 0 {
                return None;
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(if four_octet {
                    r.u32()?
                } else {
                    r.u16()? as u32
                });
            }
            segments.push(match t {
                1 => AsSegment::Set(v),
                2 => AsSegment::Sequence(v),
                3 => AsSegment::ConfedSequence(v),
                4 => AsSegment::ConfedSet(v),
                _ => return None,
            });
        }
        Some(AsPath { segments })
    }

    /// Reconstructs the 4-octet path from a 2-octet speaker's AS_PATH and
    /// AS4_PATH (RFC 6793 §4.2.3): if AS4_PATH is longer, it is ignored;
    /// otherwise the leading ASNs of AS_PATH that AS4_PATH lacks are kept in
    /// front of it.
    pub fn merge_as4(&self, as4: &AsPath) -> AsPath {
        // RFC 6793 §6: confederation segments in AS4_PATH are discarded.
        let as4 = &AsPath {
            segments: as4
                .segments
                .iter()
                .filter(|s| matches!(s, AsSegment::Sequence(_) | AsSegment::Set(_)))
                .cloned()
                .collect(),
        };
        let count = |p: &AsPath| p.length();
        if count(self) < count(as4) {
            return self.clone();
        }
        let mut keep = count(self) - count(as4);
        let mut segments = Vec::new();
        for s in &self.segments {
            if keep == 0 {
                break;
            }
            match s {
                AsSegment::Sequence(v) => {
                    let n = v.len().min(keep);
                    segments.push(AsSegment::Sequence(v[..n].to_vec()));
                    keep -= n;
                }
                AsSegment::Set(_) => {
                    segments.push(s.clone());
                    keep -= 1;
                }
                _ => segments.push(s.clone()),
            }
        }
        for s in &as4.segments {
            match (segments.last_mut(), s) {
                (Some(AsSegment::Sequence(v)), AsSegment::Sequence(w))
                    if v.len() + w.len() <= 255 =>
                {
                    v.extend_from_slice(w)
                }
                _ => segments.push(s.clone()),
            }
        }
        AsPath { segments }
    }
}

impl std::fmt::Display for AsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.segments {
            let asns: Vec<String> = s.asns().iter().map(|a| a.to_string()).collect();
            if !first {
                write!(f, " ")?;
            }
            first = false;
            match s {
                AsSegment::Sequence(_) => write!(f, "{}", asns.join(" "))?,
                AsSegment::Set(_) => write!(f, "{{{}}}", asns.join(" "))?,
                AsSegment::ConfedSequence(_) => write!(f, "({})", asns.join(" "))?,
                AsSegment::ConfedSet(_) => write!(f, "[{}]", asns.join(" "))?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: u32,
    pub address: Ipv4Addr,
}

/// A large community (RFC 8092).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

/// An attribute we do not interpret, kept as received so that an optional
/// transitive one can be passed on (RFC 4271 §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// The next hop of a route: IPv4 from NEXT_HOP or MP_REACH, or IPv6 from
/// MP_REACH with the optional link-local address (RFC 2545 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    V4(Ipv4Addr),
    V6 {
        global: Ipv6Addr,
        link_local: Option<Ipv6Addr>,
    },
}

impl NextHop {
    pub fn addr(&self) -> IpAddr {
        match *self {
            NextHop::V4(a) => IpAddr::V4(a),
            NextHop::V6 { global, .. } => IpAddr::V6(global),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NextHop::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            NextHop::V6 { global, link_local } => match link_local {
                Some(ll) => {
                    out.push(32);
                    out.extend_from_slice(&global.octets());
                    out.extend_from_slice(&ll.octets());
                }
                None => {
                    out.push(16);
                    out.extend_from_slice(&global.octets());
                }
            },
        }
    }
}

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextHop::V4(a) => write!(f, "{a}"),
            NextHop::V6 {
                global,
                link_local: Some(ll),
            } => write!(f, "{global} {ll}"),
            NextHop::V6 { global, .. } => write!(f, "{global}"),
        }
    }
}

/// MP_REACH_NLRI (RFC 4760 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    pub family: AfiSafi,
    pub next_hop: NextHop,
    pub nlri: Vec<Prefix>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: AfiSafi,
    pub withdrawn: Vec<Prefix>,
}

/// The attributes that several prefixes can share: everything but the
/// NLRI-carrying MP attributes. This is the set that a RIB interns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    pub communities: Vec<u32>,
    pub extended_communities: Vec<u64>,
    pub large_communities: Vec<LargeCommunity>,
    /// Unrecognised optional transitive attributes, passed on with the
    /// Partial bit set (RFC 4271 §5).
    pub unknown: Vec<RawAttribute>,
}

fn put_attr(out: &mut Vec<u8>, flags: u8, type_code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.push(flags | flag::EXTENDED_LENGTH);
        out.push(type_code);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.push(flags & !flag::EXTENDED_LENGTH);
        out.push(type_code);
        out.push(value.len() as u8);
    }
    out.extend_from_slice(value);
}

const WELL_KNOWN: u8 = flag::TRANSITIVE;
const OPT_TRANS: u8 = flag::OPTIONAL | flag::TRANSITIVE;
const OPT_NON_TRANS: u8 = flag::OPTIONAL;

/// The Optional and Transitive bits a known attribute must carry.
fn expected_flags(type_code: u8) -> Option<u8> {
    Some(match type_code {
        code::ORIGIN
        | code::AS_PATH
        | code::NEXT_HOP
        | code::LOCAL_PREF
        | code::ATOMIC_AGGREGATE => WELL_KNOWN,
        code::MULTI_EXIT_DISC | code::MP_REACH_NLRI | code::MP_UNREACH_NLRI => OPT_NON_TRANS,
        code::AGGREGATOR
        | code::COMMUNITIES
        | code::EXTENDED_COMMUNITIES
        | code::AS4_PATH
        | code::AS4_AGGREGATOR
        | code::LARGE_COMMUNITIES => OPT_TRANS,
        _ => return None,
    })
}

impl PathAttributes {
    /// Appends the encoded attributes (without MP attributes). `four_octet`
    /// is whether the peer speaks 4-octet ASNs; if not, AS4_PATH and
    /// AS4_AGGREGATOR carry what 2 octets cannot (RFC 6793 §4.2.2).
    /// At most [`Self::max_encoded_len`] bytes.
    pub fn encode(&self, four_octet: bool, out: &mut Vec<u8>) {
        if let Some(o) = self.origin {
            put_attr(out, WELL_KNOWN, code::ORIGIN, &[o as u8]);
        }
        if let Some(p) = &self.as_path {
            let mut v = Vec::new();
            p.encode(four_octet, &mut v);
            put_attr(out, WELL_KNOWN, code::AS_PATH, &v);
        }
        if let Some(nh) = self.next_hop {
            put_attr(out, WELL_KNOWN, code::NEXT_HOP, &nh.octets());
        }
        if let Some(m) = self.med {
            put_attr(out, OPT_NON_TRANS, code::MULTI_EXIT_DISC, &m.to_be_bytes());
        }
        if let Some(lp) = self.local_pref {
            put_attr(out, WELL_KNOWN, code::LOCAL_PREF, &lp.to_be_bytes());
        }
        if self.atomic_aggregate {
            put_attr(out, WELL_KNOWN, code::ATOMIC_AGGREGATE, &[]);
        }
        if let Some(ag) = self.aggregator {
            let mut v = Vec::new();
            if four_octet {
                v.extend_from_slice(&ag.asn.to_be_bytes());
            } else {
                v.extend_from_slice(&u16::try_from(ag.asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
            v.extend_from_slice(&ag.address.octets());
            put_attr(out, OPT_TRANS, code::AGGREGATOR, &v);
        }
        if !self.communities.is_empty() {
            let v: Vec<u8> = self
                .communities
                .iter()
                .flat_map(|c| c.to_be_bytes())
                .collect();
            put_attr(out, OPT_TRANS, code::COMMUNITIES, &v);
        }
        if !self.extended_communities.is_empty() {
            let v: Vec<u8> = self
                .extended_communities
                .iter()
                .flat_map(|c| c.to_be_bytes())
                .collect();
            put_attr(out, OPT_TRANS, code::EXTENDED_COMMUNITIES, &v);
        }
        if !four_octet {
            if let Some(p) = self.as_path.as_ref().filter(|p| p.needs_as4()) {
                let mut v = Vec::new();
                p.encode(true, &mut v);
                put_attr(out, OPT_TRANS, code::AS4_PATH, &v);
            }
            if let Some(ag) = self.aggregator.filter(|a| a.asn > u16::MAX as u32) {
                let mut v = ag.asn.to_be_bytes().to_vec();
                v.extend_from_slice(&ag.address.octets());
                put_attr(out, OPT_TRANS, code::AS4_AGGREGATOR, &v);
            }
        }
        if !self.large_communities.is_empty() {
            let v: Vec<u8> = self
                .large_communities
                .iter()
                .flat_map(|c| {
                    let mut b = c.global.to_be_bytes().to_vec();
                    b.extend_from_slice(&c.local1.to_be_bytes());
                    b.extend_from_slice(&c.local2.to_be_bytes());
                    b
                })
                .collect();
            put_attr(out, OPT_TRANS, code::LARGE_COMMUNITIES, &v);
        }
        for u in &self.unknown {
            // RFC 4271 §5: a passed-on unrecognised transitive attribute has
            // its Partial bit set.
            put_attr(out, u.flags | flag::PARTIAL, u.type_code, &u.value);
        }
    }
}

impl PathAttributes {
    /// An upper bound of what [`Self::encode`] writes, with 2- or 4-octet
    /// ASNs, counted without encoding: every header as an extended one,
    /// and the AS path twice (AS_PATH and AS4_PATH).
    pub fn max_encoded_len(&self) -> usize {
        const H: usize = 4;
        let path = self.as_path.as_ref().map_or(0, |p| {
            let one: usize = p
                .segments
                .iter()
                .map(|s| 2 * s.asns().len().div_ceil(255).max(1) + 4 * s.asns().len())
                .sum();
            2 * (H + one)
        });
        let some = |b: bool, n: usize| if b { H + n } else { 0 };
        let list = |n: usize, each: usize| some(n > 0, n * each);
        some(self.origin.is_some(), 1)
            + path
            + some(self.next_hop.is_some(), 4)
            + some(self.med.is_some(), 4)
            + some(self.local_pref.is_some(), 4)
            + some(self.atomic_aggregate, 0)
            + 2 * some(self.aggregator.is_some(), 8)
            + list(self.communities.len(), 4)
            + list(self.extended_communities.len(), 8)
            + list(self.large_communities.len(), 12)
            + self
                .unknown
                .iter()
                .map(|u| H + u.value.len())
                .sum::<usize>()
    }
}

/// Everything the path attribute field of one UPDATE held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodedAttributes {
    pub attrs: PathAttributes,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub problems: Vec<AttrProblem>,
}

fn update_err(sub: u8, data: &[u8]) -> Notification {
    Notification::with_data(notification::code::UPDATE_MESSAGE, sub, data)
}

/// Decodes the path attribute field of an UPDATE.
///
/// `Err` is a session reset with its NOTIFICATION; everything else is in
/// [`DecodedAttributes::problems`]. `has_nlri` says whether the UPDATE
/// carries IPv4 NLRI (NEXT_HOP is then mandatory).
pub fn decode_attributes(
    buf: &[u8],
    cxt: &Context,
    has_nlri: bool,
) -> Result<DecodedAttributes, Notification> {
    let mut out = DecodedAttributes::default();
    let mut seen = [false; 256];
    let mut as4_path: Option<AsPath> = None;
    let mut as4_aggregator: Option<Aggregator> = None;
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let start = buf.len() - r.remaining();
        let header_fail = |out: &mut DecodedAttributes| {
            // RFC 7606 §4: the attribute list cannot be parsed any further;
            // that is treat-as-withdraw unless MP attributes were already
            // found, whose NLRI we could then not trust either.
            out.problems.push(AttrProblem {
                type_code: 0,
                withdraw: true,
                reason: "attribute length overruns the path attributes",
            });
        };
        let (Some(flags), Some(type_code)) = (r.u8(), r.u8()) else {
            header_fail(&mut out);
            break;
        };
        let len = if flags & flag::EXTENDED_LENGTH != 0 {
            r.u16().map(|l| l as usize)
        } else {
            r.u8().map(|l| l as usize)
        };
        let Some(value) = len.and_then(|l| r.take(l)) else {
            if out.mp_reach.is_some() || out.mp_unreach.is_some() || seen_mp(buf, start) {
                return Err(update_err(
                    notification::update::MALFORMED_ATTRIBUTE_LIST,
                    &[],
                ));
            }
            header_fail(&mut out);
            break;
        };
        let raw = &buf[start..buf.len() - r.remaining()];
        if seen[type_code as usize] {
            // RFC 7606 §3.g.
            if matches!(type_code, code::MP_REACH_NLRI | code::MP_UNREACH_NLRI) {
                return Err(update_err(
                    notification::update::MALFORMED_ATTRIBUTE_LIST,
                    &[],
                ));
            }
            out.problems.push(AttrProblem {
                type_code,
                withdraw: false,
                reason: "duplicate attribute discarded",
            });
            continue;
        }
        seen[type_code as usize] = true;
        let result = match expected_flags(type_code) {
            Some(expect) if flags & (flag::OPTIONAL | flag::TRANSITIVE) != expect => {
                // RFC 7606 §3.c; MP attributes cannot be withdrawn safely.
                if matches!(type_code, code::MP_REACH_NLRI | code::MP_UNREACH_NLRI) {
                    Err(AttrError::Reset(update_err(
                        notification::update::ATTRIBUTE_FLAGS_ERROR,
                        raw,
                    )))
                } else {
                    Err(AttrError::Withdraw(
                        "attribute flags conflict with its type",
                    ))
                }
            }
            Some(_) => decode_known(
                type_code,
                value,
                raw,
                cxt,
                &mut out,
                &mut as4_path,
                &mut as4_aggregator,
            ),
            None if flags & flag::OPTIONAL == 0 => {
                // RFC 4271 §6.3: an unrecognised well-known attribute.
                Err(AttrError::Reset(update_err(
                    notification::update::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                    raw,
                )))
            }
            None => {
                if flags & flag::TRANSITIVE != 0 {
                    out.attrs.unknown.push(RawAttribute {
                        flags: flags & !flag::EXTENDED_LENGTH,
                        type_code,
                        value: value.to_vec(),
                    });
                }
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            Err(AttrError::Reset(n)) => return Err(n),
            Err(AttrError::Withdraw(reason)) => out.problems.push(AttrProblem {
                type_code,
                withdraw: true,
                reason,
            }),
            Err(AttrError::Discard(reason)) => out.problems.push(AttrProblem {
                type_code,
                withdraw: false,
                reason,
            }),
        }
    }

    // RFC 6793 §4.2.3: merge AS4 attributes from a 2-octet speaker; a
    // 4-octet speaker must not send them, so they are discarded.
    if cxt.four_octet_as {
        if as4_path.is_some() || as4_aggregator.is_some() {
            out.problems.push(AttrProblem {
                type_code: code::AS4_PATH,
                withdraw: false,
                reason: "AS4 attribute from a 4-octet speaker discarded",
            });
        }
    } else {
        let aggregator_is_trans = out.attrs.aggregator.map(|a| a.asn == AS_TRANS as u32);
        if aggregator_is_trans == Some(false) {
            // The aggregation happened at a NEW speaker's far side: AS4_*
            // are ignored (RFC 6793 §4.2.3).
        } else {
            if let (Some(a4), Some(true)) = (as4_aggregator, aggregator_is_trans) {
                out.attrs.aggregator = Some(a4);
            }
            if let (Some(p4), Some(p)) = (as4_path, out.attrs.as_path.as_ref()) {
                out.attrs.as_path = Some(p.merge_as4(&p4));
            }
        }
    }

    // RFC 7606 §3.d: a missing well-known mandatory attribute is
    // treat-as-withdraw, when there is something to withdraw.
    let reach = has_nlri || out.mp_reach.is_some();
    if reach {
        let missing = |t: u8, present: bool, out: &mut DecodedAttributes| {
            if !present && !out.problems.iter().any(|p| p.type_code == t) {
                out.problems.push(AttrProblem {
                    type_code: t,
                    withdraw: true,
                    reason: "missing well-known attribute",
                });
            }
        };
        let (o, p) = (out.attrs.origin.is_some(), out.attrs.as_path.is_some());
        missing(code::ORIGIN, o, &mut out);
        missing(code::AS_PATH, p, &mut out);
        let nh = out.attrs.next_hop.is_some();
        if has_nlri {
            missing(code::NEXT_HOP, nh, &mut out);
        }
    }
    Ok(out)
}

/// Whether an MP attribute header starts at or after `start` (used to pick
/// session reset over treat-as-withdraw when the list is cut short).
fn seen_mp(buf: &[u8], start: usize) -> bool {
    matches!(
        buf.get(start + 1),
        Some(&code::MP_REACH_NLRI) | Some(&code::MP_UNREACH_NLRI)
    )
}

#[allow(clippy::too_many_arguments)]
fn decode_known(
    type_code: u8,
    value: &[u8],
    raw: &[u8],
    cxt: &Context,
    out: &mut DecodedAttributes,
    as4_path: &mut Option<AsPath>,
    as4_aggregator: &mut Option<Aggregator>,
) -> Result<(), AttrError> {
    let a = &mut out.attrs;
    match type_code {
        code::ORIGIN => {
            // RFC 7606 §7.1.
            a.origin = Some(match value {
                [0] => Origin::Igp,
                [1] => Origin::Egp,
                [2] => Origin::Incomplete,
                _ => return Err(AttrError::Withdraw("malformed ORIGIN")),
            });
        }
        code::AS_PATH => {
            // RFC 7606 §7.2.
            a.as_path = Some(
                AsPath::decode(value, cxt.four_octet_as)
                    .ok_or(AttrError::Withdraw("malformed AS_PATH"))?,
            );
        }
        code::NEXT_HOP => {
            // RFC 7606 §7.3.
            let b: [u8; 4] = value
                .try_into()
                .map_err(|_| AttrError::Withdraw("NEXT_HOP length is not 4"))?;
            let nh = Ipv4Addr::from(b);
            if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() || nh.is_loopback() {
                return Err(AttrError::Withdraw("NEXT_HOP is not a unicast address"));
            }
            a.next_hop = Some(nh);
        }
        code::MULTI_EXIT_DISC => {
            // RFC 7606 §7.4.
            let b: [u8; 4] = value
                .try_into()
                .map_err(|_| AttrError::Withdraw("MULTI_EXIT_DISC length is not 4"))?;
            a.med = Some(u32::from_be_bytes(b));
        }
        // RFC 7606 §7.5: from an external peer it is discarded (RFC 4271
        // §5.1.5), a malformed one too, and said only then.
        code::LOCAL_PREF if cxt.external && value.len() != 4 => {
            return Err(AttrError::Discard(
                "LOCAL_PREF from an external peer, length not 4",
            ));
        }
        code::LOCAL_PREF if cxt.external => {}
        code::LOCAL_PREF => {
            // RFC 7606 §7.5.
            let b: [u8; 4] = value
                .try_into()
                .map_err(|_| AttrError::Withdraw("LOCAL_PREF length is not 4"))?;
            a.local_pref = Some(u32::from_be_bytes(b));
        }
        code::ATOMIC_AGGREGATE => {
            // RFC 7606 §7.6.
            if !value.is_empty() {
                return Err(AttrError::Discard("ATOMIC_AGGREGATE length is not 0"));
            }
            a.atomic_aggregate = true;
        }
        code::AGGREGATOR => {
            // RFC 7606 §7.7.
            let want = if cxt.four_octet_as { 8 } else { 6 };
            if value.len() != want {
                return Err(AttrError::Discard("AGGREGATOR has the wrong length"));
            }
            let mut r = Reader::new(value);
            let asn = if cxt.four_octet_as {
                r.u32().unwrap_or_default()
            } else {
                r.u16().unwrap_or_default() as u32
            };
            let address = Ipv4Addr::from(r.u32().unwrap_or_default());
            a.aggregator = Some(Aggregator { asn, address });
        }
        code::COMMUNITIES => {
            // RFC 7606 §7.8.
            if value.is_empty() || value.len() % 4 != 0 {
                return Err(AttrError::Withdraw(
                    "COMMUNITIES length is not a multiple of 4",
                ));
            }
            a.communities = value
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        code::EXTENDED_COMMUNITIES => {
            // RFC 7606 §7.14.
            if value.is_empty() || value.len() % 8 != 0 {
                return Err(AttrError::Withdraw(
                    "EXTENDED_COMMUNITIES length is not a multiple of 8",
                ));
            }
            a.extended_communities = value
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                .collect();
        }
        code::LARGE_COMMUNITIES => {
            // RFC 8092 §6.
            if value.is_empty() || value.len() % 12 != 0 {
                return Err(AttrError::Withdraw(
                    "LARGE_COMMUNITIES length is not a multiple of 12",
                ));
            }
            a.large_communities = value
                .chunks_exact(12)
                .map(|c| {
                    let w = |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                    LargeCommunity {
                        global: w(0),
                        local1: w(4),
                        local2: w(8),
                    }
                })
                .collect();
        }
        code::AS4_PATH => {
            // RFC 6793 §6 / RFC 7606 §7.2: a malformed AS4_PATH is discarded.
            *as4_path =
                Some(AsPath::decode(value, true).ok_or(AttrError::Discard("malformed AS4_PATH"))?);
        }
        code::AS4_AGGREGATOR => {
            let b: [u8; 8] = value
                .try_into()
                .map_err(|_| AttrError::Discard("AS4_AGGREGATOR length is not 8"))?;
            *as4_aggregator = Some(Aggregator {
                asn: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                address: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
            });
        }
        code::MP_REACH_NLRI => out.mp_reach = decode_mp_reach(value, raw, cxt)?,
        code::MP_UNREACH_NLRI => out.mp_unreach = decode_mp_unreach(value, raw)?,
        _ => {}
    }
    Ok(())
}

/// MP_REACH_NLRI (RFC 4760 §3). A malformed one cannot be withdrawn safely
/// because its NLRI cannot be located: session reset (RFC 7606 §7.11).
/// A family that was not negotiated is ignored.
fn decode_mp_reach(value: &[u8], raw: &[u8], cxt: &Context) -> Result<Option<MpReach>, AttrError> {
    let reset = || {
        AttrError::Reset(update_err(
            notification::update::OPTIONAL_ATTRIBUTE_ERROR,
            raw,
        ))
    };
    let mut r = Reader::new(value);
    let afi = r.u16().ok_or_else(reset)?;
    let safi = r.u8().ok_or_else(reset)?;
    let family = AfiSafi { afi, safi };
    let nh_len = r.u8().ok_or_else(reset)? as usize;
    let nh = r.take(nh_len).ok_or_else(reset)?;
    let _reserved = r.u8().ok_or_else(reset)?;
    let Some(afi) = family.unicast_afi().filter(|_| cxt.has_family(family)) else {
        return Err(AttrError::Discard(
            "MP_REACH_NLRI for a family not negotiated",
        ));
    };
    let v6 = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or_default());
    let next_hop = match (afi, nh_len) {
        (Afi::Ipv4, 4) => NextHop::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3])),
        (Afi::Ipv4, 16 | 32) if cxt.ipv4_over_ipv6_next_hop => NextHop::V6 {
            global: v6(&nh[..16]),
            link_local: (nh_len == 32).then(|| v6(&nh[16..])),
        },
        (Afi::Ipv6, 16) => NextHop::V6 {
            global: v6(nh),
            link_local: None,
        },
        (Afi::Ipv6, 32) => NextHop::V6 {
            global: v6(&nh[..16]),
            link_local: Some(v6(&nh[16..])),
        },
        _ => return Err(reset()),
    };
    let nlri = Prefix::decode_all(afi, r.rest()).map_err(|_| reset())?;
    Ok(Some(MpReach {
        family,
        next_hop,
        nlri,
    }))
}

fn decode_mp_unreach(value: &[u8], raw: &[u8]) -> Result<Option<MpUnreach>, AttrError> {
    let reset = || {
        AttrError::Reset(update_err(
            notification::update::OPTIONAL_ATTRIBUTE_ERROR,
            raw,
        ))
    };
    let mut r = Reader::new(value);
    let afi = r.u16().ok_or_else(reset)?;
    let safi = r.u8().ok_or_else(reset)?;
    let family = AfiSafi { afi, safi };
    let Some(afi) = family.unicast_afi() else {
        return Err(AttrError::Discard(
            "MP_UNREACH_NLRI for a family not negotiated",
        ));
    };
    let withdrawn = Prefix::decode_all(afi, r.rest()).map_err(|_| reset())?;
    Ok(Some(MpUnreach { family, withdrawn }))
}

/// Encodes MP_REACH_NLRI with as many of `nlri` as fit in `room` bytes;
/// returns how many were taken.
pub(crate) fn encode_mp_reach(
    family: AfiSafi,
    next_hop: &NextHop,
    nlri: &[Prefix],
    room: usize,
    out: &mut Vec<u8>,
) -> usize {
    let mut v = Vec::new();
    v.extend_from_slice(&family.afi.to_be_bytes());
    v.push(family.safi);
    next_hop.encode(&mut v);
    v.push(0);
    let taken = push_prefixes(nlri, room.saturating_sub(v.len() + 4), &mut v);
    put_attr(out, OPT_NON_TRANS, code::MP_REACH_NLRI, &v);
    taken
}

pub(crate) fn encode_mp_unreach(
    family: AfiSafi,
    withdrawn: &[Prefix],
    room: usize,
    out: &mut Vec<u8>,
) -> usize {
    let mut v = Vec::new();
    v.extend_from_slice(&family.afi.to_be_bytes());
    v.push(family.safi);
    let taken = push_prefixes(withdrawn, room.saturating_sub(v.len() + 4), &mut v);
    put_attr(out, OPT_NON_TRANS, code::MP_UNREACH_NLRI, &v);
    taken
}

/// Appends prefixes while they fit in `room` bytes; returns how many.
pub(crate) fn push_prefixes(prefixes: &[Prefix], room: usize, out: &mut Vec<u8>) -> usize {
    let mut used = 0;
    let mut n = 0;
    for p in prefixes {
        let l = p.encoded_len();
        if used + l > room {
            break;
        }
        p.encode(out);
        used += l;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cxt2() -> Context {
        Context::default()
    }

    #[test]
    fn as4_merge_for_two_octet_speaker() {
        // RFC 6793 §4.2.3 example shape: AS_PATH "100 23456 23456", AS4_PATH
        // "4200000001 4200000002" -> "100 4200000001 4200000002".
        let p = AsPath::from_sequence([100, 23456, 23456]);
        let p4 = AsPath::from_sequence([4_200_000_001, 4_200_000_002]);
        assert_eq!(
            p.merge_as4(&p4),
            AsPath::from_sequence([100, 4_200_000_001, 4_200_000_002])
        );
        // A longer AS4_PATH is ignored.
        let p4 = AsPath::from_sequence([1, 2, 3, 4]);
        assert_eq!(p.merge_as4(&p4), p);
    }

    #[test]
    fn two_octet_encoding_emits_as4_path() {
        let attrs = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence([64612, 4_200_000_001])),
            next_hop: Some("10.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        let mut v = Vec::new();
        attrs.encode(false, &mut v);
        let d = decode_attributes(&v, &cxt2(), true).unwrap();
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.attrs.as_path, attrs.as_path);
    }

    #[test]
    fn flags_error_is_treat_as_withdraw() {
        // ORIGIN marked optional.
        let v = [0xc0, 1, 1, 0];
        let d = decode_attributes(&v, &cxt2(), false).unwrap();
        assert!(d.problems[0].withdraw);
    }

    #[test]
    fn local_pref_from_an_external_peer_is_discarded_even_malformed() {
        let short = [0x40, 5, 2, 0, 100];
        let good = [0x40, 5, 4, 0, 0, 0, 100];
        let ebgp = Context {
            external: true,
            ..cxt2()
        };
        // RFC 7606 §7.5: from eBGP, discarded; the rest of the UPDATE stays.
        let d = decode_attributes(&short, &ebgp, false).unwrap();
        assert!(!d.problems[0].withdraw, "{:?}", d.problems);
        assert_eq!(d.attrs.local_pref, None);
        let d = decode_attributes(&good, &ebgp, false).unwrap();
        assert!(d.problems.is_empty() && d.attrs.local_pref.is_none());
        // From iBGP: malformed is treat-as-withdraw, well-formed is kept.
        let d = decode_attributes(&short, &cxt2(), false).unwrap();
        assert!(d.problems[0].withdraw);
        let d = decode_attributes(&good, &cxt2(), false).unwrap();
        assert_eq!(d.attrs.local_pref, Some(100));
    }

    #[test]
    fn unrecognized_well_known_resets() {
        let v = [0x40, 99, 1, 0];
        let n = decode_attributes(&v, &cxt2(), false).unwrap_err();
        assert_eq!((n.code, n.subcode), (3, 2));
        assert_eq!(n.data, v);
    }

    #[test]
    fn duplicate_mp_reach_resets() {
        let mut v = Vec::new();
        let nh = NextHop::V6 {
            global: "2001:db8::1".parse().unwrap(),
            link_local: None,
        };
        encode_mp_reach(AfiSafi::IPV6_UNICAST, &nh, &[], 4000, &mut v);
        encode_mp_reach(AfiSafi::IPV6_UNICAST, &nh, &[], 4000, &mut v);
        let n = decode_attributes(&v, &Context::modern(), false).unwrap_err();
        assert_eq!((n.code, n.subcode), (3, 1));
    }

    #[test]
    fn unknown_optional_transitive_is_kept() {
        let v = [0xc0, 99, 2, 7, 7];
        let d = decode_attributes(&v, &cxt2(), false).unwrap();
        assert_eq!(d.attrs.unknown.len(), 1);
        let mut out = Vec::new();
        d.attrs.encode(true, &mut out);
        assert_eq!(out, [0xe0, 99, 2, 7, 7]);
        // Optional non-transitive unknown: dropped quietly.
        let d = decode_attributes(&[0x80, 99, 0], &cxt2(), false).unwrap();
        assert!(d.attrs.unknown.is_empty() && d.problems.is_empty());
    }
}

//! UPDATE (RFC 4271 §4.3, RFC 4760).
//!
//! ```text
//! +-----------------------------------------------------+
//! |   Withdrawn Routes Length (2 octets)                |
//! +-----------------------------------------------------+
//! |   Withdrawn Routes (variable)                       |
//! +-----------------------------------------------------+
//! |   Total Path Attribute Length (2 octets)            |
//! +-----------------------------------------------------+
//! |   Path Attributes (variable)                        |
//! +-----------------------------------------------------+
//! |   Network Layer Reachability Information (variable) |
//! +-----------------------------------------------------+
//! ```
//!
//! Encoding packs many prefixes that share one attribute set into as few
//! messages as fit in the negotiated message size.

use crate::attribute::{
    self, decode_attributes, AttrProblem, MpReach, MpUnreach, NextHop, PathAttributes,
};
use crate::message::{self, HEADER_LEN};
use crate::notification::{self, Notification};
use crate::prefix::Prefix;
use crate::{Afi, AfiSafi, Context, Reader};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 unicast prefixes in the Withdrawn Routes field.
    pub withdrawn: Vec<Prefix>,
    pub attributes: PathAttributes,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// IPv4 unicast prefixes in the NLRI field.
    pub nlri: Vec<Prefix>,
    /// RFC 7606 problems found while decoding (empty for locally built
    /// UPDATEs): discarded attributes, or a reason to treat as withdraw.
    pub problems: Vec<AttrProblem>,
}

impl Update {
    /// True when RFC 7606 says to treat the announced prefixes as withdrawn.
    pub fn treat_as_withdraw(&self) -> bool {
        self.problems.iter().any(|p| p.withdraw)
    }

    /// Prefixes announced, each with its next hop (none when treat-as-withdraw).
    pub fn announced(&self) -> Vec<(Prefix, NextHop)> {
        self.announced_iter().collect()
    }

    /// As [`Self::announced`], without making a list.
    pub fn announced_iter(&self) -> impl Iterator<Item = (Prefix, NextHop)> + '_ {
        let live = !self.treat_as_withdraw();
        let v4 = self.attributes.next_hop.filter(|_| live).map(NextHop::V4);
        let v4 = self.nlri.iter().filter_map(move |p| Some((*p, v4?)));
        let mp = self.mp_reach.iter().filter(move |_| live);
        v4.chain(mp.flat_map(|mp| mp.nlri.iter().map(|p| (*p, mp.next_hop))))
    }

    /// Prefixes withdrawn, including those of a treat-as-withdraw UPDATE.
    pub fn withdrawn_all(&self) -> Vec<Prefix> {
        self.withdrawn_iter().collect()
    }

    /// As [`Self::withdrawn_all`], without making a list.
    pub fn withdrawn_iter(&self) -> impl Iterator<Item = Prefix> + '_ {
        let dead = self.treat_as_withdraw();
        let reach = self.mp_reach.iter().flat_map(|mp| &mp.nlri);
        self.withdrawn
            .iter()
            .chain(self.mp_unreach.iter().flat_map(|mp| &mp.withdrawn))
            .chain(self.nlri.iter().chain(reach).filter(move |_| dead))
            .copied()
    }

    /// Moves the path attributes out, but for the IPv4 NEXT_HOP, which
    /// [`Self::announced_iter`] still needs.
    pub fn take_attributes(&mut self) -> PathAttributes {
        let a = std::mem::take(&mut self.attributes);
        self.attributes.next_hop = a.next_hop;
        a
    }

    /// The family this UPDATE marks End-of-RIB for (RFC 4724 §2).
    pub fn end_of_rib(&self) -> Option<AfiSafi> {
        let no_attrs = self.attributes == PathAttributes::default() && self.mp_reach.is_none();
        if !no_attrs || !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        match &self.mp_unreach {
            None => Some(AfiSafi::IPV4_UNICAST),
            Some(mp) if mp.withdrawn.is_empty() => Some(mp.family),
            _ => None,
        }
    }

    /// Decodes an UPDATE body. `Err` is a session reset (RFC 7606 §2).
    pub fn decode_body(body: &[u8], cxt: &Context) -> Result<Update, Notification> {
        let malformed = || {
            Notification::new(
                notification::code::UPDATE_MESSAGE,
                notification::update::MALFORMED_ATTRIBUTE_LIST,
            )
        };
        let invalid_network = || {
            Notification::new(
                notification::code::UPDATE_MESSAGE,
                notification::update::INVALID_NETWORK_FIELD,
            )
        };
        let mut r = Reader::new(body);
        // RFC 4271 §6.3 / RFC 7606 §4: lengths inconsistent with the message
        // length are a Malformed Attribute List.
        let wlen = r.u16().ok_or_else(malformed)? as usize;
        let wbuf = r.take(wlen).ok_or_else(malformed)?;
        let alen = r.u16().ok_or_else(malformed)? as usize;
        let abuf = r.take(alen).ok_or_else(malformed)?;
        let nbuf = r.rest();
        // RFC 7606 §5.3: a prefix whose length cannot be right leaves the
        // rest of the field unreadable: session reset.
        let withdrawn = Prefix::decode_all(Afi::Ipv4, wbuf).map_err(|_| invalid_network())?;
        let nlri = Prefix::decode_all(Afi::Ipv4, nbuf).map_err(|_| invalid_network())?;
        let decoded = decode_attributes(abuf, cxt, !nlri.is_empty())?;
        Ok(Update {
            withdrawn,
            attributes: decoded.attrs,
            mp_reach: decoded.mp_reach,
            mp_unreach: decoded.mp_unreach,
            nlri,
            problems: decoded.problems,
        })
    }

    /// Encodes this UPDATE as one whole message (header included). The
    /// caller keeps it within the size limit; [`encode_announce`] and
    /// [`encode_withdraw`] split for you.
    pub fn encode(&self, cxt: &Context) -> Vec<u8> {
        let mut body = Vec::new();
        let mut w = Vec::new();
        for p in &self.withdrawn {
            p.encode(&mut w);
        }
        body.extend_from_slice(&(w.len() as u16).to_be_bytes());
        body.extend_from_slice(&w);
        let mut a = Vec::new();
        if let Some(mp) = &self.mp_reach {
            attribute::encode_mp_reach(mp.family, &mp.next_hop, &mp.nlri, usize::MAX, &mut a);
        }
        if let Some(mp) = &self.mp_unreach {
            attribute::encode_mp_unreach(mp.family, &mp.withdrawn, usize::MAX, &mut a);
        }
        self.attributes.encode(cxt.four_octet_as, &mut a);
        body.extend_from_slice(&(a.len() as u16).to_be_bytes());
        body.extend_from_slice(&a);
        for p in &self.nlri {
            p.encode(&mut body);
        }
        message::frame(message::kind::UPDATE, &body)
    }
}

/// Whether an announcement with these attributes fits in one message
/// with any next hop, family and prefix, whatever the session negotiated:
/// a route that does not cannot be sent at all, and must be withdrawn
/// rather than left as it was.
pub fn announce_fits(attrs: &PathAttributes) -> bool {
    // The two length fields; MP_REACH_NLRI with an IPv6 global and
    // link-local next hop and its header; one /128.
    const BESIDE: usize = 4 + (4 + 3 + 1 + 32 + 1) + 17;
    attrs.max_encoded_len() + HEADER_LEN + BESIDE <= message::MAX_MESSAGE_LEN
}

/// UPDATE messages announcing `prefixes` (all of one family) with one
/// attribute set and next hop, packed as many to a message as fit.
///
/// IPv4 prefixes with an IPv4 next hop go in the NLRI field with NEXT_HOP;
/// IPv4 with an IPv6 next hop (RFC 8950) and IPv6 go in MP_REACH_NLRI.
pub fn encode_announce(
    attrs: &PathAttributes,
    next_hop: NextHop,
    prefixes: &[Prefix],
    cxt: &Context,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some(first) = prefixes.first() else {
        return out;
    };
    let family = AfiSafi::unicast(first.afi());
    let mut attrs = attrs.clone();
    let classic = matches!((first.afi(), next_hop), (Afi::Ipv4, NextHop::V4(_)));
    if let (true, NextHop::V4(nh)) = (classic, next_hop) {
        attrs.next_hop = Some(nh);
    } else {
        attrs.next_hop = None;
    }
    let mut encoded_attrs = Vec::new();
    attrs.encode(cxt.four_octet_as, &mut encoded_attrs);
    // Room for NLRI: message size minus header, the two length fields and
    // the shared attributes.
    let Some(room) = cxt
        .max_message_len
        .checked_sub(HEADER_LEN + 4 + encoded_attrs.len())
    else {
        // Attributes alone larger than a message: nothing can be sent.
        return out;
    };
    let mut rest = prefixes;
    while !rest.is_empty() {
        let mut body = vec![0, 0];
        let mut a = Vec::new();
        let mut nlri = Vec::new();
        let taken = if classic {
            attribute::push_prefixes(rest, room, &mut nlri)
        } else {
            attribute::encode_mp_reach(family, &next_hop, rest, room, &mut a)
        };
        if taken == 0 {
            // The attributes alone do not leave room for one prefix.
            break;
        }
        a.extend_from_slice(&encoded_attrs);
        body.extend_from_slice(&(a.len() as u16).to_be_bytes());
        body.extend_from_slice(&a);
        body.extend_from_slice(&nlri);
        out.push(message::frame(message::kind::UPDATE, &body));
        rest = &rest[taken..];
    }
    out
}

/// UPDATE messages withdrawing `prefixes` (all of one family).
pub fn encode_withdraw(prefixes: &[Prefix], cxt: &Context) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some(first) = prefixes.first() else {
        return out;
    };
    let room = cxt.max_message_len - HEADER_LEN - 4;
    let mut rest = prefixes;
    while !rest.is_empty() {
        let mut body = Vec::with_capacity(room + 4);
        let taken = if first.afi() == Afi::Ipv4 {
            // The withdrawn routes' length is known once they are in.
            body.extend_from_slice(&[0, 0]);
            let n = attribute::push_prefixes(rest, room, &mut body);
            let w = (body.len() - 2) as u16;
            body[..2].copy_from_slice(&w.to_be_bytes());
            body.extend_from_slice(&[0, 0]);
            n
        } else {
            let mut a = Vec::new();
            let n = attribute::encode_mp_unreach(AfiSafi::unicast(first.afi()), rest, room, &mut a);
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&(a.len() as u16).to_be_bytes());
            body.extend_from_slice(&a);
            n
        };
        if taken == 0 {
            break;
        }
        out.push(message::frame(message::kind::UPDATE, &body));
        rest = &rest[taken..];
    }
    out
}

/// The End-of-RIB marker for a family (RFC 4724 §2).
pub fn encode_end_of_rib(family: AfiSafi) -> Vec<u8> {
    if family == AfiSafi::IPV4_UNICAST {
        return message::frame(message::kind::UPDATE, &[0, 0, 0, 0]);
    }
    let mut a = Vec::new();
    attribute::encode_mp_unreach(family, &[], usize::MAX, &mut a);
    let mut body = vec![0, 0];
    body.extend_from_slice(&(a.len() as u16).to_be_bytes());
    body.extend_from_slice(&a);
    message::frame(message::kind::UPDATE, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_fits_is_true_up_to_what_one_message_holds() {
        let with = |n: usize| PathAttributes {
            origin: Some(crate::Origin::Igp),
            as_path: Some(crate::AsPath::from_sequence([64612])),
            communities: (0..n as u32).collect(),
            ..Default::default()
        };
        let largest = (0..2000)
            .take_while(|n| announce_fits(&with(*n)))
            .last()
            .unwrap();
        assert!(largest > 950, "{largest}");
        // The largest that fits goes out whatever the family and next hop.
        let nh = NextHop::V6 {
            global: "2001:db8::1".parse().unwrap(),
            link_local: Some("fe80::1".parse().unwrap()),
        };
        let p: Prefix = "2001:db8:3::1/128".parse().unwrap();
        for cxt in [Context::modern(), Context::default()] {
            let cxt = Context {
                families: vec![AfiSafi::IPV6_UNICAST],
                ..cxt
            };
            assert_eq!(encode_announce(&with(largest), nh, &[p], &cxt).len(), 1);
        }
        // Some more would not go out at all.
        assert!(encode_announce(&with(1020), nh, &[p], &Context::modern()).is_empty());
    }
    use crate::attribute::{AsPath, Origin};
    use crate::message::Message;

    fn attrs() -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence([64612])),
            ..Default::default()
        }
    }

    fn decode(bytes: &[u8], cxt: &Context) -> Update {
        match Message::decode(bytes, cxt).unwrap().unwrap().0 {
            Message::Update(u) => *u,
            m => panic!("not an update: {m:?}"),
        }
    }

    #[test]
    fn packs_many_prefixes_per_message() {
        let cxt = Context::modern();
        let prefixes: Vec<Prefix> = (0..2000u32)
            .map(|i| {
                Prefix::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).unwrap()
            })
            .collect();
        let msgs = encode_announce(
            &attrs(),
            NextHop::V4("10.192.21.6".parse().unwrap()),
            &prefixes,
            &cxt,
        );
        // 2000 /24s at 4 bytes each need 8000 bytes: two or three messages.
        assert!(msgs.len() <= 3, "{} messages", msgs.len());
        let mut got = Vec::new();
        for m in &msgs {
            assert!(m.len() <= 4096);
            let u = decode(m, &cxt);
            assert!(u.problems.is_empty());
            got.extend(u.announced().into_iter().map(|(p, _)| p));
        }
        assert_eq!(got, prefixes);
    }

    #[test]
    fn ipv6_announce_with_link_local_and_withdraw() {
        let cxt = Context::modern();
        let p: Vec<Prefix> = vec!["2001:db8:3::2/128".parse().unwrap()];
        let nh = NextHop::V6 {
            global: "2001:db8:140::12".parse().unwrap(),
            link_local: Some("fe80::2022:22ff:fe22:2201".parse().unwrap()),
        };
        let m = encode_announce(&attrs(), nh, &p, &cxt);
        let u = decode(&m[0], &cxt);
        assert_eq!(u.announced(), vec![(p[0], nh)]);
        let w = encode_withdraw(&p, &cxt);
        assert_eq!(decode(&w[0], &cxt).withdrawn_all(), p);
    }

    #[test]
    fn end_of_rib_markers() {
        let cxt = Context::modern();
        assert_eq!(
            decode(&encode_end_of_rib(AfiSafi::IPV4_UNICAST), &cxt).end_of_rib(),
            Some(AfiSafi::IPV4_UNICAST)
        );
        assert_eq!(
            decode(&encode_end_of_rib(AfiSafi::IPV6_UNICAST), &cxt).end_of_rib(),
            Some(AfiSafi::IPV6_UNICAST)
        );
    }

    #[test]
    fn missing_next_hop_is_treat_as_withdraw() {
        let cxt = Context::modern();
        let u = Update {
            attributes: attrs(),
            nlri: vec!["10.3.0.1/32".parse().unwrap()],
            ..Default::default()
        };
        let d = decode(&u.encode(&cxt), &cxt);
        assert!(d.treat_as_withdraw());
        assert_eq!(d.withdrawn_all(), u.nlri);
        assert!(d.announced().is_empty());
    }

    #[test]
    fn inconsistent_lengths_reset() {
        let cxt = Context::modern();
        // Withdrawn length larger than the body.
        let e = Update::decode_body(&[0, 9, 0, 0], &cxt).unwrap_err();
        assert_eq!((e.code, e.subcode), (3, 1));
        // A prefix length of 33 in the NLRI.
        let e = Update::decode_body(&[0, 0, 0, 0, 33, 1, 2, 3, 4, 5], &cxt).unwrap_err();
        assert_eq!((e.code, e.subcode), (3, 10));
    }
}

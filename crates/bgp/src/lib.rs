//! BGP-4 for tapir, without IO.
//!
//! - [`message`]: framing and the five message types (RFC 4271 §4, RFC 2918);
//! - [`open`], [`capability`]: OPEN and the capabilities we speak (RFC 5492);
//! - [`attribute`], [`update`]: path attributes and UPDATE, with RFC 7606 error
//!   handling as types ([`attribute::AttrError`]);
//! - [`notification`]: every NOTIFICATION code and subcode (RFC 4271 §4.5, RFC 9003);
//! - [`context`]: what was negotiated, which decoding and encoding depend on;
//! - [`session`]: the RFC 4271 §8 state machine, driven by bytes, timer expiry
//!   and a `now` passed in, in the shape of quinn-proto;
//! - [`collision`]: connection collision detection (RFC 4271 §6.8).
//!
//! Nothing here opens a socket or reads a clock.

#![forbid(unsafe_code)]

pub mod attribute;
pub mod capability;
pub mod collision;
pub mod context;
pub mod message;
pub mod notification;
pub mod open;
pub mod prefix;
pub mod session;
pub mod update;

pub use attribute::{AsPath, AsSegment, NextHop, Origin, PathAttributes};
pub use capability::Capability;
pub use context::Context;
pub use message::{Message, RouteRefresh};
pub use notification::Notification;
pub use open::Open;
pub use prefix::Prefix;
pub use update::Update;

/// AS_TRANS (RFC 6793 §9): stands in for a 4-octet ASN towards a 2-octet speaker.
pub const AS_TRANS: u16 = 23456;

/// Address family identifier (IANA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
}

impl Afi {
    pub fn code(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
        }
    }

    pub fn from_code(code: u16) -> Option<Afi> {
        match code {
            1 => Some(Afi::Ipv4),
            2 => Some(Afi::Ipv6),
            _ => None,
        }
    }
}

/// An (AFI, SAFI) pair as carried in capabilities and MP attributes. Only
/// unicast is routed by tapir, but other pairs are kept so they can be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AfiSafi {
    pub afi: u16,
    pub safi: u8,
}

impl AfiSafi {
    pub const IPV4_UNICAST: AfiSafi = AfiSafi { afi: 1, safi: 1 };
    pub const IPV6_UNICAST: AfiSafi = AfiSafi { afi: 2, safi: 1 };

    pub fn unicast(afi: Afi) -> AfiSafi {
        AfiSafi {
            afi: afi.code(),
            safi: 1,
        }
    }

    /// The address family, if this is a unicast family we route.
    pub fn unicast_afi(self) -> Option<Afi> {
        if self.safi == 1 {
            Afi::from_code(self.afi)
        } else {
            None
        }
    }
}

impl std::fmt::Display for AfiSafi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.afi, self.safi) {
            (1, 1) => write!(f, "ipv4-unicast"),
            (2, 1) => write!(f, "ipv6-unicast"),
            (a, s) => write!(f, "afi{a}-safi{s}"),
        }
    }
}

/// A cursor over untrusted bytes: every read checks the length, so a short
/// buffer is an error value, never a panic.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

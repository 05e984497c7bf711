//! IP prefixes as carried in NLRI (RFC 4271 §4.3, RFC 4760 §5).
//!
//! A [`Prefix`] can only hold a valid value: the length is within the family's
//! bounds and the host bits are zero.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::Afi;

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

/// Why a prefix was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// Length longer than the family allows.
    Length(u8),
    /// The NLRI ended inside the prefix bytes.
    Truncated,
    /// Text that is not `ADDRESS/LENGTH`.
    Syntax(String),
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::Length(l) => write!(f, "prefix length {l} is too long"),
            PrefixError::Truncated => write!(f, "prefix truncated"),
            PrefixError::Syntax(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for PrefixError {}

impl Prefix {
    /// Builds a prefix, clearing host bits.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(PrefixError::Length(len));
                }
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Ok(Prefix::V4(Ipv4Addr::from(u32::from(a) & mask), len))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(PrefixError::Length(len));
                }
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                Ok(Prefix::V6(Ipv6Addr::from(u128::from(a) & mask), len))
            }
        }
    }

    pub fn afi(&self) -> Afi {
        match self {
            Prefix::V4(..) => Afi::Ipv4,
            Prefix::V6(..) => Afi::Ipv6,
        }
    }

    pub fn addr(&self) -> IpAddr {
        match *self {
            Prefix::V4(a, _) => IpAddr::V4(a),
            Prefix::V6(a, _) => IpAddr::V6(a),
        }
    }

    pub fn len(&self) -> u8 {
        match *self {
            Prefix::V4(_, l) | Prefix::V6(_, l) => l,
        }
    }

    /// True for the default route (length zero).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of bytes this prefix takes in NLRI encoding.
    pub fn encoded_len(&self) -> usize {
        1 + (self.len() as usize).div_ceil(8)
    }

    /// Appends the NLRI encoding: length in bits, then the significant bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.len();
        out.push(len);
        let n = (len as usize).div_ceil(8);
        match self {
            Prefix::V4(a, _) => out.extend_from_slice(&a.octets()[..n]),
            Prefix::V6(a, _) => out.extend_from_slice(&a.octets()[..n]),
        }
    }

    /// Reads one prefix of the given family from the start of `buf`; returns it
    /// and the bytes consumed. Trailing bits past the length are cleared.
    pub fn decode(afi: Afi, buf: &[u8]) -> Result<(Prefix, usize), PrefixError> {
        let (&len, rest) = buf.split_first().ok_or(PrefixError::Truncated)?;
        let n = (len as usize).div_ceil(8);
        match afi {
            Afi::Ipv4 => {
                if len > 32 {
                    return Err(PrefixError::Length(len));
                }
                let bytes = rest.get(..n).ok_or(PrefixError::Truncated)?;
                let mut o = [0u8; 4];
                o[..n].copy_from_slice(bytes);
                Ok((Prefix::new(IpAddr::V4(o.into()), len)?, 1 + n))
            }
            Afi::Ipv6 => {
                if len > 128 {
                    return Err(PrefixError::Length(len));
                }
                let bytes = rest.get(..n).ok_or(PrefixError::Truncated)?;
                let mut o = [0u8; 16];
                o[..n].copy_from_slice(bytes);
                Ok((Prefix::new(IpAddr::V6(o.into()), len)?, 1 + n))
            }
        }
    }

    /// Decodes a whole NLRI field (a sequence of prefixes of one family).
    pub fn decode_all(afi: Afi, mut buf: &[u8]) -> Result<Vec<Prefix>, PrefixError> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let (p, n) = Prefix::decode(afi, buf)?;
            out.push(p);
            buf = &buf[n..];
        }
        Ok(out)
    }

    /// The host prefix of one address: /32 or /128.
    pub fn host(a: IpAddr) -> Prefix {
        match a {
            IpAddr::V4(a) => Prefix::V4(a, 32),
            IpAddr::V6(a) => Prefix::V6(a, 128),
        }
    }

    /// True if `other` lies inside this prefix (or equals it).
    pub fn contains(&self, other: &Prefix) -> bool {
        match (*self, *other) {
            (Prefix::V4(a, l), Prefix::V4(b, m)) => {
                m >= l && Prefix::new(IpAddr::V4(b), l).map(|p| p.addr()) == Ok(IpAddr::V4(a))
            }
            (Prefix::V6(a, l), Prefix::V6(b, m)) => {
                m >= l && Prefix::new(IpAddr::V6(b), l).map(|p| p.addr()) == Ok(IpAddr::V6(a))
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::V4(a, l) => write!(f, "{a}/{l}"),
            Prefix::V6(a, l) => write!(f, "{a}/{l}"),
        }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `ADDRESS/LENGTH`; a bare address is a host prefix. Host bits must
    /// be zero, so that `10.0.0.1/24` is caught as the typo it usually is.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| PrefixError::Syntax(format!("`{s}` is not an IP prefix")))?;
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| PrefixError::Syntax(format!("`{s}` has a bad prefix length")))?,
            None => match addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
        };
        let p = Prefix::new(addr, len)?;
        if p.addr() != addr {
            return Err(PrefixError::Syntax(format!(
                "`{s}` has host bits set (did you mean {p}?)"
            )));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let p: Prefix = "10.3.0.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "10.3.0.0/24");
        assert_eq!(
            "10.3.0.1".parse::<Prefix>().unwrap().to_string(),
            "10.3.0.1/32"
        );
        assert!("10.3.0.1/24".parse::<Prefix>().is_err());
        assert!("10.3.0.0/33".parse::<Prefix>().is_err());
        assert!("2001:db8::/129".parse::<Prefix>().is_err());
        assert_eq!(
            "2001:db8:3::/48".parse::<Prefix>().unwrap().to_string(),
            "2001:db8:3::/48"
        );
    }

    #[test]
    fn nlri_encoding() {
        let p: Prefix = "10.3.0.0/23".parse().unwrap();
        let mut v = Vec::new();
        p.encode(&mut v);
        assert_eq!(v, [23, 10, 3, 0]);
        assert_eq!(Prefix::decode(Afi::Ipv4, &v).unwrap(), (p, 4));
        // Trailing bits beyond the length are cleared, not rejected.
        assert_eq!(
            Prefix::decode(Afi::Ipv4, &[23, 10, 3, 1]).unwrap().0,
            "10.3.0.0/23".parse().unwrap()
        );
        assert_eq!(
            Prefix::decode(Afi::Ipv4, &[33, 1, 2, 3, 4, 5]),
            Err(PrefixError::Length(33))
        );
        assert_eq!(
            Prefix::decode(Afi::Ipv4, &[24, 1, 2]),
            Err(PrefixError::Truncated)
        );
    }

    #[test]
    fn containment() {
        let p: Prefix = "10.3.0.0/24".parse().unwrap();
        assert!(p.contains(&"10.3.0.1/32".parse().unwrap()));
        assert!(!p.contains(&"10.4.0.1/32".parse().unwrap()));
        assert!(!p.contains(&"10.0.0.0/8".parse().unwrap()));
    }
}

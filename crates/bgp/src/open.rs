//! OPEN (RFC 4271 §4.2), with capabilities (RFC 5492) and extended optional
//! parameters length (RFC 9072).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+
//! |    Version    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     My Autonomous System      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Hold Time           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         BGP Identifier                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Opt Parm Len  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |             Optional Parameters (variable)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::Ipv4Addr;

use crate::capability::Capability;
use crate::notification::{self, Notification};
use crate::{AfiSafi, Reader, AS_TRANS};

/// Optional parameter type for capabilities (RFC 5492 §4).
const PARAM_CAPABILITIES: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet "My Autonomous System" field (AS_TRANS for a 4-octet ASN).
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn` (4-octet capable: the capability is always sent).
    pub fn new(
        asn: u32,
        hold_time: u16,
        bgp_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> Open {
        if !capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
        {
            capabilities.push(Capability::FourOctetAs(asn));
        }
        Open {
            version: 4,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The speaker's ASN: the 4-octet capability if present, else My AS.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(self.my_as as u32)
    }

    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    /// Families announced with the multiprotocol capability; IPv4 unicast
    /// if none (RFC 4760 §8 and RFC 4271 behaviour).
    pub fn families(&self) -> Vec<AfiSafi> {
        let v: Vec<AfiSafi> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        if v.is_empty() {
            vec![AfiSafi::IPV4_UNICAST]
        } else {
            v
        }
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.version);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let mut caps = Vec::new();
        for c in &self.capabilities {
            c.encode(&mut caps);
        }
        if caps.is_empty() {
            out.push(0);
        } else if caps.len() + 2 <= 255 {
            out.push((caps.len() + 2) as u8);
            out.push(PARAM_CAPABILITIES);
            out.push(caps.len() as u8);
            out.extend_from_slice(&caps);
        } else {
            // RFC 9072 §2: non-extended length 255, type 255, then a
            // 2-octet length, and 2-octet parameter lengths.
            out.push(255);
            out.push(255);
            out.extend_from_slice(&((caps.len() + 3) as u16).to_be_bytes());
            out.push(PARAM_CAPABILITIES);
            out.extend_from_slice(&(caps.len() as u16).to_be_bytes());
            out.extend_from_slice(&caps);
        }
    }

    /// Decodes an OPEN body. Every error is the NOTIFICATION to send
    /// (RFC 4271 §6.2); checks that depend on configuration (peer AS,
    /// identifier clash) are the session's.
    pub fn decode_body(body: &[u8]) -> Result<Open, Notification> {
        let open_err = |sub: u8| Notification::new(notification::code::OPEN_MESSAGE, sub);
        let bad_len = || {
            Notification::with_data(
                notification::code::MESSAGE_HEADER,
                notification::header::BAD_MESSAGE_LENGTH,
                ((body.len() + crate::message::HEADER_LEN) as u16).to_be_bytes(),
            )
        };
        let mut r = Reader::new(body);
        let version = r.u8().ok_or_else(bad_len)?;
        let my_as = r.u16().ok_or_else(bad_len)?;
        let hold_time = r.u16().ok_or_else(bad_len)?;
        let bgp_id = Ipv4Addr::from(r.u32().ok_or_else(bad_len)?);
        let opt_len = r.u8().ok_or_else(bad_len)?;
        if version != 4 {
            // The data is the largest version we support (§6.2).
            return Err(Notification::with_data(
                notification::code::OPEN_MESSAGE,
                notification::open::UNSUPPORTED_VERSION,
                4u16.to_be_bytes(),
            ));
        }
        // §6.2: hold time must be zero or at least three seconds.
        if hold_time == 1 || hold_time == 2 {
            return Err(open_err(notification::open::UNACCEPTABLE_HOLD_TIME));
        }
        // §6.2: the identifier must be a valid unicast host address; zero is
        // what implementations refuse in practice.
        if bgp_id.is_unspecified() {
            return Err(open_err(notification::open::BAD_BGP_IDENTIFIER));
        }
        let mut params = r.rest();
        // RFC 9072: extended optional parameters.
        let extended = opt_len == 255 && params.first() == Some(&255);
        let declared = if extended {
            if params.len() < 3 {
                return Err(open_err(0));
            }
            let l = u16::from_be_bytes([params[1], params[2]]) as usize;
            params = &params[3..];
            l
        } else {
            opt_len as usize
        };
        if declared != params.len() {
            return Err(open_err(0));
        }
        let mut capabilities = Vec::new();
        let mut r = Reader::new(params);
        while !r.is_empty() {
            let ptype = r.u8().ok_or_else(|| open_err(0))?;
            let plen = if extended {
                r.u16().ok_or_else(|| open_err(0))? as usize
            } else {
                r.u8().ok_or_else(|| open_err(0))? as usize
            };
            let pval = r.take(plen).ok_or_else(|| open_err(0))?;
            if ptype != PARAM_CAPABILITIES {
                return Err(open_err(notification::open::UNSUPPORTED_OPTIONAL_PARAMETER));
            }
            let mut c = Reader::new(pval);
            while !c.is_empty() {
                let code = c.u8().ok_or_else(|| open_err(0))?;
                let len = c.u8().ok_or_else(|| open_err(0))? as usize;
                let val = c.take(len).ok_or_else(|| open_err(0))?;
                let cap = Capability::decode(code, val).map_err(|m| {
                    // A known capability with a malformed value: tell the
                    // peer which one (code, length, value).
                    let mut data = vec![m.code, m.value.len() as u8];
                    data.extend_from_slice(&m.value);
                    Notification::with_data(notification::code::OPEN_MESSAGE, 0, data)
                })?;
                capabilities.push(cap);
            }
        }
        Ok(Open {
            version,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_round_trip_and_asn() {
        let o = Open::new(
            4_200_000_001,
            90,
            "10.192.21.6".parse().unwrap(),
            vec![
                Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
                Capability::RouteRefresh,
            ],
        );
        assert_eq!(o.my_as, AS_TRANS);
        let mut b = Vec::new();
        o.encode_body(&mut b);
        let d = Open::decode_body(&b).unwrap();
        assert_eq!(d, o);
        assert_eq!(d.asn(), 4_200_000_001);
    }

    #[test]
    fn open_errors() {
        let o = Open::new(64612, 90, "10.0.0.1".parse().unwrap(), vec![]);
        let mut b = Vec::new();
        o.encode_body(&mut b);
        let mut v3 = b.clone();
        v3[0] = 3;
        let e = Open::decode_body(&v3).unwrap_err();
        assert_eq!((e.code, e.subcode, e.data.clone()), (2, 1, vec![0, 4]));
        let mut hold = b.clone();
        hold[3..5].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(Open::decode_body(&hold).unwrap_err().subcode, 6);
        let mut id = b.clone();
        id[5..9].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Open::decode_body(&id).unwrap_err().subcode, 3);
        let mut param = b.clone();
        param[10] = 3; // an optional parameter type other than capabilities
        assert_eq!(Open::decode_body(&param).unwrap_err().subcode, 4);
        assert_eq!(Open::decode_body(&b[..5]).unwrap_err().code, 1);
    }

    #[test]
    fn extended_optional_parameters() {
        let caps: Vec<Capability> = (0..100)
            .map(|i| Capability::Unknown {
                code: 200,
                value: vec![i],
            })
            .collect();
        let o = Open::new(64612, 90, "10.0.0.1".parse().unwrap(), caps);
        let mut b = Vec::new();
        o.encode_body(&mut b);
        assert_eq!(b[9], 255);
        assert_eq!(Open::decode_body(&b).unwrap(), o);
    }
}

//! Capabilities advertised in OPEN (RFC 5492).
//!
//! ```text
//! +------------------------------+
//! | Capability Code (1 octet)    |
//! +------------------------------+
//! | Capability Length (1 octet)  |
//! +------------------------------+
//! | Capability Value (variable)  |
//! +------------------------------+
//! ```
//!
//! Capabilities we do not implement are kept as [`Capability::Unknown`] so
//! that they can be shown to the operator; they are never dropped silently.

use crate::{Afi, AfiSafi, Reader};

pub mod code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// One family's entry in the graceful restart capability (RFC 4724 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GracefulRestartFamily {
    pub family: AfiSafi,
    /// "Forwarding State" bit: forwarding was preserved across the restart.
    pub forwarding_preserved: bool,
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GracefulRestart {
    /// "Restart State" bit: the sender has restarted.
    pub restarting: bool,
    /// "Graceful Notification" bit (RFC 8538).
    pub notification: bool,
    /// Restart time in seconds (12 bits).
    pub restart_time: u16,
    pub families: Vec<GracefulRestartFamily>,
}

/// One entry of the extended next hop capability (RFC 8950 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtendedNextHop {
    pub nlri: AfiSafi,
    pub next_hop_afi: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    /// RFC 4760 §8.
    Multiprotocol(AfiSafi),
    /// RFC 2918.
    RouteRefresh,
    /// RFC 8950.
    ExtendedNextHop(Vec<ExtendedNextHop>),
    /// RFC 4724.
    GracefulRestart(GracefulRestart),
    /// RFC 6793.
    FourOctetAs(u32),
    /// Any other capability, kept as received.
    Unknown { code: u8, value: Vec<u8> },
}

/// A known capability whose value has the wrong shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedCapability {
    pub code: u8,
    pub value: Vec<u8>,
}

impl Capability {
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol(_) => code::MULTIPROTOCOL,
            Capability::RouteRefresh => code::ROUTE_REFRESH,
            Capability::ExtendedNextHop(_) => code::EXTENDED_NEXT_HOP,
            Capability::GracefulRestart(_) => code::GRACEFUL_RESTART,
            Capability::FourOctetAs(_) => code::FOUR_OCTET_AS,
            Capability::Unknown { code, .. } => *code,
        }
    }

    /// Appends code, length and value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut v = Vec::new();
        match self {
            Capability::Multiprotocol(f) => {
                v.extend_from_slice(&f.afi.to_be_bytes());
                v.push(0);
                v.push(f.safi);
            }
            Capability::RouteRefresh => {}
            Capability::ExtendedNextHop(entries) => {
                for e in entries {
                    v.extend_from_slice(&e.nlri.afi.to_be_bytes());
                    v.extend_from_slice(&(e.nlri.safi as u16).to_be_bytes());
                    v.extend_from_slice(&e.next_hop_afi.to_be_bytes());
                }
            }
            Capability::GracefulRestart(gr) => {
                let mut flags_time = gr.restart_time & 0x0fff;
                if gr.restarting {
                    flags_time |= 0x8000;
                }
                if gr.notification {
                    flags_time |= 0x4000;
                }
                v.extend_from_slice(&flags_time.to_be_bytes());
                for f in &gr.families {
                    v.extend_from_slice(&f.family.afi.to_be_bytes());
                    v.push(f.family.safi);
                    v.push(if f.forwarding_preserved { 0x80 } else { 0 });
                }
            }
            Capability::FourOctetAs(asn) => v.extend_from_slice(&asn.to_be_bytes()),
            Capability::Unknown { value, .. } => v.extend_from_slice(value),
        }
        out.push(self.code());
        // Values are bounded by what we build (at most a handful of
        // families); an oversized unknown value is cut rather than
        // wrapping the length octet.
        v.truncate(255);
        out.push(v.len() as u8);
        out.extend_from_slice(&v);
    }

    /// Decodes one capability value.
    pub fn decode(code: u8, value: &[u8]) -> Result<Capability, MalformedCapability> {
        let bad = || MalformedCapability {
            code,
            value: value.to_vec(),
        };
        let mut r = Reader::new(value);
        let cap = match code {
            code::MULTIPROTOCOL => {
                if value.len() != 4 {
                    return Err(bad());
                }
                let afi = r.u16().ok_or_else(bad)?;
                let _reserved = r.u8();
                let safi = r.u8().ok_or_else(bad)?;
                Capability::Multiprotocol(AfiSafi { afi, safi })
            }
            // RFC 2918 §2: the value is empty.
            code::ROUTE_REFRESH if value.is_empty() => Capability::RouteRefresh,
            code::EXTENDED_NEXT_HOP => {
                if value.is_empty() || value.len() % 6 != 0 {
                    return Err(bad());
                }
                let mut entries = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16().ok_or_else(bad)?;
                    let safi = r.u16().ok_or_else(bad)?;
                    let next_hop_afi = r.u16().ok_or_else(bad)?;
                    entries.push(ExtendedNextHop {
                        nlri: AfiSafi {
                            afi,
                            safi: u8::try_from(safi).map_err(|_| bad())?,
                        },
                        next_hop_afi,
                    });
                }
                Capability::ExtendedNextHop(entries)
            }
            code::GRACEFUL_RESTART => {
                if value.len() < 2 || (value.len() - 2) % 4 != 0 {
                    return Err(bad());
                }
                let ft = r.u16().ok_or_else(bad)?;
                let mut families = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16().ok_or_else(bad)?;
                    let safi = r.u8().ok_or_else(bad)?;
                    let flags = r.u8().ok_or_else(bad)?;
                    families.push(GracefulRestartFamily {
                        family: AfiSafi { afi, safi },
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestart {
                    restarting: ft & 0x8000 != 0,
                    notification: ft & 0x4000 != 0,
                    restart_time: ft & 0x0fff,
                    families,
                })
            }
            code::FOUR_OCTET_AS => {
                if value.len() != 4 {
                    return Err(bad());
                }
                Capability::FourOctetAs(r.u32().ok_or_else(bad)?)
            }
            code::ROUTE_REFRESH => return Err(bad()),
            _ => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        };
        Ok(cap)
    }

    /// Short description for `show peer`.
    pub fn describe(&self) -> String {
        match self {
            Capability::Multiprotocol(f) => format!("multiprotocol {f}"),
            Capability::RouteRefresh => "route-refresh".into(),
            Capability::ExtendedNextHop(e) => {
                let parts: Vec<String> = e
                    .iter()
                    .map(|e| {
                        let nh = match Afi::from_code(e.next_hop_afi) {
                            Some(Afi::Ipv4) => "ipv4".to_string(),
                            Some(Afi::Ipv6) => "ipv6".to_string(),
                            None => format!("afi{}", e.next_hop_afi),
                        };
                        format!("{} via {nh}", e.nlri)
                    })
                    .collect();
                format!("extended-next-hop {}", parts.join(", "))
            }
            Capability::GracefulRestart(gr) => format!(
                "graceful-restart time {}s{}{}",
                gr.restart_time,
                if gr.restarting { " restarting" } else { "" },
                gr.families
                    .iter()
                    .map(|f| format!(" {}", f.family))
                    .collect::<String>()
            ),
            Capability::FourOctetAs(a) => format!("4-octet-as {a}"),
            Capability::Unknown { code, value } => {
                // Codes tapir does not use, by their IANA names.
                let name = match code {
                    6 => Some("extended-message"),
                    9 => Some("bgp-role"),
                    69 => Some("add-path"),
                    70 => Some("enhanced-route-refresh"),
                    71 => Some("long-lived-graceful-restart"),
                    73 => Some("fqdn"),
                    _ => None,
                };
                let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                match (name, hex.is_empty()) {
                    (Some(n), true) => n.to_string(),
                    (Some(n), false) => format!("{n} {hex}"),
                    (None, true) => format!("code {code}"),
                    (None, false) => format!("code {code} value {hex}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(c: Capability) {
        let mut v = Vec::new();
        c.encode(&mut v);
        assert_eq!(v[1] as usize, v.len() - 2);
        assert_eq!(Capability::decode(v[0], &v[2..]).unwrap(), c);
    }

    #[test]
    fn capabilities_round_trip() {
        round_trip(Capability::Multiprotocol(AfiSafi::IPV6_UNICAST));
        round_trip(Capability::RouteRefresh);
        round_trip(Capability::FourOctetAs(4_200_000_000));
        round_trip(Capability::ExtendedNextHop(vec![ExtendedNextHop {
            nlri: AfiSafi::IPV4_UNICAST,
            next_hop_afi: 2,
        }]));
        round_trip(Capability::GracefulRestart(GracefulRestart {
            restarting: true,
            notification: false,
            restart_time: 120,
            families: vec![GracefulRestartFamily {
                family: AfiSafi::IPV4_UNICAST,
                forwarding_preserved: true,
            }],
        }));
        round_trip(Capability::Unknown {
            code: 70,
            value: vec![],
        });
    }

    #[test]
    fn malformed_known_capabilities() {
        assert!(Capability::decode(code::MULTIPROTOCOL, &[0, 1, 0]).is_err());
        assert!(Capability::decode(code::FOUR_OCTET_AS, &[0, 1]).is_err());
        assert!(Capability::decode(code::ROUTE_REFRESH, &[1]).is_err());
        assert!(Capability::decode(code::GRACEFUL_RESTART, &[0, 120, 0]).is_err());
        assert!(Capability::decode(code::EXTENDED_NEXT_HOP, &[0, 1, 0, 1, 0]).is_err());
    }
}

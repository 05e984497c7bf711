//! BMP messages (RFC 7854 §4), as tapir sends them to a collector.
//!
//! Pure encoding: every function returns one whole message, common header
//! included. The BGP PDUs inside (OPENs, UPDATEs, NOTIFICATIONs) come
//! encoded already.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

/// BMP version 3 (RFC 7854 §4.1).
const VERSION: u8 = 3;

/// Message types (RFC 7854 §4.1).
mod kind {
    pub const ROUTE_MONITORING: u8 = 0;
    pub const STATISTICS: u8 = 1;
    pub const PEER_DOWN: u8 = 2;
    pub const PEER_UP: u8 = 3;
    pub const INITIATION: u8 = 4;
    pub const TERMINATION: u8 = 5;
}

/// Per-peer header flags (RFC 7854 §4.2).
const FLAG_V6: u8 = 0x80;
const FLAG_POST_POLICY: u8 = 0x40;
const FLAG_TWO_OCTET_AS: u8 = 0x20;

/// Who a per-peer message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub asn: u32,
    pub bgp_id: Ipv4Addr,
    /// The UPDATEs carried use 2-octet AS numbers (the session did not
    /// negotiate RFC 6793).
    pub two_octet_as: bool,
    /// A link-local peer is one per tap (every VM may use `fe80::1`): it
    /// goes as a Local Instance Peer (type 2) with its interface index as
    /// the distinguisher, so that two VMs never look like one.
    pub distinguisher: Option<u64>,
}

/// Which Adj-RIB-In a Route Monitoring message shows (RFC 7854 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// As the peer sent it, refused routes included.
    Pre,
    /// What was accepted.
    Post,
}

/// Why a session went down, in Peer Down's terms (RFC 7854 §4.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Down {
    /// We closed it with this NOTIFICATION (whole message).
    LocalNotification(Vec<u8>),
    /// We closed it without a NOTIFICATION (tapir restarts gracefully).
    LocalNoNotification,
    /// The peer closed it with this NOTIFICATION (whole message).
    RemoteNotification(Vec<u8>),
    /// The connection closed without a NOTIFICATION.
    RemoteNoNotification,
}

/// Statistics types (RFC 7854 §4.8 and IANA's registry). tapir reports
/// its refusal reasons in the experimental range, grouped.
pub mod stat {
    /// Prefixes refused, every reason (32-bit counter).
    pub const REJECTED: u16 = 0;
    /// Routes in the peer's Adj-RIB-In, refused ones included (gauge).
    pub const ADJ_RIB_IN: u16 = 7;
    /// Routes accepted into the Loc-RIB (gauge).
    pub const LOC_RIB: u16 = 8;
    /// Refused: not the VM's to announce (inventory, group filter).
    pub const NOT_AUTHORISED: u16 = 65531;
    /// Refused: the next hop is not the VM's, or the route covers a
    /// neighbor.
    pub const NEXT_HOP: u16 = 65532;
    /// Refused: over max-prefixes.
    pub const MAX_PREFIXES: u16 = 65533;
    /// Refused: the AS path (length, AS 0, confederation, our own AS,
    /// empty, first AS).
    pub const AS_PATH: u16 = 65534;
}

/// One statistic: 32-bit counters for types 0–6 and for tapir's own
/// (experimental) refusal counters, 64-bit gauges for the rest (RFC 7854
/// §4.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: u16,
    pub value: u64,
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + body.len());
    out.push(VERSION);
    out.extend_from_slice(&((6 + body.len()) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// 16 bytes: an IPv4 address in the last 4, after 12 zero bytes.
fn address16(a: IpAddr, out: &mut Vec<u8>) {
    match a {
        IpAddr::V4(v4) => {
            out.extend_from_slice(&[0; 12]);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

fn per_peer(p: &Peer, post: bool, time: SystemTime, out: &mut Vec<u8>) {
    // Global Instance Peer, or Local Instance Peer with a distinguisher.
    out.push(if p.distinguisher.is_some() { 2 } else { 0 });
    let mut flags = 0;
    if p.address.to_canonical().is_ipv6() {
        flags |= FLAG_V6;
    }
    if post {
        flags |= FLAG_POST_POLICY;
    }
    if p.two_octet_as {
        flags |= FLAG_TWO_OCTET_AS;
    }
    out.push(flags);
    out.extend_from_slice(&p.distinguisher.unwrap_or(0).to_be_bytes());
    address16(p.address.to_canonical(), out);
    out.extend_from_slice(&p.asn.to_be_bytes());
    out.extend_from_slice(&p.bgp_id.octets());
    let t = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    out.extend_from_slice(&(t.as_secs() as u32).to_be_bytes());
    out.extend_from_slice(&t.subsec_micros().to_be_bytes());
}

fn tlv(kind: u16, value: &[u8], out: &mut Vec<u8>) {
    let value = &value[..value.len().min(u16::MAX as usize)];
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// Route Monitoring: one UPDATE (whole message) of the peer's pre- or
/// post-policy Adj-RIB-In.
pub fn route_monitoring(p: &Peer, policy: Policy, update: &[u8], time: SystemTime) -> Vec<u8> {
    let mut body = Vec::with_capacity(42 + update.len());
    per_peer(p, policy == Policy::Post, time, &mut body);
    body.extend_from_slice(update);
    message(kind::ROUTE_MONITORING, &body)
}

/// The two ends of a session's TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub local: std::net::SocketAddr,
    pub remote_port: u16,
}

/// Peer Up: the connection's ends, the OPEN we sent and the one we
/// received (whole messages), and `info` as an Information string.
pub fn peer_up(
    p: &Peer,
    ends: Ends,
    sent_open: &[u8],
    received_open: &[u8],
    info: &str,
    time: SystemTime,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(100 + sent_open.len() + received_open.len());
    per_peer(p, false, time, &mut body);
    address16(ends.local.ip().to_canonical(), &mut body);
    body.extend_from_slice(&ends.local.port().to_be_bytes());
    body.extend_from_slice(&ends.remote_port.to_be_bytes());
    body.extend_from_slice(sent_open);
    body.extend_from_slice(received_open);
    if !info.is_empty() {
        tlv(0, info.as_bytes(), &mut body);
    }
    message(kind::PEER_UP, &body)
}

/// Peer Down, with its reason and the NOTIFICATION if there was one.
pub fn peer_down(p: &Peer, why: &Down, time: SystemTime) -> Vec<u8> {
    let mut body = Vec::new();
    per_peer(p, false, time, &mut body);
    match why {
        Down::LocalNotification(n) => {
            body.push(1);
            body.extend_from_slice(n);
        }
        Down::LocalNoNotification => {
            // No FSM event applies (a stop of tapir itself): code 0.
            body.push(2);
            body.extend_from_slice(&0u16.to_be_bytes());
        }
        Down::RemoteNotification(n) => {
            body.push(3);
            body.extend_from_slice(n);
        }
        Down::RemoteNoNotification => body.push(4),
    }
    message(kind::PEER_DOWN, &body)
}

/// Statistics Report.
pub fn statistics(p: &Peer, stats: &[Stat], time: SystemTime) -> Vec<u8> {
    let mut body = Vec::new();
    per_peer(p, false, time, &mut body);
    body.extend_from_slice(&(stats.len() as u32).to_be_bytes());
    for s in stats {
        body.extend_from_slice(&s.kind.to_be_bytes());
        if s.kind <= 6 || s.kind >= stat::NOT_AUTHORISED {
            // A counter wraps (RFC 7854 §4.8: "32-bit Counter").
            body.extend_from_slice(&4u16.to_be_bytes());
            body.extend_from_slice(&(s.value as u32).to_be_bytes());
        } else {
            body.extend_from_slice(&8u16.to_be_bytes());
            body.extend_from_slice(&s.value.to_be_bytes());
        }
    }
    message(kind::STATISTICS, &body)
}

/// Initiation: sysDescr and sysName (RFC 7854 §4.3 requires both).
pub fn initiation(sys_name: &str, sys_descr: &str) -> Vec<u8> {
    let mut body = Vec::new();
    tlv(1, sys_descr.as_bytes(), &mut body);
    tlv(2, sys_name.as_bytes(), &mut body);
    message(kind::INITIATION, &body)
}

/// Termination, administratively closed (reason 0), with a string.
pub fn termination(text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    tlv(0, text.as_bytes(), &mut body);
    tlv(1, &0u16.to_be_bytes(), &mut body);
    message(kind::TERMINATION, &body)
}

#[cfg(test)]
mod tests {
    //! bgpkit-parser (which we did not write) reads what we encode.
    use super::*;
    use bgpkit_parser::parser::bmp::messages::{
        BmpMessageBody, BmpMsgType, PeerFlags, PerPeerFlags,
    };
    use bgpkit_parser::parser::bmp::parse_bmp_msg;

    fn parse(b: &[u8]) -> bgpkit_parser::parser::bmp::messages::BmpMessage {
        let mut bytes = bytes::Bytes::copy_from_slice(b);
        let m = parse_bmp_msg(&mut bytes).expect("bgpkit-parser reads the message");
        assert!(bytes.is_empty(), "{} bytes left over", bytes.len());
        m
    }

    fn vm11() -> Peer {
        Peer {
            address: "10.192.24.11".parse().unwrap(),
            asn: 64650,
            bgp_id: "10.192.24.11".parse().unwrap(),
            two_octet_as: false,
            distinguisher: None,
        }
    }

    fn open(asn: u32, id: &str) -> Vec<u8> {
        let o = bgp::Open::new(
            asn.min(65535) as u16 as u32,
            90,
            id.parse().unwrap(),
            vec![bgp::capability::Capability::FourOctetAs(asn)],
        );
        bgp::Message::Open(o).encode(&bgp::Context::default())
    }

    fn update_10_3_0_1() -> Vec<u8> {
        let attrs = bgp::PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(bgp::AsPath {
                segments: vec![bgp::AsSegment::Sequence(vec![64650])],
            }),
            ..Default::default()
        };
        let nh = bgp::NextHop::V4("10.192.24.11".parse().unwrap());
        let p: bgp::Prefix = "10.3.0.1/32".parse().unwrap();
        bgp::update::encode_announce(&attrs, nh, &[p], &bgp::Context::modern()).remove(0)
    }

    #[test]
    fn route_monitoring_carries_the_peer_and_the_prefix() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        for policy in [Policy::Pre, Policy::Post] {
            let m = parse(&route_monitoring(&vm11(), policy, &update_10_3_0_1(), t));
            assert_eq!(m.common_header.msg_type, BmpMsgType::RouteMonitoring);
            let h = m.per_peer_header.unwrap();
            assert_eq!(h.peer_ip, "10.192.24.11".parse::<IpAddr>().unwrap());
            assert_eq!(h.peer_asn.to_u32(), 64650);
            assert_eq!(h.timestamp, 1_700_000_000.123456);
            let PerPeerFlags::PeerFlags(flags) = h.peer_flags else {
                panic!("not an RFC 7854 peer")
            };
            let post = flags.contains(PeerFlags::IS_POST_POLICY);
            assert_eq!(post, policy == Policy::Post);
            let BmpMessageBody::RouteMonitoring(rm) = m.message_body else {
                panic!("not Route Monitoring")
            };
            let e = format!("{:?}", rm.bgp_message);
            assert!(e.contains("10.3.0.1/32"), "{e}");
        }
    }

    #[test]
    fn peer_up_and_down_carry_the_opens_and_the_reason() {
        let ends = Ends {
            local: "10.192.24.1:179".parse().unwrap(),
            remote_port: 40123,
        };
        let sent = open(64612, "10.192.0.1");
        let got = open(64650, "10.192.24.11");
        let t = SystemTime::now();
        let m = parse(&peer_up(&vm11(), ends, &sent, &got, "vm11 tap11", t));
        let BmpMessageBody::PeerUpNotification(up) = m.message_body else {
            panic!("not Peer Up")
        };
        assert_eq!(up.local_addr, "10.192.24.1".parse::<IpAddr>().unwrap());
        assert_eq!((up.local_port, up.remote_port), (179, 40123));
        let e = format!("{:?} {:?}", up.sent_open, up.received_open);
        assert!(
            e.contains("10.192.0.1") && e.contains("10.192.24.11"),
            "{e}"
        );
        assert!(format!("{:?}", up.tlvs).contains("vm11 tap11"));

        let cease = bgp::Message::Notification(bgp::Notification::new(6, 2))
            .encode(&bgp::Context::default());
        for (why, code) in [
            (Down::LocalNotification(cease.clone()), 1),
            (Down::LocalNoNotification, 2),
            (Down::RemoteNotification(cease), 3),
            (Down::RemoteNoNotification, 4),
        ] {
            let m = parse(&peer_down(&vm11(), &why, t));
            let BmpMessageBody::PeerDownNotification(d) = m.message_body else {
                panic!("not Peer Down")
            };
            assert_eq!(d.reason as u8, code, "{why:?}");
        }
    }

    #[test]
    fn statistics_initiation_and_termination() {
        let v6 = Peer {
            address: "fe80::11".parse().unwrap(),
            distinguisher: Some(12),
            ..vm11()
        };
        let stats = [
            Stat {
                kind: stat::REJECTED,
                value: 3,
            },
            Stat {
                kind: stat::ADJ_RIB_IN,
                value: 5,
            },
            Stat {
                kind: stat::NOT_AUTHORISED,
                value: 2,
            },
        ];
        let m = parse(&statistics(&v6, &stats, SystemTime::now()));
        let h = m.per_peer_header.unwrap();
        assert_eq!(h.peer_ip, "fe80::11".parse::<IpAddr>().unwrap());
        assert_eq!(
            h.peer_type,
            bgpkit_parser::parser::bmp::messages::BmpPeerType::Local
        );
        assert_eq!(h.peer_distinguisher, 12);
        let PerPeerFlags::PeerFlags(flags) = h.peer_flags else {
            panic!("not an RFC 7854 peer")
        };
        assert!(flags.contains(PeerFlags::ADDRESS_FAMILY_IPV6));
        let BmpMessageBody::StatsReport(s) = m.message_body else {
            panic!("not Statistics")
        };
        assert_eq!(s.stats_count, 3);
        let e = format!("{:?}", s.counters);
        assert!(e.contains('3') && e.contains('5'), "{e}");

        let m = parse(&initiation("hv1", "tapir 0.1"));
        let BmpMessageBody::InitiationMessage(i) = m.message_body else {
            panic!("not Initiation")
        };
        let e = format!("{:?}", i.tlvs);
        assert!(e.contains("hv1") && e.contains("tapir 0.1"), "{e}");
        let m = parse(&termination("tapir stops"));
        assert_eq!(m.common_header.msg_type, BmpMsgType::TerminationMessage);
    }
}

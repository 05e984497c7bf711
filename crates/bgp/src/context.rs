//! What was negotiated in the OPEN exchange, which decoding and encoding of
//! UPDATEs depend on (one context for encoding and decoding).

use crate::AfiSafi;

/// The negotiated context of one session. The default is what holds before
/// any capability is known: 2-octet ASNs, IPv4 unicast only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// Both sides sent the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
    /// Families both sides announced (RFC 4760); IPv4 unicast is implied
    /// when neither side sent any multiprotocol capability.
    pub families: Vec<AfiSafi>,
    /// IPv4 unicast NLRI may carry an IPv6 next hop (RFC 8950), because both
    /// sides announced it.
    pub ipv4_over_ipv6_next_hop: bool,
    /// Largest message allowed (4096, RFC 4271 §4.1).
    pub max_message_len: usize,
    /// The peer is in another AS: LOCAL_PREF from it is discarded, even
    /// malformed (RFC 4271 §5.1.5, RFC 7606 §7.5).
    pub external: bool,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            four_octet_as: false,
            families: vec![AfiSafi::IPV4_UNICAST],
            ipv4_over_ipv6_next_hop: false,
            max_message_len: crate::message::MAX_MESSAGE_LEN,
            external: false,
        }
    }
}

impl Context {
    /// A context with 4-octet ASNs and both unicast families, as negotiated
    /// with every modern peer; handy in tests.
    pub fn modern() -> Self {
        Context {
            four_octet_as: true,
            families: vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
            ipv4_over_ipv6_next_hop: false,
            max_message_len: crate::message::MAX_MESSAGE_LEN,
            external: false,
        }
    }

    pub fn has_family(&self, f: AfiSafi) -> bool {
        self.families.contains(&f)
    }
}

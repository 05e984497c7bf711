//! Addresses and interfaces: what the rest of the daemon asks of the
//! host's network, in plain types. A leaf: it imports nothing of tapir.

use std::net::Ipv6Addr;

/// An interface a session is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// An IPv6 link-local address (fe80::/10).
pub fn is_link_local(a: std::net::Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// A global, usable IPv6 address on an interface, from
/// `/proc/net/if_inet6` (address, index, prefix length, scope, flags).
pub fn global_address(index: u32) -> Option<Ipv6Addr> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    parse_if_inet6(&text, index)
}

fn parse_if_inet6(text: &str, index: u32) -> Option<Ipv6Addr> {
    // IFA_F_TENTATIVE, IFA_F_DEPRECATED, IFA_F_DADFAILED, and
    // IFA_F_TEMPORARY (privacy addresses: not the VM's known address).
    const UNUSABLE: u32 = 0x40 | 0x20 | 0x08 | 0x01;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 {
            return None;
        }
        let idx = u32::from_str_radix(f[1], 16).ok()?;
        let scope = u32::from_str_radix(f[3], 16).ok()?;
        let flags = u32::from_str_radix(f[4], 16).ok()?;
        if idx != index || scope != 0 || flags & UNUSABLE != 0 || f[0].len() != 32 {
            return None;
        }
        let n = u128::from_str_radix(f[0], 16).ok()?;
        Some(Ipv6Addr::from(n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_address_from_proc() {
        let text = "\
fe802022ffff00000000000000000001 03 40 20 80     eth0
20010db8014000000000000000000011 03 80 00 80     eth0
20010db8014000000000000000000099 03 80 00 20     eth0
20010db8000300000000000000000001 01 80 00 80       lo
00000000000000000000000000000001 01 80 10 80       lo
";
        assert_eq!(
            parse_if_inet6(text, 3),
            Some("2001:db8:140::11".parse().unwrap())
        );
        assert_eq!(
            parse_if_inet6(text, 1),
            Some("2001:db8:3::1".parse().unwrap())
        );
        assert_eq!(parse_if_inet6(text, 7), None);
        // Deprecated addresses are skipped.
        let only_deprecated = "20010db8014000000000000000000099 03 80 00 20 eth0\n";
        assert_eq!(parse_if_inet6(only_deprecated, 3), None);
    }
}

//! The one module with `unsafe`: socket options that neither std,
//! socket2 nor nix wrap: TCP-MD5 (RFC 2385, Linux `TCP_MD5SIG` and
//! `TCP_MD5SIG_EXT`) and GTSM's minimum TTL (RFC 5082, `IP_MINTTL`,
//! `IPV6_MINHOPCOUNT`). Everything unsafe is a `setsockopt` call on a
//! descriptor the caller owns, with a buffer built here.

#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

pub use crate::northbound::config::{AoKey, MAX_KEY_LEN};

/// `struct tcp_md5sig` of linux/tcp.h.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

const TCP_MD5SIG: libc::c_int = 14;
const TCP_MD5SIG_EXT: libc::c_int = 32;
const TCP_MD5SIG_FLAG_PREFIX: u8 = 1;

/// Sets (or, with an empty key, removes) the TCP-MD5 key for connections
/// with `peer`, or with every address in `peer/prefix_len`.
///
/// `ipv6_socket`: the socket is AF_INET6 (a dual-stack listener), so IPv4
/// peers are given as IPv4-mapped addresses; the kernel files them as
/// IPv4 keys.
pub fn set_tcp_md5(
    sock: &impl AsFd,
    ipv6_socket: bool,
    peer: IpAddr,
    prefix_len: Option<u8>,
    key: &[u8],
) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a TCP-MD5 key has at most {MAX_KEY_LEN} bytes"),
        ));
    }
    let (storage, _) = sockaddr(ipv6_socket, peer);
    let mut sig = TcpMd5Sig {
        addr: storage,
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    let opt = match prefix_len {
        Some(len) => {
            sig.flags = TCP_MD5SIG_FLAG_PREFIX;
            sig.prefixlen = len;
            TCP_MD5SIG_EXT
        }
        None => TCP_MD5SIG,
    };
    setsockopt(sock, libc::IPPROTO_TCP, opt, &sig)
}

/// `struct tcp_ao_add` of linux/tcp.h (Linux 6.7 and later).
#[repr(C, align(8))]
struct TcpAoAdd {
    addr: libc::sockaddr_storage,
    alg_name: [u8; 64],
    ifindex: i32,
    /// Bit 0: set_current, bit 1: set_rnext.
    flags: u32,
    reserved2: u16,
    prefix: u8,
    sndid: u8,
    rcvid: u8,
    maclen: u8,
    keyflags: u8,
    keylen: u8,
    key: [u8; MAX_KEY_LEN],
}

const TCP_AO_ADD_KEY: libc::c_int = 38;

/// Adds a TCP-AO key for connections with `peer` (or every address in
/// `peer/prefix_len`). On a socket about to connect it becomes the current
/// key; a listening socket has no current key (the kernel refuses one), so
/// `listening` leaves that out. Needs Linux 6.7 or later with
/// CONFIG_TCP_AO; older kernels answer ENOPROTOOPT.
pub fn add_tcp_ao(
    sock: &impl AsFd,
    ipv6_socket: bool,
    peer: IpAddr,
    prefix_len: Option<u8>,
    k: &AoKey,
    listening: bool,
) -> io::Result<()> {
    if k.key.is_empty() || k.key.len() > MAX_KEY_LEN || k.algorithm.len() >= 64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a TCP-AO key has 1 to 80 bytes, an algorithm name under 64",
        ));
    }
    let (storage, full) = sockaddr(ipv6_socket, peer);
    let mut add = TcpAoAdd {
        addr: storage,
        alg_name: [0; 64],
        ifindex: 0,
        // set_current and set_rnext, the two lowest bits of the C
        // bitfield on the little-endian machines Linux/tapir target.
        flags: if listening { 0 } else { 0b11 },
        reserved2: 0,
        prefix: prefix_len.unwrap_or(full),
        sndid: k.send_id,
        rcvid: k.recv_id,
        maclen: k.mac_len,
        keyflags: 0,
        keylen: k.key.len() as u8,
        key: [0; MAX_KEY_LEN],
    };
    add.alg_name[..k.algorithm.len()].copy_from_slice(k.algorithm.as_bytes());
    add.key[..k.key.len()].copy_from_slice(&k.key);
    setsockopt(sock, libc::IPPROTO_TCP, TCP_AO_ADD_KEY, &add).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            io::Error::new(
                e.kind(),
                "this kernel has no TCP-AO (Linux 6.7 or later, CONFIG_TCP_AO)",
            )
        } else {
            e
        }
    })
}

/// `setsockopt(2)` with `value` as the option's bytes.
fn setsockopt<T>(
    sock: &impl AsFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised `T` for the whole call, and
    // exactly its size is passed, so the kernel reads only its bytes. The
    // descriptor is borrowed from a live socket.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The peer's address as the kernel takes it, and its full prefix length
/// (IPv4 addresses on an IPv6 socket are mapped, their length still 32).
fn sockaddr(ipv6_socket: bool, peer: IpAddr) -> (libc::sockaddr_storage, u8) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid
    // (AF_UNSPEC) value, overwritten below.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let (v6, full) = match peer {
        IpAddr::V4(a) if ipv6_socket => (Some(a.to_ipv6_mapped()), 32),
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in; this writes one value at its start.
            unsafe {
                std::ptr::write(
                    std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            (None, 32)
        }
        IpAddr::V6(a) => (Some(a), 128),
    };
    if let Some(a) = v6 {
        let sin6 = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: a.octets(),
            },
            sin6_scope_id: 0,
        };
        // SAFETY: as above, for sockaddr_in6.
        unsafe {
            std::ptr::write(
                std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in6>(),
                sin6,
            )
        };
    }
    (storage, full)
}

const IP_MINTTL: libc::c_int = 21;
const IPV6_MINHOPCOUNT: libc::c_int = 73;

/// GTSM (RFC 5082): packets that arrive with a TTL (hop limit) below
/// `min` are dropped by the kernel. For an IPv6 socket that also carries
/// IPv4 (mapped), both options are set.
pub fn set_min_ttl(sock: &impl AsFd, ipv6_socket: bool, min: u8) -> io::Result<()> {
    let v = libc::c_int::from(min);
    if ipv6_socket {
        setsockopt(sock, libc::IPPROTO_IPV6, IPV6_MINHOPCOUNT, &v)?;
    }
    setsockopt(sock, libc::IPPROTO_IP, IP_MINTTL, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_struct_has_the_kernels_layout() {
        // 128 (sockaddr_storage) + 1 + 1 + 2 + 4 + 80.
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn the_ao_struct_has_the_kernels_layout() {
        // 128 + 64 + 4 + 4 + 2 + 6 + 80, aligned to 8.
        assert_eq!(std::mem::size_of::<TcpAoAdd>(), 288);
    }

    #[test]
    fn ao_keys_go_on_sockets() {
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let k = AoKey {
            key: b"secret".to_vec(),
            algorithm: "hmac(sha1)".into(),
            send_id: 1,
            recv_id: 1,
            mac_len: 12,
        };
        match add_tcp_ao(&v6, true, "10.0.0.0".parse().unwrap(), Some(24), &k, true) {
            Ok(()) => {
                let bad = AoKey {
                    algorithm: "no-such-hash".into(),
                    send_id: 2,
                    recv_id: 2,
                    ..k
                };
                let r = add_tcp_ao(&v6, true, "10.0.1.0".parse().unwrap(), Some(24), &bad, true);
                assert!(r.is_err());
            }
            // A kernel without TCP-AO: the error says so.
            Err(e) => assert!(e.to_string().contains("CONFIG_TCP_AO"), "{e}"),
        }
    }

    #[test]
    fn keys_go_on_sockets_and_long_ones_are_refused() {
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        set_tcp_md5(&v6, true, "10.0.0.1".parse().unwrap(), None, b"secret").unwrap();
        set_tcp_md5(&v6, true, "10.0.0.0".parse().unwrap(), Some(24), b"secret").unwrap();
        set_tcp_md5(
            &v6,
            true,
            "2001:db8::".parse().unwrap(),
            Some(64),
            b"secret",
        )
        .unwrap();
        // Removing a key that exists.
        set_tcp_md5(&v6, true, "10.0.0.1".parse().unwrap(), None, b"").unwrap();
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_tcp_md5(&v4, false, "10.0.0.1".parse().unwrap(), None, b"secret").unwrap();
        set_min_ttl(&v6, true, 255).unwrap();
        set_min_ttl(&v4, false, 255).unwrap();
        let long = [b'x'; MAX_KEY_LEN + 1];
        assert!(set_tcp_md5(&v4, false, "10.0.0.1".parse().unwrap(), None, &long).is_err());
    }
}

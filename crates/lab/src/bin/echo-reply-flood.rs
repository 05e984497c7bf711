//! Sends ICMPv6 echo replies that answer nothing, from made-up link-local
//! addresses, as a hostile VM would to a hypervisor that probes its taps:
//! `echo-reply-flood IFACE TO COUNT [PER_SECOND]`. Reply N comes from fe80::dead:N
//! (split over the last two groups) with tapir's probe identifier and
//! sequence number N, so every sequence number is tried.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::process::ExitCode;

use socket2::{Domain, Protocol, Socket, Type};

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 3 && a.len() != 4 {
        eprintln!("usage: echo-reply-flood IFACE TO COUNT [PER_SECOND]");
        return ExitCode::FAILURE;
    }
    let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", a[0]))
        .expect("interface index")
        .trim()
        .parse()
        .expect("interface index");
    let to: Ipv6Addr = a[1].parse().expect("TO");
    let count: u32 = a[2].parse().expect("COUNT");
    let rate: u32 = a
        .get(3)
        .map_or(u32::MAX, |r| r.parse().expect("PER_SECOND"));
    let to = SocketAddr::V6(SocketAddrV6::new(to, 0, 0, index));
    let start = std::time::Instant::now();
    let mut sent = 0u32;
    for n in 0..count {
        // Paced: reply N goes no sooner than N / PER_SECOND seconds in.
        if rate != u32::MAX && n % 100 == 0 {
            let due = std::time::Duration::from_secs_f64(f64::from(n) / f64::from(rate));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).expect("raw socket");
        // An address this namespace does not have.
        s.set_freebind_v6(true).expect("freebind");
        let from = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xdead, (n >> 16) as u16, n as u16);
        s.bind(&SocketAddr::V6(SocketAddrV6::new(from, 0, 0, index)).into())
            .expect("bind");
        let [s0, s1] = (n as u16).to_be_bytes();
        // Echo reply, checksum by the kernel, identifier "tp", sequence.
        let pkt = [129u8, 0, 0, 0, 0x74, 0x70, s0, s1];
        if s.send_to(&pkt, &to.into()).is_ok() {
            sent += 1;
        }
    }
    println!("{sent}");
    ExitCode::SUCCESS
}

//! Sends one BFD control packet, for tests of what tapir accepts:
//! `bfd-send FROM TO TTL MY_DISCR YOUR_DISCR STATE [PORT]` (STATE 0-3:
//! AdminDown, Down, Init, Up). The packet goes from FROM:49999 to TO:PORT
//! (3784 unless given).

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 6 && a.len() != 7 {
        eprintln!("usage: bfd-send FROM TO TTL MY_DISCR YOUR_DISCR STATE [PORT]");
        return ExitCode::FAILURE;
    }
    let parse = |i: usize| {
        a[i].parse::<u32>()
            .unwrap_or_else(|_| panic!("bad number {}", a[i]))
    };
    let from: std::net::IpAddr = a[0].parse().expect("FROM");
    let to: std::net::IpAddr = a[1].parse().expect("TO");
    let mut p = vec![0x20u8, (parse(5) as u8 & 3) << 6, 3, 24];
    for w in [parse(3), parse(4), 1_000_000, 1_000_000, 0] {
        p.extend_from_slice(&w.to_be_bytes());
    }
    let s = UdpSocket::bind(SocketAddr::new(from, 49999)).expect("bind");
    s.set_ttl(parse(2)).expect("ttl");
    let port = a.get(6).map_or(3784, |p| p.parse().expect("PORT"));
    s.send_to(&p, SocketAddr::new(to, port)).expect("send");
    ExitCode::SUCCESS
}

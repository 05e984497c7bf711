//! `dns-answer ADDR:PORT NAME IPV4`: a one-name DNS server for the lab's
//! health checks. A query for NAME, type A, gets one A record with IPV4;
//! any other name gets NXDOMAIN. Runs until killed.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, name, answer] = args.as_slice() else {
        eprintln!("usage: dns-answer ADDR:PORT NAME IPV4");
        return ExitCode::FAILURE;
    };
    let Ok(answer) = answer.parse::<Ipv4Addr>() else {
        eprintln!("dns-answer: {answer} is not an IPv4 address");
        return ExitCode::FAILURE;
    };
    let sock = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dns-answer: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The name in wire format, to compare with the question.
    let mut wire = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let q = &buf[..n];
        // Header, then one question: the name, type and class.
        if n < 12 + wire.len() + 4 || q[2] & 0x80 != 0 {
            continue;
        }
        let qname = &q[12..12 + wire.len()];
        let qtype = &q[12 + wire.len()..12 + wire.len() + 2];
        let end = 12 + wire.len() + 4;
        let mut r = q[..end].to_vec();
        r[2] = 0x81; // response, recursion desired
        r[3] = 0x80; // recursion available, NOERROR
        r[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        if qname.eq_ignore_ascii_case(&wire) && qtype == [0, 1] {
            r[7] = 1;
            // The answer: a pointer to the question's name, A, IN, TTL 60.
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&answer.octets());
        } else {
            r[3] |= 3; // NXDOMAIN
        }
        let _ = sock.send_to(&r, from);
    }
}

//! A BGP speaker that sends exactly the bytes it is told to: for tests of
//! what tapir does with malformed or unexpected input.
//!
//! ```text
//! bgp-raw-peer --connect ADDR:PORT [--as N] [--id A.B.C.D]
//!              [--open-hex HEX] [--send HEX]… [--pause-ms N] [--linger-ms N]
//!              [--repeat N] [--no-read]
//! ```
//!
//! `--repeat N` sends the `--send` list N times; `--no-read` stops reading
//! once the session is up (a peer that never reads what it asked for).
//!
//! It connects, sends an OPEN (ours, or `--open-hex` verbatim), answers the
//! peer's OPEN with a KEEPALIVE, and once the session is up sends each
//! `--send` message in turn. Every message it receives is printed on a line
//! (`OPEN`, `KEEPALIVE`, `UPDATE`, `NOTIFICATION CODE SUBCODE DATAHEX`), then
//! `CLOSED` when the peer closes or `LINGER` when the time is up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bgp::capability::Capability;
use bgp::{AfiSafi, Context, Message, Open};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn main() {
    let mut connect: Option<SocketAddr> = None;
    let mut asn = 65099u32;
    let mut id = "10.192.21.99".to_string();
    let mut open_hex: Option<Vec<u8>> = None;
    let mut sends: Vec<Vec<u8>> = Vec::new();
    let mut pause = Duration::from_millis(200);
    let mut linger = Duration::from_secs(3);
    let mut repeat = 1usize;
    let mut no_read = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--connect" => connect = Some(v().parse().expect("--connect ADDR:PORT")),
            "--as" => asn = v().parse().expect("--as N"),
            "--id" => id = v(),
            "--open-hex" => open_hex = Some(hex(&v())),
            "--send" => sends.push(hex(&v())),
            "--pause-ms" => pause = Duration::from_millis(v().parse().expect("ms")),
            "--linger-ms" => linger = Duration::from_millis(v().parse().expect("ms")),
            "--repeat" => repeat = v().parse().expect("--repeat N"),
            "--no-read" => no_read = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let addr = connect.expect("--connect is required");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let cxt = Context::modern();
    let open = open_hex.unwrap_or_else(|| {
        Message::Open(Open::new(
            asn,
            90,
            id.parse().expect("--id"),
            vec![Capability::Multiprotocol(AfiSafi::IPV4_UNICAST)],
        ))
        .encode(&cxt)
    });
    s.write_all(&open).unwrap();
    let mut buf = Vec::new();
    let mut established = false;
    let mut left = sends.len() * repeat;
    let mut pending = sends.into_iter().cycle();
    let mut next_send = Instant::now();
    let deadline = Instant::now() + linger;
    loop {
        let mut chunk = [0u8; 4096];
        let read = if no_read && established {
            Err(std::io::Error::from(std::io::ErrorKind::WouldBlock))
        } else {
            s.read(&mut chunk)
        };
        match read {
            Ok(0) => {
                println!("CLOSED");
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                println!("CLOSED");
                return;
            }
        }
        while let Ok(Some((m, used))) = Message::decode(&buf, &cxt) {
            buf.drain(..used);
            match &m {
                Message::Notification(n) => {
                    let data: String = n.data.iter().map(|b| format!("{b:02x}")).collect();
                    println!("NOTIFICATION {} {} {data}", n.code, n.subcode);
                }
                other => println!("{}", other.name()),
            }
            match m {
                Message::Open(_) => s.write_all(&Message::Keepalive.encode(&cxt)).unwrap(),
                Message::Keepalive if !established => {
                    established = true;
                    next_send = Instant::now();
                }
                _ => {}
            }
        }
        if established && left > 0 && Instant::now() >= next_send {
            if let Some(b) = pending.next() {
                left -= 1;
                if s.write_all(&b).is_err() {
                    println!("CLOSED");
                    return;
                }
                next_send = Instant::now() + pause;
            }
        }
        if Instant::now() >= deadline {
            println!("LINGER");
            return;
        }
        if no_read && established && left == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

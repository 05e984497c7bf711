//! `http-get ADDR:PORT PATH`: one HTTP/1.1 GET, the body to stdout
//! (chunked or not); exits non-zero unless the status is 200. The lab runs it inside a host's
//! namespace (`ip netns exec`) to scrape a daemon there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path] = args.as_slice() else {
        eprintln!("usage: http-get ADDR:PORT PATH");
        return ExitCode::FAILURE;
    };
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("http-get: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut reply = Vec::new();
    if let Err(e) = s
        .write_all(req.as_bytes())
        .and_then(|_| s.read_to_end(&mut reply))
    {
        eprintln!("http-get: {e}");
        return ExitCode::FAILURE;
    }
    let text = String::from_utf8_lossy(&reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        eprintln!("http-get: no HTTP reply");
        return ExitCode::FAILURE;
    };
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if chunked {
        print!("{}", dechunk(body));
    } else {
        print!("{body}");
    }
    if head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        ExitCode::SUCCESS
    } else {
        eprintln!("http-get: {}", head.lines().next().unwrap_or(""));
        ExitCode::FAILURE
    }
}

/// A chunked body's data (RFC 9112 §7.1): size lines in hex, then the
/// chunk; a size of 0 ends it.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        body = after.strip_prefix("\r\n").unwrap_or(after);
    }
    out
}

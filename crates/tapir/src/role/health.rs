//! Health-checked announcements (the guest role, C12 in docs/design.md): each
//! `[[service]]` runs its checks every `interval`; after `rise` passes in a
//! row its prefixes go into the Loc-RIB as tapir's own routes, after
//! `fall` failures they leave it. What BIRD plus anycast-healthchecker do
//! in a VM today.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::northbound::config::{Check, Service};
use crate::routing::rib::RibMsg;

/// One service, as `tapir show services` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub prefixes: Vec<String>,
    /// The prefixes are announced.
    pub healthy: bool,
    /// Passes (positive) or failures (negative) in a row.
    pub streak: i64,
    /// What the last failed check said (empty after a pass).
    pub last_error: String,
    pub checks: Vec<String>,
    /// Times the service went up or down.
    pub transitions: u64,
}

/// Every service's status, shared with the control socket and metrics.
pub type Statuses = Arc<Mutex<Vec<ServiceStatus>>>;

/// The running services: one task each, until the RIB goes away or a
/// reload takes the service out or changes it.
pub struct Services {
    statuses: Statuses,
    running: Vec<(Service, Arc<AtomicBool>)>,
    rib: mpsc::UnboundedSender<RibMsg>,
}

impl Services {
    /// Starts one task per service.
    pub fn spawn(services: &[Service], rib: mpsc::UnboundedSender<RibMsg>) -> Services {
        let mut s = Services {
            statuses: Arc::default(),
            running: Vec::new(),
            rib,
        };
        s.apply(services);
        s
    }

    /// What `show services` and the metrics read.
    pub fn statuses(&self) -> Statuses {
        self.statuses.clone()
    }

    /// A reload: services that are the same run on untouched; removed
    /// and changed ones stop, their prefixes withdrawn if announced,
    /// before anything else the reload announces; new and changed ones
    /// start (down, announced after `rise` passes).
    pub fn apply(&mut self, services: &[Service]) {
        let mut keep = Vec::new();
        for (s, stop) in std::mem::take(&mut self.running) {
            if services.contains(&s) {
                keep.push((s, stop));
                continue;
            }
            // The task checks the flag before each message to the RIB, on
            // this same thread: it sends nothing after this.
            stop.store(true, Relaxed);
            let up = self.lock().iter().any(|st| st.name == s.name && st.healthy);
            if up {
                info!(service = %s.name, "service removed or changed by a reload: withdrawn");
                let _ = self.rib.send(RibMsg::Local {
                    announce: Vec::new(),
                    withdraw: s.prefixes.clone(),
                });
            }
        }
        let old = std::mem::take(&mut *self.lock());
        let mut statuses = Vec::new();
        for s in services {
            match keep.iter().position(|(k, _)| k == s) {
                Some(i) => {
                    statuses.extend(old.iter().find(|st| st.name == s.name).cloned());
                    self.running.push(keep.swap_remove(i));
                }
                None => {
                    statuses.push(ServiceStatus {
                        name: s.name.clone(),
                        prefixes: s.prefixes.iter().map(|p| p.to_string()).collect(),
                        checks: s.checks.iter().map(|c| c.to_string()).collect(),
                        ..Default::default()
                    });
                    let stop = Arc::new(AtomicBool::new(false));
                    crate::tasks::spawn(
                        crate::tasks::Task::Health,
                        run(
                            s.clone(),
                            self.statuses.clone(),
                            self.rib.clone(),
                            stop.clone(),
                        ),
                    );
                    self.running.push((s.clone(), stop));
                }
            }
        }
        *self.lock() = statuses;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ServiceStatus>> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The up/down decision, apart from the IO: `rise` passes in a row bring
/// a service up, `fall` failures take it down. A service starts down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hysteresis {
    pub up: bool,
    /// Passes (positive) or failures (negative) in a row.
    pub streak: i64,
}

impl Hysteresis {
    /// Records one round; returns true if `up` changed.
    pub fn record(&mut self, pass: bool, rise: u32, fall: u32) -> bool {
        self.streak = match (pass, self.streak) {
            (true, n) if n > 0 => n + 1,
            (true, _) => 1,
            (false, n) if n < 0 => n - 1,
            (false, _) => -1,
        };
        let flip = if self.up {
            self.streak <= -(fall as i64)
        } else {
            self.streak >= rise as i64
        };
        if flip {
            self.up = !self.up;
        }
        flip
    }
}

async fn run(
    s: Service,
    statuses: Statuses,
    rib: mpsc::UnboundedSender<RibMsg>,
    stop: Arc<AtomicBool>,
) {
    let mut state = Hysteresis::default();
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stop.load(Relaxed) {
            return;
        }
        let result = round(&s).await.map_err(|e| e.to_string());
        // Taken out by a reload while the round ran: nothing more.
        if stop.load(Relaxed) {
            return;
        }
        let flip = state.record(result.is_ok(), s.rise, s.fall);
        if flip {
            if state.up {
                info!(service = %s.name, prefixes = ?s.prefixes, "service healthy: announced");
            } else {
                warn!(service = %s.name, error = %result.as_ref().err().cloned().unwrap_or_default(), "service unhealthy: withdrawn");
            }
            let (announce, withdraw) = if state.up {
                (s.prefixes.clone(), Vec::new())
            } else {
                (Vec::new(), s.prefixes.clone())
            };
            if rib.send(RibMsg::Local { announce, withdraw }).is_err() {
                return;
            }
        }
        let mut all = statuses.lock().unwrap_or_else(|e| e.into_inner());
        let Some(st) = all.iter_mut().find(|st| st.name == s.name) else {
            continue;
        };
        st.healthy = state.up;
        st.streak = state.streak;
        if flip {
            st.transitions += 1;
        }
        st.last_error = result.err().unwrap_or_default();
    }
}

/// Why a round of a service's checks failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("{0} is not configured on any interface")]
    AddressMissing(IpAddr),
    #[error("{check}: {source}")]
    Check { check: String, source: CheckError },
    #[error("{check}: no answer within {timeout:?}")]
    Timeout {
        check: String,
        timeout: std::time::Duration,
    },
}

/// Why one check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot run: {0}")]
    Spawn(std::io::Error),
    #[error("exited with {0}{1}")]
    Exit(std::process::ExitStatus, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("status {0}")]
    HttpStatus(u16),
    #[error("not an HTTP response")]
    NotHttp,
    #[error("no answer records")]
    NoRecords,
    #[error("{}", rcode_name(*.0))]
    Rcode(u8),
}

/// A failed check's stderr for the log: its first three lines, each cut
/// at 200 characters, after ": ", or nothing when it said nothing.
fn first_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .map(|l| l.chars().take(200).collect())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" | "))
    }
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        5 => "REFUSED".into(),
        r => format!("rcode {r}"),
    }
}

/// One round: the address check, then every check; the first failure is
/// the answer.
async fn round(s: &Service) -> Result<(), RoundError> {
    if s.require_address {
        for p in &s.prefixes {
            if !is_local_address(p.addr()) {
                return Err(RoundError::AddressMissing(p.addr()));
            }
        }
    }
    for c in &s.checks {
        match tokio::time::timeout(s.timeout, check(c)).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(RoundError::Check {
                    check: c.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(RoundError::Timeout {
                    check: c.to_string(),
                    timeout: s.timeout,
                })
            }
        }
    }
    Ok(())
}

/// True if the address is configured on an interface here. (Not by
/// binding a socket to it: with `ip_nonlocal_bind`, common on anycast
/// hosts, that works for any address.)
fn is_local_address(a: IpAddr) -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.filter_map(|i| i.address).any(|sa| match a {
        IpAddr::V4(x) => sa.as_sockaddr_in().is_some_and(|s| s.ip() == x),
        IpAddr::V6(x) => sa.as_sockaddr_in6().is_some_and(|s| s.ip() == x),
    })
}

pub async fn check(c: &Check) -> Result<(), CheckError> {
    match c {
        Check::Command(argv) => {
            let mut child = crate::tasks::process(
                tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true),
            )
            .map_err(CheckError::Spawn)?;
            // What it says on stderr goes into the log when it fails: the
            // first 4 KiB kept, the rest read and dropped (a chatty check
            // must not block on a full pipe). Once it has exited, what is
            // still to come gets 100 ms: a child it left behind may hold
            // stderr open.
            let mut head = Vec::new();
            let status = {
                let stderr = child.stderr.take();
                let reader = async {
                    if let Some(mut err) = stderr {
                        let _ = (&mut err).take(4096).read_to_end(&mut head).await;
                        let _ = tokio::io::copy(&mut err, &mut tokio::io::sink()).await;
                    }
                };
                tokio::pin!(reader);
                let mut read_all = false;
                let status = tokio::select! {
                    s = child.wait() => s,
                    () = &mut reader => {
                        read_all = true;
                        child.wait().await
                    }
                };
                if !read_all {
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_millis(100), &mut reader)
                            .await;
                }
                status
            };
            let status = status.map_err(CheckError::Spawn)?;
            if status.success() {
                Ok(())
            } else {
                Err(CheckError::Exit(status, first_lines(&head)))
            }
        }
        Check::Tcp(a) => tokio::net::TcpStream::connect(a)
            .await
            .map(drop)
            .map_err(CheckError::Io),
        Check::Http {
            address,
            host,
            path,
            status,
        } => {
            let got = http_status(*address, host, path).await?;
            if got == *status {
                Ok(())
            } else {
                Err(CheckError::HttpStatus(got))
            }
        }
        Check::Dns {
            server,
            name,
            record,
        } => dns(*server, name, *record).await,
    }
}

async fn http_status(address: SocketAddr, host: &str, path: &str) -> Result<u16, CheckError> {
    let mut s = tokio::net::TcpStream::connect(address).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tapir-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    // The status line is all that matters; read until it is complete.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf).ok_or(CheckError::NotHttp)
}

/// `HTTP/1.x NNN …` → NNN.
pub fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then_some(())?;
    code.parse().ok()
}

/// A DNS query (RFC 1035 §4.1) for `name`, type `record`, class IN, with
/// recursion desired.
pub fn dns_query(id: u16, name: &str, record: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&record.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// Judges an answer to `dns_query(id, …)`: None if it is not one (wrong
/// id, not a response), else whether it answered.
pub fn dns_answered(id: u16, reply: &[u8]) -> Option<Result<(), CheckError>> {
    if reply.len() < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id {
        return None;
    }
    if reply[2] & 0x80 == 0 {
        return None;
    }
    let rcode = reply[3] & 0x0f;
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    Some(match (rcode, answers) {
        (0, 0) => Err(CheckError::NoRecords),
        (0, _) => Ok(()),
        (r, _) => Err(CheckError::Rcode(r)),
    })
}

async fn dns(server: SocketAddr, name: &str, record: u16) -> Result<(), CheckError> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(any).await?;
    sock.connect(server).await?;
    let id: u16 = rand_id();
    sock.send(&dns_query(id, name, record)).await?;
    let mut buf = [0u8; 1500];
    loop {
        let n = sock.recv(&mut buf).await?;
        if let Some(r) = dns_answered(id, &buf[..n]) {
            return r;
        }
    }
}

/// A query id nobody off the path can guess easily.
fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut h = Hysteresis::default();
        // Starts down; two passes bring it up.
        assert!(!h.record(true, 2, 3));
        assert!(h.record(true, 2, 3));
        assert!(h.up);
        // A failure between passes resets the count.
        assert!(!h.record(false, 2, 3));
        assert!(!h.record(true, 2, 3));
        assert!(!h.record(false, 2, 3));
        assert!(!h.record(false, 2, 3));
        assert!(h.record(false, 2, 3));
        assert!(!h.up);
        assert_eq!(h.streak, -3);
        // rise = 1: the first pass.
        assert!(h.record(true, 1, 1));
    }

    #[test]
    fn dns_query_and_answers() {
        let q = dns_query(0x1234, "example.org.", 28);
        assert_eq!(
            q,
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
                b'e', 3, b'o', b'r', b'g', 0, 0, 28, 0, 1
            ]
        );
        let mut reply = q.clone();
        reply[2] |= 0x80;
        assert!(matches!(
            dns_answered(0x1234, &reply),
            Some(Err(CheckError::NoRecords))
        ));
        reply[7] = 1;
        assert!(matches!(dns_answered(0x1234, &reply), Some(Ok(()))));
        reply[3] = 3;
        let nx = dns_answered(0x1234, &reply);
        assert!(matches!(nx, Some(Err(CheckError::Rcode(3)))), "{nx:?}");
        assert_eq!(nx.unwrap().unwrap_err().to_string(), "NXDOMAIN");
        assert!(
            dns_answered(0x4321, &reply).is_none(),
            "another query's answer"
        );
        assert!(dns_answered(0x1234, &q).is_none(), "not a response");
        assert!(dns_answered(0x1234, &reply[..5]).is_none());
    }

    #[test]
    fn http_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000\r\n"), None);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Every kind of check against real sockets on loopback.
    #[test]
    fn checks_against_local_servers() {
        rt().block_on(async {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp_addr = tcp.local_addr().unwrap();
            // An HTTP server answering 200 to /ok and 503 otherwise.
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = tcp.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        let req = String::from_utf8_lossy(&buf[..n]).to_string();
                        let reply = if req.starts_with("GET /ok ") && req.contains("Host: h\r\n") {
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                        } else {
                            "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
                        };
                        let _ = s.write_all(reply.as_bytes()).await;
                    });
                }
            });
            assert!(check(&Check::Tcp(tcp_addr)).await.is_ok());
            let http = |path: &str| Check::Http {
                address: tcp_addr,
                host: "h".into(),
                path: path.into(),
                status: 200,
            };
            assert!(check(&http("/ok")).await.is_ok());
            let down = check(&http("/down")).await;
            assert!(matches!(down, Err(CheckError::HttpStatus(503))), "{down:?}");
            // Nothing listens there any more.
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let closed_addr = closed.local_addr().unwrap();
            drop(closed);
            assert!(check(&Check::Tcp(closed_addr)).await.is_err());

            // A DNS server that knows one name.
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let dns_addr = udp.local_addr().unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                    let mut r = buf[..n].to_vec();
                    r[2] |= 0x80;
                    if r[12..].starts_with(b"\x04good") {
                        r[7] = 1;
                    } else {
                        r[3] = 3;
                    }
                    udp.send_to(&r, from).await.unwrap();
                }
            });
            let dns = |name: &str| Check::Dns {
                server: dns_addr,
                name: name.into(),
                record: 1,
            };
            assert!(check(&dns("good.example")).await.is_ok());
            let bad = check(&dns("bad.example")).await;
            assert!(matches!(bad, Err(CheckError::Rcode(3))), "{bad:?}");

            assert!(check(&Check::Command(vec!["true".into()])).await.is_ok());
            let f = check(&Check::Command(vec!["false".into()])).await;
            assert!(matches!(f, Err(CheckError::Exit(..))), "{f:?}");
            // Its stderr's first lines come with the error; a flood of it
            // does not block the check.
            let said = check(&Check::Command(vec![
                "sh".into(),
                "-c".into(),
                "echo 'upstream 10.0.0.53 timed out' >&2; echo second >&2; \
                 echo third >&2; echo fourth >&2; head -c 1000000 /dev/zero >&2; exit 3"
                    .into(),
            ]))
            .await
            .unwrap_err()
            .to_string();
            assert_eq!(
                said,
                "exited with exit status: 3: upstream 10.0.0.53 timed out | second | third"
            );
            assert!(check(&Check::Command(vec!["/nonexistent/x".into()]))
                .await
                .unwrap_err()
                .to_string()
                .contains("cannot run"));
        });
    }

    #[test]
    fn local_addresses() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        // TEST-NET-3 is nobody's here.
        assert!(!is_local_address("203.0.113.77".parse().unwrap()));
    }
}

//! Makes VMs show their IPv6 link-local address: an ICMPv6 echo request to
//! all-nodes (ff02::1) on a tap that just came up. A VM answers from its
//! link-local address, and the answer itself tells us that address and the
//! tap (the scope of the source). The kernel does not learn a neighbour
//! from an echo reply when the VM already knew us, so the replies are read
//! here and passed on as [`KernelEvent::Neighbour`] (capability C3
//! in docs/design.md: a link-local neighbour on a matching tap is a VM).
//!
//! Only an answer to a request we sent counts: on the tap it went out of,
//! with its identifier and sequence number, within [`ANSWER_WITHIN`], and
//! once. A VM that forges echo replies from made-up addresses gets at most
//! one neighbour per request of ours.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::southbound::kernel::KernelEvent;
use crate::tasks::{self, Task};

/// Echo requests sent per tap that comes up: the VM may still be booting.
const DELAYS: [u64; 4] = [0, 1, 3, 10];
/// Identifier in our echo requests ("tp").
const ECHO_ID: [u8; 2] = [0x74, 0x70];
/// How long after a request its answer is taken.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The requests not answered yet: per tap, each sequence number and when
/// it went out.
#[derive(Default)]
struct Outstanding(HashMap<u32, Vec<(u16, Instant)>>);

impl Outstanding {
    fn sent(&mut self, index: u32, seq: u16, now: Instant) {
        let v = self.0.entry(index).or_default();
        v.retain(|(_, t)| now.duration_since(*t) < ANSWER_WITHIN);
        v.push((seq, now));
    }

    /// Whether `seq` on `index` answers a request of ours; the request is
    /// answered from then on.
    fn answer(&mut self, index: u32, seq: u16, now: Instant) -> bool {
        let Some(v) = self.0.get_mut(&index) else {
            return false;
        };
        v.retain(|(_, t)| now.duration_since(*t) < ANSWER_WITHIN);
        let found = v.iter().position(|(s, _)| *s == seq);
        if let Some(i) = found {
            v.swap_remove(i);
        }
        if v.is_empty() {
            self.0.remove(&index);
        }
        found.is_some()
    }
}

/// Starts the prober; send it `(ifindex, ifname)` when a tap comes up.
/// Link-local addresses that answer are reported on `found`.
pub fn spawn(found: mpsc::Sender<KernelEvent>) -> mpsc::UnboundedSender<(u32, String)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, String)>();
    // A raw ICMPv6 socket, driven through tokio's datagram API: recvfrom and
    // sendto are all it needs, and the source's scope id is the tap.
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .and_then(|s| s.set_nonblocking(true).map(|_| s))
        // Our own request must not come back to us (we would answer it
        // and take ourselves for a VM).
        .and_then(|s| s.set_multicast_loop_v6(false).map(|_| s))
        .and_then(|s| UdpSocket::from_std(std::net::UdpSocket::from(s)));
    let sock = match sock {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "no ICMPv6 socket: link-local VMs are found only when they speak first");
            tasks::spawn(
                Task::Probe,
                async move { while rx.recv().await.is_some() {} },
            );
            return tx;
        }
    };
    let outstanding = Arc::new(Mutex::new(Outstanding::default()));
    let reader = sock.clone();
    let answered = outstanding.clone();
    tasks::spawn(Task::Probe, async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = match reader.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "ICMPv6 receive failed");
                    continue;
                }
            };
            let SocketAddr::V6(from) = from else { continue };
            // An echo reply (129) to one of our requests, from a link-local
            // address on the tap the request went out of.
            if let [129, 0, _, _, id0, id1, s0, s1, ..] = buf[..n] {
                let ours = [id0, id1] == ECHO_ID
                    && crate::southbound::net::is_link_local(*from.ip())
                    && answered.lock().expect("probe state").answer(
                        from.scope_id(),
                        u16::from_be_bytes([s0, s1]),
                        Instant::now(),
                    );
                if !ours {
                    debug!(from = %from, "ICMPv6 echo reply to no request of ours ignored");
                    continue;
                }
                {
                    let ev = KernelEvent::Neighbour {
                        add: true,
                        addr: *from.ip(),
                        index: from.scope_id(),
                    };
                    if found.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tasks::spawn(Task::Probe, async move {
        // Not 0: a forger should not know where the numbers are.
        let mut seq: u16 = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish() as u16
        };
        while let Some((index, name)) = rx.recv().await {
            for d in DELAYS {
                seq = seq.wrapping_add(1);
                let sock = sock.clone();
                let name = name.clone();
                let s = seq;
                let outstanding = outstanding.clone();
                tasks::spawn(Task::Timer, async move {
                    tokio::time::sleep(Duration::from_secs(d)).await;
                    outstanding
                        .lock()
                        .expect("probe state")
                        .sent(index, s, Instant::now());
                    // Type 128 (echo request), code 0, checksum filled in
                    // by the kernel for ICMPv6 raw sockets, id, sequence.
                    let [hi, lo] = s.to_be_bytes();
                    let pkt = [128u8, 0, 0, 0, ECHO_ID[0], ECHO_ID[1], hi, lo];
                    let to =
                        SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
                    if let Err(e) = sock.send_to(&pkt, to).await {
                        debug!(interface = %name, error = %e, "link-local probe not sent");
                    }
                });
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_to_our_request_counts_and_only_once() {
        let mut o = Outstanding::default();
        let t = Instant::now();
        o.sent(7, 100, t);
        o.sent(7, 101, t);
        // Another tap, another number, or too late: no.
        assert!(!o.answer(8, 100, t));
        assert!(!o.answer(7, 99, t));
        assert!(!o.answer(7, 101, t + ANSWER_WITHIN));
        // The request answered: once.
        o.sent(7, 102, t);
        assert!(o.answer(7, 102, t + Duration::from_secs(1)));
        assert!(!o.answer(7, 102, t + Duration::from_secs(1)));
        assert!(o.0.is_empty() || o.0[&7].iter().all(|(s, _)| *s != 102));
    }
}

//! Makes VMs show their IPv6 link-local address: an ICMPv6 echo request to
//! all-nodes (ff02::1) on a tap that just came up. A VM answers from its
//! link-local address, and the answer itself tells us that address and the
//! tap (the scope of the source). The kernel does not learn a neighbour
//! from an echo reply when the VM already knew us, so the replies are read
//! here and passed on as [`KernelEvent::Neighbour`] (capability C3
//! in docs/design.md: a link-local neighbour on a matching tap is a VM).

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::kernel::KernelEvent;

/// Echo requests sent per tap that comes up: the VM may still be booting.
const DELAYS: [u64; 4] = [0, 1, 3, 10];
/// Identifier in our echo requests ("tp").
const ECHO_ID: [u8; 2] = [0x74, 0x70];

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
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            return tx;
        }
    };
    let reader = sock.clone();
    tokio::spawn(async move {
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
            // address.
            if let [129, 0, _, _, id0, id1, ..] = buf[..n] {
                if [id0, id1] == ECHO_ID && crate::authorisation::is_link_local(*from.ip()) {
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
    tokio::spawn(async move {
        let mut seq: u16 = 0;
        while let Some((index, name)) = rx.recv().await {
            for d in DELAYS {
                seq = seq.wrapping_add(1);
                let sock = sock.clone();
                let name = name.clone();
                let s = seq;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(d)).await;
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

//! Makes VMs show their IPv6 link-local address: an ICMPv6 echo request to
//! all-nodes (ff02::1) on a tap that just came up. A VM answers from its
//! link-local address, the kernel learns it as a neighbour, and the
//! hypervisor task sees the neighbour (DESIGN C3: "a link-local neighbor
//! seen on a matching tap is a VM") and opens the session.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Echo requests sent per tap that comes up: the VM may still be booting.
const DELAYS: [u64; 4] = [0, 1, 3, 10];

pub fn spawn() -> mpsc::UnboundedSender<(u32, String)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, String)>();
    tokio::spawn(async move {
        let sock = match Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "no ICMPv6 socket: link-local VMs are found only when they speak first");
                while rx.recv().await.is_some() {}
                return;
            }
        };
        let sock = std::sync::Arc::new(sock);
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
                    let pkt = [128u8, 0, 0, 0, 0x74, 0x70, hi, lo];
                    let to = SockAddr::from(SocketAddrV6::new(
                        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                        0,
                        0,
                        index,
                    ));
                    if let Err(e) = sock.send_to(&pkt, &to) {
                        debug!(interface = %name, error = %e, "link-local probe not sent");
                    }
                });
            }
        }
    });
    tx
}

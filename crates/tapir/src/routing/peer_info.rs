//! Who a route came from, as the Loc-RIB, best-path selection and
//! policy see it. A leaf beside `net`.

use std::net::{IpAddr, Ipv4Addr};

use crate::southbound::net::Interface;

/// A peer's identity in the Loc-RIB, unique for the daemon's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

/// One TCP connection of a peer (the peer task numbers them; a dropped
/// connection's late bytes carry an old number and are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The peer a path came from, as best-path selection and policy see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub ebgp: bool,
    /// For VM sessions: the VM's name (if in the inventory) and group.
    pub vm: Option<String>,
    pub group: Option<String>,
    /// The tap a VM lives on: its routes go into the kernel through it.
    pub interface: Option<Interface>,
    /// Install this peer's routes in the kernel.
    pub kernel: bool,
}

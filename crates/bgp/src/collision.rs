//! Connection collision detection (RFC 4271 §6.8).
//!
//! When both speakers open a connection at once, each ends up with two
//! sessions to the same peer. Once the peer's BGP Identifier is known (its
//! OPEN arrived), the connection opened by the speaker with the higher
//! identifier is kept and the other is closed with Cease / Connection
//! Collision Resolution.

use std::net::Ipv4Addr;

use crate::session::{Session, State};

/// Which of two colliding sessions to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loser {
    First,
    Second,
}

/// Whether the connection we opened survives, given both identifiers
/// (§6.8: compare them as 4-octet unsigned integers). Equal identifiers are
/// legal between different ASes (RFC 6286 §2.1); then the connection opened
/// by the speaker with the larger AS survives (RFC 6286 §2.3).
pub fn keep_locally_initiated(
    local_id: Ipv4Addr,
    remote_id: Ipv4Addr,
    local_as: u32,
    remote_as: u32,
) -> bool {
    match u32::from(local_id).cmp(&u32::from(remote_id)) {
        std::cmp::Ordering::Equal => local_as > remote_as,
        o => o == std::cmp::Ordering::Greater,
    }
}

/// Resolves a collision between two sessions to the same peer, if there is
/// one to resolve yet: an Established session always wins (§6.8: the
/// collision is with an Established connection, the new one is closed);
/// otherwise both must have received the peer's OPEN.
pub fn resolve(first: &Session, second: &Session) -> Option<Loser> {
    let has_open = |s: &Session| matches!(s.state(), State::OpenConfirm | State::Established);
    let opening = |s: &Session| matches!(s.state(), State::OpenSent | State::OpenConfirm);
    match (first.state(), second.state()) {
        (State::Established, State::Established) => {}
        (State::Established, _) if opening(second) => return Some(Loser::Second),
        (_, State::Established) if opening(first) => return Some(Loser::First),
        _ => {}
    }
    if !has_open(first) || !has_open(second) {
        return None;
    }
    // Both connections in the same direction: the peer gave up on the
    // older one and opened a new one; the older is stale.
    if first.is_inbound() == second.is_inbound() {
        return Some(Loser::First);
    }
    let open = first.remote_open()?;
    let cfg = first.config();
    let keep_local = keep_locally_initiated(cfg.router_id, open.bgp_id, cfg.local_as, open.asn());
    // The loser is the session whose direction is the one not kept.
    let first_is_local = !first.is_inbound();
    Some(if first_is_local == keep_local {
        Loser::Second
    } else {
        Loser::First
    })
}

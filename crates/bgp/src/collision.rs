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
/// (§6.8: compare them as 4-octet unsigned integers).
pub fn keep_locally_initiated(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(remote_id)
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
    let remote_id = first.remote_open()?.bgp_id;
    let local_id = first.config().router_id;
    let keep_local = keep_locally_initiated(local_id, remote_id);
    // The loser is the session whose direction is the one not kept.
    let first_is_local = !first.is_inbound();
    Some(if first_is_local == keep_local {
        Loser::Second
    } else {
        Loser::First
    })
}

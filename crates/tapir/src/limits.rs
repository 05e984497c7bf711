//! Limits against a hostile or broken peer, and how often each was hit
//! (for metrics; every hit is also logged where it happens).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A peer stopped reading (RFC 9687 send hold timer).
    SendHoldTime,
    /// An AS path longer than `max-as-path-length` (treated as withdrawn).
    AsPathLength,
    /// More sessions on one tap than `max-sessions-per-interface`.
    SessionsPerInterface,
    /// More sessions in a group than `max-sessions`.
    SessionsPerGroup,
    /// Connections from one tap faster than `connection-rate`.
    ConnectionRate,
    /// More bytes queued for a peer than `max-send-queue`.
    SendQueue,
    /// A ROUTE-REFRESH while the last one's answer is still on its way
    /// (coalesced into it).
    RefreshPending,
    /// More link-local neighbours on one tap than
    /// `max-sessions-per-interface`.
    NeighboursPerInterface,
    /// A route not exported: its attributes do not fit in one message.
    UpdateTooLarge,
}

impl Limit {
    pub const ALL: [Limit; 9] = [
        Limit::SendHoldTime,
        Limit::AsPathLength,
        Limit::SessionsPerInterface,
        Limit::SessionsPerGroup,
        Limit::ConnectionRate,
        Limit::SendQueue,
        Limit::RefreshPending,
        Limit::NeighboursPerInterface,
        Limit::UpdateTooLarge,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Limit::SendHoldTime => "send-hold-time",
            Limit::AsPathLength => "as-path-length",
            Limit::SessionsPerInterface => "sessions-per-interface",
            Limit::SessionsPerGroup => "sessions-per-group",
            Limit::ConnectionRate => "connection-rate",
            Limit::SendQueue => "send-queue",
            Limit::RefreshPending => "refresh-pending",
            Limit::NeighboursPerInterface => "neighbours-per-interface",
            Limit::UpdateTooLarge => "update-too-large",
        }
    }
}

static HITS: [AtomicU64; 9] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

pub fn hit(l: Limit) {
    HITS[l as usize].fetch_add(1, Relaxed);
}

pub fn hits(l: Limit) -> u64 {
    HITS[l as usize].load(Relaxed)
}

//! The conformance tier: scripted cases that drive the daemon's real
//! sans-IO peer core against a remote BGP speaker on a fake clock, with no
//! root and no network. Each case snapshots its transcript (what went in,
//! what the remote received, what the Loc-RIB and BFD were told) and
//! asserts what the remote and the Loc-RIB hold.
//!
//! The lab tests (`--features lab`) prove the same behaviour against
//! BIRD, FRR and GoBGP in network namespaces; these pin the decisions
//! themselves, quickly and exactly.

mod harness;
mod peer;
mod rib;

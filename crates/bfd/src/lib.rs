//! BFD for tapir (RFC 5880), without IO.
//!
//! - [`packet`]: control packets, with the authentication section parsed
//!   (simple password and keyed SHA1 verified; MD5 parsed only);
//! - [`session`]: the state machine in asynchronous mode, with Poll/Final,
//!   timer negotiation, detection time and AdminDown, driven by a `now`
//!   passed in. Demand mode and echo are not implemented.
//!
//! Sockets (RFC 5881 single-hop, RFC 5883 multihop) are the daemon's.

#![forbid(unsafe_code)]

pub mod packet;
pub mod session;

pub use packet::{Diag, Discard, Packet, State};
pub use session::{AuthConfig, Config, Event, Session};

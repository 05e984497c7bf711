//! tapir: a BGP daemon for routed hypervisors. The binary (`main.rs`) is
//! the CLI; this library is the daemon, so that fuzz targets and tests can
//! reach its parts.
//!
//! - [`config`]: the TOML configuration, checked with line and column;
//! - [`peer`]: one task per neighbor driving the sans-IO `bgp` session;
//! - [`daemon`]: `tapir run`, the listener, signals;
//! - [`control`]: the control socket and its JSON; [`show`]: its tables.

#![deny(unsafe_code)]

pub mod adj_rib_in;
pub mod authorisation;
pub mod bfd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dynamic;
pub mod guest;
pub mod health;
pub mod inventory;
pub mod kernel;
pub mod limits;
pub mod log_budget;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod peer;
pub mod peer_info;
pub mod policy;
pub mod prefix_map;
pub mod prefix_set;
pub mod probe;
pub mod rib;
pub mod show;
pub mod sys;

//! tapir: a BGP daemon for routed hypervisors. The binary (`main.rs`) is
//! the CLI; this library is the daemon, so that fuzz targets and tests can
//! reach its parts.
//!
//! The layout follows the design (docs/design.md):
//!
//! - [`routing`]: the routes' life, with no socket in it: the
//!   Adj-RIB-In, authorisation of VMs' routes, export policy, the Loc-RIB
//!   (its core `Rib::apply`, sans-IO; its thread a shell);
//! - [`peer`]: one task per session, a shell around the sans-IO
//!   [`peer::PeerCore`];
//! - [`role`]: what tapir is on this host: the hypervisor (VMs on taps)
//!   or the guest (follows its gateway, announces health-checked
//!   services);
//! - [`southbound`]: the host: netlink (taps, routes, the FIB writer),
//!   BFD sockets, the ICMPv6 probe, socket options (the one module with
//!   `unsafe`), addresses and interfaces;
//! - [`northbound`]: the operator: the configuration, the inventory, the
//!   control socket and its tables, metrics, systemd readiness;
//! - [`tasks`]: every task, thread and channel capacity, with their map;
//! - [`daemon`]: `tapir run`: starts every task, serves, reloads, stops;
//! - [`reload`]: what a new config file changes and what each change
//!   will do, before anything is touched;
//! - [`limits`] and [`log_budget`]: counters and log budgets for what
//!   broken or hostile peers make us do.
//!
//! There is no import cycle between files. `northbound`'s inputs
//! (`config`, `inventory`) are read by all and read only value types;
//! `routing` reads them; `peer` uses `routing`; `role` uses `peer`;
//! `northbound`'s outputs (`control`, `show`, `metrics`) read the status
//! types of what they report on; `daemon` uses everything
//! (docs/design.md draws it).

#![deny(unsafe_code)]

pub mod daemon;
#[cfg(feature = "failpoints")]
pub mod failpoint;
pub mod limits;
pub mod log_budget;
pub mod northbound;
pub mod peer;
pub mod reload;
pub mod role;
pub mod routing;
pub mod southbound;
pub mod tasks;

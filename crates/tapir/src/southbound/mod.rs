//! The host under tapir: the kernel's links, addresses, routes and
//! neighbours (netlink), the FIB writer, BFD's sockets, the ICMPv6 probe
//! of taps, socket options, and plain address helpers.
//!
//! - [`kernel`]: the netlink watcher and the FIB writer;
//! - [`fib`]: what the kernel refused, and the scan that repairs our
//!   routes;
//! - [`bfd`]: BFD sessions and their sockets;
//! - [`probe`]: makes VMs show their IPv6 link-local addresses;
//! - [`sys`]: TCP-MD5, TCP-AO and GTSM socket options (the one module
//!   with `unsafe`);
//! - [`net`]: interfaces and addresses (a leaf).

pub mod bfd;
pub mod fib;
pub mod kernel;
pub mod net;
pub mod probe;
pub mod sys;

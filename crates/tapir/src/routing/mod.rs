//! The routes' life, from a neighbor's UPDATE to the Loc-RIB's choices:
//! no socket, no netlink. Sans-IO but for the Loc-RIB's thread.
//!
//! - [`adj_rib_in`]: every route a neighbor announced, with its verdict;
//! - [`authorisation`]: which VM may announce what (C4);
//! - [`policy`]: export policy to upstream neighbors;
//! - [`rib`]: the Loc-RIB: best paths, exports, FIB changes, drain, GR,
//!   as a synchronous core (`Rib::apply`);
//! - [`rib_thread`]: the thread around it: channels in, exports, FIB
//!   changes and timers out;
//! - [`peer_info`]: who a route came from;
//! - [`prefix_map`], [`prefix_set`]: the tables and the filters.

pub mod adj_rib_in;
pub mod authorisation;
pub mod peer_info;
pub mod policy;
pub mod prefix_map;
pub mod prefix_set;
pub mod rib;
pub mod rib_thread;

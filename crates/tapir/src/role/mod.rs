//! What tapir is on this host, chosen by its configuration:
//!
//! - [`hypervisor`]: sessions with every VM behind a tap, found from the
//!   kernel, each authorised by the groups and the inventory;
//! - [`guest`]: inside a VM, a session with its gateway (followed across
//!   migrations) and [`health`]-checked service prefixes.

pub mod guest;
pub mod health;
pub mod hypervisor;

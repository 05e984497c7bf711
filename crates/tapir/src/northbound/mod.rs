//! What the operator sees and says: the configuration and the inventory,
//! the control socket (`tapir show`, `reload`, `drain`, `vm`) and its
//! tables, the metrics endpoint, systemd readiness.

pub mod config;
pub mod control;
pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod show;

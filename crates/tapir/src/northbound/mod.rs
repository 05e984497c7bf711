//! What the operator sees and says: the configuration and the inventory,
//! the control socket (`tapir show`, `reload`, `drain`, `vm`) and its
//! tables, the metrics endpoint, BMP export, systemd readiness, its watchdog and its journal.

pub mod bmp;
pub mod config;
pub mod control;
pub mod inventory;
pub mod journal;
pub mod manual;
pub mod metrics;
pub mod notify;
pub mod show;
pub mod watchdog;

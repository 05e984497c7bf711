//! What tapir is on this host, chosen by its configuration:
//!
//! - [`hypervisor`]: sessions with every VM behind a tap, found from the
//!   kernel, each authorised by the groups and the inventory;
//! - [`guest`]: inside a VM, a session with its gateway (followed across
//!   migrations) and [`health`]-checked service prefixes.

pub mod guest;
pub mod health;
pub mod hypervisor;

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::northbound::config::Group;
use crate::northbound::control::VmStatus;
use crate::northbound::inventory::Registration;
use crate::peer::PeerHandle;
use crate::southbound::kernel::KernelEvent;

/// Why the role refused a VM request or a reload.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    Inventory(#[from] crate::northbound::inventory::InventoryError),
    #[error("this tapir runs in the guest role ([gateway]): it has no VMs")]
    GuestRole,
}

/// The role's mailbox (hypervisor or guest): kernel events, connections
/// for VM or gateway addresses, questions and commands from the daemon.
pub enum RoleMsg {
    Kernel(KernelEvent),
    Incoming(TcpStream, SocketAddr),
    ShowVms(oneshot::Sender<Vec<VmStatus>>),
    Peers(oneshot::Sender<Vec<PeerHandle>>),
    VmAdd(Registration, oneshot::Sender<Result<(), RoleError>>),
    /// Unregister a VM: every NIC, or the one named.
    VmRemove(
        String,
        Option<String>,
        oneshot::Sender<Result<(), RoleError>>,
    ),
    /// `tapir vm sync`: the synced entries become `vms` (or, `dry_run`,
    /// only say what would change); answers with the change.
    VmSync {
        vms: Vec<crate::northbound::inventory::VmEntry>,
        dry_run: bool,
        done: oneshot::Sender<Result<String, RoleError>>,
    },
    /// A reloaded config: new groups and inventory entries; every VM's
    /// routes are judged again, sessions start or stop as needed.
    Reload {
        groups: Vec<Group>,
        vms: Vec<crate::northbound::inventory::VmEntry>,
        protected: Vec<IpAddr>,
        registration_grace: std::time::Duration,
        done: oneshot::Sender<Result<(), RoleError>>,
    },
    /// Stop every VM session: with a Cease, or (graceful) silently so that
    /// the VMs keep their state for our restart.
    Shutdown {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
}

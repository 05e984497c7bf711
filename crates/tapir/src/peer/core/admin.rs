//! `tapir neighbor disable|enable|restart|refresh`: the operator's hand on
//! one session, like birdc's `disable`, `enable`, `restart` and
//! `reload in|out`.

use std::time::Instant;

use bgp::notification::{cease, Notification};
use bgp::session::State;
use tracing::info;

use super::PeerCore;
use crate::northbound::control::NeighborOp;

/// Why a neighbor command did nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("{name} is disabled: `tapir neighbor enable {name}` first")]
    Disabled { name: String },
    #[error("{name} is {state}, not Established: nothing to refresh")]
    NotEstablished { name: String, state: State },
}

impl PeerCore {
    /// Whether `target` (a name, a VM's name, or an address, with or
    /// without `%interface`) names this session.
    pub fn answers_to(&self, target: &str) -> bool {
        let bare = target.split('%').next().unwrap_or(target);
        self.cfg.name == target
            || self.cfg.vm.as_deref() == Some(target)
            || bare.parse() == Ok(self.cfg.address)
    }

    /// Runs an operator's command; says what it did.
    pub fn admin(&mut self, now: Instant, op: NeighborOp) -> Result<String, AdminError> {
        self.now = now;
        let name = self.cfg.name.clone();
        let state = self.conns[0].session.state();
        let done = match op {
            NeighborOp::Disable if self.disabled => format!("{name}: already disabled"),
            NeighborOp::Disable => {
                self.disabled = true;
                let n = Notification::shutdown(
                    cease::ADMINISTRATIVE_SHUTDOWN,
                    "disabled by the operator (tapir neighbor disable)",
                );
                for c in &mut self.conns {
                    c.session.stop(now, n.clone());
                }
                format!("{name}: disabled (was {state})")
            }
            NeighborOp::Enable if !self.disabled => format!("{name}: not disabled"),
            NeighborOp::Enable => {
                self.disabled = false;
                self.conns[0].session.start(now);
                format!("{name}: enabled")
            }
            NeighborOp::Restart if self.disabled => return Err(AdminError::Disabled { name }),
            NeighborOp::Restart => {
                let n = Notification::shutdown(
                    cease::ADMINISTRATIVE_RESET,
                    "reset by the operator (tapir neighbor restart)",
                );
                for c in &mut self.conns {
                    c.session.stop(now, n.clone());
                }
                self.process();
                // At once, not after the connect-retry time.
                self.conns[0].session.start(now);
                format!("{name}: restarted (was {state})")
            }
            NeighborOp::Refresh => {
                let Some(i) = self.established() else {
                    return Err(AdminError::NotEstablished { name, state });
                };
                let families = self.conns[i].session.context().families;
                let mut asked = Vec::new();
                for f in families {
                    if self.conns[i].session.request_refresh(f) {
                        asked.push(f.to_string());
                    }
                    self.send_family(i, f);
                }
                if asked.is_empty() {
                    format!("{name}: our routes sent again; the peer cannot be asked for its own (no ROUTE-REFRESH capability)")
                } else {
                    format!(
                        "{name}: our routes sent again; asked for the peer's ({})",
                        asked.join(", ")
                    )
                }
            }
        };
        info!(command = ?op, "{done}");
        self.process();
        Ok(done)
    }
}

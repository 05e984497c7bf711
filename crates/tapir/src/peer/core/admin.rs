//! `tapir neighbor disable|enable|restart|refresh`: the operator's hand on
//! one session, like birdc's `disable`, `enable`, `restart` and
//! `reload in|out`; and `show routes --export`, what it is sent.

use std::time::Instant;

use bgp::Prefix;
use tokio::sync::oneshot;

use bgp::notification::{cease, Notification};
use bgp::session::State;
use tracing::info;

use super::PeerCore;
use crate::northbound::control::NeighborOp;
use crate::routing::rib::{ExportView, RibMsg};

/// A neighbor's answer to `show routes --export`: the Loc-RIB answers
/// `view`; the UPDATEs carry the session's own next hops.
#[derive(Debug)]
pub struct ExportAsk {
    pub name: String,
    /// The families negotiated with the peer; empty unless Established
    /// (then nothing goes out at all).
    pub families: Vec<bgp::Afi>,
    pub next_hop_v4: Option<String>,
    pub next_hop_v6: Option<String>,
    pub view: oneshot::Receiver<Option<ExportView>>,
}

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
    /// without `%interface`) names this session. An address with an
    /// interface names only the session on that interface (link-local
    /// addresses repeat on every tap).
    pub fn answers_to(&self, target: &str) -> bool {
        let (addr, scope) = match target.split_once('%') {
            Some((a, i)) => (a, Some(i)),
            None => (target, None),
        };
        let on = |i: &str| self.cfg.interface.as_ref().is_some_and(|x| x.name == i);
        self.cfg.name == target
            || self.cfg.vm.as_deref() == Some(target)
            || (addr.parse() == Ok(self.cfg.address) && scope.is_none_or(on))
    }

    /// Asks the Loc-RIB what this neighbor is sent, if it is an upstream
    /// neighbor that `target` (or, `None`, any) names.
    pub fn ask_export(
        &mut self,
        target: Option<&str>,
        prefix: Option<Prefix>,
    ) -> Option<ExportAsk> {
        self.cfg.export.as_ref()?;
        if target.is_some_and(|t| !self.answers_to(t)) {
            return None;
        }
        let (reply, view) = oneshot::channel();
        self.tell_rib(RibMsg::ShowExport {
            peer: self.id,
            prefix,
            reply,
        });
        let nh = |afi| {
            self.established()
                .and_then(|i| self.next_hop_self(i, afi))
                .map(|n| n.to_string())
        };
        let families = self
            .established()
            .map(|i| {
                let cxt = self.conns[i].session.context();
                cxt.families
                    .iter()
                    .filter_map(|f| f.unicast_afi())
                    .collect()
            })
            .unwrap_or_default();
        Some(ExportAsk {
            name: self.cfg.name.clone(),
            families,
            next_hop_v4: nh(bgp::Afi::Ipv4),
            next_hop_v6: nh(bgp::Afi::Ipv6),
            view,
        })
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

//! Per-VM authorisation of announced routes (capability C4 and the security model, docs/design.md).
//!
//! A [`VmPolicy`] is a snapshot made by the hypervisor task for one VM
//! session: what the inventory and the group allow, which addresses are the
//! VM's own. The peer task judges every announced route with it, keeps the
//! verdict beside the route, and judges them all again when a new snapshot
//! arrives (a registration changed).

use std::net::IpAddr;
use std::sync::Arc;

use bgp::{NextHop, Prefix};

use crate::northbound::config::{ImportRules, MaxPrefixAction};
use crate::northbound::inventory::Owners;
use crate::routing::prefix_set::{PrefixPattern, PrefixSet};

#[derive(Clone, Debug, PartialEq)]
pub struct VmPolicy {
    pub group: String,
    /// The VM's inventory entry: its name and the prefixes it owns.
    pub entry: Option<(String, Vec<PrefixPattern>)>,
    /// The group filter for VMs without an entry (name, set).
    pub group_filter: Option<(String, PrefixSet)>,
    /// Prefixes owned by inventory entries, with the owner's name (this
    /// VM's own among them): shared by every session's snapshot.
    pub owners: Owners,
    /// The VM's own addresses: a next hop must be one of them.
    pub own_addresses: Vec<IpAddr>,
    /// Addresses no VM route may cover, whatever the filters allow: the
    /// static neighbors' (a VM's route to the top-of-rack's address would
    /// take hv1's own session there, and its BFD, onto the VM's tap).
    pub protected: Arc<[IpAddr]>,
    pub max_prefixes: usize,
    pub max_prefixes_action: MaxPrefixAction,
    /// What the VM's paths must look like (its group's rules).
    pub import_rules: ImportRules,
}

/// Why a route was refused: the label of the refusal counters (metrics,
/// `show`), one per check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectKind {
    /// the next hop is not one of the VM's own addresses.
    NextHop,
    /// the route covers a static neighbor's address.
    CoversNeighbor,
    /// outside the VM's inventory entry.
    NotInInventory,
    /// another VM's inventory entry owns it.
    OwnedByOtherVm,
    /// outside the group's filter.
    GroupFilter,
    /// the VM has no entry and its group no filter.
    NoFilter,
    /// over max-prefixes.
    MaxPrefixes,
    /// an AS path over max-as-path-length.
    AsPathLength,
    /// AS 0 in the AS path (RFC 7607).
    AsPathZero,
    /// a confederation segment (RFC 5065).
    AsPathConfed,
    /// our own AS in the AS path.
    AsPathLoop,
    /// an empty AS path from an external peer.
    AsPathEmpty,
    /// the AS path does not begin with the peer's AS.
    FirstAs,
}

impl RejectKind {
    /// Every kind, for metrics that list them all.
    pub const ALL: [RejectKind; 13] = [
        RejectKind::NextHop,
        RejectKind::CoversNeighbor,
        RejectKind::NotInInventory,
        RejectKind::OwnedByOtherVm,
        RejectKind::GroupFilter,
        RejectKind::NoFilter,
        RejectKind::MaxPrefixes,
        RejectKind::AsPathLength,
        RejectKind::AsPathZero,
        RejectKind::AsPathConfed,
        RejectKind::AsPathLoop,
        RejectKind::AsPathEmpty,
        RejectKind::FirstAs,
    ];

    /// The label, as in metrics and `show`.
    pub fn name(self) -> &'static str {
        match self {
            RejectKind::NextHop => "next-hop",
            RejectKind::CoversNeighbor => "covers-neighbor",
            RejectKind::NotInInventory => "not-in-inventory",
            RejectKind::OwnedByOtherVm => "owned-by-other-vm",
            RejectKind::GroupFilter => "group-filter",
            RejectKind::NoFilter => "no-filter",
            RejectKind::MaxPrefixes => "max-prefixes",
            RejectKind::AsPathLength => "as-path-length",
            RejectKind::AsPathZero => "as-path-zero",
            RejectKind::AsPathConfed => "as-path-confed",
            RejectKind::AsPathLoop => "as-path-loop",
            RejectKind::AsPathEmpty => "as-path-empty",
            RejectKind::FirstAs => "first-as",
        }
    }
}

impl std::fmt::Display for RejectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a route was refused; `kind` is the counter label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub reason: String,
}

impl VmPolicy {
    /// The other VM whose entry owns `prefix`, if one does.
    fn owned_elsewhere(&self, prefix: &Prefix) -> Option<&str> {
        let me = self.entry.as_ref().map(|e| e.0.as_str());
        self.owners
            .iter()
            .find(|(p, owner)| Some(owner.as_str()) != me && p.matches(prefix))
            .map(|(_, owner)| owner.as_str())
    }

    /// Judges one announced route, before the max-prefix count.
    pub fn judge(&self, prefix: &Prefix, next_hop: &NextHop) -> Result<(), Rejection> {
        let own = |a: &IpAddr| self.own_addresses.contains(a);
        let nh_ok = match next_hop {
            NextHop::V4(a) => own(&IpAddr::V4(*a)),
            // RFC 2545: the global address, optionally with a link-local
            // one; a link-local-only speaker puts :: or its link-local
            // address in the global field. Every address given must be the
            // VM's.
            NextHop::V6 { global, link_local } => {
                let global_ok =
                    own(&IpAddr::V6(*global)) || global.is_unspecified() && link_local.is_some();
                global_ok && link_local.is_none_or(|l| own(&IpAddr::V6(l)))
            }
        };
        if !nh_ok {
            return Err(Rejection {
                kind: RejectKind::NextHop,
                reason: format!("next hop {next_hop} is not the VM's own address"),
            });
        }
        if let Some(a) = self
            .protected
            .iter()
            .find(|a| prefix.contains(&Prefix::host(**a)))
        {
            return Err(Rejection {
                kind: RejectKind::CoversNeighbor,
                reason: format!("{prefix} covers neighbor address {a}"),
            });
        }
        match &self.entry {
            Some((name, owned)) => {
                if !owned.iter().any(|p| p.matches(prefix)) {
                    return Err(Rejection {
                        kind: RejectKind::NotInInventory,
                        reason: format!("{prefix} is not among the prefixes of VM {name}"),
                    });
                }
            }
            None => {
                if let Some(owner) = self.owned_elsewhere(prefix) {
                    return Err(Rejection {
                        kind: RejectKind::OwnedByOtherVm,
                        reason: format!("{prefix} belongs to VM {owner}"),
                    });
                }
                match &self.group_filter {
                    Some((name, set)) if !set.matches(prefix) => {
                        return Err(Rejection {
                            kind: RejectKind::GroupFilter,
                            reason: format!(
                                "{prefix} is not allowed by {name} (group {})",
                                self.group
                            ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        return Err(Rejection {
                            kind: RejectKind::NoFilter,
                            reason: format!(
                                "group {} has no import filter and the VM no inventory entry",
                                self.group
                            ),
                        })
                    }
                }
            }
        }
        // An inventory entry's prefixes are its own even if another entry
        // overlaps (the inventory refuses overlaps, this is a second guard).
        if let Some(owner) = self.owned_elsewhere(prefix) {
            return Err(Rejection {
                kind: RejectKind::OwnedByOtherVm,
                reason: format!("{prefix} belongs to VM {owner}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entry: bool) -> VmPolicy {
        VmPolicy {
            group: "vms".into(),
            entry: entry.then(|| {
                (
                    "recdns1001".to_string(),
                    vec!["10.3.0.1/32".parse().unwrap()],
                )
            }),
            group_filter: Some((
                "BGP-FROM-VMS".into(),
                PrefixSet {
                    patterns: vec![
                        "10.3.0.0/24{32,32}".parse().unwrap(),
                        "2001:db8:3::/48{128,128}".parse().unwrap(),
                    ],
                },
            )),
            owners: [("10.3.0.1/32".parse().unwrap(), "recdns1001".into())].into(),
            own_addresses: vec![
                "10.192.24.13".parse().unwrap(),
                "2001:db8:140::13".parse().unwrap(),
                "fe80::1".parse().unwrap(),
            ],
            protected: [
                "10.192.21.1".parse().unwrap(),
                "2001:db8:21::1".parse().unwrap(),
            ]
            .into(),
            max_prefixes: 10,
            max_prefixes_action: MaxPrefixAction::Reject,
            import_rules: ImportRules::vm_default(),
        }
    }

    fn nh4() -> NextHop {
        NextHop::V4("10.192.24.13".parse().unwrap())
    }

    /// No VM route may cover a static neighbor's address, even where the
    /// inventory or the group filter would allow it.
    #[test]
    fn no_vm_route_covers_a_neighbor() {
        for entry in [false, true] {
            let mut p = policy(entry);
            p.entry = p
                .entry
                .map(|(n, _)| (n, vec!["0.0.0.0/0{0,32}".parse().unwrap()]));
            p.group_filter = Some((
                "ALL".into(),
                PrefixSet {
                    patterns: vec![
                        "0.0.0.0/0{0,32}".parse().unwrap(),
                        "::/0{0,128}".parse().unwrap(),
                    ],
                },
            ));
            p.owners = [].into();
            for covering in [
                "10.192.21.1/32",
                "10.192.0.0/16",
                "0.0.0.0/0",
                "2001:db8:21::/64",
            ] {
                let nh = match covering.contains(':') {
                    true => NextHop::V6 {
                        global: "2001:db8:140::13".parse().unwrap(),
                        link_local: None,
                    },
                    false => nh4(),
                };
                let e = p.judge(&covering.parse().unwrap(), &nh).unwrap_err();
                assert_eq!(e.kind, RejectKind::CoversNeighbor, "{covering}");
            }
            assert!(p.judge(&"10.192.21.2/32".parse().unwrap(), &nh4()).is_ok());
        }
    }

    #[test]
    fn rogue_vm_cannot_take_owned_or_unfiltered_prefixes() {
        let p = policy(false);
        assert_eq!(
            p.judge(&"10.3.0.1/32".parse().unwrap(), &nh4())
                .unwrap_err()
                .kind,
            RejectKind::OwnedByOtherVm
        );
        assert_eq!(
            p.judge(&"10.99.0.0/24".parse().unwrap(), &nh4())
                .unwrap_err()
                .kind,
            RejectKind::GroupFilter
        );
        assert!(p.judge(&"10.3.0.5/32".parse().unwrap(), &nh4()).is_ok());
        let bad_nh = NextHop::V4("10.192.24.11".parse().unwrap());
        assert_eq!(
            p.judge(&"10.3.0.5/32".parse().unwrap(), &bad_nh)
                .unwrap_err()
                .kind,
            RejectKind::NextHop
        );
        let ll_only = NextHop::V6 {
            global: "::".parse().unwrap(),
            link_local: Some("fe80::1".parse().unwrap()),
        };
        assert!(p
            .judge(&"2001:db8:3::2/128".parse().unwrap(), &ll_only)
            .is_ok());
        let both = NextHop::V6 {
            global: "2001:db8:140::13".parse().unwrap(),
            link_local: Some("fe80::1".parse().unwrap()),
        };
        assert!(p
            .judge(&"2001:db8:3::2/128".parse().unwrap(), &both)
            .is_ok());
    }

    #[test]
    fn vm_with_entry_announces_only_its_own() {
        let p = policy(true);
        assert!(p.judge(&"10.3.0.1/32".parse().unwrap(), &nh4()).is_ok());
        assert_eq!(
            p.judge(&"10.3.0.5/32".parse().unwrap(), &nh4())
                .unwrap_err()
                .kind,
            RejectKind::NotInInventory
        );
    }
}

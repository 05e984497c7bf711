//! The inventory: which VM may announce which prefixes (C4, docs/design.md).
//!
//! Entries come from the config file (`[[vm]]`, or an `inventory` file
//! beside it) and from registrations through the control socket
//! (`tapir vm add`), which are kept in `<state-dir>/vms.json` so that they
//! survive a restart. A prefix that an entry owns may be announced by that
//! VM only; a VM with an entry may announce only its own prefixes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::northbound::config::{
    link_local_without_interface, Conflict, Mac, Source, VmEntry, REGISTRATION_GRACE,
};
use crate::routing::prefix_set::PrefixPattern;

/// A registration as stored in the state file and sent over the socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub interface: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub asn: Option<u32>,
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// One NIC of a VM with several (Ganeti's INTERFACE_UUID or index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    /// From `tapir vm sync` (the state file only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synced: bool,
}

/// Why a VM cannot join (or leave) the inventory, or the registrations
/// cannot be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("VM name `{0}` is empty or has blanks")]
    BadName(String),
    #[error("VM `{0}` needs at least one --address: a registration follows the VM's addresses, never a tap name alone")]
    NoAddress(String),
    #[error(
        "VM `{name}`: address {address} is link-local, the same on every tap: give --interface too"
    )]
    LinkLocalWithoutInterface { name: String, address: IpAddr },
    #[error("VM `{name}`: NIC `{nic}` is empty, longer than 64 characters or has blanks")]
    BadNic { name: String, nic: String },
    #[error("VM `{name}` has no NIC `{nic}` in the inventory")]
    NicNotFound { name: String, nic: String },
    #[error("VM `{0}` comes from `tapir vm sync`; sync a file without it")]
    FromSync(String),
    #[error("VM `{0}` is in the sync file twice")]
    SyncedTwice(String),
    #[error("VM `{name}`: prefix {reason}")]
    BadPrefix {
        name: String,
        reason: crate::routing::prefix_set::PatternError,
    },
    #[error("VM `{name}`: {reason}")]
    BadMac {
        name: String,
        reason: crate::northbound::config::MacError,
    },
    #[error(transparent)]
    Taken(#[from] Conflict),
    #[error("registered VM `{name}` conflicts with the new config: {reason}")]
    ConflictsWithConfig {
        name: String,
        reason: Box<InventoryError>,
    },
    #[error("no VM `{0}` in the inventory")]
    NotFound(String),
    #[error("VM `{0}` comes from the config file; edit it there")]
    FromConfig(String),
    #[error("{}: {source}", path.display())]
    StateFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    StateFileSyntax {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {reason}", path.display())]
    InStateFile {
        path: std::path::PathBuf,
        reason: Box<InventoryError>,
    },
}

impl Registration {
    /// Validates a registration into an entry.
    pub fn to_entry(&self) -> Result<VmEntry, InventoryError> {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(InventoryError::BadName(self.name.clone()));
        }
        if self.addresses.is_empty() {
            return Err(InventoryError::NoAddress(self.name.clone()));
        }
        if let Some(n) = &self.nic {
            if !crate::northbound::config::nic_id_ok(n) {
                return Err(InventoryError::BadNic {
                    name: self.name.clone(),
                    nic: n.clone(),
                });
            }
        }
        if let Some(a) = link_local_without_interface(&self.addresses, &self.interface) {
            return Err(InventoryError::LinkLocalWithoutInterface {
                name: self.name.clone(),
                address: a,
            });
        }
        let prefixes = self
            .prefixes
            .iter()
            .map(|p| {
                p.parse::<PrefixPattern>()
                    .map_err(|reason| InventoryError::BadPrefix {
                        name: self.name.clone(),
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mac = self
            .mac
            .as_deref()
            .map(|m| m.parse::<Mac>())
            .transpose()
            .map_err(|reason| InventoryError::BadMac {
                name: self.name.clone(),
                reason,
            })?;
        Ok(VmEntry {
            name: self.name.clone(),
            nic: self.nic.clone(),
            interface: self.interface.clone(),
            addresses: self.addresses.clone(),
            asn: self.asn,
            prefixes,
            mac,
            source: match self.synced {
                true => Source::Synced,
                false => Source::Registered,
            },
            missing_since: None,
        })
    }

    /// What an entry is registered as (the state file, `vm sync`).
    pub fn from_entry(e: &VmEntry) -> Registration {
        Registration {
            name: e.name.clone(),
            interface: e.interface.clone(),
            addresses: e.addresses.clone(),
            asn: e.asn,
            prefixes: e.prefixes.iter().map(|p| p.to_string()).collect(),
            mac: e.mac.map(|m| m.to_string()),
            nic: e.nic.clone(),
            synced: e.source == Source::Synced,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    entries: Vec<VmEntry>,
    state_file: Option<PathBuf>,
    index: Index,
}

/// Look-ups that a kernel event on one tap needs, so that its cost does
/// not grow with the number of VMs: rebuilt whenever the entries change.
#[derive(Clone, Debug, Default)]
struct Index {
    by_address: HashMap<IpAddr, usize>,
    by_interface: HashMap<String, Vec<usize>>,
    owners: Owners,
}

/// What a sync changes, by VM name, and the inventory it leaves.
#[derive(Debug, Default)]
pub struct SyncPlan {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
    entries: Vec<VmEntry>,
}

impl std::fmt::Display for SyncPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (sign, names) in [
            ("+", &self.added),
            ("-", &self.removed),
            ("~", &self.changed),
        ] {
            for n in names {
                writeln!(f, "{sign} {n}")?;
            }
        }
        write!(
            f,
            "{} added, {} removed, {} changed, {} unchanged",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged
        )
    }
}

/// Whether two entries say the same (their state aside).
fn same(a: &VmEntry, b: &VmEntry) -> bool {
    a.interface == b.interface
        && a.addresses == b.addresses
        && a.asn == b.asn
        && a.prefixes == b.prefixes
        && a.mac == b.mac
}

/// Every prefix an entry owns, with the owner's name: one copy shared by
/// every VM session's policy snapshot.
pub type Owners = Arc<[(PrefixPattern, String)]>;

impl Inventory {
    pub fn new(config_entries: Vec<VmEntry>, state_dir: Option<&Path>) -> Inventory {
        let mut i = Inventory {
            entries: config_entries,
            state_file: state_dir.map(|d| d.join("vms.json")),
            index: Index::default(),
        };
        i.reindex();
        i
    }

    fn reindex(&mut self) {
        let mut index = Index::default();
        for (i, e) in self.entries.iter().enumerate() {
            for a in &e.addresses {
                index.by_address.insert(*a, i);
            }
            if let Some(name) = &e.interface {
                index.by_interface.entry(name.clone()).or_default().push(i);
            }
        }
        index.owners = self
            .entries
            .iter()
            .flat_map(|e| e.prefixes.iter().map(|p| (*p, e.name.clone())))
            .collect();
        self.index = index;
    }

    pub fn entries(&self) -> &[VmEntry] {
        &self.entries
    }

    /// The prefixes the entries own, and their owners.
    pub fn owners(&self) -> &Owners {
        &self.index.owners
    }

    /// The entry listing `addr`, whatever its interface.
    pub fn by_address(&self, addr: &IpAddr) -> Option<&VmEntry> {
        self.index.by_address.get(addr).map(|&i| &self.entries[i])
    }

    /// The entries that name `interface`.
    pub fn on_interface<'a>(&'a self, interface: &str) -> impl Iterator<Item = &'a VmEntry> + 'a {
        self.index
            .by_interface
            .get(interface)
            .into_iter()
            .flatten()
            .map(|&i| &self.entries[i])
    }

    /// Loads the registrations kept by an earlier run. A broken state file
    /// is reported and left as it is, never overwritten silently.
    pub fn load_registrations(&mut self) -> Result<usize, InventoryError> {
        let Some(f) = self.state_file.clone() else {
            return Ok(0);
        };
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(InventoryError::StateFile { path: f, source }),
        };
        let regs: Vec<Registration> =
            serde_json::from_str(&text).map_err(|source| InventoryError::StateFileSyntax {
                path: f.clone(),
                source,
            })?;
        // All or nothing: a broken entry leaves the inventory as it was.
        let before = self.entries.len();
        for r in &regs {
            let e = r
                .to_entry()
                .and_then(|e| self.check_new(&e).map(|_| e))
                .map_err(|reason| InventoryError::InStateFile {
                    path: f.clone(),
                    reason: Box::new(reason),
                });
            match e {
                Ok(e) => self.entries.push(e),
                Err(e) => {
                    self.entries.truncate(before);
                    return Err(e);
                }
            }
        }
        self.reindex();
        Ok(regs.len())
    }

    fn save(&self) -> Result<(), InventoryError> {
        let Some(f) = &self.state_file else {
            return Ok(());
        };
        let regs: Vec<Registration> = self
            .entries
            .iter()
            .filter(|e| e.source != Source::Config)
            .map(Registration::from_entry)
            .collect();
        if let Some(d) = f.parent() {
            std::fs::create_dir_all(d).map_err(|source| InventoryError::StateFile {
                path: d.to_path_buf(),
                source,
            })?;
        }
        // Write then rename, so a crash never leaves half a file.
        let tmp = f.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&regs).map_err(|source| {
            InventoryError::StateFileSyntax {
                path: f.clone(),
                source,
            }
        })?;
        std::fs::write(&tmp, text).map_err(|source| InventoryError::StateFile {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, f).map_err(|source| InventoryError::StateFile {
            path: f.clone(),
            source,
        })
    }

    /// Why `e` cannot join the inventory, if it cannot.
    fn check_new(&self, e: &VmEntry) -> Result<(), InventoryError> {
        match self.entries.iter().find_map(|o| e.conflict(o)) {
            Some(c) => Err(InventoryError::Taken(c)),
            None => Ok(()),
        }
    }

    /// Replaces the entries from the config file (a reload), keeping the
    /// registrations; nothing changes if the new set conflicts.
    pub fn replace_config(&mut self, entries: Vec<VmEntry>) -> Result<(), InventoryError> {
        let mut next = Inventory {
            entries,
            state_file: self.state_file.clone(),
            index: Index::default(),
        };
        for e in self.entries.iter().filter(|e| e.source != Source::Config) {
            next.check_new(e)
                .map_err(|reason| InventoryError::ConflictsWithConfig {
                    name: e.name.clone(),
                    reason: Box::new(reason),
                })?;
            next.entries.push(e.clone());
        }
        *self = next;
        self.reindex();
        Ok(())
    }

    /// Adds an entry from the config file (not persisted).
    pub fn register_config(&mut self, e: VmEntry) -> Result<(), InventoryError> {
        self.check_new(&e)?;
        self.entries.push(e);
        self.reindex();
        Ok(())
    }

    /// Registers a VM at run time and persists the registration.
    pub fn register(&mut self, e: VmEntry) -> Result<(), InventoryError> {
        self.check_new(&e)?;
        self.entries.push(e);
        if let Err(err) = self.save() {
            self.entries.pop();
            return Err(err);
        }
        self.reindex();
        Ok(())
    }

    /// Removes a registered VM: every NIC of it, or (`nic`) that NIC
    /// only. Entries from the config file or a sync stay.
    pub fn unregister(&mut self, name: &str, nic: Option<&str>) -> Result<usize, InventoryError> {
        let of_vm = |e: &VmEntry| e.name == name;
        let Some(first) = self.entries.iter().find(|e| of_vm(e)) else {
            return Err(InventoryError::NotFound(name.to_string()));
        };
        match first.source {
            Source::Config => return Err(InventoryError::FromConfig(name.to_string())),
            Source::Synced => return Err(InventoryError::FromSync(name.to_string())),
            Source::Registered => {}
        }
        // A NIC's removal also takes a registration of the whole VM (made
        // before its NICs were registered one by one): the NIC's own comes
        // next.
        let gone = |e: &VmEntry| {
            of_vm(e) && nic.is_none_or(|n| e.nic.is_none() || e.nic.as_deref() == Some(n))
        };
        let n = self.entries.iter().filter(|e| gone(e)).count();
        if n == 0 {
            return Err(InventoryError::NicNotFound {
                name: name.to_string(),
                nic: nic.unwrap_or_default().to_string(),
            });
        }
        let kept = self.entries.clone();
        self.entries.retain(|e| !gone(e));
        if let Err(err) = self.save() {
            self.entries = kept;
            return Err(err);
        }
        self.reindex();
        Ok(n)
    }

    /// What `tapir vm sync` would change: the synced entries become
    /// exactly `next`, as one change; registrations and the config's
    /// entries stay. Checked whole before anything changes.
    pub fn sync_plan(&self, next: &[VmEntry]) -> Result<SyncPlan, InventoryError> {
        let mut plan = SyncPlan::default();
        let key = |e: &VmEntry| (e.name.clone(), e.nic.clone());
        let old: Vec<&VmEntry> = self
            .entries
            .iter()
            .filter(|e| e.source == Source::Synced)
            .collect();
        let mut trial = Inventory {
            entries: self
                .entries
                .iter()
                .filter(|e| e.source != Source::Synced)
                .cloned()
                .collect(),
            state_file: None,
            index: Index::default(),
        };
        for (i, e) in next.iter().enumerate() {
            if next[..i].iter().any(|o| key(o) == key(e)) {
                return Err(InventoryError::SyncedTwice(e.name.clone()));
            }
        }
        for e in next {
            let mut e = e.clone();
            e.source = Source::Synced;
            e.missing_since = None;
            trial.check_new(&e)?;
            match old.iter().find(|o| key(o) == key(&e)) {
                None => plan.added.push(e.name.clone()),
                Some(o) if !same(o, &e) => plan.changed.push(e.name.clone()),
                Some(_) => plan.unchanged += 1,
            }
            trial.entries.push(e);
        }
        for o in &old {
            if !next.iter().any(|e| key(e) == key(o)) {
                plan.removed.push(o.name.clone());
            }
        }
        plan.entries = trial.entries;
        Ok(plan)
    }

    /// Applies a plan from [`Inventory::sync_plan`] and keeps it.
    pub fn sync(&mut self, plan: SyncPlan) -> Result<(), InventoryError> {
        let kept = std::mem::replace(&mut self.entries, plan.entries);
        if let Err(err) = self.save() {
            self.entries = kept;
            return Err(err);
        }
        self.reindex();
        Ok(())
    }

    /// Marks each registration present or missing (`present` says whether
    /// its VM is where it should be), and drops those missing longer than
    /// `grace`; returns the names dropped.
    pub fn expire(
        &mut self,
        now: std::time::Instant,
        grace: std::time::Duration,
        present: impl Fn(&VmEntry) -> bool,
    ) -> Vec<String> {
        let mut gone = Vec::new();
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.source == Source::Registered)
        {
            match (present(e), e.missing_since) {
                (true, _) => e.missing_since = None,
                (false, None) => e.missing_since = Some(now),
                (false, Some(t)) if now.duration_since(t) >= grace => {
                    gone.push((e.name.clone(), e.nic.clone()))
                }
                (false, Some(_)) => {}
            }
        }
        if gone.is_empty() {
            return Vec::new();
        }
        let kept = self.entries.clone();
        self.entries
            .retain(|e| !gone.contains(&(e.name.clone(), e.nic.clone())));
        if let Err(err) = self.save() {
            tracing::warn!(error = %err, "registrations not saved; kept");
            self.entries = kept;
            return Vec::new();
        }
        self.reindex();
        gone.into_iter().map(|(name, _)| name).collect()
    }

    /// The entry for a VM at `addr` on `interface`.
    pub fn find(&self, interface: &str, addr: &IpAddr) -> Option<&VmEntry> {
        self.by_address(addr)
            .filter(|e| e.interface.as_deref().is_none_or(|i| i == interface))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, addr: &str, prefix: &str) -> VmEntry {
        Registration {
            name: name.into(),
            interface: None,
            addresses: vec![addr.parse().unwrap()],
            asn: None,
            prefixes: vec![prefix.into()],
            mac: None,
            nic: None,
            synced: false,
        }
        .to_entry()
        .unwrap()
    }

    #[test]
    fn registrations_persist_and_conflicts_are_refused() {
        let dir = std::env::temp_dir().join(format!("tapir-inv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut inv = Inventory::new(vec![], Some(&dir));
        inv.register(reg("a", "10.192.24.11", "10.3.0.1/32"))
            .unwrap();
        assert!(matches!(
            inv.register(reg("a", "10.192.24.12", "10.3.0.2/32")),
            Err(InventoryError::Taken(Conflict::Name(n))) if n == "a"
        ));
        assert!(matches!(
            inv.register(reg("b", "10.192.24.11", "10.3.0.2/32")),
            Err(InventoryError::Taken(Conflict::Address { owner, .. })) if owner == "a"
        ));
        assert!(matches!(
            inv.register(reg("b", "10.192.24.12", "10.3.0.0/24+")),
            Err(InventoryError::Taken(Conflict::Prefix { owner, .. })) if owner == "a"
        ));
        inv.register(reg("b", "10.192.24.12", "10.3.0.2/32"))
            .unwrap();
        let mut again = Inventory::new(vec![], Some(&dir));
        assert_eq!(again.load_registrations().unwrap(), 2);
        assert_eq!(
            again
                .find("tap12", &"10.192.24.12".parse().unwrap())
                .unwrap()
                .name,
            "b"
        );
        again.unregister("a", None).unwrap();
        let mut third = Inventory::new(vec![], Some(&dir));
        assert_eq!(third.load_registrations().unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_vm_keeps_its_registration_for_the_grace_period_only() {
        let mut inv = Inventory::new(vec![], None);
        inv.register(reg("a", "10.192.24.11", "10.3.0.1/32"))
            .unwrap();
        inv.register(reg("b", "10.192.24.12", "10.3.0.2/32"))
            .unwrap();
        let t = std::time::Instant::now();
        let grace = std::time::Duration::from_secs(10);
        let here =
            |names: &'static [&'static str]| move |e: &VmEntry| names.contains(&e.name.as_str());
        assert!(inv.expire(t, grace, here(&["b"])).is_empty());
        // a comes back within the grace period: it starts again.
        let t5 = t + std::time::Duration::from_secs(5);
        assert!(inv.expire(t5, grace, here(&["a", "b"])).is_empty());
        assert!(inv.expire(t5, grace, here(&["b"])).is_empty());
        assert!(inv.expire(t5 + grace / 2, grace, here(&["b"])).is_empty());
        assert_eq!(inv.expire(t5 + grace, grace, here(&["b"])), ["a"]);
        let names: Vec<&str> = inv.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        // Without an address, no registration at all.
        let e = Registration {
            name: "c".into(),
            interface: Some("tap13".into()),
            addresses: vec![],
            asn: None,
            prefixes: vec!["10.3.0.3/32".into()],
            mac: None,
            nic: None,
            synced: false,
        }
        .to_entry()
        .unwrap_err();
        assert!(matches!(e, InventoryError::NoAddress(_)), "{e}");
        assert!(e.to_string().contains("never a tap name alone"), "{e}");
        // A link-local address is anybody's without the tap it is on.
        let ll = |interface: Option<&str>| {
            Registration {
                name: "d".into(),
                interface: interface.map(str::to_string),
                addresses: vec!["fe80::2022:22ff:fe22:2201".parse().unwrap()],
                asn: None,
                prefixes: vec!["10.3.0.4/32".into()],
                mac: None,
                nic: None,
                synced: false,
            }
            .to_entry()
        };
        assert!(matches!(
            ll(None),
            Err(InventoryError::LinkLocalWithoutInterface { .. })
        ));
        assert!(ll(Some("tap12")).is_ok());
    }

    fn nic(name: &str, nic: Option<&str>, addr: &str) -> VmEntry {
        let mut e = reg(name, addr, "10.3.0.0/24");
        e.nic = nic.map(str::to_string);
        e
    }

    #[test]
    fn the_nics_of_one_vm_share_its_prefixes_and_leave_one_by_one() {
        let mut inv = Inventory::new(Vec::new(), None);
        inv.register(nic("lb", Some("a"), "10.192.24.12")).unwrap();
        inv.register(nic("lb", Some("b"), "10.192.24.14")).unwrap();
        let e = inv
            .register(nic("lb", Some("b"), "10.192.24.15"))
            .unwrap_err();
        assert!(e.to_string().contains("NIC b is already"), "{e}");
        let e = inv.register(nic("lb", None, "10.192.24.16")).unwrap_err();
        assert!(e.to_string().contains("as a whole VM and as NICs"), "{e}");
        let e = inv
            .register(nic("lb", Some("c"), "10.192.24.12"))
            .unwrap_err();
        assert!(e.to_string().contains("address 10.192.24.12"), "{e}");
        // Another VM may not share the prefixes.
        let e = inv
            .register(nic("other", None, "10.192.24.20"))
            .unwrap_err();
        assert!(e.to_string().contains("owned by VM `lb`"), "{e}");
        let e = inv.unregister("lb", Some("z")).unwrap_err();
        assert!(e.to_string().contains("no NIC `z`"), "{e}");
        assert_eq!(inv.unregister("lb", Some("a")).unwrap(), 1);
        assert_eq!(inv.entries().len(), 1);
        assert_eq!(inv.unregister("lb", None).unwrap(), 1);
        assert!(inv.entries().is_empty());
        // A VM registered whole (before its NICs were, one by one): a
        // NIC's removal takes the whole entry, and the NIC's own fits.
        inv.register(nic("old", None, "10.192.24.30")).unwrap();
        assert_eq!(inv.unregister("old", Some("a")).unwrap(), 1);
        inv.register(nic("old", Some("a"), "10.192.24.30")).unwrap();
        // Two NICs of one VM in one sync file are no duplicate.
        let plan = inv
            .sync_plan(&[
                nic("s", Some("a"), "10.192.24.40"),
                nic("s", Some("b"), "10.192.24.41"),
            ])
            .unwrap_err();
        assert!(plan.to_string().contains("owned by VM `old`"), "{plan}");
    }

    #[test]
    fn a_sync_is_planned_whole_and_keeps_registrations() {
        let mut inv = Inventory::new(Vec::new(), None);
        inv.register(reg("hooked", "10.192.24.12", "10.3.0.2/32"))
            .unwrap();
        let a = reg("a", "10.192.24.31", "10.3.1.1/32");
        let b = reg("b", "10.192.24.32", "10.3.1.2/32");
        let plan = inv.sync_plan(&[a.clone(), b.clone()]).unwrap();
        assert_eq!((plan.added.len(), plan.removed.len()), (2, 0));
        inv.sync(plan).unwrap();
        let a2 = reg("a", "10.192.24.31", "10.3.1.9/32");
        let plan = inv.sync_plan(&[a2]).unwrap();
        assert_eq!(plan.changed, ["a"]);
        assert_eq!(plan.removed, ["b"]);
        assert!(plan
            .to_string()
            .ends_with("0 added, 1 removed, 1 changed, 0 unchanged"));
        inv.sync(plan).unwrap();
        assert_eq!(inv.entries().len(), 2);
        assert!(inv.entries().iter().any(|e| e.name == "hooked"));
        // The same name twice in one file, or a prefix of a registered VM:
        // refused, nothing planned.
        let e = inv.sync_plan(&[a.clone(), a.clone()]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = inv
            .sync_plan(&[reg("c", "10.192.24.33", "10.3.0.2/32")])
            .unwrap_err();
        assert!(e.to_string().contains("hooked"), "{e}");
        assert!(matches!(
            inv.unregister("a", None),
            Err(InventoryError::FromSync(_))
        ));
    }

    #[test]
    fn a_mac_is_six_bytes_and_survives_the_state_file() {
        let m: Mac = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>(), Ok(m));
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:0g",
            "5:54:00:ab:cd:0f0",
        ] {
            assert!(
                bad.parse::<Mac>()
                    .unwrap_err()
                    .to_string()
                    .contains("not a MAC"),
                "{bad}"
            );
        }
        let mut r = Registration {
            name: "e".into(),
            interface: Some("tap13".into()),
            addresses: vec!["10.192.24.13".parse().unwrap()],
            asn: None,
            prefixes: vec![],
            mac: Some("52:54:00:ab:cd:zz".into()),
            nic: None,
            synced: false,
        };
        assert!(r.to_entry().unwrap_err().to_string().contains("VM `e`"));
        r.mac = Some("52:54:00:ab:cd:0f".into());
        assert_eq!(r.to_entry().unwrap().mac, Some(m));
        let dir = std::env::temp_dir().join(format!("tapir-inv-mac-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut inv = Inventory::new(vec![], Some(&dir));
        inv.register(r.to_entry().unwrap()).unwrap();
        let mut again = Inventory::new(vec![], Some(&dir));
        again.load_registrations().unwrap();
        assert_eq!(again.entries()[0].mac, Some(m));
        std::fs::remove_dir_all(&dir).unwrap();
        // A state file from before MACs loads as it is.
        let old = r#"[{"name":"f","interface":null,"addresses":["10.192.24.14"],"asn":null,"prefixes":[]}]"#;
        let regs: Vec<Registration> = serde_json::from_str(old).unwrap();
        assert_eq!(regs[0].mac, None);
    }
}

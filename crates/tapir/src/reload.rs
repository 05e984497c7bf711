//! `tapir reload`: what a new config file changes and what each change
//! will do (nothing visible, a session reset, a restart of tapir), worked
//! out before anything is touched. `reload --dry-run` prints the plan;
//! `reload` applies it, and the running config keeps what waits for a
//! restart, so that it is reported again until then.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::northbound::config::{Config, Neighbor};

/// What one change does when applied.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Applied at once; no session is reset.
    Applied,
    /// A new session starts.
    SessionStarts,
    /// The session closes (Cease, Peer De-configured).
    SessionStops,
    /// The session closes and starts again (Cease, Other Configuration
    /// Change).
    SessionResets,
    /// The open session keeps what it negotiated; the next one gets it.
    NextSession,
    /// Not applied: it takes effect when tapir restarts.
    NeedsRestart,
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Effect::Applied => "applied, no session reset",
            Effect::SessionStarts => "a session starts",
            Effect::SessionStops => "its session closes",
            Effect::SessionResets => "its session resets",
            Effect::NextSession => "from its next session on",
            Effect::NeedsRestart => "NEEDS A RESTART of tapir",
        })
    }
}

/// One difference between the running config and the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Change {
    /// What changed, e.g. `neighbor tor-v4: hold-time 90 → 30`.
    pub what: String,
    pub effect: Effect,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.effect)
    }
}

/// What `reload` did, or (`dry_run`) would do.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub dry_run: bool,
    pub changes: Vec<Change>,
}

impl Report {
    /// The changes that wait for a restart.
    pub fn pending_restart(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.effect == Effect::NeedsRestart)
    }
}

/// How the last reload went, for the metrics: whether it was applied,
/// when one last was, and how many of its changes wait for a restart.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub ok: bool,
    /// The last reload applied (or the start, before any).
    pub applied_at: std::time::SystemTime,
    pub pending_restart: usize,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            ok: true,
            applied_at: std::time::SystemTime::now(),
            pending_restart: 0,
        }
    }
}

impl Outcome {
    /// After a reload (not a dry run): a refused one keeps the last
    /// applied time and what was pending.
    pub fn record<E>(&mut self, result: &Result<Report, E>) {
        self.ok = result.is_ok();
        if let Ok(r) = result {
            self.applied_at = std::time::SystemTime::now();
            self.pending_restart = r.pending_restart().count();
        }
    }
}

/// Changes a reload cannot make at all: the file is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("[gateway] (the guest role) was added or removed: restart tapir to change roles")]
    RoleChanged,
    #[error("VM groups were added to or removed from a daemon without/with them: restart tapir")]
    GroupsChanged,
}

/// Every difference between `running` and `file`, with its effect.
/// `bfd_running`: whether the BFD task was started (it is only started
/// when some session wants BFD at start).
/// `fib_running`: whether the FIB writer was started (`[kernel] install`
/// at start); without it, `[kernel]` waits for a restart.
pub fn plan(
    running: &Config,
    file: &Config,
    bfd_running: bool,
    fib_running: bool,
) -> Result<Vec<Change>, Refusal> {
    if file.gateway.is_some() != running.gateway.is_some() {
        return Err(Refusal::RoleChanged);
    }
    if file.groups.is_empty() != running.groups.is_empty() {
        return Err(Refusal::GroupsChanged);
    }
    let mut out = Vec::new();
    let mut change = |what: String, effect| out.push(Change { what, effect });
    let restart = Effect::NeedsRestart;
    if file.router_id != running.router_id {
        change(
            format!("router-id {} → {}", running.router_id, file.router_id),
            restart,
        );
    }
    if file.local_as != running.local_as {
        change(
            format!("local-as {} → {}", running.local_as, file.local_as),
            restart,
        );
    }
    if file.listen != running.listen {
        change(
            format!("listen {:?} → {:?}", running.listen, file.listen),
            restart,
        );
    }
    if file.kernel != running.kernel {
        let (a, b) = (&running.kernel, &file.kernel);
        let mut d = Vec::new();
        if a.install != b.install {
            d.push(format!("install {} → {}", a.install, b.install));
        }
        if a.protocol != b.protocol {
            d.push(format!("protocol {} → {}", a.protocol, b.protocol));
        }
        if a.metric != b.metric {
            d.push(format!("metric {} → {}", a.metric, b.metric));
        }
        if a.scan_interval != b.scan_interval {
            d.push(format!(
                "scan-interval {} → {}",
                a.scan_interval.as_secs(),
                b.scan_interval.as_secs()
            ));
        }
        if a.multipath != b.multipath {
            d.push(format!("multipath {} → {}", a.multipath, b.multipath));
        }
        let effect = match fib_running {
            true => Effect::Applied,
            false => restart,
        };
        change(format!("[kernel] {}", d.join(", ")), effect);
    }
    if file.metrics != running.metrics {
        change(
            format!(
                "[metrics] listen {:?} → {:?}",
                running.metrics, file.metrics
            ),
            restart,
        );
    }
    if file.bmp != running.bmp || file.bmp_neighbors != running.bmp_neighbors {
        let list = |c: &Config| {
            c.bmp
                .iter()
                .map(|b| b.address.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        change(
            format!(
                "[[bmp]] {:?} → {:?} (or its statistics-interval)",
                list(running),
                list(file)
            ),
            restart,
        );
    }
    if file.state_dir != running.state_dir {
        change(
            format!(
                "state-dir {} → {}",
                shown(running.state_dir.as_deref()),
                shown(file.state_dir.as_deref())
            ),
            restart,
        );
    }
    if file.drain != running.drain {
        change("[drain]".into(), restart);
    }
    if file.gateway != running.gateway {
        change("[gateway]".into(), restart);
    }
    for s in &file.services {
        match running.services.iter().find(|o| o.name == s.name) {
            Some(o) if o == s => {}
            Some(_) => change(
                format!("service {}: changed: its checks start again, its prefixes withdrawn until they pass", s.name),
                Effect::Applied,
            ),
            None => change(
                format!("service {} added: announced once its checks pass", s.name),
                Effect::Applied,
            ),
        }
    }
    for o in &running.services {
        if !file.services.iter().any(|s| s.name == o.name) {
            change(
                format!("service {} removed: its prefixes withdrawn", o.name),
                Effect::Applied,
            );
        }
    }
    if crate::daemon::wants_bfd(file) && !bfd_running {
        change("BFD (no session had it at start)".into(), restart);
    }
    let (old, new): (BTreeSet<_>, BTreeSet<_>) = (
        running.announce.iter().collect(),
        file.announce.iter().collect(),
    );
    for p in new.difference(&old) {
        change(format!("announce {p}: announced"), Effect::Applied);
    }
    for p in old.difference(&new) {
        change(format!("announce {p}: withdrawn"), Effect::Applied);
    }
    let gr = file.graceful_restart.restart_time != running.graceful_restart.restart_time;
    for n in &file.neighbors {
        match running.neighbors.iter().find(|o| o.name == n.name) {
            None => change(
                format!("neighbor {} ({}) added", n.name, n.address),
                Effect::SessionStarts,
            ),
            Some(o) => neighbor_changes(o, n, gr, &mut change),
        }
    }
    for o in &running.neighbors {
        if !file.neighbors.iter().any(|n| n.name == o.name) {
            change(format!("neighbor {} removed", o.name), Effect::SessionStops);
        }
    }
    let (g0, g1) = (&running.graceful_restart, &file.graceful_restart);
    if g0.restart_time != g1.restart_time {
        change(
            format!(
                "[graceful-restart] restart-time {} → {}",
                g0.restart_time, g1.restart_time
            ),
            Effect::NextSession,
        );
    }
    if g0.helper_max_time != g1.helper_max_time {
        change(
            format!(
                "[graceful-restart] helper-max-time {} → {}",
                g0.helper_max_time, g1.helper_max_time
            ),
            Effect::Applied,
        );
    }
    if g0.deferral != g1.deferral {
        change(
            format!(
                "[graceful-restart] deferral {:?} → {:?}",
                g0.deferral, g1.deferral
            ),
            restart,
        );
    }
    if file.groups != running.groups {
        for g in &file.groups {
            match running.groups.iter().find(|o| o.name == g.name) {
                Some(o) if o == g => {}
                Some(_) => change(
                    format!(
                        "group {}: its import rules apply now; its session settings to VM sessions made from now on (a session that exists keeps its own)",
                        g.name
                    ),
                    Effect::Applied,
                ),
                None => change(format!("group {} added", g.name), Effect::Applied),
            }
        }
        for o in &running.groups {
            if !file.groups.iter().any(|g| g.name == o.name) {
                change(
                    format!("group {} removed: its VM sessions close", o.name),
                    Effect::SessionStops,
                );
            }
        }
    }
    if file.vms != running.vms {
        let names =
            |c: &Config| -> BTreeSet<String> { c.vms.iter().map(|v| v.name.clone()).collect() };
        let (a, b) = (names(running), names(file));
        let changed = file
            .vms
            .iter()
            .filter(|v| running.vms.iter().any(|o| o.name == v.name && o != *v))
            .count();
        change(
            format!(
                "inventory: {} added, {} removed, {changed} changed: VMs' routes judged again",
                b.difference(&a).count(),
                a.difference(&b).count()
            ),
            Effect::Applied,
        );
    }
    if file.registration_grace != running.registration_grace {
        change(
            format!(
                "registration-grace {:?} → {:?}",
                running.registration_grace, file.registration_grace
            ),
            Effect::Applied,
        );
    }
    Ok(out)
}

/// A path as the operator wrote it, or `none`.
fn shown(p: Option<&std::path::Path>) -> String {
    p.map_or("none".into(), |p| p.display().to_string())
}

/// A static neighbor's changes.
fn neighbor_changes(o: &Neighbor, n: &Neighbor, gr: bool, change: &mut impl FnMut(String, Effect)) {
    let name = &n.name;
    if session_changed(o, n) {
        change(
            format!("neighbor {name}: address, port, AS, families, keys or TTL"),
            Effect::SessionResets,
        );
        return;
    }
    let s = (&o.session, &n.session);
    if s.0.hold_time != s.1.hold_time
        || s.0.connect_retry != s.1.connect_retry
        || s.0.bfd != s.1.bfd
        || s.0.limits != s.1.limits
        || s.0.import_rules != s.1.import_rules
        || gr
    {
        change(
            format!("neighbor {name}: timers, BFD, limits or import rules"),
            Effect::NextSession,
        );
    }
    if o.export != n.export {
        change(
            format!("neighbor {name}: export policy {}", n.export.name),
            Effect::Applied,
        );
    }
}

/// Whether the session itself changed (it must reset).
pub fn session_changed(a: &Neighbor, b: &Neighbor) -> bool {
    a.address != b.address
        || a.port != b.port
        || a.session.remote_as != b.session.remote_as
        || a.local_address != b.local_address
        || a.passive != b.passive
        || a.families != b.families
        || a.kernel_import != b.kernel_import
        || a.session.password != b.session.password
        || a.session.ttl_security != b.session.ttl_security
        || a.session.tcp_ao != b.session.tcp_ao
}

/// The config that runs after a reload: the file's, except what needs a
/// restart, which keeps its running value (and stays pending).
pub fn effective(running: &Config, mut file: Config, fib_running: bool) -> Config {
    if !fib_running {
        file.kernel = running.kernel.clone();
    }
    file.router_id = running.router_id;
    file.local_as = running.local_as;
    file.listen = running.listen.clone();
    file.metrics = running.metrics;
    file.bmp = running.bmp.clone();
    file.bmp_neighbors = running.bmp_neighbors;
    file.state_dir = running.state_dir.clone();
    file.drain = running.drain;
    file.gateway = running.gateway.clone();
    file.graceful_restart.deferral = running.graceful_restart.deferral;
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    const BASE: &str = r#"
router-id = "10.0.0.1"
local-as = 64612
announce = ["192.0.2.0/24"]
[[neighbor]]
name = "tor-v4"
address = "10.0.0.2"
remote-as = 65020
"#;

    #[test]
    fn an_unchanged_file_changes_nothing() {
        assert_eq!(plan(&load(BASE), &load(BASE), false, true), Ok(vec![]));
    }

    #[test]
    fn each_change_says_what_it_will_do() {
        let new = BASE
            .replace("10.0.0.1", "10.0.0.9")
            .replace("192.0.2.0/24", "198.51.100.0/24")
            .replace("65020", "65021")
            + "[[neighbor]]\nname = \"tor-b\"\naddress = \"10.0.0.3\"\nremote-as = 65020\n[kernel]\nmetric = 30\n";
        let p = plan(&load(BASE), &load(&new), false, true).unwrap();
        let text: Vec<String> = p.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            text,
            [
                "router-id 10.0.0.1 → 10.0.0.9: NEEDS A RESTART of tapir",
                "[kernel] metric 180 → 30: applied, no session reset",
                "announce 198.51.100.0/24: announced: applied, no session reset",
                "announce 192.0.2.0/24: withdrawn: applied, no session reset",
                "neighbor tor-v4: address, port, AS, families, keys or TTL: its session resets",
                "neighbor tor-b (10.0.0.3) added: a session starts",
            ]
        );
    }

    #[test]
    fn what_needs_a_restart_keeps_running_and_stays_pending() {
        let (running, file) = (load(BASE), load(&BASE.replace("10.0.0.1", "10.0.0.9")));
        let now = effective(&running, file.clone(), true);
        assert_eq!(now.router_id, running.router_id);
        let again = plan(&now, &file, false, true).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].effect, Effect::NeedsRestart);
    }

    #[test]
    fn a_prefix_moving_from_a_service_to_announce_is_applied() {
        let guest = "router-id = \"10.0.0.1\"\nlocal-as = 64612\n[gateway]\nremote-as = 64612\n\
            [[service]]\nname = \"dns\"\nprefixes = [\"10.3.0.1/32\"]\n\
            check = [{ type = \"tcp\", address = \"10.3.0.1:53\" }]\n";
        let moved = "router-id = \"10.0.0.1\"\nlocal-as = 64612\nannounce = [\"10.3.0.1/32\"]\n\
            [gateway]\nremote-as = 64612\n";
        let (running, file) = (load(guest), load(moved));
        let p: Vec<String> = plan(&running, &file, false, true)
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            p,
            [
                "service dns removed: its prefixes withdrawn: applied, no session reset",
                "announce 10.3.0.1/32: announced: applied, no session reset",
            ]
        );
        let now = effective(&running, file, true);
        assert!(now.services.is_empty() && now.announce.len() == 1);
    }

    #[test]
    fn a_role_change_is_refused() {
        let guest = format!("{BASE}[gateway]\nremote-as = 64612\n");
        assert_eq!(
            plan(&load(BASE), &load(&guest), false, true),
            Err(Refusal::RoleChanged)
        );
    }
}

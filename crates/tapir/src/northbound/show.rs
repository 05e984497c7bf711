//! Tables for `tapir show …`, aligned like `birdc show protocols`.

use crate::northbound::control::VmStatus;
use crate::northbound::control::{PeerStatus, RouteEntry};

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{:w$}  ", c, w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect(), &mut out);
    }
    out
}

pub fn since(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}")
}

pub fn peers(peers: &[PeerStatus]) -> String {
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.interface.clone().unwrap_or_else(|| "-".into()),
                match &p.interface {
                    Some(i) if !p.address.contains('%') && p.address.starts_with("fe80") => {
                        format!("{}%{i}", p.address)
                    }
                    _ => p.address.clone(),
                },
                p.asn.map_or(p.remote_as.clone(), |a| a.to_string()),
                p.state.clone(),
                since(p.since_secs),
                format!(
                    "{}/{}/{}",
                    p.routes_received, p.routes_accepted, p.routes_exported
                ),
                p.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "Name",
            "Interface",
            "Address",
            "AS",
            "State",
            "Since",
            "Rcvd/Acc/Sent",
            "Last error",
        ],
        &rows,
    )
}

pub fn routes(routes: &[RouteEntry]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let mut extra = Vec::new();
            if let Some(m) = r.med {
                extra.push(format!("med {m}"));
            }
            if let Some(l) = r.local_pref {
                extra.push(format!("local-pref {l}"));
            }
            if !r.communities.is_empty() {
                extra.push(format!("communities {}", r.communities.join(" ")));
            }
            if !r.large_communities.is_empty() {
                extra.push(format!(
                    "large-communities {}",
                    r.large_communities.join(" ")
                ));
            }
            vec![
                match (r.best, r.installed, &r.kernel_error) {
                    (true, true, _) => format!("{} *K", r.prefix),
                    (true, false, Some(_)) => format!("{} *K!", r.prefix),
                    (true, false, None) => format!("{} *", r.prefix),
                    _ => r.prefix.clone(),
                },
                r.next_hop.clone(),
                r.peer.clone(),
                if r.as_path.is_empty() {
                    "-".into()
                } else {
                    r.as_path.clone()
                },
                r.origin.clone(),
                match (&r.rejected_reason, &r.kernel_error) {
                    (Some(why), _) => format!("REFUSED: {why}"),
                    (None, Some(e)) => format!("KERNEL REFUSED: {e}"),
                    (None, None) => extra.join(", "),
                },
            ]
        })
        .collect();
    let mut out = table(
        &[
            "Prefix",
            "Next hop",
            "From",
            "AS path",
            "Origin",
            "Attributes",
        ],
        &rows,
    );
    if routes.iter().any(|r| r.best) {
        out.push_str("(* best path, K in the kernel)\n");
    }
    out
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |m| format!("{:.1} s", m as f64 / 1000.0))
}

fn counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `show peer`: one session in full, like `birdc show protocols all`.
pub fn peer(p: &PeerStatus, bfd: Option<&crate::southbound::bfd::BfdStatus>) -> String {
    let mut out = format!("{} ({}", p.name, p.address);
    if let Some(i) = &p.interface {
        out.push_str(&format!(" on {i}"));
    }
    out.push_str(")\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("  {:<18}{v}\n", format!("{k}:")));
    if p.vm.is_some() || p.group.is_some() {
        line(
            "VM",
            format!(
                "{}, group {}",
                p.vm.as_deref().unwrap_or("(not in the inventory)"),
                p.group.as_deref().unwrap_or("-")
            ),
        );
    }
    line("State", format!("{} for {}", p.state, since(p.since_secs)));
    line(
        "Remote AS",
        match (p.asn, &p.remote_id) {
            (Some(a), Some(id)) => format!("{a} (configured {}), router id {id}", p.remote_as),
            _ => format!("configured {}", p.remote_as),
        },
    );
    if let Some(l) = &p.local_address {
        line("Local address", l.clone());
    }
    if !p.families.is_empty() {
        line("Families", p.families.join(", "));
    }
    if !p.peer_capabilities.is_empty() {
        line("Capabilities in", p.peer_capabilities.join(", "));
    }
    line(
        "Hold timer",
        match p.hold_time {
            Some(h) => format!(
                "{h} s (we offer {}), expires in {}",
                p.configured_hold_time,
                ms(p.hold_timer_left_ms)
            ),
            None => format!("we offer {} s", p.configured_hold_time),
        },
    );
    if let Some(k) = p.keepalive {
        line(
            "Keepalive timer",
            format!("{k} s, next in {}", ms(p.keepalive_timer_left_ms)),
        );
    }
    line(
        "Connect retry",
        if p.probing {
            format!(
                "{} s (probing: nothing answers, backed off)",
                p.connect_retry_secs
            )
        } else {
            format!("{} s", p.connect_retry_secs)
        },
    );
    let mut routes = format!(
        "received {}, accepted {}, exported {}",
        p.routes_received, p.routes_accepted, p.routes_exported
    );
    if !p.rejections.is_empty() {
        routes.push_str(&format!("; refused: {}", counts(&p.rejections)));
    }
    line("Routes", routes);
    line("Messages in", counts(&p.messages_received));
    line("Messages out", counts(&p.messages_sent));
    line("Flaps", p.flaps.to_string());
    if let Some(n) = &p.last_notification_sent {
        line("Last sent", n.clone());
    }
    if let Some(n) = &p.last_notification_received {
        line("Last received", n.clone());
    }
    if let Some(e) = &p.last_error {
        line("Last error", e.clone());
    }
    if let Some(b) = bfd {
        line(
            "BFD",
            format!(
                "{}, interval {} ms, detection {} ms, flaps {}",
                b.state, b.interval_ms, b.detection_ms, b.flaps
            ),
        );
    }
    out
}

/// `show status`.
pub fn status(s: &crate::northbound::control::Status) -> String {
    let mut out = format!(
        "tapir {} up {}, router id {}, AS {}\n",
        s.version,
        since(s.uptime_secs),
        s.router_id,
        s.local_as
    );
    let mut line = |k: &str, v: String| out.push_str(&format!("  {:<15}{v}\n", format!("{k}:")));
    line("Config", s.config.clone());
    line(
        "Neighbors",
        format!("{} of {} established", s.neighbors_established, s.neighbors),
    );
    line(
        "VM sessions",
        format!(
            "{} of {} established",
            s.vm_sessions_established, s.vm_sessions
        ),
    );
    line(
        "Loc-RIB",
        format!("{} prefixes, {} paths", s.rib_prefixes, s.rib_paths),
    );
    line("Kernel", format!("{} routes installed", s.kernel_routes));
    line(
        "BFD",
        format!("{} of {} up", s.bfd_sessions_up, s.bfd_sessions),
    );
    if s.restarting {
        line("Restart", "graceful restart in progress".into());
    }
    if !s.tasks.is_empty() {
        let tasks: Vec<String> = s.tasks.iter().map(|(k, n)| format!("{n} {k}")).collect();
        line("Tasks", tasks.join(", "));
    }
    out
}

fn drain_text(d: Option<crate::routing::rib::DrainState>) -> String {
    match d {
        Some(crate::routing::rib::DrainState::Shutdown) => "draining".into(),
        Some(crate::routing::rib::DrainState::Withdrawn) => "withdrawn".into(),
        None => String::new(),
    }
}

pub fn rib(rib: &[crate::routing::rib::LocRibEntry]) -> String {
    let rows: Vec<Vec<String>> = rib
        .iter()
        .map(|r| {
            vec![
                r.prefix.clone(),
                r.from.clone(),
                r.next_hop.clone().unwrap_or_else(|| "-".into()),
                if r.as_path.is_empty() {
                    "-".into()
                } else {
                    r.as_path.clone()
                },
                r.others.join(" "),
                drain_text(r.drain),
            ]
        })
        .collect();
    table(
        &[
            "Prefix",
            "Best from",
            "Next hop",
            "AS path",
            "Other paths from",
            "Drain",
        ],
        &rows,
    )
}

pub fn bfd(s: &[crate::southbound::bfd::BfdStatus]) -> String {
    let rows: Vec<Vec<String>> = s
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                match &b.interface {
                    Some(i) => format!("{}%{i}", b.peer),
                    None => b.peer.clone(),
                },
                b.state.clone(),
                format!("{}/{}", b.local_discriminator, b.remote_discriminator),
                format!("{} ms", b.interval_ms),
                format!("{} ms", b.detection_ms),
            ]
        })
        .collect();
    table(
        &[
            "Name",
            "Peer",
            "State",
            "Discr (local/remote)",
            "Interval",
            "Detection",
        ],
        &rows,
    )
}

pub fn services(s: &[crate::role::health::ServiceStatus]) -> String {
    let rows: Vec<Vec<String>> = s
        .iter()
        .map(|x| {
            vec![
                x.name.clone(),
                x.prefixes.join(" "),
                if x.healthy { "announced" } else { "withdrawn" }.to_string(),
                if x.streak >= 0 {
                    format!("{} passed", x.streak)
                } else {
                    format!("{} failed", -x.streak)
                },
                x.last_error.clone(),
            ]
        })
        .collect();
    table(
        &["Service", "Prefixes", "State", "In a row", "Last error"],
        &rows,
    )
}

pub fn vms(vms: &[VmStatus]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            let sessions: Vec<String> = v
                .sessions
                .iter()
                .map(|s| {
                    let bfd = s
                        .bfd
                        .as_ref()
                        .map_or(String::new(), |b| format!(" bfd {b}"));
                    format!(
                        "{} {} {}/{}{bfd}",
                        s.address, s.state, s.routes_accepted, s.routes_rejected
                    )
                })
                .collect();
            vec![
                match (&v.name, &v.nic) {
                    (Some(n), Some(nic)) => format!("{n} nic {nic}"),
                    (Some(n), None) => n.clone(),
                    (None, _) => "-".into(),
                },
                v.interface.clone().unwrap_or_else(|| "-".into()),
                v.group.clone().unwrap_or_else(|| "-".into()),
                v.source.clone(),
                v.allowed.join(" "),
                if sessions.is_empty() {
                    "absent".into()
                } else {
                    sessions.join(", ")
                },
                drain_text(v.drain),
            ]
        })
        .collect();
    table(
        &[
            "VM",
            "Interface",
            "Group",
            "Source",
            "May announce",
            "Sessions (address state accepted/refused)",
            "Drain",
        ],
        &rows,
    )
}

/// `show routes --why PREFIX`: each neighbor's verdict.
pub fn why(verdicts: &[crate::northbound::control::ExportVerdict]) -> String {
    let rows: Vec<Vec<String>> = verdicts
        .iter()
        .map(|v| {
            vec![
                v.neighbor.clone(),
                v.prefix.clone(),
                if v.sent { "sent" } else { "not sent" }.into(),
                v.reason.clone(),
            ]
        })
        .collect();
    table(&["Neighbor", "Prefix", "Verdict", "Why"], &rows)
}

/// `tapir reload`: each change and what it did (or would do).
pub fn reload(r: &crate::reload::Report) -> String {
    let mut out = String::new();
    if r.changes.is_empty() {
        out.push_str("the file is what runs: nothing to do\n");
    }
    for c in &r.changes {
        out.push_str(&format!("{c}\n"));
    }
    let pending: Vec<&str> = r.pending_restart().map(|c| c.what.as_str()).collect();
    match (r.dry_run, pending.is_empty()) {
        (true, _) => out.push_str("dry run: nothing was changed\n"),
        (false, true) => out.push_str("applied\n"),
        (false, false) => out.push_str(&format!(
            "applied, except what waits for a restart of tapir: {}\n",
            pending.join("; ")
        )),
    }
    out
}

/// `show config`: the running config's text, then what differs in the
/// file.
pub fn config(c: &crate::northbound::control::ConfigView) -> String {
    let mut out = format!("# running: {}\n{}", c.path, c.text);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if let Some(e) = &c.file_error {
        out.push_str(&format!("# the file now: {e}\n"));
    } else if c.pending.is_empty() {
        out.push_str("# the file is what runs\n");
    } else {
        out.push_str("# pending: the file differs from what runs\n");
        for p in &c.pending {
            out.push_str(&format!("#   {p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = table(
            &["Name", "State"],
            &[
                vec!["tor-v4".into(), "Established".into()],
                vec!["x".into(), "Idle".into()],
            ],
        );
        assert_eq!(t, "Name    State\ntor-v4  Established\nx       Idle\n");
    }
}

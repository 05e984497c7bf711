//! Tables for `tapir show …`, aligned like `birdc show protocols`.

use crate::control::{PeerStatus, RouteEntry};
use crate::dynamic::VmStatus;

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
                r.prefix.clone(),
                r.next_hop.clone(),
                r.peer.clone(),
                if r.as_path.is_empty() {
                    "-".into()
                } else {
                    r.as_path.clone()
                },
                r.origin.clone(),
                match &r.rejected_reason {
                    Some(why) => format!("REFUSED: {why}"),
                    None => extra.join(", "),
                },
            ]
        })
        .collect();
    table(
        &[
            "Prefix",
            "Next hop",
            "From",
            "AS path",
            "Origin",
            "Attributes",
        ],
        &rows,
    )
}

fn drain_text(d: Option<crate::rib::DrainState>) -> String {
    match d {
        Some(crate::rib::DrainState::Shutdown) => "draining".into(),
        Some(crate::rib::DrainState::Withdrawn) => "withdrawn".into(),
        None => String::new(),
    }
}

pub fn rib(rib: &[crate::rib::LocRibEntry]) -> String {
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

pub fn bfd(s: &[crate::bfd::BfdStatus]) -> String {
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

pub fn vms(vms: &[VmStatus]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            let sessions: Vec<String> = v
                .sessions
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {}/{}",
                        s.address, s.state, s.routes_accepted, s.routes_rejected
                    )
                })
                .collect();
            vec![
                v.name.clone().unwrap_or_else(|| "-".into()),
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

//! The Loc-RIB's answers to the operator: `show rib`, and `show routes
//! --export`/`--why`: what goes to a neighbor after policy, with the
//! attributes as sent, and the reason a prefix does or does not.

use std::sync::Arc;

use bgp::{PathAttributes, Prefix};

use super::{
    drain_key, DrainState, Exporter, LocRibEntry, Path, PeerId, Rib, Selection, Subscriber,
};
use crate::routing::policy::{RouteFacts, GRACEFUL_SHUTDOWN};

/// What one neighbor gets (`prefix` given: that prefix only), and why
/// `prefix` goes out or not.
#[derive(Debug, Default)]
pub struct ExportView {
    pub routes: Vec<(Prefix, Arc<PathAttributes>)>,
    pub why: Option<String>,
}

impl Rib {
    pub(super) fn show(&self) -> Vec<LocRibEntry> {
        let origin = |p: &Path| {
            p.peer
                .as_ref()
                .map_or("local".to_string(), |q| q.name.clone())
        };
        let sel = Selection::new(&self.drains);
        self.table
            .iter()
            .filter_map(|(p, v)| {
                let b = sel.best(v)?;
                Some(LocRibEntry {
                    prefix: p.to_string(),
                    from: origin(b),
                    next_hop: b.next_hop().map(|n| n.to_string()),
                    as_path: b
                        .attrs()
                        .as_path
                        .as_ref()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    others: v
                        .iter()
                        .filter(|x| !std::ptr::eq(*x, b))
                        .map(origin)
                        .collect(),
                    drain: b
                        .peer
                        .as_deref()
                        .and_then(drain_key)
                        .and_then(|k| self.drains.get(&k).map(|d| d.0)),
                    installed: self.installed.contains_key(&p),
                })
            })
            .collect()
    }

    /// `show routes --export`: what neighbor `peer` is sent; `None` if
    /// it gets nothing from the Loc-RIB (no session up, or not upstream).
    pub(super) fn show_export(&self, peer: PeerId, prefix: Option<Prefix>) -> Option<ExportView> {
        let sub = self.subscribers.get(&peer)?;
        let sel = Selection::new(&self.drains);
        let mut e = self.exporter_with(sub, peer, &sub.policy, &self.drains);
        let mut view = ExportView::default();
        let mut one = |p: Prefix, e: &mut Exporter<'_>| {
            let b = sub.takes(&p).then(|| self.table.get(&p)).flatten();
            if let Some(a) = b.and_then(|v| sel.best(v)).and_then(|b| e.export(b, &p)) {
                view.routes.push((p, a));
            }
        };
        match prefix {
            Some(p) => one(p, &mut e),
            None => {
                for (p, _) in self.table.iter() {
                    one(p, &mut e);
                }
            }
        }
        view.why = prefix.map(|p| self.why_export(sub, &e, &sel, &p));
        Some(view)
    }

    fn why_export(
        &self,
        sub: &Subscriber,
        e: &Exporter<'_>,
        sel: &Selection<'_>,
        p: &Prefix,
    ) -> String {
        if !sub.takes(p) {
            return "not sent: not a family of this session".into();
        }
        let Some(v) = self.table.get(p) else {
            return "not sent: the Loc-RIB has no route for it (`tapir show routes PREFIX` shows refused ones)"
                .into();
        };
        let Some(b) = sel.best(v) else {
            return "not sent: no usable path".into();
        };
        let from = b
            .peer
            .as_ref()
            .map_or("tapir itself (announce)".to_string(), |q| q.name.clone());
        format!("best path from {from}: {}", e.why(b, p))
    }
}

impl Exporter<'_> {
    /// Why best path `b` of `p` goes to the neighbor or not, in the
    /// order `attrs` decides it.
    fn why(&self, b: &Path, p: &Prefix) -> String {
        if let Some(why) = self.bar(b) {
            return format!("not sent: {why}");
        }
        let drain = self.drain(b);
        let facts = RouteFacts {
            prefix: p,
            attrs: b.attrs(),
            from: b.peer.as_deref(),
        };
        let (term, accept) = self.policy.verdict(&facts);
        let by = match term {
            Some(i) => format!("term {} of policy {}", i + 1, self.policy.name),
            None => format!("the default of policy {}", self.policy.name),
        };
        match (accept, self.attrs(b, p)) {
            (false, _) => format!("rejected by {by}"),
            (true, None) => {
                format!("accepted by {by}, but its attributes do not fit in one UPDATE")
            }
            (true, Some(a))
                if drain == Some(DrainState::Shutdown)
                    && a.communities.contains(&GRACEFUL_SHUTDOWN) =>
            {
                format!("sent: accepted by {by}; draining, with GRACEFUL_SHUTDOWN")
            }
            (true, Some(_)) => format!("sent: accepted by {by}"),
        }
    }
}

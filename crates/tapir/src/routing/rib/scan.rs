//! The kernel scan's answer: the difference between what the Loc-RIB
//! asked the kernel for and what the kernel has of our protocol, sent
//! to the FIB writer again (see `southbound::fib`).

use bgp::Prefix;
use tracing::{info, warn};

use super::{FibChange, Outputs, Rib, FIB_PROGRESS};

impl Rib {
    /// `present`: the prefixes of our protocol the kernel has. Ours that
    /// are missing (removed by someone, or refused) are installed again;
    /// ones the Loc-RIB no longer has are removed. Not while a restart's
    /// deferral keeps the kernel's old routes.
    pub(super) fn kernel_scan(
        &mut self,
        present: Vec<Prefix>,
        queued: u64,
        sink: &mut dyn Outputs,
    ) {
        // Changes asked since the dump are not in it: another time.
        let now = FIB_PROGRESS
            .queued
            .load(std::sync::atomic::Ordering::Relaxed);
        if !self.fib || !self.ready || now != queued {
            return;
        }
        let (missing, extra) = compare(self.installed.iter(), present);
        let mut ops: Vec<FibChange> = missing
            .into_iter()
            .map(|(prefix, hops)| FibChange::Install {
                prefix,
                hops: hops.clone(),
            })
            .collect();
        let missing = ops.len();
        ops.extend(extra.into_iter().map(|prefix| FibChange::Remove { prefix }));
        let extra = ops.len() - missing;
        if ops.is_empty() {
            return;
        }
        self.kernel_repairs.0 += missing as u64;
        self.kernel_repairs.1 += extra as u64;
        if extra > 0 {
            warn!(
                routes = extra,
                "kernel scan: routes of our protocol the Loc-RIB does not have: removed"
            );
        }
        if missing > 0 {
            info!(routes = missing, "kernel scan: our routes missing from the kernel (removed by someone, or refused): installed again");
        }
        sink.fib(ops);
    }

    /// A reload's `[kernel]`: the routes again under a new protocol and
    /// metric (the old ones are removed by the daemon once these are in),
    /// all of them out (`install` off) or in again (on), each prefix's
    /// hops again for a changed `multipath`.
    pub(super) fn kernel_settings(
        &mut self,
        install: bool,
        multipath: bool,
        rekey: Option<(u8, u32)>,
        sink: &mut dyn Outputs,
    ) {
        if let Some((protocol, metric)) = rekey {
            let mut ops = vec![FibChange::Settings { protocol, metric }];
            ops.extend(
                self.installed
                    .iter()
                    .filter(|(_, hops)| !hops.is_empty())
                    .map(|(prefix, hops)| FibChange::Install {
                        prefix,
                        hops: hops.clone(),
                    }),
            );
            info!(
                protocol,
                metric,
                routes = ops.len() - 1,
                "kernel: our routes go in again with a new protocol and metric"
            );
            sink.fib(ops);
        }
        let all: Vec<Prefix> = self.table.iter().map(|(p, _)| p).collect();
        if install != self.fib {
            if install {
                self.fib = true;
                self.sync_fib(all.iter().copied(), sink);
            } else {
                let ops: Vec<FibChange> = self
                    .installed
                    .iter()
                    .map(|(prefix, _)| FibChange::Remove { prefix })
                    .collect();
                self.installed = Default::default();
                self.fib = false;
                info!(
                    routes = ops.len(),
                    "kernel: install turned off, our routes removed"
                );
                sink.fib(ops);
            }
        }
        if multipath != self.multipath {
            self.multipath = multipath;
            self.sync_fib(all.into_iter(), sink);
        }
    }
}

/// What the Loc-RIB installed (`installed`, in prefix order, as the prefix
/// map iterates; an entry without hops is not in the kernel) against what
/// the kernel has: the entries it lacks, and its prefixes that are not
/// ours. One sort and one walk of both: a scan of a full table hashes
/// nothing.
fn compare<'a, H, V: std::ops::Deref<Target = [H]> + 'a>(
    installed: impl Iterator<Item = (Prefix, &'a V)>,
    mut present: Vec<Prefix>,
) -> (Vec<(Prefix, &'a V)>, Vec<Prefix>) {
    present.sort_unstable();
    present.dedup();
    let mut kernel = present.into_iter().peekable();
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    for (prefix, v) in installed {
        while let Some(k) = kernel.next_if(|k| *k < prefix) {
            extra.push(k);
        }
        let there = kernel.next_if_eq(&prefix).is_some();
        if !there && !v.is_empty() {
            missing.push((prefix, v));
        }
    }
    extra.extend(kernel);
    (missing, extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::prefix_map::PrefixMap;
    use std::collections::HashSet;

    #[test]
    fn compare_finds_what_a_set_difference_finds() {
        // A deterministic mix of IPv4 and IPv6 prefixes, some installed
        // without hops, some only in the kernel, some in both.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut installed: PrefixMap<Vec<u8>> = PrefixMap::default();
        let mut present = Vec::new();
        for _ in 0..5000 {
            let r = next();
            let p = if r % 3 == 0 {
                Prefix::new(
                    std::net::Ipv6Addr::from(u128::from(r) << 64).into(),
                    (r % 129) as u8,
                )
            } else {
                Prefix::new(
                    std::net::Ipv4Addr::from((r >> 8) as u32).into(),
                    (r % 33) as u8,
                )
            }
            .unwrap();
            match r % 5 {
                0 => present.push(p),
                1 => {
                    installed.insert(p, Vec::new());
                }
                2 => {
                    installed.insert(p, vec![1]);
                }
                _ => {
                    installed.insert(p, vec![1]);
                    present.push(p);
                    present.push(p);
                }
            }
        }
        let set: HashSet<Prefix> = present.iter().copied().collect();
        let mut want_missing: Vec<Prefix> = installed
            .iter()
            .filter(|(p, h)| !h.is_empty() && !set.contains(p))
            .map(|(p, _)| p)
            .collect();
        let mut want_extra: Vec<Prefix> = set
            .iter()
            .filter(|p| !installed.contains_key(p))
            .copied()
            .collect();
        let (missing, extra) = compare(installed.iter(), present);
        let mut missing: Vec<Prefix> = missing.into_iter().map(|(p, _)| p).collect();
        let mut extra = extra;
        for v in [&mut want_missing, &mut want_extra, &mut missing, &mut extra] {
            v.sort();
        }
        assert!(!want_missing.is_empty() && !want_extra.is_empty());
        assert_eq!(missing, want_missing);
        assert_eq!(extra, want_extra);
    }
}

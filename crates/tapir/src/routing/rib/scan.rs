//! The kernel scan's answer: the difference between what the Loc-RIB
//! asked the kernel for and what the kernel has of our protocol, sent
//! to the FIB writer again (see `southbound::fib`).

use std::collections::HashSet;

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
        let present: HashSet<Prefix> = present.into_iter().collect();
        let mut ops: Vec<FibChange> = self
            .installed
            .iter()
            .filter(|(p, hops)| !hops.is_empty() && !present.contains(p))
            .map(|(prefix, hops)| FibChange::Install {
                prefix,
                hops: hops.clone(),
            })
            .collect();
        let missing = ops.len();
        ops.extend(
            present
                .iter()
                .filter(|p| !self.installed.contains_key(p))
                .map(|p| FibChange::Remove { prefix: *p }),
        );
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

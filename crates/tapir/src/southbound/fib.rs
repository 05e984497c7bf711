//! What the kernel did with our routes: the installs it refused (by
//! prefix, with the errno, until one of that prefix goes through), and a
//! scan that brings the prefixes of our protocol in the kernel back to
//! those the Loc-RIB asked for — ours someone removed are installed
//! again, ones the Loc-RIB no longer has are removed, and refused ones
//! are tried again. It runs only while the FIB writer is idle
//! (`FIB_PROGRESS`), and compares prefixes, not next hops.
//!
//! The FIB writer (in `kernel`) reports each refusal here; the scanner
//! dumps the kernel's routes of our protocol every `[kernel]
//! scan-interval` (60 s by default), after every netlink overrun, and
//! sooner while installs stand refused (1 s, 2 s, 4 s … up to the
//! interval), and hands the dump to the Loc-RIB, which sends the
//! difference to the writer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Duration;

use bgp::Prefix;
use tokio::sync::mpsc;
use tracing::warn;

use crate::routing::rib::RibMsg;
use crate::tasks::{self, Task};

/// An install the kernel refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub errno: i32,
    /// Refusals in a row for this prefix.
    pub times: u64,
}

static REFUSED: Mutex<BTreeMap<Prefix, Refused>> = Mutex::new(BTreeMap::new());
static BY_REASON: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

fn refused_map() -> std::sync::MutexGuard<'static, BTreeMap<Prefix, Refused>> {
    REFUSED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The errno's symbolic name, for metrics and `show routes`.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EINVAL => "EINVAL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENODEV => "ENODEV",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EEXIST => "EEXIST",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ERANGE => "ERANGE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "other",
    }
}

/// The kernel refused to install `prefix`; returns how many times in a
/// row it has.
pub(crate) fn record(prefix: Prefix, errno: i32) -> u64 {
    count(errno_name(errno));
    let mut m = refused_map();
    let r = m.entry(prefix).or_insert(Refused { errno, times: 0 });
    r.errno = errno;
    r.times += 1;
    r.times
}

/// One failure more of this kind (an errno's name, or `write-failed`).
pub(crate) fn count(reason: &'static str) {
    *BY_REASON
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(reason)
        .or_default() += 1;
}

/// An install of `prefix` went through, or it was removed: not refused.
pub(crate) fn clear(prefixes: impl Iterator<Item = Prefix>) {
    let mut m = refused_map();
    if m.is_empty() {
        return;
    }
    for p in prefixes {
        m.remove(&p);
    }
}

/// Why the kernel does not have `prefix`, if it refused it.
pub fn refused(prefix: &Prefix) -> Option<String> {
    refused_map().get(prefix).map(|r| {
        format!(
            "{} ({}), refused {} time{}",
            errno_name(r.errno),
            std::io::Error::from_raw_os_error(r.errno),
            r.times,
            if r.times == 1 { "" } else { "s" }
        )
    })
}

/// How many prefixes stand refused.
pub fn refused_now() -> usize {
    refused_map().len()
}

/// Refusals since start, by errno name.
pub fn by_reason() -> BTreeMap<&'static str, u64> {
    BY_REASON.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The scan's protocol and interval (seconds), which a reload changes.
static SCAN_PROTOCOL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
static SCAN_EVERY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(60);

/// What the scan looks for, and how often (a reload of `[kernel]`).
pub fn set_scan(protocol: u8, every: Duration) {
    SCAN_PROTOCOL.store(protocol, Relaxed);
    SCAN_EVERY.store(every.as_secs().max(1), Relaxed);
}

/// The first retry of a refused install; it doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// When the next scan is due: `every`, sooner while installs stand
/// refused (back-off from `FIRST_RETRY`), at once after an overrun.
#[derive(Debug)]
pub struct Schedule {
    every: Duration,
    retry: Duration,
    since: Duration,
    overruns: u64,
}

impl Schedule {
    pub fn new(every: Duration, overruns: u64) -> Schedule {
        Schedule {
            every,
            retry: FIRST_RETRY,
            since: Duration::ZERO,
            overruns,
        }
    }

    /// A new interval (a reload).
    pub fn set_every(&mut self, every: Duration) {
        self.every = every;
    }

    /// One more second passed; whether to scan now.
    pub fn tick(&mut self, elapsed: Duration, overruns: u64, refused: bool) -> bool {
        self.since += elapsed;
        let overrun = overruns != self.overruns;
        self.overruns = overruns;
        if !refused {
            self.retry = FIRST_RETRY;
        }
        let due = self.since >= self.every || overrun || (refused && self.since >= self.retry);
        if due {
            self.since = Duration::ZERO;
            if refused {
                self.retry = (self.retry * 2).min(self.every);
            }
        }
        due
    }
}

/// Starts the scanner: the kernel's routes of `protocol` go to the
/// Loc-RIB (`RibMsg::KernelScan`) when the schedule says.
pub fn spawn_scanner(protocol: u8, every: Duration, rib: mpsc::UnboundedSender<RibMsg>) {
    set_scan(protocol, every);
    tasks::spawn(Task::KernelScan, async move {
        let handle = match rtnetlink::new_connection() {
            Ok((conn, handle, _)) => {
                tasks::spawn(Task::Netlink, conn);
                handle
            }
            Err(e) => {
                warn!(error = %e, "kernel scan: no netlink connection; our routes are not checked");
                return;
            }
        };
        let stats = &super::kernel::KERNEL_STATS;
        let progress = &crate::routing::rib::FIB_PROGRESS;
        let mut s = Schedule::new(every, stats.overruns.load(Relaxed));
        let tick = Duration::from_secs(1);
        let mut due = false;
        loop {
            tokio::time::sleep(tick).await;
            s.set_every(Duration::from_secs(SCAN_EVERY.load(Relaxed)));
            let protocol = SCAN_PROTOCOL.load(Relaxed);
            due |= s.tick(tick, stats.overruns.load(Relaxed), refused_now() > 0);
            // Only while the writer is idle: what is still queued is not
            // missing (a table transfer would be installed twice).
            let queued = progress.queued.load(Relaxed);
            if !due || queued != progress.done.load(Relaxed) {
                continue;
            }
            let present = match super::kernel::our_prefixes(&handle, protocol).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "kernel scan: the route dump failed; tried again at the next tick");
                    continue;
                }
            };
            // Asked meanwhile: the dump may miss it; at the next tick.
            if progress.queued.load(Relaxed) != queued || progress.done.load(Relaxed) != queued {
                continue;
            }
            due = false;
            if rib.send(RibMsg::KernelScan { present, queued }).is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_every_interval_sooner_while_refused_and_after_an_overrun() {
        let sec = Duration::from_secs(1);
        let mut s = Schedule::new(Duration::from_secs(60), 0);
        let due = |s: &mut Schedule, secs: u32, refused: bool| -> Vec<u32> {
            (1..=secs).filter(|_| s.tick(sec, 0, refused)).collect()
        };
        assert_eq!(due(&mut s, 120, false), [60, 120]);
        // Refused: after 1, 2, 4, 8, 16, 32 s, then every 60 s.
        let at: Vec<u32> = due(&mut s, 200, true);
        let mut t = 0;
        let gaps: Vec<u32> = at
            .iter()
            .map(|a| {
                let g = a - t;
                t = *a;
                g
            })
            .collect();
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 60, 60]);
        // An overrun: at once.
        assert!(s.tick(sec, 1, false));
        assert!(!s.tick(sec, 1, false));
    }

    #[test]
    fn a_refusal_stands_until_the_prefix_goes_through() {
        let p: Prefix = "192.0.2.77/32".parse().unwrap();
        assert_eq!(record(p, libc::ENODEV), 1);
        assert_eq!(record(p, libc::ENODEV), 2);
        let why = refused(&p).unwrap();
        assert!(why.starts_with("ENODEV (No such device"), "{why}");
        assert!(why.ends_with("refused 2 times"), "{why}");
        assert!(by_reason()["ENODEV"] >= 2);
        clear(std::iter::once(p));
        assert_eq!(refused(&p), None);
    }
}

//! Kernel-side timestamps: `ip -ts monitor` in a lab host, for the
//! benchmarks that time what a host's kernel saw (a tap deleted, a route
//! changed).

use std::path::PathBuf;
use std::time::Duration;

use crate::Lab;

/// `ip -ts monitor` in one host: kernel-side timestamps.
pub struct Monitor(PathBuf);

impl Monitor {
    pub fn start(lab: &mut Lab, host: &str, what: &str) -> Monitor {
        let log = format!("monitor-{host}-{what}.log");
        // In UTC, whatever the host's zone: benchmarks set these times
        // against their own clock's.
        lab.spawn(
            host,
            &["env", "TZ=UTC0", "ip", "-ts", "monitor", what],
            &log,
        );
        Monitor(lab.dir().join(log))
    }

    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The time (seconds into the day) of the first event from line `from`
    /// on that contains `needle` and, if `deleted` is given, is (not) a
    /// deletion.
    pub fn find(&self, from: usize, needle: &str, deleted: Option<bool>) -> Option<f64> {
        self.lines().iter().skip(from).find_map(|l| {
            let (ts, rest) = l.strip_prefix('[')?.split_once("] ")?;
            if deleted.is_some_and(|d| rest.starts_with("Deleted ") != d) || !rest.contains(needle)
            {
                return None;
            }
            // 2026-11-25T18:59:59.290885
            let time = ts.split_once('T')?.1;
            let mut f = time.split(':');
            let (h, m, s): (f64, f64, f64) = (
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            );
            Some(h * 3600.0 + m * 60.0 + s)
        })
    }

    pub fn len(&self) -> usize {
        self.lines().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `end - start` in seconds of the day, across midnight too. An end up
/// to half a day before the start is zero: what was waited for had
/// already happened (a QEMU move's destination path replacing the source's
/// at tor before the source's tap went).
pub fn between(start: f64, end: f64) -> Duration {
    let d = (end - start).rem_euclid(86400.0);
    if d > 43200.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(d)
    }
}

#[cfg(test)]
mod tests {
    use super::between;

    #[test]
    fn between_spans_midnight_and_reads_an_earlier_end_as_zero() {
        assert_eq!(between(1.0, 2.5).as_millis(), 1500);
        assert_eq!(between(86399.9, 0.1).as_millis(), 200);
        assert_eq!(between(10.0, 9.9).as_millis(), 0);
    }
}

//! How many lines one peer's bytes can make us log: a peer that sends a
//! thousand malformed attributes or refused prefixes in every UPDATE must
//! not fill the journal. Each session has a budget of [`LINES`] lines per
//! [`WINDOW`]; what is held back beyond it is counted and said in one
//! line when the next window opens, or when the session ends.

use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(10);
pub const LINES: u32 = 20;

#[derive(Debug, Default)]
pub struct LogBudget {
    window_start: Option<Instant>,
    used: u32,
    held_back: u64,
}

/// What [`LogBudget::line`] decides.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Log this line.
    pub log: bool,
    /// Lines held back in the window that just closed: say so first.
    pub held_back: u64,
}

impl LogBudget {
    /// One more line the peer made us want to log, now.
    pub fn line(&mut self, now: Instant) -> Verdict {
        let mut held_back = 0;
        if self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= WINDOW)
        {
            self.window_start = Some(now);
            self.used = 0;
            held_back = std::mem::take(&mut self.held_back);
        }
        let log = self.used < LINES;
        if log {
            self.used += 1;
        } else {
            self.held_back += 1;
        }
        Verdict { log, held_back }
    }

    /// Lines held back and not yet said (the session ends).
    pub fn finish(&mut self) -> u64 {
        std::mem::take(&mut self.held_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_count_of_what_was_held_back() {
        let mut b = LogBudget::default();
        let t = Instant::now();
        let logged = (0..1350).filter(|_| b.line(t).log).count();
        assert_eq!(logged, LINES as usize);
        // The next window: the count first, and lines again.
        let v = b.line(t + WINDOW);
        assert_eq!(
            v,
            Verdict {
                log: true,
                held_back: 1350 - u64::from(LINES)
            }
        );
        for _ in 0..(LINES + 5) {
            b.line(t + WINDOW);
        }
        assert_eq!(b.finish(), 6);
        assert_eq!(b.finish(), 0);
    }
}

//! The systemd watchdog (`WatchdogSec=` in the unit). When systemd asks
//! for it (`$WATCHDOG_USEC`, and `$WATCHDOG_PID` if set is ours), tapir
//! asks the main loop and the Loc-RIB thread every quarter of the interval
//! and looks at the FIB writer's progress, and sends `WATCHDOG=1` when all
//! three answered within that quarter: pings are at most half the interval
//! apart while all is well. A part that stalls stops the pings, and systemd restarts
//! tapir (`Restart=on-failure`); a stalled part is logged once, and so is
//! its recovery.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::routing::rib::{RibMsg, FIB_PROGRESS};
use crate::tasks::{self, Task};

/// The interval systemd asked for, if it did (and asked us).
pub fn interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The FIB writer answers when nothing waits for it, or when it has
/// finished a batch since the last look (a full table takes many).
struct FibWriter {
    done: u64,
}

impl FibWriter {
    fn answers(&mut self, queued: u64, done: u64) -> bool {
        let moved = done != self.done;
        self.done = done;
        queued == done || moved
    }
}

/// Starts the pings. `main` reaches the main loop: `ping` wraps the
/// reply it must send.
pub fn spawn<M: Send + 'static>(
    every: Duration,
    rib: mpsc::UnboundedSender<RibMsg>,
    main: mpsc::Sender<M>,
    ping: fn(oneshot::Sender<()>) -> M,
) {
    let tick = every / 4;
    info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog: pinging while every part answers"
    );
    tasks::spawn(Task::Watchdog, async move {
        let mut fib = FibWriter {
            done: FIB_PROGRESS.done.load(Relaxed),
        };
        let mut stalled: Option<&'static str> = None;
        loop {
            tokio::time::sleep(tick).await;
            let main_ok = async {
                let (tx, rx) = oneshot::channel();
                matches!(
                    tokio::time::timeout(tick, async {
                        main.send(ping(tx)).await.ok()?;
                        rx.await.ok()
                    })
                    .await,
                    Ok(Some(()))
                )
            };
            let rib_ok = async {
                let (tx, rx) = oneshot::channel();
                rib.send(RibMsg::Stats(tx)).is_ok()
                    && matches!(tokio::time::timeout(tick, rx).await, Ok(Ok(_)))
            };
            let (main_ok, rib_ok) = tokio::join!(main_ok, rib_ok);
            let fib_ok = fib.answers(
                FIB_PROGRESS.queued.load(Relaxed),
                FIB_PROGRESS.done.load(Relaxed),
            );
            let failing = [
                (main_ok, "the main loop"),
                (rib_ok, "the Loc-RIB thread"),
                (fib_ok, "the FIB writer"),
            ]
            .into_iter()
            .find_map(|(ok, part)| (!ok).then_some(part));
            match failing {
                None => {
                    crate::northbound::notify::notify("WATCHDOG=1");
                    if let Some(part) = stalled.take() {
                        info!(
                            part,
                            "systemd watchdog: every part answers again; pings resumed"
                        );
                    }
                }
                Some(part) => {
                    if stalled.replace(part).is_none() {
                        warn!(part, "systemd watchdog: a part does not answer; no pings until it does (systemd restarts tapir when the interval runs out)");
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_systemds_and_only_for_its_pid() {
        assert_eq!(
            interval_from(Some("3000000"), None, 7),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            interval_from(Some("3000000"), Some("7"), 7),
            Some(Duration::from_secs(3))
        );
        assert_eq!(interval_from(Some("3000000"), Some("8"), 7), None);
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("x"), None, 7), None);
        assert_eq!(interval_from(None, None, 7), None);
    }

    #[test]
    fn the_fib_writer_answers_when_idle_or_moving() {
        let mut f = FibWriter { done: 5 };
        assert!(f.answers(5, 5), "nothing queued");
        assert!(f.answers(9, 6), "a batch done since");
        assert!(!f.answers(9, 6), "queued and no batch done");
        assert!(f.answers(9, 9));
    }
}

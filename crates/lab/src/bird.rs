//! BIRD 2 in a lab host: started in the foreground with its own config and
//! control socket, read with `birdc`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{wait_for, Lab};

pub struct Bird {
    pub socket: PathBuf,
    pub pid: u32,
    pub log: String,
}

impl Lab {
    /// Starts BIRD in `host` with `config`; waits until its socket answers.
    pub fn bird(&mut self, host: &str, config: &str) -> Bird {
        let conf = self.write(&format!("{host}/bird.conf"), config);
        let socket = self.dir().join(host).join("bird.ctl");
        let log = format!("{host}/bird.log");
        let pid = self.spawn(
            host,
            &[
                "bird",
                "-f",
                "-c",
                &conf.to_string_lossy(),
                "-s",
                &socket.to_string_lossy(),
            ],
            &log,
        );
        let bird = Bird { socket, pid, log };
        if wait_for(Duration::from_secs(10), || {
            bird.try_cmd(&["show", "status"])
        })
        .is_none()
        {
            panic!("BIRD in {host} did not start:\n{}", self.log(&bird.log));
        }
        bird
    }
}

impl Bird {
    pub fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let o = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs a `birdc` command and returns its output.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("birdc {} failed", args.join(" ")))
    }

    /// The `show protocols` line of a protocol, e.g.
    /// `tapir4     BGP        ---        up     16:40:01.123  Established`.
    pub fn protocol(&self, name: &str) -> Option<String> {
        self.cmd(&["show", "protocols", name])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_string)
    }

    /// When the protocol entered its state, in milliseconds of the day,
    /// from `show protocols` (`up 16:40:01.123`). BIRD derives the printed
    /// time anew each time, so two reads of one instant can differ by a
    /// millisecond: compare with [`same_instant`].
    pub fn since_ms(&self, name: &str) -> Option<u64> {
        let line = self.protocol(name)?;
        time_of_day_ms(line.split_whitespace().nth(4)?)
    }

    pub fn is_established(&self, name: &str) -> bool {
        self.protocol(name)
            .is_some_and(|l| l.trim_end().ends_with("Established"))
    }

    /// `show route PREFIX all` if BIRD has a route for exactly that prefix.
    /// (See also [`same_instant`] for comparing `since_ms` values.)
    pub fn route(&self, prefix: &str) -> Option<String> {
        let out = self.try_cmd(&["show", "route", prefix, "all"])?;
        out.lines().any(|l| l.starts_with(prefix)).then_some(out)
    }
}

/// BIRD's `HH:MM:SS.mmm` as milliseconds since midnight.
pub fn time_of_day_ms(t: &str) -> Option<u64> {
    let (hms, ms) = t.split_once('.').unwrap_or((t, "0"));
    let mut f = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, s) = (f.next()??, f.next()??, f.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<u64>().ok()?)
}

/// Two `since_ms` readings of the same instant (within 5 ms): BIRD prints
/// `since` from its monotonic clock turned into wall time at each reading,
/// so one instant can read a millisecond apart.
pub fn same_instant(a: Option<u64>, b: Option<u64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a.abs_diff(b) <= 5)
}

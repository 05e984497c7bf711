//! GoBGP in a lab host, with its API on a Unix socket in the lab directory.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{wait_for, Lab};

pub struct Gobgp {
    pub target: String,
    pub pid: u32,
    pub log: String,
}

impl Lab {
    /// Starts gobgpd in `host` with the TOML `config`.
    pub fn gobgp(&mut self, host: &str, config: &str) -> Gobgp {
        let conf = self.write(&format!("{host}/gobgpd.toml"), config);
        let target = format!(
            "unix://{}",
            self.dir().join(host).join("gobgp.api").display()
        );
        let log = format!("{host}/gobgpd.log");
        let pid = self.spawn(
            host,
            &[
                "gobgpd",
                "-f",
                &conf.to_string_lossy(),
                "--api-hosts",
                &target,
                "--pprof-disable",
                "-p",
            ],
            &log,
        );
        let g = Gobgp { target, pid, log };
        if wait_for(Duration::from_secs(10), || g.try_cli(&["global"])).is_none() {
            panic!("gobgpd in {host} did not start:\n{}", self.log(&g.log));
        }
        g
    }
}

impl Gobgp {
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let o = Command::new("gobgp")
            .args(["--target", &self.target])
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("gobgp {} failed", args.join(" ")))
    }

    /// Adds a prefix to GoBGP's RIB (announced to its neighbors).
    pub fn announce(&self, prefix: &str) {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        self.cli(&["global", "rib", "add", "-a", afi, prefix, "origin", "igp"]);
    }

    /// The session state of a neighbor as GoBGP numbers it (6 = Established).
    pub fn neighbor_state(&self, addr: &str) -> Option<i64> {
        let v: Value = serde_json::from_str(&self.cli(&["neighbor", "-j"])).ok()?;
        v.as_array()?
            .iter()
            // Dynamic neighbors carry their address in `state` only.
            .find(|n| {
                n["conf"]["neighbor_address"] == addr || n["state"]["neighbor_address"] == addr
            })
            .and_then(|n| n["state"]["session_state"].as_i64())
    }

    /// The paths in GoBGP's RIB for a prefix.
    pub fn paths(&self, prefix: &str) -> Vec<Value> {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let v: Value = serde_json::from_str(&self.cli(&["global", "rib", "-a", afi, "-j"]))
            .unwrap_or(Value::Null);
        v[prefix].as_array().cloned().unwrap_or_default()
    }
}

/// GoBGP's session state number for Established.
pub const ESTABLISHED: i64 = 6;

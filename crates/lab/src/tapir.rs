//! The daemon under test in a lab host, read through its own CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{wait_for, Lab};

pub struct Tapir {
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub pid: u32,
    pub log: String,
}

impl Lab {
    /// Starts `tapir run` in `host` with the config file at `config`.
    pub fn tapir(&mut self, host: &str, bin: &Path, config: &Path) -> Tapir {
        self.tapir_with_log(host, bin, config, "debug")
    }

    /// As [`Lab::tapir`] with a log level (benchmarks use `info`).
    pub fn tapir_with_log(&mut self, host: &str, bin: &Path, config: &Path, level: &str) -> Tapir {
        self.tapir_with_env(host, bin, config, level, &[])
    }

    /// As [`Lab::tapir_with_log`], with `NAME=VALUE` environment
    /// variables (test switches such as `TAPIR_FAILPOINT`).
    pub fn tapir_with_env(
        &mut self,
        host: &str,
        bin: &Path,
        config: &Path,
        level: &str,
        env: &[&str],
    ) -> Tapir {
        let socket = self.dir().join(host).join("tapir.sock");
        std::fs::create_dir_all(self.dir().join(host)).expect("host directory");
        let log = format!("{host}/tapir.log");
        let (bin_s, config_s, socket_s) = (
            bin.to_string_lossy(),
            config.to_string_lossy(),
            socket.to_string_lossy(),
        );
        let state = self.dir().join(host).join("state");
        let state_s = state.to_string_lossy();
        let mut args: Vec<&str> = vec!["env"];
        args.extend_from_slice(env);
        args.extend_from_slice(&[
            &bin_s,
            "run",
            "--config",
            &config_s,
            "--socket",
            &socket_s,
            "--log",
            level,
            "--state-dir",
            &state_s,
        ]);
        let pid = self.spawn(host, &args, &log);
        let t = Tapir {
            bin: bin.to_owned(),
            socket,
            pid,
            log,
        };
        if wait_for(Duration::from_secs(10), || t.try_show(&["peers"])).is_none() {
            panic!("tapir in {host} did not start:\n{}", self.log(&t.log));
        }
        t
    }
}

impl Tapir {
    fn try_show(&self, args: &[&str]) -> Option<String> {
        let o = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .arg("show")
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Any client command (`vm add …`): success, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let (code, out, err) = self.cli_code(args);
        (code == Some(0), out, err)
    }

    /// As [`Tapir::cli`], with the exit code.
    pub fn cli_code(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let o = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tapir");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// `tapir show ARGS…` as text.
    pub fn show(&self, args: &[&str]) -> String {
        self.try_show(args)
            .unwrap_or_else(|| panic!("tapir show {} failed", args.join(" ")))
    }

    /// `tapir show WHAT --json`.
    pub fn json(&self, what: &str) -> Value {
        self.json_args(&[what])
    }

    /// `tapir show ARGS… --json`.
    pub fn json_args(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.show(&args)).unwrap_or(Value::Null)
    }

    /// A peer's state by name, from `show peers --json`.
    pub fn peer_state(&self, name: &str) -> Option<String> {
        self.json("peers")
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["state"].as_str().map(str::to_string))
    }

    /// Routes for a prefix from `show routes --json`.
    pub fn routes_for(&self, prefix: &str) -> Vec<Value> {
        self.json("routes")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["prefix"] == prefix)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

//! FRR (zebra and bgpd) in a lab host, without systemd or /etc/frr: both
//! daemons run in the foreground with their own files, read with `vtysh`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{wait_for, Lab};

pub struct Frr {
    pub dir: PathBuf,
    pub log: String,
}

impl Lab {
    /// Starts zebra and bgpd in `host` with `bgpd_conf`.
    pub fn frr(&mut self, host: &str, bgpd_conf: &str) -> Frr {
        self.frr_with(host, bgpd_conf, false)
    }

    /// As [`Lab::frr`]; `no_fib` keeps BGP routes out of the kernel
    /// (`bgpd -n`), as a benchmark of BGP alone needs.
    pub fn frr_with(&mut self, host: &str, bgpd_conf: &str, no_fib: bool) -> Frr {
        let dir = self.dir().join(host).join("frr");
        std::fs::create_dir_all(&dir).expect("frr directory");
        let d = dir.to_string_lossy().into_owned();
        let zconf = self.write(
            &format!("{host}/frr/zebra.conf"),
            &format!("hostname {host}-zebra\n"),
        );
        let bconf = self.write(&format!("{host}/frr/bgpd.conf"), bgpd_conf);
        let zserv = format!("{d}/zserv.api");
        self.spawn(
            host,
            &[
                "/usr/lib/frr/zebra",
                "-u",
                "root",
                "-g",
                "frrvty",
                "-f",
                &zconf.to_string_lossy(),
                "-i",
                &format!("{d}/zebra.pid"),
                "-z",
                &zserv,
                "--vty_socket",
                &d,
                "-P",
                "0",
            ],
            &format!("{host}/zebra.log"),
        );
        if wait_for(Duration::from_secs(10), || {
            std::path::Path::new(&zserv).exists().then_some(())
        })
        .is_none()
        {
            panic!(
                "zebra in {host} did not start:\n{}",
                self.log(&format!("{host}/zebra.log"))
            );
        }
        // bfdd too: BGP neighbors with `bfd` get their sessions from it.
        let bfdd_conf = self.write(
            &format!("{host}/frr/bfdd.conf"),
            &format!("hostname {host}-bfdd\n"),
        );
        let bfdd_conf = bfdd_conf.to_string_lossy().into_owned();
        let bfdd_pid = format!("{d}/bfdd.pid");
        self.spawn(
            host,
            &[
                "/usr/lib/frr/bfdd",
                "-u",
                "root",
                "-g",
                "frrvty",
                "-f",
                &bfdd_conf,
                "-i",
                &bfdd_pid,
                "-z",
                &zserv,
                "--vty_socket",
                &d,
                "-P",
                "0",
            ],
            &format!("{host}/bfdd.log"),
        );
        let log = format!("{host}/bgpd.log");
        let bconf = bconf.to_string_lossy().into_owned();
        let pid = format!("{d}/bgpd.pid");
        let mut args = vec![
            "/usr/lib/frr/bgpd",
            "-u",
            "root",
            "-g",
            "frrvty",
            "-f",
            &bconf,
            "-i",
            &pid,
            "-z",
            &zserv,
            "--vty_socket",
            &d,
            "-P",
            "0",
        ];
        if no_fib {
            args.push("-n");
        }
        let bgpd = self.spawn(host, &args, &log);
        self.frr_bgpd_pid = Some(bgpd);
        let frr = Frr { dir, log };
        if wait_for(Duration::from_secs(10), || {
            frr.try_vtysh("show bgp summary json")
        })
        .is_none()
        {
            panic!("bgpd in {host} did not start:\n{}", self.log(&frr.log));
        }
        frr
    }
}

impl Frr {
    pub fn try_vtysh(&self, cmd: &str) -> Option<String> {
        let o = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn vtysh(&self, cmd: &str) -> String {
        self.try_vtysh(cmd)
            .unwrap_or_else(|| panic!("vtysh -c '{cmd}' failed"))
    }

    /// Runs configuration commands in order (`configure terminal` first).
    pub fn configure(&self, lines: &[&str]) {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", "configure terminal"]);
        for l in lines {
            c.args(["-c", l]);
        }
        let o = c.output().expect("vtysh");
        assert!(o.status.success(), "vtysh {lines:?}: {o:?}");
    }

    pub fn json(&self, cmd: &str) -> Value {
        serde_json::from_str(&self.vtysh(cmd)).unwrap_or(Value::Null)
    }

    /// `bgpState` of a neighbor (`Established`, `Active`, …).
    pub fn neighbor_state(&self, addr: &str) -> Option<String> {
        self.json(&format!("show bgp neighbors {addr} json"))[addr]["bgpState"]
            .as_str()
            .map(str::to_string)
    }

    /// The detailed paths for one prefix (`show bgp ipv4|ipv6 unicast PREFIX
    /// json`): `aspath.string`, `nexthops[].ip`, `community.string`, `valid`.
    pub fn prefix_paths(&self, prefix: &str) -> Vec<Value> {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let v = self
            .try_vtysh(&format!("show bgp {afi} unicast {prefix} json"))
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .unwrap_or(Value::Null);
        if v["prefix"] != prefix {
            return Vec::new();
        }
        v["paths"].as_array().cloned().unwrap_or_default()
    }

    /// The paths FRR holds for a prefix (`show bgp ipv4|ipv6 unicast json`).
    pub fn paths(&self, prefix: &str) -> Vec<Value> {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let v = self.json(&format!("show bgp {afi} unicast json"));
        v["routes"][prefix].as_array().cloned().unwrap_or_default()
    }
}

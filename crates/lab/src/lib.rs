//! Network-namespace labs with real BGP daemons, for tapir's integration
//! tests, demo and benchmarks.
//!
//! A [`Lab`] owns everything it creates: namespaces (named
//! `tapir-<pid>-<n>-<host>` so that labs of parallel tests never clash),
//! veth pairs inside them, daemon processes and a scratch directory. Dropping
//! the lab (also while a test panics) stops the daemons and deletes the
//! namespaces; namespaces left by a lab whose process was killed are removed
//! by the next lab that starts.
//!
//! - [`bird`], [`frr`], [`gobgp`]: start a daemon with a generated config
//!   and read its state through its own CLI;
//! - [`tapir`]: start the daemon under test and read it through its CLI;
//! - [`reference`]: the reference lab of docs/design.md (tor, hv1/hv2, VMs on taps).

#![forbid(unsafe_code)]

pub mod bird;
pub mod frr;
pub mod gobgp;
pub mod monitor;
pub mod qemu;
pub mod reference;
pub mod tapir;
pub mod tor;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// One BFD control packet for [`Lab::send_bfd`]: State 0-3 is AdminDown,
/// Down, Init, Up; it goes from `from`:49999 to `to`:`port`.
pub struct BfdPacket<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub ttl: u8,
    pub my: u32,
    pub your: u32,
    pub state: u8,
    pub port: u16,
}

/// A lab: namespaces, links, processes and files, all removed on drop.
pub struct Lab {
    prefix: String,
    hosts: Vec<String>,
    children: Vec<(String, Child)>,
    dir: PathBuf,
    /// The pid of the last bgpd started (FRR's BGP process, for RSS).
    pub frr_bgpd_pid: Option<u32>,
}

/// Runs a command and returns its output; panics with the command line and
/// its stderr if it fails, since a lab that cannot be built is a test failure.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if !out.status.success() {
        panic!(
            "`{program} {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A lab tool (`crates/lab/src/bin`), found next to `sibling`, a binary of
/// the same build (the test's tapir), and built there if missing.
pub fn tool(sibling: &Path, name: &str) -> PathBuf {
    // One build at a time: two tests missing the same tool would both run
    // cargo.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let bin = sibling.with_file_name(name);
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if !bin.exists() {
        let release = sibling
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "lab", "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let ok = cmd.status().is_ok_and(|s| s.success());
        assert!(ok && bin.exists(), "cannot build the lab's {name}");
    }
    bin
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The value of the first sample of metric `name` (Prometheus text) whose
/// labels include every `key="value"` of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| rest.rsplit(' ').next()?.parse().ok())?
    })
}

/// True when running as root (needed for namespaces).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Lab {
    /// A new, empty lab. Panics unless run as root.
    pub fn new() -> Lab {
        assert!(
            is_root(),
            "the lab needs root (network namespaces); run the tests as root"
        );
        reap_stale_namespaces();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("tapir-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab directory");
        Lab {
            prefix,
            hosts: Vec::new(),
            children: Vec::new(),
            dir,
            frr_bgpd_pid: None,
        }
    }

    /// The scratch directory for configs, sockets and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The namespace name of a host.
    pub fn netns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Whether `host` was added to this lab.
    pub fn has_host(&self, host: &str) -> bool {
        self.hosts.contains(&self.netns(host))
    }

    /// `GET path` from inside `host` (the lab's `http-get`, next to
    /// `sibling`): the body if the answer was 200.
    pub fn http_get(&self, host: &str, sibling: &Path, addr: &str, path: &str) -> Option<String> {
        let bin = tool(sibling, "http-get");
        let o = Command::new("ip")
            .args(["netns", "exec", &self.netns(host)])
            .arg(&bin)
            .args([addr, path])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Creates a host (a namespace with `lo` up and forwarding on).
    pub fn add_host(&mut self, host: &str) {
        let ns = self.netns(host);
        run("ip", &["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        for key in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            self.exec(host, &["sysctl", "-qw", key]);
        }
    }

    /// Many hosts at once (a scale benchmark's VMs): one `ip -batch`, no
    /// sysctls. Removed with the lab like the others.
    pub fn add_hosts(&mut self, hosts: &[String]) {
        let names: Vec<String> = hosts.iter().map(|h| self.netns(h)).collect();
        let batch: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        let file = self.dir.join("netns.batch");
        std::fs::write(&file, batch).expect("batch file");
        // Registered first: a failure half-way still cleans up.
        self.hosts.extend(names);
        run("ip", &["-batch", &file.to_string_lossy()]);
    }

    /// A veth pair between `a:a_if` and `b:b_if`, created inside the
    /// namespaces so that names never clash between labs.
    pub fn link(&mut self, a: &str, a_if: &str, b: &str, b_if: &str) {
        let (na, nb) = (self.netns(a), self.netns(b));
        run(
            "ip",
            &[
                "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &nb,
            ],
        );
    }

    /// `ip -n HOST ARGS…`.
    pub fn ip(&self, host: &str, args: &[&str]) -> Output {
        let ns = self.netns(host);
        let mut v = vec!["-n", ns.as_str()];
        v.extend_from_slice(args);
        run("ip", &v)
    }

    /// Adds an address (IPv6 without duplicate address detection, so it is
    /// usable at once).
    pub fn addr(&self, host: &str, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(host, &["addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(host, &["addr", "add", cidr, "dev", dev]);
        }
    }

    pub fn up(&self, host: &str, dev: &str) {
        self.ip(host, &["link", "set", dev, "up"]);
    }

    /// Runs a command inside a host's namespace and waits for it.
    pub fn exec(&self, host: &str, args: &[&str]) -> Output {
        let ns = self.netns(host);
        let mut v = vec!["netns", "exec", ns.as_str()];
        v.extend_from_slice(args);
        run("ip", &v)
    }

    /// Starts a long-running process inside a host; its output goes to
    /// `<dir>/<log>`. `ip netns exec` execs the program, so the child's pid
    /// is the daemon's and stopping it stops the daemon.
    pub fn spawn(&mut self, host: &str, args: &[&str], log: &str) -> u32 {
        let ns = self.netns(host);
        let logfile = std::fs::File::create(self.dir.join(log)).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("log file"))
            .stderr(logfile)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", args[0]));
        let pid = child.id();
        self.children.push((log.to_string(), child));
        pid
    }

    /// Sends one BFD control packet from `host` with the lab's
    /// `bfd-send` (built next to `sibling`); panics if it cannot.
    pub fn send_bfd(&self, sibling: &Path, host: &str, p: &BfdPacket) {
        let bin = tool(sibling, "bfd-send");
        let args = [
            p.from.to_string(),
            p.to.to_string(),
            p.ttl.to_string(),
            p.my.to_string(),
            p.your.to_string(),
            p.state.to_string(),
            p.port.to_string(),
        ];
        let mut v = vec![bin.to_str().expect("path")];
        v.extend(args.iter().map(String::as_str));
        self.exec(host, &v);
    }

    /// Stops a process started with [`Lab::spawn`] (SIGTERM, then SIGKILL
    /// after two seconds) and waits for it.
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|(_, c)| c.id() == pid) {
            let (_, mut c) = self.children.remove(i);
            terminate(&mut c);
        }
    }

    /// Kills a process started with [`Lab::spawn`] at once (SIGKILL), as a
    /// crash would, and waits for it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|(_, c)| c.id() == pid) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Peak resident memory of a process, in KiB (VmHWM).
    pub fn peak_rss_kib(pid: u32) -> Option<u64> {
        status_kib(pid, "VmHWM:")
    }

    /// A process's resident memory now (VmRSS), in KiB.
    pub fn rss_kib(pid: u32) -> Option<u64> {
        status_kib(pid, "VmRSS:")
    }

    /// The log of a spawned process (for failure messages).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Writes a file into the lab directory and returns its absolute path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("lab directory");
        }
        std::fs::write(&p, contents).expect("lab file");
        p
    }

    /// Logs of every process, for a failing test's message.
    pub fn all_logs(&self) -> String {
        let mut s = String::new();
        for (log, _) in &self.children {
            s.push_str(&format!("---- {log} ----\n{}\n", self.log(log)));
        }
        s
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

fn terminate(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            terminate(c);
        }
        for ns in &self.hosts {
            // Anything still running inside (a daemon that forked) goes too.
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        if std::env::var_os("TAPIR_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Deletes namespaces of labs whose process no longer exists.
fn reap_stale_namespaces() {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("tapir-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
                for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", p]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

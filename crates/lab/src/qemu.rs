//! QEMU guests in the lab: the guest `scripts/qemu-guest` builds (Debian's
//! kernel, busybox, BIRD with the reference VM config), booted inside a
//! hypervisor's namespace with `-netdev tap,ifname=…,script=…`, so that
//! QEMU creates the tap and the ifup script runs as Ganeti runs it; a live
//! migration is QMP's `migrate` to a QEMU started with `-incoming` on the
//! other hypervisor, as Ganeti's KVM hypervisor does it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{wait_for, Lab};

/// The guest's kernel and initramfs.
#[derive(Clone, Debug)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Why guests cannot run here (a test skips with it).
pub fn unavailable() -> Option<String> {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| {
        "qemu-system-x86_64 is not installed (scripts/setup installs qemu-system-x86)".into()
    })
}

/// Builds the guest, or finds it built (`target/qemu-guest`).
pub fn image() -> Result<Image, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = repo.join("target/qemu-guest");
    let o = Command::new("bash")
        .arg(repo.join("scripts/qemu-guest"))
        .arg(&out)
        .output()
        .map_err(|e| format!("scripts/qemu-guest: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "scripts/qemu-guest failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(Image {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initrd.img"),
    })
}

/// The accelerator that runs the guest here: `TAPIR_QEMU_ACCEL` if set,
/// else KVM if a guest boots under it within 20 s (on some machines
/// `/dev/kvm` exists but a guest hangs), else TCG.
pub fn accel(img: &Image, dir: &Path) -> &'static str {
    match std::env::var("TAPIR_QEMU_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return "tcg";
    }
    let console = dir.join("kvm-probe.log");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 tapir.probe=1",
            "-no-reboot",
            "-serial",
        ])
        .arg(format!("file:{}", console.display()))
        .spawn();
    let Ok(mut child) = child else { return "tcg" };
    let booted = wait_for(Duration::from_secs(20), || {
        let c = std::fs::read_to_string(&console).unwrap_or_default();
        c.contains("guest-probe: up").then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    if booted.is_some() {
        "kvm"
    } else {
        "tcg"
    }
}

/// A guest's settings: its NIC (tap name, MAC, the scripts QEMU runs as
/// ifup and ifdown) and what its init configures.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub tap: String,
    pub mac: String,
    pub ifup: PathBuf,
    pub ifdown: PathBuf,
    pub addr: String,
    pub gateway: String,
    pub prefix: String,
    pub asn: u32,
    pub memory_mib: u32,
}

/// The reference VM `vm{n}` as a QEMU guest on `hv`, named `recdns1001`
/// to Ganeti, announcing `prefix`: QEMU's `script=` and `downscript=` set
/// the environment Ganeti's KVM hypervisor gives its NIC hooks (QEMU
/// passes the tap's name as `$1`), then run the project's
/// `contrib/ganeti/kvm-if{up,down}-custom` against the tapir on `hv`.
pub fn ganeti_guest(lab: &Lab, hv: &str, tapir: &Path, n: u32, prefix: &str) -> Spec {
    ganeti_guest_with(lab, hv, tapir, n, prefix, Some(crate::reference::TAP_MAC))
}

/// As [`ganeti_guest`], with the hook's `TAP_MAC` (`None`: unset, so each
/// tap keeps the random MAC the kernel gave it).
pub fn ganeti_guest_with(
    lab: &Lab,
    hv: &str,
    tapir: &Path,
    n: u32,
    prefix: &str,
    tap_mac: Option<&str>,
) -> Spec {
    let mac = format!("52:54:00:00:00:{n:02x}");
    let hook = |which: &str| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let script = repo.join(format!("contrib/ganeti/kvm-{which}-custom"));
        let socket = lab.dir().join(hv).join("tapir.sock");
        let path = lab.write(
            &format!("{hv}/qemu-{which}-{n}"),
            &format!(
                "#!/bin/sh
                 export INSTANCE=recdns1001 INTERFACE=\"$1\" INTERFACE_INDEX=0 MODE=routed                  IP={ip} MAC={mac} TAGS='tapir:prefix:{prefix} tapir:asn:{asn}'                  GATEWAY4={gw} TAP_MAC={tap_mac} TAPIR='{tapir}' TAPIR_SOCKET='{socket}'\n                 exec sh {script}\n",
                ip = crate::reference::vm_v4(n),
                asn = crate::reference::VM_AS,
                gw = crate::reference::GATEWAY_V4,
                tap_mac = tap_mac.unwrap_or(""),
                tapir = tapir.display(),
                socket = socket.display(),
                script = script.display()
            ),
        );
        crate::run("chmod", &["755", &path.display().to_string()]);
        path
    };
    let (ifup, ifdown) = (hook("ifup"), hook("ifdown"));
    Spec {
        name: format!("vm{n}"),
        tap: format!("tap{n}"),
        mac,
        ifup,
        ifdown,
        addr: crate::reference::vm_v4(n),
        gateway: crate::reference::GATEWAY_V4.into(),
        prefix: prefix.into(),
        asn: crate::reference::VM_AS,
        memory_mib: 192,
    }
}

/// One QEMU process.
pub struct Guest {
    pub host: String,
    pub pid: u32,
    pub qmp: PathBuf,
    pub console: PathBuf,
}

impl Lab {
    /// Starts QEMU in `host` with the guest; with `incoming` (an address
    /// of `host`'s), it waits there for a migration instead of booting.
    pub fn qemu(
        &mut self,
        host: &str,
        img: &Image,
        accel: &str,
        spec: &Spec,
        incoming: Option<&str>,
    ) -> Guest {
        let tag = format!("{}-{host}", spec.name);
        let qmp = self.dir().join(format!("{tag}.qmp"));
        let console = self.dir().join(format!("{tag}.console"));
        let append = format!(
            "console=ttyS0 panic=-1 quiet tapir.addr={} tapir.gw={} tapir.prefix={} tapir.as={}",
            spec.addr, spec.gateway, spec.prefix, spec.asn
        );
        let mut args: Vec<String> = [
            "qemu-system-x86_64",
            "-accel",
            accel,
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-kernel",
            &img.kernel.display().to_string(),
            "-initrd",
            &img.initrd.display().to_string(),
            "-append",
            &append,
            "-serial",
            &format!("file:{}", console.display()),
            "-netdev",
            &format!(
                "tap,id=n0,ifname={},script={},downscript={}",
                spec.tap,
                spec.ifup.display(),
                spec.ifdown.display()
            ),
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={}", spec.mac),
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(a) = incoming {
            args.push("-incoming".into());
            args.push(format!("tcp:{a}"));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = self.spawn(host, &argv, &format!("{tag}.qemu.log"));
        let g = Guest {
            host: host.to_string(),
            pid,
            qmp,
            console,
        };
        if wait_for(Duration::from_secs(20), || g.qmp.exists().then_some(())).is_none() {
            panic!(
                "QEMU in {host} has no QMP socket:\n{}",
                self.log(&format!("{tag}.qemu.log"))
            );
        }
        g
    }
}

impl Guest {
    /// One QMP command and its `return` (or the error).
    pub fn qmp(&self, command: &str, arguments: Value) -> Result<Value, String> {
        let s = UnixStream::connect(&self.qmp).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        // The greeting, then capabilities negotiation.
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let mut ask = |msg: Value| -> Result<Value, String> {
            writeln!(w, "{msg}").map_err(|e| e.to_string())?;
            loop {
                line.clear();
                if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err("QMP closed".into());
                }
                let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
                if v.get("event").is_some() {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    return Err(e.to_string());
                }
                return Ok(v["return"].clone());
            }
        };
        ask(json!({"execute": "qmp_capabilities"}))?;
        let mut msg = json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        ask(msg)
    }

    /// What the guest wrote to its serial console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The guest's last view of its BGP session (its BIRD's `show
    /// protocols` line), from the console.
    pub fn bgp(&self) -> Option<String> {
        self.console()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("guest-bgp ").map(str::to_string))
    }

    /// While the guest's BIRD says Established: since when, as
    /// milliseconds since midnight on its clock (compare two readings with
    /// [`crate::bird::same_instant`]).
    pub fn established_since(&self) -> Option<u64> {
        // "<uptime> hv BGP --- up 2026-12-05 13:20:11.123 Established"
        let l = self.bgp()?;
        let t: Vec<&str> = l.split_whitespace().collect();
        if t.len() > 6 && t.last() == Some(&"Established") {
            crate::bird::time_of_day_ms(t[t.len() - 2])
        } else {
            None
        }
    }

    /// Waits until the guest's BIRD says Established.
    pub fn wait_established(&self, limit: Duration) -> bool {
        wait_for(limit, || {
            self.bgp().filter(|l| l.contains("Established")).map(|_| ())
        })
        .is_some()
    }

    /// Migrates to `to` (a QEMU started with `-incoming tcp:ADDR`), as
    /// Ganeti does: `migrate`, then `query-migrate` until it completes.
    /// Returns when the source says the migration completed (the guest
    /// runs at the destination), seen within 5 ms and a QMP round trip.
    /// A destination that is not listening yet (QEMU opens its QMP socket
    /// before its `-incoming` one) is tried again for 10 s.
    pub fn migrate(&self, addr: &str, limit: Duration) -> Result<Instant, String> {
        let start = Instant::now();
        self.qmp("migrate", json!({ "uri": format!("tcp:{addr}") }))?;
        while start.elapsed() < limit {
            let st = self.qmp("query-migrate", Value::Null)?;
            match st["status"].as_str() {
                Some("completed") => return Ok(Instant::now()),
                Some("failed")
                    if st.to_string().contains("Connection refused")
                        && start.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                    self.qmp("migrate", json!({ "uri": format!("tcp:{addr}") }))?;
                }
                Some("failed") | Some("cancelled") => return Err(st.to_string()),
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        Err(format!("migration not complete within {limit:?}"))
    }
}

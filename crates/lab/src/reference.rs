//! The reference lab (docs/design.md).
//!
//! `tor` holds a bridge `br0` (10.192.21.1/24, 2001:db8:21::1/64) that every
//! hypervisor's uplink `eno1` joins; hv1 is .6/::6, hv2 .7/::7. A VM `vmN`
//! sits behind `tapN` on a hypervisor: the tap carries the gateway
//! `10.192.24.1/32 scope link` and MAC 22:22:22:22:22:01 (so the link-local
//! fe80::2022:22ff:fe22:2201), and the hypervisor routes the VM's /32 and
//! /128 `proto static dev tapN` as the ifup hook does.
//!
//! Between a VM and its taps sits a wire host `wN` with a bridge: the VM's
//! `eth0` is one port, each tap's far end another. A tap removed or moved
//! leaves the VM's NIC up, as in a live migration, where the guest's
//! virtio NIC never loses its carrier.

use crate::Lab;

pub const TOR_V4: &str = "10.192.21.1";
pub const TOR_V6: &str = "2001:db8:21::1";
pub const TOR_AS: u32 = 65020;
pub const HV_AS: u32 = 64612;
pub const GATEWAY_V4: &str = "10.192.24.1";
pub const GATEWAY_LL: &str = "fe80::2022:22ff:fe22:2201";
pub const TAP_MAC: &str = "22:22:22:22:22:01";

/// Uplink addresses of a hypervisor (`hv1` → .6, `hv2` → .7).
pub fn hv_addresses(hv: &str) -> (String, String) {
    let n: u32 = hv.trim_start_matches("hv").parse().unwrap_or(1) + 5;
    (format!("10.192.21.{n}"), format!("2001:db8:21::{n}"))
}

pub fn vm_v4(n: u32) -> String {
    format!("10.192.24.{n}")
}

pub fn vm_v6(n: u32) -> String {
    format!("2001:db8:140::{n}")
}

/// The AS of the reference VMs' BIRD.
pub const VM_AS: u32 = 64613;

/// The lab most tests start from: `tor`'s bridge, `hv1` on it, and VMs
/// `vmN` behind `tapN` on hv1 for each N of `vms`.
pub fn standard(vms: &[u32]) -> Lab {
    let mut lab = Lab::new();
    build(&mut lab, &["hv1"]);
    for &n in vms {
        add_vm(&mut lab, "hv1", n);
    }
    lab
}

/// BIRD in `vmN` with the reference VM config (multihop to the gateway,
/// AS [`VM_AS`]), announcing `announce`.
pub fn vm_bird(lab: &mut Lab, n: u32, announce: &[&str]) -> crate::bird::Bird {
    lab.bird(&format!("vm{n}"), &vm_bird_config(n, VM_AS, announce))
}

/// Creates `tor` and the given hypervisors joined to its bridge.
pub fn build(lab: &mut Lab, hvs: &[&str]) {
    lab.add_host("tor");
    lab.ip("tor", &["link", "add", "br0", "type", "bridge"]);
    lab.addr("tor", "br0", &format!("{TOR_V4}/24"));
    lab.addr("tor", "br0", &format!("{TOR_V6}/64"));
    lab.up("tor", "br0");
    for hv in hvs {
        lab.add_host(hv);
        lab.link(hv, "eno1", "tor", hv);
        lab.ip("tor", &["link", "set", hv, "master", "br0"]);
        lab.up("tor", hv);
        let (v4, v6) = hv_addresses(hv);
        lab.addr(hv, "eno1", &format!("{v4}/24"));
        lab.addr(hv, "eno1", &format!("{v6}/64"));
        lab.up(hv, "eno1");
    }
    // For capturing wire vectors (scripts/capture-vectors): every BGP
    // message crossing tor's bridge goes to <lab dir>/tor.pcap.
    if std::env::var_os("TAPIR_LAB_CAPTURE").is_some() {
        let pcap = lab.dir().join("tor.pcap");
        lab.spawn(
            "tor",
            &[
                "tcpdump",
                "--immediate-mode",
                "-i",
                "br0",
                "-U",
                "-w",
                &pcap.to_string_lossy(),
                "tcp",
                "port",
                "179",
            ],
            "tcpdump.log",
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Adds `vmN` behind `tapN` on `hv`, as the ifup hook and the VM's own
/// network config would set it up.
pub fn add_vm(lab: &mut Lab, hv: &str, n: u32) {
    lab.add_host(&format!("vm{n}"));
    plug(lab, hv, &format!("tap{n}"), n, n);
}

/// Connects VM `vm_n` to `hv` through a new tap `tap` and runs the ifup
/// steps. The first time, the VM's NIC is made and configured as the VM's
/// own network config would: `claimed` is the host number it configures
/// (equal to `vm_n` unless the VM lies about its address).
pub fn plug(lab: &mut Lab, hv: &str, tap: &str, vm_n: u32, claimed: u32) {
    plug_with(lab, hv, tap, vm_n, claimed, true);
}

/// As [`plug`], but the hypervisor's ifup steps are left to the caller
/// (a hook under test): the tap is created, down, with no address.
pub fn plug_bare(lab: &mut Lab, hv: &str, tap: &str, vm_n: u32) {
    plug_with(lab, hv, tap, vm_n, vm_n, false);
}

fn plug_with(lab: &mut Lab, hv: &str, tap: &str, vm_n: u32, claimed: u32, run_ifup: bool) {
    let vm = format!("vm{vm_n}");
    let wire = format!("w{vm_n}");
    let first = !lab.has_host(&wire);
    if first {
        lab.add_host(&wire);
        // The wire is a cable: no addresses of its own, so nothing of it
        // answers the hypervisor's neighbor discovery.
        for key in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            lab.exec(&wire, &["sysctl", "-qw", key]);
        }
        lab.ip(
            &wire,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        lab.up(&wire, "br0");
        lab.link(&vm, "eth0", &wire, "vm");
        lab.ip(&wire, &["link", "set", "vm", "master", "br0"]);
        lab.up(&wire, "vm");
    }
    connect_tap(lab, hv, tap, vm_n, run_ifup);
    if !first {
        return;
    }
    // VM side: host addresses, the gateway on-link.
    lab.addr(&vm, "eth0", &format!("{}/32", vm_v4(claimed)));
    lab.addr(&vm, "eth0", &format!("{}/128", vm_v6(claimed)));
    lab.up(&vm, "eth0");
    lab.ip(
        &vm,
        &["route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link"],
    );
    lab.ip(
        &vm,
        &[
            "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0", "onlink",
        ],
    );
    lab.ip(
        &vm,
        &[
            "-6", "route", "add", "default", "via", GATEWAY_LL, "dev", "eth0",
        ],
    );
}

/// A new tap on `hv` whose far end joins VM `vm_n`'s wire, then ifup.
fn connect_tap(lab: &mut Lab, hv: &str, tap: &str, vm_n: u32, run_ifup: bool) {
    let wire = format!("w{vm_n}");
    let port = format!("{hv}-{tap}");
    lab.link(hv, tap, &wire, &port);
    // Hypervisor side: same gateway address and MAC on every tap.
    lab.ip(hv, &["link", "set", tap, "address", TAP_MAC]);
    lab.ip(&wire, &["link", "set", &port, "master", "br0"]);
    lab.up(&wire, &port);
    if run_ifup {
        ifup(lab, hv, tap, vm_n);
    }
}

/// Removes a tap from a hypervisor. The VM keeps its NIC, unconnected.
pub fn unplug(lab: &mut Lab, hv: &str, tap: &str) {
    lab.ip(hv, &["link", "del", tap]);
}

/// BIRD on a hypervisor with the reference config (docs/design.md) verbatim,
/// the group filter, and the export to tor: the baseline tapir replaces.
pub fn hv_bird_config(router_id: &str) -> String {
    format!(
        "router id {router_id};\nprotocol device {{ }}\n\
         filter BGP_FROM_VMS {{ if net ~ [ 10.3.0.0/24{{32,32}} ] then accept; reject; }}\n\
         protocol bgp vms {{\n  ipv4 {{ import filter BGP_FROM_VMS; export none; }};\n  \
           local {GATEWAY_V4} as {HV_AS};\n  neighbor range 10.192.24.0/23 external;\n  multihop;\n}}\n\
         protocol bgp tor {{ local {router_id} as {HV_AS}; neighbor 10.192.21.1 as 65020;\n  \
           ipv4 {{ import none; export where source = RTS_BGP; }}; }}\n"
    )
}

/// The reference VM's BIRD config (docs/design.md), with the `protocol bgp`
/// block verbatim and the VM's service prefixes as static routes exported
/// to the hypervisor. `extra` goes inside the `protocol bgp` block (timers).
pub fn vm_bird_config(n: u32, asn: u32, announce: &[&str]) -> String {
    vm_bird_config_with(n, asn, announce, "")
}

pub fn vm_bird_config_with(n: u32, asn: u32, announce: &[&str], extra: &str) -> String {
    let addr = vm_v4(n);
    let statics: String = announce
        .iter()
        .map(|p| format!("    route {p} unreachable;\n"))
        .collect();
    format!(
        "log stderr all;\n\
         router id {addr};\n\
         protocol device {{ }}\n\
         protocol static {{\n    ipv4;\n{statics}}}\n\
         protocol bgp {{\n    \
             ipv4 {{ import none; export where source = RTS_STATIC; }};\n    \
             local {addr} as {asn};\n    \
             neighbor {GATEWAY_V4} external;\n    \
             multihop;\n    \
             {extra}\n\
         }}\n"
    )
}

/// A VM that peers over IPv6 link-local only, BIRD's default single-hop
/// (the reference lab's vm12: `neighbor fe80::2022:22ff:fe22:2201%eth0 external;`).
pub fn vm_bird_link_local_config(n: u32, asn: u32, announce: &[&str], extra: &str) -> String {
    let statics: String = announce
        .iter()
        .map(|p| format!("    route {p} unreachable;\n"))
        .collect();
    format!(
        "log stderr all;\n\
         router id {};\n\
         protocol device {{ }}\n\
         protocol static {{\n    ipv6;\n{statics}}}\n\
         protocol bgp {{\n    \
             ipv6 {{ import none; export where source = RTS_STATIC; }};\n    \
             local as {asn};\n    \
             neighbor {GATEWAY_LL}%eth0 external;\n    \
             {extra}\n\
         }}\n",
        vm_v4(n)
    )
}

/// A VM with both session styles: the reference IPv4 block (multihop to the
/// gateway) and an IPv6 link-local block, each exporting its service
/// prefixes of that family.
pub fn vm_bird_dual_config(n: u32, asn: u32, v4: &[&str], v6: &[&str]) -> String {
    let s4: String = v4
        .iter()
        .map(|p| format!("    route {p} unreachable;\n"))
        .collect();
    let s6: String = v6
        .iter()
        .map(|p| format!("    route {p} unreachable;\n"))
        .collect();
    let addr = vm_v4(n);
    format!(
        "log stderr all;\n\
         router id {addr};\n\
         protocol device {{ }}\n\
         protocol static static4 {{\n    ipv4;\n{s4}}}\n\
         protocol static static6 {{\n    ipv6;\n{s6}}}\n\
         protocol bgp bgp1 {{\n    \
             ipv4 {{ import none; export where source = RTS_STATIC; }};\n    \
             local {addr} as {asn};\n    \
             neighbor {GATEWAY_V4} external;\n    \
             multihop;\n\
         }}\n\
         protocol bgp bgp6 {{\n    \
             ipv6 {{ import none; export where source = RTS_STATIC; }};\n    \
             local as {asn};\n    \
             neighbor {GATEWAY_LL}%eth0 external;\n\
         }}\n"
    )
}

/// A live migration, as far as the network sees it: the VM's tap goes away
/// on one hypervisor and appears (same name) on the other, where the ifup
/// steps run. The VM's NIC stays up throughout.
pub fn migrate(lab: &mut Lab, from: &str, to: &str, tap: &str, vm_n: u32) {
    unplug(lab, from, tap);
    connect_tap(lab, to, tap, vm_n, true);
}

/// The hypervisor side of a VM's tap, as the ifup hook sets it up: the
/// gateway address `scope link`, and the VM's /32 and /128 `proto static`.
fn ifup(lab: &mut Lab, hv: &str, tap: &str, vm_n: u32) {
    lab.up(hv, tap);
    lab.ip(
        hv,
        &[
            "addr",
            "add",
            &format!("{GATEWAY_V4}/32"),
            "dev",
            tap,
            "scope",
            "link",
        ],
    );
    lab.ip(
        hv,
        &[
            "route",
            "replace",
            &format!("{}/32", vm_v4(vm_n)),
            "proto",
            "static",
            "dev",
            tap,
        ],
    );
    lab.ip(
        hv,
        &[
            "-6",
            "route",
            "replace",
            &format!("{}/128", vm_v6(vm_n)),
            "proto",
            "static",
            "dev",
            tap,
        ],
    );
}

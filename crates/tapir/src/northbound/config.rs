//! The TOML configuration: parsed once, validated at the edge, and every
//! error reported with the file, line and column of the key at fault.
//!
//! ```toml
//! router-id = "10.192.21.6"
//! local-as = 64612
//! announce = ["10.3.0.0/24"]
//!
//! [[neighbor]]
//! name = "tor-v4"
//! address = "10.192.21.1"
//! remote-as = 65020          # or "external" / "internal"
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bgp::session::RemoteAs;
use bgp::{Afi, Prefix};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::routing::policy::{
    parse_community, parse_large_community, AsPathMode, Match, Policy, Term,
};
use crate::routing::prefix_set::{PrefixPattern, PrefixSet};
use std::sync::Arc;

// The types below are the configuration's vocabulary that the rest of
// the daemon reads (BFD timers, TCP-AO keys, drains, VM entries): they
// live here so that the configuration imports no domain module.

/// Timers asked for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BfdTimers {
    pub interval: Duration,
    pub multiplier: u8,
}

/// The longest TCP-MD5 or TCP-AO key the kernel takes
/// (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// A TCP-AO master key tuple (RFC 5925): the key, its algorithm as the
/// kernel's crypto API names it (`hmac(sha1)`, `cmac(aes128)`, …), the
/// KeyIDs each way and the MAC length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AoKey {
    pub key: Vec<u8>,
    pub algorithm: String,
    pub send_id: u8,
    pub recv_id: u8,
    pub mac_len: u8,
}

/// How drains are done (`[drain]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    pub local_pref: u32,
    /// Our AS this many more times on a drained route's AS path (eBGP),
    /// for top-of-racks that ignore GRACEFUL_SHUTDOWN: 0 to 10.
    pub prepend: u8,
    /// Withdraw this long after the drain starts (None: only when asked).
    pub withdraw_after: Option<std::time::Duration>,
}

/// A BMP collector (`[[bmp]]`, RFC 7854).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmpConfig {
    /// `HOST:PORT`, resolved at each connection attempt.
    pub address: String,
    /// How often Statistics Reports go out (None: never).
    pub statistics_interval: Option<std::time::Duration>,
}

/// Where an entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Config,
    /// `tapir vm add` (a hook), kept in the state directory.
    Registered,
    /// `tapir vm sync FILE` (the source of truth), kept likewise.
    Synced,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEntry {
    pub name: String,
    /// One NIC of a VM with several (`tapir vm add --nic`): the entries of
    /// one VM's NICs share its name and its prefixes.
    pub nic: Option<String>,
    /// The tap the VM must be on, if the entry says.
    pub interface: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub asn: Option<u32>,
    pub prefixes: Vec<PrefixPattern>,
    /// The MAC address of the VM's NIC, if the entry gives it: the entry
    /// is the VM's only where the kernel sees that MAC behind the address
    /// (another VM given a reused address does not inherit it).
    pub mac: Option<Mac>,
    pub source: Source,
    /// A registration whose VM is nowhere to be seen (its tap gone, or
    /// none of its addresses routed there) since then: it is dropped after
    /// [`REGISTRATION_GRACE`] unless the VM comes back.
    pub missing_since: Option<std::time::Instant>,
}

/// How long a registration outlives its VM's absence: enough for a
/// reboot or a NIC hot-plug; a node that crashed, or an ifdown hook that
/// never ran, leaves nothing for the next VM on the same tap.
pub const REGISTRATION_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// An Ethernet address, `52:54:00:12:34:56`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

/// A MAC address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (like 52:54:00:12:34:56)")]
pub struct MacError(pub String);

impl std::str::FromStr for Mac {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Mac, MacError> {
        let bad = || MacError(s.to_string());
        let mut m = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut m {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(m))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A link-local address among `addresses` when no interface says which
/// tap it is on: any VM could have it on its own.
pub fn link_local_without_interface(
    addresses: &[IpAddr],
    interface: &Option<String>,
) -> Option<IpAddr> {
    if interface.is_some() {
        return None;
    }
    addresses
        .iter()
        .find(|a| matches!(a, IpAddr::V6(v6) if crate::southbound::net::is_link_local(*v6)))
        .copied()
}

/// A NIC's id (`[[vm]] nic`, `tapir vm add --nic`): 1 to 64 characters,
/// no blanks or control characters.
pub fn nic_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Why a VM entry cannot stand beside another: the inventory holds each
/// name, address and prefix once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("VM `{0}` is already in the inventory")]
    Name(String),
    #[error("VM `{name}`: NIC {nic} is already in the inventory")]
    Nic { name: String, nic: String },
    #[error("VM `{0}` is in the inventory as a whole VM and as NICs (--nic): give every entry of it a NIC, or none")]
    NicAndWhole(String),
    #[error("address {address} already belongs to VM `{owner}`")]
    Address { address: IpAddr, owner: String },
    #[error("prefix {prefix} overlaps {other}, owned by VM `{owner}`")]
    Prefix {
        prefix: PrefixPattern,
        other: PrefixPattern,
        owner: String,
    },
}

impl VmEntry {
    /// Why `self` cannot join an inventory that holds `other`, if it
    /// cannot.
    pub fn conflict(&self, other: &VmEntry) -> Option<Conflict> {
        if other.name == self.name {
            match (&self.nic, &other.nic) {
                (None, None) => return Some(Conflict::Name(self.name.clone())),
                (Some(a), Some(b)) if a == b => {
                    return Some(Conflict::Nic {
                        name: self.name.clone(),
                        nic: a.clone(),
                    })
                }
                (Some(_), Some(_)) => {
                    // Two NICs of one VM: they share its prefixes, never
                    // an address.
                    let a = self
                        .addresses
                        .iter()
                        .find(|a| other.addresses.contains(a))?;
                    return Some(Conflict::Address {
                        address: *a,
                        owner: other.name.clone(),
                    });
                }
                _ => return Some(Conflict::NicAndWhole(self.name.clone())),
            }
        }
        if let Some(a) = self.addresses.iter().find(|a| other.addresses.contains(a)) {
            return Some(Conflict::Address {
                address: *a,
                owner: other.name.clone(),
            });
        }
        for p in &self.prefixes {
            if let Some(q) = other.prefixes.iter().find(|q| q.overlaps(p)) {
                return Some(Conflict::Prefix {
                    prefix: *p,
                    other: *q,
                    owner: other.name.clone(),
                });
            }
        }
        None
    }
}

/// A configuration error with its place in the file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: error: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    pub listen: Vec<SocketAddr>,
    /// Prefixes announced to every neighbor whose session carries their family.
    pub announce: Vec<Prefix>,
    pub neighbors: Vec<Neighbor>,
    /// Dynamic VM groups (`[[group]]`).
    pub groups: Vec<Group>,
    /// Inventory entries from the config (`[[vm]]` and the `inventory` file).
    pub vms: Vec<VmEntry>,
    /// Where run-time state (VM registrations) is kept.
    pub state_dir: Option<PathBuf>,
    /// How long a registration outlives its VM's absence.
    pub registration_grace: Duration,
    /// Kernel FIB sync (`[kernel]`).
    pub kernel: KernelConfig,
    /// Graceful restart (`[graceful-restart]`, RFC 4724).
    pub graceful_restart: GracefulRestartConfig,
    /// Drain (`[drain]`, RFC 8326).
    pub drain: DrainConfig,
    /// Where the Prometheus endpoint listens (`[metrics] listen`); off
    /// without.
    pub metrics: Option<SocketAddr>,
    /// BMP collectors (`[[bmp]]`).
    pub bmp: Vec<BmpConfig>,
    /// BMP reports static neighbors and the gateway too, not only VM
    /// sessions (`neighbors = true` in a `[[bmp]]`).
    pub bmp_neighbors: bool,
    /// The guest role (`[gateway]`): tapir inside a VM.
    pub gateway: Option<GatewayConfig>,
    /// Health-checked announcements (`[[service]]`).
    pub services: Vec<Service>,
}

/// `[gateway]`: the guest role's neighbor, the VM's default gateway as the
/// kernel has it (or explicit addresses). One session per family.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// Everything but the address (and name), which discovery fills in.
    pub template: Neighbor,
    /// Only gateways out of this interface (default: any).
    pub interface: Option<String>,
    /// Explicit gateway addresses instead of discovery (a link-local one
    /// needs `interface`).
    pub addresses: Vec<IpAddr>,
}

/// `[[service]]`: prefixes announced while their checks pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub prefixes: Vec<Prefix>,
    pub checks: Vec<Check>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes before the prefixes are announced.
    pub rise: u32,
    /// Consecutive failures before they are withdrawn.
    pub fall: u32,
    /// Each prefix's address must be configured on a local interface.
    pub require_address: bool,
}

/// One health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Runs a program (no shell); exit status 0 passes.
    Command(Vec<String>),
    /// A TCP connection is accepted.
    Tcp(SocketAddr),
    /// `GET path` answers with this status.
    Http {
        address: SocketAddr,
        host: String,
        path: String,
        status: u16,
    },
    /// A DNS query over UDP is answered (NOERROR, at least one answer).
    Dns {
        server: SocketAddr,
        name: String,
        record: u16,
    },
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Command(argv) => write!(f, "command {}", argv.join(" ")),
            Check::Tcp(a) => write!(f, "tcp {a}"),
            Check::Http {
                address,
                path,
                status,
                ..
            } => write!(f, "http {address}{path} = {status}"),
            Check::Dns { server, name, .. } => write!(f, "dns {name} @{server}"),
        }
    }
}

/// `[graceful-restart]`: tapir as restarting speaker and as helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Restart time advertised to upstream neighbors (0: no capability).
    pub restart_time: u16,
    /// After a graceful restart: how long to wait for the VMs to announce
    /// again before stale kernel routes go and End-of-RIB goes upstream.
    pub deferral: Duration,
    /// As a helper: the longest a peer's restart time is honoured.
    pub helper_max_time: u16,
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        GracefulRestartConfig {
            restart_time: 120,
            deferral: Duration::from_secs(10),
            helper_max_time: 120,
        }
    }
}

/// `[kernel]`: how routes go into the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Install routes at all (VM routes, and neighbors with `kernel-import`).
    pub install: bool,
    /// Our route protocol number (default `tapir`, [`TAPIR_PROTOCOL`]).
    pub protocol: u8,
    /// Route metric (priority); lower is preferred by the kernel.
    pub metric: u32,
    /// Seconds between scans of our routes in the kernel (see
    /// `southbound::fib`).
    pub scan_interval: Duration,
    /// Install all equally good paths as one ECMP route (anycast served by
    /// several VMs).
    pub multipath: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            install: true,
            protocol: TAPIR_PROTOCOL,
            metric: TAPIR_METRIC,
            scan_interval: Duration::from_secs(60),
            multipath: false,
        }
    }
}

/// What to do when a VM announces more prefixes than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxPrefixAction {
    /// Refuse the prefixes past the limit; the session stays.
    Reject,
    /// End the session with Cease / Maximum Number of Prefixes Reached.
    Teardown,
}

/// A dynamic peer group: every VM on an interface matching `interfaces`
/// with an address in `ranges` (C2, docs/design.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub name: String,
    pub interfaces: Vec<String>,
    pub ranges: Vec<Prefix>,
    /// Every VM session's settings; an inventory entry's `asn` overrides
    /// `remote-as`.
    pub session: SessionSettings,
    /// Group-level filter for VMs without an inventory entry.
    pub import: Option<(String, PrefixSet)>,
    pub max_prefixes: usize,
    pub max_prefixes_action: MaxPrefixAction,
    /// Kernel route protocols whose `/32`/`/128 dev TAP` routes make a VM known.
    pub route_protocols: Vec<u8>,
    /// Graceful restart time advertised (RFC 4724), 0 for none.
    pub graceful_restart_time: u16,
    /// Accept IPv4 routes with IPv6 next hops (RFC 8950), as link-local
    /// VMs send them.
    pub extended_next_hop: bool,
    /// Sessions in the whole group, and on one tap.
    pub max_sessions: usize,
    pub max_sessions_per_interface: usize,
    /// New connections accepted from one tap per second (burst: twice it).
    pub connection_rate: u32,
}

/// What every session is configured with, a static neighbor's, a VM
/// group's or the gateway's alike; the running session keeps it as it is
/// (`PeerConfig::session`). The keys are shared, not copied, by the
/// thousand sessions of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionSettings {
    pub remote_as: RemoteAsConfig,
    /// 0 or at least 3 seconds (RFC 4271 §4.2).
    pub hold_time: u16,
    pub connect_retry: Duration,
    /// BFD (single-hop) while the session is up.
    pub bfd: Option<BfdTimers>,
    /// Limits against a broken or hostile peer (docs/security.md).
    pub limits: SessionLimits,
    /// What the peer's routes must look like.
    pub import_rules: ImportRules,
    /// TCP-MD5 key (RFC 2385).
    pub password: Option<Arc<[u8]>>,
    /// GTSM (RFC 5082): send with TTL 255, accept only 255.
    pub ttl_security: bool,
    /// TCP-AO (RFC 5925) key.
    pub tcp_ao: Option<Arc<AoKey>>,
}

/// What is checked of a peer's routes beyond what every peer gets (AS 0,
/// confederation segments and our own AS are always refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRules {
    /// eBGP: a path must begin with the peer's AS (RFC 4271 §6.3).
    pub enforce_first_as: bool,
    /// Unknown optional transitive attributes kept (by type code); `None`
    /// keeps them all.
    pub allow_attributes: Option<Vec<u8>>,
}

impl Config {
    /// What is allowed but probably not meant, for `tapir check` and the
    /// log at start and reload.
    pub fn warnings(&self) -> Vec<String> {
        self.neighbors
            .iter()
            .filter(|n| n.export.name == Policy::RFC8212)
            .map(|n| {
                format!(
                    "neighbor `{}`: no export policy, so nothing is sent to it (RFC 8212); name one with export = \"NAME\"",
                    n.name
                )
            })
            .collect()
    }
}

impl ImportRules {
    /// A static neighbor's: a route server's paths pass, as do
    /// attributes we do not know (RFC 4271 §5).
    pub fn neighbor_default() -> ImportRules {
        ImportRules {
            enforce_first_as: false,
            allow_attributes: None,
        }
    }

    /// A VM's, by default: its own AS first, no unknown attributes.
    pub fn vm_default() -> ImportRules {
        ImportRules {
            enforce_first_as: true,
            allow_attributes: Some(Vec::new()),
        }
    }
}

/// Per-session limits against a broken or hostile peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// RFC 9687; None: 8 minutes or twice the hold time.
    pub send_hold_time: Option<Duration>,
    /// Longer AS paths are treated as withdrawn.
    pub max_as_path_length: usize,
    /// Bytes queued for the peer beyond which the connection is closed.
    pub max_send_queue: usize,
}

impl Group {
    pub fn matches_interface(&self, ifname: &str) -> bool {
        self.interfaces.iter().any(|p| glob(p, ifname))
    }

    pub fn matches_address(&self, addr: &IpAddr) -> bool {
        self.ranges.iter().any(|r| {
            Prefix::new(*addr, if addr.is_ipv4() { 32 } else { 128 }).is_ok_and(|h| r.contains(&h))
        })
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// tapir's own route protocol (`tapir` in /etc/iproute2/rt_protos.d/,
/// which the package installs): not 186 (`bgp`), which FRR's zebra uses
/// for its BGP routes, so that tapir's start never flushes them.
pub const TAPIR_PROTOCOL: u8 = 180;
/// tapir's route metric: not FRR's 20 nor BIRD's 32, so that a route of
/// theirs for the same prefix is never replaced by ours.
pub const TAPIR_METRIC: u32 = 180;

/// Route protocol names as in iproute2's rt_protos.
fn route_protocol(name: &str) -> Option<u8> {
    Some(match name {
        "redirect" => 1,
        "kernel" => 2,
        "boot" => 3,
        "static" => 4,
        "ra" => 9,
        "dhcp" => 16,
        "zebra" => 11,
        "bird" => 12,
        "bgp" => 186,
        "tapir" => TAPIR_PROTOCOL,
        n => return n.parse().ok(),
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Neighbor {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub local_address: Option<IpAddr>,
    pub passive: bool,
    pub families: Vec<Afi>,
    /// Export policy (`export = "NAME"`); the hypervisor default without.
    pub export: Arc<Policy>,
    /// Install the routes learned from this neighbor into the kernel.
    pub kernel_import: bool,
    pub session: SessionSettings,
}

/// `remote-as`: a number, `external` or `internal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteAsConfig {
    Exact(u32),
    External,
    Internal,
    /// A list of ASNs and ranges (`[64613, "64700-64799"]`).
    Ranges(Vec<(u32, u32)>),
}

impl RemoteAsConfig {
    pub fn to_session(&self) -> RemoteAs {
        match self {
            RemoteAsConfig::Exact(a) => RemoteAs::Exact(*a),
            RemoteAsConfig::External => RemoteAs::External,
            RemoteAsConfig::Internal => RemoteAs::Internal,
            RemoteAsConfig::Ranges(r) => RemoteAs::Ranges(r.clone()),
        }
    }
}

impl std::fmt::Display for RemoteAsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteAsConfig::Exact(a) => write!(f, "{a}"),
            RemoteAsConfig::External => write!(f, "external"),
            RemoteAsConfig::Internal => write!(f, "internal"),
            RemoteAsConfig::Ranges(r) => {
                let parts: Vec<String> = r
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

// ---- the file's shape; every field parsed into a type that is valid ----

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawConfig {
    router_id: Ipv4Addr,
    local_as: Spanned<u32>,
    #[serde(default)]
    listen: Option<Vec<SocketAddr>>,
    #[serde(default, deserialize_with = "prefixes")]
    announce: Vec<Prefix>,
    #[serde(default)]
    neighbor: Vec<Spanned<RawNeighbor>>,
    state_dir: Option<PathBuf>,
    registration_grace: Option<Spanned<u64>>,
    #[serde(default)]
    prefix_sets: std::collections::BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    vm: Vec<Spanned<RawVm>>,
    inventory: Option<Spanned<PathBuf>>,
    #[serde(default)]
    policy: std::collections::BTreeMap<String, Spanned<RawPolicy>>,
    kernel: Option<RawKernel>,
    graceful_restart: Option<RawGracefulRestart>,
    drain: Option<RawDrain>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    bmp: Vec<Spanned<RawBmp>>,
    gateway: Option<Spanned<RawGateway>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

/// Declares the raw form of a session section (`[[neighbor]]`,
/// `[[group]]`, `[gateway]`): its own keys, then the keys every session
/// section has, once for all three, and `session()` to borrow those.
macro_rules! session_section {
    (struct $name:ident (connect_retry = $retry:literal) { $($own:tt)* }) => {
        #[derive(Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        struct $name {
            $($own)*
            remote_as: Spanned<RawRemoteAs>,
            #[serde(default = "default_hold_time")]
            hold_time: Spanned<u16>,
            #[serde(default = $retry)]
            connect_retry: Spanned<u64>,
            #[serde(default)]
            bfd: bool,
            #[serde(default = "default_bfd_interval")]
            bfd_interval: Spanned<u64>,
            #[serde(default = "default_bfd_multiplier")]
            bfd_multiplier: Spanned<u8>,
            send_hold_time: Option<Spanned<u64>>,
            #[serde(default = "default_max_as_path")]
            max_as_path_length: Spanned<usize>,
            #[serde(default = "default_max_send_queue")]
            max_send_queue: Spanned<usize>,
            password: Option<Spanned<String>>,
            password_file: Option<Spanned<PathBuf>>,
            #[serde(default)]
            ttl_security: bool,
            tcp_ao: Option<Spanned<RawAo>>,
        }

        impl $name {
            fn session(&self) -> RawSession<'_> {
                RawSession {
                    remote_as: &self.remote_as,
                    hold_time: &self.hold_time,
                    connect_retry: &self.connect_retry,
                    bfd: self.bfd,
                    bfd_interval: &self.bfd_interval,
                    bfd_multiplier: &self.bfd_multiplier,
                    send_hold_time: &self.send_hold_time,
                    max_as_path_length: &self.max_as_path_length,
                    max_send_queue: &self.max_send_queue,
                    password: &self.password,
                    password_file: &self.password_file,
                    ttl_security: self.ttl_security,
                    tcp_ao: &self.tcp_ao,
                }
            }
        }
    };
}

session_section! {
    struct RawGateway (connect_retry = "default_gateway_connect_retry") {
        interface: Option<String>,
        #[serde(default)]
        addresses: Vec<Spanned<IpAddr>>,
        families: Option<Vec<Spanned<String>>>,
        export: Option<Spanned<String>>,
    }
}

fn default_gateway_connect_retry() -> Spanned<u64> {
    Spanned::new(0..0, 1)
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    prefixes: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
    #[serde(default = "default_check_interval")]
    interval: Spanned<f64>,
    #[serde(default = "default_check_timeout")]
    timeout: Spanned<f64>,
    #[serde(default = "default_rise_fall")]
    rise: Spanned<u32>,
    #[serde(default = "default_rise_fall")]
    fall: Spanned<u32>,
    #[serde(default)]
    require_address: bool,
}

fn default_check_interval() -> Spanned<f64> {
    Spanned::new(0..0, 2.0)
}
fn default_check_timeout() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_rise_fall() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

/// `check = [{ type = "…", … }]`.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    command: Option<Vec<String>>,
    address: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    status: Option<u16>,
    server: Option<Spanned<String>>,
    name: Option<String>,
    record: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawMetrics {
    listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawBmp {
    address: Spanned<String>,
    #[serde(default)]
    neighbors: bool,
    #[serde(default = "default_bmp_statistics")]
    statistics_interval: Spanned<u64>,
}

fn default_bmp_statistics() -> Spanned<u64> {
    Spanned::new(0..0, 60)
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawDrain {
    #[serde(default)]
    local_pref: u32,
    #[serde(default)]
    prepend: Option<Spanned<u8>>,
    /// Seconds; 0 or absent: withdraw only with `tapir drain --withdraw`.
    #[serde(default)]
    withdraw_after: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawGracefulRestart {
    restart_time: Option<Spanned<u16>>,
    deferral: Option<Spanned<u64>>,
    helper_max_time: Option<Spanned<u16>>,
}

session_section! {
    struct RawGroup (connect_retry = "default_connect_retry") {
        name: Spanned<String>,
        interfaces: Spanned<Vec<Spanned<String>>>,
        ranges: Spanned<Vec<Spanned<String>>>,
        import: Option<Spanned<String>>,
        #[serde(default = "default_max_prefixes")]
        max_prefixes: usize,
        max_prefixes_action: Option<Spanned<String>>,
        route_protocols: Option<Vec<Spanned<String>>>,
        #[serde(default = "default_gr_time")]
        graceful_restart_time: Spanned<u16>,
        #[serde(default = "yes")]
        extended_next_hop: bool,
        #[serde(default = "default_max_sessions")]
        max_sessions: Spanned<usize>,
        #[serde(default = "default_max_sessions_per_interface")]
        max_sessions_per_interface: Spanned<usize>,
        #[serde(default = "default_connection_rate")]
        connection_rate: Spanned<u32>,
        #[serde(default = "yes")]
        enforce_first_as: bool,
        #[serde(default)]
        allow_attributes: Vec<Spanned<u8>>,
    }
}

/// `tcp-ao = { … }`.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawAo {
    key: Option<Spanned<String>>,
    key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_ao_algorithm")]
    algorithm: String,
    #[serde(default)]
    send_id: u8,
    #[serde(default)]
    recv_id: u8,
    #[serde(default = "default_ao_mac_length")]
    mac_length: u8,
}

fn default_ao_algorithm() -> String {
    "hmac(sha1)".into()
}
fn default_ao_mac_length() -> u8 {
    12
}

/// A TCP-AO key; not together with a TCP-MD5 `password` (RFC 5925 §7.1).
fn tcp_ao(
    raw: &Option<Spanned<RawAo>>,
    md5: bool,
    dir: &Path,
    err: &ErrFn,
) -> Result<Option<AoKey>, ConfigError> {
    let Some(r) = raw else { return Ok(None) };
    if md5 {
        return Err(err(
            r.span(),
            "tcp-ao and password: one or the other".into(),
        ));
    }
    let a = r.get_ref();
    let key = password(&a.key, &a.key_file, dir, err)?
        .ok_or_else(|| err(r.span(), "tcp-ao: a key or a key-file is needed".into()))?;
    if a.algorithm.is_empty() || a.algorithm.len() >= 64 {
        return Err(err(
            r.span(),
            "tcp-ao: algorithm, e.g. \"hmac(sha1)\" or \"cmac(aes128)\"".into(),
        ));
    }
    if !(4..=20).contains(&a.mac_length) {
        return Err(err(r.span(), "tcp-ao: mac-length 4 to 20 bytes".into()));
    }
    Ok(Some(AoKey {
        key,
        algorithm: a.algorithm.clone(),
        send_id: a.send_id,
        recv_id: a.recv_id,
        mac_len: a.mac_length,
    }))
}

/// `password` or `password-file` (relative to the config's directory; one
/// trailing newline is not part of the key).
fn password(
    inline: &Option<Spanned<String>>,
    file: &Option<Spanned<PathBuf>>,
    dir: &Path,
    err: &ErrFn,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let key = match (inline, file) {
        (Some(_), Some(f)) => {
            return Err(err(
                f.span(),
                "password and password-file: give one of them".into(),
            ))
        }
        (Some(p), None) => (p.get_ref().as_bytes().to_vec(), p.span()),
        (None, Some(f)) => {
            let path = dir.join(f.get_ref());
            let mut text = std::fs::read(&path)
                .map_err(|e| err(f.span(), format!("password-file {}: {e}", path.display())))?;
            if text.last() == Some(&b'\n') {
                text.pop();
            }
            (text, f.span())
        }
        (None, None) => return Ok(None),
    };
    if key.0.is_empty() || key.0.len() > MAX_KEY_LEN {
        return Err(err(
            key.1,
            format!("password: 1 to {} bytes (TCP-MD5)", MAX_KEY_LEN),
        ));
    }
    Ok(Some(key.0))
}

fn default_max_send_queue() -> Spanned<usize> {
    Spanned::new(0..0, 64 << 20)
}
fn default_max_as_path() -> Spanned<usize> {
    Spanned::new(0..0, 256)
}
fn default_max_sessions() -> Spanned<usize> {
    Spanned::new(0..0, 4096)
}
fn default_max_sessions_per_interface() -> Spanned<usize> {
    Spanned::new(0..0, 8)
}
fn default_connection_rate() -> Spanned<u32> {
    Spanned::new(0..0, 10)
}

/// `send-hold-time` and `max-as-path-length`, checked.
fn session_limits(
    send_hold: &Option<Spanned<u64>>,
    max_as_path: &Spanned<usize>,
    max_send_queue: &Spanned<usize>,
    err: &ErrFn,
) -> Result<SessionLimits, ConfigError> {
    if *max_send_queue.get_ref() < 65536 {
        return Err(err(
            max_send_queue.span(),
            "max-send-queue: at least 65536 bytes".into(),
        ));
    }
    let send_hold_time = match send_hold {
        None => None,
        Some(s) if *s.get_ref() == 0 => {
            return Err(err(
                s.span(),
                "send-hold-time: at least 1 second (RFC 9687 has no way to turn it off)".into(),
            ))
        }
        Some(s) => Some(Duration::from_secs(*s.get_ref())),
    };
    if *max_as_path.get_ref() == 0 {
        return Err(err(
            max_as_path.span(),
            "max-as-path-length: at least 1".into(),
        ));
    }
    Ok(SessionLimits {
        send_hold_time,
        max_as_path_length: *max_as_path.get_ref(),
        max_send_queue: *max_send_queue.get_ref(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawVm {
    name: Spanned<String>,
    interface: Option<String>,
    #[serde(default)]
    addresses: Vec<IpAddr>,
    asn: Option<u32>,
    #[serde(default)]
    prefixes: Vec<Spanned<String>>,
    mac: Option<Spanned<String>>,
    nic: Option<Spanned<String>>,
}

/// An inventory file: `[[vm]]` entries only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    vm: Vec<Spanned<RawVm>>,
}

fn default_max_prefixes() -> usize {
    100
}
fn default_gr_time() -> Spanned<u16> {
    Spanned::new(0..0, 120)
}

session_section! {
    struct RawNeighbor (connect_retry = "default_connect_retry") {
        name: Option<Spanned<String>>,
        address: Spanned<IpAddr>,
        #[serde(default = "default_port")]
        port: u16,
        local_address: Option<IpAddr>,
        #[serde(default)]
        passive: bool,
        families: Option<Vec<Spanned<String>>>,
        export: Option<Spanned<String>>,
        #[serde(default)]
        kernel_import: bool,
        #[serde(default)]
        enforce_first_as: bool,
    }
}

fn default_bfd_interval() -> Spanned<u64> {
    Spanned::new(0..0, 300)
}
fn default_bfd_multiplier() -> Spanned<u8> {
    Spanned::new(0..0, 3)
}

/// BFD timers from `bfd-interval` (ms) and `bfd-multiplier`.
fn bfd_timers(
    on: bool,
    interval: &Spanned<u64>,
    mult: &Spanned<u8>,
    err: &ErrFn,
) -> Result<Option<BfdTimers>, ConfigError> {
    if !on {
        return Ok(None);
    }
    let i = *interval.get_ref();
    if !(10..=60_000).contains(&i) {
        return Err(err(
            interval.span(),
            "bfd-interval: 10 to 60000 milliseconds".into(),
        ));
    }
    let m = *mult.get_ref();
    if m == 0 {
        return Err(err(mult.span(), "bfd-multiplier: at least 1".into()));
    }
    Ok(Some(BfdTimers {
        interval: Duration::from_millis(i),
        multiplier: m,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawKernel {
    #[serde(default = "yes")]
    install: bool,
    protocol: Option<Spanned<String>>,
    #[serde(default = "default_metric")]
    metric: u32,
    #[serde(default)]
    multipath: bool,
    scan_interval: Option<Spanned<u64>>,
}

fn yes() -> bool {
    true
}
fn default_metric() -> u32 {
    TAPIR_METRIC
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawPolicy {
    as_path: Option<Spanned<String>>,
    default: Option<Spanned<String>>,
    #[serde(default)]
    term: Vec<Spanned<RawTerm>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawTerm {
    #[serde(rename = "match", default)]
    matches: RawMatch,
    action: Spanned<String>,
    set_communities: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    add_communities: Vec<Spanned<String>>,
    #[serde(default)]
    add_large_communities: Vec<Spanned<String>>,
    local_pref: Option<u32>,
    med: Option<u32>,
    as_path: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawMatch {
    prefix_set: Option<Spanned<String>>,
    community: Option<Spanned<String>>,
    large_community: Option<Spanned<String>>,
    group: Option<String>,
    vm: Option<String>,
    neighbor: Option<String>,
    source: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRemoteAs {
    Number(u32),
    Word(String),
    List(Vec<RawAsItem>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAsItem {
    Number(u32),
    Range(String),
}

/// Parses `remote-as`; the error says what is wrong with it.
fn remote_as(raw: &RawRemoteAs) -> Result<RemoteAsConfig, RemoteAsError> {
    let range = |s: &str| -> Result<(u32, u32), RemoteAsError> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| RemoteAsError::Word(s.to_string()))?;
        let asn = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| RemoteAsError::BadNumber(s.to_string()))
        };
        let (a, b) = (asn(a)?, asn(b)?);
        if a == 0 || a > b {
            return Err(RemoteAsError::EmptyRange(s.to_string()));
        }
        Ok((a, b))
    };
    match raw {
        RawRemoteAs::Number(0) => Err(RemoteAsError::Zero),
        RawRemoteAs::Number(a) => Ok(RemoteAsConfig::Exact(*a)),
        RawRemoteAs::Word(w) if w == "external" => Ok(RemoteAsConfig::External),
        RawRemoteAs::Word(w) if w == "internal" => Ok(RemoteAsConfig::Internal),
        RawRemoteAs::Word(w) => Ok(RemoteAsConfig::Ranges(vec![range(w)?])),
        RawRemoteAs::List(items) if items.is_empty() => Err(RemoteAsError::EmptyList),
        RawRemoteAs::List(items) => items
            .iter()
            .map(|i| match i {
                RawAsItem::Number(0) => Err(RemoteAsError::Zero),
                RawAsItem::Number(a) => Ok((*a, *a)),
                RawAsItem::Range(s) => range(s),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(RemoteAsConfig::Ranges),
    }
}

impl SessionSettings {
    /// A section's settings when it says nothing but `remote-as`: hold
    /// time 90 s, connect-retry 5 s, no BFD, no keys, the default limits.
    pub fn new(remote_as: RemoteAsConfig, import_rules: ImportRules) -> SessionSettings {
        SessionSettings {
            remote_as,
            hold_time: *default_hold_time().get_ref(),
            connect_retry: Duration::from_secs(*default_connect_retry().get_ref()),
            bfd: None,
            limits: SessionLimits {
                send_hold_time: None,
                max_as_path_length: *default_max_as_path().get_ref(),
                max_send_queue: *default_max_send_queue().get_ref(),
            },
            import_rules,
            password: None,
            ttl_security: false,
            tcp_ao: None,
        }
    }

    /// The same with routes whose AS path is longer than `n` treated as
    /// withdrawn.
    pub fn max_as_path_length(mut self, n: usize) -> SessionSettings {
        self.limits.max_as_path_length = n;
        self
    }
}

/// A `remote-as` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RemoteAsError {
    #[error("remote-as: 0 is not an AS number")]
    Zero,
    #[error("remote-as: `{0}` is neither an AS number, a range A-B, `external` nor `internal`")]
    Word(String),
    #[error("remote-as: `{0}` has a bad AS number")]
    BadNumber(String),
    #[error("remote-as: range `{0}` is empty or starts at 0")]
    EmptyRange(String),
    #[error("remote-as: the list is empty")]
    EmptyList,
}

fn default_port() -> u16 {
    179
}
fn default_hold_time() -> Spanned<u16> {
    Spanned::new(0..0, 90)
}
fn default_connect_retry() -> Spanned<u64> {
    Spanned::new(0..0, 5)
}

fn prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Prefix>, D::Error> {
    let v: Vec<String> = Vec::deserialize(d)?;
    v.iter()
        .map(|s| s.parse::<Prefix>().map_err(de::Error::custom))
        .collect()
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// What `tapir run`'s command line puts over the file's values, at start
/// and at every reload.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub router_id: Option<Ipv4Addr>,
    pub state_dir: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, mut c: Config) -> Config {
        if let Some(id) = self.router_id {
            c.router_id = id;
        }
        if self.state_dir.is_some() {
            c.state_dir = self.state_dir.clone();
        }
        c
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |span: Range<usize>, message: String| {
            let (line, column) = position(text, span.start);
            ConfigError {
                file: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| err(e.span().unwrap_or(0..0), e.message().trim_end().to_string()))?;
        let local_as = *raw.local_as.get_ref();
        if local_as == 0 || local_as == bgp::AS_TRANS as u32 {
            return Err(err(
                raw.local_as.span(),
                format!("local-as: {local_as} is not a usable AS number"),
            ));
        }
        let prefix_sets = parse_prefix_sets(&raw.prefix_sets, &err)?;
        let mut policies: std::collections::BTreeMap<String, Arc<Policy>> =
            std::collections::BTreeMap::new();
        for (name, rp) in &raw.policy {
            policies.insert(
                name.clone(),
                Arc::new(parse_policy(name, rp, &prefix_sets, &err)?),
            );
        }
        let kernel = parse_kernel(&raw.kernel, &err)?;
        let graceful_restart = parse_graceful_restart(&raw.graceful_restart, &err)?;
        let mut neighbors: Vec<Neighbor> = Vec::new();
        for (i, n) in raw.neighbor.into_iter().enumerate() {
            let n = parse_neighbor(i, n, &neighbors, local_as, &policies, path, &err)?;
            neighbors.push(n);
        }
        let mut groups: Vec<Group> = Vec::new();
        for g in &raw.group {
            groups.push(parse_group(
                g,
                &prefix_sets,
                path.parent().unwrap_or(Path::new(".")),
                &err,
            )?);
        }
        check_groups(&groups, &raw.group, &err)?;
        let vms = parse_vms(&raw.vm, &raw.inventory, path, &err)?;
        let gateway = match &raw.gateway {
            None => None,
            Some(g) => Some(parse_gateway(g, &policies, path, &err)?),
        };
        if gateway.is_some() && !groups.is_empty() {
            return Err(err(
                raw.gateway.as_ref().map_or(0..0, |g| g.span()),
                "[gateway] (the guest role, inside a VM) and [[group]] (the hypervisor role) \
                 cannot be in one config"
                    .into(),
            ));
        }
        let services = parse_services(&raw.service, &raw.announce, &err)?;
        for (i, v) in vms.iter().enumerate() {
            if let Some(c) = vms[..i].iter().find_map(|o| v.conflict(o)) {
                let span = raw.vm.get(i).map(|s| s.span()).unwrap_or(0..0);
                return Err(err(span, c.to_string()));
            }
        }
        Ok(Config {
            router_id: raw.router_id,
            local_as,
            listen: raw
                .listen
                .unwrap_or_else(|| vec![SocketAddr::from(([0u16; 8], 179))]),
            announce: raw.announce,
            neighbors,
            groups,
            vms,
            state_dir: raw.state_dir,
            registration_grace: match &raw.registration_grace {
                None => REGISTRATION_GRACE,
                Some(g) if (1..=86_400).contains(g.get_ref()) => Duration::from_secs(*g.get_ref()),
                Some(g) => {
                    return Err(err(
                        g.span(),
                        "registration-grace: 1 to 86400 seconds".into(),
                    ))
                }
            },
            kernel,
            graceful_restart,
            drain: match &raw.drain {
                None => DrainConfig {
                    local_pref: 0,
                    prepend: 0,
                    withdraw_after: None,
                },
                Some(d) => DrainConfig {
                    local_pref: d.local_pref,
                    prepend: match &d.prepend {
                        None => 0,
                        Some(n) if *n.get_ref() <= 10 => *n.get_ref(),
                        Some(n) => {
                            return Err(err(
                                n.span(),
                                "drain.prepend: 0 to 10 (our AS that many more times on a drained route)"
                                    .into(),
                            ))
                        }
                    },
                    withdraw_after: (d.withdraw_after > 0)
                        .then(|| Duration::from_secs(d.withdraw_after)),
                },
            },
            metrics: raw.metrics.map(|m| m.listen),
            bmp: parse_bmp(&raw.bmp, &err)?,
            bmp_neighbors: raw.bmp.iter().any(|b| b.get_ref().neighbors),
            gateway,
            services,
        })
    }
}

type ErrFn<'a> = dyn Fn(Range<usize>, String) -> ConfigError + 'a;

/// `[prefix-sets]`: each name's list of patterns.
fn parse_prefix_sets(
    raw: &std::collections::BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    err: &ErrFn,
) -> Result<std::collections::BTreeMap<String, PrefixSet>, ConfigError> {
    let mut prefix_sets = std::collections::BTreeMap::new();
    for (name, list) in raw {
        let mut set = PrefixSet::default();
        for p in list.get_ref() {
            set.patterns.push(
                p.get_ref()
                    .parse::<PrefixPattern>()
                    .map_err(|e| err(p.span(), format!("prefix-sets.{name}: {e}")))?,
            );
        }
        prefix_sets.insert(name.clone(), set);
    }
    Ok(prefix_sets)
}

/// `[kernel]`, with tapir's own route protocol by default.
fn parse_kernel(raw: &Option<RawKernel>, err: &ErrFn) -> Result<KernelConfig, ConfigError> {
    Ok(match raw {
        None => KernelConfig::default(),
        Some(k) => KernelConfig {
            install: k.install,
            protocol: match &k.protocol {
                None => TAPIR_PROTOCOL,
                Some(p) => route_protocol(p.get_ref())
                    .filter(|n| *n > 4)
                    .ok_or_else(|| {
                        err(
                            p.span(),
                            format!("kernel.protocol: `{}` is not a route protocol name or a number above 4", p.get_ref()),
                        )
                    })?,
            },
            metric: k.metric,
            scan_interval: match &k.scan_interval {
                None => Duration::from_secs(60),
                Some(s) if (1..=3600).contains(s.get_ref()) => Duration::from_secs(*s.get_ref()),
                Some(s) => {
                    return Err(err(
                        s.span(),
                        "kernel.scan-interval: 1 to 3600 seconds".into(),
                    ))
                }
            },
            multipath: k.multipath,
        },
    })
}

/// `[graceful-restart]`, within RFC 4724's limits.
fn parse_graceful_restart(
    raw: &Option<RawGracefulRestart>,
    err: &ErrFn,
) -> Result<GracefulRestartConfig, ConfigError> {
    let mut graceful_restart = GracefulRestartConfig::default();
    if let Some(g) = raw {
        if let Some(t) = &g.restart_time {
            if *t.get_ref() > 4095 {
                return Err(err(
                    t.span(),
                    "graceful-restart.restart-time: at most 4095 seconds (RFC 4724)".into(),
                ));
            }
            graceful_restart.restart_time = *t.get_ref();
        }
        if let Some(d) = &g.deferral {
            if *d.get_ref() == 0 || *d.get_ref() > 3600 {
                return Err(err(
                    d.span(),
                    "graceful-restart.deferral: 1 to 3600 seconds".into(),
                ));
            }
            graceful_restart.deferral = Duration::from_secs(*d.get_ref());
        }
        if let Some(m) = &g.helper_max_time {
            if !(1..=4095).contains(m.get_ref()) {
                return Err(err(
                    m.span(),
                    "graceful-restart.helper-max-time: 1 to 4095 seconds".into(),
                ));
            }
            graceful_restart.helper_max_time = *m.get_ref();
        }
    }
    Ok(graceful_restart)
}

/// One `[[neighbor]]` (the `i`th), checked against those before it.
fn parse_neighbor(
    i: usize,
    n: Spanned<RawNeighbor>,
    neighbors: &[Neighbor],
    local_as: u32,
    policies: &std::collections::BTreeMap<String, Arc<Policy>>,
    path: &Path,
    err: &ErrFn,
) -> Result<Neighbor, ConfigError> {
    let span = n.span();
    let n = n.into_inner();
    let address = *n.address.get_ref();
    if let Some(prev) = neighbors.iter().find(|p| p.address == address) {
        return Err(err(
            n.address.span(),
            format!(
                "neighbor address {address} is already used by neighbor `{}`",
                prev.name
            ),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let import_rules = ImportRules {
        enforce_first_as: n.enforce_first_as,
        ..ImportRules::neighbor_default()
    };
    let session = session_settings(n.session(), import_rules, dir, err)?;
    let families = match &n.families {
        None => vec![match address {
            IpAddr::V4(_) => Afi::Ipv4,
            IpAddr::V6(_) => Afi::Ipv6,
        }],
        Some(list) => {
            let mut v = Vec::new();
            for f in list {
                v.push(match f.get_ref().as_str() {
                    "ipv4" => Afi::Ipv4,
                    "ipv6" => Afi::Ipv6,
                    other => {
                        return Err(err(
                            f.span(),
                            format!(
                                "families: unknown family `{other}` (expected `ipv4` or `ipv6`)"
                            ),
                        ))
                    }
                });
            }
            if v.is_empty() {
                return Err(err(span, "families: at least one family is needed".into()));
            }
            v
        }
    };
    let name = match n.name {
        Some(s) => {
            let s = s.into_inner();
            if neighbors.iter().any(|p| p.name == s) {
                return Err(err(span, format!("neighbor name `{s}` is used twice")));
            }
            s
        }
        None => format!("neighbor{}", i + 1),
    };
    let internal = match &session.remote_as {
        RemoteAsConfig::Internal => true,
        RemoteAsConfig::Exact(a) => *a == local_as,
        _ => false,
    };
    let export = match &n.export {
        // RFC 8212: nothing to an external neighbor without a
        // policy that says what; `tapir check` and the log say so.
        None if !internal => Arc::new(Policy::rfc8212()),
        None => Arc::new(Policy::hypervisor_default()),
        Some(e) => policies.get(e.get_ref()).cloned().ok_or_else(|| {
            err(
                e.span(),
                format!("export: no policy `{}` in [policy]", e.get_ref()),
            )
        })?,
    };
    Ok(Neighbor {
        export,
        kernel_import: n.kernel_import,
        name,
        address,
        port: n.port,
        local_address: n.local_address,
        passive: n.passive,
        families,
        session,
    })
}

/// Two groups that could both claim one VM make the choice arbitrary;
/// two that share addresses must share their keys.
fn check_groups(
    groups: &[Group],
    raw: &[Spanned<RawGroup>],
    err: &ErrFn,
) -> Result<(), ConfigError> {
    // Two groups that could both claim one VM make the choice arbitrary.
    for (i, a) in groups.iter().enumerate() {
        for b in &groups[..i] {
            let iface = a
                .interfaces
                .iter()
                .any(|p| b.interfaces.iter().any(|q| patterns_overlap(p, q)));
            let range = a
                .ranges
                .iter()
                .any(|r| b.ranges.iter().any(|s| r.contains(s) || s.contains(r)));
            if iface && range {
                return Err(err(
                    raw[i].span(),
                    format!("group `{}` overlaps group `{}`: both match the same interfaces and addresses", a.name, b.name),
                ));
            }
            // The listeners hold one TCP-MD5/TCP-AO key per address.
            if range
                && (a.session.password != b.session.password
                    || a.session.tcp_ao != b.session.tcp_ao)
            {
                return Err(err(
                    raw[i].span(),
                    format!(
                        "groups `{}` and `{}` share addresses but not their password or tcp-ao key: \
                         the listening socket holds one key per address",
                        a.name, b.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Reads an inventory file (`[[vm]]` entries only, as for `inventory`):
/// `tapir vm sync` sends what it holds. Errors name the file, line and
/// column.
pub fn parse_inventory_file(file: &Path) -> Result<Vec<VmEntry>, ConfigError> {
    let itext = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    inventory_entries(&itext, file)
}

fn inventory_entries(itext: &str, file: &Path) -> Result<Vec<VmEntry>, ConfigError> {
    let ierr = |span: Range<usize>, message: String| {
        let (line, column) = position(itext, span.start);
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let rawinv: RawInventory = toml::from_str(itext)
        .map_err(|e| ierr(e.span().unwrap_or(0..0), e.message().trim_end().to_string()))?;
    let mut vms: Vec<VmEntry> = Vec::new();
    for (i, v) in rawinv.vm.iter().enumerate() {
        let e = parse_vm(v, &ierr)?;
        if let Some(c) = vms.iter().find_map(|o| e.conflict(o)) {
            return Err(ierr(rawinv.vm[i].span(), c.to_string()));
        }
        vms.push(e);
    }
    Ok(vms)
}

/// `[[vm]]` entries, and those of the `inventory` file beside the config.
fn parse_vms(
    raw_vms: &[Spanned<RawVm>],
    inventory: &Option<Spanned<PathBuf>>,
    path: &Path,
    err: &ErrFn,
) -> Result<Vec<VmEntry>, ConfigError> {
    let mut vms: Vec<VmEntry> = Vec::new();
    for v in raw_vms {
        vms.push(parse_vm(v, &err)?);
    }
    if let Some(inv) = inventory {
        let file = path.parent().unwrap_or(Path::new(".")).join(inv.get_ref());
        let itext = std::fs::read_to_string(&file)
            .map_err(|e| err(inv.span(), format!("inventory {}: {e}", file.display())))?;
        vms.extend(inventory_entries(&itext, &file)?);
    }
    Ok(vms)
}

/// `[[bmp]]`: `address` is `HOST:PORT` (an IPv6 address in brackets);
/// the host is resolved at each connection attempt, so only its form is
/// checked here.
fn parse_bmp(raw: &[Spanned<RawBmp>], err: &ErrFn) -> Result<Vec<BmpConfig>, ConfigError> {
    let mut out: Vec<BmpConfig> = Vec::new();
    for b in raw {
        let b = b.get_ref();
        let a = b.address.get_ref();
        let well_formed = a.parse::<SocketAddr>().is_ok()
            || a.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(':')
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
        if !well_formed {
            return Err(err(
                b.address.span(),
                format!("bmp.address: {a:?} is not HOST:PORT (an IPv6 address in brackets: \"[2001:db8::1]:1790\")"),
            ));
        }
        if out.iter().any(|o| o.address == *a) {
            return Err(err(
                b.address.span(),
                format!("bmp.address: {a:?} is given twice"),
            ));
        }
        let s = *b.statistics_interval.get_ref();
        if s > 86_400 {
            return Err(err(
                b.statistics_interval.span(),
                "bmp.statistics-interval: 0 (never) to 86400 seconds".into(),
            ));
        }
        out.push(BmpConfig {
            address: a.clone(),
            statistics_interval: (s > 0).then(|| Duration::from_secs(s)),
        });
    }
    Ok(out)
}

/// `[[service]]`: names and prefixes unique, none also in `announce`.
fn parse_services(
    raw: &[Spanned<RawService>],
    announce: &[Prefix],
    err: &ErrFn,
) -> Result<Vec<Service>, ConfigError> {
    let mut services: Vec<Service> = Vec::new();
    for (i, sv) in raw.iter().enumerate() {
        let s = parse_service(sv, i, &err)?;
        if services.iter().any(|o| o.name == s.name) {
            return Err(err(
                sv.span(),
                format!("service name `{}` is used twice", s.name),
            ));
        }
        for p in &s.prefixes {
            if announce.contains(p) || services.iter().any(|o| o.prefixes.contains(p)) {
                return Err(err(
                    sv.get_ref().prefixes.span(),
                    format!("{p} is announced twice (by `announce` or another service)"),
                ));
            }
        }
        services.push(s);
    }
    Ok(services)
}

fn parse_gateway(
    g: &Spanned<RawGateway>,
    policies: &std::collections::BTreeMap<String, Arc<Policy>>,
    path: &Path,
    err: &ErrFn,
) -> Result<GatewayConfig, ConfigError> {
    let r = g.get_ref();
    if let Some(ao) = &r.tcp_ao {
        // The listeners hold no key for the gateway's own connections (a
        // new hypervisor's after a migration).
        return Err(err(
            ao.span(),
            "gateway.tcp-ao: not supported for the gateway (yet); use password (TCP-MD5)".into(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let session = session_settings(r.session(), ImportRules::neighbor_default(), dir, err)?;
    let mut families = Vec::new();
    for f in r.families.iter().flatten() {
        families.push(match f.get_ref().as_str() {
            "ipv4" => Afi::Ipv4,
            "ipv6" => Afi::Ipv6,
            other => {
                return Err(err(
                    f.span(),
                    format!(
                        "gateway.families: unknown family `{other}` (expected `ipv4` or `ipv6`)"
                    ),
                ))
            }
        });
    }
    if r.families.is_some() && families.is_empty() {
        return Err(err(
            g.span(),
            "gateway.families: at least one family is needed".into(),
        ));
    }
    if families.is_empty() {
        families = vec![Afi::Ipv4, Afi::Ipv6];
    }
    let mut addresses = Vec::new();
    for a in &r.addresses {
        let ip = *a.get_ref();
        if let IpAddr::V6(v6) = ip {
            if crate::southbound::net::is_link_local(v6) && r.interface.is_none() {
                return Err(err(
                    a.span(),
                    format!("gateway.addresses: {ip} is link-local: set gateway.interface too"),
                ));
            }
        }
        addresses.push(ip);
    }
    let export = match &r.export {
        None => Arc::new(Policy::guest_default()),
        Some(e) => policies.get(e.get_ref()).cloned().ok_or_else(|| {
            err(
                e.span(),
                format!("gateway.export: no policy `{}` in [policy]", e.get_ref()),
            )
        })?,
    };
    Ok(GatewayConfig {
        template: Neighbor {
            name: "gateway".into(),
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 179,
            local_address: None,
            passive: false,
            families,
            export,
            kernel_import: false,
            session,
        },
        interface: r.interface.clone(),
        addresses,
    })
}

fn parse_service(sv: &Spanned<RawService>, i: usize, err: &ErrFn) -> Result<Service, ConfigError> {
    let r = sv.get_ref();
    let name = r
        .name
        .clone()
        .unwrap_or_else(|| format!("service{}", i + 1));
    let mut prefixes = Vec::new();
    for p in r.prefixes.get_ref() {
        prefixes.push(
            p.get_ref()
                .parse::<Prefix>()
                .map_err(|e| err(p.span(), format!("service `{name}`: prefixes: {e}")))?,
        );
    }
    if prefixes.is_empty() {
        return Err(err(
            r.prefixes.span(),
            format!("service `{name}`: at least one prefix is needed"),
        ));
    }
    let secs = |v: &Spanned<f64>, key: &str, max: f64| -> Result<Duration, ConfigError> {
        let x = *v.get_ref();
        if !(0.1..=max).contains(&x) {
            return Err(err(
                v.span(),
                format!("service `{name}`: {key}: 0.1 to {max} seconds"),
            ));
        }
        Ok(Duration::from_secs_f64(x))
    };
    if r.require_address {
        if let Some(p) = prefixes
            .iter()
            .find(|p| p.len() != if p.addr().is_ipv4() { 32 } else { 128 })
        {
            return Err(err(
                r.prefixes.span(),
                format!("service `{name}`: require-address needs host prefixes (/32, /128); {p} is not one"),
            ));
        }
    }
    let interval = secs(&r.interval, "interval", 3600.0)?;
    let timeout = secs(&r.timeout, "timeout", 60.0)?;
    for (v, key) in [(&r.rise, "rise"), (&r.fall, "fall")] {
        if !(1..=100).contains(v.get_ref()) {
            return Err(err(v.span(), format!("service `{name}`: {key}: 1 to 100")));
        }
    }
    let mut checks = Vec::new();
    for c in &r.check {
        checks.push(parse_check(c, &name, err)?);
    }
    if checks.is_empty() && !r.require_address {
        return Err(err(
            sv.span(),
            format!("service `{name}`: no check and no require-address: use `announce` for prefixes announced unconditionally"),
        ));
    }
    Ok(Service {
        name,
        prefixes,
        checks,
        interval,
        timeout,
        rise: *r.rise.get_ref(),
        fall: *r.fall.get_ref(),
        require_address: r.require_address,
    })
}

/// `ADDRESS:PORT`, `ADDRESS` (then `port`), `[V6]:PORT` or a bare IPv6.
fn socket_address(s: &str, port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|a| SocketAddr::new(a, port)))
}

fn parse_check(c: &Spanned<RawCheck>, service: &str, err: &ErrFn) -> Result<Check, ConfigError> {
    let r = c.get_ref();
    let at = |span: Range<usize>, m: String| err(span, format!("service `{service}`: check: {m}"));
    let kind = r.kind.get_ref().as_str();
    // Keys that belong to other kinds of check are mistakes.
    let allowed: &[&str] = match kind {
        "command" => &["command"],
        "tcp" => &["address"],
        "http" => &["url", "status"],
        "dns" => &["server", "name", "record"],
        other => {
            return Err(at(
                r.kind.span(),
                format!("unknown type `{other}` (expected `command`, `tcp`, `http` or `dns`)"),
            ))
        }
    };
    let given = [
        ("command", r.command.is_some()),
        ("address", r.address.is_some()),
        ("url", r.url.is_some()),
        ("status", r.status.is_some()),
        ("server", r.server.is_some()),
        ("name", r.name.is_some()),
        ("record", r.record.is_some()),
    ];
    if let Some((k, _)) = given.iter().find(|(k, g)| *g && !allowed.contains(k)) {
        return Err(at(
            c.span(),
            format!("`{k}` does not apply to a `{kind}` check"),
        ));
    }
    match kind {
        "command" => {
            let argv = r.command.clone().unwrap_or_default();
            if argv.is_empty() || argv[0].is_empty() {
                return Err(at(
                    c.span(),
                    "a command check needs `command = [\"PROGRAM\", \"ARG\"…]`".into(),
                ));
            }
            Ok(Check::Command(argv))
        }
        "tcp" => {
            let a = r
                .address
                .as_ref()
                .ok_or_else(|| at(c.span(), "a tcp check needs `address = \"IP:PORT\"`".into()))?;
            let addr = a
                .get_ref()
                .parse::<SocketAddr>()
                .map_err(|_| at(a.span(), format!("`{}` is not IP:PORT", a.get_ref())))?;
            Ok(Check::Tcp(addr))
        }
        "http" => {
            let u = r.url.as_ref().ok_or_else(|| {
                at(
                    c.span(),
                    "an http check needs `url = \"http://IP[:PORT]/PATH\"`".into(),
                )
            })?;
            let bad = || {
                at(
                    u.span(),
                    format!(
                        "`{}`: expected http://IP[:PORT]/PATH (an address, not a name: checks do not resolve names)",
                        u.get_ref()
                    ),
                )
            };
            let rest = u.get_ref().strip_prefix("http://").ok_or_else(bad)?;
            let (hostport, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let address = socket_address(hostport, 80)
                .or_else(|| {
                    hostport
                        .strip_prefix('[')
                        .and_then(|h| h.strip_suffix(']'))
                        .and_then(|h| socket_address(h, 80))
                })
                .ok_or_else(bad)?;
            Ok(Check::Http {
                address,
                host: hostport.to_string(),
                path: path.to_string(),
                status: r.status.unwrap_or(200),
            })
        }
        _ => {
            let s = r.server.as_ref().ok_or_else(|| {
                at(
                    c.span(),
                    "a dns check needs `server = \"IP\"` and `name`".into(),
                )
            })?;
            let server = socket_address(s.get_ref(), 53)
                .ok_or_else(|| at(s.span(), format!("`{}` is not an IP address", s.get_ref())))?;
            let name = r
                .name
                .clone()
                .ok_or_else(|| at(c.span(), "a dns check needs `name = \"DOMAIN\"`".into()))?;
            if name.is_empty()
                || name.len() > 253
                || name
                    .trim_end_matches('.')
                    .split('.')
                    .any(|l| l.is_empty() || l.len() > 63)
            {
                return Err(at(c.span(), format!("`{name}` is not a domain name")));
            }
            let record = match &r.record {
                None => 1,
                Some(t) => match t.get_ref().to_ascii_uppercase().as_str() {
                    "A" => 1,
                    "NS" => 2,
                    "CNAME" => 5,
                    "SOA" => 6,
                    "PTR" => 12,
                    "MX" => 15,
                    "TXT" => 16,
                    "AAAA" => 28,
                    "SRV" => 33,
                    other => {
                        return Err(at(
                            t.span(),
                            format!(
                            "record `{other}`: one of A, AAAA, NS, CNAME, SOA, PTR, MX, TXT, SRV"
                        ),
                        ))
                    }
                },
            };
            Ok(Check::Dns {
                server,
                name,
                record,
            })
        }
    }
}

/// The settings every session section has (`[[neighbor]]`, `[[group]]`,
/// `[gateway]`), borrowed from its raw form: one parser checks them all.
struct RawSession<'a> {
    remote_as: &'a Spanned<RawRemoteAs>,
    hold_time: &'a Spanned<u16>,
    connect_retry: &'a Spanned<u64>,
    bfd: bool,
    bfd_interval: &'a Spanned<u64>,
    bfd_multiplier: &'a Spanned<u8>,
    send_hold_time: &'a Option<Spanned<u64>>,
    max_as_path_length: &'a Spanned<usize>,
    max_send_queue: &'a Spanned<usize>,
    password: &'a Option<Spanned<String>>,
    password_file: &'a Option<Spanned<PathBuf>>,
    ttl_security: bool,
    tcp_ao: &'a Option<Spanned<RawAo>>,
}

/// Checks the common settings of a session section; `import_rules` are
/// the section's (they differ by kind of peer).
fn session_settings(
    r: RawSession,
    import_rules: ImportRules,
    dir: &Path,
    err: &ErrFn,
) -> Result<SessionSettings, ConfigError> {
    let remote_as =
        remote_as(r.remote_as.get_ref()).map_err(|e| err(r.remote_as.span(), e.to_string()))?;
    let (hold_time, connect_retry) = timers(r.hold_time, r.connect_retry, err)?;
    let password = password(r.password, r.password_file, dir, err)?;
    let tcp_ao = tcp_ao(r.tcp_ao, password.is_some(), dir, err)?;
    Ok(SessionSettings {
        remote_as,
        hold_time,
        connect_retry: Duration::from_secs(connect_retry),
        bfd: bfd_timers(r.bfd, r.bfd_interval, r.bfd_multiplier, err)?,
        limits: session_limits(
            r.send_hold_time,
            r.max_as_path_length,
            r.max_send_queue,
            err,
        )?,
        import_rules,
        password: password.map(Arc::from),
        ttl_security: r.ttl_security,
        tcp_ao: tcp_ao.map(Arc::new),
    })
}

/// `hold-time` (0 or at least 3 s, RFC 4271 §4.2) and `connect-retry`
/// (at least 1 s), for every session section alike.
fn timers(
    hold: &Spanned<u16>,
    retry: &Spanned<u64>,
    err: &ErrFn,
) -> Result<(u16, u64), ConfigError> {
    let hold_time = *hold.get_ref();
    if hold_time == 1 || hold_time == 2 {
        return Err(err(
            hold.span(),
            "hold-time: must be 0 or at least 3 seconds (RFC 4271 §4.2)".into(),
        ));
    }
    let connect_retry = *retry.get_ref();
    if connect_retry == 0 {
        return Err(err(
            retry.span(),
            "connect-retry: must be at least 1 second".into(),
        ));
    }
    Ok((hold_time, connect_retry))
}

fn parse_policy(
    name: &str,
    rp: &Spanned<RawPolicy>,
    sets: &std::collections::BTreeMap<String, PrefixSet>,
    err: &ErrFn,
) -> Result<Policy, ConfigError> {
    let r = rp.get_ref();
    let as_path = match &r.as_path {
        None => AsPathMode::Keep,
        Some(m) => m
            .get_ref()
            .parse()
            .map_err(|e| err(m.span(), format!("policy.{name}.{e}")))?,
    };
    let action = |s: &Spanned<String>, what: &str| match s.get_ref().as_str() {
        "accept" => Ok(true),
        "reject" => Ok(false),
        other => Err(err(
            s.span(),
            format!("policy.{name}: {what} `{other}` is neither `accept` nor `reject`"),
        )),
    };
    let default_accept = match &r.default {
        None => false,
        Some(d) => action(d, "default")?,
    };
    let mut terms = Vec::new();
    for t in &r.term {
        let t = t.get_ref();
        let m = &t.matches;
        let comm = |c: &Spanned<String>| {
            parse_community(c.get_ref()).map_err(|e| err(c.span(), format!("policy.{name}: {e}")))
        };
        let large = |c: &Spanned<String>| {
            parse_large_community(c.get_ref())
                .map_err(|e| err(c.span(), format!("policy.{name}: {e}")))
        };
        let matches = Match {
            prefix_set: match &m.prefix_set {
                None => None,
                Some(ps) => Some((
                    ps.get_ref().clone(),
                    sets.get(ps.get_ref()).cloned().ok_or_else(|| {
                        err(
                            ps.span(),
                            format!("policy.{name}: no prefix set `{}`", ps.get_ref()),
                        )
                    })?,
                )),
            },
            community: m.community.as_ref().map(comm).transpose()?,
            large_community: m.large_community.as_ref().map(large).transpose()?,
            group: m.group.clone(),
            vm: m.vm.clone(),
            neighbor: m.neighbor.clone(),
            source: match &m.source {
                None => None,
                Some(s) => Some(match s.get_ref().as_str() {
                    "vm" => crate::routing::policy::Source::Vm,
                    "neighbor" => crate::routing::policy::Source::Neighbor,
                    "local" => crate::routing::policy::Source::Local,
                    other => {
                        return Err(err(
                            s.span(),
                            format!(
                            "policy.{name}: source `{other}` is not `vm`, `neighbor` or `local`"
                        ),
                        ))
                    }
                }),
            },
        };
        terms.push(Term {
            matches,
            accept: action(&t.action, "action")?,
            set_communities: t
                .set_communities
                .as_ref()
                .map(|v| v.iter().map(comm).collect())
                .transpose()?,
            add_communities: t
                .add_communities
                .iter()
                .map(comm)
                .collect::<Result<_, _>>()?,
            add_large_communities: t
                .add_large_communities
                .iter()
                .map(large)
                .collect::<Result<_, _>>()?,
            local_pref: t.local_pref,
            med: t.med,
            as_path: match &t.as_path {
                None => None,
                Some(m) => Some(
                    m.get_ref()
                        .parse()
                        .map_err(|e| err(m.span(), format!("policy.{name}.{e}")))?,
                ),
            },
        });
    }
    Ok(Policy {
        name: name.to_string(),
        as_path,
        default_accept,
        terms,
    })
}

fn parse_group(
    g: &Spanned<RawGroup>,
    sets: &std::collections::BTreeMap<String, PrefixSet>,
    dir: &Path,
    err: &ErrFn,
) -> Result<Group, ConfigError> {
    let g = g.get_ref();
    let name = g.name.get_ref().clone();
    if g.interfaces.get_ref().is_empty() {
        return Err(err(
            g.interfaces.span(),
            format!("group `{name}`: interfaces: at least one pattern is needed"),
        ));
    }
    let mut interfaces = Vec::new();
    for p in g.interfaces.get_ref() {
        let s = p.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "*._-".contains(c));
        if !ok {
            return Err(err(
                p.span(),
                format!("group `{name}`: interface pattern `{s}` can match no interface name (1-15 of A-Z a-z 0-9 . _ - and `*`)"),
            ));
        }
        interfaces.push(s.clone());
    }
    if g.ranges.get_ref().is_empty() {
        return Err(err(
            g.ranges.span(),
            format!("group `{name}`: ranges: at least one address range is needed"),
        ));
    }
    let mut ranges = Vec::new();
    for r in g.ranges.get_ref() {
        ranges.push(
            r.get_ref()
                .parse::<Prefix>()
                .map_err(|e| err(r.span(), format!("group `{name}`: ranges: {e}")))?,
        );
    }
    let import_rules = ImportRules {
        enforce_first_as: g.enforce_first_as,
        allow_attributes: Some(allow_attributes(
            g.name.get_ref(),
            &g.allow_attributes,
            err,
        )?),
    };
    let session = session_settings(g.session(), import_rules, dir, err)?;
    let import = match &g.import {
        None => None,
        Some(i) => {
            let set = sets.get(i.get_ref()).ok_or_else(|| {
                err(
                    i.span(),
                    format!(
                        "group `{name}`: import: no prefix set `{}` in [prefix-sets]",
                        i.get_ref()
                    ),
                )
            })?;
            Some((i.get_ref().clone(), set.clone()))
        }
    };
    let max_prefixes_action = match g
        .max_prefixes_action
        .as_ref()
        .map(|a| (a.get_ref().as_str(), a.span()))
    {
        None | Some(("reject", _)) => MaxPrefixAction::Reject,
        Some(("teardown", _)) => MaxPrefixAction::Teardown,
        Some((other, span)) => {
            return Err(err(
                span,
                format!("max-prefixes-action: `{other}` is neither `reject` nor `teardown`"),
            ))
        }
    };
    let route_protocols = match &g.route_protocols {
        None => vec![4],
        Some(list) => list
            .iter()
            .map(|p| {
                route_protocol(p.get_ref()).ok_or_else(|| {
                    err(
                        p.span(),
                        format!("route-protocols: unknown protocol `{}`", p.get_ref()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let gr = *g.graceful_restart_time.get_ref();
    if gr > 4095 {
        return Err(err(
            g.graceful_restart_time.span(),
            "graceful-restart-time: at most 4095 seconds (RFC 4724)".into(),
        ));
    }
    Ok(Group {
        name,
        interfaces,
        ranges,
        session,
        import,
        max_prefixes: g.max_prefixes,
        max_prefixes_action,
        route_protocols,
        graceful_restart_time: gr,
        extended_next_hop: g.extended_next_hop,
        max_sessions: at_least_one(&g.max_sessions, "max-sessions", err)?,
        max_sessions_per_interface: at_least_one(
            &g.max_sessions_per_interface,
            "max-sessions-per-interface",
            err,
        )?,
        connection_rate: at_least_one(&g.connection_rate, "connection-rate", err)?,
    })
}

/// `allow-attributes`: type codes of unknown optional transitive
/// attributes a VM may pass on. The ones tapir knows are not unknown.
fn allow_attributes(group: &str, v: &[Spanned<u8>], err: &ErrFn) -> Result<Vec<u8>, ConfigError> {
    use bgp::attribute::code;
    let known = [
        code::ORIGIN,
        code::AS_PATH,
        code::NEXT_HOP,
        code::MULTI_EXIT_DISC,
        code::LOCAL_PREF,
        code::ATOMIC_AGGREGATE,
        code::AGGREGATOR,
        code::COMMUNITIES,
        code::MP_REACH_NLRI,
        code::MP_UNREACH_NLRI,
        code::EXTENDED_COMMUNITIES,
        code::AS4_PATH,
        code::AS4_AGGREGATOR,
        code::LARGE_COMMUNITIES,
    ];
    let mut out = Vec::new();
    for t in v {
        let c = *t.get_ref();
        if c == 0 || known.contains(&c) {
            return Err(err(
                t.span(),
                format!("group `{group}`: allow-attributes: {c} is not an unknown attribute's type code (tapir knows 1-8, 14-18 and 32 and checks them itself)"),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

fn at_least_one<T: Copy + PartialOrd + From<u8>>(
    v: &Spanned<T>,
    key: &str,
    err: &ErrFn,
) -> Result<T, ConfigError> {
    if *v.get_ref() < T::from(1) {
        return Err(err(v.span(), format!("{key}: at least 1")));
    }
    Ok(*v.get_ref())
}

fn parse_vm(v: &Spanned<RawVm>, err: &ErrFn) -> Result<VmEntry, ConfigError> {
    let span = v.span();
    let v = v.get_ref();
    let name = v.name.get_ref().clone();
    if v.addresses.is_empty() {
        return Err(err(
            span,
            format!("vm `{name}`: needs at least one address (an entry follows the VM's addresses, never a tap name alone)"),
        ));
    }
    if let Some(a) = link_local_without_interface(&v.addresses, &v.interface) {
        return Err(err(
            span,
            format!(
                "vm `{name}`: address {a} is link-local, the same on every tap: set interface too"
            ),
        ));
    }
    let nic = match &v.nic {
        Some(n) => {
            let s = n.get_ref();
            if !nic_id_ok(s) {
                return Err(err(
                    n.span(),
                    format!("vm `{name}`: nic: empty, longer than 64 characters or with blanks"),
                ));
            }
            Some(s.clone())
        }
        None => None,
    };
    let mut prefixes = Vec::new();
    for p in &v.prefixes {
        prefixes.push(
            p.get_ref()
                .parse::<PrefixPattern>()
                .map_err(|m| err(p.span(), format!("vm `{name}`: prefixes: {m}")))?,
        );
    }
    let mac = match &v.mac {
        Some(m) => Some(
            m.get_ref()
                .parse()
                .map_err(|e| err(m.span(), format!("vm `{name}`: mac: {e}")))?,
        ),
        None => None,
    };
    Ok(VmEntry {
        name,
        nic,
        interface: v.interface.clone(),
        addresses: v.addresses.clone(),
        asn: v.asn,
        prefixes,
        mac,
        source: Source::Config,
        missing_since: None,
    })
}

/// Whether two interface patterns can match one name (conservative: two
/// patterns with `*` overlap when their literal heads are compatible).
fn patterns_overlap(a: &str, b: &str) -> bool {
    if !a.contains('*') {
        return glob(b, a);
    }
    if !b.contains('*') {
        return glob(a, b);
    }
    let ha = a.split('*').next().unwrap_or("");
    let hb = b.split('*').next().unwrap_or("");
    ha.starts_with(hb) || hb.starts_with(ha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("t.toml"))
    }

    #[test]
    fn groups_sharing_addresses_share_their_key() {
        let group = |name: &str, iface: &str, extra: &str| {
            format!("[[group]]\nname = \"{name}\"\ninterfaces = [\"{iface}\"]\nranges = [\"10.192.24.0/23\"]\nremote-as = \"external\"\n{extra}\n")
        };
        let head = "router-id = \"1.1.1.1\"\nlocal-as = 1\n";
        let same = format!(
            "{head}{}{}",
            group("a", "tap*", "password = \"k\""),
            group("b", "vnet*", "password = \"k\"")
        );
        assert!(parse(&same).is_ok());
        let differ = format!(
            "{head}{}{}",
            group("a", "tap*", "password = \"k\""),
            group("b", "vnet*", "")
        );
        let e = parse(&differ).unwrap_err().to_string();
        assert!(e.contains("share addresses but not their password"), "{e}");
    }

    #[test]
    fn passwords_from_the_config_or_a_file() {
        let dir = std::env::temp_dir().join(format!("tapir-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "s3cret\n").unwrap();
        let head = "router-id = \"1.1.1.1\"\nlocal-as = 1\n[[neighbor]]\naddress = \"10.0.0.1\"\nremote-as = 2\n";
        let load = |extra: &str| Config::parse(&format!("{head}{extra}\n"), &dir.join("t.toml"));
        let c = load("password-file = \"k\"").unwrap();
        assert_eq!(
            c.neighbors[0].session.password.as_deref(),
            Some(&b"s3cret"[..])
        );
        let c = load("password = \"inline\"").unwrap();
        assert_eq!(
            c.neighbors[0].session.password.as_deref(),
            Some(&b"inline"[..])
        );
        let e = load("password = \"a\"\npassword-file = \"k\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":7:") && e.contains("give one of them"), "{e}");
        let e = load("password-file = \"missing\"").unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains(":6:"), "{e}");
        let long = "x".repeat(81);
        let e = load(&format!("password = \"{long}\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 to 80 bytes"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// docs/config.md lists every key the parser accepts, in its section.
    /// The keys come from the parser itself: an unknown key in a table is
    /// refused with the list of the keys it expected.
    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../../docs/config.md");
        let head = "router-id = \"1.1.1.1\"\nlocal-as = 1\n";
        let term = "[policy.X]\n[[policy.X.term]]\naction = \"accept\"\n";
        let cases: [(&str, String); 10] = [
            ("## Top level", format!("{head}zz-unknown = 1\n")),
            (
                "## `[[neighbor]]`",
                format!("{head}[[neighbor]]\nzz-unknown = 1\n"),
            ),
            (
                "## `[[group]]`",
                format!("{head}[[group]]\nzz-unknown = 1\n"),
            ),
            ("## `[[vm]]`", format!("{head}[[vm]]\nzz-unknown = 1\n")),
            (
                "## `[policy.NAME]`",
                format!("{head}[policy.X]\nzz-unknown = 1\n"),
            ),
            (
                "### `[[policy.NAME.term]]`",
                format!("{head}{term}zz-unknown = 1\n"),
            ),
            (
                "### `match`",
                format!("{head}{term}match = {{ zz-unknown = 1 }}\n"),
            ),
            ("## `[kernel]`", format!("{head}[kernel]\nzz-unknown = 1\n")),
            (
                "## `[graceful-restart]`",
                format!("{head}[graceful-restart]\nzz-unknown = 1\n"),
            ),
            ("## `[drain]`", format!("{head}[drain]\nzz-unknown = 1\n")),
        ];
        let metrics = (
            "## `[metrics]`",
            format!("{head}[metrics]\nzz-unknown = 1\n"),
        );
        let ao = (
            "### `tcp-ao`",
            format!("{head}[[neighbor]]\naddress = \"10.0.0.1\"\nremote-as = 2\ntcp-ao = {{ zz-unknown = 1 }}\n"),
        );
        let guest = [
            (
                "## `[gateway]`",
                format!("{head}[gateway]\nzz-unknown = 1\n"),
            ),
            (
                "## `[[service]]`",
                format!("{head}[[service]]\nzz-unknown = 1\n"),
            ),
            (
                "### `check`",
                format!("{head}[[service]]\nprefixes = []\ncheck = [{{ zz-unknown = 1 }}]\n"),
            ),
        ];
        let bmp = ("## `[[bmp]]`", format!("{head}[[bmp]]\nzz-unknown = 1\n"));
        for (section, text) in cases
            .iter()
            .chain([&metrics, &ao, &bmp])
            .chain(guest.iter())
        {
            let start = doc
                .find(&format!("\n{section}\n"))
                .unwrap_or_else(|| panic!("docs/config.md has no section {section}"));
            let rest = &doc[start + section.len() + 2..];
            let end = rest.find("\n## ").unwrap_or(rest.len());
            let end = if section.starts_with("## ") {
                end
            } else {
                end.min(rest.find("\n### ").unwrap_or(rest.len()))
            };
            let body = &rest[..end];
            let e = parse(text).expect_err(text).to_string();
            let expected = e
                .split_once("expected")
                .unwrap_or_else(|| panic!("{section}: {e}"))
                .1;
            let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            assert!(!keys.is_empty(), "{section}: {e}");
            for k in keys {
                assert!(
                    body.contains(&format!("| `{k}` |")),
                    "docs/config.md, {section}: key `{k}` is not documented"
                );
            }
        }
    }

    #[test]
    fn example_parses() {
        let c = Config::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/hypervisor.toml"
        )))
        .unwrap();
        assert_eq!(c.local_as, 64612);
        assert_eq!(c.neighbors.len(), 2);
        assert_eq!(c.groups[0].interfaces, vec!["tap*".to_string()]);
        assert_eq!(c.vms[0].name, "recdns1001");
        assert_eq!(c.neighbors[1].families, vec![Afi::Ipv6]);
    }

    const HEAD: &str = "router-id = \"10.0.0.1\"\nlocal-as = 64612\n";

    fn group(name: &str, pattern: &str, range: &str) -> String {
        format!("[[group]]\nname = \"{name}\"\ninterfaces = [\"{pattern}\"]\nranges = [\"{range}\"]\nremote-as = \"external\"\n")
    }

    #[test]
    fn group_errors() {
        // Two groups that both match tap1 and 10.192.24.5.
        let text = format!(
            "{HEAD}{}{}",
            group("a", "tap*", "10.192.24.0/23"),
            group("b", "tap1*", "10.192.24.0/24")
        );
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("overlaps group `a`"), "{e}");
        assert_eq!(e.line, 8, "{e}");
        // Disjoint interfaces or ranges are fine.
        let text = format!(
            "{HEAD}{}{}",
            group("a", "tap*", "10.192.24.0/23"),
            group("b", "vnet*", "10.192.24.0/24")
        );
        assert_eq!(parse(&text).unwrap().groups.len(), 2);
        // A pattern no interface name can have.
        let e = parse(&format!("{HEAD}{}", group("a", "tap/*", "10.192.24.0/23"))).unwrap_err();
        assert!(e.message.contains("can match no interface"), "{e}");
        assert_eq!(e.line, 5, "{e}");
        let e = parse(&format!(
            "{HEAD}{}",
            group("a", "a-very-long-interface-name*", "10.192.24.0/23")
        ))
        .unwrap_err();
        assert!(e.message.contains("can match no interface"), "{e}");
        // A range that does not parse.
        let e = parse(&format!("{HEAD}{}", group("a", "tap*", "10.192.24.0/33"))).unwrap_err();
        assert!(e.message.contains("ranges"), "{e}");
        assert_eq!((e.line, e.column), (6, 11), "{e}");
        // An import filter that does not exist.
        let e = parse(&format!(
            "{HEAD}{}import = \"NOPE\"\n",
            group("a", "tap*", "10.192.24.0/23")
        ))
        .unwrap_err();
        assert!(e.message.contains("no prefix set `NOPE`"), "{e}");
        // remote-as lists and ranges.
        let ok = parse(&format!(
            "{HEAD}{}",
            group("a", "tap*", "10.192.24.0/23")
                .replace("\"external\"", "[64613, \"64700-64799\"]")
        ))
        .unwrap();
        assert_eq!(
            ok.groups[0].session.remote_as,
            RemoteAsConfig::Ranges(vec![(64613, 64613), (64700, 64799)])
        );
        let e = parse(&format!(
            "{HEAD}{}",
            group("a", "tap*", "10.192.24.0/23").replace("\"external\"", "\"64799-64700\"")
        ))
        .unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
    }

    #[test]
    fn prefix_set_and_inventory_errors() {
        let e = parse(&format!(
            "{HEAD}[prefix-sets]\nX = [\"10.3.0.0/24{{16,32}}\"]\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("prefix-sets.X"), "{e}");
        assert_eq!(e.line, 4, "{e}");
        let vm = |name: &str, addr: &str, prefix: &str| {
            format!(
                "[[vm]]\nname = \"{name}\"\naddresses = [\"{addr}\"]\nprefixes = [\"{prefix}\"]\n"
            )
        };
        let e = parse(&format!(
            "{HEAD}{}{}",
            vm("a", "10.192.24.11", "10.3.0.1/32"),
            vm("a", "10.192.24.12", "10.3.0.2/32")
        ))
        .unwrap_err();
        assert!(e.message.contains("already in the inventory"), "{e}");
        assert_eq!(e.line, 7, "{e}");
        let e = parse(&format!(
            "{HEAD}{}{}",
            vm("a", "10.192.24.11", "10.3.0.1/32"),
            vm("b", "10.192.24.12", "10.3.0.0/24+")
        ))
        .unwrap_err();
        assert!(e.message.contains("overlaps"), "{e}");
        let e = parse(&format!("{HEAD}{}", vm("a", "10.192.24.11", "10.3.0.1/33"))).unwrap_err();
        assert!(e.message.contains("vm `a`: prefixes"), "{e}");
        let e = parse(&format!("{HEAD}{}", vm("a", "fe80::1", "10.3.0.1/32"))).unwrap_err();
        assert!(e.message.contains("link-local") && e.line == 3, "{e}");
        let no_address =
            "[[vm]]\nname = \"a\"\ninterface = \"tap1\"\nprefixes = [\"10.3.0.1/32\"]\n";
        let e = parse(&format!("{HEAD}{no_address}")).unwrap_err();
        assert!(e.message.contains("never a tap name alone"), "{e}");
    }

    #[test]
    fn import_rules_for_groups_and_neighbors() {
        let group = |extra: &str| {
            format!(
                "{HEAD}[[group]]\nname = \"vms\"\ninterfaces = [\"tap*\"]\nranges = [\"10.192.24.0/23\"]\nremote-as = \"external\"\n{extra}"
            )
        };
        let c = parse(&group("")).unwrap();
        assert_eq!(c.groups[0].session.import_rules, ImportRules::vm_default());
        let c = parse(&group(
            "enforce-first-as = false\nallow-attributes = [99, 240]\n",
        ))
        .unwrap();
        assert_eq!(
            c.groups[0].session.import_rules,
            ImportRules {
                enforce_first_as: false,
                allow_attributes: Some(vec![99, 240]),
            }
        );
        // A known attribute is not unknown: the line says which.
        let e = parse(&group("allow-attributes = [99, 8]\n")).unwrap_err();
        assert!(e.message.contains("allow-attributes: 8"), "{e}");
        assert_eq!(e.line, 8, "{e}");
        let e = parse(&group("allow-attributes = [300]\n")).unwrap_err();
        assert_eq!(e.line, 8, "{e}");
        let n = "[[neighbor]]\naddress = \"10.192.21.1\"\nremote-as = 65020\n";
        let c = parse(&format!("{HEAD}{n}")).unwrap();
        assert_eq!(
            c.neighbors[0].session.import_rules,
            ImportRules::neighbor_default()
        );
        let c = parse(&format!("{HEAD}{n}enforce-first-as = true\n")).unwrap();
        assert!(c.neighbors[0].session.import_rules.enforce_first_as);
        assert_eq!(c.neighbors[0].session.import_rules.allow_attributes, None);
    }

    #[test]
    fn bmp_collectors_are_host_and_port() {
        let ok = parse(&format!(
            "{HEAD}[[bmp]]\naddress = \"bmp.example.net:1790\"\n\
             [[bmp]]\naddress = \"[2001:db8::9]:1790\"\nstatistics-interval = 0\n"
        ))
        .unwrap();
        assert_eq!(ok.bmp[0].statistics_interval, Some(Duration::from_secs(60)));
        assert_eq!(ok.bmp[1].statistics_interval, None);
        for (bad, says) in [
            ("address = \"bmp.example.net\"", "is not HOST:PORT"),
            ("address = \"2001:db8::9:1790\"", "is not HOST:PORT"),
            ("address = \"a:0\"", "is not HOST:PORT"),
            (
                "address = \"x:1\"\nstatistics-interval = 90000",
                "0 (never) to 86400",
            ),
        ] {
            let e = parse(&format!("{HEAD}[[bmp]]\n{bad}\n")).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {e}");
            assert!(e.line > 1, "{bad}: {e}");
        }
        let twice = format!("{HEAD}[[bmp]]\naddress = \"a:1\"\n[[bmp]]\naddress = \"a:1\"\n");
        assert!(parse(&twice).unwrap_err().message.contains("given twice"));
    }

    #[test]
    fn inventory_file_beside_the_config() {
        let dir = std::env::temp_dir().join(format!("tapir-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("vms.toml"),
            "[[vm]]\nname = \"a\"\naddresses = [\"10.192.24.11\"]\nprefixes = [\"10.3.0.1/32\"]\n",
        )
        .unwrap();
        let cfg = dir.join("tapir.toml");
        let c = Config::parse(&format!("{HEAD}inventory = \"vms.toml\"\n"), &cfg).unwrap();
        assert_eq!(c.vms[0].name, "a");
        // Errors in the inventory file point into that file.
        std::fs::write(
            dir.join("bad.toml"),
            "[[vm]]\nname = \"b\"\naddresses = [\"10.192.24.12\"]\nprefixes = [\"10.3.0/32\"]\n",
        )
        .unwrap();
        let e = Config::parse(&format!("{HEAD}inventory = \"bad.toml\"\n"), &cfg).unwrap_err();
        assert_eq!(e.file, dir.join("bad.toml"));
        assert_eq!(e.line, 4, "{e}");
        let e = Config::parse(&format!("{HEAD}inventory = \"missing.toml\"\n"), &cfg).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn glob_patterns() {
        assert!(glob("tap*", "tap11"));
        assert!(glob("tap*", "tap"));
        assert!(!glob("tap*", "eno1"));
        assert!(glob("*vm*", "xvmy"));
        assert!(glob("tap1", "tap1"));
        assert!(!glob("tap1", "tap11"));
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("router-id = \"10.0.0.1\"\nlocal-as = 64612\n[[neighbor]]\naddress = \"10.0.0.2\"\nremote-as = \"extrenal\"\n")
            .unwrap_err();
        assert_eq!((e.line, e.column), (5, 13), "{e}");
        assert!(
            e.to_string().starts_with("t.toml:5:13: error: remote-as"),
            "{e}"
        );

        let e = parse("router-id = \"10.0.0.1\"\nlocal-as = 64612\nannounce = [\"10.3.0.1/24\"]\n")
            .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("host bits"), "{e}");

        let e = parse("router-id = \"10.0.0.1\"\nlocal-as = 64612\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("bogus"), "{e}");

        let e = parse("router-id = \"10.0.0.300\"\nlocal-as = 64612\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");

        let e = parse("router-id = \"10.0.0.1\"\nlocal-as = 64612\n[[neighbor]]\naddress = \"10.0.0.2\"\nremote-as = 1\n[[neighbor]]\naddress = \"10.0.0.2\"\nremote-as = 2\n").unwrap_err();
        assert_eq!(e.line, 7, "{e}");

        let e = parse("router-id = \"10.0.0.1\"\nlocal-as = 64612\n[[neighbor]]\naddress = \"10.0.0.2\"\nremote-as = 1\nhold-time = 2\n").unwrap_err();
        assert_eq!(e.line, 6, "{e}");

        let e = parse("router-id = \"10.0.0.1\"\nlocal-as = 64612\n[drain]\nprepend = 11\n")
            .unwrap_err();
        assert_eq!((e.line, e.column), (4, 11), "{e}");
        assert!(e.message.starts_with("drain.prepend: 0 to 10"), "{e}");
        let c =
            parse("router-id = \"10.0.0.1\"\nlocal-as = 64612\n[drain]\nprepend = 3\n").unwrap();
        assert_eq!(c.drain.prepend, 3);
    }
}

//! The control socket: a Unix stream socket that takes one JSON request per
//! line and answers with one JSON line. `tapir show …` is its client.
//!
//! The JSON shapes here are the `--json` output of the CLI; they are a
//! documented interface (docs/json.md): fields are added, never renamed or
//! removed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub const DEFAULT_SOCKET: &str = "/run/tapir/tapir.sock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Static neighbors and the VM sessions where something answered;
    /// `all` adds the probes.
    ShowPeers {
        #[serde(default)]
        all: bool,
    },
    /// Routes as the sessions have them, filtered in the daemon.
    ShowRoutes {
        #[serde(default, flatten)]
        query: RouteQuery,
    },
    ShowVms,
    ShowRib,
    ShowBfd,
    ShowStatus,
    /// The guest role's health-checked services.
    ShowServices,
    VmAdd {
        vm: crate::northbound::inventory::Registration,
    },
    VmRemove {
        name: String,
        /// Only this NIC of the VM.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nic: Option<String>,
    },
    /// The synced inventory becomes `vms`, as one change; `dry_run`: only
    /// say what would change.
    VmSync {
        vms: Vec<crate::northbound::inventory::Registration>,
        dry_run: bool,
    },
    /// Stop the daemon; `graceful` keeps forwarding and lets peers keep our
    /// routes for the restart that follows (RFC 4724).
    Stop {
        graceful: bool,
    },
    /// Read the config file again and apply what changed; `dry_run`:
    /// only say what that would do.
    Reload {
        #[serde(default)]
        dry_run: bool,
    },
    /// The running config and how the file differs from it.
    ShowConfig,
    /// `tapir neighbor OP TARGET`: every session that `target` names (a
    /// neighbor's or VM's name, or an address).
    Neighbor {
        op: NeighborOp,
        target: String,
    },
    /// Drain a VM (or all, `vm` None) before a planned move (RFC 8326).
    Drain {
        vm: Option<String>,
        withdraw: bool,
        undrain: bool,
    },
}

/// `show config`: what runs, and what in the file does not (yet).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigView {
    pub path: String,
    /// The text the running config was read from.
    pub text: String,
    /// How the file on disk now differs from what runs, and what a
    /// reload would do with each difference.
    pub pending: Vec<crate::reload::Change>,
    /// The file on disk cannot be read or would be refused.
    pub file_error: Option<String>,
}

/// What `tapir neighbor` does to a session.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NeighborOp {
    /// Close the session (Cease, Administrative Shutdown) and keep it
    /// closed, both ways, until `enable`.
    Disable,
    /// Open a disabled session again.
    Enable,
    /// Close the session (Cease, Administrative Reset) and open it again
    /// at once.
    Restart,
    /// Without a reset: ask the peer for its routes again (ROUTE-REFRESH)
    /// and send it ours again.
    Refresh,
}

/// What `show routes` asks for; every field narrows the answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteQuery {
    /// A prefix (exactly that prefix), or an address: the routes of the
    /// longest prefix that covers it, as forwarding would pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Routes from this session (its name or address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Routes from this VM (inventory name or tap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Only the routes authorisation refused.
    #[serde(default)]
    pub refused: bool,
    /// Only how many there are.
    #[serde(default)]
    pub count: bool,
    /// Instead of what came in: what goes out to this neighbor (its name
    /// or address), after policy, with the attributes as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
    /// Why this prefix goes to the neighbor (`export`, or every upstream
    /// neighbor) or not: the policy term, or the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A `show routes` argument that is neither a prefix nor an address.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{text}: {source}")]
    Prefix {
        text: String,
        source: bgp::prefix::PrefixError,
    },
    #[error("{0}: neither a prefix nor an address")]
    Neither(String),
    #[error("{0}: give a prefix (what goes out is by prefix), e.g. 10.3.0.1/32")]
    NotAPrefix(String),
    #[error("--export and --why list what goes out: --refused, --peer, --vm and --count are about what came in")]
    Mixed,
}

/// A route query's prefix argument, parsed.
enum Target {
    Prefix(bgp::Prefix),
    Address(std::net::IpAddr),
}

impl RouteQuery {
    /// Checks the query; the CLI calls it before asking, the daemon again.
    pub fn check(&self) -> Result<(), QueryError> {
        self.target()?;
        if self.export.is_some() || self.why.is_some() {
            if self.refused || self.count || self.peer.is_some() || self.vm.is_some() {
                return Err(QueryError::Mixed);
            }
            self.export_prefix()?;
        }
        Ok(())
    }

    /// The prefix `--export` lists (or `--why` asks about), if any.
    pub fn export_prefix(&self) -> Result<Option<bgp::Prefix>, QueryError> {
        match self.why.as_ref().or(self.prefix.as_ref()) {
            None => Ok(None),
            Some(s) if !s.contains('/') => Err(QueryError::NotAPrefix(s.clone())),
            Some(s) => s.parse().map(Some).map_err(|source| QueryError::Prefix {
                text: s.clone(),
                source,
            }),
        }
    }

    fn target(&self) -> Result<Option<Target>, QueryError> {
        let Some(s) = &self.prefix else {
            return Ok(None);
        };
        if s.contains('/') {
            return s
                .parse()
                .map(|p| Some(Target::Prefix(p)))
                .map_err(|source| QueryError::Prefix {
                    text: s.clone(),
                    source,
                });
        }
        s.parse()
            .map(|a| Some(Target::Address(a)))
            .map_err(|_| QueryError::Neither(s.clone()))
    }

    /// The routes that answer the query, in the order given.
    pub fn select(&self, routes: Vec<RouteEntry>) -> Result<Vec<RouteEntry>, QueryError> {
        let target = self.target()?;
        let mut out: Vec<RouteEntry> = routes
            .into_iter()
            .filter(|r| !self.refused || !r.accepted)
            .filter(|r| {
                self.peer
                    .as_ref()
                    .is_none_or(|p| &r.peer == p || &r.peer_address == p)
            })
            .filter(|r| {
                self.vm
                    .as_ref()
                    .is_none_or(|v| r.vm.as_ref() == Some(v) || r.interface.as_ref() == Some(v))
            })
            .collect();
        let parsed = |r: &RouteEntry| r.prefix.parse::<bgp::Prefix>().ok();
        match target {
            None => {}
            Some(Target::Prefix(p)) => out.retain(|r| parsed(r) == Some(p)),
            Some(Target::Address(a)) => {
                let host =
                    bgp::Prefix::new(a, if a.is_ipv4() { 32 } else { 128 }).expect("a host prefix");
                out.retain(|r| parsed(r).is_some_and(|p| p.contains(&host)));
                let longest = out.iter().filter_map(parsed).map(|p| p.len()).max();
                out.retain(|r| parsed(r).map(|p| p.len()) == longest);
            }
        }
        Ok(out)
    }
}

/// `show routes --count`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteCount {
    pub routes: usize,
    pub accepted: usize,
    pub refused: usize,
    /// Best paths in the Loc-RIB, and of them in the kernel.
    pub best: usize,
    pub installed: usize,
}

impl RouteCount {
    pub fn of(routes: &[RouteEntry]) -> RouteCount {
        RouteCount {
            routes: routes.len(),
            accepted: routes.iter().filter(|r| r.accepted).count(),
            refused: routes.iter().filter(|r| !r.accepted).count(),
            best: routes.iter().filter(|r| r.best).count(),
            installed: routes.iter().filter(|r| r.installed).count(),
        }
    }
}

/// One session, as `tapir show peers` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    /// The configured remote AS: a number, `external` or `internal`.
    pub remote_as: String,
    /// The peer's ASN from its OPEN, once known.
    pub asn: Option<u32>,
    /// RFC 4271 state name: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// Seconds since the state last changed.
    pub since_secs: u64,
    pub local_address: Option<String>,
    pub remote_id: Option<String>,
    pub hold_time: Option<u16>,
    pub keepalive: Option<u16>,
    /// Negotiated families (`ipv4-unicast`, `ipv6-unicast`).
    pub families: Vec<String>,
    /// Capabilities the peer sent, unknown ones included.
    pub peer_capabilities: Vec<String>,
    /// The tap a VM session lives on.
    pub interface: Option<String>,
    pub routes_received: usize,
    /// Received routes that passed authorisation.
    pub routes_accepted: usize,
    /// Refused announcements by reason (`next-hop`, `not-in-inventory`,
    /// `owned-by-other-vm`, `group-filter`, `no-filter`, `max-prefixes`).
    pub rejections: std::collections::BTreeMap<String, u64>,
    pub routes_exported: usize,
    /// Times the session left Established.
    pub flaps: u64,
    pub last_error: Option<String>,
    /// For a VM session: its inventory name (if known) and group.
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// Messages by type (`open`, `update`, `notification`, `keepalive`,
    /// `route-refresh`), all connections since the daemon started.
    #[serde(default)]
    pub messages_received: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub messages_sent: std::collections::BTreeMap<String, u64>,
    /// The last NOTIFICATION each way, as text.
    #[serde(default)]
    pub last_notification_sent: Option<String>,
    #[serde(default)]
    pub last_notification_received: Option<String>,
    /// The hold time we offer and the connect-retry interval in force
    /// (seconds; backed off for a probe).
    #[serde(default)]
    pub configured_hold_time: u16,
    #[serde(default)]
    pub connect_retry_secs: u64,
    /// `static` (a configured neighbor) or `vm`.
    #[serde(default)]
    pub kind: String,
    /// A VM address where nothing has answered: tried with back-off, left
    /// out of `show peers` (unless `--all`) and of the session metrics.
    #[serde(default)]
    pub probing: bool,
    /// Stopped by `tapir neighbor disable`.
    #[serde(default)]
    pub disabled: bool,
    /// Until the hold timer and the keepalive timer fire (milliseconds).
    #[serde(default)]
    pub hold_timer_left_ms: Option<u64>,
    #[serde(default)]
    pub keepalive_timer_left_ms: Option<u64>,
}

/// One route in an Adj-RIB-In, as `tapir show routes` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteEntry {
    pub prefix: String,
    pub peer: String,
    pub next_hop: String,
    pub as_path: String,
    pub origin: String,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    /// False if authorisation refused the route.
    pub accepted: bool,
    pub rejected_reason: Option<String>,
    /// The session's address, its VM (inventory name) and tap.
    #[serde(default)]
    pub peer_address: String,
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub interface: Option<String>,
    /// This is the Loc-RIB's best path for the prefix.
    #[serde(default)]
    pub best: bool,
    /// The best path, and in the kernel.
    #[serde(default)]
    pub installed: bool,
    /// The best path, asked of the kernel, which refused it: why (e.g.
    /// `ENETUNREACH (Network is unreachable), refused 3 times`).
    #[serde(default)]
    pub kernel_error: Option<String>,
}

impl RouteEntry {
    /// A route with its attributes as text, from `peer` (or, exported,
    /// to it); the rest is the caller's.
    pub fn new(
        prefix: &bgp::Prefix,
        peer: &str,
        next_hop: String,
        a: &bgp::PathAttributes,
    ) -> RouteEntry {
        RouteEntry {
            prefix: prefix.to_string(),
            peer: peer.to_string(),
            next_hop,
            as_path: a
                .as_path
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            origin: a.origin.map(|o| o.name().to_string()).unwrap_or_default(),
            med: a.med,
            local_pref: a.local_pref,
            communities: a
                .communities
                .iter()
                .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                .collect(),
            large_communities: a
                .large_communities
                .iter()
                .map(|c| format!("{}:{}:{}", c.global, c.local1, c.local2))
                .collect(),
            accepted: true,
            rejected_reason: None,
            peer_address: String::new(),
            vm: None,
            interface: None,
            best: false,
            installed: false,
            kernel_error: None,
        }
    }
}

/// `show routes --why PREFIX`: one neighbor's verdict.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportVerdict {
    pub neighbor: String,
    pub prefix: String,
    /// Whether the neighbor is sent the prefix.
    pub sent: bool,
    /// The policy term that decided, or why not.
    pub reason: String,
}

/// `tapir show status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub router_id: String,
    pub local_as: u32,
    pub config: String,
    pub uptime_secs: u64,
    /// Static neighbors: Established and all.
    pub neighbors_established: usize,
    pub neighbors: usize,
    /// VM sessions: Established and all.
    pub vm_sessions_established: usize,
    pub vm_sessions: usize,
    pub rib_prefixes: usize,
    pub rib_paths: usize,
    pub kernel_routes: usize,
    pub bfd_sessions_up: usize,
    pub bfd_sessions: usize,
    /// A graceful restart is in progress (RFC 4724).
    pub restarting: bool,
    /// Tasks running, by kind (`tasks.rs`); kinds with none are left out.
    #[serde(default)]
    pub tasks: std::collections::BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Peers {
        peers: Vec<PeerStatus>,
    },
    Routes {
        routes: Vec<RouteEntry>,
    },
    RouteCount {
        count: RouteCount,
    },
    Vms {
        vms: Vec<VmStatus>,
    },
    Rib {
        rib: Vec<crate::routing::rib::LocRibEntry>,
    },
    Bfd {
        sessions: Vec<crate::southbound::bfd::BfdStatus>,
    },
    Status {
        status: Status,
    },
    Services {
        services: Vec<crate::role::health::ServiceStatus>,
    },
    Done {
        message: String,
    },
    Reloaded {
        report: crate::reload::Report,
    },
    Why {
        verdicts: Vec<ExportVerdict>,
    },
    Config {
        config: ConfigView,
    },
    Error {
        message: String,
    },
}

/// Why the CLI got no answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach tapir at {}: {source} (is `tapir run` running with this --socket?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: bad answer: {0}")]
    Answer(serde_json::Error),
    #[error("no answer from tapir at {} within {} s (--timeout); is the daemon stuck? Its log says more", path.display(), after.as_secs_f64())]
    Timeout {
        path: PathBuf,
        after: std::time::Duration,
    },
}

/// Sends one request to a running daemon and waits for its answer, at
/// most `timeout`.
pub async fn request(
    socket: &Path,
    req: &Request,
    timeout: std::time::Duration,
) -> Result<Response, ClientError> {
    tokio::time::timeout(timeout, exchange(socket, req))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                path: socket.to_path_buf(),
                after: timeout,
            })
        })
}

async fn exchange(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (r, mut w) = stream.into_split();
    // A request is plain data: serialising it cannot fail.
    let mut line = serde_json::to_string(req).unwrap_or_default();
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    serde_json::from_str(&answer).map_err(ClientError::Answer)
}

/// Binds the control socket: its directory is created, a stale socket file
/// is replaced, and the mode is 0660 so only root and the group may use it.
pub fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketGuard)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another tapir is listening on {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok((l, SocketGuard(path.to_owned())))
}

/// Removes the socket file when the daemon stops.
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads requests from one client and answers them with `handle`.
/// The most a control connection may send, all requests together: a
/// `vm sync` of about 60,000 VMs.
pub const MAX_REQUEST: u64 = 8 << 20;

pub async fn serve_client<F, Fut>(stream: UnixStream, handle: F)
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_default();
        out.push('\n');
        if w.write_all(out.as_bytes()).await.is_err() {
            break;
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// One VM, as `tapir show vms` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmStatus {
    /// Inventory name, if the VM has an entry.
    pub name: Option<String>,
    /// The NIC, for a VM registered NIC by NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    /// `config`, `registered`, `synced` or `discovered`.
    pub source: String,
    pub interface: Option<String>,
    pub group: Option<String>,
    pub addresses: Vec<String>,
    /// Prefixes the VM may announce (its entry's, or the group filter's name).
    pub allowed: Vec<String>,
    pub sessions: Vec<VmSession>,
    /// Being drained (RFC 8326): `shutdown` or `withdrawn`.
    pub drain: Option<crate::routing::rib::DrainState>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSession {
    pub address: String,
    /// The RFC 4271 state, or `probing` while nothing answers there.
    pub state: String,
    pub routes_accepted: usize,
    pub routes_rejected: usize,
    /// The BFD session's state, if the group runs BFD.
    #[serde(default)]
    pub bfd: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, peer: &str, accepted: bool) -> RouteEntry {
        RouteEntry {
            prefix: prefix.into(),
            peer: peer.into(),
            next_hop: "10.192.24.11".into(),
            as_path: "64613".into(),
            origin: "igp".into(),
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            accepted,
            rejected_reason: (!accepted).then(|| "not-allowed".into()),
            peer_address: format!("addr-{peer}"),
            vm: Some(peer.into()),
            interface: Some(format!("tap-{peer}")),
            best: accepted,
            installed: accepted,
            kernel_error: None,
        }
    }

    fn table() -> Vec<RouteEntry> {
        vec![
            route("10.3.0.0/24", "vm11", true),
            route("10.3.0.1/32", "vm11", true),
            route("10.3.0.1/32", "vm12", true),
            route("10.99.0.0/24", "vm13", false),
            route("2001:db8:3::2/128", "vm12", true),
        ]
    }

    fn prefixes(q: RouteQuery) -> Vec<String> {
        q.select(table())
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.prefix, r.peer))
            .collect()
    }

    #[test]
    fn an_address_selects_its_longest_match() {
        let q = |a: &str| RouteQuery {
            prefix: Some(a.into()),
            ..Default::default()
        };
        // Both sessions' /32, not the /24 that also covers it.
        assert_eq!(
            prefixes(q("10.3.0.1")),
            ["10.3.0.1/32 vm11", "10.3.0.1/32 vm12"]
        );
        assert_eq!(prefixes(q("10.3.0.7")), ["10.3.0.0/24 vm11"]);
        assert!(prefixes(q("192.0.2.1")).is_empty());
        assert_eq!(prefixes(q("2001:db8:3::2")), ["2001:db8:3::2/128 vm12"]);
        // A prefix is that prefix only.
        assert_eq!(prefixes(q("10.3.0.0/24")), ["10.3.0.0/24 vm11"]);
    }

    #[test]
    fn refused_peer_and_vm_narrow_the_answer() {
        let refused = RouteQuery {
            refused: true,
            ..Default::default()
        };
        assert_eq!(prefixes(refused), ["10.99.0.0/24 vm13"]);
        let by_peer = RouteQuery {
            peer: Some("addr-vm12".into()),
            ..Default::default()
        };
        assert_eq!(
            prefixes(by_peer),
            ["10.3.0.1/32 vm12", "2001:db8:3::2/128 vm12"]
        );
        let by_tap = RouteQuery {
            vm: Some("tap-vm11".into()),
            prefix: Some("10.3.0.1".into()),
            ..Default::default()
        };
        assert_eq!(prefixes(by_tap), ["10.3.0.1/32 vm11"]);
        let all = RouteQuery::default().select(table()).unwrap();
        assert_eq!(
            RouteCount::of(&all),
            RouteCount {
                routes: 5,
                accepted: 4,
                refused: 1,
                best: 4,
                installed: 4
            }
        );
    }

    #[test]
    fn a_bad_argument_is_an_error_that_names_it() {
        for bad in ["10.3.0.300/32", "10.3.0.1/33", "nonsense"] {
            let q = RouteQuery {
                prefix: Some(bad.into()),
                ..Default::default()
            };
            let e = q.check().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// An old client's `show-routes` (no query) still parses.
    #[test]
    fn a_plain_show_routes_request_parses() {
        let r: Request = serde_json::from_str(r#"{"command":"show-routes"}"#).unwrap();
        assert_eq!(
            r,
            Request::ShowRoutes {
                query: RouteQuery::default()
            }
        );
    }
}

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
use serde::Deserialize;
use toml::Spanned;

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
}

#[derive(Clone, Debug, PartialEq)]
pub struct Neighbor {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub remote_as: RemoteAsConfig,
    pub local_address: Option<IpAddr>,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub passive: bool,
    pub families: Vec<Afi>,
    pub announce: Vec<Prefix>,
}

/// `remote-as`: a number, `external` or `internal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteAsConfig {
    Exact(u32),
    External,
    Internal,
}

impl RemoteAsConfig {
    pub fn to_session(&self) -> RemoteAs {
        match self {
            RemoteAsConfig::Exact(a) => RemoteAs::Exact(*a),
            RemoteAsConfig::External => RemoteAs::External,
            RemoteAsConfig::Internal => RemoteAs::Internal,
        }
    }
}

impl std::fmt::Display for RemoteAsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteAsConfig::Exact(a) => write!(f, "{a}"),
            RemoteAsConfig::External => write!(f, "external"),
            RemoteAsConfig::Internal => write!(f, "internal"),
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
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawNeighbor {
    name: Option<Spanned<String>>,
    address: Spanned<IpAddr>,
    #[serde(default = "default_port")]
    port: u16,
    remote_as: Spanned<RawRemoteAs>,
    local_address: Option<IpAddr>,
    #[serde(default = "default_hold_time")]
    hold_time: Spanned<u16>,
    #[serde(default = "default_connect_retry")]
    connect_retry: Spanned<u64>,
    #[serde(default)]
    passive: bool,
    families: Option<Vec<Spanned<String>>>,
    #[serde(default, deserialize_with = "prefixes")]
    announce: Vec<Prefix>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRemoteAs {
    Number(u32),
    Word(String),
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
        let mut neighbors: Vec<Neighbor> = Vec::new();
        for (i, n) in raw.neighbor.into_iter().enumerate() {
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
            let remote_as = match n.remote_as.get_ref() {
                RawRemoteAs::Number(0) => {
                    return Err(err(
                        n.remote_as.span(),
                        "remote-as: 0 is not an AS number".into(),
                    ))
                }
                RawRemoteAs::Number(a) => RemoteAsConfig::Exact(*a),
                RawRemoteAs::Word(w) if w == "external" => RemoteAsConfig::External,
                RawRemoteAs::Word(w) if w == "internal" => RemoteAsConfig::Internal,
                RawRemoteAs::Word(w) => {
                    return Err(err(
                        n.remote_as.span(),
                        format!(
                            "remote-as: `{w}` is neither an AS number nor `external` or `internal`"
                        ),
                    ))
                }
            };
            let hold_time = *n.hold_time.get_ref();
            if hold_time == 1 || hold_time == 2 {
                return Err(err(
                    n.hold_time.span(),
                    "hold-time: must be 0 or at least 3 seconds (RFC 4271 §4.2)".into(),
                ));
            }
            let connect_retry = *n.connect_retry.get_ref();
            if connect_retry == 0 {
                return Err(err(
                    n.connect_retry.span(),
                    "connect-retry: must be at least 1 second".into(),
                ));
            }
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
                                    format!("families: unknown family `{other}` (expected `ipv4` or `ipv6`)"),
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
            neighbors.push(Neighbor {
                name,
                address,
                port: n.port,
                remote_as,
                local_address: n.local_address,
                hold_time,
                connect_retry: Duration::from_secs(connect_retry),
                passive: n.passive,
                families,
                announce: n.announce,
            });
        }
        Ok(Config {
            router_id: raw.router_id,
            local_as,
            listen: raw
                .listen
                .unwrap_or_else(|| vec![SocketAddr::from(([0u16; 8], 179))]),
            announce: raw.announce,
            neighbors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("t.toml"))
    }

    #[test]
    fn example_parses() {
        let c = Config::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/hypervisor.toml"
        )))
        .unwrap();
        assert_eq!(c.local_as, 64612);
        assert_eq!(c.neighbors.len(), 3);
        assert_eq!(c.neighbors[1].families, vec![Afi::Ipv6]);
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
    }
}

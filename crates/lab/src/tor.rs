//! The top-of-rack of the reference lab with BIRD, FRR or GoBGP, accepting
//! the hypervisors as dynamic neighbors (docs/design.md), and one way to read
//! what it learned whichever daemon it is.

use serde_json::Value;

use crate::reference::{HV_AS, TOR_AS, TOR_V4, TOR_V6};
use crate::Lab;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bird,
    Frr,
    Gobgp,
}

pub enum Tor {
    Bird(crate::bird::Bird),
    Frr(crate::frr::Frr),
    Gobgp(crate::gobgp::Gobgp),
}

/// A route as tor holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorRoute {
    pub next_hop: String,
    pub as_path: Vec<u32>,
    /// `ASN:VALUE` strings.
    pub communities: Vec<String>,
}

/// Starts tor's daemon; it announces 192.0.2.0/24 and 2001:db8:ff::/48.
/// BIRD's tor gives routes carrying GRACEFUL_SHUTDOWN the lowest
/// local-pref, as RFC 8326 asks of a receiver.
pub fn start(lab: &mut Lab, kind: Kind) -> Tor {
    start_with(lab, kind, false)
}

/// A BIRD tor that also installs its BGP routes in its namespace's kernel
/// table (`proto bird`), so that benchmarks can time changes there.
pub fn start_bird_with_kernel(lab: &mut Lab) -> Tor {
    Tor::Bird(lab.bird(
        "tor",
        &format!(
            "{}protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; }}\n\
             protocol kernel {{ ipv6 {{ export where source = RTS_BGP; }}; }}\n",
            bird_config()
        ),
    ))
}

/// The BIRD tor's config (`import filter from_hv` on both sessions).
pub fn bird_config() -> String {
    format!(
        "log stderr all;\ndebug protocols {{ states, events }};\nrouter id {TOR_V4};\nprotocol device {{ }}\n\
         protocol static s4 {{ ipv4; route 192.0.2.0/24 unreachable; }}\n\
         protocol static s6 {{ ipv6; route 2001:db8:ff::/48 unreachable; }}\n\
         filter from_hv {{ if (65535,0) ~ bgp_community then bgp_local_pref = 0; accept; }}\n\
         protocol bgp hv4 {{ local {TOR_V4} as {TOR_AS}; neighbor range 10.192.21.0/24 as {HV_AS};\n  \
           ipv4 {{ import filter from_hv; export where source = RTS_STATIC; }}; }}\n\
         protocol bgp hv6 {{ local {TOR_V6} as {TOR_AS}; neighbor range 2001:db8:21::/64 as {HV_AS};\n  \
           ipv6 {{ import filter from_hv; export where source = RTS_STATIC; }}; }}\n"
    )
}

/// The FRR tor's config: BFD with the hypervisors if asked, and
/// `route_map` inbound on their sessions if given.
fn frr_config(bfd: bool, route_map: Option<&str>) -> String {
    let rm = |group: &str| {
        route_map
            .map(|m| format!("  neighbor {group} route-map {m} in\n"))
            .unwrap_or_default()
    };
    format!(
        "hostname tor\nrouter bgp {TOR_AS}\n bgp router-id {TOR_V4}\n no bgp ebgp-requires-policy\n \
         bgp bestpath compare-routerid\n \
         no bgp network import-check\n no bgp default ipv4-unicast\n \
         neighbor HV4 peer-group\n neighbor HV4 remote-as {HV_AS}\n \
         neighbor HV6 peer-group\n neighbor HV6 remote-as {HV_AS}\n{bfd} \
         bgp listen range 10.192.21.0/24 peer-group HV4\n bgp listen range 2001:db8:21::/64 peer-group HV6\n \
         address-family ipv4 unicast\n  network 192.0.2.0/24\n  neighbor HV4 activate\n{rm4} exit-address-family\n \
         address-family ipv6 unicast\n  network 2001:db8:ff::/48\n  neighbor HV6 activate\n{rm6} exit-address-family\nexit\n",
        bfd = if bfd { " neighbor HV4 bfd\n neighbor HV6 bfd\n" } else { "" },
        rm4 = rm("HV4"),
        rm6 = rm("HV6"),
    )
}

/// A BIRD or FRR tor whose sessions with the hypervisors import through
/// an operator's snippet (`contrib/tor/`): for BIRD, `snippet` defines
/// filter `name`; for FRR, route-map `name`.
pub fn start_with_import(lab: &mut Lab, kind: Kind, snippet: &str, name: &str) -> Tor {
    match kind {
        Kind::Bird => {
            let base = bird_config();
            let own = base
                .lines()
                .find(|l| l.trim_start().starts_with("filter from_hv"))
                .expect("the tor's own filter")
                .to_string();
            let config = base
                .replace(&format!("{own}\n"), "")
                .replace("import filter from_hv", &format!("import filter {name}"));
            assert!(!config.contains("from_hv"));
            Tor::Bird(lab.bird("tor", &format!("{snippet}\n{config}")))
        }
        Kind::Frr => Tor::Frr(lab.frr(
            "tor",
            &format!("{snippet}\n{}", frr_config(false, Some(name))),
        )),
        Kind::Gobgp => panic!("no GoBGP snippet"),
    }
}

/// As [`start`]; `bfd` asks for BFD with the hypervisors (FRR only).
pub fn start_with(lab: &mut Lab, kind: Kind, bfd: bool) -> Tor {
    match kind {
        Kind::Bird => Tor::Bird(lab.bird("tor", &bird_config())),
        Kind::Frr => Tor::Frr(lab.frr("tor", &frr_config(bfd, None))),
        Kind::Gobgp => {
            let g = lab.gobgp(
                "tor",
                &format!(
                    "[global.config]\n  as = {TOR_AS}\n  router-id = \"{TOR_V4}\"\n\
                     [[peer-groups]]\n  [peer-groups.config]\n    peer-group-name = \"hv4\"\n    peer-as = {HV_AS}\n\
                     [[peer-groups.afi-safis]]\n    [peer-groups.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n\
                     [[peer-groups]]\n  [peer-groups.config]\n    peer-group-name = \"hv6\"\n    peer-as = {HV_AS}\n\
                     [[peer-groups.afi-safis]]\n    [peer-groups.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n\
                     [[dynamic-neighbors]]\n  [dynamic-neighbors.config]\n    prefix = \"10.192.21.0/24\"\n    peer-group = \"hv4\"\n\
                     [[dynamic-neighbors]]\n  [dynamic-neighbors.config]\n    prefix = \"2001:db8:21::/64\"\n    peer-group = \"hv6\"\n"
                ),
            );
            g.announce("192.0.2.0/24");
            g.announce("2001:db8:ff::/48");
            Tor::Gobgp(g)
        }
    }
}

impl Tor {
    /// Every next hop tor has for exactly `prefix`, best path first (BIRD
    /// lists all paths; FRR and GoBGP: the best one).
    pub fn next_hops(&self, prefix: &str) -> Vec<String> {
        match self {
            Tor::Bird(b) => b
                .route(prefix)
                .map(|out| {
                    out.lines()
                        .filter_map(|l| l.trim().strip_prefix("BGP.next_hop: "))
                        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default(),
            _ => self
                .route(prefix)
                .map(|r| vec![r.next_hop])
                .unwrap_or_default(),
        }
    }

    /// tor's best route for exactly `prefix`, if it has one.
    pub fn route(&self, prefix: &str) -> Option<TorRoute> {
        match self {
            Tor::Bird(b) => {
                let out = b.route(prefix)?;
                let field = |name: &str| {
                    out.lines()
                        .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                };
                Some(TorRoute {
                    next_hop: field("BGP.next_hop:")?
                        .split_whitespace()
                        .next()?
                        .to_string(),
                    as_path: field("BGP.as_path:")
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|a| a.parse().ok())
                        .collect(),
                    communities: field("BGP.community:")
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(|c| c.trim_matches(|x| x == '(' || x == ')').replace(',', ":"))
                        .collect(),
                })
            }
            Tor::Frr(f) => {
                let paths = f.prefix_paths(prefix);
                // The best path (FRR lists the newest first), else the
                // first valid one.
                let p = paths
                    .iter()
                    .find(|p| p["bestpath"]["overall"] == true)
                    .or_else(|| paths.iter().find(|p| p["valid"] == true))?;
                Some(TorRoute {
                    next_hop: p["nexthops"][0]["ip"].as_str()?.to_string(),
                    as_path: p["aspath"]["string"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .filter_map(|a| a.parse().ok())
                        .collect(),
                    communities: p["community"]["string"]
                        .as_str()
                        .map(|s| s.split_whitespace().map(str::to_string).collect())
                        .unwrap_or_default(),
                })
            }
            Tor::Gobgp(g) => {
                let paths = g.paths(prefix);
                let p = paths.first()?;
                let attr = |t: i64| -> Value {
                    p["attrs"]
                        .as_array()
                        .and_then(|a| a.iter().find(|x| x["type"] == t).cloned())
                        .unwrap_or(Value::Null)
                };
                let (a3, a14) = (attr(3), attr(14));
                let nh = a3["nexthop"]
                    .as_str()
                    .or_else(|| a14["nexthop"].as_str())?
                    .to_string();
                Some(TorRoute {
                    next_hop: nh,
                    as_path: attr(2)["as_paths"]
                        .as_array()
                        .map(|segs| {
                            segs.iter()
                                .flat_map(|s| s["asns"].as_array().cloned().unwrap_or_default())
                                .filter_map(|a| a.as_u64().map(|a| a as u32))
                                .collect()
                        })
                        .unwrap_or_default(),
                    communities: attr(8)["communities"]
                        .as_array()
                        .map(|cs| {
                            cs.iter()
                                .filter_map(|c| c.as_u64())
                                .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
        }
    }
}

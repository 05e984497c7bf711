//! Export policy: what goes to an upstream neighbor, and how it looks.
//!
//! ```toml
//! [policy.TO-TOR]
//! as-path = "strip"          # keep | strip | strip-private | prepend N (for VM routes)
//! default = "reject"         # when no term matches
//!
//! [[policy.TO-TOR.term]]
//! match = { group = "vms", prefix-set = "BGP-FROM-VMS" }
//! action = "accept"
//! add-communities = ["64612:100"]
//! ```
//!
//! Terms are tried in order; the first whose every condition holds decides.
//! The AS-path modes are for routes learned from VMs (problem 6 in docs/design.md):
//! `keep` leaves `64612 64613` at the top-of-rack, `strip` removes the VM's
//! ASN so the route leaves as `64612`, like bare-metal anycast.

use bgp::attribute::LargeCommunity;
use bgp::{AsPath, AsSegment, PathAttributes, Prefix};

use crate::routing::peer_info::PeerInfo;
use crate::routing::prefix_set::PrefixSet;

/// RFC 8326 GRACEFUL_SHUTDOWN community.
pub const GRACEFUL_SHUTDOWN: u32 = 0xffff_0000;
/// RFC 1997: not beyond our AS (nor a confederation, which we never are).
pub const NO_EXPORT: u32 = 0xffff_ff01;
/// RFC 1997: to no BGP neighbor at all.
pub const NO_ADVERTISE: u32 = 0xffff_ff02;
pub const NO_EXPORT_SUBCONFED: u32 = 0xffff_ff03;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsPathMode {
    Keep,
    /// Remove the VM's own ASN from the front of the path.
    Strip,
    /// Remove every private ASN (RFC 6996) from the path.
    StripPrivate,
    /// Add our ASN this many extra times.
    Prepend(u8),
}

/// A policy value that does not parse: `as-path`, a community or a
/// large community.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("as-path: `prepend {0}`: N must be 1 to 10")]
    Prepend(String),
    #[error("as-path: `{0}` is not one of keep, strip, strip-private, prepend N")]
    AsPath(String),
    #[error("community `{0}` is not ASN:VALUE")]
    Community(String),
    #[error("community `{community}`: `{part}` is not 0-65535")]
    CommunityPart { community: String, part: String },
    #[error("large community `{0}` is not GLOBAL:LOCAL1:LOCAL2")]
    LargeCommunity(String),
    #[error("large community `{community}`: `{part}` is not a 32-bit number")]
    LargeCommunityPart { community: String, part: String },
}

impl std::str::FromStr for AsPathMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<AsPathMode, ValueError> {
        match s.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["keep"] => Ok(AsPathMode::Keep),
            ["strip"] => Ok(AsPathMode::Strip),
            ["strip-private"] => Ok(AsPathMode::StripPrivate),
            ["prepend", n] => n
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .map(AsPathMode::Prepend)
                .ok_or_else(|| ValueError::Prepend(n.to_string())),
            _ => Err(ValueError::AsPath(s.to_string())),
        }
    }
}

/// Where a route came from, for `match = { source = … }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Vm,
    Neighbor,
    Local,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Match {
    pub prefix_set: Option<(String, PrefixSet)>,
    pub community: Option<u32>,
    pub large_community: Option<LargeCommunity>,
    pub group: Option<String>,
    pub vm: Option<String>,
    pub neighbor: Option<String>,
    pub source: Option<Source>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub matches: Match,
    pub accept: bool,
    pub set_communities: Option<Vec<u32>>,
    pub add_communities: Vec<u32>,
    pub add_large_communities: Vec<LargeCommunity>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub as_path: Option<AsPathMode>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub name: String,
    pub as_path: AsPathMode,
    pub default_accept: bool,
    pub terms: Vec<Term>,
}

/// What policy sees of a route.
pub struct RouteFacts<'a> {
    pub prefix: &'a Prefix,
    pub attrs: &'a PathAttributes,
    /// `None` for tapir's own routes.
    pub from: Option<&'a PeerInfo>,
}

impl RouteFacts<'_> {
    fn source(&self) -> Source {
        match self.from {
            None => Source::Local,
            Some(p) if p.group.is_some() => Source::Vm,
            Some(_) => Source::Neighbor,
        }
    }
}

impl Match {
    pub fn holds(&self, f: &RouteFacts) -> bool {
        self.prefix_set
            .as_ref()
            .is_none_or(|(_, s)| s.matches(f.prefix))
            && self
                .community
                .is_none_or(|c| f.attrs.communities.contains(&c))
            && self
                .large_community
                .is_none_or(|c| f.attrs.large_communities.contains(&c))
            && self
                .group
                .as_ref()
                .is_none_or(|g| f.from.and_then(|p| p.group.as_ref()) == Some(g))
            && self
                .vm
                .as_ref()
                .is_none_or(|v| f.from.and_then(|p| p.vm.as_ref()) == Some(v))
            && self
                .neighbor
                .as_ref()
                .is_none_or(|n| f.from.is_some_and(|p| &p.name == n))
            && self.source.is_none_or(|s| s == f.source())
    }
}

fn is_private(asn: u32) -> bool {
    (64512..=65534).contains(&asn) || (4_200_000_000..=4_294_967_294).contains(&asn)
}

/// Applies an AS-path mode to a VM route's path (before our ASN goes in front).
pub fn apply_as_path(mode: AsPathMode, path: &AsPath, vm_asn: Option<u32>) -> AsPath {
    let mut p = path.clone();
    match mode {
        AsPathMode::Keep | AsPathMode::Prepend(_) => {}
        AsPathMode::Strip => {
            if let (Some(asn), Some(AsSegment::Sequence(v))) = (vm_asn, p.segments.first_mut()) {
                while v.first() == Some(&asn) {
                    v.remove(0);
                }
                if v.is_empty() {
                    p.segments.remove(0);
                }
            }
        }
        AsPathMode::StripPrivate => {
            for s in &mut p.segments {
                match s {
                    AsSegment::Sequence(v)
                    | AsSegment::Set(v)
                    | AsSegment::ConfedSequence(v)
                    | AsSegment::ConfedSet(v) => v.retain(|a| !is_private(*a)),
                }
            }
            p.segments.retain(|s| !s.asns().is_empty());
        }
    }
    p
}

impl Policy {
    /// The name of [`Policy::rfc8212`].
    pub const RFC8212: &'static str = "none (RFC 8212)";

    /// An external neighbor's without `export`: nothing (RFC 8212).
    pub fn rfc8212() -> Policy {
        Policy {
            name: Policy::RFC8212.into(),
            as_path: AsPathMode::Keep,
            default_accept: false,
            terms: Vec::new(),
        }
    }

    /// The default for an internal neighbor without `export`: our own and
    /// VM routes go out unchanged, routes from other neighbors do not.
    pub fn hypervisor_default() -> Policy {
        Policy {
            name: "default".into(),
            as_path: AsPathMode::Keep,
            default_accept: false,
            terms: vec![
                Term::accept(Match {
                    source: Some(Source::Vm),
                    ..Default::default()
                }),
                Term::accept(Match {
                    source: Some(Source::Local),
                    ..Default::default()
                }),
            ],
        }
    }

    /// True if a term looks at the prefix: then what goes out may differ
    /// between prefixes with the same attributes and origin.
    pub fn matches_prefixes(&self) -> bool {
        self.terms.iter().any(|t| t.matches.prefix_set.is_some())
    }

    /// The default for the guest role's gateway: tapir's own routes only
    /// (the services), never something learned.
    pub fn guest_default() -> Policy {
        Policy {
            name: "default".into(),
            as_path: AsPathMode::Keep,
            default_accept: false,
            terms: vec![Term::accept(Match {
                source: Some(Source::Local),
                ..Default::default()
            })],
        }
    }

    /// The first term that matches, and whether the route goes out.
    fn decide(&self, f: &RouteFacts) -> (Option<&Term>, bool) {
        let (i, accept) = self.verdict(f);
        (i.map(|i| &self.terms[i]), accept)
    }

    /// The first term that matches (its index), or none (the default),
    /// and whether the route is accepted.
    pub fn verdict(&self, f: &RouteFacts) -> (Option<usize>, bool) {
        let i = self.terms.iter().position(|t| t.matches.holds(f));
        (i, i.map_or(self.default_accept, |i| self.terms[i].accept))
    }

    /// Whether the route goes out at all (`export` gives `Some`), without
    /// making its attributes.
    pub fn accepts(&self, f: &RouteFacts) -> bool {
        self.decide(f).1
    }

    /// The attributes to send for this route to an eBGP (`ebgp`) or iBGP
    /// neighbor, or `None` if the policy rejects it. The next hop is the
    /// session's own (next-hop-self), set when the UPDATE is built.
    pub fn export(&self, f: &RouteFacts, local_as: u32, ebgp: bool) -> Option<PathAttributes> {
        let (term, accept) = self.decide(f);
        if !accept {
            return None;
        }
        let mut a = f.attrs.clone();
        a.next_hop = None;
        let vm_route = f.source() == Source::Vm;
        let mode = term.and_then(|t| t.as_path).unwrap_or(if vm_route {
            self.as_path
        } else {
            AsPathMode::Keep
        });
        let path = a.as_path.take().unwrap_or_default();
        let mut path = apply_as_path(mode, &path, f.from.map(|p| p.asn));
        if ebgp {
            let times = 1 + if let AsPathMode::Prepend(n) = mode {
                n
            } else {
                0
            };
            for _ in 0..times {
                path.prepend(local_as);
            }
            // RFC 4271 §5.1.4/§5.1.5: MED and LOCAL_PREF received from
            // elsewhere are not passed to another AS.
            a.med = None;
            a.local_pref = None;
        } else {
            a.local_pref = Some(a.local_pref.unwrap_or(100));
        }
        a.as_path = Some(path);
        if let Some(t) = term {
            if let Some(c) = &t.set_communities {
                a.communities = c.clone();
            }
            for c in &t.add_communities {
                if !a.communities.contains(c) {
                    a.communities.push(*c);
                }
            }
            for c in &t.add_large_communities {
                if !a.large_communities.contains(c) {
                    a.large_communities.push(*c);
                }
            }
            if t.med.is_some() {
                a.med = t.med;
            }
            if let (Some(lp), false) = (t.local_pref, ebgp) {
                a.local_pref = Some(lp);
            }
        }
        Some(a)
    }
}

impl Term {
    pub fn accept(matches: Match) -> Term {
        Term {
            matches,
            accept: true,
            set_communities: None,
            add_communities: Vec::new(),
            add_large_communities: Vec::new(),
            local_pref: None,
            med: None,
            as_path: None,
        }
    }
}

/// `ASN:VALUE` or a well-known name (RFC 1997).
pub fn parse_community(s: &str) -> Result<u32, ValueError> {
    match s {
        "no-export" => return Ok(crate::routing::policy::NO_EXPORT),
        "no-advertise" => return Ok(crate::routing::policy::NO_ADVERTISE),
        "no-export-subconfed" => return Ok(crate::routing::policy::NO_EXPORT_SUBCONFED),
        "graceful-shutdown" => return Ok(0xffff_0000),
        _ => {}
    }
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| ValueError::Community(s.to_string()))?;
    let half = |x: &str| {
        x.parse::<u16>().map_err(|_| ValueError::CommunityPart {
            community: s.to_string(),
            part: x.to_string(),
        })
    };
    Ok(((half(a)? as u32) << 16) | half(b)? as u32)
}

/// `GLOBAL:LOCAL1:LOCAL2` (RFC 8092).
pub fn parse_large_community(s: &str) -> Result<LargeCommunity, ValueError> {
    let v: Vec<&str> = s.split(':').collect();
    let n = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| ValueError::LargeCommunityPart {
                community: s.to_string(),
                part: x.to_string(),
            })
    };
    match v.as_slice() {
        [a, b, c] => Ok(LargeCommunity {
            global: n(a)?,
            local1: n(b)?,
            local2: n(c)?,
        }),
        _ => Err(ValueError::LargeCommunity(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn vm_peer() -> PeerInfo {
        PeerInfo {
            id: crate::routing::peer_info::PeerId(1),
            name: "recdns1001".into(),
            address: "10.192.24.11".parse::<IpAddr>().unwrap(),
            asn: 64613,
            router_id: "10.192.24.11".parse().unwrap(),
            ebgp: true,
            vm: Some("recdns1001".into()),
            group: Some("vms".into()),
            interface: None,
            kernel: true,
        }
    }

    fn tor_peer() -> PeerInfo {
        PeerInfo {
            name: "tor-v4".into(),
            group: None,
            vm: None,
            asn: 65020,
            ..vm_peer()
        }
    }

    fn attrs(path: &[u32]) -> PathAttributes {
        PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(AsPath::from_sequence(path.iter().copied())),
            med: Some(5),
            local_pref: Some(300),
            communities: vec![parse_community("64613:1").unwrap()],
            ..Default::default()
        }
    }

    fn facts<'a>(
        p: &'a Prefix,
        a: &'a PathAttributes,
        from: Option<&'a PeerInfo>,
    ) -> RouteFacts<'a> {
        RouteFacts {
            prefix: p,
            attrs: a,
            from,
        }
    }

    fn path_of(a: &PathAttributes) -> String {
        a.as_path.as_ref().unwrap().to_string()
    }

    #[test]
    fn as_path_modes() {
        let p: Prefix = "10.3.0.1/32".parse().unwrap();
        let a = attrs(&[64613]);
        let vm = vm_peer();
        let mut pol = Policy::hypervisor_default();
        for (mode, want) in [
            (AsPathMode::Keep, "64612 64613"),
            (AsPathMode::Strip, "64612"),
            (AsPathMode::StripPrivate, "64612"),
            (AsPathMode::Prepend(2), "64612 64612 64612 64613"),
        ] {
            pol.as_path = mode;
            let out = pol.export(&facts(&p, &a, Some(&vm)), 64612, true).unwrap();
            assert_eq!(path_of(&out), want, "{mode:?}");
        }
        // strip-private keeps public ASNs; strip only the VM's own ASN.
        let a = attrs(&[64613, 3320, 64999]);
        pol.as_path = AsPathMode::StripPrivate;
        assert_eq!(
            path_of(&pol.export(&facts(&p, &a, Some(&vm)), 64612, true).unwrap()),
            "64612 3320"
        );
        pol.as_path = AsPathMode::Strip;
        assert_eq!(
            path_of(&pol.export(&facts(&p, &a, Some(&vm)), 64612, true).unwrap()),
            "64612 3320 64999"
        );
        // iBGP: no prepend, local-pref kept.
        pol.as_path = AsPathMode::Keep;
        let out = pol
            .export(&facts(&p, &attrs(&[64613]), Some(&vm)), 64612, false)
            .unwrap();
        assert_eq!((path_of(&out), out.local_pref), ("64613".into(), Some(300)));
    }

    #[test]
    fn default_policy_exports_vm_and_local_routes_only() {
        let p: Prefix = "10.3.0.1/32".parse().unwrap();
        let a = attrs(&[65020]);
        let pol = Policy::hypervisor_default();
        assert!(pol
            .export(&facts(&p, &a, Some(&tor_peer())), 64612, true)
            .is_none());
        let local = PathAttributes {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(AsPath::default()),
            ..Default::default()
        };
        let out = pol.export(&facts(&p, &local, None), 64612, true).unwrap();
        assert_eq!(path_of(&out), "64612");
        // eBGP: MED and LOCAL_PREF do not leave the AS.
        let out = pol
            .export(&facts(&p, &attrs(&[64613]), Some(&vm_peer())), 64612, true)
            .unwrap();
        assert_eq!((out.med, out.local_pref, out.next_hop), (None, None, None));
    }

    #[test]
    fn every_match() {
        let p: Prefix = "10.3.0.1/32".parse().unwrap();
        let a = attrs(&[64613]);
        let vm = vm_peer();
        let tor = tor_peer();
        let set = PrefixSet {
            patterns: vec!["10.3.0.0/24{32,32}".parse().unwrap()],
        };
        let cases: Vec<(Match, bool, bool)> = vec![
            // (match, holds for the VM route, holds for the tor route)
            (
                Match {
                    prefix_set: Some(("S".into(), set.clone())),
                    ..Default::default()
                },
                true,
                true,
            ),
            (
                Match {
                    prefix_set: Some((
                        "S".into(),
                        PrefixSet {
                            patterns: vec!["10.4.0.0/16+".parse().unwrap()],
                        },
                    )),
                    ..Default::default()
                },
                false,
                false,
            ),
            (
                Match {
                    community: Some(parse_community("64613:1").unwrap()),
                    ..Default::default()
                },
                true,
                true,
            ),
            (
                Match {
                    community: Some(parse_community("64613:2").unwrap()),
                    ..Default::default()
                },
                false,
                false,
            ),
            (
                Match {
                    group: Some("vms".into()),
                    ..Default::default()
                },
                true,
                false,
            ),
            (
                Match {
                    vm: Some("recdns1001".into()),
                    ..Default::default()
                },
                true,
                false,
            ),
            (
                Match {
                    vm: Some("other".into()),
                    ..Default::default()
                },
                false,
                false,
            ),
            (
                Match {
                    neighbor: Some("tor-v4".into()),
                    ..Default::default()
                },
                false,
                true,
            ),
            (
                Match {
                    source: Some(Source::Vm),
                    ..Default::default()
                },
                true,
                false,
            ),
            (
                Match {
                    source: Some(Source::Neighbor),
                    ..Default::default()
                },
                false,
                true,
            ),
            (
                Match {
                    large_community: Some(parse_large_community("1:2:3").unwrap()),
                    ..Default::default()
                },
                false,
                false,
            ),
        ];
        for (m, vm_holds, tor_holds) in cases {
            assert_eq!(m.holds(&facts(&p, &a, Some(&vm))), vm_holds, "{m:?}");
            assert_eq!(m.holds(&facts(&p, &a, Some(&tor))), tor_holds, "{m:?}");
        }
    }

    /// Actions: reject, set and add communities, MED, local-pref, AS path.
    #[test]
    fn every_action() {
        let p: Prefix = "10.3.0.1/32".parse().unwrap();
        let a = attrs(&[64613]);
        let vm = vm_peer();
        let tor = tor_peer();
        let mut t = Term::accept(Match {
            vm: Some("recdns1001".into()),
            ..Default::default()
        });
        t.set_communities = Some(vec![parse_community("64612:10").unwrap()]);
        t.add_communities = vec![parse_community("no-export").unwrap()];
        t.add_large_communities = vec![parse_large_community("64612:1:2").unwrap()];
        t.med = Some(77);
        t.local_pref = Some(250);
        t.as_path = Some(AsPathMode::Prepend(1));
        let pol = Policy {
            name: "P".into(),
            as_path: AsPathMode::Keep,
            default_accept: true,
            terms: vec![t.clone()],
        };
        let out = pol.export(&facts(&p, &a, Some(&vm)), 64612, true).unwrap();
        assert_eq!(out.communities, vec![(64612 << 16) | 10, 0xffff_ff01]);
        assert_eq!(
            out.large_communities,
            vec![LargeCommunity {
                global: 64612,
                local1: 1,
                local2: 2
            }]
        );
        assert_eq!(out.med, Some(77));
        assert_eq!(out.local_pref, None, "eBGP");
        assert_eq!(path_of(&out), "64612 64612 64613");
        let ibgp = pol.export(&facts(&p, &a, Some(&vm)), 64612, false).unwrap();
        assert_eq!(ibgp.local_pref, Some(250));
        t.accept = false;
        let pol = Policy {
            terms: vec![t],
            ..pol
        };
        assert!(pol.export(&facts(&p, &a, Some(&vm)), 64612, true).is_none());
        // No term matches: the default decides.
        assert!(pol
            .export(&facts(&p, &a, Some(&tor)), 64612, true)
            .is_some());
    }

    #[test]
    fn community_syntax() {
        assert_eq!(parse_community("65535:0").unwrap(), 0xffff_0000);
        assert!(parse_community("65536:0").is_err());
        assert!(parse_community("1").is_err());
        assert!(parse_large_community("1:2").is_err());
        assert!("prepend 11".parse::<AsPathMode>().is_err());
        assert!("strip".parse::<AsPathMode>().is_ok());
    }
}

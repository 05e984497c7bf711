//! The session's side of BMP export (RFC 7854): what it tells the
//! collectors as it happens (Peer Up and Down, each UPDATE before policy,
//! what changed after it) and what it answers when asked (its whole
//! state, its statistics). Encoded here, queued by the task
//! ([`super::Action::Bmp`]); nothing is built unless `[[bmp]]` is set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bgp::update::{encode_announce, encode_end_of_rib, encode_withdraw};
use bgp::{NextHop, PathAttributes, Prefix};

use super::{Action, PeerConfig, PeerCore};
use crate::northbound::bmp::wire::{self, stat, Policy, Stat};
use crate::northbound::bmp::{Ask, Kind, To};
use crate::routing::authorisation::RejectKind;

/// Whether BMP reports this session: a VM's, or any with `neighbors`.
pub(super) fn monitored(cfg: &PeerConfig, env: &super::Identity) -> bool {
    env.bmp
        .as_ref()
        .is_some_and(|s| cfg.group.is_some() || s.neighbors)
}

/// How UPDATEs are encoded for a collector: with the session's AS number
/// size (a 2-octet session's messages carry the per-peer header's A
/// flag, and stay within 4096 bytes as they arrived) and both families.
fn context(peer: &wire::Peer) -> bgp::Context {
    bgp::Context {
        four_octet_as: !peer.two_octet_as,
        ..bgp::Context::modern()
    }
}

impl PeerCore {
    /// Whether what happens now is told: a collector is connected (one
    /// that connects later gets a dump).
    pub(super) fn bmp_live(&self) -> bool {
        self.bmp_on
            .as_ref()
            .is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn bmp_out(&mut self, to: To, kind: Kind, bytes: Vec<u8>) {
        self.actions.push_back(Action::Bmp { to, kind, bytes });
    }

    /// The session is Established on connection `i`: Peer Up for every
    /// collector (`To::All`) or the one that asked, and from now on its
    /// routes.
    pub(super) fn bmp_up(&mut self, i: usize, to: To) {
        if self.bmp_on.is_none() || (to == To::All && !self.bmp_live()) {
            return;
        }
        let (Some(info), Some(sent), Some(got)) = (
            self.info.as_ref(),
            self.conns[i].session.sent_open(),
            self.conns[i].session.remote_open(),
        ) else {
            return;
        };
        let peer = wire::Peer {
            address: self.cfg.address,
            asn: info.asn,
            bgp_id: info.router_id,
            two_octet_as: !self.conns[i].session.context().four_octet_as,
            distinguisher: match self.cfg.address {
                std::net::IpAddr::V6(a) if a.is_unicast_link_local() => {
                    self.cfg.interface.as_ref().map(|i| u64::from(i.index))
                }
                _ => None,
            },
        };
        self.bmp_peer = Some(peer);
        let cxt = bgp::Context::default();
        let sent = bgp::Message::Open(sent).encode(&cxt);
        let got = bgp::Message::Open(got.clone()).encode(&cxt);
        let local = self.conns[i]
            .local
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let ends = wire::Ends {
            local,
            remote_port: self.conns[i].remote_port,
        };
        // The session's name says which VM (and tap) it is, for a
        // collector that only sees addresses.
        let mut text = self.cfg.name.clone();
        if let Some(i) = &self.cfg.interface {
            text = format!("{text} interface={}", i.name);
        }
        if let Some(vm) = &self.cfg.vm {
            text = format!("{text} vm={vm}");
        }
        let up = wire::peer_up(&peer, ends, &sent, &got, &text, SystemTime::now());
        self.bmp_out(to, Kind::Up(peer), up);
    }

    /// The session left Established.
    pub(super) fn bmp_down(&mut self, reason: &bgp::session::DownReason) {
        let Some(peer) = self.bmp_peer.take() else {
            return;
        };
        use bgp::session::DownReason as R;
        let cxt = bgp::Context::default();
        let why = match reason {
            R::NotificationSent(n) => {
                wire::Down::LocalNotification(bgp::Message::Notification(n.clone()).encode(&cxt))
            }
            R::NotificationReceived(n) => {
                wire::Down::RemoteNotification(bgp::Message::Notification(n.clone()).encode(&cxt))
            }
            R::ConnectionClosed if self.aborting => wire::Down::LocalNoNotification,
            R::ConnectionClosed => wire::Down::RemoteNoNotification,
        };
        if self.bmp_live() {
            let down = wire::peer_down(&peer, &why, SystemTime::now());
            self.bmp_out(To::All, Kind::Down, down);
        }
    }

    /// An UPDATE as the peer sent it (before it is judged): its bytes as
    /// received (`Event::RawUpdate`).
    pub(super) fn bmp_pre(&mut self) {
        let raw = self.bmp_raw.take();
        let (Some(peer), Some(raw), true) = (self.bmp_peer, raw, self.bmp_live()) else {
            return;
        };
        let m = wire::route_monitoring(&peer, Policy::Pre, &raw, SystemTime::now());
        self.bmp_out(To::All, Kind::Route, m);
    }

    /// The End-of-RIB the peer sent closes the post-policy view too.
    pub(super) fn bmp_end_of_rib(&mut self, f: bgp::AfiSafi) {
        let (Some(peer), true) = (self.bmp_peer, self.bmp_live()) else {
            return;
        };
        let m = wire::route_monitoring(
            &peer,
            Policy::Post,
            &encode_end_of_rib(f),
            SystemTime::now(),
        );
        self.bmp_out(To::All, Kind::Route, m);
    }

    /// Routes gone from the pre-policy view without an UPDATE (stale
    /// routes given up after a restart).
    pub(super) fn bmp_pre_withdraw(&mut self, withdraw: &[Prefix]) {
        let (Some(peer), true) = (self.bmp_peer, self.bmp_live()) else {
            return;
        };
        self.bmp_routes(To::All, peer, Policy::Pre, &[], withdraw);
    }

    /// What changed among the accepted routes.
    pub(super) fn bmp_post(
        &mut self,
        announce: &[(Prefix, NextHop, Arc<PathAttributes>)],
        withdraw: &[Prefix],
    ) {
        let (Some(peer), true) = (self.bmp_peer, self.bmp_live()) else {
            return;
        };
        let routes: Vec<_> = announce
            .iter()
            .map(|(p, nh, a)| (*p, *nh, a.clone()))
            .collect();
        self.bmp_routes(To::All, peer, Policy::Post, &routes, withdraw);
    }

    /// Route Monitoring messages for `announce` (packed by next hop and
    /// attribute set) and `withdraw`.
    fn bmp_routes(
        &mut self,
        to: To,
        peer: wire::Peer,
        policy: Policy,
        announce: &[(Prefix, NextHop, Arc<PathAttributes>)],
        withdraw: &[Prefix],
    ) {
        let cxt = context(&peer);
        let now = SystemTime::now();
        let mut updates = Vec::new();
        // Group by (family, next hop, attribute set): one UPDATE carries
        // many prefixes that share them.
        let mut groups: HashMap<(bool, NextHop, usize), Vec<Prefix>> = HashMap::new();
        let mut order = Vec::new();
        let mut attrs: HashMap<usize, &Arc<PathAttributes>> = HashMap::new();
        for (p, nh, a) in announce {
            let key = (p.afi() == bgp::Afi::Ipv4, *nh, Arc::as_ptr(a) as usize);
            attrs.entry(key.2).or_insert(a);
            groups
                .entry(key)
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(*p);
        }
        for key in order {
            updates.extend(encode_announce(attrs[&key.2], key.1, &groups[&key], &cxt));
        }
        for v4 in [true, false] {
            let w: Vec<Prefix> = withdraw
                .iter()
                .filter(|p| (p.afi() == bgp::Afi::Ipv4) == v4)
                .copied()
                .collect();
            updates.extend(encode_withdraw(&w, &cxt));
        }
        for u in updates {
            let m = wire::route_monitoring(&peer, policy, &u, now);
            self.bmp_out(to, Kind::Route, m);
        }
    }

    /// The exporter's questions.
    pub(super) fn bmp_ask(&mut self, ask: Ask) {
        if self.bmp_on.is_none() {
            return;
        }
        match ask {
            Ask::Dump(i) => self.bmp_dump(To::One(i)),
            Ask::Stats(i) => self.bmp_stats(To::One(i)),
        }
    }

    /// A collector just connected: Peer Up, then both views of the
    /// table, each family closed by End-of-RIB.
    fn bmp_dump(&mut self, to: To) {
        let Some(i) = self.established() else { return };
        self.bmp_up(i, to);
        let Some(peer) = self.bmp_peer else { return };
        let families = self.conns[i].session.context().families;
        let all: Vec<_> = self
            .adj_rib_in
            .iter()
            .map(|(p, r)| (p, r.next_hop(), r.attrs().clone(), r.rejected))
            .collect();
        for policy in [Policy::Pre, Policy::Post] {
            let routes: Vec<_> = all
                .iter()
                .filter(|r| policy == Policy::Pre || !r.3)
                .map(|(p, nh, a, _)| (*p, *nh, a.clone()))
                .collect();
            self.bmp_routes(to, peer, policy, &routes, &[]);
            for f in &families {
                let eor = encode_end_of_rib(*f);
                let m = wire::route_monitoring(&peer, policy, &eor, SystemTime::now());
                self.bmp_out(to, Kind::Route, m);
            }
        }
    }

    fn bmp_stats(&mut self, to: To) {
        let Some(peer) = self.bmp_peer else { return };
        // Every refusal counts in REJECTED, and in its group.
        let mut stats = vec![
            Stat {
                kind: stat::REJECTED,
                value: 0,
            },
            Stat {
                kind: stat::ADJ_RIB_IN,
                value: self.adj_rib_in.len() as u64,
            },
            Stat {
                kind: stat::LOC_RIB,
                value: self.adj_rib_in.accepted() as u64,
            },
        ];
        for kind in [
            stat::NOT_AUTHORISED,
            stat::NEXT_HOP,
            stat::MAX_PREFIXES,
            stat::AS_PATH,
        ] {
            stats.push(Stat { kind, value: 0 });
        }
        for (k, n) in self.adj_rib_in.rejections() {
            let group = match k {
                RejectKind::NotInInventory
                | RejectKind::OwnedByOtherVm
                | RejectKind::GroupFilter
                | RejectKind::NoFilter => stat::NOT_AUTHORISED,
                RejectKind::NextHop | RejectKind::CoversNeighbor => stat::NEXT_HOP,
                RejectKind::MaxPrefixes => stat::MAX_PREFIXES,
                RejectKind::AsPathLoop
                | RejectKind::AsPathLength
                | RejectKind::AsPathZero
                | RejectKind::AsPathConfed
                | RejectKind::AsPathEmpty
                | RejectKind::FirstAs => stat::AS_PATH,
            };
            for s in &mut stats {
                if s.kind == group || s.kind == stat::REJECTED {
                    s.value += n;
                }
            }
        }
        let m = wire::statistics(&peer, &stats, SystemTime::now());
        self.bmp_out(to, Kind::Stats, m);
    }
}

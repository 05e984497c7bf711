//! RIB hot paths (issue 9): a neighbor's Adj-RIB-In taking a table, and
//! the Loc-RIB taking it and exporting it to one upstream neighbor; then
//! both losing it again (the neighbor withdraws every prefix).
//! `cargo bench -p tapir`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bgp::{AsPath, AsSegment, NextHop, Origin, PathAttributes, Prefix, Update};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tapir::routing::adj_rib_in::{AdjRibIn, Judge};
use tapir::routing::peer_info::{PeerId, PeerInfo};
use tapir::routing::policy::Policy;
use tapir::routing::rib::{DrainConfig, RibMsg, ToPeer};
use tapir::routing::rib_thread;
use tokio::sync::{mpsc, oneshot};

const N: u32 = 100_000;

/// N /24s in UPDATEs of 16 prefixes, each with its own attribute set.
fn updates() -> Vec<Update> {
    (0..N / 16)
        .map(|u| Update {
            attributes: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath {
                    segments: vec![AsSegment::Sequence(vec![65001, 64000 + u % 1000, u])],
                }),
                next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
                communities: vec![65001 << 16 | (u % 7)],
                ..Default::default()
            },
            nlri: (0..16)
                .map(|i| {
                    let n = (u * 16 + i) << 8;
                    Prefix::new(Ipv4Addr::from((10 << 24) | n).into(), 24).unwrap()
                })
                .collect(),
            ..Default::default()
        })
        .collect()
}

/// The same prefixes withdrawn, a thousand to an UPDATE.
fn withdrawals() -> Vec<Update> {
    let all: Vec<Prefix> = updates().into_iter().flat_map(|u| u.nlri).collect();
    all.chunks(1000)
        .map(|c| Update {
            withdrawn: c.to_vec(),
            ..Default::default()
        })
        .collect()
}

fn adj_rib_in(c: &mut Criterion) {
    let ups = updates();
    let judge = Judge {
        max_as_path_length: 64,
        policy: None,
        path: tapir::routing::adj_rib_in::PathRules::plain(64612, 65001, true),
    };
    let mut g = c.benchmark_group("adj-rib-in");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("apply 100k prefixes", |b| {
        // The session hands its decoded UPDATEs over: made outside the
        // timing.
        b.iter_batched(
            || (AdjRibIn::default(), ups.clone()),
            |(mut adj, ups)| {
                for u in ups {
                    adj.apply(u, true, &judge);
                }
                assert_eq!(adj.accepted(), N as usize);
                adj
            },
            BatchSize::LargeInput,
        )
    });
    let gone = withdrawals();
    g.bench_function("withdraw 100k prefixes", |b| {
        b.iter_batched(
            || {
                let mut adj = AdjRibIn::default();
                for u in ups.clone() {
                    adj.apply(u, true, &judge);
                }
                (adj, gone.clone())
            },
            |(mut adj, gone)| {
                let mut n = 0;
                for u in gone {
                    n += adj.apply(u, true, &judge).withdraw.len();
                }
                assert_eq!((n, adj.len()), (N as usize, 0));
                adj
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// A RIB with one upstream neighbor that takes everything, and what it
/// is sent.
fn subscribed() -> (mpsc::UnboundedSender<RibMsg>, mpsc::Receiver<ToPeer>) {
    let rib = rib_thread::spawn(
        64612,
        Vec::new(),
        None,
        false,
        None,
        DrainConfig {
            local_pref: 0,
            prepend: 0,
            withdraw_after: None,
        },
        Default::default(),
    )
    .expect("RIB thread");
    let (tx, rx) = mpsc::channel(1 << 20);
    let mut accept_all = Policy::hypervisor_default();
    accept_all.default_accept = true;
    rib.send(RibMsg::Subscribe {
        peer: PeerId(2),
        asn: Some(65002),
        ebgp: true,
        policy: Arc::new(accept_all),
        tx,
        exported: Default::default(),
        families: vec![bgp::Afi::Ipv4, bgp::Afi::Ipv6],
    })
    .unwrap();
    (rib, rx)
}

/// Waits until the RIB has handled what was sent before (a barrier that
/// costs little: `Show` would format every prefix), then counts what the
/// neighbor was sent: exported and withdrawn prefixes.
async fn settle(
    rib: &mpsc::UnboundedSender<RibMsg>,
    rx: &mut mpsc::Receiver<ToPeer>,
) -> (usize, usize, usize) {
    let (done, wait) = oneshot::channel();
    rib.send(RibMsg::Stats(done)).unwrap();
    let prefixes = wait.await.unwrap().prefixes;
    let (mut sent, mut withdrawn) = (0, 0);
    while let Ok(m) = rx.try_recv() {
        if let ToPeer::Export(v) = m {
            for (_, a) in v {
                match a {
                    Some(_) => sent += 1,
                    None => withdrawn += 1,
                }
            }
        }
    }
    (prefixes, sent, withdrawn)
}

fn loc_rib(c: &mut Criterion) {
    let ups = updates();
    let batches: Vec<Vec<(Prefix, NextHop, Arc<PathAttributes>)>> = ups
        .iter()
        .map(|u| {
            let a = Arc::new(u.attributes.clone());
            u.announced()
                .into_iter()
                .map(|(p, nh)| (p, nh, a.clone()))
                .collect()
        })
        .collect();
    let peer = Arc::new(PeerInfo {
        id: PeerId(1),
        name: "injector".into(),
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        asn: 65001,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        ebgp: true,
        vm: None,
        group: None,
        interface: None,
        kernel: false,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("loc-rib");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    let announce = |rib: &mpsc::UnboundedSender<RibMsg>| {
        for announce in &batches {
            rib.send(RibMsg::Update {
                peer: peer.clone(),
                announce: announce.clone(),
                withdraw: Vec::new(),
            })
            .unwrap();
        }
    };
    g.bench_function("100k prefixes in, exported to one neighbor", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (rib, mut rx) = subscribed();
                announce(&rib);
                assert_eq!(settle(&rib, &mut rx).await, (N as usize, N as usize, 0));
            })
        })
    });
    let gone: Vec<Vec<Prefix>> = withdrawals().into_iter().map(|u| u.withdrawn).collect();
    g.bench_function(
        "100k prefixes withdrawn, withdrawn from one neighbor",
        |b| {
            b.iter_batched(
                || {
                    rt.block_on(async {
                        let (rib, mut rx) = subscribed();
                        announce(&rib);
                        settle(&rib, &mut rx).await;
                        (rib, rx, gone.clone())
                    })
                },
                |(rib, mut rx, gone)| {
                    rt.block_on(async {
                        for withdraw in gone {
                            rib.send(RibMsg::Update {
                                peer: peer.clone(),
                                announce: Vec::new(),
                                withdraw,
                            })
                            .unwrap();
                        }
                        assert_eq!(settle(&rib, &mut rx).await, (0, 0, N as usize));
                    });
                    (rib, rx)
                },
                BatchSize::PerIteration,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, adj_rib_in, loc_rib);
criterion_main!(benches);

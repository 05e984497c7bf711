//! Codec hot paths (issue 9): decoding and encoding full UPDATEs, as a
//! session does for a table transfer. `cargo bench -p bgp`.

use std::net::Ipv4Addr;

use bgp::update::encode_announce;
use bgp::{AfiSafi, AsPath, AsSegment, Context, Message, NextHop, Origin, PathAttributes, Prefix};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn context() -> Context {
    Context {
        four_octet_as: true,
        families: vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
        ipv4_over_ipv6_next_hop: false,
        max_message_len: 4096,
        external: true,
    }
}

fn attrs() -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath {
            segments: vec![AsSegment::Sequence(vec![65001, 64999, 64512])],
        }),
        communities: vec![65001 << 16 | 100],
        med: Some(10),
        ..Default::default()
    }
}

/// 10,000 distinct /24s.
fn prefixes() -> Vec<Prefix> {
    (0..10_000u32)
        .map(|i| Prefix::new(Ipv4Addr::from((10 << 24) | (i << 8)).into(), 24).unwrap())
        .collect()
}

fn codec(c: &mut Criterion) {
    let cxt = context();
    let ps = prefixes();
    let nh = NextHop::V4(Ipv4Addr::new(192, 0, 2, 1));
    let a = attrs();
    let mut g = c.benchmark_group("update");
    g.throughput(Throughput::Elements(ps.len() as u64));
    g.bench_function("encode 10k prefixes", |b| {
        b.iter(|| encode_announce(black_box(&a), nh, black_box(&ps), &cxt))
    });
    let messages = encode_announce(&a, nh, &ps, &cxt);
    g.bench_function("decode 10k prefixes", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &messages {
                if let Ok(Some((Message::Update(u), _))) = Message::decode(black_box(m), &cxt) {
                    n += u.nlri.len();
                }
            }
            assert_eq!(n, 10_000);
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);

//! Connection table with 1M flows: lookup by key, update by handle, and
//! both (what the datapath does per packet), over keys in a shuffled
//! order so that most accesses miss the CPU caches.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tapnet_nat::conntrack::*;
use tapnet_switch::NetworkId;

const FLOWS: u32 = 1 << 20;

fn key(i: u32) -> FlowKey {
    // 256 containers × 4096 ports, to 16 remotes.
    let c = i >> 12;
    FlowKey {
        protocol: Protocol::Udp,
        network: NetworkId((c % 4) as u16),
        container_ip: IpAddr::V4(Ipv4Addr::new(10, 0, (c >> 8) as u8, c as u8)),
        container_port: 20_000 + (i & 0xfff) as u16,
        remote_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, (i % 16) as u8)),
        remote_port: 53,
    }
}

/// A permutation of 0..n (xorshift-driven Fisher–Yates, fixed seed).
fn shuffled(n: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut t = ConnTrack::new(Config {
        capacity: FLOWS + 1,
        max_per_container: FLOWS,
        hash_seed: 0x5eed,
        ..Config::default()
    });
    let handles: Vec<FlowHandle> = (0..FLOWS)
        .map(|i| t.create(key(i), Direction::Outbound, 0).unwrap())
        .collect();
    let order = shuffled(FLOWS);
    let keys: Vec<FlowKey> = order.iter().map(|&i| key(i)).collect();
    let hs: Vec<FlowHandle> = order.iter().map(|&i| handles[i as usize]).collect();

    let mut g = c.benchmark_group("conntrack_1M");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let mut i = 0usize;
    g.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) & (FLOWS as usize - 1);
            black_box(t.lookup(&keys[i]))
        })
    });
    let mut now = 1u64;
    g.bench_function("update_by_handle", |b| {
        b.iter(|| {
            i = (i + 1) & (FLOWS as usize - 1);
            now += 1;
            black_box(t.handle_udp(hs[i], now, Side::Remote, 100))
        })
    });
    g.bench_function("lookup_and_update", |b| {
        b.iter(|| {
            i = (i + 1) & (FLOWS as usize - 1);
            now += 1;
            let h = t.lookup(&keys[i]).unwrap();
            black_box(t.handle_udp(h, now, Side::Container, 100))
        })
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| {
            i = (i + 1) & (FLOWS as usize - 1);
            let mut k = keys[i];
            k.remote_port = 54;
            black_box(t.lookup(&k))
        })
    });
    // Flow churn on the full table: create (index insert, heap push at
    // the bottom of a 1M heap) and remove (index backward shift, heap
    // removal).
    let mut j = FLOWS;
    g.bench_function("create_remove", |b| {
        b.iter(|| {
            j = j.wrapping_add(1) | FLOWS;
            now += 1;
            let h = t.create(key(j), Direction::Outbound, now).unwrap();
            black_box(t.remove(h).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

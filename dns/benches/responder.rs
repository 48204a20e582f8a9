//! Answers per second in memory for an A query against a registry of 1000
//! containers: the responder alone (query bytes → answer bytes), the whole
//! switch path (frame in → DnsHook → reply frame out), and, for the
//! record, hickory-proto parsing the query and encoding the same answer
//! (why the responder has its own parser/encoder).
//!
//! `cargo bench -p tapnet-dns --bench responder`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::{rdata::A, RData, Record};
use std::net::Ipv4Addr;
use tapnet_dns::{
    DnsHook, EndpointSpec, FastRng, NetworkSpec, Outcome, Registry, Responder, Transport,
};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::CountTx;
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::{gateway_mac, NetworkConfig, PortConfig, Switch, SwitchConfig, Worker};

fn ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i)
}

/// `dig +noedns c500 A`-style query: "c500.front", with EDNS off.
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn bench(c: &mut Criterion) {
    let sw = Switch::new(SwitchConfig::default());
    let gw = ip(1);
    let net = sw
        .add_network(NetworkConfig::new("front", ip(0), 16, gw))
        .unwrap();
    let reg = Registry::new();
    reg.set_network(NetworkSpec::new(net, "front")).unwrap();
    reg.update(|d| {
        for i in 0..1000u32 {
            let mut e = EndpointSpec::new(net, &format!("{i:064x}"), &format!("c{i}"), ip(10 + i));
            e.aliases.push(format!("alias{i}"));
            e.hostname = Some(format!("host{i}"));
            d.endpoints.push(e);
        }
        Ok(())
    })
    .unwrap();
    let querier = ip(10);
    let q = query("C500.front");

    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));

    let responder = Responder::default();
    let mut rng = FastRng::new(1);
    let mut out = [0u8; 4096];
    g.bench_function("responder_a_1000_containers", |b| {
        let snap = reg.load();
        b.iter(|| {
            let o = responder.respond(
                &snap,
                net,
                querier,
                black_box(&q),
                Transport::Udp,
                &mut rng,
                &mut out,
            );
            debug_assert!(matches!(o, Outcome::Answer { .. }));
            black_box(o)
        })
    });

    let port = sw
        .add_port(PortConfig::endpoint("c0", net, mac(1), querier))
        .unwrap();
    let hook = DnsHook::new(reg.clone(), responder, FastRng::new(2), None);
    let mut worker = Worker::with_hook(sw.clone(), 0, hook);
    let frame = build::udp(gateway_mac(gw), mac(1), (querier, 40000), (gw, 53), &q);
    let meta = VnetHdr::default();
    g.bench_function("switch_hook_a_1000_containers", |b| {
        let mut tx = CountTx::default();
        let before = worker.hook_mut().stats().answers;
        b.iter(|| {
            let cx = worker.begin(0);
            worker.process(&cx, port, &meta, black_box(&frame), &mut tx);
        });
        assert_eq!(worker.hook_mut().stats().answers - before, tx.frames);
    });

    g.bench_function("hickory_parse_encode_only", |b| {
        b.iter(|| {
            let m = Message::from_vec(black_box(&q)).unwrap();
            let mut r = Message::response(m.metadata.id, OpCode::Query);
            let name = m.queries[0].name.clone();
            r.add_queries(m.queries.iter().cloned());
            r.add_answer(Record::from_rdata(
                name,
                600,
                RData::A(A::new(10, 1, 1, 254)),
            ));
            black_box(r.to_vec().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The local-answer path allocates nothing: the responder alone and the
//! whole switch path (frame in, DnsHook, reply frame out), measured with
//! a counting global allocator, on this thread only.

use std::net::Ipv4Addr;
use tapnet_dns::{
    DnsHook, EndpointSpec, FastRng, NetworkSpec, Outcome, Registry, Responder, Transport,
};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::CountTx;
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::{gateway_mac, NetworkConfig, PortConfig, Switch, SwitchConfig, Worker};

/// Allocations made by `f` on this thread (allocation-counter installs
/// the counting global allocator, so this crate stays free of unsafe).
fn counted(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[test]
fn local_answers_do_not_allocate() {
    // The counter works: a Vec allocates.
    assert_eq!(counted(|| drop(std::hint::black_box(vec![0u8; 64]))), 1);
    let gw = Ipv4Addr::new(10, 5, 0, 1);
    let me = Ipv4Addr::new(10, 5, 0, 2);
    let sw = Switch::new(SwitchConfig::default());
    let net = sw
        .add_network(NetworkConfig::new("n", Ipv4Addr::new(10, 5, 0, 0), 24, gw))
        .unwrap();
    let port = sw
        .add_port(PortConfig::endpoint("me", net, mac(1), me))
        .unwrap();
    let reg = Registry::new();
    reg.set_network(NetworkSpec::new(net, "n")).unwrap();
    reg.add_endpoint(EndpointSpec::new(net, "c0", "me", me))
        .unwrap();
    for i in 0..8u8 {
        let mut e = EndpointSpec::new(
            net,
            &format!("c{}", i + 1),
            &format!("s{i}"),
            Ipv4Addr::new(10, 5, 0, 10 + i),
        );
        e.aliases.push("svc".into());
        reg.add_endpoint(e).unwrap();
    }
    let q = [
        0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'S', b'v', b'C', 0, 0, 1, 0, 1,
    ];
    let responder = Responder::default();
    let mut rng = FastRng::new(1);
    let mut out = [0u8; 1024];
    let snap = reg.load();
    let mut o = Outcome::Drop;
    let n = counted(|| {
        for _ in 0..100 {
            o = responder.respond(&snap, net, me, &q, Transport::Udp, &mut rng, &mut out);
        }
    });
    assert!(matches!(o, Outcome::Answer { .. }));
    assert_eq!(n, 0, "responder allocations");
    drop(snap);

    let mut worker = Worker::with_hook(sw.clone(), 0, DnsHook::new(reg, responder, rng, None));
    let frame = build::udp(gateway_mac(gw), mac(1), (me, 4000), (gw, 53), &q);
    let mut tx = CountTx::default();
    // Warm up (first learning of the MAC may touch the FDB).
    let cx = worker.begin(0);
    worker.process(&cx, port, &VnetHdr::default(), &frame, &mut tx);
    drop(cx);
    let n = counted(|| {
        for _ in 0..100 {
            let cx = worker.begin(0);
            worker.process(&cx, port, &VnetHdr::default(), &frame, &mut tx);
        }
    });
    assert_eq!(tx.frames, 101);
    assert_eq!(n, 0, "switch path allocations");
}

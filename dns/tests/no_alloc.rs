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

#[test]
fn local_answers_over_ipv6_do_not_allocate() {
    use std::net::Ipv6Addr;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use tapnet_switch::counters::PortCounters;
    use tapnet_switch::wire::{checksum_finish, checksum_sum};
    use tapnet_switch::{
        GatewayHook, HookCx, HookVerdict, Ipv6Config, Network, NetworkId, Port, PortId,
    };
    let gw = Ipv4Addr::new(10, 6, 0, 1);
    let gw6 = Ipv6Addr::new(0x2001, 0xdb8, 6, 0, 0, 0, 0, 1);
    let me6 = Ipv6Addr::new(0x2001, 0xdb8, 6, 0, 0, 0, 0, 2);
    let id = NetworkId(0);
    let reg = Registry::new();
    reg.set_network(NetworkSpec::new(id, "n")).unwrap();
    reg.add_endpoint(EndpointSpec::new(id, "c0", "me", Ipv4Addr::new(10, 6, 0, 2)).with_ipv6(me6))
        .unwrap();
    for i in 0..8u8 {
        let mut e = EndpointSpec::new(
            id,
            &format!("c{}", i + 1),
            &format!("s{i}"),
            Ipv4Addr::new(10, 6, 0, 10 + i),
        )
        .with_ipv6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            6,
            0,
            0,
            0,
            0,
            10 + u16::from(i),
        ));
        e.aliases.push("svc".into());
        reg.add_endpoint(e).unwrap();
    }
    let mut config = NetworkConfig::new("n", Ipv4Addr::new(10, 6, 0, 0), 24, gw);
    config.v6 = Some(Ipv6Config {
        subnet: Ipv6Addr::new(0x2001, 0xdb8, 6, 0, 0, 0, 0, 0),
        prefix_len: 64,
        gateway: gw6,
    });
    let net = Network {
        id,
        config,
        gateway_mac: gateway_mac(gw),
        ports: Vec::new(),
        max_frame: 1514,
        tx_sa: None,
        segment: None,
    };
    let port = Port {
        id: PortId(0),
        config: PortConfig::endpoint("me", id, mac(1), Ipv4Addr::new(10, 6, 0, 2)),
        counters: PortCounters::new(1),
        learned: Arc::new(AtomicU32::new(0)),
        max_macs: 1,
        uplink: None,
    };
    // `svc AAAA` from me6:4000 to gw6:53, UDP checksum filled.
    let q = [
        0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b's', b'v', b'c', 0, 0, 28, 0, 1,
    ];
    let mut u = 4000u16.to_be_bytes().to_vec();
    u.extend_from_slice(&[0, 53, 0, 8 + q.len() as u8, 0, 0]);
    u.extend_from_slice(&q);
    let mut acc = checksum_sum(0, &me6.octets());
    acc = checksum_sum(acc, &gw6.octets());
    acc += u.len() as u32 + 17;
    let c = checksum_finish(checksum_sum(acc, &u));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    let mut frame = gateway_mac(gw).0.to_vec();
    frame.extend_from_slice(&mac(1).0);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, u.len() as u8, 17, 64]);
    frame.extend_from_slice(&me6.octets());
    frame.extend_from_slice(&gw6.octets());
    frame.extend_from_slice(&u);
    let mut hook = DnsHook::new(reg, Responder::default(), FastRng::new(1), None);
    let mut scratch = vec![0u8; 2048];
    let cx = HookCx {
        network: &net,
        port: &port,
        now_ns: 0,
    };
    let mut v = HookVerdict::Pass;
    let n = counted(|| {
        for _ in 0..100 {
            v = hook.handle(&cx, &VnetHdr::default(), &frame, &mut scratch);
        }
    });
    assert_eq!(v, HookVerdict::Reply(62 + q.len() + 8 * 28));
    assert_eq!(hook.stats().answers, 100);
    assert_eq!(n, 0, "IPv6 hook path allocations");
}

//! Untrusted DNS bytes: the responder never panics, and every answer is a
//! response to the query asked (same id, QR set, within the buffer and
//! the UDP limit); the same bytes framed and sent through the switch with
//! the DnsHook never panic either, and a reply frame goes back to the
//! querier's port only. Over IPv6 (the switch hands IPv6 frames to the
//! gateway MAC to the hook): the bytes as a UDP query to the network's
//! IPv6 gateway address, and as a whole IPv6 packet after an Ethernet
//! header, given to the hook; a reply is an IPv6 frame to the querier,
//! within the scratch buffer and the MTU, and a forwarded query is the one
//! asked from the querier's IPv6 address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock};
use tapnet_dns::wire::Query;
use tapnet_dns::{
    forward_queue, DnsHook, EndpointSpec, FastRng, ForwardRx, NetworkSpec, Outcome, Registry,
    Responder, Transport,
};
use tapnet_switch::build::{self, mac};
use tapnet_switch::counters::PortCounters;
use tapnet_switch::mem::MemSwitch;
use tapnet_switch::wire::{checksum_finish, checksum_sum, VnetHdr};
use tapnet_switch::{
    gateway_mac, GatewayHook, HookCx, HookVerdict, Ipv6Config, Network, NetworkConfig, NetworkId,
    Port, PortConfig, PortId, SwitchConfig,
};

const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

fn registry(net: NetworkId) -> Arc<Registry> {
    let r = Registry::new();
    r.set_network(NetworkSpec::new(net, "net")).unwrap();
    for i in 0..40u8 {
        let mut e = EndpointSpec::new(
            net,
            &format!("{i:064x}"),
            &format!("c{i}"),
            Ipv4Addr::new(10, 0, 0, 2 + i),
        )
        .with_ipv6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            2 + u16::from(i),
        ));
        e.aliases.push("all".into());
        r.add_endpoint(e).unwrap();
    }
    r
}

fn snapshot() -> &'static Arc<Registry> {
    static R: OnceLock<Arc<Registry>> = OnceLock::new();
    R.get_or_init(|| registry(NetworkId(0)))
}

fuzz_target!(|data: &[u8]| {
    let (seed, q) = match data.split_first() {
        Some((s, q)) => (u64::from(*s), q),
        None => (0, data),
    };
    let reg = snapshot();
    let mut out = vec![0u8; 4096];
    for t in [Transport::Udp, Transport::Tcp] {
        let o = Responder::default().respond(
            &reg.load(),
            NetworkId(0),
            ME,
            q,
            t,
            &mut FastRng::new(seed),
            &mut out,
        );
        match o {
            Outcome::Answer { len, .. } => {
                assert!((12..=out.len()).contains(&len));
                assert_eq!(&out[..2], &q[..2]);
                assert_ne!(out[2] & 0x80, 0);
                if t == Transport::Udp {
                    let limit = Query::parse(q)
                        .ok()
                        .and_then(|p| p.edns)
                        .map_or(512, |e| usize::from(e.udp_size).clamp(512, 4096));
                    assert!(len <= limit);
                }
            }
            Outcome::Forward => assert!(Query::parse(q).is_ok()),
            Outcome::Drop | Outcome::NotServed => {}
        }
    }

    // Through the switch, as a UDP datagram to the gateway's port 53.
    SWITCH.with(|cell| {
        let (m, port, rx) = &mut *cell.borrow_mut();
        let f = build::udp(gateway_mac(GW), mac(1), (ME, 5353), (GW, 53), q);
        for s in m.inject(0, *port, VnetHdr::default(), &f) {
            assert_eq!(s.port, *port);
        }
        while let Ok(r) = rx.try_recv() {
            assert_eq!(&r.query[..], q);
        }
    });

    // Over IPv6, to the hook as the switch hands it frames for the gateway.
    HOOK6.with(|cell| {
        let h = &mut *cell.borrow_mut();
        let udp = frame6(ME6, GW6, 17, &udp6(q));
        let mut raw = frame6(ME6, GW6, 17, &[])[..14].to_vec();
        raw.extend_from_slice(q);
        for f in [udp, raw] {
            let net = h.net.clone();
            let cx = HookCx {
                network: &net,
                port: &h.port,
                now_ns: 0,
            };
            match h.hook.handle(&cx, &VnetHdr::default(), &f, &mut h.scratch) {
                HookVerdict::Reply(n) | HookVerdict::ReplyWith(n, _) => {
                    assert!(n <= h.scratch.len());
                    let r = &h.scratch[..n];
                    assert_eq!(&r[0..6], &mac(1).0);
                    assert_eq!(&r[6..12], &net.gateway_mac.0);
                    assert_eq!(&r[12..14], &[0x86, 0xdd]);
                    assert_eq!(&r[22..38], &GW6.octets());
                    assert_eq!(&r[38..54], &f[22..38]);
                }
                _ => {}
            }
            while let Ok(r) = h.rx.try_recv() {
                assert_eq!(r.querier_ip, IpAddr::V6(ME6));
                assert_eq!(r.gateway_ip, IpAddr::V6(GW6));
                let mut out = vec![0u8; r.query.len() + 80];
                // Echoing the query as the "answer" never panics either.
                let _ = r.reply_frame(&r.query, &mut out);
            }
        }
    });
});

/// Ethernet (to the gateway MAC) + IPv6 + `l4`.
fn frame6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = gateway_mac(GW).0.to_vec();
    f.extend_from_slice(&mac(1).0);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(l4);
    f
}

/// A UDP datagram ME6:5353 → GW6:53 with a valid checksum (payloads
/// beyond a datagram are cut).
fn udp6(q: &[u8]) -> Vec<u8> {
    let q = &q[..q.len().min(65000)];
    let len = 8 + q.len();
    let mut u = 5353u16.to_be_bytes().to_vec();
    u.extend_from_slice(&53u16.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(q);
    let mut acc = checksum_sum(0, &ME6.octets());
    acc = checksum_sum(acc, &GW6.octets());
    acc += (len as u32 >> 16) + (len as u32 & 0xffff) + 17;
    let c = match checksum_finish(checksum_sum(acc, &u)) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// The DNS hook alone, with a dual-stack network (MTU 1280) and a port.
struct Hook6 {
    hook: DnsHook,
    net: Network,
    port: Port,
    rx: ForwardRx,
    scratch: Vec<u8>,
}

thread_local! {
    static HOOK6: RefCell<Hook6> = RefCell::new(hook6());
}

fn hook6() -> Hook6 {
    let (tx, rx) = forward_queue(4);
    let mut config = NetworkConfig::new("net", Ipv4Addr::new(10, 0, 0, 0), 24, GW);
    config.mtu = 1280;
    config.v6 = Some(Ipv6Config {
        subnet: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        prefix_len: 64,
        gateway: GW6,
    });
    let mut pc = PortConfig::endpoint("me", NetworkId(0), mac(1), ME);
    pc.ip6 = Some(ME6);
    Hook6 {
        hook: DnsHook::new(
            snapshot().clone(),
            Responder::default(),
            FastRng::new(2),
            Some(tx),
        ),
        net: Network {
            id: NetworkId(0),
            config,
            gateway_mac: gateway_mac(GW),
            ports: Vec::new(),
            max_frame: 1294,
            tx_sa: None,
        },
        port: Port {
            id: PortId(0),
            config: pc,
            counters: PortCounters::new(1),
            learned: Arc::new(AtomicU32::new(0)),
            max_macs: 1,
        },
        rx,
        scratch: vec![0u8; 65536 + 128],
    }
}

type Fabric = (MemSwitch<DnsHook>, PortId, ForwardRx);

thread_local! {
    static SWITCH: RefCell<Fabric> = RefCell::new(fabric());
}

fn fabric() -> Fabric {
    let (tx, rx) = forward_queue(4);
    let m = MemSwitch::with_hook(
        SwitchConfig {
            fdb_capacity: 64,
            ..SwitchConfig::default()
        },
        DnsHook::new(
            snapshot().clone(),
            Responder::default(),
            FastRng::new(1),
            Some(tx),
        ),
    );
    let net = m
        .switch
        .add_network(NetworkConfig::new(
            "net",
            Ipv4Addr::new(10, 0, 0, 0),
            24,
            GW,
        ))
        .unwrap();
    let port = m
        .switch
        .add_port(PortConfig::endpoint("me", net, mac(1), ME))
        .unwrap();
    (m, port, rx)
}

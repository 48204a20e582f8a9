//! Untrusted DNS bytes: the responder never panics, and every answer is a
//! response to the query asked (same id, QR set, within the buffer and
//! the UDP limit); the same bytes framed and sent through the switch with
//! the DnsHook never panic either, and a reply frame goes back to the
//! querier's port only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use tapnet_dns::wire::Query;
use tapnet_dns::{
    forward_queue, DnsHook, EndpointSpec, FastRng, ForwardRx, NetworkSpec, Outcome, Registry,
    Responder, Transport,
};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::MemSwitch;
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::{gateway_mac, NetworkConfig, NetworkId, PortConfig, PortId, SwitchConfig};

const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn registry(net: NetworkId) -> Arc<Registry> {
    let r = Registry::new();
    r.set_network(NetworkSpec::new(net, "net")).unwrap();
    for i in 0..40u8 {
        let mut e = EndpointSpec::new(
            net,
            &format!("{i:064x}"),
            &format!("c{i}"),
            Ipv4Addr::new(10, 0, 0, 2 + i),
        );
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
});

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

//! Property: whatever frames enter (well-formed or garbage, any virtio-net
//! metadata, any port, any timing), the pipeline never panics and no frame
//! leaves on a port of another network than the ingress port's. Also: a
//! frame sent back on its ingress port is a gateway reply, and every other
//! transmitted frame is the ingress frame, bytes and metadata untouched.
//!
//! The fuzz target `fuzz/fuzz_targets/pipeline.rs` checks the same on
//! fuzzer-chosen bytes; this runs on stable in CI.

use proptest::prelude::*;
use std::net::Ipv4Addr;
use tapnet_switch::build;
use tapnet_switch::mem::MemSwitch;
use tapnet_switch::wire::arp::ArpOp;
use tapnet_switch::wire::{EtherType, EthernetAddress, VnetHdr};
use tapnet_switch::{gateway_mac, NetworkConfig, NetworkId, PortConfig, PortId, SwitchConfig};

struct Fabric {
    sw: MemSwitch,
    /// `(port, its network)`, in creation order.
    ports: Vec<(PortId, NetworkId)>,
    gateways: Vec<EthernetAddress>,
}

/// Two networks, each with two checked endpoints and one unchecked port.
fn fabric(icc_front: bool, mtu_front: u32, aging_secs: u32, max_macs: u32) -> Fabric {
    let sw = MemSwitch::new(SwitchConfig {
        fdb_capacity: 1024,
        aging_secs,
        max_macs_per_port: max_macs,
        ..SwitchConfig::default()
    });
    let front = sw
        .switch
        .add_network(NetworkConfig {
            overlay: None,
            icc: icc_front,
            mtu: mtu_front,
            ..NetworkConfig::new(
                "front",
                Ipv4Addr::new(10, 1, 0, 0),
                24,
                Ipv4Addr::new(10, 1, 0, 1),
            )
        })
        .unwrap();
    let back = sw
        .switch
        .add_network(NetworkConfig::new(
            "back",
            Ipv4Addr::new(10, 2, 0, 0),
            24,
            Ipv4Addr::new(10, 2, 0, 1),
        ))
        .unwrap();
    let mut ports = Vec::new();
    for (i, net) in [front, front, front, back, back, back]
        .into_iter()
        .enumerate()
    {
        let name = format!("p{i}");
        let cfg = if i % 3 == 2 {
            PortConfig::unchecked(&name, net)
        } else {
            PortConfig::endpoint(&name, net, MACS[i], IPS[i])
        };
        ports.push((sw.switch.add_port(cfg).unwrap(), net));
    }
    Fabric {
        sw,
        ports,
        gateways: vec![gateway_mac(IPS[6]), gateway_mac(IPS[7])],
    }
}

/// Addresses frames are built from: the endpoints' (0, 1, 3, 4), hosts
/// behind the unchecked ports (2, 5), the gateways (6, 7), and others.
const MACS: [EthernetAddress; 12] = [
    EthernetAddress([2, 0, 0, 0, 0, 0x0a]),
    EthernetAddress([2, 0, 0, 0, 0, 0x0b]),
    EthernetAddress([2, 0, 0, 0, 0, 0x77]),
    EthernetAddress([2, 0, 0, 0, 0, 0x2a]),
    EthernetAddress([2, 0, 0, 0, 0, 0x2b]),
    EthernetAddress([2, 0, 0, 0, 0, 0x78]),
    EthernetAddress([2, 0x42, 10, 1, 0, 1]),
    EthernetAddress([2, 0x42, 10, 2, 0, 1]),
    EthernetAddress::BROADCAST,
    EthernetAddress([1, 0, 0x5e, 0, 0, 1]),
    EthernetAddress([0; 6]),
    EthernetAddress([2, 0, 0, 0, 0, 0x79]),
];

const IPS: [Ipv4Addr; 10] = [
    Ipv4Addr::new(10, 1, 0, 10),
    Ipv4Addr::new(10, 1, 0, 11),
    Ipv4Addr::new(10, 1, 0, 77),
    Ipv4Addr::new(10, 2, 0, 10),
    Ipv4Addr::new(10, 2, 0, 11),
    Ipv4Addr::new(10, 2, 0, 78),
    Ipv4Addr::new(10, 1, 0, 1),
    Ipv4Addr::new(10, 2, 0, 1),
    Ipv4Addr::BROADCAST,
    Ipv4Addr::UNSPECIFIED,
];

#[derive(Clone, Debug)]
enum Kind {
    Raw(Vec<u8>),
    Arp {
        reply: bool,
        sender_ip: usize,
        target_ip: usize,
    },
    Udp {
        src_ip: usize,
        dst_ip: usize,
        len: usize,
    },
    Ping {
        src_ip: usize,
        dst_ip: usize,
    },
    Other {
        ethertype: u16,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
struct Input {
    port: usize,
    /// Clock advance in milliseconds.
    dt_ms: u64,
    dst: usize,
    src: usize,
    kind: Kind,
    meta: VnetHdr,
    /// Cut the frame to this many bytes (if shorter).
    cut: Option<usize>,
    /// Send from the ingress port's own MAC and address (passes the
    /// anti-spoofing checks, so more frames get forwarded).
    own: bool,
}

fn vnet() -> impl Strategy<Value = VnetHdr> {
    prop_oneof![
        3 => Just(VnetHdr::default()),
        1 => (any::<u8>(), prop::sample::select(vec![0u8, 1, 3, 4, 5, 0x81, 0x7f]), any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>())
            .prop_map(|(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VnetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
                num_buffers: 0,
            }),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    let ip = 0..IPS.len();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80).prop_map(Kind::Raw),
        (any::<bool>(), ip.clone(), ip.clone()).prop_map(|(reply, sender_ip, target_ip)| {
            Kind::Arp {
                reply,
                sender_ip,
                target_ip,
            }
        }),
        (
            ip.clone(),
            ip.clone(),
            prop_oneof![0..64usize, 1400..1600usize, 8900..9100usize]
        )
            .prop_map(|(src_ip, dst_ip, len)| Kind::Udp {
                src_ip,
                dst_ip,
                len
            }),
        (ip.clone(), ip).prop_map(|(src_ip, dst_ip)| Kind::Ping { src_ip, dst_ip }),
        (
            prop::sample::select(vec![
                0x0800u16, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x88cc, 0x1234
            ]),
            prop::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(ethertype, payload)| Kind::Other { ethertype, payload }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    (
        0..6usize,
        prop_oneof![4 => 0..50u64, 1 => 0..40_000u64],
        0..MACS.len(),
        0..MACS.len(),
        kind(),
        vnet(),
        prop::option::weighted(0.1, 0..64usize),
        any::<bool>(),
    )
        .prop_map(|(port, dt_ms, dst, src, kind, meta, cut, own)| Input {
            port,
            dt_ms,
            dst,
            src,
            kind,
            meta,
            cut,
            own,
        })
}

fn frame(i: &Input) -> Vec<u8> {
    let (dst, src) = (MACS[i.dst], MACS[if i.own { i.port } else { i.src }]);
    let ip = |n: usize| IPS[if i.own { i.port } else { n }];
    let mut f = match &i.kind {
        Kind::Raw(b) => b.clone(),
        Kind::Arp {
            reply,
            sender_ip,
            target_ip,
        } => {
            let op = if *reply { ArpOp::Reply } else { ArpOp::Request };
            build::arp(op, dst, src, ip(*sender_ip), dst, IPS[*target_ip])
        }
        Kind::Udp {
            src_ip,
            dst_ip,
            len,
        } => build::udp(
            dst,
            src,
            (ip(*src_ip), 1000),
            (IPS[*dst_ip], 2000),
            &vec![0x55; *len],
        ),
        Kind::Ping { src_ip, dst_ip } => {
            build::icmp_echo(false, dst, src, ip(*src_ip), IPS[*dst_ip], 1, 1, b"ping")
        }
        Kind::Other { ethertype, payload } => {
            build::ethernet(dst, src, EtherType::from(*ethertype), payload)
        }
    };
    if let Some(n) = i.cut {
        f.truncate(n);
    }
    f
}

fn check(fab: &mut Fabric, now_ns: &mut u64, i: &Input) -> Result<(), TestCaseError> {
    *now_ns += i.dt_ms * 1_000_000;
    if i.dt_ms >= 1000 {
        // Housekeeping, as the daemon runs it now and then.
        fab.sw.switch.age((*now_ns / 1_000_000_000) as u32);
    }
    let f = frame(i);
    let (ingress, net) = fab.ports[i.port];
    let sent = fab.sw.inject(*now_ns, ingress, i.meta, &f);
    for s in &sent {
        let out_net = fab.ports.iter().find(|p| p.0 == s.port).unwrap().1;
        prop_assert_eq!(
            out_net,
            net,
            "frame from {:?} left on {:?} of another network",
            ingress,
            s.port
        );
        if s.port == ingress {
            prop_assert_eq!(&s.frame[6..12], &fab.gateways[usize::from(net.0)].0[..]);
        } else {
            prop_assert_eq!(&s.frame, &f);
            prop_assert_eq!(s.meta, i.meta);
        }
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer run.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn frames_never_cross_networks(
        icc in any::<bool>(),
        jumbo in any::<bool>(),
        aging_secs in 1..20u32,
        max_macs in 1..4u32,
        inputs in prop::collection::vec(input(), 1..60),
    ) {
        let mut fab = fabric(icc, if jumbo { 9000 } else { 1500 }, aging_secs, max_macs);
        let mut now_ns = 1_700_000_000 * 1_000_000_000;
        for i in &inputs {
            check(&mut fab, &mut now_ns, i)?;
        }
    }
}

//! Arbitrary frames and virtio-net headers through a [`MemSwitch`] with two
//! networks of checked and unchecked ports. Asserts that nothing panics,
//! that no frame leaves on a port of another network than its ingress
//! port's, that only gateway replies go back out of the ingress port, and
//! that forwarded frames are untouched (bytes and metadata).
//!
//! Input layout: one configuration byte, then records of
//! `ctrl, port, len_lo, len_hi, [12-byte vnet header if ctrl & 1],
//! [dst, src, ethertype selectors if ctrl & 2], body[len]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use tapnet_switch::mem::MemSwitch;
use tapnet_switch::wire::{EthernetAddress, VnetHdr};
use tapnet_switch::{gateway_mac, NetworkConfig, PortConfig, SwitchConfig};

/// Port MACs (0, 1, 3, 4 are endpoints), hosts behind unchecked ports,
/// gateways, broadcast, multicast, zero.
const MACS: [EthernetAddress; 11] = [
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
];

const IPS: [[u8; 4]; 6] = [
    [10, 1, 0, 10],
    [10, 1, 0, 11],
    [10, 1, 0, 77],
    [10, 2, 0, 10],
    [10, 2, 0, 11],
    [10, 2, 0, 78],
];

const ETHERTYPES: [u16; 8] = [
    0x0800, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x88cc, 0x1234, 0x0800,
];

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let mut sw = MemSwitch::new(SwitchConfig {
        fdb_capacity: 256,
        aging_secs: 1 + u32::from(cfg & 7),
        max_macs_per_port: 1 + u32::from((cfg >> 3) & 3),
        ..SwitchConfig::default()
    });
    let front = sw
        .switch
        .add_network(NetworkConfig {
            icc: cfg & 0x20 == 0,
            mtu: if cfg & 0x40 != 0 { 9000 } else { 1500 },
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
    let gateways = [
        gateway_mac(Ipv4Addr::new(10, 1, 0, 1)),
        gateway_mac(Ipv4Addr::new(10, 2, 0, 1)),
    ];
    let mut ports = Vec::new();
    for (i, net) in [front, front, front, back, back, back]
        .into_iter()
        .enumerate()
    {
        let name = format!("p{i}");
        let c = if i % 3 == 2 {
            PortConfig::unchecked(&name, net)
        } else {
            PortConfig::endpoint(&name, net, MACS[i], IPS[i].into())
        };
        ports.push((sw.switch.add_port(c).unwrap(), net));
    }

    let mut now: u64 = 1_700_000_000 * 1_000_000_000;
    let mut frame = Vec::with_capacity(65536);
    while rest.len() >= 4 {
        let (ctrl, sel) = (rest[0], rest[1]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        now += u64::from(ctrl >> 4) * 300_000_000;
        let mut meta = VnetHdr::default();
        if ctrl & 1 != 0 && rest.len() >= 12 {
            meta = VnetHdr::parse(&rest[..12]).unwrap();
            rest = &rest[12..];
        }
        frame.clear();
        if ctrl & 2 != 0 && rest.len() >= 3 {
            frame.extend_from_slice(&MACS[usize::from(rest[0]) % MACS.len()].0);
            frame.extend_from_slice(&MACS[usize::from(rest[1]) % MACS.len()].0);
            frame.extend_from_slice(
                &ETHERTYPES[usize::from(rest[2]) % ETHERTYPES.len()].to_be_bytes(),
            );
            rest = &rest[3..];
        }
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        frame.extend_from_slice(body);
        if ctrl & 4 != 0 && frame.len() >= 34 && frame[12..14] == [8, 0] {
            // Make the IPv4 source the ingress port's own address.
            let i = usize::from(sel) % ports.len();
            frame[26..30].copy_from_slice(&IPS[i]);
        }
        if ctrl & 8 != 0 {
            sw.switch.age((now / 1_000_000_000) as u32);
        }

        let (ingress, net) = ports[usize::from(sel) % ports.len()];
        for s in sw.inject(now, ingress, meta, &frame) {
            let out_net = ports.iter().find(|p| p.0 == s.port).expect("known port").1;
            assert_eq!(out_net, net, "left on another network");
            if s.port == ingress {
                assert_eq!(&s.frame[6..12], &gateways[usize::from(net.0)].0, "hairpin");
            } else {
                assert_eq!(s.frame, frame, "forwarded frame modified");
                assert_eq!(s.meta, meta, "forwarded metadata modified");
            }
        }
    }
});

//! The pipeline driven through in-memory ports with a virtual clock.

use std::net::Ipv4Addr;
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::MemSwitch;
use tapnet_switch::wire::{ethernet, vnet, EtherType, EthernetAddress, EthernetFrame, VnetHdr};
use tapnet_switch::*;

const S: u64 = 1_000_000_000;

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, d)
}

struct Fab {
    m: MemSwitch,
    net: NetworkId,
    a: PortId,
    b: PortId,
    c: PortId,
}

/// Network 10.1.0.0/24 with endpoints a (.10), b (.11), c (.12).
fn fabric(icc: bool) -> Fab {
    let m = MemSwitch::new(SwitchConfig::default());
    let mut cfg = NetworkConfig::new("front", Ipv4Addr::new(10, 1, 0, 0), 24, ip(1));
    cfg.icc = icc;
    let net = m.switch.add_network(cfg).unwrap();
    let p = |n: &str, i: u8| {
        m.switch
            .add_port(PortConfig::endpoint(n, net, mac(i as u32), ip(i)))
            .unwrap()
    };
    let (a, b, c) = (p("a", 10), p("b", 11), p("c", 12));
    Fab { m, net, a, b, c }
}

fn ports(sent: &[tapnet_switch::mem::Sent]) -> Vec<PortId> {
    sent.iter().map(|s| s.port).collect()
}

fn drops(f: &Fab, p: PortId, r: DropReason) -> u64 {
    f.m.switch.port_stats(p).unwrap().drop_count(r)
}

fn gw() -> EthernetAddress {
    gateway_mac(ip(1))
}

fn udp(from: u8, to: u8, dst_mac: EthernetAddress) -> Vec<u8> {
    build::udp(
        dst_mac,
        mac(from as u32),
        (ip(from), 1000),
        (ip(to), 2000),
        b"hi",
    )
}

#[test]
fn gateway_mac_is_derived_from_its_address() {
    assert_eq!(gw().to_string(), "02:42:0a:01:00:01");
}

#[test]
fn arp_for_gateway_is_answered_and_not_flooded() {
    let mut f = fabric(true);
    let out = f.m.inject(
        0,
        f.a,
        VnetHdr::default(),
        &build::arp_request(mac(10), ip(10), ip(1)),
    );
    assert_eq!(ports(&out), vec![f.a]);
    let want = build::arp(
        tapnet_switch::wire::arp::ArpOp::Reply,
        mac(10),
        gw(),
        ip(1),
        mac(10),
        ip(10),
    );
    assert_eq!(out[0].frame, want);
}

#[test]
fn ping_to_gateway_is_answered() {
    let mut f = fabric(true);
    let req = build::icmp_echo(false, gw(), mac(10), ip(10), ip(1), 7, 1, b"abcdefgh");
    let out = f.m.inject(0, f.a, VnetHdr::default(), &req);
    let want = build::icmp_echo(true, mac(10), gw(), ip(1), ip(10), 7, 1, b"abcdefgh");
    assert_eq!(ports(&out), vec![f.a]);
    assert_eq!(out[0].frame, want);
}

#[test]
fn learning_then_unicast_without_flood() {
    let mut f = fabric(true);
    // Unknown destination: flooded to b and c.
    let out =
        f.m.inject(0, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    assert_eq!(ports(&out), vec![f.b, f.c]);
    // b answers: a was learned, so only a gets it.
    let out =
        f.m.inject(S, f.b, VnetHdr::default(), &udp(11, 10, mac(10)));
    assert_eq!(ports(&out), vec![f.a]);
    // Now b is known too.
    let out =
        f.m.inject(2 * S, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    assert_eq!(ports(&out), vec![f.b]);
    assert_eq!(f.m.switch.fdb_lookup(f.net, mac(10), 2), Some(f.a));
}

#[test]
fn aging_forgets_and_floods_again() {
    let mut f = fabric(true);
    f.m.inject(0, f.b, VnetHdr::default(), &udp(11, 10, mac(10)));
    let out =
        f.m.inject(300 * S, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    assert_eq!(ports(&out), vec![f.b]);
    let out =
        f.m.inject(302 * S, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    assert_eq!(ports(&out), vec![f.b, f.c], "expired entry must flood");
    // Housekeeping purges expired entries and recounts.
    f.m.switch.age(700);
    assert_eq!(f.m.switch.fdb_lookup(f.net, mac(11), 700), None);
}

#[test]
fn broadcast_stays_in_its_network_and_networks_are_isolated() {
    let mut f = fabric(true);
    let other =
        f.m.switch
            .add_network(NetworkConfig::new(
                "back",
                Ipv4Addr::new(10, 2, 0, 0),
                24,
                Ipv4Addr::new(10, 2, 0, 1),
            ))
            .unwrap();
    let x =
        f.m.switch
            .add_port(PortConfig::endpoint(
                "x",
                other,
                mac(99),
                Ipv4Addr::new(10, 2, 0, 99),
            ))
            .unwrap();
    let out = f.m.inject(
        0,
        f.a,
        VnetHdr::default(),
        &build::arp_request(mac(10), ip(10), ip(11)),
    );
    assert_eq!(ports(&out), vec![f.b, f.c]);
    // x is learned on "back"; a frame to x's MAC from "front" is unknown there.
    f.m.inject(
        0,
        x,
        VnetHdr::default(),
        &build::arp_request(
            mac(99),
            Ipv4Addr::new(10, 2, 0, 99),
            Ipv4Addr::new(10, 2, 0, 5),
        ),
    );
    let out =
        f.m.inject(0, f.a, VnetHdr::default(), &udp(10, 11, mac(99)));
    assert_eq!(ports(&out), vec![f.b, f.c]);
    assert!(!ports(&out).contains(&x));
}

#[test]
fn icc_off_blocks_ip_between_containers_but_not_arp_or_gateway() {
    let mut f = fabric(false);
    let out = f.m.inject(
        0,
        f.a,
        VnetHdr::default(),
        &build::arp_request(mac(10), ip(10), ip(11)),
    );
    assert_eq!(ports(&out), vec![f.b, f.c], "ARP passes");
    f.m.inject(
        0,
        f.b,
        VnetHdr::default(),
        &build::arp_request(mac(11), ip(11), ip(10)),
    );
    let out =
        f.m.inject(0, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    assert!(out.is_empty());
    assert_eq!(drops(&f, f.a, DropReason::IccDisabled), 1);
    let ping = build::icmp_echo(false, gw(), mac(10), ip(10), ip(1), 1, 1, b"x");
    assert_eq!(
        ports(&f.m.inject(0, f.a, VnetHdr::default(), &ping)),
        vec![f.a]
    );
}

#[test]
fn spoofing_is_dropped() {
    let mut f = fabric(true);
    // Wrong source MAC.
    let fr = build::udp(mac(11), mac(66), (ip(10), 1), (ip(11), 2), b"x");
    assert!(f.m.inject(0, f.a, VnetHdr::default(), &fr).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::SpoofedMac), 1);
    // Right MAC, wrong IPv4 source.
    let fr = build::udp(mac(11), mac(10), (ip(66), 1), (ip(11), 2), b"x");
    assert!(f.m.inject(0, f.a, VnetHdr::default(), &fr).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::SpoofedIp), 1);
    // ARP claiming someone else's address.
    let fr = build::arp_request(mac(10), ip(11), ip(12));
    assert!(f.m.inject(0, f.a, VnetHdr::default(), &fr).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::SpoofedArp), 1);
    // An ARP probe (sender 0.0.0.0) is allowed.
    let fr = build::arp_request(mac(10), Ipv4Addr::UNSPECIFIED, ip(10));
    assert_eq!(f.m.inject(0, f.a, VnetHdr::default(), &fr).len(), 2);
    // A spoofed frame teaches the FDB nothing.
    assert_eq!(f.m.switch.fdb_lookup(f.net, mac(66), 0), None);
}

#[test]
fn mac_move_between_unchecked_ports() {
    let m = MemSwitch::new(SwitchConfig::default());
    let mut m = m;
    let net = m
        .switch
        .add_network(NetworkConfig::new("n", ip(0), 24, ip(1)))
        .unwrap();
    let u1 = m.switch.add_port(PortConfig::unchecked("u1", net)).unwrap();
    let u2 = m.switch.add_port(PortConfig::unchecked("u2", net)).unwrap();
    let e = m
        .switch
        .add_port(PortConfig::endpoint("e", net, mac(10), ip(10)))
        .unwrap();
    m.inject(0, u1, VnetHdr::default(), &udp(50, 10, mac(10)));
    assert_eq!(m.switch.fdb_lookup(net, mac(50), 0), Some(u1));
    m.inject(S, u2, VnetHdr::default(), &udp(50, 10, mac(10)));
    assert_eq!(m.switch.fdb_lookup(net, mac(50), 1), Some(u2));
    let out = m.inject(2 * S, e, VnetHdr::default(), &udp(10, 50, mac(50)));
    assert_eq!(ports(&out), vec![u2]);
}

#[test]
fn per_port_mac_limit() {
    let mut m = MemSwitch::new(SwitchConfig::default());
    let net = m
        .switch
        .add_network(NetworkConfig::new("n", ip(0), 24, ip(1)))
        .unwrap();
    let mut cfg = PortConfig::unchecked("u", net);
    cfg.max_macs = Some(3);
    let u = m.switch.add_port(cfg).unwrap();
    let e = m
        .switch
        .add_port(PortConfig::endpoint("e", net, mac(10), ip(10)))
        .unwrap();
    for n in 0..10u8 {
        m.inject(0, u, VnetHdr::default(), &udp(100 + n, 10, mac(10)));
    }
    let st = m.switch.port_stats(u).unwrap();
    assert_eq!(st.drop_count(DropReason::MacLimit), 7);
    assert_eq!(m.switch.port_stats(e).unwrap().tx_packets, 3);
    // Known MACs keep working at the limit.
    assert_eq!(
        m.inject(0, u, VnetHdr::default(), &udp(100, 10, mac(10)))
            .len(),
        1
    );
}

#[test]
fn malformed_frames_are_dropped_with_reasons() {
    let mut f = fabric(true);
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![0xff; 13], DropReason::Runt),
        (vec![], DropReason::Runt),
        (
            {
                let mut v = udp(10, 11, mac(11));
                v[12..14].copy_from_slice(&[0x81, 0x00]);
                v
            },
            DropReason::VlanTagged,
        ),
        (
            build::ethernet(mac(11), mac(10), EtherType::Ipv4, &[0x45, 0, 0]),
            DropReason::Malformed,
        ),
        (
            build::ethernet(mac(11), mac(10), EtherType::Arp, &[0, 1, 8, 0]),
            DropReason::Malformed,
        ),
        (
            build::ethernet(
                mac(11),
                EthernetAddress::BROADCAST,
                EtherType::Ipv4,
                &[0; 20],
            ),
            DropReason::InvalidSrcMac,
        ),
        (
            build::ethernet(mac(11), mac(10), EtherType::Unknown(0x88cc), &[0; 46]),
            DropReason::UnsupportedEtherType,
        ),
    ];
    for (frame, reason) in cases {
        let before = drops(&f, f.a, reason);
        assert!(
            f.m.inject(0, f.a, VnetHdr::default(), &frame).is_empty(),
            "{reason:?}"
        );
        assert_eq!(drops(&f, f.a, reason), before + 1, "{reason:?}");
    }
}

#[test]
fn mtu_and_gso() {
    let mut f = fabric(true);
    f.m.inject(0, f.b, VnetHdr::default(), &udp(11, 10, mac(10)));
    let big = build::udp(
        mac(11),
        mac(10),
        (ip(10), 1),
        (ip(11), 2),
        &vec![7; 9000 - 42],
    );
    assert_eq!(big.len(), 9000);
    assert!(f.m.inject(0, f.a, VnetHdr::default(), &big).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::Oversize), 1);
    // The same bytes as a GSO super-frame pass, metadata untouched.
    let meta = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_UDP_L4,
        hdr_len: 42,
        gso_size: 1472,
        csum_start: 34,
        csum_offset: 6,
        num_buffers: 0,
    };
    let out = f.m.inject(0, f.a, meta, &big);
    assert_eq!(ports(&out), vec![f.b]);
    assert_eq!(out[0].meta, meta);
    assert_eq!(out[0].frame, big);
    // A jumbo network takes it plain.
    let mut cfg = f.m.switch.topology().network(f.net).unwrap().config.clone();
    cfg.mtu = 9000;
    f.m.switch.update_network(f.net, cfg).unwrap();
    assert_eq!(f.m.inject(0, f.a, VnetHdr::default(), &big).len(), 1);
}

#[test]
fn hairpin_and_unknown_port_are_counted() {
    let mut f = fabric(true);
    f.m.inject(0, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    // a sends to its own MAC.
    assert!(f
        .m
        .inject(0, f.a, VnetHdr::default(), &udp(10, 10, mac(10)))
        .is_empty());
    assert_eq!(drops(&f, f.a, DropReason::Hairpin), 1);
    assert!(f
        .m
        .inject(0, PortId(999), VnetHdr::default(), &udp(10, 11, mac(11)))
        .is_empty());
    assert_eq!(
        f.m.switch.switch_drops()[DropReason::UnknownPort as usize],
        1
    );
}

#[test]
fn removed_port_is_never_a_destination() {
    let mut f = fabric(true);
    f.m.inject(0, f.b, VnetHdr::default(), &udp(11, 10, mac(10)));
    f.m.switch.remove_port(f.b).unwrap();
    let out =
        f.m.inject(0, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    assert_eq!(ports(&out), vec![f.c]);
    assert!(f.m.switch.remove_network(f.net).is_err(), "still has ports");
}

#[test]
fn counters_count_rx_and_tx() {
    let mut f = fabric(true);
    let fr = udp(10, 11, mac(11));
    f.m.inject(0, f.a, VnetHdr::default(), &fr);
    let a = f.m.switch.port_stats(f.a).unwrap();
    let b = f.m.switch.port_stats(f.b).unwrap();
    assert_eq!((a.rx_packets, a.rx_bytes), (1, fr.len() as u64));
    assert_eq!((b.tx_packets, b.tx_bytes), (1, fr.len() as u64));
}

#[test]
fn capture_hooks_see_ingress_egress_and_drops() {
    use std::sync::{Arc, Mutex};
    #[derive(Default)]
    struct Rec(Mutex<Vec<String>>);
    impl CaptureHook for Rec {
        fn on_ingress(&self, p: &Port, _: &VnetHdr, _: &[u8]) {
            self.0.lock().unwrap().push(format!("in {}", p.config.name));
        }
        fn on_egress(&self, p: &Port, _: &VnetHdr, _: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push(format!("out {}", p.config.name));
        }
        fn on_drop(&self, p: &Port, _: &VnetHdr, _: &[u8], r: DropReason) {
            self.0
                .lock()
                .unwrap()
                .push(format!("drop {} {}", p.config.name, r.as_str()));
        }
    }
    let mut f = fabric(true);
    let rec = Arc::new(Rec::default());
    f.m.switch.set_capture(Some(rec.clone()));
    f.m.inject(0, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    f.m.inject(0, f.a, VnetHdr::default(), &[1; 5]);
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec!["in a", "out b", "out c", "in a", "drop a runt"]
    );
}

#[test]
fn the_ethernet_view_is_what_was_sent() {
    let mut f = fabric(true);
    let out =
        f.m.inject(0, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(e.src_addr(), mac(10));
    assert_eq!(out[0].frame.len(), ethernet::HEADER_LEN + 20 + 8 + 2);
}

#[test]
fn hook_replies_carry_their_metadata() {
    /// Answers every gateway frame with its own bytes, as a GSO frame.
    struct Echo;
    impl GatewayHook for Echo {
        fn handle(
            &mut self,
            _: &HookCx<'_>,
            _: &VnetHdr,
            frame: &[u8],
            scratch: &mut [u8],
        ) -> HookVerdict {
            scratch[..frame.len()].copy_from_slice(frame);
            let meta = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: vnet::GSO_TCPV4,
                hdr_len: 54,
                gso_size: 1460,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 0,
            };
            if frame.len() > 60 {
                HookVerdict::ReplyWith(frame.len(), meta)
            } else {
                HookVerdict::Reply(frame.len())
            }
        }
    }
    let mut m = MemSwitch::with_hook(SwitchConfig::default(), Echo);
    let net = m
        .switch
        .add_network(NetworkConfig::new(
            "front",
            Ipv4Addr::new(10, 1, 0, 0),
            24,
            ip(1),
        ))
        .unwrap();
    let a = m
        .switch
        .add_port(PortConfig::endpoint("a", net, mac(10), ip(10)))
        .unwrap();
    let big = build::udp(gw(), mac(10), (ip(10), 1000), (ip(1), 2000), &[7; 100]);
    let out = m.inject(0, a, VnetHdr::default(), &big);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, a);
    assert_eq!(out[0].frame, big);
    assert_eq!(out[0].meta.gso_type, vnet::GSO_TCPV4);
    assert_eq!(out[0].meta.gso_size, 1460);
    let small = build::udp(gw(), mac(10), (ip(10), 1000), (ip(1), 2000), b"x");
    let out = m.inject(0, a, VnetHdr::default(), &small);
    assert!(out[0].meta.is_plain());
}

#[test]
fn an_unchecked_port_cannot_take_an_assigned_mac() {
    let mut f = fabric(true);
    let u =
        f.m.switch
            .add_port(PortConfig::unchecked("uplink", f.net))
            .unwrap();
    // The uplink sends from b's assigned MAC: dropped, nothing learned.
    let fr = build::udp(mac(10), mac(11), (ip(50), 1), (ip(10), 2), b"x");
    assert!(f.m.inject(0, u, VnetHdr::default(), &fr).is_empty());
    assert_eq!(drops(&f, u, DropReason::MacTaken), 1);
    assert_eq!(f.m.switch.fdb_lookup(f.net, mac(11), 0), None);
    // b itself learns it, and the uplink still cannot move it.
    f.m.inject(0, f.b, VnetHdr::default(), &udp(11, 10, mac(10)));
    assert!(f.m.inject(S, u, VnetHdr::default(), &fr).is_empty());
    assert_eq!(f.m.switch.fdb_lookup(f.net, mac(11), 1), Some(f.b));
    // Frames to b go to b only.
    let out =
        f.m.inject(S, f.a, VnetHdr::default(), &udp(10, 11, mac(11)));
    assert_eq!(ports(&out), vec![f.b]);
    // Two endpoints cannot be given one MAC.
    let err =
        f.m.switch
            .add_port(PortConfig::endpoint("dup", f.net, mac(11), ip(99)))
            .unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)), "{err:?}");
    // Once b is gone, its MAC is free again.
    f.m.switch.remove_port(f.b).unwrap();
    f.m.switch
        .add_port(PortConfig::endpoint("b2", f.net, mac(11), ip(11)))
        .unwrap();
}

/// Ports share dense blocks of counters: a removed port's place goes to
/// the next port added, which starts from zero, and the ports that stay
/// keep their figures through the updates.
#[test]
fn counters_survive_updates_and_a_new_port_starts_from_zero() {
    let mut f = fabric(true);
    let frame = udp(10, 11, mac(11));
    f.m.inject(0, f.a, VnetHdr::default(), &frame);
    f.m.inject(0, f.a, VnetHdr::default(), &frame);
    let stats = |f: &Fab, p| f.m.switch.port_stats(p).unwrap();
    assert_eq!(stats(&f, f.c).tx_packets, 2, "flooded to c twice");
    f.m.switch.remove_port(f.c).unwrap();
    let d =
        f.m.switch
            .add_port(PortConfig::endpoint("d", f.net, mac(13), ip(13)))
            .unwrap();
    assert_eq!(stats(&f, d), PortStats::default());
    let a = stats(&f, f.a);
    assert_eq!((a.rx_packets, a.rx_bytes), (2, 2 * frame.len() as u64));
    assert_eq!(stats(&f, f.b).tx_packets, 2);
    f.m.inject(0, f.a, VnetHdr::default(), &frame);
    assert_eq!(stats(&f, d).tx_packets, 1, "flooded to d, counted once");
    assert_eq!(stats(&f, f.b).tx_packets, 3);
}

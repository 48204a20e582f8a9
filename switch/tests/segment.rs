//! Networks on a parent interface (macvlan, ipvlan l2) driven through
//! in-memory ports: where each frame goes, and the counter of each drop.

use std::net::Ipv4Addr;
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::{MemSwitch, Sent};
use tapnet_switch::segment::SegmentMode;
use tapnet_switch::wire::{EthernetAddress, VnetHdr};
use tapnet_switch::*;

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, d)
}

/// The router on the segment, behind the parent.
const ROUTER: u8 = 1;

struct Seg {
    m: MemSwitch,
    parent: PortId,
    a: PortId,
    b: PortId,
    /// The parent's MAC (ipvlan: the endpoints' too).
    pmac: EthernetAddress,
}

/// Endpoints a (.10) and b (.11) and a parent port.
fn segment(mode: SegmentMode) -> Seg {
    let m = MemSwitch::new(SwitchConfig::default());
    let net = m
        .switch
        .add_network(NetworkConfig::new("seg", ip(0), 24, ip(ROUTER)))
        .unwrap();
    m.switch.set_segment(net, mode).unwrap();
    let pmac = mac(100);
    let parent = m
        .switch
        .add_parent_port(net, "parent:eth0", None, Some(pmac))
        .unwrap();
    let emac = |i: u8| match mode {
        SegmentMode::Macvlan => mac(u32::from(i)),
        SegmentMode::IpvlanL2 | SegmentMode::IpvlanL3 => pmac,
    };
    let p = |n: &str, i: u8| {
        m.switch
            .add_port(PortConfig::endpoint(n, net, emac(i), ip(i)))
            .unwrap()
    };
    let (a, b) = (p("a", 10), p("b", 11));
    Seg {
        m,
        parent,
        a,
        b,
        pmac,
    }
}

fn udp(src_mac: EthernetAddress, dst_mac: EthernetAddress, from: u8, to: u8) -> Vec<u8> {
    build::udp(dst_mac, src_mac, (ip(from), 1000), (ip(to), 2000), b"hi")
}

fn ports(sent: &[Sent]) -> Vec<PortId> {
    sent.iter().map(|s| s.port).collect()
}

fn drops(s: &Seg, p: PortId, r: DropReason) -> u64 {
    s.m.switch.port_stats(p).unwrap().drop_count(r)
}

fn inject(s: &mut Seg, port: PortId, frame: &[u8]) -> Vec<PortId> {
    ports(&s.m.inject(0, port, VnetHdr::default(), frame))
}

#[test]
fn macvlan_rules() {
    let mut s = segment(SegmentMode::Macvlan);
    let (a, b, parent) = (s.a, s.b, s.parent);
    let router = mac(1);
    // Endpoint to endpoint: locally, never out the parent.
    assert_eq!(inject(&mut s, a, &udp(mac(10), mac(11), 10, 11)), vec![b]);
    // Endpoint to any other MAC (the router): out the parent only.
    let f = udp(mac(10), router, 10, 99);
    assert_eq!(inject(&mut s, a, &f), vec![parent]);
    // ARP for the gateway is not answered by tapnet: it is broadcast to
    // the parent and the other endpoint.
    let arp = build::arp_request(mac(10), ip(10), ip(ROUTER));
    let mut out = inject(&mut s, a, &arp);
    out.sort();
    assert_eq!(out, vec![parent, b]);
    // From the parent: to the endpoint with that MAC, broadcast to all.
    assert_eq!(
        inject(&mut s, parent, &udp(router, mac(11), 1, 11)),
        vec![b]
    );
    let arp = build::arp_request(router, ip(1), ip(10));
    assert_eq!(inject(&mut s, parent, &arp), vec![a, b]);
    // Other MACs of the segment: dropped, counted.
    assert!(inject(&mut s, parent, &udp(router, mac(77), 1, 77)).is_empty());
    assert_eq!(drops(&s, parent, DropReason::ParentNotForUs), 1);
    // The segment claiming an endpoint's MAC: dropped, counted.
    assert!(inject(&mut s, parent, &udp(mac(10), mac(11), 10, 11)).is_empty());
    assert_eq!(drops(&s, parent, DropReason::MacTaken), 1);
    // Endpoints stay spoof-checked.
    assert!(inject(&mut s, a, &udp(mac(10), mac(11), 12, 11)).is_empty());
    assert_eq!(drops(&s, a, DropReason::SpoofedIp), 1);
    // Nothing was learned from the parent's traffic.
    assert_eq!(s.m.switch.fdb_lookup(NetworkId(0), router, 0), None);
}

#[test]
fn ipvlan_l2_rules() {
    let mut s = segment(SegmentMode::IpvlanL2);
    let (a, b, parent, pmac) = (s.a, s.b, s.parent, s.pmac);
    let router = mac(1);
    // Endpoints share the parent's MAC: told apart by address.
    assert_eq!(inject(&mut s, a, &udp(pmac, pmac, 10, 11)), vec![b]);
    assert_eq!(inject(&mut s, parent, &udp(router, pmac, 1, 10)), vec![a]);
    assert_eq!(inject(&mut s, parent, &udp(router, pmac, 1, 11)), vec![b]);
    // ARP from the segment for an endpoint reaches the endpoints (the one
    // with the address answers with the parent's MAC); the answer goes
    // back out the parent.
    let arp = build::arp_request(router, ip(1), ip(11));
    assert_eq!(inject(&mut s, parent, &arp), vec![a, b]);
    let f = udp(pmac, router, 11, 1);
    assert_eq!(inject(&mut s, b, &f), vec![parent]);
    // To the parent's MAC but no endpoint's address (the host itself),
    // or to another MAC: dropped, counted.
    assert!(inject(&mut s, parent, &udp(router, pmac, 1, 50)).is_empty());
    assert!(inject(&mut s, parent, &udp(router, mac(77), 1, 10)).is_empty());
    assert_eq!(drops(&s, parent, DropReason::ParentNotForUs), 2);
    // An endpoint may not use another's address.
    assert!(inject(&mut s, a, &udp(pmac, router, 11, 1)).is_empty());
    assert_eq!(drops(&s, a, DropReason::SpoofedIp), 1);
}

#[test]
fn ipvlan_l3_rules() {
    let mut s = segment(SegmentMode::IpvlanL3);
    let (a, b, parent, pmac) = (s.a, s.b, s.parent, s.pmac);
    let net = NetworkId(0);
    // Without a router port, what no endpoint holds has no way out.
    assert!(inject(&mut s, a, &udp(pmac, pmac, 10, 1)).is_empty());
    assert_eq!(drops(&s, a, DropReason::NoDestination), 1);
    let router =
        s.m.switch
            .add_router_port(net, "router:eth0", false)
            .unwrap();
    assert!(s
        .m
        .switch
        .add_router_port(net, "router:again", false)
        .is_err());
    // Endpoints send every packet to their own MAC (NOARP): routed by
    // destination address, to the other endpoint (even outside the
    // subnet's view of the sender) or to the router port.
    assert_eq!(inject(&mut s, a, &udp(pmac, pmac, 10, 11)), vec![b]);
    assert_eq!(inject(&mut s, a, &udp(pmac, pmac, 10, 1)), vec![router]);
    let far = build::udp(
        pmac,
        pmac,
        (ip(10), 1000),
        (Ipv4Addr::new(198, 51, 100, 7), 53),
        b"q",
    );
    assert_eq!(inject(&mut s, a, &far), vec![router]);
    // Never out the parent, never flooded: ARP, broadcast and multicast
    // are not routed.
    let arp = build::arp_request(pmac, ip(10), ip(11));
    assert!(inject(&mut s, a, &arp).is_empty());
    let bcast = build::udp(
        EthernetAddress::BROADCAST,
        pmac,
        (ip(10), 68),
        (Ipv4Addr::BROADCAST, 67),
        b"d",
    );
    assert!(inject(&mut s, a, &bcast).is_empty());
    let mcast = build::udp(
        pmac,
        pmac,
        (ip(10), 5353),
        (Ipv4Addr::new(224, 0, 0, 251), 5353),
        b"m",
    );
    assert!(inject(&mut s, a, &mcast).is_empty());
    assert_eq!(drops(&s, a, DropReason::L3NotRouted), 3);
    // From the parent: for the parent's MAC and an endpoint's address
    // only; the host's own traffic and the segment's broadcasts are not
    // for the network.
    let other = mac(1);
    assert_eq!(inject(&mut s, parent, &udp(other, pmac, 1, 11)), vec![b]);
    assert!(inject(&mut s, parent, &udp(other, pmac, 1, 50)).is_empty());
    assert!(inject(&mut s, parent, &udp(other, mac(77), 1, 10)).is_empty());
    let arp = build::arp_request(other, ip(1), ip(10));
    assert!(inject(&mut s, parent, &arp).is_empty());
    assert_eq!(drops(&s, parent, DropReason::ParentNotForUs), 3);
    // Spoof checks hold: an endpoint may not send from another's address.
    assert!(inject(&mut s, a, &udp(pmac, pmac, 11, 1)).is_empty());
    assert_eq!(drops(&s, a, DropReason::SpoofedIp), 1);
    // The router port's removal leaves the network without a way out.
    s.m.switch.remove_port(router).unwrap();
    assert!(inject(&mut s, a, &udp(pmac, pmac, 10, 1)).is_empty());
    assert_eq!(drops(&s, a, DropReason::NoDestination), 2);
    let seg = s.m.switch.topology().network(net).unwrap().segment.unwrap();
    assert_eq!((seg.parent, seg.router), (Some(parent), None));
}

/// IPv6 on ipvlan: endpoints are found by their assigned and explicit
/// link-local addresses; they may send from those only; l3 routes other
/// IPv6 destinations to the IPv6 router port.
#[test]
fn ipvlan_ipv6_by_address() {
    use std::net::Ipv6Addr;
    use tapnet_switch::segment::ipvlan_link_local;
    let g6 = |d: u16| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d);
    for mode in [SegmentMode::IpvlanL2, SegmentMode::IpvlanL3] {
        let m = MemSwitch::new(SwitchConfig::default());
        let net = m
            .switch
            .add_network(NetworkConfig::new("seg", ip(0), 24, ip(ROUTER)))
            .unwrap();
        m.switch.set_segment(net, mode).unwrap();
        let pmac = mac(100);
        let parent = m
            .switch
            .add_parent_port(net, "parent:eth0", None, Some(pmac))
            .unwrap();
        let p = |n: &str, i: u8| {
            let mut c = PortConfig::endpoint(n, net, pmac, ip(i));
            c.ip6 = Some(g6(u16::from(i)));
            c.link_local6 = Some(ipvlan_link_local(ip(i)));
            m.switch.add_port(c).unwrap()
        };
        let (a, b) = (p("a", 10), p("b", 11));
        assert_eq!(
            ipvlan_link_local(ip(10)),
            "fe80::c000:20a".parse::<Ipv6Addr>().unwrap()
        );
        let router6 = (mode == SegmentMode::IpvlanL3)
            .then(|| m.switch.add_router_port(net, "router6:eth0", true).unwrap());
        let mut s = Seg {
            m,
            parent,
            a,
            b,
            pmac,
        };
        let u6 =
            |src: Ipv6Addr, dst: Ipv6Addr, dmac| build::udp6(dmac, pmac, (src, 1), (dst, 2), b"x");
        // Endpoint to endpoint, by global and by link-local address.
        assert_eq!(inject(&mut s, a, &u6(g6(10), g6(11), pmac)), vec![b]);
        let (ll_a, ll_b) = (ipvlan_link_local(ip(10)), ipvlan_link_local(ip(11)));
        assert_eq!(inject(&mut s, a, &u6(ll_a, ll_b, pmac)), vec![b]);
        // The shared MAC's EUI-64 link-local is no endpoint's source.
        let eui = tapnet_switch::topology::link_local_of(pmac);
        assert!(inject(&mut s, a, &u6(eui, ll_b, pmac)).is_empty());
        assert_eq!(drops(&s, a, DropReason::SpoofedIp), 1);
        // From the parent, by destination.
        let other = mac(1);
        let f = build::udp6(pmac, other, (g6(1), 1), (g6(11), 2), b"x");
        assert_eq!(inject(&mut s, parent, &f), vec![b]);
        // Beyond the network: out the parent (l2), the IPv6 router (l3).
        let out = inject(&mut s, a, &u6(g6(10), g6(99), pmac));
        match router6 {
            Some(r) => assert_eq!(out, vec![r]),
            None => assert_eq!(out, vec![parent]),
        }
    }
}

#[test]
fn internal_segment_has_no_way_out() {
    let m = MemSwitch::new(SwitchConfig::default());
    let net = m
        .switch
        .add_network(NetworkConfig::new("seg", ip(0), 24, ip(ROUTER)))
        .unwrap();
    m.switch.set_segment(net, SegmentMode::Macvlan).unwrap();
    let a = m
        .switch
        .add_port(PortConfig::endpoint("a", net, mac(10), ip(10)))
        .unwrap();
    let mut s = Seg {
        m,
        parent: a,
        a,
        b: a,
        pmac: mac(100),
    };
    assert!(inject(&mut s, a, &udp(mac(10), mac(1), 10, 1)).is_empty());
    assert_eq!(drops(&s, a, DropReason::NoDestination), 1);
    // No gateway answers either.
    let arp = build::arp_request(mac(10), ip(10), ip(ROUTER));
    assert!(inject(&mut s, a, &arp).is_empty());
    assert_eq!(drops(&s, a, DropReason::NoDestination), 2);
}

/// Stands for the DNS responder: records what reached it; answers UDP
/// with a 60-byte frame (to see where replies go), consumes the rest.
#[derive(Default)]
struct DnsStandIn {
    seen: Vec<Vec<u8>>,
}

impl GatewayHook for DnsStandIn {
    fn handle(
        &mut self,
        cx: &HookCx<'_>,
        _: &VnetHdr,
        frame: &[u8],
        scratch: &mut [u8],
    ) -> HookVerdict {
        assert!(cx.network.segment.is_some());
        self.seen.push(frame.to_vec());
        if frame[23] == 17 {
            scratch[..60].fill(0xab);
            return HookVerdict::Reply(60);
        }
        HookVerdict::Consumed
    }
}

/// A TCP SYN (no checksum: the stand-in does not look) to `dst`.
fn tcp_syn(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    from: u8,
    dst: (Ipv4Addr, u16),
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[..2].copy_from_slice(&4000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    build::ipv4(dst_mac, src_mac, ip(from), dst.0, 6, &t)
}

/// The embedded DNS's service address on segment networks, in both modes:
/// ARP for it answered with its MAC to the asker only, DNS (UDP and TCP
/// port 53) to the hook, replies back to the querier, anything else to it
/// dropped (counted); nothing for it ever leaves on the parent, and the
/// segment cannot reach it.
#[test]
fn segment_dns_service_address() {
    use tapnet_switch::segment::{DNS_ADDR, DNS_MAC};
    use tapnet_switch::wire::{arp::ArpOp, ArpPacket, EthernetFrame};
    for mode in [
        SegmentMode::Macvlan,
        SegmentMode::IpvlanL2,
        SegmentMode::IpvlanL3,
    ] {
        let mut m = MemSwitch::with_hook(SwitchConfig::default(), DnsStandIn::default());
        let net = m
            .switch
            .add_network(NetworkConfig::new("seg", ip(0), 24, ip(ROUTER)))
            .unwrap();
        m.switch.set_segment(net, mode).unwrap();
        let pmac = mac(100);
        let parent = m
            .switch
            .add_parent_port(net, "parent:eth0", None, Some(pmac))
            .unwrap();
        let amac = match mode {
            SegmentMode::Macvlan => mac(10),
            SegmentMode::IpvlanL2 | SegmentMode::IpvlanL3 => pmac,
        };
        let bmac = match mode {
            SegmentMode::Macvlan => mac(11),
            SegmentMode::IpvlanL2 | SegmentMode::IpvlanL3 => pmac,
        };
        let a = m
            .switch
            .add_port(PortConfig::endpoint("a", net, amac, ip(10)))
            .unwrap();
        let b = m
            .switch
            .add_port(PortConfig::endpoint("b", net, bmac, ip(11)))
            .unwrap();
        let drops = |m: &MemSwitch<DnsStandIn>, p: PortId, r: DropReason| {
            m.switch.port_stats(p).unwrap().drop_count(r)
        };
        let send = |m: &mut MemSwitch<DnsStandIn>, p: PortId, f: &[u8]| {
            m.inject(0, p, VnetHdr::default(), f)
        };

        // ARP for the address: answered to the asker alone, with DNS_MAC.
        let out = send(&mut m, a, &build::arp_request(amac, ip(10), DNS_ADDR));
        assert_eq!(ports(&out), vec![a], "{mode:?}");
        let eth = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
        assert_eq!((eth.dst_addr(), eth.src_addr()), (amac, DNS_MAC));
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(arp.operation(), ArpOp::Reply);
        assert_eq!((arp.sender_hw(), arp.sender_ip()), (DNS_MAC, DNS_ADDR));
        assert_eq!((arp.target_hw(), arp.target_ip()), (amac, ip(10)));

        // UDP to port 53: to the hook, its reply back to the querier only.
        let q = build::udp(DNS_MAC, amac, (ip(10), 5000), (DNS_ADDR, 53), b"query");
        let out = send(&mut m, a, &q);
        assert_eq!(ports(&out), vec![a], "{mode:?}");
        assert_eq!(out[0].frame, vec![0xab; 60]);
        // ipvlan: frames are mapped by address, whatever the MAC.
        let q2 = build::udp(pmac, amac, (ip(10), 5001), (DNS_ADDR, 53), b"query");
        assert_eq!(ports(&send(&mut m, a, &q2)), vec![a]);
        // TCP to port 53: to the hook too (consumed here).
        assert!(send(&mut m, a, &tcp_syn(amac, DNS_MAC, 10, (DNS_ADDR, 53))).is_empty());
        assert_eq!(m.worker.hook_mut().seen.len(), 3, "{mode:?}");
        assert_eq!(m.worker.hook_mut().seen[0], q);

        // Anything else to the address: dropped, counted, never out.
        let other = [
            build::udp(DNS_MAC, amac, (ip(10), 5000), (DNS_ADDR, 80), b"x"),
            tcp_syn(amac, DNS_MAC, 10, (DNS_ADDR, 22)),
            build::icmp_echo(false, DNS_MAC, amac, ip(10), DNS_ADDR, 1, 1, b"ping"),
        ];
        for f in &other {
            assert!(send(&mut m, a, f).is_empty(), "{mode:?}");
        }
        assert_eq!(drops(&m, a, DropReason::GatewayUnsupported), 3);
        assert_eq!(m.worker.hook_mut().seen.len(), 3);

        // From the segment: the address is not ours to give (ARP reaches
        // the endpoints, where no one holds it; queries are dropped).
        // (ipvlan l3 carries no ARP at all.)
        let l3 = mode == SegmentMode::IpvlanL3;
        let arp = build::arp_request(mac(1), ip(ROUTER), DNS_ADDR);
        let mut out = ports(&send(&mut m, parent, &arp));
        out.sort();
        assert_eq!(out, if l3 { vec![] } else { vec![a, b] }, "{mode:?}");
        let q = build::udp(pmac, mac(1), (ip(ROUTER), 5000), (DNS_ADDR, 53), b"q");
        assert!(send(&mut m, parent, &q).is_empty());
        let q = build::udp(DNS_MAC, mac(1), (ip(ROUTER), 5000), (DNS_ADDR, 53), b"q");
        assert!(send(&mut m, parent, &q).is_empty());
        assert_eq!(
            drops(&m, parent, DropReason::ParentNotForUs),
            if l3 { 3 } else { 2 },
            "{mode:?}"
        );
        assert_eq!(m.worker.hook_mut().seen.len(), 3);
        // The parent sent nothing for the address in all of this.
        assert_eq!(
            m.switch.port_stats(parent).unwrap().tx_packets,
            0,
            "{mode:?}"
        );
    }
}

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

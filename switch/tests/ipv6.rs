//! IPv6 on a dual-stack network: switching, anti-spoofing of addresses
//! and of Neighbor Discovery, the gateway's NDP and echo, ICC.

use std::net::{Ipv4Addr, Ipv6Addr};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::MemSwitch;
use tapnet_switch::wire::ipv6::{self, icmpv6, Ipv6Packet};
use tapnet_switch::wire::{EthernetAddress, EthernetFrame, VnetHdr};
use tapnet_switch::*;

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, d)
}

fn ip6(d: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, d)
}

fn ll(n: u32) -> Ipv6Addr {
    link_local_of(mac(n))
}

struct Fab {
    m: MemSwitch,
    a: PortId,
    b: PortId,
    c: PortId,
}

/// Network 10.1.0.0/24 + 2001:db8:1::/64 (gateway .1 and ::1) with
/// endpoints a (.10, ::10), b (.11, ::11), c (.12, no IPv6).
fn fabric(icc: bool) -> Fab {
    let m = MemSwitch::new(SwitchConfig::default());
    let mut cfg = NetworkConfig::new("front", Ipv4Addr::new(10, 1, 0, 0), 24, ip(1));
    cfg.icc = icc;
    cfg.v6 = Some(Ipv6Config {
        subnet: ip6(0),
        prefix_len: 64,
        gateway: ip6(1),
    });
    let net = m.switch.add_network(cfg).unwrap();
    let p = |n: &str, i: u8, v6: bool| {
        let mut c = PortConfig::endpoint(n, net, mac(i as u32), ip(i));
        c.ip6 = v6.then(|| ip6(i as u16));
        m.switch.add_port(c).unwrap()
    };
    let (a, b, c) = (p("a", 10, true), p("b", 11, true), p("c", 12, false));
    Fab { m, a, b, c }
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

impl Fab {
    fn inject(&mut self, port: PortId, frame: &[u8]) -> Vec<tapnet_switch::mem::Sent> {
        self.m.inject(0, port, VnetHdr::default(), frame)
    }
}

#[test]
fn ipv6_between_endpoints_is_switched() {
    let mut f = fabric(true);
    let d = build::udp6(mac(11), mac(10), (ip6(10), 1), (ip6(11), 2), b"x");
    assert_eq!(ports(&f.inject(f.a, &d)), vec![f.b, f.c], "flooded");
    let r = build::udp6(mac(10), mac(11), (ip6(11), 2), (ip6(10), 1), b"y");
    assert_eq!(ports(&f.inject(f.b, &r)), vec![f.a], "learned");
    // Link-local sources are the port's own too.
    let d = build::udp6(mac(11), mac(10), (ll(10), 1), (ll(11), 2), b"x");
    assert_eq!(ports(&f.inject(f.a, &d)), vec![f.b]);
    // Neighbor Discovery between endpoints (multicast) reaches the others.
    let ns = build::neighbor_solicit(mac(10), ip6(10), ip6(11));
    assert_eq!(ports(&f.inject(f.a, &ns)), vec![f.b, f.c]);
}

#[test]
fn the_gateway_answers_neighbor_solicitations() {
    let mut f = fabric(true);
    for target in [ip6(1), link_local_of(gw())] {
        let ns = build::neighbor_solicit(mac(10), ip6(10), target);
        let out = f.inject(f.a, &ns);
        assert_eq!(ports(&out), vec![f.a], "answered, not flooded");
        let want = build::neighbor_advert(mac(10), gw(), target, ip6(10), target, gw());
        let mut got = out[0].frame.clone();
        // Flags: router, solicited, override.
        assert_eq!(got[14 + 40 + 4], 0xe0);
        got[14 + 40 + 4] = icmpv6::NA_SOLICITED;
        let c = ipv6::upper_checksum(target, ip6(10), 58, &{
            let mut m = got[54..].to_vec();
            m[2..4].fill(0);
            m
        });
        got[56..58].copy_from_slice(&c.to_be_bytes());
        assert_eq!(got, want);
        let ip = Ipv6Packet::new_checked(&out[0].frame[14..]).unwrap();
        assert_eq!(
            ipv6::upper_checksum(ip.src_addr(), ip.dst_addr(), 58, ip.payload()),
            0
        );
    }
    // Duplicate address detection of the gateway's address: the answer
    // goes to all nodes.
    let dad = build::neighbor_solicit(mac(10), Ipv6Addr::UNSPECIFIED, ip6(1));
    let out = f.inject(f.a, &dad);
    assert_eq!(ports(&out), vec![f.a]);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(e.dst_addr().0, [0x33, 0x33, 0, 0, 0, 1]);
    // A unicast solicitation (reachability check) is answered too.
    let mut nud = build::neighbor_solicit(mac(10), ip6(10), ip6(1));
    nud[..6].copy_from_slice(&gw().0);
    assert_eq!(ports(&f.inject(f.a, &nud)), vec![f.a]);
    // A solicitation with hop limit below 255 was routed: refused.
    let mut routed = build::neighbor_solicit(mac(10), ip6(10), ip6(1));
    routed[14 + 7] = 64;
    assert!(f.inject(f.a, &routed).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::Malformed), 1);
}

#[test]
fn the_gateway_answers_echo() {
    let mut f = fabric(true);
    let req = build::icmpv6_echo(false, gw(), mac(10), ip6(10), ip6(1), 7, 1, b"abc");
    let out = f.inject(f.a, &req);
    let want = build::icmpv6_echo(true, mac(10), gw(), ip6(1), ip6(10), 7, 1, b"abc");
    assert_eq!(ports(&out), vec![f.a]);
    assert_eq!(out[0].frame, want);
    // To another address through the gateway, without a hook: no route.
    let far: Ipv6Addr = "2001:db8:99::1".parse().unwrap();
    let req = build::icmpv6_echo(false, gw(), mac(10), ip6(10), far, 7, 1, b"abc");
    assert!(f.inject(f.a, &req).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::NoRoute), 1);
}

#[test]
fn ipv6_spoofing_is_dropped() {
    let mut f = fabric(true);
    // Another endpoint's address, an address outside, another port's
    // link-local.
    for src in [ip6(11), "2001:db8:2::10".parse().unwrap(), ll(11)] {
        let d = build::udp6(mac(11), mac(10), (src, 1), (ip6(11), 2), b"x");
        assert!(f.inject(f.a, &d).is_empty(), "{src}");
    }
    assert_eq!(drops(&f, f.a, DropReason::SpoofedIp), 3);
    // c has no IPv6 address: only its link-local.
    let d = build::udp6(mac(10), mac(12), (ip6(12), 1), (ip6(10), 2), b"x");
    assert!(f.inject(f.c, &d).is_empty());
    assert_eq!(drops(&f, f.c, DropReason::SpoofedIp), 1);
    let d = build::udp6(mac(10), mac(12), (ll(12), 1), (ll(10), 2), b"x");
    assert_eq!(f.inject(f.c, &d).len(), 2);
    // `::` only for ICMPv6 (DAD) and hop-by-hop (MLD), not for UDP.
    let d = build::udp6(
        mac(11),
        mac(10),
        (Ipv6Addr::UNSPECIFIED, 1),
        (ip6(11), 2),
        b"x",
    );
    assert!(f.inject(f.a, &d).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::SpoofedIp), 4);
    let dad = build::neighbor_solicit(mac(10), Ipv6Addr::UNSPECIFIED, ip6(10));
    assert_eq!(f.inject(f.a, &dad).len(), 2);
    // NDP: advertising b's address, or someone else's MAC.
    let na = build::neighbor_advert(mac(12), mac(10), ip6(10), ip6(12), ip6(11), mac(10));
    assert!(f.inject(f.a, &na).is_empty());
    let na = build::neighbor_advert(mac(12), mac(10), ip6(10), ip6(12), ip6(10), mac(66));
    assert!(f.inject(f.a, &na).is_empty());
    let ns = build::neighbor_solicit(mac(10), ip6(10), ip6(11));
    let mut ns = ns;
    let n = ns.len();
    ns[n - 6..].copy_from_slice(&mac(66).0);
    assert!(f.inject(f.a, &ns).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::SpoofedNd), 3);
    // Its own advertisement passes (to c, learned above).
    let na = build::neighbor_advert(mac(12), mac(10), ip6(10), ip6(12), ip6(10), mac(10));
    assert_eq!(ports(&f.inject(f.a, &na)), vec![f.c]);
}

/// `frame` (Ethernet + IPv6) with extension header `ext` (its first byte,
/// the next-header field, filled in here) put in front of the payload.
fn with_extension(frame: &[u8], kind: u8, ext: &[u8]) -> Vec<u8> {
    let (eth, ip) = (14, 14 + ipv6::HEADER_LEN);
    let mut f = frame[..ip].to_vec();
    let mut e = ext.to_vec();
    e[0] = f[eth + 6];
    f[eth + 6] = kind;
    let len = u16::from_be_bytes([f[eth + 4], f[eth + 5]]) + e.len() as u16;
    f[eth + 4..eth + 6].copy_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&e);
    f.extend_from_slice(&frame[ip..]);
    f
}

#[test]
fn extension_headers_do_not_hide_neighbor_discovery() {
    use ipv6::next_header::{DEST_OPTS, FRAGMENT, HOP_BY_HOP, ROUTING};
    let mut f = fabric(true);
    // Destination options with a PadN: 8 bytes.
    let opts = [0, 0, 1, 4, 0, 0, 0, 0];
    // Advertising b's address behind one, two or three extension headers.
    let na = build::neighbor_advert(mac(12), mac(10), ip6(10), ip6(12), ip6(11), mac(10));
    let one = with_extension(&na, DEST_OPTS, &opts);
    let two = with_extension(&one, HOP_BY_HOP, &opts);
    let three = with_extension(&two, ROUTING, &[0, 0, 0, 0, 0, 0, 0, 0]);
    for (i, d) in [&one, &two, &three].into_iter().enumerate() {
        assert!(f.inject(f.a, d).is_empty(), "{} headers", i + 1);
    }
    assert_eq!(drops(&f, f.a, DropReason::SpoofedNd), 3);
    // Its own advertisement behind one passes (flooded: c is not learned).
    let own = build::neighbor_advert(mac(12), mac(10), ip6(10), ip6(12), ip6(10), mac(10));
    assert!(!f
        .inject(f.a, &with_extension(&own, DEST_OPTS, &opts))
        .is_empty());
    // A fragmented NS (the first fragment of two), even its own: RFC 6980.
    let ns = build::neighbor_solicit(mac(10), ip6(10), ip6(11));
    let first = with_extension(&ns, FRAGMENT, &[0, 0, 0, 1, 0, 0, 0, 7]);
    assert!(f.inject(f.a, &first).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::Malformed), 1);
    // A chain running past the packet, and one too long to be a packet.
    let mut cut = with_extension(&ns, DEST_OPTS, &opts);
    cut[14 + ipv6::HEADER_LEN + 1] = 200;
    assert!(f.inject(f.a, &cut).is_empty());
    let mut long = ns.clone();
    for _ in 0..=ipv6::MAX_EXTENSION_HEADERS {
        long = with_extension(&long, DEST_OPTS, &opts);
    }
    assert!(f.inject(f.a, &long).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::Malformed), 3);
    // `::` with UDP behind hop-by-hop is still not DAD.
    let udp = build::udp6(
        mac(11),
        mac(10),
        (Ipv6Addr::UNSPECIFIED, 1),
        (ip6(11), 2),
        b"x",
    );
    assert!(f
        .inject(f.a, &with_extension(&udp, HOP_BY_HOP, &opts))
        .is_empty());
    assert_eq!(drops(&f, f.a, DropReason::SpoofedIp), 1);
    // UDP between endpoints behind destination options is switched.
    let d = build::udp6(mac(11), mac(10), (ip6(10), 1), (ip6(11), 2), b"x");
    assert!(ports(&f.inject(f.a, &with_extension(&d, DEST_OPTS, &opts))).contains(&f.b));
}

#[test]
fn icc_off_blocks_ipv6_between_endpoints_but_not_the_gateway() {
    let mut f = fabric(false);
    let d = build::udp6(mac(11), mac(10), (ip6(10), 1), (ip6(11), 2), b"x");
    assert!(f.inject(f.a, &d).is_empty());
    let ns = build::neighbor_solicit(mac(10), ip6(10), ip6(11));
    assert!(f.inject(f.a, &ns).is_empty());
    assert_eq!(drops(&f, f.a, DropReason::IccDisabled), 2);
    let ns = build::neighbor_solicit(mac(10), ip6(10), ip6(1));
    assert_eq!(ports(&f.inject(f.a, &ns)), vec![f.a]);
    let req = build::icmpv6_echo(false, gw(), mac(10), ip6(10), ip6(1), 7, 1, b"abc");
    assert_eq!(ports(&f.inject(f.a, &req)), vec![f.a]);
}

#[test]
fn a_network_without_ipv6_has_no_ipv6_gateway() {
    let m = MemSwitch::new(SwitchConfig::default());
    let net = m
        .switch
        .add_network(NetworkConfig::new(
            "v4",
            Ipv4Addr::new(10, 1, 0, 0),
            24,
            ip(1),
        ))
        .unwrap();
    let a = m
        .switch
        .add_port(PortConfig::endpoint("a", net, mac(10), ip(10)))
        .unwrap();
    let mut m = m;
    let ns = build::neighbor_solicit(mac(10), ll(10), link_local_of(gw()));
    let out = m.inject(0, a, VnetHdr::default(), &ns);
    assert!(out.is_empty(), "nothing answers (and nobody else is there)");
}

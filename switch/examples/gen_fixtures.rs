//! Writes the pcap fixtures: `cargo run -p tapnet-switch --example
//! gen_fixtures -- pcap-fixtures`.
//!
//! Each case is a topology, the frames that enter the switch and the frames
//! the switch must send, **written by hand from the forwarding rules** with
//! the frame builders. Nothing here runs the switch: the root test
//! `tests/pcap_fixtures.rs` replays `in.pcapng` through `tapnet replay`
//! and compares with `expected.pcapng`.
//!
//! Every case directory gets `topology.toml`, `in.pcapng`,
//! `expected.pcapng` and a one-line `README`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use tapnet_switch::build;
use tapnet_switch::pcapng::Writer;
use tapnet_switch::wire::arp::ArpOp;
use tapnet_switch::wire::ipv6::{icmpv6, multicast_mac, solicited_node};
use tapnet_switch::wire::vnet::{F_NEEDS_CSUM, GSO_TCPV4};
use tapnet_switch::wire::{ipv4, EtherType, EthernetAddress, VnetHdr};
use tapnet_switch::{gateway_mac, link_local_of};

// ------------------------------------------------------------ the model

struct Net {
    name: &'static str,
    subnet: &'static str,
    gateway: Ipv4Addr,
    icc: bool,
    mtu: u32,
    /// `subnet6` and, if written out, `gateway6` (else the subnet's ::1).
    v6: Option<(&'static str, Option<Ipv6Addr>)>,
}

struct Port {
    name: &'static str,
    network: &'static str,
    /// `Some` for a spoof-checked endpoint, `None` for an unchecked port.
    addr: Option<(EthernetAddress, Ipv4Addr)>,
    /// The endpoint's IPv6 address (`addr` must be `Some`).
    ip6: Option<Ipv6Addr>,
    max_macs: Option<u32>,
}

/// A frame on a port at a time: entering (input) or leaving (expected).
struct Frame {
    port: &'static str,
    ts_ns: u64,
    meta: VnetHdr,
    data: Vec<u8>,
}

pub struct Case {
    pub dir: &'static str,
    readme: &'static str,
    /// `(aging_secs, max_macs_per_port)`.
    switch: Option<(u32, u32)>,
    nets: Vec<Net>,
    ports: Vec<Port>,
    input: Vec<Frame>,
    expected: Vec<Frame>,
}

/// 2023-11-14T22:13:20Z: a plausible capture date for Wireshark.
const T0_NS: u64 = 1_700_000_000 * 1_000_000_000;

/// `T0 + ms` milliseconds.
fn at(ms: u64) -> u64 {
    T0_NS + ms * 1_000_000
}

fn on(port: &'static str, ts_ns: u64, data: Vec<u8>) -> Frame {
    Frame {
        port,
        ts_ns,
        meta: VnetHdr::default(),
        data,
    }
}

fn net(name: &'static str, subnet: &'static str, gateway: [u8; 4]) -> Net {
    Net {
        name,
        subnet,
        gateway: gateway.into(),
        icc: true,
        mtu: 1500,
        v6: None,
    }
}

fn endpoint(name: &'static str, network: &'static str, ep: Ep) -> Port {
    Port {
        name,
        network,
        addr: Some((ep.mac, ep.ip)),
        ip6: None,
        max_macs: None,
    }
}

fn unchecked(name: &'static str, network: &'static str) -> Port {
    Port {
        name,
        network,
        addr: None,
        ip6: None,
        max_macs: None,
    }
}

/// A host's addresses.
#[derive(Clone, Copy)]
struct Ep {
    mac: EthernetAddress,
    ip: Ipv4Addr,
}

fn ep(mac_byte: u8, ip: [u8; 4]) -> Ep {
    Ep {
        mac: EthernetAddress([0x02, 0, 0, 0, 0, mac_byte]),
        ip: ip.into(),
    }
}

// Addresses used throughout: network "front" 10.1.0.0/24 and "back"
// 10.2.0.0/24, gateways .1, MACs 02:00:00:00:00:xx.
const FRONT_GW: [u8; 4] = [10, 1, 0, 1];
const BACK_GW: [u8; 4] = [10, 2, 0, 1];

fn front() -> Net {
    net("front", "10.1.0.0/24", FRONT_GW)
}

fn back() -> Net {
    net("back", "10.2.0.0/24", BACK_GW)
}

fn a() -> Ep {
    ep(0x0a, [10, 1, 0, 10])
}
fn b() -> Ep {
    ep(0x0b, [10, 1, 0, 11])
}
fn c() -> Ep {
    ep(0x0c, [10, 1, 0, 12])
}
/// Endpoints of "back".
fn x() -> Ep {
    ep(0x2a, [10, 2, 0, 10])
}
fn y() -> Ep {
    ep(0x2b, [10, 2, 0, 11])
}

fn gw_front() -> Ep {
    let ip = Ipv4Addr::from(FRONT_GW);
    Ep {
        mac: gateway_mac(ip),
        ip,
    }
}

// ------------------------------------------------------ frame shortcuts

/// Broadcast who-has `target` from `from`.
fn who_has(from: Ep, target: Ep) -> Vec<u8> {
    build::arp_request(from.mac, from.ip, target.ip)
}

/// Unicast ARP reply `from` → `to`.
fn is_at(from: Ep, to: Ep) -> Vec<u8> {
    build::arp(ArpOp::Reply, to.mac, from.mac, from.ip, to.mac, to.ip)
}

/// A UDP datagram `from` → `to` (port 5000 → 6000) with `data`.
fn udp(from: Ep, to: Ep, data: &[u8]) -> Vec<u8> {
    build::udp(to.mac, from.mac, (from.ip, 5000), (to.ip, 6000), data)
}

/// A broadcast UDP datagram to 255.255.255.255 (e.g. DHCP-like chatter).
fn udp_broadcast(from: Ep, data: &[u8]) -> Vec<u8> {
    build::udp(
        EthernetAddress::BROADCAST,
        from.mac,
        (from.ip, 5000),
        (Ipv4Addr::BROADCAST, 6000),
        data,
    )
}

const PING_DATA: &[u8] = b"tapnet fixture ping";

fn ping(from: Ep, to: Ep, seq: u16) -> Vec<u8> {
    build::icmp_echo(
        false, to.mac, from.mac, from.ip, to.ip, 0x1234, seq, PING_DATA,
    )
}

fn pong(from: Ep, to: Ep, seq: u16) -> Vec<u8> {
    build::icmp_echo(
        true, to.mac, from.mac, from.ip, to.ip, 0x1234, seq, PING_DATA,
    )
}

// ---------------------------------------------------------------- cases

fn gateway_arp_ping() -> Case {
    let gw = gw_front();
    Case {
        dir: "gateway-arp-ping",
        readme: "The gateway answers ARP for its address (broadcast and unicast refresh) and ping, only to the asker; b hears nothing.",
        switch: None,
        nets: vec![front()],
        ports: vec![endpoint("a", "front", a()), endpoint("b", "front", b())],
        input: vec![
            on("a", at(0), who_has(a(), gw)),
            on("a", at(1), ping(a(), gw, 1)),
            on(
                "a",
                at(2),
                build::arp(ArpOp::Request, gw.mac, a().mac, a().ip, gw.mac, gw.ip),
            ),
            on("a", at(3), ping(a(), gw, 2)),
        ],
        expected: vec![
            // The reply from the gateway MAC 02:42:0a:01:00:01 to a.
            on("a", at(0), is_at(gw, a())),
            on("a", at(1), pong(gw, a(), 1)),
            on("a", at(2), is_at(gw, a())),
            on("a", at(3), pong(gw, a(), 2)),
        ],
    }
}

fn learning_unicast() -> Case {
    Case {
        dir: "learning-unicast",
        readme: "a's first frame to b floods (b and c); b's reply goes only to a; later frames only to the learned port.",
        switch: None,
        nets: vec![front()],
        ports: vec![
            endpoint("a", "front", a()),
            endpoint("b", "front", b()),
            endpoint("c", "front", c()),
        ],
        input: vec![
            on("a", at(0), udp(a(), b(), b"hello b")),
            on("b", at(1), udp(b(), a(), b"hello a")),
            on("a", at(2), udp(a(), b(), b"again b")),
            on("b", at(3), udp(b(), a(), b"again a")),
        ],
        expected: vec![
            // b unknown: flooded in port order.
            on("b", at(0), udp(a(), b(), b"hello b")),
            on("c", at(0), udp(a(), b(), b"hello b")),
            on("a", at(1), udp(b(), a(), b"hello a")),
            on("b", at(2), udp(a(), b(), b"again b")),
            on("a", at(3), udp(b(), a(), b"again a")),
        ],
    }
}

fn broadcast_two_networks() -> Case {
    Case {
        dir: "broadcast-two-networks",
        readme: "Broadcasts (ARP, UDP) reach every other port of the sender's network and none of the other network.",
        switch: None,
        nets: vec![front(), back()],
        ports: vec![
            endpoint("a", "front", a()),
            endpoint("b", "front", b()),
            endpoint("x", "back", x()),
            endpoint("y", "back", y()),
        ],
        input: vec![
            on("a", at(0), who_has(a(), b())),
            on("x", at(1), who_has(x(), y())),
            on("b", at(2), udp_broadcast(b(), b"front broadcast")),
        ],
        expected: vec![
            on("b", at(0), who_has(a(), b())),
            on("y", at(1), who_has(x(), y())),
            on("a", at(2), udp_broadcast(b(), b"front broadcast")),
        ],
    }
}

fn networks_isolated() -> Case {
    Case {
        dir: "networks-isolated",
        readme: "x (back) is learned in back only: a (front) sending to x's MAC is flooded in front (to up1), never to back.",
        switch: None,
        nets: vec![front(), back()],
        ports: vec![
            endpoint("a", "front", a()),
            unchecked("up1", "front"),
            endpoint("x", "back", x()),
            unchecked("up2", "back"),
        ],
        input: vec![
            // x is learned on "back".
            on("x", at(0), who_has(x(), y())),
            // a, on "front", to x's MAC and address.
            on("a", at(1), udp(a(), x(), b"across?")),
            on("up1", at(2), udp(b(), x(), b"across from up1?")),
        ],
        expected: vec![
            on("up2", at(0), who_has(x(), y())),
            on("up1", at(1), udp(a(), x(), b"across?")),
            on("a", at(2), udp(b(), x(), b"across from up1?")),
        ],
    }
}

fn icc_off() -> Case {
    let gw = gw_front();
    let mut n = front();
    n.icc = false;
    Case {
        dir: "icc-off",
        readme: "With icc = false, ARP between a and b passes but IP between them (unicast or broadcast) is dropped; ping to the gateway is still answered.",
        switch: None,
        nets: vec![n],
        ports: vec![endpoint("a", "front", a()), endpoint("b", "front", b())],
        input: vec![
            on("a", at(0), who_has(a(), b())),
            on("b", at(1), is_at(b(), a())),
            on("a", at(2), udp(a(), b(), b"icc is off")),
            on("a", at(3), ping(a(), b(), 1)),
            on("b", at(4), udp_broadcast(b(), b"icc is off")),
            on("a", at(5), ping(a(), gw, 1)),
        ],
        expected: vec![
            on("b", at(0), who_has(a(), b())),
            on("a", at(1), is_at(b(), a())),
            on("a", at(5), pong(gw, a(), 1)),
        ],
    }
}

fn spoofed_mac() -> Case {
    let mut forged = a();
    forged.mac = EthernetAddress([0x02, 0, 0, 0, 0, 0xee]);
    Case {
        dir: "spoofed-mac",
        readme: "a sends from a MAC that is not its own (with its own IP): dropped; the same frame from its own MAC passes.",
        switch: None,
        nets: vec![front()],
        ports: vec![endpoint("a", "front", a()), endpoint("b", "front", b())],
        input: vec![
            on("a", at(0), udp_broadcast(forged, b"forged mac")),
            on("a", at(1), udp(forged, b(), b"forged mac")),
            // b's own MAC, from a's port.
            on("a", at(2), udp(b(), c(), b"b's mac")),
            on("a", at(3), udp_broadcast(a(), b"real mac")),
        ],
        expected: vec![on("b", at(3), udp_broadcast(a(), b"real mac"))],
    }
}

fn spoofed_ip() -> Case {
    let mut forged = a();
    forged.ip = Ipv4Addr::new(10, 1, 0, 99);
    let mut forged_gw = a();
    forged_gw.ip = FRONT_GW.into();
    Case {
        dir: "spoofed-ip",
        readme: "a sends IPv4 from its MAC but another source address (10.1.0.99, the gateway's, b's): dropped; its own address passes.",
        switch: None,
        nets: vec![front()],
        ports: vec![endpoint("a", "front", a()), endpoint("b", "front", b())],
        input: vec![
            on("a", at(0), udp(forged, b(), b"forged ip")),
            on("a", at(1), udp_broadcast(forged_gw, b"forged ip")),
            on(
                "a",
                at(2),
                build::udp(b().mac, a().mac, (b().ip, 1), (b().ip, 2), b"b's ip"),
            ),
            on("a", at(3), udp(a(), b(), b"real ip")),
        ],
        expected: vec![
            // b unknown: flooded, and b is the only other port.
            on("b", at(3), udp(a(), b(), b"real ip")),
        ],
    }
}

fn spoofed_arp() -> Case {
    let mut claims_b_ip = a();
    claims_b_ip.ip = b().ip;
    Case {
        dir: "spoofed-arp",
        readme: "ARP from a claiming b's IP, or with a sender MAC other than a's, is dropped; an ARP probe (sender 0.0.0.0) and a's own ARP pass.",
        switch: None,
        nets: vec![front()],
        ports: vec![endpoint("a", "front", a()), endpoint("b", "front", b())],
        input: vec![
            // Gratuitous ARP claiming b's address.
            on("a", at(0), who_has(claims_b_ip, b())),
            // Ethernet source and sender IP are a's, sender MAC is b's.
            on(
                "a",
                at(1),
                arp_with_eth_src(
                    a().mac,
                    ArpOp::Request,
                    Ep {
                        mac: b().mac,
                        ip: a().ip,
                    },
                    b(),
                ),
            ),
            // ARP probe (duplicate address detection): sender IP 0.0.0.0.
            on(
                "a",
                at(2),
                build::arp_request(a().mac, Ipv4Addr::UNSPECIFIED, a().ip),
            ),
            on("a", at(3), who_has(a(), b())),
        ],
        expected: vec![
            on(
                "b",
                at(2),
                build::arp_request(a().mac, Ipv4Addr::UNSPECIFIED, a().ip),
            ),
            on("b", at(3), who_has(a(), b())),
        ],
    }
}

/// An ARP frame whose Ethernet source differs from the ARP sender.
fn arp_with_eth_src(eth_src: EthernetAddress, op: ArpOp, sender: Ep, target: Ep) -> Vec<u8> {
    let mut f = build::arp(op, target.mac, sender.mac, sender.ip, target.mac, target.ip);
    f[6..12].copy_from_slice(&eth_src.0);
    f
}

fn mac_move() -> Case {
    // A host behind the uplinks (e.g. a VM bridged in), moving from up1 to up2.
    let h = ep(0x77, [10, 1, 0, 77]);
    Case {
        dir: "mac-move",
        readme: "Host h is learned on unchecked port up1, then shows up on up2: traffic to h follows it to up2.",
        switch: None,
        nets: vec![front()],
        ports: vec![
            endpoint("a", "front", a()),
            unchecked("up1", "front"),
            unchecked("up2", "front"),
            unchecked("up3", "front"),
        ],
        input: vec![
            on("up1", at(0), udp_broadcast(h, b"h on up1")),
            on("a", at(1), udp(a(), h, b"to h")),
            on("up2", at(2), udp_broadcast(h, b"h on up2")),
            on("a", at(3), udp(a(), h, b"to h again")),
        ],
        expected: vec![
            on("a", at(0), udp_broadcast(h, b"h on up1")),
            on("up2", at(0), udp_broadcast(h, b"h on up1")),
            on("up3", at(0), udp_broadcast(h, b"h on up1")),
            on("up1", at(1), udp(a(), h, b"to h")),
            on("a", at(2), udp_broadcast(h, b"h on up2")),
            on("up1", at(2), udp_broadcast(h, b"h on up2")),
            on("up3", at(2), udp_broadcast(h, b"h on up2")),
            on("up2", at(3), udp(a(), h, b"to h again")),
        ],
    }
}

fn vlan_tagged() -> Case {
    let h = ep(0x77, [10, 1, 0, 77]);
    // 802.1Q tag: VLAN 100, inner EtherType IPv4, then an IPv4/UDP packet.
    let inner = &udp_broadcast(h, b"tagged")[14..];
    let mut tagged = vec![0x00, 100, 0x08, 0x00];
    tagged.extend_from_slice(inner);
    Case {
        dir: "vlan-tagged",
        readme: "An 802.1Q-tagged frame is dropped even from an unchecked port; the same frame untagged passes.",
        switch: None,
        nets: vec![front()],
        ports: vec![unchecked("up", "front"), endpoint("a", "front", a())],
        input: vec![
            on(
                "up",
                at(0),
                build::ethernet(EthernetAddress::BROADCAST, h.mac, EtherType::Vlan, &tagged),
            ),
            on("up", at(1), udp_broadcast(h, b"tagged")),
        ],
        expected: vec![on("a", at(1), udp_broadcast(h, b"tagged"))],
    }
}

fn malformed() -> Case {
    let good = who_has(a(), b());
    // ARP with hardware type 6 (IEEE 802) instead of Ethernet.
    let mut bad_htype = good.clone();
    bad_htype[15] = 6;
    // ARP cut to 20 bytes (28 needed).
    let short_arp = good[..14 + 20].to_vec();
    // IPv4 header cut to 12 bytes.
    let full = udp_broadcast(a(), b"x");
    let short_ip = full[..14 + 12].to_vec();
    // IPv4 with IHL 4 (< 5).
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    // IPv4 version 6 in an IPv4 EtherType.
    let mut bad_version = full.clone();
    bad_version[14] = 0x65;
    Case {
        dir: "malformed",
        readme: "Runts (10 and 13 bytes), truncated or malformed ARP and IPv4 are dropped; a well-formed frame afterwards passes.",
        switch: None,
        nets: vec![front()],
        ports: vec![endpoint("a", "front", a()), endpoint("b", "front", b())],
        input: vec![
            on("a", at(0), full[..10].to_vec()),
            on("a", at(1), full[..13].to_vec()),
            on("a", at(2), short_ip),
            on("a", at(3), bad_ihl),
            on("a", at(4), bad_version),
            on("a", at(5), short_arp),
            on("a", at(6), bad_htype),
            // Just an Ethernet header saying IPv4.
            on("a", at(7), full[..14].to_vec()),
            on("a", at(8), good.clone()),
        ],
        expected: vec![on("b", at(8), good)],
    }
}

fn jumbo_mtu() -> Case {
    // 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + data = 9000 bytes.
    let jumbo_data = vec![0xab; 9000 - 42];
    let x9000 = udp_broadcast(x(), &jumbo_data);
    let a9000 = udp_broadcast(a(), &jumbo_data);
    let a1514 = udp_broadcast(a(), &jumbo_data[..1514 - 42]);
    let a1515 = udp_broadcast(a(), &jumbo_data[..1515 - 42]);
    assert_eq!((x9000.len(), a1514.len()), (9000, 1514));
    let mut jumbo = back();
    jumbo.name = "jumbo";
    jumbo.mtu = 9000;
    Case {
        dir: "jumbo-mtu",
        readme: "A 9000-byte frame passes on the MTU-9000 network and is dropped on the MTU-1500 one, where 1514 bytes pass and 1515 do not.",
        switch: None,
        nets: vec![front(), jumbo],
        ports: vec![
            endpoint("a", "front", a()),
            endpoint("b", "front", b()),
            endpoint("x", "jumbo", x()),
            endpoint("y", "jumbo", y()),
        ],
        input: vec![
            on("x", at(0), x9000.clone()),
            on("a", at(1), a9000),
            on("a", at(2), a1514.clone()),
            on("a", at(3), a1515),
        ],
        expected: vec![on("y", at(0), x9000), on("b", at(2), a1514)],
    }
}

/// A TCP/IPv4 frame of `len` bytes with a 32-byte TCP header (timestamps
/// option), checksum left to the device (as with TSO).
fn tcp_superframe(from: Ep, to: Ep, len: usize) -> Vec<u8> {
    let mut tcp = vec![0u8; len - 14 - 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes()); // seq
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes()); // ack
    tcp[12] = 8 << 4; // data offset: 32 bytes
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 1]); // NOP NOP TS
    for (i, b) in tcp[32..].iter_mut().enumerate() {
        *b = i as u8;
    }
    build::ipv4(to.mac, from.mac, from.ip, to.ip, ipv4::protocol::TCP, &tcp)
}

fn gso_superframe() -> Case {
    let tso = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let big = tcp_superframe(a(), b(), 20_000);
    Case {
        dir: "gso-superframe",
        readme: "A 20000-byte TCPv4 GSO super-frame crosses the MTU-1500 network untouched with its vnet_hdr; without GSO metadata it is oversize and dropped.",
        switch: None,
        nets: vec![front()],
        ports: vec![
            endpoint("a", "front", a()),
            endpoint("b", "front", b()),
            endpoint("c", "front", c()),
        ],
        input: vec![
            // b announces itself (learned).
            on("b", at(0), who_has(b(), a())),
            Frame {
                port: "a",
                ts_ns: at(1),
                meta: tso,
                data: big.clone(),
            },
            on("a", at(2), big.clone()),
        ],
        expected: vec![
            on("a", at(0), who_has(b(), a())),
            on("c", at(0), who_has(b(), a())),
            Frame {
                port: "b",
                ts_ns: at(1),
                meta: tso,
                data: big,
            },
        ],
    }
}

fn aging() -> Case {
    Case {
        dir: "aging",
        readme: "aging_secs = 10: b is learned at 0 s; at 10.5 s frames to b still go only to b; at 11 s b is forgotten and the frame floods.",
        switch: Some((10, 64)),
        nets: vec![front()],
        ports: vec![
            endpoint("a", "front", a()),
            endpoint("b", "front", b()),
            endpoint("c", "front", c()),
        ],
        input: vec![
            on("b", at(0), who_has(b(), a())),
            on("a", at(1_000), udp(a(), b(), b"1 s")),
            on("a", at(10_500), udp(a(), b(), b"10.5 s")),
            on("a", at(11_000), udp(a(), b(), b"11 s")),
            // Now b speaks again and is learned anew.
            on("b", at(11_001), udp(b(), a(), b"back")),
            on("a", at(11_002), udp(a(), b(), b"11.002 s")),
        ],
        expected: vec![
            on("a", at(0), who_has(b(), a())),
            on("c", at(0), who_has(b(), a())),
            on("b", at(1_000), udp(a(), b(), b"1 s")),
            on("b", at(10_500), udp(a(), b(), b"10.5 s")),
            on("b", at(11_000), udp(a(), b(), b"11 s")),
            on("c", at(11_000), udp(a(), b(), b"11 s")),
            on("a", at(11_001), udp(b(), a(), b"back")),
            on("b", at(11_002), udp(a(), b(), b"11.002 s")),
        ],
    }
}

fn mac_limit() -> Case {
    let h1 = ep(0x71, [10, 1, 0, 71]);
    let h2 = ep(0x72, [10, 1, 0, 72]);
    let h3 = ep(0x73, [10, 1, 0, 73]);
    let mut up = unchecked("up", "front");
    up.max_macs = Some(2);
    Case {
        dir: "mac-limit",
        readme: "Unchecked port up may learn 2 MACs (max_macs = 2): h1 and h2 pass, h3 is dropped, h1 again passes; traffic to h3 floods.",
        switch: None,
        nets: vec![front()],
        ports: vec![up, endpoint("a", "front", a())],
        input: vec![
            on("up", at(0), udp_broadcast(h1, b"h1")),
            on("up", at(1), udp_broadcast(h2, b"h2")),
            on("up", at(2), udp_broadcast(h3, b"h3")),
            on("up", at(3), udp(h1, a(), b"h1 again")),
            on("a", at(4), udp(a(), h3, b"to h3")),
            on("a", at(5), udp(a(), h1, b"to h1")),
        ],
        expected: vec![
            on("a", at(0), udp_broadcast(h1, b"h1")),
            on("a", at(1), udp_broadcast(h2, b"h2")),
            // a is not learned yet: h1's unicast to a floods to a alone.
            on("a", at(3), udp(h1, a(), b"h1 again")),
            on("up", at(4), udp(a(), h3, b"to h3")),
            on("up", at(5), udp(a(), h1, b"to h1")),
        ],
    }
}

// ------------------------------------------------------------------ IPv6

// "front" is dual-stack in these cases: 2001:db8:1::/64, gateway ::1 (and
// the link-local fe80::42:aff:fe01:1 of its MAC 02:42:0a:01:00:01);
// endpoints a, b, c get ::a, ::b, ::c beside their IPv4 addresses.
const SUBNET6: &str = "2001:db8:1::/64";

fn ip6(d: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, d)
}

/// The gateway's global IPv6 address.
fn gw6() -> Ipv6Addr {
    ip6(1)
}

/// The gateway's link-local address.
fn gw_ll() -> Ipv6Addr {
    link_local_of(gw_front().mac)
}

/// An endpoint's global IPv6 address (its IPv4 address's last byte: a = ::a).
fn v6(e: Ep) -> Ipv6Addr {
    ip6(u16::from(e.ip.octets()[3]))
}

/// An endpoint's link-local address (EUI-64 of its MAC).
fn ll(e: Ep) -> Ipv6Addr {
    link_local_of(e.mac)
}

fn front6(icc: bool, gateway6: Option<Ipv6Addr>) -> Net {
    let mut n = front();
    n.icc = icc;
    n.v6 = Some((SUBNET6, gateway6));
    n
}

fn endpoint6(name: &'static str, e: Ep) -> Port {
    let mut p = endpoint(name, "front", e);
    p.ip6 = Some(v6(e));
    p
}

/// A UDP datagram over IPv6 `src` → `dst` between `from`'s and `to`'s MACs.
fn udp6(from: Ep, src: Ipv6Addr, to: Ep, dst: Ipv6Addr, data: &[u8]) -> Vec<u8> {
    build::udp6(to.mac, from.mac, (src, 5000), (dst, 6000), data)
}

/// A Neighbor Solicitation from `from` (source `src`) for `target`.
fn ns(from: Ep, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    build::neighbor_solicit(from.mac, src, target)
}

/// The same solicitation with a source link-layer address option that is
/// not the sender's.
fn ns_lladdr(from: Ep, src: Ipv6Addr, target: Ipv6Addr, lladdr: EthernetAddress) -> Vec<u8> {
    let mut m = vec![icmpv6::NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[icmpv6::OPT_SOURCE_LLADDR, 1]);
    m.extend_from_slice(&lladdr.0);
    let group = solicited_node(target);
    build::ipv6(
        EthernetAddress(multicast_mac(group)),
        from.mac,
        src,
        group,
        58,
        255,
        &m,
        Some(2),
    )
}

/// A Neighbor Advertisement (RFC 4861 4.4) written out field by field:
/// `target` is at `lladdr`, from `src_mac`/`src` to `dst_mac`/`dst`.
#[allow(clippy::too_many_arguments)]
/// `frame` (Ethernet, IPv6) with an 8-byte destination-options header
/// (one PadN) in front of its payload.
fn behind_dest_opts(frame: Vec<u8>) -> Vec<u8> {
    const DEST_OPTS: u8 = 60;
    let (eth, ip) = (14, 14 + 40);
    let mut f = frame[..ip].to_vec();
    let ext = [f[eth + 6], 0, 1, 4, 0, 0, 0, 0];
    f[eth + 6] = DEST_OPTS;
    let len = u16::from_be_bytes([f[eth + 4], f[eth + 5]]) + ext.len() as u16;
    f[eth + 4..eth + 6].copy_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&ext);
    f.extend_from_slice(&frame[ip..]);
    f
}

fn na(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    flags: u8,
    target: Ipv6Addr,
    lladdr: EthernetAddress,
) -> Vec<u8> {
    let mut m = vec![icmpv6::NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[icmpv6::OPT_TARGET_LLADDR, 1]);
    m.extend_from_slice(&lladdr.0);
    build::ipv6(dst_mac, src_mac, src, dst, 58, 255, &m, Some(2))
}

/// The gateway's answer to `to`'s solicitation (from `src`) for its address
/// `target`: router, solicited and override to the solicitor; for duplicate
/// address detection (`src` = `::`), router and override to all nodes.
fn gw_na(to: Ep, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let r_o = icmpv6::NA_ROUTER | icmpv6::NA_OVERRIDE;
    let gw = gw_front().mac;
    if src.is_unspecified() {
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let mac = EthernetAddress(multicast_mac(all));
        na(mac, gw, target, all, r_o, target, gw)
    } else {
        let flags = r_o | icmpv6::NA_SOLICITED;
        na(to.mac, gw, target, src, flags, target, gw)
    }
}

/// An endpoint's own solicited advertisement to `to`.
fn own_na(from: Ep, to: Ep) -> Vec<u8> {
    na(
        to.mac,
        from.mac,
        v6(from),
        v6(to),
        icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE,
        v6(from),
        from.mac,
    )
}

fn ping6(from: Ep, src: Ipv6Addr, dst_mac: EthernetAddress, dst: Ipv6Addr, seq: u16) -> Vec<u8> {
    build::icmpv6_echo(false, dst_mac, from.mac, src, dst, 0x1234, seq, PING_DATA)
}

fn pong6(src: Ipv6Addr, to: Ep, dst: Ipv6Addr, seq: u16) -> Vec<u8> {
    let gw = gw_front().mac;
    build::icmpv6_echo(true, to.mac, gw, src, dst, 0x1234, seq, PING_DATA)
}

fn ipv6_ndp_gateway() -> Case {
    let gw = gw_front().mac;
    let un = Ipv6Addr::UNSPECIFIED;
    Case {
        dir: "ipv6-ndp-gateway",
        readme: "Dual-stack network: the switch answers NS for the gateway's global and link-local addresses (NA flags R|S|O to the solicitor; DAD of the gateway's address answered R|O to ff02::1) and echo to both; an endpoint's DAD and NS for another endpoint are flooded; IPv6 unicast between endpoints goes only to the learned port.",
        switch: None,
        nets: vec![front6(true, Some(gw6()))],
        ports: vec![endpoint6("a", a()), endpoint6("b", b()), endpoint6("c", c())],
        input: vec![
            on("a", at(0), ns(a(), v6(a()), gw6())),
            on("a", at(1), ns(a(), ll(a()), gw_ll())),
            on("b", at(2), ns(b(), un, gw6())),
            on("b", at(3), ns(b(), un, v6(b()))),
            on("a", at(4), ping6(a(), v6(a()), gw, gw6(), 1)),
            on("a", at(5), ping6(a(), ll(a()), gw, gw_ll(), 2)),
            on("a", at(6), ns(a(), v6(a()), v6(b()))),
            on("b", at(7), own_na(b(), a())),
            on("a", at(8), udp6(a(), v6(a()), b(), v6(b()), b"to b over IPv6")),
            on("b", at(9), udp6(b(), ll(b()), a(), ll(a()), b"to a, link-local")),
        ],
        expected: vec![
            on("a", at(0), gw_na(a(), v6(a()), gw6())),
            on("a", at(1), gw_na(a(), ll(a()), gw_ll())),
            on("b", at(2), gw_na(b(), un, gw6())),
            on("a", at(3), ns(b(), un, v6(b()))),
            on("c", at(3), ns(b(), un, v6(b()))),
            on("a", at(4), pong6(gw6(), a(), v6(a()), 1)),
            on("a", at(5), pong6(gw_ll(), a(), ll(a()), 2)),
            on("b", at(6), ns(a(), v6(a()), v6(b()))),
            on("c", at(6), ns(a(), v6(a()), v6(b()))),
            on("a", at(7), own_na(b(), a())),
            on("b", at(8), udp6(a(), v6(a()), b(), v6(b()), b"to b over IPv6")),
            on("a", at(9), udp6(b(), ll(b()), a(), ll(a()), b"to a, link-local")),
        ],
    }
}

fn ipv6_spoofing() -> Case {
    let foreign: Ipv6Addr = "2001:db8:2::10".parse().unwrap();
    let other_mac = EthernetAddress([0x02, 0, 0, 0, 0, 0xee]);
    Case {
        dir: "ipv6-spoofing",
        readme: "a sends IPv6 from a foreign global address, b's address, b's link-local, and :: on UDP (drop reason spoofed_ip), an NA for b's address, an NA and an NS with a link-layer address not its own, and last an NA for b's address behind a destination-options header (spoofed_nd): all dropped; its own address and link-local, and its DAD from ::, pass (flooded: b never spoke).",
        switch: None,
        nets: vec![front6(true, Some(gw6()))],
        ports: vec![endpoint6("a", a()), endpoint6("b", b()), endpoint6("c", c())],
        input: vec![
            on("a", at(0), udp6(a(), foreign, b(), v6(b()), b"foreign source")),
            on("a", at(1), udp6(a(), v6(b()), c(), v6(c()), b"b's source")),
            on("a", at(2), udp6(a(), ll(b()), c(), ll(c()), b"b's link-local")),
            on("a", at(3), udp6(a(), Ipv6Addr::UNSPECIFIED, b(), v6(b()), b"::")),
            on(
                "a",
                at(4),
                na(c().mac, a().mac, v6(a()), v6(c()), icmpv6::NA_OVERRIDE, v6(b()), a().mac),
            ),
            on(
                "a",
                at(5),
                na(c().mac, a().mac, v6(a()), v6(c()), icmpv6::NA_OVERRIDE, v6(a()), other_mac),
            ),
            on("a", at(6), ns_lladdr(a(), v6(a()), v6(b()), other_mac)),
            on("a", at(7), ns(a(), Ipv6Addr::UNSPECIFIED, v6(a()))),
            on("a", at(8), udp6(a(), v6(a()), b(), v6(b()), b"real source")),
            on("a", at(9), udp6(a(), ll(a()), b(), ll(b()), b"real link-local")),
            on(
                "a",
                at(10),
                behind_dest_opts(na(
                    c().mac,
                    a().mac,
                    v6(a()),
                    v6(c()),
                    icmpv6::NA_OVERRIDE,
                    v6(b()),
                    a().mac,
                )),
            ),
        ],
        expected: vec![
            on("b", at(7), ns(a(), Ipv6Addr::UNSPECIFIED, v6(a()))),
            on("c", at(7), ns(a(), Ipv6Addr::UNSPECIFIED, v6(a()))),
            on("b", at(8), udp6(a(), v6(a()), b(), v6(b()), b"real source")),
            on("c", at(8), udp6(a(), v6(a()), b(), v6(b()), b"real source")),
            on("b", at(9), udp6(a(), ll(a()), b(), ll(b()), b"real link-local")),
            on("c", at(9), udp6(a(), ll(a()), b(), ll(b()), b"real link-local")),
        ],
    }
}

fn ipv6_icc_off() -> Case {
    let gw = gw_front().mac;
    Case {
        dir: "ipv6-icc-off",
        readme: "Dual-stack network with icc = false (gateway6 left to its default ::1): NS, UDP and echo between a and b over IPv6 are dropped (icc_disabled); NS and echo to the gateway's global and link-local addresses are still answered.",
        switch: None,
        nets: vec![front6(false, None)],
        ports: vec![endpoint6("a", a()), endpoint6("b", b())],
        input: vec![
            on("a", at(0), ns(a(), v6(a()), v6(b()))),
            on("a", at(1), udp6(a(), v6(a()), b(), v6(b()), b"icc is off")),
            on("b", at(2), udp6(b(), ll(b()), a(), ll(a()), b"icc is off")),
            on("b", at(3), ping6(b(), v6(b()), a().mac, v6(a()), 1)),
            on("a", at(4), ns(a(), v6(a()), gw6())),
            on("b", at(5), ns(b(), ll(b()), gw_ll())),
            on("a", at(6), ping6(a(), v6(a()), gw, gw6(), 1)),
            on("b", at(7), ping6(b(), ll(b()), gw, gw_ll(), 2)),
        ],
        expected: vec![
            on("a", at(4), gw_na(a(), v6(a()), gw6())),
            on("b", at(5), gw_na(b(), ll(b()), gw_ll())),
            on("a", at(6), pong6(gw6(), a(), v6(a()), 1)),
            on("b", at(7), pong6(gw_ll(), b(), ll(b()), 2)),
        ],
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        gateway_arp_ping(),
        learning_unicast(),
        broadcast_two_networks(),
        networks_isolated(),
        icc_off(),
        spoofed_mac(),
        spoofed_ip(),
        spoofed_arp(),
        mac_move(),
        vlan_tagged(),
        malformed(),
        jumbo_mtu(),
        gso_superframe(),
        aging(),
        mac_limit(),
        ipv6_ndp_gateway(),
        ipv6_spoofing(),
        ipv6_icc_off(),
    ]
}

// ------------------------------------------------------------- writing

impl Case {
    fn topology_toml(&self) -> String {
        let mut s = String::new();
        if let Some((aging, max)) = self.switch {
            let _ = writeln!(
                s,
                "[switch]\naging_secs = {aging}\nmax_macs_per_port = {max}\n"
            );
        }
        for n in &self.nets {
            let _ = writeln!(
                s,
                "[[network]]\nname = \"{}\"\nsubnet = \"{}\"\ngateway = \"{}\"\nicc = {}\nmtu = {}\n",
                n.name, n.subnet, n.gateway, n.icc, n.mtu
            );
            if let Some((subnet6, gateway6)) = n.v6 {
                s.pop(); // the blank line
                let _ = writeln!(s, "subnet6 = \"{subnet6}\"");
                if let Some(g) = gateway6 {
                    let _ = writeln!(s, "gateway6 = \"{g}\"");
                }
                s.push('\n');
            }
        }
        for p in &self.ports {
            let _ = writeln!(
                s,
                "[[port]]\nname = \"{}\"\nnetwork = \"{}\"",
                p.name, p.network
            );
            if let Some((mac, ip)) = p.addr {
                let _ = writeln!(s, "mac = \"{mac}\"\nip = \"{ip}\"");
            }
            if let Some(a) = p.ip6 {
                let _ = writeln!(s, "ip6 = \"{a}\"");
            }
            if let Some(m) = p.max_macs {
                let _ = writeln!(s, "max_macs = {m}");
            }
            s.push('\n');
        }
        s
    }

    /// A pcapng with one interface per port (topology order) and `frames`.
    fn pcapng(&self, frames: &[Frame]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        for p in &self.ports {
            w.add_interface(p.name).unwrap();
        }
        for f in frames {
            let i = self
                .ports
                .iter()
                .position(|p| p.name == f.port)
                .unwrap_or_else(|| panic!("{}: no port {:?}", self.dir, f.port));
            w.write_frame(i as u32, f.ts_ns, &f.meta, &f.data).unwrap();
        }
        w.into_inner().unwrap()
    }

    pub fn write(&self, root: &Path) -> std::io::Result<()> {
        let dir = root.join(self.dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("topology.toml"), self.topology_toml())?;
        std::fs::write(dir.join("in.pcapng"), self.pcapng(&self.input))?;
        std::fs::write(dir.join("expected.pcapng"), self.pcapng(&self.expected))?;
        std::fs::write(dir.join("README"), format!("{}\n", self.readme))
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "pcap-fixtures".into());
    let root = Path::new(&root);
    for case in cases() {
        if let Err(e) = case.write(root) {
            eprintln!("gen_fixtures: {}: {e}", root.join(case.dir).display());
            std::process::exit(1);
        }
        println!("{}", root.join(case.dir).display());
    }
}

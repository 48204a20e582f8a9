//! Frame builders for tests, fixtures, fuzzing and benchmarks: readable
//! constructors of well-formed frames (checksums filled in).

use crate::wire::{
    arp::{ArpOp, ArpRepr},
    ethernet, ipv4,
    ipv6::{self, icmpv6},
    EtherType, EthernetAddress, EthernetFrame,
};
use core::net::{Ipv4Addr, Ipv6Addr};

/// `02:00:00:00:00:nn`-style MAC from a small number.
pub fn mac(n: u32) -> EthernetAddress {
    let b = n.to_be_bytes();
    EthernetAddress([0x02, 0x00, b[0], b[1], b[2], b[3]])
}

/// An Ethernet frame around `payload`.
pub fn ethernet(
    dst: EthernetAddress,
    src: EthernetAddress,
    ethertype: EtherType,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0; ethernet::HEADER_LEN + payload.len()];
    let mut e = EthernetFrame::new_unchecked(&mut f[..]);
    e.set_dst_addr(dst);
    e.set_src_addr(src);
    e.set_ethertype(ethertype);
    e.payload_mut().copy_from_slice(payload);
    f
}

/// An ARP frame (padded to 60 bytes, as on the wire).
pub fn arp(
    op: ArpOp,
    eth_dst: EthernetAddress,
    sender_hw: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_hw: EthernetAddress,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut p = [0u8; 46];
    ArpRepr {
        operation: op,
        sender_hw,
        sender_ip,
        target_hw,
        target_ip,
    }
    .emit(&mut p);
    ethernet(eth_dst, sender_hw, EtherType::Arp, &p)
}

/// Broadcast who-has `target` from `hw`/`ip`.
pub fn arp_request(hw: EthernetAddress, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp(
        ArpOp::Request,
        EthernetAddress::BROADCAST,
        hw,
        ip,
        EthernetAddress::default(),
        target,
    )
}

/// An IPv4 packet (20-byte header) in an Ethernet frame.
pub fn ipv4(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0; ipv4::MIN_HEADER_LEN + payload.len()];
    ipv4::emit_header(&mut p, src, dst, protocol, payload.len(), 64);
    p[ipv4::MIN_HEADER_LEN..].copy_from_slice(payload);
    ethernet(dst_mac, src_mac, EtherType::Ipv4, &p)
}

/// An ICMP echo request (or reply) with `data`.
#[allow(clippy::too_many_arguments)]
pub fn icmp_echo(
    reply: bool,
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut m = vec![if reply { 0 } else { 8 }, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = crate::wire::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(dst_mac, src_mac, src, dst, ipv4::protocol::ICMP, &m)
}

/// A UDP datagram (checksum filled in).
pub fn udp(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    data: &[u8],
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&src.1.to_be_bytes());
    u.extend_from_slice(&dst.1.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut acc = crate::wire::checksum_sum(0, &src.0.octets());
    acc = crate::wire::checksum_sum(acc, &dst.0.octets());
    acc += u32::from(ipv4::protocol::UDP) + len as u32;
    acc = crate::wire::checksum_sum(acc, &u);
    let c = match crate::wire::checksum_finish(acc) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(dst_mac, src_mac, src.0, dst.0, ipv4::protocol::UDP, &u)
}

/// An IPv6 packet in Ethernet around the upper-layer message `msg`, whose
/// checksum (at `csum_at`, if any) is filled in.
#[allow(clippy::too_many_arguments)]
pub fn ipv6(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    msg: &[u8],
    csum_at: Option<usize>,
) -> Vec<u8> {
    let mut p = vec![0; ipv6::HEADER_LEN + msg.len()];
    ipv6::emit_header(&mut p, src, dst, next_header, msg.len(), hop_limit);
    let m = &mut p[ipv6::HEADER_LEN..];
    m.copy_from_slice(msg);
    if let Some(at) = csum_at {
        m[at..at + 2].fill(0);
        let c = match ipv6::upper_checksum(src, dst, next_header, m) {
            0 if next_header == ipv6::next_header::UDP => 0xffff,
            c => c,
        };
        m[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    ethernet(dst_mac, src_mac, EtherType::Ipv6, &p)
}

/// An ICMPv6 echo request (or reply) from `src` to `dst`.
#[allow(clippy::too_many_arguments)]
pub fn icmpv6_echo(
    reply: bool,
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let t = if reply {
        icmpv6::ECHO_REPLY
    } else {
        icmpv6::ECHO_REQUEST
    };
    let mut m = vec![t, 0, 0, 0];
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    ipv6(dst_mac, src_mac, src, dst, 58, 64, &m, Some(2))
}

/// A Neighbor Solicitation for `target` from `src` (`::` for duplicate
/// address detection: then without the source link-layer option) to
/// `target`'s solicited-node multicast group.
pub fn neighbor_solicit(src_mac: EthernetAddress, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![icmpv6::NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if !src.is_unspecified() {
        m.extend_from_slice(&[icmpv6::OPT_SOURCE_LLADDR, 1]);
        m.extend_from_slice(&src_mac.0);
    }
    let group = ipv6::solicited_node(target);
    let dst_mac = EthernetAddress(ipv6::multicast_mac(group));
    ipv6(dst_mac, src_mac, src, group, 58, 255, &m, Some(2))
}

/// A Neighbor Advertisement for `target` with link-layer address `lladdr`
/// from `src` to `dst`.
pub fn neighbor_advert(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    lladdr: EthernetAddress,
) -> Vec<u8> {
    let mut b = [0u8; ipv6::NA_PACKET_LEN];
    ipv6::emit_na(&mut b, target, dst, lladdr.0, icmpv6::NA_SOLICITED);
    // emit_na writes `target` as the source; set the real one.
    let m = &b[ipv6::HEADER_LEN..];
    ipv6(dst_mac, src_mac, src, dst, 58, 255, m, Some(2))
}

/// A UDP datagram over IPv6.
pub fn udp6(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    data: &[u8],
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&src.1.to_be_bytes());
    u.extend_from_slice(&dst.1.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    ipv6(dst_mac, src_mac, src.0, dst.0, 17, 64, &u, Some(6))
}

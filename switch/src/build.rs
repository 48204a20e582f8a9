//! Frame builders for tests, fixtures, fuzzing and benchmarks: readable
//! constructors of well-formed frames (checksums filled in).

use crate::wire::{
    arp::{ArpOp, ArpRepr},
    ethernet, ipv4, EtherType, EthernetAddress, EthernetFrame,
};
use core::net::Ipv4Addr;

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

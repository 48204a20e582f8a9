//! Wire formats, in smoltcp's two-layer style: a zero-copy view
//! (`Frame<T: AsRef<[u8]>>`, getters on `AsRef`, setters on `AsMut`) whose
//! `new_checked` validates the length once, so that every getter after it
//! cannot panic; plus small `Repr`s where a parsed form is useful.
//!
//! Views: Ethernet, ARP, IPv4, IPv6 (with the NDP and ICMPv6 echo the
//! switch answers), ICMPv4, TCP, UDP, VXLAN and the virtio-net
//! header.
//! Checksum helpers: the RFC 1071 sum, the IPv4 pseudo-header sum (also the
//! partial checksum of offloaded packets) and RFC 1624 incremental updates.
//!
//! Contract: no function in this module panics on untrusted bytes when the
//! view was made with `new_checked`.

pub mod arp;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vnet;
pub mod vxlan;

pub use arp::ArpPacket;
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame};
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::{TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};
pub use vnet::VnetHdr;
pub use vxlan::VxlanPacket;

/// Why bytes could not be viewed as a given header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the fixed header (or than a length field says).
    Truncated,
    /// A field holds a value the format forbids.
    Malformed,
}

/// RFC 1071 one's-complement sum of `data`, folded, not complemented.
pub fn checksum_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds a 32-bit one's-complement accumulator and complements it.
pub fn checksum_finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    checksum_finish(checksum_sum(0, data))
}

/// The IPv4 pseudo-header sum (RFC 9293 3.1, RFC 768) of an L4 packet of
/// `len` bytes (header and payload) with `protocol`, not folded.
pub fn pseudo_header_sum(
    src: core::net::Ipv4Addr,
    dst: core::net::Ipv4Addr,
    protocol: u8,
    len: usize,
) -> u32 {
    let acc = checksum_sum(0, &src.octets());
    let acc = checksum_sum(acc, &dst.octets());
    acc + u32::from(protocol) + (len as u32 & 0xffff) + ((len as u32) >> 16)
}

/// RFC 1624 incremental update of checksum `c` when a 16-bit word
/// changes from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
pub fn update_checksum(c: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!c) + u32::from(!old) + u32::from(new);
    checksum_finish(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_ipv4_header() {
        // 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn odd_length() {
        assert_eq!(checksum(&[0x01]), !0x0100);
    }
}

//! The IP layer of the frames the embedded DNS reads and writes, for both
//! families: IPv4 through the switch's views, IPv6 as its fixed 40-byte
//! header (RFC 8200 3).
//!
//! Contract: [`Ipv6Header::parse`] never panics and reads only the fixed
//! header: extension headers are not walked (a packet whose next header
//! is not UDP or TCP is not a DNS query for the hook, which hands it on).
//! The emitters write only within the slice they are given and return
//! `None` when it is too short, the two addresses are of different
//! families, or the length does not fit the header's length field.

use core::net::{IpAddr, Ipv6Addr};
use tapnet_switch::wire::{
    checksum_finish, checksum_sum, ipv4, ipv6, pseudo_header_sum, EtherType,
};

/// The fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = ipv6::HEADER_LEN;
/// Hop limit of the IPv6 packets we send (the kernel's default).
pub const HOP_LIMIT: u8 = 64;
/// TTL of the IPv4 packets we send.
pub const TTL: u8 = 64;

/// Upper-layer protocol numbers (IPv4 protocol, IPv6 next header).
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// The fixed header of an IPv6 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Header {
    pub next_header: u8,
    /// The payload length field (bytes after the fixed header).
    pub payload_len: u16,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

impl Ipv6Header {
    /// Reads the fixed header; `None` if `packet` is shorter than it or
    /// the version is not 6.
    pub fn parse(packet: &[u8]) -> Option<Ipv6Header> {
        let h = packet.get(..IPV6_HEADER_LEN)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let addr = |at: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&h[at..at + 16]);
            Ipv6Addr::from(o)
        };
        Some(Ipv6Header {
            next_header: h[6],
            payload_len: u16::from_be_bytes([h[4], h[5]]),
            src: addr(8),
            dst: addr(24),
        })
    }
}

/// The IP header length we emit for `a`'s family.
#[inline]
pub fn header_len(a: IpAddr) -> usize {
    match a {
        IpAddr::V4(_) => ipv4::MIN_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    }
}

/// The EtherType of `a`'s family.
#[inline]
pub fn ethertype(a: IpAddr) -> EtherType {
    match a {
        IpAddr::V4(_) => EtherType::Ipv4,
        IpAddr::V6(_) => EtherType::Ipv6,
    }
}

/// The pseudo-header sum (RFC 768 / RFC 9293 3.1 for IPv4, RFC 8200 8.1
/// for IPv6) of an L4 packet of `len` bytes, not folded; `None` when the
/// families differ.
pub fn pseudo_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Option<u32> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(pseudo_header_sum(s, d, protocol, len)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(ipv6::pseudo_header_sum(s, d, protocol, len)),
        _ => None,
    }
}

/// Whether the checksum of the L4 packet `l4` (header and payload, its
/// checksum field included) verifies.
pub fn verify_l4(l4: &[u8], src: IpAddr, dst: IpAddr, protocol: u8) -> bool {
    pseudo_sum(src, dst, protocol, l4.len())
        .is_some_and(|p| checksum_finish(checksum_sum(p, l4)) == 0)
}

/// Computes the full checksum of the L4 packet `l4` into its field at
/// `l4[at..at + 2]` (a zero result is sent as 0xffff, as UDP needs).
pub fn fill_l4(l4: &mut [u8], at: usize, src: IpAddr, dst: IpAddr, protocol: u8) -> Option<()> {
    l4.get_mut(at..at + 2)?.fill(0);
    let p = pseudo_sum(src, dst, protocol, l4.len())?;
    let c = match checksum_finish(checksum_sum(p, l4)) {
        0 => 0xffff,
        c => c,
    };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Some(())
}

/// The partial checksum (the pseudo-header sum, folded, not complemented)
/// of an L4 packet of `len` bytes, for a receiver that completes it
/// (`NEEDS_CSUM`).
pub fn partial_l4(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Option<u16> {
    Some(!checksum_finish(pseudo_sum(src, dst, protocol, len)?))
}

/// Writes the IP header (IPv4: 20 bytes, DF, valid checksum; IPv6: 40
/// bytes, no extension headers) of a packet carrying `l4_len` bytes of
/// `protocol`; returns the header length.
pub fn emit_header(
    out: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    l4_len: usize,
) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            u16::try_from(ipv4::MIN_HEADER_LEN + l4_len).ok()?;
            let h = out.get_mut(..ipv4::MIN_HEADER_LEN)?;
            ipv4::emit_header(h, s, d, protocol, l4_len, TTL);
            Some(ipv4::MIN_HEADER_LEN)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = u16::try_from(l4_len).ok()?;
            let h = out.get_mut(..IPV6_HEADER_LEN)?;
            ipv6::emit_header(h, s, d, protocol, usize::from(len), HOP_LIMIT);
            Some(IPV6_HEADER_LEN)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_header_round_trip_and_checksums() {
        let s: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let d: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let mut p = [0u8; IPV6_HEADER_LEN + 12];
        let n = emit_header(&mut p, s.into(), d.into(), proto::UDP, 12).unwrap();
        assert_eq!(n, IPV6_HEADER_LEN);
        let h = Ipv6Header::parse(&p).unwrap();
        assert_eq!((h.src, h.dst, h.next_header, h.payload_len), (s, d, 17, 12));
        let l4 = &mut p[n..];
        l4[..8].copy_from_slice(&[0x9c, 0x40, 0, 53, 0, 12, 0, 0]);
        l4[8..].copy_from_slice(b"abcd");
        fill_l4(l4, 6, s.into(), d.into(), proto::UDP).unwrap();
        assert!(verify_l4(l4, s.into(), d.into(), proto::UDP));
        l4[9] ^= 1;
        assert!(!verify_l4(l4, s.into(), d.into(), proto::UDP));
        // Mixed families are refused, short buffers too.
        let v4 = IpAddr::V4(core::net::Ipv4Addr::LOCALHOST);
        assert_eq!(emit_header(&mut p, v4, d.into(), proto::UDP, 0), None);
        assert!(!verify_l4(&p[..8], v4, d.into(), proto::UDP));
        assert_eq!(emit_header(&mut p[..39], s.into(), d.into(), 17, 0), None);
        assert_eq!(Ipv6Header::parse(&p[..39]), None);
        p[0] = 0x45;
        assert_eq!(Ipv6Header::parse(&p), None);
    }
}

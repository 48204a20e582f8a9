//! UDP headers (RFC 768): a zero-copy view in smoltcp's pattern.
//!
//! [`UdpPacket::new_checked`] checks that the header fits and that the
//! length field is at least 8 and within the buffer; after it no getter or
//! setter panics, and [`UdpPacket::payload`] is bounded by the length
//! field (a buffer longer than the datagram is allowed: Ethernet padding).

use super::{checksum_finish, checksum_sum, pseudo_header_sum, WireError};
use core::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::PAYLOAD;
/// Offset of the checksum field (for `csum_offset` of a virtio-net header).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;
/// The IP protocol number.
const PROTOCOL: u8 = 17;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }
    /// Checks that the header fits and `8 <= length <= buffer length`.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = UdpPacket { buffer };
        let len = usize::from(p.len());
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len > p.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
    fn u16_at(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }
    /// The length field (header and payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }
    /// The payload, bounded by the length field.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = usize::from(self.len()).clamp(HEADER_LEN, b.len());
        &b[HEADER_LEN..end]
    }
    /// Whether the checksum verifies for an IPv4 packet from `src` to
    /// `dst` (a zero checksum, "none", verifies).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let b = self.buffer.as_ref();
        let len = usize::from(self.len()).clamp(HEADER_LEN, b.len());
        checksum_finish(checksum_sum(
            pseudo_header_sum(src, dst, PROTOCOL, len),
            &b[..len],
        )) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn set_u16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes())
    }
    pub fn set_src_port(&mut self, v: u16) {
        self.set_u16(field::SRC_PORT, v)
    }
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_u16(field::DST_PORT, v)
    }
    pub fn set_len(&mut self, v: u16) {
        self.set_u16(field::LENGTH, v)
    }
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16(field::CHECKSUM, v)
    }
    /// The payload, bounded by the length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        let b = self.buffer.as_mut();
        let end = len.clamp(HEADER_LEN, b.len());
        &mut b[HEADER_LEN..end]
    }
    /// Computes the full checksum (0 is sent as 0xffff) for an IPv4 packet
    /// from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = usize::from(self.len());
        let b = self.buffer.as_ref();
        let len = len.clamp(HEADER_LEN, b.len());
        let c = match checksum_finish(checksum_sum(
            pseudo_header_sum(src, dst, PROTOCOL, len),
            &b[..len],
        )) {
            0 => 0xffff,
            c => c,
        };
        self.set_checksum(c);
    }
    /// Writes the partial checksum (pseudo-header sum, folded, not
    /// complemented) for a receiver that completes it (`NEEDS_CSUM`,
    /// `csum_offset` [`CHECKSUM_OFFSET`]).
    pub fn set_partial_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let len = usize::from(self.len());
        let c = !checksum_finish(pseudo_header_sum(src, dst, PROTOCOL, len));
        self.set_checksum(c);
    }
}

/// A parsed UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    /// Writes the header of a datagram with `payload_len` bytes of payload
    /// (checksum zero: fill it afterwards). `p` must hold at least
    /// [`HEADER_LEN`] bytes; a payload beyond 65527 bytes is not
    /// representable and its length field wraps (callers bound it).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut UdpPacket<T>, payload_len: usize) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len((HEADER_LEN + payload_len) as u16);
        p.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 199);
    // A DNS query captured from dig: 192.168.0.1:52001 -> 192.168.0.199:53.
    const DGRAM: [u8; 12] = [
        0xcb, 0x21, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,
    ];

    #[test]
    fn parse_and_checksum() {
        let mut d = DGRAM;
        let mut p = UdpPacket::new_checked(&mut d[..]).unwrap();
        p.fill_checksum(SRC, DST);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, SRC));
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (52001, 53, 12));
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn truncated_malformed_overlong() {
        assert_eq!(
            UdpPacket::new_checked(&DGRAM[..7]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&DGRAM[..11]).unwrap_err(),
            WireError::Truncated
        );
        let mut m = DGRAM;
        m[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&m[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut long = DGRAM.to_vec();
        long.extend_from_slice(&[0; 6]); // padding
        let p = UdpPacket::new_checked(&long[..]).unwrap();
        assert_eq!(p.payload().len(), 4);
    }

    #[test]
    fn emit_and_partial_checksum() {
        let mut b = [0u8; 12];
        b[8..].copy_from_slice(b"ping");
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        UdpRepr {
            src_port: 7,
            dst_port: 9,
        }
        .emit(&mut p, 4);
        p.fill_checksum(SRC, DST);
        let full = p.checksum();
        p.set_partial_checksum(SRC, DST);
        assert_eq!(crate::wire::checksum(&b), full);
        assert_eq!(UdpPacket::new_checked(&b[..]).unwrap().payload(), b"ping");
    }
}

//! ARP for Ethernet/IPv4 (RFC 826). Other hardware/protocol types are
//! rejected as malformed by [`ArpPacket::new_checked`].

use super::{EthernetAddress, WireError};
use core::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for ArpOp {
    fn from(v: u16) -> Self {
        match v {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            v => ArpOp::Unknown(v),
        }
    }
}

impl From<ArpOp> for u16 {
    fn from(v: ArpOp) -> u16 {
        match v {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
            ArpOp::Unknown(v) => v,
        }
    }
}

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }
    /// Checks the length and that this is Ethernet (1) / IPv4 (0x0800) with
    /// address lengths 6 and 4.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::HTYPE] != [0, 1]
            || b[field::PTYPE] != [0x08, 0x00]
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Malformed);
        }
        Ok(ArpPacket { buffer })
    }
    pub fn operation(&self) -> ArpOp {
        let b = &self.buffer.as_ref()[field::OPER];
        ArpOp::from(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn sender_hw(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SHA])
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip(&self.buffer.as_ref()[field::SPA])
    }
    pub fn target_hw(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::THA])
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        ip(&self.buffer.as_ref()[field::TPA])
    }
}

/// A parsed ARP packet, for building replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: ArpOp,
    pub sender_hw: EthernetAddress,
    pub sender_ip: Ipv4Addr,
    pub target_hw: EthernetAddress,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> ArpRepr {
        ArpRepr {
            operation: p.operation(),
            sender_hw: p.sender_hw(),
            sender_ip: p.sender_ip(),
            target_hw: p.target_hw(),
            target_ip: p.target_ip(),
        }
    }
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }
    /// Writes the packet; `buf` must be at least [`PACKET_LEN`] long.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::HTYPE].copy_from_slice(&[0, 1]);
        buf[field::PTYPE].copy_from_slice(&[0x08, 0x00]);
        buf[field::HLEN] = 6;
        buf[field::PLEN] = 4;
        buf[field::OPER].copy_from_slice(&u16::from(self.operation).to_be_bytes());
        buf[field::SHA].copy_from_slice(&self.sender_hw.0);
        buf[field::SPA].copy_from_slice(&self.sender_ip.octets());
        buf[field::THA].copy_from_slice(&self.target_hw.0);
        buf[field::TPA].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // who-has 10.1.0.1 tell 10.1.0.10 (from 02:00:00:00:00:0a)
    const REQ: [u8; 28] = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0x0a, 10, 1, 0, 10, 0, 0, 0, 0, 0, 0, 10, 1, 0, 1,
    ];

    #[test]
    fn parse_emit_roundtrip() {
        let p = ArpPacket::new_checked(&REQ[..]).unwrap();
        let r = ArpRepr::parse(&p);
        assert_eq!(r.operation, ArpOp::Request);
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 1, 0, 10));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 1, 0, 1));
        let mut out = [0u8; 28];
        r.emit(&mut out);
        assert_eq!(out, REQ);
    }

    #[test]
    fn rejects_truncated_and_other_types() {
        assert_eq!(
            ArpPacket::new_checked(&REQ[..27]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = REQ;
        bad[3] = 0xdd; // ptype 0x08dd
        assert_eq!(
            ArpPacket::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}

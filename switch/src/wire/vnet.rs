//! The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes, little
//! endian) that TAPs opened with `IFF_VNET_HDR` put in front of each frame.
//! The switch carries it as metadata so a TSO super-frame entering from one
//! TAP leaves another untouched.

use super::WireError;

/// Length of the header as tapnet configures TAPs (`TUNSETVNETHDRSZ` 12).
pub const HEADER_LEN: usize = 12;

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// Parsed virtio-net header. `Default` is "no offload": a plain frame with
/// a complete checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHdr {
    /// Parses the first [`HEADER_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Result<VnetHdr, WireError> {
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        })
    }
    /// Writes [`HEADER_LEN`] bytes.
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
    }
    /// A GSO super-frame: may be larger than the MTU.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
    pub fn is_plain(&self) -> bool {
        *self == VnetHdr::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut b = [0u8; HEADER_LEN];
        h.emit(&mut b);
        assert_eq!(VnetHdr::parse(&b).unwrap(), h);
        assert!(h.is_gso());
        assert!(VnetHdr::parse(&b[..11]).is_err());
        assert!(!VnetHdr::default().is_gso());
    }
}

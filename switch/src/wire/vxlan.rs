//! VXLAN headers (RFC 7348): 8 bytes in front of the inner Ethernet frame,
//! carried in UDP (IANA port 4789).
//!
//! ```text
//! |R|R|R|R|I|R|R|R|   Reserved (24)   |   VNI (24)   | Reserved (8) |
//! ```
//! [`VxlanPacket::new_checked`] checks the length and the I flag (the VNI
//! is valid); other reserved bits are ignored on receipt, as RFC 7348 says.
//! After it no getter panics.

use super::WireError;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: usize = 8;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD;
/// The I flag: the VNI field is valid.
pub const FLAG_I: u8 = 0x08;
/// The IANA-assigned UDP port.
pub const PORT: u16 = 4789;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// A view of a VXLAN packet (header and inner frame).
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }
    /// Checks that the header fits and the I flag is set.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::FLAGS] & FLAG_I == 0 {
            return Err(WireError::Malformed);
        }
        Ok(VxlanPacket { buffer })
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }
    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// Writes a VXLAN header (I flag, `vni`, reserved bits zero) into
/// `buf[..8]`; `buf` must hold [`HEADER_LEN`] bytes and `vni` fit 24 bits
/// (higher bits are cut).
pub fn emit_header(buf: &mut [u8], vni: u32) {
    let v = vni.to_be_bytes();
    buf[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a Linux vxlan device (id 42): header + 14 bytes.
    const PKT: [u8; 22] = [
        0x08, 0, 0, 0, 0, 0, 42, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08,
        0x06,
    ];

    #[test]
    fn parse_emit() {
        let p = VxlanPacket::new_checked(&PKT[..]).unwrap();
        assert_eq!(p.vni(), 42);
        assert_eq!(p.payload().len(), 14);
        let mut h = [0xffu8; 8];
        emit_header(&mut h, 42);
        assert_eq!(h, PKT[..8]);
        emit_header(&mut h, MAX_VNI);
        assert_eq!(VxlanPacket::new_checked(&h[..]).unwrap().vni(), MAX_VNI);
    }

    #[test]
    fn truncated_and_no_i_flag() {
        assert_eq!(
            VxlanPacket::new_checked(&PKT[..7]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = PKT;
        bad[0] = 0;
        assert_eq!(
            VxlanPacket::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        // Reserved bits are ignored.
        bad[0] = 0x0c;
        bad[7] = 0xff;
        assert_eq!(VxlanPacket::new_checked(&bad[..]).unwrap().vni(), 42);
    }
}

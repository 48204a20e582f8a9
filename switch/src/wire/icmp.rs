//! ICMPv4 (RFC 792): echo, and the destination-unreachable messages the
//! NAT sends back; only what the gateway and the NAT need.

use super::WireError;

pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACHABLE: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded (code 0: TTL exceeded in transit).
pub const TIME_EXCEEDED: u8 = 11;

/// Destination unreachable codes (RFC 792, RFC 1812).
pub mod unreachable {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PORT: u8 = 3;
    /// "Communication administratively prohibited" (RFC 1812 5.2.7.1).
    pub const PROHIBITED: u8 = 13;
}
/// Type, code, checksum, identifier, sequence.
pub const ECHO_HEADER_LEN: usize = 8;

/// A view of an ICMPv4 message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < ECHO_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    /// The echo identifier (bytes 4..6 of an echo message; for other
    /// types, whatever those bytes hold).
    pub fn echo_ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }
    pub fn verify_checksum(&self) -> bool {
        super::checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_msg_type(&mut self, t: u8) {
        self.buffer.as_mut()[0] = t
    }
    pub fn set_code(&mut self, c: u8) {
        self.buffer.as_mut()[1] = c
    }
    pub fn set_echo_ident(&mut self, id: u16) {
        self.buffer.as_mut()[4..6].copy_from_slice(&id.to_be_bytes())
    }
    /// Clears bytes 4..8 (the unused word of an error message).
    pub fn clear_rest_of_header(&mut self) {
        self.buffer.as_mut()[4..8].fill(0)
    }
    /// Computes the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        let b = self.buffer.as_mut();
        b[2..4].fill(0);
        let c = super::checksum(b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_view() {
        let mut m = [8u8, 0, 0, 0, 0, 1, 0, 2, b'h', b'i'];
        let c = crate::wire::checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        let p = IcmpPacket::new_checked(&m[..]).unwrap();
        assert_eq!(p.msg_type(), ECHO_REQUEST);
        assert_eq!(p.code(), 0);
        assert!(p.verify_checksum());
        assert!(IcmpPacket::new_checked(&m[..7]).is_err());
        assert_eq!(p.echo_ident(), 1);
        let mut r = m;
        let mut q = IcmpPacket::new_unchecked(&mut r[..]);
        q.set_msg_type(ECHO_REPLY);
        q.set_echo_ident(9);
        q.fill_checksum();
        let q = IcmpPacket::new_checked(&r[..]).unwrap();
        assert!(q.verify_checksum());
        assert_eq!((q.msg_type(), q.echo_ident()), (ECHO_REPLY, 9));
    }
}

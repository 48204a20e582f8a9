//! ICMPv4 echo (RFC 792): only what the gateway needs to answer pings.

use super::WireError;

pub const ECHO_REPLY: u8 = 0;
pub const ECHO_REQUEST: u8 = 8;
/// Type, code, checksum, identifier, sequence.
pub const ECHO_HEADER_LEN: usize = 8;

/// A view of an ICMPv4 message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
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
    pub fn verify_checksum(&self) -> bool {
        super::checksum(self.buffer.as_ref()) == 0
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
    }
}

//! IPv6 (RFC 8200) and ICMPv6 (RFC 4443) as the NAT needs them: a
//! checked view of the fixed header, the header writer, the pseudo-header
//! sum and the message types and codes it sends or relays. No extension
//! header is walked: a packet whose next header is not TCP, UDP or
//! ICMPv6 is not the NAT's (a fragment header is told apart, as IPv4
//! fragments are).
//!
//! The pseudo-header sum and the link-local test are the switch's
//! (`tapnet_switch::wire::ipv6`); this view differs from the switch's in
//! that a declared payload longer than the buffer is bounded, not refused.
//!
//! # Panics
//! None: [`Ipv6Packet::new_checked`] checks what the getters read;
//! [`emit_header`] needs a buffer of at least [`HEADER_LEN`] bytes and
//! returns `None` otherwise.

use core::net::Ipv6Addr;
use core::ops::Range;
pub use tapnet_switch::wire::ipv6::{is_link_local, next_header, pseudo_header_sum, HEADER_LEN};
use tapnet_switch::wire::{checksum_finish, checksum_sum};

/// The minimum link MTU (RFC 8200 5): an ICMPv6 error never exceeds it.
pub const MIN_MTU: usize = 1280;

/// ICMPv6 message types and codes (RFC 4443, RFC 4861).
pub mod icmp6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Time exceeded (code 0: hop limit exceeded in transit).
    pub const TIME_EXCEEDED: u8 = 3;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation .. redirect: Neighbor Discovery, the switch's.
    pub const ND_FIRST: u8 = 133;
    pub const ND_LAST: u8 = 137;
    /// Destination unreachable codes.
    pub mod unreachable {
        /// No route to destination.
        pub const NO_ROUTE: u8 = 0;
        /// Communication with destination administratively prohibited.
        pub const PROHIBITED: u8 = 1;
        /// Address unreachable.
        pub const ADDRESS: u8 = 3;
        /// Port unreachable.
        pub const PORT: u8 = 4;
    }
}

/// A view of an IPv6 packet's fixed header.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Checks version 6 and that the fixed header is present. The payload
    /// length may exceed the buffer (a GSO super-frame's may not, but a
    /// truncated packet's does): [`Ipv6Packet::payload_range`] bounds it.
    pub fn new_checked(buffer: T) -> Option<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN || b[0] >> 4 != 6 {
            return None;
        }
        Some(Ipv6Packet { buffer })
    }
    pub fn payload_len(&self) -> usize {
        let b = self.buffer.as_ref();
        usize::from(u16::from_be_bytes([b[4], b[5]]))
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[8..24])
    }
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[24..40])
    }
    /// The payload's bytes in the buffer: after the header, as long as the
    /// payload length says or the buffer holds, whichever is shorter.
    pub fn payload_range(&self) -> Range<usize> {
        let end = (HEADER_LEN + self.payload_len()).min(self.buffer.as_ref().len());
        HEADER_LEN..end
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
}

/// Writes a 40-byte IPv6 header (traffic class and flow label 0) into
/// `buf[..40]`; `None` if `buf` is shorter.
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload_len: usize,
    hop_limit: u8,
) -> Option<()> {
    let h = buf.get_mut(..HEADER_LEN)?;
    tapnet_switch::wire::ipv6::emit_header(
        h,
        src,
        dst,
        next_header,
        payload_len.min(0xffff),
        hop_limit,
    );
    Some(())
}

/// Fills the checksum at `msg[at..at + 2]` of an upper-layer message
/// (the whole of `msg`) from `src` to `dst`; `zero_as_ffff`: UDP's rule.
pub fn fill_checksum(
    msg: &mut [u8],
    at: usize,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    zero_as_ffff: bool,
) {
    let Some(c) = msg.get_mut(at..at + 2) else {
        return;
    };
    c.fill(0);
    let sum = checksum_sum(pseudo_header_sum(src, dst, next_header, msg.len()), msg);
    let c = match checksum_finish(sum) {
        0 if zero_as_ffff => 0xffff,
        c => c,
    };
    msg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Writes the partial checksum (pseudo-header sum, folded, not
/// complemented) at `msg[at..at + 2]`, for a receiver that completes it
/// (`NEEDS_CSUM`); `len` is the upper-layer length.
pub fn set_partial_checksum(
    msg: &mut [u8],
    at: usize,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    len: usize,
) {
    let c = !checksum_finish(pseudo_header_sum(src, dst, next_header, len));
    if let Some(b) = msg.get_mut(at..at + 2) {
        b.copy_from_slice(&c.to_be_bytes());
    }
}

/// Whether the checksum of `msg` (the whole upper-layer message) from
/// `src` to `dst` verifies.
pub fn verify_checksum(msg: &[u8], src: Ipv6Addr, dst: Ipv6Addr, next_header: u8) -> bool {
    tapnet_switch::wire::ipv6::upper_checksum(src, dst, next_header, msg) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checksum() {
        let src: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:1::9".parse().unwrap();
        let mut b = [0u8; 48];
        emit_header(&mut b, src, dst, next_header::ICMPV6, 8, 64).unwrap();
        b[40] = icmp6::ECHO_REQUEST;
        fill_checksum(&mut b[40..], 2, src, dst, next_header::ICMPV6, false);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_addr(), p.dst_addr()), (src, dst));
        assert_eq!((p.next_header(), p.hop_limit()), (58, 64));
        assert_eq!(p.payload_range(), 40..48);
        assert!(verify_checksum(&b[40..], src, dst, 58));
        b[47] ^= 1;
        assert!(!verify_checksum(&b[40..], src, dst, 58));
        // Truncated, or not version 6.
        assert!(Ipv6Packet::new_checked(&b[..39]).is_none());
        b[0] = 0x45;
        assert!(Ipv6Packet::new_checked(&b[..]).is_none());
        assert!(emit_header(&mut [0u8; 39], src, dst, 6, 0, 64).is_none());
    }

    #[test]
    fn prefixes() {
        let net: Ipv6Addr = "2001:db8:1::".parse().unwrap();
        let cfg = |prefix_len| tapnet_switch::Ipv6Config {
            subnet: net,
            prefix_len,
            gateway: net,
        };
        assert!(cfg(64).contains("2001:db8:1::5".parse().unwrap()));
        assert!(!cfg(64).contains("2001:db8:2::5".parse().unwrap()));
        assert!(cfg(0).contains("::1".parse().unwrap()));
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
    }
}

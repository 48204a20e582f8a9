//! TCP headers (RFC 9293): a zero-copy view in smoltcp's pattern.
//!
//! [`TcpPacket::new_checked`] checks that the fixed header fits, that the
//! data offset is at least 5 words and that the options fit the buffer;
//! after it no getter or setter panics. The payload is everything after
//! the options: bound the buffer by the IP total length first
//! ([`super::Ipv4Packet::payload`] does).
//!
//! Checksums: [`pseudo_header_sum`] is the IPv4 pseudo-header sum that both
//! the full checksum and a partial one (`NEEDS_CSUM`, completed by the
//! receiver) start from; [`TcpPacket::fill_checksum`] and
//! [`TcpPacket::verify_checksum`] use it; [`TcpPacket::set_partial_checksum`]
//! leaves the pseudo-header sum for an offloading receiver.

use super::{checksum_finish, checksum_sum, pseudo_header_sum, update_checksum, WireError};
use core::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
    pub const OPTIONS: usize = 20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = field::OPTIONS;
/// Offset of the checksum field (for `csum_offset` of a virtio-net header).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// TCP header flags (wire bit values).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Option kinds this crate reads or writes.
pub mod option {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
}

/// A view of a TCP segment (header, options, payload).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }
    /// Checks that the fixed header and the options fit, and that the data
    /// offset is at least [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = TcpPacket { buffer };
        let hl = p.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if p.buffer.as_ref().len() < hl {
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
    fn u32_at(&self, r: core::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }
    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ)
    }
    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK)
    }
    /// Header length with options, in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }
    /// The flag bits (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn has(&self, flag: u8) -> bool {
        self.flags() & flag != 0
    }
    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WINDOW)
    }
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }
    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT)
    }
    /// The options (between the fixed header and the payload).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }
    /// The MSS option, if present and well-formed before any malformed
    /// option or the end-of-options.
    pub fn mss_option(&self) -> Option<u16> {
        let opts = self.options();
        let at = find_option(opts, option::MSS, 4)?;
        Some(u16::from_be_bytes([opts[at + 2], opts[at + 3]]))
    }
    /// The shift of the window scale option (RFC 7323), if there is one.
    pub fn window_scale_option(&self) -> Option<u8> {
        let opts = self.options();
        let at = find_option(opts, option::WINDOW_SCALE, 3)?;
        Some(opts[at + 2])
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// Sequence space the segment takes: payload, plus one each for SYN
    /// and FIN.
    pub fn segment_len(&self) -> u32 {
        self.payload().len() as u32
            + u32::from(self.has(flags::SYN))
            + u32::from(self.has(flags::FIN))
    }
    /// Whether the checksum over the whole buffer (header and payload)
    /// verifies for an IPv4 packet from `src` to `dst`.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        checksum_finish(checksum_sum(pseudo_header_sum(src, dst, 6, b.len()), b)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set_u16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes())
    }
    fn set_u32(&mut self, r: core::ops::Range<usize>, v: u32) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes())
    }
    pub fn set_src_port(&mut self, v: u16) {
        self.set_u16(field::SRC_PORT, v)
    }
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_u16(field::DST_PORT, v)
    }
    pub fn set_seq_number(&mut self, v: u32) {
        self.set_u32(field::SEQ, v)
    }
    pub fn set_ack_number(&mut self, v: u32) {
        self.set_u32(field::ACK, v)
    }
    /// Sets the data offset (`len` bytes, a multiple of 4, at most 60).
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFFSET];
        *b = (((len / 4) as u8) << 4) | (*b & 0x0f);
    }
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f
    }
    pub fn set_window_len(&mut self, v: u16) {
        self.set_u16(field::WINDOW, v)
    }
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16(field::CHECKSUM, v)
    }
    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_u16(field::URGENT, v)
    }
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..hl]
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
    /// Rewrites the value of the MSS option; returns the old one. The
    /// checksum is not updated (see [`TcpPacket::set_mss_option_updating`]).
    pub fn set_mss_option(&mut self, mss: u16) -> Option<u16> {
        let at = find_option(self.options(), option::MSS, 4)?;
        let o = &mut self.options_mut()[at + 2..at + 4];
        let old = u16::from_be_bytes([o[0], o[1]]);
        o.copy_from_slice(&mss.to_be_bytes());
        Some(old)
    }
    /// [`TcpPacket::set_mss_option`] with an incremental checksum update
    /// (RFC 1624): a full checksum stays valid.
    pub fn set_mss_option_updating(&mut self, mss: u16) -> Option<u16> {
        let old = self.set_mss_option(mss)?;
        let c = update_checksum(self.checksum(), old, mss);
        self.set_checksum(c);
        Some(old)
    }
    /// Computes the full checksum over the whole buffer for an IPv4
    /// packet from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let c = checksum_finish(checksum_sum(pseudo_header_sum(src, dst, 6, b.len()), b));
        self.set_checksum(c);
    }
    /// Writes the partial checksum (the pseudo-header sum, folded, not
    /// complemented) for a receiver that completes it (`NEEDS_CSUM`,
    /// `csum_offset` [`CHECKSUM_OFFSET`]); `len` is the TCP length
    /// (header and payload) the packet will have.
    pub fn set_partial_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr, len: usize) {
        let c = !checksum_finish(pseudo_header_sum(src, dst, 6, len));
        self.set_checksum(c);
    }
}

/// The offset in `opts` of the first option `kind` of length `len`, if it
/// comes before the end of the options and any malformed option.
fn find_option(opts: &[u8], kind: u8, len: usize) -> Option<usize> {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            option::END => return None,
            option::NOP => i += 1,
            k => {
                let l = usize::from(*opts.get(i + 1)?);
                if l < 2 || i + l > opts.len() {
                    return None;
                }
                if k == kind && l == len {
                    return Some(i);
                }
                i += l;
            }
        }
    }
    None
}

/// A parsed TCP header (the fields tapnet builds segments from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Options bytes already written after the fixed header (a multiple
    /// of 4, at most 40); [`TcpRepr::emit`] does not touch them.
    pub options_len: usize,
}

impl TcpRepr {
    /// The fixed header and options length.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len
    }
    /// Writes the fixed header (checksum zero) into `buf[..20]`. `buf`
    /// must hold at least [`HEADER_LEN`] bytes; `options_len` must be a
    /// multiple of 4 no larger than 40 (not checked here: a larger value
    /// is reduced to the field's range).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut TcpPacket<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq);
        p.set_ack_number(self.ack);
        p.buffer.as_mut()[field::DATA_OFFSET] =
            (((self.header_len().min(60) / 4) as u8) << 4) & 0xf0;
        p.set_flags(self.flags);
        p.set_window_len(self.window);
        p.set_checksum(0);
        p.set_urgent_at(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A SYN captured from Linux: 10.1.0.2:46318 -> 10.1.0.1:53, MSS 1460,
    // SACK permitted, timestamps, NOP, window scale 7.
    const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    fn syn() -> [u8; 40] {
        let mut s = [
            0xb4, 0xee, 0x00, 0x35, 0x5c, 0x1e, 0x6c, 0x61, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02,
            0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a,
            0x9f, 0x3b, 0x2a, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
        ];
        let mut p = TcpPacket::new_unchecked(&mut s[..]);
        p.fill_checksum(SRC, DST);
        s
    }

    #[test]
    fn parse() {
        let s = syn();
        let p = TcpPacket::new_checked(&s[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (46318, 53));
        assert_eq!(p.seq_number(), 0x5c1e_6c61);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), flags::SYN);
        assert!(p.has(flags::SYN) && !p.has(flags::ACK));
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.mss_option(), Some(1460));
        assert!(p.payload().is_empty());
        assert_eq!(p.segment_len(), 1);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(10, 1, 0, 3)));
    }

    #[test]
    fn truncated_and_malformed() {
        let s = syn();
        assert_eq!(
            TcpPacket::new_checked(&s[..19]).unwrap_err(),
            WireError::Truncated
        );
        // Options beyond the buffer.
        assert_eq!(
            TcpPacket::new_checked(&s[..39]).unwrap_err(),
            WireError::Truncated
        );
        let mut m = s;
        m[12] = 4 << 4;
        assert_eq!(
            TcpPacket::new_checked(&m[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn overlong_buffer_is_payload() {
        let mut b = syn().to_vec();
        b.extend_from_slice(b"data");
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), b"data");
        assert_eq!(p.segment_len(), 5);
    }

    #[test]
    fn options_edge_cases() {
        let mut h = [0u8; 32];
        h[12] = 8 << 4;
        h[20..32].copy_from_slice(&[1, 1, 4, 2, 8, 10, 0, 0, 0, 0, 2, 4]);
        // An MSS cut by the end of the options.
        assert_eq!(TcpPacket::new_checked(&h[..]).unwrap().mss_option(), None);
        h[20..32].copy_from_slice(&[1, 0, 2, 4, 5, 0xb4, 0, 0, 0, 0, 0, 0]);
        // After END.
        assert_eq!(TcpPacket::new_checked(&h[..]).unwrap().mss_option(), None);
        h[20..32].copy_from_slice(&[3, 0, 2, 4, 5, 0xb4, 0, 0, 0, 0, 0, 0]);
        // After an option of length 0.
        assert_eq!(TcpPacket::new_checked(&h[..]).unwrap().mss_option(), None);
        h[20..32].copy_from_slice(&[1, 4, 2, 2, 4, 0x05, 0xb4, 0, 0, 0, 0, 0]);
        assert_eq!(
            TcpPacket::new_checked(&h[..]).unwrap().mss_option(),
            Some(1460)
        );
        assert_eq!(
            TcpPacket::new_checked(&h[..])
                .unwrap()
                .window_scale_option(),
            None
        );
        // Window scale 7 after the MSS (as Linux orders them: MSS, SACK
        // permitted, timestamps, NOP, window scale).
        h[20..32].copy_from_slice(&[2, 4, 5, 0xb4, 4, 2, 1, 3, 3, 7, 0, 0]);
        let p = TcpPacket::new_checked(&h[..]).unwrap();
        assert_eq!(
            (p.mss_option(), p.window_scale_option()),
            (Some(1460), Some(7))
        );
        // Cut by the end of the options.
        h[20..32].copy_from_slice(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3]);
        assert_eq!(
            TcpPacket::new_checked(&h[..])
                .unwrap()
                .window_scale_option(),
            None
        );
    }

    #[test]
    fn mss_rewrite_keeps_the_checksum_valid() {
        let mut s = syn();
        let mut p = TcpPacket::new_checked(&mut s[..]).unwrap();
        assert_eq!(p.set_mss_option_updating(65495), Some(1460));
        assert_eq!(p.mss_option(), Some(65495));
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(p.set_mss_option(1000), Some(65495));
        assert!(!p.verify_checksum(SRC, DST));
    }

    #[test]
    fn emit_then_parse() {
        let mut b = [0xffu8; 24];
        b[20..24].copy_from_slice(b"abcd");
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        TcpRepr {
            src_port: 53,
            dst_port: 40000,
            seq: 7,
            ack: 9,
            flags: flags::ACK | flags::PSH,
            window: 65535,
            options_len: 0,
        }
        .emit(&mut p);
        p.fill_checksum(DST, SRC);
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number()),
            (53, 40000, 7, 9)
        );
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.payload(), b"abcd");
        assert!(p.verify_checksum(DST, SRC));
    }

    #[test]
    fn partial_checksum_completes_to_the_full_one() {
        let mut s = syn();
        let full = TcpPacket::new_unchecked(&s[..]).checksum();
        let mut p = TcpPacket::new_unchecked(&mut s[..]);
        p.set_partial_checksum(SRC, DST, 40);
        // A receiver completes: checksum over the segment with the partial
        // value in place.
        let c = crate::wire::checksum(&s);
        assert_eq!(c, full);
    }
}

//! DNS over TCP without connection state: the wire pieces of the
//! stateless TCP answering machine in [`crate::hook`].
//!
//! The hook has no I/O, no timers and no per-connection table, so it
//! answers TCP the way SYN cookies do:
//! - SYN → SYN-ACK whose ISN is a [`CookieKey::cookie`]: a keyed hash of
//!   the 4-tuple (21 bits), the low byte of the client's first data
//!   sequence number (8 bits, to check that data starts at stream offset
//!   0), and an index into [`MSS_TABLE`] (3 bits, the segment size to use).
//! - A data segment whose `ack - 1` is a valid cookie and whose first
//!   bytes are a complete length-prefixed DNS message is answered with ONE
//!   frame: ACK of the query + the framed answer + FIN (a GSO super-frame
//!   when the answer is larger than the MSS). A retransmitted query gets
//!   the same answer again.
//! - FIN → ACK; pure ACK → nothing; RST → nothing; a data segment with a
//!   bad cookie → RST.
//!
//! Limitations (documented, counted): a query split across segments, or
//! several queries on one connection (the answer ends with FIN), are not
//! supported; dig and glibc send one query in one segment. The client's
//! receive window is not honoured (answers are at most 64 KiB and clients
//! open with at least that much). No retransmission of our answer: a lost
//! answer frame means the client retransmits its query, which is answered
//! again.
//!
//! Both families: the frames carry IPv4 or IPv6 (no extension headers)
//! as the [`Ends`] say; over IPv6 a GSO super-frame is `GSO_TCPV6`.
//!
//! [`Segment::parse`] never panics (it reads through
//! [`tapnet_switch::wire::TcpPacket`]); emitting writes only within the
//! buffer it is given and returns `None` when it does not fit.

use crate::ip;
use core::net::IpAddr;
use rand_core::RngCore;
use tapnet_switch::wire::{ethernet, ipv4, tcp as wtcp, vnet, TcpPacket, TcpRepr, VnetHdr};

/// TCP header flags.
pub use tapnet_switch::wire::tcp::flags;

/// A TCP header without options.
pub const HEADER_LEN: usize = wtcp::HEADER_LEN;
/// Ethernet + IPv4 (no options) + TCP (no options) headers.
pub const FRAME_HEADERS: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + HEADER_LEN;
/// Ethernet + IPv6 (no extension headers) + TCP (no options) headers.
pub const FRAME_HEADERS6: usize = ethernet::HEADER_LEN + ip::IPV6_HEADER_LEN + HEADER_LEN;
/// The window we advertise (no window scaling).
pub const WINDOW: u16 = 65535;
/// The MSS assumed when a SYN has no MSS option (RFC 9293 3.7.1).
pub const DEFAULT_MSS: u16 = 536;
/// Largest TCP payload of one IPv4 packet (the limit of a GSO super-frame;
/// also used over IPv6, whose limit is 20 bytes larger).
pub const MAX_PAYLOAD: usize = 65535 - ipv4::MIN_HEADER_LEN - HEADER_LEN;

/// Segment sizes a cookie can encode (3 bits); the largest one not above
/// min(client MSS, MTU - 40) is used.
pub const MSS_TABLE: [u16; 8] = [216, 536, 1220, 1360, 1410, 1460, 4056, 8960];

/// The parts of a TCP segment the answering machine uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The MSS option, if present.
    pub mss: Option<u16>,
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// Parses a TCP segment (header, options, payload) through the
    /// [`TcpPacket`] view; `None` if the data offset is below 5 or beyond
    /// the segment.
    pub fn parse(tcp: &'a [u8]) -> Option<Segment<'a>> {
        let p = TcpPacket::new_checked(tcp).ok()?;
        Some(Segment {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq_number(),
            ack: p.ack_number(),
            flags: p.flags(),
            mss: p.mss_option(),
            payload: &tcp[p.header_len()..],
        })
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// The index in [`MSS_TABLE`] of the largest size not above `mss` (0 if
/// all are above).
pub fn mss_index(mss: u16) -> u8 {
    MSS_TABLE.iter().rposition(|&m| m <= mss).unwrap_or(0) as u8
}

/// The secret behind the cookies (one per hook, drawn from its RNG).
#[derive(Clone, Copy)]
pub struct CookieKey {
    k0: u64,
    k1: u64,
}

impl core::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// A connection's 4-tuple, client side first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
}

/// What a valid cookie says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// Low byte of the client's first data sequence number.
    pub first_seq_low: u8,
    /// Index in [`MSS_TABLE`].
    pub mss_index: u8,
}

const HASH_MASK: u32 = 0xffff_f800;

impl CookieKey {
    pub fn new<R: RngCore>(rng: &mut R) -> Self {
        CookieKey {
            k0: rng.next_u64(),
            k1: rng.next_u64(),
        }
    }

    fn hash(&self, t: &Tuple) -> u32 {
        let ports = u64::from(t.client.1) << 16 | u64::from(t.server.1);
        let h = match (t.client.0, t.server.0) {
            (IpAddr::V4(c), IpAddr::V4(s)) => {
                let a = u64::from(u32::from(c)) << 32 | u64::from(u32::from(s));
                siphash13(self.k0, self.k1, &[a, ports])
            }
            (c, s) => {
                let w = |a: IpAddr| match a {
                    IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
                    IpAddr::V6(a) => u128::from(a),
                };
                let (c, s) = (w(c), w(s));
                let words = [
                    (c >> 64) as u64,
                    c as u64,
                    (s >> 64) as u64,
                    s as u64,
                    ports,
                ];
                siphash13(self.k0, self.k1, &words)
            }
        };
        (h >> 32) as u32
    }

    /// The ISN of our SYN-ACK to a SYN with sequence number `client_isn`.
    pub fn cookie(&self, t: &Tuple, client_isn: u32, mss_index: u8) -> u32 {
        let first = client_isn.wrapping_add(1) as u8;
        (self.hash(t) & HASH_MASK) | u32::from(first) << 3 | u32::from(mss_index & 7)
    }

    /// Checks the ISN `isn` (a segment's `ack - 1`) against the tuple.
    pub fn check(&self, t: &Tuple, isn: u32) -> Option<Cookie> {
        (isn & HASH_MASK == self.hash(t) & HASH_MASK).then_some(Cookie {
            first_seq_low: (isn >> 3) as u8,
            mss_index: (isn & 7) as u8,
        })
    }
}

/// SipHash-1-3 of 64-bit words (8 bytes of input each).
fn siphash13(k0: u64, k1: u64, words: &[u64]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let last = ((8 * words.len()) as u64) << 56;
    for &m in words.iter().chain(core::iter::once(&last)) {
        v[3] ^= m;
        round(&mut v);
        v[0] ^= m;
    }
    v[2] ^= 0xff;
    for _ in 0..3 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The link and IP ends of a frame we send (to the client). Both addresses
/// are of one family (frames with mixed ones are not emitted).
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub dst_mac: tapnet_switch::wire::EthernetAddress,
    pub src_mac: tapnet_switch::wire::EthernetAddress,
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
}

impl Ends {
    /// Ethernet + IP + TCP (no options) headers of a segment between these
    /// ends: [`FRAME_HEADERS`] or [`FRAME_HEADERS6`].
    #[inline]
    pub fn tcp_headers(&self) -> usize {
        ethernet::HEADER_LEN + ip::header_len(self.src.0) + HEADER_LEN
    }

    /// Ethernet + IP + UDP headers of a datagram between these ends.
    #[inline]
    pub fn udp_headers(&self) -> usize {
        ethernet::HEADER_LEN + ip::header_len(self.src.0) + 8
    }
}

/// One segment to send: its options and payload are already at
/// `out[e.tcp_headers()..]` ([`Ends::tcp_headers`]: `opt_len` bytes of
/// options, a multiple of 4, then `payload_len` bytes).
#[derive(Clone, Copy, Debug)]
pub struct Emit {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub opt_len: usize,
    pub payload_len: usize,
    /// Payload per wire segment: a larger payload is sent as one GSO
    /// super-frame (`GSO_TCPV4` or `GSO_TCPV6`, `NEEDS_CSUM`) that the TAP
    /// segments.
    pub mss: u16,
}

/// Writes the Ethernet, IP (v4 or v6, as the ends) and TCP headers;
/// returns the frame length and its virtio-net metadata (plain with full
/// checksums, or GSO with a partial checksum), or `None` if it does not
/// fit `out` or one packet, or the ends mix families.
pub fn emit(out: &mut [u8], e: &Ends, s: &Emit) -> Option<(usize, VnetHdr)> {
    let tcp_len = HEADER_LEN + s.opt_len;
    let l4 = tcp_len + s.payload_len;
    if !s.opt_len.is_multiple_of(4) || s.opt_len > 40 || s.payload_len > MAX_PAYLOAD || s.mss == 0 {
        return None;
    }
    let ip_len = ip::header_len(e.src.0);
    let total = ethernet::HEADER_LEN + ip_len + l4;
    let f = out.get_mut(..total)?;
    f[0..6].copy_from_slice(&e.dst_mac.0);
    f[6..12].copy_from_slice(&e.src_mac.0);
    f[12..14].copy_from_slice(&u16::from(ip::ethertype(e.src.0)).to_be_bytes());
    let ip_at = ethernet::HEADER_LEN;
    ip::emit_header(&mut f[ip_at..], e.src.0, e.dst.0, ip::proto::TCP, l4)?;
    let t_at = ip_at + ip_len;
    let mut t = TcpPacket::new_unchecked(&mut f[t_at..]);
    TcpRepr {
        src_port: e.src.1,
        dst_port: e.dst.1,
        seq: s.seq,
        ack: s.ack,
        flags: s.flags,
        window: WINDOW,
        options_len: s.opt_len,
    }
    .emit(&mut t);
    if s.payload_len > usize::from(s.mss) {
        // Partial checksum: the pseudo-header sum, not complemented; the
        // TAP (or the receiving stack) completes it per segment.
        let c = ip::partial_l4(e.src.0, e.dst.0, ip::proto::TCP, l4)?;
        t.set_checksum(c);
        let gso_type = match e.src.0 {
            IpAddr::V4(_) => vnet::GSO_TCPV4,
            IpAddr::V6(_) => vnet::GSO_TCPV6,
        };
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type,
            hdr_len: (t_at + tcp_len) as u16,
            gso_size: s.mss,
            csum_start: t_at as u16,
            csum_offset: wtcp::CHECKSUM_OFFSET as u16,
            num_buffers: 0,
        };
        return Some((total, meta));
    }
    ip::fill_l4(
        &mut f[t_at..],
        wtcp::CHECKSUM_OFFSET,
        e.src.0,
        e.dst.0,
        ip::proto::TCP,
    )?;
    Some((total, VnetHdr::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::FastRng;
    use core::net::Ipv4Addr;

    #[test]
    fn options_and_truncation() {
        let mut h = [0u8; 32];
        h[12] = 8 << 4;
        h[20..32].copy_from_slice(&[1, 1, 4, 2, 8, 10, 0, 0, 0, 0, 2, 4]);
        assert_eq!(Segment::parse(&h).unwrap().mss, None); // MSS after EOL
        h[20..32].copy_from_slice(&[1, 4, 2, 2, 4, 0x05, 0xb4, 0, 0, 0, 0, 0]);
        assert_eq!(Segment::parse(&h).unwrap().mss, Some(1460));
        h[20..24].copy_from_slice(&[3, 0, 0, 0]); // length 0
        assert_eq!(Segment::parse(&h).unwrap().mss, None);
        assert!(Segment::parse(&h[..30]).is_none());
        h[12] = 4 << 4;
        assert!(Segment::parse(&h).is_none());
        assert!(Segment::parse(&h[..19]).is_none());
    }

    #[test]
    fn cookies_bind_the_tuple() {
        let k = CookieKey::new(&mut FastRng::new(1));
        let t = Tuple {
            client: (Ipv4Addr::new(10, 1, 0, 2).into(), 40000),
            server: (Ipv4Addr::new(10, 1, 0, 1).into(), 53),
        };
        let c = k.cookie(&t, 0x1234_56ff, 5);
        assert_eq!(
            k.check(&t, c),
            Some(Cookie {
                first_seq_low: 0x00,
                mss_index: 5
            })
        );
        let other = Tuple {
            client: (Ipv4Addr::new(10, 1, 0, 2).into(), 40001),
            ..t
        };
        assert_eq!(k.check(&other, c), None);
        let k2 = CookieKey::new(&mut FastRng::new(2));
        assert_eq!(k2.check(&t, c), None);
        assert_eq!(mss_index(1460), 5);
        assert_eq!(mss_index(1459), 4);
        assert_eq!(mss_index(100), 0);
        assert_eq!(mss_index(u16::MAX), 7);
    }
}

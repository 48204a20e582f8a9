//! IPv6 (RFC 8200) fixed header view, the IPv6 pseudo-header sum, and the
//! ICMPv6 messages the switch itself answers: Neighbor Discovery
//! (RFC 4861) and echo (RFC 4443).
//!
//! [`Ipv6Packet::next_header`] is the fixed header's field; [`upper_layer`]
//! walks the extension headers to the upper-layer protocol where a check
//! must not be sidestepped by putting one in front of it (the switch's
//! Neighbor Discovery checks). The gateway's own answers (NS, echo) only
//! take packets without extension headers.

use super::{checksum_sum, WireError};
use core::net::Ipv6Addr;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// Next-header values used here.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AUTH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// Most extension headers [`upper_layer`] walks before it gives up
/// (RFC 8200 4.1 names at most one of each kind, two for destination
/// options; more is an evasion attempt, not a packet).
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Where the upper-layer protocol of a packet starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upper {
    /// The upper-layer protocol (`NO_NEXT` or `ESP` when it is opaque).
    pub protocol: u8,
    /// Its offset in the payload ([`Ipv6Packet::payload`]).
    pub offset: usize,
    /// A fragment header came first: `Some(0)` for the first fragment
    /// (the upper-layer header is there), else its non-zero offset (the
    /// upper-layer bytes are some other fragment's continuation).
    pub fragment: Option<u16>,
}

/// Walks the extension headers (hop-by-hop, routing, fragment,
/// destination options, authentication) after the fixed header whose
/// next-header field is `next`, over `payload`. `Err` for a header that
/// runs past the payload or a chain longer than [`MAX_EXTENSION_HEADERS`].
pub fn upper_layer(next: u8, payload: &[u8]) -> Result<Upper, WireError> {
    let (mut protocol, mut offset, mut fragment) = (next, 0usize, None);
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let len = match protocol {
            next_header::HOP_BY_HOP | next_header::ROUTING | next_header::DEST_OPTS => {
                let b = payload
                    .get(offset..offset + 2)
                    .ok_or(WireError::Truncated)?;
                (usize::from(b[1]) + 1) * 8
            }
            next_header::FRAGMENT => {
                let b = payload
                    .get(offset..offset + 8)
                    .ok_or(WireError::Truncated)?;
                fragment = Some(u16::from_be_bytes([b[2], b[3]]) >> 3);
                8
            }
            next_header::AUTH => {
                let b = payload
                    .get(offset..offset + 2)
                    .ok_or(WireError::Truncated)?;
                (usize::from(b[1]) + 2) * 4
            }
            _ => {
                return Ok(Upper {
                    protocol,
                    offset,
                    fragment,
                })
            }
        };
        if offset + len > payload.len() {
            return Err(WireError::Truncated);
        }
        protocol = payload[offset];
        offset += len;
        if fragment.is_some_and(|f| f != 0) {
            // What follows a later fragment's header is not a header.
            return Ok(Upper {
                protocol,
                offset,
                fragment,
            });
        }
    }
    Err(WireError::Malformed)
}

/// ICMPv6 message types used here.
pub mod icmpv6 {
    pub const DST_UNREACHABLE: u8 = 1;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// NDP option: source link-layer address.
    pub const OPT_SOURCE_LLADDR: u8 = 1;
    /// NDP option: target link-layer address.
    pub const OPT_TARGET_LLADDR: u8 = 2;
    /// NA flags (first byte after the checksum).
    pub const NA_ROUTER: u8 = 0x80;
    pub const NA_SOLICITED: u8 = 0x40;
    pub const NA_OVERRIDE: u8 = 0x20;
    /// Length of an NS or NA message without options.
    pub const ND_LEN: usize = 24;
}

/// A view of an IPv6 packet. After [`Ipv6Packet::new_checked`] the buffer
/// holds the fixed header and at least the payload length it declares.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Checks the version and that the declared payload is present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        let p = Ipv6Packet { buffer };
        if HEADER_LEN + usize::from(p.payload_len()) > p.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }
    pub fn src_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), 8)
    }
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), 24)
    }
    /// The payload as the header declares it (a GSO super-frame declares
    /// its real length too).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

fn addr_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Whether `a` is link-local unicast (`fe80::/10`).
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The IPv6 pseudo-header sum (RFC 8200 8.1) of an upper-layer packet of
/// `len` bytes with `next_header`, not folded.
pub fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: usize) -> u32 {
    let acc = checksum_sum(0, &src.octets());
    let acc = checksum_sum(acc, &dst.octets());
    acc + (len as u32 & 0xffff) + ((len as u32) >> 16) + u32::from(next_header)
}

/// Checksum of an upper-layer message `msg` (its checksum field included
/// as it is): 0 when a received message verifies.
pub fn upper_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, msg: &[u8]) -> u16 {
    super::checksum_finish(checksum_sum(
        pseudo_header_sum(src, dst, next_header, msg.len()),
        msg,
    ))
}

/// Writes a fixed header (traffic class and flow label zero) into
/// `buf[..40]`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`].
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload_len: usize,
    hop_limit: u8,
) {
    let h = &mut buf[..HEADER_LEN];
    h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = next_header;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
}

/// The Neighbor Discovery fields the switch checks and answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdMessage {
    /// [`icmpv6::NEIGHBOR_SOLICIT`] or [`icmpv6::NEIGHBOR_ADVERT`].
    pub msg_type: u8,
    pub target: Ipv6Addr,
    /// The source (NS) or target (NA) link-layer address option.
    pub lladdr: Option<[u8; 6]>,
}

/// Parses an NS or NA (`msg` is the ICMPv6 message). `None` for other
/// types; `Err` for a truncated message or malformed options (RFC 4861
/// 7.1: an option of length zero).
pub fn parse_nd(msg: &[u8]) -> Result<Option<NdMessage>, WireError> {
    let Some(&msg_type) = msg.first() else {
        return Err(WireError::Truncated);
    };
    if msg_type != icmpv6::NEIGHBOR_SOLICIT && msg_type != icmpv6::NEIGHBOR_ADVERT {
        return Ok(None);
    }
    if msg.len() < icmpv6::ND_LEN {
        return Err(WireError::Truncated);
    }
    let target = addr_at(msg, 8);
    let want = if msg_type == icmpv6::NEIGHBOR_SOLICIT {
        icmpv6::OPT_SOURCE_LLADDR
    } else {
        icmpv6::OPT_TARGET_LLADDR
    };
    let mut lladdr = None;
    let mut opts = &msg[icmpv6::ND_LEN..];
    while !opts.is_empty() {
        if opts.len() < 2 {
            return Err(WireError::Truncated);
        }
        let len = usize::from(opts[1]) * 8;
        if len == 0 {
            return Err(WireError::Malformed);
        }
        if len > opts.len() {
            return Err(WireError::Truncated);
        }
        if opts[0] == want && len >= 8 {
            let mut m = [0u8; 6];
            m.copy_from_slice(&opts[2..8]);
            lladdr = Some(m);
        }
        opts = &opts[len..];
    }
    Ok(Some(NdMessage {
        msg_type,
        target,
        lladdr,
    }))
}

/// Length of the Neighbor Advertisement [`emit_na`] writes: IPv6 header,
/// NA, one target link-layer address option.
pub const NA_PACKET_LEN: usize = HEADER_LEN + icmpv6::ND_LEN + 8;

/// Writes into `buf[..NA_PACKET_LEN]` a Neighbor Advertisement for
/// `target` with link-layer address `mac`, from `target` to `dst` (hop
/// limit 255, as RFC 4861 requires), with `flags` (`NA_*`).
///
/// # Panics
/// If `buf` is shorter than [`NA_PACKET_LEN`].
pub fn emit_na(buf: &mut [u8], target: Ipv6Addr, dst: Ipv6Addr, mac: [u8; 6], flags: u8) {
    let msg_len = icmpv6::ND_LEN + 8;
    emit_header(buf, target, dst, next_header::ICMPV6, msg_len, 255);
    let m = &mut buf[HEADER_LEN..NA_PACKET_LEN];
    m.fill(0);
    m[0] = icmpv6::NEIGHBOR_ADVERT;
    m[4] = flags;
    m[8..24].copy_from_slice(&target.octets());
    m[24] = icmpv6::OPT_TARGET_LLADDR;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    let c = upper_checksum(target, dst, next_header::ICMPV6, m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
}

/// The solicited-node multicast address of `a` (RFC 4291 2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet multicast address of IPv6 multicast `a` (RFC 2464 7).
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(target: Ipv6Addr, src: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
        let mut msg = vec![0u8; 32];
        msg[0] = icmpv6::NEIGHBOR_SOLICIT;
        msg[8..24].copy_from_slice(&target.octets());
        msg[24] = icmpv6::OPT_SOURCE_LLADDR;
        msg[25] = 1;
        msg[26..32].copy_from_slice(&mac);
        let dst = solicited_node(target);
        let c = upper_checksum(src, dst, next_header::ICMPV6, &msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0u8; HEADER_LEN];
        emit_header(&mut p, src, dst, next_header::ICMPV6, msg.len(), 255);
        p.extend_from_slice(&msg);
        p
    }

    #[test]
    fn extension_headers_are_walked_to_the_upper_layer() {
        use next_header::*;
        // No extension header.
        let u = upper_layer(ICMPV6, &[135, 0, 0, 0]).unwrap();
        assert_eq!((u.protocol, u.offset, u.fragment), (ICMPV6, 0, None));
        // Hop-by-hop (8) then destination options (16) then UDP.
        let mut p = vec![DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        p.extend_from_slice(&[UDP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0; 8]);
        let u = upper_layer(HOP_BY_HOP, &p).unwrap();
        assert_eq!((u.protocol, u.offset, u.fragment), (UDP, 24, None));
        // Authentication: (len + 2) * 4 bytes.
        let a = [TCP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(upper_layer(AUTH, &a).unwrap().offset, 12);
        // A first fragment, then a later one (offset 3 * 8).
        let f = [ICMPV6, 0, 0, 1, 0, 0, 0, 1, 135];
        assert_eq!(upper_layer(FRAGMENT, &f).unwrap().fragment, Some(0));
        let f = [ICMPV6, 0, 0, 0x19, 0, 0, 0, 1, 0xaa];
        let u = upper_layer(FRAGMENT, &f).unwrap();
        assert_eq!((u.protocol, u.offset, u.fragment), (ICMPV6, 8, Some(3)));
        // Running past the payload; ESP and no-next are opaque.
        assert!(upper_layer(HOP_BY_HOP, &[UDP, 1, 0, 0]).is_err());
        assert!(upper_layer(FRAGMENT, &[UDP, 0]).is_err());
        assert_eq!(upper_layer(ESP, &[1, 2]).unwrap().protocol, ESP);
        assert_eq!(upper_layer(NO_NEXT, &[]).unwrap().protocol, NO_NEXT);
        // A chain of MAX_EXTENSION_HEADERS + 1 is refused.
        let mut c = Vec::new();
        for _ in 0..=MAX_EXTENSION_HEADERS {
            c.extend_from_slice(&[DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        }
        assert!(upper_layer(DEST_OPTS, &c).is_err());
        c.truncate(8 * MAX_EXTENSION_HEADERS);
        let n = c.len();
        c[n - 8] = UDP;
        assert_eq!(upper_layer(DEST_OPTS, &c).unwrap().protocol, UDP);
    }

    #[test]
    fn ns_parses_and_verifies() {
        let t: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let s: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let p = ns(t, s, [2, 0, 0, 0, 0, 9]);
        let ip = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.src_addr(), s);
        assert_eq!(ip.dst_addr(), "ff02::1:ff00:1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            upper_checksum(s, ip.dst_addr(), 58, ip.payload()),
            0,
            "a message with its checksum filled in verifies"
        );
        let nd = parse_nd(ip.payload()).unwrap().unwrap();
        assert_eq!(nd.target, t);
        assert_eq!(nd.lladdr, Some([2, 0, 0, 0, 0, 9]));
    }

    #[test]
    fn na_is_well_formed() {
        let t: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut b = [0u8; NA_PACKET_LEN];
        emit_na(&mut b, t, d, [2, 0x42, 1, 2, 3, 4], icmpv6::NA_SOLICITED);
        let ip = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        assert_eq!(upper_checksum(t, d, 58, ip.payload()), 0);
        let nd = parse_nd(ip.payload()).unwrap().unwrap();
        assert_eq!(nd.msg_type, icmpv6::NEIGHBOR_ADVERT);
        assert_eq!(nd.lladdr, Some([2, 0x42, 1, 2, 3, 4]));
    }

    #[test]
    fn bad_input_is_refused_not_panicked() {
        assert!(Ipv6Packet::new_checked(&[0x60u8; 39][..]).is_err());
        let mut p = [0u8; 40];
        p[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap_err(),
            WireError::Malformed
        );
        p[0] = 0x60;
        p[5] = 1; // declares one byte of payload it lacks
        assert!(Ipv6Packet::new_checked(&p[..]).is_err());
        let mut msg = [0u8; 32];
        msg[0] = icmpv6::NEIGHBOR_SOLICIT;
        msg[24] = 1; // option of length zero
        assert_eq!(parse_nd(&msg).unwrap_err(), WireError::Malformed);
        assert!(parse_nd(&msg[..20]).is_err());
        assert_eq!(parse_nd(&[128u8, 0, 0, 0]).unwrap(), None);
        for n in 0..msg.len() {
            let _ = parse_nd(&msg[..n]);
        }
    }
}

//! The DNS message format, as far as the embedded server needs it: a
//! bounded parser of queries and an encoder of answers into a caller
//! buffer (RFC 1035, RFC 6891 for the OPT record).
//!
//! Contract:
//! - [`Query::parse`] never panics and does work bounded by the message
//!   length: the question name may not use compression (the only earlier
//!   bytes are the header, so a pointer there is malformed: this also rules
//!   out compression loops), and at most two additional records are walked,
//!   each name of at most 255 bytes.
//! - The encoders write only into the slice they are given and return
//!   `None` when it is too short; they never panic.

/// Length of the fixed header.
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Classic UDP message limit without EDNS.
pub const UDP_LIMIT: usize = 512;
/// Length of an OPT record with no options.
pub const OPT_LEN: usize = 11;

/// Record types the server answers.
pub mod rtype {
    pub const A: u16 = 1;
    pub const PTR: u16 = 12;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
}

/// Classes.
pub mod class {
    pub const IN: u16 = 1;
}

/// Response codes.
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    /// Extended (EDNS) BADVERS = 16: upper 8 bits go in the OPT TTL.
    pub const BADVERS: u16 = 16;
}

/// Header flag bits (second 16-bit word).
pub mod flags {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const OPCODE_SHIFT: u16 = 11;
}

/// Why a message is not a query we can answer. The header could be read
/// in every case (shorter messages are [`ParseError::NoHeader`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header: drop silently.
    NoHeader,
    /// QR set: a response sent to us. Dropped, like Docker's server
    /// (miekg/dns ignores responses): answering them invites reply loops.
    Response,
    /// Malformed: answer FORMERR.
    FormErr,
    /// Not a standard query (opcode != 0): answer NOTIMP.
    NotImp,
}

/// A parsed query: offsets into the original bytes, no copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// RD bit of the query, echoed.
    pub rd: bool,
    /// End of the question section: `msg[12..question_end]` is echoed.
    pub question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// EDNS: the client's UDP payload size and version, if an OPT was sent.
    pub edns: Option<Edns>,
}

/// The client's OPT record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    /// DO bit (echoed in our OPT).
    pub dnssec_ok: bool,
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Skips a possibly compressed name starting at `at`; returns the offset
/// after it. Work is bounded by `MAX_NAME_LEN` (a pointer ends the name).
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    let start = at;
    loop {
        let len = *b.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + usize::from(len),
            0xc0 => {
                b.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
        if at - start > MAX_NAME_LEN {
            return None;
        }
    }
}

impl Query {
    /// Reads the header fields common to every outcome: id, opcode, RD.
    pub fn header(msg: &[u8]) -> Option<(u16, u16)> {
        if msg.len() < HEADER_LEN {
            return None;
        }
        Some((be16(msg, 0)?, be16(msg, 2)?))
    }

    /// Parses a query, with the same acceptance rules as Docker's server
    /// (miekg/dns): QR set → ignored; opcode != QUERY → NOTIMP;
    /// QDCOUNT != 1, ANCOUNT > 1, NSCOUNT > 1, ARCOUNT > 2 → FORMERR.
    /// Also FORMERR: a question name that is compressed, has a label over
    /// 63 bytes or is over 255 bytes, a truncated question, a malformed or
    /// repeated OPT record.
    pub fn parse(msg: &[u8]) -> Result<Query, ParseError> {
        let (id, fl) = Query::header(msg).ok_or(ParseError::NoHeader)?;
        if fl & flags::QR != 0 {
            return Err(ParseError::Response);
        }
        if (fl >> flags::OPCODE_SHIFT) & 0xf != 0 {
            return Err(ParseError::NotImp);
        }
        let count = |i: usize| be16(msg, 4 + 2 * i).unwrap_or(0);
        let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
        if qd != 1 || an > 1 || ns > 1 || ar > 2 {
            return Err(ParseError::FormErr);
        }
        let mut at = HEADER_LEN;
        loop {
            let len = usize::from(*msg.get(at).ok_or(ParseError::FormErr)?);
            if len == 0 {
                at += 1;
                break;
            }
            if len > 63 {
                // Compression (0xc0) or reserved label types.
                return Err(ParseError::FormErr);
            }
            at += 1 + len;
            if at - HEADER_LEN >= MAX_NAME_LEN {
                return Err(ParseError::FormErr);
            }
        }
        let qtype = be16(msg, at).ok_or(ParseError::FormErr)?;
        let qclass = be16(msg, at + 2).ok_or(ParseError::FormErr)?;
        let question_end = at + 4;
        // Skip the (at most one) answer and authority record, then look for
        // OPT among the (at most two) additional records.
        let mut at = question_end;
        let mut edns = None;
        for i in 0..usize::from(an + ns + ar) {
            let name_at = at;
            at = skip_name(msg, at).ok_or(ParseError::FormErr)?;
            let ty = be16(msg, at).ok_or(ParseError::FormErr)?;
            let cl = be16(msg, at + 2).ok_or(ParseError::FormErr)?;
            let ttl_hi = be16(msg, at + 4).ok_or(ParseError::FormErr)?;
            let ttl_lo = be16(msg, at + 6).ok_or(ParseError::FormErr)?;
            let rdlen = usize::from(be16(msg, at + 8).ok_or(ParseError::FormErr)?);
            at += 10 + rdlen;
            if at > msg.len() {
                return Err(ParseError::FormErr);
            }
            if ty == rtype::OPT {
                let additional = i >= usize::from(an + ns);
                if !additional || edns.is_some() || msg[name_at] != 0 {
                    return Err(ParseError::FormErr);
                }
                edns = Some(Edns {
                    udp_size: cl,
                    version: (ttl_hi & 0xff) as u8,
                    dnssec_ok: ttl_lo & 0x8000 != 0,
                });
            }
        }
        Ok(Query {
            id,
            rd: fl & flags::RD != 0,
            question_end,
            qtype,
            qclass,
            edns,
        })
    }
}

/// Writes the question name of `msg` (already validated by
/// [`Query::parse`]) as lowercase dotted text without the trailing dot
/// into `key`; returns its length. `None` when a label contains a byte
/// that cannot be part of a registered name (`.`), which no name matches.
pub fn name_key(msg: &[u8], question_end: usize, key: &mut [u8; MAX_NAME_LEN]) -> Option<usize> {
    let mut at = HEADER_LEN;
    let mut k = 0;
    let end = question_end.checked_sub(4)?;
    while at < end {
        let len = usize::from(*msg.get(at)?);
        if len == 0 {
            break;
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        if k != 0 {
            *key.get_mut(k)? = b'.';
            k += 1;
        }
        let dst = key.get_mut(k..k + len)?;
        for (d, &s) in dst.iter_mut().zip(label) {
            if s == b'.' {
                return None;
            }
            *d = s.to_ascii_lowercase();
        }
        k += len;
        at += 1 + len;
    }
    Some(k)
}

/// Encodes dotted text (`web.frontend`, trailing dot optional) as a wire
/// name; `None` if a label is empty or over 63 bytes or the name is over
/// 255 bytes.
pub fn encode_name(text: &str) -> Option<Vec<u8>> {
    let t = text.strip_suffix('.').unwrap_or(text);
    let mut out = Vec::with_capacity(t.len() + 2);
    if !t.is_empty() {
        for label in t.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME_LEN).then_some(out)
}

/// Parses `d.c.b.a.in-addr.arpa` (lowercase key, see [`name_key`]) into
/// the address `a.b.c.d`.
pub fn parse_reverse_v4(key: &[u8]) -> Option<core::net::Ipv4Addr> {
    let head = key.strip_suffix(b".in-addr.arpa")?;
    let mut o = [0u8; 4];
    let mut n = 0;
    for part in head.split(|&c| c == b'.') {
        if n == 4 || part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut v: u16 = 0;
        for &c in part {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u16::from(c - b'0');
        }
        o[3 - n] = u8::try_from(v).ok()?;
        n += 1;
    }
    (n == 4).then(|| core::net::Ipv4Addr::from(o))
}

/// Parses the nibble form `b.a.9.8. … .1.0.0.2.ip6.arpa` (RFC 3596 2.5;
/// lowercase key, see [`name_key`]): exactly 32 single hex digits, least
/// significant first.
pub fn parse_reverse_v6(key: &[u8]) -> Option<core::net::Ipv6Addr> {
    let head = key.strip_suffix(b".ip6.arpa")?;
    if head.len() != 63 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in head.iter().enumerate() {
        if i % 2 == 1 {
            if c != b'.' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v |= u128::from(d) << (4 * (i / 2));
    }
    Some(core::net::Ipv6Addr::from(v))
}

/// Writes a header.
#[inline]
pub fn write_header(out: &mut [u8], id: u16, fl: u16, counts: [u16; 4]) -> Option<()> {
    let h = out.get_mut(..HEADER_LEN)?;
    h[0..2].copy_from_slice(&id.to_be_bytes());
    h[2..4].copy_from_slice(&fl.to_be_bytes());
    for (i, c) in counts.iter().enumerate() {
        h[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
    Some(())
}

/// Writes an OPT record advertising `udp_size`, extended rcode bits
/// `ext_rcode` and the DO bit; returns its length.
#[inline]
pub fn write_opt(out: &mut [u8], udp_size: u16, ext_rcode: u8, dnssec_ok: bool) -> Option<usize> {
    let o = out.get_mut(..OPT_LEN)?;
    o[0] = 0;
    o[1..3].copy_from_slice(&rtype::OPT.to_be_bytes());
    o[3..5].copy_from_slice(&udp_size.to_be_bytes());
    o[5] = ext_rcode;
    o[6] = 0; // version 0
    o[7] = if dnssec_ok { 0x80 } else { 0 };
    o[8] = 0;
    o[9..11].copy_from_slice(&[0, 0]);
    Some(OPT_LEN)
}

/// Writes the fixed part of a record whose owner is the question name
/// (compression pointer to offset 12); returns the offset of its RDATA.
#[inline]
pub fn write_rr_head(out: &mut [u8], ty: u16, ttl: u32, rdlen: u16) -> Option<usize> {
    let o = out.get_mut(..12)?;
    o[0] = 0xc0;
    o[1] = HEADER_LEN as u8;
    o[2..4].copy_from_slice(&ty.to_be_bytes());
    o[4..6].copy_from_slice(&class::IN.to_be_bytes());
    o[6..10].copy_from_slice(&ttl.to_be_bytes());
    o[10..12].copy_from_slice(&rdlen.to_be_bytes());
    Some(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dig +noedns web.frontend A` (id 0x1234, RD).
    pub const Q_WEB: &[u8] = &[
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, b'w', b'e',
        b'b', 0x08, b'f', b'r', b'o', b'n', b't', b'e', b'n', b'd', 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    /// `dig web A` with EDNS (udp 1232, DO clear), as dig 9.18 sends it
    /// minus the cookie option.
    const Q_EDNS: &[u8] = &[
        0xab, 0xcd, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, b'W', b'e',
        b'B', 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ];

    #[test]
    fn parses_plain_query() {
        let q = Query::parse(Q_WEB).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(q.rd);
        assert_eq!(q.qtype, rtype::A);
        assert_eq!(q.qclass, class::IN);
        assert_eq!(q.question_end, Q_WEB.len());
        assert_eq!(q.edns, None);
        let mut k = [0; MAX_NAME_LEN];
        let n = name_key(Q_WEB, q.question_end, &mut k).unwrap();
        assert_eq!(&k[..n], b"web.frontend");
    }

    #[test]
    fn parses_edns_and_lowercases() {
        let q = Query::parse(Q_EDNS).unwrap();
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 1232,
                version: 0,
                dnssec_ok: false
            })
        );
        let mut k = [0; MAX_NAME_LEN];
        let n = name_key(Q_EDNS, q.question_end, &mut k).unwrap();
        assert_eq!(&k[..n], b"web");
    }

    #[test]
    fn rejects() {
        assert_eq!(Query::parse(&Q_WEB[..11]), Err(ParseError::NoHeader));
        assert_eq!(Query::parse(&Q_WEB[..20]), Err(ParseError::FormErr));
        assert_eq!(
            Query::parse(&Q_WEB[..Q_WEB.len() - 1]),
            Err(ParseError::FormErr)
        );
        let mut r = Q_WEB.to_vec();
        r[2] |= 0x80;
        assert_eq!(Query::parse(&r), Err(ParseError::Response));
        let mut r = Q_WEB.to_vec();
        r[2] |= 2 << 3; // opcode STATUS
        assert_eq!(Query::parse(&r), Err(ParseError::NotImp));
        let mut r = Q_WEB.to_vec();
        r[5] = 2;
        assert_eq!(Query::parse(&r), Err(ParseError::FormErr));
        let mut r = Q_WEB.to_vec();
        r[4] = 0xff; // huge QDCOUNT
        assert_eq!(Query::parse(&r), Err(ParseError::FormErr));
        let mut r = Q_WEB.to_vec();
        r[11] = 0xff; // huge ARCOUNT
        assert_eq!(Query::parse(&r), Err(ParseError::FormErr));
        // A self-pointing compressed question name.
        let mut r = Q_WEB[..12].to_vec();
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(Query::parse(&r), Err(ParseError::FormErr));
        // Additional record claims more RDATA than there is.
        let mut r = Q_EDNS.to_vec();
        let l = r.len();
        r[l - 1] = 9;
        assert_eq!(Query::parse(&r), Err(ParseError::FormErr));
        // Two OPTs.
        let mut r = Q_EDNS.to_vec();
        r[11] = 2;
        r.extend_from_slice(&Q_EDNS[21..]);
        assert_eq!(Query::parse(&r), Err(ParseError::FormErr));
    }

    #[test]
    fn name_limits() {
        // 4 labels of 63 = 256 bytes with lengths + root: too long.
        let mut r = Q_WEB[..12].to_vec();
        for _ in 0..4 {
            r.push(63);
            r.extend_from_slice(&[b'a'; 63]);
        }
        r.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(Query::parse(&r), Err(ParseError::FormErr));
        assert_eq!(encode_name("a.b."), Some(vec![1, b'a', 1, b'b', 0]));
        assert_eq!(encode_name(""), Some(vec![0]));
        assert_eq!(encode_name("a..b"), None);
    }

    #[test]
    fn reverse() {
        assert_eq!(
            parse_reverse_v4(b"4.3.2.10.in-addr.arpa"),
            Some(core::net::Ipv4Addr::new(10, 2, 3, 4))
        );
        assert_eq!(parse_reverse_v4(b"3.2.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse_v4(b"256.3.2.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse_v4(b"04.3.2.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse_v4(b"1.4.3.2.10.in-addr.arpa"), None);
    }

    #[test]
    fn reverse_v6() {
        let k = b"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        assert_eq!(
            parse_reverse_v6(k),
            Some("2001:db8:1::1".parse::<core::net::Ipv6Addr>().unwrap())
        );
        // Too short, uppercase (keys are lowercased first), two digits in
        // a label, a missing dot.
        assert_eq!(parse_reverse_v6(&k[2..]), None);
        assert_eq!(parse_reverse_v6(&k.to_ascii_uppercase()), None);
        let mut bad = k.to_vec();
        bad[1] = b'0';
        assert_eq!(parse_reverse_v6(&bad), None);
        let mut bad = k.to_vec();
        bad[48] = b'g';
        assert_eq!(parse_reverse_v6(&bad), None);
        assert_eq!(parse_reverse_v6(b"ip6.arpa"), None);
    }
}

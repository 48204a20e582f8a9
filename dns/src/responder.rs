//! The sans-IO responder: query bytes in, answer bytes out, into a caller
//! buffer, for a querier identified by its network and IPv4 or IPv6
//! address.
//!
//! Contract:
//! - Never panics, whatever the bytes; work is bounded by the query length
//!   plus the number of addresses of the name asked for.
//! - No allocation, no lock: the caller passes the [`Snapshot`] (loaded
//!   once per query or per batch), the RNG and the output buffer.
//! - Answers (Docker's embedded DNS rules): A → every IPv4 address of the
//!   name, AAAA → every IPv6 address, each in a new random order per query;
//!   A or AAAA of a local name without an address of that family, and other
//!   types of a local name → NOERROR with no answer (NODATA, not forwarded);
//!   PTR of a container address (`in-addr.arpa`, or nibble-form
//!   `ip6.arpa`) → `name.network.`; a name the querier cannot see →
//!   [`Outcome::Forward`],
//!   or REFUSED when every network of the querier is `--internal` (REFUSED
//!   rather than SERVFAIL: it says at once "this server will not recurse
//!   for you" and resolvers move on without retrying or marking the server
//!   broken).
//! - Over UDP an answer larger than 512 bytes (or the client's EDNS size,
//!   capped by [`ResponderConfig::max_udp_payload`] and by the buffer) is
//!   sent with TC set and no answers; the client retries over TCP, where
//!   [`Responder::respond_tcp`] answers without that limit.
//! - Malformed queries whose header can be read → FORMERR (header only);
//!   opcodes other than QUERY → NOTIMP; shorter messages and responses
//!   (QR set) → [`Outcome::Drop`].

use crate::registry::Lookup;
use crate::registry::{Resolved, Snapshot};
use crate::wire::{self, flags, rcode, rtype, ParseError, Query, HEADER_LEN, MAX_NAME_LEN};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use rand_core::RngCore;
use tapnet_switch::NetworkId;

/// Settings of the responder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponderConfig {
    /// TTL of local answers (Docker: 600 s).
    pub ttl: u32,
    /// Largest UDP payload we send and advertise in our OPT record, even
    /// when a client's EDNS size is larger.
    pub max_udp_payload: u16,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            ttl: 600,
            max_udp_payload: 4096,
        }
    }
}

/// How the query arrived (decides the size limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What kind of answer was written (for counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answered {
    /// Records for a local name (A, AAAA or PTR).
    Records,
    /// NOERROR without records: a local name, another type.
    NoData,
    /// Too large for UDP: TC set, no records.
    Truncated,
    /// Malformed query.
    FormErr,
    /// Not a standard query.
    NotImp,
    /// Not local and forwarding is not allowed (internal networks).
    Refused,
    /// EDNS version other than 0.
    BadVers,
}

/// The result of one query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer is `out[..len]`.
    Answer { len: usize, kind: Answered },
    /// Not a local name: hand the query to the upstream forwarder.
    Forward,
    /// Nothing to send (no header, a response, or the buffer cannot hold
    /// even a truncated answer).
    Drop,
    /// The embedded DNS is off on this network (e.g. the default
    /// `bridge`): not for us.
    NotServed,
}

/// The responder (stateless beyond its settings; one per worker, or
/// shared).
#[derive(Clone, Copy, Debug, Default)]
pub struct Responder {
    pub config: ResponderConfig,
}

/// Uniform index in `0..n` (Lemire's multiply-shift; bias below 2^-32 * n).
#[inline]
fn below<R: RngCore>(rng: &mut R, n: usize) -> usize {
    ((u64::from(rng.next_u32()) * n as u64) >> 32) as usize
}

/// Writes a header-only error answer to `query`.
fn error_only(query: &[u8], rc: u8, out: &mut [u8]) -> Option<usize> {
    let (id, fl) = Query::header(query)?;
    let f = flags::QR | (fl & (0xf << flags::OPCODE_SHIFT)) | (fl & flags::RD) | u16::from(rc);
    wire::write_header(out, id, f, [0; 4])?;
    Some(HEADER_LEN)
}

impl Responder {
    pub fn new(config: ResponderConfig) -> Self {
        Responder { config }
    }

    /// Answers one query that came over UDP or TCP (unframed message
    /// bytes) from `querier` on `network`, into `out`. For UDP, `out.len()`
    /// is also a hard cap on the answer (pass the room the MTU leaves).
    #[allow(clippy::too_many_arguments)]
    pub fn respond<R: RngCore>(
        &self,
        snap: &Snapshot,
        network: NetworkId,
        querier: impl Into<IpAddr>,
        query: &[u8],
        transport: Transport,
        rng: &mut R,
        out: &mut [u8],
    ) -> Outcome {
        if !snap.serves(network) {
            return Outcome::NotServed;
        }
        let q = match Query::parse(query) {
            Ok(q) => q,
            Err(ParseError::NoHeader | ParseError::Response) => return Outcome::Drop,
            Err(ParseError::FormErr) => {
                return answered(error_only(query, rcode::FORMERR, out), Answered::FormErr)
            }
            Err(ParseError::NotImp) => {
                return answered(error_only(query, rcode::NOTIMP, out), Answered::NotImp)
            }
        };
        let limit = match transport {
            Transport::Tcp => out.len().min(usize::from(u16::MAX)),
            Transport::Udp => {
                let client = q.edns.map_or(wire::UDP_LIMIT, |e| {
                    usize::from(e.udp_size.min(self.config.max_udp_payload))
                });
                client.max(wire::UDP_LIMIT).min(out.len())
            }
        };
        let out = &mut out[..limit];
        let who = snap.querier(network, querier);
        let ra = if who.may_forward() { flags::RA } else { 0 };
        let mut key = [0u8; MAX_NAME_LEN];
        let key = wire::name_key(query, q.question_end, &mut key).map(|n| &key[..n]);

        let b = Builder {
            q: &q,
            query,
            ra,
            opt_size: self.config.max_udp_payload.max(512),
            ttl: self.config.ttl,
        };
        if q.edns.is_some_and(|e| e.version != 0) {
            return answered(
                b.emit(out, rcode::BADVERS, false, false, Records::None),
                Answered::BadVers,
            );
        }
        let class_ok = q.qclass == wire::class::IN || q.qclass == 255;
        let local = match key {
            Some(k) if class_ok => {
                let ptr = match q.qtype {
                    rtype::PTR => match wire::parse_reverse_v4(k) {
                        Some(a) => who.reverse(a),
                        None => wire::parse_reverse_v6(k).and_then(|a| who.reverse6(a)),
                    },
                    _ => None,
                };
                match (ptr, q.qtype) {
                    (Some(name), _) => Some(Records::Ptr(name)),
                    (None, rtype::A) => match who.lookup::<Ipv4Addr>(k) {
                        Lookup::Addrs(a) => Some(Records::A(a)),
                        Lookup::NoData => Some(Records::None),
                        Lookup::NotLocal => None,
                    },
                    (None, rtype::AAAA) => match who.lookup::<Ipv6Addr>(k) {
                        Lookup::Addrs(a) => Some(Records::Aaaa(a)),
                        Lookup::NoData => Some(Records::None),
                        Lookup::NotLocal => None,
                    },
                    (None, _) => match who.resolve(k) {
                        Resolved::Addrs(_) => Some(Records::None),
                        Resolved::NotLocal => None,
                    },
                }
            }
            _ => None,
        };
        let Some(records) = local else {
            if ra != 0 {
                return Outcome::Forward;
            }
            return answered(
                b.emit(out, u16::from(rcode::REFUSED), false, false, Records::None),
                Answered::Refused,
            );
        };
        let kind = match records {
            Records::None => Answered::NoData,
            _ => Answered::Records,
        };
        if b.len(records) > out.len() {
            return answered(
                b.emit(out, 0, true, true, Records::None),
                Answered::Truncated,
            );
        }
        match b.emit(out, 0, true, false, records) {
            Some(len) => {
                match records {
                    Records::A(a) => {
                        shuffle_rdata::<4, R>(&mut out[b.answers_at()..], a.len(), rng)
                    }
                    Records::Aaaa(a) => {
                        shuffle_rdata::<16, R>(&mut out[b.answers_at()..], a.len(), rng)
                    }
                    _ => {}
                }
                Outcome::Answer { len, kind }
            }
            None => Outcome::Drop,
        }
    }

    /// Answers a length-prefixed query (DNS over TCP, RFC 1035 4.2.2):
    /// `framed` is one 2-byte length plus that many bytes (see
    /// [`tcp_message`] to split a stream); the answer is written framed
    /// into `out` (give it 65537 bytes to never truncate), without the
    /// UDP size limit. `Answer.len` counts the prefix.
    pub fn respond_tcp<R: RngCore>(
        &self,
        snap: &Snapshot,
        network: NetworkId,
        querier: impl Into<IpAddr>,
        framed: &[u8],
        rng: &mut R,
        out: &mut [u8],
    ) -> Outcome {
        let Some((msg, used)) = tcp_message(framed) else {
            return Outcome::Drop;
        };
        if used != framed.len() || out.len() < 2 {
            return Outcome::Drop;
        }
        let (prefix, body) = out.split_at_mut(2);
        match self.respond(snap, network, querier, msg, Transport::Tcp, rng, body) {
            Outcome::Answer { len, kind } => {
                prefix.copy_from_slice(&(len as u16).to_be_bytes());
                Outcome::Answer { len: len + 2, kind }
            }
            o => o,
        }
    }
}

/// Shuffles the addresses of `n` A (`L` = 4) or AAAA (`L` = 16) records
/// written at `recs` (12 + `L` bytes each, address last): only the RDATA
/// differs between them.
fn shuffle_rdata<const L: usize, R: RngCore>(recs: &mut [u8], n: usize, rng: &mut R) {
    let size = 12 + L;
    for i in (1..n).rev() {
        let j = below(rng, i + 1);
        if i != j {
            let (x, y) = (i * size + 12, j * size + 12);
            let mut t = [0u8; L];
            t.copy_from_slice(&recs[x..x + L]);
            recs.copy_within(y..y + L, x);
            recs[y..y + L].copy_from_slice(&t);
        }
    }
}

fn answered(len: Option<usize>, kind: Answered) -> Outcome {
    match len {
        Some(len) => Outcome::Answer { len, kind },
        None => Outcome::Drop,
    }
}

/// Writes an error answer (`rc`, question echoed, OPT if the query had
/// one) to a well-formed query; `None` if `query` does not parse or `out`
/// is too small. For the edges: SERVFAIL when the forwarder fails.
pub fn error_answer(query: &[u8], rc: u8, ra: bool, out: &mut [u8]) -> Option<usize> {
    let q = Query::parse(query).ok()?;
    let b = Builder {
        q: &q,
        query,
        ra: if ra { flags::RA } else { 0 },
        opt_size: ResponderConfig::default().max_udp_payload,
        ttl: 0,
    };
    b.emit(out, u16::from(rc), false, false, Records::None)
}

/// The first complete message of a TCP stream: `(message, bytes used)`,
/// or `None` if more bytes are needed.
pub fn tcp_message(stream: &[u8]) -> Option<(&[u8], usize)> {
    let n = usize::from(u16::from_be_bytes([*stream.first()?, *stream.get(1)?]));
    Some((stream.get(2..2 + n)?, 2 + n))
}

/// Makes a (forwarded) answer fit a UDP client: if `len` exceeds `limit`,
/// keeps the header and question, sets TC and clears the other sections
/// (RFC 2181 9). Returns the new length, or `None` if `msg` is not a
/// well-formed answer with one question.
pub fn truncate_for_udp(msg: &mut [u8], len: usize, limit: usize) -> Option<usize> {
    let m = msg.get_mut(..len)?;
    if len <= limit {
        return Some(len);
    }
    if m.len() < HEADER_LEN || u16::from_be_bytes([m[4], m[5]]) != 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let l = usize::from(*m.get(at)?);
        if l == 0 {
            at += 1;
            break;
        }
        if l > 63 {
            return None;
        }
        at += 1 + l;
    }
    let end = at + 4;
    if end > m.len() || end > limit {
        return None;
    }
    m[2] |= (flags::TC >> 8) as u8;
    m[6..12].fill(0);
    Some(end)
}

/// The records of an answer.
#[derive(Clone, Copy)]
enum Records<'a> {
    None,
    A(&'a [Ipv4Addr]),
    Aaaa(&'a [Ipv6Addr]),
    /// A wire-form name.
    Ptr(&'a [u8]),
}

struct Builder<'q> {
    q: &'q Query,
    query: &'q [u8],
    ra: u16,
    opt_size: u16,
    ttl: u32,
}

impl Builder<'_> {
    fn opt_len(&self) -> usize {
        if self.q.edns.is_some() {
            wire::OPT_LEN
        } else {
            0
        }
    }

    fn answers_at(&self) -> usize {
        self.q.question_end
    }

    fn len(&self, r: Records) -> usize {
        let rr = match r {
            Records::None => 0,
            Records::A(a) => a.len() * 16,
            Records::Aaaa(a) => a.len() * 28,
            Records::Ptr(n) => 12 + n.len(),
        };
        self.q.question_end + rr + self.opt_len()
    }

    /// Writes header, question, records and OPT; `rc` may be extended
    /// (> 15, BADVERS). Answers that do not fit → `None`.
    fn emit(&self, out: &mut [u8], rc: u16, aa: bool, tc: bool, r: Records) -> Option<usize> {
        let an = match r {
            Records::None => 0,
            Records::A(a) => u16::try_from(a.len()).ok()?,
            Records::Aaaa(a) => u16::try_from(a.len()).ok()?,
            Records::Ptr(_) => 1,
        };
        let qe = self.q.question_end;
        let mut fl = flags::QR | self.ra | (rc & 0xf);
        if self.q.rd {
            fl |= flags::RD;
        }
        if aa {
            fl |= flags::AA;
        }
        if tc {
            fl |= flags::TC;
        }
        let ar = u16::from(self.q.edns.is_some());
        wire::write_header(out, self.q.id, fl, [1, an, 0, ar])?;
        out.get_mut(HEADER_LEN..qe)?
            .copy_from_slice(self.query.get(HEADER_LEN..qe)?);
        let mut at = qe;
        match r {
            Records::None => {}
            Records::A(addrs) => {
                for a in addrs {
                    let o = out.get_mut(at..at + 16)?;
                    wire::write_rr_head(o, rtype::A, self.ttl, 4)?;
                    o[12..16].copy_from_slice(&a.octets());
                    at += 16;
                }
            }
            Records::Aaaa(addrs) => {
                for a in addrs {
                    let o = out.get_mut(at..at + 28)?;
                    wire::write_rr_head(o, rtype::AAAA, self.ttl, 16)?;
                    o[12..28].copy_from_slice(&a.octets());
                    at += 28;
                }
            }
            Records::Ptr(name) => {
                let rdlen = u16::try_from(name.len()).ok()?;
                let o = out.get_mut(at..at + 12 + name.len())?;
                wire::write_rr_head(o, rtype::PTR, self.ttl, rdlen)?;
                o[12..].copy_from_slice(name);
                at += 12 + name.len();
            }
        }
        if let Some(e) = self.q.edns {
            at += wire::write_opt(
                out.get_mut(at..)?,
                self.opt_size,
                (rc >> 4) as u8,
                e.dnssec_ok,
            )?;
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{EndpointSpec, NetworkSpec, Registry};
    use crate::rng::FastRng;

    const NET: NetworkId = NetworkId(3);

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    /// Network "n" with a querier at .2 and `n` containers aliased "many".
    fn registry(n: u8) -> std::sync::Arc<Registry> {
        let r = Registry::new();
        r.set_network(NetworkSpec::new(NET, "n")).unwrap();
        r.add_endpoint(EndpointSpec::new(NET, "q", "querier", ip(2)))
            .unwrap();
        for i in 0..n {
            let mut e = EndpointSpec::new(NET, &format!("c{i}"), &format!("m{i}"), ip(10 + i));
            e.aliases.push("many".into());
            r.add_endpoint(e).unwrap();
        }
        r
    }

    /// `dig +noedns many A`, id 0x0102.
    const Q_MANY: &[u8] = &[
        0x01, 0x02, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, b'm', b'a',
        b'n', b'y', 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    fn with_edns(q: &[u8], size: u16, version: u8) -> Vec<u8> {
        let mut v = q.to_vec();
        v[11] = 1;
        v.extend_from_slice(&[0, 0, 41]);
        v.extend_from_slice(&size.to_be_bytes());
        v.extend_from_slice(&[0, version, 0x80, 0, 0, 0]);
        v
    }

    fn run(r: &Registry, q: &[u8], t: Transport, out: &mut [u8]) -> Outcome {
        Responder::default().respond(&r.load(), NET, ip(2), q, t, &mut FastRng::new(3), out)
    }

    #[test]
    fn exact_bytes_of_an_a_answer() {
        let r = registry(1);
        let mut out = [0u8; 512];
        let o = run(&r, Q_MANY, Transport::Udp, &mut out);
        assert_eq!(
            o,
            Outcome::Answer {
                len: 38,
                kind: Answered::Records
            }
        );
        let mut want = Q_MANY.to_vec();
        want[2] = 0x85; // QR AA RD
        want[3] = 0x80; // RA
        want[7] = 1; // ANCOUNT
        want.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x02, 0x58, 0, 4, 10, 0, 0, 10]);
        assert_eq!(&out[..38], &want[..]);
    }

    /// `dig +noedns NAME AAAA`, id 0x0102.
    fn q_aaaa(name: &[u8]) -> Vec<u8> {
        let mut q = Q_MANY[..12].to_vec();
        q.push(name.len() as u8);
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 0, 28, 0, 1]);
        q
    }

    #[test]
    fn aaaa_answers_and_nodata_both_ways() {
        let r = Registry::new();
        r.set_network(NetworkSpec::new(NET, "n")).unwrap();
        let six = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        r.add_endpoint(EndpointSpec::new(NET, "q", "querier", ip(2)))
            .unwrap();
        r.add_endpoint(EndpointSpec::new(NET, "d", "dual", ip(10)).with_ipv6(six))
            .unwrap();
        let mut out = [0u8; 512];
        let q = q_aaaa(b"dual");
        let o = run(&r, &q, Transport::Udp, &mut out);
        assert_eq!(
            o,
            Outcome::Answer {
                len: q.len() + 28,
                kind: Answered::Records
            }
        );
        let mut want = q.clone();
        want[2] = 0x85; // QR AA RD
        want[3] = 0x80; // RA
        want[7] = 1; // ANCOUNT
        want.extend_from_slice(&[0xc0, 0x0c, 0, 28, 0, 1, 0, 0, 0x02, 0x58, 0, 16]);
        want.extend_from_slice(&six.octets());
        assert_eq!(&out[..q.len() + 28], &want[..]);
        // A local name without IPv6: NOERROR, no answer, not forwarded.
        let q = q_aaaa(b"querier");
        let o = run(&r, &q, Transport::Udp, &mut out);
        assert_eq!(
            o,
            Outcome::Answer {
                len: q.len(),
                kind: Answered::NoData
            }
        );
        assert_eq!(&out[2..8], &[0x85, 0x80, 0, 1, 0, 0]);
        // Not local: forwarded.
        assert_eq!(
            run(&r, &q_aaaa(b"nope"), Transport::Udp, &mut out),
            Outcome::Forward
        );
        // A of a name with only IPv6 (a snapshot the control plane cannot
        // express yet: every endpoint has IPv4).
        let mut snap = crate::registry::Snapshot::default();
        snap.insert_name(NET, b"six", &[], &[six]);
        let mut q = q_aaaa(b"six");
        let l = q.len();
        q[l - 3] = 1; // A
        let o = Responder::default().respond(
            &snap,
            NET,
            ip(2),
            &q,
            Transport::Udp,
            &mut FastRng::new(1),
            &mut out,
        );
        assert_eq!(
            o,
            Outcome::Answer {
                len: q.len(),
                kind: Answered::NoData
            }
        );
        assert_eq!(out[3] & 0xf, 0, "NOERROR");
    }

    #[test]
    fn aaaa_shuffled_and_ptr_in_ip6_arpa() {
        let r = Registry::new();
        r.set_network(NetworkSpec::new(NET, "n")).unwrap();
        let me = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        r.add_endpoint(EndpointSpec::new(NET, "q", "querier", ip(2)).with_ipv6(me))
            .unwrap();
        for i in 0..8u8 {
            let a6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, u16::from(i));
            let mut e = EndpointSpec::new(NET, &format!("c{i}"), &format!("m{i}"), ip(10 + i))
                .with_ipv6(a6);
            e.aliases.push("many".into());
            r.add_endpoint(e).unwrap();
        }
        let q = q_aaaa(b"many");
        let mut seen = std::collections::HashSet::new();
        for seed in 0..8 {
            let mut out = [0u8; 512];
            let o = Responder::default().respond(
                &r.load(),
                NET,
                me,
                &q,
                Transport::Udp,
                &mut FastRng::new(seed),
                &mut out,
            );
            assert_eq!(
                o,
                Outcome::Answer {
                    len: q.len() + 8 * 28,
                    kind: Answered::Records
                }
            );
            let mut addrs: Vec<[u8; 16]> = (0..8)
                .map(|i| {
                    let at = q.len() + i * 28;
                    assert_eq!(
                        &out[at..at + 12],
                        &[0xc0, 0x0c, 0, 28, 0, 1, 0, 0, 2, 0x58, 0, 16]
                    );
                    out[at + 12..at + 28].try_into().unwrap()
                })
                .collect();
            seen.insert(addrs.clone());
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), 8, "each address once");
        }
        assert!(seen.len() > 1, "the order varies");
        // PTR of m3's IPv6 address, nibble form.
        let ptr = |a6: Ipv6Addr| {
            let mut name = String::new();
            for b in a6.octets().iter().rev() {
                name += &format!("{:x}.{:x}.", b & 0xf, b >> 4);
            }
            name += "ip6.ARPA";
            let mut q = Q_MANY[..12].to_vec();
            q.extend_from_slice(&crate::wire::encode_name(&name).unwrap());
            q.extend_from_slice(&[0, 12, 0, 1]);
            q
        };
        let mut out = [0u8; 512];
        let q = ptr(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 3));
        let o = run(&r, &q, Transport::Udp, &mut out);
        assert_eq!(
            o,
            Outcome::Answer {
                len: q.len() + 12 + 6,
                kind: Answered::Records
            }
        );
        let at = q.len();
        assert_eq!(
            &out[at..at + 12],
            &[0xc0, 0x0c, 0, 12, 0, 1, 0, 0, 2, 0x58, 0, 6]
        );
        assert_eq!(&out[at + 12..at + 18], b"\x02m3\x01n\x00");
        // An address of no container: forwarded.
        let q = ptr(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 9));
        assert_eq!(run(&r, &q, Transport::Udp, &mut out), Outcome::Forward);
    }

    #[test]
    fn udp_limits_and_tcp() {
        // 12 + 10 + 40 * 16 = 662 bytes.
        let r = registry(40);
        let mut out = vec![0u8; 65537];
        let o = run(&r, Q_MANY, Transport::Udp, &mut out);
        assert_eq!(
            o,
            Outcome::Answer {
                len: 22,
                kind: Answered::Truncated
            }
        );
        assert_eq!(out[2] & 0x02, 0x02, "TC");
        assert_eq!(&out[6..8], &[0, 0]);
        // EDNS 600 is still too small; 1232 fits; the OPT is echoed.
        let o = run(&r, &with_edns(Q_MANY, 600, 0), Transport::Udp, &mut out);
        assert!(matches!(
            o,
            Outcome::Answer {
                kind: Answered::Truncated,
                len: 33
            }
        ));
        let o = run(&r, &with_edns(Q_MANY, 1232, 0), Transport::Udp, &mut out);
        assert_eq!(
            o,
            Outcome::Answer {
                len: 662 + 11,
                kind: Answered::Records
            }
        );
        assert_eq!(&out[11..12], &[1], "ARCOUNT");
        assert_eq!(&out[662..665], &[0, 0, 41]);
        assert_eq!(out[669], 0x80, "DO echoed");
        // A small buffer caps UDP answers (the hook passes the MTU room).
        let o = run(
            &r,
            &with_edns(Q_MANY, 4096, 0),
            Transport::Udp,
            &mut out[..600],
        );
        assert!(matches!(
            o,
            Outcome::Answer {
                kind: Answered::Truncated,
                ..
            }
        ));
        // TCP: framed in and out, no 512 limit.
        let mut framed = (Q_MANY.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(Q_MANY);
        let o = Responder::default().respond_tcp(
            &r.load(),
            NET,
            ip(2),
            &framed,
            &mut FastRng::new(1),
            &mut out,
        );
        assert_eq!(
            o,
            Outcome::Answer {
                len: 664,
                kind: Answered::Records
            }
        );
        assert_eq!(&out[..2], &662u16.to_be_bytes());
        assert_eq!(&out[2..4], &[1, 2]);
        assert_eq!(tcp_message(&framed), Some((Q_MANY, framed.len())));
        assert_eq!(tcp_message(&framed[..5]), None);
    }

    #[test]
    fn badvers() {
        let r = registry(1);
        let mut out = [0u8; 512];
        let o = run(&r, &with_edns(Q_MANY, 1232, 1), Transport::Udp, &mut out);
        assert_eq!(
            o,
            Outcome::Answer {
                len: 22 + 11,
                kind: Answered::BadVers
            }
        );
        assert_eq!(out[3] & 0xf, 0);
        assert_eq!(out[22 + 5], 1, "extended rcode 16 >> 4");
    }

    #[test]
    fn not_served_and_unknown_querier() {
        let r = registry(1);
        let mut out = [0u8; 512];
        let snap = r.load();
        let rs = Responder::default();
        let mut rng = FastRng::new(1);
        let o = rs.respond(
            &snap,
            NetworkId(9),
            ip(2),
            Q_MANY,
            Transport::Udp,
            &mut rng,
            &mut out,
        );
        assert_eq!(o, Outcome::NotServed);
        // An address without an endpoint sees the arrival network's names.
        let o = rs.respond(
            &snap,
            NET,
            ip(99),
            Q_MANY,
            Transport::Udp,
            &mut rng,
            &mut out,
        );
        assert!(matches!(
            o,
            Outcome::Answer {
                kind: Answered::Records,
                ..
            }
        ));
    }

    #[test]
    fn truncating_forwarded_answers() {
        let r = registry(40);
        let mut out = vec![0u8; 2048];
        let Outcome::Answer { len, .. } = run(&r, Q_MANY, Transport::Tcp, &mut out) else {
            panic!()
        };
        assert_eq!(truncate_for_udp(&mut out, len, 4096), Some(len));
        assert_eq!(truncate_for_udp(&mut out, len, 512), Some(22));
        assert_eq!(out[2] & 0x02, 0x02);
        assert_eq!(&out[6..12], &[0; 6]);
        assert_eq!(truncate_for_udp(&mut out[..5], 5, 4), None);
    }

    #[test]
    fn error_answers_echo_the_question() {
        let mut out = [0u8; 512];
        let n = error_answer(Q_MANY, rcode::SERVFAIL, true, &mut out).unwrap();
        assert_eq!(n, Q_MANY.len());
        assert_eq!(&out[..4], &[1, 2, 0x81, 0x82]);
        assert_eq!(&out[12..n], &Q_MANY[12..]);
        assert_eq!(error_answer(b"junk", rcode::SERVFAIL, true, &mut out), None);
    }
}

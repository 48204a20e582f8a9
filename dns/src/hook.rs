//! [`DnsHook`]: the responder plugged into the switch as a
//! [`GatewayHook`], answering UDP and TCP queries to the gateway IP, port
//! 53, inline, and queueing the names that are not local for the
//! forwarder.
//!
//! Contract:
//! - Takes IPv4/UDP and IPv4/TCP frames to the network's gateway IP (on a
//!   macvlan/ipvlan network: the DNS service address,
//!   [`tapnet_switch::segment::DNS_ADDR`]; see [`Network::dns_service`]), and
//!   IPv6/UDP and IPv6/TCP frames to its IPv6 gateway address or its
//!   link-local address (dual-stack
//!   networks, [`tapnet_switch::Ipv6Config::gateway`]), port 53, on
//!   networks where the registry enables DNS; everything else (other
//!   ports, IPv4 fragments, IPv6 packets with any extension header — a
//!   fragment header, hop-by-hop options, … — networks without embedded
//!   DNS) goes to the inner hook (NAT), so hooks compose:
//!   `DnsHook<NatHook>`. Extension headers are not walked: resolvers do
//!   not send them, and skipping them keeps the parse bounded and simple.
//! - The querier is identified by its source address, IPv4 or IPv6: the
//!   registry maps either to its endpoint, so both see the same names.
//! - UDP length and UDP/TCP checksums (with the IPv4 or IPv6
//!   pseudo-header) are checked, except the checksum when the frame's
//!   virtio-net header says NEEDS_CSUM (partial checksum from the guest)
//!   or DATA_VALID. A zero UDP checksum means "none" over IPv4 and is
//!   invalid over IPv6 (RFC 8200 8.1). Bad datagrams → `Drop(Malformed)`.
//! - TCP is answered without connection state, SYN-cookie style (see
//!   [`crate::tcp`]): SYN → SYN-ACK with a cookie ISN; a data segment
//!   with a valid cookie holding a whole length-prefixed query at stream
//!   offset 0 → ONE frame with the ACK, the framed answer and FIN
//!   ([`HookVerdict::ReplyWith`] a GSO super-frame when it exceeds the
//!   MSS); a forwarded query → ACK now, the answer later from the
//!   forwarder ([`ForwardRequest::tcp`]); FIN → ACK; pure ACK and RST →
//!   consumed; a data segment with a bad cookie → RST. Segments not at
//!   offset 0 and incomplete messages are dropped and counted.
//! - Answers are built in `scratch` (Ethernet from the gateway MAC (the
//!   DNS service MAC on a segment network) to the
//!   querier's MAC, IPv4 or IPv6 from the gateway address the query was
//!   sent to, UDP from port 53, full checksums) and capped to the network
//!   MTU: `Reply(len)`.
//! - Names that are not local are pushed as a [`ForwardRequest`] on a
//!   bounded queue that the daemon's forwarder drains: `Consumed`. A full
//!   queue drops the query (`Drop(TxFull)`, counted): the client retries.
//!   With no queue configured the querier gets SERVFAIL.
//! - No allocation on the local-answer path (a forwarded query is copied
//!   once, into its request). Never panics.

use crate::ip::{self, Ipv6Header};
use crate::registry::Registry;
use crate::responder::{self, Answered, Outcome, Responder, Transport};
use crate::rng::FastRng;
use crate::tcp::{self, flags as tcp_flags, CookieKey, Ends, Segment, Tuple};
use crate::wire::{self, rcode};
use core::net::IpAddr;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use rand_core::RngCore;
use std::sync::Arc;
use tapnet_switch::wire::{
    ethernet, ipv4, udp, vnet, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, UdpPacket,
    UdpRepr, VnetHdr,
};
use tapnet_switch::{
    DropReason, GatewayHook, HookCx, HookVerdict, Network, NetworkId, NoHook, PortId,
};

/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// Ethernet + IPv4 (no options) + UDP headers of a reply frame.
pub const REPLY_HEADERS: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + 8;
/// Ethernet + IPv6 (no extension headers) + UDP headers of a reply frame.
pub const REPLY_HEADERS6: usize = ethernet::HEADER_LEN + ip::IPV6_HEADER_LEN + 8;

/// A query the embedded DNS could not answer locally, for the upstream
/// forwarder (an I/O edge of the daemon). It carries everything needed to
/// send the upstream answer back as a frame: see
/// [`ForwardRequest::reply_frame`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardRequest {
    pub network: NetworkId,
    /// The ingress port: where the answer frame goes.
    pub port: PortId,
    pub querier_mac: EthernetAddress,
    /// The querier's address: IPv4, or IPv6 for a query sent to the
    /// gateway's IPv6 address (then `gateway_ip` is that address).
    pub querier_ip: IpAddr,
    pub querier_port: u16,
    pub gateway_mac: EthernetAddress,
    /// The gateway address the query was sent to (the answer's source),
    /// of the same family as `querier_ip`.
    pub gateway_ip: IpAddr,
    /// The largest DNS message the querier accepts over UDP here (its EDNS
    /// size or 512, capped by our limit and the MTU): truncate the
    /// upstream answer to it ([`responder::truncate_for_udp`]).
    pub udp_limit: u16,
    /// When the query arrived (the switch's clock, ns).
    pub received_ns: u64,
    /// The DNS message, as received (without the TCP length prefix).
    pub query: Box<[u8]>,
    /// Set when the query came over TCP: how to answer on that connection.
    pub tcp: Option<TcpReply>,
}

/// Where an answer goes on the querier's TCP connection (which the switch
/// does not track: everything needed is here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpReply {
    /// Our sequence number (the query segment's ack).
    pub seq: u32,
    /// What we acknowledge: the end of the query (and the client's FIN).
    pub ack: u32,
    /// Payload per segment on the wire.
    pub mss: u16,
}

impl ForwardRequest {
    /// Builds the frame carrying `answer` back to the querier into `out`
    /// with its virtio-net metadata. Over UDP the answer is truncated to
    /// [`ForwardRequest::udp_limit`] with TC set when needed; over TCP it
    /// is length-prefixed and followed by FIN, in one frame (a GSO
    /// super-frame beyond the MSS; truncated with TC only beyond 64 KiB).
    /// IPv4 or IPv6 as the request's addresses. `None` if `out` is too
    /// small (give it `answer.len() + 80`), the oversized answer is
    /// malformed, or the addresses mix families.
    pub fn reply_frame(&self, answer: &[u8], out: &mut [u8]) -> Option<(usize, VnetHdr)> {
        let ends = Ends {
            dst_mac: self.querier_mac,
            src_mac: self.gateway_mac,
            src: (self.gateway_ip, DNS_PORT),
            dst: (self.querier_ip, self.querier_port),
        };
        if let Some(t) = self.tcp {
            let at = ends.tcp_headers() + 2;
            let dns = out.get_mut(at..at + answer.len())?;
            dns.copy_from_slice(answer);
            let len = responder::truncate_for_udp(dns, answer.len(), tcp::MAX_PAYLOAD - 2)?;
            out[at - 2..at].copy_from_slice(&(len as u16).to_be_bytes());
            return tcp::emit(out, &ends, &answer_segment(t, len + 2));
        }
        let h = ends.udp_headers();
        let dns = out.get_mut(h..h + answer.len())?;
        dns.copy_from_slice(answer);
        let len = responder::truncate_for_udp(dns, answer.len(), usize::from(self.udp_limit))?;
        write_udp_frame(out, ends, len).map(|n| (n, VnetHdr::default()))
    }
}

/// The segment carrying a (framed) answer of `len` bytes, then FIN.
fn answer_segment(t: TcpReply, len: usize) -> tcp::Emit {
    tcp::Emit {
        seq: t.seq,
        ack: t.ack,
        flags: tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN,
        opt_len: 0,
        payload_len: len,
        mss: t.mss,
    }
}

/// The producer side of the forward queue (one clone per worker hook).
pub type ForwardTx = Sender<ForwardRequest>;
/// The consumer side, drained by the daemon's forwarder.
pub type ForwardRx = Receiver<ForwardRequest>;

/// A bounded queue of forward requests.
pub fn forward_queue(capacity: usize) -> (ForwardTx, ForwardRx) {
    crossbeam_channel::bounded(capacity)
}

/// One hook's counters (per worker; the daemon sums them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// UDP datagrams to the gateway's port 53 (IPv4 or IPv6) on a DNS
    /// network.
    pub queries: u64,
    /// Local answers with records (A, AAAA, PTR).
    pub answers: u64,
    /// Local names, NOERROR without records (A or AAAA of a name without an
    /// address of that family, other types).
    pub nodata: u64,
    /// Over-size answers sent with TC.
    pub truncated: u64,
    pub formerr: u64,
    pub notimp: u64,
    pub badvers: u64,
    /// Not local, forwarding not allowed (internal networks).
    pub refused: u64,
    /// Not local, no forwarder configured: SERVFAIL.
    pub servfail: u64,
    /// Queued for the forwarder.
    pub forwarded: u64,
    /// Dropped: the forward queue was full or closed.
    pub forward_queue_full: u64,
    /// Dropped: DNS message without a header, or a response.
    pub dropped: u64,
    /// Dropped: bad UDP length or checksum.
    pub bad_udp: u64,
    /// TCP to the gateway's port 53: SYNs answered with a cookie SYN-ACK.
    pub tcp_syns: u64,
    /// TCP queries answered locally (also counted by kind above).
    pub tcp_answers: u64,
    /// TCP queries queued for the forwarder (also in `forwarded`).
    pub tcp_forwarded: u64,
    /// Client FINs acknowledged.
    pub tcp_fins: u64,
    /// Pure ACKs and RSTs, consumed silently.
    pub tcp_ignored: u64,
    /// Data segments whose ack is not a valid cookie: answered with RST.
    pub tcp_bad_cookie: u64,
    /// Dropped: data not at stream offset 0 (a query's later segment).
    pub tcp_not_at_start: u64,
    /// Dropped: data not holding a whole length-prefixed query.
    pub tcp_incomplete: u64,
    /// Dropped: bad TCP header or checksum, or flags we do not handle.
    pub bad_tcp: u64,
}

impl core::ops::AddAssign for DnsStats {
    fn add_assign(&mut self, o: DnsStats) {
        self.queries += o.queries;
        self.answers += o.answers;
        self.nodata += o.nodata;
        self.truncated += o.truncated;
        self.formerr += o.formerr;
        self.notimp += o.notimp;
        self.badvers += o.badvers;
        self.refused += o.refused;
        self.servfail += o.servfail;
        self.forwarded += o.forwarded;
        self.forward_queue_full += o.forward_queue_full;
        self.dropped += o.dropped;
        self.bad_udp += o.bad_udp;
        self.tcp_syns += o.tcp_syns;
        self.tcp_answers += o.tcp_answers;
        self.tcp_forwarded += o.tcp_forwarded;
        self.tcp_fins += o.tcp_fins;
        self.tcp_ignored += o.tcp_ignored;
        self.tcp_bad_cookie += o.tcp_bad_cookie;
        self.tcp_not_at_start += o.tcp_not_at_start;
        self.tcp_incomplete += o.tcp_incomplete;
        self.bad_tcp += o.bad_tcp;
    }
}

/// The embedded DNS as a gateway hook, delegating what is not DNS to
/// `inner`. One per worker (each with its own RNG and counters).
pub struct DnsHook<H: GatewayHook = NoHook, R: RngCore = FastRng> {
    registry: Arc<Registry>,
    responder: Responder,
    rng: R,
    forward: Option<ForwardTx>,
    inner: H,
    stats: DnsStats,
    cookies: CookieKey,
}

impl<R: RngCore> DnsHook<NoHook, R> {
    /// A DNS hook with nothing behind it.
    pub fn new(
        registry: Arc<Registry>,
        responder: Responder,
        rng: R,
        forward: Option<ForwardTx>,
    ) -> Self {
        DnsHook::with_inner(registry, responder, rng, forward, NoHook)
    }
}

impl<H: GatewayHook, R: RngCore> DnsHook<H, R> {
    /// A DNS hook that hands everything else to `inner`.
    pub fn with_inner(
        registry: Arc<Registry>,
        responder: Responder,
        rng: R,
        forward: Option<ForwardTx>,
        inner: H,
    ) -> Self {
        let mut rng = rng;
        let cookies = CookieKey::new(&mut rng);
        DnsHook {
            registry,
            responder,
            rng,
            cookies,
            forward,
            inner,
            stats: DnsStats::default(),
        }
    }

    pub fn stats(&self) -> DnsStats {
        self.stats
    }

    pub fn inner_mut(&mut self) -> &mut H {
        &mut self.inner
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

/// The UDP datagram of a frame that is a DNS query to the gateway.
struct Datagram<'a> {
    querier_mac: EthernetAddress,
    querier: (IpAddr, u16),
    /// The gateway address it was sent to (IPv4 or IPv6).
    gateway: IpAddr,
    dns: &'a [u8],
}

/// A TCP segment to the gateway's port 53.
struct TcpSeg<'a> {
    querier_mac: EthernetAddress,
    querier_ip: IpAddr,
    gateway: IpAddr,
    seg: Segment<'a>,
}

enum Classified<'a> {
    NotOurs,
    Bad,
    BadTcp,
    Query(Datagram<'a>),
    Tcp(TcpSeg<'a>),
}

/// The L3 part of a frame to one of the gateway's addresses: (source,
/// destination, protocol, L4 bytes bounded by the IP length).
fn to_gateway<'a>(net: &Network, frame: &'a [u8]) -> Option<(IpAddr, IpAddr, u8, &'a [u8])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let payload = frame.get(ethernet::HEADER_LEN..)?;
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(payload).ok()?;
            let proto = ip.protocol();
            if ip.dst_addr() != net.dns_service().0
                || (proto != ipv4::protocol::UDP && proto != ipv4::protocol::TCP)
                || ip.is_fragment()
            {
                return None;
            }
            let end = usize::from(ip.total_len()).min(payload.len());
            let l4 = payload.get(ip.header_len()..end)?;
            Some((ip.src_addr().into(), ip.dst_addr().into(), proto, l4))
        }
        EtherType::Ipv6 => {
            let v6 = net.config.v6.as_ref()?;
            let ip = Ipv6Header::parse(payload)?;
            // Any extension header (the next header is not UDP or TCP)
            // goes to the inner hook. The gateway's link-local address
            // answers too (the switch answers NDP for both).
            let to_gateway =
                ip.dst == v6.gateway || ip.dst == tapnet_switch::link_local_of(net.gateway_mac);
            if !to_gateway || (ip.next_header != ip::proto::UDP && ip.next_header != ip::proto::TCP)
            {
                return None;
            }
            let end = (ip::IPV6_HEADER_LEN + usize::from(ip.payload_len)).min(payload.len());
            let l4 = payload.get(ip::IPV6_HEADER_LEN..end)?;
            Some((ip.src.into(), ip.dst.into(), ip.next_header, l4))
        }
        _ => None,
    }
}

fn classify<'a>(net: &Network, meta: &VnetHdr, frame: &'a [u8]) -> Classified<'a> {
    let Some((src, gateway, proto, l4)) = to_gateway(net, frame) else {
        return Classified::NotOurs;
    };
    let querier_mac = EthernetFrame::new_unchecked(frame).src_addr();
    let offloaded = meta.flags & (vnet::F_NEEDS_CSUM | vnet::F_DATA_VALID) != 0;
    if proto == ip::proto::TCP {
        if l4.len() < 4 || u16::from_be_bytes([l4[2], l4[3]]) != DNS_PORT {
            return Classified::NotOurs;
        }
        let Some(seg) = Segment::parse(l4) else {
            return Classified::BadTcp;
        };
        if !offloaded && !ip::verify_l4(l4, src, gateway, ip::proto::TCP) {
            return Classified::BadTcp;
        }
        return Classified::Tcp(TcpSeg {
            querier_mac,
            querier_ip: src,
            gateway,
            seg,
        });
    }
    if l4.len() < 8 || u16::from_be_bytes([l4[2], l4[3]]) != DNS_PORT {
        return Classified::NotOurs;
    }
    let Ok(u) = UdpPacket::new_checked(l4) else {
        return Classified::Bad;
    };
    let sport = u.src_port();
    let ulen = usize::from(u.len());
    // A zero checksum is "none" over IPv4 only (RFC 768; RFC 8200 8.1).
    let csum_ok = match u.checksum() {
        0 => gateway.is_ipv4(),
        _ => ip::verify_l4(&l4[..ulen], src, gateway, ip::proto::UDP),
    };
    if sport == 0 || (!offloaded && !csum_ok) {
        return Classified::Bad;
    }
    Classified::Query(Datagram {
        querier_mac,
        querier: (src, sport),
        gateway,
        dns: &l4[8..ulen],
    })
}

/// Writes Ethernet, IP (v4 or v6, as the ends) and UDP headers (full
/// checksums) in front of the `dns_len` bytes already at
/// `out[e.udp_headers()..]`.
fn write_udp_frame(out: &mut [u8], e: Ends, dns_len: usize) -> Option<usize> {
    let h = e.udp_headers();
    let total = h + dns_len;
    let ulen = 8 + dns_len;
    u16::try_from(ulen).ok()?;
    let f = out.get_mut(..total)?;
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    eth.set_dst_addr(e.dst_mac);
    eth.set_src_addr(e.src_mac);
    eth.set_ethertype(ip::ethertype(e.src.0));
    let ip_at = ethernet::HEADER_LEN;
    let ip_len = ip::emit_header(&mut f[ip_at..], e.src.0, e.dst.0, ip::proto::UDP, ulen)?;
    let u_at = ip_at + ip_len;
    let mut u = UdpPacket::new_unchecked(&mut f[u_at..]);
    UdpRepr {
        src_port: e.src.1,
        dst_port: e.dst.1,
    }
    .emit(&mut u, dns_len);
    ip::fill_l4(
        &mut f[u_at..],
        udp::CHECKSUM_OFFSET,
        e.src.0,
        e.dst.0,
        ip::proto::UDP,
    )?;
    Some(total)
}

impl<H: GatewayHook, R: RngCore> GatewayHook for DnsHook<H, R> {
    fn handle(
        &mut self,
        cx: &HookCx<'_>,
        meta: &VnetHdr,
        frame: &[u8],
        scratch: &mut [u8],
    ) -> HookVerdict {
        let net = cx.network;
        let dg = match classify(net, meta, frame) {
            Classified::NotOurs => return self.inner.handle(cx, meta, frame, scratch),
            Classified::Bad => {
                self.stats.bad_udp += 1;
                return HookVerdict::Drop(DropReason::Malformed);
            }
            Classified::BadTcp => {
                if !self.registry.load().serves(net.id) {
                    return self.inner.handle(cx, meta, frame, scratch);
                }
                self.stats.bad_tcp += 1;
                return HookVerdict::Drop(DropReason::Malformed);
            }
            Classified::Tcp(t) => {
                if !self.registry.load().serves(net.id) {
                    return self.inner.handle(cx, meta, frame, scratch);
                }
                return self.handle_tcp(cx, &t, scratch);
            }
            Classified::Query(d) => d,
        };
        let snap = self.registry.load();
        if !snap.serves(net.id) {
            return self.inner.handle(cx, meta, frame, scratch);
        }
        self.stats.queries += 1;
        // Room for the DNS message: the scratch buffer and the MTU.
        let ip_len = ip::header_len(dg.gateway);
        let headers = ethernet::HEADER_LEN + ip_len + 8;
        let mtu_room = (net.config.mtu as usize).saturating_sub(ip_len + 8);
        let room = scratch.len().saturating_sub(headers).min(mtu_room);
        let Some(out) = scratch.get_mut(headers..headers + room) else {
            return HookVerdict::Drop(DropReason::Oversize);
        };
        let outcome = self.responder.respond(
            &snap,
            net.id,
            dg.querier.0,
            dg.dns,
            Transport::Udp,
            &mut self.rng,
            out,
        );
        let len = match outcome {
            Outcome::Answer { len, kind } => {
                self.count(kind);
                len
            }
            Outcome::NotServed => return self.inner.handle(cx, meta, frame, scratch),
            Outcome::Drop => {
                self.stats.dropped += 1;
                return HookVerdict::Drop(DropReason::Malformed);
            }
            Outcome::Forward => {
                let Some(tx) = &self.forward else {
                    self.stats.servfail += 1;
                    let Some(len) = responder::error_answer(dg.dns, rcode::SERVFAIL, true, out)
                    else {
                        return HookVerdict::Drop(DropReason::Malformed);
                    };
                    return self.reply(scratch, &dg, cx, len);
                };
                let req = ForwardRequest {
                    network: net.id,
                    port: cx.port.id,
                    querier_mac: dg.querier_mac,
                    querier_ip: dg.querier.0,
                    querier_port: dg.querier.1,
                    gateway_mac: net.dns_service().1,
                    gateway_ip: dg.gateway,
                    udp_limit: udp_limit(&self.responder, dg.dns, room),
                    received_ns: cx.now_ns,
                    query: dg.dns.into(),
                    tcp: None,
                };
                return match tx.try_send(req) {
                    Ok(()) => {
                        self.stats.forwarded += 1;
                        HookVerdict::Consumed
                    }
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        self.stats.forward_queue_full += 1;
                        HookVerdict::Drop(DropReason::TxFull)
                    }
                };
            }
        };
        self.reply(scratch, &dg, cx, len)
    }

    fn claim_buffer(&mut self, buf: Box<[u8]>, offset: usize) -> Box<[u8]> {
        // Only the inner hook claims frames.
        self.inner.claim_buffer(buf, offset)
    }
}

impl<H: GatewayHook, R: RngCore> DnsHook<H, R> {
    fn count(&mut self, kind: Answered) {
        let s = &mut self.stats;
        match kind {
            Answered::Records => s.answers += 1,
            Answered::NoData => s.nodata += 1,
            Answered::Truncated => s.truncated += 1,
            Answered::FormErr => s.formerr += 1,
            Answered::NotImp => s.notimp += 1,
            Answered::Refused => s.refused += 1,
            Answered::BadVers => s.badvers += 1,
        }
    }

    /// The stateless TCP answering machine (see the module doc).
    fn handle_tcp(&mut self, cx: &HookCx, t: &TcpSeg, scratch: &mut [u8]) -> HookVerdict {
        use tcp_flags::{ACK, FIN, RST, SYN};
        let net = cx.network;
        let seg = &t.seg;
        let ends = Ends {
            dst_mac: t.querier_mac,
            src_mac: net.dns_service().1,
            src: (t.gateway, DNS_PORT),
            dst: (t.querier_ip, seg.src_port),
        };
        let tuple = Tuple {
            client: (t.querier_ip, seg.src_port),
            server: (t.gateway, DNS_PORT),
        };
        // The MSS the MTU allows: IP and TCP headers off (40 or 60 bytes).
        let ip_tcp = ip::header_len(t.gateway) + tcp::HEADER_LEN;
        let mtu_mss = u16::try_from((net.config.mtu as usize).saturating_sub(ip_tcp))
            .unwrap_or(u16::MAX)
            .max(tcp::MSS_TABLE[0]);
        let plain = |r: Option<(usize, VnetHdr)>| match r {
            Some((n, m)) if m.is_plain() => HookVerdict::Reply(n),
            Some((n, m)) => HookVerdict::ReplyWith(n, m),
            None => HookVerdict::Drop(DropReason::Oversize),
        };
        let control = |scratch: &mut [u8], seq: u32, ack: u32, flags: u8| {
            let e = tcp::Emit {
                seq,
                ack,
                flags,
                opt_len: 0,
                payload_len: 0,
                mss: 1,
            };
            plain(tcp::emit(scratch, &ends, &e))
        };
        if seg.has(RST) {
            self.stats.tcp_ignored += 1;
            return HookVerdict::Consumed;
        }
        if seg.has(SYN) {
            if seg.has(ACK) || seg.has(FIN) {
                self.stats.bad_tcp += 1;
                return HookVerdict::Drop(DropReason::Malformed);
            }
            self.stats.tcp_syns += 1;
            let mss = seg.mss.unwrap_or(tcp::DEFAULT_MSS).min(mtu_mss);
            let isn = self.cookies.cookie(&tuple, seg.seq, tcp::mss_index(mss));
            let h = ends.tcp_headers();
            let Some(opt) = scratch.get_mut(h..h + 4) else {
                return HookVerdict::Drop(DropReason::Oversize);
            };
            opt[..2].copy_from_slice(&[2, 4]);
            opt[2..].copy_from_slice(&mss.to_be_bytes());
            let e = tcp::Emit {
                seq: isn,
                ack: seg.seq.wrapping_add(1),
                flags: SYN | ACK,
                opt_len: 4,
                payload_len: 0,
                mss: 1,
            };
            return plain(tcp::emit(scratch, &ends, &e));
        }
        if !seg.has(ACK) {
            self.stats.bad_tcp += 1;
            return HookVerdict::Drop(DropReason::Malformed);
        }
        let fin = u32::from(seg.has(FIN));
        if seg.payload.is_empty() {
            if fin == 0 {
                self.stats.tcp_ignored += 1;
                return HookVerdict::Consumed;
            }
            // The client closes (after our FIN, or giving up): ACK it.
            self.stats.tcp_fins += 1;
            return control(scratch, seg.ack, seg.seq.wrapping_add(1), ACK);
        }
        let Some(cookie) = self.cookies.check(&tuple, seg.ack.wrapping_sub(1)) else {
            self.stats.tcp_bad_cookie += 1;
            return control(scratch, seg.ack, 0, RST);
        };
        if seg.seq as u8 != cookie.first_seq_low {
            self.stats.tcp_not_at_start += 1;
            return HookVerdict::Drop(DropReason::Malformed);
        }
        let Some((msg, used)) = responder::tcp_message(seg.payload) else {
            self.stats.tcp_incomplete += 1;
            return HookVerdict::Drop(DropReason::Malformed);
        };
        let reply = TcpReply {
            seq: seg.ack,
            // All we received: one query per connection (we close after it).
            ack: seg
                .seq
                .wrapping_add(seg.payload.len() as u32)
                .wrapping_add(fin),
            mss: tcp::MSS_TABLE[usize::from(cookie.mss_index)].min(mtu_mss),
        };
        let snap = self.registry.load();
        let at = ends.tcp_headers();
        let room = scratch.len().saturating_sub(at).min(tcp::MAX_PAYLOAD);
        let Some(out) = scratch.get_mut(at..at + room) else {
            return HookVerdict::Drop(DropReason::Oversize);
        };
        let outcome = self.responder.respond_tcp(
            &snap,
            net.id,
            t.querier_ip,
            &seg.payload[..used],
            &mut self.rng,
            out,
        );
        let len = match outcome {
            Outcome::Answer { len, kind } => {
                self.count(kind);
                self.stats.tcp_answers += 1;
                len
            }
            Outcome::NotServed | Outcome::Drop => {
                self.stats.dropped += 1;
                return HookVerdict::Drop(DropReason::Malformed);
            }
            Outcome::Forward => {
                let Some(tx) = &self.forward else {
                    self.stats.servfail += 1;
                    let Some(n) = out
                        .get_mut(2..)
                        .and_then(|o| responder::error_answer(msg, rcode::SERVFAIL, true, o))
                    else {
                        return HookVerdict::Drop(DropReason::Malformed);
                    };
                    out[..2].copy_from_slice(&(n as u16).to_be_bytes());
                    return plain(tcp::emit(scratch, &ends, &answer_segment(reply, n + 2)));
                };
                let req = ForwardRequest {
                    network: net.id,
                    port: cx.port.id,
                    querier_mac: t.querier_mac,
                    querier_ip: t.querier_ip,
                    querier_port: seg.src_port,
                    gateway_mac: net.dns_service().1,
                    gateway_ip: t.gateway,
                    udp_limit: wire::UDP_LIMIT as u16,
                    received_ns: cx.now_ns,
                    query: msg.into(),
                    tcp: Some(reply),
                };
                return match tx.try_send(req) {
                    Ok(()) => {
                        self.stats.forwarded += 1;
                        self.stats.tcp_forwarded += 1;
                        // ACK the query now so the client does not
                        // retransmit it while the upstream answers.
                        control(scratch, reply.seq, reply.ack, ACK)
                    }
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        self.stats.forward_queue_full += 1;
                        HookVerdict::Drop(DropReason::TxFull)
                    }
                };
            }
        };
        plain(tcp::emit(scratch, &ends, &answer_segment(reply, len)))
    }

    /// Frames the `len`-byte answer already after the headers
    /// ([`REPLY_HEADERS`] or [`REPLY_HEADERS6`]).
    fn reply(&self, scratch: &mut [u8], dg: &Datagram, cx: &HookCx, len: usize) -> HookVerdict {
        let net = cx.network;
        let ends = Ends {
            dst_mac: dg.querier_mac,
            src_mac: net.dns_service().1,
            src: (dg.gateway, DNS_PORT),
            dst: dg.querier,
        };
        match write_udp_frame(scratch, ends, len) {
            Some(n) => HookVerdict::Reply(n),
            None => HookVerdict::Drop(DropReason::Oversize),
        }
    }
}

/// The UDP size limit of a query's client (see [`ForwardRequest::udp_limit`]).
fn udp_limit(r: &Responder, dns: &[u8], room: usize) -> u16 {
    let client = wire::Query::parse(dns)
        .ok()
        .and_then(|q| q.edns)
        .map_or(wire::UDP_LIMIT, |e| {
            usize::from(e.udp_size.min(r.config.max_udp_payload))
        });
    client
        .max(wire::UDP_LIMIT)
        .min(room)
        .min(usize::from(u16::MAX)) as u16
}

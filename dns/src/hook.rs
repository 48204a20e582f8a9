//! [`DnsHook`]: the responder plugged into the switch as a
//! [`GatewayHook`], answering UDP queries to the gateway IP, port 53,
//! inline, and queueing the names that are not local for the forwarder.
//!
//! Contract:
//! - Takes IPv4/UDP frames to the network's gateway IP, port 53, on
//!   networks where the registry enables DNS; everything else (other
//!   ports, TCP, fragments, networks without embedded DNS) goes to the
//!   inner hook (NAT, later), so hooks compose: `DnsHook<NatHook>`.
//! - UDP length and checksum are checked, except the checksum when the
//!   frame's virtio-net header says NEEDS_CSUM (partial checksum from the
//!   guest) or DATA_VALID. Bad datagrams → `Drop(Malformed)`.
//! - Answers are built in `scratch` (Ethernet from the gateway MAC to the
//!   querier's MAC, IPv4 from the gateway IP, UDP from port 53, full
//!   checksums) and capped to the network MTU: `Reply(len)`.
//! - Names that are not local are pushed as a [`ForwardRequest`] on a
//!   bounded queue that the daemon's forwarder drains: `Consumed`. A full
//!   queue drops the query (`Drop(TxFull)`, counted): the client retries.
//!   With no queue configured the querier gets SERVFAIL.
//! - No allocation on the local-answer path (a forwarded query is copied
//!   once, into its request). Never panics.

use crate::registry::Registry;
use crate::responder::{self, Answered, Outcome, Responder, Transport};
use crate::rng::FastRng;
use crate::wire::{self, rcode};
use core::net::Ipv4Addr;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use rand_core::RngCore;
use std::sync::Arc;
use tapnet_switch::wire::{
    checksum_finish, checksum_sum, ethernet, ipv4, vnet, EtherType, EthernetAddress, EthernetFrame,
    Ipv4Packet, VnetHdr,
};
use tapnet_switch::{DropReason, GatewayHook, HookCx, HookVerdict, NetworkId, NoHook, PortId};

/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// Ethernet + IPv4 (no options) + UDP headers of a reply frame.
pub const REPLY_HEADERS: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + 8;

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
    pub querier_ip: Ipv4Addr,
    pub querier_port: u16,
    pub gateway_mac: EthernetAddress,
    pub gateway_ip: Ipv4Addr,
    /// The largest DNS message the querier accepts over UDP here (its EDNS
    /// size or 512, capped by our limit and the MTU): truncate the
    /// upstream answer to it ([`responder::truncate_for_udp`]).
    pub udp_limit: u16,
    /// When the query arrived (the switch's clock, ns).
    pub received_ns: u64,
    /// The DNS message, as received.
    pub query: Box<[u8]>,
}

impl ForwardRequest {
    /// Builds the frame carrying `answer` back to the querier into `out`
    /// (truncating the answer to [`ForwardRequest::udp_limit`] with TC
    /// set when needed); returns the frame length, or `None` if `out` is
    /// too small or the oversized answer is malformed.
    pub fn reply_frame(&self, answer: &[u8], out: &mut [u8]) -> Option<usize> {
        let dns = out.get_mut(REPLY_HEADERS..REPLY_HEADERS + answer.len())?;
        dns.copy_from_slice(answer);
        let len = responder::truncate_for_udp(dns, answer.len(), usize::from(self.udp_limit))?;
        write_udp_frame(
            out,
            UdpEnds {
                dst_mac: self.querier_mac,
                src_mac: self.gateway_mac,
                src: (self.gateway_ip, DNS_PORT),
                dst: (self.querier_ip, self.querier_port),
            },
            len,
        )
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
    /// UDP datagrams to the gateway's port 53 on a DNS network.
    pub queries: u64,
    /// Local answers with records (A, PTR).
    pub answers: u64,
    /// Local names, NOERROR without records (AAAA, other types).
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
        DnsHook {
            registry,
            responder,
            rng,
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
    querier: (Ipv4Addr, u16),
    dns: &'a [u8],
}

enum Classified<'a> {
    NotOurs,
    Bad,
    Query(Datagram<'a>),
}

fn classify<'a>(gateway: Ipv4Addr, meta: &VnetHdr, frame: &'a [u8]) -> Classified<'a> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Classified::NotOurs;
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return Classified::NotOurs;
    }
    let Some(payload) = frame.get(ethernet::HEADER_LEN..) else {
        return Classified::NotOurs;
    };
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return Classified::NotOurs;
    };
    if ip.dst_addr() != gateway || ip.protocol() != ipv4::protocol::UDP || ip.is_fragment() {
        return Classified::NotOurs;
    }
    let end = usize::from(ip.total_len()).min(payload.len());
    let Some(udp) = payload.get(ip.header_len()..end) else {
        return Classified::NotOurs;
    };
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != DNS_PORT {
        return Classified::NotOurs;
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if sport == 0 || ulen < 8 || ulen > udp.len() {
        return Classified::Bad;
    }
    let udp = &udp[..ulen];
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    let offloaded = meta.flags & (vnet::F_NEEDS_CSUM | vnet::F_DATA_VALID) != 0;
    if csum != 0 && !offloaded {
        let mut acc = checksum_sum(0, &ip.src_addr().octets());
        acc = checksum_sum(acc, &gateway.octets());
        acc += u32::from(ipv4::protocol::UDP) + ulen as u32;
        acc = checksum_sum(acc, udp);
        if checksum_finish(acc) != 0 {
            return Classified::Bad;
        }
    }
    Classified::Query(Datagram {
        querier_mac: eth.src_addr(),
        querier: (ip.src_addr(), sport),
        dns: &udp[8..],
    })
}

/// The two ends of a reply datagram.
struct UdpEnds {
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
}

/// Writes Ethernet, IPv4 and UDP headers (full checksums) in front of the
/// `dns_len` bytes already at `out[REPLY_HEADERS..]`.
fn write_udp_frame(out: &mut [u8], e: UdpEnds, dns_len: usize) -> Option<usize> {
    let total = REPLY_HEADERS + dns_len;
    let ulen = 8 + dns_len;
    let ulen16 = u16::try_from(ulen).ok()?;
    u16::try_from(ipv4::MIN_HEADER_LEN + ulen).ok()?;
    let f = out.get_mut(..total)?;
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    eth.set_dst_addr(e.dst_mac);
    eth.set_src_addr(e.src_mac);
    eth.set_ethertype(EtherType::Ipv4);
    let ip_at = ethernet::HEADER_LEN;
    ipv4::emit_header(
        &mut f[ip_at..],
        e.src.0,
        e.dst.0,
        ipv4::protocol::UDP,
        ulen,
        64,
    );
    let u = &mut f[ip_at + ipv4::MIN_HEADER_LEN..];
    u[0..2].copy_from_slice(&e.src.1.to_be_bytes());
    u[2..4].copy_from_slice(&e.dst.1.to_be_bytes());
    u[4..6].copy_from_slice(&ulen16.to_be_bytes());
    u[6..8].fill(0);
    let mut acc = checksum_sum(0, &e.src.0.octets());
    acc = checksum_sum(acc, &e.dst.0.octets());
    acc += u32::from(ipv4::protocol::UDP) + ulen as u32;
    acc = checksum_sum(acc, &u[..ulen]);
    let c = match checksum_finish(acc) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
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
        let gateway = net.config.gateway;
        let dg = match classify(gateway, meta, frame) {
            Classified::NotOurs => return self.inner.handle(cx, meta, frame, scratch),
            Classified::Bad => {
                self.stats.bad_udp += 1;
                return HookVerdict::Drop(DropReason::Malformed);
            }
            Classified::Query(d) => d,
        };
        let snap = self.registry.load();
        if !snap.serves(net.id) {
            return self.inner.handle(cx, meta, frame, scratch);
        }
        self.stats.queries += 1;
        // Room for the DNS message: the scratch buffer and the MTU.
        let mtu_room = (net.config.mtu as usize).saturating_sub(ipv4::MIN_HEADER_LEN + 8);
        let room = scratch.len().saturating_sub(REPLY_HEADERS).min(mtu_room);
        let Some(out) = scratch.get_mut(REPLY_HEADERS..REPLY_HEADERS + room) else {
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
                    gateway_mac: net.gateway_mac,
                    gateway_ip: gateway,
                    udp_limit: udp_limit(&self.responder, dg.dns, room),
                    received_ns: cx.now_ns,
                    query: dg.dns.into(),
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
}

impl<H: GatewayHook, R: RngCore> DnsHook<H, R> {
    /// Frames the `len`-byte answer already at `scratch[REPLY_HEADERS..]`.
    fn reply(&self, scratch: &mut [u8], dg: &Datagram, cx: &HookCx, len: usize) -> HookVerdict {
        let net = cx.network;
        let ends = UdpEnds {
            dst_mac: dg.querier_mac,
            src_mac: net.gateway_mac,
            src: (net.config.gateway, DNS_PORT),
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

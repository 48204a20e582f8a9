//! The container-side leg of a relayed TCP connection: a smoltcp TCP
//! socket that terminates the container's connection at the gateway, one
//! per flow, sans-IO (IP packets in, IP packets out through a callback, a
//! clock passed in).
//!
//! # Why one interface per flow
//! smoltcp finds a packet's socket by scanning its socket set. The
//! connection table already maps each packet to its flow in O(1), so each
//! flow gets its own interface holding one socket: dispatch stays O(1)
//! with thousands of flows, and a listening socket can never pick up
//! another flow's SYN.
//!
//! # Addresses
//! The interface owns the network's gateway address with AnyIP and a
//! default route through itself, so it accepts (and sends from) any
//! address: an outbound flow's socket listens on the remote address the
//! container asked for; a published port's socket connects to the
//! container from the real client's address.
//!
//! # Offloads
//! The interface's MTU is 65535: the container's SYN has its MSS option
//! raised ([`raise_syn_mss`]) so that smoltcp sends 64 KiB segments, which
//! the edge hands to the TAP as TSO super-frames (the real MSS goes in the
//! virtio-net header; [`finish_tcp_segment`]). Checksums: smoltcp neither
//! computes nor verifies TCP checksums; the edge leaves a partial checksum
//! (`NEEDS_CSUM`) for the TAP or the receiving stack, as a NIC would.
//! Received segments are not verified either: they come from a local TAP
//! whose frames the kernel built (most with a partial checksum).

use crate::ip6::{self, Ipv6Packet};
use core::net::{IpAddr, SocketAddr};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
pub use smoltcp::socket::tcp::State as TcpSocketState;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use tapnet_switch::wire::{ipv4, tcp as wtcp, Ipv4Packet, TcpPacket, TcpRepr};

/// Largest IP packet the leg sends or accepts.
pub const MTU: usize = 65535;
/// MSS an IPv4 container's SYN is given, so smoltcp sends segments up to
/// the MTU (IPv4 and TCP headers without options).
pub const RAISED_MSS: u16 = (MTU - 40) as u16;
/// The same for IPv6 (a 40-byte IPv6 header).
pub const RAISED_MSS6: u16 = (MTU - 60) as u16;

/// Bytes a callback's buffer holds before the IP packet (room for the
/// virtio-net and Ethernet headers, so the edge writes one buffer).
pub const HEADROOM: usize = 12 + 14;

/// Socket buffer sizes.
#[derive(Clone, Copy, Debug)]
pub struct LegConfig {
    /// Receive buffer (the window offered to the container).
    pub rx_buffer: usize,
    /// Send buffer (data read from the host socket not yet acknowledged
    /// by the container): the most data in flight towards the container.
    /// 2 MiB by default: the segments cross a thread on their way (the
    /// worker's transmit stage), and 1 MiB measurably left a fast
    /// container's pipe waiting over that hop.
    pub tx_buffer: usize,
    pub random_seed: u64,
}

impl Default for LegConfig {
    fn default() -> Self {
        LegConfig {
            rx_buffer: 1024 * 1024,
            tx_buffer: 2 * 1024 * 1024,
            random_seed: 0,
        }
    }
}

/// Where a leg's outgoing packets go: the gateway's frame buffers.
///
/// A packet is written at `buffer()[HEADROOM..][..len]`, leaving
/// `buffer()[..HEADROOM]` for the virtio-net and Ethernet headers, then
/// [`LegTx::commit`]ted. When [`LegTx::ready`] is false the leg sends
/// nothing on [`Leg::poll`] and keeps its data for a later poll
/// (backpressure); answers produced while processing an incoming packet
/// (an ACK, a RST) still need a buffer: the implementation lends a
/// scratch one and counts their loss.
pub trait LegTx {
    /// Whether a buffer is free for a packet now (asked only when the leg
    /// has something to send).
    fn ready(&mut self) -> bool;
    /// The buffer for the next packet: at least `HEADROOM + MTU` bytes.
    fn buffer(&mut self) -> &mut [u8];
    /// The packet at `buffer()[HEADROOM..HEADROOM + len]` is complete.
    fn commit(&mut self, len: usize);
}

/// One flow's smoltcp interface and socket.
pub struct Leg {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    /// Where the socket's two rings live (see [`Leg::idle_rings`]).
    rx_ring: Ring,
    tx_ring: Ring,
    seen: RxSeen,
}

/// A ring's storage: the address and length of the `Vec<u8>` handed to
/// the socket. Invariant: smoltcp keeps that allocation, unmoved and
/// unresized, until the socket is dropped with its leg (a socket never
/// replaces its storage; a leg's socket set never removes its socket).
#[derive(Clone, Copy, Debug)]
struct Ring {
    addr: usize,
    len: usize,
}

impl Ring {
    fn of(storage: &mut Vec<u8>) -> Ring {
        Ring {
            // Exposed, so that the edge's pointer made from it carries the
            // allocation's provenance.
            addr: storage.as_mut_ptr().expose_provenance(),
            len: storage.len(),
        }
    }
}

/// What a leg has seen of the container's byte stream: enough to know
/// that no segment beyond the last acknowledgement waits in the receive
/// ring. smoltcp writes out-of-order segments into the ring's free space
/// (its assembler remembers where) and does not say whether it holds
/// any.
///
/// Invariant: every byte smoltcp stores lies before `edge` (if some
/// payload was ever received); `acked` is the acknowledgement number of
/// the leg's latest segment, smoltcp's next expected byte when it sent
/// it. So when `acked` is at or past `edge`, nothing is stored beyond
/// the in-order data ([`RxSeen::settled`]).
///
/// `narrow`: the connection scales the leg's window by a nonzero shift
/// (the container's SYN offered scaling, and the ring is over 64 KiB), so
/// the window field of each segment the leg sends is lowered by one unit
/// ([`sent_segment`]).
#[derive(Clone, Copy, Debug, Default)]
struct RxSeen {
    edge: Option<u32>,
    acked: Option<u32>,
    narrow: bool,
}

/// `a` is after `b` in sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl RxSeen {
    /// A segment from the container: `seq`, its payload's length, SYN.
    /// Its end is clamped to `window` bytes past the last acknowledgement
    /// (smoltcp stores nothing further), so that a stray segment far
    /// ahead does not hold the ring for ever.
    fn segment(&mut self, seq: u32, payload: u32, syn: bool, window: u32) {
        if payload == 0 {
            return;
        }
        let mut end = seq.wrapping_add(payload).wrapping_add(u32::from(syn));
        if let Some(a) = self.acked {
            if seq_after(end, a.wrapping_add(window)) {
                end = a.wrapping_add(window);
            }
        }
        match self.edge {
            Some(e) if !seq_after(end, e) => {}
            _ => self.edge = Some(end),
        }
    }

    fn sent_ack(&mut self, ack: u32) {
        self.acked = Some(ack);
    }

    /// Nothing received lies beyond the latest acknowledgement.
    fn settled(&self) -> bool {
        match (self.edge, self.acked) {
            (None, _) => true,
            (Some(e), Some(a)) => !seq_after(e, a),
            (Some(_), None) => false,
        }
    }
}

/// A span of a leg's ring that holds no data, lent for the duration of
/// one call (see [`Leg::idle_rings`]). Only this crate makes one; it
/// cannot be copied or kept past the call it was lent to.
#[derive(Debug)]
pub struct IdleRing<'a> {
    addr: usize,
    len: usize,
    _leg: core::marker::PhantomData<&'a mut [u8]>,
}

impl IdleRing<'_> {
    /// The span's first byte, with the ring allocation's provenance
    /// exposed; the span is `len` bytes of one live allocation that
    /// nothing else references during the call, and whose contents may
    /// be replaced by zeros (what `madvise(MADV_DONTNEED)` does to
    /// private anonymous memory), nothing else.
    pub fn addr(&self) -> usize {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Dev<'a> {
    rx: Option<&'a [u8]>,
    out: &'a mut dyn LegTx,
    seen: &'a mut RxSeen,
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a> {
    out: &'a mut dyn LegTx,
    seen: &'a mut RxSeen,
}

impl smoltcp::phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let buf = &mut self.out.buffer()[HEADROOM..HEADROOM + len];
        let r = f(buf);
        if let Some(ack) = sent_segment(buf, self.seen.narrow) {
            self.seen.sent_ack(ack);
        }
        self.out.commit(len);
        r
    }
}

impl Device for Dev<'_> {
    type RxToken<'c>
        = Rx<'c>
    where
        Self: 'c;
    type TxToken<'c>
        = Tx<'c>
    where
        Self: 'c;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let rx = self.rx.take()?;
        Some((
            Rx(rx),
            Tx {
                out: &mut *self.out,
                seen: &mut *self.seen,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        if !self.out.ready() {
            return None;
        }
        Some(Tx {
            out: &mut *self.out,
            seen: &mut *self.seen,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        caps()
    }
}

/// A [`LegTx`] that never has a buffer (only for building interfaces,
/// which send nothing).
struct NoTx;

impl LegTx for NoTx {
    fn ready(&mut self) -> bool {
        false
    }
    fn buffer(&mut self) -> &mut [u8] {
        &mut []
    }
    fn commit(&mut self, _: usize) {}
}

fn caps() -> DeviceCapabilities {
    let mut c = DeviceCapabilities::default();
    c.medium = Medium::Ip;
    c.max_transmission_unit = MTU;
    let mut sum = ChecksumCapabilities::ignored();
    // The IPv4 header checksum is always checked by the receiver: compute
    // it (20 bytes); never verify (local TAP).
    sum.ipv4 = Checksum::Tx;
    sum.tcp = Checksum::None;
    c.checksum = sum;
    c
}

/// Length of a buffer a [`LegTx`] lends: headroom and the largest packet
/// (an IPv6 packet: 40 bytes of header and a payload of up to 65535, so
/// that the gateway's datagram buffers hold the largest UDP datagram of
/// either family).
pub const TX_BUFFER_LEN: usize = HEADROOM + MTU + ip6::HEADER_LEN;

fn now_instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

impl Leg {
    /// A leg with no address yet (see [`Leg::address`]); `seed` seeds its
    /// interface's random numbers (initial sequence numbers, IP ids).
    fn fresh(cfg: &LegConfig, seed: u64, now_ns: u64) -> Leg {
        // Building an interface sends nothing.
        let mut seen = RxSeen::default();
        let mut dev = Dev {
            rx: None,
            out: &mut NoTx,
            seen: &mut seen,
        };
        let mut ic = IfaceConfig::new(HardwareAddress::Ip);
        ic.random_seed = seed;
        let mut iface = Interface::new(ic, &mut dev, now_instant(now_ns));
        iface.set_any_ip(true);
        let (mut rx, mut tx) = (vec![0u8; cfg.rx_buffer], vec![0u8; cfg.tx_buffer]);
        let (rx_ring, tx_ring) = (Ring::of(&mut rx), Ring::of(&mut tx));
        let mut sock = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        sock.set_nagle_enabled(false);
        sock.set_ack_delay(None);
        // Dead container or client: give up like a host stack would.
        sock.set_timeout(Some(Duration::from_secs(120)));
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(sock);
        Leg {
            iface,
            sockets,
            handle,
            rx_ring,
            tx_ring,
            seen,
        }
    }

    /// Gives the interface `gateway`/`prefix` as its only address, with a
    /// default route through it (AnyIP then accepts packets to any
    /// address routed through the interface), replacing what a previous
    /// flow of a recycled leg set.
    fn address(&mut self, gateway: IpAddr, prefix: u8) {
        self.seen = RxSeen::default();
        self.iface.update_ip_addrs(|a| {
            a.clear();
            let _ = a.push(IpCidr::new(IpAddress::from(gateway), prefix));
        });
        let routes = self.iface.routes_mut();
        routes.update(|r| r.clear());
        let _ = match gateway {
            IpAddr::V4(g) => routes.add_default_ipv4_route(g).map(|_| ()),
            IpAddr::V6(g) => routes.add_default_ipv6_route(g).map(|_| ()),
        };
    }

    /// Listens for the container's SYN to `remote`. Cannot fail: the
    /// socket is closed (new or recycled) and callers never relay port 0
    /// (then the leg stays closed and answers RST).
    fn listen_for(mut self, remote: SocketAddr) -> Leg {
        let ep = IpListenEndpoint {
            addr: Some(IpAddress::from(remote.ip())),
            port: remote.port(),
        };
        let _ = self.socket().listen(ep);
        self
    }

    /// Connects to `container` from `client` through the interface's
    /// `gateway`; false if it cannot (families differ, port 0).
    fn connect_to(&mut self, gateway: IpAddr, client: SocketAddr, container: SocketAddr) -> bool {
        if gateway.is_ipv4() != client.is_ipv4() || client.is_ipv4() != container.is_ipv4() {
            return false;
        }
        let remote = IpEndpoint::new(IpAddress::from(container.ip()), container.port());
        let local = IpListenEndpoint {
            addr: Some(IpAddress::from(client.ip())),
            port: client.port(),
        };
        let Leg {
            iface,
            sockets,
            handle,
            ..
        } = self;
        sockets
            .get_mut::<tcp::Socket>(*handle)
            .connect(iface.context(), remote, local)
            .is_ok()
    }

    /// A leg for a connection the container opens to `remote`: it accepts
    /// the container's SYN (feed it with [`Leg::ingress`]). `gateway`
    /// (the network's gateway address of `remote`'s family) and `prefix`
    /// name the interface's own address. (The gateway takes its legs from
    /// a [`LegPool`].)
    pub fn accept(
        gateway: impl Into<IpAddr>,
        prefix: u8,
        remote: impl Into<SocketAddr>,
        cfg: &LegConfig,
        now_ns: u64,
    ) -> Leg {
        let mut leg = Leg::fresh(cfg, cfg.random_seed, now_ns);
        leg.address(gateway.into(), prefix);
        leg.listen_for(remote.into())
    }

    /// A leg that connects to the container at `container` from `client`
    /// (a published port's connection); send its SYN with [`Leg::poll`].
    /// `None` when the addresses' families differ or the port is 0.
    pub fn connect(
        gateway: impl Into<IpAddr>,
        prefix: u8,
        client: impl Into<SocketAddr>,
        container: impl Into<SocketAddr>,
        cfg: &LegConfig,
        now_ns: u64,
    ) -> Option<Leg> {
        let gateway = gateway.into();
        let mut leg = Leg::fresh(cfg, cfg.random_seed, now_ns);
        leg.address(gateway, prefix);
        leg.connect_to(gateway, client.into(), container.into())
            .then_some(leg)
    }

    /// The TCP socket (read what the container sent, queue what goes to
    /// it, close, abort).
    pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    /// Processes one IP packet from the container. Answers it produces
    /// at once (a RST) go to `out`; ACKs and data wait for the next
    /// [`Leg::poll`], so that a batch of packets gets one ACK.
    pub fn ingress(&mut self, now_ns: u64, packet: &[u8], out: &mut dyn LegTx) {
        let now = now_instant(now_ns);
        if let Some((t, payload)) = tcp_segment(packet) {
            let window = self.rx_ring.len.min(u32::MAX as usize) as u32;
            let syn = t.has(wtcp::flags::SYN);
            self.seen.segment(t.seq_number(), payload, syn, window);
            // smoltcp's shift: the bits of the ring's length beyond 16.
            if syn && t.window_scale_option().is_some() && self.rx_ring.len > 0xffff {
                self.seen.narrow = true;
            }
        }
        let mut dev = Dev {
            rx: Some(packet),
            out,
            seen: &mut self.seen,
        };
        let _ = self
            .iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// Sends what is due (data queued, ACKs, retransmissions, FIN): at
    /// most one packet per call (smoltcp dispatches one segment per socket
    /// and poll); nothing when `out` is not [`LegTx::ready`].
    pub fn poll(&mut self, now_ns: u64, out: &mut dyn LegTx) {
        let now = now_instant(now_ns);
        let mut dev = Dev {
            rx: None,
            out,
            seen: &mut self.seen,
        };
        let _ = self.iface.poll_egress(now, &mut dev, &mut self.sockets);
    }

    /// When the leg next needs [`Leg::poll`] (a retransmission or delayed
    /// segment), in the same clock as `now_ns`; `None`: not before new
    /// input.
    pub fn poll_at_ns(&mut self, now_ns: u64) -> Option<u64> {
        let at = self.iface.poll_at(now_instant(now_ns), &self.sockets)?;
        Some((at.total_micros().max(0) as u64).saturating_mul(1000))
    }

    /// Lends each ring that holds no data to `give` (the daemon gives its
    /// pages back to the kernel), so that an idle flow's rings cost no
    /// memory: they are touched as data flows (the receive ring all
    /// round, since smoltcp writes on from where the last byte went), and
    /// stay resident otherwise. The receive ring is lent when nothing in
    /// order is queued and nothing out of order can be stored
    /// (`RxSeen`); the transmit ring when nothing is queued or
    /// unacknowledged. Whatever `give` does to the bytes, smoltcp never
    /// reads them before it writes them again. True when both were lent.
    pub fn idle_rings(&mut self, give: &mut dyn FnMut(IdleRing<'_>)) -> bool {
        let (rx, tx) = (self.rx_ring, self.tx_ring);
        let rx_empty = self.seen.settled() && self.socket().recv_queue() == 0;
        let tx_empty = self.socket().send_queue() == 0;
        for ring in [(rx_empty, rx), (tx_empty, tx)]
            .into_iter()
            .filter_map(|(empty, r)| empty.then_some(r))
        {
            give(IdleRing {
                addr: ring.addr,
                len: ring.len,
                _leg: core::marker::PhantomData,
            });
        }
        rx_empty && tx_empty
    }
}

/// A segment a leg has just built: its acknowledgement number, if it has
/// one and is not a RST (whose number answers the segment it refuses,
/// not the stream's next byte); with `narrow`, its window is lowered by
/// one scale unit first (not in a SYN, whose window is not scaled; not in
/// a RST; not below zero), so that the right edge the container sees
/// never passes the one smoltcp checks later. One parse of the header.
///
/// Why narrow: smoltcp offers its free space rounded down to the scale
/// unit from each acknowledgement, so its right edge can move back by up
/// to a unit less one byte from one segment to the next (RFC 9293 asks a
/// receiver not to shrink its window); and it drops what lies past its
/// latest edge. The container's stack, having sent up to the earlier
/// edge, then sees a hole and goes into loss recovery. smoltcp's true
/// edge (the stream's next unread byte plus the ring's length) never
/// moves back, and every edge it offers lies within a unit of it, so an
/// edge offered one unit short is inside every edge smoltcp offers later.
fn sent_segment(ip: &mut [u8], narrow: bool) -> Option<u32> {
    let b = tcp_bounds(ip)?;
    let mut t = TcpPacket::new_unchecked(&mut ip[b.l4..]);
    let rst = t.has(wtcp::flags::RST);
    if narrow && !rst && !t.has(wtcp::flags::SYN) {
        let w = t.window_len();
        t.set_window_len(w.saturating_sub(1));
    }
    (t.has(wtcp::flags::ACK) && !rst).then(|| t.ack_number())
}

/// The TCP header of a packet of either family ([`tcp_bounds`]) and its
/// payload's length.
fn tcp_segment(ip: &[u8]) -> Option<(TcpPacket<&[u8]>, u32)> {
    let b = tcp_bounds(ip)?;
    let payload = b.total.saturating_sub(b.l4 + b.doff) as u32;
    Some((TcpPacket::new_unchecked(&ip[b.l4..b.total]), payload))
}

/// Most finished legs a [`LegPool`] keeps.
pub const POOL_LEGS: usize = 64;

/// Most bytes a flow may have relayed (both directions together) for its
/// leg to be kept by a [`LegPool`]: a ring is written from its start
/// again after each reset, so a kept leg holds at most this much of
/// resident ring memory (64 kept legs: 4 MiB at most).
pub const RECYCLE_BYTES: u64 = 64 * 1024;

/// Legs for new flows, with finished ones kept for reuse.
///
/// A new leg allocates its two rings (1 and 2 MiB, which glibc serves
/// with `mmap`; see the daemon's `large_allocations_from_the_kernel`), and
/// freeing them is two `munmap`s, each a TLB shootdown: an interrupt to
/// every other CPU running one of the daemon's threads, which in a VM
/// costs tens of microseconds. For short connections that was the NAT
/// thread's largest cost (a fifth of its samples in `perf`) and on the
/// path of every handshake. A kept leg is reset by smoltcp itself when it
/// listens or connects again (state, sequence numbers, timers, both
/// rings emptied); only legs of flows that moved at most
/// [`RECYCLE_BYTES`] are kept, so the pool holds little resident memory.
///
/// Every new leg gets its own random seed, derived from the configured
/// one and a count: legs built from one seed would all draw the same
/// initial sequence numbers.
pub struct LegPool {
    cfg: LegConfig,
    idle: Vec<Leg>,
    made: u64,
    reused: u64,
}

impl LegPool {
    pub fn new(cfg: LegConfig) -> LegPool {
        LegPool {
            cfg,
            idle: Vec::new(),
            made: 0,
            reused: 0,
        }
    }

    /// Legs built, and legs reused, since the pool was made.
    pub fn counts(&self) -> (u64, u64) {
        (self.made, self.reused)
    }

    /// Finished legs kept now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    fn take(&mut self, gateway: IpAddr, prefix: u8, now_ns: u64) -> Leg {
        let mut leg = match self.idle.pop() {
            Some(leg) => {
                self.reused += 1;
                leg
            }
            None => {
                self.made += 1;
                let seed = tapnet_switch::fxhash::splitmix64(self.cfg.random_seed ^ self.made);
                Leg::fresh(&self.cfg, seed, now_ns)
            }
        };
        leg.address(gateway, prefix);
        leg
    }

    /// [`Leg::accept`] with a kept leg if there is one.
    pub fn accept(
        &mut self,
        gateway: impl Into<IpAddr>,
        prefix: u8,
        remote: impl Into<SocketAddr>,
        now_ns: u64,
    ) -> Leg {
        self.take(gateway.into(), prefix, now_ns)
            .listen_for(remote.into())
    }

    /// [`Leg::connect`] with a kept leg if there is one.
    pub fn connect(
        &mut self,
        gateway: impl Into<IpAddr>,
        prefix: u8,
        client: impl Into<SocketAddr>,
        container: impl Into<SocketAddr>,
        now_ns: u64,
    ) -> Option<Leg> {
        let gateway = gateway.into();
        let mut leg = self.take(gateway, prefix, now_ns);
        if leg.connect_to(gateway, client.into(), container.into()) {
            Some(leg)
        } else {
            self.idle.push(leg);
            None
        }
    }

    /// Takes back the leg of a flow that ended after relaying `relayed`
    /// bytes: kept if that is at most [`RECYCLE_BYTES`] and the pool has
    /// room, else freed. A leg still open is aborted first (nothing more
    /// is sent for the old flow: the caller already did what its end
    /// needed).
    pub fn put(&mut self, mut leg: Leg, relayed: u64) {
        // What is still in the rings was written to them too.
        let held = (leg.socket().recv_queue() + leg.socket().send_queue()) as u64;
        if relayed.saturating_add(held) > RECYCLE_BYTES || self.idle.len() >= POOL_LEGS {
            return;
        }
        if leg.socket().is_open() {
            leg.socket().abort();
        }
        self.idle.push(leg);
    }
}

/// Where a TCP segment lies in an IP packet (either family).
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// Offset of the TCP header.
    l4: usize,
    /// TCP header length with options.
    doff: usize,
    /// The IP packet's length (as its header says, bounded by the buffer).
    total: usize,
    src: IpAddr,
    dst: IpAddr,
}

/// The bounds of a packet carrying TCP, if sane: an IPv4 header that
/// checks out, or an IPv6 header whose next header is TCP (no extension
/// headers), and a TCP header whose options fit.
fn tcp_bounds(ip: &[u8]) -> Option<Bounds> {
    let (l4, total, src, dst) = match ip.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            if p.protocol() != ipv4::protocol::TCP {
                return None;
            }
            let total = usize::from(p.total_len()).min(ip.len());
            (
                p.header_len(),
                total,
                IpAddr::V4(p.src_addr()),
                IpAddr::V4(p.dst_addr()),
            )
        }
        6 => {
            let p = Ipv6Packet::new_checked(ip)?;
            if p.next_header() != ip6::next_header::TCP {
                return None;
            }
            let total = p.payload_range().end;
            (
                ip6::HEADER_LEN,
                total,
                IpAddr::V6(p.src_addr()),
                IpAddr::V6(p.dst_addr()),
            )
        }
        _ => return None,
    };
    let t = TcpPacket::new_checked(ip.get(l4..total)?).ok()?;
    Some(Bounds {
        l4,
        doff: t.header_len(),
        total,
        src,
        dst,
    })
}

/// Raises the MSS option of a SYN (or SYN+ACK) in an IP packet to
/// [`RAISED_MSS`] ([`RAISED_MSS6`] for IPv6); returns the container's
/// original MSS. The TCP checksum is not fixed: legs do not verify it.
pub fn raise_syn_mss(ip: &mut [u8]) -> Option<u16> {
    let b = tcp_bounds(ip)?;
    let mut t = TcpPacket::new_unchecked(&mut ip[b.l4..]);
    if !t.has(wtcp::flags::SYN) {
        return None;
    }
    t.set_mss_option(if b.src.is_ipv4() {
        RAISED_MSS
    } else {
        RAISED_MSS6
    })
}

/// What a TAP needs to know about a TCP packet a leg sent (see
/// [`finish_tcp_segment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentOffload {
    /// Offset of the TCP header in the IP packet.
    pub l4_offset: usize,
    /// IP + TCP header length.
    pub headers_len: usize,
    /// TCP payload length.
    pub payload_len: usize,
    /// The segment's TCP flags.
    pub flags: u8,
    /// An IPv6 packet (TSO as `GSO_TCPV6`, the Ethernet type IPv6).
    pub ipv6: bool,
}

/// Writes the partial TCP checksum (pseudo-header sum, not complemented)
/// of a packet a leg sent, for the receiver to complete (`NEEDS_CSUM`).
pub fn finish_tcp_segment(ip: &mut [u8]) -> Option<SegmentOffload> {
    let b = tcp_bounds(ip)?;
    let l4 = b.total.checked_sub(b.l4)?;
    let payload_len = l4.checked_sub(b.doff)?;
    match (b.src, b.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            TcpPacket::new_unchecked(&mut ip[b.l4..]).set_partial_checksum(s, d, l4)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ip6::set_partial_checksum(
            &mut ip[b.l4..],
            wtcp::CHECKSUM_OFFSET,
            s,
            d,
            ip6::next_header::TCP,
            l4,
        ),
        _ => return None,
    }
    let flags = TcpPacket::new_unchecked(&ip[b.l4..]).flags();
    Some(SegmentOffload {
        l4_offset: b.l4,
        headers_len: b.l4 + b.doff,
        payload_len,
        flags,
        ipv6: b.src.is_ipv6(),
    })
}

/// The RST answering `segment` (a TCP packet of either family from the
/// container to which no leg belongs, or whose connection failed),
/// written to `out[HEADROOM..]`; returns the IP packet's length. RFC 9293
/// 3.10.7.1: with ACK, `<SEQ=SEG.ACK><CTL=RST>`; without, `<SEQ=0><ACK=
/// SEG.SEQ+SEG.LEN><CTL=RST,ACK>`. Never answers a RST.
pub fn rst_for(segment: &[u8], out: &mut [u8]) -> Option<usize> {
    let b = tcp_bounds(segment)?;
    let t = TcpPacket::new_unchecked(&segment[b.l4..]);
    if t.has(wtcp::flags::RST) {
        return None;
    }
    let payload = b.total.saturating_sub(b.l4 + b.doff) as u32;
    let (seq, ack, flags) = if t.has(wtcp::flags::ACK) {
        (t.ack_number(), 0, wtcp::flags::RST)
    } else {
        let len = payload + u32::from(t.has(wtcp::flags::SYN)) + u32::from(t.has(wtcp::flags::FIN));
        (
            0,
            t.seq_number().wrapping_add(len),
            wtcp::flags::RST | wtcp::flags::ACK,
        )
    };
    let repr = TcpRepr {
        src_port: t.dst_port(),
        dst_port: t.src_port(),
        seq,
        ack,
        flags,
        window: 0,
        options_len: 0,
    };
    match (b.dst, b.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let o = out.get_mut(HEADROOM..HEADROOM + 40)?;
            ipv4::emit_header(o, from, to, ipv4::protocol::TCP, wtcp::HEADER_LEN, 64);
            let mut r = TcpPacket::new_unchecked(&mut o[ipv4::MIN_HEADER_LEN..]);
            repr.emit(&mut r);
            r.fill_checksum(from, to);
            Some(40)
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let len = ip6::HEADER_LEN + wtcp::HEADER_LEN;
            let o = out.get_mut(HEADROOM..HEADROOM + len)?;
            ip6::emit_header(o, from, to, ip6::next_header::TCP, wtcp::HEADER_LEN, 64)?;
            let m = &mut o[ip6::HEADER_LEN..];
            repr.emit(&mut TcpPacket::new_unchecked(&mut *m));
            ip6::fill_checksum(
                m,
                wtcp::CHECKSUM_OFFSET,
                from,
                to,
                ip6::next_header::TCP,
                false,
            );
            Some(len)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    /// Collects a leg's packets (without headroom).
    #[derive(Default)]
    struct VecTx {
        buf: Vec<u8>,
        sent: Vec<Vec<u8>>,
    }

    impl LegTx for VecTx {
        fn ready(&mut self) -> bool {
            true
        }
        fn buffer(&mut self) -> &mut [u8] {
            self.buf.resize(TX_BUFFER_LEN, 0);
            &mut self.buf
        }
        fn commit(&mut self, len: usize) {
            self.sent.push(self.buf[HEADROOM..HEADROOM + len].to_vec());
        }
    }

    /// Two legs wired back to back: `a` connects from 192.0.2.9:40000 to
    /// 10.0.0.2:80, `b` accepts at 10.0.0.2:80 (its "remote"), as an
    /// outbound leg does for a container dialing out. Packets are moved
    /// between them by hand.
    #[test]
    fn two_legs_exchange_data_and_close() {
        let cfg = LegConfig {
            rx_buffer: 4096,
            tx_buffer: 4096,
            random_seed: 1,
        };
        let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 40000);
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
        let mut a = Leg::connect(GW, 24, client, server, &cfg, 0).unwrap();
        let mut b = Leg::accept(GW, 24, server, &cfg, 0);
        let mut to_b = VecTx::default();
        let mut to_a = VecTx::default();
        let mut now = 0u64;
        let mut step = |a: &mut Leg, b: &mut Leg, to_a: &mut VecTx, to_b: &mut VecTx| {
            now += 1_000_000;
            a.poll(now, to_b);
            for mut p in std::mem::take(&mut to_b.sent) {
                raise_syn_mss(&mut p);
                b.ingress(now, &p, to_a);
            }
            b.poll(now, to_a);
            for p in std::mem::take(&mut to_a.sent) {
                a.ingress(now, &p, to_b);
            }
        };
        for _ in 0..5 {
            step(&mut a, &mut b, &mut to_a, &mut to_b);
        }
        assert_eq!(a.socket().state(), tcp::State::Established);
        assert_eq!(b.socket().state(), tcp::State::Established);
        assert_eq!(
            b.socket().remote_endpoint().unwrap(),
            IpEndpoint::new(IpAddress::Ipv4(*client.ip()), client.port())
        );
        a.socket().send_slice(b"hello").unwrap();
        a.socket().close();
        for _ in 0..5 {
            step(&mut a, &mut b, &mut to_a, &mut to_b);
        }
        let mut got = [0u8; 16];
        let n = b.socket().recv_slice(&mut got).unwrap();
        assert_eq!(&got[..n], b"hello");
        assert!(!b.socket().may_recv());
    }

    /// Moves packets between two legs for `rounds` millisecond steps.
    fn shuttle(a: &mut Leg, b: &mut Leg, now: &mut u64, rounds: u32) {
        let (mut to_a, mut to_b) = (VecTx::default(), VecTx::default());
        for _ in 0..rounds {
            *now += 1_000_000;
            a.poll(*now, &mut to_b);
            for mut p in std::mem::take(&mut to_b.sent) {
                raise_syn_mss(&mut p);
                b.ingress(*now, &p, &mut to_a);
            }
            b.poll(*now, &mut to_a);
            for p in std::mem::take(&mut to_a.sent) {
                a.ingress(*now, &p, &mut to_b);
            }
        }
    }

    /// A finished leg comes back from the pool for the next flow, with its
    /// new addresses (another network's gateway), no trace of the old
    /// connection, and data flowing; fresh legs draw different initial
    /// sequence numbers; a leg that moved more than RECYCLE_BYTES is freed.
    #[test]
    fn a_pool_reuses_finished_legs() {
        let cfg = LegConfig {
            rx_buffer: 4096,
            tx_buffer: 4096,
            random_seed: 7,
        };
        let mut pool = LegPool::new(cfg);
        let mut now = 0u64;
        let flow =
            |pool: &mut LegPool, gw: Ipv4Addr, client: SocketAddrV4, server, now: &mut u64| {
                let mut a = pool.connect(gw, 16, client, server, *now).unwrap();
                let mut b = pool.accept(gw, 16, server, *now);
                shuttle(&mut a, &mut b, now, 5);
                assert_eq!(b.socket().state(), tcp::State::Established);
                assert_eq!(
                    b.socket().remote_endpoint().unwrap(),
                    IpEndpoint::new(IpAddress::Ipv4(*client.ip()), client.port())
                );
                assert_eq!(
                    b.socket().recv_queue(),
                    0,
                    "nothing left of an earlier flow"
                );
                a.socket().send_slice(b"hello").unwrap();
                a.socket().close();
                shuttle(&mut a, &mut b, now, 5);
                let mut got = [0u8; 16];
                let n = b.socket().recv_slice(&mut got).unwrap();
                assert_eq!(&got[..n], b"hello");
                b.socket().close();
                shuttle(&mut a, &mut b, now, 5);
                assert!(!a.socket().is_open() && !b.socket().is_open());
                (a, b)
            };
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
        let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 40000);
        let (a, b) = flow(&mut pool, GW, client, server, &mut now);
        assert_eq!(pool.counts(), (2, 0));
        pool.put(a, 5);
        pool.put(b, 5);
        assert_eq!(pool.idle(), 2);
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 443);
        let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 40001);
        let (a, b) = flow(
            &mut pool,
            Ipv4Addr::new(10, 1, 0, 1),
            client,
            server,
            &mut now,
        );
        assert_eq!(pool.counts(), (2, 2), "both legs reused");
        pool.put(a, RECYCLE_BYTES + 1);
        pool.put(b, 0);
        assert_eq!(pool.idle(), 1, "the busy leg is freed");

        // Two new legs from one configured seed: different ISNs.
        let mut pool = LegPool::new(cfg);
        let isn = |pool: &mut LegPool, port| {
            let c = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), port);
            let mut leg = pool.connect(GW, 16, c, server, 0).unwrap();
            let mut out = VecTx::default();
            leg.poll(1_000_000, &mut out);
            let p = Ipv4Packet::new_checked(&out.sent[0][..]).unwrap();
            TcpPacket::new_checked(p.payload()).unwrap().seq_number()
        };
        assert_ne!(isn(&mut pool, 1000), isn(&mut pool, 1001));
    }

    #[test]
    fn rst_answers_a_syn() {
        // 10.0.0.2:1234 -> 192.0.2.1:80 SYN, seq 100.
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&100u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x02;
        let mut out = vec![0u8; TX_BUFFER_LEN];
        let n = rst_for(&p, &mut out).unwrap();
        let r = &out[HEADROOM..HEADROOM + n];
        assert_eq!(&r[12..16], &[192, 0, 2, 1]);
        assert_eq!(&r[16..20], &[10, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([r[20], r[21]]), 80);
        assert_eq!(u32::from_be_bytes([r[28], r[29], r[30], r[31]]), 101);
        assert_eq!(r[33], 0x14);
        assert_eq!(tapnet_switch::wire::checksum(&r[..20]), 0);
        let src = std::net::Ipv4Addr::new(192, 0, 2, 1);
        let dst = std::net::Ipv4Addr::new(10, 0, 0, 2);
        assert!(TcpPacket::new_checked(&r[20..40])
            .unwrap()
            .verify_checksum(src, dst));
    }

    #[test]
    fn raises_mss() {
        let mut p = vec![0u8; 44];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&44u16.to_be_bytes());
        p[9] = 6;
        p[32] = 6 << 4;
        p[33] = 0x02;
        p[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        assert_eq!(raise_syn_mss(&mut p), Some(1460));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), RAISED_MSS);
    }

    /// The IPv6 twin of `two_legs_exchange_data_and_close`: legs on an
    /// IPv6 gateway address accept and send from any address.
    #[test]
    fn two_legs_exchange_data_over_ipv6() {
        let cfg = LegConfig {
            rx_buffer: 4096,
            tx_buffer: 4096,
            random_seed: 1,
        };
        let gw: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let client = SocketAddrV6::new("2001:db8:9::9".parse().unwrap(), 40000, 0, 0);
        let server = SocketAddrV6::new("2001:db8:1::2".parse().unwrap(), 80, 0, 0);
        let mut a = Leg::connect(gw, 64, client, server, &cfg, 0).unwrap();
        let mut b = Leg::accept(gw, 64, server, &cfg, 0);
        let mut to_b = VecTx::default();
        let mut to_a = VecTx::default();
        let mut now = 0u64;
        let mut saw_raised = false;
        for i in 0..10 {
            if i == 5 {
                a.socket().send_slice(b"hello6").unwrap();
                a.socket().close();
            }
            now += 1_000_000;
            a.poll(now, &mut to_b);
            for mut p in std::mem::take(&mut to_b.sent) {
                assert_eq!(p[0] >> 4, 6);
                saw_raised |= raise_syn_mss(&mut p).is_some();
                let off = finish_tcp_segment(&mut p.clone()).unwrap();
                assert!(off.ipv6);
                assert_eq!(off.l4_offset, 40);
                b.ingress(now, &p, &mut to_a);
            }
            b.poll(now, &mut to_a);
            for p in std::mem::take(&mut to_a.sent) {
                a.ingress(now, &p, &mut to_b);
            }
        }
        assert!(saw_raised);
        assert_eq!(
            b.socket().remote_endpoint().unwrap(),
            IpEndpoint::new(IpAddress::Ipv6(*client.ip()), client.port())
        );
        let mut got = [0u8; 16];
        let n = b.socket().recv_slice(&mut got).unwrap();
        assert_eq!(&got[..n], b"hello6");
        // Mixed families cannot connect.
        let v4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
        assert!(Leg::connect(gw, 64, client, v4, &cfg, 0).is_none());
    }

    /// An IPv4 TCP segment from the container 10.0.0.2:5000 to
    /// 192.0.2.80:80 with `opts` (padded to 32 bits) and `payload`.
    fn container_segment(seq: u32, ack: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
        let doff = 20 + opts.len().div_ceil(4) * 4;
        let len = 20 + doff + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 80]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&5000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = ((doff / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        t[20..20 + opts.len()].copy_from_slice(opts);
        t[doff..].copy_from_slice(payload);
        p
    }

    /// (seq, ack, window field, window scale option) of a leg's segment.
    fn leg_segment(p: &[u8]) -> (u32, u32, u32, Option<u8>) {
        let t = &p[20..];
        let word = |i: usize| u32::from_be_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
        let doff = usize::from(t[12] >> 4) * 4;
        let mut ws = None;
        let mut i = 20;
        while i < doff {
            match t[i] {
                0 => break,
                1 => i += 1,
                kind => {
                    if kind == 3 {
                        ws = Some(t[i + 2]);
                    }
                    i += usize::from(t[i + 1]).max(2);
                }
            }
        }
        (
            word(4),
            word(8),
            u32::from(u16::from_be_bytes([t[14], t[15]])),
            ws,
        )
    }

    /// A leg accepting the container's connection at 192.0.2.80:80, with
    /// its handshake done: the container's SYN at sequence `c0` (MSS
    /// 65495, window scale 7), the leg's SYN-ACK, the container's ACK.
    /// Returns the leg, its output, its initial sequence number and its
    /// window scale.
    fn handshaken(rx_buffer: usize, seed: u64, c0: u32, now: u64) -> (Leg, VecTx, u32, u8) {
        let cfg = LegConfig {
            rx_buffer,
            tx_buffer: 4096,
            random_seed: seed,
        };
        let remote = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 80), 80);
        let mut leg = Leg::accept(GW, 24, remote, &cfg, 0);
        let mut out = VecTx::default();
        let syn = container_segment(c0, 0, 0x02, &[2, 4, 0xff, 0xd7, 1, 3, 3, 7], &[]);
        leg.ingress(now, &syn, &mut out);
        leg.poll(now, &mut out);
        let (s0, ack, _, ws) = leg_segment(&out.sent.pop().expect("a SYN-ACK"));
        assert_eq!(ack, c0 + 1);
        let ws = ws.expect("the leg scales its window");
        leg.ingress(
            now,
            &container_segment(c0 + 1, s0 + 1, 0x10, &[], &[]),
            &mut out,
        );
        (leg, out, s0, ws)
    }

    /// A sender that fills every window the leg offers, as Linux does,
    /// in segments of odd sizes, several in flight per acknowledgement,
    /// while the reader drains odd amounts: every byte it sends inside an
    /// offered window is taken. smoltcp rounds its window down to the
    /// scale unit from each new acknowledgement, so its right edge moves
    /// back by up to a unit, and it drops what lies past its latest
    /// edge; the container's stack then saw a hole and went into
    /// recovery (about 28 times a second in a 14 Gbit/s stream).
    #[test]
    fn bytes_sent_inside_an_offered_window_are_all_taken() {
        const RX: usize = 1 << 20;
        let now = 1_000_000u64;
        let c0 = 77u32;
        let (mut leg, mut out, s0, _) = handshaken(RX, 3, c0, now);
        let ack = s0 + 1;
        // The leg's window scale: what smoltcp derives from its ring.
        let shift = usize::BITS - RX.leading_zeros() - 16;
        let mut nxt = c0 + 1;
        // The SYN-ACK's window (not scaled) offered at least this much.
        let mut edge = nxt + 60_000;
        let mut sizes = [24_880usize, 1_001, 40_003, 7, 65_000, 333].iter().cycle();
        let mut b = vec![0u8; RX];
        for round in 0..400u32 {
            // A window's worth in flight, cut at the edge last offered.
            let mut flight = Vec::new();
            while seq_after(edge, nxt) && flight.len() < 3 {
                let room = edge.wrapping_sub(nxt) as usize;
                let n = (*sizes.next().unwrap()).min(room);
                flight.push(container_segment(
                    nxt,
                    ack,
                    0x18,
                    &[],
                    &vec![round as u8; n],
                ));
                nxt = nxt.wrapping_add(n as u32);
            }
            for seg in &flight {
                let (t, len) = tcp_segment(seg).unwrap();
                let sent_to = t.seq_number().wrapping_add(len);
                leg.ingress(now, seg, &mut out);
                leg.poll(now, &mut out);
                let (_, a, w, _) = leg_segment(out.sent.last().expect("an ACK"));
                assert_eq!(
                    a,
                    sent_to,
                    "round {round}: the leg dropped {} bytes sent inside the window it offered",
                    sent_to.wrapping_sub(a)
                );
                edge = a.wrapping_add(w << shift);
            }
            // The reader drains an odd amount now and then.
            if round % 3 == 0 {
                let n = leg
                    .socket()
                    .recv_slice(&mut b[..10_007 + round as usize])
                    .unwrap();
                assert!(n > 0 || leg.socket().recv_queue() == 0);
                leg.poll(now, &mut out);
                if let Some(p) = out.sent.last() {
                    let (_, a, w, _) = leg_segment(p);
                    edge = a.wrapping_add(w << shift);
                }
            }
        }
    }

    /// Which rings `idle_rings` lends, by length.
    fn lent(leg: &mut Leg) -> Vec<usize> {
        let mut v = Vec::new();
        leg.idle_rings(&mut |r| v.push(r.len()));
        v
    }

    /// The receive ring is lent only when it holds nothing: no data in
    /// order waiting to be read, and no segment stored out of order
    /// (which smoltcp keeps in the ring's free space and does not
    /// report); the transmit ring only when nothing is unacknowledged.
    #[test]
    fn only_rings_that_hold_nothing_are_lent() {
        const RX: usize = 64 * 1024;
        let now = 1_000_000u64;
        let c0 = 5000u32;
        let (mut leg, mut out, s0, _) = handshaken(RX, 9, c0, now);
        assert_eq!(lent(&mut leg), [RX, 4096], "nothing received yet");
        let ack = s0 + 1;
        let seg = |seq: u32, data: &[u8]| container_segment(seq, ack, 0x18, &[], data);
        let read = |leg: &mut Leg| {
            let mut b = vec![0u8; RX];
            let n = leg.socket().recv_slice(&mut b).unwrap();
            b.truncate(n);
            b
        };
        // In order, not read yet: the receive ring holds it.
        let mut seq = c0 + 1;
        leg.ingress(now, &seg(seq, &[1; 1000]), &mut out);
        leg.poll(now, &mut out);
        assert_eq!(lent(&mut leg), [4096]);
        assert_eq!(read(&mut leg), [1; 1000]);
        assert_eq!(lent(&mut leg), [RX, 4096], "read: empty");
        seq += 1000;
        // A segment lost (2s), the next one (3s) stored out of order.
        leg.ingress(now, &seg(seq + 1000, &[3; 1000]), &mut out);
        leg.poll(now, &mut out);
        assert_eq!(leg.socket().recv_queue(), 0);
        assert_eq!(lent(&mut leg), [4096], "out-of-order data stays");
        leg.ingress(now, &seg(seq, &[2; 1000]), &mut out);
        leg.poll(now, &mut out);
        let mut got = read(&mut leg);
        got.extend(read(&mut leg));
        assert_eq!(got.len(), 2000);
        assert!(got[..1000].iter().all(|&b| b == 2) && got[1000..].iter().all(|&b| b == 3));
        assert_eq!(lent(&mut leg), [RX, 4096], "the hole filled and read");
        seq += 2000;
        // Received but not acknowledged yet (no poll): not lent.
        leg.ingress(now, &seg(seq, &[4; 10]), &mut out);
        assert_eq!(read(&mut leg), [4; 10]);
        assert_eq!(lent(&mut leg), [4096]);
        leg.poll(now, &mut out);
        assert_eq!(lent(&mut leg), [RX, 4096]);
        seq += 10;
        // A stray segment far ahead holds the ring only until the stream
        // passes one window beyond the acknowledgement.
        leg.ingress(now, &seg(seq.wrapping_add(100 << 20), &[5; 100]), &mut out);
        leg.poll(now, &mut out);
        assert_eq!(lent(&mut leg), [4096]);
        let chunk = vec![6u8; 16 * 1024];
        for _ in 0..5 {
            leg.ingress(now, &seg(seq, &chunk), &mut out);
            leg.poll(now, &mut out);
            assert_eq!(read(&mut leg).len(), chunk.len());
            seq += chunk.len() as u32;
        }
        assert_eq!(lent(&mut leg), [RX, 4096]);
        // Sent and unacknowledged: the transmit ring holds it.
        leg.socket().send_slice(&[7; 100]).unwrap();
        leg.poll(now, &mut out);
        assert_eq!(lent(&mut leg), [RX]);
        leg.ingress(
            now,
            &container_segment(seq, ack + 100, 0x10, &[], &[]),
            &mut out,
        );
        assert_eq!(lent(&mut leg), [RX, 4096], "acknowledged");
    }

    #[test]
    fn sequence_numbers_wrap_in_what_a_leg_has_seen() {
        let mut s = RxSeen::default();
        assert!(s.settled());
        s.segment(u32::MAX - 10, 100, false, 1 << 16);
        assert!(!s.settled(), "no acknowledgement yet");
        s.sent_ack(u32::MAX - 10);
        assert!(!s.settled());
        s.sent_ack(89);
        assert!(s.settled(), "89 is past u32::MAX - 10 + 100");
        s.segment(89, 0, false, 1 << 16);
        assert!(s.settled(), "no payload, nothing stored");
        s.segment(80, 5, false, 1 << 16);
        assert!(s.settled(), "old data");
        s.segment(89, 1, true, 1 << 16);
        assert!(!s.settled(), "a SYN takes a number before its data");
        s.sent_ack(91);
        assert!(s.settled());
    }

    /// A container that fills the receive window to the right edge it was
    /// last offered, while the leg's next ACK offers an edge a few bytes
    /// short of it (the window field is the free space shifted right by
    /// the window scale, so the edge moves back by up to 2^scale - 1 bytes
    /// as the data waiting to be read grows). Linux senders fill windows
    /// to the byte when the relay's host side is slower than the
    /// container, and smoltcp 0.12 then panicked ("attempt to subtract
    /// sequence numbers with underflow", `last_scaled_window`) when asked
    /// when to poll next before its ACK went out (a flow waiting for a
    /// free buffer), or at its next poll with delayed ACKs, killing the
    /// worker with every flow on it. The leg must survive it and deliver
    /// the stream whole. (The edges seen here are the narrowed ones the
    /// container sees, `sent_segment`, which smoltcp's later edges never
    /// fall short of: it takes every byte; before, smoltcp 0.13 dropped
    /// the bytes past its new edge until they were sent again, which the
    /// loop below would still resend.)
    #[test]
    fn a_container_filling_a_window_the_leg_then_shrank_by_rounding() {
        let rx_buffer = 1 << 17;
        let mut now = 1_000_000u64;
        let c0 = 1000u32;
        let (mut leg, mut out, s0, ws) = handshaken(rx_buffer, 3, c0, now);
        let mut nxt = c0 + 1;
        // One byte at a time until an ACK offers a right edge short of
        // one offered before (within 2^ws + 1 bytes).
        let data: Vec<u8> = (0..rx_buffer).map(|i| (i % 251) as u8).collect();
        let mut offered = 0u32;
        let mut edge = 0u32;
        for _ in 0..(1u32 << ws) + 2 {
            let off = (nxt - c0 - 1) as usize;
            let seg = container_segment(nxt, s0 + 1, 0x18, &[], &data[off..off + 1]);
            now += 1000;
            leg.ingress(now, &seg, &mut out);
            nxt += 1;
            leg.poll(now, &mut out);
            let (_, ack, win, _) = leg_segment(&out.sent.pop().expect("an ACK"));
            assert_eq!(ack, nxt);
            edge = ack + (win << ws);
            if edge < offered {
                break;
            }
            offered = offered.max(edge);
        }
        assert!(edge < offered, "the offered edge never moved back");
        // The container fills the window it was offered before, in
        // segments of at most 60000 bytes.
        let sent_to = offered;
        while nxt != sent_to {
            let n = (sent_to - nxt).min(60_000);
            let off = (nxt - c0 - 1) as usize;
            let seg = container_segment(nxt, s0 + 1, 0x18, &[], &data[off..off + n as usize]);
            now += 1000;
            leg.ingress(now, &seg, &mut out);
            nxt += n;
        }
        // When to poll next is asked before the ACK goes out, as the
        // gateway does for a flow whose ACK waits for a free buffer.
        let _ = leg.poll_at_ns(now);
        leg.poll(now, &mut out);
        leg.poll(now + 1000, &mut out);
        assert!(leg.socket().is_active());
        // The relay reads; anything not taken would be sent again (none
        // is, see `bytes_sent_inside_an_offered_window_are_all_taken`).
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..64 {
            while let Ok(n @ 1..) = leg.socket().recv_slice(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            now += 1000;
            leg.poll(now, &mut out);
            let acked = out.sent.last().map(|p| leg_segment(p).1);
            out.sent.clear();
            let from = acked.unwrap_or(c0 + 1 + got.len() as u32);
            if from == sent_to {
                break;
            }
            let n = (sent_to - from).min(60_000);
            let off = (from - c0 - 1) as usize;
            let seg = container_segment(from, s0 + 1, 0x18, &[], &data[off..off + n as usize]);
            leg.ingress(now, &seg, &mut out);
        }
        while let Ok(n @ 1..) = leg.socket().recv_slice(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), (sent_to - c0 - 1) as usize);
        assert!(
            got == data[..got.len()],
            "the stream arrived whole and in order"
        );
    }

    #[test]
    fn rst_answers_an_ipv6_syn() {
        let src: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:9::1".parse().unwrap();
        let mut p = vec![0u8; 60];
        ip6::emit_header(&mut p, src, dst, 6, 20, 64).unwrap();
        p[40..42].copy_from_slice(&1234u16.to_be_bytes());
        p[42..44].copy_from_slice(&80u16.to_be_bytes());
        p[44..48].copy_from_slice(&100u32.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = 0x02;
        let mut out = vec![0u8; TX_BUFFER_LEN];
        let n = rst_for(&p, &mut out).unwrap();
        assert_eq!(n, 60);
        let r = Ipv6Packet::new_checked(&out[HEADROOM..HEADROOM + n]).unwrap();
        assert_eq!((r.src_addr(), r.dst_addr()), (dst, src));
        let t = &out[HEADROOM + 40..HEADROOM + 60];
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 80);
        assert_eq!(u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 101);
        assert_eq!(t[13], 0x14);
        assert!(ip6::verify_checksum(t, dst, src, 6));
        // Never a RST for a RST.
        p[53] = 0x04;
        assert_eq!(rst_for(&p, &mut out), None);
    }

    mod window_model {
        use super::*;
        use proptest::prelude::*;

        /// What the container's TCP may do next.
        #[derive(Clone, Debug)]
        enum Step {
            /// Send up to this many new bytes (within the furthest edge
            /// ever offered, as a sender that never takes back what a
            /// window allowed).
            Send(u32),
            /// Send again from the oldest unacknowledged byte.
            Resend(u32),
            /// Deliver the queued segment at this index (mod the queue).
            Deliver(u8),
            /// Lose it.
            Lose(u8),
            /// The gateway asks when to poll next, then maybe polls.
            PollAt,
            Poll,
            /// The relay reads up to this many bytes for the host side.
            Read(u32),
            /// Time passes (µs).
            Tick(u16),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => (1u32..70_000).prop_map(Step::Send),
                1 => (1u32..70_000).prop_map(Step::Resend),
                3 => any::<u8>().prop_map(Step::Deliver),
                1 => any::<u8>().prop_map(Step::Lose),
                2 => Just(Step::PollAt),
                3 => Just(Step::Poll),
                2 => (1u32..200_000).prop_map(Step::Read),
                1 => (1u16..2_000).prop_map(Step::Tick),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// A container whose TCP stays within the windows it was
            /// offered (but, as Linux, may have sent up to an edge a later
            /// ACK moved back), with losses, reordering, retransmissions,
            /// reads by the relay and the gateway's polls in any order:
            /// the leg never panics, stays open, and the relay reads
            /// exactly the stream's bytes, in order. (smoltcp 0.12 failed
            /// this: `a_container_filling_a_window_the_leg_then_shrank_by_rounding`.)
            #[test]
            fn a_window_respecting_container_never_breaks_a_leg(
                rx_shift in 16u32..19,
                steps in prop::collection::vec(step(), 1..160),
            ) {
                let mut now = 1_000_000u64;
                let c0 = 7000u32;
                let (mut leg, mut out, s0, ws) = handshaken((1 << rx_shift) + 4096, 5, c0, now);
                let ws = u32::from(ws);
                leg.poll(now, &mut out);
                // The stream: byte i is (i % 251).
                let byte = |seq: u32| ((seq - c0 - 1) % 251) as u8;
                let (mut una, mut nxt) = (c0 + 1, c0 + 1);
                // The handshake's window is not scaled.
                let mut edge = c0 + 1 + 65535;
                let mut queue: Vec<Vec<u8>> = Vec::new();
                let mut read = c0 + 1;
                let mut buf = vec![0u8; 200_000];
                let acks = |out: &mut VecTx, una: &mut u32, edge: &mut u32| {
                    for p in out.sent.drain(..) {
                        let (_, ack, win, _) = leg_segment(&p);
                        if ack.wrapping_sub(*una) as i32 > 0 {
                            *una = ack;
                        }
                        let e = ack.wrapping_add(win << ws);
                        if e.wrapping_sub(*edge) as i32 > 0 {
                            *edge = e;
                        }
                    }
                };
                let segment = |from: u32, n: u32| {
                    let data: Vec<u8> = (0..n).map(|i| byte(from + i)).collect();
                    container_segment(from, s0 + 1, 0x18, &[], &data)
                };
                for s in steps {
                    match s {
                        Step::Send(n) => {
                            let n = n.min(edge.wrapping_sub(nxt)).min(65_000);
                            if n > 0 && (edge.wrapping_sub(nxt) as i32) > 0 {
                                queue.push(segment(nxt, n));
                                nxt += n;
                            }
                        }
                        Step::Resend(n) => {
                            let n = n.min(nxt - una).min(65_000);
                            if n > 0 {
                                queue.push(segment(una, n));
                            }
                        }
                        Step::Deliver(i) if !queue.is_empty() => {
                            let p = queue.remove(usize::from(i) % queue.len());
                            leg.ingress(now, &p, &mut out);
                        }
                        Step::Lose(i) if !queue.is_empty() => {
                            queue.remove(usize::from(i) % queue.len());
                        }
                        Step::Deliver(_) | Step::Lose(_) => {}
                        Step::PollAt => {
                            let _ = leg.poll_at_ns(now);
                        }
                        Step::Poll => {
                            leg.poll(now, &mut out);
                            acks(&mut out, &mut una, &mut edge);
                        }
                        Step::Read(n) => {
                            let got = leg.socket().recv_slice(&mut buf[..n as usize]).unwrap();
                            for (i, b) in buf[..got].iter().enumerate() {
                                prop_assert_eq!(*b, byte(read + i as u32), "byte {} out of order", read + i as u32 - c0 - 1);
                            }
                            read += got as u32;
                        }
                        Step::Tick(us) => now += u64::from(us) * 1000,
                    }
                    // What the leg sent while taking a segment counts too.
                    acks(&mut out, &mut una, &mut edge);
                }
                prop_assert!(leg.socket().is_active());
                // Then the container sends again what is not acknowledged
                // and the relay reads everything: the stream arrives whole.
                for _ in 0..64 {
                    let got = leg.socket().recv_slice(&mut buf).unwrap();
                    for (i, b) in buf[..got].iter().enumerate() {
                        prop_assert_eq!(*b, byte(read + i as u32));
                    }
                    read += got as u32;
                    now += 1000;
                    leg.poll(now, &mut out);
                    acks(&mut out, &mut una, &mut edge);
                    if una == nxt && read == nxt {
                        break;
                    }
                    let n = (nxt - una).min(edge.wrapping_sub(una)).min(65_000);
                    if n > 0 {
                        leg.ingress(now, &segment(una, n), &mut out);
                    }
                }
                prop_assert_eq!((una, read), (nxt, nxt), "the stream did not arrive whole");
            }
        }
    }
}

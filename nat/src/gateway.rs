//! The NAT gateway, sans-IO: containers' flows to the outside (and to the
//! host's loopback through the gateway address) relayed over the daemon's
//! ordinary host sockets, and published ports relayed into containers.
//!
//! The gateway owns the connection table ([`ConnTrack`]), one smoltcp
//! [`Leg`] per TCP flow, the policy and the frame building. It has no
//! sockets, threads, clock or randomness: the I/O edge (the daemon's NAT
//! thread) owns the host sockets, keyed by [`SocketId`], and drives it.
//!
//! # Call order (the edge's loop)
//! 1. Input, in any order: [`Gateway::handle_frame`] for each frame a
//!    container sent to the outside (then perform the socket ops it
//!    queued, then its [`FrameAction`]); [`Gateway::handle_socket_event`]
//!    for what a host socket reported; datagrams read into the buffer
//!    [`Gateway::recv_buffer`] lends, then [`Gateway::handle_datagram`];
//!    accepted connections with [`Gateway::handle_accept`];
//!    [`Gateway::relay_tcp`] with the flow's socket when a
//!    [`SocketOp::Relay`] asks for it.
//!    Perform the socket ops an input queued before the next input
//!    ([`Gateway::poll_socket_op`] until `None`: opens, closes, reads).
//! 2. [`Gateway::handle_timeout`] once per loop (legs' retransmission
//!    timers, idle expiry); it also starts the relays: TCP flows that
//!    input or timers made ready are relayed once per loop, however many
//!    frames they got.
//! 3. Output: [`Gateway::poll_socket_op`] until `None` (relays, and
//!    the ops they queue), [`Gateway::poll_transmit`] until
//!    `None` (frames towards containers, each in a buffer the edge hands
//!    to a switch worker and gives back with [`Gateway::recycle`]), then
//!    sleep until [`Gateway::poll_timeout`].
//!
//! `now` is a monotonic time in nanoseconds (the switch's clock).
//!
//! # Buffers and backpressure
//! Frames towards containers are built in place in one of a fixed number
//! of buffers ([`Config::tx_buffers`], allocated at construction): host
//! reads go straight into the buffer that becomes the frame, and a leg
//! writes its segment where its headers go in front. When every buffer is
//! out (the workers' transmit queues are backed up), TCP legs keep their
//! data and are polled again when a buffer comes back, datagram sockets
//! are left unread ([`SocketOp::Read`] when a buffer comes back), and
//! other frames (RST, ICMP errors) are dropped and counted
//! ([`NatDrop::NoBuffer`]). Nothing is allocated per packet; a new flow
//! allocates its leg (TCP) and the copy of its SYN.
//!
//! # TCP
//! A container's SYN to a new destination queues [`SocketOp::Connect`];
//! the SYN is held until the edge reports the outcome. Connected: a leg
//! accepting on the destination address takes the SYN and the handshake
//! completes with the container. Refused: the container gets a RST (its
//! `connect` fails at once with "connection refused"); unreachable or
//! timed out: ICMP unreachable. Data moves between the leg's buffers and
//! the host socket in [`Gateway::relay_tcp`] with backpressure both ways
//! (a full leg buffer stops reads from the host; a blocked host socket
//! stops draining the leg, whose window closes); FIN maps to
//! [`SocketOp::ShutdownWrite`] and end of stream to FIN (half-close); a
//! reset on one side aborts the other ([`SocketOp::Close`] with `reset`).
//!
//! # Published ports
//! The edge owns the published sockets ([`Gateway::publish`] names them);
//! an accepted connection gets a leg that connects to the container from
//! the client's own address (for loopback or IPv6 clients, the gateway's:
//! those cannot be sources on the container's IPv4 network).
//!
//! # Policy
//! `--internal` networks and networks with masquerading off get nothing
//! out; the gateway address reaches the host's loopback unless turned
//! off; no flow reaches another tapnet network's subnet through the host.
//! Refusals are answered at once with ICMP "administratively prohibited".
//!
//! # Panics
//! None, for any bytes and any sequence of calls.

use crate::drops::{DropCounts, NatDrop};
use crate::leg::{self, Leg, LegConfig, LegTx, TcpSocketState, HEADROOM};
use crate::{
    ConnTrack, CreateError, Direction, FlowHandle, FlowKey, FlowView, Protocol, Side, SocketEvent,
    TcpFlags,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use tapnet_switch::wire::icmp::{self, IcmpPacket};
use tapnet_switch::wire::{
    ethernet, ipv4, tcp, udp, vnet, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet,
    TcpPacket, UdpPacket, UdpRepr, VnetHdr,
};
use tapnet_switch::{gateway_mac, DropReason, Network, NetworkId, PortId};

/// Where a frame starts in a [`Transmit`] buffer: after room for the
/// virtio-net header.
pub const FRAME_OFFSET: usize = vnet::HEADER_LEN;
/// Length of the gateway's frame buffers.
pub const BUFFER_LEN: usize = leg::TX_BUFFER_LEN;
/// Bytes relayed per TCP flow and direction per [`Gateway::relay_tcp`].
pub const RELAY_BUDGET: usize = 4 << 20;
/// Rounds of [`SocketOp::Relay`] per [`Gateway::handle_timeout`] (flows
/// that used their budget are relayed again in the next round).
const RELAY_ROUNDS: u32 = 4;
/// Largest UDP payload of an IPv4 datagram.
const MAX_UDP_PAYLOAD: usize = 65507;
/// Offsets in a buffer of the data read from a host socket.
const UDP_DATA_AT: usize = HEADROOM + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;
const ICMP_DATA_AT: usize = HEADROOM + ipv4::MIN_HEADER_LEN;

/// What the gateway knows about a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetInfo {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
    pub masquerade: bool,
    pub internal: bool,
}

/// How echo requests reach the outside (the edge probes at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpMode {
    /// One unprivileged ping socket per flow ([`SocketOp::OpenPing`]).
    PingSocket,
    /// The shared raw socket ([`SocketId::RawIcmp`], root): echo
    /// identifiers are rewritten to tell flows apart.
    Raw,
    /// Neither: echo requests are dropped ([`NatDrop::NoPingSocket`]).
    Unavailable,
}

/// The gateway's settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The connection table's limits, timeouts and hash seed.
    pub table: crate::Config,
    /// TCP/UDP to a network's gateway address reach the host's loopback.
    pub host_loopback: bool,
    /// Legs' buffer sizes and smoltcp's seed.
    pub leg: LegConfig,
    /// Frame buffers towards containers (see the module documentation).
    pub tx_buffers: usize,
    pub icmp: IcmpMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            table: crate::Config::default(),
            host_loopback: true,
            leg: LegConfig::default(),
            tx_buffers: 512,
            icmp: IcmpMode::PingSocket,
        }
    }
}

/// A host socket as the gateway names it; the edge keys its sockets by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketId {
    /// A flow's own socket: a TCP stream (connected or accepted), a
    /// connected UDP socket or a ping socket.
    Flow(FlowHandle),
    /// A published port's socket (TCP listener or UDP), named by the edge
    /// in [`Gateway::publish`].
    Published(u64),
    /// The shared raw ICMP socket ([`IcmpMode::Raw`]).
    RawIcmp,
}

/// What the edge does for the gateway on a host socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketOp {
    /// Open a non-blocking TCP connection to `to` for `flow`; report
    /// [`HostEvent::Connected`] or [`HostEvent::ConnectFailed`] (or
    /// [`HostEvent::OpenFailed`] if no socket could be made).
    Connect { flow: FlowHandle, to: SocketAddr },
    /// Open a UDP socket connected to `to` for `flow` (report
    /// [`HostEvent::OpenFailed`] on failure).
    OpenUdp { flow: FlowHandle, to: SocketAddr },
    /// Open a ping socket connected to `to` for `flow` (report
    /// [`HostEvent::OpenFailed`] on failure).
    OpenPing { flow: FlowHandle, to: Ipv4Addr },
    /// Call [`Gateway::relay_tcp`] with `flow`'s stream: data may move
    /// (new data from the container, room again in a leg, a timer).
    Relay(FlowHandle),
    /// Read datagrams from this socket again (it was left unread while
    /// no buffer was free).
    Read(SocketId),
    /// Shut down the sending direction of `flow`'s stream (the container
    /// sent FIN).
    ShutdownWrite(FlowHandle),
    /// Close `flow`'s socket; `reset`: abortively (a TCP RST, linger 0).
    Close { flow: FlowHandle, reset: bool },
}

/// What a host socket reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// A TCP connect completed.
    Connected,
    /// A TCP connect failed.
    ConnectFailed(ConnectError),
    /// The socket could not be made or registered.
    OpenFailed,
    /// A TCP stream is readable (data, end of stream or an error).
    Readable,
    /// A TCP stream is writable again.
    Writable,
    /// A connected UDP socket received a port unreachable (ECONNREFUSED).
    PortUnreachable,
}

/// Why a TCP connect failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// ECONNREFUSED, or anything not below: answered with RST.
    Refused,
    /// ENETUNREACH: ICMP network unreachable.
    NetUnreachable,
    /// EHOSTUNREACH: ICMP host unreachable.
    HostUnreachable,
    /// ETIMEDOUT: ICMP host unreachable.
    TimedOut,
}

/// What the edge does with a frame's payload after [`Gateway::handle_frame`]
/// (once the socket ops that call queued are done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameAction {
    /// Nothing (handled, answered or dropped and counted).
    None,
    /// Send `frame[payload]` on `via`, to `to` when given (an unconnected
    /// socket); a failure is counted with [`Gateway::count_drop`]
    /// ([`NatDrop::HostSend`]). A socket whose open failed is skipped.
    Send {
        via: SocketId,
        payload: Range<usize>,
        to: Option<SocketAddr>,
    },
}

/// A frame towards a container: `buf[FRAME_OFFSET..][..len]`, to send on
/// `port` with `meta`; give `buf` back with [`Gateway::recycle`]. `lane`:
/// the lane the flow's frames from the container last came in on (see
/// [`Gateway::handle_frame`]), `None` for a flow the container has not
/// sent on yet.
#[derive(Debug)]
pub struct Transmit {
    pub port: PortId,
    pub meta: VnetHdr,
    pub buf: Box<[u8]>,
    pub len: usize,
    pub lane: Option<u8>,
}

impl Transmit {
    /// The Ethernet frame.
    pub fn frame(&self) -> &[u8] {
        &self.buf[FRAME_OFFSET..FRAME_OFFSET + self.len]
    }
}

/// What a worker does with a frame addressed to the gateway MAC (see
/// [`classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// For the NAT: hand it to the gateway's thread.
    Nat,
    /// Not the NAT's (local, broadcast, another protocol to the gateway):
    /// the switch decides.
    Pass,
    /// Dropped: counted under the NAT reason and the switch's.
    Drop(NatDrop, DropReason),
}

/// Whether a frame addressed to the gateway MAC of `net` is for the NAT:
/// IPv4 TCP, UDP or ICMP to an address outside the network (or TCP/UDP
/// to the gateway address itself: the host's loopback), not a fragment.
/// Cheap and allocation-free: run by the workers.
pub fn classify(net: &Network, frame: &[u8]) -> Claim {
    let Some(payload) = frame.get(ethernet::HEADER_LEN..) else {
        return Claim::Drop(NatDrop::Malformed, DropReason::Malformed);
    };
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return Claim::Drop(NatDrop::Malformed, DropReason::Malformed);
    };
    let cfg = &net.config;
    let dst = ip.dst_addr();
    let in_subnet = prefix_match(dst, cfg.subnet, cfg.prefix_len);
    if (in_subnet && dst != cfg.gateway)
        || dst.is_broadcast()
        || dst.is_multicast()
        || dst.is_unspecified()
        || dst.is_loopback()
    {
        return Claim::Pass;
    }
    match ip.protocol() {
        ipv4::protocol::TCP | ipv4::protocol::UDP => {}
        ipv4::protocol::ICMP if dst != cfg.gateway => {}
        _ if dst == cfg.gateway => return Claim::Pass,
        _ => return Claim::Drop(NatDrop::Protocol, DropReason::NoRoute),
    }
    if ip.is_fragment() {
        return Claim::Drop(NatDrop::IpFragment, DropReason::GatewayUnsupported);
    }
    Claim::Nat
}

fn prefix_match(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix.min(32)));
    (u32::from(a) & mask) == (u32::from(net) & mask)
}

/// A container the gateway can send to.
#[derive(Clone, Copy, Debug)]
struct Endpoint {
    mac: EthernetAddress,
    port: PortId,
}

/// A published port.
#[derive(Clone, Copy, Debug)]
struct Pub {
    network: NetworkId,
    container: SocketAddrV4,
}

/// How a UDP flow reaches its remote.
#[derive(Clone, Copy, Debug)]
enum UdpVia {
    /// Its own connected socket (outbound).
    Own,
    /// A published socket, answering `client`.
    Published { id: u64, client: SocketAddr },
}

/// A TCP flow whose host side is up.
struct TcpFlow {
    leg: Leg,
    /// The host socket reached end of stream; the leg was closed.
    host_eof: bool,
    /// The container closed its side; the host socket was shut down.
    container_eof: bool,
    /// The host socket's last write would block: wait for writable.
    write_blocked: bool,
}

enum Io {
    /// Outbound TCP waiting for the host connect; the container's SYN.
    Connecting {
        syn: Vec<u8>,
    },
    Tcp(Box<TcpFlow>),
    Udp(UdpVia),
    /// ICMP echo through a ping socket, or (`raw`) the shared raw socket.
    Icmp {
        raw: bool,
    },
}

struct Flow {
    handle: FlowHandle,
    network: NetworkId,
    container: SocketAddrV4,
    /// The remote as the container sees it.
    remote: SocketAddrV4,
    io: Io,
    /// The lane of the container's last frame of this flow.
    lane: Option<u8>,
}

/// The frame buffers and the queue of frames towards containers.
struct TxQueue {
    pool: Vec<Box<[u8]>>,
    queue: VecDeque<Transmit>,
    /// The buffer lent for the next frame (a host read, a leg packet).
    current: Option<Box<[u8]>>,
    /// Lent when no buffer is free; what is written there is dropped.
    scratch: Box<[u8]>,
    /// The lane of the frames being built.
    lane: Option<u8>,
}

impl TxQueue {
    fn new(n: usize) -> TxQueue {
        TxQueue {
            pool: (0..n)
                .map(|_| vec![0u8; BUFFER_LEN].into_boxed_slice())
                .collect(),
            queue: VecDeque::with_capacity(n),
            current: None,
            scratch: vec![0u8; BUFFER_LEN].into_boxed_slice(),
            lane: None,
        }
    }

    fn has_buffer(&self) -> bool {
        self.current.is_some() || !self.pool.is_empty()
    }

    /// The lent buffer, taken from the pool if needed.
    fn current(&mut self) -> Option<&mut Box<[u8]>> {
        if self.current.is_none() {
            self.current = self.pool.pop();
        }
        self.current.as_mut()
    }

    /// Finishes the frame in the lent buffer (IP packet at `HEADROOM`,
    /// `ip_len` bytes): Ethernet header from the gateway to `ep`, queued.
    fn push(&mut self, ep: Endpoint, gw: EthernetAddress, meta: VnetHdr, ip_len: usize) {
        let Some(mut buf) = self.current.take() else {
            return;
        };
        let mut eth = EthernetFrame::new_unchecked(&mut buf[FRAME_OFFSET..HEADROOM]);
        eth.set_dst_addr(ep.mac);
        eth.set_src_addr(gw);
        eth.set_ethertype(EtherType::Ipv4);
        self.queue.push_back(Transmit {
            port: ep.port,
            meta,
            buf,
            len: ethernet::HEADER_LEN + ip_len,
            lane: self.lane,
        });
    }
}

/// A leg's output: segments finished in place and queued to the
/// container (see [`LegTx`]).
struct LegOut<'a> {
    tx: &'a mut TxQueue,
    drops: &'a mut DropCounts,
    ct: &'a mut ConnTrack,
    h: FlowHandle,
    now: u64,
    ep: Option<Endpoint>,
    gw: EthernetAddress,
    mss: usize,
    /// The last buffer lent was the scratch one.
    scratch: bool,
    /// The leg wanted to send but no buffer was free.
    starved: bool,
}

impl LegTx for LegOut<'_> {
    fn ready(&mut self) -> bool {
        let r = self.tx.has_buffer();
        // smoltcp asks only when it has something to send.
        self.starved |= !r;
        r
    }

    fn buffer(&mut self) -> &mut [u8] {
        self.scratch = self.tx.current().is_none();
        if self.scratch {
            self.starved = true;
            return &mut self.tx.scratch;
        }
        match self.tx.current.as_mut() {
            Some(b) => b,
            None => &mut self.tx.scratch,
        }
    }

    fn commit(&mut self, len: usize) {
        if self.scratch {
            self.drops.count(NatDrop::NoBuffer);
            return;
        }
        let Some(buf) = self.tx.current.as_mut() else {
            return;
        };
        let Some(off) = leg::finish_tcp_segment(&mut buf[HEADROOM..HEADROOM + len]) else {
            self.drops.count(NatDrop::Malformed);
            return;
        };
        let Some(ep) = self.ep else {
            self.drops.count(NatDrop::NoEndpoint);
            return;
        };
        let mut meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: (ethernet::HEADER_LEN + off.l4_offset) as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
            ..Default::default()
        };
        if off.payload_len > self.mss {
            meta.gso_type = vnet::GSO_TCPV4;
            meta.gso_size = self.mss as u16;
            meta.hdr_len = (ethernet::HEADER_LEN + off.headers_len) as u16;
        }
        let _ = self.ct.handle_tcp(
            self.h,
            self.now,
            TcpFlags(off.flags),
            Side::Remote,
            off.payload_len,
        );
        self.tx.push(ep, self.gw, meta, len);
    }
}

/// The NAT gateway (see the module documentation).
pub struct Gateway {
    config: Config,
    ct: ConnTrack,
    /// By flow slot index (the table's capacity).
    flows: Vec<Option<Flow>>,
    nets: HashMap<NetworkId, NetInfo>,
    endpoints: HashMap<(NetworkId, Ipv4Addr), Endpoint>,
    /// Port → endpoint key.
    ports: HashMap<PortId, (NetworkId, Ipv4Addr)>,
    published: HashMap<u64, Pub>,
    tx: TxQueue,
    ops: VecDeque<SocketOp>,
    /// (when, flow) legs to poll; stale entries are harmless.
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    /// TCP flows to relay in the next round.
    dirty: Vec<FlowHandle>,
    /// The current round of relays.
    round: Vec<FlowHandle>,
    rounds_left: u32,
    /// Relays are handed out (from [`Gateway::handle_timeout`] until
    /// [`Gateway::poll_socket_op`] says `None`).
    relaying: bool,
    /// Legs and sockets waiting for a free buffer.
    starved_flows: Vec<FlowHandle>,
    starved_sockets: Vec<SocketId>,
    /// Echo identifier on the raw socket → flow.
    raw_ids: HashMap<u16, FlowHandle>,
    drops: DropCounts,
}

impl Gateway {
    /// A gateway with its table, flow slots and frame buffers allocated.
    pub fn new(config: Config) -> Gateway {
        let ct = ConnTrack::new(config.table);
        let capacity = ct.config().capacity as usize;
        Gateway {
            ct,
            flows: (0..capacity).map(|_| None).collect(),
            nets: HashMap::new(),
            endpoints: HashMap::new(),
            ports: HashMap::new(),
            published: HashMap::new(),
            tx: TxQueue::new(config.tx_buffers.max(1)),
            ops: VecDeque::with_capacity(1024),
            timers: BinaryHeap::with_capacity(1024),
            dirty: Vec::with_capacity(1024),
            round: Vec::with_capacity(1024),
            rounds_left: RELAY_ROUNDS,
            relaying: false,
            starved_flows: Vec::new(),
            starved_sockets: Vec::new(),
            raw_ids: HashMap::new(),
            drops: DropCounts::default(),
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The connection table (counters, gauges, configuration).
    pub fn conntrack(&self) -> &ConnTrack {
        &self.ct
    }
    /// The gateway's drop counters.
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
    /// Counts a drop the edge saw (a failed send, a full injection queue).
    pub fn count_drop(&mut self, r: NatDrop) {
        self.drops.count(r);
    }

    // ---- control ----------------------------------------------------------

    /// Adds or replaces a network.
    pub fn set_network(&mut self, id: NetworkId, info: NetInfo) {
        self.nets.insert(id, info);
    }

    pub fn remove_network(&mut self, id: NetworkId) {
        self.nets.remove(&id);
    }

    /// A container interface: frames to `ip` on `network` go to `port`.
    pub fn add_endpoint(&mut self, network: NetworkId, ip: Ipv4Addr, mac: [u8; 6], port: PortId) {
        self.ports.insert(port, (network, ip));
        self.endpoints.insert(
            (network, ip),
            Endpoint {
                mac: EthernetAddress(mac),
                port,
            },
        );
    }

    /// The interface on `port` left: its flows are removed and their
    /// sockets closed (reset where a stream was cut short).
    pub fn remove_endpoint(&mut self, port: PortId) {
        let Some(key) = self.ports.remove(&port) else {
            return;
        };
        self.endpoints.remove(&key);
        let mut gone = Vec::new();
        self.ct
            .remove_container(key.0, IpAddr::V4(key.1), |v| gone.push(v.handle));
        for h in gone {
            self.drop_io(h);
        }
    }

    /// A published port: the edge's socket `id` (TCP listener or UDP)
    /// relays to `container` on `network`.
    pub fn publish(&mut self, id: u64, network: NetworkId, container: SocketAddrV4) {
        self.published.insert(id, Pub { network, container });
    }

    /// The edge closed published socket `id`.
    pub fn unpublish(&mut self, id: u64) {
        self.published.remove(&id);
    }

    /// Every flow of the table, with the host socket it uses (if any).
    pub fn flows(&self) -> impl Iterator<Item = (FlowView, Option<SocketId>)> + '_ {
        self.ct.iter().map(|v| {
            let s = self.flow(v.handle).and_then(|f| match &f.io {
                Io::Udp(UdpVia::Published { id, .. }) => Some(SocketId::Published(*id)),
                Io::Icmp { raw: true } => None,
                _ => Some(SocketId::Flow(f.handle)),
            });
            (v, s)
        })
    }

    // ---- output -----------------------------------------------------------

    /// The next frame towards a container.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.queue.pop_front()
    }

    /// Whether legs or sockets wait for a buffer to come back through
    /// [`Gateway::recycle`].
    pub fn waiting_for_buffers(&self) -> bool {
        !self.starved_flows.is_empty() || !self.starved_sockets.is_empty()
    }

    /// Free frame buffers (the rest are queued or out with the edge).
    pub fn free_buffers(&self) -> usize {
        self.tx.pool.len() + usize::from(self.tx.current.is_some())
    }

    /// Gives back a buffer of a [`Transmit`] (sent or not). Legs and
    /// sockets that waited for one get their turn.
    pub fn recycle(&mut self, buf: Box<[u8]>) {
        if buf.len() < BUFFER_LEN {
            return;
        }
        self.tx.pool.push(buf);
        if !self.starved_flows.is_empty() {
            self.dirty.append(&mut self.starved_flows);
        }
        for s in self.starved_sockets.drain(..) {
            self.ops.push_back(SocketOp::Read(s));
        }
    }

    /// The next socket operation for the edge. [`SocketOp::Relay`]s come
    /// only after [`Gateway::handle_timeout`] (up to four rounds of them,
    /// until this returns `None`), so that a batch of frames from a
    /// container gets one relay per flow, not one per frame.
    pub fn poll_socket_op(&mut self) -> Option<SocketOp> {
        if let Some(op) = self.ops.pop_front() {
            return Some(op);
        }
        if !self.relaying {
            return None;
        }
        if self.round.is_empty() {
            if self.dirty.is_empty() || self.rounds_left == 0 {
                self.relaying = false;
                return None;
            }
            self.rounds_left -= 1;
            std::mem::swap(&mut self.round, &mut self.dirty);
            // Reversed: popped from the end in handle order, once each.
            self.round.sort_unstable_by(|a, b| b.cmp(a));
            self.round.dedup();
        }
        let h = self.round.pop()?;
        Some(SocketOp::Relay(h))
    }

    /// When to call [`Gateway::handle_timeout`] next (0: at once, work is
    /// pending).
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.ops.is_empty() || !self.dirty.is_empty() || !self.round.is_empty() {
            return Some(0);
        }
        let mut at = self.ct.poll_timeout();
        if let Some(Reverse((t, _))) = self.timers.peek() {
            at = Some(at.map_or(*t, |a| a.min(*t)));
        }
        at
    }

    /// Legs' timers that are due, and idle flows that expired (their
    /// sockets are closed).
    pub fn handle_timeout(&mut self, now: u64) {
        self.rounds_left = RELAY_ROUNDS;
        self.relaying = true;
        while let Some(Reverse((t, h))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.dirty.push(FlowHandle::from_u64(h));
        }
        while let Some(v) = self.ct.poll_expired(now) {
            self.drop_io(v.handle);
        }
    }

    // ---- helpers ----------------------------------------------------------

    fn flow(&self, h: FlowHandle) -> Option<&Flow> {
        self.flows
            .get(h.index() as usize)?
            .as_ref()
            .filter(|f| f.handle == h)
    }

    fn flow_mut(&mut self, h: FlowHandle) -> Option<&mut Flow> {
        flow_mut_in(&mut self.flows, h)
    }

    /// The live flow of `key`; a finished flow lingering in the table
    /// under it (no sockets any more) is removed: its tuple is reused.
    fn live_flow(&mut self, key: &FlowKey) -> Option<FlowHandle> {
        let h = self.ct.lookup(key)?;
        if self.flow(h).is_some() {
            return Some(h);
        }
        let _ = self.ct.remove(h);
        None
    }

    /// Creates a flow in the table, counting a refusal.
    fn create(&mut self, key: FlowKey, dir: Direction, now: u64) -> Option<FlowHandle> {
        match self.ct.create(key, dir, now) {
            Ok(h) => Some(h),
            Err(CreateError::TableFull { .. }) => {
                self.drops.count(NatDrop::TableFull);
                None
            }
            Err(CreateError::ContainerLimit { .. }) => {
                self.drops.count(NatDrop::ContainerLimit);
                None
            }
            // Callers look the key up first; counted as the table full.
            Err(CreateError::Exists(_)) => {
                self.drops.count(NatDrop::TableFull);
                None
            }
        }
    }

    /// Where a new outbound flow to `dst` goes on the host, or the policy
    /// that refuses it.
    fn target(&self, net: &NetInfo, dst: Ipv4Addr) -> Result<Ipv4Addr, NatDrop> {
        if net.internal {
            return Err(NatDrop::Internal);
        }
        if dst == net.gateway {
            return if self.config.host_loopback {
                Ok(Ipv4Addr::LOCALHOST)
            } else {
                Err(NatDrop::HostLoopbackOff)
            };
        }
        // Network isolation: another tapnet network's addresses (its
        // containers, its gateway) are never reached through the host,
        // where they might even be routed somewhere else.
        if self
            .nets
            .values()
            .any(|n| prefix_match(dst, n.gateway, n.prefix))
        {
            return Err(NatDrop::OtherNetwork);
        }
        if net.masquerade {
            Ok(dst)
        } else {
            Err(NatDrop::MasqueradeOff)
        }
    }

    fn endpoint(&self, network: NetworkId, ip: Ipv4Addr) -> Option<Endpoint> {
        self.endpoints.get(&(network, ip)).copied()
    }

    /// Builds an IP packet with `build` (given a whole frame buffer; it
    /// writes the packet at `HEADROOM` and returns its length) and queues
    /// it to the container `to` on `network`.
    fn emit(
        &mut self,
        network: NetworkId,
        to: Ipv4Addr,
        meta: VnetHdr,
        build: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        let Some(info) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return;
        };
        let Some(ep) = self.endpoint(network, to) else {
            self.drops.count(NatDrop::NoEndpoint);
            return;
        };
        let Some(buf) = self.tx.current() else {
            self.drops.count(NatDrop::NoBuffer);
            return;
        };
        let Some(len) = build(buf) else {
            return;
        };
        self.tx.push(ep, gateway_mac(info.gateway), meta, len);
    }

    /// Sends an ICMP destination unreachable about `packet` (an IPv4
    /// packet from a container), from `from` (the gateway, or the remote
    /// that refused a port), back to its sender.
    fn send_unreachable(&mut self, network: NetworkId, from: Ipv4Addr, packet: &[u8], code: u8) {
        let Ok(p) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        let src = p.src_addr();
        let quoted = packet.len().min(p.header_len() + 8);
        self.emit(network, src, VnetHdr::default(), |buf| {
            let len = ipv4::MIN_HEADER_LEN + icmp::ECHO_HEADER_LEN + quoted;
            let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
            ipv4::emit_header(ip, from, src, ipv4::protocol::ICMP, len - 20, 64);
            let m = &mut ip[ipv4::MIN_HEADER_LEN..];
            m[icmp::ECHO_HEADER_LEN..].copy_from_slice(&packet[..quoted]);
            let mut msg = IcmpPacket::new_unchecked(m);
            msg.set_msg_type(icmp::DEST_UNREACHABLE);
            msg.set_code(code);
            msg.clear_rest_of_header();
            msg.fill_checksum();
            Some(len)
        });
    }

    /// Answers `segment` (a container's TCP packet) with a RST (never a
    /// RST with a RST).
    fn send_rst(&mut self, network: NetworkId, segment: &[u8]) {
        let Ok(p) = Ipv4Packet::new_checked(segment) else {
            return;
        };
        self.emit(network, p.src_addr(), VnetHdr::default(), |buf| {
            leg::rst_for(segment, buf)
        });
    }

    // ---- frames from containers ---------------------------------------------

    /// A frame a container sent to the outside (an IPv4 TCP, UDP or ICMP
    /// packet to its gateway MAC that [`classify`] gave to the NAT), from
    /// `network`. The frame may be rewritten in place. Perform the socket
    /// ops this queued, then the returned action.
    ///
    /// `lane`: an edge's number for where the frame came from (the worker
    /// that read it); the flow's frames towards the container carry the
    /// lane of its latest frame ([`Transmit::lane`]), so that the edge can
    /// send them back the same way, in order.
    pub fn handle_frame(
        &mut self,
        now: u64,
        network: NetworkId,
        lane: u8,
        meta: &VnetHdr,
        frame: &mut [u8],
    ) -> FrameAction {
        self.tx.lane = Some(lane);
        let Some(net) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return FrameAction::None;
        };
        let Some(ip) = frame.get(ethernet::HEADER_LEN..) else {
            self.drops.count(NatDrop::Malformed);
            return FrameAction::None;
        };
        let Ok(p) = Ipv4Packet::new_checked(ip) else {
            self.drops.count(NatDrop::Malformed);
            return FrameAction::None;
        };
        let (src, dst, proto) = (p.src_addr(), p.dst_addr(), p.protocol());
        let ihl = p.header_len();
        let total = usize::from(p.total_len()).min(ip.len());
        let at = ethernet::HEADER_LEN;
        let ip_range = at..at + total;
        let l4 = &ip[ihl..total];
        match proto {
            ipv4::protocol::TCP => {
                let Ok(t) = TcpPacket::new_checked(l4) else {
                    self.drops.count(NatDrop::Malformed);
                    return FrameAction::None;
                };
                let key = flow_key(
                    Protocol::Tcp,
                    network,
                    (src, t.src_port()),
                    (dst, t.dst_port()),
                );
                let flags = TcpFlags(t.flags());
                let payload = t.payload().len();
                self.tcp_from_container(now, &net, key, flags, payload, &mut frame[ip_range]);
                FrameAction::None
            }
            ipv4::protocol::UDP => {
                if meta.gso_type != vnet::GSO_NONE {
                    self.drops.count(NatDrop::UdpGso);
                    return FrameAction::None;
                }
                let Ok(u) = UdpPacket::new_checked(l4) else {
                    self.drops.count(NatDrop::Malformed);
                    return FrameAction::None;
                };
                let key = flow_key(
                    Protocol::Udp,
                    network,
                    (src, u.src_port()),
                    (dst, u.dst_port()),
                );
                let data = at + ihl + udp::HEADER_LEN;
                let payload = data..data + u.payload().len();
                self.udp_from_container(now, &net, key, &frame[ip_range], payload)
            }
            ipv4::protocol::ICMP => {
                let Ok(m) = IcmpPacket::new_checked(l4) else {
                    self.drops.count(NatDrop::Malformed);
                    return FrameAction::None;
                };
                if m.msg_type() != icmp::ECHO_REQUEST || m.code() != 0 {
                    self.drops.count(NatDrop::IcmpNotEcho);
                    return FrameAction::None;
                }
                let key =
                    FlowKey::icmp_echo(network, IpAddr::V4(src), m.echo_ident(), IpAddr::V4(dst));
                let msg = at + ihl..at + total;
                self.icmp_from_container(now, &net, key, frame, ip_range, msg)
            }
            _ => {
                self.drops.count(NatDrop::Protocol);
                FrameAction::None
            }
        }
    }

    fn tcp_from_container(
        &mut self,
        now: u64,
        net: &NetInfo,
        key: FlowKey,
        flags: TcpFlags,
        payload: usize,
        pkt: &mut [u8],
    ) {
        if flags.contains(TcpFlags::SYN) {
            leg::raise_syn_mss(pkt);
        }
        let bare_syn = flags.contains(TcpFlags::SYN) && !flags.contains(TcpFlags::ACK);
        let h = match self.ct.lookup(&key) {
            Some(h) if bare_syn && self.flow(h).is_none() => {
                // A new connection reusing a finished flow's tuple.
                let _ = self.ct.remove(h);
                None
            }
            h => h,
        };
        let Some(h) = h else {
            if !bare_syn {
                self.drops.count(NatDrop::TcpNoFlow);
                self.send_rst(key.network, pkt);
                return;
            }
            self.tcp_open(now, net, key, flags, payload, pkt);
            return;
        };
        let _ = self.ct.handle_tcp(h, now, flags, Side::Container, payload);
        let Gateway {
            flows,
            ct,
            endpoints,
            tx,
            drops,
            dirty,
            starved_flows,
            ..
        } = self;
        let Some(flow) = flow_mut_in(flows, h) else {
            // A finished flow lingering in the table: its leg is gone.
            self.drops.count(NatDrop::TcpNoFlow);
            self.send_rst(key.network, pkt);
            return;
        };
        flow.lane = tx.lane;
        match &mut flow.io {
            Io::Tcp(t) => {
                let mut out = leg_out(
                    tx,
                    drops,
                    ct,
                    endpoints,
                    net,
                    flow.network,
                    flow.container,
                    h,
                    now,
                );
                t.leg.ingress(now, pkt, &mut out);
                if out.starved {
                    starved_flows.push(h);
                }
                dirty.push(h);
            }
            // A retransmitted SYN while the host connect is pending.
            Io::Connecting { syn } if flags.contains(TcpFlags::SYN) => {
                syn.clear();
                syn.extend_from_slice(pkt);
            }
            _ => drops.count(NatDrop::TcpConnecting),
        }
    }

    fn tcp_open(
        &mut self,
        now: u64,
        net: &NetInfo,
        key: FlowKey,
        flags: TcpFlags,
        payload: usize,
        syn: &[u8],
    ) {
        let (IpAddr::V4(cip), IpAddr::V4(rip)) = (key.container_ip, key.remote_ip) else {
            return;
        };
        let target = match self.target(net, rip) {
            Ok(t) => t,
            Err(why) => {
                self.drops.count(why);
                self.send_unreachable(key.network, net.gateway, syn, icmp::unreachable::PROHIBITED);
                return;
            }
        };
        let Some(h) = self.create(key, Direction::Outbound, now) else {
            self.send_rst(key.network, syn);
            return;
        };
        let _ = self.ct.handle_tcp(h, now, flags, Side::Container, payload);
        self.flows[h.index() as usize] = Some(Flow {
            handle: h,
            network: key.network,
            container: SocketAddrV4::new(cip, key.container_port),
            remote: SocketAddrV4::new(rip, key.remote_port),
            io: Io::Connecting { syn: syn.to_vec() },
            lane: self.tx.lane,
        });
        self.ops.push_back(SocketOp::Connect {
            flow: h,
            to: SocketAddr::V4(SocketAddrV4::new(target, key.remote_port)),
        });
    }

    fn udp_from_container(
        &mut self,
        now: u64,
        net: &NetInfo,
        key: FlowKey,
        packet: &[u8],
        payload: Range<usize>,
    ) -> FrameAction {
        let (IpAddr::V4(cip), IpAddr::V4(rip)) = (key.container_ip, key.remote_ip) else {
            return FrameAction::None;
        };
        let h = match self.live_flow(&key) {
            Some(h) => h,
            None => {
                let target = match self.target(net, rip) {
                    Ok(t) => t,
                    Err(why) => {
                        self.drops.count(why);
                        self.send_unreachable(
                            key.network,
                            net.gateway,
                            packet,
                            icmp::unreachable::PROHIBITED,
                        );
                        return FrameAction::None;
                    }
                };
                let Some(h) = self.create(key, Direction::Outbound, now) else {
                    return FrameAction::None;
                };
                self.flows[h.index() as usize] = Some(Flow {
                    handle: h,
                    network: key.network,
                    container: SocketAddrV4::new(cip, key.container_port),
                    remote: SocketAddrV4::new(rip, key.remote_port),
                    io: Io::Udp(UdpVia::Own),
                    lane: self.tx.lane,
                });
                self.ops.push_back(SocketOp::OpenUdp {
                    flow: h,
                    to: SocketAddr::V4(SocketAddrV4::new(target, key.remote_port)),
                });
                h
            }
        };
        let _ = self.ct.handle_udp(h, now, Side::Container, payload.len());
        let lane = self.tx.lane;
        if let Some(f) = self.flow_mut(h) {
            f.lane = lane;
        }
        let via = match self.flow(h).map(|f| &f.io) {
            Some(Io::Udp(UdpVia::Own)) => (SocketId::Flow(h), None),
            Some(Io::Udp(UdpVia::Published { id, client })) => {
                if !self.published.contains_key(id) {
                    self.drops.count(NatDrop::NoListener);
                    return FrameAction::None;
                }
                (SocketId::Published(*id), Some(*client))
            }
            _ => return FrameAction::None,
        };
        FrameAction::Send {
            via: via.0,
            payload,
            to: via.1,
        }
    }

    fn icmp_from_container(
        &mut self,
        now: u64,
        net: &NetInfo,
        key: FlowKey,
        frame: &mut [u8],
        packet: Range<usize>,
        msg: Range<usize>,
    ) -> FrameAction {
        let (IpAddr::V4(cip), IpAddr::V4(rip)) = (key.container_ip, key.remote_ip) else {
            return FrameAction::None;
        };
        let h = match self.live_flow(&key) {
            Some(h) => h,
            None => {
                if let Err(why) = self.target(net, rip) {
                    self.drops.count(why);
                    self.send_unreachable(
                        key.network,
                        net.gateway,
                        &frame[packet],
                        icmp::unreachable::PROHIBITED,
                    );
                    return FrameAction::None;
                }
                let raw = match self.config.icmp {
                    IcmpMode::PingSocket => false,
                    IcmpMode::Raw => true,
                    IcmpMode::Unavailable => {
                        self.drops.count(NatDrop::NoPingSocket);
                        return FrameAction::None;
                    }
                };
                let Some(h) = self.create(key, Direction::Outbound, now) else {
                    return FrameAction::None;
                };
                if raw {
                    self.raw_ids.insert(h.index() as u16, h);
                } else {
                    self.ops.push_back(SocketOp::OpenPing { flow: h, to: rip });
                }
                self.flows[h.index() as usize] = Some(Flow {
                    handle: h,
                    network: key.network,
                    container: SocketAddrV4::new(cip, key.container_port),
                    remote: SocketAddrV4::new(rip, 0),
                    io: Io::Icmp { raw },
                    lane: self.tx.lane,
                });
                h
            }
        };
        let _ = self.ct.handle_icmp(h, now, Side::Container, msg.len());
        let lane = self.tx.lane;
        if let Some(f) = self.flow_mut(h) {
            f.lane = lane;
        }
        match self.flow(h).map(|f| &f.io) {
            Some(Io::Icmp { raw: true }) => {
                let Some(m) = frame.get_mut(msg.clone()) else {
                    return FrameAction::None;
                };
                let mut m = IcmpPacket::new_unchecked(m);
                m.set_echo_ident(h.index() as u16);
                m.fill_checksum();
                FrameAction::Send {
                    via: SocketId::RawIcmp,
                    payload: msg,
                    to: Some(SocketAddr::V4(SocketAddrV4::new(rip, 0))),
                }
            }
            Some(Io::Icmp { raw: false }) => FrameAction::Send {
                via: SocketId::Flow(h),
                payload: msg,
                to: None,
            },
            _ => FrameAction::None,
        }
    }

    // ---- host side --------------------------------------------------------

    /// What a host socket reported.
    pub fn handle_socket_event(&mut self, now: u64, id: SocketId, ev: HostEvent) {
        let SocketId::Flow(h) = id else {
            return;
        };
        match ev {
            HostEvent::Connected => self.connected(now, h),
            HostEvent::ConnectFailed(e) => self.connect_failed(now, h, Some(e)),
            HostEvent::OpenFailed => {
                self.drops.count(NatDrop::SocketOpen);
                match self.flow(h).map(|f| &f.io) {
                    Some(Io::Connecting { .. }) => self.connect_failed(now, h, None),
                    Some(Io::Tcp(_)) => {
                        // An accepted stream that could not be registered.
                        if let Some(Flow {
                            io: Io::Tcp(mut t), ..
                        }) = self.flows[h.index() as usize].take()
                        {
                            t.leg.socket().abort();
                        }
                        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Reset);
                    }
                    Some(_) => {
                        self.flows[h.index() as usize] = None;
                        self.raw_ids.remove(&(h.index() as u16));
                        let _ = self.ct.remove(h);
                    }
                    None => {}
                }
            }
            HostEvent::Readable | HostEvent::Writable => {
                if let Some(Flow { io: Io::Tcp(t), .. }) = self.flow_mut(h) {
                    if ev == HostEvent::Writable {
                        t.write_blocked = false;
                    }
                    self.dirty.push(h);
                }
            }
            HostEvent::PortUnreachable => self.port_unreachable(now, h),
        }
    }

    /// The remote answered ICMP port unreachable: tell the container the
    /// same, quoting its datagram's headers, so its socket fails with
    /// "connection refused".
    fn port_unreachable(&mut self, now: u64, h: FlowHandle) {
        let Some(f) = self.flow(h) else { return };
        let (net, container, remote) = (f.network, f.container, f.remote);
        self.tx.lane = f.lane;
        let mut quote = [0u8; 28];
        ipv4::emit_header(
            &mut quote,
            *container.ip(),
            *remote.ip(),
            ipv4::protocol::UDP,
            8,
            64,
        );
        let mut u = UdpPacket::new_unchecked(&mut quote[ipv4::MIN_HEADER_LEN..]);
        UdpRepr {
            src_port: container.port(),
            dst_port: remote.port(),
        }
        .emit(&mut u, 0);
        let _ = self.ct.handle_udp(h, now, Side::Remote, 0);
        self.send_unreachable(net, *remote.ip(), &quote, icmp::unreachable::PORT);
    }

    fn connect_failed(&mut self, now: u64, h: FlowHandle, e: Option<ConnectError>) {
        if !self
            .flow(h)
            .is_some_and(|f| matches!(f.io, Io::Connecting { .. }))
        {
            return;
        }
        let Some(Flow {
            io: Io::Connecting { syn },
            network,
            lane,
            ..
        }) = self.flows[h.index() as usize].take()
        else {
            return;
        };
        self.tx.lane = lane;
        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Refused);
        let gateway = self.nets.get(&network).map(|n| n.gateway);
        // Refused: a RST, as from the server. Unreachable or timed out:
        // what a router says (the container's connect fails with "no
        // route to host").
        match (e, gateway) {
            (Some(ConnectError::NetUnreachable), Some(gw)) => {
                self.send_unreachable(network, gw, &syn, icmp::unreachable::NET)
            }
            (Some(ConnectError::HostUnreachable | ConnectError::TimedOut), Some(gw)) => {
                self.send_unreachable(network, gw, &syn, icmp::unreachable::HOST)
            }
            _ => self.send_rst(network, &syn),
        }
    }

    fn connected(&mut self, now: u64, h: FlowHandle) {
        let Some(flow) = self.flow(h) else { return };
        if !matches!(flow.io, Io::Connecting { .. }) {
            return;
        }
        let (network, container, remote) = (flow.network, flow.container, flow.remote);
        self.tx.lane = flow.lane;
        let Some(info) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return;
        };
        let Some(Flow {
            io: Io::Connecting { syn },
            ..
        }) = self.flows[h.index() as usize].take()
        else {
            return;
        };
        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Connected);
        let mut leg = Leg::accept(info.gateway, info.prefix, remote, &self.config.leg, now);
        {
            let Gateway {
                ct,
                endpoints,
                tx,
                drops,
                ..
            } = self;
            let mut out = leg_out(tx, drops, ct, endpoints, &info, network, container, h, now);
            leg.ingress(now, &syn, &mut out);
        }
        self.flows[h.index() as usize] = Some(Flow {
            handle: h,
            network,
            container,
            remote,
            io: Io::Tcp(Box::new(TcpFlow {
                leg,
                host_eof: false,
                container_eof: false,
                write_blocked: false,
            })),
            lane: self.tx.lane,
        });
        self.dirty.push(h);
    }

    /// Moves data between `flow`'s leg and its host stream `host` (the
    /// edge's socket, or any non-blocking `Read + Write`): the
    /// container's data to the host until the leg is empty, the host
    /// blocks or [`RELAY_BUDGET`]; the container's FIN as
    /// [`SocketOp::ShutdownWrite`]; the host's data into the leg while it
    /// has room (what does not fit stays in the host socket:
    /// backpressure), its end of stream as FIN; an error resets both
    /// sides ([`SocketOp::Close`]). A finished connection's socket is
    /// closed; its table entry lingers until it expires.
    ///
    /// Frames for the container go to `send` as they are made, so that
    /// the container's pipe stays full while the relay reads on (what
    /// `send` gives back is dropped, counted as [`NatDrop::InjectFull`],
    /// and its buffer reused); the rest waits for
    /// [`Gateway::poll_transmit`].
    pub fn relay_tcp<S: io::Read + io::Write>(
        &mut self,
        now: u64,
        h: FlowHandle,
        host: &mut S,
        send: &mut dyn FnMut(Transmit) -> Result<(), Transmit>,
    ) {
        let Gateway {
            flows,
            ct,
            endpoints,
            tx,
            drops,
            nets,
            timers,
            dirty,
            ops,
            starved_flows,
            ..
        } = self;
        let Some(flow) = flow_mut_in(flows, h) else {
            return;
        };
        let Some(info) = nets.get(&flow.network).copied() else {
            return;
        };
        let (net, container) = (flow.network, flow.container);
        tx.lane = flow.lane;
        let Io::Tcp(t) = &mut flow.io else { return };
        let mut out = leg_out(tx, drops, ct, endpoints, &info, net, container, h, now);
        let mut moved = 0usize;
        let mut failed = false;
        let mut host_event = None;
        // Container → host.
        while !t.write_blocked && moved < RELAY_BUDGET && t.leg.socket().can_recv() {
            let r = t.leg.socket().recv(|buf| match host.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => moved += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => t.write_blocked = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let state = t.leg.socket().state();
        if !failed
            && !t.container_eof
            && !t.leg.socket().may_recv()
            && t.leg.socket().recv_queue() == 0
            && !matches!(
                state,
                TcpSocketState::SynReceived | TcpSocketState::SynSent | TcpSocketState::Listen
            )
        {
            t.container_eof = true;
            ops.push_back(SocketOp::ShutdownWrite(h));
        }
        // Host → container.
        let mut read_moved = 0usize;
        while !failed && !t.host_eof && read_moved < RELAY_BUDGET && t.leg.socket().can_send() {
            let r = t.leg.socket().send(|buf| match host.read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) => {
                    t.host_eof = true;
                    t.leg.socket().close();
                    host_event = Some(SocketEvent::Eof);
                }
                Ok(Ok(n)) => {
                    read_moved += n;
                    // Send as we go: keeps the container's pipe full.
                    t.leg.poll(now, &mut out);
                    while let Some(f) = out.tx.queue.pop_front() {
                        if let Err(f) = send(f) {
                            out.drops.count(NatDrop::InjectFull);
                            out.tx.pool.push(f.buf);
                        }
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => failed = true,
            }
        }
        if failed {
            t.leg.socket().abort();
            host_event = Some(SocketEvent::Reset);
        }
        t.leg.poll(now, &mut out);
        let starved = out.starved;
        if let Some(e) = host_event {
            let _ = ct.handle_tcp_socket(h, now, e);
        }
        let state = t.leg.socket().state();
        let finished = matches!(state, TcpSocketState::Closed | TcpSocketState::TimeWait)
            || (state == TcpSocketState::Listen && failed);
        if finished {
            let reset = !t.host_eof || !t.container_eof;
            flows[h.index() as usize] = None;
            // Aborted: reset the host side too.
            ops.push_back(SocketOp::Close { flow: h, reset });
            return;
        }
        if starved {
            starved_flows.push(h);
        }
        if moved >= RELAY_BUDGET || read_moved >= RELAY_BUDGET {
            dirty.push(h);
        }
        if let Some(at) = t.leg.poll_at_ns(now) {
            timers.push(Reverse((at.max(now), h.to_u64())));
        }
    }

    /// The buffer to read a datagram from host socket `id` into (a UDP
    /// payload, an echo reply's ICMP message, or a whole IP packet from the
    /// raw socket); then call [`Gateway::handle_datagram`]. `None`: no
    /// buffer is free; leave the socket unread until [`SocketOp::Read`].
    pub fn recv_buffer(&mut self, id: SocketId) -> Option<&mut [u8]> {
        let (at, max) = match id {
            SocketId::Flow(h) => match self.flow(h).map(|f| &f.io) {
                Some(Io::Icmp { .. }) => (ICMP_DATA_AT, BUFFER_LEN - ICMP_DATA_AT),
                _ => (UDP_DATA_AT, MAX_UDP_PAYLOAD),
            },
            SocketId::Published(_) => (UDP_DATA_AT, MAX_UDP_PAYLOAD),
            SocketId::RawIcmp => (HEADROOM, BUFFER_LEN - HEADROOM),
        };
        if !self.tx.has_buffer() {
            if !self.starved_sockets.contains(&id) {
                self.starved_sockets.push(id);
            }
            return None;
        }
        let buf = self.tx.current()?;
        buf.get_mut(at..at + max)
    }

    /// A datagram of `len` bytes read from `id` into the buffer
    /// [`Gateway::recv_buffer`] lent (`from`: the sender, for a published
    /// UDP socket).
    pub fn handle_datagram(
        &mut self,
        now: u64,
        id: SocketId,
        len: usize,
        from: Option<SocketAddr>,
    ) {
        match id {
            SocketId::Flow(h) => {
                let Some(f) = self.flow(h) else { return };
                let (net, container, remote, lane) = (f.network, f.container, f.remote, f.lane);
                let kind = match f.io {
                    Io::Udp(UdpVia::Own) => Some(false),
                    Io::Icmp { raw: false } => Some(true),
                    _ => None,
                };
                self.tx.lane = lane;
                match kind {
                    Some(false) => {
                        let _ = self.ct.handle_udp(h, now, Side::Remote, len);
                        self.udp_to_container(net, remote, container, len);
                    }
                    Some(true) => {
                        let ok = self.tx.current.as_ref().is_some_and(|b| {
                            len >= icmp::ECHO_HEADER_LEN && b[ICMP_DATA_AT] == icmp::ECHO_REPLY
                        });
                        if !ok {
                            self.drops.count(NatDrop::IcmpIgnored);
                            return;
                        }
                        let _ = self.ct.handle_icmp(h, now, Side::Remote, len);
                        self.icmp_to_container(net, *remote.ip(), container, len);
                    }
                    None => {}
                }
            }
            SocketId::Published(p) => {
                let Some(client) = from else { return };
                self.published_datagram(now, p, client, len);
            }
            SocketId::RawIcmp => self.raw_datagram(now, len),
        }
    }

    fn raw_datagram(&mut self, now: u64, n: usize) {
        let Some(p) = self
            .tx
            .current
            .as_ref()
            .and_then(|b| b.get(HEADROOM..HEADROOM + n))
        else {
            return;
        };
        let parsed = Ipv4Packet::new_checked(p).ok().and_then(|ip| {
            let m = IcmpPacket::new_checked(ip.payload()).ok()?;
            (m.msg_type() == icmp::ECHO_REPLY).then_some((
                ip.header_len(),
                ip.src_addr(),
                m.echo_ident(),
            ))
        });
        let Some((ihl, src, id)) = parsed else {
            self.drops.count(NatDrop::IcmpIgnored);
            return;
        };
        let flow = self.raw_ids.get(&id).and_then(|&h| self.flow(h));
        let Some(flow) = flow.filter(|f| *f.remote.ip() == src) else {
            self.drops.count(NatDrop::IcmpIgnored);
            return;
        };
        let (h, net, container) = (flow.handle, flow.network, flow.container);
        self.tx.lane = flow.lane;
        let len = n - ihl;
        if let Some(buf) = self.tx.current.as_mut() {
            buf.copy_within(HEADROOM + ihl..HEADROOM + n, ICMP_DATA_AT);
        }
        let _ = self.ct.handle_icmp(h, now, Side::Remote, len);
        self.icmp_to_container(net, src, container, len);
    }

    fn published_datagram(&mut self, now: u64, p: u64, client: SocketAddr, n: usize) {
        let Some(&Pub { network, container }) = self.published.get(&p) else {
            self.drops.count(NatDrop::NoListener);
            return;
        };
        let Some(info) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return;
        };
        let src = source_for(client, info.gateway);
        self.tx.lane = None;
        let key = flow_key(
            Protocol::Udp,
            network,
            (*container.ip(), container.port()),
            (*src.ip(), src.port()),
        );
        let h = match self.live_flow(&key) {
            Some(h) => {
                self.tx.lane = self.flow(h).and_then(|f| f.lane);
                h
            }
            None => {
                let Some(h) = self.create(key, Direction::Inbound, now) else {
                    return;
                };
                self.flows[h.index() as usize] = Some(Flow {
                    handle: h,
                    network,
                    container,
                    remote: src,
                    io: Io::Udp(UdpVia::Published { id: p, client }),
                    lane: self.tx.lane,
                });
                h
            }
        };
        let _ = self.ct.handle_udp(h, now, Side::Remote, n);
        self.udp_to_container(network, src, container, n);
    }

    /// Sends the lent buffer's `[UDP_DATA_AT..][..n]` as a UDP datagram
    /// from `from` to the container at `to` (partial checksum).
    fn udp_to_container(&mut self, net: NetworkId, from: SocketAddrV4, to: SocketAddrV4, n: usize) {
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: (ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN) as u16,
            csum_offset: udp::CHECKSUM_OFFSET as u16,
            ..Default::default()
        };
        self.emit(net, *to.ip(), meta, |buf| {
            let len = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + n;
            let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
            ipv4::emit_header(ip, *from.ip(), *to.ip(), ipv4::protocol::UDP, len - 20, 64);
            let mut u = UdpPacket::new_unchecked(&mut ip[ipv4::MIN_HEADER_LEN..]);
            UdpRepr {
                src_port: from.port(),
                dst_port: to.port(),
            }
            .emit(&mut u, n);
            u.set_partial_checksum(*from.ip(), *to.ip());
            Some(len)
        });
    }

    /// Sends the echo reply at the lent buffer's `[ICMP_DATA_AT..][..n]`
    /// to the container, with the container's identifier.
    fn icmp_to_container(&mut self, net: NetworkId, from: Ipv4Addr, to: SocketAddrV4, n: usize) {
        self.emit(net, *to.ip(), VnetHdr::default(), |buf| {
            let len = ipv4::MIN_HEADER_LEN + n;
            let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
            ipv4::emit_header(ip, from, *to.ip(), ipv4::protocol::ICMP, n, 64);
            let mut m = IcmpPacket::new_unchecked(&mut ip[ipv4::MIN_HEADER_LEN..]);
            m.set_echo_ident(to.port());
            m.fill_checksum();
            Some(len)
        });
    }

    /// A connection accepted on published TCP socket `id` from `client`:
    /// the flow whose socket the stream becomes ([`SocketId::Flow`];
    /// register it readable and writable), or `None` (refused, counted:
    /// close the stream).
    pub fn handle_accept(&mut self, now: u64, id: u64, client: SocketAddr) -> Option<FlowHandle> {
        let Some(&Pub { network, container }) = self.published.get(&id) else {
            self.drops.count(NatDrop::NoListener);
            return None;
        };
        let Some(info) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return None;
        };
        let src = source_for(client, info.gateway);
        self.tx.lane = None;
        let key = flow_key(
            Protocol::Tcp,
            network,
            (*container.ip(), container.port()),
            (*src.ip(), src.port()),
        );
        if let Some(old) = self.ct.lookup(&key) {
            if self.flow(old).is_some() {
                // The same tuple is live (a loopback client's port reused
                // while the old flow lingers): refuse this one.
                self.drops.count(NatDrop::PublishedBusy);
                return None;
            }
            let _ = self.ct.remove(old);
        }
        let h = self.create(key, Direction::Inbound, now)?;
        let Some(mut leg) = Leg::connect(
            info.gateway,
            info.prefix,
            src,
            container,
            &self.config.leg,
            now,
        ) else {
            self.drops.count(NatDrop::LegConnect);
            let _ = self.ct.remove(h);
            return None;
        };
        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Connected);
        {
            let Gateway {
                ct,
                endpoints,
                tx,
                drops,
                starved_flows,
                ..
            } = self;
            let mut out = leg_out(tx, drops, ct, endpoints, &info, network, container, h, now);
            leg.poll(now, &mut out);
            if out.starved {
                starved_flows.push(h);
            }
        }
        if let Some(at) = leg.poll_at_ns(now) {
            self.timers.push(Reverse((at.max(now), h.to_u64())));
        }
        self.flows[h.index() as usize] = Some(Flow {
            handle: h,
            network,
            container,
            remote: src,
            io: Io::Tcp(Box::new(TcpFlow {
                leg,
                host_eof: false,
                container_eof: false,
                write_blocked: false,
            })),
            lane: self.tx.lane,
        });
        Some(h)
    }

    /// Closes a flow's sockets and leg (its table entry is the caller's).
    fn drop_io(&mut self, h: FlowHandle) {
        let Some(slot) = self.flows.get_mut(h.index() as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|f| f.handle != h) {
            return;
        }
        let Some(f) = slot.take() else { return };
        match f.io {
            Io::Connecting { .. } => self.ops.push_back(SocketOp::Close {
                flow: h,
                reset: false,
            }),
            // The container's side did not finish (it went away, or the
            // flow expired): the remote must see a reset, not a clean end
            // of a possibly truncated stream.
            Io::Tcp(t) => self.ops.push_back(SocketOp::Close {
                flow: h,
                reset: !t.container_eof,
            }),
            Io::Udp(UdpVia::Own) | Io::Icmp { raw: false } => self.ops.push_back(SocketOp::Close {
                flow: h,
                reset: false,
            }),
            Io::Icmp { raw: true } => {
                self.raw_ids.remove(&(h.index() as u16));
            }
            Io::Udp(UdpVia::Published { .. }) => {}
        }
    }
}

fn flow_mut_in(flows: &mut [Option<Flow>], h: FlowHandle) -> Option<&mut Flow> {
    flows
        .get_mut(h.index() as usize)?
        .as_mut()
        .filter(|f| f.handle == h)
}

/// The [`LegTx`] of flow `h`: segments go to the container at
/// `container` on `network`, TSO beyond the network's MSS.
#[allow(clippy::too_many_arguments)]
fn leg_out<'a>(
    tx: &'a mut TxQueue,
    drops: &'a mut DropCounts,
    ct: &'a mut ConnTrack,
    endpoints: &HashMap<(NetworkId, Ipv4Addr), Endpoint>,
    info: &NetInfo,
    network: NetworkId,
    container: SocketAddrV4,
    h: FlowHandle,
    now: u64,
) -> LegOut<'a> {
    LegOut {
        tx,
        drops,
        ct,
        h,
        now,
        ep: endpoints.get(&(network, *container.ip())).copied(),
        gw: gateway_mac(info.gateway),
        mss: (info.mtu as usize).saturating_sub(40).max(536),
        scratch: false,
        starved: false,
    }
}

/// The key of a TCP or UDP flow of `network` between `container` and
/// `remote` (address, port).
fn flow_key(
    protocol: Protocol,
    network: NetworkId,
    container: (Ipv4Addr, u16),
    remote: (Ipv4Addr, u16),
) -> FlowKey {
    FlowKey {
        protocol,
        network,
        container_ip: IpAddr::V4(container.0),
        container_port: container.1,
        remote_ip: IpAddr::V4(remote.0),
        remote_port: remote.1,
    }
}

/// The source address a published port's client gets inside the
/// container: its own IPv4 address, or the gateway's for loopback, IPv6
/// and unspecified clients (the port stays the client's).
pub fn source_for(client: SocketAddr, gateway: Ipv4Addr) -> SocketAddrV4 {
    let v4 = match client.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    match v4 {
        Some(a) if !a.is_loopback() && !a.is_unspecified() => SocketAddrV4::new(a, client.port()),
        _ => SocketAddrV4::new(gateway, client.port()),
    }
}

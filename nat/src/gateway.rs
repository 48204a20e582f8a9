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
//!    [`Gateway::recv_buffer`] lends, then [`Gateway::handle_datagram`]
//!    (or [`Gateway::handle_datagrams`] for a run a `UDP_GRO` socket read
//!    at once);
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
//! of buffers ([`Config::tx_buffers`], allocated when first needed, then
//! reused last-in first-out, so an idle gateway holds none and a busy
//! one cycles through as few as are out at once): host
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
//! the client's own address. An IPv6 client reaches the container's IPv6
//! address when it has one (dual-stack network), else its IPv4 address;
//! clients whose address cannot be a source on the container's network
//! (loopback, link-local, IPv6 towards the IPv4 address) appear as the
//! gateway's address of that family, with their own port.
//!
//! # IPv6
//! A network with an IPv6 side ([`NetInfo::v6`]) gets the same service
//! for IPv6 as for IPv4: TCP through legs, UDP and ICMPv6 echo relayed
//! over the host's IPv6 sockets (masquerade, as Docker does with
//! `ip6tables`), ICMPv6 errors where IPv4 sends ICMP ones. Packets with
//! extension headers other than a fragment header right after the fixed
//! one are not relayed ([`NatDrop::Protocol`]). IPv6 flows live in the
//! same connection table: its keys hold either family.
//!
//! # Fragments
//! IP fragments from containers (either family) are reassembled
//! ([`crate::frag`]), and the whole datagram goes on as if it had come
//! unfragmented: [`FrameAction::SendWhole`] for a datagram to send.
//!
//! # Policy
//! `--internal` networks and networks with masquerading off get nothing
//! out; the gateway address reaches the host's loopback (`127.0.0.1`,
//! and `::1` for the gateway's IPv6 address) unless turned off; no flow
//! reaches another tapnet network's subnet (of either family) through
//! the host; IPv6 destinations the host would not route as IPv6 to the
//! outside (IPv4-mapped, loopback, unspecified, link-local, multicast)
//! are refused ([`NatDrop::V6Unroutable`]). Refusals are answered at once
//! with ICMP (ICMPv6) "administratively prohibited".
//!
//! # Panics
//! None, for any bytes and any sequence of calls.

use crate::drops::{DropCounts, NatDrop};
use crate::frag::{Offer, Reassembly};
use crate::ip6::{self, icmp6, Ipv6Packet};
use crate::leg::{self, IdleRing, Leg, LegConfig, LegPool, LegTx, TcpSocketState, HEADROOM};
use crate::{
    ConnTrack, CreateError, Direction, FlowHandle, FlowKey, FlowView, Protocol, Side, SocketEvent,
    TcpFlags,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use tapnet_switch::wire::icmp::{self, IcmpPacket};
use tapnet_switch::wire::{
    ethernet, ipv4, tcp, udp, vnet, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet,
    TcpPacket, UdpPacket, UdpRepr, VnetHdr,
};
use tapnet_switch::{gateway_mac, DropReason, Ipv6Config, Network, NetworkId, PortId};

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
/// How long a TCP flow moves no data before its empty rings are given
/// back ([`Config::release`]): long enough that a bulk transfer never
/// pauses that long (each release costs a system call, and the pages
/// fault in again when data flows), short enough that a connection pool
/// of idle flows holds only their bookkeeping.
pub const RING_IDLE_NS: u64 = 2_000_000_000;
/// Largest UDP payload of an IPv4 datagram.
const MAX_UDP_PAYLOAD: usize = 65507;
/// Largest UDP payload of an IPv6 datagram (no jumbograms).
const MAX_UDP_PAYLOAD6: usize = 65527;
/// Offsets in a buffer of the data read from a host socket.
const UDP_DATA_AT: usize = HEADROOM + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;
const ICMP_DATA_AT: usize = HEADROOM + ipv4::MIN_HEADER_LEN;
const UDP6_DATA_AT: usize = HEADROOM + ip6::HEADER_LEN + udp::HEADER_LEN;
const ICMP6_DATA_AT: usize = HEADROOM + ip6::HEADER_LEN;
const _: () = assert!(UDP6_DATA_AT + MAX_UDP_PAYLOAD6 <= BUFFER_LEN);
const _: () = assert!(UDP_DATA_AT + MAX_UDP_PAYLOAD <= BUFFER_LEN);

/// What the gateway knows about a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetInfo {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
    pub masquerade: bool,
    pub internal: bool,
    /// The network's IPv6 subnet and gateway address (dual-stack); `None`:
    /// IPv4 only, IPv6 frames are not relayed ([`NatDrop::NoIpv6`]).
    pub v6: Option<Ipv6Config>,
}

impl NetInfo {
    /// The gateway's address and prefix length in `ip`'s family (`None`:
    /// IPv6 on a network without an IPv6 side).
    fn gateway_for(&self, ip: IpAddr) -> Option<(IpAddr, u8)> {
        match ip {
            IpAddr::V4(_) => Some((IpAddr::V4(self.gateway), self.prefix)),
            IpAddr::V6(_) => self.v6.map(|v| (IpAddr::V6(v.gateway), v.prefix_len)),
        }
    }
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
    /// How IPv4 echo requests leave.
    pub icmp: IcmpMode,
    /// How ICMPv6 echo requests leave (ping sockets of `AF_INET6`, or the
    /// shared raw ICMPv6 socket [`SocketId::RawIcmp6`]).
    pub icmp6: IcmpMode,
    /// What becomes of a TCP flow's ring that holds no data once the flow
    /// has been idle for [`RING_IDLE_NS`]: the daemon gives its pages back
    /// to the kernel (they read as zeros, and cost nothing until written
    /// again). `None`: the rings keep what they touched until the flow
    /// ends.
    pub release: Option<fn(IdleRing<'_>)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            table: crate::Config::default(),
            host_loopback: true,
            leg: LegConfig::default(),
            tx_buffers: 512,
            icmp: IcmpMode::PingSocket,
            icmp6: IcmpMode::PingSocket,
            release: None,
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
    /// The shared raw ICMPv6 socket ([`Config::icmp6`] raw): it reads and
    /// writes ICMPv6 messages without the IPv6 header (the kernel fills
    /// the checksum); datagrams come with their sender.
    RawIcmp6,
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
    /// Open a ping socket (`ICMP` for IPv4, `ICMPV6` for IPv6) connected
    /// to `to` for `flow` (report [`HostEvent::OpenFailed`] on failure).
    OpenPing { flow: FlowHandle, to: IpAddr },
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
    /// A flow's connected UDP or ping socket failed to send or receive
    /// with ENETUNREACH or EHOSTUNREACH (a router's ICMP error, or no
    /// route or no neighbour here): the container gets the same ICMP
    /// from the router `from` when given (a router beyond the host),
    /// else from its gateway, as a router would send it.
    Unreachable {
        why: ConnectError,
        from: Option<IpAddr>,
    },
    /// As [`HostEvent::Unreachable`], from the `connect` of the flow's
    /// new socket, which is gone: the flow ends too (the container's
    /// next datagram tries again).
    OpenUnreachable(ConnectError),
    /// A router `from` reported a flow's datagram or echo request expired
    /// in transit (ICMP time exceeded, in the socket's error queue): the
    /// container gets the same from that address, as a traceroute
    /// expects.
    TimeExceeded { from: IpAddr },
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
    ///
    /// `segment`: the payload is a UDP super-frame's (USO, a container's
    /// `UDP_SEGMENT` send): datagrams of that many bytes each, the last
    /// one possibly shorter, to send as such (one `UDP_SEGMENT` message
    /// where the socket takes it, else one by one), as the container's
    /// kernel would have without the offload. Never 0.
    ///
    /// `ttl`: the TTL (hop limit) to send with, the container's less one
    /// as a router forwards it (a traceroute's probes; `None`: the
    /// socket's own, for a published port's answers and the host's
    /// loopback).
    Send {
        via: SocketId,
        payload: Range<usize>,
        to: Option<SocketAddr>,
        segment: Option<usize>,
        ttl: Option<u8>,
    },
    /// As `Send`, for a datagram the container sent as IP fragments,
    /// reassembled: the payload is `buf[payload]` of the buffer
    /// [`Gateway::take_whole`] hands out; give it back with
    /// [`Gateway::recycle_whole`].
    SendWhole {
        via: SocketId,
        payload: Range<usize>,
        to: Option<SocketAddr>,
        ttl: Option<u8>,
    },
}

/// What a [`FrameAction`] sends, as [`FrameAction::outgoing`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing<'a> {
    pub via: SocketId,
    /// The payload: one datagram, or with `segment` a super-frame's.
    pub data: &'a [u8],
    pub to: Option<SocketAddr>,
    pub segment: Option<usize>,
    pub ttl: Option<u8>,
}

impl FrameAction {
    /// What to send: `frame` is the frame given to
    /// [`Gateway::handle_frame`], `whole` (for [`FrameAction::SendWhole`])
    /// the buffer [`Gateway::take_whole`] handed out. `None` for
    /// [`FrameAction::None`], and for a payload outside its buffer.
    pub fn outgoing<'a>(&self, frame: &'a [u8], whole: Option<&'a [u8]>) -> Option<Outgoing<'a>> {
        match self {
            FrameAction::None => None,
            FrameAction::Send {
                via,
                payload,
                to,
                segment,
                ttl,
            } => Some(Outgoing {
                via: *via,
                data: frame.get(payload.clone())?,
                to: *to,
                segment: *segment,
                ttl: *ttl,
            }),
            FrameAction::SendWhole {
                via,
                payload,
                to,
                ttl,
            } => Some(Outgoing {
                via: *via,
                data: whole?.get(payload.clone())?,
                to: *to,
                segment: None,
                ttl: *ttl,
            }),
        }
    }

    /// The action with the TTL [`Gateway::forwarding`] decided, for a
    /// datagram the gateway forwards (not a published port's answer,
    /// which its socket sends with its own TTL).
    fn leaving_with(self, ttl: Option<u8>) -> FrameAction {
        match self {
            FrameAction::Send {
                via,
                payload,
                to,
                segment,
                ..
            } if !matches!(via, SocketId::Published(_)) => FrameAction::Send {
                via,
                payload,
                to,
                segment,
                ttl,
            },
            other => other,
        }
    }
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
/// to the gateway address itself: the host's loopback), fragments too;
/// on a network with an IPv6 side, the same for IPv6 (TCP, UDP, ICMPv6
/// other than Neighbor Discovery, to a unicast address outside the IPv6
/// subnet, or TCP/UDP to the gateway's IPv6 address). Other Ethernet
/// types, and IPv6 on a network without an IPv6 side, are the switch's.
/// Cheap and allocation-free: run by the workers.
pub fn classify(net: &Network, frame: &[u8]) -> Claim {
    let Some(payload) = frame.get(ethernet::HEADER_LEN..) else {
        return Claim::Drop(NatDrop::Malformed, DropReason::Malformed);
    };
    match EthernetFrame::new_unchecked(frame).ethertype() {
        EtherType::Ipv4 => {}
        EtherType::Ipv6 => return classify6(net, payload),
        _ => return Claim::Pass,
    }
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
    // Fragments too: the gateway reassembles them.
    Claim::Nat
}

/// [`classify`] for an IPv6 packet.
fn classify6(net: &Network, payload: &[u8]) -> Claim {
    let Some(v6) = net.config.v6 else {
        return Claim::Pass;
    };
    let Some(ip) = Ipv6Packet::new_checked(payload) else {
        return Claim::Drop(NatDrop::Malformed, DropReason::Malformed);
    };
    let dst = ip.dst_addr();
    let to_gateway = dst == v6.gateway;
    if (v6.contains(dst) && !to_gateway)
        || dst.is_multicast()
        || dst.is_unspecified()
        || dst.is_loopback()
        || ip6::is_link_local(dst)
    {
        return Claim::Pass;
    }
    match ip.next_header() {
        ip6::next_header::TCP | ip6::next_header::UDP => {}
        ip6::next_header::ICMPV6 if !to_gateway => {
            // Neighbor Discovery is the switch's, whatever its target.
            let t = payload.get(ip6::HEADER_LEN).copied().unwrap_or(0);
            if (icmp6::ND_FIRST..=icmp6::ND_LAST).contains(&t) {
                return Claim::Pass;
            }
        }
        // A fragment (reassembled by the gateway) of TCP, UDP or ICMPv6,
        // which Neighbor Discovery never is; to the gateway address, as
        // unfragmented, only TCP and UDP.
        ip6::next_header::FRAGMENT => {
            let inner = payload.get(ip6::HEADER_LEN).copied().unwrap_or(0);
            match inner {
                ip6::next_header::TCP | ip6::next_header::UDP => {}
                ip6::next_header::ICMPV6 if !to_gateway => {}
                _ if to_gateway => return Claim::Pass,
                _ => return Claim::Drop(NatDrop::Protocol, DropReason::NoRoute),
            }
        }
        _ if to_gateway => return Claim::Pass,
        _ => return Claim::Drop(NatDrop::Protocol, DropReason::NoRoute),
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
    /// Its IPv4 address: the flows of both its addresses count against
    /// one per-container limit, under this address.
    ip: Ipv4Addr,
}

/// The containers the gateway can send to, by network and address (one
/// map per family: IPv4 lookups hash what they did before IPv6).
#[derive(Default)]
struct Endpoints {
    v4: HashMap<(NetworkId, Ipv4Addr), Endpoint>,
    v6: HashMap<(NetworkId, Ipv6Addr), Endpoint>,
}

impl Endpoints {
    #[inline]
    fn get(&self, network: NetworkId, ip: IpAddr) -> Option<Endpoint> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&(network, a)).copied(),
            IpAddr::V6(a) => self.v6.get(&(network, a)).copied(),
        }
    }
}

/// A published port.
#[derive(Clone, Copy, Debug)]
struct Pub {
    network: NetworkId,
    container: SocketAddrV4,
    /// The container's IPv6 address (same port), for IPv6 clients.
    container6: Option<SocketAddrV6>,
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
    /// Bytes relayed so far, both directions (whether the leg's rings
    /// stay small enough for [`LegPool`] to keep it).
    relayed: u64,
    /// The host socket reached end of stream; the leg was closed.
    host_eof: bool,
    /// The container closed its side; the host socket was shut down.
    container_eof: bool,
    /// The host socket's last write would block: wait for writable.
    write_blocked: bool,
    /// The container left after closing its side, with data the leg had
    /// acknowledged still to go to the host: the flow lives on until that
    /// is written (see [`Gateway::remove_endpoint`]). Nothing goes to the
    /// container any more; what the host sends is read and discarded.
    draining: bool,
    /// The rings may hold pages touched since they were last given back
    /// (data moved; only tracked with [`Config::release`]).
    rings_used: bool,
    /// When the flow last moved data (or a release found a ring still
    /// holding some): its rings go back [`RING_IDLE_NS`] later.
    idle_since: u64,
    /// The timer queued for that, if one is.
    release_at: Option<u64>,
}

impl TcpFlow {
    /// A new flow's relay: nothing moved, both sides open.
    fn new(leg: Leg) -> Box<TcpFlow> {
        Box::new(TcpFlow {
            leg,
            relayed: 0,
            host_eof: false,
            container_eof: false,
            write_blocked: false,
            draining: false,
            rings_used: false,
            idle_since: 0,
            release_at: None,
        })
    }
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
    /// The container's address and port (echo identifier for ICMP).
    container: SocketAddr,
    /// The remote as the container sees it (both of one family).
    remote: SocketAddr,
    io: Io,
    /// The lane of the container's last frame of this flow.
    lane: Option<u8>,
}

/// The frame buffers and the queue of frames towards containers.
/// Invariant: `pool`, `current`, the queue, the buffers out with the edge
/// and `unmade` add up to the configured number of buffers.
struct TxQueue {
    /// Free buffers, the one given back last on top.
    pool: Vec<Box<[u8]>>,
    /// Buffers not allocated yet.
    unmade: usize,
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
            pool: Vec::with_capacity(n),
            unmade: n,
            queue: VecDeque::with_capacity(n),
            current: None,
            scratch: vec![0u8; BUFFER_LEN].into_boxed_slice(),
            lane: None,
        }
    }

    fn has_buffer(&self) -> bool {
        self.current.is_some() || !self.pool.is_empty() || self.unmade > 0
    }

    /// The lent buffer, taken from the pool if needed.
    fn current(&mut self) -> Option<&mut Box<[u8]>> {
        if self.current.is_none() {
            self.current = self.pool.pop();
            if self.current.is_none() && self.unmade > 0 {
                self.unmade -= 1;
                self.current = Some(vec![0u8; BUFFER_LEN].into_boxed_slice());
            }
        }
        self.current.as_mut()
    }

    /// Finishes the frame in the lent buffer (IP packet at `HEADROOM`,
    /// `ip_len` bytes): Ethernet header from the gateway to `ep`, queued.
    fn push(&mut self, ep: Endpoint, gw: EthernetAddress, meta: VnetHdr, ip_len: usize) {
        let Some(mut buf) = self.current.take() else {
            return;
        };
        let ethertype = if buf[HEADROOM] >> 4 == 6 {
            EtherType::Ipv6
        } else {
            EtherType::Ipv4
        };
        let mut eth = EthernetFrame::new_unchecked(&mut buf[FRAME_OFFSET..HEADROOM]);
        eth.set_dst_addr(ep.mac);
        eth.set_src_addr(gw);
        eth.set_ethertype(ethertype);
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
            meta.gso_type = if off.ipv6 {
                vnet::GSO_TCPV6
            } else {
                vnet::GSO_TCPV4
            };
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
    /// By flow slot index: as long as the highest slot the table has
    /// handed out, within the table's capacity (reserved at construction;
    /// see [`FlowHandle::slot_in`]).
    flows: Vec<Option<Flow>>,
    nets: HashMap<NetworkId, NetInfo>,
    endpoints: Endpoints,
    /// Port → the endpoint's network and addresses.
    ports: HashMap<PortId, (NetworkId, Ipv4Addr, Option<Ipv6Addr>)>,
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
    /// New TCP flows' legs, with finished ones kept for reuse.
    legs: LegPool,
    /// Idle flows' rings given back ([`Config::release`]).
    released: RingReleases,
    /// Containers' fragmented datagrams being put together.
    frags: Reassembly,
    /// The datagram of the latest [`FrameAction::SendWhole`], until the
    /// edge takes it.
    whole: Option<Box<[u8]>>,
    /// By flow slot index, as `flows`: the start of a datagram flow's
    /// latest datagram, which an ICMP error about it quotes.
    heads: Vec<Option<Head>>,
}

/// How much of a datagram an ICMP error to a container quotes beyond
/// the IP header: the UDP header and 24 bytes (what traceroutes match
/// their probes by: busybox's IPv6 probe number and time), or the echo
/// request's header and 24 bytes.
const HEAD_LEN: usize = 32;

/// The start of a container's datagram (its UDP header and payload, or
/// its echo request), and its whole length.
#[derive(Clone, Copy)]
struct Head {
    bytes: [u8; HEAD_LEN],
    len: u8,
    l4_len: u16,
}

impl Head {
    fn of(l4: &[u8]) -> Head {
        let n = l4.len().min(HEAD_LEN);
        let mut bytes = [0u8; HEAD_LEN];
        bytes[..n].copy_from_slice(&l4[..n]);
        Head {
            bytes,
            len: n as u8,
            l4_len: l4.len().min(usize::from(u16::MAX)) as u16,
        }
    }
}

/// Rings of idle TCP flows given back ([`Config::release`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingReleases {
    /// Rings lent to [`Config::release`].
    pub rings: u64,
    /// Their bytes (what was resident of them is not known here).
    pub bytes: u64,
}

/// A relay turn's part in giving a flow's rings back: `moved` says the
/// turn moved data. Rings that were used go to `give` once the flow has
/// been idle for [`RING_IDLE_NS`]; `timer` queues the turn that will do
/// it (one at a time per flow).
fn release_idle_rings(
    t: &mut TcpFlow,
    now: u64,
    moved: bool,
    give: fn(IdleRing<'_>),
    released: &mut RingReleases,
    timer: &mut dyn FnMut(u64),
) {
    if moved {
        t.rings_used = true;
        t.idle_since = now;
    }
    if t.release_at.is_some_and(|at| at <= now) {
        t.release_at = None;
    }
    if t.rings_used && now.saturating_sub(t.idle_since) >= RING_IDLE_NS {
        let both = t.leg.idle_rings(&mut |r| {
            released.rings += 1;
            released.bytes += r.len() as u64;
            give(r)
        });
        // A ring still holding data is tried again an idle period later.
        t.rings_used = !both;
        t.idle_since = now;
    }
    if t.rings_used && t.release_at.is_none() {
        let at = t.idle_since.saturating_add(RING_IDLE_NS);
        timer(at);
        t.release_at = Some(at);
    }
}

impl Gateway {
    /// A gateway with its table, flow slots and frame buffers allocated.
    pub fn new(config: Config) -> Gateway {
        let ct = ConnTrack::new(config.table);
        let capacity = ct.config().capacity as usize;
        Gateway {
            ct,
            flows: Vec::with_capacity(capacity),
            nets: HashMap::new(),
            endpoints: Endpoints::default(),
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
            legs: LegPool::new(config.leg),
            released: RingReleases::default(),
            frags: Reassembly::new(),
            whole: None,
            heads: Vec::with_capacity(capacity),
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
    /// Rings of idle flows given back so far ([`Config::release`]).
    pub fn ring_releases(&self) -> RingReleases {
        self.released
    }
    /// The gateway's drop counters.
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
    /// Counts a drop the edge saw (a failed send, a full injection queue).
    pub fn count_drop(&mut self, r: NatDrop) {
        self.drops.count(r);
    }

    /// Counts `n` drops of `r` the edge learnt of at once (e.g. a host
    /// socket's own drop count).
    pub fn count_drops(&mut self, r: NatDrop, n: u64) {
        self.drops.count_n(r, n);
    }

    // ---- control ----------------------------------------------------------

    /// Adds or replaces a network.
    pub fn set_network(&mut self, id: NetworkId, info: NetInfo) {
        self.nets.insert(id, info);
    }

    pub fn remove_network(&mut self, id: NetworkId) {
        self.nets.remove(&id);
    }

    /// A container interface: frames to `ip` (and to `ip6`, its IPv6
    /// address on a dual-stack network) on `network` go to `port`. An
    /// interface already known on `port` is replaced.
    pub fn add_endpoint(
        &mut self,
        network: NetworkId,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
        mac: [u8; 6],
        port: PortId,
    ) {
        if let Some((n, old, old6)) = self.ports.insert(port, (network, ip, ip6)) {
            self.endpoints.v4.remove(&(n, old));
            if let Some(a) = old6 {
                self.endpoints.v6.remove(&(n, a));
            }
        }
        let ep = Endpoint {
            mac: EthernetAddress(mac),
            port,
            ip,
        };
        self.endpoints.v4.insert((network, ip), ep);
        if let Some(a) = ip6 {
            self.endpoints.v6.insert((network, a), ep);
        }
    }

    /// The interface on `port` left: its flows (of both families) are
    /// removed and their sockets closed (reset where a stream was cut
    /// short).
    ///
    /// Except a TCP stream the container had closed (its FIN reached the
    /// leg) while the leg still holds data it acknowledged: the container
    /// saw that data delivered, so the flow stays, draining, until the
    /// data is written to the host; then the host socket is shut down and
    /// closed as after a clean close ([`Gateway::relay_tcp`]). A host
    /// that stops reading is bounded by the flow's idle timeout, which
    /// ends it with a reset. (Behind Docker's kernel NAT such data is
    /// already on its way; a userspace relay must not lose it.)
    pub fn remove_endpoint(&mut self, port: PortId) {
        let Some((network, ip, ip6)) = self.ports.remove(&port) else {
            return;
        };
        self.endpoints.v4.remove(&(network, ip));
        if let Some(a) = ip6 {
            self.endpoints.v6.remove(&(network, a));
        }
        let gone: Vec<FlowHandle> = [Some(IpAddr::V4(ip)), ip6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .flat_map(|a| self.ct.iter_container(network, a).map(|v| v.handle))
            .collect();
        for h in gone {
            if self.start_draining(h) {
                continue;
            }
            let _ = self.ct.remove(h);
            self.drop_io(h);
        }
    }

    /// Whether flow `h`, whose container left, is a closed TCP stream
    /// with data or its end still to relay; if so it is marked draining
    /// and relayed once more.
    fn start_draining(&mut self, h: FlowHandle) -> bool {
        let Some(Flow { io: Io::Tcp(t), .. }) = self.flow_mut(h) else {
            return false;
        };
        let fin_in = matches!(
            t.leg.socket().state(),
            TcpSocketState::CloseWait
                | TcpSocketState::LastAck
                | TcpSocketState::Closing
                | TcpSocketState::TimeWait
        );
        if t.container_eof || !fin_in {
            return false;
        }
        t.draining = true;
        self.dirty.push(h);
        true
    }

    /// A published port: the edge's socket `id` (TCP listener or UDP)
    /// relays to `container` on `network`, and IPv6 clients to
    /// `container6` (the container's IPv6 address, same port) when given.
    pub fn publish(
        &mut self,
        id: u64,
        network: NetworkId,
        container: SocketAddrV4,
        container6: Option<Ipv6Addr>,
    ) {
        let container6 = container6.map(|a| SocketAddrV6::new(a, container.port(), 0, 0));
        self.published.insert(
            id,
            Pub {
                network,
                container,
                container6,
            },
        );
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
        self.tx.pool.len() + usize::from(self.tx.current.is_some()) + self.tx.unmade
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
        if let Some(t) = self.frags.deadline() {
            at = Some(at.map_or(t, |a| a.min(t)));
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
        self.frags.expire(now);
        let lost = self.frags.take_lost();
        self.drops.count_n(NatDrop::IpFragment, lost);
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

    /// Whether a container's bare SYN belongs to TCP flow `h`: its host
    /// connect is pending (a retransmitted SYN), or its leg may still take
    /// one (listening, or answering it). A leg that was reset or closed,
    /// or none, does not: the SYN opens a new connection.
    fn takes_syn(&mut self, h: FlowHandle) -> bool {
        match self.flow_mut(h).map(|f| &mut f.io) {
            Some(Io::Connecting { .. }) => true,
            Some(Io::Tcp(t)) => !matches!(
                t.leg.socket().state(),
                TcpSocketState::Closed | TcpSocketState::TimeWait
            ),
            _ => false,
        }
    }

    /// Creates a flow in the table, counting a refusal. A flow of a known
    /// container's IPv6 address counts against its IPv4 address's limit.
    fn create(&mut self, key: FlowKey, dir: Direction, now: u64) -> Option<FlowHandle> {
        let owner = match key.container_ip {
            IpAddr::V6(_) => self
                .endpoints
                .get(key.network, key.container_ip)
                .map_or(key.container_ip, |e| IpAddr::V4(e.ip)),
            v4 => v4,
        };
        match self.ct.create_owned(key, dir, now, owner) {
            Ok(h) => {
                // A closed flow of the container made room: whatever the
                // gateway still holds of it (a leg not yet retired) goes.
                if let Some(old) = self.ct.take_evicted() {
                    self.drop_io(old);
                }
                Some(h)
            }
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
    fn target(&self, net: &NetInfo, dst: IpAddr) -> Result<IpAddr, NatDrop> {
        if net.internal {
            return Err(NatDrop::Internal);
        }
        let host_loopback = |lo: IpAddr| {
            if self.config.host_loopback {
                Ok(lo)
            } else {
                Err(NatDrop::HostLoopbackOff)
            }
        };
        match dst {
            IpAddr::V4(d) => {
                if d == net.gateway {
                    return host_loopback(IpAddr::V4(Ipv4Addr::LOCALHOST));
                }
                // Network isolation: another tapnet network's addresses
                // (its containers, its gateway) are never reached through
                // the host, where they might even be routed somewhere else.
                if self
                    .nets
                    .values()
                    .any(|n| prefix_match(d, n.gateway, n.prefix))
                {
                    return Err(NatDrop::OtherNetwork);
                }
            }
            IpAddr::V6(d) => {
                let Some(v6) = net.v6 else {
                    return Err(NatDrop::NoIpv6);
                };
                if d == v6.gateway {
                    return host_loopback(IpAddr::V6(Ipv6Addr::LOCALHOST));
                }
                // A host socket would take these to the host itself or to
                // IPv4 (an IPv4-mapped address), around the policy.
                if d.to_ipv4_mapped().is_some()
                    || d.is_loopback()
                    || d.is_unspecified()
                    || d.is_multicast()
                    || ip6::is_link_local(d)
                {
                    return Err(NatDrop::V6Unroutable);
                }
                if self
                    .nets
                    .values()
                    .any(|n| n.v6.is_some_and(|v| v.contains(d)))
                {
                    return Err(NatDrop::OtherNetwork);
                }
            }
        }
        if net.masquerade {
            Ok(dst)
        } else {
            Err(NatDrop::MasqueradeOff)
        }
    }

    /// Builds an IP packet with `build` (given a whole frame buffer; it
    /// writes the packet at `HEADROOM` and returns its length) and queues
    /// it to the container `to` on `network`.
    fn emit(
        &mut self,
        network: NetworkId,
        to: IpAddr,
        meta: VnetHdr,
        build: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        let Some(info) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return;
        };
        let Some(ep) = self.endpoints.get(network, to) else {
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

    /// Sends an ICMP (ICMPv6) error `why` (destination unreachable, time
    /// exceeded) about `packet` (an IP packet from a container), from
    /// `from` (the gateway, a router on the way, or the remote that
    /// refused a port), back to its sender.
    fn send_icmp_error(&mut self, network: NetworkId, from: IpAddr, packet: &[u8], why: IcmpErr) {
        match from {
            IpAddr::V4(from) => {
                let Ok(p) = Ipv4Packet::new_checked(packet) else {
                    return;
                };
                let src = p.src_addr();
                let quoted = packet.len().min(p.header_len() + 8);
                self.emit(network, IpAddr::V4(src), VnetHdr::default(), |buf| {
                    let len = ipv4::MIN_HEADER_LEN + icmp::ECHO_HEADER_LEN + quoted;
                    let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
                    ipv4::emit_header(ip, from, src, ipv4::protocol::ICMP, len - 20, 64);
                    let m = &mut ip[ipv4::MIN_HEADER_LEN..];
                    m[icmp::ECHO_HEADER_LEN..].copy_from_slice(&packet[..quoted]);
                    let mut msg = IcmpPacket::new_unchecked(m);
                    msg.set_msg_type(why.type4());
                    msg.set_code(why.code4());
                    msg.clear_rest_of_header();
                    msg.fill_checksum();
                    Some(len)
                });
            }
            IpAddr::V6(from) => {
                let Some(p) = Ipv6Packet::new_checked(packet) else {
                    return;
                };
                let src = p.src_addr();
                // RFC 4443 2.4 (c): as much of the packet as fits in the
                // minimum MTU.
                let quoted = p
                    .payload_range()
                    .end
                    .min(ip6::MIN_MTU - ip6::HEADER_LEN - icmp::ECHO_HEADER_LEN);
                self.emit(network, IpAddr::V6(src), VnetHdr::default(), |buf| {
                    let n = icmp::ECHO_HEADER_LEN + quoted;
                    let len = ip6::HEADER_LEN + n;
                    let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
                    ip6::emit_header(ip, from, src, ip6::next_header::ICMPV6, n, 64)?;
                    let m = &mut ip[ip6::HEADER_LEN..];
                    m[icmp::ECHO_HEADER_LEN..].copy_from_slice(&packet[..quoted]);
                    m[..icmp::ECHO_HEADER_LEN].fill(0);
                    m[0] = why.type6();
                    m[1] = why.code6();
                    ip6::fill_checksum(m, 2, from, src, ip6::next_header::ICMPV6, false);
                    Some(len)
                });
            }
        }
    }

    /// Answers `segment` (a container's TCP packet) with a RST (never a
    /// RST with a RST).
    fn send_rst(&mut self, network: NetworkId, segment: &[u8]) {
        let Some(src) = ip_src(segment) else {
            return;
        };
        self.emit(network, src, VnetHdr::default(), |buf| {
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
        let fragment = frame
            .get(ethernet::HEADER_LEN..)
            .is_some_and(Reassembly::is_fragment);
        if !fragment || !self.nets.contains_key(&network) {
            return self.dispatch(now, network, meta, frame);
        }
        let offer = self.frags.offer(now, network, frame);
        // Datagrams that expired or were evicted for this one.
        let lost = self.frags.take_lost();
        self.drops.count_n(NatDrop::IpFragment, lost);
        match offer {
            Offer::Pending => FrameAction::None,
            Offer::Dropped(n) => {
                self.drops.count_n(NatDrop::IpFragment, n);
                FrameAction::None
            }
            Offer::Whole { mut buf, frame: r } => {
                let whole = &mut buf[r.clone()];
                match self.dispatch(now, network, &VnetHdr::default(), whole) {
                    FrameAction::Send {
                        via,
                        payload,
                        to,
                        ttl,
                        ..
                    } => {
                        self.whole = Some(buf);
                        FrameAction::SendWhole {
                            via,
                            payload: payload.start + r.start..payload.end + r.start,
                            to,
                            ttl,
                        }
                    }
                    other => {
                        self.frags.recycle(buf);
                        other
                    }
                }
            }
        }
    }

    /// How a container's UDP datagram or echo request `packet` (header
    /// `ip`) is forwarded, as a router does it: `Some(ttl)` to leave with,
    /// the container's less one, or `Some(None)` for one to the gateway's
    /// own address (the host's loopback: delivered, not forwarded, the
    /// socket's own TTL). `None`: it arrived with TTL (hop limit) 1 and
    /// expires here, answered with ICMP time exceeded from the gateway
    /// (the first hop a traceroute shows).
    fn forwarding(
        &mut self,
        net: &NetInfo,
        network: NetworkId,
        ip: &IpHdr,
        packet: &[u8],
    ) -> Option<Option<u8>> {
        let Some((gw, _)) = net.gateway_for(ip.src) else {
            return Some(None);
        };
        if ip.dst == gw {
            return Some(None);
        }
        if ip.ttl > 1 {
            return Some(Some(ip.ttl - 1));
        }
        self.drops.count(NatDrop::TtlExceeded);
        self.send_icmp_error(network, gw, packet, IcmpErr::TimeExceeded);
        None
    }

    /// The datagram of the latest [`FrameAction::SendWhole`]; give it
    /// back with [`Gateway::recycle_whole`] once sent.
    pub fn take_whole(&mut self) -> Option<Box<[u8]>> {
        self.whole.take()
    }

    /// Gives back what [`Gateway::take_whole`] lent.
    pub fn recycle_whole(&mut self, buf: Box<[u8]>) {
        self.frags.recycle(buf);
    }

    /// [`Gateway::handle_frame`] for an unfragmented packet (or one
    /// whole again).
    fn dispatch(
        &mut self,
        now: u64,
        network: NetworkId,
        meta: &VnetHdr,
        frame: &mut [u8],
    ) -> FrameAction {
        let Some(net) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return FrameAction::None;
        };
        let Some(ip) = frame.get(ethernet::HEADER_LEN..) else {
            self.drops.count(NatDrop::Malformed);
            return FrameAction::None;
        };
        let h = match parse_ip(ip) {
            Ok(h) => h,
            Err(why) => {
                self.drops.count(why);
                return FrameAction::None;
            }
        };
        if h.src.is_ipv6() && net.v6.is_none() {
            self.drops.count(NatDrop::NoIpv6);
            return FrameAction::None;
        }
        let (src, dst, ihl, total) = (h.src, h.dst, h.ihl, h.total);
        let at = ethernet::HEADER_LEN;
        let ip_range = at..at + total;
        let Some(l4) = ip.get(ihl..total) else {
            self.drops.count(NatDrop::Malformed);
            return FrameAction::None;
        };
        match h.proto {
            L4::Tcp => {
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
            L4::Udp => {
                // A USO super-frame is split into its datagrams; legacy
                // UFO (one datagram, IP fragments) is not taken.
                let segment = match (meta.gso_type & !vnet::GSO_ECN, meta.gso_size) {
                    (vnet::GSO_NONE, _) => None,
                    (vnet::GSO_UDP_L4, n) if n > 0 => Some(usize::from(n)),
                    _ => {
                        self.drops.count(NatDrop::UdpGso);
                        return FrameAction::None;
                    }
                };
                let Ok(u) = UdpPacket::new_checked(l4) else {
                    self.drops.count(NatDrop::Malformed);
                    return FrameAction::None;
                };
                let Some(ttl) = self.forwarding(&net, network, &h, &frame[ip_range.clone()]) else {
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
                self.udp_from_container(now, &net, key, &frame[ip_range], payload, segment)
                    .leaving_with(ttl)
            }
            L4::Icmp => {
                let Ok(m) = IcmpPacket::new_checked(l4) else {
                    self.drops.count(NatDrop::Malformed);
                    return FrameAction::None;
                };
                let request = if src.is_ipv4() {
                    icmp::ECHO_REQUEST
                } else {
                    icmp6::ECHO_REQUEST
                };
                if m.msg_type() != request || m.code() != 0 {
                    self.drops.count(NatDrop::IcmpNotEcho);
                    return FrameAction::None;
                }
                let Some(ttl) = self.forwarding(&net, network, &h, &frame[ip_range.clone()]) else {
                    return FrameAction::None;
                };
                let key = FlowKey::icmp_echo(network, src, m.echo_ident(), dst);
                let msg = at + ihl..at + total;
                self.icmp_from_container(now, &net, key, frame, ip_range, msg)
                    .leaving_with(ttl)
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
            Some(h) if bare_syn && !self.takes_syn(h) => {
                // A new connection reusing the tuple of a flow that is
                // over: its leg is gone, or reset or closed but not yet
                // retired (the reset came in the same batch of frames: a
                // client closing with SO_LINGER 0 whose kernel hands the
                // port out again at once). The old flow ends here.
                self.drop_io(h);
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
        let (cip, rip) = (key.container_ip, key.remote_ip);
        let target = match self.target(net, rip) {
            Ok(t) => t,
            Err(why) => {
                self.drops.count(why);
                if let Some((gw, _)) = net.gateway_for(cip) {
                    self.send_icmp_error(key.network, gw, syn, IcmpErr::Prohibited);
                }
                return;
            }
        };
        let Some(h) = self.create(key, Direction::Outbound, now) else {
            self.send_rst(key.network, syn);
            return;
        };
        let _ = self.ct.handle_tcp(h, now, flags, Side::Container, payload);
        *h.slot_in(&mut self.flows) = Some(Flow {
            handle: h,
            network: key.network,
            container: SocketAddr::new(cip, key.container_port),
            remote: SocketAddr::new(rip, key.remote_port),
            io: Io::Connecting { syn: syn.to_vec() },
            lane: self.tx.lane,
        });
        self.ops.push_back(SocketOp::Connect {
            flow: h,
            to: SocketAddr::new(target, key.remote_port),
        });
    }

    fn udp_from_container(
        &mut self,
        now: u64,
        net: &NetInfo,
        key: FlowKey,
        packet: &[u8],
        payload: Range<usize>,
        segment: Option<usize>,
    ) -> FrameAction {
        let (cip, rip) = (key.container_ip, key.remote_ip);
        let h = match self.live_flow(&key) {
            Some(h) => h,
            None => {
                let target = match self.target(net, rip) {
                    Ok(t) => t,
                    Err(why) => {
                        self.drops.count(why);
                        if let Some((gw, _)) = net.gateway_for(cip) {
                            self.send_icmp_error(key.network, gw, packet, IcmpErr::Prohibited);
                        }
                        return FrameAction::None;
                    }
                };
                let Some(h) = self.create(key, Direction::Outbound, now) else {
                    return FrameAction::None;
                };
                *h.slot_in(&mut self.flows) = Some(Flow {
                    handle: h,
                    network: key.network,
                    container: SocketAddr::new(cip, key.container_port),
                    remote: SocketAddr::new(rip, key.remote_port),
                    io: Io::Udp(UdpVia::Own),
                    lane: self.tx.lane,
                });
                self.ops.push_back(SocketOp::OpenUdp {
                    flow: h,
                    to: SocketAddr::new(target, key.remote_port),
                });
                h
            }
        };
        if let Some(l4) = l4_of(packet) {
            *h.slot_in(&mut self.heads) = Some(Head::of(l4));
        }
        // Each datagram of a super-frame counts as one.
        self.count_datagrams(h, now, Side::Container, payload.len(), segment);
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
            segment,
            ttl: None,
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
        let (cip, rip) = (key.container_ip, key.remote_ip);
        let h = match self.live_flow(&key) {
            Some(h) => h,
            None => {
                if let Err(why) = self.target(net, rip) {
                    self.drops.count(why);
                    if let Some((gw, _)) = net.gateway_for(cip) {
                        self.send_icmp_error(key.network, gw, &frame[packet], IcmpErr::Prohibited);
                    }
                    return FrameAction::None;
                }
                let mode = if rip.is_ipv4() {
                    self.config.icmp
                } else {
                    self.config.icmp6
                };
                let raw = match mode {
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
                *h.slot_in(&mut self.flows) = Some(Flow {
                    handle: h,
                    network: key.network,
                    container: SocketAddr::new(cip, key.container_port),
                    remote: SocketAddr::new(rip, 0),
                    io: Io::Icmp { raw },
                    lane: self.tx.lane,
                });
                h
            }
        };
        let _ = self.ct.handle_icmp(h, now, Side::Container, msg.len());
        if let Some(m) = frame.get(msg.clone()) {
            *h.slot_in(&mut self.heads) = Some(Head::of(m));
        }
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
                // The kernel computes an ICMPv6 raw socket's checksum.
                let via = if rip.is_ipv4() {
                    m.fill_checksum();
                    SocketId::RawIcmp
                } else {
                    SocketId::RawIcmp6
                };
                FrameAction::Send {
                    via,
                    payload: msg,
                    to: Some(SocketAddr::new(rip, 0)),
                    segment: None,
                    ttl: None,
                }
            }
            Some(Io::Icmp { raw: false }) => FrameAction::Send {
                via: SocketId::Flow(h),
                payload: msg,
                to: None,
                segment: None,
                ttl: None,
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
                        }) = h.slot_in(&mut self.flows).take()
                        {
                            t.leg.socket().abort();
                            self.legs.put(t.leg, t.relayed);
                        }
                        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Reset);
                    }
                    Some(_) => {
                        *h.slot_in(&mut self.flows) = None;
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
            HostEvent::PortUnreachable => self.datagram_error(now, h, IcmpErr::Port, None),
            HostEvent::TimeExceeded { from } => {
                self.drops.count(NatDrop::TtlExceeded);
                self.datagram_error(now, h, IcmpErr::TimeExceeded, Some(from));
            }
            HostEvent::Unreachable { why, from } => {
                self.drops.count(NatDrop::Unreachable);
                self.datagram_error(now, h, unreach_of(why), from);
            }
            HostEvent::OpenUnreachable(e) => {
                self.drops.count(NatDrop::Unreachable);
                self.datagram_error(now, h, unreach_of(e), None);
                if let Some(Io::Udp(UdpVia::Own) | Io::Icmp { raw: false }) =
                    self.flow(h).map(|f| &f.io)
                {
                    *h.slot_in(&mut self.flows) = None;
                    let _ = self.ct.remove(h);
                }
            }
        }
    }

    /// An ICMP error to the container about its datagram flow `h` (UDP
    /// through its own socket, or ICMP echo through a ping socket),
    /// quoting the start of the flow's latest datagram, from `from` when
    /// given (a router on the way), else: Port from the remote (its host
    /// refused the port: the container's socket fails with "connection
    /// refused"), the others from the gateway, as a router says them.
    fn datagram_error(&mut self, now: u64, h: FlowHandle, why: IcmpErr, from: Option<IpAddr>) {
        let Some(f) = self.flow(h) else { return };
        let echo = match f.io {
            Io::Udp(UdpVia::Own) => false,
            Io::Icmp { .. } => true,
            _ => return,
        };
        let (net, container, remote) = (f.network, f.container, f.remote);
        self.tx.lane = f.lane;
        let from = match (from, why) {
            (Some(a), _) if a.is_ipv4() == container.is_ipv4() => a,
            (_, IcmpErr::Port) => remote.ip(),
            _ => {
                let gw = self
                    .nets
                    .get(&net)
                    .and_then(|n| n.gateway_for(container.ip()));
                let Some((gw, _)) = gw else { return };
                gw
            }
        };
        // What the container sent last on the flow (kept for every
        // datagram it sends, so before any error about one).
        let Some(head) = self.heads.get(h.index() as usize).copied().flatten() else {
            return;
        };
        let mut quote = [0u8; ip6::HEADER_LEN + HEAD_LEN];
        let l4_len = usize::from(head.l4_len);
        let l3 = match (container.ip(), remote.ip()) {
            (IpAddr::V4(c), IpAddr::V4(r)) => {
                let p = if echo {
                    ipv4::protocol::ICMP
                } else {
                    ipv4::protocol::UDP
                };
                ipv4::emit_header(&mut quote, c, r, p, l4_len, 64);
                ipv4::MIN_HEADER_LEN
            }
            (IpAddr::V6(c), IpAddr::V6(r)) => {
                let p = if echo {
                    ip6::next_header::ICMPV6
                } else {
                    ip6::next_header::UDP
                };
                let _ = ip6::emit_header(&mut quote, c, r, p, l4_len, 64);
                ip6::HEADER_LEN
            }
            _ => return,
        };
        let n = usize::from(head.len);
        quote[l3..l3 + n].copy_from_slice(&head.bytes[..n]);
        if why == IcmpErr::Port {
            let _ = self.ct.handle_udp(h, now, Side::Remote, 0);
        }
        self.send_icmp_error(net, from, &quote[..l3 + n], why);
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
            container,
            lane,
            ..
        }) = h.slot_in(&mut self.flows).take()
        else {
            return;
        };
        self.tx.lane = lane;
        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Refused);
        let gateway = self
            .nets
            .get(&network)
            .and_then(|n| n.gateway_for(container.ip()))
            .map(|(gw, _)| gw);
        // Refused: a RST, as from the server. Unreachable or timed out:
        // what a router says (the container's connect fails with "no
        // route to host").
        match (e, gateway) {
            (Some(ConnectError::NetUnreachable), Some(gw)) => {
                self.send_icmp_error(network, gw, &syn, IcmpErr::Net)
            }
            (Some(ConnectError::HostUnreachable | ConnectError::TimedOut), Some(gw)) => {
                self.send_icmp_error(network, gw, &syn, IcmpErr::Host)
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
        let Some((gw, prefix)) = info.gateway_for(container.ip()) else {
            self.drops.count(NatDrop::NoIpv6);
            return;
        };
        let Some(Flow {
            io: Io::Connecting { syn },
            ..
        }) = h.slot_in(&mut self.flows).take()
        else {
            return;
        };
        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Connected);
        let mut leg = self.legs.accept(gw, prefix, remote, now);
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
        *h.slot_in(&mut self.flows) = Some(Flow {
            handle: h,
            network,
            container,
            remote,
            io: Io::Tcp(TcpFlow::new(leg)),
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
            legs,
            config,
            released,
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
        if t.draining {
            // The container is gone: the host's data has nowhere to go.
            // Read it all the same, so that the socket closes with FIN
            // (a close with unread data resets, and would throw away
            // what is still queued for the host).
            let mut sink = [0u8; 16 * 1024];
            while !failed && !t.host_eof && read_moved < RELAY_BUDGET {
                match host.read(&mut sink) {
                    Ok(0) => t.host_eof = true,
                    Ok(n) => read_moved += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => failed = true,
                }
            }
        }
        while !t.draining
            && !failed
            && !t.host_eof
            && read_moved < RELAY_BUDGET
            && t.leg.socket().can_send()
        {
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
        t.relayed = t.relayed.saturating_add((moved + read_moved) as u64);
        let starved = out.starved;
        if let Some(e) = host_event {
            let _ = ct.handle_tcp_socket(h, now, e);
        }
        if t.draining && (t.container_eof || failed) {
            // Everything the container sent is with the host (or the
            // host failed): the flow ends here, its entry too, since its
            // container is gone.
            if let Some(Flow { io: Io::Tcp(t), .. }) = h.slot_in(flows).take() {
                legs.put(t.leg, t.relayed);
            }
            let _ = ct.remove(h);
            ops.push_back(SocketOp::Close {
                flow: h,
                reset: failed,
            });
            return;
        }
        let state = t.leg.socket().state();
        let finished = matches!(state, TcpSocketState::Closed | TcpSocketState::TimeWait)
            || (state == TcpSocketState::Listen && failed);
        if finished {
            let reset = !t.host_eof || !t.container_eof;
            if let Some(Flow { io: Io::Tcp(t), .. }) = h.slot_in(flows).take() {
                legs.put(t.leg, t.relayed);
            }
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
        if let Some(give) = config.release {
            release_idle_rings(t, now, moved + read_moved > 0, give, released, &mut |at| {
                timers.push(Reverse((at, h.to_u64())))
            });
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
            SocketId::Flow(h) => match self.flow(h).map(|f| (&f.io, f.container.is_ipv6())) {
                Some((Io::Icmp { .. }, false)) => (ICMP_DATA_AT, BUFFER_LEN - ICMP_DATA_AT),
                Some((Io::Icmp { .. }, true)) => (ICMP6_DATA_AT, BUFFER_LEN - ICMP6_DATA_AT),
                Some((_, true)) => (UDP6_DATA_AT, MAX_UDP_PAYLOAD6),
                _ => (UDP_DATA_AT, MAX_UDP_PAYLOAD),
            },
            // Read where an IPv4 datagram goes; one for the container's
            // IPv6 address moves back by the headers' difference.
            SocketId::Published(_) => (UDP_DATA_AT, MAX_UDP_PAYLOAD),
            SocketId::RawIcmp => (HEADROOM, BUFFER_LEN - HEADROOM),
            SocketId::RawIcmp6 => (ICMP6_DATA_AT, BUFFER_LEN - ICMP6_DATA_AT),
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
        self.handle_datagrams(now, id, len, from, None)
    }

    /// As [`Gateway::handle_datagram`], for what a UDP socket with
    /// `UDP_GRO` read at once: with `segment`, `len` bytes of datagrams of
    /// `segment` bytes each (the last may be shorter) from one sender. They
    /// reach the container as one UDP super-frame (`GSO_UDP_L4`, split by
    /// the container's kernel), each counted as a datagram. `segment` is
    /// ignored for other sockets, and when the bytes are one datagram.
    pub fn handle_datagrams(
        &mut self,
        now: u64,
        id: SocketId,
        len: usize,
        from: Option<SocketAddr>,
        segment: Option<usize>,
    ) {
        let segment = segment.filter(|&s| s > 0 && s < len && s <= usize::from(u16::MAX));
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
                        self.count_datagrams(h, now, Side::Remote, len, segment);
                        self.udp_to_container(net, remote, container, len, segment);
                    }
                    Some(true) => {
                        let (at, reply) = if container.is_ipv4() {
                            (ICMP_DATA_AT, icmp::ECHO_REPLY)
                        } else {
                            (ICMP6_DATA_AT, icmp6::ECHO_REPLY)
                        };
                        let ok = self
                            .tx
                            .current
                            .as_ref()
                            .is_some_and(|b| len >= icmp::ECHO_HEADER_LEN && b[at] == reply);
                        if !ok {
                            self.drops.count(NatDrop::IcmpIgnored);
                            return;
                        }
                        let _ = self.ct.handle_icmp(h, now, Side::Remote, len);
                        self.icmp_to_container(net, remote.ip(), container, len);
                    }
                    None => {}
                }
            }
            SocketId::Published(p) => {
                let Some(client) = from else { return };
                self.published_datagram(now, p, client, len, segment);
            }
            SocketId::RawIcmp => self.raw_datagram(now, len),
            SocketId::RawIcmp6 => self.raw6_datagram(now, len, from),
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
        // An unreachable or time exceeded about one of the echo requests
        // sent here (a router's, or the host's own when a neighbour does
        // not answer).
        if let Some((id, why, from)) = echo_error(p) {
            return self.raw_error(now, id, why, Some(from));
        }
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
        let Some(flow) = flow.filter(|f| f.remote.ip() == IpAddr::V4(src)) else {
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
        self.icmp_to_container(net, IpAddr::V4(src), container, len);
    }

    /// An ICMPv6 message of `n` bytes read from the raw ICMPv6 socket
    /// (at [`ICMP6_DATA_AT`], no IP header), sent by `from`.
    fn raw6_datagram(&mut self, now: u64, n: usize, from: Option<SocketAddr>) {
        let unreachable = self
            .tx
            .current
            .as_ref()
            .and_then(|b| echo_error6(b.get(ICMP6_DATA_AT..ICMP6_DATA_AT + n)?));
        if let Some((id, why)) = unreachable {
            return self.raw_error(now, id, why, from.map(|a| a.ip()));
        }
        let parsed = self.tx.current.as_ref().and_then(|b| {
            let m = IcmpPacket::new_checked(b.get(ICMP6_DATA_AT..ICMP6_DATA_AT + n)?).ok()?;
            (m.msg_type() == icmp6::ECHO_REPLY).then_some(m.echo_ident())
        });
        let (Some(id), Some(from)) = (parsed, from) else {
            self.drops.count(NatDrop::IcmpIgnored);
            return;
        };
        let flow = self.raw_ids.get(&id).and_then(|&h| self.flow(h));
        let Some(flow) = flow.filter(|f| f.remote.ip() == from.ip() && from.is_ipv6()) else {
            self.drops.count(NatDrop::IcmpIgnored);
            return;
        };
        let (h, net, container) = (flow.handle, flow.network, flow.container);
        self.tx.lane = flow.lane;
        let _ = self.ct.handle_icmp(h, now, Side::Remote, n);
        self.icmp_to_container(net, from.ip(), container, n);
    }

    /// An ICMP error read on a raw ICMP socket about echo request `id`
    /// sent there, from `from`: to that flow's container
    /// ([`Gateway::datagram_error`]; unreachables from the gateway, time
    /// exceeded from the router that sent it).
    fn raw_error(&mut self, now: u64, id: u16, why: IcmpErr, from: Option<IpAddr>) {
        match self.raw_ids.get(&id).copied() {
            Some(h) if why == IcmpErr::TimeExceeded => {
                self.drops.count(NatDrop::TtlExceeded);
                self.datagram_error(now, h, why, from);
            }
            Some(h) => {
                self.drops.count(NatDrop::Unreachable);
                self.datagram_error(now, h, why, None);
            }
            None => self.drops.count(NatDrop::IcmpIgnored),
        }
    }

    fn published_datagram(
        &mut self,
        now: u64,
        p: u64,
        client: SocketAddr,
        n: usize,
        segment: Option<usize>,
    ) {
        let Some(&pb) = self.published.get(&p) else {
            self.drops.count(NatDrop::NoListener);
            return;
        };
        let network = pb.network;
        let Some(info) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return;
        };
        let (src, container) = inbound_addrs(&pb, &info, client);
        if container.is_ipv6() {
            // Read at the IPv4 offset (at most MAX_UDP_PAYLOAD): move it
            // behind IPv6's headers.
            if let Some(b) = self.tx.current.as_mut() {
                b.copy_within(UDP_DATA_AT..UDP_DATA_AT + n, UDP6_DATA_AT);
            }
        }
        self.tx.lane = None;
        let key = flow_key(
            Protocol::Udp,
            network,
            (container.ip(), container.port()),
            (src.ip(), src.port()),
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
                *h.slot_in(&mut self.flows) = Some(Flow {
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
        self.count_datagrams(h, now, Side::Remote, n, segment);
        self.udp_to_container(network, src, container, n, segment);
    }

    /// Counts `len` bytes of UDP on flow `h` from `side`: one datagram, or
    /// with `segment` datagrams of that size (the last may be shorter).
    fn count_datagrams(
        &mut self,
        h: FlowHandle,
        now: u64,
        side: Side,
        len: usize,
        segment: Option<usize>,
    ) {
        let mut left = len;
        loop {
            let n = segment.map_or(left, |s| s.min(left));
            let _ = self.ct.handle_udp(h, now, side, n);
            left -= n;
            if left == 0 {
                break;
            }
        }
    }

    /// Sends the lent buffer's `[UDP_DATA_AT..][..n]` (`UDP6_DATA_AT`
    /// for IPv6) as a UDP datagram from `from` to the container at `to`
    /// (partial checksum), or with `segment` (less than `n`, at most
    /// `u16::MAX`) as a super-frame of datagrams that long.
    fn udp_to_container(
        &mut self,
        net: NetworkId,
        from: SocketAddr,
        to: SocketAddr,
        n: usize,
        segment: Option<usize>,
    ) {
        let l3 = if to.is_ipv4() {
            ipv4::MIN_HEADER_LEN
        } else {
            ip6::HEADER_LEN
        };
        let headers = ethernet::HEADER_LEN + l3;
        let mut meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: headers as u16,
            csum_offset: udp::CHECKSUM_OFFSET as u16,
            ..Default::default()
        };
        // Datagrams read at once: one super-frame, cut by the receiving
        // kernel (each datagram gets the UDP header, its length and its
        // checksum; the partial checksum below covers the whole).
        // `handle_datagrams` passes a segment only when shorter than `n`.
        if let Some(s) = segment {
            meta.gso_type = vnet::GSO_UDP_L4;
            meta.gso_size = s as u16;
            meta.hdr_len = (headers + udp::HEADER_LEN) as u16;
        }
        self.emit(net, to.ip(), meta, |buf| {
            let len = l3 + udp::HEADER_LEN + n;
            let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
            let repr = UdpRepr {
                src_port: from.port(),
                dst_port: to.port(),
            };
            match (from.ip(), to.ip()) {
                (IpAddr::V4(f), IpAddr::V4(t)) => {
                    ipv4::emit_header(ip, f, t, ipv4::protocol::UDP, len - l3, 64);
                    let mut u = UdpPacket::new_unchecked(&mut ip[l3..]);
                    repr.emit(&mut u, n);
                    u.set_partial_checksum(f, t);
                }
                (IpAddr::V6(f), IpAddr::V6(t)) => {
                    ip6::emit_header(ip, f, t, ip6::next_header::UDP, len - l3, 64)?;
                    let m = &mut ip[l3..];
                    repr.emit(&mut UdpPacket::new_unchecked(&mut *m), n);
                    let ulen = udp::HEADER_LEN + n;
                    ip6::set_partial_checksum(
                        m,
                        udp::CHECKSUM_OFFSET,
                        f,
                        t,
                        ip6::next_header::UDP,
                        ulen,
                    );
                }
                _ => return None,
            }
            Some(len)
        });
    }

    /// Sends the echo reply at the lent buffer's `[ICMP_DATA_AT..][..n]`
    /// (`ICMP6_DATA_AT` for ICMPv6) to the container, with the
    /// container's identifier.
    fn icmp_to_container(&mut self, net: NetworkId, from: IpAddr, to: SocketAddr, n: usize) {
        self.emit(net, to.ip(), VnetHdr::default(), |buf| {
            match (from, to.ip()) {
                (IpAddr::V4(f), IpAddr::V4(t)) => {
                    let len = ipv4::MIN_HEADER_LEN + n;
                    let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
                    ipv4::emit_header(ip, f, t, ipv4::protocol::ICMP, n, 64);
                    let mut m = IcmpPacket::new_unchecked(&mut ip[ipv4::MIN_HEADER_LEN..]);
                    m.set_echo_ident(to.port());
                    m.fill_checksum();
                    Some(len)
                }
                (IpAddr::V6(f), IpAddr::V6(t)) => {
                    let len = ip6::HEADER_LEN + n;
                    let ip = buf.get_mut(HEADROOM..HEADROOM + len)?;
                    ip6::emit_header(ip, f, t, ip6::next_header::ICMPV6, n, 64)?;
                    let m = &mut ip[ip6::HEADER_LEN..];
                    IcmpPacket::new_unchecked(&mut *m).set_echo_ident(to.port());
                    ip6::fill_checksum(m, 2, f, t, ip6::next_header::ICMPV6, false);
                    Some(len)
                }
                _ => None,
            }
        });
    }

    /// A connection accepted on published TCP socket `id` from `client`:
    /// the flow whose socket the stream becomes ([`SocketId::Flow`];
    /// register it readable and writable), or `None` (refused, counted:
    /// close the stream).
    pub fn handle_accept(&mut self, now: u64, id: u64, client: SocketAddr) -> Option<FlowHandle> {
        let Some(&pb) = self.published.get(&id) else {
            self.drops.count(NatDrop::NoListener);
            return None;
        };
        let network = pb.network;
        let Some(info) = self.nets.get(&network).copied() else {
            self.drops.count(NatDrop::NoNetwork);
            return None;
        };
        let (src, container) = inbound_addrs(&pb, &info, client);
        let Some((gw, prefix)) = info.gateway_for(container.ip()) else {
            self.drops.count(NatDrop::NoIpv6);
            return None;
        };
        self.tx.lane = None;
        let key = flow_key(
            Protocol::Tcp,
            network,
            (container.ip(), container.port()),
            (src.ip(), src.port()),
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
        let Some(mut leg) = self.legs.connect(gw, prefix, src, container, now) else {
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
        *h.slot_in(&mut self.flows) = Some(Flow {
            handle: h,
            network,
            container,
            remote: src,
            io: Io::Tcp(TcpFlow::new(leg)),
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
            Io::Tcp(t) => {
                self.ops.push_back(SocketOp::Close {
                    flow: h,
                    reset: !t.container_eof,
                });
                self.legs.put(t.leg, t.relayed);
            }
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
    endpoints: &Endpoints,
    info: &NetInfo,
    network: NetworkId,
    container: SocketAddr,
    h: FlowHandle,
    now: u64,
) -> LegOut<'a> {
    // IP and TCP headers: 40 bytes (IPv4), 60 (IPv6).
    let (headers, min_mss) = if container.is_ipv4() {
        (40, 536)
    } else {
        (60, 1220)
    };
    LegOut {
        tx,
        drops,
        ct,
        h,
        now,
        ep: endpoints.get(network, container.ip()),
        gw: gateway_mac(info.gateway),
        mss: (info.mtu as usize).saturating_sub(headers).max(min_mss),
        scratch: false,
        starved: false,
    }
}

/// The key of a TCP or UDP flow of `network` between `container` and
/// `remote` (address, port).
fn flow_key(
    protocol: Protocol,
    network: NetworkId,
    container: (IpAddr, u16),
    remote: (IpAddr, u16),
) -> FlowKey {
    FlowKey {
        protocol,
        network,
        container_ip: container.0,
        container_port: container.1,
        remote_ip: remote.0,
        remote_port: remote.1,
    }
}

/// The transport of a packet for the NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
    /// ICMP, or ICMPv6.
    Icmp,
}

/// An IP header of either family, as the NAT reads it.
#[derive(Clone, Copy, Debug)]
struct IpHdr {
    src: IpAddr,
    dst: IpAddr,
    proto: L4,
    /// Offset of the transport header.
    ihl: usize,
    /// Packet length (as the header says, bounded by the buffer).
    total: usize,
    /// TTL (IPv4), hop limit (IPv6).
    ttl: u8,
}

/// Reads an IPv4 or IPv6 header (IPv6 without extension headers), or the
/// reason the NAT drops the packet.
fn parse_ip(ip: &[u8]) -> Result<IpHdr, NatDrop> {
    match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let p = Ipv4Packet::new_checked(ip).map_err(|_| NatDrop::Malformed)?;
            let proto = match p.protocol() {
                ipv4::protocol::TCP => L4::Tcp,
                ipv4::protocol::UDP => L4::Udp,
                ipv4::protocol::ICMP => L4::Icmp,
                _ => return Err(NatDrop::Protocol),
            };
            Ok(IpHdr {
                src: IpAddr::V4(p.src_addr()),
                dst: IpAddr::V4(p.dst_addr()),
                proto,
                ihl: p.header_len(),
                total: usize::from(p.total_len()).min(ip.len()),
                ttl: p.ttl(),
            })
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(ip).ok_or(NatDrop::Malformed)?;
            let proto = match p.next_header() {
                ip6::next_header::TCP => L4::Tcp,
                ip6::next_header::UDP => L4::Udp,
                ip6::next_header::ICMPV6 => L4::Icmp,
                ip6::next_header::FRAGMENT => return Err(NatDrop::IpFragment),
                _ => return Err(NatDrop::Protocol),
            };
            Ok(IpHdr {
                src: IpAddr::V6(p.src_addr()),
                dst: IpAddr::V6(p.dst_addr()),
                proto,
                ihl: ip6::HEADER_LEN,
                total: p.payload_range().end,
                ttl: p.hop_limit(),
            })
        }
        _ => Err(NatDrop::Malformed),
    }
}

/// Where a published port's connection or datagram from `client` goes:
/// (the source it has in the container, the container's address). An
/// IPv6 client (not IPv4-mapped) reaches the container's IPv6 address
/// when the port names one and the network has an IPv6 side; everything
/// else reaches its IPv4 address.
fn inbound_addrs(pb: &Pub, info: &NetInfo, client: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6_client = match client.ip() {
        IpAddr::V6(a) => a.to_ipv4_mapped().is_none(),
        IpAddr::V4(_) => false,
    };
    match (v6_client, pb.container6, info.v6) {
        (true, Some(c6), Some(v6)) => (
            SocketAddr::V6(source_for6(client, v6.gateway)),
            SocketAddr::V6(c6),
        ),
        _ => (
            SocketAddr::V4(source_for(client, info.gateway)),
            SocketAddr::V4(pb.container),
        ),
    }
}

/// The source address a published port's client gets inside the
/// container's IPv4 network: its own IPv4 address, or the gateway's for
/// loopback, IPv6 and unspecified clients (the port stays the client's).
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

/// An ICMP error the gateway sends a container: a destination
/// unreachable (why), or time exceeded in transit; either family's
/// types and codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IcmpErr {
    Net,
    Host,
    Port,
    Prohibited,
    /// Time (hop limit) exceeded in transit: a traceroute's probe.
    TimeExceeded,
}

/// If `packet` (IPv4, read from the raw ICMP socket) is an ICMP
/// destination unreachable or time exceeded quoting an echo request:
/// that request's identifier, the error, and who sent it.
fn echo_error(packet: &[u8]) -> Option<(u16, IcmpErr, IpAddr)> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let m = ip.payload();
    let why = match (*m.first()?, *m.get(1)?) {
        (icmp::TIME_EXCEEDED, 0) => IcmpErr::TimeExceeded,
        (icmp::DEST_UNREACHABLE, icmp::unreachable::NET | 6) => IcmpErr::Net,
        (icmp::DEST_UNREACHABLE, icmp::unreachable::PORT) => IcmpErr::Port,
        (icmp::DEST_UNREACHABLE, 9 | 10 | icmp::unreachable::PROHIBITED) => IcmpErr::Prohibited,
        (icmp::DEST_UNREACHABLE, _) => IcmpErr::Host,
        _ => return None,
    };
    let quoted = Ipv4Packet::new_checked(m.get(icmp::ECHO_HEADER_LEN..)?).ok()?;
    if quoted.protocol() != ipv4::protocol::ICMP {
        return None;
    }
    let echo = quoted.payload();
    if *echo.first()? != icmp::ECHO_REQUEST {
        return None;
    }
    let id = u16::from_be_bytes([*echo.get(4)?, *echo.get(5)?]);
    Some((id, why, IpAddr::V4(ip.src_addr())))
}

/// If `m` (an ICMPv6 message read from the raw ICMPv6 socket) is a
/// destination unreachable or time exceeded quoting an echo request:
/// that request's identifier and the error.
fn echo_error6(m: &[u8]) -> Option<(u16, IcmpErr)> {
    let why = match (*m.first()?, *m.get(1)?) {
        (icmp6::TIME_EXCEEDED, 0) => IcmpErr::TimeExceeded,
        (icmp6::DEST_UNREACHABLE, icmp6::unreachable::NO_ROUTE) => IcmpErr::Net,
        (icmp6::DEST_UNREACHABLE, icmp6::unreachable::PORT) => IcmpErr::Port,
        // Prohibited, beyond the source's scope, policy, reject route.
        (icmp6::DEST_UNREACHABLE, icmp6::unreachable::PROHIBITED | 2 | 5 | 6) => {
            IcmpErr::Prohibited
        }
        (icmp6::DEST_UNREACHABLE, _) => IcmpErr::Host,
        _ => return None,
    };
    let quoted = Ipv6Packet::new_checked(m.get(icmp::ECHO_HEADER_LEN..)?)?;
    if quoted.next_header() != ip6::next_header::ICMPV6 {
        return None;
    }
    let echo = m.get(icmp::ECHO_HEADER_LEN + ip6::HEADER_LEN..)?;
    if *echo.first()? != icmp6::ECHO_REQUEST {
        return None;
    }
    Some((u16::from_be_bytes([*echo.get(4)?, *echo.get(5)?]), why))
}

/// The ICMP unreachable a host socket's error stands for.
fn unreach_of(e: ConnectError) -> IcmpErr {
    match e {
        ConnectError::NetUnreachable => IcmpErr::Net,
        ConnectError::HostUnreachable | ConnectError::TimedOut => IcmpErr::Host,
        ConnectError::Refused => IcmpErr::Port,
    }
}

impl IcmpErr {
    fn type4(self) -> u8 {
        match self {
            IcmpErr::TimeExceeded => icmp::TIME_EXCEEDED,
            _ => icmp::DEST_UNREACHABLE,
        }
    }
    fn type6(self) -> u8 {
        match self {
            IcmpErr::TimeExceeded => icmp6::TIME_EXCEEDED,
            _ => icmp6::DEST_UNREACHABLE,
        }
    }
    fn code4(self) -> u8 {
        match self {
            IcmpErr::TimeExceeded => 0,
            IcmpErr::Net => icmp::unreachable::NET,
            IcmpErr::Host => icmp::unreachable::HOST,
            IcmpErr::Port => icmp::unreachable::PORT,
            IcmpErr::Prohibited => icmp::unreachable::PROHIBITED,
        }
    }
    fn code6(self) -> u8 {
        match self {
            IcmpErr::TimeExceeded => 0,
            IcmpErr::Net => icmp6::unreachable::NO_ROUTE,
            IcmpErr::Host => icmp6::unreachable::ADDRESS,
            IcmpErr::Port => icmp6::unreachable::PORT,
            IcmpErr::Prohibited => icmp6::unreachable::PROHIBITED,
        }
    }
}

/// The transport message of an IP packet of either family (IPv6 without
/// extension headers), as far as the buffer holds it.
fn l4_of(packet: &[u8]) -> Option<&[u8]> {
    let at = match packet.first()? >> 4 {
        4 => usize::from(packet[0] & 0x0f) * 4,
        6 => ip6::HEADER_LEN,
        _ => return None,
    };
    packet.get(at..)
}

/// The source address of an IP packet of either family.
fn ip_src(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Ipv4Packet::new_checked(packet)
            .ok()
            .map(|p| IpAddr::V4(p.src_addr())),
        6 => Ipv6Packet::new_checked(packet).map(|p| IpAddr::V6(p.src_addr())),
        _ => None,
    }
}

/// The source address a published port's IPv6 client gets inside the
/// container's IPv6 network: its own address, or the gateway's IPv6
/// address for loopback, link-local and unspecified clients (the port
/// stays the client's).
pub fn source_for6(client: SocketAddr, gateway: Ipv6Addr) -> SocketAddrV6 {
    match client.ip() {
        IpAddr::V6(a) if !a.is_loopback() && !a.is_unspecified() && !ip6::is_link_local(a) => {
            SocketAddrV6::new(a, client.port(), 0, 0)
        }
        _ => SocketAddrV6::new(gateway, client.port(), 0, 0),
    }
}

//! The NAT's I/O edge: the host sockets, driving the sans-IO gateway
//! ([`tapnet_nat::Gateway`]: policy, connection table, TCP legs, UDP/ICMP
//! relays, published ports, frame building). No netfilter, no privileges:
//! it is the daemon's own sockets that talk to the world.
//!
//! # Where it runs
//! By default in worker 0's loop: the NAT's epoll instance is nested in
//! the worker's, and the worker serves it after its ports in every turn
//! ([`Nat::work`], [`Nat::poll_sockets`]). Every frame the NAT builds
//! leaves through worker 0, so a multi-queue TAP's flow steering (the
//! kernel sends a flow's frames to the queue its replies were last written
//! on) brings the flow's next frames from the container to worker 0 too:
//! a connection's steps then run in one thread, with no hand-off and no
//! wake-up (connections per second through the NAT: about 0.5 -> 0.75 of
//! the kernel path on 2 CPUs, README, Performance). Only a flow's first
//! frames, and those of a flow idle past the kernel's steering entry
//! (3 s), may arrive at another worker and be handed over.
//! `tapnet daemon --nat-thread` runs it in a thread of its own instead
//! (the earlier layout, kept for comparison), sending each flow's frames
//! back through the worker that read its latest frame.
//!
//! # Hand-offs
//! Workers run [`NatHook`] behind the DNS hook: a frame the gateway's
//! [`tapnet_nat::classify`] gives to the NAT is claimed whole
//! ([`HookVerdict::Claimed`]); the worker then trades its receive buffer,
//! holding the frame, for an empty one from the pool
//! ([`GatewayHook::claim_buffer`]) and the full one is queued to the NAT
//! (no copy; a bounded queue: when it or the pool is empty the frame is
//! dropped and counted as `queue_full`, and the sender's TCP retransmits).
//! The NAT gives each buffer back to the worker that handed it over, and
//! a worker reuses the buffer given back last ([`HookPool`]): the next
//! read from the TAP lands in memory still in the CPU's cache (a pool
//! taken in turn, oldest first, wrote every read to memory last touched a
//! thousand frames earlier, and left all of the pool resident).
//! The NAT feeds frames and socket readiness to the gateway, performs the
//! socket operations it asks for, and hands the frames it builds for
//! containers to a worker through that worker's injection queue
//! ([`super::inject`]). They leave through the switch's egress stage like
//! every other frame (per-port tx counters, capture hooks), and their
//! buffers come back for reuse.
//!
//! # IPv6
//! IPv6 flows leave through the host's IPv6 sockets (TCP, UDP, and
//! `AF_INET6` ping sockets or, failing those, one raw ICMPv6 socket: the
//! same probe as for IPv4), so a container's IPv6 traffic is
//! masqueraded behind the host's own IPv6 addresses.

use super::inject::{InjectTx, Injected};
use super::{FlowRow, HostSocket, NetId, Published};
use crate::sys::udp;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapnet_nat::gateway::{BUFFER_LEN, FRAME_OFFSET};
use tapnet_nat::{
    Claim, ConnectError, DropCounts, FlowHandle, FlowView, FrameAction, Gateway, GatewayConfig,
    HostEvent, IcmpMode, NatDrop, NetInfo, SharedDrops, SocketId, SocketOp,
};
use tapnet_switch::wire::{vnet, VnetHdr};
use tapnet_switch::{GatewayHook, HookCx, HookVerdict, NetworkId, PortId};

/// Frames the workers may have queued for the NAT thread at once.
const QUEUE: usize = 1024;
/// Frame buffers towards containers, and each worker's injection queue.
pub(super) const INJECT_QUEUE: usize = 512;
/// Size of one queued frame's buffer: a worker's receive buffer (a 64 KiB
/// GSO frame, its virtio-net header and slack), so the two can be swapped.
pub(super) const FRAME_BUF: usize = 65536 + vnet::HEADER_LEN + 64;
const WAKER: Token = Token(usize::MAX);
const RAW_ICMP: Token = Token(usize::MAX - 1);
const RAW_ICMP6: Token = Token(usize::MAX - 2);
/// Tokens at and above this are published sockets; below, flows.
const PUB_BASE: usize = 1 << 62;
/// Frames taken from the queue before looking at sockets again.
const FRAME_BUDGET: usize = 256;

/// A frame a worker handed over: `buf[offset..][..len]` (the worker's
/// receive buffer, as the TAP filled it).
struct InFrame {
    buf: Box<[u8]>,
    offset: usize,
    len: usize,
    meta: VnetHdr,
    network: NetworkId,
    /// The port it came from (for captures of the NAT's drops).
    port: PortId,
    /// The worker that read it: the flow's frames go back through it.
    worker: u8,
}

/// Buffers one worker's hook may keep for itself (past this they go back
/// to the shared reserve, for the other workers).
const HOOK_KEEPS: usize = 128;

/// The empty buffers a worker's hook trades for the frames it claims.
/// Invariant: a buffer is in exactly one place: a worker's stack, its
/// return channel, the shared reserve, a queued frame, or a claim; with
/// those not yet allocated (`unmade`) they number [`QUEUE`]. A buffer is
/// allocated only when none is free, so an idle daemon holds none.
/// Reuse is last-in first-out: at every take the buffers the NAT gave back
/// since go on top of the stack, so a worker's reads cycle through as few
/// buffers as are in flight, and the one reused was touched last.
pub(super) struct HookPool {
    /// Most recently given back on top; at most [`HOOK_KEEPS`].
    stack: Vec<Box<[u8]>>,
    /// What the NAT gave back to this worker.
    returned: Receiver<Box<[u8]>>,
    /// The shared reserve (every worker takes from it when its own are
    /// all in flight).
    reserve: Receiver<Box<[u8]>>,
    reserve_tx: Sender<Box<[u8]>>,
    /// Buffers not allocated yet, shared by the workers.
    unmade: Arc<AtomicUsize>,
}

impl HookPool {
    fn take(&mut self) -> Option<Box<[u8]>> {
        while let Ok(b) = self.returned.try_recv() {
            self.put(b);
        }
        self.stack
            .pop()
            .or_else(|| self.reserve.try_recv().ok())
            .or_else(|| {
                self.unmade
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .ok()
                    .map(|_| vec![0u8; FRAME_BUF].into_boxed_slice())
            })
    }

    fn put(&mut self, b: Box<[u8]>) {
        if self.stack.len() < HOOK_KEEPS {
            self.stack.push(b);
        } else {
            let _ = self.reserve_tx.try_send(b);
        }
    }
}

/// Where the NAT gives frame buffers back: to the worker that handed each
/// over, else (that worker gone, or its channel full) to the reserve.
struct GiveBack {
    to_worker: Vec<Sender<Box<[u8]>>>,
    reserve: Sender<Box<[u8]>>,
}

impl GiveBack {
    fn give(&self, worker: u8, b: Box<[u8]>) {
        let b = match self.to_worker.get(usize::from(worker)) {
            Some(tx) => match tx.try_send(b) {
                Ok(()) => return,
                Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => b,
            },
            None => b,
        };
        let _ = self.reserve.try_send(b);
    }
}

/// The half of the hand-off a worker holds.
#[derive(Clone)]
pub(super) struct NatQueue {
    frames: Sender<InFrame>,
    waker: Arc<Waker>,
    sleeping: Arc<AtomicBool>,
    drops: Arc<SharedDrops>,
}

/// The empty buffer reserved for a claimed frame, its metadata, network,
/// port and length.
type Claimed = (Box<[u8]>, VnetHdr, NetworkId, PortId, usize);

/// The per-worker hook: hands frames for the outside to the NAT thread,
/// without copying them (see the module documentation).
pub(super) struct NatHook {
    q: NatQueue,
    pool: HookPool,
    /// This hook's worker (the lane of its frames).
    worker: u8,
    /// The empty buffer reserved for the claimed frame, and what the NAT
    /// thread needs to know about it.
    claim: Option<Claimed>,
    /// Frames handed to the NAT (this worker's `nat_frames` in `tapnet
    /// stats`; written here only).
    handed: Arc<AtomicU64>,
}

impl NatHook {
    pub(super) fn new(
        q: NatQueue,
        pool: HookPool,
        worker: usize,
        handed: Arc<AtomicU64>,
    ) -> NatHook {
        NatHook {
            q,
            pool,
            worker: worker.min(usize::from(u8::MAX)) as u8,
            claim: None,
            handed,
        }
    }
}

impl GatewayHook for NatHook {
    fn handle(
        &mut self,
        cx: &HookCx<'_>,
        meta: &VnetHdr,
        frame: &[u8],
        _scratch: &mut [u8],
    ) -> HookVerdict {
        match tapnet_nat::classify(cx.network, frame) {
            Claim::Pass => HookVerdict::Pass,
            Claim::Drop(nat, switch) => {
                self.q.drops.count(nat);
                HookVerdict::Drop(switch)
            }
            Claim::Nat => {
                let Some(empty) = self.pool.take() else {
                    self.q.drops.count(NatDrop::QueueFull);
                    return HookVerdict::Drop(tapnet_switch::DropReason::TxFull);
                };
                if let Some((old, ..)) = self.claim.take() {
                    // Not collected (a caller without hand_over): recycle.
                    self.pool.put(old);
                }
                self.claim = Some((empty, *meta, cx.network.id, cx.port.id, frame.len()));
                HookVerdict::Claimed
            }
        }
    }

    fn claim_buffer(&mut self, full: Box<[u8]>, offset: usize) -> Box<[u8]> {
        let Some((empty, meta, network, port, len)) = self.claim.take() else {
            return full;
        };
        let item = InFrame {
            buf: full,
            offset,
            len,
            meta,
            network,
            port,
            worker: self.worker,
        };
        match self.q.frames.try_send(item) {
            Ok(()) => {
                // One writer: a load and a store, no locked add.
                let n = self.handed.load(Ordering::Relaxed);
                self.handed.store(n + 1, Ordering::Relaxed);
                if self.q.sleeping.swap(false, Ordering::AcqRel) {
                    let _ = self.q.waker.wake();
                }
            }
            Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => {
                self.pool.put(f.buf);
                self.q.drops.count(NatDrop::QueueFull);
            }
        }
        empty
    }
}

/// Control messages to the NAT thread.
pub(super) enum NatCmd {
    Network(NetworkId, NetInfo),
    RemoveNetwork(NetworkId),
    Endpoint {
        network: NetworkId,
        ip: Ipv4Addr,
        /// Its IPv6 address on a dual-stack network.
        ip6: Option<Ipv6Addr>,
        mac: [u8; 6],
        port: u32,
    },
    RemoveEndpoint(u32),
    /// A published port; IPv6 clients reach the container's IPv6 address
    /// when given.
    Publish(NetworkId, Published, Option<Ipv6Addr>),
    /// Closes an owner's published sockets, then answers: the host ports
    /// are free once the caller has the answer.
    Unpublish(String, Sender<()>),
    List(Sender<Vec<(FlowView, Option<SocketAddr>)>>),
    Stats(Sender<serde_json::Value>),
    Stop,
}

/// The control plane's handle on the NAT thread.
#[derive(Clone)]
pub(super) struct NatHandle {
    cmds: Sender<NatCmd>,
    waker: Arc<Waker>,
    queue: NatQueue,
}

impl NatHandle {
    pub(super) fn send(&self, c: NatCmd) {
        let _ = self.cmds.send(c);
        let _ = self.waker.wake();
    }
    pub(super) fn queue(&self) -> NatQueue {
        self.queue.clone()
    }
    /// Closes `owner`'s published sockets and waits until they are closed.
    pub(super) fn unpublish(&self, owner: &str) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(NatCmd::Unpublish(owner.to_string(), tx));
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }

    pub(super) fn stats(&self) -> serde_json::Value {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(NatCmd::Stats(tx));
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or(serde_json::Value::Null)
    }

    pub(super) fn list(&self) -> Vec<(FlowView, Option<SocketAddr>)> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(NatCmd::List(tx));
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }
}

/// Makes the NAT; `inject[w]` is worker `w`'s injection queue. With
/// `own_thread` it runs in a thread of its own; otherwise the NAT is
/// returned for a worker to drive ([`Nat::work`], [`Nat::poll_sockets`]),
/// and `inject` should hold that worker's queue alone. Also returns the
/// buffer pools of the `workers` workers' hooks, by worker.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    capture: Arc<super::capture::Hub>,
    host_loopback: bool,
    conntrack: &super::ConntrackConfig,
    seed: u64,
    epoch: Instant,
    inject: Vec<InjectTx>,
    own_thread: bool,
    workers: usize,
) -> anyhow::Result<(NatHandle, Option<Nat>, Vec<HookPool>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (frames_tx, frames_rx) = crossbeam_channel::bounded(QUEUE);
    let (free_tx, free_rx) = crossbeam_channel::bounded(QUEUE);
    let unmade = Arc::new(AtomicUsize::new(QUEUE));
    let (to_worker, returned): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| crossbeam_channel::bounded(QUEUE))
        .unzip();
    let pools: Vec<HookPool> = returned
        .into_iter()
        .map(|returned| HookPool {
            stack: Vec::with_capacity(HOOK_KEEPS),
            returned,
            reserve: free_rx.clone(),
            reserve_tx: free_tx.clone(),
            unmade: unmade.clone(),
        })
        .collect();
    let (cmds_tx, cmds_rx) = crossbeam_channel::unbounded();
    let sleeping = Arc::new(AtomicBool::new(false));
    let drops = Arc::new(SharedDrops::default());
    let queue = NatQueue {
        frames: frames_tx,
        waker: waker.clone(),
        sleeping: sleeping.clone(),
        drops: drops.clone(),
    };
    let (icmp, raw_icmp) = probe_icmp();
    if let Some(s) = &raw_icmp {
        poll.registry().register(
            &mut mio::unix::SourceFd(&s.as_raw_fd()),
            RAW_ICMP,
            Interest::READABLE,
        )?;
    }
    let (icmp6, mut raw_icmp6) = probe_icmp6();
    if let Some(s) = &mut raw_icmp6 {
        poll.registry().register(s, RAW_ICMP6, Interest::READABLE)?;
    }
    let gw = Gateway::new(GatewayConfig {
        table: conntrack.table(seed),
        host_loopback,
        leg: tapnet_nat::leg::LegConfig {
            random_seed: seed,
            ..Default::default()
        },
        tx_buffers: INJECT_QUEUE,
        icmp,
        icmp6,
        release: Some(crate::sys::mem::give_back),
    });
    let slots = gw.conntrack().config().capacity as usize;
    let mut nat = Nat {
        poll,
        cmds: cmds_rx,
        frames: frames_rx,
        free: GiveBack {
            to_worker,
            reserve: free_tx,
        },
        sleeping,
        drops,
        gw,
        socks: Vec::with_capacity(slots),
        later: Vec::new(),
        runs: (0..RUNS).map(|_| UdpRun::new()).collect(),
        evict: 0,
        published: HashMap::new(),
        next_pub: 0,
        raw_icmp,
        raw_icmp6,
        raw_ttl: [0; 2],
        errq: nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6),
        gro: udp::coalesced_space(),
        spill: vec![0u8; 64 * 1024].into_boxed_slice(),
        inject,
        epoch,
        capture,
    };
    let handle = NatHandle {
        cmds: cmds_tx,
        waker,
        queue,
    };
    if !own_thread {
        return Ok((handle, Some(nat), pools));
    }
    std::thread::Builder::new()
        .name("tapnet-nat".into())
        .spawn(move || nat.run())?;
    Ok((handle, None, pools))
}

/// How echo requests can leave: unprivileged ping sockets (the group in
/// `net.ipv4.ping_group_range`), else one raw socket (root), else not.
fn probe_icmp() -> (IcmpMode, Option<socket2::Socket>) {
    let dgram = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM.cloexec(),
        Some(socket2::Protocol::ICMPV4),
    );
    if dgram.is_ok() {
        return (IcmpMode::PingSocket, None);
    }
    match socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW.nonblocking().cloexec(),
        Some(socket2::Protocol::ICMPV4),
    ) {
        Ok(s) => (IcmpMode::Raw, Some(s)),
        Err(_) => (IcmpMode::Unavailable, None),
    }
}

/// The same for ICMPv6 (`AF_INET6` ping sockets follow the same
/// `ping_group_range`); the raw ICMPv6 socket is a datagram socket whose
/// `recvfrom` names the sender, kept as a UDP socket for mio.
fn probe_icmp6() -> (IcmpMode, Option<UdpSocket>) {
    let dgram = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::DGRAM.cloexec(),
        Some(socket2::Protocol::ICMPV6),
    );
    if dgram.is_ok() {
        return (IcmpMode::PingSocket, None);
    }
    match socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::RAW.nonblocking().cloexec(),
        Some(socket2::Protocol::ICMPV6),
    ) {
        Ok(s) => {
            // Only echo replies: not every Neighbor Discovery message of
            // the host (without the filter they are read and counted as
            // icmp_ignored).
            use std::os::fd::AsFd;
            if let Err(e) =
                crate::sys::icmp6::pass_only(s.as_fd(), &[tapnet_nat::ip6::icmp6::ECHO_REPLY])
            {
                tracing::warn!("nat: raw ICMPv6 socket: no type filter: {e}");
            }
            (
                IcmpMode::Raw,
                Some(UdpSocket::from_std(std::net::UdpSocket::from(s))),
            )
        }
        Err(_) => (IcmpMode::Unavailable, None),
    }
}

/// A flow's host socket.
enum Sock {
    /// A TCP connect in progress.
    Connecting(TcpStream),
    Tcp(TcpStream),
    /// A connected UDP socket (`udp`) or a ping socket, the TTL (hop
    /// limit) last set on it (0: its own), and the socket's drop count
    /// last read ([`udp::Coalesced::drops`]).
    Dgram {
        s: UdpSocket,
        ttl: u8,
        seen: u32,
        udp: bool,
    },
}

/// Runs of a container's datagrams held at once ([`UdpRun`]): senders
/// that interleave flows (a resolver's queries, a relay's peers) get a run
/// each. At most this many 64 KiB buffers per NAT.
const RUNS: usize = 4;

/// Datagrams a container sent on one UDP flow (or through one published
/// UDP port to one address), in order (other flows' may come between),
/// with one TTL and one size, held while the run grows so that it leaves
/// as one `UDP_SEGMENT` message ([`Nat::send_gso`]): the host's stack takes the run in one
/// pass where the container's sender wrote the datagrams one by one (a
/// sender with `UDP_SEGMENT` of its own already arrives as one
/// super-frame). Invariants: every datagram but the last is `seg` bytes
/// (`seg` > 0), the last at most that; at most
/// [`udp::GSO_MAX_SEGS`] datagrams and [`udp::GSO_MAX_BYTES`] bytes; empty
/// outside [`Nat::work`]'s frames (sent before the timers and the
/// sockets' turn: nothing waits for a later frame that may never come).
struct UdpRun {
    /// Where the run goes: `None` while empty.
    via: Option<SocketId>,
    to: Option<SocketAddr>,
    ttl: Option<u8>,
    seg: usize,
    count: usize,
    /// The datagrams back to back; capacity [`udp::GSO_MAX_BYTES`], made
    /// when the slot is first used.
    buf: Vec<u8>,
}

impl UdpRun {
    fn new() -> UdpRun {
        UdpRun {
            via: None,
            to: None,
            ttl: None,
            seg: 0,
            count: 0,
            buf: Vec::new(),
        }
    }

    /// Whether `len` bytes to `via`, `to` with `ttl` extend the run.
    fn takes(&self, via: SocketId, len: usize, to: Option<SocketAddr>, ttl: Option<u8>) -> bool {
        self.via == Some(via)
            && self.to == to
            && self.ttl == ttl
            // The last datagram is full-sized: more may follow it.
            && self.buf.len() == self.seg * self.count
            && (1..=self.seg).contains(&len)
            && self.count < udp::GSO_MAX_SEGS
            && self.buf.len() + len <= udp::GSO_MAX_BYTES
    }
}

/// How [`Nat::read_run`] ended.
enum RunEnd {
    /// The socket may hold more.
    More,
    /// It is drained (`EAGAIN`).
    Drained,
    /// A read failed (after the run was handed over), with what the
    /// socket's error queue said.
    Failed(io::Error, Option<Queued>),
}

/// Host-socket work [`Nat::ops`] leaves for [`Nat::finish`].
enum Later {
    /// `shutdown(SHUT_WR)` of the flow's socket, if it still has one.
    ShutdownWrite(FlowHandle),
    /// A socket taken from its flow: dropped, reset first if `true`.
    Close(Sock, bool),
}

enum PubSock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

struct Pub {
    owner: String,
    sock: PubSock,
    /// A UDP socket's drop count last read ([`udp::Coalesced::drops`]).
    seen: u32,
}

/// The NAT's edge: its host sockets and the gateway, driven by its own
/// thread or by a worker.
pub(super) struct Nat {
    poll: Poll,
    cmds: Receiver<NatCmd>,
    frames: Receiver<InFrame>,
    free: GiveBack,
    sleeping: Arc<AtomicBool>,
    /// Drops counted by the workers' hooks.
    drops: Arc<SharedDrops>,
    gw: Gateway,
    /// By flow slot index: the socket and the flow it belongs to (grown
    /// by [`FlowHandle::slot_in`] within the connection table's capacity,
    /// reserved at construction).
    socks: Vec<Option<(FlowHandle, Sock)>>,
    /// Host-side ends of flows the gateway has finished with, in the order
    /// it asked: done by [`Nat::poll_sockets`], after the frames the same
    /// work built have left (a shutdown or a close of a loopback
    /// connection runs the peer's side of it inline, a few µs that would
    /// otherwise delay, say, the next connection's SYN-ACK). A closed
    /// flow's socket leaves its slot at once, so a new flow in the slot
    /// never meets it. Reused: no allocation once grown.
    later: Vec<Later>,
    /// The container's datagrams on their way to host sockets, a run per
    /// flow (or published port and client), [`RUNS`] at once.
    runs: Vec<UdpRun>,
    /// The run last sent to make room for another.
    evict: usize,
    published: HashMap<u64, Pub>,
    next_pub: u64,
    raw_icmp: Option<socket2::Socket>,
    raw_icmp6: Option<UdpSocket>,
    /// The TTL (hop limit) last set on the raw ICMP and ICMPv6 sockets
    /// (0: their own).
    raw_ttl: [u8; 2],
    /// Room for the control messages of a socket's error queue
    /// ([`drain_error_queue`]), made once.
    errq: Vec<u8>,
    /// Room for a coalesced read's control message
    /// ([`udp::recv_coalesced`]), made once.
    gro: Vec<u8>,
    /// Where a datagram read after the first of a run lands
    /// ([`Nat::read_run`]), 64 KiB, made once.
    spill: Box<[u8]>,
    inject: Vec<InjectTx>,
    epoch: Instant,
    /// Captures of drops see the frames the gateway dropped.
    capture: Arc<super::capture::Hub>,
}

fn token_of(h: FlowHandle) -> Token {
    Token(h.to_u64() as usize)
}

impl Nat {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The NAT thread's loop (`--nat-thread`).
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            if !self.work() {
                return;
            }
            let mut timeout = self.deadline();
            self.sleeping.store(true, Ordering::Release);
            if self.has_input() {
                timeout = Some(Duration::ZERO);
            }
            self.poll_sockets(&mut events, timeout);
            self.sleeping.store(false, Ordering::Release);
        }
    }

    /// Its epoll instance (to nest in a worker's).
    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        self.poll.as_raw_fd()
    }

    /// A timer is due, or buffers are awaited.
    pub(super) fn due(&self) -> bool {
        self.gw.waiting_for_buffers() || self.gw.poll_timeout().is_some_and(|t| t <= self.now())
    }

    /// The gateway has frames to build but no free buffer.
    pub(super) fn waiting_for_buffers(&self) -> bool {
        self.gw.waiting_for_buffers()
    }

    /// Commands and frames are waiting.
    pub(super) fn has_input(&self) -> bool {
        !self.frames.is_empty() || !self.cmds.is_empty() || !self.later.is_empty()
    }

    /// How long the NAT may sleep: until the gateway's next timer, or 1 ms
    /// while it waits for buffers (they come back without a wake-up).
    pub(super) fn deadline(&self) -> Option<Duration> {
        let now = self.now();
        let mut timeout = self
            .gw
            .poll_timeout()
            .map(|t| Duration::from_nanos(t.saturating_sub(now)));
        if self.gw.waiting_for_buffers() {
            timeout = Some(timeout.map_or(Duration::from_millis(1), |t| {
                t.min(Duration::from_millis(1))
            }));
        }
        timeout
    }

    /// The flag producers read before they wake the NAT (its waker, or in
    /// a worker, the worker's epoll through the NAT's).
    pub(super) fn sleeping(&self) -> &AtomicBool {
        &self.sleeping
    }

    /// The commands, up to [`FRAME_BUDGET`] queued frames and the timers,
    /// then the output. False once told to stop.
    pub(super) fn work(&mut self) -> bool {
        while let Ok(c) = self.cmds.try_recv() {
            if !self.command(c) {
                self.finish();
                return false;
            }
        }
        let mut budget = FRAME_BUDGET;
        while budget > 0 {
            let Ok(f) = self.frames.try_recv() else {
                break;
            };
            budget -= 1;
            self.frame(f);
        }
        self.flush_runs(None);
        self.gw.handle_timeout(self.now());
        self.output();
        true
    }

    /// Waits up to `timeout` for the host sockets' readiness and serves
    /// it. True when the events filled `events` (more may be ready: poll
    /// again). An epoll error panics (it stops the daemon).
    pub(super) fn poll_sockets(&mut self, events: &mut Events, timeout: Option<Duration>) -> bool {
        self.finish();
        if let Err(e) = self.poll.poll(events, timeout) {
            // As a worker's: the NAT does not end quietly on it.
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("nat: epoll failed: {e}");
            }
        }
        let now = self.now();
        let mut n = 0;
        for ev in events.iter() {
            n += 1;
            match ev.token() {
                WAKER => {}
                RAW_ICMP => self.read_datagrams(now, SocketId::RawIcmp),
                RAW_ICMP6 => self.read_datagrams(now, SocketId::RawIcmp6),
                Token(t) if t >= PUB_BASE => self.published_ready(now, (t - PUB_BASE) as u64),
                Token(t) => self.flow_ready(now, FlowHandle::from_u64(t as u64), ev.is_writable()),
            }
        }
        self.output();
        n >= events.capacity()
    }

    /// Socket ops, then frames to the workers, then buffers back.
    fn output(&mut self) {
        self.ops();
        for q in &self.inject {
            while let Some(b) = q.returned() {
                self.gw.recycle(b);
            }
        }
        // Recycling may have queued reads and relays.
        self.ops();
        while let Some(t) = self.gw.poll_transmit() {
            if let Err(t) = inject(&self.inject, t) {
                self.gw.count_drop(NatDrop::InjectFull);
                self.gw.recycle(t.buf);
            }
        }
    }

    fn frame(&mut self, mut f: InFrame) {
        let now = self.now();
        let end = f.offset.saturating_add(f.len);
        if let Some(frame) = f.buf.get_mut(f.offset..end) {
            // Only while a capture of drops runs: which reason (if any)
            // this frame was counted under.
            let before = self.capture.wants_drops().then(|| self.gw.drops().clone());
            let action = self
                .gw
                .handle_frame(now, f.network, f.worker, &f.meta, frame);
            self.ops();
            // A datagram the container sent fragmented is sent from the
            // buffer the gateway reassembled it in.
            let whole = match action {
                FrameAction::SendWhole { .. } => self.gw.take_whole(),
                _ => None,
            };
            if let Some(o) = action.outgoing(frame, whole.as_deref()) {
                match o.segment {
                    // While drops are captured, each frame's own send
                    // (a drop it meets is that frame's).
                    None if before.is_none() => self.send_datagram(o.via, o.data, o.to, o.ttl),
                    None => self.send(o.via, o.data, o.to, o.ttl),
                    // A USO super-frame: as one UDP_SEGMENT message, else
                    // its datagrams one by one.
                    Some(n) => {
                        self.flush_runs(Some(o.via));
                        if !self.send_gso(o.via, o.data, o.to, o.ttl, n) {
                            for d in o.data.chunks(n) {
                                self.send(o.via, d, o.to, o.ttl);
                            }
                        }
                    }
                }
            }
            if let Some(buf) = whole {
                self.gw.recycle_whole(buf);
            }
            // After the send: a host socket refusing it (host_send) is a
            // drop of this frame too.
            if let Some(before) = before {
                if let Some(r) = self.gw.drops().first_increase(&before) {
                    self.capture.nat_drop(f.port, &f.meta, frame, r);
                }
            }
        }
        self.free.give(f.worker, f.buf);
    }

    /// Sends a container's datagram (or echo request) as [`Nat::send`]
    /// does, or holds it in the [`UdpRun`] of its flow (or published port
    /// and client) that it starts or extends; a datagram its run does not
    /// take sends that run first. Runs of other flows wait: order holds
    /// within a flow, which is all UDP has.
    fn send_datagram(
        &mut self,
        via: SocketId,
        data: &[u8],
        to: Option<SocketAddr>,
        ttl: Option<u8>,
    ) {
        let mine = self
            .runs
            .iter()
            .position(|r| r.via == Some(via) && r.to == to);
        if let Some(i) = mine {
            if self.runs[i].takes(via, data.len(), to, ttl) {
                let r = &mut self.runs[i];
                r.buf.extend_from_slice(data);
                r.count += 1;
                return;
            }
            self.flush_run(i);
        }
        // A run needs a UDP socket, and room for two.
        let udp = match via {
            SocketId::Flow(h) => matches!(self.sock(h), Some(Sock::Dgram { udp: true, .. })),
            SocketId::Published(p) => self
                .published
                .get(&p)
                .is_some_and(|p| matches!(p.sock, PubSock::Udp(_))),
            _ => false,
        };
        if !udp || data.is_empty() || data.len() * 2 > udp::GSO_MAX_BYTES {
            return self.send(via, data, to, ttl);
        }
        // Its own slot, else a free one, else the next in turn, sent first.
        let i = match mine.or_else(|| self.runs.iter().position(|r| r.via.is_none())) {
            Some(i) => i,
            None => {
                self.evict = (self.evict + 1) % self.runs.len();
                self.flush_run(self.evict);
                self.evict
            }
        };
        let r = &mut self.runs[i];
        (r.via, r.to, r.ttl, r.seg, r.count) = (Some(via), to, ttl, data.len(), 1);
        // Made when first needed, then kept.
        r.buf.reserve_exact(udp::GSO_MAX_BYTES);
        r.buf.extend_from_slice(data);
    }

    /// Sends run `i`, if it holds one: one `UDP_SEGMENT` message, else
    /// its datagrams one by one (which counts what fails).
    fn flush_run(&mut self, i: usize) {
        let Some(via) = self.runs[i].via.take() else {
            return;
        };
        let mut buf = std::mem::take(&mut self.runs[i].buf);
        let UdpRun {
            to,
            ttl,
            seg,
            count,
            ..
        } = self.runs[i];
        if count == 1 || !self.send_gso(via, &buf, to, ttl, seg) {
            for d in buf.chunks(seg) {
                self.send(via, d, to, ttl);
            }
        }
        buf.clear();
        self.runs[i].buf = buf;
    }

    /// Sends the runs to `via` (all of them: `None`).
    fn flush_runs(&mut self, via: Option<SocketId>) {
        for i in 0..self.runs.len() {
            if via.is_none() || self.runs[i].via == via {
                self.flush_run(i);
            }
        }
    }

    /// Sends a container's datagram (or echo request) on a host socket,
    /// with TTL (hop limit) `ttl` when given (set on the socket when it
    /// differs from the last one set there).
    fn send(&mut self, via: SocketId, data: &[u8], to: Option<SocketAddr>, ttl: Option<u8>) {
        let r = match via {
            SocketId::Flow(h) => match self.sock(h) {
                Some(Sock::Dgram { s, ttl: last, .. }) => {
                    set_flow_ttl(s, last, ttl);
                    s.send(data)
                }
                // The socket's open failed (counted when reported).
                _ => return,
            },
            SocketId::Published(p) => match (self.published.get(&p).map(|p| &p.sock), to) {
                (Some(PubSock::Udp(u)), Some(to)) => u.send_to(data, to),
                _ => Err(io::ErrorKind::NotFound.into()),
            },
            SocketId::RawIcmp => match (&self.raw_icmp, to) {
                (Some(s), Some(to)) => {
                    set_ttl(s, &mut self.raw_ttl[0], ttl, false);
                    s.send_to(data, &to.into())
                }
                _ => Err(io::ErrorKind::NotFound.into()),
            },
            SocketId::RawIcmp6 => match (&self.raw_icmp6, to) {
                (Some(s), Some(to)) => {
                    set_ttl(s, &mut self.raw_ttl[1], ttl, true);
                    s.send_to(data, to)
                }
                _ => Err(io::ErrorKind::NotFound.into()),
            },
        };
        let Err(e) = r else { return };
        match (unreachable(&e), via) {
            // No route or no neighbour: ICMP back, as a router says it.
            (Some(why), SocketId::Flow(_)) => {
                let now = self.now();
                self.gw
                    .handle_socket_event(now, via, HostEvent::Unreachable { why, from: None });
            }
            _ => self.gw.count_drop(NatDrop::HostSend),
        }
    }

    /// Sends a USO super-frame's payload (datagrams of `n` bytes, the
    /// last one shorter) as one `UDP_SEGMENT` message on a UDP flow's or
    /// a published socket, so that the host's kernel (or its NIC) splits
    /// it: whether it went. `false`: not such a socket, one datagram, or
    /// refused (a segment longer than the route's MTU allows, more
    /// segments than the kernel takes, a full buffer): send them one by
    /// one, which also counts what fails.
    fn send_gso(
        &mut self,
        via: SocketId,
        data: &[u8],
        to: Option<SocketAddr>,
        ttl: Option<u8>,
        n: usize,
    ) -> bool {
        let Ok(seg) = u16::try_from(n) else {
            return false;
        };
        // One datagram, or more than the kernel takes at once.
        if data.len() <= n || data.len().div_ceil(n) > crate::sys::udp::GSO_MAX_SEGS {
            return false;
        }
        use std::os::fd::AsFd;
        let sent = match via {
            SocketId::Flow(h) => match self.sock(h) {
                Some(Sock::Dgram { s, ttl: last, .. }) => {
                    set_flow_ttl(s, last, ttl);
                    crate::sys::udp::send_segmented(s.as_fd(), data, None, seg)
                }
                _ => return false,
            },
            SocketId::Published(p) => match (self.published.get(&p).map(|p| &p.sock), to) {
                (Some(PubSock::Udp(u)), Some(to)) => {
                    crate::sys::udp::send_segmented(u.as_fd(), data, Some(to), seg)
                }
                _ => return false,
            },
            _ => return false,
        };
        sent.is_ok_and(|n| n == data.len())
    }

    fn sock(&mut self, h: FlowHandle) -> Option<&mut Sock> {
        match self.socks.get_mut(h.index() as usize) {
            Some(Some((owner, s))) if *owner == h => Some(s),
            _ => None,
        }
    }

    fn take_sock(&mut self, h: FlowHandle) -> Option<Sock> {
        let slot = self.socks.get_mut(h.index() as usize)?;
        if slot.as_ref().is_some_and(|(o, _)| *o == h) {
            return slot.take().map(|(_, s)| s);
        }
        None
    }

    fn put_sock(&mut self, h: FlowHandle, s: Sock) {
        if let Some((_, old)) = h.slot_in(&mut self.socks).replace((h, s)) {
            close(old, true);
        }
    }

    /// The shutdowns and closes [`Nat::ops`] left, in their order.
    fn finish(&mut self) {
        let mut later = std::mem::take(&mut self.later);
        for l in later.drain(..) {
            match l {
                Later::ShutdownWrite(h) => {
                    if let Some(Sock::Tcp(s)) = self.sock(h) {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                }
                Later::Close(s, reset) => close(s, reset),
            }
        }
        self.later = later;
    }

    fn ops(&mut self) {
        while let Some(op) = self.gw.poll_socket_op() {
            let now = self.now();
            match op {
                SocketOp::Connect { flow, to } => match connect_nonblocking(to) {
                    Ok(mut s) => {
                        let r = self.poll.registry().register(
                            &mut s,
                            token_of(flow),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                        match r {
                            // A connect to this host (the loopback above
                            // all) is done when connect() returns: answer
                            // the container now, not after a turn of epoll.
                            // One getpeername; a connect still under way
                            // waits for its event as before.
                            Ok(()) if s.peer_addr().is_ok() => self.connected(now, flow, s),
                            Ok(()) => self.put_sock(flow, Sock::Connecting(s)),
                            Err(_) => self.gw.handle_socket_event(
                                now,
                                SocketId::Flow(flow),
                                HostEvent::OpenFailed,
                            ),
                        }
                    }
                    // Failed at once (refused, no route, no socket): RST,
                    // as from the server.
                    Err(_) => self.gw.handle_socket_event(
                        now,
                        SocketId::Flow(flow),
                        HostEvent::ConnectFailed(ConnectError::Refused),
                    ),
                },
                SocketOp::OpenUdp { flow, to } => {
                    let s = udp_connected(to);
                    self.opened(now, flow, s, true);
                }
                SocketOp::OpenPing { flow, to } => {
                    let s = ping_socket(to);
                    self.opened(now, flow, s, false);
                }
                SocketOp::Relay(h) => {
                    let Nat {
                        socks,
                        gw,
                        inject: queues,
                        ..
                    } = self;
                    if let Some(Some((o, Sock::Tcp(s)))) = socks.get_mut(h.index() as usize) {
                        if *o == h {
                            gw.relay_tcp(now, h, s, &mut |t| inject(queues, t));
                        }
                    }
                }
                SocketOp::Read(id) => self.read_datagrams(now, id),
                SocketOp::ShutdownWrite(h) => self.later.push(Later::ShutdownWrite(h)),
                SocketOp::Close { flow, reset } => {
                    self.flush_runs(Some(SocketId::Flow(flow)));
                    if let Some(s) = self.take_sock(flow) {
                        self.later.push(Later::Close(s, reset));
                    }
                }
            }
        }
    }

    /// A datagram socket for `flow` was opened (or not).
    fn opened(&mut self, now: u64, flow: FlowHandle, s: io::Result<UdpSocket>, udp: bool) {
        let ok = s.and_then(|mut s| {
            self.poll
                .registry()
                .register(&mut s, token_of(flow), Interest::READABLE)?;
            Ok(s)
        });
        let ev = match ok {
            Ok(s) => {
                let d = Sock::Dgram {
                    s,
                    ttl: 0,
                    seen: 0,
                    udp,
                };
                return self.put_sock(flow, d);
            }
            // The connect found no route: ICMP back.
            Err(e) => match unreachable(&e) {
                Some(why) => HostEvent::OpenUnreachable(why),
                None => HostEvent::OpenFailed,
            },
        };
        self.gw.handle_socket_event(now, SocketId::Flow(flow), ev);
    }

    /// Readiness of a flow's socket.
    fn flow_ready(&mut self, now: u64, h: FlowHandle, writable: bool) {
        match self.sock(h) {
            Some(Sock::Connecting(_)) => self.connect_done(now, h),
            Some(Sock::Tcp(_)) => {
                let ev = if writable {
                    HostEvent::Writable
                } else {
                    HostEvent::Readable
                };
                self.gw.handle_socket_event(now, SocketId::Flow(h), ev);
            }
            Some(Sock::Dgram { .. }) => self.read_datagrams(now, SocketId::Flow(h)),
            None => {}
        }
    }

    fn connect_done(&mut self, now: u64, h: FlowHandle) {
        let Some(Sock::Connecting(s)) = self.sock(h) else {
            return;
        };
        let err = match s.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match s.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        let Some(Sock::Connecting(s)) = self.take_sock(h) else {
            return;
        };
        match err {
            None => self.connected(now, h, s),
            Some(e) => {
                close(Sock::Connecting(s), false);
                let why = match e.raw_os_error() {
                    Some(libc::ETIMEDOUT) => ConnectError::TimedOut,
                    _ => unreachable(&e).unwrap_or(ConnectError::Refused),
                };
                self.gw
                    .handle_socket_event(now, SocketId::Flow(h), HostEvent::ConnectFailed(why));
            }
        }
    }

    /// `h`'s host connection `s` is established.
    fn connected(&mut self, now: u64, h: FlowHandle, s: TcpStream) {
        let _ = s.set_nodelay(true);
        self.put_sock(h, Sock::Tcp(s));
        self.gw
            .handle_socket_event(now, SocketId::Flow(h), HostEvent::Connected);
    }

    /// Reads datagrams from `id` into the gateway's buffers until the
    /// socket is drained (or no buffer is free: the gateway asks again).
    fn read_datagrams(&mut self, now: u64, id: SocketId) {
        loop {
            // What the flow socket's error queue said, if it failed.
            let mut queued = None;
            // Whether a single datagram read may start a run (see
            // `read_run`): a UDP flow's or a published socket, where the
            // TAPs take the super-frame it becomes.
            let mut runs_in = false;
            let Nat {
                gw,
                socks,
                published,
                raw_icmp,
                raw_icmp6,
                errq,
                gro,
                ..
            } = self;
            // The flows' UDP sockets and the published ones read runs of
            // datagrams at once (`UDP_GRO`): `segment` says so.
            let r: io::Result<(usize, Option<SocketAddr>, Option<usize>)> = match id {
                SocketId::Flow(_) | SocketId::Published(_) => {
                    let Some((s, seen, udp)) = udp_socket(socks, published, id) else {
                        return;
                    };
                    let flow = matches!(id, SocketId::Flow(_));
                    runs_in = udp && udp::taps_take_uso();
                    let Some(buf) = gw.recv_buffer(id) else {
                        return;
                    };
                    let r = udp::recv_coalesced(s.as_fd(), buf, gro);
                    if flow
                        && r.as_ref()
                            .is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock)
                    {
                        queued = drain_error_queue(s, errq);
                    }
                    match counted(gw, seen, r) {
                        None => continue,
                        // A flow's socket is connected: its remote is known.
                        Some(Ok(c)) if flow => Ok((c.len, None, c.segment)),
                        Some(Ok(c)) if c.from.is_none() => {
                            gw.count_drop(NatDrop::HostRecv);
                            continue;
                        }
                        Some(r) => r.map(|c| (c.len, c.from, c.segment)),
                    }
                }
                SocketId::RawIcmp => {
                    let Some(s) = raw_icmp.as_ref() else { return };
                    let Some(buf) = gw.recv_buffer(id) else {
                        return;
                    };
                    let mut s: &socket2::Socket = s;
                    s.read(buf).map(|n| (n, None, None))
                }
                SocketId::RawIcmp6 => {
                    let Some(s) = raw_icmp6.as_ref() else { return };
                    let Some(buf) = gw.recv_buffer(id) else {
                        return;
                    };
                    s.recv_from(buf).map(|(n, a)| (n, Some(a), None))
                }
            };
            match r {
                // A single datagram: those queued behind it may join it.
                Ok((n, from, None)) if runs_in && n > 0 => match self.read_run(now, id, n, from) {
                    RunEnd::More => {}
                    RunEnd::Drained => return,
                    RunEnd::Failed(e, q) => {
                        if !self.read_failed(now, id, e, q) {
                            return;
                        }
                    }
                },
                Ok((n, from, segment)) => gw.handle_datagrams(now, id, n, from, segment),
                Err(e) => {
                    if !self.read_failed(now, id, e, queued) {
                        return;
                    }
                }
            }
        }
    }

    /// A read of `id` failed with `e` (`queued`: what the socket's error
    /// queue said): whether to read on.
    fn read_failed(
        &mut self,
        now: u64,
        id: SocketId,
        e: io::Error,
        queued: Option<Queued>,
    ) -> bool {
        let gw = &mut self.gw;
        match e {
            e if e.kind() == io::ErrorKind::WouldBlock => return false,
            e if e.kind() == io::ErrorKind::Interrupted => {}
            e if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                gw.handle_socket_event(now, id, HostEvent::PortUnreachable)
            }
            e => match (unreachable(&e), id, queued) {
                // A traceroute's probe: from the router that said so.
                (_, SocketId::Flow(_), Some(Queued::TimeExceeded(from))) => {
                    gw.handle_socket_event(now, id, HostEvent::TimeExceeded { from })
                }
                (Some(why), SocketId::Flow(_), q) => {
                    let from = match q {
                        Some(Queued::Unreachable(a)) => a,
                        _ => None,
                    };
                    gw.handle_socket_event(now, id, HostEvent::Unreachable { why, from })
                }
                _ => {
                    gw.count_drop(NatDrop::HostRecv);
                    return false;
                }
            },
        }
        true
    }

    /// After a single datagram of `first` bytes (from `from`) read from
    /// UDP socket `id` into the gateway's lent buffer: reads the datagrams
    /// queued behind it and, while they are from the same sender and of
    /// its size (a shorter one ends the run), appends them, so that the
    /// run reaches the container as one USO super-frame (as a run the
    /// kernel kept whole with `UDP_GRO` does). The host's loopback and
    /// veths never coalesce single datagrams; this does it where they
    /// are already queued, so nothing waits for one to come. A datagram
    /// that does not join goes on its own after the run. A next datagram
    /// is only read while a second buffer is free for it.
    fn read_run(
        &mut self,
        now: u64,
        id: SocketId,
        first: usize,
        from: Option<SocketAddr>,
    ) -> RunEnd {
        let seg = first;
        let (mut len, mut count) = (first, 1);
        let mut end = RunEnd::More;
        let mut other = None;
        while count < udp::GSO_MAX_SEGS && self.gw.free_buffers() >= 2 {
            let Nat {
                gw,
                socks,
                published,
                gro,
                errq,
                spill,
                ..
            } = self;
            let Some((s, seen, true)) = udp_socket(socks, published, id) else {
                break;
            };
            let r = udp::recv_coalesced(s.as_fd(), spill, gro);
            let c = match counted(gw, seen, r) {
                None => continue,
                Some(Ok(c)) => c,
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    end = RunEnd::Drained;
                    break;
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Some(Err(e)) => {
                    let q = match id {
                        SocketId::Flow(_) => drain_error_queue(s, errq),
                        _ => None,
                    };
                    end = RunEnd::Failed(e, q);
                    break;
                }
            };
            // (A flow's socket is connected: one sender.)
            let same = matches!(id, SocketId::Flow(_)) || c.from == from;
            let joins = same && c.segment.is_none() && (1..=seg).contains(&c.len);
            let room = joins
                .then(|| gw.recv_buffer(id)?.get_mut(len..len + c.len))
                .flatten();
            match room {
                Some(room) => {
                    room.copy_from_slice(&spill[..c.len]);
                    len += c.len;
                    count += 1;
                    if c.len < seg {
                        break;
                    }
                }
                None => {
                    other = Some(c);
                    break;
                }
            }
        }
        let gw = &mut self.gw;
        gw.handle_datagrams(now, id, len, from, (count > 1).then_some(seg));
        if let Some(c) = other {
            // The buffer checked free above.
            match gw.recv_buffer(id).and_then(|b| b.get_mut(..c.len)) {
                Some(buf) => {
                    buf.copy_from_slice(&self.spill[..c.len]);
                    gw.handle_datagrams(now, id, c.len, c.from, c.segment);
                }
                None => gw.count_drop(NatDrop::HostRecv),
            }
        }
        end
    }

    fn command(&mut self, c: NatCmd) -> bool {
        match c {
            NatCmd::Network(id, info) => self.gw.set_network(id, info),
            NatCmd::RemoveNetwork(id) => self.gw.remove_network(id),
            NatCmd::Endpoint {
                network,
                ip,
                ip6,
                mac,
                port,
            } => self.gw.add_endpoint(network, ip, ip6, mac, PortId(port)),
            NatCmd::RemoveEndpoint(port) => {
                self.gw.remove_endpoint(PortId(port));
                self.ops();
            }
            NatCmd::Publish(network, p, ip6) => self.publish(network, p, ip6),
            NatCmd::Unpublish(owner, done) => {
                let ids: Vec<u64> = self
                    .published
                    .iter()
                    .filter(|(_, p)| p.owner == owner)
                    .map(|(t, _)| *t)
                    .collect();
                for id in ids {
                    self.gw.unpublish(id);
                    if let Some(mut p) = self.published.remove(&id) {
                        let _ = match &mut p.sock {
                            PubSock::Tcp(l) => self.poll.registry().deregister(l),
                            PubSock::Udp(u) => self.poll.registry().deregister(u),
                        };
                    }
                }
                let _ = done.send(());
            }
            NatCmd::List(reply) => {
                let rows = self
                    .gw
                    .flows()
                    .map(|(v, s)| {
                        let addr = s.and_then(|s| match s {
                            SocketId::Flow(h) => match self.socks.get(h.index() as usize) {
                                Some(Some((o, s))) if *o == h => match s {
                                    Sock::Connecting(t) | Sock::Tcp(t) => t.local_addr().ok(),
                                    Sock::Dgram { s: u, .. } => u.local_addr().ok(),
                                },
                                _ => None,
                            },
                            SocketId::Published(p) => {
                                match self.published.get(&p).map(|p| &p.sock) {
                                    Some(PubSock::Udp(u)) => u.local_addr().ok(),
                                    _ => None,
                                }
                            }
                            SocketId::RawIcmp | SocketId::RawIcmp6 => None,
                        });
                        (v, addr)
                    })
                    .collect();
                let _ = reply.send(rows);
            }
            NatCmd::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            NatCmd::Stop => return false,
        }
        true
    }

    /// The table's gauges and counters and the NAT's drop counters
    /// (`tapnet conntrack stats`): `drops` keeps the earlier grouped keys,
    /// `drop_reasons` has one counter per reason.
    fn stats(&self) -> serde_json::Value {
        use serde_json::json;
        let ct = self.gw.conntrack();
        let c = ct.counters();
        let g = ct.gauges();
        let cfg = ct.config();
        let by_proto = |v: &[u32; 3]| json!({"tcp": v[0], "udp": v[1], "icmp": v[2]});
        let by_state = |v: &mut dyn Iterator<Item = u64>| -> serde_json::Value {
            tapnet_nat::FlowState::NAMES
                .iter()
                .zip(v)
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let states = by_state(&mut g.by_state.iter().map(|&v| u64::from(v)));
        let expired = by_state(&mut c.expired.iter().copied());
        let mut d: DropCounts = self.drops.snapshot();
        d.add(self.gw.drops());
        let sum = |rs: &[NatDrop]| rs.iter().map(|r| d.get(*r)).sum::<u64>();
        let reasons: serde_json::Map<_, _> =
            d.iter().map(|(n, v)| (n.to_string(), json!(v))).collect();
        let rel = self.gw.ring_releases();
        json!({
            "flows": g.flows,
            "max": cfg.capacity,
            "max_per_container": cfg.max_per_container,
            "flows_by_protocol": by_proto(&g.by_protocol),
            "flows_by_state": states,
            "created": {"tcp": c.created[0], "udp": c.created[1], "icmp": c.created[2]},
            "created_inbound": c.created_inbound,
            "refused_table_full": c.refused_table_full,
            "refused_container_limit": c.refused_container_limit,
            "evicted_closed": c.evicted_closed,
            "expired": expired,
            "removed": c.removed,
            "tcp_established": c.tcp_established,
            "tcp_reset": c.tcp_reset,
            "replied": c.replied,
            "drops": {
                "queue_full": sum(&[NatDrop::QueueFull]),
                "blocked": sum(&[NatDrop::Internal, NatDrop::MasqueradeOff, NatDrop::OtherNetwork, NatDrop::HostLoopbackOff, NatDrop::V6Unroutable]),
                "no_endpoint": sum(&[NatDrop::NoEndpoint]),
                "tx_error": sum(&[NatDrop::NoBuffer, NatDrop::InjectFull]),
                "unsupported": sum(&[NatDrop::UdpGso, NatDrop::IcmpNotEcho, NatDrop::Malformed, NatDrop::NoPingSocket, NatDrop::NoIpv6]),
                "limit": sum(&[NatDrop::TableFull, NatDrop::ContainerLimit]),
                "host_socket_error": sum(&[NatDrop::SocketOpen, NatDrop::HostSend, NatDrop::HostRecv, NatDrop::Unreachable]),
            },
            "drop_reasons": reasons,
            "rings_released": {"rings": rel.rings, "bytes": rel.bytes},
        })
    }

    fn publish(&mut self, network: NetworkId, p: Published, container_ip6: Option<Ipv6Addr>) {
        let id = self.next_pub;
        self.next_pub += 1;
        let t = Token(PUB_BASE + id as usize);
        let reg = self.poll.registry();
        let registered = |s: &mut dyn mio::event::Source| {
            s.register(reg, t, Interest::READABLE)
                .map_err(|e| tracing::error!("nat: register published socket: {e}"))
                .is_ok()
        };
        let sock = match p.socket {
            HostSocket::Tcp(l) => {
                let _ = l.set_nonblocking(true);
                let mut l = TcpListener::from_std(l);
                if !registered(&mut l) {
                    return;
                }
                PubSock::Tcp(l)
            }
            HostSocket::Udp(u) => {
                let _ = u.set_nonblocking(true);
                let _ = udp::set_receive_options(u.as_fd(), udp::taps_take_uso());
                let mut u = UdpSocket::from_std(u);
                if !registered(&mut u) {
                    return;
                }
                PubSock::Udp(u)
            }
        };
        self.gw.publish(
            id,
            network,
            SocketAddrV4::new(p.container_ip, p.container_port),
            container_ip6,
        );
        self.published.insert(
            id,
            Pub {
                owner: p.owner,
                sock,
                seen: 0,
            },
        );
        // Connections may already be waiting (a restart re-publishes).
        let now = self.now();
        self.published_ready(now, id);
    }

    fn published_ready(&mut self, now: u64, id: u64) {
        match self.published.get(&id).map(|p| &p.sock) {
            Some(PubSock::Tcp(_)) => {}
            Some(PubSock::Udp(_)) => return self.read_datagrams(now, SocketId::Published(id)),
            None => return,
        }
        loop {
            let Some(Pub {
                sock: PubSock::Tcp(l),
                ..
            }) = self.published.get(&id)
            else {
                return;
            };
            let (mut stream, client) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.gw.count_drop(NatDrop::Accept);
                    return;
                }
            };
            // Refused (counted by the gateway): the stream closes.
            let Some(h) = self.gw.handle_accept(now, id, client) else {
                continue;
            };
            let r = self.poll.registry().register(
                &mut stream,
                token_of(h),
                Interest::READABLE | Interest::WRITABLE,
            );
            match r {
                Ok(()) => {
                    let _ = stream.set_nodelay(true);
                    self.put_sock(h, Sock::Tcp(stream));
                }
                Err(_) => {
                    self.gw
                        .handle_socket_event(now, SocketId::Flow(h), HostEvent::OpenFailed)
                }
            }
        }
    }
}

/// Hands a frame to a worker: the one that read the flow's frames (the
/// queue the kernel steers the flow to: no other worker wakes up, and the
/// flow's frames stay in order), or by port for a flow the container has
/// not sent on yet. A full queue gives the frame back.
fn inject(queues: &[InjectTx], t: tapnet_nat::Transmit) -> Result<(), tapnet_nat::Transmit> {
    let n = queues.len().max(1);
    let w = t.lane.map_or(t.port.0 as usize, usize::from) % n;
    let Some(q) = queues.get(w) else {
        return Err(t);
    };
    let lane = t.lane;
    let f = Injected {
        port: t.port,
        meta: t.meta,
        buf: t.buf,
        start: FRAME_OFFSET,
        len: t.len,
    };
    q.send(f).map_err(|f| tapnet_nat::Transmit {
        port: f.port,
        meta: f.meta,
        buf: f.buf,
        len: f.len,
        lane,
    })
}

/// Closes a flow's socket; `reset`: a TCP stream is closed with RST
/// (linger 0). Closing the descriptor takes it out of the epoll set (no
/// socket is ever duplicated), so there is no `epoll_ctl` per flow; an
/// event of it already fetched finds its slot empty or a newer flow's
/// handle, and is ignored ([`Nat::sock`] matches the whole handle).
fn close(s: Sock, reset: bool) {
    if let (Sock::Tcp(t), true) = (&s, reset) {
        let _ = socket2::SockRef::from(t).set_linger(Some(Duration::ZERO));
    }
    drop(s);
}

fn connect_nonblocking(dest: SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(dest),
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    match s.connect(&dest.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(s)))
}

/// The unreachability a socket error reports (ENETUNREACH,
/// EHOSTUNREACH), if it is one.
fn unreachable(e: &io::Error) -> Option<ConnectError> {
    match e.raw_os_error() {
        Some(libc::ENETUNREACH) => Some(ConnectError::NetUnreachable),
        Some(libc::EHOSTUNREACH) => Some(ConnectError::HostUnreachable),
        _ => None,
    }
}

/// A non-blocking UDP socket of `dest`'s family connected to it.
fn udp_connected(dest: SocketAddr) -> io::Result<UdpSocket> {
    let any = match dest {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    recv_errors(&s, dest.is_ipv6())?;
    // Runs of datagrams as one read, then one frame (where the TAPs take
    // it; otherwise, or without UDP_GRO, one by one), and drops counted.
    let _ = udp::set_receive_options(s.as_fd(), udp::taps_take_uso());
    s.connect(dest)?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s))
}

/// Empties a datagram socket's error queue: with `IP_RECVERR` the kernel
/// keeps a copy of each ICMP error there, besides the errno a receive
/// returns (which is what the NAT passes on for unreachables). At most 64
/// entries a call, `space` (room for one entry's control messages) made
/// by the caller once. Returns the last ICMP error among them: a time
/// exceeded and the router that sent it (where a traceroute's probe
/// expired), or another (an unreachable) and the router that sent it
/// unless that is this host.
fn drain_error_queue(s: &impl AsRawFd, space: &mut Vec<u8>) -> Option<Queued> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    const ICMP_TIME_EXCEEDED: u8 = 11;
    const ICMP6_TIME_EXCEEDED: u8 = 3;
    let mut buf = [0u8; 64];
    let mut last = None;
    // The host's own address on this socket's route: an error from it
    // (a neighbour that does not answer) is the gateway's to report.
    let local = nix::sys::socket::getsockname::<SockaddrStorage>(s.as_raw_fd())
        .ok()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v| IpAddr::V4(v.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())))
        });
    let entry = |time_exceeded: bool, from: IpAddr| {
        if time_exceeded {
            Queued::TimeExceeded(from)
        } else {
            Queued::Unreachable((Some(from) != local).then_some(from))
        }
    };
    for _ in 0..64 {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let Ok(msg) = recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, Some(&mut *space), flags)
        else {
            break;
        };
        let Ok(cmsgs) = msg.cmsgs() else { continue };
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4RecvErr(e, Some(from))
                    if e.ee_origin == libc::SO_EE_ORIGIN_ICMP =>
                {
                    let a = IpAddr::V4(Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)));
                    last = Some(entry(e.ee_type == ICMP_TIME_EXCEEDED, a));
                }
                ControlMessageOwned::Ipv6RecvErr(e, Some(from))
                    if e.ee_origin == libc::SO_EE_ORIGIN_ICMP6 =>
                {
                    let a = IpAddr::V6(Ipv6Addr::from(from.sin6_addr.s6_addr));
                    last = Some(entry(e.ee_type == ICMP6_TIME_EXCEEDED, a));
                }
                _ => {}
            }
        }
    }
    last
}

/// The datagram socket `id` names, a flow's (UDP or ping) or a published
/// UDP port's, with the drop count last read from it and whether it is a
/// UDP socket (not a ping socket).
fn udp_socket<'a>(
    socks: &'a mut [Option<(FlowHandle, Sock)>],
    published: &'a mut HashMap<u64, Pub>,
    id: SocketId,
) -> Option<(&'a UdpSocket, &'a mut u32, bool)> {
    match id {
        SocketId::Flow(h) => match socks.get_mut(h.index() as usize)?.as_mut()? {
            (o, Sock::Dgram { s, seen, udp, .. }) if *o == h => Some((&*s, seen, *udp)),
            _ => None,
        },
        SocketId::Published(p) => match published.get_mut(&p)? {
            Pub {
                sock: PubSock::Udp(u),
                seen,
                ..
            } => Some((&*u, seen, true)),
            _ => None,
        },
        _ => None,
    }
}

/// The bookkeeping of a read from one of the NAT's UDP sockets, whose
/// drop count was `seen` at its last read: the drops since, counted as
/// `host_rcvbuf`; a read cut short, counted as `host_recv` and `None`
/// (skip it); otherwise the read.
fn counted(
    gw: &mut Gateway,
    seen: &mut u32,
    r: io::Result<udp::Coalesced>,
) -> Option<io::Result<udp::Coalesced>> {
    if let Ok(c) = &r {
        gw.count_drops(
            NatDrop::HostRcvbuf,
            u64::from(udp::new_drops(seen, c.drops)),
        );
        if c.truncated {
            gw.count_drop(NatDrop::HostRecv);
            return None;
        }
    }
    Some(r)
}

/// An ICMP error found in a socket's error queue ([`drain_error_queue`]).
#[derive(Clone, Copy)]
enum Queued {
    TimeExceeded(IpAddr),
    /// The router beyond this host that sent it, if one did.
    Unreachable(Option<IpAddr>),
}

/// [`set_ttl`] on a flow's datagram socket, whose family its address
/// tells (asked only when the TTL changes: one system call per flow in
/// the usual case, not per datagram).
fn set_flow_ttl(s: &UdpSocket, last: &mut u8, ttl: Option<u8>) {
    if ttl.is_some_and(|t| t != *last) {
        let ipv6 = s.local_addr().is_ok_and(|a| a.is_ipv6());
        set_ttl(s, last, ttl, ipv6);
    }
}

/// Sets `s`'s TTL (`IP_TTL`; `IPV6_UNICAST_HOPS` when `ipv6`) to `ttl`
/// unless `last` says it is already; a failure leaves the socket's own.
fn set_ttl(s: &impl std::os::fd::AsFd, last: &mut u8, ttl: Option<u8>, ipv6: bool) {
    use nix::sys::socket::{setsockopt, sockopt};
    let Some(t) = ttl.filter(|&t| t != *last) else {
        return;
    };
    let r = if ipv6 {
        setsockopt(s, sockopt::Ipv6Ttl, &i32::from(t))
    } else {
        setsockopt(s, sockopt::Ipv4Ttl, &i32::from(t))
    };
    if r.is_ok() {
        *last = t;
    }
}

/// An unprivileged ICMP (ICMPv6 for an IPv6 `dst`) echo socket connected
/// to `dst` (needs the group in `net.ipv4.ping_group_range`, which
/// governs both families).
fn ping_socket(dst: IpAddr) -> io::Result<UdpSocket> {
    let (domain, protocol) = match dst {
        IpAddr::V4(_) => (socket2::Domain::IPV4, socket2::Protocol::ICMPV4),
        IpAddr::V6(_) => (socket2::Domain::IPV6, socket2::Protocol::ICMPV6),
    };
    let s = socket2::Socket::new(
        domain,
        socket2::Type::DGRAM.nonblocking().cloexec(),
        Some(protocol),
    )?;
    recv_errors(&s, dst.is_ipv6())?;
    s.connect(&SocketAddr::new(dst, 0).into())?;
    Ok(UdpSocket::from_std(std::net::UdpSocket::from(s)))
}

/// Asks for the errors Linux otherwise keeps from a datagram socket: an
/// ICMP net or host unreachable (a router's, or a neighbour that does
/// not answer) reaches a socket without `IP_RECVERR` (`IPV6_RECVERR`)
/// only if fatal. Its copies in the error queue: [`drain_error_queue`].
fn recv_errors(s: &impl std::os::fd::AsFd, ipv6: bool) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    if ipv6 {
        setsockopt(s, sockopt::Ipv6RecvErr, &true)?;
    } else {
        setsockopt(s, sockopt::Ipv4RecvErr, &true)?;
    }
    Ok(())
}

/// Keeps the buffer length of the gateway and of the workers' frames in
/// step (a gateway buffer holds the largest frame a worker sends).
const _: () = assert!(BUFFER_LEN <= FRAME_BUF + 64);

/// A flow as `tapnet conntrack` shows it; `net` is the flow's network as
/// the control plane numbers it.
pub(super) fn row(v: &FlowView, host: Option<SocketAddr>, net: NetId, now_ns: u64) -> FlowRow {
    let secs = |ns: u64| ns as f64 / 1e9;
    FlowRow {
        protocol: v.key.protocol.as_str(),
        direction: v.direction.as_str(),
        // "tcp_established" → "established": the protocol has its column.
        state: v
            .state
            .as_str()
            .split_once('_')
            .map_or(v.state.as_str(), |(_, s)| s),
        network: net,
        container_ip: v.key.container_ip,
        container_port: v.key.container_port,
        remote_ip: v.key.remote_ip,
        remote_port: v.key.remote_port,
        host_addr: host,
        packets_out: v.from_container.packets,
        bytes_out: v.from_container.bytes,
        packets_in: v.to_container.packets,
        bytes_in: v.to_container.bytes,
        age_secs: secs(v.age_ns(now_ns)),
        idle_secs: secs(v.idle_ns(now_ns)),
        expires_secs: secs(v.expires_in_ns(now_ns)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A hook's buffers are made when first needed, the one the NAT gave
    /// back last is reused first, and a hook's stack past [`HOOK_KEEPS`]
    /// spills to the shared reserve.
    #[test]
    fn a_hook_reuses_the_buffer_given_back_last() {
        let (reserve_tx, reserve) = crossbeam_channel::bounded(4 * HOOK_KEEPS);
        let (back_tx, returned) = crossbeam_channel::bounded(4 * HOOK_KEEPS);
        let give = GiveBack {
            to_worker: vec![back_tx],
            reserve: reserve_tx.clone(),
        };
        let mut pool = HookPool {
            stack: Vec::new(),
            returned,
            reserve,
            reserve_tx,
            unmade: Arc::new(AtomicUsize::new(2)),
        };
        // Made when first needed, up to the pool's size.
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(pool.take().is_none());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        give.give(0, a);
        give.give(0, b);
        // Last given back, first taken. (The pointers only name buffers.)
        let (b, a) = (pool.take().unwrap(), pool.take().unwrap());
        assert_eq!((b.as_ptr(), a.as_ptr()), (pb, pa));
        // A worker unknown to the NAT: its buffer goes to the reserve.
        give.give(7, vec![0u8; 8].into_boxed_slice());
        assert_eq!(pool.reserve.len(), 1);
        for _ in 0..HOOK_KEEPS + 5 {
            pool.put(vec![0u8; 8].into_boxed_slice());
        }
        assert_eq!(pool.stack.len(), HOOK_KEEPS);
        assert_eq!(pool.reserve.len(), 6);
    }

    /// Waits (up to 5 s) for `f` to give something.
    fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < end, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A run takes datagrams of its first one's size to the same place
    /// with the same TTL, a shorter one only last, up to the kernel's
    /// limits of one `UDP_SEGMENT` message.
    #[test]
    fn a_run_takes_what_one_udp_segment_message_can_carry() {
        let via = SocketId::Flow(FlowHandle::from_u64(3));
        let other = SocketId::Published(1);
        let to = Some(SocketAddr::from(([192, 0, 2, 1], 53)));
        let fill = |r: &mut UdpRun, len: usize| {
            r.buf.extend(std::iter::repeat_n(0u8, len));
            r.count += 1;
        };
        let mut r = UdpRun::new();
        assert!(
            !r.takes(via, 100, None, Some(63)),
            "an empty run takes nothing"
        );
        (r.via, r.to, r.ttl, r.seg, r.count) = (Some(via), None, Some(63), 100, 0);
        fill(&mut r, 100);
        assert!(r.takes(via, 100, None, Some(63)));
        assert!(r.takes(via, 1, None, Some(63)), "a shorter one may end it");
        assert!(
            !r.takes(via, 0, None, Some(63)),
            "an empty datagram does not"
        );
        assert!(!r.takes(via, 101, None, Some(63)), "a longer one does not");
        assert!(!r.takes(other, 100, None, Some(63)));
        assert!(!r.takes(via, 100, to, Some(63)));
        assert!(
            !r.takes(via, 100, None, Some(62)),
            "another TTL (a traceroute's)"
        );
        fill(&mut r, 40);
        assert!(
            !r.takes(via, 40, None, Some(63)),
            "nothing after a shorter one"
        );
        // The kernel's limits: segments, then bytes.
        (r.seg, r.count) = (100, 0);
        r.buf.clear();
        for _ in 0..udp::GSO_MAX_SEGS {
            assert!(r.takes(via, 100, None, Some(63)));
            fill(&mut r, 100);
        }
        assert!(!r.takes(via, 100, None, Some(63)));
        (r.seg, r.count) = (30_000, 0);
        r.buf.clear();
        fill(&mut r, 30_000);
        fill(&mut r, 30_000);
        assert!(r.takes(via, udp::GSO_MAX_BYTES - 60_000, None, Some(63)));
        assert!(!r.takes(via, udp::GSO_MAX_BYTES - 60_000 + 1, None, Some(63)));
    }

    /// The host sockets of IPv6 flows, opened on the IPv6 loopback: a
    /// non-blocking connect, a connected UDP socket, and an echo through
    /// whichever ICMPv6 socket the probe found (the kernel answers echo
    /// requests to `::1` itself).
    #[test]
    fn ipv6_host_sockets_on_the_loopback() {
        let lo = IpAddr::V6(Ipv6Addr::LOCALHOST);
        // TCP.
        let l = std::net::TcpListener::bind((lo, 0)).unwrap();
        let mut c = connect_nonblocking(l.local_addr().unwrap()).unwrap();
        let (mut srv, peer) = l.accept().unwrap();
        assert!(peer.is_ipv6());
        wait_for(|| c.peer_addr().ok());
        assert!(c.take_error().unwrap().is_none());
        c.write_all(b"v6").unwrap();
        let mut b = [0u8; 2];
        srv.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"v6");
        // UDP.
        let u = std::net::UdpSocket::bind((lo, 0)).unwrap();
        let s = udp_connected(u.local_addr().unwrap()).unwrap();
        assert!(s.local_addr().unwrap().is_ipv6());
        s.send(b"dgram6").unwrap();
        let mut b = [0u8; 16];
        let (n, from) = u.recv_from(&mut b).unwrap();
        assert_eq!((&b[..n], from), (&b"dgram6"[..], s.local_addr().unwrap()));
        // ICMPv6 echo.
        let mut req = [icmp6_req(), [0, 7, 0, 1]].concat();
        req.extend_from_slice(b"ping6");
        match probe_icmp6() {
            (IcmpMode::PingSocket, None) => {
                let p = ping_socket(lo).unwrap();
                p.send(&req).unwrap();
                let mut b = [0u8; 64];
                let n = wait_for(|| p.recv(&mut b).ok());
                assert_eq!((b[0], &b[8..n]), (129, &b"ping6"[..]));
            }
            (IcmpMode::Raw, Some(raw)) => {
                raw.send_to(&req, SocketAddr::new(lo, 0)).unwrap();
                let mut b = [0u8; 64];
                // The first message read is the reply: the type filter
                // kept the request looping back out.
                let (n, from) = wait_for(|| raw.recv_from(&mut b).ok());
                assert_eq!(b[0], 129);
                assert_eq!((&b[8..n], from.ip()), (&b"ping6"[..], lo));
            }
            (IcmpMode::Unavailable, None) => {
                assert!(ping_socket(lo).is_err());
            }
            (m, s) => panic!("probe gave {m:?} with socket {}", s.is_some()),
        }
    }

    /// An ICMPv6 echo request's type, code and (kernel-filled) checksum.
    fn icmp6_req() -> [u8; 4] {
        [128, 0, 0, 0]
    }
}

//! The NAT gateway: containers' flows to the outside (and to the host's
//! loopback through the gateway address) relayed over ordinary host
//! sockets, and published ports relayed into containers. No netfilter, no
//! privileges: it is the daemon's own sockets that talk to the world.
//!
//! # Threads and hand-offs
//! Workers run [`NatHook`] behind the DNS hook: an IPv4 TCP/UDP/ICMP-echo
//! frame addressed to the gateway MAC but not to a local service is copied
//! into a pooled buffer and queued to the one NAT thread (a bounded queue:
//! when it is full the frame is dropped and counted as `tx_full`; the
//! sender's TCP retransmits). The NAT thread owns the connection table
//! ([`tapnet_nat::ConnTrack`]), one smoltcp [`Leg`] per TCP flow, and every
//! host socket (mio, edge-triggered). Frames towards containers are
//! written by the NAT thread straight to a duplicate of the container
//! port's first TAP queue (one `write` per frame; a TAP queue takes
//! concurrent writers, each write being one frame).
//!
//! # TCP
//! A container's SYN to a new destination opens a non-blocking host
//! connect first; the SYN is held until it completes. Connected: a leg
//! accepting on the destination address takes the SYN and the handshake
//! completes with the container. Refused or failed: the container gets a
//! RST (so `connect` fails at once with "connection refused"). Data moves
//! between the leg's buffers and the host socket with backpressure both
//! ways (a full leg buffer stops reads from the host; a blocked host
//! socket stops draining the leg, whose window closes); FIN maps to
//! `shutdown(SHUT_WR)` and end of stream maps to FIN (half-close); a reset
//! on one side aborts the other.
//!
//! # Published ports
//! The daemon binds the host sockets ([`Published`]); the NAT thread
//! accepts on them and opens a leg that connects to the container from the
//! client's own address (for loopback or IPv6 clients, the gateway's
//! address: those cannot be sources on the container's IPv4 network).

use super::{FlowRow, HostSocket, NetId, Published};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tapnet_nat::leg::{self, Leg, LegConfig, TcpSocketState, HEADROOM};
use tapnet_nat::{
    ConnTrack, Direction, FlowHandle, FlowKey, FlowView, Protocol, Side, SocketEvent, TcpFlags,
};
use tapnet_switch::wire::{ethernet, ipv4, vnet, EthernetAddress, Ipv4Packet, VnetHdr};
use tapnet_switch::{gateway_mac, DropReason, GatewayHook, HookCx, HookVerdict, NetworkId};

/// Frames the workers may have queued for the NAT thread at once.
const QUEUE: usize = 1024;
/// Size of one queued frame's buffer: a worker's receive buffer (a 64 KiB
/// GSO frame, its virtio-net header and slack), so the two can be swapped.
pub(super) const FRAME_BUF: usize = 65536 + vnet::HEADER_LEN + 64;
const WAKER: Token = Token(usize::MAX);
/// ICMP destination unreachable codes (RFC 792, RFC 1812).
const UNREACH_NET: u8 = 0;
const UNREACH_HOST: u8 = 1;
const UNREACH_PORT: u8 = 3;
/// "Communication administratively prohibited": masquerade off,
/// `--internal`, host loopback turned off.
const UNREACH_PROHIBITED: u8 = 13;
const RAW_ICMP: Token = Token(usize::MAX - 1);
/// Tokens at and above this are published sockets; below, flows.
const PUB_BASE: usize = 1 << 62;
/// Frames taken from the queue before looking at sockets again.
const FRAME_BUDGET: usize = 256;
/// Bytes relayed per flow per service call before others get a turn.
const RELAY_BUDGET: usize = 4 << 20;

/// A frame a worker handed over: `buf[vnet::HEADER_LEN..][..len]` (the
/// worker's receive buffer, as the TAP filled it).
pub(super) struct InFrame {
    buf: Box<[u8]>,
    len: usize,
    meta: VnetHdr,
    network: NetworkId,
}

/// Counters of the NAT gateway (all monotonic).
#[derive(Default)]
pub struct NatCounters {
    pub queue_full: AtomicU64,
    pub blocked: AtomicU64,
    pub no_endpoint: AtomicU64,
    pub tx_error: AtomicU64,
    pub unsupported: AtomicU64,
    pub table_full: AtomicU64,
    pub host_socket_error: AtomicU64,
}

/// The half of the hand-off a worker holds.
#[derive(Clone)]
pub(super) struct NatQueue {
    frames: Sender<InFrame>,
    free: Receiver<Box<[u8]>>,
    free_tx: Sender<Box<[u8]>>,
    waker: Arc<Waker>,
    sleeping: Arc<AtomicBool>,
    counters: Arc<NatCounters>,
}

/// The per-worker hook: hands frames for the outside to the NAT thread.
///
/// Zero-copy hand-off: the hook does not copy the frame; it reserves an
/// empty buffer from the pool and leaves it in [`NatHook::take_claim`]
/// for the worker, which, once the pipeline returns, swaps its receive
/// buffer (holding the frame) for the empty one and queues the full one
/// with [`NatQueue::push`].
pub(super) struct NatHook {
    q: NatQueue,
    claim: Option<Claim>,
}

/// A frame the hook took: the empty buffer to swap in, and what the NAT
/// thread needs to know about the frame.
pub(super) struct Claim {
    pub(super) empty: Box<[u8]>,
    pub(super) info: ClaimInfo,
}

/// What the NAT thread needs to know about a taken frame.
pub(super) struct ClaimInfo {
    meta: VnetHdr,
    network: NetworkId,
    len: usize,
}

impl NatHook {
    pub(super) fn new(q: NatQueue) -> NatHook {
        NatHook { q, claim: None }
    }

    /// The frame the hook took during the last `process`, if any.
    pub(super) fn take_claim(&mut self) -> Option<Claim> {
        self.claim.take()
    }

    pub(super) fn queue(&self) -> &NatQueue {
        &self.q
    }
}

impl NatQueue {
    /// Queues the frame in `buf` (the worker's former receive buffer: the
    /// virtio-net header, then the frame) to the NAT thread.
    pub(super) fn push(&self, claim_meta: &ClaimInfo, buf: Box<[u8]>) {
        let item = InFrame {
            buf,
            len: claim_meta.len,
            meta: claim_meta.meta,
            network: claim_meta.network,
        };
        if let Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) =
            self.frames.try_send(item)
        {
            let _ = self.free_tx.try_send(f.buf);
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.sleeping.swap(false, Ordering::AcqRel) {
            let _ = self.waker.wake();
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
        let Some(payload) = frame.get(ethernet::HEADER_LEN..) else {
            return HookVerdict::Drop(DropReason::Malformed);
        };
        let Ok(ip) = Ipv4Packet::new_checked(payload) else {
            return HookVerdict::Drop(DropReason::Malformed);
        };
        let cfg = &cx.network.config;
        let dst = ip.dst_addr();
        let in_subnet = prefix_match(dst, cfg.subnet, cfg.prefix_len);
        if (in_subnet && dst != cfg.gateway)
            || dst.is_broadcast()
            || dst.is_multicast()
            || dst.is_unspecified()
            || dst.is_loopback()
        {
            return HookVerdict::Pass;
        }
        match ip.protocol() {
            ipv4::protocol::TCP | ipv4::protocol::UDP => {}
            ipv4::protocol::ICMP if dst != cfg.gateway => {}
            _ => return HookVerdict::Pass,
        }
        if ip.is_fragment() {
            return HookVerdict::Drop(DropReason::GatewayUnsupported);
        }
        let Ok(empty) = self.q.free.try_recv() else {
            self.q.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            return HookVerdict::Drop(DropReason::TxFull);
        };
        if let Some(old) = self.claim.take() {
            // Not collected (cannot happen with the worker loop): recycle.
            let _ = self.q.free_tx.try_send(old.empty);
        }
        self.claim = Some(Claim {
            empty,
            info: ClaimInfo {
                meta: *meta,
                network: cx.network.id,
                len: frame.len(),
            },
        });
        HookVerdict::Consumed
    }
}

fn prefix_match(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix.min(32)));
    (u32::from(a) & mask) == (u32::from(net) & mask)
}

/// What the NAT thread knows about a network.
#[derive(Clone, Copy, Debug)]
pub(super) struct NetInfo {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
    pub masquerade: bool,
    pub internal: bool,
}

/// Control messages to the NAT thread.
pub(super) enum NatCmd {
    Network(NetworkId, NetInfo),
    RemoveNetwork(NetworkId),
    Endpoint {
        network: NetworkId,
        ip: Ipv4Addr,
        mac: [u8; 6],
        port: u32,
        fd: OwnedFd,
    },
    RemoveEndpoint(u32),
    Publish(NetworkId, Published),
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
        let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
    }

    pub(super) fn stats(&self) -> serde_json::Value {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(NatCmd::Stats(tx));
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or(serde_json::Value::Null)
    }

    pub(super) fn list(&self) -> Vec<(FlowView, Option<SocketAddr>)> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(NatCmd::List(tx));
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_default()
    }
}

/// Starts the NAT thread.
pub(super) fn start(
    host_loopback: bool,
    conntrack: &super::ConntrackConfig,
    seed: u64,
    epoch: Instant,
) -> anyhow::Result<NatHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (frames_tx, frames_rx) = crossbeam_channel::bounded(QUEUE);
    let (free_tx, free_rx) = crossbeam_channel::bounded(QUEUE);
    for _ in 0..QUEUE {
        let _ = free_tx.send(vec![0u8; FRAME_BUF].into_boxed_slice());
    }
    let (cmds_tx, cmds_rx) = crossbeam_channel::unbounded();
    let sleeping = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(NatCounters::default());
    let queue = NatQueue {
        frames: frames_tx,
        free: free_rx,
        free_tx: free_tx.clone(),
        waker: waker.clone(),
        sleeping: sleeping.clone(),
        counters: counters.clone(),
    };
    let ct = ConnTrack::new(conntrack.table(seed));
    let capacity = ct.config().capacity as usize;
    let mut nat = Nat {
        poll,
        cmds: cmds_rx,
        frames: frames_rx,
        free: free_tx,
        sleeping,
        counters,
        ct,
        flows: (0..capacity).map(|_| None).collect(),
        nets: HashMap::new(),
        endpoints: HashMap::new(),
        ports: HashMap::new(),
        published: HashMap::new(),
        next_pub: 0,
        host_loopback,
        leg_cfg: LegConfig {
            random_seed: seed,
            ..Default::default()
        },
        tx: leg::tx_buffer(),
        rbuf: vec![0u8; FRAME_BUF].into_boxed_slice(),
        timers: BinaryHeap::new(),
        dirty: Vec::new(),
        raw_icmp: None,
        raw_ids: HashMap::new(),
        epoch,
    };
    std::thread::Builder::new()
        .name("tapnet-nat".into())
        .spawn(move || nat.run())?;
    Ok(NatHandle {
        cmds: cmds_tx,
        waker,
        queue,
    })
}

struct Endpoint {
    mac: EthernetAddress,
    fd: OwnedFd,
}

enum PubSock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

struct Pub {
    owner: String,
    network: NetworkId,
    container: SocketAddrV4,
    sock: PubSock,
}

/// How a UDP flow reaches its remote.
enum UdpHost {
    /// Its own connected socket (outbound).
    Own(UdpSocket),
    /// A published socket, answering `client`.
    Published { token: usize, client: SocketAddr },
}

/// A TCP flow whose host side is up.
struct TcpFlow {
    leg: Leg,
    host: TcpStream,
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
        host: TcpStream,
        syn: Vec<u8>,
    },
    Tcp(Box<TcpFlow>),
    Udp(UdpHost),
    /// ICMP echo through a ping socket, or (`None`) the shared raw socket.
    Icmp(Option<UdpSocket>),
}

struct Flow {
    handle: FlowHandle,
    network: NetworkId,
    container: SocketAddrV4,
    /// The remote as the container sees it.
    remote: SocketAddrV4,
    io: Io,
}

struct Nat {
    poll: Poll,
    cmds: Receiver<NatCmd>,
    frames: Receiver<InFrame>,
    free: Sender<Box<[u8]>>,
    sleeping: Arc<AtomicBool>,
    counters: Arc<NatCounters>,
    ct: ConnTrack,
    /// By flow slot index (the table's capacity).
    flows: Vec<Option<Flow>>,
    nets: HashMap<NetworkId, NetInfo>,
    endpoints: HashMap<(NetworkId, Ipv4Addr), Endpoint>,
    /// Port id → endpoint key.
    ports: HashMap<u32, (NetworkId, Ipv4Addr)>,
    published: HashMap<usize, Pub>,
    next_pub: usize,
    host_loopback: bool,
    leg_cfg: LegConfig,
    /// Scratch for legs' packets (headroom + IP packet).
    tx: Box<[u8]>,
    /// Scratch for host socket reads.
    rbuf: Box<[u8]>,
    /// (when, flow) legs to poll; stale entries are harmless.
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    /// Flows to service before sleeping.
    dirty: Vec<FlowHandle>,
    raw_icmp: Option<socket2::Socket>,
    /// Echo identifier on the raw socket → flow.
    raw_ids: HashMap<u16, FlowHandle>,
    epoch: Instant,
}

fn flow_ref(flows: &[Option<Flow>], h: FlowHandle) -> Option<&Flow> {
    flows
        .get(h.index() as usize)?
        .as_ref()
        .filter(|f| f.handle == h)
}

fn flow_mut_in(flows: &mut [Option<Flow>], h: FlowHandle) -> Option<&mut Flow> {
    flows
        .get_mut(h.index() as usize)?
        .as_mut()
        .filter(|f| f.handle == h)
}

fn token_of(h: FlowHandle) -> Token {
    Token(h.to_u64() as usize)
}

fn tcp_flags(ip: &[u8]) -> (TcpFlags, usize) {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    match ip.get(ihl..total) {
        Some(t) if t.len() >= 20 => {
            let doff = usize::from(t[12] >> 4) * 4;
            (TcpFlags(t[13]), t.len().saturating_sub(doff))
        }
        _ => (TcpFlags(0), 0),
    }
}

impl Nat {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            while let Ok(c) = self.cmds.try_recv() {
                if !self.command(c) {
                    return;
                }
            }
            let mut budget = FRAME_BUDGET;
            while budget > 0 {
                let Ok(mut f) = self.frames.try_recv() else {
                    break;
                };
                budget -= 1;
                self.frame(&mut f);
                let _ = self.free.try_send(f.buf);
            }
            self.service_dirty();
            self.timers_due();
            self.expire();
            let mut timeout = self.next_deadline();
            self.sleeping.store(true, Ordering::Release);
            if !self.frames.is_empty() || !self.cmds.is_empty() || !self.dirty.is_empty() {
                timeout = Some(std::time::Duration::ZERO);
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("nat: epoll: {e}");
                    return;
                }
            }
            self.sleeping.store(false, Ordering::Release);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    RAW_ICMP => self.raw_icmp_readable(),
                    Token(t) if t >= PUB_BASE => self.published_ready(t),
                    Token(t) => {
                        let h = FlowHandle::from_u64(t as u64);
                        if let Some(TcpFlow { write_blocked, .. }) =
                            self.flow_mut(h).and_then(|f| match &mut f.io {
                                Io::Tcp(t) => Some(&mut **t),
                                _ => None,
                            })
                        {
                            if ev.is_writable() {
                                *write_blocked = false;
                            }
                        }
                        self.dirty.push(h);
                    }
                }
            }
        }
    }

    fn next_deadline(&mut self) -> Option<std::time::Duration> {
        let now = self.now();
        let mut at = self.ct.poll_timeout();
        if let Some(Reverse((t, _))) = self.timers.peek() {
            at = Some(at.map_or(*t, |a| a.min(*t)));
        }
        at.map(|t| std::time::Duration::from_nanos(t.saturating_sub(now)))
    }

    /// The live flow of `key`; a finished flow lingering in the table
    /// under it (no sockets any more) is removed: its tuple is reused.
    fn live_flow(&mut self, key: &FlowKey) -> Option<FlowHandle> {
        let h = self.ct.lookup(key)?;
        if self.flow_mut(h).is_some() {
            return Some(h);
        }
        let _ = self.ct.remove(h);
        None
    }

    fn flow_mut(&mut self, h: FlowHandle) -> Option<&mut Flow> {
        flow_mut_in(&mut self.flows, h)
    }

    fn command(&mut self, c: NatCmd) -> bool {
        match c {
            NatCmd::Network(id, info) => {
                self.nets.insert(id, info);
            }
            NatCmd::RemoveNetwork(id) => {
                self.nets.remove(&id);
            }
            NatCmd::Endpoint {
                network,
                ip,
                mac,
                port,
                fd,
            } => {
                self.ports.insert(port, (network, ip));
                self.endpoints.insert(
                    (network, ip),
                    Endpoint {
                        mac: EthernetAddress(mac),
                        fd,
                    },
                );
            }
            NatCmd::RemoveEndpoint(port) => {
                if let Some(key) = self.ports.remove(&port) {
                    self.endpoints.remove(&key);
                    let mut gone = Vec::new();
                    self.ct
                        .remove_container(key.0, IpAddr::V4(key.1), |v| gone.push(v.handle));
                    for h in gone {
                        self.drop_io(h);
                    }
                }
            }
            NatCmd::Publish(network, p) => self.publish(network, p),
            NatCmd::Unpublish(owner, done) => {
                let tokens: Vec<usize> = self
                    .published
                    .iter()
                    .filter(|(_, p)| p.owner == owner)
                    .map(|(t, _)| *t)
                    .collect();
                for t in tokens {
                    if let Some(mut p) = self.published.remove(&t) {
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
                    .ct
                    .iter()
                    .map(|v| {
                        let addr = self
                            .flows
                            .get(v.handle.index() as usize)
                            .and_then(|f| f.as_ref())
                            .filter(|f| f.handle == v.handle)
                            .and_then(|f| match &f.io {
                                Io::Connecting { host, .. } => host.local_addr().ok(),
                                Io::Tcp(t) => t.host.local_addr().ok(),
                                Io::Udp(UdpHost::Own(u)) => u.local_addr().ok(),
                                Io::Udp(UdpHost::Published { token, .. }) => {
                                    match self.published.get(token).map(|p| &p.sock) {
                                        Some(PubSock::Udp(u)) => u.local_addr().ok(),
                                        _ => None,
                                    }
                                }
                                Io::Icmp(Some(u)) => u.local_addr().ok(),
                                Io::Icmp(None) => None,
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

    /// The table's gauges and counters and the gateway's drop counters
    /// (`tapnet conntrack stats`).
    fn stats(&self) -> serde_json::Value {
        use serde_json::json;
        let c = self.ct.counters();
        let g = self.ct.gauges();
        let cfg = self.ct.config();
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
        let n = &self.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
            "expired": expired,
            "removed": c.removed,
            "tcp_established": c.tcp_established,
            "tcp_reset": c.tcp_reset,
            "replied": c.replied,
            "drops": {
                "queue_full": ld(&n.queue_full),
                "blocked": ld(&n.blocked),
                "no_endpoint": ld(&n.no_endpoint),
                "tx_error": ld(&n.tx_error),
                "unsupported": ld(&n.unsupported),
                "limit": ld(&n.table_full),
                "host_socket_error": ld(&n.host_socket_error),
            },
        })
    }

    fn publish(&mut self, network: NetworkId, p: Published) {
        let t = PUB_BASE + self.next_pub;
        self.next_pub += 1;
        let reg = self.poll.registry();
        let registered = |s: &mut dyn mio::event::Source| {
            s.register(reg, Token(t), Interest::READABLE)
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
                let mut u = UdpSocket::from_std(u);
                if !registered(&mut u) {
                    return;
                }
                PubSock::Udp(u)
            }
        };
        self.published.insert(
            t,
            Pub {
                owner: p.owner,
                network,
                container: SocketAddrV4::new(p.container_ip, p.container_port),
                sock,
            },
        );
        // Connections may already be waiting (a restart re-publishes).
        self.published_ready(t);
    }

    /// Where a new outbound flow to `dst` goes on the host, if allowed.
    fn target(&self, net: &NetInfo, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if net.internal {
            return None;
        }
        if dst == net.gateway {
            return self.host_loopback.then_some(Ipv4Addr::LOCALHOST);
        }
        // Network isolation: another tapnet network's addresses (its
        // containers, its gateway) are never reached through the host,
        // where they might even be routed somewhere else.
        if self
            .nets
            .values()
            .any(|n| prefix_match(dst, n.gateway, n.prefix))
        {
            return None;
        }
        net.masquerade.then_some(dst)
    }

    // ---- frames from containers ----------------------------------------

    fn frame(&mut self, f: &mut InFrame) {
        let now = self.now();
        let (meta, network) = (f.meta, f.network);
        let Some(frame) = f.buf.get_mut(vnet::HEADER_LEN..vnet::HEADER_LEN + f.len) else {
            return;
        };
        let Some(ip) = frame.get_mut(ethernet::HEADER_LEN..) else {
            return;
        };
        let Ok(p) = Ipv4Packet::new_checked(&*ip) else {
            return;
        };
        let (src, dst, proto) = (p.src_addr(), p.dst_addr(), p.protocol());
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(p.total_len()).min(ip.len());
        let Some(net) = self.nets.get(&network).copied() else {
            return;
        };
        let ip = &mut ip[..total];
        let l4 = &ip[ihl.min(total)..];
        match proto {
            ipv4::protocol::TCP if l4.len() >= 20 => {
                let sport = u16::from_be_bytes([l4[0], l4[1]]);
                let dport = u16::from_be_bytes([l4[2], l4[3]]);
                let key = FlowKey {
                    protocol: Protocol::Tcp,
                    network,
                    container_ip: IpAddr::V4(src),
                    container_port: sport,
                    remote_ip: IpAddr::V4(dst),
                    remote_port: dport,
                };
                self.tcp_from_container(now, &net, key, ip);
            }
            ipv4::protocol::UDP if l4.len() >= 8 => {
                if meta.gso_type != vnet::GSO_NONE {
                    // A UDP super-frame (USO): not segmented here yet.
                    self.counters.unsupported.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let sport = u16::from_be_bytes([l4[0], l4[1]]);
                let dport = u16::from_be_bytes([l4[2], l4[3]]);
                let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]])).clamp(8, l4.len());
                let key = FlowKey {
                    protocol: Protocol::Udp,
                    network,
                    container_ip: IpAddr::V4(src),
                    container_port: sport,
                    remote_ip: IpAddr::V4(dst),
                    remote_port: dport,
                };
                self.udp_from_container(now, &net, key, ip, &l4[8..ulen]);
            }
            ipv4::protocol::ICMP if l4.len() >= 8 && l4[0] == 8 && l4[1] == 0 => {
                let id = u16::from_be_bytes([l4[4], l4[5]]);
                let key = FlowKey::icmp_echo(network, IpAddr::V4(src), id, IpAddr::V4(dst));
                self.icmp_from_container(now, &net, key, ip, l4);
            }
            _ => {
                self.counters.unsupported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn tcp_from_container(&mut self, now: u64, net: &NetInfo, key: FlowKey, pkt: &mut [u8]) {
        let (flags, payload) = tcp_flags(pkt);
        if flags.contains(TcpFlags::SYN) {
            leg::raise_syn_mss(pkt);
        }
        let existing = self.ct.lookup(&key);
        let h = match existing {
            Some(h) => {
                let reopen = flags.contains(TcpFlags::SYN)
                    && !flags.contains(TcpFlags::ACK)
                    && self.flow_mut(h).is_none();
                if reopen {
                    // A new connection reusing a finished flow's tuple.
                    let _ = self.ct.remove(h);
                    None
                } else {
                    Some(h)
                }
            }
            None => None,
        };
        let Some(h) = h else {
            if !flags.contains(TcpFlags::SYN) || flags.contains(TcpFlags::ACK) {
                self.send_rst(key.network, pkt);
                return;
            }
            self.tcp_open(now, net, key, pkt);
            return;
        };
        let _ = self.ct.handle_tcp(h, now, flags, Side::Container, payload);
        let Nat {
            flows,
            ct,
            endpoints,
            tx,
            counters,
            ..
        } = self;
        let Some(flow) = flow_mut_in(flows, h) else {
            // A finished flow lingering in the table: its leg is gone.
            self.send_rst(key.network, pkt);
            return;
        };
        match &mut flow.io {
            Io::Tcp(t) => {
                let mut sink = leg_sink(
                    endpoints,
                    counters,
                    ct,
                    net,
                    flow.network,
                    flow.container,
                    h,
                    now,
                );
                t.leg.ingress(now, pkt, tx, &mut sink);
                self.dirty.push(h);
            }
            // A retransmitted SYN while the host connect is pending.
            Io::Connecting { syn, .. } if flags.contains(TcpFlags::SYN) => {
                syn.clear();
                syn.extend_from_slice(pkt);
            }
            _ => {}
        }
    }

    fn tcp_open(&mut self, now: u64, net: &NetInfo, key: FlowKey, syn: &[u8]) {
        let (IpAddr::V4(cip), IpAddr::V4(rip)) = (key.container_ip, key.remote_ip) else {
            return;
        };
        let Some(target) = self.target(net, rip) else {
            self.counters.blocked.fetch_add(1, Ordering::Relaxed);
            self.send_unreachable(key.network, net.gateway, syn, UNREACH_PROHIBITED);
            return;
        };
        let h = match self.ct.create(key, Direction::Outbound, now) {
            Ok(h) => h,
            Err(_) => {
                self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                self.send_rst(key.network, syn);
                return;
            }
        };
        let (flags, payload) = tcp_flags(syn);
        let _ = self.ct.handle_tcp(h, now, flags, Side::Container, payload);
        let dest = SocketAddr::V4(SocketAddrV4::new(target, key.remote_port));
        let host = match connect_nonblocking(dest) {
            Ok(s) => s,
            Err(_) => {
                let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Refused);
                self.send_rst(key.network, syn);
                return;
            }
        };
        let mut host = host;
        if self
            .poll
            .registry()
            .register(
                &mut host,
                token_of(h),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.counters
                .host_socket_error
                .fetch_add(1, Ordering::Relaxed);
            let _ = self.ct.remove(h);
            return;
        }
        self.flows[h.index() as usize] = Some(Flow {
            handle: h,
            network: key.network,
            container: SocketAddrV4::new(cip, key.container_port),
            remote: SocketAddrV4::new(rip, key.remote_port),
            io: Io::Connecting {
                host,
                syn: syn.to_vec(),
            },
        });
    }

    /// Sends an ICMP destination unreachable about `packet` (an IPv4
    /// packet from a container), from `from` (the gateway, or the remote
    /// that refused a port), back to its sender.
    fn send_unreachable(&mut self, network: NetworkId, from: Ipv4Addr, packet: &[u8], code: u8) {
        if packet.len() < 20 {
            return;
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let quoted = packet.len().min(ihl + 8);
        let len = 20 + 8 + quoted;
        let buf = &mut self.tx[..HEADROOM + len];
        let ip = &mut buf[HEADROOM..];
        ipv4_header(ip, 1, from, src, len);
        let m = &mut ip[20..];
        m[..8].fill(0);
        m[0] = 3;
        m[1] = code;
        m[8..8 + quoted].copy_from_slice(&packet[..quoted]);
        let c = tapnet_switch::wire::checksum(m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        let meta = VnetHdr::default();
        deliver(
            &self.nets,
            &self.endpoints,
            &self.counters,
            network,
            src,
            buf,
            &meta,
        );
    }

    fn send_rst(&mut self, network: NetworkId, segment: &[u8]) {
        let Some(n) = leg::rst_for(segment, &mut self.tx) else {
            return;
        };
        let dst = Ipv4Addr::new(segment[12], segment[13], segment[14], segment[15]);
        let buf = &mut self.tx[..HEADROOM + n];
        let meta = VnetHdr::default();
        deliver(
            &self.nets,
            &self.endpoints,
            &self.counters,
            network,
            dst,
            buf,
            &meta,
        );
    }

    fn udp_from_container(
        &mut self,
        now: u64,
        net: &NetInfo,
        key: FlowKey,
        packet: &[u8],
        payload: &[u8],
    ) {
        let (IpAddr::V4(cip), IpAddr::V4(rip)) = (key.container_ip, key.remote_ip) else {
            return;
        };
        let h = match self.live_flow(&key) {
            Some(h) => h,
            None => {
                let Some(target) = self.target(net, rip) else {
                    self.counters.blocked.fetch_add(1, Ordering::Relaxed);
                    self.send_unreachable(key.network, net.gateway, packet, UNREACH_PROHIBITED);
                    return;
                };
                let sock =
                    match udp_connected(SocketAddr::V4(SocketAddrV4::new(target, key.remote_port)))
                    {
                        Ok(s) => s,
                        Err(_) => {
                            self.counters
                                .host_socket_error
                                .fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                let Ok(h) = self.ct.create(key, Direction::Outbound, now) else {
                    self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut sock = sock;
                let _ = self
                    .poll
                    .registry()
                    .register(&mut sock, token_of(h), Interest::READABLE);
                self.flows[h.index() as usize] = Some(Flow {
                    handle: h,
                    network: key.network,
                    container: SocketAddrV4::new(cip, key.container_port),
                    remote: SocketAddrV4::new(rip, key.remote_port),
                    io: Io::Udp(UdpHost::Own(sock)),
                });
                h
            }
        };
        let _ = self.ct.handle_udp(h, now, Side::Container, payload.len());
        let Nat {
            flows,
            published,
            counters,
            ..
        } = self;
        let Some(Some(flow)) = flows.get_mut(h.index() as usize) else {
            return;
        };
        let r = match &flow.io {
            Io::Udp(UdpHost::Own(s)) => s.send(payload),
            Io::Udp(UdpHost::Published { token, client }) => match published.get(token) {
                Some(Pub {
                    sock: PubSock::Udp(u),
                    ..
                }) => u.send_to(payload, *client),
                _ => return,
            },
            _ => return,
        };
        if r.is_err() {
            counters.host_socket_error.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn icmp_from_container(
        &mut self,
        now: u64,
        net: &NetInfo,
        key: FlowKey,
        packet: &[u8],
        msg: &[u8],
    ) {
        let (IpAddr::V4(cip), IpAddr::V4(rip)) = (key.container_ip, key.remote_ip) else {
            return;
        };
        let h = match self.live_flow(&key) {
            Some(h) => h,
            None => {
                if net.internal || !net.masquerade {
                    self.counters.blocked.fetch_add(1, Ordering::Relaxed);
                    self.send_unreachable(key.network, net.gateway, packet, UNREACH_PROHIBITED);
                    return;
                }
                let Ok(h) = self.ct.create(key, Direction::Outbound, now) else {
                    self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let io = match ping_socket(rip) {
                    Ok(mut s) => {
                        let _ =
                            self.poll
                                .registry()
                                .register(&mut s, token_of(h), Interest::READABLE);
                        Io::Icmp(Some(s))
                    }
                    Err(_) if self.ensure_raw_icmp() => {
                        self.raw_ids.insert(h.index() as u16, h);
                        Io::Icmp(None)
                    }
                    Err(_) => {
                        self.counters.unsupported.fetch_add(1, Ordering::Relaxed);
                        let _ = self.ct.remove(h);
                        return;
                    }
                };
                self.flows[h.index() as usize] = Some(Flow {
                    handle: h,
                    network: key.network,
                    container: SocketAddrV4::new(cip, key.container_port),
                    remote: SocketAddrV4::new(rip, 0),
                    io,
                });
                h
            }
        };
        let _ = self.ct.handle_icmp(h, now, Side::Container, msg.len());
        let mut m = msg.to_vec();
        let raw = matches!(self.flow_mut(h).map(|f| &f.io), Some(Io::Icmp(None)));
        let r = if raw {
            m[4..6].copy_from_slice(&(h.index() as u16).to_be_bytes());
            m[2..4].fill(0);
            let c = tapnet_switch::wire::checksum(&m);
            m[2..4].copy_from_slice(&c.to_be_bytes());
            match &self.raw_icmp {
                Some(s) => s.send_to(&m, &SocketAddr::V4(SocketAddrV4::new(rip, 0)).into()),
                None => return,
            }
        } else {
            match self.flow_mut(h).map(|f| &f.io) {
                Some(Io::Icmp(Some(s))) => s.send(&m),
                _ => return,
            }
        };
        if r.is_err() {
            self.counters
                .host_socket_error
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ensure_raw_icmp(&mut self) -> bool {
        if self.raw_icmp.is_some() {
            return true;
        }
        let Ok(s) = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        ) else {
            return false;
        };
        let _ = s.set_nonblocking(true);
        let fd = s.as_raw_fd();
        if self
            .poll
            .registry()
            .register(&mut mio::unix::SourceFd(&fd), RAW_ICMP, Interest::READABLE)
            .is_err()
        {
            return false;
        }
        self.raw_icmp = Some(s);
        true
    }

    // ---- host side -------------------------------------------------------

    fn service_dirty(&mut self) {
        let mut rounds = 0;
        while !self.dirty.is_empty() && rounds < 4 {
            rounds += 1;
            let mut list = std::mem::take(&mut self.dirty);
            list.sort_unstable();
            list.dedup();
            for h in list {
                self.service(h);
            }
        }
    }

    fn timers_due(&mut self) {
        let now = self.now();
        while let Some(Reverse((t, h))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.dirty.push(FlowHandle::from_u64(h));
        }
        self.service_dirty();
    }

    fn expire(&mut self) {
        let now = self.now();
        while let Some(v) = self.ct.poll_expired(now) {
            self.drop_io(v.handle);
        }
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
        let reg = self.poll.registry();
        match f.io {
            Io::Connecting { mut host, .. } => {
                let _ = reg.deregister(&mut host);
            }
            Io::Tcp(mut t) => {
                if !t.container_eof {
                    // The container's side did not finish (it went away,
                    // or the flow expired): the remote must see a reset,
                    // not a clean end of a possibly truncated stream.
                    let _ =
                        socket2::SockRef::from(&t.host).set_linger(Some(std::time::Duration::ZERO));
                }
                let _ = reg.deregister(&mut t.host);
            }
            Io::Udp(UdpHost::Own(mut s)) => {
                let _ = reg.deregister(&mut s);
            }
            Io::Icmp(Some(mut s)) => {
                let _ = reg.deregister(&mut s);
            }
            Io::Icmp(None) => {
                self.raw_ids.remove(&(h.index() as u16));
            }
            Io::Udp(UdpHost::Published { .. }) => {}
        }
    }

    fn service(&mut self, h: FlowHandle) {
        let now = self.now();
        let Some(flow) = self.flow_mut(h) else { return };
        match &flow.io {
            Io::Connecting { .. } => self.connect_done(now, h),
            Io::Tcp(_) => self.relay_tcp(now, h),
            Io::Udp(UdpHost::Own(_)) => self.udp_readable(now, h),
            Io::Icmp(Some(_)) => self.ping_readable(now, h),
            _ => {}
        }
    }

    fn connect_done(&mut self, now: u64, h: FlowHandle) {
        let Some(flow) = self.flow_mut(h) else { return };
        let Io::Connecting { host, .. } = &flow.io else {
            return;
        };
        let err = match host.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match host.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        let ok = err.is_none();
        let net = flow.network;
        let Some(info) = self.nets.get(&net).copied() else {
            return;
        };
        let Some(Flow {
            io: Io::Connecting { host, syn },
            container,
            remote,
            ..
        }) = self.flows[h.index() as usize].take()
        else {
            return;
        };
        if !ok {
            let mut host = host;
            let _ = self.poll.registry().deregister(&mut host);
            let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Refused);
            // Refused: a RST, as from the server. Unreachable or timed
            // out: what a router says (the container's connect fails
            // with "no route to host").
            match err.and_then(|e| e.raw_os_error()) {
                Some(libc::ENETUNREACH) => {
                    self.send_unreachable(net, info.gateway, &syn, UNREACH_NET)
                }
                Some(libc::EHOSTUNREACH | libc::ETIMEDOUT) => {
                    self.send_unreachable(net, info.gateway, &syn, UNREACH_HOST)
                }
                _ => self.send_rst(net, &syn),
            }
            return;
        }
        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Connected);
        let _ = host.set_nodelay(true);
        let mut leg = Leg::accept(info.gateway, info.prefix, remote, &self.leg_cfg, now);
        {
            let Nat {
                ct,
                endpoints,
                tx,
                counters,
                ..
            } = self;
            let mut sink = leg_sink(endpoints, counters, ct, &info, net, container, h, now);
            leg.ingress(now, &syn, tx, &mut sink);
        }
        self.flows[h.index() as usize] = Some(Flow {
            handle: h,
            network: net,
            container,
            remote,
            io: Io::Tcp(Box::new(TcpFlow {
                leg,
                host,
                host_eof: false,
                container_eof: false,
                write_blocked: false,
            })),
        });
        self.dirty.push(h);
    }

    fn relay_tcp(&mut self, now: u64, h: FlowHandle) {
        let Nat {
            flows,
            ct,
            endpoints,
            tx,
            counters,
            nets,
            timers,
            ..
        } = self;
        let Some(flow) = flow_mut_in(flows, h) else {
            return;
        };
        let Some(info) = nets.get(&flow.network).copied() else {
            return;
        };
        let (net, container) = (flow.network, flow.container);
        let Io::Tcp(t) = &mut flow.io else { return };
        let mut sink = leg_sink(endpoints, counters, ct, &info, net, container, h, now);
        let mut moved = 0usize;
        let mut failed = false;
        let mut host_event = None;
        // Container → host.
        while !t.write_blocked && moved < RELAY_BUDGET && t.leg.socket().can_recv() {
            let host = &mut t.host;
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
        if !failed
            && !t.container_eof
            && !t.leg.socket().may_recv()
            && t.leg.socket().recv_queue() == 0
            && t.leg.socket().state() != TcpSocketState::SynReceived
            && t.leg.socket().state() != TcpSocketState::SynSent
            && t.leg.socket().state() != TcpSocketState::Listen
        {
            t.container_eof = true;
            let _ = t.host.shutdown(Shutdown::Write);
        }
        // Host → container.
        let mut read_moved = 0usize;
        while !failed && !t.host_eof && read_moved < RELAY_BUDGET && t.leg.socket().can_send() {
            let host = &mut t.host;
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
                    t.leg.poll(now, tx, &mut sink);
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
        t.leg.poll(now, tx, &mut sink);
        drop(sink);
        if let Some(e) = host_event {
            let _ = ct.handle_tcp_socket(h, now, e);
        }
        let state = t.leg.socket().state();
        use tapnet_nat::leg::TcpSocketState as State;
        let finished =
            matches!(state, State::Closed | State::TimeWait) || (state == State::Listen && failed);
        if finished {
            if let Some(Flow {
                io: Io::Tcp(mut t), ..
            }) = flows[h.index() as usize].take()
            {
                if !t.host_eof || !t.container_eof {
                    // Aborted: reset the host side too.
                    let _ =
                        socket2::SockRef::from(&t.host).set_linger(Some(std::time::Duration::ZERO));
                }
                let _ = self.poll.registry().deregister(&mut t.host);
            }
            return;
        }
        if moved >= RELAY_BUDGET || read_moved >= RELAY_BUDGET {
            self.dirty.push(h);
        }
        if let Some(at) = t.leg.poll_at_ns(now) {
            timers.push(Reverse((at.max(now), h.to_u64())));
        }
    }

    fn udp_readable(&mut self, now: u64, h: FlowHandle) {
        loop {
            let Some(flow) = flow_ref(&self.flows, h) else {
                return;
            };
            let (net, container, remote) = (flow.network, flow.container, flow.remote);
            let Io::Udp(UdpHost::Own(s)) = &flow.io else {
                return;
            };
            let off = HEADROOM + 28;
            let n = match s.recv(&mut self.rbuf[off..off + 65507]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    // The remote answered ICMP port unreachable: tell the
                    // container the same, quoting its datagram's headers,
                    // so its socket fails with "connection refused".
                    let mut quote = [0u8; 28];
                    ipv4_header(&mut quote, 17, *container.ip(), *remote.ip(), 28);
                    quote[20..22].copy_from_slice(&container.port().to_be_bytes());
                    quote[22..24].copy_from_slice(&remote.port().to_be_bytes());
                    quote[24..26].copy_from_slice(&8u16.to_be_bytes());
                    let _ = self.ct.handle_udp(h, now, Side::Remote, 0);
                    self.send_unreachable(net, *remote.ip(), &quote, UNREACH_PORT);
                    continue;
                }
                Err(_) => {
                    self.counters
                        .host_socket_error
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let _ = self.ct.handle_udp(h, now, Side::Remote, n);
            self.udp_to_container(net, remote, container, n);
        }
    }

    /// Sends `rbuf[HEADROOM + 28..][..n]` as a UDP datagram from `from`.
    fn udp_to_container(&mut self, net: NetworkId, from: SocketAddrV4, to: SocketAddrV4, n: usize) {
        let buf = &mut self.rbuf[..HEADROOM + 28 + n];
        let ip = &mut buf[HEADROOM..];
        ipv4_header(ip, 17, *from.ip(), *to.ip(), 28 + n);
        let u = &mut ip[20..];
        u[0..2].copy_from_slice(&from.port().to_be_bytes());
        u[2..4].copy_from_slice(&to.port().to_be_bytes());
        u[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
        // Partial checksum (pseudo-header), completed by the receiver.
        let mut acc = tapnet_switch::wire::checksum_sum(0, &from.ip().octets());
        acc = tapnet_switch::wire::checksum_sum(acc, &to.ip().octets());
        acc += 17 + (8 + n) as u32;
        let partial = !tapnet_switch::wire::checksum_finish(acc);
        u[6..8].copy_from_slice(&partial.to_be_bytes());
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: (ethernet::HEADER_LEN + 20) as u16,
            csum_offset: 6,
            ..Default::default()
        };
        deliver(
            &self.nets,
            &self.endpoints,
            &self.counters,
            net,
            *to.ip(),
            buf,
            &meta,
        );
    }

    fn ping_readable(&mut self, now: u64, h: FlowHandle) {
        loop {
            let Some(flow) = flow_ref(&self.flows, h) else {
                return;
            };
            let (net, container, remote) = (flow.network, flow.container, flow.remote);
            let Io::Icmp(Some(s)) = &flow.io else { return };
            let off = HEADROOM + 20;
            let n = match s.recv(&mut self.rbuf[off..off + 65507]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            if n < 8 || self.rbuf[off] != 0 {
                continue;
            }
            let _ = self.ct.handle_icmp(h, now, Side::Remote, n);
            self.icmp_to_container(net, *remote.ip(), container, n);
        }
    }

    fn raw_icmp_readable(&mut self) {
        let now = self.now();
        loop {
            let Some(s) = &self.raw_icmp else { return };
            // A raw socket gives whole IP datagrams.
            let off = HEADROOM;
            let n = match (&*s).read(&mut self.rbuf[off..off + 65535]) {
                Ok(n) => n,
                Err(_) => return,
            };
            let p = &self.rbuf[off..off + n];
            if n < 28 || p[0] >> 4 != 4 {
                continue;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if n < ihl + 8 || p[ihl] != 0 {
                continue;
            }
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let id = u16::from_be_bytes([p[ihl + 4], p[ihl + 5]]);
            let Some(&h) = self.raw_ids.get(&id) else {
                continue;
            };
            let Some(flow) = self.flow_mut(h) else {
                continue;
            };
            if *flow.remote.ip() != src {
                continue;
            }
            let (net, container) = (flow.network, flow.container);
            let len = n - ihl;
            self.rbuf.copy_within(off + ihl..off + n, HEADROOM + 20);
            let _ = self.ct.handle_icmp(h, now, Side::Remote, len);
            self.icmp_to_container(net, src, container, len);
        }
    }

    /// Sends the ICMP echo reply at `rbuf[HEADROOM + 20..][..n]` to the
    /// container, with the container's identifier.
    fn icmp_to_container(&mut self, net: NetworkId, from: Ipv4Addr, to: SocketAddrV4, n: usize) {
        let buf = &mut self.rbuf[..HEADROOM + 20 + n];
        let ip = &mut buf[HEADROOM..];
        ipv4_header(ip, 1, from, *to.ip(), 20 + n);
        let m = &mut ip[20..];
        m[4..6].copy_from_slice(&to.port().to_be_bytes());
        m[2..4].fill(0);
        let c = tapnet_switch::wire::checksum(m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        let meta = VnetHdr::default();
        deliver(
            &self.nets,
            &self.endpoints,
            &self.counters,
            net,
            *to.ip(),
            buf,
            &meta,
        );
    }

    // ---- published ports -------------------------------------------------

    fn published_ready(&mut self, t: usize) {
        let now = self.now();
        let Some(p) = self.published.get(&t) else {
            return;
        };
        let (network, container) = (p.network, p.container);
        let Some(info) = self.nets.get(&network).copied() else {
            return;
        };
        match &p.sock {
            PubSock::Tcp(_) => loop {
                let Some(Pub {
                    sock: PubSock::Tcp(l),
                    ..
                }) = self.published.get(&t)
                else {
                    return;
                };
                let (stream, client) = match l.accept() {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                self.accept_published(now, &info, network, container, stream, client);
            },
            PubSock::Udp(_) => loop {
                let Some(Pub {
                    sock: PubSock::Udp(u),
                    ..
                }) = self.published.get(&t)
                else {
                    return;
                };
                let off = HEADROOM + 28;
                let (n, client) = match u.recv_from(&mut self.rbuf[off..off + 65507]) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let src = source_for(client, info.gateway);
                let key = FlowKey {
                    protocol: Protocol::Udp,
                    network,
                    container_ip: IpAddr::V4(*container.ip()),
                    container_port: container.port(),
                    remote_ip: IpAddr::V4(*src.ip()),
                    remote_port: src.port(),
                };
                let h = match self.live_flow(&key) {
                    Some(h) => h,
                    None => {
                        let Ok(h) = self.ct.create(key, Direction::Inbound, now) else {
                            self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        self.flows[h.index() as usize] = Some(Flow {
                            handle: h,
                            network,
                            container,
                            remote: src,
                            io: Io::Udp(UdpHost::Published { token: t, client }),
                        });
                        h
                    }
                };
                let _ = self.ct.handle_udp(h, now, Side::Remote, n);
                self.udp_to_container(network, src, container, n);
            },
        }
    }

    fn accept_published(
        &mut self,
        now: u64,
        info: &NetInfo,
        network: NetworkId,
        container: SocketAddrV4,
        mut stream: TcpStream,
        client: SocketAddr,
    ) {
        let src = source_for(client, info.gateway);
        let key = FlowKey {
            protocol: Protocol::Tcp,
            network,
            container_ip: IpAddr::V4(*container.ip()),
            container_port: container.port(),
            remote_ip: IpAddr::V4(*src.ip()),
            remote_port: src.port(),
        };
        if let Some(old) = self.ct.lookup(&key) {
            if self.flow_mut(old).is_some() {
                // The same tuple is live (a loopback client's port reused
                // while the old flow lingers): refuse this one.
                return;
            }
            let _ = self.ct.remove(old);
        }
        let Ok(h) = self.ct.create(key, Direction::Inbound, now) else {
            self.counters.table_full.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(mut leg) = Leg::connect(
            info.gateway,
            info.prefix,
            src,
            container,
            &self.leg_cfg,
            now,
        ) else {
            let _ = self.ct.remove(h);
            return;
        };
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                token_of(h),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            let _ = self.ct.remove(h);
            return;
        }
        let _ = stream.set_nodelay(true);
        let _ = self.ct.handle_tcp_socket(h, now, SocketEvent::Connected);
        {
            let Nat {
                ct,
                endpoints,
                tx,
                counters,
                ..
            } = self;
            let mut sink = leg_sink(endpoints, counters, ct, info, network, container, h, now);
            leg.poll(now, tx, &mut sink);
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
                host: stream,
                host_eof: false,
                container_eof: false,
                write_blocked: false,
            })),
        });
    }
}

/// The source address a published port's client gets inside the
/// container: its own IPv4 address, or the gateway's for loopback, IPv6
/// and unspecified clients (the port stays the client's).
fn source_for(client: SocketAddr, gateway: Ipv4Addr) -> SocketAddrV4 {
    let v4 = match client.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    match v4 {
        Some(a) if !a.is_loopback() && !a.is_unspecified() => SocketAddrV4::new(a, client.port()),
        _ => SocketAddrV4::new(gateway, client.port()),
    }
}

/// The callback that sends a leg's IP packets to the container: Ethernet
/// and virtio-net headers (partial checksum; TSO when larger than the
/// network's MSS), counted in the table as the remote side's.
#[allow(clippy::too_many_arguments)]
fn leg_sink<'a>(
    endpoints: &'a HashMap<(NetworkId, Ipv4Addr), Endpoint>,
    counters: &'a NatCounters,
    ct: &'a mut ConnTrack,
    info: &NetInfo,
    network: NetworkId,
    container: SocketAddrV4,
    h: FlowHandle,
    now: u64,
) -> impl FnMut(&mut [u8]) + 'a {
    let ep = endpoints.get(&(network, *container.ip()));
    let gw = gateway_mac(info.gateway);
    let mss = (info.mtu as usize).saturating_sub(40).max(536);
    move |buf: &mut [u8]| {
        let Some(ep) = ep else {
            counters.no_endpoint.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(off) = leg::finish_tcp_segment(&mut buf[HEADROOM..]) else {
            return;
        };
        let flags = TcpFlags(buf[HEADROOM + off.l4_offset + 13]);
        let mut meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: (ethernet::HEADER_LEN + off.l4_offset) as u16,
            csum_offset: 16,
            ..Default::default()
        };
        if off.payload_len > mss {
            meta.gso_type = vnet::GSO_TCPV4;
            meta.gso_size = mss as u16;
            meta.hdr_len = (ethernet::HEADER_LEN + off.headers_len) as u16;
        }
        put_headers(buf, ep.mac, gw, &meta);
        let _ = ct.handle_tcp(h, now, flags, Side::Remote, off.payload_len);
        write_frame(ep, buf, counters);
    }
}

/// Sends `buf` (headroom, then an IP packet) to the container at `to` on
/// `net`: virtio-net and Ethernet headers from the gateway, one write.
fn deliver(
    nets: &HashMap<NetworkId, NetInfo>,
    endpoints: &HashMap<(NetworkId, Ipv4Addr), Endpoint>,
    counters: &NatCounters,
    net: NetworkId,
    to: Ipv4Addr,
    buf: &mut [u8],
    meta: &VnetHdr,
) {
    let Some(info) = nets.get(&net) else { return };
    let Some(ep) = endpoints.get(&(net, to)) else {
        counters.no_endpoint.fetch_add(1, Ordering::Relaxed);
        return;
    };
    put_headers(buf, ep.mac, gateway_mac(info.gateway), meta);
    write_frame(ep, buf, counters);
}

/// Fills `buf[..HEADROOM]`: the virtio-net header and an Ethernet header
/// from the gateway to `dst`.
fn put_headers(buf: &mut [u8], dst: EthernetAddress, gw: EthernetAddress, meta: &VnetHdr) {
    meta.emit(&mut buf[..vnet::HEADER_LEN]);
    let e = &mut buf[vnet::HEADER_LEN..HEADROOM];
    e[0..6].copy_from_slice(&dst.0);
    e[6..12].copy_from_slice(&gw.0);
    e[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
}

fn write_frame(ep: &Endpoint, buf: &[u8], counters: &NatCounters) {
    match nix::unistd::write(&ep.fd, buf) {
        Ok(_) => {}
        Err(_) => {
            counters.tx_error.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A 20-byte IPv4 header with its checksum.
fn ipv4_header(ip: &mut [u8], proto: u8, src: Ipv4Addr, dst: Ipv4Addr, total: usize) {
    let h = &mut ip[..20];
    h.fill(0);
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[6] = 0x40;
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = tapnet_switch::wire::checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
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

fn udp_connected(dest: SocketAddr) -> io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
    s.connect(dest)?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s))
}

/// An unprivileged ICMP echo socket connected to `dst` (needs the group
/// in `net.ipv4.ping_group_range`).
fn ping_socket(dst: Ipv4Addr) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM.nonblocking().cloexec(),
        Some(socket2::Protocol::ICMPV4),
    )?;
    s.connect(&SocketAddr::V4(SocketAddrV4::new(dst, 0)).into())?;
    Ok(UdpSocket::from_std(std::net::UdpSocket::from(s)))
}

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

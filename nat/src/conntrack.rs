//! The connection table: every flow between a container and the outside,
//! sans-IO (no sockets, no clock: `now` is a monotonic time in nanoseconds
//! passed in by the caller, the same clock as the switch's `now_ns`).
//!
//! # Flows
//! A flow is keyed by its container-side 5-tuple ([`FlowKey`]: protocol,
//! network, container address and port — the echo identifier for ICMP —,
//! remote address and port) and has a [`Direction`]: opened by the
//! container (outbound, masqueraded through a host socket) or by a remote
//! client through a published port (inbound). The I/O edge holds a
//! [`FlowHandle`] (slot index + generation) for the host socket of each
//! flow; a handle of a removed flow never refers to a later flow in the
//! same slot (the generation differs; it wraps only after 2^32 reuses of
//! one slot) and every operation given a stale handle returns
//! [`EventError::StaleHandle`] and changes nothing.
//!
//! The table is owned by one thread (`&mut self`, no interior locking);
//! sharing it between datapath workers is the integration's choice.
//!
//! Lookups are O(1) both ways: [`ConnTrack::lookup`] by key (open
//! addressing keyed by a seeded hash: seed it from OS randomness at the
//! edge, [`Config::hash_seed`], so containers cannot aim at collisions)
//! and every `handle_*` by handle (an array index).
//!
//! # Events and states
//! The edges report what they see; the table tracks state and activity:
//! - [`ConnTrack::create`] when a container's first packet (a SYN, a
//!   datagram, an echo request) or a published port's accepted
//!   connection/datagram has no flow; then report that packet as usual.
//! - [`ConnTrack::handle_tcp`] for each TCP segment crossing the container
//!   link, with the [`Side`] it came from (segments the edge's TCP stack
//!   sends to the container on the remote's behalf are from
//!   [`Side::Remote`]); [`ConnTrack::handle_tcp_socket`] for what the host
//!   socket reports (connected, refused, end of stream, reset).
//! - [`ConnTrack::handle_udp`], [`ConnTrack::handle_icmp`] per datagram.
//!
//! TCP: `SynSent` → `Established` when the responder answers (SYN+ACK from
//! the responder's side, or the host socket connected); a FIN from one
//! side → `FinWait` (half closed), a FIN from the other → `Closing`; a RST
//! from either side, or a refused/reset host socket → `Closed` (kept
//! briefly so late segments still match). UDP and ICMP: `Unreplied` →
//! `Replied` at the first packet from the responder. See
//! [`tcp_transition`] and [`datagram_transition`]. The table never
//! reopens a flow: a bare SYN from the initiator on a `Closing` or
//! `Closed` flow is a new connection reusing the tuple, and the caller
//! removes the old flow and creates a new one.
//!
//! # Timeouts and expiry
//! A flow expires when idle for its state's timeout ([`Timeouts`]): its
//! deadline is last activity + timeout. [`ConnTrack::poll_timeout`] tells
//! when to call [`ConnTrack::poll_expired`] next (possibly early: a flow
//! that saw traffic since is re-armed, at most once per timeout period);
//! `poll_expired(now)` removes and returns the flows whose deadline is
//! `<= now`, one per call, in order of (deadline, slot index). A flow past
//! its deadline stays visible to lookups until collected. Cost: O(log n)
//! per expired flow and per re-arm; nothing per packet (see `timers`).
//!
//! # Limits and memory
//! Capacity ([`Config::capacity`], the global limit) and the per-container
//! limit are checked by `create`, which returns a [`CreateError`] naming
//! the limit hit, unless the container has closed TCP flows: then its
//! oldest one (by when it reached `Closed`; each container's closed flows
//! form a list, linked beside the slab) is removed to make room, and the
//! caller learns which from [`ConnTrack::take_evicted`]. A flow counts
//! against its container address, or the
//! owner given to [`ConnTrack::create_owned`] (a dual-stack container's
//! IPv6 flows name its IPv4 address: one limit for both families). Keys
//! hold either family; an IPv4 key hashes its address in one word. All
//! per-flow memory (slab, closed-list links, index, timers, free list) is
//! allocated at construction; lookups, events, expiry and removal never
//! allocate. The only allocation after construction is the per-container
//! count map growing past 1024 containers with flows at once (a std
//! `HashMap`, when a container's first flow is created; bounded by the
//! capacity). `tests/no_alloc.rs` checks this with a counting allocator.
//!
//! # Panics
//! None, for any sequence of calls and arguments.

mod index;
mod timers;

use index::Index;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::time::Duration;
use tapnet_switch::NetworkId;
use timers::Timers;

/// Transport protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP (or ICMPv6) echo, keyed by identifier.
    Icmp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp];
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// The container-side 5-tuple of a flow (plus its network). For ICMP
/// echo, `container_port` is the echo identifier and `remote_port` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub network: NetworkId,
    pub container_ip: IpAddr,
    pub container_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
}

impl FlowKey {
    /// The key of an ICMP echo flow.
    pub fn icmp_echo(
        network: NetworkId,
        container_ip: IpAddr,
        ident: u16,
        remote_ip: IpAddr,
    ) -> FlowKey {
        FlowKey {
            protocol: Protocol::Icmp,
            network,
            container_ip,
            container_port: ident,
            remote_ip,
            remote_port: 0,
        }
    }
}

/// Who opened a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A container, towards the outside (masqueraded).
    Outbound,
    /// A remote client, through a published port.
    Inbound,
}

impl Direction {
    /// The side that opened the flow.
    pub fn initiator(self) -> Side {
        match self {
            Direction::Outbound => Side::Container,
            Direction::Inbound => Side::Remote,
        }
    }
    /// The side that answers.
    pub fn responder(self) -> Side {
        self.initiator().other()
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Where a packet or event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Container,
    Remote,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Container => Side::Remote,
            Side::Remote => Side::Container,
        }
    }
}

/// TCP flags (wire bit values; only FIN, SYN, RST and ACK matter here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const SYN_ACK: TcpFlags = TcpFlags(0x12);
    pub const FIN_ACK: TcpFlags = TcpFlags(0x11);

    #[inline]
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// State of a TCP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// Opened by the initiator's SYN; the responder has not answered.
    SynSent,
    Established,
    /// Half closed: `fin_from` sent a FIN, the other side may still send.
    FinWait {
        fin_from: Side,
    },
    /// Both sides sent a FIN.
    Closing,
    /// Reset or refused; kept briefly so late segments match.
    Closed,
}

/// State of a UDP or ICMP echo flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatagramState {
    /// Only the initiator has sent.
    Unreplied,
    /// The responder answered at least once.
    Replied,
}

/// State of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    Tcp(TcpState),
    Udp(DatagramState),
    Icmp(DatagramState),
}

impl FlowState {
    /// Number of distinct [`FlowState::index`] values.
    pub const COUNT: usize = 9;
    /// Stable snake_case names, by [`FlowState::index`].
    pub const NAMES: [&'static str; FlowState::COUNT] = [
        "tcp_syn_sent",
        "tcp_established",
        "tcp_fin_wait",
        "tcp_closing",
        "tcp_closed",
        "udp_unreplied",
        "udp_replied",
        "icmp_unreplied",
        "icmp_replied",
    ];

    /// The initial state of a flow of `protocol`.
    pub fn initial(protocol: Protocol) -> FlowState {
        match protocol {
            Protocol::Tcp => FlowState::Tcp(TcpState::SynSent),
            Protocol::Udp => FlowState::Udp(DatagramState::Unreplied),
            Protocol::Icmp => FlowState::Icmp(DatagramState::Unreplied),
        }
    }

    /// Dense index for per-state accounting (`FinWait` either way is one).
    pub fn index(self) -> usize {
        match self {
            FlowState::Tcp(TcpState::SynSent) => 0,
            FlowState::Tcp(TcpState::Established) => 1,
            FlowState::Tcp(TcpState::FinWait { .. }) => 2,
            FlowState::Tcp(TcpState::Closing) => 3,
            FlowState::Tcp(TcpState::Closed) => 4,
            FlowState::Udp(DatagramState::Unreplied) => 5,
            FlowState::Udp(DatagramState::Replied) => 6,
            FlowState::Icmp(DatagramState::Unreplied) => 7,
            FlowState::Icmp(DatagramState::Replied) => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        FlowState::NAMES[self.index()]
    }

    pub fn protocol(self) -> Protocol {
        match self {
            FlowState::Tcp(_) => Protocol::Tcp,
            FlowState::Udp(_) => Protocol::Udp,
            FlowState::Icmp(_) => Protocol::Icmp,
        }
    }
}

/// What a flow's host socket reported (TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketEvent {
    /// The other leg is up (outbound: `connect` completed).
    Connected,
    /// `connect` failed (refused, unreachable, timed out).
    Refused,
    /// The remote closed its sending direction (read returned 0): a FIN
    /// from the remote side.
    Eof,
    /// The connection was reset or failed.
    Reset,
}

/// The TCP state after a segment with `flags` from side `from` in a flow
/// opened in `direction`.
pub fn tcp_transition(
    state: TcpState,
    flags: TcpFlags,
    from: Side,
    direction: Direction,
) -> TcpState {
    if flags.contains(TcpFlags::RST) {
        return TcpState::Closed;
    }
    let fin = flags.contains(TcpFlags::FIN);
    match state {
        TcpState::SynSent if from == direction.responder() && flags.contains(TcpFlags::SYN_ACK) => {
            TcpState::Established
        }
        TcpState::Established if fin => TcpState::FinWait { fin_from: from },
        TcpState::FinWait { fin_from } if fin && from != fin_from => TcpState::Closing,
        s => s,
    }
}

/// The TCP state after a host socket event.
pub fn tcp_socket_transition(
    state: TcpState,
    event: SocketEvent,
    direction: Direction,
) -> TcpState {
    match event {
        SocketEvent::Connected if state == TcpState::SynSent => TcpState::Established,
        SocketEvent::Connected => state,
        SocketEvent::Refused | SocketEvent::Reset => TcpState::Closed,
        SocketEvent::Eof => tcp_transition(state, TcpFlags::FIN_ACK, Side::Remote, direction),
    }
}

/// The UDP/ICMP state after a packet from `from`.
pub fn datagram_transition(
    state: DatagramState,
    from: Side,
    direction: Direction,
) -> DatagramState {
    if from == direction.responder() {
        DatagramState::Replied
    } else {
        state
    }
}

/// Idle timeouts by state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `SynSent`: 2 min (Linux's `nf_conntrack_tcp_timeout_syn_sent`, and
    /// longer than a host `connect` gives up after its SYN retries).
    pub tcp_syn_sent: Duration,
    /// `Established`: 2 h 4 min, the floor of RFC 5382 REQ-5 (two hours of
    /// keepalive idle plus the probes), so a keepalive never finds its
    /// flow gone.
    pub tcp_established: Duration,
    /// `FinWait` and `Closing`: 2 min idle (a half-closed flow that keeps
    /// sending is refreshed by its traffic).
    pub tcp_closing: Duration,
    /// `Closed`: 10 s (Linux's `tcp_timeout_close`), then removed.
    pub tcp_closed: Duration,
    /// UDP `Unreplied`: 30 s (Linux's `nf_conntrack_udp_timeout`; below
    /// RFC 4787's two-minute floor, which only matters for flows that
    /// never got an answer).
    pub udp_unreplied: Duration,
    /// UDP `Replied`: 180 s (Linux's `udp_timeout_stream`; RFC 4787
    /// REQ-5 asks for at least 2 min).
    pub udp_replied: Duration,
    /// ICMP echo, either state: 30 s (Linux's `icmp_timeout`).
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_closing: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// The timeout of `state`.
    pub fn of(&self, state: FlowState) -> Duration {
        match state {
            FlowState::Tcp(TcpState::SynSent) => self.tcp_syn_sent,
            FlowState::Tcp(TcpState::Established) => self.tcp_established,
            FlowState::Tcp(TcpState::FinWait { .. } | TcpState::Closing) => self.tcp_closing,
            FlowState::Tcp(TcpState::Closed) => self.tcp_closed,
            FlowState::Udp(DatagramState::Unreplied) => self.udp_unreplied,
            FlowState::Udp(DatagramState::Replied) => self.udp_replied,
            FlowState::Icmp(_) => self.icmp,
        }
    }

    fn table_ns(&self) -> [u64; FlowState::COUNT] {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        [
            ns(self.tcp_syn_sent),
            ns(self.tcp_established),
            ns(self.tcp_closing),
            ns(self.tcp_closing),
            ns(self.tcp_closed),
            ns(self.udp_unreplied),
            ns(self.udp_replied),
            ns(self.icmp),
            ns(self.icmp),
        ]
    }
}

/// The largest capacity of a table (16M flows).
pub const MAX_CAPACITY: u32 = 1 << 24;

/// Memory reserved per flow of capacity, all structures included (slab
/// slot, two index entries, a heap entry and position, a free-list entry,
/// closed-list links).
pub const BYTES_PER_FLOW: usize =
    core::mem::size_of::<Slot>() + 2 * 8 + 12 + 4 + 4 + core::mem::size_of::<ClosedLinks>();

/// Containers the per-container count map is sized for at construction;
/// more grow it (an allocation when a container's first flow is created).
const PRESIZED_CONTAINERS: usize = 1024;

/// Settings fixed for the life of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Maximum number of flows (the global limit); all memory is sized
    /// for it at construction.
    pub capacity: u32,
    /// Maximum number of flows of one container (network + address).
    pub max_per_container: u32,
    pub timeouts: Timeouts,
    /// Seed of the key hash: take it from OS randomness at the edge.
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            capacity: 65_536,
            max_per_container: 8_192,
            timeouts: Timeouts::default(),
            hash_seed: 0,
        }
    }
}

/// A flow's handle for the I/O edge (e.g. as a `mio::Token` through
/// [`FlowHandle::to_u64`]). Never aliases a later flow in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowHandle {
    index: u32,
    generation: u32,
}

impl FlowHandle {
    /// The slot index (dense, below the capacity).
    pub fn index(self) -> u32 {
        self.index
    }
    /// This flow's entry in `table`, a table the edge keeps by slot
    /// index, made (empty) if the table is not that long yet. Such tables
    /// reserve the capacity at construction and grow as the connection
    /// table hands out slots: no reallocation, and memory is touched only
    /// for slots in use.
    pub fn slot_in<T>(self, table: &mut Vec<Option<T>>) -> &mut Option<T> {
        let i = self.index as usize;
        if table.len() <= i {
            table.resize_with(i + 1, || None);
        }
        &mut table[i]
    }
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
    pub fn from_u64(v: u64) -> FlowHandle {
        FlowHandle {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// Why [`ConnTrack::create`] refused a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// A flow with this key already exists.
    #[error("a flow with this key already exists")]
    Exists(FlowHandle),
    /// The global flow limit is reached.
    #[error("connection table full ({limit} flows)")]
    TableFull { limit: u32 },
    /// The container's flow limit is reached.
    #[error("container flow limit reached ({limit} flows)")]
    ContainerLimit { limit: u32 },
}

/// Why an event was not applied (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The handle's flow was removed (or the handle was never issued).
    #[error("no such flow (stale handle)")]
    StaleHandle,
    /// The event is for another protocol than the flow's.
    #[error("event does not match the flow's protocol ({flow:?})")]
    WrongProtocol { flow: Protocol },
}

/// Packets and bytes in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Everything known about one flow (what `tapnet conntrack ls` prints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowView {
    pub handle: FlowHandle,
    pub key: FlowKey,
    pub direction: Direction,
    pub state: FlowState,
    pub created_ns: u64,
    pub last_activity_ns: u64,
    /// When it expires unless more traffic comes.
    pub deadline_ns: u64,
    /// From the container towards the remote.
    pub from_container: Traffic,
    /// From the remote towards the container.
    pub to_container: Traffic,
}

impl FlowView {
    /// Time since creation.
    pub fn age_ns(&self, now: u64) -> u64 {
        now.saturating_sub(self.created_ns)
    }
    /// Time since the last packet or event.
    pub fn idle_ns(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_activity_ns)
    }
    /// Time left before it expires (0 if due).
    pub fn expires_in_ns(&self, now: u64) -> u64 {
        self.deadline_ns.saturating_sub(now)
    }
}

/// Event counters (monotonic), one per event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Flows created, by protocol ([`Protocol`] order).
    pub created: [u64; 3],
    pub created_inbound: u64,
    pub refused_exists: u64,
    pub refused_table_full: u64,
    pub refused_container_limit: u64,
    /// Closed TCP flows removed to make room for a new flow of their
    /// container (see [`ConnTrack::create_owned`]).
    pub evicted_closed: u64,
    /// Flows expired, by their state at expiry ([`FlowState::index`]).
    pub expired: [u64; FlowState::COUNT],
    /// Flows removed by the caller.
    pub removed: u64,
    /// TCP flows that reached `Established`.
    pub tcp_established: u64,
    /// TCP flows closed by a reset or a refused connect.
    pub tcp_reset: u64,
    /// UDP/ICMP flows that got their first reply.
    pub replied: u64,
    /// Events given a stale handle.
    pub stale_handle: u64,
    /// Events of the wrong protocol for their flow.
    pub wrong_protocol: u64,
}

impl Counters {
    pub fn created_of(&self, p: Protocol) -> u64 {
        self.created[p as usize]
    }
    pub fn expired_in(&self, s: FlowState) -> u64 {
        self.expired[s.index()]
    }
}

/// Current counts of live flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub flows: u32,
    /// By protocol ([`Protocol`] order).
    pub by_protocol: [u32; 3],
    /// By state ([`FlowState::index`]).
    pub by_state: [u32; FlowState::COUNT],
}

struct Flow {
    key: FlowKey,
    /// The container it counts against (its per-container limit).
    owner: IpAddr,
    hash: u64,
    direction: Direction,
    state: FlowState,
    created: u64,
    last: u64,
    from_container: Traffic,
    to_container: Traffic,
}

/// A slot's links in its owner's list of closed TCP flows, oldest first
/// ([`NIL`]: none; meaningful only while the slot's flow is `Closed`).
/// Beside the slab, so that a flow stays within two cache lines.
#[derive(Clone, Copy)]
struct ClosedLinks {
    prev: u32,
    next: u32,
}

const UNLINKED: ClosedLinks = ClosedLinks {
    prev: NIL,
    next: NIL,
};

/// No slot (the end of a closed-flow list).
const NIL: u32 = u32::MAX;

/// A container's share of the table: its flow count and the ends of
/// its list of closed TCP flows, oldest first (linked through
/// `ConnTrack::closed`: no allocation).
#[derive(Clone, Copy, Debug)]
struct Owner {
    flows: u32,
    closed_head: u32,
    closed_tail: u32,
}

impl Default for Owner {
    fn default() -> Owner {
        Owner {
            flows: 0,
            closed_head: NIL,
            closed_tail: NIL,
        }
    }
}

struct Slot {
    generation: u32,
    flow: Option<Flow>,
}

type ContainerKey = (NetworkId, IpAddr);

/// The connection table. See the module documentation for the contract.
pub struct ConnTrack {
    config: Config,
    timeout_ns: [u64; FlowState::COUNT],
    slots: Vec<Slot>,
    /// By slot, as `slots`.
    closed: Vec<ClosedLinks>,
    free: Vec<u32>,
    index: Index,
    timers: Timers,
    per_container: HashMap<ContainerKey, Owner, BuildHasherDefault<DefaultHasher>>,
    gauges: Gauges,
    counters: Counters,
    /// The flow the last [`ConnTrack::create_owned`] removed, for the
    /// edge to drop (see [`ConnTrack::take_evicted`]).
    evicted: Option<FlowHandle>,
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline]
fn ip_words(ip: IpAddr) -> (u64, u64) {
    match ip {
        IpAddr::V4(a) => (u64::from(u32::from(a)), 1 << 63),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            ((v >> 64) as u64, v as u64)
        }
    }
}

/// Seeded folded-multiply hash of a key (foldhash/wyhash style).
#[inline]
fn hash_key(seed: u64, k: &FlowKey) -> u64 {
    const P: [u64; 4] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    let (c0, c1) = ip_words(k.container_ip);
    let (r0, r1) = ip_words(k.remote_ip);
    let misc = (k.protocol as u64)
        | (u64::from(k.network.0) << 8)
        | (u64::from(k.container_port) << 24)
        | (u64::from(k.remote_port) << 40);
    let a = fold(c0 ^ seed ^ P[0], c1 ^ P[1]);
    let b = fold(r0 ^ P[2], r1 ^ seed.rotate_left(29) ^ P[3]);
    fold(a ^ misc ^ P[1], b ^ seed ^ P[0])
}

impl ConnTrack {
    /// A table for `config.capacity` flows (at most [`MAX_CAPACITY`]: a
    /// larger capacity is reduced to it, as [`ConnTrack::config`] shows);
    /// allocates everything now, about [`BYTES_PER_FLOW`] bytes a flow.
    pub fn new(mut config: Config) -> ConnTrack {
        config.capacity = config.capacity.min(MAX_CAPACITY);
        let cap = config.capacity as usize;
        ConnTrack {
            config,
            timeout_ns: config.timeouts.table_ns(),
            slots: Vec::with_capacity(cap),
            closed: Vec::with_capacity(cap),
            free: Vec::with_capacity(cap),
            index: Index::new(cap),
            timers: Timers::new(cap),
            per_container: HashMap::with_capacity_and_hasher(
                cap.min(PRESIZED_CONTAINERS),
                Default::default(),
            ),
            gauges: Gauges::default(),
            counters: Counters::default(),
            evicted: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    pub fn gauges(&self) -> &Gauges {
        &self.gauges
    }
    /// Number of live flows (including expired ones not yet collected).
    pub fn len(&self) -> usize {
        self.gauges.flows as usize
    }
    pub fn is_empty(&self) -> bool {
        self.gauges.flows == 0
    }
    /// Live flows of one container (by the owner address its flows were
    /// created with, see [`ConnTrack::create_owned`]).
    pub fn container_flows(&self, network: NetworkId, ip: IpAddr) -> u32 {
        self.per_container
            .get(&(network, ip))
            .map_or(0, |o| o.flows)
    }

    /// The flow with container-side key `key`.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<FlowHandle> {
        let h = hash_key(self.config.hash_seed, key);
        let slots = &self.slots;
        let s = self.index.find(h, |s| {
            slots
                .get(s as usize)
                .and_then(|x| x.flow.as_ref())
                .is_some_and(|f| f.key == *key)
        })?;
        Some(FlowHandle {
            index: s,
            generation: self.slots[s as usize].generation,
        })
    }

    /// A new flow in its initial state, created (and last active) at
    /// `now`. Does not count a packet: report the packet that opened it.
    /// It counts against the per-container limit of its container
    /// address.
    pub fn create(
        &mut self,
        key: FlowKey,
        direction: Direction,
        now: u64,
    ) -> Result<FlowHandle, CreateError> {
        self.create_owned(key, direction, now, key.container_ip)
    }

    /// [`ConnTrack::create`] for a flow that counts against the limit of
    /// `owner` on the key's network: a dual-stack container's IPv6 flows
    /// name its IPv4 address, so that both families share one limit.
    ///
    /// When the table is full or the owner is at its limit, the owner's
    /// oldest closed TCP flow (the first to reach `Closed`) makes room:
    /// it is removed ([`Counters::evicted_closed`]; the edge gets its
    /// handle from [`ConnTrack::take_evicted`]). A closed flow only
    /// lingers for late segments, which are refused alike without it, so
    /// a container that opens connections faster than its closed ones
    /// expire (one request per connection: 8192 in 10 s is 820 a second)
    /// is not refused for flows that are over. Otherwise the refusal
    /// names the limit.
    pub fn create_owned(
        &mut self,
        key: FlowKey,
        direction: Direction,
        now: u64,
        owner: IpAddr,
    ) -> Result<FlowHandle, CreateError> {
        if let Some(h) = self.lookup(&key) {
            self.counters.refused_exists += 1;
            return Err(CreateError::Exists(h));
        }
        let ck = (key.network, owner);
        let (per, oldest_closed) = self
            .per_container
            .get(&ck)
            .map_or((0, NIL), |o| (o.flows, o.closed_head));
        let full = self.gauges.flows >= self.config.capacity;
        let at_limit = per >= self.config.max_per_container;
        if (full || at_limit) && oldest_closed != NIL {
            let victim = FlowHandle {
                index: oldest_closed,
                generation: self.slots[oldest_closed as usize].generation,
            };
            if self.free_slot(oldest_closed).is_some() {
                self.counters.evicted_closed += 1;
                self.evicted = Some(victim);
            }
        } else if full {
            self.counters.refused_table_full += 1;
            return Err(CreateError::TableFull {
                limit: self.config.capacity,
            });
        } else if at_limit {
            self.counters.refused_container_limit += 1;
            return Err(CreateError::ContainerLimit {
                limit: self.config.max_per_container,
            });
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                // Fewer live flows than the capacity and no free slot:
                // the slab has room to grow (within its reservation).
                self.slots.push(Slot {
                    generation: 0,
                    flow: None,
                });
                self.closed.push(UNLINKED);
                (self.slots.len() - 1) as u32
            }
        };
        let hash = hash_key(self.config.hash_seed, &key);
        let state = FlowState::initial(key.protocol);
        let s = &mut self.slots[slot as usize];
        s.flow = Some(Flow {
            key,
            owner,
            hash,
            direction,
            state,
            created: now,
            last: now,
            from_container: Traffic::default(),
            to_container: Traffic::default(),
        });
        let handle = FlowHandle {
            index: slot,
            generation: s.generation,
        };
        self.index.insert(hash, slot);
        self.timers
            .set(slot, now.saturating_add(self.timeout_ns[state.index()]));
        self.per_container.entry(ck).or_default().flows += 1;
        self.gauges.flows += 1;
        self.gauges.by_protocol[key.protocol as usize] += 1;
        self.gauges.by_state[state.index()] += 1;
        self.counters.created[key.protocol as usize] += 1;
        if direction == Direction::Inbound {
            self.counters.created_inbound += 1;
        }
        Ok(handle)
    }

    #[inline]
    fn flow_mut(&mut self, h: FlowHandle) -> Result<&mut Flow, EventError> {
        match self.slots.get_mut(h.index as usize) {
            Some(Slot {
                generation,
                flow: Some(f),
            }) if *generation == h.generation => Ok(f),
            _ => {
                self.counters.stale_handle += 1;
                Err(EventError::StaleHandle)
            }
        }
    }

    /// Records activity (a packet of `bytes` from `from`, or none) and the
    /// new state; keeps accounting and timers in step.
    #[inline]
    fn apply(
        &mut self,
        h: FlowHandle,
        now: u64,
        packet: Option<(Side, usize)>,
        expect: Protocol,
        next: impl FnOnce(FlowState, Direction) -> FlowState,
    ) -> Result<FlowState, EventError> {
        let timeout_ns = self.timeout_ns;
        let f = self.flow_mut(h)?;
        let old = f.state;
        if old.protocol() != expect {
            self.counters.wrong_protocol += 1;
            return Err(EventError::WrongProtocol {
                flow: old.protocol(),
            });
        }
        if let Some((from, bytes)) = packet {
            let t = match from {
                Side::Container => &mut f.from_container,
                Side::Remote => &mut f.to_container,
            };
            t.packets = t.packets.saturating_add(1);
            t.bytes = t.bytes.saturating_add(bytes as u64);
        }
        f.last = f.last.max(now);
        let new = next(old, f.direction);
        if new == old {
            return Ok(new);
        }
        f.state = new;
        let last = f.last;
        let (oi, ni) = (old.index(), new.index());
        if oi != ni {
            const CLOSED: FlowState = FlowState::Tcp(TcpState::Closed);
            if old == CLOSED {
                self.unlink_closed(h.index);
            } else if new == CLOSED {
                self.link_closed(h.index);
            }
            self.gauges.by_state[oi] -= 1;
            self.gauges.by_state[ni] += 1;
            match new {
                FlowState::Tcp(TcpState::Established) => self.counters.tcp_established += 1,
                FlowState::Tcp(TcpState::Closed) => self.counters.tcp_reset += 1,
                FlowState::Udp(DatagramState::Replied)
                | FlowState::Icmp(DatagramState::Replied) => self.counters.replied += 1,
                _ => {}
            }
        }
        if timeout_ns[ni] < timeout_ns[oi] {
            // A shorter timeout: move the timer up now (the invariant is
            // armed <= real deadline); longer ones are re-armed lazily.
            let deadline = last.saturating_add(timeout_ns[ni]);
            self.timers.set(h.index, deadline);
        }
        Ok(new)
    }

    /// A TCP segment with `flags` and `bytes` of payload from `from`.
    pub fn handle_tcp(
        &mut self,
        h: FlowHandle,
        now: u64,
        flags: TcpFlags,
        from: Side,
        bytes: usize,
    ) -> Result<TcpState, EventError> {
        self.apply(h, now, Some((from, bytes)), Protocol::Tcp, |s, d| match s {
            FlowState::Tcp(t) => FlowState::Tcp(tcp_transition(t, flags, from, d)),
            s => s,
        })
        .map(tcp_of)
    }

    /// What the flow's host socket reported (counts no packet).
    pub fn handle_tcp_socket(
        &mut self,
        h: FlowHandle,
        now: u64,
        event: SocketEvent,
    ) -> Result<TcpState, EventError> {
        self.apply(h, now, None, Protocol::Tcp, |s, d| match s {
            FlowState::Tcp(t) => FlowState::Tcp(tcp_socket_transition(t, event, d)),
            s => s,
        })
        .map(tcp_of)
    }

    /// A UDP datagram of `bytes` payload from `from`.
    pub fn handle_udp(
        &mut self,
        h: FlowHandle,
        now: u64,
        from: Side,
        bytes: usize,
    ) -> Result<DatagramState, EventError> {
        self.apply(h, now, Some((from, bytes)), Protocol::Udp, |s, d| match s {
            FlowState::Udp(u) => FlowState::Udp(datagram_transition(u, from, d)),
            s => s,
        })
        .map(datagram_of)
    }

    /// An ICMP echo request or reply of `bytes` from `from`.
    pub fn handle_icmp(
        &mut self,
        h: FlowHandle,
        now: u64,
        from: Side,
        bytes: usize,
    ) -> Result<DatagramState, EventError> {
        self.apply(
            h,
            now,
            Some((from, bytes)),
            Protocol::Icmp,
            |s, d| match s {
                FlowState::Icmp(u) => FlowState::Icmp(datagram_transition(u, from, d)),
                s => s,
            },
        )
        .map(datagram_of)
    }

    /// The flow of `h`, if live.
    pub fn get(&self, h: FlowHandle) -> Option<FlowView> {
        let s = self.slots.get(h.index as usize)?;
        if s.generation != h.generation {
            return None;
        }
        self.view(h.index)
    }

    fn view(&self, slot: u32) -> Option<FlowView> {
        let s = self.slots.get(slot as usize)?;
        let f = s.flow.as_ref()?;
        Some(FlowView {
            handle: FlowHandle {
                index: slot,
                generation: s.generation,
            },
            key: f.key,
            direction: f.direction,
            state: f.state,
            created_ns: f.created,
            last_activity_ns: f.last,
            deadline_ns: f.last.saturating_add(self.timeout_ns[f.state.index()]),
            from_container: f.from_container,
            to_container: f.to_container,
        })
    }

    /// Removes the flow of `h` (the edge closed its socket).
    pub fn remove(&mut self, h: FlowHandle) -> Result<FlowView, EventError> {
        self.flow_mut(h)?;
        let v = self.free_slot(h.index).ok_or(EventError::StaleHandle)?;
        self.counters.removed += 1;
        Ok(v)
    }

    /// Removes every flow of a container (it left the network), calling
    /// `f` with each; returns how many. O(slots).
    pub fn remove_container(
        &mut self,
        network: NetworkId,
        ip: IpAddr,
        mut f: impl FnMut(FlowView),
    ) -> usize {
        let mut n = 0;
        for slot in 0..self.slots.len() as u32 {
            let hit = self.slots[slot as usize]
                .flow
                .as_ref()
                .is_some_and(|fl| fl.key.network == network && fl.key.container_ip == ip);
            if hit {
                if let Some(v) = self.free_slot(slot) {
                    self.counters.removed += 1;
                    n += 1;
                    f(v);
                }
            }
        }
        n
    }

    /// The owner key of the flow in `slot`, if any.
    fn owner_of(&self, slot: u32) -> Option<ContainerKey> {
        let f = self.slots.get(slot as usize)?.flow.as_ref()?;
        Some((f.key.network, f.owner))
    }

    /// Appends the flow in `slot` (now `Closed`) to its owner's list.
    fn link_closed(&mut self, slot: u32) {
        let Some(ck) = self.owner_of(slot) else {
            return;
        };
        let Some(o) = self.per_container.get_mut(&ck) else {
            return;
        };
        let tail = std::mem::replace(&mut o.closed_tail, slot);
        // The old tail's link, or the head of an empty list.
        *match self.closed.get_mut(tail as usize) {
            Some(t) => &mut t.next,
            None => &mut o.closed_head,
        } = slot;
        if let Some(l) = self.closed.get_mut(slot as usize) {
            *l = ClosedLinks {
                prev: tail,
                next: NIL,
            };
        }
    }

    /// Takes the flow in `slot` (leaving `Closed`, or removed) out of its
    /// owner's list.
    fn unlink_closed(&mut self, slot: u32) {
        let Some(ck) = self.owner_of(slot) else {
            return;
        };
        let Some(l) = self.closed.get_mut(slot as usize) else {
            return;
        };
        let ClosedLinks { prev, next } = std::mem::replace(l, UNLINKED);
        let Some(o) = self.per_container.get_mut(&ck) else {
            return;
        };
        // Each neighbour's link, or the list's end where there is none.
        *match self.closed.get_mut(prev as usize) {
            Some(p) => &mut p.next,
            None => &mut o.closed_head,
        } = next;
        *match self.closed.get_mut(next as usize) {
            Some(n) => &mut n.prev,
            None => &mut o.closed_tail,
        } = prev;
    }

    /// The flow [`ConnTrack::create_owned`] last removed to make room (a
    /// closed TCP flow of the same container), once: the edge drops what
    /// it still holds of it.
    pub fn take_evicted(&mut self) -> Option<FlowHandle> {
        self.evicted.take()
    }

    fn free_slot(&mut self, slot: u32) -> Option<FlowView> {
        let v = self.view(slot)?;
        if v.state == FlowState::Tcp(TcpState::Closed) {
            self.unlink_closed(slot);
        }
        let s = self.slots.get_mut(slot as usize)?;
        let f = s.flow.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.index.remove(f.hash, slot);
        self.timers.remove(slot);
        let ck = (f.key.network, f.owner);
        if let Some(o) = self.per_container.get_mut(&ck) {
            o.flows -= 1;
            if o.flows == 0 {
                self.per_container.remove(&ck);
            }
        }
        self.gauges.flows -= 1;
        self.gauges.by_protocol[f.key.protocol as usize] -= 1;
        self.gauges.by_state[f.state.index()] -= 1;
        Some(v)
    }

    /// When to call [`ConnTrack::poll_expired`] next: the earliest armed
    /// timer (possibly early, see the module documentation).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|(d, _)| d)
    }

    /// Removes and returns the next flow whose deadline is `<= now`, in
    /// (deadline, slot index) order; its `state` is why it expired.
    pub fn poll_expired(&mut self, now: u64) -> Option<FlowView> {
        loop {
            let (armed, slot) = self.timers.peek()?;
            if armed > now {
                return None;
            }
            let real = match self.slots.get(slot as usize).and_then(|s| s.flow.as_ref()) {
                Some(f) => f.last.saturating_add(self.timeout_ns[f.state.index()]),
                None => {
                    // Never expected: a timer without a flow.
                    self.timers.remove(slot);
                    continue;
                }
            };
            if real != armed {
                self.timers.set(slot, real);
                continue;
            }
            let v = self.free_slot(slot)?;
            self.counters.expired[v.state.index()] += 1;
            return Some(v);
        }
    }

    /// Every flow whose deadline is `<= now`, removed as the iterator is
    /// consumed (dropping it early leaves the rest for later).
    pub fn expire(&mut self, now: u64) -> impl Iterator<Item = FlowView> + '_ {
        core::iter::from_fn(move || self.poll_expired(now))
    }

    /// All live flows, in slot order. O(slots).
    pub fn iter(&self) -> impl Iterator<Item = FlowView> + '_ {
        (0..self.slots.len() as u32).filter_map(|s| self.view(s))
    }

    /// The live flows of one container. O(slots).
    pub fn iter_container(
        &self,
        network: NetworkId,
        ip: IpAddr,
    ) -> impl Iterator<Item = FlowView> + '_ {
        self.iter()
            .filter(move |v| v.key.network == network && v.key.container_ip == ip)
    }
}

fn tcp_of(s: FlowState) -> TcpState {
    match s {
        FlowState::Tcp(t) => t,
        _ => TcpState::Closed,
    }
}

fn datagram_of(s: FlowState) -> DatagramState {
    match s {
        FlowState::Udp(d) | FlowState::Icmp(d) => d,
        _ => DatagramState::Unreplied,
    }
}

#[cfg(test)]
mod tests;

//! Counters. Every drop in the pipeline has a [`DropReason`] and a counter;
//! ports count rx/tx packets and bytes. Counters are per worker (each
//! worker writes only its own lines, relaxed, uncontended) and summed when
//! read. The ports' rx/tx counters are packed densely per switch
//! ([`CounterArena`]).

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use crossbeam_utils::CachePadded;
use std::sync::{Arc, Mutex};

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $s:literal,)*) => {
        /// Why the pipeline dropped a frame.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $($(#[doc = $doc])* $name,)* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Stable snake_case name (metrics, capture comments, JSON).
            pub fn as_str(self) -> &'static str {
                match self { $(DropReason::$name => $s,)* }
            }
        }
    };
}

drop_reasons! {
    /// The frame came from a port the current snapshot does not know.
    UnknownPort => "unknown_port",
    /// Shorter than an Ethernet header.
    Runt => "runt",
    /// 802.1Q/802.1ad tagged: tapnet networks are untagged.
    VlanTagged => "vlan_tagged",
    /// Source MAC is multicast/broadcast or all zeroes.
    InvalidSrcMac => "invalid_src_mac",
    /// An L3 header (ARP, IPv4) is truncated or malformed.
    Malformed => "malformed",
    /// Source MAC differs from the port's assigned MAC.
    SpoofedMac => "spoofed_mac",
    /// IPv4/IPv6 source differs from the port's assigned address.
    SpoofedIp => "spoofed_ip",
    /// ARP claims an address or MAC that is not the port's.
    SpoofedArp => "spoofed_arp",
    /// A Neighbor Solicitation or Advertisement claims an address or a
    /// link-layer address that is not the port's (IPv6's ARP spoofing).
    SpoofedNd => "spoofed_nd",
    /// An EtherType a container port may not send (only IPv4, ARP, IPv6).
    UnsupportedEtherType => "unsupported_ethertype",
    /// The port already learned its maximum number of MACs.
    MacLimit => "mac_limit",
    /// The source MAC is assigned to a spoof-checked port elsewhere on the
    /// network (an uplink cannot take over an endpoint's MAC).
    MacTaken => "mac_taken",
    /// The FDB has no free slot near the MAC's hash.
    FdbFull => "fdb_full",
    /// IP between two endpoints of a network with ICC off.
    IccDisabled => "icc_disabled",
    /// Destination port is the ingress port.
    Hairpin => "hairpin",
    /// Larger than the network MTU and not a GSO super-frame.
    Oversize => "oversize",
    /// Addressed to the gateway, not for a built-in service, and no
    /// routing hook took it.
    NoRoute => "no_route",
    /// Addressed to the gateway with a protocol it does not serve.
    GatewayUnsupported => "gateway_unsupported",
    /// Would have left on a port of another network (never expected:
    /// defence in depth).
    CrossNetwork => "cross_network",
    /// Flooded, but no other port on the network.
    NoDestination => "no_destination",
    /// The egress queue was full (set by the I/O edge).
    TxFull => "tx_full",
    /// Writing to the egress device failed (set by the I/O edge).
    TxError => "tx_error",
    /// A datagram on the VXLAN port without a valid VXLAN header (short,
    /// I flag clear).
    VxlanBadHeader => "vxlan_bad_header",
    /// A VXLAN packet whose VNI no local overlay network has.
    VxlanUnknownVni => "vxlan_unknown_vni",
    /// Plain VXLAN for an encrypted network (only ESP is accepted).
    VxlanUnencrypted => "vxlan_unencrypted",
    /// An ESP packet with an SPI no local network has a key for.
    EspUnknownSpi => "esp_unknown_spi",
    /// An ESP packet whose ICV did not verify (wrong key, forged).
    EspAuthFailed => "esp_auth_failed",
    /// An ESP sequence number seen already or left of the window.
    EspReplay => "esp_replay",
    /// An ESP packet too short, with a bad trailer, or not VXLAN inside.
    EspMalformed => "esp_malformed",
    /// An encrypted network has no key to send with yet: never sent in
    /// clear.
    EspNoKey => "esp_no_key",
    /// The sending key used up its sequence numbers (rotate keys).
    EspSeqExhausted => "esp_seq_exhausted",
    /// Tunnel traffic from a VTEP that may not be learned (too many
    /// VTEPs on the network) or to a tunnel port without a peer.
    TunnelNoPeer => "tunnel_no_peer",
    /// A remote endpoint's MAC or address arrived from another VTEP than
    /// the one the cluster registered for it.
    TunnelSpoofed => "tunnel_spoofed",
    /// An offload the tunnel or a routed send cannot segment in software
    /// (UFO, IPv6 extension headers).
    GsoUnsupported => "gso_unsupported",
    /// From a macvlan/ipvlan network's parent, addressed to no endpoint of
    /// the network (the parent is promiscuous: the segment's other
    /// traffic).
    ParentNotForUs => "parent_not_for_us",
    /// From an endpoint of an ipvlan `l3` network: not unicast IP (ARP,
    /// another EtherType, broadcast, multicast), which l3 does not carry.
    L3NotRouted => "l3_not_routed",
    /// The daemon's namespace could not route a packet of an ipvlan `l3`
    /// network out of its parent (unreachable, parent down; set by the
    /// I/O edge).
    RouteFailed => "route_failed",
}

/// Number of drop reasons.
pub const N_DROP_REASONS: usize = DropReason::ALL.len();

/// The counters the pipeline writes per frame: rx on the ingress port, tx
/// on the egress port. One worker's, of one port.
#[derive(Default)]
struct Hot {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
}

impl Hot {
    fn clear(&self) {
        for c in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
        ] {
            c.store(0, Relaxed);
        }
    }
}

/// Ports whose hot counters share a [`Block`].
const BLOCK_PORTS: usize = 64;

/// One worker's hot counters of a block's ports: 2 KiB, contiguous, two
/// ports per line, starting on a line of its own.
#[repr(C, align(64))]
struct Row([Hot; BLOCK_PORTS]);

/// The hot counters of up to [`BLOCK_PORTS`] ports, a [`Row`] per worker:
/// rows never share a line, so workers never write the same line; a
/// worker's counters of 64 ports fill 32 consecutive lines (not one
/// scattered allocation per port, whose lines crowd the L1 and the TLB
/// once a network has hundreds of ports). Held as an `Arc<[Row]>`: the
/// rows follow the reference counts in one allocation (on a line of their
/// own, `Row` being line-aligned) and their number rides in the fat
/// pointer, so a frame reaches its row from the port with no load between.
type Block = [Row];

fn new_block(workers: usize) -> Arc<Block> {
    (0..workers.max(1))
        .map(|_| Row(core::array::from_fn(|_| Hot::default())))
        .collect()
}

/// Where a switch's ports get their hot counters: blocks of
/// [`BLOCK_PORTS`] ports, handed out densely; a port's place is free again
/// once the last clone of its [`PortCounters`] is gone (no snapshot, no
/// reader holds it), and is zeroed when it is handed out again.
pub struct CounterArena {
    workers: usize,
    state: Mutex<ArenaState>,
}

#[derive(Default)]
struct ArenaState {
    blocks: Vec<Arc<Block>>,
    /// Places to reuse, (block, index).
    free: Vec<(u32, u32)>,
    /// Places ever handed out fresh: the next fresh one is
    /// `(handed / BLOCK_PORTS, handed % BLOCK_PORTS)`.
    handed: usize,
}

impl CounterArena {
    pub fn new(workers: usize) -> Arc<CounterArena> {
        Arc::new(CounterArena {
            workers: workers.max(1),
            state: Mutex::default(),
        })
    }

    /// Counters for a new port.
    pub fn alloc(self: &Arc<Self>) -> PortCounters {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (b, i) = st.free.pop().unwrap_or_else(|| {
            let n = st.handed;
            st.handed += 1;
            if n == st.blocks.len() * BLOCK_PORTS {
                st.blocks.push(new_block(self.workers));
            }
            ((n / BLOCK_PORTS) as u32, (n % BLOCK_PORTS) as u32)
        });
        let block = st.blocks[b as usize].clone();
        drop(st);
        for row in block.iter() {
            row.0[i as usize].clear();
        }
        PortCounters {
            block,
            index: i as usize,
            cold: Cold::new(self.workers, Some((Arc::downgrade(self), b, i))),
        }
    }

    /// Ports holding counters now.
    #[cfg(test)]
    fn in_use(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.handed - st.free.len()
    }
}

/// A place in an arena: (the arena, block, index), given back when the
/// port's last clone goes.
type Lease = (std::sync::Weak<CounterArena>, u32, u32);

/// A port's counters that a frame does not touch unless it is dropped.
struct Cold {
    drops: WorkerCounters,
    /// The arena place to give back when the port's last clone goes.
    lease: Option<Lease>,
}

impl Cold {
    fn new(workers: usize, lease: Option<Lease>) -> Arc<Cold> {
        Arc::new(Cold {
            drops: WorkerCounters::new(workers),
            lease,
        })
    }
}

impl Drop for Cold {
    fn drop(&mut self) {
        if let Some((arena, b, i)) = self.lease.take() {
            if let Some(arena) = arena.upgrade() {
                let mut st = arena.state.lock().unwrap_or_else(|e| e.into_inner());
                st.free.push((b, i));
            }
        }
    }
}

/// One worker's counters of one port, as [`PortCounters::slot`] gives them.
pub struct Slot<'a> {
    hot: &'a Hot,
    cold: &'a Cold,
    worker: usize,
}

impl Slot<'_> {
    #[inline]
    pub fn count_rx(&self, bytes: usize) {
        bump(&self.hot.rx_packets, 1);
        bump(&self.hot.rx_bytes, bytes as u64);
    }
    #[inline]
    pub fn count_tx(&self, bytes: usize) {
        bump(&self.hot.tx_packets, 1);
        bump(&self.hot.tx_bytes, bytes as u64);
    }
    #[inline]
    pub fn count_drop(&self, r: DropReason) {
        self.cold.drops.count_drop(self.worker, r);
    }
}

/// A snapshot of counters, summed over workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: [u64; N_DROP_REASONS],
}

impl Default for PortStats {
    fn default() -> Self {
        PortStats {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: [0; N_DROP_REASONS],
        }
    }
}

impl PortStats {
    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Counters of one port, one slot per worker. A clone shares them: every
/// topology snapshot's copy of a port counts into the same ones, so they
/// survive control-plane updates.
///
/// The per-frame counters (rx/tx) sit in a [`Block`] shared with up to 63
/// other ports of the same switch ([`CounterArena`]): reaching a port's
/// counters from the port costs one line, dense among its neighbours'.
/// The drop counters are apart (`cold`), touched only by a drop.
#[derive(Clone)]
pub struct PortCounters {
    block: Arc<Block>,
    /// The port's place in each of the block's rows (below [`BLOCK_PORTS`]).
    index: usize,
    cold: Arc<Cold>,
}

impl PortCounters {
    /// Counters of their own, outside any arena (tests, a switch's
    /// tunnel counters).
    pub fn new(workers: usize) -> Self {
        PortCounters {
            block: new_block(workers),
            index: 0,
            cold: Cold::new(workers, None),
        }
    }
    /// The slot of `worker` (workers beyond the count share the last slot).
    #[inline(always)]
    pub fn slot(&self, worker: usize) -> Slot<'_> {
        let rows: &[Row] = &self.block;
        let worker = worker.min(rows.len() - 1);
        Slot {
            hot: &rows[worker].0[self.index],
            cold: &self.cold,
            worker,
        }
    }
    /// The frames read from the port, by the worker that read them (the
    /// TAP queue the kernel put them on: `tapnet daemon --tap-steering`).
    pub fn rx_by_worker(&self) -> Vec<u64> {
        self.block
            .iter()
            .map(|row| row.0[self.index].rx_packets.load(Relaxed))
            .collect()
    }
    pub fn sum(&self) -> PortStats {
        let mut s = PortStats::default();
        for row in self.block.iter() {
            let h = &row.0[self.index];
            s.rx_packets += h.rx_packets.load(Relaxed);
            s.rx_bytes += h.rx_bytes.load(Relaxed);
            s.tx_packets += h.tx_packets.load(Relaxed);
            s.tx_bytes += h.tx_bytes.load(Relaxed);
        }
        s.drops = self.cold.drops.sum();
        s
    }
}

/// Increment by the only writer: a relaxed load+store, no locked RMW.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Drops not attributable to a known port, per worker.
pub struct WorkerCounters {
    slots: Box<[CachePadded<[AtomicU64; N_DROP_REASONS]>]>,
}

impl WorkerCounters {
    pub fn new(workers: usize) -> Self {
        WorkerCounters {
            slots: (0..workers.max(1))
                .map(|_| CachePadded::new(core::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
    #[inline]
    pub fn count_drop(&self, worker: usize, r: DropReason) {
        bump(&self.slots[worker.min(self.slots.len() - 1)][r as usize], 1);
    }
    pub fn sum(&self) -> [u64; N_DROP_REASONS] {
        let mut s = [0; N_DROP_REASONS];
        for w in self.slots.iter() {
            for (d, a) in s.iter_mut().zip(w.iter()) {
                *d += a.load(Relaxed);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), N_DROP_REASONS);
    }

    #[test]
    fn arena_places_are_dense_apart_and_reused_zeroed() {
        let arena = CounterArena::new(2);
        let ports: Vec<PortCounters> = (0..BLOCK_PORTS + 1).map(|_| arena.alloc()).collect();
        assert_eq!(arena.in_use(), BLOCK_PORTS + 1);
        // Neighbours in a block are 32 bytes apart in each worker's row.
        let a = ports[0].slot(0).hot as *const Hot as usize;
        let b = ports[1].slot(0).hot as *const Hot as usize;
        assert_eq!(b - a, core::mem::size_of::<Hot>());
        // The rows start on a line of their own (not the Arc's counts').
        assert_eq!(a % 64, 0);
        // Workers' rows are different lines; the 65th port opens a block.
        let w1 = ports[0].slot(1).hot as *const Hot as usize;
        assert!(w1.abs_diff(a) >= 64 * 32);
        assert!(!Arc::ptr_eq(&ports[0].block, &ports[BLOCK_PORTS].block));

        ports[0].slot(0).count_rx(60);
        ports[1].slot(1).count_tx(40);
        ports[1].slot(0).count_drop(DropReason::Hairpin);
        let (s0, s1) = (ports[0].sum(), ports[1].sum());
        assert_eq!((s0.rx_packets, s0.rx_bytes, s0.tx_packets), (1, 60, 0));
        assert_eq!((s1.rx_packets, s1.tx_packets, s1.tx_bytes), (0, 1, 40));
        assert_eq!(
            (s0.total_drops(), s1.drop_count(DropReason::Hairpin)),
            (0, 1)
        );

        // A clone (another snapshot's port) counts into the same place and
        // keeps it; the place is free only when the last clone goes.
        let mut ports = ports;
        let first = ports.remove(0);
        let kept = first.clone();
        drop(first);
        assert_eq!(arena.in_use(), BLOCK_PORTS + 1);
        kept.slot(1).count_rx(10);
        assert_eq!(kept.sum().rx_packets, 2);
        drop(kept);
        assert_eq!(arena.in_use(), BLOCK_PORTS);
        let again = arena.alloc();
        assert_eq!(
            again.slot(0).hot as *const Hot as usize,
            a,
            "the place is reused"
        );
        assert_eq!(again.sum(), PortStats::default(), "and starts from zero");

        // Counters outlive their arena.
        drop(arena);
        again.slot(0).count_rx(1);
        drop(ports);
        drop(again);
    }

    #[test]
    fn sums_over_workers() {
        let c = PortCounters::new(2);
        c.slot(0).count_rx(60);
        c.slot(1).count_rx(40);
        c.slot(1).count_drop(DropReason::Runt);
        let s = c.sum();
        assert_eq!((s.rx_packets, s.rx_bytes), (2, 100));
        assert_eq!(s.drop_count(DropReason::Runt), 1);
        assert_eq!(s.total_drops(), 1);
    }
}

//! Counters. Every drop in the pipeline has a [`DropReason`] and a counter;
//! ports count rx/tx packets and bytes. Counters are per worker (each
//! worker writes only its own cache-padded slot, relaxed, uncontended) and
//! summed when read.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use crossbeam_utils::CachePadded;

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

/// One worker's counters of one port.
pub struct PortStatsSlot {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Drops of frames that entered on this port, by reason.
    pub drops: [AtomicU64; N_DROP_REASONS],
}

impl Default for PortStatsSlot {
    fn default() -> Self {
        PortStatsSlot {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: core::array::from_fn(|_| AtomicU64::new(0)),
        }
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

/// Counters of one port, one slot per worker. Shared (`Arc`) across
/// topology snapshots so they survive control-plane updates.
pub struct PortCounters {
    slots: Box<[LinePadded<PortStatsSlot>]>,
}

/// A worker's slot on its own cache lines, aligned to one line (64 bytes)
/// rather than [`CachePadded`]'s two: a slot is 6 lines, its hot counters
/// (rx/tx) in the first, so slots of different workers never share or
/// neighbour a hot line; and the hot lines of many ports spread over every
/// L1 set instead of the half that 128-byte alignment leaves them.
#[derive(Default)]
#[repr(C, align(64))]
struct LinePadded<T>(T);

impl<T> core::ops::Deref for LinePadded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl PortCounters {
    pub fn new(workers: usize) -> Self {
        PortCounters {
            slots: (0..workers.max(1)).map(|_| Default::default()).collect(),
        }
    }
    /// The slot of `worker` (workers beyond the count share the last slot).
    #[inline]
    pub fn slot(&self, worker: usize) -> &PortStatsSlot {
        &self.slots[worker.min(self.slots.len() - 1)]
    }
    pub fn sum(&self) -> PortStats {
        let mut s = PortStats::default();
        for w in self.slots.iter() {
            s.rx_packets += w.rx_packets.load(Relaxed);
            s.rx_bytes += w.rx_bytes.load(Relaxed);
            s.tx_packets += w.tx_packets.load(Relaxed);
            s.tx_bytes += w.tx_bytes.load(Relaxed);
            for (d, a) in s.drops.iter_mut().zip(w.drops.iter()) {
                *d += a.load(Relaxed);
            }
        }
        s
    }
}

impl PortStatsSlot {
    #[inline]
    pub fn count_rx(&self, bytes: usize) {
        bump(&self.rx_packets, 1);
        bump(&self.rx_bytes, bytes as u64);
    }
    #[inline]
    pub fn count_tx(&self, bytes: usize) {
        bump(&self.tx_packets, 1);
        bump(&self.tx_bytes, bytes as u64);
    }
    #[inline]
    pub fn count_drop(&self, r: DropReason) {
        bump(&self.drops[r as usize], 1);
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

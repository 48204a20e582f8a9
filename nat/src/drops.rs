//! Why the NAT dropped something: one [`NatDrop`] per reason, one counter
//! each, in the style of the switch's `DropReason`. Every early return on
//! the NAT's drop path counts here (or is a state change of a flow); the
//! daemon shows them under `drop_reasons` in `tapnet conntrack stats`.
//!
//! The gateway counts in plain integers ([`DropCounts`], owned by its
//! thread); the per-worker hooks that hand frames to it count in shared
//! atomics ([`SharedDrops`]); the daemon adds both.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! nat_drops {
    ($($(#[doc = $doc:literal])* $name:ident => $s:literal,)*) => {
        /// Why the NAT dropped a frame, a datagram or a connection.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum NatDrop { $($(#[doc = $doc])* $name,)* }

        impl NatDrop {
            /// Every reason, in counter order.
            pub const ALL: &'static [NatDrop] = &[$(NatDrop::$name,)*];
            /// Stable snake_case name (JSON, metrics).
            pub fn as_str(self) -> &'static str {
                match self { $(NatDrop::$name => $s,)* }
            }
        }
    };
}

nat_drops! {
    /// A frame for the NAT found the hand-off queue to the NAT thread full
    /// (or no free buffer for it); the sender's TCP retransmits.
    QueueFull => "queue_full",
    /// Too short for its IP protocol's header (TCP, UDP, ICMP).
    Malformed => "malformed",
    /// An IP fragment to the outside that was not reassembled: it
    /// overlapped another, was malformed, made its datagram longer than
    /// an IP packet or more than 128 fragments, or its datagram was not
    /// whole within 30 s or was evicted for a newer one (`frag.rs`).
    IpFragment => "ip_fragment",
    /// A UDP super-frame to the outside that is not USO (legacy UFO, one
    /// datagram to fragment) or has no segment size. (USO super-frames,
    /// a container's `UDP_SEGMENT` sends, are split and sent.)
    UdpGso => "udp_gso",
    /// ICMP to the outside other than an echo request.
    IcmpNotEcho => "icmp_not_echo",
    /// An IP protocol other than TCP, UDP and ICMP to the outside.
    Protocol => "protocol",
    /// The frame's network is not (or no longer) known to the NAT.
    NoNetwork => "no_network",
    /// Policy: the container's network is `--internal` (answered with
    /// ICMP "administratively prohibited").
    Internal => "internal",
    /// Policy: the network has masquerading turned off (answered with
    /// ICMP "administratively prohibited").
    MasqueradeOff => "masquerade_off",
    /// Policy: the destination is in another tapnet network's subnet,
    /// never reached through the host (ICMP "administratively
    /// prohibited").
    OtherNetwork => "other_network",
    /// Policy: the gateway address (the host's loopback) with host
    /// loopback turned off (ICMP "administratively prohibited").
    HostLoopbackOff => "host_loopback_off",
    /// The connection table is full (`--conntrack-max`; a TCP SYN is
    /// answered with RST).
    TableFull => "table_full",
    /// The container has its maximum of flows
    /// (`--conntrack-max-per-container`; a TCP SYN is answered with RST).
    ContainerLimit => "container_limit",
    /// A TCP segment other than a bare SYN without a live flow (answered
    /// with RST).
    TcpNoFlow => "tcp_no_flow",
    /// A TCP segment other than a SYN while the host connect is pending.
    TcpConnecting => "tcp_connecting",
    /// An ICMP echo request, but neither ping sockets nor a raw socket are
    /// available to the daemon.
    NoPingSocket => "no_ping_socket",
    /// A host socket could not be opened or registered.
    SocketOpen => "socket_open",
    /// Sending on a host socket failed.
    HostSend => "host_send",
    /// Receiving from a host socket failed, or cut a datagram short.
    HostRecv => "host_recv",
    /// Datagrams the host's kernel dropped at one of the NAT's UDP
    /// sockets (a flow's or a published port's) because its receive
    /// buffer was full: the NAT had not read them yet. Counted when the
    /// socket's next datagram is read (`SO_RXQ_OVFL`).
    HostRcvbuf => "host_rcvbuf",
    /// Accepting on a published TCP port failed.
    Accept => "accept",
    /// A published port's connection or datagram whose flow tuple is
    /// still live (a loopback client's port reused at once): refused.
    PublishedBusy => "published_busy",
    /// The gateway's TCP stack could not open the connection towards the
    /// container (a client port of 0).
    LegConnect => "leg_connect",
    /// A published UDP flow whose published socket is gone.
    NoListener => "no_listener",
    /// A host ICMP socket gave a message that is not an echo reply of a
    /// known flow (the raw socket sees every ping of the host).
    IcmpIgnored => "icmp_ignored",
    /// A frame for a container the NAT does not know (it left).
    NoEndpoint => "no_endpoint",
    /// No free frame buffer towards containers (the workers' transmit
    /// queues are backed up); TCP data waits instead, other frames drop.
    NoBuffer => "no_buffer",
    /// A worker's injection queue was full.
    InjectFull => "inject_full",
    /// An IPv6 frame on a network without an IPv6 side.
    NoIpv6 => "no_ipv6",
    /// Policy: an IPv6 destination a host socket would not take to the
    /// outside as IPv6 (IPv4-mapped, loopback, unspecified, link-local,
    /// multicast; ICMPv6 "administratively prohibited").
    V6Unroutable => "v6_unroutable",
    /// A container's datagram (UDP, ICMP echo) the host could not send on
    /// or got an error back for: no route to its network or no neighbour
    /// answering for it (ENETUNREACH, EHOSTUNREACH); answered with ICMP
    /// net or host unreachable from the gateway.
    Unreachable => "unreachable",
    /// A container's datagram or echo request with TTL (hop limit) 1 to
    /// the outside: answered with ICMP time exceeded from the gateway, as
    /// a router does (a traceroute's first hop).
    TtlExceeded => "ttl_exceeded",
}

/// Number of drop reasons.
pub const N_NAT_DROPS: usize = NatDrop::ALL.len();

/// Drop counters owned by one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropCounts(pub [u64; N_NAT_DROPS]);

impl Default for DropCounts {
    fn default() -> Self {
        DropCounts([0; N_NAT_DROPS])
    }
}

impl DropCounts {
    #[inline]
    pub fn count(&mut self, r: NatDrop) {
        self.0[r as usize] += 1;
    }
    /// Counts `n` drops of `r`.
    pub fn count_n(&mut self, r: NatDrop, n: u64) {
        self.0[r as usize] += n;
    }
    pub fn get(&self, r: NatDrop) -> u64 {
        self.0[r as usize]
    }
    /// `(name, count)` for every reason, in counter order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        NatDrop::ALL.iter().map(|r| (r.as_str(), self.get(*r)))
    }
    /// The first reason counted more here than in `before` (an earlier
    /// copy): what a frame handled in between was dropped for.
    pub fn first_increase(&self, before: &DropCounts) -> Option<NatDrop> {
        NatDrop::ALL
            .iter()
            .copied()
            .find(|r| self.get(*r) > before.get(*r))
    }
    /// Adds another set of counts.
    pub fn add(&mut self, o: &DropCounts) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }
}

/// Drop counters shared by several threads (relaxed atomics).
#[derive(Debug)]
pub struct SharedDrops([AtomicU64; N_NAT_DROPS]);

impl Default for SharedDrops {
    fn default() -> Self {
        SharedDrops(core::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl SharedDrops {
    #[inline]
    pub fn count(&self, r: NatDrop) {
        self.0[r as usize].fetch_add(1, Relaxed);
    }
    pub fn snapshot(&self) -> DropCounts {
        DropCounts(core::array::from_fn(|i| self.0[i].load(Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = NatDrop::ALL.iter().map(|r| r.as_str()).collect();
        assert!(names.iter().all(|n| {
            n.starts_with(|c: char| c.is_ascii_lowercase())
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), N_NAT_DROPS);
    }

    #[test]
    fn counts_add_up() {
        let s = SharedDrops::default();
        s.count(NatDrop::QueueFull);
        let mut d = DropCounts::default();
        d.count(NatDrop::QueueFull);
        d.count(NatDrop::UdpGso);
        d.add(&s.snapshot());
        assert_eq!(d.get(NatDrop::QueueFull), 2);
        assert_eq!(d.get(NatDrop::UdpGso), 1);
        assert_eq!(d.iter().map(|(_, n)| n).sum::<u64>(), 3);
        let before = d.clone();
        assert_eq!(d.first_increase(&before), None);
        d.count(NatDrop::Internal);
        assert_eq!(d.first_increase(&before), Some(NatDrop::Internal));
    }
}

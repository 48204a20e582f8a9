//! Overlay networks between hosts: VXLAN (RFC 7348) tunnel ports, head-end
//! replication, proxy ARP for other hosts' endpoints, and ESP (RFC 4303,
//! [`crate::esp`]) for encrypted overlays. Sans-IO: the dataplane owns the
//! UDP and raw sockets and calls in here with datagrams.
//!
//! Model: an overlay network has a VNI ([`crate::OverlayConfig`]). Each
//! peer VTEP of a network is a *tunnel port* of that network
//! ([`crate::TunnelConfig`]): MAC learning, the FDB, flooding (one copy
//! per tunnel port: head-end replication) and the policy (isolation, ICC)
//! work on them as on any port. On top:
//! - split horizon: a frame that came from a tunnel is never flooded to
//!   another tunnel (every host floods to all the others itself);
//! - other hosts' endpoints ([`Switch::add_remote`]) are pinned: unicast to
//!   their MAC goes to their VTEP's port (before the FDB), broadcast ARP
//!   for their address is answered locally (proxy ARP, as Docker's
//!   overlay), and so is a Neighbor Solicitation for their IPv6 address
//!   (proxy ND: Docker's overlay floods it instead), and a frame from a
//!   tunnel with their MAC must come from their VTEP with their address
//!   ([`DropReason::TunnelSpoofed`]): for IPv6 their assigned address or
//!   their MAC's link-local one, a Neighbor Advertisement only for those;
//! - a VTEP that is no peer (a Linux `vxlan` device, say) gets a tunnel
//!   port of its own when it first sends ([`Worker::process_vxlan`]), at
//!   most [`MAX_LEARNED_VTEPS`] per network; replies go to its address and
//!   [`crate::SwitchConfig::vxlan_port`].
//!
//! Receive: [`Worker::process_vxlan`] (a UDP datagram on the VXLAN port)
//! and [`Worker::process_esp`] (an IPv4 packet of protocol 50) check the
//! header, map the VNI (or SPI) to a network, find the tunnel port of the
//! sender and run the inner frame through the pipeline. Send: the
//! dataplane's [`crate::Transmit`] asks [`Topology::egress`] where a tunnel
//! port's frames go, segments offloaded frames ([`crate::gso`]) and
//! encapsulates each with [`Egress::encap`]. An encrypted network without
//! a sending key drops ([`DropReason::EspNoKey`]): nothing leaves in
//! clear. Every drop before a tunnel port is known counts on the switch's
//! tunnel counters ([`Switch::tunnel_stats`]).

use crate::counters::{DropReason, PortStats};
use crate::esp::{self, EspError, Sa};
use crate::gro::Offer;
use crate::pipeline::{BatchCx, GatewayHook, Processed, Transmit, Worker};
use crate::topology::{
    ConfigError, NetworkId, Port, PortConfig, PortId, Switch, Topology, TunnelConfig,
};
use crate::wire::{
    self, ipv4, ipv6, udp, vxlan, EthernetAddress, Ipv4Packet, Ipv6Packet, VnetHdr, VxlanPacket,
};
use core::hash::Hasher;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use core::ops::Range;
use std::sync::Arc;

/// Tunnel ports a network may learn from traffic (VTEPs that are no peer).
pub const MAX_LEARNED_VTEPS: usize = 64;
/// MACs one tunnel port may have learned (a whole host's endpoints).
pub const TUNNEL_MAX_MACS: u32 = 4096;
/// Bytes [`Egress::encap`] needs in front of the frame: ESP header and
/// IV, UDP and VXLAN headers.
pub const HEADROOM: usize = esp::HEAD_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;
/// Bytes [`Egress::encap`] may need after the frame (ESP trailer, ICV).
pub const TAILROOM: usize = esp::MAX_TAIL_LEN;

pub use crate::fxhash::{FastMap, FxHasher};

/// Another host's endpoint on an overlay network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    pub mac: EthernetAddress,
    pub ip: Ipv4Addr,
    /// Its IPv6 address on a dual-stack overlay.
    pub ip6: Option<Ipv6Addr>,
    /// The tunnel port of its VTEP.
    pub port: PortId,
}

/// An ESP key of a network.
#[derive(Clone, Debug)]
pub struct SaEntry {
    pub net: NetworkId,
    pub key: [u8; esp::KEY_LEN],
    pub sa: Arc<Sa>,
}

/// Records that network `id` has VXLAN id `vni` (refused if another has).
pub(crate) fn claim_vni(t: &mut Topology, id: NetworkId, vni: u32) -> Result<(), ConfigError> {
    if vni == 0 || vni > vxlan::MAX_VNI {
        return Err(ConfigError::Invalid(format!(
            "VNI {vni} outside 1..{}",
            vxlan::MAX_VNI
        )));
    }
    if let Some(other) = t.vnis.get(&vni).filter(|n| **n != id) {
        let name = t
            .network(*other)
            .map(|n| n.config.name.clone())
            .unwrap_or_default();
        return Err(ConfigError::Invalid(format!(
            "VNI {vni} is already used by network {name:?}"
        )));
    }
    t.vnis.insert(vni, id);
    Ok(())
}

/// Removes network `id`'s tunnel ports, remote endpoints and keys.
pub(crate) fn clear_overlay(t: &mut Topology, id: NetworkId) {
    let tunnels: Vec<PortId> = t
        .ports()
        .filter(|p| p.network() == id && p.is_tunnel())
        .map(|p| p.id)
        .collect();
    for p in tunnels {
        let _ = Switch::remove_port_in(t, p);
    }
    t.remotes
        .retain(|k, _| (k >> 48) & 0x7fff != u64::from(id.0));
    t.remote_ips.retain(|(n, _), _| *n != id);
    t.remote_ips6.retain(|(n, _), _| *n != id);
    t.spis.retain(|_, e| e.net != id);
    if let Some(n) = t.networks_mut(id) {
        n.tx_sa = None;
    }
}

impl Switch {
    /// The tunnel port of `net` towards `remote` (made if missing). A
    /// learned port becomes a configured one when the control plane names
    /// its VTEP.
    fn ensure_tunnel(
        &self,
        t: &mut Topology,
        net: NetworkId,
        remote: SocketAddrV4,
        learned: bool,
    ) -> Result<PortId, ConfigError> {
        let n = t.network(net).ok_or(ConfigError::NoSuchNetwork)?;
        if n.config.overlay.is_none() {
            return Err(ConfigError::Invalid(format!(
                "network {:?} is not an overlay",
                n.config.name
            )));
        }
        let want = TunnelConfig { remote, learned };
        if let Some(&pid) = t.tunnels.get(&(net, *remote.ip())) {
            if let Some(p) = t.port_mut(pid) {
                if !learned && p.config.tunnel != Some(want) {
                    p.config.tunnel = Some(want);
                }
            }
            return Ok(pid);
        }
        let name = format!("vxlan{}/{remote}", net.0);
        self.add_port_in(
            t,
            PortConfig {
                name,
                network: net,
                mac: None,
                ip: None,
                ip6: None,
                link_local6: None,
                max_macs: Some(TUNNEL_MAX_MACS),
                tunnel: Some(want),
            },
        )
    }

    /// Sets the VTEPs of the other hosts that have network `net`: its
    /// broadcast and unknown unicast go to each (head-end replication).
    /// Peers no longer listed lose their tunnel port unless an endpoint
    /// of theirs is registered; learned VTEPs are kept.
    pub fn set_peers(&self, net: NetworkId, peers: &[SocketAddrV4]) -> Result<(), ConfigError> {
        self.update(|t| {
            for p in peers {
                self.ensure_tunnel(t, net, *p, false)?;
            }
            let stale: Vec<PortId> = t
                .ports()
                .filter(|p| p.network() == net)
                .filter(|p| {
                    p.config.tunnel.is_some_and(|tc| {
                        !tc.learned && !peers.iter().any(|q| q.ip() == tc.remote.ip())
                    })
                })
                .filter(|p| !t.remotes.values().any(|r| r.port == p.id))
                .map(|p| p.id)
                .collect();
            for p in stale {
                Switch::remove_port_in(t, p)?;
            }
            Ok(())
        })
    }

    /// Pins another host's endpoint (`mac`, `ip`, and `ip6` on a
    /// dual-stack overlay) behind VTEP `vtep` on network `net` (replacing
    /// an earlier record of the MAC).
    pub fn add_remote(
        &self,
        net: NetworkId,
        mac: EthernetAddress,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
        vtep: SocketAddrV4,
    ) -> Result<(), ConfigError> {
        if mac.is_multicast() || mac.is_zero() {
            return Err(ConfigError::Invalid(format!("invalid MAC {mac}")));
        }
        self.update(|t| {
            if t.assigned_port(net, mac).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "MAC {mac} belongs to an endpoint of this host"
                )));
            }
            let port = self.ensure_tunnel(t, net, vtep, false)?;
            let key = crate::fdb::key(net.0, mac);
            if let Some(old) = t.remotes.remove(&key) {
                t.unmap_remote(net, &old);
            }
            t.remotes.insert(key, Remote { mac, ip, ip6, port });
            t.remote_ips.insert((net, ip), mac);
            if let Some(a) = ip6 {
                t.remote_ips6.insert((net, a), mac);
            }
            Ok(())
        })
    }

    /// Forgets another host's endpoint (no error if unknown).
    pub fn remove_remote(&self, net: NetworkId, mac: EthernetAddress) -> Result<(), ConfigError> {
        self.update(|t| {
            t.network(net).ok_or(ConfigError::NoSuchNetwork)?;
            if let Some(old) = t.remotes.remove(&crate::fdb::key(net.0, mac)) {
                t.unmap_remote(net, &old);
            }
            Ok(())
        })
    }

    /// Sets the ESP keys of an encrypted network: every key in `keys` is
    /// accepted on receipt, `tx_spi`'s sends. An SPI already known with
    /// the same key keeps its state (sequence number, replay window). An
    /// empty list removes the keys (the network then sends nothing).
    pub fn set_esp_keys(
        &self,
        net: NetworkId,
        keys: &[(u32, [u8; esp::KEY_LEN])],
        tx_spi: u32,
    ) -> Result<(), ConfigError> {
        for (i, (spi, _)) in keys.iter().enumerate() {
            if *spi < 256 {
                return Err(ConfigError::Invalid(format!(
                    "SPI {spi} is reserved (RFC 4303: 0-255)"
                )));
            }
            if keys[..i].iter().any(|(s, _)| s == spi) {
                return Err(ConfigError::Invalid(format!("SPI {spi} is listed twice")));
            }
        }
        if !keys.is_empty() && !keys.iter().any(|(s, _)| *s == tx_spi) {
            return Err(ConfigError::Invalid(format!(
                "the sending SPI {tx_spi} is not one of the keys"
            )));
        }
        self.update(|t| {
            let n = t.network(net).ok_or(ConfigError::NoSuchNetwork)?;
            if !n.config.overlay.is_some_and(|o| o.encrypted) {
                return Err(ConfigError::Invalid(format!(
                    "network {:?} is not an encrypted overlay",
                    n.config.name
                )));
            }
            let mut fresh = Vec::new();
            for (spi, key) in keys {
                let sa = match t.spis.get(spi) {
                    Some(e) if e.net != net => {
                        return Err(ConfigError::Invalid(format!(
                            "SPI {spi} is used by another network"
                        )))
                    }
                    Some(e) if e.key == *key => e.sa.clone(),
                    _ => Arc::new(Sa::new(*spi, key)),
                };
                fresh.push(SaEntry { net, key: *key, sa });
            }
            t.spis.retain(|_, e| e.net != net);
            let tx = fresh
                .iter()
                .find(|e| e.sa.spi() == tx_spi)
                .map(|e| e.sa.clone());
            for e in fresh {
                t.spis.insert(e.sa.spi(), e);
            }
            if let Some(n) = t.networks_mut(net) {
                n.tx_sa = tx;
            }
            Ok(())
        })
    }

    /// A tunnel port for a VTEP that sent on `net` and is no peer.
    fn learn_tunnel(&self, net: NetworkId, ip: Ipv4Addr) -> Result<PortId, DropReason> {
        let learned = self
            .topology()
            .ports()
            .filter(|p| p.network() == net && p.config.tunnel.is_some_and(|t| t.learned))
            .count();
        if learned >= MAX_LEARNED_VTEPS || ip.is_unspecified() || ip.is_broadcast() {
            return Err(DropReason::TunnelNoPeer);
        }
        let remote = SocketAddrV4::new(ip, self.config.vxlan_port);
        self.update(|t| self.ensure_tunnel(t, net, remote, true))
            .map_err(|_| DropReason::TunnelNoPeer)
    }

    /// The tunnel's counters: datagrams received and sent, and the drops
    /// before a frame reached a tunnel port (and the encapsulation's).
    pub fn tunnel_stats(&self) -> PortStats {
        self.tunnel.sum()
    }

    /// Counts a datagram sent (or a send failure) on the tunnel (for the
    /// I/O edge, from worker `worker`).
    pub fn count_tunnel_tx(&self, worker: usize, bytes: usize) {
        self.tunnel.slot(worker).count_tx(bytes);
    }

    /// Counts a tunnel drop on worker `worker` (for the I/O edge).
    pub fn count_tunnel_drop(&self, worker: usize, reason: DropReason) {
        self.tunnel.slot(worker).count_drop(reason);
    }
}

/// Where a tunnel port's frames go, and how.
#[derive(Clone, Copy, Debug)]
pub struct Egress<'a> {
    pub remote: SocketAddrV4,
    pub vni: u32,
    /// The sending key of an encrypted network.
    pub sa: Option<&'a Sa>,
}

impl Topology {
    /// How frames leave on tunnel port `port`. An encrypted network
    /// without a sending key refuses ([`DropReason::EspNoKey`]).
    #[inline]
    pub fn egress(&self, port: &Port) -> Result<Egress<'_>, DropReason> {
        let tc = port.config.tunnel.ok_or(DropReason::TunnelNoPeer)?;
        let n = self
            .network(port.network())
            .ok_or(DropReason::UnknownPort)?;
        let o = n.config.overlay.ok_or(DropReason::TunnelNoPeer)?;
        let sa = if o.encrypted {
            Some(n.tx_sa.as_deref().ok_or(DropReason::EspNoKey)?)
        } else {
            None
        };
        Ok(Egress {
            remote: tc.remote,
            vni: o.vni,
            sa,
        })
    }
}

impl Egress<'_> {
    /// Encapsulates plain frame `frame` in `slot` (which needs
    /// [`HEADROOM`] + frame + [`TAILROOM`] bytes) and returns what to send:
    /// VXLAN header and frame (the UDP payload) for a plain network; the
    /// ESP packet (the IP payload, protocol 50) carrying UDP, VXLAN and
    /// the frame for an encrypted one.
    #[inline]
    pub fn encap(&self, frame: &[u8], slot: &mut [u8]) -> Result<Range<usize>, DropReason> {
        let end = HEADROOM + frame.len();
        if slot.len() < end + TAILROOM {
            return Err(DropReason::Oversize);
        }
        slot[HEADROOM..end].copy_from_slice(frame);
        let vx = HEADROOM - vxlan::HEADER_LEN;
        vxlan::emit_header(&mut slot[vx..HEADROOM], self.vni);
        let Some(sa) = self.sa else {
            return Ok(vx..end);
        };
        let u = vx - udp::HEADER_LEN;
        let ulen = end - u;
        let h = &mut slot[u..vx];
        h[0..2].copy_from_slice(&flow_port(frame).to_be_bytes());
        h[2..4].copy_from_slice(&self.remote.port().to_be_bytes());
        h[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
        h[6..8].fill(0); // no UDP checksum over IPv4, as Linux's vxlan
        match sa.seal(slot, ulen, ipv4::protocol::UDP) {
            Ok(n) => Ok(0..n),
            Err(EspError::SeqExhausted) => Err(DropReason::EspSeqExhausted),
            Err(_) => Err(DropReason::Oversize),
        }
    }
}

/// The UDP source port of a tunnelled frame: a hash of its flow (MACs,
/// addresses, ports), in 32768..61000 as Linux's `udp_flow_src_port`, so
/// that the underlay spreads flows and keeps each one in order.
#[inline]
pub fn flow_port(frame: &[u8]) -> u16 {
    let mut h = FxHasher::default();
    h.write(frame.get(..14).unwrap_or(frame));
    if frame.len() >= 34 && frame[12..14] == [0x08, 0x00] {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        h.write(&frame[26..34]); // addresses
        h.write_u8(frame[23]); // protocol
        if let Some(ports) = frame.get(14 + ihl..14 + ihl + 4) {
            h.write(ports);
        }
    }
    let x = h.finish();
    32768 + ((x ^ (x >> 32)) % (61000 - 32768)) as u16
}

impl<H: GatewayHook> Worker<H> {
    /// Runs a datagram received on the VXLAN port from `from`: checks the
    /// header and VNI, finds (or learns) the sender's tunnel port, and
    /// runs the inner frame through the pipeline. Returns what
    /// [`Worker::process`] said and where the inner frame is in
    /// `datagram` (to hand it over when claimed).
    pub fn process_vxlan<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        from: SocketAddrV4,
        datagram: &[u8],
        tx: &mut T,
    ) -> (Processed, Range<usize>) {
        let slot = self.sw.tunnel.slot(self.id);
        slot.count_rx(datagram.len());
        let net = (|| {
            let v = VxlanPacket::new_checked(datagram).map_err(|_| DropReason::VxlanBadHeader)?;
            let n = cx
                .topo
                .network_by_vni(v.vni())
                .ok_or(DropReason::VxlanUnknownVni)?;
            if n.config.overlay.is_some_and(|o| o.encrypted) {
                return Err(DropReason::VxlanUnencrypted);
            }
            Ok(n.id)
        })();
        match net {
            Ok(net) => {
                let inner = vxlan::HEADER_LEN..datagram.len();
                let p = self.tunnel_ingress(cx, net, *from.ip(), &datagram[inner.clone()], tx);
                (p, inner)
            }
            Err(r) => {
                slot.count_drop(r);
                (Processed::Done, 0..0)
            }
        }
    }

    /// Runs an IPv4 packet of protocol 50 (ESP, header included, as a raw
    /// socket gives it): finds the key by SPI, checks the replay window,
    /// verifies and decrypts in place, checks the UDP and VXLAN headers
    /// inside and runs the inner frame through the pipeline. Returns as
    /// [`Worker::process_vxlan`].
    pub fn process_esp<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        packet: &mut [u8],
        tx: &mut T,
    ) -> (Processed, Range<usize>) {
        let slot = self.sw.tunnel.slot(self.id);
        slot.count_rx(packet.len());
        let r = (|| {
            let ip = Ipv4Packet::new_checked(&packet[..]).map_err(|_| DropReason::EspMalformed)?;
            if ip.protocol() != esp::IP_PROTOCOL || ip.is_fragment() {
                return Err(DropReason::EspMalformed);
            }
            let from = ip.src_addr();
            let (hl, total) = (
                ip.header_len(),
                usize::from(ip.total_len()).min(packet.len()),
            );
            let pkt = &mut packet[hl..total];
            let spi = esp::spi_of(pkt).ok_or(DropReason::EspMalformed)?;
            let e = cx.topo.spis.get(&spi).ok_or(DropReason::EspUnknownSpi)?;
            let (nh, range) = e.sa.open(pkt).map_err(|err| match err {
                EspError::AuthFailed => DropReason::EspAuthFailed,
                EspError::Replay => DropReason::EspReplay,
                _ => DropReason::EspMalformed,
            })?;
            if nh != ipv4::protocol::UDP || range.len() < udp::HEADER_LEN {
                return Err(DropReason::EspMalformed);
            }
            let inner = hl + range.start + udp::HEADER_LEN..hl + range.end;
            let v = VxlanPacket::new_checked(&packet[inner.clone()])
                .map_err(|_| DropReason::VxlanBadHeader)?;
            let n = cx.topo.network(e.net).ok_or(DropReason::VxlanUnknownVni)?;
            if n.config.overlay.map(|o| o.vni) != Some(v.vni()) {
                return Err(DropReason::VxlanUnknownVni);
            }
            Ok((n.id, from, inner.start + vxlan::HEADER_LEN..inner.end))
        })();
        match r {
            Ok((net, from, inner)) => {
                let p = self.tunnel_ingress(cx, net, from, &packet[inner.clone()], tx);
                (p, inner)
            }
            Err(r) => {
                slot.count_drop(r);
                (Processed::Done, 0..0)
            }
        }
    }

    fn tunnel_ingress<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        net: NetworkId,
        from: Ipv4Addr,
        inner: &[u8],
        tx: &mut T,
    ) -> Processed {
        // Coalescing only for the cluster's own peers: what they send was
        // segmented by `gso` (checksums complete, each segment the same
        // shape). A VTEP outside the cluster (a kernel vxlan device, whose
        // inner checksums may be partial) gets its frames passed one by one.
        let Some(port) = cx.topo.tunnel_port(net, from) else {
            return match self.sw.learn_tunnel(net, from) {
                Ok(id) => {
                    let cx = self.begin(cx.now_ns);
                    let meta = superframe_meta(inner_meta(inner), inner, max_frame(&cx, net));
                    self.process(&cx, id, &meta, inner, tx)
                }
                Err(r) => {
                    self.sw.tunnel.slot(self.id).count_drop(r);
                    Processed::Done
                }
            };
        };
        let id = port.id;
        let peer = port.config.tunnel.is_some_and(|t| !t.learned);
        let gateway = peer
            .then(|| cx.topo.network(net).map(|n| n.gateway_mac))
            .flatten();
        if let (Some(gw), Some(g)) = (gateway, self.gro.as_mut()) {
            match g.offer(id, gw, inner) {
                Offer::Joined => return Processed::Done,
                Offer::Candidate => {
                    self.flush_tunnel(cx, tx);
                    if let Some(g) = self.gro.as_mut() {
                        g.start(id, inner);
                    }
                    return Processed::Done;
                }
                // What this port holds goes first: its frames keep their order.
                Offer::NotCandidate => self.flush_tunnel(cx, tx),
            }
        }
        let meta = superframe_meta(inner_meta(inner), inner, max_frame(cx, net));
        self.process(cx, id, &meta, inner, tx)
    }

    /// Runs what receive coalescing holds ([`crate::gro`]) through the
    /// pipeline. Callers of [`Worker::process_vxlan`] and
    /// [`Worker::process_esp`] call it at the end of every batch of
    /// datagrams: a segment waits at most for the rest of its batch.
    pub fn flush_tunnel<T: Transmit>(&mut self, cx: &BatchCx, tx: &mut T) {
        let Some(mut g) = self.gro.take() else {
            return;
        };
        if let Some((port, meta, frame)) = g.take() {
            // Never claimed: frames to the gateway are not coalesced.
            let _ = self.process(cx, port, &meta, frame, tx);
        }
        self.gro = Some(g);
    }
}

/// The metadata of a frame that came out of the tunnel: [`VnetHdr`]'s
/// default (a plain frame with complete checksums), or `NEEDS_CSUM` for
/// an IPv4 or IPv6 TCP or UDP packet whose checksum field holds just the
/// pseudo-header sum (a partial checksum).
///
/// A Linux `vxlan` device offloads the inner checksum (`CHECKSUM_PARTIAL`)
/// and the kernel completes it only when a NIC or a software fallback
/// puts the packet on a wire. When the datagram never leaves the machine
/// (veth, bridges: another namespace, a container host's own underlay),
/// it reaches our UDP socket with the inner TCP/UDP checksum still
/// partial, and a UDP socket cannot tell. Written to a TAP as a plain
/// frame, the receiving kernel drops it (bad checksum): ping (checksummed
/// in software) works while TCP never gets its SYN through. Passed on as
/// `NEEDS_CSUM`, each egress treats it as it treats a container's own
/// offloaded frame: a TAP's kernel takes it as `CHECKSUM_PARTIAL`, the
/// tunnel's software segmentation ([`crate::gso`]) and the NAT complete it.
///
/// A complete checksum equal to the pseudo-header sum is harmless:
/// completing it gives the same value. A corrupted packet whose checksum
/// field happens to hold the pseudo-header sum (1 in 65536 of them)
/// escapes the receiver's check (the underlay's frame checks remain).
#[inline]
pub fn inner_meta(frame: &[u8]) -> VnetHdr {
    const ETH: usize = wire::ethernet::HEADER_LEN;
    // (L4 protocol, where it starts, its length, its pseudo-header sum)
    let (proto, start, l4len, pseudo) = match frame.get(12..14) {
        Some([0x08, 0x00]) => {
            let Ok(ip) = Ipv4Packet::new_checked(&frame[ETH..]) else {
                return VnetHdr::default();
            };
            if ip.is_fragment() {
                return VnetHdr::default();
            }
            let hl = ip.header_len();
            let Some(l4len) = usize::from(ip.total_len()).checked_sub(hl) else {
                return VnetHdr::default();
            };
            let (p, s, d) = (ip.protocol(), ip.src_addr(), ip.dst_addr());
            (p, ETH + hl, l4len, wire::pseudo_header_sum(s, d, p, l4len))
        }
        // IPv6 with TCP or UDP right after its fixed header (no
        // extension headers: a kernel's own TCP and UDP have none).
        Some([0x86, 0xdd]) => {
            let Ok(ip) = Ipv6Packet::new_checked(&frame[ETH..]) else {
                return VnetHdr::default();
            };
            let (p, l4len) = (ip.next_header(), usize::from(ip.payload_len()));
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            let sum = ipv6::pseudo_header_sum(s, d, p, l4len);
            (p, ETH + ipv6::HEADER_LEN, l4len, sum)
        }
        _ => return VnetHdr::default(),
    };
    let (off, min) = match proto {
        ipv4::protocol::TCP => (wire::tcp::CHECKSUM_OFFSET, wire::tcp::HEADER_LEN),
        ipv4::protocol::UDP => (wire::udp::CHECKSUM_OFFSET, wire::udp::HEADER_LEN),
        _ => return VnetHdr::default(),
    };
    if l4len < min || frame.len() < start + l4len {
        return VnetHdr::default();
    }
    let field = u16::from_be_bytes([frame[start + off], frame[start + off + 1]]);
    if field != !wire::checksum_finish(pseudo) {
        return VnetHdr::default();
    }
    VnetHdr {
        flags: wire::vnet::F_NEEDS_CSUM,
        csum_start: start as u16,
        csum_offset: off as u16,
        ..VnetHdr::default()
    }
}

/// The largest frame network `net` carries (0 when it is gone: then
/// nothing is taken for a super-frame).
#[inline]
fn max_frame(cx: &BatchCx, net: NetworkId) -> usize {
    cx.topo.network(net).map_or(0, |n| n.max_frame)
}

/// The metadata of a tunnelled frame longer than its network's frames:
/// a TCP packet with a partial checksum ([`inner_meta`] found
/// `NEEDS_CSUM` at TCP's checksum) is a whole TSO super-frame, which
/// goes on as `GSO_TCPV4` or `GSO_TCPV6` cut into segments that fit the
/// network; any
/// other `meta` is returned as it is (and the pipeline drops the frame
/// as oversize).
///
/// A Linux `vxlan` device encapsulates a TSO super-frame as one
/// UDP-tunnel GSO packet, which the kernel segments only where it meets a
/// device without that offload. A veth has it, and a UDP socket takes
/// such a packet whole: a kernel VTEP in another namespace of the same
/// machine hands tapnet's tunnel socket up to 64 KiB of inner frame,
/// whose checksum it left partial. Dropped as oversize, the same segments
/// came again and again: a TCP transfer from such a VTEP stalled
/// (`tests/overlay.rs`'s kernel vxlan device, now and then).
#[inline]
fn superframe_meta(meta: VnetHdr, frame: &[u8], max_frame: usize) -> VnetHdr {
    if frame.len() <= max_frame
        || meta.flags & wire::vnet::F_NEEDS_CSUM == 0
        || usize::from(meta.csum_offset) != wire::tcp::CHECKSUM_OFFSET
    {
        return meta;
    }
    let start = usize::from(meta.csum_start);
    let Some(&doff) = frame.get(start + 12) else {
        return meta;
    };
    let hdr_len = start + usize::from(doff >> 4) * 4;
    match max_frame.checked_sub(hdr_len) {
        Some(mss @ 1..) => VnetHdr {
            gso_type: if frame.get(12..14) == Some(&[0x86, 0xdd]) {
                wire::vnet::GSO_TCPV6
            } else {
                wire::vnet::GSO_TCPV4
            },
            gso_size: mss as u16,
            hdr_len: hdr_len as u16,
            ..meta
        },
        _ => meta,
    }
}

/// Checks a frame from tunnel port `port` against the remote endpoints:
/// a registered MAC must come from its VTEP with its address (IPv6: as a
/// local endpoint's, see `pipeline::check_ipv6_source`; a remote without
/// an IPv6 address may still use its link-local one).
#[inline]
pub(crate) fn check_remote(
    topo: &Topology,
    port: &Port,
    src: EthernetAddress,
    ethertype: wire::EtherType,
    payload: &[u8],
) -> Result<(), DropReason> {
    let Some(r) = topo.remote(port.network(), src) else {
        return Ok(());
    };
    if r.port != port.id {
        return Err(DropReason::TunnelSpoofed);
    }
    let sip = match ethertype {
        wire::EtherType::Ipv6 => {
            return match wire::Ipv6Packet::new_checked(payload) {
                Ok(p) => crate::pipeline::check_ipv6_source(
                    r.mac,
                    r.ip6,
                    crate::link_local_of(r.mac),
                    &p,
                )
                .map_err(|e| match e {
                    DropReason::Malformed => e,
                    _ => DropReason::TunnelSpoofed,
                }),
                Err(_) => Ok(()),
            };
        }
        wire::EtherType::Ipv4 => Ipv4Packet::new_checked(payload).ok().map(|p| p.src_addr()),
        wire::EtherType::Arp => wire::ArpPacket::new_checked(payload)
            .ok()
            .map(|p| p.sender_ip())
            .filter(|a| !a.is_unspecified()),
        _ => None,
    };
    match sip {
        Some(a) if a != r.ip => Err(DropReason::TunnelSpoofed),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use crate::mem::{MemSwitch, MemTx, Sent};
    use crate::topology::{NetworkConfig, OverlayConfig, SwitchConfig};
    use crate::wire::arp::ArpOp;
    use crate::wire::{ArpPacket, EthernetFrame};

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 2);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 3);
    const VTEP_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 4789);
    const VTEP_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 4789);
    const VTEP_C: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 3), 4789);

    struct Host {
        ms: MemSwitch,
        net: NetworkId,
        port: PortId,
    }

    /// A host with overlay network VNI 42 and one endpoint (`mac`, `ip`).
    fn host(mac: u32, ip: Ipv4Addr, encrypted: bool, icc: bool) -> Host {
        let ms = MemSwitch::new(SwitchConfig::default());
        let mut c = NetworkConfig::new("ov", Ipv4Addr::new(10, 0, 9, 0), 24, GW);
        c.overlay = Some(OverlayConfig { vni: 42, encrypted });
        c.icc = icc;
        c.mtu = 1450;
        let net = ms.switch.add_network(c).unwrap();
        let port = ms
            .switch
            .add_port(PortConfig::endpoint("ep", net, build::mac(mac), ip))
            .unwrap();
        Host { ms, net, port }
    }

    /// A and B, each knowing the other's endpoint and VTEP.
    fn pair(encrypted: bool, icc: bool) -> (Host, Host) {
        let a = host(1, IP_A, encrypted, icc);
        let b = host(2, IP_B, encrypted, icc);
        a.ms.switch.set_peers(a.net, &[VTEP_B]).unwrap();
        b.ms.switch.set_peers(b.net, &[VTEP_A]).unwrap();
        a.ms.switch
            .add_remote(a.net, build::mac(2), IP_B, None, VTEP_B)
            .unwrap();
        b.ms.switch
            .add_remote(b.net, build::mac(1), IP_A, None, VTEP_A)
            .unwrap();
        if encrypted {
            let keys = [(0x1000, [5u8; esp::KEY_LEN])];
            a.ms.switch.set_esp_keys(a.net, &keys, 0x1000).unwrap();
            b.ms.switch.set_esp_keys(b.net, &keys, 0x1000).unwrap();
        }
        (a, b)
    }

    /// Encapsulates what `h` sent on tunnel ports: (VTEP, wire bytes).
    fn encap_all(h: &Host, sent: &[Sent]) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let topo = h.ms.switch.topology();
        sent.iter()
            .filter_map(|s| {
                let p = topo.port(s.port)?;
                let e = topo.egress(p).ok()?;
                let mut slot = vec![0u8; 2048];
                let r = e.encap(&s.frame, &mut slot).unwrap();
                Some((e.remote, slot[r].to_vec()))
            })
            .collect()
    }

    fn rx_vxlan(h: &mut Host, from: SocketAddrV4, d: &[u8]) -> Vec<Sent> {
        let mut tx = MemTx::default();
        let cx = h.ms.worker.begin(0);
        h.ms.worker.process_vxlan(&cx, from, d, &mut tx);
        h.ms.worker.flush_tunnel(&cx, &mut tx);
        tx.sent
    }

    /// An ESP packet as the raw socket gives it (IPv4 header in front).
    fn rx_esp(h: &mut Host, from: SocketAddrV4, esp_pkt: &[u8]) -> Vec<Sent> {
        let mut p = vec![0u8; 20 + esp_pkt.len()];
        ipv4::emit_header(&mut p, *from.ip(), *VTEP_B.ip(), 50, esp_pkt.len(), 64);
        p[20..].copy_from_slice(esp_pkt);
        let mut tx = MemTx::default();
        let cx = h.ms.worker.begin(0);
        h.ms.worker.process_esp(&cx, &mut p, &mut tx);
        h.ms.worker.flush_tunnel(&cx, &mut tx);
        tx.sent
    }

    fn ping(from: u32, to: u32, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        build::icmp_echo(
            false,
            build::mac(to),
            build::mac(from),
            src,
            dst,
            1,
            1,
            b"x",
        )
    }

    #[test]
    fn unicast_is_encapsulated_and_decapsulated() {
        let (mut a, mut b) = pair(false, true);
        let f = ping(1, 2, IP_A, IP_B);
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        assert_eq!(sent.len(), 1);
        let wire = encap_all(&a, &sent);
        assert_eq!(wire.len(), 1);
        let (to, d) = &wire[0];
        assert_eq!(*to, VTEP_B);
        let v = VxlanPacket::new_checked(&d[..]).unwrap();
        assert_eq!((v.flags(), v.vni(), v.payload()), (0x08, 42, &f[..]));
        let got = rx_vxlan(&mut b, VTEP_A, d);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].port, &got[0].frame), (b.port, &f));
        assert_eq!(b.ms.switch.tunnel_stats().rx_packets, 1);
    }

    #[test]
    fn proxy_arp_answers_for_remote_endpoints() {
        let (mut a, _b) = pair(false, true);
        let req = build::arp_request(build::mac(1), IP_A, IP_B);
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &req);
        assert_eq!(sent.len(), 1, "answered, not flooded");
        assert_eq!(sent[0].port, a.port);
        let e = EthernetFrame::new_checked(&sent[0].frame[..]).unwrap();
        let p = ArpPacket::new_checked(e.payload()).unwrap();
        assert_eq!(p.operation(), ArpOp::Reply);
        assert_eq!((p.sender_hw(), p.sender_ip()), (build::mac(2), IP_B));
        // An address nobody registered is flooded to the peers.
        let req = build::arp_request(build::mac(1), IP_A, Ipv4Addr::new(10, 0, 9, 77));
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &req);
        assert_eq!(sent.len(), 1);
        assert_ne!(sent[0].port, a.port);
    }

    #[test]
    fn broadcast_is_replicated_to_every_peer_once() {
        let (a, _b) = pair(false, true);
        let mut a = a;
        a.ms.switch.set_peers(a.net, &[VTEP_B, VTEP_C]).unwrap();
        let f = build::udp(
            EthernetAddress::BROADCAST,
            build::mac(1),
            (IP_A, 5),
            (Ipv4Addr::new(10, 0, 9, 255), 6),
            b"hi",
        );
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        let mut to: Vec<_> = encap_all(&a, &sent).into_iter().map(|(t, _)| t).collect();
        to.sort();
        assert_eq!(to, vec![VTEP_B, VTEP_C]);
        // Peers are replaced: C leaves; B stays while its endpoint does.
        a.ms.switch.set_peers(a.net, &[]).unwrap();
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        let to: Vec<_> = encap_all(&a, &sent).into_iter().map(|(t, _)| t).collect();
        assert_eq!(to, vec![VTEP_B]);
    }

    #[test]
    fn split_horizon_and_learning_from_unknown_vteps() {
        let (_a, mut b) = pair(false, true);
        b.ms.switch.set_peers(b.net, &[VTEP_A, VTEP_C]).unwrap();
        // A kernel vxlan device at 192.0.2.9 (no peer) broadcasts an ARP
        // request: flooded to the local endpoint only (not to A or C).
        let k = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 40000);
        let kmac = build::mac(0x99);
        let kip = Ipv4Addr::new(10, 0, 9, 99);
        let mut d = vec![0u8; 8];
        vxlan::emit_header(&mut d, 42);
        d.extend(build::arp_request(kmac, kip, IP_B));
        let got = rx_vxlan(&mut b, k, &d);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].port, b.port);
        // Its MAC is learned behind a new tunnel port towards its address
        // and the VXLAN port: the reply is tunnelled there.
        let reply = build::arp(ArpOp::Reply, kmac, build::mac(2), IP_B, kmac, kip);
        let sent = b.ms.inject(0, b.port, VnetHdr::default(), &reply);
        let wire = encap_all(&b, &sent);
        assert_eq!(wire.len(), 1);
        assert_eq!(wire[0].0, SocketAddrV4::new(*k.ip(), 4789));
        let topo = b.ms.switch.topology();
        assert!(
            topo.tunnel_port(b.net, *k.ip())
                .unwrap()
                .config
                .tunnel
                .unwrap()
                .learned
        );
    }

    /// A TCP segment from the kernel's side (10.0.9.99) to B's endpoint,
    /// its checksum complete or, as a Linux `vxlan` device leaves it
    /// when the datagram does not leave the machine, partial.
    fn kernel_tcp(partial: bool) -> Vec<u8> {
        kernel_tcp_sized(partial, 100)
    }

    /// A TCP segment 40000 -> 8080 (ACK, PSH) with `payload` bytes of 7
    /// and its checksum field zero.
    fn tcp_segment(payload: usize) -> Vec<u8> {
        let mut tcp = vec![0u8; 20 + payload];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = wire::tcp::flags::ACK | wire::tcp::flags::PSH;
        tcp[20..].fill(7);
        tcp
    }

    /// A TCP segment from a kernel's container at 10.0.9.99 with
    /// `payload` bytes of 7, its checksum partial or complete.
    fn kernel_tcp_sized(partial: bool, payload: usize) -> Vec<u8> {
        use crate::wire::TcpPacket;
        let kip = Ipv4Addr::new(10, 0, 9, 99);
        let mut tcp = tcp_segment(payload);
        let mut t = TcpPacket::new_unchecked(&mut tcp[..]);
        if partial {
            t.set_partial_checksum(kip, IP_B, 20 + payload);
        } else {
            t.fill_checksum(kip, IP_B);
        }
        build::ipv4(build::mac(2), build::mac(0x99), kip, IP_B, 6, &tcp)
    }

    #[test]
    fn partial_checksums_from_a_kernel_vtep_reach_the_endpoint_as_needs_csum() {
        use crate::wire::TcpPacket;
        let (_a, mut b) = pair(false, true);
        let k = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 40000);
        let kip = Ipv4Addr::new(10, 0, 9, 99);
        for partial in [true, false] {
            let f = kernel_tcp(partial);
            let mut d = vec![0u8; 8];
            vxlan::emit_header(&mut d, 42);
            d.extend_from_slice(&f);
            let got = rx_vxlan(&mut b, k, &d);
            assert_eq!(got.len(), 1, "partial: {partial}");
            assert_eq!((got[0].port, &got[0].frame), (b.port, &f));
            let m = got[0].meta;
            if !partial {
                assert_eq!(m, VnetHdr::default());
                continue;
            }
            assert_eq!(
                (m.flags, m.csum_start, m.csum_offset, m.is_gso()),
                (wire::vnet::F_NEEDS_CSUM, 34, 16, false)
            );
            // Completed (as the TAP's kernel or the tunnel's segmentation
            // does), it is the segment with its full checksum.
            let mut buf = vec![0u8; 2048];
            let mut out = Vec::new();
            crate::gso::for_each_segment(&m, &got[0].frame, &mut buf, |s| out.push(s.to_vec()))
                .unwrap();
            assert_eq!(out, vec![kernel_tcp(false)]);
            let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
            assert!(TcpPacket::new_checked(ip.payload())
                .unwrap()
                .verify_checksum(kip, IP_B));
        }
        // UDP too; other protocols and fragments stay plain.
        let mut u = build::udp(build::mac(2), build::mac(0x99), (kip, 5), (IP_B, 6), b"hi");
        let partial = !wire::checksum_finish(wire::pseudo_header_sum(kip, IP_B, 17, 10));
        u[40..42].copy_from_slice(&partial.to_be_bytes());
        let m = inner_meta(&u);
        assert_eq!((m.flags, m.csum_start, m.csum_offset), (1, 34, 6));
        u[20] = 0x20; // more fragments
        assert_eq!(inner_meta(&u), VnetHdr::default());
        assert_eq!(inner_meta(&ping(1, 2, IP_A, IP_B)), VnetHdr::default());
        assert_eq!(inner_meta(&kernel_tcp(true)[..40]), VnetHdr::default());
    }

    /// A kernel VTEP in another namespace of the same machine hands over
    /// a whole TSO super-frame in one datagram (UDP-tunnel GSO through a
    /// veth), its checksum partial: it reaches the endpoint as
    /// `GSO_TCPV4` cut to the network's frames, and its segments carry
    /// the payload with complete checksums. The same frame with a
    /// complete checksum is no super-frame of the kernel's: dropped as
    /// oversize.
    #[test]
    fn a_kernel_vteps_super_frame_goes_on_as_gso() {
        use crate::wire::TcpPacket;
        let (_a, mut b) = pair(false, true);
        let max = b.ms.switch.topology().network(b.net).unwrap().max_frame;
        let k = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 40000);
        let kip = Ipv4Addr::new(10, 0, 9, 99);
        let datagram = |partial| {
            let mut d = vec![0u8; 8];
            vxlan::emit_header(&mut d, 42);
            d.extend_from_slice(&kernel_tcp_sized(partial, 4000));
            d
        };
        let got = rx_vxlan(&mut b, k, &datagram(true));
        assert_eq!(got.len(), 1);
        let m = got[0].meta;
        assert_eq!(
            (m.gso_type, m.flags, m.csum_start, m.csum_offset, m.hdr_len),
            (wire::vnet::GSO_TCPV4, wire::vnet::F_NEEDS_CSUM, 34, 16, 54)
        );
        assert_eq!(usize::from(m.gso_size), max - 54);
        let mut buf = vec![0u8; 4096];
        let mut payload = 0;
        crate::gso::for_each_segment(&m, &got[0].frame, &mut buf, |seg| {
            assert!(seg.len() <= max, "{} > {max}", seg.len());
            let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(t.verify_checksum(kip, IP_B));
            assert!(t.payload().iter().all(|&x| x == 7));
            payload += t.payload().len();
        })
        .unwrap();
        assert_eq!(payload, 4000);
        assert!(rx_vxlan(&mut b, k, &datagram(false)).is_empty());
        assert_eq!(tunnel_drops(&b, DropReason::Oversize), 1);
    }

    /// IPv6 from a kernel VTEP as IPv4: a partial checksum is taken as
    /// `NEEDS_CSUM`, a complete one leaves the frame plain, and a
    /// super-frame goes on as `GSO_TCPV6` whose segments fit and verify.
    #[test]
    fn ipv6_partial_checksums_and_super_frames_from_a_kernel_vtep() {
        use wire::vnet::{F_NEEDS_CSUM, GSO_TCPV6};
        let (src, dst) = (IP6_A, IP6_B);
        let frame = |payload: usize, partial: bool| {
            let mut tcp = tcp_segment(payload);
            let c = if partial {
                !wire::checksum_finish(ipv6::pseudo_header_sum(src, dst, 6, tcp.len()))
            } else {
                ipv6::upper_checksum(src, dst, 6, &tcp)
            };
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            build::ipv6(build::mac(2), build::mac(0x99), src, dst, 6, 64, &tcp, None)
        };
        let m = inner_meta(&frame(100, true));
        assert_eq!(
            (m.flags, m.csum_start, m.csum_offset, m.is_gso()),
            (F_NEEDS_CSUM, 54, 16, false)
        );
        assert_eq!(inner_meta(&frame(100, false)), VnetHdr::default());
        let big = frame(4000, true);
        let m = superframe_meta(inner_meta(&big), &big, 1514);
        assert_eq!((m.gso_type, m.hdr_len, m.gso_size), (GSO_TCPV6, 74, 1440));
        let mut buf = vec![0u8; 4096];
        let mut payload = 0;
        crate::gso::for_each_segment(&m, &big, &mut buf, |seg| {
            assert!(seg.len() <= 1514);
            assert_eq!(ipv6::upper_checksum(src, dst, 6, &seg[54..]), 0);
            payload += seg.len() - 74;
        })
        .unwrap();
        assert_eq!(payload, 4000);
        // A plain frame of that size is not taken for one.
        let plain = frame(4000, false);
        assert_eq!(
            superframe_meta(inner_meta(&plain), &plain, 1514),
            VnetHdr::default()
        );
    }

    #[test]
    fn bad_header_unknown_vni_and_spoofed_remote_are_dropped() {
        let (_a, mut b) = pair(false, true);
        let f = ping(1, 2, IP_A, IP_B);
        let mut d = vec![0u8; 8];
        vxlan::emit_header(&mut d, 43);
        d.extend_from_slice(&f);
        assert!(rx_vxlan(&mut b, VTEP_A, &d).is_empty());
        d[0] = 0;
        assert!(rx_vxlan(&mut b, VTEP_A, &d).is_empty());
        assert!(rx_vxlan(&mut b, VTEP_A, &d[..5]).is_empty());
        let st = b.ms.switch.tunnel_stats();
        assert_eq!(st.drop_count(DropReason::VxlanUnknownVni), 1);
        assert_eq!(st.drop_count(DropReason::VxlanBadHeader), 2);
        // A's endpoint's MAC from C's VTEP: spoofed.
        vxlan::emit_header(&mut d, 42);
        assert!(rx_vxlan(&mut b, VTEP_C, &d).is_empty());
        // ... and from A with another address.
        let mut d2 = d[..8].to_vec();
        d2.extend(ping(1, 2, Ipv4Addr::new(10, 0, 9, 50), IP_B));
        assert!(rx_vxlan(&mut b, VTEP_A, &d2).is_empty());
        assert_eq!(tunnel_drops(&b, DropReason::TunnelSpoofed), 2);
        assert_eq!(rx_vxlan(&mut b, VTEP_A, &d).len(), 1);
    }

    const IP6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 2);
    const IP6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 3);

    /// A host with a dual-stack overlay (VNI 42, 2001:db8:9::/64) and one
    /// endpoint (`mac`, `ip`, `ip6`).
    fn host6(mac: u32, ip: Ipv4Addr, ip6: Ipv6Addr) -> Host {
        let ms = MemSwitch::new(SwitchConfig::default());
        let mut c = NetworkConfig::new("ov", Ipv4Addr::new(10, 0, 9, 0), 24, GW);
        c.overlay = Some(OverlayConfig {
            vni: 42,
            encrypted: false,
        });
        c.mtu = 1450;
        c.v6 = Some(crate::topology::Ipv6Config {
            subnet: Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 0),
            prefix_len: 64,
            gateway: Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1),
        });
        let net = ms.switch.add_network(c).unwrap();
        let mut pc = PortConfig::endpoint("ep", net, build::mac(mac), ip);
        pc.ip6 = Some(ip6);
        let port = ms.switch.add_port(pc).unwrap();
        Host { ms, net, port }
    }

    fn pair6() -> (Host, Host) {
        let a = host6(1, IP_A, IP6_A);
        let b = host6(2, IP_B, IP6_B);
        a.ms.switch.set_peers(a.net, &[VTEP_B]).unwrap();
        b.ms.switch.set_peers(b.net, &[VTEP_A]).unwrap();
        a.ms.switch
            .add_remote(a.net, build::mac(2), IP_B, Some(IP6_B), VTEP_B)
            .unwrap();
        b.ms.switch
            .add_remote(b.net, build::mac(1), IP_A, Some(IP6_A), VTEP_A)
            .unwrap();
        (a, b)
    }

    fn ping6(from: u32, to: u32, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        build::icmpv6_echo(
            false,
            build::mac(to),
            build::mac(from),
            src,
            dst,
            1,
            1,
            b"x",
        )
    }

    fn tunnel_drops(h: &Host, r: DropReason) -> u64 {
        let topo = h.ms.switch.topology();
        topo.ports()
            .filter(|p| p.is_tunnel())
            .map(|p| p.counters.sum().drop_count(r))
            .sum()
    }

    #[test]
    fn ipv6_crosses_the_tunnel_with_proxy_nd_and_anti_spoofing() {
        let (mut a, mut b) = pair6();
        // Proxy ND: A's solicitation for B's address is answered by A's
        // switch with B's MAC (not a router's advertisement).
        let ns = build::neighbor_solicit(build::mac(1), IP6_A, IP6_B);
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &ns);
        assert_eq!(sent.len(), 1, "answered, not flooded");
        assert_eq!(sent[0].port, a.port);
        let e = EthernetFrame::new_checked(&sent[0].frame[..]).unwrap();
        assert_eq!(e.src_addr(), build::mac(2));
        let ip = wire::Ipv6Packet::new_checked(e.payload()).unwrap();
        let nd = wire::ipv6::parse_nd(ip.payload()).unwrap().unwrap();
        assert_eq!(nd.msg_type, wire::ipv6::icmpv6::NEIGHBOR_ADVERT);
        assert_eq!((nd.target, nd.lladdr), (IP6_B, Some(build::mac(2).0)));
        assert_eq!(ip.payload()[4] & wire::ipv6::icmpv6::NA_ROUTER, 0);
        assert_eq!(
            wire::ipv6::upper_checksum(IP6_B, IP6_A, 58, ip.payload()),
            0
        );
        // An address nobody registered: the solicitation (multicast) is
        // carried to the peers.
        let other: Ipv6Addr = "2001:db8:9::77".parse().unwrap();
        let ns = build::neighbor_solicit(build::mac(1), IP6_A, other);
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &ns);
        assert_eq!(sent.len(), 1);
        assert_ne!(sent[0].port, a.port);
        let wire = encap_all(&a, &sent);
        assert_eq!(wire[0].0, VTEP_B);
        assert_eq!(
            rx_vxlan(&mut b, VTEP_A, &wire[0].1).len(),
            1,
            "flooded on B"
        );

        // Unicast IPv6 across, both ways.
        let f = ping6(1, 2, IP6_A, IP6_B);
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        let wire = encap_all(&a, &sent);
        assert_eq!(wire.len(), 1);
        let got = rx_vxlan(&mut b, VTEP_A, &wire[0].1);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].port, &got[0].frame), (b.port, &f));
        // From A's VTEP with A's MAC, its link-local address passes...
        let mut d = vec![0u8; 8];
        vxlan::emit_header(&mut d, 42);
        let ll = crate::topology::link_local_of(build::mac(1));
        let mut d1 = d.clone();
        d1.extend(ping6(1, 2, ll, IP6_B));
        assert_eq!(rx_vxlan(&mut b, VTEP_A, &d1).len(), 1);
        // ... a forged source does not, nor an advertisement for B's
        // address, nor A's MAC from another VTEP.
        let mut d2 = d.clone();
        d2.extend(ping6(1, 2, "2001:db8:9::66".parse().unwrap(), IP6_B));
        assert!(rx_vxlan(&mut b, VTEP_A, &d2).is_empty());
        let mut d3 = d.clone();
        d3.extend(build::neighbor_advert(
            build::mac(2),
            build::mac(1),
            IP6_A,
            IP6_B,
            IP6_B,
            build::mac(1),
        ));
        assert!(rx_vxlan(&mut b, VTEP_A, &d3).is_empty());
        let mut d4 = d.clone();
        d4.extend(ping6(1, 2, IP6_A, IP6_B));
        assert!(rx_vxlan(&mut b, VTEP_C, &d4).is_empty());
        assert_eq!(tunnel_drops(&b, DropReason::TunnelSpoofed), 3);
        // Forgotten, A's addresses are no longer proxied.
        a.ms.switch.remove_remote(a.net, build::mac(2)).unwrap();
        assert!(a.ms.switch.topology().remote_mac6(a.net, IP6_B).is_none());
    }

    #[test]
    fn icc_off_applies_across_hosts() {
        let (mut a, mut b) = pair(false, false);
        let f = ping(1, 2, IP_A, IP_B);
        assert!(a.ms.inject(0, a.port, VnetHdr::default(), &f).is_empty());
        let mut d = vec![0u8; 8];
        vxlan::emit_header(&mut d, 42);
        d.extend_from_slice(&f);
        assert!(rx_vxlan(&mut b, VTEP_A, &d).is_empty());
        let topo = b.ms.switch.topology();
        let p = topo.tunnel_port(b.net, *VTEP_A.ip()).unwrap();
        assert_eq!(p.counters.sum().drop_count(DropReason::IccDisabled), 1);
    }

    #[test]
    fn encrypted_overlay_uses_esp_only() {
        let (mut a, mut b) = pair(true, true);
        let f = ping(1, 2, IP_A, IP_B);
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        let wire = encap_all(&a, &sent);
        assert_eq!(wire.len(), 1);
        let pkt = wire[0].1.clone();
        assert_eq!(esp::spi_of(&pkt), Some(0x1000));
        assert!(!pkt.windows(f.len()).any(|w| w == &f[..]), "in clear");
        let got = rx_esp(&mut b, VTEP_A, &pkt);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].frame, f);
        // Replayed: dropped.
        assert!(rx_esp(&mut b, VTEP_A, &pkt).is_empty());
        // Plain VXLAN for the encrypted network: dropped.
        let mut d = vec![0u8; 8];
        vxlan::emit_header(&mut d, 42);
        d.extend_from_slice(&f);
        assert!(rx_vxlan(&mut b, VTEP_A, &d).is_empty());
        // Wrong key on A: dropped by B.
        a.ms.switch
            .set_esp_keys(a.net, &[(0x1000, [6u8; esp::KEY_LEN])], 0x1000)
            .unwrap();
        // (The new SA starts at sequence 1, which B saw: send two.)
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        let _ = encap_all(&a, &sent);
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        let bad = encap_all(&a, &sent).remove(0).1;
        assert!(rx_esp(&mut b, VTEP_A, &bad).is_empty());
        // Unknown SPI.
        a.ms.switch
            .set_esp_keys(a.net, &[(0x2000, [5u8; esp::KEY_LEN])], 0x2000)
            .unwrap();
        let sent = a.ms.inject(0, a.port, VnetHdr::default(), &f);
        let other = encap_all(&a, &sent).remove(0).1;
        assert!(rx_esp(&mut b, VTEP_A, &other).is_empty());
        let st = b.ms.switch.tunnel_stats();
        assert_eq!(st.drop_count(DropReason::EspReplay), 1);
        assert_eq!(st.drop_count(DropReason::VxlanUnencrypted), 1);
        assert_eq!(st.drop_count(DropReason::EspAuthFailed), 1);
        assert_eq!(st.drop_count(DropReason::EspUnknownSpi), 1);
        // No keys: nothing leaves.
        a.ms.switch.set_esp_keys(a.net, &[], 0).unwrap();
        let topo = a.ms.switch.topology();
        let p = topo.tunnel_port(a.net, *VTEP_B.ip()).unwrap();
        assert_eq!(topo.egress(p).unwrap_err(), DropReason::EspNoKey);
    }

    #[test]
    fn key_rotation_keeps_state_and_validates() {
        let (a, _b) = pair(true, true);
        let sw = &a.ms.switch;
        let k1 = (0x1000, [5u8; esp::KEY_LEN]);
        let k2 = (0x2000, [7u8; esp::KEY_LEN]);
        let before = sw.topology().spis.get(&0x1000).unwrap().sa.clone();
        sw.set_esp_keys(a.net, &[k1, k2], 0x2000).unwrap();
        let t = sw.topology();
        assert!(Arc::ptr_eq(&t.spis.get(&0x1000).unwrap().sa, &before));
        assert_eq!(
            t.network(a.net).unwrap().tx_sa.as_ref().unwrap().spi(),
            0x2000
        );
        assert!(sw.set_esp_keys(a.net, &[k1], 0x2000).is_err());
        assert!(sw.set_esp_keys(a.net, &[(5, [0; 20])], 5).is_err());
        assert!(sw.set_esp_keys(a.net, &[k1, k1], 0x1000).is_err());
    }

    #[test]
    fn vni_is_unique_and_network_removal_takes_tunnels() {
        let a = host(1, IP_A, false, true);
        let mut c = NetworkConfig::new("ov2", Ipv4Addr::new(10, 0, 8, 0), 24, GW);
        c.overlay = Some(OverlayConfig {
            vni: 42,
            encrypted: false,
        });
        assert!(a.ms.switch.add_network(c).is_err());
        a.ms.switch.set_peers(a.net, &[VTEP_B]).unwrap();
        assert_eq!(
            a.ms.switch.remove_network(a.net),
            Err(ConfigError::NetworkInUse)
        );
        a.ms.switch.remove_port(a.port).unwrap();
        a.ms.switch.remove_network(a.net).unwrap();
        assert!(a.ms.switch.topology().vnis.is_empty());
        assert_eq!(a.ms.switch.topology().ports().count(), 0);
    }

    #[test]
    fn flow_port_is_stable_and_in_range() {
        let f = ping(1, 2, IP_A, IP_B);
        let p = flow_port(&f);
        assert!((32768..61000).contains(&p));
        assert_eq!(p, flow_port(&f));
        assert!((32768..61000).contains(&flow_port(&[])));
    }
}

//! The per-frame pipeline, run to completion by one worker:
//!
//! parse → ingress checks (runt, VLAN, source MAC, anti-spoofing, L3
//! sanity) → MAC learning (with the per-port limit) → MTU → addressed to the
//! gateway: ARP / ICMP echo / [`GatewayHook`] (DNS, NAT) → FDB lookup or
//! flood within the ingress port's network → egress policy (ICC, network
//! check) → capture hooks → [`Transmit`].
//!
//! Contract:
//! - Never panics, whatever the bytes (fuzzed).
//! - No allocation, lock or syscall: the snapshot and FDB are loaded once
//!   per batch ([`Worker::begin`]); replies are built in a scratch buffer
//!   owned by the worker.
//! - A frame leaves only on ports of the ingress port's network.
//! - Every frame that is not transmitted anywhere is counted under exactly
//!   one [`DropReason`] on its ingress port.
//! - One egress stage: every frame that leaves on a port passes
//!   `Worker::send` (tx counters of the port, then the egress capture
//!   hook), whether the pipeline switched it, built it (gateway ARP/ICMP,
//!   a hook's reply) or a service made it off the fast path and handed it
//!   to this worker ([`Worker::transmit_injected`]: the NAT's frames, the
//!   DNS forwarder's answers).
//! - Zero-copy hand-off: a hook that keeps a frame for another thread
//!   answers [`HookVerdict::Claimed`]; [`Worker::process`] then returns
//!   [`Processed::Claimed`] and the caller passes the buffer the frame was
//!   read into to [`Worker::hand_over`], which trades it with the hook for
//!   an empty one ([`GatewayHook::claim_buffer`]). The frame is never
//!   copied.

use crate::capture::CaptureHook;
use crate::counters::DropReason;
use crate::fdb::{self, Fdb, Learned};
use crate::topology::{link_local_of, Network, Port, PortId, Switch, Topology};
use crate::wire::{
    arp::{ArpOp, ArpRepr},
    ethernet, icmp, ipv4,
    ipv6::{self, icmpv6},
    ArpPacket, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, Ipv6Packet, VnetHdr,
};
use arc_swap::Guard;
use core::net::{Ipv4Addr, Ipv6Addr};
use core::sync::atomic::Ordering;
use std::sync::Arc;

mod segment;

/// Where frames go out: implemented by the I/O edge (TAP queues) and by
/// in-memory ports.
pub trait Transmit {
    /// Sends `frame` (with its virtio-net metadata) on `port`. An error is
    /// counted on the egress port under the returned reason.
    fn transmit(&mut self, port: &Port, meta: &VnetHdr, frame: &[u8]) -> Result<(), DropReason>;
}

/// What a [`GatewayHook`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookVerdict {
    /// Taken (queued to a service); nothing to send now.
    Consumed,
    /// Taken whole: the hook wants the buffer the frame lives in (see
    /// [`GatewayHook::claim_buffer`]); nothing to send now.
    Claimed,
    /// Answer written to `scratch[..len]`: send it back on the ingress port.
    Reply(usize),
    /// Like [`HookVerdict::Reply`], with virtio-net metadata for the
    /// frame: e.g. a TCP super-frame (`GSO_TCPV4`, `NEEDS_CSUM`) that the
    /// TAP segments into `gso_size` pieces, when a hook's answer is
    /// larger than one segment but a hook returns one frame.
    ReplyWith(usize, VnetHdr),
    /// Not for this hook: the switch drops it (`no_route` or
    /// `gateway_unsupported`).
    Pass,
    /// Dropped by the hook for this reason.
    Drop(DropReason),
}

/// What a hook knows about the frame's origin.
pub struct HookCx<'a> {
    pub network: &'a Network,
    pub port: &'a Port,
    pub now_ns: u64,
}

/// Services behind the gateway MAC beyond ARP and ping: the inline DNS
/// responder and the NAT/routing gateway plug in here (one instance per
/// worker). Called only for IPv4 frames addressed to the gateway MAC that
/// the built-in services did not consume, after all ingress checks.
pub trait GatewayHook {
    fn handle(
        &mut self,
        cx: &HookCx<'_>,
        meta: &VnetHdr,
        frame: &[u8],
        scratch: &mut [u8],
    ) -> HookVerdict;

    /// After `handle` answered [`HookVerdict::Claimed`]: `buf` is the
    /// buffer the frame was read into, the frame at `buf[offset..][..len]`
    /// (`len` as `handle` saw it). The hook keeps it and returns an empty
    /// buffer of the same size for the caller's next read (or, when it
    /// cannot keep it, `buf` itself: the frame is then dropped by the
    /// hook, which counts it). The default keeps nothing.
    fn claim_buffer(&mut self, buf: Box<[u8]>, offset: usize) -> Box<[u8]> {
        let _ = offset;
        buf
    }
}

/// What became of a frame given to [`Worker::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processed {
    /// Transmitted, answered, queued to a service or dropped (counted):
    /// the caller's buffer is free again.
    Done,
    /// A hook claimed the frame: pass its buffer to [`Worker::hand_over`]
    /// before reading into it again.
    Claimed,
}

/// The hook of a switch with no services: passes everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHook;

impl GatewayHook for NoHook {
    fn handle(&mut self, _: &HookCx<'_>, _: &VnetHdr, _: &[u8], _: &mut [u8]) -> HookVerdict {
        HookVerdict::Pass
    }
}

/// Size of a worker's scratch buffer: the largest reply it can build (an
/// echo reply to a 64 KiB ping).
pub const SCRATCH_LEN: usize = 65536 + 64;

/// The snapshot and FDB a worker uses for one batch of frames.
pub struct BatchCx {
    pub(crate) topo: Guard<Arc<Topology>>,
    fdb: Guard<Arc<Fdb>>,
    pub(crate) now_ns: u64,
    now_secs: u32,
}

impl BatchCx {
    pub fn topology(&self) -> &Topology {
        &self.topo
    }
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }
}

/// One worker's pipeline state. Not shared: each worker thread has its own.
pub struct Worker<H: GatewayHook = NoHook> {
    pub(crate) sw: Arc<Switch>,
    pub(crate) id: usize,
    hook: H,
    scratch: Box<[u8]>,
    /// The hook answered [`HookVerdict::Claimed`] for the current frame.
    claimed: bool,
    /// Receive coalescing of tunnelled TCP ([`crate::gro`]); `None` only
    /// while [`Worker::flush_tunnel`] runs what it held.
    pub(crate) gro: Option<crate::gro::Gro>,
}

/// What kind of L3 payload a frame carries (for the ICC rule).
#[derive(Clone, Copy, PartialEq, Eq)]
enum L3 {
    Arp,
    Ip,
    Other,
}

impl Worker<NoHook> {
    pub fn new(sw: Arc<Switch>, id: usize) -> Self {
        Worker::with_hook(sw, id, NoHook)
    }
}

impl<H: GatewayHook> Worker<H> {
    pub fn with_hook(sw: Arc<Switch>, id: usize, hook: H) -> Self {
        Worker {
            sw,
            id,
            hook,
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            claimed: false,
            gro: Some(crate::gro::Gro::new()),
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn hook_mut(&mut self) -> &mut H {
        &mut self.hook
    }

    /// Hands the buffer of the frame the last [`Worker::process`] call
    /// reported [`Processed::Claimed`] for (the frame at
    /// `buf[offset..]`) to the hook that claimed it; `buf` becomes the
    /// empty buffer the hook gave back.
    #[inline]
    pub fn hand_over(&mut self, buf: &mut Box<[u8]>, offset: usize) {
        let full = core::mem::take(buf);
        *buf = self.hook.claim_buffer(full, offset);
    }

    /// Sends a frame made off the fast path (by the NAT thread, the DNS
    /// forwarder) on `port` through the same egress stage as switched
    /// frames: the port's tx counters of this worker, the egress capture
    /// hook, [`Transmit`]. A port the snapshot no longer has counts
    /// `unknown_port` on the worker.
    #[inline]
    pub fn transmit_injected<T: Transmit>(
        &self,
        cx: &BatchCx,
        port: PortId,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) {
        let topo: &Topology = &cx.topo;
        match topo.port(port) {
            Some(out) => self.send(topo, out, meta, frame, tx),
            None => self
                .sw
                .worker_drops
                .count_drop(self.id, DropReason::UnknownPort),
        }
    }

    pub fn switch(&self) -> &Arc<Switch> {
        &self.sw
    }

    /// Loads the snapshot for a batch. `now_ns` is a monotonic clock in
    /// nanoseconds (aging works in whole seconds of it).
    #[inline]
    pub fn begin(&self, now_ns: u64) -> BatchCx {
        BatchCx {
            topo: self.sw.topo.load(),
            fdb: self.sw.fdb.load(),
            now_ns,
            now_secs: (now_ns / 1_000_000_000) as u32,
        }
    }

    /// Runs one frame that entered on `ingress` through the pipeline.
    #[inline]
    pub fn process<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        ingress: PortId,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) -> Processed {
        let topo: &Topology = &cx.topo;
        let Some(port) = topo.port(ingress) else {
            self.sw
                .worker_drops
                .count_drop(self.id, DropReason::UnknownPort);
            return Processed::Done;
        };
        port.counters.slot(self.id).count_rx(frame.len());
        if let Some(c) = &topo.capture {
            c.on_ingress(port, meta, frame);
        }
        match self.forward(cx, port, meta, frame, tx) {
            Ok(()) if self.claimed => {
                self.claimed = false;
                Processed::Claimed
            }
            Ok(()) => Processed::Done,
            Err(reason) => {
                port.counters.slot(self.id).count_drop(reason);
                if let Some(c) = &topo.capture {
                    c.on_drop(port, meta, frame, reason);
                }
                Processed::Done
            }
        }
    }

    #[inline(always)]
    fn forward<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        port: &Port,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) -> Result<(), DropReason> {
        let topo: &Topology = &cx.topo;
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Runt)?;
        let ethertype = eth.ethertype();
        if ethertype == EtherType::Vlan {
            return Err(DropReason::VlanTagged);
        }
        let src = eth.src_addr();
        let dst = eth.dst_addr();
        // The destination's FDB bucket is requested now: with many MACs it
        // is rarely in the cache, and its miss then overlaps the checks and
        // the learning below instead of stalling the lookup.
        let dst_home = cx.fdb.prefetch(fdb::key(port.network().0, dst));
        if src.is_multicast() || src.is_zero() {
            return Err(DropReason::InvalidSrcMac);
        }
        let checked = port.is_checked();
        if checked && Some(src) != port.config.mac {
            return Err(DropReason::SpoofedMac);
        }
        let net = topo
            .network(port.network())
            .ok_or(DropReason::UnknownPort)?;
        let l3 = classify(port, checked, ethertype, eth.payload())?;
        let from_tunnel = port.is_tunnel();
        if from_tunnel {
            crate::tunnel::check_remote(topo, port, src, ethertype, eth.payload())?;
        }

        // A network on a parent interface: no learning, no gateway.
        if let Some(seg) = net.segment {
            return self.forward_segment(cx, port, net, seg, meta, frame, tx);
        }

        self.learn(cx, port, net, src)?;

        if !meta.is_gso() && frame.len() > net.max_frame {
            return Err(DropReason::Oversize);
        }

        if dst == net.gateway_mac {
            return self.handle_gateway(cx, port, net, ethertype, meta, frame, tx);
        }
        if dst.is_multicast() {
            if ethertype == EtherType::Arp
                && self.answer_arp(topo, net, eth.payload(), !from_tunnel)
            {
                return self.reply(cx, port, 60, &VnetHdr::default(), tx);
            }
            if ethertype == EtherType::Ipv6 {
                let proxy = (!from_tunnel).then_some(topo);
                if let Some(len) = self.answer_ns(proxy, net, meta, frame)? {
                    return self.reply(cx, port, len, &VnetHdr::default(), tx);
                }
            }
            return self.flood(cx, port, net, l3, meta, frame, tx);
        }
        // Other hosts' endpoints are pinned to their VTEP's tunnel port.
        let remote = match net.config.overlay {
            Some(_) => topo.remote(net.id, dst).and_then(|r| topo.port(r.port)),
            None => None,
        };
        let out = match remote {
            Some(out) => Some(out),
            None => cx
                .fdb
                .lookup_at(dst_home, cx.now_secs, self.sw.config.aging_secs)
                .and_then(|p| topo.port(PortId(p))),
        };
        match out {
            Some(out) if out.id == port.id => Err(DropReason::Hairpin),
            // Split horizon: what came from the overlay stays off it.
            Some(out) if from_tunnel && out.is_tunnel() => Err(DropReason::Hairpin),
            Some(out) => {
                if out.network() != port.network() {
                    return Err(DropReason::CrossNetwork);
                }
                if !net.config.icc && l3 == L3::Ip {
                    return Err(DropReason::IccDisabled);
                }
                self.send(topo, out, meta, frame, tx);
                Ok(())
            }
            None => self.flood(cx, port, net, l3, meta, frame, tx),
        }
    }

    #[inline(always)]
    fn learn(
        &self,
        cx: &BatchCx,
        port: &Port,
        net: &Network,
        src: EthernetAddress,
    ) -> Result<(), DropReason> {
        let key = fdb::key(net.id.0, src);
        let aging = self.sw.config.aging_secs;
        let pid = port.id.0;
        // Only when the FDB would add or move an entry (rare): a MAC
        // assigned to a spoof-checked port is never learned elsewhere, and
        // a port stays within its limit.
        let mut pinned = false;
        let may_add = || {
            if cx
                .topo
                .assigned_port(net.id, src)
                .is_some_and(|owner| owner != port.id)
            {
                pinned = true;
                return false;
            }
            port.learned.load(Ordering::Relaxed) < port.max_macs
        };
        match cx.fdb.learn_if(key, pid, cx.now_secs, aging, may_add) {
            Learned::Refused if pinned => return Err(DropReason::MacTaken),
            Learned::Refused => return Err(DropReason::MacLimit),
            Learned::Known => {}
            Learned::New => {
                port.learned.fetch_add(1, Ordering::Relaxed);
            }
            Learned::Moved { from } => {
                port.learned.fetch_add(1, Ordering::Relaxed);
                if let Some(old) = cx.topo.port(PortId(from)) {
                    let _ = old
                        .learned
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                }
            }
            Learned::Full => return Err(DropReason::FdbFull),
        }
        Ok(())
    }

    /// Transmits on one port and counts it there.
    #[inline(always)]
    fn send<T: Transmit>(
        &self,
        topo: &Topology,
        out: &Port,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) {
        let slot = out.counters.slot(self.id);
        match tx.transmit(out, meta, frame) {
            Ok(()) => {
                slot.count_tx(frame.len());
                if let Some(c) = &topo.capture {
                    c.on_egress(out, meta, frame);
                }
            }
            Err(reason) => {
                slot.count_drop(reason);
                if let Some(c) = &topo.capture {
                    c.on_egress_drop(out, meta, frame, reason);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn flood<T: Transmit>(
        &self,
        cx: &BatchCx,
        port: &Port,
        net: &Network,
        l3: L3,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) -> Result<(), DropReason> {
        let topo: &Topology = &cx.topo;
        if !net.config.icc && l3 == L3::Ip {
            // Every other port is an endpoint of this network.
            return Err(DropReason::IccDisabled);
        }
        let mut sent = false;
        let from_tunnel = port.is_tunnel();
        for &pid in &net.ports {
            if pid == port.id {
                continue;
            }
            let Some(out) = topo.port(pid) else { continue };
            // Split horizon: every host replicates to the others itself.
            if from_tunnel && out.is_tunnel() {
                continue;
            }
            self.send(topo, out, meta, frame, tx);
            sent = true;
        }
        if sent {
            Ok(())
        } else {
            Err(DropReason::NoDestination)
        }
    }

    /// Whether `arp` asks for the gateway's address (or, with `proxy`,
    /// for another host's endpoint on an overlay: proxy ARP); if so, the
    /// reply is left in the scratch buffer.
    fn answer_arp(&mut self, topo: &Topology, net: &Network, arp: &[u8], proxy: bool) -> bool {
        let Ok(p) = ArpPacket::new_checked(arp) else {
            return false;
        };
        if p.operation() != ArpOp::Request {
            return false;
        }
        let target = p.target_ip();
        let hw = if target == net.config.gateway {
            net.gateway_mac
        } else if proxy && net.config.overlay.is_some() {
            match topo.remote_mac(net.id, target) {
                Some(m) => m,
                None => return false,
            }
        } else {
            return false;
        };
        self.write_arp_reply(&p, hw);
        true
    }

    /// Writes the reply to ARP request `p` (its target address is at `hw`)
    /// to `scratch[..60]`.
    fn write_arp_reply(&mut self, p: &ArpPacket<&[u8]>, hw: EthernetAddress) {
        let target = p.target_ip();
        let req = ArpRepr::parse(p);
        let s = &mut self.scratch[..60];
        s.fill(0);
        let mut eth = EthernetFrame::new_unchecked(&mut s[..]);
        eth.set_dst_addr(req.sender_hw);
        eth.set_src_addr(hw);
        eth.set_ethertype(EtherType::Arp);
        ArpRepr {
            operation: ArpOp::Reply,
            sender_hw: hw,
            sender_ip: target,
            target_hw: req.sender_hw,
            target_ip: req.sender_ip,
        }
        .emit(eth.payload_mut());
    }

    /// Sends `scratch[..len]` back to the ingress port.
    fn reply<T: Transmit>(
        &self,
        cx: &BatchCx,
        port: &Port,
        len: usize,
        meta: &VnetHdr,
        tx: &mut T,
    ) -> Result<(), DropReason> {
        let frame = &self.scratch[..len];
        self.send(&cx.topo, port, meta, frame, tx);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn handle_gateway<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        port: &Port,
        net: &Network,
        ethertype: EtherType,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) -> Result<(), DropReason> {
        let payload = &frame[ethernet::HEADER_LEN..];
        match ethertype {
            EtherType::Arp => {
                if self.answer_arp(&cx.topo, net, payload, false) {
                    return self.reply(cx, port, 60, &VnetHdr::default(), tx);
                }
                // ARP replies to the gateway: it never asks, nothing to learn.
                Err(DropReason::GatewayUnsupported)
            }
            EtherType::Ipv4 => {
                let ip = Ipv4Packet::new_unchecked(payload);
                if ip.dst_addr() == net.config.gateway && ip.protocol() == ipv4::protocol::ICMP {
                    if let Some(len) = self.echo_reply(net, meta, frame)? {
                        return self.reply(cx, port, len, &VnetHdr::default(), tx);
                    }
                }
                let to_gateway = ip.dst_addr() == net.config.gateway;
                self.pass_to_hook(cx, port, net, meta, frame, to_gateway, tx)
            }
            EtherType::Ipv6 => {
                if let Some(len) = self.answer_ns(None, net, meta, frame)? {
                    return self.reply(cx, port, len, &VnetHdr::default(), tx);
                }
                if let Some(len) = self.echo6_reply(net, meta, frame)? {
                    return self.reply(cx, port, len, &VnetHdr::default(), tx);
                }
                let ip = Ipv6Packet::new_unchecked(payload);
                let to_gateway = is_gateway6(net, ip.dst_addr());
                self.pass_to_hook(cx, port, net, meta, frame, to_gateway, tx)
            }
            _ => Err(DropReason::GatewayUnsupported),
        }
    }

    /// Gives a frame for the gateway that the switch does not answer
    /// itself to the hook (DNS, NAT). Passed on, it is dropped as
    /// `GatewayUnsupported` when addressed to the gateway itself
    /// (`to_gateway`), else as `NoRoute`.
    #[allow(clippy::too_many_arguments)]
    fn pass_to_hook<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        port: &Port,
        net: &Network,
        meta: &VnetHdr,
        frame: &[u8],
        to_gateway: bool,
        tx: &mut T,
    ) -> Result<(), DropReason> {
        let hcx = HookCx {
            network: net,
            port,
            now_ns: cx.now_ns,
        };
        match self.hook.handle(&hcx, meta, frame, &mut self.scratch) {
            HookVerdict::Consumed => Ok(()),
            HookVerdict::Claimed => {
                self.claimed = true;
                Ok(())
            }
            HookVerdict::Reply(len) => {
                let len = len.min(self.scratch.len());
                self.reply(cx, port, len, &VnetHdr::default(), tx)
            }
            HookVerdict::ReplyWith(len, meta) => {
                let len = len.min(self.scratch.len());
                self.reply(cx, port, len, &meta, tx)
            }
            HookVerdict::Drop(r) => Err(r),
            HookVerdict::Pass if to_gateway => Err(DropReason::GatewayUnsupported),
            HookVerdict::Pass => Err(DropReason::NoRoute),
        }
    }

    /// If `frame` (IPv6, checked by [`classify`]) is a Neighbor
    /// Solicitation for one of the gateway's IPv6 addresses (or, with
    /// `proxy`, for another host's endpoint on an overlay: proxy ND, the
    /// twin of proxy ARP), builds the advertisement in scratch.
    /// `Ok(None)`: not one (it goes on as any frame would).
    fn answer_ns(
        &mut self,
        proxy: Option<&Topology>,
        net: &Network,
        meta: &VnetHdr,
        frame: &[u8],
    ) -> Result<Option<usize>, DropReason> {
        let ip = Ipv6Packet::new_unchecked(&frame[ethernet::HEADER_LEN..]);
        if net.config.v6.is_none() || ip.next_header() != ipv6::next_header::ICMPV6 {
            return Ok(None);
        }
        let msg = ip.payload();
        if msg.first() != Some(&icmpv6::NEIGHBOR_SOLICIT) {
            return Ok(None);
        }
        let nd = match ipv6::parse_nd(msg) {
            Ok(Some(nd)) => nd,
            _ => return Err(DropReason::Malformed),
        };
        let (mac, router) = if is_gateway6(net, nd.target) {
            (net.gateway_mac, icmpv6::NA_ROUTER)
        } else {
            match proxy
                .filter(|_| net.config.overlay.is_some())
                .and_then(|t| t.remote_mac6(net.id, nd.target))
            {
                Some(m) => (m, 0),
                None => return Ok(None),
            }
        };
        // RFC 4861 7.1.1: hop limit 255, code 0, a valid checksum.
        if ip.hop_limit() != 255 || msg[1] != 0 || !icmpv6_checksum_ok(meta, &ip) {
            return Err(DropReason::Malformed);
        }
        let requester = EthernetFrame::new_unchecked(frame).src_addr();
        let (dst, dst_mac, flags) = if ip.src_addr().is_unspecified() {
            // Duplicate address detection: tell everyone (7.2.4).
            let all: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
            (all, EthernetAddress(ipv6::multicast_mac(all)), 0)
        } else {
            (ip.src_addr(), requester, icmpv6::NA_SOLICITED)
        };
        let flags = flags | router | icmpv6::NA_OVERRIDE;
        let len = ethernet::HEADER_LEN + ipv6::NA_PACKET_LEN;
        let s = &mut self.scratch[..len];
        let mut out = EthernetFrame::new_unchecked(&mut s[..]);
        out.set_dst_addr(dst_mac);
        out.set_src_addr(mac);
        out.set_ethertype(EtherType::Ipv6);
        ipv6::emit_na(&mut s[ethernet::HEADER_LEN..], nd.target, dst, mac.0, flags);
        Ok(Some(len))
    }

    /// Builds an echo reply in scratch for an ICMPv6 echo request to one
    /// of the gateway's IPv6 addresses. `Ok(None)`: not one.
    fn echo6_reply(
        &mut self,
        net: &Network,
        meta: &VnetHdr,
        frame: &[u8],
    ) -> Result<Option<usize>, DropReason> {
        let ip = Ipv6Packet::new_unchecked(&frame[ethernet::HEADER_LEN..]);
        let msg = ip.payload();
        if ip.next_header() != ipv6::next_header::ICMPV6
            || !is_gateway6(net, ip.dst_addr())
            || msg.first() != Some(&icmpv6::ECHO_REQUEST)
        {
            return Ok(None);
        }
        if msg.len() < 8 || !icmpv6_checksum_ok(meta, &ip) {
            return Err(DropReason::Malformed);
        }
        let hl = ethernet::HEADER_LEN;
        let len = hl + ipv6::HEADER_LEN + msg.len();
        if len > self.scratch.len() {
            return Err(DropReason::Oversize);
        }
        let (src, dst) = (ip.dst_addr(), ip.src_addr());
        let s = &mut self.scratch[..len];
        let mut out = EthernetFrame::new_unchecked(&mut s[..]);
        out.set_dst_addr(EthernetFrame::new_unchecked(frame).src_addr());
        out.set_src_addr(net.gateway_mac);
        out.set_ethertype(EtherType::Ipv6);
        ipv6::emit_header(&mut s[hl..], src, dst, 58, msg.len(), 64);
        let m = &mut s[hl + ipv6::HEADER_LEN..];
        m.copy_from_slice(msg);
        m[0] = icmpv6::ECHO_REPLY;
        m[2..4].fill(0);
        let c = ipv6::upper_checksum(src, dst, 58, m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        Ok(Some(len))
    }

    /// Builds an echo reply in scratch for an echo request to the gateway.
    /// `Ok(None)`: not an echo request (let the hook see it).
    fn echo_reply(
        &mut self,
        net: &Network,
        meta: &VnetHdr,
        frame: &[u8],
    ) -> Result<Option<usize>, DropReason> {
        let ip = Ipv4Packet::new_unchecked(&frame[ethernet::HEADER_LEN..]);
        if ip.is_fragment() {
            return Err(DropReason::GatewayUnsupported);
        }
        let msg = ip.payload();
        let req = icmp::IcmpPacket::new_checked(msg).map_err(|_| DropReason::Malformed)?;
        if req.msg_type() != icmp::ECHO_REQUEST {
            return Ok(None);
        }
        if meta.flags & crate::wire::vnet::F_NEEDS_CSUM == 0 && !req.verify_checksum() {
            return Err(DropReason::Malformed);
        }
        let eth = EthernetFrame::new_unchecked(frame);
        let hl = ethernet::HEADER_LEN;
        let len = hl + ipv4::MIN_HEADER_LEN + msg.len();
        if len > self.scratch.len() {
            return Err(DropReason::Oversize);
        }
        let s = &mut self.scratch[..len];
        let mut out = EthernetFrame::new_unchecked(&mut s[..]);
        out.set_dst_addr(eth.src_addr());
        out.set_src_addr(net.gateway_mac);
        out.set_ethertype(EtherType::Ipv4);
        let src: Ipv4Addr = ip.src_addr();
        ipv4::emit_header(
            &mut s[hl..],
            net.config.gateway,
            src,
            ipv4::protocol::ICMP,
            msg.len(),
            64,
        );
        let m = &mut s[hl + ipv4::MIN_HEADER_LEN..];
        m.copy_from_slice(msg);
        m[0] = icmp::ECHO_REPLY;
        m[2..4].fill(0);
        let c = crate::wire::checksum(m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        Ok(Some(len))
    }
}

/// Whether an ICMPv6 message's checksum verifies (or is left to the
/// receiver: a partial checksum from the guest).
fn icmpv6_checksum_ok(meta: &VnetHdr, ip: &Ipv6Packet<&[u8]>) -> bool {
    meta.flags & crate::wire::vnet::F_NEEDS_CSUM != 0
        || ipv6::upper_checksum(ip.src_addr(), ip.dst_addr(), 58, ip.payload()) == 0
}

/// Whether `a` is one of the gateway's IPv6 addresses (its configured
/// one and its link-local).
#[inline]
fn is_gateway6(net: &Network, a: Ipv6Addr) -> bool {
    net.config
        .v6
        .is_some_and(|v6| a == v6.gateway || a == link_local_of(net.gateway_mac))
}

/// Ingress checks past Ethernet: L3 sanity and anti-spoofing.
#[inline]
fn classify(
    port: &Port,
    checked: bool,
    ethertype: EtherType,
    payload: &[u8],
) -> Result<L3, DropReason> {
    match ethertype {
        EtherType::Arp => {
            let arp = ArpPacket::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if checked {
                let sip = arp.sender_ip();
                if Some(arp.sender_hw()) != port.config.mac
                    || (Some(sip) != port.config.ip && !sip.is_unspecified())
                {
                    return Err(DropReason::SpoofedArp);
                }
            }
            Ok(L3::Arp)
        }
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if checked && Some(ip.src_addr()) != port.config.ip {
                return Err(DropReason::SpoofedIp);
            }
            Ok(L3::Ip)
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if checked {
                let mac = port.config.mac.unwrap_or_default();
                let ll = port
                    .config
                    .link_local6
                    .unwrap_or_else(|| link_local_of(mac));
                check_ipv6_source(mac, port.config.ip6, ll, &ip)?;
            }
            Ok(L3::Ip)
        }
        EtherType::Vlan => Err(DropReason::VlanTagged),
        EtherType::Unknown(_) if checked => Err(DropReason::UnsupportedEtherType),
        EtherType::Unknown(_) => Ok(L3::Other),
    }
}

/// Anti-spoofing of IPv6 from an endpoint with `mac`, assigned address
/// `ip6` and link-local address `link_local` (a checked port: its explicit
/// one, else the EUI-64 one of its MAC; or another host's endpoint on an
/// overlay): the source is one of those addresses, or `::` for what may
/// come from it (Neighbor Discovery's duplicate address detection, MLD
/// reports behind a hop-by-hop header); a Neighbor Solicitation or
/// Advertisement names only that MAC and advertises only those
/// addresses. Extension headers are walked to find them.
pub(crate) fn check_ipv6_source(
    mac: EthernetAddress,
    ip6: Option<Ipv6Addr>,
    link_local: Ipv6Addr,
    ip: &Ipv6Packet<&[u8]>,
) -> Result<(), DropReason> {
    let src = ip.src_addr();
    let own = |a: Ipv6Addr| Some(a) == ip6 || a == link_local;
    // Extension headers are walked: an NA behind a destination-options
    // header is still an NA to the kernels that receive it.
    let upper =
        ipv6::upper_layer(ip.next_header(), ip.payload()).map_err(|_| DropReason::Malformed)?;
    let icmp = upper.protocol == ipv6::next_header::ICMPV6;
    if src.is_unspecified() {
        // `::` only for DAD's NS and MLD reports (behind hop-by-hop).
        if !icmp || upper.fragment.is_some() {
            return Err(DropReason::SpoofedIp);
        }
    } else if !own(src) {
        return Err(DropReason::SpoofedIp);
    }
    if icmp && upper.fragment.is_none_or(|f| f == 0) {
        match ipv6::parse_nd(&ip.payload()[upper.offset..]) {
            Err(_) => return Err(DropReason::Malformed),
            // RFC 6980: Neighbor Discovery is never fragmented; receivers
            // drop it, and so does the switch (its checks would see only
            // part of the options).
            Ok(Some(_)) if upper.fragment.is_some() => return Err(DropReason::Malformed),
            Ok(Some(nd)) => {
                let advert = nd.msg_type == icmpv6::NEIGHBOR_ADVERT;
                if nd.lladdr.is_some_and(|m| m != mac.0) || (advert && !own(nd.target)) {
                    return Err(DropReason::SpoofedNd);
                }
            }
            Ok(None) => {}
        }
    }
    Ok(())
}

/// Allows `CaptureHook` trait objects to be named from this module's docs.
#[allow(dead_code)]
fn _assert_object_safe(_: &dyn CaptureHook) {}

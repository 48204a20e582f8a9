//! Networks on a parent interface (macvlan, ipvlan) in the live dataplane:
//! the parent port's queues are AF_PACKET sockets on the parent
//! (`crate::sys::packet`), one per worker, handed to the workers like TAP
//! queues; the switch forwards by `tapnet_switch::segment`'s rules.
//!
//! ipvlan `l3`: the network also has two router ports whose queues are
//! raw IPv4 and IPv6 sockets bound to the parent (`crate::sys::rawip`);
//! [`transmit_routed`] completes a frame's offloads (checksum, TCP/UDP
//! segmentation) and sends its IP packet there, for the daemon's
//! namespace to route.
//!
//! VLANs: the sockets' kernel filter accepts only the network's VLAN (the
//! kernel has already removed the tag); [`transmit_tagged`] pushes the
//! tag again on egress, without copying the frame (one `writev`).

use super::{Cmd, Dataplane};
use crate::dataplane::{DataplaneError, NetId, NetworkSpec, ParentSpec, SegmentMode};
use crate::sys::{packet, rawip};
use std::io;
use std::os::fd::OwnedFd;
use tapnet_switch::gso;
use tapnet_switch::wire::{
    ethernet, ipv6, vnet, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, Ipv6Packet,
    VnetHdr,
};
use tapnet_switch::DropReason;

impl Dataplane {
    /// Adds (or updates) a network on a parent interface: a switched
    /// network without gateway services (but the embedded DNS, at
    /// `tapnet_switch::segment::DNS_ADDR`, per `spec.dns`; the NAT never
    /// acts on it) whose other ports are behind
    /// `parent` (none: an `--internal` network, its endpoints reach only
    /// each other). The parent's sockets are opened first: when that fails
    /// nothing was changed. `IpvlanL3` networks with a parent also get
    /// their router port (raw IP sockets bound to the parent).
    pub fn add_segment_network(
        &self,
        id: NetId,
        spec: NetworkSpec,
        mode: SegmentMode,
        parent: Option<&ParentSpec>,
    ) -> Result<(), DataplaneError> {
        let existing = self.switch_network(id);
        let has_parent = existing
            .and_then(|nid| self.switch().topology().network(nid)?.segment?.parent)
            .is_some();
        let opened = match parent {
            Some(p) if !has_parent => Some(
                packet::open(&p.ifname, p.vlan, self.workers()).map_err(|err| {
                    DataplaneError::Parent {
                        parent: parent_name(p),
                        err,
                    }
                })?,
            ),
            _ => None,
        };
        let has_router = existing
            .and_then(|nid| self.switch().topology().network(nid)?.segment?.router)
            .is_some();
        let routed = match parent {
            Some(p) if mode == SegmentMode::IpvlanL3 && !has_router => {
                let open = |v6| {
                    rawip::open(&p.ifname, self.workers(), v6).map_err(|err| {
                        DataplaneError::Parent {
                            parent: parent_name(p),
                            err,
                        }
                    })
                };
                Some((open(false)?, open(true)?))
            }
            _ => None,
        };
        self.add_network_as(id, spec, true)?;
        let undo = |e: DataplaneError| {
            if existing.is_none() {
                let _ = self.remove_network(id);
            }
            e
        };
        let nid = self
            .switch_network(id)
            .ok_or(DataplaneError::UnknownNetwork(id))?;
        self.switch()
            .set_segment(nid, mode)
            .map_err(|e| undo(e.into()))?;
        if let (Some(p), Some(opened)) = (parent, opened) {
            let name = format!("parent:{}", parent_name(p));
            let mac = packet::hwaddr(&p.ifname).ok().map(EthernetAddress);
            let port = self
                .switch()
                .add_parent_port(nid, &name, p.vlan, mac)
                .map_err(|e| undo(e.into()))?;
            self.hand_queues(port.0, opened.queues.into());
        }
        if let (Some(p), Some((queues, queues6))) = (parent, routed) {
            for (v6, kind, queues) in [(false, "router", queues), (true, "router6", queues6)] {
                let name = format!("{kind}:{}", parent_name(p));
                let port = self
                    .switch()
                    .add_router_port(nid, &name, v6)
                    .map_err(|e| undo(e.into()))?;
                self.hand_queues(port.0, queues.into());
            }
        }
        Ok(())
    }

    /// Removes a network made by [`Dataplane::add_segment_network`] (its
    /// endpoints must have been removed), closing the parent's sockets.
    pub fn remove_segment_network(&self, id: NetId) -> Result<(), DataplaneError> {
        if let Some(nid) = self.switch_network(id) {
            let seg = self
                .switch()
                .topology()
                .network(nid)
                .and_then(|n| n.segment);
            for p in seg
                .iter()
                .flat_map(|s| [s.parent, s.router, s.router6])
                .flatten()
            {
                self.remove_port(p.0)?;
            }
        }
        self.remove_network(id)
    }

    /// Gives the workers `port`'s queues, one each (sockets already
    /// non-blocking): each reads its own and may write on any.
    pub(super) fn hand_queues(&self, port: u32, fds: std::sync::Arc<[OwnedFd]>) {
        for w in &self.inner.workers {
            let _ = w.tx.send(Cmd::AddQueue {
                port,
                fds: fds.clone(),
            });
            w.wake.wake();
        }
    }
}

/// `eth0` or `eth0.10`, as given.
fn parent_name(p: &ParentSpec) -> String {
    match p.vlan {
        Some(v) => format!("{}.{v}", p.ifname),
        None => p.ifname.clone(),
    }
}

/// Writes `frame` to a parent socket with an 802.1Q tag for `vid` after
/// its MAC addresses; the virtio-net header's offsets move by the tag's 4
/// bytes.
pub(super) fn transmit_tagged(
    fd: &OwnedFd,
    vid: u16,
    meta: &VnetHdr,
    frame: &[u8],
) -> Result<(), DropReason> {
    const MACS: usize = 12;
    if frame.len() < MACS + 2 {
        return Err(DropReason::TxError);
    }
    let mut m = *meta;
    if m.flags & vnet::F_NEEDS_CSUM != 0 {
        m.csum_start += 4;
    }
    if m.hdr_len != 0 {
        m.hdr_len += 4;
    }
    let mut hdr = [0u8; vnet::HEADER_LEN];
    m.emit(&mut hdr);
    let tag = packet::vlan_tag(vid);
    let iov = [
        io::IoSlice::new(&hdr),
        io::IoSlice::new(&frame[..MACS]),
        io::IoSlice::new(&tag),
        io::IoSlice::new(&frame[MACS..]),
    ];
    match nix::sys::uio::writev(fd, &iov) {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::ENOBUFS) => Err(DropReason::TxFull),
        Err(_) => Err(DropReason::TxError),
    }
}

/// One worker's state for routed sends: a segment at a time.
pub(super) struct RouteTx {
    seg: Box<[u8]>,
}

impl RouteTx {
    pub(super) fn new() -> RouteTx {
        RouteTx {
            seg: vec![0u8; super::RX_BUF_LEN].into_boxed_slice(),
        }
    }
}

/// Sends the IPv4 packet(s) of `frame` on a router port's raw socket:
/// offloads completed in software first (a partial checksum, a TCP or UDP
/// super-frame from a TAP), the Ethernet header dropped. The first failure
/// is returned (the rest of a super-frame is not sent).
pub(super) fn transmit_routed(
    fd: &OwnedFd,
    rt: &mut RouteTx,
    meta: &VnetHdr,
    frame: &[u8],
) -> Result<(), DropReason> {
    let mut res = Ok(());
    gso::for_each_segment(meta, frame, &mut rt.seg, |f| {
        if res.is_ok() {
            res = send_routed(fd, f);
        }
    })?;
    res
}

/// One plain IPv4 or IPv6 frame out of the raw socket (of its family:
/// the switch picks the router port by family).
fn send_routed(fd: &OwnedFd, frame: &[u8]) -> Result<(), DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    let hl = ethernet::HEADER_LEN;
    // The packet without any link-layer padding after it.
    let r = match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            let len = usize::from(ip.total_len()).min(frame.len() - hl);
            rawip::send_v4(fd, &frame[hl..hl + len], ip.dst_addr())
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            let len = (ipv6::HEADER_LEN + usize::from(ip.payload_len())).min(frame.len() - hl);
            rawip::send_v6(fd, &frame[hl..hl + len], ip.dst_addr())
        }
        _ => return Err(DropReason::L3NotRouted),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => DropReason::TxFull,
            Some(libc::EMSGSIZE) => DropReason::Oversize,
            Some(libc::ENETUNREACH)
            | Some(libc::EHOSTUNREACH)
            | Some(libc::ENETDOWN)
            | Some(libc::EINVAL)
            | Some(libc::EPERM)
            | Some(libc::EACCES) => DropReason::RouteFailed,
            _ => DropReason::TxError,
        }),
    }
}

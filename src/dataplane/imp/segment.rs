//! Networks on a parent interface (macvlan, ipvlan) in the live dataplane:
//! the parent port's queues are AF_PACKET sockets on the parent
//! (`crate::sys::packet`), one per worker, handed to the workers like TAP
//! queues; the switch forwards by `tapnet_switch::segment`'s rules.
//!
//! VLANs: the sockets' kernel filter accepts only the network's VLAN (the
//! kernel has already removed the tag); [`transmit_tagged`] pushes the
//! tag again on egress, without copying the frame (one `writev`).

use super::{Cmd, Dataplane};
use crate::dataplane::{DataplaneError, NetId, NetworkSpec, ParentSpec, SegmentMode};
use crate::sys::packet;
use std::io;
use std::os::fd::OwnedFd;
use tapnet_switch::wire::{vnet, EthernetAddress, VnetHdr};
use tapnet_switch::DropReason;

impl Dataplane {
    /// Adds (or updates) a network on a parent interface: a switched
    /// network without gateway services (but the embedded DNS, at
    /// `tapnet_switch::segment::DNS_ADDR`, per `spec.dns`; the NAT never
    /// acts on it) whose other ports are behind
    /// `parent` (none: an `--internal` network, its endpoints reach only
    /// each other). The parent's sockets are opened first: when that fails
    /// nothing was changed.
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
            self.hand_queues(port.0, opened.queues);
        }
        Ok(())
    }

    /// Removes a network made by [`Dataplane::add_segment_network`] (its
    /// endpoints must have been removed), closing the parent's sockets.
    pub fn remove_segment_network(&self, id: NetId) -> Result<(), DataplaneError> {
        if let Some(nid) = self.switch_network(id) {
            let parent = self
                .switch()
                .topology()
                .network(nid)
                .and_then(|n| n.segment?.parent);
            if let Some(p) = parent {
                self.remove_port(p.0)?;
            }
        }
        self.remove_network(id)
    }

    /// Gives each worker its queue of `port` (sockets already non-blocking).
    fn hand_queues(&self, port: u32, queues: Vec<OwnedFd>) {
        for (w, fd) in self.inner.workers.iter().zip(queues) {
            let _ = w.tx.send(Cmd::AddQueue { port, fd });
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

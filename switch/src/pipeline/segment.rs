//! Forwarding on a network on a parent interface (see [`crate::segment`]
//! for the rules). Same contract as the pipeline: never panics, no
//! allocation, one drop reason per frame not sent anywhere.

use super::{GatewayHook, Transmit, Worker};
use crate::counters::DropReason;
use crate::pipeline::BatchCx;
use crate::segment::{Segment, SegmentMode};
use crate::topology::{Network, Port, Topology};
use crate::wire::{ArpPacket, EtherType, EthernetFrame, Ipv4Packet, VnetHdr};
use core::net::Ipv4Addr;

/// The IPv4 address a frame is for: an IPv4 packet's destination, an ARP
/// packet's target (both checked by the ingress stage already).
fn l3_destination(ethertype: EtherType, payload: &[u8]) -> Option<Ipv4Addr> {
    match ethertype {
        EtherType::Ipv4 => Some(Ipv4Packet::new_checked(payload).ok()?.dst_addr()),
        EtherType::Arp => Some(ArpPacket::new_checked(payload).ok()?.target_ip()),
        _ => None,
    }
}

impl<H: GatewayHook> Worker<H> {
    /// Forwards a frame that passed the ingress checks on segment network
    /// `net`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_segment<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        port: &Port,
        net: &Network,
        seg: Segment,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) -> Result<(), DropReason> {
        let topo: &Topology = &cx.topo;
        if !meta.is_gso() && frame.len() > net.max_frame {
            return Err(DropReason::Oversize);
        }
        let eth = EthernetFrame::new_unchecked(frame);
        let (src, dst) = (eth.src_addr(), eth.dst_addr());
        let from_parent = seg.parent == Some(port.id);
        match seg.mode {
            SegmentMode::Macvlan => {
                if from_parent && topo.assigned_port(net.id, src).is_some() {
                    // The segment claims an endpoint's MAC.
                    return Err(DropReason::MacTaken);
                }
                if dst.is_multicast() {
                    return self.segment_flood(topo, port, net, meta, frame, tx);
                }
                match topo.assigned_port(net.id, dst).and_then(|p| topo.port(p)) {
                    Some(out) if out.id == port.id => Err(DropReason::Hairpin),
                    Some(out) => {
                        self.send(topo, out, meta, frame, tx);
                        Ok(())
                    }
                    None if from_parent => Err(DropReason::ParentNotForUs),
                    None => match seg.parent.and_then(|p| topo.port(p)) {
                        Some(out) => {
                            self.send(topo, out, meta, frame, tx);
                            Ok(())
                        }
                        None => Err(DropReason::NoDestination),
                    },
                }
            }
            SegmentMode::IpvlanL2 => {
                if dst.is_multicast() {
                    return self.segment_flood(topo, port, net, meta, frame, tx);
                }
                let parent = seg.parent.and_then(|p| topo.port(p));
                if from_parent && Some(dst) != port.config.mac {
                    return Err(DropReason::ParentNotForUs);
                }
                let to = l3_destination(eth.ethertype(), eth.payload())
                    .and_then(|ip| topo.segment_port(net.id, ip));
                match to {
                    Some(out) if out.id == port.id => Err(DropReason::Hairpin),
                    Some(out) => {
                        self.send(topo, out, meta, frame, tx);
                        Ok(())
                    }
                    None if from_parent => Err(DropReason::ParentNotForUs),
                    None => match parent {
                        Some(out) => {
                            self.send(topo, out, meta, frame, tx);
                            Ok(())
                        }
                        None => Err(DropReason::NoDestination),
                    },
                }
            }
            SegmentMode::IpvlanL3 => {
                // The parent and the router port are the outside.
                let outside = from_parent || seg.router == Some(port.id);
                if outside && Some(dst) != port.config.mac {
                    return Err(DropReason::ParentNotForUs);
                }
                let routable = match eth.ethertype() {
                    EtherType::Ipv4 => Ipv4Packet::new_checked(eth.payload())
                        .ok()
                        .map(|ip| ip.dst_addr())
                        .filter(|a| !a.is_multicast() && !a.is_broadcast() && !a.is_unspecified()),
                    _ => None,
                };
                let Some(to) = routable else {
                    return Err(if outside {
                        DropReason::ParentNotForUs
                    } else {
                        DropReason::L3NotRouted
                    });
                };
                match topo.segment_port(net.id, to) {
                    Some(out) if out.id == port.id => Err(DropReason::Hairpin),
                    Some(out) => {
                        self.send(topo, out, meta, frame, tx);
                        Ok(())
                    }
                    None if outside => Err(DropReason::ParentNotForUs),
                    None => match seg.router.and_then(|p| topo.port(p)) {
                        Some(out) => {
                            self.send(topo, out, meta, frame, tx);
                            Ok(())
                        }
                        None => Err(DropReason::NoDestination),
                    },
                }
            }
        }
    }

    /// Broadcast and multicast: every port of the network but the ingress
    /// one (endpoints and the parent).
    fn segment_flood<T: Transmit>(
        &self,
        topo: &Topology,
        port: &Port,
        net: &Network,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) -> Result<(), DropReason> {
        let mut sent = false;
        for &pid in &net.ports {
            if pid == port.id {
                continue;
            }
            let Some(out) = topo.port(pid) else { continue };
            self.send(topo, out, meta, frame, tx);
            sent = true;
        }
        if sent {
            Ok(())
        } else {
            Err(DropReason::NoDestination)
        }
    }
}

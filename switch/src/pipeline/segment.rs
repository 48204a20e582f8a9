//! Forwarding on a network on a parent interface (see [`crate::segment`]
//! for the rules). Same contract as the pipeline: never panics, no
//! allocation, one drop reason per frame not sent anywhere.

use super::{GatewayHook, Transmit, Worker};
use crate::counters::DropReason;
use crate::pipeline::BatchCx;
use crate::segment::{Segment, SegmentMode, DNS_ADDR};
use crate::topology::{Network, NetworkId, Port, PortId, Topology};
use crate::wire::arp::ArpOp;
use crate::wire::{
    ethernet, ipv4, ipv6, ArpPacket, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, VnetHdr,
};

/// The endpoint of ipvlan network `net` a frame is for: the one holding
/// an IPv4 packet's destination, an ARP packet's target or an IPv6
/// packet's destination (all checked by the ingress stage already).
fn by_address<'t>(
    topo: &'t Topology,
    net: NetworkId,
    ethertype: EtherType,
    payload: &[u8],
) -> Option<&'t Port> {
    match ethertype {
        EtherType::Ipv4 => {
            topo.segment_port(net, Ipv4Packet::new_checked(payload).ok()?.dst_addr())
        }
        EtherType::Arp => topo.segment_port(net, ArpPacket::new_checked(payload).ok()?.target_ip()),
        EtherType::Ipv6 => {
            topo.segment_port6(net, Ipv6Packet::new_checked(payload).ok()?.dst_addr())
        }
        _ => None,
    }
}

/// Where ipvlan `l3` routes a unicast IP packet: the endpoint holding its
/// destination, else the router port of its family (`Err(())`: not
/// routable: not IP, broadcast, multicast, unspecified; an IPv6
/// link-local destination no endpoint holds).
fn l3_route(
    topo: &Topology,
    net: NetworkId,
    seg: Segment,
    ethertype: EtherType,
    payload: &[u8],
) -> Result<(Option<PortId>, Option<PortId>), ()> {
    match ethertype {
        EtherType::Ipv4 => {
            let a = Ipv4Packet::new_checked(payload).map_err(|_| ())?.dst_addr();
            if a.is_multicast() || a.is_broadcast() || a.is_unspecified() {
                return Err(());
            }
            Ok((topo.segment_port(net, a).map(|p| p.id), seg.router))
        }
        EtherType::Ipv6 => {
            let a = Ipv6Packet::new_checked(payload).map_err(|_| ())?.dst_addr();
            if a.is_multicast() || a.is_unspecified() {
                return Err(());
            }
            let to = topo.segment_port6(net, a).map(|p| p.id);
            if to.is_none() && ipv6::is_link_local(a) {
                return Err(());
            }
            Ok((to, seg.router6))
        }
        _ => Err(()),
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
        if !from_parent {
            if let Some(r) = self.segment_dns(cx, port, net, eth.ethertype(), meta, frame, tx) {
                return r;
            }
        }
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
                let to = by_address(topo, net.id, eth.ethertype(), eth.payload());
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
                let outside =
                    from_parent || seg.router == Some(port.id) || seg.router6 == Some(port.id);
                if outside && Some(dst) != port.config.mac {
                    return Err(DropReason::ParentNotForUs);
                }
                let Ok((to, router)) = l3_route(topo, net.id, seg, eth.ethertype(), eth.payload())
                else {
                    return Err(if outside {
                        DropReason::ParentNotForUs
                    } else {
                        DropReason::L3NotRouted
                    });
                };
                match to.and_then(|p| topo.port(p)) {
                    Some(out) if out.id == port.id => Err(DropReason::Hairpin),
                    Some(out) => {
                        self.send(topo, out, meta, frame, tx);
                        Ok(())
                    }
                    None if outside => Err(DropReason::ParentNotForUs),
                    None => match router.and_then(|p| topo.port(p)) {
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

    /// The embedded DNS's service address ([`DNS_ADDR`]) for a frame from
    /// an endpoint of a segment network: an ARP request for it is answered
    /// with [`crate::segment::DNS_MAC`]; IPv4 UDP or TCP to its port 53
    /// goes to the hook, as a query to a bridge's gateway does; anything
    /// else to it (other ARP, other protocols and ports, fragments) is
    /// dropped as `gateway_unsupported`. `None`: not for the address,
    /// forwarded as usual. Nothing for the address leaves on the parent.
    #[allow(clippy::too_many_arguments)]
    fn segment_dns<T: Transmit>(
        &mut self,
        cx: &BatchCx,
        port: &Port,
        net: &Network,
        ethertype: EtherType,
        meta: &VnetHdr,
        frame: &[u8],
        tx: &mut T,
    ) -> Option<Result<(), DropReason>> {
        let payload = &frame[ethernet::HEADER_LEN..];
        let (_, dns_mac) = net.dns_service();
        match ethertype {
            EtherType::Arp => {
                let arp = ArpPacket::new_checked(payload).ok()?;
                if arp.target_ip() != DNS_ADDR {
                    return None;
                }
                if arp.operation() != ArpOp::Request {
                    return Some(Err(DropReason::GatewayUnsupported));
                }
                self.write_arp_reply(&arp, dns_mac);
                Some(self.reply(cx, port, 60, &VnetHdr::default(), tx))
            }
            EtherType::Ipv4 => {
                let ip = Ipv4Packet::new_checked(payload).ok()?;
                if ip.dst_addr() != DNS_ADDR {
                    return None;
                }
                let proto = ip.protocol();
                let l4 = ip.payload();
                let to_dns = !ip.is_fragment()
                    && (proto == ipv4::protocol::UDP || proto == ipv4::protocol::TCP)
                    && l4.get(2..4) == Some(&53u16.to_be_bytes()[..]);
                if !to_dns {
                    return Some(Err(DropReason::GatewayUnsupported));
                }
                Some(self.pass_to_hook(cx, port, net, meta, frame, true, tx))
            }
            _ => None,
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

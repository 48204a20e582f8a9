//! Networks on a parent interface (Docker's macvlan and ipvlan): the
//! network's endpoints sit directly on a physical segment, reached through
//! one *parent port* (an AF_PACKET socket on the parent interface at the
//! I/O edge), and the segment's own router is their gateway.
//!
//! What differs from a bridge network, in the pipeline
//! (`pipeline::segment`):
//! - no gateway services: no ARP/ping answers for the gateway, no NAT;
//!   ARP for the gateway goes out the parent like any other frame; the
//!   embedded DNS answers at its own address (below);
//! - no MAC learning: endpoints' MACs are assigned (spoof-checked ports),
//!   everything else lives behind the parent;
//! - from an endpoint: to another endpoint's MAC locally, anything else
//!   (unicast) out the parent, broadcast and multicast to both;
//! - from the parent: to the endpoint with the frame's destination MAC,
//!   broadcast and multicast to every endpoint; frames for other MACs
//!   (the parent is promiscuous) are dropped as `parent_not_for_us`, and
//!   frames claiming an endpoint's MAC as source as `mac_taken`.
//!
//! ipvlan (`l2`): endpoints share the parent's MAC, so the switch maps by
//! address instead: unicast from the parent must be addressed to the
//! parent's MAC and goes to the endpoint holding the IPv4 destination (or
//! the ARP target); unicast from an endpoint goes to the endpoint holding
//! its destination address, else out the parent.
//!
//! The embedded DNS: the segment's router is the gateway, so the switch
//! cannot answer at the gateway address as on a bridge. It answers at a
//! fixed link-local *service address* instead, [`DNS_ADDR`] (MAC
//! [`DNS_MAC`]), that containers reach through a link-scope host route on
//! their interface: ARP requests from an endpoint for it are answered,
//! IPv4 UDP and TCP from an endpoint to its port 53 go to the
//! [`crate::GatewayHook`] (the DNS responder) as queries to a bridge's
//! gateway do, anything else from an endpoint to it is dropped
//! (`gateway_unsupported`). None of these frames ever leaves on the
//! parent; frames from the parent for the address are the segment's
//! (dropped as `parent_not_for_us`, or flooded to the endpoints for ARP,
//! where no one holds it). IPv4 only: AAAA answers come over it too.
//! IPv6 on ipvlan: each endpoint has an explicit link-local address
//! ([`ipvlan_link_local`]; the EUI-64 ones would all be the parent's);
//! endpoints are found by their IPv6 addresses (assigned and link-local)
//! as by IPv4: unicast by destination, Neighbor Solicitations to a
//! solicited-node group reach every endpoint (as ARP requests do) and
//! unicast ones go by destination.
//!
//! ipvlan `l3`: endpoints share the parent's MAC and do no ARP (their
//! links are NOARP, their default route a device route), so every frame an
//! endpoint sends is addressed to its own MAC; the switch routes by IPv4
//! destination: to the endpoint holding it, else to the network's *router
//! port* of that family (IPv6 link-local destinations only to endpoints),
//! whose I/O edge hands the packet to the daemon namespace's IP
//! routing out of the parent (a raw IP socket bound to it: the kernel picks
//! the next hop and resolves its MAC). Only unicast IP is routed: ARP,
//! other EtherTypes, broadcast and multicast from endpoints are dropped as
//! `l3_not_routed`. From the parent only frames for the parent's MAC whose
//! IP destination is an endpoint's pass (the rest is the host's own
//! traffic, which the kernel has as well: `parent_not_for_us`).
//!
//! A parent port may carry one 802.1Q VLAN ([`Uplink::vlan`]): the edge
//! pushes the tag on egress and only accepts frames of that VLAN (tag
//! removed) on ingress, so two networks on different VLANs of one parent
//! never see each other's frames.

use crate::topology::{ConfigError, Network, NetworkId, PortConfig, PortId, Switch};
use crate::wire::EthernetAddress;
use core::net::Ipv4Addr;

/// The embedded DNS's service address on segment networks (see the module
/// doc): `169.254.0.53`. Link-local (RFC 3927), so never routed off the
/// segment, and in the first /24 of 169.254/16, which RFC 3927 2.1
/// reserves: no host on the segment may take it by link-local
/// autoconfiguration, and it is neither a cloud metadata (169.254.169.254)
/// nor a known node-local cache address (169.254.20.10). `.53` for DNS.
/// One constant for the switch, the responder and the daemon (the
/// containers' `nameserver` line and host route).
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 53);

/// The MAC the switch answers ARP for [`DNS_ADDR`] with and sends the
/// DNS answers from on segment networks: `02:42:a9:fe:00:35`, the
/// [`crate::topology::gateway_mac`] of the address (locally administered,
/// unicast). Seen only by the network's endpoints, never on the segment.
pub const DNS_MAC: EthernetAddress = EthernetAddress([0x02, 0x42, 169, 254, 0, 53]);

impl Network {
    /// Where the embedded DNS answers on this network, (IPv4 address,
    /// MAC): the gateway on a bridge or overlay, [`DNS_ADDR`] and
    /// [`DNS_MAC`] on a segment network (see the module doc).
    #[inline]
    pub fn dns_service(&self) -> (Ipv4Addr, EthernetAddress) {
        match self.segment {
            Some(_) => (DNS_ADDR, DNS_MAC),
            None => (self.config.gateway, self.gateway_mac),
        }
    }
}

/// How a segment network maps frames to endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentMode {
    /// macvlan `bridge` mode: each endpoint has its own MAC on the
    /// segment; endpoints reach each other locally.
    Macvlan,
    /// ipvlan `l2` mode: every endpoint has the parent's MAC; frames are
    /// mapped to endpoints by address (IPv4, IPv6; ARP by its target);
    /// ARP requests from the segment reach every endpoint, so the one
    /// with the address answers, with the parent's MAC.
    IpvlanL2,
    /// ipvlan `l3` (and `l3s`) mode: every endpoint has the parent's MAC
    /// and does no ARP; unicast IP is routed by destination address to
    /// an endpoint or to the network's router port of its family; nothing
    /// else passes.
    IpvlanL3,
}

/// The link-local address of an ipvlan endpoint with IPv4 address `ip`:
/// `fe80::IPV4` (e.g. `fe80::c000:20a` for 192.0.2.10). Every endpoint
/// has the parent's MAC, so the EUI-64 link-locals would all be the
/// parent's; the IPv4 address is unique on the network, and the form
/// never collides with an EUI-64 address (bytes 11-12 are never
/// `ff:fe`).
pub fn ipvlan_link_local(ip: core::net::Ipv4Addr) -> core::net::Ipv6Addr {
    let o = ip.octets();
    core::net::Ipv6Addr::from([
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, o[0], o[1], o[2], o[3],
    ])
}

impl SegmentMode {
    /// Whether endpoints share one MAC and are told apart by address.
    #[inline]
    pub fn by_address(self) -> bool {
        matches!(self, SegmentMode::IpvlanL2 | SegmentMode::IpvlanL3)
    }
}

/// A network's segment state in the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub mode: SegmentMode,
    /// The parent port, once added (`None`: an `--internal` network, or
    /// not yet).
    pub parent: Option<PortId>,
    /// `IpvlanL3` only: the port whose egress is routed by the daemon's
    /// namespace out of the parent (`None`: no way out), for IPv4.
    pub router: Option<PortId>,
    /// The same for IPv6.
    pub router6: Option<PortId>,
}

/// A parent port's settings, for the I/O edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The 802.1Q VLAN id (1-4094) the port's frames carry on the wire;
    /// `None`: untagged.
    pub vlan: Option<u16>,
    /// A router port (`IpvlanL3`): frames sent to it are IPv4 packets to
    /// route, not frames for the wire (the edge strips the Ethernet header
    /// and completes offloads); it receives nothing.
    pub routed: bool,
}

impl Switch {
    /// Makes network `net` a segment network (see the module doc). Its
    /// ports added so far keep working; a segment network cannot become a
    /// bridge again (remove and re-add it).
    pub fn set_segment(&self, net: NetworkId, mode: SegmentMode) -> Result<(), ConfigError> {
        self.update(|t| {
            let n = t.networks_mut(net).ok_or(ConfigError::NoSuchNetwork)?;
            match &mut n.segment {
                Some(s) => s.mode = mode,
                None => {
                    n.segment = Some(Segment {
                        mode,
                        parent: None,
                        router: None,
                        router6: None,
                    })
                }
            }
            Ok(())
        })
    }

    /// Adds the parent port of segment network `net` (an unchecked port:
    /// any source MAC and address), tagged with `vlan` on the wire. `mac`
    /// is the parent's own MAC (ipvlan: the endpoints').
    pub fn add_parent_port(
        &self,
        net: NetworkId,
        name: &str,
        vlan: Option<u16>,
        mac: Option<EthernetAddress>,
    ) -> Result<PortId, ConfigError> {
        if let Some(v) = vlan {
            if !(1..=4094).contains(&v) {
                return Err(ConfigError::Invalid(format!("VLAN id {v} outside 1..4094")));
            }
        }
        self.update(|t| {
            let seg = t
                .network(net)
                .ok_or(ConfigError::NoSuchNetwork)?
                .segment
                .ok_or_else(|| ConfigError::Invalid("not a segment network".into()))?;
            if seg.parent.is_some() {
                return Err(ConfigError::Invalid(
                    "the network already has a parent port".into(),
                ));
            }
            let mut config = PortConfig::unchecked(name, net);
            config.mac = mac;
            let id = self.add_port_in(t, config)?;
            if let Some(p) = t.port_mut(id) {
                p.uplink = Some(Uplink {
                    vlan,
                    routed: false,
                });
            }
            if let Some(s) = t.networks_mut(net).and_then(|n| n.segment.as_mut()) {
                s.parent = Some(id);
            }
            Ok(id)
        })
    }

    /// Adds the IPv4 (IPv6 with `v6`) router port of `IpvlanL3` network
    /// `net`: what no endpoint of the network holds goes there (see the
    /// module doc).
    pub fn add_router_port(
        &self,
        net: NetworkId,
        name: &str,
        v6: bool,
    ) -> Result<PortId, ConfigError> {
        self.update(|t| {
            let seg = t
                .network(net)
                .ok_or(ConfigError::NoSuchNetwork)?
                .segment
                .filter(|s| s.mode == SegmentMode::IpvlanL3)
                .ok_or_else(|| ConfigError::Invalid("not an ipvlan l3 network".into()))?;
            if if v6 { seg.router6 } else { seg.router }.is_some() {
                return Err(ConfigError::Invalid(
                    "the network already has a router port".into(),
                ));
            }
            let id = self.add_port_in(t, PortConfig::unchecked(name, net))?;
            if let Some(p) = t.port_mut(id) {
                p.uplink = Some(Uplink {
                    vlan: None,
                    routed: true,
                });
            }
            if let Some(s) = t.networks_mut(net).and_then(|n| n.segment.as_mut()) {
                if v6 {
                    s.router6 = Some(id);
                } else {
                    s.router = Some(id);
                }
            }
            Ok(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{gateway_mac, NetworkConfig, SwitchConfig};

    #[test]
    fn dns_service_address() {
        assert_eq!(DNS_MAC, gateway_mac(DNS_ADDR));
        assert!(DNS_ADDR.is_link_local());
        assert!(!DNS_MAC.is_multicast() && DNS_MAC.0[0] & 0x02 != 0);
        let sw = Switch::new(SwitchConfig::default());
        let gw = Ipv4Addr::new(192, 0, 2, 1);
        let net = sw
            .add_network(NetworkConfig::new("m", Ipv4Addr::new(192, 0, 2, 0), 24, gw))
            .unwrap();
        let bridge = sw.topology().network(net).unwrap().dns_service();
        assert_eq!(bridge, (gw, gateway_mac(gw)));
        sw.set_segment(net, SegmentMode::IpvlanL2).unwrap();
        let seg = sw.topology().network(net).unwrap().dns_service();
        assert_eq!(seg, (DNS_ADDR, DNS_MAC));
    }

    #[test]
    fn parent_port() {
        let sw = Switch::new(SwitchConfig::default());
        let net = sw
            .add_network(NetworkConfig::new(
                "m",
                Ipv4Addr::new(192, 0, 2, 0),
                24,
                Ipv4Addr::new(192, 0, 2, 1),
            ))
            .unwrap();
        assert!(sw.add_parent_port(net, "p", None, None).is_err());
        sw.set_segment(net, SegmentMode::Macvlan).unwrap();
        assert!(sw.add_parent_port(net, "p", Some(4095), None).is_err());
        let p = sw.add_parent_port(net, "p", Some(10), None).unwrap();
        assert!(sw.add_parent_port(net, "p2", None, None).is_err());
        let t = sw.topology();
        assert_eq!(t.network(net).unwrap().segment.unwrap().parent, Some(p));
        assert_eq!(
            t.port(p).unwrap().uplink,
            Some(Uplink {
                vlan: Some(10),
                routed: false
            })
        );
        assert!(sw.add_router_port(net, "r", false).is_err());
        sw.remove_port(p).unwrap();
        let t = sw.topology();
        assert_eq!(t.network(net).unwrap().segment.unwrap().parent, None);
        sw.remove_network(net).unwrap();
    }
}

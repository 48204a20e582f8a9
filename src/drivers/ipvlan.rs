//! `ipvlan`: containers on a parent's segment that all share the parent's
//! MAC, told apart by their addresses
//! (`-o parent=eth0[.VLAN] [-o ipvlan_mode=l2|l3|l3s] [-o ipvlan_flag=bridge]`).
//!
//! `l2` (the default):
//! As Docker's ipvlan l2: each container's interface carries the parent's
//! MAC (here: its TAP is given that MAC); the segment's router is the
//! gateway; ARP requests from the segment reach the containers, and the
//! one with the address answers with the parent's MAC, so the segment
//! sees one MAC for every container. tapnet's switch maps frames to
//! containers by address (`tapnet_switch::segment`). No gateway service,
//! NAT or published ports, as for macvlan; the embedded DNS answers at
//! `macvlan::DNS_ADDR` as on macvlan; the host does not reach its
//! containers through the parent.
//!
//! `l3`, as Docker's: the containers' interfaces share the parent's MAC
//! and do no ARP (NOARP); their default route is a device route
//! (`default dev eth0`, no gateway: `--gateway` is not used, and the
//! endpoint's Gateway is empty as in Docker); containers of the network
//! reach each other directly, and everything else is routed by the
//! daemon's network namespace out of the parent (tapnet's router port:
//! raw IP sockets bound to the parent, `crate::sys::rawip`, keeping the
//! container's source address). Other machines reach the containers with
//! a route to the network's subnet via the host's address on the parent.
//! No broadcast or multicast leaves or reaches the containers; the
//! host's own traffic on the parent stays the kernel's. `l3s` is accepted
//! and behaves as `l3` (the difference in the kernel is netfilter hooks on
//! the host, which tapnet's user-space routing does not pass through).
//! A VLAN parent in `l3` mode must be a kernel VLAN device (tapnet's own
//! 802.1Q tagging is for frames, and the kernel routes packets).
//! Caveat (as for `l2`): with IP forwarding on in the daemon's namespace,
//! the kernel also forwards the copies of inbound packets it sees on the
//! parent; a `blackhole` route for the subnet there stops that.
//!
//! IPv6 (`--ipv6` with the segment's IPv6 subnet, both modes): the
//! EUI-64 link-locals of a shared MAC would collide, so each endpoint's
//! interface has `addr_gen_mode none` and its own link-local
//! (`tapnet_switch::segment::ipvlan_link_local`, derived from its IPv4
//! address), which the switch's anti-spoofing takes instead of the EUI-64
//! one; `l2` maps IPv6 by address (solicited-node Neighbor Solicitations
//! reach every endpoint, as ARP requests do); `l3` routes IPv6 as IPv4,
//! through a second, IPv6, router port.
//!
//! Not supported: the `private`/`vepa` flags, refused with one line.

use super::macvlan::{self, SegmentError, OPT_PARENT};
use super::{Attachment, DriverError, DriverKind, NetworkDriver, Services};
use crate::daemon::types::{Map, NetworkCreate};
use crate::dataplane::{Dataplane, DataplaneError, NetId, PortId, PortSpec, SegmentMode};
use crate::model::*;
use crate::state::State;

pub struct Ipvlan;

/// Whether `n` is in `l3` (or `l3s`) mode.
fn is_l3(n: &Network) -> bool {
    matches!(
        n.options.get(OPT_IPVLAN_MODE).map(String::as_str),
        Some("l3" | "l3s")
    )
}

/// `-o ipvlan_mode=l2|l3|l3s`.
pub const OPT_IPVLAN_MODE: &str = "ipvlan_mode";
/// `-o ipvlan_flag=bridge`.
pub const OPT_IPVLAN_FLAG: &str = "ipvlan_flag";

impl NetworkDriver for Ipvlan {
    fn kind(&self) -> DriverKind {
        DriverKind::Ipvlan
    }

    fn attachment(&self) -> Attachment {
        Attachment::Switched
    }

    fn validate(
        &self,
        st: &State,
        req: &NetworkCreate,
        n: Network,
    ) -> Result<Network, DriverError> {
        let options: Map = req.options.clone().unwrap_or_default();
        for (k, v) in &options {
            match k.as_str() {
                OPT_PARENT | OPT_MTU => {}
                OPT_IPVLAN_MODE => match v.as_str() {
                    "" | "l2" | "l3" | "l3s" => {}
                    _ => return Err(SegmentError::BadIpvlanMode(v.clone()).into()),
                },
                OPT_IPVLAN_FLAG => match v.as_str() {
                    "" | "bridge" => {}
                    "private" | "vepa" => {
                        return Err(SegmentError::UnsupportedIpvlanFlag(v.clone()).into())
                    }
                    _ => return Err(SegmentError::BadIpvlanFlag(v.clone()).into()),
                },
                _ => {
                    return Err(DriverError::UnknownOption {
                        key: k.clone(),
                        known: [OPT_PARENT, OPT_IPVLAN_MODE, OPT_IPVLAN_FLAG, OPT_MTU].join(", "),
                    })
                }
            }
        }
        let n = macvlan::validate_segment(st, req, DriverKind::Ipvlan, &options, n)?;
        if is_l3(&n) {
            if let Some(p) = options.get(OPT_PARENT).filter(|p| !p.is_empty()) {
                if macvlan::parent(&n).is_some_and(|s| s.vlan.is_some()) {
                    return Err(SegmentError::L3Vlan(p.clone()).into());
                }
            }
        }
        Ok(n)
    }

    fn services(&self, n: &Network) -> Services {
        Services {
            default_route: !n.internal,
            // At macvlan::DNS_ADDR, as on macvlan.
            embedded_dns: true,
            publish: false,
            routed: is_l3(n),
        }
    }

    fn dns_address(
        &self,
        _: &Network,
        _: Option<std::net::Ipv4Addr>,
    ) -> Option<std::net::Ipv4Addr> {
        Some(macvlan::DNS_ADDR)
    }

    fn endpoint_mac(&self, n: &Network) -> Option<Mac> {
        let p = macvlan::parent(n)?;
        crate::sys::packet::hwaddr(&p.ifname).ok().map(Mac)
    }

    fn create(&self, dp: &Dataplane, id: NetId, n: &Network) -> Result<(), DataplaneError> {
        let parent = macvlan::parent_checked(n)?;
        dp.add_segment_network(
            id,
            macvlan::spec(n)?,
            if is_l3(n) {
                SegmentMode::IpvlanL3
            } else {
                SegmentMode::IpvlanL2
            },
            parent.as_ref(),
        )
    }

    fn delete(&self, dp: &Dataplane, id: NetId) -> Result<(), DataplaneError> {
        dp.remove_segment_network(id)
    }

    fn join(
        &self,
        dp: &Dataplane,
        spec: PortSpec,
        queues: Vec<std::os::fd::OwnedFd>,
    ) -> Result<PortId, DataplaneError> {
        dp.add_port(spec, queues)
    }

    fn leave(&self, dp: &Dataplane, port: PortId) -> Result<(), DataplaneError> {
        dp.remove_port(port)
    }
}

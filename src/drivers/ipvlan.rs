//! `ipvlan` (`l2` mode): containers on a parent's segment that all share
//! the parent's MAC, told apart by their IPv4 addresses
//! (`-o parent=eth0[.VLAN] [-o ipvlan_mode=l2] [-o ipvlan_flag=bridge]`).
//!
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
//! Not supported: `ipvlan_mode=l3`/`l3s` (routing through the host's
//! tables) and the `private`/`vepa` flags: refused with one line.

use super::macvlan::{self, SegmentError, OPT_PARENT};
use super::{Attachment, DriverError, DriverKind, NetworkDriver, Services};
use crate::daemon::types::{Map, NetworkCreate};
use crate::dataplane::{Dataplane, DataplaneError, NetId, PortId, PortSpec, SegmentMode};
use crate::model::*;
use crate::state::State;

pub struct Ipvlan;

/// `-o ipvlan_mode=l2`.
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
                    "" | "l2" => {}
                    "l3" | "l3s" => {
                        return Err(SegmentError::UnsupportedIpvlanMode(v.clone()).into())
                    }
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
        macvlan::validate_segment(st, req, DriverKind::Ipvlan, &options, n)
    }

    fn services(&self, n: &Network) -> Services {
        Services {
            default_route: !n.internal,
            // At macvlan::DNS_ADDR, as on macvlan.
            embedded_dns: true,
            publish: false,
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
            SegmentMode::IpvlanL2,
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

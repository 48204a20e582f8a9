//! `overlay`: one network across the hosts of a cluster (`tapnet daemon
//! --cluster-store`), its frames tunnelled between hosts in VXLAN over UDP
//! by the switch itself (and in IPsec ESP with `-o encrypted`). The
//! network record, its VNI, its addresses and its endpoints live in the
//! cluster store (`crate::cluster`); each host keeps a copy and its own
//! dataplane part (`src/daemon/overlay.rs` keeps them in step).
//!
//! Like Docker's overlay: the default subnet is the next free /24 of
//! 10.0.0.0/8, the MTU 1450 (room for the VXLAN encapsulation), the
//! gateway address is answered by every host's switch (ARP, ping, the
//! embedded DNS), and the way out is not the overlay: a container on no
//! network with a gateway gets an extra interface on the host's
//! `docker_gwbridge` network (made on demand, ICC off) holding its default
//! route and its published ports.
//!
//! Dual-stack like Docker's (`--ipv6 --subnet V4 --subnet V6`): the IPv6
//! pool is part of the network record in the cluster store, endpoints'
//! IPv6 addresses are allocated cluster-wide as the IPv4 ones are, every
//! host's switch answers the IPv6 gateway (Neighbor Discovery, echo) and
//! proxies Neighbor Discovery for the other hosts' endpoints, the DNS
//! answers AAAA for every host's names, and inner IPv6 (NDP multicast
//! included) crosses the VXLAN tunnel. The MTU must stay at least 1280
//! (IPv6's minimum). The way out stays IPv4: `docker_gwbridge` is IPv4
//! only, so an overlay container gets no IPv6 default route and reaches
//! no IPv6 address outside its networks (as in Docker, whose
//! `docker_gwbridge` has no IPv6 unless made by hand).
//!
//! Options: `encrypted` (`-o encrypted`), `com.docker.network.driver.mtu`,
//! `com.docker.network.driver.overlay.vxlanid_list` (the VNI),
//! `com.docker.network.bridge.enable_icc` (beyond Docker's overlay: ICC
//! off across hosts); others are refused.

use super::{bridge, Attachment, DriverError, DriverKind, NetworkDriver, Scope, Services};
use crate::cluster::VNI_OPTION;
use crate::daemon::types::{Map, NetworkCreate};
use crate::dataplane::{Dataplane, DataplaneError, NetId, PortId, PortSpec};
use crate::ipam;
use crate::model::*;
use crate::state::State;

pub struct Overlay;

/// The option that asks for ESP between hosts.
pub const OPT_ENCRYPTED: &str = "encrypted";
/// The overlay's default MTU (1500 minus VXLAN's 50 bytes).
pub const DEFAULT_MTU: u32 = 1450;
/// An encrypted overlay's default MTU: 1450 minus ESP's transport-mode
/// overhead with AES-GCM (SPI 4, sequence 4, IV 8, ICV 16, pad length and
/// next header 2, up to 3 of padding), rounded down to a multiple of 4 as
/// Docker does.
pub const ENCRYPTED_MTU: u32 = 1412;

const OPTIONS: [&str; 4] = [OPT_ENCRYPTED, OPT_MTU, VNI_OPTION, OPT_ICC];

/// Whether `n` is encrypted (`-o encrypted`, any value but false).
pub fn encrypted(n: &Network) -> bool {
    encrypted_opt(&n.options)
}

fn encrypted_opt(options: &Map) -> bool {
    options
        .get(OPT_ENCRYPTED)
        .is_some_and(|v| v.is_empty() || parse_bool(v).unwrap_or(true))
}

/// The VNI of an overlay (set when the cluster created it).
pub fn vni(n: &Network) -> Option<u32> {
    n.options.get(VNI_OPTION).and_then(|v| v.parse().ok())
}

impl NetworkDriver for Overlay {
    fn kind(&self) -> DriverKind {
        DriverKind::Overlay
    }

    fn scope(&self) -> Scope {
        Scope::Global
    }

    fn attachment(&self) -> Attachment {
        Attachment::Switched
    }

    fn validate(
        &self,
        st: &State,
        req: &NetworkCreate,
        mut n: Network,
    ) -> Result<Network, DriverError> {
        let (pool, ipam_options) = bridge::pool_of(st, req, ipam::overlay_default_subnets())?;
        let pool6 = bridge::pool6_of(st, req, n.enable_ipv6, &n.id)?;
        let mut options: Map = req.options.clone().unwrap_or_default();
        for (k, v) in &options {
            if !OPTIONS.contains(&k.as_str()) {
                return Err(DriverError::UnknownOption {
                    key: k.clone(),
                    known: OPTIONS.join(", "),
                });
            }
            if k == VNI_OPTION {
                match v.parse::<u32>() {
                    Ok(vni) if (1..1 << 24).contains(&vni) => {}
                    _ => {
                        return Err(DriverError::BadOption {
                            key: k.clone(),
                            value: v.clone(),
                            why: "expected one VNI between 1 and 16777215",
                        })
                    }
                }
            }
            if k == OPT_ENCRYPTED && !v.is_empty() && parse_bool(v).is_none() {
                return Err(DriverError::BadOption {
                    key: k.clone(),
                    value: v.clone(),
                    why: "expected true, false or nothing",
                });
            }
        }
        let mtu = if encrypted_opt(&options) {
            ENCRYPTED_MTU
        } else {
            DEFAULT_MTU
        };
        options
            .entry(OPT_MTU.to_string())
            .or_insert_with(|| mtu.to_string());
        let bridge_like: Map = options
            .iter()
            .filter(|(k, _)| [OPT_MTU, OPT_ICC].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        bridge::validate_options(&bridge_like)?;
        if pool6.is_some() && n.mtu_of(&options) < 1280 {
            return Err(DriverError::Ipv6Mtu(n.mtu_of(&options)));
        }
        n.pools = vec![pool];
        n.pools6 = pool6.into_iter().collect();
        n.ipam_options = ipam_options;
        n.options = options;
        // Every tapnet container is standalone: attachable unless asked
        // otherwise (`--attachable=false`).
        n.attachable = req.attachable.unwrap_or(true);
        Ok(n)
    }

    fn services(&self, n: &Network) -> Services {
        let _ = n;
        Services {
            // The way out (and in, for published ports) is the host's
            // docker_gwbridge.
            default_route: false,
            embedded_dns: true,
            publish: false,
            routed: false,
        }
    }

    fn create(&self, dp: &Dataplane, id: NetId, n: &Network) -> Result<(), DataplaneError> {
        bridge::add_overlay_to_dataplane(dp, id, n, vni(n).unwrap_or(0), encrypted(n))
    }

    fn delete(&self, dp: &Dataplane, id: NetId) -> Result<(), DataplaneError> {
        dp.remove_network(id)
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

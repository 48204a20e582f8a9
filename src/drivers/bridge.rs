//! `bridge`: containers' TAPs on tapnet's switch, one gateway per network
//! (ARP, ping, the embedded DNS on user-defined networks, the NAT), with
//! Docker's bridge options:
//!
//! - `com.docker.network.bridge.enable_icc` (default true),
//! - `com.docker.network.bridge.enable_ip_masquerade` (default true),
//! - `com.docker.network.bridge.host_binding_ipv4` (published ports'
//!   default host address),
//! - `com.docker.network.driver.mtu` (68-65535, default 1500),
//! - `com.docker.network.bridge.name` (shown only: there is no kernel
//!   bridge; unique like Docker's),
//! - `com.docker.network.bridge.default_bridge` (the predefined `bridge`
//!   only).
//!
//! One IPv4 pool per network (Docker's default IPAM: `crate::ipam`); it
//! may not overlap any other network's.

use std::os::fd::OwnedFd;

use ipnet::Ipv4Net;

use super::{Attachment, DriverError, DriverKind, NetworkDriver, Services};
use crate::daemon::types::{IpamConfigReq, Map, NetworkCreate};
use crate::dataplane::{
    Dataplane, DataplaneError, NetId, NetworkSpec, OverlaySpec, PortId, PortSpec,
};
use crate::ipam::{self, PoolRequest};
use crate::model::*;
use crate::state::State;

pub struct Bridge;

impl NetworkDriver for Bridge {
    fn kind(&self) -> DriverKind {
        DriverKind::Bridge
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
        let (pool, ipam_options) = pool_of(st, req, ipam::default_subnets())?;
        let pool6 = pool6_of(st, req, n.enable_ipv6, &n.id)?;
        let options = req.options.clone().unwrap_or_default();
        validate_options(&options)?;
        if pool6.is_some() && n.mtu_of(&options) < 1280 {
            return Err(DriverError::Ipv6Mtu(n.mtu_of(&options)));
        }
        if let Some(b) = options.get(OPT_BRIDGE_NAME) {
            if let Some(other) = st
                .networks
                .values()
                .find(|n| n.options.get(OPT_BRIDGE_NAME) == Some(b))
            {
                return Err(DriverError::BridgeNameInUse {
                    name: b.clone(),
                    other: other.name.clone(),
                });
            }
        }
        n.pools = vec![pool];
        n.pools6 = pool6.into_iter().collect();
        n.ipam_options = ipam_options;
        n.options = options;
        Ok(n)
    }

    fn services(&self, n: &Network) -> Services {
        Services {
            default_route: !n.internal,
            // Docker: no embedded DNS on the default bridge.
            embedded_dns: !n.is_default_bridge(),
            publish: !n.internal,
            routed: false,
        }
    }

    fn create(&self, dp: &Dataplane, id: NetId, n: &Network) -> Result<(), DataplaneError> {
        add_to_dataplane(dp, id, n, self.services(n).embedded_dns)
    }

    fn delete(&self, dp: &Dataplane, id: NetId) -> Result<(), DataplaneError> {
        dp.remove_network(id)
    }

    fn join(
        &self,
        dp: &Dataplane,
        spec: PortSpec,
        queues: Vec<OwnedFd>,
    ) -> Result<PortId, DataplaneError> {
        dp.add_port(spec, queues)
    }

    fn leave(&self, dp: &Dataplane, port: PortId) -> Result<(), DataplaneError> {
        dp.remove_port(port)
    }
}

/// A switched network with a gateway (ARP, ping, NAT; the embedded DNS
/// when `dns`) in the dataplane, from its first pool and Docker's bridge
/// options.
pub(super) fn add_to_dataplane(
    dp: &Dataplane,
    id: NetId,
    n: &Network,
    dns: bool,
) -> Result<(), DataplaneError> {
    add_switched(dp, id, n, dns, None)
}

fn add_switched(
    dp: &Dataplane,
    id: NetId,
    n: &Network,
    dns: bool,
    overlay: Option<OverlaySpec>,
) -> Result<(), DataplaneError> {
    let Some(pool) = n.pools.first() else {
        return Err(DataplaneError::NoPool(n.name.clone()));
    };
    dp.add_network(
        id,
        NetworkSpec {
            name: n.name.clone(),
            subnet: pool.subnet,
            gateway: pool.gateway,
            icc: n.icc(),
            mtu: n.mtu(),
            internal: n.internal,
            masquerade: n.masquerade(),
            dns,
            overlay,
            v6: n.pools6.first().map(|p| (p.subnet, p.gateway)),
        },
    )
}

/// The one IPv4 pool of `network create` (default IPAM only), checked
/// against every network's: the subnet asked for, else the first of
/// `defaults` that overlaps none. Also returns the IPAM options.
pub(super) fn pool_of(
    st: &State,
    req: &NetworkCreate,
    defaults: impl Iterator<Item = Ipv4Net>,
) -> Result<(Pool, Map), DriverError> {
    if req.ingress {
        return Err(DriverError::Ingress);
    }
    let ipam_req = req.ipam.clone().unwrap_or_default();
    if let Some(d) = ipam_req.driver.as_deref() {
        if !d.is_empty() && d != "default" {
            return Err(DriverError::IpamDriver(d.to_string()));
        }
    }
    let mut configs: Vec<IpamConfigReq> = ipam_req.config.clone().unwrap_or_default();
    configs.retain(|c| !is_ipv6_config(c));
    if configs.len() > 1 {
        return Err(DriverError::OneSubnet);
    }
    let c = configs.pop().unwrap_or_default();
    let used_nets: Vec<Ipv4Net> = st
        .networks
        .values()
        .flat_map(|n| n.pools.iter().map(|p| p.subnet))
        .collect();
    let pool = ipam::make_pool_from(
        &PoolRequest {
            subnet: c.subnet.clone(),
            ip_range: c.ip_range.clone(),
            gateway: c.gateway.clone(),
            aux: c.auxiliary_addresses.clone().unwrap_or_default(),
        },
        &used_nets,
        defaults,
    )?;
    check_overlap(st, pool.subnet)?;
    Ok((pool, ipam_req.options.clone().unwrap_or_default()))
}

/// Whether an `IPAM.Config` entry is an IPv6 one (by its subnet).
fn is_ipv6_config(c: &IpamConfigReq) -> bool {
    c.subnet.as_deref().unwrap_or("").contains(':')
}

/// The IPv6 entries of a request's `IPAM.Config`.
pub(super) fn ipv6_configs(req: &NetworkCreate) -> impl Iterator<Item = &IpamConfigReq> {
    req.ipam
        .iter()
        .flat_map(|i| i.config.iter().flatten())
        .filter(|c| is_ipv6_config(c))
}

/// The IPv6 pool of `network create`: none without `--ipv6` (an IPv6
/// subnet without it is refused), else the subnet asked for or a
/// unique-local /64 (see [`ipam::make_pool6`]), checked against every
/// network's.
pub(super) fn pool6_of(
    st: &State,
    req: &NetworkCreate,
    enable: bool,
    seed: &str,
) -> Result<Option<Pool6>, DriverError> {
    let configs: Vec<&IpamConfigReq> = ipv6_configs(req).collect();
    if !enable {
        return match configs.first() {
            Some(c) => Err(DriverError::Ipv6NotEnabled(
                c.subnet.clone().unwrap_or_default(),
            )),
            None => Ok(None),
        };
    }
    if configs.len() > 1 {
        return Err(DriverError::OneSubnet6);
    }
    let c = configs.first().map(|c| (*c).clone()).unwrap_or_default();
    let used: Vec<ipnet::Ipv6Net> = st
        .networks
        .values()
        .flat_map(|n| n.pools6.iter().map(|p| p.subnet))
        .collect();
    let pool = ipam::make_pool6(
        &PoolRequest {
            subnet: c.subnet.clone(),
            ip_range: c.ip_range.clone(),
            gateway: c.gateway.clone(),
            aux: c.auxiliary_addresses.clone().unwrap_or_default(),
        },
        &used,
        seed,
    )?;
    for n in st.networks.values() {
        if let Some(p) = n
            .pools6
            .iter()
            .find(|p| ipam::overlaps6(&p.subnet, &pool.subnet))
        {
            return Err(DriverError::Overlap6 {
                subnet: pool.subnet,
                other: n.name.clone(),
                theirs: p.subnet,
            });
        }
    }
    Ok(Some(pool))
}

/// An overlay network's local part in the dataplane: switched like a
/// bridge network (gateway answered by this host's switch, embedded DNS),
/// tunnelled to the other hosts with VNI `vni`.
pub(super) fn add_overlay_to_dataplane(
    dp: &Dataplane,
    id: NetId,
    n: &Network,
    vni: u32,
    encrypted: bool,
) -> Result<(), DataplaneError> {
    // Without a VTEP (a daemon restarted without --cluster-store) the
    // dataplane refuses it (NoVtep): never a silently host-local overlay.
    add_switched(dp, id, n, true, Some(OverlaySpec { vni, encrypted }))
}

/// The first network whose pool overlaps `subnet`, as a driver error.
pub(super) fn check_overlap(st: &State, subnet: Ipv4Net) -> Result<(), DriverError> {
    for n in st.networks.values() {
        if let Some(p) = n.pools.iter().find(|p| ipam::overlaps(&p.subnet, &subnet)) {
            return Err(DriverError::Overlap {
                subnet,
                other: n.name.clone(),
                theirs: p.subnet,
            });
        }
    }
    Ok(())
}

pub(super) fn validate_options(opts: &Map) -> Result<(), DriverError> {
    for (k, v) in opts {
        let bad = |why: &'static str| DriverError::BadOption {
            key: k.clone(),
            value: v.clone(),
            why,
        };
        match k.as_str() {
            OPT_ICC | OPT_MASQ => {
                parse_bool(v).ok_or_else(|| bad("expected true or false"))?;
            }
            OPT_HOST_BINDING => {
                v.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| bad("expected an IPv4 address"))?;
            }
            OPT_MTU => match v.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => {}
                _ => return Err(bad("expected an MTU between 68 and 65535")),
            },
            OPT_BRIDGE_NAME
                if v.is_empty()
                    || v.len() > 15
                    || v.chars().any(|c| c.is_whitespace() || c == '/' || c == ':') =>
            {
                return Err(bad("expected an interface name of 1-15 characters"));
            }
            OPT_DEFAULT_BRIDGE => return Err(DriverError::Reserved(k.clone())),
            _ => {}
        }
    }
    Ok(())
}

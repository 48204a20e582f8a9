//! `macvlan`: containers with their own MAC addresses directly on a
//! physical segment, reached through a parent interface of the daemon's
//! network namespace (`-o parent=eth0`, or `-o parent=eth0.10` for 802.1Q
//! VLAN 10, tagged by tapnet itself: no kernel VLAN device is made).
//!
//! As Docker's macvlan driver (bridge mode): containers on one network
//! reach each other directly and every other MAC through the parent; the
//! gateway (`--gateway`) is the segment's router, not tapnet's: no ARP or
//! ping answers for it, no NAT, no published ports.
//!
//! The embedded DNS works as on a user-defined bridge (names, aliases,
//! `NAME.NETWORK`, forwarding of other names to the daemon's upstreams,
//! none with `--internal`), answered by the switch at the link-local
//! service address [`DNS_ADDR`] (169.254.0.53) instead of the gateway:
//! each container has a host route to it on its interface and
//! `nameserver 169.254.0.53` (Docker's rule: the first user-defined
//! network's DNS). Queries never reach the segment. IPv4 only: over it,
//! AAAA answers too. Unlike Docker, whose resolver (127.0.0.11) lives in
//! the container's own namespace, the address is on the wire of the
//! container's interface; a host of the segment that holds 169.254.0.53
//! is not reachable from the containers.
//! The host itself does not reach its containers through the parent
//! (neither does Docker's: a macvlan parent never delivers to its own
//! children). Without a parent (or with `--internal`) the containers of a
//! network reach only each other, like Docker's dummy parent.
//!
//! Unlike Docker: the containers' ports are TAPs switched by tapnet onto
//! an AF_PACKET socket on the parent (`crate::sys::packet`), so only the
//! `bridge` mode exists (`private`, `vepa` and `passthru` are refused).
//!
//! Options: `parent`, `macvlan_mode` and `com.docker.network.driver.mtu`
//! (default: the parent's MTU, as Docker's; never above it); one network
//! per parent and VLAN (Docker's rule); others are refused.

use super::{bridge, Attachment, DriverError, DriverKind, NetworkDriver, Services};
use crate::daemon::types::{Map, NetworkCreate};
use crate::dataplane::{
    Dataplane, DataplaneError, NetId, NetworkSpec, ParentSpec, PortId, PortSpec, SegmentMode,
};
use crate::ipam;
use crate::model::*;
use crate::state::State;
pub use tapnet_switch::segment::DNS_ADDR;

pub struct Macvlan;

/// `-o parent=IFACE[.VLAN]`.
pub const OPT_PARENT: &str = "parent";
/// `-o macvlan_mode=bridge`.
pub const OPT_MACVLAN_MODE: &str = "macvlan_mode";

/// Why a macvlan/ipvlan network was refused.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SegmentError {
    /// network "{network}" is already using parent interface {parent}
    ParentInUse { network: String, parent: String },
    /// the requested parent interface {0} was not found in the daemon's network namespace
    NoParent(String),
    /// loopback interface is not a valid {0} parent link
    Loopback(DriverKind),
    /// required parent interface name format is: name.vlan_id, ex. eth0.10 for vlan 10, instead received {0}
    VlanFormat(String),
    /// vlan id must be between 1-4094, received: {0}
    VlanRange(String),
    /// requested macvlan mode '{0}' is not valid, 'bridge' mode is the macvlan driver default
    BadMacvlanMode(String),
    /// macvlan mode '{0}' is not supported by tapnet: only 'bridge' is
    UnsupportedMacvlanMode(String),
    /// an --internal {0} network has no parent interface: drop -o parent
    InternalWithParent(DriverKind),
    /// the MTU {mtu} is larger than parent {parent}'s ({parent_mtu})
    MtuAboveParent {
        mtu: u32,
        parent: String,
        parent_mtu: u32,
    },
    /// requested ipvlan mode '{0}' is not valid, 'l2' mode is the ipvlan driver default
    BadIpvlanMode(String),
    /// ipvlan mode l3 routes through the daemon's namespace, which has no interface {0}: make that kernel VLAN device, or use -o ipvlan_mode=l2 (tapnet tags VLANs itself in l2 mode only)
    L3Vlan(String),
    /// requested ipvlan flag '{0}' is not valid, 'bridge' is the ipvlan driver default
    BadIpvlanFlag(String),
    /// ipvlan flag '{0}' is not supported by tapnet: only 'bridge' is
    UnsupportedIpvlanFlag(String),
}

/// A network's parent (`None`: internal or no `-o parent`).
pub fn parent(n: &Network) -> Option<ParentSpec> {
    if n.internal {
        return None;
    }
    let p = n.options.get(OPT_PARENT)?;
    if p.is_empty() {
        return None;
    }
    parse_parent(p, |name| crate::sys::packet::ifindex(name).is_ok()).ok()
}

/// [`parent`], or an error when the network names one that is gone (since
/// the network was made: a restarted daemon).
pub(super) fn parent_checked(n: &Network) -> Result<Option<ParentSpec>, DataplaneError> {
    let p = parent(n);
    match n.options.get(OPT_PARENT) {
        Some(name) if p.is_none() && !n.internal && !name.is_empty() => {
            Err(DataplaneError::Parent {
                parent: name.clone(),
                err: crate::sys::packet::PacketError::NoInterface(name.clone()),
            })
        }
        _ => Ok(p),
    }
}

/// `IFACE` or `IFACE.VLAN`: an interface of that exact name is taken
/// untagged (it may be a kernel VLAN device); otherwise the part after
/// the dot is the VLAN id (Docker's `parseVlan`).
fn parse_parent(p: &str, exists: impl Fn(&str) -> bool) -> Result<ParentSpec, SegmentError> {
    if exists(p) {
        return Ok(ParentSpec {
            ifname: p.to_string(),
            vlan: None,
        });
    }
    if !p.contains('.') {
        return Err(SegmentError::NoParent(p.to_string()));
    }
    let parts: Vec<&str> = p.split('.').collect();
    let [name, vid] = parts.as_slice() else {
        return Err(SegmentError::VlanFormat(p.to_string()));
    };
    let vid: u16 = match vid.parse::<i64>() {
        Ok(v) if (1..=4094).contains(&v) => v as u16,
        Ok(_) => return Err(SegmentError::VlanRange(vid.to_string())),
        Err(_) => return Err(SegmentError::VlanFormat(p.to_string())),
    };
    if !exists(name) {
        return Err(SegmentError::NoParent(name.to_string()));
    }
    Ok(ParentSpec {
        ifname: name.to_string(),
        vlan: Some(vid),
    })
}

/// The checks every network on a parent shares (macvlan, ipvlan): the
/// pool, the parent (exists, not `lo`, not used by another network of the
/// same parent and VLAN, none on `--internal`).
pub(super) fn validate_segment(
    st: &State,
    req: &NetworkCreate,
    kind: DriverKind,
    options: &Map,
    mut n: Network,
) -> Result<Network, DriverError> {
    // IPv6 (and the segment's own Neighbor Discovery and router) works as
    // IPv4 does, with the segment's subnet given: macvlan switches by MAC,
    // ipvlan maps by address (each endpoint with its own link-local).
    if n.enable_ipv6 && bridge::ipv6_configs(req).next().is_none() {
        return Err(DriverError::Ipv6SubnetNeeded(kind.name()));
    }
    let pool6 = bridge::pool6_of(st, req, n.enable_ipv6, &n.id)?;
    let (pool, ipam_options) = bridge::pool_of(st, req, ipam::default_subnets())?;
    let mut options = options.clone();
    let mut parent_mtu = None;
    if let Some(p) = options.get(OPT_PARENT).filter(|p| !p.is_empty()) {
        if req.internal {
            return Err(SegmentError::InternalWithParent(kind).into());
        }
        if p == "lo" {
            return Err(SegmentError::Loopback(kind).into());
        }
        let spec = parse_parent(p, |name| crate::sys::packet::ifindex(name).is_ok())?;
        parent_mtu = crate::sys::packet::mtu(&spec.ifname)
            .ok()
            .map(|m| (spec.ifname, m));
        if let Some(other) = st.networks.values().find(|o| {
            matches!(o.driver, DriverKind::Macvlan | DriverKind::Ipvlan)
                && o.options.get(OPT_PARENT) == Some(p)
        }) {
            return Err(SegmentError::ParentInUse {
                network: other.name.clone(),
                parent: p.clone(),
            }
            .into());
        }
    }
    // Docker's: the parent's MTU unless a smaller one is asked for.
    match (options.get(OPT_MTU), parent_mtu) {
        (Some(v), pm) => {
            let mtu = match v.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => m,
                _ => {
                    return Err(DriverError::BadOption {
                        key: OPT_MTU.into(),
                        value: v.clone(),
                        why: "expected an MTU between 68 and 65535",
                    })
                }
            };
            if let Some((parent, parent_mtu)) = pm.filter(|(_, p)| mtu > *p) {
                return Err(SegmentError::MtuAboveParent {
                    mtu,
                    parent,
                    parent_mtu,
                }
                .into());
            }
        }
        (None, Some((_, m))) if (68..=65535).contains(&m) => {
            options.insert(OPT_MTU.into(), m.to_string());
        }
        (None, _) => {}
    }
    n.pools = vec![pool];
    n.pools6 = pool6.into_iter().collect();
    n.ipam_options = ipam_options;
    n.options = options;
    n.attachable = req.attachable.unwrap_or(false);
    Ok(n)
}

/// The switch's view of a network on a parent.
pub(super) fn spec(n: &Network) -> Result<NetworkSpec, DataplaneError> {
    let Some(pool) = n.pools.first() else {
        return Err(DataplaneError::NoPool(n.name.clone()));
    };
    Ok(NetworkSpec {
        name: n.name.clone(),
        subnet: pool.subnet,
        gateway: pool.gateway,
        icc: true,
        mtu: n.mtu(),
        // The NAT never acts on a segment network
        // (`Dataplane::add_segment_network`): `internal` is for the DNS,
        // which forwards what is not local unless `--internal`.
        internal: n.internal,
        masquerade: false,
        dns: true,
        overlay: None,
        v6: None,
    })
}

impl NetworkDriver for Macvlan {
    fn kind(&self) -> DriverKind {
        DriverKind::Macvlan
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
                OPT_MACVLAN_MODE => match v.as_str() {
                    "" | "bridge" => {}
                    "private" | "vepa" | "passthru" => {
                        return Err(SegmentError::UnsupportedMacvlanMode(v.clone()).into())
                    }
                    _ => return Err(SegmentError::BadMacvlanMode(v.clone()).into()),
                },
                _ => {
                    return Err(DriverError::UnknownOption {
                        key: k.clone(),
                        known: [OPT_PARENT, OPT_MACVLAN_MODE, OPT_MTU].join(", "),
                    })
                }
            }
        }
        validate_segment(st, req, DriverKind::Macvlan, &options, n)
    }

    fn services(&self, n: &Network) -> Services {
        Services {
            // Through the segment's router.
            default_route: !n.internal,
            // At DNS_ADDR (Docker: on every user-defined network).
            embedded_dns: true,
            publish: false,
            routed: false,
        }
    }

    fn dns_address(
        &self,
        _: &Network,
        _: Option<std::net::Ipv4Addr>,
    ) -> Option<std::net::Ipv4Addr> {
        Some(DNS_ADDR)
    }

    fn create(&self, dp: &Dataplane, id: NetId, n: &Network) -> Result<(), DataplaneError> {
        let parent = parent_checked(n)?;
        dp.add_segment_network(id, spec(n)?, SegmentMode::Macvlan, parent.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        let exists = |n: &str| ["eth0", "eth1.5"].contains(&n);
        let p = parse_parent("eth0", exists).unwrap();
        assert_eq!((p.ifname.as_str(), p.vlan), ("eth0", None));
        let p = parse_parent("eth0.10", exists).unwrap();
        assert_eq!((p.ifname.as_str(), p.vlan), ("eth0", Some(10)));
        let p = parse_parent("eth1.5", exists).unwrap();
        assert_eq!((p.ifname.as_str(), p.vlan), ("eth1.5", None));
        for (bad, msg) in [
            ("eth9", "eth9 was not found"),
            ("eth9.10", "eth9 was not found"),
            ("eth0.0", "between 1-4094, received: 0"),
            ("eth0.4095", "received: 4095"),
            ("eth0.x", "name.vlan_id"),
            ("eth0.1.2", "name.vlan_id"),
        ] {
            let e = parse_parent(bad, exists).unwrap_err().to_string();
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }
}

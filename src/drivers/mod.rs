//! Network drivers: what differs per network kind, one file per kind
//! behind one trait ([`NetworkDriver`]), chosen by kind ([`driver`]).
//!
//! A driver validates `network create` (its options, its address pools)
//! into a [`Network`] record, creates and deletes the network's dataplane
//! state, joins and leaves endpoints (dataplane ports), and says how
//! containers use the network ([`Attachment`]) and what its gateway
//! provides ([`Services`]). The daemon calls these in its transactions:
//! validation touches nothing; `create`/`join` are undone with
//! `delete`/`leave` when a later step fails.
//!
//! A new kind (overlay, macvlan, ipvlan, the Docker-facing driver) is a
//! new file here and a variant of [`DriverKind`], not a branch in the
//! daemon.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::daemon::types::NetworkCreate;
use crate::dataplane::{Dataplane, DataplaneError, NetId, PortId, PortSpec};
use crate::ipam::IpamError;
use crate::model::Network;
use crate::state::State;

mod bridge;
pub mod docker;
mod host;
pub mod ipvlan;
pub mod macvlan;
mod null;
pub mod overlay;

/// The kinds of network tapnet knows, by Docker's driver names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Containers' TAPs on tapnet's switch, with a gateway (ARP, ping,
    /// embedded DNS, NAT) per network.
    Bridge,
    /// The daemon's own network namespace.
    Host,
    /// Only `lo`.
    Null,
    /// A network dockerd made through tapnet's driver plugin (`docker
    /// network create -d tapnet`): switched like `bridge`, with Docker's
    /// addresses, its endpoints owned by Docker.
    Docker,
    /// One network across the hosts of a cluster, tunnelled in VXLAN.
    Overlay,
    /// Containers with their own MACs on a parent interface's segment.
    Macvlan,
    /// Containers sharing a parent interface's MAC on its segment.
    Ipvlan,
}

impl DriverKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [DriverKind; 7] = [
        DriverKind::Bridge,
        DriverKind::Host,
        DriverKind::Null,
        DriverKind::Docker,
        DriverKind::Overlay,
        DriverKind::Macvlan,
        DriverKind::Ipvlan,
    ];

    /// Docker's name of the driver.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Bridge => "bridge",
            DriverKind::Host => "host",
            DriverKind::Null => "null",
            DriverKind::Docker => "docker",
            DriverKind::Overlay => "overlay",
            DriverKind::Macvlan => "macvlan",
            DriverKind::Ipvlan => "ipvlan",
        }
    }

    /// The kind named `name` (empty: `bridge`, Docker's default).
    pub fn parse(name: &str) -> Result<DriverKind, DriverError> {
        if name.is_empty() {
            return Ok(DriverKind::Bridge);
        }
        if let Some(k) = DriverKind::ALL.into_iter().find(|k| k.name() == name) {
            return Ok(k);
        }
        Err(DriverError::Unknown(name.to_string()))
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a container uses a network of a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// An endpoint (a TAP switched by the dataplane) per network; several
    /// networks may be combined.
    Switched,
    /// The container shares the daemon's network namespace (`host`);
    /// alone.
    HostNamespace,
    /// The container has only `lo` (`none`); alone.
    Isolated,
    /// Endpoints belong to an external runtime (Docker); tapnet's own
    /// containers cannot join.
    External,
}

/// Where a network's state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// This daemon's store only.
    Local,
    /// The cluster store, shared by every host (Docker's "global").
    Global,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

/// What a network's gateway provides to its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Services {
    /// The gateway holds a container's default route (not on `--internal`
    /// networks).
    pub default_route: bool,
    /// Names answered by the switch (Docker: user-defined networks only),
    /// at the address [`NetworkDriver::dns_address`] says.
    pub embedded_dns: bool,
    /// Published ports lead to containers on it (not `--internal`).
    pub publish: bool,
    /// Routed at layer 3 without a gateway (ipvlan `l3`): the endpoint's
    /// link does no ARP (NOARP), has no gateway address, and its default
    /// route, when it holds one, is a device route.
    pub routed: bool,
}

/// Errors of a driver's validation of `network create`.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum DriverError {
    /// network driver "{0}" not found (tapnet has bridge, overlay, macvlan, ipvlan, host and null)
    Unknown(String),
    /// networks of driver "docker" are made by dockerd: docker network create -d tapnet
    DockerOnly,
    /// Docker sent {0}
    DockerRequest(String),
    /// driver {0} is not supported yet
    NotYet(String),
    /// only one instance of "{0}" network is allowed
    OnlyOne(DriverKind),
    /// unknown option {key} (tapnet's Docker networks take {known})
    UnknownOption { key: String, known: String },
    /// invalid value {value:?} for option {key}: {why}
    BadOption {
        key: String,
        value: String,
        why: &'static str,
    },
    /// option {0} is reserved for the predefined bridge network
    Reserved(String),
    /// bridge name {name} is already used by network "{other}"
    BridgeNameInUse { name: String, other: String },
    /// IPAM driver {0} is not supported (only "default")
    IpamDriver(String),
    /// IPv6 is not supported on {0} networks yet
    Ipv6(&'static str),
    /// --ipv6 on a {0} network needs the segment's IPv6 --subnet (its router's prefix)
    Ipv6SubnetNeeded(&'static str),
    /// IPv6 subnet {0} given, but IPv6 is not enabled on the network: add --ipv6
    Ipv6NotEnabled(String),
    /// only one IPv4 subnet per network is supported
    OneSubnet,
    /// only one IPv6 subnet per network is supported
    OneSubnet6,
    /// the MTU of a network with IPv6 must be at least 1280 (IPv6's minimum link MTU), not {0}
    Ipv6Mtu(u32),
    /// {0}
    Ipam6(#[from] crate::ipam::Ipam6Error),
    /// subnet {subnet} overlaps with network "{other}" ({theirs})
    Overlap6 {
        subnet: ipnet::Ipv6Net,
        other: String,
        theirs: ipnet::Ipv6Net,
    },
    /// ingress networks are not supported
    Ingress,
    /// {0}
    Ipam(#[from] IpamError),
    /// {0}
    Segment(#[from] macvlan::SegmentError),
    /// subnet {subnet} overlaps with network "{other}" ({theirs})
    Overlap {
        subnet: ipnet::Ipv4Net,
        other: String,
        theirs: ipnet::Ipv4Net,
    },
}

/// One network kind (see the module doc).
pub trait NetworkDriver: Sync {
    fn kind(&self) -> DriverKind;

    /// Where networks of this kind live (the daemon keeps global ones in
    /// step with the cluster store).
    fn scope(&self) -> Scope {
        Scope::Local
    }

    /// How containers use networks of this kind.
    fn attachment(&self) -> Attachment;

    /// Checks `network create -d KIND` against the state and fills in
    /// what the kind decides in `base` (address pools, driver options);
    /// `base` already holds the id, name, labels and flags. Touches
    /// nothing.
    fn validate(
        &self,
        st: &State,
        req: &NetworkCreate,
        base: Network,
    ) -> Result<Network, DriverError>;

    /// What the gateway of `n` provides.
    fn services(&self, n: &Network) -> Services;

    /// Where a container's resolver asks the embedded DNS of `n` (its
    /// `nameserver` line), for an endpoint whose gateway is `gateway`:
    /// `None` when the network has none. By default the gateway, where the
    /// switch answers; macvlan and ipvlan, whose gateway is the segment's
    /// router, answer at [`tapnet_switch::segment::DNS_ADDR`] (the sandbox
    /// routes it on the interface: [`crate::sandbox::TapConfig::dns_route`]).
    fn dns_address(&self, n: &Network, gateway: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        gateway.filter(|_| self.services(n).embedded_dns)
    }

    /// Makes (or updates) the network's dataplane state under `id`.
    fn create(&self, _dp: &Dataplane, _id: NetId, _n: &Network) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// The MAC every endpoint of `n` must have (ipvlan: the parent's),
    /// if the kind fixes one.
    fn endpoint_mac(&self, _n: &Network) -> Option<crate::model::Mac> {
        None
    }

    /// Removes the network's dataplane state.
    fn delete(&self, _dp: &Dataplane, _id: NetId) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Adds an endpoint's port (its TAP queues, one per worker).
    fn join(
        &self,
        _dp: &Dataplane,
        spec: PortSpec,
        _queues: Vec<OwnedFd>,
    ) -> Result<PortId, DataplaneError> {
        Err(DataplaneError::NotSwitched {
            port: spec.name,
            driver: self.kind().name(),
        })
    }

    /// Removes an endpoint's port.
    fn leave(&self, _dp: &Dataplane, _port: PortId) -> Result<(), DataplaneError> {
        Ok(())
    }
}

/// The driver of a kind.
pub fn driver(kind: DriverKind) -> &'static dyn NetworkDriver {
    match kind {
        DriverKind::Bridge => &bridge::Bridge,
        DriverKind::Host => &host::Host,
        DriverKind::Null => &null::Null,
        DriverKind::Docker => &docker::Docker,
        DriverKind::Overlay => &overlay::Overlay,
        DriverKind::Macvlan => &macvlan::Macvlan,
        DriverKind::Ipvlan => &ipvlan::Ipvlan,
    }
}

/// The driver of a network.
pub fn of(n: &Network) -> &'static dyn NetworkDriver {
    driver(n.driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name() {
        for k in DriverKind::ALL {
            assert_eq!(DriverKind::parse(k.name()).unwrap(), k);
            assert_eq!(driver(k).kind(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.name())
            );
        }
        assert_eq!(DriverKind::parse("").unwrap(), DriverKind::Bridge);
        let e = DriverKind::parse("zz").unwrap_err();
        assert!(matches!(e, DriverError::Unknown(_)));
        assert!(e.to_string().contains("\"zz\" not found"));
    }
}

//! The live datapath: worker threads that own one queue of every TAP port,
//! read batches, run the `tapnet_switch` pipeline and write to the
//! destination queue they also own. OWNER: lead (see CONTRIBUTING notes).
//!
//! The control plane (daemon) drives it through [`Dataplane`]; every method
//! is cheap and thread-safe (it publishes a new snapshot).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

/// Dense numeric id of a network inside the dataplane (the daemon maps its
/// 64-hex network ids to these).
pub type NetId = u32;
/// Dense numeric id of a port inside the dataplane.
pub type PortId = u32;

/// What the switch needs to know about a network.
#[derive(Clone, Debug)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    /// `com.docker.network.bridge.enable_icc` (default true).
    pub icc: bool,
    pub mtu: u32,
    pub internal: bool,
    /// Embedded DNS answers on this network (false for the default
    /// `bridge`, as in Docker).
    pub dns: bool,
}

/// A container's names on one network, for the embedded DNS.
#[derive(Clone, Debug, Default)]
pub struct DnsEndpoint {
    pub container_id: String,
    pub name: String,
    pub hostname: Option<String>,
    /// `--network-alias` / `network connect --alias`.
    pub aliases: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    /// Legacy links `(container, alias)`, resolved only by this container.
    pub links: Vec<(String, String)>,
    /// The container's `--dns` servers (forwarding targets), if any.
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// Settings of the dataplane.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Worker threads (>= 1): one TAP queue each.
    pub workers: usize,
    /// The daemon's `--dns-upstream` servers (else the host's resolv.conf).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// TTL of the embedded DNS's own answers.
    pub dns_ttl: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            workers: 1,
            dns_upstreams: Vec::new(),
            dns_ttl: 600,
        }
    }
}

/// What the switch needs to know about a port (one container interface).
#[derive(Clone, Debug)]
pub struct PortSpec {
    /// Human name, e.g. `CONTAINERNAME/eth0`.
    pub name: String,
    pub network: NetId,
    /// Assigned MAC; with `ip`, the port is spoof-checked.
    pub mac: Option<[u8; 6]>,
    pub ip: Option<Ipv4Addr>,
}

pub use imp::Dataplane;

pub mod dns;
mod imp;

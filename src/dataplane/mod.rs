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

mod imp;

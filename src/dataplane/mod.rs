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
    /// `--internal`: no outbound traffic, no published ports, no host
    /// loopback; only the embedded DNS answers at the gateway.
    pub internal: bool,
    /// `com.docker.network.bridge.enable_ip_masquerade`: when false,
    /// containers cannot reach addresses outside the network (the host's
    /// loopback through the gateway still works unless turned off).
    pub masquerade: bool,
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
    /// TCP/UDP to a network's gateway address (other than DNS) reaches the
    /// host's loopback, and `host.tapnet.internal` / `host.docker.internal`
    /// name the gateway (`tapnet daemon --no-host-loopback` turns it off).
    pub host_loopback: bool,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            workers: 1,
            dns_upstreams: Vec::new(),
            dns_ttl: 600,
            host_loopback: true,
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

/// A bound host socket of a published port.
#[derive(Debug)]
pub enum HostSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// One published port (`run -p`): the daemon binds the host socket (so a
/// taken port fails `run` with a clear error) and hands it over; the NAT
/// gateway accepts/receives on it and relays into the container, keeping
/// the client's address as the source.
#[derive(Debug)]
pub struct Published {
    /// Who owns it (the container id): [`Dataplane::unpublish`] closes
    /// all of one owner's sockets.
    pub owner: String,
    pub network: NetId,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    pub socket: HostSocket,
}

/// One flow of the connection table, as `tapnet conntrack` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlowRow {
    /// `tcp`, `udp` or `icmp`.
    pub protocol: &'static str,
    /// `outbound` (opened by the container) or `inbound` (published port).
    pub direction: &'static str,
    /// e.g. `syn_sent`, `established`, `fin_wait`, `closing`, `closed`,
    /// `unreplied`, `replied`.
    pub state: &'static str,
    pub network: NetId,
    pub container_ip: std::net::IpAddr,
    /// The echo identifier for ICMP.
    pub container_port: u16,
    pub remote_ip: std::net::IpAddr,
    pub remote_port: u16,
    /// The host socket's local address, when it has one.
    pub host_addr: Option<std::net::SocketAddr>,
    /// Packets and bytes from the container towards the remote.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets and bytes from the remote towards the container.
    pub packets_in: u64,
    pub bytes_in: u64,
    pub age_secs: f64,
    pub idle_secs: f64,
    pub expires_secs: f64,
}

pub use imp::Dataplane;

pub mod dns;
mod imp;
mod nat;

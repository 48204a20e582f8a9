//! The JSON bodies of the API (Docker Engine API shapes for networks and
//! containers, plus tapnet's own extensions). Shared by the daemon and the
//! CLI. Field order follows Docker's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Map = BTreeMap<String, String>;

/// Error body of every failed request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

// ---- networks ------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfigReq {
    pub subnet: Option<String>,
    #[serde(rename = "IPRange")]
    pub ip_range: Option<String>,
    pub gateway: Option<String>,
    pub auxiliary_addresses: Option<Map>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamReq {
    pub driver: Option<String>,
    pub config: Option<Vec<IpamConfigReq>>,
    pub options: Option<Map>,
}

/// `POST /networks/create`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreate {
    pub name: String,
    pub check_duplicate: Option<bool>,
    pub driver: Option<String>,
    pub scope: Option<String>,
    pub internal: bool,
    /// `None`: the driver's default (false, but true for overlays: every
    /// tapnet container is standalone).
    pub attachable: Option<bool>,
    pub ingress: bool,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: Option<bool>,
    #[serde(rename = "IPAM")]
    pub ipam: Option<IpamReq>,
    pub options: Option<Map>,
    pub labels: Option<Map>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCreateResponse {
    pub id: String,
    pub warning: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigView {
    pub subnet: String,
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none", default)]
    pub ip_range: Option<String>,
    pub gateway: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auxiliary_addresses: Option<Map>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamView {
    pub driver: String,
    pub options: Map,
    pub config: Vec<IpamConfigView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigFrom {
    pub network: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointView {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// `GET /networks/{id}` (Docker's NetworkResource).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkView {
    pub name: String,
    pub id: String,
    pub created: String,
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: IpamView,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    pub config_from: ConfigFrom,
    pub config_only: bool,
    pub containers: BTreeMap<String, EndpointView>,
    pub options: Map,
    pub labels: Map,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamAddrReq {
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: Option<String>,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: Option<String>,
}

/// Docker's EndpointSettings as a request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointConfigReq {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<IpamAddrReq>,
    pub aliases: Option<Vec<String>>,
    pub links: Option<Vec<String>>,
    pub mac_address: Option<String>,
}

/// `POST /networks/{id}/connect`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkConnect {
    pub container: String,
    pub endpoint_config: Option<EndpointConfigReq>,
}

/// `POST /networks/{id}/disconnect`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkDisconnect {
    pub container: String,
    pub force: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PruneResponse {
    pub networks_deleted: Vec<String>,
}

// ---- containers ------------------------------------------------------------

/// One network of `POST /containers/create` (tapnet: an ordered list; the
/// first one is eth0 and holds the default route).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkAttach {
    pub network: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: Option<String>,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: Option<String>,
    pub mac_address: Option<String>,
    pub aliases: Vec<String>,
    pub links: Vec<String>,
}

/// `POST /containers/create[?name=NAME]` (tapnet's body, Docker's names).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreate {
    pub name: Option<String>,
    pub hostname: Option<String>,
    /// `bridge`-style (default, with `Networks`), `none`, `host`,
    /// `container:NAME`.
    pub network_mode: Option<String>,
    pub networks: Vec<NetworkAttach>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    /// `-p` values as given.
    pub ports: Vec<String>,
    pub dns: Vec<String>,
    /// Legacy `--link CONTAINER[:ALIAS]`.
    pub links: Vec<String>,
    pub auto_remove: bool,
}

/// One interface of a created container, as the sandbox must set it up.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceView {
    pub name: String,
    pub network: String,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    pub mac_address: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mtu: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerCreateResponse {
    pub id: String,
    pub warnings: Vec<String>,
    pub interfaces: Vec<InterfaceView>,
    pub hosts_path: String,
    pub resolv_conf_path: String,
    pub hostname_path: String,
    pub hostname: String,
    pub log_path: String,
    /// The pid whose network namespace the sandbox must join (`host`,
    /// `container:NAME`); none for a new namespace.
    pub join_pid: Option<i32>,
    /// Paths the sandbox covers so that its processes cannot reach the
    /// daemon (its state directory, its API socket or the socket's own
    /// directory).
    #[serde(default)]
    pub hide_paths: Vec<String>,
}

/// `POST /containers/{id}/start` (tapnet: the sandbox's pid).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerStart {
    pub pid: i32,
}

/// `POST /containers/{id}/exited` (tapnet: the CLI that waited for CMD
/// reports its exit code).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerExited {
    pub exit_code: i32,
}

/// `POST /tapnet/attach`: interfaces in an existing namespace.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AttachRequest {
    pub pid: Option<i32>,
    pub netns: Option<String>,
    pub name: Option<String>,
    pub networks: Vec<NetworkAttach>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IdResponse {
    pub id: String,
}

/// One flow of `GET /tapnet/conntrack[?container=C]`: the dataplane's
/// connection table row with the network and container named.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConntrackRow {
    /// `tcp`, `udp` or `icmp`.
    pub protocol: String,
    /// `outbound` (opened by the container) or `inbound` (published port).
    pub direction: String,
    pub state: String,
    /// Network name.
    pub network: String,
    /// Container name and id; empty when no container holds the address
    /// (any more).
    pub container: String,
    pub container_id: String,
    pub container_ip: std::net::IpAddr,
    /// The echo identifier for ICMP.
    pub container_port: u16,
    pub remote_ip: std::net::IpAddr,
    pub remote_port: u16,
    pub host_addr: Option<std::net::SocketAddr>,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub age_secs: f64,
    pub idle_secs: f64,
    pub expires_secs: f64,
}

// ---- container views (Docker's shapes) -------------------------------------

/// `HostIp`/`HostPort` of a port binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBindingView {
    pub host_ip: String,
    pub host_port: String,
}

/// `IPAMConfig` of an endpoint (the address asked for).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IpamAddrView {
    #[serde(
        rename = "IPv4Address",
        skip_serializing_if = "String::is_empty",
        default
    )]
    pub ipv4_address: String,
    #[serde(
        rename = "IPv6Address",
        skip_serializing_if = "String::is_empty",
        default
    )]
    pub ipv6_address: String,
}

/// Docker's EndpointSettings of `NetworkSettings.Networks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<IpamAddrView>,
    pub links: Option<Vec<String>>,
    pub aliases: Option<Vec<String>>,
    pub mac_address: String,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub gateway: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    #[serde(rename = "IPv6Gateway")]
    pub ipv6_gateway: String,
    #[serde(rename = "GlobalIPv6Address")]
    pub global_ipv6_address: String,
    #[serde(rename = "GlobalIPv6PrefixLen")]
    pub global_ipv6_prefix_len: u8,
    #[serde(rename = "DNSNames")]
    pub dns_names: Vec<String>,
    pub interface_name: String,
}

/// `State` of `GET /containers/{id}/json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerStateView {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
}

/// `Config` of `GET /containers/{id}/json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfigView {
    pub hostname: String,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
}

/// `HostConfig` of `GET /containers/{id}/json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfigView {
    pub network_mode: String,
    pub port_bindings: BTreeMap<String, Vec<PortBindingView>>,
    pub dns: Vec<String>,
    pub links: Option<Vec<String>>,
    pub auto_remove: bool,
}

/// `NetworkSettings` of `GET /containers/{id}/json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettingsView {
    pub sandbox_key: String,
    /// `null` for a requested port that is not published.
    pub ports: BTreeMap<String, Option<Vec<PortBindingView>>>,
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// tapnet's own part of `GET /containers/{id}/json`: how the sandbox was
/// made.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TapnetKindView {
    /// `run` or `attach`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub netns: Option<String>,
}

/// `GET /containers/{id}/json` (Docker's ContainerJSON, the parts tapnet
/// has).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerView {
    pub id: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerStateView,
    pub name: String,
    pub resolv_conf_path: String,
    pub hostname_path: String,
    pub hosts_path: String,
    pub log_path: String,
    pub config: ContainerConfigView,
    pub host_config: HostConfigView,
    pub network_settings: NetworkSettingsView,
    pub tapnet: TapnetKindView,
}

/// One port of `GET /containers/json`: a published one with its host
/// address, or a requested one that is not published (no `IP`/`PublicPort`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortSummary {
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none", default)]
    pub ip: Option<String>,
    pub private_port: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_port: Option<u16>,
    #[serde(rename = "Type")]
    pub proto: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SummaryHostConfig {
    pub network_mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SummaryNetworkSettings {
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// One container of `GET /containers/json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    pub command: String,
    pub created: i64,
    pub ports: Vec<PortSummary>,
    pub labels: Map,
    pub state: String,
    pub status: String,
    pub host_config: SummaryHostConfig,
    pub network_settings: SummaryNetworkSettings,
}

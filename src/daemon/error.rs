//! The daemon's errors, typed per kind of operation: each variant's doc
//! comment is its message (one line, shown to the user as is), callers
//! match on variants, and the HTTP status of each variant is decided in
//! one place only, `api.rs`.

use crate::dataplane::DataplaneError;
use crate::drivers::DriverError;
use crate::ipam::IpamError;
use crate::model::Status;
use crate::state::StoreError;

/// Finding a network or container by id, name or id prefix.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum LookupError {
    /// network {0} not found
    Network(String),
    /// No such container: {0}
    Container(String),
    /// {what} {key} is ambiguous ({matches} matches found based on ID prefix)
    Ambiguous {
        what: &'static str,
        key: String,
        matches: usize,
    },
}

/// Docker's `filters` query parameter.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum FilterError {
    /// invalid filters {raw:?}: {why}
    Malformed { raw: String, why: String },
    /// invalid filter values for '{0}'
    Values(String),
    /// invalid filter '{0}'
    Unknown(String),
    /// invalid until filter {0:?}: expected a duration (10m, 1h30m), a Unix timestamp or an RFC 3339 time
    Until(String),
    /// more than one until filter specified
    TwoUntil,
}

/// `network create|rm|prune|ls|inspect`.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum NetworkError {
    /// {0}
    Lookup(#[from] LookupError),
    /// {0}
    Filter(#[from] FilterError),
    /// invalid network name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (at most 128 characters)
    InvalidName(String),
    /// network with name {0} already exists
    NameInUse(String),
    /// {0}
    Driver(#[from] DriverError),
    /// {name} is a pre-defined network and cannot be removed
    Predefined { name: String },
    /// network {name} belongs to dockerd: remove it with docker network rm
    DockerOwned { name: String },
    /// error while removing network: network {name} id {id} has active endpoints ({users})
    ActiveEndpoints {
        name: String,
        id: String,
        users: String,
    },
    /// the dataplane refused network {name}: {source}
    Dataplane {
        name: String,
        source: DataplaneError,
    },
    /// {0}
    Cluster(crate::cluster::ClusterError),
    /// {0}
    Store(#[from] StoreError),
}

/// Making, plugging and removing endpoints (a container's interfaces).
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum EndpointError {
    /// {0}
    Lookup(#[from] LookupError),
    /// network {0} has no address pool
    NoPool(String),
    /// address {addr} is already in use on network {network}{owner}
    AddrInUse {
        addr: std::net::Ipv4Addr,
        network: String,
        owner: String,
    },
    /// network {network}: {source}
    Ipam { network: String, source: IpamError },
    /// network {network}: {source}
    Ipam6 {
        network: String,
        source: crate::ipam::Ipam6Error,
    },
    /// address {addr} is already in use on network {network}{owner}
    Addr6InUse {
        addr: std::net::Ipv6Addr,
        network: String,
        owner: String,
    },
    /// network {0} has no IPv6 subnet: --ip6 needs a network created with --ipv6
    NoIpv6(String),
    /// invalid IPv4 address: {0}
    BadAddress(String),
    /// invalid IPv6 address: {0}
    BadAddress6(String),
    /// {0}
    BadMac(String),
    /// {0}
    BadAlias(String),
    /// MAC address {mac} is the gateway's on network {network}
    GatewayMac {
        mac: crate::model::Mac,
        network: String,
    },
    /// MAC address {mac} is already in use on network {network}
    MacInUse {
        mac: crate::model::Mac,
        network: String,
    },
    /// user specified IP address is supported on user defined networks only
    IpOnDefaultBridge,
    /// network-scoped alias is supported only for containers in user defined networks
    AliasOnDefaultBridge,
    /// network {network} (driver {driver}) cannot be combined with other networks; use it alone
    NotSwitched {
        network: String,
        driver: crate::drivers::DriverKind,
    },
    /// network {0} is given twice
    GivenTwice(String),
    /// Could not attach to network {0}: rpc error: code = PermissionDenied desc = network {0} not manually attachable
    NotAttachable(String),
    /// {0}
    Cluster(crate::cluster::ClusterError),
    /// cannot create the interfaces of {owner}: {reason}
    Interfaces { owner: String, reason: String },
    /// cannot add port {port} to the switch: {source}
    Dataplane {
        port: String,
        source: DataplaneError,
    },
    /// {0}
    Store(#[from] StoreError),
}

/// Published ports (`-p`).
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum PortError {
    /// {0}
    Parse(String),
    /// Bind for {what} failed: port is already allocated
    Taken { what: String },
    /// Bind for {what} failed: every port of the range is already allocated
    RangeTaken { what: String },
    /// Bind for {what} failed: permission denied: ports below {start} need privileges (sysctl net.ipv4.ip_unprivileged_port_start={start}); run the daemon as root, publish a port >= {start}, or lower that sysctl
    Privileged { what: String, start: u16 },
    /// Bind for {what} failed: {ip} is not an address of this host
    NotHostAddress { what: String, ip: std::net::IpAddr },
    /// Bind for {what} failed: {err}
    Bind { what: String, err: std::io::Error },
    /// cannot publish {wanted} ports: each needs an open file and the daemon's limit (RLIMIT_NOFILE {limit}, {open} open) leaves room for {room}; publish fewer ports or raise the limit
    TooMany {
        wanted: u64,
        limit: u64,
        open: u64,
        room: u64,
    },
    /// cannot publish {what} of container {container}: {reason}
    Publish {
        what: String,
        container: String,
        reason: String,
    },
}

/// The container operations (`run`, `attach`, `stop`, `rm`, `network
/// connect|disconnect`, `logs`).
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ContainerError {
    /// {0}
    Lookup(#[from] LookupError),
    /// {0}
    Endpoint(#[from] EndpointError),
    /// {0}
    Port(#[from] PortError),
    /// Invalid container name ({0}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed
    InvalidName(String),
    /// Conflict. The container name "/{name}" is already in use by container "{id}". You have to remove (or rename) that container to be able to reuse that name.
    NameInUse { name: String, id: String },
    /// {0}
    InvalidHostname(String),
    /// invalid DNS server address: {0}
    InvalidDns(String),
    /// invalid environment variable: {0:?}
    InvalidEnv(String),
    /// no command specified
    NoCommand,
    /// could not get container for {0}
    LinkTarget(String),
    /// cannot link to a non running container: /{0}
    LinkNotRunning(String),
    /// cannot join network of a non running container: {0}
    JoinNotRunning(String),
    /// invalid network mode: {0}
    InvalidMode(String),
    /// conflicting options: network mode {0} cannot be combined with other networks
    ModeWithNetworks(String),
    /// conflicting options: port publishing and the {0} network mode
    ModeWithPorts(String),
    /// container {name} is {status}, not created
    NotCreated { name: String, status: Status },
    /// no process with pid {0}
    NoProcess(i32),
    /// network namespace {0} does not exist
    NoNamespace(String),
    /// give exactly one of --pid and --netns
    AttachTarget,
    /// You cannot remove a running container {0}. Stop the container before attempting removal or force remove
    Running(String),
    /// container {container} cannot be connected to network {network}: only containers with their own network namespace can join bridge networks
    CannotConnect { container: String, network: String },
    /// endpoint with name {container} already exists in network {network}
    AlreadyConnected { container: String, network: String },
    /// container {container} is not connected to network {network}
    NotConnected { container: String, network: String },
    /// cannot delete interface {ifname} of container {container}: {reason}
    DeleteInterface {
        ifname: String,
        container: String,
        reason: String,
    },
    /// cannot make the docker_gwbridge network: {0}
    Gwbridge(String),
    /// cannot write {path}: {err}
    Files { path: String, err: std::io::Error },
    /// cannot read {path}: {err}
    Logs { path: String, err: std::io::Error },
    /// {0}
    Store(#[from] StoreError),
}

/// The Docker network-driver plugin's operations (`plugin.rs`); the
/// message is what `docker` shows after `Error response from daemon:`.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum DockerError {
    /// tapnet has no network {0} (its state was lost, or the network was made by another tapnet daemon)
    NoNetwork(String),
    /// tapnet has no endpoint {0}
    NoEndpoint(String),
    /// network {0} is not a Docker network of tapnet's
    NotDocker(String),
    /// {0}
    Network(#[from] NetworkError),
    /// {0}
    Driver(#[from] DriverError),
    /// {0}
    Endpoint(#[from] EndpointError),
    /// {0}
    Port(#[from] PortError),
    /// Docker sent no usable IPv4 address for the endpoint ({0:?}); tapnet networks need Docker's IPv4 IPAM
    Address(String),
    /// Docker sent an invalid IPv6 address for the endpoint ({0:?})
    Address6(String),
    /// Docker sent an IPv6 address for an endpoint on network {0}, which has no IPv6 pool
    NoPool6(String),
    /// Docker sent an invalid MAC address {0:?}
    Mac(String),
    /// invalid published port from Docker: {0}
    PortMap(String),
    /// the dataplane refused network {name}: {source}
    Dataplane {
        name: String,
        source: DataplaneError,
    },
    /// cannot enter dockerd's network namespace (pid {pid}): {reason}
    Namespace { pid: i32, reason: String },
    /// {0}
    Store(#[from] StoreError),
}

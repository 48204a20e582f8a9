//! The persisted domain model of the control plane: networks, endpoints,
//! containers (sandboxes). These are the records stored (as JSON) in the
//! state store; the Docker-shaped API views are built from them by the
//! daemon. Also the small parsers shared by the CLI and the daemon (`-p`,
//! MAC addresses, ids).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Names of the predefined networks.
pub const BRIDGE: &str = "bridge";
pub const HOST: &str = "host";
pub const NONE: &str = "none";

/// Bridge driver option keys (Docker's).
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPT_MASQ: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPT_HOST_BINDING: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";
pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPT_DEFAULT_BRIDGE: &str = "com.docker.network.bridge.default_bridge";
/// `--ipv6` as a driver option (docker-compose sends it so).
pub const OPT_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";

/// Default MTU of a bridge network.
pub const DEFAULT_MTU: u32 = 1500;

/// One IPv4 address pool of a network (Docker's `IPAM.Config[]` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Dynamic allocation is limited to this range when set.
    pub ip_range: Option<Ipv4Net>,
    /// Reserved addresses (`--aux-address NAME=IP`), never allocated.
    pub aux: BTreeMap<String, Ipv4Addr>,
}

/// One IPv6 address pool of a dual-stack network (the second
/// `IPAM.Config[]` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool6 {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
    /// Dynamic allocation is limited to this range when set.
    pub ip_range: Option<Ipv6Net>,
    /// Reserved addresses, never allocated.
    pub aux: BTreeMap<String, Ipv6Addr>,
}

/// A network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    /// The network's kind (`crate::drivers`).
    pub driver: crate::drivers::DriverKind,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    pub enable_ipv6: bool,
    /// IPv4 pools (zero for `host`/`none`, one for bridge networks today).
    pub pools: Vec<Pool>,
    /// IPv6 pools: one when `enable_ipv6`, else none.
    #[serde(default)]
    pub pools6: Vec<Pool6>,
    pub ipam_options: BTreeMap<String, String>,
    /// Driver options as given (`-o`), or Docker's defaults for `bridge`.
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `bridge`, `host`, `none`: cannot be removed.
    pub predefined: bool,
}

impl Network {
    /// The default bridge network (`bridge`) has Docker's legacy rules: no
    /// `--ip`, no aliases, `--link` works through /etc/hosts.
    pub fn is_default_bridge(&self) -> bool {
        self.predefined && self.name == BRIDGE
    }
    pub fn icc(&self) -> bool {
        self.options
            .get(OPT_ICC)
            .and_then(|v| parse_bool(v))
            .unwrap_or(true)
    }
    /// `com.docker.network.bridge.enable_ip_masquerade` (default true).
    pub fn masquerade(&self) -> bool {
        self.options
            .get(OPT_MASQ)
            .and_then(|v| parse_bool(v))
            .unwrap_or(true)
    }
    pub fn mtu(&self) -> u32 {
        self.mtu_of(&self.options)
    }
    /// The MTU that driver options `options` give.
    pub fn mtu_of(&self, options: &BTreeMap<String, String>) -> u32 {
        options
            .get(OPT_MTU)
            .and_then(|v| v.parse().ok())
            .filter(|m| *m > 0)
            .unwrap_or(DEFAULT_MTU)
    }
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// Go's `strconv.ParseBool`, as Docker uses for option values.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Who holds an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Owner {
    /// A tapnet container (`run`, `attach`).
    Container { id: String },
    /// An external runtime's sandbox (Docker through the driver plugin,
    /// later CNI): `runtime` names it, `id` is its endpoint id.
    External { runtime: String, id: String },
}

impl Owner {
    /// The tapnet container holding it, if one does.
    pub fn container(&self) -> Option<&str> {
        match self {
            Owner::Container { id } => Some(id),
            Owner::External { .. } => None,
        }
    }
}

/// A network namespace, as persisted: where an endpoint's TAP lives, so
/// that a restarted daemon reopens it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum NetnsRef {
    /// The network namespace of a process (a `run` sandbox, `attach
    /// --pid`).
    Pid(i32),
    /// A namespace file (`attach --netns`, an external runtime's sandbox
    /// key).
    Path(String),
}

/// An endpoint: a port the daemon holds on one network (its TAP), with its
/// addresses and MAC, owned by a container or an external runtime.
///
/// INVARIANT: `netns` is set exactly while the endpoint's TAP exists and
/// its port is in the dataplane ("plugged"); its address stays allocated
/// from creation to removal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// 64 hex digits.
    pub id: String,
    pub network_id: String,
    pub owner: Owner,
    /// Interface name inside the sandbox (`eth0`, ...).
    pub ifname: String,
    pub mac: Mac,
    pub ipv4: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// Its IPv6 address on a dual-stack network.
    #[serde(default)]
    pub ipv6: Option<Ipv6Net>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    pub aliases: Vec<String>,
    pub links: Vec<String>,
    pub mtu: u32,
    /// The address was given explicitly (`--ip`).
    pub static_ip: bool,
    /// Where its TAP lives while plugged (see the invariant).
    #[serde(default)]
    pub netns: Option<NetnsRef>,
}

/// What tapnet keeps of an endpoint dockerd made through the driver plugin
/// (beside its [`Endpoint`], same id): how to find its TAP again after a
/// restart, and the ports published for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    pub endpoint_id: String,
    pub network_id: String,
    /// The TAP's name in dockerd's network namespace (Join's `SrcName`);
    /// Docker renames it (`eth0`, ...) when it moves it into a container.
    pub src_name: String,
    /// dockerd, whose network namespace holds the TAP until Docker moves
    /// it, and whose mount namespace holds `sandbox_key`.
    pub dockerd_pid: i32,
    pub dockerd_start: u64,
    /// The container's network namespace file (Join's `SandboxKey`), a
    /// path in dockerd's mount namespace.
    pub sandbox_key: Option<String>,
    /// Host sockets bound for it (ProgramExternalConnectivity), re-bound
    /// after a restart.
    pub published: Vec<PublishedPort>,
}

/// A network a container asked for (kept while the container exists, also
/// when it is not running).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRequest {
    pub network_id: String,
    pub ipv4: Option<Ipv4Addr>,
    /// `--ip6`.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<Mac>,
    pub aliases: Vec<String>,
    pub links: Vec<String>,
}

/// How a container gets its network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value")]
pub enum NetMode {
    /// Its own namespace with one TAP per requested network (possibly none).
    Bridge,
    /// `--network none`: its own namespace, only `lo`.
    None,
    /// `--network host`: the daemon's network namespace.
    Host,
    /// `--network container:ID`: that container's namespace.
    Container(String),
}

/// What kind of sandbox a container record stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value")]
pub enum Kind {
    /// Made by `tapnet run`: the sandbox process is CMD.
    Run,
    /// `tapnet attach --pid`: an existing process's namespace.
    AttachPid(i32),
    /// `tapnet attach --netns PATH`: a bind-mounted namespace.
    AttachNetns(String),
}

/// Lifecycle status, Docker's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// A container (sandbox) record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub created: String,
    pub hostname: String,
    pub kind: Kind,
    pub net_mode: NetMode,
    /// Requested networks, in interface order.
    pub networks: Vec<NetRequest>,
    /// Live endpoints (ids), in interface order; empty when not running
    /// (addresses are released when the container stops).
    pub endpoints: Vec<String>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    /// `-p` as requested.
    pub ports: Vec<PortBinding>,
    /// The host sockets bound for `ports` while the container runs.
    #[serde(default)]
    pub published: Vec<PublishedPort>,
    pub dns: Vec<Ipv4Addr>,
    /// Legacy `--link CONTAINER:ALIAS` of the default bridge.
    pub links: Vec<String>,
    pub auto_remove: bool,
    pub status: Status,
    pub pid: i32,
    /// Start time (field 22 of /proc/PID/stat) of `pid`.
    pub start_time: u64,
    pub exit_code: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl Container {
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// A MAC address, shown as `02:42:ac:11:00:02`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random unicast, locally administered address.
    pub fn random() -> Mac {
        let mut b = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut b);
        b[0] = (b[0] & 0xfc) | 0x02;
        Mac(b)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let b = s
            .parse::<tapnet_switch::wire::EthernetAddress>()
            .map_err(|_| format!("invalid MAC address {s:?}"))?
            .0;
        if b[0] & 1 == 1 {
            return Err(format!("invalid MAC address {s:?}: multicast address"));
        }
        if b == [0; 6] {
            return Err(format!("invalid MAC address {s:?}: all zeros"));
        }
        Ok(Mac(b))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A random 64-hex-digit id.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Now, RFC 3339 with nanoseconds (Docker's `Created`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One `-p` value, Docker's forms: `PORT`, `HOSTPORT:PORT`,
/// `IP:HOSTPORT:PORT`, `IP::PORT`, ranges `A-B` on either side, `/tcp` or
/// `/udp`, IPv6 host addresses in brackets (`[::1]:8080:80`, `[::]::80`).
/// A host port of 0 means "any free port"; a host range with a single
/// container port means "any free port of that range".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// `None`: the network's `host_binding_ipv4`, else all addresses.
    pub host_ip: Option<IpAddr>,
    /// First and last host port; (0, 0) when not given.
    pub host_ports: (u16, u16),
    pub container_ports: (u16, u16),
    pub proto: Proto,
}

/// Which host port(s) one container port of a [`PortBinding`] may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPort {
    /// Any free port (the kernel chooses).
    Any,
    Exact(u16),
    /// The first free port of this range.
    OneOf(u16, u16),
}

/// `IP:PORT`, with IPv6 addresses in brackets (Go's `net.JoinHostPort`).
pub fn join_host_port(ip: IpAddr, port: impl fmt::Display) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl fmt::Display for PortBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |(a, b): (u16, u16)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        };
        match self.host_ip {
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            None => {}
        }
        if self.host_ports != (0, 0) {
            write!(f, "{}:", range(self.host_ports))?;
        } else if self.host_ip.is_some() {
            write!(f, ":")?;
        }
        write!(f, "{}/{}", range(self.container_ports), self.proto)
    }
}

impl PortBinding {
    /// Parses Docker's `-p` syntax. The error is one line naming the value.
    pub fn parse(s: &str) -> Result<PortBinding, String> {
        let bad = |why: &str| format!("invalid published port {s:?}: {why}");
        let form = "expected [IP:][HOSTPORT:]PORT[/tcp|udp] (IPv6 addresses in brackets)";
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some((_, p)) => return Err(bad(&format!("unknown protocol {p:?} (tcp or udp)"))),
            None => (s, Proto::Tcp),
        };
        let (ip, host, cont) = if let Some(rest) = spec.strip_prefix('[') {
            // `[IP]:HOSTPORT:PORT`, `[IP]::PORT`.
            let (ip, rest) = rest.split_once("]:").ok_or_else(|| bad(form))?;
            match rest.split(':').collect::<Vec<_>>().as_slice() {
                [h, c] => (Some(ip), Some(*h), *c),
                _ => return Err(bad(form)),
            }
        } else {
            // Docker's split: more than three parts make an unbracketed
            // IPv6 address of all but the last two.
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.as_slice() {
                [c] => (None, None, *c),
                [h, c] => (None, Some(*h), *c),
                [ip, h, c] => (Some(*ip), Some(*h), *c),
                [ip @ .., h, c] => {
                    let ip = &spec[..ip.iter().map(|p| p.len() + 1).sum::<usize>() - 1];
                    (Some(ip), Some(*h), *c)
                }
                [] => return Err(bad(form)),
            }
        };
        let host_ip = match ip {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?,
            ),
        };
        let range = |r: &str, what: &str| -> Result<(u16, u16), String> {
            let port = |p: &str| -> Result<u16, String> {
                match p.parse::<u16>() {
                    Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                    _ => Err(bad(&format!("{what} {p:?} is not a port number (1-65535)"))),
                }
            };
            match r.split_once('-') {
                None => Ok((port(r)?, port(r)?)),
                Some((a, b)) => {
                    let (a, b) = (port(a)?, port(b)?);
                    if a > b {
                        return Err(bad(&format!("{what} range {r:?} is reversed")));
                    }
                    Ok((a, b))
                }
            }
        };
        let container_ports = range(cont, "container port")?;
        let host_ports = match host {
            None | Some("") => (0, 0),
            Some(h) => range(h, "host port")?,
        };
        if host_ports != (0, 0) {
            let hl = host_ports.1 - host_ports.0;
            let cl = container_ports.1 - container_ports.0;
            if cl != 0 && hl != cl {
                return Err(bad("host and container port ranges differ in size"));
            }
        }
        Ok(PortBinding {
            host_ip,
            host_ports,
            container_ports,
            proto,
        })
    }

    /// Each container port with the host port(s) it may take.
    pub fn expand(&self) -> Vec<(u16, HostPort)> {
        let (c0, c1) = self.container_ports;
        let (h0, h1) = self.host_ports;
        (c0..=c1)
            .map(|cp| {
                let hp = if (h0, h1) == (0, 0) {
                    HostPort::Any
                } else if c0 == c1 && h0 != h1 {
                    HostPort::OneOf(h0, h1)
                } else {
                    HostPort::Exact(h0 + (cp - c0))
                };
                (cp, hp)
            })
            .collect()
    }
}

/// A host socket bound for a running container: the actual host address
/// and port (also a randomly chosen one), kept so that a restarted daemon
/// binds the same ports again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Docker's rule for object names, applied to network names:
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 bytes. ASCII only, so no
/// invisible or direction-changing characters can make `network ls` lie,
/// and `.`, `..` and names starting with `-` are refused.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A DNS name as aliases (`--network-alias`, `--alias`, `--link`'s alias)
/// must be: labels of 1-63 characters from `[a-zA-Z0-9_-]`, not starting
/// or ending with `-`, separated by single dots, at most 253 characters.
/// (`_` is allowed because container names, which are DNS names too, may
/// hold it.)
pub fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Longest hostname the kernel takes (`HOST_NAME_MAX`).
pub const HOSTNAME_MAX: usize = 64;

/// Why a hostname is refused, or `None` when it is fine: a DNS name (see
/// [`valid_dns_name`]) of at most [`HOSTNAME_MAX`] characters.
pub fn hostname_error(h: &str) -> Option<String> {
    if h.len() > HOSTNAME_MAX {
        return Some(format!(
            "invalid hostname {:?}: longer than {HOSTNAME_MAX} characters",
            truncate_for_message(h)
        ));
    }
    if !valid_dns_name(h) {
        return Some(format!(
            "invalid hostname {h:?}: use letters, digits, '-' and '_' in dot-separated labels that do not start or end with '-'"
        ));
    }
    None
}

/// Why an alias is refused, or `None` when it is a valid DNS name.
pub fn alias_error(a: &str) -> Option<String> {
    (!valid_dns_name(a)).then(|| {
        format!(
            "invalid alias {:?}: an alias is a DNS name (letters, digits, '-' and '_' in dot-separated labels of at most 63 characters that do not start or end with '-')",
            truncate_for_message(a)
        )
    })
}

/// The first 40 characters of a (possibly huge) value for an error line.
fn truncate_for_message(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(40).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = PortBinding::parse("8080:80").unwrap();
        assert_eq!(p.host_ports, (8080, 8080));
        assert_eq!(p.container_ports, (80, 80));
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(p.host_ip, None);
        let p = PortBinding::parse("127.0.0.1::53/udp").unwrap();
        assert_eq!(p.host_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(p.host_ports, (0, 0));
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.to_string(), "127.0.0.1::53/udp");
        let p = PortBinding::parse("8000-8010:80-90").unwrap();
        assert_eq!(p.to_string(), "8000-8010:80-90/tcp");
        for bad in [
            "", "abc", "80/sctp", "0", "70000", "1:2:3:4", "x:80:80", "90-80", "1-3:1-2",
        ] {
            assert!(PortBinding::parse(bad).is_err(), "{bad}");
        }
    }

    /// Every form of Docker's `-p`, and what it binds.
    #[test]
    fn port_forms() {
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        type Case = (
            &'static str,
            Option<IpAddr>,
            (u16, u16),
            (u16, u16),
            Proto,
            &'static str,
        );
        let cases: &[Case] = &[
            ("80", None, (0, 0), (80, 80), Proto::Tcp, "80/tcp"),
            ("80/udp", None, (0, 0), (80, 80), Proto::Udp, "80/udp"),
            (
                "8080:80",
                None,
                (8080, 8080),
                (80, 80),
                Proto::Tcp,
                "8080:80/tcp",
            ),
            (
                "127.0.0.1:8080:80/udp",
                v6("127.0.0.1"),
                (8080, 8080),
                (80, 80),
                Proto::Udp,
                "127.0.0.1:8080:80/udp",
            ),
            (
                "10.0.0.1::80",
                v6("10.0.0.1"),
                (0, 0),
                (80, 80),
                Proto::Tcp,
                "10.0.0.1::80/tcp",
            ),
            (
                ":8080:80",
                None,
                (8080, 8080),
                (80, 80),
                Proto::Tcp,
                "8080:80/tcp",
            ),
            ("::80", None, (0, 0), (80, 80), Proto::Tcp, "80/tcp"),
            ("80-82", None, (0, 0), (80, 82), Proto::Tcp, "80-82/tcp"),
            (
                "8000-8010:80-90",
                None,
                (8000, 8010),
                (80, 90),
                Proto::Tcp,
                "8000-8010:80-90/tcp",
            ),
            (
                "8000-8010:80",
                None,
                (8000, 8010),
                (80, 80),
                Proto::Tcp,
                "8000-8010:80/tcp",
            ),
            (
                "[::1]:8080:80",
                v6("::1"),
                (8080, 8080),
                (80, 80),
                Proto::Tcp,
                "[::1]:8080:80/tcp",
            ),
            (
                "[::]::80/udp",
                v6("::"),
                (0, 0),
                (80, 80),
                Proto::Udp,
                "[::]::80/udp",
            ),
            (
                "::1:8080:80",
                v6("::1"),
                (8080, 8080),
                (80, 80),
                Proto::Tcp,
                "[::1]:8080:80/tcp",
            ),
            (
                "[127.0.0.2]:80:80",
                v6("127.0.0.2"),
                (80, 80),
                (80, 80),
                Proto::Tcp,
                "127.0.0.2:80:80/tcp",
            ),
        ];
        for (s, ip, h, c, proto, shown) in cases {
            let p = PortBinding::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(p.host_ip, *ip, "{s}");
            assert_eq!(p.host_ports, *h, "{s}");
            assert_eq!(p.container_ports, *c, "{s}");
            assert_eq!(p.proto, *proto, "{s}");
            assert_eq!(p.to_string(), *shown, "{s}");
            // What is shown parses back to the same binding.
            assert_eq!(PortBinding::parse(shown).unwrap(), p, "{s}");
        }
    }

    #[test]
    fn port_errors() {
        for (bad, needle) in [
            ("", "container port"),
            ("abc", "container port"),
            ("80/sctp", "sctp"),
            ("80/", "protocol"),
            ("0", "container port \"0\""),
            ("70000", "70000"),
            ("+80", "+80"),
            ("80:", "container port"),
            ("x:80", "host port \"x\""),
            ("0:80", "host port \"0\""),
            ("127.0.0.1:80", "host port \"127.0.0.1\""),
            ("1:2:3:4", "\"1:2\" is not an IP address"),
            ("80:80:80:80", "not an IP address"),
            ("x:80:80", "\"x\" is not an IP address"),
            ("300.0.0.1:80:80", "not an IP address"),
            ("[::1]:80", "brackets"),
            ("[::1:80:80", "brackets"),
            ("[::1]:1:2:3", "brackets"),
            ("[zz]:80:80", "\"zz\" is not an IP address"),
            ("90-80", "reversed"),
            ("80-:80", "host port \"\""),
            ("8090-8080:80", "reversed"),
            ("1-3:1-2", "differ in size"),
            ("8080:80-81", "differ in size"),
        ] {
            let e = PortBinding::parse(bad).expect_err(bad);
            assert!(e.contains(needle), "{bad:?}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn port_expand() {
        let x = |s: &str| PortBinding::parse(s).unwrap().expand();
        assert_eq!(x("80"), vec![(80, HostPort::Any)]);
        assert_eq!(x("8080:80"), vec![(80, HostPort::Exact(8080))]);
        assert_eq!(
            x("8000-8001:80-81"),
            vec![(80, HostPort::Exact(8000)), (81, HostPort::Exact(8001))]
        );
        assert_eq!(x("8000-8010:80"), vec![(80, HostPort::OneOf(8000, 8010))]);
        assert_eq!(x("80-81"), vec![(80, HostPort::Any), (81, HostPort::Any)]);
        assert_eq!(x("127.0.0.1::80"), vec![(80, HostPort::Any)]);
    }

    #[test]
    fn macs() {
        let m: Mac = "02:42:ac:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert!("01:00:5e:00:00:01".parse::<Mac>().is_err());
        assert!("02:42:ac:11:00".parse::<Mac>().is_err());
        for _ in 0..100 {
            let m = Mac::random();
            assert_eq!(m.0[0] & 3, 2);
        }
    }

    #[test]
    fn names() {
        assert!(valid_container_name("web-1"));
        assert!(!valid_container_name("-web"));
        assert!(!valid_container_name("a"));
        assert!(valid_network_name("n"));
        assert!(valid_network_name("my_net-1.x"));
        for bad in [
            "a b",
            ".",
            "..",
            "-n",
            "_n",
            "a/b",
            "a:b",
            "a\u{200b}b",
            "\u{202e}n",
            "",
        ] {
            assert!(!valid_network_name(bad), "{bad:?}");
        }
        assert!(!valid_network_name(&"n".repeat(129)));
    }

    #[test]
    fn dns_names() {
        for good in ["db", "db.local", "web_1", "a-b", "x".repeat(63).as_str()] {
            assert!(valid_dns_name(good), "{good:?}");
        }
        for bad in [
            "",
            "x y",
            "../z",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "\u{200b}",
            "x".repeat(64).as_str(),
        ] {
            assert!(!valid_dns_name(bad), "{bad:?}");
        }
        assert!(hostname_error("web-1").is_none());
        assert!(hostname_error(&"h".repeat(300))
            .unwrap()
            .contains("longer than 64"));
        assert!(hostname_error("a b").is_some());
        assert!(alias_error("../z").is_some());
    }
}

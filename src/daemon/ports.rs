//! Published ports (`run -p`) and the connection table view.
//!
//! The daemon binds the host sockets itself when a container starts, so
//! that a taken port fails `run` with Docker's one line (`Bind for
//! 0.0.0.0:8080 failed: port is already allocated`) and nothing is left
//! half-made; then it hands each socket to the dataplane's NAT gateway
//! ([`Dataplane::publish`](crate::dataplane::Dataplane::publish)), which
//! relays it into the container. The actual host ports (also the ones the
//! kernel chose) are recorded in the container, so a restarted daemon binds
//! the same ports again.
//!
//! [`Dataplane::unpublish`](crate::dataplane::Dataplane::unpublish) returns
//! once the gateway has closed a container's sockets: its host ports are
//! free again at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};

use super::containers::find_container;
use super::core::Core;
use super::error::{ContainerError, PortError};
use super::types::ConntrackRow;
use crate::dataplane::{HostSocket, NetId, Published};
use crate::drivers;
use crate::model::*;
use crate::state::State;

/// A host socket bound for a container, not yet handed to the dataplane.
pub(super) struct Bound {
    pub port: PublishedPort,
    pub socket: HostSocket,
}

const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// `net.ipv4.ip_unprivileged_port_start` (default 1024).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string(UNPRIVILEGED_PORT_START)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Binds one host socket, non-blocking and close-on-exec: TCP listening
/// with `SO_REUSEADDR` (as Docker's proxy), UDP without it (two UDP
/// sockets could share the port otherwise); IPv6 ones `IPV6_V6ONLY`, so
/// that `[::]:80` and `0.0.0.0:80` are different ports.
pub fn bind_socket(ip: IpAddr, port: u16, proto: Proto) -> std::io::Result<HostSocket> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn, SockaddrIn6,
    };
    let ty = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if proto == Proto::Tcp {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    match SocketAddr::new(ip, port) {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?
        }
    }
    Ok(match proto {
        Proto::Tcp => {
            listen(&fd, Backlog::new(511).unwrap_or(Backlog::MAXCONN))?;
            HostSocket::Tcp(TcpListener::from(fd))
        }
        Proto::Udp => HostSocket::Udp(UdpSocket::from(fd)),
    })
}

fn local_port(s: &HostSocket) -> std::io::Result<u16> {
    match s {
        HostSocket::Tcp(l) => l.local_addr().map(|a| a.port()),
        HostSocket::Udp(u) => u.local_addr().map(|a| a.port()),
    }
}

/// The one-line error of a failed bind of `ip:port` (`port` may be a
/// range), in Docker's words where Docker has them.
fn bind_error(ip: IpAddr, port: &str, first_port: u16, e: std::io::Error) -> PortError {
    use std::io::ErrorKind;
    let what = join_host_port(ip, port);
    match e.kind() {
        ErrorKind::AddrInUse => PortError::Taken { what },
        ErrorKind::PermissionDenied if first_port < unprivileged_port_start() => {
            PortError::Privileged {
                what,
                start: unprivileged_port_start(),
            }
        }
        ErrorKind::AddrNotAvailable => PortError::NotHostAddress { what, ip },
        _ => PortError::Bind { what, err: e },
    }
}

/// Open files the daemon keeps free for everything but published ports
/// (TAP queues, relayed flows, clients).
const FD_RESERVE: u64 = 1024;

/// Refuses, before anything is bound, more published ports than the
/// daemon's open-file limit leaves room for (one socket each).
pub(super) fn check_port_count(ports: &[PortBinding]) -> Result<(), PortError> {
    let wanted: u64 = ports.iter().map(|p| p.expand().len() as u64).sum();
    if wanted <= 64 {
        return Ok(());
    }
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let room = limit.saturating_sub(open).saturating_sub(FD_RESERVE);
    if wanted > room {
        return Err(PortError::TooMany {
            wanted,
            limit,
            open,
            room,
        });
    }
    Ok(())
}

/// Binds the host sockets of one `-p` binding on `ip`.
/// `port` (bound on `0.0.0.0`) bound again on `[::]`, IPv6 only; `None`
/// (logged, naming `who`) when that port is taken there or the host has no
/// IPv6.
pub(super) fn also_on_ipv6_any(who: &str, port: &PublishedPort) -> Option<Bound> {
    let any6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    match bind_socket(any6, port.host_port, port.proto) {
        Ok(socket) => Some(Bound {
            port: PublishedPort {
                host_ip: any6,
                ..port.clone()
            },
            socket,
        }),
        Err(e) => {
            tracing::warn!(
                "{}: {}/{} published on IPv4 only: [::]:{}: {e}",
                who,
                port.container_port,
                port.proto,
                port.host_port
            );
            None
        }
    }
}

/// Binds every binding of `bindings` on its host address, else
/// `default_ip`. As Docker: for a `dual_stack` endpoint, a binding without
/// a host address, when the default is `0.0.0.0`, is bound on `[::]` too
/// (the same port, for IPv6 clients, who then reach the endpoint's IPv6
/// address). `who` names the owner in the log. On an error, what was bound
/// so far is closed (dropped).
pub(super) fn bind_bindings(
    bindings: &[PortBinding],
    default_ip: IpAddr,
    dual_stack: bool,
    who: &str,
) -> Result<Vec<Bound>, PortError> {
    let any4 = default_ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut out = vec![];
    for b in bindings {
        let v4 = bind_binding(b, b.host_ip.unwrap_or(default_ip))?;
        let v6: Vec<Bound> = if dual_stack && any4 && b.host_ip.is_none() {
            v4.iter()
                .filter_map(|v| also_on_ipv6_any(who, &v.port))
                .collect()
        } else {
            vec![]
        };
        out.extend(v4);
        out.extend(v6);
    }
    Ok(out)
}

pub(super) fn bind_binding(b: &PortBinding, ip: IpAddr) -> Result<Vec<Bound>, PortError> {
    let mut out = vec![];
    for (cp, hp) in b.expand() {
        let (socket, host_port) = match hp {
            HostPort::Any | HostPort::Exact(_) => {
                let p = if let HostPort::Exact(p) = hp { p } else { 0 };
                let s = bind_socket(ip, p, b.proto)
                    .map_err(|e| bind_error(ip, &p.to_string(), p, e))?;
                let port = local_port(&s).map_err(|e| bind_error(ip, &p.to_string(), p, e))?;
                (s, port)
            }
            HostPort::OneOf(a, z) => {
                let range = format!("{a}-{z}");
                let mut found = None;
                for p in a..=z {
                    match bind_socket(ip, p, b.proto) {
                        Ok(s) => {
                            found = Some((s, p));
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                        Err(e) => return Err(bind_error(ip, &range, a, e)),
                    }
                }
                found.ok_or_else(|| PortError::RangeTaken {
                    what: join_host_port(ip, &range),
                })?
            }
        };
        out.push(Bound {
            port: PublishedPort {
                host_ip: ip,
                host_port,
                container_port: cp,
                proto: b.proto,
            },
            socket,
        });
    }
    Ok(out)
}

/// The network a container's published ports lead to: its first endpoint
/// on a non-internal bridge network (none: nothing is published, as
/// Docker does for `--internal`-only containers).
/// Also its IPv6 address there, on a dual-stack network.
fn publish_target<'a>(
    st: &'a State,
    c: &Container,
) -> Option<(&'a Network, Ipv4Addr, Option<std::net::Ipv6Addr>)> {
    if c.net_mode != NetMode::Bridge {
        return None;
    }
    c.endpoints
        .iter()
        .filter_map(|e| st.endpoints.get(e))
        .find_map(|e| {
            let n = st.networks.get(&e.network_id)?;
            drivers::of(n)
                .services(n)
                .publish
                .then_some(())
                .and_then(|_| e.ipv4.map(|a| (n, a.addr(), e.ipv6.map(|a| a.addr()))))
        })
}

impl Core {
    /// Binds the host sockets of `c`'s `-p` bindings: host address as
    /// given, else the network's `host_binding_ipv4`, else all addresses.
    /// On an error, the sockets bound so far are closed (dropped).
    pub(super) fn bind_ports(&self, st: &State, c: &Container) -> Result<Vec<Bound>, PortError> {
        if c.ports.is_empty() {
            return Ok(vec![]);
        }
        let Some((net, _, ip6)) = publish_target(st, c) else {
            return Ok(vec![]);
        };
        let default_ip = net
            .options
            .get(OPT_HOST_BINDING)
            .and_then(|v| v.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let who = format!("container {}", c.name);
        bind_bindings(&c.ports, default_ip, ip6.is_some(), &who)
    }

    /// After a daemon restart: binds the ports `c` had again (the same host
    /// ports). A port that cannot be bound any more is logged and left out.
    pub(super) fn rebind_ports(&self, c: &Container) -> Vec<Bound> {
        let mut out = vec![];
        for p in &c.published {
            match bind_socket(p.host_ip, p.host_port, p.proto) {
                Ok(socket) => out.push(Bound {
                    port: p.clone(),
                    socket,
                }),
                Err(e) => tracing::warn!(
                    "container {}: cannot publish {}/{} on {} again: {}",
                    c.name,
                    p.container_port,
                    p.proto,
                    join_host_port(p.host_ip, p.host_port),
                    bind_error(p.host_ip, &p.host_port.to_string(), p.host_port, e)
                ),
            }
        }
        out
    }

    /// Hands `bound` to the dataplane (relaying to the container's address
    /// on its first non-internal network); returns what is published. On
    /// an error nothing of `c` stays published.
    pub(super) fn publish_ports(
        &mut self,
        st: &State,
        c: &Container,
        bound: Vec<Bound>,
    ) -> Result<Vec<PublishedPort>, PortError> {
        if bound.is_empty() {
            return Ok(vec![]);
        }
        let Some((net, ip, ip6)) = publish_target(st, c) else {
            return Ok(vec![]);
        };
        let Some(dp_net) = self.dp_net_id(&net.id) else {
            return Ok(vec![]);
        };
        let mut published = vec![];
        for b in bound {
            let fail = |core: &mut Core, reason: String| {
                core.unpublish_ports(&c.id);
                PortError::Publish {
                    what: join_host_port(b.port.host_ip, b.port.host_port),
                    container: c.name.clone(),
                    reason,
                }
            };
            let r = self.dp.publish_dual_stack(
                Published {
                    owner: c.id.clone(),
                    network: dp_net,
                    container_ip: ip,
                    container_port: b.port.container_port,
                    socket: b.socket,
                },
                ip6,
            );
            if let Err(e) = r {
                return Err(fail(self, format!("{e:#}")));
            }
            published.push(b.port);
        }
        Ok(published)
    }

    /// Closes every published socket of a container: its host ports are
    /// free again.
    pub(super) fn unpublish_ports(&mut self, container_id: &str) {
        self.dp.unpublish(container_id);
    }

    /// `GET /tapnet/conntrack[?container=C]`: the connection table, with
    /// networks and containers named; only `C`'s flows when given.
    pub fn conntrack(&self, container: Option<&str>) -> Result<Vec<ConntrackRow>, ContainerError> {
        let st = self.store.state();
        let only = match container.filter(|c| !c.is_empty()) {
            Some(k) => Some(find_container(st, k)?.id.clone()),
            None => None,
        };
        // (dataplane network, address) -> (name, id) of the owner: a
        // container, or Docker's endpoint (`docker/ID12`).
        let mut owners: HashMap<(NetId, IpAddr), (String, String)> = HashMap::new();
        for e in st.endpoints.values() {
            let (Some(net), Some(ip)) = (self.dp_net_id(&e.network_id), e.ipv4) else {
                continue;
            };
            let owner = match &e.owner {
                Owner::Container { id } => match st.containers.get(id) {
                    Some(c) => (c.name.clone(), c.id.clone()),
                    None => continue,
                },
                Owner::External { runtime, id } => {
                    (format!("{runtime}/{}", &id[..12.min(id.len())]), id.clone())
                }
            };
            if let Some(ip6) = e.ipv6 {
                owners.insert((net, IpAddr::V6(ip6.addr())), owner.clone());
            }
            owners.insert((net, IpAddr::V4(ip.addr())), owner);
        }
        let mut rows = vec![];
        for f in self.dp.conntrack() {
            let owner = owners.get(&(f.network, f.container_ip));
            if let Some(id) = &only {
                if owner.map(|o| &o.1) != Some(id) {
                    continue;
                }
            }
            let network = self
                .network_of_dp(f.network)
                .and_then(|id| st.networks.get(id))
                .map(|n| n.name.clone())
                .unwrap_or_else(|| f.network.to_string());
            rows.push(ConntrackRow {
                protocol: f.protocol.into(),
                direction: f.direction.into(),
                state: f.state.into(),
                network,
                container: owner.map(|o| o.0.clone()).unwrap_or_default(),
                container_id: owner.map(|o| o.1.clone()).unwrap_or_default(),
                container_ip: f.container_ip,
                container_port: f.container_port,
                remote_ip: f.remote_ip,
                remote_port: f.remote_port,
                host_addr: f.host_addr,
                packets_out: f.packets_out,
                bytes_out: f.bytes_out,
                packets_in: f.packets_in,
                bytes_in: f.bytes_in,
                age_secs: f.age_secs,
                idle_secs: f.idle_secs,
                expires_secs: f.expires_secs,
            });
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binding on loopback with kernel-chosen ports is harmless anywhere.
    #[test]
    fn bind_and_conflicts() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t = bind_socket(lo, 0, Proto::Tcp).unwrap();
        let port = local_port(&t).unwrap();
        assert_ne!(port, 0);
        let e = bind_socket(lo, port, Proto::Tcp).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        let msg = bind_error(lo, &port.to_string(), port, e).to_string();
        assert_eq!(
            msg,
            format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
        );
        // The same number in UDP is another port; a second UDP socket on
        // it is refused too (no SO_REUSEADDR).
        let u = bind_socket(lo, port, Proto::Udp);
        if let Ok(u) = u {
            let e = bind_socket(lo, port, Proto::Udp).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
            drop(u);
        }
        // Closed: free again.
        drop(t);
        bind_socket(lo, port, Proto::Tcp).unwrap();
    }

    #[test]
    fn error_lines() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6 = "::".parse().unwrap();
        let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(
            bind_error(
                any,
                "8080",
                8080,
                std::io::Error::from(std::io::ErrorKind::AddrInUse)
            )
            .to_string(),
            "Bind for 0.0.0.0:8080 failed: port is already allocated"
        );
        assert_eq!(
            bind_error(v6, "8080", 8080, e).to_string(),
            "Bind for [::]:8080 failed: port is already allocated"
        );
        let start = unprivileged_port_start();
        if start > 1 {
            let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
            let m = bind_error(any, "1", 1, e).to_string();
            assert!(
                m.starts_with("Bind for 0.0.0.0:1 failed: permission denied")
                    && m.contains("net.ipv4.ip_unprivileged_port_start"),
                "{m}"
            );
            assert!(!m.contains('\n'));
        }
    }

    #[test]
    fn range_takes_a_free_port() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t = bind_socket(lo, 0, Proto::Tcp).unwrap();
        let port = local_port(&t).unwrap();
        if port == u16::MAX {
            return;
        }
        let b = PortBinding::parse(&format!("127.0.0.1:{port}-{}:80", port + 1)).unwrap();
        match bind_binding(&b, lo) {
            Ok(v) => {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].port.host_port, port + 1);
                assert_eq!(v[0].port.container_port, 80);
            }
            // port + 1 taken by someone else on this machine.
            Err(e) => assert!(e.to_string().contains("already allocated"), "{e}"),
        }
    }
}

//! The control plane of Docker's networks (`docker network create -d
//! tapnet`): what the driver plugin's requests (`plugin.rs`) do to the
//! state and the dataplane, as transactions like every other change.
//!
//! - CreateNetwork: a `docker` network (`crate::drivers::docker`) with
//!   Docker's pool and gateway; DeleteNetwork removes it.
//! - CreateEndpoint: an endpoint owned by Docker with Docker's addresses
//!   (IPv4, and IPv6 on a dual-stack network) and MAC, or one of tapnet's, its TAP made in dockerd's network
//!   namespace under a unique name (`tn` + 13 hex digits of the endpoint
//!   id), MTU set, no address, persistent, plugged into the switch at once.
//!   Docker moves it into the container and configures it.
//! - Join: the TAP's name and the gateways, IPv4 and IPv6 (none on
//!   internal networks).
//! - ProgramExternalConnectivity: the container's published ports, bound
//!   in dockerd's network namespace (rootless Docker: in the daemon's, see
//!   [`ports_bound_here`]) and relayed by the NAT gateway;
//!   RevokeExternalConnectivity closes them.
//! - DeleteEndpoint: unplugged, its TAP (back in dockerd's namespace)
//!   deleted, its address released.
//!
//! "dockerd" is the process that called (its pid from the socket's peer
//! credentials), so dockerd and tapnet need not share a network namespace.
//! After a tapnet restart, [`Core::recover_docker`] finds each plugged
//! endpoint's TAP again: in the container's namespace (Join's sandbox key,
//! through dockerd's mount namespace) by MAC, or in dockerd's namespace by
//! name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::core::Core;
use super::endpoints::{self, net_target};
use super::error::{DockerError, EndpointError, PortError};
use super::ports::Bound;
use crate::dataplane::Published;
use crate::drivers::docker::{Docker, IpamData};
use crate::drivers::{self, DriverKind};
use crate::model::*;
use crate::sandbox::{self, NetTarget};
use crate::state::State;

/// Whether the published ports of dockerd `pid` are bound in the daemon's
/// own network namespace rather than in dockerd's: when dockerd shares it,
/// and when dockerd runs in a user namespace of its own, which is rootless
/// Docker (RootlessKit): its network namespace is private, and the ports a
/// user publishes belong where RootlessKit's port driver would have put
/// them, the namespace RootlessKit started from, where a rootless tapnet
/// runs (and a thread of a process cannot enter another user's namespace
/// anyway). Bound here, a connection keeps the client's real address.
fn ports_bound_here(pid: i32) -> bool {
    use crate::sys::ns;
    if ns::same_netns_as(pid).unwrap_or(true) {
        return true;
    }
    match (ns::open_of(pid, "user"), ns::open_self("user")) {
        (Ok(theirs), Ok(ours)) => !ns::same(&theirs, &ours).unwrap_or(true),
        _ => false,
    }
}

/// The runtime name of Docker's endpoints ([`Owner::External`]).
pub const RUNTIME: &str = "docker";

/// The process that made a request: dockerd.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub pid: i32,
}

impl Peer {
    /// The caller's network namespace; the daemon's own when the caller's
    /// pid is not visible (another pid namespace).
    fn target(self) -> NetTarget {
        if self.pid > 0 && std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            NetTarget::Pid(self.pid)
        } else {
            NetTarget::Pid(std::process::id() as i32)
        }
    }

    fn pid(self) -> i32 {
        match self.target() {
            NetTarget::Pid(p) => p,
            NetTarget::Path(_) => std::process::id() as i32,
        }
    }
}

/// One `com.docker.network.portmap` entry (Docker's `types.PortBinding`).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortMap {
    /// 6 TCP, 17 UDP.
    pub proto: u8,
    #[serde(rename = "IP")]
    pub ip: String,
    pub port: u16,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    pub host_port: u16,
    pub host_port_end: u16,
}

impl PortMap {
    /// The `-p` binding it stands for.
    fn binding(&self) -> Result<PortBinding, DockerError> {
        let proto = match self.proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            p => {
                return Err(DockerError::PortMap(format!(
                    "protocol {p} (tapnet publishes tcp and udp)"
                )))
            }
        };
        if self.port == 0 {
            return Err(DockerError::PortMap("container port 0".into()));
        }
        let host_ip = match self.host_ip.as_str() {
            "" => None,
            s => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| DockerError::PortMap(format!("host address {s:?}")))?,
            ),
        };
        let end = self.host_port_end.max(self.host_port);
        Ok(PortBinding {
            host_ip,
            host_ports: (self.host_port, if self.host_port == 0 { 0 } else { end }),
            container_ports: (self.port, self.port),
            proto,
        })
    }
}

/// What CreateEndpoint fills in of the interface: only what Docker left
/// empty (libnetwork refuses a driver that changes a given value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DockerIface {
    /// The MAC tapnet chose.
    pub mac: Option<Mac>,
    /// The IPv6 address tapnet's IPAM chose on a dual-stack network
    /// (Docker's IPAM gives one whenever the network has an IPv6 pool, so
    /// in practice never).
    pub ipv6: Option<ipnet::Ipv6Net>,
}

/// What Join answers: the TAP's name in dockerd's namespace and the
/// default gateways Docker sets in the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerJoin {
    pub src_name: String,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
}

/// The TAP name of an endpoint in dockerd's namespace: unique (from the
/// endpoint id), 15 characters.
pub fn src_name(endpoint_id: &str) -> String {
    format!("tn{}", &endpoint_id[..13.min(endpoint_id.len())])
}

fn pid_start(pid: i32) -> u64 {
    sandbox::process_start_time(pid).unwrap_or(0)
}

impl Core {
    fn docker_network(&self, st: &State, id: &str) -> Result<Network, DockerError> {
        let n = st
            .networks
            .get(id)
            .ok_or_else(|| DockerError::NoNetwork(id.to_string()))?;
        if n.driver != DriverKind::Docker {
            return Err(DockerError::NotDocker(n.name.clone()));
        }
        Ok(n.clone())
    }

    /// `NetworkDriver.CreateNetwork`.
    pub fn docker_create_network(
        &mut self,
        id: &str,
        options: &serde_json::Value,
        ipv4: &[IpamData],
        ipv6: &[IpamData],
    ) -> Result<(), DockerError> {
        let mut next = self.store.prepare();
        if next.networks.contains_key(id) {
            return Ok(());
        }
        let n = Docker::from_docker(&next, id, options, ipv4, ipv6)?;
        next.networks.insert(n.id.clone(), n.clone());
        let nid = self.alloc_net_id(&n.id);
        let driver = drivers::of(&n);
        if let Err(source) = driver.create(&self.dp, nid, &n) {
            self.forget_net_id(&n.id);
            return Err(DockerError::Dataplane {
                name: n.name,
                source,
            });
        }
        if let Err(e) = self.store.commit(next) {
            let _ = driver.delete(&self.dp, nid);
            self.forget_net_id(&n.id);
            return Err(e.into());
        }
        tracing::info!("docker: network {} ({})", n.name, n.pools[0].subnet);
        Ok(())
    }

    /// `NetworkDriver.DeleteNetwork`: also drops endpoints Docker did not
    /// delete (it never fails a network removal on a plugin's error).
    pub fn docker_delete_network(&mut self, id: &str, peer: Peer) -> Result<(), DockerError> {
        let st = self.store.state().clone();
        let Ok(n) = self.docker_network(&st, id) else {
            return Ok(());
        };
        let left: Vec<String> = st.network_endpoints(id).map(|e| e.id.clone()).collect();
        for e in &left {
            self.docker_delete_endpoint(e, peer)?;
        }
        let mut next = self.store.prepare();
        next.networks.remove(id);
        next.forget_network(id);
        Ok(self.remove_networks(next, std::slice::from_ref(&n))?)
    }

    /// `NetworkDriver.CreateEndpoint` with Docker's `Address`,
    /// `AddressIPv6` and `MacAddress` (CIDR strings; empty when Docker
    /// gave none): returns what tapnet chose where Docker gave nothing.
    pub fn docker_create_endpoint(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        address: &str,
        address6: &str,
        mac: &str,
        peer: Peer,
    ) -> Result<DockerIface, DockerError> {
        let ip: Ipv4Addr = address
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| DockerError::Address(address.to_string()))?;
        let ip6: Option<Ipv6Addr> = match address6 {
            "" => None,
            a => Some(
                a.split('/')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| DockerError::Address6(a.to_string()))?,
            ),
        };
        // Docker's IPAM is the authority: an endpoint of ours that still
        // holds the address is one Docker dropped without telling its
        // driver (e.g. containers lost in a dockerd restart): remove it.
        let stale: Vec<String> = self
            .store
            .state()
            .network_endpoints(network_id)
            .filter(|e| matches!(&e.owner, Owner::External { runtime, .. } if runtime == RUNTIME))
            .filter(|e| {
                let v4 = e.ipv4.map(|a| a.addr()) == Some(ip);
                let v6 = ip6.is_some() && e.ipv6.map(|a| a.addr()) == ip6;
                (v4 || v6) && e.id != endpoint_id
            })
            .map(|e| e.id.clone())
            .collect();
        for id in stale {
            tracing::warn!(
                "docker: endpoint {} held {ip} (or {ip6:?}), which Docker gives to endpoint {} now: removing the stale one",
                &id[..12],
                &endpoint_id[..12.min(endpoint_id.len())]
            );
            self.docker_delete_endpoint(&id, peer)?;
        }
        let mut next = self.store.prepare();
        let n = self.docker_network(&next, network_id)?;
        if ip6.is_some() && n.pools6.is_empty() {
            return Err(DockerError::NoPool6(n.name.clone()));
        }
        if next.endpoints.contains_key(endpoint_id) {
            return Err(DockerError::Endpoint(EndpointError::GivenTwice(
                endpoint_id.to_string(),
            )));
        }
        let given_mac = match mac {
            "" => None,
            m => Some(
                m.parse::<Mac>()
                    .map_err(|_| DockerError::Mac(m.to_string()))?,
            ),
        };
        // Docker's bridge derives a container's MAC from its address
        // (02:42 + the four bytes), so a restarted container keeps its MAC
        // and its peers' ARP caches stay right: do the same (the gateway's
        // MAC follows the same rule, and no container has its address).
        let derived = {
            let o = ip.octets();
            Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
        };
        let derived_free = !next.network_endpoints(&n.id).any(|e| e.mac == derived);
        let req = NetRequest {
            network_id: n.id.clone(),
            ipv4: Some(ip),
            ipv6: ip6,
            mac: given_mac.or(derived_free.then_some(derived)),
            aliases: vec![],
            links: vec![],
        };
        let name = src_name(endpoint_id);
        let owner = Owner::External {
            runtime: RUNTIME.into(),
            id: endpoint_id.to_string(),
        };
        let ep = endpoints::allocate_as(&mut next, endpoint_id.to_string(), owner, &req, name)?;
        let target = peer.target();
        let ids = [ep.id.clone()];
        self.plug(&mut next, &ids, &target, None, true)?;
        next.docker.insert(
            ep.id.clone(),
            DockerEndpoint {
                endpoint_id: ep.id.clone(),
                network_id: n.id.clone(),
                src_name: ep.ifname.clone(),
                dockerd_pid: peer.pid(),
                dockerd_start: pid_start(peer.pid()),
                sandbox_key: None,
                published: vec![],
            },
        );
        let snapshot = next.clone();
        if let Err(e) = self.store.commit(next) {
            self.unplug_and_delete(&snapshot, &target, &ids);
            return Err(e.into());
        }
        Ok(DockerIface {
            mac: given_mac.is_none().then_some(ep.mac),
            ipv6: if ip6.is_none() { ep.ipv6 } else { None },
        })
    }

    /// `NetworkDriver.Join`: the TAP's name in dockerd's namespace and the
    /// gateways (none on an internal network; the IPv6 one when the
    /// endpoint has an IPv6 address).
    pub fn docker_join(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        sandbox_key: &str,
    ) -> Result<DockerJoin, DockerError> {
        let mut next = self.store.prepare();
        let n = self.docker_network(&next, network_id)?;
        let d = next
            .docker
            .get_mut(endpoint_id)
            .ok_or_else(|| DockerError::NoEndpoint(endpoint_id.to_string()))?;
        d.sandbox_key = (!sandbox_key.is_empty()).then(|| sandbox_key.to_string());
        let name = d.src_name.clone();
        let has6 = next
            .endpoints
            .get(endpoint_id)
            .is_some_and(|e| e.ipv6.is_some());
        self.store.commit(next)?;
        let route = drivers::of(&n).services(&n).default_route;
        Ok(DockerJoin {
            src_name: name,
            gateway: route.then(|| n.pools.first().map(|p| p.gateway)).flatten(),
            gateway6: (route && has6)
                .then(|| n.pools6.first().map(|p| p.gateway))
                .flatten(),
        })
    }

    /// `NetworkDriver.DeleteEndpoint` (also for endpoints of a network
    /// being deleted).
    pub fn docker_delete_endpoint(
        &mut self,
        endpoint_id: &str,
        peer: Peer,
    ) -> Result<(), DockerError> {
        let st = self.store.state().clone();
        let Some(ep) = st.endpoints.get(endpoint_id).cloned() else {
            return Ok(());
        };
        self.dp.unpublish(endpoint_id);
        self.unplug(&st, endpoint_id);
        // Docker has moved the TAP back into its namespace by now.
        let target = peer.target();
        if let Err(e) = sandbox::delete_taps(&target, std::slice::from_ref(&ep.ifname)) {
            tracing::warn!(
                "docker: endpoint {}: delete its TAP: {e:#}",
                &endpoint_id[..12]
            );
        }
        self.store.transact(|next| {
            endpoints::release(next, endpoint_id);
            next.docker.remove(endpoint_id);
            Ok::<_, DockerError>(())
        })
    }

    /// `NetworkDriver.ProgramExternalConnectivity`: publishes the
    /// container's ports (bound in dockerd's network namespace).
    pub fn docker_publish(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        portmap: &[PortMap],
        peer: Peer,
    ) -> Result<(), DockerError> {
        let st = self.store.state().clone();
        let n = self.docker_network(&st, network_id)?;
        let ep = st
            .endpoints
            .get(endpoint_id)
            .ok_or_else(|| DockerError::NoEndpoint(endpoint_id.to_string()))?
            .clone();
        if portmap.is_empty() || !drivers::of(&n).services(&n).publish {
            return Ok(());
        }
        let bindings = portmap
            .iter()
            .map(PortMap::binding)
            .collect::<Result<Vec<_>, _>>()?;
        super::ports::check_port_count(&bindings)?;
        let default_ip = n
            .options
            .get(OPT_HOST_BINDING)
            .and_then(|v| v.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let pid = peer.pid();
        // As Docker's bridge (and tapnet's own containers): a port with no
        // host address is published on `[::]` too for a dual-stack
        // endpoint, the same port, reaching its IPv6 address.
        let bound = self.bind_in(pid, bindings, default_ip, ep.ipv6.is_some(), endpoint_id)?;
        let published = self.publish_bound(&n, &ep, endpoint_id, bound)?;
        let r = self.store.transact(|next| {
            if let Some(d) = next.docker.get_mut(endpoint_id) {
                d.published = published;
            }
            Ok::<_, DockerError>(())
        });
        if r.is_err() {
            self.dp.unpublish(endpoint_id);
        }
        r
    }

    /// Binds `bindings` where dockerd's published ports belong (see
    /// [`ports_bound_here`]); for a `dual_stack` endpoint, also on `[::]`
    /// (see [`super::ports::bind_bindings`]).
    fn bind_in(
        &self,
        pid: i32,
        bindings: Vec<PortBinding>,
        default_ip: IpAddr,
        dual_stack: bool,
        endpoint_id: &str,
    ) -> Result<Vec<Bound>, DockerError> {
        let who = format!(
            "docker endpoint {}",
            &endpoint_id[..12.min(endpoint_id.len())]
        );
        let bind_all = move || -> Result<Vec<Bound>, PortError> {
            super::ports::bind_bindings(&bindings, default_ip, dual_stack, &who)
        };
        let r = if ports_bound_here(pid) {
            bind_all()
        } else {
            crate::sys::ns::with_netns_of(pid, bind_all).map_err(|e| DockerError::Namespace {
                pid,
                reason: e.to_string(),
            })?
        };
        Ok(r?)
    }

    /// Hands bound sockets to the NAT gateway, relaying to `ep`.
    fn publish_bound(
        &mut self,
        n: &Network,
        ep: &Endpoint,
        owner: &str,
        bound: Vec<Bound>,
    ) -> Result<Vec<PublishedPort>, DockerError> {
        let (Some(net), Some(ip)) = (self.dp_net_id(&n.id), ep.ipv4.map(|a| a.addr())) else {
            return Ok(vec![]);
        };
        let ip6 = ep.ipv6.map(|a| a.addr());
        let mut out = vec![];
        for b in bound {
            let what = join_host_port(b.port.host_ip, b.port.host_port);
            let r = self.dp.publish_dual_stack(
                Published {
                    owner: owner.to_string(),
                    network: net,
                    container_ip: ip,
                    container_port: b.port.container_port,
                    socket: b.socket,
                },
                ip6,
            );
            if let Err(e) = r {
                self.dp.unpublish(owner);
                return Err(PortError::Publish {
                    what,
                    container: format!("docker endpoint {}", &owner[..12.min(owner.len())]),
                    reason: format!("{e:#}"),
                }
                .into());
            }
            out.push(b.port);
        }
        Ok(out)
    }

    /// `NetworkDriver.RevokeExternalConnectivity`.
    pub fn docker_unpublish(&mut self, endpoint_id: &str) -> Result<(), DockerError> {
        self.dp.unpublish(endpoint_id);
        self.store.transact(|next| {
            if let Some(d) = next.docker.get_mut(endpoint_id) {
                d.published.clear();
            }
            Ok::<_, DockerError>(())
        })
    }

    /// After a restart: the TAPs of Docker's plugged endpoints opened again
    /// and their ports published again. An endpoint whose TAP cannot be
    /// found stays in the state (Docker deletes it later) and is logged.
    pub(super) fn recover_docker(&mut self) {
        let st = self.store.state().clone();
        for d in st.docker.values() {
            let Some(ep) = st.endpoints.get(&d.endpoint_id) else {
                continue;
            };
            if ep.netns.is_none() {
                continue;
            }
            match self.reopen_docker(&st, d, ep) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(
                        "docker: endpoint {}: cannot find its TAP again ({e}); its traffic stops until Docker recreates it",
                        &d.endpoint_id[..12]
                    );
                    continue;
                }
            }
            if d.published.is_empty() {
                continue;
            }
            let Ok(n) = self.docker_network(&st, &d.network_id) else {
                continue;
            };
            let alive = sandbox::process_start_time(d.dockerd_pid) == Some(d.dockerd_start);
            if !alive {
                tracing::warn!(
                    "docker: endpoint {}: dockerd (pid {}) is gone: its published ports are not bound again",
                    &d.endpoint_id[..12],
                    d.dockerd_pid
                );
                continue;
            }
            let bindings: Vec<(PortBinding, IpAddr)> = d
                .published
                .iter()
                .map(|p| {
                    (
                        PortBinding {
                            host_ip: Some(p.host_ip),
                            host_ports: (p.host_port, p.host_port),
                            container_ports: (p.container_port, p.container_port),
                            proto: p.proto,
                        },
                        p.host_ip,
                    )
                })
                .collect();
            let mut bound = vec![];
            for (b, ip) in bindings {
                match self.bind_in(d.dockerd_pid, vec![b], ip, false, &d.endpoint_id) {
                    Ok(v) => bound.extend(v),
                    Err(e) => tracing::warn!("docker: endpoint {}: {e}", &d.endpoint_id[..12]),
                }
            }
            if let Err(e) = self.publish_bound(&n, ep, &d.endpoint_id, bound) {
                tracing::warn!("docker: endpoint {}: {e}", &d.endpoint_id[..12]);
            }
        }
    }

    /// Finds a Docker endpoint's TAP: in the container's namespace by MAC
    /// (Docker renamed it), else in dockerd's by its own name.
    fn reopen_docker(
        &mut self,
        st: &State,
        d: &DockerEndpoint,
        ep: &Endpoint,
    ) -> Result<(), String> {
        let workers = self.workers();
        let mut tried = vec![];
        let mut fds = None;
        if let Some(key) = &d.sandbox_key {
            for path in sandbox_key_paths(d, key) {
                match sandbox::open_taps_by_mac(
                    &NetTarget::Path(path.clone()),
                    &[ep.mac.0],
                    workers,
                ) {
                    Ok(f) => {
                        fds = Some(f);
                        break;
                    }
                    Err(e) => tried.push(format!("{}: {e:#}", path.display())),
                }
            }
        }
        if fds.is_none() {
            let t = ep
                .netns
                .as_ref()
                .map(net_target)
                .unwrap_or(NetTarget::Pid(d.dockerd_pid));
            match sandbox::open_taps(&t, std::slice::from_ref(&ep.ifname), workers) {
                Ok(f) => fds = Some(f),
                Err(e) => tried.push(format!("{e:#}")),
            }
        }
        let Some(fds) = fds else {
            return Err(tried.join("; "));
        };
        self.add_ports(st, &[ep], fds, None)
            .map_err(|e| e.to_string())
    }
}

/// Where a sandbox key (a path in dockerd's mount namespace) can be
/// opened from here: through dockerd's `/proc/PID/root` when it still
/// runs, else through any process that sees it (a restarted dockerd).
fn sandbox_key_paths(d: &DockerEndpoint, key: &str) -> Vec<std::path::PathBuf> {
    let via = |pid: i32| std::path::PathBuf::from(format!("/proc/{pid}/root{key}"));
    let mut out = vec![];
    if sandbox::process_start_time(d.dockerd_pid) == Some(d.dockerd_start) {
        out.push(via(d.dockerd_pid));
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let p = via(pid);
            if pid != d.dockerd_pid && p.exists() {
                out.push(p);
                break;
            }
        }
    }
    out
}

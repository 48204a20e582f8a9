//! Endpoints: a port the daemon holds on one network (its TAP, made inside
//! a network namespace, with one queue per worker in the dataplane), with
//! its addresses and MAC given or allocated, owned by a tapnet container or
//! by an external runtime (see [`Owner`]).
//!
//! Life of an endpoint: [`allocate`] (address and MAC, in a state copy),
//! [`Core::plug`] (TAPs made in a namespace, ports added to the dataplane
//! through the network's driver, names registered in the embedded DNS;
//! `netns` recorded), [`Core::unplug`] (ports and names removed), then
//! [`release`] (the address freed). Plugging undoes itself when one step
//! fails; the caller commits the state copy only after it succeeded and
//! unplugs again when that commit fails. After a daemon restart,
//! [`Core::reopen`] opens the TAPs of plugged endpoints again (they are
//! persistent) and adds their ports.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::core::{find_network, Core};
use super::error::EndpointError;
use super::types::NetworkAttach;
use crate::dataplane::{DnsEndpoint, NetId, PortSpec};
use crate::drivers::{self, Attachment};
use crate::ipam;
use crate::model::*;
use crate::sandbox::{self, NetTarget, TapConfig};
use crate::state::State;

/// The names an endpoint answers to in the embedded DNS (its container's).
#[derive(Clone, Debug)]
pub struct DnsNames {
    pub container_id: String,
    pub name: String,
    pub hostname: String,
    /// The container's `--dns` servers (forwarding targets).
    pub upstreams: Vec<Ipv4Addr>,
}

impl DnsNames {
    pub fn of(c: &Container) -> DnsNames {
        DnsNames {
            container_id: c.id.clone(),
            name: c.name.clone(),
            hostname: c.hostname.clone(),
            upstreams: c.dns.clone(),
        }
    }
}

/// Validates one requested network attachment against the state.
pub fn request(st: &State, a: &NetworkAttach) -> Result<NetRequest, EndpointError> {
    let n = find_network(st, &a.network)?;
    if drivers::of(n).attachment() != Attachment::Switched {
        return Err(EndpointError::NotSwitched {
            network: n.name.clone(),
            driver: n.driver,
        });
    }
    if drivers::of(n).scope() == drivers::Scope::Global && !n.attachable {
        return Err(EndpointError::NotAttachable(n.name.clone()));
    }
    let ipv4 = match a.ipv4_address.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<Ipv4Addr>()
                .map_err(|_| EndpointError::BadAddress(s.to_string()))?,
        ),
    };
    let ipv6 = match a.ipv6_address.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<Ipv6Addr>()
                .map_err(|_| EndpointError::BadAddress6(s.to_string()))?,
        ),
    };
    if ipv6.is_some() && n.pools6.is_empty() {
        return Err(EndpointError::NoIpv6(n.name.clone()));
    }
    let mac = match a.mac_address.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<Mac>().map_err(EndpointError::BadMac)?),
    };
    if n.is_default_bridge() {
        if ipv4.is_some() || ipv6.is_some() {
            return Err(EndpointError::IpOnDefaultBridge);
        }
        if !a.aliases.is_empty() {
            return Err(EndpointError::AliasOnDefaultBridge);
        }
    }
    for alias in &a.aliases {
        if let Some(m) = alias_error(alias) {
            return Err(EndpointError::BadAlias(m));
        }
    }
    for l in &a.links {
        let (target, alias) = l.split_once(':').unwrap_or((l.as_str(), ""));
        super::containers::find_container(st, target)?;
        if let Some(m) = (!alias.is_empty()).then(|| alias_error(alias)).flatten() {
            return Err(EndpointError::BadAlias(m));
        }
    }
    Ok(NetRequest {
        network_id: n.id.clone(),
        ipv4,
        ipv6,
        mac,
        aliases: a.aliases.clone(),
        links: a.links.clone(),
    })
}

/// The requests for `attaches`, in order; a network given twice is an
/// error.
pub fn requests(st: &State, attaches: &[NetworkAttach]) -> Result<Vec<NetRequest>, EndpointError> {
    let mut out: Vec<NetRequest> = vec![];
    for a in attaches {
        let r = request(st, a)?;
        if out.iter().any(|x| x.network_id == r.network_id) {
            return Err(EndpointError::GivenTwice(a.network.clone()));
        }
        out.push(r);
    }
    Ok(out)
}

/// Allocates an endpoint (address, MAC) for `owner` on the requested
/// network, in the state copy `st`.
pub fn allocate(
    st: &mut State,
    owner: Owner,
    req: &NetRequest,
    ifname: String,
) -> Result<Endpoint, EndpointError> {
    allocate_as(st, new_id(), owner, req, ifname)
}

/// [`allocate`] with the endpoint's id given (an external runtime's).
pub fn allocate_as(
    st: &mut State,
    id: String,
    owner: Owner,
    req: &NetRequest,
    ifname: String,
) -> Result<Endpoint, EndpointError> {
    let n = st
        .networks
        .get(&req.network_id)
        .ok_or_else(|| super::error::LookupError::Network(req.network_id.clone()))?
        .clone();
    let pool = n
        .pools
        .first()
        .ok_or_else(|| EndpointError::NoPool(n.name.clone()))?;
    let used: BTreeSet<Ipv4Addr> = st.used_addresses(&n.id);
    let last = st.last_allocated(&n.id);
    let ip = ipam::allocate_after(pool, &used, req.ipv4, last).map_err(|e| match e {
        ipam::IpamError::AddrInUse(addr) => {
            let owner = held_by(
                st,
                st.address_owner(&n.id, addr)
                    .and_then(|ep| st.endpoints.get(ep)),
            );
            EndpointError::AddrInUse {
                addr,
                network: n.name.clone(),
                owner,
            }
        }
        source => EndpointError::Ipam {
            network: n.name.clone(),
            source,
        },
    })?;
    let ipv6 = match n.pools6.first() {
        None => None,
        Some(p6) => {
            let used: BTreeSet<Ipv6Addr> = st
                .network_endpoints(&n.id)
                .filter_map(|e| e.ipv6.map(|a| a.addr()))
                .collect();
            let a = ipam::allocate6(p6, &used, req.ipv6).map_err(|e| match e {
                ipam::Ipam6Error::AddrInUse(addr) => EndpointError::Addr6InUse {
                    addr,
                    network: n.name.clone(),
                    owner: held_by(
                        st,
                        st.network_endpoints(&n.id)
                            .find(|e| e.ipv6.map(|a| a.addr()) == Some(addr)),
                    ),
                },
                source => EndpointError::Ipam6 {
                    network: n.name.clone(),
                    source,
                },
            })?;
            Some((
                Ipv6Net::new(a, p6.subnet.prefix_len()).expect("prefix of a pool"),
                p6.gateway,
            ))
        }
    };
    // The gateway's MAC is the switch's own on this network: a container
    // claiming it would be unreachable (and would shadow the gateway).
    let gateway_mac = Mac(tapnet_switch::topology::gateway_mac(pool.gateway).0);
    let taken = |m: Mac| {
        m == gateway_mac
            || st
                .network_endpoints(&n.id)
                .any(|e| e.mac == m && e.owner != owner)
    };
    let mac = match req.mac {
        Some(mac) if mac == gateway_mac => {
            return Err(EndpointError::GatewayMac {
                mac,
                network: n.name.clone(),
            })
        }
        Some(mac) if taken(mac) => {
            return Err(EndpointError::MacInUse {
                mac,
                network: n.name.clone(),
            })
        }
        Some(m) => m,
        None => loop {
            let m = Mac::random();
            if !taken(m) {
                break m;
            }
        },
    };
    // A kind may fix the MAC (ipvlan: the parent's, shared by all).
    let mac = drivers::of(&n).endpoint_mac(&n).unwrap_or(mac);
    // Routed without a gateway (ipvlan l3): none, as Docker shows it.
    let routed = drivers::of(&n).services(&n).routed;
    let ep = Endpoint {
        id,
        network_id: n.id.clone(),
        owner,
        ifname,
        mac,
        ipv4: Some(ipnet::Ipv4Net::new(ip, pool.subnet.prefix_len()).expect("prefix of a pool")),
        gateway: (!routed).then_some(pool.gateway),
        ipv6: ipv6.map(|(a, _)| a),
        gateway6: ipv6.filter(|_| !routed).map(|(_, g)| g),
        aliases: req.aliases.clone(),
        links: req.links.clone(),
        mtu: n.mtu(),
        static_ip: req.ipv4.is_some(),
        netns: None,
    };
    st.allocate(&n.id, ip, &ep.id);
    if req.ipv4.is_none() {
        st.set_last_allocated(&n.id, ip);
    }
    st.endpoints.insert(ep.id.clone(), ep.clone());
    Ok(ep)
}

/// ` by container NAME` when `ep` belongs to a tapnet container (for an
/// address-in-use error), else nothing.
fn held_by(st: &State, ep: Option<&Endpoint>) -> String {
    ep.and_then(|ep| ep.owner.container())
        .and_then(|c| st.containers.get(c))
        .map(|c| format!(" by container {}", c.name))
        .unwrap_or_default()
}

/// Removes an endpoint and frees its address, in the state copy `st`.
pub fn release(st: &mut State, ep_id: &str) {
    if let Some(ep) = st.endpoints.remove(ep_id) {
        if let Some(a) = ep.ipv4 {
            st.release(&ep.network_id, a.addr());
        }
    }
}

/// The TAP configurations of `eps`: the first endpoint on a network whose
/// gateway holds a default route gets it, unless the namespace has one;
/// likewise the first with an IPv6 address gets the IPv6 default route.
/// Every endpoint whose network's embedded DNS answers off its subnet
/// gets a host route to that address. An external runtime's TAP gets neither address nor route: the runtime
/// configures it where it moves it.
fn tap_configs(st: &State, eps: &[&Endpoint], mut has_default: bool) -> Vec<TapConfig> {
    let mut has_default6 = has_default;
    eps.iter()
        .map(|e| {
            if let Owner::External { .. } = e.owner {
                return TapConfig {
                    name: e.ifname.clone(),
                    mac: e.mac.0,
                    mtu: e.mtu,
                    addr: None,
                    default_gateway: None,
                    addr6: None,
                    default_gateway6: None,
                    dns_route: None,
                    noarp: false,
                    default_dev: false,
                    default_dev6: false,
                    link_local6: None,
                };
            }
            let services = st
                .networks
                .get(&e.network_id)
                .map(|n| drivers::of(n).services(n))
                .unwrap_or_default();
            let (route, routed) = (services.default_route, services.routed);
            let holds = !has_default && route;
            has_default |= holds;
            let holds6 = !has_default6 && route && e.ipv6.is_some();
            has_default6 |= holds6;
            // The embedded DNS's address, when it is not on the subnet
            // (macvlan/ipvlan: a link-local service address).
            let dns_route = st
                .networks
                .get(&e.network_id)
                .and_then(|n| drivers::of(n).dns_address(n, e.gateway))
                .filter(|a| e.ipv4.is_some_and(|net| !net.contains(a)));
            TapConfig {
                name: e.ifname.clone(),
                mac: e.mac.0,
                mtu: e.mtu,
                addr: Some(e.ipv4.unwrap_or_default()),
                default_gateway: e.gateway.filter(|_| holds && !routed),
                addr6: e.ipv6,
                default_gateway6: e.gateway6.filter(|_| holds6 && !routed),
                noarp: routed,
                default_dev: holds && routed,
                default_dev6: holds6 && routed,
                link_local6: link_local6(st, e),
                dns_route,
            }
        })
        .collect()
}

/// The explicit IPv6 link-local address of an endpoint on a network whose
/// endpoints share one MAC (ipvlan): the EUI-64 ones would all be the same.
fn link_local6(st: &State, e: &Endpoint) -> Option<std::net::Ipv6Addr> {
    let n = st.networks.get(&e.network_id)?;
    drivers::of(n).endpoint_mac(n)?;
    Some(tapnet_switch::segment::ipvlan_link_local(e.ipv4?.addr()))
}

/// The persisted form of a namespace target.
pub fn netns_ref(t: &NetTarget) -> NetnsRef {
    match t {
        NetTarget::Pid(p) => NetnsRef::Pid(*p),
        NetTarget::Path(p) => NetnsRef::Path(p.display().to_string()),
    }
}

/// The namespace target of a persisted reference.
pub fn net_target(r: &NetnsRef) -> NetTarget {
    match r {
        NetnsRef::Pid(p) => NetTarget::Pid(*p),
        NetnsRef::Path(p) => NetTarget::Path(p.into()),
    }
}

/// How long [`noqueue_once_moved`] waits for the runtime's move (Docker
/// moves the TAP right after `Join`, which follows `CreateEndpoint`).
const MOVE_WAIT: Duration = Duration::from_secs(30);

/// Gives the TAP of `queue` no qdisc once another process (the runtime)
/// has moved it into another network namespace: a move resets a device's
/// qdiscs, and the kernel's default costs 12 MiB per multi-queue TAP (see
/// `sandbox::helper`'s `no_qdisc`). On a thread of its own, which joins the
/// namespace the TAP went to; polls every 20 ms for up to [`MOVE_WAIT`].
/// Best effort: it gives up silently when the TAP goes away, is never
/// moved, or its new namespace is out of reach (`TUNGETDEVNETNS` needs
/// `CAP_NET_ADMIN` there). The runtime may rename the TAP and bring it up
/// meanwhile: the name is read again on every try, and `noqueue` replaces
/// whatever the kernel attached at link up. A refusal (other than the
/// interface gone by that name) ends it: it is not retried for 30 s.
fn noqueue_once_moved(queue: OwnedFd) {
    use crate::sys::{netlink, ns, tap};
    let watch = move || {
        let Ok(home) = tap::dev_netns(&queue) else {
            return;
        };
        let start = Instant::now();
        let tick = || std::thread::sleep(Duration::from_millis(20));
        let there = loop {
            if start.elapsed() > MOVE_WAIT {
                return;
            }
            let Ok(now) = tap::dev_netns(&queue) else {
                return;
            };
            if !ns::same(&now, &home).unwrap_or(true) {
                break now;
            }
            tick();
        };
        if ns::setns(&there, nix::sched::CloneFlags::CLONE_NEWNET, "net").is_err() {
            return;
        }
        let Ok(mut nl) = netlink::Netlink::open() else {
            return;
        };
        while start.elapsed() <= MOVE_WAIT {
            let Ok(name) = tap::dev_name(&queue) else {
                return;
            };
            // Not found, or gone by the request: renamed meanwhile, again.
            if let Some(i) = netlink::link_index(&name) {
                match nl.set_noqueue(i) {
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                    _ => return,
                }
            }
            tick();
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("tapnet-qdisc".into())
        .spawn(watch)
    {
        tracing::debug!("no thread to watch a TAP's move: {e}");
    }
}

impl Core {
    /// Makes TAPs for the endpoints `ids` (in the state copy `next`) inside
    /// `target` and plugs them; records `target` in them. On an error
    /// nothing stays made.
    pub(super) fn plug(
        &mut self,
        next: &mut State,
        ids: &[String],
        target: &NetTarget,
        names: Option<&DnsNames>,
        has_default: bool,
    ) -> Result<(), EndpointError> {
        if ids.is_empty() {
            return Ok(());
        }
        let eps: Vec<Endpoint> = ids
            .iter()
            .filter_map(|id| next.endpoints.get(id).cloned())
            .collect();
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let taps = tap_configs(next, &refs, has_default);
        let owner = names
            .map(|n| format!("container {}", n.name))
            .unwrap_or_else(|| "an endpoint".into());
        let fds = sandbox::create_taps(target, &taps, self.workers()).map_err(|e| {
            EndpointError::Interfaces {
                owner,
                reason: format!("{e:#}"),
            }
        })?;
        // A runtime that moves its TAPs (Docker) resets their qdiscs by the
        // move: watch for it through a copy of one queue of each.
        let moving: Vec<OwnedFd> = eps
            .iter()
            .zip(&fds)
            .filter(|(e, _)| matches!(e.owner, Owner::External { .. }))
            .filter_map(|(_, q)| q.first()?.try_clone().ok())
            .collect();
        if let Err(e) = self.add_ports(next, &refs, fds, names) {
            let names: Vec<String> = eps.iter().map(|e| e.ifname.clone()).collect();
            let _ = sandbox::delete_taps(target, &names);
            return Err(e);
        }
        for q in moving {
            noqueue_once_moved(q);
        }
        for id in ids {
            if let Some(e) = next.endpoints.get_mut(id) {
                e.netns = Some(netns_ref(target));
            }
        }
        Ok(())
    }

    /// Adds one dataplane port per endpoint (through its network's driver)
    /// and registers its names; on an error removes those added.
    pub(super) fn add_ports(
        &mut self,
        st: &State,
        eps: &[&Endpoint],
        fds: Vec<Vec<OwnedFd>>,
        names: Option<&DnsNames>,
    ) -> Result<(), EndpointError> {
        let mut added: Vec<String> = vec![];
        let port_name = |e: &Endpoint| match names {
            Some(n) => format!("{}/{}", n.name, e.ifname),
            None => format!("{}/{}", &e.id[..12], e.ifname),
        };
        for (e, queues) in eps.iter().zip(fds) {
            let (Some(net), Some(n)) = (
                self.dp_net_id(&e.network_id),
                st.networks.get(&e.network_id),
            ) else {
                continue;
            };
            let spec = PortSpec {
                name: port_name(e),
                network: net,
                mac: Some(e.mac.0),
                ip: e.ipv4.map(|a| a.addr()),
                ip6: e.ipv6.map(|a| a.addr()),
                link_local6: link_local6(st, e),
            };
            let r = drivers::of(n)
                .join(&self.dp, spec, queues)
                .map_err(|source| EndpointError::Dataplane {
                    port: port_name(e),
                    source,
                })
                .and_then(|p| {
                    self.ports.insert(e.id.clone(), p);
                    added.push(e.id.clone());
                    match names {
                        Some(names) if drivers::of(n).services(n).embedded_dns => {
                            self.register_names(names, e, net)
                        }
                        _ => Ok(()),
                    }
                })
                .and_then(|()| self.register_global(n, e, names));
            if let Err(err) = r {
                for id in added {
                    self.unplug(st, &id);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Removes an endpoint's port and names (its TAP stays: the caller
    /// deletes it or the namespace goes).
    pub(super) fn unplug(&mut self, st: &State, ep_id: &str) {
        self.unregister_global(st, ep_id);
        if let Some(p) = self.ports.remove(ep_id) {
            let driver = st
                .endpoints
                .get(ep_id)
                .and_then(|e| st.networks.get(&e.network_id))
                .map(drivers::of);
            if let Some(d) = driver {
                if let Err(e) = d.leave(&self.dp, p) {
                    tracing::warn!("endpoint {}: remove its port: {e}", &ep_id[..12]);
                }
            }
        }
        if let Some((net, cid, ip)) = self.dns_regs.remove(ep_id) {
            self.dp.dns_remove_endpoint(net, &cid, &ip);
        }
    }

    /// Unplugs `eps` and deletes their TAPs in `target` (undoing
    /// [`Core::plug`]).
    pub(super) fn unplug_and_delete(&mut self, st: &State, target: &NetTarget, eps: &[String]) {
        let mut names = vec![];
        for id in eps {
            self.unplug(st, id);
            if let Some(e) = st.endpoints.get(id) {
                names.push(e.ifname.clone());
            }
        }
        if !names.is_empty() {
            let _ = sandbox::delete_taps(target, &names);
        }
    }

    /// Registers names on the endpoint's network in the embedded DNS: name,
    /// hostname, short id (by the registry), aliases, links
    /// `CONTAINER:ALIAS`, and the `--dns` servers for forwarding.
    fn register_names(
        &mut self,
        names: &DnsNames,
        e: &Endpoint,
        net: NetId,
    ) -> Result<(), EndpointError> {
        let links = e
            .links
            .iter()
            .map(|l| match l.split_once(':') {
                Some((t, a)) => (t.to_string(), a.to_string()),
                None => (l.clone(), l.clone()),
            })
            .collect();
        let ip = e.ipv4.map(|a| a.addr());
        self.dp
            .dns_add_endpoint(
                net,
                DnsEndpoint {
                    container_id: names.container_id.clone(),
                    name: names.name.clone(),
                    hostname: Some(names.hostname.clone()),
                    aliases: e.aliases.clone(),
                    ipv4: ip,
                    ipv6: e.ipv6.map(|a| a.addr()),
                    links,
                    upstreams: names
                        .upstreams
                        .iter()
                        .map(|a| std::net::SocketAddr::new((*a).into(), 53))
                        .collect(),
                },
            )
            .map_err(|source| EndpointError::Dataplane {
                port: format!("{}/{}", names.name, e.ifname),
                source,
            })?;
        let addrs = ip
            .map(std::net::IpAddr::from)
            .into_iter()
            .chain(e.ipv6.map(|a| a.addr().into()))
            .collect();
        self.dns_regs
            .insert(e.id.clone(), (net, names.container_id.clone(), addrs));
        Ok(())
    }

    /// After a restart: opens the (persistent) TAPs of the plugged
    /// endpoints `eps` again in their namespace and adds their ports.
    pub(super) fn reopen(
        &mut self,
        st: &State,
        eps: &[&Endpoint],
        names: Option<&DnsNames>,
    ) -> Result<(), EndpointError> {
        let Some(target) = eps.first().and_then(|e| e.netns.as_ref()).map(net_target) else {
            return Ok(());
        };
        let ifnames: Vec<String> = eps.iter().map(|e| e.ifname.clone()).collect();
        let owner = names
            .map(|n| format!("container {}", n.name))
            .unwrap_or_else(|| "an endpoint".into());
        let fds = sandbox::open_taps(&target, &ifnames, self.workers()).map_err(|e| {
            EndpointError::Interfaces {
                owner,
                reason: format!("{e:#}"),
            }
        })?;
        self.add_ports(st, eps, fds, names)
    }
}

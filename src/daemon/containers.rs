//! Containers (sandboxes) in the daemon: create (addresses, MACs, files),
//! start (TAPs made inside the sandbox, ports added to the dataplane), exit
//! (ports removed, addresses released), attach to existing namespaces,
//! `network connect/disconnect`, the exit watcher and recovery after a
//! daemon restart.
//!
//! Endpoints (and their addresses) exist while a container is created or
//! running; when it exits they are released, the container keeps the list
//! of networks it asked for (Docker does the same).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::api::{call, Shared};
use super::core::{find_network, Core};
use super::types::*;
use super::ApiError;
use crate::dataplane::PortSpec;
use crate::ipam;
use crate::model::*;
use crate::sandbox::{self, NetTarget, TapConfig};
use crate::state::State;

/// Whether `pid` is alive (not a zombie) and still the process that had
/// `start_time`.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
    let state = rest.first().copied().unwrap_or("X");
    if state == "Z" || state == "X" || state == "x" {
        return false;
    }
    rest.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start_time)
}

/// Finds a container by full id, name (with or without `/`), id prefix.
pub fn find_container<'a>(st: &'a State, key: &str) -> Result<&'a Container, ApiError> {
    let name = key.strip_prefix('/').unwrap_or(key);
    super::core::find_by_key(&st.containers, name, "container", |c| (&c.id, &c.name))
        .map_err(|e| e.unwrap_or_else(|| ApiError::not_found(format!("No such container: {key}"))))
}

/// Open files the daemon keeps free for everything but published ports
/// (TAP queues, relayed flows, clients).
const FD_RESERVE: u64 = 1024;

/// Refuses, before anything is bound, more published ports than the
/// daemon's open-file limit leaves room for (one socket each).
fn check_port_count(ports: &[PortBinding]) -> Result<(), ApiError> {
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
        return Err(ApiError::bad(format!(
            "cannot publish {wanted} ports: each needs an open file and the daemon's limit (RLIMIT_NOFILE {limit}, {open} open) leaves room for {room}; publish fewer ports or raise the limit"
        )));
    }
    Ok(())
}

fn net_target(c: &Container) -> Option<NetTarget> {
    match &c.kind {
        Kind::Run => (c.pid > 0).then_some(NetTarget::Pid(c.pid)),
        Kind::AttachPid(p) => Some(NetTarget::Pid(*p)),
        Kind::AttachNetns(p) => Some(NetTarget::Path(PathBuf::from(p))),
    }
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lucid", "merry",
    "nifty", "proud", "quirky", "silly", "tender", "vivid", "witty", "zen",
];
const NOUNS: &[&str] = &[
    "babbage", "curie", "darwin", "euler", "fermat", "gauss", "hopper", "kepler", "lovelace",
    "noether", "pascal", "ritchie", "shannon", "turing", "wing", "yalow",
];

fn random_name(st: &State) -> String {
    use rand::seq::SliceRandom;
    let mut rng = rand::thread_rng();
    loop {
        let n = format!(
            "{}_{}",
            ADJECTIVES.choose(&mut rng).unwrap(),
            NOUNS.choose(&mut rng).unwrap()
        );
        if !st.containers.values().any(|c| c.name == n) {
            return n;
        }
        let n = format!("{n}{}", rand::random::<u16>() % 100);
        if !st.containers.values().any(|c| c.name == n) {
            return n;
        }
    }
}

fn check_name(st: &State, name: &str) -> Result<(), ApiError> {
    if !valid_container_name(name) {
        return Err(ApiError::bad(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    if let Some(c) = st.containers.values().find(|c| c.name == name) {
        return Err(ApiError::conflict(format!(
            "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
            c.id
        )));
    }
    Ok(())
}

/// Validates one requested network attachment against the state.
fn net_request(st: &State, a: &NetworkAttach) -> Result<NetRequest, ApiError> {
    let n = find_network(st, &a.network)?;
    if !n.is_bridge() {
        return Err(ApiError::bad(format!(
            "network {} (driver {}) cannot be combined with other networks; use it alone",
            n.name, n.driver
        )));
    }
    let ipv4 = match a.ipv4_address.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<Ipv4Addr>()
                .map_err(|_| ApiError::bad(format!("invalid IPv4 address: {s}")))?,
        ),
    };
    let mac = match a.mac_address.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<Mac>().map_err(ApiError::bad)?),
    };
    if n.is_default_bridge() {
        if ipv4.is_some() {
            return Err(ApiError::bad(
                "user specified IP address is supported on user defined networks only",
            ));
        }
        if !a.aliases.is_empty() {
            return Err(ApiError::bad(
                "network-scoped alias is supported only for containers in user defined networks",
            ));
        }
    }
    for alias in &a.aliases {
        if let Some(m) = alias_error(alias) {
            return Err(ApiError::bad(m));
        }
    }
    for l in &a.links {
        let (target, alias) = l.split_once(':').unwrap_or((l.as_str(), ""));
        find_container(st, target)?;
        if let Some(m) = (!alias.is_empty()).then(|| alias_error(alias)).flatten() {
            return Err(ApiError::bad(m));
        }
    }
    Ok(NetRequest {
        network_id: n.id.clone(),
        ipv4,
        mac,
        aliases: a.aliases.clone(),
        links: a.links.clone(),
    })
}

/// Allocates an endpoint (address, MAC) for a container on a network, in
/// the state copy `st`.
/// The requests for `attaches`, in order; a network given twice is an error.
fn net_requests(st: &State, attaches: &[NetworkAttach]) -> Result<Vec<NetRequest>, ApiError> {
    let mut requests: Vec<NetRequest> = vec![];
    for a in attaches {
        let r = net_request(st, a)?;
        if requests.iter().any(|x| x.network_id == r.network_id) {
            return Err(ApiError::bad(format!(
                "network {} is given twice",
                a.network
            )));
        }
        requests.push(r);
    }
    Ok(requests)
}

fn alloc_endpoint(
    st: &mut State,
    container_id: &str,
    req: &NetRequest,
    ifname: String,
) -> Result<Endpoint, ApiError> {
    let n = st
        .networks
        .get(&req.network_id)
        .ok_or_else(|| ApiError::not_found(format!("network {} not found", req.network_id)))?
        .clone();
    let pool = n
        .pools
        .first()
        .ok_or_else(|| ApiError::bad(format!("network {} has no address pool", n.name)))?;
    let used: BTreeSet<Ipv4Addr> = st.used_addresses(&n.id);
    let last = st.last_allocated(&n.id);
    let ip = ipam::allocate_after(pool, &used, req.ipv4, last).map_err(|e| match e {
        ipam::IpamError::AddrInUse(a) => {
            let owner = st
                .address_owner(&n.id, a)
                .and_then(|ep| st.endpoints.get(ep))
                .and_then(|ep| st.containers.get(&ep.container_id))
                .map(|c| format!(" by container {}", c.name))
                .unwrap_or_default();
            ApiError::conflict(format!(
                "address {a} is already in use on network {}{owner}",
                n.name
            ))
        }
        e => ApiError::bad(format!("network {}: {e}", n.name)),
    })?;
    // The gateway's MAC is the switch's own on this network: a container
    // claiming it would be unreachable (and would shadow the gateway).
    let gateway_mac = Mac(tapnet_switch::topology::gateway_mac(pool.gateway).0);
    let taken = |m: Mac| {
        m == gateway_mac
            || st
                .network_endpoints(&n.id)
                .any(|e| e.mac == m && e.container_id != container_id)
    };
    let mac = match req.mac {
        Some(m) if m == gateway_mac => {
            return Err(ApiError::conflict(format!(
                "MAC address {m} is the gateway's on network {}",
                n.name
            )));
        }
        Some(m) if taken(m) => {
            return Err(ApiError::conflict(format!(
                "MAC address {m} is already in use on network {}",
                n.name
            )));
        }
        Some(m) => m,
        None => loop {
            let m = Mac::random();
            if !taken(m) {
                break m;
            }
        },
    };
    let ep = Endpoint {
        id: new_id(),
        network_id: n.id.clone(),
        container_id: container_id.to_string(),
        ifname,
        mac,
        ipv4: Some(ipnet::Ipv4Net::new(ip, pool.subnet.prefix_len()).unwrap()),
        gateway: Some(pool.gateway),
        aliases: req.aliases.clone(),
        links: req.links.clone(),
        mtu: n.mtu(),
        static_ip: req.ipv4.is_some(),
    };
    st.allocate(&n.id, ip, &ep.id);
    if req.ipv4.is_none() {
        st.set_last_allocated(&n.id, ip);
    }
    st.endpoints.insert(ep.id.clone(), ep.clone());
    Ok(ep)
}

fn release_endpoint(st: &mut State, ep_id: &str) {
    if let Some(ep) = st.endpoints.remove(ep_id) {
        if let Some(a) = ep.ipv4 {
            st.release(&ep.network_id, a.addr());
        }
    }
}

/// The TAP configurations of a container's endpoints: the first endpoint on
/// a non-internal network holds the default route.
fn tap_configs(st: &State, eps: &[&Endpoint], has_default: bool) -> Vec<TapConfig> {
    let mut has_default = has_default;
    eps.iter()
        .map(|e| {
            let internal = st
                .networks
                .get(&e.network_id)
                .map(|n| n.internal)
                .unwrap_or(true);
            let default_gateway = if !has_default && !internal {
                has_default = true;
                e.gateway
            } else {
                None
            };
            TapConfig {
                name: e.ifname.clone(),
                mac: e.mac.0,
                mtu: e.mtu,
                addr: e.ipv4.unwrap_or_default(),
                default_gateway,
            }
        })
        .collect()
}

fn interface_view(st: &State, e: &Endpoint) -> InterfaceView {
    InterfaceView {
        name: e.ifname.clone(),
        network: st
            .networks
            .get(&e.network_id)
            .map(|n| n.name.clone())
            .unwrap_or_default(),
        network_id: e.network_id.clone(),
        mac_address: e.mac.to_string(),
        ip_address: e.ipv4.map(|a| a.addr().to_string()).unwrap_or_default(),
        ip_prefix_len: e.ipv4.map(|a| a.prefix_len()).unwrap_or(0),
        gateway: e.gateway.map(|g| g.to_string()).unwrap_or_default(),
        mtu: e.mtu,
    }
}

fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join("containers").join(id)
}

fn host_resolv_nameservers() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut ns = vec![];
    let mut other = vec![];
    for l in text.lines() {
        let l = l.trim();
        if let Some(a) = l.strip_prefix("nameserver") {
            let a = a.trim();
            if !a.starts_with("127.") && a != "::1" {
                ns.push(a.to_string());
            }
        } else if l.starts_with("search") || l.starts_with("options") {
            other.push(l.to_string());
        }
    }
    (ns, other)
}

/// Writes (in place: the files are bind-mounted into the sandbox) the
/// container's hosts, resolv.conf and hostname.
fn write_files(st: &State, root: &Path, c: &Container) -> std::io::Result<()> {
    let dir = container_dir(root, &c.id);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for l in &c.links {
        let (target, alias) = l.split_once(':').unwrap_or((l.as_str(), l.as_str()));
        if let Ok(t) = find_container(st, target) {
            if let Some(ip) = t
                .endpoints
                .iter()
                .filter_map(|e| st.endpoints.get(e))
                .find_map(|e| e.ipv4)
            {
                let mut names = vec![alias.to_string()];
                if alias != t.name {
                    names.push(t.name.clone());
                }
                names.push(t.short_id().to_string());
                hosts.push_str(&format!("{}\t{}\n", ip.addr(), names.join(" ")));
            }
        }
    }
    for e in c.endpoints.iter().filter_map(|e| st.endpoints.get(e)) {
        if let Some(ip) = e.ipv4 {
            hosts.push_str(&format!("{}\t{}\n", ip.addr(), c.hostname));
        }
    }
    let (host_ns, host_other) = host_resolv_nameservers();
    let mut resolv = String::new();
    // Docker's rule: a container on at least one user-defined network uses
    // the embedded DNS (here: the gateway address of the first such
    // network) as its only nameserver, with ndots:0, which forwards to
    // `--dns`; it switches when the container joins its first user-defined
    // network and back when it leaves the last one. The default bridge has
    // no embedded DNS: its containers get `--dns` or the host's resolvers.
    let dns_gw = c
        .endpoints
        .iter()
        .filter_map(|e| st.endpoints.get(e))
        .filter(|e| {
            st.networks
                .get(&e.network_id)
                .is_some_and(Network::has_embedded_dns)
        })
        .find_map(|e| e.gateway)
        .filter(|_| matches!(c.net_mode, NetMode::Bridge));
    let embedded = dns_gw.is_some();
    let nameservers: Vec<String> = if let Some(gw) = dns_gw {
        vec![gw.to_string()]
    } else if !c.dns.is_empty() {
        c.dns.iter().map(|d| d.to_string()).collect()
    } else if !host_ns.is_empty() {
        host_ns
    } else {
        vec!["8.8.8.8".into(), "8.8.4.4".into()]
    };
    for ns in nameservers {
        resolv.push_str(&format!("nameserver {ns}\n"));
    }
    for l in host_other {
        if embedded && l.starts_with("options") {
            continue;
        }
        resolv.push_str(&l);
        resolv.push('\n');
    }
    if embedded {
        resolv.push_str("options ndots:0\n");
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::write(dir.join("hostname"), format!("{}\n", c.hostname))?;
    // The `run -d` log holds the command's output: owner-only from the
    // start (the sandbox appends to it).
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("log"))?;
    }
    Ok(())
}

fn human_since(t: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(t) else {
        return String::new();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    match secs {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

impl Core {
    /// What a sandbox covers (see [`ContainerCreateResponse::hide_paths`]):
    /// the state directory, and the socket's directory when it is a
    /// dedicated one (`/run/tapnet`, `$XDG_RUNTIME_DIR/tapnet`), else the
    /// socket file alone.
    fn hide_paths(&self) -> Vec<String> {
        let mut out = vec![self.root.display().to_string()];
        let dedicated = self
            .socket
            .parent()
            .filter(|d| d.file_name() == Some("tapnet".as_ref()));
        match dedicated {
            Some(d) => out.push(d.display().to_string()),
            None => out.push(self.socket.display().to_string()),
        }
        out
    }

    fn workers(&self) -> usize {
        self.dp.workers().max(1)
    }

    /// Adds one dataplane port per endpoint; on failure removes those added.
    fn plug(
        &mut self,
        st: &State,
        c: &Container,
        eps: &[&Endpoint],
        fds: Vec<Vec<OwnedFd>>,
    ) -> Result<(), ApiError> {
        let mut added = vec![];
        for (e, queues) in eps.iter().zip(fds) {
            let Some(net) = self.dp_net_id(&e.network_id) else {
                continue;
            };
            let spec = PortSpec {
                name: format!("{}/{}", c.name, e.ifname),
                network: net,
                mac: Some(e.mac.0),
                ip: e.ipv4.map(|a| a.addr()),
            };
            match self.dp.add_port(spec, queues) {
                Ok(p) => {
                    self.ports.insert(e.id.clone(), p);
                    added.push(e.id.clone());
                    self.dns_register(c, e, net);
                }
                Err(err) => {
                    for id in added {
                        self.unplug(&id);
                    }
                    let _ = st;
                    return Err(ApiError::internal(format!(
                        "cannot add port {}/{} to the switch: {err:#}",
                        c.name, e.ifname
                    )));
                }
            }
        }
        Ok(())
    }

    fn unplug(&mut self, ep_id: &str) {
        if let Some(p) = self.ports.remove(ep_id) {
            self.dp.remove_port(p);
        }
        if let Some((net, cid, ip)) = self.dns_regs.remove(ep_id) {
            self.dp.dns_remove_endpoint(net, &cid, ip);
        }
    }

    /// Registers the container's names on the endpoint's network in the
    /// embedded DNS: name, hostname, short id (by the registry), aliases,
    /// links `CONTAINER:ALIAS`, and its `--dns` servers for forwarding.
    fn dns_register(&mut self, c: &Container, e: &Endpoint, net: crate::dataplane::NetId) {
        let links = e
            .links
            .iter()
            .map(|l| match l.split_once(':') {
                Some((t, a)) => (t.to_string(), a.to_string()),
                None => (l.clone(), l.clone()),
            })
            .collect();
        let ip = e.ipv4.map(|a| a.addr());
        self.dp.dns_add_endpoint(
            net,
            crate::dataplane::DnsEndpoint {
                container_id: c.id.clone(),
                name: c.name.clone(),
                hostname: Some(c.hostname.clone()),
                aliases: e.aliases.clone(),
                ipv4: ip,
                links,
                upstreams: c
                    .dns
                    .iter()
                    .map(|a| std::net::SocketAddr::new((*a).into(), 53))
                    .collect(),
            },
        );
        self.dns_regs.insert(e.id.clone(), (net, c.id.clone(), ip));
    }

    /// Makes TAPs for `eps` inside `target` and adds their ports.
    fn make_interfaces(
        &mut self,
        st: &State,
        c: &Container,
        target: &NetTarget,
        eps: &[&Endpoint],
        has_default: bool,
    ) -> Result<(), ApiError> {
        if eps.is_empty() {
            return Ok(());
        }
        let taps = tap_configs(st, eps, has_default);
        let fds = sandbox::create_taps(target, &taps, self.workers()).map_err(|e| {
            ApiError::internal(format!(
                "cannot create the interfaces of container {}: {e:#}",
                c.name
            ))
        })?;
        if let Err(e) = self.plug(st, c, eps, fds) {
            let names: Vec<String> = eps.iter().map(|e| e.ifname.clone()).collect();
            let _ = sandbox::delete_taps(target, &names);
            return Err(e);
        }
        Ok(())
    }

    fn undo_interfaces(&mut self, target: &NetTarget, eps: &[&Endpoint]) {
        for e in eps {
            self.unplug(&e.id);
        }
        let names: Vec<String> = eps.iter().map(|e| e.ifname.clone()).collect();
        let _ = sandbox::delete_taps(target, &names);
    }

    // ---- create / start ----------------------------------------------------

    pub fn create_container(
        &mut self,
        req: ContainerCreate,
    ) -> Result<ContainerCreateResponse, ApiError> {
        let mut next = self.store.prepare();
        let st = &mut next;
        let id = new_id();
        let name = match req.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n).to_string();
                check_name(st, &n)?;
                n
            }
            None => random_name(st),
        };
        let ports = req
            .ports
            .iter()
            .map(|p| PortBinding::parse(p).map_err(ApiError::bad))
            .collect::<Result<Vec<_>, _>>()?;
        check_port_count(&ports)?;
        if let Some(h) = req.hostname.as_deref().filter(|h| !h.is_empty()) {
            if let Some(m) = hostname_error(h) {
                return Err(ApiError::bad(m));
            }
        }
        let dns = req
            .dns
            .iter()
            .map(|d| {
                d.parse::<Ipv4Addr>()
                    .map_err(|_| ApiError::bad(format!("invalid DNS server address: {d}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for e in &req.env {
            if e.is_empty() || e.starts_with('=') {
                return Err(ApiError::bad(format!(
                    "invalid environment variable: {e:?}"
                )));
            }
        }
        if req.cmd.is_empty() {
            return Err(ApiError::bad("no command specified"));
        }
        for l in &req.links {
            let (target, _) = l.split_once(':').unwrap_or((l.as_str(), ""));
            let t = find_container(st, target)
                .map_err(|_| ApiError::bad(format!("could not get container for {target}")))?;
            if t.status != Status::Running {
                return Err(ApiError::bad(format!(
                    "cannot link to a non running container: /{}",
                    t.name
                )));
            }
        }

        // The network mode; `--network none|host` alone become modes.
        let mut mode_s = req.network_mode.clone().unwrap_or_default();
        let mut attaches = req.networks.clone();
        if attaches.len() == 1 && mode_s.is_empty() {
            if let Ok(n) = find_network(st, &attaches[0].network) {
                if n.driver == "host" || n.driver == "null" {
                    mode_s = if n.driver == "host" { "host" } else { "none" }.into();
                    attaches.clear();
                }
            }
        }
        let mut join_pid = None;
        let net_mode = match mode_s.as_str() {
            "" | "default" | "bridge" => NetMode::Bridge,
            "none" => NetMode::None,
            "host" => {
                join_pid = Some(self.daemon_pid);
                NetMode::Host
            }
            m if m.starts_with("container:") => {
                let other = find_container(st, &m["container:".len()..])?;
                if other.status != Status::Running {
                    return Err(ApiError::conflict(format!(
                        "cannot join network of a non running container: {}",
                        other.name
                    )));
                }
                join_pid = Some(other.pid);
                NetMode::Container(other.id.clone())
            }
            m => {
                return Err(ApiError::bad(format!("invalid network mode: {m}")));
            }
        };
        if net_mode != NetMode::Bridge && !attaches.is_empty() {
            return Err(ApiError::bad(format!(
                "conflicting options: network mode {mode_s} cannot be combined with other networks"
            )));
        }
        if net_mode != NetMode::Bridge && !ports.is_empty() && net_mode != NetMode::None {
            return Err(ApiError::bad(format!(
                "conflicting options: port publishing and the {mode_s} network mode"
            )));
        }
        if net_mode == NetMode::Bridge && attaches.is_empty() {
            attaches.push(NetworkAttach {
                network: BRIDGE.into(),
                ..Default::default()
            });
        }
        let requests = net_requests(st, &attaches)?;
        let hostname = match req.hostname.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h.to_string(),
            None => match &net_mode {
                NetMode::Host => nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| id[..12].to_string()),
                NetMode::Container(o) => st
                    .containers
                    .get(o)
                    .map(|c| c.hostname.clone())
                    .unwrap_or_else(|| id[..12].to_string()),
                _ => id[..12].to_string(),
            },
        };
        let mut c = Container {
            id: id.clone(),
            name,
            created: now_rfc3339(),
            hostname,
            kind: Kind::Run,
            net_mode,
            networks: requests.clone(),
            endpoints: vec![],
            env: req.env.clone(),
            cmd: req.cmd.clone(),
            ports,
            published: vec![],
            dns,
            links: req.links.clone(),
            auto_remove: req.auto_remove,
            status: Status::Created,
            pid: 0,
            start_time: 0,
            exit_code: None,
            started_at: None,
            finished_at: None,
        };
        let mut eps = vec![];
        for (i, r) in requests.iter().enumerate() {
            let ep = alloc_endpoint(st, &id, r, format!("eth{i}"))?;
            c.endpoints.push(ep.id.clone());
            eps.push(ep);
        }
        st.containers.insert(id.clone(), c.clone());
        let dir = container_dir(&self.root, &id);
        write_files(st, &self.root, &c).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            ApiError::internal(format!("cannot write {}: {e}", dir.display()))
        })?;
        let interfaces = eps.iter().map(|e| interface_view(st, e)).collect();
        if let Err(e) = self.store.commit(next) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        Ok(ContainerCreateResponse {
            id,
            warnings: vec![],
            interfaces,
            hosts_path: dir.join("hosts").display().to_string(),
            resolv_conf_path: dir.join("resolv.conf").display().to_string(),
            hostname_path: dir.join("hostname").display().to_string(),
            hostname: c.hostname,
            log_path: dir.join("log").display().to_string(),
            join_pid,
            hide_paths: self.hide_paths(),
        })
    }

    pub fn start_container(&mut self, key: &str, pid: i32) -> Result<(), ApiError> {
        let c = find_container(self.store.state(), key)?.clone();
        if c.status != Status::Created {
            return Err(ApiError::conflict(format!(
                "container {} is {}, not created",
                c.name, c.status
            )));
        }
        let start_time = sandbox::process_start_time(pid)
            .filter(|_| pid > 0)
            .ok_or_else(|| ApiError::bad(format!("no process with pid {pid}")))?;
        let mut next = self.store.prepare();
        {
            let nc = next.containers.get_mut(&c.id).unwrap();
            nc.status = Status::Running;
            nc.pid = pid;
            nc.start_time = start_time;
            nc.started_at = Some(now_rfc3339());
        }
        let st = self.store.state().clone();
        let eps: Vec<&Endpoint> = c
            .endpoints
            .iter()
            .filter_map(|e| st.endpoints.get(e))
            .collect();
        // Host ports first: a taken port fails before anything is made
        // (the sockets close when dropped).
        let bound = self.bind_ports(&st, &c)?;
        let target = NetTarget::Pid(pid);
        self.make_interfaces(&st, &c, &target, &eps, false)?;
        let published = match self.publish_ports(&st, &c, bound) {
            Ok(p) => p,
            Err(e) => {
                self.undo_interfaces(&target, &eps);
                return Err(e);
            }
        };
        next.containers.get_mut(&c.id).unwrap().published = published;
        if let Err(e) = self.store.commit(next) {
            self.unpublish_ports(&c.id);
            self.undo_interfaces(&target, &eps);
            return Err(e.into());
        }
        Ok(())
    }

    /// A container's process is gone (or it was stopped/detached): remove
    /// its ports, release its addresses, mark it exited (or remove it when
    /// it was `--rm`). Nothing to do for an exited container.
    pub fn container_exited(&mut self, key: &str, code: Option<i32>) -> Result<(), ApiError> {
        let c = find_container(self.store.state(), key)?.clone();
        if c.status == Status::Exited {
            return Ok(());
        }
        self.unpublish_ports(&c.id);
        for e in &c.endpoints {
            self.unplug(e);
        }
        if matches!(c.kind, Kind::AttachPid(_) | Kind::AttachNetns(_)) {
            let names: Vec<String> = c
                .endpoints
                .iter()
                .filter_map(|e| self.store.state().endpoints.get(e))
                .map(|e| e.ifname.clone())
                .collect();
            if let Some(t) = net_target(&c) {
                if let Err(e) = sandbox::delete_taps(&t, &names) {
                    tracing::warn!("container {}: cannot delete its interfaces: {e:#}", c.name);
                }
            }
        }
        let remove = c.auto_remove;
        self.store.transact(|st| {
            for e in &c.endpoints {
                release_endpoint(st, e);
            }
            if remove {
                st.containers.remove(&c.id);
            } else if let Some(x) = st.containers.get_mut(&c.id) {
                x.endpoints.clear();
                x.published.clear();
                x.status = Status::Exited;
                x.exit_code = code;
                x.finished_at = Some(now_rfc3339());
            }
            Ok::<_, ApiError>(())
        })?;
        if remove {
            let _ = std::fs::remove_dir_all(container_dir(&self.root, &c.id));
        }
        Ok(())
    }

    /// `POST /containers/{id}/exited`: the CLI that waited for CMD reports
    /// its exit code, which wins over any guess made when it was stopped.
    pub fn report_exit(&mut self, key: &str, code: i32) -> Result<(), ApiError> {
        let c = find_container(self.store.state(), key)?.clone();
        if c.status != Status::Exited {
            return self.container_exited(&c.id, Some(code));
        }
        self.store.transact(|st| {
            if let Some(x) = st.containers.get_mut(&c.id) {
                x.exit_code = Some(code);
            }
            Ok::<_, ApiError>(())
        })
    }

    /// Removes a container that is not running.
    fn remove_record(&mut self, id: &str) -> Result<(), ApiError> {
        let c = find_container(self.store.state(), id)?.clone();
        if c.status == Status::Running {
            return Err(ApiError::conflict(format!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                c.id
            )));
        }
        self.unpublish_ports(&c.id);
        for e in &c.endpoints {
            self.unplug(e);
        }
        self.store.transact(|st| {
            for e in &c.endpoints {
                release_endpoint(st, e);
            }
            st.containers.remove(&c.id);
            Ok::<_, ApiError>(())
        })?;
        let _ = std::fs::remove_dir_all(container_dir(&self.root, &c.id));
        Ok(())
    }

    pub fn container_logs(&self, key: &str) -> Result<Vec<u8>, ApiError> {
        let c = find_container(self.store.state(), key)?;
        let path = container_dir(&self.root, &c.id).join("log");
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(ApiError::internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    // ---- attach ------------------------------------------------------------

    pub fn attach(&mut self, req: AttachRequest) -> Result<IdResponse, ApiError> {
        let (kind, target, start_time) = match (req.pid, req.netns.as_deref()) {
            (Some(pid), None) => {
                let t = sandbox::process_start_time(pid)
                    .filter(|_| pid > 0)
                    .ok_or_else(|| ApiError::bad(format!("no process with pid {pid}")))?;
                (Kind::AttachPid(pid), NetTarget::Pid(pid), t)
            }
            (None, Some(p)) => {
                if !Path::new(p).exists() {
                    return Err(ApiError::bad(format!(
                        "network namespace {p} does not exist"
                    )));
                }
                (
                    Kind::AttachNetns(p.to_string()),
                    NetTarget::Path(PathBuf::from(p)),
                    0,
                )
            }
            _ => return Err(ApiError::bad("give exactly one of --pid and --netns")),
        };
        // Interface names and default route already in the namespace (known
        // for a pid through /proc).
        let (existing, has_default): (BTreeSet<String>, bool) = match &kind {
            Kind::AttachPid(pid) => {
                let dev =
                    std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
                let names = dev
                    .lines()
                    .skip(2)
                    .filter_map(|l| l.split(':').next())
                    .map(|s| s.trim().to_string())
                    .collect();
                let route =
                    std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap_or_default();
                let def = route
                    .lines()
                    .skip(1)
                    .any(|l| l.split_whitespace().nth(1) == Some("00000000"));
                (names, def)
            }
            _ => (BTreeSet::new(), false),
        };
        let mut next = self.store.prepare();
        let st = &mut next;
        let id = new_id();
        let name = match req.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => {
                check_name(st, n)?;
                n.to_string()
            }
            None => random_name(st),
        };
        let mut attaches = req.networks.clone();
        if attaches.is_empty() {
            attaches.push(NetworkAttach {
                network: BRIDGE.into(),
                ..Default::default()
            });
        }
        let requests = net_requests(st, &attaches)?;
        let mut c = Container {
            id: id.clone(),
            name,
            created: now_rfc3339(),
            hostname: String::new(),
            kind,
            net_mode: NetMode::Bridge,
            networks: requests.clone(),
            endpoints: vec![],
            env: vec![],
            cmd: vec![],
            ports: vec![],
            published: vec![],
            dns: vec![],
            links: vec![],
            auto_remove: false,
            status: Status::Running,
            pid: req.pid.unwrap_or(0),
            start_time,
            exit_code: None,
            started_at: Some(now_rfc3339()),
            finished_at: None,
        };
        let mut eps = vec![];
        let mut idx = 0;
        for r in &requests {
            while existing.contains(&format!("eth{idx}")) {
                idx += 1;
            }
            let ep = alloc_endpoint(st, &id, r, format!("eth{idx}"))?;
            idx += 1;
            c.endpoints.push(ep.id.clone());
            eps.push(ep);
        }
        st.containers.insert(id.clone(), c.clone());
        let snapshot = next.clone();
        let refs: Vec<&Endpoint> = eps.iter().collect();
        self.make_interfaces(&snapshot, &c, &target, &refs, has_default)?;
        if let Err(e) = self.store.commit(next) {
            self.undo_interfaces(&target, &refs);
            return Err(e.into());
        }
        Ok(IdResponse { id })
    }

    // ---- connect / disconnect ----------------------------------------------

    pub fn connect(&mut self, net: &str, req: NetworkConnect) -> Result<(), ApiError> {
        let st0 = self.store.state().clone();
        let n = find_network(&st0, net)?.clone();
        let c = find_container(&st0, &req.container)?.clone();
        if c.net_mode != NetMode::Bridge || !n.is_bridge() {
            return Err(ApiError::forbidden(format!(
                "container {} cannot be connected to network {}: only containers with their own network namespace can join bridge networks",
                c.name, n.name
            )));
        }
        if c.networks.iter().any(|r| r.network_id == n.id) {
            return Err(ApiError::forbidden(format!(
                "endpoint with name {} already exists in network {}",
                c.name, n.name
            )));
        }
        let ec = req.endpoint_config.clone().unwrap_or_default();
        let attach = NetworkAttach {
            network: n.id.clone(),
            ipv4_address: ec.ipam_config.and_then(|i| i.ipv4_address),
            mac_address: ec.mac_address,
            aliases: ec.aliases.unwrap_or_default(),
            links: ec.links.unwrap_or_default(),
        };
        let r = net_request(&st0, &attach)?;
        let mut next = self.store.prepare();
        next.containers
            .get_mut(&c.id)
            .unwrap()
            .networks
            .push(r.clone());
        if c.status == Status::Exited {
            self.store.commit(next)?;
            return Ok(());
        }
        let used: BTreeSet<String> = c
            .endpoints
            .iter()
            .filter_map(|e| st0.endpoints.get(e))
            .map(|e| e.ifname.clone())
            .collect();
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !used.contains(n))
            .unwrap();
        let ep = alloc_endpoint(&mut next, &c.id, &r, ifname)?;
        let nc = next.containers.get_mut(&c.id).unwrap();
        nc.endpoints.push(ep.id.clone());
        let nc = nc.clone();
        let has_default = c
            .endpoints
            .iter()
            .filter_map(|e| st0.endpoints.get(e))
            .any(|e| st0.networks.get(&e.network_id).is_some_and(|n| !n.internal));
        let mut made = None;
        if c.status == Status::Running {
            if let Some(t) = net_target(&c) {
                let snapshot = next.clone();
                self.make_interfaces(&snapshot, &nc, &t, &[&ep], has_default)?;
                made = Some(t);
            }
        }
        if let Err(e) = self.store.commit(next) {
            if let Some(t) = made {
                self.undo_interfaces(&t, &[&ep]);
            }
            return Err(e.into());
        }
        if c.kind == Kind::Run {
            let st = self.store.state().clone();
            let _ = write_files(&st, &self.root, &nc);
        }
        Ok(())
    }

    pub fn disconnect(&mut self, net: &str, req: NetworkDisconnect) -> Result<(), ApiError> {
        let st0 = self.store.state().clone();
        let n = find_network(&st0, net)?.clone();
        let c = match find_container(&st0, &req.container) {
            Ok(c) => c.clone(),
            Err(e) if req.force => {
                // Force: drop endpoints of a container that no longer exists.
                let eps: Vec<Endpoint> = st0
                    .network_endpoints(&n.id)
                    .filter(|ep| {
                        !req.container.is_empty() && ep.container_id.starts_with(&req.container)
                    })
                    .cloned()
                    .collect();
                if eps.is_empty() {
                    return Err(e);
                }
                for ep in &eps {
                    self.unplug(&ep.id);
                }
                self.store.transact(|st| {
                    for ep in &eps {
                        release_endpoint(st, &ep.id);
                    }
                    Ok::<_, ApiError>(())
                })?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let ep = c
            .endpoints
            .iter()
            .filter_map(|e| st0.endpoints.get(e))
            .find(|e| e.network_id == n.id)
            .cloned();
        if ep.is_none() && !c.networks.iter().any(|r| r.network_id == n.id) {
            return Err(ApiError::bad(format!(
                "container {} is not connected to network {}",
                c.name, n.name
            )));
        }
        if let Some(ep) = &ep {
            if c.status == Status::Running {
                if let Some(t) = net_target(&c) {
                    if let Err(e) = sandbox::delete_taps(&t, std::slice::from_ref(&ep.ifname)) {
                        if !req.force {
                            return Err(ApiError::internal(format!(
                                "cannot delete interface {} of container {}: {e:#}",
                                ep.ifname, c.name
                            )));
                        }
                    }
                }
            }
            self.unplug(&ep.id);
        }
        let nc = self.store.transact(|st| {
            if let Some(ep) = &ep {
                release_endpoint(st, &ep.id);
            }
            let x = st.containers.get_mut(&c.id).unwrap();
            x.networks.retain(|r| r.network_id != n.id);
            if let Some(ep) = &ep {
                x.endpoints.retain(|e| *e != ep.id);
            }
            Ok::<_, ApiError>(x.clone())
        })?;
        if c.kind == Kind::Run && c.status != Status::Exited {
            let st = self.store.state().clone();
            let _ = write_files(&st, &self.root, &nc);
        }
        Ok(())
    }

    // ---- views -------------------------------------------------------------

    fn network_mode_name(&self, c: &Container) -> String {
        let st = self.store.state();
        match &c.net_mode {
            NetMode::None => "none".into(),
            NetMode::Host => "host".into(),
            NetMode::Container(id) => format!("container:{id}"),
            NetMode::Bridge => c
                .networks
                .first()
                .and_then(|r| st.networks.get(&r.network_id))
                .map(|n| n.name.clone())
                .unwrap_or_else(|| "bridge".into()),
        }
    }

    fn networks_view(&self, c: &Container) -> Value {
        let st = self.store.state();
        let mut m = serde_json::Map::new();
        let net_name = |id: &str| {
            st.networks
                .get(id)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        for r in &c.networks {
            let ep = c
                .endpoints
                .iter()
                .filter_map(|e| st.endpoints.get(e))
                .find(|e| e.network_id == r.network_id);
            let ipam_cfg = r
                .ipv4
                .map(|ip| json!({"IPv4Address": ip.to_string()}))
                .unwrap_or(Value::Null);
            let mut dns_names = vec![c.name.clone(), c.short_id().to_string()];
            dns_names.extend(r.aliases.iter().cloned());
            m.insert(
                net_name(&r.network_id),
                json!({
                    "IPAMConfig": ipam_cfg,
                    "Links": if r.links.is_empty() { Value::Null } else { json!(r.links) },
                    "Aliases": if r.aliases.is_empty() { Value::Null } else { json!(r.aliases) },
                    "MacAddress": ep.map(|e| e.mac.to_string()).unwrap_or_default(),
                    "NetworkID": r.network_id,
                    "EndpointID": ep.map(|e| e.id.clone()).unwrap_or_default(),
                    "Gateway": ep.and_then(|e| e.gateway).map(|g| g.to_string()).unwrap_or_default(),
                    "IPAddress": ep.and_then(|e| e.ipv4).map(|a| a.addr().to_string()).unwrap_or_default(),
                    "IPPrefixLen": ep.and_then(|e| e.ipv4).map(|a| a.prefix_len()).unwrap_or(0),
                    "IPv6Gateway": "",
                    "GlobalIPv6Address": "",
                    "GlobalIPv6PrefixLen": 0,
                    "DNSNames": dns_names,
                    "InterfaceName": ep.map(|e| e.ifname.clone()).unwrap_or_default(),
                }),
            );
        }
        Value::Object(m)
    }

    /// `HostConfig.PortBindings`: the `-p` bindings as requested (Docker:
    /// `HostIp` empty when not given, `HostPort` empty for any port, a
    /// range for "any port of the range").
    fn port_bindings_view(c: &Container) -> Value {
        let mut m = serde_json::Map::new();
        for p in &c.ports {
            for (cp, hp) in p.expand() {
                let host = match hp {
                    HostPort::Any => String::new(),
                    HostPort::Exact(h) => h.to_string(),
                    HostPort::OneOf(a, z) => format!("{a}-{z}"),
                };
                let key = format!("{cp}/{}", p.proto);
                let entry = m.entry(key).or_insert_with(|| json!([]));
                if let Some(a) = entry.as_array_mut() {
                    a.push(json!({
                        "HostIp": p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                        "HostPort": host,
                    }));
                }
            }
        }
        Value::Object(m)
    }

    /// `NetworkSettings.Ports` of a running container: the bound host
    /// sockets; a requested port with none (e.g. an `--internal`-only
    /// container) is `null`, as Docker shows exposed, unpublished ports.
    fn ports_view(c: &Container) -> Value {
        let mut m = serde_json::Map::new();
        for p in &c.ports {
            for cp in p.container_ports.0..=p.container_ports.1 {
                m.entry(format!("{cp}/{}", p.proto)).or_insert(Value::Null);
            }
        }
        for p in &c.published {
            let entry = m
                .entry(format!("{}/{}", p.container_port, p.proto))
                .or_insert(Value::Null);
            if entry.is_null() {
                *entry = json!([]);
            }
            if let Some(a) = entry.as_array_mut() {
                a.push(json!({
                    "HostIp": p.host_ip.to_string(),
                    "HostPort": p.host_port.to_string(),
                }));
            }
        }
        Value::Object(m)
    }

    /// `Ports` of `GET /containers/json`: published ones with their host
    /// address, requested but unpublished ones without; none when the
    /// container is not running.
    fn ports_list_view(c: &Container) -> Vec<Value> {
        if c.status != Status::Running {
            return vec![];
        }
        let mut out: Vec<Value> = c
            .published
            .iter()
            .map(|p| {
                json!({
                    "IP": p.host_ip.to_string(),
                    "PrivatePort": p.container_port,
                    "PublicPort": p.host_port,
                    "Type": p.proto.to_string(),
                })
            })
            .collect();
        for p in &c.ports {
            for cp in p.container_ports.0..=p.container_ports.1 {
                if !c
                    .published
                    .iter()
                    .any(|x| x.container_port == cp && x.proto == p.proto)
                {
                    out.push(json!({"PrivatePort": cp, "Type": p.proto.to_string()}));
                }
            }
        }
        out
    }

    pub fn inspect_container(&self, key: &str) -> Result<Value, ApiError> {
        let st = self.store.state();
        let c = find_container(st, key)?;
        let dir = container_dir(&self.root, &c.id);
        let running = c.status == Status::Running;
        let kind = match &c.kind {
            Kind::Run => json!({"Kind": "run"}),
            Kind::AttachPid(p) => json!({"Kind": "attach", "Pid": p}),
            Kind::AttachNetns(p) => json!({"Kind": "attach", "Netns": p}),
        };
        let sandbox_key = match &c.kind {
            Kind::AttachNetns(p) => p.clone(),
            _ if running && c.pid > 0 => format!("/proc/{}/ns/net", c.pid),
            _ => String::new(),
        };
        Ok(json!({
            "Id": c.id,
            "Created": c.created,
            "Path": c.cmd.first().cloned().unwrap_or_default(),
            "Args": c.cmd.iter().skip(1).collect::<Vec<_>>(),
            "State": {
                "Status": c.status.to_string(),
                "Running": running,
                "Paused": false,
                "Restarting": false,
                "OOMKilled": false,
                "Dead": false,
                "Pid": if running { c.pid } else { 0 },
                "ExitCode": c.exit_code.unwrap_or(0),
                "Error": "",
                "StartedAt": c.started_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "FinishedAt": c.finished_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            },
            "Name": format!("/{}", c.name),
            "ResolvConfPath": dir.join("resolv.conf"),
            "HostnamePath": dir.join("hostname"),
            "HostsPath": dir.join("hosts"),
            "LogPath": dir.join("log"),
            "Config": {
                "Hostname": c.hostname,
                "Env": c.env,
                "Cmd": c.cmd,
            },
            "HostConfig": {
                "NetworkMode": self.network_mode_name(c),
                "PortBindings": Self::port_bindings_view(c),
                "Dns": c.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                "Links": if c.links.is_empty() { Value::Null } else { json!(c.links) },
                "AutoRemove": c.auto_remove,
            },
            "NetworkSettings": {
                "SandboxKey": sandbox_key,
                "Ports": if running { Self::ports_view(c) } else { json!({}) },
                "Networks": self.networks_view(c),
            },
            "Tapnet": kind,
        }))
    }

    pub fn list_containers(&self, all: bool) -> Vec<Value> {
        let st = self.store.state();
        let mut cs: Vec<&Container> = st
            .containers
            .values()
            .filter(|c| all || c.status == Status::Running)
            .collect();
        cs.sort_by(|a, b| b.created.cmp(&a.created));
        cs.iter()
            .map(|c| {
                let status = match c.status {
                    Status::Created => "Created".to_string(),
                    Status::Running => format!(
                        "Up {}",
                        human_since(c.started_at.as_deref().unwrap_or(&c.created))
                    ),
                    Status::Exited => format!(
                        "Exited ({}) {} ago",
                        c.exit_code.unwrap_or(0),
                        human_since(c.finished_at.as_deref().unwrap_or(&c.created))
                    ),
                };
                let created = chrono::DateTime::parse_from_rfc3339(&c.created)
                    .map(|t| t.timestamp())
                    .unwrap_or(0);
                let ports = Self::ports_list_view(c);
                json!({
                    "Id": c.id,
                    "Names": [format!("/{}", c.name)],
                    "Image": "",
                    "Command": c.cmd.join(" "),
                    "Created": created,
                    "Ports": ports,
                    "Labels": {},
                    "State": c.status.to_string(),
                    "Status": status,
                    "HostConfig": {"NetworkMode": self.network_mode_name(c)},
                    "NetworkSettings": {"Networks": self.networks_view(c)},
                })
            })
            .collect()
    }

    // ---- watcher and recovery ----------------------------------------------

    /// A container still `created` when the daemon starts was half-made:
    /// its `run` got an error when the previous daemon died between create
    /// and start (tapnet has no separate `create` verb). Remove it and
    /// release its addresses, so that a failed change leaves nothing behind
    /// across a crash too.
    fn roll_back_created(&mut self) {
        let half: Vec<Container> = self
            .store
            .state()
            .containers
            .values()
            .filter(|c| c.status == Status::Created)
            .cloned()
            .collect();
        if half.is_empty() {
            return;
        }
        let r = self.store.transact(|st| {
            for c in &half {
                for e in &c.endpoints {
                    release_endpoint(st, e);
                }
                st.containers.remove(&c.id);
            }
            Ok::<_, ApiError>(())
        });
        match r {
            Ok(()) => {
                for c in &half {
                    tracing::warn!(
                        "container {} ({}) was being created when the daemon stopped: removed it and released its addresses",
                        c.name,
                        c.short_id()
                    );
                    let _ = std::fs::remove_dir_all(container_dir(&self.root, &c.id));
                }
            }
            Err(e) => tracing::error!("cannot roll back half-made containers: {e}"),
        }
    }

    /// Containers whose process is gone.
    fn dead_containers(&self) -> Vec<String> {
        self.store
            .state()
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .filter(|c| match &c.kind {
                Kind::Run | Kind::AttachPid(_) => !is_alive(c.pid, c.start_time),
                Kind::AttachNetns(p) => !Path::new(p).exists(),
            })
            .map(|c| c.id.clone())
            .collect()
    }

    pub fn reap(&mut self) {
        for id in self.dead_containers() {
            if let Err(e) = self.container_exited(&id, None) {
                tracing::warn!("container {id}: {e}");
            }
        }
    }

    /// After a restart: roll back containers that were half-made when the
    /// previous daemon died, reopen the TAPs of live containers, mark dead
    /// ones exited.
    pub(super) fn recover_containers(&mut self) {
        self.roll_back_created();
        self.reap();
        let st = self.store.state().clone();
        for c in st
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
        {
            let eps: Vec<&Endpoint> = c
                .endpoints
                .iter()
                .filter_map(|e| st.endpoints.get(e))
                .collect();
            if eps.is_empty() {
                continue;
            }
            let Some(target) = net_target(c) else {
                continue;
            };
            let names: Vec<String> = eps.iter().map(|e| e.ifname.clone()).collect();
            let r = sandbox::open_taps(&target, &names, self.workers())
                .map_err(|e| ApiError::internal(format!("{e:#}")))
                .and_then(|fds| self.plug(&st, c, &eps, fds));
            if let Err(e) = r {
                tracing::warn!(
                    "container {}: cannot reopen its interfaces ({e}); marking it exited",
                    c.name
                );
                let _ = self.container_exited(&c.id, None);
                continue;
            }
            // Its published ports again, on the same host ports.
            let bound = self.rebind_ports(c);
            let published = self.publish_ports(&st, c, bound).unwrap_or_else(|e| {
                tracing::warn!("container {}: {e}", c.name);
                vec![]
            });
            if published != c.published {
                let id = c.id.clone();
                let r = self.store.transact(|st| {
                    if let Some(x) = st.containers.get_mut(&id) {
                        x.published = published;
                    }
                    Ok::<_, ApiError>(())
                });
                if let Err(e) = r {
                    tracing::warn!("container {}: {e}", c.name);
                }
            }
        }
    }
}

/// The exit watcher: polls live containers' processes.
pub async fn watch(core: Shared, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        // On a blocking thread: the lock may be held by a slow operation.
        let _ = call(&core, |c| {
            if !c.dead_containers().is_empty() {
                c.reap();
            }
            Ok(())
        })
        .await;
    }
}

/// Sends `sig` to a container's process after checking that the pid is
/// still the same process.
fn signal(pid: i32, start_time: u64, sig: nix::sys::signal::Signal) {
    if is_alive(pid, start_time) {
        let p = nix::unistd::Pid::from_raw(pid);
        // A detached sandbox leads its own session and process group: signal
        // the whole group so that CMD's children go too (there is no pid
        // namespace). A foreground one shares the CLI's group: only CMD.
        if nix::unistd::getpgid(Some(p)) == Ok(p) {
            let _ = nix::sys::signal::killpg(p, sig);
        } else {
            let _ = nix::sys::signal::kill(p, sig);
        }
    }
}

async fn wait_dead(pid: i32, start_time: u64, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !is_alive(pid, start_time) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !is_alive(pid, start_time)
}

/// `POST /containers/{id}/stop`: SIGTERM, `t` seconds, SIGKILL. Attached
/// namespaces are detached (their process is not ours to kill).
pub async fn stop(core: &Shared, key: String, t: u64) -> Result<(), ApiError> {
    let c = call(core, move |c| {
        Ok(find_container(c.store.state(), &key)?.clone())
    })
    .await?;
    if c.status != Status::Running {
        return Ok(());
    }
    let mut code = None;
    if c.kind == Kind::Run {
        use nix::sys::signal::Signal;
        signal(c.pid, c.start_time, Signal::SIGTERM);
        // Not our child: the real status is unknown unless the foreground
        // CLI reports it; assume death by the signal sent.
        code = Some(143);
        if !wait_dead(c.pid, c.start_time, Duration::from_secs(t)).await {
            signal(c.pid, c.start_time, Signal::SIGKILL);
            wait_dead(c.pid, c.start_time, Duration::from_secs(5)).await;
            code = Some(137);
        }
    }
    let id = c.id.clone();
    call(core, move |core| core.container_exited(&id, code)).await
}

/// `DELETE /containers/{id}[?force=1]`.
pub async fn remove(core: &Shared, key: String, force: bool) -> Result<(), ApiError> {
    let c = call(core, move |c| {
        Ok(find_container(c.store.state(), &key)?.clone())
    })
    .await?;
    if c.status == Status::Running {
        if !force {
            return Err(ApiError::conflict(format!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                c.id
            )));
        }
        if c.kind == Kind::Run {
            signal(c.pid, c.start_time, nix::sys::signal::Signal::SIGKILL);
            wait_dead(c.pid, c.start_time, Duration::from_secs(5)).await;
        }
        let id = c.id.clone();
        call(core, move |core| core.container_exited(&id, Some(137))).await?;
    }
    let id = c.id.clone();
    call(core, move |core| match core.remove_record(&id) {
        Err(e) if e.status == 404 => Ok(()), // --rm already removed it
        r => r,
    })
    .await
}

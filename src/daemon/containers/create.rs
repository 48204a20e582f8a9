//! Making containers: `run`'s create step (everything but the sandbox
//! process: name, network mode, endpoints allocated, files written) and
//! `attach` (endpoints plugged into an existing namespace at once).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::super::core::{find_network, Core};
use super::super::endpoints::{self, DnsNames};
use super::super::error::ContainerError;
use super::super::overlay;
use super::super::types::*;
use super::{container_dir, files, find_container, owner};
use crate::drivers::{self, Attachment};
use crate::model::*;
use crate::sandbox::{self, NetTarget};
use crate::state::State;

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
            ADJECTIVES.choose(&mut rng).expect("non-empty"),
            NOUNS.choose(&mut rng).expect("non-empty")
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

/// The name asked for (checked), or a new random one.
fn choose_name(st: &State, asked: Option<&str>) -> Result<String, ContainerError> {
    let Some(n) = asked.filter(|n| !n.is_empty()) else {
        return Ok(random_name(st));
    };
    let name = n.strip_prefix('/').unwrap_or(n);
    if !valid_container_name(name) {
        return Err(ContainerError::InvalidName(name.to_string()));
    }
    if let Some(c) = st.containers.values().find(|c| c.name == name) {
        return Err(ContainerError::NameInUse {
            name: name.to_string(),
            id: c.id.clone(),
        });
    }
    Ok(name.to_string())
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

/// A new container record (not yet running, no endpoints).
struct NewContainer {
    id: String,
    name: String,
    hostname: String,
    kind: Kind,
    net_mode: NetMode,
    networks: Vec<NetRequest>,
}

impl NewContainer {
    fn record(self) -> Container {
        Container {
            id: self.id,
            name: self.name,
            created: now_rfc3339(),
            hostname: self.hostname,
            kind: self.kind,
            net_mode: self.net_mode,
            networks: self.networks,
            endpoints: vec![],
            env: vec![],
            cmd: vec![],
            ports: vec![],
            published: vec![],
            dns: vec![],
            links: vec![],
            auto_remove: false,
            status: Status::Created,
            pid: 0,
            start_time: 0,
            exit_code: None,
            started_at: None,
            finished_at: None,
        }
    }
}

impl Core {
    /// Allocates one endpoint per request for container `c` in `st` (and
    /// one on `docker_gwbridge` when it needs a way out: see
    /// `overlay.rs`), naming the interfaces `eth0`, `eth1`, ... (skipping
    /// names in `taken`).
    fn allocate_all(
        &self,
        st: &mut State,
        c: &mut Container,
        taken: &BTreeSet<String>,
    ) -> Result<(), ContainerError> {
        let mut reqs = c.networks.clone();
        if overlay::needs_gwbridge(st, &reqs) {
            reqs.extend(overlay::gwbridge_request(st));
        }
        let mut idx = 0;
        for r in reqs {
            while taken.contains(&format!("eth{idx}")) {
                idx += 1;
            }
            let ep = match self.allocate_endpoint(st, owner(&c.id), &r, format!("eth{idx}")) {
                Ok(ep) => ep,
                Err(e) => {
                    self.release_global(st, &c.endpoints);
                    return Err(e.into());
                }
            };
            idx += 1;
            c.endpoints.push(ep.id);
        }
        Ok(())
    }

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

    /// `POST /containers/create`: everything `run` needs before it makes
    /// the sandbox process; one commit.
    pub fn create_container(
        &mut self,
        req: ContainerCreate,
    ) -> Result<ContainerCreateResponse, ContainerError> {
        let mut next = self.store.prepare();
        let st = &mut next;
        let id = new_id();
        let name = choose_name(st, req.name.as_deref())?;
        let ports = req
            .ports
            .iter()
            .map(|p| PortBinding::parse(p).map_err(super::super::error::PortError::Parse))
            .collect::<Result<Vec<_>, _>>()?;
        super::super::ports::check_port_count(&ports)?;
        if let Some(h) = req.hostname.as_deref().filter(|h| !h.is_empty()) {
            if let Some(m) = hostname_error(h) {
                return Err(ContainerError::InvalidHostname(m));
            }
        }
        let dns = req
            .dns
            .iter()
            .map(|d| {
                d.parse::<Ipv4Addr>()
                    .map_err(|_| ContainerError::InvalidDns(d.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(e) = req.env.iter().find(|e| e.is_empty() || e.starts_with('=')) {
            return Err(ContainerError::InvalidEnv(e.clone()));
        }
        if req.cmd.is_empty() {
            return Err(ContainerError::NoCommand);
        }
        for l in &req.links {
            let (target, _) = l.split_once(':').unwrap_or((l.as_str(), ""));
            let t = find_container(st, target)
                .map_err(|_| ContainerError::LinkTarget(target.to_string()))?;
            if t.status != Status::Running {
                return Err(ContainerError::LinkNotRunning(t.name.clone()));
            }
        }

        // The network mode; `--network none|host` alone become modes.
        let mut mode_s = req.network_mode.clone().unwrap_or_default();
        let mut attaches = req.networks.clone();
        if attaches.len() == 1 && mode_s.is_empty() {
            if let Ok(n) = find_network(st, &attaches[0].network) {
                match drivers::of(n).attachment() {
                    Attachment::HostNamespace => mode_s = "host".into(),
                    Attachment::Isolated => mode_s = "none".into(),
                    Attachment::Switched | Attachment::External => {}
                }
                if !mode_s.is_empty() {
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
                    return Err(ContainerError::JoinNotRunning(other.name.clone()));
                }
                join_pid = Some(other.pid);
                NetMode::Container(other.id.clone())
            }
            m => return Err(ContainerError::InvalidMode(m.to_string())),
        };
        if net_mode != NetMode::Bridge && !attaches.is_empty() {
            return Err(ContainerError::ModeWithNetworks(mode_s));
        }
        if net_mode != NetMode::Bridge && !ports.is_empty() && net_mode != NetMode::None {
            return Err(ContainerError::ModeWithPorts(mode_s));
        }
        if net_mode == NetMode::Bridge && attaches.is_empty() {
            attaches.push(NetworkAttach {
                network: BRIDGE.into(),
                ..Default::default()
            });
        }
        let requests = endpoints::requests(st, &attaches)?;
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
        let mut c = NewContainer {
            id: id.clone(),
            name,
            hostname,
            kind: Kind::Run,
            net_mode,
            networks: requests,
        }
        .record();
        c.env = req.env.clone();
        c.cmd = req.cmd.clone();
        c.ports = ports;
        c.dns = dns;
        c.links = req.links.clone();
        c.auto_remove = req.auto_remove;
        if overlay::needs_gwbridge(st, &c.networks) && overlay::gwbridge_of(st).is_none() {
            // Made (and committed) first, then the container from scratch.
            drop(next);
            self.ensure_gwbridge()
                .map_err(|e| ContainerError::Gwbridge(e.to_string()))?;
            return self.create_container(req);
        }
        self.allocate_all(st, &mut c, &BTreeSet::new())?;
        st.containers.insert(id.clone(), c.clone());
        let dir = container_dir(&self.root, &id);
        if let Err(err) = files::write(st, &self.root, &c) {
            let _ = std::fs::remove_dir_all(&dir);
            self.release_global(st, &c.endpoints);
            return Err(ContainerError::Files {
                path: dir.display().to_string(),
                err,
            });
        }
        let interfaces = c
            .endpoints
            .iter()
            .filter_map(|e| st.endpoints.get(e))
            .map(|e| interface_view(st, e))
            .collect();
        let snapshot = next.clone();
        if let Err(e) = self.store.commit(next) {
            let _ = std::fs::remove_dir_all(&dir);
            self.release_global(&snapshot, &c.endpoints);
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

    /// `POST /tapnet/attach`: interfaces in an existing namespace, made and
    /// plugged at once; one commit.
    pub fn attach(&mut self, req: AttachRequest) -> Result<IdResponse, ContainerError> {
        let (kind, target, start_time) = match (req.pid, req.netns.as_deref()) {
            (Some(pid), None) => {
                let t = sandbox::process_start_time(pid)
                    .filter(|_| pid > 0)
                    .ok_or(ContainerError::NoProcess(pid))?;
                (Kind::AttachPid(pid), NetTarget::Pid(pid), t)
            }
            (None, Some(p)) => {
                if !Path::new(p).exists() {
                    return Err(ContainerError::NoNamespace(p.to_string()));
                }
                (
                    Kind::AttachNetns(p.to_string()),
                    NetTarget::Path(PathBuf::from(p)),
                    0,
                )
            }
            _ => return Err(ContainerError::AttachTarget),
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
        let id = new_id();
        let name = choose_name(&next, req.name.as_deref())?;
        let mut attaches = req.networks.clone();
        if attaches.is_empty() {
            attaches.push(NetworkAttach {
                network: BRIDGE.into(),
                ..Default::default()
            });
        }
        let requests = endpoints::requests(&next, &attaches)?;
        let mut c = NewContainer {
            id: id.clone(),
            name,
            hostname: String::new(),
            kind,
            net_mode: NetMode::Bridge,
            networks: requests,
        }
        .record();
        c.status = Status::Running;
        c.pid = req.pid.unwrap_or(0);
        c.start_time = start_time;
        c.started_at = Some(now_rfc3339());
        if overlay::needs_gwbridge(&next, &c.networks) && overlay::gwbridge_of(&next).is_none() {
            drop(next);
            self.ensure_gwbridge()
                .map_err(|e| ContainerError::Gwbridge(e.to_string()))?;
            return self.attach(req);
        }
        self.allocate_all(&mut next, &mut c, &existing)?;
        next.containers.insert(id.clone(), c.clone());
        let names = DnsNames::of(&c);
        self.plug(&mut next, &c.endpoints, &target, Some(&names), has_default)?;
        let snapshot = next.clone();
        if let Err(e) = self.store.commit(next) {
            self.unplug_and_delete(&snapshot, &target, &c.endpoints);
            self.release_global(&snapshot, &c.endpoints);
            return Err(e.into());
        }
        Ok(IdResponse { id })
    }
}

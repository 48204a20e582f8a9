//! `inspect` and `ps` of containers, in Docker's shapes (typed views in
//! `types.rs`).

use std::collections::BTreeMap;

use super::super::core::Core;
use super::super::error::ContainerError;
use super::super::types::*;
use super::{container_dir, endpoints_of, find_container};
use crate::model::*;
use crate::state::State;

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

/// `HostConfig.NetworkMode`: `none`, `host`, `container:ID`, or the first
/// network's name.
fn network_mode_name(st: &State, c: &Container) -> String {
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

/// `NetworkSettings.Networks`: every network asked for, with its endpoint
/// when the container has one.
fn networks_view(st: &State, c: &Container) -> BTreeMap<String, EndpointSettings> {
    let eps = endpoints_of(st, c);
    let mut m = BTreeMap::new();
    for r in &c.networks {
        let name = st
            .networks
            .get(&r.network_id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| r.network_id.clone());
        let ep = eps.iter().find(|e| e.network_id == r.network_id);
        let mut dns_names = vec![c.name.clone(), c.short_id().to_string()];
        dns_names.extend(r.aliases.iter().cloned());
        let opt_list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        m.insert(
            name,
            EndpointSettings {
                ipam_config: (r.ipv4.is_some() || r.ipv6.is_some()).then(|| IpamAddrView {
                    ipv4_address: r.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                    ipv6_address: r.ipv6.map(|a| a.to_string()).unwrap_or_default(),
                }),
                links: opt_list(&r.links),
                aliases: opt_list(&r.aliases),
                mac_address: ep.map(|e| e.mac.to_string()).unwrap_or_default(),
                network_id: r.network_id.clone(),
                endpoint_id: ep.map(|e| e.id.clone()).unwrap_or_default(),
                gateway: ep
                    .and_then(|e| e.gateway)
                    .map(|g| g.to_string())
                    .unwrap_or_default(),
                ip_address: ep
                    .and_then(|e| e.ipv4)
                    .map(|a| a.addr().to_string())
                    .unwrap_or_default(),
                ip_prefix_len: ep.and_then(|e| e.ipv4).map(|a| a.prefix_len()).unwrap_or(0),
                ipv6_gateway: ep
                    .and_then(|e| e.gateway6)
                    .map(|g| g.to_string())
                    .unwrap_or_default(),
                global_ipv6_address: ep
                    .and_then(|e| e.ipv6)
                    .map(|a| a.addr().to_string())
                    .unwrap_or_default(),
                global_ipv6_prefix_len: ep
                    .and_then(|e| e.ipv6)
                    .map(|a| a.prefix_len())
                    .unwrap_or(0),
                dns_names,
                interface_name: ep.map(|e| e.ifname.clone()).unwrap_or_default(),
            },
        );
    }
    m
}

/// `HostConfig.PortBindings`: the `-p` bindings as requested (Docker:
/// `HostIp` empty when not given, `HostPort` empty for any port, a range
/// for "any port of the range").
fn port_bindings_view(c: &Container) -> BTreeMap<String, Vec<PortBindingView>> {
    let mut m: BTreeMap<String, Vec<PortBindingView>> = BTreeMap::new();
    for p in &c.ports {
        for (cp, hp) in p.expand() {
            let host = match hp {
                HostPort::Any => String::new(),
                HostPort::Exact(h) => h.to_string(),
                HostPort::OneOf(a, z) => format!("{a}-{z}"),
            };
            m.entry(format!("{cp}/{}", p.proto))
                .or_default()
                .push(PortBindingView {
                    host_ip: p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                    host_port: host,
                });
        }
    }
    m
}

/// `NetworkSettings.Ports` of a running container: the bound host
/// sockets; a requested port with none (e.g. an `--internal`-only
/// container) is `null`, as Docker shows exposed, unpublished ports.
fn ports_view(c: &Container) -> BTreeMap<String, Option<Vec<PortBindingView>>> {
    let mut m: BTreeMap<String, Option<Vec<PortBindingView>>> = BTreeMap::new();
    for p in &c.ports {
        for cp in p.container_ports.0..=p.container_ports.1 {
            m.entry(format!("{cp}/{}", p.proto)).or_insert(None);
        }
    }
    for p in &c.published {
        m.entry(format!("{}/{}", p.container_port, p.proto))
            .or_insert(None)
            .get_or_insert_with(Vec::new)
            .push(PortBindingView {
                host_ip: p.host_ip.to_string(),
                host_port: p.host_port.to_string(),
            });
    }
    m
}

/// `Ports` of `GET /containers/json`: published ones with their host
/// address, requested but unpublished ones without; none when the
/// container is not running.
fn ports_list_view(c: &Container) -> Vec<PortSummary> {
    if c.status != Status::Running {
        return vec![];
    }
    let mut out: Vec<PortSummary> = c
        .published
        .iter()
        .map(|p| PortSummary {
            ip: Some(p.host_ip.to_string()),
            private_port: p.container_port,
            public_port: Some(p.host_port),
            proto: p.proto.to_string(),
        })
        .collect();
    for p in &c.ports {
        for cp in p.container_ports.0..=p.container_ports.1 {
            if !c
                .published
                .iter()
                .any(|x| x.container_port == cp && x.proto == p.proto)
            {
                out.push(PortSummary {
                    ip: None,
                    private_port: cp,
                    public_port: None,
                    proto: p.proto.to_string(),
                });
            }
        }
    }
    out
}

impl Core {
    pub fn inspect_container(&self, key: &str) -> Result<ContainerView, ContainerError> {
        let st = self.store.state();
        let c = find_container(st, key)?;
        let dir = container_dir(&self.root, &c.id);
        let running = c.status == Status::Running;
        let tapnet = match &c.kind {
            Kind::Run => TapnetKindView {
                kind: "run".into(),
                pid: None,
                netns: None,
            },
            Kind::AttachPid(p) => TapnetKindView {
                kind: "attach".into(),
                pid: Some(*p),
                netns: None,
            },
            Kind::AttachNetns(p) => TapnetKindView {
                kind: "attach".into(),
                pid: None,
                netns: Some(p.clone()),
            },
        };
        let sandbox_key = match &c.kind {
            Kind::AttachNetns(p) => p.clone(),
            _ if running && c.pid > 0 => format!("/proc/{}/ns/net", c.pid),
            _ => String::new(),
        };
        let path = |f: &str| dir.join(f).display().to_string();
        let never = || "0001-01-01T00:00:00Z".to_string();
        Ok(ContainerView {
            id: c.id.clone(),
            created: c.created.clone(),
            path: c.cmd.first().cloned().unwrap_or_default(),
            args: c.cmd.iter().skip(1).cloned().collect(),
            state: ContainerStateView {
                status: c.status.to_string(),
                running,
                paused: false,
                restarting: false,
                oom_killed: false,
                dead: false,
                pid: if running { c.pid } else { 0 },
                exit_code: c.exit_code.unwrap_or(0),
                error: String::new(),
                started_at: c.started_at.clone().unwrap_or_else(never),
                finished_at: c.finished_at.clone().unwrap_or_else(never),
            },
            name: format!("/{}", c.name),
            resolv_conf_path: path("resolv.conf"),
            hostname_path: path("hostname"),
            hosts_path: path("hosts"),
            log_path: path("log"),
            config: ContainerConfigView {
                hostname: c.hostname.clone(),
                env: c.env.clone(),
                cmd: c.cmd.clone(),
            },
            host_config: HostConfigView {
                network_mode: network_mode_name(st, c),
                port_bindings: port_bindings_view(c),
                dns: c.dns.iter().map(|d| d.to_string()).collect(),
                links: (!c.links.is_empty()).then(|| c.links.clone()),
                auto_remove: c.auto_remove,
            },
            network_settings: NetworkSettingsView {
                sandbox_key,
                ports: if running {
                    ports_view(c)
                } else {
                    BTreeMap::new()
                },
                networks: networks_view(st, c),
            },
            tapnet,
        })
    }

    pub fn list_containers(&self, all: bool) -> Vec<ContainerSummary> {
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
                ContainerSummary {
                    id: c.id.clone(),
                    names: vec![format!("/{}", c.name)],
                    image: String::new(),
                    command: c.cmd.join(" "),
                    created: chrono::DateTime::parse_from_rfc3339(&c.created)
                        .map(|t| t.timestamp())
                        .unwrap_or(0),
                    ports: ports_list_view(c),
                    labels: Map::new(),
                    state: c.status.to_string(),
                    status,
                    host_config: SummaryHostConfig {
                        network_mode: network_mode_name(st, c),
                    },
                    network_settings: SummaryNetworkSettings {
                        networks: networks_view(st, c),
                    },
                }
            })
            .collect()
    }
}

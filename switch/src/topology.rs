//! The read-mostly snapshot the workers forward with, and the control-plane
//! API that replaces it.
//!
//! Contract: workers load the snapshot once per batch ([`Switch::begin`]);
//! the control plane builds a new [`Topology`] as data and swaps it in
//! atomically (copy on write, serialised by a control-plane mutex). Port
//! ids are never reused, so a stale FDB entry can never name a new port.

use crate::capture::CaptureHook;
use crate::counters::{PortCounters, PortStats, WorkerCounters, N_DROP_REASONS};
use crate::fdb::Fdb;
use crate::wire::EthernetAddress;
use arc_swap::ArcSwap;
use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Index of a network in the snapshot (reused after removal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId(pub u16);

/// A port's id; never reused within one [`Switch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

/// Settings fixed for the life of a switch.
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// Number of workers (counter slots).
    pub workers: usize,
    /// FDB slots (power of two; keep >= 2x the MACs expected).
    pub fdb_capacity: usize,
    /// Seconds after which an unseen MAC is forgotten (Linux bridge: 300).
    pub aging_secs: u32,
    /// Default limit of MACs one port may have learned at once.
    pub max_macs_per_port: u32,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: 1,
            fdb_capacity: 1 << 16,
            aging_secs: 300,
            max_macs_per_port: 64,
        }
    }
}

/// A network as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub name: String,
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// Inter-container communication (`enable_icc`).
    pub icc: bool,
    /// L3 MTU; frames longer than `mtu + 14` that are not GSO are dropped.
    pub mtu: u32,
}

impl NetworkConfig {
    /// A network with Docker's defaults (ICC on, MTU 1500).
    pub fn new(name: &str, subnet: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> Self {
        NetworkConfig {
            name: name.into(),
            subnet,
            prefix_len,
            gateway,
            icc: true,
            mtu: 1500,
        }
    }
}

/// The gateway MAC of a network: `02:42` followed by the four octets of the
/// gateway address (locally administered, unicast; Docker derives container
/// MACs the same way).
pub fn gateway_mac(gateway: Ipv4Addr) -> EthernetAddress {
    let o = gateway.octets();
    EthernetAddress([0x02, 0x42, o[0], o[1], o[2], o[3]])
}

/// A port as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub name: String,
    pub network: NetworkId,
    /// Assigned MAC. With `ip`, the port is spoof-checked: it may send only
    /// from this MAC and this IPv4 address.
    pub mac: Option<EthernetAddress>,
    pub ip: Option<Ipv4Addr>,
    /// Overrides [`SwitchConfig::max_macs_per_port`].
    pub max_macs: Option<u32>,
}

impl PortConfig {
    /// An endpoint with an assigned MAC and address (spoof-checked).
    pub fn endpoint(name: &str, network: NetworkId, mac: EthernetAddress, ip: Ipv4Addr) -> Self {
        PortConfig {
            name: name.into(),
            network,
            mac: Some(mac),
            ip: Some(ip),
            max_macs: None,
        }
    }
    /// An unchecked port (uplink, tunnel): any source MAC and address.
    pub fn unchecked(name: &str, network: NetworkId) -> Self {
        PortConfig {
            name: name.into(),
            network,
            mac: None,
            ip: None,
            max_macs: None,
        }
    }
}

/// A network in the snapshot.
#[derive(Clone, Debug)]
pub struct Network {
    pub id: NetworkId,
    pub config: NetworkConfig,
    pub gateway_mac: EthernetAddress,
    /// Ports in flood order (ascending id).
    pub ports: Vec<PortId>,
    /// `mtu + 14`: the longest plain frame allowed.
    pub max_frame: usize,
}

/// A port in the snapshot. `counters` and `learned` are shared by all
/// snapshots so they survive updates.
#[derive(Clone)]
pub struct Port {
    pub id: PortId,
    pub config: PortConfig,
    pub counters: Arc<PortCounters>,
    /// MACs this port has in the FDB (exact after each aging pass).
    pub learned: Arc<AtomicU32>,
    pub max_macs: u32,
}

impl Port {
    pub fn network(&self) -> NetworkId {
        self.config.network
    }
    /// Both MAC and IPv4 assigned: spoof-checked.
    pub fn is_checked(&self) -> bool {
        self.config.mac.is_some() && self.config.ip.is_some()
    }
}

impl core::fmt::Debug for Port {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish()
    }
}

/// One immutable view of networks, ports and hooks.
#[derive(Clone, Default)]
pub struct Topology {
    networks: Vec<Option<Network>>,
    ports: Vec<Option<Port>>,
    /// MACs assigned to spoof-checked ports, by FDB key (network and MAC):
    /// no other port may be learned with them.
    assigned: std::collections::HashMap<u64, PortId>,
    pub(crate) capture: Option<Arc<dyn CaptureHook>>,
}

impl Topology {
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.0 as usize)?.as_ref()
    }
    #[inline]
    pub fn network(&self, id: NetworkId) -> Option<&Network> {
        self.networks.get(usize::from(id.0))?.as_ref()
    }
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.iter().flatten()
    }
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.ports.iter().flatten()
    }
    /// The spoof-checked port that owns `mac` on network `net`, if any.
    pub fn assigned_port(&self, net: NetworkId, mac: EthernetAddress) -> Option<PortId> {
        self.assigned.get(&crate::fdb::key(net.0, mac)).copied()
    }
    pub fn port_by_name(&self, name: &str) -> Option<&Port> {
        self.ports().find(|p| p.config.name == name)
    }
    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.networks().find(|n| n.config.name == name)
    }
}

/// Why a control-plane change was refused (nothing was changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Unknown network.
    NoSuchNetwork,
    /// Unknown port.
    NoSuchPort,
    /// The network still has ports.
    NetworkInUse,
    /// A network or port with this name exists.
    DuplicateName(String),
    /// Too many networks (65536) or ports (2^31).
    TooMany,
    /// Invalid value: the message says which.
    Invalid(String),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            ConfigError::NoSuchNetwork => write!(f, "no such network"),
            ConfigError::NoSuchPort => write!(f, "no such port"),
            ConfigError::NetworkInUse => write!(f, "network has ports"),
            ConfigError::DuplicateName(n) => write!(f, "name {n:?} is already in use"),
            ConfigError::TooMany => write!(f, "too many networks or ports"),
            ConfigError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The switch: snapshot, FDB and counters, shared by the workers (`Arc`).
pub struct Switch {
    pub(crate) config: SwitchConfig,
    pub(crate) topo: ArcSwap<Topology>,
    pub(crate) fdb: ArcSwap<Fdb>,
    pub(crate) worker_drops: WorkerCounters,
    ctl: Mutex<()>,
}

impl Switch {
    pub fn new(config: SwitchConfig) -> Arc<Switch> {
        Arc::new(Switch {
            topo: ArcSwap::from_pointee(Topology::default()),
            fdb: ArcSwap::from_pointee(Fdb::new(config.fdb_capacity)),
            worker_drops: WorkerCounters::new(config.workers),
            config,
            ctl: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// The current snapshot.
    pub fn topology(&self) -> Arc<Topology> {
        self.topo.load_full()
    }

    fn update<R>(
        &self,
        f: impl FnOnce(&mut Topology) -> Result<R, ConfigError>,
    ) -> Result<R, ConfigError> {
        let _g = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = Topology::clone(&self.topo.load());
        let r = f(&mut t)?;
        self.topo.store(Arc::new(t));
        Ok(r)
    }

    pub fn add_network(&self, config: NetworkConfig) -> Result<NetworkId, ConfigError> {
        if config.prefix_len > 32 {
            return Err(ConfigError::Invalid(format!(
                "prefix length {} > 32",
                config.prefix_len
            )));
        }
        if !(68..=65535).contains(&config.mtu) {
            return Err(ConfigError::Invalid(format!(
                "MTU {} outside 68..65535",
                config.mtu
            )));
        }
        self.update(|t| {
            if t.network_by_name(&config.name).is_some() {
                return Err(ConfigError::DuplicateName(config.name.clone()));
            }
            let idx = match t.networks.iter().position(Option::is_none) {
                Some(i) => i,
                None if t.networks.len() < 1 << 16 => {
                    t.networks.push(None);
                    t.networks.len() - 1
                }
                None => return Err(ConfigError::TooMany),
            };
            let id = NetworkId(idx as u16);
            t.networks[idx] = Some(Network {
                id,
                gateway_mac: gateway_mac(config.gateway),
                max_frame: config.mtu as usize + crate::wire::ethernet::HEADER_LEN,
                config,
                ports: Vec::new(),
            });
            Ok(id)
        })
    }

    /// Changes a network's settings (ICC, MTU, ...) in place.
    pub fn update_network(&self, id: NetworkId, config: NetworkConfig) -> Result<(), ConfigError> {
        self.update(|t| {
            let n = t.networks[usize::from(id.0)]
                .as_mut()
                .ok_or(ConfigError::NoSuchNetwork)?;
            n.gateway_mac = gateway_mac(config.gateway);
            n.max_frame = config.mtu as usize + crate::wire::ethernet::HEADER_LEN;
            n.config = config;
            Ok(())
        })
    }

    /// Removes a network that has no ports left.
    pub fn remove_network(&self, id: NetworkId) -> Result<(), ConfigError> {
        self.update(|t| {
            let n = t
                .networks
                .get(usize::from(id.0))
                .and_then(Option::as_ref)
                .ok_or(ConfigError::NoSuchNetwork)?;
            if !n.ports.is_empty() {
                return Err(ConfigError::NetworkInUse);
            }
            t.networks[usize::from(id.0)] = None;
            Ok(())
        })
    }

    pub fn add_port(&self, config: PortConfig) -> Result<PortId, ConfigError> {
        let max_macs = config.max_macs.unwrap_or(self.config.max_macs_per_port);
        let workers = self.config.workers;
        self.update(|t| {
            if t.port_by_name(&config.name).is_some() {
                return Err(ConfigError::DuplicateName(config.name.clone()));
            }
            if t.ports.len() >= 1 << 31 {
                return Err(ConfigError::TooMany);
            }
            let id = PortId(t.ports.len() as u32);
            let net = t.networks[..]
                .get_mut(usize::from(config.network.0))
                .and_then(Option::as_mut)
                .ok_or(ConfigError::NoSuchNetwork)?;
            // (On error nothing is stored: `update` drops the copy.)
            if let (Some(mac), Some(_)) = (config.mac, config.ip) {
                let key = crate::fdb::key(config.network.0, mac);
                if t.assigned.contains_key(&key) {
                    return Err(ConfigError::Invalid(format!(
                        "MAC {mac} is already assigned to another port of this network"
                    )));
                }
                t.assigned.insert(key, id);
            }
            net.ports.push(id);
            t.ports.push(Some(Port {
                id,
                config,
                counters: Arc::new(PortCounters::new(workers)),
                learned: Arc::new(AtomicU32::new(0)),
                max_macs,
            }));
            Ok(id)
        })
    }

    /// Removes a port. Its FDB entries stop resolving at once (lookups of
    /// a removed port fall back to flooding) and are purged by [`Switch::age`].
    pub fn remove_port(&self, id: PortId) -> Result<(), ConfigError> {
        self.update(|t| {
            let p = t
                .ports
                .get_mut(id.0 as usize)
                .and_then(Option::take)
                .ok_or(ConfigError::NoSuchPort)?;
            if let Some(n) = t.networks[usize::from(p.network().0)].as_mut() {
                n.ports.retain(|&q| q != id);
            }
            if let Some(mac) = p.config.mac {
                let key = crate::fdb::key(p.network().0, mac);
                if t.assigned.get(&key) == Some(&id) {
                    t.assigned.remove(&key);
                }
            }
            Ok(())
        })
    }

    /// Installs (or removes) the capture hook.
    pub fn set_capture(&self, hook: Option<Arc<dyn CaptureHook>>) {
        let _ = self.update(|t| {
            t.capture = hook;
            Ok(())
        });
    }

    /// Counters of a port, summed over workers.
    pub fn port_stats(&self, id: PortId) -> Option<PortStats> {
        Some(self.topo.load().port(id)?.counters.sum())
    }

    /// Drops not attributable to a port (unknown ingress port).
    pub fn switch_drops(&self) -> [u64; N_DROP_REASONS] {
        self.worker_drops.sum()
    }

    /// Port learned for `mac` on `net`, if live at `now_secs`.
    pub fn fdb_lookup(
        &self,
        net: NetworkId,
        mac: EthernetAddress,
        now_secs: u32,
    ) -> Option<PortId> {
        self.fdb
            .load()
            .lookup(
                crate::fdb::key(net.0, mac),
                now_secs,
                self.config.aging_secs,
            )
            .map(PortId)
    }

    /// Housekeeping, off the fast path (call every few seconds): rebuilds
    /// the FDB without expired entries and entries of removed ports, and
    /// recomputes each port's learned-MAC count exactly.
    pub fn age(&self, now_secs: u32) {
        let _g = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let topo = self.topo.load();
        let aging = self.config.aging_secs;
        let fdb = self.fdb.load();
        let keep = |k: u64, p: u32| {
            topo.port(PortId(p))
                .is_some_and(|port| u64::from(port.network().0) == (k >> 48) & 0x7fff)
        };
        if let Some(fresh) = fdb.rebuilt_without_expired(now_secs, aging, keep) {
            self.fdb.store(Arc::new(fresh));
        }
        let fdb = self.fdb.load();
        let mut counts = vec![0u32; topo.ports.len()];
        for (_, p, _) in fdb.entries(now_secs, aging) {
            if let Some(c) = counts.get_mut(p as usize) {
                *c += 1;
            }
        }
        for p in topo.ports() {
            p.learned.store(counts[p.id.0 as usize], Ordering::Relaxed);
        }
    }
}

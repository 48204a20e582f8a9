//! The read-mostly snapshot the workers forward with, and the control-plane
//! API that replaces it.
//!
//! Contract: workers load the snapshot once per batch ([`Switch::begin`]);
//! the control plane builds a new [`Topology`] as data and swaps it in
//! atomically (copy on write, serialised by a control-plane mutex). Port
//! ids are never reused, so a stale FDB entry can never name a new port.

use crate::capture::CaptureHook;
use crate::counters::{CounterArena, PortCounters, PortStats, WorkerCounters, N_DROP_REASONS};
use crate::esp::Sa;
use crate::fdb::Fdb;
use crate::tunnel::{FastMap, Remote};
use crate::wire::EthernetAddress;
use arc_swap::ArcSwap;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
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
    /// The UDP port of VTEPs learned from traffic (frames from them come
    /// from a hashed source port; replies go to this one, as Linux does).
    pub vxlan_port: u16,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: 1,
            fdb_capacity: 1 << 16,
            aging_secs: 300,
            max_macs_per_port: 64,
            vxlan_port: crate::wire::vxlan::PORT,
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
    /// Tunnelled to other hosts in VXLAN (an overlay network).
    pub overlay: Option<OverlayConfig>,
    /// The network's IPv6 subnet and gateway (dual-stack), if it has one.
    pub v6: Option<Ipv6Config>,
}

/// A network's IPv6 side. The gateway answers Neighbor Solicitations and
/// echo requests for `gateway` and for its link-local address
/// ([`link_local_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Config {
    pub subnet: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Ipv6Addr,
}

impl Ipv6Config {
    /// Whether `a` lies in the subnet.
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        let bits = u32::from(self.prefix_len.min(128));
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        u128::from(a) & mask == u128::from(self.subnet) & mask
    }
}

/// An overlay network's tunnel settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Only ESP between hosts: plain VXLAN is neither sent nor accepted.
    pub encrypted: bool,
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
            overlay: None,
            v6: None,
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

/// The IPv6 link-local address of a MAC: `fe80::/64` with the modified
/// EUI-64 interface id (RFC 4291 appendix A), what a kernel interface with
/// that MAC has. The gateway's, and each checked port's own.
pub fn link_local_of(mac: EthernetAddress) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
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
    /// Assigned IPv6 address of a checked port: besides it, the port may
    /// send IPv6 only from link-local addresses and, for Neighbor
    /// Discovery and MLD, from `::`.
    pub ip6: Option<Ipv6Addr>,
    /// The link-local address a checked port sends from, when it is not
    /// the EUI-64 one of its MAC (ipvlan endpoints share the parent's MAC,
    /// so each has an explicit one: [`crate::segment::ipvlan_link_local`]).
    pub link_local6: Option<Ipv6Addr>,
    /// Overrides [`SwitchConfig::max_macs_per_port`].
    pub max_macs: Option<u32>,
    /// A tunnel port: frames leave VXLAN-encapsulated towards this VTEP.
    pub tunnel: Option<TunnelConfig>,
}

/// A tunnel port's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The peer VTEP.
    pub remote: SocketAddrV4,
    /// Made by the datapath for a VTEP that sent traffic (not by the
    /// control plane's peers or remote endpoints).
    pub learned: bool,
}

impl PortConfig {
    /// An endpoint with an assigned MAC and address (spoof-checked).
    pub fn endpoint(name: &str, network: NetworkId, mac: EthernetAddress, ip: Ipv4Addr) -> Self {
        PortConfig {
            name: name.into(),
            network,
            mac: Some(mac),
            ip: Some(ip),
            ip6: None,
            link_local6: None,
            max_macs: None,
            tunnel: None,
        }
    }
    /// An unchecked port (uplink, tunnel): any source MAC and address.
    pub fn unchecked(name: &str, network: NetworkId) -> Self {
        PortConfig {
            name: name.into(),
            network,
            mac: None,
            ip: None,
            ip6: None,
            link_local6: None,
            max_macs: None,
            tunnel: None,
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
    /// The ESP key this host sends with (encrypted overlays).
    pub tx_sa: Option<Arc<Sa>>,
    /// A network on a parent interface (macvlan/ipvlan): see
    /// [`crate::segment`].
    pub segment: Option<crate::segment::Segment>,
}

/// A port in the snapshot. `counters` and `learned` are shared by all
/// snapshots so they survive updates.
#[derive(Clone)]
pub struct Port {
    pub id: PortId,
    pub config: PortConfig,
    pub counters: PortCounters,
    /// MACs this port has in the FDB (exact after each aging pass).
    pub learned: Arc<AtomicU32>,
    pub max_macs: u32,
    /// A segment network's parent port (see [`crate::segment`]).
    pub uplink: Option<crate::segment::Uplink>,
}

impl Port {
    #[inline]
    pub fn network(&self) -> NetworkId {
        self.config.network
    }
    /// Both MAC and IPv4 assigned: spoof-checked.
    #[inline]
    pub fn is_checked(&self) -> bool {
        self.config.mac.is_some() && self.config.ip.is_some()
    }
    /// A VXLAN tunnel port.
    #[inline]
    pub fn is_tunnel(&self) -> bool {
        self.config.tunnel.is_some()
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
    /// Overlay networks by VNI.
    pub(crate) vnis: FastMap<u32, NetworkId>,
    /// Tunnel ports by network and peer address.
    pub(crate) tunnels: FastMap<(NetworkId, Ipv4Addr), PortId>,
    /// Other hosts' endpoints by FDB key (network and MAC).
    pub(crate) remotes: FastMap<u64, Remote>,
    /// Other hosts' endpoints' MACs by network and address (proxy ARP).
    pub(crate) remote_ips: FastMap<(NetworkId, Ipv4Addr), EthernetAddress>,
    /// Other hosts' endpoints' MACs by network and IPv6 address (proxy
    /// Neighbor Discovery).
    pub(crate) remote_ips6: FastMap<(NetworkId, Ipv6Addr), EthernetAddress>,
    /// ESP keys by SPI (receive).
    pub(crate) spis: FastMap<u32, crate::tunnel::SaEntry>,
    /// Endpoints of ipvlan networks by network and address (they share
    /// the parent's MAC).
    pub(crate) segment_ips: FastMap<(NetworkId, Ipv4Addr), PortId>,
    /// The same by IPv6 address (assigned and link-local).
    pub(crate) segment_ips6: FastMap<(NetworkId, Ipv6Addr), PortId>,
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
    #[inline]
    pub fn assigned_port(&self, net: NetworkId, mac: EthernetAddress) -> Option<PortId> {
        self.assigned.get(&crate::fdb::key(net.0, mac)).copied()
    }
    pub fn port_by_name(&self, name: &str) -> Option<&Port> {
        self.ports().find(|p| p.config.name == name)
    }
    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.networks().find(|n| n.config.name == name)
    }
    pub(crate) fn networks_mut(&mut self, id: NetworkId) -> Option<&mut Network> {
        self.networks.get_mut(usize::from(id.0))?.as_mut()
    }
    pub(crate) fn port_mut(&mut self, id: PortId) -> Option<&mut Port> {
        self.ports.get_mut(id.0 as usize)?.as_mut()
    }
    /// The overlay network with VXLAN id `vni`.
    #[inline]
    pub fn network_by_vni(&self, vni: u32) -> Option<&Network> {
        self.network(*self.vnis.get(&vni)?)
    }
    /// The tunnel port of network `net` towards the VTEP at `ip`.
    #[inline]
    pub fn tunnel_port(&self, net: NetworkId, ip: Ipv4Addr) -> Option<&Port> {
        self.port(*self.tunnels.get(&(net, ip))?)
    }
    /// Another host's endpoint with `mac` on `net`.
    #[inline]
    pub fn remote(&self, net: NetworkId, mac: EthernetAddress) -> Option<&Remote> {
        self.remotes.get(&crate::fdb::key(net.0, mac))
    }
    /// The endpoint with address `ip` on ipvlan network `net`.
    #[inline]
    pub fn segment_port(&self, net: NetworkId, ip: Ipv4Addr) -> Option<&Port> {
        self.port(*self.segment_ips.get(&(net, ip))?)
    }
    /// The endpoint with IPv6 address `ip` on ipvlan network `net`.
    #[inline]
    pub fn segment_port6(&self, net: NetworkId, ip: Ipv6Addr) -> Option<&Port> {
        self.port(*self.segment_ips6.get(&(net, ip))?)
    }
    /// The MAC of another host's endpoint with address `ip` on `net`.
    #[inline]
    pub fn remote_mac(&self, net: NetworkId, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.remote_ips.get(&(net, ip)).copied()
    }
    /// The MAC of another host's endpoint with IPv6 address `ip` on `net`.
    #[inline]
    pub fn remote_mac6(&self, net: NetworkId, ip: Ipv6Addr) -> Option<EthernetAddress> {
        self.remote_ips6.get(&(net, ip)).copied()
    }
    /// Forgets the address maps' entries of remote endpoint `r`.
    pub(crate) fn unmap_remote(&mut self, net: NetworkId, r: &crate::tunnel::Remote) {
        if self.remote_ips.get(&(net, r.ip)) == Some(&r.mac) {
            self.remote_ips.remove(&(net, r.ip));
        }
        if let Some(ip6) = r.ip6 {
            if self.remote_ips6.get(&(net, ip6)) == Some(&r.mac) {
                self.remote_ips6.remove(&(net, ip6));
            }
        }
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
    /// The tunnel's own counters: datagrams in and out, drops before a
    /// frame reaches a tunnel port (bad header, unknown VNI, ESP).
    pub(crate) tunnel: PortCounters,
    /// Where the ports' counters live.
    counters: Arc<CounterArena>,
    ctl: Mutex<()>,
}

impl Switch {
    pub fn new(config: SwitchConfig) -> Arc<Switch> {
        Arc::new(Switch {
            topo: ArcSwap::from_pointee(Topology::default()),
            fdb: ArcSwap::from_pointee(Fdb::new(config.fdb_capacity)),
            worker_drops: WorkerCounters::new(config.workers),
            tunnel: PortCounters::new(config.workers),
            counters: CounterArena::new(config.workers),
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

    pub(crate) fn update<R>(
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
            if let Some(o) = config.overlay {
                crate::tunnel::claim_vni(t, id, o.vni)?;
            }
            t.networks[idx] = Some(Network {
                id,
                gateway_mac: gateway_mac(config.gateway),
                max_frame: config.mtu as usize + crate::wire::ethernet::HEADER_LEN,
                config,
                ports: Vec::new(),
                tx_sa: None,
                segment: None,
            });
            Ok(id)
        })
    }

    /// Changes a network's settings (ICC, MTU, ...) in place.
    pub fn update_network(&self, id: NetworkId, config: NetworkConfig) -> Result<(), ConfigError> {
        self.update(|t| {
            let old = t
                .network(id)
                .ok_or(ConfigError::NoSuchNetwork)?
                .config
                .overlay;
            if old != config.overlay {
                t.vnis.retain(|_, n| *n != id);
                if let Some(o) = config.overlay {
                    crate::tunnel::claim_vni(t, id, o.vni)?;
                } else {
                    crate::tunnel::clear_overlay(t, id);
                }
            }
            let n = t.networks[usize::from(id.0)]
                .as_mut()
                .ok_or(ConfigError::NoSuchNetwork)?;
            if config.overlay.is_none_or(|o| !o.encrypted) {
                n.tx_sa = None;
            }
            n.gateway_mac = gateway_mac(config.gateway);
            n.max_frame = config.mtu as usize + crate::wire::ethernet::HEADER_LEN;
            n.config = config;
            Ok(())
        })
    }

    /// Removes a network that has no ports left but its tunnel ports
    /// (removed with it, with its overlay state).
    pub fn remove_network(&self, id: NetworkId) -> Result<(), ConfigError> {
        self.update(|t| {
            let n = t
                .networks
                .get(usize::from(id.0))
                .and_then(Option::as_ref)
                .ok_or(ConfigError::NoSuchNetwork)?;
            if n.ports
                .iter()
                .any(|p| t.port(*p).is_some_and(|p| !p.is_tunnel()))
            {
                return Err(ConfigError::NetworkInUse);
            }
            crate::tunnel::clear_overlay(t, id);
            t.vnis.retain(|_, n| *n != id);
            t.networks[usize::from(id.0)] = None;
            Ok(())
        })
    }

    pub fn add_port(&self, config: PortConfig) -> Result<PortId, ConfigError> {
        self.update(|t| self.add_port_in(t, config))
    }

    pub(crate) fn add_port_in(
        &self,
        t: &mut Topology,
        config: PortConfig,
    ) -> Result<PortId, ConfigError> {
        let max_macs = config.max_macs.unwrap_or(self.config.max_macs_per_port);
        {
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
            let by_ip = net.segment.is_some_and(|s| s.mode.by_address());
            if let (true, Some(ip)) = (by_ip, config.ip) {
                if t.segment_ips.insert((config.network, ip), id).is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "address {ip} is already assigned to another port of this network"
                    )));
                }
                for ip6 in [config.ip6, config.link_local6].into_iter().flatten() {
                    if t.segment_ips6.insert((config.network, ip6), id).is_some() {
                        return Err(ConfigError::Invalid(format!(
                            "address {ip6} is already assigned to another port of this network"
                        )));
                    }
                }
            } else if let (Some(mac), Some(_)) = (config.mac, config.ip) {
                let key = crate::fdb::key(config.network.0, mac);
                if t.assigned.contains_key(&key) {
                    return Err(ConfigError::Invalid(format!(
                        "MAC {mac} is already assigned to another port of this network"
                    )));
                }
                t.assigned.insert(key, id);
            }
            if let Some(tc) = config.tunnel {
                if config.mac.is_some() || config.ip.is_some() {
                    return Err(ConfigError::Invalid(
                        "a tunnel port has no MAC or address of its own".into(),
                    ));
                }
                let key = (config.network, *tc.remote.ip());
                if t.tunnels.contains_key(&key) {
                    return Err(ConfigError::Invalid(format!(
                        "the network already has a tunnel port to {}",
                        tc.remote.ip()
                    )));
                }
                t.tunnels.insert(key, id);
            }
            net.ports.push(id);
            t.ports.push(Some(Port {
                id,
                config,
                counters: self.counters.alloc(),
                learned: Arc::new(AtomicU32::new(0)),
                max_macs,
                uplink: None,
            }));
            Ok(id)
        }
    }

    /// Removes a port. Its FDB entries stop resolving at once (lookups of
    /// a removed port fall back to flooding) and are purged by [`Switch::age`].
    pub fn remove_port(&self, id: PortId) -> Result<(), ConfigError> {
        self.update(|t| Self::remove_port_in(t, id))
    }

    pub(crate) fn remove_port_in(t: &mut Topology, id: PortId) -> Result<(), ConfigError> {
        {
            let p = t
                .ports
                .get_mut(id.0 as usize)
                .and_then(Option::take)
                .ok_or(ConfigError::NoSuchPort)?;
            if let Some(n) = t.networks[usize::from(p.network().0)].as_mut() {
                n.ports.retain(|&q| q != id);
                if let Some(s) = n.segment.as_mut() {
                    if s.parent == Some(id) {
                        s.parent = None;
                    }
                    if s.router == Some(id) {
                        s.router = None;
                    }
                    if s.router6 == Some(id) {
                        s.router6 = None;
                    }
                }
            }
            if let Some(ip) = p.config.ip {
                if t.segment_ips.get(&(p.network(), ip)) == Some(&id) {
                    t.segment_ips.remove(&(p.network(), ip));
                }
            }
            for ip6 in [p.config.ip6, p.config.link_local6].into_iter().flatten() {
                if t.segment_ips6.get(&(p.network(), ip6)) == Some(&id) {
                    t.segment_ips6.remove(&(p.network(), ip6));
                }
            }
            if let Some(mac) = p.config.mac {
                let key = crate::fdb::key(p.network().0, mac);
                if t.assigned.get(&key) == Some(&id) {
                    t.assigned.remove(&key);
                }
            }
            if let Some(tc) = p.config.tunnel {
                t.tunnels.remove(&(p.network(), *tc.remote.ip()));
                let net = p.network();
                let gone: Vec<u64> = t
                    .remotes
                    .iter()
                    .filter(|(_, r)| r.port == id)
                    .map(|(k, _)| *k)
                    .collect();
                for k in gone {
                    if let Some(r) = t.remotes.remove(&k) {
                        t.unmap_remote(net, &r);
                    }
                }
            }
            Ok(())
        }
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

//! The overlay's control plane on each host: keeps this daemon in step with
//! the cluster store (`crate::cluster`).
//!
//! - Networks of global scope are created and removed in the cluster
//!   first (one transaction there: name, VNI, record), then locally; every
//!   other host learns them by its watch and adds them too.
//! - An endpoint on an overlay gets its address (and, on a dual-stack
//!   overlay, its IPv6 address) from the cluster (allocation
//!   transactions) and is registered there under this host's lease once
//!   plugged; unplugged, it is removed.
//! - [`Core::cluster_sync`] reconciles this host with a snapshot of the
//!   cluster: overlay networks added or removed locally, the other hosts'
//!   endpoints pinned in the switch (static FDB entry, proxy ARP and proxy
//!   ND towards their VTEP) and named in the embedded DNS (A and AAAA),
//!   the VTEPs that have each network set as its peers (broadcast and
//!   unknown unicast go to them), this host's own endpoints registered
//!   again when the cluster lost them (a lease that expired while etcd was
//!   away), the ESP keys of encrypted networks made, rotated and applied. The watch calls it after every
//!   change; the keep-alive after a new lease.
//! - A container on no network with a gateway gets an interface on the
//!   host's `docker_gwbridge` network (made on demand: ICC off, masquerade
//!   on), which holds its default route and its published ports, as
//!   Docker does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::core::Core;
use super::endpoints;
use super::error::{EndpointError, NetworkError};
use super::types::NetworkCreate;
use crate::cluster::{Cluster, ClusterError, EndpointRecord, EspKeyRecord, KeyRing, Snapshot};
use crate::dataplane::{DataplaneError, DnsEndpoint, EspKey, RemoteEndpoint};
use crate::drivers::{self, overlay, DriverKind, Scope};
use crate::model::*;
use crate::state::State;

/// The host-local network that gives overlay containers their way out.
pub const GWBRIDGE: &str = "docker_gwbridge";

/// How often an encrypted network's key is replaced (Docker: 12 hours);
/// `TAPNET_KEY_ROTATION` (seconds) changes it, for tests.
fn key_rotation_secs() -> i64 {
    std::env::var("TAPNET_KEY_ROTATION")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &i64| *s > 0)
        .unwrap_or(12 * 3600)
}

/// What this host has applied of the other hosts' endpoints, by network.
#[derive(Debug, Default)]
pub struct Applied {
    /// Network id -> endpoint id -> record.
    pub remote: BTreeMap<String, BTreeMap<String, EndpointRecord>>,
    /// Network id -> the VTEPs set as its peers.
    pub peers: BTreeMap<String, Vec<SocketAddr>>,
    /// Network id -> the key ring applied.
    pub keys: BTreeMap<String, KeyRing>,
}

/// The dataplane's part of the overlay (tunnel peers, remote endpoints,
/// ESP keys), in one place.
/// Another host's endpoint as the switch pins it.
fn remote_endpoint(e: &EndpointRecord) -> RemoteEndpoint {
    RemoteEndpoint {
        mac: e.mac.0,
        ipv4: e.ipv4,
        ipv6: e.ipv6,
        vtep: e.vtep,
    }
}

/// A key ring's keys for the dataplane (each is 40 hex digits: the
/// AES-128 key and the salt).
fn esp_keys(ring: &KeyRing) -> Result<Vec<EspKey>, DataplaneError> {
    ring.keys
        .iter()
        .map(|k| {
            let key = hex::decode(&k.key)
                .ok()
                .and_then(|b| <[u8; 20]>::try_from(b).ok())
                .ok_or_else(|| {
                    DataplaneError::EspKeys(format!("key of SPI {:#x} is not 40 hex digits", k.spi))
                })?;
            Ok(EspKey { spi: k.spi, key })
        })
        .collect()
}

fn is_global(n: &Network) -> bool {
    drivers::of(n).scope() == Scope::Global
}

impl Core {
    /// The cluster, or the error an overlay operation gets without one.
    pub(super) fn cluster(&self) -> Result<&Cluster, ClusterError> {
        self.cluster.as_ref().ok_or(ClusterError::NotConfigured)
    }

    /// Creates a global network in the cluster (before the local part);
    /// returns the record with its VNI.
    pub(super) fn cluster_create(&self, n: Network) -> Result<Network, NetworkError> {
        let c = self.cluster().map_err(NetworkError::Cluster)?;
        let asked = overlay::vni(&n);
        let vni = c.create_network(&n, asked).map_err(NetworkError::Cluster)?;
        let mut n = n;
        n.options
            .insert(crate::cluster::VNI_OPTION.into(), vni.to_string());
        Ok(n)
    }

    /// Removes a global network from the cluster (refused while any host
    /// has an endpoint on it).
    pub(super) fn cluster_remove(&self, n: &Network) -> Result<(), NetworkError> {
        self.cluster()
            .map_err(NetworkError::Cluster)?
            .delete_network(n)
            .map_err(NetworkError::Cluster)
    }

    /// Allocates an endpoint in `st`; on a global network its address
    /// comes from the cluster.
    pub(super) fn allocate_endpoint(
        &self,
        st: &mut State,
        owner: Owner,
        req: &NetRequest,
        ifname: String,
    ) -> Result<Endpoint, EndpointError> {
        let Some(n) = st.networks.get(&req.network_id).cloned() else {
            return endpoints::allocate(st, owner, req, ifname);
        };
        if !is_global(&n) {
            return endpoints::allocate(st, owner, req, ifname);
        }
        let c = self.cluster().map_err(EndpointError::Cluster)?;
        let id = new_id();
        let ip = c.allocate(&n, req.ipv4, &id).map_err(|e| match e {
            ClusterError::AddrInUse(addr) => EndpointError::AddrInUse {
                addr,
                network: n.name.clone(),
                owner: " (in the cluster)".into(),
            },
            e => EndpointError::Cluster(e),
        })?;
        // A dual-stack overlay: the IPv6 address from the cluster too.
        let ip6 = match n.pools6.first() {
            None => None,
            Some(_) => match c.allocate6(&n, req.ipv6, &id) {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = c.release(&n.id, ip);
                    return Err(match e {
                        ClusterError::Addr6InUse(addr) => EndpointError::Addr6InUse {
                            addr,
                            network: n.name.clone(),
                            owner: " (in the cluster)".into(),
                        },
                        e => EndpointError::Cluster(e),
                    });
                }
            },
        };
        let mut r = req.clone();
        r.ipv4 = Some(ip);
        r.ipv6 = ip6;
        match endpoints::allocate_as(st, id, owner, &r, ifname) {
            Ok(mut ep) => {
                ep.static_ip = req.ipv4.is_some();
                st.endpoints.insert(ep.id.clone(), ep.clone());
                Ok(ep)
            }
            Err(e) => {
                let _ = c.release(&n.id, ip);
                if let Some(a) = ip6 {
                    let _ = c.release(&n.id, a);
                }
                Err(e)
            }
        }
    }

    /// Frees in the cluster what endpoints `ids` of global networks hold
    /// (their records and addresses); best effort: the host's lease frees
    /// them anyway if etcd is away.
    pub(super) fn release_global(&self, st: &State, ids: &[String]) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        for id in ids {
            let Some(e) = st.endpoints.get(id) else {
                continue;
            };
            if !st.networks.get(&e.network_id).is_some_and(is_global) {
                continue;
            }
            if let Err(err) = c.delete_endpoint(&e.network_id, id) {
                tracing::warn!("cluster: endpoint {}: {err}", &id[..12]);
            }
            let v4 = e.ipv4.map(|a| IpAddr::from(a.addr()));
            for a in v4.into_iter().chain(e.ipv6.map(|a| IpAddr::from(a.addr()))) {
                if let Err(err) = c.release(&e.network_id, a) {
                    tracing::warn!("cluster: release {a}: {err}");
                }
            }
        }
    }

    /// Registers a plugged endpoint of a global network in the cluster.
    pub(super) fn register_global(
        &self,
        n: &Network,
        e: &Endpoint,
        names: Option<&endpoints::DnsNames>,
    ) -> Result<(), EndpointError> {
        if !is_global(n) {
            return Ok(());
        }
        let c = self.cluster().map_err(EndpointError::Cluster)?;
        let rec = record_of(c, e, names);
        c.put_endpoint(&rec).map_err(EndpointError::Cluster)
    }

    /// Unregisters an endpoint of a global network (unplugged).
    pub(super) fn unregister_global(&self, st: &State, ep_id: &str) {
        let (Some(c), Some(e)) = (self.cluster.as_ref(), st.endpoints.get(ep_id)) else {
            return;
        };
        if st.networks.get(&e.network_id).is_some_and(is_global) {
            if let Err(err) = c.delete_endpoint(&e.network_id, ep_id) {
                tracing::warn!("cluster: endpoint {}: {err}", &ep_id[..12]);
            }
        }
    }

    /// Makes this host's `docker_gwbridge` network if it has none yet
    /// (ICC off, masquerade on, as Docker's).
    pub(super) fn ensure_gwbridge(&mut self) -> Result<(), NetworkError> {
        if gwbridge_of(self.store.state()).is_some() {
            return Ok(());
        }
        let mut req = NetworkCreate {
            name: GWBRIDGE.into(),
            ..Default::default()
        };
        req.options = Some(
            [
                (OPT_ICC.to_string(), "false".to_string()),
                (OPT_MASQ.to_string(), "true".to_string()),
                (OPT_BRIDGE_NAME.to_string(), GWBRIDGE.to_string()),
            ]
            .into(),
        );
        self.create_network(req).map(drop)
    }

    /// This host in the cluster, for `tapnet cluster`.
    pub fn cluster_status(&self) -> Option<serde_json::Value> {
        let c = self.cluster.as_ref()?;
        let remote: usize = self.applied.remote.values().map(|m| m.len()).sum();
        Some(serde_json::json!({
            "Host": c.host,
            "VTEP": c.vtep.to_string(),
            "Store": self.cluster_store_endpoints(),
            "Healthy": c.healthy(),
            "Lease": format!("{:x}", c.lease()),
            "Requests": c.requests(),
            "KeepAlives": c.keep_alives(),
            "RemoteEndpoints": remote,
            "Peers": self.applied.peers.iter().map(|(n, p)| (n.clone(), p.iter().map(|a| a.to_string()).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        }))
    }

    fn cluster_store_endpoints(&self) -> Vec<String> {
        self.cluster
            .as_ref()
            .map(|c| c.endpoints().to_vec())
            .unwrap_or_default()
    }

    /// Reconciles this host with the cluster (see the module doc). Returns
    /// the revision of the snapshot it used.
    pub fn cluster_sync(&mut self) -> Result<i64, ClusterError> {
        let c = self.cluster()?.clone();
        let snap = c.snapshot()?;
        self.sync_networks(&snap);
        self.sync_keys(&c, &snap);
        self.sync_endpoints(&c, &snap);
        Ok(snap.revision)
    }

    /// Global networks: the cluster's added here, the ones it no longer
    /// has removed here (unless a local endpoint still uses one).
    fn sync_networks(&mut self, snap: &Snapshot) {
        let local: Vec<Network> = self
            .store
            .state()
            .networks
            .values()
            .filter(|n| is_global(n))
            .cloned()
            .collect();
        for n in snap.networks.values() {
            let same = local.iter().find(|l| l.id == n.id);
            if same == Some(n) {
                continue;
            }
            if let Some(clash) = self
                .store
                .state()
                .networks
                .values()
                .find(|l| l.name == n.name && l.id != n.id)
            {
                tracing::error!(
                    "cluster: network {} ({}) has the name of local network {}; not added here",
                    n.name,
                    &n.id[..12],
                    &clash.id[..12]
                );
                continue;
            }
            if let Err(e) = self.add_global_locally(n.clone()) {
                tracing::error!("cluster: network {}: {e}", n.name);
            }
        }
        for n in local {
            if snap.networks.contains_key(&n.id) {
                continue;
            }
            let st = self.store.state();
            if st.network_endpoints(&n.id).next().is_some() {
                continue;
            }
            let mut next = self.store.prepare();
            next.networks.remove(&n.id);
            next.forget_network(&n.id);
            if let Err(e) = self.remove_networks(next, std::slice::from_ref(&n)) {
                tracing::error!("cluster: remove network {}: {e}", n.name);
            } else {
                self.applied.remote.remove(&n.id);
                self.applied.peers.remove(&n.id);
                self.applied.keys.remove(&n.id);
            }
        }
    }

    /// Rotates the key rings that are due, on the keep-alive's timer: the
    /// watch applies changes made elsewhere, but nothing else would notice
    /// that a ring grew old in an idle cluster. Checked against the rings
    /// this host applied, so it asks etcd nothing until one is due.
    pub fn rotate_due_keys(&mut self) -> Result<(), ClusterError> {
        let now = chrono::Utc::now().timestamp();
        let limit = key_rotation_secs();
        if !self.applied.keys.values().any(|r| now - r.created >= limit) {
            return Ok(());
        }
        let c = self.cluster()?.clone();
        let snap = c.snapshot()?;
        self.sync_keys(&c, &snap);
        Ok(())
    }

    /// Encrypted networks' keys: made when missing, rotated when old (one
    /// host wins each change: compare-and-swap), applied when changed.
    fn sync_keys(&mut self, c: &Cluster, snap: &Snapshot) {
        let now = chrono::Utc::now().timestamp();
        for n in snap.networks.values().filter(|n| overlay::encrypted(n)) {
            let (ring, rev) = match c.keys(&n.id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("cluster: keys of {}: {e}", n.name);
                    continue;
                }
            };
            let stale = ring
                .as_ref()
                .is_none_or(|r| now - r.created >= key_rotation_secs());
            let ring = if stale {
                let next = rotate(ring.clone());
                match c.put_keys(&n.id, &next, rev) {
                    Ok(true) => next,
                    // Another host rotated first: take its ring.
                    _ => match c.keys(&n.id) {
                        Ok((Some(r), _)) => r,
                        _ => continue,
                    },
                }
            } else {
                ring.unwrap_or_default()
            };
            if self.applied.keys.get(&n.id) == Some(&ring) {
                continue;
            }
            let Some(net) = self.dp_net_id(&n.id) else {
                continue;
            };
            match esp_keys(&ring).and_then(|keys| self.dp.set_esp_keys(net, &keys, ring.tx)) {
                Ok(()) => {
                    self.applied.keys.insert(n.id.clone(), ring);
                }
                Err(e) => tracing::error!("cluster: keys of {}: {e}", n.name),
            }
        }
    }

    /// The other hosts' endpoints (switch and DNS) and each network's
    /// peers; this host's own endpoints registered again if the cluster
    /// lost them.
    fn sync_endpoints(&mut self, c: &Cluster, snap: &Snapshot) {
        let mut wanted: BTreeMap<String, BTreeMap<String, EndpointRecord>> = BTreeMap::new();
        let mut own_seen: BTreeSet<String> = BTreeSet::new();
        for e in &snap.endpoints {
            if e.host == c.host {
                own_seen.insert(e.endpoint_id.clone());
                continue;
            }
            // A host whose lease is gone is gone, whatever is left.
            if !snap.hosts.contains_key(&e.host) {
                continue;
            }
            wanted
                .entry(e.network_id.clone())
                .or_default()
                .insert(e.endpoint_id.clone(), e.clone());
        }
        let nets: BTreeSet<String> = wanted
            .keys()
            .chain(self.applied.remote.keys())
            .cloned()
            .collect();
        for net_id in nets {
            let want = wanted.remove(&net_id).unwrap_or_default();
            let have: Vec<EndpointRecord> = self
                .applied
                .remote
                .get(&net_id)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for e in have {
                if want.get(&e.endpoint_id) != Some(&e) {
                    self.remote_gone(&net_id, &e.endpoint_id);
                }
            }
            for e in want.into_values() {
                self.remote_put(e);
            }
            self.update_peers(&net_id);
        }
        // This host's plugged endpoints the cluster lost (lease expired).
        let st = self.store.state().clone();
        for e in st.endpoints.values() {
            if e.netns.is_none() || own_seen.contains(&e.id) {
                continue;
            }
            let Some(n) = st.networks.get(&e.network_id).filter(|n| is_global(n)) else {
                continue;
            };
            let names = e
                .owner
                .container()
                .and_then(|id| st.containers.get(id))
                .map(endpoints::DnsNames::of);
            match self.register_global(n, e, names.as_ref()) {
                Ok(()) => tracing::info!(
                    "cluster: registered endpoint {} of {} again",
                    &e.id[..12],
                    n.name
                ),
                Err(err) => tracing::warn!("cluster: endpoint {}: {err}", &e.id[..12]),
            }
        }
    }

    /// Applies the watch's changes: endpoints one by one, anything else
    /// by a full sync. Returns whether a full sync is still needed (it
    /// failed).
    pub fn cluster_apply(&mut self, changes: Vec<crate::cluster::Change>) -> bool {
        use crate::cluster::Change;
        let Some(host) = self.cluster.as_ref().map(|c| c.host.clone()) else {
            return false;
        };
        let mut full = false;
        let mut touched = BTreeSet::new();
        for ch in changes {
            match ch {
                Change::EndpointPut(e) if e.host != host => {
                    touched.insert(e.network_id.clone());
                    self.remote_put(e);
                }
                Change::EndpointPut(_) | Change::None => {}
                Change::EndpointGone {
                    network_id,
                    endpoint_id,
                } => {
                    touched.insert(network_id.clone());
                    self.remote_gone(&network_id, &endpoint_id);
                }
                Change::Other => full = true,
            }
        }
        for net in touched {
            self.update_peers(&net);
        }
        full && self.cluster_sync().is_err()
    }

    /// Another host's endpoint: pinned in the switch and named in DNS
    /// (replacing what was applied for it).
    fn remote_put(&mut self, e: EndpointRecord) {
        let Some(net) = self.dp_net_id(&e.network_id) else {
            return;
        };
        if let Some(old) = self
            .applied
            .remote
            .get(&e.network_id)
            .and_then(|m| m.get(&e.endpoint_id))
        {
            if *old == e {
                return;
            }
            let (net_id, ep_id) = (e.network_id.clone(), e.endpoint_id.clone());
            self.remote_gone(&net_id, &ep_id);
        }
        if let Err(err) = self.dp.add_remote_endpoint(net, remote_endpoint(&e)) {
            tracing::error!("cluster: remote endpoint {}: {err}", &e.endpoint_id[..12]);
            return;
        }
        let dns = DnsEndpoint {
            container_id: e.container_id.clone(),
            name: e.name.clone(),
            hostname: Some(e.hostname.clone()),
            aliases: e.aliases.clone(),
            ipv4: Some(e.ipv4),
            ipv6: e.ipv6,
            links: vec![],
            upstreams: vec![],
        };
        if let Err(err) = self.dp.dns_add_endpoint(net, dns) {
            tracing::warn!("cluster: names of {}: {err}", e.name);
        }
        self.applied
            .remote
            .entry(e.network_id.clone())
            .or_default()
            .insert(e.endpoint_id.clone(), e);
    }

    /// Another host's endpoint is gone: out of the switch and the DNS.
    fn remote_gone(&mut self, network_id: &str, endpoint_id: &str) {
        let Some(e) = self
            .applied
            .remote
            .get_mut(network_id)
            .and_then(|m| m.remove(endpoint_id))
        else {
            return;
        };
        if let Some(net) = self.dp_net_id(network_id) {
            let _ = self.dp.remove_remote_endpoint(net, e.mac.0);
            let addrs: Vec<IpAddr> = std::iter::once(e.ipv4.into())
                .chain(e.ipv6.map(Into::into))
                .collect();
            self.dp.dns_remove_endpoint(net, &e.container_id, &addrs);
        }
    }

    /// A network's peers: the VTEPs of the other hosts' endpoints on it.
    fn update_peers(&mut self, network_id: &str) {
        let Some(net) = self.dp_net_id(network_id) else {
            return;
        };
        let mut peers: Vec<SocketAddr> = self
            .applied
            .remote
            .get(network_id)
            .map(|m| m.values().map(|e| e.vtep).collect())
            .unwrap_or_default();
        peers.sort();
        peers.dedup();
        if self.applied.peers.get(network_id) == Some(&peers) {
            return;
        }
        match self.dp.set_peers(net, &peers) {
            Ok(()) => {
                self.applied.peers.insert(network_id.to_string(), peers);
            }
            Err(e) => tracing::error!("cluster: peers of {}: {e}", &network_id[..12]),
        }
    }

    /// Adds a global network the cluster has to this host (store and
    /// dataplane), or updates it.
    fn add_global_locally(&mut self, n: Network) -> Result<(), NetworkError> {
        let mut next = self.store.prepare();
        next.networks.insert(n.id.clone(), n.clone());
        let id = self.alloc_net_id(&n.id);
        let driver = drivers::of(&n);
        if let Err(source) = driver.create(&self.dp, id, &n) {
            return Err(NetworkError::Dataplane {
                name: n.name.clone(),
                source,
            });
        }
        self.store.commit(next)?;
        tracing::info!(
            "cluster: network {} (VNI {})",
            n.name,
            overlay::vni(&n).unwrap_or(0)
        );
        Ok(())
    }
}

/// This host's `docker_gwbridge` network, if made.
pub fn gwbridge_of(st: &State) -> Option<&Network> {
    st.networks
        .values()
        .find(|n| n.name == GWBRIDGE && n.driver == DriverKind::Bridge)
}

/// Whether a container on `requests` needs an interface on
/// `docker_gwbridge`: it joins a global network and none of its networks
/// holds a default route (an all-`--internal` set gets none).
pub fn needs_gwbridge(st: &State, requests: &[NetRequest]) -> bool {
    let nets: Vec<&Network> = requests
        .iter()
        .filter_map(|r| st.networks.get(&r.network_id))
        .collect();
    nets.iter().any(|n| is_global(n))
        && !nets
            .iter()
            .any(|n| drivers::of(n).services(n).default_route)
        && !nets.iter().all(|n| n.internal)
}

/// The request for the `docker_gwbridge` interface (the network made).
pub fn gwbridge_request(st: &State) -> Option<NetRequest> {
    gwbridge_of(st).map(|n| NetRequest {
        network_id: n.id.clone(),
        ipv4: None,
        ipv6: None,
        mac: None,
        aliases: vec![],
        links: vec![],
    })
}

/// An endpoint's cluster record.
fn record_of(c: &Cluster, e: &Endpoint, names: Option<&endpoints::DnsNames>) -> EndpointRecord {
    EndpointRecord {
        network_id: e.network_id.clone(),
        endpoint_id: e.id.clone(),
        host: c.host.clone(),
        vtep: c.vtep,
        mac: e.mac,
        ipv4: e.ipv4.map(|a| a.addr()).unwrap_or(Ipv4Addr::UNSPECIFIED),
        ipv6: e.ipv6.map(|a| a.addr()),
        container_id: names.map(|n| n.container_id.clone()).unwrap_or_default(),
        name: names.map(|n| n.name.clone()).unwrap_or_default(),
        hostname: names.map(|n| n.hostname.clone()).unwrap_or_default(),
        aliases: e.aliases.clone(),
    }
}

/// The next key ring: a new key sends, the previous one is still accepted.
fn rotate(old: Option<KeyRing>) -> KeyRing {
    use rand::RngCore;
    let mut key = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut key);
    let mut spi = 0u32;
    while spi < 256 {
        spi = rand::random();
    }
    let mut keys: Vec<EspKeyRecord> = old
        .map(|r| r.keys.into_iter().filter(|k| k.spi == r.tx).collect())
        .unwrap_or_default();
    keys.push(EspKeyRecord {
        spi,
        key: hex::encode(key),
    });
    KeyRing {
        keys,
        tx: spi,
        created: chrono::Utc::now().timestamp(),
    }
}

/// Keeps this host's lease alive (every third of its TTL) and rotates the
/// encrypted networks' keys when due. When etcd lost
/// it (unreachable for longer than the TTL), takes a new one and syncs,
/// which registers this host's endpoints again.
pub async fn keep_alive(core: super::Shared) {
    let Some(c) = core.lock().cluster.clone() else {
        return;
    };
    let period = std::time::Duration::from_secs((crate::cluster::LEASE_TTL / 3).max(1) as u64);
    let mut was_down = false;
    loop {
        tokio::time::sleep(period).await;
        let c2 = c.clone();
        let alive = tokio::task::spawn_blocking(move || {
            if c2.lease() == 0 {
                return Ok(false);
            }
            c2.keep_alive()
        })
        .await
        .unwrap_or(Ok(false));
        match alive {
            Ok(true) => {
                if was_down {
                    tracing::info!("cluster: the store answers again");
                    was_down = false;
                }
                if let Err(e) = super::call(&core, |core| core.rotate_due_keys()).await {
                    tracing::warn!("cluster: key rotation: {e}");
                }
            }
            Ok(false) => {
                let r = super::call(&core, |core| {
                    let c = core.cluster()?.clone();
                    let id = c.new_lease()?;
                    core.cluster_sync().map(|_| id)
                })
                .await;
                match r {
                    Ok(id) => {
                        tracing::info!("cluster: new lease {id:x}; endpoints registered again")
                    }
                    Err(e) => {
                        if !was_down {
                            tracing::warn!("cluster: {e}");
                        }
                        was_down = true;
                    }
                }
            }
            Err(e) => {
                if !was_down {
                    tracing::warn!(
                        "cluster: keep-alive: {e} (the overlay goes on with what it knows)"
                    );
                }
                was_down = true;
            }
        }
    }
}

/// Follows the cluster: a full sync, then a watch from its revision that
/// syncs again after each batch of changes; when the watch breaks (etcd
/// away, history compacted) it starts over, so the host catches up.
pub async fn watch(core: super::Shared) {
    let Some(c) = core.lock().cluster.clone() else {
        return;
    };
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let rev = match super::call(&core, |core| core.cluster_sync()).await {
            Ok(r) => {
                delay = std::time::Duration::from_millis(200);
                r
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c2 = c.clone();
        let mut w = tokio::spawn(async move {
            c2.watch(rev, move |changes| {
                let _ = tx.send(changes);
            })
            .await
        });
        loop {
            tokio::select! {
                Some(mut changes) = rx.recv() => {
                    // A burst of changes in one go.
                    while let Ok(more) = rx.try_recv() {
                        changes.extend(more);
                    }
                    let _ = super::call(&core, move |core| {
                        Ok::<_, ClusterError>(core.cluster_apply(changes))
                    })
                    .await;
                }
                _ = &mut w => break,
            }
        }
        tokio::time::sleep(delay).await;
    }
}

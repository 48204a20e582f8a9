//! The cluster store: the state overlay networks share across hosts, in
//! etcd (`tapnet daemon --cluster-store etcd://HOST:PORT[,...]`). etcd does
//! the consensus; tapnet keeps no gossip of its own.
//!
//! Keys (values JSON), under `/tapnet/v1/`:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `hosts/HOST` | [`HostRecord`] (its VTEP address) | the host's |
//! | `networks/ID` | the [`Network`] record (driver `overlay`) | none |
//! | `netnames/NAME` | the network id (names are unique) | none |
//! | `vnis/VNI` | the network id (VNIs are unique) | none |
//! | `ipam/ID/IP` | the endpoint id holding the address (IPv4 or IPv6) | the holder's host's |
//! | `endpoints/ID/EP` | [`EndpointRecord`] | the host's |
//! | `keys/ID` | [`KeyRing`] (ESP keys of an encrypted network) | none |
//!
//! Every allocation is an etcd transaction that succeeds only if the key
//! does not exist yet, so two hosts never get the same address, VNI or
//! name, even at the same moment. A host's endpoints and addresses carry
//! its lease (TTL [`LEASE_TTL`]): when its daemon dies they disappear from
//! every other host once etcd revokes the lease, the TTL after the last
//! renewal (etcd 3.4 retries a revoke it missed while busy every 3 s);
//! a daemon that comes back registers
//! again the containers it still has. Watches spread the changes.
//!
//! The daemon's core is synchronous: [`Cluster`] runs each request on the
//! daemon's tokio runtime and waits for it, at most [`OP_TIMEOUT`], so an
//! unreachable etcd turns a change into one clear error rather than a hang.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::model::Network;

/// The root of tapnet's keys.
pub const PREFIX: &str = "/tapnet/v1/";
/// A host's lease: how long its endpoints outlive its daemon.
pub const LEASE_TTL: i64 = 10;
/// The longest a request may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The first VNI handed out (Docker's overlay starts at 4096 too).
pub const FIRST_VNI: u32 = 4096;
/// Addresses one allocation tries to claim before it gives up (the others
/// were taken by hosts allocating at the same moment).
pub const MAX_CLAIM_TRIES: usize = 64;

/// What [`Cluster::claim`] got.
enum Claim<A> {
    Got(A),
    /// Every candidate tried was taken; the last one.
    Taken(A),
    /// There was no candidate.
    None,
}

/// Errors of the cluster store; the message is one line for the user.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ClusterError {
    /// overlay networks need a cluster store: start the daemon with --cluster-store etcd://HOST:PORT --advertise-addr IP
    NotConfigured,
    /// invalid --cluster-store {0:?}: expected etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS)
    BadUrl(String),
    /// invalid --cluster-store-opt {0:?}: {1}
    BadOpt(String, String),
    /// cannot read {path}: {err}
    Read { path: String, err: std::io::Error },
    /// the cluster store (etcd at {endpoints}) is unreachable: {reason}
    Unreachable { endpoints: String, reason: String },
    /// the cluster store did not answer within {0:?}
    Timeout(Duration),
    /// cluster store: {0}
    Etcd(String),
    /// a network named {0} already exists in the cluster
    NameInUse(String),
    /// VNI {0} is already used by another network of the cluster
    VniInUse(u32),
    /// no free VNI left
    NoVni,
    /// network {name} has endpoints on hosts {hosts}: remove them first
    InUse { name: String, hosts: String },
    /// address {0} is already in use in the cluster
    AddrInUse(Ipv4Addr),
    /// no free address left in the network's pool
    Exhausted,
    /// IPv6 address {0} is already in use in the cluster
    Addr6InUse(Ipv6Addr),
    /// no free address left in the network's IPv6 pool
    Exhausted6,
    /// corrupt record {key} in the cluster store: {err}
    Corrupt { key: String, err: String },
}

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> ClusterError {
        ClusterError::Etcd(e.to_string())
    }
}

/// `--cluster-store` and `--cluster-store-opt`, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoints: Vec<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl StoreConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for TLS).
    pub fn parse(url: &str) -> Result<StoreConfig, ClusterError> {
        let bad = || ClusterError::BadUrl(url.to_string());
        let (scheme, rest) = if let Some(r) = url.strip_prefix("etcd://") {
            ("http", r)
        } else if let Some(r) = url.strip_prefix("etcds://") {
            ("https", r)
        } else {
            return Err(bad());
        };
        let mut endpoints = vec![];
        for hp in rest.split(',') {
            let (host, port) = hp.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad());
            }
            endpoints.push(format!("{scheme}://{hp}"));
        }
        Ok(StoreConfig {
            endpoints,
            ..Default::default()
        })
    }

    /// `--cluster-store-opt KEY=VALUE`: `kv.cacertfile`, `kv.certfile`,
    /// `kv.keyfile` (Docker's names).
    pub fn set_opt(&mut self, kv: &str) -> Result<(), ClusterError> {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ClusterError::BadOpt(kv.into(), "expected KEY=VALUE".into()))?;
        let slot = match k {
            "kv.cacertfile" => &mut self.ca,
            "kv.certfile" => &mut self.cert,
            "kv.keyfile" => &mut self.key,
            _ => {
                return Err(ClusterError::BadOpt(
                    kv.into(),
                    "known options: kv.cacertfile, kv.certfile, kv.keyfile".into(),
                ))
            }
        };
        *slot = Some(v.to_string());
        Ok(())
    }
}

/// `hosts/HOST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub vtep: SocketAddr,
}

/// `endpoints/NET/EP`: a container's endpoint on an overlay, as the other
/// hosts need it (FDB, proxy ARP, DNS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    pub endpoint_id: String,
    pub host: String,
    pub vtep: SocketAddr,
    pub mac: crate::model::Mac,
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address on a dual-stack overlay (absent in records of
    /// releases before dual-stack overlays).
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub container_id: String,
    pub name: String,
    pub hostname: String,
    pub aliases: Vec<String>,
}

/// `keys/NET`: the ESP keys of an encrypted overlay; every host sends with
/// `tx` and accepts every key of the ring (rotation keeps the previous).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub keys: Vec<EspKeyRecord>,
    pub tx: u32,
    /// Unix seconds when `tx` was made.
    pub created: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspKeyRecord {
    pub spi: u32,
    /// 16 bytes of AES-128 key and 4 of salt, hex.
    pub key: String,
}

/// Everything a host needs to build its view of the cluster.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub hosts: BTreeMap<String, HostRecord>,
    pub networks: BTreeMap<String, Network>,
    pub endpoints: Vec<EndpointRecord>,
    pub keys: BTreeMap<String, KeyRing>,
}

/// A connection to the cluster store, with this host's lease.
#[derive(Clone)]
pub struct Cluster {
    rt: tokio::runtime::Handle,
    client: Client,
    cfg: StoreConfig,
    /// This host's id (persisted in the daemon's state).
    pub host: String,
    /// This host's VTEP address.
    pub vtep: SocketAddr,
    lease: Arc<AtomicI64>,
    healthy: Arc<AtomicBool>,
    /// Requests made (lease renewals apart), for the convergence figures.
    requests: Arc<AtomicU64>,
    /// Lease renewals made: one per third of the TTL, whatever happens.
    keep_alives: Arc<AtomicU64>,
}

fn key(parts: &[&str]) -> String {
    let mut k = PREFIX.to_string();
    k.push_str(&parts.join("/"));
    k
}

fn decode<T: for<'de> Deserialize<'de>>(k: &[u8], v: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(v).map_err(|e| ClusterError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        err: e.to_string(),
    })
}

impl Cluster {
    /// Connects, gets this host's lease and registers the host.
    pub fn connect(
        rt: tokio::runtime::Handle,
        cfg: StoreConfig,
        host: String,
        vtep: SocketAddr,
    ) -> Result<Cluster, ClusterError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(OP_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if cfg.ca.is_some() || cfg.cert.is_some() {
            let read = |p: &str| {
                std::fs::read(p).map_err(|err| ClusterError::Read {
                    path: p.to_string(),
                    err,
                })
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&cfg.cert, &cfg.key) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            opts = opts.with_tls(tls);
        }
        let endpoints = cfg.endpoints.clone();
        let unreachable = |reason: String| ClusterError::Unreachable {
            endpoints: cfg.endpoints.join(","),
            reason,
        };
        let client = rt
            .block_on(async {
                tokio::time::timeout(OP_TIMEOUT, Client::connect(endpoints, Some(opts))).await
            })
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let c = Cluster {
            rt,
            client,
            cfg,
            host,
            vtep,
            lease: Arc::new(AtomicI64::new(0)),
            healthy: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(AtomicU64::new(0)),
            keep_alives: Arc::new(AtomicU64::new(0)),
        };
        // etcd away at start: the daemon starts anyway; the keep-alive
        // takes a lease once it answers.
        if let Err(e) = c.new_lease() {
            tracing::warn!("cluster: {e} (retrying in the background)");
        }
        Ok(c)
    }

    /// Runs one request on the runtime, waiting at most [`OP_TIMEOUT`].
    fn run<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T, ClusterError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.run_uncounted(f)
    }

    /// [`Self::run`] without counting the request (the caller counts it).
    fn run_uncounted<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T, ClusterError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let fut = f(self.client.clone());
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(OP_TIMEOUT, fut).await });
        match r {
            Err(_) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(ClusterError::Timeout(OP_TIMEOUT))
            }
            Ok(Err(e)) => {
                let unavailable = matches!(
                    &e,
                    etcd_client::Error::GRpcStatus(s)
                        if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded
                ) || matches!(e, etcd_client::Error::TransportError(_));
                if unavailable {
                    self.healthy.store(false, Ordering::Relaxed);
                    let reason = match &e {
                        etcd_client::Error::GRpcStatus(s) => s.code().description().to_string(),
                        _ => "cannot connect".to_string(),
                    };
                    return Err(ClusterError::Unreachable {
                        endpoints: self.cfg.endpoints.join(","),
                        reason,
                    });
                }
                Err(e.into())
            }
            Ok(Ok(v)) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(v)
            }
        }
    }

    /// The store's endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.cfg.endpoints
    }

    /// Whether the last request reached etcd.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests made so far, lease renewals apart.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Lease renewals made so far.
    pub fn keep_alives(&self) -> u64 {
        self.keep_alives.load(Ordering::Relaxed)
    }

    /// The current lease id.
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Grants a new lease and registers this host under it. (After etcd
    /// was unreachable for longer than the TTL, the old lease is gone with
    /// every key it held: the caller registers its endpoints again.)
    pub fn new_lease(&self) -> Result<i64, ClusterError> {
        let r = self.run(|mut c| async move { c.lease_grant(LEASE_TTL, None).await })?;
        let id = r.id();
        self.lease.store(id, Ordering::Relaxed);
        let rec = serde_json::to_vec(&HostRecord { vtep: self.vtep }).expect("json");
        let k = key(&["hosts", &self.host]);
        self.run(
            |mut c| async move { c.put(k, rec, Some(PutOptions::new().with_lease(id))).await },
        )?;
        Ok(id)
    }

    /// Renews the lease once; `Ok(false)` when etcd no longer knows it.
    pub fn keep_alive(&self) -> Result<bool, ClusterError> {
        let id = self.lease();
        self.keep_alives.fetch_add(1, Ordering::Relaxed);
        let r = self.run_uncounted(|mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        })?;
        Ok(r.is_some_and(|m| m.ttl() > 0))
    }

    /// Revokes the lease (a clean stop: this host's endpoints go at once).
    pub fn revoke(&self) {
        let id = self.lease();
        let _ = self.run(|mut c| async move { c.lease_revoke(id).await });
    }

    /// Everything under the prefix, and the revision it was read at.
    pub fn snapshot(&self) -> Result<Snapshot, ClusterError> {
        let r =
            self.run(
                |mut c| async move { c.get(PREFIX, Some(GetOptions::new().with_prefix())).await },
            )?;
        let mut s = Snapshot {
            revision: r.header().map(|h| h.revision()).unwrap_or(0),
            ..Default::default()
        };
        for kv in r.kvs() {
            let k = kv.key_str().unwrap_or_default();
            let rest = &k[PREFIX.len().min(k.len())..];
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                ["hosts", h] => {
                    s.hosts.insert(h.to_string(), decode(kv.key(), kv.value())?);
                }
                ["networks", id] => {
                    s.networks
                        .insert(id.to_string(), decode(kv.key(), kv.value())?);
                }
                ["endpoints", _, _] => s.endpoints.push(decode(kv.key(), kv.value())?),
                ["keys", id] => {
                    s.keys.insert(id.to_string(), decode(kv.key(), kv.value())?);
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// Creates an overlay network cluster-wide: its name and VNI claimed
    /// and its record written in one transaction. `vni`: the one asked
    /// for, else the first free from [`FIRST_VNI`]. Returns the VNI.
    pub fn create_network(&self, n: &Network, vni: Option<u32>) -> Result<u32, ClusterError> {
        let taken: Vec<u32> = {
            let r = self.run(|mut c| async move {
                c.get(
                    key(&["vnis", ""]),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            })?;
            r.kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse().ok())
                .collect()
        };
        let vni = match vni {
            Some(v) if taken.contains(&v) => return Err(ClusterError::VniInUse(v)),
            Some(v) => v,
            None => (FIRST_VNI..(1 << 24))
                .find(|v| !taken.contains(v))
                .ok_or(ClusterError::NoVni)?,
        };
        let mut rec = n.clone();
        rec.options.insert(VNI_OPTION.into(), vni.to_string());
        let (kn, kv, kr) = (
            key(&["netnames", &n.name]),
            key(&["vnis", &vni.to_string()]),
            key(&["networks", &n.id]),
        );
        let json = serde_json::to_vec(&rec).expect("json");
        let id = n.id.clone();
        let (kn2, kv2) = (kn.clone(), kv.clone());
        let r = self.run(|mut c| async move {
            c.txn(
                Txn::new()
                    .when([
                        Compare::create_revision(kn2, CompareOp::Equal, 0),
                        Compare::create_revision(kv2, CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(kn, id.clone(), None),
                        TxnOp::put(kv, id, None),
                        TxnOp::put(kr, json, None),
                    ]),
            )
            .await
        })?;
        if r.succeeded() {
            return Ok(vni);
        }
        // Which one was taken, for the message.
        let nk = key(&["netnames", &n.name]);
        let name_taken = self
            .run(|mut c| async move { c.get(nk, None).await })?
            .count()
            > 0;
        Err(if name_taken {
            ClusterError::NameInUse(n.name.clone())
        } else {
            ClusterError::VniInUse(vni)
        })
    }

    /// Removes an overlay network cluster-wide, refused while any host has
    /// an endpoint on it (checked in the same transaction).
    pub fn delete_network(&self, n: &Network) -> Result<(), ClusterError> {
        let eps = key(&["endpoints", &n.id, ""]);
        let eps2 = eps.clone();
        let users = self
            .run(|mut c| async move { c.get(eps2, Some(GetOptions::new().with_prefix())).await })?;
        if users.count() > 0 {
            let mut hosts: Vec<String> = users
                .kvs()
                .iter()
                .filter_map(|kv| decode::<EndpointRecord>(kv.key(), kv.value()).ok())
                .map(|e| e.host)
                .collect();
            hosts.sort();
            hosts.dedup();
            return Err(ClusterError::InUse {
                name: n.name.clone(),
                hosts: hosts.join(", "),
            });
        }
        let vni = n.options.get(VNI_OPTION).cloned().unwrap_or_default();
        let (kn, kv, kr, ki, kk) = (
            key(&["netnames", &n.name]),
            key(&["vnis", &vni]),
            key(&["networks", &n.id]),
            key(&["ipam", &n.id, ""]),
            key(&["keys", &n.id]),
        );
        let r = self.run(|mut c| async move {
            // (Still no endpoint: the range is empty.)
            let end = prefix_end(&eps);
            c.txn(
                Txn::new()
                    .when([Compare::version(eps, CompareOp::Equal, 0).with_range(end)])
                    .and_then([
                        TxnOp::delete(kn, None),
                        TxnOp::delete(kv, None),
                        TxnOp::delete(kr, None),
                        TxnOp::delete(ki, Some(etcd_client::DeleteOptions::new().with_prefix())),
                        TxnOp::delete(kk, None),
                    ]),
            )
            .await
        })?;
        if !r.succeeded() {
            return Err(ClusterError::InUse {
                name: n.name.clone(),
                hosts: "(a host that joined a moment ago)".into(),
            });
        }
        Ok(())
    }

    /// Allocates an address of `n`'s pool for endpoint `owner` under this
    /// host's lease: `requested` if given and free, else the first free
    /// one after the lowest (network, gateway, broadcast and auxiliary
    /// addresses excluded). Each try is a create-if-absent transaction.
    pub fn allocate(
        &self,
        n: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, ClusterError> {
        let pool = n.pools.first().ok_or(ClusterError::Exhausted)?;
        let candidates: Box<dyn Iterator<Item = Ipv4Addr>> = match requested {
            Some(a) => Box::new(std::iter::once(a)),
            None => {
                let used: BTreeSet<Ipv4Addr> = self.used(&n.id)?;
                let range = pool.ip_range.unwrap_or(pool.subnet);
                Box::new(
                    (u32::from(range.network())..=u32::from(range.broadcast()))
                        .map(Ipv4Addr::from)
                        .filter(move |a| !crate::ipam::is_reserved(pool, *a) && !used.contains(a)),
                )
            }
        };
        match self.claim(&n.id, candidates, owner)? {
            Claim::Got(a) => Ok(a),
            Claim::Taken(a) if requested.is_some() => Err(ClusterError::AddrInUse(a)),
            _ => Err(ClusterError::Exhausted),
        }
    }

    /// Allocates an IPv6 address of `n`'s IPv6 pool for endpoint `owner`,
    /// as [`Cluster::allocate`] does an IPv4 one: under the same prefix
    /// (`ipam/NET/ADDR`, the address in its text form), so the same lease,
    /// watch and network removal cover it; candidates from
    /// [`crate::ipam::cluster_candidates6`].
    pub fn allocate6(
        &self,
        n: &Network,
        requested: Option<Ipv6Addr>,
        owner: &str,
    ) -> Result<Ipv6Addr, ClusterError> {
        let pool = n.pools6.first().ok_or(ClusterError::Exhausted6)?;
        let used: BTreeSet<Ipv6Addr> = match requested {
            Some(_) => BTreeSet::new(),
            None => self.used(&n.id)?,
        };
        let candidates = crate::ipam::cluster_candidates6(pool, &used, requested);
        match self.claim(&n.id, candidates, owner)? {
            Claim::Got(a) => Ok(a),
            Claim::Taken(a) if requested.is_some() => Err(ClusterError::Addr6InUse(a)),
            _ => Err(ClusterError::Exhausted6),
        }
    }

    /// The addresses of one family held in network `network_id`.
    fn used<A: std::str::FromStr + Ord>(
        &self,
        network_id: &str,
    ) -> Result<BTreeSet<A>, ClusterError> {
        let prefix = key(&["ipam", network_id, ""]);
        Ok(self
            .run(|mut c| async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            })?
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse().ok())
            .collect())
    }

    /// Claims the first of `candidates` (at most [`MAX_CLAIM_TRIES`]) that
    /// no host holds, each with a create-if-absent transaction under this
    /// host's lease.
    fn claim<A: std::fmt::Display + Copy>(
        &self,
        network_id: &str,
        candidates: impl Iterator<Item = A>,
        owner: &str,
    ) -> Result<Claim<A>, ClusterError> {
        let lease = self.lease();
        let prefix = key(&["ipam", network_id, ""]);
        let mut last = Claim::None;
        for a in candidates.take(MAX_CLAIM_TRIES) {
            let k = format!("{prefix}{a}");
            let owner = owner.to_string();
            let r = self.run(|mut c| async move {
                c.txn(
                    Txn::new()
                        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            k,
                            owner,
                            Some(PutOptions::new().with_lease(lease)),
                        )]),
                )
                .await
            })?;
            if r.succeeded() {
                return Ok(Claim::Got(a));
            }
            last = Claim::Taken(a);
        }
        Ok(last)
    }

    /// Frees an address (either family).
    pub fn release(&self, network_id: &str, a: impl Into<IpAddr>) -> Result<(), ClusterError> {
        let k = key(&["ipam", network_id, &a.into().to_string()]);
        self.run(|mut c| async move { c.delete(k, None).await })
            .map(drop)
    }

    /// Registers (or refreshes) an endpoint under this host's lease, and
    /// its addresses too (after a restart the lease may be new).
    pub fn put_endpoint(&self, e: &EndpointRecord) -> Result<(), ClusterError> {
        let lease = self.lease();
        let k = key(&["endpoints", &e.network_id, &e.endpoint_id]);
        let addrs: Vec<String> = std::iter::once(e.ipv4.to_string())
            .chain(e.ipv6.map(|a| a.to_string()))
            .map(|a| key(&["ipam", &e.network_id, &a]))
            .collect();
        let json = serde_json::to_vec(e).expect("json");
        let id = e.endpoint_id.clone();
        self.run(|mut c| async move {
            let opts = || Some(PutOptions::new().with_lease(lease));
            let mut ops = vec![TxnOp::put(k, json, opts())];
            ops.extend(
                addrs
                    .into_iter()
                    .map(|ka| TxnOp::put(ka, id.clone(), opts())),
            );
            c.txn(Txn::new().and_then(ops)).await
        })
        .map(drop)
    }

    /// Unregisters an endpoint.
    pub fn delete_endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<(), ClusterError> {
        let k = key(&["endpoints", network_id, endpoint_id]);
        self.run(|mut c| async move { c.delete(k, None).await })
            .map(drop)
    }

    /// Writes an encrypted network's key ring if it is still at
    /// `expected_rev` (0: absent): one rotation wins when several hosts
    /// try at once. Returns whether it was written.
    pub fn put_keys(
        &self,
        network_id: &str,
        ring: &KeyRing,
        expected_rev: i64,
    ) -> Result<bool, ClusterError> {
        let k = key(&["keys", network_id]);
        let json = serde_json::to_vec(ring).expect("json");
        let r = self.run(|mut c| async move {
            c.txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        k.clone(),
                        CompareOp::Equal,
                        expected_rev,
                    )])
                    .and_then([TxnOp::put(k, json, None)]),
            )
            .await
        })?;
        Ok(r.succeeded())
    }

    /// A network's key ring and its revision (0 when absent).
    pub fn keys(&self, network_id: &str) -> Result<(Option<KeyRing>, i64), ClusterError> {
        let k = key(&["keys", network_id]);
        let r = self.run(|mut c| async move { c.get(k, None).await })?;
        match r.kvs().first() {
            None => Ok((None, 0)),
            Some(kv) => Ok((Some(decode(kv.key(), kv.value())?), kv.mod_revision())),
        }
    }

    /// Watches the prefix from `revision`; calls `on_change` (on the
    /// runtime) with each batch of changes, and returns when the watch
    /// breaks (etcd unreachable, compaction): the caller resynchronises.
    pub async fn watch(
        &self,
        revision: i64,
        mut on_change: impl FnMut(Vec<Change>),
    ) -> Result<(), ClusterError> {
        let mut c = self.client.clone();
        let mut stream = c
            .watch(
                PREFIX,
                Some(
                    etcd_client::WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Ok(());
            }
            let changes: Vec<Change> = resp
                .events()
                .iter()
                .map(|ev| {
                    let Some(kv) = ev.kv() else {
                        return Change::Other;
                    };
                    let k = kv.key_str().unwrap_or_default();
                    let rest = k.strip_prefix(PREFIX).unwrap_or_default();
                    match (
                        ev.event_type(),
                        rest.split('/').collect::<Vec<_>>().as_slice(),
                    ) {
                        (etcd_client::EventType::Put, ["endpoints", _, _]) => {
                            match decode::<EndpointRecord>(kv.key(), kv.value()) {
                                Ok(e) => Change::EndpointPut(e),
                                Err(_) => Change::Other,
                            }
                        }
                        (etcd_client::EventType::Delete, ["endpoints", net, ep]) => {
                            Change::EndpointGone {
                                network_id: net.to_string(),
                                endpoint_id: ep.to_string(),
                            }
                        }
                        // Addresses change with every endpoint: nothing to do.
                        (_, ["ipam", ..]) => Change::None,
                        _ => Change::Other,
                    }
                })
                .collect();
            if !changes.is_empty() {
                on_change(changes);
            }
        }
        Ok(())
    }
}

/// One change the watch saw. Endpoints come and go most often (every
/// container start and stop, every lease that expires): they are applied
/// one by one; anything else makes the host read the whole state again.
#[derive(Clone, Debug)]
pub enum Change {
    EndpointPut(EndpointRecord),
    EndpointGone {
        network_id: String,
        endpoint_id: String,
    },
    /// Needs nothing from this host.
    None,
    /// A network, host or key ring changed.
    Other,
}

/// The option that carries an overlay's VNI (Docker's name).
pub const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// The end of the range of keys starting with `prefix` (etcd's
/// convention: the prefix with its last byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options() {
        let c = StoreConfig::parse("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap();
        assert_eq!(
            c.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        let c = StoreConfig::parse("etcds://e:2379").unwrap();
        assert_eq!(c.endpoints, ["https://e:2379"]);
        for bad in [
            "",
            "consul://a:1",
            "etcd://",
            "etcd://a",
            "etcd://a:0",
            "etcd://a:x",
        ] {
            assert!(StoreConfig::parse(bad).is_err(), "{bad}");
        }
        let mut c = StoreConfig::default();
        c.set_opt("kv.cacertfile=/ca.pem").unwrap();
        assert_eq!(c.ca.as_deref(), Some("/ca.pem"));
        assert!(c.set_opt("kv.zzz=1").is_err());
        assert!(c.set_opt("novalue").is_err());
        assert_eq!(prefix_end("/a/b/"), b"/a/b0".to_vec());
    }

    #[test]
    fn records_without_ipv6_are_still_read() {
        // An endpoint record and a network record as a release before
        // dual-stack overlays wrote them.
        let old = r#"{"network_id":"n","endpoint_id":"e","host":"h","vtep":"192.0.2.1:4789",
            "mac":"02:42:0a:00:00:02","ipv4":"10.0.0.2","container_id":"c","name":"a",
            "hostname":"a","aliases":[]}"#;
        let e: EndpointRecord = serde_json::from_str(old).unwrap();
        assert_eq!((e.ipv4, e.ipv6), (Ipv4Addr::new(10, 0, 0, 2), None));
        let mut e2 = e.clone();
        e2.ipv6 = Some("2001:db8::2".parse().unwrap());
        let back: EndpointRecord =
            serde_json::from_slice(&serde_json::to_vec(&e2).unwrap()).unwrap();
        assert_eq!(back, e2);
        let net = r#"{"id":"n","name":"ov","driver":"overlay","created":"","internal":false,
            "attachable":true,"ingress":false,"enable_ipv6":false,"pools":[],
            "ipam_options":{},"options":{},"labels":{},"predefined":false}"#;
        let n: Network = serde_json::from_str(net).unwrap();
        assert!(n.pools6.is_empty());
    }
}

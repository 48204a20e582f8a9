//! The daemon's persisted state: an in-memory copy of every record, backed
//! by a redb file (`ROOT/state.redb`), one table per kind, JSON values.
//!
//! CONTRACT: every mutation goes through [`Store::transact`]: the closure
//! works on a copy of the state; if it fails, nothing changes (neither in
//! memory nor on disk); if it succeeds, the records that differ are written
//! in ONE redb write transaction (durable on commit, so `kill -9` loses
//! nothing committed) and only then does the in-memory copy change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use crate::model::{Container, DockerEndpoint, Endpoint, Network};

type Def = TableDefinition<'static, &'static str, &'static str>;
const NETWORKS: Def = TableDefinition::new("networks");
const ENDPOINTS: Def = TableDefinition::new("endpoints");
const ALLOCATIONS: Def = TableDefinition::new("ipam");
const CONTAINERS: Def = TableDefinition::new("containers");
const OPTIONS: Def = TableDefinition::new("options");
const DOCKER_ENDPOINTS: Def = TableDefinition::new("docker_endpoints");

/// Errors of the store; messages name the file or record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("state store: {0}")]
    Redb(String),
    #[error("corrupt record {table}/{key} in the state store: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

/// Everything the daemon persists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub networks: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<String, Endpoint>,
    /// IPAM allocations: `NETWORK_ID/IP` -> endpoint id.
    pub allocations: BTreeMap<String, String>,
    pub containers: BTreeMap<String, Container>,
    /// Daemon options and other small values (JSON).
    pub options: BTreeMap<String, String>,
    /// Endpoints dockerd made through the driver plugin, by endpoint id.
    pub docker: BTreeMap<String, DockerEndpoint>,
}

fn alloc_key(network_id: &str, ip: Ipv4Addr) -> String {
    format!("{network_id}/{ip}")
}

impl State {
    /// Addresses in use on a network.
    pub fn used_addresses(&self, network_id: &str) -> BTreeSet<Ipv4Addr> {
        let prefix = format!("{network_id}/");
        self.allocations
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| k[prefix.len()..].parse().ok())
            .collect()
    }
    /// Who holds an address.
    pub fn address_owner(&self, network_id: &str, ip: Ipv4Addr) -> Option<&str> {
        self.allocations
            .get(&alloc_key(network_id, ip))
            .map(String::as_str)
    }
    pub fn allocate(&mut self, network_id: &str, ip: Ipv4Addr, owner: &str) {
        self.allocations
            .insert(alloc_key(network_id, ip), owner.to_string());
    }
    pub fn release(&mut self, network_id: &str, ip: Ipv4Addr) {
        self.allocations.remove(&alloc_key(network_id, ip));
    }
    /// The last dynamically allocated address of a network (serial IPAM).
    pub fn last_allocated(&self, network_id: &str) -> Option<Ipv4Addr> {
        self.options
            .get(&format!("ipam.last/{network_id}"))
            .and_then(|v| v.parse().ok())
    }
    pub fn set_last_allocated(&mut self, network_id: &str, ip: Ipv4Addr) {
        self.options
            .insert(format!("ipam.last/{network_id}"), ip.to_string());
    }
    /// Forgets a removed network's IPAM bookkeeping.
    pub fn forget_network(&mut self, network_id: &str) {
        self.options.remove(&format!("ipam.last/{network_id}"));
        let prefix = format!("{network_id}/");
        self.allocations.retain(|k, _| !k.starts_with(&prefix));
    }
    /// Endpoints on a network.
    pub fn network_endpoints<'a>(
        &'a self,
        network_id: &'a str,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .values()
            .filter(move |e| e.network_id == network_id)
    }
}

/// The state and its file.
pub struct Store {
    db: Database,
    state: State,
}

impl Store {
    /// Opens (or creates) the store and loads every record.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // Make sure the tables exist so that reads never fail on a new file.
        let tx = db.begin_write().map_err(redb_err)?;
        for def in [
            NETWORKS,
            ENDPOINTS,
            ALLOCATIONS,
            CONTAINERS,
            OPTIONS,
            DOCKER_ENDPOINTS,
        ] {
            tx.open_table(def).map_err(redb_err)?;
        }
        tx.commit().map_err(redb_err)?;
        let tx = db.begin_read().map_err(redb_err)?;
        let read = |def: Def, name: &'static str| -> Result<BTreeMap<String, String>, StoreError> {
            let t = tx.open_table(def).map_err(redb_err)?;
            let mut out = BTreeMap::new();
            for row in t.iter().map_err(redb_err)? {
                let (k, v) = row.map_err(redb_err)?;
                out.insert(k.value().to_string(), v.value().to_string());
            }
            let _ = name;
            Ok(out)
        };
        let mut endpoints = read(ENDPOINTS, "endpoints")?;
        for v in endpoints.values_mut() {
            migrate_endpoint(v);
        }
        let state = State {
            networks: decode(read(NETWORKS, "networks")?, "networks")?,
            endpoints: decode(endpoints, "endpoints")?,
            allocations: read(ALLOCATIONS, "ipam")?,
            containers: decode(read(CONTAINERS, "containers")?, "containers")?,
            options: read(OPTIONS, "options")?,
            docker: decode(
                read(DOCKER_ENDPOINTS, "docker_endpoints")?,
                "docker_endpoints",
            )?,
        };
        Ok(Store { db, state })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Runs `f` on a copy of the state and commits what it changed, all or
    /// nothing (see the module doc).
    pub fn transact<R, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut State) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut next = self.prepare();
        let r = f(&mut next)?;
        self.commit(next)?;
        Ok(r)
    }

    /// A copy of the state to change and then [`Store::commit`] (for
    /// operations with side effects between validation and commit: those
    /// are undone by the caller if the commit fails). Dropping it aborts.
    pub fn prepare(&self) -> State {
        self.state.clone()
    }

    /// Writes what differs between the current state and `next` in one
    /// transaction, then makes `next` current. On error nothing changed.
    pub fn commit(&mut self, next: State) -> Result<(), StoreError> {
        if next != self.state {
            self.write(&next)?;
            self.state = next;
        }
        Ok(())
    }

    fn write(&self, next: &State) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        {
            diff(&tx, NETWORKS, &self.state.networks, &next.networks)?;
            diff(&tx, ENDPOINTS, &self.state.endpoints, &next.endpoints)?;
            diff_with(
                &tx,
                ALLOCATIONS,
                &self.state.allocations,
                &next.allocations,
                |v| Ok(v.clone()),
            )?;
            diff(&tx, CONTAINERS, &self.state.containers, &next.containers)?;
            diff_with(&tx, OPTIONS, &self.state.options, &next.options, |v| {
                Ok(v.clone())
            })?;
            diff(&tx, DOCKER_ENDPOINTS, &self.state.docker, &next.docker)?;
        }
        tx.commit().map_err(redb_err)
    }
}

/// Endpoint records written before endpoints had owners name their
/// container as `container_id`: rewrite them as `owner` (in memory; the
/// record is written back in the new form with its next change).
fn migrate_endpoint(raw: &mut String) {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str::<serde_json::Value>(raw)
    else {
        return;
    };
    if m.contains_key("owner") {
        return;
    }
    if let Some(id) = m.remove("container_id") {
        m.insert(
            "owner".into(),
            serde_json::json!({"kind": "container", "id": id}),
        );
        *raw = serde_json::Value::Object(m).to_string();
    }
}

fn decode<T: DeserializeOwned>(
    raw: BTreeMap<String, String>,
    table: &'static str,
) -> Result<BTreeMap<String, T>, StoreError> {
    raw.into_iter()
        .map(|(k, v)| match serde_json::from_str(&v) {
            Ok(t) => Ok((k, t)),
            Err(source) => Err(StoreError::Corrupt {
                table,
                key: k,
                source,
            }),
        })
        .collect()
}

/// Writes to `def` only what changed from `old` to `new`, each value
/// stored as `encode(value)`.
fn diff_with<T: PartialEq>(
    tx: &redb::WriteTransaction,
    def: Def,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    encode: impl Fn(&T) -> Result<String, StoreError>,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(def).map_err(redb_err)?;
    for k in old.keys() {
        if !new.contains_key(k) {
            t.remove(k.as_str()).map_err(redb_err)?;
        }
    }
    for (k, v) in new {
        if old.get(k) != Some(v) {
            t.insert(k.as_str(), encode(v)?.as_str())
                .map_err(redb_err)?;
        }
    }
    Ok(())
}

/// [`diff_with`] for values stored as JSON.
fn diff<T: Serialize + PartialEq>(
    tx: &redb::WriteTransaction,
    def: Def,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> Result<(), StoreError> {
    diff_with(tx, def, old, new, |v| {
        serde_json::to_string(v).map_err(redb_err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Network, Pool};

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tapnet-state-{}", crate::model::new_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn net(name: &str) -> Network {
        Network {
            id: crate::model::new_id(),
            name: name.into(),
            driver: crate::drivers::DriverKind::Bridge,
            created: crate::model::now_rfc3339(),
            internal: false,
            attachable: false,
            ingress: false,
            enable_ipv6: false,
            pools: vec![Pool {
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: "10.0.0.1".parse().unwrap(),
                ip_range: None,
                aux: BTreeMap::new(),
            }],
            pools6: vec![],
            ipam_options: BTreeMap::new(),
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            predefined: false,
        }
    }

    #[derive(Debug)]
    struct Failed;
    impl From<StoreError> for Failed {
        fn from(_: StoreError) -> Failed {
            Failed
        }
    }

    #[test]
    fn commit_and_reload() {
        let dir = tmp();
        let path = dir.join("state.redb");
        let n = net("a");
        {
            let mut s = Store::open(&path).unwrap();
            s.transact(|st| {
                st.networks.insert(n.id.clone(), n.clone());
                st.allocate(&n.id, "10.0.0.2".parse().unwrap(), "ep1");
                st.options.insert("k".into(), "\"v\"".into());
                Ok::<_, Failed>(())
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.state().networks.get(&n.id), Some(&n));
        assert_eq!(
            s.state()
                .used_addresses(&n.id)
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["10.0.0.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            s.state().address_owner(&n.id, "10.0.0.2".parse().unwrap()),
            Some("ep1")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_transaction_changes_nothing() {
        let dir = tmp();
        let path = dir.join("state.redb");
        let a = net("a");
        let b = net("b");
        {
            let mut s = Store::open(&path).unwrap();
            s.transact(|st| {
                st.networks.insert(a.id.clone(), a.clone());
                Ok::<_, Failed>(())
            })
            .unwrap();
            let before = s.state().clone();
            let r: Result<(), Failed> = s.transact(|st| {
                st.networks.insert(b.id.clone(), b.clone());
                st.networks.remove(&a.id);
                st.allocate(&b.id, "10.0.0.9".parse().unwrap(), "x");
                Err(Failed)
            });
            assert!(r.is_err());
            assert_eq!(s.state(), &before);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.state().networks.len(), 1);
        assert!(s.state().networks.contains_key(&a.id));
        assert!(s.state().allocations.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn old_endpoint_records_get_an_owner() {
        let mut raw = r#"{"id":"e","network_id":"n","container_id":"c","ifname":"eth0","mac":"02:00:00:00:00:01","ipv4":"10.0.0.2/24","gateway":"10.0.0.1","aliases":[],"links":[],"mtu":1500,"static_ip":false}"#.to_string();
        migrate_endpoint(&mut raw);
        let e: crate::model::Endpoint = serde_json::from_str(&raw).unwrap();
        assert_eq!(e.owner.container(), Some("c"));
        assert_eq!(e.netns, None);
    }

    #[test]
    fn removals_persist() {
        let dir = tmp();
        let path = dir.join("state.redb");
        let a = net("a");
        {
            let mut s = Store::open(&path).unwrap();
            s.transact(|st| {
                st.networks.insert(a.id.clone(), a.clone());
                st.allocate(&a.id, "10.0.0.2".parse().unwrap(), "e");
                Ok::<_, Failed>(())
            })
            .unwrap();
            s.transact(|st| {
                st.networks.remove(&a.id);
                st.release(&a.id, "10.0.0.2".parse().unwrap());
                Ok::<_, Failed>(())
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.state(), &State::default());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! The daemon's core: the state store, the link to the dataplane, and the
//! network operations.
//!
//! Every change is a transaction through the whole stack: validate
//! everything on a copy of the state, apply the dataplane part (through the
//! network's driver), then commit the copy; a dataplane refusal drops the
//! copy (nothing is committed), and a failed commit undoes the dataplane
//! part.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::error::{FilterError, LookupError, NetworkError};
use super::types::*;
use crate::dataplane::{Dataplane, NetId, PortId};
use crate::drivers::{self, DriverKind};
use crate::model::*;
use crate::state::{State, Store};

/// Name of the default bridge's (virtual) interface, shown in its options.
pub const DEFAULT_BRIDGE_IFNAME: &str = "tapnet0";

/// The daemon's state and live objects. Lives behind one mutex.
pub struct Core {
    pub store: Store,
    pub dp: Dataplane,
    pub root: PathBuf,
    /// The API socket (hidden from containers, with `root`).
    pub socket: PathBuf,
    pub daemon_pid: i32,
    net_ids: HashMap<String, NetId>,
    next_net_id: NetId,
    /// Endpoint id -> dataplane port.
    pub(super) ports: HashMap<String, PortId>,
    /// Endpoints registered in the embedded DNS: id -> (network, container
    /// id, address).
    /// Per endpoint: where its names are registered, and its addresses.
    pub(super) dns_regs: HashMap<String, (NetId, String, Vec<std::net::IpAddr>)>,
    /// The cluster store, when this daemon is part of a cluster.
    pub cluster: Option<crate::cluster::Cluster>,
    /// What this host applied of the cluster's state.
    pub(super) applied: super::overlay::Applied,
}

impl Core {
    /// Loads the state, creates the predefined networks on first start,
    /// pushes every network into the dataplane, then recovers containers.
    pub fn new(
        store: Store,
        dp: Dataplane,
        root: PathBuf,
        socket: PathBuf,
        cluster: Option<crate::cluster::Cluster>,
    ) -> Result<Core, NetworkError> {
        let mut core = Core {
            cluster,
            applied: Default::default(),
            store,
            dp,
            root,
            socket,
            daemon_pid: std::process::id() as i32,
            net_ids: HashMap::new(),
            next_net_id: 1,
            ports: HashMap::new(),
            dns_regs: HashMap::new(),
        };
        core.ensure_predefined()?;
        let nets: Vec<Network> = core.store.state().networks.values().cloned().collect();
        for n in &nets {
            let id = core.alloc_net_id(&n.id);
            if let Err(e) = drivers::of(n).create(&core.dp, id, n) {
                tracing::error!("network {}: the dataplane refused it: {e}", n.name);
            }
        }
        core.recover_containers();
        core.recover_docker();
        if core.cluster.is_some() {
            if let Err(e) = core.cluster_sync() {
                tracing::warn!("cluster: {e} (retrying in the background)");
            }
        }
        Ok(core)
    }

    fn ensure_predefined(&mut self) -> Result<(), NetworkError> {
        self.store.transact(|st| {
            let has = |st: &State, name: &str| {
                st.networks.values().any(|n| n.predefined && n.name == name)
            };
            let mk = |name: &str, driver: DriverKind| Network {
                id: new_id(),
                name: name.into(),
                driver,
                created: now_rfc3339(),
                internal: false,
                attachable: false,
                ingress: false,
                enable_ipv6: false,
                pools: vec![],
                pools6: vec![],
                ipam_options: BTreeMap::new(),
                options: BTreeMap::new(),
                labels: BTreeMap::new(),
                predefined: true,
            };
            if !has(st, BRIDGE) {
                let mut n = mk(BRIDGE, DriverKind::Bridge);
                n.pools.push(Pool {
                    subnet: "172.17.0.0/16".parse().expect("constant"),
                    gateway: "172.17.0.1".parse().expect("constant"),
                    ip_range: None,
                    aux: BTreeMap::new(),
                });
                for (k, v) in [
                    (OPT_DEFAULT_BRIDGE, "true"),
                    (OPT_ICC, "true"),
                    (OPT_MASQ, "true"),
                    (OPT_HOST_BINDING, "0.0.0.0"),
                    (OPT_BRIDGE_NAME, DEFAULT_BRIDGE_IFNAME),
                    (OPT_MTU, "1500"),
                ] {
                    n.options.insert(k.into(), v.into());
                }
                st.networks.insert(n.id.clone(), n);
            }
            if !has(st, HOST) {
                let n = mk(HOST, DriverKind::Host);
                st.networks.insert(n.id.clone(), n);
            }
            if !has(st, NONE) {
                let n = mk(NONE, DriverKind::Null);
                st.networks.insert(n.id.clone(), n);
            }
            Ok::<_, NetworkError>(())
        })
    }

    /// Worker threads = TAP queues per port.
    pub(super) fn workers(&self) -> usize {
        self.dp.workers().max(1)
    }

    pub(super) fn dp_net_id(&self, network_id: &str) -> Option<NetId> {
        self.net_ids.get(network_id).copied()
    }

    /// The dataplane id of a network, made on first use.
    pub(super) fn alloc_net_id(&mut self, network_id: &str) -> NetId {
        if let Some(id) = self.net_ids.get(network_id) {
            return *id;
        }
        let id = self.next_net_id;
        self.next_net_id += 1;
        self.net_ids.insert(network_id.to_string(), id);
        id
    }

    /// The daemon's network id of a dataplane network.
    pub(super) fn forget_net_id(&mut self, network_id: &str) {
        self.net_ids.remove(network_id);
    }

    pub(super) fn network_of_dp(&self, id: NetId) -> Option<&str> {
        self.net_ids
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }

    // ---- networks --------------------------------------------------------

    pub fn list_networks(&self, filters: Option<&str>) -> Result<Vec<NetworkView>, NetworkError> {
        let filters = parse_filters(filters)?;
        for k in filters.keys() {
            if !["name", "id", "driver", "label", "type", "scope", "dangling"].contains(&k.as_str())
            {
                return Err(FilterError::Unknown(k.clone()).into());
            }
        }
        let st = self.store.state();
        let mut out: Vec<NetworkView> = st
            .networks
            .values()
            .filter(|n| network_matches(st, n, &filters))
            .map(|n| network_view(st, n, true))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn inspect_network(&self, key: &str) -> Result<NetworkView, NetworkError> {
        let st = self.store.state();
        let n = find_network(st, key)?;
        Ok(network_view(st, n, true))
    }

    /// `POST /networks/create`: the driver validates, the dataplane gets
    /// the network, then the store commits (undone when it cannot).
    pub fn create_network(
        &mut self,
        req: NetworkCreate,
    ) -> Result<NetworkCreateResponse, NetworkError> {
        let name = req.name.trim().to_string();
        if !valid_network_name(&name) {
            return Err(NetworkError::InvalidName(req.name.clone()));
        }
        let kind = DriverKind::parse(req.driver.as_deref().unwrap_or(""))?;
        let driver = drivers::driver(kind);
        let mut next = self.store.prepare();
        if next.networks.values().any(|n| n.name == name) {
            return Err(NetworkError::NameInUse(name));
        }
        let base = Network {
            id: new_id(),
            name: name.clone(),
            driver: kind,
            created: now_rfc3339(),
            internal: req.internal,
            attachable: req.attachable.unwrap_or(false),
            ingress: false,
            // Compose sends the option as well as (or instead of) the field.
            enable_ipv6: req.enable_ipv6.unwrap_or(false)
                || req
                    .options
                    .as_ref()
                    .and_then(|o| o.get(crate::model::OPT_ENABLE_IPV6))
                    .and_then(|v| crate::model::parse_bool(v))
                    .unwrap_or(false),
            pools: vec![],
            pools6: vec![],
            ipam_options: BTreeMap::new(),
            options: BTreeMap::new(),
            labels: req.labels.clone().unwrap_or_default(),
            predefined: false,
        };
        let mut network = driver.validate(&next, &req, base)?;
        let global = driver.scope() == crate::drivers::Scope::Global;
        if global {
            network = self.cluster_create(network)?;
        }
        let undo_global = |core: &Core, n: &Network| {
            if global {
                if let Err(e) = core.cluster_remove(n) {
                    tracing::error!("cluster: undo network {}: {e}", n.name);
                }
            }
        };
        next.networks.insert(network.id.clone(), network.clone());
        let id = self.alloc_net_id(&network.id);
        if let Err(source) = driver.create(&self.dp, id, &network) {
            self.net_ids.remove(&network.id);
            undo_global(self, &network);
            return Err(NetworkError::Dataplane { name, source });
        }
        if let Err(e) = self.store.commit(next) {
            let _ = driver.delete(&self.dp, id);
            self.net_ids.remove(&network.id);
            undo_global(self, &network);
            return Err(e.into());
        }
        let warning = String::new();
        Ok(NetworkCreateResponse {
            id: network.id,
            warning,
        })
    }

    /// Checks that a network may be removed (not predefined, no endpoint).
    fn removable(st: &State, n: &Network) -> Result<(), NetworkError> {
        if n.driver == DriverKind::Docker {
            return Err(NetworkError::DockerOwned {
                name: n.name.clone(),
            });
        }
        if n.predefined {
            return Err(NetworkError::Predefined {
                name: n.name.clone(),
            });
        }
        let active: Vec<&Endpoint> = st.network_endpoints(&n.id).collect();
        if !active.is_empty() {
            let users: Vec<String> = active
                .iter()
                .map(|e| match &e.owner {
                    Owner::Container { id } => st
                        .containers
                        .get(id)
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| id.clone()),
                    Owner::External { runtime, id } => format!("{runtime} endpoint {id}"),
                })
                .collect();
            return Err(NetworkError::ActiveEndpoints {
                name: n.name.clone(),
                id: n.id.clone(),
                users: users.join(", "),
            });
        }
        Ok(())
    }

    /// Removes networks from the dataplane then commits `next` (where they
    /// are gone); a refusal or a failed commit puts back what was removed.
    pub(super) fn remove_networks(
        &mut self,
        next: State,
        victims: &[Network],
    ) -> Result<(), NetworkError> {
        let mut removed: Vec<&Network> = vec![];
        let mut failed = None;
        for n in victims {
            let Some(id) = self.dp_net_id(&n.id) else {
                continue;
            };
            match drivers::of(n).delete(&self.dp, id) {
                Ok(()) => removed.push(n),
                Err(source) => {
                    failed = Some(NetworkError::Dataplane {
                        name: n.name.clone(),
                        source,
                    });
                    break;
                }
            }
        }
        let r = match failed {
            Some(e) => Err(e),
            None => self.store.commit(next).map_err(NetworkError::from),
        };
        match r {
            Ok(()) => {
                for n in victims {
                    self.net_ids.remove(&n.id);
                }
                Ok(())
            }
            Err(e) => {
                for n in removed {
                    if let Some(id) = self.dp_net_id(&n.id) {
                        let _ = drivers::of(n).create(&self.dp, id, n);
                    }
                }
                Err(e)
            }
        }
    }

    pub fn remove_network(&mut self, key: &str) -> Result<(), NetworkError> {
        let mut next = self.store.prepare();
        let n = find_network(&next, key)?.clone();
        Self::removable(&next, &n)?;
        if drivers::of(&n).scope() == crate::drivers::Scope::Global {
            // Refused while any host has an endpoint on it.
            self.cluster_remove(&n)?;
        }
        next.networks.remove(&n.id);
        next.forget_network(&n.id);
        self.remove_networks(next, &[n])
    }

    /// `POST /networks/prune`: removes the unused custom networks that
    /// Docker's prune filters (`until`, `label`, `label!`) select; any other
    /// filter, or a malformed one, is refused before anything is removed.
    pub fn prune_networks(&mut self, filters: Option<&str>) -> Result<PruneResponse, NetworkError> {
        let filters = parse_filters(filters)?;
        for k in filters.keys() {
            if !["until", "label", "label!"].contains(&k.as_str()) {
                return Err(FilterError::Unknown(k.clone()).into());
            }
        }
        let until = match filters.get("until").map(Vec::as_slice) {
            None | Some([]) => None,
            Some([u]) => Some(parse_until(u, chrono::Utc::now())?),
            Some(_) => return Err(FilterError::TwoUntil.into()),
        };
        let mut next = self.store.prepare();
        let victims: Vec<Network> = next
            .networks
            .values()
            .filter(|n| Self::removable(&next, n).is_ok())
            .filter(|n| match until {
                None => true,
                Some(t) => chrono::DateTime::parse_from_rfc3339(&n.created)
                    .is_ok_and(|c| c.with_timezone(&chrono::Utc) < t),
            })
            .filter(|n| prune_labels_match(&filters, &n.labels))
            .cloned()
            .collect();
        // A global network in use on another host is not pruned.
        let victims: Vec<Network> = victims
            .into_iter()
            .filter(|n| {
                drivers::of(n).scope() == crate::drivers::Scope::Local
                    || self.cluster_remove(n).is_ok()
            })
            .collect();
        for n in &victims {
            next.networks.remove(&n.id);
            next.forget_network(&n.id);
        }
        self.remove_networks(next, &victims)?;
        let mut names: Vec<String> = victims.into_iter().map(|n| n.name).collect();
        names.sort();
        Ok(PruneResponse {
            networks_deleted: names,
        })
    }
}

/// Docker's `filters` query parameter: `{"key":["v1","v2"]}` or
/// `{"key":{"v1":true}}`.
pub fn parse_filters(raw: Option<&str>) -> Result<BTreeMap<String, Vec<String>>, FilterError> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| FilterError::Malformed {
        raw: raw.to_string(),
        why: e.to_string(),
    })?;
    let obj = v.as_object().ok_or_else(|| FilterError::Malformed {
        raw: raw.to_string(),
        why: "not an object".into(),
    })?;
    for (k, vals) in obj {
        let list: Vec<String> = match vals {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(String::from))
                .collect::<Option<_>>()
                .ok_or_else(|| FilterError::Values(k.clone()))?,
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(_, on)| on.as_bool().unwrap_or(false))
                .map(|(x, _)| x.clone())
                .collect(),
            _ => return Err(FilterError::Values(k.clone())),
        };
        out.insert(k.clone(), list);
    }
    Ok(out)
}

/// Whether one `label` filter value (`KEY` or `KEY=VALUE`) matches.
fn label_matches(filter: &str, labels: &BTreeMap<String, String>) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).map(String::as_str) == Some(v),
        None => labels.contains_key(filter),
    }
}

/// Docker's prune rule: every `label` value matches, and not every
/// `label!` value does (when any is given).
fn prune_labels_match(
    f: &BTreeMap<String, Vec<String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let all = |k: &str| {
        f.get(k)
            .is_none_or(|vs| vs.iter().all(|v| label_matches(v, labels)))
    };
    let excluded = f.get("label!").is_some_and(|vs| !vs.is_empty()) && all("label!");
    all("label") && !excluded
}

/// Docker's `until` value: a Go duration before `now` (`90m`, `1h30m`,
/// `2.5h`), a Unix timestamp (`1700000000[.5]`), RFC 3339, or a date /
/// date-time without zone (taken as UTC).
pub fn parse_until(
    v: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, FilterError> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
    let bad = || FilterError::Until(v.to_string());
    if let Some(d) = parse_go_duration(v) {
        let d = chrono::Duration::from_std(d).map_err(|_| bad())?;
        return now.checked_sub_signed(d).ok_or_else(bad);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Some((secs, frac)) = v.split_once('.').or(Some((v, ""))) {
        if !secs.is_empty()
            && secs.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
            && frac.len() <= 9
        {
            let s: i64 = secs.parse().map_err(|_| bad())?;
            let ns: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}").parse().map_err(|_| bad())?
            };
            return Utc.timestamp_opt(s, ns).single().ok_or_else(bad);
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, f) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).ok_or_else(bad)?));
    }
    Err(bad())
}

/// Go's `time.ParseDuration` for non-negative values: one or more
/// `NUMBER[.FRACTION]UNIT` with units ns, us, µs, ms, s, m, h.
fn parse_go_duration(v: &str) -> Option<std::time::Duration> {
    let mut rest = v.strip_prefix('+').unwrap_or(v);
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(n);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let x: f64 = num.parse().ok()?;
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += x * scale;
        rest = tail;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

fn network_matches(st: &State, n: &Network, f: &BTreeMap<String, Vec<String>>) -> bool {
    f.iter().all(|(k, vals)| {
        if k == "label" {
            // Docker: every label filter must match.
            return vals.iter().all(|v| label_matches(v, &n.labels));
        }
        vals.is_empty()
            || vals.iter().any(|v| match k.as_str() {
                "name" => n.name.contains(v.as_str()),
                "id" => n.id.starts_with(v.as_str()),
                "driver" => n.driver.name() == v,
                "scope" => v == "local",
                "type" => (v == "builtin" && n.predefined) || (v == "custom" && !n.predefined),
                "dangling" => {
                    let dangling = !n.predefined && st.network_endpoints(&n.id).next().is_none();
                    parse_bool(v) == Some(dangling)
                }
                _ => false,
            })
    })
}

/// Finds a network by full id, then name, then unique id prefix.
pub fn find_network<'a>(st: &'a State, key: &str) -> Result<&'a Network, LookupError> {
    find_by_key(&st.networks, key, "network", |n| (&n.id, &n.name))
        .map_err(|e| e.unwrap_or_else(|| LookupError::Network(key.to_string())))
}

/// Docker's lookup of an object by full id, name, or unique id prefix.
/// `Err(None)`: nothing matched (callers word their own 404);
/// `Err(Some(_))`: the prefix is ambiguous.
pub fn find_by_key<'a, T>(
    map: &'a BTreeMap<String, T>,
    key: &str,
    what: &'static str,
    id_name: impl Fn(&T) -> (&String, &String),
) -> Result<&'a T, Option<LookupError>> {
    if let Some(v) = map.get(key) {
        return Ok(v);
    }
    if let Some(v) = map.values().find(|v| id_name(v).1 == key) {
        return Ok(v);
    }
    if key.is_empty() {
        return Err(None);
    }
    let mut m = map.values().filter(|v| id_name(v).0.starts_with(key));
    match (m.next(), m.count()) {
        (Some(v), 0) => Ok(v),
        (None, _) => Err(None),
        (Some(_), k) => Err(Some(LookupError::Ambiguous {
            what,
            key: key.to_string(),
            matches: k + 1,
        })),
    }
}

/// Docker's NetworkResource view of a network.
pub fn network_view(st: &State, n: &Network, with_containers: bool) -> NetworkView {
    let mut containers = BTreeMap::new();
    if with_containers {
        for e in st.network_endpoints(&n.id) {
            // Docker keys endpoints by container; an external runtime's
            // endpoint by its own id.
            let (key, name) = match &e.owner {
                Owner::Container { id } => (
                    id.clone(),
                    st.containers
                        .get(id)
                        .map(|c| c.name.clone())
                        .unwrap_or_default(),
                ),
                Owner::External { runtime, id } => {
                    (id.clone(), format!("{runtime}/{}", &id[..12.min(id.len())]))
                }
            };
            containers.insert(
                key,
                EndpointView {
                    name,
                    endpoint_id: e.id.clone(),
                    mac_address: e.mac.to_string(),
                    ipv4_address: e.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                    ipv6_address: e.ipv6.map(|a| a.to_string()).unwrap_or_default(),
                },
            );
        }
    }
    NetworkView {
        name: n.name.clone(),
        id: n.id.clone(),
        created: n.created.clone(),
        scope: drivers::of(n).scope().name().into(),
        driver: n.driver.name().to_string(),
        enable_ipv6: n.enable_ipv6,
        ipam: IpamView {
            driver: "default".into(),
            options: n.ipam_options.clone(),
            config: n
                .pools
                .iter()
                .map(|p| IpamConfigView {
                    subnet: p.subnet.to_string(),
                    ip_range: p.ip_range.map(|r| r.to_string()),
                    gateway: p.gateway.to_string(),
                    auxiliary_addresses: if p.aux.is_empty() {
                        None
                    } else {
                        Some(
                            p.aux
                                .iter()
                                .map(|(k, v)| (k.clone(), v.to_string()))
                                .collect(),
                        )
                    },
                })
                .chain(n.pools6.iter().map(|p| IpamConfigView {
                    subnet: p.subnet.to_string(),
                    ip_range: p.ip_range.map(|r| r.to_string()),
                    gateway: p.gateway.to_string(),
                    auxiliary_addresses: (!p.aux.is_empty()).then(|| {
                        p.aux
                            .iter()
                            .map(|(k, v)| (k.clone(), v.to_string()))
                            .collect()
                    }),
                }))
                .collect(),
        },
        internal: n.internal,
        attachable: n.attachable,
        ingress: n.ingress,
        config_from: ConfigFrom::default(),
        config_only: false,
        containers,
        options: n.options.clone(),
        labels: n.labels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_values() {
        use chrono::TimeZone;
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let at = |v: &str| parse_until(v, now).unwrap();
        assert_eq!(at("1h"), now - chrono::Duration::hours(1));
        assert_eq!(at("1h30m"), now - chrono::Duration::minutes(90));
        assert_eq!(at("2.5h"), now - chrono::Duration::minutes(150));
        assert_eq!(at("10s"), now - chrono::Duration::seconds(10));
        assert_eq!(at("0"), now);
        assert_eq!(
            at("1700000000"),
            chrono::Utc.timestamp_opt(1700000000, 0).unwrap()
        );
        assert_eq!(
            at("1700000000.5"),
            chrono::Utc.timestamp_opt(1700000000, 500_000_000).unwrap()
        );
        assert_eq!(
            at("2026-11-30T10:00:00Z"),
            chrono::Utc
                .with_ymd_and_hms(2026, 11, 30, 10, 0, 0)
                .unwrap()
        );
        assert_eq!(
            at("2026-11-30"),
            chrono::Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()
        );
        for bad in ["", "xx", "1x", "h", "-1h", "1.2.3s", "2026-13-01"] {
            assert!(parse_until(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prune_label_rules() {
        let labels: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        let f = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        assert!(prune_labels_match(&f(&[]), &labels));
        assert!(prune_labels_match(&f(&[("label", &["a"])]), &labels));
        assert!(prune_labels_match(&f(&[("label", &["a=1", "b"])]), &labels));
        assert!(!prune_labels_match(
            &f(&[("label", &["a=1", "c"])]),
            &labels
        ));
        assert!(!prune_labels_match(
            &f(&[("label", &["nomatch=1"])]),
            &labels
        ));
        assert!(!prune_labels_match(&f(&[("label!", &["a"])]), &labels));
        assert!(prune_labels_match(&f(&[("label!", &["c"])]), &labels));
        assert!(prune_labels_match(&f(&[("label!", &["a", "c"])]), &labels));
    }
}

//! The daemon's core: the state store, the link to the dataplane, and the
//! network operations. Every operation validates first and commits one
//! store transaction; dataplane changes follow a successful commit (or are
//! undone when the commit fails).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::types::*;
use super::ApiError;
use crate::dataplane::{Dataplane, NetId, NetworkSpec, PortId};
use crate::ipam::{self, PoolRequest};
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
    pub(super) dns_regs: HashMap<String, (NetId, String, Option<std::net::Ipv4Addr>)>,
}

impl Core {
    /// Loads the state, creates the predefined networks on first start and
    /// pushes every network into the dataplane, then recovers containers.
    pub fn new(
        store: Store,
        dp: Dataplane,
        root: PathBuf,
        socket: PathBuf,
    ) -> Result<Core, ApiError> {
        let mut core = Core {
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
            core.dp_add_network(n);
        }
        core.recover_containers();
        Ok(core)
    }

    fn ensure_predefined(&mut self) -> Result<(), ApiError> {
        self.store.transact(|st| {
            let has = |st: &State, name: &str| {
                st.networks.values().any(|n| n.predefined && n.name == name)
            };
            let mk = |name: &str, driver: &str| Network {
                id: new_id(),
                name: name.into(),
                driver: driver.into(),
                created: now_rfc3339(),
                internal: false,
                attachable: false,
                ingress: false,
                enable_ipv6: false,
                pools: vec![],
                ipam_options: BTreeMap::new(),
                options: BTreeMap::new(),
                labels: BTreeMap::new(),
                predefined: true,
            };
            if !has(st, BRIDGE) {
                let mut n = mk(BRIDGE, "bridge");
                n.pools.push(Pool {
                    subnet: "172.17.0.0/16".parse().unwrap(),
                    gateway: "172.17.0.1".parse().unwrap(),
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
                let n = mk(HOST, "host");
                st.networks.insert(n.id.clone(), n);
            }
            if !has(st, NONE) {
                let n = mk(NONE, "null");
                st.networks.insert(n.id.clone(), n);
            }
            Ok::<_, ApiError>(())
        })
    }

    pub(super) fn dp_net_id(&self, network_id: &str) -> Option<NetId> {
        self.net_ids.get(network_id).copied()
    }

    /// The daemon's network id of a dataplane network.
    pub(super) fn network_of_dp(&self, id: NetId) -> Option<&str> {
        self.net_ids
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }

    fn dp_add_network(&mut self, n: &Network) {
        if !n.is_bridge() {
            return;
        }
        let Some(pool) = n.pools.first() else { return };
        let id = *self.net_ids.entry(n.id.clone()).or_insert_with(|| {
            let id = self.next_net_id;
            self.next_net_id += 1;
            id
        });
        self.dp.add_network(
            id,
            NetworkSpec {
                name: n.name.clone(),
                subnet: pool.subnet,
                gateway: pool.gateway,
                icc: n.icc(),
                mtu: n.mtu(),
                internal: n.internal,
                masquerade: n.masquerade(),
                // Docker: no embedded DNS on the default bridge.
                dns: n.has_embedded_dns(),
            },
        );
    }

    fn dp_remove_network(&mut self, network_id: &str) {
        if let Some(id) = self.net_ids.remove(network_id) {
            self.dp.remove_network(id);
        }
    }

    // ---- networks --------------------------------------------------------

    pub fn list_networks(&self, filters: Option<&str>) -> Result<Vec<NetworkView>, ApiError> {
        let filters = parse_filters(filters)?;
        for k in filters.keys() {
            if !["name", "id", "driver", "label", "type", "scope", "dangling"].contains(&k.as_str())
            {
                return Err(ApiError::bad(format!("invalid filter '{k}'")));
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

    pub fn inspect_network(&self, key: &str) -> Result<NetworkView, ApiError> {
        let st = self.store.state();
        let n = find_network(st, key)?;
        Ok(network_view(st, n, true))
    }

    pub fn create_network(
        &mut self,
        req: NetworkCreate,
    ) -> Result<NetworkCreateResponse, ApiError> {
        let name = req.name.trim().to_string();
        if !valid_network_name(&name) {
            return Err(ApiError::bad(format!(
                "invalid network name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (at most 128 characters)",
                req.name
            )));
        }
        let driver = req.driver.clone().filter(|d| !d.is_empty());
        let driver = driver.as_deref().unwrap_or("bridge");
        let network = self.store.transact(|st| {
            if st.networks.values().any(|n| n.name == name) {
                return Err(ApiError::conflict(format!(
                    "network with name {name} already exists"
                )));
            }
            match driver {
                "bridge" => {}
                "host" | "null" => {
                    return Err(ApiError::forbidden(format!(
                        "only one instance of \"{driver}\" network is allowed"
                    )))
                }
                d => return Err(ApiError::bad(format!("driver {d} is not supported yet"))),
            }
            let ipam_req = req.ipam.clone().unwrap_or_default();
            if let Some(d) = ipam_req.driver.as_deref() {
                if !d.is_empty() && d != "default" {
                    return Err(ApiError::bad(format!(
                        "IPAM driver {d} is not supported (only \"default\")"
                    )));
                }
            }
            let mut configs: Vec<IpamConfigReq> = ipam_req.config.clone().unwrap_or_default();
            if configs
                .iter()
                .any(|c| c.subnet.as_deref().unwrap_or("").contains(':'))
            {
                return Err(ApiError::bad("IPv6 subnets are not supported yet"));
            }
            if configs.len() > 1 {
                return Err(ApiError::bad(
                    "only one IPv4 subnet per network is supported",
                ));
            }
            let c = configs.pop().unwrap_or_default();
            let used: Vec<(String, Ipv4Net)> = st
                .networks
                .values()
                .flat_map(|n| n.pools.iter().map(move |p| (n.name.clone(), p.subnet)))
                .collect();
            let used_nets: Vec<Ipv4Net> = used.iter().map(|(_, s)| *s).collect();
            let pool = ipam::make_pool(
                &PoolRequest {
                    subnet: c.subnet.clone(),
                    ip_range: c.ip_range.clone(),
                    gateway: c.gateway.clone(),
                    aux: c.auxiliary_addresses.clone().unwrap_or_default(),
                },
                &used_nets,
            )
            .map_err(|e| ApiError::bad(e.to_string()))?;
            if let Some((other, s)) = used.iter().find(|(_, s)| ipam::overlaps(s, &pool.subnet)) {
                return Err(ApiError::bad(format!(
                    "subnet {} overlaps with network \"{other}\" ({s})",
                    pool.subnet
                )));
            }
            let options = req.options.clone().unwrap_or_default();
            validate_bridge_options(&options)?;
            if let Some(b) = options.get(OPT_BRIDGE_NAME) {
                if let Some(other) = st
                    .networks
                    .values()
                    .find(|n| n.options.get(OPT_BRIDGE_NAME) == Some(b))
                {
                    return Err(ApiError::conflict(format!(
                        "bridge name {b} is already used by network \"{}\"",
                        other.name
                    )));
                }
            }
            let n = Network {
                id: new_id(),
                name: name.clone(),
                driver: "bridge".into(),
                created: now_rfc3339(),
                internal: req.internal,
                attachable: req.attachable,
                ingress: false,
                enable_ipv6: req.enable_ipv6.unwrap_or(false),
                pools: vec![pool],
                ipam_options: ipam_req.options.clone().unwrap_or_default(),
                options,
                labels: req.labels.clone().unwrap_or_default(),
                predefined: false,
            };
            if req.ingress {
                return Err(ApiError::bad("ingress networks are not supported"));
            }
            st.networks.insert(n.id.clone(), n.clone());
            Ok(n)
        })?;
        self.dp_add_network(&network);
        let warning = if network.enable_ipv6 {
            "IPv6 is not supported yet: the network is IPv4 only".to_string()
        } else {
            String::new()
        };
        Ok(NetworkCreateResponse {
            id: network.id,
            warning,
        })
    }

    pub fn remove_network(&mut self, key: &str) -> Result<(), ApiError> {
        let id = self.store.transact(|st| {
            let n = find_network(st, key)?.clone();
            if n.predefined {
                return Err(ApiError::forbidden(format!(
                    "{} is a pre-defined network and cannot be removed",
                    n.name
                )));
            }
            let active: Vec<&Endpoint> = st.network_endpoints(&n.id).collect();
            if !active.is_empty() {
                let names: Vec<String> = active
                    .iter()
                    .map(|e| {
                        st.containers
                            .get(&e.container_id)
                            .map(|c| c.name.clone())
                            .unwrap_or_else(|| e.container_id.clone())
                    })
                    .collect();
                return Err(ApiError::forbidden(format!(
                    "error while removing network: network {} id {} has active endpoints ({})",
                    n.name,
                    n.id,
                    names.join(", ")
                )));
            }
            st.networks.remove(&n.id);
            st.forget_network(&n.id);
            Ok(n.id)
        })?;
        self.dp_remove_network(&id);
        Ok(())
    }

    /// `POST /networks/prune`: removes the unused custom networks that
    /// Docker's prune filters (`until`, `label`, `label!`) select; any other
    /// filter, or a malformed one, is refused before anything is removed.
    pub fn prune_networks(&mut self, filters: Option<&str>) -> Result<PruneResponse, ApiError> {
        let filters = parse_filters(filters)?;
        for k in filters.keys() {
            if !["until", "label", "label!"].contains(&k.as_str()) {
                return Err(ApiError::bad(format!("invalid filter '{k}'")));
            }
        }
        let until = match filters.get("until").map(Vec::as_slice) {
            None | Some([]) => None,
            Some([u]) => Some(parse_until(u, chrono::Utc::now())?),
            Some(_) => return Err(ApiError::bad("more than one until filter specified")),
        };
        let removed = self.store.transact(|st| {
            let victims: Vec<Network> = st
                .networks
                .values()
                .filter(|n| !n.predefined && st.network_endpoints(&n.id).next().is_none())
                .filter(|n| match until {
                    None => true,
                    Some(t) => chrono::DateTime::parse_from_rfc3339(&n.created)
                        .is_ok_and(|c| c.with_timezone(&chrono::Utc) < t),
                })
                .filter(|n| prune_labels_match(&filters, &n.labels))
                .cloned()
                .collect();
            for n in &victims {
                st.networks.remove(&n.id);
                st.forget_network(&n.id);
            }
            Ok::<_, ApiError>(victims)
        })?;
        for n in &removed {
            self.dp_remove_network(&n.id);
        }
        let mut names: Vec<String> = removed.into_iter().map(|n| n.name).collect();
        names.sort();
        Ok(PruneResponse {
            networks_deleted: names,
        })
    }
}

/// Docker's `filters` query parameter: `{"key":["v1","v2"]}` or
/// `{"key":{"v1":true}}`.
pub fn parse_filters(raw: Option<&str>) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::bad(format!("invalid filters {raw:?}: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad(format!("invalid filters {raw:?}: not an object")))?;
    for (k, vals) in obj {
        let list: Vec<String> = match vals {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(String::from))
                .collect::<Option<_>>()
                .ok_or_else(|| ApiError::bad(format!("invalid filter values for '{k}'")))?,
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(_, on)| on.as_bool().unwrap_or(false))
                .map(|(x, _)| x.clone())
                .collect(),
            _ => return Err(ApiError::bad(format!("invalid filter values for '{k}'"))),
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
) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
    let bad = || {
        ApiError::bad(format!(
            "invalid until filter {v:?}: expected a duration (10m, 1h30m), a Unix timestamp or an RFC 3339 time"
        ))
    };
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
                "driver" => n.driver == *v,
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
pub fn find_network<'a>(st: &'a State, key: &str) -> Result<&'a Network, ApiError> {
    find_by_key(&st.networks, key, "network", |n| (&n.id, &n.name))
        .map_err(|e| e.unwrap_or_else(|| ApiError::not_found(format!("network {key} not found"))))
}

/// Docker's lookup of an object by full id, name, or unique id prefix.
/// `Err(None)`: nothing matched (callers word their own 404);
/// `Err(Some(_))`: the prefix is ambiguous.
pub fn find_by_key<'a, T>(
    map: &'a BTreeMap<String, T>,
    key: &str,
    what: &str,
    id_name: impl Fn(&T) -> (&String, &String),
) -> Result<&'a T, Option<ApiError>> {
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
        (Some(_), k) => Err(Some(ApiError::bad(format!(
            "{what} {key} is ambiguous ({} matches found based on ID prefix)",
            k + 1
        )))),
    }
}

fn validate_bridge_options(opts: &Map) -> Result<(), ApiError> {
    for (k, v) in opts {
        let bad = |why: &str| ApiError::bad(format!("invalid value {v:?} for option {k}: {why}"));
        match k.as_str() {
            OPT_ICC | OPT_MASQ => {
                parse_bool(v).ok_or_else(|| bad("expected true or false"))?;
            }
            OPT_HOST_BINDING => {
                v.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| bad("expected an IPv4 address"))?;
            }
            OPT_MTU => match v.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => {}
                _ => return Err(bad("expected an MTU between 68 and 65535")),
            },
            OPT_BRIDGE_NAME
                if v.is_empty()
                    || v.len() > 15
                    || v.chars().any(|c| c.is_whitespace() || c == '/' || c == ':') =>
            {
                return Err(bad("expected an interface name of 1-15 characters"));
            }
            OPT_DEFAULT_BRIDGE => {
                return Err(ApiError::bad(format!(
                    "option {k} is reserved for the predefined bridge network"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Docker's NetworkResource view of a network.
pub fn network_view(st: &State, n: &Network, with_containers: bool) -> NetworkView {
    let mut containers = BTreeMap::new();
    if with_containers {
        for e in st.network_endpoints(&n.id) {
            let name = st
                .containers
                .get(&e.container_id)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            containers.insert(
                e.container_id.clone(),
                EndpointView {
                    name,
                    endpoint_id: e.id.clone(),
                    mac_address: e.mac.to_string(),
                    ipv4_address: e.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                    ipv6_address: String::new(),
                },
            );
        }
    }
    NetworkView {
        name: n.name.clone(),
        id: n.id.clone(),
        created: n.created.clone(),
        scope: "local".into(),
        driver: n.driver.clone(),
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

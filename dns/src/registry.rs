//! The name registry: what the control plane says (networks, endpoints),
//! compiled into a read-mostly [`Snapshot`] the responders read without a
//! lock.
//!
//! Contract:
//! - The control plane changes [`RegistryData`] through [`Registry`]'s
//!   methods; each change is validated first, then the whole snapshot is
//!   rebuilt as data and swapped in atomically ([`arc_swap`]): a query sees
//!   either the old or the new state, and a removal takes effect for the
//!   next query.
//! - A lookup ([`Querier::lookup`]) does no allocation and takes no lock:
//!   a few hash-map probes keyed by the lowercased name.
//!
//! Names an endpoint registers on its network (Docker's rules): the
//! container name, its network aliases, the 12-character short ID, the
//! hostname, and each of these suffixed with `.NETWORK`. Legacy link
//! aliases (`--link C:ALIAS`) are visible to the linking container only.
//! Matching is ASCII case-insensitive.
//!
//! Addresses: every endpoint has an IPv4 address and may have an IPv6 one
//! (dual-stack networks); each name resolves to A records with the IPv4
//! addresses and AAAA records with the IPv6 ones. As in Docker
//! (libnetwork `Sandbox.ResolveName`), the networks a querier sees are
//! searched for the family asked: a name known on some network but
//! without an address of that family answers NOERROR with no records
//! (NODATA), never NXDOMAIN and never forwarded.
//!
//! Scoping: a querier is identified by its IPv4 or IPv6 address on the
//! network the query arrived on. It sees the names of every DNS-enabled network its
//! container is attached to; the network the query arrived on is searched
//! first, then the others in ascending id, and the first network with a
//! match answers. A querier the registry does not know (an address with no
//! endpoint) sees the names of the arrival network only.

use arc_swap::{ArcSwap, Guard};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tapnet_switch::NetworkId;

/// A network as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub id: NetworkId,
    pub name: String,
    /// `--internal`: containers attached only to internal networks get no
    /// forwarding of names that are not local (answered REFUSED).
    pub internal: bool,
    /// Embedded DNS on this network (false for the default `bridge`).
    pub dns: bool,
}

impl NetworkSpec {
    /// A user-defined network: embedded DNS on, not internal.
    pub fn new(id: NetworkId, name: &str) -> Self {
        NetworkSpec {
            id,
            name: name.into(),
            internal: false,
            dns: true,
        }
    }
}

/// A legacy link (`--link CONTAINER:ALIAS`) of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The linked container's name (or ID).
    pub container: String,
    /// The alias it gets in the linking container.
    pub alias: String,
}

/// One container's attachment to one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub network: NetworkId,
    /// Full container ID (hex); the first 12 characters are the short ID.
    pub container_id: String,
    /// Container name (without Docker's leading `/`).
    pub name: String,
    pub hostname: Option<String>,
    /// Network-scoped aliases (`--network-alias`, `--alias`).
    pub aliases: Vec<String>,
    pub ipv4: Ipv4Addr,
    /// The endpoint's IPv6 address on a dual-stack network.
    pub ipv6: Option<Ipv6Addr>,
    pub links: Vec<Link>,
}

impl EndpointSpec {
    pub fn new(network: NetworkId, container_id: &str, name: &str, ipv4: Ipv4Addr) -> Self {
        EndpointSpec {
            network,
            container_id: container_id.into(),
            name: name.into(),
            hostname: None,
            aliases: Vec::new(),
            ipv4,
            ipv6: None,
            links: Vec::new(),
        }
    }

    /// The same endpoint with an IPv6 address (dual-stack).
    pub fn with_ipv6(mut self, ipv6: Ipv6Addr) -> Self {
        self.ipv6 = Some(ipv6);
        self
    }
}

/// Why a registry change was refused (nothing was changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// Unknown network.
    NoSuchNetwork,
    /// No such endpoint.
    NoSuchEndpoint,
    /// Another endpoint of this network has this address.
    AddressInUse(Ipv4Addr),
    /// Another endpoint of this network has this IPv6 address.
    AddressInUse6(Ipv6Addr),
    /// The container already has an endpoint on this network.
    DuplicateEndpoint,
    /// Empty container ID or name.
    Invalid(&'static str),
}

impl core::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            RegistryError::NoSuchNetwork => write!(f, "no such network"),
            RegistryError::NoSuchEndpoint => write!(f, "no such endpoint"),
            RegistryError::AddressInUse(a) => write!(f, "address {a} is already in use"),
            RegistryError::AddressInUse6(a) => write!(f, "address {a} is already in use"),
            RegistryError::DuplicateEndpoint => {
                write!(f, "container already has an endpoint on this network")
            }
            RegistryError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// The control plane's description: networks and endpoints, as data.
#[derive(Clone, Debug, Default)]
pub struct RegistryData {
    pub networks: Vec<NetworkSpec>,
    pub endpoints: Vec<EndpointSpec>,
}

impl RegistryData {
    /// Checks the invariants the snapshot relies on.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let mut seen_net = std::collections::HashSet::new();
        for n in &self.networks {
            if !seen_net.insert(n.id) {
                return Err(RegistryError::Invalid("duplicate network id"));
            }
        }
        let mut seen_ip = std::collections::HashSet::new();
        let mut seen_ep = std::collections::HashSet::new();
        for e in &self.endpoints {
            if !seen_net.contains(&e.network) {
                return Err(RegistryError::NoSuchNetwork);
            }
            if e.container_id.is_empty() {
                return Err(RegistryError::Invalid("empty container id"));
            }
            if !seen_ip.insert((e.network, IpAddr::V4(e.ipv4))) {
                return Err(RegistryError::AddressInUse(e.ipv4));
            }
            if let Some(a) = e.ipv6 {
                if !seen_ip.insert((e.network, IpAddr::V6(a))) {
                    return Err(RegistryError::AddressInUse6(a));
                }
            }
            if !seen_ep.insert((e.network, e.container_id.as_str())) {
                return Err(RegistryError::DuplicateEndpoint);
            }
        }
        Ok(())
    }
}

type FxMap<K, V> = tapnet_switch::fxhash::FastMap<K, V>;

/// One network in the snapshot.
#[derive(Debug, Default)]
struct NetSnap {
    internal: bool,
    dns: bool,
    /// Lowercase dotted name (no trailing dot) → addresses, deduplicated,
    /// in registration order.
    names: FxMap<Box<[u8]>, Addrs>,
    /// IPv4 address → `name.network.` in wire form.
    ptr: FxMap<u32, Box<[u8]>>,
    /// IPv6 address → `name.network.` in wire form.
    ptr6: FxMap<u128, Box<[u8]>>,
}

/// The addresses of one name in the snapshot (either list may be empty,
/// not both); read through [`Querier::lookup`].
#[derive(Debug, Default, Clone)]
pub struct Addrs {
    v4: Box<[Ipv4Addr]>,
    v6: Box<[Ipv6Addr]>,
}

/// A link alias (lowercase) and the linked container's addresses.
type LinkSnap = (Box<[u8]>, Addrs);

/// One querier (a container's endpoint) in the snapshot.
#[derive(Debug, Default)]
struct QuerierSnap {
    /// The DNS-enabled networks of its container, ascending.
    networks: Box<[NetworkId]>,
    /// Link aliases (lowercase) → addresses, visible to this container.
    links: Box<[LinkSnap]>,
    /// Some attached network is not internal.
    may_forward: bool,
}

/// The compiled, immutable view the responders read.
#[derive(Debug, Default)]
pub struct Snapshot {
    nets: Vec<Option<NetSnap>>,
    /// (network, IPv4 address) → index in `queriers`.
    by_addr: FxMap<(u16, u32), u32>,
    /// (network, IPv6 address) → index in `queriers`.
    by_addr6: FxMap<(u16, u128), u32>,
    queriers: Vec<QuerierSnap>,
}

/// What a name resolved to for one querier ([`Querier::resolve`]: the
/// IPv4 view kept for existing callers; [`Querier::lookup`] is per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// A local name with these IPv4 addresses (empty: a local name with
    /// IPv6 addresses only).
    Addrs(&'a [Ipv4Addr]),
    /// Not a name this querier can see.
    NotLocal,
}

/// What a name resolved to for one querier, in one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a, A> {
    /// A local name with these addresses of the family (never empty).
    Addrs(&'a [A]),
    /// A local name without an address of the family: NOERROR, no
    /// records (Docker's `ipv6Miss`, for both families).
    NoData,
    /// Not a name this querier can see.
    NotLocal,
}

/// An address family of [`Addrs`], for [`Querier::lookup`].
pub trait Family: Copy + 'static {
    #[doc(hidden)]
    fn of(a: &Addrs) -> &[Self];
}

impl Family for Ipv4Addr {
    #[inline]
    fn of(a: &Addrs) -> &[Self] {
        &a.v4
    }
}

impl Family for Ipv6Addr {
    #[inline]
    fn of(a: &Addrs) -> &[Self] {
        &a.v6
    }
}

/// Who is asking, as the snapshot sees it.
#[derive(Clone, Copy, Debug)]
pub struct Querier<'a> {
    snap: &'a Snapshot,
    network: NetworkId,
    q: Option<&'a QuerierSnap>,
}

impl<'a> Querier<'a> {
    /// Whether names that are not local may be forwarded upstream for
    /// this querier (false when all its networks are `--internal`).
    pub fn may_forward(&self) -> bool {
        match self.q {
            Some(q) => q.may_forward,
            None => self
                .snap
                .net(self.network)
                .is_some_and(|n| n.dns && !n.internal),
        }
    }

    /// Visits the networks this querier sees, arrival network first.
    #[inline]
    fn visible<T>(&self, mut f: impl FnMut(&'a NetSnap) -> Option<T>) -> Option<T> {
        if let Some(n) = self.snap.net(self.network).filter(|n| n.dns) {
            if let Some(t) = f(n) {
                return Some(t);
            }
        }
        for &id in self.q.map(|q| &q.networks[..]).unwrap_or(&[]) {
            if id == self.network {
                continue;
            }
            if let Some(n) = self.snap.net(id).filter(|n| n.dns) {
                if let Some(t) = f(n) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// Resolves a lowercase dotted name (see [`crate::wire::name_key`]) to
    /// its IPv4 addresses: the first visible network whose name has IPv4
    /// addresses answers; `Addrs(&[])` when the name is local but has none.
    #[inline]
    pub fn resolve(&self, key: &[u8]) -> Resolved<'a> {
        match self.lookup::<Ipv4Addr>(key) {
            Lookup::Addrs(a) => Resolved::Addrs(a),
            Lookup::NoData => Resolved::Addrs(&[]),
            Lookup::NotLocal => Resolved::NotLocal,
        }
    }

    /// Resolves a lowercase dotted name in one family (`Ipv4Addr` for A,
    /// `Ipv6Addr` for AAAA). A link alias of the querier answers first
    /// (NODATA if the linked container lacks the family); then the visible
    /// networks, arrival network first: the first one whose name has
    /// addresses of the family answers; if the name exists only without
    /// them, NODATA.
    #[inline]
    pub fn lookup<A: Family>(&self, key: &[u8]) -> Lookup<'a, A> {
        if let Some(q) = self.q {
            for (alias, addrs) in q.links.iter() {
                if &alias[..] == key {
                    let a = A::of(addrs);
                    return if a.is_empty() {
                        Lookup::NoData
                    } else {
                        Lookup::Addrs(a)
                    };
                }
            }
        }
        let mut known = false;
        let found = self.visible(|n| {
            let a = A::of(n.names.get(key)?);
            known = true;
            (!a.is_empty()).then_some(a)
        });
        match found {
            Some(a) => Lookup::Addrs(a),
            None if known => Lookup::NoData,
            None => Lookup::NotLocal,
        }
    }

    /// The `name.network.` (wire form) of a container address this querier
    /// can see.
    #[inline]
    pub fn reverse(&self, addr: Ipv4Addr) -> Option<&'a [u8]> {
        let k = u32::from(addr);
        self.visible(|n| n.ptr.get(&k)).map(|b| &b[..])
    }

    /// [`Querier::reverse`] for a container's IPv6 address.
    #[inline]
    pub fn reverse6(&self, addr: Ipv6Addr) -> Option<&'a [u8]> {
        let k = u128::from(addr);
        self.visible(|n| n.ptr6.get(&k)).map(|b| &b[..])
    }
}

fn lower(s: &str) -> Box<[u8]> {
    let t = s.strip_suffix('.').unwrap_or(s);
    t.as_bytes().to_ascii_lowercase().into_boxed_slice()
}

impl Snapshot {
    #[inline]
    fn net(&self, id: NetworkId) -> Option<&NetSnap> {
        self.nets.get(usize::from(id.0))?.as_ref()
    }

    /// Whether the embedded DNS answers on this network.
    #[inline]
    pub fn serves(&self, id: NetworkId) -> bool {
        self.net(id).is_some_and(|n| n.dns)
    }

    /// The querier at `addr` (its endpoint's IPv4 or IPv6 address) on
    /// `network`.
    #[inline]
    pub fn querier(&self, network: NetworkId, addr: impl Into<IpAddr>) -> Querier<'_> {
        let i = match addr.into() {
            IpAddr::V4(a) => self.by_addr.get(&(network.0, u32::from(a))),
            IpAddr::V6(a) => self.by_addr6.get(&(network.0, u128::from(a))),
        };
        let q = i.and_then(|&i| self.queriers.get(i as usize));
        Querier {
            snap: self,
            network,
            q,
        }
    }

    /// Compiles validated data into a snapshot.
    pub fn build(data: &RegistryData) -> Snapshot {
        let mut s = Snapshot::default();
        let mut net_names: HashMap<NetworkId, &str> = HashMap::new();
        for n in &data.networks {
            let i = usize::from(n.id.0);
            if s.nets.len() <= i {
                s.nets.resize_with(i + 1, || None);
            }
            s.nets[i] = Some(NetSnap {
                internal: n.internal,
                dns: n.dns,
                ..NetSnap::default()
            });
            net_names.insert(n.id, &n.name);
        }
        // Per-network names, with addresses deduplicated.
        type Lists = (Vec<Ipv4Addr>, Vec<Ipv6Addr>);
        let mut names: HashMap<(NetworkId, Box<[u8]>), Lists> = HashMap::new();
        let mut order: Vec<(NetworkId, Box<[u8]>)> = Vec::new();
        let mut add = |net: NetworkId, key: Box<[u8]>, a: Ipv4Addr, a6: Option<Ipv6Addr>| {
            if key.is_empty() {
                return;
            }
            let e = names.entry((net, key.clone())).or_insert_with(|| {
                order.push((net, key));
                Lists::default()
            });
            if !e.0.contains(&a) {
                e.0.push(a);
            }
            if let Some(a6) = a6.filter(|a6| !e.1.contains(a6)) {
                e.1.push(a6);
            }
        };
        for e in &data.endpoints {
            let Some(net_name) = net_names.get(&e.network) else {
                continue;
            };
            let net_lc = lower(net_name);
            let mut keys: Vec<Box<[u8]>> = vec![lower(&e.name)];
            keys.extend(e.aliases.iter().map(|a| lower(a)));
            if e.container_id.len() >= 12 && e.container_id.is_char_boundary(12) {
                keys.push(lower(&e.container_id[..12]));
            }
            if let Some(h) = &e.hostname {
                keys.push(lower(h));
            }
            for k in keys {
                if k.is_empty() {
                    continue;
                }
                let mut dotted = k.to_vec();
                dotted.push(b'.');
                dotted.extend_from_slice(&net_lc);
                add(e.network, k, e.ipv4, e.ipv6);
                add(e.network, dotted.into_boxed_slice(), e.ipv4, e.ipv6);
            }
            let primary = if e.name.is_empty() {
                e.container_id.get(..12).unwrap_or(&e.container_id)
            } else {
                &e.name
            };
            if let Some(w) = crate::wire::encode_name(&format!("{primary}.{net_name}")) {
                if let Some(Some(n)) = s.nets.get_mut(usize::from(e.network.0)) {
                    if let Some(a6) = e.ipv6 {
                        n.ptr6
                            .entry(u128::from(a6))
                            .or_insert(w.clone().into_boxed_slice());
                    }
                    n.ptr
                        .entry(u32::from(e.ipv4))
                        .or_insert(w.into_boxed_slice());
                }
            }
        }
        for key in order {
            if let (Some(addrs), Some(Some(n))) =
                (names.remove(&key), s.nets.get_mut(usize::from(key.0 .0)))
            {
                n.names.insert(
                    key.1,
                    Addrs {
                        v4: addrs.0.into_boxed_slice(),
                        v6: addrs.1.into_boxed_slice(),
                    },
                );
            }
        }
        // Queriers: one per endpoint, sharing their container's view.
        let mut by_container: HashMap<&str, Vec<&EndpointSpec>> = HashMap::new();
        for e in &data.endpoints {
            by_container.entry(&e.container_id).or_default().push(e);
        }
        let is_internal = |id: NetworkId| {
            data.networks
                .iter()
                .find(|n| n.id == id)
                .is_none_or(|n| n.internal)
        };
        for e in &data.endpoints {
            let eps = &by_container[e.container_id.as_str()];
            let mut networks: Vec<NetworkId> = eps
                .iter()
                .map(|x| x.network)
                .filter(|&id| s.serves(id))
                .collect();
            networks.sort_unstable();
            networks.dedup();
            let may_forward = eps.iter().any(|x| !is_internal(x.network));
            let links = e
                .links
                .iter()
                .filter_map(|l| {
                    let target = lower(&l.container);
                    // The linked container's addresses on the networks this
                    // container shares with it.
                    let targets: Vec<&EndpointSpec> = data
                        .endpoints
                        .iter()
                        .filter(|t| {
                            networks.contains(&t.network)
                                && (*lower(&t.name) == *target
                                    || t.container_id.as_bytes() == &target[..]
                                    || t.container_id.get(..12).map(str::as_bytes)
                                        == Some(&target[..]))
                        })
                        .collect();
                    let addrs = Addrs {
                        v4: targets.iter().map(|t| t.ipv4).collect(),
                        v6: targets.iter().filter_map(|t| t.ipv6).collect(),
                    };
                    (!targets.is_empty()).then(|| (lower(&l.alias), addrs))
                })
                .collect();
            let idx = s.queriers.len() as u32;
            s.queriers.push(QuerierSnap {
                networks: networks.into_boxed_slice(),
                links,
                may_forward,
            });
            s.by_addr.insert((e.network.0, u32::from(e.ipv4)), idx);
            if let Some(a6) = e.ipv6 {
                s.by_addr6.insert((e.network.0, u128::from(a6)), idx);
            }
        }
        s
    }
}

#[cfg(test)]
impl Snapshot {
    /// Adds `key` with these addresses to a network's names (tests of
    /// states the control plane cannot express yet, e.g. IPv6-only).
    pub(crate) fn insert_name(
        &mut self,
        net: NetworkId,
        key: &[u8],
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
    ) {
        let i = usize::from(net.0);
        if self.nets.len() <= i {
            self.nets.resize_with(i + 1, || None);
        }
        let n = self.nets[i].get_or_insert_with(|| NetSnap {
            dns: true,
            ..NetSnap::default()
        });
        n.names.insert(
            key.into(),
            Addrs {
                v4: v4.into(),
                v6: v6.into(),
            },
        );
    }
}

/// The registry: the control plane's data and the snapshot compiled from
/// it. Shared (`Arc`) by the control plane and every worker's responder.
#[derive(Default)]
pub struct Registry {
    data: Mutex<RegistryData>,
    snap: ArcSwap<Snapshot>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// The current snapshot, for one query or a batch (cheap, lock-free).
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.snap.load()
    }

    /// A copy of the control plane's data.
    pub fn data(&self) -> RegistryData {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies `f` to a copy of the data as one transaction: if `f` or
    /// validation fails, nothing changes; otherwise the new snapshot is
    /// swapped in.
    pub fn update<R>(
        &self,
        f: impl FnOnce(&mut RegistryData) -> Result<R, RegistryError>,
    ) -> Result<R, RegistryError> {
        let mut g = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let mut d = g.clone();
        let r = f(&mut d)?;
        d.validate()?;
        self.snap.store(Arc::new(Snapshot::build(&d)));
        *g = d;
        Ok(r)
    }

    /// Adds or replaces a network (by id).
    pub fn set_network(&self, spec: NetworkSpec) -> Result<(), RegistryError> {
        self.update(|d| {
            match d.networks.iter_mut().find(|n| n.id == spec.id) {
                Some(n) => *n = spec,
                None => d.networks.push(spec),
            }
            Ok(())
        })
    }

    /// Removes a network and its endpoints.
    pub fn remove_network(&self, id: NetworkId) -> Result<(), RegistryError> {
        self.update(|d| {
            let before = d.networks.len();
            d.networks.retain(|n| n.id != id);
            if d.networks.len() == before {
                return Err(RegistryError::NoSuchNetwork);
            }
            d.endpoints.retain(|e| e.network != id);
            Ok(())
        })
    }

    /// Adds an endpoint (a container joins a network).
    pub fn add_endpoint(&self, spec: EndpointSpec) -> Result<(), RegistryError> {
        self.update(|d| {
            d.endpoints.push(spec);
            Ok(())
        })
    }

    /// Removes a container's endpoint on a network (disconnect).
    pub fn remove_endpoint(
        &self,
        network: NetworkId,
        container_id: &str,
    ) -> Result<(), RegistryError> {
        self.update(|d| {
            let before = d.endpoints.len();
            d.endpoints
                .retain(|e| !(e.network == network && e.container_id == container_id));
            if d.endpoints.len() == before {
                return Err(RegistryError::NoSuchEndpoint);
            }
            Ok(())
        })
    }

    /// Removes every endpoint of a container (stop, rm).
    pub fn remove_container(&self, container_id: &str) -> Result<(), RegistryError> {
        self.update(|d| {
            let before = d.endpoints.len();
            d.endpoints.retain(|e| e.container_id != container_id);
            if d.endpoints.len() == before {
                return Err(RegistryError::NoSuchEndpoint);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    #[test]
    fn names_and_scoping() {
        let r = Registry::new();
        let (a, b) = (NetworkId(1), NetworkId(2));
        r.set_network(NetworkSpec::new(a, "front")).unwrap();
        r.set_network(NetworkSpec::new(b, "Back")).unwrap();
        let mut web = EndpointSpec::new(a, "0123456789abcdef", "Web", ip(2));
        web.aliases.push("www".into());
        web.hostname = Some("webhost".into());
        r.add_endpoint(web).unwrap();
        r.add_endpoint(EndpointSpec::new(b, "fedcba9876543210", "db", ip(3)))
            .unwrap();
        let s = r.load();
        let q = s.querier(a, ip(2));
        for k in [
            &b"web"[..],
            b"www",
            b"0123456789ab",
            b"webhost",
            b"web.front",
            b"www.front",
        ] {
            assert_eq!(q.resolve(k), Resolved::Addrs(&[ip(2)]), "{k:?}");
        }
        assert_eq!(q.resolve(b"db"), Resolved::NotLocal);
        assert_eq!(q.resolve(b"web.back"), Resolved::NotLocal);
        assert_eq!(
            s.querier(b, ip(3)).resolve(b"db.back"),
            Resolved::Addrs(&[ip(3)])
        );
        assert_eq!(q.reverse(ip(2)), Some(&b"\x03Web\x05front\x00"[..]));
        assert_eq!(q.reverse(ip(3)), None);
    }

    fn ip6(d: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d)
    }

    #[test]
    fn dual_stack_lookups() {
        let r = Registry::new();
        let (a, b) = (NetworkId(1), NetworkId(2));
        r.set_network(NetworkSpec::new(a, "front")).unwrap();
        r.set_network(NetworkSpec::new(b, "back")).unwrap();
        // The client on both networks, IPv6 on `front` only.
        r.add_endpoint(EndpointSpec::new(a, "c1", "client", ip(2)).with_ipv6(ip6(2)))
            .unwrap();
        r.add_endpoint(EndpointSpec::new(b, "c1", "client", ip(102)))
            .unwrap();
        // `svc`: IPv4 only on `front`, dual-stack on `back`.
        r.add_endpoint(EndpointSpec::new(a, "c2", "svc", ip(3)))
            .unwrap();
        r.add_endpoint(EndpointSpec::new(b, "c3", "svc", ip(103)).with_ipv6(ip6(103)))
            .unwrap();
        let mut linker = EndpointSpec::new(a, "c4", "linker", ip(4)).with_ipv6(ip6(4));
        linker.links.push(Link {
            container: "svc".into(),
            alias: "s".into(),
        });
        r.add_endpoint(linker).unwrap();
        let s = r.load();
        // The client, identified by its IPv6 address, sees both networks.
        let q = s.querier(a, ip6(2));
        assert!(q.may_forward());
        assert_eq!(q.lookup::<Ipv4Addr>(b"svc"), Lookup::Addrs(&[ip(3)][..]));
        // AAAA: a miss on the arrival network, an answer on the other
        // (Docker keeps looking after an ipv6Miss).
        assert_eq!(q.lookup::<Ipv6Addr>(b"svc"), Lookup::Addrs(&[ip6(103)][..]));
        assert_eq!(q.lookup::<Ipv6Addr>(b"svc.front"), Lookup::NoData);
        assert_eq!(q.lookup::<Ipv6Addr>(b"nope"), Lookup::NotLocal);
        assert_eq!(
            q.lookup::<Ipv6Addr>(b"client.front"),
            Lookup::Addrs(&[ip6(2)][..])
        );
        assert_eq!(q.reverse6(ip6(103)), Some(&b"\x03svc\x04back\x00"[..]));
        assert_eq!(q.reverse6(ip6(4)), Some(&b"\x06linker\x05front\x00"[..]));
        assert_eq!(q.reverse6(ip6(99)), None);
        // The same by its IPv4 address; an unknown IPv6 querier sees the
        // arrival network only.
        assert_eq!(
            s.querier(a, ip(2)).lookup::<Ipv6Addr>(b"svc"),
            Lookup::Addrs(&[ip6(103)][..])
        );
        let stranger = s.querier(a, ip6(77));
        assert_eq!(stranger.lookup::<Ipv6Addr>(b"svc"), Lookup::NoData);
        assert_eq!(stranger.reverse6(ip6(103)), None);
        // A link to a container without IPv6 on the shared network.
        let l = s.querier(a, ip6(4));
        assert_eq!(l.lookup::<Ipv4Addr>(b"s"), Lookup::Addrs(&[ip(3)][..]));
        assert_eq!(l.lookup::<Ipv6Addr>(b"s"), Lookup::NoData);
        // A duplicate IPv6 address is refused, nothing changes.
        assert_eq!(
            r.add_endpoint(EndpointSpec::new(a, "c5", "dup", ip(5)).with_ipv6(ip6(2))),
            Err(RegistryError::AddressInUse6(ip6(2)))
        );
        assert_eq!(r.data().endpoints.len(), 5);
        // The same IPv6 address on another network is fine.
        r.add_endpoint(EndpointSpec::new(b, "c5", "dup", ip(5)).with_ipv6(ip6(2)))
            .unwrap();
    }

    #[test]
    fn a_of_an_ipv6_only_name_is_nodata() {
        let mut s = Snapshot::default();
        let n = NetworkId(0);
        s.insert_name(n, b"six", &[], &[ip6(6)]);
        let q = s.querier(n, ip(2));
        assert_eq!(q.lookup::<Ipv4Addr>(b"six"), Lookup::NoData);
        assert_eq!(q.resolve(b"six"), Resolved::Addrs(&[]));
        assert_eq!(q.lookup::<Ipv6Addr>(b"six"), Lookup::Addrs(&[ip6(6)][..]));
    }

    #[test]
    fn refused_changes_leave_state() {
        let r = Registry::new();
        let a = NetworkId(0);
        assert_eq!(
            r.add_endpoint(EndpointSpec::new(a, "c1", "x", ip(2))),
            Err(RegistryError::NoSuchNetwork)
        );
        r.set_network(NetworkSpec::new(a, "n")).unwrap();
        r.add_endpoint(EndpointSpec::new(a, "c1", "x", ip(2)))
            .unwrap();
        assert_eq!(
            r.add_endpoint(EndpointSpec::new(a, "c2", "y", ip(2))),
            Err(RegistryError::AddressInUse(ip(2)))
        );
        assert_eq!(r.data().endpoints.len(), 1);
        assert_eq!(r.load().querier(a, ip(2)).resolve(b"y"), Resolved::NotLocal);
    }
}

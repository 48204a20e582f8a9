//! IPv4 and IPv6 address management, Docker's rules (libnetwork's default IPAM):
//!
//! - a network without `--subnet` gets the next free /16 of 172.17–172.31,
//!   then the next free /20 of 192.168.0.0/16;
//! - the gateway defaults to the first address of the subnet;
//! - the network and broadcast addresses, the gateway and the auxiliary
//!   addresses are never assigned; `--ip-range` limits dynamic allocation
//!   (a static `--ip` may be anywhere in the subnet);
//! - dynamic allocation is serial: the next free address after the last
//!   one handed out, wrapping around ([`allocate_after`]).
//!
//! Pure functions: the caller passes the addresses in use.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::{Pool, Pool6};

/// Errors of IPAM requests; the message is shown to the user as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid subnet {0:?}: not an IPv4 CIDR")]
    BadSubnet(String),
    #[error("invalid {what} {value:?}: octets with leading zeros are ambiguous (octal or decimal?); write them without")]
    LeadingZeros { what: &'static str, value: String },
    #[error("invalid subnet {subnet}: it overlaps {range}, the {kind} range, which cannot carry a container network")]
    SpecialSubnet {
        subnet: Ipv4Net,
        range: Ipv4Net,
        kind: &'static str,
    },
    #[error("invalid subnet {given}: it should be {canonical}")]
    NotCanonical { given: String, canonical: Ipv4Net },
    #[error("invalid subnet {0}: a subnet must have room for a gateway and a container (prefix /30 or shorter)")]
    TooSmall(Ipv4Net),
    #[error("invalid gateway {0:?}: not an IPv4 address")]
    BadGateway(String),
    #[error("gateway {gateway} is not in subnet {subnet}")]
    GatewayOutside { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("gateway {0} is the network or broadcast address of its subnet")]
    GatewayReserved(Ipv4Addr),
    #[error("invalid ip-range {0:?}: not an IPv4 CIDR")]
    BadRange(String),
    #[error("ip-range {range} is not within subnet {subnet}")]
    RangeOutside { range: Ipv4Net, subnet: Ipv4Net },
    #[error("invalid auxiliary address {name}={value:?}: not an IPv4 address")]
    BadAux { name: String, value: String },
    #[error("auxiliary address {name}={addr} is not in subnet {subnet}")]
    AuxOutside {
        name: String,
        addr: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error("auxiliary address {name}={addr} is the gateway, network or broadcast address")]
    AuxReserved { name: String, addr: Ipv4Addr },
    #[error("--gateway, --ip-range and --aux-address need --subnet")]
    NeedSubnet,
    #[error("no free address pool left for a new network (all of 172.17-31.0.0/16 and 192.168.0.0/16 in /20s are taken)")]
    PoolsExhausted,
    #[error("address {addr} is not in subnet {subnet}")]
    AddrOutside { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {0} is reserved (network, broadcast, gateway or auxiliary address)")]
    AddrReserved(Ipv4Addr),
    #[error("address {0} is already in use")]
    AddrInUse(Ipv4Addr),
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
}

/// IPv4 ranges that cannot be a container network: traffic to them never
/// reaches a switch port the way unicast to a subnet does.
pub const SPECIAL_RANGES: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
];

/// The special range `subnet` overlaps, if any (see [`SPECIAL_RANGES`]).
pub fn special_range(subnet: &Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
    SPECIAL_RANGES.iter().find_map(|(r, kind)| {
        let r: Ipv4Net = r.parse().expect("constant CIDR");
        overlaps(&r, subnet).then_some((r, *kind))
    })
}

/// Whether a dotted-quad string has an octet with a leading zero
/// (`010.1.2.3`): Docker's and inet_aton's readings differ (octal).
fn has_leading_zero(addr: &str) -> bool {
    addr.split('.').any(|o| o.len() > 1 && o.starts_with('0'))
}

/// Parses an IPv4 address strictly (four decimal octets, no leading
/// zeros). `what` names the value in the error.
pub fn parse_ipv4(s: &str, what: &'static str) -> Result<Ipv4Addr, Option<IpamError>> {
    if has_leading_zero(s) && s.split('.').all(|o| o.bytes().all(|b| b.is_ascii_digit())) {
        return Err(Some(IpamError::LeadingZeros {
            what,
            value: s.to_string(),
        }));
    }
    s.parse().map_err(|_| None)
}

/// Parses `A.B.C.D/N` strictly (see [`parse_ipv4`]; the prefix is 0-32
/// without leading zeros). `Err(None)`: not a CIDR.
pub fn parse_cidr(s: &str, what: &'static str) -> Result<Ipv4Net, Option<IpamError>> {
    let (a, p) = s.split_once('/').ok_or(None)?;
    let addr = parse_ipv4(a, what).map_err(|e| {
        e.map(|_| IpamError::LeadingZeros {
            what,
            value: s.to_string(),
        })
    })?;
    if p.is_empty()
        || p.len() > 2
        || !p.bytes().all(|b| b.is_ascii_digit())
        || (p.len() > 1 && p.starts_with('0'))
    {
        return Err(None);
    }
    Ipv4Net::new(addr, p.parse().map_err(|_| None)?).map_err(|_| None)
}

/// The pools Docker hands out when no subnet is given, in order.
pub fn default_subnets() -> impl Iterator<Item = Ipv4Net> {
    let a = (17u8..=31).map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).unwrap());
    let b = (0u8..16).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).unwrap());
    a.chain(b)
}

/// Whether two subnets share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The next default subnet that overlaps none of `used`.
pub fn next_default_subnet(used: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
    default_subnets()
        .find(|s| !used.iter().any(|u| overlaps(s, u)))
        .ok_or(IpamError::PoolsExhausted)
}

/// A pool as the user asks for it (strings as given).
#[derive(Clone, Debug, Default)]
pub struct PoolRequest {
    pub subnet: Option<String>,
    pub ip_range: Option<String>,
    pub gateway: Option<String>,
    pub aux: BTreeMap<String, String>,
}

/// The pools overlay networks get when no subnet is given (Docker's global
/// default address pool: 10.0.0.0/8 in /24s), in order.
pub fn overlay_default_subnets() -> impl Iterator<Item = Ipv4Net> {
    (0u32..1 << 16).map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap())
}

/// Validates a request into a [`Pool`]; `used` are the subnets of the other
/// networks (only to choose a default subnet: the caller checks overlaps
/// with names for its error message).
pub fn make_pool(req: &PoolRequest, used: &[Ipv4Net]) -> Result<Pool, IpamError> {
    make_pool_from(req, used, default_subnets())
}

/// [`make_pool`] with the default subnets to choose from.
pub fn make_pool_from(
    req: &PoolRequest,
    used: &[Ipv4Net],
    mut defaults: impl Iterator<Item = Ipv4Net>,
) -> Result<Pool, IpamError> {
    let subnet = match req.subnet.as_deref().filter(|s| !s.is_empty()) {
        None => {
            if req.gateway.is_some() || req.ip_range.is_some() || !req.aux.is_empty() {
                return Err(IpamError::NeedSubnet);
            }
            defaults
                .find(|s| !used.iter().any(|u| overlaps(s, u)))
                .ok_or(IpamError::PoolsExhausted)?
        }
        Some(s) => parse_canonical(s)?,
    };
    if let Some((range, kind)) = special_range(&subnet) {
        return Err(IpamError::SpecialSubnet {
            subnet,
            range,
            kind,
        });
    }
    if subnet.prefix_len() > 30 {
        return Err(IpamError::TooSmall(subnet));
    }
    let gateway = match req.gateway.as_deref().filter(|s| !s.is_empty()) {
        None => first_host(&subnet),
        Some(g) => {
            let g = parse_ipv4(g, "gateway")
                .map_err(|e| e.unwrap_or_else(|| IpamError::BadGateway(g.into())))?;
            if !subnet.contains(&g) {
                return Err(IpamError::GatewayOutside { gateway: g, subnet });
            }
            if g == subnet.network() || g == subnet.broadcast() {
                return Err(IpamError::GatewayReserved(g));
            }
            g
        }
    };
    let ip_range = match req.ip_range.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(r) => {
            let range = parse_cidr(r, "ip-range")
                .map_err(|e| e.unwrap_or_else(|| IpamError::BadRange(r.into())))?
                .trunc();
            if !subnet.contains(&range) {
                return Err(IpamError::RangeOutside { range, subnet });
            }
            Some(range)
        }
    };
    let mut aux = BTreeMap::new();
    for (name, value) in &req.aux {
        let addr = parse_ipv4(value, "auxiliary address").map_err(|e| {
            e.unwrap_or_else(|| IpamError::BadAux {
                name: name.clone(),
                value: value.clone(),
            })
        })?;
        if !subnet.contains(&addr) {
            return Err(IpamError::AuxOutside {
                name: name.clone(),
                addr,
                subnet,
            });
        }
        if addr == gateway || addr == subnet.network() || addr == subnet.broadcast() {
            return Err(IpamError::AuxReserved {
                name: name.clone(),
                addr,
            });
        }
        aux.insert(name.clone(), addr);
    }
    Ok(Pool {
        subnet,
        gateway,
        ip_range,
        aux,
    })
}

/// Parses a subnet that must be a strict CIDR in canonical form.
fn parse_canonical(s: &str) -> Result<Ipv4Net, IpamError> {
    let n =
        parse_cidr(s, "subnet").map_err(|e| e.unwrap_or_else(|| IpamError::BadSubnet(s.into())))?;
    if n.trunc() != n {
        return Err(IpamError::NotCanonical {
            given: s.to_string(),
            canonical: n.trunc(),
        });
    }
    Ok(n)
}

fn first_host(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Whether an address can never be given to an endpoint.
pub fn is_reserved(pool: &Pool, addr: Ipv4Addr) -> bool {
    addr == pool.subnet.network()
        || addr == pool.subnet.broadcast()
        || addr == pool.gateway
        || pool.aux.values().any(|a| *a == addr)
}

/// Allocates an address: `requested` if given (anywhere in the subnet),
/// else the lowest free address of the ip-range (or subnet).
pub fn allocate(
    pool: &Pool,
    used: &BTreeSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    allocate_after(pool, used, requested, None)
}

/// Like [`allocate`], but serial (as Docker): the dynamic search starts
/// after `last` (the previous dynamic allocation) and wraps around, so a
/// released address is not handed out again at once (stale ARP caches of
/// the other containers would still point at the old MAC).
pub fn allocate_after(
    pool: &Pool,
    used: &BTreeSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    if let Some(addr) = requested {
        if !pool.subnet.contains(&addr) {
            return Err(IpamError::AddrOutside {
                addr,
                subnet: pool.subnet,
            });
        }
        if is_reserved(pool, addr) {
            return Err(IpamError::AddrReserved(addr));
        }
        if used.contains(&addr) {
            return Err(IpamError::AddrInUse(addr));
        }
        return Ok(addr);
    }
    let range = pool.ip_range.unwrap_or(pool.subnet);
    let (lo, hi) = (u32::from(range.network()), u32::from(range.broadcast()));
    let start = match last.map(u32::from) {
        Some(l) if l >= lo && l < hi => l + 1,
        _ => lo,
    };
    (start..=hi)
        .chain(lo..start)
        .map(Ipv4Addr::from)
        .find(|a| !is_reserved(pool, *a) && !used.contains(a))
        .ok_or(IpamError::Exhausted(range))
}

// ---------------------------------------------------------------- IPv6

/// Errors of IPv6 IPAM requests; the message is shown to the user as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ipam6Error {
    #[error("invalid IPv6 subnet {0:?}: not an IPv6 CIDR")]
    BadSubnet(String),
    #[error("invalid subnet {given}: it should be {canonical}")]
    NotCanonical { given: String, canonical: Ipv6Net },
    #[error("invalid subnet {subnet}: it overlaps {range}, the {kind} range, which cannot carry a container network")]
    SpecialSubnet {
        subnet: Ipv6Net,
        range: Ipv6Net,
        kind: &'static str,
    },
    #[error("invalid subnet {0}: an IPv6 subnet must have room for a gateway and a container (prefix /126 or shorter)")]
    TooSmall(Ipv6Net),
    #[error("invalid gateway {0:?}: not an IPv6 address")]
    BadGateway(String),
    #[error("gateway {gateway} is not in subnet {subnet}")]
    GatewayOutside { gateway: Ipv6Addr, subnet: Ipv6Net },
    #[error("gateway {0} is the subnet-router anycast address of its subnet")]
    GatewayReserved(Ipv6Addr),
    #[error("invalid ip-range {0:?}: not an IPv6 CIDR")]
    BadRange(String),
    #[error("ip-range {range} is not within subnet {subnet}")]
    RangeOutside { range: Ipv6Net, subnet: Ipv6Net },
    #[error("invalid auxiliary address {name}={value:?}: not an IPv6 address")]
    BadAux { name: String, value: String },
    #[error("auxiliary address {name}={addr} is not in subnet {subnet}")]
    AuxOutside {
        name: String,
        addr: Ipv6Addr,
        subnet: Ipv6Net,
    },
    #[error("auxiliary address {name}={addr} is the gateway or subnet-router anycast address")]
    AuxReserved { name: String, addr: Ipv6Addr },
    #[error("address {addr} is not in subnet {subnet}")]
    AddrOutside { addr: Ipv6Addr, subnet: Ipv6Net },
    #[error("address {0} is reserved (subnet-router anycast, gateway or auxiliary address)")]
    AddrReserved(Ipv6Addr),
    #[error("address {0} is already in use")]
    AddrInUse(Ipv6Addr),
    #[error("no free address left in {0}")]
    Exhausted(Ipv6Net),
    #[error("no free IPv6 pool left for a new network in fd00::/8")]
    PoolsExhausted,
}

/// IPv6 ranges that cannot be a container network.
pub const SPECIAL_RANGES6: [(&str, &str); 5] = [
    ("::/127", "unspecified and loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("fec0::/10", "deprecated site-local"),
];

/// Whether two IPv6 subnets overlap.
pub fn overlaps6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A pool request's values, parsed and checked as Docker's default IPAM
/// does for IPv6, with `subnet` given or, when `None`, a unique-local
/// /64 chosen from `seed` (a network id) that overlaps none of `used`.
/// Docker 20.10 refuses `--ipv6` without a subnet; tapnet picks a ULA
/// (RFC 4193) for it, as later Docker releases do.
pub fn make_pool6(req: &PoolRequest, used: &[Ipv6Net], seed: &str) -> Result<Pool6, Ipam6Error> {
    let subnet = match req.subnet.as_deref().filter(|s| !s.is_empty()) {
        None => default_subnet6(used, seed)?,
        Some(s) => {
            let n: Ipv6Net = s.parse().map_err(|_| Ipam6Error::BadSubnet(s.into()))?;
            if n.trunc() != n {
                return Err(Ipam6Error::NotCanonical {
                    given: s.to_string(),
                    canonical: n.trunc(),
                });
            }
            n
        }
    };
    for (r, kind) in SPECIAL_RANGES6 {
        let range: Ipv6Net = r.parse().expect("constant CIDR");
        if overlaps6(&range, &subnet) {
            return Err(Ipam6Error::SpecialSubnet {
                subnet,
                range,
                kind,
            });
        }
    }
    if subnet.prefix_len() > 126 {
        return Err(Ipam6Error::TooSmall(subnet));
    }
    let gateway = match req.gateway.as_deref().filter(|s| !s.is_empty()) {
        None => Ipv6Addr::from(u128::from(subnet.network()) + 1),
        Some(g) => {
            let g: Ipv6Addr = g.parse().map_err(|_| Ipam6Error::BadGateway(g.into()))?;
            if !subnet.contains(&g) {
                return Err(Ipam6Error::GatewayOutside { gateway: g, subnet });
            }
            if g == subnet.network() {
                return Err(Ipam6Error::GatewayReserved(g));
            }
            g
        }
    };
    let ip_range = match req.ip_range.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(r) => {
            let range: Ipv6Net = r.parse().map_err(|_| Ipam6Error::BadRange(r.into()))?;
            let range = range.trunc();
            if !subnet.contains(&range) {
                return Err(Ipam6Error::RangeOutside { range, subnet });
            }
            Some(range)
        }
    };
    let mut aux = BTreeMap::new();
    for (name, value) in &req.aux {
        let addr: Ipv6Addr = value.parse().map_err(|_| Ipam6Error::BadAux {
            name: name.clone(),
            value: value.clone(),
        })?;
        if !subnet.contains(&addr) {
            return Err(Ipam6Error::AuxOutside {
                name: name.clone(),
                addr,
                subnet,
            });
        }
        if addr == gateway || addr == subnet.network() {
            return Err(Ipam6Error::AuxReserved {
                name: name.clone(),
                addr,
            });
        }
        aux.insert(name.clone(), addr);
    }
    Ok(Pool6 {
        subnet,
        gateway,
        ip_range,
        aux,
    })
}

/// A unique-local /64 (`fdXX:XXXX:XXXX::/64`) whose 40-bit global id comes
/// from `seed`, moved on until it overlaps none of `used`.
fn default_subnet6(used: &[Ipv6Net], seed: &str) -> Result<Ipv6Net, Ipam6Error> {
    // FNV-1a: stable across releases (the subnet is persisted anyway).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..1024u64)
        .map(|i| {
            let id = u128::from((h.wrapping_add(i)) & 0xff_ffff_ffff);
            Ipv6Net::new(Ipv6Addr::from((0xfd_u128 << 120) | (id << 80)), 64).expect("/64")
        })
        .find(|s| !used.iter().any(|u| overlaps6(s, u)))
        .ok_or(Ipam6Error::PoolsExhausted)
}

/// Whether an IPv6 address can never be given to an endpoint.
pub fn is_reserved6(pool: &Pool6, addr: Ipv6Addr) -> bool {
    addr == pool.subnet.network() || addr == pool.gateway || pool.aux.values().any(|a| *a == addr)
}

/// Allocates an IPv6 address: `requested` if given (anywhere in the
/// subnet), else the lowest free address of the ip-range (or subnet).
pub fn allocate6(
    pool: &Pool6,
    used: &BTreeSet<Ipv6Addr>,
    requested: Option<Ipv6Addr>,
) -> Result<Ipv6Addr, Ipam6Error> {
    if let Some(addr) = requested {
        if !pool.subnet.contains(&addr) {
            return Err(Ipam6Error::AddrOutside {
                addr,
                subnet: pool.subnet,
            });
        }
        if is_reserved6(pool, addr) {
            return Err(Ipam6Error::AddrReserved(addr));
        }
        if used.contains(&addr) {
            return Err(Ipam6Error::AddrInUse(addr));
        }
        return Ok(addr);
    }
    let range = pool.ip_range.unwrap_or(pool.subnet);
    let (lo, hi) = (u128::from(range.network()), u128::from(range.broadcast()));
    // At most used + reserved + 1 candidates are looked at.
    (lo..=hi)
        .map(Ipv6Addr::from)
        .find(|a| !is_reserved6(pool, *a) && !used.contains(a))
        .ok_or(Ipam6Error::Exhausted(range))
}

/// The addresses an overlay's cluster-wide allocation tries to claim, in
/// order (`crate::cluster::Cluster::allocate6`): `requested` alone if
/// given (checked against the pool afterwards, by [`allocate6`] on the
/// host), else the free addresses of the ip-range (or subnet) from the
/// lowest, leaving out the reserved ones and `used`, the addresses every
/// host of the cluster holds. Lazy: a claim looks at a few of a /64.
pub fn cluster_candidates6<'a>(
    pool: &'a Pool6,
    used: &'a BTreeSet<Ipv6Addr>,
    requested: Option<Ipv6Addr>,
) -> Box<dyn Iterator<Item = Ipv6Addr> + 'a> {
    if let Some(a) = requested {
        return Box::new(std::iter::once(a));
    }
    let range = pool.ip_range.unwrap_or(pool.subnet);
    let (lo, hi) = (u128::from(range.network()), u128::from(range.broadcast()));
    Box::new(
        (lo..=hi)
            .map(Ipv6Addr::from)
            .filter(move |a| !is_reserved6(pool, *a) && !used.contains(a)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(subnet: &str) -> PoolRequest {
        PoolRequest {
            subnet: Some(subnet.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let bridge: Ipv4Net = "172.17.0.0/16".parse().unwrap();
        let p = make_pool(&PoolRequest::default(), &[bridge]).unwrap();
        assert_eq!(p.subnet.to_string(), "172.18.0.0/16");
        assert_eq!(p.gateway, Ipv4Addr::new(172, 18, 0, 1));
        let mut used: Vec<Ipv4Net> = (17..=31)
            .map(|b| format!("172.{b}.0.0/16").parse().unwrap())
            .collect();
        let p = make_pool(&PoolRequest::default(), &used).unwrap();
        assert_eq!(p.subnet.to_string(), "192.168.0.0/20");
        used.push("192.168.16.0/24".parse().unwrap());
        used.push("192.168.0.0/20".parse().unwrap());
        let p = make_pool(&PoolRequest::default(), &used).unwrap();
        assert_eq!(p.subnet.to_string(), "192.168.32.0/20");
        // A user subnet inside a default pool makes that pool unavailable.
        let used: Vec<Ipv4Net> = vec![bridge, "172.18.5.0/24".parse().unwrap()];
        let p = make_pool(&PoolRequest::default(), &used).unwrap();
        assert_eq!(p.subnet.to_string(), "172.19.0.0/16");
        let all: Vec<Ipv4Net> = default_subnets().collect();
        assert_eq!(
            make_pool(&PoolRequest::default(), &all),
            Err(IpamError::PoolsExhausted)
        );
    }

    #[test]
    fn validation() {
        assert!(matches!(
            make_pool(&req("10.0.0.1/24"), &[]),
            Err(IpamError::NotCanonical { .. })
        ));
        assert!(matches!(
            make_pool(&req("10.0.0.0/33"), &[]),
            Err(IpamError::BadSubnet(_))
        ));
        assert!(matches!(
            make_pool(&req("10.0.0.0/31"), &[]),
            Err(IpamError::TooSmall(_))
        ));
        let mut r = req("10.0.0.0/24");
        r.gateway = Some("10.0.1.1".into());
        assert!(matches!(
            make_pool(&r, &[]),
            Err(IpamError::GatewayOutside { .. })
        ));
        r.gateway = Some("10.0.0.255".into());
        assert!(matches!(
            make_pool(&r, &[]),
            Err(IpamError::GatewayReserved(_))
        ));
        r.gateway = Some("10.0.0.254".into());
        r.ip_range = Some("10.0.1.0/28".into());
        assert!(matches!(
            make_pool(&r, &[]),
            Err(IpamError::RangeOutside { .. })
        ));
        r.ip_range = Some("10.0.0.16/28".into());
        r.aux.insert("host".into(), "10.1.0.5".into());
        assert!(matches!(
            make_pool(&r, &[]),
            Err(IpamError::AuxOutside { .. })
        ));
        r.aux.insert("host".into(), "10.0.0.5".into());
        let p = make_pool(&r, &[]).unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(10, 0, 0, 254));
        let r = PoolRequest {
            gateway: Some("10.0.0.1".into()),
            ..Default::default()
        };
        assert_eq!(make_pool(&r, &[]), Err(IpamError::NeedSubnet));
    }

    #[test]
    fn special_and_ambiguous_subnets() {
        for (bad, kind) in [
            ("127.0.0.0/8", "loopback"),
            ("127.1.0.0/16", "loopback"),
            ("224.0.0.0/24", "multicast"),
            ("255.255.255.0/24", "broadcast"),
            ("169.254.0.0/16", "link-local"),
            ("0.0.0.0/8", "this network"),
            ("0.0.0.0/0", "this network"),
        ] {
            let e = make_pool(&req(bad), &[]).unwrap_err();
            assert!(matches!(e, IpamError::SpecialSubnet { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(kind), "{bad}: {e}");
        }
        for bad in ["010.073.000.000/24", "10.0.0.0/024"] {
            assert!(make_pool(&req(bad), &[]).is_err(), "{bad}");
        }
        let e = make_pool(&req("010.073.000.000/24"), &[]).unwrap_err();
        assert!(e.to_string().contains("leading zeros"), "{e}");
        let mut r = req("10.0.0.0/24");
        r.gateway = Some("10.0.0.01".into());
        assert!(matches!(
            make_pool(&r, &[]),
            Err(IpamError::LeadingZeros { .. })
        ));
        assert!(make_pool(&req("10.0.0.0/24"), &[]).is_ok());
        assert!(make_pool(&req("126.0.0.0/8"), &[]).is_ok());
    }

    #[test]
    fn allocation() {
        let mut r = req("10.0.0.0/29");
        r.aux.insert("x".into(), "10.0.0.3".into());
        let p = make_pool(&r, &[]).unwrap();
        let mut used = BTreeSet::new();
        let mut got = vec![];
        while let Ok(a) = allocate(&p, &used, None) {
            used.insert(a);
            got.push(a.to_string());
        }
        // .0 network, .1 gateway, .3 aux, .7 broadcast.
        assert_eq!(got, ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert!(matches!(
            allocate(&p, &used, None),
            Err(IpamError::Exhausted(_))
        ));
        used.remove(&Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(
            allocate(&p, &used, None).unwrap(),
            Ipv4Addr::new(10, 0, 0, 4)
        );
        assert_eq!(
            allocate(&p, &used, Some(Ipv4Addr::new(10, 0, 0, 5))),
            Err(IpamError::AddrInUse(Ipv4Addr::new(10, 0, 0, 5)))
        );
        assert!(matches!(
            allocate(&p, &used, Some(Ipv4Addr::new(10, 0, 1, 5))),
            Err(IpamError::AddrOutside { .. })
        ));
        for a in [0, 1, 3, 7] {
            assert!(matches!(
                allocate(&p, &BTreeSet::new(), Some(Ipv4Addr::new(10, 0, 0, a))),
                Err(IpamError::AddrReserved(_))
            ));
        }
    }

    #[test]
    fn serial_allocation() {
        let p = make_pool(&req("10.0.0.0/29"), &[]).unwrap();
        let a = |n| Ipv4Addr::new(10, 0, 0, n);
        let mut used = BTreeSet::new();
        used.insert(a(2));
        // .2 was allocated then released: the next one is .3, not .2.
        let got = allocate_after(&p, &BTreeSet::new(), None, Some(a(2))).unwrap();
        assert_eq!(got, a(3));
        // Wraps around past the broadcast address.
        let got = allocate_after(&p, &used, None, Some(a(6))).unwrap();
        assert_eq!(got, a(3));
        // A `last` outside the range starts from the beginning.
        let got = allocate_after(&p, &used, None, Some(a(200))).unwrap();
        assert_eq!(got, a(3));
    }

    #[test]
    fn ip_range_limits_dynamic_only() {
        let mut r = req("10.0.0.0/24");
        r.ip_range = Some("10.0.0.128/30".into());
        let p = make_pool(&r, &[]).unwrap();
        let mut used = BTreeSet::new();
        for want in [128, 129, 130, 131] {
            let a = allocate(&p, &used, None).unwrap();
            assert_eq!(a, Ipv4Addr::new(10, 0, 0, want));
            used.insert(a);
        }
        assert!(allocate(&p, &used, None).is_err());
        assert!(allocate(&p, &used, Some(Ipv4Addr::new(10, 0, 0, 9))).is_ok());
    }

    fn req6(subnet: &str) -> PoolRequest {
        PoolRequest {
            subnet: Some(subnet.into()),
            ..Default::default()
        }
    }

    #[test]
    fn ipv6_pools_follow_the_rules() {
        let p = make_pool6(&req6("2001:db8:1::/64"), &[], "x").unwrap();
        assert_eq!(p.gateway, "2001:db8:1::1".parse::<Ipv6Addr>().unwrap());
        for (s, want) in [
            ("2001:db8:1::1/64", "should be 2001:db8:1::/64"),
            ("fe80::/64", "link-local"),
            ("ff02::/64", "multicast"),
            ("::1/128", "loopback"),
            ("2001:db8::/127", "/126 or shorter"),
            ("10.0.0.0/24", "not an IPv6 CIDR"),
        ] {
            let e = make_pool6(&req6(s), &[], "x").unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        let mut r = req6("2001:db8:1::/64");
        r.gateway = Some("2001:db8:2::1".into());
        assert!(matches!(
            make_pool6(&r, &[], "x"),
            Err(Ipam6Error::GatewayOutside { .. })
        ));
        r.gateway = Some("2001:db8:1::".into());
        assert!(matches!(
            make_pool6(&r, &[], "x"),
            Err(Ipam6Error::GatewayReserved(_))
        ));
        r.gateway = None;
        r.ip_range = Some("2001:db8:1:0:8000::/65".into());
        r.aux.insert("router".into(), "2001:db8:1::2".into());
        let p = make_pool6(&r, &[], "x").unwrap();
        let used = BTreeSet::new();
        assert_eq!(
            allocate6(&p, &used, None).unwrap(),
            "2001:db8:1:0:8000::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            allocate6(&p, &used, Some("2001:db8:1::2".parse().unwrap())),
            Err(Ipam6Error::AddrReserved("2001:db8:1::2".parse().unwrap()))
        );
    }

    #[test]
    fn ipv6_allocation_is_lowest_free() {
        let p = make_pool6(&req6("2001:db8::/64"), &[], "x").unwrap();
        let mut used = BTreeSet::new();
        let a = allocate6(&p, &used, None).unwrap();
        assert_eq!(a, "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        used.insert(a);
        assert_eq!(
            allocate6(&p, &used, None).unwrap(),
            "2001:db8::3".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(allocate6(&p, &used, Some(a)), Err(Ipam6Error::AddrInUse(a)));
        let small = make_pool6(&req6("2001:db8::/126"), &[], "x").unwrap();
        let used: BTreeSet<Ipv6Addr> = ["2001:db8::2", "2001:db8::3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert!(matches!(
            allocate6(&small, &used, None),
            Err(Ipam6Error::Exhausted(_))
        ));
    }

    fn a6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_ipv6_candidates_skip_reserved_and_held_addresses() {
        let mut r = req6("2001:db8:5::/64");
        r.aux.insert("router".into(), "2001:db8:5::2".into());
        let p = make_pool6(&r, &[], "x").unwrap();
        // ::0 (subnet-router anycast), ::1 (gateway), ::2 (auxiliary) and
        // ::3 (held by a host of the cluster) are never offered.
        let used: BTreeSet<Ipv6Addr> = [a6("2001:db8:5::3")].into();
        let c: Vec<Ipv6Addr> = cluster_candidates6(&p, &used, None).take(3).collect();
        assert_eq!(
            c,
            [
                a6("2001:db8:5::4"),
                a6("2001:db8:5::5"),
                a6("2001:db8:5::6")
            ]
        );
        // A requested address is the only candidate (the host's allocate6
        // then checks it against the pool).
        let c: Vec<Ipv6Addr> = cluster_candidates6(&p, &used, Some(a6("2001:db8:5::3"))).collect();
        assert_eq!(c, [a6("2001:db8:5::3")]);
        // The ip-range bounds the dynamic ones, to its end.
        let mut r = req6("2001:db8:5::/64");
        r.ip_range = Some("2001:db8:5::100/126".into());
        let p = make_pool6(&r, &[], "x").unwrap();
        let used: BTreeSet<Ipv6Addr> = [a6("2001:db8:5::101")].into();
        let c: Vec<Ipv6Addr> = cluster_candidates6(&p, &used, None).collect();
        assert_eq!(
            c,
            [
                a6("2001:db8:5::100"),
                a6("2001:db8:5::102"),
                a6("2001:db8:5::103")
            ]
        );
    }

    /// The cluster's allocation, with a map for etcd: each host lists what
    /// is held (a view that may be stale by the time it claims), then
    /// claims candidates create-if-absent, as `Cluster::allocate6` does
    /// with etcd transactions.
    #[test]
    fn cluster_ipv6_allocation_never_hands_out_an_address_twice() {
        let p = make_pool6(&req6("2001:db8:6::/120"), &[], "x").unwrap();
        let mut store: BTreeMap<Ipv6Addr, &str> = BTreeMap::new();
        let claim = |store: &mut BTreeMap<Ipv6Addr, &str>,
                     view: &BTreeSet<Ipv6Addr>,
                     host: &'static str|
         -> Option<Ipv6Addr> {
            let got = cluster_candidates6(&p, view, None)
                .take(crate::cluster::MAX_CLAIM_TRIES)
                .find(|a| !store.contains_key(a))?;
            store.insert(got, host);
            Some(got)
        };
        let mut got = Vec::new();
        for _ in 0..50 {
            // Both hosts list the store, then both claim: the second
            // host's view misses the first's claim.
            let view: BTreeSet<Ipv6Addr> = store.keys().copied().collect();
            got.push(claim(&mut store, &view, "h1").unwrap());
            got.push(claim(&mut store, &view, "h2").unwrap());
        }
        let distinct: BTreeSet<Ipv6Addr> = got.iter().copied().collect();
        assert_eq!(distinct.len(), got.len(), "{got:?}");
        assert!(got
            .iter()
            .all(|a| p.subnet.contains(a) && !is_reserved6(&p, *a)));
        assert_eq!(store.values().filter(|h| **h == "h2").count(), 50);
        // A released address is the lowest free one again.
        store.remove(&a6("2001:db8:6::7"));
        let view: BTreeSet<Ipv6Addr> = store.keys().copied().collect();
        assert_eq!(claim(&mut store, &view, "h2"), Some(a6("2001:db8:6::7")));
        // A /120 holds 254 endpoints (256 less ::0 and the gateway ::1):
        // then nothing.
        loop {
            let view: BTreeSet<Ipv6Addr> = store.keys().copied().collect();
            if claim(&mut store, &view, "h1").is_none() {
                break;
            }
        }
        assert_eq!(store.len(), 254);
    }

    #[test]
    fn default_ipv6_subnets_are_unique_local_and_avoid_used_ones() {
        let a = make_pool6(&PoolRequest::default(), &[], "net-a").unwrap();
        assert_eq!(a.subnet.prefix_len(), 64);
        assert_eq!(a.subnet.network().octets()[0], 0xfd);
        let b = make_pool6(&PoolRequest::default(), &[a.subnet], "net-a").unwrap();
        assert_ne!(a.subnet, b.subnet);
    }
}

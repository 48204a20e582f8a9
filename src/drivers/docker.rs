//! `docker`: networks dockerd made through tapnet's network-driver plugin
//! (`docker network create -d tapnet`, `src/daemon/plugin.rs`). They are
//! switched like `bridge` networks, with a gateway (ARP, ping, NAT) at the
//! address Docker's IPAM reserved; Docker assigns every address (tapnet's
//! anti-spoofing uses them) and answers names itself (its 127.0.0.11), so
//! there is no embedded DNS here. Their endpoints belong to Docker.
//!
//! Dual-stack (`docker network create --ipv6 --subnet … --subnet V6`, or
//! compose's `enable_ipv6`): Docker's `IPv6Data` pool becomes the network's
//! [`Pool6`] (its gateway the one Docker's IPAM reserved), checked as
//! tapnet's own `network create --ipv6` checks it (canonical, not a
//! special range, no overlap); the switch then answers Neighbor Discovery
//! and echo for that gateway, checks endpoints' IPv6 sources and the NAT
//! masquerades IPv6, as on tapnet's bridge networks.
//!
//! Options (`-o`, Docker's "generic" map): Docker's bridge options
//! `com.docker.network.bridge.enable_icc`,
//! `com.docker.network.bridge.enable_ip_masquerade`,
//! `com.docker.network.bridge.host_binding_ipv4` and
//! `com.docker.network.driver.mtu`, and `com.docker.network.enable_ipv6`
//! (as compose sends it; the same as `--ipv6`); anything else is refused
//! at create time.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::{bridge, Attachment, DriverError, DriverKind, NetworkDriver, Services};
use crate::daemon::types::{Map, NetworkCreate};
use crate::dataplane::{Dataplane, DataplaneError, NetId, PortId, PortSpec};
use crate::ipam;
use crate::model::*;
use crate::state::State;

pub struct Docker;

/// The `-o` options a Docker network of tapnet's accepts.
const OPTIONS: [&str; 4] = [OPT_ICC, OPT_MASQ, OPT_HOST_BINDING, OPT_MTU];

/// One `IPv4Data` entry of `NetworkDriver.CreateNetwork` (Docker's IPAM
/// result: CIDR strings, also for the gateway and auxiliary addresses).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    pub address_space: String,
    pub pool: String,
    pub gateway: String,
    pub aux_addresses: BTreeMap<String, String>,
}

/// The address of a CIDR string (`172.18.0.1/16`, `2001:db8::1/64`), or
/// a bare address.
fn cidr_addr<A: std::str::FromStr>(s: &str) -> Option<A> {
    s.split('/').next()?.parse().ok()
}

/// The network's IPv6 pool from Docker's `IPv6Data` (none without
/// `enable_ipv6`; at most one pool), checked by tapnet's IPv6 IPAM rules
/// and against every network's IPv6 subnets.
fn pool6_from_docker(
    st: &State,
    enable: bool,
    ipv6: &[IpamData],
) -> Result<Option<Pool6>, DriverError> {
    let d = match ipv6 {
        [] => return Ok(None),
        [d] => d,
        _ => return Err(DriverError::OneSubnet6),
    };
    if !enable {
        return Err(DriverError::Ipv6NotEnabled(d.pool.clone()));
    }
    let gateway = match d.gateway.as_str() {
        "" => None,
        g => Some(
            cidr_addr::<Ipv6Addr>(g)
                .ok_or_else(|| {
                    DriverError::DockerRequest(format!("a malformed IPv6 gateway {g:?}"))
                })?
                .to_string(),
        ),
    };
    let mut aux = BTreeMap::new();
    for (name, a) in &d.aux_addresses {
        let addr = cidr_addr::<Ipv6Addr>(a).ok_or_else(|| {
            DriverError::DockerRequest(format!("a malformed auxiliary address {a:?}"))
        })?;
        aux.insert(name.clone(), addr.to_string());
    }
    let pool = ipam::make_pool6(
        &ipam::PoolRequest {
            subnet: Some(d.pool.clone()),
            ip_range: None,
            gateway,
            aux,
        },
        &[],
        "",
    )?;
    for n in st.networks.values() {
        if let Some(p) = n
            .pools6
            .iter()
            .find(|p| ipam::overlaps6(&p.subnet, &pool.subnet))
        {
            return Err(DriverError::Overlap6 {
                subnet: pool.subnet,
                other: n.name.clone(),
                theirs: p.subnet,
            });
        }
    }
    Ok(Some(pool))
}

impl Docker {
    /// The network record for Docker's `CreateNetwork`: its id, its
    /// options (`Options`, arbitrary JSON) and its IPAM data, checked
    /// against the state (one IPv4 pool and at most one IPv6 pool, no
    /// overlap with another network, known options only).
    pub fn from_docker(
        st: &State,
        network_id: &str,
        options: &serde_json::Value,
        ipv4: &[IpamData],
        ipv6: &[IpamData],
    ) -> Result<Network, DriverError> {
        if network_id.len() != 64 || !network_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DriverError::DockerRequest(format!(
                "a malformed network id {network_id:?}"
            )));
        }
        let flag = |k: &str| options.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let mut enable_ipv6 = flag(OPT_ENABLE_IPV6);
        let mut generic = Map::new();
        if let Some(g) = options.get("com.docker.network.generic") {
            let obj = g.as_object().ok_or_else(|| {
                DriverError::DockerRequest("driver options that are not a map".into())
            })?;
            for (k, v) in obj {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // Compose's spelling of `--ipv6` (`-o`, a string).
                if k == OPT_ENABLE_IPV6 {
                    enable_ipv6 |= parse_bool(&v).ok_or_else(|| DriverError::BadOption {
                        key: k.clone(),
                        value: v.clone(),
                        why: "expected true or false",
                    })?;
                    continue;
                }
                if !OPTIONS.contains(&k.as_str()) {
                    return Err(DriverError::UnknownOption {
                        key: k.clone(),
                        known: OPTIONS.join(", "),
                    });
                }
                generic.insert(k.clone(), v);
            }
        }
        bridge::validate_options(&generic)?;
        let [d] = ipv4 else {
            return Err(if ipv4.is_empty() {
                DriverError::DockerRequest("no IPv4 pool".into())
            } else {
                DriverError::OneSubnet
            });
        };
        let subnet: Ipv4Net = d
            .pool
            .parse::<Ipv4Net>()
            .map_err(|_| DriverError::DockerRequest(format!("a malformed pool {:?}", d.pool)))?
            .trunc();
        if let Some((range, kind)) = ipam::special_range(&subnet) {
            return Err(DriverError::Ipam(ipam::IpamError::SpecialSubnet {
                subnet,
                range,
                kind,
            }));
        }
        let gateway = cidr_addr::<Ipv4Addr>(&d.gateway)
            .filter(|g| subnet.contains(g))
            .ok_or_else(|| {
                DriverError::DockerRequest(format!(
                    "gateway {:?} outside pool {subnet}: tapnet's networks need a gateway",
                    d.gateway
                ))
            })?;
        let mut aux = BTreeMap::new();
        for (name, a) in &d.aux_addresses {
            let addr = cidr_addr(a).ok_or_else(|| {
                DriverError::DockerRequest(format!("a malformed auxiliary address {a:?}"))
            })?;
            aux.insert(name.clone(), addr);
        }
        bridge::check_overlap(st, subnet)?;
        let pool6 = pool6_from_docker(st, enable_ipv6, ipv6)?;
        let mtu = generic
            .get(OPT_MTU)
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(DEFAULT_MTU);
        if pool6.is_some() && mtu < 1280 {
            return Err(DriverError::Ipv6Mtu(mtu));
        }
        Ok(Network {
            id: network_id.to_string(),
            name: format!("docker-{}", &network_id[..12]),
            driver: DriverKind::Docker,
            created: now_rfc3339(),
            internal: flag("com.docker.network.internal"),
            attachable: false,
            ingress: false,
            enable_ipv6: pool6.is_some(),
            pools: vec![Pool {
                subnet,
                gateway,
                ip_range: None,
                aux,
            }],
            pools6: pool6.into_iter().collect(),
            ipam_options: BTreeMap::new(),
            options: generic,
            labels: [("com.docker.network.id".to_string(), network_id.to_string())].into(),
            predefined: false,
        })
    }
}

impl NetworkDriver for Docker {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }

    fn attachment(&self) -> Attachment {
        Attachment::External
    }

    fn validate(&self, _: &State, _: &NetworkCreate, _: Network) -> Result<Network, DriverError> {
        Err(DriverError::DockerOnly)
    }

    fn services(&self, n: &Network) -> Services {
        Services {
            default_route: !n.internal,
            // Docker's own resolver (127.0.0.11) answers its containers.
            embedded_dns: false,
            publish: !n.internal,
            routed: false,
        }
    }

    fn create(&self, dp: &Dataplane, id: NetId, n: &Network) -> Result<(), DataplaneError> {
        bridge::add_to_dataplane(dp, id, n, false)
    }

    fn delete(&self, dp: &Dataplane, id: NetId) -> Result<(), DataplaneError> {
        dp.remove_network(id)
    }

    fn join(
        &self,
        dp: &Dataplane,
        spec: PortSpec,
        queues: Vec<OwnedFd>,
    ) -> Result<PortId, DataplaneError> {
        dp.add_port(spec, queues)
    }

    fn leave(&self, dp: &Dataplane, port: PortId) -> Result<(), DataplaneError> {
        dp.remove_port(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> String {
        "ab".repeat(32)
    }

    fn data(pool: &str, gw: &str) -> Vec<IpamData> {
        vec![IpamData {
            pool: pool.into(),
            gateway: gw.into(),
            ..Default::default()
        }]
    }

    #[test]
    fn docker_networks() {
        let st = State::default();
        let opts = serde_json::json!({
            "com.docker.network.generic": {"com.docker.network.bridge.enable_icc": "false",
                                           "com.docker.network.driver.mtu": "1400"},
            "com.docker.network.internal": true,
            "com.docker.network.enable_ipv6": false,
        });
        let v6opt = serde_json::json!({
            "com.docker.network.generic": {"com.docker.network.enable_ipv6": "true"},
        });
        let n = Docker::from_docker(
            &st,
            &id(),
            &v6opt,
            &data("172.19.0.0/16", "172.19.0.1/16"),
            &data("fd00:1::/64", "fd00:1::1/64"),
        )
        .unwrap();
        assert!(n.enable_ipv6 && n.pools6.len() == 1);
        let n = Docker::from_docker(
            &st,
            &id(),
            &opts,
            &data("172.18.0.0/16", "172.18.0.1/16"),
            &[],
        )
        .unwrap();
        assert_eq!(n.name, format!("docker-{}", &id()[..12]));
        assert!(n.internal && !n.icc());
        assert_eq!(n.mtu(), 1400);
        assert_eq!(n.pools[0].gateway, Ipv4Addr::new(172, 18, 0, 1));
        for bad in [
            serde_json::json!({"com.docker.network.generic": {"zzz": "1"}}),
            serde_json::json!({"com.docker.network.generic": {"com.docker.network.driver.mtu": "abc"}}),
            serde_json::json!({"com.docker.network.generic": {"com.docker.network.enable_ipv6": "maybe"}}),
        ] {
            assert!(
                Docker::from_docker(
                    &st,
                    &id(),
                    &bad,
                    &data("172.18.0.0/16", "172.18.0.1/16"),
                    &[]
                )
                .is_err(),
                "{bad}"
            );
        }
        let none = serde_json::json!({});
        assert!(Docker::from_docker(&st, &id(), &none, &[], &[]).is_err());
        // Dual-stack: Docker's IPv6 pool and gateway (CIDR strings).
        let v6 = serde_json::json!({"com.docker.network.enable_ipv6": true});
        let v4 = data("10.0.0.0/24", "10.0.0.1/24");
        let n = Docker::from_docker(
            &st,
            &id(),
            &v6,
            &v4,
            &data("2001:db8:1::/64", "2001:db8:1::1/64"),
        )
        .unwrap();
        assert!(n.enable_ipv6);
        assert_eq!(n.pools6.len(), 1);
        assert_eq!(n.pools6[0].subnet.to_string(), "2001:db8:1::/64");
        assert_eq!(n.pools6[0].gateway.to_string(), "2001:db8:1::1");
        let mut st2 = State::default();
        st2.networks.insert(n.id.clone(), n);
        for (opts, pool, gw) in [
            // IPv6 data without enable_ipv6.
            (&none, "2001:db8:2::/64", "2001:db8:2::1/64"),
            // Overlaps the first network's IPv6 subnet.
            (&v6, "2001:db8:1::/48", "2001:db8:1::1/48"),
            // An MTU below IPv6's minimum.
            (
                &serde_json::json!({"com.docker.network.enable_ipv6": true,
                    "com.docker.network.generic": {"com.docker.network.driver.mtu": "1200"}}),
                "2001:db8:5::/64",
                "2001:db8:5::1/64",
            ),
            // Link-local, gateway outside, malformed.
            (&v6, "fe80::/64", "fe80::1/64"),
            (&v6, "2001:db8:3::/64", "2001:db8:4::1/64"),
            (&v6, "2001:db8:3::/64", "zz/64"),
        ] {
            assert!(
                Docker::from_docker(
                    &st2,
                    &"cd".repeat(32),
                    opts,
                    &data("10.1.0.0/24", "10.1.0.1/24"),
                    &data(pool, gw)
                )
                .is_err(),
                "{pool} {gw}"
            );
        }
        assert!(
            Docker::from_docker(&st, "x", &none, &data("10.0.0.0/24", "10.0.0.1/24"), &[]).is_err()
        );
        assert!(
            Docker::from_docker(&st, &id(), &none, &data("10.0.0.0/24", "10.9.0.1/24"), &[])
                .is_err()
        );
    }
}

//! Observability: what `tapnet capture`, `tapnet stats` and `/metrics`
//! ask of the core. Captures resolve their selection here (a network or a
//! container by name or id) and compile their filter; the frames then flow
//! in the dataplane's capture hub ([`crate::dataplane::capture`]), never
//! through the core.

use std::collections::BTreeMap;

use serde::Serialize;
use tapnet_switch::DropReason;

use super::containers::find_container;
use super::core::{find_network, Core};
use super::error::LookupError;
use crate::dataplane::capture::{CaptureSpec, Selection};

/// Why a capture or stats request was refused.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ObserveError {
    /// {0}
    Lookup(#[from] LookupError),
    /// invalid capture filter {filter:?}: {why}
    Filter { filter: String, why: String },
    /// invalid {what} {value:?}
    Value { what: &'static str, value: String },
    /// --interface needs --container
    InterfaceAlone,
    /// give --network or --container, not both
    Both,
    /// network {0} has no switched ports to capture
    NotSwitched(String),
    /// no capture {0} is running
    NoCapture(u64),
}

/// A capture request's parameters (the query of `GET /tapnet/capture`).
#[derive(Clone, Debug, Default)]
pub struct CaptureRequest {
    pub network: Option<String>,
    pub container: Option<String>,
    pub interface: Option<String>,
    pub drops: bool,
    pub snaplen: Option<String>,
    pub count: Option<String>,
    pub filter: Option<String>,
}

fn number(what: &'static str, v: &Option<String>) -> Result<u64, ObserveError> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(0),
        Some(s) => s.parse().map_err(|_| ObserveError::Value {
            what,
            value: s.to_string(),
        }),
    }
}

/// One port's counters in `tapnet stats`.
#[derive(Clone, Debug, Serialize)]
pub struct PortRow {
    pub port: String,
    pub container: String,
    pub interface: String,
    pub network: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// `rx_packets` by the worker that read them (which of the TAP's
    /// queues the kernel put them on: `tapnet daemon --tap-steering`).
    pub rx_packets_by_worker: Vec<u64>,
    /// Drops by reason (only reasons that counted).
    pub drops: BTreeMap<String, u64>,
    /// Frames the container sent that the kernel dropped at the TAP's full
    /// ring before the switch read them: the interface's `tx_dropped` in
    /// the container. They never reached the switch, so they are in no
    /// other counter here. None for a port that is no TAP, or whose
    /// namespace the daemon cannot enter.
    pub ring_drops: Option<u64>,
    /// The switch's port, for [`Stats::read_ring_drops`].
    #[serde(skip)]
    pub port_id: u32,
}

impl Stats {
    /// Reads the ports' [`PortRow::ring_drops`] and adds them to their
    /// networks' sums; only these ports' namespaces are entered. Run it
    /// without the core's lock: it takes tens of microseconds a port. A
    /// port removed meanwhile keeps None.
    pub fn read_ring_drops(&mut self, dp: &crate::dataplane::Dataplane) {
        let ids: Vec<u32> = self.ports.iter().map(|p| p.port_id).collect();
        let ring = dp.ring_drops(&ids);
        for p in &mut self.ports {
            p.ring_drops = ring.get(&p.port_id).copied();
            if let (Some(n), Some(row)) = (
                p.ring_drops,
                self.networks.iter_mut().find(|r| r.network == p.network),
            ) {
                row.ring_drops += n;
            }
        }
    }
}

/// One network's totals.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetworkRow {
    pub network: String,
    pub ports: usize,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: BTreeMap<String, u64>,
    /// The sum of its ports' known [`PortRow::ring_drops`].
    pub ring_drops: u64,
}

/// The embedded DNS's answers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DnsRow {
    pub queries: u64,
    /// Answered from the registry (records or NOERROR without).
    pub local: u64,
    /// Queued for an upstream.
    pub forwarded: u64,
    /// Not local on an internal network.
    pub refused: u64,
    /// SERVFAIL (no upstream answered, none configured), FORMERR, NOTIMP,
    /// BADVERS, and queries dropped (queue full, malformed).
    pub errors: u64,
    /// Queries over TCP (answered locally or forwarded).
    pub tcp: u64,
    /// Forwarded queries an upstream answered.
    pub upstream_answered: u64,
}

/// `tapnet stats`.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub ports: Vec<PortRow>,
    pub networks: Vec<NetworkRow>,
    pub workers: Vec<crate::dataplane::WorkerStats>,
    pub dns: DnsRow,
    /// The NAT: flows now, drops by reason.
    pub nat: NatRow,
    /// Drops of frames from no known port.
    pub switch_drops: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NatRow {
    pub flows: u64,
    pub drops: BTreeMap<String, u64>,
    /// Bytes of idle TCP flows' rings given back to the kernel so far.
    pub ring_bytes_released: u64,
}

fn drops_map(d: &[u64]) -> BTreeMap<String, u64> {
    DropReason::ALL
        .iter()
        .zip(d)
        .filter(|(_, &n)| n != 0)
        .map(|(r, &n)| (r.as_str().to_string(), n))
        .collect()
}

impl Core {
    /// Resolves and validates a capture request.
    pub fn capture_spec(&self, q: CaptureRequest) -> Result<CaptureSpec, ObserveError> {
        let st = self.store.state();
        let nonempty = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        let (network, container, interface) = (
            nonempty(&q.network),
            nonempty(&q.container),
            nonempty(&q.interface),
        );
        let selection = match (network, container) {
            (Some(_), Some(_)) => return Err(ObserveError::Both),
            (Some(n), None) => {
                if interface.is_some() {
                    return Err(ObserveError::InterfaceAlone);
                }
                let net = find_network(st, &n)?;
                let id = self
                    .dp_net_id(&net.id)
                    .and_then(|id| self.dp.switch_network(id))
                    .ok_or_else(|| ObserveError::NotSwitched(net.name.clone()))?;
                Selection::Network(id)
            }
            (None, Some(c)) => {
                let c = find_container(st, &c)?;
                Selection::Container {
                    prefixes: vec![c.name.clone(), c.id[..12.min(c.id.len())].to_string()],
                    interface,
                }
            }
            (None, None) => {
                if interface.is_some() {
                    return Err(ObserveError::InterfaceAlone);
                }
                Selection::All
            }
        };
        let snaplen = number("snaplen", &q.snaplen)?;
        let snaplen = u32::try_from(snaplen).map_err(|_| ObserveError::Value {
            what: "snaplen",
            value: snaplen.to_string(),
        })?;
        let count = number("count", &q.count)?;
        let filter = match nonempty(&q.filter) {
            None => None,
            Some(f) => Some(
                crate::dataplane::capture::compile_filter(&f)
                    .map_err(|why| ObserveError::Filter { filter: f, why })?,
            ),
        };
        Ok(CaptureSpec {
            selection,
            drops: q.drops,
            snaplen,
            count,
            filter,
        })
    }

    /// Stops a running capture (its stream ends with the statistics).
    pub fn capture_stop(&self, id: u64) -> Result<(), ObserveError> {
        if self.dp.capture().stop(id) {
            Ok(())
        } else {
            Err(ObserveError::NoCapture(id))
        }
    }

    /// Counters: every port (or a container's, or a network's), the
    /// networks' totals, the workers, the DNS, the NAT. The ports' ring
    /// drops are left unread: [`Stats::read_ring_drops`] reads them
    /// without the core's lock (it enters each port's namespace).
    pub fn stats(
        &self,
        container: Option<&str>,
        network: Option<&str>,
    ) -> Result<Stats, ObserveError> {
        let st = self.store.state();
        let container = container.filter(|s| !s.is_empty());
        let network = network.filter(|s| !s.is_empty());
        if container.is_some() && network.is_some() {
            return Err(ObserveError::Both);
        }
        let prefixes: Option<Vec<String>> = match container {
            Some(k) => {
                let c = find_container(st, k)?;
                Some(vec![c.name.clone(), c.id[..12.min(c.id.len())].to_string()])
            }
            None => None,
        };
        let only_net = match network {
            Some(k) => {
                let n = find_network(st, k)?;
                Some(
                    self.dp_net_id(&n.id)
                        .and_then(|id| self.dp.switch_network(id))
                        .ok_or_else(|| ObserveError::NotSwitched(n.name.clone()))?,
                )
            }
            None => None,
        };
        let topo = self.dp.switch().topology();
        let split = |name: &str| -> (String, String) {
            name.rsplit_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .unwrap_or_else(|| (name.to_string(), String::new()))
        };
        // Each chosen port with its container's and interface's names.
        let chosen: Vec<_> = topo
            .ports()
            .filter(|p| only_net.is_none_or(|n| n == p.network()))
            .map(|p| (p, split(&p.config.name)))
            .filter(|(_, (cname, _))| prefixes.as_ref().is_none_or(|pre| pre.contains(cname)))
            .collect();
        let mut ports = vec![];
        let mut nets: BTreeMap<String, (NetworkRow, Vec<u64>)> = BTreeMap::new();
        for (p, (cname, iface)) in chosen {
            let net = topo
                .network(p.network())
                .map(|n| n.config.name.clone())
                .unwrap_or_default();
            let s = p.counters.sum();
            let (row, d) = nets.entry(net.clone()).or_insert_with(|| {
                (
                    NetworkRow {
                        network: net.clone(),
                        ..Default::default()
                    },
                    vec![0; s.drops.len()],
                )
            });
            row.ports += 1;
            row.rx_packets += s.rx_packets;
            row.rx_bytes += s.rx_bytes;
            row.tx_packets += s.tx_packets;
            row.tx_bytes += s.tx_bytes;
            for (a, b) in d.iter_mut().zip(s.drops.iter()) {
                *a += b;
            }
            ports.push(PortRow {
                port: p.config.name.clone(),
                container: cname,
                interface: iface,
                network: net,
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                rx_packets_by_worker: p.counters.rx_by_worker(),
                drops: drops_map(&s.drops),
                ring_drops: None,
                port_id: p.id.0,
            });
        }
        ports.sort_by(|a, b| a.port.cmp(&b.port));
        let networks = nets
            .into_values()
            .map(|(mut r, d)| {
                r.drops = drops_map(&d);
                r
            })
            .collect();
        let (d, f) = self.dp.dns_stats();
        let dns = DnsRow {
            queries: d.queries + d.tcp_answers + d.tcp_forwarded,
            local: d.answers + d.nodata,
            forwarded: d.forwarded,
            refused: d.refused,
            errors: d.servfail
                + d.formerr
                + d.notimp
                + d.badvers
                + d.forward_queue_full
                + d.dropped
                + f.errors,
            tcp: d.tcp_answers + d.tcp_forwarded,
            upstream_answered: f.answered,
        };
        let ct = self.dp.conntrack_stats();
        let nat = NatRow {
            flows: ct["flows"].as_u64().unwrap_or(0),
            drops: ct["drop_reasons"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default(),
            ring_bytes_released: ct["rings_released"]["bytes"].as_u64().unwrap_or(0),
        };
        Ok(Stats {
            ports,
            networks,
            workers: self.dp.worker_stats(),
            dns,
            nat,
            switch_drops: drops_map(&self.dp.switch().switch_drops()),
        })
    }
}

/// The Prometheus text exposition of `s` (`tapnet daemon --metrics-addr`),
/// built at scrape time from the same counters as `tapnet stats`.
pub fn encode_metrics(s: &Stats) -> String {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
    use prometheus_client::registry::Registry;
    use std::sync::atomic::AtomicU64;
    type L = Vec<(String, String)>;
    type C = Family<L, Counter>;
    let mut reg = Registry::default();
    /// A metric of the default kind `M`, registered under `name`.
    fn add<M: prometheus_client::registry::Metric + Clone + Default>(
        reg: &mut Registry,
        name: &str,
        help: &str,
    ) -> M {
        let m = M::default();
        reg.register(name, help, m.clone());
        m
    }
    let rx_p: C = add(
        &mut reg,
        "tapnet_port_rx_packets",
        "Frames a port sent into the switch",
    );
    let rx_b: C = add(
        &mut reg,
        "tapnet_port_rx_bytes",
        "Bytes a port sent into the switch",
    );
    let tx_p: C = add(
        &mut reg,
        "tapnet_port_tx_packets",
        "Frames the switch sent out of a port",
    );
    let tx_b: C = add(
        &mut reg,
        "tapnet_port_tx_bytes",
        "Bytes the switch sent out of a port",
    );
    let drops: C = add(
        &mut reg,
        "tapnet_port_drops",
        "Frames of a port dropped, by reason",
    );
    let ring: C = add(
        &mut reg,
        "tapnet_port_ring_drops",
        "Frames a container sent that the kernel dropped at its TAP's full ring before the switch read them",
    );
    let sw_drops: C = add(
        &mut reg,
        "tapnet_switch_drops",
        "Frames dropped before their port was known, by reason",
    );
    let dns: C = add(
        &mut reg,
        "tapnet_dns_queries",
        "Embedded DNS queries by result (local, forwarded, refused, errors; tcp counts TCP queries)",
    );
    let nat_drops: C = add(
        &mut reg,
        "tapnet_nat_drops",
        "Frames and flows the NAT dropped, by reason",
    );
    type Seconds = Family<L, Counter<f64, AtomicU64>>;
    let busy: Seconds = add(
        &mut reg,
        "tapnet_worker_busy_seconds",
        "Time a worker spent busy",
    );
    let share: Family<L, Gauge<f64, AtomicU64>> = add(
        &mut reg,
        "tapnet_worker_busy_ratio",
        "Share of the time a worker was busy since the daemon started",
    );
    let spin: Seconds = add(
        &mut reg,
        "tapnet_worker_spin_seconds",
        "Time a worker spent busy-polling without finding work (--busy-poll-us)",
    );
    let nat_frames: C = add(
        &mut reg,
        "tapnet_worker_nat_frames",
        "Frames of containers a worker read and gave the NAT (from a worker that does not run the NAT: hand-offs across threads)",
    );
    let flows: Gauge = add(&mut reg, "tapnet_nat_flows", "Flows in the NAT's table");
    let released: Counter = add(
        &mut reg,
        "tapnet_nat_ring_released_bytes",
        "Bytes of idle TCP flows' rings given back to the kernel (their pages resident again only as data flows)",
    );
    let l = |kv: &[(&str, &str)]| -> L {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for p in &s.ports {
        let base = [
            ("network", p.network.as_str()),
            ("container", p.container.as_str()),
            ("interface", p.interface.as_str()),
        ];
        rx_p.get_or_create(&l(&base)).inc_by(p.rx_packets);
        rx_b.get_or_create(&l(&base)).inc_by(p.rx_bytes);
        tx_p.get_or_create(&l(&base)).inc_by(p.tx_packets);
        tx_b.get_or_create(&l(&base)).inc_by(p.tx_bytes);
        if let Some(n) = p.ring_drops {
            ring.get_or_create(&l(&base)).inc_by(n);
        }
        for (r, n) in &p.drops {
            let mut v = l(&base);
            v.push(("reason".into(), r.clone()));
            drops.get_or_create(&v).inc_by(*n);
        }
    }
    for (r, n) in &s.switch_drops {
        sw_drops.get_or_create(&l(&[("reason", r)])).inc_by(*n);
    }
    for w in &s.workers {
        let v = l(&[("worker", &w.worker.to_string())]);
        busy.get_or_create(&v).inc_by(w.busy_seconds);
        share.get_or_create(&v).set(w.busy_share);
        spin.get_or_create(&v).inc_by(w.spin_seconds);
        nat_frames.get_or_create(&v).inc_by(w.nat_frames);
    }
    let d = &s.dns;
    for (k, n) in [
        ("local", d.local),
        ("forwarded", d.forwarded),
        ("refused", d.refused),
        ("errors", d.errors),
        ("tcp", d.tcp),
    ] {
        dns.get_or_create(&l(&[("result", k)])).inc_by(n);
    }
    for (r, n) in &s.nat.drops {
        nat_drops.get_or_create(&l(&[("reason", r)])).inc_by(*n);
    }
    flows.set(s.nat.flows as i64);
    released.inc_by(s.nat.ring_bytes_released);
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

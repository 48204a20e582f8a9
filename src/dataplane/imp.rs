use super::inject::{self, InjectRx, InjectTx, Injected, WorkerWake};
use super::nat::Nat;
use super::place::{Placement, Rebalancer};
use super::spin::{Crowd, SpinGate, SpinToken, SpinWindow, Stream};
use super::vtep::{TunnelRx, TunnelTx, Vtep};
use super::*;
use anyhow::{bail, Context};
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapnet_dns::{DnsHook, FastRng, Registry, Responder, ResponderConfig};
use tapnet_switch::wire::{vnet, EthernetAddress, VnetHdr};
use tapnet_switch::{
    DropReason, Ipv6Config, NetworkConfig, NetworkId, OverlayConfig, Port, PortConfig, PortStats,
    Processed, Switch, SwitchConfig, Topology, Transmit, Worker,
};

/// The services behind each network's gateway, per worker: the embedded
/// DNS, then the NAT gateway.
type Hook = DnsHook<super::nat::NatHook, FastRng>;
/// Forwarded DNS queries waiting for the forwarder.
const DNS_FORWARD_QUEUE: usize = 4096;
/// Forwarded answers waiting in one worker's injection queue (the
/// forwarder has at most `dns::MAX_IN_FLIGHT` queries out at once).
const DNS_INJECT_QUEUE: usize = super::dns::MAX_IN_FLIGHT;

/// Frames a worker reads from one queue before looking at the others.
const READ_BUDGET: usize = 64;
/// Largest frame plus virtio-net header a TAP hands us (64 KiB GSO).
const RX_BUF_LEN: usize = super::nat::FRAME_BUF;
const WAKER: Token = Token(usize::MAX);
/// The VTEP's UDP socket (worker 0).
const VTEP_UDP: Token = Token(usize::MAX - 1);
/// The VTEP's raw ESP socket (worker 0).
const VTEP_ESP: Token = Token(usize::MAX - 2);
/// The NAT's own epoll instance, nested in worker 0's (unless
/// `--nat-thread`).
const NAT_POLL: Token = Token(usize::MAX - 3);

enum Cmd {
    /// A port's queues, one per worker: the worker reads its own and
    /// writes on any (flow placement).
    AddQueue {
        port: u32,
        fds: Arc<[OwnedFd]>,
    },
    RemovePort(u32),
    Stop,
}

struct WorkerHandle {
    tx: Sender<Cmd>,
    wake: Arc<WorkerWake>,
}

/// What a worker thread starts with besides its switch worker and queues.
struct WorkerOwn {
    /// The tunnel every worker sends on (overlay networks), if any.
    vtep: Option<Arc<Vtep>>,
    /// The same tunnel for the one worker that reads its sockets.
    reader: Option<Arc<Vtep>>,
    /// What this worker publishes about itself.
    shared: Arc<WorkerShared>,
    /// How long the worker keeps polling without sleeping after its last
    /// work (`--busy-poll-us`; zero: it sleeps at once).
    busy_poll: Duration,
    /// Shared by the workers: how many poll at once (None: no limit).
    spin_gate: Option<Arc<SpinGate>>,
    /// When the worker sleeps rather than polls while the machine's run
    /// queues are crowded (`Crowd`).
    crowd_sleep: CrowdSleep,
    /// Poll on while the worker forwards a stream between containers
    /// (`tapnet daemon --poll-switch-streams`).
    poll_switch_streams: bool,
    /// The NAT, for the worker that drives it (worker 0, unless
    /// `--nat-thread`).
    nat: Option<Nat>,
    /// Flow placement, shared by the workers.
    place: Arc<Placement>,
    /// Frames written to TAPs in one system call ([`DataplaneConfig::tx_batch`]).
    tx_batch: usize,
    /// Turns reading frames from ports after which the worker panics
    /// (the `worker_panic` fault of a test); None in use.
    panic_after: Option<u64>,
}

/// What a worker publishes about itself, once per loop (not per frame).
#[derive(Default)]
struct WorkerShared {
    /// Nanoseconds spent between waking up and going back to epoll, in
    /// loops that found work.
    busy_ns: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent polling without finding work inside the busy-poll
    /// window (`--busy-poll-us`): CPU paid for latency.
    spin_ns: std::sync::atomic::AtomicU64,
    /// The embedded DNS's counters of this worker's hook.
    dns: parking_lot::Mutex<tapnet_dns::DnsStats>,
    /// The CPU the worker is pinned to (`--worker-cpus`); unset: none
    /// (not asked, or the kernel refused).
    cpu: std::sync::OnceLock<usize>,
    /// Frames this worker's hook gave the NAT (written by the worker
    /// alone; see [`WorkerStats::nat_frames`]).
    nat_frames: Arc<std::sync::atomic::AtomicU64>,
}

/// One worker's load, for `tapnet stats` and `/metrics`.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct WorkerStats {
    pub worker: usize,
    /// Seconds busy since the dataplane started.
    pub busy_seconds: f64,
    /// Share of the time busy since the dataplane started (0..1).
    pub busy_share: f64,
    /// Seconds spent busy-polling without finding work (`--busy-poll-us`).
    pub spin_seconds: f64,
    /// Share of the time spent busy-polling without finding work (0..1).
    pub spin_share: f64,
    /// The CPU the worker is pinned to (`tapnet daemon --worker-cpus`);
    /// None: wherever the scheduler puts it.
    pub cpu: Option<usize>,
    /// Frames of containers this worker read and gave the NAT. The NAT
    /// runs in worker 0 (or in a thread of its own with `--nat-thread`):
    /// another worker's count is frames handed across threads, each a
    /// possible wake-up of the NAT's: a flow's first frame, which the
    /// kernel's hash gave to this worker's queue, and every frame of the
    /// flows the TAP's steering table has no room for (bench/NOTES.md:
    /// "A hand-off is not work").
    pub nat_frames: u64,
}

struct Inner {
    switch: Arc<Switch>,
    capture: Arc<super::capture::Hub>,
    shared: Vec<Arc<WorkerShared>>,
    forward_stats: Arc<super::dns::ForwardStats>,
    workers: Vec<WorkerHandle>,
    nets: Mutex<HashMap<NetId, NetworkId>>,
    /// The queues of every port added with [`Dataplane::add_port`] (the
    /// workers hold the same `Arc`), for reading their kernel counters.
    /// Removed with the port, so that the workers' drop closes them.
    queues: Mutex<HashMap<u32, Arc<[OwnedFd]>>>,
    vtep: Option<Arc<Vtep>>,
    /// [`DataplaneConfig::steering`].
    steering: Option<Arc<super::Steering>>,
    dns: Arc<Registry>,
    upstreams: Arc<super::dns::Upstreams>,
    nat: super::nat::NatHandle,
    host_loopback: bool,
    /// Injected faults and how many calls of each operation were made.
    faults: Vec<(Fault, std::sync::atomic::AtomicU64)>,
    epoch: Instant,
    stop: AtomicBool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Handle to the running worker threads. Cloning is cheap; the threads stop
/// when [`Dataplane::shutdown`] is called.
#[derive(Clone)]
pub struct Dataplane {
    inner: Arc<Inner>,
}

impl Dataplane {
    /// Starts `workers` worker threads (>= 1) with default settings.
    pub fn start(workers: usize) -> anyhow::Result<Dataplane> {
        Self::start_with(DataplaneConfig {
            workers,
            ..Default::default()
        })
    }

    /// Starts the worker threads, the DNS forwarder and a housekeeping
    /// thread.
    pub fn start_with(config: DataplaneConfig) -> anyhow::Result<Dataplane> {
        let workers = config.workers.max(1);
        let vtep = match &config.vtep {
            Some(c) => Some(Arc::new(Vtep::open(c)?)),
            None => None,
        };
        let switch = Switch::new(SwitchConfig {
            workers,
            fdb_capacity: 1 << 16,
            vxlan_port: vtep
                .as_ref()
                .map(|v| v.addr.port())
                .unwrap_or(tapnet_switch::wire::vxlan::PORT),
            ..Default::default()
        });
        let epoch = Instant::now();
        let dns = Registry::new();
        let (ftx, frx) = tapnet_dns::forward_queue(DNS_FORWARD_QUEUE);
        let responder = ResponderConfig {
            ttl: config.dns_ttl,
            ..Default::default()
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        // Each worker's epoll and wake-up first: the NAT thread and the
        // DNS forwarder inject frames into every worker.
        let mut polls = Vec::new();
        let mut wakes = Vec::new();
        for _ in 0..workers {
            let poll = Poll::new().context("create epoll instance")?;
            let waker = Waker::new(poll.registry(), WAKER).context("create waker")?;
            polls.push(poll);
            wakes.push(Arc::new(WorkerWake::new(waker)));
        }
        let (nat_tx, nat_rx): (Vec<InjectTx>, Vec<InjectRx>) = wakes
            .iter()
            .map(|w| inject::queue(super::nat::INJECT_QUEUE, w.clone()))
            .unzip();
        let (dns_tx, dns_rx): (Vec<InjectTx>, Vec<InjectRx>) = wakes
            .iter()
            .map(|w| inject::queue(DNS_INJECT_QUEUE, w.clone()))
            .unzip();
        let capture = super::capture::Hub::new(switch.clone());
        let spin_gate = SpinGate::new(config.busy_poll_workers).map(Arc::new);
        let place = Arc::new(Placement::new(workers));
        // In worker 0 (the default), the NAT sends every frame through
        // worker 0: a TAP queue's flow steering then brings the flow's
        // next frames from the container to worker 0 as well, where the
        // NAT reads them without a hand-off.
        let nat_inject = if config.nat_thread {
            nat_tx
        } else {
            nat_tx.into_iter().take(1).collect()
        };
        let (nat, mut nat_edge, nat_pools) = super::nat::start(
            capture.clone(),
            config.host_loopback,
            &config.conntrack,
            seed.rotate_left(32),
            epoch,
            nat_inject,
            config.nat_thread,
            workers,
        )
        .context("start the NAT")?;
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let mut shared = Vec::new();
        let rxs = nat_rx.into_iter().zip(dns_rx).zip(nat_pools);
        for (id, ((poll, wake), ((nat_rx, dns_rx), nat_pool))) in
            polls.into_iter().zip(wakes).zip(rxs).enumerate()
        {
            let (tx, rx) = crossbeam_channel::unbounded();
            let sh = Arc::new(WorkerShared::default());
            let hook = DnsHook::with_inner(
                dns.clone(),
                Responder::new(responder),
                FastRng::new(
                    seed.wrapping_add(id as u64)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
                Some(ftx.clone()),
                super::nat::NatHook::new(nat.queue(), nat_pool, id, sh.nat_frames.clone()),
            );
            let w = Worker::with_hook(switch.clone(), id, hook);
            let injects = vec![nat_rx, dns_rx];
            let wk = wake.clone();
            // Worker 0 reads the tunnel's sockets; every worker sends.
            let reader = match &vtep {
                Some(v) if id == 0 => {
                    let r = poll.registry();
                    r.register(
                        &mut SourceFd(&v.udp.as_raw_fd()),
                        VTEP_UDP,
                        Interest::READABLE,
                    )
                    .context("register the VXLAN socket")?;
                    if let Some(e) = &v.esp {
                        r.register(&mut SourceFd(&e.as_raw_fd()), VTEP_ESP, Interest::READABLE)
                            .context("register the ESP socket")?;
                    }
                    Some(v.clone())
                }
                _ => None,
            };
            let nat = if id == 0 { nat_edge.take() } else { None };
            if let Some(n) = &nat {
                poll.registry()
                    .register(&mut SourceFd(&n.fd()), NAT_POLL, Interest::READABLE)
                    .context("register the NAT's epoll")?;
            }
            shared.push(sh.clone());
            let own = WorkerOwn {
                vtep: vtep.clone(),
                reader,
                shared: sh,
                busy_poll: config.busy_poll,
                tx_batch: config.tx_batch,
                spin_gate: spin_gate.clone(),
                crowd_sleep: config.sleep_when_crowded,
                poll_switch_streams: config.poll_switch_streams,
                nat,
                place: place.clone(),
                panic_after: config
                    .faults
                    .iter()
                    .find(|f| f.op == "worker_panic")
                    .map(|f| f.after),
            };
            let cpu = super::worker_cpu(&config.worker_cpus, id);
            let t = std::thread::Builder::new()
                .name(format!("tapnet-worker-{id}"))
                .spawn(move || {
                    if let Some(c) = cpu {
                        pin(&own.shared, id, c);
                    }
                    worker_loop(w, poll, rx, injects, wk, epoch, own)
                })
                .context("spawn worker thread")?;
            handles.push(WorkerHandle { tx, wake });
            threads.push(t);
        }
        drop(ftx);
        let forward_stats = Arc::new(super::dns::ForwardStats::default());
        let upstreams = Arc::new(super::dns::Upstreams::new(config.dns_upstreams.clone()));
        let inject: super::dns::Inject = Arc::new(move |port, meta, frame: Vec<u8>| {
            // Through the port's worker, as the NAT's frames.
            let Some(q) = dns_tx.get(port.0 as usize % dns_tx.len().max(1)) else {
                return;
            };
            while q.returned().is_some() {}
            let len = frame.len();
            let f = Injected {
                port,
                meta,
                buf: frame.into_boxed_slice(),
                start: 0,
                len,
            };
            if q.send(f).is_err() {
                tracing::debug!("dns forwarder: the worker's queue is full; answer dropped");
            }
        });
        {
            let upstreams = upstreams.clone();
            let fs = forward_stats.clone();
            std::thread::Builder::new()
                .name("tapnet-dns-forwarder".into())
                .spawn(move || super::dns::run_forwarder(frx, upstreams, inject, fs))
                .context("spawn DNS forwarder thread")?;
        }
        let inner = Arc::new(Inner {
            switch,
            capture,
            shared,
            forward_stats,
            workers: handles,
            nets: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            vtep,
            steering: config.steering.clone(),
            dns,
            upstreams,
            nat,
            host_loopback: config.host_loopback,
            faults: config
                .faults
                .iter()
                .map(|f| (*f, std::sync::atomic::AtomicU64::new(0)))
                .collect(),
            epoch,
            stop: AtomicBool::new(false),
            threads: Mutex::new(threads),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("tapnet-housekeeping".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                let Some(inner) = weak.upgrade() else { return };
                if inner.stop.load(Ordering::Relaxed) {
                    return;
                }
                inner.switch.age(inner.epoch.elapsed().as_secs() as u32);
            })
            .context("spawn housekeeping thread")?;
        Ok(Dataplane { inner })
    }

    /// Starts relaying a published port (see [`Published`]) to the
    /// container's IPv4 address.
    pub fn publish(&self, p: Published) -> anyhow::Result<()> {
        self.publish_dual_stack(p, None)
    }

    /// [`Dataplane::publish`] for a container that also has an IPv6
    /// address on the network: IPv6 clients of the port (not IPv4-mapped)
    /// reach `container_ip6` at the same port, from their own address
    /// (the gateway's IPv6 address for loopback and link-local clients);
    /// IPv4 clients, and all clients when `container_ip6` is `None`,
    /// reach `p.container_ip` as before.
    pub fn publish_dual_stack(
        &self,
        p: Published,
        container_ip6: Option<std::net::Ipv6Addr>,
    ) -> anyhow::Result<()> {
        let Some(&nid) = self.inner.nets.lock().get(&p.network) else {
            bail!("publish: unknown network {}", p.network);
        };
        self.inner
            .nat
            .send(super::nat::NatCmd::Publish(nid, p, container_ip6));
        Ok(())
    }

    /// Closes every published socket of `owner`; its host ports are free
    /// when this returns.
    pub fn unpublish(&self, owner: &str) {
        self.inner.nat.unpublish(owner);
    }

    /// The connection table's flows.
    pub fn conntrack(&self) -> Vec<FlowRow> {
        let rev: HashMap<NetworkId, NetId> = self
            .inner
            .nets
            .lock()
            .iter()
            .map(|(k, v)| (*v, *k))
            .collect();
        let now = self.inner.epoch.elapsed().as_nanos() as u64;
        self.inner
            .nat
            .list()
            .into_iter()
            .filter_map(|(v, host)| {
                let net = *rev.get(&v.key.network)?;
                Some(super::nat::row(&v, host, net, now))
            })
            .collect()
    }

    /// The connection table's counters and gauges (JSON).
    pub fn conntrack_stats(&self) -> serde_json::Value {
        self.inner.nat.stats()
    }

    /// `host.tapnet.internal` and `host.docker.internal` name the gateway
    /// (the host's loopback) on networks with the embedded DNS.
    fn host_names(&self, nid: NetworkId, spec: &NetworkSpec) {
        const ID: &str = "tapnet-host-gateway";
        let _ = self.inner.dns.remove_endpoint(nid, ID);
        if !self.inner.host_loopback || spec.internal || !spec.dns {
            return;
        }
        let ep = tapnet_dns::EndpointSpec {
            network: nid,
            container_id: ID.to_string(),
            name: "host.tapnet.internal".to_string(),
            hostname: None,
            aliases: vec!["host.docker.internal".to_string()],
            ipv4: spec.gateway,
            ipv6: None,
            links: Vec::new(),
        };
        if let Err(e) = self.inner.dns.add_endpoint(ep) {
            tracing::error!(network = %spec.name, "dns: host names: {e}");
        }
    }

    /// Number of workers = number of queues each TAP port must be opened with.
    pub fn workers(&self) -> usize {
        self.inner.workers.len()
    }

    /// The switch (for counters and tests).
    pub fn switch(&self) -> &Arc<Switch> {
        &self.inner.switch
    }

    fn net_config(spec: &NetworkSpec, v6: Option<Ipv6Config>) -> NetworkConfig {
        let mut c = NetworkConfig::new(
            &spec.name,
            spec.subnet.network(),
            spec.subnet.prefix_len(),
            spec.gateway,
        );
        c.icc = spec.icc;
        c.mtu = spec.mtu;
        c.overlay = spec.overlay.map(|o| OverlayConfig {
            vni: o.vni,
            encrypted: o.encrypted,
        });
        c.v6 = v6;
        c
    }

    /// Refuses `op` when a test asked for it ([`DataplaneConfig::faults`]).
    fn fault(&self, op: &'static str) -> Result<(), DataplaneError> {
        for (f, calls) in &self.inner.faults {
            if f.op == op && calls.fetch_add(1, Ordering::Relaxed) >= f.after {
                return Err(DataplaneError::Injected(op));
            }
        }
        Ok(())
    }

    /// Adds or replaces a network. With an IPv6 side (`spec.v6`,
    /// dual-stack) the switch answers for its IPv6 gateway and the NAT
    /// relays its IPv6 flows through the host's IPv6 sockets.
    pub fn add_network(&self, id: NetId, spec: NetworkSpec) -> Result<(), DataplaneError> {
        self.add_network_as(id, spec, false)
    }

    /// [`Dataplane::add_network`]; for a network on a parent (`segment`,
    /// see `add_segment_network`) the NAT never acts (its gateway is the
    /// segment's router) and `host.tapnet.internal` is not registered:
    /// `spec.internal` and `spec.dns` are the embedded DNS's only.
    pub(super) fn add_network_as(
        &self,
        id: NetId,
        spec: NetworkSpec,
        segment: bool,
    ) -> Result<(), DataplaneError> {
        let v6 = spec.v6.map(|(subnet, gateway)| Ipv6Config {
            subnet: subnet.network(),
            prefix_len: subnet.prefix_len(),
            gateway,
        });
        self.fault("add_network")?;
        if let Some(o) = spec.overlay {
            let Some(v) = &self.inner.vtep else {
                return Err(DataplaneError::NoVtep);
            };
            if o.encrypted && v.esp.is_none() {
                return Err(DataplaneError::EncryptionUnavailable(
                    v.esp_unavailable.clone().unwrap_or_default(),
                ));
            }
        }
        let cfg = Self::net_config(&spec, v6);
        let mut nets = self.inner.nets.lock();
        let res = match nets.get(&id) {
            Some(&nid) => self.inner.switch.update_network(nid, cfg).map(|_| nid),
            None => self.inner.switch.add_network(cfg).inspect(|&nid| {
                nets.insert(id, nid);
            }),
        };
        match res {
            Ok(nid) => {
                self.inner.nat.send(super::nat::NatCmd::Network(
                    nid,
                    tapnet_nat::NetInfo {
                        gateway: spec.gateway,
                        prefix: spec.subnet.prefix_len(),
                        mtu: spec.mtu,
                        masquerade: spec.masquerade && !segment,
                        internal: spec.internal || segment,
                        v6,
                    },
                ));
                let dns = tapnet_dns::NetworkSpec {
                    id: nid,
                    name: spec.name.clone(),
                    internal: spec.internal,
                    dns: spec.dns,
                };
                if let Err(e) = self.inner.dns.set_network(dns) {
                    tracing::error!(network = %spec.name, "dns: add network: {e}");
                }
                if !segment {
                    self.host_names(nid, &spec);
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The MAC address of a switch network's gateway.
    fn gateway_mac(&self, net: NetworkId) -> Option<[u8; 6]> {
        let topo = self.inner.switch.topology();
        let n = topo.network(net)?;
        Some(tapnet_switch::gateway_mac(n.config.gateway).0)
    }

    /// Removes a network (its ports must have been removed).
    pub fn remove_network(&self, id: NetId) -> Result<(), DataplaneError> {
        let mut nets = self.inner.nets.lock();
        let Some(&nid) = nets.get(&id) else {
            return Ok(());
        };
        let gateway = self.gateway_mac(nid);
        self.inner.switch.remove_network(nid)?;
        if let (Some(st), Some(gw)) = (&self.inner.steering, gateway) {
            st.forget(gw);
        }
        nets.remove(&id);
        let _ = self.inner.dns.remove_network(nid);
        self.inner.nat.send(super::nat::NatCmd::RemoveNetwork(nid));
        Ok(())
    }

    /// Adds a port whose frames come from and go to `queues` (one TAP queue
    /// fd per worker, opened with IFF_VNET_HDR and a 12-byte header; the
    /// dataplane sets O_NONBLOCK).
    /// An endpoint's IPv6 address (`spec.ip6`) is spoof-checked by the
    /// switch and is where the NAT sends the endpoint's IPv6 flows.
    pub fn add_port(&self, spec: PortSpec, queues: Vec<OwnedFd>) -> Result<PortId, DataplaneError> {
        let ip6 = spec.ip6;
        self.fault("add_port")?;
        if queues.len() != self.workers() {
            return Err(DataplaneError::Queues {
                port: spec.name,
                got: queues.len(),
                workers: self.workers(),
            });
        }
        let Some(&net) = self.inner.nets.lock().get(&spec.network) else {
            return Err(DataplaneError::UnknownNetwork(spec.network));
        };
        let queue_err = |err| DataplaneError::Queue {
            port: spec.name.clone(),
            err,
        };
        for q in &queues {
            set_nonblocking(q).map_err(queue_err)?;
        }
        // The steering program, or none: a TAP a previous daemon left
        // persisted may still carry one.
        match (&self.inner.steering, queues.first()) {
            (Some(st), Some(q)) => {
                let gateway = self.gateway_mac(net).unwrap_or_default();
                let p = st.program(gateway).map_err(queue_err)?;
                crate::sys::bpf::set_steering(q, Some(&*p)).map_err(queue_err)?
            }
            (None, Some(q)) => {
                let _ = crate::sys::bpf::set_steering(q, None::<&OwnedFd>);
            }
            (_, None) => {}
        }
        let cfg = PortConfig {
            name: spec.name.clone(),
            network: net,
            mac: spec.mac.map(EthernetAddress),
            ip: spec.ip,
            ip6,
            link_local6: spec.link_local6,
            max_macs: None,
            tunnel: None,
        };
        let id = self.inner.switch.add_port(cfg)?;
        if let (Some(ip), Some(mac)) = (spec.ip, spec.mac) {
            self.inner.nat.send(super::nat::NatCmd::Endpoint {
                network: net,
                ip,
                ip6,
                mac,
                port: id.0,
            });
        }
        let queues: Arc<[OwnedFd]> = queues.into();
        self.inner.queues.lock().insert(id.0, queues.clone());
        self.hand_queues(id.0, queues);
        Ok(id.0)
    }

    /// The frames the containers of TAP ports `ports` sent that the
    /// kernel dropped at the TAPs' full rings before a worker read them
    /// (see [`crate::sys::tap::ring_drops`]); ports of other kinds, and
    /// TAPs whose counters are out of reach, are absent.
    pub fn ring_drops(&self, ports: &[PortId]) -> HashMap<PortId, u64> {
        let queues: Vec<(PortId, Arc<[OwnedFd]>)> = {
            let all = self.inner.queues.lock();
            ports
                .iter()
                .filter_map(|p| Some((*p, all.get(p)?.clone())))
                .filter(|(_, q)| !q.is_empty())
                .collect()
        };
        let first: Vec<&OwnedFd> = queues.iter().map(|(_, q)| &q[0]).collect();
        queues
            .iter()
            .zip(crate::sys::tap::ring_drops(&first))
            .filter_map(|((p, _), n)| Some((*p, n?)))
            .collect()
    }

    /// Removes a port and closes its queues (a port already gone is not
    /// an error).
    pub fn remove_port(&self, id: PortId) -> Result<(), DataplaneError> {
        match self.inner.switch.remove_port(tapnet_switch::PortId(id)) {
            Ok(()) => {}
            Err(tapnet_switch::ConfigError::NoSuchPort) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.inner.queues.lock().remove(&id);
        self.inner.nat.send(super::nat::NatCmd::RemoveEndpoint(id));
        for w in &self.inner.workers {
            let _ = w.tx.send(Cmd::RemovePort(id));
            w.wake.wake();
        }
        Ok(())
    }

    /// Registers a container's names on a network in the embedded DNS
    /// (replacing an earlier registration of the same container there).
    pub fn dns_add_endpoint(&self, net: NetId, ep: DnsEndpoint) -> Result<(), DataplaneError> {
        let Some(&nid) = self.inner.nets.lock().get(&net) else {
            return Err(DataplaneError::UnknownNetwork(net));
        };
        let _ = self.inner.dns.remove_endpoint(nid, &ep.container_id);
        let Some(ip) = ep.ipv4 else { return Ok(()) };
        self.inner
            .upstreams
            .set_querier(nid, ip, ep.upstreams.clone());
        if let Some(ip6) = ep.ipv6 {
            self.inner
                .upstreams
                .set_querier(nid, ip6, ep.upstreams.clone());
        }
        let spec = tapnet_dns::EndpointSpec {
            network: nid,
            container_id: ep.container_id,
            name: ep.name,
            hostname: ep.hostname,
            aliases: ep.aliases,
            ipv4: ip,
            ipv6: ep.ipv6,
            links: ep
                .links
                .into_iter()
                .map(|(container, alias)| tapnet_dns::registry::Link { container, alias })
                .collect(),
        };
        self.inner
            .dns
            .add_endpoint(spec)
            .map_err(|e| DataplaneError::Dns(e.to_string()))
    }

    /// Removes a container's names from a network (disconnect, stop).
    pub fn dns_remove_endpoint(&self, net: NetId, container_id: &str, addrs: &[IpAddr]) {
        let Some(&nid) = self.inner.nets.lock().get(&net) else {
            return;
        };
        let _ = self.inner.dns.remove_endpoint(nid, container_id);
        for &ip in addrs {
            self.inner.upstreams.set_querier(nid, ip, Vec::new());
        }
    }

    /// The switch's id of overlay network `net`.
    fn overlay_net(&self, net: NetId) -> Result<NetworkId, DataplaneError> {
        let nid = *self
            .inner
            .nets
            .lock()
            .get(&net)
            .ok_or(DataplaneError::UnknownNetwork(net))?;
        let overlay = self
            .inner
            .switch
            .topology()
            .network(nid)
            .and_then(|n| n.config.overlay);
        match overlay {
            Some(_) => Ok(nid),
            None => Err(DataplaneError::NotOverlay(net)),
        }
    }

    /// The VXLAN tunnel endpoint's address, if the dataplane has one.
    pub fn vtep_addr(&self) -> Option<SocketAddr> {
        self.inner.vtep.as_ref().map(|v| SocketAddr::V4(v.addr))
    }

    /// Sets the VTEPs of the other hosts that have overlay network `net`
    /// (broadcast and unknown unicast are replicated to each). Peers no
    /// longer listed are dropped unless an endpoint of theirs is
    /// registered.
    pub fn set_peers(&self, net: NetId, peers: &[SocketAddr]) -> Result<(), DataplaneError> {
        let nid = self.overlay_net(net)?;
        let v4: Vec<SocketAddrV4> = peers
            .iter()
            .map(|p| match p {
                SocketAddr::V4(a) => Ok(*a),
                SocketAddr::V6(_) => Err(DataplaneError::PeerNotIpv4(*p)),
            })
            .collect::<Result<_, _>>()?;
        Ok(self.inner.switch.set_peers(nid, &v4)?)
    }

    /// Pins another host's endpoint on overlay network `net` behind its
    /// VTEP (unicast to it goes there; ARP and Neighbor Solicitations for
    /// its addresses are answered here; frames with its MAC must come
    /// from that VTEP with its addresses). Replaces an earlier record of
    /// the same MAC.
    pub fn add_remote_endpoint(&self, net: NetId, e: RemoteEndpoint) -> Result<(), DataplaneError> {
        let nid = self.overlay_net(net)?;
        let SocketAddr::V4(vtep) = e.vtep else {
            return Err(DataplaneError::PeerNotIpv4(e.vtep));
        };
        Ok(self
            .inner
            .switch
            .add_remote(nid, EthernetAddress(e.mac), e.ipv4, e.ipv6, vtep)?)
    }

    /// Forgets another host's endpoint (no error if unknown).
    pub fn remove_remote_endpoint(&self, net: NetId, mac: [u8; 6]) -> Result<(), DataplaneError> {
        let nid = self.overlay_net(net)?;
        Ok(self.inner.switch.remove_remote(nid, EthernetAddress(mac))?)
    }

    /// Sets the ESP keys of encrypted overlay `net`: all are accepted on
    /// receipt, `tx_spi`'s sends (rotation: add the new key, send with it,
    /// drop the old one later). An empty list removes the keys: the
    /// network then sends nothing to other hosts (never in clear).
    pub fn set_esp_keys(
        &self,
        net: NetId,
        keys: &[EspKey],
        tx_spi: u32,
    ) -> Result<(), DataplaneError> {
        let nid = self.overlay_net(net)?;
        if let Some(v) = &self.inner.vtep {
            if v.esp.is_none() && !keys.is_empty() {
                return Err(DataplaneError::EncryptionUnavailable(
                    v.esp_unavailable.clone().unwrap_or_default(),
                ));
            }
        }
        let keys: Vec<(u32, [u8; 20])> = keys.iter().map(|k| (k.spi, k.key)).collect();
        self.inner
            .switch
            .set_esp_keys(nid, &keys, tx_spi)
            .map_err(|e| DataplaneError::EspKeys(e.to_string()))
    }

    /// The tunnel's counters (None without a VTEP).
    pub fn tunnel_stats(&self) -> Option<TunnelStats> {
        let v = self.inner.vtep.as_ref()?;
        let rev: HashMap<NetworkId, NetId> = self
            .inner
            .nets
            .lock()
            .iter()
            .map(|(k, v)| (*v, *k))
            .collect();
        let topo = self.inner.switch.topology();
        let peers = topo
            .ports()
            .filter_map(|p| {
                let t = p.config.tunnel?;
                Some(TunnelPeerStats {
                    network: *rev.get(&p.network())?,
                    vtep: SocketAddr::V4(t.remote),
                    learned: t.learned,
                    stats: p.counters.sum(),
                })
            })
            .collect();
        Some(TunnelStats {
            vtep: SocketAddr::V4(v.addr),
            total: self.inner.switch.tunnel_stats(),
            peers,
        })
    }

    /// [`Dataplane::tunnel_stats`] as JSON (non-zero drops by name).
    pub fn tunnel_stats_json(&self) -> serde_json::Value {
        let Some(t) = self.tunnel_stats() else {
            return serde_json::Value::Null;
        };
        let stats = |s: &PortStats| {
            let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
                .iter()
                .filter(|r| s.drop_count(**r) > 0)
                .map(|r| (r.as_str().to_string(), s.drop_count(*r).into()))
                .collect();
            serde_json::json!({
                "rx_packets": s.rx_packets,
                "rx_bytes": s.rx_bytes,
                "tx_packets": s.tx_packets,
                "tx_bytes": s.tx_bytes,
                "drops": drops,
            })
        };
        serde_json::json!({
            "vtep": t.vtep.to_string(),
            "total": stats(&t.total),
            "peers": t.peers.iter().map(|p| serde_json::json!({
                "network": p.network,
                "vtep": p.vtep.to_string(),
                "learned": p.learned,
                "stats": stats(&p.stats),
            })).collect::<Vec<_>>(),
        })
    }

    /// Counters of a port, summed over workers.
    pub fn port_stats(&self, id: PortId) -> Option<PortStats> {
        self.inner.switch.port_stats(tapnet_switch::PortId(id))
    }

    /// The capture hub (`tapnet capture`).
    pub fn capture(&self) -> &Arc<super::capture::Hub> {
        &self.inner.capture
    }

    /// The switch's id of a network.
    pub fn switch_network(&self, id: NetId) -> Option<NetworkId> {
        self.inner.nets.lock().get(&id).copied()
    }

    /// Each worker's busy time.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        let up = self.inner.epoch.elapsed().as_secs_f64().max(1e-9);
        self.inner
            .shared
            .iter()
            .enumerate()
            .map(|(worker, s)| {
                let busy = s.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
                let spin = s.spin_ns.load(Ordering::Relaxed) as f64 / 1e9;
                WorkerStats {
                    worker,
                    busy_seconds: busy,
                    busy_share: (busy / up).min(1.0),
                    spin_seconds: spin,
                    spin_share: (spin / up).min(1.0),
                    cpu: s.cpu.get().copied(),
                    nat_frames: s.nat_frames.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// The embedded DNS's counters, summed over workers, and the
    /// forwarder's.
    pub fn dns_stats(&self) -> (tapnet_dns::DnsStats, super::dns::ForwardCounts) {
        let mut d = tapnet_dns::DnsStats::default();
        for s in &self.inner.shared {
            d += *s.dns.lock();
        }
        (d, self.inner.forward_stats.snapshot())
    }

    /// Stops the workers and waits for them.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.nat.send(super::nat::NatCmd::Stop);
        for w in &self.inner.workers {
            let _ = w.tx.send(Cmd::Stop);
            w.wake.wake();
        }
        for t in self.inner.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

mod segment;

/// Pins the calling thread (worker `id`) to `cpu` and records it; a
/// refusal (the CPU went offline, a cpuset changed) leaves the worker
/// free, with a warning.
fn pin(shared: &WorkerShared, id: usize, cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let r = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    match r {
        Ok(()) => {
            let _ = shared.cpu.set(cpu);
        }
        Err(e) => tracing::warn!("worker {id}: not pinned to CPU {cpu}: {e}"),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// A port's queues as a worker holds them.
struct PortQueues {
    /// One per worker, in worker order.
    all: Arc<[OwnedFd]>,
    /// This worker.
    me: usize,
}

impl PortQueues {
    /// The worker's own queue (the one it reads).
    fn own(&self) -> &OwnedFd {
        &self.all[self.me.min(self.all.len() - 1)]
    }

    /// Worker `w`'s queue.
    fn of(&self, w: usize) -> &OwnedFd {
        self.all.get(w).unwrap_or_else(|| self.own())
    }
}

/// A worker's side of flow placement ([`super::place`]).
struct Placer {
    shared: Arc<Placement>,
    local: Rebalancer,
    me: usize,
}

impl Placer {
    #[inline]
    fn home(&mut self, frame: &[u8]) -> usize {
        self.shared.home(self.me, frame, &mut self.local)
    }
}

/// Frames the switch sends to TAP queues larger than this are written at
/// once, not copied into the batch (a TSO super-frame's copy would cost
/// more than the system call it saves). 2 KiB holds a 1500-byte MTU's
/// frame and its virtio-net header.
const TX_BATCH_SLOT: usize = 2048;

/// What a worker sends with: its tunnel batch, its routed-parent sender,
/// and its batch of TAP writes (None: one `writev` per frame).
struct Egress {
    tun: TunnelTx,
    route: segment::RouteTx,
    taps: Option<crate::sys::aio::WriteBatch>,
    worker: usize,
}

/// Writes frames to the home worker's queue of each destination port (see
/// [`super::place`]; injected frames: the worker's own), and tunnel ports'
/// frames to the worker's tunnel batch. Small frames to TAPs, other than
/// TCP's, wait in the worker's batch until [`TapTx::flush`], which every
/// user of a `TapTx` calls before it ends (the batch holds raw descriptors
/// of `queues`); a frame written at once flushes the batch first, so a
/// queue's frames keep their order.
struct TapTx<'a> {
    queues: &'a [Option<PortQueues>],
    /// Flow placement (None: the worker's own queue, as for injected
    /// frames).
    place: Option<&'a mut Placer>,
    topo: &'a Topology,
    out: &'a mut Egress,
}

impl TapTx<'_> {
    /// Sends what waits: the TAP writes (in one system call; a write that
    /// fails counts as a drop of its port, whose tx counters already had
    /// it) and the tunnel's batch.
    fn flush(&mut self) {
        let (topo, worker) = (self.topo, self.out.worker);
        if let Some(b) = self.out.taps.as_mut().filter(|b| !b.is_empty()) {
            b.submit(|port, r| {
                let Err(e) = r else { return };
                let reason = match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => DropReason::TxFull,
                    _ => DropReason::TxError,
                };
                if let Some(p) = topo.port(tapnet_switch::PortId(port)) {
                    p.counters.slot(worker).count_drop(reason);
                }
            });
        }
        self.out.tun.flush();
    }
}

impl Transmit for TapTx<'_> {
    #[inline]
    fn transmit(&mut self, port: &Port, meta: &VnetHdr, frame: &[u8]) -> Result<(), DropReason> {
        if port.is_tunnel() {
            return self.out.tun.transmit(self.topo, port, meta, frame);
        }
        let Some(Some(q)) = self.queues.get(port.id.0 as usize) else {
            return Err(DropReason::TxError);
        };
        let fd = match &mut self.place {
            Some(p) if port.uplink.is_none() => q.of(p.home(frame)),
            _ => q.own(),
        };
        let mut hdr = [0u8; vnet::HEADER_LEN];
        match port.uplink {
            Some(u) if u.routed => {
                return segment::transmit_routed(fd, &mut self.out.route, meta, frame);
            }
            Some(u) => {
                if let Some(vid) = u.vlan {
                    return segment::transmit_tagged(fd, vid, meta, frame);
                }
            }
            None => {}
        }
        meta.emit(&mut hdr);
        let batchable = !is_tcp(frame);
        let push = |out: &mut Egress| {
            out.taps
                .as_mut()
                .is_some_and(|b| batchable && b.push(fd.as_raw_fd(), port.id.0, &[&hdr, frame]))
        };
        if push(self.out) {
            return Ok(());
        }
        if self.out.taps.as_ref().is_some_and(|b| !b.is_empty()) {
            // Full, a frame too large for a slot, or TCP's: what waits
            // goes first (a queue's frames stay in order).
            self.flush();
            if push(self.out) {
                return Ok(());
            }
        }
        let iov = [io::IoSlice::new(&hdr), io::IoSlice::new(frame)];
        match nix::sys::uio::writev(fd, &iov) {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::ENOBUFS) => {
                Err(DropReason::TxFull)
            }
            Err(_) => Err(DropReason::TxError),
        }
    }
}

/// Whether `frame` carries TCP over IPv4 or IPv6 (without extension
/// headers). A TCP stream's small frames (ACKs, the tail of each write)
/// clock its sender: they leave at once, not in a batch.
fn is_tcp(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.get(14 + 9) == Some(&6),
        Some([0x86, 0xdd]) => frame.get(14 + 6) == Some(&6),
        _ => false,
    }
}

fn worker_loop(
    mut w: Worker<Hook>,
    mut poll: Poll,
    rx: Receiver<Cmd>,
    injects: Vec<InjectRx>,
    wake: Arc<WorkerWake>,
    epoch: Instant,
    WorkerOwn {
        vtep,
        reader,
        shared,
        busy_poll,
        spin_gate,
        crowd_sleep,
        poll_switch_streams,
        mut nat,
        place,
        tx_batch,
        mut panic_after,
    }: WorkerOwn,
) {
    let mut events = Events::with_capacity(256);
    let mut dns_seen = tapnet_dns::DnsStats::default();
    let mut queues: Vec<Option<PortQueues>> = Vec::new();
    // Ports with data possibly left unread (edge-triggered epoll).
    let mut ready: Vec<u32> = Vec::new();
    let mut buf: Box<[u8]> = vec![0u8; RX_BUF_LEN].into_boxed_slice();
    let mut out = Egress {
        tun: TunnelTx::new(vtep, w.switch().clone(), w.id()),
        route: segment::RouteTx::new(),
        taps: if tx_batch > 1 {
            match crate::sys::aio::WriteBatch::new(tx_batch, TX_BATCH_SLOT) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(
                        "worker {}: no batched TAP writes (AIO: {e}); one system call per frame",
                        w.id()
                    );
                    None
                }
            }
        } else {
            None
        },
        worker: w.id(),
    };
    let mut tun_rx = reader.map(TunnelRx::new);
    // The tunnel's sockets with data possibly left unread: (UDP, ESP).
    let mut tun_ready = (tun_rx.is_some(), tun_rx.is_some());
    // When the worker last found work: within `busy_poll` of it, an idle
    // worker polls again instead of sleeping (a wake-up costs more than the
    // round trip of a ping across the switch).
    let mut last_work = Instant::now();
    // The end of the previous turn: spin time runs from there.
    let mut turn_end = last_work;
    let mut token = SpinToken::new(spin_gate);
    let mut window = SpinWindow::new(busy_poll);
    let mut crowd = Crowd::new(crowd_sleep != CrowdSleep::Never);
    // Whether the frames this worker hands the NAT come at a stream's rate.
    let mut nat_stream = Stream::new(last_work);
    // Whether the frames it forwards between containers do.
    let mut forwarding = Stream::new(last_work);
    let mut nat_events = Events::with_capacity(256);
    let mut placer = Placer {
        shared: place,
        local: Rebalancer::default(),
        me: w.id(),
    };
    // Busy time in the current placement interval, and its start.
    let mut place_busy = Duration::ZERO;
    let mut place_since = Instant::now();
    // The NAT's epoll may hold more events than its last turn took.
    let mut nat_more = false;
    loop {
        let mut timeout = Some(Duration::ZERO);
        let idle = ready.is_empty() && !tun_ready.0 && !tun_ready.1 && !nat_more;
        // (`turn_end` is as good as now: no clock read per turn for it.)
        // Not while the worker forwards a stream between containers: with
        // its polling a BBR sender fell into a slow mode in a quarter to a
        // third of the runs (`Stream`). Not while the machine is crowded
        // (by default only while a container streams through the NAT):
        // polling would take a CPU from a thread with work (`CrowdSleep`).
        let in_window = idle
            && turn_end.duration_since(last_work) < window.get()
            && (poll_switch_streams || !forwarding.get())
            && !(match crowd_sleep {
                CrowdSleep::Never => false,
                CrowdSleep::Streams => nat_stream.get(),
                CrowdSleep::Always => true,
            } && crowd.crowded(turn_end));
        let spinning = token.allow(in_window);
        if idle && !spinning {
            // Producers wake a sleeping worker only: say so, then look at
            // the injection queues once more. (While spinning the worker
            // looks at them on every turn.)
            wake.going_to_sleep();
            if let Some(n) = &nat {
                // As `going_to_sleep`, for the NAT's producers (the
                // workers' hooks wake the NAT's waker, nested in this
                // epoll).
                n.sleeping().store(true, Ordering::Relaxed);
                std::sync::atomic::fence(Ordering::SeqCst);
            }
            if injects.iter().all(InjectRx::is_empty) && !nat.as_ref().is_some_and(Nat::has_input) {
                let max = Duration::from_secs(1);
                let nat_timer = nat.as_ref().and_then(Nat::deadline);
                timeout = Some(nat_timer.map_or(max, |t| t.min(max)));
            }
        }
        if let Err(e) = poll.poll(&mut events, timeout) {
            // Not a way to stop: a worker that ended here would leave its
            // ports unread; the panic stops the daemon (see
            // `daemon::stop_on_thread_panics`).
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("worker {}: epoll failed: {e}", w.id());
            }
        }
        wake.awake();
        if let Some(n) = &nat {
            n.sleeping().store(false, Ordering::Relaxed);
        }
        let woke = Instant::now();
        let injected = !injects.iter().all(InjectRx::is_empty);
        let nat_work = nat.as_ref().is_some_and(|n| n.has_input() || n.due());
        let worked = !idle || !events.is_empty() || injected || nat_work;
        // The gap this turn's work ends (if it is work: see `own`).
        let gap = (idle && worked).then(|| woke.duration_since(last_work));
        if spinning && !worked {
            // Nothing yet: the turn is spin time, not work.
            let spin = &shared.spin_ns;
            let add = woke.duration_since(turn_end).as_nanos() as u64;
            spin.store(spin.load(Ordering::Relaxed) + add, Ordering::Relaxed);
            turn_end = woke;
            continue;
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => continue,
                VTEP_UDP => {
                    tun_ready.0 = true;
                    continue;
                }
                VTEP_ESP => {
                    tun_ready.1 = true;
                    continue;
                }
                NAT_POLL => {
                    nat_more = true;
                    continue;
                }
                _ => {}
            }
            let p = ev.token().0 as u32;
            if !ready.contains(&p) {
                ready.push(p);
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::AddQueue { port, fds } => {
                    let q = PortQueues {
                        all: fds,
                        me: w.id(),
                    };
                    let raw = q.own().as_raw_fd();
                    let i = port as usize;
                    if queues.len() <= i {
                        queues.resize_with(i + 1, || None);
                    }
                    if let Err(e) =
                        poll.registry()
                            .register(&mut SourceFd(&raw), Token(i), Interest::READABLE)
                    {
                        tracing::error!("worker {}: register port {port}: {e}", w.id());
                        continue;
                    }
                    queues[i] = Some(q);
                    // Frames may already be waiting: an edge was possibly missed.
                    ready.push(port);
                }
                Cmd::RemovePort(port) => {
                    if let Some(q) = queues.get_mut(port as usize).and_then(Option::take) {
                        let _ = poll
                            .registry()
                            .deregister(&mut SourceFd(&q.own().as_raw_fd()));
                    }
                    ready.retain(|&q| q != port);
                }
                Cmd::Stop => return,
            }
        }
        if injected {
            transmit_injected(&w, &queues, &injects, epoch, &mut out);
        }
        // Whether this turn did work of its own, not only hand frames to a
        // NAT another thread runs (see `last_work` below).
        let mut own = injected || tun_ready.0 || tun_ready.1 || nat.is_some();
        if !ready.is_empty() {
            match panic_after {
                Some(0) => panic!("worker {}: the worker_panic fault (a test setting)", w.id()),
                Some(n) => panic_after = Some(n - 1),
                None => {}
            }
        }
        let mut to_nat = 0;
        let mut forwarded = 0;
        let mut i = 0;
        while i < ready.len() {
            let port = ready[i];
            let drained = service_queue(
                &mut w,
                &queues,
                &mut placer,
                port,
                &mut buf,
                &mut to_nat,
                &mut forwarded,
                epoch,
                &mut out,
            );
            if drained {
                ready.swap_remove(i);
            } else {
                i += 1;
            }
        }
        // Frames the NAT did not take are this worker's own work.
        own |= forwarded > 0;
        if let Some(trx) = tun_rx.as_mut() {
            if tun_ready.0 || tun_ready.1 {
                tun_ready =
                    service_tunnel(&mut w, &queues, trx, tun_ready, &mut buf, epoch, &mut out);
            }
        }
        if let Some(n) = nat.as_mut() {
            let mut running = drive_nat(
                n,
                nat_more || nat_work,
                &mut nat_events,
                &mut nat_more,
                &mut || {
                    if !injects.iter().all(InjectRx::is_empty) {
                        transmit_injected(&w, &queues, &injects, epoch, &mut out);
                    }
                },
            );
            // The NAT's frames leave in this turn, and while it waits for
            // their buffers it goes on as soon as they are back.
            for _ in 0..NAT_ROUNDS {
                if !running || injects.iter().all(InjectRx::is_empty) {
                    break;
                }
                transmit_injected(&w, &queues, &injects, epoch, &mut out);
                if !n.waiting_for_buffers() {
                    break;
                }
                running = n.work();
            }
            if !running {
                nat = None;
            }
        }
        // Once per loop, not per frame: busy time and the DNS counters.
        let busy = &shared.busy_ns;
        turn_end = Instant::now();
        nat_stream.add(to_nat, turn_end);
        forwarding.add(forwarded, turn_end);
        let took = turn_end.duration_since(woke);
        let add = took.as_nanos() as u64;
        busy.store(busy.load(Ordering::Relaxed) + add, Ordering::Relaxed);
        place_busy += took;
        let span = turn_end.duration_since(place_since);
        if span >= PLACE_INTERVAL {
            let permille = (place_busy.as_nanos() * 1000 / span.as_nanos().max(1)) as u32;
            if let Some(slot) = placer
                .shared
                .rebalance(placer.me, permille, &mut placer.local)
            {
                tracing::debug!(
                    "worker {}: flow slot {slot} moves to another worker",
                    w.id()
                );
            }
            place_busy = Duration::ZERO;
            place_since = turn_end;
        }
        // A turn that only handed frames to the NAT in another worker (a
        // container's SYNs the kernel's hash gave to this queue) is not
        // work that more will follow (it neither ends a gap of the polling
        // window nor starts one): the flow's next frames go to the
        // NAT's worker. Polling after it would only take a CPU from the
        // containers (connections/s through the NAT on 2 CPUs: README,
        // Performance).
        if worked && own {
            if let Some(gap) = gap {
                window.observe(gap);
            }
            last_work = turn_end;
        }
        let dns = w.hook_mut().stats();
        if dns != dns_seen {
            if let Some(mut slot) = shared.dns.try_lock() {
                *slot = dns;
                dns_seen = dns;
            }
        }
    }
}

/// How often a worker publishes its load and may give a flow away
/// ([`super::place`]).
const PLACE_INTERVAL: Duration = Duration::from_millis(20);

/// Times a worker sends the NAT's frames and lets it go on in one turn
/// while the NAT waits for their buffers.
const NAT_ROUNDS: usize = 4;

/// One turn of the NAT in its worker: commands, frames, timers, then
/// `send` (the frames that work built leave now: a container waiting for
/// its SYN-ACK does not wait for the host sockets' turn), then the host
/// sockets' readiness (without waiting). `nat_more` says whether its
/// epoll may hold more; false once the NAT was told to stop.
fn drive_nat(
    n: &mut Nat,
    wanted: bool,
    events: &mut Events,
    nat_more: &mut bool,
    send: &mut dyn FnMut(),
) -> bool {
    if !wanted && !n.has_input() {
        return true;
    }
    *nat_more = false;
    if !n.work() {
        return false;
    }
    send();
    *nat_more = n.poll_sockets(events, Some(Duration::ZERO));
    true
}

/// Reads up to [`super::vtep::RX_ROUNDS`] batches from each ready tunnel
/// socket and runs every datagram through the switch. Returns which
/// sockets may still have data.
#[allow(clippy::too_many_arguments)]
fn service_tunnel(
    w: &mut Worker<Hook>,
    queues: &[Option<PortQueues>],
    rx: &mut TunnelRx,
    (mut udp_ready, mut esp_ready): (bool, bool),
    spare: &mut Box<[u8]>,
    epoch: Instant,
    out: &mut Egress,
) -> (bool, bool) {
    let cx = w.begin(epoch.elapsed().as_nanos() as u64);
    let vtep = rx.vtep.clone();
    let sw = w.switch().clone();
    let id = w.id();
    let mut tx = TapTx {
        queues,
        place: None,
        topo: cx.topology(),
        out,
    };
    // A frame the NAT claims is handed over in a copy (rare: tunnelled
    // traffic to the gateway).
    let mut hand_over = |w: &mut Worker<Hook>, frame: &[u8]| {
        let off = vnet::HEADER_LEN;
        if let Some(dst) = spare.get_mut(off..off + frame.len()) {
            dst.copy_from_slice(frame);
            w.hand_over(spare, off);
        }
    };
    if udp_ready {
        udp_ready = false;
        for _ in 0..super::vtep::RX_ROUNDS {
            let n = match rx.udp.recv(vtep.udp.as_fd()) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("vxlan: receive: {e}");
                    0
                }
            };
            for i in 0..n {
                if rx.udp.truncated(i) {
                    sw.count_tunnel_drop(id, DropReason::Oversize);
                    continue;
                }
                let (from, d) = rx.udp.get(i);
                let (p, inner) = w.process_vxlan(&cx, from, d, &mut tx);
                if p == Processed::Claimed {
                    hand_over(w, &d[inner]);
                }
            }
            // Coalesced segments leave with their batch.
            w.flush_tunnel(&cx, &mut tx);
            if n < super::vtep::BATCH {
                break;
            }
            udp_ready = n == super::vtep::BATCH;
        }
    }
    if esp_ready {
        esp_ready = false;
        if let Some(sock) = &vtep.esp {
            for _ in 0..super::vtep::RX_ROUNDS {
                let n = match rx.esp.recv(sock.as_fd()) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!("esp: receive: {e}");
                        0
                    }
                };
                for i in 0..n {
                    if rx.esp.truncated(i) {
                        sw.count_tunnel_drop(id, DropReason::Oversize);
                        continue;
                    }
                    let pkt = rx.esp.get_mut(i);
                    let (p, inner) = w.process_esp(&cx, pkt, &mut tx);
                    if p == Processed::Claimed {
                        hand_over(w, &pkt[inner]);
                    }
                }
                w.flush_tunnel(&cx, &mut tx);
                if n < super::vtep::BATCH {
                    break;
                }
                esp_ready = n == super::vtep::BATCH;
            }
        }
    }
    tx.flush();
    (udp_ready, esp_ready)
}

/// Sends the frames the NAT thread and the DNS forwarder queued for this
/// worker through the switch's egress stage, and gives their buffers back.
fn transmit_injected(
    w: &Worker<Hook>,
    queues: &[Option<PortQueues>],
    injects: &[InjectRx],
    epoch: Instant,
    out: &mut Egress,
) {
    let cx = w.begin(epoch.elapsed().as_nanos() as u64);
    let mut tx = TapTx {
        queues,
        place: None,
        topo: cx.topology(),
        out,
    };
    for q in injects {
        while let Some(f) = q.next() {
            w.transmit_injected(&cx, f.port, &f.meta, f.frame(), &mut tx);
            q.give_back(f.buf);
        }
    }
    tx.flush();
}

/// Reads up to [`READ_BUDGET`] frames from this worker's queue of `port`
/// and runs each through the pipeline, adding the bytes of those handed
/// to the NAT (claimed by its hook) to `to_nat` and of the others (the
/// switch's: to containers, a tunnel, or dropped) to `forwarded` (a
/// frame is never empty, so `forwarded` grows with each). Returns whether
/// the queue is drained (or unusable).
#[allow(clippy::too_many_arguments)]
fn service_queue(
    w: &mut Worker<Hook>,
    queues: &[Option<PortQueues>],
    place: &mut Placer,
    port: u32,
    buf: &mut Box<[u8]>,
    to_nat: &mut usize,
    forwarded: &mut usize,
    epoch: Instant,
    out: &mut Egress,
) -> bool {
    let Some(Some(q)) = queues.get(port as usize) else {
        return true;
    };
    let fd = q.own();
    let raw = fd.as_raw_fd();
    let cx = w.begin(epoch.elapsed().as_nanos() as u64);
    let mut tx = TapTx {
        queues,
        place: Some(place),
        topo: cx.topology(),
        out,
    };
    let mut drained = false;
    for _ in 0..READ_BUDGET {
        let n = match nix::unistd::read(fd, &mut buf[..]) {
            Ok(0) | Err(nix::errno::Errno::EAGAIN) => {
                drained = true;
                break;
            }
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                // The device went away (its namespace died): stop reading;
                // the control plane removes the port.
                tracing::debug!("worker {}: read port {port} (fd {raw}): {e}", w.id());
                drained = true;
                break;
            }
        };
        let (meta, frame) = match VnetHdr::parse(&buf[..n]) {
            Ok(m) => (m, &buf[vnet::HEADER_LEN..n]),
            Err(_) => (VnetHdr::default(), &buf[n..n]),
        };
        let done = w.process(&cx, tapnet_switch::PortId(port), &meta, frame, &mut tx);
        if done == Processed::Claimed {
            // The NAT took the frame: hand over this buffer, read the next
            // frame into the empty one it gives back (no copy).
            *to_nat += n;
            w.hand_over(buf, vnet::HEADER_LEN);
        } else {
            *forwarded += n;
        }
    }
    tx.flush();
    drained
}

#[cfg(test)]
mod tests {
    use super::is_tcp;

    #[test]
    fn tcp_is_told_from_the_rest() {
        let frame = |ethertype: [u8; 2], at: usize, proto: u8| {
            let mut f = vec![0u8; 14 + 40];
            f[12..14].copy_from_slice(&ethertype);
            f[14 + at] = proto;
            f
        };
        assert!(is_tcp(&frame([0x08, 0x00], 9, 6)));
        assert!(is_tcp(&frame([0x86, 0xdd], 6, 6)));
        assert!(!is_tcp(&frame([0x08, 0x00], 9, 17)));
        assert!(!is_tcp(&frame([0x86, 0xdd], 6, 58)));
        assert!(!is_tcp(&frame([0x08, 0x06], 9, 6)));
        assert!(!is_tcp(&[0x08, 0x00]));
        assert!(!is_tcp(&frame([0x08, 0x00], 9, 6)[..20]));
    }
}

//! The live datapath: worker threads that own one queue of every TAP port,
//! read batches, run the `tapnet_switch` pipeline and write to the
//! destination queue they also own.
//!
//! The control plane (daemon) drives it through [`Dataplane`]; every method
//! is cheap and thread-safe (it publishes a new snapshot).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;

/// Dense numeric id of a network inside the dataplane (the daemon maps its
/// 64-hex network ids to these).
pub type NetId = u32;
/// Dense numeric id of a port inside the dataplane.
pub type PortId = u32;

/// Why the dataplane refused a change. The control plane undoes its part
/// of the change (nothing is committed) when it sees one.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum DataplaneError {
    /// the switch refused it: {0}
    Switch(#[from] tapnet_switch::ConfigError),
    /// no such network in the dataplane ({0})
    UnknownNetwork(NetId),
    /// port {port}: {got} queues for {workers} workers
    Queues {
        port: String,
        got: usize,
        workers: usize,
    },
    /// port {port}: {err}
    Queue { port: String, err: std::io::Error },
    /// network {0} has no address pool
    NoPool(String),
    /// port {port}: networks of driver {driver} have no switched ports
    NotSwitched { port: String, driver: &'static str },
    /// the embedded DNS refused it: {0}
    Dns(String),
    /// fault injected for a test: {0} refused (TAPNET_DATAPLANE_FAULTS)
    Injected(&'static str),
    /// overlay networks need a VXLAN tunnel endpoint (the daemon's advertise address)
    NoVtep,
    /// network {0} is not an overlay network
    NotOverlay(NetId),
    /// encrypted overlays are unavailable: {0}
    EncryptionUnavailable(String),
    /// ESP keys refused: {0}
    EspKeys(String),
    /// VTEP {0} is not an IPv4 address (the overlay runs over IPv4)
    PeerNotIpv4(SocketAddr),
    /// cannot bind the VXLAN socket to {addr}: {err}
    VtepBind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    /// parent {parent}: {err}
    Parent {
        parent: String,
        err: crate::sys::packet::PacketError,
    },
}

/// Operations a test may make fail ([`DataplaneConfig::faults`]):
/// `add_network` and `add_port` refuse calls; `worker_panic` makes a
/// worker panic in its first turn that reads frames from ports after
/// `after` such turns (the daemon's answer to a panicking thread is
/// tested with it).
pub const FAULT_POINTS: [&str; 3] = ["add_network", "add_port", "worker_panic"];

/// A fault injected for tests: operation `op` refuses every call after
/// the first `after` ones (see [`FAULT_POINTS`] for `worker_panic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub op: &'static str,
    pub after: u64,
}

impl Fault {
    /// Parses `OP` or `OP+N` (refuse after N calls); OP is one of
    /// [`FAULT_POINTS`].
    pub fn parse(s: &str) -> Result<Fault, String> {
        let (op, after) = match s.split_once('+') {
            Some((op, n)) => (
                op,
                n.parse::<u64>()
                    .map_err(|_| format!("invalid fault {s:?}: expected OP or OP+N"))?,
            ),
            None => (s, 0),
        };
        let op = FAULT_POINTS.iter().find(|p| **p == op).ok_or_else(|| {
            format!(
                "invalid fault {s:?}: unknown operation {op:?} (one of {})",
                FAULT_POINTS.join(", ")
            )
        })?;
        Ok(Fault { op, after })
    }
}

/// What the switch needs to know about a network.
#[derive(Clone, Debug)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    /// `com.docker.network.bridge.enable_icc` (default true).
    pub icc: bool,
    pub mtu: u32,
    /// `--internal`: no outbound traffic, no published ports, no host
    /// loopback; only the embedded DNS answers at the gateway.
    pub internal: bool,
    /// `com.docker.network.bridge.enable_ip_masquerade`: when false,
    /// containers cannot reach addresses outside the network (the host's
    /// loopback through the gateway still works unless turned off).
    pub masquerade: bool,
    /// Embedded DNS answers on this network (false for the default
    /// `bridge`, as in Docker).
    pub dns: bool,
    /// Tunnelled to the other hosts (an overlay network); None for a
    /// host-local network.
    pub overlay: Option<OverlaySpec>,
    /// The IPv6 subnet and gateway of a dual-stack network.
    pub v6: Option<(ipnet::Ipv6Net, std::net::Ipv6Addr)>,
}

/// An overlay network's tunnel: its VXLAN id, and whether only ESP may
/// carry it between hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlaySpec {
    pub vni: u32,
    pub encrypted: bool,
}

/// Another host's endpoint on an overlay network: pinned behind its VTEP,
/// answered by proxy ARP (and proxy ND for `ipv6`), its MAC and addresses
/// checked on arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address on a dual-stack overlay.
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub vtep: SocketAddr,
}

/// An ESP key of an encrypted overlay: 16 bytes of AES-128 key and 4 of
/// salt (RFC 4106), named by its SPI.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EspKey {
    pub spi: u32,
    pub key: [u8; 20],
}

impl std::fmt::Debug for EspKey {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("EspKey")
            .field("spi", &self.spi)
            .finish_non_exhaustive()
    }
}

/// The VXLAN tunnel endpoint of this host: one UDP socket (and, for
/// encrypted overlays, one raw IP socket of protocol 50).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VtepConfig {
    /// The address and port to bind (`--advertise-addr`, `--vxlan-port`).
    pub bind: SocketAddr,
    /// Open the raw ESP socket (needs CAP_NET_RAW); without it encrypted
    /// overlays are refused ([`DataplaneError::EncryptionUnavailable`]).
    pub esp: bool,
    /// Socket buffer sizes asked for (the kernel may cap them).
    pub socket_buffer: usize,
}

impl VtepConfig {
    pub fn new(bind: SocketAddr) -> Self {
        VtepConfig {
            bind,
            esp: true,
            socket_buffer: 4 << 20,
        }
    }
}

/// The tunnel's counters, as `tapnet stats` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelStats {
    /// The VTEP's address.
    pub vtep: SocketAddr,
    /// Datagrams (VXLAN or ESP) received and sent, and the drops before
    /// a frame reached a tunnel port (bad header, unknown VNI, ESP
    /// failures, send errors).
    pub total: tapnet_switch::PortStats,
    /// Per network and peer VTEP: frames in and out of its tunnel port and
    /// the pipeline's drops of frames from it.
    pub peers: Vec<TunnelPeerStats>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelPeerStats {
    pub network: NetId,
    pub vtep: SocketAddr,
    /// Learned from traffic (no peer the control plane named).
    pub learned: bool,
    pub stats: tapnet_switch::PortStats,
}

/// A container's names on one network, for the embedded DNS.
#[derive(Clone, Debug, Default)]
pub struct DnsEndpoint {
    pub container_id: String,
    pub name: String,
    pub hostname: Option<String>,
    /// `--network-alias` / `network connect --alias`.
    pub aliases: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Legacy links `(container, alias)`, resolved only by this container.
    pub links: Vec<(String, String)>,
    /// The container's `--dns` servers (forwarding targets), if any.
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// Settings of the dataplane.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Worker threads (>= 1): one TAP queue each.
    pub workers: usize,
    /// The daemon's `--dns-upstream` servers (else the host's resolv.conf).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// TTL of the embedded DNS's own answers.
    pub dns_ttl: u32,
    /// TCP/UDP to a network's gateway address (other than DNS) reaches the
    /// host's loopback, and `host.tapnet.internal` / `host.docker.internal`
    /// name the gateway (`tapnet daemon --no-host-loopback` turns it off).
    pub host_loopback: bool,
    /// The connection table's limits and timeouts.
    pub conntrack: ConntrackConfig,
    /// Operations that refuse calls, for tests of the control plane's
    /// transactions (`tapnet daemon` reads them from
    /// `TAPNET_DATAPLANE_FAULTS`, comma-separated [`Fault`]s).
    pub faults: Vec<Fault>,
    /// The VXLAN tunnel endpoint (overlay networks); None: no overlays.
    pub vtep: Option<VtepConfig>,
    /// After its last work, a worker keeps polling for up to this long
    /// before it sleeps in epoll (`tapnet daemon --busy-poll-us`): a frame
    /// arriving in that window is read without a wake-up, at the price of
    /// CPU spent polling (`tapnet stats` shows it as each worker's spin
    /// share). Each worker's window adapts below this maximum to the gaps
    /// between its work (`SpinWindow`).
    pub busy_poll: std::time::Duration,
    /// How many workers may busy-poll at once (`tapnet daemon
    /// --busy-poll-workers`); 0: no limit. The others sleep as soon as
    /// they are idle, leaving CPUs to the containers and the NAT.
    pub busy_poll_workers: usize,
    /// When workers sleep rather than poll while the machine is mostly
    /// crowded (`tapnet daemon --sleep-when-crowded`, `spin::Crowd`).
    pub sleep_when_crowded: CrowdSleep,
    /// Workers poll on while they forward a stream between containers
    /// (`tapnet daemon --poll-switch-streams`); false: a worker that
    /// forwards one sleeps when idle (`spin::Stream`).
    pub poll_switch_streams: bool,
    /// The NAT runs in a thread of its own (`tapnet daemon --nat-thread`),
    /// not in worker 0's loop.
    pub nat_thread: bool,
    /// Frames of up to 2 KiB, other than TCP, a worker writes to TAPs in
    /// one system call (`tapnet daemon --tx-batch`, Linux AIO's
    /// `io_submit`); 0 or 1: a `writev` each. A woken receiver then finds a
    /// batch, not one frame. TCP's small frames (ACKs, the tail of each
    /// write) clock their sender and leave at once. Without AIO a worker
    /// falls back to one `writev` per frame.
    pub tx_batch: usize,
    /// The CPU each worker runs on: worker `i` on `worker_cpus[i % len]`
    /// (`tapnet daemon --worker-cpus`, resolved by [`WorkerCpus::resolve`]);
    /// empty: wherever the scheduler puts it.
    pub worker_cpus: Vec<usize>,
    /// The steering programs set on TAP ports, made by
    /// [`TapSteering::steering`] (`tapnet daemon --tap-steering cpu`);
    /// `None`: tun's own flow steering, and a program that a previous
    /// daemon left on a persisted TAP is removed.
    pub steering: Option<std::sync::Arc<Steering>>,
}

/// The CPU worker `worker` runs on, given the resolved `--worker-cpus`
/// ([`WorkerCpus::resolve`]): `cpus[worker % len]`; `None` when empty
/// (wherever the scheduler puts it).
pub(crate) fn worker_cpu(cpus: &[usize], worker: usize) -> Option<usize> {
    cpus.get(worker % cpus.len().max(1)).copied()
}

/// `tapnet daemon --tap-steering`: which worker reads a frame a container
/// sends, i.e. which of its TAP's queues the kernel puts it on.
///
/// Measured on 2 CPUs with two workers (bench/NOTES.md: "Steering by
/// the sender's CPU"): `cpu` keeps a ping's whole round trip on one CPU
/// (median RTT 1.9x the kernel bridge's, 4.7x with the default) and raises
/// the 64-byte rate by a sixth, and costs one TCP stream about an eighth,
/// whose two directions then have a worker each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TapSteering {
    /// tun's flow steering: the queue a flow's replies were last written
    /// on (the switch writes a flow's frames on its home worker's queue),
    /// else a hash of the flow.
    #[default]
    Flow,
    /// The queue of the worker pinned to the CPU the frame is sent on
    /// (an eBPF program, `TUNSETSTEERINGEBPF`): the worker is woken where
    /// the sender runs. Needs two workers or more, pinned, and the right
    /// to load eBPF (`CAP_BPF`: root, not a rootless daemon).
    Cpu,
}

impl TapSteering {
    /// Parses `flow` or `cpu`; the error is one line naming the value.
    pub fn parse(spec: &str) -> Result<TapSteering, String> {
        match spec {
            "flow" => Ok(TapSteering::Flow),
            "cpu" => Ok(TapSteering::Cpu),
            _ => Err(format!(
                "invalid --tap-steering {spec:?}: expected flow or cpu"
            )),
        }
    }

    /// The steering of `workers` workers pinned to `cpus` in turn (worker
    /// `i` on `cpus[i % len]`, [`WorkerCpus::resolve`]'s answer), whose
    /// NAT runs in worker `nat_worker` (`None`: in a thread of its own), or
    /// `None` for [`TapSteering::Flow`]. Loads a program once, so that
    /// a daemon that could not load one stops before it makes anything.
    /// The error is one line.
    pub fn steering(
        self,
        workers: usize,
        cpus: &[usize],
        nat_worker: Option<usize>,
    ) -> Result<Option<Steering>, String> {
        if self == TapSteering::Flow {
            return Ok(None);
        }
        if workers < 2 {
            return Err(
                "--tap-steering cpu needs --workers 2 or more (one worker reads every frame)"
                    .into(),
            );
        }
        if cpus.is_empty() {
            return Err(
                "--tap-steering cpu needs pinned workers (--worker-cpus auto or a list, not none)"
                    .into(),
            );
        }
        let st = Steering {
            cpus: (0..workers).filter_map(|i| worker_cpu(cpus, i)).collect(),
            nat_worker,
            programs: Default::default(),
        };
        st.program([0; 6]).map_err(|e| {
            format!(
                "--tap-steering cpu: cannot load its eBPF program ({e}); it needs CAP_BPF \
                 in the host's user namespace, or kernel.unprivileged_bpf_disabled=0"
            )
        })?;
        Ok(Some(st))
    }
}

/// `--tap-steering cpu`'s programs ([`crate::sys::bpf::SteeringProgram`]),
/// one per gateway MAC address: a frame to its network's gateway goes to
/// the worker whose NAT reads it (as tun's flow steering brings the NAT's
/// flows there, since the NAT writes every frame through that worker);
/// any other to the worker on the CPU it was sent on.
#[derive(Debug)]
pub struct Steering {
    /// The CPU of each worker, by worker.
    cpus: Vec<usize>,
    nat_worker: Option<usize>,
    /// Loaded programs by gateway MAC (control plane only).
    programs: parking_lot::Mutex<
        std::collections::HashMap<[u8; 6], std::sync::Arc<std::os::fd::OwnedFd>>,
    >,
}

impl Steering {
    /// The program for the ports of a network whose gateway has MAC
    /// `gateway`, loaded on first use.
    pub fn program(
        &self,
        gateway: [u8; 6],
    ) -> std::io::Result<std::sync::Arc<std::os::fd::OwnedFd>> {
        let mut all = self.programs.lock();
        if let Some(p) = all.get(&gateway) {
            return Ok(p.clone());
        }
        let to_mac = self.nat_worker.map(|w| (gateway, w as u32));
        let p = std::sync::Arc::new(
            crate::sys::bpf::SteeringProgram::by_cpu(&self.cpus, to_mac).load()?,
        );
        all.insert(gateway, p.clone());
        Ok(p)
    }

    /// Drops the program of a network that is gone (its TAPs, if any are
    /// left, keep their own reference).
    pub fn forget(&self, gateway: [u8; 6]) {
        self.programs.lock().remove(&gateway);
    }
}

/// When a worker sleeps instead of busy-polling while the machine is
/// crowded: while, in most of its recent looks, more threads were runnable
/// than the machine has CPUs (`spin::Crowd`), so that its polling would
/// take a CPU from a container's sender or receiver (`tapnet daemon
/// --sleep-when-crowded[=WHEN]`; bench/NOTES.md: "Sleeping when the
/// machine is crowded").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrowdSleep {
    /// It polls as `--busy-poll-us` says, crowded or not.
    Never,
    /// Only while the frames it hands the NAT come at a stream's rate
    /// (`spin::Stream`: 0.8 Gbit/s or more over the last millisecond): a
    /// container's sends through the NAT gain, and a connection's round
    /// trips, whose frames are small, keep the wake-ups polling saves.
    /// (The switch's own streams stop its polling crowded or not:
    /// `DataplaneConfig::poll_switch_streams`.)
    #[default]
    Streams,
    /// Whatever it reads: streams gain, connections/s lose.
    Always,
}

impl CrowdSleep {
    /// Parses `never`, `streams` or `always`; the error is one line naming
    /// the value.
    pub fn parse(spec: &str) -> Result<CrowdSleep, String> {
        match spec {
            "never" => Ok(CrowdSleep::Never),
            "streams" => Ok(CrowdSleep::Streams),
            "always" => Ok(CrowdSleep::Always),
            _ => Err(format!(
                "invalid --sleep-when-crowded {spec:?}: expected never, streams or always"
            )),
        }
    }
}

/// `tapnet daemon --worker-cpus`: where the workers run.
///
/// A worker that stays on one CPU lets the scheduler settle the
/// containers around it: a process the worker wakes (a frame's receiver)
/// is often woken on the worker's CPU, where a free worker and the
/// processes it serves kept chasing each other's idle CPUs, each wake-up
/// across CPUs costing a VM's halt and IPI. Not always: a process woken
/// while its last CPU is idle stays there (bench/NOTES.md: "Workers
/// on CPUs of their own").
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerCpus {
    /// Wherever the scheduler puts them.
    None,
    /// Worker `i` on the `i`-th CPU (modulo their number) of those the
    /// daemon may run on (its affinity mask, e.g. a cgroup's cpuset).
    #[default]
    Auto,
    /// Worker `i` on the `i`-th of these CPUs (modulo their number).
    List(Vec<usize>),
}

impl WorkerCpus {
    /// Parses `none`, `auto` or a list such as `0-3,6`; the error is one
    /// line naming the value.
    pub fn parse(spec: &str) -> Result<WorkerCpus, String> {
        let bad = |why: &str| format!("invalid --worker-cpus {spec:?}: {why}");
        match spec {
            "none" => return Ok(WorkerCpus::None),
            "auto" => return Ok(WorkerCpus::Auto),
            _ => {}
        }
        let num = |t: &str| {
            t.parse::<usize>()
                .ok()
                .filter(|n| *n < MAX_CPUS)
                .ok_or_else(|| bad("expected auto, none or CPU numbers such as 0-3,6"))
        };
        let mut cpus = Vec::new();
        for part in spec.split(',') {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(part)?, num(part)?),
            };
            if a > b {
                return Err(bad(&format!("range {part} runs backwards")));
            }
            for c in a..=b {
                if cpus.contains(&c) {
                    return Err(bad(&format!("CPU {c} is named twice")));
                }
                cpus.push(c);
            }
        }
        Ok(WorkerCpus::List(cpus))
    }

    /// The CPUs the workers take in turn, given those this process may
    /// run on (`allowed`, ascending); empty for [`WorkerCpus::None`]. A
    /// listed CPU outside `allowed` is an error naming it.
    pub fn resolve(&self, allowed: &[usize]) -> Result<Vec<usize>, String> {
        match self {
            WorkerCpus::None => Ok(Vec::new()),
            WorkerCpus::Auto => Ok(allowed.to_vec()),
            WorkerCpus::List(l) => {
                if let Some(c) = l.iter().find(|c| !allowed.contains(c)) {
                    return Err(format!(
                        "invalid --worker-cpus: CPU {c} is not one this process may run on ({})",
                        cpu_list(allowed)
                    ));
                }
                Ok(l.clone())
            }
        }
    }
}

/// CPU numbers from 0 to this (exclusive) are accepted (the kernel's
/// `cpu_set_t`).
const MAX_CPUS: usize = 1024;

/// `0-3,6` for `[0, 1, 2, 3, 6]` (ascending input).
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    out.join(",")
}

/// The CPUs this process may run on, ascending (its affinity mask).
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect())
}

/// `tapnet daemon --conntrack-*`: limits and idle timeouts of the NAT's
/// connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConntrackConfig {
    /// Flows in all (`--conntrack-max`).
    pub max: u32,
    /// Flows of one container (`--conntrack-max-per-container`).
    pub max_per_container: u32,
    /// Idle timeouts in seconds by name (see [`ConntrackConfig::TIMEOUTS`]).
    pub timeouts: [u64; 7],
}

impl ConntrackConfig {
    /// Names of the timeouts, in `timeouts` order.
    pub const TIMEOUTS: [&'static str; 7] = [
        "tcp_syn_sent",
        "tcp_established",
        "tcp_closing",
        "tcp_closed",
        "udp_unreplied",
        "udp_replied",
        "icmp",
    ];

    /// Sets `NAME=SECONDS`; the error is one line naming the value.
    pub fn set_timeout(&mut self, spec: &str) -> Result<(), String> {
        let (name, v) = spec.split_once('=').ok_or_else(|| {
            format!("invalid --conntrack-timeout {spec:?}: expected NAME=SECONDS")
        })?;
        let i = Self::TIMEOUTS
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| {
                format!(
                    "invalid --conntrack-timeout {spec:?}: unknown timeout {name:?} (one of {})",
                    Self::TIMEOUTS.join(", ")
                )
            })?;
        let secs: u64 = v
            .parse()
            .ok()
            .filter(|s| (1..=30 * 24 * 3600).contains(s))
            .ok_or_else(|| {
                format!("invalid --conntrack-timeout {spec:?}: seconds must be 1..2592000")
            })?;
        self.timeouts[i] = secs;
        Ok(())
    }

    /// The table's settings.
    pub fn table(&self, hash_seed: u64) -> tapnet_nat::Config {
        let d = |i: usize| std::time::Duration::from_secs(self.timeouts[i]);
        tapnet_nat::Config {
            capacity: self.max.clamp(1, tapnet_nat::MAX_CAPACITY),
            max_per_container: self.max_per_container.max(1),
            timeouts: tapnet_nat::Timeouts {
                tcp_syn_sent: d(0),
                tcp_established: d(1),
                tcp_closing: d(2),
                tcp_closed: d(3),
                udp_unreplied: d(4),
                udp_replied: d(5),
                icmp: d(6),
            },
            hash_seed,
        }
    }
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        let c = tapnet_nat::Config::default();
        let t = c.timeouts;
        ConntrackConfig {
            max: c.capacity,
            max_per_container: c.max_per_container,
            timeouts: [
                t.tcp_syn_sent,
                t.tcp_established,
                t.tcp_closing,
                t.tcp_closed,
                t.udp_unreplied,
                t.udp_replied,
                t.icmp,
            ]
            .map(|d| d.as_secs()),
        }
    }
}

/// [`DataplaneConfig::tx_batch`]'s default: a worker reads up to 64
/// frames of a queue per turn; a batch of 32 cut the worker's involuntary
/// context switches four- to fivefold in a 64-byte flood
/// (`bench/NOTES.md`: "Batched TAP writes").
pub const DEFAULT_TX_BATCH: usize = 32;

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            workers: 1,
            dns_upstreams: Vec::new(),
            dns_ttl: 600,
            host_loopback: true,
            conntrack: ConntrackConfig::default(),
            faults: Vec::new(),
            vtep: None,
            busy_poll: std::time::Duration::ZERO,
            busy_poll_workers: 0,
            sleep_when_crowded: CrowdSleep::default(),
            poll_switch_streams: false,
            nat_thread: false,
            tx_batch: DEFAULT_TX_BATCH,
            worker_cpus: Vec::new(),
            steering: None,
        }
    }
}

/// What the switch needs to know about a port (one container interface).
#[derive(Clone, Debug)]
pub struct PortSpec {
    /// Human name, e.g. `CONTAINERNAME/eth0`.
    pub name: String,
    pub network: NetId,
    /// Assigned MAC; with `ip`, the port is spoof-checked.
    pub mac: Option<[u8; 6]>,
    pub ip: Option<Ipv4Addr>,
    /// Assigned IPv6 address (dual-stack networks).
    pub ip6: Option<std::net::Ipv6Addr>,
    /// The link-local address the port sends from when it is not its
    /// MAC's EUI-64 one (ipvlan: `tapnet_switch::segment::ipvlan_link_local`).
    pub link_local6: Option<std::net::Ipv6Addr>,
}

/// A bound host socket of a published port.
#[derive(Debug)]
pub enum HostSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// One published port (`run -p`): the daemon binds the host socket (so a
/// taken port fails `run` with a clear error) and hands it over; the NAT
/// gateway accepts/receives on it and relays into the container, keeping
/// the client's address as the source.
#[derive(Debug)]
pub struct Published {
    /// Who owns it (the container id): [`Dataplane::unpublish`] closes
    /// all of one owner's sockets.
    pub owner: String,
    pub network: NetId,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    pub socket: HostSocket,
}

/// One flow of the connection table, as `tapnet conntrack` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlowRow {
    /// `tcp`, `udp` or `icmp`.
    pub protocol: &'static str,
    /// `outbound` (opened by the container) or `inbound` (published port).
    pub direction: &'static str,
    /// e.g. `syn_sent`, `established`, `fin_wait`, `closing`, `closed`,
    /// `unreplied`, `replied`.
    pub state: &'static str,
    pub network: NetId,
    pub container_ip: std::net::IpAddr,
    /// The echo identifier for ICMP.
    pub container_port: u16,
    pub remote_ip: std::net::IpAddr,
    pub remote_port: u16,
    /// The host socket's local address, when it has one.
    pub host_addr: Option<std::net::SocketAddr>,
    /// Packets and bytes from the container towards the remote.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets and bytes from the remote towards the container.
    pub packets_in: u64,
    pub bytes_in: u64,
    pub age_secs: f64,
    pub idle_secs: f64,
    pub expires_secs: f64,
}

/// The parent interface of a macvlan/ipvlan network: its name in the
/// daemon's network namespace and the 802.1Q VLAN the network's frames
/// carry on it (`-o parent=eth0.10`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentSpec {
    pub ifname: String,
    pub vlan: Option<u16>,
}

pub use tapnet_switch::segment::SegmentMode;

pub use imp::{Dataplane, WorkerStats};

pub mod capture;
pub mod dns;
mod imp;
mod inject;
mod nat;
mod place;
mod spin;
mod vtep;

#[cfg(test)]
mod tests {
    use super::{cpu_list, CrowdSleep, WorkerCpus};

    #[test]
    fn crowd_sleep_parses_its_three_words() {
        assert_eq!(CrowdSleep::parse("never"), Ok(CrowdSleep::Never));
        assert_eq!(CrowdSleep::parse("streams"), Ok(CrowdSleep::Streams));
        assert_eq!(CrowdSleep::parse("always"), Ok(CrowdSleep::Always));
        assert_eq!(CrowdSleep::default(), CrowdSleep::Streams);
        let e = CrowdSleep::parse("Always").unwrap_err();
        assert!(e.contains("\"Always\"") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn worker_cpus_parse_lists_and_words() {
        assert_eq!(WorkerCpus::parse("auto"), Ok(WorkerCpus::Auto));
        assert_eq!(WorkerCpus::parse("none"), Ok(WorkerCpus::None));
        assert_eq!(
            WorkerCpus::parse("0-2,6"),
            Ok(WorkerCpus::List(vec![0, 1, 2, 6]))
        );
        assert_eq!(WorkerCpus::parse("3,1"), Ok(WorkerCpus::List(vec![3, 1])));
        for bad in ["", "x", "1,", "3-1", "1,1", "0-1,1", "-1", "1024", "auto,1"] {
            let e = WorkerCpus::parse(bad).unwrap_err();
            assert!(e.starts_with("invalid --worker-cpus"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn worker_cpus_resolve_against_the_allowed_set() {
        let allowed = [0, 1, 2, 3, 8];
        assert_eq!(WorkerCpus::Auto.resolve(&allowed), Ok(allowed.to_vec()));
        assert_eq!(WorkerCpus::None.resolve(&allowed), Ok(vec![]));
        assert_eq!(
            WorkerCpus::List(vec![8, 2]).resolve(&allowed),
            Ok(vec![8, 2])
        );
        let e = WorkerCpus::List(vec![1, 5]).resolve(&allowed).unwrap_err();
        assert_eq!(
            e,
            "invalid --worker-cpus: CPU 5 is not one this process may run on (0-3,8)"
        );
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(cpu_list(&[4]), "4");
        assert_eq!(cpu_list(&[0, 1, 3, 4, 5, 7]), "0-1,3-5,7");
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let cpus = super::allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    /// `--tap-steering`: flow needs nothing; cpu refuses what it cannot
    /// steer, and keeps one program per gateway until its network goes.
    #[test]
    fn cpu_steering_keeps_a_program_per_gateway() {
        use super::TapSteering;
        assert!(TapSteering::Flow
            .steering(1, &[], Some(0))
            .unwrap()
            .is_none());
        let e = TapSteering::Cpu.steering(1, &[0], Some(0)).unwrap_err();
        assert!(e.contains("--workers 2"), "{e}");
        let e = TapSteering::Cpu.steering(2, &[], Some(0)).unwrap_err();
        assert!(e.contains("pinned"), "{e}");
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CAP_BPF) to load the program"
        );
        let st = TapSteering::Cpu
            .steering(2, &[0, 1], Some(0))
            .unwrap()
            .unwrap();
        let (a, b) = ([2, 0x42, 10, 0, 0, 1], [2, 0x42, 10, 0, 1, 1]);
        let pa = st.program(a).unwrap();
        assert!(std::sync::Arc::ptr_eq(&pa, &st.program(a).unwrap()));
        assert!(!std::sync::Arc::ptr_eq(&pa, &st.program(b).unwrap()));
        st.forget(a);
        assert!(!std::sync::Arc::ptr_eq(&pa, &st.program(a).unwrap()));
    }
}

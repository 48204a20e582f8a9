//! The command-line interface (see DESIGN.md's contract). Every failure is
//! one line on stderr and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::{self, Client};

mod capture;
mod container;
mod network;
mod version;

pub fn main() -> ExitCode {
    // Hidden re-exec entry points of the sandbox machinery come first: they
    // must not go through clap or start any thread.
    match std::env::args().nth(1).as_deref() {
        Some("__sandbox-init") => return crate::sandbox::init_main(),
        Some("__netns-helper") => return crate::sandbox::netns_helper_main(),
        _ => {}
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if !matches!(cli.cmd, Cmd::Daemon(_)) {
        crate::sys::default_sigpipe();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            if msg.starts_with("Error response from daemon:") {
                eprintln!("{msg}");
            } else {
                eprintln!("tapnet: {msg}");
            }
            ExitCode::from(1)
        }
    }
}

/// A command line clap refuses: one line, like every other error (clap's
/// own first line, without its tip and usage block), exit status 2. Help
/// and version requests print as clap has them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
    }
    // The message is the first paragraph (a list of missing arguments
    // continues it on indented lines).
    let text = e.render().to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = msg.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    eprintln!("tapnet: {msg} (see --help)");
    ExitCode::from(2)
}

#[derive(Parser, Debug)]
#[command(
    name = "tapnet",
    version,
    about = "Docker-style container networking entirely in user space"
)]
struct Cli {
    /// Daemon socket (unix:///PATH).
    #[arg(short = 'H', long = "host", global = true, env = "TAPNET_HOST")]
    host: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon.
    Daemon(DaemonArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Run a command in a new sandbox.
    Run(container::RunArgs),
    /// Attach interfaces to an existing network namespace.
    Attach(container::AttachArgs),
    /// List containers.
    Ps(container::PsArgs),
    /// Show a container's details (JSON).
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List a container's published ports (or the host addresses of one).
    Port {
        container: String,
        /// PRIVATE_PORT[/PROTO]
        private_port: Option<String>,
    },
    /// Show the connection table (outbound NAT and published-port flows).
    Conntrack(container::ConntrackArgs),
    /// Run a command inside a running container.
    Exec {
        container: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Stop containers (SIGTERM, then SIGKILL).
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill a running container first.
        #[arg(short = 'f', long = "force")]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print the output of a `run -d` command.
    Logs { container: String },
    /// This host in its cluster (overlay networks): store, VTEP, lease,
    /// peers, requests made.
    Cluster {
        /// `json` for the raw object.
        #[arg(long)]
        format: Option<String>,
    },
    /// Capture frames of every port, a network or a container to pcapng
    /// (or one line per frame), with an optional tcpdump filter.
    Capture(capture::CaptureArgs),
    /// Counters per port and network, worker load, DNS answers, NAT.
    Stats(capture::StatsArgs),
    /// Replay a pcapng file through an in-memory switch.
    Replay {
        #[arg(long)]
        topology: PathBuf,
        input: PathBuf,
        #[arg(short = 'w')]
        output: PathBuf,
    },
    /// Show the version of the client and of the daemon, and the Docker
    /// Engine API versions served (exit 1 when no daemon answers).
    Version(version::VersionArgs),
    /// Print a shell completion script (e.g. `tapnet completion bash >
    /// /etc/bash_completion.d/tapnet`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
struct DaemonArgs {
    /// State directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Worker threads of the switch (default: the CPUs, at most 8; one on
    /// a machine of two CPUs or fewer, whose other CPU the containers need).
    #[arg(long)]
    workers: Option<usize>,
    /// Upstream DNS server for the embedded DNS.
    #[arg(long = "dns-upstream")]
    dns_upstream: Vec<String>,
    /// TTL in seconds of the embedded DNS's own answers (Docker: 600).
    #[arg(long = "dns-ttl", default_value_t = 600)]
    dns_ttl: u32,
    /// Do not let containers reach the host's loopback through their
    /// gateway address / `host.tapnet.internal`.
    #[arg(long = "no-host-loopback")]
    no_host_loopback: bool,
    /// Most flows in the NAT's connection table.
    #[arg(long = "conntrack-max")]
    conntrack_max: Option<u32>,
    /// Most flows of one container.
    #[arg(long = "conntrack-max-per-container")]
    conntrack_max_per_container: Option<u32>,
    /// An idle timeout, NAME=SECONDS (tcp_syn_sent, tcp_established,
    /// tcp_closing, tcp_closed, udp_unreplied, udp_replied, icmp).
    #[arg(long = "conntrack-timeout")]
    conntrack_timeout: Vec<String>,
    /// Join a cluster (overlay networks): etcd://HOST:PORT[,HOST:PORT...]
    /// (etcds:// for TLS).
    #[arg(long = "cluster-store", value_name = "etcd://HOST:PORT")]
    cluster_store: Option<String>,
    /// A cluster store option KEY=VALUE: kv.cacertfile, kv.certfile,
    /// kv.keyfile.
    #[arg(long = "cluster-store-opt", value_name = "KEY=VALUE")]
    cluster_store_opt: Vec<String>,
    /// This host's address on the underlay, IP[:PORT] (the VXLAN port
    /// defaults to --vxlan-port).
    #[arg(long = "advertise-addr", value_name = "IP[:PORT]")]
    advertise_addr: Option<String>,
    /// The UDP port of VXLAN (the advertise address's port wins).
    #[arg(long = "vxlan-port", default_value_t = 4789)]
    vxlan_port: u16,
    /// The Docker network-driver plugin's socket (driver "tapnet"):
    /// unix:///PATH, or none. Default as root
    /// unix:///run/docker/plugins/tapnet.sock; rootless
    /// unix://$XDG_RUNTIME_DIR/tapnet/docker-plugin.sock, linked into the
    /// user's rootless dockerd ($XDG_RUNTIME_DIR/docker.pid).
    #[arg(long = "docker-plugin", value_name = "unix:///PATH|none")]
    docker_plugin: Option<String>,
    /// Serve the counters in Prometheus's text format at
    /// http://IP:PORT/metrics (no listener by default).
    #[arg(long = "metrics-addr", value_name = "IP:PORT")]
    metrics_addr: Option<String>,
    /// After its last frame, a worker keeps polling for up to this many
    /// microseconds before it sleeps (fewer wake-ups, lower latency, CPU
    /// spent polling; each worker adapts its window below this to the gaps
    /// between its frames; 0: sleep at once; at most 1000000).
    #[arg(long = "busy-poll-us", value_name = "MICROSECONDS",
          default_value_t = crate::daemon::DEFAULT_BUSY_POLL_US,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    busy_poll_us: u32,
    /// How many workers may busy-poll at the same time; the others sleep
    /// as soon as they are idle (0: no limit; see README, Performance).
    #[arg(long = "busy-poll-workers", value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    busy_poll_workers: u32,
    /// When a worker sleeps instead of polling while, in most of its
    /// recent looks, more threads were runnable than the machine has CPUs
    /// (its polling would take a CPU from a container's sender or
    /// receiver): never; streams (only while a container sends the NAT
    /// 0.8 Gbit/s or more: its sends gain, a connection's round trips
    /// keep polling); always (connections/s lose). The flag alone means
    /// always (see README, Performance; streams between containers:
    /// --poll-switch-streams).
    #[arg(long = "sleep-when-crowded", value_name = "never|streams|always", num_args = 0..=1,
          default_value = "streams", default_missing_value = "always",
          value_parser = crate::dataplane::CrowdSleep::parse)]
    sleep_when_crowded: crate::dataplane::CrowdSleep,
    /// Keep busy-polling while a worker forwards a stream between
    /// containers (0.8 Gbit/s or more), as before 2026-12-06. By default
    /// such a worker sleeps when idle: with its polling, one TCP stream
    /// from a BBR sender fell to about two thirds of its rate in a
    /// quarter to a third of the runs (see README, Performance).
    #[arg(long = "poll-switch-streams")]
    poll_switch_streams: bool,
    /// Run the NAT in a thread of its own instead of in worker 0's loop
    /// (the layout before; see README, Performance).
    #[arg(long = "nat-thread")]
    nat_thread: bool,
    /// Frames of up to 2 KiB (not TCP's) each worker writes to the
    /// containers' TAPs in one system call (Linux AIO), so that a woken
    /// receiver finds a batch of them (0 or 1: one write per frame; see
    /// README, Performance).
    #[arg(long = "tx-batch", value_name = "N",
          default_value_t = crate::dataplane::DEFAULT_TX_BATCH as u32,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    tx_batch: u32,
    /// Where the workers run: auto (worker i on the i-th CPU the daemon
    /// may use), none (wherever the scheduler puts them), or CPU numbers
    /// such as 0-3,6 taken in turn (see README, Performance).
    #[arg(long = "worker-cpus", value_name = "auto|none|LIST", default_value = "auto",
          value_parser = crate::dataplane::WorkerCpus::parse)]
    worker_cpus: crate::dataplane::WorkerCpus,
    /// Which worker reads a frame a container sends: flow (the kernel's
    /// flow steering) or cpu (the worker pinned to the sender's CPU; root
    /// only, two workers or more; see README, Performance).
    #[arg(long = "tap-steering", value_name = "flow|cpu", default_value = "flow",
          value_parser = crate::dataplane::TapSteering::parse)]
    tap_steering: crate::dataplane::TapSteering,
}

fn client(host: &Option<String>) -> anyhow::Result<Client> {
    let socket = client::parse_host(host.as_deref()).map_err(anyhow::Error::msg)?;
    Ok(Client::new(socket))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Daemon(a) => daemon(cli.host, a),
        Cmd::Network(n) => network::run(&client(&cli.host)?, n),
        Cmd::Run(a) => container::run(&client(&cli.host)?, a),
        Cmd::Attach(a) => container::attach(&client(&cli.host)?, a),
        Cmd::Ps(a) => container::ps(&client(&cli.host)?, a),
        Cmd::Inspect { containers } => container::inspect(&client(&cli.host)?, &containers),
        Cmd::Port {
            container,
            private_port,
        } => container::port(&client(&cli.host)?, &container, private_port.as_deref()),
        Cmd::Conntrack(a) => container::conntrack(&client(&cli.host)?, a),
        Cmd::Capture(a) => capture::capture(&client(&cli.host)?, a),
        Cmd::Stats(a) => capture::stats(&client(&cli.host)?, a),
        Cmd::Exec { container, cmd } => container::exec(&client(&cli.host)?, &container, &cmd),
        Cmd::Stop { time, containers } => container::stop(&client(&cli.host)?, time, &containers),
        Cmd::Rm { force, containers } => container::rm(&client(&cli.host)?, force, &containers),
        Cmd::Logs { container } => container::logs(&client(&cli.host)?, &container),
        Cmd::Version(a) => version::version(&client(&cli.host)?, a),
        Cmd::Cluster { format } => {
            let v: serde_json::Value = client(&cli.host)?.get("/tapnet/cluster")?;
            match format.as_deref() {
                Some("json") => println!("{v}"),
                None | Some("table") => {
                    for k in [
                        "Host",
                        "VTEP",
                        "Store",
                        "Healthy",
                        "Lease",
                        "Requests",
                        "KeepAlives",
                        "RemoteEndpoints",
                    ] {
                        let val = match &v[k] {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Array(a) => a
                                .iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(","),
                            other => other.to_string(),
                        };
                        println!("{k}: {val}");
                    }
                }
                Some(f) => anyhow::bail!("unsupported --format {f:?} (json or table)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completion { shell } => version::completion(shell),
        Cmd::Replay {
            topology,
            input,
            output,
        } => {
            crate::replay::run(&topology, &input, &output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn daemon(host: Option<String>, a: DaemonArgs) -> anyhow::Result<ExitCode> {
    crate::sys::large_allocations_from_the_kernel();
    let socket = client::parse_host(host.as_deref()).map_err(anyhow::Error::msg)?;
    let workers = match a.workers {
        Some(0) => anyhow::bail!("--workers must be at least 1"),
        Some(n) => n,
        None => crate::daemon::default_workers(),
    };
    let mut dns_upstream = vec![];
    for d in &a.dns_upstream {
        let addr = if let Ok(ip) = d.parse::<std::net::IpAddr>() {
            std::net::SocketAddr::new(ip, 53)
        } else {
            d.parse::<std::net::SocketAddr>().map_err(|_| {
                anyhow::anyhow!("invalid --dns-upstream {d:?}: expected IP or IP:PORT")
            })?
        };
        dns_upstream.push(addr);
    }
    let mut conntrack = crate::dataplane::ConntrackConfig::default();
    if let Some(n) = a.conntrack_max {
        if n == 0 || n > tapnet_nat::MAX_CAPACITY {
            anyhow::bail!(
                "invalid --conntrack-max {n}: must be 1..{}",
                tapnet_nat::MAX_CAPACITY
            );
        }
        conntrack.max = n;
    }
    if let Some(n) = a.conntrack_max_per_container {
        if n == 0 {
            anyhow::bail!("invalid --conntrack-max-per-container 0: must be at least 1");
        }
        conntrack.max_per_container = n;
    }
    for t in &a.conntrack_timeout {
        conntrack.set_timeout(t).map_err(anyhow::Error::msg)?;
    }
    let metrics_addr = match &a.metrics_addr {
        None => None,
        Some(m) => Some(
            m.parse::<std::net::SocketAddr>()
                .map_err(|_| anyhow::anyhow!("invalid --metrics-addr {m:?}: expected IP:PORT"))?,
        ),
    };
    crate::daemon::systemd::init_logging();
    let docker_plugin = match a.docker_plugin.as_deref() {
        Some("none") => crate::daemon::PluginSocket::Off,
        Some(p) => crate::daemon::PluginSocket::Explicit(
            client::parse_host(Some(p))
                .map_err(|e| anyhow::anyhow!("invalid --docker-plugin: {e}"))?,
        ),
        None if nix::unistd::geteuid().is_root() => {
            crate::daemon::PluginSocket::Default(crate::daemon::DEFAULT_PLUGIN_SOCKET.into())
        }
        // Rootless: a socket of the user's, linked into the user's rootless
        // dockerd when one runs (daemon::plugin::link_into_rootless_dockerd).
        None => crate::daemon::PluginSocket::Default(
            client::user_runtime_dir().join("tapnet/docker-plugin.sock"),
        ),
    };
    let cluster = match (&a.cluster_store, &a.advertise_addr) {
        (None, None) => None,
        (None, Some(_)) => anyhow::bail!("--advertise-addr needs --cluster-store"),
        (Some(_), None) => anyhow::bail!(
            "--cluster-store needs --advertise-addr IP[:PORT] (this host's address on the underlay)"
        ),
        (Some(url), Some(adv)) => {
            let mut store =
                crate::cluster::StoreConfig::parse(url).map_err(|e| anyhow::anyhow!("{e}"))?;
            for o in &a.cluster_store_opt {
                store.set_opt(o).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            if a.vxlan_port == 0 {
                anyhow::bail!("invalid --vxlan-port 0");
            }
            let vtep = match adv.parse::<std::net::SocketAddr>() {
                Ok(s) => s,
                Err(_) => std::net::SocketAddr::new(
                    adv.parse::<std::net::IpAddr>().map_err(|_| {
                        anyhow::anyhow!("invalid --advertise-addr {adv:?}: expected IP[:PORT]")
                    })?,
                    a.vxlan_port,
                ),
            };
            if vtep.ip().is_unspecified() || vtep.port() == 0 {
                anyhow::bail!("invalid --advertise-addr {adv:?}: a host address and a port");
            }
            Some(crate::daemon::ClusterConfig { store, vtep })
        }
    };
    if cluster.is_none() && !a.cluster_store_opt.is_empty() {
        anyhow::bail!("--cluster-store-opt needs --cluster-store");
    }
    crate::daemon::run(crate::daemon::Config {
        root: a.root.unwrap_or_else(crate::daemon::default_root),
        socket,
        workers,
        dns_upstream,
        dns_ttl: a.dns_ttl,
        host_loopback: !a.no_host_loopback,
        conntrack,
        docker_plugin,
        cluster,
        metrics_addr,
        busy_poll_us: a.busy_poll_us,
        busy_poll_workers: a.busy_poll_workers,
        sleep_when_crowded: a.sleep_when_crowded,
        poll_switch_streams: a.poll_switch_streams,
        nat_thread: a.nat_thread,
        tx_batch: a.tx_batch,
        worker_cpus: a.worker_cpus,
        tap_steering: a.tap_steering,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Splits `KEY=VALUE`.
fn key_value(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => anyhow::bail!("invalid {what} {s:?}: expected KEY=VALUE"),
    }
}

/// Docker's indented JSON (4 spaces).
fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)?;
    println!("{}", String::from_utf8_lossy(&out));
    Ok(())
}

/// Prints rows as a left-aligned table with 3 spaces between columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Docker's multi-object verbs (`rm A B`, `stop A B`): runs `op` on each
/// key, prints the key when it worked or the error when not, and exits 1 if
/// any failed.
pub(crate) fn for_each_key<E: std::fmt::Display>(
    keys: &[String],
    mut op: impl FnMut(&str) -> Result<(), E>,
) -> ExitCode {
    let mut ok = true;
    for k in keys {
        match op(k) {
            Ok(()) => println!("{k}"),
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

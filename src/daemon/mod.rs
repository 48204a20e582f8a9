//! The daemon: HTTP/JSON API over a Unix socket (Docker Engine API shapes),
//! state, and the link to the dataplane and sandboxes.
//!
//! - `types`: the JSON bodies (shared with the CLI);
//! - `error`: the typed errors of each kind of operation;
//! - `core`: state + dataplane + network operations (one transaction each);
//! - `endpoints`: endpoints, a daemon object of their own (addresses,
//!   TAPs, dataplane ports);
//! - `containers`: sandboxes by operation (create, lifecycle, connect,
//!   files, views);
//! - `ports`: published ports (host sockets) and the connection table view;
//! - `observe`: captures, `tapnet stats`, and the Prometheus `/metrics`;
//! - `api`: the axum routes, and the only mapping of errors to HTTP
//!   statuses;
//! - `systemd`: journald-friendly logging and readiness notification.
//!
//! Dependencies point one way: `api` uses the others; nothing uses `api`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub mod api;
pub mod containers;
pub mod core;
pub mod docker;
pub mod endpoints;
pub mod error;
pub mod observe;
pub mod overlay;
pub mod plugin;
pub mod ports;
pub mod systemd;
pub mod types;

/// The core, shared by the API handlers and the exit watcher.
pub type Shared = Arc<Mutex<core::Core>>;

/// Runs a core operation on a blocking thread with the core locked (a
/// panic in it is resumed in the caller).
pub async fn call<R: Send + 'static, E: Send + 'static>(
    core: &Shared,
    f: impl FnOnce(&mut core::Core) -> Result<R, E> + Send + 'static,
) -> Result<R, E> {
    let core = core.clone();
    match tokio::task::spawn_blocking(move || f(&mut core.lock())).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `tapnet daemon` options.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub workers: usize,
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// TTL of the embedded DNS's answers (Docker: 600).
    #[serde(default = "default_dns_ttl")]
    pub dns_ttl: u32,
    /// Containers reach the host's loopback through their gateway address
    /// and `host.tapnet.internal` (`--no-host-loopback` turns it off).
    #[serde(default = "default_true")]
    pub host_loopback: bool,
    #[serde(default)]
    pub conntrack: crate::dataplane::ConntrackConfig,
    /// The Docker network-driver plugin's socket (`--docker-plugin`).
    #[serde(default)]
    pub docker_plugin: PluginSocket,
    /// `--cluster-store` and `--advertise-addr`: this daemon is a host of
    /// a cluster (overlay networks).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// `--metrics-addr`: serve Prometheus's `/metrics` on this TCP
    /// address (none by default).
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `--busy-poll-us`: how long an idle worker polls before it sleeps.
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u32,
    /// `--busy-poll-workers`: how many workers may poll at once (0: no
    /// limit).
    #[serde(default)]
    pub busy_poll_workers: u32,
    /// `--sleep-when-crowded`: when workers sleep rather than poll while
    /// the machine is mostly crowded.
    #[serde(default)]
    pub sleep_when_crowded: crate::dataplane::CrowdSleep,
    /// `--poll-switch-streams`: workers poll on while they forward a
    /// stream between containers.
    #[serde(default)]
    pub poll_switch_streams: bool,
    /// `--nat-thread`: the NAT in a thread of its own, not in worker 0.
    #[serde(default)]
    pub nat_thread: bool,
    /// `--tx-batch`: frames a worker writes to TAPs in one system call.
    #[serde(default = "default_tx_batch")]
    pub tx_batch: u32,
    /// `--worker-cpus`: where the workers run.
    #[serde(default)]
    pub worker_cpus: crate::dataplane::WorkerCpus,
    /// `--tap-steering`: which worker reads a container's frame.
    #[serde(default)]
    pub tap_steering: crate::dataplane::TapSteering,
}

fn default_tx_batch() -> u32 {
    crate::dataplane::DEFAULT_TX_BATCH as u32
}

/// `--busy-poll-us`'s default: long enough that a TCP stream's worker stays
/// awake between frames (one stream across the switch: 0.70 -> 0.95 of the
/// kernel bridge, medians of three runs), short enough that sparse traffic
/// costs little (a ping every 5 ms: about 4% of a core spent polling).
/// Ping's round trip needs about 1000 (2.4x the bridge's instead of 6x).
pub const DEFAULT_BUSY_POLL_US: u32 = 200;

fn default_busy_poll_us() -> u32 {
    DEFAULT_BUSY_POLL_US
}

/// A cluster host's settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterConfig {
    pub store: crate::cluster::StoreConfig,
    /// This host's VTEP: `--advertise-addr` IP, and its port or
    /// `--vxlan-port`.
    pub vtep: std::net::SocketAddr,
}

/// Where the Docker network-driver plugin listens.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PluginSocket {
    /// `--docker-plugin none`.
    #[default]
    Off,
    /// The default (root: `/run/docker/plugins/tapnet.sock`; rootless:
    /// `$XDG_RUNTIME_DIR/tapnet/docker-plugin.sock`): skipped with a
    /// warning when it cannot be used (another daemon has it).
    Default(PathBuf),
    /// `--docker-plugin unix:///PATH`: failing to listen is fatal.
    Explicit(PathBuf),
}

/// The plugin socket dockerd finds without configuration.
pub const DEFAULT_PLUGIN_SOCKET: &str = "/run/docker/plugins/tapnet.sock";

fn default_true() -> bool {
    true
}

/// Every relayed connection holds a host socket: raise the soft limit on
/// open files to the hard one (as Go programs such as dockerd do).
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Default state directory: `/var/lib/tapnet` as root, else
/// `$XDG_DATA_HOME/tapnet` (fallback `~/.local/share/tapnet`).
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/tapnet");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tapnet");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/tapnet")
}

/// Default number of workers: the CPUs the daemon may use, at most 8;
/// with two CPUs or fewer, one. On two CPUs a second worker takes the CPU
/// the containers' own threads need. Full runs of `bench/all.sh`, two
/// workers against one (2026-12-05): 9 -> 12 of issue 19's goals; ping
/// 24x -> 3.25x the bridge's, the crowded network's 64 B rate 0.81 ->
/// 0.92, connections/s published 0.93 -> 0.98 of the kernel path (outbound
/// 0.83 -> 0.84, 1.04 in a partial run); two busy pairs 1.34 -> 0.97 of
/// one pair, as they share the worker (bench/NOTES.md: "One worker
/// on two CPUs"). `--workers N` overrides it.
pub fn default_workers() -> usize {
    workers_for(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    )
}

/// [`default_workers`] for `cpus` usable CPUs.
fn workers_for(cpus: usize) -> usize {
    if cpus <= 2 {
        1
    } else {
        cpus.min(8)
    }
}

/// How long a client may take to send a request's headers, and how long
/// an idle connection is kept: slow or stuck clients do not hold a
/// connection (and its task) for long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new daemon waits for the state file's lock while a previous
/// daemon (killed a moment ago) is still exiting.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Makes `dir` owner-only (0700) and every entry below it unreadable by
/// others: directories 0700, files 0600, except the files bind-mounted into
/// containers (`hosts`, `resolv.conf`, `hostname`: 0644, as Docker, so that
/// any user inside a container reads them; the 0700 directories above keep
/// them from other users of the host). Returns how many modes it changed.
pub fn secure_tree(dir: &std::path::Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = 0;
    let mut set = |p: &std::path::Path, want: u32| -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if meta.permissions().mode() & 0o7777 != want {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(want))?;
            changed += 1;
        }
        Ok(())
    };
    set(dir, 0o700)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                set(&p, 0o700)?;
                stack.push(p);
            } else if ft.is_file() {
                let shared = matches!(
                    e.file_name().to_str(),
                    Some("hosts" | "resolv.conf" | "hostname")
                ) && d.parent().and_then(|x| x.file_name())
                    == Some("containers".as_ref());
                set(&p, if shared { 0o644 } else { 0o600 })?;
            }
        }
    }
    Ok(changed)
}

/// Opens the state store, waiting (up to [`LOCK_WAIT`]) while another
/// process still holds its lock: a daemon restarted right after `kill -9`
/// may start before the old process has fully exited.
fn open_store(path: &std::path::Path) -> anyhow::Result<crate::state::Store> {
    {
        // Owner-only from its first byte (redb would create it 0644).
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot create state {}: {e}", path.display()))?;
    }
    let start = std::time::Instant::now();
    let mut logged = false;
    loop {
        match crate::state::Store::open(path) {
            Err(crate::state::StoreError::Open {
                source: redb::DatabaseError::DatabaseAlreadyOpen,
                ..
            }) if start.elapsed() < LOCK_WAIT => {
                if !logged {
                    tracing::info!(
                        "{} is locked by another process; waiting up to {}s for it to exit",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(
                e @ crate::state::StoreError::Open {
                    source: redb::DatabaseError::DatabaseAlreadyOpen,
                    ..
                },
            ) => {
                anyhow::bail!(
                    "{e} (is another tapnet daemon using {}?)",
                    path.parent().unwrap_or(path).display()
                )
            }
            Err(e) => anyhow::bail!("{e}"),
            Ok(s) => return Ok(s),
        }
    }
}

/// This daemon's id in the cluster: made once (hostname and a random
/// suffix) and kept in its state.
fn host_id(store: &mut crate::state::Store) -> anyhow::Result<String> {
    const KEY: &str = "cluster.host";
    if let Some(h) = store.state().options.get(KEY) {
        return Ok(h.clone());
    }
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let id = format!("{name}-{}", &crate::model::new_id()[..8]);
    store
        .transact(|st| {
            st.options.insert(KEY.into(), id.clone());
            Ok::<_, crate::state::StoreError>(())
        })
        .map_err(|e| anyhow::anyhow!("cannot save the cluster host id: {e}"))?;
    Ok(id)
}

/// `TAPNET_DATAPLANE_FAULTS=OP[+N],...`: dataplane operations that refuse
/// calls (after the first N), for tests of the transactions (see
/// [`crate::dataplane::Fault`]).
fn dataplane_faults() -> anyhow::Result<Vec<crate::dataplane::Fault>> {
    let Ok(v) = std::env::var("TAPNET_DATAPLANE_FAULTS") else {
        return Ok(vec![]);
    };
    let faults = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(crate::dataplane::Fault::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("TAPNET_DATAPLANE_FAULTS: {e}"))?;
    if !faults.is_empty() {
        tracing::warn!("TAPNET_DATAPLANE_FAULTS: injected faults {v} (a test setting)");
    }
    Ok(faults)
}

/// Exit status of a daemon stopped by a panic in one of its threads
/// (`EX_SOFTWARE`).
pub const PANIC_EXIT: i32 = 70;

/// Makes a panic in any of the daemon's own threads (named `tapnet-...`:
/// the dataplane's workers, the NAT, the DNS forwarder, captures) stop
/// the daemon, after the panic's message, with one error line and exit
/// status [`PANIC_EXIT`].
///
/// Left alone, the thread would end and the rest go on without it: the
/// ports a dead worker reads go dark, with nothing said anywhere. A
/// stopped daemon is restarted by its supervisor (`Restart=on-failure` in
/// `contrib/systemd`), and the next daemon on the same `--root` takes up
/// the persisted state and the running containers, as after `kill -9`.
/// A panic in a request handler (the runtime's threads) fails that
/// request only.
fn stop_on_thread_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        if name.starts_with("tapnet-") {
            tracing::error!(
                "thread {name} panicked: the daemon stops (exit status {PANIC_EXIT}); \
                 start it again: the state and the containers stay"
            );
            std::process::exit(PANIC_EXIT);
        }
    }));
}

/// Runs the daemon until SIGINT/SIGTERM. On either signal it stops
/// accepting requests, finishes the ones in flight, removes its socket,
/// stops the dataplane's threads and returns `Ok` (exit status 0).
/// Containers are separate processes with persistent TAPs: they keep
/// running, and the next daemon on the same `--root` picks them up. A
/// panic in one of the daemon's threads stops it with exit status
/// [`PANIC_EXIT`] ([`stop_on_thread_panics`]).
pub fn run(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;

    // Before the daemon makes anything: a CPU it may not use is refused.
    let worker_cpus = cfg
        .worker_cpus
        .resolve(&crate::dataplane::allowed_cpus().context("cannot read the CPU affinity")?)
        .map_err(anyhow::Error::msg)?;
    // So is a steering program the daemon could not use.
    let steering = cfg
        .tap_steering
        .steering(cfg.workers, &worker_cpus, (!cfg.nat_thread).then_some(0))
        .map_err(anyhow::Error::msg)?;
    let rootless = !nix::unistd::geteuid().is_root();
    stop_on_thread_panics();
    raise_nofile_limit();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cfg.root.join("containers"))
            .with_context(|| format!("cannot create state directory {}", cfg.root.display()))?;
    }
    match secure_tree(&cfg.root) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            "{}: made {n} files and directories owner-only (they were readable by other users)",
            cfg.root.display()
        ),
        Err(e) => anyhow::bail!(
            "cannot make state directory {} owner-only: {e}",
            cfg.root.display()
        ),
    }
    let mut store = open_store(&cfg.root.join("state.redb"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cluster = match &cfg.cluster {
        None => None,
        Some(cc) => {
            let host = host_id(&mut store)?;
            let c = crate::cluster::Cluster::connect(
                rt.handle().clone(),
                cc.store.clone(),
                host.clone(),
                cc.vtep,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(
                "cluster: host {host}, VTEP {}, store {}",
                cc.vtep,
                cc.store.endpoints.join(",")
            );
            Some(c)
        }
    };
    let dp = crate::dataplane::Dataplane::start_with(crate::dataplane::DataplaneConfig {
        workers: cfg.workers,
        dns_upstreams: cfg.dns_upstream.clone(),
        dns_ttl: cfg.dns_ttl,
        host_loopback: cfg.host_loopback,
        conntrack: cfg.conntrack,
        faults: dataplane_faults()?,
        vtep: cfg
            .cluster
            .as_ref()
            .map(|c| crate::dataplane::VtepConfig::new(c.vtep)),
        busy_poll: std::time::Duration::from_micros(cfg.busy_poll_us.into()),
        busy_poll_workers: cfg.busy_poll_workers as usize,
        sleep_when_crowded: cfg.sleep_when_crowded,
        poll_switch_streams: cfg.poll_switch_streams,
        nat_thread: cfg.nat_thread,
        tx_batch: cfg.tx_batch as usize,
        worker_cpus,
        steering: steering.map(std::sync::Arc::new),
    })
    .context("cannot start the dataplane")?;
    let mut core = core::Core::new(store, dp, cfg.root.clone(), cfg.socket.clone(), cluster)
        .map_err(|e| anyhow::anyhow!("cannot load state: {e}"))?;
    core.store
        .transact(|st| {
            st.options.insert(
                "daemon_config".into(),
                serde_json::to_string(&cfg).unwrap_or_default(),
            );
            Ok::<_, crate::state::StoreError>(())
        })
        .map_err(|e| anyhow::anyhow!("cannot save the daemon options: {e}"))?;
    let shared: Shared = Arc::new(Mutex::new(core));

    // The socket: refuse to steal one a live daemon listens on.
    if let Some(dir) = cfg.socket.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
            let mode = if rootless { 0o700 } else { 0o755 };
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
        }
    }
    if cfg.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
            anyhow::bail!(
                "another daemon is already listening on {}",
                cfg.socket.display()
            );
        }
        std::fs::remove_file(&cfg.socket)
            .with_context(|| format!("cannot remove stale socket {}", cfg.socket.display()))?;
    }

    let socket = cfg.socket.clone();
    rt.block_on(async move {
        // The handlers are in place before the socket exists and before
        // READY=1: a SIGTERM as soon as clients can connect is a clean
        // stop, not a kill.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        // The plugin's socket first: once the API's accepts, dockerd can
        // find the driver too (and a plugin socket that fails leaves no
        // API socket behind).
        let plugin = listen_plugin(&cfg.docker_plugin)?;
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let mode = if rootless { 0o600 } else { 0o660 };
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
        tracing::info!("listening on unix://{}", socket.display());

        let plugin = match plugin {
            Some((l, path)) => {
                tracing::info!(
                    "docker network driver \"tapnet\" on unix://{}",
                    path.display()
                );
                Some((l, path))
            }
            None => None,
        };
        let metrics = match cfg.metrics_addr {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {a}"))?;
                tracing::info!("metrics on http://{a}/metrics");
                Some(l)
            }
            None => None,
        };
        if let Some(l) = metrics {
            let app = api::metrics_router(shared.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!("metrics: {e}");
                }
            });
        }
        // Ready once both sockets accept clients (dockerd may come next).
        systemd::notify("READY=1");

        tokio::spawn(containers::watch(
            shared.clone(),
            Duration::from_millis(300),
        ));
        if cfg.cluster.is_some() {
            tokio::spawn(overlay::keep_alive(shared.clone()));
            tokio::spawn(overlay::watch(shared.clone()));
        }

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let plugin_task = plugin.map(|(l, path)| {
            if rootless {
                tokio::spawn(plugin::link_into_rootless_dockerd(path.clone()));
            }
            let app = plugin::router(shared.clone());
            let done = stopped();
            (tokio::spawn(serve(l, app, false, done)), path)
        });
        let api_task = tokio::spawn(serve(
            listener,
            api::router(shared.clone()),
            true,
            stopped(),
        ));
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        systemd::notify("STOPPING=1");
        tracing::info!("{name}: shutting down (containers keep running)");
        let _ = stop_tx.send(true);
        let _ = api_task.await;
        let _ = std::fs::remove_file(&socket);
        if let Some((t, path)) = plugin_task {
            let _ = t.await;
            let _ = std::fs::remove_file(path);
        }
        shared.lock().dp.shutdown();
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })
}

/// Listens on the plugin socket of `cfg`: `None` when off, or when the
/// default one cannot be used (logged); an explicit one that cannot be
/// used is an error.
fn listen_plugin(
    cfg: &PluginSocket,
) -> anyhow::Result<Option<(tokio::net::UnixListener, PathBuf)>> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let (path, explicit) = match cfg {
        PluginSocket::Off => return Ok(None),
        PluginSocket::Default(p) => (p, false),
        PluginSocket::Explicit(p) => (p, true),
    };
    let r = (|| -> anyhow::Result<tokio::net::UnixListener> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("another process is listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        let l = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        Ok(l)
    })();
    match r {
        Ok(l) => Ok(Some((l, path.clone()))),
        Err(e) if explicit => Err(e.context("--docker-plugin")),
        Err(e) => {
            tracing::warn!("docker network driver plugin off: {e:#} (use --docker-plugin unix:///PATH or none)");
            Ok(None)
        }
    }
}

/// How long a stopping daemon lets requests in flight finish.
const DRAIN: Duration = Duration::from_secs(15);

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (up to [`DRAIN`]): the version gate before
/// routing when `versioned` (the API), the caller's pid in each request
/// (a [`docker::Peer`] extension, from the socket's peer credentials), and
/// [`HEADER_TIMEOUT`] for a request's headers and between requests on a
/// kept-alive connection.
async fn serve(
    listener: tokio::net::UnixListener,
    router: axum::Router,
    versioned: bool,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::Layer;
    // Before routing (a layer on the router would run after it).
    let router = axum::middleware::from_fn_with_state(versioned, api::version_gate).layer(router);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let peer = docker::Peer {
            pid: stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0),
        };
        let app = tower::util::MapRequestLayer::new(
            move |r: axum::http::Request<hyper::body::Incoming>| {
                let mut r = r.map(axum::body::Body::new);
                r.extensions_mut().insert(peer);
                r
            },
        )
        .layer(router.clone());
        let svc = hyper_util::service::TowerToHyperService::new(app);
        let mut b = hyper::server::conn::http1::Builder::new();
        // Half-close: a client may shut down its write side while it
        // waits for the answer (socat, nc); it still gets the answer.
        b.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .half_close(true)
            .keep_alive(true);
        let conn = graceful.watch(b.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after {}s; stopping anyway",
            DRAIN.as_secs()
        );
    }
}

fn default_dns_ttl() -> u32 {
    600
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_worker_on_two_cpus_else_the_cpus_up_to_eight() {
        let got: Vec<usize> = [1, 2, 3, 4, 8, 64].map(super::workers_for).to_vec();
        assert_eq!(got, [1, 1, 3, 4, 8, 8]);
    }
}

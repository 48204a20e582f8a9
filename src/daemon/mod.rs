//! The daemon: HTTP/JSON API over a Unix socket (Docker Engine API shapes),
//! state, and the link to the dataplane and sandboxes.
//!
//! - `types`: the JSON bodies (shared with the CLI);
//! - `core`: state + dataplane + network operations (one transaction each);
//! - `containers`: sandboxes: create/start/stop/rm, attach, exit watcher,
//!   recovery after a restart;
//! - `ports`: published ports (host sockets) and the connection table view;
//! - `api`: the axum routes;
//! - `systemd`: journald-friendly logging and readiness notification.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

pub mod api;
pub mod containers;
pub mod core;
pub mod ports;
pub mod systemd;
pub mod types;

/// An API error: an HTTP status and Docker's `{"message": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad(m: impl Into<String>) -> ApiError {
        ApiError::new(400, m)
    }
    pub fn forbidden(m: impl Into<String>) -> ApiError {
        ApiError::new(403, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(404, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(409, m)
    }
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError::new(500, m)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crate::state::StoreError> for ApiError {
    fn from(e: crate::state::StoreError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            axum::Json(types::ErrorBody {
                message: self.message,
            }),
        )
            .into_response()
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
    pub cluster_store: Option<String>,
    pub advertise_addr: Option<String>,
    pub vxlan_port: u16,
    pub metrics_addr: Option<String>,
}

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

/// Default number of workers: the CPUs, at most 8.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Runs the daemon until SIGINT/SIGTERM. On either signal it stops
/// accepting requests, finishes the ones in flight, removes its socket,
/// stops the dataplane's threads and returns `Ok` (exit status 0).
/// Containers are separate processes with persistent TAPs: they keep
/// running, and the next daemon on the same `--root` picks them up.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;

    let rootless = !nix::unistd::geteuid().is_root();
    raise_nofile_limit();
    std::fs::create_dir_all(&cfg.root)
        .with_context(|| format!("cannot create state directory {}", cfg.root.display()))?;
    std::fs::create_dir_all(cfg.root.join("containers"))
        .with_context(|| format!("cannot create {}/containers", cfg.root.display()))?;
    if rootless {
        let _ = std::fs::set_permissions(&cfg.root, std::fs::Permissions::from_mode(0o700));
    }
    let store = crate::state::Store::open(&cfg.root.join("state.redb")).map_err(|e| {
        anyhow::anyhow!(
            "{e} (is another tapnet daemon using {}?)",
            cfg.root.display()
        )
    })?;
    let dp = crate::dataplane::Dataplane::start_with(crate::dataplane::DataplaneConfig {
        workers: cfg.workers,
        dns_upstreams: cfg.dns_upstream.clone(),
        dns_ttl: cfg.dns_ttl,
        host_loopback: cfg.host_loopback,
        conntrack: cfg.conntrack,
    })
    .context("cannot start the dataplane")?;
    let mut core = core::Core::new(store, dp, cfg.root.clone())
        .map_err(|e| anyhow::anyhow!("cannot load state: {e}"))?;
    core.store
        .transact(|st| {
            st.options.insert(
                "daemon_config".into(),
                serde_json::to_string(&cfg).unwrap_or_default(),
            );
            Ok::<_, ApiError>(())
        })
        .map_err(|e| anyhow::anyhow!("cannot save the daemon options: {e}"))?;
    let shared: api::Shared = Arc::new(Mutex::new(core));

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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let socket = cfg.socket.clone();
    rt.block_on(async move {
        // The handlers are in place before the socket exists and before
        // READY=1: a SIGTERM as soon as clients can connect is a clean
        // stop, not a kill.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let mode = if rootless { 0o600 } else { 0o660 };
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
        tracing::info!("listening on unix://{}", socket.display());
        systemd::notify("READY=1");

        tokio::spawn(containers::watch(
            shared.clone(),
            Duration::from_millis(300),
        ));

        use axum::ServiceExt;
        use tower::Layer;
        let app = tower::util::MapRequestLayer::new(api::strip_version)
            .layer(api::router(shared.clone()));
        let shutdown = async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            systemd::notify("STOPPING=1");
            tracing::info!("{name}: shutting down (containers keep running)");
        };
        let served = axum::serve(listener, app.into_make_service())
            .with_graceful_shutdown(shutdown)
            .await
            .context("the API server failed");
        let _ = std::fs::remove_file(&socket);
        shared.lock().dp.shutdown();
        served?;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })
}

fn default_dns_ttl() -> u32 {
    600
}

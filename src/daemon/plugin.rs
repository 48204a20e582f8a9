//! libnetwork's remote network-driver protocol, served on a second Unix
//! socket (`tapnet daemon --docker-plugin`; as root by default
//! `/run/docker/plugins/tapnet.sock`, where dockerd finds driver `tapnet`
//! with no configuration).
//!
//! Every call is a `POST /Plugin.Activate` or `/NetworkDriver.METHOD`
//! with a JSON body (empty for some). Docker sends no `Content-Type`, so
//! bodies are parsed from the raw bytes whatever the headers; field names
//! are Go's (`NetworkID`, `IPv4Data`, ...); `Options` are arbitrary JSON.
//! Answers are always JSON (`{}` at least); a failure is `{"Err": "..."}`
//! (status 500), which `docker` shows as is. The work is done by the core
//! (`docker.rs`), with the caller (dockerd, from the socket's peer
//! credentials) as the namespace where TAPs are made and ports bound.
//! Facts and sources: `shared/research/docker-remote-driver.md`.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::docker::{DockerIface, Peer, PortMap};
use super::error::DockerError;
use super::{call, Shared};
use crate::drivers::docker::IpamData;

/// A failed call: `{"Err": ...}`.
struct PluginError(String);

impl IntoResponse for PluginError {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "Err": self.0 })),
        )
            .into_response()
    }
}

impl From<DockerError> for PluginError {
    fn from(e: DockerError) -> PluginError {
        PluginError(e.to_string())
    }
}

type Answer = Result<Json<Value>, PluginError>;

/// Parses a body: empty is the defaults; anything else JSON of the shape.
fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, PluginError> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| PluginError(format!("tapnet: malformed request: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    options: Value,
    #[serde(rename = "IPv4Data")]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data")]
    ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

/// An endpoint's addresses (CIDR) and MAC, as Docker sends and reads them.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
struct Interface {
    #[serde(skip_serializing_if = "String::is_empty")]
    address: String,
    #[serde(rename = "AddressIPv6", skip_serializing_if = "String::is_empty")]
    address_ipv6: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    mac_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    interface: Option<Interface>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    sandbox_key: String,
    options: Value,
}

/// Routes of the plugin socket.
pub fn router(core: Shared) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(oper_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(empty))
        .route("/NetworkDriver.DiscoverNew", post(empty))
        .route("/NetworkDriver.DiscoverDelete", post(empty))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(program_external),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(revoke_external),
        )
        .route("/NetworkDriver.AllocateNetwork", post(swarm_only))
        .route("/NetworkDriver.FreeNetwork", post(swarm_only))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"Err": "tapnet: no such plugin method"})),
            )
        })
        .with_state(core)
}

async fn activate() -> Json<Value> {
    Json(json!({"Implements": ["NetworkDriver"]}))
}

async fn capabilities() -> Json<Value> {
    Json(json!({"Scope": "local", "ConnectivityScope": "local"}))
}

async fn empty() -> Json<Value> {
    Json(json!({}))
}

async fn swarm_only() -> PluginError {
    PluginError("tapnet: swarm-scoped networks are not supported".into())
}

async fn create_network(State(c): State<Shared>, b: Bytes) -> Answer {
    let r: CreateNetworkRequest = body(&b)?;
    call(&c, move |c| {
        c.docker_create_network(
            &r.network_id,
            &r.options,
            r.ipv4_data.as_deref().unwrap_or_default(),
            r.ipv6_data.as_deref().unwrap_or_default(),
        )
    })
    .await?;
    Ok(Json(json!({})))
}

async fn delete_network(
    State(c): State<Shared>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> Answer {
    let r: NetworkRequest = body(&b)?;
    call(&c, move |c| c.docker_delete_network(&r.network_id, peer)).await?;
    Ok(Json(json!({})))
}

async fn create_endpoint(
    State(c): State<Shared>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> Answer {
    let r: CreateEndpointRequest = body(&b)?;
    let iface = r.interface.unwrap_or_default();
    let filled = call(&c, move |c| {
        c.docker_create_endpoint(
            &r.network_id,
            &r.endpoint_id,
            &iface.address,
            &iface.address_ipv6,
            &iface.mac_address,
            peer,
        )
    })
    .await?;
    // Only what Docker left empty may be filled in: libnetwork refuses a
    // driver that answers an address or MAC it gave ("endpoint interface
    // ... present"), so Docker's own addresses are never echoed.
    if filled == DockerIface::default() {
        return Ok(Json(json!({})));
    }
    Ok(Json(json!({"Interface": Interface {
        mac_address: filled.mac.map(|m| m.to_string()).unwrap_or_default(),
        address_ipv6: filled.ipv6.map(|a| a.to_string()).unwrap_or_default(),
        ..Default::default()
    }})))
}

async fn oper_info() -> Json<Value> {
    Json(json!({"Value": {}}))
}

async fn delete_endpoint(
    State(c): State<Shared>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> Answer {
    let r: EndpointRequest = body(&b)?;
    call(&c, move |c| c.docker_delete_endpoint(&r.endpoint_id, peer)).await?;
    Ok(Json(json!({})))
}

async fn join(State(c): State<Shared>, b: Bytes) -> Answer {
    let r: EndpointRequest = body(&b)?;
    let j = call(&c, move |c| {
        c.docker_join(&r.network_id, &r.endpoint_id, &r.sandbox_key)
    })
    .await?;
    let mut v = json!({"InterfaceName": {"SrcName": j.src_name, "DstPrefix": "eth"}});
    // Bare addresses (libnetwork's `net.ParseIP`).
    if let Some(g) = j.gateway {
        v["Gateway"] = json!(g.to_string());
    }
    if let Some(g) = j.gateway6 {
        v["GatewayIPv6"] = json!(g.to_string());
    }
    Ok(Json(v))
}

async fn program_external(
    State(c): State<Shared>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> Answer {
    let r: EndpointRequest = body(&b)?;
    let portmap: Vec<PortMap> = match r.options.get("com.docker.network.portmap") {
        None | Some(Value::Null) => vec![],
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| PluginError(format!("tapnet: malformed port map: {e}")))?,
    };
    call(&c, move |c| {
        c.docker_publish(&r.network_id, &r.endpoint_id, &portmap, peer)
    })
    .await?;
    Ok(Json(json!({})))
}

async fn revoke_external(State(c): State<Shared>, b: Bytes) -> Answer {
    let r: EndpointRequest = body(&b)?;
    call(&c, move |c| c.docker_unpublish(&r.endpoint_id)).await?;
    Ok(Json(json!({})))
}

/// How often a rootless daemon looks for the user's rootless dockerd.
const ROOTLESS_DOCKERD_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Rootless Docker (dockerd under RootlessKit, Docker 20.10) looks for
/// plugin sockets only in `/run/docker/plugins` of its own mount
/// namespace, where `/run` is a tmpfs private to RootlessKit: nothing the
/// user makes outside shows there. So a rootless tapnet watches the user's
/// dockerd (its pidfile, `$XDG_RUNTIME_DIR/docker.pid`) and, for each new
/// dockerd, makes `/run/docker/plugins/tapnet.sock` inside its mount
/// namespace a symlink to `socket` (the user's runtime directory is
/// reachable there through RootlessKit's copied-up `/run`). dockerd
/// retries a missing plugin for about 15 seconds, so one look per second
/// finds it in time. A dockerd in the daemon's own mount namespace is left
/// alone (its `/run/docker/plugins` is the host's).
pub async fn link_into_rootless_dockerd(socket: std::path::PathBuf) {
    let pidfile = crate::client::user_runtime_dir().join("docker.pid");
    // The dockerd (pid, start time) last seen, linked or not.
    let mut seen: Option<(i32, u64)> = None;
    loop {
        tokio::time::sleep(ROOTLESS_DOCKERD_POLL).await;
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let Some(start) = crate::sandbox::process_start_time(pid) else {
            continue;
        };
        if seen == Some((pid, start)) {
            continue;
        }
        seen = Some((pid, start));
        let ours = crate::sys::ns::open_self("mnt");
        let theirs = crate::sys::ns::open_of(pid, "mnt");
        if let (Ok(a), Ok(b)) = (&ours, &theirs) {
            if crate::sys::ns::same(a, b).unwrap_or(true) {
                continue;
            }
        }
        let s = socket.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::sandbox::link_plugin_socket(pid, "tapnet", &s)
        })
        .await;
        match r {
            Ok(Ok(())) => tracing::info!(
                "docker: rootless dockerd (pid {pid}) finds driver \"tapnet\": /run/docker/plugins/tapnet.sock in its namespace leads to {}",
                socket.display()
            ),
            Ok(Err(e)) => tracing::warn!(
                "docker: cannot show driver \"tapnet\" to rootless dockerd (pid {pid}): {e:#}"
            ),
            Err(e) => tracing::warn!("docker: rootless dockerd link task: {e}"),
        }
    }
}

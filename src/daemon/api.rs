//! HTTP routes (Docker Engine API paths; an optional `/v1.NN` prefix is
//! accepted on every path). Bodies are parsed here so that a malformed body
//! is a 400 with Docker's `{"message": ...}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use super::core::Core;
use super::types::*;
use super::ApiError;

pub type Shared = Arc<Mutex<Core>>;

/// The Docker Engine API version this daemon speaks (`GET /version`'s
/// `ApiVersion`, the newest `/v1.NN` prefix it serves).
pub const API_VERSION: &str = "1.43";
/// The oldest Docker Engine API version it serves.
pub const MIN_API_VERSION: &str = "1.24";

type Q = Query<HashMap<String, String>>;

/// Runs a core operation on a blocking thread with the core locked.
pub async fn call<R: Send + 'static>(
    core: &Shared,
    f: impl FnOnce(&mut Core) -> Result<R, ApiError> + Send + 'static,
) -> Result<R, ApiError> {
    let core = core.clone();
    tokio::task::spawn_blocking(move || f(&mut core.lock()))
        .await
        .map_err(|e| ApiError::internal(format!("internal error: {e}")))?
}

fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k)
        .map(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE"))
        .unwrap_or(false)
}

/// Strips a `/v1.NN` prefix before routing.
pub fn strip_version(mut req: Request) -> Request {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(slash) = rest.find('/') {
            let ver = &rest[..slash];
            if !ver.is_empty() && ver.chars().all(|c| c.is_ascii_digit() || c == '.') {
                let new_path = rest[slash..].to_string();
                let pq = match req.uri().query() {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path,
                };
                if let Ok(pq) = pq.parse() {
                    let mut parts = req.uri().clone().into_parts();
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
    }
    req
}

pub fn router(core: Shared) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/version", get(version))
        .route("/networks", get(networks_list))
        .route("/networks/create", post(networks_create))
        .route("/networks/prune", post(networks_prune))
        .route(
            "/networks/{id}",
            get(networks_inspect).delete(networks_delete),
        )
        .route("/networks/{id}/connect", post(networks_connect))
        .route("/networks/{id}/disconnect", post(networks_disconnect))
        .route("/containers/json", get(containers_list))
        .route("/containers/create", post(containers_create))
        .route("/containers/{id}/json", get(containers_inspect))
        .route("/containers/{id}/start", post(containers_start))
        .route("/containers/{id}/stop", post(containers_stop))
        .route("/containers/{id}/exited", post(containers_exited))
        .route("/containers/{id}/logs", get(containers_logs))
        .route("/containers/{id}", delete(containers_delete))
        .route("/tapnet/attach", post(tapnet_attach))
        .route("/tapnet/conntrack", get(tapnet_conntrack))
        .route("/tapnet/conntrack/stats", get(tapnet_conntrack_stats))
        .fallback(|req: Request| async move {
            ApiError::not_found(format!(
                "page not found: {} {}",
                req.method(),
                req.uri().path()
            ))
        })
        .with_state(core)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "Os": "linux",
    }))
}

async fn networks_list(State(c): State<Shared>, Query(q): Q) -> Result<Response, ApiError> {
    let filters = q.get("filters").cloned();
    let v = call(&c, move |c| c.list_networks(filters.as_deref())).await?;
    Ok(Json(v).into_response())
}

async fn networks_inspect(
    State(c): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = call(&c, move |c| c.inspect_network(&id)).await?;
    Ok(Json(v).into_response())
}

async fn networks_create(State(c): State<Shared>, b: Bytes) -> Result<Response, ApiError> {
    let req: NetworkCreate = body(&b)?;
    let v = call(&c, move |c| c.create_network(req)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn networks_delete(
    State(c): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    call(&c, move |c| c.remove_network(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn networks_prune(State(c): State<Shared>) -> Result<Response, ApiError> {
    let v = call(&c, |c| c.prune_networks()).await?;
    Ok(Json(v).into_response())
}

async fn networks_connect(
    State(c): State<Shared>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let req: NetworkConnect = body(&b)?;
    call(&c, move |c| c.connect(&id, req)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn networks_disconnect(
    State(c): State<Shared>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let req: NetworkDisconnect = body(&b)?;
    call(&c, move |c| c.disconnect(&id, req)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn containers_list(State(c): State<Shared>, Query(q): Q) -> Result<Response, ApiError> {
    let all = flag(&q, "all");
    let v = call(&c, move |c| Ok(c.list_containers(all))).await?;
    Ok(Json(v).into_response())
}

async fn containers_create(
    State(c): State<Shared>,
    Query(q): Q,
    b: Bytes,
) -> Result<Response, ApiError> {
    let mut req: ContainerCreate = body(&b)?;
    if let Some(n) = q.get("name") {
        req.name = Some(n.clone());
    }
    let v = call(&c, move |c| c.create_container(req)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn containers_inspect(
    State(c): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = call(&c, move |c| c.inspect_container(&id)).await?;
    Ok(Json(v).into_response())
}

async fn containers_start(
    State(c): State<Shared>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let req: ContainerStart = body(&b)?;
    call(&c, move |c| c.start_container(&id, req.pid)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn containers_stop(
    State(c): State<Shared>,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    let t = q.get("t").and_then(|t| t.parse::<u64>().ok()).unwrap_or(10);
    super::containers::stop(&c, id, t).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn containers_exited(
    State(c): State<Shared>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let req: ContainerExited = body(&b)?;
    call(&c, move |c| c.report_exit(&id, req.exit_code)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn containers_logs(
    State(c): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = call(&c, move |c| c.container_logs(&id)).await?;
    Ok(v.into_response())
}

async fn containers_delete(
    State(c): State<Shared>,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    let force = flag(&q, "force");
    super::containers::remove(&c, id, force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn tapnet_attach(State(c): State<Shared>, b: Bytes) -> Result<Response, ApiError> {
    let req: AttachRequest = body(&b)?;
    let v = call(&c, move |c| c.attach(req)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /tapnet/conntrack/stats`: the table's gauges and counters.
async fn tapnet_conntrack_stats(State(c): State<Shared>) -> Result<Response, ApiError> {
    let v = call(&c, move |c| Ok(c.dp.conntrack_stats())).await?;
    Ok(Json(v).into_response())
}

/// `GET /tapnet/conntrack[?container=C]`.
async fn tapnet_conntrack(State(c): State<Shared>, Query(q): Q) -> Result<Response, ApiError> {
    let container = q.get("container").cloned();
    let v = call(&c, move |c| c.conntrack(container.as_deref())).await?;
    Ok(Json(v).into_response())
}

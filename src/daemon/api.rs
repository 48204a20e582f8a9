//! HTTP routes (Docker Engine API paths; an optional `/vX.Y` prefix is
//! checked and stripped before routing). Bodies are parsed here so that a
//! malformed body is a 400 with Docker's `{"message": ...}`.
//!
//! This is the only place that knows HTTP statuses: each domain error
//! variant gets its status in the `*_status` functions below.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use super::error::*;
use super::types::*;
use super::{call, Shared};
use crate::drivers::DriverError;

/// The Docker Engine API version this daemon speaks (`GET /version`'s
/// `ApiVersion`, the newest `/v1.NN` prefix it serves).
pub const API_VERSION: &str = "1.43";
/// The oldest Docker Engine API version it serves (older `/vX.Y/`
/// prefixes are refused).
pub const MIN_API_VERSION: &str = "1.24";

type Q = Query<HashMap<String, String>>;

/// An error answer: an HTTP status and Docker's `{"message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                message: self.message,
            }),
        )
            .into_response()
    }
}

fn lookup_status(e: &LookupError) -> StatusCode {
    match e {
        LookupError::Network(_) | LookupError::Container(_) => StatusCode::NOT_FOUND,
        LookupError::Ambiguous { .. } => StatusCode::BAD_REQUEST,
    }
}

fn driver_status(e: &DriverError) -> StatusCode {
    match e {
        DriverError::Unknown(_) => StatusCode::NOT_FOUND,
        DriverError::OnlyOne(_) | DriverError::DockerOnly => StatusCode::FORBIDDEN,
        DriverError::BridgeNameInUse { .. } => StatusCode::CONFLICT,
        DriverError::NotYet(_)
        | DriverError::BadOption { .. }
        | DriverError::UnknownOption { .. }
        | DriverError::DockerRequest(_)
        | DriverError::Reserved(_)
        | DriverError::IpamDriver(_)
        | DriverError::Ipv6(_)
        | DriverError::Ipv6NotEnabled(_)
        | DriverError::Ipv6SubnetNeeded(_)
        | DriverError::OneSubnet6
        | DriverError::Ipv6Mtu(_)
        | DriverError::Ipam6(_)
        | DriverError::Overlap6 { .. }
        | DriverError::OneSubnet
        | DriverError::Ingress
        | DriverError::Ipam(_)
        | DriverError::Overlap { .. }
        | DriverError::Segment(_) => StatusCode::BAD_REQUEST,
    }
}

fn network_status(e: &NetworkError) -> StatusCode {
    match e {
        NetworkError::Lookup(l) => lookup_status(l),
        NetworkError::Driver(d) => driver_status(d),
        NetworkError::Filter(_) | NetworkError::InvalidName(_) => StatusCode::BAD_REQUEST,
        NetworkError::NameInUse(_) => StatusCode::CONFLICT,
        NetworkError::Predefined { .. }
        | NetworkError::ActiveEndpoints { .. }
        | NetworkError::DockerOwned { .. } => StatusCode::FORBIDDEN,
        NetworkError::Cluster(c) => cluster_status(c),
        NetworkError::Dataplane { .. } | NetworkError::Store(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

fn cluster_status(e: &crate::cluster::ClusterError) -> StatusCode {
    use crate::cluster::ClusterError as C;
    match e {
        C::NotConfigured | C::BadUrl(_) | C::BadOpt(..) => StatusCode::BAD_REQUEST,
        C::NameInUse(_) | C::VniInUse(_) | C::AddrInUse(_) | C::Addr6InUse(_) => {
            StatusCode::CONFLICT
        }
        C::InUse { .. } => StatusCode::FORBIDDEN,
        C::Exhausted | C::Exhausted6 | C::NoVni => StatusCode::BAD_REQUEST,
        C::Unreachable { .. } | C::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        C::Read { .. } | C::Etcd(_) | C::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn endpoint_status(e: &EndpointError) -> StatusCode {
    match e {
        EndpointError::Lookup(l) => lookup_status(l),
        EndpointError::Cluster(c) => cluster_status(c),
        EndpointError::NotAttachable(_) => StatusCode::FORBIDDEN,
        EndpointError::AddrInUse { .. }
        | EndpointError::Addr6InUse { .. }
        | EndpointError::GatewayMac { .. }
        | EndpointError::MacInUse { .. } => StatusCode::CONFLICT,
        EndpointError::NoPool(_)
        | EndpointError::Ipam { .. }
        | EndpointError::Ipam6 { .. }
        | EndpointError::NoIpv6(_)
        | EndpointError::BadAddress6(_)
        | EndpointError::BadAddress(_)
        | EndpointError::BadMac(_)
        | EndpointError::BadAlias(_)
        | EndpointError::IpOnDefaultBridge
        | EndpointError::AliasOnDefaultBridge
        | EndpointError::NotSwitched { .. }
        | EndpointError::GivenTwice(_) => StatusCode::BAD_REQUEST,
        EndpointError::Interfaces { .. }
        | EndpointError::Dataplane { .. }
        | EndpointError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn port_status(e: &PortError) -> StatusCode {
    match e {
        PortError::Parse(_) | PortError::NotHostAddress { .. } | PortError::TooMany { .. } => {
            StatusCode::BAD_REQUEST
        }
        PortError::Taken { .. } | PortError::RangeTaken { .. } => StatusCode::CONFLICT,
        PortError::Privileged { .. } => StatusCode::FORBIDDEN,
        PortError::Bind { .. } | PortError::Publish { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn container_status(e: &ContainerError) -> StatusCode {
    use ContainerError as E;
    match e {
        E::Lookup(l) => lookup_status(l),
        E::Endpoint(x) => endpoint_status(x),
        E::Port(x) => port_status(x),
        E::NameInUse { .. } | E::JoinNotRunning(_) | E::NotCreated { .. } | E::Running(_) => {
            StatusCode::CONFLICT
        }
        E::CannotConnect { .. } | E::AlreadyConnected { .. } => StatusCode::FORBIDDEN,
        E::InvalidName(_)
        | E::InvalidHostname(_)
        | E::InvalidDns(_)
        | E::InvalidEnv(_)
        | E::NoCommand
        | E::LinkTarget(_)
        | E::LinkNotRunning(_)
        | E::InvalidMode(_)
        | E::ModeWithNetworks(_)
        | E::ModeWithPorts(_)
        | E::NoProcess(_)
        | E::NoNamespace(_)
        | E::AttachTarget
        | E::NotConnected { .. } => StatusCode::BAD_REQUEST,
        E::DeleteInterface { .. }
        | E::Gwbridge(_)
        | E::Files { .. }
        | E::Logs { .. }
        | E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> ApiError {
        ApiError::new(network_status(&e), e.to_string())
    }
}

impl From<ContainerError> for ApiError {
    fn from(e: ContainerError) -> ApiError {
        ApiError::new(container_status(&e), e.to_string())
    }
}

/// Parses a request body: empty means the defaults; anything else must be
/// one JSON object of the expected shape.
fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    let v: serde_json::Value =
        serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad(
            "invalid JSON body: the body must be a JSON object",
        ));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k)
        .map(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE"))
        .unwrap_or(false)
}

/// Compares two dotted version strings component by component as
/// numbers of any size (`1.9 < 1.10`, `99999999999999999999.1 > 1.43`).
fn cmp_version(a: &str, b: &str) -> std::cmp::Ordering {
    let num = |s: &str| {
        let t = s.trim_start_matches('0');
        (t.len(), t.to_string())
    };
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (p, q) => {
                let o = num(p.unwrap_or("0")).cmp(&num(q.unwrap_or("0")));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Why a client's API version is refused (Docker's words), if it is.
pub fn version_error(v: &str) -> Option<String> {
    if cmp_version(v, API_VERSION).is_gt() {
        return Some(format!(
            "client version {v} is too new. Maximum supported API version is {API_VERSION}"
        ));
    }
    if cmp_version(v, MIN_API_VERSION).is_lt() {
        return Some(format!(
            "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        ));
    }
    None
}

/// Before routing, when `versioned` (the API socket, not the plugin's):
/// strips a `/vX.Y` prefix, answering 400 when the version is outside
/// [`MIN_API_VERSION`]..=[`API_VERSION`] (as dockerd).
pub async fn version_gate(
    State(versioned): State<bool>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    if !versioned {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(slash) = rest.find('/') {
            let ver = &rest[..slash];
            if !ver.is_empty()
                && ver.starts_with(|c: char| c.is_ascii_digit())
                && ver.chars().all(|c| c.is_ascii_digit() || c == '.')
            {
                if let Some(m) = version_error(ver) {
                    return ApiError::bad(m).into_response();
                }
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
    next.run(req).await
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
        .route("/tapnet/cluster", get(tapnet_cluster))
        .route("/tapnet/capture", get(tapnet_capture))
        .route("/tapnet/capture/{id}", delete(tapnet_capture_stop))
        .route("/tapnet/stats", get(tapnet_stats))
        .fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("page not found: {} {}", req.method(), req.uri().path()),
            )
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} is not allowed on {}",
                    req.method(),
                    req.uri().path()
                ),
            )
        })
        .with_state(core)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
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

async fn networks_prune(State(c): State<Shared>, Query(q): Q) -> Result<Response, ApiError> {
    let filters = q.get("filters").cloned();
    let v = call(&c, move |c| c.prune_networks(filters.as_deref())).await?;
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
    let v = call(&c, move |c| Ok::<_, ContainerError>(c.list_containers(all))).await?;
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
    let v = call(&c, move |c| Ok::<_, ContainerError>(c.dp.conntrack_stats())).await?;
    Ok(Json(v).into_response())
}

/// `GET /tapnet/conntrack[?container=C]`.
async fn tapnet_conntrack(State(c): State<Shared>, Query(q): Q) -> Result<Response, ApiError> {
    let container = q.get("container").cloned();
    let v = call(&c, move |c| c.conntrack(container.as_deref())).await?;
    Ok(Json(v).into_response())
}

/// `GET /tapnet/cluster`: this host in the cluster (404 when the daemon
/// has no cluster store).
async fn tapnet_cluster(State(c): State<Shared>) -> Result<Response, ApiError> {
    let v = call(&c, |c| {
        c.cluster_status()
            .ok_or_else(|| NetworkError::Cluster(crate::cluster::ClusterError::NotConfigured))
    })
    .await?;
    Ok(Json(v).into_response())
}

fn observe_status(e: &super::observe::ObserveError) -> StatusCode {
    use super::observe::ObserveError as O;
    match e {
        O::Lookup(l) => lookup_status(l),
        O::NoCapture(_) => StatusCode::NOT_FOUND,
        O::Filter { .. } | O::Value { .. } | O::InterfaceAlone | O::Both | O::NotSwitched(_) => {
            StatusCode::BAD_REQUEST
        }
    }
}

impl From<super::observe::ObserveError> for ApiError {
    fn from(e: super::observe::ObserveError) -> ApiError {
        ApiError::new(observe_status(&e), e.to_string())
    }
}

/// The header naming a capture, for `DELETE /tapnet/capture/{id}`.
pub const CAPTURE_ID_HEADER: &str = "tapnet-capture-id";

/// `GET /tapnet/capture?network=&container=&interface=&drops=1&snaplen=&count=&filter=`:
/// a pcapng stream (chunked) until `count` frames, a stop or the client
/// going away. The header `Tapnet-Capture-Id` names it for
/// `DELETE /tapnet/capture/{id}`.
async fn tapnet_capture(State(c): State<Shared>, Query(q): Q) -> Result<Response, ApiError> {
    let get = |k: &str| q.get(k).cloned();
    let req = super::observe::CaptureRequest {
        network: get("network"),
        container: get("container"),
        interface: get("interface"),
        drops: flag(&q, "drops"),
        snaplen: get("snaplen"),
        count: get("count"),
        filter: get("filter"),
    };
    let (spec, hub) = call(&c, move |c| {
        c.capture_spec(req).map(|s| (s, c.dp.capture().clone()))
    })
    .await?;
    let started = hub.start(spec);
    let id = started.session.id;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let spawned = std::thread::Builder::new()
        .name(format!("tapnet-capture-{id}"))
        .spawn(move || {
            let s = crate::dataplane::capture::run_reader(&hub, started, tx);
            tracing::info!(
                "capture {id}: {} frames, {} lost by the capture{}",
                s.captured,
                s.lost,
                if s.client_gone { ", client gone" } else { "" }
            );
        });
    if let Err(e) = spawned {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start the capture's thread: {e}"),
        ));
    }
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-pcapng".to_string(),
            ),
            (
                axum::http::HeaderName::from_static(CAPTURE_ID_HEADER),
                id.to_string(),
            ),
        ],
        axum::body::Body::new(ChannelBody(rx)),
    )
        .into_response())
}

/// A response body fed by a channel of chunks (ends when the sender does).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// `DELETE /tapnet/capture/{id}`: ends a capture; its stream finishes
/// with the statistics blocks.
async fn tapnet_capture_stop(
    State(c): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad(format!("invalid capture id {id:?}")))?;
    call(&c, move |c| c.capture_stop(id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /tapnet/stats[?container=C|network=N]`.
async fn tapnet_stats(State(c): State<Shared>, Query(q): Q) -> Result<Response, ApiError> {
    let container = q.get("container").cloned();
    let network = q.get("network").cloned();
    let v = stats(&c, container, network).await?;
    Ok(Json(v).into_response())
}

/// The counters of `tapnet stats` and `/metrics`: read under the core's
/// lock, then the ports' ring drops without it.
async fn stats(
    c: &Shared,
    container: Option<String>,
    network: Option<String>,
) -> Result<super::observe::Stats, ApiError> {
    let (mut s, dp) = call(c, move |c| {
        c.stats(container.as_deref(), network.as_deref())
            .map(|s| (s, c.dp.clone()))
    })
    .await?;
    match tokio::task::spawn_blocking(move || {
        s.read_ring_drops(&dp);
        s
    })
    .await
    {
        Ok(s) => Ok(s),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The Prometheus endpoint (`tapnet daemon --metrics-addr`): `GET
/// /metrics` only.
pub fn metrics_router(core: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(core)
}

async fn metrics(State(c): State<Shared>) -> Result<Response, ApiError> {
    let s = stats(&c, None, None).await?;
    let text = super::observe::encode_metrics(&s);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_error("1.43").is_none());
        assert!(version_error("1.41").is_none());
        assert!(version_error("1.24").is_none());
        assert!(version_error("1.99").unwrap().contains("too new"));
        assert!(version_error("1.100").unwrap().contains("too new"));
        assert!(version_error("99999999999999999999.1")
            .unwrap()
            .contains("too new"));
        assert!(version_error("0.1").unwrap().contains("too old"));
        assert!(version_error("1.9").unwrap().contains("too old"));
        assert!(version_error("1.043").is_none());
    }
}

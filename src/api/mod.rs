//! The management API (axum, JSON): targets, LUNs, portal groups, sessions, statistics,
//! `/metrics` and the OpenAPI document. Every change goes through [`Manager::change`], so it is
//! validated, applied to the running target and persisted in one step.

pub mod client;
mod config_file;
mod doc;
pub mod manager;
pub mod metrics;
pub mod paths;
mod snapshots;
pub mod tls;
pub mod token;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{self, get, post, put};
use axum::{Json, Router};

pub use manager::{ChangeError, Manager, write_atomically};
use snapshots::{create_snapshot, delete_snapshot, list_snapshots};

use crate::config::{LunConfig, PortalGroupConfig, Size, TargetConfig};
use crate::server::Control;
pub use doc::openapi as openapi_document;
use types::*;

/// An API error: a status and a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        let status = match &e {
            ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
            ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
            ChangeError::Conflict(_) => StatusCode::CONFLICT,
            ChangeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, what)
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Clone)]
struct Api {
    manager: Arc<Manager>,
    token: Option<Arc<str>>,
    hosts: AllowedHosts,
}

/// The API's routes.
/// Host header values a browser may send to this API: loopback names, and `allowed` ones.
/// Anything else is refused, so that a web page cannot reach the API through a DNS name it
/// controls (DNS rebinding).
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Arc<Vec<String>>);

impl AllowedHosts {
    pub fn new(allowed: &[String]) -> AllowedHosts {
        AllowedHosts(Arc::new(allowed.iter().map(|h| h.to_lowercase()).collect()))
    }

    /// Whether a Host header (with or without its port) is one of ours.
    pub fn admits(&self, host: &str) -> bool {
        let host = host.trim().to_lowercase();
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host.as_str(), |(name, _)| name),
        };
        let loopback = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        loopback || self.0.iter().any(|h| *h == host || *h == name)
    }
}

pub fn router(manager: Arc<Manager>, token: Option<String>, hosts: AllowedHosts) -> Router {
    let api = Api { manager, token: token.map(Arc::from), hosts };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/version", get(version))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/config", get(show_config))
        .route("/v1/reload", post(reload))
        .route("/v1/targets", get(list_targets).post(create_target))
        .route("/v1/targets/{name}", get(show_target).delete(delete_target))
        .route("/v1/targets/{name}/portal-groups", put(bind_portal_groups))
        .route("/v1/targets/{name}/auth", put(set_auth))
        .route("/v1/targets/{name}/acl", put(set_acl))
        .route("/v1/targets/{name}/luns", get(list_luns).post(create_lun))
        .route("/v1/targets/{name}/luns/{lun}", get(show_lun).delete(delete_lun))
        .route("/v1/targets/{name}/luns/{lun}/grow", post(grow_lun))
        .route("/v1/targets/{name}/luns/{lun}/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/v1/targets/{name}/luns/{lun}/snapshots/{snapshot}", routing::delete(delete_snapshot))
        .route("/v1/portal-groups", get(list_portal_groups).post(create_portal_group))
        .route("/v1/portal-groups/{tag}", get(show_portal_group).delete(delete_portal_group))
        .route("/v1/portal-groups/{tag}/portals", post(add_portal))
        .route("/v1/portal-groups/{tag}/portals/{portal}", axum::routing::delete(remove_portal))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{tsih}", get(show_session).delete(logout_session))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(prometheus))
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api)
}

/// Serves the API on `addr` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    manager: Arc<Manager>,
    token: Option<String>,
    hosts: AllowedHosts,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let router = router(manager, token, hosts);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(API_CONNECTIONS_MAX));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "API connection refused: {API_CONNECTIONS_MAX} open already");
            continue;
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                Some(acceptor) => {
                    if let Some(tls) = tls::handshake(&acceptor, socket, peer).await {
                        serve_http(tls, router).await;
                    }
                }
                None => serve_http(socket, router).await,
            }
        });
    }
}

/// Connections the API serves at once; one more is closed as it comes, so that clients of the
/// API (a token is not needed to connect) cannot take the file descriptors the portals need
/// (seen: 20,000 half-sent requests, and the portals' accepts failed).
const API_CONNECTIONS_MAX: usize = 128;

/// How long a request's header may take to arrive: a client sending one a byte at a time
/// does not hold its connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_http<S>(io: S, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// Binds the API, refusing a non-loopback address without a token.
pub async fn bind(addr: SocketAddr, token: Option<&str>) -> Result<tokio::net::TcpListener, String> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "api.listen: {addr} is not a loopback address; set api.token (or RTGT_API_TOKEN) to expose the API"
        ));
    }
    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("api.listen: cannot listen on {addr}: {e}"))
}

async fn authorize(State(api): State<Api>, req: Request, next: Next) -> Response {
    // HTTP/2 names the host in the request's authority, not in a Host header.
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string).or(authority);
    let host = host.as_deref();
    if let Some(host) = host
        && !api.hosts.admits(host)
    {
        return ApiError(StatusCode::FORBIDDEN, format!("Host {host:?} is not this API's (api.allowed_hosts)"))
            .into_response();
    }
    // Liveness probes need no token.
    if req.uri().path() == "/v1/health" {
        return next.run(req).await;
    }
    if let Some(token) = &api.token {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let ok = given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|t| token_matches(t, token));
        if !ok {
            return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
        }
    }
    next.run(req).await
}

/// The bearer token compared in constant time (subtle: no early exit a timing could reveal).
fn token_matches(given: &str, token: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes()).into()
}

#[utoipa::path(get, path = "/v1/health", tag = "server", summary = "Liveness of the management API",
    security(()), responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

#[utoipa::path(get, path = "/v1/version", tag = "server", summary = "Name and version",
    responses((status = 200, body = Version)))]
async fn version() -> Json<Version> {
    Json(Version { name: "rtgt".into(), version: env!("CARGO_PKG_VERSION").into() })
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "server", summary = "This document",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc::json()).into_response()
}

#[utoipa::path(get, path = "/v1/config", tag = "server", summary = "The running configuration as TOML (secrets hidden)",
    responses((status = 200, body = String, content_type = "text/plain")))]
async fn show_config(State(api): State<Api>) -> String {
    let mut config = api.manager.config().await;
    config.api.token = config.api.token.map(|_| "(hidden)".into());
    for l in config.targets.iter_mut().flat_map(|t| &mut t.luns) {
        l.secret_access_key = l.secret_access_key.take().map(|_| "(hidden)".into());
    }
    let hide = |chap: &mut Option<crate::config::ChapConfig>| {
        if let Some(c) = chap {
            c.secret = "(hidden)".into();
            c.mutual_secret = c.mutual_secret.take().map(|_| "(hidden)".into());
        }
    };
    hide(&mut config.discovery_chap);
    config.targets.iter_mut().for_each(|t| hide(&mut t.chap));
    config.to_toml()
}

#[utoipa::path(post, path = "/v1/reload", tag = "server",
    summary = "Re-read the configuration file and apply what changed (like SIGHUP)",
    responses((status = 200, body = Reloaded), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn reload(State(api): State<Api>) -> ApiResult<Json<Reloaded>> {
    api.manager.reload().await?;
    Ok(Json(Reloaded { reloaded: true }))
}

// ---------------------------------------------------------------- targets

fn target_view(api: &Api, t: &TargetConfig, groups: &[PortalGroupConfig]) -> TargetView {
    TargetView {
        name: t.name.clone(),
        alias: t.alias.clone(),
        portal_groups: t.portal_groups.clone().unwrap_or_else(|| groups.iter().map(|g| g.tag).collect()),
        luns: t.luns.iter().map(|l| lun_view(api, &t.name, l)).collect(),
        sessions: api.manager.sessions_of(&t.name).len(),
        allowed_initiators: t.allowed_initiators.clone(),
        allowed_addresses: t.allowed_addresses.clone(),
        reset_initiators: t.reset_initiators.clone(),
        // CHAP secrets are never returned.
        chap_user: t.chap.as_ref().map(|c| c.user.clone()),
    }
}

fn lun_view(api: &Api, target: &str, l: &LunConfig) -> LunView {
    let lu = api.manager.registry.target(target).and_then(|t| t.scsi.lun(l.lun));
    LunView {
        lun: l.lun,
        backend: l.backend.clone(),
        size: lu.as_ref().map(|lu| lu.num_blocks() * lu.block_size() as u64),
        block_size: lu.as_ref().map(|lu| lu.block_size()),
        store: lu.as_ref().map(|lu| lu.store().describe()),
        config: LunConfig { secret_access_key: None, ..l.clone() },
    }
}

#[utoipa::path(get, path = "/v1/targets", tag = "targets", summary = "List targets with their LUNs and session counts",
    responses((status = 200, body = Vec<TargetView>)))]
async fn list_targets(State(api): State<Api>) -> Json<Vec<TargetView>> {
    let c = api.manager.config().await;
    Json(c.targets.iter().map(|t| target_view(&api, t, &c.portal_groups)).collect())
}

#[utoipa::path(get, path = "/v1/targets/{name}", tag = "targets", summary = "Show a target", params(TargetName),
    responses((status = 200, body = TargetView), (status = 404, body = ErrorBody)))]
async fn show_target(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<TargetView>> {
    let c = api.manager.config().await;
    let t = c.targets.iter().find(|t| t.name == name).ok_or_else(|| not_found(format!("no target {name}")))?;
    Ok(Json(target_view(&api, t, &c.portal_groups)))
}

fn bad_json(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.body_text())
}

/// A JSON body, or the reason it is not one of ours (400).
type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

#[utoipa::path(post, path = "/v1/targets", tag = "targets", summary = "Create a target", request_body = NewTarget,
    responses((status = 201, body = TargetView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn create_target(State(api): State<Api>, body: Body<NewTarget>) -> ApiResult<(StatusCode, Json<TargetView>)> {
    let Json(new) = body.map_err(bad_json)?;
    crate::config::validate_iscsi_name(&new.name)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("name: {e}")))?;
    let name = new.name.clone();
    api.manager
        .change(|c| {
            if c.targets.iter().any(|t| t.name == new.name) {
                return Err(ChangeError::Conflict(format!("name: target {} already exists", new.name)));
            }
            c.targets.push(TargetConfig {
                alias: new.alias,
                portal_groups: new.portal_groups,
                ..TargetConfig::new(&new.name)
            });
            Ok(())
        })
        .await?;
    show_target(State(api), Path(name)).await.map(|j| (StatusCode::CREATED, j))
}

#[utoipa::path(delete, path = "/v1/targets/{name}", tag = "targets",
    summary = "Delete a target (refused while sessions are logged in unless force=true, which closes them first)",
    params(TargetName, Force),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn delete_target(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<Force>,
) -> ApiResult<StatusCode> {
    let sessions = api.manager.sessions_of(&name).len();
    api.manager
        .change(|c| {
            if !c.targets.iter().any(|t| t.name == name) {
                return Err(ChangeError::NotFound(format!("no target {name}")));
            }
            if sessions > 0 && !q.force {
                return Err(ChangeError::Conflict(format!(
                    "target {name} has {sessions} session(s) logged in; log them out first or pass force=true"
                )));
            }
            c.targets.retain(|t| t.name != name);
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/targets/{name}/portal-groups", tag = "targets",
    summary = "Bind the target to these portal groups", params(TargetName), request_body = PortalGroupBinding,
    responses((status = 200, body = TargetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn bind_portal_groups(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Body<PortalGroupBinding>,
) -> ApiResult<Json<TargetView>> {
    let Json(b) = body.map_err(bad_json)?;
    edit_target(api, name, |t| t.portal_groups = Some(b.portal_groups)).await
}

#[utoipa::path(put, path = "/v1/targets/{name}/auth", tag = "targets",
    summary = "Require CHAP of the target's initiators ({\"chap\": null}: none); secrets are never returned",
    params(TargetName), request_body = AuthChange,
    responses((status = 200, body = TargetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn set_auth(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Body<AuthChange>,
) -> ApiResult<Json<TargetView>> {
    let Json(b) = body.map_err(bad_json)?;
    if let Some(chap) = &b.chap {
        // The secrets themselves: an env: or file: spec would be read on the target's host,
        // and the answer would tell its caller what is there (a file's length, a variable).
        for (what, spec) in [("secret", Some(&chap.secret)), ("mutual_secret", chap.mutual_secret.as_ref())] {
            if spec.is_some_and(|s| s.starts_with("env:") || s.starts_with("file:")) {
                let why =
                    format!("chap.{what}: give the secret itself (env: and file: are for the configuration file)");
                return Err(ApiError(StatusCode::BAD_REQUEST, why));
            }
        }
        chap.resolve().map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("chap.{e}")))?;
    }
    edit_target(api, name, |t| t.chap = b.chap).await
}

#[utoipa::path(put, path = "/v1/targets/{name}/acl", tag = "targets",
    summary = "Set who may log in to the target (a list left out or null: anyone)", params(TargetName),
    request_body = AclChange,
    responses((status = 200, body = TargetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn set_acl(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Body<AclChange>,
) -> ApiResult<Json<TargetView>> {
    let Json(b) = body.map_err(bad_json)?;
    edit_target(api, name, |t| {
        t.allowed_initiators = b.allowed_initiators;
        t.allowed_addresses = b.allowed_addresses;
        t.reset_initiators = b.reset_initiators;
    })
    .await
}

/// Changes target `name` in the configuration (applied and saved), and answers with the target
/// as it is now.
async fn edit_target(api: Api, name: String, edit: impl FnOnce(&mut TargetConfig)) -> ApiResult<Json<TargetView>> {
    api.manager.change(|c| target_mut(c, &name).map(edit)).await?;
    show_target(State(api), Path(name)).await
}

fn target_mut<'a>(c: &'a mut crate::config::Config, name: &str) -> Result<&'a mut TargetConfig, ChangeError> {
    c.targets.iter_mut().find(|t| t.name == name).ok_or_else(|| ChangeError::NotFound(format!("no target {name}")))
}

// ---------------------------------------------------------------- LUNs

#[utoipa::path(get, path = "/v1/targets/{name}/luns", tag = "luns", summary = "List the LUNs of a target",
    params(TargetName), responses((status = 200, body = Vec<LunView>), (status = 404, body = ErrorBody)))]
async fn list_luns(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Vec<LunView>>> {
    let c = api.manager.config().await;
    let t = c.targets.iter().find(|t| t.name == name).ok_or_else(|| not_found(format!("no target {name}")))?;
    Ok(Json(t.luns.iter().map(|l| lun_view(&api, &name, l)).collect()))
}

#[utoipa::path(get, path = "/v1/targets/{name}/luns/{lun}", tag = "luns", summary = "Show a LUN",
    params(TargetName, LunNumber), responses((status = 200, body = LunView), (status = 404, body = ErrorBody)))]
async fn show_lun(State(api): State<Api>, Path((name, lun)): Path<(String, u16)>) -> ApiResult<Json<LunView>> {
    let c = api.manager.config().await;
    let t = c.targets.iter().find(|t| t.name == name).ok_or_else(|| not_found(format!("no target {name}")))?;
    let l = t.luns.iter().find(|l| l.lun == lun).ok_or_else(|| not_found(format!("target {name} has no LUN {lun}")))?;
    Ok(Json(lun_view(&api, &name, l)))
}

#[utoipa::path(post, path = "/v1/targets/{name}/luns", tag = "luns",
    summary = "Create a LUN (memory, file, uring, null, s3; an S3 volume is created when create=true)",
    params(TargetName), request_body = LunConfig,
    responses((status = 201, body = LunView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn create_lun(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Body<LunConfig>,
) -> ApiResult<(StatusCode, Json<LunView>)> {
    let Json(l) = body.map_err(bad_json)?;
    let lun = l.lun;
    api.manager
        .change(|c| {
            // Every path the target would open for this LUN, not only its backing.
            let places = [("path", &l.path), ("cache_dir", &l.cache_dir)]
                .into_iter()
                .chain([("encryption_key_file", &l.encryption_key_file)])
                .chain([("encryption_passphrase_file", &l.encryption_passphrase_file)]);
            for (field, path) in places {
                if let Some(path) = path {
                    paths::check_lun_path(path, &c.data_dir(), &c.server.allowed_paths)
                        .map_err(|e| ChangeError::Invalid(e.replacen("path:", &format!("{field}:"), 1)))?;
                }
            }
            let t = target_mut(c, &name)?;
            if t.luns.iter().any(|x| x.lun == l.lun) {
                return Err(ChangeError::Conflict(format!("lun: target {name} already has LUN {}", l.lun)));
            }
            t.luns.push(l);
            Ok(())
        })
        .await?;
    show_lun(State(api), Path((name, lun))).await.map(|j| (StatusCode::CREATED, j))
}

#[utoipa::path(delete, path = "/v1/targets/{name}/luns/{lun}", tag = "luns",
    summary = "Delete a LUN (its cache is flushed first)", params(TargetName, LunNumber),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn delete_lun(State(api): State<Api>, Path((name, lun)): Path<(String, u16)>) -> ApiResult<StatusCode> {
    api.manager
        .change(|c| {
            let t = target_mut(c, &name)?;
            if !t.luns.iter().any(|l| l.lun == lun) {
                return Err(ChangeError::NotFound(format!("target {name} has no LUN {lun}")));
            }
            t.luns.retain(|l| l.lun != lun);
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/targets/{name}/luns/{lun}/grow", tag = "luns",
    summary = "Grow a LUN; initiators get CAPACITY DATA HAS CHANGED", params(TargetName, LunNumber),
    request_body = Grow,
    responses((status = 200, body = LunView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn grow_lun(
    State(api): State<Api>,
    Path((name, lun)): Path<(String, u16)>,
    body: Body<Grow>,
) -> ApiResult<Json<LunView>> {
    let Json(g) = body.map_err(bad_json)?;
    let current = api
        .manager
        .registry
        .target(&name)
        .and_then(|t| t.scsi.lun(lun))
        .map(|lu| lu.num_blocks() * lu.block_size() as u64)
        .ok_or_else(|| not_found(format!("target {name} has no LUN {lun}")))?;
    if g.size.0 < current {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("size: {} is smaller than the current {}; LUNs only grow", g.size, Size(current)),
        ));
    }
    api.manager
        .change(|c| {
            let t = target_mut(c, &name)?;
            let l = t
                .luns
                .iter_mut()
                .find(|l| l.lun == lun)
                .ok_or_else(|| ChangeError::NotFound(format!("target {name} has no LUN {lun}")))?;
            l.size = Some(g.size);
            Ok(())
        })
        .await?;
    show_lun(State(api), Path((name, lun))).await
}

// ---------------------------------------------------------------- portal groups

fn portal_group_view(api: &Api, pg: &PortalGroupConfig) -> PortalGroupView {
    let bound = api.manager.registry.portal_groups().remove(&pg.tag).unwrap_or_default();
    PortalGroupView {
        tag: pg.tag,
        portals: pg.portals.clone(),
        listening: bound.iter().map(|a| a.to_string()).collect(),
    }
}

#[utoipa::path(get, path = "/v1/portal-groups", tag = "portal groups",
    summary = "List portal groups and the addresses they listen on",
    responses((status = 200, body = Vec<PortalGroupView>)))]
async fn list_portal_groups(State(api): State<Api>) -> Json<Vec<PortalGroupView>> {
    let c = api.manager.config().await;
    Json(c.portal_groups.iter().map(|pg| portal_group_view(&api, pg)).collect())
}

#[utoipa::path(get, path = "/v1/portal-groups/{tag}", tag = "portal groups", summary = "Show a portal group",
    params(PortalGroupTag), responses((status = 200, body = PortalGroupView), (status = 404, body = ErrorBody)))]
async fn show_portal_group(State(api): State<Api>, Path(tag): Path<u16>) -> ApiResult<Json<PortalGroupView>> {
    let c = api.manager.config().await;
    let pg =
        c.portal_groups.iter().find(|p| p.tag == tag).ok_or_else(|| not_found(format!("no portal group {tag}")))?;
    Ok(Json(portal_group_view(&api, pg)))
}

#[utoipa::path(post, path = "/v1/portal-groups", tag = "portal groups",
    summary = "Create a portal group and start listening", request_body = PortalGroupConfig,
    responses((status = 201, body = PortalGroupView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn create_portal_group(
    State(api): State<Api>,
    body: Body<PortalGroupConfig>,
) -> ApiResult<(StatusCode, Json<PortalGroupView>)> {
    let Json(pg) = body.map_err(bad_json)?;
    let tag = pg.tag;
    api.manager
        .change(|c| {
            if c.portal_groups.iter().any(|p| p.tag == pg.tag) {
                return Err(ChangeError::Conflict(format!("tag: portal group {} already exists", pg.tag)));
            }
            c.portal_groups.push(pg);
            Ok(())
        })
        .await?;
    show_portal_group(State(api), Path(tag)).await.map(|j| (StatusCode::CREATED, j))
}

#[utoipa::path(delete, path = "/v1/portal-groups/{tag}", tag = "portal groups",
    summary = "Delete a portal group (refused while a target is bound to it)", params(PortalGroupTag),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn delete_portal_group(State(api): State<Api>, Path(tag): Path<u16>) -> ApiResult<StatusCode> {
    api.manager
        .change(|c| {
            if !c.portal_groups.iter().any(|p| p.tag == tag) {
                return Err(ChangeError::NotFound(format!("no portal group {tag}")));
            }
            if let Some(t) = c.targets.iter().find(|t| t.portal_groups.as_ref().is_some_and(|g| g.contains(&tag))) {
                return Err(ChangeError::Conflict(format!("portal group {tag} is bound to target {}", t.name)));
            }
            c.portal_groups.retain(|p| p.tag != tag);
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/portal-groups/{tag}/portals", tag = "portal groups",
    summary = "Add a portal (address) to a group", params(PortalGroupTag), request_body = NewPortal,
    responses((status = 201, body = PortalGroupView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn add_portal(
    State(api): State<Api>,
    Path(tag): Path<u16>,
    body: Body<NewPortal>,
) -> ApiResult<(StatusCode, Json<PortalGroupView>)> {
    let Json(p) = body.map_err(bad_json)?;
    api.manager
        .change(|c| {
            let pg = c
                .portal_groups
                .iter_mut()
                .find(|g| g.tag == tag)
                .ok_or_else(|| ChangeError::NotFound(format!("no portal group {tag}")))?;
            if pg.portals.contains(&p.portal) {
                return Err(ChangeError::Conflict(format!("portal: {} is already in portal group {tag}", p.portal)));
            }
            pg.portals.push(p.portal);
            Ok(())
        })
        .await?;
    show_portal_group(State(api), Path(tag)).await.map(|j| (StatusCode::CREATED, j))
}

#[utoipa::path(delete, path = "/v1/portal-groups/{tag}/portals/{portal}", tag = "portal groups",
    summary = "Remove a portal from a group", params(PortalGroupTag, ("portal" = String, Path, description = "host:port")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_portal(State(api): State<Api>, Path((tag, portal)): Path<(u16, String)>) -> ApiResult<StatusCode> {
    api.manager
        .change(|c| {
            let pg = c
                .portal_groups
                .iter_mut()
                .find(|g| g.tag == tag)
                .ok_or_else(|| ChangeError::NotFound(format!("no portal group {tag}")))?;
            if !pg.portals.contains(&portal) {
                return Err(ChangeError::NotFound(format!("portal group {tag} has no portal {portal}")));
            }
            pg.portals.retain(|p| *p != portal);
            if pg.portals.is_empty() {
                return Err(ChangeError::Conflict(format!(
                    "portal group {tag} would have no portal left; delete the group instead"
                )));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- sessions and statistics

fn session_view(s: &crate::server::registry::SessionEntry) -> SessionView {
    use std::sync::atomic::Ordering::Relaxed;
    SessionView {
        tsih: s.tsih,
        kind: match s.kind {
            crate::iscsi::params::SessionKind::Normal => SessionKind::Normal,
            _ => SessionKind::Discovery,
        },
        initiator: s.initiator_name.clone(),
        isid: format!("{:012x}", s.isid),
        target: s.target.clone(),
        tpgt: s.tpgt,
        connections: vec![ConnectionView { peer: s.peer.to_string(), local: s.local.to_string() }],
        params: s.params.clone(),
        counters: SessionCounters {
            commands: s.stats.commands.load(Relaxed),
            bytes_read: s.stats.bytes_read.load(Relaxed),
            bytes_written: s.stats.bytes_written.load(Relaxed),
        },
    }
}

#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    summary = "List sessions: initiator, ISID, TSIH, addresses, negotiated parameters, counters",
    responses((status = 200, body = Vec<SessionView>)))]
async fn list_sessions(State(api): State<Api>) -> Json<Vec<SessionView>> {
    Json(api.manager.registry.sessions().iter().map(|s| session_view(s)).collect())
}

#[utoipa::path(get, path = "/v1/sessions/{tsih}", tag = "sessions", summary = "Show a session", params(Tsih),
    responses((status = 200, body = SessionView), (status = 404, body = ErrorBody)))]
async fn show_session(State(api): State<Api>, Path(tsih): Path<u16>) -> ApiResult<Json<SessionView>> {
    let s = api.manager.registry.session(tsih).ok_or_else(|| not_found(format!("no session {tsih}")))?;
    Ok(Json(session_view(&s)))
}

#[utoipa::path(delete, path = "/v1/sessions/{tsih}", tag = "sessions",
    summary = "Force a session out (its connection is closed)", params(Tsih),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn logout_session(State(api): State<Api>, Path(tsih): Path<u16>) -> ApiResult<StatusCode> {
    let s = api.manager.registry.session(tsih).ok_or_else(|| not_found(format!("no session {tsih}")))?;
    s.send(Control::Close);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.closed()).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/stats", tag = "statistics",
    summary = "Per-LUN SCSI counters and backend statistics (S3 requests, bytes, dirty cache)",
    responses((status = 200, body = Stats)))]
async fn stats(State(api): State<Api>) -> Json<Stats> {
    let mut luns = Vec::new();
    for t in api.manager.registry.targets() {
        for (lun, lu) in t.scsi.luns() {
            luns.push(LunStats {
                target: t.name.clone(),
                lun,
                store: lu.store().describe(),
                scsi: lu.metrics.snapshot(),
                backend: lu.store().stats(),
            });
        }
    }
    Json(Stats { sessions: api.manager.registry.session_count(), luns })
}

#[utoipa::path(get, path = "/metrics", tag = "statistics", summary = "Prometheus metrics",
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4")))]
async fn prometheus(State(api): State<Api>) -> Response {
    let text = metrics::render(&api.manager.registry);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// ---------------------------------------------------------------- path parameters

/// `{name}`.
#[derive(utoipa::IntoParams)]
#[into_params(names("name"), parameter_in = Path)]
#[allow(dead_code)] // documents the path parameter; axum reads it as a String
struct TargetName(
    /// The target's iSCSI name.
    String,
);

/// `{lun}`.
#[derive(utoipa::IntoParams)]
#[into_params(names("lun"), parameter_in = Path)]
#[allow(dead_code)]
struct LunNumber(
    /// The LUN.
    u16,
);

/// `{tag}`.
#[derive(utoipa::IntoParams)]
#[into_params(names("tag"), parameter_in = Path)]
#[allow(dead_code)]
struct PortalGroupTag(
    /// The portal group's tag (TPGT).
    u16,
);

/// `{tsih}`.
#[derive(utoipa::IntoParams)]
#[into_params(names("tsih"), parameter_in = Path)]
#[allow(dead_code)]
struct Tsih(
    /// The session's TSIH.
    u16,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_must_name_this_machine_or_an_allowed_name() {
        let hosts = AllowedHosts::new(&["rtgt.example.com".to_string()]);
        for ok in ["localhost", "localhost:3261", "127.0.0.1:3261", "[::1]:3261", "RTGT.example.com:3261"] {
            assert!(hosts.admits(ok), "{ok}");
        }
        for bad in ["attacker.example:3261", "127.0.0.1.attacker.example", "10.0.0.1:3261", "[fe80::1]:3261", ""] {
            assert!(!hosts.admits(bad), "{bad}");
        }
    }

    /// The generated OpenAPI document lists every route of the router, and nothing else.
    #[test]
    fn openapi_document_matches_the_router() {
        let doc: serde_json::Value = serde_json::from_str(&doc::json()).expect("the document is JSON");
        let documented: std::collections::BTreeSet<String> =
            doc["paths"].as_object().expect("paths").keys().cloned().collect();
        let source = include_str!("mod.rs");
        let routed: std::collections::BTreeSet<String> =
            source.split(".route(\"").skip(1).filter_map(|s| s.split('"').next()).map(str::to_string).collect();
        assert!(routed.len() >= 15, "routes found: {routed:?}");
        assert_eq!(documented, routed);
    }

    /// Every operation says what it answers on success, and every body it names is described:
    /// the document is generated from the types the handlers and the CLI use.
    #[test]
    fn openapi_document_describes_every_body() {
        let doc: serde_json::Value = serde_json::from_str(&doc::json()).expect("the document is JSON");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "TargetView",
            "LunView",
            "LunConfig",
            "Size",
            "Backend",
            "StoreStats",
            "VolumeStats",
            "Stats",
            "SessionView",
            "Params",
            "PortalGroupView",
            "NewTarget",
            "AclChange",
            "SnapshotSummary",
            "ErrorBody",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}: {:?}", schemas.keys().collect::<Vec<_>>());
        }
        let text = doc.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "{name} is referred to but not described");
        }
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path} documents no success");
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secreT"));
        assert!(!token_matches("secret", "secret2"));
    }
}

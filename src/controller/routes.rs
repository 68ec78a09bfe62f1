//! The controller's HTTP routes: the original's API (kept field for field), ours under
//! `/api/v1/`, and the dashboard page.
//!
//! The original's API answers proxies of the original only when config.yaml lists them under
//! `legacy_proxies` (name and source address): an unsigned `POST /api/register` from anyone
//! else, or for a name with a pinned key, is 403; an unsigned `POST /api/heartbeat` or
//! `GET /api/getendpoints` is answered only from a listed address (signed ones, from our own
//! proxies, are checked against their pinned key). The registry decides; the routes hand it
//! the source address and the signature.
//!
//! Handlers are thin: read and check the request (every bad input becomes a legacy-shaped
//! error), ask the `Registry`, shape the answer. They hold no state of their own.

use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_lab::sse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::InstanceName;
use crate::web::BodyError;
use crate::wire::control_plane::{EndpointTable, KeyReport, RegisterRequest};
use crate::wire::directory::CertificateRequest;
use crate::wire::host_port::is_host;
use crate::wire::legacy::{success, Endpoints, Note, Registered};

use super::dashboard;
use super::error::ControllerError;
use super::registry::{
    AckDirectory, GetEndpoints, Heartbeat, IssueCertificate, IssueToken, Join, ListProxies,
    RecordAudit, RegisterProxy, RegisterSigned, Registry, RemoveProxy, Revoke, Rotate, SignedCall,
    SubscribeDashboard, SubscribeDirectory, SubscribeTable, TrustOverview, UpdateEndpoints,
    SUBSCRIBER_BUFFER,
};
use super::tables::{shown, TablePatch};

/// What every handler shares; it does not change while the server runs.
pub struct AppState {
    pub registry: Addr<Registry>,
    /// The root fingerprint, shown on the dashboard.
    pub root: crate::trust::Fingerprint,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    pub instances: usize,
    pub ai_endpoints: usize,
}

type Reply = Result<HttpResponse, ControllerError>;

/// The routes exempt from the `Host` check: those only proxies call (and anything below
/// them: signed, or answered only to the listed legacy proxies, not browser-facing), and
/// `/metrics`, which makes its own (a loopback caller under an address or localhost only; a
/// bearer of the metrics token under any name: see [`crate::web::metrics::MetricsAccess`]).
pub const NOT_BROWSER_FACING: &[&str] = &[
    "/api/register",
    "/api/heartbeat",
    "/api/getendpoints",
    "/api/v1/join",
    "/api/v1/certificate",
    "/api/v1/register",
    "/api/v1/rotate",
    "/api/v1/directory",
    "/healthz",
    "/metrics",
];

/// The controller's route table, shared by the server and nothing else.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ControllerError::BadRequest(format!("bad path: {e}")).into()),
    )
    .app_data(
        web::QueryConfig::default().error_handler(|e, _| {
            ControllerError::BadRequest(format!("bad query string: {e}")).into()
        }),
    )
    .service(resource("/").route(web::get().to(dashboard_page)))
    .service(
        resource("/login")
            .route(web::get().to(super::admin::login_page))
            .route(web::post().to(super::admin::login)),
    )
    .service(resource("/logout").route(web::post().to(super::admin::logout)))
    .service(resource("/api/register").route(web::post().to(register)))
    .service(resource("/api/getendpoints").route(web::get().to(get_endpoints)))
    .service(resource("/api/heartbeat").route(web::post().to(heartbeat)))
    .service(
        resource("/api/update_proxy_endpoints/{proxy_id}")
            .route(web::post().to(update_proxy_endpoints)),
    )
    .service(resource("/api/remove_proxy/{proxy_id}").route(web::post().to(remove_proxy)))
    .service(resource("/api/v1/proxies").route(web::get().to(list_proxies)))
    .service(resource("/api/v1/proxies/{proxy_id}/table/stream").route(web::get().to(table_stream)))
    .service(resource("/api/v1/dashboard/stream").route(web::get().to(dashboard_stream)))
    .service(resource("/api/v1/join").route(web::post().to(join)))
    .service(resource("/api/v1/certificate").route(web::post().to(certificate)))
    .service(resource("/api/v1/register").route(web::post().to(register_signed)))
    .service(resource("/api/v1/rotate").route(web::post().to(rotate)))
    .service(resource("/api/v1/directory/stream").route(web::get().to(directory_stream)))
    .service(resource("/api/v1/directory/ack").route(web::post().to(directory_ack)))
    .service(
        resource("/api/v1/admin/tokens")
            .route(web::post().to(create_token))
            .route(web::get().to(list_tokens)),
    )
    .service(resource("/api/v1/admin/revoke").route(web::post().to(revoke)))
    .service(resource("/api/v1/admin/trust").route(web::get().to(trust_overview)));
}

/// A resource whose wrong methods answer 405 in the legacy shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|req: HttpRequest| async move {
        Err::<HttpResponse, _>(ControllerError::MethodNotAllowed {
            method: req.method().to_string(),
            path: req.path().to_string(),
        })
    }))
}

/// Any path no route knows: 404 in the legacy shape.
pub async fn no_route(req: HttpRequest) -> Reply {
    Err(ControllerError::NoRoute {
        method: req.method().to_string(),
        path: req.path().to_string(),
    })
}

// ---- reading bodies ----

/// Reads the body (at most `limit` bytes), as UTF-8 JSON, and requires an object.
async fn read_object(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<serde_json::Map<String, Value>, ControllerError> {
    parse_object(&read_body(req, payload, limit).await?)
}

/// Reads the body, at most `limit` bytes, within the body deadline.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ControllerError> {
    crate::web::read_limited(req, payload, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } | BodyError::TooLong { limit, .. } => {
                ControllerError::TooLarge { limit }
            }
            other => ControllerError::BadRequest(other.to_string()),
        })
}

/// Bytes → a JSON object, with a message saying what is wrong.
pub fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ControllerError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ControllerError::BadRequest(format!(
            "request body is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(ControllerError::BadRequest(
            "expected a JSON object body, got an empty body".into(),
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ControllerError::BadRequest(format!(
            "expected a JSON object body, got {}",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        ))),
        Err(e) => Err(ControllerError::BadRequest(format!("invalid JSON: {e}"))),
    }
}

fn absent(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    }
}

fn string_field(
    m: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<String, ControllerError> {
    match m.get(name) {
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.len() > 255 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(ControllerError::BadRequest(format!(
                    "{name} must be at most 255 characters without spaces or control characters"
                )));
            }
            Ok(s.to_string())
        }
        Some(other) => Err(ControllerError::BadRequest(format!(
            "{name} must be a string, got {other}"
        ))),
        None => Err(ControllerError::MissingFields { fields: vec![name] }),
    }
}

/// compat: the original sends `port` as a number; a numeric string is accepted too.
fn port_field(v: &Value) -> Result<u16, ControllerError> {
    let port = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match port {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(ControllerError::BadRequest(format!(
            "port must be a whole number from 1 to 65535, got {v}"
        ))),
    }
}

/// A register body → a checked request.
pub fn parse_register(
    m: &serde_json::Map<String, Value>,
) -> Result<RegisterRequest, ControllerError> {
    let fields: Vec<&'static str> = ["proxy_id", "instance_name", "host", "port"]
        .into_iter()
        .filter(|f| absent(m.get(*f)))
        .collect();
    if !fields.is_empty() {
        return Err(ControllerError::MissingFields { fields });
    }
    let proxy_id = string_field(m, "proxy_id")?;
    check_proxy_id(&proxy_id)?;
    let instance_name = string_field(m, "instance_name")?;
    // fixes original: look-alike names (invisible or right-to-left characters, emoji) are
    // refused by the config's name rule.
    InstanceName::parse(&instance_name).map_err(|_| {
        ControllerError::BadRequest(format!(
            "instance_name `{}` is not a valid name: use 1 to 64 letters, digits, `_`, `-` or `.`",
            shown(&instance_name)
        ))
    })?;
    let host = string_field(m, "host")?;
    // fixes original: any string was accepted as the address other proxies are sent to.
    if !is_host(&host) {
        return Err(ControllerError::BadRequest(format!(
            "host `{}` is not a host name or IP address: write a name such as bob.lan or an \
             address such as 192.168.1.20 or ::1 (no scheme, port or path)",
            shown(&host)
        )));
    }
    let port = port_field(&m["port"])?;
    let protocol = match m.get("protocol") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 64 => Some(s.clone()),
        Some(other) => {
            return Err(ControllerError::BadRequest(format!(
                "protocol must be a short string such as \"overlay/1\", got {other}"
            )))
        }
    };
    Ok(RegisterRequest {
        tls: None,
        seal: None,
        role: Default::default(),
        via: None,
        auto: false,
        proxy_id,
        instance_name,
        host,
        port,
        protocol,
        api_keys: api_keys_field(m)?,
    })
}

/// The most endpoints one key report may name.
const MAX_REPORTED_KEYS: usize = 256;

/// The optional `api_keys` of a register or heartbeat body: endpoint name → true / false.
pub fn api_keys_field(
    m: &serde_json::Map<String, Value>,
) -> Result<Option<KeyReport>, ControllerError> {
    let bad = |why: String| {
        ControllerError::BadRequest(format!(
            "api_keys must be an object of AI endpoint name → true or false (at most \
             {MAX_REPORTED_KEYS}): {why}"
        ))
    };
    let entries = match m.get("api_keys") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(entries)) => entries,
        Some(other) => return Err(bad(format!("got {other}"))),
    };
    if entries.len() > MAX_REPORTED_KEYS {
        return Err(bad(format!("got {} names", entries.len())));
    }
    let mut report = KeyReport::new();
    for (name, has) in entries {
        InstanceName::parse(name)
            .map_err(|_| bad(format!("`{}` is not an endpoint name", shown(name))))?;
        let Some(has) = has.as_bool() else {
            return Err(bad(format!("`{name}` is {has}")));
        };
        report.insert(name.clone(), has);
    }
    Ok(Some(report))
}

/// An id must be usable in a URL path segment (`/api/remove_proxy/{proxy_id}`) and must read
/// as what it is on the dashboard: visible ASCII only.
fn check_proxy_id(id: &str) -> Result<(), ControllerError> {
    // fixes original: invisible, right-to-left and other look-alike characters were accepted.
    let visible = id.chars().all(|c| c.is_ascii_graphic());
    if id.len() > 128 || !visible || id.contains(['/', '?', '#', '%', '\\']) {
        return Err(ControllerError::BadRequest(format!(
            "proxy_id `{}` is refused: proxy_id must be at most 128 characters without `/`, `?`, \
             `#`, `%` or `\\`, in visible ASCII (letters, digits, punctuation)",
            shown(id)
        )));
    }
    Ok(())
}

fn proxy_id_of(m: &serde_json::Map<String, Value>) -> Result<String, ControllerError> {
    if absent(m.get("proxy_id")) {
        return Err(ControllerError::MissingFields {
            fields: vec!["proxy_id"],
        });
    }
    string_field(m, "proxy_id")
}

// ---- the original's API ----

/// # POST /api/register
async fn register(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let m = read_object(&req, body, state.max_body_bytes).await?;
    let request = parse_register(&m)?;
    let message = format!(
        "Proxy {} registered as {}",
        request.proxy_id, request.instance_name
    );
    let source = source_of(&req);
    let endpoints = state
        .registry
        .send(RegisterProxy { request, source })
        .await??;
    Ok(HttpResponse::Ok().json(success(Registered { message, endpoints })))
}

#[derive(Deserialize)]
struct EndpointsQuery {
    proxy_id: Option<String>,
}

/// # GET /api/getendpoints?proxy_id=ID
async fn get_endpoints(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<EndpointsQuery>,
) -> Reply {
    let Some(proxy_id) = q.into_inner().proxy_id.filter(|p| !p.trim().is_empty()) else {
        return Err(ControllerError::MissingFields {
            fields: vec!["proxy_id"],
        });
    };
    let call = signed_call(&req, web::Bytes::new());
    let source = source_of(&req);
    let endpoints = state
        .registry
        .send(GetEndpoints {
            proxy_id,
            call,
            source,
        })
        .await??;
    Ok(HttpResponse::Ok().json(success(Endpoints { endpoints })))
}

/// # POST /api/heartbeat
async fn heartbeat(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let bytes = read_body(&req, body, state.max_body_bytes).await?;
    let m = parse_object(&bytes)?;
    let proxy_id = proxy_id_of(&m)?;
    let api_keys = api_keys_field(&m)?;
    let relay = match m.get("relay") {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
            ControllerError::BadRequest(format!("relay: not a relay's report: {e}"))
        })?),
    };
    let call = signed_call(&req, bytes);
    state
        .registry
        .send(Heartbeat {
            proxy_id,
            api_keys,
            relay,
            call,
            source: source_of(&req),
        })
        .await??;
    Ok(HttpResponse::Ok().json(success(Note {
        message: "Heartbeat received".into(),
    })))
}

/// `{"status":"success","message":...,"endpoints":...}`.
#[derive(Serialize)]
struct Updated {
    message: String,
    endpoints: EndpointTable,
}

/// # POST /api/update_proxy_endpoints/{proxy_id}
async fn update_proxy_endpoints(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Reply {
    let proxy_id = path.into_inner();
    let mut m = read_object(&req, body, state.max_body_bytes).await?;
    let Some(raw) = m.remove("endpoints").filter(|v| !v.is_null()) else {
        return Err(ControllerError::MissingFields {
            fields: vec!["endpoints"],
        });
    };
    let patch = TablePatch::from_value(raw).map_err(ControllerError::BadRequest)?;
    let endpoints = state
        .registry
        .send(UpdateEndpoints {
            proxy_id: proxy_id.clone(),
            patch,
        })
        .await??;
    state.registry.do_send(RecordAudit {
        kind: "table edit".into(),
        name: proxy_id,
        source: source_of(&req).to_string(),
        detail: "its endpoint table was edited".into(),
    });
    Ok(HttpResponse::Ok().json(success(Updated {
        message: "Endpoints updated".into(),
        endpoints,
    })))
}

/// # POST /api/remove_proxy/{proxy_id}
async fn remove_proxy(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Reply {
    let proxy_id = path.into_inner();
    state
        .registry
        .send(RemoveProxy {
            proxy_id: proxy_id.clone(),
        })
        .await??;
    state.registry.do_send(RecordAudit {
        kind: "remove".into(),
        name: proxy_id.clone(),
        source: source_of(&req).to_string(),
        detail: "removed from the registry".into(),
    });
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("Proxy {proxy_id} removed"),
    })))
}

/// # GET /
async fn dashboard_page(state: web::Data<AppState>) -> Reply {
    let proxies = state.registry.send(ListProxies).await?;
    let trust = state.registry.send(TrustOverview).await?;
    let page = dashboard::page(&proxies, &trust, state.instances, state.ai_endpoints);
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page.into_string()))
}

// ---- ours ----

/// One proxy in `GET /api/v1/proxies`.
#[derive(Serialize)]
struct ProxyInfo {
    proxy_id: String,
    instance_name: String,
    host: String,
    port: u16,
    protocol: Option<String>,
    last_seen_ms: u64,
    status: &'static str,
    endpoints: EndpointTable,
    /// The directory version it acknowledged having applied (none yet: null).
    applied_version: Option<u64>,
    /// The controller's directory version now.
    current_version: u64,
    /// `relay` for a relay (absent for a user's proxy).
    #[serde(skip_serializing_if = "crate::wire::directory::Role::is_user")]
    role: crate::wire::directory::Role,
    /// The relay a proxy behind NAT is reached through.
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<String>,
    /// A relay's last report: who is attached, what it carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<crate::wire::control_plane::RelayReport>,
}

/// # GET /api/v1/proxies
async fn list_proxies(state: web::Data<AppState>) -> Reply {
    let proxies: Vec<ProxyInfo> = state
        .registry
        .send(ListProxies)
        .await?
        .into_iter()
        .map(|p| ProxyInfo {
            status: p.badge.as_str(),
            proxy_id: p.proxy_id,
            instance_name: p.instance_name,
            host: p.host,
            port: p.port,
            protocol: p.protocol,
            last_seen_ms: p.last_seen_ms,
            endpoints: p.table,
            applied_version: p.applied_version,
            current_version: p.current_version,
            role: p.role,
            via: p.via,
            relay: p.relay,
        })
        .collect();
    Ok(HttpResponse::Ok().json(proxies))
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// # GET /api/v1/proxies/{proxy_id}/table/stream
///
/// SSE: `event: table`, `data:` a `TableUpdate`; the current table first, then one per change.
async fn table_stream(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<impl actix_web::Responder, ControllerError> {
    let (events, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
    state
        .registry
        .send(SubscribeTable {
            proxy_id: path.into_inner(),
            events,
        })
        .await??;
    Ok(sse::Sse::from_infallible_receiver(rx).with_keep_alive(KEEP_ALIVE))
}

/// # GET /api/v1/dashboard/stream
///
/// SSE for the dashboard page: `snapshot` (all rows), `proxy` (one row), `removed`, `seen`.
async fn dashboard_stream(
    state: web::Data<AppState>,
) -> Result<impl actix_web::Responder, ControllerError> {
    let (events, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
    state.registry.send(SubscribeDashboard { events }).await?;
    Ok(sse::Sse::from_infallible_receiver(rx)
        .with_keep_alive(KEEP_ALIVE)
        .with_retry_duration(Duration::from_secs(2)))
}

// ---- trust: joining, signed registration, rotation, the directory stream ----

/// The address a request came from (an IPv4 address mapped into IPv6 as IPv4; the
/// unspecified address when unknown).
pub(super) fn source_of(req: &HttpRequest) -> std::net::IpAddr {
    req.peer_addr()
        .map(|a| a.ip().to_canonical())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// The request as its signature covers it, when it carries one.
fn signed_call(req: &HttpRequest, body: web::Bytes) -> Option<SignedCall> {
    let header = req
        .headers()
        .get(crate::trust::request::SIGNATURE_HEADER)?
        .to_str()
        .unwrap_or_default()
        .to_string();
    Some(SignedCall {
        header,
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.path().to_string()),
        body,
        tls_key: tls_key(req),
    })
}

/// The key of the caller's TLS client certificate, when it came over TLS with one.
fn tls_key(req: &HttpRequest) -> Option<crate::trust::PublicKey> {
    req.conn_data::<crate::trust::tls::PeerKey>().map(|k| k.0)
}

/// Reads the body as JSON of `T`, with a message naming what is wrong.
async fn read_typed<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    what: &str,
) -> Result<T, ControllerError> {
    let body = read_body(req, payload, limit).await?;
    parse_object(&body)?;
    serde_json::from_slice(&body)
        .map_err(|e| ControllerError::BadRequest(format!("not a valid {what}: {e}")))
}

/// # POST /api/v1/join
/// A proxy redeems a join token for its key; answers the signed snapshot of its view.
async fn join(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let request = read_typed(&req, body, state.max_body_bytes, "join request").await?;
    let source = source_of(&req);
    let snapshot = state.registry.send(Join { request, source }).await??;
    Ok(HttpResponse::Ok().json(snapshot))
}

/// # POST /api/v1/register
/// A joined proxy registers, signed by its key; answers the signed snapshot of its view.
async fn register_signed(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Reply {
    let claim = read_typed(&req, body, state.max_body_bytes, "signed registration").await?;
    let source = source_of(&req);
    let tls_key = tls_key(&req);
    let snapshot = state
        .registry
        .send(RegisterSigned {
            claim,
            source,
            tls_key,
        })
        .await??;
    Ok(HttpResponse::Ok().json(snapshot))
}

/// # POST /api/v1/certificate
/// A TLS certificate for a joined proxy's pinned key, to whoever proves that key (a signed
/// request): a CSR in, the chain out (leaf, CA, root; PEM). Needs no certificate: this is how
/// an expired one is renewed.
async fn certificate(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let bytes = read_body(&req, body, state.max_body_bytes).await?;
    parse_object(&bytes)?;
    let request: CertificateRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ControllerError::BadRequest(format!("not a valid certificate request: {e}"))
    })?;
    let call = signed_call(&req, bytes).ok_or_else(|| {
        ControllerError::Unauthorized(format!(
            "a certificate request is signed by the key it is for (the {} header)",
            crate::trust::request::SIGNATURE_HEADER
        ))
    })?;
    let source = source_of(&req);
    let answer = state
        .registry
        .send(IssueCertificate {
            request,
            call,
            source,
        })
        .await??;
    Ok(HttpResponse::Ok().json(answer))
}

/// # POST /api/v1/rotate
/// A proxy replaces its key, signed by the old key and the new one.
async fn rotate(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let request = read_typed(&req, body, state.max_body_bytes, "rotation").await?;
    let source = source_of(&req);
    state.registry.send(Rotate { request, source }).await??;
    Ok(HttpResponse::Ok().json(success(Note {
        message: "key rotated".into(),
    })))
}

#[derive(Deserialize)]
struct DirectoryQuery {
    proxy_id: Option<String>,
}

/// # GET /api/v1/directory/stream?proxy_id=ID
///
/// SSE: `snapshot` and `delta` (signed, `id:` the version; `Last-Event-ID` resumes with a
/// delta), and `online` (unsigned).
async fn directory_stream(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<DirectoryQuery>,
) -> Result<impl actix_web::Responder, ControllerError> {
    let Some(proxy_id) = q.into_inner().proxy_id.filter(|p| !p.trim().is_empty()) else {
        return Err(ControllerError::MissingFields {
            fields: vec!["proxy_id"],
        });
    };
    let last_event_id = match req.headers().get("Last-Event-ID") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ControllerError::BadRequest(
                        "Last-Event-ID must be a directory version (a whole number)".into(),
                    )
                })?,
        ),
    };
    let (events, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
    let call = signed_call(&req, web::Bytes::new());
    state
        .registry
        .send(SubscribeDirectory {
            proxy_id,
            call,
            last_event_id,
            events,
        })
        .await??;
    Ok(sse::Sse::from_infallible_receiver(rx).with_keep_alive(KEEP_ALIVE))
}

/// # POST /api/v1/directory/ack
async fn directory_ack(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let bytes = read_body(&req, body, 4096).await?;
    parse_object(&bytes)?;
    let ack: crate::wire::directory::DirectoryAck = serde_json::from_slice(&bytes)
        .map_err(|e| ControllerError::BadRequest(format!("not a valid acknowledgement: {e}")))?;
    let call = signed_call(&req, bytes);
    state
        .registry
        .send(AckDirectory {
            proxy_id: ack.proxy_id,
            call,
            version: ack.version,
        })
        .await??;
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("version {} acknowledged", ack.version),
    })))
}

// ---- the admin API: `Authorization: Bearer <admin.token>` ----

/// Body of `POST /api/v1/admin/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    name: String,
    /// How long the token is valid: `24h`, `30m`, `7d` (default 24h).
    #[serde(default)]
    ttl: Option<String>,
    /// It may replace a key already pinned to the name (a lost key).
    #[serde(default)]
    replace: bool,
}

/// Answer of `POST /api/v1/admin/tokens`: the token, shown once.
#[derive(Serialize, Deserialize)]
pub struct TokenAnswer {
    pub token: String,
    pub name: String,
    pub root: String,
    pub expires_at_ms: u64,
    pub replace: bool,
    /// The port of the controller's TLS listener, which proxies use (none: TLS is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_port: Option<u16>,
}

/// `24h`, `90m`, `7d`, `3600s` → a duration.
pub fn parse_ttl(s: &str) -> Result<Duration, ControllerError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        ControllerError::BadRequest(format!(
            "ttl `{}` is not a duration ({e}); write e.g. 24h, 30m or 7d",
            shown(s)
        ))
    })
}

/// # POST /api/v1/admin/tokens
async fn create_token(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let t: TokenRequest = read_typed(&req, body, 4096, "token request").await?;
    let ttl = match &t.ttl {
        Some(s) => parse_ttl(s)?,
        None => Duration::from_secs(24 * 3600),
    };
    let issued = state
        .registry
        .send(IssueToken {
            name: t.name,
            ttl,
            replace: t.replace,
            source: format!("admin API from {}", source_of(&req)),
        })
        .await??;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(TokenAnswer {
            token: issued.token.to_string(),
            name: issued.name,
            root: issued.root.to_string(),
            expires_at_ms: issued.expires_at_ms,
            replace: issued.replace,
            tls_port: req
                .app_data::<web::Data<super::tls::TlsUrl>>()
                .and_then(|u| u.0.as_deref().map(crate::wire::control_plane::split_url))
                .map(|(_, port, _)| port),
        }))
}

/// One open token in `GET /api/v1/admin/tokens` (never its secret).
#[derive(Serialize)]
struct TokenInfo {
    id: String,
    name: String,
    expires_at_ms: u64,
    replace: bool,
}

/// # GET /api/v1/admin/tokens
async fn list_tokens(state: web::Data<AppState>) -> Reply {
    let view = state.registry.send(TrustOverview).await?;
    let tokens: Vec<TokenInfo> = view
        .tokens
        .into_iter()
        .map(|t| TokenInfo {
            id: t.id,
            name: t.name,
            expires_at_ms: t.expires_at_ms,
            replace: t.replace,
        })
        .collect();
    Ok(HttpResponse::Ok().json(tokens))
}

/// Body of `POST /api/v1/admin/revoke`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    name: String,
    reason: String,
}

/// # POST /api/v1/admin/revoke
async fn revoke(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let r: RevokeRequest = read_typed(&req, body, 4096, "revocation").await?;
    state
        .registry
        .send(Revoke {
            name: r.name.clone(),
            reason: r.reason,
            source: format!("admin API from {}", source_of(&req)),
        })
        .await??;
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("the key of {} is revoked", r.name),
    })))
}

/// `GET /api/v1/admin/trust`: the root, the directory version, every user, open tokens, audit.
#[derive(Serialize)]
struct TrustAnswer {
    root: String,
    version: u64,
    users: Vec<crate::wire::directory::UserEntry>,
    audit: Vec<super::store::AuditEntry>,
}

/// # GET /api/v1/admin/trust
async fn trust_overview(state: web::Data<AppState>) -> Reply {
    let view = state.registry.send(TrustOverview).await?;
    Ok(HttpResponse::Ok().json(TrustAnswer {
        root: view.root.to_string(),
        version: view.version,
        users: view.users,
        audit: view.audit,
    }))
}

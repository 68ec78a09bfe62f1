//! Pieces every role's HTTP server shares: the running-server handle, the static assets
//! compiled into the binary (no CDN: pages work offline), the one body limit every role reads
//! requests with ([`json_config_with`], [`read_limited`], their [`BodyError`]; in the original's
//! error shape by default), the limits every server puts on its clients ([`body_deadline`]:
//! how long a body may take; [`ServerLimits`]), the `/healthz` probe, and `/metrics`
//! ([`metrics`]: each role's registry, the HTTP counts, who may read them).
//!
//! Nothing here knows about a particular role. [`host`]: the `Host` check against DNS
//! rebinding on browser-facing routes; [`session`]: login sessions in a cookie; [`page_tls`]:
//! HTTPS for pages beyond loopback.

pub mod health;
pub mod host;
pub mod metrics;
pub mod page_tls;
pub mod session;

pub use health::Health;

use std::cell::Cell;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, Server, ServerHandle};
use actix_web::error::PayloadError;
use actix_web::http::{header, ConnectionType, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt};

use crate::wire::legacy::ErrorBody;

/// A role's server, bound and ready to be awaited or spawned.
pub struct Running {
    /// `controller`, `proxy/alice`, `peer/alice`.
    pub label: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Its TLS listener for overlay members, if it has one (the controller's, a proxy's).
    pub tls_addr: Option<SocketAddr>,
    /// `https` when its pages are served over TLS (beyond loopback), else `http`.
    pub scheme: &'static str,
    /// Where others reach it (its `advertise`), when that is set: shown instead of the bound
    /// address when that is a wildcard (in a container, 127.0.0.1 is nobody else's).
    pub advertised: Option<String>,
    /// Its TLS listener's advertised `host:port`, likewise.
    pub tls_advertised: Option<String>,
    /// The server future; it resolves when the server has stopped.
    pub server: Server,
    /// What the role must do after its server has stopped (close stores, stop arbiters).
    pub on_stop: Vec<Box<dyn FnOnce() + Send>>,
}

/// `scheme://addr`; for a wildcard address, the advertised one if any, else loopback.
pub fn shown_url(scheme: &str, addr: SocketAddr, advertised: Option<&str>) -> String {
    match advertised.filter(|a| !a.is_empty()) {
        Some(a) if addr.ip().is_unspecified() => format!("{scheme}://{a}"),
        _ => format!("{scheme}://{}", crate::config::reachable(addr)),
    }
}

impl Running {
    /// Where to open it (see [`shown_url`]).
    pub fn url(&self) -> String {
        shown_url(self.scheme, self.addr, self.advertised.as_deref())
    }
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }
    /// Runs the server to completion, then the role's stop hooks.
    pub async fn serve(self) -> std::io::Result<()> {
        let result = self.server.await;
        for hook in self.on_stop {
            hook();
        }
        result
    }
}

/// Binds `addr`, with a message that says which listener and how to fix a taken port.
pub fn bind(what: &str, addr: SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for {what} on {addr}: {e}; stop the program using that port, \
             or change {field} in the config (or pass a listen flag)"
        )
    })
}

/// Why a request body was not read: every role's body limit and JSON errors, in one wording.
/// Each role turns it into its own error (and error shape); [`json_config`] gives the original's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Past the limit while reading (or declared so, for a raw read).
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Declared past the limit by its `Content-Length`, for a JSON extractor.
    #[error("request body is {length} bytes; the limit is {limit} bytes")]
    TooLong { length: usize, limit: usize },
    #[error("expected a JSON body with Content-Type: application/json")]
    ContentType,
    /// Well-formed JSON whose fields do not fit.
    #[error("invalid fields in JSON body: {0}")]
    InvalidFields(String),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("unreadable body: {0}")]
    Unreadable(String),
}

impl BodyError {
    /// 413 for a body over the limit, 400 for anything else.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } | BodyError::TooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<&actix_web::error::JsonPayloadError> for BodyError {
    fn from(err: &actix_web::error::JsonPayloadError) -> BodyError {
        use actix_web::error::JsonPayloadError as E;
        match err {
            E::OverflowKnownLength { length, limit } => BodyError::TooLong {
                length: *length,
                limit: *limit,
            },
            E::Overflow { limit } => BodyError::TooLarge { limit: *limit },
            E::ContentType => BodyError::ContentType,
            E::Deserialize(e) if e.is_data() => BodyError::InvalidFields(e.to_string()),
            E::Deserialize(e) => BodyError::InvalidJson(e.to_string()),
            other => BodyError::Unreadable(other.to_string()),
        }
    }
}

/// The one JSON body reader every role uses: `limit` bytes at most, any content type, and each
/// failure answered as `answer` makes of its [`BodyError`].
pub fn json_config_with<F, E>(limit: usize, answer: F) -> web::JsonConfig
where
    F: Fn(BodyError) -> E + Send + Sync + 'static,
    E: Into<actix_web::Error>,
{
    web::JsonConfig::default()
        .limit(limit)
        // compat: the original read any body as JSON; cross-site posts are refused before this
        // (see `refuse_cross_site`), so a browser form cannot post JSON as text/plain.
        .content_type_required(false)
        .error_handler(move |err, _req| answer(BodyError::from(&err)).into())
}

/// [`json_config_with`] answering in the original's error shape: 413 when too large, 400
/// naming what is wrong otherwise.
pub fn json_config(limit: usize) -> web::JsonConfig {
    json_config_with(limit, |e: BodyError| {
        let body = HttpResponse::build(e.status()).json(ErrorBody::new(e.to_string()));
        actix_web::error::InternalError::from_response(e, body)
    })
}

/// A raw request body, for handlers that parse it themselves: refused past `limit` bytes, as
/// soon as `Content-Length` says so, or else once that much has been read.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, BodyError> {
    use futures_util::StreamExt;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// What every role's server allows its clients: how long a request body may take to arrive
/// (headers have their own, shorter limit: actix's `client_request_timeout`), and how many
/// connections one listener keeps open (per worker; more wait in the kernel's backlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Who may read `/metrics`.
    pub metrics: metrics::MetricsAccess,
}

impl ServerLimits {
    /// From the config's `server:` section.
    pub fn of(server: &crate::config::ServerConfig) -> ServerLimits {
        ServerLimits {
            body_timeout: Duration::from_secs(server.body_timeout_secs.max(1)),
            max_connections: server.max_connections.max(1),
            metrics: metrics::MetricsAccess::of(server),
        }
    }
}

/// How far a request's body has come, as [`body_deadline`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Not (all) read yet.
    Reading,
    /// Read to its end.
    Done,
    /// Its deadline passed first.
    TimedOut,
}

/// A request body that ends in an error once `deadline` has passed: a body that trickles or
/// never comes cannot hold the connection (and its file descriptor) for longer. Dropped before
/// its end, it leaves the body in `left` for [`body_deadline`] to keep until the response goes.
struct TimedPayload {
    inner: Option<Payload>,
    deadline: Pin<Box<actix_rt::time::Sleep>>,
    after: Duration,
    state: Rc<Cell<BodyState>>,
    left: Rc<Cell<Option<Payload>>>,
}

impl Stream for TimedPayload {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.state.get() == BodyState::TimedOut {
            return Poll::Ready(None);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_next_unpin(cx) {
            Poll::Ready(None) => {
                self.state.set(BodyState::Done);
                Poll::Ready(None)
            }
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(chunk)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    self.state.set(BodyState::TimedOut);
                    let why = body_timeout_message(self.after);
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        why,
                    )))))
                }
            },
        }
    }
}

impl Drop for TimedPayload {
    fn drop(&mut self) {
        if self.state.get() != BodyState::Done {
            self.left.set(self.inner.take());
        }
    }
}

/// A response body that keeps the unread rest of its request's body alive until it has been
/// sent: actix then closes the connection after the response instead of draining (reading and
/// discarding) a chunked body that may never end.
struct WithUnread {
    body: actix_web::body::BoxBody,
    _unread: Payload,
}

impl actix_web::body::MessageBody for WithUnread {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

fn body_timeout_message(after: Duration) -> String {
    format!(
        "the request body did not arrive within {}s",
        after.as_secs()
    )
}

/// Whether a request announces a body (`Content-Length` above 0, or chunked).
fn has_body(headers: &header::HeaderMap) -> bool {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    declared.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// Middleware for every role (`.wrap(from_fn(move |r, n| body_deadline(r, n, after)))`): the
/// body of a request must arrive within `after` of its headers. Past it, the handler reading it
/// sees an error and the client gets 408 in the original's error shape; a response given before
/// the body was all read (a refusal, or a route that ignores it) closes the connection, so
/// nothing is left draining a body that never ends.
// Before it (issue 13): a body that trickled or never came held its connection without limit, and
// about 1,050 of them used up the open-file limit of every role in the process.
pub async fn body_deadline(
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
    after: Duration,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    if !has_body(req.headers()) {
        return next.call(req).await;
    }
    let state = Rc::new(Cell::new(BodyState::Reading));
    let left = Rc::new(Cell::new(None));
    let timed = TimedPayload {
        inner: Some(req.take_payload()),
        deadline: Box::pin(actix_rt::time::sleep(after)),
        after,
        state: state.clone(),
        left: left.clone(),
    };
    let stream: Pin<Box<dyn Stream<Item = Result<web::Bytes, PayloadError>>>> = Box::pin(timed);
    req.set_payload(Payload::from(stream));
    let answered = next.call(req).await;
    let timed_out = state.get() == BodyState::TimedOut;
    let mut res = match answered {
        Ok(res) => res,
        Err(_) if timed_out => {
            return Err(actix_web::error::ErrorRequestTimeout(body_timeout_message(
                after,
            )))
        }
        Err(e) => return Err(e),
    };
    if timed_out {
        let (req, _) = res.into_parts();
        let answer =
            HttpResponse::RequestTimeout().json(ErrorBody::new(body_timeout_message(after)));
        res = actix_web::dev::ServiceResponse::new(req, answer);
    }
    if state.get() == BodyState::Done {
        return Ok(res);
    }
    res.response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    Ok(match left.take() {
        Some(unread) => res
            .map_body(|_, body| WithUnread {
                body,
                _unread: unread,
            })
            .map_into_boxed_body(),
        None => res,
    })
}

/// Raises this process's soft limit of open files to its hard limit (where they differ): each
/// connection is a file, and the common soft limit of 1024 is reached by one busy port. Says
/// what it did; a failure only costs the headroom, so it is logged, not fatal.
#[cfg(unix)]
pub fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the `rlimit` struct passed by reference.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        log::warn!(
            "cannot read the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let wanted = open_file_target(limit.rlim_cur, limit.rlim_max);
    if wanted <= limit.rlim_cur {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        log::info!("open-file limit raised from {} to {wanted}", limit.rlim_cur);
    } else {
        log::warn!(
            "cannot raise the open-file limit from {} to {wanted}: {}",
            limit.rlim_cur,
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() {}

/// The soft limit to ask for: the hard one, but not past 1,048,576 (an "unlimited" hard limit
/// is refused as a soft one on some systems), and never lower than now.
fn open_file_target(soft: u64, hard: u64) -> u64 {
    const CEILING: u64 = 1 << 20;
    hard.min(CEILING).max(soft)
}

/// The assets compiled into the binary: (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/style.css"),
    ),
    (
        "chat.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/chat.css"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/chat.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../assets/favicon.svg"),
    ),
];

/// `GET /assets/{name}`: a file of `assets/`, cached by ETag.
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    let Some((_, mime, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name.as_str()) else {
        return HttpResponse::NotFound().json(ErrorBody::new(format!("no asset named {name}")));
    };
    let etag = format!("\"{:x}-{}\"", fnv1a(bytes), bytes.len());
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    if fresh {
        return HttpResponse::NotModified().finish();
    }
    HttpResponse::Ok()
        .content_type(*mime)
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(*bytes)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `path` is one of `routes` or below one (`/api/v1/inbox/batch` is under
/// `/api/v1/inbox`; `/message_updates` is not under `/message`).
pub fn under(path: &str, routes: &[&str]) -> bool {
    routes.iter().any(|r| {
        path.strip_prefix(r)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The token of an `Authorization: Bearer TOKEN` header, if any.
pub fn bearer(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Routes every role serves: `/assets/{name}`, `/healthz` (see [`health`]), `/metrics` (see
/// [`metrics`]: the role's registry travels with its `Health`, and is the app's data for the
/// HTTP counts of [`guarded_app`]).
pub fn common_routes(cfg: &mut web::ServiceConfig, health: Health) {
    let registry = web::Data::new(health.metrics().clone());
    let health = web::Data::new(health);
    cfg.app_data(registry)
        .route("/assets/{name}", web::get().to(asset))
        .service(
            web::resource("/healthz")
                .app_data(health)
                .route(web::get().to(health::healthz)),
        )
        .route("/metrics", web::get().to(metrics::metrics));
}

/// Refuses a state-changing request that a browser says comes from another origin, so a web page
/// the user visits (even another server on the same host) cannot post to their peer, proxy or
/// controller on their behalf (CSRF). DNS rebinding is [`host`]'s.
///
/// Browsers mark every request with `Sec-Fetch-Site` (and `Origin` for POSTs); scripts, curl
/// and the original system's components send neither, so they are unaffected.
pub fn cross_site_refusal(req: &actix_web::dev::ServiceRequest) -> Option<HttpResponse> {
    use actix_web::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let cross_site = match header("sec-fetch-site") {
        // `same-site` ignores the port: any page on 127.0.0.1 (another local server) is
        // same-site. Only our own origin, or the user typing/bookmarking (`none`), may.
        Some(site) => !matches!(site, "same-origin" | "none"),
        None => match (header("origin"), header("host")) {
            // "null" origins (sandboxed frames, file://) are never our own pages.
            (Some("null"), _) => true,
            (Some(origin), Some(host)) => origin.split_once("://").map(|(_, h)| h) != Some(host),
            _ => false,
        },
    };
    cross_site.then(|| {
        HttpResponse::Forbidden().json(ErrorBody::new(
            "cross-site request refused: this page only accepts changes from its own pages and from scripts",
        ))
    })
}

/// Middleware (`.wrap(middleware::from_fn(refuse_cross_site))`) applying [`cross_site_refusal`].
pub async fn refuse_cross_site(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    match cross_site_refusal(&req) {
        Some(refusal) => Ok(req.into_response(refusal)),
        None => next.call(req).await,
    }
}

/// A role's shared state (its actors' addresses), built the first time an HTTP worker asks for
/// it, on that worker's thread: the actors it starts then run on the same event loop as the
/// handlers that ask them, so a request reaches an actor without crossing a thread (each
/// crossing is a wake-up and a context switch; a message used to make dozens of them). With
/// several workers, the others share the first one's actors.
pub type OnWorker<S> = std::sync::Arc<std::sync::LazyLock<S, Box<dyn FnOnce() -> S + Send>>>;

/// Builds an [`OnWorker`]: `build` runs once, on the first worker that needs the state.
pub fn on_worker<S>(build: impl FnOnce() -> S + Send + 'static) -> OnWorker<S> {
    std::sync::Arc::new(std::sync::LazyLock::new(Box::new(build)))
}

/// Starts an arbiter (thread) for a role's actors, tagged for logging.
pub fn role_arbiter(label: &str) -> actix::Arbiter {
    let arbiter = actix::Arbiter::new();
    let tag = label.to_string();
    arbiter.spawn_fn(move || crate::logging::tag_thread(&tag));
    arbiter
}

/// A role's app with the guards every request passes: each body within its deadline (the
/// outer one, so a refusal still closes a connection whose body never came) and cross-site
/// posts refused; each request counted in its role's metrics ([`metrics::count_http`]), and
/// who may read them (`limits.metrics`).
pub fn guarded_app(
    limits: ServerLimits,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<actix_web::body::BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .app_data(web::Data::new(limits.metrics))
        .wrap(actix_web::middleware::from_fn(refuse_cross_site))
        .wrap(actix_web::middleware::from_fn(move |req, next| {
            body_deadline(req, next, limits.body_timeout)
        }))
        .wrap(actix_web::middleware::from_fn(metrics::count_http))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_wildcard_listener_is_shown_at_its_advertised_address_else_at_loopback() {
        let any: SocketAddr = "0.0.0.0:5001".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(
            shown_url("http", any, Some("alice:5001")),
            "http://alice:5001"
        );
        assert_eq!(shown_url("http", any, None), "http://127.0.0.1:5001");
        assert_eq!(shown_url("http", any, Some("")), "http://127.0.0.1:5001");
        assert_eq!(
            shown_url("https", lo, Some("alice:5001")),
            "https://127.0.0.1:5001"
        );
    }

    async fn read(req: TestRequest, limit: usize) -> Result<web::Bytes, BodyError> {
        use actix_web::FromRequest;
        let (req, mut payload) = req.to_http_parts();
        let payload = web::Payload::from_request(&req, &mut payload)
            .await
            .map_err(|e| BodyError::Unreadable(e.to_string()))?;
        read_limited(&req, payload, limit).await
    }

    #[actix_rt::test]
    async fn a_raw_body_within_the_limit_is_read_and_one_past_it_refused() {
        let ok = read(TestRequest::post().set_payload("{}"), 10).await;
        assert_eq!(ok, Ok(web::Bytes::from_static(b"{}")));
        let big = read(TestRequest::post().set_payload(vec![b'x'; 11]), 10).await;
        assert_eq!(big, Err(BodyError::TooLarge { limit: 10 }));
        assert_eq!(
            big.unwrap_err().to_string(),
            "request body is larger than the limit of 10 bytes"
        );
    }

    #[actix_rt::test]
    async fn the_json_reader_answers_in_the_originals_shape() {
        use actix_web::{test, App};
        let app = test::init_service(App::new().app_data(json_config(16)).route(
            "/",
            web::post().to(|_: web::Json<serde_json::Value>| async { HttpResponse::Ok().finish() }),
        ))
        .await;
        let post = |body: &'static str| TestRequest::post().uri("/").set_payload(body);
        let res = test::call_service(&app, post(r#"{"text":"far too long"}"#).to_request()).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: ErrorBody = test::read_body_json(res).await;
        assert_eq!(
            body.message,
            "request body is 23 bytes; the limit is 16 bytes"
        );
        let res = test::call_service(&app, post("{").to_request()).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: ErrorBody = test::read_body_json(res).await;
        assert!(
            body.message.starts_with("invalid JSON: "),
            "{}",
            body.message
        );
    }

    #[test]
    fn the_soft_open_file_limit_goes_up_to_the_hard_one_within_reason() {
        assert_eq!(open_file_target(1024, 524_288), 524_288);
        assert_eq!(open_file_target(1024, 1024), 1024);
        assert_eq!(open_file_target(1024, u64::MAX), 1 << 20, "unlimited");
        assert_eq!(
            open_file_target(2_000_000, u64::MAX),
            2_000_000,
            "never lower"
        );
    }

    #[cfg(unix)]
    #[test]
    fn raising_the_open_file_limit_reaches_the_target() {
        let read = || {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes the struct passed by reference.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
            (l.rlim_cur, l.rlim_max)
        };
        let (soft, hard) = read();
        raise_open_file_limit();
        assert_eq!(read(), (open_file_target(soft, hard), hard));
    }

    #[test]
    fn only_a_request_that_announces_a_body_has_one() {
        let has = |pairs: &[(&str, &str)]| {
            let mut req = TestRequest::post();
            for p in pairs {
                req = req.insert_header(*p);
            }
            has_body(req.to_http_request().headers())
        };
        assert!(has(&[("content-length", "3")]));
        assert!(has(&[("transfer-encoding", "chunked")]));
        assert!(!has(&[("content-length", "0")]));
        assert!(!has(&[]));
    }

    fn refused(req: TestRequest) -> bool {
        cross_site_refusal(&req.to_srv_request()).is_some()
    }

    #[test]
    fn a_cross_site_post_is_refused() {
        assert!(refused(
            TestRequest::post().insert_header(("sec-fetch-site", "cross-site"))
        ));
        assert!(refused(
            TestRequest::post()
                .insert_header(("origin", "http://evil.example"))
                .insert_header(("host", "127.0.0.1:5000"))
        ));
        assert!(refused(
            TestRequest::post().insert_header(("origin", "null"))
        ));
    }

    #[test]
    fn same_origin_pages_and_scripts_are_allowed() {
        assert!(!refused(
            TestRequest::post().insert_header(("sec-fetch-site", "same-origin"))
        ));
        assert!(!refused(
            TestRequest::post()
                .insert_header(("origin", "http://127.0.0.1:5000"))
                .insert_header(("host", "127.0.0.1:5000"))
        ));
        assert!(
            !refused(TestRequest::post()),
            "curl and the original send neither header"
        );
        assert!(!refused(
            TestRequest::get().insert_header(("sec-fetch-site", "cross-site"))
        ));
    }
}

//! Pieces every role's HTTP server shares: the running-server handle, the static assets
//! compiled into the binary (no CDN: pages work offline), JSON body limits with errors in the
//! original's shape, and the `/healthz` probe.
//!
//! Nothing here knows about a particular role.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::wire::legacy::ErrorBody;

/// A role's server, bound and ready to be awaited or spawned.
pub struct Running {
    /// `controller`, `proxy/alice`, `peer/alice`.
    pub label: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// The server future; it resolves when the server has stopped.
    pub server: Server,
    /// What the role must do after its server has stopped (close stores, stop arbiters).
    pub on_stop: Vec<Box<dyn FnOnce() + Send>>,
}

impl Running {
    /// `http://addr`, with a wildcard IP shown as loopback.
    pub fn url(&self) -> String {
        format!("http://{}", crate::config::reachable(self.addr))
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

/// A JSON body reader with a size limit whose errors are the original's error shape:
/// 413 when too large, 400 naming what is wrong otherwise.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        // compat: the original read any body as JSON; cross-site posts are refused before this
        // (see `refuse_cross_site`), so a browser form cannot post JSON as text/plain.
        .content_type_required(false)
        .error_handler(move |err, _req| {
            use actix_web::error::JsonPayloadError as E;
            let (status, message) = match &err {
                E::OverflowKnownLength { length, limit } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is {length} bytes; the limit is {limit} bytes"),
                ),
                E::Overflow { limit } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than the limit of {limit} bytes"),
                ),
                E::ContentType => (
                    StatusCode::BAD_REQUEST,
                    "expected a JSON body with Content-Type: application/json".to_string(),
                ),
                E::Deserialize(e) if e.is_data() => (
                    StatusCode::BAD_REQUEST,
                    format!("invalid fields in JSON body: {e}"),
                ),
                E::Deserialize(e) => (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
                other => (StatusCode::BAD_REQUEST, format!("unreadable body: {other}")),
            };
            let body = HttpResponse::build(status).json(ErrorBody::new(message));
            actix_web::error::InternalError::from_response(err, body).into()
        })
}

/// The assets compiled into the binary: (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/style.css"),
    ),
    (
        "chat.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/chat.css"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/chat.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../assets/favicon.svg"),
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

/// Body of `GET /healthz`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Health {
    pub role: String,
    pub instance: Option<String>,
    pub version: String,
}

impl Health {
    pub fn new(role: &str, instance: Option<&str>) -> Self {
        Self {
            role: role.to_string(),
            instance: instance.map(str::to_string),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Routes every role serves: `/assets/{name}`, `/healthz`.
pub fn common_routes(cfg: &mut web::ServiceConfig, health: Health) {
    let health = web::Data::new(health);
    cfg.route("/assets/{name}", web::get().to(asset)).service(
        web::resource("/healthz").app_data(health).route(
            web::get()
                .to(|h: web::Data<Health>| async move { HttpResponse::Ok().json(h.get_ref()) }),
        ),
    );
}

/// Refuses a state-changing request that a browser says comes from another origin, so a web page
/// the user visits (even another server on the same host) cannot post to their peer, proxy or
/// controller on their behalf (CSRF). Not covered: DNS rebinding (no Host allow-list yet).
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

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

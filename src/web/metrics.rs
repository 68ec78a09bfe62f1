//! `GET /metrics` of every role, in the Prometheus text format (0.0.4): one [`Metrics`]
//! registry per role instance (no global state: `overlay up` runs every role in one process,
//! and each serves its own), the HTTP series every role has ([`count_http`]: requests by
//! route template and status, and how long they took), the SSE listener gauge the roles with
//! event streams set, a store's write timings ([`Metrics::watch_store`]), and who may read it
//! ([`MetricsAccess`]: loopback callers, or anyone with the configured bearer token).
//!
//! Owns the names every role shares and the encoding; each role registers its own series (the
//! proxy's in [`crate::proxy::metrics`], the controller's and the relay's in their modules).
//! Label values are bounded: a route's template (never the raw path), a method among the
//! standard ones, a status code, a configured name. Never a message id, a key or a token.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use sha2::Digest;

use crate::wire::legacy::ErrorBody;

/// Every series is named `overlay_…`.
pub const PREFIX: &str = "overlay";

/// The route label of a request no route template matched (a 404, or the proxy's catch-all
/// for the original's posts, `POST /` on any path).
pub const UNMATCHED: &str = "unmatched";

/// Buckets of request and call durations (seconds): 0.5 ms to 10 s.
pub const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram family whose histograms all have the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// `{method, route, code}` of `overlay_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    code: u16,
}

/// `{route}` of `overlay_http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// `{stream}` of `overlay_sse_listeners`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

/// One role's metrics: its registry and the series every role has. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: RwLock<Registry>,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<RouteLabels>,
    sse: Family<StreamLabels, Gauge>,
    slow: Family<StreamLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// A registry without a `role` label (for a `Health` read back from JSON).
    fn default() -> Self {
        Metrics::with_registry(Registry::with_prefix(PREFIX))
    }
}

/// A histogram with [`HTTP_BUCKETS`].
pub fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS.iter().copied())
}

impl Metrics {
    /// The registry of a role (`controller`, `proxy`, `peer`, `relay`): every series it holds
    /// carries `role="…"`.
    pub fn new(role: &str) -> Metrics {
        let labels = [(
            std::borrow::Cow::Borrowed("role"),
            std::borrow::Cow::Owned(role.to_string()),
        )];
        Metrics::with_registry(Registry::with_prefix_and_labels(PREFIX, labels.into_iter()))
    }

    fn with_registry(mut registry: Registry) -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: HistogramFamily<RouteLabels> = Family::new_with_constructor(http_histogram);
        let sse = Family::<StreamLabels, Gauge>::default();
        let slow = Family::<StreamLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status code",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer's head, by route template (an event \
             stream: until it opens)",
            durations.clone(),
        );
        registry.register(
            "sse_listeners",
            "Clients holding an event stream open now, by stream",
            sse.clone(),
        );
        registry.register(
            "sse_slow_consumers",
            "Event-stream clients dropped for falling too far behind, by stream",
            slow.clone(),
        );
        Metrics(Arc::new(Inner {
            registry: RwLock::new(registry),
            requests,
            durations,
            sse,
            slow,
        }))
    }

    /// Adds a series to this role's registry. `name` without the `overlay_` prefix, and a
    /// counter's without `_total` (the encoder appends it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut r) = self.0.registry.write() {
            r.register(name, help, metric);
        }
    }

    /// Adds series computed at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        if let Ok(mut r) = self.0.registry.write() {
            r.register_collector(collector);
        }
    }

    /// The gauge of `overlay_sse_listeners{stream}`: its owner sets it as clients come and go.
    pub fn sse_listeners(&self, stream: &'static str) -> Gauge {
        self.0.sse.get_or_create_owned(&StreamLabels { stream })
    }

    /// The counter of `overlay_sse_slow_consumers_total{stream}`: its owner counts each client
    /// it drops for falling behind.
    pub fn sse_slow_consumers(&self, stream: &'static str) -> Counter {
        self.0.slow.get_or_create_owned(&StreamLabels { stream })
    }

    /// Shows a store's commit and log-flush timings (`overlay_store_commit_duration_seconds`,
    /// `overlay_wal_flush_duration_seconds`). Once per role: a role has one store.
    pub fn watch_store(&self, timings: &crate::storage::StoreTimings) {
        self.watch_commits(timings.commit.clone());
        self.register(
            "wal_flush_duration_seconds",
            "Time to write and fsync the store's write-ahead log for the groups waiting",
            timings.flush.clone(),
        );
    }

    /// Shows a store's commit timings only (`overlay_store_commit_duration_seconds`): the
    /// controller's store has no write-ahead log.
    pub fn watch_commits(&self, commit: Histogram) {
        self.register(
            "store_commit_duration_seconds",
            "Time to apply one group of writes to the database (a redb transaction commit)",
            commit,
        );
    }

    /// One request answered.
    fn request(&self, method: &'static str, route: String, code: u16, seconds: f64) {
        self.0
            .durations
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(seconds);
        self.0
            .requests
            .get_or_create(&RequestLabels {
                method,
                route,
                code,
            })
            .inc();
    }

    /// Every series, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.0.registry.read() {
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
        }
        out
    }
}

/// The method label: a standard method, or `other` (a client may send any token).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Marks a request already counted (the middleware may sit twice in one app: see
/// [`count_http`]).
struct Counted;

/// Middleware: counts each request in its role's [`Metrics`] (found in the app's data, put
/// there by [`super::common_routes`]) by its route's template, never the raw path. It is in
/// [`super::guarded_app`] and may also wrap a role's app outermost, so requests its other
/// middleware refuse (401, 403) are counted too: a request is counted once, by the outermost.
/// Costs a route match, a map lookup and atomic adds.
pub async fn count_http(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if req.extensions().contains::<Counted>() {
        return next.call(req).await;
    }
    let Some(metrics) = req.app_data::<web::Data<Metrics>>().cloned() else {
        return next.call(req).await;
    };
    req.extensions_mut().insert(Counted);
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.match_pattern().unwrap_or_else(|| UNMATCHED.to_string());
    let res = next.call(req).await;
    let code = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    metrics.request(method, route, code, started.elapsed().as_secs_f64());
    res
}

/// Fewest characters of a metrics token: a guessable one would open `/metrics` to anyone.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Who may read `/metrics`: callers on loopback (under a `Host` that is an address or
/// localhost: a browser page under a rebound name is not), and, when `server.metrics_token_env`
/// names a set variable, any caller sending `Authorization: Bearer` with its value. Only the
/// token's SHA-256 is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsAccess {
    token_sha256: Option<[u8; 32]>,
}

/// Why `/metrics` was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsRefusal {
    #[error(
        "/metrics is served to loopback callers only; to scrape it from elsewhere, set \
         server.metrics_token_env in config.yaml to the name of a variable holding a token, \
         and send it as `Authorization: Bearer TOKEN`"
    )]
    NotLoopback,
    #[error(
        "/metrics needs `Authorization: Bearer TOKEN` with the token of server.metrics_token_env"
    )]
    NoToken,
    #[error("wrong token for /metrics")]
    WrongToken,
    #[error(
        "/metrics on loopback answers only under an address or localhost (a guard against DNS \
         rebinding): use http://127.0.0.1:PORT/metrics"
    )]
    Host,
}

impl MetricsAccess {
    /// Loopback callers, and bearers of `token` when there is one.
    pub fn new(token: Option<&str>) -> MetricsAccess {
        MetricsAccess {
            token_sha256: token
                .filter(|t| !t.is_empty())
                .map(|t| sha2::Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// From the config's `server:` section (a token shorter than [`MIN_TOKEN_CHARS`] is not
    /// used, with a warning): the token in the variable `metrics_token_env`
    /// names, when set; a name whose variable is unset or empty is warned about, and only
    /// loopback callers are answered.
    pub fn of(server: &crate::config::ServerConfig) -> MetricsAccess {
        let Some(var) = server.metrics_token_env.as_deref() else {
            return MetricsAccess::default();
        };
        match std::env::var(var) {
            Ok(token) if token.chars().count() >= MIN_TOKEN_CHARS => {
                MetricsAccess::new(Some(&token))
            }
            Ok(token) if !token.is_empty() => {
                log::warn!(
                    "server.metrics_token_env: the token in {var} is shorter than \
                     {MIN_TOKEN_CHARS} characters, so it is not used: /metrics answers loopback \
                     callers only (make one with `openssl rand -hex 24`)"
                );
                MetricsAccess::default()
            }
            _ => {
                log::warn!(
                    "server.metrics_token_env names {var}, which is not set: /metrics answers \
                     loopback callers only"
                );
                MetricsAccess::default()
            }
        }
    }

    /// Whether a caller at `peer` asking under `host` with `bearer` is answered.
    pub fn check(
        &self,
        peer: Option<SocketAddr>,
        host: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<(), MetricsRefusal> {
        use subtle::ConstantTimeEq;
        if let (Some(want), Some(given)) = (&self.token_sha256, bearer) {
            let given: [u8; 32] = sha2::Sha256::digest(given.as_bytes()).into();
            return if bool::from(given.ct_eq(want)) {
                Ok(())
            } else {
                Err(MetricsRefusal::WrongToken)
            };
        }
        // `::ffff:127.0.0.1` on a dual-stack listener is loopback too.
        if !peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) {
            return Err(if self.token_sha256.is_some() {
                MetricsRefusal::NoToken
            } else {
                MetricsRefusal::NotLoopback
            });
        }
        let plain_host = super::host::HostCheck::new([], &[]);
        if !host.is_some_and(|h| plain_host.allows(h)) {
            return Err(MetricsRefusal::Host);
        }
        Ok(())
    }
}

/// # GET /metrics
/// Every series of this role, for a caller [`MetricsAccess`] allows: 401 with a token to
/// send, 403 otherwise.
pub async fn metrics(req: HttpRequest, metrics: web::Data<Metrics>) -> HttpResponse {
    let access = req
        .app_data::<web::Data<MetricsAccess>>()
        .map(|a| *a.get_ref())
        .unwrap_or_default();
    let host = super::host::requested_host(req.head());
    let checked = access.check(req.peer_addr(), host, super::bearer(req.headers()));
    match checked {
        Ok(()) => HttpResponse::Ok()
            .content_type(prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(metrics.encode()),
        Err(e @ (MetricsRefusal::NoToken | MetricsRefusal::WrongToken)) => {
            HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(ErrorBody::new(e.to_string()))
        }
        Err(e) => HttpResponse::Forbidden().json(ErrorBody::new(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::{self, TestRequest};
    use actix_web::App;

    fn lo() -> Option<SocketAddr> {
        Some("127.0.0.1:40000".parse().unwrap())
    }
    fn far() -> Option<SocketAddr> {
        Some("192.0.2.7:40000".parse().unwrap())
    }

    #[test]
    fn loopback_callers_under_an_address_or_localhost_are_answered_and_others_refused() {
        let open = MetricsAccess::default();
        assert_eq!(open.check(lo(), Some("127.0.0.1:5000"), None), Ok(()));
        assert_eq!(open.check(lo(), Some("localhost:5000"), None), Ok(()));
        assert_eq!(
            open.check(lo(), Some("evil.example:5000"), None),
            Err(MetricsRefusal::Host),
            "a rebound name"
        );
        assert_eq!(
            open.check(far(), Some("10.0.0.1:5000"), None),
            Err(MetricsRefusal::NotLoopback)
        );
        assert_eq!(
            open.check(None, Some("127.0.0.1"), None),
            Err(MetricsRefusal::NotLoopback)
        );
        let mapped = Some("[::ffff:127.0.0.1]:40000".parse().unwrap());
        assert_eq!(
            open.check(mapped, Some("127.0.0.1:5000"), None),
            Ok(()),
            "loopback on a dual-stack listener"
        );
        assert_eq!(
            open.check(far(), Some("10.0.0.1"), Some("guess")),
            Err(MetricsRefusal::NotLoopback),
            "no token configured: none is taken"
        );
    }

    #[test]
    fn with_a_token_any_caller_that_sends_it_is_answered() {
        let access = MetricsAccess::new(Some("s3cret"));
        assert_eq!(
            access.check(far(), Some("any.name"), Some("s3cret")),
            Ok(())
        );
        assert_eq!(
            access.check(far(), Some("any.name"), Some("nope")),
            Err(MetricsRefusal::WrongToken)
        );
        assert_eq!(
            access.check(far(), Some("any.name"), None),
            Err(MetricsRefusal::NoToken)
        );
        assert_eq!(access.check(lo(), Some("127.0.0.1"), None), Ok(()));
        assert!(
            !format!("{access:?}").contains("s3cret"),
            "only its hash is kept"
        );
        assert_eq!(MetricsAccess::new(Some("")), MetricsAccess::default());
    }

    #[test]
    fn a_token_too_short_to_be_safe_is_not_used() {
        let var = format!("OVERLAY_UNIT_METRICS_TOKEN_{}", std::process::id());
        let server = crate::config::ServerConfig {
            metrics_token_env: Some(var.clone()),
            ..Default::default()
        };
        std::env::set_var(&var, "short");
        assert_eq!(MetricsAccess::of(&server), MetricsAccess::default());
        std::env::set_var(&var, "a-long-enough-token-0123");
        assert_eq!(
            MetricsAccess::of(&server),
            MetricsAccess::new(Some("a-long-enough-token-0123"))
        );
        std::env::remove_var(&var);
    }

    #[actix_rt::test]
    async fn requests_are_counted_once_by_route_template_and_status() {
        let metrics = Metrics::new("peer");
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(metrics.clone()))
                .wrap(actix_web::middleware::from_fn(count_http))
                .wrap(actix_web::middleware::from_fn(count_http))
                .route(
                    "/items/{id}",
                    web::get().to(|| async { HttpResponse::Ok().finish() }),
                ),
        )
        .await;
        for uri in ["/items/1", "/items/2", "/nowhere/secret-id"] {
            test::call_service(&app, TestRequest::get().uri(uri).to_request()).await;
        }
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"overlay_http_requests_total{role="peer",method="GET",route="/items/{id}",code="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"overlay_http_requests_total{role="peer",method="GET",route="unmatched",code="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("/items/1") && !text.contains("secret-id"),
            "never a raw path: {text}"
        );
        assert!(
            text.contains(
                r#"overlay_http_request_duration_seconds_count{role="peer",route="/items/{id}"} 2"#
            ),
            "{text}"
        );
    }

    #[actix_rt::test]
    async fn the_route_answers_a_loopback_caller_and_refuses_a_remote_one() {
        let metrics = Metrics::new("relay");
        metrics.sse_listeners("relay_attach").set(3);
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(metrics.clone()))
                .app_data(web::Data::new(MetricsAccess::new(Some("tok"))))
                .route("/metrics", web::get().to(super::metrics)),
        )
        .await;
        let get = |peer: Option<SocketAddr>| {
            let r = TestRequest::get()
                .uri("/metrics")
                .insert_header(("host", "127.0.0.1:1"));
            match peer {
                Some(p) => r.peer_addr(p),
                None => r,
            }
        };
        let res = test::call_service(&app, get(lo()).to_request()).await;
        assert_eq!(res.status(), 200);
        let body = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
        assert!(
            body.contains(r#"overlay_sse_listeners{role="relay",stream="relay_attach"} 3"#),
            "{body}"
        );
        let res = test::call_service(&app, get(far()).to_request()).await;
        assert_eq!(res.status(), 401);
        let with_token = get(far()).insert_header(("authorization", "Bearer tok"));
        let res = test::call_service(&app, with_token.to_request()).await;
        assert_eq!(res.status(), 200);
    }
}

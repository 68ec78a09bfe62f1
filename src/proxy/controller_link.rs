//! The [`ControllerLink`] actor: this proxy's side of the control plane. Registers at start
//! (retrying with backoff while the controller is down), heartbeats, re-registers when the
//! controller forgot it (404), follows the table stream
//! (`GET /api/v1/proxies/{proxy_id}/table/stream`, SSE of `TableUpdate`) and, while the stream is
//! down, polls `GET /api/getendpoints` every few seconds and retries the stream.
//!
//! Registrations and heartbeats say which of this proxy's AI endpoints have a key here (names
//! and yes/no, never a key), so the dashboard shows the truth of the machine the proxy runs on.
//!
//! Every table it learns goes to the [`Router`] at once; it routes nothing itself and never
//! touches the outbox. One awc `Client`, built once; requests, retry timing and the SSE parser
//! are the [`crate::hop`] ones.

use std::time::Duration;

use actix::fut::wrap_future;
use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, SpawnHandle};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};

use super::ai::keys::KeySource;
use super::ai::target::resolve;
use super::router::{Router, SetTable, TableSource};
use crate::config::AiEndpointConfig;
use crate::hop::backoff::{full_jitter_ms, XorShift};
use crate::hop::post::{self, Answer};
use crate::hop::sse::SseParser;
use crate::wire::control_plane::{
    AiEndpoint, HeartbeatRequest, KeyReport, RegisterRequest, TableUpdate, NATIVE_PROTOCOL,
};
use crate::wire::host_port::HostPort;
use crate::wire::legacy::{Endpoints, ErrorBody, Registered};

/// How long the fallback waits between polls (and stream retries).
const POLL_EVERY: Duration = Duration::from_secs(5);
/// How long one request to the controller may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a table answer read.
const TABLE_LIMIT: usize = 16 * 1024 * 1024;
/// The most of a heartbeat answer read.
const SMALL_LIMIT: usize = 64 * 1024;

/// What the link needs to know.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub controller_url: String,
    pub proxy_id: String,
    pub instance_name: String,
    /// `host:port` other proxies reach this one at.
    pub advertise: String,
    pub heartbeat_every: Duration,
    /// This proxy's own AI endpoints (its config.yaml): which of them have a key here is
    /// reported with every registration and heartbeat (names and yes/no only, never a key).
    pub ai_endpoints: Vec<AiEndpointConfig>,
}

/// The actor.
pub struct ControllerLink {
    settings: LinkSettings,
    router: Addr<Router>,
    client: awc::Client,
    rng: XorShift,
    registered: bool,
    registering: bool,
    register_failures: u32,
    streaming: bool,
    poll_timer: Option<SpawnHandle>,
}

impl ControllerLink {
    pub fn new(settings: LinkSettings, router: Addr<Router>) -> ControllerLink {
        ControllerLink {
            settings,
            router,
            client: awc::Client::builder().timeout(REQUEST_TIMEOUT).finish(),
            rng: XorShift::from_entropy(),
            registered: false,
            registering: false,
            register_failures: 0,
            streaming: false,
            poll_timer: None,
        }
    }

    fn register_request(&self) -> RegisterRequest {
        let (host, port) = registered_address(&self.settings.advertise);
        RegisterRequest {
            proxy_id: self.settings.proxy_id.clone(),
            instance_name: self.settings.instance_name.clone(),
            host,
            port,
            protocol: Some(NATIVE_PROTOCOL.to_string()),
            api_keys: None,
        }
    }

    /// `POST /api/register`, retried with backoff until it succeeds.
    fn register(&mut self, ctx: &mut Context<Self>) {
        if self.registering {
            return;
        }
        self.registering = true;
        let url = format!("{}/api/register", self.settings.controller_url);
        let req = self.client.post(url);
        let mut body = self.register_request();
        let ai = self.settings.ai_endpoints.clone();
        let call = async move {
            body.api_keys = Some(key_report(&ai).await);
            match post::post_json(req, &body, TABLE_LIMIT, REQUEST_TIMEOUT).await {
                Answer::Ok { body, .. } => {
                    serde_json::from_slice::<Registered>(&body).map_err(|e| e.to_string())
                }
                other => Err(failure(other)),
            }
        };
        ctx.spawn(wrap_future(call).map(|res, act: &mut Self, ctx| {
            act.registering = false;
            match res {
                Ok(reg) => {
                    log::info!(
                        "registered with the controller as {}: {} names",
                        act.settings.proxy_id,
                        reg.endpoints.len()
                    );
                    act.registered = true;
                    act.register_failures = 0;
                    act.router.do_send(SetTable {
                        endpoints: reg.endpoints,
                        online: None,
                        version: 0,
                        source: TableSource::Controller,
                    });
                    if !act.streaming {
                        act.stream(ctx);
                    }
                }
                Err(e) => {
                    act.register_failures += 1;
                    let wait =
                        full_jitter_ms(act.register_failures, 250, 5_000, &mut act.rng).max(100);
                    if act.register_failures == 1 {
                        log::warn!(
                            "cannot register with the controller at {} ({e}); routing from the \
                             cached or configured table, retrying",
                            act.settings.controller_url
                        );
                    }
                    ctx.run_later(Duration::from_millis(wait), |act, ctx| act.register(ctx));
                }
            }
        }));
    }

    /// `POST /api/heartbeat`; a 404 means the controller forgot us: register again.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !self.registered {
            return;
        }
        let url = format!("{}/api/heartbeat", self.settings.controller_url);
        let mut body = HeartbeatRequest {
            proxy_id: self.settings.proxy_id.clone(),
            api_keys: None,
        };
        let req = self.client.post(url);
        let ai = self.settings.ai_endpoints.clone();
        let call = async move {
            body.api_keys = Some(key_report(&ai).await);
            post::post_json(req, &body, SMALL_LIMIT, REQUEST_TIMEOUT).await
        };
        ctx.spawn(
            wrap_future(call).map(|answer, act: &mut Self, ctx| match answer {
                Answer::Ok { .. } => {}
                Answer::RouteMissing { status, .. } if status == StatusCode::NOT_FOUND => {
                    log::info!("the controller forgot this proxy: registering again");
                    act.registered = false;
                    act.register(ctx);
                }
                other => log::debug!("heartbeat failed: {}", failure(other)),
            }),
        );
    }

    /// Follows the table stream until it ends; then falls back to polling.
    fn stream(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.poll_timer.take() {
            ctx.cancel_future(t);
        }
        self.streaming = true;
        let url = format!(
            "{}/api/v1/proxies/{}/table/stream",
            self.settings.controller_url, self.settings.proxy_id
        );
        let router = self.router.clone();
        let idle = (self.settings.heartbeat_every * 3).max(Duration::from_secs(30));
        let req = self
            .client
            .get(url)
            .insert_header((awc::http::header::ACCEPT, "text/event-stream"))
            .send();
        let follow = async move {
            let res = req.await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("answered {}", res.status()));
            }
            follow_tables(res, idle, |t| {
                router.do_send(SetTable {
                    endpoints: t.endpoints,
                    online: Some(t.online),
                    version: t.version,
                    source: TableSource::Controller,
                })
            })
            .await
        };
        ctx.spawn(
            wrap_future(follow).map(|res: Result<(), String>, act: &mut Self, ctx| {
                act.streaming = false;
                if let Err(e) = res {
                    log::info!(
                        "table stream ended ({e}); polling every {}s",
                        POLL_EVERY.as_secs()
                    );
                }
                act.schedule_poll(ctx);
            }),
        );
    }

    fn schedule_poll(&mut self, ctx: &mut Context<Self>) {
        self.poll_timer = Some(ctx.run_later(POLL_EVERY, |act, ctx| {
            act.poll_timer = None;
            act.poll(ctx);
        }));
    }

    /// `GET /api/getendpoints?proxy_id=`, then another try at the stream.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if !self.registered {
            // Registration retries on its own and starts the stream when it succeeds.
            self.register(ctx);
            return;
        }
        let url = format!(
            "{}/api/getendpoints?proxy_id={}",
            self.settings.controller_url, self.settings.proxy_id
        );
        let req = self.client.get(url);
        let call = async move {
            match post::send(req, TABLE_LIMIT, REQUEST_TIMEOUT).await {
                Answer::Ok { body, .. } => serde_json::from_slice::<Endpoints>(&body)
                    .map(Some)
                    .map_err(|e| e.to_string()),
                Answer::RouteMissing { status, .. } if status == StatusCode::NOT_FOUND => Ok(None),
                other => Err(failure(other)),
            }
        };
        ctx.spawn(wrap_future(call).map(|res, act: &mut Self, ctx| {
            match res {
                Ok(Some(e)) => act.router.do_send(SetTable {
                    endpoints: e.endpoints,
                    online: None,
                    version: 0,
                    source: TableSource::Controller,
                }),
                Ok(None) => {
                    act.registered = false;
                    act.register(ctx);
                    return;
                }
                Err(e) => log::debug!("polling the controller failed: {e}"),
            }
            act.stream(ctx);
        }));
    }
}

impl Actor for ControllerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.register(ctx);
        ctx.run_interval(self.settings.heartbeat_every, |act, ctx| act.heartbeat(ctx));
    }
}

/// The advertised `host:port` as the registration carries it: the host without IPv6 brackets;
/// a text that is not a `host:port` goes as the host, with port 0.
fn registered_address(advertise: &str) -> (String, u16) {
    match HostPort::parse(advertise) {
        Ok(a) => (a.bare_host().to_string(), a.port),
        Err(_) => (advertise.trim().to_string(), 0),
    }
}

/// Which of `endpoints` have their key here now, by the key source the proxy calls them with
/// (environment variable, key file, or the provider's usual variable); endpoints that take no
/// key are left out. Reads each key to know it is there and drops it at once.
async fn key_report(endpoints: &[AiEndpointConfig]) -> KeyReport {
    let mut report = KeyReport::new();
    for c in endpoints {
        let Ok(target) = resolve(&AiEndpoint::from_config(c)) else {
            continue; // an endpoint the proxy cannot call says nothing about keys
        };
        if target.key == KeySource::NoKey {
            continue;
        }
        let has = matches!(target.key.load(target.provider).await, Ok(Some(_)));
        report.insert(c.name.to_string(), has);
    }
    report
}

/// Why a request to the controller did not give what was asked, for the log.
fn failure(answer: Answer) -> String {
    match answer {
        Answer::Unreachable { reason } => reason,
        // A refusal says why (a registration with an advertised host that is no host, say).
        Answer::Refused { status, body } => match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => format!("answered {status}: {}", e.message),
            Err(_) => format!("answered {status}"),
        },
        Answer::Ok { status, .. }
        | Answer::Busy { status, .. }
        | Answer::RouteMissing { status, .. } => format!("answered {status}"),
    }
}

/// Reads a table stream (SSE of [`TableUpdate`]) until it fails, ends or stays silent for
/// `idle`, handing each table to `on_table`. Always ends with why it stopped.
async fn follow_tables<S, E>(
    mut chunks: S,
    idle: Duration,
    mut on_table: impl FnMut(TableUpdate),
) -> Result<(), String>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut parser = SseParser::new();
    loop {
        let chunk = match actix_rt::time::timeout(idle, chunks.next()).await {
            Err(_) => return Err(format!("silent for {}s", idle.as_secs())),
            Ok(None) => return Err("the controller closed the stream".to_string()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(bytes))) => bytes,
        };
        // Comments (`: keep-alive`), `event:`, `id:` and `retry:` lines carry no table.
        for event in parser.push(&chunk).map_err(|e| e.to_string())? {
            match serde_json::from_str::<TableUpdate>(&event.data) {
                Ok(t) => on_table(t),
                Err(e) => log::warn!("ignoring a table event that is not a table: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    const TABLE: &str = r#"{"version":7,"endpoints":{"zoë":{"host":"127.0.0.1","port":9}}}"#;

    /// `event: table` carrying [`TABLE`], cut inside the `ë` (a two-byte character).
    fn split_event() -> (Bytes, Bytes) {
        let text = format!(": keep-alive\n\nevent: table\ndata: {TABLE}\n\n");
        let cut = text.find('ë').unwrap() + 1;
        let bytes = Bytes::from(text);
        (bytes.slice(..cut), bytes.slice(cut..))
    }

    async fn tables_of<S>(chunks: S) -> (Vec<TableUpdate>, String)
    where
        S: Stream<Item = Result<Bytes, String>> + Unpin,
    {
        let mut got = Vec::new();
        let end = follow_tables(chunks, Duration::from_secs(5), |t| got.push(t)).await;
        (got, end.unwrap_err())
    }

    #[actix_rt::test]
    async fn a_table_with_a_character_split_across_chunks_arrives_intact() {
        let (a, b) = split_event();
        let (tables, end) = tables_of(stream::iter([Ok(a), Ok(b)])).await;
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].version, 7);
        assert!(tables[0].endpoints.contains_key("zoë"), "{tables:?}");
        assert_eq!(end, "the controller closed the stream");
    }

    #[actix_rt::test]
    async fn an_endless_line_ends_the_stream_instead_of_growing_the_buffer() {
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        let endless = stream::repeat_with(move || Ok(chunk.clone()));
        let (tables, end) = tables_of(endless).await;
        assert!(tables.is_empty());
        assert!(end.contains("longer than"), "{end}");
    }

    #[actix_rt::test]
    async fn a_real_stream_from_a_server_splitting_a_character_is_followed() {
        use actix_web::{web, App, HttpResponse, HttpServer};
        let server = HttpServer::new(|| {
            App::new().route(
                "/stream",
                web::get().to(|| async {
                    let (a, b) = split_event();
                    // The second half comes later, so it cannot share a read with the first.
                    let chunks = stream::unfold(0, move |i| {
                        let (a, b) = (a.clone(), b.clone());
                        async move {
                            match i {
                                0 => Some((Ok::<_, actix_web::Error>(a), 1)),
                                1 => {
                                    actix_rt::time::sleep(Duration::from_millis(50)).await;
                                    Some((Ok(b), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    HttpResponse::Ok()
                        .content_type("text/event-stream")
                        .streaming(chunks)
                }),
            )
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let res = awc::Client::default()
            .get(format!("http://127.0.0.1:{port}/stream"))
            .send()
            .await
            .unwrap();
        let mut got = Vec::new();
        let end = follow_tables(res, Duration::from_secs(5), |t| got.push(t)).await;
        handle.stop(false).await;
        assert_eq!(got.len(), 1, "{end:?}");
        assert!(got[0].endpoints.contains_key("zoë"), "{got:?}");
    }

    #[actix_rt::test]
    async fn the_key_report_says_which_endpoints_have_a_key_here_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "sk-file-key-0123456789\n").unwrap();
        let yaml = format!(
            "- {{name: FROMFILE, provider: anthropic, model: m, api_key_file: '{}'}}\n\
             - {{name: NOFILE, provider: anthropic, model: m, api_key_file: '{}'}}\n\
             - {{name: FROMENV, provider: openai, model: m, api_key_env: PATH}}\n\
             - {{name: UNSET, provider: openai, model: m, api_key_env: OVERLAY_TEST_UNSET_KEY_VAR}}\n\
             - {{name: LOCAL, provider: openai_compatible, model: m, base_url: 'http://127.0.0.1:1/v1'}}\n",
            file.display(),
            dir.path().join("missing").display()
        );
        let endpoints: Vec<AiEndpointConfig> = serde_yaml::from_str(&yaml).unwrap();
        let report = key_report(&endpoints).await;
        let expected: KeyReport = [
            ("FROMFILE".to_string(), true),
            ("NOFILE".to_string(), false),
            ("FROMENV".to_string(), true),
            ("UNSET".to_string(), false),
        ]
        .into();
        assert_eq!(report, expected, "LOCAL takes no key and is not listed");
        let wire = serde_json::to_string(&report).unwrap();
        assert!(!wire.contains("sk-file-key"), "{wire}");
    }

    #[test]
    fn a_refusal_is_logged_with_the_controllers_reason() {
        let body =
            Bytes::from_static(br#"{"status":"error","message":"host `a/b` is not a host name"}"#);
        let why = failure(Answer::Refused {
            status: StatusCode::BAD_REQUEST,
            body,
        });
        assert_eq!(
            why,
            "answered 400 Bad Request: host `a/b` is not a host name"
        );
        let why = failure(Answer::Refused {
            status: StatusCode::BAD_REQUEST,
            body: Bytes::from_static(b"<html>"),
        });
        assert_eq!(why, "answered 400 Bad Request");
    }

    #[test]
    fn the_advertised_address_splits_into_host_and_port() {
        assert_eq!(
            registered_address("127.0.0.1:10001"),
            ("127.0.0.1".into(), 10001)
        );
        assert_eq!(registered_address("[::1]:7"), ("::1".into(), 7));
        assert_eq!(registered_address("bob"), ("bob".into(), 0));
    }
}

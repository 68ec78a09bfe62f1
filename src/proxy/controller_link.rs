//! The [`ControllerLink`] actor: this proxy's side of the control plane. Registers at start
//! (retrying with backoff while the controller is down), heartbeats, re-registers when the
//! controller forgot it (404), follows the table stream
//! (`GET /api/v1/proxies/{proxy_id}/table/stream`, SSE of `TableUpdate`) and, while the stream is
//! down, polls `GET /api/getendpoints` every few seconds and retries the stream.
//!
//! Every table it learns goes to the [`Router`] at once; it routes nothing itself and never
//! touches the outbox. One awc `Client`, built once.

use std::time::Duration;

use actix::fut::wrap_future;
use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, SpawnHandle};
use futures_util::StreamExt;

use super::backoff::{full_jitter_ms, XorShift};
use super::router::{Router, SetTable, TableSource};
use crate::wire::control_plane::{HeartbeatRequest, RegisterRequest, TableUpdate, NATIVE_PROTOCOL};
use crate::wire::legacy::{Endpoints, Registered};

/// How long the fallback waits between polls (and stream retries).
const POLL_EVERY: Duration = Duration::from_secs(5);

/// What the link needs to know.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub controller_url: String,
    pub proxy_id: String,
    pub instance_name: String,
    /// `host:port` other proxies reach this one at.
    pub advertise: String,
    pub heartbeat_every: Duration,
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
            client: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
            rng: XorShift::from_entropy(),
            registered: false,
            registering: false,
            register_failures: 0,
            streaming: false,
            poll_timer: None,
        }
    }

    fn register_request(&self) -> RegisterRequest {
        let (host, port) = split_host_port(&self.settings.advertise);
        RegisterRequest {
            proxy_id: self.settings.proxy_id.clone(),
            instance_name: self.settings.instance_name.clone(),
            host,
            port,
            protocol: Some(NATIVE_PROTOCOL.to_string()),
        }
    }

    /// `POST /api/register`, retried with backoff until it succeeds.
    fn register(&mut self, ctx: &mut Context<Self>) {
        if self.registering {
            return;
        }
        self.registering = true;
        let url = format!("{}/api/register", self.settings.controller_url);
        let req = self.client.post(url).send_json(&self.register_request());
        let call = async move {
            let mut res = req.await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("answered {}", res.status()));
            }
            res.json::<Registered>()
                .limit(16 * 1024 * 1024)
                .await
                .map_err(|e| e.to_string())
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
        let req = self.client.post(url).send_json(&HeartbeatRequest {
            proxy_id: self.settings.proxy_id.clone(),
        });
        ctx.spawn(wrap_future(req).map(|res, act: &mut Self, ctx| match res {
            Ok(r) if r.status() == awc::http::StatusCode::NOT_FOUND => {
                log::info!("the controller forgot this proxy: registering again");
                act.registered = false;
                act.register(ctx);
            }
            Ok(r) if !r.status().is_success() => {
                log::debug!("heartbeat answered {}", r.status())
            }
            Ok(_) => {}
            Err(e) => log::debug!("heartbeat failed: {e}"),
        }));
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
            let mut res = req.await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("answered {}", res.status()));
            }
            let mut parser = SseParser::default();
            loop {
                let chunk = match actix_rt::time::timeout(idle, res.next()).await {
                    Err(_) => return Err(format!("silent for {}s", idle.as_secs())),
                    Ok(None) => return Err("the controller closed the stream".to_string()),
                    Ok(Some(Err(e))) => return Err(e.to_string()),
                    Ok(Some(Ok(bytes))) => bytes,
                };
                for data in parser.push(&chunk) {
                    match serde_json::from_str::<TableUpdate>(&data) {
                        Ok(t) => router.do_send(SetTable {
                            endpoints: t.endpoints,
                            online: Some(t.online),
                            version: t.version,
                            source: TableSource::Controller,
                        }),
                        Err(e) => log::warn!("ignoring a table event that is not a table: {e}"),
                    }
                }
            }
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
        let req = self.client.get(url).send();
        let call = async move {
            let mut res = req.await.map_err(|e| e.to_string())?;
            let status = res.status();
            if status == awc::http::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(format!("answered {status}"));
            }
            res.json::<Endpoints>()
                .limit(16 * 1024 * 1024)
                .await
                .map(Some)
                .map_err(|e| e.to_string())
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

/// `host:port` → (host, port); a missing or bad port gives 0.
fn split_host_port(s: &str) -> (String, u16) {
    match s.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(|c| c == '[' || c == ']').to_string(),
            p.parse().unwrap_or(0),
        ),
        None => (s.to_string(), 0),
    }
}

/// Splits a Server-Sent-Events byte stream into the `data` of each event.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut events = Vec::new();
        while let Some(i) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
            // Comments (`: keep-alive`), `event:`, `id:` and `retry:` lines carry no table.
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_split_across_chunks_is_put_back_together() {
        let mut p = SseParser::default();
        assert!(p
            .push(b": keep-alive\n\nevent: table\ndata: {\"a\":")
            .is_empty());
        assert_eq!(p.push(b"1}\n\ndata: x\r\n\r\n"), ["{\"a\":1}", "x"]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: a\ndata: b\n\n"), ["a\nb"]);
    }

    #[test]
    fn the_advertised_address_splits_into_host_and_port() {
        assert_eq!(
            split_host_port("127.0.0.1:10001"),
            ("127.0.0.1".into(), 10001)
        );
        assert_eq!(split_host_port("[::1]:7"), ("::1".into(), 7));
    }
}

//! The [`RelayLink`] actor: how a proxy that cannot be reached (behind NAT, `reachable: relay`)
//! gets its messages. It keeps one stream open to its relay, outbound (so no inbound port is
//! needed, and the stream's keep-alives hold the NAT's mapping open): it asks a challenge,
//! signs it with this proxy's key, and attaches (`GET /relay/v1/attach`, SSE). Each request
//! the relay carries down the stream is taken exactly as if it had been posted to this proxy's
//! relay route (same signature, sealing, order and replay checks: the relay is trusted with
//! nothing), and the answer, with this proxy's signed acknowledgement, is posted back up
//! (`POST /relay/v1/answer`).
//!
//! The stream is reopened with full-jitter backoff (10 ms doubling to 16 s, as iroh's relay
//! client) whenever it fails, ends, goes silent for three keep-alive periods, or is superseded;
//! `Last-Event-ID` tells the relay the last request received, so one carried but not received
//! is sent again. Requests are taken concurrently; their order is the receiver's rule (each
//! envelope names the one it follows), not the stream's.

use std::sync::Arc;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{Actor, ActorFutureExt, AsyncContext, Context};
use futures_util::StreamExt;

use super::router::Published;
use super::routes::ProxyState;
use crate::hop::backoff::{full_jitter_ms, XorShift};
use crate::hop::post::{self, Answer};
use crate::hop::sse::{SseEvent, SseParser};
use crate::trust::Identity;
use crate::wire::directory::UserState;
use crate::wire::relay::{
    Answered, AttachProof, Attached, Carried, Challenge, ATTACH_HEADER, SESSION_HEADER,
};

/// How long a challenge, the stream's head or an answer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// No timeout on the stream itself (silence is watched per event).
const STREAM_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The first and the longest wait before attaching again.
const RETRY_FIRST_MS: u64 = 10;
const RETRY_MAX_MS: u64 = 16_000;
/// A stream that ran this long was healthy: the next failure starts the backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// After another process with this proxy's key took the stream over (a restart overlapping
/// the old process, or a copied key), wait longer than the relay's window for processes
/// taking turns, so an overlap is not taken for a cloned key.
const AFTER_SUPERSEDED: Duration = Duration::from_secs(65);
/// Carried requests taken at once; the stream is read no further until one is done.
const TAKING_AT_ONCE: usize = 64;
/// Room for what wraps a carried request's body in its event (names, signature, numbers).
const EVENT_OVERHEAD: usize = 64 * 1024;

/// What the link needs.
#[derive(Clone)]
pub struct RelayLinkSettings {
    /// This proxy's user.
    pub me: String,
    /// The relay it attaches to, by name (the signed directory gives its address).
    pub relay: String,
    pub identity: Arc<Identity>,
    /// The overlay client (TLS, relay checked by the name its certificate carries).
    pub client: awc::Client,
    /// A maker of overlay clients with connections of their own: the attach opens the
    /// stream as the first request of a new connection, which the relay holds leanly
    /// (see `relay::front`).
    pub fresh: std::rc::Rc<dyn Fn() -> awc::Client>,
    pub published: tokio::sync::watch::Receiver<Arc<Published>>,
    /// The proxy's routes' state: carried requests are taken through it.
    pub state: ProxyState,
}

/// The actor.
pub struct RelayLink {
    settings: RelayLinkSettings,
    /// This process, for the relay's rule against cloned keys.
    instance: String,
    /// The last request number received (sent as `Last-Event-ID`).
    last_event: Arc<std::sync::atomic::AtomicU64>,
    failures: u32,
    rng: XorShift,
    last_error: Option<String>,
    /// Requests being taken (bounded by [`TAKING_AT_ONCE`]).
    taking: Arc<tokio::sync::Semaphore>,
}

impl RelayLink {
    pub fn new(settings: RelayLinkSettings) -> RelayLink {
        let mut raw = [0u8; 9];
        getrandom::fill(&mut raw).expect("the operating system's random source failed");
        RelayLink {
            settings,
            instance: raw.iter().map(|b| format!("{b:02x}")).collect(),
            last_event: Arc::default(),
            failures: 0,
            rng: XorShift::from_entropy(),
            last_error: None,
            taking: Arc::new(tokio::sync::Semaphore::new(TAKING_AT_ONCE)),
        }
    }

    /// The relay's base URL, from the signed directory.
    fn relay_url(&self) -> Result<String, String> {
        let published = self.settings.published.borrow();
        let relay = &self.settings.relay;
        let entry = published
            .directory
            .user(relay)
            .filter(|e| !e.role.is_user())
            .ok_or_else(|| format!("the signed directory does not list relay {relay} (yet)"))?;
        if entry.state != UserState::Active {
            return Err(format!(
                "relay {relay} is not active in the signed directory"
            ));
        }
        let tls = entry
            .tls
            .as_ref()
            .ok_or_else(|| format!("relay {relay} has no TLS address in the signed directory"))?;
        Ok(crate::hop::overlay::base_url(
            &crate::trust::x509::tls_name(&entry.name),
            tls.port,
        ))
    }

    fn attach(&mut self, ctx: &mut Context<Self>) {
        let base = self.relay_url();
        let settings = self.settings.clone();
        let instance = self.instance.clone();
        let last_event = self.last_event.clone();
        let taking = self.taking.clone();
        let started = std::time::Instant::now();
        let run = async move {
            let base = base?;
            follow(&settings, &base, &instance, &last_event, &taking).await
        };
        ctx.spawn(wrap_future(run).map(
            move |ended: Result<Ended, String>, act: &mut Self, ctx| {
                if started.elapsed() >= HEALTHY_AFTER {
                    act.failures = 0;
                }
                act.failures = act.failures.saturating_add(1);
                let why = match ended {
                    Ok(Ended::Superseded) => {
                        log::warn!(
                            "relay {}: another process with this proxy's key took the stream \
                             over (a restart still overlapping, or a copied key file?); \
                             attaching again in {} s",
                            act.settings.relay,
                            AFTER_SUPERSEDED.as_secs()
                        );
                        act.last_error = None;
                        ctx.run_later(AFTER_SUPERSEDED, |act, ctx| act.attach(ctx));
                        return;
                    }
                    Ok(Ended::Why(why)) | Err(why) => why,
                };
                if act.last_error.as_deref() != Some(why.as_str()) {
                    log::warn!("relay {}: {why}; attaching again", act.settings.relay);
                    act.last_error = Some(why);
                }
                let wait = full_jitter_ms(act.failures, RETRY_FIRST_MS, RETRY_MAX_MS, &mut act.rng);
                ctx.run_later(Duration::from_millis(wait.max(1)), |act, ctx| {
                    act.attach(ctx)
                });
            },
        ));
    }
}

impl Actor for RelayLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.attach(ctx);
    }
}

/// How a stream that was attached ended.
enum Ended {
    /// A newer stream of this proxy's key took over.
    Superseded,
    Why(String),
}

/// One attach: challenge, proof, stream; ends with why (Ok: the stream ran and ended).
async fn follow(
    settings: &RelayLinkSettings,
    base: &str,
    instance: &str,
    last_event: &Arc<std::sync::atomic::AtomicU64>,
    taking: &Arc<tokio::sync::Semaphore>,
) -> Result<Ended, String> {
    let answer = post::send(
        settings.client.get(format!("{base}/relay/v1/challenge")),
        64 * 1024,
        REQUEST_TIMEOUT,
    )
    .await;
    let challenge: Challenge = match answer {
        Answer::Ok { body, .. } => {
            serde_json::from_slice(&body).map_err(|e| format!("its challenge is not one: {e}"))?
        }
        other => return Err(format!("no challenge: {}", other.reason())),
    };
    if !challenge.relay.eq_ignore_ascii_case(&settings.relay) {
        return Err(format!(
            "it calls itself {}, not {}",
            challenge.relay, settings.relay
        ));
    }
    let proof = AttachProof::sign(
        &settings.identity,
        &settings.me,
        instance,
        &challenge,
        crate::wire::now_ms(),
    );
    let mut req = (settings.fresh)()
        .get(format!("{base}/relay/v1/attach"))
        .timeout(STREAM_FOREVER)
        .insert_header((ATTACH_HEADER, proof.header()))
        .insert_header((awc::http::header::ACCEPT, "text/event-stream"));
    let last = last_event.load(std::sync::atomic::Ordering::Relaxed);
    if last > 0 {
        req = req.insert_header(("Last-Event-ID", last.to_string()));
    }
    let mut res = actix_rt::time::timeout(REQUEST_TIMEOUT, req.send())
        .await
        .map_err(|_| "no answer to the attach".to_string())?
        .map_err(|e| format!("cannot attach: {e}"))?;
    if !res.status().is_success() {
        let body = res.body().limit(64 * 1024).await.unwrap_or_default();
        return Err(format!(
            "it refused the attach: {}",
            crate::hop::post::detail(res.status(), &body)
        ));
    }
    // A request this proxy would take is at most its body limit: a larger event is a broken
    // or hostile relay's, and ends the stream.
    let mut parser =
        SseParser::with_event_limit(settings.state.max_body_bytes.saturating_add(EVENT_OVERHEAD));
    let mut idle = REQUEST_TIMEOUT * 3;
    let mut session: Option<String> = None;
    loop {
        let chunk = match actix_rt::time::timeout(idle, res.next()).await {
            Err(_) => {
                let why = format!("the stream was silent for {} s", idle.as_secs());
                return Ok(Ended::Why(why));
            }
            Ok(None) => return Ok(Ended::Why("the relay closed the stream".into())),
            Ok(Some(Err(e))) => return Ok(Ended::Why(format!("the stream broke: {e}"))),
            Ok(Some(Ok(bytes))) => bytes,
        };
        let events = parser.push(&chunk).map_err(|e| e.to_string())?;
        for SseEvent { event, data } in events {
            match event.as_deref() {
                Some("attached") => {
                    let hello: Attached = serde_json::from_str(&data)
                        .map_err(|e| format!("its `attached` event is not one: {e}"))?;
                    idle = Duration::from_millis(hello.ping_every_ms.max(1000)) * 3;
                    log::info!("attached to relay {}", settings.relay);
                    session = Some(hello.session);
                }
                Some("request") => {
                    let Some(session) = session.clone() else {
                        return Err("a request came before the stream was attached".into());
                    };
                    let carried: Carried = match serde_json::from_str(&data) {
                        Ok(c) => c,
                        Err(e) => {
                            log::warn!("relay {}: a request that is not one: {e}", settings.relay);
                            continue;
                        }
                    };
                    last_event.fetch_max(carried.n, std::sync::atomic::Ordering::Relaxed);
                    // At most TAKING_AT_ONCE at a time: past that, the stream waits.
                    let permit = taking
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|e| e.to_string())?;
                    let (settings, base) = (settings.clone(), base.to_string());
                    actix_rt::spawn(async move {
                        take(settings, base, session, carried).await;
                        drop(permit);
                    });
                }
                Some("superseded") => return Ok(Ended::Superseded),
                Some("refused") => return Err(format!("it refused this proxy: {data}")),
                _ => {}
            }
        }
    }
}

/// Takes one carried request and posts the answer back to the relay.
async fn take(settings: RelayLinkSettings, base: String, session: String, carried: Carried) {
    let n = carried.n;
    let answered: Answered = super::routes::relay_api::carried(&settings.state, carried).await;
    let req = settings
        .client
        .post(format!("{base}/relay/v1/answer"))
        .insert_header((SESSION_HEADER, session));
    match post::post_json(req, &answered, 64 * 1024, REQUEST_TIMEOUT).await {
        Answer::Ok { .. } => {}
        // The sender sends again; what was stored is acknowledged then, not stored twice.
        other => log::info!(
            "relay {}: could not answer request {n}: {}",
            settings.relay,
            other.reason()
        ),
    }
}

//! The [`ControllerLink`] actor: this proxy's side of the control plane. It proves who it is
//! with its identity key: a signed registration (`POST /api/v1/register`), or, the first time,
//! a join with a token (`POST /api/v1/join`, the token's secret never sent); both answer a
//! signed snapshot of this proxy's view. Then it follows the directory stream
//! (`GET /api/v1/directory/stream`, resumed with `Last-Event-ID` = the version applied):
//! every snapshot and delta is checked against the pinned root (root → online key → document),
//! must be for this user and unexpired, and goes to the [`Router`], which applies it in version
//! order; the applied version is acknowledged. A delta that does not verify or does not apply
//! makes it ask for a snapshot. It heartbeats (`POST /api/heartbeat`), registers again when the
//! controller forgot it, and retries with backoff while the controller is down.
//!
//! Without a pinned root it does not follow any controller: a table nobody can vouch for is not
//! believed (the proxy routes from its stored view or the config, and the log says how to pin).
//!
//! Registrations and heartbeats say which of this proxy's AI endpoints have a key here (names
//! and yes/no, never a key), so the dashboard shows the truth of the machine the proxy runs on.
//! One awc `Client`, built once; requests, retry timing and the SSE parser are [`crate::hop`]'s.

use std::sync::Arc;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};

use super::ai::keys::KeySource;
use super::ai::target::resolve;
use super::router::{
    AppliedVersion, ApplyView, Router, SetOnline, Settled, ViewRefused, ViewUpdate,
};
use crate::config::AiEndpointConfig;
use crate::hop::backoff::{full_jitter_ms, XorShift};
use crate::hop::post::{self, Answer};
use crate::hop::sse::{SseEvent, SseParser};
use crate::trust::seal::SealPublic;
use crate::trust::{Fingerprint, Identity, JoinToken, Signed};
use crate::wire::control_plane::{AiEndpoint, HeartbeatRequest, KeyReport, NATIVE_PROTOCOL};
use crate::wire::directory::{
    Certified, Delta, DirectoryAck, JoinRequest, Online, RegisterClaim, Snapshot, DELTA_DOMAIN,
    REGISTER_DOMAIN, SNAPSHOT_DOMAIN,
};
use crate::wire::host_port::HostPort;
use crate::wire::legacy::ErrorBody;
use crate::wire::now_ms;

/// How long one request to the controller may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a snapshot answer read.
const VIEW_LIMIT: usize = 16 * 1024 * 1024;
/// The most of a heartbeat answer read.
const SMALL_LIMIT: usize = 64 * 1024;
/// The directory stream's awc timeout: none, in effect (see [`ControllerLink::stream`]).
const STREAM_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The longest wait between two tries at registering.
const MAX_RETRY_MS: u64 = 30_000;
/// The longest wait for a new try while the directory stream cannot be opened (each try is a
/// signed registration, whose answer is a whole snapshot).
const POLL_EVERY: Duration = Duration::from_secs(5);

/// What the link needs to know.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub controller_url: String,
    /// When the controller last answered (for `/healthz`).
    pub contact: crate::web::health::ControllerContact,
    pub proxy_id: String,
    pub instance_name: String,
    /// `host:port` other proxies reach this one at.
    pub advertise: String,
    pub heartbeat_every: Duration,
    /// This proxy's own AI endpoints (its config.yaml): which of them have a key here is
    /// reported with every registration and heartbeat (names and yes/no only, never a key).
    pub ai_endpoints: Vec<AiEndpointConfig>,
    /// This proxy's identity key.
    pub identity: Arc<Identity>,
    /// Its sealing keys: the current one is registered (and so published). A relay has none.
    pub seal: Option<Arc<crate::trust::seal::SealKeys>>,
    /// The controller's root fingerprint, pinned.
    pub root: Fingerprint,
    /// A join token, for the first registration (or a replacement of a lost key).
    pub join: Option<JoinToken>,
    /// TLS to the controller (when its URL is `https://`) and the certificate this proxy gets
    /// from it; none without a pinned root.
    pub tls: Option<LinkTls>,
    /// A relay registers as one.
    pub role: crate::wire::directory::Role,
    /// The relay this proxy is reached through (it cannot be reached at its own address).
    pub via: Option<String>,
    /// `reachable: auto`: directly when the controller can reach it, else through `via`.
    pub auto: bool,
    /// A relay's report, sent with each heartbeat.
    pub relay_report: Option<tokio::sync::watch::Receiver<crate::wire::control_plane::RelayReport>>,
}

/// The link's TLS: the proxy's certificate, the overlay client, and the TLS address other
/// proxies reach this one at (registered with the controller).
#[derive(Clone)]
pub struct LinkTls {
    pub tls: super::tls::ProxyTls,
    pub client: awc::Client,
    /// A new overlay client (its own connections), for the calls made before this proxy has
    /// its certificate (a join, a certificate request): their connections, made without one,
    /// must not be reused by the calls that need it.
    pub fresh: std::rc::Rc<dyn Fn() -> awc::Client>,
    pub address: Option<crate::wire::directory::TlsAddress>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkTls({:?}, {:?})", self.tls.leaf, self.address)
    }
}

/// How often the certificate's age is looked at (it is renewed at half its life), and the
/// sealing key's (rotated at [`SEAL_ROTATE_AFTER_MS`]).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(600);
/// The age at which the sealing key is rotated: weekly, as Megolm's default rotation. Bodies
/// sealed to a stolen old key stay readable to the thief (no forward secrecy); rotation bounds
/// what a stolen key opens from then on.
pub const SEAL_ROTATE_AFTER_MS: u64 = 7 * 24 * 3600 * 1000;

/// Replace the sealing key now, and register the new one (the controller publishes it).
/// Answers the new key.
#[derive(actix::Message)]
#[rtype(result = "Result<crate::trust::seal::SealPublic, String>")]
pub struct RotateSeal;

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
    stream_failures: u32,
    /// The next stream asks for a snapshot (no `Last-Event-ID`).
    want_snapshot: bool,
    /// The last refusal logged, so a repeated one is not logged again.
    last_refusal: Option<String>,
    /// Something to register changed while a registration was under way: register again.
    register_again: bool,
    /// The sealing key the controller took with the last registration that worked: a key is
    /// rotated only once the one before is published, so no key still in the directory is
    /// ever dropped.
    seal_registered: Option<SealPublic>,
}

/// Why registering did not work.
enum RegisterFailure {
    /// The controller refused: not joined, pinned to another key, revoked, a bad token.
    NotJoined(String),
    /// Anything else, in words.
    Other(String),
}

impl ControllerLink {
    pub fn new(settings: LinkSettings, router: Addr<Router>) -> ControllerLink {
        // An https:// controller is an overlay member: reached by its TLS name, checked against
        // the pinned root; never downgraded to plain HTTP.
        let client = match (
            &settings.tls,
            settings.controller_url.starts_with("https://"),
        ) {
            (Some(t), true) => t.client.clone(),
            _ => awc::Client::builder().timeout(REQUEST_TIMEOUT).finish(),
        };
        ControllerLink {
            settings,
            router,
            client,
            rng: XorShift::from_entropy(),
            registered: false,
            registering: false,
            register_failures: 0,
            streaming: false,
            stream_failures: 0,
            want_snapshot: false,
            last_refusal: None,
            register_again: false,
            seal_registered: None,
        }
    }

    fn url(&self, path: &str) -> String {
        controller_url(&self.settings, path)
    }

    fn verifier(&self) -> Verifier {
        Verifier {
            settings: self.settings.clone(),
            router: self.router.clone(),
            client: self.client.clone(),
            ack_url: self.url("/api/v1/directory/ack"),
        }
    }

    /// Registers (signed), or, holding a token, joins (which registers too); retried with
    /// backoff until it works.
    fn register(&mut self, ctx: &mut Context<Self>) {
        if self.registering {
            self.register_again = true;
            return;
        }
        self.register_again = false;
        self.registering = true;
        let ai = self.settings.ai_endpoints.clone();
        let register = self.client.post(self.url("/api/v1/register"));
        // A join may be made before this proxy has a certificate: on a client of its own, so
        // its connection is not reused by the calls that need one.
        let join = match &self.settings.tls {
            Some(t) if self.settings.controller_url.starts_with("https://") => (t.fresh)(),
            _ => self.client.clone(),
        }
        .post(self.url("/api/v1/join"));
        let verifier = self.verifier();
        let settings = self.settings.clone();
        let call = async move {
            // No certificate yet, or half its life gone: one first, so what follows goes with
            // it; holding a join token, the join first (it needs none), then the certificate.
            let mut cert_after = false;
            if wants_certificate(&settings) {
                if settings.join.is_some() {
                    cert_after = true;
                } else {
                    get_certificate(&settings).await?;
                }
            }
            let keys = key_report(&ai).await;
            let seal = settings.seal.as_ref().map(|s| s.current().0);
            let claim = sign_claim(&settings, keys, seal);
            // With a token, a join: it registers too, and for a key the controller pins
            // already it is only that (the token is not looked at, nor used up), so a proxy
            // started again with the same token file just registers. It is also how a new key
            // replaces a lost or revoked one, with a replace token.
            let answer = match &settings.join {
                Some(token) => {
                    let request = JoinRequest {
                        token_id: token.id().to_string(),
                        proof: token.proof(
                            &settings.root,
                            &settings.instance_name,
                            &settings.identity.public(),
                        ),
                        claim,
                    };
                    post::post_json(join, &request, VIEW_LIMIT, REQUEST_TIMEOUT).await
                }
                None => post::post_json(register, &claim, VIEW_LIMIT, REQUEST_TIMEOUT).await,
            };
            let body = match answer {
                Answer::Ok { body, .. } => body,
                Answer::Refused { status, body } if status == StatusCode::FORBIDDEN => {
                    let why = message_of(&body).unwrap_or_else(|| "refused".into());
                    return Err(RegisterFailure::NotJoined(why));
                }
                Answer::RouteMissing { status, .. } if status == StatusCode::NOT_FOUND => {
                    return Err(RegisterFailure::Other(
                        "the controller has no /api/v1/register: it is a release before signed \
                         directories (or not an overlay controller); upgrade it"
                            .into(),
                    ))
                }
                other => return Err(RegisterFailure::Other(failure(other))),
            };
            let version = verifier
                .snapshot_answer(&body)
                .await
                .map_err(RegisterFailure::Other)?;
            if cert_after {
                get_certificate(&settings).await?;
                verifier.acknowledge(version).await;
            }
            Ok((version, seal))
        };
        ctx.spawn(wrap_future(call).map(|res, act: &mut Self, ctx| {
            act.registering = false;
            // The first try is over, whatever its outcome: a controller that refuses or cannot
            // be reached leaves the stored view as fresh as it can be.
            act.router.do_send(Settled);
            match res {
                Ok((version, seal)) => {
                    act.seal_registered = seal;
                    log::info!(
                        "registered with the controller as {} (key {}): directory version \
                         {version}",
                        act.settings.proxy_id,
                        act.settings.identity.fingerprint()
                    );
                    act.registered = true;
                    act.register_failures = 0;
                    act.settings.contact.heard();
                    act.last_refusal = None;
                    if !act.streaming {
                        act.stream(ctx);
                    }
                    if act.register_again {
                        act.register(ctx);
                    }
                }
                Err(e) => {
                    act.register_failures += 1;
                    let why = match e {
                        RegisterFailure::NotJoined(why) => format!(
                            "{why} (this proxy's key is {})",
                            act.settings.identity.fingerprint()
                        ),
                        RegisterFailure::Other(why) => why,
                    };
                    if act.last_refusal.as_deref() != Some(why.as_str()) {
                        log::warn!(
                            "cannot register with the controller at {}: {why}; routing from \
                             the stored or configured table, retrying",
                            act.settings.controller_url
                        );
                        act.last_refusal = Some(why);
                    }
                    let wait =
                        full_jitter_ms(act.register_failures, 250, MAX_RETRY_MS, &mut act.rng)
                            .max(100);
                    ctx.run_later(Duration::from_millis(wait), |act, ctx| act.register(ctx));
                }
            }
        }));
    }

    /// Rotates the sealing key (see [`RotateSeal`]) and registers the new one.
    fn rotate_seal(&mut self, ctx: &mut Context<Self>) -> Result<SealPublic, String> {
        let Some(keys) = &self.settings.seal else {
            return Err("this member has no sealing key (a relay reads no message)".into());
        };
        let old = keys.current().0;
        if self.seal_registered != Some(old) {
            return Err(format!(
                "the sealing key {} is not registered with the controller yet (it is unreachable \
                 or refuses this proxy): a new key would drop one others may still seal to; \
                 try again once it is registered",
                old.id()
            ));
        }
        let new = keys
            .rotate(now_ms())
            .map_err(|e| format!("could not write the new sealing key: {e}"))?;
        log::info!(
            "rotated this proxy's sealing key: {} replaces {} (which still opens what was sealed \
             to it for {}); registering the new one",
            new.id(),
            old.id(),
            crate::hop::backoff::human_duration(crate::trust::seal::RETIRED_KEEP_MS / 1000)
        );
        self.register(ctx);
        Ok(new)
    }

    /// Renews the certificate at half its life (while registered; registering does it too),
    /// and rotates a sealing key older than [`SEAL_ROTATE_AFTER_MS`].
    fn renew(&mut self, ctx: &mut Context<Self>) {
        let due = self.settings.seal.as_ref().is_some_and(|keys| {
            let (current, made_ms) = keys.current();
            made_ms.saturating_add(SEAL_ROTATE_AFTER_MS) <= now_ms()
                && self.seal_registered == Some(current)
        });
        if due {
            if let Err(e) = self.rotate_seal(ctx) {
                log::warn!("{e}; trying again later");
            }
        }
        if !self.registered || !wants_certificate(&self.settings) {
            return;
        }
        let settings = self.settings.clone();
        ctx.spawn(
            wrap_future(async move { get_certificate(&settings).await }).map(
                |res, _act: &mut Self, _ctx| {
                    if let Err(RegisterFailure::NotJoined(e) | RegisterFailure::Other(e)) = res {
                        log::warn!("could not renew this proxy's TLS certificate: {e}; retrying");
                    }
                },
            ),
        );
    }

    /// `POST /api/heartbeat`; a 404 means the controller forgot us: register again.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !self.registered {
            return;
        }
        let url = self.url("/api/heartbeat");
        let mut body = HeartbeatRequest {
            proxy_id: self.settings.proxy_id.clone(),
            api_keys: None,
            relay: self
                .settings
                .relay_report
                .as_ref()
                .map(|r| r.borrow().clone()),
        };
        let req = self.client.post(&url);
        let ai = self.settings.ai_endpoints.clone();
        let settings = self.settings.clone();
        let call = async move {
            body.api_keys = Some(key_report(&ai).await);
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let req = req.insert_header(call_signature(&settings, "POST", &url, &bytes));
            post::post_encoded(req, bytes, SMALL_LIMIT, REQUEST_TIMEOUT).await
        };
        ctx.spawn(
            wrap_future(call).map(|answer, act: &mut Self, ctx| match answer {
                Answer::Ok { .. } => act.settings.contact.heard(),
                Answer::RouteMissing { status, .. } if status == StatusCode::NOT_FOUND => {
                    log::info!("the controller forgot this proxy: registering again");
                    act.registered = false;
                    act.register(ctx);
                }
                other => log::debug!("heartbeat failed: {}", failure(other)),
            }),
        );
    }

    /// Follows the directory stream until it ends; then tries again (or registers again).
    fn stream(&mut self, ctx: &mut Context<Self>) {
        self.streaming = true;
        let url = self.url(&format!(
            "/api/v1/directory/stream?proxy_id={}",
            self.settings.proxy_id
        ));
        let router = self.router.clone();
        let client = self.client.clone();
        let want_snapshot = std::mem::take(&mut self.want_snapshot);
        let idle = (self.settings.heartbeat_every * 3).max(Duration::from_secs(30));
        let verifier = self.verifier();
        let follow = async move {
            let applied = if want_snapshot {
                None
            } else {
                router.send(AppliedVersion).await.ok().flatten()
            };
            // awc carries a request's timeout over to reading its body, which for this stream
            // has no end: the head gets REQUEST_TIMEOUT (below), the events `idle` each.
            let signature = call_signature(&verifier.settings, "GET", &url, b"");
            let mut req = client
                .get(url)
                .timeout(STREAM_FOREVER)
                .insert_header(signature)
                .insert_header((awc::http::header::ACCEPT, "text/event-stream"));
            if let Some(v) = applied {
                req = req.insert_header(("Last-Event-ID", v.to_string()));
            }
            let res = actix_rt::time::timeout(REQUEST_TIMEOUT, req.send())
                .await
                .map_err(|_| StreamEnd::Retry("no answer".into()))?
                .map_err(|e| StreamEnd::Retry(e.to_string()))?;
            match res.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => {
                    return Err(StreamEnd::Register(format!("answered {}", res.status())))
                }
                s => return Err(StreamEnd::Retry(format!("answered {s}"))),
            }
            follow_events(res, idle, |event| verifier.on_event(event)).await
        };
        ctx.spawn(
            wrap_future(follow).map(|res: Result<(), StreamEnd>, act: &mut Self, ctx| {
                act.streaming = false;
                match res {
                    Err(StreamEnd::Snapshot(why)) => {
                        log::warn!("{why}: asking the controller for a snapshot");
                        act.want_snapshot = true;
                        ctx.run_later(Duration::from_millis(200), |act, ctx| act.stream(ctx));
                    }
                    other => {
                        // The stream ran (the controller may have restarted): start over at
                        // once; it could not be opened: back off, up to POLL_EVERY. Either way
                        // a signed registration first: its answer is a snapshot, so a proxy
                        // whose stream keeps failing still learns every change that often.
                        let why = match other {
                            Err(StreamEnd::Ended(why)) => {
                                act.stream_failures = 0;
                                why
                            }
                            Err(StreamEnd::Retry(why)) | Err(StreamEnd::Register(why)) => {
                                act.stream_failures += 1;
                                why
                            }
                            _ => "it ended".to_string(),
                        };
                        let wait = full_jitter_ms(
                            act.stream_failures.max(1),
                            250,
                            POLL_EVERY.as_millis() as u64,
                            &mut act.rng,
                        )
                        .max(100);
                        log::info!(
                            "directory stream ended ({why}); registering again in {wait} ms"
                        );
                        act.registered = false;
                        ctx.run_later(Duration::from_millis(wait), |act, ctx| act.register(ctx));
                    }
                }
            }),
        );
    }
}

/// Why a directory stream stopped.
#[derive(Debug)]
enum StreamEnd {
    /// The connection failed or ended: try again (resuming from the applied version).
    Retry(String),
    /// The stream ran and then ended.
    Ended(String),
    /// A document did not verify or did not apply: a snapshot is needed.
    Snapshot(String),
    /// The controller does not know this proxy (or will not serve it): register again.
    Register(String),
}

/// Checks documents against the pinned root and hands them to the router.
#[derive(Clone)]
struct Verifier {
    /// Whose documents it takes (root, user, proxy id), and the key its acknowledgements are
    /// signed with.
    settings: LinkSettings,
    router: Addr<Router>,
    client: awc::Client,
    ack_url: String,
}

impl Verifier {
    /// A snapshot checked: for this user, unexpired, signed under the pinned root.
    fn check_snapshot(&self, data: &[u8], now: u64) -> Result<Snapshot, String> {
        let doc: Certified<Snapshot> =
            serde_json::from_slice(data).map_err(|e| format!("not a signed snapshot: {e}"))?;
        let s = doc
            .verify(&self.settings.root, SNAPSHOT_DOMAIN, now)
            .map_err(|e| format!("a snapshot that does not verify: {e}"))?;
        self.check_for_me(&s.for_user, s.expires_at_ms, now)?;
        Ok(s)
    }

    /// A delta checked the same way.
    fn check_delta(&self, data: &[u8], now: u64) -> Result<Delta, String> {
        let doc: Certified<Delta> =
            serde_json::from_slice(data).map_err(|e| format!("not a signed delta: {e}"))?;
        let d = doc
            .verify(&self.settings.root, DELTA_DOMAIN, now)
            .map_err(|e| format!("a delta that does not verify: {e}"))?;
        self.check_for_me(&d.for_user, d.expires_at_ms, now)?;
        Ok(d)
    }

    fn check_for_me(&self, user: &str, expires_at_ms: u64, now: u64) -> Result<(), String> {
        let me = &self.settings.instance_name;
        if !user.eq_ignore_ascii_case(me) {
            return Err(format!("a document for {user}, not for {me}"));
        }
        if expires_at_ms <= now {
            return Err(format!(
                "a document that expired {} s ago",
                (now - expires_at_ms) / 1000
            ));
        }
        Ok(())
    }

    /// Hands a verified document to the router; acknowledges the version applied.
    /// Tells the controller this proxy applied directory `version` (the dashboard shows who is
    /// behind). Best effort: a failure is logged, and the next version is acknowledged anyway.
    async fn acknowledge(&self, version: u64) {
        let ack = DirectoryAck {
            proxy_id: self.settings.proxy_id.clone(),
            version,
        };
        let bytes = serde_json::to_vec(&ack).unwrap_or_default();
        let req = self
            .client
            .post(&self.ack_url)
            .insert_header(call_signature(
                &self.settings,
                "POST",
                &self.ack_url,
                &bytes,
            ));
        match post::post_encoded(req, bytes, SMALL_LIMIT, REQUEST_TIMEOUT).await {
            Answer::Ok { .. } => {}
            other => log::debug!(
                "could not acknowledge directory version {version}: {}",
                failure(other)
            ),
        }
    }

    async fn apply(&self, update: ViewUpdate) -> Result<u64, ViewRefused> {
        let applied = self
            .router
            .send(ApplyView(update))
            .await
            .map_err(|e| ViewRefused::Storage(e.to_string()))??;
        if lacks_certificate(&self.settings) {
            // Right after a join, before the certificate: the controller would refuse the
            // acknowledgement, and the client would keep that certificate-less connection for
            // the next calls. The registration acknowledges it once the certificate is here.
            log::debug!(
                "directory version {applied} is acknowledged once this proxy has its certificate"
            );
            return Ok(applied);
        }
        self.acknowledge(applied).await;
        Ok(applied)
    }

    /// The snapshot a registration or a join answered.
    async fn snapshot_answer(&self, body: &[u8]) -> Result<u64, String> {
        let s = self.check_snapshot(body, now_ms())?;
        match self.apply(ViewUpdate::Snapshot(s)).await {
            Ok(v) => Ok(v),
            // An older version than ours: a replay; the stream brings the current one.
            Err(ViewRefused::Older { got, have }) => {
                log::warn!("refused directory version {got}: version {have} is applied already");
                Ok(have)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// One event of the directory stream.
    async fn on_event(&self, event: SseEvent) -> Result<(), StreamEnd> {
        let now = now_ms();
        match event.event.as_deref() {
            Some("snapshot") => {
                let s = self.check_snapshot(event.data.as_bytes(), now);
                let s = s.map_err(StreamEnd::Snapshot)?;
                match self.apply(ViewUpdate::Snapshot(s)).await {
                    Ok(_) => Ok(()),
                    Err(ViewRefused::Older { got, have }) => {
                        log::warn!(
                            "refused directory version {got} from the controller: version \
                             {have} is applied already (no rollback)"
                        );
                        Ok(())
                    }
                    Err(e) => Err(StreamEnd::Retry(e.to_string())),
                }
            }
            Some("delta") => {
                let d = self
                    .check_delta(event.data.as_bytes(), now)
                    .map_err(StreamEnd::Snapshot)?;
                match self.apply(ViewUpdate::Delta(d)).await {
                    Ok(_) => Ok(()),
                    Err(ViewRefused::Older { got, have }) => {
                        log::warn!(
                            "refused a delta to version {got}: version {have} is applied already"
                        );
                        Ok(())
                    }
                    Err(e @ ViewRefused::Gap { .. }) => Err(StreamEnd::Snapshot(e.to_string())),
                    Err(e) => Err(StreamEnd::Retry(e.to_string())),
                }
            }
            Some("online") => {
                if let Ok(o) = serde_json::from_str::<Online>(&event.data) {
                    self.router.do_send(SetOnline(o.names));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl actix::Handler<RotateSeal> for ControllerLink {
    type Result = Result<SealPublic, String>;

    fn handle(&mut self, _: RotateSeal, ctx: &mut Context<Self>) -> Self::Result {
        self.rotate_seal(ctx)
    }
}

impl Actor for ControllerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.register(ctx);
        ctx.run_interval(self.settings.heartbeat_every, |act, ctx| act.heartbeat(ctx));
        ctx.run_interval(CERT_CHECK_EVERY, |act, ctx| act.renew(ctx));
    }
}

/// `path` at the controller: over TLS, by its TLS name (`https://controller.overlay:PORT`; the
/// overlay client finds its address in the configured URL).
fn controller_url(settings: &LinkSettings, path: &str) -> String {
    let url = &settings.controller_url;
    if settings.tls.is_some() && url.starts_with("https://") {
        let (_, port, prefix) = crate::wire::control_plane::split_url(url);
        return format!(
            "{}{prefix}{path}",
            crate::hop::overlay::base_url(crate::trust::x509::CONTROLLER_TLS_NAME, port)
        );
    }
    format!("{url}{path}")
}

/// Asks the controller for a certificate for this proxy's key (a signed request; no
/// certificate needed, so an expired one is renewed too) and installs it. Without TLS to the
/// controller, nothing to do.
async fn get_certificate(settings: &LinkSettings) -> Result<(), RegisterFailure> {
    use base64::Engine;
    let Some(t) = &settings.tls else {
        return Ok(());
    };
    if !settings.controller_url.starts_with("https://") {
        return Ok(());
    }
    let csr = crate::trust::x509::csr(&settings.identity, &settings.instance_name)
        .map_err(|e| RegisterFailure::Other(e.to_string()))?;
    let body = serde_json::to_vec(&crate::wire::directory::CertificateRequest {
        instance_name: settings.instance_name.clone(),
        csr: base64::engine::general_purpose::STANDARD.encode(csr),
    })
    .unwrap_or_default();
    let url = controller_url(settings, "/api/v1/certificate");
    // Made without a certificate (or before this one): on a client of its own, so the calls
    // that follow open connections that present the new certificate.
    let once = (t.fresh)();
    let req = once
        .post(&url)
        .insert_header(call_signature(settings, "POST", &url, &body))
        .insert_header((awc::http::header::CONTENT_TYPE, "application/json"));
    match post::post_encoded(req, body, VIEW_LIMIT, REQUEST_TIMEOUT).await {
        Answer::Ok { body, .. } => {
            let answer: crate::wire::directory::CertificateAnswer =
                serde_json::from_slice(&body)
                    .map_err(|e| RegisterFailure::Other(format!("the certificate answer: {e}")))?;
            t.tls
                .install(&settings.identity, &answer.chain_pem)
                .map_err(|e| RegisterFailure::Other(format!("the certificate issued: {e}")))?;
            if let Some((_, to)) = t.tls.leaf.validity() {
                log::info!(
                    "got a TLS certificate from the controller, valid until {}",
                    crate::wire::rfc3339_ms(to)
                );
            }
            Ok(())
        }
        Answer::Refused { status, body } if status == StatusCode::FORBIDDEN => Err(
            RegisterFailure::NotJoined(message_of(&body).unwrap_or_else(|| "refused".into())),
        ),
        other => Err(RegisterFailure::Other(format!(
            "asking for a certificate: {}",
            failure(other)
        ))),
    }
}

/// Whether this proxy needs a (new) certificate now.
/// Whether calls to the controller need a certificate this proxy does not hold (yet, or any
/// more).
fn lacks_certificate(settings: &LinkSettings) -> bool {
    match &settings.tls {
        Some(t) if settings.controller_url.starts_with("https://") => t
            .tls
            .leaf
            .validity()
            .is_none_or(|(_, not_after)| not_after <= now_ms()),
        _ => false,
    }
}

fn wants_certificate(settings: &LinkSettings) -> bool {
    match &settings.tls {
        Some(t) if settings.controller_url.starts_with("https://") => {
            super::tls::needs_certificate(t.tls.leaf.validity(), now_ms())
        }
        _ => false,
    }
}

/// The `overlay-signature` header of a call to the controller at `url` (its path and query are
/// what is signed), from this proxy's user, for the controller (its root fingerprint).
fn call_signature(
    settings: &LinkSettings,
    method: &str,
    url: &str,
    body: &[u8],
) -> (String, String) {
    use crate::trust::request::{sign, RequestLine, SIGNATURE_HEADER};
    let target = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
        .unwrap_or("/");
    let value = sign(
        &settings.identity,
        &RequestLine {
            method,
            target,
            body,
        },
        &settings.instance_name,
        settings.root.as_str(),
        now_ms(),
    );
    (SIGNATURE_HEADER.to_string(), value)
}

/// What this proxy says about itself, signed with its key.
fn sign_claim(
    settings: &LinkSettings,
    api_keys: KeyReport,
    seal: Option<SealPublic>,
) -> Signed<RegisterClaim> {
    let (host, port) = registered_address(&settings.advertise);
    let claim = RegisterClaim {
        tls: settings.tls.as_ref().and_then(|t| t.address.clone()),
        seal,
        proxy_id: settings.proxy_id.clone(),
        instance_name: settings.instance_name.clone(),
        host,
        port,
        protocol: NATIVE_PROTOCOL.to_string(),
        root: settings.root.clone(),
        time_ms: now_ms(),
        api_keys: Some(api_keys),
        role: settings.role,
        via: settings.via.clone(),
        auto: settings.auto,
    };
    Signed::sign(REGISTER_DOMAIN, &claim, &settings.identity)
}

/// The `message` of a refusal in the legacy error shape.
fn message_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|e| e.message)
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

/// Reads an SSE stream until it fails, ends or stays silent for `idle`, handing each event to
/// `on_event` (one at a time: the next is read once it is done). Always ends with why.
async fn follow_events<S, E, F>(
    mut chunks: S,
    idle: Duration,
    mut on_event: impl FnMut(SseEvent) -> F,
) -> Result<(), StreamEnd>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<(), StreamEnd>>,
{
    let mut parser = SseParser::new();
    loop {
        let chunk = match actix_rt::time::timeout(idle, chunks.next()).await {
            Err(_) => return Err(StreamEnd::Ended(format!("silent for {}s", idle.as_secs()))),
            Ok(None) => {
                return Err(StreamEnd::Ended(
                    "the controller closed the stream".to_string(),
                ))
            }
            Ok(Some(Err(e))) => return Err(StreamEnd::Ended(e.to_string())),
            Ok(Some(Ok(bytes))) => bytes,
        };
        // Comments (`: keep-alive`), `id:` and `retry:` lines carry no event of their own.
        let events = parser
            .push(&chunk)
            .map_err(|e| StreamEnd::Ended(e.to_string()))?;
        for event in events {
            on_event(event).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::control_plane::TableUpdate;
    use futures_util::stream;

    const TABLE: &str = r#"{"version":7,"endpoints":{"zoë":{"host":"127.0.0.1","port":9}}}"#;

    /// `event: table` carrying [`TABLE`], cut inside the `ë` (a two-byte character).
    fn split_event() -> (Bytes, Bytes) {
        let text = format!(": keep-alive\n\nevent: table\ndata: {TABLE}\n\n");
        let cut = text.find('ë').unwrap() + 1;
        let bytes = Bytes::from(text);
        (bytes.slice(..cut), bytes.slice(cut..))
    }

    /// The tables in the events of `chunks`, and why the stream ended.
    async fn tables_of<S>(chunks: S) -> (Vec<TableUpdate>, String)
    where
        S: Stream<Item = Result<Bytes, String>> + Unpin,
    {
        let got = std::cell::RefCell::new(Vec::new());
        let end = follow_events(chunks, Duration::from_secs(5), |e| {
            got.borrow_mut()
                .push(serde_json::from_str::<TableUpdate>(&e.data).unwrap());
            async { Ok(()) }
        })
        .await;
        let why = match end.unwrap_err() {
            StreamEnd::Ended(why) => why,
            other => panic!("{other:?}"),
        };
        (got.into_inner(), why)
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
        let got = std::cell::RefCell::new(Vec::new());
        let end = follow_events(res, Duration::from_secs(5), |e| {
            got.borrow_mut()
                .push(serde_json::from_str::<TableUpdate>(&e.data).unwrap());
            async { Ok(()) }
        })
        .await;
        let got = got.into_inner();
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

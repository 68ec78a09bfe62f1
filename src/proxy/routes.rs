//! The proxy's HTTP routes, thin: check the request, ask the router, hand the message to the
//! outbox, and answer only once it is durably queued. Three audiences:
//! - its own peer: `POST /api/v1/outbox`, `GET /api/v1/outbox`, `GET /api/v1/directory`,
//!   `POST /api/v1/forget` (a chat was cleared: the AI memory of it goes too);
//! - other proxies of ours: `POST /api/v1/relay`, `POST /api/v1/relay/batch`;
//! - the original's components (compat): `GET /peers`, and `POST /` (any other path) with
//!   `Host: TARGET`.
//!
//! No state lives here; nothing is delivered here.

use actix::Addr;
use actix_web::http::header;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::ai::desk::{AiDesk, ForgetConversation};
use super::error::ProxyError;
use super::outbox::{Enqueue, EnqueueMany, GetStatus, Outbox};
use super::router::{GetTable, ListDirectory, ResolveRoute, Router};
use super::routing::Route;
use super::store::Origin;
use crate::config::InstanceName;
use crate::web::{read_limited, BodyError};
use crate::wire::data_plane::Submitted;
use crate::wire::data_plane::{Accepted, Ack, DeliveryState, Envelope, Forget};
use crate::wire::host_port::HostPort;
use crate::wire::legacy::{self, success, Note, ProxyPeers};

/// What every handler shares (cheap to clone: actor addresses).
#[derive(Clone)]
pub struct ProxyState {
    pub me: InstanceName,
    pub router: Addr<Router>,
    pub outbox: Addr<Outbox>,
    pub desk: Addr<AiDesk>,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
}

/// The route table.
pub fn configure(cfg: &mut web::ServiceConfig, state: ProxyState) {
    let limit = state.max_body_bytes;
    cfg.app_data(web::Data::new(state))
        .app_data(crate::web::json_config(limit))
        .route("/api/v1/outbox", web::post().to(submit))
        .route("/api/v1/outbox", web::get().to(outbox_status))
        .route("/api/v1/outbox/batch", web::post().to(submit_batch))
        .route("/api/v1/relay", web::post().to(relay))
        .route("/api/v1/relay/batch", web::post().to(relay_batch))
        .route("/api/v1/directory", web::get().to(directory))
        .route("/api/v1/forget", web::post().to(forget))
        .route("/peers", web::get().to(peers))
        .route("/peers", web::post().to(legacy_post))
        .default_service(web::to(legacy_post));
}

/// A message's time must be plausible: not more than a day ahead of this proxy's clock.
fn check_time(e: &Envelope) -> Result<(), ProxyError> {
    let horizon = crate::wire::now_ms() + 24 * 3600 * 1000;
    if e.sent_at_ms > horizon {
        return Err(ProxyError::BadRequest(format!(
            "sent_at_ms {} is more than a day in the future",
            e.sent_at_ms
        )));
    }
    Ok(())
}

impl ProxyState {
    /// An envelope from elsewhere (another proxy, a legacy post for our user): its `from` must
    /// be a name a peer can store, and not ours (nobody else speaks for our user); its time
    /// must be plausible. Refused here, it is refused to the sender, never dropped later.
    fn check_incoming(&self, e: &Envelope) -> Result<(), ProxyError> {
        crate::config::InstanceName::parse(&e.from)
            .map_err(|why| ProxyError::BadRequest(format!("from: {why}")))?;
        if self.me.matches(&e.from) {
            return Err(ProxyError::Forbidden(format!(
                "a message from {} can only come from {}'s own peer",
                e.from, self.me
            )));
        }
        check_time(e)?;
        self.check_text(e)
    }

    /// A message the own peer hands over: ours, addressed to someone this proxy can reach.
    async fn check_submission(&self, envelope: &Envelope) -> Result<(), ProxyError> {
        // fixes original: a proxy no longer sends in anyone's name.
        if !self.me.matches(&envelope.from) {
            return Err(ProxyError::Forbidden(format!(
                "this proxy sends only for {}; `from` was `{}`",
                self.me, envelope.from
            )));
        }
        if envelope.to.trim().is_empty() {
            return Err(ProxyError::BadRequest(
                "`to` is empty: name who the message is for".into(),
            ));
        }
        if envelope.conversation.trim().is_empty() {
            return Err(ProxyError::BadRequest("`conversation` is empty".into()));
        }
        self.check_text(envelope)?;
        if self.route(&envelope.to).await? == Route::Unknown {
            return Err(ProxyError::UnknownPeer(envelope.to.clone()));
        }
        Ok(())
    }

    fn check_text(&self, e: &Envelope) -> Result<(), ProxyError> {
        let len = e.body.text().len();
        if len > self.max_message_bytes {
            return Err(ProxyError::TooLarge(format!(
                "message text is {len} bytes; the limit is {} bytes",
                self.max_message_bytes
            )));
        }
        Ok(())
    }

    async fn route(&self, name: &str) -> Result<Route, ProxyError> {
        self.router
            .send(ResolveRoute {
                name: name.to_string(),
            })
            .await
            .map_err(ProxyError::unavailable)
    }

    /// A message another proxy relays: for this proxy's user, and acceptable from elsewhere.
    fn check_relayed(&self, e: &Envelope) -> Result<(), ProxyError> {
        if !self.me.matches(&e.to) {
            return Err(ProxyError::UnknownPeer(e.to.clone()));
        }
        self.check_incoming(e)
    }

    /// Durably queues; Ok(true) when the id had been queued before.
    async fn enqueue(&self, envelope: Envelope, origin: Origin) -> Result<bool, ProxyError> {
        self.outbox
            .send(Enqueue { envelope, origin })
            .await
            .map_err(ProxyError::unavailable)?
    }

    /// Durably queues all in one commit; per envelope, whether its id had been queued before.
    async fn enqueue_many(
        &self,
        envelopes: Vec<Envelope>,
        origin: Origin,
    ) -> Result<Vec<bool>, ProxyError> {
        self.outbox
            .send(EnqueueMany { envelopes, origin })
            .await
            .map_err(ProxyError::unavailable)?
    }
}

/// A batch's envelopes; an empty batch is a mistake of the sender.
fn batch(envelopes: web::Json<Vec<Envelope>>) -> Result<Vec<Envelope>, ProxyError> {
    let envelopes = envelopes.into_inner();
    if envelopes.is_empty() {
        return Err(ProxyError::BadRequest("the batch is empty".into()));
    }
    Ok(envelopes)
}

/// # POST /api/v1/outbox
/// The own peer hands over a message; 202 once it is durably queued (idempotent by id).
async fn submit(
    state: web::Data<ProxyState>,
    envelope: web::Json<Envelope>,
) -> Result<HttpResponse, ProxyError> {
    let envelope = envelope.into_inner();
    state.check_submission(&envelope).await?;
    let id = envelope.id.clone();
    state.enqueue(envelope, Origin::OwnPeer).await?;
    Ok(HttpResponse::Accepted().json(Accepted {
        id,
        state: DeliveryState::Pending,
    }))
}

/// # POST /api/v1/outbox/batch
/// The own peer hands over several messages (`[Envelope]`, in its order); 200 `[Submitted]` in
/// the same order once the accepted ones are durably queued, in one commit. Each message gets
/// the verdict a single submit would get: one refused message does not hold up the others.
async fn submit_batch(
    state: web::Data<ProxyState>,
    envelopes: web::Json<Vec<Envelope>>,
) -> Result<HttpResponse, ProxyError> {
    let envelopes = batch(envelopes)?;
    let mut verdicts = Vec::with_capacity(envelopes.len());
    let mut accepted = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        match state.check_submission(&envelope).await {
            Ok(()) => {
                verdicts.push(Submitted::Accepted(Accepted {
                    id: envelope.id.clone(),
                    state: DeliveryState::Pending,
                }));
                accepted.push(envelope);
            }
            Err(e) => verdicts.push(Submitted::Refused {
                id: envelope.id,
                status: actix_web::ResponseError::status_code(&e).as_u16(),
                message: e.to_string(),
            }),
        }
    }
    if !accepted.is_empty() {
        state.enqueue_many(accepted, Origin::OwnPeer).await?;
    }
    Ok(HttpResponse::Ok().json(verdicts))
}

/// # GET /api/v1/outbox
/// What is still queued, per destination.
async fn outbox_status(state: web::Data<ProxyState>) -> Result<HttpResponse, ProxyError> {
    let status = state
        .outbox
        .send(GetStatus)
        .await
        .map_err(ProxyError::unavailable)?;
    Ok(HttpResponse::Ok().json(status))
}

/// # POST /api/v1/relay
/// Another proxy hands over a message for this proxy's user; 200 Ack once durably stored.
async fn relay(
    state: web::Data<ProxyState>,
    envelope: web::Json<Envelope>,
) -> Result<HttpResponse, ProxyError> {
    let envelope = envelope.into_inner();
    state.check_relayed(&envelope)?;
    let id = envelope.id.clone();
    let duplicate = state.enqueue(envelope, Origin::Relay).await?;
    Ok(HttpResponse::Ok().json(Ack { id, duplicate }))
}

/// # POST /api/v1/relay/batch
/// Another proxy of ours hands over several messages (`[Envelope]`); 200 `[Ack]`, in order, once
/// all are durably stored in one transaction. One bad envelope refuses the whole batch.
async fn relay_batch(
    state: web::Data<ProxyState>,
    envelopes: web::Json<Vec<Envelope>>,
) -> Result<HttpResponse, ProxyError> {
    let envelopes = batch(envelopes)?;
    for e in &envelopes {
        state.check_relayed(e)?;
    }
    let ids: Vec<_> = envelopes.iter().map(|e| e.id.clone()).collect();
    let duplicates = state.enqueue_many(envelopes, Origin::Relay).await?;
    let acks: Vec<Ack> = ids
        .into_iter()
        .zip(duplicates)
        .map(|(id, duplicate)| Ack { id, duplicate })
        .collect();
    Ok(HttpResponse::Ok().json(acks))
}

/// # GET /api/v1/directory
/// Who the own peer can reach: persons (with liveness when known) and AI endpoints.
async fn directory(state: web::Data<ProxyState>) -> Result<HttpResponse, ProxyError> {
    let entries = state
        .router
        .send(ListDirectory)
        .await
        .map_err(ProxyError::unavailable)?;
    Ok(HttpResponse::Ok().json(entries))
}

/// # POST /api/v1/forget
/// The own peer cleared the chat with `with` (every chat when None): the AI memory of that
/// conversation is forgotten, so the next message starts a fresh context. Legacy success.
async fn forget(
    state: web::Data<ProxyState>,
    body: web::Json<Forget>,
) -> Result<HttpResponse, ProxyError> {
    let with = body.into_inner().with;
    let partner = match &with {
        Some(name) => {
            let name = InstanceName::parse(name.trim()).map_err(|e| {
                ProxyError::BadRequest(format!("`with` must name a chat partner: {e}"))
            })?;
            Some(name.to_string())
        }
        None => None,
    };
    let forgotten = state
        .desk
        .send(ForgetConversation { with: partner })
        .await
        .map_err(ProxyError::unavailable)??;
    let what = match &with {
        Some(name) => format!("the conversation with {}", name.trim()),
        None => "every conversation".to_string(),
    };
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("Forgot {what} ({forgotten} remembered turns)"),
    })))
}

/// # GET /peers
/// compat: `{"instance": NAME, "peers": TABLE}`.
async fn peers(state: web::Data<ProxyState>) -> Result<HttpResponse, ProxyError> {
    let table = state
        .router
        .send(GetTable)
        .await
        .map_err(ProxyError::unavailable)?;
    Ok(HttpResponse::Ok().json(ProxyPeers {
        instance: state.me.to_string(),
        peers: (*table).clone(),
    }))
}

/// # POST / (any path), `Host: TARGET`
/// compat: the original's message post, routed on the Host name.
async fn legacy_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ProxyState>,
) -> Result<HttpResponse, ProxyError> {
    if req.method() != Method::POST {
        return Err(ProxyError::NotFound(format!(
            "no route {} {}",
            req.method(),
            req.path()
        )));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))
        .ok_or_else(|| {
            ProxyError::BadRequest("missing Host header: it names who the message is for".into())
        })?;
    let target = HostPort::host_of(&host);
    let body = read_limited(&req, payload, state.max_body_bytes)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => ProxyError::TooLarge(e.to_string()),
            other => ProxyError::BadRequest(other.to_string()),
        })?;
    let msg: legacy::Message = serde_json::from_slice(&body)
        .map_err(|e| ProxyError::BadRequest(format!("invalid JSON: {e}")))?;
    let missing = msg.missing_fields();
    if !missing.is_empty() {
        return Err(ProxyError::BadRequest(format!(
            "Missing required fields: {}",
            missing.join(", ")
        )));
    }
    let mut envelope = msg.to_envelope(&target);
    let name = match state.route(&target).await? {
        // compat: an original proxy hands over a message for our user.
        Route::OwnPeer if !state.me.matches(&envelope.from) => {
            state.check_incoming(&envelope)?;
            state.me.to_string()
        }
        Route::OwnPeer => {
            check_time(&envelope)?;
            state.check_text(&envelope)?;
            state.me.to_string()
        }
        // compat: an original peer hands its own user's message to us, its proxy.
        // fixes original: nobody else may send through this proxy in another's name.
        Route::Proxy { name, .. } | Route::Ai { name, .. } => {
            if !state.me.matches(&envelope.from) {
                return Err(ProxyError::Forbidden(format!(
                    "this proxy sends only {}'s messages, not {}'s",
                    state.me, envelope.from
                )));
            }
            state.check_text(&envelope)?;
            name
        }
        Route::Unknown => return Err(ProxyError::UnknownPeer(target)),
    };
    // The name as the table spells it (the Host header may use any case).
    envelope.to = name.clone();
    // fixes original: "success" only once the message is durably queued.
    state.enqueue(envelope, Origin::Legacy).await?;
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("Message queued for delivery to {name}"),
    })))
}

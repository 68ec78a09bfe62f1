//! The proxy's HTTP routes, thin: check the request, ask the router, hand the message to the
//! outbox, and answer only once it is durably queued. One file per audience:
//! - [`peer_api`]: its own peer: `POST /api/v1/outbox[/batch]`, `GET /api/v1/outbox`,
//!   `GET /api/v1/directory`, `POST /api/v1/forget` (a chat was cleared: the AI memory goes too);
//! - [`relay_api`]: other proxies of ours: `POST /api/v1/relay`, `POST /api/v1/relay/batch`;
//! - [`legacy`]: the original's components (compat): `GET /peers`, and `POST /` (any other
//!   path) with `Host: TARGET`.
//!
//! This file holds what they share: the state, the route table, and the checks of a message.
//! No state lives here; nothing is delivered here.

mod legacy;
mod peer_api;
mod relay_api;

use legacy::{legacy_post, peers};
use peer_api::{directory, forget, outbox_status, submit, submit_batch};
use relay_api::{relay, relay_batch};

use actix::Addr;
use actix_web::web;

use super::ai::desk::AiDesk;
use super::error::ProxyError;
use super::outbox::{Enqueue, EnqueueMany, Outbox};
use super::router::{ResolveRoute, Router};
use super::routing::Route;
use super::store::Origin;
use crate::config::InstanceName;
use crate::wire::data_plane::Envelope;

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
        .route("/api/v1/directory", web::get().to(directory))
        .route("/api/v1/forget", web::post().to(forget))
        .route("/api/v1/relay", web::post().to(relay))
        .route("/api/v1/relay/batch", web::post().to(relay_batch))
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

/// Asks actor `to` and waits for its answer; a stopped actor is "unavailable".
async fn ask<A, M>(to: &Addr<A>, msg: M) -> Result<M::Result, ProxyError>
where
    A: actix::Actor + actix::Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    to.send(msg).await.map_err(ProxyError::unavailable)
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

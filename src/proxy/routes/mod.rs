//! The proxy's HTTP routes, thin: check the request, ask the router, hand the message to the
//! outbox, and answer only once it is durably queued. One file per audience:
//! - [`peer_api`]: its own peer: `POST /api/v1/outbox[/batch]`, `GET /api/v1/outbox`,
//!   `GET /api/v1/directory`, `POST /api/v1/forget` (a chat was cleared: the AI memory goes too),
//!   `POST /api/v1/ai/stop` and `POST /api/v1/ai/regenerate` (an AI's reply: stop it, ask again),
//!   `GET /api/v1/signatures` (what its hops signed and verified), `GET /api/v1/seal` and
//!   `POST /api/v1/seal/rotate` (its sealing key);
//! - [`relay_api`]: other proxies of ours, signed: `POST /api/v1/relay`, `POST /api/v1/relay/batch`;
//! - [`legacy`]: the original's components (compat): `GET /peers`, and `POST /` (any other
//!   path) with `Host: TARGET`.
//!
//! This file holds what they share: the state, the route table, and the checks of a message.
//! No state lives here; nothing is delivered here.

mod legacy;
mod peer_api;
pub(crate) mod relay_api;

use legacy::{legacy_post, peers};
use peer_api::{
    directory, forget, outbox_status, regenerate, rotate_seal, seal_status, signatures, stop_reply,
    submit, submit_batch, tls_status,
};
use relay_api::{relay, relay_batch};

use actix::Addr;
use actix_web::web;

use super::ai::desk::AiDesk;
use super::error::ProxyError;
use super::outbox::{Enqueue, EnqueueMany, Outbox};
use super::router::{ResolveRoute, Router};
use super::routing::Route;
use super::store::{Origin, RelayCheck};
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
    /// How long this proxy remembers the ids it took (see [`super::outbox::seen_horizon_ms`]):
    /// a relayed message sent longer ago than that (less the clock skew allowed) is refused,
    /// as it could be a replay of one whose id is forgotten.
    pub replay_horizon_ms: u64,
    /// The directory as the router last applied it (who is revoked), and whether it was checked
    /// with the controller in this run.
    pub published: tokio::sync::watch::Receiver<std::sync::Arc<crate::proxy::router::Published>>,
    /// The token of the hop to this proxy's own peer (see [`crate::hop::link`]).
    pub link: crate::hop::link::LinkToken,
    /// Checks and signs the hops between proxies.
    pub hops: std::sync::Arc<crate::proxy::signed_hop::SignedHops>,
    /// The link to the controller (none without a pinned root): registers a new sealing key.
    pub controller: Option<Addr<crate::proxy::controller_link::ControllerLink>>,
    /// Its certificate and TLS counts (none without a pinned root).
    pub tls: Option<crate::proxy::tls::ProxyTls>,
    /// The proxies of the original whose unsigned posts are taken (`legacy_proxies`).
    pub legacy: std::sync::Arc<[crate::config::LegacyProxyConfig]>,
    /// The names of the AI endpoints of this proxy's own config.
    pub local_ai: std::sync::Arc<[String]>,
    /// The names its own-peer routes answer besides addresses and localhost: its advertised
    /// host and `server.allowed_hosts` (see [`crate::web::host`]).
    pub hosts: crate::web::host::HostCheck,
}

/// The route table.
pub fn configure(cfg: &mut web::ServiceConfig, state: ProxyState) {
    use crate::hop::link;
    use actix_web::middleware::from_fn;
    let limit = state.max_body_bytes;
    // The own peer's routes act as this user: loopback callers, or the link token.
    // A browser on this machine passes the loopback rule: under a rebound name it is refused
    // by the `Host` check (the relay and legacy routes, for other proxies, have none).
    let own = |path: &str| {
        web::resource(path)
            .wrap(from_fn(link::require))
            .wrap(from_fn(crate::web::host::require))
    };
    cfg.app_data(web::Data::new(state.hosts.clone()))
        .app_data(web::Data::new(link::LinkGuard {
            token: state.link.clone(),
            who: state.me.to_string(),
            other: "peer",
        }))
        .app_data(web::Data::new(state))
        .app_data(crate::web::json_config(limit))
        .service(
            own("/api/v1/outbox")
                .route(web::post().to(submit))
                .route(web::get().to(outbox_status)),
        )
        .service(own("/api/v1/outbox/batch").route(web::post().to(submit_batch)))
        .service(own("/api/v1/directory").route(web::get().to(directory)))
        .service(own("/api/v1/forget").route(web::post().to(forget)))
        .service(own("/api/v1/ai/stop").route(web::post().to(stop_reply)))
        .service(own("/api/v1/ai/regenerate").route(web::post().to(regenerate)))
        .service(own("/api/v1/signatures").route(web::get().to(signatures)))
        .service(own("/api/v1/tls").route(web::get().to(tls_status)))
        .service(own("/api/v1/seal").route(web::get().to(seal_status)))
        .service(own("/api/v1/seal/rotate").route(web::post().to(rotate_seal)))
        .route("/api/v1/relay", web::post().to(relay))
        .route("/api/v1/relay/batch", web::post().to(relay_batch))
        .route("/peers", web::get().to(peers))
        .route("/peers", web::post().to(legacy_post))
        .default_service(web::to(legacy_post));
}

/// The earliest plausible `sent_at_ms`: 2020-01-01T00:00:00Z (no message of ours is older; 0 is
/// a client that forgot to set it, and would be shown as 1970).
const EARLIEST_SENT_AT_MS: u64 = 1_577_836_800_000;

/// A message's time must be plausible: not before 2020 and not more than a day ahead of this
/// proxy's clock. Every route that takes a message checks it (own peer, relays, legacy posts).
fn check_time(e: &Envelope) -> Result<(), ProxyError> {
    check_sent_at(e.sent_at_ms, crate::wire::now_ms())
}

fn check_sent_at(sent_at_ms: u64, now_ms: u64) -> Result<(), ProxyError> {
    if sent_at_ms > now_ms.saturating_add(24 * 3600 * 1000) {
        return Err(ProxyError::BadRequest(format!(
            "sent_at_ms {sent_at_ms} is more than a day in the future"
        )));
    }
    if sent_at_ms < EARLIEST_SENT_AT_MS {
        return Err(ProxyError::BadRequest(format!(
            "sent_at_ms {sent_at_ms} is before 2020-01-01: set it to the time the message was \
             written, in Unix milliseconds"
        )));
    }
    Ok(())
}

/// Only the receiver's own proxy marks an AI error (its AI desk queues those itself, never
/// through these routes). A peer or another proxy claiming one would make the receiver's page
/// show "⚠ X could not answer" for what is only text someone typed.
fn check_not_error(e: &Envelope) -> Result<(), ProxyError> {
    if e.error {
        return Err(ProxyError::BadRequest(
            "`error` may not be set: only the receiver's own proxy marks an AI error".into(),
        ));
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
        // A revoked key's messages are refused everywhere, even ones queued before the
        // revocation: the sender's proxy shows them failed with this reason.
        let published = self.published.borrow().clone();
        self.check_started(&published)?;
        if let Some((at_ms, reason)) = published.directory.revoked(&e.from) {
            return Err(ProxyError::Forbidden(format!(
                "the key of {} was revoked at {} ({reason}): its messages are refused",
                e.from,
                crate::wire::rfc3339_ms(at_ms)
            )));
        }
        check_time(e)?;
        self.check_text(e)
    }

    /// This proxy takes messages from elsewhere only once it has checked its directory with
    /// the controller in this run (else a revocation could be missed).
    fn check_started(&self, published: &crate::proxy::router::Published) -> Result<(), ProxyError> {
        if !published.checked {
            return Err(ProxyError::Retry(
                "this proxy is starting: it checks its directory with the controller before it \
                 takes messages in; try again shortly"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Only this proxy speaks for an AI endpoint (of the directory, or of its own config):
    /// another proxy whose user is named like one (e.g. an instance `BOT` beside the AI `BOT`)
    /// may not post as it.
    fn check_not_ai(
        &self,
        published: &crate::proxy::router::Published,
        from: &str,
    ) -> Result<(), ProxyError> {
        let ai = published
            .directory
            .ai
            .iter()
            .chain(self.local_ai.iter())
            .find(|name| name.eq_ignore_ascii_case(from));
        if let Some(name) = ai {
            return Err(ProxyError::Forbidden(format!(
                "{name} is an AI endpoint here: only {}'s own proxy speaks for it",
                self.me
            )));
        }
        Ok(())
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
        // Issue 13: the own peer's messages get the same time rules as incoming ones, and
        // may not pose as an AI error report.
        check_time(envelope)?;
        self.check_not_too_old(envelope, crate::wire::now_ms())?;
        check_not_error(envelope)?;
        self.check_text(envelope)?;
        if self.route(&envelope.to).await? == Route::Unknown {
            return Err(ProxyError::UnknownPeer(envelope.to.to_string()));
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

    /// The oldest `sent_at_ms` of a message this proxy takes from another proxy: a message sent
    /// earlier could be a replay of one whose id it has forgotten (see
    /// [`ProxyState::replay_horizon_ms`]), less the clock skew allowed.
    fn not_before_ms(&self, now_ms: u64) -> u64 {
        let skew = crate::trust::request::MAX_SKEW_MS;
        now_ms.saturating_sub(self.replay_horizon_ms.saturating_sub(skew))
    }

    /// The own peer's message must be recent enough for any receiver of ours to take it (the
    /// same rule, with the skew to spare): else it would be refused at every attempt.
    fn check_not_too_old(&self, e: &Envelope, now_ms: u64) -> Result<(), ProxyError> {
        let oldest = self.not_before_ms(now_ms) + crate::trust::request::MAX_SKEW_MS;
        if e.sent_at_ms < oldest {
            return Err(ProxyError::BadRequest(format!(
                "sent_at_ms {} ({}) is older than proxies remember the ids they took ({}): no \
                 proxy of ours would take it; check this device's clock",
                e.sent_at_ms,
                crate::wire::rfc3339_ms(e.sent_at_ms),
                crate::hop::backoff::human_duration(self.replay_horizon_ms / 1000)
            )));
        }
        Ok(())
    }

    /// A message another proxy relays: for this proxy's user, and acceptable from elsewhere.
    fn check_relayed(&self, e: &Envelope) -> Result<(), ProxyError> {
        if !self.me.matches(&e.to) {
            return Err(ProxyError::UnknownPeer(e.to.to_string()));
        }
        self.check_incoming(e)
    }
}

/// A relayed envelope as this proxy accepts it: `error` cleared, `auto_reply` kept.
///
/// Issue 13: only the receiver's own proxy marks an AI error; a sender's proxy that sets it
/// (a bad actor, or a bug) is not believed. It is cleared rather than refused: the text is
/// still the person's message and deserves delivery, and a refusal would hold up the whole
/// batch it came in. `auto_reply` from another proxy is legitimate (that person's auto-reply:
/// it must not be auto-answered back), so it is kept; at worst a sender marks its own message
/// as one nobody auto-answers, which harms only itself.
///
/// Its signature was checked on the way in, here, at its last hop between proxies: it is not
/// stored or handed to the own peer (which trusts its proxy), so the receiver's store and the
/// last hop carry no bytes nobody checks. `unauthenticated` is this proxy's to say: a signed
/// envelope is not.
fn as_relayed(mut e: Envelope) -> Envelope {
    if e.error {
        log::warn!(
            "message {} from {}: cleared `error`, which only this proxy may set",
            e.id,
            e.from
        );
        e.error = false;
    }
    e.unauthenticated = false;
    e
}

impl ProxyState {
    /// Durably queues; Ok(true) when the id had been queued before.
    async fn enqueue(&self, envelope: Envelope, origin: Origin) -> Result<bool, ProxyError> {
        self.outbox
            .send(Enqueue {
                envelope,
                origin,
                relay: None,
            })
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
            .send(EnqueueMany {
                envelopes,
                relays: Vec::new(),
                origin,
            })
            .await
            .map_err(ProxyError::unavailable)?
    }

    /// Durably queues relayed envelopes, each taken only in its place in its sequence
    /// (`chains`, one each) and only if recent enough (see [`ProxyState::not_before_ms`]); per
    /// envelope, whether its id had been queued before.
    async fn enqueue_relayed(
        &self,
        mut envelopes: Vec<Envelope>,
        chains: Vec<crate::wire::sealed::Chain>,
        origin: Origin,
    ) -> Result<Vec<bool>, ProxyError> {
        let not_before_ms = self.not_before_ms(crate::wire::now_ms());
        let mut relays: Vec<RelayCheck> = chains
            .into_iter()
            .map(|chain| RelayCheck {
                chain,
                not_before_ms,
            })
            .collect();
        if envelopes.len() == 1 {
            let (envelope, relay) = (envelopes.remove(0), relays.pop());
            let msg = Enqueue {
                envelope,
                origin,
                relay,
            };
            let duplicate = self
                .outbox
                .send(msg)
                .await
                .map_err(ProxyError::unavailable)??;
            return Ok(vec![duplicate]);
        }
        self.outbox
            .send(EnqueueMany {
                envelopes,
                relays,
                origin,
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_000_000_000;

    #[test]
    fn a_time_up_to_a_day_ahead_and_after_2020_is_plausible() {
        for t in [NOW, NOW + 24 * 3600 * 1000, EARLIEST_SENT_AT_MS] {
            assert!(check_sent_at(t, NOW).is_ok(), "{t}");
        }
    }

    #[test]
    fn zero_an_old_time_and_a_far_future_one_are_refused_naming_the_field() {
        for (t, says) in [
            (0, "before 2020"),
            (EARLIEST_SENT_AT_MS - 1, "before 2020"),
            (NOW + 24 * 3600 * 1000 + 1, "future"),
            (u64::MAX, "future"),
        ] {
            let e = check_sent_at(t, NOW).unwrap_err().to_string();
            assert!(e.contains("sent_at_ms") && e.contains(says), "{t}: {e}");
        }
    }

    #[test]
    fn a_relayed_error_is_cleared_and_its_auto_reply_kept() {
        let mut e = Envelope::text("bob", "alice", "⚠ bob could not answer");
        (e.error, e.auto_reply) = (true, true);
        let e = as_relayed(e);
        assert!(!e.error && e.auto_reply);
        assert!(check_not_error(&e).is_ok());
    }
}

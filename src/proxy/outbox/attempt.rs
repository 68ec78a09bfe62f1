//! The attempt futures of the [`Outbox`]: for the head of a lane, which request goes where
//! (the route is chosen from the table at attempt time), as one future resolving to each
//! item's [`Outcome`]: receipts together, a batch of messages, one message, or a delivery to
//! an AI endpoint. Building a future changes nothing; the outbox applies its outcome.

use std::time::Duration;

use futures_util::future::{ready, LocalBoxFuture};
use futures_util::FutureExt;

use super::super::ai::desk::Converse;
use super::super::delivery::{self, Outcome};
use super::super::routing::{choose_route, peer_refusal, Route};
use super::super::store::{LaneId, Payload, Record};
use super::Outbox;
use crate::wire::control_plane::AiEndpoint;
use crate::wire::data_plane::Envelope;
use crate::wire::directory::UserState;

/// Where a hop to another proxy goes: the client and base URL (`None`s: the plain defaults),
/// and the relay's base URL when that proxy is reached through one.
struct Via {
    client: Option<awc::Client>,
    base_url: Option<String>,
    relay: Option<String>,
}

/// A base URL no request can be made to (a TLS destination and no overlay client to reach it).
const NO_TLS_CLIENT: &str = "https://no-overlay-client.invalid";
/// The relay's base URL when the directory does not list the relay a proxy is reached through.
const NO_RELAY: &str = "https://relay-not-in-the-signed-directory.invalid";

/// Most envelopes relayed in one request.
const MAX_BATCH: usize = 128;

/// Most receipts posted to the own peer at once (one by one: concurrently; else in one batch).
const RECEIPT_WINDOW: usize = 32;
const RECEIPT_BATCH: usize = 512;

impl Outbox {
    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.delivery.attempt_timeout_secs.max(1))
    }

    /// Several items from the head of lane `id` in one request (relay to a native proxy, or
    /// the own peer's inbox while it accepts batches), when the lane has a batch to send.
    pub(super) fn batch_attempt(
        &self,
        id: &LaneId,
    ) -> Option<(Vec<u64>, LocalBoxFuture<'static, Outcome>)> {
        let lane = self.lanes.get(id)?;
        let max_bytes = self.settings.delivery.max_body_bytes / 2;
        match id {
            LaneId::Remote(to) => {
                let Route::Proxy { name, endpoint } =
                    choose_route(&self.endpoints, self.settings.me.as_str(), to)
                else {
                    return None;
                };
                if peer_refusal(&name, &endpoint, &self.settings.not_peers).is_some()
                    || self.own_revocation().is_some()
                {
                    return None;
                }
                let (signing, via) = self.signing(&name)?;
                let (seqs, envelopes) = lane.batch(MAX_BATCH, max_bytes)?;
                let to = delivery::ToProxy {
                    client: via.client.unwrap_or_else(|| self.clients.others.clone()),
                    base_url: via.base_url.unwrap_or_else(|| endpoint.base_url()),
                    relay: via.relay,
                    name,
                    envelope: envelopes[0].clone(),
                    timeout: self.attempt_timeout(),
                };
                let attempt = delivery::relay_batch(to, envelopes, signing);
                Some((seqs, attempt.boxed_local()))
            }
            LaneId::PeerInbox if self.peer_inbox_batch => {
                let (seqs, envelopes) = lane.batch(MAX_BATCH, max_bytes)?;
                let attempt = delivery::post_batch(
                    self.clients.own_peer.clone(),
                    format!("{}/api/v1/inbox/batch", self.settings.peer_url),
                    "your chat app".to_string(),
                    envelopes,
                    self.attempt_timeout(),
                );
                Some((seqs, attempt.boxed_local()))
            }
            _ => None,
        }
    }

    /// This proxy's own key was revoked (the directory it applied says so): nothing of its user's
    /// is sent to other proxies any more (they would refuse it at the handshake, without a
    /// reason its user could see); each message fails with the revocation's reason.
    fn own_revocation(&self) -> Option<Outcome> {
        let published = self.clients.directory.borrow();
        let (at_ms, reason) = published.directory.revoked(self.settings.me.as_str())?;
        Some(Outcome::Refused {
            reason: format!(
                "the key of {} was revoked at {} ({reason}): other proxies refuse what it sends",
                self.settings.me,
                crate::wire::rfc3339_ms(at_ms)
            ),
        })
    }

    /// Why nothing is sent to `name`'s proxy, which has no key to sign for: its key was revoked
    /// (refused for good), or it has not joined yet (retried until it does, or the message
    /// expires).
    fn unsigned_destination(&self, name: &str) -> Outcome {
        let published = self.clients.directory.borrow();
        match published.directory.revoked(name) {
            Some((at_ms, reason)) => Outcome::Refused {
                reason: format!(
                    "the key of {name} was revoked at {} ({reason})",
                    crate::wire::rfc3339_ms(at_ms)
                ),
            },
            None => Outcome::Retry {
                what: format!("{name}'s proxy"),
                error: format!(
                    "{name} has no pinned key in the signed directory (not joined yet): \
                     nothing is sent until it has one"
                ),
            },
        }
    }

    /// How a hop to `name`'s proxy is signed: when the signed directory pins its key (a proxy
    /// without one is of the original, legacy format, or has not joined: nothing is sent). And
    /// where it goes: when the directory names its TLS address, the overlay client to its TLS
    /// name there, and nowhere else (`None`s: the table's plain address, as before TLS); when
    /// it names a relay the proxy is reached through, that relay's TLS address. The route is
    /// chosen for each attempt, and a lane has one attempt at a time: it never switches between
    /// direct and relay while messages are in flight.
    fn signing(&self, name: &str) -> Option<(delivery::Signing, Via)> {
        let published = self.clients.directory.borrow();
        let entry = published.directory.user(name)?;
        let key = match (&entry.state, entry.key) {
            (UserState::Active, Some(key)) => key,
            _ => return None,
        };
        let overlay =
            |member: &crate::wire::directory::UserEntry| match (&member.tls, &self.clients.overlay)
            {
                (Some(tls), Some(client)) => (
                    Some(client.clone()),
                    Some(crate::hop::overlay::base_url(
                        &crate::trust::x509::tls_name(&member.name),
                        tls.port,
                    )),
                ),
                // No overlay client (no pinned root): a TLS destination is never sent in plain.
                (Some(_), None) => (None, Some(NO_TLS_CLIENT.to_string())),
                (None, _) => (None, None),
            };
        let via = match &entry.via {
            Some(relay) => {
                // A relay the directory does not list (or not as a relay): nowhere to send.
                let (client, base) = published
                    .directory
                    .user(relay)
                    .filter(|r| !r.role.is_user() && r.state == UserState::Active)
                    .map(overlay)
                    .unwrap_or((None, None));
                Via {
                    client,
                    base_url: None,
                    relay: Some(base.unwrap_or_else(|| NO_RELAY.to_string())),
                }
            }
            None => {
                let (client, base_url) = overlay(entry);
                Via {
                    client,
                    base_url,
                    relay: None,
                }
            }
        };
        Some((
            delivery::Signing {
                signer: self.clients.signer.clone(),
                key,
                seal: entry.seal,
            },
            via,
        ))
    }

    /// Receipts from the head of the receipts lane: up to [`RECEIPT_BATCH`] in one batch post,
    /// or, to a peer without the batch route, up to [`RECEIPT_WINDOW`] posted concurrently
    /// (their order does not matter: each id gets one final state).
    pub(super) fn receipts_attempt(
        &self,
        id: &LaneId,
    ) -> Option<(Vec<u64>, LocalBoxFuture<'static, Vec<Outcome>>)> {
        if *id != LaneId::PeerReceipts {
            return None;
        }
        let window = if self.peer_receipts_batch {
            RECEIPT_BATCH
        } else {
            RECEIPT_WINDOW
        };
        let (seqs, receipts) = self
            .lanes
            .get(id)?
            .due_receipts(crate::wire::now_ms(), window)?;
        let (client, url, timeout) = (
            self.clients.own_peer.clone(),
            self.settings.peer_url.clone(),
            self.attempt_timeout(),
        );
        if self.peer_receipts_batch {
            let n = receipts.len();
            let post = delivery::to_peer_receipts_batch(client, url, receipts, timeout);
            return Some((seqs, post.map(move |o| vec![o; n]).boxed_local()));
        }
        let posts = receipts.into_iter().map(|receipt| {
            delivery::to_peer_receipts(client.clone(), url.clone(), receipt, timeout)
        });
        Some((seqs, futures_util::future::join_all(posts).boxed_local()))
    }

    /// One attempt to hand `record` to its next hop.
    pub(super) fn attempt(
        &self,
        record: &Record,
    ) -> LocalBoxFuture<'static, (Outcome, Option<Envelope>)> {
        let (client, own_peer) = (self.clients.others.clone(), self.clients.own_peer.clone());
        let timeout = self.attempt_timeout();
        let peer_url = self.settings.peer_url.clone();
        let hop: LocalBoxFuture<'static, Outcome> = match (&record.lane, &record.payload) {
            (LaneId::PeerReceipts, Payload::Receipt { receipt }) => {
                delivery::to_peer_receipts(own_peer, peer_url, receipt.clone(), timeout)
                    .boxed_local()
            }
            (LaneId::PeerInbox, Payload::Message { envelope, .. }) => {
                delivery::to_peer_inbox(own_peer, peer_url, envelope.clone(), timeout).boxed_local()
            }
            (LaneId::Remote(name), Payload::Message { envelope, .. }) => {
                match choose_route(&self.endpoints, self.settings.me.as_str(), name) {
                    Route::OwnPeer => {
                        delivery::to_peer_inbox(own_peer, peer_url, envelope.clone(), timeout)
                            .boxed_local()
                    }
                    Route::Proxy { name, endpoint } => {
                        if let Some(reason) =
                            peer_refusal(&name, &endpoint, &self.settings.not_peers)
                        {
                            log::warn!("message {}: {reason}", envelope.id);
                            return Box::pin(ready((Outcome::Refused { reason }, None)));
                        }
                        if let Some(refused) = self.own_revocation() {
                            return Box::pin(ready((refused, None)));
                        }
                        let signing = self.signing(&name);
                        let (client, base_url, relay) = match &signing {
                            Some((_, via)) => (
                                via.client.clone().unwrap_or(client),
                                via.base_url.clone().unwrap_or_else(|| endpoint.base_url()),
                                via.relay.clone(),
                            ),
                            None => (client, endpoint.base_url(), None),
                        };
                        let to = delivery::ToProxy {
                            client,
                            base_url,
                            relay,
                            name,
                            envelope: envelope.clone(),
                            timeout,
                        };
                        match signing {
                            Some((signing, _)) => delivery::relay(to, signing).boxed_local(),
                            // compat: a proxy of the original has no key, and no acks.
                            None if !endpoint.native => delivery::to_legacy_proxy(to).boxed_local(),
                            None => Box::pin(ready(self.unsigned_destination(&to.name))),
                        }
                    }
                    Route::Ai { name, endpoint } => {
                        return self.deliver_to_ai(name, endpoint, envelope)
                    }
                    Route::Unknown => Box::pin(ready(Outcome::Retry {
                        what: name.to_string(),
                        error: format!("{name} is not in this proxy's endpoint table"),
                    })),
                }
            }
            (lane, _) => Box::pin(ready(Outcome::Refused {
                reason: format!("internal error: an item of the wrong kind in lane {lane:?}"),
            })),
        };
        hop.map(|outcome| (outcome, None)).boxed_local()
    }

    /// Asks AI endpoint `name` through the desk: `Delivered` with the AI's reply, or `Refused`
    /// with the error report the user sees instead (both queued with the outcome); `Retry` when
    /// the AI memory could not be written or the desk is gone. The adapter retries what the
    /// provider asks to retry; a failed answer is a message, not a retry. The lane waits for
    /// this, so a second message to the same AI waits for the first reply.
    fn deliver_to_ai(
        &self,
        name: String,
        endpoint: Box<AiEndpoint>,
        envelope: &Envelope,
    ) -> LocalBoxFuture<'static, (Outcome, Option<Envelope>)> {
        let ask = self.desk.send(Converse {
            name: name.clone(),
            endpoint,
            envelope: envelope.clone(),
        });
        async move {
            match ask.await {
                Ok(conversed) => (conversed.outcome, conversed.reply),
                Err(e) => (
                    Outcome::Retry {
                        what: format!("AI endpoint {name}"),
                        error: format!("the AI desk stopped: {e}"),
                    },
                    None,
                ),
            }
        }
        .boxed_local()
    }
}

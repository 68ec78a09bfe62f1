//! One delivery attempt over HTTP, and what its answer means: handed on, worth retrying, or
//! refused for good. Used by the [`super::outbox::Outbox`] with its one shared awc `Client`.
//!
//! Owns the wire calls to the next hop: `POST {peer}/api/v1/inbox`, `POST {peer}/api/v1/receipts`,
//! `POST {proxy}/api/v1/relay[/batch]` (ours: signed envelopes in a signed request, see
//! [`super::signed_hop`]; to a proxy behind NAT, the same request through its relay, whose
//! answer is that proxy's own), and the legacy `POST {proxy}/` with `Host: TARGET` (a proxy of the
//! original, which has no key: its 200 counts as delivered). On our own routes only the
//! receiver's [`Ack`] of the message's id counts as stored, and from another proxy only with
//! its signature over the messages sent, by the key pinned to it; any other 2xx (some web
//! server's `{}` or HTML page, or an answer nobody signed) is a failed attempt, retried. A peer
//! of the original (no `/api/v1/inbox`) gets `POST /message` instead; a proxy with a pinned key
//! never gets the unsigned legacy format (no downgrade). It keeps no state and never retries
//! itself.

use std::time::Duration;

use serde::Serialize;

use super::signed_hop::HopSigner;
use crate::hop::post::{post_encoded, post_json, Answer};
use crate::trust::request::SIGNATURE_HEADER;
use crate::trust::seal::SealPublic;
use crate::trust::PublicKey;
use crate::wire::data_plane::{Ack, Envelope, MessageId, Receipt};
use crate::wire::legacy;
use crate::wire::relay::{TARGET_HEADER, WAIT_HEADER};

/// The most of an answer read: an ack or an error is small.
const ANSWER_LIMIT: usize = 64 * 1024;
/// The most of a batch's answer read (one ack per envelope).
const BATCH_ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop has it (it acknowledged the id on our routes; a 2xx from the original's).
    Delivered,
    /// Not now: `what` (e.g. "bob's proxy") could not be reached or asked to retry.
    Retry { what: String, error: String },
    /// Refused for good; `reason` is for the user, e.g. "bob's proxy refused it: ...".
    Refused { reason: String },
    /// A batch route the receiver does not have (404/405): send one by one instead.
    Unsupported { reason: String },
}

/// `POST {peer_url}/api/v1/inbox`; to a peer of the original, `POST {peer_url}/message`.
pub async fn to_peer_inbox(
    client: awc::Client,
    peer_url: String,
    envelope: Envelope,
    timeout: Duration,
) -> Outcome {
    let hop = Hop::new(&client, timeout, "your chat app");
    let legacy = format!("{peer_url}/message");
    hop.native_or_legacy(&format!("{peer_url}/api/v1/inbox"), &envelope, &legacy)
        .await
}

/// `POST {peer_url}/api/v1/receipts`.
pub async fn to_peer_receipts(
    client: awc::Client,
    peer_url: String,
    receipt: Receipt,
    timeout: Duration,
) -> Outcome {
    let url = format!("{peer_url}/api/v1/receipts");
    let hop = Hop::new(&client, timeout, "your chat app");
    hop.post(&url, None, &receipt).await
}

/// `POST {peer}/api/v1/receipts/batch`: several receipts at once; a 2xx means all are applied.
/// 404/405 (a peer without the route) and any other refusal of the whole batch answer
/// [`Outcome::Unsupported`]: the caller then posts them one by one, each getting its verdict.
pub async fn to_peer_receipts_batch(
    client: awc::Client,
    peer_url: String,
    receipts: Vec<Receipt>,
    timeout: Duration,
) -> Outcome {
    let url = format!("{peer_url}/api/v1/receipts/batch");
    let hop = Hop::new(&client, timeout, "your chat app");
    match hop.post(&url, None, &receipts).await {
        Outcome::Refused { reason } => Outcome::Unsupported { reason },
        other => other,
    }
}

/// One message for another user's proxy: where, for whom (`name`, as the table spells it),
/// and how long the attempt may take.
pub struct ToProxy {
    pub client: awc::Client,
    pub base_url: String,
    /// The relay its proxy is reached through (its base URL), when it cannot be reached
    /// directly: the same signed request goes to `{relay}/relay/v1/to/{name}`, and the
    /// relay carries it down the stream that proxy keeps open, and its answer back.
    pub relay: Option<String>,
    pub name: String,
    pub envelope: Envelope,
    pub timeout: Duration,
}

/// How a hop to another proxy of ours is sealed and signed: the receiver's sealing key (none:
/// it published none, nothing is sent), and the key its acknowledgement must be signed by (the
/// receiver's, pinned in the signed directory).
#[derive(Clone)]
pub struct Signing {
    pub signer: HopSigner,
    pub key: PublicKey,
    pub seal: Option<SealPublic>,
}

/// `POST {proxy}/api/v1/relay`: another proxy of ours; its 200 Ack, signed, means it stored it.
pub async fn relay(to: ToProxy, signing: Signing) -> Outcome {
    let through = to.relay.is_some();
    let (outcome, signed) = relay_one(to, signing).await;
    unsigned_refusal_retried(through && !signed, outcome)
}

/// The attempt, and whether its answer, an error, was signed by the receiver.
async fn relay_one(to: ToProxy, signing: Signing) -> (Outcome, bool) {
    let what = format!("{}'s proxy", to.name);
    let id = to.envelope.id.clone();
    let url = format!("{}/api/v1/relay", to.base_url);
    let (answer, sent, nonce) = signed_post(&to, &url, vec![to.envelope.clone()], &signing).await;
    let signed = match (&answer, &nonce) {
        (Answer::Refused { status, body } | Answer::RouteMissing { status, body }, Some(n)) => {
            crate::proxy::signed_hop::refusal_signed_by(&signing.key, n, status.as_u16(), body)
        }
        _ => false,
    };
    let outcome = relay_one_outcome(answer, sent, id, what, signing).await;
    (outcome, signed)
}

async fn relay_one_outcome(
    answer: Answer,
    sent: Vec<Envelope>,
    id: MessageId,
    what: String,
    signing: Signing,
) -> Outcome {
    if let Some(retry) = numbers_behind(&answer, &signing, &what) {
        return retry;
    }
    let ack = ack_of(&answer);
    match acknowledged(answer, &id, &what) {
        Outcome::Delivered => signed_ack(signing, ack, sent, what).await,
        other => other,
    }
}

/// `POST {proxy}/api/v1/relay/batch`: several envelopes for another proxy of ours, signed,
/// stored by the receiver in one transaction; delivered only when every id is acknowledged
/// (`[Ack]`, in order) and the receiver signed the acknowledgement of exactly these.
pub async fn relay_batch(to: ToProxy, envelopes: Vec<Envelope>, signing: Signing) -> Outcome {
    let through = to.relay.is_some();
    match relay_many(to, envelopes, signing).await {
        // One envelope may be what the receiver refuses: each goes alone, and gets its own.
        Outcome::Refused { reason } if through => Outcome::Unsupported { reason },
        other => other,
    }
}

async fn relay_many(to: ToProxy, envelopes: Vec<Envelope>, signing: Signing) -> Outcome {
    let what = format!("{}'s proxy", to.name);
    let url = format!("{}/api/v1/relay/batch", to.base_url);
    let (answer, sent, _) = signed_post(&to, &url, envelopes, &signing).await;
    if let Some(retry) = numbers_behind(&answer, &signing, &what) {
        return retry;
    }
    let ack = ack_of(&answer);
    match batch_acknowledged(answer, &sent, what.clone()) {
        Outcome::Delivered => signed_ack(signing, ack, sent, what).await,
        other => other,
    }
}

/// Through a relay, a refusal the receiver did not sign (over the request's nonce, its status
/// and words) is not believed: a relay could refuse what it was given to carry (or hand one
/// proxy's refusal to another) to have a message shown failed. It is tried again, as a relay's
/// silence would be, until it expires (then shown failed with the refusal's words).
fn unsigned_refusal_retried(through_relay: bool, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Refused { reason } if through_relay => Outcome::Retry {
            what: "the relay".into(),
            error: format!(
                "{reason} (carried by the relay, unsigned: tried again until the message \
                 expires)"
            ),
        },
        other => other,
    }
}

/// The receiver refused a message as numbered below the last it took of its sequence (409
/// with that number): what this proxy still holds is not a replay, so its numbers went back
/// (its clock did, across a restart). It numbers above that from now on and tries again. A
/// number more than a day ahead of this clock is not believed (a carrier's forgery could
/// otherwise push the numbers to their end): the refusal stands.
fn numbers_behind(answer: &Answer, signing: &Signing, what: &str) -> Option<Outcome> {
    const AHEAD_MAX_US: u64 = 24 * 3600 * 1_000_000;
    let Answer::Refused { status, body } = answer else {
        return None;
    };
    if *status != actix_web::http::StatusCode::CONFLICT {
        return None;
    }
    let last = serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get(super::error::STALE_FIELD)?
        .as_u64()?;
    let now_us = crate::wire::now_ms().saturating_mul(1000);
    if last > now_us.saturating_add(AHEAD_MAX_US) {
        return None;
    }
    signing.signer.move_past(last);
    Some(Outcome::Retry {
        what: what.to_string(),
        error: format!(
            "it has taken message #{last} of the conversation already: this proxy's numbers \
             went back (its clock did?), and now go on from there"
        ),
    })
}

fn ack_of(answer: &Answer) -> Option<String> {
    match answer {
        Answer::Ok { ack, .. } => ack.clone(),
        _ => None,
    }
}

/// `envelopes` (one alone: as an object; else as a list), sealed for the receiver and signed
/// together, in a request to `url` signed for `to.name`; the answer, the envelopes as they
/// were before sealing, and the request's digest (what a refusal of it is signed over). The sealing and signing are done on a blocking thread, off this
/// worker's event loop.
async fn signed_post(
    to: &ToProxy,
    url: &str,
    envelopes: Vec<Envelope>,
    signing: &Signing,
) -> (Answer, Vec<Envelope>, Option<String>) {
    let Some(seal) = signing.seal else {
        let reason = format!(
            "{} has published no sealing key in the signed directory (its proxy is of a release \
             before sealed bodies): nothing is sent until it has one",
            to.name
        );
        return (Answer::Unreachable { reason }, Vec::new(), None);
    };
    let (signer, target, destination) = (signing.signer.clone(), url.to_string(), to.name.clone());
    let signed = actix_web::web::block(move || {
        let signed = signer.seal_envelopes(&envelopes, &seal)?;
        let body = match signed.as_slice() {
            [one] => serde_json::to_vec(one),
            all => serde_json::to_vec(all),
        }
        .map_err(|e| format!("could not encode the message: {e}"))?;
        let header = signer.sign_request("POST", &target, &destination, &body);
        Ok::<_, String>((body, header, envelopes))
    })
    .await;
    let (body, header, envelopes) = match signed {
        Ok(Ok(signed)) => signed,
        Ok(Err(reason)) => return (Answer::Unreachable { reason }, Vec::new(), None),
        Err(e) => {
            let reason = format!("could not sign the request: {e}");
            return (Answer::Unreachable { reason }, Vec::new(), None);
        }
    };
    let digest = crate::proxy::signed_hop::request_digest(
        &header,
        crate::proxy::signed_hop::target_of(url),
        &body,
    );
    let request = match &to.relay {
        // The relay answers a little before this side gives up, so it hears why.
        Some(relay) => to
            .client
            .post(format!("{relay}/relay/v1/to/{}", to.name))
            .insert_header((TARGET_HEADER, crate::proxy::signed_hop::target_of(url)))
            .insert_header((
                WAIT_HEADER,
                (to.timeout.saturating_sub(Duration::from_millis(500)))
                    .max(Duration::from_millis(200))
                    .as_millis()
                    .to_string(),
            )),
        None => to.client.post(url),
    }
    .insert_header((SIGNATURE_HEADER, header));
    let answer = post_encoded(request, body, BATCH_ANSWER_LIMIT, to.timeout).await;
    (answer, envelopes, digest)
}

/// Delivered when `ack` is the receiver's signature over `sent` (checked on a blocking
/// thread); else a failed attempt.
async fn signed_ack(
    signing: Signing,
    ack: Option<String>,
    sent: Vec<Envelope>,
    what: String,
) -> Outcome {
    let checked = actix_web::web::block(move || {
        signing
            .signer
            .check_ack(ack.as_deref(), &signing.key, &sent)
    })
    .await;
    match checked {
        Ok(Ok(())) => Outcome::Delivered,
        Ok(Err(error)) => Outcome::Retry { what, error },
        Err(e) => Outcome::Retry {
            what,
            error: format!("could not check its acknowledgement: {e}"),
        },
    }
}

/// `POST {peer}/api/v1/inbox/batch`: several envelopes (`[Envelope]`) for the own peer in one
/// request, stored in one transaction; delivered only when every id is acknowledged (`[Ack]`,
/// in order).
pub async fn post_batch(
    client: awc::Client,
    url: String,
    what: String,
    envelopes: Vec<Envelope>,
    timeout: Duration,
) -> Outcome {
    let answer = post_json(client.post(&url), &envelopes, BATCH_ANSWER_LIMIT, timeout).await;
    batch_acknowledged(answer, &envelopes, what)
}

/// The answer to a batch: delivered when it acknowledges every envelope, in order.
fn batch_acknowledged(answer: Answer, envelopes: &[Envelope], what: String) -> Outcome {
    match answer {
        Answer::RouteMissing { status, .. } => Outcome::Unsupported {
            reason: format!("{what} answered {status} to a batch"),
        },
        Answer::Ok { body, .. } => match serde_json::from_slice::<Vec<Ack>>(&body) {
            Ok(acks)
                if acks.len() == envelopes.len()
                    && acks.iter().zip(envelopes).all(|(a, e)| a.id == e.id) =>
            {
                Outcome::Delivered
            }
            _ => Outcome::Retry {
                what,
                error: "its answer did not acknowledge every message".to_string(),
            },
        },
        other => classify(other, &what),
    }
}

/// compat: `POST {proxy}/` with `Host: TARGET` and `{message, from, timestamp}` to a proxy of the
/// original; it has no acks, so its 200 counts as delivered.
pub async fn to_legacy_proxy(to: ToProxy) -> Outcome {
    let body = legacy::Message::from_envelope(&to.envelope);
    let what = format!("{}'s proxy", to.name);
    let hop = Hop::new(&to.client, to.timeout, &what);
    hop.post(&format!("{}/", to.base_url), Some(&to.envelope.to), &body)
        .await
}

/// One attempt's settings: the shared client, the deadline, and who is asked (for the reasons
/// users read, e.g. "bob's proxy").
struct Hop<'a> {
    client: &'a awc::Client,
    timeout: Duration,
    what: &'a str,
}

impl<'a> Hop<'a> {
    fn new(client: &'a awc::Client, timeout: Duration, what: &'a str) -> Hop<'a> {
        Hop {
            client,
            timeout,
            what,
        }
    }

    /// `POST url` (with `Host: host`) and what its answer means.
    async fn post<T: Serialize>(&self, url: &str, host: Option<&str>, body: &T) -> Outcome {
        classify(self.send(url, host, body).await, self.what)
    }

    async fn send<T: Serialize>(&self, url: &str, host: Option<&str>, body: &T) -> Answer {
        let mut request = self.client.post(url);
        if let Some(h) = host {
            request = request.insert_header((actix_web::http::header::HOST, h));
        }
        post_json(request, body, ANSWER_LIMIT, self.timeout).await
    }

    /// Posts `envelope` to the own peer's `native_url`; where the peer turns out to be the
    /// original's (a 404/405 that is not [`legacy::is_unknown_peer`] for the addressee: the
    /// original has none of our routes), posts the legacy body to `legacy_url` instead.
    async fn native_or_legacy(
        &self,
        native_url: &str,
        envelope: &Envelope,
        legacy_url: &str,
    ) -> Outcome {
        match self.send(native_url, None, envelope).await {
            Answer::RouteMissing { body, .. } if !legacy::is_unknown_peer(&body, &envelope.to) => {
                // compat: a component of the original: its own wire format; its 200 is delivery.
                let body = legacy::Message::from_envelope(envelope);
                self.post(legacy_url, None, &body).await
            }
            other => acknowledged(other, &envelope.id, self.what),
        }
    }
}

/// The answer of one of our routes that store a message (relay, inbox): delivered only when its
/// 2xx is our [`Ack`] of `id`; otherwise as [`classify`].
// Before (issue 13), any 2xx counted: a table entry pointing at some web server ate messages.
pub fn acknowledged(answer: Answer, id: &MessageId, what: &str) -> Outcome {
    let Answer::Ok { status, body, .. } = answer else {
        return classify(answer, what);
    };
    match serde_json::from_slice::<Ack>(&body) {
        Ok(ack) if ack.id == *id => Outcome::Delivered,
        Ok(ack) => Outcome::Retry {
            what: what.to_string(),
            error: format!(
                "it answered {status} acknowledging another message ({}), not {id}",
                ack.id
            ),
        },
        Err(_) => Outcome::Retry {
            what: what.to_string(),
            error: format!(
                "it answered {status} but not an acknowledgement of the message ({})",
                answer_start(&body)
            ),
        },
    }
}

/// The start of an answer's body, on one line, for an error message.
fn answer_start(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None if line.is_empty() => "an empty body".to_string(),
        None => line,
    }
}

/// 2xx: delivered; transient (no answer, 408, 429, 5xx): retry; any other status: refused for
/// good, in the receiver's own words.
pub fn classify(answer: Answer, what: &str) -> Outcome {
    match answer {
        Answer::Ok { .. } => Outcome::Delivered,
        transient if transient.is_transient() => Outcome::Retry {
            what: what.to_string(),
            error: transient.reason(),
        },
        refused => Outcome::Refused {
            reason: format!("{what} refused it: {}", refused.reason()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::web::Bytes;

    fn classify(status: StatusCode, body: &'static [u8], what: &str) -> Outcome {
        super::classify(Answer::from_status(status, body.into()), what)
    }

    #[test]
    fn a_2xx_answer_counts_as_delivered() {
        assert_eq!(
            classify(StatusCode::OK, b"", "bob's proxy"),
            Outcome::Delivered
        );
        assert_eq!(
            classify(StatusCode::ACCEPTED, b"{}", "x"),
            Outcome::Delivered
        );
    }

    fn ok(body: &'static [u8]) -> Answer {
        Answer::from_status(StatusCode::OK, body.into())
    }

    #[test]
    fn only_an_ack_of_the_same_id_counts_as_stored() {
        let id = MessageId::new();
        let ack = serde_json::to_vec(&Ack {
            id: id.clone(),
            duplicate: false,
        })
        .unwrap();
        let answer = Answer::from_status(StatusCode::OK, ack.into());
        assert_eq!(acknowledged(answer, &id, "x"), Outcome::Delivered);
        let other = serde_json::to_vec(&Ack {
            id: MessageId::new(),
            duplicate: true,
        })
        .unwrap();
        let answer = Answer::from_status(StatusCode::OK, other.into());
        assert!(matches!(
            acknowledged(answer, &id, "x"),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn any_other_2xx_on_our_routes_is_a_failed_attempt_saying_what_came() {
        let id = MessageId::new();
        for (body, shown) in [
            (&b"{}"[..], "({})"),
            (
                b"<html>\n<body>It works!</body></html>",
                "(<html> <body>It works!</body></html>)",
            ),
            (b"", "(an empty body)"),
        ] {
            match acknowledged(ok(body), &id, "bob's proxy") {
                Outcome::Retry { what, error } => {
                    assert_eq!(what, "bob's proxy");
                    assert!(
                        error.starts_with("it answered 200 OK but not an ack"),
                        "{error}"
                    );
                    assert!(error.ends_with(shown), "{error}");
                }
                other => panic!("{other:?}"),
            }
        }
        let refused = Answer::from_status(StatusCode::BAD_REQUEST, Bytes::new());
        assert!(matches!(
            acknowledged(refused, &id, "x"),
            Outcome::Refused { .. }
        ));
    }

    #[test]
    fn a_refusal_carried_by_a_relay_is_tried_again_a_direct_one_is_not() {
        let refused = || Outcome::Refused {
            reason: "bob's proxy refused it: no (403)".into(),
        };
        assert_eq!(unsigned_refusal_retried(false, refused()), refused());
        match unsigned_refusal_retried(true, refused()) {
            Outcome::Retry { what, error } => {
                assert_eq!(what, "the relay");
                assert!(
                    error.starts_with("bob's proxy refused it: no (403)"),
                    "{error}"
                );
                assert!(error.contains("unsigned"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            unsigned_refusal_retried(true, Outcome::Delivered),
            Outcome::Delivered
        );
    }

    #[test]
    fn a_server_error_or_rate_limit_is_retried() {
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, b"", "bob's proxy"),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, b"", "x"),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn a_client_error_is_refused_with_the_receivers_own_words() {
        let body = br#"{"status":"error","message":"Unknown peer: bob"}"#;
        assert_eq!(
            classify(StatusCode::NOT_FOUND, body, "bob's proxy"),
            Outcome::Refused {
                reason: "bob's proxy refused it: Unknown peer: bob (404)".into()
            }
        );
    }
}

//! The routes other proxies of ours call: a message (or a batch) relayed for this proxy's user,
//! sealed for this proxy and signed by its origin proxy (see [`crate::proxy::signed_hop`] and
//! [`crate::wire::sealed`]), answered with an Ack once it is durably queued in its place in its
//! sequence, and this proxy's signature over what it acknowledges in the [`ACK_HEADER`] header.
//!
//! Refused: a body in the clear (a proxy of a release before sealing: 503, so its outbox keeps
//! the message until it is upgraded), a body that does not open, an envelope sent before what
//! this proxy's memory of ids covers (a possible replay), one older than the last taken of its
//! sequence; held (503, the sender tries again): one whose predecessor has not arrived.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{as_relayed, ProxyState};
use crate::proxy::error::ProxyError;
use crate::proxy::signed_hop::Relayed;
use crate::proxy::store::Origin;
use crate::trust::request::SIGNATURE_HEADER;
use crate::web::{read_limited, BodyError};
use crate::wire::data_plane::{Ack, Envelope, ACK_HEADER};
use crate::wire::relay::{Answered, Carried, CARRIED_TARGETS};
use crate::wire::sealed::SealedEnvelope;

/// # POST /api/v1/relay
/// Another proxy hands over a message for this proxy's user; 200 Ack once durably stored.
pub(super) async fn relay(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ProxyState>,
) -> Result<HttpResponse, ProxyError> {
    let body = read_body(&req, payload, &state).await?;
    let (answer, signature) = take_body(&state, Incoming::of(&req), body).await?;
    Ok(HttpResponse::Ok()
        .insert_header((ACK_HEADER, signature))
        .content_type("application/json")
        .body(answer))
}

/// # POST /api/v1/relay/batch
/// Another proxy of ours hands over several messages (`[Envelope]`); 200 `[Ack]`, in order, once
/// all are durably stored in one transaction. One bad envelope refuses the whole batch, naming
/// it (the sender then sends them one by one, and each gets its own verdict).
pub(super) async fn relay_batch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ProxyState>,
) -> Result<HttpResponse, ProxyError> {
    let body = read_body(&req, payload, &state).await?;
    let (answer, signature) = take_body(&state, Incoming::of(&req), body).await?;
    Ok(HttpResponse::Ok()
        .insert_header((ACK_HEADER, signature))
        .content_type("application/json")
        .body(answer))
}

/// What a relayed request is, apart from its body: as posted to this proxy, or carried down
/// its relay's stream (then no TLS connection vouches for anyone: the signature alone does).
pub struct Incoming {
    pub method: String,
    /// The route it is for, path and query: [`CARRIED_TARGETS`].
    pub target: String,
    /// Its [`SIGNATURE_HEADER`].
    pub header: Option<String>,
    pub tls_key: Option<crate::trust::PublicKey>,
}

impl Incoming {
    fn of(req: &HttpRequest) -> Incoming {
        Incoming {
            method: req.method().as_str().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map_or(req.path(), |pq| pq.as_str())
                .to_string(),
            header: req
                .headers()
                .get(SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            tls_key: req.conn_data::<crate::trust::tls::PeerKey>().map(|k| k.0),
        }
    }
}

/// A request carried to this proxy by its relay, taken as if it had been posted: the answer
/// (status, acknowledgement, body) goes back through the relay.
pub async fn carried(state: &ProxyState, carried: Carried) -> Answered {
    let body = web::Bytes::from(carried.body.get().to_string());
    let digest =
        crate::proxy::signed_hop::request_digest(&carried.signature, &carried.target, &body);
    let incoming = Incoming {
        method: "POST".into(),
        target: carried.target,
        header: Some(carried.signature),
        tls_key: None,
    };
    let taken = if body.len() > state.max_body_bytes {
        Err(Refusal::from(ProxyError::TooLarge(format!(
            "the request is {} bytes, above this proxy's {} (delivery.max_body_bytes)",
            body.len(),
            state.max_body_bytes
        ))))
    } else {
        take_body(state, incoming, body).await
    };
    match taken {
        Ok((body, ack)) => Answered {
            n: carried.n,
            status: 200,
            ack: Some(ack),
            body: String::from_utf8_lossy(&body).into_owned(),
        },
        Err(Refusal { error, checked }) => {
            let status = actix_web::ResponseError::status_code(&error).as_u16();
            let mut body = error.body_value();
            // Signed only when it answers the origin's own request (its signature checked and
            // new): a refusal of what a relay made up or replayed is not this proxy's word
            // for the origin to believe.
            if let (true, Some(digest), Some(fields)) = (checked, digest, body.as_object_mut()) {
                let message = error.to_string();
                let sig = state.hops.sign_refusal(&digest, status, &message);
                fields.insert("message".into(), message.into());
                fields.insert(crate::proxy::signed_hop::REFUSAL_FIELD.into(), sig.into());
            }
            Answered {
                n: carried.n,
                status,
                ack: None,
                body: body.to_string(),
            }
        }
    }
}

/// The envelope (`/api/v1/relay`) or batch (`/api/v1/relay/batch`) of `body`, checked and
/// queued: the acknowledgement's JSON and its signature.
/// Why a relayed request was not taken; `checked`: refused after its signature was checked
/// and found new (then it is this proxy's answer to that very request, worth signing).
pub struct Refusal {
    pub error: ProxyError,
    pub checked: bool,
}

impl From<ProxyError> for Refusal {
    fn from(error: ProxyError) -> Refusal {
        Refusal {
            error,
            checked: false,
        }
    }
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> ProxyError {
        r.error
    }
}

async fn take_body(
    state: &ProxyState,
    incoming: Incoming,
    body: web::Bytes,
) -> Result<(Vec<u8>, String), Refusal> {
    let (json, signature) = if incoming.target == CARRIED_TARGETS[1] {
        let envelopes: Vec<SealedEnvelope> =
            parse_sealed::<Vec<SealedEnvelope>, Vec<Envelope>>(&body)?;
        if envelopes.is_empty() {
            return Err(ProxyError::BadRequest("the batch is empty".into()).into());
        }
        let (acks, signature) = take(state, incoming, body, envelopes).await?;
        (serde_json::to_vec(&acks), signature)
    } else if incoming.target == CARRIED_TARGETS[0] {
        let envelope: SealedEnvelope = parse_sealed::<SealedEnvelope, Envelope>(&body)?;
        let (mut acks, signature) = take(state, incoming, body, vec![envelope]).await?;
        (serde_json::to_vec(&acks.remove(0)), signature)
    } else {
        return Err(ProxyError::NotFound(format!(
            "{} is not a route this proxy takes relayed messages on",
            incoming.target
        ))
        .into());
    };
    Ok((json.map_err(ProxyError::storage)?, signature))
}

/// Checks the request and its envelopes, queues them, and signs their acknowledgement.
///
/// The signatures are checked, and the acknowledgement signed, on a blocking thread: about a
/// tenth of a millisecond of arithmetic that would otherwise hold up this worker's other
/// requests and actors (the outbox delivering to the own peer runs here too).
async fn take(
    state: &ProxyState,
    incoming: Incoming,
    body: web::Bytes,
    envelopes: Vec<SealedEnvelope>,
) -> Result<(Vec<Ack>, String), Refusal> {
    let published = state.published.borrow().clone();
    state.check_started(&published)?;
    let Incoming {
        method,
        target,
        header,
        tls_key,
    } = incoming;
    let hops = state.hops.clone();
    let directory = published.clone();
    let (origin, opened, signature) = web::block(move || {
        let relayed = Relayed {
            method: &method,
            target: &target,
            header: header.as_deref(),
            body: &body,
            tls_key: tls_key.as_ref(),
        };
        let (origin, opened) = hops.check_relay(
            &relayed,
            &envelopes,
            &directory.directory,
            crate::wire::now_ms(),
        )?;
        let signature = hops.sign_ack(opened.iter().map(|(e, _)| e));
        Ok::<_, ProxyError>((origin, opened, signature))
    })
    .await
    .map_err(ProxyError::unavailable)??;
    // From here on the request is its origin's, signed and new: a refusal is this proxy's
    // answer to it, and is signed when a relay carries it.
    let checked = |error: ProxyError| Refusal {
        error,
        checked: true,
    };
    state.check_not_ai(&published, &origin).map_err(checked)?;
    for (e, _) in &opened {
        state.check_relayed(e).map_err(checked)?;
    }
    let ids: Vec<_> = opened.iter().map(|(e, _)| e.id.clone()).collect();
    let (envelopes, chains): (Vec<Envelope>, Vec<_>) = opened
        .into_iter()
        .map(|(e, chain)| (as_relayed(e), chain))
        .unzip();
    let duplicates = state
        .enqueue_relayed(envelopes, chains, Origin::Relay)
        .await
        .map_err(checked)?;
    state.hops.acknowledged();
    let acks = ids
        .into_iter()
        .zip(duplicates)
        .map(|(id, duplicate)| Ack { id, duplicate })
        .collect();
    Ok((acks, signature))
}

async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ProxyState,
) -> Result<web::Bytes, ProxyError> {
    read_limited(req, payload, state.max_body_bytes)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => ProxyError::TooLarge(e.to_string()),
            other => ProxyError::BadRequest(other.to_string()),
        })
}

/// The sealed form `T`; a body that is the clear form `Clear` instead (a proxy of a release
/// before sealing) is told to wait (503: its outbox keeps the message) for its upgrade.
fn parse_sealed<T: serde::de::DeserializeOwned, Clear: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, ProxyError> {
    serde_json::from_slice(body).map_err(|e| {
        if serde_json::from_slice::<Clear>(body).is_ok() {
            ProxyError::Retry(
                "this proxy takes only sealed message bodies (overlay/seal/v1): the sending \
                 proxy is of an older release and must be upgraded; its messages wait in its \
                 outbox until then"
                    .to_string(),
            )
        } else {
            ProxyError::BadRequest(format!("invalid JSON: {e}"))
        }
    })
}

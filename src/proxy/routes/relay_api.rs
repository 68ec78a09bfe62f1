//! The routes other proxies of ours call: a message (or a batch) relayed for this proxy's user,
//! signed by its origin proxy (see [`crate::proxy::signed_hop`]), answered with an Ack once it
//! is durably queued, and this proxy's signature over what it acknowledges in the
//! [`ACK_HEADER`] header.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{as_relayed, ProxyState};
use crate::proxy::error::ProxyError;
use crate::proxy::signed_hop::Relayed;
use crate::proxy::store::Origin;
use crate::trust::request::SIGNATURE_HEADER;
use crate::web::{read_limited, BodyError};
use crate::wire::data_plane::{Ack, Envelope, ACK_HEADER};

/// # POST /api/v1/relay
/// Another proxy hands over a message for this proxy's user; 200 Ack once durably stored.
pub(super) async fn relay(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ProxyState>,
) -> Result<HttpResponse, ProxyError> {
    let body = read_body(&req, payload, &state).await?;
    let envelope: Envelope = parse(&body)?;
    let (mut acks, signature) = take(&state, &req, body, vec![envelope]).await?;
    Ok(HttpResponse::Ok()
        .insert_header((ACK_HEADER, signature))
        .json(acks.remove(0)))
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
    let envelopes: Vec<Envelope> = parse(&body)?;
    if envelopes.is_empty() {
        return Err(ProxyError::BadRequest("the batch is empty".into()));
    }
    let (acks, signature) = take(&state, &req, body, envelopes).await?;
    Ok(HttpResponse::Ok()
        .insert_header((ACK_HEADER, signature))
        .json(acks))
}

/// Checks the request and its envelopes, queues them, and signs their acknowledgement.
///
/// The signatures are checked, and the acknowledgement signed, on a blocking thread: about a
/// tenth of a millisecond of arithmetic that would otherwise hold up this worker's other
/// requests and actors (the outbox delivering to the own peer runs here too).
async fn take(
    state: &ProxyState,
    req: &HttpRequest,
    body: web::Bytes,
    envelopes: Vec<Envelope>,
) -> Result<(Vec<Ack>, String), ProxyError> {
    let published = state.published.borrow().clone();
    state.check_started(&published)?;
    let method = req.method().as_str().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or(req.path(), |pq| pq.as_str())
        .to_string();
    let header = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let hops = state.hops.clone();
    let directory = published.clone();
    let tls_key = req.conn_data::<crate::trust::tls::PeerKey>().map(|k| k.0);
    let (origin, envelopes, signature) = web::block(move || {
        let relayed = Relayed {
            method: &method,
            target: &target,
            header: header.as_deref(),
            body: &body,
            tls_key: tls_key.as_ref(),
        };
        let origin = hops.check_relay(
            &relayed,
            &envelopes,
            &directory.directory,
            crate::wire::now_ms(),
        )?;
        let signature = hops.sign_ack(envelopes.iter());
        Ok::<_, ProxyError>((origin, envelopes, signature))
    })
    .await
    .map_err(ProxyError::unavailable)??;
    state.check_not_ai(&published, &origin)?;
    for e in &envelopes {
        state.check_relayed(e)?;
    }
    let ids: Vec<_> = envelopes.iter().map(|e| e.id.clone()).collect();
    let envelopes: Vec<Envelope> = envelopes.into_iter().map(as_relayed).collect();
    let duplicates = if envelopes.len() == 1 {
        let e = envelopes.into_iter().next().expect("one envelope");
        vec![state.enqueue(e, Origin::Relay).await?]
    } else {
        state.enqueue_many(envelopes, Origin::Relay).await?
    };
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

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ProxyError> {
    serde_json::from_slice(body).map_err(|e| ProxyError::BadRequest(format!("invalid JSON: {e}")))
}

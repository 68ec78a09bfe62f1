//! The routes other proxies of ours call: a message (or a batch) relayed for this proxy's user,
//! answered with an Ack once it is durably queued.

use actix_web::{web, HttpResponse};

use super::{as_relayed, batch, ProxyState};
use crate::proxy::error::ProxyError;
use crate::proxy::store::Origin;
use crate::wire::data_plane::{Ack, Envelope};

/// # POST /api/v1/relay
/// Another proxy hands over a message for this proxy's user; 200 Ack once durably stored.
pub(super) async fn relay(
    state: web::Data<ProxyState>,
    envelope: web::Json<Envelope>,
) -> Result<HttpResponse, ProxyError> {
    let envelope = as_relayed(envelope.into_inner());
    state.check_relayed(&envelope)?;
    let id = envelope.id.clone();
    let duplicate = state.enqueue(envelope, Origin::Relay).await?;
    Ok(HttpResponse::Ok().json(Ack { id, duplicate }))
}

/// # POST /api/v1/relay/batch
/// Another proxy of ours hands over several messages (`[Envelope]`); 200 `[Ack]`, in order, once
/// all are durably stored in one transaction. One bad envelope refuses the whole batch.
pub(super) async fn relay_batch(
    state: web::Data<ProxyState>,
    envelopes: web::Json<Vec<Envelope>>,
) -> Result<HttpResponse, ProxyError> {
    let envelopes: Vec<Envelope> = batch(envelopes)?.into_iter().map(as_relayed).collect();
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

//! What this peer's proxy calls: messages for this user (one or a batch), receipts for
//! its messages, and the chunks of an AI reply being written.

use super::*;

/// # POST /api/v1/inbox
pub async fn inbox(state: State, body: web::Json<Envelope>) -> Result<HttpResponse, NativeError> {
    let envelope = take_incoming(&state, body.into_inner())?;
    let ack = store_incoming(&state, &envelope).await?;
    Ok(HttpResponse::Ok().json(ack))
}

/// # POST /api/v1/inbox/batch
/// Several messages from the proxy (`[Envelope]`), stored in ONE commit; 200 `[Ack]` in the same
/// order once committed (idempotent by id, as `/api/v1/inbox`). All or nothing: one envelope this
/// peer does not take refuses the whole batch with that envelope's status (400, or 413 when too
/// large; never 404/405, which tell the proxy this route does not exist), naming it, and nothing
/// is stored; the proxy then sends them one by one so each gets its own answer.
pub async fn inbox_batch(
    state: State,
    body: web::Json<Vec<Envelope>>,
) -> Result<HttpResponse, NativeError> {
    let received = body.into_inner();
    if received.is_empty() {
        return Err(PeerError::Invalid("the batch is empty".into()).into());
    }
    let mut envelopes = Vec::with_capacity(received.len());
    for (i, e) in received.into_iter().enumerate() {
        let id = e.id.clone();
        envelopes.push(take_incoming(&state, e).map_err(|err| match err {
            PeerError::Invalid(why) => {
                PeerError::Invalid(format!("message {i} (id {id}) of the batch: {why}"))
            }
            other => other,
        })?);
    }
    let messages = envelopes
        .iter()
        .map(|e| StoredMessage::incoming(e, state.name.as_str()))
        .collect();
    let stored = state
        .writes
        .send(AppendMany { messages })
        .await
        .map_err(PeerError::from)?;
    let mut acks = Vec::with_capacity(stored.len());
    let mut fresh = Vec::new();
    for result in stored {
        // One transaction: either every op is committed or none is (the same error for all).
        let appended = result?;
        if !appended.duplicate {
            fresh.push(appended.message.clone());
        }
        acks.push(Ack {
            id: appended.message.id,
            duplicate: appended.duplicate,
        });
    }
    for message in fresh {
        state.auto_reply.do_send(MessageReceived { message });
    }
    Ok(HttpResponse::Ok().json(acks))
}

/// # POST /api/v1/receipts/batch
/// Several receipts (`[Receipt]`) applied together: the write queue commits them in one
/// transaction. A receipt for an id this peer does not have (e.g. its chat was cleared) is
/// skipped, as the single route's 404 would be; the answer counts what was applied.
pub async fn receipts_batch(
    state: State,
    body: web::Json<Vec<Receipt>>,
) -> Result<HttpResponse, NativeError> {
    let results = state
        .writes
        .send(ApplyReceipts {
            receipts: body.into_inner(),
        })
        .await
        .map_err(PeerError::from)?;
    let mut applied = 0;
    for result in results {
        match result {
            Ok(_) => applied += 1,
            Err(PeerError::UnknownMessage(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("{applied} receipts applied"),
    })))
}

/// # POST /api/v1/receipts
pub async fn receipts(state: State, body: web::Json<Receipt>) -> Result<HttpResponse, NativeError> {
    let receipt = body.into_inner();
    let message = state
        .writes
        .send(SetDeliveryState {
            id: receipt.id,
            state: receipt.state,
        })
        .await
        .map_err(PeerError::from)??;
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("message {} is {}", message.id, message.state.label()),
    })))
}

/// # POST /api/v1/stream
pub async fn stream(
    state: State,
    body: web::Json<StreamChunk>,
) -> Result<HttpResponse, NativeError> {
    let chunk = body.into_inner();
    check_size(&chunk.delta, state.max_message_bytes)?;
    state.updates.do_send(Publish {
        event: PageEvent::Stream {
            id: chunk.id.to_string(),
            peer: chunk.from.clone(),
            from: chunk.from,
            seq: chunk.seq,
            delta: chunk.delta,
        },
    });
    Ok(HttpResponse::Ok().json(success(Note {
        message: "chunk passed to the open pages".into(),
    })))
}

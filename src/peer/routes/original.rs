//! compat: the original's JSON API and page, answered in its shapes.

use super::*;

/// # GET /
pub async fn page(state: State, proxy: Proxy) -> HttpResponse {
    let contacts = contact_list(&state, &proxy).await;
    let auto = state
        .auto_reply
        .send(GetAutoReplyStats)
        .await
        .unwrap_or_default();
    let markup = views::chat_page(&views::PageData {
        name: state.name.as_str(),
        display_name: &state.display_name,
        auto_reply: auto.enabled,
        contacts: &contacts,
    });
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// # GET /peer_name
pub async fn peer_name(state: State) -> HttpResponse {
    HttpResponse::Ok().json(PeerName {
        name: state.name.to_string(),
    })
}

/// # GET /peers
pub async fn peers(state: State, proxy: Proxy) -> Result<HttpResponse, PeerError> {
    let table = proxy.legacy_peers().await?;
    let list: Vec<PeerListItem> = table
        .peers
        .keys()
        .filter(|n| !state.name.matches(n))
        .map(|n| PeerListItem {
            name: display_of(n),
            id: n.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// # POST /send_message
pub async fn send_message(
    state: State,
    body: web::Json<legacy::SendMessage>,
) -> Result<HttpResponse, PeerError> {
    let body = body.into_inner();
    required(body.missing_fields())?;
    let (Some(peer_id), Some(text)) = (body.peer_id, body.message) else {
        return Err(PeerError::MissingFields(vec!["peer_id", "message"]));
    };
    let to = peer_name_of(&peer_id, "peer_id")?;
    check_size(&text, state.max_message_bytes)?;
    let envelope = Envelope::text(state.name.as_str(), &to, text);
    // fixes original: answered only once the proxy holds the message durably.
    let stored = state.outgoing.send(SendMessage { envelope }).await??;
    Ok(HttpResponse::Ok().json(success(Sent { id: stored.id })))
}

/// # POST /message
pub async fn message(
    state: State,
    body: web::Json<legacy::Message>,
) -> Result<HttpResponse, PeerError> {
    let body = body.into_inner();
    required(body.missing_fields())?;
    let (Some(text), Some(from)) = (&body.message, &body.from) else {
        return Err(PeerError::MissingFields(vec!["message", "from"]));
    };
    let from = peer_name_of(from, "from")?;
    check_size(text, state.max_message_bytes)?;
    let mut envelope = body.to_envelope(state.name.as_str());
    // Normalised once, here: the name checked is the name stored.
    envelope.from = from.into();
    let ack = store_incoming(&state, &envelope).await?;
    Ok(HttpResponse::Ok().json(success(Sent { id: ack.id })))
}

/// # GET /get_chat_history/{peer_id}
pub async fn chat_history(
    state: State,
    peer_id: web::Path<String>,
) -> Result<HttpResponse, PeerError> {
    // An unknown conversation is an empty history, not an error.
    let messages = state
        .store
        .send(GetHistory {
            peer: peer_id.into_inner(),
        })
        .await??;
    let entries: Vec<legacy::HistoryEntry> =
        messages.iter().map(StoredMessage::history_entry).collect();
    Ok(HttpResponse::Ok().json(entries))
}

/// # GET /message_updates
pub async fn message_updates(state: State) -> Result<impl actix_web::Responder, PeerError> {
    let rx = state.updates.send(Subscribe { feed: Feed::Legacy }).await?;
    Ok(sse::Sse::from_infallible_receiver(rx).with_keep_alive(Duration::from_secs(15)))
}

/// # POST /clear_chat/{peer_id}
/// Deletes the chat here, then has the proxy forget its AI memory; answered after both, so a
/// message sent right after never meets the old conversation.
pub async fn clear_chat(
    state: State,
    proxy: Proxy,
    peer_id: web::Path<String>,
) -> Result<HttpResponse, PeerError> {
    let peer = peer_id.into_inner();
    let removed = state
        .writes
        .send(ClearConversations {
            peer: Some(peer.clone()),
        })
        .await??;
    let cleared = format!("Chat history with {peer} cleared ({removed} messages)");
    // A name no endpoint can have has no AI memory to forget.
    if InstanceName::parse(peer.trim()).is_err() {
        return Ok(HttpResponse::Ok().json(success(Note { message: cleared })));
    }
    let message = forget(&proxy, Some(&peer), cleared).await?;
    Ok(HttpResponse::Ok().json(success(Note { message })))
}

/// # POST /clear_all_chats
/// Deletes every chat here, then has the proxy forget every AI memory; answered after both.
pub async fn clear_all_chats(state: State, proxy: Proxy) -> Result<HttpResponse, PeerError> {
    let removed = state
        .writes
        .send(ClearConversations { peer: None })
        .await??;
    let cleared = format!("All chat histories cleared ({removed} messages)");
    let message = forget(&proxy, None, cleared).await?;
    Ok(HttpResponse::Ok().json(success(Note { message })))
}

/// compat: the original's 400 naming the fields a request lacks, if it lacks any.
fn required(missing: Vec<&'static str>) -> Result<(), PeerError> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PeerError::MissingFields(missing))
    }
}

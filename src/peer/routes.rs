//! The peer's HTTP routes, in three groups, with one route table ([`configure`]):
//! - the original's JSON API and page (`/`, `/peer_name`, `/peers`, `/send_message`, `/message`,
//!   `/get_chat_history/{peer_id}`, `/message_updates`, `/clear_chat/{peer_id}`, `/clear_all_chats`);
//! - what its proxy calls (`/api/v1/inbox`, `/api/v1/inbox/batch`, `/api/v1/receipts`(`/batch`),
//!   `/api/v1/stream`);
//! - what its own page calls (`/api/v1/me`, `/api/v1/contacts`,
//!   `/api/v1/conversations/{peer}/messages`, `/api/v1/events`).
//!
//! Handlers are thin: check the input, ask an actor, shape the answer. They hold no state.

use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_lab::sse;
use serde::{Deserialize, Serialize};

use super::auto_reply::{AutoReply, AutoReplyStats, GetAutoReplyStats, MessageReceived};
use super::contacts::{display_of, merge_contacts, ContactList};
use super::error::{NativeError, PeerError};
use super::outgoing::{Outgoing, SendMessage};
use super::proxy_client::ProxyApi;
use super::store::{
    AppendMany, AppendMessage, ApplyReceipts, ChatStore, ClearConversations, GetHistory, GetPage,
    HistoryPage, ListConversations, SetDeliveryState, StoredMessage, WriteQueue,
};
use super::updates::{Feed, PageEvent, Publish, Subscribe, Updates};
use super::views;
use crate::config::InstanceName;
use crate::web::BodyError;
use crate::wire::data_plane::{Ack, Envelope, Forget, MessageId, Receipt, StreamChunk};
use crate::wire::legacy::{self, success, Note, PeerListItem, PeerName};

/// What the handlers share: fixed facts and the actors' addresses.
pub struct PeerState {
    pub name: InstanceName,
    pub display_name: String,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    pub store: Addr<ChatStore>,
    pub writes: Addr<WriteQueue>,
    pub updates: Addr<Updates>,
    pub outgoing: Addr<Outgoing>,
    pub auto_reply: Addr<AutoReply>,
}

type State = web::Data<PeerState>;
/// The proxy's read-only calls, one client per HTTP worker (see [`super::start`]).
type Proxy = web::Data<ProxyApi>;

/// The JSON body reader of every route here (the shared one, `crate::web`): over the limit is
/// [`PeerError::BodyTooLarge`], anything else unreadable [`PeerError::Invalid`] saying what.
fn json_config<E>(limit: usize) -> web::JsonConfig
where
    E: From<PeerError> + Into<actix_web::Error>,
{
    crate::web::json_config_with(limit, |e: BodyError| {
        E::from(match e {
            BodyError::TooLarge { limit } | BodyError::TooLong { limit, .. } => {
                PeerError::BodyTooLarge { limit }
            }
            other => PeerError::Invalid(other.to_string()),
        })
    })
}

/// The route table, shared by the server and nothing else.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(json_config::<PeerError>(max_body_bytes))
        // compat: the original's page and JSON API.
        .route("/", web::get().to(page))
        .route("/peer_name", web::get().to(peer_name))
        .route("/peers", web::get().to(peers))
        .route("/send_message", web::post().to(send_message))
        .route("/message", web::post().to(message))
        .route("/get_chat_history/{peer_id}", web::get().to(chat_history))
        .route("/message_updates", web::get().to(message_updates))
        .route("/clear_chat/{peer_id}", web::post().to(clear_chat))
        .route("/clear_all_chats", web::post().to(clear_all_chats))
        .service(
            web::scope("/api/v1")
                .app_data(json_config::<NativeError>(max_body_bytes))
                // what the proxy calls
                .route("/inbox", web::post().to(inbox))
                .route("/inbox/batch", web::post().to(inbox_batch))
                .route("/receipts", web::post().to(receipts))
                .route("/receipts/batch", web::post().to(receipts_batch))
                .route("/stream", web::post().to(stream))
                // what the page calls
                .route("/me", web::get().to(me))
                .route("/contacts", web::get().to(contacts))
                .route(
                    "/conversations/{peer}/messages",
                    web::get().to(conversation_messages),
                )
                .route("/events", web::get().to(events)),
        );
}

/// A peer name from a request: a valid instance name.
fn peer_name_of(s: &str, field: &str) -> Result<String, PeerError> {
    InstanceName::parse(s.trim())
        .map(|n| n.to_string())
        .map_err(|e| PeerError::Invalid(format!("{field}: {e}")))
}

fn check_size(text: &str, limit: usize) -> Result<(), PeerError> {
    if text.len() > limit {
        Err(PeerError::MessageTooLarge {
            bytes: text.len(),
            limit,
        })
    } else {
        Ok(())
    }
}

/// Answer of `/send_message` and `/message`: the original's success, plus the message id.
#[derive(Serialize)]
struct Sent {
    id: MessageId,
}

// ---- the original's API ----

/// # GET /
async fn page(state: State, proxy: Proxy) -> HttpResponse {
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
async fn peer_name(state: State) -> HttpResponse {
    HttpResponse::Ok().json(PeerName {
        name: state.name.to_string(),
    })
}

/// # GET /peers
async fn peers(state: State, proxy: Proxy) -> Result<HttpResponse, PeerError> {
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
async fn send_message(
    state: State,
    body: web::Json<legacy::SendMessage>,
) -> Result<HttpResponse, PeerError> {
    let body = body.into_inner();
    let missing = body.missing_fields();
    if !missing.is_empty() {
        return Err(PeerError::MissingFields(missing));
    }
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
async fn message(
    state: State,
    body: web::Json<legacy::Message>,
) -> Result<HttpResponse, PeerError> {
    let body = body.into_inner();
    let missing = body.missing_fields();
    if !missing.is_empty() {
        return Err(PeerError::MissingFields(missing));
    }
    let (Some(text), Some(from)) = (&body.message, &body.from) else {
        return Err(PeerError::MissingFields(vec!["message", "from"]));
    };
    let from = peer_name_of(from, "from")?;
    check_size(text, state.max_message_bytes)?;
    let mut envelope = body.to_envelope(state.name.as_str());
    // Normalised once, here: the name checked is the name stored.
    envelope.from = from;
    let ack = store_incoming(&state, &envelope).await?;
    Ok(HttpResponse::Ok().json(success(Sent { id: ack.id })))
}

/// Stores someone's message (once) and lets auto-reply see it the first time.
async fn store_incoming(state: &PeerState, envelope: &Envelope) -> Result<Ack, PeerError> {
    let stored = state
        .writes
        .send(AppendMessage {
            message: StoredMessage::incoming(envelope, state.name.as_str()),
        })
        .await??;
    if !stored.duplicate {
        state.auto_reply.do_send(MessageReceived {
            message: stored.message.clone(),
        });
    }
    Ok(Ack {
        id: stored.message.id,
        duplicate: stored.duplicate,
    })
}

/// # GET /get_chat_history/{peer_id}
async fn chat_history(state: State, peer_id: web::Path<String>) -> Result<HttpResponse, PeerError> {
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
async fn message_updates(state: State) -> Result<impl actix_web::Responder, PeerError> {
    let rx = state.updates.send(Subscribe { feed: Feed::Legacy }).await?;
    Ok(sse::Sse::from_infallible_receiver(rx).with_keep_alive(Duration::from_secs(15)))
}

/// Asks the proxy to forget the AI memory of the chat with `with` (every chat when None), and
/// waits for it: the clear is answered only once a message sent next cannot meet the old
/// conversation. The chat is cleared here whatever happens: when the proxy could not forget,
/// the answer says so ([`PeerError::NotForgotten`], 502) instead of pretending.
async fn forget(
    proxy: &ProxyApi,
    with: Option<&str>,
    cleared: String,
) -> Result<String, PeerError> {
    let request = match with {
        Some(peer) => Forget::chat(peer),
        None => Forget::all(),
    };
    match proxy.forget(&request).await {
        Ok(()) => Ok(cleared),
        Err(e) => {
            log::warn!("{cleared}, but the proxy could not forget it: {e}");
            Err(PeerError::NotForgotten {
                cleared,
                reason: e.to_string(),
            })
        }
    }
}

/// # POST /clear_chat/{peer_id}
/// Deletes the chat here, then has the proxy forget its AI memory; answered after both, so a
/// message sent right after never meets the old conversation.
async fn clear_chat(
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
async fn clear_all_chats(state: State, proxy: Proxy) -> Result<HttpResponse, PeerError> {
    let removed = state
        .writes
        .send(ClearConversations { peer: None })
        .await??;
    let cleared = format!("All chat histories cleared ({removed} messages)");
    let message = forget(&proxy, None, cleared).await?;
    Ok(HttpResponse::Ok().json(success(Note { message })))
}

// ---- what the proxy calls ----

/// `envelope` as this peer stores it, if it takes it from its proxy: for this user, from a
/// valid name, not over the size limit. The sender's name is normalised here, once, at the
/// edge: what was checked (the trimmed name) is what is stored and shown.
fn take_incoming(state: &PeerState, mut envelope: Envelope) -> Result<Envelope, PeerError> {
    if !state.name.matches(&envelope.to) {
        return Err(PeerError::Invalid(format!(
            "this message is for `{}`, but this is {}'s peer",
            envelope.to, state.name
        )));
    }
    envelope.from = peer_name_of(&envelope.from, "from")?;
    check_size(envelope.body.text(), state.max_message_bytes)?;
    Ok(envelope)
}

/// # POST /api/v1/inbox
async fn inbox(state: State, body: web::Json<Envelope>) -> Result<HttpResponse, NativeError> {
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
async fn inbox_batch(
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
async fn receipts_batch(
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
async fn receipts(state: State, body: web::Json<Receipt>) -> Result<HttpResponse, NativeError> {
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
async fn stream(state: State, body: web::Json<StreamChunk>) -> Result<HttpResponse, NativeError> {
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

// ---- what the page calls ----

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    pub name: String,
    pub display_name: String,
    pub auto_reply: AutoReplyStats,
}

/// # GET /api/v1/me
async fn me(state: State) -> Result<HttpResponse, NativeError> {
    let auto_reply = state
        .auto_reply
        .send(GetAutoReplyStats)
        .await
        .map_err(PeerError::from)?;
    Ok(HttpResponse::Ok().json(Me {
        name: state.name.to_string(),
        display_name: state.display_name.clone(),
        auto_reply,
    }))
}

async fn contact_list(state: &PeerState, proxy: &ProxyApi) -> ContactList {
    let (directory, conversations) =
        futures_util::future::join(proxy.directory(), state.store.send(ListConversations)).await;
    let mut error = None;
    let directory = match directory {
        Ok(d) => d,
        Err(e) => {
            error = Some(e.to_string());
            Vec::new()
        }
    };
    let conversations = match conversations.map_err(PeerError::from).and_then(|r| r) {
        Ok(c) => c,
        Err(e) => {
            error = Some(e.to_string());
            Vec::new()
        }
    };
    ContactList {
        contacts: merge_contacts(state.name.as_str(), &directory, &conversations),
        error,
    }
}

/// # GET /api/v1/contacts
async fn contacts(state: State, proxy: Proxy) -> HttpResponse {
    HttpResponse::Ok().json(contact_list(&state, &proxy).await)
}

/// Query of `GET /api/v1/conversations/{peer}/messages`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Only messages older than this seq (the `next_before` of the previous page).
    pub before: Option<u64>,
    /// 1 to 500; default 50.
    pub limit: Option<usize>,
}

/// # GET /api/v1/conversations/{peer}/messages
async fn conversation_messages(
    state: State,
    peer: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, NativeError> {
    let query = web::Query::<PageQuery>::from_query(req.query_string()).map_err(|e| {
        PeerError::Invalid(format!("bad query: {e}; use ?before=SEQ&limit=N (numbers)"))
    })?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(PeerError::Invalid(format!("limit {limit} is not between 1 and 500")).into());
    }
    let page: HistoryPage = state
        .store
        .send(GetPage {
            peer: peer.into_inner(),
            before: query.before,
            limit,
        })
        .await
        .map_err(PeerError::from)??;
    Ok(HttpResponse::Ok().json(page))
}

/// # GET /api/v1/events
async fn events(state: State) -> Result<impl actix_web::Responder, NativeError> {
    let rx = state
        .updates
        .send(Subscribe { feed: Feed::Page })
        .await
        .map_err(PeerError::from)?;
    Ok(sse::Sse::from_infallible_receiver(rx)
        .with_keep_alive(Duration::from_secs(15))
        .with_retry_duration(Duration::from_secs(2)))
}

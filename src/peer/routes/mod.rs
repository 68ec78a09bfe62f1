//! The peer's HTTP routes, one file per audience, with one route table ([`configure`]):
//! - [`original`]: the original's JSON API and page (`/`, `/peer_name`, `/peers`,
//!   `/send_message`, `/message`, `/get_chat_history/{peer_id}`, `/message_updates`,
//!   `/clear_chat/{peer_id}`, `/clear_all_chats`);
//! - [`from_proxy`]: what its proxy calls (`/api/v1/inbox`, `/api/v1/inbox/batch`,
//!   `/api/v1/receipts`(`/batch`), `/api/v1/stream`);
//! - [`page_api`]: what its own page calls (`/api/v1/me`, `/api/v1/contacts`,
//!   `/api/v1/conversations/{peer}/messages`, `.../stop`, `.../regenerate`, `.../export`,
//!   `/api/v1/search`, `/api/v1/events`).
//!
//! This file holds what they share: the state, the route table and the checks of a message.
//! Handlers are thin: check the input, ask an actor, shape the answer. They hold no state.

mod from_proxy;
mod original;
mod page_api;

pub use page_api::{Me, PageQuery};

use from_proxy::{inbox, inbox_batch, receipts, receipts_batch, stream};
use original::{
    chat_history, clear_all_chats, clear_chat, message, message_updates, page, peer_name, peers,
    send_message,
};
use page_api::{
    contacts, conversation_messages, events, export, me, regenerate, search, search_page,
    stop_reply,
};

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
    HistoryPage, ListConversations, Search, SetDeliveryState, StoredMessage, WriteQueue,
};
use super::updates::{Feed, PageEvent, Publish, Subscribe, Updates};
use super::views;
use crate::config::InstanceName;
use crate::web::BodyError;
use crate::wire::data_plane::{Ack, Envelope, Forget, MessageId, Receipt, StreamChunk};
use crate::wire::legacy::{self, success, Note, PeerListItem, PeerName};

/// What the handlers share: fixed facts and the actors' addresses.
pub struct PeerState {
    /// The AI models the proxy's directory lists, as last read: their replies are shown
    /// rendered from Markdown.
    pub ai: crate::peer::contacts::AiNames,
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
/// The handlers' calls to the proxy (reads, and an AI reply's stop and regenerate), one client
/// per HTTP worker (see [`super::start`]).
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

/// The routes that are not the page's, so exempt from the `Host` check and the page login:
/// those only this peer's proxy calls (and anything below them), guarded by the link; and
/// `/healthz` (open, no secrets) and `/metrics` (loopback or the metrics token, checked by
/// [`crate::web::metrics`] itself, rebound names included).
pub const FROM_PROXY: &[&str] = &[
    "/api/v1/inbox",
    "/api/v1/receipts",
    "/api/v1/stream",
    "/message",
    "/healthz",
    "/metrics",
];

/// The route table, shared by the server and nothing else.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    // A route only this peer's proxy calls (see [`crate::hop::link`]).
    let from_proxy = |path: &str| {
        web::resource(path).wrap(actix_web::middleware::from_fn(crate::hop::link::require))
    };
    cfg.app_data(json_config::<PeerError>(max_body_bytes))
        // compat: the original's page and JSON API.
        .route("/", web::get().to(page))
        .route("/search", web::get().to(search_page))
        .route("/peer_name", web::get().to(peer_name))
        .route("/peers", web::get().to(peers))
        .route("/send_message", web::post().to(send_message))
        // compat: the original's proxy hand-over, now from this peer's own proxy only.
        .service(from_proxy("/message").route(web::post().to(message)))
        .route("/get_chat_history/{peer_id}", web::get().to(chat_history))
        .route("/message_updates", web::get().to(message_updates))
        .route("/clear_chat/{peer_id}", web::post().to(clear_chat))
        .route("/clear_all_chats", web::post().to(clear_all_chats))
        .service(
            web::scope("/api/v1")
                .app_data(json_config::<NativeError>(max_body_bytes))
                // what the proxy calls: loopback callers, or the link token
                .service(from_proxy("/inbox").route(web::post().to(inbox)))
                .service(from_proxy("/inbox/batch").route(web::post().to(inbox_batch)))
                .service(from_proxy("/receipts").route(web::post().to(receipts)))
                .service(from_proxy("/receipts/batch").route(web::post().to(receipts_batch)))
                .service(from_proxy("/stream").route(web::post().to(stream)))
                // what the page calls
                .route("/me", web::get().to(me))
                .route("/contacts", web::get().to(contacts))
                .route(
                    "/conversations/{peer}/messages",
                    web::get().to(conversation_messages),
                )
                .route("/conversations/{peer}/export", web::get().to(export))
                .route("/conversations/{peer}/stop", web::post().to(stop_reply))
                .route(
                    "/conversations/{peer}/regenerate",
                    web::post().to(regenerate),
                )
                .route("/search", web::get().to(search))
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
    envelope.from = peer_name_of(&envelope.from, "from")?.into();
    check_size(envelope.body.text(), state.max_message_bytes)?;
    Ok(envelope)
}

async fn contact_list(state: &PeerState, proxy: &ProxyApi) -> ContactList {
    let (directory, conversations) =
        futures_util::future::join(proxy.directory(), state.store.send(ListConversations)).await;
    let mut error = None;
    let directory = match directory {
        Ok(d) => {
            state.ai.learn(&d);
            d
        }
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

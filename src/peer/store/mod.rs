//! Every conversation of this user, kept in redb at `{data_dir}/peer-{name}.redb`, behind the
//! write-ahead log `peer-{name}.wal`, with the durable-store kit ([`crate::storage`]).
//!
//! This file holds what the store keeps and answers (messages, their states, conversation
//! summaries, pages); the rest by noun:
//! - [`schema`]: the tables, the write ops and how one group of them is applied.
//! - [`reads`]: [`ChatStore`], a `SyncArbiter` actor doing the blocking reads, off the event loop.
//! - [`writes`]: [`WriteQueue`], the one writer (the kit's [`crate::storage::Writer`] on the
//!   role's worker thread) and the messages it takes. Each caller is answered once the log has
//!   the write on disk; the open pages learn of it then ([`super::updates`]).
//!
//! It never talks HTTP and never decides what to send.
//! fixes original: no whole-file rewrite per message; a retried message is stored once.

mod reads;
mod schema;
mod writes;

use serde::{Deserialize, Serialize};

use crate::wire::data_plane::{DeliveryState, Envelope, MessageId};
use crate::wire::legacy::HistoryEntry;

pub use reads::{
    ChatStore, GetAutoReplyNext, GetHistory, GetPage, ListConversations, ListUnsent, Search,
};
pub use schema::{ChatSchema, WriteOp, WriteOutcome};
pub use writes::{
    writer, AppendMany, AppendMessage, AppendOutgoing, Appended, ApplyReceipts, ClearConversations,
    Durable, SetAutoReplyNext, SetDeliveryState, SetHandOver, WriteQueue,
};

/// Where a message is, from this user's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MessageState {
    /// Someone else's message, stored here.
    Received,
    /// Ours, handed to (or being handed to) the proxy, not yet stored by the receiver.
    Pending,
    /// Ours, stored by the receiver.
    Delivered,
    /// Ours, given up on; `reason` says why.
    Failed { reason: String },
}

impl MessageState {
    /// The word shown to users and in the legacy history's `status`.
    pub fn label(&self) -> &'static str {
        match self {
            MessageState::Received => "received",
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Failed { .. } => "failed",
        }
    }

    /// The state after a receipt saying `proposed`, or None when the receipt changes nothing:
    /// a received message has no delivery state, nothing goes back to pending, and a
    /// delivered message stays delivered (receipts may arrive out of order).
    pub fn after_receipt(&self, proposed: &DeliveryState) -> Option<MessageState> {
        let next = match proposed {
            DeliveryState::Pending => return None,
            DeliveryState::Delivered => MessageState::Delivered,
            DeliveryState::Failed { reason } => MessageState::Failed {
                reason: reason.clone(),
            },
        };
        match self {
            MessageState::Received | MessageState::Delivered => None,
            current if *current == next => None,
            _ => Some(next),
        }
    }
}

/// One message of a conversation, as stored and as the page API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: MessageId,
    /// Position in the store; grows with every stored message. 0 until stored.
    pub seq: u64,
    /// The other party of the conversation, as named by the sender.
    pub peer: String,
    pub from: crate::wire::PeerName,
    pub to: String,
    pub text: String,
    /// When it was born, Unix ms.
    pub sent_at_ms: u64,
    /// Written by this user.
    pub outgoing: bool,
    #[serde(flatten)]
    pub state: MessageState,
    pub auto_reply: bool,
    /// An error report (e.g. from an AI endpoint), shown as such.
    pub error: bool,
    /// Ours, pending, and not yet taken by the proxy: why (e.g. "waiting for your proxy: ...").
    /// It is handed over again until the proxy takes it or it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Came through a proxy of the original, which signs nothing: nobody vouches for `from`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    /// An AI reply's Markdown as safe HTML, set only as it is shown ([`crate::peer::views::shown`]):
    /// never stored, never read back.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

impl StoredMessage {
    /// Our own message, about to be handed to the proxy.
    pub fn outgoing(envelope: &Envelope) -> StoredMessage {
        StoredMessage {
            id: envelope.id.clone(),
            seq: 0,
            peer: envelope.to.to_string(),
            from: envelope.from.clone(),
            to: envelope.to.to_string(),
            text: envelope.body.text().to_string(),
            sent_at_ms: envelope.sent_at_ms,
            outgoing: true,
            state: MessageState::Pending,
            auto_reply: envelope.auto_reply,
            error: envelope.error,
            waiting: None,
            unauthenticated: false,
            html: None,
        }
    }

    /// Someone's message to `me`, stored under the sender.
    pub fn incoming(envelope: &Envelope, me: &str) -> StoredMessage {
        let peer = if envelope.from == me {
            envelope.to.clone()
        } else {
            envelope.from.clone()
        };
        StoredMessage {
            id: envelope.id.clone(),
            seq: 0,
            peer: peer.to_string(),
            from: envelope.from.clone(),
            to: envelope.to.to_string(),
            text: envelope.body.text().to_string(),
            sent_at_ms: envelope.sent_at_ms,
            outgoing: false,
            state: MessageState::Received,
            auto_reply: envelope.auto_reply,
            error: envelope.error,
            waiting: None,
            unauthenticated: envelope.unauthenticated,
            html: None,
        }
    }

    /// compat: a row of the original's `GET /get_chat_history/{peer_id}`.
    pub fn history_entry(&self) -> HistoryEntry {
        HistoryEntry {
            peer_id: self.peer.clone(),
            sender: self.from.to_string(),
            message: self.text.clone(),
            status: self.state.label().to_string(),
            timestamp: crate::wire::rfc3339_ms(self.sent_at_ms),
            auto_reply: self.auto_reply,
        }
    }
}

/// A conversation's key: the other party's name, ignoring case.
pub fn conversation_key(peer: &str) -> String {
    crate::wire::PeerName::from(peer.trim()).key()
}

/// Summary of one conversation, kept up to date on every insert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// The other party, as first named.
    pub peer: String,
    pub count: u64,
    pub last_seq: u64,
    pub last_at_ms: u64,
    /// The start of the last message, for the contact list.
    pub last_text: String,
}

/// A page of history: newest first, and where the next (older) page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    /// Pass as `before` for the next older page; None when this page reaches the start.
    pub next_before: Option<u64>,
}

#[cfg(test)]
mod tests;

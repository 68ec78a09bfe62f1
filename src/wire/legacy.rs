//! The original Python system's JSON shapes, kept field-for-field so its components, scripts and
//! bookmarks keep working against ours. This is the only place `"status":"success"` is spelled.
//!
//! Request bodies have optional fields so a handler can answer the original's 400 naming what is
//! missing, instead of a serde error in another shape.

use serde::{Deserialize, Serialize};

use super::control_plane::EndpointTable;

/// The original's `status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Error,
    Failed,
}

/// `{"status":"success", ...body}`.
#[derive(Debug, Clone, Serialize)]
pub struct Success<T: Serialize> {
    pub status: Status,
    #[serde(flatten)]
    pub body: T,
}

/// Wraps `body` in the original's success shape.
pub fn success<T: Serialize>(body: T) -> Success<T> {
    Success {
        status: Status::Success,
        body,
    }
}

/// `{"status":"success","message":...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Note {
    pub message: String,
}

/// `{"status":"error","message":...}`: the controller's and proxy's error shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub status: Status,
    pub message: String,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            status: Status::Error,
            message: message.into(),
        }
    }
}

/// `{"status":"failed","error":...}`: the peer's error shape for `/send_message`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedBody {
    pub status: Status,
    pub error: String,
}

impl FailedBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            status: Status::Failed,
            error: error.into(),
        }
    }
}

// ---- controller ----

/// 200 answer to `POST /api/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub message: String,
    pub endpoints: EndpointTable,
}

/// 200 answer to `GET /api/getendpoints` and `POST /api/update_proxy_endpoints/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    pub endpoints: EndpointTable,
}

// ---- proxy ----

/// `GET /peers` on a proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyPeers {
    pub instance: String,
    pub peers: EndpointTable,
}

/// A message as the original sends it: to a proxy (`POST /`, `Host: TARGET`) or to a peer
/// (`POST /message`). `auto` marks an AI reply; `status` is sent along by the original.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<bool>,
}

impl Message {
    /// The names of required fields that are missing or empty.
    pub fn missing_fields(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.message.is_none() {
            missing.push("message");
        }
        if self.from.as_deref().is_none_or(|f| f.trim().is_empty()) {
            missing.push("from");
        }
        missing
    }
}

// ---- peer ----

/// `GET /peer_name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerName {
    pub name: String,
}

/// One row of `GET /peers` on a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerListItem {
    pub name: String,
    pub id: String,
}

/// `POST /send_message` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendMessage {
    #[serde(default)]
    pub peer_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl SendMessage {
    pub fn missing_fields(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.peer_id.as_deref().is_none_or(|p| p.trim().is_empty()) {
            missing.push("peer_id");
        }
        if self.message.as_deref().is_none_or(|m| m.trim().is_empty()) {
            missing.push("message");
        }
        missing
    }
}

/// One row of `GET /get_chat_history/{peer_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub peer_id: String,
    pub sender: String,
    pub message: String,
    pub status: String,
    pub timestamp: String,
    pub auto_reply: bool,
}

/// `data:` of a `GET /message_updates` event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageUpdate {
    pub peer_id: String,
    pub timestamp: String,
}

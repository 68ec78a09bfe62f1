//! The original Python system's JSON shapes, kept field-for-field so its components, scripts and
//! bookmarks keep working against ours. This is the only place `"status":"success"` is spelled.
//!
//! Request bodies have optional fields so a handler can answer the original's 400 naming what is
//! missing, instead of a serde error in another shape.

use serde::{Deserialize, Serialize};

use super::control_plane::EndpointTable;
use super::data_plane::{conversation_id, Body, Envelope, MessageId};
use super::{now_ms, parse_timestamp_ms, rfc3339_ms};

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

/// The message of an error answer in either legacy shape ([`ErrorBody`], [`FailedBody`]), else
/// the start of its text (200 characters, trimmed); empty for an empty body.
pub fn error_message(body: &[u8]) -> String {
    if let Some(message) = error_field(body) {
        return message;
    }
    String::from_utf8_lossy(body)
        .chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

/// compat: the original's refusal of a name it does not know, `Unknown peer: NAME`.
pub fn unknown_peer(name: &str) -> String {
    format!("Unknown peer: {name}")
}

/// The message of an error body in the original's shapes (`{"message"}` or `{"error"}`), if
/// the body is one.
pub fn error_field(body: &[u8]) -> Option<String> {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return Some(e.message);
    }
    serde_json::from_slice::<FailedBody>(body)
        .ok()
        .map(|e| e.error)
}

/// An error body saying `Unknown peer: TO`: the receiver knows the route but not `to`, a real
/// refusal. A server of the original answers any path of ours as a post for its own host, so
/// its 404 names that host instead, and tells it apart from ours.
pub fn is_unknown_peer(body: &[u8], to: &str) -> bool {
    error_message(body) == unknown_peer(to)
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
    /// The native envelope of this message to `target` (its fields checked present). Its id is
    /// a hash of (target, from, timestamp, text), so the very same post retried is stored once,
    /// whichever role receives it; without a timestamp a retry cannot be told from a repeat, so
    /// the id is fresh.
    pub fn to_envelope(&self, target: &str) -> Envelope {
        let from = self.from.as_deref().unwrap_or_default().trim().to_string();
        let text = self.message.clone().unwrap_or_default();
        let timestamp = self.timestamp.as_deref();
        Envelope {
            id: legacy_id(target, &from, timestamp, &text),
            conversation: conversation_id(&from, target),
            to: target.into(),
            sent_at_ms: timestamp
                .and_then(parse_timestamp_ms)
                .unwrap_or_else(now_ms),
            body: Body::Text { text },
            // compat: the original marks an AI's reply `auto`; it is never auto-answered.
            auto_reply: self.auto.unwrap_or(false),
            error: false,
            unauthenticated: false,
            from: from.into(),
        }
    }

    /// The original's body for `envelope`, as its proxies (`POST /`) and peers (`POST /message`)
    /// take it.
    pub fn from_envelope(envelope: &Envelope) -> Message {
        Message {
            message: Some(envelope.body.text().to_string()),
            from: Some(envelope.from.to_string()),
            timestamp: Some(rfc3339_ms(envelope.sent_at_ms)),
            status: None,
            auto: envelope.auto_reply.then_some(true),
        }
    }

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

/// `legacy-` + 32 hex digits of a 128-bit FNV-1a hash of (target, from, timestamp, message),
/// names lower-cased (they are compared ignoring case); `legacy-` + a fresh id without a timestamp.
fn legacy_id(target: &str, from: &str, timestamp: Option<&str>, message: &str) -> MessageId {
    let Some(ts) = timestamp else {
        return MessageId::parse(&format!("legacy-{}", MessageId::new())).unwrap_or_default();
    };
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for part in [
        super::PeerName::from(target).key().as_bytes(),
        super::PeerName::from(from).key().as_bytes(),
        ts.as_bytes(),
        message.as_bytes(),
    ] {
        for b in part.iter().chain(b"\x1f") {
            h ^= u128::from(*b);
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }
    MessageId::parse(&format!("legacy-{h:032x}")).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_message_is_read_from_either_legacy_shape_or_the_text() {
        assert_eq!(error_message(br#"{"status":"error","message":"no"}"#), "no");
        assert_eq!(
            error_message(br#"{"status":"failed","error":"nope"}"#),
            "nope"
        );
        assert_eq!(error_message(b"  plain words \n"), "plain words");
        assert_eq!(error_message(&[b'x'; 300]).len(), 200);
        assert_eq!(error_message(b""), "");
    }

    #[test]
    fn unknown_peer_names_only_the_addressee() {
        let body = serde_json::to_vec(&ErrorBody::new(unknown_peer("bob"))).unwrap();
        assert!(is_unknown_peer(&body, "bob"));
        assert!(!is_unknown_peer(&body, "carol"));
        assert!(!is_unknown_peer(b"Unknown peer: 127.0.0.1", "bob"));
    }

    fn post(from: &str, ts: Option<&str>, text: &str) -> Message {
        Message {
            message: Some(text.into()),
            from: Some(from.into()),
            timestamp: ts.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn the_same_legacy_post_gets_the_same_id_whatever_the_case_of_its_names() {
        let ts = Some("2026-11-24T08:41:31.123456");
        let a = post("carol", ts, "hi").to_envelope("bob");
        let b = post("Carol", ts, "hi").to_envelope("BOB");
        assert_eq!(a.id, b.id);
        assert!(a.id.as_str().starts_with("legacy-"));
        assert_eq!(a.conversation, "bob:carol");
        assert_eq!(a.body.text(), "hi");
    }

    #[test]
    fn different_posts_get_different_ids() {
        let a = post("carol", Some("2026-11-24T08:41:31"), "hi").to_envelope("bob");
        for other in [
            post("carol", Some("2026-11-24T08:41:32"), "hi").to_envelope("bob"),
            post("carol", Some("2026-11-24T08:41:31"), "hi!").to_envelope("bob"),
            post("carol", Some("2026-11-24T08:41:31"), "hi").to_envelope("dave"),
        ] {
            assert_ne!(a.id, other.id);
        }
    }

    #[test]
    fn posts_without_a_timestamp_are_never_merged() {
        let a = post("carol", None, "hi").to_envelope("bob");
        let b = post("carol", None, "hi").to_envelope("bob");
        assert_ne!(a.id, b.id);
        assert!(a.id.as_str().starts_with("legacy-"));
    }

    #[test]
    fn an_envelope_goes_out_with_text_sender_and_an_iso_timestamp() {
        let mut e = Envelope::text("alice", "carol", "hello");
        e.sent_at_ms = 1_764_000_000_000;
        e.auto_reply = true;
        let m = Message::from_envelope(&e);
        assert_eq!(m.message.as_deref(), Some("hello"));
        assert_eq!(m.from.as_deref(), Some("alice"));
        assert_eq!(m.timestamp.as_deref(), Some("2025-11-24T16:00:00.000Z"));
        assert_eq!(m.auto, Some(true));
        assert_eq!(
            m.to_envelope("carol").sent_at_ms,
            e.sent_at_ms,
            "round trip of the time"
        );
        e.auto_reply = false;
        let plain = serde_json::to_string(&Message::from_envelope(&e)).unwrap();
        assert!(!plain.contains("auto"), "{plain}");
    }
}

//! Data plane: the native envelope a message travels in, from the peer where it is born,
//! through both proxies, to the peer that stores it; and the receipts that travel back.
//!
//! Routes that carry these (all ours, beside the legacy ones):
//! - peer → its proxy: `POST /api/v1/outbox` [`Envelope`] → 202 [`Accepted`] once it is durably queued;
//!   `POST /api/v1/outbox/batch` `[Envelope]` → 200 `[Submitted]`, in order, in one commit.
//! - proxy → proxy:    `POST /api/v1/relay`  [`Envelope`] → 200 [`Ack`] once the receiver stored it.
//! - proxy → its peer: `POST /api/v1/inbox`  [`Envelope`] → 200 [`Ack`] once the peer stored it;
//!   `POST /api/v1/receipts` [`Receipt`] (a sent message's state changed);
//!   `POST /api/v1/stream` [`StreamChunk`] (part of an AI reply still being written).
//! - peer → its proxy: `GET /api/v1/directory` → `[DirectoryEntry]` (who can be reached, and how);
//!   `POST /api/v1/forget` [`Forget`] (the user cleared a chat: an AI starts a fresh context).
//!
//! Between proxies a message travels sealed and signed, as a [`super::sealed::SealedEnvelope`]:
//! its body sealed for the receiving proxy, the whole signed by the origin proxy (envelopes
//! signed together share one signature: [`sign_together`]), in a signed request (see
//! [`crate::trust::request`]); the receiving proxy answers with its signature over what it
//! stored, under [`ACK_DOMAIN`], in the [`ACK_HEADER`] header ([`acked_bytes`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::PeerName;
use crate::trust::{Identity, Signature};
use sha2::{Digest, Sha256};

/// Signature domain of an acknowledgement, signed by the receiving proxy.
pub const ACK_DOMAIN: &str = "overlay/ack/v1";
/// The answer header carrying the receiving proxy's signature of the acknowledged messages.
pub const ACK_HEADER: &str = "overlay-ack";

/// A message's globally unique id, minted where the message is born.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// A fresh random id (UUID v4, simple form).
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
    /// Accepts 1 to 128 of `A-Z a-z 0-9 - _ . :`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "message id `{}` is invalid: use 1 to 128 letters, digits, `-`, `_`, `.` or `:`",
                s.chars().take(40).collect::<String>()
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MessageId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A message in transit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    /// Instance (or AI endpoint) name of the author.
    pub from: PeerName,
    /// Instance (or AI endpoint) name it is for.
    pub to: PeerName,
    /// The conversation it belongs to; for two parties, [`conversation_id`] of both names.
    pub conversation: String,
    /// When it was born, Unix ms.
    pub sent_at_ms: u64,
    pub body: Body,
    /// Sent by an auto-reply: never answered by another auto-reply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_reply: bool,
    /// An error report (e.g. from an AI endpoint) rather than a chat message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub error: bool,
    /// Came from a listed proxy of the original, which signs nothing: nobody vouches for its
    /// `from`. Set only by the receiving proxy (for its own peer, which shows it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Text { text: String },
}

impl Body {
    pub fn text(&self) -> &str {
        match self {
            Body::Text { text } => text,
        }
    }
}

impl Envelope {
    /// A new text message from `from` to `to`, with a fresh id.
    pub fn text(from: &str, to: &str, text: impl Into<String>) -> Envelope {
        Envelope {
            id: MessageId::new(),
            from: from.into(),
            to: to.into(),
            conversation: conversation_id(from, to),
            sent_at_ms: super::now_ms(),
            body: Body::Text { text: text.into() },
            auto_reply: false,
            error: false,
            unauthenticated: false,
        }
    }
}

/// An envelope's signature: its origin's signature over the root of a hash tree whose leaves
/// are the envelopes it signed together, and the path from this envelope's leaf to that root.
///
/// Batch signing: one signature covers a whole batch (one signing and one check per request,
/// not per message), and still each envelope alone can be checked by whoever carries it, with
/// its path (at most [`MAX_PATH`] hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    pub sig: Signature,
    /// The sibling hashes from the leaf up: `l:` or `r:` (the sibling's side) and 64 hex digits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<PathStep>,
}

/// The most steps of a path: trees of up to 2^16 envelopes.
pub const MAX_PATH: usize = 16;

/// One step up a signing tree: the sibling's hash, and its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStep {
    pub side: Side,
    pub hash: [u8; 32],
}

/// Which side of a node its sibling is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl Serialize for PathStep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let side = match self.side {
            Side::Left => 'l',
            Side::Right => 'r',
        };
        s.collect_str(&format_args!(
            "{side}:{}",
            crate::trust::keys::hex_lower(&self.hash)
        ))
    }
}

impl<'de> Deserialize<'de> for PathStep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("a path step is `l:` or `r:` and 64 hex digits");
        let (side, hex) = text.split_once(':').ok_or_else(bad)?;
        let side = match side {
            "l" => Side::Left,
            "r" => Side::Right,
            _ => return Err(bad()),
        };
        let hash = crate::trust::keys::hex_decode::<32>(hex).ok_or_else(bad)?;
        Ok(PathStep { side, hash })
    }
}

/// SHA-256 of `0x01 ‖ left ‖ right`: an inner node (leaves start with `0x00`, so neither can
/// pass for the other).
fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// What can be signed in a tree with others ([`sign_together`]): a leaf, and a place for the
/// signature.
pub trait Signable {
    /// Its leaf: SHA-256 of `0x00 ‖` every byte it signs (each field length-prefixed).
    fn leaf(&self) -> [u8; 32];
    fn signature(&self) -> Option<&EnvelopeSignature>;
    fn set_signature(&mut self, signature: EnvelopeSignature);
}

/// SHA-256 of `0x00 ‖ bytes`: a leaf of a signing tree.
pub fn leaf_of(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

/// The root `item`'s signature path leads to from its leaf, and the signature over that root;
/// None when unsigned (or its path is over [`MAX_PATH`]).
pub fn signed_root<T: Signable>(item: &T) -> Option<([u8; 32], &Signature)> {
    let s = item.signature().filter(|s| s.path.len() <= MAX_PATH)?;
    let root = s
        .path
        .iter()
        .fold(item.leaf(), |node, step| match step.side {
            Side::Left => node_hash(&step.hash, &node),
            Side::Right => node_hash(&node, &step.hash),
        });
    Some((root, &s.sig))
}

/// Signs `items` together as their origin proxy, `by`, under `domain`: builds the hash tree of
/// their leaves (pairs in order; an odd last node goes up as it is), signs its root once, and
/// gives each item that signature with its own path. Up to 2^[`MAX_PATH`] items.
pub fn sign_together<T: Signable>(items: &mut [T], by: &Identity, domain: &str) {
    if items.is_empty() {
        return;
    }
    let mut level: Vec<[u8; 32]> = items.iter().map(Signable::leaf).collect();
    // Which node of the current level each item's path is at.
    let mut at: Vec<usize> = (0..items.len()).collect();
    let mut paths: Vec<Vec<PathStep>> = vec![Vec::new(); items.len()];
    while level.len() > 1 {
        for (path, i) in paths.iter_mut().zip(at.iter_mut()) {
            let sibling = *i ^ 1;
            if sibling < level.len() {
                let side = if sibling < *i {
                    Side::Left
                } else {
                    Side::Right
                };
                path.push(PathStep {
                    side,
                    hash: level[sibling],
                });
            }
            *i /= 2;
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node_hash(l, r),
                // The odd last node goes up as it is.
                _ => pair[0],
            })
            .collect();
    }
    let sig = by.sign(domain, &level[0]);
    for (item, path) in items.iter_mut().zip(paths) {
        item.set_signature(EnvelopeSignature {
            sig: sig.clone(),
            path,
        });
    }
}

/// `bytes`, preceded by their length (u32, big-endian).
pub fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What an acknowledgement names of a message: its id, sender and addressee.
pub trait Addressed {
    fn id(&self) -> &MessageId;
    fn from(&self) -> &PeerName;
    fn to(&self) -> &PeerName;
}

impl Addressed for Envelope {
    fn id(&self) -> &MessageId {
        &self.id
    }
    fn from(&self) -> &PeerName {
        &self.from
    }
    fn to(&self) -> &PeerName {
        &self.to
    }
}

/// The bytes a receiving proxy signs to acknowledge `envelopes` (under [`ACK_DOMAIN`]): the
/// count, then each one's id, from and to, in the order they were sent. Deterministic, so a
/// retry of the same messages gets the same acknowledgement.
pub fn acked_bytes<'a, T: Addressed + 'a>(
    envelopes: impl ExactSizeIterator<Item = &'a T>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + envelopes.len() * 64);
    out.extend_from_slice(
        &u32::try_from(envelopes.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for e in envelopes {
        put(&mut out, e.id().as_str().as_bytes());
        put(&mut out, e.from().as_str().as_bytes());
        put(&mut out, e.to().as_str().as_bytes());
    }
    out
}

/// The id of the two-party conversation between `a` and `b`: the same from both ends.
pub fn conversation_id(a: &str, b: &str) -> String {
    let (a, b) = (PeerName::from(a).key(), PeerName::from(b).key());
    if a <= b {
        format!("{a}:{b}")
    } else {
        format!("{b}:{a}")
    }
}

/// 202 answer to `POST /api/v1/outbox`: the proxy has the message durably queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: MessageId,
    #[serde(flatten)]
    pub state: DeliveryState,
}

/// One element of the answer to `POST /api/v1/outbox/batch`, in the order of the batch:
/// accepted (durably queued), or refused with the status and message a single submit would get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Submitted {
    Accepted(Accepted),
    Refused {
        id: MessageId,
        status: u16,
        message: String,
    },
}

/// 200 answer to `relay` / `inbox`: the receiver has stored the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub id: MessageId,
    /// True when this id had been stored before: nothing was stored twice.
    pub duplicate: bool,
}

/// Where a sent message is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    /// Queued at the sender's proxy, not yet stored by the receiver.
    Pending,
    /// Stored by the receiver.
    Delivered,
    /// Given up on; `reason` says why, for the user.
    Failed { reason: String },
}

impl DeliveryState {
    /// The word shown to users and stored in the legacy history's `status`.
    pub fn label(&self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed { .. } => "failed",
        }
    }
}

/// `POST /api/v1/receipts`: a sent message's new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: MessageId,
    #[serde(flatten)]
    pub state: DeliveryState,
}

/// `POST /api/v1/stream`: text an AI endpoint has produced so far for reply `id`.
/// Not stored; the complete reply arrives later as an [`Envelope`] with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    pub id: MessageId,
    pub from: String,
    pub conversation: String,
    /// 0, 1, 2...: lets the page drop a chunk it already has.
    pub seq: u32,
    pub delta: String,
}

/// One row of `GET /api/v1/directory` on a proxy: someone this user can reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub name: String,
    pub kind: PeerKind,
    /// Whether the controller currently sees that user's proxy alive; None when unknown (AI).
    pub online: Option<bool>,
}

/// A person (another user's peer) or an AI model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    Person,
    Ai,
}

/// `POST /api/v1/ai/stop` and `POST /api/v1/ai/regenerate` on a proxy: which AI endpoint's
/// reply to the own user is meant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiReplyOf {
    pub with: String,
}

/// Answer of `POST /api/v1/ai/stop`: whether a reply was being written (and is now stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAnswer {
    pub stopped: bool,
    pub message: String,
}

/// `POST /api/v1/forget`: the user cleared a chat, so an AI starts a fresh context. Exactly
/// one of two forms: `{"with": "BOT"}` forgets the conversation with `BOT`;
/// `{"all": true}` forgets every conversation. Anything else (`{}`, `[]`, `{"all": false}`,
/// both fields, a misspelled or unknown field) is refused ([`Forget::scope`], and unknown
/// fields by serde): "all" is never the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Forget {
    /// Forget the conversation with `with`.
    pub fn chat(with: impl Into<String>) -> Self {
        Self {
            with: Some(with.into()),
            all: false,
        }
    }

    /// Forget every conversation.
    pub fn all() -> Self {
        Self {
            with: None,
            all: true,
        }
    }

    /// What is to be forgotten: `Some(name)` one conversation, `None` all of them; or why the
    /// request says neither clearly.
    pub fn scope(&self) -> Result<Option<&str>, String> {
        match (&self.with, self.all) {
            (Some(with), false) => Ok(Some(with)),
            (None, true) => Ok(None),
            (Some(_), true) => Err(
                "give either `with` (one conversation) or `\"all\": true`, not both".to_string(),
            ),
            (None, false) => Err(
                "say what to forget: `{\"with\": NAME}` for one conversation or \
                 `{\"all\": true}` for every one"
                    .to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_all_must_be_said_explicitly() {
        let parse = |s: &str| serde_json::from_str::<Forget>(s).map_err(|e| e.to_string());
        assert_eq!(parse(r#"{"with":"bot"}"#).unwrap().scope(), Ok(Some("bot")));
        assert_eq!(parse(r#"{"all":true}"#).unwrap().scope(), Ok(None));
        assert!(parse("{}").unwrap().scope().is_err());
        assert!(parse(r#"{"all":false}"#).unwrap().scope().is_err());
        assert!(parse(r#"{"with":"bot","all":true}"#)
            .unwrap()
            .scope()
            .is_err());
        assert!(parse(r#"{"wiht":"bot"}"#)
            .unwrap_err()
            .contains("unknown field `wiht`"));
        assert!(parse("[]").unwrap().scope().is_err());
    }

    #[test]
    fn forget_is_sent_in_its_explicit_forms() {
        let json = |f: &Forget| serde_json::to_string(f).unwrap();
        assert_eq!(json(&Forget::chat("BOT")), r#"{"with":"BOT"}"#);
        assert_eq!(json(&Forget::all()), r#"{"all":true}"#);
    }

    #[test]
    fn an_envelope_round_trips_through_json() {
        let e = Envelope::text("alice", "bob", "hi <b>");
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.contains(r#""body":{"type":"text","text":"hi <b>"}"#),
            "{json}"
        );
        assert!(
            !json.contains("auto_reply"),
            "false flags are left out: {json}"
        );
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);
    }

    #[test]
    fn an_acknowledgement_covers_the_ids_and_names_in_order() {
        let (a, b) = (
            Envelope::text("alice", "bob", "1"),
            Envelope::text("alice", "bob", "2"),
        );
        let both = acked_bytes([a.clone(), b.clone()].iter());
        assert_ne!(both, acked_bytes([b.clone(), a.clone()].iter()));
        assert_ne!(both, acked_bytes([a.clone()].iter()));
        let mut other = b.clone();
        other.to = "carol".into();
        assert_ne!(both, acked_bytes([a, other].iter()));
    }

    #[test]
    fn a_conversation_id_is_the_same_from_both_ends() {
        assert_eq!(
            conversation_id("alice", "Bob"),
            conversation_id("bob", "ALICE")
        );
    }

    #[test]
    fn a_bad_message_id_is_refused() {
        assert!(MessageId::parse("a b").is_err());
        assert!(MessageId::parse("").is_err());
        assert!(serde_json::from_str::<MessageId>("\"../x\"").is_err());
        assert!(MessageId::parse(MessageId::new().as_str()).is_ok());
    }

    #[test]
    fn an_accepted_answer_is_flat() {
        let a = Accepted {
            id: MessageId::parse("m1").unwrap(),
            state: DeliveryState::Pending,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"id":"m1","state":"pending"}"#
        );
    }

    #[test]
    fn a_batch_answer_tells_accepted_from_refused() {
        let answer: Vec<Submitted> = serde_json::from_str(
            r#"[{"id":"m1","state":"pending"},{"id":"m2","status":404,"message":"Unknown peer: zed"}]"#,
        )
        .unwrap();
        assert!(matches!(&answer[0], Submitted::Accepted(a) if a.state == DeliveryState::Pending));
        assert!(matches!(&answer[1], Submitted::Refused { status: 404, .. }));
    }

    #[test]
    fn a_receipt_is_flat() {
        let r = Receipt {
            id: MessageId::parse("m1").unwrap(),
            state: DeliveryState::Failed {
                reason: "bob's proxy unreachable".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":"m1","state":"failed","reason":"bob's proxy unreachable"}"#
        );
    }
}

//! The original's proxy wire format, coming in: `POST /` (any path) with `Host: TARGET` and
//! `{message, from, timestamp}`. Pure functions that turn such a request into a native
//! [`Envelope`] with a deterministic id, so the very same legacy post retried is stored once.
//! No I/O, no actors.

use crate::wire::data_plane::{conversation_id, Body, Envelope, MessageId};
use crate::wire::legacy;
use crate::wire::{now_ms, parse_timestamp_ms};

/// The destination named by a `Host:` header: any `:port` stripped.
pub fn host_target(host: &str) -> &str {
    let host = host.trim();
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `legacy-` + 32 hex digits of a hash of (target, from, timestamp, message); a fresh random id
/// when the post has no timestamp (two such posts cannot be told apart from a retry).
pub fn legacy_id(target: &str, from: &str, timestamp: Option<&str>, message: &str) -> MessageId {
    let Some(ts) = timestamp else {
        return MessageId::parse(&format!("legacy-{}", MessageId::new()))
            .unwrap_or_else(|_| MessageId::new());
    };
    let parts = [
        target.to_ascii_lowercase(),
        from.to_string(),
        ts.to_string(),
        message.to_string(),
    ];
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for part in &parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            a = (a ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            b = (b ^ u64::from(byte))
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(5);
        }
    }
    MessageId::parse(&format!("legacy-{a:016x}{b:016x}")).unwrap_or_else(|_| MessageId::new())
}

/// The envelope for a legacy post to `target` whose fields were checked present.
pub fn envelope_from_legacy(target: &str, msg: &legacy::Message) -> Envelope {
    let from = msg.from.as_deref().unwrap_or_default().trim().to_string();
    let text = msg.message.clone().unwrap_or_default();
    let timestamp = msg.timestamp.as_deref();
    Envelope {
        id: legacy_id(target, &from, timestamp, &text),
        conversation: conversation_id(&from, target),
        to: target.to_string(),
        sent_at_ms: timestamp
            .and_then(parse_timestamp_ms)
            .unwrap_or_else(now_ms),
        body: Body::Text { text },
        auto_reply: msg.auto.unwrap_or(false),
        error: false,
        from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(ts: Option<&str>) -> legacy::Message {
        legacy::Message {
            message: Some("hi".into()),
            from: Some("carol".into()),
            timestamp: ts.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn a_host_header_loses_its_port() {
        assert_eq!(host_target("bob:10002"), "bob");
        assert_eq!(host_target("Bob"), "Bob");
        assert_eq!(host_target(" alice:"), "alice:");
    }

    #[test]
    fn the_same_legacy_post_gets_the_same_id() {
        let a = envelope_from_legacy("bob", &post(Some("2026-11-24T08:41:31.123456")));
        let b = envelope_from_legacy("BOB", &post(Some("2026-11-24T08:41:31.123456")));
        assert_eq!(a.id, b.id);
        assert!(a.id.as_str().starts_with("legacy-"));
        assert_eq!(a.conversation, "bob:carol");
        assert_eq!(a.body.text(), "hi");
    }

    #[test]
    fn different_posts_get_different_ids() {
        let a = envelope_from_legacy("bob", &post(Some("2026-11-24T08:41:31")));
        let b = envelope_from_legacy("bob", &post(Some("2026-11-24T08:41:32")));
        let c = envelope_from_legacy("dave", &post(Some("2026-11-24T08:41:31")));
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn posts_without_a_timestamp_are_never_merged() {
        assert_ne!(
            envelope_from_legacy("bob", &post(None)).id,
            envelope_from_legacy("bob", &post(None)).id
        );
    }
}

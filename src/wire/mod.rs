//! Serde types that cross process boundaries, and nothing else: no actix, no I/O.
//!
//! - [`control_plane`]: proxy ⇄ controller (registration, heartbeats, endpoint tables).
//! - [`directory`]: the signed, versioned directory and the join / registration claims.
//! - [`data_plane`]: the native message envelope between peers and proxies, with receipts.
//! - [`relay`]: a relay carrying requests for proxies behind NAT, down one stream each.
//! - [`sealed`]: the sealed, signed envelope a message travels in between two proxies of ours.
//! - [`legacy`]: the original Python system's JSON shapes, kept byte-compatible.
//! - [`host_port`]: the one `host:port` type (advertised addresses, `Host:` headers, URLs).
//! - [`peer_name`]: [`PeerName`], a name that compares ignoring ASCII case.

pub mod control_plane;
pub mod data_plane;
pub mod directory;
pub mod host_port;
pub mod legacy;
pub mod peer_name;
pub mod relay;
pub mod sealed;

pub use peer_name::PeerName;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// An RFC 3339 UTC timestamp with milliseconds, for a Unix time in ms. Times past year 9999
/// (which only a hostile or broken sender writes) are clamped rather than failing.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.min(MAX_TIMESTAMP_MS));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 / ISO 8601 timestamp (as the original sends them) to Unix ms.
pub fn parse_timestamp_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(s))
        .ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let ms = 1_764_000_000_123;
        assert_eq!(parse_timestamp_ms(&rfc3339_ms(ms)), Some(ms));
    }

    #[test]
    fn a_timestamp_past_year_9999_is_clamped_not_a_panic() {
        assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn python_isoformat_timestamps_parse() {
        assert!(parse_timestamp_ms("2026-11-24T08:41:31.123456").is_some());
        assert!(parse_timestamp_ms("2026-11-24T08:41:31").is_some());
        assert_eq!(parse_timestamp_ms("yesterday"), None);
    }
}

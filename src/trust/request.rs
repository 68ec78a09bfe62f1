//! Signed HTTP requests between overlay roles: who sent a request, to whom, and that nobody
//! changed it or sends it again.
//!
//! The sender signs, under [`REQUEST_DOMAIN`], the canonical lines: method, full request
//! target (path and query), origin (its user's name), destination (who it is for), key id
//! (its key's fingerprint), time (Unix ms), a fresh nonce, and the SHA-256 of the exact body
//! bytes. It sends them in the [`SIGNATURE_HEADER`] header:
//! `origin=alice;destination=…;key=sha256:…;time=…;nonce=…;sig=…` (no value holds `;` or `=`).
//! The receiver checks the destination is itself, the time is within [`MAX_SKEW_MS`] of its
//! clock and not before it started, the signature under the key it has for the origin, and
//! that the nonce is new ([`NonceCache`]). A retry is a new request with a new nonce.
//!
//! Pure: no I/O, no clock of its own (callers pass the time).

use std::collections::{HashSet, VecDeque};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::keys::hex_lower;
use super::{Fingerprint, Identity, KeyError, PublicKey, Signature};

/// Signature domain of a request.
pub const REQUEST_DOMAIN: &str = "overlay/request/v1";
/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "overlay-signature";
/// How far a request's time may be from the receiver's clock.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;
/// The most nonces a receiver keeps (a window of [`MAX_SKEW_MS`] either side).
pub const MAX_NONCES: usize = 200_000;

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no `{SIGNATURE_HEADER}` header: this request must be signed by its sender's key")]
    Missing,
    #[error("the `{SIGNATURE_HEADER}` header is malformed: {0}")]
    Malformed(String),
    #[error("the request is for {got}, not for {me}")]
    WrongDestination { got: String, me: String },
    #[error("the request is from {got}, not from {expected}")]
    WrongOrigin { got: String, expected: String },
    #[error("the request is signed by key {got}, not by {expected}, the key pinned to its sender")]
    WrongKey { got: String, expected: String },
    #[error("the request is dated {0} s away from this clock: check both clocks")]
    Skew(u64),
    #[error("the request is dated before this process started: send it again")]
    BeforeStart,
    #[error("the request's signature does not hold (its body, target or fields were changed)")]
    BadSignature,
    #[error("this request was seen before (a replay): a retry must be signed anew")]
    Replay,
    #[error("too many requests in the replay window: try again shortly")]
    Busy,
}

/// A parsed [`SIGNATURE_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub origin: String,
    pub destination: String,
    pub key: Fingerprint,
    pub time_ms: u64,
    pub nonce: String,
    pub sig: Signature,
}

/// What a request is, for its signature.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    /// Path and query, exactly as sent.
    pub target: &'a str,
    pub body: &'a [u8],
}

fn canonical(
    r: &RequestLine<'_>,
    origin: &str,
    destination: &str,
    key: &Fingerprint,
    time_ms: u64,
    nonce: &str,
) -> Vec<u8> {
    let body = hex_lower(&Sha256::digest(r.body));
    format!(
        "{}\n{}\n{origin}\n{destination}\n{key}\n{time_ms}\n{nonce}\n{body}",
        r.method.to_ascii_uppercase(),
        r.target
    )
    .into_bytes()
}

/// A value that needs no quoting in the header.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=' && b != b'"')
}

/// The header value signing request `r` from `origin` (whose key is `by`) to `destination`.
pub fn sign(
    by: &Identity,
    r: &RequestLine<'_>,
    origin: &str,
    destination: &str,
    time_ms: u64,
) -> String {
    let mut raw = [0u8; 18];
    getrandom::fill(&mut raw).expect("the operating system's random source failed");
    let nonce = URL_SAFE_NO_PAD.encode(raw);
    let key = by.fingerprint();
    let sig = by.sign(
        REQUEST_DOMAIN,
        &canonical(r, origin, destination, &key, time_ms, &nonce),
    );
    format!("origin={origin};destination={destination};key={key};time={time_ms};nonce={nonce};sig={sig}")
}

/// Parses a header value.
pub fn parse(value: &str) -> Result<SignatureHeader, RequestError> {
    let bad = |why: &str| RequestError::Malformed(why.to_string());
    let mut fields = std::collections::BTreeMap::new();
    for part in value.split(';') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("expected key=value parts separated by `;`"))?;
        if !plain(v) || fields.insert(k, v).is_some() {
            return Err(bad(&format!(
                "`{k}` is empty, too long, repeated or not plain"
            )));
        }
    }
    let get = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| bad(&format!("no `{k}`")))
    };
    Ok(SignatureHeader {
        origin: get("origin")?.to_string(),
        destination: get("destination")?.to_string(),
        key: Fingerprint::parse(get("key")?).map_err(|e| bad(&e.to_string()))?,
        time_ms: get("time")?
            .parse()
            .map_err(|_| bad("`time` is not a whole number"))?,
        nonce: get("nonce")?.to_string(),
        sig: Signature::parse(get("sig")?).map_err(|e| bad(&e.to_string()))?,
    })
}

/// Checks `h` on request `r`: for `me`, from `origin` whose key is `key`, dated within the
/// window and not before `started_ms`, signed. The nonce is checked apart ([`NonceCache`]).
pub fn verify(
    h: &SignatureHeader,
    r: &RequestLine<'_>,
    me: &str,
    origin: &str,
    key: &PublicKey,
    now_ms: u64,
    started_ms: u64,
) -> Result<(), RequestError> {
    check_fields(h, me, origin, key, now_ms, started_ms)?;
    key.verify(REQUEST_DOMAIN, &signed_message(h, r), &h.sig)
        .map_err(|e: KeyError| match e {
            KeyError::BadSignature => RequestError::BadSignature,
            other => RequestError::Malformed(other.to_string()),
        })
}

/// Everything [`verify`] checks but the signature itself (for a caller that checks it in a
/// batch with others, over [`signed_message`] under [`REQUEST_DOMAIN`]).
pub fn check_fields(
    h: &SignatureHeader,
    me: &str,
    origin: &str,
    key: &PublicKey,
    now_ms: u64,
    started_ms: u64,
) -> Result<(), RequestError> {
    if !h.destination.eq_ignore_ascii_case(me) {
        return Err(RequestError::WrongDestination {
            got: h.destination.clone(),
            me: me.to_string(),
        });
    }
    if !h.origin.eq_ignore_ascii_case(origin) {
        return Err(RequestError::WrongOrigin {
            got: h.origin.clone(),
            expected: origin.to_string(),
        });
    }
    let expected = key.fingerprint();
    if h.key != expected {
        return Err(RequestError::WrongKey {
            got: h.key.to_string(),
            expected: expected.to_string(),
        });
    }
    if h.time_ms.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(RequestError::Skew(h.time_ms.abs_diff(now_ms) / 1000));
    }
    if h.time_ms < started_ms {
        return Err(RequestError::BeforeStart);
    }
    Ok(())
}

/// The bytes `h`'s signature covers on request `r`.
pub fn signed_message(h: &SignatureHeader, r: &RequestLine<'_>) -> Vec<u8> {
    canonical(r, &h.origin, &h.destination, &h.key, h.time_ms, &h.nonce)
}

/// The nonces seen within the replay window: a request whose (origin, nonce) was seen is a
/// replay. Requests dated before the process started are refused by [`verify`], so nothing
/// needs to survive a restart. Bounded: entries older than the window go first; past
/// [`MAX_NONCES`] live ones, new requests are refused as busy rather than remembered less.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashSet<(String, String)>,
    /// (time, origin, nonce), oldest first.
    order: VecDeque<(u64, String, String)>,
}

impl NonceCache {
    /// Remembers `h`'s nonce; a replay or a full window is refused.
    pub fn check(&mut self, h: &SignatureHeader, now_ms: u64) -> Result<(), RequestError> {
        while let Some((t, _, _)) = self.order.front() {
            if t.saturating_add(2 * MAX_SKEW_MS) >= now_ms {
                break;
            }
            if let Some((_, o, n)) = self.order.pop_front() {
                self.seen.remove(&(o, n));
            }
        }
        let id = (h.origin.to_ascii_lowercase(), h.nonce.clone());
        if self.seen.contains(&id) {
            return Err(RequestError::Replay);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(RequestError::Busy);
        }
        self.order
            .push_back((h.time_ms.max(now_ms), id.0.clone(), id.1.clone()));
        self.seen.insert(id);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn line(body: &[u8]) -> RequestLine<'_> {
        RequestLine {
            method: "POST",
            target: "/api/heartbeat",
            body,
        }
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_to_it_does_not() {
        let alice = Identity::generate();
        let v = sign(&alice, &line(b"{}"), "alice", "ctl", NOW);
        let h = parse(&v).unwrap();
        let ok = |r: &RequestLine<'_>, me: &str, origin: &str, key: &PublicKey| {
            verify(&h, r, me, origin, key, NOW, 0)
        };
        assert_eq!(ok(&line(b"{}"), "ctl", "alice", &alice.public()), Ok(()));
        assert_eq!(
            ok(&line(b"{ }"), "ctl", "alice", &alice.public()),
            Err(RequestError::BadSignature)
        );
        let other_path = RequestLine {
            target: "/api/heartbeat?x=1",
            ..line(b"{}")
        };
        assert_eq!(
            ok(&other_path, "ctl", "alice", &alice.public()),
            Err(RequestError::BadSignature)
        );
        assert!(matches!(
            ok(&line(b"{}"), "bob", "alice", &alice.public()),
            Err(RequestError::WrongDestination { .. })
        ));
        assert!(matches!(
            ok(&line(b"{}"), "ctl", "bob", &alice.public()),
            Err(RequestError::WrongOrigin { .. })
        ));
        // Another enrolled key signing as alice: not the key pinned to alice.
        let mallory = Identity::generate();
        let forged = parse(&sign(&mallory, &line(b"{}"), "alice", "ctl", NOW)).unwrap();
        assert!(matches!(
            verify(
                &forged,
                &line(b"{}"),
                "ctl",
                "alice",
                &alice.public(),
                NOW,
                0
            ),
            Err(RequestError::WrongKey { .. })
        ));
    }

    #[test]
    fn time_outside_the_window_or_before_the_start_is_refused() {
        let alice = Identity::generate();
        let h = parse(&sign(&alice, &line(b""), "alice", "ctl", NOW)).unwrap();
        let check = |now, started| {
            verify(
                &h,
                &line(b""),
                "ctl",
                "alice",
                &alice.public(),
                now,
                started,
            )
        };
        assert!(matches!(
            check(NOW + MAX_SKEW_MS + 1, 0),
            Err(RequestError::Skew(_))
        ));
        assert_eq!(check(NOW, NOW + 1), Err(RequestError::BeforeStart));
        assert_eq!(check(NOW + 1000, NOW), Ok(()));
    }

    #[test]
    fn a_nonce_is_taken_once_and_forgotten_after_the_window() {
        let alice = Identity::generate();
        let h = parse(&sign(&alice, &line(b""), "alice", "ctl", NOW)).unwrap();
        let mut cache = NonceCache::default();
        assert_eq!(cache.check(&h, NOW), Ok(()));
        assert_eq!(cache.check(&h, NOW + 10), Err(RequestError::Replay));
        let later = NOW + 3 * MAX_SKEW_MS;
        let fresh = parse(&sign(&alice, &line(b""), "alice", "ctl", later)).unwrap();
        assert_eq!(cache.check(&fresh, later), Ok(()));
        assert_eq!(cache.len(), 1, "the old nonce left with its window");
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        for bad in [
            "",
            "origin=alice",
            "origin=a;origin=b",
            "origin=;x=y",
            "garbage",
        ] {
            assert!(
                matches!(parse(bad), Err(RequestError::Malformed(_))),
                "{bad}"
            );
        }
    }
}

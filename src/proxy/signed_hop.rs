//! The signed hop between proxies: what this proxy checks of another proxy's request and
//! envelopes before it stores anything, what it signs of its own (requests, envelopes,
//! acknowledgements), what it checks of the receiver's acknowledgement, and the counts of both.
//!
//! Inbound ([`SignedHops::check_relay`]): the request's `overlay-signature` must name this
//! proxy's user as its destination, be dated within the window (and not before this process
//! started, so no replay survives a restart) and carry a fresh nonce; its origin must be a user
//! with a pinned, unrevoked key in the signed directory; every envelope must be from that
//! origin and signed by it. Envelopes signed together share one signed root (see
//! [`crate::wire::data_plane::sign_together`]), checked once; the request's and the roots'
//! signatures are checked in one batch ([`crate::trust::verify_all`]), which names the bad item
//! when it fails. Then the sealed bodies are opened with this proxy's sealing keys
//! ([`crate::wire::sealed::open`]): a body sealed for another proxy, sender or header does not.
//!
//! Outbound ([`HopSigner`]): each attempt seals its envelopes from the outbox's plaintext for
//! the receiver's sealing key in the directory now (so a rotation never strands a queued
//! message), numbers them in their sequences, signs them and its request afresh (a retry has
//! a new nonce), and counts as delivered only when the answer carries the receiver's
//! signature over exactly the messages sent ([`HopSigner::check_ack`]).
//!
//! Pure checks over shared state (a mutex around the nonces, atomics for the counts): no actor,
//! no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::error::ProxyError;
use crate::trust::request::{self, NonceCache, RequestError, RequestLine, REQUEST_DOMAIN};
use crate::trust::seal::{SealKeys, SealPublic};
use crate::trust::{verify_all, Check, Identity, PublicKey, Signature};
use crate::wire::data_plane::{acked_bytes, signed_root, Envelope, ACK_DOMAIN};
use crate::wire::directory::{Directory, UserState};
use crate::wire::sealed::{Chain, SealedEnvelope, SEALED_DOMAIN};

/// What was checked since start; `GET /api/v1/signatures` answers it.
#[derive(Debug, Default)]
pub struct Counters {
    requests_verified: AtomicU64,
    envelopes_verified: AtomicU64,
    acks_verified: AtomicU64,
    roots_verified: AtomicU64,
    batch_fallbacks: AtomicU64,
    refused: AtomicU64,
    requests_signed: AtomicU64,
    envelopes_signed: AtomicU64,
    acks_signed: AtomicU64,
    sealed: AtomicU64,
    opened: AtomicU64,
    opened_with_retired_key: AtomicU64,
    not_opened: AtomicU64,
}

/// A copy of [`Counters`], for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CountersView {
    /// Requests of other proxies whose signature held.
    pub requests_verified: u64,
    /// Envelopes of other proxies whose origin's signature held.
    pub envelopes_verified: u64,
    /// Receivers' acknowledgements whose signature held.
    pub acks_verified: u64,
    /// Envelope signatures checked: one per group of envelopes signed together.
    pub roots_verified: u64,
    /// Batches whose one-shot check failed and were checked one by one to name the bad item.
    pub batch_fallbacks: u64,
    /// Requests refused for their signatures (missing, wrong, replayed, or not the origin's).
    pub refused: u64,
    pub requests_signed: u64,
    pub envelopes_signed: u64,
    pub acks_signed: u64,
    /// Bodies this proxy sealed for other proxies (each attempt seals afresh).
    #[serde(default)]
    pub sealed: u64,
    /// Sealed bodies of other proxies opened with this proxy's sealing keys.
    #[serde(default)]
    pub opened: u64,
    /// Of those, the ones sealed to a retired key (their sender had not yet applied the
    /// directory with the new one).
    #[serde(default)]
    pub opened_with_retired_key: u64,
    /// Requests refused because a sealed body did not open (another destination, sender,
    /// key or header; changed; out of its order).
    #[serde(default)]
    pub not_opened: u64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn view(&self) -> CountersView {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersView {
            requests_verified: get(&self.requests_verified),
            envelopes_verified: get(&self.envelopes_verified),
            acks_verified: get(&self.acks_verified),
            roots_verified: get(&self.roots_verified),
            batch_fallbacks: get(&self.batch_fallbacks),
            refused: get(&self.refused),
            requests_signed: get(&self.requests_signed),
            envelopes_signed: get(&self.envelopes_signed),
            acks_signed: get(&self.acks_signed),
            sealed: get(&self.sealed),
            opened: get(&self.opened),
            opened_with_retired_key: get(&self.opened_with_retired_key),
            not_opened: get(&self.not_opened),
        }
    }
}

/// This proxy's side of every signed hop: its keys, its name, when it started, the nonces seen,
/// the last sequence number it gave.
#[derive(Debug)]
pub struct SignedHops {
    me: String,
    identity: Arc<Identity>,
    seal: Arc<SealKeys>,
    /// The last sequence number given to an envelope (see [`crate::wire::sealed`]): each new
    /// one is above it and at least the time in µs, so numbers keep growing across restarts.
    last_seq: AtomicU64,
    started_ms: u64,
    nonces: Mutex<NonceCache>,
    pub counters: Counters,
}

/// A relayed request, as its signature covers it.
pub struct Relayed<'a> {
    pub method: &'a str,
    /// Path and query, as received.
    pub target: &'a str,
    /// The `overlay-signature` header, if any.
    pub header: Option<&'a str>,
    pub body: &'a [u8],
    /// The key of the sender's TLS client certificate (none: this proxy takes relays in plain
    /// HTTP, `tls.enabled: false`). It must be the origin's pinned key: the connection and the
    /// signature are the same proxy's.
    pub tls_key: Option<&'a crate::trust::PublicKey>,
}

impl SignedHops {
    pub fn new(
        me: &str,
        identity: Arc<Identity>,
        seal: Arc<SealKeys>,
        started_ms: u64,
    ) -> SignedHops {
        SignedHops {
            me: me.to_string(),
            identity,
            seal,
            last_seq: AtomicU64::new(0),
            started_ms,
            nonces: Mutex::new(NonceCache::default()),
            counters: Counters::default(),
        }
    }

    /// The signer of this proxy's outgoing hops.
    pub fn signer(self: &Arc<Self>) -> HopSigner {
        HopSigner { hops: self.clone() }
    }

    /// This proxy's sealing keys (the current one is published in the directory).
    pub fn seal_keys(&self) -> &Arc<SealKeys> {
        &self.seal
    }

    /// Checks a relayed request and its envelopes, and opens them (see the module's doc); Ok
    /// with the origin's name and each envelope opened, with its place in its sequence. Counts
    /// what it verified, opened or refused.
    pub fn check_relay(
        &self,
        r: &Relayed<'_>,
        envelopes: &[SealedEnvelope],
        directory: &Directory,
        now_ms: u64,
    ) -> Result<(String, Vec<(Envelope, Chain)>), ProxyError> {
        let checked = self
            .check(r, envelopes, directory, now_ms)
            .and_then(|origin| {
                Counters::add(&self.counters.requests_verified, 1);
                Counters::add(&self.counters.envelopes_verified, envelopes.len());
                let opened = crate::wire::sealed::open(envelopes, &self.seal).map_err(|e| {
                    Counters::add(&self.counters.not_opened, 1);
                    let what = format!(
                        "the sealed body of {}",
                        item(e.index, &envelopes[e.index], envelopes.len())
                    );
                    if e.unknown_key {
                        ProxyError::Retry(format!(
                            "{what}: {}; seal it again for the key the signed directory gives now",
                            e.why
                        ))
                    } else {
                        ProxyError::Forbidden(format!("{what} was refused: {}", e.why))
                    }
                })?;
                Counters::add(&self.counters.opened, opened.envelopes.len());
                Counters::add(
                    &self.counters.opened_with_retired_key,
                    opened.with_retired_key,
                );
                Ok((origin, opened.envelopes))
            });
        if let Err(e) = &checked {
            Counters::add(&self.counters.refused, 1);
            log::warn!("refused a relay ({} {}): {e}", r.method, r.target);
        }
        checked
    }

    fn check(
        &self,
        r: &Relayed<'_>,
        envelopes: &[SealedEnvelope],
        directory: &Directory,
        now_ms: u64,
    ) -> Result<String, ProxyError> {
        let header = r.header.ok_or_else(|| {
            ProxyError::Unauthenticated(format!(
                "{} (a proxy of the original posts to `POST /` instead, and only from an \
                 address listed under `legacy_proxies`)",
                RequestError::Missing
            ))
        })?;
        let h = request::parse(header).map_err(|e| ProxyError::Unauthenticated(e.to_string()))?;
        let key = origin_key(directory, &h.origin)?;
        if let Some(tls) = r.tls_key.filter(|k| **k != key) {
            return Err(ProxyError::Forbidden(format!(
                "the TLS client certificate is for key {}, not {}'s pinned key {}: a \
                 connection carries only its own proxy's requests",
                tls.fingerprint(),
                h.origin,
                key.fingerprint()
            )));
        }
        request::check_fields(&h, &self.me, &h.origin, &key, now_ms, self.started_ms)
            .map_err(refusal)?;
        // Each envelope's signed root; envelopes signed together share one, checked once.
        let mut roots: Vec<([u8; 32], &Signature, usize)> = Vec::new();
        for (i, e) in envelopes.iter().enumerate() {
            if !e.header.from.as_str().eq_ignore_ascii_case(&h.origin) {
                return Err(ProxyError::Forbidden(format!(
                    "a request signed by {}'s proxy may carry only {}'s messages: {} is from {}",
                    h.origin,
                    h.origin,
                    item(i, e, envelopes.len()),
                    e.header.from
                )));
            }
            let Some((root, sig)) = signed_root(e) else {
                return Err(ProxyError::Unauthenticated(format!(
                    "{} is not signed by {}'s proxy",
                    item(i, e, envelopes.len()),
                    e.header.from
                )));
            };
            if !roots.iter().any(|(r, s, _)| *r == root && *s == sig) {
                roots.push((root, sig, i));
            }
        }
        let line = RequestLine {
            method: r.method,
            target: r.target,
            body: r.body,
        };
        let request_bytes = request::signed_message(&h, &line);
        let mut checks = Vec::with_capacity(1 + roots.len());
        checks.push(Check {
            key: &key,
            domain: REQUEST_DOMAIN,
            msg: &request_bytes,
            sig: &h.sig,
        });
        for (root, sig, _) in &roots {
            checks.push(Check {
                key: &key,
                domain: SEALED_DOMAIN,
                msg: root,
                sig,
            });
        }
        if let Err(bad) = verify_all(&checks) {
            Counters::add(
                &self.counters.batch_fallbacks,
                usize::from(checks.len() > 1),
            );
            return Err(match bad.checked_sub(1) {
                None => ProxyError::Unauthenticated(RequestError::BadSignature.to_string()),
                Some(r) => {
                    let i = roots[r].2;
                    ProxyError::Unauthenticated(format!(
                        "the signature of {} does not hold for {}'s key (a field was changed, \
                         or another key signed it)",
                        item(i, &envelopes[i], envelopes.len()),
                        h.origin
                    ))
                }
            });
        }
        Counters::add(&self.counters.roots_verified, roots.len());
        self.nonces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(&h, now_ms)
            .map_err(refusal)?;
        Ok(h.origin)
    }

    /// Counts an acknowledgement sent.
    pub fn acknowledged(&self) {
        Counters::add(&self.counters.acks_signed, 1);
    }

    /// This proxy's signature acknowledging `envelopes`, as received (for the [`ACK_HEADER`]).
    ///
    /// [`ACK_HEADER`]: crate::wire::data_plane::ACK_HEADER
    pub fn sign_ack<'a>(&self, envelopes: impl ExactSizeIterator<Item = &'a Envelope>) -> String {
        self.identity
            .sign(ACK_DOMAIN, &acked_bytes(envelopes))
            .to_string()
    }

    /// This proxy's signature over its refusal (`status`, `message`) of the request whose
    /// digest is `request` ([`request_digest`]): what a sender needs to
    /// believe a refusal a relay carried.
    pub fn sign_refusal(&self, request: &str, status: u16, message: &str) -> String {
        self.identity
            .sign(REFUSAL_DOMAIN, &refusal_bytes(request, status, message))
            .to_string()
    }
}

/// Signature domain of a refusal ([`SignedHops::sign_refusal`]).
pub const REFUSAL_DOMAIN: &str = "overlay/refusal/v1";
/// The field of an error answer carrying its signature.
pub const REFUSAL_FIELD: &str = "refusal";

fn refusal_bytes(request: &str, status: u16, message: &str) -> Vec<u8> {
    format!("{request}\n{status}\n{message}").into_bytes()
}

/// The digest a refusal of a carried request is signed over: the request as its origin signed
/// it (method, target, names, key, time, nonce, body), so it stands for that request only.
pub fn request_digest(signature: &str, target: &str, body: &[u8]) -> Option<String> {
    use sha2::Digest;
    let h = crate::trust::request::parse(signature).ok()?;
    let line = crate::trust::request::RequestLine {
        method: "POST",
        target,
        body,
    };
    let signed = crate::trust::request::signed_message(&h, &line);
    Some(crate::trust::keys::hex_lower(&sha2::Sha256::digest(signed)))
}

/// Whether an error answer `body` (with `status`) to the request whose digest is `request`
/// carries `key`'s signature over its message ([`REFUSAL_FIELD`]).
pub fn refusal_signed_by(key: &PublicKey, request: &str, status: u16, body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let (Some(message), Some(sig)) = (
        v.get("message").and_then(|m| m.as_str()),
        v.get(REFUSAL_FIELD)
            .and_then(|s| s.as_str())
            .and_then(|s| Signature::parse(s).ok()),
    ) else {
        return false;
    };
    key.verify(
        REFUSAL_DOMAIN,
        &refusal_bytes(request, status, message),
        &sig,
    )
    .is_ok()
}

/// "message 3 of 8 (id)" in a batch, "message id" alone.
fn item(i: usize, e: &SealedEnvelope, of: usize) -> String {
    if of > 1 {
        format!("message {} of {of} ({})", i + 1, e.header.id)
    } else {
        format!("message {}", e.header.id)
    }
}

/// The pinned key of `origin`, or why there is none. A user not (yet) in this proxy's
/// directory, or whose key differs, may be one this proxy has not heard of yet: 503, retried.
fn origin_key(directory: &Directory, origin: &str) -> Result<PublicKey, ProxyError> {
    let entry = directory.user(origin);
    if entry.is_some_and(|u| !u.role.is_user()) {
        return Err(ProxyError::Forbidden(format!(
            "{origin} is a relay: it carries other proxies' messages and sends none of its own"
        )));
    }
    match entry.map(|u| (&u.state, u.key)) {
        Some((UserState::Active, Some(key))) => Ok(key),
        Some((UserState::Revoked { at_ms, reason }, _)) => Err(ProxyError::Forbidden(format!(
            "the key of {origin} was revoked at {} ({reason}): its messages are refused",
            crate::wire::rfc3339_ms(*at_ms)
        ))),
        _ => Err(ProxyError::Retry(format!(
            "{origin} has no pinned key in this proxy's directory (yet): try again once the \
             controller has published its join"
        ))),
    }
}

/// A request's refusal as an answer: a stale view of either side (clock, key, address) is
/// worth retrying (503); anything else is refused (401).
fn refusal(e: RequestError) -> ProxyError {
    match e {
        RequestError::Skew(_)
        | RequestError::BeforeStart
        | RequestError::WrongKey { .. }
        | RequestError::WrongDestination { .. }
        | RequestError::Busy => ProxyError::Retry(e.to_string()),
        RequestError::WrongOrigin { .. } => ProxyError::Forbidden(e.to_string()),
        RequestError::Missing
        | RequestError::Malformed(_)
        | RequestError::BadSignature
        | RequestError::Replay => ProxyError::Unauthenticated(e.to_string()),
    }
}

/// Signs this proxy's outgoing hops and checks their acknowledgements.
#[derive(Clone, Debug)]
pub struct HopSigner {
    hops: Arc<SignedHops>,
}

impl HopSigner {
    /// `envelopes` (one batch, in order) sealed for the proxy whose sealing key is `to`,
    /// numbered in their sequences, and signed together by this proxy (their origin).
    pub fn seal_envelopes(
        &self,
        envelopes: &[Envelope],
        to: &SealPublic,
    ) -> Result<Vec<SealedEnvelope>, String> {
        let sealed =
            crate::wire::sealed::seal(envelopes, || self.next_seq(), to, &self.hops.identity)
                .map_err(|e| format!("could not seal the message: {e}"))?;
        Counters::add(&self.hops.counters.sealed, sealed.len());
        Counters::add(&self.hops.counters.envelopes_signed, sealed.len());
        Ok(sealed)
    }

    /// Numbers from now on go above `last` (a receiver took `last` already: see
    /// `delivery::numbers_behind`).
    pub fn move_past(&self, last: u64) {
        self.hops.last_seq.fetch_max(last, Ordering::Relaxed);
    }

    /// The next sequence number: above the last one given, and at least the time in µs (so
    /// numbers keep growing across restarts, also from a data dir restored from a backup).
    fn next_seq(&self) -> u64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let next = |last: u64| last.saturating_add(1).max(now_us);
        let previous = self
            .hops
            .last_seq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(next(last))
            })
            .unwrap_or_else(|last| last);
        next(previous)
    }

    /// The `overlay-signature` value of a request to `url` for `destination` with `body`.
    pub fn sign_request(&self, method: &str, url: &str, destination: &str, body: &[u8]) -> String {
        Counters::add(&self.hops.counters.requests_signed, 1);
        let line = RequestLine {
            method,
            target: target_of(url),
            body,
        };
        request::sign(
            &self.hops.identity,
            &line,
            &self.hops.me,
            destination,
            crate::wire::now_ms(),
        )
    }

    /// Whether `ack` (the answer's [`ACK_HEADER`]) is `key`'s signature acknowledging exactly
    /// `sent`; Err says what is wrong, for the attempt's error.
    ///
    /// [`ACK_HEADER`]: crate::wire::data_plane::ACK_HEADER
    pub fn check_ack(
        &self,
        ack: Option<&str>,
        key: &PublicKey,
        sent: &[Envelope],
    ) -> Result<(), String> {
        let sig = ack.ok_or("its answer carries no signed acknowledgement")?;
        let sig = Signature::parse(sig)
            .map_err(|e| format!("its acknowledgement is not a signature: {e}"))?;
        key.verify(ACK_DOMAIN, &acked_bytes(sent.iter()), &sig)
            .map_err(|_| {
                "its acknowledgement is not signed by the key pinned to it, over these messages"
                    .to_string()
            })?;
        Counters::add(&self.hops.counters.acks_verified, 1);
        Ok(())
    }
}

/// The path and query of `url` (`/` when it has none).
pub fn target_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_believed_only_as_the_receiver_signed_it_for_that_request() {
        let bob = side("bob");
        let sig = bob.hops.sign_refusal("n1", 400, "no such thing");
        let body = |msg: &str, sig: &str| {
            serde_json::json!({"status": "error", "message": msg, REFUSAL_FIELD: sig})
                .to_string()
                .into_bytes()
        };
        let key = bob.id.public();
        assert!(refusal_signed_by(
            &key,
            "n1",
            400,
            &body("no such thing", &sig)
        ));
        assert!(!refusal_signed_by(
            &key,
            "n2",
            400,
            &body("no such thing", &sig)
        ));
        assert!(!refusal_signed_by(
            &key,
            "n1",
            403,
            &body("no such thing", &sig)
        ));
        assert!(!refusal_signed_by(
            &key,
            "n1",
            400,
            &body("other words", &sig)
        ));
        let other = crate::trust::Identity::generate().public();
        assert!(!refusal_signed_by(
            &other,
            "n1",
            400,
            &body("no such thing", &sig)
        ));
        assert!(!refusal_signed_by(
            &key,
            "n1",
            400,
            br#"{"message":"no such thing"}"#
        ));
        assert!(!refusal_signed_by(&key, "n1", 400, b"not json"));
    }
    use crate::wire::directory::UserEntry;

    const NOW: u64 = 1_800_000_000_000;

    fn directory(users: &[(&str, &Identity)]) -> Directory {
        let mut d = Directory::default();
        for (name, id) in users {
            d.users.insert(
                name.to_string(),
                UserEntry {
                    role: Default::default(),
                    via: None,
                    tls: None,
                    seal: None,
                    name: name.to_string(),
                    proxy_id: None,
                    key: Some(id.public()),
                    host: "127.0.0.1".into(),
                    port: 1,
                    native: true,
                    state: UserState::Active,
                },
            );
        }
        d
    }

    struct Side {
        hops: Arc<SignedHops>,
        id: Arc<Identity>,
        _dir: tempfile::TempDir,
    }

    fn side(name: &str) -> Side {
        let id = Arc::new(Identity::generate());
        let dir = tempfile::tempdir().unwrap();
        let seal = SealKeys::load_or_create(&dir.path().join(name), NOW)
            .unwrap()
            .0;
        Side {
            hops: Arc::new(SignedHops::new(
                name,
                id.clone(),
                Arc::new(seal),
                NOW - 1000,
            )),
            id,
            _dir: dir,
        }
    }

    fn seal_key(of: &Side) -> SealPublic {
        of.hops.seal_keys().current().0
    }

    /// What alice's proxy sends `to`'s for `envelopes`: the sealed envelopes, the body, the
    /// header.
    fn sent(
        alice: &Side,
        envelopes: &[Envelope],
        to: &Side,
        to_name: &str,
    ) -> (Vec<SealedEnvelope>, Vec<u8>, String) {
        let sealed = alice
            .hops
            .signer()
            .seal_envelopes(envelopes, &seal_key(to))
            .unwrap();
        let body = serde_json::to_vec(&sealed).unwrap();
        // Signed as `sign_request` does, dated by the test's clock.
        let h = header(alice, &body, "alice", to_name);
        (sealed, body, h)
    }

    /// The signature header `by` makes for `body` to the batch route, as `origin` for `to`.
    fn header(by: &Side, body: &[u8], origin: &str, to: &str) -> String {
        let line = RequestLine {
            method: "POST",
            target: "/api/v1/relay/batch",
            body,
        };
        request::sign(&by.id, &line, origin, to, NOW)
    }

    fn relayed<'a>(header: &'a str, body: &'a [u8]) -> Relayed<'a> {
        Relayed {
            method: "POST",
            target: "/api/v1/relay/batch",
            header: Some(header),
            body,
            tls_key: None,
        }
    }

    #[test]
    fn a_sealed_batch_from_its_origin_opens_once_and_its_replay_does_not() {
        let (alice, bob) = (side("alice"), side("bob"));
        let dir = directory(&[("alice", &alice.id), ("bob", &bob.id)]);
        let es = [
            Envelope::text("alice", "bob", "the first one"),
            Envelope::text("alice", "bob", "the second one"),
        ];
        let (sealed, body, h) = sent(&alice, &es, &bob, "bob");
        // (With a space, which base64 never holds: no ciphertext can contain it by chance.)
        assert!(!String::from_utf8_lossy(&body).contains("the second one"));
        let r = relayed(&h, &body);
        let (origin, opened) = bob.hops.check_relay(&r, &sealed, &dir, NOW).unwrap();
        assert_eq!(origin, "alice");
        assert_eq!(
            opened.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
            es
        );
        assert_eq!(opened[1].1.after, opened[0].1.seq);
        let again = bob.hops.check_relay(&r, &sealed, &dir, NOW).unwrap_err();
        assert!(again.to_string().contains("replay"), "{again}");
        let v = bob.hops.counters.view();
        assert_eq!(
            (
                v.requests_verified,
                v.envelopes_verified,
                v.opened,
                v.refused
            ),
            (1, 2, 2, 1)
        );
        assert_eq!(alice.hops.counters.view().sealed, 2);
    }

    #[test]
    fn numbers_keep_growing_and_start_from_the_clock() {
        let alice = side("alice");
        let signer = alice.hops.signer();
        let a = signer.next_seq();
        let b = signer.next_seq();
        assert!(b > a);
        let now_us = crate::wire::now_ms() * 1000;
        assert!(a + 10_000_000 >= now_us, "{a} {now_us}");
        // A restart (a new counter) still numbers above what was given.
        assert!(side("alice").hops.signer().next_seq() > a);
    }

    #[test]
    fn a_body_sealed_for_carol_and_moved_to_bob_or_resigned_by_carol_is_refused() {
        let (alice, bob, carol) = (side("alice"), side("bob"), side("carol"));
        let dir = directory(&[("alice", &alice.id), ("bob", &bob.id), ("carol", &carol.id)]);
        // Alice's body for carol, moved into an envelope to bob that alice (or a carrier with
        // her key) signs again: sealed to a key bob does not hold.
        let (for_carol, _, _) = sent(
            &alice,
            &[Envelope::text("alice", "carol", "secret")],
            &carol,
            "carol",
        );
        let (mut for_bob, _, _) =
            sent(&alice, &[Envelope::text("alice", "bob", "hi")], &bob, "bob");
        for_bob[0].sealed = for_carol[0].sealed.clone();
        crate::wire::data_plane::sign_together(&mut for_bob, &alice.id, SEALED_DOMAIN);
        let body = serde_json::to_vec(&for_bob).unwrap();
        let h = header(&alice, &body, "alice", "bob");
        let e = bob
            .hops
            .check_relay(&relayed(&h, &body), &for_bob, &dir, NOW)
            .unwrap_err();
        assert!(e.to_string().contains("does not hold"), "{e}");
        // Carol takes alice's sealed body for bob and sends it as her own, signed by her.
        let (from_alice, _, _) = sent(
            &alice,
            &[Envelope::text("alice", "bob", "alice's words")],
            &bob,
            "bob",
        );
        let mut as_carol = from_alice.clone();
        as_carol[0].header.from = "carol".into();
        as_carol[0].header.conversation = crate::wire::data_plane::conversation_id("carol", "bob");
        crate::wire::data_plane::sign_together(&mut as_carol, &carol.id, SEALED_DOMAIN);
        let body = serde_json::to_vec(&as_carol).unwrap();
        let h = header(&carol, &body, "carol", "bob");
        let e = bob
            .hops
            .check_relay(&relayed(&h, &body), &as_carol, &dir, NOW)
            .unwrap_err();
        assert!(matches!(e, ProxyError::Forbidden(_)), "{e}");
        assert!(e.to_string().contains("does not open"), "{e}");
        assert_eq!(bob.hops.counters.view().not_opened, 2);
        assert_eq!(bob.hops.counters.view().opened, 0);
    }

    #[test]
    fn a_body_sealed_to_a_key_rotated_long_ago_is_worth_sealing_again() {
        let (alice, bob) = (side("alice"), side("bob"));
        let dir = directory(&[("alice", &alice.id), ("bob", &bob.id)]);
        let (sealed, body, h) = sent(&alice, &[Envelope::text("alice", "bob", "hi")], &bob, "bob");
        bob.hops.seal_keys().rotate(NOW).unwrap();
        bob.hops
            .seal_keys()
            .rotate(NOW + crate::trust::seal::RETIRED_KEEP_MS + 1)
            .unwrap();
        let e = bob
            .hops
            .check_relay(&relayed(&h, &body), &sealed, &dir, NOW)
            .unwrap_err();
        assert!(matches!(e, ProxyError::Retry(_)), "{e}");
    }

    #[test]
    fn a_request_signed_by_alice_on_carols_tls_connection_is_refused() {
        let (alice, bob, carol) = (side("alice"), side("bob"), side("carol"));
        let dir = directory(&[("alice", &alice.id), ("bob", &bob.id), ("carol", &carol.id)]);
        let es = [Envelope::text("alice", "bob", "hi")];
        let (sealed, body, h) = sent(&alice, &es, &bob, "bob");
        let carol_key = carol.id.public();
        let on_carols = Relayed {
            tls_key: Some(&carol_key),
            ..relayed(&h, &body)
        };
        let e = bob
            .hops
            .check_relay(&on_carols, &sealed, &dir, NOW)
            .unwrap_err();
        assert!(matches!(e, ProxyError::Forbidden(_)), "{e}");
        assert!(e.to_string().contains("not alice's pinned key"), "{e}");
        let alice_key = alice.id.public();
        let on_alices = Relayed {
            tls_key: Some(&alice_key),
            ..relayed(&h, &body)
        };
        assert_eq!(
            bob.hops
                .check_relay(&on_alices, &sealed, &dir, NOW)
                .unwrap()
                .0,
            "alice"
        );
    }

    #[test]
    fn another_enrolled_proxy_cannot_speak_for_someone_else() {
        let (alice, bob, carol) = (side("alice"), side("bob"), side("carol"));
        let dir = directory(&[("alice", &alice.id), ("bob", &bob.id), ("carol", &carol.id)]);
        // carol signs the request as herself, but the message says it is from alice.
        let es = [Envelope::text("alice", "bob", "it's alice, honest")];
        let sealed = carol
            .hops
            .signer()
            .seal_envelopes(&es, &seal_key(&bob))
            .unwrap();
        let body = serde_json::to_vec(&sealed).unwrap();
        let h = header(&carol, &body, "carol", "bob");
        let e = bob
            .hops
            .check_relay(&relayed(&h, &body), &sealed, &dir, NOW)
            .unwrap_err();
        assert!(matches!(e, ProxyError::Forbidden(_)), "{e}");
        // carol signs as alice: not alice's pinned key.
        let h = header(&carol, &body, "alice", "bob");
        let e = bob
            .hops
            .check_relay(&relayed(&h, &body), &sealed, &dir, NOW)
            .unwrap_err();
        assert!(e.to_string().contains("not by"), "{e}");
    }

    #[test]
    fn one_changed_envelope_in_a_batch_is_named() {
        let (alice, bob) = (side("alice"), side("bob"));
        let dir = directory(&[("alice", &alice.id), ("bob", &bob.id)]);
        let es: Vec<Envelope> = (0..4)
            .map(|i| Envelope::text("alice", "bob", format!("m{i}")))
            .collect();
        let mut sealed = alice
            .hops
            .signer()
            .seal_envelopes(&es, &seal_key(&bob))
            .unwrap();
        sealed[2].sealed.ct.0[0] ^= 1;
        // The request is signed over the changed body (as a relay in between could not, but
        // the origin's envelope signature must catch it alone).
        let body = serde_json::to_vec(&sealed).unwrap();
        let h = header(&alice, &body, "alice", "bob");
        let e = bob
            .hops
            .check_relay(&relayed(&h, &body), &sealed, &dir, NOW)
            .unwrap_err();
        assert!(e.to_string().contains("message 3 of 4"), "{e}");
        assert_eq!(bob.hops.counters.view().batch_fallbacks, 1);
    }

    #[test]
    fn a_swapped_body_target_or_destination_does_not_hold() {
        let (alice, bob) = (side("alice"), side("bob"));
        let dir = directory(&[("alice", &alice.id), ("bob", &bob.id)]);
        let es = [Envelope::text("alice", "bob", "hi")];
        let (sealed, body, h) = sent(&alice, &es, &bob, "bob");
        let mut other = body.clone();
        other.push(b' ');
        let e = bob
            .hops
            .check_relay(&relayed(&h, &other), &sealed, &dir, NOW)
            .unwrap_err();
        assert!(matches!(e, ProxyError::Unauthenticated(_)), "{e}");
        let r = Relayed {
            target: "/api/v1/relay",
            ..relayed(&h, &body)
        };
        assert!(bob.hops.check_relay(&r, &sealed, &dir, NOW).is_err());
        // Signed for carol, sent to bob.
        let (sealed, body, h) = sent(&alice, &es, &bob, "carol");
        let e = bob
            .hops
            .check_relay(&relayed(&h, &body), &sealed, &dir, NOW)
            .unwrap_err();
        assert!(e.to_string().contains("not for bob"), "{e}");
    }

    #[test]
    fn an_ack_holds_only_for_the_receivers_key_over_the_messages_sent() {
        let (alice, bob, carol) = (side("alice"), side("bob"), side("carol"));
        let es = [Envelope::text("alice", "bob", "hi")];
        let ack = bob.hops.sign_ack(es.iter());
        let signer = alice.hops.signer();
        assert_eq!(signer.check_ack(Some(&ack), &bob.id.public(), &es), Ok(()));
        assert!(signer.check_ack(None, &bob.id.public(), &es).is_err());
        let forged = carol.hops.sign_ack(es.iter());
        assert!(signer
            .check_ack(Some(&forged), &bob.id.public(), &es)
            .is_err());
        let other = [Envelope::text("alice", "bob", "another")];
        assert!(signer
            .check_ack(Some(&ack), &bob.id.public(), &other)
            .is_err());
        assert_eq!(signer.hops.counters.view().acks_verified, 1);
    }

    #[test]
    fn the_target_is_the_path_and_query() {
        assert_eq!(
            target_of("http://h:1/api/v1/relay?x=1"),
            "/api/v1/relay?x=1"
        );
        assert_eq!(target_of("http://h:1"), "/");
    }
}

//! The sealed envelope: how a message travels between two proxies of ours. Its header stays
//! in the clear (who, to whom, which conversation, when, its place in the sequence); its body
//! is sealed for the receiving proxy's sealing key ([`crate::trust::seal`]), and the origin
//! proxy signs header, encapsulated key and ciphertext together (under [`SEALED_DOMAIN`]), so
//! nobody can pass alice's ciphertext off as their own or move it to another envelope.
//!
//! - `info` = `"overlay/seal/v1"` ‖ from ‖ to ‖ the recipient key's id ([`info`]);
//! - `aad` = message id ‖ conversation ‖ sequence number ‖ the number it follows
//!   ([`Header::aad`]);
//! - the plaintext is the header again with the body ([`open`] checks that the inner header
//!   equals the outer one).
//!
//! The sequence, per (sender, conversation): each attempt numbers its envelopes with numbers
//! larger than any the sender used before (`seq`), and names the one each follows in the same
//! batch (`after`; 0 when every earlier message of its conversation is settled at the sender:
//! acknowledged, or given up and reported to its author). The receiver takes an envelope only
//! right after the one it follows, so a carrier that drops or reorders cannot reorder a
//! conversation (see `crate::proxy::store`).
//!
//! Pure functions and serde types; no I/O.

use std::ops::Not;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::data_plane::{leaf_of, put, Body, Envelope, EnvelopeSignature, MessageId, Signable};
use super::PeerName;
use crate::trust::seal::{seal_batch, SealError, SealKeys, SealPublic};
use crate::trust::Identity;

/// Signature domain of the root over sealed envelopes signed together.
pub const SEALED_DOMAIN: &str = "overlay/envelope/v2";
/// The first part of every seal's `info`.
pub const SEAL_INFO: &str = "overlay/seal/v1";

/// What a sealed envelope shows in the clear (and repeats, sealed, inside).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub id: MessageId,
    pub from: PeerName,
    pub to: PeerName,
    pub conversation: String,
    pub sent_at_ms: u64,
    /// Its number in its (from, conversation) sequence on this attempt: larger than any the
    /// sender used before.
    pub seq: u64,
    /// The number of the envelope it follows in the same batch; 0: none (every earlier message
    /// of its conversation is settled at the sender).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub after: u64,
    #[serde(default, skip_serializing_if = "Not::not")]
    pub auto_reply: bool,
    #[serde(default, skip_serializing_if = "Not::not")]
    pub error: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Header {
    fn of(e: &Envelope, seq: u64, after: u64) -> Header {
        Header {
            id: e.id.clone(),
            from: e.from.clone(),
            to: e.to.clone(),
            conversation: e.conversation.clone(),
            sent_at_ms: e.sent_at_ms,
            seq,
            after,
            auto_reply: e.auto_reply,
            error: e.error,
        }
    }

    /// The seal's associated data: id ‖ conversation ‖ seq ‖ after.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.conversation.len());
        put(&mut out, self.id.as_str().as_bytes());
        put(&mut out, self.conversation.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.after.to_be_bytes());
        out
    }

    /// Where it stands in its sequence.
    pub fn chain(&self) -> Chain {
        Chain {
            seq: self.seq,
            after: self.after,
        }
    }
}

/// An envelope's place in its (sender, conversation) sequence (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub after: u64,
}

/// Bytes as standard base64 text.
#[derive(Clone, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|_| serde::de::Error::custom("not base64"))
    }
}

/// The sealed body: the recipient key it is sealed to, the encapsulated key of its batch, its
/// place in the batch (its key is exported for that place), and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBody {
    pub key: String,
    pub enc: B64,
    pub i: u32,
    pub ct: B64,
}

/// A message between two proxies of ours: header, sealed body, the origin proxy's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEnvelope {
    pub header: Header,
    pub sealed: SealedBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<EnvelopeSignature>,
}

impl SealedEnvelope {
    /// The bytes its origin signs: the header, then the sealed body's key id, encapsulated key,
    /// place and ciphertext, each length-prefixed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let h = &self.header;
        let mut out = Vec::with_capacity(160 + self.sealed.ct.0.len());
        for field in [
            h.id.as_str(),
            h.from.as_str(),
            h.to.as_str(),
            h.conversation.as_str(),
        ] {
            put(&mut out, field.as_bytes());
        }
        for n in [h.sent_at_ms, h.seq, h.after] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.push(u8::from(h.auto_reply) | (u8::from(h.error) << 1));
        put(&mut out, b"sealed");
        put(&mut out, self.sealed.key.as_bytes());
        put(&mut out, &self.sealed.enc.0);
        out.extend_from_slice(&self.sealed.i.to_be_bytes());
        put(&mut out, &self.sealed.ct.0);
        out
    }
}

impl super::data_plane::Addressed for SealedEnvelope {
    fn id(&self) -> &MessageId {
        &self.header.id
    }
    fn from(&self) -> &PeerName {
        &self.header.from
    }
    fn to(&self) -> &PeerName {
        &self.header.to
    }
}

impl Signable for SealedEnvelope {
    fn leaf(&self) -> [u8; 32] {
        leaf_of(&self.signed_bytes())
    }
    fn signature(&self) -> Option<&EnvelopeSignature> {
        self.signature.as_ref()
    }
    fn set_signature(&mut self, signature: EnvelopeSignature) {
        self.signature = Some(signature);
    }
}

/// The plaintext of a seal.
#[derive(Serialize, Deserialize)]
struct Inner {
    header: Header,
    body: Body,
}

/// A seal's `info`: [`SEAL_INFO`] ‖ from ‖ to (as names compare: lowercase) ‖ key id.
pub fn info(from: &PeerName, to: &PeerName, key_id: &str) -> Vec<u8> {
    let mut out = SEAL_INFO.as_bytes().to_vec();
    put(&mut out, from.key().as_bytes());
    put(&mut out, to.key().as_bytes());
    put(&mut out, key_id.as_bytes());
    out
}

/// Seals `envelopes` (one batch, in order) for the proxy whose sealing key is `to`, numbers
/// them with `next_seq` (see the module's doc) and signs them together as `by`. Envelopes of
/// one (from, to) share one encapsulation.
pub fn seal(
    envelopes: &[Envelope],
    mut next_seq: impl FnMut() -> u64,
    to: &SealPublic,
    by: &Identity,
) -> Result<Vec<SealedEnvelope>, SealError> {
    let key_id = to.id();
    let mut last: Vec<((String, &str), u64)> = Vec::new();
    let headers: Vec<Header> = envelopes
        .iter()
        .map(|e| {
            let seq = next_seq();
            let conv = (e.from.key(), e.conversation.as_str());
            let after = match last.iter_mut().find(|(k, _)| *k == conv) {
                Some((_, n)) => std::mem::replace(n, seq),
                None => {
                    last.push((conv, seq));
                    0
                }
            };
            Header::of(e, seq, after)
        })
        .collect();
    let mut out: Vec<Option<SealedEnvelope>> = vec![None; envelopes.len()];
    // One context per (from, to): a batch normally has one.
    let mut groups: Vec<((String, String), Vec<usize>)> = Vec::new();
    for (i, e) in envelopes.iter().enumerate() {
        let k = (e.from.key(), e.to.key());
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    for (_, members) in groups {
        let first = &envelopes[members[0]];
        let items = members
            .iter()
            .map(|&i| {
                let inner = Inner {
                    header: headers[i].clone(),
                    body: envelopes[i].body.clone(),
                };
                let pt = serde_json::to_vec(&inner).map_err(|e| SealError::Seal(e.to_string()))?;
                Ok((headers[i].aad(), pt))
            })
            .collect::<Result<Vec<_>, SealError>>()?;
        let batch = seal_batch(to, &info(&first.from, &first.to, &key_id), &items)?;
        for (n, (&i, ct)) in members.iter().zip(batch.cts).enumerate() {
            out[i] = Some(SealedEnvelope {
                header: headers[i].clone(),
                sealed: SealedBody {
                    key: key_id.clone(),
                    enc: B64(batch.enc.clone()),
                    i: u32::try_from(n).unwrap_or(u32::MAX),
                    ct: B64(ct),
                },
                signature: None,
            });
        }
    }
    let mut sealed: Vec<SealedEnvelope> = out.into_iter().flatten().collect();
    super::data_plane::sign_together(&mut sealed, by, SEALED_DOMAIN);
    Ok(sealed)
}

/// Why a sealed envelope was not opened: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    pub index: usize,
    pub why: String,
    /// The key it was sealed to is not (or no longer) one of the receiver's: the sender's
    /// directory is behind, worth sealing again.
    pub unknown_key: bool,
}

/// What [`open`] opened: each envelope with its place in its sequence, and how many were
/// sealed to a retired key (their sender's directory was behind a rotation).
#[derive(Debug)]
pub struct Opened {
    pub envelopes: Vec<(Envelope, Chain)>,
    pub with_retired_key: usize,
}

/// Opens `sealed` (envelopes as received, their signatures checked) with `keys`, or says why
/// one does not open. Envelopes of one batch (one encapsulated key) open alone or together,
/// each only at its own place; each inner header must equal its outer one.
pub fn open(sealed: &[SealedEnvelope], keys: &SealKeys) -> Result<Opened, OpenError> {
    let fail = |index: usize, why: String| OpenError {
        index,
        why,
        unknown_key: false,
    };
    let mut groups: Vec<(&[u8], Vec<usize>)> = Vec::new();
    for (i, s) in sealed.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(enc, _)| *enc == s.sealed.enc.0.as_slice())
        {
            Some((_, members)) => members.push(i),
            None => groups.push((&s.sealed.enc.0, vec![i])),
        }
    }
    let mut opened: Vec<Option<(Envelope, Chain)>> = vec![None; sealed.len()];
    let mut with_retired_key = 0;
    for (enc, members) in groups {
        let first = &sealed[members[0]];
        for &i in &members {
            let s = &sealed[i];
            if s.sealed.key != first.sealed.key
                || s.header.from != first.header.from
                || s.header.to != first.header.to
            {
                return Err(fail(
                    i,
                    "it shares an encapsulated key with another sender, destination or key"
                        .to_string(),
                ));
            }
        }
        let items: Vec<(u32, Vec<u8>, &[u8])> = members
            .iter()
            .map(|&i| {
                let s = &sealed[i];
                (s.sealed.i, s.header.aad(), s.sealed.ct.0.as_slice())
            })
            .collect();
        let info = info(&first.header.from, &first.header.to, &first.sealed.key);
        let (plain, retired) = keys
            .open_batch(&first.sealed.key, &info, enc, &items)
            .map_err(|e| OpenError {
                index: match e {
                    SealError::Open(n) => members[n],
                    _ => members[0],
                },
                unknown_key: matches!(e, SealError::UnknownKey(_)),
                why: e.to_string(),
            })?;
        if retired {
            with_retired_key += members.len();
        }
        for (&i, pt) in members.iter().zip(plain) {
            let inner: Inner = serde_json::from_slice(&pt)
                // serde's error could quote the plaintext: not named.
                .map_err(|_| fail(i, "its sealed content is not an envelope".to_string()))?;
            let outer = &sealed[i].header;
            if inner.header != *outer {
                return Err(fail(
                    i,
                    "its sealed header differs from the header it travels under".to_string(),
                ));
            }
            let h = inner.header;
            opened[i] = Some((
                Envelope {
                    id: h.id.clone(),
                    from: h.from.clone(),
                    to: h.to.clone(),
                    conversation: h.conversation.clone(),
                    sent_at_ms: h.sent_at_ms,
                    body: inner.body,
                    auto_reply: h.auto_reply,
                    error: h.error,
                    unauthenticated: false,
                },
                h.chain(),
            ));
        }
    }
    Ok(Opened {
        envelopes: opened.into_iter().flatten().collect(),
        with_retired_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::PublicKey;
    use crate::wire::data_plane::{signed_root, Envelope};

    /// Whether `item`'s signature holds for `key` under `domain`, alone.
    fn signed_by(item: &SealedEnvelope, key: &PublicKey, domain: &str) -> bool {
        signed_root(item).is_some_and(|(root, sig)| key.verify(domain, &root, sig).is_ok())
    }

    fn keys(dir: &std::path::Path, name: &str) -> SealKeys {
        SealKeys::load_or_create(&dir.join(name), 1).unwrap().0
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 100;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn a_batch_seals_numbers_signs_and_opens_to_the_same_envelopes() {
        let dir = tempfile::tempdir().unwrap();
        let bob = keys(dir.path(), "bob");
        let alice = Identity::generate();
        let mut es = vec![
            Envelope::text("alice", "bob", "one"),
            Envelope::text("alice", "bob", "two"),
            Envelope::text("alice", "bob", "three"),
        ];
        es[2].auto_reply = true;
        let sealed = seal(&es, counter(), &bob.current().0, &alice).unwrap();
        let chains: Vec<(u64, u64)> = sealed
            .iter()
            .map(|s| (s.header.seq, s.header.after))
            .collect();
        assert_eq!(chains, vec![(101, 0), (102, 101), (103, 102)]);
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains("one") && !json.contains("three"), "{json}");
        for s in &sealed {
            assert!(signed_by(s, &alice.public(), SEALED_DOMAIN));
        }
        let back: Vec<SealedEnvelope> = serde_json::from_str(&json).unwrap();
        let opened = open(&back, &bob).unwrap().envelopes;
        assert_eq!(
            opened.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
            es
        );
        assert_eq!(
            opened[1].1,
            Chain {
                seq: 102,
                after: 101
            }
        );
    }

    #[test]
    fn the_signature_covers_the_header_the_encapsulation_and_the_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let bob = keys(dir.path(), "bob");
        let alice = Identity::generate();
        let sealed = seal(
            &[Envelope::text("alice", "bob", "hi")],
            counter(),
            &bob.current().0,
            &alice,
        )
        .unwrap();
        let holds = |s: &SealedEnvelope| signed_by(s, &alice.public(), SEALED_DOMAIN);
        assert!(holds(&sealed[0]));
        let changes: [fn(&mut SealedEnvelope); 11] = [
            |s| s.header.id = MessageId::new(),
            |s| s.header.from = "carol".into(),
            |s| s.header.to = "carol".into(),
            |s| s.header.conversation = "alice:carol".into(),
            |s| s.header.sent_at_ms += 1,
            |s| s.header.seq += 1,
            |s| s.header.after = 7,
            |s| s.header.auto_reply = true,
            |s| s.sealed.enc.0[0] ^= 1,
            |s| s.sealed.ct.0[0] ^= 1,
            |s| s.sealed.key = "0000000000000000".into(),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = sealed[0].clone();
            change(&mut changed);
            assert!(!holds(&changed), "change {i} kept the signature valid");
        }
    }

    #[test]
    fn a_body_sealed_for_another_destination_or_sender_or_header_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let (bob, carol) = (keys(dir.path(), "bob"), keys(dir.path(), "carol"));
        let alice = Identity::generate();
        let for_carol = seal(
            &[Envelope::text("alice", "carol", "for carol")],
            counter(),
            &carol.current().0,
            &alice,
        )
        .unwrap();
        let for_bob = seal(
            &[Envelope::text("alice", "bob", "for bob")],
            counter(),
            &bob.current().0,
            &alice,
        )
        .unwrap();
        // Carol's body under bob's header: sealed to a key bob does not hold.
        let mut swapped = for_bob[0].clone();
        swapped.sealed = for_carol[0].sealed.clone();
        let e = open(&[swapped], &bob).unwrap_err();
        assert!(e.unknown_key, "{e:?}");
        // Even naming bob's key id: it does not open.
        let mut renamed = for_bob[0].clone();
        renamed.sealed.enc = for_carol[0].sealed.enc.clone();
        renamed.sealed.ct = for_carol[0].sealed.ct.clone();
        assert!(open(&[renamed], &bob).is_err());
        // Bob's body under another sender's name (a re-signed copy): info differs.
        let mut resent = for_bob[0].clone();
        resent.header.from = "carol".into();
        resent.header.conversation = "bob:carol".into();
        let e = open(&[resent], &bob).unwrap_err();
        assert!(e.why.contains("does not open"), "{e:?}");
        // A changed outer header (aad) does not open either.
        let mut later = for_bob[0].clone();
        later.header.sent_at_ms += 1;
        // sent_at is not in the aad: the inner header check catches it.
        let e = open(&[later], &bob).unwrap_err();
        assert!(e.why.contains("sealed header differs"), "{e:?}");
    }

    #[test]
    fn each_envelope_of_a_batch_opens_alone_but_only_at_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let bob = keys(dir.path(), "bob");
        let alice = Identity::generate();
        let es: Vec<Envelope> = (0..3)
            .map(|i| Envelope::text("alice", "bob", format!("m{i}")))
            .collect();
        let sealed = seal(&es, counter(), &bob.current().0, &alice).unwrap();
        let alone = open(&[sealed[2].clone()], &bob).unwrap().envelopes;
        assert_eq!(alone[0].0, es[2]);
        assert_eq!(
            open(&[sealed[2].clone(), sealed[0].clone()], &bob)
                .unwrap()
                .envelopes
                .len(),
            2
        );
        let mut moved = sealed[2].clone();
        moved.sealed.i = 1;
        assert!(open(&[moved], &bob).is_err());
    }
}

//! The relay's wire: how a proxy that cannot be reached (behind NAT) keeps one stream open to a
//! relay, proves its key to attach, and how requests for it are carried down that stream and
//! answered back up.
//!
//! - `GET /relay/v1/challenge` answers a [`Challenge`]: a fresh nonce, good once, for a short
//!   while.
//! - `GET /relay/v1/attach` with [`ATTACH_HEADER`] = an [`AttachProof`] (the proxy's name, and
//!   its signature over [`ATTACH_DOMAIN`] ‖ relay name ‖ nonce ‖ time) opens the event stream:
//!   `event: attached` ([`Attached`]), then `event: request` ([`Carried`], `id:` its number),
//!   keep-alive comments, and `event: superseded` when a newer stream of the same proxy takes
//!   over (or `event: refused`, when two processes with one key take turns).
//! - `POST /relay/v1/to/{name}` (another proxy sending to `name`): the body and
//!   [`crate::trust::request::SIGNATURE_HEADER`] of the request it would have posted to that
//!   proxy, whose path is [`TARGET_HEADER`]. The relay answers with the receiver's answer
//!   ([`RELAYED_HEADER`] set), or its own refusal (not attached, queue full, no answer in time).
//! - `POST /relay/v1/answer` (the attached proxy, [`SESSION_HEADER`]): an [`Answered`].
//!
//! The relay carries whole signed requests and their signed answers, and can read neither the
//! sealed bodies nor forge an acknowledgement.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::trust::Signature;

/// Domain of an attach proof's signature.
pub const ATTACH_DOMAIN: &str = "overlay/relay/attach/v1";
/// The header carrying an [`AttachProof`].
pub const ATTACH_HEADER: &str = "overlay-relay-attach";
/// The header naming the path a carried request is for on its receiver.
pub const TARGET_HEADER: &str = "overlay-relay-target";
/// The header carrying an attached stream's session token.
pub const SESSION_HEADER: &str = "overlay-relay-session";
/// How long (ms) a sender waits for its answer: the relay answers 504 a little before, so the
/// sender hears why instead of timing out.
pub const WAIT_HEADER: &str = "overlay-relay-wait";
/// Set on an answer that came from the receiver (its status and body are the receiver's); an
/// answer without it is the relay's own.
pub const RELAYED_HEADER: &str = "overlay-relayed";
/// The paths a relay carries requests to: the two routes proxies take messages on.
pub const CARRIED_TARGETS: [&str; 2] = ["/api/v1/relay", "/api/v1/relay/batch"];

/// `GET /relay/v1/challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The relay's name, as the directory lists it.
    pub relay: String,
    pub nonce: String,
    /// After this (Unix ms) the nonce is no longer taken.
    pub expires_at_ms: u64,
}

/// A proxy's proof that it holds its key, for one attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachProof {
    pub name: String,
    /// The process holding the key: random per start (two processes taking turns with one
    /// key are a cloned key).
    pub instance: String,
    pub relay: String,
    pub nonce: String,
    pub time_ms: u64,
    pub sig: Signature,
}

impl AttachProof {
    /// The bytes signed: relay ‖ nonce ‖ time ‖ name ‖ instance, one per line.
    fn message(&self) -> Vec<u8> {
        signed_bytes(
            &self.relay,
            &self.nonce,
            self.time_ms,
            &self.name,
            &self.instance,
        )
    }

    pub fn sign(
        by: &crate::trust::Identity,
        name: &str,
        instance: &str,
        c: &Challenge,
        time_ms: u64,
    ) -> Self {
        let signed = signed_bytes(&c.relay, &c.nonce, time_ms, name, instance);
        AttachProof {
            name: name.to_string(),
            instance: instance.to_string(),
            relay: c.relay.clone(),
            nonce: c.nonce.clone(),
            time_ms,
            sig: by.sign(ATTACH_DOMAIN, &signed),
        }
    }

    /// `name=…;instance=…;relay=…;nonce=…;time=…;sig=…`.
    pub fn header(&self) -> String {
        format!(
            "name={};instance={};relay={};nonce={};time={};sig={}",
            self.name, self.instance, self.relay, self.nonce, self.time_ms, self.sig
        )
    }

    pub fn parse(value: &str) -> Result<AttachProof, String> {
        let mut fields = std::collections::BTreeMap::new();
        for part in value.split(';') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or("expected key=value parts separated by `;`")?;
            if fields.insert(k, v).is_some() {
                return Err(format!("`{k}` is given twice"));
            }
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .filter(|v| !v.is_empty())
                .ok_or(format!("`{k}` is missing"))
        };
        Ok(AttachProof {
            name: get("name")?.to_string(),
            instance: get("instance")?.to_string(),
            relay: get("relay")?.to_string(),
            nonce: get("nonce")?.to_string(),
            time_ms: get("time")?
                .parse()
                .map_err(|_| "`time` is not a number of ms".to_string())?,
            sig: Signature::parse(get("sig")?).map_err(|e| format!("`sig`: {e}"))?,
        })
    }

    /// Checks the signature under `key`.
    pub fn verify(&self, key: &crate::trust::PublicKey) -> bool {
        key.verify(ATTACH_DOMAIN, &self.message(), &self.sig)
            .is_ok()
    }
}

fn signed_bytes(relay: &str, nonce: &str, time_ms: u64, name: &str, instance: &str) -> Vec<u8> {
    format!("{relay}\n{nonce}\n{time_ms}\n{name}\n{instance}").into_bytes()
}

/// `event: attached`: the stream is this proxy's now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// Sent back with each answer ([`SESSION_HEADER`]).
    pub session: String,
    /// The relay's keep-alive period, ms: a stream silent for a few of them is dead.
    pub ping_every_ms: u64,
}

/// `event: request`: a request another proxy sent this one through the relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Carried {
    /// Its number on this relay (also the event's `id:`).
    pub n: u64,
    /// Who sent it (as its signature says; the receiver checks it again).
    pub from: String,
    /// The path it is for (one of [`CARRIED_TARGETS`]).
    pub target: String,
    /// The sender's [`crate::trust::request::SIGNATURE_HEADER`].
    pub signature: String,
    /// The request's body, byte for byte as signed.
    pub body: Box<RawValue>,
}

/// `POST /relay/v1/answer`: the receiver's answer to carried request `n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub n: u64,
    pub status: u16,
    /// Its [`crate::wire::data_plane::ACK_HEADER`], when it acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attach_proof_holds_only_for_its_relay_nonce_time_and_name() {
        let id = crate::trust::Identity::generate();
        let c = Challenge {
            relay: "relay1".into(),
            nonce: "n1".into(),
            expires_at_ms: 9,
        };
        let proof = AttachProof::sign(&id, "alice", "i1", &c, 1000);
        let parsed = AttachProof::parse(&proof.header()).unwrap();
        assert_eq!(parsed, proof);
        assert!(parsed.verify(&id.public()));
        for changed in [
            AttachProof {
                relay: "relay2".into(),
                ..proof.clone()
            },
            AttachProof {
                nonce: "n2".into(),
                ..proof.clone()
            },
            AttachProof {
                time_ms: 1001,
                ..proof.clone()
            },
            AttachProof {
                name: "bob".into(),
                ..proof.clone()
            },
            AttachProof {
                instance: "i2".into(),
                ..proof.clone()
            },
        ] {
            assert!(!changed.verify(&id.public()), "{changed:?}");
        }
        assert!(!proof.verify(&crate::trust::Identity::generate().public()));
        assert!(AttachProof::parse("name=a;instance=i;relay=r")
            .unwrap_err()
            .contains("`nonce` is missing"));
        assert!(AttachProof::parse(&format!("{};name=b", proof.header()))
            .unwrap_err()
            .contains("twice"));
    }
}

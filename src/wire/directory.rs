//! The signed, versioned directory: who is who in the overlay, as the controller vouches for it.
//!
//! The controller keeps one [`Directory`] (every user: name, proxy id, identity key, address,
//! state; the AI endpoint names). Each proxy gets it with its own endpoint table (the
//! controller's config and that proxy's edits, resolved) as a signed [`Snapshot`], then signed
//! [`Delta`]s (`from` → `to`), each with an expiry, on `GET /api/v1/directory/stream`; the SSE
//! event id is the version, so a reconnect with `Last-Event-ID` resumes with a delta. A proxy
//! applies a document only after checking the chain root → online key → document
//! ([`Certified`]) and refuses a version older than the one it applied (no rollback to a
//! revoked key); a delta that does not start where it is, or does not verify, makes it ask for
//! a snapshot.
//!
//! Joining and registering: [`JoinRequest`] (`POST /api/v1/join`, proves a token without
//! sending its secret), [`RegisterClaim`] (`POST /api/v1/register`, signed by the proxy's
//! identity key), [`RotateRequest`] (`POST /api/v1/rotate`, signed by the old and the new key).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::control_plane::{Endpoint, EndpointTable, KeyReport};
use crate::trust::{Fingerprint, KeyCert, KeyError, PublicKey, Signature, Signed};

/// Signature domain of a [`Snapshot`].
pub const SNAPSHOT_DOMAIN: &str = "overlay/directory/snapshot/v1";
/// Signature domain of a [`Delta`].
pub const DELTA_DOMAIN: &str = "overlay/directory/delta/v1";
/// Signature domain of a [`RegisterClaim`].
pub const REGISTER_DOMAIN: &str = "overlay/register/v1";
/// Signature domain of a [`RotateClaim`], signed by both keys.
pub const ROTATE_DOMAIN: &str = "overlay/rotate/v1";
/// How far a signed claim's time may be from the controller's clock.
pub const CLAIM_SKEW_MS: u64 = 5 * 60 * 1000;

/// Where a user stands in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UserState {
    /// Joined with a token: its key is pinned.
    Active,
    /// In the controller's config, never joined: no key yet.
    Pending,
    /// Registered through the original's unsigned API: no key, not verified.
    Legacy,
    /// Its key was revoked: messages from it are refused everywhere.
    Revoked { at_ms: u64, reason: String },
}

impl UserState {
    pub fn as_str(&self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Pending => "pending",
            UserState::Legacy => "legacy",
            UserState::Revoked { .. } => "revoked",
        }
    }
}

/// One user as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// The user's name as spelled when it joined.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_id: Option<String>,
    /// The pinned identity key (none for pending and legacy users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PublicKey>,
    /// Where its proxy is reached (port 0: not known yet).
    pub host: String,
    pub port: u16,
    /// Its proxy speaks the native envelope.
    #[serde(default)]
    pub native: bool,
    /// Where its proxy takes other proxies over mutual TLS: when set, hops to it are made
    /// there and only there (never in plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsAddress>,
    /// The key other proxies seal message bodies to, for its proxy (absent: a proxy of a
    /// release before sealing, or not registered yet: nothing is sent to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<crate::trust::seal::SealPublic>,
    /// A relay is a member other proxies reach proxies through, not a user to talk to.
    #[serde(default, skip_serializing_if = "Role::is_user")]
    pub role: Role,
    /// The relay its proxy is reached through (it cannot be reached directly: behind NAT);
    /// none: at its own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(flatten)]
    pub state: UserState,
}

/// What a member of the directory is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A user's proxy.
    #[default]
    User,
    /// A relay for proxies behind NAT (`overlay relay`).
    Relay,
}

impl Role {
    pub fn is_user(&self) -> bool {
        *self == Role::User
    }
}

/// A proxy's TLS listener as others reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsAddress {
    pub host: String,
    pub port: u16,
}

/// Everyone: user key (lower-case name) → entry; and the AI endpoint names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pub users: BTreeMap<String, UserEntry>,
    pub ai: Vec<String>,
    /// The overlay CAs trusted now (their keys' fingerprints): one, or two during a rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cas: Vec<Fingerprint>,
}

impl Directory {
    /// The entry of `name` (any case).
    pub fn user(&self, name: &str) -> Option<&UserEntry> {
        self.users.get(&name.to_ascii_lowercase())
    }

    /// `name`'s key was revoked: why, when.
    pub fn revoked(&self, name: &str) -> Option<(u64, &str)> {
        match &self.user(name)?.state {
            UserState::Revoked { at_ms, reason } => Some((*at_ms, reason.as_str())),
            _ => None,
        }
    }

    /// The pinned key of the active user whose TLS name ([`crate::trust::x509::tls_name`]) is
    /// `tls_name`.
    pub fn active_key_named(&self, tls_name: &str) -> Option<PublicKey> {
        self.users.values().find_map(|u| match (&u.state, u.key) {
            (UserState::Active, Some(k)) if crate::trust::x509::tls_name(&u.name) == tls_name => {
                Some(k)
            }
            _ => None,
        })
    }

    /// The active user whose pinned key is `key`.
    pub fn active_user_with(&self, key: &PublicKey) -> Option<String> {
        self.users.values().find_map(|u| match (&u.state, &u.key) {
            (UserState::Active, Some(k)) if k == key => Some(u.name.clone()),
            _ => None,
        })
    }

    /// The user whose pinned key is `key`, active or revoked (not pending or legacy).
    pub fn pinned_user_with(&self, key: &PublicKey) -> Option<String> {
        self.users.values().find_map(|u| match (&u.state, &u.key) {
            (UserState::Active | UserState::Revoked { .. }, Some(k)) if k == key => {
                Some(u.name.clone())
            }
            _ => None,
        })
    }

    /// The CAs it trusts (`None`: it names none, any the root certified).
    pub fn trusted_cas(&self) -> Option<Vec<Fingerprint>> {
        (!self.cas.is_empty()).then(|| self.cas.clone())
    }

    /// What changed from `self` to `newer`, as the users part of a delta.
    pub fn changes_to(&self, newer: &Directory) -> BTreeMap<String, Option<UserEntry>> {
        let mut out = BTreeMap::new();
        for (k, v) in &newer.users {
            if self.users.get(k) != Some(v) {
                out.insert(k.clone(), Some(v.clone()));
            }
        }
        for k in self.users.keys() {
            if !newer.users.contains_key(k) {
                out.insert(k.clone(), None);
            }
        }
        out
    }
}

/// The entry-level difference between two tables (None: removed).
pub fn table_changes(
    old: &EndpointTable,
    new: &EndpointTable,
) -> BTreeMap<String, Option<Endpoint>> {
    let mut out = BTreeMap::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.insert(k.clone(), Some(v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), None);
        }
    }
    out
}

/// A whole view for one proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The user whose proxy this view is for (a view is never valid for another).
    pub for_user: String,
    pub version: u64,
    pub issued_at_ms: u64,
    /// Refused after this time (a replayed old document goes nowhere).
    pub expires_at_ms: u64,
    pub directory: Directory,
    /// That proxy's endpoint table: the directory's users and the AI endpoints, with its edits.
    pub table: EndpointTable,
}

/// The change from version `from` to version `to` of one proxy's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub for_user: String,
    pub from: u64,
    pub to: u64,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// User key → new entry, or None when it left the directory.
    #[serde(default)]
    pub users: BTreeMap<String, Option<UserEntry>>,
    /// The new AI endpoint names, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<Vec<String>>,
    /// The trusted CAs, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cas: Option<Vec<Fingerprint>>,
    /// Table entry → new endpoint, or None when it left the table.
    #[serde(default)]
    pub table: BTreeMap<String, Option<Endpoint>>,
}

impl Delta {
    /// Applies this delta to `view` (which must be at version `from`).
    pub fn apply_to(&self, view: &mut Snapshot) {
        for (k, v) in &self.users {
            match v {
                Some(e) => view.directory.users.insert(k.clone(), e.clone()),
                None => view.directory.users.remove(k),
            };
        }
        if let Some(ai) = &self.ai {
            view.directory.ai = ai.clone();
        }
        if let Some(cas) = &self.cas {
            view.directory.cas = cas.clone();
        }
        for (k, v) in &self.table {
            match v {
                Some(e) => view.table.insert(k.clone(), e.clone()),
                None => view.table.remove(k),
            };
        }
        view.version = self.to;
        view.issued_at_ms = self.issued_at_ms;
        view.expires_at_ms = self.expires_at_ms;
    }
}

/// A document signed by the controller's online key, with the root's certificate of that key:
/// the data of every `snapshot` and `delta` event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Certified<T> {
    pub cert: Signed<KeyCert>,
    pub doc: Signed<T>,
}

impl<T: Serialize + serde::de::DeserializeOwned> Certified<T> {
    /// The document, once the chain pinned root → online key → document holds.
    pub fn verify(&self, root: &Fingerprint, domain: &str, now_ms: u64) -> Result<T, KeyError> {
        let online = crate::trust::signed::check_chain(root, &self.cert, now_ms)?;
        self.doc.verify(domain, &online.key)
    }
}

/// `POST /api/v1/join`: a proxy redeems a join token for its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's id (the part before the dot); never its secret.
    pub token_id: String,
    /// `HMAC(verifier(secret), "overlay/join/v1" ‖ root fingerprint ‖ name ‖ key)`.
    pub proof: String,
    /// Signed by the key being pinned: proves the joiner holds it.
    pub claim: Signed<RegisterClaim>,
}

/// What a proxy says about itself, signed by its identity key (`POST /api/v1/register`, and
/// inside a join).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterClaim {
    pub proxy_id: String,
    pub instance_name: String,
    pub host: String,
    pub port: u16,
    pub protocol: String,
    /// The controller's root this claim is meant for.
    pub root: Fingerprint,
    /// Milliseconds since the epoch; refused beyond [`CLAIM_SKEW_MS`] from the controller's clock.
    pub time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<KeyReport>,
    /// Its TLS listener, for other proxies (absent: it takes them in plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsAddress>,
    /// The key other proxies seal message bodies to (a rotation registers the new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<crate::trust::seal::SealPublic>,
    /// A relay registers as one.
    #[serde(default, skip_serializing_if = "Role::is_user")]
    pub role: Role,
    /// The relay this proxy is reached through (it has no address others can reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// `reachable: auto`: reach it directly if the controller can, else through `via`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
}

/// `POST /api/v1/certificate` (a signed request, like a heartbeat, from a joined proxy): a
/// certificate for its pinned key. Answered with the chain, leaf first, as PEM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateRequest {
    pub instance_name: String,
    /// The DER of a PKCS#10 request, base64: only its key is used.
    pub csr: String,
}

/// The answer to a [`CertificateRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateAnswer {
    pub chain_pem: String,
}

/// `POST /api/v1/rotate`: a proxy replaces its key; signed by the old key and by the new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotateRequest {
    /// The claim's text, signed by both.
    pub claim: String,
    pub old_sig: Signature,
    pub new_sig: Signature,
}

/// What a rotation says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotateClaim {
    pub instance_name: String,
    pub old_key: PublicKey,
    pub new_key: PublicKey,
    pub root: Fingerprint,
    pub time_ms: u64,
}

/// `POST /api/v1/directory/ack`: the version a proxy applied (the dashboard shows who is behind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryAck {
    pub proxy_id: String,
    pub version: u64,
}

/// `event: online` of the directory stream: liveness is not trust, so it is not signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Online {
    pub names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, state: UserState) -> UserEntry {
        UserEntry {
            role: Default::default(),
            via: None,
            tls: None,
            seal: None,
            name: name.into(),
            proxy_id: None,
            key: None,
            host: "127.0.0.1".into(),
            port: 1,
            native: true,
            state,
        }
    }

    #[test]
    fn a_delta_made_from_two_views_turns_the_older_into_the_newer() {
        let mut old = Snapshot {
            for_user: "alice".into(),
            version: 1,
            issued_at_ms: 1,
            expires_at_ms: 2,
            directory: Directory::default(),
            table: EndpointTable::new(),
        };
        old.directory
            .users
            .insert("bob".into(), entry("bob", UserState::Active));
        old.directory
            .users
            .insert("carol".into(), entry("carol", UserState::Active));
        let mut new = old.clone();
        new.version = 5;
        new.directory.users.remove("carol");
        new.directory.users.insert(
            "bob".into(),
            entry(
                "bob",
                UserState::Revoked {
                    at_ms: 3,
                    reason: "lost laptop".into(),
                },
            ),
        );
        let delta = Delta {
            cas: None,
            for_user: "alice".into(),
            from: 1,
            to: 5,
            issued_at_ms: 4,
            expires_at_ms: 9,
            users: old.directory.changes_to(&new.directory),
            ai: None,
            table: table_changes(&old.table, &new.table),
        };
        let mut applied = old.clone();
        delta.apply_to(&mut applied);
        assert_eq!(applied.directory, new.directory);
        assert_eq!(applied.version, 5);
        assert_eq!(applied.directory.revoked("BOB"), Some((3, "lost laptop")));
    }

    #[test]
    fn the_state_is_flattened_into_the_entry() {
        let e = entry(
            "bob",
            UserState::Revoked {
                at_ms: 3,
                reason: "r".into(),
            },
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["state"], "revoked");
        assert_eq!(json["reason"], "r");
        let back: UserEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}

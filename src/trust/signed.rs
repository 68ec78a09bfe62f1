//! What they said: signed JSON documents, and the certificates a root key issues for other keys.
//!
//! Owns [`Signed`] (the exact JSON text that was signed, its signer and the signature; a
//! document is read only through [`Signed::verify`] against a key the caller already trusts)
//! and [`KeyCert`] with [`check_chain`], which accepts a certificate only when it was issued
//! by the pinned root fingerprint and has not expired.
//!
//! Must not: re-serialize a payload before checking it (the signed bytes are the bytes kept),
//! or trust the `signer` field of a document on its own say-so.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keys::{Fingerprint, Identity, KeyError, PublicKey, Signature};

/// The signature domain of key certificates.
pub const CERT_DOMAIN: &str = "overlay/cert/v1";

/// A value of type `T` as signed JSON: `{"payload":"<json of T>","signer":"ed25519:…","sig":"…"}`.
#[derive(Serialize, Deserialize)]
pub struct Signed<T> {
    /// The exact JSON text of the value that was signed.
    payload: String,
    /// Who signed, as claimed by the document (checked by [`Signed::verify`]).
    signer: PublicKey,
    /// The signature over `domain ‖ 0x00 ‖ payload`.
    sig: Signature,
    #[serde(skip)]
    kind: PhantomData<fn() -> T>,
}

impl<T> Signed<T> {
    /// The key the document claims signed it (not yet checked).
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    /// The signed JSON text, as signed.
    pub fn payload(&self) -> &str {
        &self.payload
    }
}

impl<T: Serialize> Signed<T> {
    /// Signs the JSON of `value` under `domain`.
    ///
    /// # Panics
    /// Only if `T`'s `Serialize` fails (a map with non-string keys, a failing custom impl); the
    /// types signed here are plain structs.
    pub fn sign(domain: &str, value: &T, by: &Identity) -> Signed<T> {
        match Signed::try_sign(domain, value, by) {
            Ok(signed) => signed,
            Err(e) => panic!("{e}"),
        }
    }

    /// Signs the JSON of `value` under `domain`, or says why `value` does not serialize.
    pub fn try_sign(domain: &str, value: &T, by: &Identity) -> Result<Signed<T>, KeyError> {
        let payload =
            serde_json::to_string(value).map_err(|e| KeyError::BadDocument(e.to_string()))?;
        let sig = by.sign(domain, payload.as_bytes());
        Ok(Signed {
            payload,
            signer: by.public(),
            sig,
            kind: PhantomData,
        })
    }
}

impl<T: DeserializeOwned> Signed<T> {
    /// The value, once the signer is `expected` and the signature holds under `domain`.
    /// Errors: another signer or a bad signature → [`KeyError::BadSignature`]; a payload that
    /// verifies but does not parse as `T` → [`KeyError::BadDocument`].
    pub fn verify(&self, domain: &str, expected: &PublicKey) -> Result<T, KeyError> {
        if self.signer != *expected {
            return Err(KeyError::BadSignature);
        }
        expected.verify(domain, self.payload.as_bytes(), &self.sig)?;
        self.peek()
    }

    /// The value WITHOUT checking anything: only for showing and diagnostics, never to act on.
    pub fn peek(&self) -> Result<T, KeyError> {
        serde_json::from_str(&self.payload).map_err(|e| KeyError::BadDocument(e.to_string()))
    }
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            payload: self.payload.clone(),
            signer: self.signer,
            sig: self.sig.clone(),
            kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.payload == other.payload && self.signer == other.signer && self.sig == other.sig
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("payload", &self.payload)
            .field("signer", &self.signer)
            .field("sig", &self.sig)
            .finish()
    }
}

/// What a root key certifies about another key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KeyCert {
    /// The certified key.
    pub key: PublicKey,
    /// What the key may act as, e.g. `controller-online`.
    pub role: String,
    /// Issue number, so a later certificate can supersede an earlier one.
    pub serial: u64,
    /// When it was issued, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// After this instant (ms since the Unix epoch) the certificate is void; `None`: no end.
    pub not_after_ms: Option<u64>,
}

impl KeyCert {
    /// `root` signs `self` under [`CERT_DOMAIN`].
    pub fn issue(&self, root: &Identity) -> Signed<KeyCert> {
        issue(root, self)
    }
}

/// `root` signs `cert` under [`CERT_DOMAIN`].
pub fn issue(root: &Identity, cert: &KeyCert) -> Signed<KeyCert> {
    Signed::sign(CERT_DOMAIN, cert, root)
}

/// The certificate, once it is signed by the key whose fingerprint is `root_fp` (the pinned
/// root), the signature holds under [`CERT_DOMAIN`] and it has not expired at `now_ms`.
/// Errors: another signer or expired → [`KeyError::Untrusted`]; bad signature →
/// [`KeyError::BadSignature`]; a payload that is not a `KeyCert` → [`KeyError::BadDocument`].
pub fn check_chain(
    root_fp: &Fingerprint,
    cert: &Signed<KeyCert>,
    now_ms: u64,
) -> Result<KeyCert, KeyError> {
    let signer_fp = cert.signer().fingerprint();
    if signer_fp != *root_fp {
        return Err(KeyError::Untrusted(format!(
            "certificate signed by {signer_fp}, which is not the pinned root {root_fp}"
        )));
    }
    let checked = cert.verify(CERT_DOMAIN, cert.signer())?;
    if let Some(not_after) = checked.not_after_ms {
        if now_ms > not_after {
            return Err(KeyError::Untrusted(format!(
                "certificate for {} (role {}, serial {}) from root {root_fp} expired at {not_after} ms, now is {now_ms} ms",
                checked.key.fingerprint(),
                checked.role,
                checked.serial
            )));
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Note {
        text: String,
        n: u32,
    }

    fn note() -> Note {
        Note {
            text: "hi".into(),
            n: 7,
        }
    }

    fn cert_for(key: PublicKey, not_after_ms: Option<u64>) -> KeyCert {
        KeyCert {
            key,
            role: "controller-online".into(),
            serial: 1,
            issued_at_ms: 1_000,
            not_after_ms,
        }
    }

    #[test]
    fn a_signed_document_round_trips_through_json_and_verifies() {
        let me = Identity::from_seed([1; 32]);
        let signed = Signed::sign("overlay/test/v1", &note(), &me);
        let json = serde_json::to_string(&signed).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["payload"], r#"{"text":"hi","n":7}"#);
        assert_eq!(value["signer"], me.public().to_string());
        assert!(value["sig"].is_string());
        let back: Signed<Note> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        assert_eq!(
            back.verify("overlay/test/v1", &me.public()).unwrap(),
            note()
        );
        assert_eq!(back.signer(), &me.public());
    }

    #[test]
    fn a_document_from_another_signer_or_domain_is_refused() {
        let me = Identity::from_seed([1; 32]);
        let other = Identity::from_seed([2; 32]);
        let signed = Signed::sign("overlay/test/v1", &note(), &me);
        assert!(matches!(
            signed.verify("overlay/test/v1", &other.public()),
            Err(KeyError::BadSignature)
        ));
        assert!(matches!(
            signed.verify("overlay/other/v1", &me.public()),
            Err(KeyError::BadSignature)
        ));
    }

    #[test]
    fn a_flipped_payload_byte_or_swapped_signer_is_refused() {
        let me = Identity::from_seed([1; 32]);
        let other = Identity::from_seed([2; 32]);
        let signed = Signed::sign("overlay/test/v1", &note(), &me);
        let mut tampered = signed.clone();
        tampered.payload = tampered.payload.replace("7", "8");
        assert!(matches!(
            tampered.verify("overlay/test/v1", &me.public()),
            Err(KeyError::BadSignature)
        ));
        // Claiming another signer does not help: the signature is not theirs.
        let mut swapped = signed.clone();
        swapped.signer = other.public();
        assert!(swapped.verify("overlay/test/v1", &other.public()).is_err());
    }

    #[test]
    fn a_verified_payload_of_the_wrong_shape_is_a_bad_document() {
        let me = Identity::from_seed([1; 32]);
        let signed: Signed<u32> = Signed::sign("overlay/test/v1", &5u32, &me);
        let json = serde_json::to_string(&signed).unwrap();
        let wrong: Signed<Note> = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            wrong.verify("overlay/test/v1", &me.public()),
            Err(KeyError::BadDocument(_))
        ));
        assert_eq!(signed.peek().unwrap(), 5);
    }

    #[test]
    fn a_cert_from_the_pinned_root_checks_out() {
        let root = Identity::from_seed([10; 32]);
        let online = Identity::from_seed([11; 32]);
        let cert = cert_for(online.public(), Some(5_000));
        let signed = cert.issue(&root);
        assert_eq!(
            check_chain(&root.fingerprint(), &signed, 4_999).unwrap(),
            cert
        );
        assert_eq!(
            check_chain(&root.fingerprint(), &signed, 5_000).unwrap(),
            cert
        );
        let forever = issue(&root, &cert_for(online.public(), None));
        assert!(check_chain(&root.fingerprint(), &forever, u64::MAX).is_ok());
    }

    #[test]
    fn a_cert_from_another_root_is_untrusted_and_names_both_fingerprints() {
        let root = Identity::from_seed([10; 32]);
        let rogue = Identity::from_seed([12; 32]);
        let signed = issue(
            &rogue,
            &cert_for(Identity::from_seed([11; 32]).public(), None),
        );
        let err = check_chain(&root.fingerprint(), &signed, 0).unwrap_err();
        assert!(matches!(err, KeyError::Untrusted(_)));
        let text = err.to_string();
        assert!(text.contains(root.fingerprint().as_str()), "{text}");
        assert!(text.contains(rogue.fingerprint().as_str()), "{text}");
    }

    #[test]
    fn an_expired_cert_is_untrusted() {
        let root = Identity::from_seed([10; 32]);
        let signed = issue(
            &root,
            &cert_for(Identity::from_seed([11; 32]).public(), Some(5_000)),
        );
        let err = check_chain(&root.fingerprint(), &signed, 5_001).unwrap_err();
        assert!(matches!(err, KeyError::Untrusted(_)));
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn a_cert_signed_under_another_domain_is_refused() {
        let root = Identity::from_seed([10; 32]);
        let cert = cert_for(Identity::from_seed([11; 32]).public(), None);
        let signed = Signed::sign("overlay/other/v1", &cert, &root);
        assert!(matches!(
            check_chain(&root.fingerprint(), &signed, 0),
            Err(KeyError::BadSignature)
        ));
    }
}

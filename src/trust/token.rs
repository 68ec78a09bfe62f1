//! How one joins: kubeadm-style join tokens `<id>.<secret>` and the verifier that stands for one.
//!
//! Owns the token format (6 + 20 characters of `[a-z0-9]`, drawn from the OS without modulo
//! bias), the [`TokenVerifier`] (SHA-256 of the secret under its own domain) the controller
//! stores instead of the secret, and the join proof: HMAC-SHA256 keyed with the verifier over
//! `"overlay/join/v1" ‖ 0 ‖ root fingerprint ‖ 0 ‖ name ‖ 0 ‖ public key`, so the proof binds
//! the joiner's name and key to the root it means to join, the secret never crosses the wire,
//! and the controller can check it with only the verifier.
//!
//! Must not: show a secret anywhere but [`JoinToken`]'s `Display` (printed once, to the user
//! who asked for the token), nor a verifier anywhere but its serde form (it is a proof key).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keys::{hex_decode, hex_lower, Fingerprint, PublicKey};

/// Characters of a token's id and secret.
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Length of a token's id.
const ID_LEN: usize = 6;
/// Length of a token's secret (36^20 ≈ 2^103).
const SECRET_LEN: usize = 20;
/// Domain of the verifier hash.
const VERIFIER_DOMAIN: &[u8] = b"overlay/join/v1/key";
/// Domain of the join proof.
const PROOF_DOMAIN: &[u8] = b"overlay/join/v1";
/// The expected form, for error messages (never the input itself).
const FORM: &str = "`<id>.<secret>`: 6 then 20 characters of a-z and 0-9, joined by a dot";

/// What can go wrong with a join token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The text is not a join token (the message never repeats the text).
    #[error("malformed join token: {0}; expected {FORM}")]
    Malformed(String),
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Entropy(String),
}

/// A join token: a public `id` and a `secret` the joiner proves it knows.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
}

impl JoinToken {
    /// A new random token.
    ///
    /// # Panics
    /// Only if the OS has no working random source; see [`JoinToken::try_generate`].
    pub fn generate() -> JoinToken {
        match JoinToken::try_generate() {
            Ok(token) => token,
            Err(e) => panic!("{e}"),
        }
    }

    /// A new random token, or why the OS random source failed.
    pub fn try_generate() -> Result<JoinToken, TokenError> {
        Ok(JoinToken {
            id: random_chars(ID_LEN)?,
            secret: random_chars(SECRET_LEN)?,
        })
    }

    /// Parses `<id>.<secret>` with exact lengths and charset.
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let (id, secret) = s
            .split_once('.')
            .ok_or_else(|| TokenError::Malformed("no `.` between id and secret".into()))?;
        if id.len() != ID_LEN || !in_alphabet(id) {
            return Err(TokenError::Malformed(
                "the id is not 6 characters of a-z0-9".into(),
            ));
        }
        if secret.len() != SECRET_LEN || !in_alphabet(secret) {
            return Err(TokenError::Malformed(
                "the secret is not 20 characters of a-z0-9".into(),
            ));
        }
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The public id, by which the controller finds the verifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the controller stores instead of the secret: SHA-256(`overlay/join/v1/key` ‖ 0 ‖ secret).
    pub fn verifier(&self) -> TokenVerifier {
        let mut hash = Sha256::new();
        hash.update(VERIFIER_DOMAIN);
        hash.update([0u8]);
        hash.update(self.secret.as_bytes());
        TokenVerifier(hash.finalize().into())
    }

    /// The join proof (lowercase hex) that `name` with `key` knows this token, for `root`.
    pub fn proof(&self, root: &Fingerprint, name: &str, key: &PublicKey) -> String {
        hex_lower(&self.verifier().mac(root, name, key))
    }
}

impl fmt::Display for JoinToken {
    /// `id.secret`: shows the secret, for printing the token once to the user who made it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.******)", self.id)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::parse(s)
    }
}

/// Whether every character of `s` is in [`ALPHABET`].
fn in_alphabet(s: &str) -> bool {
    s.bytes().all(|b| ALPHABET.contains(&b))
}

/// `n` random characters of `[a-z0-9]` (about 5.17 bits each): admin tokens and the like.
/// Panics only when the OS random source fails, as [`JoinToken::generate`] does.
pub fn random_text(n: usize) -> String {
    random_chars(n).expect("the operating system's random source failed")
}

/// `n` characters of [`ALPHABET`] from the OS, rejection-sampled: bytes ≥ 252 (= 7 × 36) are
/// dropped so every character is equally likely.
fn random_chars(n: usize) -> Result<String, TokenError> {
    const LIMIT: u8 = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 32];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| TokenError::Entropy(e.to_string()))?;
        for &b in buf.iter().filter(|&&b| b < LIMIT) {
            if out.len() == n {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

/// The stored stand-in for a token's secret; checks join proofs. Serde: 64 hex digits.
/// `Debug` is redacted: anyone holding it can make proofs.
#[derive(Clone)]
pub struct TokenVerifier([u8; 32]);

impl TokenVerifier {
    /// Whether `proof` is the join proof of this token for `root`, `name` and `key`;
    /// compared in constant time. A malformed proof is `false`.
    pub fn check(&self, root: &Fingerprint, name: &str, key: &PublicKey, proof: &str) -> bool {
        let Some(given) = hex_decode::<32>(proof) else {
            return false;
        };
        self.mac(root, name, key).ct_eq(&given).into()
    }

    /// HMAC-SHA256 keyed with the verifier over the proof message.
    fn mac(&self, root: &Fingerprint, name: &str, key: &PublicKey) -> [u8; 32] {
        // HMAC pads a key shorter than the block (64 bytes) with zeros, so this is the HMAC
        // keyed with the 32 verifier bytes, built without a fallible length check.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        for (i, part) in [
            PROOF_DOMAIN,
            root.as_str().as_bytes(),
            name.as_bytes(),
            key.to_string().as_bytes(),
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                mac.update(&[0u8]);
            }
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

impl PartialEq for TokenVerifier {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TokenVerifier {}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenVerifier(…)")
    }
}

impl Serialize for TokenVerifier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex_lower(&self.0))
    }
}

impl<'de> Deserialize<'de> for TokenVerifier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex_decode::<32>(&text)
            .map(TokenVerifier)
            .ok_or_else(|| serde::de::Error::custom("a token verifier is 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Identity;

    fn setup() -> (JoinToken, Fingerprint, PublicKey) {
        let token = JoinToken::parse("abc123.0123456789abcdefghij").unwrap();
        let root = Identity::from_seed([1; 32]).fingerprint();
        let key = Identity::from_seed([2; 32]).public();
        (token, root, key)
    }

    #[test]
    fn generated_tokens_have_the_documented_form_and_parse_back() {
        let token = JoinToken::generate();
        let text = token.to_string();
        assert_eq!(text.len(), ID_LEN + 1 + SECRET_LEN);
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert_eq!(token.id(), &text[..ID_LEN]);
        assert_ne!(JoinToken::generate(), token);
    }

    #[test]
    fn random_chars_use_the_whole_alphabet_and_nothing_else() {
        let sample = random_chars(4000).unwrap();
        assert!(in_alphabet(&sample));
        for c in ALPHABET {
            assert!(
                sample.as_bytes().contains(c),
                "{} never drawn",
                char::from(*c)
            );
        }
    }

    #[test]
    fn parse_refuses_wrong_forms_without_echoing_the_secret() {
        for bad in [
            "",
            "abc1230123456789abcdefghij",
            "abc12.0123456789abcdefghij",
            "abc123.0123456789abcdefghi",
            "abc123.0123456789abcdefghijk",
            "ABC123.0123456789abcdefghij",
            "abc123.0123456789ABCDEFGHIJ",
            "abc123.0123456789abcdefgh-j",
            "abc123.0123456789abcdefghij.x",
        ] {
            let err = JoinToken::parse(bad).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(text.contains("`<id>.<secret>`"), "{text}");
            assert!(!text.contains("0123456789"), "{text}");
        }
    }

    #[test]
    fn debug_shows_no_secret_and_no_verifier_bytes() {
        let (token, _, _) = setup();
        let shown = format!("{token:?}");
        assert_eq!(shown, "JoinToken(abc123.******)");
        let verifier = token.verifier();
        let shown = format!("{verifier:?}");
        assert!(!shown.contains(&hex_lower(&verifier.0)[..8]), "{shown}");
        assert!(!shown.contains("0123456789abcdefghij"));
    }

    #[test]
    fn the_verifier_is_the_domain_separated_hash_of_the_secret() {
        let (token, _, _) = setup();
        let expected: [u8; 32] =
            Sha256::digest(b"overlay/join/v1/key\x000123456789abcdefghij").into();
        assert_eq!(token.verifier().0, expected);
        let json = serde_json::to_string(&token.verifier()).unwrap();
        assert_eq!(json, format!("\"{}\"", hex_lower(&expected)));
        assert_eq!(
            serde_json::from_str::<TokenVerifier>(&json).unwrap(),
            token.verifier()
        );
        assert!(serde_json::from_str::<TokenVerifier>("\"abcd\"").is_err());
    }

    #[test]
    fn a_proof_checks_against_the_stored_verifier() {
        let (token, root, key) = setup();
        let proof = token.proof(&root, "alice", &key);
        assert_eq!(proof.len(), 64);
        let stored: TokenVerifier =
            serde_json::from_str(&serde_json::to_string(&token.verifier()).unwrap()).unwrap();
        assert!(stored.check(&root, "alice", &key, &proof));
        assert!(stored.check(&root, "alice", &key, &proof.to_ascii_uppercase()));
    }

    #[test]
    fn the_proof_is_the_hmac_keyed_with_the_verifier_over_the_documented_message() {
        let (token, root, key) = setup();
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&token.verifier().0).unwrap();
        mac.update(format!("overlay/join/v1\0{root}\0alice\0{key}").as_bytes());
        let expected = hex_lower(&mac.finalize().into_bytes());
        assert_eq!(token.proof(&root, "alice", &key), expected);
    }

    #[test]
    fn a_proof_for_another_name_key_root_or_token_fails() {
        let (token, root, key) = setup();
        let proof = token.proof(&root, "alice", &key);
        let verifier = token.verifier();
        let other_key = Identity::from_seed([3; 32]).public();
        let other_root = Identity::from_seed([4; 32]).fingerprint();
        assert!(!verifier.check(&root, "bob", &key, &proof));
        assert!(!verifier.check(&root, "alice", &other_key, &proof));
        assert!(!verifier.check(&other_root, "alice", &key, &proof));
        let other_token = JoinToken::parse("abc123.0123456789abcdefghik").unwrap();
        assert!(!other_token.verifier().check(&root, "alice", &key, &proof));
    }

    #[test]
    fn a_tampered_or_malformed_proof_fails() {
        let (token, root, key) = setup();
        let proof = token.proof(&root, "alice", &key);
        let verifier = token.verifier();
        let flipped = if proof.starts_with('0') { "1" } else { "0" };
        let tampered = format!("{flipped}{}", &proof[1..]);
        assert!(!verifier.check(&root, "alice", &key, &tampered));
        assert!(!verifier.check(&root, "alice", &key, &proof[..62]));
        assert!(!verifier.check(&root, "alice", &key, ""));
        assert!(!verifier.check(&root, "alice", &key, &format!("{}zz", &proof[..62])));
    }
}

//! The root of trust: who is who (keys), what they said (signatures), how one joins (tokens).
//!
//! Pure building blocks, no actors and no HTTP: [`keys`] (identity keys, public keys,
//! fingerprints, signatures, key files), [`signed`] (signed JSON documents and key
//! certificates checked against a pinned root), [`token`] (join tokens and the verifier the
//! controller stores instead of the secret), [`limiter`] (a token bucket per source address)
//! and [`seal`] (sealing keys, and HPKE sealing of message bodies between proxies).
//!
//! Must not: log or render a private key or a token secret.

pub mod keys;
pub mod limiter;
pub mod private_file;
pub mod request;
pub mod seal;
pub mod signed;
pub mod tls;
pub mod token;
pub mod x509;

pub use keys::{verify_all, Check, Fingerprint, Identity, KeyError, PublicKey, Signature};
pub use limiter::RateLimiter;
pub use signed::{check_chain, issue, KeyCert, Signed, CERT_DOMAIN};
pub use token::{JoinToken, TokenError, TokenVerifier};

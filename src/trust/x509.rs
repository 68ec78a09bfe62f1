//! The overlay's certificates: the root's own certificate, the overlay CA it certifies, the
//! short-lived leaves that CA issues, and how a chain presented in a TLS handshake is checked.
//!
//! The chain is root → CA → leaf, all ed25519:
//! - the **root certificate** is self-signed by the root key (the one whose fingerprint proxies
//!   pin), CA with path length 1. Anyone can rebuild it; it is public.
//! - the **overlay CA** (`controller-ca.key`) is certified by the root: CA with path length 0,
//!   name-constrained to `.overlay`. It issues leaves only.
//! - a **leaf** names one member: `<user>.proxy.overlay` ([`tls_name`]) or `controller.overlay`,
//!   with `CA:false`, digital signature, server and client auth, valid for at most 72 h and
//!   backdated five minutes (clocks differ). A proxy's leaf key is its identity key: the CA takes
//!   only the public key from a CSR, requires it to be the key pinned to that user, and sets the
//!   name, usages and validity itself ([`Ca::issue_for_csr`]).
//!
//! Every handshake carries the whole chain (leaf, CA, root), so a verifier needs nothing but the
//! pinned root fingerprint to find its anchor ([`check_chain`]); the signed directory then says
//! which CAs are still trusted (two during a rotation).
//!
//! Must not: issue a leaf for a key other than the pinned one, or for a name the request chose.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, PKCS_ED25519,
};
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use sha2::{Digest, Sha256};

use super::keys::{Fingerprint, Identity, PublicKey};

/// The DNS suffix of proxies' names in their certificates.
pub const PROXY_SUFFIX: &str = "proxy.overlay";
/// The controller's name in its certificate.
pub const CONTROLLER_TLS_NAME: &str = "controller.overlay";
/// The longest a leaf may live.
pub const MAX_LEAF_MS: u64 = 72 * 3600 * 1000;
/// A leaf's lifetime unless the config says otherwise.
pub const DEFAULT_LEAF_MS: u64 = 24 * 3600 * 1000;
/// How far a leaf's notBefore is set back, for clocks that differ.
pub const BACKDATE_MS: u64 = 5 * 60 * 1000;
/// How long the overlay CA's certificate lives (rotate before; see README).
pub const CA_LIFETIME_MS: u64 = 5 * 365 * 24 * 3600 * 1000;
/// How long the root's certificate lives.
const ROOT_LIFETIME_MS: u64 = 30 * 365 * 24 * 3600 * 1000;

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// What went wrong with a certificate.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    /// A certificate or chain that does not pass (the reason says which check).
    #[error("{0}")]
    Refused(String),
    /// Making a certificate failed (a bug or a broken key).
    #[error("making a certificate: {0}")]
    Make(String),
}

fn refused(why: impl Into<String>) -> X509Error {
    X509Error::Refused(why.into())
}

fn make(e: impl std::fmt::Display) -> X509Error {
    X509Error::Make(e.to_string())
}

/// The name a user's proxy has in its certificate: `<user>.proxy.overlay`, lower case. A user
/// name that is not a valid DNS label sequence (an underscore, a label over 63 characters, a
/// hyphen at a label's end) is named by a hash instead: `u-<32 hex>.proxy.overlay`.
pub fn tls_name(user: &str) -> String {
    let lower = user.to_ascii_lowercase();
    let ldh = !lower.is_empty()
        && lower.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ldh && !lower.starts_with("u-") {
        return format!("{lower}.{PROXY_SUFFIX}");
    }
    let digest = Sha256::digest(lower.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("u-{hex}.{PROXY_SUFFIX}")
}

/// The key of an identity as the certificate builder takes it.
fn key_pair(identity: &Identity) -> Result<KeyPair, X509Error> {
    let der = PrivatePkcs8KeyDer::from(identity.pkcs8_der());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519).map_err(make)
}

/// A bare ed25519 public key, to certify without its private half.
struct Ed25519Public<'a>(&'a PublicKey);

impl PublicKeyData for Ed25519Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// The ed25519 key a certificate is for.
pub fn key_of(cert: &CertificateDer<'_>) -> Result<PublicKey, X509Error> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| refused(format!("not a certificate: {e}")))?;
    let spki = ee.subject_public_key_info();
    let bytes: &[u8] = spki.as_ref();
    let raw = bytes
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .filter(|raw| raw.len() == 32)
        .ok_or_else(|| refused("the certificate's key is not an ed25519 key"))?;
    let mut key = [0u8; 32];
    key.copy_from_slice(raw);
    PublicKey::from_bytes(&key).map_err(|e| refused(format!("the certificate's key: {e}")))
}

/// When a certificate starts and stops being valid, in ms since the epoch.
pub fn validity_ms(cert: &CertificateDer<'_>) -> Result<(u64, u64), X509Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| refused(format!("not a certificate: {e}")))?;
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    Ok((
        ms(parsed.validity().not_before),
        ms(parsed.validity().not_after),
    ))
}

fn at(ms: u64) -> Result<time::OffsetDateTime, X509Error> {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).map_err(make)
}

fn random_serial() -> Result<SerialNumber, X509Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(make)?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "overlay");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The root certificate's fields: the same for the same root key, so the CA's issuer name
/// matches whenever it is rebuilt.
fn root_params(root: &Fingerprint, now_ms: u64) -> Result<CertificateParams, X509Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = named(&format!("overlay root {}", root.short()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = at(now_ms.saturating_sub(BACKDATE_MS))?;
    params.not_after = at(now_ms + ROOT_LIFETIME_MS)?;
    Ok(params)
}

/// The root's own certificate, self-signed by the root key.
pub fn root_cert(root: &Identity, now_ms: u64) -> Result<CertificateDer<'static>, X509Error> {
    let mut params = root_params(&root.fingerprint(), now_ms)?;
    params.serial_number = Some(random_serial()?);
    let key = key_pair(root)?;
    Ok(params.self_signed(&key).map_err(make)?.der().clone())
}

/// A certificate for the overlay CA's key `ca`, issued by the root: CA, path length 0,
/// permitted to name only `*.overlay`.
pub fn ca_cert(
    root: &Identity,
    ca: &PublicKey,
    now_ms: u64,
) -> Result<CertificateDer<'static>, X509Error> {
    let issuer = Issuer::new(root_params(&root.fingerprint(), now_ms)?, key_pair(root)?);
    let mut params = CertificateParams::default();
    params.distinguished_name = named(&format!("overlay CA {}", ca.fingerprint().short()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName("overlay".into())],
        excluded_subtrees: vec![],
    });
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = at(now_ms.saturating_sub(BACKDATE_MS))?;
    params.not_after = at(now_ms + CA_LIFETIME_MS)?;
    Ok(params
        .signed_by(&Ed25519Public(ca), &issuer)
        .map_err(make)?
        .der()
        .clone())
}

/// A certificate signing request for `identity`'s key (its content beyond the key is ignored
/// by the CA).
pub fn csr(identity: &Identity, user: &str) -> Result<Vec<u8>, X509Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = named(&tls_name(user));
    let key = key_pair(identity)?;
    Ok(params.serialize_request(&key).map_err(make)?.der().to_vec())
}

/// The overlay CA: its key and certificate, and the root's certificate (sent along in chains).
pub struct Ca {
    key: KeyPair,
    cert: CertificateDer<'static>,
    root: CertificateDer<'static>,
    public: PublicKey,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.public.fingerprint())
    }
}

impl Ca {
    /// The CA of `key`, certified by `cert` (which must be for that key), under `root`.
    pub fn new(
        key: &Identity,
        cert: CertificateDer<'static>,
        root: CertificateDer<'static>,
    ) -> Result<Ca, X509Error> {
        if key_of(&cert)? != key.public() {
            return Err(refused(
                "the CA certificate is not for the CA key beside it",
            ));
        }
        Ok(Ca {
            key: key_pair(key)?,
            cert,
            root,
            public: key.public(),
        })
    }

    /// The CA's key fingerprint (how the directory names trusted CAs).
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint()
    }

    /// The CA's certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A leaf for `user`'s proxy from its CSR: the CSR must be signed by (and for) the key
    /// pinned to `user`; everything else in it (names, usages, CA flags, dates) is ignored.
    /// The chain comes back leaf first, then the CA and the root.
    pub fn issue_for_csr(
        &self,
        csr_der: &[u8],
        user: &str,
        pinned: &PublicKey,
        now_ms: u64,
        lifetime_ms: u64,
    ) -> Result<Vec<CertificateDer<'static>>, X509Error> {
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| refused(format!("the certificate request does not verify: {e}")))?;
        let raw = request.public_key.der_bytes();
        if request.public_key.algorithm() != &PKCS_ED25519 || raw != pinned.as_bytes() {
            return Err(refused(format!(
                "the certificate request is not for the key pinned to {user} ({})",
                pinned.fingerprint()
            )));
        }
        self.issue(pinned, &tls_name(user), now_ms, lifetime_ms)
    }

    /// A leaf for `key` named `dns`, valid from five minutes before `now_ms` for `lifetime_ms`
    /// (at most [`MAX_LEAF_MS`]).
    pub fn issue(
        &self,
        key: &PublicKey,
        dns: &str,
        now_ms: u64,
        lifetime_ms: u64,
    ) -> Result<Vec<CertificateDer<'static>>, X509Error> {
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key).map_err(make)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(dns);
        params.subject_alt_names = vec![SanType::DnsName(dns.try_into().map_err(make)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = at(now_ms.saturating_sub(BACKDATE_MS))?;
        params.not_after = at(now_ms + lifetime_ms.min(MAX_LEAF_MS))?;
        let leaf = params
            .signed_by(&Ed25519Public(key), &issuer)
            .map_err(make)?;
        Ok(vec![
            leaf.der().clone(),
            self.cert.clone(),
            self.root.clone(),
        ])
    }
}

/// Which end of a handshake a chain was presented by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// What a chain must lead to: the pinned root, and (once a directory says) which CAs under it
/// are trusted now.
#[derive(Debug, Clone)]
pub struct Trusted<'a> {
    pub root: &'a Fingerprint,
    /// `None`: any CA the root certified (before the first directory, at join).
    pub cas: Option<&'a [Fingerprint]>,
}

/// Checks a presented chain (leaf first): it leads through exactly one CA the root certified
/// (and the directory still trusts) to the pinned root, every certificate is valid at `now`,
/// the leaf is not a CA and may be used by a `usage` end. Answers the leaf's key. The name is
/// checked apart ([`check_name`]).
pub fn check_chain(
    chain: &[CertificateDer<'_>],
    usage: Usage,
    trusted: &Trusted<'_>,
    now: UnixTime,
) -> Result<PublicKey, X509Error> {
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| refused("no certificate presented"))?;
    let is_root = |c: &CertificateDer<'_>| {
        key_of(c)
            .map(|k| k.fingerprint() == *trusted.root)
            .unwrap_or(false)
    };
    let root = rest.iter().find(|c| is_root(c)).ok_or_else(|| {
        refused(format!(
            "the chain does not lead to the pinned root {}",
            trusted.root
        ))
    })?;
    let anchor = webpki::anchor_from_trusted_cert(root)
        .map_err(|e| refused(format!("the root certificate: {e}")))?;
    let intermediates: Vec<CertificateDer<'_>> =
        rest.iter().filter(|c| !is_root(c)).cloned().collect();
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| refused(format!("not a certificate: {e}")))?;
    let purpose = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    let anchors = [anchor];
    let path = ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            now,
            purpose,
            None,
            None,
        )
        .map_err(|e| refused(format!("the certificate chain does not verify: {e:?}")))?;
    let cas: Vec<&webpki::Cert<'_>> = path.intermediate_certificates().collect();
    let [ca] = cas.as_slice() else {
        return Err(refused(format!(
            "the chain has {} certificates between the leaf and the root, not the one CA",
            cas.len()
        )));
    };
    if let Some(list) = trusted.cas {
        let ca_fp = key_of(&ca.der())?.fingerprint();
        if !list.contains(&ca_fp) {
            return Err(refused(format!(
                "issued by CA {ca_fp}, which the signed directory no longer trusts"
            )));
        }
    }
    key_of(leaf)
}

/// Checks that `leaf` names `name` (a DNS name in its subject alternative names).
pub fn check_name(leaf: &CertificateDer<'_>, name: &str) -> Result<(), X509Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| refused(format!("not a certificate: {e}")))?;
    let wanted = ServerName::try_from(name)
        .map_err(|e| refused(format!("{name} is not a DNS name: {e}")))?;
    ee.verify_is_valid_for_subject_name(&wanted)
        .map_err(|_| refused(format!("the certificate does not name {name}")))
}

/// Certificates as PEM text, in order.
pub fn to_pem(chain: &[CertificateDer<'_>]) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let mut out = String::new();
    for cert in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// The certificates of PEM text, in order.
pub fn from_pem(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, X509Error> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(refused("no certificate in the PEM text"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;

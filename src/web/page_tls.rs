//! HTTPS for pages beyond loopback: a chat page or the dashboard listening on any address but
//! loopback is served over TLS, with the certificate the user gives (`server.page_tls`) or one
//! from this data dir's **page CA** (`pages-ca.crt`, ECDSA P-256 as browsers take it,
//! name-constrained to the names and addresses it was made for: never the overlay's CA, which
//! names members only). A page on loopback stays plain HTTP, so the demo opens without a
//! warning; `server.pages_plain_http: true` keeps any page plain, with a warning at each start.
//!
//! The page CA's certificate is what a browser imports once to trust this machine's pages (the
//! log says where it is); its key (`pages-ca.key`, 0600) stays here. It is made again, under a
//! new key, when the names it must cover change. Each start issues the listener a fresh leaf.
//!
//! Must not: use the overlay CA for pages, or send a page's cookies over plain HTTP beyond
//! loopback.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::PageTlsConfig;
use crate::trust::x509;

/// The page CA's certificate (public: import it in the browsers that open these pages).
pub const PAGE_CA_CERT_FILE: &str = "pages-ca.crt";
/// The page CA's key.
pub const PAGE_CA_KEY_FILE: &str = "pages-ca.key";
/// A page leaf's lifetime (re-issued at every start).
const LEAF_DAYS: i64 = 397;
const CA_YEARS: i64 = 10;

/// How a page listener serves: plain HTTP, or HTTPS with this config.
pub enum PageServing {
    Plain,
    Https(Arc<rustls::ServerConfig>),
}

/// The HTTPS config of a page listener on `listen`, named `names` (its advertised host, the
/// allowed hosts), per `server`'s settings; [`PageServing::Plain`] on loopback or when the
/// config says so. Errors name the file and the fix.
pub fn for_listener(
    label: &str,
    listen: SocketAddr,
    names: &[String],
    page_tls: Option<&PageTlsConfig>,
    pages_plain_http: bool,
    data_dir: &Path,
) -> anyhow::Result<PageServing> {
    if listen.ip().is_loopback() {
        return Ok(PageServing::Plain);
    }
    if pages_plain_http {
        log::warn!(
            "{label}: serving its pages in plain HTTP beyond loopback (server.pages_plain_http): \
             logins and messages cross the network readable"
        );
        return Ok(PageServing::Plain);
    }
    let config = match page_tls {
        Some(given) => given_certificate(given)?,
        None => page_ca_certificate(label, listen, names, data_dir)?,
    };
    Ok(PageServing::Https(Arc::new(config)))
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificate and key files the user gave (PEM).
fn given_certificate(given: &PageTlsConfig) -> anyhow::Result<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&given.cert_file)
        .and_then(|it| it.collect())
        .map_err(|e| {
            anyhow::anyhow!(
                "server.page_tls.cert_file {}: {e}; give a PEM file with the certificate first, \
                 then its chain",
                given.cert_file.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "server.page_tls.cert_file {}: no certificate in it; give a PEM certificate file",
            given.cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&given.key_file).map_err(|e| {
        anyhow::anyhow!(
            "server.page_tls.key_file {}: {e}; give the certificate's private key as PEM",
            given.key_file.display()
        )
    })?;
    server_config(chain, key).map_err(|e| {
        anyhow::anyhow!(
            "server.page_tls: {} and {} do not make a usable certificate: {e}",
            given.cert_file.display(),
            given.key_file.display()
        )
    })
}

/// Every name a page leaf carries: the given names, the listener's address, and this
/// machine's loopback names (for a browser on the same machine).
fn leaf_names(listen: SocketAddr, names: &[String]) -> Vec<String> {
    let mut all: Vec<String> = names
        .iter()
        .map(|n| crate::wire::host_port::HostPort::host_of(n))
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if !listen.ip().is_unspecified() {
        all.push(listen.ip().to_string());
    }
    all.extend(["localhost", "127.0.0.1", "::1"].map(str::to_string));
    all.sort();
    all.dedup();
    all
}

fn subtree(name: &str) -> GeneralSubtree {
    match name.parse::<IpAddr>() {
        Ok(ip) => GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
            ip,
            if ip.is_ipv4() { 32 } else { 128 },
        )),
        Err(_) => GeneralSubtree::DnsName(name.to_string()),
    }
}

fn san(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

/// The page CA of `data_dir` when it covers `names`, else a new one (logged).
fn page_ca(
    data_dir: &Path,
    names: &[String],
) -> anyhow::Result<(KeyPair, CertificateDer<'static>)> {
    let cert_path = data_dir.join(PAGE_CA_CERT_FILE);
    let key_path = data_dir.join(PAGE_CA_KEY_FILE);
    if let (Ok(cert), Ok(key)) = (
        std::fs::read(&cert_path),
        crate::trust::private_file::read(&key_path, 64 * 1024),
    ) {
        let cert = x509::from_pem(&cert)
            .ok()
            .and_then(|c| c.into_iter().next());
        let key = std::str::from_utf8(&key)
            .ok()
            .and_then(|k| KeyPair::from_pem(k).ok());
        if let (Some(cert), Some(key)) = (cert, key) {
            if covers(&cert, names) {
                return Ok((key, cert));
            }
            log::warn!(
                "{} does not cover {} : making a new page CA (browsers import it again)",
                cert_path.display(),
                names.join(", ")
            );
        }
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "overlay");
    params
        .distinguished_name
        .push(DnType::CommonName, "overlay pages CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: names.iter().map(|n| subtree(n)).collect(),
        excluded_subtrees: vec![],
    });
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365 * CA_YEARS);
    let cert = params.self_signed(&key)?.der().clone();
    replace_key(&key_path, &key)?;
    crate::trust::private_file::replace(
        &cert_path,
        x509::to_pem(std::slice::from_ref(&cert)).as_bytes(),
        0o644,
    )?;
    log::warn!(
        "made a page CA for {}: import {} in the browsers that open these pages (once) to \
         open them without a warning",
        names.join(", "),
        cert_path.display()
    );
    Ok((key, cert))
}

fn replace_key(path: &Path, key: &KeyPair) -> anyhow::Result<()> {
    crate::trust::private_file::replace(path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(())
}

/// Whether the page CA `cert` may name every one of `names` (its name constraints list them).
fn covers(cert: &CertificateDer<'_>, names: &[String]) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(nc)) = parsed.name_constraints() else {
        return false;
    };
    let permitted: Vec<String> = nc
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|s| match &s.base {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                8 => IpAddr::from([b[0], b[1], b[2], b[3]]).to_string(),
                32 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&b[..16]);
                    IpAddr::from(a).to_string()
                }
                _ => String::new(),
            },
            _ => String::new(),
        })
        .collect();
    names.iter().all(|n| permitted.contains(n))
}

/// A leaf from the page CA for the listener's names, issued now.
fn page_ca_certificate(
    label: &str,
    listen: SocketAddr,
    names: &[String],
    data_dir: &Path,
) -> anyhow::Result<rustls::ServerConfig> {
    let names = leaf_names(listen, names);
    let (ca_key, ca_cert) = page_ca(data_dir, &names)?;
    let issuer = Issuer::from_ca_cert_der(&ca_cert, &ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(LEAF_DAYS);
    let leaf = params.signed_by(&key, &issuer)?.der().clone();
    log::info!(
        "{label}: pages over HTTPS with a certificate from {} for {}",
        data_dir.join(PAGE_CA_CERT_FILE).display(),
        names.join(", ")
    );
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(server_config(vec![leaf, ca_cert], key)?)
}

/// A client's TLS for this machine's pages (a proxy handing over to its own peer, the admin
/// command line): the system's roots and this data dir's page CA, if it has one.
pub fn client(data_dir: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = crate::trust::tls::system_roots();
    if let Ok(pem) = std::fs::read(data_dir.join(PAGE_CA_CERT_FILE)) {
        if let Ok(certs) = x509::from_pem(&pem) {
            roots.add_parsable_certificates(certs);
        }
    }
    let mut config = crate::trust::tls::client_with_roots(roots);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beyond() -> SocketAddr {
        "0.0.0.0:5001".parse().unwrap()
    }

    #[test]
    fn loopback_stays_plain_and_beyond_it_a_page_ca_names_only_what_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["chat.example.org:5001".to_string()];
        let local = for_listener(
            "t",
            "127.0.0.1:5001".parse().unwrap(),
            &names,
            None,
            false,
            dir.path(),
        );
        assert!(matches!(local.unwrap(), PageServing::Plain));
        assert!(!dir.path().join(PAGE_CA_CERT_FILE).exists());
        let plain = for_listener("t", beyond(), &names, None, true, dir.path()).unwrap();
        assert!(matches!(plain, PageServing::Plain), "the config says so");
        let https = for_listener("t", beyond(), &names, None, false, dir.path()).unwrap();
        assert!(matches!(https, PageServing::Https(_)));
        let ca = x509::from_pem(&std::fs::read(dir.path().join(PAGE_CA_CERT_FILE)).unwrap())
            .unwrap()
            .remove(0);
        let wanted = leaf_names(beyond(), &names);
        assert!(wanted.contains(&"chat.example.org".to_string()));
        assert!(covers(&ca, &wanted));
        assert!(
            !covers(&ca, &["bank.example.com".to_string()]),
            "name-constrained"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(PAGE_CA_KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // The same names: the same CA (browsers import it once); new names: a new one.
        let before = std::fs::read(dir.path().join(PAGE_CA_CERT_FILE)).unwrap();
        for_listener("t", beyond(), &names, None, false, dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(PAGE_CA_CERT_FILE)).unwrap(),
            before
        );
        let more = vec!["other.example.org".to_string()];
        for_listener("t", beyond(), &more, None, false, dir.path()).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join(PAGE_CA_CERT_FILE)).unwrap(),
            before
        );
    }

    #[test]
    fn a_given_certificate_is_served_and_a_bad_one_named_with_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec!["chat.example.org".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let given = PageTlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        let served = for_listener("t", beyond(), &[], Some(&given), false, dir.path()).unwrap();
        assert!(matches!(served, PageServing::Https(_)));
        assert!(
            !dir.path().join(PAGE_CA_CERT_FILE).exists(),
            "no page CA made"
        );
        let missing = PageTlsConfig {
            cert_file: dir.path().join("nowhere.pem"),
            key_file,
        };
        let e = for_listener("t", beyond(), &[], Some(&missing), false, dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("server.page_tls.cert_file") && e.contains("nowhere.pem"),
            "{e}"
        );
    }
}

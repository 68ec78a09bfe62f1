//! rustls for the hops between overlay members (proxy ↔ proxy, proxy ↔ controller), and the
//! system's roots for everything else (AI providers). The two are never merged.
//!
//! Owns [`Leaf`] (this member's current certificate and key, swapped in place when renewed, served
//! to both ends of a handshake), [`Pins`] (what the signed directory says: each active user's
//! key, the CAs trusted now), [`OverlayVerifier`] (both directions, see below),
//! [`server_config`] / [`client_config`] (TLS 1.3 only) and [`system_client`].
//!
//! A server's certificate must chain to the pinned root through a trusted CA, name the member
//! *this request* is for (the TLS server name the caller connects with: `bob.proxy.overlay`,
//! `controller.overlay`) and, for a proxy, carry the key the directory pins to that user now. A
//! client's certificate must chain the same way, and its key must be the pinned key of an active
//! user whose name it carries; which user that must be for a given request is the handler's
//! check (the origin of the request's signature, see [`PeerKey`]).
//!
//! Must not: trust the system's roots for an overlay hop, or the overlay's for anything else.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use super::keys::{Fingerprint, Identity, PublicKey};
use super::x509::{self, Trusted, Usage, X509Error, CONTROLLER_TLS_NAME};

/// The ALPN this overlay speaks: HTTP/1.1 (awc's pool keeps connections alive).
const ALPN: &[u8] = b"http/1.1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// This member's certificate chain and key; empty until the CA issued one.
#[derive(Default)]
pub struct Leaf {
    current: RwLock<Option<(Arc<CertifiedKey>, u64, u64)>>,
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Leaf(valid: {:?})", self.validity())
    }
}

impl Leaf {
    pub fn new() -> Arc<Leaf> {
        Arc::new(Leaf::default())
    }

    /// Serves `chain` (leaf first) with `identity`'s key from now on. Refused when the leaf is
    /// not for that key.
    pub fn set(
        &self,
        identity: &Identity,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<(), X509Error> {
        let leaf = chain
            .first()
            .ok_or_else(|| X509Error::Refused("an empty certificate chain".into()))?;
        if x509::key_of(leaf)? != identity.public() {
            return Err(X509Error::Refused(
                "the certificate is not for this member's key".into(),
            ));
        }
        let validity = x509::validity_ms(leaf)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.pkcs8_der()));
        let key = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| X509Error::Make(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain, key));
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        *slot = Some((certified, validity.0, validity.1));
        Ok(())
    }

    /// notBefore and notAfter of the certificate served now (ms since the epoch).
    pub fn validity(&self) -> Option<(u64, u64)> {
        let slot = self.current.read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|(_, from, to)| (*from, *to))
    }

    /// The certificate to present, unless it has expired: an expired one would only fail the
    /// handshake, where none is still welcome (to renew it).
    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let slot = self.current.read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|(_, _, not_after)| now <= *not_after)
            .map(|(c, _, _)| c.clone())
    }
}

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }
}

impl ResolvesClientCert for Leaf {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }

    fn has_certs(&self) -> bool {
        self.certified().is_some()
    }
}

/// What the signed directory says now, as a verifier needs it (read on the handshake's thread).
pub trait Pins: Send + Sync + fmt::Debug {
    /// The pinned key of the active (joined, not revoked) user whose TLS name is `tls_name`.
    fn key_of(&self, tls_name: &str) -> Option<PublicKey>;
    /// The active user whose pinned key is `key`.
    fn user_of(&self, key: &PublicKey) -> Option<String>;
    /// The CAs trusted now; `None` before any directory (any CA the root certified).
    fn cas(&self) -> Option<Vec<Fingerprint>>;
}

/// Checks overlay certificates against the pinned root and the directory's pins.
#[derive(Debug)]
pub struct OverlayVerifier {
    root: Fingerprint,
    pins: Arc<dyn Pins>,
    /// A client without a certificate is refused at the handshake (a proxy's listener); else
    /// the routes decide (the controller's: join and renew take one without).
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

fn refusal(e: X509Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl OverlayVerifier {
    pub fn new(root: Fingerprint, pins: Arc<dyn Pins>, mandatory: bool) -> Arc<OverlayVerifier> {
        Arc::new(OverlayVerifier {
            root,
            pins,
            mandatory,
            algs: algorithms(),
        })
    }

    fn chain<'a>(
        end_entity: &CertificateDer<'a>,
        intermediates: &[CertificateDer<'a>],
    ) -> Vec<CertificateDer<'a>> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        chain
    }

    /// The server check, apart from the handshake signature: `name` is who this connection is for.
    pub fn check_server(
        &self,
        chain: &[CertificateDer<'_>],
        name: &str,
        now: UnixTime,
    ) -> Result<PublicKey, X509Error> {
        let cas = self.pins.cas();
        let trusted = Trusted {
            root: &self.root,
            cas: cas.as_deref(),
        };
        let key = x509::check_chain(chain, Usage::Server, &trusted, now)?;
        x509::check_name(&chain[0], name)?;
        if name != CONTROLLER_TLS_NAME {
            match self.pins.key_of(name) {
                Some(pinned) if pinned == key => {}
                Some(pinned) => {
                    return Err(X509Error::Refused(format!(
                        "{name} presented key {}, not its pinned key {}",
                        key.fingerprint(),
                        pinned.fingerprint()
                    )))
                }
                None => {
                    return Err(X509Error::Refused(format!(
                        "{name} has no pinned, unrevoked key in the signed directory"
                    )))
                }
            }
        }
        Ok(key)
    }

    /// The client check, apart from the handshake signature: answers the user it is.
    pub fn check_client(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, X509Error> {
        let cas = self.pins.cas();
        let trusted = Trusted {
            root: &self.root,
            cas: cas.as_deref(),
        };
        let key = x509::check_chain(chain, Usage::Client, &trusted, now)?;
        let user = self.pins.user_of(&key).ok_or_else(|| {
            X509Error::Refused(format!(
                "key {} is not the pinned key of any active user",
                key.fingerprint()
            ))
        })?;
        x509::check_name(&chain[0], &x509::tls_name(&user))?;
        Ok(user)
    }
}

impl ServerCertVerifier for OverlayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = match server_name {
            ServerName::DnsName(name) => name.as_ref().to_string(),
            other => {
                return Err(refusal(X509Error::Refused(format!(
                    "an overlay hop is made to a member's name, not to {other:?}"
                ))))
            }
        };
        self.check_server(&Self::chain(end_entity, intermediates), &name, now)
            .map_err(refusal)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for OverlayVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_client(&Self::chain(end_entity, intermediates), now)
            .map_err(refusal)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A listener's TLS for overlay members: TLS 1.3, this member's leaf, clients checked by
/// `verifier`.
pub fn server_config(leaf: Arc<Leaf>, verifier: Arc<OverlayVerifier>) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(leaf);
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption either way (see `client_config`): no tickets, no session cache.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config
}

/// A listener's TLS for clients that prove who they are inside the protocol instead (the
/// relay's signed challenges): TLS 1.3, this member's leaf, no client certificate asked.
pub fn server_config_without_clients(leaf: Arc<Leaf>) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(leaf);
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config
}

/// Whether member `name` answers at `addr` as itself: a TLS 1.3 handshake in which the server
/// shows a certificate `verifier` accepts for `name` (the overlay CA, its pinned key) and
/// proves it holds that key. The server may then refuse this side, which shows no certificate
/// of its own: what was asked is settled by then. Blocking, over by `deadline` however slowly
/// the server answers.
pub fn answers_as(
    verifier: Arc<OverlayVerifier>,
    name: &str,
    addr: std::net::SocketAddr,
    deadline: std::time::Instant,
) -> Result<(), String> {
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{addr} did not finish the handshake in time"))
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    /// The verifier, noting that the certificate held and that the server proved its key.
    #[derive(Debug)]
    struct Noted {
        inner: Arc<OverlayVerifier>,
        certificate: AtomicBool,
        proof: AtomicBool,
    }
    impl ServerCertVerifier for Noted {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let ok =
                self.inner
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
            self.certificate.store(true, Ordering::SeqCst);
            Ok(ok)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            ServerCertVerifier::verify_tls12_signature(&*self.inner, message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let ok = ServerCertVerifier::verify_tls13_signature(&*self.inner, message, cert, dss)?;
            self.proof.store(true, Ordering::SeqCst);
            Ok(ok)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            ServerCertVerifier::supported_verify_schemes(&*self.inner)
        }
    }
    let noted = Arc::new(Noted {
        inner: verifier,
        certificate: AtomicBool::new(false),
        proof: AtomicBool::new(false),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(noted.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let server = ServerName::try_from(name.to_string())
        .map_err(|e| format!("{name} is not a TLS name: {e}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server)
        .map_err(|e| format!("cannot start a handshake: {e}"))?;
    let mut sock = std::net::TcpStream::connect_timeout(&addr, left()?)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let mut ended = None;
    while conn.is_handshaking() && ended.is_none() {
        // Each read and write gets what is left of the whole.
        let budget = match left() {
            Ok(d) => d,
            Err(e) => {
                ended = Some(e);
                break;
            }
        };
        let _ = sock.set_read_timeout(Some(budget));
        let _ = sock.set_write_timeout(Some(budget));
        if let Err(e) = conn.complete_io(&mut sock) {
            ended = Some(e.to_string());
        }
    }
    if noted.certificate.load(Ordering::SeqCst) && noted.proof.load(Ordering::SeqCst) {
        return Ok(());
    }
    Err(match ended {
        Some(e) => format!("{addr} did not answer as {name}: {e}"),
        None => format!("{addr} did not show {name}'s certificate"),
    })
}

/// A client's TLS for overlay hops: TLS 1.3, servers checked by `verifier`, this member's
/// leaf presented when it has one.
pub fn client_config(leaf: Arc<Leaf>, verifier: Arc<OverlayVerifier>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(leaf);
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: a resumed session carries the identity of the one it resumes (a
    // join made before this member had a certificate, a certificate since renewed or revoked),
    // and every connection must show the certificate it has now. Connections are kept, so
    // full handshakes stay rare.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A client's TLS for everything outside the overlay (AI providers, pages with a public
/// certificate): the system's roots (loaded once; none found is logged, and then only
/// plain-HTTP servers can be reached).
pub fn system_client() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut config = client_with_roots(system_roots());
            config.alpn_protocols = vec![b"h2".to_vec(), ALPN.to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// The system's CA roots, read once per process (none found is logged).
pub fn system_roots() -> rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                log::warn!("reading the system's CA certificates: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                log::warn!(
                    "no CA certificates found on this system (install ca-certificates): \
                     HTTPS servers outside the overlay cannot be checked, so none is reached"
                );
            }
            roots
        })
        .clone()
}

/// A client's TLS (1.2 and 1.3, no client certificate) checking servers against `roots`.
pub fn client_with_roots(roots: rustls::RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The key a connection's client proved with its certificate (the verifier already checked it
/// is an active user's pinned key): the connection data of an overlay listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey(pub PublicKey);

/// Marks a connection of a TLS listener for members (see [`mark_member`]).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// For `HttpServer::on_connect` of a listener for members: marks the connection [`OverTls`],
/// with the client certificate's key ([`PeerKey`]) when it showed one.
pub fn mark_member(conn: &dyn Any, ext: &mut actix_web::dev::Extensions) {
    ext.insert(OverTls);
    if let Some(key) = peer_key(conn) {
        ext.insert(key);
    }
}

/// For `HttpServer::on_connect`: the client certificate's key of a TLS connection, if any.
pub fn peer_key(conn: &dyn Any) -> Option<PeerKey> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    let tls = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()?;
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates()?.first()?;
    x509::key_of(leaf).ok().map(PeerKey)
}

/// Whether a connection is TLS at all (a page listener serving HTTPS).
pub fn is_tls(conn: &dyn Any) -> bool {
    use actix_tls::accept::rustls_0_23::TlsStream;
    conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()
        .is_some()
}

/// The local port of a TLS connection (which of a server's TLS listeners took it).
pub fn local_port(conn: &dyn Any) -> Option<u16> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    let tls = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()?;
    tls.get_ref().0.local_addr().ok().map(|a| a.port())
}

#[cfg(test)]
mod tests;

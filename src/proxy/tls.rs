//! The proxy's side of TLS: its certificate (from the controller's overlay CA, for its identity
//! key, kept in `proxy-NAME.crt` and renewed at half its life), the verifier it checks other
//! members with (the pinned root and the directory the router applied), its TLS listener for
//! other proxies, and which routes each of its listeners serves ([`split`]).
//!
//! On the TLS listener only the relay routes (and `/healthz`) are served, to proxies that
//! presented a certificate (the handshake refuses others). With a TLS listener, the plain one
//! refuses relays: a proxy reaching it in plain HTTP is told where to go, never served.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpResponse;
use tokio::sync::watch;

use super::router::Published;
use crate::trust::tls::{Leaf, OverTls, OverlayVerifier, Pins};
use crate::trust::{x509, Fingerprint, Identity, PublicKey};
use crate::wire::legacy::ErrorBody;

/// The directory as the router applied it, for the verifier.
#[derive(Debug)]
pub struct AppliedPins(pub watch::Receiver<Arc<Published>>);

impl Pins for AppliedPins {
    fn key_of(&self, tls_name: &str) -> Option<PublicKey> {
        self.0.borrow().directory.active_key_named(tls_name)
    }
    fn user_of(&self, key: &PublicKey) -> Option<String> {
        self.0.borrow().directory.active_user_with(key)
    }
    fn cas(&self) -> Option<Vec<Fingerprint>> {
        self.0.borrow().directory.trusted_cas()
    }
}

/// What TLS gives the proxy: its certificate slot and file, the rustls configs of both ends,
/// and its counts.
#[derive(Clone)]
pub struct ProxyTls {
    pub leaf: Arc<Leaf>,
    pub cert_path: PathBuf,
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
    pub counters: Arc<TlsCounters>,
}

/// Connections made and taken over TLS since the start: each is one handshake, so with kept
/// connections they stay near zero per message (the benchmark prints them per 1,000).
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// TLS connections other proxies opened to this one.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Connections this proxy opened to members (proxies and the controller).
    pub opened: std::sync::atomic::AtomicU64,
}

/// `GET /api/v1/tls` (own peer): this proxy's certificate and TLS counts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TlsView {
    /// The certificate's validity (ms since the epoch); none before the CA issued one.
    pub not_before_ms: Option<u64>,
    pub not_after_ms: Option<u64>,
    /// The directory was checked with the controller in this run (relays are taken).
    pub directory_checked: bool,
    pub accepted: u64,
    pub opened: u64,
    /// The users this proxy can reach over TLS now: active in its directory, with a TLS address.
    pub members: Vec<String>,
}

impl ProxyTls {
    /// What `GET /api/v1/tls` shows.
    pub fn view(&self, applied: &Published) -> TlsView {
        use crate::wire::directory::UserState;
        use std::sync::atomic::Ordering::Relaxed;
        let validity = self.leaf.validity();
        TlsView {
            not_before_ms: validity.map(|v| v.0),
            not_after_ms: validity.map(|v| v.1),
            directory_checked: applied.checked,
            accepted: self.counters.accepted.load(Relaxed),
            opened: self.counters.opened.load(Relaxed),
            members: applied
                .directory
                .users
                .values()
                .filter(|u| u.state == UserState::Active && u.key.is_some() && u.tls.is_some())
                .map(|u| u.name.clone())
                .collect(),
        }
    }
}

impl ProxyTls {
    /// The proxy's TLS, with the certificate stored last (when it is still for this key).
    pub fn new(
        cert_path: PathBuf,
        identity: &Identity,
        root: Fingerprint,
        applied: watch::Receiver<Arc<Published>>,
    ) -> ProxyTls {
        let leaf = Leaf::new();
        if let Ok(bytes) = std::fs::read(&cert_path) {
            match x509::from_pem(&bytes).and_then(|chain| leaf.set(identity, chain)) {
                Ok(()) => {}
                Err(e) => log::warn!(
                    "{}: not using it ({e}); a new one is asked for",
                    cert_path.display()
                ),
            }
        }
        let verifier = OverlayVerifier::new(root, Arc::new(AppliedPins(applied)), true);
        ProxyTls {
            client: crate::trust::tls::client_config(leaf.clone(), verifier.clone()),
            server: Arc::new(crate::trust::tls::server_config(leaf.clone(), verifier)),
            leaf,
            cert_path,
            counters: Arc::default(),
        }
    }

    /// Serves `chain` from now on and keeps it for the next start.
    pub fn install(&self, identity: &Identity, chain_pem: &str) -> Result<(), String> {
        let chain = x509::from_pem(chain_pem.as_bytes()).map_err(|e| e.to_string())?;
        self.leaf.set(identity, chain).map_err(|e| e.to_string())?;
        crate::trust::private_file::replace(&self.cert_path, chain_pem.as_bytes(), 0o644)
            .map_err(|e| e.to_string())
    }
}

/// A member's overlay clients: one to share, and a maker of new ones (each with its own
/// connections). Members are reached by their TLS names, looked up in the applied signed
/// directory (`controller_url`'s host for the controller), counted in `o`'s counters.
pub fn overlay_clients(
    o: &ProxyTls,
    directory: watch::Receiver<Arc<Published>>,
    controller_url: &str,
    timeout: std::time::Duration,
) -> (awc::Client, std::rc::Rc<dyn Fn() -> awc::Client>) {
    let (controller_host, _, _) = crate::wire::control_plane::split_url(controller_url);
    let counters = o.counters.clone();
    let lookup: crate::hop::overlay::Lookup = std::rc::Rc::new(move |name: &str| {
        counters
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if name == crate::trust::x509::CONTROLLER_TLS_NAME {
            return Some(controller_host.clone());
        }
        let applied = directory.borrow();
        applied
            .directory
            .users
            .values()
            .find(|u| crate::trust::x509::tls_name(&u.name) == name)
            .and_then(|u| u.tls.as_ref().map(|t| t.host.clone()))
    });
    let config = o.client.clone();
    let fresh: std::rc::Rc<dyn Fn() -> awc::Client> = std::rc::Rc::new(move || {
        crate::hop::overlay::client(config.clone(), lookup.clone(), timeout)
    });
    (fresh(), fresh)
}

/// Whether a certificate valid from `from` to `to` (ms) is to be renewed at `now`: none yet,
/// or half its life gone (so a day's certificate is renewed after twelve hours, and one that
/// expired while the machine was off at once).
pub fn needs_certificate(validity: Option<(u64, u64)>, now_ms: u64) -> bool {
    match validity {
        None => true,
        Some((from, to)) => now_ms >= from + to.saturating_sub(from) / 2,
    }
}

/// A connection's marks, for [`split`]: over TLS, and the client certificate's key; counted.
pub fn on_connect(
    counters: Option<Arc<TlsCounters>>,
) -> impl Fn(&dyn std::any::Any, &mut actix_web::dev::Extensions) + Send + Sync + 'static {
    move |conn, ext| {
        if crate::trust::tls::is_tls(conn) {
            if let Some(c) = &counters {
                c.accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            crate::trust::tls::mark_member(conn, ext);
        }
    }
}

/// This proxy takes other proxies over TLS (its plain listener refuses their relays).
#[derive(Debug, Clone, Copy)]
pub struct TlsListening;

fn relay_route(path: &str) -> bool {
    path == "/api/v1/relay" || path == "/api/v1/relay/batch"
}

/// Middleware: which listener serves what (see the module's text).
pub async fn split(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let path = req.path();
    if req.conn_data::<OverTls>().is_some() {
        if relay_route(path) || path == "/healthz" {
            return next.call(req).await;
        }
        let answer = HttpResponse::NotFound().json(ErrorBody::new(format!(
            "{path} is not on this proxy's TLS listener, which only takes other proxies' relays"
        )));
        return Ok(req.into_response(answer));
    }
    let tls_on = req
        .app_data::<actix_web::web::Data<TlsListening>>()
        .is_some();
    if tls_on && relay_route(path) {
        let answer = HttpResponse::Forbidden().json(ErrorBody::new(
            "this proxy takes other proxies over mutual TLS only, at the TLS address the \
             signed directory gives for it, not in plain HTTP",
        ));
        return Ok(req.into_response(answer));
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn a_certificate_is_renewed_at_half_its_life_and_at_once_when_missing_or_expired() {
        let from = 1_000 * H;
        let day = Some((from, from + 24 * H));
        assert!(needs_certificate(None, from));
        assert!(!needs_certificate(day, from + H));
        assert!(!needs_certificate(day, from + 12 * H - 1));
        assert!(needs_certificate(day, from + 12 * H));
        assert!(needs_certificate(day, from + 30 * H), "expired while off");
        assert!(
            !needs_certificate(day, from - H),
            "a clock behind is not a reason"
        );
    }
}

//! The controller's TLS listener for proxies, beside its plain one for pages and the original's
//! API: its certificate (`controller.overlay`, from the overlay CA, for a key made at each
//! start, renewed daily), the verifier of proxies' certificates (against the directory it
//! publishes), and which routes each listener serves ([`split`]).
//!
//! On the TLS listener a proxy must present its certificate, except to join and to get a
//! certificate (`/api/v1/join`, `/api/v1/certificate`), and only the proxies' routes are there.
//! On the plain listener, with TLS on, the proxies' native routes are refused with the
//! address to use instead; the original's API and the pages stay.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpResponse;

use crate::trust::tls::{Leaf, OverTls, OverlayVerifier, PeerKey, Pins};
use crate::trust::x509::{Ca, CONTROLLER_TLS_NAME, MAX_LEAF_MS};
use crate::trust::{Fingerprint, Identity, PublicKey};
use crate::wire::directory::Directory;
use crate::wire::legacy::ErrorBody;
use crate::wire::now_ms;

/// How often the controller's own certificate is replaced (it lives [`MAX_LEAF_MS`]).
const RENEW_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The directory as the registry last published it, for the verifier.
#[derive(Debug)]
pub struct PublishedPins(pub tokio::sync::watch::Receiver<Arc<Directory>>);

impl Pins for PublishedPins {
    fn key_of(&self, tls_name: &str) -> Option<PublicKey> {
        self.0.borrow().active_key_named(tls_name)
    }
    /// Revoked keys too: a revoked proxy may still connect, to read the directory that tells
    /// it so; every other call of it is refused by the registry (its key is not pinned).
    fn user_of(&self, key: &PublicKey) -> Option<String> {
        self.0.borrow().pinned_user_with(key)
    }
    fn cas(&self) -> Option<Vec<Fingerprint>> {
        self.0.borrow().trusted_cas()
    }
}

/// The rustls config of the TLS listener; the controller's certificate is renewed in the
/// background for as long as the process runs.
pub fn server_config(
    ca: Arc<Ca>,
    root: Fingerprint,
    pins: tokio::sync::watch::Receiver<Arc<Directory>>,
) -> anyhow::Result<rustls::ServerConfig> {
    let key = Arc::new(Identity::try_generate()?);
    let leaf = Leaf::new();
    renew(&leaf, &ca, &key)?;
    {
        let (leaf, ca, key) = (leaf.clone(), ca.clone(), key.clone());
        actix_rt::spawn(async move {
            loop {
                actix_rt::time::sleep(RENEW_EVERY).await;
                if let Err(e) = renew(&leaf, &ca, &key) {
                    log::error!("could not renew the controller's TLS certificate: {e}");
                }
            }
        });
    }
    let verifier = OverlayVerifier::new(root, Arc::new(PublishedPins(pins)), false);
    Ok(crate::trust::tls::server_config(leaf, verifier))
}

fn renew(leaf: &Leaf, ca: &Ca, key: &Identity) -> anyhow::Result<()> {
    let chain = ca.issue(&key.public(), CONTROLLER_TLS_NAME, now_ms(), MAX_LEAF_MS)?;
    leaf.set(key, chain)?;
    Ok(())
}

/// A connection's marks, for [`split`]: on the members' TLS listener (port `members`), and the
/// client certificate's key; or on the dashboard's HTTPS ([`PageTls`]).
pub fn on_connect(
    members: Option<u16>,
) -> impl Fn(&dyn std::any::Any, &mut actix_web::dev::Extensions) + Send + Sync + 'static {
    move |conn, ext| {
        if !crate::trust::tls::is_tls(conn) {
            return;
        }
        if members.is_some() && crate::trust::tls::local_port(conn) == members {
            crate::trust::tls::mark_member(conn, ext);
        } else {
            ext.insert(PageTls);
        }
    }
}

/// Marks a connection of the dashboard's listener served over HTTPS (beyond loopback).
#[derive(Debug, Clone, Copy)]
pub struct PageTls;

/// The proxies' routes of our protocol (not the original's).
fn native_proxy_route(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/join" | "/api/v1/certificate" | "/api/v1/register" | "/api/v1/rotate"
    ) || path.starts_with("/api/v1/directory/")
}

/// What a TLS connection may call without a client certificate.
fn open_over_tls(path: &str) -> bool {
    matches!(path, "/api/v1/join" | "/api/v1/certificate" | "/healthz")
}

/// Where proxies reach the controller over TLS (for the refusals' text).
#[derive(Debug, Clone)]
pub struct TlsUrl(pub Option<String>);

/// Middleware: which listener serves what (see the module's text).
pub async fn split(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let path = req.path().to_string();
    let over_tls = req.conn_data::<OverTls>().is_some();
    if over_tls {
        let proxies_route = native_proxy_route(&path)
            || matches!(
                path.as_str(),
                "/api/heartbeat" | "/api/getendpoints" | "/healthz"
            );
        if !proxies_route {
            let answer = HttpResponse::NotFound().json(ErrorBody::new(format!(
                "{path} is not on the controller's TLS listener, which only proxies use: open \
                 the dashboard at the controller's plain address (controller.listen)"
            )));
            return Ok(req.into_response(answer));
        }
        if req.conn_data::<PeerKey>().is_none() && !open_over_tls(&path) {
            let answer = HttpResponse::Unauthorized().json(ErrorBody::new(
                "a proxy presents its certificate from the overlay CA here: it gets one with \
                 POST /api/v1/certificate once it has joined",
            ));
            return Ok(req.into_response(answer));
        }
        return next.call(req).await;
    }
    let url = req
        .app_data::<actix_web::web::Data<TlsUrl>>()
        .and_then(|u| u.0.clone());
    if let (Some(url), true) = (url, native_proxy_route(&path)) {
        let answer = HttpResponse::Forbidden().json(ErrorBody::new(format!(
            "proxies reach this controller over TLS, at {url} (controller.tls_listen), not in \
             plain HTTP: give the proxy that URL as --controller-url"
        )));
        return Ok(req.into_response(answer));
    }
    next.call(req).await
}

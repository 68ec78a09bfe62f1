//! The hop between a user's peer and its own proxy: who may call the routes of it.
//!
//! The proxy's own-peer API (`/api/v1/outbox`, `/api/v1/outbox/batch`, `/api/v1/directory`,
//! `/api/v1/forget`) acts as its user: whoever reaches it sends in that user's name, on that
//! user's AI keys. The peer's routes its proxy calls (`/api/v1/inbox`, `/api/v1/receipts`,
//! `/api/v1/stream`, their batches) put messages into the user's history. So a caller must be
//! on this machine (a loopback source address), or present the link token both sides were
//! given (`--link-token-file`) in the [`LINK_HEADER`] header. A peer and its proxy in one
//! process share a random token made at start, so they work on any address.
//!
//! Owns the rule ([`allows`]), the middleware that applies it to a resource ([`require`]), and
//! the client that sends the token ([`client`]). It is never sent anywhere but to the other end
//! of this hop (the proxy's client for other proxies and AI APIs is another one).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use subtle::ConstantTimeEq;

use crate::wire::legacy::ErrorBody;

/// The header that carries the link token.
pub const LINK_HEADER: &str = "overlay-link";

/// The link token of one side of the hop (None: loopback callers only).
#[derive(Clone, Default)]
pub struct LinkToken(Option<Arc<str>>);

impl std::fmt::Debug for LinkToken {
    /// Never the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(_) => f.write_str("LinkToken(set)"),
            None => f.write_str("LinkToken(none)"),
        }
    }
}

impl LinkToken {
    pub fn new(token: Option<String>) -> LinkToken {
        LinkToken(token.filter(|t| !t.is_empty()).map(Arc::from))
    }

    /// A fresh random token, for a peer and its proxy started together.
    pub fn random() -> LinkToken {
        LinkToken::new(Some(crate::trust::token::random_text(40)))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

/// Why a call on the hop was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    #[error(
        "this route is for {who}'s own {other} only: call it from this machine, or give both \
         the same --link-token-file and send its token in the `{LINK_HEADER}` header (the \
         caller's address {source_addr} is not loopback)"
    )]
    NotLocal {
        who: String,
        other: &'static str,
        source_addr: String,
    },
    #[error("the `{LINK_HEADER}` token is wrong: both sides need the same --link-token-file")]
    WrongToken,
}

/// A call with link token `given` from `source` is allowed when the source is loopback, or
/// the token matches ours (compared in constant time).
pub fn allows(
    ours: &LinkToken,
    given: Option<&[u8]>,
    source: Option<IpAddr>,
) -> Result<(), LinkRefusal> {
    if source.is_some_and(|ip| ip.is_loopback() || is_mapped_loopback(ip)) {
        return Ok(());
    }
    match (&ours.0, given) {
        (Some(t), Some(g)) if bool::from(t.as_bytes().ct_eq(g)) => Ok(()),
        (Some(_), Some(_)) => Err(LinkRefusal::WrongToken),
        _ => Err(LinkRefusal::NotLocal {
            who: String::new(),
            other: "",
            source_addr: source
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
        }),
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// What the middleware needs: our token, and whose hop this is (for the message).
#[derive(Clone, Debug)]
pub struct LinkGuard {
    pub token: LinkToken,
    /// The user, for the refusal message.
    pub who: String,
    /// `peer` on the proxy's routes, `proxy` on the peer's.
    pub other: &'static str,
}

/// Middleware for a resource of the hop (`.wrap(from_fn(link::require))`); the app must have
/// `web::Data<LinkGuard>`. A refusal is 403 in the original's error shape.
pub async fn require(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let guard = req.app_data::<web::Data<LinkGuard>>().cloned();
    let verdict = match &guard {
        Some(g) => allows(
            &g.token,
            req.headers().get(LINK_HEADER).map(|v| v.as_bytes()),
            req.peer_addr().map(|a| a.ip()),
        )
        .map_err(|e| match e {
            LinkRefusal::NotLocal { source_addr, .. } => LinkRefusal::NotLocal {
                who: g.who.clone(),
                other: g.other,
                source_addr,
            },
            other => other,
        }),
        // A route wrapped without a guard is a bug: refuse rather than open it.
        None => Err(LinkRefusal::WrongToken),
    };
    match verdict {
        Ok(()) => next.call(req).await,
        Err(e) => {
            log::warn!(
                "refused {} {} from {}: {e}",
                req.method(),
                req.path(),
                req.peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default()
            );
            Ok(req.into_response(HttpResponse::Forbidden().json(ErrorBody::new(e.to_string()))))
        }
    }
}

/// An HTTP client for the other end of the hop: it sends the link token with every request.
/// Used for that hop only.
pub fn client(token: &LinkToken, timeout: Duration) -> awc::Client {
    client_with(token, timeout, None)
}

/// [`client`], with `tls` for a peer whose page is served over HTTPS.
pub fn client_with(
    token: &LinkToken,
    timeout: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> awc::Client {
    let mut connector = awc::Connector::new().timeout(timeout);
    if let Some(config) = tls {
        connector = connector.rustls_0_23(config);
    }
    let mut b = awc::Client::builder().timeout(timeout).connector(connector);
    if let Some(t) = &token.0 {
        b = b.add_default_header((LINK_HEADER, t.to_string()));
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn loopback_callers_pass_and_others_need_the_token() {
        let none = LinkToken::new(None);
        let ours = LinkToken::new(Some("s3cret-link-token".into()));
        for lo in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(allows(&none, None, ip(lo)), Ok(()), "{lo}");
            assert_eq!(allows(&ours, None, ip(lo)), Ok(()), "{lo}");
        }
        let far = ip("192.168.1.20");
        assert!(matches!(
            allows(&none, None, far),
            Err(LinkRefusal::NotLocal { .. })
        ));
        assert!(matches!(
            allows(&none, Some(b"anything"), far),
            Err(LinkRefusal::NotLocal { .. })
        ));
        assert!(matches!(
            allows(&ours, None, far),
            Err(LinkRefusal::NotLocal { .. })
        ));
        assert_eq!(
            allows(&ours, Some(b"s3cret-link-tokeN"), far),
            Err(LinkRefusal::WrongToken)
        );
        assert_eq!(allows(&ours, Some(b"s3cret-link-token"), far), Ok(()));
        assert!(allows(&ours, Some(b"s3cret-link-token"), None).is_ok());
        assert!(
            allows(&none, None, None).is_err(),
            "an unknown source is not local"
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_or_in_a_refusal() {
        let ours = LinkToken::new(Some("s3cret-link-token".into()));
        assert_eq!(format!("{ours:?}"), "LinkToken(set)");
        let e = allows(&ours, Some(b"wrong"), ip("10.0.0.1")).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

//! Who may open this user's page. A peer that listens on loopback only is this machine's:
//! no login (the demo opens as ever). On any other address whoever reaches the port would be
//! this user, so the page and its API need the page token: kept in `peer-NAME.page-token`
//! (0600) in the data dir, printed at every start as a URL (`http://HOST:PORT/?token=…`);
//! opening that URL sets a session cookie ([`crate::web::session`]) and drops the token from
//! the address bar. Scripts may send it as `Authorization: Bearer TOKEN` instead.
//! `server.pages_without_login: true` opts out, with a warning at every start.
//!
//! The routes its proxy calls are not the page's (the link guards them), nor are the assets
//! the login page itself needs.
//!
//! Owns the decision at start ([`PageLogin::setup`]) and the middleware ([`require`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use subtle::ConstantTimeEq;

use crate::config::PeerSettings;
use crate::web::session::Sessions;
use crate::wire::legacy::ErrorBody;

/// How long a page session lasts.
const SESSION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The page's login: none (loopback, or opted out), or its token and sessions.
#[derive(Debug, Clone, Default)]
pub struct PageLogin(Option<Arc<Required>>);

#[derive(Debug)]
struct Required {
    token: String,
    sessions: Sessions,
    /// Where the token is kept, for the messages.
    file: String,
}

impl PageLogin {
    /// What the page of `settings`, listening on `addr`, asks of a browser; logs what it
    /// decided (the URL with the token, when one is needed).
    pub fn setup(
        settings: &PeerSettings,
        addr: SocketAddr,
        https: bool,
    ) -> anyhow::Result<PageLogin> {
        let label = format!("peer/{}", settings.name);
        if addr.ip().is_loopback() {
            return Ok(PageLogin(None));
        }
        if settings.server.pages_without_login {
            log::warn!(
                "{label} listens on {addr}, beyond this machine, and server.pages_without_login \
                 is set: whoever reaches this port can read and send as {}",
                settings.name
            );
            return Ok(PageLogin(None));
        }
        let path = settings
            .data_dir
            .join(format!("peer-{}.page-token", settings.name));
        let (token, _) = crate::trust::private_file::token(&path)
            .map_err(|e| anyhow::anyhow!("{label}: its page token: {e}"))?;
        let host = if addr.ip().is_unspecified() {
            settings.advertise.clone()
        } else {
            addr.to_string()
        };
        log::info!(
            "{label} listens on {addr}, beyond this machine: its page needs its token. Open \
             {}://{host}/?token={token} (the token is kept in {})",
            if https { "https" } else { "http" },
            path.display()
        );
        Ok(PageLogin(Some(Arc::new(Required {
            token,
            sessions: Sessions::new(format!("overlay-page-{}", settings.name), SESSION)
                .secure(https),
            file: path.display().to_string(),
        }))))
    }
}

/// The paths that are not the page's (see `routes::FROM_PROXY`), and the assets.
fn exempt(path: &str) -> bool {
    path.starts_with("/assets/") || crate::web::under(path, super::routes::FROM_PROXY)
}

fn matches(token: &str, given: &str) -> bool {
    bool::from(token.as_bytes().ct_eq(given.as_bytes()))
}

/// The `token` of a query string, if any.
fn query_token(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v)
}

/// Middleware for the whole app; it must have `web::Data<PageLogin>`.
pub async fn require(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let login = req
        .app_data::<web::Data<PageLogin>>()
        .and_then(|l| l.0.clone());
    let Some(login) = login else {
        return next.call(req).await;
    };
    if exempt(req.path()) {
        return next.call(req).await;
    }
    let now = crate::wire::now_ms();
    // The URL printed at start: a session, then the same page without the token in it.
    if let Some(given) = query_token(req.query_string()) {
        if matches(&login.token, given) {
            let cookie = login.sessions.open(now);
            let answer = HttpResponse::SeeOther()
                .insert_header((header::LOCATION, req.path().to_string()))
                .insert_header((header::SET_COOKIE, cookie))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish();
            return Ok(req.into_response(answer));
        }
    }
    let bearer = crate::web::bearer(req.headers());
    if login.sessions.holds(req.request(), now) || bearer.is_some_and(|b| matches(&login.token, b))
    {
        return next.call(req).await;
    }
    let message = format!(
        "this page needs its token: open the URL the peer printed when it started, or put the \
         token from {} after `/?token=`",
        login.file
    );
    let answer = if req.path() == "/" {
        HttpResponse::Unauthorized()
            .content_type("text/html; charset=utf-8")
            .body(super::views::login_page(&login.file).into_string())
    } else {
        HttpResponse::Unauthorized().json(ErrorBody::new(message))
    };
    Ok(req.into_response(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_routes_and_the_assets_are_not_the_pages() {
        for p in [
            "/api/v1/inbox",
            "/api/v1/inbox/batch",
            "/message",
            "/assets/chat.css",
            // checked by its own rule: loopback, or the metrics token
            "/metrics",
            "/healthz",
        ] {
            assert!(exempt(p), "{p}");
        }
        for p in [
            "/",
            "/message_updates",
            "/api/v1/me",
            "/send_message",
            "/assetsx",
        ] {
            assert!(!exempt(p), "{p}");
        }
    }

    #[test]
    fn the_token_is_found_among_other_query_fields() {
        assert_eq!(query_token("a=1&token=xyz"), Some("xyz"));
        assert_eq!(query_token("tokens=1"), None);
        assert_eq!(query_token(""), None);
    }
}

//! Browser sessions after a login: a random session id in an HttpOnly, SameSite=Strict cookie
//! (no script can read it, no other site's page can send it), kept by the server for a fixed
//! time and forgotten at logout. The server keeps only the SHA-256 of each id, so its memory
//! holds nothing a cookie could be made from. In memory: a restart logs everyone out.
//!
//! The cookie is marked `Secure` when its server serves its pages over HTTPS (beyond loopback,
//! see [`super::page_tls`]), so a browser never sends it in plain HTTP.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::header;
use actix_web::HttpRequest;
use sha2::{Digest, Sha256};

/// The sessions of one server, under one cookie name.
#[derive(Debug)]
pub struct Sessions {
    cookie: String,
    ttl: Duration,
    /// SHA-256 of a session id → when it expires, Unix ms.
    live: Mutex<HashMap<[u8; 32], u64>>,
    /// The cookie goes over HTTPS only.
    secure: bool,
}

/// The most sessions kept at once; past it the oldest go first.
const MAX_SESSIONS: usize = 10_000;

impl Sessions {
    /// Sessions under cookie `cookie`. Browsers send a host's cookies to every port of it, so
    /// each server names its own (the peer's carries its user's name): two pages on one host
    /// never overwrite each other's login.
    pub fn new(cookie: impl Into<String>, ttl: Duration) -> Sessions {
        Sessions {
            cookie: cookie.into(),
            ttl,
            live: Mutex::new(HashMap::new()),
            secure: false,
        }
    }

    /// Its cookie is `Secure` (the pages are served over HTTPS).
    pub fn secure(mut self, secure: bool) -> Sessions {
        self.secure = secure;
        self
    }

    /// Opens a session: the `Set-Cookie` value that carries it.
    pub fn open(&self, now_ms: u64) -> String {
        let id = crate::trust::token::random_text(43);
        let expires = now_ms.saturating_add(ms(self.ttl));
        let mut live = self.lock();
        live.retain(|_, until| *until > now_ms);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| *k)
            {
                live.remove(&oldest);
            }
        }
        live.insert(digest(&id), expires);
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.cookie,
            self.ttl.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// Whether `req` carries a live session of ours.
    pub fn holds(&self, req: &HttpRequest, now_ms: u64) -> bool {
        let Some(id) = self.cookie_of(req) else {
            return false;
        };
        // Looked up by its digest: how long a lookup takes says nothing about a live id.
        self.lock()
            .get(&digest(&id))
            .is_some_and(|until| *until > now_ms)
    }

    /// Forgets `req`'s session; the `Set-Cookie` value that clears the cookie.
    pub fn close(&self, req: &HttpRequest) -> String {
        if let Some(id) = self.cookie_of(req) {
            self.lock().remove(&digest(&id));
        }
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie
        )
    }

    fn cookie_of(&self, req: &HttpRequest) -> Option<String> {
        req.headers()
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie)
            .map(|(_, value)| value.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], u64>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn with_cookie(set_cookie: &str) -> HttpRequest {
        let pair = set_cookie.split(';').next().unwrap();
        TestRequest::default()
            .insert_header((header::COOKIE, format!("other=1; {pair}")))
            .to_http_request()
    }

    #[test]
    fn a_session_holds_until_it_expires_or_is_closed() {
        let s = Sessions::new("overlay-page", Duration::from_secs(60));
        let set = s.open(1_000);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        let req = with_cookie(&set);
        assert!(s.holds(&req, 1_000));
        assert!(!s.holds(&req, 1_000 + 60_000), "expired");
        assert!(s.holds(&req, 2_000));
        assert!(s.close(&req).contains("Max-Age=0"));
        assert!(!s.holds(&req, 2_000), "closed");
    }

    #[test]
    fn no_cookie_or_a_made_up_one_holds_nothing() {
        let s = Sessions::new("overlay-page", Duration::from_secs(60));
        s.open(1_000);
        assert!(!s.holds(&TestRequest::default().to_http_request(), 1_000));
        assert!(!s.holds(&with_cookie("overlay-page=guess"), 1_000));
        // Another page's cookie on the same host is not ours.
        let alice = Sessions::new("overlay-page-alice", Duration::from_secs(60));
        let bobs = Sessions::new("overlay-page-bob", Duration::from_secs(60)).open(1_000);
        assert!(!alice.holds(&with_cookie(&bobs), 1_000));
        // Another server's sessions are not ours.
        let other = Sessions::new("overlay-page", Duration::from_secs(60));
        assert!(!other.holds(&with_cookie(&s.open(1_000)), 1_000));
    }
}

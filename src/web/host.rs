//! DNS rebinding: a page of another site whose name the attacker points at this server's
//! address (127.0.0.1, or a LAN address) would be same-origin with it in the browser, and could
//! read the chat or act as the user. So a browser-facing route answers only requests whose
//! `Host` this server serves:
//! - an IP address (v4, or v6 in brackets): a browser sends one only when the user typed it;
//! - `localhost` and names under `.localhost`, which browsers resolve to loopback themselves;
//! - the names this server is configured under (its `advertise` host, its URL) and the ones
//!   listed in `server.allowed_hosts` in config.yaml.
//!
//! Any port is accepted (a port forward changes it). Routes that only other roles call (a proxy
//! posting to its peer, proxies calling the controller) are exempt: they are guarded by their
//! own tokens and signatures, and may reach the server under any name (a container's service
//! name). `Forwarded`/`X-Forwarded-Host` are never read: a client sets them.
//!
//! Owns the rule ([`HostCheck::allows`]) and the middleware that applies it ([`require`]).

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use crate::wire::legacy::ErrorBody;

/// Which `Host` names a server answers on its browser-facing routes.
#[derive(Clone, Debug)]
pub struct HostCheck {
    /// Configured names, lower case, without port or trailing dot.
    names: Arc<[String]>,
    /// Path prefixes exempt from the check (routes other roles call).
    exempt: &'static [&'static str],
}

impl HostCheck {
    /// A check allowing `names` (host names or `host:port`, any case) beside IP addresses and
    /// localhost names; requests for one of the `exempt` paths (or below one) are not checked.
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a str>,
        exempt: &'static [&'static str],
    ) -> HostCheck {
        let names: Vec<String> = names
            .into_iter()
            .filter_map(|n| {
                let n = name_of(n);
                (!n.is_empty()).then_some(n)
            })
            .collect();
        HostCheck {
            names: names.into(),
            exempt,
        }
    }

    /// Whether a request with `Host: host` is answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = name_of(host);
        is_ip(&name)
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.names.contains(&name)
    }

    /// `path` is one of the exempt routes, or below one (`/api/v1/inbox/batch`).
    fn exempts(&self, path: &str) -> bool {
        super::under(path, self.exempt)
    }
}

/// The name part of a `Host` value, lower case: without the port, brackets kept for IPv6.
fn name_of(host: &str) -> String {
    let host = host.trim();
    if host.starts_with('[') {
        // `[v6]` or `[v6]:port`; anything else is kept whole (and matches nothing).
        return match host.split_once(']') {
            Some((v6, rest)) if rest.is_empty() || rest.starts_with(':') => {
                format!("{v6}]").to_ascii_lowercase()
            }
            _ => host.to_ascii_lowercase(),
        };
    }
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn is_ip(name: &str) -> bool {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok()
}

/// The name a request asks for: its `Host` header, else its request line's authority
/// (HTTP/1.0).
pub fn requested_host(head: &actix_web::dev::RequestHead) -> Option<&str> {
    head.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
}

/// Middleware (`.wrap(from_fn(host::require))`); the app must have `web::Data<HostCheck>`.
/// A refusal is 403 in the original's error shape, naming the host and the fix.
pub async fn require(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(check) = req.app_data::<web::Data<HostCheck>>().cloned() else {
        return next.call(req).await;
    };
    if check.exempts(req.path()) {
        return next.call(req).await;
    }
    let host = requested_host(req.head()).map(str::to_string);
    match host {
        Some(host) if !check.allows(&host) => {
            log::warn!(
                "refused {} {} for Host {host:?}: not a name this server serves",
                req.method(),
                req.path()
            );
            let shown: String = host.chars().take(80).collect();
            let answer = HttpResponse::Forbidden().json(ErrorBody::new(format!(
                "Host `{shown}` is not a name this server serves (a guard against DNS \
                 rebinding): open it by its IP address or localhost, or add the name under \
                 server.allowed_hosts in config.yaml"
            )));
            Ok(req.into_response(answer))
        }
        // No Host at all: not a browser (they always send one).
        _ => next.call(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HostCheck {
        HostCheck::new(
            ["Alice.lan:5001", "chat.example.org."],
            &["/api/v1/inbox", "/message"],
        )
    }

    #[test]
    fn addresses_localhost_and_configured_names_are_served_on_any_port() {
        let c = check();
        for host in [
            "127.0.0.1:5001",
            "10.1.2.3",
            "[::1]:5001",
            "[fe80::1]",
            "localhost:8000",
            "LOCALHOST",
            "app.localhost:1",
            "alice.lan",
            "ALICE.LAN:9999",
            "chat.example.org",
            "chat.example.org.:443",
        ] {
            assert!(c.allows(host), "{host}");
        }
    }

    #[test]
    fn any_other_name_is_refused() {
        let c = check();
        for host in [
            "evil.example",
            "evil.example:5001",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "alice.lan.evil.example",
            "[::1",
            "",
        ] {
            assert!(!c.allows(host), "{host}");
        }
    }

    #[test]
    fn exempt_routes_are_matched_by_prefix() {
        let c = check();
        assert!(c.exempts("/api/v1/inbox/batch"));
        assert!(c.exempts("/message"));
        assert!(!c.exempts("/message_updates"));
        assert!(!c.exempts("/api/v1/me"));
    }
}

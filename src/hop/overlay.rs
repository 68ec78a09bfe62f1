//! The HTTP client of hops between overlay members (proxy → proxy, proxy → controller): TLS
//! with the overlay's verifier and this member's certificate, to members by the names their
//! certificates carry (`https://bob.proxy.overlay:PORT/…`, `https://controller.overlay:PORT/…`).
//!
//! Those names are not in DNS: the client's resolver looks them up in the signed directory (a
//! proxy's TLS address) or the configured controller URL, so the name a connection is checked
//! against is the member the request is for, wherever its address points. A name with no
//! address is an error, never a DNS lookup. Nothing here ever speaks plain HTTP: a failed
//! handshake is a failed attempt (retried over TLS by the caller), not a reason to downgrade.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_tls::connect::{Connector as TcpConnector, Resolve, Resolver};
use futures_util::future::LocalBoxFuture;

/// A member's TLS name → the host its address has (an IP address or a DNS name).
pub type Lookup = Rc<dyn Fn(&str) -> Option<String>>;

struct DirectoryResolver(Lookup);

impl Resolve for DirectoryResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        let real = (self.0)(host);
        Box::pin(async move {
            let real = real.ok_or_else(|| {
                format!("no address for {host} in the signed directory (not joined, or revoked)")
            })?;
            let bare = real
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(&real);
            if let Ok(ip) = bare.parse::<IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port)).await?.collect();
            if found.is_empty() {
                return Err(format!("{real} ({host}) has no address").into());
            }
            Ok(found)
        })
    }
}

/// A client for overlay hops: `config` from [`crate::trust::tls::client_config`], names found
/// with `lookup`, each request bounded by `timeout` (connecting and the handshake too).
pub fn client(config: Arc<rustls::ClientConfig>, lookup: Lookup, timeout: Duration) -> awc::Client {
    let tcp = TcpConnector::new(Resolver::custom(DirectoryResolver(lookup))).service();
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .connector(tcp)
                .rustls_0_23(config)
                .timeout(timeout)
                .handshake_timeout(timeout),
        )
        .timeout(timeout)
        .disable_redirects()
        .finish()
}

/// `https://NAME:PORT` for a member's TLS name and port.
pub fn base_url(tls_name: &str, port: u16) -> String {
    format!("https://{tls_name}:{port}")
}

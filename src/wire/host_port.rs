//! [`HostPort`]: a `host:port` address as it crosses process boundaries (an `advertise` setting,
//! a `Host:` header, the authority of a URL), parsed and checked in one place.
//!
//! The host is kept as written, so an IPv6 literal keeps its brackets (`[::1]`) and
//! `format!("http://{addr}")` is a valid URL; [`HostPort::bare_host`] drops them where the
//! original's registration fields want the address alone. No I/O, no DNS.

use std::fmt;
use std::str::FromStr;

/// A checked `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// A name, an IPv4 address, or a bracketed IPv6 literal (`[::1]`).
    pub host: String,
    pub port: u16,
}

/// Why a text is not a `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("`{0}` has no `:port`")]
    NoPort(String),
    #[error("`{0}` is not a port (0 to 65535)")]
    BadPort(String),
    #[error("`{0}` is not a host name or address")]
    BadHost(String),
}

impl HostPort {
    /// `host:port` or `[v6]:port`; the port is required.
    pub fn parse(s: &str) -> Result<HostPort, HostPortError> {
        match split(s)? {
            (host, Some(port)) => Ok(HostPort { host, port }),
            (_, None) => Err(HostPortError::NoPort(s.trim().to_string())),
        }
    }

    /// `host[:port]`: `default_port` when the text names none (a URL's authority).
    pub fn parse_or(s: &str, default_port: u16) -> Result<HostPort, HostPortError> {
        let (host, port) = split(s)?;
        Ok(HostPort {
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// The host without the brackets of an IPv6 literal.
    pub fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// compat: the destination a `Host:` header names (the original routes on it): the host
    /// with its `:port` dropped, or the whole header (trimmed) when it is not a `host:port`.
    pub fn host_of(header: &str) -> String {
        HostPort::parse(header)
            .map(|a| a.host)
            .unwrap_or_else(|_| header.trim().to_string())
    }
}

/// Whether `s` is a host a registration may name: an IPv4 address, an IPv6 address (bare or
/// in brackets), or a DNS name: dot-separated labels of ASCII letters, digits, `-` and `_`
/// (1 to 63 characters, not starting or ending with `-`), 253 characters in all, an optional
/// final dot. Anything else (spaces, slashes, a scheme, invisible or right-to-left characters,
/// emoji) is not a host.
pub fn is_host(s: &str) -> bool {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let bare = s
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(s);
    if bare.parse::<Ipv6Addr>().is_ok() {
        return true;
    }
    if bare.len() != s.len() {
        return false; // brackets around something that is not an IPv6 address
    }
    if s.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    // All-digit labels that are not an IPv4 address (`999.1.1.1`, `1.2.3`) are no name either.
    let numeric = name
        .split('.')
        .all(|label| label.chars().all(|c| c.is_ascii_digit()));
    labels_ok && !numeric
}

/// (host, port when written), checked.
fn split(s: &str) -> Result<(String, Option<u16>), HostPortError> {
    let s = s.trim();
    let bad_host = || HostPortError::BadHost(s.to_string());
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or_else(bad_host)?;
        let (host, rest) = s.split_at(end + 1);
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ":.".contains(c))
        {
            return Err(bad_host());
        }
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(bad_host()),
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad_host()),
            None => (s, None),
        }
    };
    let valid = |c: char| !c.is_whitespace() && !c.is_control() && !"/?#@[]".contains(c);
    if host.is_empty() || !host.trim_matches(['[', ']']).chars().all(valid) {
        return Err(bad_host());
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => Some(
            p.parse()
                .map_err(|_| HostPortError::BadPort(p.to_string()))?,
        ),
        Some(p) => return Err(HostPortError::BadPort(p.to_string())),
    };
    Ok((host.to_string(), port))
}

impl FromStr for HostPort {
    type Err = HostPortError;
    fn from_str(s: &str) -> Result<HostPort, HostPortError> {
        HostPort::parse(s)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_name_an_ipv4_and_an_ipv6_address_parse_with_their_port() {
        assert_eq!(
            HostPort::parse("127.0.0.1:10001"),
            Ok(hp("127.0.0.1", 10001))
        );
        assert_eq!(HostPort::parse(" bob:80 "), Ok(hp("bob", 80)));
        assert_eq!(HostPort::parse("[::1]:7"), Ok(hp("[::1]", 7)));
        assert_eq!(HostPort::parse("[::1]:7").unwrap().bare_host(), "::1");
    }

    #[test]
    fn display_writes_what_parse_reads() {
        for s in ["127.0.0.1:10001", "[::1]:7", "api.example.com:443"] {
            assert_eq!(s.parse::<HostPort>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn a_missing_empty_or_out_of_range_port_is_refused() {
        assert_eq!(
            HostPort::parse("bob"),
            Err(HostPortError::NoPort("bob".into()))
        );
        assert!(matches!(
            HostPort::parse("bob:"),
            Err(HostPortError::BadPort(_))
        ));
        assert!(matches!(
            HostPort::parse("bob:65536"),
            Err(HostPortError::BadPort(_))
        ));
        assert!(matches!(
            HostPort::parse("bob:+80"),
            Err(HostPortError::BadPort(_))
        ));
    }

    #[test]
    fn a_host_with_spaces_slashes_or_a_bare_ipv6_address_is_refused() {
        for s in [
            ":80", "a b:80", "a/b:80", "::1", "[::1", "[zz]:80", "[::1]x",
        ] {
            assert!(
                matches!(HostPort::parse(s), Err(HostPortError::BadHost(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn a_default_port_fills_in_only_when_none_is_written() {
        assert_eq!(HostPort::parse_or("h", 80), Ok(hp("h", 80)));
        assert_eq!(HostPort::parse_or("h:9", 80), Ok(hp("h", 9)));
        assert_eq!(HostPort::parse_or("[::1]", 443), Ok(hp("[::1]", 443)));
    }

    #[test]
    fn names_and_ip_addresses_are_hosts() {
        for s in [
            "127.0.0.1",
            "::1",
            "[::1]",
            "fe80::1",
            "localhost",
            "bob",
            "api.example.com",
            "api.example.com.",
            "my_service-2",
            "xn--bcher-kva.example",
        ] {
            assert!(is_host(s), "{s}");
        }
    }

    #[test]
    fn look_alikes_urls_and_junk_are_not_hosts() {
        for s in [
            "",
            ".",
            "a b",
            "evil.com/x",
            "http://h",
            "h:80",
            "a..b",
            "-bad.example",
            "bad-.example",
            "ali\u{200b}ce",
            "\u{202e}moc.evil",
            "caf\u{e9}",
            "\u{1f600}.example",
            "999.1.1.1",
            "1.2.3",
            "[bob]",
            "[::1",
        ] {
            assert!(!is_host(s), "{s:?}");
        }
        assert!(!is_host(&"a".repeat(64)));
        assert!(!is_host(&["a"; 128].join(".")));
    }

    // Moved from proxy/compat.rs.
    #[test]
    fn a_host_header_loses_its_port() {
        assert_eq!(HostPort::host_of("bob:10002"), "bob");
        assert_eq!(HostPort::host_of("Bob"), "Bob");
        assert_eq!(HostPort::host_of(" alice:"), "alice:");
    }
}

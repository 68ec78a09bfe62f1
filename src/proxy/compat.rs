//! The original's proxy wire format, coming in: `POST /` (any path) with `Host: TARGET` and
//! `{message, from, timestamp}`. Here: who `Host:` names. The body becomes an envelope through
//! [`crate::wire::legacy::Message::to_envelope`], which the peer's `/message` shares.
//! No I/O, no actors.

/// The destination named by a `Host:` header: any `:port` stripped.
pub fn host_target(host: &str) -> &str {
    let host = host.trim();
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_header_loses_its_port() {
        assert_eq!(host_target("bob:10002"), "bob");
        assert_eq!(host_target("Bob"), "Bob");
        assert_eq!(host_target(" alice:"), "alice:");
    }
}

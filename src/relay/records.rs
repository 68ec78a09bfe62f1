//! The sending side of a TLS 1.3 connection kept as its traffic key alone, once rustls has
//! done the handshake and let the connection go (`dangerous_extract_secrets`, as for kernel
//! TLS). Records are sealed by rustls's own encrypter for the negotiated suite, so their
//! format is rustls's; this only counts them.
//!
//! It is what a relay keeps of an attached stream's TLS: a stream only ever sends down, so
//! rustls's read buffer and handshake state (about 5 KB a connection) need not stay.

use rustls::crypto::cipher::{MessageEncrypter, OutboundChunks, OutboundPlainMessage};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};

/// The most plaintext one record carries (RFC 8446, 5.1).
const MAX_FRAGMENT: usize = 16 * 1024;

pub struct RecordWriter {
    encrypter: Box<dyn MessageEncrypter>,
    /// The next record's sequence number.
    seq: u64,
    /// The records the suite's key may seal (its confidentiality limit): past it, the stream
    /// ends and the proxy attaches again, with a new key.
    limit: u64,
}

impl RecordWriter {
    /// Takes over `conn`'s sending side. `conn` must be a finished TLS 1.3 handshake of a
    /// config with `enable_secret_extraction`, with nothing left to send.
    pub fn take(conn: rustls::ServerConnection) -> Result<RecordWriter, String> {
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            return Err("the connection is not TLS 1.3".into());
        };
        let secrets = conn
            .dangerous_extract_secrets()
            .map_err(|e| format!("its traffic key cannot be taken: {e}"))?;
        let (seq, secrets) = secrets.tx;
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return Err("its cipher suite is not one a relay seals with".into()),
        };
        Ok(RecordWriter {
            encrypter: suite.aead_alg.encrypter(key, iv),
            seq,
            limit: suite.common.confidentiality_limit,
        })
    }

    /// `data` as application-data records, appended to `out`.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        for piece in data.chunks(MAX_FRAGMENT) {
            self.record(ContentType::ApplicationData, piece, out)?;
        }
        Ok(())
    }

    /// The `close_notify` alert, appended to `out`: the stream ends on purpose.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        // Level warning (1), description close_notify (0).
        self.record(ContentType::Alert, &[1, 0], out)
    }

    fn record(&mut self, typ: ContentType, piece: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if self.seq >= self.limit {
            return Err("the stream's key sealed all the records it may".into());
        }
        let plain = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(piece),
        };
        let sealed = self
            .encrypter
            .encrypt(plain, self.seq)
            .map_err(|e| format!("a record cannot be sealed: {e}"))?;
        self.seq += 1;
        out.extend_from_slice(&sealed.encode());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;

    /// A handshake between a rustls client and server in memory, finished.
    fn pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
        let now = crate::wire::now_ms();
        let root = crate::trust::Identity::generate();
        let ca_key = crate::trust::Identity::generate();
        let root_der = crate::trust::x509::root_cert(&root, now - 60_000).unwrap();
        let ca_der = crate::trust::x509::ca_cert(&root, &ca_key.public(), now - 60_000).unwrap();
        let ca = crate::trust::x509::Ca::new(&ca_key, ca_der, root_der).unwrap();
        let relay = crate::trust::Identity::generate();
        let name = crate::trust::x509::tls_name("relay1");
        let chain = ca
            .issue(&relay.public(), &name, now - 60_000, 3_600_000)
            .unwrap();
        let leaf = crate::trust::tls::Leaf::new();
        leaf.set(&relay, chain).unwrap();
        let mut server = crate::trust::tls::server_config_without_clients(leaf);
        server.enable_secret_extraction = true;
        // The overlay's own client: the relay checked against the root and its pinned key.
        let pins = Arc::new(OnlyRelay(name.clone(), relay.public()));
        let verifier = crate::trust::tls::OverlayVerifier::new(root.fingerprint(), pins, false);
        let client = crate::trust::tls::client_config(crate::trust::tls::Leaf::new(), verifier);
        let mut c = rustls::ClientConnection::new(
            client,
            rustls::pki_types::ServerName::try_from(name).unwrap(),
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        (c, s)
    }

    /// Pins for the test: the relay, alone.
    #[derive(Debug)]
    struct OnlyRelay(String, crate::trust::PublicKey);

    impl crate::trust::tls::Pins for OnlyRelay {
        fn key_of(&self, tls_name: &str) -> Option<crate::trust::PublicKey> {
            (tls_name == self.0).then_some(self.1)
        }
        fn user_of(&self, _: &crate::trust::PublicKey) -> Option<String> {
            None
        }
        fn cas(&self) -> Option<Vec<crate::trust::Fingerprint>> {
            None
        }
    }

    #[test]
    fn records_sealed_after_rustls_let_go_read_as_the_same_connection() {
        let (mut client, mut server) = pair();
        // Some of it through rustls first: the sequence numbers go on from there.
        server
            .writer()
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut writer = RecordWriter::take(server).expect("a finished TLS 1.3 handshake");
        let big = vec![b'x'; MAX_FRAGMENT * 2 + 10];
        writer.seal(b"first", &mut wire).unwrap();
        writer.seal(&big, &mut wire).unwrap();
        writer.close_notify(&mut wire).unwrap();
        let mut read = Vec::new();
        let mut at = &wire[..];
        while !at.is_empty() {
            client.read_tls(&mut at).unwrap();
            let state = client.process_new_packets().unwrap();
            if state.plaintext_bytes_to_read() > 0 {
                let mut part = vec![0; state.plaintext_bytes_to_read()];
                client.reader().read_exact(&mut part).unwrap();
                read.extend_from_slice(&part);
            }
        }
        let mut want = b"HTTP/1.1 200 OK\r\n\r\nfirst".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(read, want);
        // The alert closed it cleanly: EOF, not a truncation error.
        let mut rest = Vec::new();
        assert_eq!(client.reader().read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn a_handshake_not_finished_has_no_key_to_take() {
        let mut config =
            crate::trust::tls::server_config_without_clients(crate::trust::tls::Leaf::new());
        config.enable_secret_extraction = true;
        let fresh = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let e = RecordWriter::take(fresh).err().expect("no handshake yet");
        assert!(e.contains("not TLS 1.3"), "{e}");
    }
}

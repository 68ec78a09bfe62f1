//! The relay's TLS listener: one port for all that proxies ask of it. The first request of
//! each connection decides how the connection is served:
//!
//! - `GET /relay/v1/attach` (a proxy opens its stream as the first request of a new
//!   connection) is checked here exactly as the route checks it ([`routes::authorize`]: rate,
//!   then proof), and answered `200 text/event-stream`, chunked. Then all the connection
//!   keeps is its socket, the key that seals what goes down ([`RecordWriter`]) and the
//!   stream's queue ([`Events`]), in a task of its own: rustls's buffers and handshake state
//!   and actix-web's two 8 KB buffers (26 KB a proxy between them) are let go. A relay holds
//!   one such stream per proxy behind NAT, idle most of the time, so this is what a relay
//!   costs. Whatever the proxy sends on it afterwards (its `close_notify`, or anything: the
//!   protocol has it send nothing) ends the stream.
//! - Anything else is served by actix-http with the relay's app, as by any listener, the bytes
//!   already read first ([`Rewind`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_web::web::Bytes;
use actix_web::ResponseError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use super::error::RelayError;
use super::events::Events;
use super::records::RecordWriter;
use super::routes::{self, RelayState};
use crate::wire::legacy::ErrorBody;
use crate::wire::relay::ATTACH_HEADER;

/// The largest first request head read before it is handed on (actix-http takes larger ones,
/// and refuses them itself).
const MAX_HEAD: usize = 8 * 1024;
/// How long the handshake may take (as actix-web's TLS listeners allow), then the first
/// request's head (as actix-http allows a request).
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(3);
const HEAD_WITHIN: Duration = Duration::from_secs(5);
/// The most of a stream's queued events sent in one write.
const COALESCE: usize = 64 * 1024;
/// The answer that opens a stream.
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-store\r\ntransfer-encoding: chunked\r\n\r\n";

/// A connection as actix-http gets it: TLS, with the bytes the front read first.
pub type Conn = Rewind<TlsStream<TcpStream>>;

/// Serves one connection of the TLS listener: its handshake and first request head here, then
/// a lean stream or `h1` (actix-http, the relay's app).
pub async fn serve<S>(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    state: RelayState,
    h1: Rc<S>,
) -> Result<(), ()>
where
    S: Service<(Conn, Option<SocketAddr>), Response = ()>,
    S::Error: std::fmt::Debug,
{
    let Ok(peer) = tcp.peer_addr() else {
        return Ok(());
    };
    let _ = tcp.set_nodelay(true);
    // Boxed, as is the HTTP service's future below: a task is as large as its largest state,
    // and an attached stream lives in a task of its own, as small as it can be.
    let opened = Box::pin(async {
        let timed_out = |_| io::Error::from(io::ErrorKind::TimedOut);
        let mut tls = actix_rt::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp))
            .await
            .map_err(timed_out)??;
        let first = actix_rt::time::timeout(HEAD_WITHIN, read_head(&mut tls))
            .await
            .map_err(timed_out)??;
        Ok::<_, io::Error>((tls, first))
    })
    .await;
    let (mut tls, first) = match opened {
        Ok(done) => done,
        Err(e) => {
            log::debug!("relay {}: a connection from {peer} ended: {e}", state.name);
            return Ok(());
        }
    };
    match attach_request(&first).filter(|_| nothing_after(&mut tls)) {
        Some(asked) => attach(tls, peer.ip(), asked, state).await,
        None => {
            if let Err(e) = Box::pin(h1.call((Rewind::new(first, tls), Some(peer)))).await {
                log::debug!("relay {}: a connection from {peer}: {e:?}", state.name);
            }
        }
    }
    Ok(())
}

/// What an attach asks: its proof, and the last event it had.
#[derive(Debug, PartialEq, Eq)]
struct Asked {
    proof: Option<String>,
    last_event: Option<u64>,
}

/// `first` as an attach, when it is one: a complete `GET /relay/v1/attach` head with no body
/// and nothing after it.
fn attach_request(first: &[u8]) -> Option<Asked> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(first) else {
        return None;
    };
    if len != first.len() || req.method != Some("GET") || req.path != Some("/relay/v1/attach") {
        return None;
    }
    let mut asked = Asked {
        proof: None,
        last_event: None,
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).ok().map(str::trim);
        if h.name.eq_ignore_ascii_case(ATTACH_HEADER) {
            asked.proof = value.map(str::to_string);
        } else if h.name.eq_ignore_ascii_case("last-event-id") {
            asked.last_event = value.and_then(|v| v.parse().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && value != Some("0"))
        {
            return None;
        }
    }
    Some(asked)
}

/// Whether the client sent nothing past what was read (rustls may hold more, decrypted: a
/// request after the head, or its `close_notify`); if it did, the connection is not one to
/// hold leanly, and actix-http reads the rest.
fn nothing_after(tls: &mut TlsStream<TcpStream>) -> bool {
    let (_, conn) = tls.get_mut();
    match conn.process_new_packets() {
        Ok(io) => io.plaintext_bytes_to_read() == 0 && !io.peer_has_closed(),
        Err(_) => false,
    }
}

/// Reads until the first request's head is complete (or not a head, or [`MAX_HEAD`] long):
/// everything read, for whoever serves the request.
async fn read_head(tls: &mut TlsStream<TcpStream>) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(buf.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let partial = matches!(
            httparse::Request::new(&mut headers).parse(&buf),
            Ok(httparse::Status::Partial)
        );
        if !partial || buf.len() >= MAX_HEAD {
            return Ok(buf.into());
        }
    }
}

/// An attach: refused as the route would refuse it, or its stream.
async fn attach(mut tls: TlsStream<TcpStream>, source: IpAddr, asked: Asked, state: RelayState) {
    let rx = Box::pin(routes::authorize(
        &state,
        source,
        asked.proof.as_deref(),
        asked.last_event,
    ))
    .await;
    let rx = match rx {
        Ok(rx) => rx,
        Err(e) => return refuse(tls, &e).await,
    };
    if tls.write_all(STREAM_HEAD).await.is_err() || tls.flush().await.is_err() {
        return;
    }
    let (tcp, conn) = tls.into_inner();
    // A proxy that reads nothing for three keep-alive periods (half a minute at least) is gone.
    let write_within = (state.ping_every * 3).max(Duration::from_secs(30));
    match RecordWriter::take(conn) {
        Ok(writer) => {
            let events = Events::new(rx, state.ping_every);
            actix_rt::spawn(hold(tcp, writer, events, write_within));
        }
        Err(e) => log::warn!(
            "relay {}: a stream from {source} cannot be kept: {e}",
            state.name
        ),
    }
}

/// The refusal of an attach, in the routes' JSON shape; then the connection closes.
async fn refuse(mut tls: TlsStream<TcpStream>, e: &RelayError) {
    let status = e.status_code();
    let body = serde_json::to_string(&ErrorBody::new(e.to_string())).expect("it encodes");
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if tls.write_all(answer.as_bytes()).await.is_ok() {
        let _ = tls.shutdown().await;
    }
}

/// An attached stream: each event (or keep-alive) a chunk, sealed and sent, until the hub
/// lets it go, a write fails or takes longer than `write_within`, or the proxy sends anything
/// or leaves.
async fn hold(
    mut tcp: TcpStream,
    mut writer: RecordWriter,
    mut events: Events,
    write_within: Duration,
) {
    loop {
        let next = std::future::poll_fn(|cx| {
            if tcp.poll_read_ready(cx).is_ready() {
                return Poll::Ready(None);
            }
            events.poll_next_bytes(cx).map(Some)
        })
        .await;
        let mut out = Vec::new();
        let sealed = match next {
            // Readable: its close_notify, anything else, or its end.
            None => match tcp.try_read(&mut [0u8; 64]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                _ => return,
            },
            Some(Some(bytes)) => {
                // With whatever else is queued already: one write, full records, as a busy
                // stream has many events waiting.
                let mut chunks = Vec::with_capacity(bytes.len() + 16);
                push_chunk(&mut chunks, &bytes);
                while chunks.len() < COALESCE {
                    match events.try_next() {
                        Some(more) => push_chunk(&mut chunks, &more),
                        None => break,
                    }
                }
                writer.seal(&chunks, &mut out)
            }
            Some(None) => {
                // The hub let it go: the body's end, then the connection's.
                let _ = writer
                    .seal(b"0\r\n\r\n", &mut out)
                    .and_then(|_| writer.close_notify(&mut out));
                let _ = actix_rt::time::timeout(write_within, tcp.write_all(&out)).await;
                return;
            }
        };
        if sealed.is_err() {
            return;
        }
        match actix_rt::time::timeout(write_within, tcp.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// `bytes` as one chunk of a chunked body, appended to `out`.
fn push_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// An I/O whose first reads are `first`: bytes read from it before it was handed on.
pub struct Rewind<T> {
    first: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    pub fn new(first: Bytes, io: T) -> Rewind<T> {
        Rewind { first, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_attach_head_without_a_body_is_taken_here() {
        let head = b"GET /relay/v1/attach HTTP/1.1\r\nHost: r\r\nOverlay-Relay-Attach: name=a\r\n\
                     Last-Event-ID: 42\r\n\r\n";
        assert_eq!(
            attach_request(head),
            Some(Asked {
                proof: Some("name=a".into()),
                last_event: Some(42),
            })
        );
        let mut pipelined = head.to_vec();
        pipelined.extend_from_slice(b"GET /healthz HTTP/1.1\r\n\r\n");
        for other in [
            &b"POST /relay/v1/attach HTTP/1.1\r\n\r\n"[..],
            b"GET /relay/v1/challenge HTTP/1.1\r\n\r\n",
            b"GET /relay/v1/attach?x=1 HTTP/1.1\r\n\r\n",
            b"GET /relay/v1/attach HTTP/1.1\r\n",
            b"GET /relay/v1/attach HTTP/1.1\r\ncontent-length: 5\r\n\r\n",
            b"GET /relay/v1/attach HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"\r\n\r\n",
            &pipelined,
        ] {
            assert_eq!(
                attach_request(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[actix_rt::test]
    async fn a_rewound_io_reads_what_was_read_first_then_the_rest() {
        let rest: &[u8] = b" world";
        let mut io = Rewind::new(Bytes::from_static(b"hello"), rest);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}

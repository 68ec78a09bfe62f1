//! An attached stream's events as the bytes that go down it: the text of one SSE event (made
//! once, by the hub, when it is queued), the keep-alive comment, and [`Events`], a stream's
//! queue with its keep-alives, which both ways of serving a stream read (see [`super::front`]).
//!
//! The queue carries [`Bytes`], not structured events: a relay holds one queue per attached
//! proxy, and a queue's first block of slots is allocated whole when the queue is made, so
//! what a slot costs is what every idle proxy costs.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::web::Bytes;
use tokio::sync::mpsc;

/// The comment sent when nothing else was: it keeps a NAT's mapping open, and tells the proxy
/// the stream is alive.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The text of one event: `event: {kind}`, its `id` if any, then `data` (one `data:` line per
/// line of it).
pub fn event(kind: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut text = String::with_capacity(data.len() + kind.len() + 32);
    text.push_str("event: ");
    text.push_str(kind);
    text.push('\n');
    if let Some(id) = id {
        text.push_str("id: ");
        text.push_str(&id.to_string());
        text.push('\n');
    }
    for line in data.split('\n') {
        text.push_str("data: ");
        text.push_str(line.strip_suffix('\r').unwrap_or(line));
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

/// An event whose data is `value` in JSON.
pub fn json_event(kind: &str, id: Option<u64>, value: &impl serde::Serialize) -> Bytes {
    // JSON text has no raw line breaks: one `data:` line.
    let data = serde_json::to_string(value).expect("a plain struct encodes");
    event(kind, id, &data)
}

/// A stream's events as they come from its queue, with [`KEEP_ALIVE`] after each quiet
/// `ping_every`; it ends when the hub lets the stream go (the queue's sender dropped).
pub struct Events {
    rx: mpsc::Receiver<Bytes>,
    ping: Pin<Box<actix_rt::time::Sleep>>,
    ping_every: Duration,
}

impl Events {
    pub fn new(rx: mpsc::Receiver<Bytes>, ping_every: Duration) -> Events {
        Events {
            rx,
            ping: Box::pin(actix_rt::time::sleep(ping_every)),
            ping_every,
        }
    }

    /// The next bytes to send: an event, or a keep-alive; `None` once the stream is over.
    pub fn poll_next_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Poll::Ready(next) = self.rx.poll_recv(cx) {
            self.rearm();
            return Poll::Ready(next);
        }
        if self.ping.as_mut().poll(cx).is_ready() {
            self.rearm();
            return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE)));
        }
        Poll::Pending
    }

    /// The next event if one is queued already (to be sent with the one before).
    pub fn try_next(&mut self) -> Option<Bytes> {
        let next = self.rx.try_recv().ok()?;
        self.rearm();
        Some(next)
    }

    fn rearm(&mut self) {
        let at = actix_rt::time::Instant::now() + self.ping_every;
        self.ping.as_mut().reset(at);
    }
}

impl futures_util::Stream for Events {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_bytes(cx).map(|b| b.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_its_kind_id_and_one_data_line_per_line() {
        assert_eq!(
            &event("request", Some(7), "{\"a\":1}")[..],
            b"event: request\nid: 7\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &event("refused", None, "two\r\nlines")[..],
            b"event: refused\ndata: two\ndata: lines\n\n"
        );
        let parsed = crate::hop::sse::SseParser::with_event_limit(1024)
            .push(&json_event(
                "attached",
                None,
                &serde_json::json!({"s": "a\nb"}),
            ))
            .expect("parses");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].event.as_deref(), Some("attached"));
        assert_eq!(parsed[0].data, r#"{"s":"a\nb"}"#);
    }

    #[actix_rt::test]
    async fn a_quiet_stream_gets_keep_alives_and_ends_with_its_queue() {
        use futures_util::StreamExt;
        let (tx, rx) = mpsc::channel(4);
        let mut events = Events::new(rx, Duration::from_millis(20));
        assert_eq!(&events.next().await.unwrap().unwrap()[..], KEEP_ALIVE);
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(&events.next().await.unwrap().unwrap()[..], b"x");
        drop(tx);
        assert!(events.next().await.is_none());
    }
}

//! Live updates to open pages over Server-Sent Events.
//!
//! Owns: the list of connected SSE clients, in two feeds: the page feed (`GET /api/v1/events`,
//! carrying the stored message itself, state changes, stream chunks and clears, so a page never
//! refetches) and the legacy feed (`GET /message_updates`, `data: {"peer_id","timestamp"}`).
//! A client whose connection is gone, or who stopped reading, is dropped.
//!
//! fixes original: events are pushed when a write commits, instead of polling the store every
//! 0.5 s. It never touches the store: the store's writer tells it what each commit changed.

use std::time::Duration;

use actix::prelude::*;
use actix_web_lab::sse;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::contacts::AiNames;
use super::store::{ChatSchema, StoredMessage, WriteOutcome};
use crate::storage::Applied;
use crate::wire::legacy::MessageUpdate;

/// Events a client may fall behind by before it is dropped (its page reconnects and resyncs).
const CLIENT_BUFFER: usize = 1024;
/// How often closed connections are swept even when nothing is published.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One event of the page feed (`GET /api/v1/events`), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PageEvent {
    /// A message was stored (ours or someone's).
    Message { message: StoredMessage },
    /// A stored message changed state (pending → delivered / failed); the whole message.
    State { message: StoredMessage },
    /// Part of an AI reply still being written; not stored. `peer` is the conversation.
    Stream {
        id: String,
        peer: String,
        from: String,
        seq: u32,
        delta: String,
    },
    /// A conversation (`peer`) or every conversation (None) was cleared.
    Cleared { peer: Option<String> },
    /// Who the proxy's directory lists now, and who is online (sent when it changes).
    Presence {
        directory: Vec<crate::wire::data_plane::DirectoryEntry>,
    },
}

impl PageEvent {
    /// The legacy `/message_updates` event for this one, if the original would have sent one.
    fn legacy(&self) -> Option<MessageUpdate> {
        match self {
            PageEvent::Message { message } | PageEvent::State { message } => Some(MessageUpdate {
                peer_id: message.peer.clone(),
                timestamp: crate::wire::rfc3339_ms(message.sent_at_ms),
            }),
            PageEvent::Stream { .. } | PageEvent::Cleared { .. } | PageEvent::Presence { .. } => {
                None
            }
        }
    }
}

/// Which feed a client wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Page,
    Legacy,
}

/// Registers a client; answered once it will receive every later event.
#[derive(Message)]
#[rtype(result = "mpsc::Receiver<sse::Event>")]
pub struct Subscribe {
    pub feed: Feed,
}

/// Sends an event to every client of both feeds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub event: PageEvent,
}

/// How many clients each feed has (for tests and logs).
#[derive(Message)]
#[rtype(result = "(usize, usize)")]
pub struct CountClients;

/// The connected SSE clients.
pub struct Updates {
    pages: Vec<mpsc::Sender<sse::Event>>,
    legacy: Vec<mpsc::Sender<sse::Event>>,
    /// Whose messages are AI replies, shown rendered.
    ai: AiNames,
    /// `overlay_sse_listeners` of each feed (page, legacy), kept up to date here.
    listeners: (Gauge, Gauge),
    /// `overlay_sse_slow_consumers_total` of each feed.
    slow: (Counter, Counter),
}

impl Updates {
    pub fn new(ai: AiNames) -> Updates {
        Updates {
            pages: Vec::new(),
            legacy: Vec::new(),
            ai,
            listeners: Default::default(),
            slow: Default::default(),
        }
    }

    /// Counts each feed's clients (`listeners`) and the clients dropped for falling behind
    /// (`slow`), page feed first, in `/metrics`.
    pub fn counted_in(mut self, listeners: (Gauge, Gauge), slow: (Counter, Counter)) -> Updates {
        self.listeners = listeners;
        self.slow = slow;
        self
    }

    /// The gauges set to the clients there are now.
    fn count(&self) {
        self.listeners.0.set(self.pages.len() as i64);
        self.listeners.1.set(self.legacy.len() as i64);
    }
}

impl Actor for Updates {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            act.pages.retain(|c| !c.is_closed());
            act.legacy.retain(|c| !c.is_closed());
            act.count();
        });
    }
}

/// Sends `event` to every client, keeping only those that took it; counts in `slow` those
/// dropped for falling behind.
fn broadcast(clients: &mut Vec<mpsc::Sender<sse::Event>>, event: sse::Event, slow: &Counter) {
    clients.retain(|client| match client.try_send(event.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(_)) => {
            log::warn!("an SSE client fell {CLIENT_BUFFER} events behind; dropping it");
            slow.inc();
            false
        }
    });
}

impl Handler<Subscribe> for Updates {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        match msg.feed {
            Feed::Page => self.pages.push(tx),
            Feed::Legacy => self.legacy.push(tx),
        }
        self.count();
        MessageResult(rx)
    }
}

impl Updates {
    /// Sends `event` to every client of both feeds.
    fn publish(&mut self, event: &PageEvent) {
        if !self.legacy.is_empty() {
            if let Some(update) = event.legacy() {
                match sse::Data::new_json(&update) {
                    Ok(data) => broadcast(&mut self.legacy, data.into(), &self.slow.1),
                    Err(e) => log::error!("cannot encode a legacy update: {e}"),
                }
            }
        }
        if !self.pages.is_empty() {
            let shown;
            let event = match event {
                PageEvent::Message { message } => {
                    shown = PageEvent::Message {
                        message: super::views::shown(message.clone(), &self.ai),
                    };
                    &shown
                }
                other => other,
            };
            match sse::Data::new_json(event) {
                Ok(data) => broadcast(&mut self.pages, data.into(), &self.slow.0),
                Err(e) => log::error!("cannot encode a page event: {e}"),
            }
        }
        self.count();
    }
}

impl PageEvent {
    /// What the open pages are told of a committed write, if anything.
    fn of_write(outcome: &WriteOutcome) -> Option<PageEvent> {
        Some(match outcome {
            WriteOutcome::Appended {
                duplicate: true, ..
            }
            | WriteOutcome::StateSet { changed: false, .. }
            | WriteOutcome::AutoReplyNextSet { .. } => return None,
            WriteOutcome::Appended { message, .. } => PageEvent::Message {
                message: message.clone(),
            },
            WriteOutcome::StateSet { message, .. } => PageEvent::State {
                message: message.clone(),
            },
            WriteOutcome::Cleared { peer, .. } => PageEvent::Cleared { peer: peer.clone() },
        })
    }
}

impl Handler<Publish> for Updates {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        self.publish(&msg.event);
    }
}

/// A group of the chat store was committed: the open pages learn of it once it is on disk.
impl Handler<Applied<ChatSchema>> for Updates {
    type Result = ();

    fn handle(&mut self, msg: Applied<ChatSchema>, ctx: &mut Context<Self>) {
        let events: Vec<PageEvent> = msg
            .changes
            .iter()
            .filter_map(|(_, outcome)| outcome.as_ref().ok().and_then(PageEvent::of_write))
            .collect();
        if events.is_empty() {
            return;
        }
        msg.durable
            .into_actor(self)
            .map(move |durable, act, _| {
                if durable.is_ok() {
                    events.iter().for_each(|e| act.publish(e));
                }
            })
            .spawn(ctx);
    }
}

impl Handler<CountClients> for Updates {
    type Result = MessageResult<CountClients>;

    fn handle(&mut self, _: CountClients, _: &mut Context<Self>) -> Self::Result {
        self.pages.retain(|c| !c.is_closed());
        self.legacy.retain(|c| !c.is_closed());
        self.count();
        MessageResult((self.pages.len(), self.legacy.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_went_away_is_dropped_and_the_others_keep_receiving() {
        let (alive, mut alive_rx) = mpsc::channel(4);
        let (gone, gone_rx) = mpsc::channel(4);
        drop(gone_rx);
        let mut clients = vec![alive, gone];
        let slow = Counter::default();
        broadcast(&mut clients, sse::Event::Comment("x".into()), &slow);
        assert_eq!(clients.len(), 1);
        assert!(alive_rx.try_recv().is_ok());
        assert_eq!(slow.get(), 0, "gone, not slow");
    }

    #[test]
    fn a_client_that_stopped_reading_is_dropped() {
        let (slow, _slow_rx) = mpsc::channel(1);
        let mut clients = vec![slow];
        let dropped = Counter::default();
        broadcast(&mut clients, sse::Event::Comment("1".into()), &dropped);
        broadcast(&mut clients, sse::Event::Comment("2".into()), &dropped);
        assert!(clients.is_empty());
        assert_eq!(dropped.get(), 1, "counted as a slow consumer");
    }

    #[test]
    fn a_stream_chunk_has_no_legacy_event() {
        let e = PageEvent::Stream {
            id: "x".into(),
            peer: "BOT".into(),
            from: "BOT".into(),
            seq: 0,
            delta: "hi".into(),
        };
        assert_eq!(e.legacy(), None);
    }
}

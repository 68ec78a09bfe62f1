//! Auto-reply: answers a person's message with the next configured line, marked as an
//! auto-reply.
//!
//! Owns: the decision (who is answered), the round-robin position, and counters of what it
//! decided. The position is kept in the chat store (logged like every write), so after a
//! restart the next reply is the next line, not the first one again. It answers only a message from a person: never an auto-reply, an error report, an
//! AI's reply (a name the directory lists as `ai`, or a legacy `auto` message), ourselves, or
//! our own messages. fixes original: two auto-replying users no longer ping-pong forever.
//!
//! It learns who is an AI from the proxy's directory (cached briefly); when the directory
//! cannot be read it does not answer (an unknown sender might be an AI).

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::PeerError;
use super::outgoing::{Outgoing, SendMessage};
use super::proxy_client::ProxyApi;
use super::store::{ChatStore, GetAutoReplyNext, SetAutoReplyNext, StoredMessage, WriteQueue};
use crate::config::AutoReplyConfig;
use crate::wire::data_plane::{DirectoryEntry, Envelope, PeerKind};
use crate::wire::PeerName;

/// How long a fetched directory is trusted.
const DIRECTORY_TTL: Duration = Duration::from_secs(10);

/// A message from someone else was stored (for the first time).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MessageReceived {
    pub message: StoredMessage,
}

/// The counters, for `GET /api/v1/me` (and tests).
#[derive(Message)]
#[rtype(result = "AutoReplyStats")]
pub struct GetAutoReplyStats;

/// What auto-reply has done since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoReplyStats {
    pub enabled: bool,
    /// Received messages it has decided about (answered or not).
    pub seen: u64,
    /// Of those, answered.
    pub answered: u64,
}

/// Why a message is not answered; `None` from [`skip_reason`] means: answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Disabled,
    Ours,
    FromMyself,
    AutoReply,
    ErrorReport,
    FromAnAi,
    UnknownKind,
}

/// Whether `message` gets an auto-reply, given what the directory says of its sender
/// (`Err(())`: the directory could not be read).
pub fn skip_reason(
    message: &StoredMessage,
    me: &str,
    enabled: bool,
    sender_kind: Result<Option<PeerKind>, ()>,
) -> Option<Skip> {
    if !enabled {
        Some(Skip::Disabled)
    } else if message.outgoing {
        Some(Skip::Ours)
    } else if message.from == me {
        Some(Skip::FromMyself)
    } else if message.auto_reply {
        Some(Skip::AutoReply)
    } else if message.error {
        Some(Skip::ErrorReport)
    } else {
        match sender_kind {
            Ok(Some(PeerKind::Ai)) => Some(Skip::FromAnAi),
            // Not in the directory: not an AI reached through our proxy, so a person.
            Ok(Some(PeerKind::Person)) | Ok(None) => None,
            Err(()) => Some(Skip::UnknownKind),
        }
    }
}

/// The auto-replier of one user.
pub struct AutoReply {
    me: String,
    config: AutoReplyConfig,
    /// How many replies were decided, ever (kept in the store): the next line is this modulo
    /// the number of lines.
    next_line: u64,
    stats: AutoReplyStats,
    directory: Option<(Instant, Vec<DirectoryEntry>)>,
    /// Where the replies go: after everything sent before them, in the order decided.
    outgoing: Addr<Outgoing>,
    /// Where the directory is read.
    proxy: ProxyApi,
    /// Where the kept position is read (once, on start) and written.
    store: Addr<ChatStore>,
    writes: Addr<WriteQueue>,
}

/// Where an [`AutoReply`] sends its replies and keeps its place.
pub struct AutoReplyLinks {
    pub outgoing: Addr<Outgoing>,
    pub proxy: ProxyApi,
    pub store: Addr<ChatStore>,
    pub writes: Addr<WriteQueue>,
}

/// The line to send after `decided` replies, round-robin over `count` lines (`count` > 0).
fn line_index(decided: u64, count: usize) -> usize {
    // The remainder is below `count`, so it fits a usize.
    (decided % count as u64) as usize
}

impl AutoReply {
    /// Must be built on the thread the actor runs on (`proxy`'s client is per thread).
    pub fn new(me: &str, config: AutoReplyConfig, links: AutoReplyLinks) -> Self {
        let AutoReplyLinks {
            outgoing,
            proxy,
            store,
            writes,
        } = links;
        let lines = config
            .lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect();
        let config = AutoReplyConfig {
            enabled: config.enabled,
            lines,
        };
        Self {
            me: me.to_string(),
            stats: AutoReplyStats {
                enabled: config.enabled && !config.lines.is_empty(),
                ..Default::default()
            },
            config,
            next_line: 0,
            directory: None,
            outgoing,
            proxy,
            store,
            writes,
        }
    }

    fn kind_of(&self, name: &str) -> Option<Option<PeerKind>> {
        let (at, entries) = self.directory.as_ref()?;
        if at.elapsed() > DIRECTORY_TTL {
            return None;
        }
        let name = PeerName::from(name);
        Some(
            entries
                .iter()
                .find(|e| name == e.name.as_str())
                .map(|e| e.kind),
        )
    }

    /// Decides about `message` and, when it is answered, sends the next line.
    fn decide(&mut self, message: StoredMessage, kind: Result<Option<PeerKind>, ()>) {
        self.stats.seen += 1;
        if let Some(skip) = skip_reason(&message, &self.me, self.stats.enabled, kind) {
            log::debug!(
                "no auto-reply to {} from {}: {skip:?}",
                message.id,
                message.from
            );
            return;
        }
        let line = self.config.lines[line_index(self.next_line, self.config.lines.len())].clone();
        self.next_line += 1;
        self.stats.answered += 1;
        // Kept before the reply is handed over, so it rides along with the reply's own commit.
        self.writes.do_send(SetAutoReplyNext {
            next: self.next_line,
        });
        let mut envelope = Envelope::text(&self.me, &message.from, line);
        envelope.auto_reply = true;
        // Given to the sender now, so the replies keep the order they were decided in.
        let sent = self.outgoing.send(SendMessage { envelope });
        actix::spawn(async move {
            if let Err(e) = sent.await.map_err(PeerError::from).and_then(|r| r) {
                log::warn!("auto-reply to {} failed: {e}", message.from);
            }
        });
    }
}

impl Actor for AutoReply {
    type Context = Context<Self>;

    /// Reads the kept position before deciding about any message.
    fn started(&mut self, ctx: &mut Context<Self>) {
        let read = self.store.send(GetAutoReplyNext);
        ctx.wait(read.into_actor(self).map(|kept, act, _| {
            match kept.map_err(PeerError::from).and_then(|r| r) {
                Ok(next) => act.next_line = next,
                Err(e) => log::warn!("auto-reply starts from its first line: {e}"),
            }
        }));
    }
}

impl Handler<MessageReceived> for AutoReply {
    type Result = ();

    fn handle(&mut self, msg: MessageReceived, ctx: &mut Context<Self>) {
        let message = msg.message;
        // Whatever the directory says, these are never answered: no need to ask.
        let quick = skip_reason(&message, &self.me, self.stats.enabled, Ok(None)).is_some();
        if quick {
            self.decide(message, Ok(None));
            return;
        }
        if let Some(kind) = self.kind_of(&message.from) {
            self.decide(message, Ok(kind));
            return;
        }
        // Wait for the directory before the next message, so lines stay in order.
        let proxy = self.proxy.clone();
        ctx.wait(async move { proxy.directory().await }.into_actor(self).map(
            move |fetched, act, _| match fetched {
                Ok(entries) => {
                    act.directory = Some((Instant::now(), entries));
                    let kind = act.kind_of(&message.from).unwrap_or(None);
                    act.decide(message, Ok(kind));
                }
                Err(e) => {
                    log::warn!("cannot read the directory, so no auto-reply: {e}");
                    act.decide(message, Err(()));
                }
            },
        ));
    }
}

impl Handler<GetAutoReplyStats> for AutoReply {
    type Result = MessageResult<GetAutoReplyStats>;

    fn handle(&mut self, _: GetAutoReplyStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data_plane::Envelope;

    fn from(sender: &str, auto_reply: bool, error: bool) -> StoredMessage {
        let mut e = Envelope::text(sender, "alice", "hi");
        e.auto_reply = auto_reply;
        e.error = error;
        StoredMessage::incoming(&e, "alice")
    }

    const PERSON: Result<Option<PeerKind>, ()> = Ok(Some(PeerKind::Person));

    #[test]
    fn the_line_index_goes_round_the_lines_from_the_kept_count() {
        let lines: Vec<usize> = (0..5).map(|n| line_index(n, 3)).collect();
        assert_eq!(lines, [0, 1, 2, 0, 1]);
        assert_eq!(line_index(u64::MAX, 1), 0);
    }

    #[test]
    fn a_persons_message_is_answered() {
        assert_eq!(
            skip_reason(&from("bob", false, false), "alice", true, PERSON),
            None
        );
        assert_eq!(
            skip_reason(&from("zed", false, false), "alice", true, Ok(None)),
            None
        );
    }

    #[test]
    fn an_auto_reply_is_never_answered() {
        assert_eq!(
            skip_reason(&from("bob", true, false), "alice", true, PERSON),
            Some(Skip::AutoReply)
        );
    }

    #[test]
    fn an_ai_or_an_error_report_is_not_answered() {
        assert_eq!(
            skip_reason(
                &from("BOT", false, false),
                "alice",
                true,
                Ok(Some(PeerKind::Ai))
            ),
            Some(Skip::FromAnAi)
        );
        assert_eq!(
            skip_reason(&from("BOT", false, true), "alice", true, PERSON),
            Some(Skip::ErrorReport)
        );
    }

    #[test]
    fn nothing_is_answered_when_disabled_or_when_the_sender_is_unknown() {
        assert_eq!(
            skip_reason(&from("bob", false, false), "alice", false, PERSON),
            Some(Skip::Disabled)
        );
        assert_eq!(
            skip_reason(&from("bob", false, false), "alice", true, Err(())),
            Some(Skip::UnknownKind)
        );
        assert_eq!(
            skip_reason(&from("ALICE", false, false), "alice", true, PERSON),
            Some(Skip::FromMyself)
        );
    }
}

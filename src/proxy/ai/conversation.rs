//! One conversation turn with an AI endpoint, as the outbox delivers a user's message to it
//! ([`converse`]): the user's turn joins the AI memory (idempotent by message id), the
//! conversation so far is asked ([`answer`], also all of a regenerated answer), each delta is
//! forwarded in order to the own peer as a `POST {peer}/api/v1/stream` chunk by one forwarding
//! task (best effort, never holding up the call), and the complete reply, or the error (with
//! any partial text, marked as cut off), or what had been shown when the user stopped it
//! (marked stopped), is answered to the caller ([`Conversed`]), which queues it durably for the
//! own peer. The call is counted for `/metrics`. Also the pure text helpers of that turn
//! (cutting to the message limit, error text, the reply's envelope, what the model is sent).
//!
//! It does not own the adapters ([`super::desk::AiDesk`] does), the outbox's lanes or retries,
//! and never logs a key (the adapter's errors never contain one).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::Addr;
use futures_channel::mpsc::{self, UnboundedReceiver};
use futures_channel::oneshot;
use futures_util::StreamExt;

use super::{AiAdapter, AiError, Ask, Turn};
use crate::proxy::delivery::Outcome;
use crate::proxy::metrics::{AiMetrics, AiOutcome};
use crate::proxy::store::{MemoryTurn, Remember, Store};
use crate::wire::control_plane::AiEndpoint;
use crate::wire::data_plane::{conversation_id, Body, Envelope, MessageId, StreamChunk};
use crate::wire::now_ms;

/// Fewest turns remembered per conversation, whatever the endpoint's history bound.
const MIN_KEEP: usize = 100;
/// Most turns remembered per conversation.
pub(super) const MAX_KEEP: usize = 5000;
/// Largest stream chunk made by joining deltas that were waiting.
const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// What delivering a user's message to an AI endpoint came to: the outcome for the user's
/// message, and the reply (or error report) to queue for the own peer with it, if any.
#[derive(Debug)]
pub struct Conversed {
    pub outcome: Outcome,
    pub reply: Option<Envelope>,
}

impl Conversed {
    fn answered(reply: Envelope) -> Conversed {
        Conversed {
            outcome: Outcome::Delivered,
            reply: Some(reply),
        }
    }

    /// Not asked at all: the user's message fails with `why`, shown as an error report of
    /// `ai` in the user's conversation with it.
    pub fn refused(ai: &str, user: &str, why: String) -> Conversed {
        Conversed {
            outcome: Outcome::Refused {
                reason: format!("{ai} was not asked: {why}"),
            },
            reply: Some(reply_envelope(
                MessageId::new(),
                ai,
                user,
                why,
                now_ms(),
                true,
            )),
        }
    }

    pub(super) fn not_now(outcome: Outcome) -> Conversed {
        Conversed {
            outcome,
            reply: None,
        }
    }
}

/// Everything one delivery to an AI endpoint needs.
pub struct AiTurn {
    /// This proxy's user.
    pub me: String,
    /// The AI endpoint, as the table spells it (its replies carry this name).
    pub name: String,
    /// Turns remembered per conversation.
    pub keep: usize,
    pub adapter: Addr<AiAdapter>,
    pub store: Addr<Store>,
    /// The desk's one client, for stream chunks.
    pub client: awc::Client,
    pub peer_url: String,
    /// Bound of one stream chunk post, and of waiting for the last ones after the reply.
    pub chunk_timeout: Duration,
    /// Longest message text the peer takes (`delivery.max_message_bytes`).
    pub max_text_bytes: usize,
    /// Where the user's "stop" arrives (see [`Ask::stop`]).
    pub stop: Option<oneshot::Receiver<()>>,
    /// Where the call is counted (`/metrics`).
    pub metrics: AiMetrics,
}

/// How many turns of a conversation with `endpoint` to remember: more than the endpoint is
/// sent, so raising its bound later still finds them.
pub fn turns_to_keep(endpoint: &AiEndpoint) -> usize {
    endpoint
        .history
        .max_turns
        .saturating_mul(2)
        .clamp(MIN_KEEP, MAX_KEEP)
}

/// The AI memory's key for `user`'s conversation with AI endpoint `ai`.
pub fn memory_key(user: &str, ai: &str) -> String {
    conversation_id(user, ai)
}

/// The text of an error message: the error, after the text that had streamed, if any.
pub fn error_text(error: &str, partial: &str) -> String {
    if partial.trim().is_empty() {
        error.to_string()
    } else {
        format!(
            "{}\n\n[The reply was cut off here.] {error}",
            partial.trim_end()
        )
    }
}

/// `text` within `limit` bytes: cut at a character boundary, with a note saying so.
pub fn fit(text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let note = format!(
        "\n\n[The reply was longer than this overlay's message limit of {limit} bytes; the rest was cut.]"
    );
    let room = limit.saturating_sub(note.len());
    let head = &text[..floor_char_boundary(&text, room)];
    if head.is_empty() {
        return text[..floor_char_boundary(&text, limit)].to_string();
    }
    format!("{head}{note}")
}

/// `s` in pieces of at most `max` bytes (at least one character each), in order.
pub fn pieces_of(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut end = floor_char_boundary(rest, max.max(1));
        if end == 0 {
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

/// The largest character boundary of `s` not above `i`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    (0..=i).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0)
}

/// The envelope of an AI endpoint's reply (or error report) `id` for `to`.
pub fn reply_envelope(
    id: MessageId,
    ai: &str,
    to: &str,
    text: String,
    at_ms: u64,
    error: bool,
) -> Envelope {
    Envelope {
        id,
        from: ai.into(),
        to: to.into(),
        conversation: conversation_id(ai, to),
        sent_at_ms: at_ms,
        body: Body::Text { text },
        auto_reply: false,
        error,
        unauthenticated: false,
    }
}

/// What the model is sent: the remembered turns up to and including the user's turn `id`.
pub fn history_until(turns: &[MemoryTurn], id: &MessageId) -> Vec<Turn> {
    let end = turns
        .iter()
        .position(|t| &t.id == id)
        .map_or(turns.len(), |p| p + 1);
    turns[..end]
        .iter()
        .map(|t| Turn::new(t.speaker.clone(), t.text.clone()))
        .collect()
}

/// Delivers the user's `envelope` to the AI endpoint of `turn`; see the module doc. Answers the
/// reply (or the error report) for the own user, which the caller queues durably in the same
/// commit that finishes the user's message: `Delivered` with the reply, `Refused` with the
/// error report (the user's message shows as failed: nobody answered it), or `Retry` without
/// one when the memory could not be written (nothing was lost: the head is tried again, and the
/// memory makes the retry answer under the same reply id).
pub async fn converse(mut turn: AiTurn, envelope: Envelope) -> Conversed {
    // compat: as in the original, an AI endpoint answers this proxy's own user (only the own
    // peer hands this proxy messages for an AI; a legacy post's `from` is only a label).
    let conversation = memory_key(&turn.me, &turn.name);
    let asked = MemoryTurn {
        id: envelope.id.clone(),
        speaker: envelope.from.to_string(),
        text: envelope.body.text().to_string(),
        at_ms: envelope.sent_at_ms,
        reply_id: Some(MessageId::new()),
        stopped: false,
    };
    let turns = match turn.remember(&conversation, asked, None).await {
        Ok(t) => t,
        Err(outcome) => return Conversed::not_now(outcome),
    };
    let reply_id = turns
        .iter()
        .find(|t| t.id == envelope.id)
        .and_then(|t| t.reply_id.clone())
        .unwrap_or_default();
    if let Some(done) = turns.iter().find(|t| t.id == reply_id) {
        // A retry after the reply was remembered: hand the same reply on again (the outbox
        // stores an id once), instead of asking the model a second time.
        let reply = reply_envelope(
            reply_id.clone(),
            &turn.name,
            &turn.me,
            shown_text(done),
            done.at_ms,
            false,
        );
        return Conversed::answered(reply);
    }
    let answered = answer(&mut turn, &turns, &envelope.id, reply_id).await;
    if let Some(said) = answered.remember {
        // Remembered first: a retry after a crash then finds it and re-queues it.
        if let Err(outcome) = turn.remember(&conversation, said, Some(envelope.id)).await {
            return Conversed::not_now(outcome);
        }
    }
    answered.conversed
}

/// What the user is shown of a remembered answer: its text, marked when it was stopped.
pub fn shown_text(said: &MemoryTurn) -> String {
    if said.stopped {
        format!("{}{STOPPED_MARK}", said.text)
    } else {
        said.text.clone()
    }
}

/// What asking came to: the outcome and reply for the user ([`Conversed`]), and the
/// endpoint's turn to remember with it, if it said something. Nothing is written yet.
pub struct Answered {
    pub conversed: Conversed,
    pub remember: Option<MemoryTurn>,
}

/// Asks the AI endpoint of `turn` to answer turn `asked` of the remembered `turns` (the model
/// is sent the turns up to it), under `reply_id`: the second half of [`converse`], and all of
/// a regenerated answer. Writes nothing: the caller remembers [`Answered::remember`] (with the
/// reply, for a regenerated answer: see [`crate::proxy::store::answer_again`]).
///
/// A reply stopped by the user keeps what had been shown: to be remembered as the endpoint's
/// turn (the model sees what it said), marked stopped, and answered so; stopped before any
/// text, the user is told so and nothing is to be remembered.
pub async fn answer(
    turn: &mut AiTurn,
    turns: &[MemoryTurn],
    asked: &MessageId,
    reply_id: MessageId,
) -> Answered {
    let not_now = |outcome| Answered {
        conversed: Conversed::not_now(outcome),
        remember: None,
    };
    let told = |conversed| Answered {
        conversed,
        remember: None,
    };
    let user = turn.me.clone();
    let history = history_until(turns, asked);

    // The page sees the reply being written, chunk by chunk, from one forwarding task.
    let (tx, rx) = mpsc::unbounded();
    let shown = Rc::new(RefCell::new(String::new()));
    let first_delta = Rc::new(Cell::new(None));
    let chunks = Chunks {
        client: turn.client.clone(),
        url: format!("{}/api/v1/stream", turn.peer_url),
        id: reply_id.clone(),
        from: turn.name.clone(),
        conversation: conversation_id(&turn.name, &user),
        timeout: turn.chunk_timeout,
        max_bytes: MAX_CHUNK_BYTES.min(turn.max_text_bytes),
        shown: shown.clone(),
        first_delta: first_delta.clone(),
    };
    let forwarder = actix_rt::spawn(chunks.forward(rx));
    let ask = Ask {
        history,
        deltas: Some(tx),
        stop: turn.stop.take(),
    };
    let asked_at = Instant::now();
    let answer = turn.adapter.send(ask).await;
    let took = asked_at.elapsed();
    // Let the last chunks reach the page before the complete reply does (bounded).
    let _ = actix_rt::time::timeout(turn.chunk_timeout, forwarder).await;
    if let Ok(answer) = &answer {
        let first = first_delta.get().map(|at: Instant| at - asked_at);
        count_call(&turn.metrics, &turn.name, answer, took, first);
    }
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            return not_now(Outcome::Retry {
                what: format!("AI endpoint {}", turn.name),
                error: format!("its adapter stopped: {e}"),
            })
        }
    };
    let (text, stopped) = match answer {
        Ok(reply) => (fit(reply.text, turn.max_text_bytes), false),
        Err(AiError::Stopped) => {
            let shown = shown.take();
            if shown.trim().is_empty() {
                log::info!("{} was stopped before it wrote anything", turn.name);
                let text = format!("[Stopped before {} wrote anything.]", turn.name);
                return told(Conversed::answered(reply_envelope(
                    reply_id,
                    &turn.name,
                    &user,
                    text,
                    now_ms(),
                    false,
                )));
            }
            // Room for the mark, so that what is remembered is what is shown.
            let room = turn.max_text_bytes.saturating_sub(STOPPED_MARK.len());
            (fit(shown.trim_end().to_string(), room), true)
        }
        Err(e) => {
            log::warn!(
                "AI endpoint {} did not answer message {asked}: {e}",
                turn.name
            );
            // Not remembered: the model never said it.
            let text = fit(
                error_text(&e.to_string(), e.partial_text()),
                turn.max_text_bytes,
            );
            // The error is in the conversation; the user's message shows as failed too, so it
            // is never ticked "delivered" when nobody answered it.
            return told(Conversed {
                outcome: Outcome::Refused {
                    reason: format!("{} did not answer: {e}", turn.name),
                },
                reply: Some(reply_envelope(
                    reply_id,
                    &turn.name,
                    &user,
                    text,
                    now_ms(),
                    true,
                )),
            });
        }
    };
    // What the user is shown is what the model is reminded of.
    let said = MemoryTurn {
        id: reply_id.clone(),
        speaker: turn.name.clone(),
        text,
        at_ms: now_ms(),
        reply_id: None,
        stopped,
    };
    let reply = reply_envelope(
        reply_id,
        &turn.name,
        &user,
        shown_text(&said),
        said.at_ms,
        false,
    );
    Answered {
        conversed: Conversed::answered(reply),
        remember: Some(said),
    }
}

/// Counts a call of AI endpoint `name` that answered `answer` after `took` (its first delta
/// after `first`) in `/metrics`.
fn count_call(
    metrics: &AiMetrics,
    name: &str,
    answer: &Result<super::AiReply, AiError>,
    took: Duration,
    first: Option<Duration>,
) {
    let (outcome, usage) = match answer {
        Ok(reply) => (AiOutcome::Ok, reply.usage),
        Err(e) => (outcome_of(e), None),
    };
    let usage = usage.unwrap_or_default();
    metrics.call_finished(
        name,
        outcome,
        took,
        first,
        usage.input_tokens,
        usage.output_tokens,
    );
}

/// The `outcome` label of a failed call.
fn outcome_of(e: &AiError) -> AiOutcome {
    match e {
        AiError::Stopped => AiOutcome::Stopped,
        AiError::Timeout { .. } => AiOutcome::Timeout,
        // The provider refused this request (4xx), or its safety system did.
        AiError::Unauthorized { .. }
        | AiError::Forbidden { .. }
        | AiError::RateLimited { .. }
        | AiError::Quota { .. }
        | AiError::Rejected { .. }
        | AiError::Blocked { .. } => AiOutcome::Refused,
        AiError::MissingKey { .. }
        | AiError::KeyFile { .. }
        | AiError::Config { .. }
        | AiError::NothingToAnswer
        | AiError::Overloaded { .. }
        | AiError::Server { .. }
        | AiError::Unreachable { .. }
        | AiError::Empty { .. }
        | AiError::BrokeOff { .. }
        | AiError::Protocol { .. } => AiOutcome::Error,
    }
}

/// How a stopped reply is marked, after what had been shown of it.
pub const STOPPED_MARK: &str = "\n\n[Stopped.]";

impl AiTurn {
    async fn remember(
        &self,
        conversation: &str,
        said: MemoryTurn,
        only_after: Option<MessageId>,
    ) -> Result<Vec<MemoryTurn>, Outcome> {
        let retry = |error: String| Outcome::Retry {
            what: "the AI memory".to_string(),
            error,
        };
        match self
            .store
            .send(Remember {
                conversation: conversation.to_string(),
                turn: said,
                keep: self.keep,
                only_after,
            })
            .await
        {
            Ok(Ok(turns)) => Ok(turns),
            Ok(Err(e)) => Err(retry(e.to_string())),
            Err(e) => Err(retry(e.to_string())),
        }
    }
}

/// Where the stream chunks of one reply go.
struct Chunks {
    client: awc::Client,
    url: String,
    id: MessageId,
    from: String,
    conversation: String,
    timeout: Duration,
    /// Largest delta of one chunk (the peer refuses more than its message limit).
    max_bytes: usize,
    /// Every delta received, in order: what the page was shown (or was to be), kept when the
    /// user stops the reply.
    shown: Rc<RefCell<String>>,
    /// When the first delta arrived (the time to first token).
    first_delta: Rc<Cell<Option<Instant>>>,
}

impl Chunks {
    /// Posts the deltas in order, one request at a time; deltas that arrived meanwhile travel
    /// together (up to `max_bytes` a chunk). Best effort: after the first failed post the rest
    /// are dropped (the complete reply follows anyway). Ends when the call drops its sender.
    async fn forward(self, mut rx: UnboundedReceiver<String>) {
        let mut seq: u32 = 0;
        let mut failed = false;
        while let Some(mut delta) = rx.next().await {
            while delta.len() < self.max_bytes {
                match rx.try_recv() {
                    Ok(more) => delta.push_str(&more),
                    _ => break,
                }
            }
            if self.first_delta.get().is_none() {
                self.first_delta.set(Some(Instant::now()));
            }
            self.shown.borrow_mut().push_str(&delta);
            if failed {
                continue;
            }
            for piece in pieces_of(&delta, self.max_bytes) {
                if let Err(e) = self.post(seq, piece).await {
                    log::info!(
                        "streaming reply {} to the chat app stopped ({e}); it arrives when complete",
                        self.id
                    );
                    failed = true;
                    break;
                }
                seq += 1;
            }
        }
    }

    async fn post(&self, seq: u32, delta: &str) -> Result<(), String> {
        let chunk = StreamChunk {
            id: self.id.clone(),
            from: self.from.clone(),
            conversation: self.conversation.clone(),
            seq,
            delta: delta.to_string(),
        };
        let post = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .send_json(&chunk);
        match post.await {
            Ok(res) if res.status().is_success() => Ok(()),
            Ok(res) => Err(format!("it answered {}", res.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(id: &str, speaker: &str, text: &str) -> MemoryTurn {
        MemoryTurn {
            id: MessageId::parse(id).unwrap(),
            speaker: speaker.into(),
            text: text.into(),
            at_ms: 1,
            reply_id: None,
            stopped: false,
        }
    }

    #[test]
    fn a_reply_within_the_limit_is_untouched_and_a_longer_one_is_cut_with_a_note() {
        assert_eq!(fit("short".into(), 100), "short");
        let long = "é".repeat(200); // 400 bytes
        let cut = fit(long, 150);
        assert!(cut.len() <= 150, "{}", cut.len());
        assert!(cut.starts_with("éé"), "{cut}");
        assert!(cut.ends_with("bytes; the rest was cut.]"), "{cut}");
        // A limit too small for the note still gives text within it.
        assert_eq!(fit("abcdef".into(), 4), "abcd");
    }

    #[test]
    fn a_delta_is_split_in_order_at_character_boundaries() {
        assert_eq!(pieces_of("abcdef", 4), ["abcd", "ef"]);
        assert_eq!(pieces_of("aéb", 2), ["a", "é", "b"]);
        assert_eq!(pieces_of("é", 1), ["é"], "a character is never split");
        assert!(pieces_of("", 4).is_empty());
    }

    #[test]
    fn an_error_without_streamed_text_is_shown_as_it_is() {
        assert_eq!(
            error_text("No API key for OpenAI: set K.", " "),
            "No API key for OpenAI: set K."
        );
    }

    #[test]
    fn streamed_text_before_an_error_is_kept_and_marked_as_cut_off() {
        assert_eq!(
            error_text("OpenAI's reply broke off: boom.", "Partial "),
            "Partial\n\n[The reply was cut off here.] OpenAI's reply broke off: boom."
        );
    }

    #[test]
    fn the_model_is_sent_the_turns_up_to_the_users_message() {
        let turns = [
            turn("a", "alice", "hi"),
            turn("b", "BOT", "hello"),
            turn("c", "alice", "2+2?"),
            turn("d", "alice", "later"),
        ];
        let h = history_until(&turns, &MessageId::parse("c").unwrap());
        assert_eq!(
            h,
            [
                Turn::new("alice", "hi"),
                Turn::new("BOT", "hello"),
                Turn::new("alice", "2+2?")
            ]
        );
    }

    #[test]
    fn a_reply_is_labelled_with_the_endpoint_and_belongs_to_the_users_conversation() {
        let e = reply_envelope(
            MessageId::parse("r1").unwrap(),
            "MISTRAL",
            "alice",
            "hi".into(),
            5,
            false,
        );
        assert_eq!((e.from.as_str(), e.to.as_str()), ("MISTRAL", "alice"));
        assert_eq!(e.conversation, conversation_id("alice", "mistral"));
        assert!(!e.error && !e.auto_reply);
        assert_eq!(
            memory_key("Alice", "MISTRAL"),
            memory_key("alice", "mistral")
        );
    }

    #[test]
    fn more_turns_are_remembered_than_sent_within_bounds() {
        let mut ep: AiEndpoint = serde_json::from_str(
            r#"{"host":"api.openai.com","port":443,"is_api":true,"history":{"max_turns":40,"max_chars":100}}"#,
        )
        .unwrap();
        assert_eq!(turns_to_keep(&ep), 100);
        ep.history.max_turns = 400;
        assert_eq!(turns_to_keep(&ep), 800);
        ep.history.max_turns = usize::MAX;
        assert_eq!(turns_to_keep(&ep), MAX_KEEP);
    }
}

//! Conversations with AI endpoints, end to end: the [`AiAdapters`] (one [`AiAdapter`] actor
//! per AI entry of the current table: started, updated, stopped with the table), and
//! [`converse`], the one delivery of a user's message to an AI endpoint that the outbox runs
//! for the head of that endpoint's lane (so a second message waits for the first reply).
//!
//! One delivery: the user's turn joins the AI memory (redb, idempotent by message id), the
//! conversation so far is asked, each delta is forwarded in order to the own peer as a
//! `POST {peer}/api/v1/stream` chunk by one forwarding task (best effort, never holding up the
//! call), and the complete reply, or the error (with any partial text, marked as cut off), is
//! queued ONCE, durably, for the own peer through the outbox. Only then is the user's message
//! delivered.
//!
//! It does not talk to providers (the adapter does), does not own the outbox's lanes or
//! retries, and never logs a key (the adapter's errors never contain one).

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, Addr};
use futures_channel::mpsc::{self, UnboundedReceiver};
use futures_util::StreamExt;

use super::ai::{AiAdapter, Ask, Turn, UpdateEndpoint};
use super::delivery::Outcome;
use super::outbox::{Enqueue, Outbox};
use super::store::{MemoryTurn, Origin, Remember, Store};
use crate::config::{AiEndpointConfig, AuthStyle};
use crate::wire::control_plane::{split_url, AiEndpoint, Endpoint, EndpointTable};
use crate::wire::data_plane::{conversation_id, Body, Envelope, MessageId, StreamChunk};
use crate::wire::now_ms;

/// Fewest turns remembered per conversation, whatever the endpoint's history bound.
const MIN_KEEP: usize = 100;
/// Most turns remembered per conversation.
const MAX_KEEP: usize = 5000;
/// Largest stream chunk made by joining deltas that were waiting.
const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// The adapters of the AI entries of the current table, by the table's name.
#[derive(Default)]
pub struct AiAdapters {
    by_name: HashMap<String, (AiEndpoint, Addr<AiAdapter>)>,
    /// The AI endpoints of this proxy's own config: where its keys may be sent.
    local: Vec<AiEndpointConfig>,
}

impl AiAdapters {
    pub fn new(local: Vec<AiEndpointConfig>) -> AiAdapters {
        AiAdapters {
            by_name: HashMap::new(),
            local,
        }
    }

    /// Matches the adapters to `table`: starts one per new AI entry, updates changed ones, and
    /// stops those whose entry went away (dropping the last address stops an actor once the
    /// calls it has under way are answered). Call from an actor on the role's arbiter: that
    /// is where new adapters run.
    pub fn sync(&mut self, table: &EndpointTable) {
        self.by_name.retain(|name, _| {
            let keep = matches!(table.get(name), Some(Endpoint::Ai(_)));
            if !keep {
                log::info!("AI endpoint {name} left the table: its adapter stops");
            }
            keep
        });
        for (name, entry) in table {
            let Endpoint::Ai(endpoint) = entry else {
                continue;
            };
            self.adapter(name, endpoint);
        }
    }

    /// The adapter of AI endpoint `name`, started or updated to `endpoint` if needed.
    pub fn adapter(&mut self, name: &str, endpoint: &AiEndpoint) -> Addr<AiAdapter> {
        let endpoint = &with_local_keys(name, endpoint, &self.local);
        match self.by_name.get_mut(name) {
            Some((current, addr)) => {
                if current != endpoint {
                    log::info!("AI endpoint {name} changed: its adapter is updated");
                    addr.do_send(UpdateEndpoint {
                        endpoint: endpoint.clone(),
                    });
                    *current = endpoint.clone();
                }
                addr.clone()
            }
            None => {
                let addr = AiAdapter::new(name.to_string(), endpoint.clone()).start();
                self.by_name
                    .insert(name.to_string(), (endpoint.clone(), addr.clone()));
                addr
            }
        }
    }

    /// The names with a running adapter, sorted (for tests and logs).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        names.sort();
        names
    }
}

/// The endpoint as this proxy will call it, with key sources from its OWN config only.
///
/// Tables come from the controller, which anyone who can reach it may edit; were a table's
/// `api_key_env` / `api_key_file` honoured, an edit could make the proxy read any variable or
/// file and send it to any URL. So: a key of this proxy's environment or files is sent only to
/// the origin (scheme, host, port) its own config.yaml names for that endpoint, from the key
/// source that config names. An endpoint the local config does not know, or moved to another
/// origin, is called without a local key (a key written in the original's table entry itself,
/// in `headers` or `params`, is still used: it is the table's own, not ours).
pub fn with_local_keys(name: &str, table: &AiEndpoint, local: &[AiEndpointConfig]) -> AiEndpoint {
    let mut e = table.clone();
    let trusted = local
        .iter()
        .find(|c| c.name.matches(name))
        .filter(|c| origin_of_config(c) == origin_of_entry(table));
    match trusted {
        Some(c) => {
            e.api_key_env = c.api_key_env.clone();
            e.api_key_file = c.api_key_file.as_ref().map(|p| p.display().to_string());
        }
        None => {
            e.api_key_env = None;
            e.api_key_file = None;
            // A key written in the table entry itself is the table's own and may be used; the
            // resolver says whether there is a usable one (exactly as it would read it).
            // Otherwise nothing of ours goes out: not even the provider's usual variable.
            let own_key = matches!(
                super::ai::target::resolve(&e).map(|t| t.key),
                Ok(super::ai::keys::KeySource::Legacy { .. })
            );
            if !own_key {
                e.auth_style = Some(AuthStyle::NoAuth);
            }
        }
    }
    e
}

/// (scheme, host, port) of a URL, lower-cased.
fn origin(url: &str) -> (String, String, u16) {
    let scheme = url
        .split_once("://")
        .map_or("http", |(s, _)| s)
        .to_ascii_lowercase();
    let (host, port, _) = split_url(url);
    (scheme, host.to_ascii_lowercase(), port)
}

fn origin_of_config(c: &AiEndpointConfig) -> (String, String, u16) {
    origin(
        c.base_url
            .as_deref()
            .unwrap_or(c.provider.default_base_url()),
    )
}

fn origin_of_entry(e: &AiEndpoint) -> (String, String, u16) {
    match &e.base_url {
        Some(b) => origin(b),
        None => {
            let scheme = if e.port == 443 { "https" } else { "http" };
            (scheme.to_string(), e.host.to_ascii_lowercase(), e.port)
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
    /// The outbox the reply is queued in.
    pub outbox: Option<Addr<Outbox>>,
    /// The outbox's one client, for stream chunks.
    pub client: awc::Client,
    pub peer_url: String,
    /// Bound of one stream chunk post, and of waiting for the last ones after the reply.
    pub chunk_timeout: Duration,
    /// Longest message text the peer takes (`delivery.max_message_bytes`).
    pub max_text_bytes: usize,
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
        from: ai.to_string(),
        to: to.to_string(),
        conversation: conversation_id(ai, to),
        sent_at_ms: at_ms,
        body: Body::Text { text },
        auto_reply: false,
        error,
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

/// Delivers the user's `envelope` to the AI endpoint of `turn`; see the module doc.
/// `Delivered` once the reply or the error report is durably queued for the own user; `Retry`
/// when the memory or the outbox could not be written (nothing was lost: the head is tried
/// again, and the memory makes the retry answer under the same reply id).
pub async fn converse(turn: AiTurn, envelope: Envelope) -> Outcome {
    // compat: as in the original, an AI endpoint answers this proxy's own user (only the own
    // peer hands this proxy messages for an AI; a legacy post's `from` is only a label).
    let user = turn.me.clone();
    let conversation = memory_key(&user, &turn.name);
    let asked = MemoryTurn {
        id: envelope.id.clone(),
        speaker: envelope.from.clone(),
        text: envelope.body.text().to_string(),
        at_ms: envelope.sent_at_ms,
        reply_id: Some(MessageId::new()),
    };
    let turns = match turn.remember(&conversation, asked, None).await {
        Ok(t) => t,
        Err(outcome) => return outcome,
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
            &user,
            done.text.clone(),
            done.at_ms,
            false,
        );
        return turn.enqueue(reply).await;
    }
    let history = history_until(&turns, &envelope.id);

    // The page sees the reply being written, chunk by chunk, from one forwarding task.
    let (tx, rx) = mpsc::unbounded();
    let chunks = Chunks {
        client: turn.client.clone(),
        url: format!("{}/api/v1/stream", turn.peer_url),
        id: reply_id.clone(),
        from: turn.name.clone(),
        conversation: conversation_id(&turn.name, &user),
        timeout: turn.chunk_timeout,
        max_bytes: MAX_CHUNK_BYTES.min(turn.max_text_bytes),
    };
    let forwarder = actix_rt::spawn(chunks.forward(rx));
    let deltas = Some(tx);
    let answer = turn.adapter.send(Ask { history, deltas }).await;
    // Let the last chunks reach the page before the complete reply does (bounded).
    let _ = actix_rt::time::timeout(turn.chunk_timeout, forwarder).await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            return Outcome::Retry {
                what: format!("AI endpoint {}", turn.name),
                error: format!("its adapter stopped: {e}"),
            }
        }
    };
    match answer {
        Ok(reply) => {
            let at_ms = now_ms();
            // What the user is shown is what the model is reminded of.
            let text = fit(reply.text, turn.max_text_bytes);
            let said = MemoryTurn {
                id: reply_id.clone(),
                speaker: turn.name.clone(),
                text: text.clone(),
                at_ms,
                reply_id: None,
            };
            // Remembered first: a retry after a crash then finds it and re-queues it.
            if let Err(outcome) = turn
                .remember(&conversation, said, Some(envelope.id.clone()))
                .await
            {
                return outcome;
            }
            let reply = reply_envelope(reply_id, &turn.name, &user, text, at_ms, false);
            turn.enqueue(reply).await
        }
        Err(e) => {
            log::warn!(
                "AI endpoint {} did not answer message {}: {e}",
                turn.name,
                envelope.id
            );
            // Not remembered: the model never said it.
            let text = fit(
                error_text(&e.to_string(), e.partial_text()),
                turn.max_text_bytes,
            );
            let report = reply_envelope(reply_id, &turn.name, &user, text, now_ms(), true);
            match turn.enqueue(report).await {
                // The error is in the conversation; the user's message shows as failed too, so
                // it is never ticked "delivered" when nobody answered it.
                Outcome::Delivered => Outcome::Refused {
                    reason: format!("{} did not answer: {e}", turn.name),
                },
                retry => retry,
            }
        }
    }
}

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

    /// Queues `reply` durably for its reader; `Delivered` once committed.
    async fn enqueue(&self, reply: Envelope) -> Outcome {
        let retry = |error: String| Outcome::Retry {
            what: "the outbox".to_string(),
            error,
        };
        let Some(outbox) = &self.outbox else {
            return retry("it is not running".to_string());
        };
        match outbox
            .send(Enqueue {
                envelope: reply,
                origin: Origin::Ai,
            })
            .await
        {
            Ok(Ok(_)) => Outcome::Delivered,
            Ok(Err(e)) => retry(e.to_string()),
            Err(e) => retry(e.to_string()),
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

    fn local(yaml: &str) -> Vec<AiEndpointConfig> {
        vec![serde_yaml::from_str(yaml).unwrap()]
    }

    #[test]
    fn a_table_entry_matching_the_local_config_uses_the_local_key_source() {
        let mine = local("{name: BOT, provider: openai, model: m, api_key_env: MY_OPENAI_KEY}");
        let mut table = AiEndpoint::from_config(&mine[0]);
        table.api_key_env = Some("AWS_SECRET_ACCESS_KEY".into());
        table.model_config.model = "gpt-5".into();
        let e = with_local_keys("bot", &table, &mine);
        assert_eq!(e.api_key_env.as_deref(), Some("MY_OPENAI_KEY"));
        assert_eq!(e.model_config.model, "gpt-5", "other edits apply");
        assert_eq!(e.auth_style, None);
    }

    #[test]
    fn an_entry_moved_to_another_origin_gets_no_local_key() {
        let mine = local("{name: BOT, provider: openai, model: m, api_key_env: MY_OPENAI_KEY}");
        let mut table = AiEndpoint::from_config(&mine[0]);
        table.base_url = Some("http://evil.example/v1".into());
        table.api_key_file = Some("/root/.ssh/id_rsa".into());
        let e = with_local_keys("BOT", &table, &mine);
        assert_eq!((e.api_key_env, e.api_key_file), (None, None));
        assert_eq!(
            e.auth_style,
            Some(AuthStyle::NoAuth),
            "not even OPENAI_API_KEY by default"
        );
    }

    #[test]
    fn an_endpoint_unknown_to_the_local_config_gets_no_local_key() {
        let theirs = local("{name: X, provider: openai_compatible, model: m, base_url: 'http://h:1/v1', api_key_env: HOME}");
        let e = with_local_keys("X", &AiEndpoint::from_config(&theirs[0]), &[]);
        assert_eq!(e.api_key_env, None);
        assert_eq!(e.auth_style, Some(AuthStyle::NoAuth));
    }

    #[test]
    fn an_empty_or_unusable_key_in_a_table_entry_brings_no_local_key_along() {
        let theirs =
            local("{name: G, provider: gemini, model: m, base_url: 'https://evil.example/v1beta'}");
        for (header, value) in [
            ("x-goog-api-key", ""),
            ("authorization", "bearer lowercase"),
        ] {
            let mut table = AiEndpoint::from_config(&theirs[0]);
            table.headers.insert(header.into(), value.into());
            let e = with_local_keys("G", &table, &[]);
            assert_eq!(e.auth_style, Some(AuthStyle::NoAuth), "{header}: {value:?}");
        }
        let mut table = AiEndpoint::from_config(&theirs[0]);
        table.params.insert("key".into(), " ".into());
        assert_eq!(
            with_local_keys("G", &table, &[]).auth_style,
            Some(AuthStyle::NoAuth)
        );
    }

    #[test]
    fn a_key_written_in_an_original_table_entry_is_still_used() {
        let theirs = local("{name: G, provider: gemini, model: m}");
        let mut table = AiEndpoint::from_config(&theirs[0]);
        table.params.insert("key".into(), "AIza-table".into());
        let e = with_local_keys("G", &table, &[]);
        assert_eq!(e.auth_style, None, "the table's own key goes out as before");
    }

    fn turn(id: &str, speaker: &str, text: &str) -> MemoryTurn {
        MemoryTurn {
            id: MessageId::parse(id).unwrap(),
            speaker: speaker.into(),
            text: text.into(),
            at_ms: 1,
            reply_id: None,
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
            error_text("The reply from OpenAI broke off: boom.", "Partial "),
            "Partial\n\n[The reply was cut off here.] The reply from OpenAI broke off: boom."
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

    fn table(base_url: Option<&str>) -> EndpointTable {
        let mut t = EndpointTable::new();
        if let Some(url) = base_url {
            let c: crate::config::AiEndpointConfig = serde_yaml::from_str(&format!(
                "{{name: BOT, provider: openai, model: m, base_url: '{url}'}}"
            ))
            .unwrap();
            t.insert(
                "BOT".into(),
                Endpoint::Ai(Box::new(AiEndpoint::from_config(&c))),
            );
        }
        t
    }

    #[actix_rt::test]
    async fn adapters_follow_the_table_started_updated_in_place_and_stopped() {
        let mut adapters = AiAdapters::new(Vec::new());
        adapters.sync(&table(Some("http://127.0.0.1:1/v1")));
        assert_eq!(adapters.names(), ["BOT"]);
        let first = adapters.by_name["BOT"].1.clone();
        let weak = first.downgrade();
        drop(first);

        adapters.sync(&table(Some("http://127.0.0.1:2/v1")));
        let (endpoint, addr) = &adapters.by_name["BOT"];
        assert_eq!(endpoint.base_url.as_deref(), Some("http://127.0.0.1:2/v1"));
        assert!(
            weak.upgrade().is_some_and(|a| &a == addr),
            "the same adapter, updated"
        );

        adapters.sync(&table(None));
        assert!(adapters.names().is_empty());
        // Its last address is gone: it stops once its loop runs.
        for _ in 0..200 {
            if weak.upgrade().is_none() {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the adapter of a removed endpoint did not stop");
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

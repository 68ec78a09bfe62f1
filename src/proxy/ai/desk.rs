//! The [`AiDesk`] actor: this proxy's one way to its AI endpoints. Owns the adapters (one
//! [`AiAdapter`] actor per AI entry of the current table: started, updated, stopped with the
//! table, which it follows as a subscriber of the router) and the AI memory's use (through the
//! store's one writer). The outbox asks it to deliver a user's message ([`Converse`]) and gets
//! the reply back as the answer; the own peer's "clear chat" asks it to forget
//! ([`ForgetConversation`]), its "stop" to stop the reply being written ([`StopReply`]), its
//! "regenerate" to take back the last answer and ask again ([`Regenerate`]).
//!
//! One conversation is answered one reply at a time: the desk knows which reply is being
//! written in each (that is what "stop" ends), and a delivery that arrives meanwhile waits
//! for it to end.
//!
//! It does not own the outbox's lanes or retries, and never logs a key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, ResponseActFuture,
    ResponseFuture,
};
use futures_channel::oneshot;

use super::conversation::{
    answer, converse, memory_key, reply_envelope, turns_to_keep, AiTurn, Conversed,
};
use super::trust::{call_refusal, with_local_keys};
use super::{AiAdapter, UpdateEndpoint};
use crate::config::AiEndpointConfig;
use crate::proxy::delivery::Outcome;
use crate::proxy::error::ProxyError;
use crate::proxy::metrics::AiMetrics;
use crate::proxy::router::TableChanged;
use crate::proxy::routing::{choose_route, Route};
use crate::proxy::store::{last_asked, ForgetMemory, MemoryTurn, Op, ProxySchema, Recall, Store};
use crate::storage::{durable, Write};
use crate::wire::control_plane::{AiEndpoint, Endpoint, EndpointTable};
use crate::wire::data_plane::{Envelope, MessageId};
use crate::wire::now_ms;

/// Delivers the own user's `envelope` to AI endpoint `name` (as the table has it); answers the
/// outcome and the reply to queue for the own peer (see [`converse`]).
#[derive(Message)]
#[rtype(result = "Conversed")]
pub struct Converse {
    pub name: String,
    pub endpoint: Box<AiEndpoint>,
    pub envelope: Envelope,
}

/// Forgets the AI memory of the own user's chat with `with` (every AI chat when None): the
/// next message starts a fresh context. Answers how many remembered turns went.
#[derive(Message)]
#[rtype(result = "Result<u64, ProxyError>")]
pub struct ForgetConversation {
    pub with: Option<String>,
}

/// Stops the reply AI endpoint `with` is writing to the own user, if any: its call is
/// dropped, and what had been shown is kept, marked as stopped. Answers whether one was.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct StopReply {
    pub with: String,
}

/// Asks AI endpoint `with` again for its answer to the own user's last message. Answered once
/// asked: the new answer streams to the page, then is queued for the own peer like any reply
/// (or the error report, if it fails), and replaces the old one in the memory, in the same
/// commit. Refused while a reply is being written, for a name that is not an AI endpoint of
/// the table, and when the user has written nothing to answer.
#[derive(Message)]
#[rtype(result = "Result<String, ProxyError>")]
pub struct Regenerate {
    pub with: String,
}

/// What the desk needs to know about its proxy.
#[derive(Debug, Clone)]
pub struct DeskSettings {
    /// This proxy's user.
    pub me: String,
    /// The own peer, where stream chunks go.
    pub peer_url: String,
    /// The AI endpoints of this proxy's own config.yaml: the only place keys are named.
    pub local_ai: Vec<AiEndpointConfig>,
    /// Bound of one stream chunk post, and of waiting for the last ones after the reply.
    pub chunk_timeout: Duration,
    /// Longest message text the peer takes (`delivery.max_message_bytes`).
    pub max_text_bytes: usize,
    /// Where its calls are counted (`/metrics`).
    pub metrics: AiMetrics,
}

/// The actor.
pub struct AiDesk {
    settings: DeskSettings,
    adapters: AiAdapters,
    store: Addr<Store>,
    /// The proxy's HTTP client (the outbox's), for stream chunks.
    client: awc::Client,
    /// The reply being written, per conversation (by its memory key).
    writing: HashMap<String, Writing>,
    /// How many replies were started: numbers them, so that only a reply's own end clears
    /// its entry.
    started: u64,
    /// The current table.
    table: Arc<EndpointTable>,
}

/// A reply being written.
struct Writing {
    number: u64,
    /// The user's "stop" (taken when used).
    stop: Option<oneshot::Sender<()>>,
    /// Deliveries to the same conversation waiting for this reply to end.
    waiting: Vec<oneshot::Sender<()>>,
}

impl AiDesk {
    /// Must be built on the thread of `client` (awc clients are per thread): the outbox's,
    /// shared, as building one costs about a megabyte.
    pub fn new(settings: DeskSettings, store: Addr<Store>, client: awc::Client) -> AiDesk {
        AiDesk {
            adapters: AiAdapters::new(settings.local_ai.clone()),
            settings,
            store,
            client,
            writing: HashMap::new(),
            started: 0,
            table: Arc::default(),
        }
    }

    /// The AI entry of the table called `name` (compared as routing compares names), with
    /// the table's spelling.
    fn table_ai(&self, name: &str) -> Option<(String, Box<AiEndpoint>)> {
        match choose_route(&self.table, &self.settings.me, name.trim()) {
            Route::Ai { name, endpoint } => Some((name, endpoint)),
            _ => None,
        }
    }

    /// Everything one reply of AI endpoint `name` needs, with its "stop", noted as being
    /// written in `conversation`; answers its number for [`AiDesk::written`].
    fn start_turn(
        &mut self,
        name: &str,
        endpoint: &AiEndpoint,
        conversation: &str,
    ) -> (AiTurn, u64) {
        let (stop, stopped) = oneshot::channel();
        self.started += 1;
        let number = self.started;
        self.writing.insert(
            conversation.to_string(),
            Writing {
                number,
                stop: Some(stop),
                waiting: Vec::new(),
            },
        );
        let s = &self.settings;
        let turn = AiTurn {
            me: s.me.clone(),
            adapter: self.adapters.adapter(name, endpoint),
            keep: turns_to_keep(endpoint),
            name: name.to_string(),
            store: self.store.clone(),
            client: self.client.clone(),
            peer_url: s.peer_url.clone(),
            chunk_timeout: s.chunk_timeout,
            max_text_bytes: s.max_text_bytes,
            stop: Some(stopped),
            metrics: s.metrics.clone(),
        };
        (turn, number)
    }

    /// Reply `number` in `conversation` ended: the next delivery waiting there goes ahead.
    fn written(&mut self, conversation: &str, number: u64) {
        if self
            .writing
            .get(conversation)
            .is_some_and(|w| w.number == number)
        {
            if let Some(w) = self.writing.remove(conversation) {
                for waiting in w.waiting {
                    let _ = waiting.send(());
                }
            }
        }
    }
}

impl Actor for AiDesk {
    type Context = Context<Self>;
}

impl Handler<TableChanged> for AiDesk {
    type Result = ();

    fn handle(&mut self, msg: TableChanged, _: &mut Context<Self>) {
        self.adapters.sync(&msg.endpoints);
        self.table = msg.endpoints;
    }
}

impl Handler<Converse> for AiDesk {
    type Result = ResponseActFuture<Self, Conversed>;

    fn handle(&mut self, msg: Converse, ctx: &mut Context<Self>) -> Self::Result {
        let s = &self.settings;
        // Issue 13, defect 5: an entry at an origin this proxy's config does not name is not
        // called at all; the user is told why instead.
        if let Some(why) = call_refusal(&msg.name, &msg.endpoint, &s.local_ai) {
            log::warn!("message {} to {}: {why}", msg.envelope.id, msg.name);
            let refused = Conversed::refused(&msg.name, &s.me, why);
            return Box::pin(actix::fut::ready(refused));
        }
        let conversation = memory_key(&s.me, &msg.name);
        if let Some(writing) = self.writing.get_mut(&conversation) {
            // A regenerated answer (or an abandoned attempt) is being written: this one comes
            // after it, asked again once it ends.
            let (go, wait) = oneshot::channel();
            writing.waiting.push(go);
            let desk = ctx.address();
            let name = msg.name.clone();
            return Box::pin(wrap_future(async move {
                let _ = wait.await;
                match desk.send(Resume(msg)).await {
                    Ok(conversed) => conversed,
                    Err(e) => Conversed::not_now(Outcome::Retry {
                        what: format!("AI endpoint {name}"),
                        error: format!("the AI desk stopped: {e}"),
                    }),
                }
            }));
        }
        let (turn, number) = self.start_turn(&msg.name, &msg.endpoint, &conversation);
        Box::pin(wrap_future(converse(turn, msg.envelope)).map(
            move |conversed, desk: &mut Self, _| {
                desk.written(&conversation, number);
                conversed
            },
        ))
    }
}

/// A delivery that waited for another reply of its conversation: asked as the table has its
/// endpoint now (it may have changed, or gone, meanwhile).
#[derive(Message)]
#[rtype(result = "Conversed")]
struct Resume(Converse);

impl Handler<Resume> for AiDesk {
    type Result = ResponseActFuture<Self, Conversed>;

    fn handle(&mut self, Resume(mut msg): Resume, ctx: &mut Context<Self>) -> Self::Result {
        match self.table_ai(&msg.name) {
            Some((_, endpoint)) => {
                msg.endpoint = endpoint.clone();
                <Self as Handler<Converse>>::handle(self, msg, ctx)
            }
            None => Box::pin(actix::fut::ready(Conversed::not_now(Outcome::Retry {
                what: format!("AI endpoint {}", msg.name),
                error: "it is no longer in this proxy's endpoint table".into(),
            }))),
        }
    }
}

impl Handler<StopReply> for AiDesk {
    type Result = bool;

    fn handle(&mut self, msg: StopReply, _: &mut Context<Self>) -> bool {
        let conversation = memory_key(&self.settings.me, &msg.with);
        let stop = self
            .writing
            .get_mut(&conversation)
            .and_then(|w| w.stop.take());
        match stop {
            Some(stop) => {
                log::info!("the reply of {} is stopped by its reader", msg.with);
                stop.send(()).is_ok()
            }
            None => false,
        }
    }
}

impl Handler<Regenerate> for AiDesk {
    type Result = ResponseActFuture<Self, Result<String, ProxyError>>;

    fn handle(&mut self, msg: Regenerate, _: &mut Context<Self>) -> Self::Result {
        let refuse = |e: ProxyError| -> Self::Result { Box::pin(actix::fut::ready(Err(e))) };
        let Some((name, endpoint)) = self.table_ai(&msg.with) else {
            return refuse(ProxyError::NotFound(format!(
                "{} is not an AI endpoint of this proxy's table: only an AI's answer can be \
                 regenerated",
                msg.with
            )));
        };
        let s = &self.settings;
        if let Some(why) = call_refusal(&name, &endpoint, &s.local_ai) {
            return refuse(ProxyError::Conflict(format!("{name} is not asked: {why}")));
        }
        let conversation = memory_key(&s.me, &name);
        if self.writing.contains_key(&conversation) {
            return refuse(ProxyError::Conflict(format!(
                "{name} is still writing a reply: stop it, or wait for it to end, then \
                 regenerate"
            )));
        }
        // From here until its answer is written, nothing else writes this conversation.
        let (turn, number) = self.start_turn(&name, &endpoint, &conversation);
        let recall = self.store.send(Recall {
            conversation: conversation.clone(),
        });
        let read = wrap_future(async move { recall.await.map_err(ProxyError::unavailable)? });
        Box::pin(read.map(move |turns, desk: &mut Self, ctx| {
            let asked = match &turns {
                Ok(turns) => last_asked(turns, &name).map(|t| t.id.clone()),
                Err(_) => None,
            };
            let (turns, asked) = match (turns, asked) {
                (Ok(turns), Some(asked)) => (turns, asked),
                (turns, _) => {
                    desk.written(&conversation, number);
                    turns?;
                    return Err(ProxyError::Conflict(format!(
                        "there is nothing for {name} to answer again: you have not written to \
                         it since the chat was last cleared"
                    )));
                }
            };
            log::info!("{name}: asked again for its answer to message {asked}");
            let asked_again = format!("{name} is asked again for its answer");
            let again = answer_again(turn, turns, asked, desk.store.clone());
            ctx.spawn(wrap_future(again).map(move |(), desk: &mut Self, _| {
                desk.written(&conversation, number);
            }));
            Ok(asked_again)
        }))
    }
}

/// Asks the endpoint of `turn` again for its answer to turn `asked` of `turns`, and writes the
/// outcome in ONE commit: the reply (or error report) queued for the own peer, and, when the
/// endpoint said something, the memory's answers to `asked` replaced by it. Until then the
/// memory keeps the old answer; a failed or empty attempt leaves it so (the page shows it).
async fn answer_again(
    mut turn: AiTurn,
    turns: Vec<MemoryTurn>,
    asked: MessageId,
    store: Addr<Store>,
) {
    let reply_id = MessageId::new();
    let answered = answer(&mut turn, &turns, &asked, reply_id.clone()).await;
    let mut ops = Vec::new();
    if let Some(said) = answered.remember {
        ops.push(Op::AnswerAgain {
            conversation: memory_key(&turn.me, &turn.name),
            asked,
            answer: said,
            keep: turn.keep,
        });
    }
    let envelope = match answered.conversed {
        Conversed {
            reply: Some(reply), ..
        } => reply,
        Conversed { outcome, .. } => {
            let why = match outcome {
                Outcome::Retry { what, error } => format!("{what}: {error}"),
                Outcome::Refused { reason } | Outcome::Unsupported { reason } => reason,
                Outcome::Delivered => "it gave no answer".to_string(),
            };
            let text = format!("The answer could not be asked for again: {why}");
            reply_envelope(reply_id, &turn.name, &turn.me, text, now_ms(), true)
        }
    };
    ops.push(Op::ai_reply(&turn.me, envelope));
    let (write, written) = Write::new(ops, true);
    store.do_send(write);
    for rx in written {
        if let Err(e) = durable::<ProxySchema>(rx).await {
            log::error!(
                "the answer {} gave again could not be stored, and is lost: {e}",
                turn.name
            );
            return;
        }
    }
}

impl Handler<ForgetConversation> for AiDesk {
    type Result = ResponseFuture<Result<u64, ProxyError>>;

    fn handle(&mut self, msg: ForgetConversation, _: &mut Context<Self>) -> Self::Result {
        let conversation = msg.with.map(|with| memory_key(&self.settings.me, &with));
        let forget = self.store.send(ForgetMemory { conversation });
        Box::pin(async move { forget.await.map_err(ProxyError::unavailable)? })
    }
}

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
                // Routine (the proxy of a user named like an AI endpoint never calls it): not
                // worth a line at the default level.
                log::debug!("AI endpoint {name} is no longer in the table: its adapter stops");
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

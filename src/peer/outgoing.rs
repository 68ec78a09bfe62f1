//! The [`Outgoing`] actor: the one way a message of this user leaves, and the one owner of
//! sending on the peer.
//!
//! Owns the **line**: this user's messages the proxy has not taken yet, in the order they were
//! given ([`SendMessage`], from the page's `/send_message` and from auto-reply), and what became
//! of each hand-over. A message is stored as pending first, then handed to the proxy; kept as
//! failed (with the reason) when the proxy refuses it; kept pending ("waiting for your proxy")
//! when the proxy cannot take it now, and handed over again after a growing wait (doubling from
//! `retry_initial_ms` up to `retry_max_ms`), until the proxy takes it or `expire_after_secs`
//! after it was written it is marked failed. The proxy's outbox is idempotent by id, so handing
//! a message over twice is safe.
//!
//! Order holds by construction: one hand-over is under way at a time, it takes the messages at
//! the head of the line (many in one request under load), and a message the proxy could not
//! take stays at the head, so nothing given later is handed over before it. Whoever waits for a
//! message behind it is told at once that it is kept.
//!
//! The store is the truth across restarts: at start, and on every pass before the held line is
//! tried again, the store's unsent index is read; what it lists and the line does not know
//! (left unsent by a crash or a stop) joins the line in the order it was written, and what the
//! line keeps but the store no longer lists (its chat was cleared, a receipt settled it) leaves.
//!
//! The pure decisions (what is due, expiry, the next wait, what the next hand-over takes, what
//! an answer does to the line) are plain functions and the [`Line`] type, tested below. The
//! HTTP calls are [`super::proxy_client`]'s; the messages are in the store.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::prelude::*;
use tokio::sync::oneshot;

use super::error::PeerError;
use super::proxy_client::{Handed, ProxyApi};
use super::store::{
    AppendOutgoing, ChatStore, ListUnsent, SetDeliveryState, SetHandOver, StoredMessage, WriteQueue,
};
use crate::wire::data_plane::{
    conversation_id, Accepted, Body, DeliveryState, Envelope, MessageId,
};
use crate::wire::now_ms;

/// Most messages handed over in one batch, and their most bytes of text.
const MAX_BATCH: usize = 256;
const MAX_BATCH_TEXT_BYTES: usize = 96 * 1024;
/// How often the unsent index is looked at when nothing waits (for a hand-over that neither
/// succeeded nor failed visibly, e.g. its result could not be written).
const IDLE_TICK: Duration = Duration::from_secs(5);
/// A message still unsent this long after it was written is handed over again even if no
/// failure was recorded (its first attempt is over by then: calls time out sooner).
const STUCK_AFTER_MS: u64 = 30_000;
/// Shortest wait between passes, whatever the config says.
const MIN_WAIT_MS: u64 = 100;

/// Stores `envelope` as our pending message and hands it to the proxy after everything given
/// before it. Answers Ok only once the proxy has it durably (and our copy is on disk). Refused
/// by the proxy: kept as failed with the reason, and that refusal is the answer. The proxy
/// unreachable (or busy): [`PeerError::NotSentYet`], but the message is kept pending and handed
/// over again until the proxy takes it or it expires.
/// fixes original: "success" is never answered for a message nobody has, and nothing is lost.
#[derive(Message)]
#[rtype(result = "Result<StoredMessage, PeerError>")]
pub struct SendMessage {
    pub envelope: Envelope,
}

/// The resend timing, from the config's `delivery` section.
#[derive(Debug, Clone)]
pub struct OutgoingSettings {
    pub expire_after_secs: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl OutgoingSettings {
    fn initial_ms(&self) -> u64 {
        self.retry_initial_ms.max(MIN_WAIT_MS)
    }
    fn max_ms(&self) -> u64 {
        self.retry_max_ms.max(self.initial_ms())
    }
    fn expire_after_ms(&self) -> u64 {
        self.expire_after_secs.saturating_mul(1000)
    }
}

/// What the sender of a message is told once its first hand-over is over (and recorded).
type Told = Result<(), PeerError>;

// ---------------------------------------------------------------------------------------------
// The line: pure state and decisions.

/// One of our messages in the line.
struct Queued {
    envelope: Envelope,
    /// Its position in the store, once stored; until then nothing behind it is handed over.
    seq: Option<u64>,
    /// Whoever gave it waits to hear how its first hand-over ends.
    reply: Option<oneshot::Sender<Told>>,
    /// The store has it as waiting for the proxy.
    waiting: bool,
}

/// What the actor records (and tells) after a decision of the [`Line`].
enum Step {
    /// The proxy holds it.
    Taken {
        accepted: Accepted,
        reply: Option<oneshot::Sender<Told>>,
    },
    /// The proxy could not take it now: it stays in the line. `record`: the store does not know
    /// yet that it waits.
    Kept {
        id: MessageId,
        to: String,
        error: PeerError,
        record: bool,
        reply: Option<oneshot::Sender<Told>>,
    },
    /// The proxy refused it for good.
    Refused {
        id: MessageId,
        to: String,
        error: PeerError,
        reply: Option<oneshot::Sender<Told>>,
    },
    /// Not taken for too long: given up on.
    Expired { id: MessageId, to: String },
}

/// The messages the proxy has not taken yet, in the order they go; see the module docs.
#[derive(Default)]
struct Line {
    queue: VecDeque<Queued>,
    /// The hand-over under way: the head of the line, taken out in order.
    in_flight: Vec<Queued>,
    /// Left the line; their outcome is being written. Not handed over again meanwhile (the
    /// store still lists them as unsent).
    recording: HashSet<MessageId>,
    /// The proxy could not take the head: nothing goes until the next pass.
    held: bool,
    /// A pass is reading the store: nothing goes until it is over.
    reading: bool,
}

impl Line {
    /// `envelope` joins the end of the line, not stored yet.
    fn push(&mut self, envelope: Envelope, reply: Option<oneshot::Sender<Told>>) {
        self.queue.push_back(Queued {
            envelope,
            seq: None,
            reply,
            waiting: false,
        });
    }

    /// The store has message `id` at `seq`.
    fn stored(&mut self, id: &MessageId, seq: u64) {
        if let Some(q) = self.queue.iter_mut().find(|q| q.envelope.id == *id) {
            q.seq = Some(seq);
        }
    }

    /// Message `id` leaves the line unsent (it could not be stored, or was stored before).
    fn remove(&mut self, id: &MessageId) {
        self.queue.retain(|q| q.envelope.id != *id);
    }

    /// A hand-over or a pass is under way.
    fn busy(&self) -> bool {
        !self.in_flight.is_empty() || self.reading
    }

    /// Someone waits for a stored message the held line has not tried yet.
    fn someone_waits(&self) -> bool {
        self.queue
            .iter()
            .any(|q| q.seq.is_some() && q.reply.is_some())
    }

    /// Whether `id` is ours to hand over or being recorded (not to be taken from the store).
    fn knows(&self, id: &MessageId) -> bool {
        self.recording.contains(id)
            || self
                .queue
                .iter()
                .chain(&self.in_flight)
                .any(|q| q.envelope.id == *id)
    }

    /// The next hand-over: the stored messages at the head of the line, up to [`MAX_BATCH`] and
    /// [`MAX_BATCH_TEXT_BYTES`] (at least one), taken out in order. Nothing while busy or held,
    /// or while the head is not stored yet.
    fn next_batch(&mut self) -> Vec<Envelope> {
        if self.busy() || self.held {
            return Vec::new();
        }
        let mut text_bytes = 0;
        while let Some(head) = self.queue.front() {
            let size = head.envelope.body.text().len();
            let full =
                self.in_flight.len() >= MAX_BATCH || text_bytes + size > MAX_BATCH_TEXT_BYTES;
            if head.seq.is_none() || (!self.in_flight.is_empty() && full) {
                break;
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            text_bytes += size;
            self.in_flight.push(q);
        }
        self.in_flight.iter().map(|q| q.envelope.clone()).collect()
    }

    /// The answers to the hand-over under way, one per message in order. A message the proxy
    /// could not take goes back to the head, the line holds, and everyone waiting behind it is
    /// told it is kept.
    fn finish(&mut self, results: Vec<Handed>) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut kept = Vec::new();
        let mut results = results.into_iter();
        for mut q in std::mem::take(&mut self.in_flight) {
            let result = results.next().unwrap_or_else(|| {
                Err(PeerError::ProxyUnreachable(
                    "the proxy answered for fewer messages".into(),
                ))
            });
            let (id, to) = (q.envelope.id.clone(), q.envelope.to.clone());
            match result {
                Ok(accepted) => {
                    self.recording.insert(id);
                    steps.push(Step::Taken {
                        accepted,
                        reply: q.reply.take(),
                    });
                }
                Err(error) if error.is_transient() => {
                    steps.push(Step::Kept {
                        id,
                        to: to.into_string(),
                        error,
                        record: !q.waiting,
                        reply: q.reply.take(),
                    });
                    q.waiting = true;
                    kept.push(q);
                }
                Err(error) => {
                    self.recording.insert(id.clone());
                    steps.push(Step::Refused {
                        id,
                        to: to.into_string(),
                        error,
                        reply: q.reply.take(),
                    });
                }
            }
        }
        let Some(error) = steps.iter().find_map(|s| match s {
            Step::Kept { error, .. } => Some(error.clone()),
            _ => None,
        }) else {
            return steps;
        };
        self.held = true;
        // Those behind would fail the same way; they wait, and are told so now.
        for q in self.queue.iter_mut().filter(|q| q.seq.is_some()) {
            if q.reply.is_some() || !q.waiting {
                steps.push(Step::Kept {
                    id: q.envelope.id.clone(),
                    to: q.envelope.to.to_string(),
                    error: error.clone(),
                    record: !q.waiting,
                    reply: q.reply.take(),
                });
                q.waiting = true;
            }
        }
        for q in kept.into_iter().rev() {
            self.queue.push_front(q);
        }
        steps
    }

    /// A pass: `unsent` is what the store lists as not taken yet, oldest first. What the line
    /// has told about but the store no longer lists leaves; what waited too long expires; what
    /// the store lists, the line does not know and is [`due`] joins the line by its position in
    /// the store. The line is no longer held.
    fn reconcile(
        &mut self,
        unsent: Vec<StoredMessage>,
        started_ms: u64,
        now: u64,
        expire_after_ms: u64,
    ) -> Vec<Step> {
        let listed: HashSet<&MessageId> = unsent.iter().map(|m| &m.id).collect();
        let mut steps = Vec::new();
        let mut stay = VecDeque::with_capacity(self.queue.len());
        for q in std::mem::take(&mut self.queue) {
            // Someone still waits to hear of it, or it is not stored yet: it stays.
            let told = q.reply.is_none() && q.seq.is_some();
            if told && !listed.contains(&q.envelope.id) {
                continue;
            }
            if told && expired(q.envelope.sent_at_ms, expire_after_ms, now) {
                self.recording.insert(q.envelope.id.clone());
                steps.push(Step::Expired {
                    id: q.envelope.id,
                    to: q.envelope.to.into_string(),
                });
                continue;
            }
            stay.push_back(q);
        }
        self.queue = stay;
        for m in unsent {
            if self.knows(&m.id) {
                continue;
            }
            if expired(m.sent_at_ms, expire_after_ms, now) {
                self.recording.insert(m.id.clone());
                steps.push(Step::Expired { id: m.id, to: m.to });
            } else if due(&m, started_ms, now) {
                let at = self
                    .queue
                    .iter()
                    .position(|q| q.seq.is_none_or(|seq| seq > m.seq))
                    .unwrap_or(self.queue.len());
                self.queue.insert(
                    at,
                    Queued {
                        envelope: envelope_of(&m),
                        seq: Some(m.seq),
                        reply: None,
                        waiting: m.waiting.is_some(),
                    },
                );
            }
        }
        self.held = false;
        steps
    }
}

/// Whether `m`, unsent in the store and not in the line, is handed over by a pass now: it waits
/// for the proxy, or it is older than this peer's start (left unsent by a crash or stop), or
/// its first attempt is long over.
fn due(m: &StoredMessage, started_ms: u64, now: u64) -> bool {
    m.waiting.is_some()
        || m.sent_at_ms < started_ms
        || now.saturating_sub(m.sent_at_ms) > STUCK_AFTER_MS
}

/// Whether a message written at `sent_at_ms` has waited for the proxy too long and is given up.
fn expired(sent_at_ms: u64, expire_after_ms: u64, now: u64) -> bool {
    now.saturating_sub(sent_at_ms) > expire_after_ms
}

/// The wait after `wait_ms` while the proxy stays unreachable: doubled, up to `max_ms`.
fn next_wait(wait_ms: u64, max_ms: u64) -> u64 {
    wait_ms.saturating_mul(2).min(max_ms)
}

/// The envelope our stored message was sent in (same id: the proxy takes it once).
pub fn envelope_of(m: &StoredMessage) -> Envelope {
    Envelope {
        id: m.id.clone(),
        from: m.from.clone(),
        to: m.to.as_str().into(),
        conversation: conversation_id(&m.from, &m.to),
        sent_at_ms: m.sent_at_ms,
        body: Body::Text {
            text: m.text.clone(),
        },
        auto_reply: m.auto_reply,
        error: m.error,
        unauthenticated: false,
    }
}

// ---------------------------------------------------------------------------------------------
// The actor.

/// The sender of this user's messages; see the module docs.
pub struct Outgoing {
    store: Addr<ChatStore>,
    writes: Addr<WriteQueue>,
    proxy: ProxyApi,
    settings: OutgoingSettings,
    line: Line,
    /// The proxy takes `POST /api/v1/outbox/batch` (until it answers 404/405).
    batch: bool,
    /// When this peer started (Unix ms): anything unsent from before is handed over again.
    started_ms: u64,
    /// The wait before the next pass while the proxy cannot take the head of the line.
    wait_ms: u64,
    /// A pass was asked for while busy: it runs once the hand-over under way is over.
    pass_due: bool,
    /// The next pass (a retry while held, else the idle look at the store).
    timer: Option<SpawnHandle>,
}

impl Outgoing {
    /// Must be built on the thread the actor runs on (`proxy`'s client is per thread).
    pub fn new(
        store: Addr<ChatStore>,
        writes: Addr<WriteQueue>,
        proxy: ProxyApi,
        settings: OutgoingSettings,
    ) -> Self {
        Self {
            store,
            writes,
            proxy,
            wait_ms: settings.initial_ms(),
            settings,
            line: Line::default(),
            batch: true,
            started_ms: now_ms(),
            pass_due: false,
            timer: None,
        }
    }

    /// Hands over the head of the line, or starts the pass the line needs; else waits.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.line.busy() {
            return;
        }
        if self.pass_due || (self.line.held && self.line.someone_waits()) {
            // A new message tries the held line again at once, its older messages first.
            return self.start_pass(ctx);
        }
        let envelopes = self.line.next_batch();
        if envelopes.is_empty() {
            if !self.line.held && self.timer.is_none() {
                self.schedule(IDLE_TICK, ctx);
            }
            return;
        }
        let (proxy, batch) = (self.proxy.clone(), self.batch);
        let work = async move { proxy.hand_over(envelopes, batch).await };
        ctx.spawn(
            wrap_future(work).map(|(results, batch), act: &mut Self, ctx| {
                act.batch = batch;
                let steps = act.line.finish(results);
                if act.line.held {
                    let wait = act.wait_ms;
                    act.wait_ms = next_wait(wait, act.settings.max_ms());
                    act.schedule(Duration::from_millis(wait), ctx);
                } else if steps.iter().any(|s| matches!(s, Step::Taken { .. })) {
                    act.wait_ms = act.settings.initial_ms();
                }
                act.record(steps, ctx);
                act.kick(ctx);
            }),
        );
    }

    /// Runs a pass after `after` (replacing the one scheduled, if any).
    fn schedule(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.run_later(after, |act, ctx| {
            act.timer = None;
            act.start_pass(ctx);
        }));
    }

    /// Reads the store's unsent messages, brings the line in line with them, and lets it go.
    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        if self.line.busy() {
            self.pass_due = true;
            return;
        }
        self.pass_due = false;
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.line.reading = true;
        let read = self.store.send(ListUnsent);
        ctx.spawn(wrap_future(read).map(|listed, act: &mut Self, ctx| {
            act.line.reading = false;
            match listed.map_err(PeerError::from).and_then(|r| r) {
                Ok(unsent) => {
                    let now = now_ms();
                    let expire = act.settings.expire_after_ms();
                    let steps = act.line.reconcile(unsent, act.started_ms, now, expire);
                    act.record(steps, ctx);
                }
                Err(e) => {
                    log::warn!("cannot read the unsent messages: {e}");
                    act.line.held = false;
                }
            }
            act.kick(ctx);
        }));
    }

    /// Writes what became of each message, then tells whoever waits for it. The writes are
    /// queued here, in the order of the steps; a message that left the line is forgotten once
    /// its write is over.
    fn record(&mut self, steps: Vec<Step>, ctx: &mut Context<Self>) {
        for step in steps {
            match step {
                Step::Taken { accepted, reply } => {
                    let id = accepted.id.clone();
                    let taken = self.writes.send(SetHandOver {
                        id: id.clone(),
                        waiting: None,
                    });
                    if accepted.state == DeliveryState::Pending {
                        // Not waited for: the proxy holds the message durably now, whatever
                        // this write does. Were it lost (a crash before it reached the disk),
                        // the message would be handed over again at restart and the proxy
                        // would know it by its id.
                        tell(reply, Ok(()));
                        self.forget_after(id.clone(), logged(taken, id), ctx);
                    } else {
                        // An original proxy: its 200 already says what became of the message.
                        let state = self.writes.send(SetDeliveryState {
                            id: id.clone(),
                            state: accepted.state,
                        });
                        let written = async move {
                            logged(taken, id.clone()).await;
                            if let Err(e) = state.await.map_err(PeerError::from).and_then(|r| r) {
                                log::error!("cannot record the state of message {id}: {e}");
                            }
                            tell(reply, Ok(()));
                        };
                        self.forget_after(accepted.id, written, ctx);
                    }
                }
                Step::Kept {
                    id,
                    to,
                    error,
                    record,
                    reply,
                } => {
                    if !record {
                        log::info!("message {id} to {to} still waits: {error}");
                        tell(reply, Err(not_sent_yet(&error)));
                        continue;
                    }
                    log::warn!("message {id} to {to} waits for the proxy: {error}");
                    let waiting = self.writes.send(SetHandOver {
                        id: id.clone(),
                        waiting: Some(format!("waiting for your proxy: {error}")),
                    });
                    actix::spawn(async move {
                        if let Err(e) = waiting.await.map_err(PeerError::from).and_then(|r| r) {
                            log::error!("cannot record the state of message {id}: {e}");
                        }
                        tell(reply, Err(not_sent_yet(&error)));
                    });
                }
                Step::Refused {
                    id,
                    to,
                    error,
                    reply,
                } => {
                    log::warn!("message {id} to {to} refused: {error}");
                    let failed = self.writes.send(SetDeliveryState {
                        id: id.clone(),
                        state: DeliveryState::Failed {
                            reason: error.reason(),
                        },
                    });
                    let logged_id = id.clone();
                    let written = async move {
                        if let Err(e) = failed.await.map_err(PeerError::from).and_then(|r| r) {
                            log::error!("cannot record the state of message {logged_id}: {e}");
                        }
                        tell(reply, Err(error));
                    };
                    self.forget_after(id, written, ctx);
                }
                Step::Expired { id, to } => {
                    let reason = format!(
                        "not sent: your proxy could not be reached for {}",
                        crate::hop::backoff::human_duration(self.settings.expire_after_secs)
                    );
                    log::warn!("message {id} to {to}: {reason}");
                    let failed = self.writes.send(SetDeliveryState {
                        id: id.clone(),
                        state: DeliveryState::Failed { reason },
                    });
                    let logged_id = id.clone();
                    let written = async move {
                        if let Err(e) = failed.await.map_err(PeerError::from).and_then(|r| r) {
                            log::warn!("cannot mark message {logged_id} failed: {e}");
                        }
                    };
                    self.forget_after(id, written, ctx);
                }
            }
        }
    }

    /// Runs `written`, then forgets `id` (it left the line; the store knows what became of it).
    fn forget_after(
        &mut self,
        id: MessageId,
        written: impl Future<Output = ()> + 'static,
        ctx: &mut Context<Self>,
    ) {
        ctx.spawn(wrap_future(written).map(move |(), act: &mut Self, _| {
            act.line.recording.remove(&id);
        }));
    }
}

/// Logs a failed hand-over bookkeeping write.
async fn logged(write: actix::dev::Request<WriteQueue, SetHandOver>, id: MessageId) {
    if let Err(e) = write.await.map_err(PeerError::from).and_then(|r| r) {
        log::warn!("cannot record that message {id} was handed over: {e}");
    }
}

fn tell(reply: Option<oneshot::Sender<Told>>, told: Told) {
    if let Some(reply) = reply {
        let _ = reply.send(told);
    }
}

/// What the user is told of a message kept for later.
fn not_sent_yet(error: &PeerError) -> PeerError {
    PeerError::NotSentYet {
        reason: error.to_string(),
    }
}

impl Actor for Outgoing {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Whatever is unsent at start goes first.
        self.start_pass(ctx);
    }
}

impl Handler<SendMessage> for Outgoing {
    type Result = ResponseActFuture<Self, Result<StoredMessage, PeerError>>;

    fn handle(&mut self, msg: SendMessage, _: &mut Context<Self>) -> Self::Result {
        // Its place in the line is taken now, in the order messages are given.
        let id = msg.envelope.id.clone();
        let (reply, told) = oneshot::channel();
        let message = StoredMessage::outgoing(&msg.envelope);
        self.line.push(msg.envelope, Some(reply));
        // Our copy reaches the disk while the proxy takes its own: the answer waits for both.
        let append = self.writes.send(AppendOutgoing { message });
        let appended = async move { append.await.map_err(PeerError::from).and_then(|r| r) };
        Box::pin(
            wrap_future(appended)
                .map(move |appended, act: &mut Self, ctx| {
                    match &appended {
                        Ok((stored, _)) if !stored.duplicate => {
                            act.line.stored(&id, stored.message.seq)
                        }
                        _ => act.line.remove(&id),
                    }
                    act.kick(ctx);
                    appended
                })
                .then(|appended, _, _| {
                    wrap_future(async move {
                        let (stored, durable) = appended?;
                        if stored.duplicate {
                            durable.await?;
                            return Ok(stored.message);
                        }
                        let told = told.await.unwrap_or_else(|_| {
                            Err(not_sent_yet(&PeerError::ProxyUnreachable(
                                "the chat app is shutting down".into(),
                            )))
                        });
                        if let Err(e) = durable.await {
                            log::error!("message {} could not be stored: {e}", stored.message.id);
                            return Err(e);
                        }
                        told.map(|()| stored.message)
                    })
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(sent_at_ms: u64, waiting: Option<&str>) -> StoredMessage {
        let mut e = Envelope::text("alice", "Bob", "hi");
        e.id = MessageId::parse("m1").unwrap();
        e.sent_at_ms = sent_at_ms;
        let mut m = StoredMessage::outgoing(&e);
        m.waiting = waiting.map(str::to_string);
        m
    }

    /// Our stored message `id` at `seq`, written at `sent_at_ms`.
    fn unsent(id: &str, seq: u64, sent_at_ms: u64, waiting: bool) -> StoredMessage {
        let mut e = Envelope::text("alice", "bob", id);
        e.id = MessageId::parse(id).unwrap();
        e.sent_at_ms = sent_at_ms;
        let mut m = StoredMessage::outgoing(&e);
        m.seq = seq;
        m.waiting = waiting.then(|| "waiting for your proxy: down".to_string());
        m
    }

    fn envelope(id: &str) -> Envelope {
        let mut e = Envelope::text("alice", "bob", id);
        e.id = MessageId::parse(id).unwrap();
        e
    }

    /// A line with `ids` given and stored in that order, each with someone waiting.
    fn line_of(ids: &[&str]) -> (Line, Vec<oneshot::Receiver<Told>>) {
        let mut line = Line::default();
        let mut told = Vec::new();
        for (seq, id) in ids.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            line.push(envelope(id), Some(tx));
            line.stored(&MessageId::parse(id).unwrap(), seq as u64 + 1);
            told.push(rx);
        }
        (line, told)
    }

    fn ids(envelopes: &[Envelope]) -> Vec<&str> {
        envelopes.iter().map(|e| e.id.as_str()).collect()
    }

    fn queued(line: &Line) -> Vec<&str> {
        line.queue.iter().map(|q| q.envelope.id.as_str()).collect()
    }

    fn accepted(id: &str) -> Handed {
        Ok(Accepted {
            id: MessageId::parse(id).unwrap(),
            state: DeliveryState::Pending,
        })
    }

    fn down() -> Handed {
        Err(PeerError::ProxyUnreachable("connection refused".into()))
    }

    fn refused() -> Handed {
        Err(PeerError::ProxyRefused {
            status: 404,
            reason: "Unknown peer: bob".into(),
        })
    }

    #[test]
    fn a_message_is_handed_over_again_when_it_waits_predates_the_start_or_is_stuck() {
        let start = 1_000_000;
        assert!(due(&ours(start + 5, Some("down")), start, start + 10));
        assert!(due(&ours(start - 1, None), start, start + 10));
        assert!(!due(&ours(start + 5, None), start, start + 10));
        assert!(due(
            &ours(start + 5, None),
            start,
            start + 5 + STUCK_AFTER_MS + 1
        ));
    }

    #[test]
    fn a_message_expires_after_the_configured_time() {
        assert!(!expired(ours(1000, None).sent_at_ms, 60_000, 61_000));
        assert!(expired(ours(1000, None).sent_at_ms, 60_000, 61_001));
    }

    #[test]
    fn the_envelope_of_a_stored_message_keeps_its_id_and_conversation() {
        let m = ours(42, None);
        let e = envelope_of(&m);
        assert_eq!(e.id, m.id);
        assert_eq!(e.conversation, conversation_id("alice", "bob"));
        assert_eq!(e.sent_at_ms, 42);
        assert_eq!(e.body.text(), "hi");
    }

    #[test]
    fn the_wait_doubles_up_to_the_most() {
        assert_eq!(next_wait(200, 30_000), 400);
        assert_eq!(next_wait(20_000, 30_000), 30_000);
        assert_eq!(next_wait(u64::MAX, 30_000), 30_000);
    }

    #[test]
    fn the_head_of_the_line_goes_in_one_batch_and_nothing_more_while_it_is_under_way() {
        let (mut line, _told) = line_of(&["a", "b", "c"]);
        assert_eq!(ids(&line.next_batch()), ["a", "b", "c"]);
        line.push(envelope("d"), None);
        line.stored(&MessageId::parse("d").unwrap(), 4);
        assert!(line.next_batch().is_empty(), "one hand-over at a time");
        line.finish(vec![accepted("a"), accepted("b"), accepted("c")]);
        assert_eq!(ids(&line.next_batch()), ["d"]);
    }

    #[test]
    fn nothing_goes_past_a_message_the_store_has_not_stored_yet() {
        let mut line = Line::default();
        line.push(envelope("a"), None);
        line.push(envelope("b"), None);
        line.stored(&MessageId::parse("b").unwrap(), 2);
        assert!(line.next_batch().is_empty());
        line.stored(&MessageId::parse("a").unwrap(), 1);
        assert_eq!(ids(&line.next_batch()), ["a", "b"]);
    }

    #[test]
    fn a_batch_stops_at_its_most_bytes_of_text_but_takes_at_least_one() {
        let mut line = Line::default();
        for (seq, id) in ["a", "b"].iter().enumerate() {
            let mut e = envelope(id);
            e.body = Body::Text {
                text: "x".repeat(MAX_BATCH_TEXT_BYTES),
            };
            line.push(e, None);
            line.stored(&MessageId::parse(id).unwrap(), seq as u64);
        }
        assert_eq!(ids(&line.next_batch()), ["a"]);
    }

    #[test]
    fn a_message_the_proxy_could_not_take_stays_at_the_head_and_holds_the_line() {
        let (mut line, _told) = line_of(&["a", "b"]);
        assert_eq!(ids(&line.next_batch()), ["a", "b"]);
        line.push(envelope("c"), None);
        line.stored(&MessageId::parse("c").unwrap(), 3);
        let steps = line.finish(vec![down(), down()]);
        assert!(line.held);
        assert_eq!(queued(&line), ["a", "b", "c"], "in the order given");
        assert!(line.next_batch().is_empty(), "held until the next pass");
        let kept: Vec<bool> = steps
            .iter()
            .map(|s| matches!(s, Step::Kept { record: true, .. }))
            .collect();
        assert_eq!(kept, [true, true, true], "each recorded as waiting once");
        // A later failure does not record them again.
        line.reconcile(
            vec![
                unsent("a", 1, 0, true),
                unsent("b", 2, 0, true),
                unsent("c", 3, 0, true),
            ],
            0,
            1,
            60_000,
        );
        assert_eq!(ids(&line.next_batch()), ["a", "b", "c"]);
        let steps = line.finish(vec![down(), down(), down()]);
        assert!(steps
            .iter()
            .all(|s| matches!(s, Step::Kept { record: false, .. })));
    }

    #[test]
    fn whoever_waits_behind_a_kept_message_is_told_at_once_that_theirs_is_kept_too() {
        let (mut line, mut told) = line_of(&["a"]);
        line.next_batch();
        let (tx, rx) = oneshot::channel();
        line.push(envelope("b"), Some(tx));
        line.stored(&MessageId::parse("b").unwrap(), 2);
        told.push(rx);
        let steps = line.finish(vec![down()]);
        let tell: Vec<(&str, bool)> = steps
            .iter()
            .map(|s| match s {
                Step::Kept { id, reply, .. } => (id.as_str(), reply.is_some()),
                _ => ("?", false),
            })
            .collect();
        assert_eq!(tell, [("a", true), ("b", true)]);
        assert!(!line.someone_waits(), "everyone was told");
    }

    #[test]
    fn a_refusal_or_a_taken_message_leaves_the_line_and_the_rest_goes_on() {
        let (mut line, _told) = line_of(&["a", "b", "c"]);
        line.next_batch();
        let steps = line.finish(vec![accepted("a"), refused(), accepted("c")]);
        assert!(!line.held);
        assert!(matches!(steps[1], Step::Refused { .. }));
        assert!(line.queue.is_empty());
        // Being recorded: not taken from the store again meanwhile.
        assert!(line.knows(&MessageId::parse("b").unwrap()));
    }

    #[test]
    fn a_pass_takes_in_what_the_store_has_left_unsent_in_the_order_it_was_written() {
        let mut line = Line::default();
        line.push(envelope("new"), None);
        let steps = line.reconcile(
            vec![unsent("old1", 1, 10, false), unsent("old2", 2, 20, true)],
            100,
            200,
            60_000,
        );
        assert!(steps.is_empty());
        assert_eq!(queued(&line), ["old1", "old2", "new"]);
        // Known now: a second pass adds nothing.
        line.reconcile(vec![unsent("old1", 1, 10, false)], 100, 200, 60_000);
        assert_eq!(
            queued(&line),
            ["old1", "new"],
            "old2 left the store: it leaves"
        );
    }

    #[test]
    fn a_pass_leaves_alone_a_recent_message_it_does_not_know() {
        let mut line = Line::default();
        line.reconcile(vec![unsent("fresh", 1, 150, false)], 100, 200, 60_000);
        assert!(line.queue.is_empty(), "its first attempt may be under way");
    }

    #[test]
    fn a_pass_gives_up_on_what_waited_too_long_but_not_on_what_someone_waits_for() {
        let (mut line, _told) = line_of(&["asked"]);
        let mut kept = envelope("kept");
        kept.sent_at_ms = 0;
        line.push(kept, None);
        line.stored(&MessageId::parse("kept").unwrap(), 2);
        let steps = line.reconcile(
            vec![
                unsent("asked", 1, 0, false),
                unsent("kept", 2, 0, true),
                unsent("lost", 3, 0, true),
            ],
            100,
            61_001,
            60_000,
        );
        let expired: Vec<&str> = steps
            .iter()
            .map(|s| match s {
                Step::Expired { id, .. } => id.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(expired, ["kept", "lost"]);
        assert_eq!(queued(&line), ["asked"]);
        assert!(!line.held);
    }
}

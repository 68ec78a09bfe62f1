//! The [`Outbox`] actor: durable store-and-forward. Owns the in-memory lanes (one FIFO per
//! destination, head-of-line, so messages stay in order per conversation), the group commit
//! (concurrent requests share ONE redb write transaction; nobody is answered before it
//! committed), the retry timers (exponential backoff with full jitter, persisted so a restart
//! resumes), expiry, and the receipts the own peer gets when a message it sent changes state.
//!
//! It does not parse HTTP requests (routes do) and does not own the table (the router does; it
//! sends each new one here). The HTTP calls themselves are in [`super::delivery`]; delivering to
//! an AI endpoint is the one arm [`Outbox::deliver_to_ai`], which runs [`super::ai_chat`] with
//! the adapters this actor keeps matched to its table.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, ResponseFuture,
    SpawnHandle,
};
use futures_channel::oneshot;
use futures_util::future::{ready, LocalBoxFuture};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::ai_chat::{self, AiAdapters, AiTurn};
use super::delivery::{self, Outcome};
use super::error::ProxyError;
use super::router::{choose_route, Route};
use super::store::{self, Lane, Op, OpResult, Origin, Payload, PruneSeen, Record, SharedDb, Store};
use crate::config::{DeliveryConfig, InstanceName};
use crate::group_commit::{CommitTimer, GroupWriter};
use crate::hop::backoff::{full_jitter_ms, human_duration, XorShift};
use crate::wal::Wal;
use crate::wire::control_plane::{AiEndpoint, EndpointTable};
use crate::wire::data_plane::{DeliveryState, Envelope, MessageId, Receipt};
use crate::wire::now_ms;

/// Durably queue `envelope`; answers once committed. Ok(true): the id was seen before and
/// nothing new was queued.
#[derive(Message)]
#[rtype(result = "Result<bool, ProxyError>")]
pub struct Enqueue {
    pub envelope: Envelope,
    pub origin: Origin,
}

/// Durably queue several envelopes in ONE commit (a relayed batch); answers once committed, with
/// `duplicate` per envelope, in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<bool>, ProxyError>")]
pub struct EnqueueMany {
    pub envelopes: Vec<Envelope>,
    pub origin: Origin,
}

/// The router has a new table: routes may have changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TableChanged {
    pub endpoints: EndpointTable,
}

/// What is queued, per lane (for `GET /api/v1/outbox`).
#[derive(Message)]
#[rtype(result = "OutboxStatus")]
pub struct GetStatus;

/// Answer of `GET /api/v1/outbox`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Items not yet handed on, all lanes together.
    pub queued: usize,
    pub lanes: Vec<LaneStatus>,
}

/// One destination's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneStatus {
    /// `peer/inbox`, `peer/receipts`, or the destination name.
    pub lane: String,
    pub queued: usize,
    /// Failed attempts of the item at its head.
    pub head_attempts: u32,
    pub last_error: Option<String>,
}

/// What the outbox needs to know about its proxy.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub me: InstanceName,
    pub peer_url: String,
    pub delivery: DeliveryConfig,
    /// The AI endpoints of this proxy's own config.yaml: the only place keys are named.
    pub local_ai: Vec<crate::config::AiEndpointConfig>,
}

struct Item {
    seq: u64,
    record: Record,
}

#[derive(Default)]
struct LaneState {
    items: VecDeque<Item>,
    /// An attempt for the head is under way.
    busy: bool,
    timer: Option<SpawnHandle>,
    /// The route changed during an attempt: retry at once if it fails.
    woken: bool,
    /// Items still to be sent one by one, after a batch was refused as a whole.
    solo: usize,
}

/// How often ids seen long ago are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Most envelopes relayed in one request.
const MAX_BATCH: usize = 128;

/// Most receipts posted to the own peer at once (one by one: concurrently; else in one batch).
const RECEIPT_WINDOW: usize = 32;
const RECEIPT_BATCH: usize = 512;

/// Where the result of one op goes once committed.
type Reply = oneshot::Sender<Result<OpResult, ProxyError>>;

struct Pending {
    op: Op,
    reply: Option<Reply>,
}

/// The actor.
pub struct Outbox {
    settings: OutboxSettings,
    endpoints: EndpointTable,
    store: Addr<Store>,
    /// The one HTTP client of this actor.
    client: awc::Client,
    rng: XorShift,
    lanes: HashMap<Lane, LaneState>,
    /// The store's database, whose outbox this actor writes, and its log.
    db: SharedDb,
    wal: Wal,
    /// The next outbox key, once read (see [`store::commit`]).
    next_seq: Option<u64>,
    /// Waiting for the next group commit.
    batch: Vec<Pending>,
    /// When the next group commit happens.
    timer: CommitTimer,
    /// Loaded from the store at start, put in lanes when the actor starts.
    initial: Vec<(u64, Record)>,
    /// This actor's own address (set when it starts), for replies queued from async work.
    addr: Option<Addr<Outbox>>,
    /// The own peer takes `POST /api/v1/inbox/batch` (until it answers 404).
    peer_inbox_batch: bool,
    /// The own peer takes `POST /api/v1/receipts/batch` (until it refuses one).
    peer_receipts_batch: bool,
    /// One adapter per AI endpoint of `endpoints` (started with the actor).
    adapters: AiAdapters,
}

impl Outbox {
    /// The outbox of `db` (its log `wal`, as opened with it by [`store::open`]), holding
    /// `items` from the start; `store` does the rest of the store's work.
    pub fn new(
        settings: OutboxSettings,
        endpoints: EndpointTable,
        store: Addr<Store>,
        (db, wal): (SharedDb, Wal),
        items: Vec<(u64, Record)>,
    ) -> Outbox {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(
                settings.delivery.attempt_timeout_secs.max(1),
            ))
            .finish();
        let adapters = AiAdapters::new(settings.local_ai.clone());
        Outbox {
            settings,
            endpoints,
            store,
            client,
            rng: XorShift::from_entropy(),
            lanes: HashMap::new(),
            db,
            wal,
            next_seq: None,
            batch: Vec::new(),
            timer: CommitTimer::default(),
            initial: items,
            addr: None,
            peer_inbox_batch: true,
            peer_receipts_batch: true,
            adapters,
        }
    }

    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.delivery.attempt_timeout_secs.max(1))
    }

    /// Adds `op` to the next group commit, starting one unless one is under way.
    fn submit(&mut self, op: Op, reply: Option<Reply>, ctx: &mut Context<Self>) {
        self.batch.push(Pending { op, reply });
        self.flush(ctx);
    }

    /// Adds several ops to the next group commit at once (they share one transaction).
    fn submit_many(&mut self, ops: Vec<(Op, Option<Reply>)>, ctx: &mut Context<Self>) {
        self.batch
            .extend(ops.into_iter().map(|(op, reply)| Pending { op, reply }));
        self.flush(ctx);
    }

    /// Commits what is waiting, when [`CommitTimer::schedule`] says: accepted items are
    /// urgent (someone waits for the answer), the rest is bookkeeping.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if !self.batch.is_empty() {
            let urgent = self.batch.iter().any(|p| p.op.is_urgent());
            CommitTimer::schedule(self, urgent, ctx);
        }
    }

    /// Commits everything waiting in ONE write transaction (not waiting for the disk) and logs
    /// it: new items join their lanes at once, and each request is answered once the log has
    /// the group on disk (see [`crate::wal`]).
    fn commit_now(&mut self, ctx: &mut Context<Self>) {
        self.timer.committing(ctx);
        if self.batch.is_empty() {
            return;
        }
        let (ops, replies): (Vec<Op>, Vec<Option<Reply>>) = std::mem::take(&mut self.batch)
            .into_iter()
            .map(|p| (p.op, p.reply))
            .unzip();
        let (db, next) = (&self.db, &mut self.next_seq);
        let committed = serde_json::to_vec(&ops)
            .map_err(ProxyError::storage)
            .and_then(|logged| {
                self.wal.commit(&logged, |lsn, durable| {
                    store::with_db(db, |db| store::commit(db, next, &ops, lsn, durable))
                })
            });
        match committed {
            Ok((results, flushed)) => {
                let mut answers = Vec::new();
                for ((op, reply), result) in ops.into_iter().zip(replies).zip(results) {
                    self.committed(op, result, ctx);
                    if let Some(reply) = reply {
                        answers.push((reply, result));
                    }
                }
                if !answers.is_empty() {
                    ctx.spawn(wrap_future(flushed).map(move |flushed, _: &mut Self, _| {
                        let flushed = flushed.map_err(ProxyError::Storage);
                        for (reply, result) in answers {
                            let _ = reply.send(flushed.clone().map(|()| result));
                        }
                    }));
                }
            }
            Err(e) => {
                log::error!("outbox commit of {} changes failed: {e}", ops.len());
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        self.flush(ctx);
    }

    /// A committed op: a newly stored item joins its lane.
    fn committed(&mut self, op: Op, result: OpResult, ctx: &mut Context<Self>) {
        let record = match (op, result) {
            (Op::Accept { record, .. }, OpResult::Stored { .. }) => record,
            (
                Op::Finish {
                    follow_up: Some(record),
                    ..
                },
                OpResult::Stored { .. },
            ) => record,
            _ => return,
        };
        let OpResult::Stored { seq } = result else {
            return;
        };
        let lane = record.lane.clone();
        self.lanes
            .entry(lane.clone())
            .or_default()
            .items
            .push_back(Item { seq, record });
        self.kick(&lane, ctx);
    }

    /// Starts an attempt for the head of `lane` when it is due, else sets its timer.
    fn kick(&mut self, lane: &Lane, ctx: &mut Context<Self>) {
        let now = now_ms();
        let Some(state) = self.lanes.get_mut(lane) else {
            return;
        };
        if state.busy {
            return;
        }
        let Some(head) = state.items.front() else {
            if let Some(t) = state.timer.take() {
                ctx.cancel_future(t);
            }
            self.lanes.remove(lane);
            return;
        };
        if let Some(t) = state.timer.take() {
            ctx.cancel_future(t);
        }
        if head.record.next_try_ms > now {
            let wait = Duration::from_millis(head.record.next_try_ms - now);
            let again = lane.clone();
            state.timer = Some(ctx.run_later(wait, move |act, ctx| {
                if let Some(s) = act.lanes.get_mut(&again) {
                    s.timer = None;
                }
                act.kick(&again, ctx);
            }));
            return;
        }
        state.busy = true;
        if let Some((seqs, attempt)) = self.receipts_attempt(lane) {
            let lane = lane.clone();
            ctx.spawn(
                wrap_future(attempt).map(move |outcomes, act: &mut Self, ctx| {
                    act.attempted_receipts(lane, seqs, outcomes, ctx)
                }),
            );
            return;
        }
        if let Some((seqs, attempt)) = self.batch_attempt(lane) {
            let lane = lane.clone();
            ctx.spawn(
                wrap_future(attempt).map(move |outcome, act: &mut Self, ctx| {
                    act.attempted_batch(lane, seqs, outcome, ctx)
                }),
            );
            return;
        }
        let Some(head) = self.lanes.get(lane).and_then(|s| s.items.front()) else {
            return;
        };
        let seq = head.seq;
        let record = head.record.clone();
        let attempt = self.attempt(&record);
        let lane = lane.clone();
        ctx.spawn(
            wrap_future(attempt)
                .map(move |outcome, act: &mut Self, ctx| act.attempted(lane, seq, outcome, ctx)),
        );
    }

    /// Several items from the head of `lane` in one request (relay to a native proxy, or the
    /// own peer's inbox while it accepts batches), when the lane holds more than one item and is
    /// not sending one by one.
    fn batch_attempt(&self, lane: &Lane) -> Option<(Vec<u64>, LocalBoxFuture<'static, Outcome>)> {
        let state = self.lanes.get(lane)?;
        if state.solo > 0 || state.items.len() < 2 {
            return None;
        }
        let (url, what) = match lane {
            Lane::Remote(to) => {
                match choose_route(&self.endpoints, self.settings.me.as_str(), to) {
                    Route::Proxy { name, endpoint } if endpoint.native => (
                        format!("{}/api/v1/relay/batch", endpoint.base_url()),
                        format!("{name}'s proxy"),
                    ),
                    _ => return None,
                }
            }
            Lane::PeerInbox if self.peer_inbox_batch => (
                format!("{}/api/v1/inbox/batch", self.settings.peer_url),
                "your chat app".to_string(),
            ),
            _ => return None,
        };
        let budget = self.settings.delivery.max_body_bytes / 2;
        let (mut seqs, mut envelopes, mut size) = (Vec::new(), Vec::new(), 2usize);
        for item in state.items.iter().take(MAX_BATCH) {
            let Payload::Message { envelope, .. } = &item.record.payload else {
                break;
            };
            size += envelope.body.text().len() + envelope.from.len() + envelope.to.len() + 512;
            if size > budget && !envelopes.is_empty() {
                break;
            }
            seqs.push(item.seq);
            envelopes.push(envelope.clone());
        }
        if envelopes.len() < 2 {
            return None;
        }
        let attempt = delivery::post_batch(
            self.client.clone(),
            url,
            what,
            envelopes,
            self.attempt_timeout(),
        );
        Some((seqs, attempt.boxed_local()))
    }

    /// Receipts from the head of the receipts lane: up to [`RECEIPT_BATCH`] in one batch post,
    /// or, to a peer without the batch route, up to [`RECEIPT_WINDOW`] posted concurrently
    /// (their order does not matter: each id gets one final state).
    fn receipts_attempt(
        &self,
        lane: &Lane,
    ) -> Option<(Vec<u64>, LocalBoxFuture<'static, Vec<Outcome>>)> {
        if *lane != Lane::PeerReceipts {
            return None;
        }
        let state = self.lanes.get(lane)?;
        if state.items.len() < 2 {
            return None;
        }
        let now = now_ms();
        let window = if self.peer_receipts_batch {
            RECEIPT_BATCH
        } else {
            RECEIPT_WINDOW
        };
        let mut seqs = Vec::new();
        let mut receipts = Vec::new();
        for item in state.items.iter().take(window) {
            let Payload::Receipt { receipt } = &item.record.payload else {
                break;
            };
            if item.record.next_try_ms > now {
                break;
            }
            seqs.push(item.seq);
            receipts.push(receipt.clone());
        }
        if seqs.len() < 2 {
            return None;
        }
        let (client, url, timeout) = (
            self.client.clone(),
            self.settings.peer_url.clone(),
            self.attempt_timeout(),
        );
        if self.peer_receipts_batch {
            let n = receipts.len();
            let post = delivery::to_peer_receipts_batch(client, url, receipts, timeout);
            return Some((seqs, post.map(move |o| vec![o; n]).boxed_local()));
        }
        let posts = receipts.into_iter().map(|receipt| {
            delivery::to_peer_receipts(client.clone(), url.clone(), receipt, timeout)
        });
        Some((seqs, futures_util::future::join_all(posts).boxed_local()))
    }

    /// Several receipts were posted at once; each gets its own outcome.
    fn attempted_receipts(
        &mut self,
        lane: Lane,
        seqs: Vec<u64>,
        outcomes: Vec<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        let now = now_ms();
        let Some(state) = self.lanes.get_mut(&lane) else {
            return;
        };
        state.busy = false;
        if self.peer_receipts_batch {
            if let Some(Outcome::Unsupported { reason }) = outcomes.first() {
                // The own peer has no batch route (or refused the batch as a whole): one by
                // one from now on, so each receipt gets its own verdict. Nothing is given up.
                log::info!("receipts batch: {reason}; posting one by one from now on");
                self.peer_receipts_batch = false;
                self.kick(&lane, ctx);
                return;
            }
        }
        let mut done = Vec::new();
        let mut updates = Vec::new();
        let d = &self.settings.delivery;
        for (seq, outcome) in seqs.into_iter().zip(outcomes) {
            let Some(pos) = state.items.iter().position(|i| i.seq == seq) else {
                continue;
            };
            match outcome {
                Outcome::Delivered => done.extend(state.items.remove(pos)),
                Outcome::Refused { reason } | Outcome::Unsupported { reason } => {
                    if let Some(item) = state.items.remove(pos) {
                        log::warn!("{}: given up: {reason}", describe(&item.record));
                        done.push(item);
                    }
                }
                Outcome::Retry { what, error } => {
                    let item = &mut state.items[pos];
                    item.record.attempts += 1;
                    item.record.first_try_ms.get_or_insert(now);
                    item.record.last_error = Some(format!("{what}: {error}"));
                    let wait = full_jitter_ms(
                        item.record.attempts,
                        d.retry_initial_ms,
                        d.retry_max_ms,
                        &mut self.rng,
                    );
                    item.record.next_try_ms = now + wait;
                    updates.push(Op::Update {
                        seq,
                        record: item.record.clone(),
                    });
                }
            }
        }
        // Keep the lane in order of next try, so the head is the first one due.
        state
            .items
            .make_contiguous()
            .sort_by_key(|i| (i.record.next_try_ms, i.seq));
        for op in updates {
            self.submit(op, None, ctx);
        }
        for item in done {
            self.submit(
                Op::Finish {
                    seq: item.seq,
                    follow_up: None,
                },
                None,
                ctx,
            );
        }
        self.kick(&lane, ctx);
    }

    /// A batch from the head of `lane` was tried.
    fn attempted_batch(
        &mut self,
        lane: Lane,
        seqs: Vec<u64>,
        outcome: Outcome,
        ctx: &mut Context<Self>,
    ) {
        let Some(state) = self.lanes.get_mut(&lane) else {
            return;
        };
        let intact = state.items.len() >= seqs.len()
            && state.items.iter().zip(&seqs).all(|(i, s)| i.seq == *s);
        if !intact {
            state.busy = false;
            self.kick(&lane, ctx);
            return;
        }
        match outcome {
            Outcome::Delivered => {
                state.busy = false;
                state.woken = false;
                let done: Vec<Item> = state.items.drain(..seqs.len()).collect();
                for item in done {
                    self.finish(item, DeliveryState::Delivered, ctx);
                }
                self.kick(&lane, ctx);
            }
            Outcome::Unsupported { reason } if lane == Lane::PeerInbox => {
                // The own peer has no batch route: one by one from now on.
                log::info!("{reason}; sending one by one from now on");
                self.peer_inbox_batch = false;
                state.busy = false;
                self.kick(&lane, ctx);
            }
            Outcome::Refused { reason } | Outcome::Unsupported { reason } => {
                // One bad envelope refuses the whole batch: send these one by one, so each
                // gets its own verdict.
                log::info!(
                    "a batch for {} was refused ({reason}); sending it one by one",
                    lane_name(&lane)
                );
                state.busy = false;
                state.solo = seqs.len();
                self.kick(&lane, ctx);
            }
            retry @ Outcome::Retry { .. } => self.attempted(lane, seqs[0], retry, ctx),
        }
    }

    /// One attempt to hand `record` to its next hop.
    fn attempt(&mut self, record: &Record) -> LocalBoxFuture<'static, Outcome> {
        let client = self.client.clone();
        let timeout = self.attempt_timeout();
        let peer_url = self.settings.peer_url.clone();
        match (&record.lane, &record.payload) {
            (Lane::PeerReceipts, Payload::Receipt { receipt }) => {
                delivery::to_peer_receipts(client, peer_url, receipt.clone(), timeout).boxed_local()
            }
            (Lane::PeerInbox, Payload::Message { envelope, .. }) => {
                delivery::to_peer_inbox(client, peer_url, envelope.clone(), timeout).boxed_local()
            }
            (Lane::Remote(name), Payload::Message { envelope, .. }) => {
                match choose_route(&self.endpoints, self.settings.me.as_str(), name) {
                    Route::OwnPeer => {
                        delivery::to_peer_inbox(client, peer_url, envelope.clone(), timeout)
                            .boxed_local()
                    }
                    Route::Proxy { name, endpoint } if endpoint.native => delivery::relay(
                        client,
                        endpoint.base_url(),
                        name,
                        envelope.clone(),
                        timeout,
                    )
                    .boxed_local(),
                    Route::Proxy { name, endpoint } => delivery::to_legacy_proxy(
                        client,
                        endpoint.base_url(),
                        name,
                        envelope.clone(),
                        timeout,
                    )
                    .boxed_local(),
                    Route::Ai { name, endpoint } => self.deliver_to_ai(name, endpoint, envelope),
                    Route::Unknown => Box::pin(ready(Outcome::Retry {
                        what: name.clone(),
                        error: format!("{name} is not in this proxy's endpoint table"),
                    })),
                }
            }
            (lane, _) => Box::pin(ready(Outcome::Refused {
                reason: format!("internal error: an item of the wrong kind in lane {lane:?}"),
            })),
        }
    }

    /// Hands `envelope` to AI endpoint `name` ([`ai_chat::converse`]): `Delivered` once the
    /// AI's reply, or the error the user sees instead, is durably queued for the sender
    /// (through [`Enqueue`] to this actor: a reply to this proxy's user joins the peer's inbox
    /// lane); `Retry` when the AI memory or the outbox could not be written. The adapter
    /// retries what the provider asks to retry; a failed answer is a message, not a retry.
    /// The lane waits for this, so a second message to the same AI waits for the first reply.
    fn deliver_to_ai(
        &mut self,
        name: String,
        endpoint: Box<AiEndpoint>,
        envelope: &Envelope,
    ) -> LocalBoxFuture<'static, Outcome> {
        let turn = AiTurn {
            me: self.settings.me.to_string(),
            adapter: self.adapters.adapter(&name, &endpoint),
            keep: ai_chat::turns_to_keep(&endpoint),
            name,
            store: self.store.clone(),
            outbox: self.addr.clone(),
            client: self.client.clone(),
            peer_url: self.settings.peer_url.clone(),
            chunk_timeout: self.attempt_timeout(),
            max_text_bytes: self.settings.delivery.max_message_bytes,
        };
        ai_chat::converse(turn, envelope.clone()).boxed_local()
    }

    /// The head of `lane` (item `seq`) was tried.
    fn attempted(&mut self, lane: Lane, seq: u64, outcome: Outcome, ctx: &mut Context<Self>) {
        let now = now_ms();
        let Some(state) = self.lanes.get_mut(&lane) else {
            return;
        };
        state.busy = false;
        let woken = std::mem::take(&mut state.woken);
        if state.items.front().map(|i| i.seq) != Some(seq) {
            self.kick(&lane, ctx);
            return;
        }
        if !matches!(outcome, Outcome::Retry { .. }) {
            state.solo = state.solo.saturating_sub(1);
        }
        match outcome {
            Outcome::Delivered => {
                if let Some(item) = state.items.pop_front() {
                    self.finish(item, DeliveryState::Delivered, ctx);
                }
            }
            Outcome::Refused { reason } | Outcome::Unsupported { reason } => {
                if let Some(item) = state.items.pop_front() {
                    log::warn!("{}: given up: {reason}", describe(&item.record));
                    self.finish(item, DeliveryState::Failed { reason }, ctx);
                }
            }
            Outcome::Retry { what, error } => {
                let expire_ms = self
                    .settings
                    .delivery
                    .expire_after_secs
                    .saturating_mul(1000);
                let expires = matches!(lane, Lane::Remote(_));
                if let Some(head) = state.items.front_mut() {
                    head.record.attempts += 1;
                    head.record.first_try_ms.get_or_insert(now);
                    head.record.last_error = Some(format!("{what}: {error}"));
                    if head.record.attempts == 1 {
                        log::warn!(
                            "{}: {what} not reachable ({error}); will retry",
                            describe(&head.record)
                        );
                    }
                }
                let mut expired = Vec::new();
                if expires {
                    let (old, keep): (Vec<Item>, Vec<Item>) = std::mem::take(&mut state.items)
                        .into_iter()
                        .partition(|i| i.record.created_ms.saturating_add(expire_ms) <= now);
                    state.items = keep.into();
                    expired = old;
                }
                let wait = if woken {
                    0
                } else {
                    let attempts = state.items.front().map(|h| h.record.attempts).unwrap_or(1);
                    let d = &self.settings.delivery;
                    full_jitter_ms(attempts, d.retry_initial_ms, d.retry_max_ms, &mut self.rng)
                };
                let update = state.items.front_mut().and_then(|head| {
                    (head.seq == seq).then(|| {
                        head.record.next_try_ms = now + wait;
                        Op::Update {
                            seq,
                            record: head.record.clone(),
                        }
                    })
                });
                if let Some(op) = update {
                    self.submit(op, None, ctx);
                }
                let reason = format!(
                    "{what} has been unreachable for {} (last error: {error})",
                    human_duration(self.settings.delivery.expire_after_secs)
                );
                for item in expired {
                    log::warn!("{}: expired: {reason}", describe(&item.record));
                    self.finish(
                        item,
                        DeliveryState::Failed {
                            reason: reason.clone(),
                        },
                        ctx,
                    );
                }
            }
        }
        self.kick(&lane, ctx);
    }

    /// Removes a handed-on (or given-up) item; its sender's receipt is queued in the same commit.
    fn finish(&mut self, item: Item, state: DeliveryState, ctx: &mut Context<Self>) {
        let follow_up = match &item.record.payload {
            Payload::Message {
                envelope,
                origin: Origin::OwnPeer,
            } => Some(Record::new(
                Lane::PeerReceipts,
                Payload::Receipt {
                    receipt: Receipt {
                        id: envelope.id.clone(),
                        state,
                    },
                },
                now_ms(),
            )),
            _ => None,
        };
        self.submit(
            Op::Finish {
                seq: item.seq,
                follow_up,
            },
            None,
            ctx,
        );
    }

    /// Forgets ids older than twice the expiry, at least a week: no sender retries them anymore.
    fn prune_seen(&mut self, ctx: &mut Context<Self>) {
        let keep_ms = self
            .settings
            .delivery
            .expire_after_secs
            .saturating_mul(2)
            .max(7 * 24 * 3600)
            .saturating_mul(1000);
        let prune = self.store.send(PruneSeen {
            before_ms: now_ms().saturating_sub(keep_ms),
        });
        ctx.spawn(wrap_future(async move {
            match prune.await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => log::info!("forgot {n} message ids seen long ago"),
                Ok(Err(e)) => log::warn!("cannot prune seen ids: {e}"),
                Err(e) => log::warn!("cannot prune seen ids: {e}"),
            }
        }));
    }

    /// Retries `lane` now (its route changed).
    fn wake(&mut self, lane: &Lane, ctx: &mut Context<Self>) {
        let Some(state) = self.lanes.get_mut(lane) else {
            return;
        };
        if state.busy {
            state.woken = true;
            return;
        }
        if let Some(head) = state.items.front_mut() {
            head.record.next_try_ms = now_ms();
        }
        self.kick(lane, ctx);
    }
}

/// "message m1 for bob" / "receipt for m1", for logs.
fn describe(record: &Record) -> String {
    match &record.payload {
        Payload::Message { envelope, .. } => {
            format!("message {} for {}", envelope.id, envelope.to)
        }
        Payload::Receipt { receipt } => format!("receipt for {}", receipt.id),
    }
}

fn lane_name(lane: &Lane) -> String {
    match lane {
        Lane::PeerInbox => "peer/inbox".to_string(),
        Lane::PeerReceipts => "peer/receipts".to_string(),
        Lane::Remote(n) => n.clone(),
    }
}

impl GroupWriter for Outbox {
    fn timer(&mut self) -> &mut CommitTimer {
        &mut self.timer
    }

    fn commit(&mut self, ctx: &mut Context<Self>) {
        self.commit_now(ctx);
    }
}

impl Actor for Outbox {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.addr = Some(ctx.address());
        self.adapters.sync(&self.endpoints);
        let items = std::mem::take(&mut self.initial);
        if !items.is_empty() {
            log::info!("resuming {} queued items from the outbox", items.len());
        }
        for (seq, record) in items {
            self.lanes
                .entry(record.lane.clone())
                .or_default()
                .items
                .push_back(Item { seq, record });
        }
        let lanes: Vec<Lane> = self.lanes.keys().cloned().collect();
        for lane in lanes {
            self.kick(&lane, ctx);
        }
        ctx.run_interval(PRUNE_EVERY, |act, ctx| act.prune_seen(ctx));
    }
}

impl Outbox {
    /// Refuses a new message for a lane already holding the most it may (503: retry later).
    /// Messages already queued (a resend) are never refused: they are answered as duplicates.
    fn refuse_if_full(&self, lane: &Lane, ids: &[&MessageId]) -> Result<(), ProxyError> {
        let queued = self.lanes.get(lane).map_or(0, |s| s.items.len());
        let max = self.settings.delivery.max_queued_per_destination;
        let held = |id: &MessageId| {
            self.lanes.get(lane).is_some_and(|s| {
                s.items.iter().any(|i| {
                    matches!(&i.record.payload, Payload::Message { envelope, .. } if &envelope.id == id)
                })
            })
        };
        let adding = if queued + ids.len() > max {
            ids.iter().filter(|id| !held(id)).count()
        } else {
            ids.len()
        };
        if queued + adding > max {
            let whom = match lane {
                Lane::PeerInbox => format!("{}'s chat app", self.settings.me),
                other => lane_name(other),
            };
            return Err(ProxyError::QueueFull(format!(
                "{queued} messages are already queued for {whom}; try again later"
            )));
        }
        Ok(())
    }
}

impl Handler<Enqueue> for Outbox {
    type Result = ResponseFuture<Result<bool, ProxyError>>;

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) -> Self::Result {
        let lane = Lane::for_destination(self.settings.me.as_str(), &msg.envelope.to);
        if let Err(e) = self.refuse_if_full(&lane, &[&msg.envelope.id]) {
            return Box::pin(async move { Err(e) });
        }
        let id = msg.envelope.id.clone();
        let record = Record::new(
            lane,
            Payload::Message {
                envelope: msg.envelope,
                origin: msg.origin,
            },
            now_ms(),
        );
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Accept { id, record }, Some(tx), ctx);
        Box::pin(async move {
            match rx.await {
                Ok(Ok(OpResult::Duplicate)) => Ok(true),
                Ok(Ok(_)) => Ok(false),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProxyError::Unavailable("the outbox stopped".into())),
            }
        })
    }
}

impl Handler<EnqueueMany> for Outbox {
    type Result = ResponseFuture<Result<Vec<bool>, ProxyError>>;

    fn handle(&mut self, msg: EnqueueMany, ctx: &mut Context<Self>) -> Self::Result {
        let mut per_lane: HashMap<Lane, Vec<&MessageId>> = HashMap::new();
        for e in &msg.envelopes {
            per_lane
                .entry(Lane::for_destination(self.settings.me.as_str(), &e.to))
                .or_default()
                .push(&e.id);
        }
        for (lane, ids) in &per_lane {
            if let Err(e) = self.refuse_if_full(lane, ids) {
                return Box::pin(async move { Err(e) });
            }
        }
        let now = now_ms();
        let mut ops = Vec::with_capacity(msg.envelopes.len());
        let mut replies = Vec::with_capacity(msg.envelopes.len());
        for envelope in msg.envelopes {
            let lane = Lane::for_destination(self.settings.me.as_str(), &envelope.to);
            let id = envelope.id.clone();
            let payload = Payload::Message {
                envelope,
                origin: msg.origin,
            };
            let (tx, rx) = oneshot::channel();
            ops.push((
                Op::Accept {
                    id,
                    record: Record::new(lane, payload, now),
                },
                Some(tx),
            ));
            replies.push(rx);
        }
        self.submit_many(ops, ctx);
        Box::pin(async move {
            let mut duplicates = Vec::with_capacity(replies.len());
            for rx in replies {
                duplicates.push(match rx.await {
                    Ok(Ok(OpResult::Duplicate)) => true,
                    Ok(Ok(_)) => false,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(ProxyError::Unavailable("the outbox stopped".into())),
                });
            }
            Ok(duplicates)
        })
    }
}

impl Handler<TableChanged> for Outbox {
    type Result = ();

    fn handle(&mut self, msg: TableChanged, ctx: &mut Context<Self>) {
        let old = std::mem::replace(&mut self.endpoints, msg.endpoints);
        self.adapters.sync(&self.endpoints);
        let me = self.settings.me.to_string();
        let changed: Vec<Lane> = self
            .lanes
            .keys()
            .filter(|lane| match lane {
                Lane::Remote(name) => {
                    choose_route(&old, &me, name) != choose_route(&self.endpoints, &me, name)
                }
                _ => false,
            })
            .cloned()
            .collect();
        for lane in changed {
            log::info!("route to {} changed: retrying now", lane_name(&lane));
            self.wake(&lane, ctx);
        }
    }
}

impl Handler<GetStatus> for Outbox {
    type Result = actix::MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let mut lanes: Vec<LaneStatus> = self
            .lanes
            .iter()
            .filter(|(_, s)| !s.items.is_empty())
            .map(|(lane, s)| LaneStatus {
                lane: lane_name(lane),
                queued: s.items.len(),
                head_attempts: s.items.front().map(|h| h.record.attempts).unwrap_or(0),
                last_error: s.items.front().and_then(|h| h.record.last_error.clone()),
            })
            .collect();
        lanes.sort_by(|a, b| a.lane.cmp(&b.lane));
        actix::MessageResult(OutboxStatus {
            queued: lanes.iter().map(|l| l.queued).sum(),
            lanes,
        })
    }
}

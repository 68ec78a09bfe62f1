//! The [`Outbox`] actor: durable store-and-forward. Owns the lanes (one FIFO per destination,
//! head-of-line, so messages stay in order per conversation: [`lane`] is their plain logic), the
//! retry timers (exponential backoff with full jitter, persisted so a restart resumes), expiry,
//! and the receipts the own peer gets when a message it sent changes state. Its changes go to
//! the proxy store's one writer ([`super::store::Store`]); it learns of them once committed, as
//! that writer's observer, and only then puts new items in their lanes.
//!
//! It does not parse HTTP requests (routes do) and does not own the table (the router does; it
//! publishes each new one, which this actor routes from). [`attempt`] builds each attempt's
//! future (the HTTP calls themselves are in [`super::delivery`]; an AI endpoint is asked through
//! the [`super::ai::desk::AiDesk`], whose reply comes back as the attempt's result and is queued
//! in the same commit that finishes the user's message; a regenerated answer is queued by the
//! desk, in the commit that puts it in the AI memory, and reaches its lane as any item does,
//! through `Applied`).

mod attempt;
pub mod lane;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, ResponseFuture,
    SpawnHandle,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::ai::desk::AiDesk;
use super::delivery::Outcome;
use super::error::ProxyError;
use super::router::TableChanged;
use super::routing::choose_route;
use super::store::{
    LaneId, Op, OpResult, Origin, Payload, ProxySchema, PruneSeen, Record, RelayCheck, Store,
};
use crate::config::{DeliveryConfig, InstanceName};
use crate::hop::backoff::{full_jitter_ms, human_duration, XorShift};
use crate::proxy::metrics::lane_kind;
use crate::storage::{durable, Applied, Committed, Write};
use crate::wire::control_plane::EndpointTable;
use crate::wire::data_plane::{DeliveryState, Envelope, MessageId, Receipt};
use crate::wire::now_ms;
use lane::{Item, Lane, Next, RetryPolicy, Verdict};

/// Durably queue `envelope`; answers once committed. Ok(true): the id was seen before and
/// nothing new was queued.
#[derive(Message)]
#[rtype(result = "Result<bool, ProxyError>")]
pub struct Enqueue {
    pub envelope: Envelope,
    pub origin: Origin,
    /// What is checked of a relayed envelope with its id (its place in its sequence, its age).
    pub relay: Option<RelayCheck>,
}

/// Durably queue several envelopes in ONE commit (a relayed batch); answers once committed, with
/// `duplicate` per envelope, in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<bool>, ProxyError>")]
pub struct EnqueueMany {
    pub envelopes: Vec<Envelope>,
    /// What is checked of each relayed envelope (none for the own peer's).
    pub relays: Vec<RelayCheck>,
    pub origin: Origin,
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
    /// Addresses a person's table entry may not name (see [`super::routing::peer_refusal`]).
    pub not_peers: Vec<super::routing::NotAPeer>,
    /// Where the queues at their limit are told (for `/healthz`), every [`COUNT_FULL_EVERY`].
    pub full: crate::web::health::FullQueues,
    /// Where its attempts and finished items are counted (`/metrics`).
    pub metrics: crate::proxy::metrics::DeliveryMetrics,
    /// Where every queue's depth and oldest item are told (`/metrics`), every
    /// [`COUNT_FULL_EVERY`].
    pub queues: crate::proxy::metrics::Queues,
}

/// How often the queues are counted: those at their limit for `/healthz`, all of them for
/// `/metrics`.
const COUNT_FULL_EVERY: Duration = Duration::from_secs(1);

/// How often ids seen long ago are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long the ids (and sequence places) a proxy took are remembered: twice the delivery
/// expiry, at least a week. No sender retries longer; a relayed message sent before that is
/// refused (see `ProxyState::check_remembered`), as its id may be forgotten.
pub fn seen_horizon_ms(delivery: &DeliveryConfig) -> u64 {
    delivery
        .expire_after_secs
        .saturating_mul(2)
        .max(7 * 24 * 3600)
        .saturating_mul(1000)
}

/// What an accepted op's result means for its sender: Ok(true) a duplicate, Ok(false) stored;
/// an envelope out of its sequence is held (503: sent again later) or refused (409).
fn taken(id: &MessageId, result: OpResult) -> Result<bool, ProxyError> {
    match result {
        OpResult::Duplicate => Ok(true),
        OpResult::Held { after, last } => Err(ProxyError::Retry(format!(
            "message {id} follows message #{after} of its conversation, which this proxy has \
             not taken (the last it took is #{last}): it waits until that one arrives"
        ))),
        OpResult::Stale { seq, last } => Err(ProxyError::Stale {
            message: format!(
                "message {id} is #{seq} of its conversation, not after #{last}, the last this \
                 proxy took: refused (a replay, one its sender gave up on, or a sender whose \
                 numbers went back)"
            ),
            last,
        }),
        OpResult::TooOld {
            sent_at_ms,
            not_before_ms,
        } => Err(ProxyError::Forbidden(format!(
            "message {id} was sent at {}, before {}: this proxy remembers the ids it took for so \
             long, so it cannot tell it from a replay; refused",
            crate::wire::rfc3339_ms(sent_at_ms),
            crate::wire::rfc3339_ms(not_before_ms),
        ))),
        _ => Ok(false),
    }
}

/// The actor.
pub struct Outbox {
    settings: OutboxSettings,
    /// The table, as the router last published it (shared, not a copy).
    endpoints: Arc<EndpointTable>,
    /// The proxy store's one writer; this actor is its observer.
    store: Addr<Store>,
    /// Its HTTP clients: for other proxies, and for its own peer (with the link token).
    clients: Clients,
    rng: XorShift,
    lanes: HashMap<LaneId, Lane>,
    /// The retry timer of each lane waiting for its head's next try.
    timers: HashMap<LaneId, SpawnHandle>,
    /// Loaded from the store at start, put in lanes when the actor starts.
    initial: Vec<(u64, Record)>,
    /// The own peer takes `POST /api/v1/inbox/batch` (until it answers 404).
    peer_inbox_batch: bool,
    /// The own peer takes `POST /api/v1/receipts/batch` (until it refuses one).
    peer_receipts_batch: bool,
    /// The way to AI endpoints.
    desk: Addr<AiDesk>,
}

/// How the outbox reaches out: its two HTTP clients, and how it signs hops to other proxies
/// and checks their answers. The link token goes to the own peer only: never to another proxy,
/// nor anywhere else.
#[derive(Clone)]
pub struct Clients {
    /// For other users' proxies without a TLS address (and proxies of the original).
    pub others: awc::Client,
    /// For other users' proxies over mutual TLS ([`crate::hop::overlay`]); none without a
    /// pinned root (then a TLS destination is not reached at all).
    pub overlay: Option<awc::Client>,
    /// For this proxy's own peer: sends the link token ([`crate::hop::link`]).
    pub own_peer: awc::Client,
    /// Signs this proxy's requests and envelopes, checks the receivers' acknowledgements.
    pub signer: crate::proxy::signed_hop::HopSigner,
    /// The signed directory as the router last applied it: the receivers' pinned keys.
    pub directory: tokio::sync::watch::Receiver<Arc<crate::proxy::router::Published>>,
}

impl Outbox {
    /// The outbox holding `items` from the start, writing its changes through `store` (whose
    /// observer it must be: it learns of its committed changes from there), calling with
    /// `clients` (built on this thread, shared with the AI desk).
    pub fn new(
        settings: OutboxSettings,
        endpoints: Arc<EndpointTable>,
        store: Addr<Store>,
        desk: Addr<AiDesk>,
        clients: Clients,
        items: Vec<(u64, Record)>,
    ) -> Outbox {
        Outbox {
            settings,
            endpoints,
            store,
            clients,
            rng: XorShift::from_entropy(),
            lanes: HashMap::new(),
            timers: HashMap::new(),
            initial: items,
            peer_inbox_batch: true,
            peer_receipts_batch: true,
            desk,
        }
    }
}

impl Actor for Outbox {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let items = std::mem::take(&mut self.initial);
        if !items.is_empty() {
            log::info!("resuming {} queued items from the outbox", items.len());
        }
        for (seq, record) in items {
            self.lanes
                .entry(record.lane.clone())
                .or_default()
                .push(Item { seq, record });
        }
        let lanes: Vec<LaneId> = self.lanes.keys().cloned().collect();
        for lane in lanes {
            self.kick(&lane, ctx);
        }
        ctx.run_interval(PRUNE_EVERY, |act, ctx| act.prune_seen(ctx));
        ctx.run_interval(COUNT_FULL_EVERY, |act, _| {
            let max = act.settings.delivery.max_queued_per_destination;
            let full = act
                .lanes
                .iter()
                .filter(|(_, lane)| lane.len() >= max)
                .map(|(id, lane)| (lane_name(id), lane.len()))
                .collect();
            act.settings.full.set(full);
            let queues = act
                .lanes
                .iter()
                .filter_map(|(id, lane)| {
                    Some(crate::proxy::metrics::QueueDepth {
                        destination: lane_name(id),
                        pending: lane.len(),
                        oldest_ms: lane.oldest_ms()?,
                    })
                })
                .collect();
            act.settings.queues.set(queues);
        });
    }
}

impl Handler<Enqueue> for Outbox {
    type Result = ResponseFuture<Result<bool, ProxyError>>;

    fn handle(&mut self, msg: Enqueue, _: &mut Context<Self>) -> Self::Result {
        let lane = LaneId::for_destination(self.settings.me.as_str(), &msg.envelope.to);
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
        let answers = self.write(vec![Op::Accept {
            id: id.clone(),
            record,
            relay: msg.relay,
        }]);
        Box::pin(async move {
            let mut duplicate = false;
            for rx in answers {
                duplicate = taken(&id, durable::<ProxySchema>(rx).await?)?;
            }
            Ok(duplicate)
        })
    }
}

impl Handler<EnqueueMany> for Outbox {
    type Result = ResponseFuture<Result<Vec<bool>, ProxyError>>;

    fn handle(&mut self, msg: EnqueueMany, _: &mut Context<Self>) -> Self::Result {
        let mut per_lane: HashMap<LaneId, Vec<&MessageId>> = HashMap::new();
        for e in &msg.envelopes {
            per_lane
                .entry(LaneId::for_destination(self.settings.me.as_str(), &e.to))
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
        let mut ids = Vec::with_capacity(msg.envelopes.len());
        let mut relays = msg.relays.into_iter();
        for envelope in msg.envelopes {
            let lane = LaneId::for_destination(self.settings.me.as_str(), &envelope.to);
            let id = envelope.id.clone();
            ids.push(id.clone());
            let payload = Payload::Message {
                envelope,
                origin: msg.origin,
            };
            ops.push(Op::Accept {
                id,
                record: Record::new(lane, payload, now),
                relay: relays.next(),
            });
        }
        let replies = self.write(ops);
        Box::pin(async move {
            // Every answer is awaited (all are in one commit); the first envelope out of its
            // sequence refuses the request, and the sender sends them all again (those taken
            // come back as duplicates).
            let mut duplicates = Vec::with_capacity(replies.len());
            let mut refused = None;
            for (rx, id) in replies.into_iter().zip(&ids) {
                match taken(id, durable::<ProxySchema>(rx).await?) {
                    Ok(duplicate) => duplicates.push(duplicate),
                    Err(e) => {
                        refused.get_or_insert(e);
                    }
                }
            }
            match refused {
                Some(e) => Err(e),
                None => Ok(duplicates),
            }
        })
    }
}

impl Handler<TableChanged> for Outbox {
    type Result = ();

    fn handle(&mut self, msg: TableChanged, ctx: &mut Context<Self>) {
        let old = std::mem::replace(&mut self.endpoints, msg.endpoints);
        let me = self.settings.me.to_string();
        let changed: Vec<LaneId> = self
            .lanes
            .keys()
            .filter(|lane| match lane {
                LaneId::Remote(name) => {
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
            .filter(|(_, lane)| !lane.is_empty())
            .map(|(id, lane)| {
                let (head_attempts, last_error) = lane.head_status();
                LaneStatus {
                    lane: lane_name(id),
                    queued: lane.len(),
                    head_attempts,
                    last_error,
                }
            })
            .collect();
        lanes.sort_by(|a, b| a.lane.cmp(&b.lane));
        actix::MessageResult(OutboxStatus {
            queued: lanes.iter().map(|l| l.queued).sum(),
            lanes,
        })
    }
}

/// A group of the store's writer was applied: new items join their lanes, in commit order.
impl Handler<Applied<ProxySchema>> for Outbox {
    type Result = ();

    fn handle(&mut self, msg: Applied<ProxySchema>, ctx: &mut Context<Self>) {
        for (op, result) in msg.changes {
            self.committed(op, result, ctx);
        }
    }
}

impl Outbox {
    /// Refuses a new message for a lane already holding the most it may (503: retry later).
    /// Messages already queued (a resend) are never refused: they are answered as duplicates.
    fn refuse_if_full(&self, id: &LaneId, ids: &[&MessageId]) -> Result<(), ProxyError> {
        let max = self.settings.delivery.max_queued_per_destination;
        // A lane not there yet holds nothing: the same rule as an empty one.
        let empty = Lane::default();
        let lane = self.lanes.get(id).unwrap_or(&empty);
        lane.room_for(ids, max)
            .map_err(|queued| self.full(id, queued))
    }

    fn full(&self, id: &LaneId, queued: usize) -> ProxyError {
        let whom = match id {
            LaneId::PeerInbox => format!("{}'s chat app", self.settings.me),
            other => lane_name(other),
        };
        ProxyError::QueueFull(format!(
            "{queued} messages are already queued for {whom}; try again later"
        ))
    }

    /// Hands `ops` to the store's writer, to be committed in one group; answers where each
    /// one's result comes (see [`crate::storage::Writer`]). The outbox learns of the group
    /// itself as the writer's observer ([`Applied`]), in commit order.
    fn write(&self, ops: Vec<Op>) -> Vec<oneshot::Receiver<Committed<ProxySchema>>> {
        let urgent = ops.iter().any(Op::is_urgent);
        let (write, receivers) = Write::new(ops, urgent);
        self.store.do_send(write);
        receivers
    }

    /// A committed op: a newly stored item joins its lane.
    fn committed(&mut self, op: Op, result: OpResult, ctx: &mut Context<Self>) {
        if matches!((&op, &result), (Op::Accept { .. }, OpResult::Duplicate)) {
            self.settings.metrics.duplicate();
        }
        let (record, OpResult::Stored { seq }) = (
            match op {
                Op::Accept { record, .. } => record,
                Op::Finish {
                    follow_up: Some(record),
                    ..
                } => record,
                _ => return,
            },
            result,
        ) else {
            return;
        };
        let id = record.lane.clone();
        self.lanes
            .entry(id.clone())
            .or_default()
            .push(Item { seq, record });
        self.kick(&id, ctx);
    }

    /// Starts an attempt for the head of lane `id` when it is due, else sets its timer.
    fn kick(&mut self, id: &LaneId, ctx: &mut Context<Self>) {
        let now = now_ms();
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        let next = lane.next(now);
        if next == Next::Busy {
            return;
        }
        if let Some(timer) = self.timers.remove(id) {
            ctx.cancel_future(timer);
        }
        match next {
            Next::Busy => {}
            Next::Empty => {
                self.lanes.remove(id);
            }
            Next::WaitUntil(at) => {
                let again = id.clone();
                let wait = Duration::from_millis(at.saturating_sub(now));
                let timer = ctx.run_later(wait, move |act, ctx| {
                    act.timers.remove(&again);
                    act.kick(&again, ctx);
                });
                self.timers.insert(id.clone(), timer);
            }
            Next::Start => {
                lane.start();
                self.start_attempt(id, ctx);
            }
        }
    }

    /// Starts the attempt for the head of lane `id` (busy already): receipts together, a batch
    /// of messages, or the head alone.
    fn start_attempt(&mut self, id: &LaneId, ctx: &mut Context<Self>) {
        let lane_id = id.clone();
        if let Some((seqs, attempt)) = self.receipts_attempt(id) {
            ctx.spawn(
                wrap_future(attempt).map(move |outcomes, act: &mut Self, ctx| {
                    act.attempted_receipts(lane_id, seqs, outcomes, ctx)
                }),
            );
            return;
        }
        if let Some((seqs, attempt)) = self.batch_attempt(id) {
            ctx.spawn(
                wrap_future(attempt).map(move |outcome, act: &mut Self, ctx| {
                    act.attempted_batch(lane_id, seqs, outcome, ctx)
                }),
            );
            return;
        }
        let Some(head) = self.lanes.get(id).and_then(Lane::head) else {
            return;
        };
        let (seq, record) = (head.seq, head.record.clone());
        let attempt = self.attempt(&record);
        ctx.spawn(
            wrap_future(attempt).map(move |(outcome, reply), act: &mut Self, ctx| {
                act.attempted(lane_id, seq, outcome, reply, ctx)
            }),
        );
    }

    /// The head of lane `id` (item `seq`) was tried; `reply`: an AI endpoint's answer to it, for
    /// the own peer, queued in the same commit that finishes it.
    fn attempted(
        &mut self,
        id: LaneId,
        seq: u64,
        outcome: Outcome,
        reply: Option<Envelope>,
        ctx: &mut Context<Self>,
    ) {
        let Some(lane) = self.lanes.get_mut(&id) else {
            return;
        };
        let (d, rng) = (&self.settings.delivery, &mut self.rng);
        let mut policy = RetryPolicy {
            expire_after_ms: d.expire_after_secs.saturating_mul(1000),
            expires: matches!(id, LaneId::Remote(_)),
            wait_ms: |n| full_jitter_ms(n, d.retry_initial_ms, d.retry_max_ms, rng),
        };
        let unreachable_for = human_duration(d.expire_after_secs);
        self.settings.metrics.attempted(lane_kind(&id), &outcome);
        // Only expiry finishes items on a retry.
        let expired = matches!(outcome, Outcome::Retry { .. });
        let verdict = lane.tried(seq, outcome, now_ms(), &mut policy, &unreachable_for);
        self.count_finished(&id, &verdict, expired);
        // A reply to an item that is no longer the head (a stale answer) is not queued: the
        // AI memory has it, and the item's next attempt hands the same reply on.
        let finished = verdict.finished.iter().any(|(item, _)| item.seq == seq);
        let me = self.settings.me.as_str();
        let reply = reply
            .filter(|_| finished)
            .map(|envelope| Op::ai_reply(me, envelope));
        self.apply(reply, verdict);
        self.kick(&id, ctx);
    }

    /// A batch from the head of lane `id` was tried.
    fn attempted_batch(
        &mut self,
        id: LaneId,
        seqs: Vec<u64>,
        outcome: Outcome,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(outcome, Outcome::Retry { .. }) {
            // A retry is counted as the head's attempt.
            self.settings.metrics.attempted(lane_kind(&id), &outcome);
        }
        let Some(lane) = self.lanes.get_mut(&id) else {
            return;
        };
        if !lane.batch_is_head(&seqs) {
            lane.idle();
            self.kick(&id, ctx);
            return;
        }
        match outcome {
            Outcome::Delivered => {
                let verdict = lane.batch_delivered(seqs.len());
                self.count_finished(&id, &verdict, false);
                self.apply(None, verdict);
            }
            Outcome::Unsupported { reason } if id == LaneId::PeerInbox => {
                // The own peer has no batch route: one by one from now on.
                log::info!("{reason}; sending one by one from now on");
                self.peer_inbox_batch = false;
                lane.idle();
            }
            Outcome::Refused { reason } | Outcome::Unsupported { reason } => {
                log::info!(
                    "a batch for {} was refused ({reason}); sending it one by one",
                    lane_name(&id)
                );
                lane.one_by_one(seqs.len());
            }
            retry @ Outcome::Retry { .. } => return self.attempted(id, seqs[0], retry, None, ctx),
        }
        self.kick(&id, ctx);
    }

    /// Several receipts were posted at once; each gets its own outcome.
    fn attempted_receipts(
        &mut self,
        id: LaneId,
        seqs: Vec<u64>,
        outcomes: Vec<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        let Some(lane) = self.lanes.get_mut(&id) else {
            return;
        };
        if self.peer_receipts_batch {
            if let Some(Outcome::Unsupported { reason }) = outcomes.first() {
                // The own peer has no batch route (or refused the batch as a whole): one by
                // one from now on, so each receipt gets its own verdict. Nothing is given up.
                log::info!("receipts batch: {reason}; posting one by one from now on");
                self.peer_receipts_batch = false;
                lane.idle();
                self.kick(&id, ctx);
                return;
            }
        }
        // Each receipt has its own outcome: each counts as an attempt.
        for outcome in &outcomes {
            self.settings.metrics.attempted(lane_kind(&id), outcome);
        }
        let (d, rng) = (&self.settings.delivery, &mut self.rng);
        let mut wait = |n| full_jitter_ms(n, d.retry_initial_ms, d.retry_max_ms, rng);
        let verdict = lane.receipts_tried(seqs, outcomes, now_ms(), &mut wait);
        self.count_finished(&id, &verdict, false);
        self.apply(None, verdict);
        self.kick(&id, ctx);
    }

    /// Counts the items `verdict` finished on lane `id`; `expired`: given up on for their
    /// destination's silence.
    fn count_finished(&self, id: &LaneId, verdict: &Verdict, expired: bool) {
        let now = now_ms();
        for (item, state) in &verdict.finished {
            self.settings.metrics.finished(
                lane_kind(id),
                state,
                expired,
                item.record.created_ms,
                now,
            );
        }
    }

    /// Writes what an attempt changed, as one group: a reply to queue (`first`), the updated
    /// records, and each finished item removed with its sender's receipt queued in its place.
    fn apply(&self, first: Option<Op>, verdict: Verdict) {
        let mut ops: Vec<Op> = first.into_iter().collect();
        ops.extend(verdict.updates);
        ops.extend(
            verdict
                .finished
                .into_iter()
                .map(|(item, state)| finish(item, state)),
        );
        if !ops.is_empty() {
            self.write(ops);
        }
    }

    /// Forgets ids older than twice the expiry, at least a week: no sender retries them anymore.
    fn prune_seen(&mut self, ctx: &mut Context<Self>) {
        let keep_ms = seen_horizon_ms(&self.settings.delivery);
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

    /// Retries lane `id` now (its route changed).
    fn wake(&mut self, id: &LaneId, ctx: &mut Context<Self>) {
        if let Some(lane) = self.lanes.get_mut(id) {
            lane.wake(now_ms());
            self.kick(id, ctx);
        }
    }
}

/// Removes a handed-on (or given-up) item; its sender's receipt (for a message of the own
/// peer) is queued in its place, in the same commit.
fn finish(item: Item, state: DeliveryState) -> Op {
    let follow_up = match &item.record.payload {
        Payload::Message {
            envelope,
            origin: Origin::OwnPeer,
        } => Some(Record::new(
            LaneId::PeerReceipts,
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
    Op::Finish {
        seq: item.seq,
        follow_up,
    }
}

fn lane_name(lane: &LaneId) -> String {
    match lane {
        LaneId::PeerInbox => "peer/inbox".to_string(),
        LaneId::PeerReceipts => "peer/receipts".to_string(),
        LaneId::Remote(n) => n.to_string(),
    }
}

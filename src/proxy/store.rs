//! The proxy's durable state in `proxy-NAME.redb`: the outbox (every message and receipt not
//! yet handed on), the `seen` ids (so a retried submit or relay is stored once), the place
//! reached in each (sender, conversation) sequence of relayed messages (so a carrier cannot
//! reorder a conversation: see [`Op::Accept`] and [`crate::wire::sealed`]), the proxy's
//! stable id, the last endpoint table (so routing works while the controller is down), and the
//! AI memory (each conversation with an AI endpoint, so the model is sent what was said).
//!
//! Every change ([`Op`]: the outbox's, the table, pruning, the AI memory) goes through ONE
//! writer, [`Store`] (the kit's [`Writer`] over [`ProxySchema`], see [`crate::storage`]), in
//! groups: one write transaction each, not waiting for the disk, logged to `proxy-NAME.wal`
//! before anyone is answered; [`open`] applies again what the log has that the database lost.
//! The outbox learns of each applied group as the writer's observer.

use std::path::Path;
use std::sync::Arc;

use actix::{Handler, Message, ResponseFuture};
use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::error::ProxyError;
use crate::storage::{durable, Schema, SharedDb, Wal, Writer};
use crate::wire::control_plane::TableUpdate;
use crate::wire::data_plane::{Envelope, MessageId, Receipt};
use crate::wire::directory::Snapshot;
use crate::wire::PeerName;

/// seq → JSON [`Record`]: what is still to be handed on, in arrival order.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// message id → Unix ms when first stored.
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// `sender␟conversation` → (the last sequence number taken, Unix ms when it was taken).
const SEQUENCES: TableDefinition<&str, (u64, u64)> = TableDefinition::new("sequences");
/// `proxy_id`, `table` → their JSON; `wal_lsn` → [`Position`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// conversation id (`alice:bot`) → JSON `[MemoryTurn]`, oldest first.
const AI_MEMORY: TableDefinition<&str, &[u8]> = TableDefinition::new("ai_memory");
const WAL_LSN: &str = "wal_lsn";

/// Where the outbox is, saved with every group of its changes: the LSN of the last logged group
/// applied ([`crate::storage::wal`]) and the next outbox key then (so a group applied again after a
/// crash numbers its items exactly as the first time). Two u64, little-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    lsn: u64,
    next_seq: u64,
}

impl Position {
    fn read(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Self, ProxyError> {
        let Some(bytes) = meta.get(WAL_LSN).map_err(ProxyError::storage)? else {
            return Ok(Position::default());
        };
        let bytes = bytes.value();
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Ok(Position {
            lsn: word(0),
            next_seq: word(1),
        })
    }

    fn bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.lsn.to_le_bytes());
        out[8..].copy_from_slice(&self.next_seq.to_le_bytes());
        out
    }
}

/// Where an outbox item goes next.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "lane", content = "name", rename_all = "snake_case")]
pub enum LaneId {
    /// This proxy's own peer, `POST /api/v1/inbox`.
    PeerInbox,
    /// This proxy's own peer, `POST /api/v1/receipts`.
    PeerReceipts,
    /// Another name of the table (its key, lowercase, as records have always stored it):
    /// another user's proxy or an AI endpoint.
    Remote(PeerName),
}

impl LaneId {
    /// The lane of a message for `to`, as seen by the proxy of `me`.
    pub fn for_destination(me: &str, to: &str) -> LaneId {
        let to = PeerName::from(to);
        if to == me {
            LaneId::PeerInbox
        } else {
            LaneId::Remote(to.key().into())
        }
    }
}

/// Where a queued message came from: decides whether its sender learns its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Our own peer sent it (`/api/v1/outbox`): it gets receipts.
    OwnPeer,
    /// Another proxy relayed it (`/api/v1/relay`): that proxy already has our ack.
    Relay,
    /// A legacy `POST /` (the original has no receipts).
    Legacy,
    /// An AI endpoint's reply, queued for the own peer by the AI adapter.
    Ai,
}

/// What an outbox item carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    Message { envelope: Envelope, origin: Origin },
    Receipt { receipt: Receipt },
}

/// One outbox item with its delivery state (persisted, so a restart resumes where it was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub lane: LaneId,
    pub payload: Payload,
    /// When it was queued, Unix ms (expiry counts from here).
    pub created_ms: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    pub first_try_ms: Option<u64>,
    /// Not to be tried before this, Unix ms.
    pub next_try_ms: u64,
    pub last_error: Option<String>,
}

impl Record {
    pub fn new(lane: LaneId, payload: Payload, now_ms: u64) -> Record {
        Record {
            lane,
            payload,
            created_ms: now_ms,
            attempts: 0,
            first_try_ms: None,
            next_try_ms: now_ms,
            last_error: None,
        }
    }
}

/// One change to the proxy's store, applied in a group by [`ProxySchema`] (and logged, as JSON,
/// for replay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Store `record` unless `id` was seen before; marks `id` seen. With a `chain` (a relayed
    /// envelope's place in its sequence), only right after the one it follows: its number must
    /// be above the last taken of its (sender, conversation), and it must follow none (`after`
    /// 0) or exactly that one; else it is held (its predecessor has not arrived) or stale. A
    /// duplicate's number still counts as taken (a retry numbers its batch afresh).
    Accept {
        id: MessageId,
        record: Record,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<RelayCheck>,
    },
    /// Overwrite the delivery state of item `seq`.
    Update { seq: u64, record: Record },
    /// Remove item `seq` (handed on or given up), queueing `follow_up` (a receipt) in its place.
    Finish { seq: u64, follow_up: Option<Record> },
    /// The last table of a release before the signed directory (replayed from its log only).
    SaveTable { table: TableUpdate },
    /// See [`SaveView`].
    SaveView { view: Box<Snapshot> },
    /// See [`PruneSeen`].
    PruneSeen { before_ms: u64 },
    /// See [`Remember`].
    Remember {
        conversation: String,
        turn: MemoryTurn,
        keep: usize,
        only_after: Option<MessageId>,
    },
    /// See [`ForgetMemory`].
    Forget { conversation: Option<String> },
    /// A regenerated answer: see [`answer_again`].
    AnswerAgain {
        conversation: String,
        asked: MessageId,
        answer: MemoryTurn,
        keep: usize,
    },
}

impl Op {
    /// Whether someone waits for this op now, so that it starts a commit at once (see
    /// [`crate::storage::group_commit`]): an accepted item's sender waits to be told we hold
    /// it, and an AI conversation waits for its memory. Outbox updates and finishes, the table
    /// and pruning are bookkeeping; they ride along with the next urgent write.
    pub fn is_urgent(&self) -> bool {
        matches!(
            self,
            Op::Accept { .. } | Op::Remember { .. } | Op::Forget { .. } | Op::AnswerAgain { .. }
        )
    }
}

/// What is checked of a message another proxy relayed, in the transaction that takes its id
/// (after the duplicate check: a message taken before is acknowledged again, whatever else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCheck {
    /// Its place in its sequence.
    pub chain: crate::wire::sealed::Chain,
    /// The oldest `sent_at_ms` taken: an older message could be a replay of one whose id is
    /// forgotten already.
    pub not_before_ms: u64,
}

/// What one [`Op`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// Stored under this seq (for `Accept`, or a `Finish` follow-up).
    Stored {
        seq: u64,
    },
    /// `Accept` of an id already seen: nothing stored.
    Duplicate,
    /// `Accept` of an envelope whose predecessor `after` has not been taken (the last taken
    /// of its sequence is `last`): nothing stored.
    Held {
        after: u64,
        last: u64,
    },
    /// `Accept` of an envelope numbered `seq`, not above `last`, the last taken of its
    /// sequence: nothing stored.
    Stale {
        seq: u64,
        last: u64,
    },
    /// `Accept` of a relayed message sent before `not_before_ms`: nothing stored.
    TooOld {
        sent_at_ms: u64,
        not_before_ms: u64,
    },
    Done,
    /// How many ids (`PruneSeen`) or turns (`Forget`) were forgotten.
    Forgotten(u64),
    /// The AI conversation as remembered after a `Remember` or an `AnswerAgain`.
    Turns(Arc<Vec<MemoryTurn>>),
}

/// The store's contents at start.
#[derive(Debug)]
pub struct Loaded {
    pub proxy_id: String,
    /// The last table a release before the signed directory cached (unsigned; used until the
    /// controller hands a signed view).
    pub table: Option<TableUpdate>,
    /// The last signed view applied: the version never to go below, and the table.
    pub view: Option<Snapshot>,
    pub items: Vec<(u64, Record)>,
}

/// Remembers the directory view applied last (its version is the floor for the next one).
#[derive(Message)]
#[rtype(result = "Result<(), ProxyError>")]
pub struct SaveView {
    pub view: Snapshot,
}

/// Forgets ids first seen before `before_ms` (a sender retries at most until its expiry, so
/// older ids cannot come back as retries). Answers how many were forgotten.
#[derive(Message)]
#[rtype(result = "Result<u64, ProxyError>")]
pub struct PruneSeen {
    pub before_ms: u64,
}

/// One turn of a conversation with an AI endpoint, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryTurn {
    /// The message's id (the user's message, or the AI's reply).
    pub id: MessageId,
    /// Who said it: the user's name or the AI endpoint's name.
    pub speaker: String,
    pub text: String,
    /// When it was said, Unix ms.
    pub at_ms: u64,
    /// For a user's turn: the id minted for the AI's reply to it (so a retried delivery
    /// answers under the same id, and the reply is stored once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_id: Option<MessageId>,
    /// For an AI's turn: the user stopped it; `text` is what had been shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// Appends `turn` to AI conversation `conversation` unless a turn with its id is there already
/// (a retried delivery); keeps the newest `keep` turns. With `only_after`, appends only while
/// that turn is still remembered (a reply to a question forgotten meanwhile is not kept).
/// Answers the conversation as remembered afterwards.
#[derive(Message)]
#[rtype(result = "Result<Vec<MemoryTurn>, ProxyError>")]
pub struct Remember {
    pub conversation: String,
    pub turn: MemoryTurn,
    pub keep: usize,
    pub only_after: Option<MessageId>,
}

/// Forgets AI conversation `conversation` (every one when None); answers how many turns were
/// forgotten.
#[derive(Message)]
#[rtype(result = "Result<u64, ProxyError>")]
pub struct ForgetMemory {
    pub conversation: Option<String>,
}

/// AI conversation `conversation` as remembered now.
#[derive(Message)]
#[rtype(result = "Result<Vec<MemoryTurn>, ProxyError>")]
pub struct Recall {
    pub conversation: String,
}

/// Replaces the answers to turn `asked` of `turns` with `answer` (a regenerated one): the
/// turns after `asked` go, `asked` is answered under `answer`'s id, and `answer` follows it;
/// the newest `keep` turns are kept. True when they changed; unchanged when `asked` is no
/// longer remembered (the chat was cleared meanwhile).
pub fn answer_again(
    turns: &mut Vec<MemoryTurn>,
    asked: &MessageId,
    answer: MemoryTurn,
    keep: usize,
) -> bool {
    let Some(at) = turns.iter().position(|t| &t.id == asked) else {
        return false;
    };
    turns.truncate(at + 1);
    turns[at].reply_id = Some(answer.id.clone());
    turns.push(answer);
    keep_newest(turns, keep);
    true
}

/// The user's turn that AI endpoint `ai` answered last in `turns` (the newest turn not its
/// own), to be answered again; None when only the endpoint has spoken.
pub fn last_asked<'a>(turns: &'a [MemoryTurn], ai: &str) -> Option<&'a MemoryTurn> {
    turns
        .iter()
        .rev()
        .find(|t| !t.speaker.eq_ignore_ascii_case(ai))
}

impl Op {
    /// Queues `envelope`, an AI endpoint's reply (or error report) to this proxy's user `me`,
    /// for the own peer.
    pub fn ai_reply(me: &str, envelope: Envelope) -> Op {
        let lane = LaneId::for_destination(me, &envelope.to);
        let id = envelope.id.clone();
        let payload = Payload::Message {
            envelope,
            origin: Origin::Ai,
        };
        Op::Accept {
            id,
            record: Record::new(lane, payload, crate::wire::now_ms()),
            relay: None,
        }
    }
}

/// Keeps the newest `keep` turns (one at least).
fn keep_newest(turns: &mut Vec<MemoryTurn>, keep: usize) {
    let keep = keep.max(1);
    if turns.len() > keep {
        let extra = turns.len() - keep;
        turns.drain(..extra);
    }
}

/// Adds `turn` to `turns` (see [`Remember`]); true when it was added.
pub fn remember(
    turns: &mut Vec<MemoryTurn>,
    turn: MemoryTurn,
    keep: usize,
    only_after: Option<&MessageId>,
) -> bool {
    if turns.iter().any(|t| t.id == turn.id) {
        return false;
    }
    if let Some(after) = only_after {
        if !turns.iter().any(|t| &t.id == after) {
            return false;
        }
    }
    turns.push(turn);
    keep_newest(turns, keep);
    true
}

/// The proxy store's writer: the ONE writer of `proxy-NAME.redb` (the outbox's changes, the
/// table, pruning and the AI memory alike), on the role's worker thread.
pub type Store = Writer<ProxySchema>;

/// The writer of `db` and its log (as opened together by [`open`]).
pub fn writer(opened: (Arc<SharedDb>, Wal)) -> Store {
    Writer::new(ProxySchema::default(), opened, usize::MAX)
}

/// Opens (creating if needed, repairing after a crash) `path` with every table present, and
/// its log at `log`; applies again the groups the log has that the database lost. Blocking.
pub fn open(path: &Path, log: &Path, tag: &str) -> Result<(Arc<SharedDb>, Wal), ProxyError> {
    crate::storage::open(&mut ProxySchema::default(), path, log, tag)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ProxyError> {
    serde_json::to_vec(v).map_err(ProxyError::storage)
}

/// The key of a relayed message's sequence: its sender and conversation, as names compare.
fn sequence_key(record: &Record) -> String {
    match &record.payload {
        Payload::Message { envelope, .. } => {
            format!("{}\u{1f}{}", envelope.from.key(), envelope.conversation)
        }
        Payload::Receipt { receipt } => format!("\u{1f}{}", receipt.id),
    }
}

/// Takes the next free seq.
fn take(next: &mut u64) -> u64 {
    *next += 1;
    *next - 1
}

/// Everything a starting proxy needs from its store; creates the proxy id (prefixed with
/// `name`) on first start. Blocking; run before the writer starts.
pub fn load(db: &SharedDb, name: &str) -> Result<Loaded, ProxyError> {
    db.with(|db| {
        let txn = db.begin_write().map_err(ProxyError::storage)?;
        let loaded = {
            let mut meta = txn.open_table(META).map_err(ProxyError::storage)?;
            let existing: Option<String> =
                match meta.get("proxy_id").map_err(ProxyError::storage)? {
                    Some(v) => serde_json::from_slice(v.value()).ok(),
                    None => None,
                };
            let proxy_id = match existing {
                Some(id) => id,
                None => {
                    let id = format!(
                        "{}-{}",
                        PeerName::from(name).key(),
                        uuid::Uuid::new_v4().simple()
                    );
                    meta.insert("proxy_id", to_json(&id)?.as_slice())
                        .map_err(ProxyError::storage)?;
                    id
                }
            };
            let table = match meta.get("table").map_err(ProxyError::storage)? {
                Some(v) => match serde_json::from_slice::<TableUpdate>(v.value()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        log::warn!("ignoring the cached endpoint table: {e}");
                        None
                    }
                },
                None => None,
            };
            let view = match meta.get("view").map_err(ProxyError::storage)? {
                Some(v) => match serde_json::from_slice::<Snapshot>(v.value()) {
                    Ok(t) => Some(t),
                    // Unreadable: the next signed snapshot replaces it. Its version floor is
                    // lost, which the log says.
                    Err(e) => {
                        log::warn!("ignoring the stored directory view (unreadable: {e})");
                        None
                    }
                },
                None => None,
            };
            let outbox = txn.open_table(OUTBOX).map_err(ProxyError::storage)?;
            let mut items = Vec::with_capacity(outbox.len().unwrap_or(0) as usize);
            for row in outbox.iter().map_err(ProxyError::storage)? {
                let (k, v) = row.map_err(ProxyError::storage)?;
                match serde_json::from_slice::<Record>(v.value()) {
                    Ok(r) => items.push((k.value(), r)),
                    Err(e) => log::error!(
                        "outbox item {} is unreadable and is kept aside: {e}",
                        k.value()
                    ),
                }
            }
            Loaded {
                proxy_id,
                table,
                view,
                items,
            }
        };
        txn.commit().map_err(ProxyError::storage)?;
        Ok(loaded)
    })
}

/// The proxy store's part in the kit: its tables, and how a group of [`Op`]s is applied.
#[derive(Debug, Default)]
pub struct ProxySchema {
    /// The next outbox key, once read.
    next: Option<u64>,
}

impl Schema for ProxySchema {
    type Op = Op;
    type Outcome = OpResult;
    type Error = ProxyError;

    fn create_tables(txn: &WriteTransaction) -> Result<u64, ProxyError> {
        txn.open_table(OUTBOX).map_err(ProxyError::storage)?;
        txn.open_table(SEEN).map_err(ProxyError::storage)?;
        txn.open_table(SEQUENCES).map_err(ProxyError::storage)?;
        txn.open_table(AI_MEMORY).map_err(ProxyError::storage)?;
        Ok(Position::read(&txn.open_table(META).map_err(ProxyError::storage)?)?.lsn)
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        ops: &[Op],
        lsn: u64,
    ) -> Result<Vec<OpResult>, ProxyError> {
        let mut results = Vec::with_capacity(ops.len());
        let mut meta = txn.open_table(META).map_err(ProxyError::storage)?;
        let mut outbox = txn.open_table(OUTBOX).map_err(ProxyError::storage)?;
        let mut next_free = match self.next {
            Some(seq) => seq,
            None => {
                let last = outbox.last().map_err(ProxyError::storage)?;
                let after_last = last.map_or(1, |(k, _)| k.value() + 1);
                Position::read(&meta)?.next_seq.max(after_last)
            }
        };
        {
            let mut seen = txn.open_table(SEEN).map_err(ProxyError::storage)?;
            let mut sequences = txn.open_table(SEQUENCES).map_err(ProxyError::storage)?;
            let mut memory = txn.open_table(AI_MEMORY).map_err(ProxyError::storage)?;
            for op in ops {
                results.push(match op {
                    Op::Accept { id, record, relay } => {
                        let place = match relay {
                            Some(RelayCheck { chain: c, .. }) => {
                                let key = sequence_key(record);
                                let last = sequences
                                    .get(key.as_str())
                                    .map_err(ProxyError::storage)?
                                    .map_or(0, |v| v.value().0);
                                Some((key, *c, last))
                            }
                            None => None,
                        };
                        let duplicate = seen
                            .get(id.as_str())
                            .map_err(ProxyError::storage)?
                            .is_some();
                        let sent_at_ms = match &record.payload {
                            Payload::Message { envelope, .. } => envelope.sent_at_ms,
                            Payload::Receipt { .. } => u64::MAX,
                        };
                        let too_old = relay.filter(|r| sent_at_ms < r.not_before_ms);
                        let verdict = match (&place, too_old) {
                            _ if duplicate => OpResult::Duplicate,
                            (_, Some(r)) => OpResult::TooOld {
                                sent_at_ms,
                                not_before_ms: r.not_before_ms,
                            },
                            (Some((_, c, last)), _) if c.seq <= *last => OpResult::Stale {
                                seq: c.seq,
                                last: *last,
                            },
                            (Some((_, c, last)), _) if c.after != 0 && c.after != *last => {
                                OpResult::Held {
                                    after: c.after,
                                    last: *last,
                                }
                            }
                            _ => {
                                seen.insert(id.as_str(), record.created_ms)
                                    .map_err(ProxyError::storage)?;
                                let seq = take(&mut next_free);
                                outbox
                                    .insert(seq, to_json(record)?.as_slice())
                                    .map_err(ProxyError::storage)?;
                                OpResult::Stored { seq }
                            }
                        };
                        let taken =
                            matches!(verdict, OpResult::Stored { .. } | OpResult::Duplicate);
                        if let Some((key, c, _)) = place.filter(|p| taken && p.1.seq > p.2) {
                            sequences
                                .insert(key.as_str(), (c.seq, record.created_ms))
                                .map_err(ProxyError::storage)?;
                        }
                        verdict
                    }
                    Op::Update { seq, record } => {
                        // An item finished meanwhile stays finished.
                        if outbox.get(*seq).map_err(ProxyError::storage)?.is_some() {
                            outbox
                                .insert(*seq, to_json(record)?.as_slice())
                                .map_err(ProxyError::storage)?;
                        }
                        OpResult::Done
                    }
                    Op::Finish { seq, follow_up } => {
                        outbox.remove(*seq).map_err(ProxyError::storage)?;
                        match follow_up {
                            Some(record) => {
                                let seq = take(&mut next_free);
                                outbox
                                    .insert(seq, to_json(record)?.as_slice())
                                    .map_err(ProxyError::storage)?;
                                OpResult::Stored { seq }
                            }
                            None => OpResult::Done,
                        }
                    }
                    Op::SaveTable { table } => {
                        meta.insert("table", to_json(table)?.as_slice())
                            .map_err(ProxyError::storage)?;
                        OpResult::Done
                    }
                    Op::SaveView { view } => {
                        meta.insert("view", to_json(view)?.as_slice())
                            .map_err(ProxyError::storage)?;
                        OpResult::Done
                    }
                    Op::PruneSeen { before_ms } => {
                        let before = seen.len().map_err(ProxyError::storage)?;
                        seen.retain(|_, first_seen| first_seen >= *before_ms)
                            .map_err(ProxyError::storage)?;
                        sequences
                            .retain(|_, (_, taken_ms)| taken_ms >= *before_ms)
                            .map_err(ProxyError::storage)?;
                        OpResult::Forgotten(before - seen.len().map_err(ProxyError::storage)?)
                    }
                    Op::Remember {
                        conversation,
                        turn,
                        keep,
                        only_after,
                    } => {
                        let mut turns = recall(&memory, conversation)?;
                        if remember(&mut turns, turn.clone(), *keep, only_after.as_ref()) {
                            memory
                                .insert(conversation.as_str(), to_json(&turns)?.as_slice())
                                .map_err(ProxyError::storage)?;
                        }
                        OpResult::Turns(Arc::new(turns))
                    }
                    Op::Forget { conversation } => {
                        OpResult::Forgotten(forget(&mut memory, conversation.as_deref())?)
                    }
                    Op::AnswerAgain {
                        conversation,
                        asked,
                        answer,
                        keep,
                    } => {
                        let mut turns = recall(&memory, conversation)?;
                        if answer_again(&mut turns, asked, answer.clone(), *keep) {
                            memory
                                .insert(conversation.as_str(), to_json(&turns)?.as_slice())
                                .map_err(ProxyError::storage)?;
                        }
                        OpResult::Turns(Arc::new(turns))
                    }
                });
            }
        }
        let position = Position {
            lsn,
            next_seq: next_free,
        };
        meta.insert(WAL_LSN, position.bytes().as_slice())
            .map_err(ProxyError::storage)?;
        // Kept only once the group is applied: a failed group leaves the next key as it was.
        self.next = Some(next_free);
        Ok(results)
    }
}

/// AI conversation `conversation` as remembered (empty when unreadable, with a warning).
fn recall(
    memory: &impl ReadableTable<&'static str, &'static [u8]>,
    conversation: &str,
) -> Result<Vec<MemoryTurn>, ProxyError> {
    Ok(
        match memory.get(conversation).map_err(ProxyError::storage)? {
            Some(v) => serde_json::from_slice(v.value()).unwrap_or_else(|e| {
                log::warn!("the AI memory of {conversation} is unreadable and starts afresh: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        },
    )
}

/// Forgets AI conversation `conversation` (every one when None); how many turns went.
fn forget(
    memory: &mut redb::Table<'_, &'static str, &'static [u8]>,
    conversation: Option<&str>,
) -> Result<u64, ProxyError> {
    let count = |v: &[u8]| {
        serde_json::from_slice::<Vec<MemoryTurn>>(v)
            .map(|t| t.len() as u64)
            .unwrap_or(0)
    };
    Ok(match conversation {
        Some(c) => match memory.remove(c).map_err(ProxyError::storage)? {
            Some(v) => count(v.value()),
            None => 0,
        },
        None => {
            let mut n = 0;
            memory
                .retain(|_, v| {
                    n += count(v);
                    false
                })
                .map_err(ProxyError::storage)?;
            n
        }
    })
}

/// The answer of one op once on disk: what `pick` takes from its result (an unexpected result
/// is a storage error naming it).
fn answer<T: 'static>(
    writer: &mut Store,
    op: Op,
    urgent: bool,
    ctx: &mut actix::Context<Store>,
    pick: impl FnOnce(OpResult) -> Result<T, OpResult> + 'static,
) -> ResponseFuture<Result<T, ProxyError>> {
    let rx = writer.enqueue(op, urgent, ctx);
    Box::pin(async move {
        pick(durable::<ProxySchema>(rx).await?)
            .map_err(|other| ProxyError::Storage(format!("unexpected outcome {other:?}")))
    })
}

/// How many were forgotten.
fn forgotten(result: OpResult) -> Result<u64, OpResult> {
    match result {
        OpResult::Forgotten(n) => Ok(n),
        other => Err(other),
    }
}

impl Handler<SaveView> for Store {
    type Result = ResponseFuture<Result<(), ProxyError>>;

    fn handle(&mut self, msg: SaveView, ctx: &mut actix::Context<Self>) -> Self::Result {
        // Urgent: the version is the floor against rollback, so it is durable before the
        // controller is told it was applied.
        let op = Op::SaveView {
            view: Box::new(msg.view),
        };
        answer(self, op, true, ctx, |_| Ok(()))
    }
}

impl Handler<PruneSeen> for Store {
    type Result = ResponseFuture<Result<u64, ProxyError>>;

    fn handle(&mut self, msg: PruneSeen, ctx: &mut actix::Context<Self>) -> Self::Result {
        let before_ms = msg.before_ms;
        answer(self, Op::PruneSeen { before_ms }, false, ctx, forgotten)
    }
}

impl Handler<Remember> for Store {
    type Result = ResponseFuture<Result<Vec<MemoryTurn>, ProxyError>>;

    fn handle(&mut self, msg: Remember, ctx: &mut actix::Context<Self>) -> Self::Result {
        let op = Op::Remember {
            conversation: msg.conversation,
            turn: msg.turn,
            keep: msg.keep,
            only_after: msg.only_after,
        };
        answer(self, op, true, ctx, |result| match result {
            OpResult::Turns(turns) => Ok(Arc::unwrap_or_clone(turns)),
            other => Err(other),
        })
    }
}

impl Handler<ForgetMemory> for Store {
    type Result = ResponseFuture<Result<u64, ProxyError>>;

    fn handle(&mut self, msg: ForgetMemory, ctx: &mut actix::Context<Self>) -> Self::Result {
        let conversation = msg.conversation;
        answer(self, Op::Forget { conversation }, true, ctx, forgotten)
    }
}

impl Handler<Recall> for Store {
    type Result = Result<Vec<MemoryTurn>, ProxyError>;

    /// Read here, on the writer's thread: one key, committed state (whoever waits for a write
    /// of the memory is answered once it is committed).
    fn handle(&mut self, msg: Recall, _: &mut actix::Context<Self>) -> Self::Result {
        self.db().with(|db| {
            let txn = db.begin_read().map_err(ProxyError::storage)?;
            match txn.open_table(AI_MEMORY) {
                Ok(memory) => recall(&memory, &msg.conversation),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
                Err(e) => Err(ProxyError::storage(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data_plane::DeliveryState;
    use redb::ReadableDatabase;

    fn turn(id: &str) -> MemoryTurn {
        MemoryTurn {
            id: MessageId::parse(id).unwrap(),
            speaker: "alice".into(),
            text: format!("text of {id}"),
            at_ms: 1,
            reply_id: None,
            stopped: false,
        }
    }

    fn ids(turns: &[MemoryTurn]) -> Vec<&str> {
        turns.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn only_accepted_items_start_a_commit() {
        let accept = Op::Accept {
            id: MessageId::parse("m1").unwrap(),
            record: receipt("m1"),
            relay: None,
        };
        assert!(accept.is_urgent(), "its sender is told we hold it");
        let update = Op::Update {
            seq: 1,
            record: receipt("m1"),
        };
        let finish = Op::Finish {
            seq: 1,
            follow_up: Some(receipt("m1")),
        };
        assert!(!update.is_urgent(), "a lost retry time is redone");
        assert!(!finish.is_urgent(), "a lost finish is redone, deduplicated");
    }

    #[test]
    fn a_turn_is_remembered_once_even_when_its_delivery_is_retried() {
        let mut turns = Vec::new();
        assert!(remember(&mut turns, turn("a"), 10, None));
        let mut again = turn("a");
        again.text = "changed".into();
        assert!(!remember(&mut turns, again, 10, None));
        assert_eq!(ids(&turns), ["a"]);
        assert_eq!(turns[0].text, "text of a");
    }

    #[test]
    fn only_the_newest_turns_are_kept() {
        let mut turns = Vec::new();
        for id in ["a", "b", "c", "d"] {
            remember(&mut turns, turn(id), 3, None);
        }
        assert_eq!(ids(&turns), ["b", "c", "d"]);
    }

    #[test]
    fn a_reply_to_a_forgotten_question_is_not_remembered() {
        let mut turns = Vec::new();
        let q = MessageId::parse("q").unwrap();
        assert!(!remember(&mut turns, turn("r"), 10, Some(&q)));
        assert!(turns.is_empty());
        remember(&mut turns, turn("q"), 10, None);
        assert!(remember(&mut turns, turn("r"), 10, Some(&q)));
        assert_eq!(ids(&turns), ["q", "r"]);
    }

    #[test]
    fn answering_again_replaces_the_answers_to_that_question_only() {
        let said = |id: &str, speaker: &str| MemoryTurn {
            speaker: speaker.into(),
            ..turn(id)
        };
        let mut turns = vec![
            said("q1", "alice"),
            said("r1", "BOT"),
            said("q2", "alice"),
            said("r2", "BOT"),
            said("r3", "BOT"),
        ];
        assert_eq!(last_asked(&turns, "bot").map(|t| t.id.as_str()), Some("q2"));
        let q2 = MessageId::parse("q2").unwrap();
        assert!(answer_again(&mut turns, &q2, said("r4", "BOT"), 10));
        assert_eq!(ids(&turns), ["q1", "r1", "q2", "r4"]);
        assert_eq!(turns[2].reply_id.as_ref().map(|r| r.as_str()), Some("r4"));
        assert_eq!(turns[0].reply_id, None, "earlier questions keep theirs");

        // Within the bound; a question forgotten meanwhile (the chat cleared) is not answered.
        assert!(answer_again(&mut turns, &q2, said("r5", "BOT"), 2));
        assert_eq!(ids(&turns), ["q2", "r5"]);
        let gone = MessageId::parse("q1").unwrap();
        assert!(!answer_again(&mut turns, &gone, said("r6", "BOT"), 10));
        assert_eq!(ids(&turns), ["q2", "r5"]);

        assert!(last_asked(&[said("r1", "BOT")], "BOT").is_none());
        assert!(last_asked(&[], "BOT").is_none());
    }

    #[test]
    fn an_answer_given_again_is_written_with_its_reply_in_one_group_and_read_back() {
        let (_dir, db) = db();
        let mut schema = ProxySchema::default();
        let asked = MemoryTurn {
            reply_id: Some(MessageId::parse("r1").unwrap()),
            ..turn("q1")
        };
        let first = MemoryTurn {
            speaker: "BOT".into(),
            ..turn("r1")
        };
        for t in [asked, first] {
            let op = Op::Remember {
                conversation: "alice:bot".into(),
                turn: t,
                keep: 10,
                only_after: None,
            };
            run(&db, &mut schema, vec![op]);
        }
        let again = MemoryTurn {
            speaker: "BOT".into(),
            stopped: true,
            ..turn("r2")
        };
        let reply = Envelope::text("BOT", "alice", "text of r2");
        let ops = vec![
            Op::AnswerAgain {
                conversation: "alice:bot".into(),
                asked: MessageId::parse("q1").unwrap(),
                answer: again,
                keep: 10,
            },
            Op::ai_reply("alice", reply),
        ];
        match &run(&db, &mut schema, ops)[..] {
            [OpResult::Turns(turns), OpResult::Stored { .. }] => {
                assert_eq!(ids(turns), ["q1", "r2"]);
                assert!(turns[1].stopped);
            }
            other => panic!("{other:?}"),
        }
        // What the store holds now (a stopped turn keeps its mark).
        let read: Vec<MemoryTurn> = db
            .with(|db| {
                let txn = db.begin_read().map_err(ProxyError::storage)?;
                let memory = txn.open_table(AI_MEMORY).map_err(ProxyError::storage)?;
                recall(&memory, "alice:bot")
            })
            .unwrap();
        assert_eq!(ids(&read), ["q1", "r2"]);
        assert!(read[1].stopped && !read[0].stopped);
    }

    #[test]
    fn forgetting_clears_one_conversation_or_all() {
        let (_dir, db) = db();
        let mut schema = ProxySchema::default();
        let remember_in = |schema: &mut ProxySchema, c: &str, id: &str| {
            let op = Op::Remember {
                conversation: c.into(),
                turn: turn(id),
                keep: 10,
                only_after: None,
            };
            match &run(&db, schema, vec![op])[..] {
                [OpResult::Turns(turns)] => turns.as_ref().clone(),
                other => panic!("{other:?}"),
            }
        };
        let forget_in = |schema: &mut ProxySchema, c: Option<&str>| {
            let op = Op::Forget {
                conversation: c.map(str::to_string),
            };
            match &run(&db, schema, vec![op])[..] {
                [OpResult::Forgotten(n)] => *n,
                other => panic!("{other:?}"),
            }
        };
        for (c, id) in [
            ("alice:bot", "a"),
            ("alice:bot", "b"),
            ("alice:gemini", "c"),
        ] {
            remember_in(&mut schema, c, id);
        }
        assert_eq!(forget_in(&mut schema, Some("alice:bot")), 2);
        assert_eq!(forget_in(&mut schema, Some("alice:bot")), 0);
        let after = remember_in(&mut schema, "alice:bot", "d");
        assert_eq!(ids(&after), ["d"], "a fresh context after forgetting");
        assert_eq!(forget_in(&mut schema, None), 2);
    }

    fn db() -> (tempfile::TempDir, Arc<SharedDb>) {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = open(&dir.path().join("p.redb"), &dir.path().join("p.wal"), "t").unwrap();
        (dir, db)
    }

    fn receipt(id: &str) -> Record {
        Record::new(
            LaneId::PeerReceipts,
            Payload::Receipt {
                receipt: Receipt {
                    id: MessageId::parse(id).unwrap(),
                    state: DeliveryState::Delivered,
                },
            },
            1,
        )
    }

    fn run(db: &SharedDb, next: &mut ProxySchema, ops: Vec<Op>) -> Vec<OpResult> {
        db.with(|db| crate::storage::apply_group(next, db, &ops, 0, true))
            .unwrap()
    }

    fn accept(id: &str) -> Op {
        Op::Accept {
            id: MessageId::parse(id).unwrap(),
            record: receipt(id),
            relay: None,
        }
    }

    /// A message `from` relayed to bob, `id`, numbered `seq` after `after` in its sequence.
    fn relayed(from: &str, id: &str, seq: u64, after: u64) -> Op {
        let mut envelope = Envelope::text(from, "bob", id);
        envelope.id = MessageId::parse(id).unwrap();
        let payload = Payload::Message {
            envelope,
            origin: Origin::Relay,
        };
        Op::Accept {
            id: MessageId::parse(id).unwrap(),
            record: Record::new(LaneId::PeerInbox, payload, 1_000),
            relay: Some(RelayCheck {
                chain: crate::wire::sealed::Chain { seq, after },
                not_before_ms: 0,
            }),
        }
    }

    #[test]
    fn a_relayed_message_too_old_is_refused_unless_it_was_taken_before() {
        let (_dir, db) = db();
        let mut schema = ProxySchema::default();
        let with_floor = |op: Op, not_before_ms: u64| match op {
            Op::Accept { id, record, relay } => Op::Accept {
                id,
                record,
                relay: relay.map(|r| RelayCheck { not_before_ms, ..r }),
            },
            other => other,
        };
        let taken = relayed("alice", "m1", 10, 0);
        let sent_at = match &taken {
            Op::Accept { record, .. } => match &record.payload {
                Payload::Message { envelope, .. } => envelope.sent_at_ms,
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        assert!(matches!(
            run(&db, &mut schema, vec![taken.clone()])[0],
            OpResult::Stored { .. }
        ));
        // Its id is remembered: a late retry is acknowledged again, not refused for its age.
        let floor = sent_at + 60_000;
        let late = with_floor(relayed("alice", "m1", 20, 0), floor);
        assert_eq!(run(&db, &mut schema, vec![late]), [OpResult::Duplicate]);
        // One never taken, as old: it could be a replay of a forgotten id.
        let old = with_floor(relayed("alice", "m2", 30, 0), floor);
        let refused = run(&db, &mut schema, vec![old]);
        assert!(
            matches!(refused[0], OpResult::TooOld { not_before_ms, .. } if not_before_ms == floor),
            "{refused:?}"
        );
    }

    #[test]
    fn a_relayed_message_is_taken_only_right_after_the_one_it_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = (dir.path().join("p.redb"), dir.path().join("p.wal"));
        let (db, _) = open(&path, &log, "t").unwrap();
        let mut schema = ProxySchema::default();
        let mut step = |db: &SharedDb, op: Op| run(db, &mut schema, vec![op]).remove(0);
        assert!(matches!(
            step(&db, relayed("alice", "m1", 10, 0)),
            OpResult::Stored { .. }
        ));
        // m3 follows m2, which was dropped on the way: held, nothing stored.
        assert_eq!(
            step(&db, relayed("alice", "m3", 30, 20)),
            OpResult::Held {
                after: 20,
                last: 10
            }
        );
        // Another sender's (or conversation's) sequence is its own.
        assert!(matches!(
            step(&db, relayed("carol", "c1", 5, 0)),
            OpResult::Stored { .. }
        ));
        assert!(matches!(
            step(&db, relayed("alice", "m2", 20, 10)),
            OpResult::Stored { .. }
        ));
        assert!(matches!(
            step(&db, relayed("alice", "m3", 30, 20)),
            OpResult::Stored { .. }
        ));
        // A retry numbers afresh: a duplicate's number counts, so what follows it is taken.
        assert_eq!(
            step(&db, relayed("alice", "m3", 40, 0)),
            OpResult::Duplicate
        );
        assert!(matches!(
            step(&db, relayed("alice", "m4", 50, 40)),
            OpResult::Stored { .. }
        ));
        // An unseen message numbered below the last taken: a replay of one its sender gave up
        // on, or a carrier's reordering. Refused, also after a restart.
        drop(db);
        let (db, _) = open(&path, &log, "t").unwrap();
        let mut schema = ProxySchema::default();
        let mut step = |db: &SharedDb, op: Op| run(db, &mut schema, vec![op]).remove(0);
        assert_eq!(
            step(&db, relayed("alice", "m0", 45, 0)),
            OpResult::Stale { seq: 45, last: 50 }
        );
        assert_eq!(
            step(&db, relayed("alice", "m5", 60, 55)),
            OpResult::Held {
                after: 55,
                last: 50
            }
        );
        assert!(matches!(
            step(&db, relayed("alice", "m5", 60, 0)),
            OpResult::Stored { .. }
        ));
        // In one group, in order: a batch's chain holds within it.
        let group = run(
            &db,
            &mut schema,
            vec![
                relayed("alice", "m6", 70, 0),
                relayed("alice", "m7", 71, 70),
            ],
        );
        assert!(
            group.iter().all(|r| matches!(r, OpResult::Stored { .. })),
            "{group:?}"
        );
        // Pruning forgets a sequence with its ids.
        run(&db, &mut schema, vec![Op::PruneSeen { before_ms: 2_000 }]);
        assert!(matches!(
            run(&db, &mut schema, vec![relayed("alice", "m8", 1, 0)])[0],
            OpResult::Stored { .. }
        ));
    }

    #[test]
    fn lanes_pick_the_own_peer_ignoring_case() {
        assert_eq!(LaneId::for_destination("alice", "ALICE"), LaneId::PeerInbox);
        assert_eq!(
            LaneId::for_destination("alice", "Bob"),
            LaneId::Remote("bob".into())
        );
    }

    #[test]
    fn the_same_id_accepted_twice_in_one_batch_or_later_is_stored_once() {
        let (_dir, db) = db();
        let mut next = ProxySchema::default();
        let r = run(&db, &mut next, vec![accept("a"), accept("a"), accept("b")]);
        assert_eq!(
            r,
            [
                OpResult::Stored { seq: 1 },
                OpResult::Duplicate,
                OpResult::Stored { seq: 2 }
            ]
        );
        assert_eq!(
            run(&db, &mut next, vec![accept("b")]),
            [OpResult::Duplicate]
        );
    }

    #[test]
    fn finishing_an_item_removes_it_and_queues_its_follow_up_in_the_same_transaction() {
        let (_dir, db) = db();
        let mut next = ProxySchema::default();
        run(&db, &mut next, vec![accept("a")]);
        let r = run(
            &db,
            &mut next,
            vec![Op::Finish {
                seq: 1,
                follow_up: Some(receipt("a")),
            }],
        );
        assert_eq!(r, [OpResult::Stored { seq: 2 }]);
        assert_eq!(outbox_keys(&db), [2]);
    }

    /// The keys of the items in the outbox table, in order.
    fn outbox_keys(db: &SharedDb) -> Vec<u64> {
        db.with(|db| {
            let txn = db.begin_read().map_err(ProxyError::storage)?;
            let t = txn.open_table(OUTBOX).map_err(ProxyError::storage)?;
            let keys: Vec<u64> = t
                .iter()
                .map_err(ProxyError::storage)?
                .map(|r| r.unwrap().0.value())
                .collect();
            Ok::<_, ProxyError>(keys)
        })
        .unwrap()
    }

    #[test]
    fn a_reopened_store_continues_numbering_after_the_last_item() {
        let (dir, db) = db();
        let mut next = ProxySchema::default();
        run(&db, &mut next, vec![accept("a"), accept("b")]);
        drop(db);
        let (db, _) = open(&dir.path().join("p.redb"), &dir.path().join("p.wal"), "t").unwrap();
        let mut next = ProxySchema::default();
        assert_eq!(
            run(&db, &mut next, vec![accept("c")]),
            [OpResult::Stored { seq: 3 }]
        );
    }

    /// The groups the log has past the database's LSN are applied again at open, numbering
    /// items as the first time (a later group names them by number), and only once.
    #[test]
    fn groups_logged_but_lost_by_the_database_are_applied_again_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (redb, log) = (dir.path().join("p.redb"), dir.path().join("p.wal"));
        {
            let (db, mut wal) = open(&redb, &log, "t").unwrap();
            // Group 1 reached the database: the highest item (2) is gone, the next key is 3.
            let first = vec![
                accept("a"),
                accept("b"),
                Op::Finish {
                    seq: 2,
                    follow_up: None,
                },
            ];
            let mut next = ProxySchema::default();
            db.with(|db| crate::storage::apply_group(&mut next, db, &first, 1, true))
                .unwrap();
            drop(wal.append(&serde_json::to_vec(&first).unwrap()));
            // Groups 2 and 3 reached only the log: item c was numbered 3, then finished.
            let later = [
                vec![accept("c")],
                vec![Op::Finish {
                    seq: 3,
                    follow_up: None,
                }],
            ];
            for group in later {
                drop(wal.append(&serde_json::to_vec(&group).unwrap()));
            }
            db.close();
        }
        let (db, wal) = open(&redb, &log, "t").unwrap();
        assert_eq!(
            outbox_keys(&db),
            [1],
            "c was numbered 3 again, and finished"
        );
        db.close();
        drop(wal);
        let (db, wal) = open(&redb, &log, "t").unwrap();
        assert_eq!(outbox_keys(&db), [1], "applied once");
        let mut next = ProxySchema::default();
        let lsn = wal.next_lsn();
        assert_eq!(
            db.with(|db| crate::storage::apply_group(
                &mut next,
                db,
                &[accept("c"), accept("d")],
                lsn,
                false
            ))
            .unwrap(),
            [OpResult::Duplicate, OpResult::Stored { seq: 4 }]
        );
    }

    #[test]
    fn pruning_forgets_only_ids_seen_before_the_cutoff() {
        let (_dir, db) = db();
        let mut next = ProxySchema::default();
        let mut late = receipt("late");
        late.created_ms = 100;
        let ops = vec![
            accept("early"),
            Op::Accept {
                id: MessageId::parse("late").unwrap(),
                record: late,
                relay: None,
            },
        ];
        run(&db, &mut next, ops);
        assert_eq!(
            run(&db, &mut next, vec![Op::PruneSeen { before_ms: 50 }]),
            [OpResult::Forgotten(1)]
        );
        assert_eq!(
            run(&db, &mut next, vec![accept("late")]),
            [OpResult::Duplicate]
        );
        assert!(matches!(
            run(&db, &mut next, vec![accept("early")])[..],
            [OpResult::Stored { .. }]
        ));
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = receipt("m1");
        let back: Record = serde_json::from_slice(&to_json(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}

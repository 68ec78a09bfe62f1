//! Every conversation of this user, kept in redb at `{data_dir}/peer-{name}.redb`, behind the
//! write-ahead log `peer-{name}.wal` ([`crate::wal`]).
//!
//! Owns: the tables and their keys, idempotent inserts (an id index), delivery-state changes,
//! clearing, and the reads the pages and the legacy API need. Two actors:
//! - [`ChatStore`]: a `SyncArbiter` actor doing the blocking reads, off the event loop.
//! - [`WriteQueue`]: the one writer, on the role's worker thread. Writes wait in its queue
//!   until the current turn of the event loop ends; then one transaction takes all of them
//!   (group commit), committed to redb without waiting for the disk, and the same group is
//!   logged. Each caller is answered once the log has it on disk. Writes nobody waits for now
//!   (hand-over records, receipts) ride along with the next urgent one
//!   ([`crate::group_commit`]). Once logged, it publishes what changed to [`Updates`] (the open
//!   pages).
//!
//! It never talks HTTP and never decides what to send.
//!
//! Tables: `messages` keyed by (conversation, seq) so a page of history is a range scan;
//! `message_ids` (id → key) for idempotency and receipts; `conversations` (per-conversation
//! summary); `unsent` (id → key) our pending messages the proxy has not taken yet, so handing
//! them over again never scans the history; `meta` (the next seq, and the LSN of the last
//! logged group applied). `seq` grows across the
//! whole store and is never reused.
//! fixes original: no whole-file rewrite per message; a retried message is stored once.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::error::PeerError;
use super::updates::{PageEvent, Publish, Updates};
use crate::group_commit::{CommitTimer, GroupWriter};
use crate::wal::Wal;
use crate::wire::data_plane::{DeliveryState, Envelope, MessageId, Receipt};
use crate::wire::legacy::HistoryEntry;

const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const IDS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("message_ids");
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
const UNSENT: TableDefinition<&str, (&str, u64)> = TableDefinition::new("unsent");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
/// The LSN of the last logged group this state has ([`crate::wal`]).
const WAL_LSN: &str = "wal_lsn";

/// Most writes one transaction takes from the queue.
const MAX_BATCH: usize = 1024;

/// Where a message is, from this user's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MessageState {
    /// Someone else's message, stored here.
    Received,
    /// Ours, handed to (or being handed to) the proxy, not yet stored by the receiver.
    Pending,
    /// Ours, stored by the receiver.
    Delivered,
    /// Ours, given up on; `reason` says why.
    Failed { reason: String },
}

impl MessageState {
    /// The word shown to users and in the legacy history's `status`.
    pub fn label(&self) -> &'static str {
        match self {
            MessageState::Received => "received",
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Failed { .. } => "failed",
        }
    }

    /// The state after a receipt saying `proposed`, or None when the receipt changes nothing:
    /// a received message has no delivery state, nothing goes back to pending, and a
    /// delivered message stays delivered (receipts may arrive out of order).
    pub fn after_receipt(&self, proposed: &DeliveryState) -> Option<MessageState> {
        let next = match proposed {
            DeliveryState::Pending => return None,
            DeliveryState::Delivered => MessageState::Delivered,
            DeliveryState::Failed { reason } => MessageState::Failed {
                reason: reason.clone(),
            },
        };
        match self {
            MessageState::Received | MessageState::Delivered => None,
            current if *current == next => None,
            _ => Some(next),
        }
    }
}

/// One message of a conversation, as stored and as the page API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: MessageId,
    /// Position in the store; grows with every stored message. 0 until stored.
    pub seq: u64,
    /// The other party of the conversation, as named by the sender.
    pub peer: String,
    pub from: String,
    pub to: String,
    pub text: String,
    /// When it was born, Unix ms.
    pub sent_at_ms: u64,
    /// Written by this user.
    pub outgoing: bool,
    #[serde(flatten)]
    pub state: MessageState,
    pub auto_reply: bool,
    /// An error report (e.g. from an AI endpoint), shown as such.
    pub error: bool,
    /// Ours, pending, and not yet taken by the proxy: why (e.g. "waiting for your proxy: ...").
    /// It is handed over again until the proxy takes it or it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl StoredMessage {
    /// Our own message, about to be handed to the proxy.
    pub fn outgoing(envelope: &Envelope) -> StoredMessage {
        StoredMessage {
            id: envelope.id.clone(),
            seq: 0,
            peer: envelope.to.clone(),
            from: envelope.from.clone(),
            to: envelope.to.clone(),
            text: envelope.body.text().to_string(),
            sent_at_ms: envelope.sent_at_ms,
            outgoing: true,
            state: MessageState::Pending,
            auto_reply: envelope.auto_reply,
            error: envelope.error,
            waiting: None,
        }
    }

    /// Someone's message to `me`, stored under the sender.
    pub fn incoming(envelope: &Envelope, me: &str) -> StoredMessage {
        let peer = if envelope.from.eq_ignore_ascii_case(me) {
            envelope.to.clone()
        } else {
            envelope.from.clone()
        };
        StoredMessage {
            id: envelope.id.clone(),
            seq: 0,
            peer,
            from: envelope.from.clone(),
            to: envelope.to.clone(),
            text: envelope.body.text().to_string(),
            sent_at_ms: envelope.sent_at_ms,
            outgoing: false,
            state: MessageState::Received,
            auto_reply: envelope.auto_reply,
            error: envelope.error,
            waiting: None,
        }
    }

    /// compat: a row of the original's `GET /get_chat_history/{peer_id}`.
    pub fn history_entry(&self) -> HistoryEntry {
        HistoryEntry {
            peer_id: self.peer.clone(),
            sender: self.from.clone(),
            message: self.text.clone(),
            status: self.state.label().to_string(),
            timestamp: crate::wire::rfc3339_ms(self.sent_at_ms),
            auto_reply: self.auto_reply,
        }
    }
}

/// A conversation's key: the other party's name, ignoring case.
pub fn conversation_key(peer: &str) -> String {
    peer.trim().to_ascii_lowercase()
}

/// Summary of one conversation, kept up to date on every insert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// The other party, as first named.
    pub peer: String,
    pub count: u64,
    pub last_seq: u64,
    pub last_at_ms: u64,
    /// The start of the last message, for the contact list.
    pub last_text: String,
}

/// A page of history: newest first, and where the next (older) page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    /// Pass as `before` for the next older page; None when this page reaches the start.
    pub next_before: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// ChatStore: the blocking side.

/// A write, as applied inside one transaction (and logged, as JSON, for replay).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    Append {
        message: StoredMessage,
    },
    SetState {
        id: MessageId,
        state: DeliveryState,
    },
    /// The proxy took our message (`waiting: None`), or could not be reached (`Some(why)`).
    SetHandOver {
        id: MessageId,
        waiting: Option<String>,
    },
    Clear {
        peer: Option<String>,
    },
}

/// What one [`WriteOp`] did.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// `duplicate`: the id was stored before; `message` is the stored one, unchanged.
    Appended {
        message: StoredMessage,
        duplicate: bool,
    },
    /// `changed`: false when the receipt changed nothing.
    StateSet {
        message: StoredMessage,
        changed: bool,
    },
    Cleared {
        peer: Option<String>,
        removed: u64,
    },
}

impl WriteOutcome {
    /// The outcome of an `Append`.
    fn appended(self) -> Result<Appended, PeerError> {
        match self {
            WriteOutcome::Appended { message, duplicate } => Ok(Appended { message, duplicate }),
            other => Err(other.unexpected()),
        }
    }

    /// The message after a `SetState` or `SetHandOver`.
    fn state_set(self) -> Result<StoredMessage, PeerError> {
        match self {
            WriteOutcome::StateSet { message, .. } => Ok(message),
            other => Err(other.unexpected()),
        }
    }

    /// How many messages a `Clear` removed.
    fn cleared(self) -> Result<u64, PeerError> {
        match self {
            WriteOutcome::Cleared { removed, .. } => Ok(removed),
            other => Err(other.unexpected()),
        }
    }

    fn unexpected(&self) -> PeerError {
        PeerError::Storage(format!("unexpected outcome {self:?}"))
    }
}

/// The newest `limit` messages of a conversation older than `before` (seq).
#[derive(Message)]
#[rtype(result = "Result<HistoryPage, PeerError>")]
pub struct GetPage {
    pub peer: String,
    pub before: Option<u64>,
    pub limit: usize,
}

/// A whole conversation, oldest first (the legacy history).
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredMessage>, PeerError>")]
pub struct GetHistory {
    pub peer: String,
}

/// Every conversation's summary.
#[derive(Message)]
#[rtype(result = "Result<Vec<ConversationSummary>, PeerError>")]
pub struct ListConversations;

/// Our pending messages the proxy has not taken yet, oldest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredMessage>, PeerError>")]
pub struct ListUnsent;

/// The redb database's reads; runs on a `SyncArbiter` (its own threads).
pub struct ChatStore {
    db: Arc<SharedDb>,
}

/// The open database, shared by the store's threads and closed once, on stop (so the same
/// file can be opened again at once, e.g. by a restarted peer in the same process).
pub struct SharedDb(RwLock<Option<Database>>);

impl SharedDb {
    pub fn new(db: Database) -> Self {
        Self(RwLock::new(Some(db)))
    }

    /// Runs `f` with the database; an error once it is closed.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, PeerError>) -> Result<T, PeerError> {
        let guard = self
            .0
            .read()
            .map_err(|_| PeerError::Storage("the store's lock is poisoned".into()))?;
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(PeerError::unavailable("the chat store is closed")),
        }
    }

    /// Closes the database, after the operations in progress.
    pub fn close(&self) {
        match self.0.write() {
            Ok(mut db) => drop(db.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
    }
}

impl ChatStore {
    pub fn new(db: Arc<SharedDb>) -> Self {
        Self { db }
    }

    /// Opens (or creates) the store at `path` with every table present, and its log at
    /// `log`; applies again what the log has that the database lost (a crash), then commits
    /// durably so the log can start again. Blocking.
    pub fn open(path: &Path, log: &Path, tag: &str) -> Result<(Database, Wal), PeerError> {
        let db = Database::create(path)
            .map_err(|e| PeerError::Storage(format!("opening {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(PeerError::storage)?;
        let applied = {
            tx.open_table(MESSAGES).map_err(PeerError::storage)?;
            tx.open_table(IDS).map_err(PeerError::storage)?;
            tx.open_table(CONVERSATIONS).map_err(PeerError::storage)?;
            tx.open_table(UNSENT).map_err(PeerError::storage)?;
            let meta = tx.open_table(META).map_err(PeerError::storage)?;
            let lsn = meta.get(WAL_LSN).map_err(PeerError::storage)?;
            lsn.map_or(0, |g| g.value())
        };
        tx.commit().map_err(PeerError::storage)?;
        let (mut wal, replay) = Wal::open(log, applied, tag)
            .map_err(|e| PeerError::Storage(format!("opening {}: {e}", log.display())))?;
        for (lsn, group) in replay {
            blocking::write_batch(&db, decode(&group)?, lsn, false)?;
        }
        // A durable commit (a checkpoint) of all that, so the log can start again.
        blocking::write_batch(&db, Vec::new(), wal.next_lsn() - 1, true)?;
        wal.checkpointed();
        Ok((db, wal))
    }
}

impl Actor for ChatStore {
    type Context = SyncContext<Self>;
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, PeerError> {
    serde_json::from_slice(bytes).map_err(|e| PeerError::Storage(format!("corrupt record: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PeerError> {
    serde_json::to_vec(value).map_err(PeerError::storage)
}

fn preview(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The tables a write transaction changes, opened once per transaction.
struct Tables<'t> {
    messages: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    ids: redb::Table<'t, &'static str, (&'static str, u64)>,
    convs: redb::Table<'t, &'static str, &'static [u8]>,
    unsent: redb::Table<'t, &'static str, (&'static str, u64)>,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, PeerError> {
        Ok(Self {
            messages: tx.open_table(MESSAGES).map_err(PeerError::storage)?,
            ids: tx.open_table(IDS).map_err(PeerError::storage)?,
            convs: tx.open_table(CONVERSATIONS).map_err(PeerError::storage)?,
            unsent: tx.open_table(UNSENT).map_err(PeerError::storage)?,
        })
    }
}

/// Applies one op. The outer error aborts the whole transaction (storage failure); the
/// inner one is this op's own answer (e.g. an unknown id) and writes nothing.
fn apply(
    tables: &mut Tables<'_>,
    next_seq: &mut u64,
    op: WriteOp,
) -> Result<Result<WriteOutcome, PeerError>, PeerError> {
    let Tables {
        messages,
        ids,
        convs,
        unsent,
    } = tables;
    match op {
        WriteOp::Append { mut message } => {
            let existing = ids
                .get(message.id.as_str())
                .map_err(PeerError::storage)?
                .map(|g| {
                    let (k, q) = g.value();
                    (k.to_string(), q)
                });
            if let Some((key, seq)) = existing {
                let stored = messages
                    .get((key.as_str(), seq))
                    .map_err(PeerError::storage)?;
                if let Some(stored) = stored {
                    let message = decode(stored.value())?;
                    return Ok(Ok(WriteOutcome::Appended {
                        message,
                        duplicate: true,
                    }));
                }
            }
            message.seq = *next_seq;
            *next_seq += 1;
            let key = conversation_key(&message.peer);
            messages
                .insert((key.as_str(), message.seq), encode(&message)?.as_slice())
                .map_err(PeerError::storage)?;
            ids.insert(message.id.as_str(), (key.as_str(), message.seq))
                .map_err(PeerError::storage)?;
            if message.outgoing && message.state == MessageState::Pending {
                unsent
                    .insert(message.id.as_str(), (key.as_str(), message.seq))
                    .map_err(PeerError::storage)?;
            }
            let summary = match convs.get(key.as_str()).map_err(PeerError::storage)? {
                Some(g) => Some(decode::<ConversationSummary>(g.value())?),
                None => None,
            };
            let summary = ConversationSummary {
                peer: summary
                    .as_ref()
                    .map(|c| c.peer.clone())
                    .unwrap_or_else(|| message.peer.clone()),
                count: summary.as_ref().map_or(0, |c| c.count) + 1,
                last_seq: message.seq,
                last_at_ms: message.sent_at_ms,
                last_text: preview(&message.text),
            };
            convs
                .insert(key.as_str(), encode(&summary)?.as_slice())
                .map_err(PeerError::storage)?;
            Ok(Ok(WriteOutcome::Appended {
                message,
                duplicate: false,
            }))
        }
        WriteOp::SetState { id, state } => {
            let found = ids.get(id.as_str()).map_err(PeerError::storage)?.map(|g| {
                let (k, q) = g.value();
                (k.to_string(), q)
            });
            let Some((key, seq)) = found else {
                return Ok(Err(PeerError::UnknownMessage(id.to_string())));
            };
            let stored = match messages
                .get((key.as_str(), seq))
                .map_err(PeerError::storage)?
            {
                Some(g) => decode::<StoredMessage>(g.value())?,
                None => return Ok(Err(PeerError::UnknownMessage(id.to_string()))),
            };
            match stored.state.after_receipt(&state) {
                None => Ok(Ok(WriteOutcome::StateSet {
                    message: stored,
                    changed: false,
                })),
                Some(next) => {
                    let mut message = stored;
                    message.state = next;
                    // Delivered or failed: nothing left to hand over.
                    message.waiting = None;
                    unsent.remove(id.as_str()).map_err(PeerError::storage)?;
                    messages
                        .insert((key.as_str(), seq), encode(&message)?.as_slice())
                        .map_err(PeerError::storage)?;
                    Ok(Ok(WriteOutcome::StateSet {
                        message,
                        changed: true,
                    }))
                }
            }
        }
        WriteOp::SetHandOver { id, waiting } => {
            let found = ids.get(id.as_str()).map_err(PeerError::storage)?.map(|g| {
                let (k, q) = g.value();
                (k.to_string(), q)
            });
            let Some((key, seq)) = found else {
                return Ok(Err(PeerError::UnknownMessage(id.to_string())));
            };
            let Some(mut message) = messages
                .get((key.as_str(), seq))
                .map_err(PeerError::storage)?
                .map(|g| decode::<StoredMessage>(g.value()))
                .transpose()?
            else {
                return Ok(Err(PeerError::UnknownMessage(id.to_string())));
            };
            // Only our pending messages are handed over; a later answer changes nothing else.
            let applies = message.outgoing && message.state == MessageState::Pending;
            let changed = applies && message.waiting != waiting;
            if applies && waiting.is_none() {
                unsent.remove(id.as_str()).map_err(PeerError::storage)?;
            }
            if changed {
                message.waiting = waiting;
                messages
                    .insert((key.as_str(), seq), encode(&message)?.as_slice())
                    .map_err(PeerError::storage)?;
            }
            Ok(Ok(WriteOutcome::StateSet { message, changed }))
        }
        WriteOp::Clear { peer: Some(peer) } => {
            let key = conversation_key(&peer);
            let mut removed_ids = Vec::new();
            for entry in messages
                .extract_from_if((key.as_str(), 0)..=(key.as_str(), u64::MAX), |_, _| true)
                .map_err(PeerError::storage)?
            {
                let (_, v) = entry.map_err(PeerError::storage)?;
                let m: StoredMessage = decode(v.value())?;
                removed_ids.push(m.id);
            }
            for id in &removed_ids {
                ids.remove(id.as_str()).map_err(PeerError::storage)?;
                // A cleared message is not handed over any more.
                unsent.remove(id.as_str()).map_err(PeerError::storage)?;
            }
            convs.remove(key.as_str()).map_err(PeerError::storage)?;
            Ok(Ok(WriteOutcome::Cleared {
                peer: Some(peer),
                removed: removed_ids.len() as u64,
            }))
        }
        WriteOp::Clear { peer: None } => {
            let removed = messages.len().map_err(PeerError::storage)?;
            messages.retain(|_, _| false).map_err(PeerError::storage)?;
            ids.retain(|_, _| false).map_err(PeerError::storage)?;
            convs.retain(|_, _| false).map_err(PeerError::storage)?;
            unsent.retain(|_, _| false).map_err(PeerError::storage)?;
            Ok(Ok(WriteOutcome::Cleared {
                peer: None,
                removed,
            }))
        }
    }
}

/// The blocking operations, on an open database.
mod blocking {
    use super::*;

    /// One transaction, one commit (on disk on return when `durable`), for the whole batch,
    /// recorded as logged group `lsn`.
    pub fn write_batch(
        db: &Database,
        ops: Vec<WriteOp>,
        lsn: u64,
        durable: bool,
    ) -> Result<Vec<Result<WriteOutcome, PeerError>>, PeerError> {
        let mut tx = db.begin_write().map_err(PeerError::storage)?;
        tx.set_durability(crate::group_commit::redb(durable))
            .map_err(PeerError::storage)?;
        let mut outcomes = Vec::with_capacity(ops.len());
        {
            let mut meta = tx.open_table(META).map_err(PeerError::storage)?;
            let mut next_seq = meta
                .get(NEXT_SEQ)
                .map_err(PeerError::storage)?
                .map_or(1, |g| g.value());
            let mut tables = Tables::open(&tx)?;
            for op in ops {
                // A storage error leaves the transaction uncommitted: nothing half-stored.
                outcomes.push(apply(&mut tables, &mut next_seq, op)?);
            }
            meta.insert(NEXT_SEQ, next_seq)
                .map_err(PeerError::storage)?;
            meta.insert(WAL_LSN, lsn).map_err(PeerError::storage)?;
        }
        tx.commit().map_err(PeerError::storage)?;
        Ok(outcomes)
    }

    /// A range scan from the newest end: as fast for the millionth message as for the first.
    pub fn page(
        db: &Database,
        peer: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, PeerError> {
        let tx = db.begin_read().map_err(PeerError::storage)?;
        let table = tx.open_table(MESSAGES).map_err(PeerError::storage)?;
        let key = conversation_key(peer);
        let before = before.unwrap_or(u64::MAX);
        let mut messages = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for entry in table
            .range((key.as_str(), 0)..(key.as_str(), before))
            .map_err(PeerError::storage)?
            .rev()
        {
            if messages.len() == limit {
                more = true;
                break;
            }
            let (_, v) = entry.map_err(PeerError::storage)?;
            messages.push(decode::<StoredMessage>(v.value())?);
        }
        let next_before = if more {
            messages.last().map(|m| m.seq)
        } else {
            None
        };
        Ok(HistoryPage {
            messages,
            next_before,
        })
    }

    /// A whole conversation, oldest first.
    pub fn history(db: &Database, peer: &str) -> Result<Vec<StoredMessage>, PeerError> {
        let tx = db.begin_read().map_err(PeerError::storage)?;
        let table = tx.open_table(MESSAGES).map_err(PeerError::storage)?;
        let key = conversation_key(peer);
        let mut out = Vec::new();
        for entry in table
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .map_err(PeerError::storage)?
        {
            let (_, v) = entry.map_err(PeerError::storage)?;
            out.push(decode::<StoredMessage>(v.value())?);
        }
        Ok(out)
    }

    /// Our pending messages the proxy has not taken yet, oldest first.
    pub fn unsent(db: &Database) -> Result<Vec<StoredMessage>, PeerError> {
        let tx = db.begin_read().map_err(PeerError::storage)?;
        let index = tx.open_table(UNSENT).map_err(PeerError::storage)?;
        let table = tx.open_table(MESSAGES).map_err(PeerError::storage)?;
        let mut out = Vec::new();
        for entry in index.iter().map_err(PeerError::storage)? {
            let (_, v) = entry.map_err(PeerError::storage)?;
            let (key, seq) = v.value();
            if let Some(m) = table.get((key, seq)).map_err(PeerError::storage)? {
                out.push(decode::<StoredMessage>(m.value())?);
            }
        }
        out.sort_by_key(|m| m.seq);
        Ok(out)
    }

    /// Every conversation's summary.
    pub fn conversations(db: &Database) -> Result<Vec<ConversationSummary>, PeerError> {
        let tx = db.begin_read().map_err(PeerError::storage)?;
        let table = tx.open_table(CONVERSATIONS).map_err(PeerError::storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(PeerError::storage)? {
            let (_, v) = entry.map_err(PeerError::storage)?;
            out.push(decode::<ConversationSummary>(v.value())?);
        }
        Ok(out)
    }
}

impl ChatStore {
    /// The newest `limit` messages with `peer` older than `before`, newest first.
    pub fn page(
        &self,
        peer: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, PeerError> {
        self.db.with(|db| blocking::page(db, peer, before, limit))
    }

    /// The whole conversation with `peer`, oldest first.
    pub fn history(&self, peer: &str) -> Result<Vec<StoredMessage>, PeerError> {
        self.db.with(|db| blocking::history(db, peer))
    }

    /// Every conversation's summary.
    pub fn conversations(&self) -> Result<Vec<ConversationSummary>, PeerError> {
        self.db.with(blocking::conversations)
    }

    /// Our pending messages the proxy has not taken yet, oldest first.
    pub fn unsent(&self) -> Result<Vec<StoredMessage>, PeerError> {
        self.db.with(blocking::unsent)
    }
}

impl Handler<GetPage> for ChatStore {
    type Result = Result<HistoryPage, PeerError>;

    fn handle(&mut self, msg: GetPage, _: &mut SyncContext<Self>) -> Self::Result {
        self.page(&msg.peer, msg.before, msg.limit)
    }
}

impl Handler<GetHistory> for ChatStore {
    type Result = Result<Vec<StoredMessage>, PeerError>;

    fn handle(&mut self, msg: GetHistory, _: &mut SyncContext<Self>) -> Self::Result {
        self.history(&msg.peer)
    }
}

impl Handler<ListUnsent> for ChatStore {
    type Result = Result<Vec<StoredMessage>, PeerError>;

    fn handle(&mut self, _: ListUnsent, _: &mut SyncContext<Self>) -> Self::Result {
        self.unsent()
    }
}

impl Handler<ListConversations> for ChatStore {
    type Result = Result<Vec<ConversationSummary>, PeerError>;

    fn handle(&mut self, _: ListConversations, _: &mut SyncContext<Self>) -> Self::Result {
        self.conversations()
    }
}

// ---------------------------------------------------------------------------------------------
// WriteQueue: the async side, group commit.

/// Stores a message unless its id is stored already; answered once it is on disk.
#[derive(Message)]
#[rtype(result = "Result<Appended, PeerError>")]
pub struct AppendMessage {
    pub message: StoredMessage,
}

/// Stores our own message unless its id is stored already, like [`AppendMessage`], but answered
/// as soon as it is committed (visible, in the unsent index), with what resolves once it is on
/// disk: the sender hands it to the proxy meanwhile and answers the user once both hold it.
#[derive(Message)]
#[rtype(result = "Result<(Appended, Durable), PeerError>")]
pub struct AppendOutgoing {
    pub message: StoredMessage,
}

/// Answer to [`AppendMessage`]: the stored message (the earlier one when `duplicate`).
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: StoredMessage,
    pub duplicate: bool,
}

/// A sent message's delivery state changed (receipt, or the proxy refused it).
#[derive(Message)]
#[rtype(result = "Result<StoredMessage, PeerError>")]
pub struct SetDeliveryState {
    pub id: MessageId,
    pub state: DeliveryState,
}

/// Receipts from the proxy: each message's new delivery state. Not urgent: they ride along with
/// the next commit (see [`crate::group_commit`]), and are answered once it is on disk. Each
/// gets its own outcome (an unknown id is [`PeerError::UnknownMessage`]).
#[derive(Message)]
#[rtype(result = "Vec<Result<StoredMessage, PeerError>>")]
pub struct ApplyReceipts {
    pub receipts: Vec<Receipt>,
}

/// Our pending message was taken by the proxy (`waiting: None`), or not (`Some(why)`, shown
/// beside it while it waits to be handed over again).
#[derive(Message)]
#[rtype(result = "Result<StoredMessage, PeerError>")]
pub struct SetHandOver {
    pub id: MessageId,
    pub waiting: Option<String>,
}

/// Several messages in ONE transaction (one commit); answers each one's outcome, in order.
#[derive(Message)]
#[rtype(result = "Vec<Result<Appended, PeerError>>")]
pub struct AppendMany {
    pub messages: Vec<StoredMessage>,
}

/// Deletes one conversation (`peer`), or all of them (None). Answers how many messages went.
#[derive(Message)]
#[rtype(result = "Result<u64, PeerError>")]
pub struct ClearConversations {
    pub peer: Option<String>,
}

/// Resolves once a committed group is on disk (its log record flushed).
pub type Durable = Shared<BoxFuture<'static, Result<(), PeerError>>>;

/// A write's answer, sent as soon as its group is committed (visible to readers), with what
/// tells when it is on disk.
type Committed = Result<(WriteOutcome, Durable), PeerError>;
type Reply = oneshot::Sender<Committed>;

/// A write waiting for the next commit; `with_next`: it must share its commit with the next one
/// (the ops of one [`AppendMany`]).
struct Waiting {
    op: WriteOp,
    reply: Reply,
    with_next: bool,
    /// Someone waits for it now: it starts a commit (see [`crate::group_commit`]).
    urgent: bool,
}

/// How many of the waiting writes (given each one's `with_next`) the next commit takes: up to
/// `max`, but never splitting a group between two commits.
fn commit_size(with_next: impl Iterator<Item = bool>, max: usize) -> usize {
    let mut n = 0;
    for joined in with_next {
        n += 1;
        if n >= max && !joined {
            break;
        }
    }
    n
}

/// Queues writes and commits them in groups; see the module docs.
pub struct WriteQueue {
    db: Arc<SharedDb>,
    wal: Wal,
    updates: Addr<Updates>,
    waiting: VecDeque<Waiting>,
    timer: CommitTimer,
}

impl WriteQueue {
    /// The writer of `db`, logging to `wal` (as opened with it by [`ChatStore::open`]).
    pub fn new(db: Arc<SharedDb>, wal: Wal, updates: Addr<Updates>) -> Self {
        Self {
            db,
            wal,
            updates,
            waiting: VecDeque::new(),
            timer: CommitTimer::default(),
        }
    }

    /// Queues `op` for the next commit; `urgent`: someone waits for it now.
    fn enqueue(
        &mut self,
        op: WriteOp,
        urgent: bool,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Committed> {
        let (reply, rx) = oneshot::channel();
        self.waiting.push_back(Waiting {
            op,
            reply,
            with_next: false,
            urgent,
        });
        self.schedule(ctx);
        rx
    }

    /// Queues `ops` so that they are all in the same commit.
    fn enqueue_group(
        &mut self,
        ops: Vec<WriteOp>,
        urgent: bool,
        ctx: &mut Context<Self>,
    ) -> Vec<oneshot::Receiver<Committed>> {
        let n = ops.len();
        let mut receivers = Vec::with_capacity(n);
        for (i, op) in ops.into_iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            self.waiting.push_back(Waiting {
                op,
                reply,
                with_next: i + 1 < n,
                urgent,
            });
            receivers.push(rx);
        }
        self.schedule(ctx);
        receivers
    }

    /// Commits what is waiting, when [`CommitTimer::schedule`] says.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.waiting.is_empty() {
            let urgent = self.waiting.iter().any(|w| w.urgent);
            CommitTimer::schedule(self, urgent, ctx);
        }
    }

    /// Commits everything waiting (up to [`MAX_BATCH`]) as one transaction and logs it; its
    /// writers are answered once the log has it on disk.
    fn commit_next(&mut self, ctx: &mut Context<Self>) {
        self.timer.committing(ctx);
        if self.waiting.is_empty() {
            return;
        }
        let n = commit_size(self.waiting.iter().map(|w| w.with_next), MAX_BATCH);
        let (ops, replies): (Vec<WriteOp>, Vec<Reply>) =
            self.waiting.drain(..n).map(|w| (w.op, w.reply)).unzip();
        let db = &self.db;
        let committed = encode(&ops).and_then(|logged| {
            self.wal.commit(&logged, |lsn, durable| {
                db.with(|db| blocking::write_batch(db, ops, lsn, durable))
            })
        });
        match committed {
            Ok((outcomes, flushed)) => {
                let durable: Durable = flushed
                    .map(|r| r.map_err(PeerError::Storage))
                    .boxed()
                    .shared();
                let mut changes = Vec::with_capacity(outcomes.len());
                for (outcome, reply) in outcomes.into_iter().zip(replies) {
                    if let Ok(outcome) = &outcome {
                        changes.push(outcome.clone());
                    }
                    let _ = reply.send(outcome.map(|o| (o, durable.clone())));
                }
                // The open pages learn of it once it is on disk.
                durable
                    .into_actor(self)
                    .map(move |durable, act, _| {
                        if durable.is_ok() {
                            changes.iter().for_each(|c| act.publish(c));
                        }
                    })
                    .spawn(ctx);
            }
            Err(e) => {
                log::error!("a write transaction failed, nothing of it stored: {e}");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        self.schedule(ctx);
    }

    /// Tells the open pages what a committed write changed.
    fn publish(&self, outcome: &WriteOutcome) {
        let event = match outcome {
            WriteOutcome::Appended {
                duplicate: true, ..
            }
            | WriteOutcome::StateSet { changed: false, .. } => return,
            WriteOutcome::Appended { message, .. } => PageEvent::Message {
                message: message.clone(),
            },
            WriteOutcome::StateSet { message, .. } => PageEvent::State {
                message: message.clone(),
            },
            WriteOutcome::Cleared { peer, .. } => PageEvent::Cleared { peer: peer.clone() },
        };
        self.updates.do_send(Publish { event });
    }
}

impl Actor for WriteQueue {
    type Context = Context<Self>;
}

impl GroupWriter for WriteQueue {
    fn timer(&mut self) -> &mut CommitTimer {
        &mut self.timer
    }

    fn commit(&mut self, ctx: &mut Context<Self>) {
        self.commit_next(ctx);
    }
}

/// A write's outcome once committed, before it is on disk.
async fn committed(rx: oneshot::Receiver<Committed>) -> Committed {
    rx.await
        .map_err(|_| PeerError::unavailable("the store stopped before committing"))?
}

/// A write's outcome once on disk.
async fn outcome(rx: oneshot::Receiver<Committed>) -> Result<WriteOutcome, PeerError> {
    let (outcome, durable) = committed(rx).await?;
    durable.await?;
    Ok(outcome)
}

impl Handler<AppendMessage> for WriteQueue {
    type Result = ResponseFuture<Result<Appended, PeerError>>;

    fn handle(&mut self, msg: AppendMessage, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(
            WriteOp::Append {
                message: msg.message,
            },
            true,
            ctx,
        );
        Box::pin(async move { outcome(rx).await?.appended() })
    }
}

impl Handler<AppendOutgoing> for WriteQueue {
    type Result = ResponseFuture<Result<(Appended, Durable), PeerError>>;

    fn handle(&mut self, msg: AppendOutgoing, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(
            WriteOp::Append {
                message: msg.message,
            },
            true,
            ctx,
        );
        Box::pin(async move {
            let (outcome, durable) = committed(rx).await?;
            Ok((outcome.appended()?, durable))
        })
    }
}

impl Handler<SetDeliveryState> for WriteQueue {
    type Result = ResponseFuture<Result<StoredMessage, PeerError>>;

    fn handle(&mut self, msg: SetDeliveryState, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(
            WriteOp::SetState {
                id: msg.id,
                state: msg.state,
            },
            true,
            ctx,
        );
        Box::pin(async move { outcome(rx).await?.state_set() })
    }
}

impl Handler<AppendMany> for WriteQueue {
    type Result = ResponseFuture<Vec<Result<Appended, PeerError>>>;

    fn handle(&mut self, msg: AppendMany, ctx: &mut Context<Self>) -> Self::Result {
        let ops = msg
            .messages
            .into_iter()
            .map(|message| WriteOp::Append { message })
            .collect();
        let receivers = self.enqueue_group(ops, true, ctx);
        Box::pin(async move {
            let mut out = Vec::with_capacity(receivers.len());
            for rx in receivers {
                out.push(outcome(rx).await.and_then(WriteOutcome::appended));
            }
            out
        })
    }
}

impl Handler<ApplyReceipts> for WriteQueue {
    type Result = ResponseFuture<Vec<Result<StoredMessage, PeerError>>>;

    fn handle(&mut self, msg: ApplyReceipts, ctx: &mut Context<Self>) -> Self::Result {
        let ops = msg
            .receipts
            .into_iter()
            .map(|r| WriteOp::SetState {
                id: r.id,
                state: r.state,
            })
            .collect();
        let receivers = self.enqueue_group(ops, false, ctx);
        Box::pin(async move {
            let mut out = Vec::with_capacity(receivers.len());
            for rx in receivers {
                out.push(outcome(rx).await.and_then(WriteOutcome::state_set));
            }
            out
        })
    }
}

impl Handler<SetHandOver> for WriteQueue {
    type Result = ResponseFuture<Result<StoredMessage, PeerError>>;

    fn handle(&mut self, msg: SetHandOver, ctx: &mut Context<Self>) -> Self::Result {
        // Bookkeeping: it rides along with the next commit.
        let rx = self.enqueue(
            WriteOp::SetHandOver {
                id: msg.id,
                waiting: msg.waiting,
            },
            false,
            ctx,
        );
        Box::pin(async move { outcome(rx).await?.state_set() })
    }
}

impl Handler<ClearConversations> for WriteQueue {
    type Result = ResponseFuture<Result<u64, PeerError>>;

    fn handle(&mut self, msg: ClearConversations, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(WriteOp::Clear { peer: msg.peer }, true, ctx);
        Box::pin(async move { outcome(rx).await?.cleared() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, peer: &str, text: &str) -> StoredMessage {
        let mut e = Envelope::text(peer, "me", text);
        e.id = MessageId::parse(id).unwrap();
        StoredMessage::incoming(&e, "me")
    }

    fn open(dir: &Path) -> (Arc<SharedDb>, Wal) {
        let (db, wal) = ChatStore::open(&dir.join("t.redb"), &dir.join("t.wal"), "t").unwrap();
        (Arc::new(SharedDb::new(db)), wal)
    }

    fn store() -> (tempfile::TempDir, ChatStore) {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = open(dir.path());
        (dir, ChatStore::new(db))
    }

    fn write(store: &ChatStore, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome, PeerError>> {
        store
            .db
            .with(|db| blocking::write_batch(db, ops, 0, true))
            .unwrap()
    }

    fn page(store: &ChatStore, peer: &str, before: Option<u64>, limit: usize) -> HistoryPage {
        store.page(peer, before, limit).unwrap()
    }

    /// Groups the log has but the database lost (a crash before the next checkpoint) are
    /// applied again, in order, when the store opens; and only once.
    #[actix_rt::test]
    async fn groups_logged_but_lost_by_the_database_are_applied_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut mine = Envelope::text("me", "bob", "hello");
        mine.id = MessageId::parse("m1").unwrap();
        let groups = vec![
            vec![WriteOp::Append {
                message: StoredMessage::outgoing(&mine),
            }],
            vec![
                WriteOp::Append {
                    message: msg("m2", "bob", "hi back"),
                },
                WriteOp::SetState {
                    id: mine.id.clone(),
                    state: DeliveryState::Delivered,
                },
            ],
        ];
        {
            let (_, mut wal) = open(dir.path());
            for group in &groups {
                wal.append(&encode(group).unwrap()).await.unwrap();
            }
        }
        let check = |db: Arc<SharedDb>| {
            let store = ChatStore::new(db);
            let page = page(&store, "bob", None, 10);
            let texts: Vec<(&str, MessageState, u64)> = page
                .messages
                .iter()
                .map(|m| (m.text.as_str(), m.state.clone(), m.seq))
                .collect();
            assert_eq!(
                texts,
                vec![
                    ("hi back", MessageState::Received, 2),
                    ("hello", MessageState::Delivered, 1)
                ]
            );
            assert!(store.unsent().unwrap().is_empty());
            assert_eq!(store.conversations().unwrap()[0].count, 2);
        };
        let (db, wal) = open(dir.path());
        check(db.clone());
        db.close();
        drop(wal);
        let (db, _) = open(dir.path());
        check(db);
    }

    /// Bookkeeping alone (no urgent write to ride along with) is still committed, after
    /// `RIDE_ALONG`; and receipts are answered only once committed.
    #[actix_rt::test]
    async fn writes_that_are_not_urgent_are_committed_without_an_urgent_one() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, wal) = open(dir.path());
        let store = {
            let shared = shared.clone();
            SyncArbiter::start(1, move || ChatStore::new(shared.clone()))
        };
        let writes = WriteQueue::new(shared, wal, Updates::default().start()).start();
        let mut e = Envelope::text("me", "bob", "hello");
        e.id = MessageId::parse("m1").unwrap();
        writes
            .send(AppendMessage {
                message: StoredMessage::outgoing(&e),
            })
            .await
            .unwrap()
            .unwrap();
        let handed = writes.send(SetHandOver {
            id: e.id.clone(),
            waiting: None,
        });
        handed.await.unwrap().unwrap();
        assert!(store.send(ListUnsent).await.unwrap().unwrap().is_empty());
        let applied = writes
            .send(ApplyReceipts {
                receipts: vec![
                    Receipt {
                        id: e.id.clone(),
                        state: DeliveryState::Delivered,
                    },
                    Receipt {
                        id: MessageId::parse("unknown").unwrap(),
                        state: DeliveryState::Delivered,
                    },
                ],
            })
            .await
            .unwrap();
        assert_eq!(applied[0].as_ref().unwrap().state, MessageState::Delivered);
        assert!(matches!(applied[1], Err(PeerError::UnknownMessage(_))));
        let page = store
            .send(GetPage {
                peer: "bob".into(),
                before: None,
                limit: 10,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.messages[0].state, MessageState::Delivered);
    }

    #[test]
    fn a_commit_takes_up_to_the_limit_but_never_splits_a_group() {
        let flags = [false, true, true, false, false];
        assert_eq!(commit_size(flags.into_iter(), 10), 5);
        assert_eq!(commit_size(flags.into_iter(), 1), 1);
        assert_eq!(
            commit_size(flags.into_iter(), 2),
            4,
            "the group 1..=3 stays whole"
        );
        assert_eq!(commit_size(std::iter::empty(), 3), 0);
    }

    #[test]
    fn a_pending_message_leaves_the_unsent_index_when_handed_over_or_given_a_final_state() {
        let (_d, s) = store();
        let ours = |id: &str| {
            let mut e = Envelope::text("me", "bob", id);
            e.id = MessageId::parse(id).unwrap();
            StoredMessage::outgoing(&e)
        };
        let id = |x: &str| MessageId::parse(x).unwrap();
        write(
            &s,
            vec![
                WriteOp::Append { message: ours("a") },
                WriteOp::Append { message: ours("b") },
                WriteOp::Append { message: ours("c") },
                WriteOp::Append {
                    message: msg("d", "bob", "theirs"),
                },
            ],
        );
        let unsent = |s: &ChatStore| -> Vec<String> {
            s.unsent()
                .unwrap()
                .iter()
                .map(|m| m.id.to_string())
                .collect()
        };
        assert_eq!(unsent(&s), ["a", "b", "c"]);
        write(
            &s,
            vec![
                WriteOp::SetHandOver {
                    id: id("a"),
                    waiting: Some("waiting for your proxy: down".into()),
                },
                WriteOp::SetHandOver {
                    id: id("b"),
                    waiting: None,
                },
                WriteOp::SetState {
                    id: id("c"),
                    state: DeliveryState::Failed {
                        reason: "no".into(),
                    },
                },
            ],
        );
        let left = s.unsent().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].waiting.as_deref(),
            Some("waiting for your proxy: down")
        );
        write(
            &s,
            vec![WriteOp::SetState {
                id: id("a"),
                state: DeliveryState::Delivered,
            }],
        );
        assert!(unsent(&s).is_empty());
        let page = page(&s, "bob", None, 10);
        assert!(page.messages.iter().all(|m| m.waiting.is_none()));
    }

    #[test]
    fn a_receipt_never_moves_a_message_back_or_off_delivered() {
        let failed = DeliveryState::Failed { reason: "x".into() };
        assert_eq!(
            MessageState::Pending.after_receipt(&DeliveryState::Delivered),
            Some(MessageState::Delivered)
        );
        assert_eq!(
            MessageState::Delivered.after_receipt(&DeliveryState::Pending),
            None
        );
        assert_eq!(MessageState::Delivered.after_receipt(&failed), None);
        assert_eq!(
            MessageState::Failed { reason: "x".into() }.after_receipt(&DeliveryState::Delivered),
            Some(MessageState::Delivered)
        );
        assert_eq!(
            MessageState::Received.after_receipt(&DeliveryState::Delivered),
            None
        );
    }

    #[test]
    fn the_same_id_is_stored_once() {
        let (_d, s) = store();
        let out = write(
            &s,
            vec![
                WriteOp::Append {
                    message: msg("m1", "bob", "hi"),
                },
                WriteOp::Append {
                    message: msg("m1", "bob", "hi"),
                },
            ],
        );
        assert!(matches!(
            out[0],
            Ok(WriteOutcome::Appended {
                duplicate: false,
                ..
            })
        ));
        assert!(matches!(
            out[1],
            Ok(WriteOutcome::Appended {
                duplicate: true,
                ..
            })
        ));
        assert_eq!(page(&s, "bob", None, 10).messages.len(), 1);
    }

    #[test]
    fn conversations_are_keyed_ignoring_case_and_paged_newest_first() {
        let (_d, s) = store();
        let ops = (0..5)
            .map(|i| WriteOp::Append {
                message: msg(
                    &format!("m{i}"),
                    if i % 2 == 0 { "Bob" } else { "bob" },
                    &i.to_string(),
                ),
            })
            .chain(std::iter::once(WriteOp::Append {
                message: msg("x", "carol", "other"),
            }))
            .collect();
        write(&s, ops);
        let first = page(&s, "BOB", None, 2);
        let texts: Vec<&str> = first.messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["4", "3"]);
        let second = page(&s, "bob", first.next_before, 10);
        let texts: Vec<&str> = second.messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["2", "1", "0"]);
        assert_eq!(second.next_before, None);
    }

    #[test]
    fn clearing_one_conversation_keeps_the_others() {
        let (_d, s) = store();
        write(
            &s,
            vec![
                WriteOp::Append {
                    message: msg("a", "bob", "1"),
                },
                WriteOp::Append {
                    message: msg("b", "carol", "2"),
                },
                WriteOp::Clear {
                    peer: Some("BOB".into()),
                },
            ],
        );
        assert!(page(&s, "bob", None, 10).messages.is_empty());
        assert_eq!(page(&s, "carol", None, 10).messages.len(), 1);
        // The cleared id may be stored again.
        let out = write(
            &s,
            vec![WriteOp::Append {
                message: msg("a", "bob", "1"),
            }],
        );
        assert!(matches!(
            out[0],
            Ok(WriteOutcome::Appended {
                duplicate: false,
                ..
            })
        ));
    }

    #[test]
    fn a_receipt_for_an_unknown_id_is_an_error_that_writes_nothing() {
        let (_d, s) = store();
        let out = write(
            &s,
            vec![WriteOp::SetState {
                id: MessageId::parse("nope").unwrap(),
                state: DeliveryState::Delivered,
            }],
        );
        assert!(matches!(out[0], Err(PeerError::UnknownMessage(_))));
    }
}

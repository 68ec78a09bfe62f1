//! The chat store's schema: its tables and keys, the write ops, and how one group of them is
//! applied inside one transaction ([`ChatSchema`], the kit's [`Schema`]).
//!
//! Tables: `messages` keyed by (conversation, seq) so a page of history is a range scan;
//! `message_ids` (id → key) for idempotency and receipts; `conversations` (per-conversation
//! summary); `unsent` (id → key) our pending messages the proxy has not taken yet, so handing
//! them over again never scans the history; `meta` (the next seq, the auto-reply's place in
//! its lines, and the LSN of the last logged group applied). `seq` grows across the whole store and is never reused.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{conversation_key, ConversationSummary, MessageState, StoredMessage};
use crate::peer::error::PeerError;
use crate::storage::Schema;
use crate::wire::data_plane::{DeliveryState, MessageId};

pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const IDS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("message_ids");
pub(super) const CONVERSATIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("conversations");
pub(super) const UNSENT: TableDefinition<&str, (&str, u64)> = TableDefinition::new("unsent");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
/// How many auto-replies were decided: the next line is this modulo the number of lines. A
/// store without it (e.g. of v0.1.0) starts at the first line.
pub(super) const AUTO_REPLY_NEXT: &str = "auto_reply_next";
/// The LSN of the last logged group this state has ([`crate::storage::wal`]).
const WAL_LSN: &str = "wal_lsn";

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
    /// The auto-reply's place: `next` replies decided so far (see [`AUTO_REPLY_NEXT`]).
    SetAutoReplyNext {
        next: u64,
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
    /// The auto-reply's place was kept.
    AutoReplyNextSet {
        next: u64,
    },
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, PeerError> {
    serde_json::from_slice(bytes).map_err(|e| PeerError::Storage(format!("corrupt record: {e}")))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PeerError> {
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
    meta: redb::Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, PeerError> {
        Ok(Self {
            messages: tx.open_table(MESSAGES).map_err(PeerError::storage)?,
            ids: tx.open_table(IDS).map_err(PeerError::storage)?,
            convs: tx.open_table(CONVERSATIONS).map_err(PeerError::storage)?,
            unsent: tx.open_table(UNSENT).map_err(PeerError::storage)?,
            meta: tx.open_table(META).map_err(PeerError::storage)?,
        })
    }
}

/// The stored message `id`, with its key, if there is one.
fn find(
    ids: &redb::Table<'_, &'static str, (&'static str, u64)>,
    messages: &redb::Table<'_, (&'static str, u64), &'static [u8]>,
    id: &MessageId,
) -> Result<Option<(String, u64, StoredMessage)>, PeerError> {
    let Some((key, seq)) = ids.get(id.as_str()).map_err(PeerError::storage)?.map(|g| {
        let (k, q) = g.value();
        (k.to_string(), q)
    }) else {
        return Ok(None);
    };
    match messages
        .get((key.as_str(), seq))
        .map_err(PeerError::storage)?
    {
        Some(g) => Ok(Some((key, seq, decode::<StoredMessage>(g.value())?))),
        None => Ok(None),
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
        meta,
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
            let Some((key, seq, stored)) = find(ids, messages, &id)? else {
                return Ok(Err(PeerError::UnknownMessage(id.to_string())));
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
            let Some((key, seq, mut message)) = find(ids, messages, &id)? else {
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
        WriteOp::SetAutoReplyNext { next } => {
            meta.insert(AUTO_REPLY_NEXT, next)
                .map_err(PeerError::storage)?;
            Ok(Ok(WriteOutcome::AutoReplyNextSet { next }))
        }
    }
}

/// The chat store's part in the kit: its tables, and a group of [`WriteOp`]s applied in one
/// transaction. A storage error aborts the group; an op's own refusal (an unknown id) is its
/// outcome and writes nothing.
pub struct ChatSchema;

impl Schema for ChatSchema {
    type Op = WriteOp;
    type Outcome = Result<WriteOutcome, PeerError>;
    type Error = PeerError;

    fn create_tables(tx: &WriteTransaction) -> Result<u64, PeerError> {
        tx.open_table(MESSAGES).map_err(PeerError::storage)?;
        tx.open_table(IDS).map_err(PeerError::storage)?;
        tx.open_table(CONVERSATIONS).map_err(PeerError::storage)?;
        tx.open_table(UNSENT).map_err(PeerError::storage)?;
        let meta = tx.open_table(META).map_err(PeerError::storage)?;
        let lsn = meta.get(WAL_LSN).map_err(PeerError::storage)?;
        Ok(lsn.map_or(0, |g| g.value()))
    }

    fn apply(
        &mut self,
        tx: &WriteTransaction,
        ops: &[WriteOp],
        lsn: u64,
    ) -> Result<Vec<Self::Outcome>, PeerError> {
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut tables = Tables::open(tx)?;
        let mut next_seq = tables
            .meta
            .get(NEXT_SEQ)
            .map_err(PeerError::storage)?
            .map_or(1, |g| g.value());
        for op in ops {
            // A storage error leaves the transaction uncommitted: nothing half-stored.
            outcomes.push(apply(&mut tables, &mut next_seq, op.clone())?);
        }
        let meta = &mut tables.meta;
        meta.insert(NEXT_SEQ, next_seq)
            .map_err(PeerError::storage)?;
        meta.insert(WAL_LSN, lsn).map_err(PeerError::storage)?;
        Ok(outcomes)
    }
}

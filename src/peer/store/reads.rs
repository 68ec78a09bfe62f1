//! [`ChatStore`]: the chat store's blocking reads, on a `SyncArbiter` (its own threads), so a
//! page of history never waits behind a commit. It never writes.

use std::sync::Arc;

use actix::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::schema::{decode, AUTO_REPLY_NEXT, CONVERSATIONS, MESSAGES, META, UNSENT};
use super::{conversation_key, ConversationSummary, HistoryPage, StoredMessage};
use crate::peer::error::PeerError;
use crate::storage::SharedDb;

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

/// The newest `limit` messages of any conversation whose text contains `query` (ignoring
/// case), newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredMessage>, PeerError>")]
pub struct Search {
    pub query: String,
    pub limit: usize,
}

/// Every conversation's summary.
#[derive(Message)]
#[rtype(result = "Result<Vec<ConversationSummary>, PeerError>")]
pub struct ListConversations;

/// Our pending messages the proxy has not taken yet, oldest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredMessage>, PeerError>")]
pub struct ListUnsent;

/// The auto-reply's kept place: how many replies were decided before (0 when never kept).
#[derive(Message)]
#[rtype(result = "Result<u64, PeerError>")]
pub struct GetAutoReplyNext;

/// The redb database's reads; runs on a `SyncArbiter` (its own threads).
pub struct ChatStore {
    pub(super) db: Arc<SharedDb>,
}

impl ChatStore {
    pub fn new(db: Arc<SharedDb>) -> Self {
        Self { db }
    }
}

impl Actor for ChatStore {
    type Context = SyncContext<Self>;
}

/// The blocking operations, on an open database.
mod blocking {
    use super::*;

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

    /// Every message's text is read: a scan of the store, newest kept (a chat store is one
    /// person's; a hundred thousand messages take a fraction of a second).
    pub fn search(
        db: &Database,
        query: &str,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, PeerError> {
        let tx = db.begin_read().map_err(PeerError::storage)?;
        let table = tx.open_table(MESSAGES).map_err(PeerError::storage)?;
        let needle = query.to_lowercase();
        let newest_first = |found: &mut Vec<StoredMessage>| {
            found.sort_by_key(|m| std::cmp::Reverse(m.seq));
            found.truncate(limit);
        };
        let mut found = Vec::new();
        for entry in table.iter().map_err(PeerError::storage)? {
            let (_, v) = entry.map_err(PeerError::storage)?;
            let m = decode::<StoredMessage>(v.value())?;
            if m.text.to_lowercase().contains(&needle) {
                found.push(m);
                if found.len() >= limit.saturating_mul(4).max(64) {
                    newest_first(&mut found);
                }
            }
        }
        newest_first(&mut found);
        Ok(found)
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

    /// The auto-reply's kept place (0 when never kept).
    pub fn auto_reply_next(db: &Database) -> Result<u64, PeerError> {
        let tx = db.begin_read().map_err(PeerError::storage)?;
        let meta = tx.open_table(META).map_err(PeerError::storage)?;
        let next = meta.get(AUTO_REPLY_NEXT).map_err(PeerError::storage)?;
        Ok(next.map_or(0, |g| g.value()))
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

    /// The newest `limit` messages containing `query`, newest first.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<StoredMessage>, PeerError> {
        self.db.with(|db| blocking::search(db, query, limit))
    }

    /// Every conversation's summary.
    pub fn conversations(&self) -> Result<Vec<ConversationSummary>, PeerError> {
        self.db.with(blocking::conversations)
    }

    /// Our pending messages the proxy has not taken yet, oldest first.
    pub fn unsent(&self) -> Result<Vec<StoredMessage>, PeerError> {
        self.db.with(blocking::unsent)
    }

    /// The auto-reply's kept place (0 when never kept).
    pub fn auto_reply_next(&self) -> Result<u64, PeerError> {
        self.db.with(blocking::auto_reply_next)
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

impl Handler<GetAutoReplyNext> for ChatStore {
    type Result = Result<u64, PeerError>;

    fn handle(&mut self, _: GetAutoReplyNext, _: &mut SyncContext<Self>) -> Self::Result {
        self.auto_reply_next()
    }
}

impl Handler<Search> for ChatStore {
    type Result = Result<Vec<StoredMessage>, PeerError>;

    fn handle(&mut self, msg: Search, _: &mut SyncContext<Self>) -> Self::Result {
        self.search(&msg.query, msg.limit)
    }
}

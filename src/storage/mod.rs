//! The durable-store kit both data-plane stores are built from (the peer's chat store, the
//! proxy's store): a store supplies only its [`Schema`] (its tables, its operations and how one
//! group of them is applied); the kit does the rest.
//!
//! - [`wal`]: the write-ahead log that makes each group durable before anyone is answered.
//! - [`group_commit`]: when a group's commit happens (urgent writes now, bookkeeping rides along).
//! - [`SharedDb`]: the one open database, shared by a store's readers and its one writer.
//! - [`open`]: open (creating) the database and its log, and apply again what a crash lost.
//! - [`Writer`]: the one writer of a store: queue → encode → log → redb → answer after the flush.
//! - [`StoreTimings`]: how long its commits and log flushes take, for its role's `/metrics`.
//!
//! It knows nothing of messages, chats or outboxes, and never logs the data it stores.

pub mod group_commit;
pub mod wal;
mod writer;

use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, RwLock};

use redb::{Database, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use wal::Wal;
pub use writer::{committed, durable, Applied, Committed, Durable, Write, Writer};

/// A failure of the kit itself; each role turns it into its own error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The database or its log failed; the message names the file where it can.
    #[error("{0}")]
    Failed(String),
    /// The store is closed (shutting down) or its writer has stopped.
    #[error("{0}")]
    Closed(String),
}

impl StorageError {
    pub fn failed(e: impl Display) -> Self {
        StorageError::Failed(e.to_string())
    }
}

/// What a store supplies to the kit.
pub trait Schema: Unpin + 'static {
    /// One write, as applied and as logged (JSON) for replay after a crash.
    type Op: Serialize + DeserializeOwned + Unpin + Send + 'static;
    /// What one op did (a store whose ops can be refused one by one uses a `Result`).
    type Outcome: Clone + Unpin + Send + 'static;
    /// The role's error.
    type Error: From<StorageError> + Clone + Display + Unpin + Send + Sync + 'static;

    /// Creates every table that is missing; answers the LSN of the last logged group the
    /// database has (0 when none).
    fn create_tables(txn: &WriteTransaction) -> Result<u64, Self::Error>;

    /// Applies `ops` in order inside `txn` and records `lsn` as the last group applied. An
    /// error aborts the whole group: nothing of it is written.
    fn apply(
        &mut self,
        txn: &WriteTransaction,
        ops: &[Self::Op],
        lsn: u64,
    ) -> Result<Vec<Self::Outcome>, Self::Error>;
}

/// The open database, shared by a store's threads and closed once, on stop (so the same file
/// can be opened again at once, e.g. by a restarted role in the same process).
pub struct SharedDb(RwLock<Option<Database>>);

impl SharedDb {
    pub fn new(db: Database) -> Self {
        Self(RwLock::new(Some(db)))
    }

    /// Runs `f` with the database; an error once it is closed.
    pub fn with<T, E: From<StorageError>>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        let guard = self
            .0
            .read()
            .map_err(|_| StorageError::failed("the store's lock is poisoned"))?;
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(StorageError::Closed("the store is closed".into()).into()),
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

/// Applies `ops` in ONE write transaction, recorded as logged group `lsn`; on disk on return
/// when `durable` (a checkpoint, see [`wal`]). Nothing is written when it fails.
pub fn apply_group<S: Schema>(
    schema: &mut S,
    db: &Database,
    ops: &[S::Op],
    lsn: u64,
    durable: bool,
) -> Result<Vec<S::Outcome>, S::Error> {
    let mut txn = db.begin_write().map_err(StorageError::failed)?;
    txn.set_durability(group_commit::redb(durable))
        .map_err(StorageError::failed)?;
    let outcomes = schema.apply(&txn, ops, lsn)?;
    txn.commit().map_err(StorageError::failed)?;
    Ok(outcomes)
}

/// Whether a store's writes go through: its database's and its log's, each failing (since
/// when, why) until a write of its own succeeds again, so one cannot clear the other's. Set by
/// the store's writer and its log's thread; read by `/healthz`. A success costs one atomic load.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth(Arc<StoreHealthInner>);

#[derive(Debug, Default)]
struct StoreHealthInner {
    db: HealthSlot,
    log: HealthSlot,
}

#[derive(Debug, Default)]
struct HealthSlot {
    failing: std::sync::atomic::AtomicBool,
    failure: std::sync::Mutex<Option<(u64, String)>>,
}

impl HealthSlot {
    fn record(&self, outcome: Result<(), &str>) {
        use std::sync::atomic::Ordering;
        match outcome {
            Ok(()) if !self.failing.load(Ordering::Relaxed) => {}
            Ok(()) => {
                self.failing.store(false, Ordering::Relaxed);
                if let Ok(mut f) = self.failure.lock() {
                    *f = None;
                }
            }
            Err(e) => {
                if let Ok(mut f) = self.failure.lock() {
                    let since = f.as_ref().map_or_else(crate::wire::now_ms, |(t, _)| *t);
                    *f = Some((since, e.to_string()));
                }
                self.failing.store(true, Ordering::Relaxed);
            }
        }
    }

    fn failure(&self) -> Option<(u64, String)> {
        if !self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

impl StoreHealth {
    /// Records the outcome of a database write.
    pub fn record(&self, outcome: Result<(), &str>) {
        self.0.db.record(outcome);
    }

    /// Records the outcome of a log flush.
    pub fn record_log(&self, outcome: Result<(), &str>) {
        self.0.log.record(outcome);
    }

    /// Since when (ms) and why writes fail, if they do (the earlier failure of the two).
    pub fn failure(&self) -> Option<(u64, String)> {
        match (self.0.db.failure(), self.0.log.failure()) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// Buckets of a store's commits and log flushes (seconds): 50 µs to 2.5 s.
pub const STORE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

/// How long a store's writes take: its database commits (the writer's) and its log's flushes
/// (write and fsync, on the log's thread), for its role's `/metrics`
/// ([`crate::web::metrics::Metrics::watch_store`]). Shared; an observation is a few atomics.
#[derive(Debug, Clone)]
pub struct StoreTimings {
    pub commit: prometheus_client::metrics::histogram::Histogram,
    pub flush: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreTimings {
    fn default() -> Self {
        let buckets = || STORE_BUCKETS.iter().copied();
        Self {
            commit: prometheus_client::metrics::histogram::Histogram::new(buckets()),
            flush: prometheus_client::metrics::histogram::Histogram::new(buckets()),
        }
    }
}

/// Opens (creating if needed, repairing after a crash) the database at `path` with every table
/// of `S`, and its log at `log`; applies again, in order, the groups the log has that the
/// database lost, then commits durably so the log can start again. Blocking.
pub fn open<S: Schema>(
    schema: &mut S,
    path: &Path,
    log: &Path,
    tag: &str,
) -> Result<(Arc<SharedDb>, Wal), S::Error> {
    let db = Database::create(path).map_err(|e| {
        StorageError::Failed(format!("cannot open the store {}: {e}", path.display()))
    })?;
    let txn = db.begin_write().map_err(StorageError::failed)?;
    let applied = S::create_tables(&txn)?;
    txn.commit().map_err(StorageError::failed)?;
    let (mut wal, replay) = Wal::open(log, applied, tag)
        .map_err(|e| StorageError::Failed(format!("cannot open the log {}: {e}", log.display())))?;
    for (lsn, group) in replay {
        let ops: Vec<S::Op> = serde_json::from_slice(&group).map_err(|e| {
            StorageError::Failed(format!("corrupt record in {}: {e}", log.display()))
        })?;
        apply_group(schema, &db, &ops, lsn, false)?;
    }
    // A durable commit (a checkpoint) of all that, so the log can start again.
    apply_group(schema, &db, &[], wal.next_lsn() - 1, true)?;
    wal.checkpointed();
    Ok((Arc::new(SharedDb::new(db)), wal))
}

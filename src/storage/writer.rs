//! [`Writer`]: the one writer of a store, an actor on its role's worker thread. Writes are
//! queued, committed in groups (see [`super::group_commit`]: one redb transaction and one log
//! record each), and each writer is answered as soon as its group is applied (readers see it),
//! with a [`Durable`] that resolves once the log has the group on disk. Nobody may tell a user
//! or another hop "stored" before that resolves.
//!
//! An observer (a `Recipient` given at start) learns of every applied group, in commit order,
//! with each op and what it did: the proxy's outbox puts new items in their lanes from it, the
//! peer's page updates are published from it once the group is on disk.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::oneshot;

use super::group_commit::{CommitTimer, GroupWriter};
use super::{apply_group, Schema, SharedDb, StorageError, Wal};

/// Resolves once a committed group is on disk (its log record flushed).
pub type Durable<E> = Shared<BoxFuture<'static, Result<(), E>>>;

/// A write's answer, sent as soon as its group is applied, with what tells when it is on disk.
pub type Committed<S> =
    Result<(<S as Schema>::Outcome, Durable<<S as Schema>::Error>), <S as Schema>::Error>;

/// Queues ops to be committed in ONE group (never split between two commits). Made by
/// [`Write::new`], which hands out where each op's [`Committed`] comes; sent with `do_send`, so
/// writes from one actor are queued in the order it sent them.
pub struct Write<S: Schema> {
    ops: Vec<(S::Op, oneshot::Sender<Committed<S>>)>,
    urgent: bool,
}

impl<S: Schema> Write<S> {
    /// The write of `ops`; `urgent`: someone waits for them now. Answers, per op, where its
    /// [`Committed`] comes (dropping one is fine: nobody is waiting for that op).
    pub fn new(ops: Vec<S::Op>, urgent: bool) -> (Self, Vec<oneshot::Receiver<Committed<S>>>) {
        let (ops, receivers) = ops
            .into_iter()
            .map(|op| {
                let (reply, rx) = oneshot::channel();
                ((op, reply), rx)
            })
            .unzip();
        (Write { ops, urgent }, receivers)
    }
}

impl<S: Schema> Message for Write<S> {
    type Result = ();
}

/// A group was applied (not yet on disk: `durable` says when), with each op and what it did,
/// in the order they were queued.
pub struct Applied<S: Schema> {
    pub changes: Vec<(S::Op, S::Outcome)>,
    pub durable: Durable<S::Error>,
}

impl<S: Schema> Message for Applied<S> {
    type Result = ();
}

/// A write waiting for the next commit.
struct Waiting<S: Schema> {
    op: S::Op,
    reply: oneshot::Sender<Committed<S>>,
    /// It must share its commit with the next one (the ops of one [`Write`]).
    with_next: bool,
    /// Someone waits for it now: it starts a commit (see [`super::group_commit`]).
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

/// The one writer of a store; see the module docs.
pub struct Writer<S: Schema> {
    schema: S,
    db: Arc<SharedDb>,
    wal: Wal,
    waiting: VecDeque<Waiting<S>>,
    timer: CommitTimer,
    /// Most writes in one commit (a group of one [`Write`] is never split).
    max_group: usize,
    observer: Option<Recipient<Applied<S>>>,
    /// How long each group's database commit took (its log's, [`Wal::timings`]).
    commit_timing: prometheus_client::metrics::histogram::Histogram,
}

impl<S: Schema> Writer<S> {
    /// The writer of `db`, logging to `wal` (as opened together by [`super::open`]), with at
    /// most `max_group` writes a commit.
    pub fn new(schema: S, (db, wal): (Arc<SharedDb>, Wal), max_group: usize) -> Self {
        let commit_timing = wal.timings().commit;
        Self {
            commit_timing,
            schema,
            db,
            wal,
            waiting: VecDeque::new(),
            timer: CommitTimer::default(),
            max_group: max_group.max(1),
            observer: None,
        }
    }

    /// The database (for a read of committed state on the writer's thread).
    pub fn db(&self) -> &SharedDb {
        &self.db
    }

    /// Tells `observer` of every applied group.
    pub fn observed_by(mut self, observer: Recipient<Applied<S>>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Queues `op` for the next commit; `urgent`: someone waits for it now.
    pub fn enqueue(
        &mut self,
        op: S::Op,
        urgent: bool,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Committed<S>> {
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
    pub fn enqueue_group(
        &mut self,
        ops: Vec<S::Op>,
        urgent: bool,
        ctx: &mut Context<Self>,
    ) -> Vec<oneshot::Receiver<Committed<S>>> {
        let (write, receivers) = Write::new(ops, urgent);
        self.queue(write, ctx);
        receivers
    }

    /// Queues a [`Write`]'s ops so that they are all in the same commit.
    fn queue(&mut self, write: Write<S>, ctx: &mut Context<Self>) {
        let n = write.ops.len();
        for (i, (op, reply)) in write.ops.into_iter().enumerate() {
            self.waiting.push_back(Waiting {
                op,
                reply,
                with_next: i + 1 < n,
                urgent: write.urgent,
            });
        }
        self.schedule(ctx);
    }

    /// Commits what is waiting, when [`CommitTimer::schedule`] says.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.waiting.is_empty() {
            let urgent = self.waiting.iter().any(|w| w.urgent);
            CommitTimer::schedule(self, urgent, ctx);
        }
    }

    /// Commits what is waiting (up to `max_group`) as one transaction and logs it; its writers
    /// are answered at once, with what resolves once the log has it on disk.
    fn commit_next(&mut self, ctx: &mut Context<Self>) {
        self.timer.committing(ctx);
        self.commit_group();
        self.schedule(ctx);
    }

    /// Commits the next group of what is waiting (see [`Writer::commit_next`]).
    fn commit_group(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let n = commit_size(self.waiting.iter().map(|w| w.with_next), self.max_group);
        let (ops, replies): (Vec<S::Op>, Vec<_>) =
            self.waiting.drain(..n).map(|w| (w.op, w.reply)).unzip();
        let Self {
            schema,
            db,
            wal,
            commit_timing,
            ..
        } = self;
        let committed = serde_json::to_vec(&ops)
            .map_err(|e| S::Error::from(StorageError::failed(e)))
            .and_then(|logged| {
                wal.commit(&logged, |lsn, durable| {
                    let started = std::time::Instant::now();
                    let applied = db.with(|db| apply_group(schema, db, &ops, lsn, durable));
                    commit_timing.observe(started.elapsed().as_secs_f64());
                    applied
                })
            });
        match committed {
            Ok((outcomes, flushed)) => {
                self.wal.health_ref().record(Ok(()));
                let durable: Durable<S::Error> = flushed
                    .map(|r| r.map_err(|e| S::Error::from(StorageError::Failed(e))))
                    .boxed()
                    .shared();
                for (outcome, reply) in outcomes.iter().zip(replies) {
                    let _ = reply.send(Ok((outcome.clone(), durable.clone())));
                }
                if let Some(observer) = &self.observer {
                    observer.do_send(Applied {
                        changes: ops.into_iter().zip(outcomes).collect(),
                        durable,
                    });
                }
            }
            Err(e) => {
                log::error!("a write transaction failed, nothing of it stored: {e}");
                self.wal.health_ref().record(Err(&e.to_string()));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl<S: Schema> Actor for Writer<S> {
    type Context = Context<Self>;
}

/// A writer dropped with writes still waiting for their group (its server stopped within a
/// ride-along wait) commits them now: a graceful stop loses no bookkeeping, so a hand-over
/// recorded as done is not made again after a restart.
impl<S: Schema> Drop for Writer<S> {
    fn drop(&mut self) {
        while !self.waiting.is_empty() {
            self.commit_group();
        }
    }
}

impl<S: Schema> GroupWriter for Writer<S> {
    fn timer(&mut self) -> &mut CommitTimer {
        &mut self.timer
    }

    fn commit(&mut self, ctx: &mut Context<Self>) {
        self.commit_next(ctx);
    }
}

impl<S: Schema> Handler<Write<S>> for Writer<S> {
    type Result = ();

    fn handle(&mut self, msg: Write<S>, ctx: &mut Context<Self>) {
        self.queue(msg, ctx);
    }
}

/// A write's answer once its group is applied (readers see it), before it is on disk.
pub async fn committed<S: Schema>(rx: oneshot::Receiver<Committed<S>>) -> Committed<S> {
    rx.await.map_err(|_| {
        S::Error::from(StorageError::Closed(
            "the store stopped before committing".into(),
        ))
    })?
}

/// A write's answer once its group is on disk.
pub async fn durable<S: Schema>(
    rx: oneshot::Receiver<Committed<S>>,
) -> Result<S::Outcome, S::Error> {
    let (outcome, durable) = committed::<S>(rx).await?;
    durable.await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition, WriteTransaction};
    use serde::{Deserialize, Serialize};

    const VALUES: TableDefinition<u64, u64> = TableDefinition::new("values");
    const LSN: TableDefinition<&str, u64> = TableDefinition::new("lsn");

    /// A store of counters: `Add` adds to a key and answers the new value.
    struct Counters;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Add {
        key: u64,
        by: u64,
    }

    #[derive(Debug, Clone, PartialEq, thiserror::Error)]
    #[error("{0}")]
    struct Error(String);

    impl From<StorageError> for Error {
        fn from(e: StorageError) -> Self {
            Error(e.to_string())
        }
    }

    impl Schema for Counters {
        type Op = Add;
        type Outcome = u64;
        type Error = Error;

        fn create_tables(txn: &WriteTransaction) -> Result<u64, Error> {
            txn.open_table(VALUES).map_err(StorageError::failed)?;
            let lsn = txn.open_table(LSN).map_err(StorageError::failed)?;
            let applied = redb::ReadableTable::get(&lsn, "lsn").map_err(StorageError::failed)?;
            Ok(applied.map_or(0, |g| g.value()))
        }

        fn apply(
            &mut self,
            txn: &WriteTransaction,
            ops: &[Add],
            lsn: u64,
        ) -> Result<Vec<u64>, Error> {
            let mut values = txn.open_table(VALUES).map_err(StorageError::failed)?;
            let mut out = Vec::new();
            for op in ops {
                let now = redb::ReadableTable::get(&values, op.key)
                    .map_err(StorageError::failed)?
                    .map_or(0, |g| g.value());
                values
                    .insert(op.key, now + op.by)
                    .map_err(StorageError::failed)?;
                out.push(now + op.by);
            }
            txn.open_table(LSN)
                .map_err(StorageError::failed)?
                .insert("lsn", lsn)
                .map_err(StorageError::failed)?;
            Ok(out)
        }
    }

    /// A fresh store in `dir`: the database and its log.
    fn open(dir: &tempfile::TempDir) -> (Arc<SharedDb>, Wal) {
        open_at(dir.path())
    }

    fn open_at(dir: &std::path::Path) -> (Arc<SharedDb>, Wal) {
        let (path, log) = (dir.join("c.redb"), dir.join("c.wal"));
        super::super::open(&mut Counters, &path, &log, "test").unwrap()
    }

    /// Writes `ops` as one group; their answers once on disk.
    async fn write(
        writer: &Addr<Writer<Counters>>,
        ops: Vec<Add>,
        urgent: bool,
    ) -> Vec<Result<u64, Error>> {
        let (write, receivers) = Write::new(ops, urgent);
        writer.do_send(write);
        let mut answers = Vec::new();
        for rx in receivers {
            answers.push(durable::<Counters>(rx).await);
        }
        answers
    }

    fn value(db: &SharedDb, key: u64) -> u64 {
        db.with(|db| {
            let txn = db.begin_read().map_err(StorageError::failed)?;
            let table = txn.open_table(VALUES).map_err(StorageError::failed)?;
            let v = redb::ReadableTable::get(&table, key).map_err(StorageError::failed)?;
            Ok::<_, Error>(v.map_or(0, |g| g.value()))
        })
        .unwrap()
    }

    /// Observes applied groups: how many and how large.
    #[derive(Default)]
    struct Groups(Vec<usize>);

    impl Actor for Groups {
        type Context = Context<Self>;
    }

    impl Handler<Applied<Counters>> for Groups {
        type Result = ();
        fn handle(&mut self, msg: Applied<Counters>, _: &mut Context<Self>) {
            self.0.push(msg.changes.len());
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<usize>")]
    struct Sizes;

    impl Handler<Sizes> for Groups {
        type Result = MessageResult<Sizes>;
        fn handle(&mut self, _: Sizes, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.0.clone())
        }
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

    #[actix_rt::test]
    async fn writes_of_one_turn_share_a_group_and_are_answered_once_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(&dir);
        let db = opened.0.clone();
        let groups = Groups::default().start();
        let writer = Writer::new(Counters, opened, 1)
            .observed_by(groups.clone().recipient())
            .start();
        let (write, a) = Write::new(vec![Add { key: 1, by: 2 }], true);
        writer.do_send(write);
        let (write, b) = Write::new(
            vec![
                Add { key: 1, by: 3 },
                Add { key: 2, by: 1 },
                Add { key: 1, by: 1 },
            ],
            true,
        );
        writer.do_send(write);
        let mut answers = Vec::new();
        for rx in a.into_iter().chain(b) {
            answers.push(durable::<Counters>(rx).await.unwrap());
        }
        assert_eq!(answers, vec![2, 5, 1, 6]);
        assert_eq!(value(&db, 1), 6);
        // One write a group at most, but the three of one Write stay together.
        assert_eq!(groups.send(Sizes).await.unwrap(), vec![1, 3]);
    }

    #[actix_rt::test]
    async fn each_commit_and_each_log_flush_is_timed() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(&dir);
        let timings = opened.1.timings();
        let writer = Writer::new(Counters, opened, 64).start();
        for by in 1..=3 {
            write(&writer, vec![Add { key: 1, by }], true).await;
        }
        let metrics = crate::web::metrics::Metrics::new("proxy");
        metrics.watch_store(&timings);
        let text = metrics.encode();
        let count = |name: &str| -> u64 {
            let line = format!("overlay_{name}_count{{role=\"proxy\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{line} in\n{text}"))
        };
        assert_eq!(
            count("store_commit_duration_seconds"),
            3,
            "one commit a group"
        );
        let flushes = count("wal_flush_duration_seconds");
        assert!(
            (1..=3).contains(&flushes),
            "a flush for one or more groups: {flushes}"
        );
    }

    #[actix_rt::test]
    async fn a_reopened_store_has_every_group_the_log_flushed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opened = open(&dir);
            let db = opened.0.clone();
            let writer = Writer::new(Counters, opened, 64).start();
            for by in 1..=10 {
                write(&writer, vec![Add { key: 7, by }], by % 2 == 0).await;
            }
            // Closed without a checkpoint: redb has the groups only lazily, the log durably.
            db.close();
        }
        let (db, _wal) = open(&dir);
        assert_eq!(value(&db, 7), 55);
    }

    #[test]
    fn a_write_waiting_for_its_group_when_the_writer_stops_is_committed_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let opened = open_at(&path);
                let writer = Writer::new(Counters, opened, 64).start();
                // Not urgent: it waits up to RIDE_ALONG for a commit to ride along with.
                let (write, _answers) = Write::new(vec![Add { key: 9, by: 5 }], false);
                writer.do_send(write);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            });
            // The system (its server, in a role) stops: the writer is dropped with it.
        })
        .join()
        .unwrap();
        let (db, _wal) = open(&dir);
        assert_eq!(value(&db, 9), 5);
    }

    #[actix_rt::test]
    async fn a_closed_store_answers_closed_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(&dir);
        let db = opened.0.clone();
        let writer = Writer::new(Counters, opened, 64).start();
        db.close();
        for answer in write(&writer, vec![Add { key: 1, by: 1 }], true).await {
            let err = answer.unwrap_err();
            assert!(err.0.contains("closed"), "{err}");
        }
    }
}

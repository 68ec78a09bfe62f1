//! The write-ahead log in front of a store's redb database: a group of writes reaches the disk
//! as one small sequential flush instead of a redb commit's scattered page writes.
//!
//! A store applies each group of writes to redb at once without waiting for the disk
//! (`Durability::None`: readers see it at once) and hands the same group, serialized, to its
//! log under the next log sequence number (LSN), which goes into the same redb commit. The
//! log's own thread writes whatever groups have arrived and flushes them together (one
//! `fdatasync`); only then is anyone answered. Every so often a group's redb commit is durable
//! (a checkpoint) and the log starts again at its beginning.
//!
//! After a crash redb holds some commit no older than the last checkpoint, and its LSN says
//! which groups it has; [`Wal::open`] returns the groups the log has after that LSN, which the
//! store applies again, in order, before anything else.
//!
//! The file is filled with zeros ahead of the writes and overwritten in place, so a flush writes
//! data, not file-size metadata. A record is `len: u32 | lsn: u64 | crc32: u32 | payload`
//! (little-endian; the CRC covers `len`, `lsn` and the payload). Reading stops at the first
//! record that is short, torn, or not the next LSN.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::oneshot;

/// Bytes before a record's payload.
const HEADER: usize = 16;
/// The file grows by this much (zero-filled) when a write would pass its end.
const CHUNK: u64 = 1 << 20;
/// A checkpoint is due once the log holds this much since the last one...
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// ... or this many groups (each checkpoint's redb commit stays small).
const CHECKPOINT_GROUPS: u64 = 4096;

/// Logged groups to apply again, in order, each with its LSN.
pub type Replay = Vec<(u64, Vec<u8>)>;

/// Resolves once a group is on disk, or with why it is not.
pub type Flushed = BoxFuture<'static, Result<(), String>>;

enum Command {
    Append {
        record: Vec<u8>,
        flushed: oneshot::Sender<Result<(), String>>,
    },
    /// Every group so far is in a durable redb commit: write the next at the beginning.
    Restart,
}

/// A store's log; owned by the one writer of that store.
pub struct Wal {
    path: PathBuf,
    health: super::StoreHealth,
    timings: super::StoreTimings,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    next_lsn: u64,
    bytes_since_checkpoint: u64,
    groups_since_checkpoint: u64,
}

impl Wal {
    /// Whether this store's writes go through (shared with `/healthz`).
    pub fn health(&self) -> super::StoreHealth {
        self.health.clone()
    }

    /// How long its writes take (shared with its thread, and the role's `/metrics`).
    pub fn timings(&self) -> super::StoreTimings {
        self.timings.clone()
    }

    /// The same, borrowed (for its writer, at every commit).
    pub(super) fn health_ref(&self) -> &super::StoreHealth {
        &self.health
    }

    /// Opens (creating) the log at `path` of a store whose redb state has every group up to
    /// LSN `applied`. Returns the log and the groups it holds after `applied`, in order, each
    /// with its LSN: the store must apply them, commit durably (as LSN `next_lsn() - 1`) and
    /// call [`Wal::checkpointed`] before anything else is written. Blocking.
    pub fn open(path: &Path, applied: u64, tag: &str) -> io::Result<(Wal, Replay)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let contents = std::fs::read(path)?;
        let (replay, end) = records_after(&contents, applied);
        if !replay.is_empty() {
            log::info!(
                "{tag}: {} logged groups to apply again after an unclean stop ({})",
                replay.len(),
                path.display()
            );
        }
        let next_lsn = applied + replay.len() as u64 + 1;
        let (commands, receiver) = mpsc::channel();
        let allocated = contents.len() as u64;
        let thread_tag = tag.to_string();
        let health = super::StoreHealth::default();
        let thread_health = health.clone();
        let timings = super::StoreTimings::default();
        let flush_timing = timings.flush.clone();
        let thread = std::thread::Builder::new()
            .name(format!("wal {tag}"))
            .spawn(move || {
                crate::logging::tag_thread(&thread_tag);
                Writer {
                    file,
                    offset: end as u64,
                    allocated,
                    health: thread_health,
                    flush_timing,
                }
                .run(receiver)
            })?;
        let wal = Wal {
            path: path.to_path_buf(),
            health,
            timings,
            commands: Some(commands),
            thread: Some(thread),
            next_lsn,
            bytes_since_checkpoint: end as u64,
            groups_since_checkpoint: replay.len() as u64,
        };
        Ok((wal, replay))
    }

    /// The LSN the next group takes.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Whether the next group's redb commit should be durable (a checkpoint).
    fn checkpoint_due(&self) -> bool {
        self.bytes_since_checkpoint >= CHECKPOINT_BYTES
            || self.groups_since_checkpoint >= CHECKPOINT_GROUPS
    }

    /// Commits a group: `apply(lsn, checkpoint)` writes it to the database as LSN `lsn`,
    /// durably when `checkpoint`; only once it has, the group (`payload`) is logged. Answers
    /// what `apply` did, and what resolves once the log has the group on disk.
    pub fn commit<T, E>(
        &mut self,
        payload: &[u8],
        apply: impl FnOnce(u64, bool) -> Result<T, E>,
    ) -> Result<(T, Flushed), E> {
        let checkpoint = self.checkpoint_due();
        let applied = apply(self.next_lsn, checkpoint)?;
        let flushed = self.append(payload);
        if checkpoint {
            self.checkpointed();
        }
        Ok((applied, flushed))
    }

    /// Logs a group (in the database as LSN [`Wal::next_lsn`]); resolves once on disk.
    pub fn append(&mut self, payload: &[u8]) -> Flushed {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let record = encode(lsn, payload);
        self.bytes_since_checkpoint += record.len() as u64;
        self.groups_since_checkpoint += 1;
        let (flushed, answer) = oneshot::channel();
        if let Some(c) = &self.commands {
            // Refused only when the writer has stopped: `answer` then says so.
            let _ = c.send(Command::Append { record, flushed });
        }
        let path = self.path.display().to_string();
        async move {
            answer
                .await
                .unwrap_or_else(|_| Err(format!("the log {path} has stopped")))
        }
        .boxed()
    }

    /// Every group appended so far is in a durable redb commit: the log starts again.
    pub fn checkpointed(&mut self) {
        self.bytes_since_checkpoint = 0;
        self.groups_since_checkpoint = 0;
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Restart);
        }
    }
}

impl Drop for Wal {
    /// Writes and flushes what is queued, then lets the file go.
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One record's bytes.
fn encode(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(&lsn.to_le_bytes());
    crc.update(payload);
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&lsn.to_le_bytes());
    record.extend_from_slice(&crc.finalize().to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// The records after LSN `applied` (consecutive from `applied + 1`), with their LSNs, and the
/// offset where the log's valid records end.
fn records_after(log: &[u8], applied: u64) -> (Replay, usize) {
    let mut replay = Vec::new();
    let mut at = 0;
    let mut expected = None;
    while let Some(header) = log.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let lsn = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        let Some(payload) = log.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        let mut check = crc32fast::Hasher::new();
        check.update(&header[0..12]);
        check.update(payload);
        if len == 0 || check.finalize() != crc {
            break;
        }
        match expected {
            // Records of an older round (before the last restart) are all at or before `applied`.
            None if lsn <= applied => {}
            None if lsn == applied + 1 => {
                replay.push((lsn, payload.to_vec()));
                expected = Some(lsn + 1);
            }
            Some(next) if lsn == next => {
                replay.push((lsn, payload.to_vec()));
                expected = Some(lsn + 1);
            }
            _ => break,
        }
        at += HEADER + len;
    }
    (replay, at)
}

/// The log's thread.
struct Writer {
    file: File,
    offset: u64,
    /// The file's length: everything past `offset` up to it is written already (zeros or old
    /// records), so overwriting it changes no metadata.
    allocated: u64,
    health: super::StoreHealth,
    /// How long each round's write and fsync took.
    flush_timing: prometheus_client::metrics::histogram::Histogram,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        while let Ok(first) = commands.recv() {
            let mut waiting = Vec::new();
            let mut buffer = Vec::new();
            let mut result = Ok(());
            let started = std::time::Instant::now();
            for command in std::iter::once(first).chain(commands.try_iter()) {
                match command {
                    Command::Append { record, flushed } => {
                        buffer.extend_from_slice(&record);
                        waiting.push(flushed);
                    }
                    Command::Restart => {
                        if result.is_ok() {
                            result = self.write(&buffer);
                        }
                        buffer.clear();
                        self.offset = 0;
                    }
                }
            }
            if result.is_ok() {
                result = self.write(&buffer);
            }
            if result.is_ok() && !waiting.is_empty() {
                result = self.file.sync_data();
                self.flush_timing.observe(started.elapsed().as_secs_f64());
            }
            let answer = result.map_err(|e| format!("writing the store's log: {e}"));
            if let Err(e) = &answer {
                log::error!("{e}");
            }
            self.health
                .record_log(answer.as_ref().map(|_| ()).map_err(String::as_str));
            for flushed in waiting {
                let _ = flushed.send(answer.clone());
            }
        }
        let _ = self.file.sync_data();
    }

    /// Writes `bytes` at the offset, growing the file (zero-filled, flushed) first if needed.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let end = self.offset + bytes.len() as u64;
        if end > self.allocated {
            let grown = end.div_ceil(CHUNK) * CHUNK;
            let zeros = vec![0u8; CHUNK as usize];
            let mut at = self.allocated;
            while at < grown {
                let n = (grown - at).min(CHUNK) as usize;
                self.file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            self.file.sync_all()?;
            self.allocated = grown;
        }
        self.file.write_all_at(bytes, self.offset)?;
        self.offset = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn flushed(f: Flushed) {
        f.await.unwrap();
    }

    #[actix_rt::test]
    async fn groups_after_the_applied_lsn_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        {
            let (mut wal, replay) = Wal::open(&path, 0, "t").unwrap();
            assert!(replay.is_empty());
            assert_eq!(wal.next_lsn(), 1);
            for text in ["one", "two", "three"] {
                flushed(wal.append(text.as_bytes())).await;
            }
        }
        let (wal, replay) = Wal::open(&path, 1, "t").unwrap();
        assert_eq!(replay, vec![(2, b"two".to_vec()), (3, b"three".to_vec())]);
        assert_eq!(wal.next_lsn(), 4);
        drop(wal);
        let (_, replay) = Wal::open(&path, 3, "t").unwrap();
        assert!(replay.is_empty(), "everything applied already");
    }

    #[actix_rt::test]
    async fn after_a_checkpoint_the_log_starts_again_and_old_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        {
            let (mut wal, _) = Wal::open(&path, 0, "t").unwrap();
            for text in ["a long first record", "a long second record", "third"] {
                flushed(wal.append(text.as_bytes())).await;
            }
            wal.checkpointed();
            // Shorter than the old first record: the old records after it stay in the file.
            flushed(wal.append(b"4")).await;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, CHUNK, "preallocated, zero-filled");
        let (wal, replay) = Wal::open(&path, 3, "t").unwrap();
        assert_eq!(replay, vec![(4, b"4".to_vec())]);
        assert_eq!(wal.next_lsn(), 5);
        drop(wal);
        // Crashed between the checkpoint's commit and the next append: nothing to redo.
        let (_, replay) = Wal::open(&path, 4, "t").unwrap();
        assert!(replay.is_empty());
    }

    #[actix_rt::test]
    async fn a_torn_or_missing_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        {
            let (mut wal, _) = Wal::open(&path, 0, "t").unwrap();
            for text in ["one", "two", "three"] {
                flushed(wal.append(text.as_bytes())).await;
            }
        }
        // Tear the second record's payload.
        let second = HEADER + 3 + HEADER;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (mut wal, replay) = Wal::open(&path, 0, "t").unwrap();
        assert_eq!(replay, vec![(1, b"one".to_vec())]);
        assert_eq!(wal.next_lsn(), 2, "the torn record's LSN is given again");
        // The next record overwrites the torn one.
        flushed(wal.append(b"two again")).await;
        drop(wal);
        let (_, replay) = Wal::open(&path, 0, "t").unwrap();
        assert_eq!(
            replay,
            vec![(1, b"one".to_vec()), (2, b"two again".to_vec())]
        );
        // A gap after the applied LSN (a lost record) is not skipped over.
        assert!(records_after(&std::fs::read(&path).unwrap(), 5)
            .0
            .is_empty());
        assert_eq!(
            records_after(&encode(7, b"x"), 5).0.len(),
            0,
            "LSN 6 is missing"
        );
    }

    #[test]
    fn checkpoints_come_due_by_groups() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(&dir.path().join("t.wal"), 0, "t").unwrap();
        for _ in 0..CHECKPOINT_GROUPS {
            assert!(!wal.checkpoint_due());
            drop(wal.append(b"x"));
        }
        assert!(wal.checkpoint_due());
        wal.checkpointed();
        assert!(!wal.checkpoint_due());
    }

    /// A group is logged only once the database has it; the group whose commit is due to be
    /// durable is told so, and after it the log starts again.
    #[actix_rt::test]
    async fn a_group_is_logged_after_its_commit_and_checkpoints_restart_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        let (mut wal, _) = Wal::open(&path, 0, "t").unwrap();
        let refused: Result<((), Flushed), &str> = wal.commit(b"lost", |lsn, _| {
            assert_eq!(lsn, 1);
            Err("the database refused it")
        });
        assert!(refused.is_err());
        assert_eq!(wal.next_lsn(), 1, "nothing logged: the LSN is given again");
        let mut durable = Vec::new();
        for i in 0..=CHECKPOINT_GROUPS {
            let (lsn, flushed) = wal
                .commit(format!("g{i}").as_bytes(), |lsn, checkpoint| {
                    durable.push(checkpoint);
                    Ok::<_, ()>(lsn)
                })
                .unwrap();
            assert_eq!(lsn, i + 1);
            flushed.await.unwrap();
        }
        let last = CHECKPOINT_GROUPS as usize;
        assert!(durable[..last].iter().all(|d| !d));
        assert!(
            durable[last],
            "the group after {CHECKPOINT_GROUPS} is a checkpoint"
        );
        let (g, flushed) = wal
            .commit(b"after", |lsn, c| Ok::<_, ()>((lsn, c)))
            .unwrap();
        assert_eq!(g, (CHECKPOINT_GROUPS + 2, false));
        flushed.await.unwrap();
        drop(wal);
        // The checkpoint's database state has everything up to it: the log holds only what came
        // after, at its beginning.
        let (_, replay) = Wal::open(&path, CHECKPOINT_GROUPS + 1, "t").unwrap();
        assert_eq!(replay, vec![(CHECKPOINT_GROUPS + 2, b"after".to_vec())]);
        let (_, end) = records_after(&std::fs::read(&path).unwrap(), CHECKPOINT_GROUPS + 1);
        assert_eq!(end, HEADER + b"after".len(), "at the log's beginning");
    }
}

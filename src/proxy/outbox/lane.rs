//! [`Lane`]: one destination's queue in the outbox, as plain state. Head-of-line: the head is
//! tried first and alone (or at the front of a batch), so a conversation keeps its order. What
//! to do next, what an attempt's outcome changes (retry time, expiry, what is finished and how),
//! and which items go together in one batch are plain functions of the lane's state and the
//! time, passed in: no clock, timer, I/O or actor here (the [`super::Outbox`] does those).

use std::collections::VecDeque;

use super::super::delivery::Outcome;
use super::super::store::{Op, Payload, Record};
use crate::wire::data_plane::{DeliveryState, Envelope, MessageId, Receipt};

/// One queued item: its outbox key and what it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub seq: u64,
    pub record: Record,
}

/// How retries are timed and when an item expires.
pub struct RetryPolicy<J: FnMut(u32) -> u64> {
    /// Items older than this (ms since queued) fail instead of being retried again.
    pub expire_after_ms: u64,
    /// Whether this lane's items expire (a remote destination's do; the own peer's do not).
    pub expires: bool,
    /// The wait (ms) before retry number `n` (1 = the first retry), jittered.
    pub wait_ms: J,
}

/// What to do for a lane now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Empty: the lane can go.
    Empty,
    /// An attempt is under way.
    Busy,
    /// Its head is due at this time (Unix ms).
    WaitUntil(u64),
    /// Its head is due: start an attempt.
    Start,
}

/// What an attempt's outcome asks of the store: items finished (with the state their sender
/// is told) and records to update.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub finished: Vec<(Item, DeliveryState)>,
    pub updates: Vec<Op>,
}

/// One destination's queue; see the module docs.
#[derive(Debug, Default)]
pub struct Lane {
    items: VecDeque<Item>,
    /// An attempt for the head is under way.
    busy: bool,
    /// The route changed during an attempt: retry at once if it fails.
    woken: bool,
    /// Items still to be sent one by one, after a batch was refused as a whole.
    solo: usize,
}

impl Lane {
    /// Adds a newly stored item at the end.
    pub fn push(&mut self, item: Item) {
        self.items.push_back(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn head(&self) -> Option<&Item> {
        self.items.front()
    }

    /// When its oldest item was queued (Unix ms); none when empty. A lane of messages is in
    /// the order they were queued, so that is its head's; receipts are kept in order of their
    /// next try, so each one is looked at.
    pub fn oldest_ms(&self) -> Option<u64> {
        let head = self.items.front()?;
        match head.record.payload {
            Payload::Message { .. } => Some(head.record.created_ms),
            Payload::Receipt { .. } => self.items.iter().map(|i| i.record.created_ms).min(),
        }
    }

    /// Whether message `id` is queued here.
    pub fn holds(&self, id: &MessageId) -> bool {
        self.items.iter().any(
            |i| matches!(&i.record.payload, Payload::Message { envelope, .. } if &envelope.id == id),
        )
    }

    /// What to do at `now`.
    pub fn next(&self, now: u64) -> Next {
        match self.items.front() {
            None => Next::Empty,
            Some(_) if self.busy => Next::Busy,
            Some(head) if head.record.next_try_ms > now => Next::WaitUntil(head.record.next_try_ms),
            Some(_) => Next::Start,
        }
    }

    /// An attempt starts.
    pub fn start(&mut self) {
        self.busy = true;
    }

    /// An attempt ended without a verdict on any item (stale, or to be restarted).
    pub fn idle(&mut self) {
        self.busy = false;
    }

    /// Retry now: the route changed. Marked for an at-once retry when an attempt is under way.
    pub fn wake(&mut self, now: u64) {
        if self.busy {
            self.woken = true;
        } else if let Some(head) = self.items.front_mut() {
            head.record.next_try_ms = now;
        }
    }

    /// How many new messages (of `ids`) this lane can take before it holds `max`: Err with the
    /// count queued when it cannot take them all. Messages queued already (a resend) count as
    /// nothing: they are answered as duplicates.
    pub fn room_for(&self, ids: &[&MessageId], max: usize) -> Result<(), usize> {
        let queued = self.items.len();
        let adding = if queued + ids.len() > max {
            ids.iter().filter(|id| !self.holds(id)).count()
        } else {
            ids.len()
        };
        if queued + adding > max {
            Err(queued)
        } else {
            Ok(())
        }
    }

    /// The messages at the head that go in one batch: at most `max`, within `budget` bytes
    /// (estimated), at least two, and none while the lane sends one by one.
    pub fn batch(&self, max: usize, budget: usize) -> Option<(Vec<u64>, Vec<Envelope>)> {
        if self.solo > 0 || self.items.len() < 2 {
            return None;
        }
        let (mut seqs, mut envelopes, mut size) = (Vec::new(), Vec::new(), 2usize);
        for item in self.items.iter().take(max) {
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
        (envelopes.len() >= 2).then_some((seqs, envelopes))
    }

    /// The receipts at the head due at `now` that go together: at most `max`, at least two.
    pub fn due_receipts(&self, now: u64, max: usize) -> Option<(Vec<u64>, Vec<Receipt>)> {
        let mut seqs = Vec::new();
        let mut receipts = Vec::new();
        for item in self.items.iter().take(max) {
            let Payload::Receipt { receipt } = &item.record.payload else {
                break;
            };
            if item.record.next_try_ms > now {
                break;
            }
            seqs.push(item.seq);
            receipts.push(receipt.clone());
        }
        (seqs.len() >= 2).then_some((seqs, receipts))
    }

    /// The head (item `seq`) was tried at `now` with `outcome`. A stale outcome (the head is
    /// another item by now) changes nothing. Handed on: finished, delivered. Refused: finished,
    /// failed with the reason. Not now: the head's next try is set by the policy (at once when
    /// the route changed meanwhile), and on a lane that expires every item queued longer than
    /// the expiry fails, with how long its destination has been unreachable.
    pub fn tried<J: FnMut(u32) -> u64>(
        &mut self,
        seq: u64,
        outcome: Outcome,
        now: u64,
        policy: &mut RetryPolicy<J>,
        unreachable_for: &str,
    ) -> Verdict {
        self.busy = false;
        let woken = std::mem::take(&mut self.woken);
        let mut verdict = Verdict::default();
        if self.items.front().map(|i| i.seq) != Some(seq) {
            return verdict;
        }
        if !matches!(outcome, Outcome::Retry { .. }) {
            self.solo = self.solo.saturating_sub(1);
        }
        match outcome {
            Outcome::Delivered => {
                verdict.finished.extend(
                    self.items
                        .pop_front()
                        .map(|item| (item, DeliveryState::Delivered)),
                );
            }
            Outcome::Refused { reason } | Outcome::Unsupported { reason } => {
                if let Some(item) = self.items.pop_front() {
                    log::warn!("{}: given up: {reason}", describe(&item.record));
                    verdict
                        .finished
                        .push((item, DeliveryState::Failed { reason }));
                }
            }
            Outcome::Retry { what, error } => {
                if let Some(head) = self.items.front_mut() {
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
                if policy.expires {
                    let (old, keep): (Vec<Item>, Vec<Item>) =
                        std::mem::take(&mut self.items).into_iter().partition(|i| {
                            i.record.created_ms.saturating_add(policy.expire_after_ms) <= now
                        });
                    self.items = keep.into();
                    expired = old;
                }
                let wait = if woken {
                    0
                } else {
                    let attempts = self.items.front().map_or(1, |h| h.record.attempts);
                    (policy.wait_ms)(attempts)
                };
                if let Some(head) = self.items.front_mut().filter(|h| h.seq == seq) {
                    head.record.next_try_ms = now + wait;
                    verdict.updates.push(Op::Update {
                        seq,
                        record: head.record.clone(),
                    });
                }
                let reason = format!(
                    "{what} has been unreachable for {unreachable_for} (last error: {error})"
                );
                for item in expired {
                    log::warn!("{}: expired: {reason}", describe(&item.record));
                    let state = DeliveryState::Failed {
                        reason: reason.clone(),
                    };
                    verdict.finished.push((item, state));
                }
            }
        }
        verdict
    }

    /// Whether a batch of `seqs` is still the head of the lane (nothing of it finished
    /// meanwhile); the outcome of a batch that is not is ignored.
    pub fn batch_is_head(&self, seqs: &[u64]) -> bool {
        self.items.len() >= seqs.len() && self.items.iter().zip(seqs).all(|(i, s)| i.seq == *s)
    }

    /// A batch of the first `n` items was handed on: they are finished, delivered.
    pub fn batch_delivered(&mut self, n: usize) -> Verdict {
        self.busy = false;
        self.woken = false;
        let n = n.min(self.items.len());
        Verdict {
            finished: self
                .items
                .drain(..n)
                .map(|item| (item, DeliveryState::Delivered))
                .collect(),
            updates: Vec::new(),
        }
    }

    /// A batch of `n` was refused as a whole (one bad envelope refuses all): send these one by
    /// one, so each gets its own verdict.
    pub fn one_by_one(&mut self, n: usize) {
        self.busy = false;
        self.solo = n;
    }

    /// Receipts `seqs` were posted at `now`, each with its own outcome (their order does not
    /// matter: each id gets one final state). Handed on or refused: finished (nothing is told
    /// of a receipt). Not now: retried later, each by its own count; the lane is kept in order
    /// of next try, so the head is the first one due.
    pub fn receipts_tried<J: FnMut(u32) -> u64>(
        &mut self,
        seqs: Vec<u64>,
        outcomes: Vec<Outcome>,
        now: u64,
        wait_ms: &mut J,
    ) -> Verdict {
        self.busy = false;
        let mut verdict = Verdict::default();
        for (seq, outcome) in seqs.into_iter().zip(outcomes) {
            let Some(pos) = self.items.iter().position(|i| i.seq == seq) else {
                continue;
            };
            match outcome {
                Outcome::Delivered => verdict.finished.extend(
                    self.items
                        .remove(pos)
                        .map(|item| (item, DeliveryState::Delivered)),
                ),
                Outcome::Refused { reason } | Outcome::Unsupported { reason } => {
                    if let Some(item) = self.items.remove(pos) {
                        log::warn!("{}: given up: {reason}", describe(&item.record));
                        verdict
                            .finished
                            .push((item, DeliveryState::Failed { reason }));
                    }
                }
                Outcome::Retry { what, error } => {
                    let item = &mut self.items[pos];
                    item.record.attempts += 1;
                    item.record.first_try_ms.get_or_insert(now);
                    item.record.last_error = Some(format!("{what}: {error}"));
                    item.record.next_try_ms = now + wait_ms(item.record.attempts);
                    verdict.updates.push(Op::Update {
                        seq,
                        record: item.record.clone(),
                    });
                }
            }
        }
        self.items
            .make_contiguous()
            .sort_by_key(|i| (i.record.next_try_ms, i.seq));
        verdict
    }

    /// The head's attempts so far and last error (for the outbox's status).
    pub fn head_status(&self) -> (u32, Option<String>) {
        self.items.front().map_or((0, None), |h| {
            (h.record.attempts, h.record.last_error.clone())
        })
    }
}

/// "message m1 for bob" / "receipt for m1", for logs.
pub fn describe(record: &Record) -> String {
    match &record.payload {
        Payload::Message { envelope, .. } => {
            format!("message {} for {}", envelope.id, envelope.to)
        }
        Payload::Receipt { receipt } => format!("receipt for {}", receipt.id),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::store::{LaneId, Origin};
    use super::*;

    const EXPIRE: u64 = 10_000;

    fn message(seq: u64, created_ms: u64) -> Item {
        let mut envelope = Envelope::text("alice", "bob", format!("text {seq}"));
        envelope.id = MessageId::parse(&format!("m{seq}")).unwrap();
        let payload = Payload::Message {
            envelope,
            origin: Origin::OwnPeer,
        };
        Item {
            seq,
            record: Record::new(LaneId::Remote("bob".into()), payload, created_ms),
        }
    }

    fn receipt(seq: u64) -> Item {
        let payload = Payload::Receipt {
            receipt: Receipt {
                id: MessageId::parse(&format!("m{seq}")).unwrap(),
                state: DeliveryState::Delivered,
            },
        };
        Item {
            seq,
            record: Record::new(LaneId::PeerReceipts, payload, 0),
        }
    }

    fn lane(items: Vec<Item>) -> Lane {
        let mut lane = Lane::default();
        items.into_iter().for_each(|i| lane.push(i));
        lane
    }

    #[test]
    fn the_oldest_item_is_a_message_lanes_head_and_any_of_a_receipt_lane() {
        assert_eq!(Lane::default().oldest_ms(), None);
        let messages = lane(vec![message(1, 100), message(2, 200)]);
        assert_eq!(messages.oldest_ms(), Some(100));
        let (mut late, mut early) = (receipt(1), receipt(2));
        late.record.created_ms = 500;
        early.record.created_ms = 50;
        // Receipts are kept in order of their next try: the oldest may be anywhere.
        assert_eq!(lane(vec![late, early]).oldest_ms(), Some(50));
    }

    fn retry() -> Outcome {
        Outcome::Retry {
            what: "bob's proxy".into(),
            error: "connection refused".into(),
        }
    }

    fn policy(wait: u64) -> RetryPolicy<impl FnMut(u32) -> u64> {
        RetryPolicy {
            expire_after_ms: EXPIRE,
            expires: true,
            wait_ms: move |_| wait,
        }
    }

    fn seqs(lane: &Lane) -> Vec<u64> {
        lane.items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn the_head_is_started_when_due_and_waited_for_otherwise() {
        let mut l = lane(vec![message(1, 0)]);
        assert_eq!(l.next(0), Next::Start);
        l.start();
        assert_eq!(l.next(0), Next::Busy);
        let v = l.tried(1, retry(), 100, &mut policy(50), "1h");
        assert_eq!(v.updates.len(), 1);
        assert_eq!(l.next(120), Next::WaitUntil(150));
        assert_eq!(l.next(150), Next::Start);
        assert_eq!(Lane::default().next(0), Next::Empty);
    }

    #[test]
    fn a_delivered_head_is_finished_and_the_next_one_becomes_the_head() {
        let mut l = lane(vec![message(1, 0), message(2, 0)]);
        l.start();
        let v = l.tried(1, Outcome::Delivered, 5, &mut policy(50), "1h");
        assert_eq!(v.finished.len(), 1);
        assert_eq!(v.finished[0].0.seq, 1);
        assert_eq!(v.finished[0].1, DeliveryState::Delivered);
        assert_eq!(seqs(&l), [2]);
    }

    #[test]
    fn an_outcome_for_an_item_that_is_no_longer_the_head_changes_nothing() {
        let mut l = lane(vec![message(2, 0)]);
        l.start();
        let v = l.tried(1, Outcome::Delivered, 5, &mut policy(50), "1h");
        assert_eq!(v, Verdict::default());
        assert_eq!(seqs(&l), [2]);
        assert_eq!(l.next(5), Next::Start, "no longer busy");
    }

    #[test]
    fn a_refused_head_fails_with_the_reason_and_the_lane_goes_on() {
        let mut l = lane(vec![message(1, 0), message(2, 0)]);
        let refused = Outcome::Refused {
            reason: "bob's proxy refused it: too large".into(),
        };
        let v = l.tried(1, refused, 5, &mut policy(50), "1h");
        assert_eq!(
            v.finished[0].1,
            DeliveryState::Failed {
                reason: "bob's proxy refused it: too large".into()
            }
        );
        assert_eq!(seqs(&l), [2]);
    }

    #[test]
    fn a_failed_attempt_counts_and_keeps_the_error_and_the_order() {
        let mut l = lane(vec![message(1, 0), message(2, 0)]);
        let v = l.tried(1, retry(), 100, &mut policy(70), "1h");
        let head = l.head().unwrap();
        assert_eq!(head.seq, 1, "head-of-line: the head stays first");
        assert_eq!(head.record.attempts, 1);
        assert_eq!(head.record.first_try_ms, Some(100));
        assert_eq!(head.record.next_try_ms, 170);
        assert_eq!(
            head.record.last_error.as_deref(),
            Some("bob's proxy: connection refused")
        );
        assert_eq!(
            v.updates,
            [Op::Update {
                seq: 1,
                record: head.record.clone()
            }]
        );
    }

    #[test]
    fn the_wait_grows_with_the_head_s_attempts() {
        let mut l = lane(vec![message(1, 0)]);
        let mut asked = Vec::new();
        let mut p = RetryPolicy {
            expire_after_ms: EXPIRE,
            expires: true,
            wait_ms: |n| {
                asked.push(n);
                10 * u64::from(n)
            },
        };
        for _ in 0..3 {
            l.tried(1, retry(), 100, &mut p, "1h");
        }
        assert_eq!(asked, [1, 2, 3]);
        assert_eq!(l.head().unwrap().record.next_try_ms, 130);
    }

    #[test]
    fn items_queued_longer_than_the_expiry_fail_saying_how_long_the_destination_was_unreachable() {
        let mut l = lane(vec![message(1, 0), message(2, 500), message(3, 9_000)]);
        let v = l.tried(1, retry(), EXPIRE + 600, &mut policy(50), "10s");
        let failed: Vec<u64> = v.finished.iter().map(|(i, _)| i.seq).collect();
        assert_eq!(failed, [1, 2]);
        assert_eq!(
            v.finished[0].1,
            DeliveryState::Failed {
                reason: "bob's proxy has been unreachable for 10s (last error: connection refused)"
                    .into()
            }
        );
        assert_eq!(seqs(&l), [3]);
        assert!(v.updates.is_empty(), "the head that was tried is gone");
    }

    #[test]
    fn the_own_peer_s_lane_never_expires() {
        let mut l = lane(vec![message(1, 0)]);
        let mut p = RetryPolicy {
            expire_after_ms: EXPIRE,
            expires: false,
            wait_ms: |_| 5,
        };
        let v = l.tried(1, retry(), EXPIRE * 10, &mut p, "10s");
        assert!(v.finished.is_empty());
        assert_eq!(seqs(&l), [1]);
    }

    #[test]
    fn a_lane_woken_during_an_attempt_retries_at_once_if_it_fails() {
        let mut l = lane(vec![message(1, 0)]);
        l.start();
        l.wake(50);
        l.tried(1, retry(), 100, &mut policy(5_000), "1h");
        assert_eq!(l.next(100), Next::Start);
        // Woken only once: the next failure waits again.
        l.tried(1, retry(), 100, &mut policy(5_000), "1h");
        assert_eq!(l.next(100), Next::WaitUntil(5_100));
    }

    #[test]
    fn an_idle_lane_woken_is_due_at_once() {
        let mut l = lane(vec![message(1, 0)]);
        l.tried(1, retry(), 100, &mut policy(5_000), "1h");
        l.wake(200);
        assert_eq!(l.next(200), Next::Start);
    }

    #[test]
    fn a_batch_takes_the_head_messages_within_the_budget_and_needs_two() {
        let l = lane((1..=5).map(|s| message(s, 0)).collect());
        let (seqs, envelopes) = l.batch(3, 1 << 20).unwrap();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(envelopes.len(), 3);
        // Each message counts ~520 bytes here: a budget for two.
        let (seqs, _) = l.batch(10, 1100).unwrap();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(l.batch(10, 600), None, "one fits: no batch");
        assert_eq!(lane(vec![message(1, 0)]).batch(10, 1 << 20), None);
    }

    #[test]
    fn after_a_refused_batch_its_items_go_one_by_one_then_batching_resumes() {
        let mut l = lane((1..=4).map(|s| message(s, 0)).collect());
        l.start();
        assert!(l.batch_is_head(&[1, 2]));
        l.one_by_one(2);
        assert_eq!(l.batch(10, 1 << 20), None);
        // A retry is no verdict: still one by one.
        l.tried(1, retry(), 0, &mut policy(0), "1h");
        assert_eq!(l.batch(10, 1 << 20), None);
        l.tried(1, Outcome::Delivered, 0, &mut policy(0), "1h");
        assert_eq!(l.batch(10, 1 << 20), None);
        let refused = Outcome::Refused {
            reason: "bad".into(),
        };
        l.tried(2, refused, 0, &mut policy(0), "1h");
        assert_eq!(l.batch(10, 1 << 20).unwrap().0, [3, 4]);
    }

    #[test]
    fn a_delivered_batch_finishes_its_items_and_a_stale_one_is_not_the_head() {
        let mut l = lane((1..=3).map(|s| message(s, 0)).collect());
        assert!(!l.batch_is_head(&[2, 3]));
        assert!(!l.batch_is_head(&[1, 2, 3, 4]));
        l.start();
        let v = l.batch_delivered(2);
        let done: Vec<u64> = v.finished.iter().map(|(i, _)| i.seq).collect();
        assert_eq!(done, [1, 2]);
        assert_eq!(seqs(&l), [3]);
        assert_eq!(l.next(0), Next::Start);
    }

    #[test]
    fn receipts_due_go_together_and_each_retries_on_its_own() {
        let mut l = lane((1..=4).map(receipt).collect());
        let (seqs_due, receipts) = l.due_receipts(0, 3).unwrap();
        assert_eq!(seqs_due, [1, 2, 3]);
        assert_eq!(receipts.len(), 3);
        let outcomes = vec![retry(), Outcome::Delivered, retry()];
        let mut waits = [300, 100].into_iter();
        let v = l.receipts_tried(seqs_due, outcomes, 1000, &mut |_| waits.next().unwrap());
        assert_eq!(v.finished.len(), 1);
        assert_eq!(v.updates.len(), 2);
        // In order of next try: 4 (due now), 3 (at 1100), 1 (at 1300).
        assert_eq!(seqs(&l), [4, 3, 1]);
        assert_eq!(l.due_receipts(1000, 10), None, "only one is due");
        assert_eq!(l.due_receipts(1100, 10).unwrap().0, [4, 3]);
    }

    #[test]
    fn a_full_lane_refuses_new_messages_but_not_ones_it_holds() {
        let l = lane(vec![message(1, 0), message(2, 0)]);
        let (m1, m3) = (
            MessageId::parse("m1").unwrap(),
            MessageId::parse("m3").unwrap(),
        );
        assert_eq!(l.room_for(&[&m3], 3), Ok(()));
        assert_eq!(l.room_for(&[&m3], 2), Err(2));
        assert_eq!(l.room_for(&[&m1], 2), Ok(()), "a resend is a duplicate");
    }
}

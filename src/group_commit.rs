//! When a store's group commit happens, and whether it must reach the disk before it returns.
//!
//! Both stores (the proxy's outbox, the peer's chat store) queue their writes and commit them in
//! groups, one commit at a time. Each write says two things:
//! - **urgent**: someone is waiting for it now (a user's send, a message handed over or relayed
//!   to us). It starts a commit as soon as none is under way. Other writes (bookkeeping,
//!   receipts) wait for the next commit to ride along with, at most [`RIDE_ALONG`]: they do not
//!   make commits of their own while urgent ones keep coming, so the urgent ones wait less.
//! - **must be durable**: someone will be told it is stored ("the proxy holds your message",
//!   a receipt answered). The commit holding it reaches the disk (an fsync) before it returns.
//!   A commit of bookkeeping only need not: lost in a crash, it is redone on restart (the item
//!   is handed on again and its receiver, which deduplicates by id, answers that it has it), and
//!   the next durable commit takes it to the disk anyway.

use std::time::Duration;

use redb::Durability;

/// Longest a write that is not urgent waits for a commit to ride along with.
pub const RIDE_ALONG: Duration = Duration::from_millis(20);

/// Most lazy commits in a row: then one is durable anyway (redb frees pages only in durable
/// commits, and it bounds what a crash makes the stores redo).
pub const MAX_LAZY_IN_A_ROW: u32 = 32;

/// Decides each commit's durability; one per store writer.
#[derive(Debug, Default)]
pub struct CommitPolicy {
    lazy_in_a_row: u32,
}

impl CommitPolicy {
    /// Whether the next commit reaches the disk before it returns; it must when
    /// `must_be_durable`.
    pub fn next(&mut self, must_be_durable: bool) -> bool {
        if must_be_durable || self.lazy_in_a_row >= MAX_LAZY_IN_A_ROW {
            self.lazy_in_a_row = 0;
            true
        } else {
            self.lazy_in_a_row += 1;
            false
        }
    }
}

/// The redb durability of a commit that is `durable` or not.
pub fn redb(durable: bool) -> Durability {
    if durable {
        Durability::Immediate
    } else {
        Durability::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_must_be_durable_always_is() {
        let mut p = CommitPolicy::default();
        for _ in 0..100 {
            assert!(p.next(true));
        }
    }

    #[test]
    fn lazy_commits_are_bounded() {
        let mut p = CommitPolicy::default();
        let durable: Vec<bool> = (0..=MAX_LAZY_IN_A_ROW).map(|_| p.next(false)).collect();
        assert!(durable[..MAX_LAZY_IN_A_ROW as usize].iter().all(|d| !d));
        assert!(durable[MAX_LAZY_IN_A_ROW as usize]);
        assert!(!p.next(false), "the count starts again");
        assert!(p.next(true));
        assert!(!p.next(false), "a durable commit starts the count again");
    }
}

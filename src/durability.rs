//! When a group commit must be on the disk before anyone is answered.
//!
//! Both stores (the proxy's outbox, the peer's chat store) commit in groups. A group holding a
//! change someone is about to be told of ("the proxy holds your message", "stored") must reach
//! the disk (an fsync) before its commit returns. A group of bookkeeping only (an item handed
//! on, a message handed over) need not: lost in a crash, it is redone on restart (the item is
//! handed on again and its receiver, which deduplicates by id, answers that it has it), and the
//! next durable commit takes it to the disk anyway. Skipping those fsyncs halves the stores'
//! disk flushes under load, and every flush the disk does not do makes the others quicker.

use redb::Durability;

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

//! When a store's group commit happens.
//!
//! Both stores (the proxy's outbox, the peer's chat store) queue their writes and commit them in
//! groups, each group one redb transaction and one record of the store's write-ahead log
//! ([`crate::wal`]): nobody is answered before the log has the group on disk. Each write says
//! whether it is **urgent**: someone is waiting for it now (a user's send, a message handed
//! over or relayed to us). An urgent write makes a commit at the end of the current turn of the
//! event loop, so the writes arriving in the same turn share it. Other writes (bookkeeping,
//! receipts) wait for the next commit to ride along with, at most [`RIDE_ALONG`]: they do not
//! make commits of their own while urgent ones keep coming.

use std::time::Duration;

use redb::Durability;

/// Longest a write that is not urgent waits for a commit to ride along with.
pub const RIDE_ALONG: Duration = Duration::from_millis(20);

/// The redb durability of a group's commit: durable only for a checkpoint ([`crate::wal`]);
/// the log makes the others durable.
pub fn redb(durable: bool) -> Durability {
    if durable {
        Durability::Immediate
    } else {
        Durability::None
    }
}

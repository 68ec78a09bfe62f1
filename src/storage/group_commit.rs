//! When a store's group commit happens.
//!
//! Both stores (the proxy's outbox, the peer's chat store) queue their writes and commit them in
//! groups, each group one redb transaction and one record of the store's write-ahead log
//! ([`crate::storage::wal`]): nobody is answered before the log has the group on disk. Each write says
//! whether it is **urgent**: someone is waiting for it now (a user's send, a message handed
//! over or relayed to us). An urgent write makes a commit at the end of the current turn of the
//! event loop, so the writes arriving in the same turn share it. Other writes (bookkeeping,
//! receipts) wait for the next commit to ride along with, at most [`RIDE_ALONG`]: they do not
//! make commits of their own while urgent ones keep coming.

use std::time::Duration;

use actix::fut::wrap_future;
use actix::{Actor, ActorFutureExt, AsyncContext, Context, SpawnHandle};
use redb::Durability;

/// Longest a write that is not urgent waits for a commit to ride along with.
pub const RIDE_ALONG: Duration = Duration::from_millis(20);

/// The redb durability of a group's commit: durable only for a checkpoint ([`crate::storage::wal`]);
/// the log makes the others durable.
pub fn redb(durable: bool) -> Durability {
    if durable {
        Durability::Immediate
    } else {
        Durability::None
    }
}

/// A store writer: an actor that queues writes and commits them in groups.
pub trait GroupWriter: Actor<Context = Context<Self>> {
    /// Its [`CommitTimer`].
    fn timer(&mut self) -> &mut CommitTimer;
    /// Commits what is waiting (or some of it, scheduling the rest), as one group.
    fn commit(&mut self, ctx: &mut Context<Self>);
}

/// When a [`GroupWriter`]'s next commit happens; see the module docs.
#[derive(Debug, Default)]
pub struct CommitTimer {
    /// A commit is due at the end of this turn of the event loop.
    due: bool,
    /// Writes that are not urgent wait for an urgent commit to ride along with, until this.
    ride_along: Option<SpawnHandle>,
}

impl CommitTimer {
    /// Arranges the commit of what `writer` has waiting (`urgent`: some of it is): at the end
    /// of this turn of the event loop when urgent, else after [`RIDE_ALONG`] unless an urgent
    /// commit comes first. Nothing when a commit is due already.
    pub fn schedule<W: GroupWriter>(writer: &mut W, urgent: bool, ctx: &mut Context<W>) {
        let timer = writer.timer();
        if timer.due {
            return;
        }
        if urgent {
            timer.due = true;
            ctx.spawn(
                wrap_future(tokio::task::yield_now()).map(|(), writer: &mut W, ctx| {
                    writer.timer().due = false;
                    writer.commit(ctx);
                }),
            );
        } else if timer.ride_along.is_none() {
            timer.ride_along = Some(ctx.run_later(RIDE_ALONG, |writer: &mut W, ctx| {
                writer.timer().ride_along = None;
                writer.commit(ctx);
            }));
        }
    }

    /// A commit starts: what waited for one to ride along with is in it.
    pub fn committing<W: GroupWriter>(&mut self, ctx: &mut Context<W>) {
        if let Some(timer) = self.ride_along.take() {
            ctx.cancel_future(timer);
        }
    }
}

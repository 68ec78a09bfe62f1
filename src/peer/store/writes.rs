//! [`WriteQueue`]: the chat store's one writer (the kit's [`Writer`] over [`ChatSchema`], on
//! the role's worker thread), and the writes it takes. Writes wait in its queue until the
//! current turn of the event loop ends; then one transaction takes all of them (group
//! commit), and the same group is logged. Each caller is answered once the log has it on disk.
//! Writes nobody waits for now (hand-over records, receipts) ride along with the next urgent
//! one ([`crate::storage::group_commit`]).

use actix::prelude::*;

use super::schema::{ChatSchema, WriteOp, WriteOutcome};
use super::StoredMessage;
use crate::peer::error::PeerError;
use crate::peer::updates::Updates;
use tokio::sync::oneshot::Receiver;

use crate::storage::{committed, durable, Committed, SharedDb, Wal, Writer};
use crate::wire::data_plane::{DeliveryState, MessageId, Receipt};

/// Most writes one transaction takes from the queue.
const MAX_BATCH: usize = 1024;

/// The chat store's writer.
pub type WriteQueue = Writer<ChatSchema>;

/// Resolves once a committed group is on disk (its log record flushed).
pub type Durable = crate::storage::Durable<PeerError>;

/// The writer of `db` and its log `wal` (as opened together), telling `updates` (the open
/// pages) of each write once it is on disk.
pub fn writer(opened: (std::sync::Arc<SharedDb>, Wal), updates: Addr<Updates>) -> WriteQueue {
    Writer::new(ChatSchema, opened, MAX_BATCH).observed_by(updates.recipient())
}

/// Stores a message unless its id is stored already; answered once it is on disk.
#[derive(Message)]
#[rtype(result = "Result<Appended, PeerError>")]
pub struct AppendMessage {
    pub message: StoredMessage,
}

/// Stores our own message unless its id is stored already, like [`AppendMessage`], but answered
/// as soon as it is committed (visible, in the unsent index), with what resolves once it is on
/// disk: the sender hands it to the proxy meanwhile and answers the user once both hold it.
#[derive(Message)]
#[rtype(result = "Result<(Appended, Durable), PeerError>")]
pub struct AppendOutgoing {
    pub message: StoredMessage,
}

/// Answer to [`AppendMessage`]: the stored message (the earlier one when `duplicate`).
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: StoredMessage,
    pub duplicate: bool,
}

/// A sent message's delivery state changed (receipt, or the proxy refused it).
#[derive(Message)]
#[rtype(result = "Result<StoredMessage, PeerError>")]
pub struct SetDeliveryState {
    pub id: MessageId,
    pub state: DeliveryState,
}

/// Receipts from the proxy: each message's new delivery state. Not urgent: they ride along with
/// the next commit (see [`crate::storage::group_commit`]), and are answered once it is on disk. Each
/// gets its own outcome (an unknown id is [`PeerError::UnknownMessage`]).
#[derive(Message)]
#[rtype(result = "Vec<Result<StoredMessage, PeerError>>")]
pub struct ApplyReceipts {
    pub receipts: Vec<Receipt>,
}

/// Our pending message was taken by the proxy (`waiting: None`), or not (`Some(why)`, shown
/// beside it while it waits to be handed over again).
#[derive(Message)]
#[rtype(result = "Result<StoredMessage, PeerError>")]
pub struct SetHandOver {
    pub id: MessageId,
    pub waiting: Option<String>,
}

/// Several messages in ONE transaction (one commit); answers each one's outcome, in order.
#[derive(Message)]
#[rtype(result = "Vec<Result<Appended, PeerError>>")]
pub struct AppendMany {
    pub messages: Vec<StoredMessage>,
}

/// Deletes one conversation (`peer`), or all of them (None). Answers how many messages went.
#[derive(Message)]
#[rtype(result = "Result<u64, PeerError>")]
pub struct ClearConversations {
    pub peer: Option<String>,
}

/// Keeps the auto-reply's place (`next` replies decided so far). Bookkeeping: it rides along
/// with the next commit (the reply it was decided for is one), logged like every write.
#[derive(Message)]
#[rtype(result = "Result<(), PeerError>")]
pub struct SetAutoReplyNext {
    pub next: u64,
}

/// A write's outcome once on disk.
async fn outcome(rx: Receiver<Committed<ChatSchema>>) -> Result<WriteOutcome, PeerError> {
    durable::<ChatSchema>(rx).await?
}

/// Each write's answer once on disk, in order, as `pick` reads its outcome.
fn each<T: 'static>(
    receivers: Vec<Receiver<Committed<ChatSchema>>>,
    pick: fn(WriteOutcome) -> Result<T, PeerError>,
) -> ResponseFuture<Vec<Result<T, PeerError>>> {
    Box::pin(async move {
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            out.push(outcome(rx).await.and_then(pick));
        }
        out
    })
}

impl WriteOutcome {
    /// The outcome of an `Append`.
    pub(crate) fn appended(self) -> Result<Appended, PeerError> {
        match self {
            WriteOutcome::Appended { message, duplicate } => Ok(Appended { message, duplicate }),
            other => Err(other.unexpected()),
        }
    }

    /// The message after a `SetState` or `SetHandOver`.
    pub(crate) fn state_set(self) -> Result<StoredMessage, PeerError> {
        match self {
            WriteOutcome::StateSet { message, .. } => Ok(message),
            other => Err(other.unexpected()),
        }
    }

    /// How many messages a `Clear` removed.
    pub(crate) fn cleared(self) -> Result<u64, PeerError> {
        match self {
            WriteOutcome::Cleared { removed, .. } => Ok(removed),
            other => Err(other.unexpected()),
        }
    }

    fn unexpected(&self) -> PeerError {
        PeerError::Storage(format!("unexpected outcome {self:?}"))
    }
}

impl Handler<AppendMessage> for WriteQueue {
    type Result = ResponseFuture<Result<Appended, PeerError>>;

    fn handle(&mut self, msg: AppendMessage, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(
            WriteOp::Append {
                message: msg.message,
            },
            true,
            ctx,
        );
        Box::pin(async move { outcome(rx).await?.appended() })
    }
}

impl Handler<AppendOutgoing> for WriteQueue {
    type Result = ResponseFuture<Result<(Appended, Durable), PeerError>>;

    fn handle(&mut self, msg: AppendOutgoing, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(
            WriteOp::Append {
                message: msg.message,
            },
            true,
            ctx,
        );
        Box::pin(async move {
            let (outcome, durable) = committed::<ChatSchema>(rx).await?;
            Ok((outcome?.appended()?, durable))
        })
    }
}

impl Handler<SetDeliveryState> for WriteQueue {
    type Result = ResponseFuture<Result<StoredMessage, PeerError>>;

    fn handle(&mut self, msg: SetDeliveryState, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(
            WriteOp::SetState {
                id: msg.id,
                state: msg.state,
            },
            true,
            ctx,
        );
        Box::pin(async move { outcome(rx).await?.state_set() })
    }
}

impl Handler<AppendMany> for WriteQueue {
    type Result = ResponseFuture<Vec<Result<Appended, PeerError>>>;

    fn handle(&mut self, msg: AppendMany, ctx: &mut Context<Self>) -> Self::Result {
        let ops = msg
            .messages
            .into_iter()
            .map(|message| WriteOp::Append { message })
            .collect();
        each(self.enqueue_group(ops, true, ctx), WriteOutcome::appended)
    }
}

impl Handler<ApplyReceipts> for WriteQueue {
    type Result = ResponseFuture<Vec<Result<StoredMessage, PeerError>>>;

    fn handle(&mut self, msg: ApplyReceipts, ctx: &mut Context<Self>) -> Self::Result {
        let ops = msg
            .receipts
            .into_iter()
            .map(|r| WriteOp::SetState {
                id: r.id,
                state: r.state,
            })
            .collect();
        each(self.enqueue_group(ops, false, ctx), WriteOutcome::state_set)
    }
}

impl Handler<SetHandOver> for WriteQueue {
    type Result = ResponseFuture<Result<StoredMessage, PeerError>>;

    fn handle(&mut self, msg: SetHandOver, ctx: &mut Context<Self>) -> Self::Result {
        // Bookkeeping: it rides along with the next commit.
        let rx = self.enqueue(
            WriteOp::SetHandOver {
                id: msg.id,
                waiting: msg.waiting,
            },
            false,
            ctx,
        );
        Box::pin(async move { outcome(rx).await?.state_set() })
    }
}

impl Handler<ClearConversations> for WriteQueue {
    type Result = ResponseFuture<Result<u64, PeerError>>;

    fn handle(&mut self, msg: ClearConversations, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(WriteOp::Clear { peer: msg.peer }, true, ctx);
        Box::pin(async move { outcome(rx).await?.cleared() })
    }
}

impl Handler<SetAutoReplyNext> for WriteQueue {
    type Result = ResponseFuture<Result<(), PeerError>>;

    fn handle(&mut self, msg: SetAutoReplyNext, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(WriteOp::SetAutoReplyNext { next: msg.next }, false, ctx);
        Box::pin(async move {
            outcome(rx).await?;
            Ok(())
        })
    }
}

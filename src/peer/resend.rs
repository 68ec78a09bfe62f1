//! The [`Resender`] actor: nothing this user sent is lost when the proxy is down. Our messages
//! stored as pending that the proxy has not taken yet (the store's `unsent` index) are handed
//! over again: at start (a crash or stop between storing and handing over), and whenever a
//! hand-over failed because the proxy could not be reached, with a growing wait (doubling from
//! `retry_initial_ms` up to `retry_max_ms`) while it stays unreachable. A message still not
//! taken `expire_after_secs` after it was written is marked failed. The proxy's outbox is
//! idempotent by id, so handing a message over twice is safe.
//!
//! It also keeps order: a new message waits until the older waiting ones were tried
//! ([`ResendNow`]), so a conversation is not reordered when the proxy comes back.
//!
//! Owns only its timers and wait; the messages are in the store, the HTTP call in
//! [`super::proxy_client`]. It never decides what to send.

use std::time::Duration;

use actix::fut::wrap_future;
use actix::prelude::*;
use tokio::sync::oneshot;

use super::error::PeerError;
use super::proxy_client::{hand_over, HandOver, ProxyClient};
use super::store::{ChatStore, ListUnsent, SetDeliveryState, StoredMessage, WriteQueue};
use crate::wire::data_plane::{conversation_id, Body, DeliveryState, Envelope};
use crate::wire::now_ms;

/// How often the unsent index is looked at when nothing is known to wait (a hand-over that
/// neither succeeded nor failed visibly, e.g. its result could not be written).
const IDLE_TICK: Duration = Duration::from_secs(5);
/// A message still unsent this long after it was written is handed over again even if no
/// failure was recorded (its first attempt is over by then: calls time out sooner).
const STUCK_AFTER_MS: u64 = 30_000;
/// Shortest wait between passes, whatever the config says.
const MIN_WAIT_MS: u64 = 100;

/// Hand over the waiting messages now (if any), and answer once that pass is over.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResendNow;

/// A hand-over just failed: the proxy could not be reached. Try again after the wait.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProxyUnreachable;

/// What the resender needs to know.
#[derive(Debug, Clone)]
pub struct ResendSettings {
    pub expire_after_secs: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

/// How one pass ended.
struct PassResult {
    /// The proxy could not be reached: messages are still waiting.
    unreachable: bool,
}

/// The actor; see the module docs.
pub struct Resender {
    store: Addr<ChatStore>,
    writes: Addr<WriteQueue>,
    proxy: Addr<ProxyClient>,
    settings: ResendSettings,
    /// When this peer started (Unix ms): anything unsent from before is handed over again.
    started_ms: u64,
    /// The wait before the next pass while the proxy is unreachable.
    wait_ms: u64,
    /// Some messages wait for the proxy (as far as the last pass knows).
    waiting: bool,
    running: bool,
    /// Callers of [`ResendNow`] waiting for the pass in progress.
    waiters: Vec<oneshot::Sender<()>>,
    timer: Option<SpawnHandle>,
}

impl Resender {
    pub fn new(
        store: Addr<ChatStore>,
        writes: Addr<WriteQueue>,
        proxy: Addr<ProxyClient>,
        settings: ResendSettings,
    ) -> Self {
        let initial = settings.retry_initial_ms.max(MIN_WAIT_MS);
        Self {
            store,
            writes,
            proxy,
            settings,
            started_ms: now_ms(),
            wait_ms: initial,
            // Whatever is unsent at start is tried at once.
            waiting: true,
            running: false,
            waiters: Vec::new(),
            timer: None,
        }
    }

    fn initial_ms(&self) -> u64 {
        self.settings.retry_initial_ms.max(MIN_WAIT_MS)
    }

    fn max_ms(&self) -> u64 {
        self.settings.retry_max_ms.max(self.initial_ms())
    }

    /// Runs a pass after `after` (replacing any pass already scheduled).
    fn schedule(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.run_later(after, |act, ctx| {
            act.timer = None;
            act.start_pass(ctx);
        }));
    }

    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.running = true;
        let pass = run_pass(
            self.store.clone(),
            self.writes.clone(),
            self.proxy.clone(),
            self.started_ms,
            self.settings.expire_after_secs.saturating_mul(1000),
        );
        ctx.spawn(
            wrap_future(pass).map(|result: PassResult, act: &mut Self, ctx| {
                act.running = false;
                for w in act.waiters.drain(..) {
                    let _ = w.send(());
                }
                if result.unreachable {
                    act.waiting = true;
                    let wait = act.wait_ms;
                    act.wait_ms = (act.wait_ms.saturating_mul(2)).min(act.max_ms());
                    act.schedule(Duration::from_millis(wait), ctx);
                } else {
                    act.waiting = false;
                    act.wait_ms = act.initial_ms();
                    act.schedule(IDLE_TICK, ctx);
                }
            }),
        );
    }
}

impl Actor for Resender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_pass(ctx);
    }
}

/// Whether `m` is handed over by a pass now: it waits for the proxy, or it is older than this
/// peer's start (left unsent by a crash or stop), or its first attempt is long over.
fn due(m: &StoredMessage, started_ms: u64, now: u64) -> bool {
    m.waiting.is_some()
        || m.sent_at_ms < started_ms
        || now.saturating_sub(m.sent_at_ms) > STUCK_AFTER_MS
}

/// Whether `m` has waited for the proxy too long and is given up on.
fn expired(m: &StoredMessage, expire_after_ms: u64, now: u64) -> bool {
    now.saturating_sub(m.sent_at_ms) > expire_after_ms
}

/// `secs` for people: `90s`, `5m`, `24h`.
fn span(secs: u64) -> String {
    if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The envelope our stored message was sent in (same id: the proxy takes it once).
pub fn envelope_of(m: &StoredMessage) -> Envelope {
    Envelope {
        id: m.id.clone(),
        from: m.from.clone(),
        to: m.to.clone(),
        conversation: conversation_id(&m.from, &m.to),
        sent_at_ms: m.sent_at_ms,
        body: Body::Text {
            text: m.text.clone(),
        },
        auto_reply: m.auto_reply,
        error: m.error,
    }
}

/// One pass over the unsent messages, oldest first; stops at the first the proxy could not be
/// reached for (the later ones would fail the same way, and order is kept).
async fn run_pass(
    store: Addr<ChatStore>,
    writes: Addr<WriteQueue>,
    proxy: Addr<ProxyClient>,
    started_ms: u64,
    expire_after_ms: u64,
) -> PassResult {
    let unsent = match store.send(ListUnsent).await {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            log::warn!("cannot read the unsent messages: {e}");
            return PassResult { unreachable: false };
        }
        Err(e) => {
            log::warn!("cannot read the unsent messages: {}", PeerError::from(e));
            return PassResult { unreachable: false };
        }
    };
    let now = now_ms();
    for m in unsent {
        if expired(&m, expire_after_ms, now) {
            let reason = format!(
                "not sent: your proxy could not be reached for {}",
                span(expire_after_ms / 1000)
            );
            log::warn!("message {} to {}: {reason}", m.id, m.to);
            let failed = writes
                .send(SetDeliveryState {
                    id: m.id.clone(),
                    state: DeliveryState::Failed { reason },
                })
                .await;
            if let Err(e) = failed.map_err(PeerError::from).and_then(|r| r) {
                log::warn!("cannot mark message {} failed: {e}", m.id);
            }
            continue;
        }
        if !due(&m, started_ms, now) {
            continue;
        }
        match hand_over(&writes, &proxy, envelope_of(&m)).await {
            HandOver::Taken => log::info!("message {} to {} handed to the proxy", m.id, m.to),
            HandOver::Refused(e) => log::warn!("message {} to {} refused: {e}", m.id, m.to),
            HandOver::Waiting(e) => {
                log::info!("message {} to {} still waits: {e}", m.id, m.to);
                return PassResult { unreachable: true };
            }
        }
    }
    PassResult { unreachable: false }
}

impl Handler<ResendNow> for Resender {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: ResendNow, ctx: &mut Context<Self>) -> Self::Result {
        if !self.waiting && !self.running {
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        self.start_pass(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<ProxyUnreachable> for Resender {
    type Result = ();

    fn handle(&mut self, _: ProxyUnreachable, ctx: &mut Context<Self>) {
        if self.waiting || self.running {
            // A pass is under way or scheduled with the current wait.
            self.waiting = true;
            return;
        }
        self.waiting = true;
        let wait = self.wait_ms;
        self.schedule(Duration::from_millis(wait), ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data_plane::MessageId;

    fn ours(sent_at_ms: u64, waiting: Option<&str>) -> StoredMessage {
        let mut e = Envelope::text("alice", "Bob", "hi");
        e.id = MessageId::parse("m1").unwrap();
        e.sent_at_ms = sent_at_ms;
        let mut m = StoredMessage::outgoing(&e);
        m.waiting = waiting.map(str::to_string);
        m
    }

    #[test]
    fn a_message_is_handed_over_again_when_it_waits_predates_the_start_or_is_stuck() {
        let start = 1_000_000;
        assert!(due(&ours(start + 5, Some("down")), start, start + 10));
        assert!(due(&ours(start - 1, None), start, start + 10));
        assert!(!due(&ours(start + 5, None), start, start + 10));
        assert!(due(
            &ours(start + 5, None),
            start,
            start + 5 + STUCK_AFTER_MS + 1
        ));
    }

    #[test]
    fn an_expiry_is_said_in_the_largest_whole_unit() {
        assert_eq!(span(86_400), "24h");
        assert_eq!(span(300), "5m");
        assert_eq!(span(90), "90s");
        assert_eq!(span(1), "1s");
    }

    #[test]
    fn a_message_expires_after_the_configured_time() {
        assert!(!expired(&ours(1000, None), 60_000, 61_000));
        assert!(expired(&ours(1000, None), 60_000, 61_001));
    }

    #[test]
    fn the_envelope_of_a_stored_message_keeps_its_id_and_conversation() {
        let m = ours(42, None);
        let e = envelope_of(&m);
        assert_eq!(e.id, m.id);
        assert_eq!(e.conversation, conversation_id("alice", "bob"));
        assert_eq!(e.sent_at_ms, 42);
        assert_eq!(e.body.text(), "hi");
    }
}

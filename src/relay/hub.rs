//! The [`Hub`] actor: who is attached to this relay, the requests carried to them and not yet
//! answered, the challenges handed out, and the counters. Routes check rates and signatures and
//! then ask the hub; the hub never does I/O of its own beyond putting events on attached
//! streams (bounded channels: a full one drops, never blocks).
//!
//! Rules, as DERP and iroh-relay have them:
//! - **Newest attach wins.** A second stream for a name takes over; the old one gets
//!   `event: superseded` and is closed. Requests carried but not answered are sent again on
//!   the new stream when the proxy says (`Last-Event-ID`) it had not got them.
//! - **Fighters.** Two processes holding one key (a cloned key) take turns: instance A
//!   replaced by B, then B by A again, within [`FIGHT_WINDOW_MS`]. The name is then refused for
//!   [`FIGHT_BAN_MS`], both streams closed, and flagged in the status.
//! - **Bounded, lossy queues.** At most [`PAIR_QUEUE`] requests from one sender to one
//!   receiver wait for an answer, and an attached stream buffers at most [`STREAM_BUFFER`]
//!   events: beyond, a request is refused (429) and counted as dropped. The relay's
//!   acceptance is never delivery: only the receiver's signed acknowledgement, carried back,
//!   is.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message};
use actix_web::web::Bytes;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::error::RelayError;
use super::events;
use crate::wire::control_plane::RelayReport;
use crate::wire::relay::{Answered, Attached, Carried, Challenge};

/// Most requests from one sender to one receiver waiting for their answer.
pub const PAIR_QUEUE: usize = 64;
/// Most events waiting to be written on one attached stream.
pub const STREAM_BUFFER: usize = 256;
/// How long a challenge's nonce is taken.
pub const CHALLENGE_MS: u64 = 60_000;
/// How long a stream's session still answers after a newer stream replaced it (a request
/// carried on the old stream may still be being taken).
const SESSION_AFTERLIFE_MS: u64 = 60_000;
/// Two instances of one name taking turns within this window are fighting (a cloned key):
/// long beside the minute a superseded proxy waits before attaching again, so two processes
/// taking turns that slowly are caught too; a restart overlapping the old process never
/// gives A → B → A (the old one exits).
pub const FIGHT_WINDOW_MS: u64 = 10 * 60_000;
/// How long a fighting name is refused.
pub const FIGHT_BAN_MS: u64 = 10 * 60_000;
/// How often closed streams are noticed and dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Counters, as `GET /relay/v1/status` and the dashboard show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RelayCounters {
    /// Streams attached (each new one, also a reconnect).
    pub attaches: u64,
    /// Streams replaced by a newer one of the same name.
    pub superseded: u64,
    /// Attaches refused (bad proof, unknown or revoked key, flagged name).
    pub attaches_refused: u64,
    /// Names flagged for fighting (a key used by two processes taking turns).
    pub fighters_flagged: u64,
    /// Requests carried down a stream (a replay after a reconnect is not counted again).
    pub requests_carried: u64,
    /// Messages in them (a batch counts each envelope).
    pub messages_carried: u64,
    /// Bytes of request bodies carried.
    pub bytes_carried: u64,
    /// Answers carried back to their sender.
    pub answers_carried: u64,
    /// Requests whose receiver was not attached.
    pub not_here: u64,
    /// Requests dropped: a full queue or stream.
    pub dropped_full: u64,
    /// Requests not answered in time.
    pub timed_out: u64,
    /// Requests refused before any signature was checked: too many from one address.
    pub rate_limited: u64,
    /// Sends refused: no valid signature by a key the directory lists.
    pub sends_refused: u64,
}

/// One attached proxy.
struct Attachment {
    instance: String,
    /// The key its proof was signed with: a stream of a key since rotated away is let go.
    key: crate::trust::PublicKey,
    tx: mpsc::Sender<Bytes>,
    since_ms: u64,
    carried: u64,
}

/// A request carried (or to be carried) and not answered.
struct Pending {
    from: String,
    to: String,
    /// When it was carried (ms): one nobody waits for any more is dropped.
    at_ms: u64,
    event: Bytes,
    reply: Option<oneshot::Sender<Answered>>,
}

/// The turns of one name: which instances held it, when.
#[derive(Default)]
struct Turns {
    /// (instance, when it attached), newest last; a short history.
    history: VecDeque<(String, u64)>,
    banned_until_ms: u64,
}

pub struct Hub {
    name: String,
    ping_every: Duration,
    attached: HashMap<String, Attachment>,
    pending: std::collections::BTreeMap<u64, Pending>,
    per_pair: HashMap<(String, String), usize>,
    challenges: Challenges,
    /// Session → (name, when its stream was replaced or closed): answers come with it.
    sessions: HashMap<String, (String, Option<u64>)>,
    /// The signed directory as last applied: an attached name revoked since is let go.
    directory:
        Option<tokio::sync::watch::Receiver<std::sync::Arc<crate::proxy::router::Published>>>,
    turns: HashMap<String, Turns>,
    next_n: u64,
    counters: RelayCounters,
    /// Where the status goes for the controller (with each heartbeat).
    report: Option<tokio::sync::watch::Sender<RelayReport>>,
    /// `overlay_sse_listeners{stream="relay_attach"}`: the streams attached, set at each sweep.
    listeners: prometheus_client::metrics::gauge::Gauge,
    started_ms: u64,
}

impl Hub {
    pub fn new(name: &str, ping_every: Duration) -> Hub {
        Hub {
            name: name.to_string(),
            ping_every,
            attached: HashMap::new(),
            pending: Default::default(),
            per_pair: HashMap::new(),
            challenges: Challenges::new(),
            sessions: HashMap::new(),
            directory: None,
            turns: HashMap::new(),
            // Numbers go on from where a relay process before this one left off (they start
            // from the clock in µs), so a proxy's Last-Event-ID from before a restart never
            // hides a newer request.
            next_n: crate::wire::now_ms().saturating_mul(1000),
            counters: RelayCounters::default(),
            report: None,
            listeners: Default::default(),
            started_ms: crate::wire::now_ms(),
        }
    }

    /// Lets go of an attached name the signed directory no longer lists as an active member.
    pub fn with_directory(
        mut self,
        directory: tokio::sync::watch::Receiver<std::sync::Arc<crate::proxy::router::Published>>,
    ) -> Hub {
        self.directory = Some(directory);
        self
    }

    /// Keeps `listeners` at the number of streams attached (see [`super::metrics`]).
    pub fn with_listeners(mut self, listeners: prometheus_client::metrics::gauge::Gauge) -> Hub {
        self.listeners = listeners;
        self
    }

    /// Keeps `report` up to date with what the relay does.
    pub fn with_report(mut self, report: tokio::sync::watch::Sender<RelayReport>) -> Hub {
        self.report = Some(report);
        self
    }

    fn status(&self) -> RelayStatus {
        let now = crate::wire::now_ms();
        let mut attached: Vec<AttachedView> = self
            .attached
            .iter()
            .filter(|(_, a)| !a.tx.is_closed())
            .map(|(k, a)| AttachedView {
                name: k.clone(),
                since_ms: a.since_ms,
                carried: a.carried,
            })
            .collect();
        attached.sort_by(|a, b| a.name.cmp(&b.name));
        let mut flagged: Vec<String> = self
            .turns
            .iter()
            .filter(|(_, t)| t.banned_until_ms > now)
            .map(|(k, _)| k.clone())
            .collect();
        flagged.sort();
        RelayStatus {
            relay: self.name.clone(),
            attached,
            flagged,
            waiting: self.pending.len(),
            counters: self.counters.clone(),
        }
    }

    /// The name of a session: of a stream attached now, or replaced or closed in the last
    /// minute (a request it carried may still be answered).
    fn session_name(&self, session: &str) -> Option<String> {
        self.sessions.get(session).map(|(name, _)| name.clone())
    }

    fn settle(&mut self, n: u64) -> Option<Pending> {
        let p = self.pending.remove(&n)?;
        let pair = (p.from.clone(), p.to.clone());
        if let Some(count) = self.per_pair.get_mut(&pair) {
            *count -= 1;
            if *count == 0 {
                self.per_pair.remove(&pair);
            }
        }
        Some(p)
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_EVERY, |hub, _| {
            let now = crate::wire::now_ms();
            let published = hub.directory.as_ref().map(|d| d.borrow().clone());
            hub.attached.retain(|name, a| {
                let member = published.as_ref().is_none_or(|p| {
                    match super::routes::member_key(&p.directory, name) {
                        Ok(key) => key == a.key,
                        Err(RelayError::Unavailable(_)) => true,
                        Err(_) => false,
                    }
                });
                if !member {
                    let _ = a.tx.try_send(events::event(
                        "refused",
                        None,
                        "this key is no longer an active member",
                    ));
                }
                member && !a.tx.is_closed()
            });
            for (who, retired) in hub.sessions.values_mut() {
                if retired.is_none() && !hub.attached.contains_key(who) {
                    *retired = Some(now);
                }
            }
            hub.sessions
                .retain(|_, (_, retired)| retired.is_none_or(|at| at + SESSION_AFTERLIFE_MS > now));
            hub.challenges.prune(now);
            // A sender waits at most MAX_WAIT: a request older than that is nobody's any more
            // (its handler went away without saying so).
            let stale: Vec<u64> = hub
                .pending
                .iter()
                .filter(|(_, p)| p.at_ms + super::routes::MAX_WAIT.as_millis() as u64 + 5_000 < now)
                .map(|(n, _)| *n)
                .collect();
            for n in stale {
                if hub.settle(n).is_some() {
                    hub.counters.timed_out += 1;
                }
            }
            hub.listeners.set(hub.attached.len() as i64);
            if let Some(report) = &hub.report {
                let s = hub.status();
                let c = &s.counters;
                report.send_replace(RelayReport {
                    started_ms: hub.started_ms,
                    attached: s.attached.iter().map(|a| a.name.clone()).collect(),
                    flagged: s.flagged.clone(),
                    attaches: c.attaches,
                    requests_carried: c.requests_carried,
                    messages_carried: c.messages_carried,
                    bytes_carried: c.bytes_carried,
                    dropped: c.dropped_full,
                    not_here: c.not_here,
                    refused: c.sends_refused + c.attaches_refused + c.rate_limited,
                });
            }
        });
    }
}

fn random_token() -> String {
    let mut raw = [0u8; 18];
    getrandom::fill(&mut raw).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(raw)
}

/// Challenges without a table: a nonce is 16 random bytes, its expiry and a MAC of both under
/// a key of this process, so handing one out costs no memory (a flood of challenges fills
/// nothing). A nonce is spent only by an attach whose proof held, and remembered until it
/// expires, so it is taken once.
struct Challenges {
    key: [u8; 32],
    spent: HashMap<String, u64>,
}

impl Challenges {
    fn new() -> Challenges {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Challenges {
            key,
            spent: HashMap::new(),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; 16] {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn issue(&self, relay: &str, now: u64) -> Challenge {
        let mut body = [0u8; 24];
        getrandom::fill(&mut body[..16]).expect("the operating system's random source failed");
        let expires_at_ms = now + CHALLENGE_MS;
        body[16..].copy_from_slice(&expires_at_ms.to_be_bytes());
        let mut raw = body.to_vec();
        raw.extend_from_slice(&self.mac(&body));
        Challenge {
            relay: relay.to_string(),
            nonce: URL_SAFE_NO_PAD.encode(raw),
            expires_at_ms,
        }
    }

    /// The nonce's expiry, when this process made it, it has not expired and is not spent.
    fn check(&self, nonce: &str, now: u64) -> Result<u64, RelayError> {
        let refused = |why: &str| {
            RelayError::Unauthenticated(format!(
                "the attach's nonce {why}: ask GET /relay/v1/challenge for a new one"
            ))
        };
        let raw = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .filter(|r| r.len() == 40)
            .ok_or_else(|| refused("is not one this relay makes"))?;
        let (body, mac) = raw.split_at(24);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&self.mac(body)[..], mac)) {
            return Err(refused("is not one this relay made"));
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&body[16..]);
        let expires = u64::from_be_bytes(at);
        if expires <= now {
            return Err(refused("has expired"));
        }
        if self.spent.contains_key(nonce) {
            return Err(refused("was used already"));
        }
        Ok(expires)
    }

    fn spend(&mut self, nonce: &str, now: u64) -> Result<(), RelayError> {
        let expires = self.check(nonce, now)?;
        self.spent.insert(nonce.to_string(), expires);
        Ok(())
    }

    fn prune(&mut self, now: u64) {
        self.spent.retain(|_, expires| *expires > now);
    }
}

/// A fresh challenge for an attach.
#[derive(Message)]
#[rtype(result = "Challenge")]
pub struct IssueChallenge;

impl Handler<IssueChallenge> for Hub {
    type Result = actix::MessageResult<IssueChallenge>;

    fn handle(&mut self, _: IssueChallenge, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.challenges.issue(&self.name, crate::wire::now_ms()))
    }
}

/// Whether a nonce is one this relay handed out, unexpired and unspent (spent by [`Attach`]).
#[derive(Message)]
#[rtype(result = "Result<(), RelayError>")]
pub struct CheckNonce(pub String);

impl Handler<CheckNonce> for Hub {
    type Result = Result<(), RelayError>;

    fn handle(&mut self, msg: CheckNonce, _: &mut Self::Context) -> Self::Result {
        let checked = self.challenges.check(&msg.0, crate::wire::now_ms());
        if checked.is_err() {
            self.counters.attaches_refused += 1;
        }
        checked.map(|_| ())
    }
}

/// A proxy whose proof held attaches: its stream's events come out of the answer.
#[derive(Message)]
#[rtype(result = "Result<mpsc::Receiver<Bytes>, RelayError>")]
pub struct Attach {
    /// Its name, as the directory lists it.
    pub name: String,
    /// The key its proof was signed with (the directory's for that name).
    pub key: crate::trust::PublicKey,
    /// The challenge's nonce its proof signed: spent now.
    pub nonce: String,
    /// The process holding the key (random per start).
    pub instance: String,
    /// The last request number it got (`Last-Event-ID`).
    pub last_event: Option<u64>,
}

impl Handler<Attach> for Hub {
    type Result = Result<mpsc::Receiver<Bytes>, RelayError>;

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) -> Self::Result {
        let now = crate::wire::now_ms();
        let key = msg.name.to_ascii_lowercase();
        if let Err(e) = self.challenges.spend(&msg.nonce, now) {
            self.counters.attaches_refused += 1;
            return Err(e);
        }
        let turns = self.turns.entry(key.clone()).or_default();
        if turns.banned_until_ms > now {
            self.counters.attaches_refused += 1;
            return Err(RelayError::Forbidden(format!(
                "{} is refused until {}: two processes with its key took turns attaching (a \
                 cloned key?); stop the other one, and rotate the key if it was copied",
                msg.name,
                crate::wire::rfc3339_ms(turns.banned_until_ms)
            )));
        }
        // A → B → A within the window: the newcomer was replaced by another instance, which
        // it now replaces in turn.
        turns.history.retain(|(_, at)| at + FIGHT_WINDOW_MS > now);
        let current = self.attached.get(&key).map(|a| a.instance.clone());
        let fighting = match &current {
            Some(c) if *c != msg.instance => {
                let mut seen_other_after_me = false;
                let mut i_was_here = false;
                for (inst, _) in turns.history.iter() {
                    if *inst == msg.instance {
                        i_was_here = true;
                        seen_other_after_me = false;
                    } else if i_was_here {
                        seen_other_after_me = true;
                    }
                }
                i_was_here && seen_other_after_me
            }
            _ => false,
        };
        if fighting {
            turns.banned_until_ms = now + FIGHT_BAN_MS;
            turns.history.clear();
            self.counters.fighters_flagged += 1;
            self.counters.attaches_refused += 1;
            if let Some(old) = self.attached.remove(&key) {
                let _ = old.tx.try_send(events::event(
                    "refused",
                    None,
                    "two processes with this key take turns: refused",
                ));
            }
            log::warn!(
                "relay {}: {} is attached by two processes taking turns (a cloned key?): \
                 refused for {} min",
                self.name,
                msg.name,
                FIGHT_BAN_MS / 60_000
            );
            return Err(RelayError::Forbidden(format!(
                "{} was attached by another process with the same key moments ago, and this \
                 one took it back: a cloned key; the name is refused for {} min",
                msg.name,
                FIGHT_BAN_MS / 60_000
            )));
        }
        if turns.history.back().map(|(i, _)| i) != Some(&msg.instance) {
            turns.history.push_back((msg.instance.clone(), now));
            while turns.history.len() > 8 {
                turns.history.pop_front();
            }
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = random_token();
        let hello = Attached {
            session: session.clone(),
            ping_every_ms: self.ping_every.as_millis() as u64,
        };
        let _ = tx.try_send(events::json_event("attached", None, &hello));
        // What was carried to this name and not answered, past what it says it got.
        let after = msg.last_event.unwrap_or(0);
        for (n, p) in self
            .pending
            .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        {
            if p.to == key && tx.try_send(p.event.clone()).is_err() {
                log::warn!(
                    "relay {}: request {n} for {key} not replayed (stream full)",
                    self.name
                );
            }
        }
        let new_session = session.clone();
        self.sessions.insert(session, (key.clone(), None));
        let attachment = Attachment {
            key: msg.key,
            instance: msg.instance,
            tx,
            since_ms: now,
            carried: 0,
        };
        if let Some(old) = self.attached.insert(key.clone(), attachment) {
            for (s, (who, retired)) in self.sessions.iter_mut() {
                if *who == key && retired.is_none() && *s != new_session {
                    *retired = Some(now);
                }
            }
            self.counters.superseded += 1;
            let _ = old.tx.try_send(events::event(
                "superseded",
                None,
                "a newer stream of this proxy took over",
            ));
        }
        self.counters.attaches += 1;
        Ok(rx)
    }
}

/// A request for `to`, from `from`, whose signature held: carried down `to`'s stream; the
/// answer comes out of the receiver.
#[derive(Message)]
#[rtype(result = "Result<(u64, oneshot::Receiver<Answered>), RelayError>")]
pub struct Send {
    pub from: String,
    pub to: String,
    pub target: String,
    pub signature: String,
    pub body: Box<serde_json::value::RawValue>,
    /// Envelopes in it (for the counters).
    pub messages: u64,
}

impl Handler<Send> for Hub {
    type Result = Result<(u64, oneshot::Receiver<Answered>), RelayError>;

    fn handle(&mut self, msg: Send, _: &mut Self::Context) -> Self::Result {
        let to = msg.to.to_ascii_lowercase();
        let from = msg.from.to_ascii_lowercase();
        let Some(attachment) = self.attached.get(&to).filter(|a| !a.tx.is_closed()) else {
            self.counters.not_here += 1;
            return Err(RelayError::NotHere(format!(
                "{}'s proxy is not attached to relay {} now: try again later",
                msg.to, self.name
            )));
        };
        let pair = (from.clone(), to.clone());
        let waiting = self.per_pair.get(&pair).copied().unwrap_or(0);
        if waiting >= PAIR_QUEUE {
            self.counters.dropped_full += 1;
            return Err(RelayError::TooMany(format!(
                "relay {}'s queue from {} to {} is full ({PAIR_QUEUE} requests wait for an \
                 answer): this one is dropped; send it again later",
                self.name, msg.from, msg.to
            )));
        }
        self.next_n += 1;
        let n = self.next_n;
        let shown_to = msg.to.clone();
        let bytes = msg.body.get().len() as u64;
        let carried = Carried {
            n,
            from: msg.from,
            target: msg.target,
            signature: msg.signature,
            body: msg.body,
        };
        let event = events::json_event("request", Some(n), &carried);
        if attachment.tx.try_send(event.clone()).is_err() {
            self.counters.dropped_full += 1;
            return Err(RelayError::TooMany(format!(
                "{shown_to}'s stream on relay {} is full ({STREAM_BUFFER} events): this \
                 request is dropped; send it again later",
                self.name
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.pending.insert(
            n,
            Pending {
                at_ms: crate::wire::now_ms(),
                from,
                to: to.clone(),
                event,
                reply: Some(reply),
            },
        );
        *self.per_pair.entry(pair).or_default() += 1;
        if let Some(a) = self.attached.get_mut(&to) {
            a.carried += 1;
        }
        log::debug!(
            "relay {}: carried request {n} to {to} ({} messages)",
            self.name,
            msg.messages
        );
        self.counters.requests_carried += 1;
        self.counters.messages_carried += msg.messages;
        self.counters.bytes_carried += bytes;
        Ok((n, answer))
    }
}

/// The sender stopped waiting for request `n` (its deadline passed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon(pub u64);

impl Handler<Abandon> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Abandon, _: &mut Self::Context) {
        if self.settle(msg.0).is_some() {
            log::debug!(
                "relay {}: request {} was not answered in time",
                self.name,
                msg.0
            );
            self.counters.timed_out += 1;
        }
    }
}

/// The name a session is of (attached now, or in the last minute).
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct SessionOf(pub String);

impl Handler<SessionOf> for Hub {
    type Result = Option<String>;

    fn handle(&mut self, msg: SessionOf, _: &mut Self::Context) -> Self::Result {
        self.session_name(&msg.0)
    }
}

/// The attached proxy of `session` answers request `n`.
#[derive(Message)]
#[rtype(result = "Result<(), RelayError>")]
pub struct Answer {
    pub session: String,
    pub answered: Answered,
}

impl Handler<Answer> for Hub {
    type Result = Result<(), RelayError>;

    fn handle(&mut self, msg: Answer, _: &mut Self::Context) -> Self::Result {
        let Some(name) = self.session_name(&msg.session) else {
            return Err(RelayError::Unauthenticated(
                "no stream attached to this relay has that session: attach again".into(),
            ));
        };
        let n = msg.answered.n;
        match self.pending.get(&n) {
            Some(p) if p.to == name => {}
            // Answered already, or its sender stopped waiting: nothing to carry.
            None => return Ok(()),
            Some(_) => {
                return Err(RelayError::Forbidden(format!(
                    "request {n} was not carried to {name}: only its receiver answers it"
                )))
            }
        }
        log::debug!("relay {}: {name} answered request {n}", self.name);
        if let Some(mut p) = self.settle(n) {
            if let Some(reply) = p.reply.take() {
                if reply.send(msg.answered).is_ok() {
                    self.counters.answers_carried += 1;
                }
            }
        }
        Ok(())
    }
}

/// One attached proxy, for the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AttachedView {
    pub name: String,
    pub since_ms: u64,
    pub carried: u64,
}

/// What the relay is doing: `GET /relay/v1/status`, and its reports to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RelayStatus {
    pub relay: String,
    pub attached: Vec<AttachedView>,
    /// Names refused now for fighting (a cloned key).
    pub flagged: Vec<String>,
    /// Requests waiting for their answer.
    pub waiting: usize,
    pub counters: RelayCounters,
}

#[derive(Message)]
#[rtype(result = "RelayStatus")]
pub struct Status;

impl Handler<Status> for Hub {
    type Result = actix::MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.status())
    }
}

/// Counts a request refused before or at its signature (for the status).
#[derive(Message)]
#[rtype(result = "()")]
pub enum Refused {
    RateLimited,
    Send,
    Attach,
}

impl Handler<Refused> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Refused, _: &mut Self::Context) {
        let c = &mut self.counters;
        match msg {
            Refused::RateLimited => c.rate_limited += 1,
            Refused::Send => c.sends_refused += 1,
            Refused::Attach => c.attaches_refused += 1,
        }
    }
}

/// The session of each attached name (tests read them here rather than from the streams).
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "HashMap<String, String>")]
struct Sessions;

#[cfg(test)]
impl Handler<Sessions> for Hub {
    type Result = actix::MessageResult<Sessions>;

    fn handle(&mut self, _: Sessions, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(
            self.sessions
                .iter()
                .filter(|(_, (_, retired))| retired.is_none())
                .map(|(s, (name, _))| (name.clone(), s.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(s.to_string()).unwrap()
    }

    fn send(from: &str, to: &str) -> Send {
        Send {
            from: from.into(),
            to: to.into(),
            target: "/api/v1/relay".into(),
            signature: "sig".into(),
            body: raw(r#"{"x":1}"#),
            messages: 1,
        }
    }

    /// Attaches `name` as `instance`, with a fresh challenge's nonce.
    async fn attach(
        hub: &actix::Addr<Hub>,
        name: &str,
        instance: &str,
        last: Option<u64>,
    ) -> Result<mpsc::Receiver<Bytes>, RelayError> {
        let c = hub.send(IssueChallenge).await.unwrap();
        hub.send(Attach {
            name: name.into(),
            key: crate::trust::Identity::from_seed([1; 32]).public(),
            nonce: c.nonce,
            instance: instance.into(),
            last_event: last,
        })
        .await
        .unwrap()
    }

    async fn next_event(rx: &mut mpsc::Receiver<Bytes>) -> String {
        let ev = rx.recv().await.expect("an event");
        String::from_utf8_lossy(&ev).into_owned()
    }

    #[actix_rt::test]
    async fn a_request_for_a_name_not_attached_is_refused_not_queued() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let e = hub.send(send("alice", "bob")).await.unwrap().unwrap_err();
        assert!(matches!(e, RelayError::NotHere(_)), "{e:?}");
        let status = hub.send(Status).await.unwrap();
        assert_eq!(status.counters.not_here, 1);
        assert_eq!(status.waiting, 0);
    }

    #[actix_rt::test]
    async fn a_carried_request_is_answered_only_by_its_receiver_and_then_settled() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let mut bob = attach(&hub, "bob", "b1", None).await.unwrap();
        let hello = next_event(&mut bob).await;
        assert!(hello.contains("attached"), "{hello}");
        let mut carol = attach(&hub, "carol", "c1", None).await.unwrap();
        next_event(&mut carol).await;
        let (n, answer) = hub.send(send("alice", "bob")).await.unwrap().unwrap();
        let ev = next_event(&mut bob).await;
        assert!(ev.contains("request"), "{ev}");
        let status = hub.send(Status).await.unwrap();
        assert_eq!(status.waiting, 1);
        assert_eq!(status.counters.requests_carried, 1);
        // Carol's session cannot answer bob's request.
        let sessions = hub.send(Sessions).await.unwrap();
        let sessions = [sessions["bob"].clone(), sessions["carol"].clone()];
        let answered = Answered {
            n,
            status: 200,
            ack: Some("a".into()),
            body: "{}".into(),
        };
        let wrong = hub
            .send(Answer {
                session: sessions[1].clone(),
                answered: answered.clone(),
            })
            .await
            .unwrap();
        assert!(matches!(wrong, Err(RelayError::Forbidden(_))), "{wrong:?}");
        hub.send(Answer {
            session: sessions[0].clone(),
            answered: answered.clone(),
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer.await.unwrap(), answered);
        let status = hub.send(Status).await.unwrap();
        assert_eq!((status.waiting, status.counters.answers_carried), (0, 1));
    }

    #[actix_rt::test]
    async fn a_full_pair_queue_drops_and_says_so_without_blocking_other_senders() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let _bob = attach(&hub, "bob", "b1", None).await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..PAIR_QUEUE {
            waiting.push(hub.send(send("alice", "bob")).await.unwrap().unwrap());
        }
        let e = hub.send(send("alice", "bob")).await.unwrap().unwrap_err();
        assert!(
            matches!(e, RelayError::TooMany(ref m) if m.contains("full")),
            "{e:?}"
        );
        // Another sender still gets through.
        hub.send(send("carol", "bob")).await.unwrap().unwrap();
        // Abandoned requests free their places.
        hub.send(Abandon(waiting[0].0)).await.unwrap();
        hub.send(send("alice", "bob")).await.unwrap().unwrap();
        let status = hub.send(Status).await.unwrap();
        assert_eq!(status.counters.dropped_full, 1);
        assert_eq!(status.counters.timed_out, 1);
    }

    #[actix_rt::test]
    async fn the_newest_attach_wins_and_gets_what_the_old_stream_had_not_passed_on() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let mut old = attach(&hub, "bob", "b1", None).await.unwrap();
        next_event(&mut old).await;
        let (n1, _a1) = hub.send(send("alice", "bob")).await.unwrap().unwrap();
        let (n2, _a2) = hub.send(send("alice", "bob")).await.unwrap().unwrap();
        next_event(&mut old).await;
        next_event(&mut old).await;
        // Same process, reconnecting: it had got n1 only.
        let mut new = attach(&hub, "bob", "b1", Some(n1)).await.unwrap();
        assert!(next_event(&mut old).await.contains("superseded"));
        assert!(next_event(&mut new).await.contains("attached"));
        let replayed = next_event(&mut new).await;
        assert!(replayed.contains(&format!("id: {n2}\n")), "{replayed}");
        let status = hub.send(Status).await.unwrap();
        assert_eq!(status.counters.superseded, 1);
        assert_eq!(
            status.counters.requests_carried, 2,
            "a replay is not counted again"
        );
        assert!(status.flagged.is_empty());
    }

    #[actix_rt::test]
    async fn two_processes_taking_turns_with_one_key_are_refused_and_flagged() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let _a = attach(&hub, "bob", "A", None).await.unwrap();
        let _b = attach(&hub, "bob", "B", None).await.unwrap();
        let e = attach(&hub, "bob", "A", None).await.unwrap_err();
        assert!(
            matches!(e, RelayError::Forbidden(ref m) if m.contains("cloned")),
            "{e:?}"
        );
        let e = attach(&hub, "bob", "B", None).await.unwrap_err();
        assert!(matches!(e, RelayError::Forbidden(_)), "{e:?}");
        let status = hub.send(Status).await.unwrap();
        assert_eq!(status.flagged, vec!["bob".to_string()]);
        assert_eq!(status.counters.fighters_flagged, 1);
        assert!(status.attached.is_empty());
        // A restart (a new instance replacing the old one for good) is not a fight.
        let _c = attach(&hub, "carol", "C1", None).await.unwrap();
        let _c = attach(&hub, "carol", "C2", None).await.unwrap();
        let _c = attach(&hub, "carol", "C2", None).await.unwrap();
        let status = hub.send(Status).await.unwrap();
        assert_eq!(status.flagged, vec!["bob".to_string()]);
    }

    #[actix_rt::test]
    async fn a_nonce_is_this_relays_unexpired_and_taken_once() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let c = hub.send(IssueChallenge).await.unwrap();
        assert_eq!(c.relay, "r");
        hub.send(CheckNonce(c.nonce.clone()))
            .await
            .unwrap()
            .unwrap();
        let attach_with = |nonce: String| Attach {
            name: "bob".into(),
            key: crate::trust::Identity::from_seed([1; 32]).public(),
            nonce,
            instance: "b1".into(),
            last_event: None,
        };
        hub.send(attach_with(c.nonce.clone()))
            .await
            .unwrap()
            .unwrap();
        let again = hub.send(attach_with(c.nonce.clone())).await.unwrap();
        assert!(matches!(again, Err(RelayError::Unauthenticated(ref m)) if m.contains("used")));
        assert!(hub.send(CheckNonce(c.nonce)).await.unwrap().is_err());
        assert!(hub
            .send(CheckNonce("made-up".into()))
            .await
            .unwrap()
            .is_err());
        // Another relay process's nonce (another key), and an expired one of this one.
        let other = Challenges::new().issue("r", crate::wire::now_ms());
        assert!(hub.send(CheckNonce(other.nonce)).await.unwrap().is_err());
        let mine = Challenges::new();
        let old = mine.issue("r", 1_000);
        assert!(mine.check(&old.nonce, 1_000 + CHALLENGE_MS).is_err());
        assert!(mine.check(&old.nonce, 1_000 + CHALLENGE_MS - 1).is_ok());
    }

    #[actix_rt::test]
    async fn a_huge_last_event_id_replays_nothing_and_the_hub_lives_on() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let _bob = attach(&hub, "bob", "b1", None).await.unwrap();
        let _ = hub.send(send("alice", "bob")).await.unwrap().unwrap();
        let mut again = attach(&hub, "bob", "b1", Some(u64::MAX)).await.unwrap();
        assert!(next_event(&mut again).await.contains("attached"));
        assert!(again.try_recv().is_err(), "nothing after the last number");
        assert_eq!(hub.send(Status).await.unwrap().waiting, 1);
    }

    #[actix_rt::test]
    async fn an_answer_from_a_stream_replaced_moments_ago_still_counts() {
        let hub = Hub::new("r", Duration::from_secs(15)).start();
        let _old = attach(&hub, "bob", "b1", None).await.unwrap();
        let old_session = hub.send(Sessions).await.unwrap()["bob"].clone();
        let (n, answer) = hub.send(send("alice", "bob")).await.unwrap().unwrap();
        // The stream breaks while bob takes the request; it attaches again saying it got it.
        let _new = attach(&hub, "bob", "b1", Some(n)).await.unwrap();
        let answered = Answered {
            n,
            status: 200,
            ack: None,
            body: "{}".into(),
        };
        hub.send(Answer {
            session: old_session,
            answered: answered.clone(),
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer.await.unwrap(), answered);
    }
}

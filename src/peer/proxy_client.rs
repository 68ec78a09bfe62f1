//! The peer's only link to the outside: its own proxy.
//!
//! Owns: the one awc `Client` of this peer (built once, on the role's arbiter), the proxy's
//! URLs, and turning the proxy's answers and failures into [`PeerError`]s. Also [`send`], the
//! one way a message of this user leaves: stored as pending first, then handed to the proxy
//! ([`hand_over`]); kept as failed (with the reason) when the proxy refuses it, and kept pending
//! ("waiting for your proxy") when the proxy cannot be reached, for the [`Resender`].
//!
//! It never talks to anything but the proxy, and never decides what to send.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use awc::http::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::error::PeerError;
use super::resend::{ProxyUnreachable, ResendNow, Resender};
use super::store::{AppendOutgoing, SetDeliveryState, SetHandOver, StoredMessage, WriteQueue};
use crate::wire::control_plane::Endpoint;
use crate::wire::data_plane::{
    Accepted, DeliveryState, DirectoryEntry, Envelope, Forget, PeerKind, Submitted,
};
use crate::wire::legacy::{ErrorBody, FailedBody, Message, ProxyPeers};

/// How long one call to the proxy may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading who can be reached may take (a page waits for it).
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from the proxy.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// `POST {proxy}/api/v1/outbox`: hands a message over; answered once the proxy has it durably.
#[derive(Message)]
#[rtype(result = "Result<Accepted, PeerError>")]
pub struct PostOutbox {
    pub envelope: Envelope,
}

/// `GET {proxy}/api/v1/directory`, or the legacy `GET {proxy}/peers` when the proxy has no
/// directory (an original proxy): who this user can reach.
#[derive(Message)]
#[rtype(result = "Result<Vec<DirectoryEntry>, PeerError>")]
pub struct FetchDirectory;

/// `GET {proxy}/peers`: the proxy's legacy endpoint table.
#[derive(Message)]
#[rtype(result = "Result<ProxyPeers, PeerError>")]
pub struct FetchLegacyPeers;

/// `POST {proxy}/api/v1/forget`: a chat (or all) was cleared.
#[derive(Message)]
#[rtype(result = "Result<(), PeerError>")]
pub struct PostForget {
    pub forget: Forget,
}

/// Most messages handed over in one batch, and their most bytes of text.
const MAX_BATCH: usize = 256;
const MAX_BATCH_TEXT_BYTES: usize = 96 * 1024;

type Handed = Result<Accepted, PeerError>;

/// Talks to this peer's proxy.
pub struct ProxyClient {
    client: awc::Client,
    base: String,
    /// Messages given to hand over, in the order given, each with where its answer goes.
    queue: VecDeque<(Envelope, oneshot::Sender<Handed>)>,
    /// A hand-over is under way; the next one waits for it, so the proxy gets messages in the
    /// order they were written (and, under load, many in one request).
    in_flight: bool,
    /// The proxy takes `POST /api/v1/outbox/batch` (until it answers 404/405).
    batch: bool,
}

impl ProxyClient {
    /// Must be built on the thread the actor runs on (awc clients are per thread).
    pub fn new(proxy_url: &str) -> Self {
        Self {
            client: awc::Client::builder().timeout(CALL_TIMEOUT).finish(),
            base: proxy_url.trim_end_matches('/').to_string(),
            queue: VecDeque::new(),
            in_flight: false,
            batch: true,
        }
    }

    /// Hands over what is queued, as one batch, unless a hand-over is under way.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.queue.is_empty() {
            return;
        }
        let mut envelopes = Vec::new();
        let mut replies = Vec::new();
        let mut text_bytes = 0;
        while let Some((envelope, _)) = self.queue.front() {
            let size = envelope.body.text().len();
            let full = envelopes.len() >= MAX_BATCH || text_bytes + size > MAX_BATCH_TEXT_BYTES;
            if !envelopes.is_empty() && full {
                break;
            }
            let Some((envelope, reply)) = self.queue.pop_front() else {
                break;
            };
            text_bytes += size;
            envelopes.push(envelope);
            replies.push(reply);
        }
        self.in_flight = true;
        let work = hand_over_all(
            self.client.clone(),
            self.base.clone(),
            envelopes,
            self.batch,
        );
        ctx.spawn(
            work.into_actor(self)
                .map(move |(results, batch), act, ctx| {
                    act.batch = batch;
                    // The proxy could not take a message now: what queued behind it waits too
                    // (handed over again, in order, by the resender) rather than overtaking it.
                    let transient = results
                        .iter()
                        .find_map(|r| r.as_ref().err().filter(|e| e.is_transient()).cloned());
                    for (result, reply) in results.into_iter().zip(replies) {
                        let _ = reply.send(result);
                    }
                    if let Some(e) = transient {
                        for (_, reply) in act.queue.drain(..) {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    act.in_flight = false;
                    act.flush(ctx);
                }),
        );
    }
}

/// Hands `envelopes` to the proxy, in order: in one batch request when the proxy has the route
/// (`batch`), else one by one. Answers each envelope's result, and whether batches work.
async fn hand_over_all(
    client: awc::Client,
    base: String,
    envelopes: Vec<Envelope>,
    batch: bool,
) -> (Vec<Handed>, bool) {
    let what = "handing messages to the proxy";
    let mut batch = batch;
    if batch && envelopes.len() > 1 {
        let request = client.post(format!("{base}/api/v1/outbox/batch"));
        let body = serde_json::to_vec(&envelopes).map_err(PeerError::storage);
        let answer = match body {
            Ok(body) => call(request, Some(body), what).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(bytes) => {
                let results = match parse::<Vec<Submitted>>(&bytes, what) {
                    Ok(verdicts) if verdicts.len() == envelopes.len() => verdicts
                        .into_iter()
                        .map(|v| match v {
                            Submitted::Accepted(a) => Ok(a),
                            Submitted::Refused {
                                status, message, ..
                            } => Err(PeerError::ProxyRefused {
                                status,
                                reason: message,
                            }),
                        })
                        .collect(),
                    Ok(_) => {
                        let e = PeerError::ProxyRefused {
                            status: 502,
                            reason: format!("{what}: the proxy answered for another batch"),
                        };
                        vec![Err(e); envelopes.len()]
                    }
                    Err(e) => vec![Err(e); envelopes.len()],
                };
                return (results, true);
            }
            // An older proxy without the route: one by one from now on.
            Err(PeerError::ProxyRefused {
                status: 404 | 405, ..
            }) => batch = false,
            // The batch as a whole was refused (e.g. too large for the proxy's limit): these
            // go one by one, so each gets its own verdict.
            Err(PeerError::ProxyRefused { status, .. }) if (400..500).contains(&status) => {}
            Err(e) => return (vec![Err(e); envelopes.len()], true),
        }
    }
    let mut results = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        results.push(hand_over_one(&client, &base, envelope).await);
    }
    (results, batch)
}

/// `POST {proxy}/api/v1/outbox` for one envelope; to a proxy of the original, its own format.
async fn hand_over_one(client: &awc::Client, base: &str, envelope: Envelope) -> Handed {
    let request = client.post(format!("{base}/api/v1/outbox"));
    let id = envelope.id.clone();
    let body = serde_json::to_vec(&envelope).map_err(PeerError::storage)?;
    let answer = match call(request, Some(body), "handing the message to the proxy").await {
        Err(PeerError::ProxyRefused { status, reason })
            if (status == 404 || status == 405)
                && reason != format!("Unknown peer: {}", envelope.to) =>
        {
            return hand_over_legacy(client, base, envelope).await;
        }
        other => other?,
    };
    // A 2xx is the proxy's word that it holds the message; an answer body other than
    // `Accepted` does not undo that.
    Ok(
        serde_json::from_slice::<Accepted>(&answer).unwrap_or(Accepted {
            id,
            state: DeliveryState::Pending,
        }),
    )
}

/// compat: a proxy of the original has no `/api/v1/outbox` (it answers any path as a legacy
/// post for its own host): `POST {proxy}/` with `Host: TO` and `{message, from, timestamp}`.
/// It sends no receipts, so its 200 is taken as delivered, as our proxies take it.
async fn hand_over_legacy(client: &awc::Client, base: &str, envelope: Envelope) -> Handed {
    let body =
        serde_json::to_vec(&Message::from_envelope(&envelope)).map_err(PeerError::storage)?;
    let request = client
        .post(format!("{base}/"))
        .insert_header(("host", envelope.to.as_str()));
    call(request, Some(body), "handing the message to the proxy").await?;
    Ok(Accepted {
        id: envelope.id,
        state: DeliveryState::Delivered,
    })
}

impl Actor for ProxyClient {
    type Context = Context<Self>;
}

/// The proxy's reason for a refusal: its legacy error message, else the start of its body.
fn refusal_reason(status: StatusCode, body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.message;
    }
    if let Ok(e) = serde_json::from_slice::<FailedBody>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() {
        format!("proxy answered {status}")
    } else {
        format!("proxy answered {status}: {text}")
    }
}

/// Sends a request and reads the answer's body, mapping every failure (unreachable, or a
/// non-2xx answer) to a [`PeerError`].
async fn call(
    request: awc::ClientRequest,
    body: Option<Vec<u8>>,
    what: &str,
) -> Result<actix_web::web::Bytes, PeerError> {
    let sent = match body {
        Some(b) => {
            request
                .insert_header(("content-type", "application/json"))
                .send_body(b)
                .await
        }
        None => request.send().await,
    };
    let mut resp = sent.map_err(|e| PeerError::ProxyUnreachable(format!("{what}: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .body()
        .limit(MAX_ANSWER)
        .await
        .map_err(|e| PeerError::ProxyUnreachable(format!("{what}: reading the answer: {e}")))?;
    if !status.is_success() {
        return Err(PeerError::ProxyRefused {
            status: status.as_u16(),
            reason: refusal_reason(status, &bytes),
        });
    }
    Ok(bytes)
}

/// A successful answer's JSON body.
fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, PeerError> {
    serde_json::from_slice(bytes).map_err(|e| PeerError::ProxyRefused {
        status: 502,
        reason: format!("{what}: the proxy's answer is not what was expected: {e}"),
    })
}

impl Handler<PostOutbox> for ProxyClient {
    type Result = ResponseFuture<Handed>;

    fn handle(&mut self, msg: PostOutbox, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.queue.push_back((msg.envelope, reply));
        self.flush(ctx);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(PeerError::ProxyUnreachable(
                    "the chat app is shutting down".into(),
                ))
            })
        })
    }
}

/// The legacy table as a directory: `is_api` entries are AI models; online is unknown.
pub fn directory_from_table(peers: &ProxyPeers) -> Vec<DirectoryEntry> {
    peers
        .peers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case(&peers.instance))
        .map(|(name, endpoint)| DirectoryEntry {
            name: name.clone(),
            kind: match endpoint {
                Endpoint::Ai(_) => PeerKind::Ai,
                Endpoint::Peer(_) => PeerKind::Person,
            },
            online: None,
        })
        .collect()
}

impl Handler<FetchDirectory> for ProxyClient {
    type Result = ResponseFuture<Result<Vec<DirectoryEntry>, PeerError>>;

    fn handle(&mut self, _: FetchDirectory, _: &mut Context<Self>) -> Self::Result {
        let native = self
            .client
            .get(format!("{}/api/v1/directory", self.base))
            .timeout(DIRECTORY_TIMEOUT);
        let legacy = self
            .client
            .get(format!("{}/peers", self.base))
            .timeout(DIRECTORY_TIMEOUT);
        Box::pin(async move {
            match call(native, None, "reading the directory").await {
                Ok(d) => parse(&d, "reading the directory"),
                // compat: an original proxy has no directory; its table says who is an AI.
                Err(PeerError::ProxyRefused { status: 404, .. }) => {
                    let what = "reading the proxy's table";
                    let peers: ProxyPeers = parse(&call(legacy, None, what).await?, what)?;
                    Ok(directory_from_table(&peers))
                }
                Err(e) => Err(e),
            }
        })
    }
}

impl Handler<FetchLegacyPeers> for ProxyClient {
    type Result = ResponseFuture<Result<ProxyPeers, PeerError>>;

    fn handle(&mut self, _: FetchLegacyPeers, _: &mut Context<Self>) -> Self::Result {
        let request = self
            .client
            .get(format!("{}/peers", self.base))
            .timeout(DIRECTORY_TIMEOUT);
        Box::pin(async move {
            let what = "reading the proxy's table";
            parse(&call(request, None, what).await?, what)
        })
    }
}

impl Handler<PostForget> for ProxyClient {
    type Result = ResponseFuture<Result<(), PeerError>>;

    fn handle(&mut self, msg: PostForget, _: &mut Context<Self>) -> Self::Result {
        let request = self.client.post(format!("{}/api/v1/forget", self.base));
        Box::pin(async move {
            let body = serde_json::to_vec(&msg.forget).map_err(PeerError::storage)?;
            // Only its success matters, whatever its body.
            call(request, Some(body), "asking the proxy to forget")
                .await
                .map(|_| ())
        })
    }
}

/// How one hand-over of our stored pending message to the proxy ended (already recorded in
/// the store).
#[derive(Debug)]
pub enum HandOver {
    /// The proxy holds it durably.
    Taken,
    /// The proxy could not take it now: kept pending, marked as waiting for the proxy.
    Waiting(PeerError),
    /// The proxy refused it for good: marked failed with the reason.
    Refused(PeerError),
}

/// Hands our stored pending message to the proxy once and records what came of it.
pub async fn hand_over(
    writes: &Addr<WriteQueue>,
    proxy: &Addr<ProxyClient>,
    envelope: Envelope,
) -> HandOver {
    let id = envelope.id.clone();
    let to = envelope.to.clone();
    let handed = proxy
        .send(PostOutbox { envelope })
        .await
        .map_err(PeerError::from)
        .and_then(|r| r);
    let (outcome, write) = match handed {
        Ok(accepted) => {
            let taken = writes.send(SetHandOver {
                id: id.clone(),
                waiting: None,
            });
            let logged_id = id.clone();
            let taken = async move {
                if let Err(e) = taken.await.map_err(PeerError::from).and_then(|r| r) {
                    log::warn!("cannot record that message {logged_id} was handed over: {e}");
                }
            };
            if accepted.state == DeliveryState::Pending {
                // Not waited for: the proxy holds the message durably now, whatever this
                // write does. Were it lost (a crash before it reached the disk), the message
                // would be handed over again at restart and the proxy would know it by its id.
                actix_rt::spawn(taken);
                return HandOver::Taken;
            }
            // An original proxy: its 200 already says what became of the message.
            let state = writes.send(SetDeliveryState {
                id: id.clone(),
                state: accepted.state,
            });
            taken.await;
            (HandOver::Taken, state.await)
        }
        Err(e) if e.is_transient() => {
            log::warn!("message {id} to {to} waits for the proxy: {e}");
            let waiting = writes.send(SetHandOver {
                id: id.clone(),
                waiting: Some(format!("waiting for your proxy: {e}")),
            });
            (HandOver::Waiting(e), waiting.await)
        }
        Err(e) => {
            log::warn!("message {id} to {to} refused: {e}");
            let failed = writes.send(SetDeliveryState {
                id: id.clone(),
                state: DeliveryState::Failed { reason: e.reason() },
            });
            (HandOver::Refused(e), failed.await)
        }
    };
    if let Err(e) = write.map_err(PeerError::from).and_then(|r| r) {
        log::error!("cannot record the state of message {id}: {e}");
    }
    outcome
}

/// Stores `envelope` as our pending message, hands it to the proxy, and answers Ok only once
/// the proxy has it durably. Refused by the proxy: kept as failed with the reason. The proxy
/// unreachable: an error too, but the message is kept pending and handed over again by the
/// [`Resender`] until the proxy takes it or it expires.
/// fixes original: "success" is never answered for a message nobody has, and nothing is lost.
pub async fn send(
    writes: &Addr<WriteQueue>,
    proxy: &Addr<ProxyClient>,
    resender: &Addr<Resender>,
    envelope: Envelope,
) -> Result<StoredMessage, PeerError> {
    // Our copy reaches the disk while the proxy takes its own: the answer waits for both.
    let (stored, durable) = writes
        .send(AppendOutgoing {
            message: StoredMessage::outgoing(&envelope),
        })
        .await??;
    if stored.duplicate {
        durable.await?;
        return Ok(stored.message);
    }
    // Older messages still waiting for the proxy go first: a conversation keeps its order.
    if let Err(e) = resender.send(ResendNow).await {
        log::warn!("cannot hand over the waiting messages first: {e}");
    }
    let handed = hand_over(writes, proxy, envelope).await;
    if let Err(e) = durable.await {
        log::error!("message {} could not be stored: {e}", stored.message.id);
        return Err(e);
    }
    match handed {
        HandOver::Taken => Ok(stored.message),
        HandOver::Waiting(e) => {
            resender.do_send(ProxyUnreachable);
            Err(PeerError::NotSentYet {
                reason: e.to_string(),
            })
        }
        HandOver::Refused(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{web, App, HttpResponse, HttpServer};
    use std::sync::{Arc, Mutex};

    /// A proxy on port 0 whose routes the test chooses; it records every path posted to.
    fn proxy(
        routes: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            let log = log.clone();
            App::new()
                .wrap_fn(move |req, srv| {
                    log.lock().unwrap().push(req.path().to_string());
                    actix_web::dev::Service::call(srv, req)
                })
                .configure(routes.clone())
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        (url, seen)
    }

    fn three() -> Vec<Envelope> {
        vec![
            Envelope::text("alice", "bob", "one"),
            Envelope::text("alice", "zed", "two"),
            Envelope::text("alice", "bob", "three"),
        ]
    }

    async fn single(e: web::Json<Envelope>) -> HttpResponse {
        if e.to == "zed" {
            return HttpResponse::NotFound().json(ErrorBody::new("Unknown peer: zed"));
        }
        HttpResponse::Accepted().json(Accepted {
            id: e.id.clone(),
            state: DeliveryState::Pending,
        })
    }

    #[actix_rt::test]
    async fn a_batch_answer_gives_each_message_its_own_verdict_in_one_request() {
        let (url, seen) = proxy(|cfg| {
            cfg.route(
                "/api/v1/outbox/batch",
                web::post().to(|b: web::Json<Vec<Envelope>>| async move {
                    let verdicts: Vec<Submitted> = b
                        .iter()
                        .map(|e| match e.to.as_str() {
                            "zed" => Submitted::Refused {
                                id: e.id.clone(),
                                status: 404,
                                message: "Unknown peer: zed".into(),
                            },
                            _ => Submitted::Accepted(Accepted {
                                id: e.id.clone(),
                                state: DeliveryState::Pending,
                            }),
                        })
                        .collect();
                    HttpResponse::Ok().json(verdicts)
                }),
            );
        });
        let (results, batch) = hand_over_all(awc::Client::default(), url, three(), true).await;
        assert!(batch);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(
            matches!(&results[1], Err(PeerError::ProxyRefused { status: 404, reason }) if reason == "Unknown peer: zed")
        );
        assert_eq!(
            *seen.lock().unwrap(),
            ["/api/v1/outbox/batch"],
            "one request"
        );
    }

    #[actix_rt::test]
    async fn a_proxy_without_the_batch_route_gets_the_messages_one_by_one_in_order() {
        let (url, seen) = proxy(|cfg| {
            cfg.route("/api/v1/outbox", web::post().to(single));
        });
        let (results, batch) = hand_over_all(awc::Client::default(), url, three(), true).await;
        assert!(!batch, "batches are not tried again");
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "/api/v1/outbox/batch",
                "/api/v1/outbox",
                "/api/v1/outbox",
                "/api/v1/outbox"
            ]
        );
    }

    #[actix_rt::test]
    async fn a_batch_refused_as_a_whole_is_retried_one_by_one_and_batches_stay_on() {
        let (url, _) = proxy(|cfg| {
            cfg.route(
                "/api/v1/outbox/batch",
                web::post().to(|| async {
                    HttpResponse::PayloadTooLarge()
                        .json(ErrorBody::new("request body is too large"))
                }),
            )
            .route("/api/v1/outbox", web::post().to(single));
        });
        let (results, batch) = hand_over_all(awc::Client::default(), url, three(), true).await;
        assert!(batch);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(matches!(
            &results[1],
            Err(PeerError::ProxyRefused { status: 404, .. })
        ));
    }

    #[actix_rt::test]
    async fn an_unreachable_proxy_leaves_every_message_waiting() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let (results, _) = hand_over_all(awc::Client::default(), url, three(), true).await;
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(e) if e.is_transient())));
    }

    #[test]
    fn a_refusal_reason_is_the_proxys_own_message() {
        let body = br#"{"status":"error","message":"Unknown peer: zed"}"#;
        assert_eq!(
            refusal_reason(StatusCode::NOT_FOUND, body),
            "Unknown peer: zed"
        );
        assert_eq!(
            refusal_reason(StatusCode::BAD_GATEWAY, b""),
            "proxy answered 502 Bad Gateway"
        );
    }

    #[test]
    fn a_legacy_table_tells_ai_from_people_and_leaves_out_the_owner() {
        let peers: ProxyPeers = serde_json::from_str(
            r#"{"instance":"alice","peers":{"alice":{"host":"h","port":1},"bob":{"host":"h","port":2},
                "BOT":{"host":"api","port":443,"is_api":true}}}"#,
        )
        .unwrap();
        let d = directory_from_table(&peers);
        let got: Vec<(&str, PeerKind)> = d.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(got, [("BOT", PeerKind::Ai), ("bob", PeerKind::Person)]);
    }
}

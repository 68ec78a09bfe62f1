//! The peer's only link to the outside: plain HTTP calls to its own proxy.
//!
//! Owns: the proxy's URLs, the shape of each call, and turning the proxy's answers and
//! failures into [`PeerError`]s. [`ProxyApi`] holds an awc `Client` (one per thread: built on
//! the thread that uses it) and the base URL; it keeps no other state.
//!
//! It never talks to anything but the proxy, and never decides what to send or when:
//! the peer's `outgoing` module does.

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;

use awc::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::PeerError;
use crate::hop::post::{post_encoded, send, Answer};
use crate::wire::control_plane::Endpoint;
use crate::wire::data_plane::{
    Accepted, AiReplyOf, DeliveryState, DirectoryEntry, Envelope, Forget, PeerKind, StopAnswer,
    Submitted,
};
use crate::wire::legacy::{self, Message, Note, ProxyPeers};
use crate::wire::PeerName;

/// How long one call to the proxy may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading who can be reached may take (a page waits for it).
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from the proxy.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// The proxy's answer for one message handed over.
pub type Handed = Result<Accepted, PeerError>;

/// This peer's proxy, called over HTTP. Clones share one client, built on first use (a client
/// costs about a megabyte and a few milliseconds to build, and a worker that never calls the
/// proxy needs none).
#[derive(Clone)]
pub struct ProxyApi {
    client: Rc<OnceCell<awc::Client>>,
    base: String,
    /// Sent with every call (the proxy takes its own peer's calls from loopback, or with it).
    link: crate::hop::link::LinkToken,
}

impl ProxyApi {
    /// Must be used on the thread it is built on (awc clients are per thread).
    pub fn new(proxy_url: &str, link: &crate::hop::link::LinkToken) -> Self {
        Self {
            client: Rc::default(),
            base: proxy_url.trim_end_matches('/').to_string(),
            link: link.clone(),
        }
    }

    fn client(&self) -> &awc::Client {
        self.client
            .get_or_init(|| crate::hop::link::client(&self.link, CALL_TIMEOUT))
    }

    /// `POST {proxy}/api/v1/outbox[/batch]`: hands `envelopes` over in order (see
    /// [`hand_over_all`]); answers each one's result, and whether batches work.
    pub async fn hand_over(&self, envelopes: Vec<Envelope>, batch: bool) -> (Vec<Handed>, bool) {
        hand_over_all(self.client().clone(), self.base.clone(), envelopes, batch).await
    }

    /// `GET {proxy}/api/v1/directory`, or the legacy `GET {proxy}/peers` when the proxy has no
    /// directory (an original proxy): who this user can reach.
    pub async fn directory(&self) -> Result<Vec<DirectoryEntry>, PeerError> {
        let native = self.client().get(format!("{}/api/v1/directory", self.base));
        match call(native, None, DIRECTORY_TIMEOUT, "reading the directory").await {
            Ok(d) => parse(&d, "reading the directory"),
            // compat: an original proxy has no directory; its table says who is an AI.
            Err(PeerError::ProxyRefused { status: 404, .. }) => {
                Ok(directory_from_table(&self.legacy_peers().await?))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET {proxy}/peers`: the proxy's legacy endpoint table.
    pub async fn legacy_peers(&self) -> Result<ProxyPeers, PeerError> {
        let request = self.client().get(format!("{}/peers", self.base));
        let what = "reading the proxy's table";
        parse(&call(request, None, DIRECTORY_TIMEOUT, what).await?, what)
    }

    /// `POST {proxy}/api/v1/forget`: a chat (or all, [`Forget::all`]) was cleared; answered
    /// once the proxy has forgotten it. compat: an original proxy has no such route (404/405)
    /// and keeps no AI memory, so there is nothing to forget: that is a success too.
    pub async fn forget(&self, forget: &Forget) -> Result<(), PeerError> {
        let request = self.client().post(format!("{}/api/v1/forget", self.base));
        let body = serde_json::to_vec(forget).map_err(PeerError::storage)?;
        // Only its success matters, whatever its body.
        match call(
            request,
            Some(body),
            CALL_TIMEOUT,
            "asking the proxy to forget",
        )
        .await
        {
            Ok(_)
            | Err(PeerError::ProxyRefused {
                status: 404 | 405, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl ProxyApi {
    /// `POST {proxy}/api/v1/ai/stop`: stops the reply AI endpoint `with` is writing.
    pub async fn stop_reply(&self, with: &str) -> Result<StopAnswer, PeerError> {
        let what = "asking the proxy to stop the reply";
        let answer = self.ai_call("stop", with, what).await?;
        parse(&answer, what)
    }

    /// `POST {proxy}/api/v1/ai/regenerate`: asks AI endpoint `with` again for its last answer;
    /// answers the proxy's note once it is asked.
    pub async fn regenerate(&self, with: &str) -> Result<String, PeerError> {
        let what = "asking the proxy to regenerate the answer";
        let answer = self.ai_call("regenerate", with, what).await?;
        Ok(parse::<Note>(&answer, what)?.message)
    }

    async fn ai_call(
        &self,
        action: &str,
        with: &str,
        what: &str,
    ) -> Result<actix_web::web::Bytes, PeerError> {
        let request = self
            .client()
            .post(format!("{}/api/v1/ai/{action}", self.base));
        let body = AiReplyOf {
            with: with.to_string(),
        };
        let body = serde_json::to_vec(&body).map_err(PeerError::storage)?;
        call(request, Some(body), CALL_TIMEOUT, what).await
    }
}

/// Hands `envelopes` to the proxy, in order: in one batch request when the proxy has the route
/// (`batch`), else one by one, stopping at the first the proxy could not take now (the later
/// ones get its error). Answers each envelope's result, and whether batches work.
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
            Ok(body) => call(request, Some(body), CALL_TIMEOUT, what).await,
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
    let mut results: Vec<Handed> = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        // The proxy could not take one now: the later ones are not tried (they would overtake
        // it), and wait with it.
        let transient = results
            .last()
            .and_then(|r| r.as_ref().err())
            .filter(|e| e.is_transient())
            .cloned();
        results.push(match transient {
            Some(e) => Err(e),
            None => hand_over_one(&client, &base, envelope).await,
        });
    }
    (results, batch)
}

/// `POST {proxy}/api/v1/outbox` for one envelope; to a proxy of the original, its own format.
async fn hand_over_one(client: &awc::Client, base: &str, envelope: Envelope) -> Handed {
    let request = client.post(format!("{base}/api/v1/outbox"));
    let id = envelope.id.clone();
    let body = serde_json::to_vec(&envelope).map_err(PeerError::storage)?;
    let what = "handing the message to the proxy";
    let answer = match call(request, Some(body), CALL_TIMEOUT, what).await {
        Err(PeerError::ProxyRefused { status, reason })
            if (status == 404 || status == 405) && reason != legacy::unknown_peer(&envelope.to) =>
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
    call(
        request,
        Some(body),
        CALL_TIMEOUT,
        "handing the message to the proxy",
    )
    .await?;
    Ok(Accepted {
        id: envelope.id,
        state: DeliveryState::Delivered,
    })
}

/// The proxy's reason for a refusal: its legacy error message, else the start of its body.
fn refusal_reason(status: StatusCode, body: &[u8]) -> String {
    if let Some(message) = legacy::error_field(body) {
        return message;
    }
    let text = legacy::error_message(body);
    if text.is_empty() {
        format!("proxy answered {status}")
    } else {
        format!("proxy answered {status}: {text}")
    }
}

/// Sends a request (with `body` as JSON, if any) and reads the answer's body, all within
/// `timeout`, mapping every failure (unreachable, or a non-2xx answer) to a [`PeerError`].
async fn call(
    request: awc::ClientRequest,
    body: Option<Vec<u8>>,
    timeout: Duration,
    what: &str,
) -> Result<actix_web::web::Bytes, PeerError> {
    let answer = match body {
        Some(b) => post_encoded(request, b, MAX_ANSWER, timeout).await,
        None => send(request, MAX_ANSWER, timeout).await,
    };
    match answer {
        Answer::Ok { body, .. } => Ok(body),
        Answer::Unreachable { reason } => {
            Err(PeerError::ProxyUnreachable(format!("{what}: {reason}")))
        }
        Answer::Busy { status, body }
        | Answer::RouteMissing { status, body }
        | Answer::Refused { status, body } => Err(PeerError::ProxyRefused {
            status: status.as_u16(),
            reason: refusal_reason(status, &body),
        }),
    }
}

/// A successful answer's JSON body.
fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, PeerError> {
    serde_json::from_slice(bytes).map_err(|e| PeerError::ProxyRefused {
        status: 502,
        reason: format!("{what}: the proxy's answer is not what was expected: {e}"),
    })
}

/// The legacy table as a directory: `is_api` entries are AI models; online is unknown.
pub fn directory_from_table(peers: &ProxyPeers) -> Vec<DirectoryEntry> {
    let me = PeerName::from(peers.instance.as_str());
    peers
        .peers
        .iter()
        .filter(|(name, _)| me != name.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::legacy::ErrorBody;
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

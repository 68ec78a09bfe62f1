//! One HTTP request to the next hop and what its answer means. Sends JSON (typed, or already
//! encoded) or nothing (a GET), reads at most `limit` bytes of the answer, gives up after
//! `timeout`, and sorts the result into one [`Answer`]. The rule "no answer, 408, 429 and 5xx
//! are worth retrying" is spelled here once ([`is_transient`], [`Answer::is_transient`]); what a
//! retry or a refusal means is the caller's.
//!
//! Keeps no state and never retries itself; the awc `Client` is the caller's, built once.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::web::Bytes;
use serde::Serialize;

use crate::wire::data_plane::ACK_HEADER;
use crate::wire::legacy;

/// How one request ended. Every answer with a status keeps its status and body, so a caller can
/// word it its own way; [`Answer::reason`] is the common wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx; `ack` is its [`ACK_HEADER`] (a receiving proxy's signed acknowledgement), if any.
    Ok {
        status: StatusCode,
        body: Bytes,
        ack: Option<String>,
    },
    /// No (whole) answer: no connection, a broken read, or nothing within the deadline.
    Unreachable { reason: String },
    /// 408, 429 or 5xx: the receiver may take it later.
    Busy { status: StatusCode, body: Bytes },
    /// 404 or 405: the receiver has no such route, or refused on a route it has (the body tells
    /// which, see [`legacy::is_unknown_peer`]); callers with a legacy fallback try it here.
    RouteMissing { status: StatusCode, body: Bytes },
    /// Any other status: refused for good.
    Refused { status: StatusCode, body: Bytes },
}

impl Answer {
    /// Sorts a status and its body: 2xx ok, [`is_transient`] busy, 404/405 route missing,
    /// anything else refused.
    pub fn from_status(status: StatusCode, body: Bytes) -> Answer {
        if status.is_success() {
            Answer::Ok {
                status,
                body,
                ack: None,
            }
        } else if is_transient(status) {
            Answer::Busy { status, body }
        } else if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            Answer::RouteMissing { status, body }
        } else {
            Answer::Refused { status, body }
        }
    }

    /// Worth trying again later: no answer, or a busy one.
    pub fn is_transient(&self) -> bool {
        matches!(self, Answer::Unreachable { .. } | Answer::Busy { .. })
    }

    /// The answer in words for people: why there was none, or the receiver's message and the
    /// code ([`detail`]).
    pub fn reason(&self) -> String {
        match self {
            Answer::Unreachable { reason } => reason.clone(),
            Answer::Ok { status, body, .. }
            | Answer::Busy { status, body }
            | Answer::RouteMissing { status, body }
            | Answer::Refused { status, body } => detail(*status, body),
        }
    }
}

/// 408 (request timeout), 429 (too many requests) and every 5xx: the receiver may take it later.
pub fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// An error answer as text for people: the receiver's message and the code (`Unknown peer: bob
/// (404)`), or the status alone when the body says nothing.
pub fn detail(status: StatusCode, body: &[u8]) -> String {
    let message = legacy::error_message(body);
    if message.is_empty() {
        status.to_string()
    } else {
        format!("{message} ({})", status.as_u16())
    }
}

/// `request` with `body` as JSON; the answer read up to `limit` bytes, all within `timeout`.
pub async fn post_json<T: Serialize>(
    request: awc::ClientRequest,
    body: &T,
    limit: usize,
    timeout: Duration,
) -> Answer {
    exchange(request.timeout(timeout).send_json(body), limit, timeout).await
}

/// [`post_json`] for a body already encoded as JSON.
pub async fn post_encoded(
    request: awc::ClientRequest,
    json: impl Into<Bytes>,
    limit: usize,
    timeout: Duration,
) -> Answer {
    let request = request
        .timeout(timeout)
        .insert_header((header::CONTENT_TYPE, "application/json"));
    exchange(request.send_body(json.into()), limit, timeout).await
}

/// `request` without a body (a GET); the answer read up to `limit` bytes, within `timeout`.
pub async fn send(request: awc::ClientRequest, limit: usize, timeout: Duration) -> Answer {
    exchange(request.timeout(timeout).send(), limit, timeout).await
}

async fn exchange(sent: awc::SendClientRequest, limit: usize, timeout: Duration) -> Answer {
    let call = async {
        let mut res = sent.await.map_err(|e| e.to_string())?;
        let status = res.status();
        let ack = res
            .headers()
            .get(ACK_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = res.body().limit(limit).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body, ack))
    };
    match actix_rt::time::timeout(timeout, call).await {
        Err(_) => Answer::Unreachable {
            reason: format!("no answer within {}s", timeout.as_secs()),
        },
        Ok(Err(reason)) => Answer::Unreachable { reason },
        Ok(Ok((status, body, ack))) => match Answer::from_status(status, body) {
            Answer::Ok { status, body, .. } => Answer::Ok { status, body, ack },
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, body: &'static [u8]) -> Answer {
        Answer::from_status(
            StatusCode::from_u16(code).unwrap(),
            Bytes::from_static(body),
        )
    }

    #[test]
    fn a_2xx_is_ok_with_its_body() {
        assert_eq!(
            answer(202, b"{}"),
            Answer::Ok {
                status: StatusCode::ACCEPTED,
                body: Bytes::from_static(b"{}"),
                ack: None,
            }
        );
    }

    #[test]
    fn timeouts_rate_limits_and_server_errors_are_transient() {
        for code in [408, 429, 500, 502, 503, 504] {
            let got = answer(code, b"");
            assert!(
                matches!(got, Answer::Busy { .. }) && got.is_transient(),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 405, 409, 413, 422] {
            assert!(!answer(code, b"").is_transient(), "{code}");
        }
    }

    #[test]
    fn a_404_or_405_is_a_missing_route_with_its_body_kept() {
        let body = br#"{"status":"error","message":"Unknown peer: bob"}"#;
        assert!(matches!(answer(405, b""), Answer::RouteMissing { .. }));
        assert_eq!(
            answer(404, body),
            Answer::RouteMissing {
                status: StatusCode::NOT_FOUND,
                body: Bytes::from_static(body)
            }
        );
        assert_eq!(answer(404, body).reason(), "Unknown peer: bob (404)");
    }

    #[test]
    fn a_refusal_gives_the_receivers_words_or_else_the_status() {
        let refused = answer(400, br#"{"status":"failed","error":"bad from"}"#);
        assert!(matches!(refused, Answer::Refused { .. }));
        assert_eq!(refused.reason(), "bad from (400)");
        assert_eq!(answer(503, b"").reason(), "503 Service Unavailable");
    }

    #[actix_rt::test]
    async fn typed_and_encoded_json_arrive_as_json_and_the_answer_is_read() {
        use actix_web::{web, App, HttpResponse, HttpServer};
        // Echoes a JSON body back; 415 for anything that is not JSON.
        let server = HttpServer::new(|| {
            App::new().route(
                "/",
                web::post().to(|body: web::Json<serde_json::Value>| async move {
                    HttpResponse::Accepted().json(body.into_inner())
                }),
            )
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let url = format!("http://127.0.0.1:{}/", server.addrs()[0].port());
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let client = awc::Client::default();
        let wait = Duration::from_secs(5);
        let typed = post_json(client.post(&url), &[1, 2], 1024, wait).await;
        let encoded = post_encoded(client.post(&url), &b"[1,2]"[..], 1024, wait).await;
        let cut = post_encoded(client.post(&url), vec![b'1'; 100], 10, wait).await;
        handle.stop(false).await;
        let ok = Answer::Ok {
            status: StatusCode::ACCEPTED,
            body: Bytes::from_static(b"[1,2]"),
            ack: None,
        };
        assert_eq!(typed, ok);
        assert_eq!(encoded, ok);
        assert!(matches!(cut, Answer::Unreachable { .. }), "{cut:?}");
    }

    #[actix_rt::test]
    async fn no_server_at_all_is_unreachable_and_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = awc::Client::default();
        let got = post_json(
            client.post(format!("http://127.0.0.1:{port}/")),
            &(),
            1024,
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(got, Answer::Unreachable { .. }), "{got:?}");
        assert!(got.is_transient());
    }
}

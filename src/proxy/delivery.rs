//! One delivery attempt over HTTP, and what its answer means: handed on, worth retrying, or
//! refused for good. Used by the [`super::outbox::Outbox`] with its one shared awc `Client`.
//!
//! Owns the wire calls to the next hop: `POST {peer}/api/v1/inbox`, `POST {peer}/api/v1/receipts`,
//! `POST {proxy}/api/v1/relay` (ours), and the legacy `POST {proxy}/` with `Host: TARGET`
//! (an original proxy, whose 200 counts as delivered). A native route answered 404/405 by a
//! component of the original falls back to the original's format at once (`POST /message` for
//! a peer, `POST /` with `Host:` for a proxy). It keeps no state and never retries itself.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use serde::Serialize;

use crate::wire::data_plane::{Ack, Envelope, Receipt};
use crate::wire::legacy::{self, ErrorBody, FailedBody};

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop has it (it answered 2xx).
    Delivered,
    /// Not now: `what` (e.g. "bob's proxy") could not be reached or asked to retry.
    Retry { what: String, error: String },
    /// Refused for good; `reason` is for the user, e.g. "bob's proxy refused it: ...".
    Refused { reason: String },
    /// A batch route the receiver does not have (404/405): send one by one instead.
    Unsupported { reason: String },
}

/// `POST {peer_url}/api/v1/inbox`; to a peer of the original, `POST {peer_url}/message`.
pub async fn to_peer_inbox(
    client: awc::Client,
    peer_url: String,
    envelope: Envelope,
    timeout: Duration,
) -> Outcome {
    let native = format!("{peer_url}/api/v1/inbox");
    let legacy = format!("{peer_url}/message");
    post_native_or_legacy(
        &client,
        &native,
        &envelope,
        &legacy,
        None,
        timeout,
        "your chat app",
    )
    .await
}

/// `POST {peer_url}/api/v1/receipts`.
pub async fn to_peer_receipts(
    client: awc::Client,
    peer_url: String,
    receipt: Receipt,
    timeout: Duration,
) -> Outcome {
    let url = format!("{peer_url}/api/v1/receipts");
    post(&client, &url, None, &receipt, timeout, "your chat app").await
}

/// `POST {peer}/api/v1/receipts/batch`: several receipts at once; a 2xx means all are applied.
/// 404/405 (a peer without the route) and any other refusal of the whole batch answer
/// [`Outcome::Unsupported`]: the caller then posts them one by one, each getting its verdict.
pub async fn to_peer_receipts_batch(
    client: awc::Client,
    peer_url: String,
    receipts: Vec<Receipt>,
    timeout: Duration,
) -> Outcome {
    let url = format!("{peer_url}/api/v1/receipts/batch");
    match post(&client, &url, None, &receipts, timeout, "your chat app").await {
        Outcome::Refused { reason } => Outcome::Unsupported { reason },
        other => other,
    }
}

/// `POST {proxy}/api/v1/relay`: another proxy of ours; its 200 Ack means it stored it.
pub async fn relay(
    client: awc::Client,
    base_url: String,
    name: String,
    envelope: Envelope,
    timeout: Duration,
) -> Outcome {
    // A proxy not (yet) registered with our controller is taken for ours; an original proxy
    // there answers our route as a legacy post for its own host, and gets its own format.
    let native = format!("{base_url}/api/v1/relay");
    let legacy = format!("{base_url}/");
    let what = format!("{name}'s proxy");
    let host = envelope.to.clone();
    post_native_or_legacy(
        &client,
        &native,
        &envelope,
        &legacy,
        Some(&host),
        timeout,
        &what,
    )
    .await
}

/// `POST {proxy}/api/v1/relay/batch` or `POST {peer}/api/v1/inbox/batch`: several envelopes
/// (`[Envelope]`) in one request, stored by the receiver in one transaction; delivered only when
/// every id is acknowledged (`[Ack]`, in order).
pub async fn post_batch(
    client: awc::Client,
    url: String,
    what: String,
    envelopes: Vec<Envelope>,
    timeout: Duration,
) -> Outcome {
    let call = async {
        let mut res = client
            .post(&url)
            .timeout(timeout)
            .send_json(&envelopes)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let bytes = res
            .body()
            .limit(4 * 1024 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((status, bytes))
    };
    match actix_rt::time::timeout(timeout, call).await {
        Err(_) => Outcome::Retry {
            what,
            error: format!("no answer within {}s", timeout.as_secs()),
        },
        Ok(Err(error)) => Outcome::Retry { what, error },
        Ok(Ok((status, _)))
            if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED =>
        {
            Outcome::Unsupported {
                reason: format!("{what} answered {status} to a batch"),
            }
        }
        Ok(Ok((status, bytes))) => match classify(status, &bytes, &what) {
            Outcome::Delivered => match serde_json::from_slice::<Vec<Ack>>(&bytes) {
                Ok(acks)
                    if acks.len() == envelopes.len()
                        && acks.iter().zip(&envelopes).all(|(a, e)| a.id == e.id) =>
                {
                    Outcome::Delivered
                }
                _ => Outcome::Retry {
                    what,
                    error: "its answer did not acknowledge every message".to_string(),
                },
            },
            other => other,
        },
    }
}

/// compat: `POST {proxy}/` with `Host: TARGET` and `{message, from, timestamp}` to a proxy of the
/// original; it has no acks, so its 200 counts as delivered.
pub async fn to_legacy_proxy(
    client: awc::Client,
    base_url: String,
    name: String,
    envelope: Envelope,
    timeout: Duration,
) -> Outcome {
    let url = format!("{base_url}/");
    let body = legacy::Message::from_envelope(&envelope);
    post(
        &client,
        &url,
        Some(&envelope.to),
        &body,
        timeout,
        &format!("{name}'s proxy"),
    )
    .await
}

async fn post<T: Serialize>(
    client: &awc::Client,
    url: &str,
    host: Option<&str>,
    body: &T,
    timeout: Duration,
    what: &str,
) -> Outcome {
    match send_raw(client, url, host, body, timeout).await {
        Ok((status, bytes)) => classify(status, &bytes, what),
        Err(error) => Outcome::Retry {
            what: what.to_string(),
            error,
        },
    }
}

/// One POST and its answer (status, body), or why there was none.
async fn send_raw<T: Serialize>(
    client: &awc::Client,
    url: &str,
    host: Option<&str>,
    body: &T,
    timeout: Duration,
) -> Result<(StatusCode, actix_web::web::Bytes), String> {
    let mut req = client.post(url).timeout(timeout);
    if let Some(h) = host {
        req = req.insert_header((header::HOST, h));
    }
    let call = async {
        let mut res = req.send_json(body).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let bytes = res
            .body()
            .limit(64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((status, bytes))
    };
    match actix_rt::time::timeout(timeout, call).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
        Ok(result) => result,
    }
}

/// A 404/405 to one of our routes from a server of the original, which has none of them (its
/// proxy answers any path as a legacy post, and says `Unknown peer: <its own host>`). Our own
/// servers' 404 for a message to someone unknown (`Unknown peer: TO`) is a real refusal.
fn route_missing(status: StatusCode, body: &[u8], to: &str) -> bool {
    let missing = status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED;
    missing && error_detail(body) != format!("Unknown peer: {to}")
}

/// Posts `native` to `native_url`; where the receiver turns out to be the original's
/// ([`route_missing`]), posts the legacy body to `legacy_url` instead (with `Host: host`).
#[allow(clippy::too_many_arguments)]
async fn post_native_or_legacy(
    client: &awc::Client,
    native_url: &str,
    envelope: &Envelope,
    legacy_url: &str,
    host: Option<&str>,
    timeout: Duration,
    what: &str,
) -> Outcome {
    match send_raw(client, native_url, None, envelope, timeout).await {
        Ok((status, bytes)) if route_missing(status, &bytes, &envelope.to) => {
            // compat: a component of the original: its own wire format; its 200 is delivery.
            post(
                client,
                legacy_url,
                host,
                &legacy::Message::from_envelope(envelope),
                timeout,
                what,
            )
            .await
        }
        Ok((status, bytes)) => classify(status, &bytes, what),
        Err(error) => Outcome::Retry {
            what: what.to_string(),
            error,
        },
    }
}

/// 2xx: delivered; 408, 429 and 5xx: retry; any other status: refused for good.
pub fn classify(status: StatusCode, body: &[u8], what: &str) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let detail = error_detail(body);
    let detail = if detail.is_empty() {
        status.to_string()
    } else {
        format!("{detail} ({})", status.as_u16())
    };
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Retry {
            what: what.to_string(),
            error: detail,
        }
    } else {
        Outcome::Refused {
            reason: format!("{what} refused it: {detail}"),
        }
    }
}

/// The message of an error answer in either legacy shape, else its text (shortened).
fn error_detail(body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.message;
    }
    if let Ok(e) = serde_json::from_slice::<FailedBody>(body) {
        return e.error;
    }
    String::from_utf8_lossy(body)
        .chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_answer_counts_as_delivered() {
        assert_eq!(
            classify(StatusCode::OK, b"", "bob's proxy"),
            Outcome::Delivered
        );
        assert_eq!(
            classify(StatusCode::ACCEPTED, b"{}", "x"),
            Outcome::Delivered
        );
    }

    #[test]
    fn a_server_error_or_rate_limit_is_retried() {
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, b"", "bob's proxy"),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, b"", "x"),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn a_client_error_is_refused_with_the_receivers_own_words() {
        let body = br#"{"status":"error","message":"Unknown peer: bob"}"#;
        assert_eq!(
            classify(StatusCode::NOT_FOUND, body, "bob's proxy"),
            Outcome::Refused {
                reason: "bob's proxy refused it: Unknown peer: bob (404)".into()
            }
        );
    }
}

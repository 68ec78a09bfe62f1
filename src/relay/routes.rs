//! The relay's HTTP routes, thin: each checks the caller's rate first (per source address,
//! before any signature is looked at), then its proof, then asks the [`Hub`].
//!
//! On the TLS listener (the only one proxies use; never in plain HTTP):
//! - `GET /relay/v1/challenge`, `GET /relay/v1/attach`: a proxy behind NAT attaches;
//! - `POST /relay/v1/to/{name}`: another proxy sends a signed request for `name`;
//! - `POST /relay/v1/answer`: the attached proxy answers a request carried to it.
//!
//! On the plain listener: `/healthz`, and `GET /relay/v1/status` for loopback callers only
//! (who is attached is for the operator, and the controller's dashboard, which the relay
//! reports to).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::value::RawValue;

use super::error::RelayError;
use super::events::Events;
use super::hub::{
    Abandon, Answer, Attach, CheckNonce, Hub, IssueChallenge, Refused, Send, SessionOf, Status,
};
use crate::proxy::router::Published;
use crate::trust::limiter::RateLimiter;
use crate::trust::request::{self, RequestLine, MAX_SKEW_MS, SIGNATURE_HEADER};
use crate::trust::tls::OverTls;
use crate::trust::PublicKey;
use crate::web::{read_limited, BodyError};
use crate::wire::data_plane::ACK_HEADER;
use crate::wire::directory::{Directory, UserState};
use crate::wire::relay::{
    Answered, AttachProof, ATTACH_HEADER, CARRIED_TARGETS, RELAYED_HEADER, SESSION_HEADER,
    TARGET_HEADER, WAIT_HEADER,
};

/// Attaches (and challenges: an attach takes two) one source address may make: a burst, then
/// per minute; many proxies may share one address behind a carrier's NAT, and all come back
/// at once after a relay restart.
const ATTACH_BURST: u32 = 200;
const ATTACH_PER_MINUTE: u32 = 1_200;
/// Sends one source address may make (many proxies may share one address behind NAT).
const SEND_BURST: u32 = 2_000;
const SEND_PER_MINUTE: u32 = 120_000;
/// The most of an answer read from the receiver (an acknowledgement of a batch, or an error).
const ANSWER_LIMIT: usize = 1024 * 1024;
/// How long a sender's request waits for its answer when the sender does not say
/// ([`WAIT_HEADER`]); and the longest it may ask for.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(8);
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// What the routes share.
#[derive(Clone)]
pub struct RelayState {
    pub name: String,
    pub hub: Addr<Hub>,
    /// The signed directory as last applied: who may attach and send.
    pub published: tokio::sync::watch::Receiver<Arc<Published>>,
    pub attach_limit: Arc<Mutex<RateLimiter>>,
    pub send_limit: Arc<Mutex<RateLimiter>>,
    pub max_body_bytes: usize,
    pub ping_every: Duration,
}

impl RelayState {
    pub fn new(
        name: &str,
        hub: Addr<Hub>,
        published: tokio::sync::watch::Receiver<Arc<Published>>,
        max_body_bytes: usize,
        ping_every: Duration,
    ) -> RelayState {
        RelayState {
            name: name.to_string(),
            hub,
            published,
            attach_limit: Arc::new(Mutex::new(RateLimiter::new(
                ATTACH_BURST,
                ATTACH_PER_MINUTE,
            ))),
            send_limit: Arc::new(Mutex::new(RateLimiter::new(SEND_BURST, SEND_PER_MINUTE))),
            max_body_bytes,
            ping_every,
        }
    }

    /// Takes a token of `limit` for the caller's address, or refuses (429).
    async fn limit(
        &self,
        req: &HttpRequest,
        limit: &Mutex<RateLimiter>,
        what: &str,
    ) -> Result<(), RelayError> {
        let source = req
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.limit_source(source, limit, what)
    }

    /// Takes a token of `limit` for `source`, or refuses (429).
    fn limit_source(
        &self,
        source: IpAddr,
        limit: &Mutex<RateLimiter>,
        what: &str,
    ) -> Result<(), RelayError> {
        let allowed = limit
            .lock()
            .map(|mut l| l.allow(source, Instant::now()))
            .unwrap_or(false);
        if allowed {
            return Ok(());
        }
        self.hub.do_send(Refused::RateLimited);
        Err(RelayError::TooMany(format!(
            "too many {what} from {source}: slow down and try again shortly"
        )))
    }

    /// `name`'s pinned key, when the directory lists it as an active user (not a relay).
    fn member_key(&self, name: &str) -> Result<PublicKey, RelayError> {
        member_key(&self.published.borrow().directory, name)
    }

    async fn ask<M>(&self, msg: M) -> Result<M::Result, RelayError>
    where
        M: actix::Message + std::marker::Send + 'static,
        M::Result: std::marker::Send,
        Hub: actix::Handler<M>,
    {
        self.hub
            .send(msg)
            .await
            .map_err(|e| RelayError::Unavailable(format!("the relay is stopping: {e}")))
    }
}

/// `name`'s key in `directory`: an active user's. A revoked key is refused for good; a name
/// the directory does not list (yet) is worth trying again (the relay's copy may lag).
pub fn member_key(directory: &Directory, name: &str) -> Result<PublicKey, RelayError> {
    let Some(entry) = directory.user(name) else {
        return Err(RelayError::Unavailable(format!(
            "this relay's signed directory does not list {name} (not joined, or the relay's \
             copy is behind): try again later"
        )));
    };
    match (&entry.state, entry.key) {
        (UserState::Revoked { reason, .. }, _) => Err(RelayError::Forbidden(format!(
            "the key of {name} was revoked ({reason}): the relay serves it no more"
        ))),
        _ if !entry.role.is_user() => Err(RelayError::Forbidden(format!(
            "{name} is a relay: relays neither attach to nor send through another"
        ))),
        (UserState::Active, Some(key)) => Ok(key),
        _ => Err(RelayError::Unavailable(format!(
            "{name} has no pinned key in this relay's signed directory (not joined yet): try \
             again later"
        ))),
    }
}

/// The route table.
pub fn configure(cfg: &mut web::ServiceConfig, state: RelayState) {
    cfg.app_data(web::Data::new(state))
        .route("/relay/v1/challenge", web::get().to(challenge))
        .route("/relay/v1/attach", web::get().to(attach))
        .route("/relay/v1/to/{name}", web::post().to(send))
        .route("/relay/v1/answer", web::post().to(answer))
        .route("/relay/v1/status", web::get().to(status));
}

/// Relay routes are for TLS connections only.
fn over_tls(req: &HttpRequest) -> Result<(), RelayError> {
    if req.conn_data::<OverTls>().is_some() {
        return Ok(());
    }
    Err(RelayError::Forbidden(
        "proxies use this relay over TLS only, at the TLS address the signed directory gives \
         for it, never in plain HTTP"
            .into(),
    ))
}

/// # GET /relay/v1/challenge
/// A nonce to sign for an attach, good once, for a minute.
async fn challenge(
    req: HttpRequest,
    state: web::Data<RelayState>,
) -> Result<HttpResponse, RelayError> {
    over_tls(&req)?;
    state.limit(&req, &state.attach_limit, "attaches").await?;
    let c = state.ask(IssueChallenge).await?;
    Ok(HttpResponse::Ok().json(c))
}

/// # GET /relay/v1/attach
/// With [`ATTACH_HEADER`]; opens this proxy's event stream (see [`crate::wire::relay`]).
/// A proxy sends it as the first request of a new connection, which [`super::front`] serves
/// leanly; one that comes later on a connection is served here, the same stream through
/// actix-web.
async fn attach(
    req: HttpRequest,
    state: web::Data<RelayState>,
) -> Result<HttpResponse, RelayError> {
    over_tls(&req)?;
    let source = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let header = req
        .headers()
        .get(ATTACH_HEADER)
        .and_then(|v| v.to_str().ok());
    let last_event = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let rx = authorize(&state, source, header, last_event).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .streaming(Events::new(rx, state.ping_every)))
}

/// An attach from `source` with `header` (the signed challenge) and `Last-Event-ID`: its rate
/// first, then its proof, then the hub's stream.
pub async fn authorize(
    state: &RelayState,
    source: IpAddr,
    header: Option<&str>,
    last_event: Option<u64>,
) -> Result<tokio::sync::mpsc::Receiver<Bytes>, RelayError> {
    state.limit_source(source, &state.attach_limit, "attaches")?;
    let refused = |e: RelayError| {
        state.hub.do_send(Refused::Attach);
        e
    };
    let header = header.ok_or_else(|| {
        refused(RelayError::Unauthenticated(format!(
            "no `{ATTACH_HEADER}` header: sign the challenge of GET /relay/v1/challenge"
        )))
    })?;
    let proof = AttachProof::parse(header).map_err(|e| {
        refused(RelayError::BadRequest(format!(
            "the `{ATTACH_HEADER}` header is malformed: {e}"
        )))
    })?;
    if proof.relay != state.name {
        return Err(refused(RelayError::Unauthenticated(format!(
            "the proof is for relay {}, not {}",
            proof.relay, state.name
        ))));
    }
    let now = crate::wire::now_ms();
    if proof.time_ms.abs_diff(now) > MAX_SKEW_MS {
        return Err(refused(RelayError::Unauthenticated(format!(
            "the proof is dated {} s away from this relay's clock: check both clocks",
            proof.time_ms.abs_diff(now) / 1000
        ))));
    }
    state.ask(CheckNonce(proof.nonce.clone())).await??;
    let key = state.member_key(&proof.name).map_err(refused)?;
    if !proof.verify(&key) {
        return Err(refused(RelayError::Unauthenticated(format!(
            "the attach proof does not hold for {}'s pinned key",
            proof.name
        ))));
    }
    let rx = state
        .ask(Attach {
            name: proof.name.clone(),
            key,
            nonce: proof.nonce.clone(),
            instance: proof.instance.clone(),
            last_event,
        })
        .await??;
    log::info!("relay {}: {} attached", state.name, proof.name);
    Ok(rx)
}

/// # POST /relay/v1/to/{name}
/// Another proxy's signed request for `name`, carried down `name`'s stream; answered with
/// `name`'s answer (status, body, acknowledgement), or the relay's refusal.
async fn send(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<RelayState>,
) -> Result<HttpResponse, RelayError> {
    over_tls(&req)?;
    state.limit(&req, &state.send_limit, "requests").await?;
    let to = path.into_inner();
    let refused = |e: RelayError| {
        state.hub.do_send(Refused::Send);
        e
    };
    let target = req
        .headers()
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| CARRIED_TARGETS.contains(t))
        .ok_or_else(|| {
            refused(RelayError::BadRequest(format!(
                "`{TARGET_HEADER}` must name the receiver's route: one of {}",
                CARRIED_TARGETS.join(", ")
            )))
        })?
        .to_string();
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            refused(RelayError::Unauthenticated(format!(
                "no `{SIGNATURE_HEADER}` header: a relay carries only requests signed by a \
                 member's key"
            )))
        })?
        .to_string();
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let h = request::parse(&signature)
        .map_err(|e| refused(RelayError::Unauthenticated(e.to_string())))?;
    let key = state.member_key(&h.origin).map_err(refused)?;
    let now = crate::wire::now_ms();
    let line = RequestLine {
        method: "POST",
        target: &target,
        body: &body,
    };
    // The signature proves a member sent it, for this receiver; replays are the receiver's
    // to refuse (its nonce memory), and a member replaying its own requests only sends more.
    request::verify(&h, &line, &to, &h.origin, &key, now, 0).map_err(|e| {
        refused(match e {
            request::RequestError::Skew(_) => RelayError::Unavailable(e.to_string()),
            other => RelayError::Unauthenticated(other.to_string()),
        })
    })?;
    let wait = req
        .headers()
        .get(WAIT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    let (raw, messages) = json_body(&body).map_err(refused)?;
    let (n, reply) = state
        .ask(Send {
            from: h.origin.clone(),
            to: to.clone(),
            target,
            signature,
            body: raw,
            messages,
        })
        .await??;
    let answered = match actix_rt::time::timeout(wait, reply).await {
        Ok(Ok(answered)) => answered,
        Ok(Err(_)) => {
            return Err(RelayError::Unavailable(format!(
                "relay {} restarted before {to}'s proxy answered: send it again",
                state.name
            )))
        }
        Err(_) => {
            state.hub.do_send(Abandon(n));
            return Err(RelayError::NoAnswer(format!(
                "{to}'s proxy did not answer through relay {} within {:.1} s: it may have taken \
                 it; send it again (a repeat is acknowledged, not stored twice)",
                state.name,
                wait.as_secs_f32()
            )));
        }
    };
    // A status a receiver has no business answering (1xx, beyond 599) is the relay's 502.
    let status = actix_web::http::StatusCode::from_u16(answered.status)
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    out.insert_header((RELAYED_HEADER, "1"))
        .content_type("application/json");
    if let Some(ack) = answered.ack {
        out.insert_header((ACK_HEADER, ack));
    }
    Ok(out.body(answered.body))
}

/// A request's body, up to `limit`: too large is 413, a body that does not come in time 408.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, RelayError> {
    read_limited(req, payload, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => RelayError::TooLarge(e.to_string()),
            BodyError::Unreadable(_) => RelayError::Timeout(e.to_string()),
            other => RelayError::BadRequest(other.to_string()),
        })
}

/// The body as JSON to embed byte for byte, and how many messages it holds (a list: each).
/// Refused: not JSON, whitespace around it, or a carriage return (an event stream's line end).
fn json_body(body: &[u8]) -> Result<(Box<RawValue>, u64), RelayError> {
    let bad = |why: &str| RelayError::BadRequest(format!("the body {why}"));
    let text = std::str::from_utf8(body).map_err(|_| bad("is not UTF-8"))?;
    if text.contains('\r') {
        return Err(bad(
            "holds a carriage return, which this relay does not carry",
        ));
    }
    let raw: Box<RawValue> =
        serde_json::from_str(text).map_err(|e| bad(&format!("is not JSON: {e}")))?;
    if raw.get().len() != text.len() {
        return Err(bad("has whitespace around its JSON value"));
    }
    let messages = if text.starts_with('[') {
        serde_json::from_str::<Vec<serde::de::IgnoredAny>>(text)
            .map(|v| v.len() as u64)
            .unwrap_or(1)
    } else {
        1
    };
    Ok((raw, messages))
}

/// # POST /relay/v1/answer
/// The attached proxy answers a request carried to it ([`SESSION_HEADER`]: its stream's).
async fn answer(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<RelayState>,
) -> Result<HttpResponse, RelayError> {
    over_tls(&req)?;
    state.limit(&req, &state.send_limit, "requests").await?;
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            RelayError::Unauthenticated(format!(
                "no `{SESSION_HEADER}` header: only an attached proxy answers"
            ))
        })?
        .to_string();
    // The session first: a stranger's answer is not read.
    if state.ask(SessionOf(session.clone())).await?.is_none() {
        return Err(RelayError::Unauthenticated(
            "no stream attached to this relay has that session: attach again".into(),
        ));
    }
    let body = read_body(&req, payload, ANSWER_LIMIT).await?;
    let answered: Answered = serde_json::from_slice(&body)
        .map_err(|e| RelayError::BadRequest(format!("the answer is not an Answered: {e}")))?;
    state.ask(Answer { session, answered }).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// # GET /relay/v1/status
/// Who is attached and what was carried; loopback callers on the plain listener only.
async fn status(
    req: HttpRequest,
    state: web::Data<RelayState>,
) -> Result<HttpResponse, RelayError> {
    let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    if req.conn_data::<OverTls>().is_some() || !loopback {
        return Err(RelayError::Forbidden(
            "the relay's status is for its operator: ask its plain listener from the same \
             machine"
                .into(),
        ));
    }
    Ok(HttpResponse::Ok().json(state.ask(Status).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_json_value_is_carried_and_batches_count_each_message() {
        assert_eq!(json_body(br#"{"a":1}"#).unwrap().1, 1);
        assert_eq!(json_body(br#"[{"a":1},{"b":2}]"#).unwrap().1, 2);
        for bad in [&b" {}"[..], b"{}\n", b"{\r}", b"nope", b"\xff"] {
            assert!(json_body(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_revoked_key_or_a_relay_is_refused_for_good_an_unknown_one_for_now() {
        use crate::wire::directory::{Role, UserEntry};
        let key = crate::trust::Identity::generate().public();
        let entry = |state: UserState, role: Role| UserEntry {
            name: "x".into(),
            proxy_id: None,
            key: Some(key),
            host: String::new(),
            port: 0,
            native: true,
            tls: None,
            seal: None,
            role,
            via: None,
            state,
        };
        let mut d = Directory::default();
        assert!(matches!(
            member_key(&d, "x"),
            Err(RelayError::Unavailable(_))
        ));
        d.users
            .insert("x".into(), entry(UserState::Active, Role::User));
        assert_eq!(member_key(&d, "X").unwrap(), key);
        d.users
            .insert("x".into(), entry(UserState::Active, Role::Relay));
        assert!(matches!(member_key(&d, "x"), Err(RelayError::Forbidden(_))));
        let revoked = UserState::Revoked {
            at_ms: 1,
            reason: "lost".into(),
        };
        d.users.insert("x".into(), entry(revoked, Role::User));
        assert!(matches!(member_key(&d, "x"), Err(RelayError::Forbidden(_))));
    }
}

//! compat: the routes the original's components call: its table (`GET /peers`) and its message
//! post (`POST /` with `Host: TARGET`, any path), answered in its shapes.
//!
//! The original signs nothing, so a post is taken only from whom it can come from: the own
//! user's message from the own peer (loopback or the link token, as the own-peer API), and
//! another user's message only from a proxy listed under `legacy_proxies` at the address the
//! post comes from, for that name, when no key is pinned to it. Those are stored marked
//! unauthenticated. Everything else is refused: other proxies of ours sign their relays.

use actix_web::http::header;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{ask, check_time, ProxyState};
use crate::proxy::error::ProxyError;
use crate::proxy::router::GetTable;
use crate::proxy::routing::Route;
use crate::proxy::store::Origin;
use crate::web::{read_limited, BodyError};
use crate::wire::host_port::HostPort;
use crate::wire::legacy::{self, success, Note, ProxyPeers};

/// # GET /peers
/// compat: `{"instance": NAME, "peers": TABLE}`.
pub(super) async fn peers(state: web::Data<ProxyState>) -> Result<HttpResponse, ProxyError> {
    let table = ask(&state.router, GetTable).await?;
    Ok(HttpResponse::Ok().json(ProxyPeers {
        instance: state.me.to_string(),
        peers: (*table).clone(),
    }))
}

/// # POST / (any path), `Host: TARGET`
/// compat: the original's message post, routed on the Host name.
pub(super) async fn legacy_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ProxyState>,
) -> Result<HttpResponse, ProxyError> {
    if req.method() != Method::POST {
        return Err(ProxyError::NotFound(format!(
            "no route {} {}",
            req.method(),
            req.path()
        )));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))
        .ok_or_else(|| {
            ProxyError::BadRequest("missing Host header: it names who the message is for".into())
        })?;
    let target = HostPort::host_of(&host);
    let body = read_limited(&req, payload, state.max_body_bytes)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => ProxyError::TooLarge(e.to_string()),
            other => ProxyError::BadRequest(other.to_string()),
        })?;
    let msg: legacy::Message = serde_json::from_slice(&body)
        .map_err(|e| ProxyError::BadRequest(format!("invalid JSON: {e}")))?;
    let missing = msg.missing_fields();
    if !missing.is_empty() {
        return Err(ProxyError::BadRequest(format!(
            "Missing required fields: {}",
            missing.join(", ")
        )));
    }
    let mut envelope = msg.to_envelope(&target);
    let own_user = state.me.matches(&envelope.from);
    let name = match state.route(&target).await? {
        // compat: an original proxy hands over a message for our user.
        Route::OwnPeer if !own_user => {
            state.check_legacy_sender(&req, &envelope.from)?;
            state.check_incoming(&envelope)?;
            envelope.unauthenticated = true;
            state.me.to_string()
        }
        Route::OwnPeer => {
            state.check_own_peer(&req)?;
            check_time(&envelope)?;
            state.check_text(&envelope)?;
            state.me.to_string()
        }
        // compat: an original peer hands its own user's message to us, its proxy.
        // fixes original: nobody else may send through this proxy in another's name.
        Route::Proxy { name, .. } | Route::Ai { name, .. } => {
            if !own_user {
                return Err(ProxyError::Forbidden(format!(
                    "this proxy sends only {}'s messages, not {}'s",
                    state.me, envelope.from
                )));
            }
            state.check_own_peer(&req)?;
            // Issue 13: the own user's messages get the time rules of incoming ones.
            check_time(&envelope)?;
            state.check_not_too_old(&envelope, crate::wire::now_ms())?;
            state.check_text(&envelope)?;
            name
        }
        Route::Unknown => return Err(ProxyError::UnknownPeer(target)),
    };
    // The name as the table spells it (the Host header may use any case).
    envelope.to = name.clone().into();
    // fixes original: "success" only once the message is durably queued.
    state.enqueue(envelope, Origin::Legacy).await?;
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("Message queued for delivery to {name}"),
    })))
}

impl ProxyState {
    /// The own user's message in the original's format: only from the own peer, as on the
    /// own-peer API (loopback, or the link token).
    fn check_own_peer(&self, req: &HttpRequest) -> Result<(), ProxyError> {
        crate::hop::link::allows(
            &self.link,
            req.headers()
                .get(crate::hop::link::LINK_HEADER)
                .map(|v| v.as_bytes()),
            req.peer_addr().map(|a| a.ip()),
        )
        .map_err(|_| {
            ProxyError::Forbidden(format!(
                "a message from {} is taken only from {}'s own peer (this machine, or the \
                 link token)",
                self.me, self.me
            ))
        })
    }

    /// Another user's unsigned message: only from a proxy of the original listed under
    /// `legacy_proxies` for that name at this source address, and never for a name with a
    /// pinned key (its messages come signed, through `/api/v1/relay`).
    fn check_legacy_sender(&self, req: &HttpRequest, from: &str) -> Result<(), ProxyError> {
        let source = req.peer_addr().map(|a| a.ip().to_canonical());
        let listed = source.is_some_and(|ip| {
            self.legacy
                .iter()
                .any(|l| l.name.matches(from) && l.address.to_canonical() == ip)
        });
        let shown = source.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
        if !listed {
            return Err(ProxyError::Forbidden(format!(
                "unsigned posts from other proxies are refused: {from} from {shown} is not a \
                 proxy of the original listed under `legacy_proxies` in config.yaml (add \
                 `- {{name: {from}, address: {shown}}}` to take its messages, shown as \
                 unauthenticated); proxies of this overlay sign their relays"
            )));
        }
        let published = self.published.borrow().clone();
        if published
            .directory
            .user(from)
            .is_some_and(|u| u.key.is_some())
        {
            return Err(ProxyError::Forbidden(format!(
                "{from} has a pinned key: its messages must come signed by it, not as a legacy \
                 post; remove {from} from `legacy_proxies`"
            )));
        }
        Ok(())
    }
}

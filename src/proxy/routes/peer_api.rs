//! The routes this proxy's own peer calls: hand messages over, see the queue, the directory,
//! forget an AI conversation when a chat is cleared, stop an AI's reply or ask for another.

use actix_web::{web, HttpResponse};

use super::{ask, batch, ProxyState};
use crate::config::InstanceName;
use crate::proxy::ai::desk::{ForgetConversation, Regenerate, StopReply};
use crate::proxy::error::ProxyError;
use crate::proxy::outbox::GetStatus;
use crate::proxy::router::ListDirectory;
use crate::proxy::store::Origin;
use crate::wire::data_plane::{
    Accepted, AiReplyOf, DeliveryState, Envelope, Forget, StopAnswer, Submitted,
};
use crate::wire::legacy::{success, Note};

/// # POST /api/v1/outbox
/// The own peer hands over a message; 202 once it is durably queued (idempotent by id).
pub(super) async fn submit(
    state: web::Data<ProxyState>,
    envelope: web::Json<Envelope>,
) -> Result<HttpResponse, ProxyError> {
    let envelope = envelope.into_inner();
    state.check_submission(&envelope).await?;
    let id = envelope.id.clone();
    state.enqueue(envelope, Origin::OwnPeer).await?;
    Ok(HttpResponse::Accepted().json(Accepted {
        id,
        state: DeliveryState::Pending,
    }))
}

/// # POST /api/v1/outbox/batch
/// The own peer hands over several messages (`[Envelope]`, in its order); 200 `[Submitted]` in
/// the same order once the accepted ones are durably queued, in one commit. Each message gets
/// the verdict a single submit would get: one refused message does not hold up the others.
pub(super) async fn submit_batch(
    state: web::Data<ProxyState>,
    envelopes: web::Json<Vec<Envelope>>,
) -> Result<HttpResponse, ProxyError> {
    let envelopes = batch(envelopes)?;
    let mut verdicts = Vec::with_capacity(envelopes.len());
    let mut accepted = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        match state.check_submission(&envelope).await {
            Ok(()) => {
                verdicts.push(Submitted::Accepted(Accepted {
                    id: envelope.id.clone(),
                    state: DeliveryState::Pending,
                }));
                accepted.push(envelope);
            }
            Err(e) => verdicts.push(Submitted::Refused {
                id: envelope.id,
                status: actix_web::ResponseError::status_code(&e).as_u16(),
                message: e.to_string(),
            }),
        }
    }
    if !accepted.is_empty() {
        state.enqueue_many(accepted, Origin::OwnPeer).await?;
    }
    Ok(HttpResponse::Ok().json(verdicts))
}

/// # GET /api/v1/outbox
/// What is still queued, per destination.
pub(super) async fn outbox_status(
    state: web::Data<ProxyState>,
) -> Result<HttpResponse, ProxyError> {
    Ok(HttpResponse::Ok().json(ask(&state.outbox, GetStatus).await?))
}

/// # GET /api/v1/signatures
/// What this proxy signed and verified on its hops to other proxies since it started
/// ([`crate::proxy::signed_hop::CountersView`]).
pub(super) async fn signatures(state: web::Data<ProxyState>) -> HttpResponse {
    HttpResponse::Ok().json(state.hops.counters.view())
}

/// # GET /api/v1/tls
/// This proxy's certificate (its validity), whether its directory was checked in this run, and
/// how many TLS connections it opened and took ([`crate::proxy::tls::TlsView`]); 404 without
/// TLS (no pinned root).
pub(super) async fn tls_status(state: web::Data<ProxyState>) -> Result<HttpResponse, ProxyError> {
    let applied = state.published.borrow().clone();
    match &state.tls {
        Some(t) => Ok(HttpResponse::Ok().json(t.view(&applied))),
        None => Err(ProxyError::NotFound(
            "this proxy has no TLS: it pins no controller root".into(),
        )),
    }
}

/// This proxy's sealing keys, as `GET /api/v1/seal` answers them (public keys and ids only).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SealView {
    /// The current key, published in the signed directory.
    pub key: crate::trust::seal::SealPublic,
    pub id: String,
    /// When it was made, RFC 3339.
    pub made: String,
    /// When it is rotated next, RFC 3339.
    pub rotates: String,
    /// The ids of the retired keys that still open what was sealed to them.
    pub retired: Vec<String>,
    /// Whom this proxy seals for, with which key id, as its applied directory says.
    pub members: std::collections::BTreeMap<String, String>,
}

fn seal_view(state: &ProxyState) -> SealView {
    let keys = state.hops.seal_keys();
    let (key, made_ms) = keys.current();
    SealView {
        key,
        id: key.id(),
        made: crate::wire::rfc3339_ms(made_ms),
        rotates: crate::wire::rfc3339_ms(
            made_ms.saturating_add(crate::proxy::controller_link::SEAL_ROTATE_AFTER_MS),
        ),
        retired: keys.retired(),
        members: state
            .published
            .borrow()
            .directory
            .users
            .values()
            .filter_map(|u| Some((u.name.clone(), u.seal?.id())))
            .collect(),
    }
}

/// # GET /api/v1/seal
/// This proxy's sealing key (public half and id), when it rotates, and the retired keys kept.
pub(super) async fn seal_status(state: web::Data<ProxyState>) -> HttpResponse {
    HttpResponse::Ok().json(seal_view(&state))
}

/// # POST /api/v1/seal/rotate
/// Replaces the sealing key now (the old one still opens what was sealed to it for three days)
/// and registers the new one; answers as `GET /api/v1/seal`. 409 without a controller (nobody
/// would learn of the new key).
pub(super) async fn rotate_seal(state: web::Data<ProxyState>) -> Result<HttpResponse, ProxyError> {
    let link = state.controller.as_ref().ok_or_else(|| {
        ProxyError::Conflict(
            "this proxy follows no controller (no pinned root): a new sealing key would reach \
             nobody"
                .into(),
        )
    })?;
    link.send(crate::proxy::controller_link::RotateSeal)
        .await
        .map_err(ProxyError::unavailable)?
        .map_err(ProxyError::Conflict)?;
    Ok(HttpResponse::Ok().json(seal_view(&state)))
}

/// # GET /api/v1/directory
/// Who the own peer can reach: persons (with liveness when known) and AI endpoints.
pub(super) async fn directory(state: web::Data<ProxyState>) -> Result<HttpResponse, ProxyError> {
    Ok(HttpResponse::Ok().json(ask(&state.router, ListDirectory).await?))
}

/// # POST /api/v1/forget
/// The own peer cleared a chat: `{"with": NAME}` forgets the AI memory of the conversation with
/// NAME, `{"all": true}` every conversation's, so the next message starts a fresh context.
/// Anything else (`{}`, `[]`, `{"all": false}`, both fields, an unknown field) is a 400 naming
/// what is wrong, and forgets nothing: "all" is never a default. Legacy success.
pub(super) async fn forget(
    state: web::Data<ProxyState>,
    body: web::Json<Forget>,
) -> Result<HttpResponse, ProxyError> {
    let body = body.into_inner();
    let scope = body.scope().map_err(ProxyError::BadRequest)?;
    let partner = match scope {
        Some(name) => {
            let name = InstanceName::parse(name.trim()).map_err(|e| {
                ProxyError::BadRequest(format!("`with` must name a chat partner: {e}"))
            })?;
            Some(name.to_string())
        }
        None => None,
    };
    let what = match &partner {
        Some(name) => format!("the conversation with {name}"),
        None => "every conversation".to_string(),
    };
    let forgotten = ask(&state.desk, ForgetConversation { with: partner }).await??;
    Ok(HttpResponse::Ok().json(success(Note {
        message: format!("Forgot {what} ({forgotten} remembered turns)"),
    })))
}

/// The AI endpoint a stop or regenerate names: a valid name, or a 400 saying so.
fn reply_of(body: AiReplyOf) -> Result<String, ProxyError> {
    InstanceName::parse(body.with.trim())
        .map(|n| n.to_string())
        .map_err(|e| ProxyError::BadRequest(format!("`with` must name an AI endpoint: {e}")))
}

/// # POST /api/v1/ai/stop
/// `{"with": NAME}`: stops the reply AI endpoint NAME is writing to the own user; its call
/// upstream is dropped, and what had been shown arrives as the reply, marked as stopped.
/// `{"stopped": false}` when none was being written (it may have just ended).
pub(super) async fn stop_reply(
    state: web::Data<ProxyState>,
    body: web::Json<AiReplyOf>,
) -> Result<HttpResponse, ProxyError> {
    let with = reply_of(body.into_inner())?;
    let stopped = ask(&state.desk, StopReply { with: with.clone() }).await?;
    let message = if stopped {
        format!("The reply of {with} is stopped")
    } else {
        format!("{with} was not writing a reply")
    };
    Ok(HttpResponse::Ok().json(StopAnswer { stopped, message }))
}

/// # POST /api/v1/ai/regenerate
/// `{"with": NAME}`: takes back AI endpoint NAME's last answer (its memory forgets it) and
/// asks again; 202 once asked. The new answer streams and arrives like any reply. 404 for a
/// name that is not an AI endpoint, 409 while it is writing or with nothing to answer.
pub(super) async fn regenerate(
    state: web::Data<ProxyState>,
    body: web::Json<AiReplyOf>,
) -> Result<HttpResponse, ProxyError> {
    let with = reply_of(body.into_inner())?;
    let message = ask(&state.desk, Regenerate { with }).await??;
    Ok(HttpResponse::Accepted().json(Note { message }))
}

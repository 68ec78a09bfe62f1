//! The peer's one error type, and its mapping to HTTP status and the original's JSON shapes.
//!
//! Owns: which status each failure gets and how its body looks. The legacy peer routes answer
//! the original's peer shape `{"status":"failed","error":...}` ([`PeerError`] itself); the native
//! `/api/v1/*` routes answer the proxy's shape `{"status":"error","message":...}` (through
//! [`NativeError`]). Nothing else in the role builds an error body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::wire::legacy::{ErrorBody, FailedBody};

/// Everything that can go wrong in the peer, as the user should read it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Required fields of a request are missing or empty.
    #[error("Missing required fields: {}", .0.join(", "))]
    MissingFields(Vec<&'static str>),
    /// A field is present but unusable (bad name, bad id...).
    #[error("{0}")]
    Invalid(String),
    /// The message text is over `max_message_bytes`.
    #[error("message is {bytes} bytes; the limit is {limit} bytes")]
    MessageTooLarge { bytes: usize, limit: usize },
    /// The request body is over `max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A receipt named a message this peer does not have.
    #[error("Unknown message: {0}")]
    UnknownMessage(String),
    /// The proxy could not be reached (down, timeout, connection refused).
    #[error("proxy unreachable: {0}")]
    ProxyUnreachable(String),
    /// The proxy could not take our message now; it is kept and handed over again later.
    #[error("not sent yet: {reason}; kept; will be sent when your proxy is back")]
    NotSentYet { reason: String },
    /// The proxy answered, and refused.
    #[error("{reason}")]
    ProxyRefused { status: u16, reason: String },
    /// A chat was cleared here, but the proxy could not forget the AI's memory of it (an AI
    /// may still answer from the old conversation): `cleared` says what was cleared.
    #[error(
        "{cleared}, but your proxy could not forget the AI's memory of it ({reason}); \
         clear it again once your proxy is back"
    )]
    NotForgotten { cleared: String, reason: String },
    /// redb failed; the operation did not happen.
    #[error("storage error: {0}")]
    Storage(String),
    /// An actor of this peer is gone (shutting down).
    #[error("peer is shutting down: {0}")]
    Unavailable(String),
}

impl PeerError {
    pub fn storage(e: impl std::fmt::Display) -> Self {
        PeerError::Storage(e.to_string())
    }
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        PeerError::Unavailable(e.to_string())
    }
    /// The failure as the reason kept on a failed message.
    pub fn reason(&self) -> String {
        self.to_string()
    }
    /// A failure of the proxy hop that may pass (unreachable, busy, its own 5xx, shutting
    /// down), as opposed to a refusal for good (its 4xx: unknown peer, too large...).
    pub fn is_transient(&self) -> bool {
        match self {
            PeerError::ProxyUnreachable(_) | PeerError::Unavailable(_) => true,
            PeerError::ProxyRefused { status, .. } => {
                StatusCode::from_u16(*status).is_ok_and(crate::hop::post::is_transient)
            }
            _ => false,
        }
    }
}

impl From<actix::MailboxError> for PeerError {
    fn from(e: actix::MailboxError) -> Self {
        PeerError::unavailable(e)
    }
}

impl ResponseError for PeerError {
    fn status_code(&self) -> StatusCode {
        match self {
            PeerError::MissingFields(_) | PeerError::Invalid(_) => StatusCode::BAD_REQUEST,
            PeerError::MessageTooLarge { .. } | PeerError::BodyTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            PeerError::UnknownMessage(_) => StatusCode::NOT_FOUND,
            PeerError::ProxyUnreachable(_)
            | PeerError::NotSentYet { .. }
            | PeerError::NotForgotten { .. } => StatusCode::BAD_GATEWAY,
            // The proxy's own 4xx is passed on (404 unknown peer, 413 too large...); its 5xx
            // means the hop after us failed: a gateway error from here.
            PeerError::ProxyRefused { status, .. } => StatusCode::from_u16(*status)
                .ok()
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            PeerError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PeerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// compat: the original peer's error shape, `{"status":"failed","error":...}`.
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(FailedBody::new(self.to_string()))
    }
}

/// A [`PeerError`] answered on a native `/api/v1/*` route, in the proxy's shape
/// `{"status":"error","message":...}`.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NativeError(#[from] pub PeerError);

impl ResponseError for NativeError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody::new(self.0.to_string()))
    }
}

impl From<crate::storage::StorageError> for PeerError {
    fn from(e: crate::storage::StorageError) -> Self {
        match e {
            crate::storage::StorageError::Failed(why) => PeerError::Storage(why),
            crate::storage::StorageError::Closed(why) => PeerError::Unavailable(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_are_named_in_the_legacy_shape() {
        let e = PeerError::MissingFields(vec!["peer_id", "message"]);
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), "Missing required fields: peer_id, message");
    }

    #[test]
    fn a_proxy_refusal_keeps_its_client_status_and_turns_5xx_into_502() {
        let refused = |status| PeerError::ProxyRefused {
            status,
            reason: "x".into(),
        };
        assert_eq!(refused(404).status_code(), StatusCode::NOT_FOUND);
        assert_eq!(refused(413).status_code(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(refused(500).status_code(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            PeerError::ProxyUnreachable("down".into()).status_code(),
            StatusCode::BAD_GATEWAY
        );
    }
}

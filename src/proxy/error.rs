//! The proxy's one error type, and its mapping to HTTP status and the original's JSON error
//! shape (`{"status":"error","message":...}`), in one place. No I/O here.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::wire::legacy::ErrorBody;

/// The field of a [`ProxyError::Stale`] answer that names the last number taken.
pub const STALE_FIELD: &str = "last_seq";

/// Everything a proxy request or actor can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// compat: the original's 404 `Unknown peer: X`.
    #[error("Unknown peer: {0}")]
    UnknownPeer(String),
    /// No such route, or no such thing (e.g. an AI endpoint to regenerate).
    #[error("{0}")]
    NotFound(String),
    /// A peer tried to send in someone else's name.
    #[error("{0}")]
    Forbidden(String),
    /// A body or message text above the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// A malformed or incomplete request; the message names what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The outbox store could not be read or written.
    #[error("storage error: {0}")]
    Storage(String),
    /// An actor of the proxy is gone (the proxy is shutting down).
    #[error("the proxy is shutting down: {0}")]
    Unavailable(String),
    /// A destination's queue is at its limit: retry later.
    #[error("{0}")]
    QueueFull(String),
    /// Another proxy's request is not signed, or its signature does not hold (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Refused because of what this proxy holds already: 409.
    #[error("{0}")]
    Conflict(String),
    /// A relayed message numbered `seq`, not above `last`, the last this proxy took of its
    /// sequence: 409, with `last_seq` in the answer (a sender whose numbers went back, say its
    /// clock did across a restart, numbers above it and tries again).
    #[error("{message}")]
    Stale { message: String, last: u64 },
    /// Not now, for a reason that passes (starting, a directory not yet up to date, a clock
    /// apart): 503, and the sender tries again.
    #[error("{0}")]
    Retry(String),
}

impl ProxyError {
    /// The answer's body: the original's error shape (with the last number taken, for
    /// [`ProxyError::Stale`]).
    pub fn body_json(&self) -> String {
        self.body_value().to_string()
    }

    /// [`ProxyError::body_json`], as a JSON value.
    pub fn body_value(&self) -> serde_json::Value {
        match self {
            ProxyError::Stale { message, last } => serde_json::json!({
                "status": "error",
                "message": message,
                STALE_FIELD: last,
            }),
            _ => serde_json::json!(ErrorBody::new(self.to_string())),
        }
    }

    pub fn storage(e: impl std::fmt::Display) -> Self {
        ProxyError::Storage(e.to_string())
    }
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        ProxyError::Unavailable(e.to_string())
    }
}

impl ResponseError for ProxyError {
    fn status_code(&self) -> StatusCode {
        match self {
            ProxyError::UnknownPeer(_) | ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Unavailable(_) | ProxyError::QueueFull(_) | ProxyError::Retry(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Conflict(_) | ProxyError::Stale { .. } => StatusCode::CONFLICT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .content_type("application/json")
            .body(self.body_json())
    }
}

impl From<crate::storage::StorageError> for ProxyError {
    fn from(e: crate::storage::StorageError) -> Self {
        match e {
            crate::storage::StorageError::Failed(why) => ProxyError::Storage(why),
            crate::storage::StorageError::Closed(why) => ProxyError::Unavailable(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_peer_is_the_originals_404() {
        let e = ProxyError::UnknownPeer("zed".into());
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(e.to_string(), "Unknown peer: zed");
    }
}

//! The relay's one error type and its HTTP status, answered in the original's JSON error shape
//! (`{"status":"error","message":...}`). Every refusal says who or what was wrong and what the
//! caller can do; none quotes a body it carries.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::wire::legacy::ErrorBody;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// A malformed request (header, body, target).
    #[error("{0}")]
    BadRequest(String),
    /// No valid proof of a key the signed directory lists (or a stale or reused nonce).
    #[error("{0}")]
    Unauthenticated(String),
    /// A key the relay will not serve: revoked, another relay's, or flagged as cloned.
    #[error("{0}")]
    Forbidden(String),
    /// The receiver is not attached to this relay now (DERP's "peer gone"): try later.
    #[error("{0}")]
    NotHere(String),
    /// Too many requests from this address, or a full queue: dropped, try later.
    #[error("{0}")]
    TooMany(String),
    /// The receiver did not answer in time: its answer may still come; send again.
    #[error("{0}")]
    NoAnswer(String),
    /// The body is larger than the relay carries.
    #[error("{0}")]
    TooLarge(String),
    /// The body did not come in time.
    #[error("{0}")]
    Timeout(String),
    /// The relay is starting or stopping.
    #[error("{0}")]
    Unavailable(String),
}

impl ResponseError for RelayError {
    fn status_code(&self) -> StatusCode {
        match self {
            RelayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RelayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            RelayError::Forbidden(_) => StatusCode::FORBIDDEN,
            // 503, not 404: a sender must not read "not attached now" as "no such route".
            RelayError::NotHere(_) | RelayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            RelayError::NoAnswer(_) => StatusCode::GATEWAY_TIMEOUT,
            RelayError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody::new(self.to_string()))
    }
}

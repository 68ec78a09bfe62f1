//! The controller's one error type, and the one place it is turned into an HTTP answer in the
//! original's shape (`{"status":"error","message":...}`).
//!
//! Owns status codes and wording; it must not decide *when* an error happens (routes and the
//! registry do that).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::wire::legacy::{ErrorBody, Status};

/// The message every refused secret carries: keys never enter the controller.
pub const KEY_HINT: &str =
    "put the key in an environment variable and name it in api_key_env (keys never go into tables)";

/// Everything a controller request can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControllerError {
    /// compat: the original's 400 `Missing required fields`; `fields` names them (ours, additive).
    #[error("Missing required fields")]
    MissingFields { fields: Vec<&'static str> },
    /// The body or a query is not what the route expects (not JSON, wrong types, not UTF-8).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// compat: the original's 404 `Unknown proxy`.
    #[error("Unknown proxy")]
    UnknownProxy { proxy_id: String },
    /// An endpoint-table edit that would leave an invalid table; nothing was changed.
    #[error("invalid endpoint table: {0}")]
    InvalidEdit(String),
    /// An edit naming fields that no endpoint has (neither the original's nor ours); nothing
    /// was changed. `fields` are paths such as `BOT.model_config.colour`.
    /// Fields no endpoint has; the message names them and what an endpoint has (see
    /// `tables::unknown_fields`).
    #[error("{0}")]
    UnknownFields(String),
    /// An edit that would put a secret into a table; nothing was changed.
    #[error("{what} looks like a secret; {KEY_HINT}")]
    SecretInTable { what: String },
    /// No route for this method and path.
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    /// The path exists, the method does not.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// No credential, or a wrong one, on a route that needs one (the admin API).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated or not, this is not allowed: a name pinned to another key, a used or
    /// expired token, a revoked key, a bad proof. The message says which and what to do.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts from this source; try again after `retry_after_secs`.
    #[error("too many attempts from {source_addr}; try again in {retry_after_secs} s")]
    TooManyRequests {
        source_addr: String,
        retry_after_secs: u64,
    },
    /// The controller's store failed; nothing was answered as success.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The registry did not answer (it is stopping).
    #[error("the controller is shutting down: {0}")]
    Unavailable(String),
}

impl From<actix::MailboxError> for ControllerError {
    fn from(e: actix::MailboxError) -> Self {
        ControllerError::Unavailable(e.to_string())
    }
}

/// `ErrorBody` plus the names of the missing fields, for `MissingFields`.
#[derive(Serialize)]
struct MissingBody<'a> {
    status: Status,
    message: String,
    missing: &'a [&'static str],
}

impl ResponseError for ControllerError {
    fn status_code(&self) -> StatusCode {
        match self {
            ControllerError::MissingFields { .. }
            | ControllerError::BadRequest(_)
            | ControllerError::InvalidEdit(_)
            | ControllerError::UnknownFields(_)
            | ControllerError::SecretInTable { .. } => StatusCode::BAD_REQUEST,
            ControllerError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ControllerError::UnknownProxy { .. } | ControllerError::NoRoute { .. } => {
                StatusCode::NOT_FOUND
            }
            ControllerError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ControllerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ControllerError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControllerError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ControllerError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ControllerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ControllerError::MissingFields { fields } => res.json(MissingBody {
                status: Status::Error,
                message: self.to_string(),
                missing: fields,
            }),
            ControllerError::TooManyRequests {
                retry_after_secs, ..
            } => res
                .insert_header(("Retry-After", retry_after_secs.to_string()))
                .json(ErrorBody::new(self.to_string())),
            ControllerError::Unauthorized(_) => res
                .insert_header(("WWW-Authenticate", "Bearer realm=\"overlay admin\""))
                .json(ErrorBody::new(self.to_string())),
            _ => res.json(ErrorBody::new(self.to_string())),
        }
    }
}

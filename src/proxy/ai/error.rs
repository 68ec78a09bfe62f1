//! What can go wrong when asking an AI endpoint, as messages a user can act on.
//!
//! Owns [`AiError`] (its `Display` is the text shown in the conversation, from that endpoint,
//! marked as an error), the reading of each provider's error bodies ([`ProviderError`]), and the
//! classification of an HTTP failure into an error plus a retry decision ([`classify_status`]).
//! It never contains a key: every provider-sourced text goes through [`super::keys::redact`].

use std::time::Duration;

use actix_web::http::header::{HeaderMap, HttpDate};
use actix_web::http::StatusCode;
use serde::Deserialize;

use crate::config::Provider;
use crate::hop::post::is_transient;

use super::keys::{redact, ApiKey, KeyError};

/// Which time limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Opening the connection (DNS, TCP, TLS).
    Connect,
    /// From sending the request to the first token of the reply.
    FirstToken,
    /// Silence while the reply was streaming.
    Idle,
    /// The whole call, retries included.
    Total,
}

/// Why a reply could not be produced. `Display` is the message the user sees.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    #[error("No API key for {provider}: {var} is not set where this proxy runs. Start the proxy again with {var} set in its environment (or give the endpoint an api_key_file), then send the message again.")]
    MissingKey { provider: &'static str, var: String },
    #[error("Cannot read the API key file {path}: {reason}.")]
    KeyFile { path: String, reason: String },
    #[error("This AI endpoint is misconfigured: {detail}")]
    Config { detail: String },
    #[error("There is no message to answer: the conversation has no text from a person.")]
    NothingToAnswer,
    #[error("{provider} refused the API key (HTTP {status}): {detail}. Check {key_source}.")]
    Unauthorized {
        provider: &'static str,
        status: u16,
        detail: String,
        key_source: String,
    },
    #[error("{provider} denied access (HTTP 403): {detail}. The key may lack access to this model, or the region may not be served.")]
    Forbidden {
        provider: &'static str,
        detail: String,
    },
    #[error("{provider} is rate limiting this key (HTTP 429){}: {detail}. Try again in a moment.", attempts_note(*.attempts))]
    RateLimited {
        provider: &'static str,
        attempts: u32,
        detail: String,
    },
    #[error("{provider} is overloaded (HTTP {status}){}: {detail}. Try again in a moment.", attempts_note(*.attempts))]
    Overloaded {
        provider: &'static str,
        status: u16,
        attempts: u32,
        detail: String,
    },
    #[error("{provider} says the quota or billing limit of this key is used up: {detail}. Retrying will not help until the plan or quota is raised.")]
    Quota {
        provider: &'static str,
        detail: String,
    },
    #[error("{provider} rejected the request (HTTP {status}): {detail}")]
    Rejected {
        provider: &'static str,
        status: u16,
        detail: String,
    },
    #[error("{provider} failed (HTTP {status}){}: {detail}", attempts_note(*.attempts))]
    Server {
        provider: &'static str,
        status: u16,
        attempts: u32,
        detail: String,
    },
    #[error("{provider} could not be reached at {host}{}: {reason}", attempts_note(*.attempts))]
    Unreachable {
        provider: &'static str,
        host: String,
        attempts: u32,
        reason: String,
    },
    #[error("{}", timeout_message(provider, *.kind, *.after, partial))]
    Timeout {
        provider: &'static str,
        kind: TimeoutKind,
        after: Duration,
        /// Text that had arrived before the time ran out.
        partial: String,
    },
    #[error("{provider} blocked this reply for safety reasons ({reason}).")]
    Blocked {
        provider: &'static str,
        reason: String,
        /// Text that had arrived before the block.
        partial: String,
    },
    #[error("{provider} sent an empty reply ({why}).")]
    Empty { provider: &'static str, why: String },
    #[error("{provider}'s reply broke off: {reason}.")]
    BrokeOff {
        provider: &'static str,
        reason: String,
        /// Text that had arrived before it broke off.
        partial: String,
    },
    #[error("{provider} sent a reply this proxy cannot read: {detail}")]
    Protocol {
        provider: &'static str,
        detail: String,
    },
    /// The user stopped the reply: the call was dropped (its connection closed) wherever it was.
    #[error("The reply was stopped before it was complete.")]
    Stopped,
}

impl AiError {
    /// Text of the reply that had already arrived (and was streamed) before the failure.
    pub fn partial_text(&self) -> &str {
        match self {
            AiError::Timeout { partial, .. }
            | AiError::Blocked { partial, .. }
            | AiError::BrokeOff { partial, .. } => partial,
            _ => "",
        }
    }

    /// This error with the key (and key-shaped words) redacted out of its partial reply.
    pub fn redacted(mut self, key: Option<&super::keys::ApiKey>) -> AiError {
        if let AiError::Timeout { partial, .. }
        | AiError::Blocked { partial, .. }
        | AiError::BrokeOff { partial, .. } = &mut self
        {
            *partial = super::keys::redact(partial, key);
        }
        self
    }
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

fn timeout_message(provider: &str, kind: TimeoutKind, after: Duration, partial: &str) -> String {
    let d = humantime::format_duration(after);
    let what = match kind {
        TimeoutKind::Connect => format!("could not connect within {d} (connect timeout)"),
        TimeoutKind::FirstToken => format!("no reply started within {d} (first-token timeout)"),
        TimeoutKind::Idle => format!("no data arrived for {d} (idle timeout)"),
        TimeoutKind::Total => format!("the reply took longer than {d} (total timeout)"),
    };
    if partial.is_empty() {
        format!("{provider} did not answer in time: {what}.")
    } else {
        format!("{provider}'s reply broke off: {what}.")
    }
}

/// An error as a provider reports it, in any of the native shapes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderError {
    pub message: String,
    /// `type` (OpenAI, Anthropic, Mistral) or `status` (Gemini).
    pub kind: Option<String>,
    pub code: Option<String>,
}

#[derive(Deserialize)]
struct AnyErrorBody {
    error: Option<serde_json::Value>,
    message: Option<serde_json::Value>,
    detail: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// FastAPI-style validation details (`[{"msg","loc"}]`) as one line.
fn detail_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| {
                    let msg = i.get("msg").and_then(scalar).unwrap_or_default();
                    let loc = i
                        .get("loc")
                        .and_then(|l| l.as_array())
                        .map(|l| l.iter().filter_map(scalar).collect::<Vec<_>>().join("."))
                        .unwrap_or_default();
                    if loc.is_empty() {
                        msg
                    } else {
                        format!("{loc}: {msg}")
                    }
                })
                .collect();
            Some(parts.join("; "))
        }
        serde_json::Value::Object(o) => o.get("detail").and_then(detail_text),
        _ => None,
    }
}

impl ProviderError {
    /// Reads an error from a JSON value with a top-level `error` (or the shapes Mistral uses).
    pub fn from_value(v: serde_json::Value) -> ProviderError {
        let body: AnyErrorBody = match serde_json::from_value(v) {
            Ok(b) => b,
            Err(_) => return ProviderError::default(),
        };
        let mut out = ProviderError {
            kind: body.kind.as_ref().and_then(scalar),
            code: body.code.as_ref().and_then(scalar),
            ..ProviderError::default()
        };
        match &body.error {
            Some(serde_json::Value::Object(e)) => {
                out.message = e.get("message").and_then(detail_text).unwrap_or_default();
                out.kind = e
                    .get("type")
                    .and_then(scalar)
                    .or_else(|| e.get("status").and_then(scalar))
                    .or(out.kind);
                out.code = e.get("code").and_then(scalar).or(out.code);
            }
            Some(other) => out.message = scalar(other).unwrap_or_default(),
            None => {}
        }
        if out.message.is_empty() {
            out.message = body
                .message
                .as_ref()
                .and_then(detail_text)
                .or_else(|| body.detail.as_ref().and_then(detail_text))
                .unwrap_or_default();
        }
        out
    }

    /// Reads an error body: JSON in any native shape, else its text.
    pub fn from_body(body: &[u8]) -> ProviderError {
        let text = String::from_utf8_lossy(body);
        let trimmed = text.trim();
        // Gemini's non-SSE stream wraps errors in an array.
        let json = serde_json::from_str::<serde_json::Value>(trimmed)
            .ok()
            .map(|v| match v {
                serde_json::Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
                v => v,
            });
        let mut e = json.map(ProviderError::from_value).unwrap_or_default();
        if e.message.is_empty() {
            e.message = trimmed.chars().take(300).collect();
        }
        e
    }

    /// The message, scrubbed of keys and cut to a readable length.
    pub fn shown(&self, key: Option<&ApiKey>, status: Option<StatusCode>) -> String {
        let mut m = if self.message.trim().is_empty() {
            status
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no details given")
                .to_string()
        } else {
            self.message.trim().to_string()
        };
        if m.chars().count() > 400 {
            m = m.chars().take(400).collect::<String>() + "…";
        }
        let m = redact(&m, key);
        m.trim_end_matches('.').to_string()
    }

    fn is_quota(&self, provider: Provider) -> bool {
        let has = |s: &Option<String>, what: &str| s.as_deref() == Some(what);
        has(&self.code, "insufficient_quota")
            || has(&self.kind, "insufficient_quota")
            || has(&self.kind, "billing_error")
            || provider.spec().says_quota(&self.message)
    }

    /// The HTTP status an error inside a 200 stream stands for (Anthropic's `error.type`).
    pub fn implied_status(&self) -> Option<StatusCode> {
        let code = match self.kind.as_deref()? {
            "overloaded_error" => 529,
            "rate_limit_error" | "rate_limit_exceeded" | "RESOURCE_EXHAUSTED" => 429,
            "api_error" | "server_error" | "INTERNAL" => 500,
            "timeout_error" | "DEADLINE_EXCEEDED" => 504,
            "UNAVAILABLE" => 503,
            "authentication_error" => 401,
            "permission_error" | "PERMISSION_DENIED" => 403,
            "billing_error" => 402,
            "invalid_request_error" | "INVALID_ARGUMENT" => 400,
            _ => return None,
        };
        StatusCode::from_u16(code).ok()
    }
}

/// Whether and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Never,
    /// Exponential backoff.
    Backoff,
    /// After the delay the provider asked for.
    After(Duration),
}

/// A failed attempt: the error the user would see, and whether another attempt may help.
#[derive(Debug)]
pub struct Failure {
    pub error: AiError,
    pub retry: Retry,
}

/// What the provider asked us to wait: `retry-after-ms`, else `retry-after` (seconds or HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let v = get("retry-after")?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let date: HttpDate = v.parse().ok()?;
    let at: std::time::SystemTime = date.into();
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Everything needed to turn one failed HTTP answer into a [`Failure`].
pub struct StatusFailure<'a> {
    pub provider: Provider,
    pub status: StatusCode,
    pub headers: Option<&'a HeaderMap>,
    pub error: ProviderError,
    pub key: Option<&'a ApiKey>,
    pub key_source: String,
}

/// Classifies a failed answer (an HTTP error, or an error event before the first token).
pub fn classify_status(f: StatusFailure<'_>) -> Failure {
    let spec = f.provider.spec();
    let provider = spec.label;
    let status = f.status.as_u16();
    let detail = f.error.shown(f.key, Some(f.status));
    let asked = f.headers.and_then(retry_after);
    let should_retry = f
        .headers
        .and_then(|h| h.get("x-should-retry"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("true"));
    let transient = |retry_default: bool| -> Retry {
        match (should_retry, retry_default) {
            (Some(false), _) | (None, false) => Retry::Never,
            _ => match asked {
                Some(d) => Retry::After(d),
                None => Retry::Backoff,
            },
        }
    };
    let quota = f.error.is_quota(f.provider) || status == 402;
    let (error, retry) = match status {
        _ if quota => (AiError::Quota { provider, detail }, Retry::Never),
        300..=399 => {
            // Redirects are not followed: one could carry the key to another host.
            let to = f
                .headers
                .and_then(|h| h.get("location"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("another address");
            (
                AiError::Rejected {
                    provider,
                    status,
                    detail: format!(
                        "it redirects to {to}; set the endpoint's base_url to the address it names"
                    ),
                },
                Retry::Never,
            )
        }
        401 => {
            let detail = match spec.unauthorized_hint {
                Some(hint) => format!("{detail} ({hint})"),
                None => detail,
            };
            (
                AiError::Unauthorized {
                    provider,
                    status,
                    detail,
                    key_source: f.key_source,
                },
                Retry::Never,
            )
        }
        403 => (AiError::Forbidden { provider, detail }, Retry::Never),
        429 => (
            AiError::RateLimited {
                provider,
                attempts: 1,
                detail,
            },
            transient(true),
        ),
        503 | 529 => (
            AiError::Overloaded {
                provider,
                status,
                attempts: 1,
                detail,
            },
            transient(true),
        ),
        // The hops' rule (408, 429, 5xx), and 409: a provider's lock timeout, retried by its SDKs.
        _ if is_transient(f.status) || status == 409 => (
            AiError::Server {
                provider,
                status,
                attempts: 1,
                detail,
            },
            transient(true),
        ),
        _ => (
            AiError::Rejected {
                provider,
                status,
                detail,
            },
            transient(false),
        ),
    };
    Failure { error, retry }
}

impl From<KeyError> for AiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Missing { provider, var } => AiError::MissingKey { provider, var },
            KeyError::File { path, reason } => AiError::KeyFile { path, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_reply_reads_right_for_every_provider_label() {
        let broke = |provider| AiError::BrokeOff {
            provider,
            reason: "the connection closed".into(),
            partial: "Hel".into(),
        };
        assert_eq!(
            broke("The AI server").to_string(),
            "The AI server's reply broke off: the connection closed."
        );
        assert_eq!(
            broke("OpenAI").to_string(),
            "OpenAI's reply broke off: the connection closed."
        );
        let missing = AiError::MissingKey {
            provider: "OpenAI",
            var: "OPENAI_API_KEY".into(),
        }
        .to_string();
        assert!(
            missing.contains("Start the proxy again with OPENAI_API_KEY set"),
            "{missing}"
        );
    }
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn classify(provider: Provider, status: u16, h: &HeaderMap, body: &str) -> Failure {
        classify_status(StatusFailure {
            provider,
            status: StatusCode::from_u16(status).unwrap(),
            headers: Some(h),
            error: ProviderError::from_body(body.as_bytes()),
            key: None,
            key_source: "the environment variable K of this proxy".into(),
        })
    }

    #[test]
    fn every_native_error_shape_yields_its_message() {
        let openai = ProviderError::from_body(
            br#"{"error":{"message":"Bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert_eq!(openai.message, "Bad key");
        assert_eq!(openai.code.as_deref(), Some("invalid_api_key"));
        let anthropic = ProviderError::from_body(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"r"}"#,
        );
        assert_eq!(
            (anthropic.message.as_str(), anthropic.kind.as_deref()),
            ("Overloaded", Some("overloaded_error"))
        );
        let gemini = ProviderError::from_body(
            b"{\n \"error\": {\"code\": 429, \"message\": \"Quota\", \"status\": \"RESOURCE_EXHAUSTED\"}\n}",
        );
        assert_eq!(gemini.kind.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(gemini.code.as_deref(), Some("429"));
        let mistral_422 = ProviderError::from_body(
            br#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]},"type":"invalid_request_error"}"#,
        );
        assert_eq!(
            mistral_422.message,
            "body.stream_options: Extra inputs are not permitted"
        );
        let bare = ProviderError::from_body(br#"{"message":"Requests rate limit exceeded"}"#);
        assert_eq!(bare.message, "Requests rate limit exceeded");
        let detail = ProviderError::from_body(br#"{"detail":"Unauthorized"}"#);
        assert_eq!(detail.message, "Unauthorized");
        let text = ProviderError::from_body(b"upstream connect error");
        assert_eq!(text.message, "upstream connect error");
    }

    #[test]
    fn a_redirect_is_not_followed_and_says_where_to_point_the_endpoint() {
        let f = classify(
            Provider::Openai,
            301,
            &headers(&[("location", "https://api.example.com/v2/chat/completions")]),
            "",
        );
        assert_eq!(f.retry, Retry::Never);
        assert!(
            f.error.to_string().contains(
                "redirects to https://api.example.com/v2/chat/completions; set the endpoint's base_url"
            ),
            "{}",
            f.error
        );
    }

    #[test]
    fn insufficient_quota_is_never_retried() {
        let f = classify(
            Provider::Openai,
            429,
            &headers(&[("retry-after", "1")]),
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert!(matches!(f.error, AiError::Quota { .. }), "{:?}", f.error);
        assert_eq!(f.retry, Retry::Never);
    }

    #[test]
    fn a_rate_limit_is_retried_after_the_delay_asked_for() {
        let f = classify(
            Provider::Anthropic,
            429,
            &headers(&[("retry-after-ms", "250"), ("retry-after", "3")]),
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        );
        assert_eq!(f.retry, Retry::After(Duration::from_millis(250)));
        let f = classify(
            Provider::Openai,
            429,
            &headers(&[("retry-after", "2")]),
            "{}",
        );
        assert_eq!(f.retry, Retry::After(Duration::from_secs(2)));
        assert!(f.error.to_string().contains("HTTP 429"), "{}", f.error);
    }

    #[test]
    fn x_should_retry_false_overrides_the_status() {
        let f = classify(
            Provider::Anthropic,
            529,
            &headers(&[("x-should-retry", "false")]),
            "{}",
        );
        assert_eq!(f.retry, Retry::Never);
        assert!(matches!(f.error, AiError::Overloaded { .. }));
    }

    #[test]
    fn client_errors_are_not_retried_and_say_what_was_wrong() {
        let f = classify(
            Provider::Openai,
            400,
            &HeaderMap::new(),
            r#"{"error":{"message":"Unsupported parameter: 'max_tokens'","type":"invalid_request_error"}}"#,
        );
        assert_eq!(f.retry, Retry::Never);
        assert_eq!(
            f.error.to_string(),
            "OpenAI rejected the request (HTTP 400): Unsupported parameter: 'max_tokens'"
        );
    }

    #[test]
    fn a_401_names_where_the_key_comes_from() {
        let f = classify(
            Provider::Gemini,
            401,
            &HeaderMap::new(),
            r#"{"error":{"code":401,"message":"API key not valid.","status":"UNAUTHENTICATED"}}"#,
        );
        assert_eq!(
            f.error.to_string(),
            "Gemini refused the API key (HTTP 401): API key not valid. Check the environment variable K of this proxy."
        );
    }

    #[test]
    fn a_gemini_daily_quota_is_terminal() {
        let f = classify(
            Provider::Gemini,
            429,
            &HeaderMap::new(),
            r#"{"error":{"code":429,"message":"Quota exceeded for metric generate_content_free_tier_requests, limit per day","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert!(matches!(f.error, AiError::Quota { .. }));
    }

    #[test]
    fn an_error_event_maps_to_the_status_it_stands_for() {
        let e = ProviderError::from_body(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(e.implied_status(), StatusCode::from_u16(529).ok());
    }

    #[test]
    fn a_timeout_after_some_text_says_the_reply_broke_off() {
        let e = AiError::Timeout {
            provider: "OpenAI",
            kind: TimeoutKind::Idle,
            after: Duration::from_secs(30),
            partial: "Hel".into(),
        };
        assert_eq!(
            e.to_string(),
            "OpenAI's reply broke off: no data arrived for 30s (idle timeout)."
        );
        assert_eq!(e.partial_text(), "Hel");
    }
}

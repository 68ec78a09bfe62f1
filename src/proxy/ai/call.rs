//! One question to an AI endpoint, over HTTP: the request with its auth header, the time limits
//! (connect, first token, idle, total), retries with backoff before the first token only, and
//! the answer read whole or streamed delta by delta.
//!
//! Owns the I/O of a call and nothing else: request bodies and answers are the provider
//! modules' pure functions, errors and retry decisions are [`super::error`]'s. Keys go only
//! into a request header marked sensitive; they never reach a log line or an error.

use std::time::Duration;

use actix_rt::time::{sleep, timeout, Instant};
use actix_web::http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_channel::mpsc::UnboundedSender;
use futures_util::StreamExt;

use crate::config::{ApiVersion, AuthStyle, WireFormat};

use super::error::{
    classify_status, AiError, Failure, ProviderError, Retry, StatusFailure, TimeoutKind,
};
use super::history::{self, Role, RoleMsg};
use super::keys::{redact, ApiKey, StreamRedactor};
use super::reply::{AiReply, Decoder, Outcome, StreamFault};
use super::target::Target;
use super::{anthropic, gemini, openai, Turn};
use crate::hop::backoff::{three_quarter_jitter_ms, XorShift};
use crate::hop::sse::SseParser;

/// Retries after the first attempt (before the first token only).
const MAX_RETRIES: u32 = 2;
/// First backoff delay when the provider names none; doubles per retry.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest backoff delay we choose ourselves.
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A provider asking for a longer wait than this is not retried: the user is told at once.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Largest answer body read (non-streamed), and largest error body.
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The pure functions of one wire format: the one place that picks a provider module.
struct Codec {
    request_body: fn(&Target, &[RoleMsg], bool) -> Vec<u8>,
    parse_response: fn(&[u8]) -> Result<Outcome, StreamFault>,
    stream_decoder: fn() -> Box<dyn Decoder>,
}

impl Codec {
    fn of(format: WireFormat) -> Codec {
        match format {
            WireFormat::OpenaiChat(_) => Codec {
                request_body: openai::request_body,
                parse_response: openai::parse_response,
                stream_decoder: || Box::<openai::StreamDecoder>::default(),
            },
            WireFormat::AnthropicChat => Codec {
                request_body: anthropic::request_body,
                parse_response: anthropic::parse_response,
                stream_decoder: || Box::<anthropic::StreamDecoder>::default(),
            },
            WireFormat::GeminiChat => Codec {
                // Whether it streams is in Gemini's URL, not its body.
                request_body: |t, msgs, _stream| gemini::request_body(t, msgs),
                parse_response: gemini::parse_response,
                stream_decoder: || Box::<gemini::StreamDecoder>::default(),
            },
        }
    }
}

/// `fut`'s output, or None when `deadline` passed first.
async fn timeout_at<F: std::future::Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    timeout(deadline.saturating_duration_since(Instant::now()), fut)
        .await
        .ok()
}

/// Asks `target` (the endpoint named `me`) for a reply to `history`.
pub async fn ask(
    client: awc::Client,
    me: String,
    target: Target,
    history: Vec<Turn>,
    deltas: Option<UnboundedSender<String>>,
) -> Result<AiReply, AiError> {
    let provider = target.provider.spec().label;
    let codec = Codec::of(target.provider.spec().format);
    let msgs = history::to_roles(&history, &me, &target.history);
    if !msgs.iter().any(|m| m.role == Role::User) {
        return Err(AiError::NothingToAnswer);
    }
    let key = if target.auth == AuthStyle::NoAuth {
        None
    } else {
        target.key.load(target.provider).await?
    };
    let stream = target.stream;
    let body = Bytes::from((codec.request_body)(&target, &msgs, stream));
    log::info!(
        "{me}: asking {provider} model {} ({} messages{})",
        target.model,
        msgs.len(),
        if stream { ", streamed" } else { "" }
    );
    let deadline = Instant::now() + target.timeouts.total;
    let call = Call {
        client: &client,
        target: &target,
        key: key.as_ref(),
        codec,
        body,
        deadline,
        deltas: deltas.as_ref(),
    };
    let mut attempts = 1;
    let mut retried_empty = false;
    loop {
        let failure = match call.attempt().await {
            Ok(outcome) => match outcome.into_reply(provider, target.max_tokens) {
                // An empty answer is worth one more try (nothing was shown yet).
                Err(AiError::Empty { .. }) if !retried_empty && Instant::now() < deadline => {
                    retried_empty = true;
                    attempts += 1;
                    log::warn!("{me}: {provider} sent an empty reply; asking once more");
                    continue;
                }
                Ok(mut reply) => {
                    // Issue 13, defect 11: a server that echoes the key (raw or encoded) in a
                    // reply does not get it onto the page, the memory or a log.
                    reply.text = redact(&reply.text, key.as_ref());
                    log::info!("{me}: {provider} replied ({} chars)", reply.text.len());
                    return Ok(reply);
                }
                Err(e) => {
                    let e = e.redacted(key.as_ref());
                    log::warn!("{me}: {e}");
                    return Err(e);
                }
            },
            Err(f) => Failure {
                error: f.error.redacted(key.as_ref()),
                ..f
            },
        };
        let delay = match failure.retry {
            Retry::Never => None,
            Retry::After(d) => Some(d),
            Retry::Backoff => Some(backoff(attempts)),
        };
        let fits = |d: &Duration| *d <= MAX_RETRY_AFTER && Instant::now() + *d < deadline;
        let mut error = with_attempts(failure.error, attempts);
        if let Retry::After(asked) = failure.retry {
            if !fits(&asked) {
                error = with_wait(error, asked);
            }
        }
        match delay.filter(|d| attempts <= MAX_RETRIES && fits(d)) {
            None => {
                log::warn!("{me}: {error}");
                return Err(error);
            }
            Some(d) => {
                log::warn!(
                    "{me}: attempt {attempts} failed ({error}); retrying in {}",
                    humantime::format_duration(d)
                );
                sleep(d).await;
                attempts += 1;
            }
        }
    }
}

/// Exponential backoff, three quarters to all of about 0.5 s, 1 s, 2 s… up to [`BACKOFF_MAX`]
/// (the hop toolkit's; a person is waiting, so never a retry at once).
fn backoff(attempt: u32) -> Duration {
    let max_ms = u64::try_from(BACKOFF_MAX.as_millis()).unwrap_or(u64::MAX);
    let start_ms = u64::try_from(BACKOFF_START.as_millis()).unwrap_or(max_ms);
    let mut rng = XorShift::from_entropy();
    Duration::from_millis(three_quarter_jitter_ms(attempt, start_ms, max_ms, &mut rng))
}

fn with_attempts(e: AiError, n: u32) -> AiError {
    match e {
        AiError::RateLimited {
            provider, detail, ..
        } => AiError::RateLimited {
            provider,
            attempts: n,
            detail,
        },
        AiError::Overloaded {
            provider,
            status,
            detail,
            ..
        } => AiError::Overloaded {
            provider,
            status,
            attempts: n,
            detail,
        },
        AiError::Server {
            provider,
            status,
            detail,
            ..
        } => AiError::Server {
            provider,
            status,
            attempts: n,
            detail,
        },
        AiError::Unreachable {
            provider,
            host,
            reason,
            ..
        } => AiError::Unreachable {
            provider,
            host,
            attempts: n,
            reason,
        },
        other => other,
    }
}

/// Adds the wait the provider asked for (too long to wait here) to the error's details.
fn with_wait(e: AiError, asked: Duration) -> AiError {
    let secs = Duration::from_secs(asked.as_secs().max(1));
    let note = |detail: String| {
        format!(
            "{detail} (it asks to wait {} before trying again)",
            humantime::format_duration(secs)
        )
    };
    match e {
        AiError::RateLimited {
            provider,
            attempts,
            detail,
        } => AiError::RateLimited {
            provider,
            attempts,
            detail: note(detail),
        },
        AiError::Overloaded {
            provider,
            status,
            attempts,
            detail,
        } => AiError::Overloaded {
            provider,
            status,
            attempts,
            detail: note(detail),
        },
        AiError::Server {
            provider,
            status,
            attempts,
            detail,
        } => AiError::Server {
            provider,
            status,
            attempts,
            detail: note(detail),
        },
        other => other,
    }
}

/// Everything one attempt needs; the same for every attempt of a call.
struct Call<'a> {
    client: &'a awc::Client,
    target: &'a Target,
    key: Option<&'a ApiKey>,
    codec: Codec,
    body: Bytes,
    deadline: Instant,
    deltas: Option<&'a UnboundedSender<String>>,
}

impl Call<'_> {
    fn provider(&self) -> &'static str {
        self.target.provider.spec().label
    }

    fn request(&self) -> Result<awc::ClientRequest, AiError> {
        let t = self.target;
        let spec = t.provider.spec();
        let bad = |detail: String| AiError::Config { detail };
        let url = if t.stream { &t.stream_url } else { &t.url };
        let mut req = self.client.post(url.as_str());
        let mut query = t.query.clone();
        if let Some((name, value)) = spec.format.stream_query().filter(|_| t.stream) {
            query.push((name.into(), value.into()));
        }
        if !query.is_empty() {
            req = req
                .query(&query)
                .map_err(|e| bad(format!("its `params` cannot form a URL query ({e})")))?;
        }
        req = req
            .insert_header((CONTENT_TYPE, "application/json"))
            .insert_header((
                ACCEPT,
                if t.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            ));
        for (name, value) in &t.extra_headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("`{name}` is not a valid header name")))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| bad(format!("the value of header `{name}` is not valid")))?;
            req = req.insert_header((n, v));
        }
        if let ApiVersion::Header { name, default } = spec.version {
            let version = t.api_version.as_deref().unwrap_or(default);
            let v = HeaderValue::from_str(version).map_err(|_| {
                bad(format!(
                    "api_version `{version}` is not a valid header value"
                ))
            })?;
            req = req.insert_header((HeaderName::from_static(name), v));
        }
        if let Some(key) = self.key {
            let (name, value) = match t.auth {
                AuthStyle::Bearer => ("authorization", format!("Bearer {}", key.expose())),
                AuthStyle::XApiKey => ("x-api-key", key.expose().to_string()),
                AuthStyle::XGoogApiKey => ("x-goog-api-key", key.expose().to_string()),
                AuthStyle::NoAuth => return Ok(req),
            };
            let mut v = HeaderValue::from_str(&value).map_err(|_| {
                bad(format!(
                    "the API key from {} has characters a header cannot carry",
                    t.key.describe()
                ))
            })?;
            v.set_sensitive(true);
            req = req.insert_header((HeaderName::from_static(name), v));
        }
        Ok(req)
    }

    fn never(&self, error: AiError) -> Failure {
        Failure {
            error,
            retry: Retry::Never,
        }
    }

    fn timeout(&self, kind: TimeoutKind, partial: String) -> Failure {
        let t = &self.target.timeouts;
        let after = match kind {
            TimeoutKind::Connect => t.connect,
            TimeoutKind::FirstToken => t.first_token,
            TimeoutKind::Idle => t.idle,
            TimeoutKind::Total => t.total,
        };
        self.never(AiError::Timeout {
            provider: self.provider(),
            kind,
            after,
            partial,
        })
    }

    fn unreachable(&self, reason: String) -> Failure {
        Failure {
            error: AiError::Unreachable {
                provider: self.provider(),
                host: self.target.host.clone(),
                attempts: 1,
                reason: redact(&reason, self.key),
            },
            retry: Retry::Backoff,
        }
    }

    fn status_failure(
        &self,
        status: StatusCode,
        headers: Option<&actix_web::http::header::HeaderMap>,
        error: ProviderError,
    ) -> Failure {
        classify_status(StatusFailure {
            provider: self.target.provider,
            status,
            headers,
            error,
            key: self.key,
            key_source: self.target.key.describe(),
        })
    }

    /// A failure reported inside a 200 answer: before any text it counts as the HTTP error it
    /// stands for (so an overload is retried); after some text, the reply broke off.
    fn fault(&self, fault: StreamFault, partial: &str) -> Failure {
        match fault {
            StreamFault::Provider(p) if partial.is_empty() => {
                let status = p
                    .implied_status()
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                self.status_failure(status, None, p)
            }
            StreamFault::Provider(p) => self.never(AiError::BrokeOff {
                provider: self.provider(),
                reason: format!(
                    "{} reported an error mid-way: {}",
                    self.provider(),
                    p.shown(self.key, None)
                ),
                partial: partial.to_string(),
            }),
            StreamFault::Malformed(m) if partial.is_empty() => self.never(AiError::Protocol {
                provider: self.provider(),
                detail: m,
            }),
            StreamFault::Malformed(m) => self.never(AiError::BrokeOff {
                provider: self.provider(),
                reason: m,
                partial: partial.to_string(),
            }),
        }
    }

    /// One HTTP exchange.
    async fn attempt(&self) -> Result<Outcome, Failure> {
        let req = self.request().map_err(|e| self.never(e))?;
        let t = self.target;
        let first_deadline = (Instant::now() + t.timeouts.first_token).min(self.deadline);
        let first_kind = if first_deadline == self.deadline {
            TimeoutKind::Total
        } else {
            TimeoutKind::FirstToken
        };
        let mut resp = match timeout_at(first_deadline, req.send_body(self.body.clone())).await {
            None => return Err(self.timeout(first_kind, String::new())),
            Some(Err(e)) => return Err(self.send_error(e)),
            Some(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let body = match timeout_at(self.deadline, resp.body().limit(MAX_ERROR_BODY)).await {
                Some(Ok(b)) => b,
                _ => Bytes::new(),
            };
            let headers = resp.headers().clone();
            return Err(self.status_failure(
                status,
                Some(&headers),
                ProviderError::from_body(&body),
            ));
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !(t.stream && is_sse) {
            // Not streamed (or a server that answered a stream request in one piece).
            let body = match timeout_at(self.deadline, resp.body().limit(MAX_BODY)).await {
                None => return Err(self.timeout(TimeoutKind::Total, String::new())),
                Some(Err(e)) => {
                    return Err(self.unreachable(format!("the answer could not be read ({e})")))
                }
                Some(Ok(b)) => b,
            };
            if let Some(reason) = cut_short(resp.headers(), body.len()) {
                // awc hands over what came when the connection closes early: not a reply.
                return Err(self.broke_off(reason, String::new()));
            }
            let outcome = (self.codec.parse_response)(&body).map_err(|f| self.fault(f, ""))?;
            if let Some(tx) = self.deltas.filter(|_| !outcome.text.is_empty()) {
                let _ = tx.unbounded_send(redact(&outcome.text, self.key));
            }
            return Ok(outcome);
        }
        let mut decoder = (self.codec.stream_decoder)();
        // What reaches the page is redacted piece by piece; a key split across two deltas
        // is held back until it is whole (see StreamRedactor).
        let mut redactor = StreamRedactor::new(self.key);
        let mut parser = SseParser::new();
        let mut delivered = false;
        let mut last_data = Instant::now();
        let mut out = Vec::new();
        loop {
            let (until, kind) = if !delivered {
                (first_deadline, first_kind)
            } else if last_data + t.timeouts.idle < self.deadline {
                (last_data + t.timeouts.idle, TimeoutKind::Idle)
            } else {
                (self.deadline, TimeoutKind::Total)
            };
            let next = match timeout_at(until, resp.next()).await {
                None => return Err(self.timeout(kind, decoder.outcome().text.clone())),
                Some(next) => next,
            };
            last_data = Instant::now();
            let (events, eof) = match next {
                Some(Ok(bytes)) => match parser.push(&bytes) {
                    Ok(evs) => (evs, false),
                    Err(e) => {
                        let partial = decoder.outcome().text.clone();
                        return Err(self.fault(StreamFault::Malformed(e.to_string()), &partial));
                    }
                },
                Some(Err(e)) => {
                    return Err(self.broke_off(
                        format!("the connection failed mid-way ({e})"),
                        decoder.outcome().text.clone(),
                    ))
                }
                None => (parser.finish().into_iter().collect(), true),
            };
            for ev in events {
                let done = match decoder.event(&ev, &mut out) {
                    Ok(done) => done,
                    Err(f) => {
                        let partial = decoder.outcome().text.clone();
                        return Err(self.fault(f, &partial));
                    }
                };
                for d in out.drain(..) {
                    delivered = true;
                    let shown = redactor.push(&d);
                    if let Some(tx) = self.deltas.filter(|_| !shown.is_empty()) {
                        let _ = tx.unbounded_send(shown);
                    }
                }
                if done {
                    self.flush(&mut redactor);
                    return Ok(std::mem::take(decoder.outcome()));
                }
            }
            if eof {
                if !decoder.complete_at_eof() {
                    return Err(self.broke_off(
                        "the connection closed before the reply was complete".into(),
                        decoder.outcome().text.clone(),
                    ));
                }
                self.flush(&mut redactor);
                return Ok(std::mem::take(decoder.outcome()));
            }
        }
    }

    /// Hands the page the end of a complete streamed reply that was held back.
    fn flush(&self, redactor: &mut StreamRedactor) {
        let rest = redactor.finish();
        if let Some(tx) = self.deltas.filter(|_| !rest.is_empty()) {
            let _ = tx.unbounded_send(rest);
        }
    }

    /// The stream failed: retried when nothing was shown yet, else reported with what arrived.
    fn broke_off(&self, reason: String, partial: String) -> Failure {
        if partial.is_empty() {
            self.unreachable(reason)
        } else {
            self.never(AiError::BrokeOff {
                provider: self.provider(),
                reason: redact(&reason, self.key),
                partial,
            })
        }
    }

    fn send_error(&self, e: awc::error::SendRequestError) -> Failure {
        match SendFailure::of(e) {
            SendFailure::ConnectTimeout => Failure {
                retry: Retry::Backoff,
                ..self.timeout(TimeoutKind::Connect, String::new())
            },
            SendFailure::Config(detail) => self.never(AiError::Config { detail }),
            SendFailure::Unreachable(reason) => self.unreachable(reason),
        }
    }
}

/// Why a whole answer of `got` bytes is not whole: fewer bytes than its `Content-Length`
/// promised (the connection closed early; awc hands over what came). None when it is whole, or
/// when the length cannot be compared (no such header, or a compressed body, decoded here).
fn cut_short(headers: &HeaderMap, got: usize) -> Option<String> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if text(CONTENT_ENCODING).is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
        return None;
    }
    let declared: u64 = text(CONTENT_LENGTH)?.trim().parse().ok()?;
    (u64::try_from(got).ok()? < declared).then(|| {
        format!("the connection broke before the whole answer arrived ({got} of {declared} bytes)")
    })
}

/// Why a request could not be sent.
#[derive(Debug, PartialEq, Eq)]
enum SendFailure {
    /// Opening the connection took longer than the connect timeout (retried).
    ConnectTimeout,
    /// The request itself is wrong: retrying cannot help.
    Config(String),
    /// DNS, refused connection, reset before an answer… (retried).
    Unreachable(String),
}

impl SendFailure {
    fn of(e: awc::error::SendRequestError) -> SendFailure {
        use awc::error::{ConnectError, SendRequestError as E};
        match e {
            E::Connect(ConnectError::Timeout) => SendFailure::ConnectTimeout,
            E::Url(e) => SendFailure::Config(format!("its URL is not valid ({e})")),
            E::Http(e) => SendFailure::Config(format!("the request cannot be built ({e})")),
            other => SendFailure::Unreachable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_timeout_is_told_apart_from_other_send_failures() {
        use awc::error::{ConnectError, SendRequestError as E};
        assert_eq!(
            SendFailure::of(E::Connect(ConnectError::Timeout)),
            SendFailure::ConnectTimeout
        );
        assert!(matches!(
            SendFailure::of(E::Connect(ConnectError::NoRecords)),
            SendFailure::Unreachable(_)
        ));
        assert!(matches!(
            SendFailure::of(E::Url(awc::error::InvalidUrl::MissingScheme)),
            SendFailure::Config(_)
        ));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_answer_shorter_than_its_content_length_is_cut_short() {
        let h = headers(&[("content-length", "120")]);
        assert_eq!(
            cut_short(&h, 60).as_deref(),
            Some("the connection broke before the whole answer arrived (60 of 120 bytes)")
        );
        assert_eq!(cut_short(&h, 120), None);
    }

    #[test]
    fn an_answer_without_a_comparable_length_is_taken_as_it_came() {
        assert_eq!(cut_short(&headers(&[]), 10), None);
        assert_eq!(cut_short(&headers(&[("content-length", "x")]), 10), None);
        let gzip = headers(&[("content-length", "40"), ("content-encoding", "gzip")]);
        assert_eq!(
            cut_short(&gzip, 10),
            None,
            "the length is of the compressed body"
        );
        let identity = headers(&[("content-length", "40"), ("content-encoding", "identity")]);
        assert!(cut_short(&identity, 10).is_some());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) <= Duration::from_millis(500) && backoff(1) >= Duration::from_millis(375)
        );
        assert!(backoff(2) >= Duration::from_millis(750));
        assert!(backoff(30) <= BACKOFF_MAX);
    }

    #[test]
    fn the_attempt_count_reaches_the_message() {
        let e = with_attempts(
            AiError::RateLimited {
                provider: "OpenAI",
                attempts: 1,
                detail: "slow down".into(),
            },
            3,
        );
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
    }
}

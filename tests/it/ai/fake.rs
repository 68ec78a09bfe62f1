//! A fake AI provider: an actix-web server on port 0 that speaks one provider's wire format
//! (OpenAI, Anthropic, Gemini, Mistral or Ollama's OpenAI-compatible API), following the
//! checklist of `shared/spec/ai-providers.md` §7.
//!
//! Every request is recorded (method, path with query, headers, JSON body) so tests assert the
//! exact requests sent. Each request consumes the next [`Script`] (a normal reply when none is
//! queued). Like the real services it refuses what they refuse: a missing or wrong key (401 in
//! the native shape), Mistral's unknown fields (422 `extra_forbidden`), Anthropic's missing
//! `max_tokens` or `temperature` with `top_p`, Gemini roles other than user/model, a reasoning
//! OpenAI model given `max_tokens` or `temperature`.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

/// Which API the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Anthropic,
    Gemini,
    Mistral,
    Ollama,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v1beta/models/m:streamGenerateContent?alt=sse`.
    pub path: String,
    /// Lower-case header names.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|s| s.as_str())
    }
}

/// What the fake does with the next request.
#[derive(Debug, Clone)]
pub enum Script {
    /// A normal answer made of these pieces (streamed one chunk each, or joined).
    Reply(Vec<String>),
    /// An HTTP error: status, extra headers, body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Wait before sending anything, then do the rest.
    SlowFirstByte(Duration, Box<Script>),
    /// Stream these pieces, then go silent for the duration, then close.
    StallAfter(Vec<String>, Duration),
    /// Stream these pieces, then the provider's native mid-stream error event.
    ErrorAfter(Vec<String>),
    /// Stream these pieces, then close cleanly without the terminator.
    CloseAfter(Vec<String>),
    /// Stream these pieces, then break the connection (a reset, no terminator).
    ResetAfter(Vec<String>),
    /// A whole (non-streamed) reply of these pieces whose `Content-Length` is right, but the
    /// connection closes after the first half of the body.
    CutShort(Vec<String>),
    /// The reply is refused / filtered by the provider's safety system.
    Filtered,
    /// Gemini: a prompt block (no candidates).
    PromptBlock,
    /// Gemini: finishReason STOP with a content that has no parts.
    StopWithoutParts,
    /// Gemini: a thought part, then visible text.
    WithThought(String, String),
    /// A normal answer echoing the key the request carried: `{key}` in `text` becomes the key,
    /// `{key64}` its standard base64; streamed in pieces of `piece_chars` characters (so the
    /// key is split across deltas), or whole when not streamed.
    EchoKey { text: String, piece_chars: usize },
    /// Stream these pieces, then hold the connection open, sending nothing, until the client
    /// goes away (counted: [`FakeProvider::hung_up`]).
    HoldAfter(Vec<String>),
}

pub fn pieces(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

struct State {
    kind: Kind,
    key: Option<String>,
    requests: Mutex<Vec<Recorded>>,
    scripts: Mutex<VecDeque<Script>>,
    /// Held answers ([`Script::HoldAfter`]) whose client went away.
    hung_up: AtomicUsize,
}

/// A running fake provider.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeProvider {
    /// Starts a fake of `kind` that accepts `key` (None: no key needed, as Ollama).
    pub fn start(kind: Kind, key: Option<&str>) -> FakeProvider {
        let state = Arc::new(State {
            kind,
            key: key.map(str::to_string),
            requests: Mutex::new(Vec::new()),
            scripts: Mutex::new(VecDeque::new()),
            hung_up: AtomicUsize::new(0),
        });
        let data = web::Data::from(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake");
        let addr = listener.local_addr().unwrap();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .expect("fake listens")
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        FakeProvider {
            url: format!("http://{addr}"),
            state,
            handle,
        }
    }

    /// Queues what the next requests get, in order.
    pub fn script(&self, scripts: impl IntoIterator<Item = Script>) {
        self.state.scripts.lock().unwrap().extend(scripts);
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The only request so far (panics when there is not exactly one).
    pub fn only_request(&self) -> Recorded {
        let r = self.requests();
        assert_eq!(r.len(), 1, "expected exactly one request, got {r:#?}");
        r.into_iter().next().unwrap()
    }

    /// How many held answers ([`Script::HoldAfter`]) their client closed.
    pub fn hung_up(&self) -> usize {
        self.state.hung_up.load(Ordering::SeqCst)
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// An error body in the provider's own shape.
pub fn native_error(kind: Kind, status: u16, message: &str) -> String {
    let (oa_type, an_type, g_status) = match status {
        400 => (
            "invalid_request_error",
            "invalid_request_error",
            "INVALID_ARGUMENT",
        ),
        401 => (
            "invalid_request_error",
            "authentication_error",
            "UNAUTHENTICATED",
        ),
        403 => ("permission_error", "permission_error", "PERMISSION_DENIED"),
        404 => ("invalid_request_error", "not_found_error", "NOT_FOUND"),
        429 => (
            "rate_limit_exceeded",
            "rate_limit_error",
            "RESOURCE_EXHAUSTED",
        ),
        503 => ("server_error", "api_error", "UNAVAILABLE"),
        529 => ("server_error", "overloaded_error", "UNAVAILABLE"),
        _ => ("server_error", "api_error", "INTERNAL"),
    };
    match kind {
        Kind::OpenAi | Kind::Ollama => {
            json!({"error":{"message":message,"type":oa_type,"param":null,"code":null}}).to_string()
        }
        Kind::Anthropic => {
            json!({"type":"error","error":{"type":an_type,"message":message},"request_id":"req_fake"})
                .to_string()
        }
        // Pretty-printed across lines, as Google sends it.
        Kind::Gemini => serde_json::to_string_pretty(
            &json!({"error":{"code":status,"message":message,"status":g_status}}),
        )
        .unwrap(),
        Kind::Mistral => {
            json!({"object":"error","message":message,"type":oa_type,"param":null,"code":null})
                .to_string()
        }
    }
}

fn status_response(status: u16, headers: &[(String, String)], body: String) -> HttpResponse {
    let mut r = HttpResponse::build(StatusCode::from_u16(status).unwrap());
    r.content_type("application/json");
    for (k, v) in headers {
        r.insert_header((k.as_str(), v.as_str()));
    }
    r.body(body)
}

/// A step of a streamed body.
enum Step {
    Data(String),
    Sleep(Duration),
    Reset,
}

fn sse_response(steps: Vec<Step>) -> HttpResponse {
    let stream = futures_util::stream::unfold(steps.into_iter(), |mut it| async move {
        loop {
            match it.next()? {
                Step::Data(d) => return Some((Ok::<_, actix_web::Error>(Bytes::from(d)), it)),
                Step::Sleep(d) => actix_rt::time::sleep(d).await,
                Step::Reset => {
                    // Let what was sent reach the client first, as on a real network.
                    actix_rt::time::sleep(Duration::from_millis(100)).await;
                    return Some((
                        Err(actix_web::error::ErrorInternalServerError(
                            "connection reset",
                        )),
                        it,
                    ));
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

async fn handle(req: HttpRequest, body: Bytes, state: web::Data<State>) -> HttpResponse {
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let rec = Recorded {
        method: req.method().to_string(),
        path: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body_json.clone(),
    };
    state.requests.lock().unwrap().push(rec.clone());
    let kind = state.kind;
    if let Some(refusal) = check_auth(kind, state.key.as_deref(), &rec) {
        return refusal;
    }
    if let Some(refusal) = validate(kind, &rec) {
        return refusal;
    }
    let script = state
        .scripts
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Script::Reply(pieces(&["Hello", " there", "!"])));
    let stream = match kind {
        Kind::Gemini => rec.path.contains(":streamGenerateContent"),
        _ => body_json["stream"] == json!(true),
    };
    if let Script::HoldAfter(p) = &script {
        return held_response(partial_steps(kind, &rec, p), state.into_inner());
    }
    respond(kind, &rec, script, stream).await
}

/// Counts a held answer whose client went away: actix drops the body stream then.
struct HangUp(Arc<State>);

impl Drop for HangUp {
    fn drop(&mut self) {
        self.0.hung_up.fetch_add(1, Ordering::SeqCst);
    }
}

/// `steps`, then only SSE comments (every 50 ms) until the client closes the connection
/// ([`Script::HoldAfter`]): a server notices a closed connection when it writes.
fn held_response(steps: Vec<Step>, state: Arc<State>) -> HttpResponse {
    let first = futures_util::stream::iter(steps.into_iter().filter_map(|s| match s {
        Step::Data(d) => Some(Ok::<_, actix_web::Error>(Bytes::from(d))),
        _ => None,
    }));
    let guard = Arc::new(HangUp(state));
    let hold = futures_util::stream::unfold(guard, |guard| async move {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        Some((
            Ok::<_, actix_web::Error>(Bytes::from_static(b": still thinking\n\n")),
            guard,
        ))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(futures_util::StreamExt::chain(first, hold))
}

/// The reply of [`Script::EchoKey`], with the key this request carried.
fn echo_key(kind: Kind, rec: &Recorded, text: &str, piece_chars: usize) -> Script {
    let key = presented_key(kind, rec).unwrap_or_default();
    let text = text
        .replace("{key64}", &base64(key.as_bytes()))
        .replace("{key}", &key);
    let chars: Vec<char> = text.chars().collect();
    Script::Reply(
        chars
            .chunks(piece_chars.max(1))
            .map(|c| c.iter().collect())
            .collect(),
    )
}

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        out.push_str(&"=".repeat(3 - chunk.len()));
    }
    out
}

/// The key the request carries, where `kind` puts it.
fn presented_key(kind: Kind, rec: &Recorded) -> Option<String> {
    match kind {
        Kind::Anthropic => rec.header("x-api-key").map(str::to_string).or_else(|| {
            rec.header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_string)
        }),
        Kind::Gemini => rec.header("x-goog-api-key").map(str::to_string),
        _ => rec
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::to_string),
    }
}

fn check_auth(kind: Kind, key: Option<&str>, rec: &Recorded) -> Option<HttpResponse> {
    let key = key?;
    let presented = match kind {
        Kind::Anthropic => rec.header("x-api-key").map(str::to_string).or_else(|| {
            rec.header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_string)
        }),
        Kind::Gemini => rec.header("x-goog-api-key").map(str::to_string),
        _ => rec
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::to_string),
    };
    match presented {
        Some(p) if p == key => None,
        Some(p) => Some(match kind {
            // Mistral's gateway answers a bare detail.
            Kind::Mistral => {
                status_response(401, &[], json!({"detail":"Unauthorized"}).to_string())
            }
            // Like OpenAI, echo (part of) the key: the client must not show it.
            _ => status_response(
                401,
                &[],
                native_error(kind, 401, &format!("Incorrect API key provided: {p}")),
            ),
        }),
        None => Some(status_response(
            401,
            &[],
            native_error(kind, 401, "You didn't provide an API key."),
        )),
    }
}

fn bad(kind: Kind, status: u16, message: &str) -> Option<HttpResponse> {
    Some(status_response(
        status,
        &[],
        native_error(kind, status, message),
    ))
}

fn validate(kind: Kind, rec: &Recorded) -> Option<HttpResponse> {
    let b = &rec.body;
    let Some(obj) = b.as_object() else {
        return bad(kind, 400, "body is not a JSON object");
    };
    match kind {
        Kind::Mistral => {
            const ALLOWED: [&str; 8] = [
                "model",
                "messages",
                "temperature",
                "top_p",
                "max_tokens",
                "stream",
                "stop",
                "random_seed",
            ];
            if let Some(extra) = obj.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
                let body = json!({"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body",extra],"msg":"Extra inputs are not permitted","input":obj[extra]}]},"type":"invalid_request_error","param":null,"code":null});
                return Some(status_response(422, &[], body.to_string()));
            }
            for m in b["messages"].as_array().into_iter().flatten() {
                if let Some(extra) = m
                    .as_object()
                    .and_then(|o| o.keys().find(|k| *k != "role" && *k != "content"))
                {
                    let body = json!({"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","messages",extra],"msg":"Extra inputs are not permitted"}]},"type":"invalid_request_error"});
                    return Some(status_response(422, &[], body.to_string()));
                }
            }
            let last = b["messages"]
                .as_array()
                .and_then(|m| m.last())
                .map(|m| m["role"].clone());
            if last != Some(json!("user")) {
                return bad(kind, 400, "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant");
            }
        }
        Kind::Anthropic => {
            if !rec.path.ends_with("/v1/messages") {
                return bad(kind, 404, "Not found");
            }
            if rec.header("anthropic-version").is_none() {
                return bad(kind, 400, "anthropic-version: header is required");
            }
            if !obj.contains_key("max_tokens") {
                return bad(kind, 400, "max_tokens: Field required");
            }
            if obj.contains_key("temperature") && obj.contains_key("top_p") {
                return bad(
                    kind,
                    400,
                    "`temperature` and `top_p` cannot both be specified for this model.",
                );
            }
            let msgs = b["messages"].as_array().cloned().unwrap_or_default();
            if msgs.first().map(|m| m["role"].clone()) != Some(json!("user")) {
                return bad(
                    kind,
                    400,
                    "messages: first message must use the \"user\" role",
                );
            }
            for pair in msgs.windows(2) {
                if pair[0]["role"] == pair[1]["role"] {
                    return bad(
                        kind,
                        400,
                        "messages: roles must alternate between \"user\" and \"assistant\"",
                    );
                }
            }
            if msgs
                .iter()
                .any(|m| m["content"].as_str().is_some_and(|c| c.is_empty()))
            {
                return bad(kind, 400, "messages: text content blocks must be non-empty");
            }
        }
        Kind::Gemini => {
            if rec.path.contains("key=") {
                return bad(kind, 400, "the key must not be in the URL in this test");
            }
            let stream_ok =
                !rec.path.contains(":streamGenerateContent") || rec.path.ends_with("?alt=sse");
            if !stream_ok {
                return bad(kind, 400, "this fake only streams with alt=sse");
            }
            let contents = b["contents"].as_array().cloned().unwrap_or_default();
            for c in &contents {
                let role = c["role"].as_str().unwrap_or("user");
                if role != "user" && role != "model" {
                    return bad(
                        kind,
                        400,
                        &format!("Please use a valid role: user, model. Got {role}"),
                    );
                }
            }
            if contents.last().map(|c| c["role"].clone()) != Some(json!("user")) {
                return bad(
                    kind,
                    400,
                    "Please ensure that multiturn requests end with a user role",
                );
            }
        }
        Kind::OpenAi => {
            let model = b["model"].as_str().unwrap_or_default();
            let reasoning = model.starts_with("gpt-5") || model.starts_with('o');
            if reasoning && obj.contains_key("max_tokens") {
                return bad(kind, 400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.");
            }
            if reasoning && obj.contains_key("temperature") {
                return bad(kind, 400, "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported.");
            }
        }
        Kind::Ollama => {}
    }
    None
}

fn joined(p: &[String]) -> String {
    p.concat()
}

/// OpenAI-style chunk (OpenAI, Mistral, Ollama).
fn oa_chunk(delta: Value, finish: Value) -> String {
    let c = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",
                   "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
    format!("data: {c}\n\n")
}

fn oa_steps(kind: Kind, rec: &Recorded, p: &[String], finish: Option<&str>) -> Vec<Step> {
    let mut s = vec![Step::Data(oa_chunk(
        json!({"role":"assistant","content":""}),
        Value::Null,
    ))];
    for piece in p {
        s.push(Step::Data(oa_chunk(json!({"content":piece}), Value::Null)));
    }
    if let Some(f) = finish {
        s.push(Step::Data(oa_chunk(json!({}), json!(f))));
        // Usage: Mistral sends it unasked; OpenAI/Ollama when include_usage.
        if kind == Kind::Mistral || rec.body["stream_options"]["include_usage"] == json!(true) {
            let u = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],
                           "usage":{"prompt_tokens":9,"completion_tokens":p.len(),"total_tokens":9+p.len()}});
            s.push(Step::Data(format!("data: {u}\n\n")));
        }
    }
    s
}

fn an_event(name: &str, data: Value) -> Step {
    Step::Data(format!("event: {name}\ndata: {data}\n\n"))
}

fn an_steps(p: &[String], stop: Option<&str>) -> Vec<Step> {
    let mut s = vec![
        an_event(
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":1}}}),
        ),
        an_event(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
        an_event("ping", json!({"type":"ping"})),
    ];
    for (i, piece) in p.iter().enumerate() {
        s.push(an_event("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":piece}})));
        if i == 0 {
            s.push(an_event("ping", json!({"type":"ping"})));
        }
    }
    if let Some(stop) = stop {
        s.push(an_event(
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ));
        s.push(an_event("message_delta", json!({"type":"message_delta","delta":{"stop_reason":stop,"stop_sequence":null},"usage":{"output_tokens":p.len() + 1}})));
    }
    s
}

fn gm_chunk(parts: Value, finish: Option<&str>, usage: bool) -> String {
    let mut c = json!({"candidates":[{"content":{"role":"model","parts":parts},"index":0}],"modelVersion":"m"});
    if let Some(f) = finish {
        c["candidates"][0]["finishReason"] = json!(f);
    }
    if usage {
        c["usageMetadata"] =
            json!({"promptTokenCount":7,"candidatesTokenCount":3,"totalTokenCount":10});
    }
    // Google ends lines with CRLF.
    format!("data: {c}\r\n\r\n")
}

fn gm_steps(p: &[String], finish: Option<&str>) -> Vec<Step> {
    let n = p.len();
    p.iter()
        .enumerate()
        .map(|(i, piece)| {
            let last = i + 1 == n;
            Step::Data(gm_chunk(
                json!([{"text":piece}]),
                finish.filter(|_| last),
                last,
            ))
        })
        .collect()
}

/// The steps of a normal streamed reply, terminator included.
fn reply_steps(kind: Kind, rec: &Recorded, p: &[String]) -> Vec<Step> {
    match kind {
        Kind::Anthropic => {
            let mut s = an_steps(p, Some("end_turn"));
            s.push(an_event("message_stop", json!({"type":"message_stop"})));
            s
        }
        Kind::Gemini => gm_steps(p, Some("STOP")),
        _ => {
            let mut s = oa_steps(kind, rec, p, Some("stop"));
            s.push(Step::Data("data: [DONE]\n\n".into()));
            s
        }
    }
}

/// The steps of a stream cut after `p`, without any terminator.
fn partial_steps(kind: Kind, rec: &Recorded, p: &[String]) -> Vec<Step> {
    match kind {
        Kind::Anthropic => an_steps(p, None),
        Kind::Gemini => gm_steps(p, None),
        _ => oa_steps(kind, rec, p, None),
    }
}

fn whole_reply(kind: Kind, text: &str, finish: &str) -> HttpResponse {
    HttpResponse::Ok().json(whole_body(kind, text, finish))
}

/// [`whole_reply`]'s body announced whole (`Content-Length`), its first half sent, then the
/// connection broken.
fn cut_short(kind: Kind, text: &str) -> HttpResponse {
    let body = whole_body(kind, text, stop_word(kind))
        .to_string()
        .into_bytes();
    let half = Bytes::from(body[..body.len() / 2].to_vec());
    let steps: Vec<Result<Bytes, actix_web::Error>> = vec![
        Ok(half),
        Err(actix_web::error::ErrorInternalServerError(
            "connection closed",
        )),
    ];
    let stream =
        futures_util::StreamExt::then(futures_util::stream::iter(steps), |step| async move {
            if step.is_err() {
                // Let the half reach the client first, as on a real network.
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            step
        });
    HttpResponse::Ok()
        .content_type("application/json")
        .body(actix_web::body::SizedStream::new(
            body.len() as u64,
            Box::pin(stream),
        ))
}

fn whole_body(kind: Kind, text: &str, finish: &str) -> Value {
    match kind {
        Kind::Anthropic => json!({"id":"msg_1","type":"message","role":"assistant","model":"m",
            "content": if text.is_empty() { json!([]) } else { json!([{"type":"text","text":text}]) },
            "stop_reason":finish,"stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":3}}),
        Kind::Gemini => {
            json!({"candidates":[{"content":{"role":"model","parts":[{"text":text}]},"finishReason":finish,"index":0}],
            "usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":3,"totalTokenCount":10}})
        }
        _ => json!({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":text,"refusal":null},"finish_reason":finish}],
            "usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}),
    }
}

fn stop_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Anthropic => "end_turn",
        Kind::Gemini => "STOP",
        _ => "stop",
    }
}

fn respond(
    kind: Kind,
    rec: &Recorded,
    script: Script,
    stream: bool,
) -> futures_util::future::LocalBoxFuture<'static, HttpResponse> {
    let rec = rec.clone();
    Box::pin(async move {
        match script {
            Script::EchoKey { text, piece_chars } => {
                respond(kind, &rec, echo_key(kind, &rec, &text, piece_chars), stream).await
            }
            Script::Reply(p) if stream => sse_response(reply_steps(kind, &rec, &p)),
            Script::Reply(p) => whole_reply(kind, &joined(&p), stop_word(kind)),
            Script::Status {
                status,
                headers,
                body,
            } => status_response(status, &headers, body),
            Script::SlowFirstByte(d, then) => {
                actix_rt::time::sleep(d).await;
                respond(kind, &rec, *then, stream).await
            }
            Script::StallAfter(p, d) => {
                let mut s = partial_steps(kind, &rec, &p);
                s.push(Step::Sleep(d));
                sse_response(s)
            }
            // After a slow first byte (not counted: only a script of its own is).
            Script::HoldAfter(p) => {
                let mut s = partial_steps(kind, &rec, &p);
                s.push(Step::Sleep(Duration::from_secs(3600)));
                sse_response(s)
            }
            Script::ErrorAfter(p) => {
                let mut s = partial_steps(kind, &rec, &p);
                s.push(match kind {
                    Kind::Anthropic => an_event("error", json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})),
                    Kind::Gemini => Step::Reset,
                    _ => Step::Data(format!(
                        "data: {}\n\n",
                        json!({"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}})
                    )),
                });
                sse_response(s)
            }
            Script::CloseAfter(p) => sse_response(partial_steps(kind, &rec, &p)),
            Script::CutShort(p) => cut_short(kind, &joined(&p)),
            Script::ResetAfter(p) => {
                let mut s = partial_steps(kind, &rec, &p);
                s.push(Step::Reset);
                sse_response(s)
            }
            Script::Filtered => match (kind, stream) {
                (Kind::Anthropic, true) => {
                    let mut s = an_steps(&[], Some("refusal"));
                    s.push(an_event("message_stop", json!({"type":"message_stop"})));
                    sse_response(s)
                }
                (Kind::Anthropic, false) => whole_reply(kind, "", "refusal"),
                (Kind::Gemini, true) => sse_response(vec![Step::Data(format!(
                    "data: {}\r\n\r\n",
                    json!({"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[{"category":"HARM_CATEGORY_HARASSMENT","probability":"HIGH","blocked":true}]}]})
                ))]),
                (Kind::Gemini, false) => HttpResponse::Ok()
                    .json(json!({"candidates":[{"finishReason":"SAFETY","index":0}]})),
                (_, true) => {
                    let mut s = oa_steps(kind, &rec, &pieces(&["Some"]), Some("content_filter"));
                    s.push(Step::Data("data: [DONE]\n\n".into()));
                    sse_response(s)
                }
                (_, false) => whole_reply(kind, "", "content_filter"),
            },
            Script::PromptBlock => {
                let body = json!({"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}});
                if stream {
                    sse_response(vec![Step::Data(format!("data: {body}\r\n\r\n"))])
                } else {
                    HttpResponse::Ok().json(body)
                }
            }
            Script::StopWithoutParts => {
                let body = json!({"candidates":[{"content":{"role":"model"},"finishReason":"STOP","index":0}]});
                if stream {
                    sse_response(vec![Step::Data(format!("data: {body}\r\n\r\n"))])
                } else {
                    HttpResponse::Ok().json(body)
                }
            }
            Script::WithThought(thought, text) => {
                let steps = vec![
                    Step::Data(gm_chunk(
                        json!([{"text":thought,"thought":true}]),
                        None,
                        false,
                    )),
                    Step::Data(gm_chunk(json!([{"text":text}]), Some("STOP"), true)),
                ];
                sse_response(steps)
            }
        }
    })
}

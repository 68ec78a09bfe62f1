//! End-to-end tests: a person chats with AI endpoints through the whole overlay (real
//! controller, proxies and peers, in-process on port 0), the AI endpoints backed by the fake
//! providers of `tests/it/ai/fake.rs`. What the user sees is read where the user sees it: the
//! page feed (`GET /api/v1/events`, SSE) and the history (`GET /get_chat_history/NAME`).
//!
//! Each test uses its own environment variable names for keys (tests run in parallel in one
//! process).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{App, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::ai::fake::{pieces, FakeProvider, Kind, Script};
use crate::helpers::{
    client, config_for, free_listener, spawn_overlay, spawn_proxy, subscribe, SseReader,
    TestOverlay,
};
use overlay::config::{AiEndpointConfig, Config};
use overlay::wire::data_plane::{Ack, DeliveryState, Envelope, Receipt, StreamChunk};

// ---------------------------------------------------------------- helpers

/// Every log line of this test binary from the first [`capture_logs`] on (all tests share
/// the process's one logger): our own crate at debug, everything else at info.
static CAPTURED: Mutex<String> = Mutex::new(String::new());

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info || m.target().starts_with("overlay")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}: {}\n", r.level(), r.target(), r.args());
            CAPTURED.lock().unwrap().push_str(&line);
        }
    }
    fn flush(&self) {}
}

static LOGGER: CaptureLogger = CaptureLogger;

/// Installs the capturing logger (once per process).
fn capture_logs() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

fn captured() -> String {
    CAPTURED.lock().unwrap().clone()
}

/// An AI endpoint from YAML fields, e.g. `{name: BOT, provider: openai, model: m}`.
fn ai(yaml: &str) -> AiEndpointConfig {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("endpoint yaml {yaml}: {e}"))
}

/// The OpenAI-shaped endpoint `BOT` (model `m`) served by `fake`, its key in `key_env`.
fn bot_at(fake: &FakeProvider, key_env: &str) -> AiEndpointConfig {
    ai(&format!(
        "{{name: BOT, provider: openai, model: m, base_url: '{}/v1', api_key_env: {key_env}}}",
        fake.url
    ))
}

/// `users` (name, auto-reply lines) with `endpoints`, started.
async fn overlay_with(users: &[(&str, &[&str])], endpoints: Vec<AiEndpointConfig>) -> TestOverlay {
    let mut config: Config = config_for(users);
    config.ai_endpoints.extend(endpoints);
    spawn_overlay(config).await
}

async fn get_json(url: &str) -> Value {
    let mut r = client().get(url).send().await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    let body = r.body().limit(64 << 20).await.expect("body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {url}: {e}: {}", String::from_utf8_lossy(&body)))
}

async fn get_text(url: &str) -> String {
    let mut r = client().get(url).send().await.expect("GET");
    let body = r.body().limit(64 << 20).await.expect("body");
    String::from_utf8_lossy(&body).into_owned()
}

async fn post_json(url: &str, body: &Value) -> (StatusCode, Value) {
    let mut r = client().post(url).send_json(body).await.expect("POST");
    let status = r.status();
    let bytes = r.body().limit(64 << 20).await.expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("POST {url}: {e}: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// The admin's `GET url` (JSON) and `POST url` (JSON), with the admin `token` ([`admin_token`]):
/// the controller's list and table edits need a login.
async fn admin_get_json(token: &str, url: &str) -> Value {
    let mut r = client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    r.json().limit(64 << 20).await.expect("JSON")
}

async fn admin_post_json(token: &str, url: &str, body: &Value) -> (StatusCode, Value) {
    let mut r = client()
        .post(url)
        .bearer_auth(token)
        .send_json(body)
        .await
        .expect("POST");
    let status = r.status();
    (
        status,
        r.json().limit(64 << 20).await.unwrap_or(Value::Null),
    )
}

fn admin_token(o: &TestOverlay) -> String {
    std::fs::read_to_string(o.data_dir.path().join("admin.token"))
        .expect("the admin token")
        .trim()
        .to_string()
}

/// The person types `text` to `to` in the page; answers the message id.
async fn send(peer: &str, to: &str, text: &str) -> String {
    let (s, v) = post_json(
        &format!("{peer}/send_message"),
        &json!({"peer_id": to, "message": text}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["id"].as_str().expect("an id").to_string()
}

async fn history(peer: &str, with: &str) -> Vec<Value> {
    get_json(&format!("{peer}/get_chat_history/{with}"))
        .await
        .as_array()
        .expect("a list")
        .clone()
}

/// (sender, message) of each history entry.
fn said(h: &[Value]) -> Vec<(String, String)> {
    h.iter()
        .map(|e| {
            (
                e["sender"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls `check` until it holds (bounded: 20 s), or fails naming `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2000 {
        if check().await {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until the history with `with` has `n` entries; answers it.
async fn history_of_len(peer: &str, with: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} messages with {with}"), || async {
        history(peer, with).await.len() >= n
    })
    .await;
    history(peer, with).await
}

/// Waits until every message the user wrote to `with` is `delivered`.
async fn all_delivered(peer: &str, me: &str, with: &str) {
    eventually(&format!("{me}'s messages to {with} delivered"), || async {
        history(peer, with)
            .await
            .iter()
            .filter(|e| e["sender"] == me)
            .all(|e| e["status"] == "delivered")
    })
    .await;
}

/// Waits until every message the user wrote to `with` is `failed` (nobody answered it); the
/// legacy history carries the state, the native page feed the reason.
async fn all_failed(peer: &str, me: &str, with: &str) {
    eventually(&format!("{me}'s messages to {with} failed"), || async {
        history(peer, with)
            .await
            .iter()
            .filter(|e| e["sender"] == me)
            .all(|e| e["status"] == "failed")
    })
    .await;
}

/// The page feed of a peer (`GET /api/v1/events`), event by event.
struct PageFeed(SseReader);

impl PageFeed {
    async fn open(peer: &str) -> PageFeed {
        PageFeed(subscribe(&format!("{peer}/api/v1/events")).await)
    }

    /// The next event (bounded wait: 20 s).
    async fn next(&mut self) -> Value {
        self.0.next_within(Duration::from_secs(20)).await
    }

    /// Reads until the stored message from `from` arrives; answers the `stream` events from
    /// `from` seen before it (in order) and that message. Other events are skipped.
    async fn reply_from(&mut self, from: &str) -> (Vec<Value>, Value) {
        let mut streamed = Vec::new();
        loop {
            let ev = self.next().await;
            match ev["type"].as_str() {
                Some("stream") if ev["from"] == from => streamed.push(ev),
                Some("message") if ev["message"]["from"] == from => {
                    return (streamed, ev["message"].clone())
                }
                _ => {}
            }
        }
    }
}

/// The streamed text, checking the chunks belong to reply `id` and come in order.
fn streamed_text(chunks: &[Value], id: &str) -> String {
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["id"], id, "a chunk of another reply: {c}");
        assert_eq!(c["seq"], i as u64, "chunks in order: {chunks:?}");
        text.push_str(c["delta"].as_str().unwrap());
    }
    text
}

/// The request's messages as (role, content).
fn roles(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Asserts `key` appears in none of the pages and answers a user or an operator can read.
async fn key_shown_nowhere(o: &TestOverlay, user: &str, with: &[&str], key: &str) {
    let peer = o.url(&format!("peer/{user}"));
    let proxy = o.url(&format!("proxy/{user}"));
    let mut urls = vec![
        format!("{peer}/"),
        format!("{proxy}/peers"),
        format!("{proxy}/api/v1/outbox"),
        format!("{proxy}/api/v1/directory"),
        o.url("controller") + "/",
    ];
    for w in with {
        urls.push(format!("{peer}/get_chat_history/{w}"));
        urls.push(format!("{peer}/api/v1/conversations/{w}/messages"));
    }
    for url in urls {
        let text = get_text(&url).await;
        assert!(!text.contains(key), "the key shows in {url}: {text}");
    }
}

// ---------------------------------------------------------------- (a) two messages

#[actix_web::test]
async fn a_person_chats_with_an_ai_that_remembers_and_streams_its_replies() {
    const KEY: &str = "sk-e2e-chat-key-0001";
    std::env::set_var("OVERLAY_E2E_KEY_CHAT", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::Reply(pieces(&["Hello", " alice", "!"])),
        Script::Reply(pieces(&["It", " is", " 4."])),
    ]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![ai(&format!(
            "{{name: BOT, provider: openai, model: gpt-4o-mini, base_url: '{}/v1', api_key_env: OVERLAY_E2E_KEY_CHAT}}",
            fake.url
        ))],
    )
    .await;
    let peer = o.url("peer/alice");
    let mut page = PageFeed::open(&peer).await;

    send(&peer, "BOT", "hi").await;
    let (chunks, first) = page.reply_from("BOT").await;
    assert!(!chunks.is_empty(), "the reply streamed to the page");
    let id = first["id"].as_str().unwrap();
    assert_eq!(streamed_text(&chunks, id), "Hello alice!");
    assert_eq!(first["text"], "Hello alice!");
    assert_eq!(first["error"], false);
    assert!(chunks.iter().all(|c| c["peer"] == "BOT"));
    all_delivered(&peer, "alice", "BOT").await;

    send(&peer, "BOT", "2+2?").await;
    let (chunks, second) = page.reply_from("BOT").await;
    assert_eq!(
        streamed_text(&chunks, second["id"].as_str().unwrap()),
        "It is 4."
    );
    assert_eq!(second["text"], "It is 4.");
    all_delivered(&peer, "alice", "BOT").await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "one request per message");
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(roles(&requests[0].body), pairs(&[("user", "[alice]: hi")]));
    assert_eq!(
        roles(&requests[1].body),
        pairs(&[
            ("user", "[alice]: hi"),
            ("assistant", "Hello alice!"),
            ("user", "[alice]: 2+2?")
        ]),
        "the second request carries the first exchange"
    );
    assert_eq!(requests[1].body["stream"], true);

    let h = history(&peer, "BOT").await;
    assert_eq!(
        said(&h),
        pairs(&[
            ("alice", "hi"),
            ("BOT", "Hello alice!"),
            ("alice", "2+2?"),
            ("BOT", "It is 4.")
        ]),
        "each reply stored once, in order"
    );
    assert!(h
        .iter()
        .filter(|e| e["sender"] == "alice")
        .all(|e| e["status"] == "delivered"));
    assert_eq!(history(&peer, "bot").await.len(), 4, "names ignore case");
    key_shown_nowhere(&o, "alice", &["BOT"], KEY).await;
}

// ---------------------------------------------------------------- (b) clearing the chat

#[actix_web::test]
async fn clearing_the_chat_starts_a_fresh_context() {
    const KEY: &str = "sk-e2e-clear-key-0002";
    std::env::set_var("OVERLAY_E2E_KEY_CLEAR", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::Reply(pieces(&["Noted: blue."])),
        Script::Reply(pieces(&["I don't know."])),
    ]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_CLEAR")],
    )
    .await;
    let peer = o.url("peer/alice");

    send(&peer, "BOT", "my colour is blue").await;
    history_of_len(&peer, "BOT", 2).await;
    let (s, v) = post_json(&format!("{peer}/clear_chat/BOT"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(history(&peer, "BOT").await.is_empty());

    send(&peer, "BOT", "what is my colour?").await;
    let h = history_of_len(&peer, "BOT", 2).await;
    assert_eq!(
        said(&h),
        pairs(&[("alice", "what is my colour?"), ("BOT", "I don't know.")])
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        roles(&requests[1].body),
        pairs(&[("user", "[alice]: what is my colour?")]),
        "only the new message after the chat was cleared"
    );
}

/// Clearing every chat on the page still makes the AI forget (the peer says "all" explicitly).
#[actix_web::test]
async fn clearing_all_chats_starts_a_fresh_context() {
    const KEY: &str = "sk-e2e-clear-all-key-0005";
    std::env::set_var("OVERLAY_E2E_KEY_CLEAR_ALL", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_CLEAR_ALL")],
    )
    .await;
    let peer = o.url("peer/alice");
    send(&peer, "BOT", "my colour is blue").await;
    history_of_len(&peer, "BOT", 2).await;
    let (s, v) = post_json(&format!("{peer}/clear_all_chats"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    send(&peer, "BOT", "what is my colour?").await;
    history_of_len(&peer, "BOT", 2).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        roles(&requests[1].body),
        pairs(&[("user", "[alice]: what is my colour?")]),
        "only the new message after every chat was cleared"
    );
}

/// # any route (relay): passes the request on to the proxy behind it, holding every
/// `POST /api/v1/forget` for the delay first: a proxy that is slow to forget.
async fn slow_forget_relay(
    req: actix_web::HttpRequest,
    body: web::Bytes,
    to: web::Data<(String, Duration)>,
) -> HttpResponse {
    let (target, delay) = to.get_ref();
    if req.path() == "/api/v1/forget" {
        actix_rt::time::sleep(*delay).await;
    }
    let mut forward = client().request(req.method().clone(), format!("{target}{}", req.uri()));
    if let Some(ct) = req.headers().get("content-type") {
        forward = forward.insert_header(("content-type", ct.clone()));
    }
    match forward.send_body(body).await {
        Ok(mut r) => {
            let bytes = r.body().limit(64 << 20).await.unwrap_or_default();
            HttpResponse::build(r.status())
                .content_type("application/json")
                .body(bytes)
        }
        Err(e) => HttpResponse::BadGateway().body(e.to_string()),
    }
}

/// A message sent right after a chat was cleared never reaches the AI with the old
/// conversation, even when the proxy is slow to forget: the clear is answered only after the
/// forget. alice's second peer talks to her proxy through a relay that holds each forget.
#[actix_web::test]
async fn a_message_sent_right_after_clearing_never_meets_the_old_conversation() {
    const KEY: &str = "sk-e2e-slow-forget-key-0006";
    std::env::set_var("OVERLAY_E2E_KEY_SLOW_FORGET", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::Reply(pieces(&["Noted: blue."])),
        Script::Reply(pieces(&["I don't know."])),
    ]);
    let mut config: Config = config_for(&[("alice", &[])]);
    config
        .ai_endpoints
        .push(bot_at(&fake, "OVERLAY_E2E_KEY_SLOW_FORGET"));
    let o = spawn_overlay(config.clone()).await;

    let relay_listener = free_listener();
    let relay_url = format!("http://{}", relay_listener.local_addr().unwrap());
    let to = web::Data::new((o.url("proxy/alice"), Duration::from_millis(500)));
    let relay = HttpServer::new(move || {
        App::new()
            .app_data(to.clone())
            .default_service(web::to(slow_forget_relay))
    })
    .workers(1)
    .disable_signals()
    .listen(relay_listener)
    .unwrap()
    .run();
    let relay_handle = relay.handle();
    actix_rt::spawn(relay);

    let dir = tempfile::tempdir().unwrap();
    let mut settings = config.peer_settings("alice", dir.path()).unwrap();
    settings.proxy_url = relay_url;
    let running = overlay::peer::start(settings, free_listener())
        .await
        .unwrap();
    let peer = running.url();
    let peer_handle = running.handle();
    let peer_task = actix_rt::spawn(running.serve());

    send(&peer, "BOT", "my colour is blue").await;
    // Her proxy hands the reply to her first peer, once the exchange is remembered.
    history_of_len(&o.url("peer/alice"), "BOT", 1).await;
    let (s, v) = post_json(&format!("{peer}/clear_chat/BOT"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    send(&peer, "BOT", "what is my colour?").await;
    history_of_len(&o.url("peer/alice"), "BOT", 2).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        roles(&requests[1].body),
        pairs(&[("user", "[alice]: what is my colour?")]),
        "the forget came first, however slow"
    );

    peer_handle.stop(true).await;
    let _ = peer_task.await;
    relay_handle.stop(false).await;
}

#[actix_web::test]
async fn the_proxy_forgets_one_ai_conversation_or_all_and_refuses_a_bad_name() {
    const KEY: &str = "sk-e2e-forget-key-0003";
    std::env::set_var("OVERLAY_E2E_KEY_FORGET", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_FORGET")],
    )
    .await;
    let (peer, proxy) = (o.url("peer/alice"), o.url("proxy/alice"));
    send(&peer, "BOT", "one").await;
    history_of_len(&peer, "BOT", 2).await;

    let forget = format!("{proxy}/api/v1/forget");
    let (s, v) = post_json(&forget, &json!({"with": "bad name!"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["status"], "error");
    assert!(v["message"].as_str().unwrap().contains("`with`"), "{v}");
    let (s, v) = post_json(&forget, &json!({"with": 7})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // "All" is never a default: an empty, unclear or misspelled request forgets nothing.
    for (body, names) in [
        (json!({}), "`{\"all\": true}`"),
        (json!([]), "say what to forget"),
        (json!({"all": false}), "`{\"all\": true}`"),
        (json!({"with": "BOT", "all": true}), "not both"),
        (json!({"wiht": "BOT"}), "unknown field `wiht`"),
    ] {
        let (s, v) = post_json(&forget, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["status"], "error", "{body}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(names),
            "{body}: {v}"
        );
    }
    let (s, v) = post_json(&forget, &json!({"with": "bob"})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("success")));
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("(0 remembered turns)"));

    // The bad requests changed nothing: the memory still has the first exchange.
    send(&peer, "BOT", "two").await;
    history_of_len(&peer, "BOT", 4).await;
    assert_eq!(
        roles(&fake.requests()[1].body),
        pairs(&[
            ("user", "[alice]: one"),
            ("assistant", "Hello there!"),
            ("user", "[alice]: two")
        ])
    );

    let (s, v) = post_json(&forget, &json!({"all": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("(4 remembered turns)"),
        "{v}"
    );
    send(&peer, "BOT", "three").await;
    history_of_len(&peer, "BOT", 6).await;
    assert_eq!(
        roles(&fake.requests()[2].body),
        pairs(&[("user", "[alice]: three")])
    );
}

// ---------------------------------------------------------------- (c) errors

#[actix_web::test]
async fn a_missing_or_wrong_key_is_an_error_message_from_the_endpoint_and_never_shows_a_key() {
    const WRONG: &str = "sk-e2e-wrong-key-0004";
    const RIGHT: &str = "sk-e2e-right-key-0004";
    capture_logs();
    std::env::remove_var("OVERLAY_E2E_KEY_MISSING");
    std::env::set_var("OVERLAY_E2E_KEY_WRONG", WRONG);
    let fake = FakeProvider::start(Kind::OpenAi, Some(RIGHT));
    let o = overlay_with(
        &[("alice", &[])],
        vec![
            bot_at(&fake, "OVERLAY_E2E_KEY_MISSING"),
            ai(&format!(
                "{{name: GPT, provider: openai, model: m, base_url: '{}/v1', api_key_env: OVERLAY_E2E_KEY_WRONG}}",
                fake.url
            )),
        ],
    )
    .await;
    let peer = o.url("peer/alice");
    let mut page = PageFeed::open(&peer).await;

    send(&peer, "BOT", "hi").await;
    let (chunks, report) = page.reply_from("BOT").await;
    assert!(chunks.is_empty(), "nothing streamed: {chunks:?}");
    assert_eq!(report["error"], true, "marked as an error: {report}");
    let text = report["text"].as_str().unwrap();
    assert!(
        text.contains("Start the proxy again with OVERLAY_E2E_KEY_MISSING set"),
        "{text}"
    );
    all_failed(&peer, "alice", "BOT").await;
    let page_of = get_json(&format!("{peer}/api/v1/conversations/BOT/messages")).await;
    let mine = page_of["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["from"] == "alice")
        .cloned()
        .unwrap();
    let reason = mine["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("BOT did not answer: ") && reason.contains("OVERLAY_E2E_KEY_MISSING"),
        "{mine}"
    );
    let h = history(&peer, "BOT").await;
    assert_eq!(said(&h), pairs(&[("alice", "hi"), ("BOT", text)]));
    assert!(fake.requests().is_empty(), "nothing sent without a key");

    // A wrong key: the fake echoes it in its 401, as OpenAI does; the user never sees it.
    send(&peer, "GPT", "hello").await;
    let (_, report) = page.reply_from("GPT").await;
    assert_eq!(report["error"], true);
    let text = report["text"].as_str().unwrap();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("OVERLAY_E2E_KEY_WRONG"), "{text}");
    assert!(!text.contains(WRONG) && !text.contains("sk-e2e"), "{text}");
    let messages = get_json(&format!("{peer}/api/v1/conversations/GPT/messages")).await;
    assert!(
        messages.to_string().contains("\"error\":true"),
        "{messages}"
    );
    key_shown_nowhere(&o, "alice", &["BOT", "GPT"], WRONG).await;
    let logs = captured();
    assert!(
        logs.contains("AI endpoint GPT did not answer message"),
        "the failure is logged (and the capture works): {logs}"
    );
    assert!(!logs.contains(WRONG), "the key is in the logs");
}

// ---------------------------------------------------------------- (d) other providers

#[actix_web::test]
async fn mistral_and_gemini_replies_carry_their_endpoint_names_and_gemini_gets_its_key_header() {
    const MKEY: &str = "sk-e2e-mistral-0005";
    const GKEY: &str = "e2e-gemini-key-0005";
    std::env::set_var("OVERLAY_E2E_KEY_MISTRAL", MKEY);
    std::env::set_var("OVERLAY_E2E_KEY_GEMINI", GKEY);
    let mistral = FakeProvider::start(Kind::Mistral, Some(MKEY));
    let gemini = FakeProvider::start(Kind::Gemini, Some(GKEY));
    mistral.script([Script::Reply(pieces(&["Bonjour", " alice"]))]);
    gemini.script([Script::Reply(pieces(&["Hi", " from Gemini"]))]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![
            ai(&format!(
                "{{name: MISTRAL, provider: mistral, model: mistral-small-latest, base_url: '{}/v1', api_key_env: OVERLAY_E2E_KEY_MISTRAL}}",
                mistral.url
            )),
            ai(&format!(
                "{{name: GEMINI, provider: gemini, model: gemini-2.5-flash, base_url: '{}/v1beta', api_key_env: OVERLAY_E2E_KEY_GEMINI}}",
                gemini.url
            )),
        ],
    )
    .await;
    let peer = o.url("peer/alice");
    send(&peer, "mistral", "salut").await;
    send(&peer, "Gemini", "hello").await;

    let h = history_of_len(&peer, "MISTRAL", 2).await;
    assert_eq!(
        h[1]["sender"], "MISTRAL",
        "fixes original: labelled MISTRAL"
    );
    assert_eq!(h[1]["message"], "Bonjour alice");
    let h = history_of_len(&peer, "GEMINI", 2).await;
    assert_eq!(h[1]["sender"], "GEMINI");
    assert_eq!(h[1]["message"], "Hi from Gemini");
    all_delivered(&peer, "alice", "MISTRAL").await;
    all_delivered(&peer, "alice", "GEMINI").await;

    let m = mistral.only_request();
    assert_eq!(m.path, "/v1/chat/completions");
    assert_eq!(
        m.header("authorization"),
        Some(format!("Bearer {MKEY}").as_str())
    );
    let g = gemini.only_request();
    assert_eq!(
        g.header("x-goog-api-key"),
        Some(GKEY),
        "fixes original: the Gemini key is on the request"
    );
    assert!(!g.path.contains(GKEY), "never in the URL: {}", g.path);
    assert!(
        g.path
            .starts_with("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
        "{}",
        g.path
    );
    assert_eq!(g.body["contents"][0]["role"], "user");
    key_shown_nowhere(&o, "alice", &["MISTRAL", "GEMINI"], GKEY).await;
    key_shown_nowhere(&o, "alice", &["MISTRAL", "GEMINI"], MKEY).await;
}

// ---------------------------------------------------------------- (e) mid-stream failure

#[actix_web::test]
async fn a_reply_that_breaks_off_mid_stream_shows_the_partial_text_and_an_error_once() {
    const KEY: &str = "sk-e2e-break-key-0006";
    std::env::set_var("OVERLAY_E2E_KEY_BREAK", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::ErrorAfter(pieces(&["Par", "tial"])),
        Script::Reply(pieces(&["Fine now."])),
    ]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_BREAK")],
    )
    .await;
    let peer = o.url("peer/alice");
    let mut page = PageFeed::open(&peer).await;

    send(&peer, "BOT", "tell me").await;
    let (chunks, report) = page.reply_from("BOT").await;
    let id = report["id"].as_str().unwrap();
    assert_eq!(
        streamed_text(&chunks, id),
        "Partial",
        "the page saw it stream"
    );
    assert_eq!(report["error"], true);
    let text = report["text"].as_str().unwrap();
    assert!(
        text.starts_with("Partial\n\n[The reply was cut off here.] "),
        "{text}"
    );
    assert!(text.contains("broke off"), "{text}");
    all_failed(&peer, "alice", "BOT").await;
    let h = history(&peer, "BOT").await;
    assert_eq!(
        said(&h),
        pairs(&[("alice", "tell me"), ("BOT", text)]),
        "stored once"
    );
    assert_eq!(
        fake.requests().len(),
        1,
        "not retried after the first token"
    );

    // The failed reply is not part of the memory: the next request has no assistant turn.
    send(&peer, "BOT", "again?").await;
    history_of_len(&peer, "BOT", 4).await;
    assert_eq!(
        roles(&fake.requests()[1].body),
        pairs(&[("user", "[alice]: tell me\n\n[alice]: again?")])
    );
}

// ---------------------------------------------------------------- stop and regenerate

/// Reads the page feed until the reply streaming from `from` has shown `text`; answers its id.
async fn streamed_until(page: &mut PageFeed, from: &str, text: &str) -> String {
    let mut chunks = Vec::new();
    loop {
        let ev = page.next().await;
        if ev["type"] == "stream" && ev["from"] == from {
            chunks.push(ev);
            let id = chunks[0]["id"].as_str().unwrap().to_string();
            if streamed_text(&chunks, &id) == text {
                return id;
            }
        }
    }
}

#[actix_web::test]
async fn stopping_a_reply_drops_its_call_and_keeps_what_arrived_marked_stopped() {
    const KEY: &str = "sk-e2e-stop-key-0011";
    std::env::set_var("OVERLAY_E2E_KEY_STOP", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::HoldAfter(pieces(&["Once", " upon"])),
        Script::Reply(pieces(&["a time."])),
    ]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_STOP")],
    )
    .await;
    let peer = o.url("peer/alice");
    let mut page = PageFeed::open(&peer).await;

    send(&peer, "BOT", "tell me a story").await;
    let id = streamed_until(&mut page, "BOT", "Once upon").await;
    // While it writes, it cannot be asked again.
    let (s, v) = post_json(
        &format!("{peer}/api/v1/conversations/BOT/regenerate"),
        &json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("still writing"), "{v}");

    let (s, v) = post_json(&format!("{peer}/api/v1/conversations/bot/stop"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stopped"], true, "{v}");
    let (_, reply) = page.reply_from("BOT").await;
    assert_eq!(reply["id"], id.as_str(), "the streamed reply, made final");
    assert_eq!(reply["text"], "Once upon\n\n[Stopped.]");
    assert_eq!(reply["error"], false);
    all_delivered(&peer, "alice", "BOT").await;
    // The provider's connection was closed: it stops writing (and billing).
    eventually("the upstream call closed", || async { fake.hung_up() == 1 }).await;

    // Nothing is being written now.
    let (s, v) = post_json(&format!("{peer}/api/v1/conversations/BOT/stop"), &json!({})).await;
    assert_eq!(
        (s, v["stopped"].clone()),
        (StatusCode::OK, json!(false)),
        "{v}"
    );

    // The model is reminded of what it had said before it was stopped.
    send(&peer, "BOT", "go on").await;
    let (_, next) = page.reply_from("BOT").await;
    assert_eq!(next["text"], "a time.");
    assert_eq!(
        roles(&fake.requests()[1].body),
        pairs(&[
            ("user", "[alice]: tell me a story"),
            ("assistant", "Once upon"),
            ("user", "[alice]: go on")
        ])
    );
    assert_eq!(
        history(&peer, "BOT").await.len(),
        4,
        "each reply stored once"
    );

    // Both calls are counted in the proxy's /metrics: how each ended, and the tokens the
    // provider reported (the stopped one reported none).
    let m = crate::metrics::scrape(&o.url("proxy/alice")).await;
    let calls = |outcome| {
        crate::metrics::value(
            &m,
            "overlay_ai_requests_total",
            &[("endpoint", "BOT"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (calls("stopped"), calls("ok"), calls("error")),
        (1.0, 1.0, 0.0)
    );
    let tokens = |kind| {
        crate::metrics::value(
            &m,
            "overlay_ai_tokens_total",
            &[("endpoint", "BOT"), ("kind", kind)],
        )
    };
    assert_eq!((tokens("input"), tokens("output")), (9.0, 1.0));
    let first = crate::metrics::value(
        &m,
        "overlay_ai_time_to_first_token_seconds",
        &[("endpoint", "BOT")],
    );
    assert_eq!(first, 2.0, "both calls had a first token");
}

#[actix_web::test]
async fn regenerating_takes_back_the_last_answer_and_asks_again() {
    const KEY: &str = "sk-e2e-regen-key-0012";
    std::env::set_var("OVERLAY_E2E_KEY_REGEN", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::Reply(pieces(&["First", " try."])),
        Script::Reply(pieces(&["Second", " try."])),
        Script::Reply(pieces(&["You're welcome."])),
    ]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_REGEN")],
    )
    .await;
    let peer = o.url("peer/alice");
    let regenerate = |with: &str| format!("{peer}/api/v1/conversations/{with}/regenerate");
    let mut page = PageFeed::open(&peer).await;

    // Nothing to answer yet.
    let (s, v) = post_json(&regenerate("BOT"), &json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("nothing for BOT to answer"), "{v}");

    send(&peer, "BOT", "hi").await;
    let (_, first) = page.reply_from("BOT").await;
    assert_eq!(first["text"], "First try.");
    all_delivered(&peer, "alice", "BOT").await;

    let (s, v) = post_json(&regenerate("BOT"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (chunks, second) = page.reply_from("BOT").await;
    assert_eq!(second["text"], "Second try.");
    assert_ne!(
        second["id"], first["id"],
        "a new answer, stored beside the old"
    );
    assert_eq!(
        streamed_text(&chunks, second["id"].as_str().unwrap()),
        "Second try.",
        "it streamed like any reply"
    );
    assert_eq!(
        roles(&fake.requests()[1].body),
        pairs(&[("user", "[alice]: hi")]),
        "asked again without the answer taken back"
    );

    // The conversation goes on from the new answer.
    send(&peer, "BOT", "thanks").await;
    let (_, third) = page.reply_from("BOT").await;
    assert_eq!(third["text"], "You're welcome.");
    assert_eq!(
        roles(&fake.requests()[2].body),
        pairs(&[
            ("user", "[alice]: hi"),
            ("assistant", "Second try."),
            ("user", "[alice]: thanks")
        ])
    );
    assert_eq!(
        said(&history(&peer, "BOT").await),
        pairs(&[
            ("alice", "hi"),
            ("BOT", "First try."),
            ("BOT", "Second try."),
            ("alice", "thanks"),
            ("BOT", "You're welcome.")
        ])
    );

    // Refused, saying why, and nothing asked: not an AI, not a name.
    let (s, v) = post_json(&regenerate("nobody"), &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v.to_string().contains("not an AI endpoint"), "{v}");
    let (s, v) = post_json(&regenerate("no%20such"), &json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(fake.requests().len(), 3);
}

#[actix_web::test]
async fn a_message_sent_while_an_answer_is_regenerated_is_answered_after_it() {
    const KEY: &str = "sk-e2e-regen-wait-key-0013";
    std::env::set_var("OVERLAY_E2E_KEY_REGEN_WAIT", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::Reply(pieces(&["A."])),
        Script::HoldAfter(pieces(&["Writing"])),
        Script::Reply(pieces(&["B."])),
    ]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_REGEN_WAIT")],
    )
    .await;
    let peer = o.url("peer/alice");
    let mut page = PageFeed::open(&peer).await;
    send(&peer, "BOT", "hi").await;
    page.reply_from("BOT").await;

    let (s, v) = post_json(
        &format!("{peer}/api/v1/conversations/BOT/regenerate"),
        &json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    streamed_until(&mut page, "BOT", "Writing").await;
    // Sent while the new answer is being written: it waits for that answer to end.
    send(&peer, "BOT", "next").await;
    let (s, v) = post_json(&format!("{peer}/api/v1/conversations/BOT/stop"), &json!({})).await;
    assert_eq!(
        (s, v["stopped"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    let (_, stopped) = page.reply_from("BOT").await;
    assert_eq!(stopped["text"], "Writing\n\n[Stopped.]");
    let (_, next) = page.reply_from("BOT").await;
    assert_eq!(next["text"], "B.");
    assert_eq!(
        roles(&fake.requests()[2].body),
        pairs(&[
            ("user", "[alice]: hi"),
            ("assistant", "Writing"),
            ("user", "[alice]: next")
        ]),
        "asked after the regenerated answer, which it sees"
    );
    all_delivered(&peer, "alice", "BOT").await;
}

#[actix_web::test]
async fn a_failed_regenerate_and_a_reply_stopped_before_any_text_leave_the_memory_as_it_was() {
    const KEY: &str = "sk-e2e-regen-fail-key-0014";
    std::env::set_var("OVERLAY_E2E_KEY_REGEN_FAIL", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::Reply(pieces(&["Kept."])),
        Script::Status {
            status: 400,
            headers: vec![],
            body: crate::ai::fake::native_error(Kind::OpenAi, 400, "bad request"),
        },
        Script::SlowFirstByte(
            Duration::from_secs(30),
            Box::new(Script::Reply(pieces(&["Too late."]))),
        ),
        Script::Reply(pieces(&["Fine."])),
    ]);
    let o = overlay_with(
        &[("alice", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_REGEN_FAIL")],
    )
    .await;
    let peer = o.url("peer/alice");
    let mut page = PageFeed::open(&peer).await;
    send(&peer, "BOT", "q").await;
    page.reply_from("BOT").await;

    // Asked again, the provider fails: the user is told, and the model keeps its answer.
    let (s, v) = post_json(
        &format!("{peer}/api/v1/conversations/BOT/regenerate"),
        &json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (_, failed) = page.reply_from("BOT").await;
    assert_eq!(failed["error"], true, "{failed}");
    assert!(
        failed["text"].as_str().unwrap().contains("bad request"),
        "{failed}"
    );

    // Stopped before it wrote anything: said so, and nothing remembered.
    send(&peer, "BOT", "q2").await;
    eventually("the model asked", || async { fake.requests().len() == 3 }).await;
    let (s, v) = post_json(&format!("{peer}/api/v1/conversations/BOT/stop"), &json!({})).await;
    assert_eq!(
        (s, v["stopped"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    let (_, stopped) = page.reply_from("BOT").await;
    assert_eq!(stopped["text"], "[Stopped before BOT wrote anything.]");
    assert_eq!(stopped["error"], false);

    send(&peer, "BOT", "q3").await;
    let (_, fine) = page.reply_from("BOT").await;
    assert_eq!(fine["text"], "Fine.");
    assert_eq!(
        roles(&fake.requests()[3].body),
        pairs(&[
            ("user", "[alice]: q"),
            ("assistant", "Kept."),
            ("user", "[alice]: q2\n\n[alice]: q3")
        ]),
        "the first answer kept, the stopped one never said"
    );
}

// ---------------------------------------------------------------- (f) auto-reply

#[actix_web::test]
async fn an_ai_reply_is_never_answered_by_auto_reply() {
    const KEY: &str = "sk-e2e-auto-key-0007";
    std::env::set_var("OVERLAY_E2E_KEY_AUTO", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let o = overlay_with(
        &[("alice", &["I'm away"]), ("bob", &[])],
        vec![bot_at(&fake, "OVERLAY_E2E_KEY_AUTO")],
    )
    .await;
    let (alice, bob) = (o.url("peer/alice"), o.url("peer/bob"));
    let stats = |peer: String| async move {
        get_json(&format!("{peer}/api/v1/me")).await["auto_reply"].clone()
    };

    send(&alice, "BOT", "hi").await;
    history_of_len(&alice, "BOT", 2).await;
    eventually(
        "alice's auto-reply decided about the AI's reply",
        || async { stats(alice.clone()).await["seen"] == 1 },
    )
    .await;
    assert_eq!(stats(alice.clone()).await["answered"], 0);

    // Auto-reply is on: a person's message is answered.
    send(&bob, "alice", "are you there?").await;
    let h = history_of_len(&bob, "alice", 2).await;
    assert_eq!(h[1]["message"], "I'm away");
    assert_eq!(stats(alice.clone()).await["answered"], 1);

    assert_eq!(fake.requests().len(), 1, "the AI was asked once");
    assert_eq!(
        said(&history(&alice, "BOT").await),
        pairs(&[("alice", "hi"), ("BOT", "Hello there!")])
    );
}

// ---------------------------------------------------------------- the table changes

#[actix_web::test]
async fn an_endpoint_changed_at_the_controller_is_used_for_the_next_message() {
    const KEY: &str = "sk-e2e-moved-key-0008";
    std::env::set_var("OVERLAY_E2E_KEY_MOVED", KEY);
    // The new address needs no key (a local model, say): the proxy's key stays with the
    // address its own config names, whatever the controller's table says.
    let (old, new) = (
        FakeProvider::start(Kind::OpenAi, Some(KEY)),
        FakeProvider::start(Kind::OpenAi, None),
    );
    old.script([Script::Reply(pieces(&["from the old one"]))]);
    new.script([Script::Reply(pieces(&["from the new one"]))]);
    // The new address is one this proxy's own config names (issue 13: a table edit may not
    // move an AI endpoint to an origin the config does not name).
    let o = overlay_with(
        &[("alice", &[])],
        vec![
            ai(&format!(
                "{{name: BOT, provider: openai, model: m, base_url: '{}/v1', api_key_env: OVERLAY_E2E_KEY_MOVED}}",
                old.url
            )),
            ai(&format!(
                "{{name: LOCAL, provider: openai_compatible, model: m, base_url: '{}/v1'}}",
                new.url
            )),
        ],
    )
    .await;
    let (peer, proxy, controller) = (
        o.url("peer/alice"),
        o.url("proxy/alice"),
        o.url("controller"),
    );
    send(&peer, "BOT", "one").await;
    history_of_len(&peer, "BOT", 2).await;
    let token = admin_token(&o);

    let registered = || async {
        let list = admin_get_json(&token, &format!("{controller}/api/v1/proxies")).await;
        list.as_array()
            .and_then(|l| l.iter().find(|p| p["instance_name"] == "alice"))
            .and_then(|p| p["proxy_id"].as_str().map(str::to_string))
    };
    eventually("alice's proxy registered", || async {
        registered().await.is_some()
    })
    .await;
    let proxy_id = registered().await.expect("registered");
    let new_base = format!("{}/v1", new.url);
    let (s, v) = admin_post_json(
        &token,
        &format!("{controller}/api/update_proxy_endpoints/{proxy_id}"),
        &json!({"endpoints": {"BOT": {"base_url": new_base}}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    eventually("alice's proxy has the new table", || async {
        get_json(&format!("{proxy}/peers")).await["peers"]["BOT"]["base_url"] == new_base
    })
    .await;

    send(&peer, "BOT", "two").await;
    let h = history_of_len(&peer, "BOT", 4).await;
    assert_eq!(h[3]["message"], "from the new one");
    assert_eq!(old.requests().len(), 1);
    assert_eq!(
        roles(&new.only_request().body),
        pairs(&[
            ("user", "[alice]: one"),
            ("assistant", "from the old one"),
            ("user", "[alice]: two")
        ]),
        "the memory stays with the endpoint's name"
    );
    assert_eq!(
        new.only_request().header("authorization"),
        None,
        "a key of this proxy never follows a table edit to another address"
    );
    assert!(old.requests()[0]
        .header("authorization")
        .is_some_and(|h| h.ends_with(KEY)));
}

#[actix_web::test]
async fn a_table_edit_cannot_point_an_ai_endpoint_at_the_controller_or_any_other_origin() {
    const KEY: &str = "sk-e2e-ssrf-key-0013";
    std::env::set_var("OVERLAY_E2E_KEY_SSRF", KEY);
    let (configured, elsewhere) = (
        FakeProvider::start(Kind::OpenAi, Some(KEY)),
        FakeProvider::start(Kind::OpenAi, None),
    );
    configured.script([Script::Reply(pieces(&["configured"]))]);
    elsewhere.script([Script::Reply(pieces(&["elsewhere"]))]);
    let o = overlay_with(
        &[("alice", &[]), ("bob", &[])],
        vec![ai(&format!(
            "{{name: BOT, provider: openai, model: m, base_url: '{}/v1', api_key_env: OVERLAY_E2E_KEY_SSRF}}",
            configured.url
        ))],
    )
    .await;
    let (peer, proxy, controller) = (
        o.url("peer/alice"),
        o.url("proxy/alice"),
        o.url("controller"),
    );
    let token = admin_token(&o);
    let proxy_id = |name: &'static str| {
        let (controller, token) = (controller.clone(), token.clone());
        async move {
            let list = admin_get_json(&token, &format!("{controller}/api/v1/proxies")).await;
            list.as_array()
                .and_then(|l| l.iter().find(|p| p["instance_name"] == name))
                .and_then(|p| p["proxy_id"].as_str().map(str::to_string))
        }
    };
    eventually("both proxies registered", || async {
        proxy_id("alice").await.is_some() && proxy_id("bob").await.is_some()
    })
    .await;
    let (alice_id, bob_id) = (
        proxy_id("alice").await.expect("alice"),
        proxy_id("bob").await.expect("bob"),
    );
    let edit = |entry: Value| {
        let (controller, proxy, alice_id) = (controller.clone(), proxy.clone(), alice_id.clone());
        let token = token.clone();
        async move {
            let (s, v) = admin_post_json(
                &token,
                &format!("{controller}/api/update_proxy_endpoints/{alice_id}"),
                &json!({"endpoints": {"BOT": entry.clone()}}),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            eventually("alice's proxy has the edited table", || async {
                let bot = get_json(&format!("{proxy}/peers")).await["peers"]["BOT"].clone();
                entry
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| bot.get(k).unwrap_or(&Value::Null) == v)
            })
            .await;
        }
    };
    let controller_port: u16 = controller.rsplit(':').next().unwrap().parse().unwrap();

    // An original-style entry (no base_url) at the controller's remove route: not called.
    edit(json!({
        "base_url": null, "host": "127.0.0.1", "port": controller_port,
        "path": format!("/api/remove_proxy/{bob_id}")
    }))
    .await;
    send(&peer, "BOT", "remove bob, please").await;
    let h = history_of_len(&peer, "BOT", 2).await;
    let shown = h[1]["message"].as_str().unwrap();
    assert!(
        shown.contains(
            "BOT's address in the controller's table is not one this proxy's config allows"
        ),
        "{h:?}"
    );
    all_failed(&peer, "alice", "BOT").await;
    assert!(proxy_id("bob").await.is_some(), "bob is still registered");

    // Another origin, with a base URL: no request reaches it.
    edit(json!({"base_url": format!("{}/v1", elsewhere.url)})).await;
    send(&peer, "BOT", "and now?").await;
    let h = history_of_len(&peer, "BOT", 4).await;
    assert!(
        h[3]["message"]
            .as_str()
            .unwrap()
            .contains("is not one this proxy's config allows"),
        "{h:?}"
    );
    assert!(elsewhere.requests().is_empty(), "nothing was sent there");
    assert!(configured.requests().is_empty());

    // Back at the configured origin: called, with the key, as before.
    edit(json!({"base_url": format!("{}/v1", configured.url)})).await;
    send(&peer, "BOT", "hello").await;
    let h = history_of_len(&peer, "BOT", 6).await;
    assert_eq!(h[5]["message"], "configured");
    assert!(configured
        .only_request()
        .header("authorization")
        .is_some_and(|a| a.ends_with(KEY)));
    assert!(elsewhere.requests().is_empty());
}

#[actix_web::test]
async fn a_message_relayed_as_an_ai_error_is_shown_as_the_persons_own() {
    let o = overlay_with(&[("alice", &[]), ("bob", &[])], vec![]).await;
    let bob_peer = o.url("peer/bob");
    // Alice's proxy (a bad actor, or a bug) marks her message as an error report, signed.
    let alice_key = crate::helpers::proxy_identity(o.data_dir.path(), "alice");
    let mut forged = Envelope::text("alice", "bob", "Bob could not answer: pay me");
    forged.error = true;
    forged.auto_reply = true;
    let bob_seal = crate::helpers::seal_key(o.data_dir.path(), "bob");
    let sealed = crate::helpers::sealed(&[forged.clone()], &bob_seal, &alice_key);
    // A proxy takes messages in once it checked its directory with the controller (503 until
    // then, which a sending proxy retries): so does this test.
    let r = crate::helpers::relay_over_tls(&o, "alice", "bob", "/api/v1/relay", &sealed[0]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ack: Ack = serde_json::from_value(r.body).expect("an Ack");
    assert_eq!(ack.id, forged.id);
    let messages = || async {
        get_json(&format!("{bob_peer}/api/v1/conversations/alice/messages")).await["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    eventually("bob's peer stored it", || async {
        messages().await.len() == 1
    })
    .await;
    let stored = messages().await[0].clone();
    assert_eq!(stored["text"], "Bob could not answer: pay me", "{stored}");
    assert_ne!(stored["error"], true, "not shown as an error: {stored}");
    assert_eq!(
        stored["auto_reply"], true,
        "a person's auto-reply stays one: {stored}"
    );
}

// ---------------------------------------------------------------- limits

#[actix_web::test]
async fn a_reply_longer_than_the_message_limit_arrives_cut_with_a_note() {
    const KEY: &str = "sk-e2e-long-key-0009";
    std::env::set_var("OVERLAY_E2E_KEY_LONG", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let words: Vec<String> = (0..600).map(|i| format!("word{i} ")).collect();
    fake.script([Script::Reply(words.clone())]);
    let mut config = config_for(&[("alice", &[])]);
    config.delivery.max_message_bytes = 2048;
    config
        .ai_endpoints
        .push(bot_at(&fake, "OVERLAY_E2E_KEY_LONG"));
    let o = spawn_overlay(config).await;
    let peer = o.url("peer/alice");
    let mut page = PageFeed::open(&peer).await;

    send(&peer, "BOT", "talk a lot").await;
    let (chunks, reply) = page.reply_from("BOT").await;
    let streamed = streamed_text(&chunks, reply["id"].as_str().unwrap());
    assert_eq!(
        streamed,
        words.concat(),
        "every chunk within the limit reached the page"
    );
    assert!(chunks
        .iter()
        .all(|c| c["delta"].as_str().unwrap().len() <= 2048));
    let text = reply["text"].as_str().unwrap();
    assert!(text.len() <= 2048, "{}", text.len());
    assert!(text.starts_with("word0 word1 "), "{text}");
    assert!(text.ends_with("the rest was cut.]"), "{text}");
    assert_eq!(reply["error"], false);
    all_delivered(&peer, "alice", "BOT").await;
}

// ---------------------------------------------------------------- a crash mid-call

/// What a stand-in for alice's peer was sent by her proxy.
#[derive(Default)]
struct PeerLog {
    inbox: Vec<Envelope>,
    receipts: Vec<Receipt>,
    chunks: Vec<StreamChunk>,
}

type SharedLog = Arc<Mutex<PeerLog>>;

async fn fake_inbox(log: web::Data<SharedLog>, e: web::Json<Envelope>) -> HttpResponse {
    let mut log = log.lock().unwrap();
    let duplicate = log.inbox.iter().any(|x| x.id == e.id);
    if !duplicate {
        log.inbox.push(e.0.clone());
    }
    HttpResponse::Ok().json(Ack {
        id: e.0.id,
        duplicate,
    })
}

async fn fake_receipts(log: web::Data<SharedLog>, r: web::Json<Receipt>) -> HttpResponse {
    log.lock().unwrap().receipts.push(r.into_inner());
    HttpResponse::Ok().json(json!({"status": "success", "message": "ok"}))
}

async fn fake_stream(log: web::Data<SharedLog>, c: web::Json<StreamChunk>) -> HttpResponse {
    log.lock().unwrap().chunks.push(c.into_inner());
    HttpResponse::Ok().json(json!({"status": "success", "message": "ok"}))
}

/// Starts the stand-in peer; answers its address and what it was sent.
fn fake_peer() -> (std::net::SocketAddr, SharedLog) {
    let log: SharedLog = Arc::default();
    let data = web::Data::new(log.clone());
    let listener = free_listener();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/api/v1/inbox", web::post().to(fake_inbox))
            .route("/api/v1/receipts", web::post().to(fake_receipts))
            .route("/api/v1/stream", web::post().to(fake_stream))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(0)
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    (addr, log)
}

#[actix_web::test]
async fn a_delivery_retried_after_the_proxy_stopped_mid_call_remembers_the_message_once() {
    const KEY: &str = "sk-e2e-crash-key-0010";
    std::env::set_var("OVERLAY_E2E_KEY_CRASH", KEY);
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    fake.script([
        Script::SlowFirstByte(
            Duration::from_secs(30),
            Box::new(Script::Reply(pieces(&["never seen"]))),
        ),
        Script::Reply(pieces(&["Hello", " once"])),
    ]);
    let (peer_addr, log) = fake_peer();
    let mut config = config_for(&[("alice", &[])]);
    config
        .ai_endpoints
        .push(bot_at(&fake, "OVERLAY_E2E_KEY_CRASH"));
    config.set_instance_listeners("alice", Some(peer_addr), None);
    let dir = tempfile::tempdir().unwrap();

    let first = spawn_proxy(&config, "alice", dir.path(), free_listener()).await;
    let message = Envelope::text("alice", "BOT", "hi");
    let (s, v) = post_json(
        &format!("{}/api/v1/outbox", first.url),
        &serde_json::to_value(&message).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    eventually("the model was asked", || async {
        fake.requests().len() == 1
    })
    .await;
    first.stop().await;

    // Started again on the same store: the queued message is delivered again.
    let _second = spawn_proxy(&config, "alice", dir.path(), free_listener()).await;
    eventually("the reply reached alice's peer", || async {
        !log.lock().unwrap().inbox.is_empty()
    })
    .await;
    eventually("alice's message is delivered", || async {
        log.lock()
            .unwrap()
            .receipts
            .iter()
            .any(|r| r.id == message.id && r.state == DeliveryState::Delivered)
    })
    .await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        roles(&requests[1].body),
        pairs(&[("user", "[alice]: hi")]),
        "the retried message is remembered once"
    );
    let log = log.lock().unwrap();
    assert_eq!(log.inbox.len(), 1);
    let reply = &log.inbox[0];
    assert_eq!((reply.from.as_str(), reply.to.as_str()), ("BOT", "alice"));
    assert_eq!(reply.body.text(), "Hello once");
    assert!(!reply.error);
    let streamed: String = log
        .chunks
        .iter()
        .filter(|c| c.id == reply.id)
        .map(|c| c.delta.as_str())
        .collect();
    assert_eq!(streamed, "Hello once", "chunks carry the reply's id");
}

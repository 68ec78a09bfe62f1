//! Integration tests: the AI adapter against fake providers (tests/it/ai/fake.rs).
//!
//! Each test starts a fake speaking one provider's format, drives an `AiAdapter` actor with
//! `Ask`, and asserts both the exact request sent (URL, auth header, roles, system prompt,
//! required and forbidden fields) and what the user gets (reply, streamed deltas, or error).

pub(crate) mod fake;

use std::time::Duration;

use actix::{Actor, Addr};
use futures_util::StreamExt;
use serde_json::json;

use fake::{native_error, pieces, FakeProvider, Kind, Script};
use overlay::config::AiEndpointConfig;
use overlay::proxy::ai::{
    AiAdapter, AiError, AiReply, Ask, Finish, TimeoutKind, Turn, UpdateEndpoint,
};
use overlay::wire::control_plane::AiEndpoint;

const KEY: &str = "sk-test-fake-key-0123456789";

/// A fake provider, an adapter pointed at it, and the key file the adapter reads.
struct Rig {
    fake: FakeProvider,
    adapter: Addr<AiAdapter>,
    _dir: tempfile::TempDir,
}

fn key_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path.display().to_string()
}

/// An endpoint from config YAML fields (without `name`, `base_url`, key), like config.yaml has it.
fn endpoint(name: &str, fields: &str, base_url: &str, key: Option<&str>) -> AiEndpoint {
    let key = key
        .map(|k| format!(", api_key_file: '{k}'"))
        .unwrap_or_default();
    let yaml = format!("{{name: {name}, base_url: '{base_url}'{key}, {fields}}}");
    let c: AiEndpointConfig = serde_yaml::from_str(&yaml).expect("endpoint yaml");
    AiEndpoint::from_config(&c)
}

/// Starts a fake of `kind` (base URL path `prefix`) and an adapter named `name` with `fields`.
fn rig(kind: Kind, prefix: &str, name: &str, fields: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let needs_key = kind != Kind::Ollama;
    let fake = FakeProvider::start(kind, needs_key.then_some(KEY));
    let key = needs_key.then(|| key_file(&dir));
    let ep = endpoint(
        name,
        fields,
        &format!("{}{prefix}", fake.url),
        key.as_deref(),
    );
    let adapter = AiAdapter::new(name.to_string(), ep).start();
    Rig {
        fake,
        adapter,
        _dir: dir,
    }
}

fn turns(t: &[(&str, &str)]) -> Vec<Turn> {
    t.iter()
        .map(|(s, x)| Turn {
            speaker: s.to_string(),
            text: x.to_string(),
        })
        .collect()
}

/// Asks and collects the streamed deltas.
async fn ask(
    adapter: &Addr<AiAdapter>,
    history: &[(&str, &str)],
) -> (Result<AiReply, AiError>, Vec<String>) {
    let (tx, rx) = futures_channel::mpsc::unbounded();
    let result = adapter
        .send(Ask {
            history: turns(history),
            deltas: Some(tx),
            stop: None,
        })
        .await
        .expect("adapter answers");
    let deltas: Vec<String> = rx.collect().await;
    (result, deltas)
}

const CHAT: &[(&str, &str)] = &[("alice", "hi"), ("BOT", "hello alice"), ("alice", "2+2?")];

fn no_key_in(text: &str) {
    assert!(!text.contains(KEY), "the key leaked: {text}");
    assert!(!text.contains("sk-test"), "part of the key leaked: {text}");
}

// ---------------------------------------------------------------- OpenAI

#[actix_web::test]
async fn openai_streams_a_reply_and_sends_the_conversation_with_a_bearer_key() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: gpt-4o-mini, system_prompt: Be terse., temperature: 0.7, max_tokens: 99",
    );
    r.fake
        .script([Script::Reply(pieces(&["The answer", " is", " 4."]))]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let reply = reply.expect("a reply");
    assert_eq!(reply.text, "The answer is 4.");
    assert_eq!(deltas, ["The answer", " is", " 4."]);
    assert_eq!(reply.finish, Finish::Stop);
    assert_eq!(reply.usage.and_then(|u| u.output_tokens), Some(3));

    let req = r.fake.only_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.body,
        json!({"model":"gpt-4o-mini","messages":[
            {"role":"system","content":"Be terse."},
            {"role":"user","content":"[alice]: hi"},
            {"role":"assistant","content":"hello alice"},
            {"role":"user","content":"[alice]: 2+2?"}],
          "temperature":0.7,"max_completion_tokens":99,"stream":true,
          "stream_options":{"include_usage":true}})
    );
}

#[actix_web::test]
async fn openai_without_streaming_answers_in_one_piece() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: gpt-4o-mini, stream: false",
    );
    r.fake.script([Script::Reply(pieces(&["Four."]))]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "Four.");
    assert_eq!(deltas, ["Four."]);
    let req = r.fake.only_request();
    assert!(req.body.get("stream").is_none() && req.body.get("stream_options").is_none());
}

#[actix_web::test]
async fn an_openai_reasoning_model_gets_a_developer_prompt_and_no_temperature() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: gpt-5-mini, system_prompt: S, temperature: 0.7, max_tokens: 50",
    );
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.expect("the fake accepts it").text, "Hello there!");
    let req = r.fake.only_request();
    assert_eq!(
        req.body["messages"][0],
        json!({"role":"developer","content":"S"})
    );
    assert!(req.body.get("temperature").is_none());
    assert_eq!(req.body["max_completion_tokens"], 50);
}

#[actix_web::test]
async fn a_missing_key_variable_is_named_and_nothing_is_sent() {
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let ep = endpoint(
        "BOT",
        "provider: openai, model: m, api_key_env: OVERLAY_TEST_UNSET_OPENAI_KEY",
        &format!("{}/v1", fake.url),
        None,
    );
    let adapter = AiAdapter::new("BOT".into(), ep).start();
    let (reply, deltas) = ask(&adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(matches!(e, AiError::MissingKey { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "No API key for OpenAI: OVERLAY_TEST_UNSET_OPENAI_KEY is not set where this proxy runs. Start the proxy again with OVERLAY_TEST_UNSET_OPENAI_KEY set in its environment (or give the endpoint an api_key_file), then send the message again."
    );
    assert!(deltas.is_empty());
    assert!(fake.requests().is_empty());
}

#[actix_web::test]
async fn the_key_is_read_from_the_environment_at_call_time() {
    let var = "OVERLAY_TEST_AI_KEY_FROM_ENV";
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let ep = endpoint(
        "BOT",
        &format!("provider: openai, model: m, api_key_env: {var}"),
        &format!("{}/v1", fake.url),
        None,
    );
    let adapter = AiAdapter::new("BOT".into(), ep).start();
    // Set after the adapter started: it is read per call, not at startup.
    std::env::set_var(var, KEY);
    let (reply, _) = ask(&adapter, CHAT).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(
        fake.only_request().header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[actix_web::test]
async fn a_wrong_key_is_a_401_message_that_never_shows_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(Kind::OpenAi, Some("sk-the-right-one-000000"));
    let ep = endpoint(
        "BOT",
        "provider: openai, model: m",
        &format!("{}/v1", fake.url),
        Some(&key_file(&dir)),
    );
    let adapter = AiAdapter::new("BOT".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(e, AiError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("OpenAI refused the API key (HTTP 401): Incorrect API key provided: ***"),
        "{shown}"
    );
    assert!(shown.contains("Check the key file"), "{shown}");
    no_key_in(&shown);
    no_key_in(&format!("{e:?}"));
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
}

#[actix_web::test]
async fn a_429_with_retry_after_is_retried_then_succeeds() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([
        Script::Status {
            status: 429,
            headers: vec![
                ("retry-after-ms".into(), "30".into()),
                ("retry-after".into(), "1".into()),
            ],
            body: native_error(Kind::OpenAi, 429, "Rate limit reached for requests"),
        },
        Script::Reply(pieces(&["ok"])),
    ]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "ok");
    assert_eq!(deltas, ["ok"]);
    let reqs = r.fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, reqs[1].body, "the same request is sent again");
}

#[actix_web::test]
async fn an_exhausted_quota_is_not_retried() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([Script::Status {
        status: 429,
        headers: vec![("retry-after-ms".into(), "10".into())],
        body: json!({"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}).to_string(),
    }]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(matches!(e, AiError::Quota { .. }), "{e:?}");
    assert!(e.to_string().contains("Retrying will not help"), "{e}");
    assert_eq!(r.fake.requests().len(), 1);
}

#[actix_web::test]
async fn a_rate_limit_asking_for_a_long_wait_is_reported_at_once_with_the_wait() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([Script::Status {
        status: 429,
        headers: vec![("retry-after".into(), "600".into())],
        body: native_error(Kind::OpenAi, 429, "Rate limit reached for requests"),
    }]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(e, AiError::RateLimited { attempts: 1, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "OpenAI is rate limiting this key (HTTP 429): Rate limit reached for requests \
         (it asks to wait 10m before trying again). Try again in a moment."
    );
    assert_eq!(r.fake.requests().len(), 1);
}

#[actix_web::test]
async fn an_unreadable_key_file_is_named() {
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let ep = endpoint(
        "BOT",
        "provider: openai, model: m",
        &format!("{}/v1", fake.url),
        Some("/nonexistent/overlay-test/key"),
    );
    let adapter = AiAdapter::new("BOT".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(matches!(e, AiError::KeyFile { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("Cannot read the API key file /nonexistent/overlay-test/key: "),
        "{e}"
    );
    assert!(fake.requests().is_empty());
}

#[actix_web::test]
async fn persistent_overload_gives_up_after_the_retries_and_says_so() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    let overloaded = || Script::Status {
        status: 503,
        headers: vec![("retry-after-ms".into(), "10".into())],
        body: native_error(Kind::OpenAi, 503, "The engine is currently overloaded"),
    };
    r.fake.script([
        overloaded(),
        overloaded(),
        overloaded(),
        Script::Reply(pieces(&["late"])),
    ]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(
            e,
            AiError::Overloaded {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("after 3 attempts"), "{e}");
    assert_eq!(r.fake.requests().len(), 3);
}

#[actix_web::test]
async fn a_bad_request_is_shown_with_the_providers_words_and_not_retried() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([Script::Status {
        status: 400,
        headers: vec![],
        body: native_error(Kind::OpenAi, 400, "Invalid model 'm'."),
    }]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(
        reply.unwrap_err().to_string(),
        "OpenAI rejected the request (HTTP 400): Invalid model 'm'"
    );
    assert_eq!(r.fake.requests().len(), 1);
}

#[actix_web::test]
async fn an_error_event_after_the_first_token_breaks_the_reply_off_without_a_retry() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake
        .script([Script::ErrorAfter(pieces(&["Par", "tial"]))]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(&e, AiError::BrokeOff { partial, .. } if partial == "Partial"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("OpenAI's reply broke off: OpenAI reported an error mid-way"),
        "{e}"
    );
    assert_eq!(e.partial_text(), "Partial");
    assert_eq!(deltas, ["Par", "tial"]);
    assert_eq!(
        r.fake.requests().len(),
        1,
        "never retried after the first token"
    );
}

#[actix_web::test]
async fn an_error_event_before_the_first_token_is_retried() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake
        .script([Script::ErrorAfter(vec![]), Script::Reply(pieces(&["fine"]))]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "fine");
    assert_eq!(deltas, ["fine"]);
    assert_eq!(r.fake.requests().len(), 2);
}

#[actix_web::test]
async fn a_stream_that_closes_without_done_is_a_broken_reply() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([Script::CloseAfter(pieces(&["Half"]))]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(&e, AiError::BrokeOff { partial, .. } if partial == "Half"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("closed before the reply was complete"),
        "{e}"
    );
}

#[actix_web::test]
async fn a_whole_reply_cut_short_of_its_content_length_is_a_broken_connection_and_retried() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: m, stream: false",
    );
    r.fake.script([
        Script::CutShort(pieces(&["Four, as it happens."])),
        Script::Reply(pieces(&["Four."])),
    ]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.expect("the second attempt's reply").text, "Four.");
    assert_eq!(deltas, ["Four."], "nothing of the cut answer was shown");
    assert_eq!(r.fake.requests().len(), 2);
}

#[actix_web::test]
async fn a_whole_reply_always_cut_short_ends_as_a_broken_connection_not_an_unreadable_reply() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: m, stream: false",
    );
    let cut = || Script::CutShort(pieces(&["Four, as it happens."]));
    r.fake
        .script([cut(), cut(), cut(), Script::Reply(pieces(&["late"]))]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(&e, AiError::Unreachable { attempts: 3, .. }),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(shown.contains("connection broke"), "{shown}");
    assert!(!shown.contains("cannot read"), "{shown}");
    assert!(deltas.is_empty(), "{deltas:?}");
    assert_eq!(r.fake.requests().len(), 3);
}

#[actix_web::test]
async fn a_connection_reset_mid_stream_is_a_broken_reply() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([Script::ResetAfter(pieces(&["Half"]))]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(&e, AiError::BrokeOff { partial, .. } if partial == "Half"),
        "{e:?}"
    );
    assert_eq!(deltas, ["Half"]);
}

#[actix_web::test]
async fn a_content_filter_finish_is_a_safety_block() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([Script::Filtered]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(matches!(e, AiError::Blocked { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "OpenAI blocked this reply for safety reasons (finish reason content_filter)."
    );
}

#[actix_web::test]
async fn a_slow_first_byte_hits_the_first_token_timeout() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: m, timeouts: {first_token_ms: 300, total_secs: 30}",
    );
    r.fake.script([Script::SlowFirstByte(
        Duration::from_secs(3),
        Box::new(Script::Reply(pieces(&["late"]))),
    )]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(
            e,
            AiError::Timeout {
                kind: TimeoutKind::FirstToken,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "OpenAI did not answer in time: no reply started within 300ms (first-token timeout)."
    );
    assert!(deltas.is_empty());
}

#[actix_web::test]
async fn a_stall_mid_stream_hits_the_idle_timeout_and_keeps_what_arrived() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: m, timeouts: {idle_ms: 300, total_secs: 30}",
    );
    r.fake.script([Script::StallAfter(
        pieces(&["Hel", "lo"]),
        Duration::from_secs(3),
    )]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(&e, AiError::Timeout { kind: TimeoutKind::Idle, partial, .. } if partial == "Hello"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("OpenAI's reply broke off: no data arrived for 300ms"),
        "{e}"
    );
    assert_eq!(deltas, ["Hel", "lo"]);
}

#[actix_web::test]
async fn the_total_timeout_bounds_a_slow_reply() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: m, timeouts: {total_ms: 300}",
    );
    r.fake.script([Script::SlowFirstByte(
        Duration::from_secs(3),
        Box::new(Script::Reply(pieces(&["late"]))),
    )]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(
            e,
            AiError::Timeout {
                kind: TimeoutKind::Total,
                ..
            }
        ),
        "{e:?}"
    );
}

// ---------------------------------------------------------------- Anthropic

#[actix_web::test]
async fn anthropic_gets_x_api_key_its_version_a_top_level_system_and_max_tokens() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: claude-sonnet-4-5, system_prompt: Be terse.",
    );
    r.fake.script([Script::Reply(pieces(&["Four", "."]))]);
    let history = [("alice", "hi"), ("ANTHROPIC", "hello"), ("alice", "2+2?")];
    let (reply, deltas) = ask(&r.adapter, &history).await;
    let reply = reply.expect("a reply");
    assert_eq!(reply.text, "Four.");
    assert_eq!(deltas, ["Four", "."]);
    assert_eq!(
        reply.usage.and_then(|u| u.output_tokens),
        Some(3),
        "cumulative usage: the last value"
    );

    let req = r.fake.only_request();
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some(KEY));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert!(req.header("authorization").is_none());
    assert_eq!(
        req.body,
        json!({"model":"claude-sonnet-4-5","max_tokens":1024,"system":"Be terse.",
               "messages":[{"role":"user","content":"[alice]: hi"},
                           {"role":"assistant","content":"hello"},
                           {"role":"user","content":"[alice]: 2+2?"}],
               "stream":true})
    );
}

#[actix_web::test]
async fn anthropic_auth_style_and_api_version_are_configurable() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c, auth_style: bearer, api_version: 2026-10-21, stream: false",
    );
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "Hello there!");
    let req = r.fake.only_request();
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(req.header("x-api-key").is_none());
    assert_eq!(req.header("anthropic-version"), Some("2026-10-21"));
}

#[actix_web::test]
async fn anthropic_temperature_is_clamped_and_sent_without_top_p() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c, temperature: 1.5, top_p: 0.9, max_tokens: 300",
    );
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert!(
        reply.is_ok(),
        "the fake refuses temperature with top_p: {reply:?}"
    );
    let req = r.fake.only_request();
    assert_eq!(req.body["temperature"], 1.0);
    assert_eq!(req.body["max_tokens"], 300);
    assert!(req.body.get("top_p").is_none());
}

#[actix_web::test]
async fn an_anthropic_overload_before_any_text_is_retried_honouring_retry_after() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c",
    );
    r.fake.script([
        Script::Status {
            status: 529,
            headers: vec![("retry-after".into(), "0".into())],
            body: native_error(Kind::Anthropic, 529, "Overloaded"),
        },
        Script::ErrorAfter(vec![]),
        Script::Reply(pieces(&["at last"])),
    ]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "at last");
    assert_eq!(
        r.fake.requests().len(),
        3,
        "529, then an overloaded error event, then success"
    );
}

#[actix_web::test]
async fn an_anthropic_error_event_after_text_breaks_the_reply_off() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c",
    );
    r.fake.script([Script::ErrorAfter(pieces(&["Once upon"]))]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Anthropic's reply broke off: Anthropic reported an error mid-way: Overloaded."
    );
    assert_eq!(e.partial_text(), "Once upon");
    assert_eq!(deltas, ["Once upon"]);
    assert_eq!(r.fake.requests().len(), 1);
}

#[actix_web::test]
async fn an_anthropic_stream_without_message_stop_is_a_broken_reply() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c",
    );
    r.fake.script([Script::CloseAfter(pieces(&["Half"]))]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert!(matches!(reply, Err(AiError::BrokeOff { .. })), "{reply:?}");
}

#[actix_web::test]
async fn an_anthropic_refusal_is_a_safety_block() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c",
    );
    r.fake.script([Script::Filtered]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(
        reply.unwrap_err().to_string(),
        "Anthropic blocked this reply for safety reasons (finish reason refusal)."
    );
}

#[actix_web::test]
async fn anthropic_roles_alternate_even_when_the_user_spoke_twice() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c",
    );
    let history = [
        ("ANTHROPIC", "welcome"),
        ("alice", "hi"),
        ("bob", "and me"),
        ("alice", ""),
    ];
    let (reply, _) = ask(&r.adapter, &history).await;
    assert!(
        reply.is_ok(),
        "the fake enforces alternation and a user first: {reply:?}"
    );
    assert_eq!(
        r.fake.only_request().body["messages"],
        json!([{"role":"user","content":"[alice]: hi\n\n[bob]: and me"}])
    );
}

#[actix_web::test]
async fn an_original_anthropic_entry_with_its_key_in_headers_still_works() {
    let fake = FakeProvider::start(Kind::Anthropic, Some(KEY));
    let port: u16 = fake.url.rsplit(':').next().unwrap().parse().unwrap();
    // compat: the original's entry, with the key and version among its headers.
    let ep: AiEndpoint = serde_json::from_value(json!({
        "host": "127.0.0.1", "port": port, "is_api": true, "path": "/v1/messages",
        "headers": {"x-api-key": KEY, "anthropic-version": "2023-06-01", "Content-Type": "application/json"},
        "transform_request": "anthropic_chat", "transform_response": "anthropic_chat",
        "model_config": {"model": "claude-3-haiku", "max_tokens": 200}
    }))
    .unwrap();
    let adapter = AiAdapter::new("ANTHROPIC".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "Hello there!");
    let req = fake.only_request();
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some(KEY));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(req.body["max_tokens"], 200);
    assert_eq!(req.body["model"], "claude-3-haiku");
}

// ---------------------------------------------------------------- Gemini

#[actix_web::test]
async fn gemini_streams_with_alt_sse_and_the_key_in_a_header_never_the_url() {
    let r = rig(
        Kind::Gemini,
        "/v1beta",
        "GEMINI",
        "provider: gemini, model: gemini-2.5-flash, system_prompt: Be terse., temperature: 0.7, max_tokens: 64",
    );
    r.fake.script([Script::Reply(pieces(&["Fo", "ur"]))]);
    let history = [("alice", "hi"), ("GEMINI", "hello"), ("alice", "2+2?")];
    let (reply, deltas) = ask(&r.adapter, &history).await;
    let reply = reply.expect("a reply");
    assert_eq!(reply.text, "Four");
    assert_eq!(deltas, ["Fo", "ur"]);
    assert_eq!(reply.usage.and_then(|u| u.input_tokens), Some(7));

    let req = r.fake.only_request();
    assert_eq!(
        req.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(req.header("x-goog-api-key"), Some(KEY));
    assert!(req.header("authorization").is_none());
    assert_eq!(
        req.body,
        json!({"contents":[{"role":"user","parts":[{"text":"[alice]: hi"}]},
                           {"role":"model","parts":[{"text":"hello"}]},
                           {"role":"user","parts":[{"text":"[alice]: 2+2?"}]}],
               "systemInstruction":{"parts":[{"text":"Be terse."}]},
               "generationConfig":{"temperature":0.7,"maxOutputTokens":64}})
    );
}

#[actix_web::test]
async fn gemini_without_streaming_calls_generate_content_on_the_configured_version() {
    let r = rig(
        Kind::Gemini,
        "/v1",
        "GEMINI",
        "provider: gemini, model: gemini-3, stream: false",
    );
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "Hello there!");
    assert_eq!(
        r.fake.only_request().path,
        "/v1/models/gemini-3:generateContent"
    );
}

#[actix_web::test]
async fn a_gemini_request_without_a_key_gets_the_native_401_shown() {
    let fake = FakeProvider::start(Kind::Gemini, Some(KEY));
    let ep = endpoint(
        "GEMINI",
        "provider: gemini, model: g, auth_style: none",
        &format!("{}/v1beta", fake.url),
        None,
    );
    let adapter = AiAdapter::new("GEMINI".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(e, AiError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("You didn't provide an API key"),
        "{e}"
    );
    assert!(fake.only_request().header("x-goog-api-key").is_none());
}

#[actix_web::test]
async fn gemini_thoughts_are_not_shown() {
    let r = rig(
        Kind::Gemini,
        "/v1beta",
        "GEMINI",
        "provider: gemini, model: g",
    );
    r.fake
        .script([Script::WithThought("secret plan".into(), "Answer".into())]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "Answer");
    assert_eq!(deltas, ["Answer"]);
}

#[actix_web::test]
async fn a_gemini_prompt_block_is_shown_as_a_safety_block() {
    let r = rig(
        Kind::Gemini,
        "/v1beta",
        "GEMINI",
        "provider: gemini, model: g",
    );
    r.fake.script([Script::PromptBlock]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(
        reply.unwrap_err().to_string(),
        "Gemini blocked this reply for safety reasons (the prompt was blocked: PROHIBITED_CONTENT)."
    );
    assert_eq!(r.fake.requests().len(), 1);
}

#[actix_web::test]
async fn a_gemini_safety_finish_with_no_content_is_a_safety_block() {
    let r = rig(
        Kind::Gemini,
        "/v1beta",
        "GEMINI",
        "provider: gemini, model: g",
    );
    r.fake.script([Script::Filtered]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(
        reply.unwrap_err().to_string(),
        "Gemini blocked this reply for safety reasons (finish reason SAFETY)."
    );
}

#[actix_web::test]
async fn a_gemini_stop_without_parts_is_asked_once_more_then_shown_as_empty() {
    let r = rig(
        Kind::Gemini,
        "/v1beta",
        "GEMINI",
        "provider: gemini, model: g",
    );
    r.fake
        .script([Script::StopWithoutParts, Script::StopWithoutParts]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(matches!(e, AiError::Empty { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "Gemini sent an empty reply (finish reason STOP)."
    );
    assert!(deltas.is_empty());
    assert_eq!(r.fake.requests().len(), 2);
}

#[actix_web::test]
async fn a_gemini_503_is_retried() {
    let r = rig(
        Kind::Gemini,
        "/v1beta",
        "GEMINI",
        "provider: gemini, model: g",
    );
    r.fake.script([
        Script::Status {
            status: 503,
            headers: vec![("retry-after-ms".into(), "10".into())],
            body: native_error(
                Kind::Gemini,
                503,
                "The model is overloaded. Please try again later.",
            ),
        },
        Script::Reply(pieces(&["ok"])),
    ]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "ok");
    assert_eq!(r.fake.requests().len(), 2);
}

#[actix_web::test]
async fn a_gemini_connection_reset_after_text_breaks_the_reply_off() {
    let r = rig(
        Kind::Gemini,
        "/v1beta",
        "GEMINI",
        "provider: gemini, model: g",
    );
    r.fake.script([Script::ErrorAfter(pieces(&["Some"]))]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(&e, AiError::BrokeOff { partial, .. } if partial == "Some"),
        "{e:?}"
    );
}

#[actix_web::test]
async fn an_original_gemini_entry_sends_its_params_key_as_a_header() {
    let fake = FakeProvider::start(Kind::Gemini, Some(KEY));
    let port = fake.url.rsplit(':').next().unwrap();
    // fixes original: the key in `params` was never put on the request.
    let ep: AiEndpoint = serde_json::from_value(json!({
        "host": "127.0.0.1", "port": port.parse::<u16>().unwrap(), "is_api": true,
        "path": "/v1beta/models/gemini-pro:generateContent",
        "params": {"key": KEY}, "transform_request": "gemini_chat", "transform_response": "gemini_chat",
        "model_config": {"temperature": 0.5}
    }))
    .unwrap();
    let adapter = AiAdapter::new("GEMINI".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "Hello there!");
    let req = fake.only_request();
    assert_eq!(
        req.path,
        "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse"
    );
    assert_eq!(req.header("x-goog-api-key"), Some(KEY));
    assert_eq!(req.body["generationConfig"], json!({"temperature":0.5}));
}

// ---------------------------------------------------------------- Mistral

#[actix_web::test]
async fn mistral_gets_only_fields_it_accepts_and_streams_with_usage() {
    let r = rig(
        Kind::Mistral,
        "/v1",
        "MISTRAL",
        "provider: mistral, model: mistral-small-latest, system_prompt: S, temperature: 0.3, top_p: 0.9, max_tokens: 50",
    );
    r.fake.script([Script::Reply(pieces(&["Bon", "jour"]))]);
    let history = [
        ("alice", "hi"),
        ("MISTRAL", "hello alice"),
        ("alice", "2+2?"),
    ];
    let (reply, deltas) = ask(&r.adapter, &history).await;
    let reply = reply.expect("the fake answers 422 to any unknown field");
    assert_eq!(reply.text, "Bonjour");
    assert_eq!(deltas, ["Bon", "jour"]);
    assert_eq!(reply.usage.and_then(|u| u.output_tokens), Some(2));
    let req = r.fake.only_request();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        req.body,
        json!({"model":"mistral-small-latest","messages":[
            {"role":"system","content":"S"},
            {"role":"user","content":"[alice]: hi"},
            {"role":"assistant","content":"hello alice"},
            {"role":"user","content":"[alice]: 2+2?"}],
          "temperature":0.3,"top_p":0.9,"max_tokens":50,"stream":true})
    );
}

#[actix_web::test]
async fn a_mistral_gateway_429_with_a_bare_body_is_retried() {
    let r = rig(
        Kind::Mistral,
        "/v1",
        "MISTRAL",
        "provider: mistral, model: m",
    );
    r.fake.script([
        Script::Status {
            status: 429,
            headers: vec![("retry-after".into(), "0".into())],
            body: json!({"message":"Requests rate limit exceeded"}).to_string(),
        },
        Script::Reply(pieces(&["ok"])),
    ]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.unwrap().text, "ok");
    assert_eq!(r.fake.requests().len(), 2);
}

#[actix_web::test]
async fn a_mistral_401_says_it_may_also_mean_quota() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(Kind::Mistral, Some("another-key-xyz"));
    let ep = endpoint(
        "MISTRAL",
        "provider: mistral, model: m",
        &format!("{}/v1", fake.url),
        Some(&key_file(&dir)),
    );
    let adapter = AiAdapter::new("MISTRAL".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    let e = reply.unwrap_err().to_string();
    assert!(e.starts_with("Mistral refused the API key (HTTP 401): Unauthorized (Mistral answers the same when the plan's quota is used up)"), "{e}");
}

#[actix_web::test]
async fn a_field_mistral_does_not_know_gets_its_422_shown_in_plain_words() {
    // An OpenAI-compatible endpoint sends stream_options; Mistral refuses unknown fields.
    let r = rig(
        Kind::Mistral,
        "/v1",
        "MISTRAL",
        "provider: openai_compatible, model: m",
    );
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(
        reply.unwrap_err().to_string(),
        "The AI server rejected the request (HTTP 422): body.stream_options: Extra inputs are not permitted"
    );
}

// ---------------------------------------------------------------- OpenAI-compatible (Ollama)

#[actix_web::test]
async fn an_ollama_server_gets_no_key_max_tokens_and_explicit_sampling() {
    let r = rig(
        Kind::Ollama,
        "/v1",
        "LLAMA",
        "provider: openai_compatible, model: llama3.2, temperature: 0.2, top_p: 0.8, max_tokens: 128",
    );
    let (reply, _) = ask(&r.adapter, &[("alice", "hi")]).await;
    assert_eq!(reply.unwrap().text, "Hello there!");
    let req = r.fake.only_request();
    assert!(req.header("authorization").is_none());
    assert_eq!(req.body["max_tokens"], 128);
    assert!(req.body.get("max_completion_tokens").is_none());
    assert_eq!(
        (req.body["temperature"].as_f64(), req.body["top_p"].as_f64()),
        (Some(0.2), Some(0.8))
    );
}

#[actix_web::test]
async fn an_ollama_model_that_is_not_pulled_is_a_clear_error() {
    let r = rig(
        Kind::Ollama,
        "/v1",
        "LLAMA",
        "provider: openai_compatible, model: nope",
    );
    r.fake.script([Script::Status {
        status: 404,
        headers: vec![],
        body: native_error(
            Kind::Ollama,
            404,
            "model \"nope\" not found, try pulling it first",
        ),
    }]);
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert_eq!(
        reply.unwrap_err().to_string(),
        "The AI server rejected the request (HTTP 404): model \"nope\" not found, try pulling it first"
    );
}

// ---------------------------------------------------------------- The adapter itself

#[actix_web::test]
async fn a_second_question_carries_the_first_exchange() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    r.fake.script([
        Script::Reply(pieces(&["Hi alice!"])),
        Script::Reply(pieces(&["4"])),
    ]);
    let (first, _) = ask(&r.adapter, &[("alice", "hello")]).await;
    let first = first.unwrap().text;
    let (second, _) = ask(
        &r.adapter,
        &[("alice", "hello"), ("BOT", &first), ("alice", "2+2?")],
    )
    .await;
    assert_eq!(second.unwrap().text, "4");
    let reqs = r.fake.requests();
    assert_eq!(
        reqs[0].body["messages"],
        json!([{"role":"user","content":"[alice]: hello"}])
    );
    assert_eq!(
        reqs[1].body["messages"],
        json!([{"role":"user","content":"[alice]: hello"},
               {"role":"assistant","content":"Hi alice!"},
               {"role":"user","content":"[alice]: 2+2?"}])
    );
}

#[actix_web::test]
async fn the_history_sent_is_bounded_by_max_turns() {
    let r = rig(
        Kind::OpenAi,
        "/v1",
        "BOT",
        "provider: openai, model: m, history: {max_turns: 1}",
    );
    let (reply, _) = ask(&r.adapter, CHAT).await;
    assert!(reply.is_ok());
    assert_eq!(
        r.fake.only_request().body["messages"],
        json!([{"role":"user","content":"[alice]: 2+2?"}])
    );
}

#[actix_web::test]
async fn an_updated_endpoint_is_used_by_the_next_question() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(Kind::OpenAi, Some(KEY));
    let key = key_file(&dir);
    let base = format!("{}/v1", fake.url);
    let adapter = AiAdapter::new(
        "BOT".into(),
        endpoint("BOT", "provider: openai, model: first", &base, Some(&key)),
    )
    .start();
    assert!(ask(&adapter, CHAT).await.0.is_ok());
    adapter
        .send(UpdateEndpoint {
            endpoint: endpoint("BOT", "provider: openai, model: second", &base, Some(&key)),
        })
        .await
        .unwrap();
    assert!(ask(&adapter, CHAT).await.0.is_ok());
    let models: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.body["model"].clone())
        .collect();
    assert_eq!(models, [json!("first"), json!("second")]);
}

#[actix_web::test]
async fn a_misconfigured_endpoint_answers_with_what_to_fix() {
    let ep: AiEndpoint = serde_json::from_value(json!({
        "host": "example.org", "port": 443, "is_api": true, "model_config": {"model": "m"}
    }))
    .unwrap();
    let adapter = AiAdapter::new("X".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    let e = reply.unwrap_err().to_string();
    assert!(
        e.starts_with("This AI endpoint is misconfigured: cannot tell which API"),
        "{e}"
    );
}

#[actix_web::test]
async fn an_unreachable_server_is_retried_then_reported() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ep = endpoint(
        "LLAMA",
        "provider: openai_compatible, model: m",
        &format!("http://127.0.0.1:{port}/v1"),
        None,
    );
    let adapter = AiAdapter::new("LLAMA".into(), ep).start();
    let (reply, _) = ask(&adapter, CHAT).await;
    let e = reply.unwrap_err();
    assert!(
        matches!(e, AiError::Unreachable { attempts: 3, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "The AI server could not be reached at 127.0.0.1:{port} after 3 attempts"
        )),
        "{e}"
    );
}

#[actix_web::test]
async fn a_conversation_with_nothing_to_answer_sends_nothing() {
    let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
    let (reply, _) = ask(&r.adapter, &[("BOT", "I spoke last"), ("alice", "   ")]).await;
    assert!(matches!(reply, Err(AiError::NothingToAnswer)), "{reply:?}");
    assert!(r.fake.requests().is_empty());
}

#[actix_web::test]
async fn an_ask_without_a_delta_channel_still_gets_the_whole_reply() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: c",
    );
    let reply = r
        .adapter
        .send(Ask {
            history: turns(CHAT),
            deltas: None,
            stop: None,
        })
        .await
        .unwrap();
    assert_eq!(reply.unwrap().text, "Hello there!");
}

// ---------------------------------------------------------------- the key, echoed

/// Standard base64 of `KEY`, padded, and its URL-safe form without padding.
fn key_in_base64() -> [String; 2] {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut std = String::new();
    for chunk in KEY.as_bytes().chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            std.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        std.push_str(&"=".repeat(3 - chunk.len()));
    }
    let url = std.replace('+', "-").replace('/', "_").replace('=', "");
    [std, url]
}

fn no_key_encoding_in(text: &str) {
    no_key_in(text);
    for encoded in key_in_base64() {
        let core = &encoded[..encoded.len() - 4];
        assert!(!text.contains(core), "the key leaked in base64: {text}");
    }
}

#[actix_web::test]
async fn a_key_echoed_raw_or_in_base64_in_a_streamed_reply_is_never_shown() {
    for piece_chars in [1, 3, 7, 1000] {
        let r = rig(Kind::OpenAi, "/v1", "BOT", "provider: openai, model: m");
        r.fake.script([Script::EchoKey {
            text: "Your key is {key} and in base64 {key64}. Keep it safe.".into(),
            piece_chars,
        }]);
        let (reply, deltas) = ask(&r.adapter, CHAT).await;
        let reply = reply.expect("a reply");
        assert_eq!(
            reply.text, "Your key is *** and in base64 ***. Keep it safe.",
            "{piece_chars}"
        );
        let streamed = deltas.concat();
        no_key_encoding_in(&streamed);
        for d in &deltas {
            no_key_encoding_in(d);
        }
        assert!(streamed.starts_with("Your key is ") && streamed.ends_with(". Keep it safe."));
        assert!(
            r.fake
                .only_request()
                .header("authorization")
                .is_some_and(|a| a.ends_with(KEY)),
            "the fake echoed the key it was sent"
        );
    }
}

#[actix_web::test]
async fn a_key_echoed_in_a_whole_reply_is_never_shown() {
    let r = rig(
        Kind::Anthropic,
        "/v1",
        "ANTHROPIC",
        "provider: anthropic, model: m, stream: false",
    );
    r.fake.script([Script::EchoKey {
        text: "{key64} is {key}".into(),
        piece_chars: 1000,
    }]);
    let (reply, deltas) = ask(&r.adapter, CHAT).await;
    assert_eq!(reply.expect("a reply").text, "*** is ***");
    for d in &deltas {
        no_key_encoding_in(d);
    }
}

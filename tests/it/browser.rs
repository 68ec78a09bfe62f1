//! Integration tests: browser. Headless Chromium through chromedriver (WebDriver, fantoccini)
//! drives alice's and bob's real chat pages: alice picks bob, types, presses Enter; the message
//! appears on bob's open page without a reload, and alice's copy turns delivered.
//! Screenshots go to `tests/artifacts/`.
//!
//! The overlay under the pages is the REAL one ([`overlay_under_test`]: controller, both users'
//! proxies and peers, as `overlay up` runs them). alice's proxy is stopped and started again
//! mid-test: her message waits ("waiting for your proxy") and goes once it is back. The AI
//! reply display is fed by posting to alice's peer what her proxy's AI adapter would post
//! (`/api/v1/stream`, `/api/v1/inbox`): no AI API is called.
//!
//! Without `/usr/bin/chromedriver` the test is skipped, saying so past the harness's capture
//! (a line in capitals among the results), unless this is CI (`CI` set, and not `false`, `0`
//! or `no`): then it fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::{client, config_for, spawn_overlay, spawn_proxy, TestOverlay};
use overlay::config::{AiEndpointConfig, Config};
use overlay::wire::data_plane::{conversation_id, Envelope, MessageId, StreamChunk};

/// Debian's Chromium; elsewhere chromedriver finds the browser itself.
const CHROMIUM: &str = "/usr/bin/chromium";
const ENTER: &str = "\u{e007}";

/// alice's and bob's chat pages, and the overlay under them.
pub struct BrowserOverlay {
    pub alice: String,
    pub bob: String,
    pub overlay: TestOverlay,
    /// The config with the addresses actually bound (to start a proxy again there).
    pub config: Config,
}

const USERS: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];

/// The overlay the browser test runs against: the real controller, proxies and peers of alice
/// and bob (no auto-reply), and an AI model `BOT` in the config (never called: its base URL
/// is a closed local port), so the contact list shows a person and an AI.
async fn overlay_under_test() -> BrowserOverlay {
    overlay_under_test_with(|_| {}).await
}

/// [`overlay_under_test`] with `change` made to its config first.
async fn overlay_under_test_with(change: impl FnOnce(&mut Config)) -> BrowserOverlay {
    let mut config = config_for(USERS);
    change(&mut config);
    let bot: AiEndpointConfig = serde_yaml::from_str(
        "{name: BOT, provider: openai, model: gpt-4o-mini, base_url: 'http://127.0.0.1:9/v1'}",
    )
    .expect("an AI endpoint");
    config.ai_endpoints.push(bot);
    let overlay = spawn_overlay(config.clone()).await;
    config.controller.listen = overlay.server("controller").addr;
    config.controller.url = overlay
        .server("controller")
        .tls_addr
        .map(|a| format!("https://{a}"));
    for (name, _) in USERS {
        config.set_instance_listeners(
            name,
            Some(overlay.server(&format!("peer/{name}")).addr),
            Some(overlay.server(&format!("proxy/{name}")).addr),
        );
    }
    let (alice, bob) = (overlay.url("peer/alice"), overlay.url("peer/bob"));
    // Routing is in place when each one's proxy table lists the other.
    for (url, other) in [(&alice, "bob"), (&bob, "alice")] {
        let mut ready = false;
        for _ in 0..500 {
            if let Ok(mut r) = client().get(format!("{url}/peers")).send().await {
                if let Ok(list) = r.json::<Vec<Value>>().await {
                    if list.iter().any(|p| p["id"] == other) {
                        ready = true;
                        break;
                    }
                }
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ready, "{url} never listed {other}");
    }
    BrowserOverlay {
        alice,
        bob,
        overlay,
        config,
    }
}

/// A fresh headless Chromium (its own profile directory).
async fn browser(driver: &crate::helpers::ChromeDriver, profile: &tempfile::TempDir) -> Client {
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-background-networking".into(),
        "--no-first-run".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1200,780".into(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    let mut options = json!({ "args": args });
    if std::path::Path::new(CHROMIUM).exists() {
        options["binary"] = json!(CHROMIUM);
    }
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Polls a JS expression until it is truthy (bounded: 10 s), or fails naming `what`.
async fn until(c: &Client, what: &str, js: &str) -> Value {
    for _ in 0..200 {
        let v = c
            .execute(&format!("return ({js});"), vec![])
            .await
            .expect("script runs");
        let truthy = !(v.is_null() || v == false || v == "" || v == 0);
        if truthy {
            return v;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what} ({js})");
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&dir).expect("tests/artifacts");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(name), png).expect("screenshot written");
}

#[actix_web::test]
async fn alice_sends_bob_a_message_that_appears_live_and_turns_delivered() {
    let Some(driver) = crate::helpers::chromedriver("BROWSER TEST").await else {
        return;
    };
    let mut o = overlay_under_test().await;
    let (pa, pb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = browser(&driver, &pa).await;
    let bob = browser(&driver, &pb).await;

    // bob has his chat with alice open, and is connected for live updates.
    bob.goto(&format!("{}/#alice", o.bob)).await.unwrap();
    until(
        &bob,
        "bob's page is live",
        "document.body.dataset.live === '1'",
    )
    .await;
    until(
        &bob,
        "bob's chat with alice is open",
        "document.body.dataset.peer === 'alice'",
    )
    .await;

    // alice picks bob from her contact list, types, presses Enter.
    alice.goto(&o.alice).await.unwrap();
    until(
        &alice,
        "alice's page is live",
        "document.body.dataset.live === '1'",
    )
    .await;
    let kinds = alice
        .execute(
            "return [...document.querySelectorAll('.contact')].map(c => c.dataset.peer + ':' + c.dataset.kind);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kinds, json!(["bob:person", "BOT:ai"]));
    screenshot(&alice, "01-alice-contacts.png").await;
    alice
        .find(Locator::Css(".contact[data-peer='bob']"))
        .await
        .expect("bob in alice's contacts")
        .click()
        .await
        .unwrap();
    until(
        &alice,
        "the input is enabled",
        "!document.getElementById('input').disabled",
    )
    .await;
    // People are shown by name as /peers names them: "Bob", in the list and the header.
    let shown = alice
        .execute(
            "return [document.querySelector(\".contact[data-peer='bob'] .name\").firstChild.textContent, document.getElementById('conv-name').textContent];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!(["Bob", "Bob"]));
    let text = "Hi Bob! <script>alert('x')</script> still text";
    let input = alice.find(Locator::Id("input")).await.unwrap();
    input.send_keys(text).await.unwrap();
    input.send_keys(ENTER).await.unwrap();

    // It appears on bob's open page, without a reload, as text.
    let shown = until(
        &bob,
        "the message on bob's page",
        "(document.querySelector('#messages .msg.in .text') || {}).textContent",
    )
    .await;
    assert_eq!(shown, json!(text));
    let injected = bob
        .execute(
            "return document.querySelectorAll('#messages script').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        json!(0),
        "message markup must not become elements"
    );

    // alice's copy turns delivered.
    until(
        &alice,
        "alice's copy is delivered",
        "document.querySelector('#messages .msg.out.state-delivered .state.delivered')",
    )
    .await;
    assert_eq!(
        alice
            .execute("return document.querySelector('#input').value;", vec![])
            .await
            .unwrap(),
        json!(""),
        "Enter sent the message and emptied the input"
    );

    // bob answers with a two-line message (Shift+Enter adds a line).
    let bob_input = bob.find(Locator::Id("input")).await.unwrap();
    bob_input
        .send_keys("Hey Alice, see https://example.com/a?b=1.")
        .await
        .unwrap();
    bob.execute(
        "const i = document.getElementById('input'); i.value += '\\nsecond line'; i.dispatchEvent(new Event('input'));",
        vec![],
    )
    .await
    .unwrap();
    bob_input.send_keys(ENTER).await.unwrap();
    until(
        &alice,
        "bob's answer on alice's page",
        "(document.querySelectorAll('#messages .msg.in .text')[0] || {}).textContent === 'Hey Alice, see https://example.com/a?b=1.\\nsecond line'",
    )
    .await;
    // A person's message stays text, its link clickable (opening apart), the full stop outside.
    let link = alice
        .execute(
            "const a = document.querySelector('#messages .msg.in .text a'); return a && [a.getAttribute('href'), a.textContent, a.rel, a.target, document.querySelectorAll('#messages .msg.in .text.md').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        link,
        json!([
            "https://example.com/a?b=1",
            "https://example.com/a?b=1",
            "noopener noreferrer",
            "_blank",
            0
        ])
    );
    until(
        &bob,
        "bob's copy is delivered",
        "document.querySelector('#messages .msg.out.state-delivered')",
    )
    .await;
    screenshot(&alice, "02-alice-conversation.png").await;
    screenshot(&bob, "03-bob-conversation.png").await;

    // alice's proxy goes down: her next message is kept, shown waiting for her proxy, and
    // goes (once) when the proxy is back.
    let proxy_addr = o.overlay.server("proxy/alice").addr;
    o.overlay.stop("proxy/alice").await;
    let input = alice.find(Locator::Id("input")).await.unwrap();
    input
        .send_keys("Sent while my proxy is down")
        .await
        .unwrap();
    input.send_keys(ENTER).await.unwrap();
    let label = until(
        &alice,
        "the message waits for alice's proxy",
        "(document.querySelector('#messages .msg.out.state-pending.waiting .state.waiting') || {}).textContent",
    )
    .await;
    assert_eq!(label, json!("waiting for your proxy…"));
    let banner = until(
        &alice,
        "alice is told it will be sent later",
        "!document.getElementById('send-error').hidden && document.getElementById('send-error').textContent",
    )
    .await;
    assert!(
        banner
            .as_str()
            .is_some_and(|b| b.starts_with("Not sent yet")
                && b.contains("will be sent when your proxy is back")),
        "{banner}"
    );
    screenshot(&alice, "03b-alice-waiting-for-proxy.png").await;
    let listener = TcpListener::bind(proxy_addr).expect("alice's proxy address is free again");
    let proxy = spawn_proxy(&o.config, "alice", o.overlay.data_dir.path(), listener).await;
    until(
        &bob,
        "the kept message on bob's page",
        "[...document.querySelectorAll('#messages .msg.in .text')].some(t => t.textContent === 'Sent while my proxy is down')",
    )
    .await;
    until(
        &alice,
        "the kept message turns delivered",
        "document.querySelectorAll('#messages .msg.out.state-delivered').length === 2 && !document.querySelector('#messages .msg.waiting')",
    )
    .await;
    until(
        &alice,
        "the 'not sent yet' note is gone",
        "document.getElementById('send-error').hidden",
    )
    .await;
    let mut r = client()
        .get(format!("{}/get_chat_history/alice", o.bob))
        .send()
        .await
        .unwrap();
    let at_bob: Vec<Value> = r.json().await.unwrap();
    assert_eq!(
        at_bob
            .iter()
            .filter(|e| e["message"] == "Sent while my proxy is down")
            .count(),
        1,
        "exactly once"
    );

    // An AI reply streams in, then the stored reply replaces it; an AI error shows as an error.
    alice.goto(&format!("{}/#BOT", o.alice)).await.unwrap();
    until(
        &alice,
        "the chat with BOT is open",
        "document.body.dataset.peer === 'BOT'",
    )
    .await;
    let http = client();
    for (seq, delta) in ["The answer", " is"].iter().enumerate() {
        let chunk = StreamChunk {
            id: MessageId::parse("ai-reply-1").unwrap(),
            from: "BOT".into(),
            conversation: conversation_id("alice", "BOT"),
            seq: seq as u32,
            delta: delta.to_string(),
        };
        let r = http
            .post(format!("{}/api/v1/stream", o.alice))
            .send_json(&chunk)
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    until(
        &alice,
        "the reply growing on alice's page",
        "(document.querySelector('#messages .msg.streaming .text') || {}).textContent === 'The answer is'",
    )
    .await;
    screenshot(&alice, "04-alice-ai-streaming.png").await;
    let mut full = Envelope::text("BOT", "alice", "The answer is 42.");
    full.id = MessageId::parse("ai-reply-1").unwrap();
    let mut failure = Envelope::text("BOT", "alice", "OpenAI answered 429: rate limit reached");
    failure.error = true;
    for e in [&full, &failure] {
        let r = http
            .post(format!("{}/api/v1/inbox", o.alice))
            .send_json(e)
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    until(
        &alice,
        "the stored reply replaced the streamed one",
        "!document.querySelector('#messages .msg.streaming') && document.querySelectorAll('#messages .msg.in:not(.error)').length === 1 && document.querySelector('#messages .msg.in .text').textContent === 'The answer is 42.'",
    )
    .await;
    until(
        &alice,
        "the AI error shown as an error",
        "document.querySelector('#messages .msg.in.error .error-title')",
    )
    .await;
    screenshot(&alice, "05-alice-ai-reply-and-error.png").await;

    // An AI reply in Markdown is shown rendered once stored: heading, list, table, code with a
    // copy button, links that open apart. What a hostile model writes stays inert.
    let markdown = "## Steps\n\n1. Install\n2. Run `overlay up`\n\n| role | port |\n|---|---|\n\
                    | peer | 8000 |\n\n```sh\ncargo install --path .\n```\n\n\
                    See [the docs](https://example.com/docs).\n\n\
                    <script>window.__pwned = 1</script>\n\n<img src=x onerror=\"window.__pwned = 2\">\n\n\
                    [click me](javascript:window.__pwned=3) <b onmouseover=\"window.__pwned=4\">unclosed";
    let mut md = Envelope::text("BOT", "alice", markdown);
    md.id = MessageId::parse("ai-reply-md").unwrap();
    let r = http
        .post(format!("{}/api/v1/inbox", o.alice))
        .send_json(&md)
        .await
        .unwrap();
    assert!(r.status().is_success());
    let reply = "document.querySelector(\"#messages .msg[data-id='ai-reply-md'] .text.md\")";
    until(
        &alice,
        "the Markdown reply rendered",
        &format!("{reply} && {reply}.querySelector('h2') && {reply}.querySelector('table td')"),
    )
    .await;
    let seen = alice
        .execute(
            &format!(
                "const r = {reply}; return {{
                   heading: r.querySelector('h2').textContent,
                   items: [...r.querySelectorAll('ol li')].map(li => li.textContent),
                   cell: r.querySelector('table td').textContent,
                   code: r.querySelector('.code-box pre code').textContent,
                   copy: !!r.querySelector('.code-box button.copy'),
                   link: [r.querySelector('a[href=\"https://example.com/docs\"]').rel,
                          r.querySelector('a[href=\"https://example.com/docs\"]').target],
                   scripts: document.querySelectorAll('#messages script').length,
                   handlers: r.querySelectorAll('[onerror],[onmouseover],[onclick]').length,
                   jsLinks: [...r.querySelectorAll('a')].filter(a => /^javascript:/i.test(a.getAttribute('href') || '')).length,
                   dead: [...r.querySelectorAll('.dead-link')].map(d => d.textContent),
                   pwned: window.__pwned || 0,
                 }};"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        seen,
        json!({
            "heading": "Steps",
            "items": ["Install", "Run overlay up"],
            "cell": "peer",
            "code": "cargo install --path .\n",
            "copy": true,
            "link": ["noopener noreferrer", "_blank"],
            "scripts": 0,
            "handlers": 0,
            "jsLinks": 0,
            "dead": ["click me"],
            "pwned": 0,
        })
    );
    // The copy button copies the code (or says to select it where the clipboard is refused).
    alice
        .execute(
            &format!("{reply}.querySelector('.code-box button.copy').click();"),
            vec![],
        )
        .await
        .unwrap();
    until(
        &alice,
        "the copy button answered",
        &format!("/^(Copied|Select and copy)$/.test({reply}.querySelector('.code-box button.copy').textContent)"),
    )
    .await;
    screenshot(&alice, "05b-alice-ai-markdown.png").await;
    // Loaded again (the conversation's page of history, not the live event): the same.
    alice.refresh().await.unwrap();
    until(
        &alice,
        "the Markdown reply rendered after a reload",
        &format!(
            "{reply} && {reply}.querySelector('table td') && !{reply}.querySelector('script')"
        ),
    )
    .await;

    // A message to someone the proxy does not know fails, visibly, with the reason.
    alice.goto(&format!("{}/#zed", o.alice)).await.unwrap();
    until(
        &alice,
        "alice's page is live again",
        "document.body.dataset.live === '1'",
    )
    .await;
    until(
        &alice,
        "the chat with zed is open",
        "document.body.dataset.peer === 'zed'",
    )
    .await;
    let input = alice.find(Locator::Id("input")).await.unwrap();
    input.send_keys("hello?").await.unwrap();
    input.send_keys(ENTER).await.unwrap();
    let reason = until(
        &alice,
        "a failed message with its reason",
        "(document.querySelector('#messages .msg.out.state-failed .state.failed') || {}).textContent",
    )
    .await;
    assert_eq!(reason, json!("failed: Unknown peer: zed"));
    screenshot(&alice, "06-alice-failed.png").await;

    // Phone-sized: the contacts collapse behind a menu button.
    alice.set_window_size(390, 844).await.unwrap();
    alice.goto(&format!("{}/#bob", o.alice)).await.unwrap();
    until(
        &alice,
        "alice's chat with bob again",
        "document.querySelector('#messages .msg.out')",
    )
    .await;
    let sidebar_hidden = until(
        &alice,
        "the contacts are off screen",
        "document.getElementById('sidebar').getBoundingClientRect().right <= 0 ? 'yes' : ''",
    )
    .await;
    assert_eq!(sidebar_hidden, json!("yes"));
    screenshot(&alice, "07-alice-phone.png").await;
    alice
        .find(Locator::Id("toggle-contacts"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &alice,
        "the contacts slide in",
        "document.getElementById('sidebar').getBoundingClientRect().left >= 0 ? 'yes' : ''",
    )
    .await;
    // Let the slide-in transition finish before the picture (bounded by the transition).
    until(
        &alice,
        "the drawer is fully open",
        "getComputedStyle(document.getElementById('sidebar')).transform === 'none' ? 'yes' : ''",
    )
    .await;
    screenshot(&alice, "08-alice-phone-contacts.png").await;

    // bob clears his chat with alice, after confirming.
    bob.execute(
        "window.confirmed = []; window.confirm = (q) => { window.confirmed.push(q); return true; };",
        vec![],
    )
    .await
    .unwrap();
    bob.find(Locator::Id("clear-chat"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &bob,
        "bob's chat emptied",
        "document.querySelectorAll('#messages .msg').length === 0 && !document.getElementById('empty').hidden",
    )
    .await;
    let asked = bob
        .execute("return window.confirmed;", vec![])
        .await
        .unwrap();
    assert_eq!(
        asked.as_array().map(Vec::len),
        Some(1),
        "asked once: {asked}"
    );
    let mut r = client()
        .get(format!("{}/get_chat_history/alice", o.bob))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    drop(driver);
    proxy.stop().await;
}

/// Posts `text` from bob to alice through bob's peer (the original's API).
async fn bob_says(o: &BrowserOverlay, text: &str) {
    let r = client()
        .post(format!("{}/send_message", o.bob))
        .send_json(&json!({"peer_id": "alice", "message": text}))
        .await
        .expect("bob's peer answers");
    assert!(r.status().is_success(), "{:?}", r.status());
}

#[actix_web::test]
async fn unread_messages_show_in_the_title_notify_in_the_background_and_never_scroll_the_reader() {
    let Some(driver) = crate::helpers::chromedriver("BROWSER TEST").await else {
        return;
    };
    // A proxy silent for 3 s is shown offline (the default is two minutes).
    let o = overlay_under_test_with(|c| {
        c.controller.liveness.warning_after_secs = 2;
        c.controller.liveness.stale_after_secs = 3;
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let alice = browser(&driver, &profile).await;
    alice.goto(&format!("{}/#bob", o.alice)).await.unwrap();
    until(
        &alice,
        "alice's page is live",
        "document.body.dataset.live === '1' && document.body.dataset.peer === 'bob'",
    )
    .await;
    let base = alice
        .execute("return document.title;", vec![])
        .await
        .unwrap();
    // The browser's notifications and visibility, as the test decides them: a stand-in that
    // records what the page shows, asks the user once, and a page that is hidden on demand.
    alice
        .execute(
            "window.__notes = [];
             window.__noteObjs = [];
             window.Notification = function (title, opts) {
               window.__notes.push([title, opts.body]);
               window.__noteObjs.push(this);
             };
             window.Notification.permission = 'default';
             window.Notification.requestPermission = function () {
               window.Notification.permission = 'granted';
               return Promise.resolve('granted');
             };
             Object.defineProperty(document, 'hidden', { configurable: true, get: () => window.__hidden === true });
             document.dispatchEvent(new Event('visibilitychange'));",
            vec![],
        )
        .await
        .unwrap();
    // Notifications only once the user asked for them.
    until(
        &alice,
        "the Turn on notifications button offered",
        "!document.getElementById('notify').hidden",
    )
    .await;
    screenshot(&alice, "09-alice-notify-offered.png").await;
    alice
        .find(Locator::Id("notify"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &alice,
        "the button gone once allowed",
        "document.getElementById('notify').hidden && window.Notification.permission === 'granted'",
    )
    .await;

    // In the background, a message in the open conversation is unread: in the title, on the
    // contact, and as a notification.
    alice
        .execute("window.__hidden = true;", vec![])
        .await
        .unwrap();
    bob_says(&o, "are you there?").await;
    until(
        &alice,
        "the title counts it",
        "document.title.startsWith('(1) ')",
    )
    .await;
    let seen = alice
        .execute(
            "return [window.__notes, document.querySelector(\".contact[data-peer='bob'] .unread\").textContent];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(seen, json!([[["Bob", "are you there?"]], "1"]));
    // Looked at again: read.
    alice
        .execute(
            "window.__hidden = false; document.dispatchEvent(new Event('visibilitychange'));",
            vec![],
        )
        .await
        .unwrap();
    until(
        &alice,
        "the title and the contact without a count",
        &format!(
            "document.title === {base} && !document.querySelector(\".contact[data-peer='bob'] .unread\")"
        ),
    )
    .await;
    // Clicking a notification opens its conversation through the address, as a click in the
    // list does (so the list's link works after it, and a reload stays there).
    alice
        .execute("location.hash = '#BOT';", vec![])
        .await
        .unwrap();
    until(
        &alice,
        "the chat with BOT open",
        "document.body.dataset.peer === 'BOT'",
    )
    .await;
    alice
        .execute("window.__hidden = true;", vec![])
        .await
        .unwrap();
    bob_says(&o, "over here").await;
    until(
        &alice,
        "a second notification",
        "window.__noteObjs.length === 2",
    )
    .await;
    alice
        .execute(
            "window.__hidden = false; window.__noteObjs[1].onclick();",
            vec![],
        )
        .await
        .unwrap();
    until(
        &alice,
        "bob's chat opened from it, read",
        &format!(
            "location.hash === '#bob' && document.body.dataset.peer === 'bob' && document.title === {base}"
        ),
    )
    .await;
    // While the page is looked at, no notification.
    bob_says(&o, "one more").await;
    until(
        &alice,
        "the message shown",
        "document.querySelectorAll('#messages .msg.in').length === 3",
    )
    .await;
    let notes = alice
        .execute("return window.__notes.length;", vec![])
        .await
        .unwrap();
    assert_eq!(notes, json!(2));

    // A message in another conversation is unread there; clearing that chat clears its count.
    let mut psst = Envelope::text("BOT", "alice", "psst");
    psst.id = MessageId::parse("unread-then-cleared").unwrap();
    let r = client()
        .post(format!("{}/api/v1/inbox", o.alice))
        .send_json(&psst)
        .await
        .unwrap();
    assert!(r.status().is_success());
    until(
        &alice,
        "BOT's contact counts it",
        "(document.querySelector(\".contact[data-peer='BOT'] .unread\") || {}).textContent === '1' && document.title.startsWith('(1) ')",
    )
    .await;
    let r = client()
        .post(format!("{}/clear_chat/BOT", o.alice))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    until(
        &alice,
        "the count gone with the chat",
        &format!(
            "!document.querySelector(\".contact[data-peer='BOT'] .unread\") && document.title === {base}"
        ),
    )
    .await;

    // Reading further up: new messages do not scroll the view; a button says they are there.
    for i in 0..30 {
        bob_says(&o, &format!("line {i}")).await;
    }
    until(
        &alice,
        "all of bob's lines shown, the view following them",
        "document.querySelectorAll('#messages .msg.in').length === 33 && (() => { const m = document.getElementById('messages'); return m.scrollHeight - m.scrollTop - m.clientHeight < 5; })()",
    )
    .await;
    alice
        .execute("document.getElementById('messages').scrollTop = 0;", vec![])
        .await
        .unwrap();
    bob_says(&o, "while you read").await;
    until(
        &alice,
        "the new message below, the view kept",
        "document.querySelectorAll('#messages .msg.in').length === 34 && !document.getElementById('new-below').hidden",
    )
    .await;
    let top = alice
        .execute(
            "return document.getElementById('messages').scrollTop;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(top, json!(0));
    screenshot(&alice, "10-alice-new-messages-below.png").await;
    alice
        .find(Locator::Id("new-below"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &alice,
        "at the bottom, the button gone",
        "document.getElementById('new-below').hidden && (() => { const m = document.getElementById('messages'); return m.scrollHeight - m.scrollTop - m.clientHeight < 5; })()",
    )
    .await;

    // Search: from the box above the contacts to a page of results; a result opens its
    // conversation at that message, earlier pages loaded as needed (the page holds 100).
    for i in 0..80 {
        bob_says(&o, &format!("filler {i}")).await;
    }
    let exports = alice
        .execute(
            "return [!document.getElementById('exports').hidden, document.getElementById('export-md').getAttribute('href')];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        exports,
        json!([true, "/api/v1/conversations/bob/export?format=md"])
    );
    let search = alice
        .find(Locator::Css(".side-search input"))
        .await
        .unwrap();
    search.send_keys("ARE YOU there").await.unwrap();
    search.send_keys(ENTER).await.unwrap();
    until(
        &alice,
        "the page of results",
        "document.querySelectorAll('.results a.result').length === 1",
    )
    .await;
    let result = alice
        .execute(
            "const a = document.querySelector('.results a.result'); return [a.querySelector('mark').textContent, a.querySelector('.result-who').textContent];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(result, json!(["are you there", "Bob"]));
    screenshot(&alice, "11-alice-search-results.png").await;
    alice
        .find(Locator::Css(".results a.result"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &alice,
        "the conversation open at the message found, in view",
        "(() => { const f = document.querySelector('#messages .msg.found'); if (!f) return false; const m = document.getElementById('messages').getBoundingClientRect(); const r = f.getBoundingClientRect(); return f.textContent.startsWith('are you there?') && r.top >= m.top && r.bottom <= m.bottom; })()",
    )
    .await;
    screenshot(&alice, "12-alice-opened-at-result.png").await;
    // Everything is loaded back to the first message: no button for earlier ones, even after
    // the page's live connection caught up (it reloads the newest page).
    until(
        &alice,
        "the page live again and caught up",
        "document.body.dataset.synced === '1'",
    )
    .await;
    let older = alice
        .execute(
            "return [document.querySelectorAll('#messages .older').length, document.querySelectorAll('#messages .msg.in').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(older, json!([0, 114]));

    // bob's proxy stops: his dot turns offline on alice's open page, pushed, not reloaded.
    until(
        &alice,
        "bob shown online",
        "document.querySelector(\".contact[data-peer='bob'] .presence.online\")",
    )
    .await;
    let mut o = o;
    o.overlay.stop("proxy/bob").await;
    until(
        &alice,
        "bob shown offline",
        "document.querySelector(\".contact[data-peer='bob'] .presence.offline\") && document.getElementById('conv-sub').textContent.includes('offline')",
    )
    .await;
    screenshot(&alice, "13-alice-bob-offline.png").await;
}

#[actix_web::test]
async fn an_ai_reply_is_stopped_mid_way_and_its_answer_regenerated_from_the_page() {
    use crate::ai::fake::{pieces, FakeProvider, Kind, Script};
    let Some(driver) = crate::helpers::chromedriver("BROWSER TEST").await else {
        return;
    };
    // A local model (OpenAI-compatible, no key) that writes a little, then holds the line
    // until it is hung up on; asked again, it answers.
    let fake = FakeProvider::start(Kind::Ollama, None);
    fake.script([
        Script::HoldAfter(pieces(&["Once", " upon", " a"])),
        Script::Reply(pieces(&["A second", " answer."])),
    ]);
    let url = fake.url.clone();
    let o = overlay_under_test_with(move |c| {
        let llama: AiEndpointConfig = serde_yaml::from_str(&format!(
            "{{name: LLAMA, provider: openai_compatible, model: llama3.2, base_url: '{url}/v1'}}"
        ))
        .expect("an AI endpoint");
        c.ai_endpoints.push(llama);
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let alice = browser(&driver, &profile).await;
    alice.goto(&format!("{}/#LLAMA", o.alice)).await.unwrap();
    until(
        &alice,
        "the chat with LLAMA is open and live",
        "document.body.dataset.live === '1' && document.body.dataset.peer === 'LLAMA'",
    )
    .await;
    assert_eq!(
        alice
            .execute(
                "return document.getElementById('reply-tools').hidden;",
                vec![]
            )
            .await
            .unwrap(),
        json!(true),
        "nothing to stop or regenerate in an empty chat"
    );
    let input = alice.find(Locator::Id("input")).await.unwrap();
    input.send_keys("Tell me a story").await.unwrap();
    input.send_keys(ENTER).await.unwrap();
    until(
        &alice,
        "the reply streaming, with Stop offered",
        "(document.querySelector('#messages .msg.streaming .text') || {}).textContent === 'Once upon a' && !document.getElementById('stop-reply').hidden && document.getElementById('regenerate').hidden",
    )
    .await;
    screenshot(&alice, "14-alice-ai-stop-offered.png").await;

    alice
        .find(Locator::Id("stop-reply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &alice,
        "the reply kept, marked stopped, and Regenerate offered",
        "!document.querySelector('#messages .msg.streaming') && (document.querySelector('#messages .msg.in .text') || {}).textContent.includes('Once upon a') && document.querySelector('#messages .msg.in .text').textContent.includes('[Stopped.]') && document.getElementById('stop-reply').hidden && !document.getElementById('regenerate').hidden",
    )
    .await;
    for _ in 0..500 {
        if fake.hung_up() == 1 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.hung_up(), 1, "the model's connection was closed");
    screenshot(&alice, "15-alice-ai-stopped.png").await;

    alice
        .find(Locator::Id("regenerate"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &alice,
        "the new answer below the stopped one",
        "(() => { const t = [...document.querySelectorAll('#messages .msg.in .text')].map(e => e.textContent); return t.length === 2 && t[1] === 'A second answer.'; })() && !document.getElementById('regenerate').hidden",
    )
    .await;
    screenshot(&alice, "16-alice-ai-regenerated.png").await;
    let asked = fake.requests();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        asked[1].body["messages"],
        json!([{"role": "user", "content": "[alice]: Tell me a story"}]),
        "asked again without the answer taken back"
    );

    // A reply's first chunk can reach the page before the question's own event: the question
    // still shows above it, and the reply takes its place by order once it is complete.
    let early = MessageId::parse("early-reply").unwrap();
    let chunk = StreamChunk {
        id: early.clone(),
        from: "LLAMA".into(),
        conversation: conversation_id("alice", "LLAMA"),
        seq: 0,
        delta: "Early".into(),
    };
    let r = client()
        .post(format!("{}/api/v1/stream", o.alice))
        .send_json(&chunk)
        .await
        .unwrap();
    assert!(r.status().is_success());
    until(
        &alice,
        "the early chunk shown",
        "(document.querySelector('#messages .msg.streaming .text') || {}).textContent === 'Early'",
    )
    .await;
    input.send_keys("One more").await.unwrap();
    input.send_keys(ENTER).await.unwrap();
    let order = "[...document.querySelectorAll('#messages .msg')].map(r => r.classList.contains('streaming') ? 'streaming' : r.querySelector('.text').textContent)";
    until(
        &alice,
        "the question above the reply still being written",
        &format!("(() => {{ const o = {order}; return o.indexOf('One more') >= 0 && o.indexOf('One more') < o.indexOf('streaming'); }})()"),
    )
    .await;
    // The model's own answer to it (the fake's default) arrives, above the early one too.
    until(
        &alice,
        "the answer to it in order",
        &format!("(() => {{ const o = {order}; return o.indexOf('Hello there!') > o.indexOf('One more') && o.indexOf('Hello there!') < o.indexOf('streaming'); }})()"),
    )
    .await;
    let mut done = Envelope::text("LLAMA", "alice", "Early and complete.");
    done.id = early;
    let r = client()
        .post(format!("{}/api/v1/inbox", o.alice))
        .send_json(&done)
        .await
        .unwrap();
    assert!(r.status().is_success());
    until(
        &alice,
        "the completed reply last, in order",
        &format!("(() => {{ const o = {order}; return o[o.length - 1] === 'Early and complete.' && o.indexOf('One more') < o.indexOf('Early and complete.'); }})()"),
    )
    .await;
    until(
        &alice,
        "Regenerate offered for the newest answer",
        "!document.getElementById('regenerate').hidden",
    )
    .await;
}

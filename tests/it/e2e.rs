//! Integration tests: the whole overlay end to end, on the REAL roles (controller, proxies and
//! peers started as `overlay up` starts them, on port 0): a message from alice's page API to
//! bob's store through both proxies, exactly once, in order, with its state back at alice; the
//! auto-reply rule across real proxies; a proxy or the controller down and back; the legacy
//! wire format. Counts are exact: every message is stored once by the receiving peer.

use std::collections::HashMap;
use std::net::TcpListener;

use awc::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::helpers::{
    client, config_for, eventually, spawn_overlay, spawn_proxy, subscribe, Spawned, SseReader,
    TestOverlay,
};
use overlay::config::Config;
use overlay::peer::routes::Me;
use overlay::peer::store::{HistoryPage, MessageState};
use overlay::peer::updates::PageEvent;
use overlay::proxy::outbox::OutboxStatus;

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn get_json<T: DeserializeOwned>(url: &str) -> (StatusCode, T) {
    let mut r = client().get(url).send().await.expect("GET answers");
    let status = r.status();
    let body = r.body().limit(64 << 20).await.expect("body");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {url}: {e}: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

async fn post_json(url: &str, body: &impl serde::Serialize) -> (StatusCode, Value) {
    let mut r = client()
        .post(url)
        .send_json(body)
        .await
        .expect("POST answers");
    let status = r.status();
    let bytes = r.body().limit(64 << 20).await.expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

/// The legacy history of `peer_url` with `with`, oldest first.
async fn history(peer_url: &str, with: &str) -> Vec<Value> {
    let (s, v): (_, Vec<Value>) = get_json(&format!("{peer_url}/get_chat_history/{with}")).await;
    assert_eq!(s, StatusCode::OK);
    v
}

/// Texts of `peer_url`'s history with `with` written by `sender`, oldest first.
async fn texts_from(peer_url: &str, with: &str, sender: &str) -> Vec<String> {
    history(peer_url, with)
        .await
        .iter()
        .filter(|e| e["sender"] == sender)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `POST /send_message` on a peer.
async fn send(peer_url: &str, to: &str, text: &str) -> (StatusCode, Value) {
    post_json(
        &format!("{peer_url}/send_message"),
        &json!({"peer_id": to, "message": text}),
    )
    .await
}

/// Waits until `peer_url`'s `/peers` (from its proxy's table) lists `other`.
async fn wait_for_route(peer_url: &str, other: &str) {
    eventually(&format!("{peer_url} can reach {other}"), || async move {
        let mut r = client()
            .get(format!("{peer_url}/peers"))
            .send()
            .await
            .ok()?;
        let list: Vec<Value> = r.json().await.ok()?;
        list.iter().any(|p| p["id"] == other).then_some(())
    })
    .await;
}

/// Items not yet handed on by the proxy at `proxy_url`, all lanes.
async fn queued(proxy_url: &str) -> usize {
    let (s, status): (_, OutboxStatus) = get_json(&format!("{proxy_url}/api/v1/outbox")).await;
    assert_eq!(s, StatusCode::OK);
    status.queued
}

async fn wait_outboxes_empty(proxies: &[String]) {
    for p in proxies {
        eventually(&format!("{p}'s outbox is empty"), || async move {
            (queued(p).await == 0).then_some(())
        })
        .await;
    }
}

/// Subscribes to a peer's page events.
async fn events(peer_url: &str) -> SseReader {
    subscribe(&format!("{peer_url}/api/v1/events")).await
}

/// The real overlay of `users`, with routing in place between every pair.
async fn overlay_of(users: &[(&str, &[&str])]) -> TestOverlay {
    let o = spawn_overlay(config_for(users)).await;
    for (a, _) in users {
        for (b, _) in users {
            if a != b {
                wait_for_route(&o.url(&format!("peer/{a}")), b).await;
            }
        }
    }
    o
}

/// The overlay's config with the addresses it actually bound (to start a role again there).
fn bound_config(o: &TestOverlay, users: &[(&str, &[&str])]) -> Config {
    let mut config = config_for(users);
    config.controller.listen = o.server("controller").addr;
    config.controller.url = o
        .server("controller")
        .tls_addr
        .map(|a| format!("https://{a}"));
    for (name, _) in users {
        let peer = o.server(&format!("peer/{name}")).addr;
        let proxy = o.server(&format!("proxy/{name}")).addr;
        config.set_instance_listeners(name, Some(peer), Some(proxy));
    }
    config
}

/// Starts `name`'s proxy again on `addr`, with the overlay's data dir (its outbox and cache).
async fn restart_proxy(
    o: &TestOverlay,
    config: &Config,
    name: &str,
    addr: std::net::SocketAddr,
) -> Spawned {
    let listener = TcpListener::bind(addr).expect("the proxy's address is free again");
    spawn_proxy(config, name, o.data_dir.path(), listener).await
}

// ---------------------------------------------------------------------------------------------
// (a) alice → bob through both real proxies.

#[actix_web::test]
async fn a_message_crosses_both_real_proxies_once_and_alices_copy_turns_delivered() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let o = overlay_of(users).await;
    let (alice, bob) = (o.url("peer/alice"), o.url("peer/bob"));
    let mut alice_events = events(&alice).await;

    let (s, v) = send(&alice, "bob", "hello <b>bob</b>").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "success");
    let id = v["id"].as_str().expect("an id").to_string();

    // alice's page learns the state change, pushed, for this very message.
    loop {
        match alice_events.next::<PageEvent>().await {
            PageEvent::State { message }
                if message.id.as_str() == id && message.state == MessageState::Delivered =>
            {
                break
            }
            _ => {}
        }
    }
    // Delivered means bob's proxy holds it durably; bob's peer stores it right after.
    let at_bob = eventually("bob's peer stored it", || async {
        let h = history(&bob, "alice").await;
        (!h.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(at_bob.len(), 1, "{at_bob:?}");
    assert_eq!(at_bob[0]["sender"], "alice");
    assert_eq!(at_bob[0]["message"], "hello <b>bob</b>");
    assert_eq!(at_bob[0]["status"], "received");
    let at_alice = history(&alice, "bob").await;
    assert_eq!(at_alice.len(), 1);
    assert_eq!(at_alice[0]["status"], "delivered");

    // 50 more at concurrency 8: 8 writers, each sending its own messages one after another.
    let writers = (0..8).map(|w| {
        let alice = alice.clone();
        async move {
            for i in (w..50).step_by(8) {
                let (s, v) = send(&alice, "bob", &format!("m{i:02} from writer {w}")).await;
                assert_eq!(s, StatusCode::OK, "{v}");
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let got = eventually("bob has all 51", || {
        let bob = bob.clone();
        async move {
            let t = texts_from(&bob, "alice", "alice").await;
            (t.len() >= 51).then_some(t)
        }
    })
    .await;
    wait_outboxes_empty(&[o.url("proxy/alice"), o.url("proxy/bob")]).await;
    let got_now = texts_from(&bob, "alice", "alice").await;
    assert_eq!(got_now, got, "nothing more arrived");
    assert_eq!(got.len(), 51, "each exactly once");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &got {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    assert!(counts.values().all(|&c| c == 1), "a duplicate: {got:?}");
    // In order per writer (each writer's next message left after the previous was accepted).
    for w in 0..8 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|t| t.ends_with(&format!("writer {w}")))
            .collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(mine, sorted, "writer {w}'s messages out of order");
        assert_eq!(mine.len(), (w..50).step_by(8).count());
    }
    // And alice's copies all turned delivered.
    eventually("alice's 51 copies delivered", || {
        let alice = alice.clone();
        async move {
            let h = history(&alice, "bob").await;
            (h.len() == 51 && h.iter().all(|e| e["status"] == "delivered")).then_some(())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// (b) both auto-replying: one reply each, no ping-pong.

#[actix_web::test]
async fn alice_and_bob_both_auto_replying_through_real_proxies_answer_once_each() {
    let users: &[(&str, &[&str])] = &[("alice", &["alice is away"]), ("bob", &["bob is away"])];
    let o = overlay_of(users).await;
    let (alice, bob) = (o.url("peer/alice"), o.url("peer/bob"));

    assert_eq!(send(&alice, "bob", "hi bob").await.0, StatusCode::OK);
    assert_eq!(send(&bob, "alice", "hi alice").await.0, StatusCode::OK);

    // Both auto-replies arrive, and each peer has decided about both messages it received.
    eventually("alice got bob's auto-reply", || {
        let alice = alice.clone();
        async move {
            let t = texts_from(&alice, "bob", "bob").await;
            t.contains(&"bob is away".to_string()).then_some(())
        }
    })
    .await;
    eventually("bob got alice's auto-reply", || {
        let bob = bob.clone();
        async move {
            let t = texts_from(&bob, "alice", "alice").await;
            t.contains(&"alice is away".to_string()).then_some(())
        }
    })
    .await;
    for url in [&alice, &bob] {
        eventually(
            "each peer decided about both messages it got",
            || async move {
                let (_, me): (_, Me) = get_json(&format!("{url}/api/v1/me")).await;
                (me.auto_reply.seen == 2).then_some(())
            },
        )
        .await;
    }
    // Nothing is in flight any more: the counts are final.
    wait_outboxes_empty(&[o.url("proxy/alice"), o.url("proxy/bob")]).await;
    for (url, other) in [(&alice, "bob"), (&bob, "alice")] {
        let h = history(url, other).await;
        assert_eq!(h.len(), 4, "two messages and two auto-replies: {h:?}");
        assert_eq!(h.iter().filter(|e| e["auto_reply"] == true).count(), 2);
        let (_, me): (_, Me) = get_json(&format!("{url}/api/v1/me")).await;
        assert_eq!(me.auto_reply.answered, 1);
        assert_eq!(me.auto_reply.seen, 2);
    }
}

// ---------------------------------------------------------------------------------------------
// (c) bob's proxy down while alice sends.

#[actix_web::test]
async fn messages_for_a_proxy_that_is_down_wait_pending_and_arrive_once_in_order_when_it_returns() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let mut o = overlay_of(users).await;
    let config = bound_config(&o, users);
    let (alice, bob) = (o.url("peer/alice"), o.url("peer/bob"));
    let bob_proxy_addr = o.server("proxy/bob").addr;
    o.stop("proxy/bob").await;

    for i in 0..5 {
        let (s, v) = send(&alice, "bob", &format!("queued {i}")).await;
        assert_eq!(s, StatusCode::OK, "alice's proxy takes them: {v}");
    }
    let h = history(&alice, "bob").await;
    assert_eq!(h.len(), 5);
    assert!(h.iter().all(|e| e["status"] == "pending"), "{h:?}");
    eventually("alice's proxy holds the five for bob", || {
        let p = o.url("proxy/alice");
        async move { (queued(&p).await == 5).then_some(()) }
    })
    .await;
    assert!(history(&bob, "alice").await.is_empty());

    let bob_proxy = restart_proxy(&o, &config, "bob", bob_proxy_addr).await;
    let got = eventually("bob got the five", || {
        let bob = bob.clone();
        async move {
            let t = texts_from(&bob, "alice", "alice").await;
            (t.len() >= 5).then_some(t)
        }
    })
    .await;
    eventually("alice's copies delivered", || {
        let alice = alice.clone();
        async move {
            let h = history(&alice, "bob").await;
            h.iter().all(|e| e["status"] == "delivered").then_some(())
        }
    })
    .await;
    wait_outboxes_empty(&[o.url("proxy/alice"), bob_proxy.url.clone()]).await;
    let expected: Vec<String> = (0..5).map(|i| format!("queued {i}")).collect();
    assert_eq!(got, expected, "once each, in order");
    assert_eq!(texts_from(&bob, "alice", "alice").await, expected);
    bob_proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// alice's own proxy down: the peer keeps the message and hands it over when it is back.

#[actix_web::test]
async fn a_message_sent_while_the_own_proxy_is_down_is_kept_and_arrives_once_when_it_returns() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let mut o = overlay_of(users).await;
    let config = bound_config(&o, users);
    let (alice, bob) = (o.url("peer/alice"), o.url("peer/bob"));
    let alice_proxy_addr = o.server("proxy/alice").addr;
    o.stop("proxy/alice").await;

    let (s, v) = send(&alice, "bob", "sent while my proxy was down").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["status"], "failed");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("kept; will be sent when your proxy is back"),
        "{v}"
    );
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{alice}/api/v1/conversations/bob/messages")).await;
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].state, MessageState::Pending);
    assert!(page.messages[0]
        .waiting
        .as_deref()
        .is_some_and(|w| w.starts_with("waiting for your proxy")));

    let alice_proxy = restart_proxy(&o, &config, "alice", alice_proxy_addr).await;
    eventually("alice's copy delivered", || {
        let alice = alice.clone();
        async move {
            let h = history(&alice, "bob").await;
            (h.len() == 1 && h[0]["status"] == "delivered").then_some(())
        }
    })
    .await;
    wait_outboxes_empty(&[alice_proxy.url.clone(), o.url("proxy/bob")]).await;
    assert_eq!(
        texts_from(&bob, "alice", "alice").await,
        ["sent while my proxy was down"],
        "exactly once"
    );
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{alice}/api/v1/conversations/bob/messages")).await;
    assert_eq!(page.messages[0].waiting, None);
    alice_proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (d) the controller down.

#[actix_web::test]
async fn with_the_controller_down_messages_still_arrive() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let mut o = overlay_of(users).await;
    let (alice, bob) = (o.url("peer/alice"), o.url("peer/bob"));
    o.stop("controller").await;

    for i in 0..3 {
        let (s, v) = send(&alice, "bob", &format!("no controller {i}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, _) = send(&bob, "alice", "and back").await;
    assert_eq!(s, StatusCode::OK);
    eventually("bob got alice's three", || {
        let bob = bob.clone();
        async move { (texts_from(&bob, "alice", "alice").await.len() == 3).then_some(()) }
    })
    .await;
    eventually("alice got bob's", || {
        let alice = alice.clone();
        async move { (texts_from(&alice, "bob", "bob").await.len() == 1).then_some(()) }
    })
    .await;
    wait_outboxes_empty(&[o.url("proxy/alice"), o.url("proxy/bob")]).await;
    assert_eq!(
        texts_from(&bob, "alice", "alice").await,
        ["no controller 0", "no controller 1", "no controller 2"]
    );
    // The receipts follow the deliveries (an outbox just emptied may still be writing them).
    eventually("alice's three marked delivered", || {
        let alice = alice.clone();
        async move {
            let h = history(&alice, "bob").await;
            h.iter()
                .filter(|e| e["sender"] == "alice")
                .all(|e| e["status"] == "delivered")
                .then_some(())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// (e) an unknown peer.

#[actix_web::test]
async fn a_message_to_an_unknown_peer_is_the_legacy_404_and_goes_nowhere() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let o = overlay_of(users).await;
    let (alice, bob) = (o.url("peer/alice"), o.url("peer/bob"));

    let (s, v) = send(&alice, "zed", "anyone?").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v, json!({"status": "failed", "error": "Unknown peer: zed"}));
    let h = history(&alice, "zed").await;
    assert_eq!(h.len(), 1, "kept, as failed");
    assert_eq!(h[0]["status"], "failed");
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{alice}/api/v1/conversations/zed/messages")).await;
    assert_eq!(
        page.messages[0].state,
        MessageState::Failed {
            reason: "Unknown peer: zed".into()
        }
    );
    assert_eq!(page.messages[0].waiting, None, "a refusal is not retried");
    assert_eq!(queued(&o.url("proxy/alice")).await, 0, "nothing queued");
    assert!(history(&bob, "alice").await.is_empty());
    assert!(history(&bob, "zed").await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// (f) the original's wire format into a real proxy.

#[actix_web::test]
async fn an_original_style_post_lands_in_bobs_history_once_even_when_posted_twice() {
    // carol runs a proxy of the original on this machine, listed as such; alice is one of ours.
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let o = overlay_listing_legacy(users, &[("carol", "127.0.0.1")]).await;
    let bob = o.url("peer/bob");
    let post = |from: &str| {
        let body = format!(
            r#"{{"message":"from an original proxy","from":"{from}","timestamp":"2026-11-24T08:41:31.123456"}}"#
        );
        let url = format!("{}/", o.url("proxy/bob"));
        async move {
            let mut r = client()
                .post(url)
                .insert_header(("Host", "bob"))
                .insert_header(("Content-Type", "application/json"))
                .send_body(body)
                .await
                .expect("POST / answers");
            let v: Value = r.json().await.expect("a JSON answer");
            (r.status(), v)
        }
    };
    for _ in 0..2 {
        let (status, v) = post("carol").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "success", "{v}");
    }
    // Unsigned posts in the name of a user with a pinned key, or of a proxy not listed, are
    // refused: only a listed proxy of the original posts unsigned, for its own name.
    for from in ["alice", "dave"] {
        let (status, v) = post(from).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{from}: {v}");
    }
    eventually("bob stored it", || {
        let bob = bob.clone();
        async move { (!history(&bob, "carol").await.is_empty()).then_some(()) }
    })
    .await;
    wait_outboxes_empty(&[o.url("proxy/bob")]).await;
    let h = history(&bob, "carol").await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["message"], "from an original proxy");
    assert_eq!(h[0]["sender"], "carol");
    assert!(history(&bob, "alice").await.is_empty());
    assert!(history(&bob, "dave").await.is_empty());
    // Shown as unauthenticated: nobody vouches for carol but the address it posts from.
    let (_, page): (_, Value) =
        get_json(&format!("{bob}/api/v1/conversations/carol/messages")).await;
    assert_eq!(page["messages"][0]["unauthenticated"], true, "{page}");
}

#[actix_web::test]
async fn without_the_legacy_setting_an_original_style_post_from_another_proxy_is_refused() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let o = overlay_of(users).await;
    let status = legacy_post(
        &o.url("proxy/bob"),
        "bob",
        "carol",
        "unsigned",
        "2026-11-24T08:41:31",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(queued(&o.url("proxy/bob")).await, 0);
    assert!(history(&o.url("peer/bob"), "carol").await.is_empty());
}

/// The overlay of `users`, whose config lists `legacy` proxies of the original (name, address).
async fn overlay_listing_legacy(users: &[(&str, &[&str])], legacy: &[(&str, &str)]) -> TestOverlay {
    let mut config = config_for(users);
    config.legacy_proxies = legacy
        .iter()
        .map(|(name, address)| overlay::config::LegacyProxyConfig {
            name: overlay::config::InstanceName::parse(name).expect("a name"),
            address: address.parse().expect("an address"),
        })
        .collect();
    let o = spawn_overlay(config).await;
    for (a, _) in users {
        for (b, _) in users {
            if a != b {
                wait_for_route(&o.url(&format!("peer/{a}")), b).await;
            }
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// The batch hand-over from a real proxy to a real peer, with one envelope the peer refuses.

/// compat: an original proxy's post to `proxy_url` for `host`.
async fn legacy_post(proxy_url: &str, host: &str, from: &str, text: &str, ts: &str) -> StatusCode {
    client()
        .post(format!("{proxy_url}/"))
        .insert_header(("Host", host))
        .send_json(&json!({"message": text, "from": from, "timestamp": ts}))
        .await
        .expect("POST / answers")
        .status()
}

#[actix_web::test]
async fn a_queued_batch_for_a_peer_that_refuses_one_envelope_delivers_the_others_once_in_order() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    // carol is a proxy of the original on this machine, listed as such.
    let mut o = overlay_listing_legacy(users, &[("carol", "127.0.0.1")]).await;
    let config = bound_config(&o, users);
    let bob_proxy = o.url("proxy/bob");
    let bob_peer_addr = o.server("peer/bob").addr;
    o.stop("peer/bob").await;

    // Queued at bob's proxy while his peer is down; the second has a sender name bob's peer
    // does not take (not an instance name). Today bob's proxy takes it (200) and only his peer
    // refuses it; should the proxy refuse it up front (400), the batch has no bad envelope.
    let posts = [
        ("carol", "first", "2026-11-24T08:00:01"),
        ("not a name!", "refused", "2026-11-24T08:00:02"),
        ("carol", "second", "2026-11-24T08:00:03"),
        ("carol", "third", "2026-11-24T08:00:04"),
    ];
    let mut taken = 0;
    for (from, text, ts) in posts {
        let status = legacy_post(&bob_proxy, "bob", from, text, ts).await;
        if from == "carol" {
            assert_eq!(status, StatusCode::OK);
        } else {
            // Not a listed name (nor a name at all): refused up front.
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::FORBIDDEN,
                "{status}"
            );
        }
        taken += usize::from(status == StatusCode::OK);
    }
    eventually("bob's proxy holds what it took", || {
        let p = bob_proxy.clone();
        async move { (queued(&p).await == taken).then_some(()) }
    })
    .await;

    // bob's peer is back: the proxy hands the four over in one batch, which the peer refuses as
    // a whole (400, naming the bad one); the proxy then sends them one by one.
    let listener = TcpListener::bind(bob_peer_addr).expect("bob's peer address is free again");
    let bob = crate::helpers::spawn_peer(&config, "bob", o.data_dir.path(), listener).await;
    wait_outboxes_empty(std::slice::from_ref(&bob_proxy)).await;
    assert_eq!(
        texts_from(&bob.url, "carol", "carol").await,
        ["first", "second", "third"],
        "the others once each, in order"
    );
    bob.stop().await;
}

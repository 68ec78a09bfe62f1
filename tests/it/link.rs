//! The hop between a user's peer and its own proxy (issue 15, point 4): the proxy's own-peer
//! API and the peer's routes for its proxy answer loopback callers, or callers with the link
//! token both sides were given; anyone else is refused, while the routes other proxies use stay
//! open to them. A caller that is not on loopback needs an address that is not: the chaos
//! suite's network lab gives this test one (as root; otherwise that part is skipped, saying so).

use awc::http::StatusCode;
use serde_json::Value;

use crate::chaos::netlab::Lab;
use crate::helpers::{client, config_for, free_listener, Spawned};
use overlay::hop::link::{LinkToken, LINK_HEADER};
use overlay::wire::data_plane::Envelope;

async fn post(url: &str, token: Option<&str>, body: &impl serde::Serialize) -> (StatusCode, Value) {
    let mut req = client().post(url);
    if let Some(t) = token {
        req = req.insert_header((LINK_HEADER, t));
    }
    let mut r = req.send_json(body).await.expect("POST answers");
    let status = r.status();
    let bytes = r.body().limit(1 << 20).await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// alice's proxy, listening on every address, with `link` as its hop's token.
async fn proxy(link: Option<&str>) -> (Spawned, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
    config.controller.listen = free_listener().local_addr().unwrap();
    config.set_instance_listeners("alice", None, Some(listener.local_addr().unwrap()));
    let mut settings = config.proxy_settings("alice", dir.path()).unwrap();
    settings.link = LinkToken::new(link.map(str::to_string));
    let running = overlay::proxy::start(settings, listener).await.unwrap();
    (Spawned::spawn(running), port, dir)
}

fn lab() -> Option<Lab> {
    if let Some(why) = Lab::unavailable() {
        eprintln!("skipping the non-loopback part: {why}");
        return None;
    }
    Some(Lab::create(1).expect("the network lab"))
}

#[actix_web::test]
async fn the_own_peer_api_answers_loopback_or_the_link_token_and_relays_stay_open() {
    let (_open, open_port, _d1) = proxy(None).await;
    let (_locked, locked_port, _d2) = proxy(Some("a-long-link-token-0123456789")).await;
    let from_alice = || Envelope::text("alice", "bob", "hi");

    // On loopback both take their own peer's messages, token or not.
    for port in [open_port, locked_port] {
        let (s, v) = post(
            &format!("http://127.0.0.1:{port}/api/v1/outbox"),
            None,
            &from_alice(),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    let Some(lab) = lab() else { return };
    let far = lab.own_addr();
    // From an address that is not loopback: refused without the token, and with a wrong one.
    let url = |port: u16, path: &str| format!("http://{far}:{port}{path}");
    let (s, v) = post(&url(open_port, "/api/v1/outbox"), None, &from_alice()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("--link-token-file"),
        "{v}"
    );
    let (s, _) = post(
        &url(open_port, "/api/v1/outbox"),
        Some("guess"),
        &from_alice(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = post(
        &url(locked_port, "/api/v1/outbox"),
        Some("wrong-token"),
        &from_alice(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for path in [
        "/api/v1/outbox/batch",
        "/api/v1/forget",
        "/api/v1/seal/rotate",
    ] {
        let (s, _) = post(&url(locked_port, path), None, &Value::Null).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
    }
    for path in ["/api/v1/directory", "/api/v1/seal"] {
        let r = client().get(url(locked_port, path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // With the token it is the own peer.
    let (s, v) = post(
        &url(locked_port, "/api/v1/outbox"),
        Some("a-long-link-token-0123456789"),
        &from_alice(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // The original's post in alice's own name is her own peer's too.
    let legacy = |token: Option<&'static str>| {
        let mut req = client()
            .post(url(locked_port, "/"))
            .insert_header(("Host", "bob"));
        if let Some(t) = token {
            req = req.insert_header((LINK_HEADER, t));
        }
        // Written now (a message older than proxies remember ids is refused on its own).
        let now = overlay::wire::rfc3339_ms(overlay::wire::now_ms());
        let now = now.trim_end_matches('Z').to_string();
        async move {
            req.send_json(
                &serde_json::json!({"message": "as alice", "from": "alice", "timestamp": now}),
            )
            .await
            .expect("POST / answers")
            .status()
        }
    };
    assert_eq!(legacy(None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        legacy(Some("a-long-link-token-0123456789")).await,
        StatusCode::OK
    );
    // The routes other proxies use stay open to them (and answer on their own terms).
    let (s, v) = post(
        &url(open_port, "/api/v1/relay"),
        None,
        &Envelope::text("bob", "alice", "hey"),
    )
    .await;
    assert_ne!(s, StatusCode::FORBIDDEN, "{v}");
    drop(lab);
}

#[actix_web::test]
async fn the_peers_routes_for_its_proxy_answer_loopback_or_the_link_token() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
    // Who may call is the subject, not HTTPS (see login.rs): its page stays plain.
    config.server.pages_plain_http = true;
    config.set_instance_listeners("alice", Some(listener.local_addr().unwrap()), None);
    let mut settings = config.peer_settings("alice", dir.path()).unwrap();
    settings.link = LinkToken::new(Some("peer-side-link-token-0123".into()));
    let _peer = Spawned::spawn(overlay::peer::start(settings, listener).await.unwrap());
    let to_alice = || Envelope::text("bob", "alice", "hello");
    let (s, v) = post(
        &format!("http://127.0.0.1:{port}/api/v1/inbox"),
        None,
        &to_alice(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let Some(lab) = lab() else { return };
    let far = format!("http://{}:{port}", lab.own_addr());
    for path in [
        "/api/v1/inbox",
        "/api/v1/inbox/batch",
        "/api/v1/receipts",
        "/api/v1/receipts/batch",
        "/api/v1/stream",
        "/message",
    ] {
        let (s, _) = post(&format!("{far}{path}"), None, &Value::Null).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
    }
    // Another enrolled proxy signing its request validly is still not alice's own proxy: her
    // inbox, receipts and the original's `/message` are refused to it.
    let bob_key = overlay::trust::Identity::generate();
    for (path, body) in [
        ("/api/v1/inbox", serde_json::to_value(to_alice()).unwrap()),
        (
            "/api/v1/receipts",
            serde_json::json!({"id": "m1", "state": "delivered"}),
        ),
        (
            "/message",
            serde_json::json!({"message": "hi", "from": "carol", "timestamp": "2026-11-24T08:00:00"}),
        ),
    ] {
        let a = crate::helpers::signed_post(&far, path, &bob_key, "bob", "alice", &body).await;
        assert_eq!(a.status, 403, "{path}: {}", a.body);
    }
    let (s, v) = post(
        &format!("{far}/api/v1/inbox"),
        Some("peer-side-link-token-0123"),
        &to_alice(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The page's own routes are not the hop's: beyond loopback they need the page's token
    // (see login.rs), whatever the link token.
    let r = client()
        .get(format!("{far}/api/v1/me"))
        .insert_header((LINK_HEADER, "peer-side-link-token-0123"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    drop(lab);
}

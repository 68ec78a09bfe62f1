//! DNS rebinding (issue 16, point 3): every browser-facing route of the peer, the dashboard
//! and the proxy's own-peer API refuses a `Host` the server does not serve, and changes
//! nothing; addresses, localhost and configured names are served; the routes other roles call
//! (the proxy's legacy `POST /` routed by `Host: <user>`, its relays, the peer's inbox, the
//! controller's registration) are not checked.

use serde_json::{json, Value};

use crate::helpers::{client, config_for, spawn_overlay, TestOverlay};

const EVIL: &str = "evil.example:80";

/// `method path` on `base` with `Host: host`: status and JSON body (Null when not JSON).
async fn call(
    base: &str,
    method: &str,
    path: &str,
    host: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let req = match method {
        "GET" => client().get(&url),
        _ => client().post(&url),
    }
    .insert_header(("Host", host));
    let mut res = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let streaming =
        path.ends_with("stream") || path.ends_with("events") || path == "/message_updates";
    if status == 200 && streaming {
        return (status, Value::Null);
    }
    let bytes = res.body().limit(1 << 22).await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn overlay() -> TestOverlay {
    let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
    config.server.allowed_hosts = vec!["chat.example.org".into()];
    spawn_overlay(config).await
}

#[actix_web::test]
async fn a_host_the_server_does_not_serve_is_refused_on_every_browser_facing_route() {
    let o = overlay().await;
    let (peer, ctl, proxy) = (
        o.url("peer/alice"),
        o.url("controller"),
        o.url("proxy/alice"),
    );
    let send = json!({"peer_id": "bob", "message": "rebound"});
    let routes: Vec<(&str, &str, &str, Option<Value>)> = vec![
        // the chat page, its JSON and its event streams
        (&peer, "GET", "/", None),
        (&peer, "GET", "/peer_name", None),
        (&peer, "GET", "/peers", None),
        (&peer, "GET", "/get_chat_history/bob", None),
        (&peer, "GET", "/message_updates", None),
        (&peer, "POST", "/send_message", Some(send.clone())),
        (&peer, "POST", "/clear_chat/bob", Some(json!({}))),
        (&peer, "POST", "/clear_all_chats", Some(json!({}))),
        (&peer, "GET", "/api/v1/me", None),
        (&peer, "GET", "/api/v1/contacts", None),
        (&peer, "GET", "/api/v1/conversations/bob/messages", None),
        (&peer, "GET", "/api/v1/events", None),
        (&peer, "GET", "/assets/chat.js", None),
        // the dashboard, its JSON, its stream and its actions
        (&ctl, "GET", "/", None),
        (&ctl, "GET", "/api/v1/proxies", None),
        (&ctl, "GET", "/api/v1/dashboard/stream", None),
        (&ctl, "GET", "/api/v1/proxies/x/table/stream", None),
        (&ctl, "GET", "/api/v1/admin/trust", None),
        (&ctl, "GET", "/api/v1/admin/tokens", None),
        (
            &ctl,
            "POST",
            "/api/v1/admin/tokens",
            Some(json!({"name": "carol"})),
        ),
        (
            &ctl,
            "POST",
            "/api/v1/admin/revoke",
            Some(json!({"name": "bob", "reason": "x"})),
        ),
        (
            &ctl,
            "POST",
            "/api/update_proxy_endpoints/x",
            Some(json!({"endpoints": {}})),
        ),
        (&ctl, "POST", "/api/remove_proxy/x", None),
        // the proxy's own-peer API (a local browser passes its loopback rule)
        (&proxy, "GET", "/api/v1/outbox", None),
        (&proxy, "POST", "/api/v1/outbox", Some(json!({}))),
        (&proxy, "GET", "/api/v1/directory", None),
        (&proxy, "POST", "/api/v1/forget", Some(json!({"all": true}))),
        (&proxy, "GET", "/api/v1/signatures", None),
        (&proxy, "GET", "/api/v1/seal", None),
        (&proxy, "POST", "/api/v1/seal/rotate", None),
    ];
    let (_, seal_before) = call(&proxy, "GET", "/api/v1/seal", "localhost", None).await;
    for (base, method, path, body) in routes {
        let (status, v) = call(base, method, path, EVIL, body).await;
        assert_eq!(status, 403, "{method} {path} with Host {EVIL}: {v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("evil.example") && message.contains("DNS rebinding"),
            "{method} {path}: {v}"
        );
    }
    // Nothing was sent, cleared, made or revoked.
    let (status, history) = call(&peer, "GET", "/get_chat_history/bob", "127.0.0.1", None).await;
    assert_eq!((status, history), (200, json!([])));
    let (_, outbox) = call(&proxy, "GET", "/api/v1/outbox", "localhost", None).await;
    assert_eq!(outbox["queued"], 0, "{outbox}");
    let (_, seal) = call(&proxy, "GET", "/api/v1/seal", "localhost", None).await;
    assert_eq!(
        seal["id"], seal_before["id"],
        "the sealing key was not rotated"
    );
    let (_, bob) = call(&o.url("peer/bob"), "GET", "/api/v1/me", "127.0.0.1", None).await;
    assert!(bob.is_object(), "bob's page still answers: {bob}");
}

#[actix_web::test]
async fn addresses_localhost_and_configured_names_are_served() {
    let o = overlay().await;
    let (peer, ctl) = (o.url("peer/alice"), o.url("controller"));
    let port = o.server("peer/alice").addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        "chat.example.org".to_string(),
        "CHAT.example.org.:8443".to_string(),
    ] {
        let (status, v) = call(&peer, "GET", "/api/v1/me", &host, None).await;
        assert_eq!(status, 200, "{host}: {v}");
        let (status, _) = call(&ctl, "GET", "/login", &host, None).await;
        assert_eq!(status, 200, "{host}");
    }
}

#[actix_web::test]
async fn the_routes_other_roles_call_are_not_checked() {
    let o = overlay().await;
    let (alice_proxy, bob_peer) = (o.url("proxy/alice"), o.url("peer/bob"));
    // compat: the original routes a post by `Host: <user>`: alice's own peer's post for bob.
    let now = overlay::wire::rfc3339_ms(overlay::wire::now_ms());
    let (status, v) = call(
        &alice_proxy,
        "POST",
        "/",
        "bob",
        Some(
            json!({"message": "by Host", "from": "alice", "timestamp": now.trim_end_matches('Z')}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // A relay is judged by its signature, not its Host: unsigned, it is 401, not the Host's 403.
    // (With TLS, relays are not on the plain listener at all: refused as such, not for the Host.)
    let (status, v) = call(&alice_proxy, "POST", "/api/v1/relay", EVIL, Some(json!({}))).await;
    let not_on_plain = v["message"]
        .as_str()
        .is_some_and(|m| m.contains("mutual TLS only"));
    assert!(status != 403 || not_on_plain, "{v}");
    // The peer's inbox is its proxy's (the link guards it), under any name.
    let e = overlay::wire::data_plane::Envelope::text("alice", "bob", "via a service name");
    let (status, v) = call(
        &bob_peer,
        "POST",
        "/api/v1/inbox",
        "bob-peer:5002",
        Some(serde_json::to_value(&e).unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // Proxies reach the controller under its service name.
    let (status, _) = call(
        &o.url("controller"),
        "GET",
        "/healthz",
        "controller:8000",
        None,
    )
    .await;
    assert_eq!(status, 200);
}

//! Logins (issue 16): a peer listening beyond loopback serves its page and API only with its
//! page token (the URL printed at start, then a cookie); on loopback it needs none.

use std::os::unix::fs::PermissionsExt;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{client, config_for, Spawned};

/// alice's peer listening on every address (beyond loopback), reached here over loopback.
async fn open_peer(
    tune: impl FnOnce(&mut overlay::config::Config),
) -> (Spawned, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
    tune(&mut config);
    config.set_instance_listeners("alice", Some(listener.local_addr().unwrap()), None);
    let settings = config.peer_settings("alice", dir.path()).unwrap();
    let peer = Spawned::spawn(overlay::peer::start(settings, listener).await.unwrap());
    (peer, format!("http://127.0.0.1:{port}"), dir)
}

async fn get(
    url: &str,
    cookie: Option<&str>,
    bearer: Option<&str>,
) -> (StatusCode, String, awc::http::header::HeaderMap) {
    // Redirects are the subject: not followed.
    let mut req = awc::Client::builder().disable_redirects().finish().get(url);
    if let Some(c) = cookie {
        req = req.insert_header(("Cookie", c));
    }
    if let Some(b) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {b}")));
    }
    let mut res = req.send().await.expect("GET answers");
    let body = res.body().limit(1 << 20).await.unwrap_or_default();
    (
        res.status(),
        String::from_utf8_lossy(&body).into_owned(),
        res.headers().clone(),
    )
}

#[actix_web::test]
async fn a_peer_beyond_loopback_needs_its_token_and_then_a_cookie() {
    let (_peer, base, dir) = open_peer(|_| {}).await;
    let file = dir.path().join("peer-alice.page-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is the user's alone");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();

    // Without it: the page says what to do, the API refuses, nothing is sent.
    let (s, page, _) = get(&format!("{base}/"), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        page.contains("needs its token") && page.contains("peer-alice.page-token"),
        "{page}"
    );
    assert!(
        !page.contains(&token),
        "the token is never shown to whoever asks"
    );
    for path in [
        "/api/v1/me",
        "/api/v1/contacts",
        "/get_chat_history/bob",
        "/peers",
        "/api/v1/events",
    ] {
        let (s, body, _) = get(&format!("{base}{path}"), None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let res = client()
        .post(format!("{base}/send_message"))
        .send_json(&json!({"peer_id": "bob", "message": "as alice?"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (s, _, _) = get(&format!("{base}/?token=not-the-token"), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The printed URL: a session cookie, and the token leaves the address bar.
    let (s, body, headers) = get(&format!("{base}/?token={token}"), None, None).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers.get("location").unwrap(), "/");
    let set = headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap();
    let (s, page, _) = get(&format!("{base}/"), Some(cookie), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("data-me=\"alice\""), "the chat page");
    let (s, me, _) = get(&format!("{base}/api/v1/me"), Some(cookie), None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    // A script may send the token itself.
    let (s, _, _) = get(&format!("{base}/api/v1/me"), None, Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    // The assets of the login page and the routes its proxy calls are not the page's.
    let (s, _, _) = get(&format!("{base}/assets/chat.css"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let e = overlay::wire::data_plane::Envelope::text("bob", "alice", "from the proxy");
    let res = client()
        .post(format!("{base}/api/v1/inbox"))
        .send_json(&e)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // The same token after a restart: it is kept in its file.
    drop(_peer);
    let again = std::fs::read_to_string(&file).unwrap();
    assert_eq!(again.trim(), token);
}

#[actix_web::test]
async fn a_peer_on_loopback_or_opted_out_needs_no_token() {
    let (_peer, base, dir) = open_peer(|c| c.server.pages_without_login = true).await;
    let (s, _, _) = get(&format!("{base}/api/v1/me"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!dir.path().join("peer-alice.page-token").exists());
    // On loopback (as the demo runs): no token, no file.
    let dir = tempfile::tempdir().unwrap();
    let listener = crate::helpers::free_listener();
    let mut config = config_for(&[("alice", &[])]);
    config.set_instance_listeners("alice", Some(listener.local_addr().unwrap()), None);
    let peer = crate::helpers::spawn_peer(&config, "alice", dir.path(), listener).await;
    let (s, body, _) = get(&format!("{}/api/v1/me", peer.url), None, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["name"], "alice");
    assert!(!dir.path().join("peer-alice.page-token").exists());
}

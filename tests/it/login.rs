//! Logins (issue 16): a peer listening beyond loopback serves its page and API only with its
//! page token (the URL printed at start, then a cookie); on loopback it needs none.

use std::os::unix::fs::PermissionsExt;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{config_for, Spawned};

thread_local! {
    /// The data dir whose page CA this test's HTTPS pages are checked against.
    static PAGES: std::cell::RefCell<Option<std::path::PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// A client for this test's pages (HTTPS beyond loopback, with the data dir's page CA), not
/// following redirects (they are the subject).
fn client() -> awc::Client {
    let mut connector = awc::Connector::new();
    if let Some(dir) = PAGES.with(|p| p.borrow().clone()) {
        connector = connector.rustls_0_23(overlay::web::page_tls::client(&dir));
    }
    awc::Client::builder()
        .disable_redirects()
        .connector(connector)
        .finish()
}

/// This test's pages are checked against `dir`'s page CA.
fn trust_pages_of(dir: &std::path::Path) {
    PAGES.with(|p| *p.borrow_mut() = Some(dir.to_path_buf()));
}

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
    trust_pages_of(dir.path());
    // Beyond loopback, its page is HTTPS with a certificate from the data dir's page CA.
    (peer, format!("https://127.0.0.1:{port}"), dir)
}

async fn get(
    url: &str,
    cookie: Option<&str>,
    bearer: Option<&str>,
) -> (StatusCode, String, awc::http::header::HeaderMap) {
    // Redirects are the subject: not followed.
    let mut req = client().get(url);
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

/// The session cookie a login answer sets (`name=value`), checked to be HttpOnly,
/// SameSite=Strict and expiring.
fn session_cookie(headers: &awc::http::header::HeaderMap) -> String {
    let set = headers
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Max-Age="),
        "{set}"
    );

    set.split(';').next().unwrap().to_string()
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
    // The page is HTTPS beyond loopback: its cookie never goes in plain HTTP.
    assert!(
        headers
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("; Secure"),
        "{headers:?}"
    );
    let cookie = session_cookie(&headers);
    // Named for its user: browsers send a host's cookies to all its ports, so two pages on one
    // machine must not overwrite each other's login.
    assert!(cookie.starts_with("overlay-page-alice="), "{cookie}");
    let cookie = cookie.as_str();
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

// ---- the controller's admin ----

/// A controller of alice (a proxy of the original, listed at 127.0.0.1) with her registered.
async fn controller() -> (Spawned, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
    config.legacy_proxies = vec![overlay::config::LegacyProxyConfig {
        name: overlay::config::InstanceName::parse("alice").unwrap(),
        address: "127.0.0.1".parse().unwrap(),
    }];
    let ctl =
        crate::helpers::spawn_controller(&config, dir.path(), crate::helpers::free_listener())
            .await;
    let res = client()
        .post(format!("{}/api/register", ctl.url))
        .send_json(&json!({"proxy_id": "p-alice", "instance_name": "alice", "host": "127.0.0.1", "port": 4001}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (ctl, dir, token)
}

/// `POST url` (JSON) with `cookie` or `bearer`, redirects not followed: status and JSON.
async fn post_as(
    url: &str,
    body: Value,
    cookie: Option<&str>,
    bearer: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = client().post(url);
    if let Some(c) = cookie {
        req = req.insert_header(("Cookie", c));
    }
    if let Some(b) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {b}")));
    }
    let mut res = req.send_json(&body).await.unwrap();
    let status = res.status();
    (
        status,
        res.json().limit(1 << 22).await.unwrap_or(Value::Null),
    )
}

/// The login form posted with `field=value`: status, headers.
async fn login_form(
    base: &str,
    field: &str,
    value: &str,
) -> (StatusCode, awc::http::header::HeaderMap) {
    let res = client()
        .post(format!("{base}/login"))
        .send_form(&[(field, value)])
        .await
        .unwrap();
    (res.status(), res.headers().clone())
}

/// The endpoints table alice's proxy is handed (the original's API, from her listed address).
async fn alices_table(base: &str) -> Value {
    let (_, body, _) = get(
        &format!("{base}/api/getendpoints?proxy_id=p-alice"),
        None,
        None,
    )
    .await;
    serde_json::from_str::<Value>(&body).unwrap()["endpoints"].clone()
}

#[actix_web::test]
async fn without_a_login_no_admin_action_goes_through_and_nothing_changes() {
    let (ctl, _dir, token) = controller().await;
    let base = ctl.url.clone();
    let table = alices_table(&base).await;
    for (path, body) in [
        (
            "/api/update_proxy_endpoints/p-alice",
            json!({"endpoints": {"bob": null}}),
        ),
        ("/api/remove_proxy/p-alice", json!({})),
        (
            "/api/v1/admin/tokens",
            json!({"name": "mallory", "ttl": "1h"}),
        ),
        (
            "/api/v1/admin/revoke",
            json!({"name": "alice", "reason": "no"}),
        ),
    ] {
        let (s, v) = post_as(&format!("{base}{path}"), body.clone(), None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("admin login"),
            "{v}"
        );
        let (s, _) = post_as(
            &format!("{base}{path}"),
            body,
            Some("overlay-admin=made-up"),
            Some("not-the-token"),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
    // Nothing changed: the same table, still registered, no token made, nobody revoked.
    assert_eq!(alices_table(&base).await, table);
    let (s, tokens, _) = get(&format!("{base}/api/v1/admin/tokens"), None, Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!tokens.contains("mallory"), "no token was made: {tokens}");
    let (_, trust, _) = get(&format!("{base}/api/v1/admin/trust"), None, Some(&token)).await;
    assert!(!trust.contains("revoked"), "nobody was revoked: {trust}");
    // The dashboard and its feeds ask for a login too.
    let (s, _, headers) = get(&format!("{base}/"), None, None).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers.get("location").unwrap(), "/login");
    for path in [
        "/api/v1/proxies",
        "/api/v1/dashboard/stream",
        "/api/v1/proxies/p-alice/table/stream",
    ] {
        let (s, _, _) = get(&format!("{base}{path}"), None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[actix_web::test]
async fn the_admin_logs_in_with_the_token_acts_with_the_cookie_and_logs_out() {
    let (ctl, _dir, token) = controller().await;
    let base = ctl.url.clone();
    let (s, page, _) = get(&format!("{base}/login"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("admin.token") && !page.contains(&token),
        "{page}"
    );
    let (s, headers) = login_form(&base, "token", &token).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let cookie = session_cookie(&headers);
    let (s, page, _) = get(&format!("{base}/"), Some(&cookie), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("Log out") && !page.contains(&token));
    let (s, v) = post_as(
        &format!("{base}/api/update_proxy_endpoints/p-alice"),
        json!({"endpoints": {"bob": null}}),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        alices_table(&base).await.get("bob").is_none(),
        "the edit took"
    );
    // Every admin action is in the audit log, with its address.
    let (_, trust, _) = get(&format!("{base}/api/v1/admin/trust"), Some(&cookie), None).await;
    let audit = serde_json::from_str::<Value>(&trust).unwrap()["audit"].to_string();
    assert!(
        audit.contains("\"login\"") && audit.contains("table edit") && audit.contains("127.0.0.1"),
        "{audit}"
    );
    // Logged out: the cookie is worth nothing.
    let (s, headers) = {
        let res = client()
            .post(format!("{base}/logout"))
            .insert_header(("Cookie", cookie.as_str()))
            .send()
            .await
            .unwrap();
        (res.status(), res.headers().clone())
    };
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (s, _, _) = get(&format!("{base}/"), Some(&cookie), None).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "back to the login");
}

#[actix_web::test]
async fn wrong_tokens_and_passwords_are_rate_limited_and_a_password_logs_in_on_loopback() {
    let (ctl, dir, token) = controller().await;
    let base = ctl.url.clone();
    // No password yet: a password never logs in.
    let (s, _) = login_form(&base, "password", "anything at all").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    overlay::controller::admin::set_password(dir.path(), "correct horse battery").unwrap();
    let (s, headers) = login_form(&base, "password", "correct horse battery").await;
    assert_eq!(
        s,
        StatusCode::SEE_OTHER,
        "a password logs in from this machine"
    );
    assert!(headers.get("set-cookie").is_some());
    // Ten wrong tries (the one before the password was set counts), then even the right
    // token waits: 429.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            login_form(&base, "password", &format!("wrong guess {i}"))
                .await
                .0,
        );
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    let (s, _) = login_form(&base, "token", "not the token").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = login_form(&base, "token", &token).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let (s, _, _) = get(
        &format!("{base}/api/v1/proxies"),
        None,
        Some("another wrong token"),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
}

#[actix_web::test]
async fn the_admin_token_is_in_a_private_file_and_in_no_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&[("alice", &[])]);
    config.controller.listen = crate::helpers::free_listener().local_addr().unwrap();
    let (mut child, _url) =
        crate::helpers::run_binary(&config, dir.path(), &["controller"], "controller").await;
    let file = dir.path().join("data").join("admin.token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode, 0o600);
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains("admin.token"),
        "the log says where it is: {log}"
    );
    assert!(!log.contains(&token), "the log never shows it");
}

#[actix_web::test]
async fn a_password_beyond_loopback_is_taken_over_https_only_and_the_token_still_works() {
    use crate::chaos::netlab::Lab;
    if let Some(why) = Lab::unavailable() {
        eprintln!("skipping: a non-loopback address needs the network lab: {why}");
        return;
    }
    let lab = Lab::create(1).expect("the network lab");
    // The dashboard listening beyond loopback: HTTPS, with this data dir's page CA.
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = config_for(&[("alice", &[])]);
    // The address browsers use, so the page certificate names it.
    config.server.allowed_hosts = vec![lab.own_addr().to_string()];
    let _ctl = crate::helpers::spawn_controller(&config, dir.path(), listener).await;
    overlay::controller::admin::set_password(dir.path(), "correct horse battery").unwrap();
    trust_pages_of(dir.path());
    let far = format!("https://{}:{port}", lab.own_addr());
    let (s, page, _) = get(&format!("{far}/login"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("name=\"password\""),
        "a password field over HTTPS"
    );
    let (s, headers) = login_form(&far, "password", "correct horse battery").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let set = headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    // In plain HTTP (the config says so) a password would cross the network readable:
    // refused; the token still logs in.
    let plain_dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = config_for(&[("alice", &[])]);
    config.server.pages_plain_http = true;
    let _plain = crate::helpers::spawn_controller(&config, plain_dir.path(), listener).await;
    overlay::controller::admin::set_password(plain_dir.path(), "correct horse battery").unwrap();
    let far = format!("http://{}:{port}", lab.own_addr());
    let (s, page, _) = get(&format!("{far}/login"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !page.contains("name=\"password\""),
        "no password field beyond loopback in plain HTTP"
    );
    let (s, headers) = login_form(&far, "password", "correct horse battery").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(headers.get("set-cookie").is_none());
    let token = std::fs::read_to_string(plain_dir.path().join("admin.token")).unwrap();
    let (s, headers) = login_form(&far, "token", token.trim()).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(headers.get("set-cookie").is_some());
    drop(lab);
}

#[test]
fn overlay_admin_password_stores_an_argon2id_hash_read_from_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let run = |password: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_overlay"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["admin", "password"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the overlay binary runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let short = run("too short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12"));
    assert!(
        !dir.path().join("admin.password").exists(),
        "nothing written"
    );
    let ok = run("correct horse battery");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stored = std::fs::read_to_string(dir.path().join("admin.password")).unwrap();
    assert!(
        stored.starts_with("$argon2id$") && !stored.contains("horse"),
        "{stored}"
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(!out.contains("horse"), "{out}");
}

/// `overlay health` on a page beyond loopback: HTTPS, trusted through the data dir's page CA
/// (as a container's healthcheck asks its own role), and refused without it.
#[actix_web::test]
async fn health_reaches_an_https_page_through_its_data_dirs_page_ca() {
    let (_peer, url, dir) = open_peer(|_| {}).await;
    let health = |data_dir: std::path::PathBuf| {
        let url = format!("{url}/healthz");
        actix_web::web::block(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_overlay"))
                .env_remove("OVERLAY_CONFIG")
                .env_remove("OVERLAY_DATA_DIR")
                .arg("--data-dir")
                .arg(data_dir)
                .args(["health", &url])
                .output()
                .expect("overlay runs")
        })
    };
    let ok = health(dir.path().to_path_buf()).await.unwrap();
    assert!(
        ok.status.success(),
        "{} {}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"status\":\"ok\""));
    let elsewhere = tempfile::tempdir().unwrap();
    let refused = health(elsewhere.path().to_path_buf()).await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
}

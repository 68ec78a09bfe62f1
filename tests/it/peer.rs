//! Integration tests: peer. Each test starts real peers on port 0 pointed at a FAKE proxy (an
//! actix-web server in this module, on port 0): it records what the peer hands over
//! (`/api/v1/outbox`, `/api/v1/forget`), answers `/peers` and `/api/v1/directory`, can be told
//! to refuse, and relays: every accepted envelope goes to the addressee's peer
//! (`/api/v1/inbox`) and a `delivered` receipt goes back to the sender's peer, as a real
//! proxy pair does. The real proxies replace it in the full-overlay tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use awc::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::helpers::{client, config_for, eventually, free_listener, run_binary, subscribe};
use overlay::peer::auto_reply::AutoReplyStats;
use overlay::peer::contacts::ContactList;
use overlay::peer::routes::Me;
use overlay::peer::store::{HistoryPage, MessageState};
use overlay::peer::updates::PageEvent;
use overlay::wire::data_plane::{
    conversation_id, Accepted, Ack, DeliveryState, DirectoryEntry, Envelope, MessageId, PeerKind,
    Receipt,
};
use overlay::wire::legacy::ErrorBody;

// ---------------------------------------------------------------------------------------------
// The fake proxy (one server standing in for every user's proxy).

/// What the fake proxy saw and how it behaves; shared with the test.
#[derive(Default)]
pub struct FakeNet {
    /// Every envelope handed to `/api/v1/outbox` and accepted.
    pub outbox: Mutex<Vec<Envelope>>,
    /// Every `/api/v1/forget` body, as sent.
    pub forgets: Mutex<Vec<Value>>,
    /// How long `/api/v1/forget` takes before it answers (a slow proxy).
    pub forget_delay: Mutex<Duration>,
    /// What the fake took, in order: `outbox:{text}` and `forget` (recorded when answered).
    pub events: Mutex<Vec<String>>,
    /// When set, `/api/v1/outbox` answers this status and legacy error message.
    pub refuse: Mutex<Option<(u16, String)>>,
    /// Users: name → peer base URL (relayed to); listed as people.
    pub peers: Mutex<BTreeMap<String, String>>,
    /// AI names: listed as `ai`; what is sent to them is kept, not relayed.
    pub ais: Mutex<Vec<String>>,
    /// Users the directory shows offline.
    pub offline: Mutex<Vec<String>>,
}

impl FakeNet {
    pub fn outbox(&self) -> Vec<Envelope> {
        self.outbox.lock().unwrap().clone()
    }
    fn peer_url(&self, name: &str) -> Option<String> {
        self.peers
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, u)| u.clone())
    }
}

pub struct FakeProxy {
    pub url: String,
    pub net: Arc<FakeNet>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeProxy {
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// # POST /api/v1/outbox (fake): record, answer 202, then relay and send the receipt.
async fn fake_outbox(net: web::Data<Arc<FakeNet>>, env: web::Json<Envelope>) -> HttpResponse {
    let env = env.into_inner();
    if let Some((status, message)) = net.refuse.lock().unwrap().clone() {
        return HttpResponse::build(StatusCode::from_u16(status).unwrap())
            .json(ErrorBody::new(message));
    }
    let is_ai = net
        .ais
        .lock()
        .unwrap()
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&env.to));
    let target = net.peer_url(&env.to);
    if target.is_none() && !is_ai {
        return HttpResponse::NotFound().json(ErrorBody::new(format!("Unknown peer: {}", env.to)));
    }
    net.outbox.lock().unwrap().push(env.clone());
    net.events
        .lock()
        .unwrap()
        .push(format!("outbox:{}", env.body.text()));
    let accepted = Accepted {
        id: env.id.clone(),
        state: DeliveryState::Pending,
    };
    if let (Some(target), Some(sender)) = (target, net.peer_url(&env.from)) {
        actix_web::rt::spawn(async move {
            let c = client();
            let state = match c
                .post(format!("{target}/api/v1/inbox"))
                .send_json(&env)
                .await
            {
                Ok(r) if r.status().is_success() => DeliveryState::Delivered,
                Ok(r) => DeliveryState::Failed {
                    reason: format!("{} answered {}", env.to, r.status()),
                },
                Err(e) => DeliveryState::Failed {
                    reason: format!("{} unreachable: {e}", env.to),
                },
            };
            let receipt = Receipt {
                id: env.id.clone(),
                state,
            };
            let _ = c
                .post(format!("{sender}/api/v1/receipts"))
                .send_json(&receipt)
                .await;
        });
    }
    HttpResponse::Accepted().json(accepted)
}

/// # GET /peers (fake): the legacy table.
async fn fake_peers(net: web::Data<Arc<FakeNet>>) -> HttpResponse {
    let mut peers = serde_json::Map::new();
    for (i, name) in net.peers.lock().unwrap().keys().enumerate() {
        peers.insert(
            name.clone(),
            json!({"host": "127.0.0.1", "port": 20000 + i}),
        );
    }
    for name in net.ais.lock().unwrap().iter() {
        peers.insert(
            name.clone(),
            json!({"host": "api.example", "port": 443, "is_api": true}),
        );
    }
    HttpResponse::Ok().json(json!({"instance": "fake", "peers": peers}))
}

/// # GET /api/v1/directory (fake)
async fn fake_directory(net: web::Data<Arc<FakeNet>>) -> HttpResponse {
    let offline = net.offline.lock().unwrap().clone();
    let mut d: Vec<DirectoryEntry> = net
        .peers
        .lock()
        .unwrap()
        .keys()
        .map(|n| DirectoryEntry {
            name: n.clone(),
            kind: PeerKind::Person,
            online: Some(!offline.contains(n)),
        })
        .collect();
    d.extend(net.ais.lock().unwrap().iter().map(|n| DirectoryEntry {
        name: n.clone(),
        kind: PeerKind::Ai,
        online: None,
    }));
    HttpResponse::Ok().json(d)
}

/// # POST /api/v1/forget (fake)
async fn fake_forget(net: web::Data<Arc<FakeNet>>, f: web::Json<Value>) -> HttpResponse {
    let delay = *net.forget_delay.lock().unwrap();
    actix_rt::time::sleep(delay).await;
    net.forgets.lock().unwrap().push(f.into_inner());
    net.events.lock().unwrap().push("forget".into());
    HttpResponse::Ok().json(json!({"status": "success", "message": "forgotten"}))
}

/// Starts the fake proxy; `ais` are listed as AI models.
pub async fn spawn_fake_proxy(ais: &[&str]) -> FakeProxy {
    spawn_fake_proxy_on(ais, free_listener()).await
}

/// Starts the fake proxy on `listener` (e.g. the address a peer was told, once it is up).
pub async fn spawn_fake_proxy_on(ais: &[&str], listener: std::net::TcpListener) -> FakeProxy {
    let net = Arc::new(FakeNet::default());
    *net.ais.lock().unwrap() = ais.iter().map(|s| s.to_string()).collect();
    let data = web::Data::new(net.clone());
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/api/v1/outbox", web::post().to(fake_outbox))
            .route("/peers", web::get().to(fake_peers))
            .route("/api/v1/directory", web::get().to(fake_directory))
            .route("/api/v1/forget", web::post().to(fake_forget))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    FakeProxy { url, net, handle }
}

// ---------------------------------------------------------------------------------------------
// Peers under test.

pub struct TestPeer {
    pub name: String,
    pub url: String,
    handle: actix_web::dev::ServerHandle,
    task: actix_rt::task::JoinHandle<std::io::Result<()>>,
}

impl TestPeer {
    /// Stops the peer and waits until its store is closed.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// Starts `name`'s peer (from `config`) pointed at `proxy_url`, storing in `data_dir`.
pub async fn start_peer(
    config: &overlay::config::Config,
    name: &str,
    proxy_url: &str,
    data_dir: &std::path::Path,
) -> TestPeer {
    let mut settings = config.peer_settings(name, data_dir).expect("instance");
    settings.proxy_url = proxy_url.to_string();
    let running = overlay::peer::start(settings, free_listener())
        .await
        .expect("peer starts");
    let url = running.url();
    let handle = running.handle();
    let task = actix_rt::spawn(running.serve());
    TestPeer {
        name: name.to_string(),
        url,
        handle,
        task,
    }
}

/// Users on one fake proxy: `users` (name, auto-reply lines), plus AI names listed as `ai`.
pub struct FakeOverlay {
    pub proxy: FakeProxy,
    pub peers: Vec<TestPeer>,
    /// Kept so the stores live as long as the overlay.
    _data_dir: tempfile::TempDir,
}

impl FakeOverlay {
    pub fn url(&self, name: &str) -> String {
        self.peers
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no peer {name}"))
            .url
            .clone()
    }
}

pub async fn fake_overlay(users: &[(&str, &[&str])], ais: &[&str]) -> FakeOverlay {
    let config = config_for(users);
    let data_dir = tempfile::tempdir().unwrap();
    let proxy = spawn_fake_proxy(ais).await;
    let mut peers = Vec::new();
    for (name, _) in users {
        let p = start_peer(&config, name, &proxy.url, data_dir.path()).await;
        proxy
            .net
            .peers
            .lock()
            .unwrap()
            .insert(name.to_string(), p.url.clone());
        peers.push(p);
    }
    FakeOverlay {
        proxy,
        peers,
        _data_dir: data_dir,
    }
}

// ---------------------------------------------------------------------------------------------
// Small HTTP helpers.

async fn get_json<T: DeserializeOwned>(url: &str) -> (StatusCode, T) {
    let mut r = client().get(url).send().await.expect("GET");
    let status = r.status();
    let body = r.body().limit(64 << 20).await.expect("body");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {url}: {e}: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

async fn post_json<T: DeserializeOwned>(
    url: &str,
    body: &impl serde::Serialize,
) -> (StatusCode, T) {
    let mut r = client().post(url).send_json(body).await.expect("POST");
    let status = r.status();
    let bytes = r.body().limit(64 << 20).await.expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("POST {url}: {e}: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

async fn history(peer_url: &str, with: &str) -> Vec<Value> {
    let (s, v): (_, Vec<Value>) = get_json(&format!("{peer_url}/get_chat_history/{with}")).await;
    assert_eq!(s, StatusCode::OK);
    v
}

async fn stats(peer_url: &str) -> AutoReplyStats {
    let (_, me): (_, Me) = get_json(&format!("{peer_url}/api/v1/me")).await;
    me.auto_reply
}

fn envelope(from: &str, to: &str, id: &str, text: &str) -> Envelope {
    let mut e = Envelope::text(from, to, text);
    e.id = MessageId::parse(id).unwrap();
    e
}

// ---------------------------------------------------------------------------------------------
// The original's JSON API, row by row.

#[actix_web::test]
async fn the_page_and_peer_name_and_peers_follow_the_proxy_table() {
    let o = fake_overlay(&[("alice", &[]), ("bob", &[]), ("carol", &[])], &["BOT"]).await;
    let alice = o.url("alice");

    let mut r = client().get(&alice).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = String::from_utf8(r.body().await.unwrap().to_vec()).unwrap();
    assert!(html.contains("/assets/chat.js") && html.contains("/assets/chat.css"));
    assert!(html.contains("data-peer=\"bob\"") && html.contains("data-peer=\"BOT\""));
    assert!(
        !html.contains("data-peer=\"alice\""),
        "own name is not a contact"
    );
    let css = client()
        .get(format!("{alice}/assets/chat.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), StatusCode::OK);

    let (s, name): (_, Value) = get_json(&format!("{alice}/peer_name")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(name, json!({"name": "alice"}));

    let (s, peers): (_, Value) = get_json(&format!("{alice}/peers")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        peers,
        json!([
            {"name": "BOT", "id": "BOT"},
            {"name": "Bob", "id": "bob"},
            {"name": "Carol", "id": "carol"}
        ])
    );

    let (_, contacts): (_, ContactList) = get_json(&format!("{alice}/api/v1/contacts")).await;
    let kinds: Vec<(&str, PeerKind)> = contacts
        .contacts
        .iter()
        .map(|c| (c.name.as_str(), c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("bob", PeerKind::Person),
            ("carol", PeerKind::Person),
            ("BOT", PeerKind::Ai)
        ]
    );
    assert_eq!(contacts.contacts[0].online, Some(true));
    // The contact list shows the names as /peers does: "Bob", and AI endpoints as written.
    let shown: Vec<&str> = contacts
        .contacts
        .iter()
        .map(|c| c.display.as_str())
        .collect();
    assert_eq!(shown, ["Bob", "Carol", "BOT"]);
    let mut r = client().get(&alice).send().await.expect("GET /");
    let page = String::from_utf8(r.body().await.expect("page").to_vec()).unwrap();
    assert!(
        page.contains(r#"<span class="name">Bob</span>"#),
        "the page lists Bob by his shown name"
    );
}

#[actix_web::test]
async fn send_message_answers_success_once_the_proxy_holds_it_and_it_turns_delivered() {
    let o = fake_overlay(&[("alice", &[]), ("bob", &[])], &[]).await;
    let (alice, bob) = (o.url("alice"), o.url("bob"));

    let (s, v): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "bob", "message": "hello <b>bob</b>"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "success");

    // The proxy got the native envelope before the answer.
    let sent = o.proxy.net.outbox();
    assert_eq!(sent.len(), 1);
    let e = &sent[0];
    assert_eq!((e.from.as_str(), e.to.as_str()), ("alice", "bob"));
    assert_eq!(e.conversation, conversation_id("alice", "bob"));
    assert_eq!(e.body.text(), "hello <b>bob</b>");
    assert_eq!(v["id"], e.id.as_str());

    // Relayed to bob, and alice's copy turns delivered.
    let entry = eventually("alice's copy delivered", || {
        let alice = alice.clone();
        async move {
            let h = history(&alice, "bob").await;
            (h.len() == 1 && h[0]["status"] == "delivered").then(|| h[0].clone())
        }
    })
    .await;
    assert_eq!(entry["peer_id"], "bob");
    assert_eq!(entry["sender"], "alice");
    assert_eq!(entry["message"], "hello <b>bob</b>");
    assert_eq!(entry["auto_reply"], false);
    assert!(entry["timestamp"].as_str().unwrap().contains('T'));

    let at_bob = history(&bob, "ALICE").await;
    assert_eq!(at_bob.len(), 1, "conversations are keyed ignoring case");
    assert_eq!(at_bob[0]["sender"], "alice");
    assert_eq!(at_bob[0]["status"], "received");
}

#[actix_web::test]
async fn send_message_names_the_missing_fields_and_stores_nothing() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let (s, v): (_, Value) = post_json(&format!("{alice}/send_message"), &json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v,
        json!({"status": "failed", "error": "Missing required fields: peer_id, message"})
    );
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "bob", "message": "  "}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "Missing required fields: message");
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "../etc", "message": "x"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("peer_id"), "{v}");
    assert!(o.proxy.net.outbox().is_empty());
    assert!(history(&alice, "bob").await.is_empty());
}

#[actix_web::test]
async fn a_message_the_proxy_refuses_is_kept_as_failed_with_the_proxys_status() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "zed", "message": "anyone?"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v, json!({"status": "failed", "error": "Unknown peer: zed"}));
    let h = history(&alice, "zed").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["status"], "failed");

    *o.proxy.net.refuse.lock().unwrap() = Some((413, "message too large for bob".into()));
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "bob", "message": "big"}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["status"], "failed");

    // The page API shows the reason with the failed message.
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{alice}/api/v1/conversations/bob/messages")).await;
    assert_eq!(
        page.messages[0].state,
        MessageState::Failed {
            reason: "message too large for bob".into()
        }
    );
}

#[actix_web::test]
async fn an_unreachable_proxy_gives_502_and_the_message_is_kept_pending_then_sent_once_it_is_back()
{
    let config = config_for(&[("alice", &[])]);
    let dir = tempfile::tempdir().unwrap();
    let proxy_addr = free_listener().local_addr().unwrap();
    let proxy_url = format!("http://{proxy_addr}");
    let alice = start_peer(&config, "alice", &proxy_url, dir.path()).await;
    let (s, v): (_, Value) = post_json(
        &format!("{}/send_message", alice.url),
        &json!({"peer_id": "bob", "message": "are you there?"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(v["status"], "failed");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("proxy unreachable"), "{v}");
    assert!(
        error.contains("kept; will be sent when your proxy is back"),
        "{v}"
    );
    // Kept pending, with the reason the page shows.
    let h = history(&alice.url, "bob").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["status"], "pending");
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{}/api/v1/conversations/bob/messages", alice.url)).await;
    let waiting = page.messages[0].waiting.clone().expect("a waiting reason");
    assert!(waiting.starts_with("waiting for your proxy"), "{waiting}");
    // /peers cannot be answered either: a clear error, not an empty list.
    let r = client()
        .get(format!("{}/peers", alice.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);

    // The proxy comes up on the address alice knows: the message is handed over, once.
    let mut events = subscribe(&format!("{}/api/v1/events", alice.url)).await;
    let bob = start_peer(&config_for(&[("bob", &[])]), "bob", &proxy_url, dir.path()).await;
    let proxy = spawn_fake_proxy_on(&[], std::net::TcpListener::bind(proxy_addr).unwrap()).await;
    {
        let mut peers = proxy.net.peers.lock().unwrap();
        peers.insert("bob".into(), bob.url.clone());
        peers.insert("alice".into(), alice.url.clone());
    }
    let handed = eventually("alice hands the kept message to her proxy", || {
        let net = proxy.net.clone();
        async move { (!net.outbox().is_empty()).then(|| net.outbox()) }
    })
    .await;
    assert_eq!(handed[0].body.text(), "are you there?");
    assert_eq!(handed[0].id.as_str(), h_id(&alice.url).await);
    // The page learns it left the waiting state, then that it was delivered.
    loop {
        match events.next::<PageEvent>().await {
            PageEvent::State { message } if message.state == MessageState::Delivered => break,
            PageEvent::State { message } => assert_eq!(message.waiting, None),
            other => panic!("expected state events, got {other:?}"),
        }
    }
    assert_eq!(history(&bob.url, "alice").await.len(), 1);
    assert_eq!(history(&alice.url, "bob").await[0]["status"], "delivered");
    // Nothing is handed over twice once the proxy took it.
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{}/api/v1/conversations/bob/messages", alice.url)).await;
    assert_eq!(page.messages[0].waiting, None);
    assert_eq!(proxy.net.outbox().len(), 1);
    alice.stop().await;
    bob.stop().await;
    proxy.stop().await;
}

async fn h_id(peer_url: &str) -> String {
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{peer_url}/api/v1/conversations/bob/messages")).await;
    page.messages[0].id.to_string()
}

#[actix_web::test]
async fn a_proxy_that_answers_5xx_keeps_the_message_waiting_until_it_takes_it() {
    let o = fake_overlay(&[("alice", &[]), ("bob", &[])], &[]).await;
    let alice = o.url("alice");
    *o.proxy.net.refuse.lock().unwrap() = Some((503, "outbox store busy".into()));
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "bob", "message": "when you can"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("outbox store busy") && e.contains("kept")),
        "{v}"
    );
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{alice}/api/v1/conversations/bob/messages")).await;
    assert_eq!(page.messages[0].state, MessageState::Pending);
    assert!(page.messages[0].waiting.is_some());
    assert!(o.proxy.net.outbox().is_empty());

    // The proxy recovers: the kept message goes once, and is delivered.
    *o.proxy.net.refuse.lock().unwrap() = None;
    eventually("the kept message delivered", || {
        let alice = alice.clone();
        async move {
            let h = history(&alice, "bob").await;
            (h[0]["status"] == "delivered").then_some(())
        }
    })
    .await;
    assert_eq!(o.proxy.net.outbox().len(), 1);
    assert_eq!(history(&o.url("bob"), "alice").await.len(), 1);
}

#[actix_web::test]
async fn a_message_left_unsent_is_handed_over_when_the_peer_starts_again() {
    let config = config_for(&[("alice", &[])]);
    let dir = tempfile::tempdir().unwrap();
    let proxy_addr = free_listener().local_addr().unwrap();
    let proxy_url = format!("http://{proxy_addr}");
    let alice = start_peer(&config, "alice", &proxy_url, dir.path()).await;
    for text in ["one", "two"] {
        let (s, _): (_, Value) = post_json(
            &format!("{}/send_message", alice.url),
            &json!({"peer_id": "BOT", "message": text}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_GATEWAY);
    }
    alice.stop().await;
    let proxy =
        spawn_fake_proxy_on(&["BOT"], std::net::TcpListener::bind(proxy_addr).unwrap()).await;
    let alice = start_peer(&config, "alice", &proxy_url, dir.path()).await;
    let handed = eventually("both kept messages handed over after the restart", || {
        let net = proxy.net.clone();
        async move { (net.outbox().len() >= 2).then(|| net.outbox()) }
    })
    .await;
    let texts: Vec<&str> = handed.iter().map(|e| e.body.text()).collect();
    assert_eq!(texts, ["one", "two"], "in the order they were written");
    eventually("no longer waiting", || {
        let url = alice.url.clone();
        async move {
            let (_, page): (_, HistoryPage) =
                get_json(&format!("{url}/api/v1/conversations/BOT/messages")).await;
            page.messages
                .iter()
                .all(|m| m.waiting.is_none() && m.state == MessageState::Pending)
                .then_some(())
        }
    })
    .await;
    assert_eq!(proxy.net.outbox().len(), 2);
    alice.stop().await;
    proxy.stop().await;
}

#[actix_web::test]
async fn a_message_the_proxy_never_takes_fails_after_the_expiry() {
    let mut config = config_for(&[("alice", &[])]);
    config.delivery.expire_after_secs = 1;
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://{}", free_listener().local_addr().unwrap());
    let alice = start_peer(&config, "alice", &dead, dir.path()).await;
    let (s, _): (_, Value) = post_json(
        &format!("{}/send_message", alice.url),
        &json!({"peer_id": "bob", "message": "lost cause"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    let (_, page): (_, HistoryPage) =
        get_json(&format!("{}/api/v1/conversations/bob/messages", alice.url)).await;
    assert_eq!(page.messages[0].state, MessageState::Pending);
    let reason = eventually("the kept message fails after the expiry", || {
        let url = alice.url.clone();
        async move {
            let (_, page): (_, HistoryPage) =
                get_json(&format!("{url}/api/v1/conversations/bob/messages")).await;
            match &page.messages[0].state {
                MessageState::Failed { reason } => Some(reason.clone()),
                _ => None,
            }
        }
    })
    .await;
    assert!(reason.contains("could not be reached"), "{reason}");
    assert_eq!(history(&alice.url, "bob").await[0]["status"], "failed");
    alice.stop().await;
}

#[actix_web::test]
async fn a_legacy_message_is_stored_under_its_sender_once_even_when_retried() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let body = json!({"message": "hi from the original", "from": "Bob",
                      "timestamp": "2026-11-24T08:41:31.123456"});
    for _ in 0..2 {
        let (s, v): (_, Value) = post_json(&format!("{alice}/message"), &body).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["status"], "success");
    }
    let h = history(&alice, "bob").await;
    assert_eq!(h.len(), 1, "a retried post is stored once: {h:?}");
    assert_eq!(h[0]["sender"], "Bob");
    assert_eq!(h[0]["message"], "hi from the original");
    assert_eq!(h[0]["timestamp"], "2026-11-24T08:41:31.123Z");

    let (s, v): (_, Value) = post_json(
        &format!("{alice}/message"),
        &json!({"message": "no sender"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v,
        json!({"status": "failed", "error": "Missing required fields: from"})
    );
}

#[actix_web::test]
async fn an_unknown_conversation_is_an_empty_history() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    assert!(history(&o.url("alice"), "nobody").await.is_empty());
    let (s, page): (_, HistoryPage) = get_json(&format!(
        "{}/api/v1/conversations/nobody/messages",
        o.url("alice")
    ))
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.messages.is_empty() && page.next_before.is_none());
}

#[actix_web::test]
async fn clear_chat_and_clear_all_answer_success_empty_the_history_and_tell_the_proxy() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    for (id, from) in [("c1", "bob"), ("c2", "bob"), ("c3", "carol")] {
        let (s, _): (_, Ack) = post_json(
            &format!("{alice}/api/v1/inbox"),
            &envelope(from, "alice", id, "x"),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, v): (_, Value) = post_json(&format!("{alice}/clear_chat/BOB"), &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "success");
    assert!(v["message"].is_string());
    assert!(history(&alice, "bob").await.is_empty());
    assert_eq!(history(&alice, "carol").await.len(), 1);

    let (s, v): (_, Value) = post_json(&format!("{alice}/clear_all_chats"), &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "success");
    assert!(history(&alice, "carol").await.is_empty());

    let net = o.proxy.net.clone();
    eventually("both forgets reach the proxy", || {
        let net = net.clone();
        async move {
            let f = net.forgets.lock().unwrap().clone();
            (f.len() == 2).then_some(f)
        }
    })
    .await;
    let f = o.proxy.net.forgets.lock().unwrap().clone();
    assert!(f.contains(&json!({"with": "BOB"})), "{f:?}");
    // Clearing every chat says "all" explicitly: an empty body forgets nothing any more.
    assert!(f.contains(&json!({"all": true})), "{f:?}");
}

/// Clearing a chat is answered only once the proxy has forgotten the AI's memory of it, so
/// a message sent right after reaches the proxy after the forget, however slow the proxy is.
#[actix_web::test]
async fn clearing_a_chat_answers_after_the_proxy_forgot_so_the_next_message_comes_after() {
    let o = fake_overlay(&[("alice", &[])], &["BOT"]).await;
    let alice = o.url("alice");
    let net = o.proxy.net.clone();
    *net.forget_delay.lock().unwrap() = Duration::from_millis(300);
    let send = |text: &'static str| {
        let url = format!("{alice}/send_message");
        async move {
            let (s, v): (_, Value) =
                post_json(&url, &json!({"peer_id": "BOT", "message": text})).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    send("old").await;
    let (s, v): (_, Value) = post_json(&format!("{alice}/clear_chat/BOT"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    send("after one").await;
    let (s, v): (_, Value) = post_json(&format!("{alice}/clear_all_chats"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    send("after all").await;
    assert_eq!(
        net.events.lock().unwrap().clone(),
        [
            "outbox:old",
            "forget",
            "outbox:after one",
            "forget",
            "outbox:after all"
        ],
        "each clear answered only after the proxy forgot"
    );
}

/// With the proxy down, clearing a chat still clears it here, and the answer says the AI's
/// memory could not be forgotten (502), instead of a success.
#[actix_web::test]
async fn clearing_a_chat_with_the_proxy_down_says_the_ai_memory_was_not_forgotten() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let (s, _): (_, Ack) = post_json(
        &format!("{alice}/api/v1/inbox"),
        &envelope("bob", "alice", "down-1", "x"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let FakeOverlay {
        proxy,
        peers,
        _data_dir,
    } = o;
    proxy.stop().await;
    for (route, what) in [
        (
            "clear_chat/bob",
            "Chat history with bob cleared (1 messages)",
        ),
        ("clear_all_chats", "All chat histories cleared (0 messages)"),
    ] {
        let (s, v): (_, Value) = post_json(&format!("{alice}/{route}"), &json!({})).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
        assert_eq!(v["status"], "failed", "{v}");
        let error = v["error"].as_str().unwrap();
        assert!(error.starts_with(what), "{v}");
        assert!(error.contains("could not forget the AI's memory"), "{v}");
    }
    assert!(
        history(&alice, "bob").await.is_empty(),
        "cleared here all the same"
    );
    drop(peers);
}

// ---------------------------------------------------------------------------------------------
// Native routes: inbox, receipts, stream; idempotency; SSE after commit.

#[actix_web::test]
async fn the_inbox_stores_a_message_once_by_id() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let e = envelope("bob", "alice", "m-1", "only once");
    let (s, ack): (_, Ack) = post_json(&format!("{alice}/api/v1/inbox"), &e).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        ack,
        Ack {
            id: e.id.clone(),
            duplicate: false
        }
    );
    let mut again = e.clone();
    again.body = overlay::wire::data_plane::Body::Text {
        text: "changed".into(),
    };
    let (s, ack): (_, Ack) = post_json(&format!("{alice}/api/v1/inbox"), &again).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ack.duplicate);
    let h = history(&alice, "bob").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["message"], "only once", "a duplicate changes nothing");

    // Misaddressed and malformed envelopes are refused in the proxy's error shape.
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/api/v1/inbox"),
        &envelope("bob", "carol", "m-2", "x"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["status"], "error");
    let (s, v): (_, Value) =
        post_json(&format!("{alice}/api/v1/inbox"), &json!({"id": "m-3"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["status"], "error");
    assert_eq!(history(&alice, "bob").await.len(), 1);
}

#[actix_web::test]
async fn concurrent_inbox_posts_are_each_stored_exactly_once() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    // 200 distinct messages, each posted twice, all at once: group commit must answer each
    // after its own commit and dedup across and within batches.
    let c = client();
    let posts = (0..400).map(|i| {
        let req = c.post(format!("{alice}/api/v1/inbox"));
        let e = envelope(
            "bob",
            "alice",
            &format!("c-{}", i % 200),
            &format!("n{}", i % 200),
        );
        async move {
            let mut r = req.send_json(&e).await.expect("POST");
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Ack>().await.expect("an ack")
        }
    });
    let acks = futures_util::future::join_all(posts).await;
    assert_eq!(acks.iter().filter(|a| !a.duplicate).count(), 200);
    let h = history(&alice, "bob").await;
    assert_eq!(h.len(), 200);
    let mut texts: Vec<String> = h
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 200);
}

#[actix_web::test]
async fn an_inbox_batch_is_stored_once_by_id_and_acked_in_order() {
    let o = fake_overlay(&[("alice", &["auto from alice"])], &[]).await;
    let alice = o.url("alice");
    let (s, _): (_, Ack) = post_json(
        &format!("{alice}/api/v1/inbox"),
        &envelope("bob", "alice", "b-0", "before"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let mut events = subscribe(&format!("{alice}/api/v1/events")).await;
    let batch = vec![
        envelope("bob", "alice", "b-1", "first"),
        envelope("bob", "alice", "b-0", "before (again)"),
        envelope("carol", "ALICE", "b-2", "second"),
        envelope("bob", "alice", "b-1", "first (again)"),
        envelope("bob", "alice", "b-3", "third"),
    ];
    let (s, acks): (_, Vec<Ack>) = post_json(&format!("{alice}/api/v1/inbox/batch"), &batch).await;
    assert_eq!(s, StatusCode::OK);
    let got: Vec<(&str, bool)> = acks.iter().map(|a| (a.id.as_str(), a.duplicate)).collect();
    assert_eq!(
        got,
        [
            ("b-1", false),
            ("b-0", true),
            ("b-2", false),
            ("b-1", true),
            ("b-3", false)
        ]
    );
    // Each new message is pushed to the open pages, in order.
    let mut pushed = Vec::new();
    while pushed.len() < 3 {
        if let PageEvent::Message { message } = events.next::<PageEvent>().await {
            if !message.outgoing {
                pushed.push(message.id.to_string());
            }
        }
    }
    assert_eq!(pushed, ["b-1", "b-2", "b-3"]);
    let texts: Vec<Value> = history(&alice, "bob")
        .await
        .iter()
        .filter(|e| e["sender"] == "bob")
        .map(|e| e["message"].clone())
        .collect();
    assert_eq!(texts, [json!("before"), json!("first"), json!("third")]);
    let from_carol = history(&alice, "carol").await;
    assert_eq!(
        from_carol.iter().filter(|e| e["sender"] == "carol").count(),
        1
    );
    // Auto-reply saw each new message once (bob's and carol's), as with /api/v1/inbox.
    eventually("auto-reply decided about the three new messages", || {
        let alice = alice.clone();
        async move { (stats(&alice).await.seen == 4).then_some(()) }
    })
    .await;
    // The same batch again: all duplicates, nothing new.
    let (s, acks): (_, Vec<Ack>) = post_json(&format!("{alice}/api/v1/inbox/batch"), &batch).await;
    assert_eq!(s, StatusCode::OK);
    assert!(acks.iter().all(|a| a.duplicate));
    let from_bob = history(&alice, "bob").await;
    assert_eq!(from_bob.iter().filter(|e| e["sender"] == "bob").count(), 3);
}

#[actix_web::test]
async fn an_inbox_batch_with_one_bad_envelope_is_refused_whole_and_nothing_is_stored() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let url = format!("{alice}/api/v1/inbox/batch");
    // Misaddressed: 400 in the proxy's shape, naming the envelope; never 404/405, which would
    // tell the proxy there is no batch route.
    let misaddressed = vec![
        envelope("bob", "alice", "x-1", "fine"),
        envelope("bob", "carol", "x-2", "not for alice"),
    ];
    let (s, v): (_, Value) = post_json(&url, &misaddressed).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["status"], "error");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("x-2") && message.contains("carol"), "{v}");
    // Too large: 413.
    let big = "x".repeat(64 * 1024 + 1);
    let oversized = vec![
        envelope("bob", "alice", "x-3", "fine"),
        envelope("bob", "alice", "x-4", &big),
    ];
    let r = client().post(&url).send_json(&oversized).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Empty, and not a list.
    let (s, v): (_, Value) = post_json(&url, &json!([])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("empty"), "{v}");
    let (s, v): (_, Value) = post_json(&url, &envelope("bob", "alice", "x-5", "one")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["status"], "error");
    assert!(
        history(&alice, "bob").await.is_empty(),
        "nothing half-stored"
    );
}

#[actix_web::test]
async fn a_cross_site_page_cannot_clear_chats_but_a_script_without_content_type_can_send() {
    let o = fake_overlay(&[("alice", &[]), ("bob", &[])], &[]).await;
    let alice = o.url("alice");
    let client = awc::Client::default();
    // compat: the original read any body as JSON, so old scripts may omit the content type.
    let mut res = client
        .post(format!("{alice}/send_message"))
        .send_body(r#"{"peer_id":"bob","message":"from a script"}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.body().await);
    assert_eq!(history(&alice, "bob").await.len(), 1);
    // A page on another site posting to the user's peer (CSRF) is refused; nothing changes.
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        let res = client
            .post(format!("{alice}/clear_all_chats"))
            .insert_header((name, value))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{name}");
    }
    assert_eq!(history(&alice, "bob").await.len(), 1);
    // The chat page itself (same origin) may.
    let res = client
        .post(format!("{alice}/clear_all_chats"))
        .insert_header(("sec-fetch-site", "same-origin"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(history(&alice, "bob").await.is_empty());
}

#[actix_web::test]
async fn our_peer_hands_messages_to_an_original_proxy_in_its_own_format() {
    // compat: a proxy of the original answers any POST by its Host name (so our route, posted
    // with Host 127.0.0.1:port, is "Unknown peer: 127.0.0.1"), and has only GET /peers.
    type Posts = Mutex<Vec<(String, Value)>>;
    let posts: Arc<Posts> = Arc::default();
    let data = web::Data::from(posts.clone());
    let listener = free_listener();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(
                "/peers",
                web::get().to(|| async {
                    HttpResponse::Ok().json(json!({"instance": "alice", "peers": {"bob": {"host": "127.0.0.1", "port": 1}}}))
                }),
            )
            .default_service(web::post().to(
                |req: actix_web::HttpRequest, posts: web::Data<Posts>, body: web::Json<Value>| async move {
                    let host = req.connection_info().host().to_string();
                    let target = host.split(':').next().unwrap_or_default().to_string();
                    if target != "bob" {
                        return HttpResponse::NotFound()
                            .json(json!({"status": "error", "message": format!("Unknown peer: {target}")}));
                    }
                    posts.lock().unwrap().push((host, body.into_inner()));
                    HttpResponse::Ok().json(json!({"status": "success"}))
                },
            ))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    let config = config_for(&[("alice", &[])]);
    let dir = tempfile::tempdir().unwrap();
    let alice = start_peer(&config, "alice", &format!("http://{addr}"), dir.path()).await;

    let (s, v): (_, Value) = post_json(
        &format!("{}/send_message", alice.url),
        &json!({"peer_id": "bob", "message": "hello, original proxy"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = posts.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "bob");
    assert_eq!(got[0].1["message"], "hello, original proxy");
    assert_eq!(got[0].1["from"], "alice");
    assert!(got[0].1["timestamp"].is_string());
    // It has no receipts: its 200 is taken as delivered.
    assert_eq!(history(&alice.url, "bob").await[0]["status"], "delivered");
}

#[actix_web::test]
async fn a_batch_of_receipts_is_applied_together_skipping_unknown_ids() {
    let o = fake_overlay(&[("alice", &[])], &["BOT"]).await;
    let alice = o.url("alice");
    let mut ids = Vec::new();
    for text in ["one", "two"] {
        let (s, v): (_, Value) = post_json(
            &format!("{alice}/send_message"),
            &json!({"peer_id": "BOT", "message": text}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        ids.push(MessageId::parse(v["id"].as_str().unwrap()).unwrap());
    }
    let batch = vec![
        Receipt {
            id: ids[0].clone(),
            state: DeliveryState::Delivered,
        },
        Receipt {
            id: MessageId::parse("cleared-long-ago").unwrap(),
            state: DeliveryState::Delivered,
        },
        Receipt {
            id: ids[1].clone(),
            state: DeliveryState::Failed {
                reason: "BOT is overloaded".into(),
            },
        },
    ];
    let (s, v): (_, Value) = post_json(&format!("{alice}/api/v1/receipts/batch"), &batch).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"status": "success", "message": "2 receipts applied"})
    );
    let h = history(&alice, "BOT").await;
    let states: Vec<&str> = h.iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(states, ["delivered", "failed"]);
    // Not a list: refused, nothing changes.
    let (s, _): (_, Value) = post_json(
        &format!("{alice}/api/v1/receipts/batch"),
        &json!({"id": "x"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[actix_web::test]
async fn receipts_change_a_sent_messages_state_and_an_unknown_id_is_404() {
    let o = fake_overlay(&[("alice", &[])], &["BOT"]).await;
    let alice = o.url("alice");
    // To an AI: the fake keeps it (no relay, no receipt), so it stays pending.
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "BOT", "message": "2+2?"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let id = MessageId::parse(v["id"].as_str().unwrap()).unwrap();
    assert_eq!(history(&alice, "bot").await[0]["status"], "pending");

    let mut events = subscribe(&format!("{alice}/api/v1/events")).await;
    let failed = Receipt {
        id: id.clone(),
        state: DeliveryState::Failed {
            reason: "BOT: rate limited".into(),
        },
    };
    let (s, _): (_, Value) = post_json(&format!("{alice}/api/v1/receipts"), &failed).await;
    assert_eq!(s, StatusCode::OK);
    match events.next::<PageEvent>().await {
        PageEvent::State { message } => {
            assert_eq!(message.id, id);
            assert_eq!(
                message.state,
                MessageState::Failed {
                    reason: "BOT: rate limited".into()
                }
            );
        }
        other => panic!("expected a state event, got {other:?}"),
    }
    let delivered = Receipt {
        id: id.clone(),
        state: DeliveryState::Delivered,
    };
    let (s, _): (_, Value) = post_json(&format!("{alice}/api/v1/receipts"), &delivered).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(history(&alice, "BOT").await[0]["status"], "delivered");

    let unknown = Receipt {
        id: MessageId::parse("nope").unwrap(),
        state: DeliveryState::Delivered,
    };
    let (s, v): (_, Value) = post_json(&format!("{alice}/api/v1/receipts"), &unknown).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        v,
        json!({"status": "error", "message": "Unknown message: nope"})
    );
}

#[actix_web::test]
async fn a_stored_message_is_pushed_to_open_pages_right_after_commit() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let mut page = subscribe(&format!("{alice}/api/v1/events")).await;
    let mut legacy = subscribe(&format!("{alice}/message_updates")).await;

    let mut e = envelope("bob", "alice", "live-1", "<script>alert(1)</script>");
    e.sent_at_ms = 1_764_000_000_123;
    let (s, _): (_, Ack) = post_json(&format!("{alice}/api/v1/inbox"), &e).await;
    assert_eq!(s, StatusCode::OK);

    match page.next::<PageEvent>().await {
        PageEvent::Message { message } => {
            assert_eq!(message.id.as_str(), "live-1");
            assert_eq!(message.peer, "bob");
            assert_eq!(message.from, "bob");
            assert_eq!(message.text, "<script>alert(1)</script>");
            assert_eq!(message.state, MessageState::Received);
            assert!(!message.outgoing && !message.auto_reply && !message.error);
        }
        other => panic!("expected a message event, got {other:?}"),
    }
    let update: Value = legacy.next().await;
    assert_eq!(
        update,
        json!({"peer_id": "bob", "timestamp": "2025-11-24T16:00:00.123Z"})
    );
    // The event came after the commit: the history already has it.
    assert_eq!(history(&alice, "bob").await.len(), 1);

    // An AI error report is stored and pushed as an error.
    let mut err = envelope("BOT", "alice", "err-1", "BOT failed: 401 invalid key");
    err.error = true;
    let (s, _): (_, Ack) = post_json(&format!("{alice}/api/v1/inbox"), &err).await;
    assert_eq!(s, StatusCode::OK);
    match page.next::<PageEvent>().await {
        PageEvent::Message { message } => assert!(message.error && message.peer == "BOT"),
        other => panic!("expected a message event, got {other:?}"),
    }
}

#[actix_web::test]
async fn stream_chunks_reach_open_pages_and_the_full_reply_is_stored_once() {
    let o = fake_overlay(&[("alice", &[])], &["BOT"]).await;
    let alice = o.url("alice");
    let mut page = subscribe(&format!("{alice}/api/v1/events")).await;
    for (seq, delta) in ["Hel", "lo"].iter().enumerate() {
        let chunk = json!({"id": "ai-1", "from": "BOT", "conversation": conversation_id("alice", "BOT"),
                           "seq": seq, "delta": delta});
        let (s, _): (_, Value) = post_json(&format!("{alice}/api/v1/stream"), &chunk).await;
        assert_eq!(s, StatusCode::OK);
    }
    for expected in ["Hel", "lo"] {
        match page.next::<PageEvent>().await {
            PageEvent::Stream {
                id, peer, delta, ..
            } => {
                assert_eq!(
                    (id.as_str(), peer.as_str(), delta.as_str()),
                    ("ai-1", "BOT", expected)
                );
            }
            other => panic!("expected a stream event, got {other:?}"),
        }
    }
    assert!(
        history(&alice, "BOT").await.is_empty(),
        "chunks are not stored"
    );
    let full = envelope("BOT", "alice", "ai-1", "Hello");
    for _ in 0..2 {
        let (s, _): (_, Ack) = post_json(&format!("{alice}/api/v1/inbox"), &full).await;
        assert_eq!(s, StatusCode::OK);
    }
    let h = history(&alice, "BOT").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["message"], "Hello");
}

#[actix_web::test]
async fn history_is_paged_newest_first() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    for i in 0..5 {
        let (s, _): (_, Ack) = post_json(
            &format!("{alice}/api/v1/inbox"),
            &envelope("bob", "alice", &format!("p{i}"), &format!("{i}")),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (_, first): (_, HistoryPage) = get_json(&format!(
        "{alice}/api/v1/conversations/bob/messages?limit=2"
    ))
    .await;
    let texts: Vec<&str> = first.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["4", "3"]);
    let before = first.next_before.expect("more pages");
    let (_, rest): (_, HistoryPage) = get_json(&format!(
        "{alice}/api/v1/conversations/bob/messages?limit=10&before={before}"
    ))
    .await;
    let texts: Vec<&str> = rest.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["2", "1", "0"]);
    assert_eq!(rest.next_before, None);
    let r = client()
        .get(format!("{alice}/api/v1/conversations/bob/messages?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The legacy history is the same conversation, oldest first.
    let h = history(&alice, "bob").await;
    let texts: Vec<&str> = h.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(texts, ["0", "1", "2", "3", "4"]);
}

#[actix_web::test]
async fn a_restarted_peer_keeps_its_history() {
    let config = config_for(&[("alice", &[])]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = spawn_fake_proxy(&[]).await;
    let alice = start_peer(&config, "alice", &proxy.url, dir.path()).await;
    let (s, _): (_, Ack) = post_json(
        &format!("{}/api/v1/inbox", alice.url),
        &envelope("bob", "alice", "keep-1", "still here"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    alice.stop().await;
    let alice = start_peer(&config, "alice", &proxy.url, dir.path()).await;
    let h = history(&alice.url, "bob").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["message"], "still here");
    alice.stop().await;
    proxy.stop().await;
}

/// A peer killed with SIGKILL keeps every message it answered for, sent and received: what
/// its database had not made durable yet is applied again from its log when it starts.
#[actix_web::test]
async fn a_peer_killed_with_sigkill_keeps_every_message_it_answered_for() {
    let config = config_for(&[("alice", &[]), ("bob", &[])]);
    let dir = tempfile::tempdir().unwrap();
    // Alice's own proxy runs in the same process; bob's is down, so her messages stay queued.
    let role = ["peer", "--name", "alice", "--listen", "127.0.0.1:0"];
    let (mut child, url) = run_binary(&config, dir.path(), &role, "peer/alice").await;
    let mut sent = Vec::new();
    for i in 0..30 {
        let text = format!("sent {i}");
        let (s, v): (_, Value) = post_json(
            &format!("{url}/send_message"),
            &json!({"peer_id": "bob", "message": text}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        sent.push(text);
        let (s, _): (_, Ack) = post_json(
            &format!("{url}/api/v1/inbox"),
            &envelope("bob", "alice", &format!("in-{i}"), &format!("received {i}")),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let (mut child, url) = run_binary(&config, dir.path(), &role, "peer/alice").await;
    let texts: Vec<String> = history(&url, "bob")
        .await
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..30)
        .flat_map(|i| [format!("sent {i}"), format!("received {i}")])
        .collect();
    assert_eq!(texts, expected, "every message, once, in order");
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains("logged groups to apply again"),
        "the messages came back from the log: {log}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bad input.

#[actix_web::test]
async fn an_oversized_message_is_413_and_nothing_is_stored() {
    let mut config = config_for(&[("alice", &[])]);
    config.delivery.max_message_bytes = 100;
    config.delivery.max_body_bytes = 2048;
    let dir = tempfile::tempdir().unwrap();
    let proxy = spawn_fake_proxy(&[]).await;
    proxy
        .net
        .peers
        .lock()
        .unwrap()
        .insert("bob".into(), "http://127.0.0.1:9".into());
    let alice = start_peer(&config, "alice", &proxy.url, dir.path()).await;
    let big = "x".repeat(101);

    let (s, v): (_, Value) = post_json(
        &format!("{}/send_message", alice.url),
        &json!({"peer_id": "bob", "message": big}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["status"], "failed");
    assert!(
        v["error"].as_str().unwrap().contains("limit is 100 bytes"),
        "{v}"
    );

    let (s, v): (_, Value) = post_json(
        &format!("{}/message", alice.url),
        &json!({"from": "bob", "message": big}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["status"], "failed");

    let (s, v): (_, Value) = post_json(
        &format!("{}/api/v1/inbox", alice.url),
        &envelope("bob", "alice", "big-1", &big),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["status"], "error");

    // A body over max_body_bytes is refused before it is parsed.
    let huge = "y".repeat(4096);
    let (s, v): (_, Value) = post_json(
        &format!("{}/send_message", alice.url),
        &json!({"peer_id": "bob", "message": huge}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["status"], "failed");

    assert!(proxy.net.outbox().is_empty());
    assert!(history(&alice.url, "bob").await.is_empty());
    alice.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Auto-reply.

#[actix_web::test]
async fn alice_and_bob_both_auto_replying_answer_exactly_once_each() {
    let o = fake_overlay(
        &[
            ("alice", &["alice-auto-1", "alice-auto-2"]),
            ("bob", &["bob-auto-1", "bob-auto-2"]),
        ],
        &[],
    )
    .await;
    let (alice, bob) = (o.url("alice"), o.url("bob"));

    let (s, _): (_, Value) = post_json(
        &format!("{alice}/send_message"),
        &json!({"peer_id": "bob", "message": "hi bob"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _): (_, Value) = post_json(
        &format!("{bob}/send_message"),
        &json!({"peer_id": "alice", "message": "hi alice"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // Each has decided about both messages it received (a person's, and an auto-reply):
    // after that nothing more can be sent, so the counts below are final.
    for url in [&alice, &bob] {
        let url = url.clone();
        eventually("both peers decided about both messages they got", || {
            let url = url.clone();
            async move { (stats(&url).await.seen == 2).then_some(()) }
        })
        .await;
    }
    assert_eq!(stats(&alice).await.answered, 1);
    assert_eq!(stats(&bob).await.answered, 1);

    let sent = o.proxy.net.outbox();
    let autos: Vec<(&str, &str)> = sent
        .iter()
        .filter(|e| e.auto_reply)
        .map(|e| (e.from.as_str(), e.body.text()))
        .collect();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert_eq!(autos.len(), 2, "{autos:?}");
    assert!(autos.contains(&("bob", "bob-auto-1")));
    assert!(autos.contains(&("alice", "alice-auto-1")));

    let at_alice = eventually("alice has all four messages", || {
        let alice = alice.clone();
        async move {
            let h = history(&alice, "bob").await;
            (h.len() == 4).then_some(h)
        }
    })
    .await;
    assert_eq!(
        at_alice.iter().filter(|e| e["auto_reply"] == true).count(),
        2
    );
}

#[actix_web::test]
async fn auto_reply_answers_people_in_turn_but_never_an_ai_an_error_or_an_auto_reply() {
    let o = fake_overlay(&[("bob", &["first line", "second line"])], &["BOT"]).await;
    let bob = o.url("bob");
    for other in ["carol", "dave"] {
        // Known to the proxy, but not running: replies are accepted, then fail to relay.
        let dead = free_listener().local_addr().unwrap();
        o.proxy
            .net
            .peers
            .lock()
            .unwrap()
            .insert(other.into(), format!("http://{dead}"));
    }
    let post = |e: Envelope| {
        let url = format!("{bob}/api/v1/inbox");
        async move {
            let (s, _): (_, Ack) = post_json(&url, &e).await;
            assert_eq!(s, StatusCode::OK);
        }
    };
    post(envelope("BOT", "bob", "n1", "I am an AI")).await;
    let mut err = envelope("carol", "bob", "n2", "an error report");
    err.error = true;
    post(err).await;
    let mut auto = envelope("carol", "bob", "n3", "an auto-reply");
    auto.auto_reply = true;
    post(auto).await;
    // compat: the original's AI replies come as `auto` legacy messages.
    let (s, _): (_, Value) = post_json(
        &format!("{bob}/message"),
        &json!({"from": "BOT", "message": "legacy AI reply", "timestamp": "2026-11-24T08:00:00", "auto": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    post(envelope("carol", "bob", "n4", "a person")).await;
    post(envelope("dave", "bob", "n5", "another person")).await;

    let s = eventually("bob decided about all six", || {
        let bob = bob.clone();
        async move {
            let s = stats(&bob).await;
            (s.seen == 6).then_some(s)
        }
    })
    .await;
    assert_eq!(s.answered, 2);
    let sent = eventually("both replies handed to the proxy", || {
        let net = o.proxy.net.clone();
        async move {
            let sent = net.outbox();
            (sent.len() == 2).then_some(sent)
        }
    })
    .await;
    let got: Vec<(&str, &str, bool)> = sent
        .iter()
        .map(|e| (e.to.as_str(), e.body.text(), e.auto_reply))
        .collect();
    assert!(got.contains(&("carol", "first line", true)), "{got:?}");
    assert!(got.contains(&("dave", "second line", true)), "{got:?}");
}

#[actix_web::test]
async fn auto_reply_off_answers_nothing() {
    let o = fake_overlay(&[("behrooz", &[])], &[]).await;
    let url = o.url("behrooz");
    let (s, _): (_, Ack) = post_json(
        &format!("{url}/api/v1/inbox"),
        &envelope("carol", "behrooz", "q1", "hello"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let s = eventually("behrooz decided", || {
        let url = url.clone();
        async move {
            let s = stats(&url).await;
            (s.seen == 1).then_some(s)
        }
    })
    .await;
    assert!(!s.enabled);
    assert_eq!(s.answered, 0);
    assert!(o.proxy.net.outbox().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Order of what the user was told would be sent (issue 13).

/// How the scripted proxy answers one `POST /api/v1/outbox`.
enum Answer {
    /// 503 "outbox store busy": the peer keeps the message and hands it over again.
    Busy,
    /// 503 too, but only once the test says so: the hand-over is under way meanwhile.
    BusyWhenReleased(tokio::sync::oneshot::Receiver<()>),
}

/// What the scripted proxy saw; shared with the test.
#[derive(Default)]
struct Script {
    /// Answers to the first hand-overs, in order; every later one is accepted.
    answers: Mutex<std::collections::VecDeque<Answer>>,
    /// Hand-overs seen (`/api/v1/outbox` requests), answered or not.
    requests: Mutex<usize>,
    /// Envelopes accepted, in the order the proxy took them.
    accepted: Mutex<Vec<Envelope>>,
}

impl Script {
    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }
    fn accepted_texts(&self) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted.iter().map(|e| e.body.text().to_string()).collect()
    }
}

/// # POST /api/v1/outbox (scripted): the next scripted answer, else accepted and recorded.
async fn scripted_outbox(script: web::Data<Arc<Script>>, env: web::Json<Envelope>) -> HttpResponse {
    *script.requests.lock().unwrap() += 1;
    let answer = script.answers.lock().unwrap().pop_front();
    let busy = || {
        HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
            .json(ErrorBody::new("outbox store busy"))
    };
    match answer {
        Some(Answer::Busy) => busy(),
        Some(Answer::BusyWhenReleased(release)) => {
            let _ = release.await;
            busy()
        }
        None => {
            let env = env.into_inner();
            script.accepted.lock().unwrap().push(env.clone());
            HttpResponse::Accepted().json(Accepted {
                id: env.id,
                state: DeliveryState::Pending,
            })
        }
    }
}

/// A proxy whose hand-over answers follow `answers` (then accept everything); it has no batch
/// route, and an empty directory (so anyone writing is a person to auto-reply to).
async fn spawn_scripted_proxy(answers: Vec<Answer>) -> (String, Arc<Script>) {
    let script = Arc::new(Script::default());
    *script.answers.lock().unwrap() = answers.into();
    let data = web::Data::new(script.clone());
    let listener = free_listener();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/api/v1/outbox", web::post().to(scripted_outbox))
            .route(
                "/api/v1/directory",
                web::get().to(|| async { HttpResponse::Ok().json(Vec::<DirectoryEntry>::new()) }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    (url, script)
}

/// Waits until `peer_url`'s conversation with `with` holds `n` messages.
async fn stored(peer_url: &str, with: &str, n: usize) {
    let what = format!("{n} messages stored with {with}");
    eventually(&what, || async move {
        (history(peer_url, with).await.len() >= n).then_some(())
    })
    .await;
}

/// Waits until the proxy took `n` messages and none of ours waits any more, then answers what
/// the proxy took, in the order it took them.
async fn all_taken(peer_url: &str, with: &str, script: &Script, n: usize) -> Vec<String> {
    eventually("every message taken by the proxy", || async move {
        let (_, page): (_, HistoryPage) =
            get_json(&format!("{peer_url}/api/v1/conversations/{with}/messages")).await;
        let ours_settled = page
            .messages
            .iter()
            .filter(|m| m.outgoing)
            .all(|m| m.waiting.is_none());
        (script.accepted.lock().unwrap().len() >= n && ours_settled).then_some(())
    })
    .await;
    script.accepted_texts()
}

#[actix_web::test]
async fn kept_messages_reach_the_proxy_before_the_ones_sent_after_them() {
    // The first hand-over is refused as busy (kept); the retry of it is under way when the
    // user sends the next message, and refused too; after that the proxy takes everything.
    let (release, held) = tokio::sync::oneshot::channel();
    let (proxy_url, script) =
        spawn_scripted_proxy(vec![Answer::Busy, Answer::BusyWhenReleased(held)]).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start_peer(
        &config_for(&[("alice", &[])]),
        "alice",
        &proxy_url,
        dir.path(),
    )
    .await;
    let send = |text: &'static str| {
        let url = format!("{}/send_message", alice.url);
        async move {
            let (s, v): (_, Value) =
                post_json(&url, &json!({"peer_id": "bob", "message": text})).await;
            assert!(
                s == StatusCode::OK
                    || (s == StatusCode::BAD_GATEWAY
                        && v["error"].as_str().is_some_and(|e| e.contains("kept"))),
                "{text}: {s} {v}"
            );
        }
    };

    send("one").await;
    eventually("the retry of the kept message is under way", || {
        let script = script.clone();
        async move { (script.requests() >= 2).then_some(()) }
    })
    .await;
    let two = actix_rt::spawn(send("two"));
    stored(&alice.url, "bob", 2).await;
    release.send(()).unwrap();
    two.await.unwrap();
    send("three").await;

    let taken = all_taken(&alice.url, "bob", &script, 3).await;
    assert_eq!(
        taken,
        ["one", "two", "three"],
        "in the order they were sent"
    );
    alice.stop().await;
}

#[actix_web::test]
async fn auto_replies_whose_hand_over_failed_reach_the_proxy_in_order() {
    let (release, held) = tokio::sync::oneshot::channel();
    let (proxy_url, script) =
        spawn_scripted_proxy(vec![Answer::Busy, Answer::BusyWhenReleased(held)]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&[("bob", &["first line", "second line", "third line"])]);
    let bob = start_peer(&config, "bob", &proxy_url, dir.path()).await;
    let post = |id: &'static str| {
        let url = format!("{}/api/v1/inbox", bob.url);
        async move {
            let (s, _): (_, Ack) = post_json(&url, &envelope("carol", "bob", id, "hi")).await;
            assert_eq!(s, StatusCode::OK);
        }
    };

    post("c1").await;
    eventually("the retry of the first auto-reply is under way", || {
        let script = script.clone();
        async move { (script.requests() >= 2).then_some(()) }
    })
    .await;
    post("c2").await;
    // carol's two messages and the two auto-replies.
    stored(&bob.url, "carol", 4).await;
    release.send(()).unwrap();
    post("c3").await;

    let taken = all_taken(&bob.url, "carol", &script, 3).await;
    assert_eq!(taken, ["first line", "second line", "third line"]);
    bob.stop().await;
}

#[actix_web::test]
async fn messages_kept_while_the_proxy_was_down_go_before_those_sent_once_it_is_back() {
    let config = config_for(&[("alice", &[])]);
    let dir = tempfile::tempdir().unwrap();
    let proxy_addr = free_listener().local_addr().unwrap();
    let alice = start_peer(
        &config,
        "alice",
        &format!("http://{proxy_addr}"),
        dir.path(),
    )
    .await;
    let send = |text: &'static str| {
        let url = format!("{}/send_message", alice.url);
        async move {
            let (s, v): (_, Value) =
                post_json(&url, &json!({"peer_id": "BOT", "message": text})).await;
            (s, v)
        }
    };
    for text in ["kept 1", "kept 2", "kept 3"] {
        let (s, v) = send(text).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
        assert!(v["error"].as_str().unwrap().contains("kept"), "{v}");
    }
    let proxy =
        spawn_fake_proxy_on(&["BOT"], std::net::TcpListener::bind(proxy_addr).unwrap()).await;
    for text in ["new 1", "new 2"] {
        let (s, v) = send(text).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let handed = eventually("every message handed over, none waiting", || {
        let (net, url) = (proxy.net.clone(), alice.url.clone());
        async move {
            let (_, page): (_, HistoryPage) =
                get_json(&format!("{url}/api/v1/conversations/BOT/messages")).await;
            let settled = page.messages.iter().all(|m| m.waiting.is_none());
            (net.outbox().len() >= 5 && settled).then(|| net.outbox())
        }
    })
    .await;
    let texts: Vec<&str> = handed.iter().map(|e| e.body.text()).collect();
    assert_eq!(texts, ["kept 1", "kept 2", "kept 3", "new 1", "new 2"]);
    alice.stop().await;
    proxy.stop().await;
}

/// A sender's name is normalised once, where it comes in: " behrooz" is stored and shown as
/// "behrooz", in the same conversation as "behrooz", on every incoming route.
#[actix_web::test]
async fn a_sender_name_with_spaces_is_stored_and_shown_trimmed() {
    let o = fake_overlay(&[("alice", &[])], &[]).await;
    let alice = o.url("alice");
    let (s, _): (_, Ack) = post_json(
        &format!("{alice}/api/v1/inbox"),
        &envelope(" behrooz", "alice", "trim-1", "one"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _): (_, Vec<Ack>) = post_json(
        &format!("{alice}/api/v1/inbox/batch"),
        &[envelope("behrooz\t", "alice", "trim-2", "two")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v): (_, Value) = post_json(
        &format!("{alice}/message"),
        &json!({"from": "  behrooz ", "message": "three", "timestamp": "2026-11-24T08:00:00"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _): (_, Ack) = post_json(
        &format!("{alice}/api/v1/inbox"),
        &envelope("behrooz", "alice", "trim-4", "four"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let h = history(&alice, "behrooz").await;
    let rows: Vec<(&str, &str, &str)> = h
        .iter()
        .map(|e| {
            (
                e["peer_id"].as_str().unwrap(),
                e["sender"].as_str().unwrap(),
                e["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("behrooz", "behrooz", "one"),
            ("behrooz", "behrooz", "two"),
            ("behrooz", "behrooz", "three"),
            ("behrooz", "behrooz", "four")
        ]
    );
    let (_, contacts): (_, ContactList) = get_json(&format!("{alice}/api/v1/contacts")).await;
    let names = serde_json::to_value(&contacts).unwrap().to_string();
    assert!(!names.contains(" behrooz"), "{names}");
}

/// The auto-reply keeps its place in the store: with lines a, b, c, two messages get a and b;
/// after a restart on the same data dir the next one gets c, not a again.
#[actix_web::test]
async fn auto_reply_keeps_its_place_across_a_restart() {
    let config = config_for(&[("bob", &["a", "b", "c"])]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = spawn_fake_proxy(&[]).await;
    // carol is known to the proxy but not running: replies are accepted, then fail to relay.
    let dead = free_listener().local_addr().unwrap();
    proxy
        .net
        .peers
        .lock()
        .unwrap()
        .insert("carol".into(), format!("http://{dead}"));
    // The replies, one per id (a reply may be handed over again after the restart).
    let replies = |net: Arc<FakeNet>, n: usize| async move {
        eventually(&format!("{n} auto-replies handed over"), || {
            let net = net.clone();
            async move {
                let mut seen: Vec<(MessageId, String)> = Vec::new();
                for e in net.outbox() {
                    if !seen.iter().any(|(id, _)| *id == e.id) {
                        seen.push((e.id.clone(), e.body.text().to_string()));
                    }
                }
                (seen.len() >= n).then(|| seen.into_iter().map(|(_, t)| t).collect::<Vec<_>>())
            }
        })
        .await
    };
    let bob = start_peer(&config, "bob", &proxy.url, dir.path()).await;
    for (i, n) in [(1, 1), (2, 2)] {
        let (s, _): (_, Ack) = post_json(
            &format!("{}/api/v1/inbox", bob.url),
            &envelope("carol", "bob", &format!("ar-{i}"), "hello"),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        replies(proxy.net.clone(), n).await;
    }
    assert_eq!(replies(proxy.net.clone(), 2).await, ["a", "b"]);
    bob.stop().await;

    let bob = start_peer(&config, "bob", &proxy.url, dir.path()).await;
    let (s, _): (_, Ack) = post_json(
        &format!("{}/api/v1/inbox", bob.url),
        &envelope("carol", "bob", "ar-3", "hello again"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(replies(proxy.net.clone(), 3).await, ["a", "b", "c"]);
    bob.stop().await;
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Search, export, and AI replies rendered.

/// GET `url`: status, a header, the body as text.
async fn get_text(url: &str, header: &str) -> (StatusCode, String, String) {
    let mut r = client().get(url).send().await.expect("GET");
    let status = r.status();
    let h = r
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.body().limit(64 << 20).await.expect("body");
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

#[actix_web::test]
async fn search_finds_text_in_every_conversation_and_a_conversation_exports_as_markdown_or_json() {
    let o = fake_overlay(&[("alice", &[])], &["BOT"]).await;
    let alice = o.url("alice");
    for (id, from, text) in [
        ("s1", "bob", "Meet at the Rust meetup?"),
        ("s2", "BOT", "## Rust\n\n- **fast** <script>x()</script>"),
        ("s3", "carol", "nothing to see"),
        ("s4", "bob", "rust again, see <b>this</b>"),
    ] {
        let (s, _): (_, Ack) = post_json(
            &format!("{alice}/api/v1/inbox"),
            &envelope(from, "alice", id, text),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }

    // Every conversation, any case, newest first.
    let (s, v): (_, Value) = get_json(&format!("{alice}/api/v1/search?q=RUST")).await;
    assert_eq!(s, StatusCode::OK);
    let found: Vec<(&str, &str)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["peer"].as_str().unwrap(), m["id"].as_str().unwrap()))
        .collect();
    assert_eq!(found, [("bob", "s4"), ("BOT", "s2"), ("bob", "s1")]);
    for (query, why) in [
        ("", "no search text"),
        ("?q=rust&limit=0", "limit 0 is not between 1 and 500"),
        (
            &format!("?q={}", "x".repeat(201))[..],
            "longer than 200 characters",
        ),
    ] {
        let (s, e): (_, ErrorBody) = get_json(&format!("{alice}/api/v1/search{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}");
        assert!(e.message.contains(why), "{query}: {}", e.message);
    }

    // The page of results: each opens its conversation at that message; words are text.
    let (s, _, page) = get_text(&format!("{alice}/search?q=rust"), "content-type").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("3 messages contain"), "{page}");
    assert!(page.contains("href=\"/#bob?at="), "{page}");
    assert!(
        page.contains("<mark>rust</mark> again, see &lt;b&gt;this&lt;/b&gt;"),
        "{page}"
    );
    assert!(
        page.contains("Meet at the <mark>Rust</mark> meetup?"),
        "{page}"
    );
    let (_, _, page) = get_text(&format!("{alice}/search?q=%3Cscript%3E"), "").await;
    assert!(!page.contains("<script>x()"), "{page}");
    assert!(page.contains("&lt;script&gt;"), "{page}");
    let (s, _, page) = get_text(&format!("{alice}/search?q={}", "y".repeat(300)), "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("longer than 200 characters"), "{page}");

    // An AI model's reply comes with its Markdown rendered (raw HTML dropped); a person's not.
    let (_, contacts): (_, ContactList) = get_json(&format!("{alice}/api/v1/contacts")).await;
    assert!(contacts.contacts.iter().any(|c| c.name == "BOT"));
    let (_, bot): (_, Value) =
        get_json(&format!("{alice}/api/v1/conversations/BOT/messages")).await;
    let html = bot["messages"][0]["html"].as_str().expect("rendered");
    assert!(
        html.contains("<h2>Rust</h2>") && html.contains("<strong>fast</strong>"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    let (_, bob): (_, Value) =
        get_json(&format!("{alice}/api/v1/conversations/bob/messages")).await;
    assert!(bob["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.get("html").is_none()));

    // Export: Markdown to read (the default), JSON to keep; oldest first, as a download.
    let (s, disposition, md) = get_text(
        &format!("{alice}/api/v1/conversations/bob/export"),
        "content-disposition",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let day = &overlay::wire::rfc3339_ms(overlay::wire::now_ms())[..10];
    assert_eq!(
        disposition,
        format!("attachment; filename=\"overlay-alice-bob-{day}.md\"")
    );
    assert!(
        md.starts_with("# Conversation between alice and bob\n"),
        "{md}"
    );
    assert!(md.contains("2 messages, oldest first"), "{md}");
    let first = md.find("Meet at the Rust meetup?").expect("s1");
    let second = md.find("rust again").expect("s4");
    assert!(first < second, "{md}");
    assert!(md.contains("\n## bob · "), "{md}");
    // Quoted, line by line: a message cannot pass for another with a heading of its own.
    assert!(md.contains("\n> Meet at the Rust meetup?\n"), "{md}");
    let (s, kind, json) = get_text(
        &format!("{alice}/api/v1/conversations/bob/export?format=json"),
        "content-type",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(kind, "application/json");
    let export: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(export["me"], "alice");
    assert_eq!(export["with"], "bob");
    let ids: Vec<&str> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s1", "s4"]);
    for (path, why) in [
        (
            "bob/export?format=pdf",
            "format `pdf` is not one this peer exports",
        ),
        ("b%20b/export", "peer:"),
    ] {
        let (s, e): (_, ErrorBody) =
            get_json(&format!("{alice}/api/v1/conversations/{path}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert!(e.message.contains(why), "{path}: {}", e.message);
    }
}

/// The next `presence` event of a page feed (other events passed over).
async fn next_presence(events: &mut crate::helpers::SseReader) -> Vec<DirectoryEntry> {
    loop {
        if let PageEvent::Presence { directory } = events.next::<PageEvent>().await {
            return directory;
        }
    }
}

#[actix_web::test]
async fn presence_is_pushed_to_open_pages_when_someone_goes_offline_or_joins() {
    let o = fake_overlay(&[("alice", &[]), ("bob", &[])], &["BOT"]).await;
    let alice = o.url("alice");
    let mut events = subscribe(&format!("{alice}/api/v1/events")).await;
    let entry = |name: &str, kind: PeerKind, online: Option<bool>| DirectoryEntry {
        name: name.into(),
        kind,
        online,
    };
    // Once a page listens: who is there (not alice herself).
    assert_eq!(
        next_presence(&mut events).await,
        [
            entry("BOT", PeerKind::Ai, None),
            entry("bob", PeerKind::Person, Some(true))
        ]
    );
    // bob's proxy goes quiet: the page is told, unasked.
    o.proxy.net.offline.lock().unwrap().push("bob".into());
    assert_eq!(
        next_presence(&mut events).await,
        [
            entry("BOT", PeerKind::Ai, None),
            entry("bob", PeerKind::Person, Some(false))
        ]
    );
    // A page that connects now is told where things stand, though nothing changed.
    let mut late = subscribe(&format!("{alice}/api/v1/events")).await;
    assert_eq!(
        next_presence(&mut late).await,
        [
            entry("BOT", PeerKind::Ai, None),
            entry("bob", PeerKind::Person, Some(false))
        ]
    );
    // (The first page hears it too: it is sent to all.)
    assert_eq!(next_presence(&mut events).await.len(), 2);
    // carol joins.
    o.proxy
        .net
        .peers
        .lock()
        .unwrap()
        .insert("carol".into(), "http://127.0.0.1:9".into());
    assert_eq!(
        next_presence(&mut events).await,
        [
            entry("BOT", PeerKind::Ai, None),
            entry("bob", PeerKind::Person, Some(false)),
            entry("carol", PeerKind::Person, Some(true))
        ]
    );
}

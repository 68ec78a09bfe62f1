//! Integration tests of issue 14, the root of trust, on real servers (port 0): joining with a
//! token (a sniffed join replayed for another key, a token raced by a hundred keys, an expired
//! token), registrations for a name pinned to another key, a proxy that refuses an old
//! directory version (also after a restart) and asks for a snapshot after a bad or skipped
//! delta (against a fake controller that signs under a root the test owns), revocation of a
//! user whose message is already queued, and no key bytes in the binary's log. And who the
//! original's unsigned API answers (issue 15): a listed legacy proxy until its name has a
//! pinned key, unsigned calls only from a listed address, a joined proxy's signed calls from
//! anywhere.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::helpers::{
    client, config_for, eventually, free_listener, spawn_controller, spawn_overlay,
};
use overlay::controller::directory::Signer;
use overlay::trust::{Fingerprint, Identity, JoinToken, KeyCert, Signed};
use overlay::wire::control_plane::{Endpoint, EndpointTable, PeerEndpoint, NATIVE_PROTOCOL};
use overlay::wire::data_plane::DirectoryEntry;
use overlay::wire::directory::{
    Delta, Directory, JoinRequest, RegisterClaim, Snapshot, UserEntry, UserState, REGISTER_DOMAIN,
};
use overlay::wire::now_ms;

// ---------------------------------------------------------------------------------------------
// Helpers.

thread_local! {
    /// One client per test thread: making one loads the system's CA roots (tens of ms), which
    /// a hundred requests at once must not each wait for.
    static CLIENT: awc::Client = client();
}

fn shared_client() -> awc::Client {
    CLIENT.with(|c| c.clone())
}

async fn post(
    url: &str,
    bearer: Option<&str>,
    body: &impl serde::Serialize,
) -> (StatusCode, Value) {
    let mut req = shared_client().post(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let mut r = req.send_json(body).await.expect("POST answers");
    let status = r.status();
    let bytes = r.body().limit(64 << 20).await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(url: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut req = shared_client().get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let mut r = req.send().await.expect("GET answers");
    let status = r.status();
    let bytes = r.body().limit(64 << 20).await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A controller alone, with its data dir, root and admin token.
struct Ctl {
    url: String,
    root: Fingerprint,
    admin: String,
    _server: crate::helpers::Spawned,
    dir: tempfile::TempDir,
}

async fn controller() -> Ctl {
    controller_of(crate::helpers::without_tls(config_for(&[
        ("alice", &[]),
        ("bob", &[]),
    ])))
    .await
}

async fn controller_of(config: overlay::config::Config) -> Ctl {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_controller(&config, dir.path(), free_listener()).await;
    let root = overlay::controller::trust::root_fingerprint(dir.path()).unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Ctl {
        url: server.url.clone(),
        root,
        admin,
        _server: server,
        dir,
    }
}

impl Ctl {
    async fn token(&self, name: &str, extra: Value) -> JoinToken {
        let mut body = json!({"name": name, "ttl": "1h"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, v) = post(
            &format!("{}/api/v1/admin/tokens", self.url),
            Some(&self.admin),
            &body,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().parse().unwrap()
    }

    async fn user(&self, name: &str) -> Value {
        let (s, v) = get(
            &format!("{}/api/v1/admin/trust", self.url),
            Some(&self.admin),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn claim(name: &str, proxy_id: &str, root: &Fingerprint, key: &Identity) -> Signed<RegisterClaim> {
    Signed::sign(
        REGISTER_DOMAIN,
        &RegisterClaim {
            role: Default::default(),
            via: None,
            auto: false,
            tls: None,
            seal: None,
            proxy_id: proxy_id.into(),
            instance_name: name.into(),
            host: "127.0.0.1".into(),
            port: 40_000,
            protocol: NATIVE_PROTOCOL.into(),
            root: root.clone(),
            time_ms: now_ms(),
            api_keys: None,
        },
        key,
    )
}

fn join_request(token: &JoinToken, name: &str, root: &Fingerprint, key: &Identity) -> JoinRequest {
    JoinRequest {
        token_id: token.id().to_string(),
        proof: token.proof(root, name, &key.public()),
        claim: claim(name, &format!("{name}-proxy"), root, key),
    }
}

// ---------------------------------------------------------------------------------------------
// Joining.

#[actix_web::test]
async fn the_controllers_config_says_who_is_a_relay_not_the_member() {
    let mut config = crate::helpers::without_tls(config_for(&[("alice", &[])]));
    config
        .relays
        .push(serde_yaml::from_str("{name: relay9, relay: {listen: 127.0.0.1:0}}").unwrap());
    let c = controller_of(config).await;
    let as_role = |name: &str, role: overlay::wire::directory::Role, key: &Identity| {
        let token_name = name.to_string();
        let key_pub = key.public();
        let root = c.root.clone();
        let mut claim = claim(name, &format!("{name}-proxy"), &c.root, key);
        let mut inner = claim.verify(REGISTER_DOMAIN, &key_pub).unwrap();
        inner.role = role;
        claim = Signed::sign(REGISTER_DOMAIN, &inner, key);
        (token_name, root, claim)
    };
    for (name, role, says) in [
        (
            "relay9",
            overlay::wire::directory::Role::User,
            "is a relay in the controller's config",
        ),
        (
            "alice",
            overlay::wire::directory::Role::Relay,
            "lists no relay of that name",
        ),
    ] {
        let key = Identity::generate();
        let token = c.token(name, json!({})).await;
        let (_, root, claim) = as_role(name, role, &key);
        let request = JoinRequest {
            token_id: token.id().to_string(),
            proof: token.proof(&root, name, &key.public()),
            claim,
        };
        let (s, v) = post(&format!("{}/api/v1/join", c.url), None, &request).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{name}: {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let key = Identity::generate();
    let token = c.token("relay9", json!({})).await;
    let (_, root, claim) = as_role("relay9", overlay::wire::directory::Role::Relay, &key);
    let request = JoinRequest {
        token_id: token.id().to_string(),
        proof: token.proof(&root, "relay9", &key.public()),
        claim,
    };
    let (s, v) = post(&format!("{}/api/v1/join", c.url), None, &request).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[actix_web::test]
async fn a_sniffed_join_replayed_with_another_key_is_refused_and_pins_nothing() {
    let c = controller().await;
    let token = c.token("carol", json!({})).await;
    let honest = Identity::generate();
    let sniffed = join_request(&token, "carol", &c.root, &honest);
    // The eavesdropper keeps the token id and the proof but brings its own key.
    let thief = Identity::generate();
    let mut replay = join_request(&token, "carol", &c.root, &thief);
    replay.proof = sniffed.proof.clone();
    let (s, v) = post(&format!("{}/api/v1/join", c.url), None, &replay).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("does not match"),
        "{v}"
    );
    // The same proof under the thief's signature of the honest claim is no better: the claim
    // must be signed by the key it pins.
    let (s, _) = post(
        &format!("{}/api/v1/join", c.url),
        None,
        &JoinRequest {
            claim: claim("carol", "carol-proxy", &c.root, &thief),
            ..sniffed.clone()
        },
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(c.user("carol").await, Value::Null, "nothing pinned");
    // The honest join still works: the token was not spent by the refusals.
    let (s, v) = post(&format!("{}/api/v1/join", c.url), None, &sniffed).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let user = c.user("carol").await;
    assert_eq!(user["state"], "active");
    assert_eq!(user["key"], honest.public().to_string());
}

#[actix_web::test]
async fn a_token_raced_by_a_hundred_keys_pins_exactly_one_and_cannot_be_used_again() {
    let c = controller().await;
    let token = c.token("carol", json!({})).await;
    let keys: Vec<Identity> = (0..100).map(|_| Identity::generate()).collect();
    let url = format!("{}/api/v1/join", c.url);
    let answers = futures_util::future::join_all(keys.iter().map(|k| {
        let req = join_request(&token, "carol", &c.root, k);
        let url = url.clone();
        async move { post(&url, None, &req).await }
    }))
    .await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one join wins: {answers:?}");
    for (s, v) in &answers {
        assert!(
            [
                StatusCode::OK,
                StatusCode::FORBIDDEN,
                StatusCode::TOO_MANY_REQUESTS
            ]
            .contains(s),
            "{s} {v}"
        );
    }
    let user = c.user("carol").await;
    assert_eq!(user["key"], keys[winners[0]].public().to_string());
    // Later, once the source may try again: the token is spent.
    let late = Identity::generate();
    let (s, v) = post(&url, None, &join_request(&token, "carol", &c.root, &late)).await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::TOO_MANY_REQUESTS,
        "{s} {v}"
    );
    if s == StatusCode::FORBIDDEN {
        assert!(
            v["message"].as_str().unwrap().contains("used already"),
            "{v}"
        );
    }
    assert_eq!(
        c.user("carol").await["key"],
        keys[winners[0]].public().to_string()
    );
}

#[actix_web::test]
async fn an_expired_token_is_refused() {
    use overlay::controller::store::{Change, Store, TokenRecord};
    let dir = tempfile::tempdir().unwrap();
    let keys = overlay::controller::trust::load(dir.path()).unwrap();
    let token = JoinToken::generate();
    {
        let store = Store::open(dir.path()).await.unwrap();
        let now = now_ms();
        store
            .commit(vec![Change::PutToken(TokenRecord {
                id: token.id().into(),
                name: "carol".into(),
                verifier: token.verifier(),
                created_at_ms: now - 7_200_000,
                expires_at_ms: now - 3_600_000,
                replace: false,
                used: None,
            })])
            .await
            .unwrap();
    }
    let config = crate::helpers::without_tls(config_for(&[("alice", &[])]));
    let _server = spawn_controller(&config, dir.path(), free_listener()).await;
    let url = format!("{}/api/v1/join", _server.url);
    let key = Identity::generate();
    let (s, v) = post(&url, None, &join_request(&token, "carol", &keys.root, &key)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
}

#[actix_web::test]
async fn a_registration_for_a_name_pinned_to_another_key_is_refused_signed_or_not() {
    let c = controller().await;
    let token = c.token("carol", json!({})).await;
    let owner = Identity::generate();
    let (s, v) = post(
        &format!("{}/api/v1/join", c.url),
        None,
        &join_request(&token, "carol", &c.root, &owner),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Signed by another key.
    let other = Identity::generate();
    let (s, v) = post(
        &format!("{}/api/v1/register", c.url),
        None,
        &claim("carol", "carol-proxy", &c.root, &other),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("pinned to another key"),
        "{v}"
    );
    // Unsigned, the original's way: the pin's refusal (whether or not the name is listed).
    let legacy = json!({"proxy_id": "x", "instance_name": "Carol", "host": "127.0.0.1", "port": 1});
    let (s, v) = post(&format!("{}/api/register", c.url), None, &legacy).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("has a pinned key"),
        "{v}"
    );
    // Unsigned under another name but carol's proxy id: cannot take her record over.
    let takeover = json!({"proxy_id": "carol-proxy", "instance_name": "mallory", "host": "10.0.0.9", "port": 1});
    let (s, v) = post(&format!("{}/api/register", c.url), None, &takeover).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cannot take it over"),
        "{v}"
    );
    let user = c.user("carol").await;
    assert_eq!(user["key"], owner.public().to_string());
    assert_eq!(
        (user["host"].clone(), user["port"].clone()),
        (json!("127.0.0.1"), json!(40_000))
    );
    // The owner's own signed registration is accepted.
    let (s, v) = post(
        &format!("{}/api/v1/register", c.url),
        None,
        &claim("carol", "carol-proxy", &c.root, &owner),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // And the audit log has the refusals with their source.
    let (_, trust) = get(&format!("{}/api/v1/admin/trust", c.url), Some(&c.admin)).await;
    let refusals = trust["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "refused")
        .count();
    assert!(refusals >= 3, "{trust}");
    drop(c.dir);
}

#[actix_web::test]
async fn the_admin_api_needs_the_admin_token_and_changes_nothing_without_it() {
    let c = controller().await;
    let body = json!({"name": "carol"});
    let (s, _) = post(&format!("{}/api/v1/admin/tokens", c.url), None, &body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = post(
        &format!("{}/api/v1/admin/tokens", c.url),
        Some("wrong"),
        &body,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = get(&format!("{}/api/v1/admin/tokens", c.url), Some(&c.admin)).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

// ---------------------------------------------------------------------------------------------
// The proxy's side: a fake controller signing under a root the test owns.

#[derive(Default)]
struct FakeState {
    /// What `POST /api/v1/register` answers.
    register_answer: Option<Value>,
    /// `Last-Event-ID` of every stream request, in order (None: absent).
    stream_requests: Vec<Option<String>>,
    /// The open stream's sender.
    stream: Option<mpsc::UnboundedSender<String>>,
    /// What a stream request without `Last-Event-ID` is sent first.
    on_fresh_stream: Option<String>,
}

struct Fake {
    url: String,
    state: Arc<Mutex<FakeState>>,
    root: Identity,
    signer: Signer,
    _handle: actix_web::dev::ServerHandle,
}

fn sse(event: &str, version: u64, data: &impl serde::Serialize) -> String {
    format!(
        "event: {event}\nid: {version}\ndata: {}\n\n",
        serde_json::to_string(data).unwrap()
    )
}

impl Fake {
    fn start() -> Fake {
        let root = Identity::generate();
        let online = Identity::generate();
        let cert = overlay::trust::issue(
            &root,
            &KeyCert {
                key: online.public(),
                role: "controller-online".into(),
                serial: 1,
                issued_at_ms: now_ms(),
                not_after_ms: None,
            },
        );
        let state = Arc::new(Mutex::new(FakeState::default()));
        let s = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(s.clone()))
                .route(
                    "/api/v1/register",
                    web::post().to(|st: web::Data<Arc<Mutex<FakeState>>>| async move {
                        match st.lock().unwrap().register_answer.clone() {
                            Some(v) => HttpResponse::Ok().json(v),
                            None => HttpResponse::ServiceUnavailable().finish(),
                        }
                    }),
                )
                .route("/api/heartbeat", web::post().to(HttpResponse::Ok))
                .route("/api/v1/directory/ack", web::post().to(HttpResponse::Ok))
                .route(
                    "/api/v1/directory/stream",
                    web::get().to(
                        |st: web::Data<Arc<Mutex<FakeState>>>, req: HttpRequest| async move {
                            let last = req
                                .headers()
                                .get("Last-Event-ID")
                                .map(|v| v.to_str().unwrap().to_string());
                            let (tx, rx) = mpsc::unbounded_channel::<String>();
                            let mut st = st.lock().unwrap();
                            if last.is_none() {
                                if let Some(first) = st.on_fresh_stream.clone() {
                                    tx.send(first).unwrap();
                                }
                            }
                            st.stream_requests.push(last);
                            st.stream = Some(tx);
                            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                                let chunk = rx.recv().await?;
                                Some((Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), rx))
                            });
                            HttpResponse::Ok()
                                .content_type("text/event-stream")
                                .streaming(body)
                        },
                    ),
                )
        })
        .workers(1)
        .listen(free_listener())
        .unwrap();
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Fake {
            url,
            state,
            root,
            signer: Signer { online, cert },
            _handle: handle,
        }
    }

    fn snapshot(&self, version: u64, names: &[&str]) -> Value {
        let now = now_ms();
        let snap = Snapshot {
            for_user: "alice".into(),
            version,
            issued_at_ms: now,
            expires_at_ms: now + 3_600_000,
            directory: directory(names),
            table: table(names),
        };
        serde_json::to_value(self.signer.snapshot(&snap)).unwrap()
    }

    fn delta(&self, from: u64, to: u64, old: &[&str], new: &[&str]) -> Value {
        let now = now_ms();
        let d = Delta {
            cas: None,
            for_user: "alice".into(),
            from,
            to,
            issued_at_ms: now,
            expires_at_ms: now + 3_600_000,
            users: directory(old).changes_to(&directory(new)),
            ai: None,
            table: overlay::wire::directory::table_changes(&table(old), &table(new)),
        };
        serde_json::to_value(self.signer.delta(&d)).unwrap()
    }

    fn push(&self, chunk: String) {
        let st = self.state.lock().unwrap();
        st.stream
            .as_ref()
            .expect("a stream is open")
            .send(chunk)
            .unwrap();
    }

    fn stream_requests(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().stream_requests.clone()
    }
}

fn directory(names: &[&str]) -> Directory {
    Directory {
        cas: Vec::new(),
        users: names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    UserEntry {
                        role: Default::default(),
                        via: None,
                        tls: None,
                        seal: None,
                        name: n.to_string(),
                        proxy_id: None,
                        key: Some(Identity::from_seed([n.len() as u8; 32]).public()),
                        host: "127.0.0.1".into(),
                        port: 9,
                        native: true,
                        state: UserState::Active,
                    },
                )
            })
            .collect(),
        ai: Vec::new(),
    }
}

fn table(names: &[&str]) -> EndpointTable {
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Endpoint::Peer(PeerEndpoint {
                    host: "127.0.0.1".into(),
                    port: 9,
                    native: true,
                }),
            )
        })
        .collect::<BTreeMap<_, _>>()
}

/// alice's proxy pinned to the fake controller's root.
async fn alice_proxy(fake: &Fake, dir: &std::path::Path) -> crate::helpers::Spawned {
    let mut config = config_for(&[("alice", &[])]);
    config.controller.url = Some(fake.url.clone());
    let mut settings = config.proxy_settings("alice", dir).unwrap();
    settings.root = Some(fake.root.fingerprint());
    crate::helpers::Spawned::spawn(
        overlay::proxy::start(settings, free_listener())
            .await
            .expect("proxy starts"),
    )
}

/// The names alice's proxy routes to (its peer's directory).
async fn names(proxy: &str) -> Vec<String> {
    let (s, v) = get(&format!("{proxy}/api/v1/directory"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let entries: Vec<DirectoryEntry> = serde_json::from_value(v).unwrap();
    let mut n: Vec<String> = entries.into_iter().map(|e| e.name).collect();
    n.sort();
    n
}

async fn wait_names(proxy: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(&format!("{proxy} routes to {want:?}"), || {
        let want = want.clone();
        async move { (names(proxy).await == want).then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn an_old_directory_version_replayed_to_a_proxy_is_refused_also_after_a_restart() {
    let fake = Fake::start();
    let old = fake.snapshot(10, &["carol"]);
    fake.state.lock().unwrap().register_answer = Some(old.clone());
    let dir = tempfile::tempdir().unwrap();
    let proxy = alice_proxy(&fake, dir.path()).await;
    wait_names(&proxy.url, &["carol"]).await;
    eventually("the stream resumes from version 10", || async {
        (fake.stream_requests().last() == Some(&Some("10".into()))).then_some(())
    })
    .await;
    fake.push(sse("delta", 20, &fake.delta(10, 20, &["carol"], &["dave"])));
    wait_names(&proxy.url, &["dave"]).await;
    // The old snapshot again (validly signed): refused, dave stays.
    fake.push(sse("snapshot", 10, &old));
    // A later delta proves the old snapshot was handled (and refused) before it.
    fake.push(sse(
        "delta",
        21,
        &fake.delta(20, 21, &["dave"], &["dave", "erin"]),
    ));
    wait_names(&proxy.url, &["dave", "erin"]).await;

    // After a restart the stored version is the floor: the register answer replays version 10.
    proxy.stop().await;
    let restarted = alice_proxy(&fake, dir.path()).await;
    eventually("the restarted proxy resumes from version 21", || async {
        (fake.stream_requests().last() == Some(&Some("21".into()))).then_some(())
    })
    .await;
    assert_eq!(names(&restarted.url).await, ["dave", "erin"]);
}

#[actix_web::test]
async fn a_delta_with_a_bad_signature_or_a_skipped_version_makes_the_proxy_ask_for_a_snapshot() {
    let fake = Fake::start();
    fake.state.lock().unwrap().register_answer = Some(fake.snapshot(10, &["carol"]));
    let dir = tempfile::tempdir().unwrap();
    let proxy = alice_proxy(&fake, dir.path()).await;
    wait_names(&proxy.url, &["carol"]).await;
    eventually("the stream is open", || async {
        (!fake.stream_requests().is_empty()).then_some(())
    })
    .await;

    // A delta whose payload was changed after signing.
    let mut forged = fake.delta(10, 11, &["carol"], &["mallory"]);
    let payload = forged["doc"]["payload"]
        .as_str()
        .unwrap()
        .replace("mallory", "mallorz");
    forged["doc"]["payload"] = json!(payload);
    fake.state.lock().unwrap().on_fresh_stream =
        Some(sse("snapshot", 12, &fake.snapshot(12, &["dave"])));
    fake.push(sse("delta", 11, &forged));
    wait_names(&proxy.url, &["dave"]).await;
    let asked = fake.stream_requests();
    assert_eq!(asked.last(), Some(&None), "asked for a snapshot: {asked:?}");

    // A delta that skips a version (from 13, while 12 is applied).
    let before = fake.stream_requests().len();
    fake.state.lock().unwrap().on_fresh_stream =
        Some(sse("snapshot", 20, &fake.snapshot(20, &["erin"])));
    fake.push(sse(
        "delta",
        14,
        &fake.delta(13, 14, &["dave"], &["mallory"]),
    ));
    wait_names(&proxy.url, &["erin"]).await;
    let asked = fake.stream_requests();
    assert!(
        asked.len() > before && asked.last() == Some(&None),
        "{asked:?}"
    );
    assert!(!names(&proxy.url).await.contains(&"mallory".to_string()));
}

// ---------------------------------------------------------------------------------------------
// Revocation.

#[actix_web::test]
async fn a_revoked_users_queued_message_is_refused_at_the_receiver_and_shown_failed_at_the_sender()
{
    use overlay::peer::store::{HistoryPage, MessageState};
    if std::env::var_os("OVERLAY_TEST_LOG").is_some() {
        overlay::logging::init();
    }
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let mut o = spawn_overlay(config_for(users)).await;
    let (alice, bob_proxy_addr) = (o.url("peer/alice"), o.server("proxy/bob").addr);
    let admin = std::fs::read_to_string(o.data_dir.path().join("admin.token")).unwrap();
    let controller = o.url("controller");
    eventually("alice can reach bob", || async {
        let (_, v) = get(&format!("{alice}/peers"), None).await;
        v.as_array()?.iter().any(|p| p["id"] == "bob").then_some(())
    })
    .await;
    // bob's proxy is down: alice's message waits in her proxy's outbox.
    o.stop("proxy/bob").await;
    let (s, v) = post(
        &format!("{alice}/send_message"),
        None,
        &json!({"peer_id": "bob", "message": "sent before the revocation"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = post(
        &format!("{controller}/api/v1/admin/revoke"),
        Some(admin.trim()),
        &json!({"name": "alice", "reason": "laptop stolen"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // bob's proxy comes back, learns of the revocation, and refuses the queued message.
    let mut config = config_for(users);
    config.controller.listen = o.server("controller").addr;
    config.controller.url = o
        .server("controller")
        .tls_addr
        .map(|a| format!("https://{a}"));
    for (name, _) in users {
        let peer = o.server(&format!("peer/{name}")).addr;
        let proxy = if *name == "bob" {
            bob_proxy_addr
        } else {
            o.server(&format!("proxy/{name}")).addr
        };
        config.set_instance_listeners(name, Some(peer), Some(proxy));
    }
    let listener = std::net::TcpListener::bind(bob_proxy_addr).unwrap();
    let _bob = crate::helpers::spawn_proxy(&config, "bob", o.data_dir.path(), listener).await;
    let reason = eventually("alice's message is shown failed", || async {
        let (_, v) = get(&format!("{alice}/api/v1/conversations/bob/messages"), None).await;
        let page: HistoryPage = serde_json::from_value(v).ok()?;
        page.messages.iter().find_map(|m| match &m.state {
            MessageState::Failed { reason } => Some(reason.clone()),
            _ => None,
        })
    })
    .await;
    assert!(reason.contains("revoked"), "{reason}");
    assert!(reason.contains("laptop stolen"), "{reason}");
    let bob = o.url("peer/bob");
    let (_, v) = get(&format!("{bob}/get_chat_history/alice"), None).await;
    assert_eq!(v, json!([]), "bob never stored it");
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[actix_web::test]
async fn no_key_or_token_bytes_appear_in_the_binarys_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&[("alice", &[]), ("bob", &[])]);
    let (mut child, alice) =
        crate::helpers::run_binary(&config, dir.path(), &["up"], "peer/alice").await;
    eventually("alice can reach bob", || async {
        let (_, v) = get(&format!("{alice}/peers"), None).await;
        v.as_array()?.iter().any(|p| p["id"] == "bob").then_some(())
    })
    .await;
    let (s, _) = post(
        &format!("{alice}/send_message"),
        None,
        &json!({"peer_id": "bob", "message": "hi"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("sha256:"), "the log names keys by fingerprint");
    let data = dir.path().join("data");
    let mut secrets = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".key") {
            let text = std::fs::read_to_string(&path).unwrap();
            secrets.push((name.clone(), text.lines().nth(1).unwrap().to_string()));
        }
        if name == "admin.token" {
            secrets.push((
                name,
                std::fs::read_to_string(&path).unwrap().trim().to_string(),
            ));
        }
    }
    assert!(
        secrets.len() >= 5,
        "root, online, two proxies, admin: {secrets:?}"
    );
    for (file, secret) in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{file}'s secret is in the log"
        );
        // Also a fragment, in case a key is logged cut or re-encoded in part.
        assert!(
            !log.contains(&secret[..16]),
            "part of {file}'s secret is in the log"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rotation.

#[actix_web::test]
async fn a_key_rotated_with_the_old_keys_signature_replaces_it_and_the_old_key_is_refused() {
    use overlay::wire::directory::{RotateClaim, RotateRequest, ROTATE_DOMAIN};
    let c = controller().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("proxy-carol.key");
    let old = Identity::create(&key_file).unwrap();
    let token = c.token("carol", json!({})).await;
    let (s, v) = post(
        &format!("{}/api/v1/join", c.url),
        None,
        &join_request(&token, "carol", &c.root, &old),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // A rotation the new key did not sign (someone holding only the old key's signature on
    // another claim, or only the new key) is refused.
    let stranger = Identity::generate();
    let text = serde_json::to_string(&RotateClaim {
        instance_name: "carol".into(),
        old_key: old.public(),
        new_key: stranger.public(),
        root: c.root.clone(),
        time_ms: now_ms(),
    })
    .unwrap();
    let half = RotateRequest {
        old_sig: old.sign(ROTATE_DOMAIN, text.as_bytes()),
        new_sig: old.sign(ROTATE_DOMAIN, text.as_bytes()),
        claim: text,
    };
    let (s, v) = post(&format!("{}/api/v1/rotate", c.url), None, &half).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(c.user("carol").await["key"], old.public().to_string());

    // The command line rotates it.
    let (url, root, data) = (c.url.clone(), c.root.to_string(), dir.path().to_path_buf());
    let out = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_overlay"))
            .arg("--data-dir")
            .arg(&data)
            .args(["rotate-key", "--name", "carol", "--controller-url", &url])
            .args(["--controller-root", &root])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = Identity::load(&key_file).unwrap();
    assert_ne!(new.public(), old.public());
    assert!(stdout.contains(new.fingerprint().as_str()), "{stdout}");
    assert!(!dir.path().join("proxy-carol.key.new").exists());
    let user = c.user("carol").await;
    assert_eq!(user["key"], new.public().to_string());
    assert_eq!(user["state"], "active");

    // The old key no longer speaks for carol; the new one does.
    let (s, v) = post(
        &format!("{}/api/v1/register", c.url),
        None,
        &claim("carol", "carol-proxy", &c.root, &old),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = post(
        &format!("{}/api/v1/register", c.url),
        None,
        &claim("carol", "carol-proxy", &c.root, &new),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, trust) = get(&format!("{}/api/v1/admin/trust", c.url), Some(&c.admin)).await;
    assert!(
        trust["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "rotate"),
        "{trust}"
    );
}

#[actix_web::test]
async fn a_lost_key_is_replaced_only_with_a_replace_token_also_after_a_revocation() {
    let c = controller().await;
    let first = Identity::generate();
    let token = c.token("carol", json!({})).await;
    let join = format!("{}/api/v1/join", c.url);
    let (s, v) = post(&join, None, &join_request(&token, "carol", &c.root, &first)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // An ordinary token for a name that joined is not made at all.
    let (s, v) = post(
        &format!("{}/api/v1/admin/tokens", c.url),
        Some(&c.admin),
        &json!({"name": "carol"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("--replace"), "{v}");

    // The key is lost and revoked; a replace token brings carol back with a new key.
    let (s, v) = post(
        &format!("{}/api/v1/admin/revoke", c.url),
        Some(&c.admin),
        &json!({"name": "carol", "reason": "disk died"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(c.user("carol").await["state"], "revoked");
    let replace = c.token("carol", json!({"replace": true})).await;
    let second = Identity::generate();
    let (s, v) = post(
        &join,
        None,
        &join_request(&replace, "carol", &c.root, &second),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let user = c.user("carol").await;
    assert_eq!(user["state"], "active");
    assert_eq!(user["key"], second.public().to_string());
    // The old key stays out.
    let (s, _) = post(
        &format!("{}/api/v1/register", c.url),
        None,
        &claim("carol", "carol-proxy", &c.root, &first),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, trust) = get(&format!("{}/api/v1/admin/trust", c.url), Some(&c.admin)).await;
    let kinds: Vec<&str> = trust["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "carol")
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    for k in ["join", "revoke", "replace"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
}

#[actix_web::test]
async fn a_proxy_whose_key_file_was_lost_rejoins_with_a_replace_token_and_delivers_again() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &[])];
    let mut o = spawn_overlay(config_for(users)).await;
    let (alice_peer, bob_peer) = (o.url("peer/alice"), o.url("peer/bob"));
    let controller = o.url("controller");
    let admin = std::fs::read_to_string(o.data_dir.path().join("admin.token")).unwrap();
    let admin = admin.trim();
    let alice_addr = o.server("proxy/alice").addr;
    let old_fp = Identity::load(&o.data_dir.path().join("proxy-alice.key"))
        .unwrap()
        .fingerprint();
    o.stop("proxy/alice").await;
    std::fs::remove_file(o.data_dir.path().join("proxy-alice.key")).unwrap();

    let (s, v) = post(
        &format!("{controller}/api/v1/admin/tokens"),
        Some(admin),
        &json!({"name": "alice", "replace": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token: JoinToken = v["token"].as_str().unwrap().parse().unwrap();
    let mut config = config_for(users);
    config.controller.listen = o.server("controller").addr;
    config.controller.url = o
        .server("controller")
        .tls_addr
        .map(|a| format!("https://{a}"));
    for (name, _) in users {
        let proxy = if *name == "alice" {
            alice_addr
        } else {
            o.server(&format!("proxy/{name}")).addr
        };
        config.set_instance_listeners(
            name,
            Some(o.server(&format!("peer/{name}")).addr),
            Some(proxy),
        );
    }
    let mut settings = config.proxy_settings("alice", o.data_dir.path()).unwrap();
    settings.root = Some(overlay::controller::trust::root_fingerprint(o.data_dir.path()).unwrap());
    settings.join = Some(token);
    let listener = std::net::TcpListener::bind(alice_addr).unwrap();
    let _alice =
        crate::helpers::Spawned::spawn(overlay::proxy::start(settings, listener).await.unwrap());

    let new_fp = Identity::load(&o.data_dir.path().join("proxy-alice.key"))
        .unwrap()
        .fingerprint();
    assert_ne!(new_fp, old_fp);
    eventually("alice's new key is pinned", || async {
        let (_, v) = get(&format!("{controller}/api/v1/admin/trust"), Some(admin)).await;
        let alice = v["users"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == "alice")?
            .clone();
        let key: overlay::trust::PublicKey = serde_json::from_value(alice["key"].clone()).ok()?;
        (key.fingerprint() == new_fp && alice["state"] == "active").then_some(())
    })
    .await;
    let (s, v) = post(
        &format!("{alice_peer}/send_message"),
        None,
        &json!({"peer_id": "bob", "message": "back with a new key"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    eventually("bob got it", || async {
        let (_, v) = get(&format!("{bob_peer}/get_chat_history/alice"), None).await;
        v.as_array()?
            .iter()
            .any(|m| m["message"] == "back with a new key")
            .then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Signed calls to the controller.

/// POSTs `body` to `url` (path `target`) with `signature` as its `overlay-signature` header.
async fn post_signed(url: &str, signature: Option<String>, body: &[u8]) -> (StatusCode, Value) {
    let mut req = shared_client()
        .post(url)
        .insert_header(("content-type", "application/json"));
    if let Some(s) = signature {
        req = req.insert_header((overlay::trust::request::SIGNATURE_HEADER, s));
    }
    let mut r = req.send_body(body.to_vec()).await.expect("POST answers");
    let status = r.status();
    let bytes = r.body().limit(1 << 20).await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn signature(by: &Identity, target: &str, body: &[u8], origin: &str, to: &str) -> String {
    overlay::trust::request::sign(
        by,
        &overlay::trust::request::RequestLine {
            method: "POST",
            target,
            body,
        },
        origin,
        to,
        now_ms(),
    )
}

#[actix_web::test]
async fn a_call_signed_by_another_proxy_changed_or_replayed_is_refused_also_after_a_restart() {
    let config = crate::helpers::without_tls(config_for(&[("alice", &[])]));
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_controller(&config, dir.path(), free_listener()).await;
    let root = overlay::controller::trust::root_fingerprint(dir.path()).unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let (carol, dave) = (Identity::generate(), Identity::generate());
    for (name, key) in [("carol", &carol), ("dave", &dave)] {
        let (s, v) = post(
            &format!("{}/api/v1/admin/tokens", server.url),
            Some(admin.trim()),
            &json!({"name": name}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token: JoinToken = v["token"].as_str().unwrap().parse().unwrap();
        let (s, v) = post(
            &format!("{}/api/v1/join", server.url),
            None,
            &join_request(&token, name, &root, key),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let beat = br#"{"proxy_id":"carol-proxy"}"#;
    let url = format!("{}/api/heartbeat", server.url);
    let to = root.as_str();
    let refused = |(s, v): (StatusCode, Value), why: &str| {
        assert_eq!(s, StatusCode::FORBIDDEN, "{why}: {v}");
    };
    let (s, v) = post_signed(&url, None, beat).await;
    refused((s, v.clone()), "unsigned, for a pinned user");
    assert!(
        v["message"].as_str().unwrap().contains("must be signed"),
        "unsigned, for a pinned user: {v}"
    );
    refused(
        post_signed(
            &url,
            Some(signature(&dave, "/api/heartbeat", beat, "carol", to)),
            beat,
        )
        .await,
        "signed by another enrolled proxy claiming carol",
    );
    refused(
        post_signed(
            &url,
            Some(signature(&dave, "/api/heartbeat", beat, "dave", to)),
            beat,
        )
        .await,
        "dave speaking for carol's proxy",
    );
    refused(
        post_signed(
            &url,
            Some(signature(
                &carol,
                "/api/heartbeat",
                beat,
                "carol",
                "sha256:00",
            )),
            beat,
        )
        .await,
        "for another destination",
    );
    let other = br#"{"proxy_id":"carol-proxy","api_keys":{}}"#;
    refused(
        post_signed(
            &url,
            Some(signature(&carol, "/api/heartbeat", beat, "carol", to)),
            other,
        )
        .await,
        "a body swapped under the signature",
    );
    refused(
        post_signed(
            &url,
            Some(signature(&carol, "/api/heartbeat?x", beat, "carol", to)),
            beat,
        )
        .await,
        "a path swapped under the signature",
    );
    let good = signature(&carol, "/api/heartbeat", beat, "carol", to);
    let (s, v) = post_signed(&url, Some(good.clone()), beat).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    refused(post_signed(&url, Some(good), beat).await, "a replay");
    // Acknowledgements and the directory stream are signed too.
    let ack = br#"{"proxy_id":"carol-proxy","version":1}"#;
    let ack_url = format!("{}/api/v1/directory/ack", server.url);
    refused(
        post_signed(
            &ack_url,
            Some(signature(&dave, "/api/v1/directory/ack", ack, "carol", to)),
            ack,
        )
        .await,
        "an ack forged by another proxy",
    );
    let r = shared_client()
        .get(format!(
            "{}/api/v1/directory/stream?proxy_id=carol-proxy",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "an unsigned subscription"
    );

    // A call signed before the controller restarted is refused after it (its nonce is gone).
    let before = signature(&carol, "/api/heartbeat", beat, "carol", to);
    server.stop().await;
    let server = spawn_controller(&config, dir.path(), free_listener()).await;
    let url = format!("{}/api/heartbeat", server.url);
    refused(
        post_signed(&url, Some(before), beat).await,
        "dated before the restart",
    );
    // A fresh one is fine (the signed registration of before is still on record).
    let fresh = signature(&carol, "/api/heartbeat", beat, "carol", to);
    let (s, v) = post_signed(&url, Some(fresh), beat).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

// ---------------------------------------------------------------------------------------------
// The original's unsigned API: listed legacy proxies only (issue 15).

/// `config` with `entries` (name, address) under `legacy_proxies`, read back through
/// config.yaml's checks (so the listing is one an operator may write).
fn with_legacy(
    config: &overlay::config::Config,
    entries: &[(&str, &str)],
) -> overlay::config::Config {
    let mut config = config.clone();
    config.legacy_proxies = entries
        .iter()
        .map(|(name, address)| overlay::config::LegacyProxyConfig {
            name: overlay::config::InstanceName::parse(name).unwrap(),
            address: address.parse().unwrap(),
        })
        .collect();
    let yaml = serde_yaml::to_string(&config).unwrap();
    overlay::config::Config::parse(&yaml, "legacy test config").expect("a valid config")
}

/// Joins `name` with a fresh token and `key` (its proxy id `{name}-proxy`, port 40000).
async fn join_as(url: &str, admin: &str, root: &Fingerprint, name: &str, key: &Identity) {
    let (s, v) = post(
        &format!("{url}/api/v1/admin/tokens"),
        Some(admin),
        &json!({"name": name, "ttl": "1h"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token: JoinToken = v["token"].as_str().unwrap().parse().unwrap();
    let (s, v) = post(
        &format!("{url}/api/v1/join"),
        None,
        &join_request(&token, name, root, key),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// The original's registration of `name` as proxy `id`, unsigned.
async fn register_unsigned(url: &str, id: &str, name: &str) -> (StatusCode, Value) {
    let body = json!({"proxy_id": id, "instance_name": name, "host": "127.0.0.1", "port": 4003});
    post(&format!("{url}/api/register"), None, &body).await
}

/// `GET url` (path `target`), signed by `by` for `origin`.
async fn get_signed(
    url: &str,
    target: &str,
    by: &Identity,
    origin: &str,
    to: &str,
) -> (StatusCode, Value) {
    let signature = overlay::trust::request::sign(
        by,
        &overlay::trust::request::RequestLine {
            method: "GET",
            target,
            body: b"",
        },
        origin,
        to,
        now_ms(),
    );
    let mut r = shared_client()
        .get(url)
        .insert_header((overlay::trust::request::SIGNATURE_HEADER, signature))
        .send()
        .await
        .expect("GET answers");
    let status = r.status();
    let bytes = r.body().limit(1 << 20).await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_web::test]
async fn a_listed_legacy_proxy_is_answered_until_its_name_has_a_pinned_key() {
    // carol is listed at 127.0.0.1, where the test connects from.
    let config = with_legacy(
        &crate::helpers::without_tls(config_for(&[("alice", &[])])),
        &[("carol", "127.0.0.1")],
    );
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_controller(&config, dir.path(), free_listener()).await;
    let url = server.url.clone();
    let root = overlay::controller::trust::root_fingerprint(dir.path()).unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim();

    // A name nobody listed is refused; the listed one is answered.
    let (s, v) = register_unsigned(&url, "mallory-legacy", "mallory").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("mallory from 127.0.0.1 is not listed"),
        "{v}"
    );
    let (s, v) = register_unsigned(&url, "carol-legacy", "carol").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let beat = json!({"proxy_id": "carol-legacy"});
    let (s, v) = post(&format!("{url}/api/heartbeat"), None, &beat).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // carol joins with a token: from now on her name is spoken for by her key alone, and the
    // listing does not change that.
    let owner = Identity::generate();
    join_as(&url, admin, &root, "carol", &owner).await;
    let (s, v) = register_unsigned(&url, "carol-legacy", "carol").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("carol has a pinned key")
            && msg.contains("an unsigned registration cannot speak for it"),
        "{msg}"
    );
    let (s, v) = post(&format!("{url}/api/heartbeat"), None, &beat).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("must be signed"),
        "{v}"
    );
    let (s, v) = get(
        &format!("{url}/api/getendpoints?proxy_id=carol-legacy"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (_, trust) = get(&format!("{url}/api/v1/admin/trust"), Some(admin)).await;
    let carol = trust["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "carol")
        .unwrap();
    assert_eq!(carol["key"], owner.public().to_string());
    assert_eq!(carol["state"], "active");
}

#[actix_web::test]
async fn unsigned_calls_from_an_unlisted_address_are_refused_and_a_joined_proxys_signed_ones_answered(
) {
    // carol registered the original's way while she was listed at 127.0.0.1 ...
    let base = crate::helpers::without_tls(config_for(&[("alice", &[])]));
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_controller(
        &with_legacy(&base, &[("carol", "127.0.0.1")]),
        dir.path(),
        free_listener(),
    )
    .await;
    let (s, v) = register_unsigned(&server.url, "carol-legacy", "carol").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    server.stop().await;
    // ... and is listed at 192.0.2.7 now: nothing unsigned from 127.0.0.1 is answered.
    let server = spawn_controller(
        &with_legacy(&base, &[("carol", "192.0.2.7")]),
        dir.path(),
        free_listener(),
    )
    .await;
    let url = server.url.clone();
    let root = overlay::controller::trust::root_fingerprint(dir.path()).unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let dave = Identity::generate();
    join_as(&url, admin.trim(), &root, "dave", &dave).await;
    let to = root.as_str();
    let beat_url = format!("{url}/api/heartbeat");
    let unlisted = |(s, v): (StatusCode, Value), what: &str| {
        assert_eq!(s, StatusCode::FORBIDDEN, "{what}: {v}");
        let msg = v["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("only from addresses listed under `legacy_proxies`")
                && msg.contains("127.0.0.1 is not one"),
            "{what}: {msg}"
        );
        msg
    };
    let carol_beat = br#"{"proxy_id":"carol-legacy"}"#;
    unlisted(
        post_signed(&beat_url, None, carol_beat).await,
        "carol's unsigned heartbeat",
    );
    unlisted(
        get(
            &format!("{url}/api/getendpoints?proxy_id=carol-legacy"),
            None,
        )
        .await,
        "carol's unsigned table fetch",
    );
    unlisted(
        post_signed(&beat_url, None, br#"{"proxy_id":"ghost"}"#).await,
        "an unsigned heartbeat of an unknown id",
    );
    // A signature nothing can check (carol has no pinned key) counts for nothing.
    let msg = unlisted(
        post_signed(
            &beat_url,
            Some(signature(&dave, "/api/heartbeat", carol_beat, "carol", to)),
            carol_beat,
        )
        .await,
        "carol's heartbeat under a signature of dave's key",
    );
    assert!(msg.contains("no pinned key to check it with"), "{msg}");

    // dave's proxy, joined, signs: its heartbeat and its table fetch are answered from the same
    // unlisted address.
    let dave_beat = br#"{"proxy_id":"dave-proxy"}"#;
    let (s, v) = post_signed(
        &beat_url,
        Some(signature(&dave, "/api/heartbeat", dave_beat, "dave", to)),
        dave_beat,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let target = "/api/getendpoints?proxy_id=dave-proxy";
    let (s, v) = get_signed(&format!("{url}{target}"), target, &dave, "dave", to).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "success");
    assert!(v["endpoints"].is_object(), "{v}");
    // A signed heartbeat of a forgotten proxy is the original's 404: it registers again.
    let gone = br#"{"proxy_id":"dave-old"}"#;
    let (s, v) = post_signed(
        &beat_url,
        Some(signature(&dave, "/api/heartbeat", gone, "dave", to)),
        gone,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

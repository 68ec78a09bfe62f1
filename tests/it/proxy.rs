//! Integration tests: proxy. Real proxies on port 0, with small fakes around them: a fake peer
//! (records every `/api/v1/inbox` and `/api/v1/receipts` call, stores inbox envelopes by id),
//! a fake controller (register, heartbeat, table stream, getendpoints), and a fake ORIGINAL
//! proxy (accepts `POST /` with a `Host:` header). One case runs the real binary to kill it
//! with SIGKILL.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use overlay::config::{AiEndpointConfig, Config};
use overlay::wire::control_plane::{Endpoint, EndpointTable, PeerEndpoint};
use overlay::wire::data_plane::{Accepted, Ack, DeliveryState, Envelope, Receipt};
use overlay::wire::legacy;

use crate::helpers::{client, config_for, free_listener, run_binary, spawn_proxy, Spawned};
use overlay::controller::directory::Signer;
use overlay::wire::directory::{Directory, RegisterClaim, Snapshot, UserEntry, UserState};

// ---------------------------------------------------------------- fakes

/// Starts an HTTP server on a free port with the routes of `configure`.
fn start_fake<F>(configure: F) -> (SocketAddr, ServerHandle)
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let listener = free_listener();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (addr, handle)
}

/// What a fake peer has been sent.
#[derive(Default)]
struct PeerLog {
    /// Every inbox post, in arrival order (retries included).
    raw: Vec<Envelope>,
    /// Stored envelopes by id (idempotent, like the real peer).
    stored: BTreeMap<String, Envelope>,
    /// Ids in the order they were first stored.
    order: Vec<String>,
    receipts: Vec<Receipt>,
    /// `POST /api/v1/inbox/batch` calls.
    batch_calls: usize,
}

#[derive(Clone)]
struct FakePeer {
    addr: SocketAddr,
    log: Arc<Mutex<PeerLog>>,
}

/// Stores `e` like the real peer: once per id; every call is counted.
fn peer_store(log: &Mutex<PeerLog>, e: Envelope) -> Ack {
    let mut log = log.lock().unwrap();
    log.raw.push(e.clone());
    let id = e.id.to_string();
    let duplicate = log.stored.contains_key(&id);
    if !duplicate {
        log.order.push(id.clone());
        log.stored.insert(id, e.clone());
    }
    Ack {
        id: e.id,
        duplicate,
    }
}

impl FakePeer {
    /// A peer with the single-envelope inbox only (a batch gets 404).
    fn start() -> FakePeer {
        Self::start_with(false)
    }

    /// With `batch`, it also takes `POST /api/v1/inbox/batch` (`[Envelope]` → `[Ack]`).
    fn start_with(batch: bool) -> FakePeer {
        let log = Arc::new(Mutex::new(PeerLog::default()));
        let data = web::Data::from(log.clone());
        let (addr, _handle) =
            start_fake(move |cfg| {
                cfg.app_data(data.clone())
                    .app_data(web::JsonConfig::default().limit(1 << 22))
                    .route(
                        "/api/v1/inbox",
                        web::post().to(
                            |log: web::Data<Mutex<PeerLog>>, e: web::Json<Envelope>| async move {
                                HttpResponse::Ok().json(peer_store(&log, e.into_inner()))
                            },
                        ),
                    )
                    .route(
                        "/api/v1/receipts",
                        web::post().to(
                            |log: web::Data<Mutex<PeerLog>>, r: web::Json<Receipt>| async move {
                                log.lock().unwrap().receipts.push(r.into_inner());
                                HttpResponse::Ok().json(json!({"status": "success"}))
                            },
                        ),
                    );
                if batch {
                    cfg.route(
                    "/api/v1/inbox/batch",
                    web::post().to(
                        |log: web::Data<Mutex<PeerLog>>, es: web::Json<Vec<Envelope>>| async move {
                            log.lock().unwrap().batch_calls += 1;
                            let acks: Vec<Ack> =
                                es.into_inner().into_iter().map(|e| peer_store(&log, e)).collect();
                            HttpResponse::Ok().json(acks)
                        },
                    ),
                );
                }
            });
        FakePeer { addr, log }
    }

    fn stored_count(&self) -> usize {
        self.log.lock().unwrap().stored.len()
    }
    fn order(&self) -> Vec<String> {
        self.log.lock().unwrap().order.clone()
    }
    fn texts(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.order
            .iter()
            .map(|id| log.stored[id].body.text().to_string())
            .collect()
    }
    /// How many times each id was posted.
    fn raw_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for e in &self.log.lock().unwrap().raw {
            *counts.entry(e.id.to_string()).or_insert(0) += 1;
        }
        counts
    }
    fn receipts(&self) -> Vec<Receipt> {
        self.log.lock().unwrap().receipts.clone()
    }
    fn receipt_for(&self, id: &str) -> Option<DeliveryState> {
        self.receipts()
            .into_iter()
            .rev()
            .find(|r| r.id.as_str() == id)
            .map(|r| r.state)
    }
}

/// What a fake controller has seen, and the table it hands out.
#[derive(Default)]
struct ControllerLog {
    table: EndpointTable,
    online: Vec<String>,
    registers: Vec<RegisterClaim>,
    heartbeats: usize,
    /// Answer heartbeats with 404, as a controller that lost its registry.
    forget: bool,
    /// Serve the directory stream (else 503, as a controller whose stream is broken).
    stream: bool,
    /// Registrations after the first: how a proxy whose stream is broken keeps its table fresh.
    polls: usize,
    /// The version of the next snapshot (each one is newer).
    version: u64,
}

/// A controller of ours, faked: it signs its snapshots under a root the test owns (the proxy
/// pins it), and hands out `log.table` as the proxy's table.
struct FakeController {
    addr: SocketAddr,
    log: Arc<Mutex<ControllerLog>>,
    handle: ServerHandle,
    root: overlay::trust::Fingerprint,
}

/// The fake's signed snapshot of `log.table` for alice, at a new version.
fn fake_snapshot(signer: &Signer, log: &mut ControllerLog) -> Value {
    log.version += 1;
    let now = overlay::wire::now_ms();
    let users = log
        .table
        .iter()
        .filter_map(|(name, e)| match e {
            overlay::wire::control_plane::Endpoint::Peer(p) => Some((
                name.to_lowercase(),
                UserEntry {
                    name: name.clone(),
                    proxy_id: None,
                    key: None,
                    host: p.host.clone(),
                    port: p.port,
                    native: p.native,
                    state: UserState::Pending,
                },
            )),
            _ => None,
        })
        .collect();
    let snap = Snapshot {
        for_user: "alice".into(),
        version: log.version,
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        directory: Directory {
            users,
            ai: Vec::new(),
        },
        table: log.table.clone(),
    };
    serde_json::to_value(signer.snapshot(&snap)).unwrap()
}

impl FakeController {
    fn start(table: EndpointTable, online: &[&str]) -> FakeController {
        Self::start_with(table, online, true)
    }

    fn start_with(table: EndpointTable, online: &[&str], stream: bool) -> FakeController {
        let log = Arc::new(Mutex::new(ControllerLog {
            table,
            stream,
            online: online.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }));
        let root = overlay::trust::Identity::generate();
        let online_key = overlay::trust::Identity::generate();
        let cert = overlay::trust::issue(
            &root,
            &overlay::trust::KeyCert {
                key: online_key.public(),
                role: "controller-online".into(),
                serial: 1,
                issued_at_ms: overlay::wire::now_ms(),
                not_after_ms: None,
            },
        );
        let signer = Arc::new(Signer {
            online: online_key,
            cert,
        });
        let data = web::Data::from(log.clone());
        let signer = web::Data::from(signer);
        let (addr, handle) = start_fake(move |cfg| {
            cfg.app_data(data.clone())
                .app_data(signer.clone())
                .route(
                    "/api/v1/register",
                    web::post().to(
                        |log: web::Data<Mutex<ControllerLog>>,
                         signer: web::Data<Signer>,
                         r: web::Json<overlay::trust::Signed<RegisterClaim>>| async move {
                            let mut log = log.lock().unwrap();
                            let claim = r.peek().unwrap();
                            if !log.registers.is_empty() {
                                log.polls += 1;
                            }
                            log.registers.push(claim);
                            log.forget = false;
                            HttpResponse::Ok().json(fake_snapshot(&signer, &mut log))
                        },
                    ),
                )
                .route(
                    "/api/heartbeat",
                    web::post().to(|log: web::Data<Mutex<ControllerLog>>| async move {
                        let mut log = log.lock().unwrap();
                        log.heartbeats += 1;
                        if log.forget {
                            HttpResponse::NotFound()
                                .json(legacy::ErrorBody::new("Unknown proxy"))
                        } else {
                            HttpResponse::Ok().json(json!({"status": "success"}))
                        }
                    }),
                )
                .route("/api/v1/directory/ack", web::post().to(HttpResponse::Ok))
                .route(
                    "/api/v1/directory/stream",
                    web::get().to(
                        |log: web::Data<Mutex<ControllerLog>>, signer: web::Data<Signer>| async move {
                            let event = {
                                let mut log = log.lock().unwrap();
                                if !log.stream {
                                    return HttpResponse::ServiceUnavailable().finish();
                                }
                                let snap = fake_snapshot(&signer, &mut log);
                                format!(
                                    ": hello\n\nevent: snapshot\ndata: {snap}\n\nevent: online\ndata: {}\n\n",
                                    json!({"names": log.online})
                                )
                            };
                            let first = futures_util::stream::once(async move {
                                Ok::<_, actix_web::Error>(web::Bytes::from(event))
                            });
                            let body = futures_util::StreamExt::chain(
                                first,
                                futures_util::stream::pending(),
                            );
                            HttpResponse::Ok()
                                .content_type("text/event-stream")
                                .streaming(body)
                        },
                    ),
                );
        });
        let root = root.fingerprint();
        FakeController {
            addr,
            log,
            handle,
            root,
        }
    }

    /// Points `config` at this controller and pins its root.
    fn configure(&self, config: &mut Config) {
        config.controller.listen = self.addr;
        config.controller.root = Some(self.root.clone());
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A proxy of the original: `POST /` with `Host: TARGET`, no acks, 200 `success`.
#[derive(Clone)]
struct FakeOriginal {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<(String, legacy::Message)>>>,
}

impl FakeOriginal {
    fn start() -> FakeOriginal {
        let posts: Arc<Mutex<Vec<(String, legacy::Message)>>> = Arc::default();
        let data = web::Data::from(posts.clone());
        let (addr, _handle) = start_fake(move |cfg| {
            cfg.app_data(data.clone()).default_service(web::to(
                |req: HttpRequest,
                 posts: web::Data<Mutex<Vec<(String, legacy::Message)>>>,
                 body: web::Json<legacy::Message>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    // As the original: it routes on the Host name, whatever the path; an
                    // address is nobody it knows (that is how it answers our own routes).
                    let target = host.split(':').next().unwrap_or_default().to_string();
                    if target.contains('.') || target.is_empty() {
                        return HttpResponse::NotFound().json(
                            json!({"status": "error", "message": format!("Unknown peer: {target}")}),
                        );
                    }
                    posts.lock().unwrap().push((host, body.into_inner()));
                    HttpResponse::Ok().json(json!({"status": "success"}))
                },
            ));
        });
        FakeOriginal { addr, posts }
    }
}

// ---------------------------------------------------------------- helpers

/// An address nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    free_listener().local_addr().unwrap()
}

/// How long a condition may take: generous, as the test machine is shared and fsyncs can stall.
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `cond` every 20 ms for up to [`PATIENCE`]; panics naming `what` if it never holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_json(url: &str) -> Value {
    let mut res = client().get(url).send().await.expect("GET answers");
    assert!(res.status().is_success(), "GET {url}: {}", res.status());
    res.json().limit(1 << 20).await.expect("JSON body")
}

/// Polls `GET url` until `cond` holds on its JSON.
async fn eventually_json(what: &str, url: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = get_json(url).await;
        if cond(&v) {
            return v;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out waiting until {what}; last answer {v}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post_json(url: &str, body: &impl serde::Serialize) -> (u16, Value) {
    let mut res = client()
        .post(url)
        .send_json(body)
        .await
        .expect("POST answers");
    let status = res.status().as_u16();
    let v = res.json().limit(1 << 20).await.unwrap_or(Value::Null);
    (status, v)
}

/// Submits `e` to a proxy's outbox and checks the 202 answer.
async fn submit(proxy: &str, e: &Envelope) {
    let (status, v) = post_json(&format!("{proxy}/api/v1/outbox"), e).await;
    assert_eq!(status, 202, "{v}");
    let accepted: Accepted = serde_json::from_value(v).unwrap();
    assert_eq!(
        accepted,
        Accepted {
            id: e.id.clone(),
            state: DeliveryState::Pending
        }
    );
}

async fn outbox_queued(proxy: &str) -> u64 {
    get_json(&format!("{proxy}/api/v1/outbox")).await["queued"]
        .as_u64()
        .unwrap()
}

/// Two users, each with a fake peer; proxies not started. The controller address is dead.
struct Pair {
    config: Config,
    alice_peer: FakePeer,
    bob_peer: FakePeer,
    alice_listener: Option<TcpListener>,
    bob_listener: Option<TcpListener>,
    bob_addr: SocketAddr,
    alice_dir: tempfile::TempDir,
    bob_dir: tempfile::TempDir,
}

impl Pair {
    fn new(tune: impl FnOnce(&mut Config)) -> Pair {
        Self::with_bob_peer(FakePeer::start(), tune)
    }

    fn with_bob_peer(bob_peer: FakePeer, tune: impl FnOnce(&mut Config)) -> Pair {
        let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
        config.controller.listen = dead_addr();
        let alice_peer = FakePeer::start();
        let (al, bl) = (free_listener(), free_listener());
        let bob_addr = bl.local_addr().unwrap();
        config.set_instance_listeners(
            "alice",
            Some(alice_peer.addr),
            Some(al.local_addr().unwrap()),
        );
        config.set_instance_listeners("bob", Some(bob_peer.addr), Some(bob_addr));
        tune(&mut config);
        Pair {
            config,
            alice_peer,
            bob_peer,
            alice_listener: Some(al),
            bob_listener: Some(bl),
            bob_addr,
            alice_dir: tempfile::tempdir().unwrap(),
            bob_dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn alice(&mut self) -> Spawned {
        let l = self.alice_listener.take().unwrap_or_else(free_listener);
        spawn_proxy(&self.config, "alice", self.alice_dir.path(), l).await
    }

    /// Bob's proxy, always at the address the tables name.
    async fn bob(&mut self) -> Spawned {
        let l = match self.bob_listener.take() {
            Some(l) => l,
            None => TcpListener::bind(self.bob_addr).expect("bob's address is free again"),
        };
        spawn_proxy(&self.config, "bob", self.bob_dir.path(), l).await
    }
}

fn peer_endpoint(addr: SocketAddr, native: bool) -> Endpoint {
    Endpoint::Peer(PeerEndpoint {
        host: addr.ip().to_string(),
        port: addr.port(),
        native,
    })
}

// ---------------------------------------------------------------- cases

#[actix_rt::test]
async fn messages_travel_through_both_proxies_once_each_and_the_sender_learns_they_arrived() {
    let mut pair = Pair::new(|_| {});
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    let sent: Vec<Envelope> = (0..20)
        .map(|i| Envelope::text("alice", "bob", format!("m{i}")))
        .collect();
    for e in &sent {
        submit(&alice.url, e).await;
    }
    // A retried submit is answered the same and queues nothing new.
    submit(&alice.url, &sent[0]).await;
    let to_self = Envelope::text("alice", "ALICE", "note to self");
    submit(&alice.url, &to_self).await;

    eventually("bob's peer stored all 20", || {
        pair.bob_peer.stored_count() == 20
    })
    .await;
    let ids: Vec<String> = sent.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(pair.bob_peer.order(), ids, "in the order sent");
    assert!(pair.bob_peer.raw_counts().values().all(|n| *n == 1));
    eventually("every message has its delivered receipt", || {
        ids.iter()
            .all(|id| pair.alice_peer.receipt_for(id) == Some(DeliveryState::Delivered))
    })
    .await;
    eventually("the note to self reached alice's own peer", || {
        pair.alice_peer.order() == [to_self.id.to_string()]
            && pair.alice_peer.receipt_for(to_self.id.as_str()) == Some(DeliveryState::Delivered)
    })
    .await;
    eventually_json(
        "both outboxes are empty",
        &format!("{}/api/v1/outbox", alice.url),
        |v| v["queued"] == 0,
    )
    .await;
    assert_eq!(outbox_queued(&bob.url).await, 0);
    assert_eq!(
        pair.bob_peer.stored_count(),
        20,
        "the retried submit was not sent again"
    );
    alice.stop().await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_receiving_proxy_that_is_down_gets_the_queued_messages_in_order_when_it_returns() {
    // Bob's peer takes batches: the queue crosses both hops in batches, still in order.
    let mut pair = Pair::with_bob_peer(FakePeer::start_with(true), |_| {});
    drop(pair.bob_listener.take()); // bob's proxy is down: nothing listens there
    let alice = pair.alice().await;
    let sent: Vec<Envelope> = (0..10)
        .map(|i| Envelope::text("alice", "bob", format!("while down {i}")))
        .collect();
    for e in &sent {
        submit(&alice.url, e).await;
    }
    let status = eventually_json(
        "alice's proxy has retried bob's proxy",
        &format!("{}/api/v1/outbox", alice.url),
        |v| v["lanes"][0]["head_attempts"].as_u64().unwrap_or(0) >= 2,
    )
    .await;
    assert_eq!(status["queued"], 10, "{status}");
    assert_eq!(status["lanes"][0]["lane"], "bob");
    assert!(status["lanes"][0]["last_error"]
        .as_str()
        .unwrap()
        .starts_with("bob's proxy: "));
    assert_eq!(pair.bob_peer.stored_count(), 0);
    assert!(pair.alice_peer.receipts().is_empty(), "still pending");

    let bob = pair.bob().await;
    eventually("bob's peer stored all 10", || {
        pair.bob_peer.stored_count() == 10
    })
    .await;
    let texts: Vec<String> = (0..10).map(|i| format!("while down {i}")).collect();
    assert_eq!(pair.bob_peer.texts(), texts, "in the order sent");
    assert!(pair.bob_peer.raw_counts().values().all(|n| *n == 1));
    assert!(pair.bob_peer.log.lock().unwrap().batch_calls >= 1);
    eventually("all 10 delivered receipts", || {
        sent.iter()
            .all(|e| pair.alice_peer.receipt_for(e.id.as_str()) == Some(DeliveryState::Delivered))
    })
    .await;
    alice.stop().await;
    bob.stop().await;
}

/// The real binary's proxy of alice for `config` (written to `dir`), and its URL.
async fn run_binary_proxy(config: &Config, dir: &std::path::Path) -> (std::process::Child, String) {
    let role = ["proxy", "--name", "alice", "--listen", "127.0.0.1:0"];
    run_binary(config, dir, &role, "proxy/alice").await
}

#[actix_rt::test]
async fn a_sending_proxy_killed_with_sigkill_delivers_its_outbox_after_restart_exactly_once() {
    let mut pair = Pair::new(|_| {});
    drop(pair.bob_listener.take()); // bob's proxy is down while alice queues
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = run_binary_proxy(&pair.config, dir.path()).await;

    let first: Vec<Envelope> = (0..20)
        .map(|i| Envelope::text("alice", "bob", format!("before kill {i}")))
        .collect();
    for e in &first {
        submit(&url, e).await;
    }
    eventually_json(
        "all 20 are in alice's outbox and tried",
        &format!("{url}/api/v1/outbox"),
        |v| v["queued"] == 20 && v["lanes"][0]["head_attempts"].as_u64().unwrap_or(0) >= 1,
    )
    .await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let (mut child, url) = run_binary_proxy(&pair.config, dir.path()).await;
    let status = get_json(&format!("{url}/api/v1/outbox")).await;
    assert_eq!(
        status["queued"], 20,
        "the restarted proxy resumed its outbox: {status}"
    );
    let bob = pair.bob().await;
    eventually("bob's peer stored all 20", || {
        pair.bob_peer.stored_count() == 20
    })
    .await;

    // Killed again while delivering: whatever was in flight is resumed, nothing is doubled.
    let second: Vec<Envelope> = (0..30)
        .map(|i| Envelope::text("alice", "bob", format!("during kill {i}")))
        .collect();
    for e in &second {
        submit(&url, e).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let (mut child, url) = run_binary_proxy(&pair.config, dir.path()).await;

    eventually("bob's peer stored all 50", || {
        pair.bob_peer.stored_count() == 50
    })
    .await;
    let sent: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(pair.bob_peer.order(), sent, "each once, in the order sent");
    let raw = pair.bob_peer.raw_counts();
    assert_eq!(raw.len(), 50);
    assert!(
        raw.values().all(|n| *n == 1),
        "bob's proxy handed each id to its peer once: {raw:?}"
    );
    eventually("all 50 delivered receipts reached alice's peer", || {
        sent.iter()
            .all(|id| pair.alice_peer.receipt_for(id) == Some(DeliveryState::Delivered))
    })
    .await;
    eventually_json(
        "alice's outbox is empty",
        &format!("{url}/api/v1/outbox"),
        |v| v["queued"] == 0,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    bob.stop().await;
}

#[actix_rt::test]
async fn routing_continues_from_the_cached_table_while_the_controller_is_down() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    // The config names a dead address for bob's proxy; only the controller knows the real one.
    let mut table = EndpointTable::new();
    table.insert("bob".into(), peer_endpoint(pair.bob_addr, true));
    table.insert("carol".into(), peer_endpoint(dead_addr(), false));
    let controller = FakeController::start(table, &["bob"]);
    controller.configure(&mut pair.config);
    pair.config
        .set_instance_listeners("bob", Some(pair.bob_peer.addr), Some(dead_addr()));

    let alice = pair.alice().await;
    let dir_url = format!("{}/api/v1/directory", alice.url);
    let dir = eventually_json("the streamed table reached the router", &dir_url, |v| {
        v.as_array()
            .is_some_and(|a| a.len() == 2 && a[0]["online"] == true)
    })
    .await;
    assert_eq!(
        dir,
        json!([{"name": "bob", "kind": "person", "online": true},
               {"name": "carol", "kind": "person", "online": false}])
    );
    let first_id = {
        let log = controller.log.lock().unwrap();
        let r = &log.registers[0];
        assert_eq!(r.instance_name, "alice");
        assert_eq!(r.protocol, "overlay/1");
        assert!(r.proxy_id.starts_with("alice-"), "{}", r.proxy_id);
        assert_eq!(r.port, alice.addr.port());
        r.proxy_id.clone()
    };
    // A controller that forgot us gets a new registration (same proxy id) on the next heartbeat.
    controller.log.lock().unwrap().forget = true;
    eventually("alice registered again", || {
        controller.log.lock().unwrap().registers.len() >= 2
    })
    .await;
    assert_eq!(
        controller.log.lock().unwrap().registers[1].proxy_id,
        first_id
    );
    assert!(controller.log.lock().unwrap().heartbeats >= 1);

    alice.stop().await;
    controller.stop().await;
    let alice = pair.alice().await;
    let e = Envelope::text("alice", "bob", "sent while the controller is down");
    submit(&alice.url, &e).await;
    eventually("bob's peer got it through the cached route", || {
        pair.bob_peer.order() == [e.id.to_string()]
    })
    .await;
    let peers = get_json(&format!("{}/peers", alice.url)).await;
    assert_eq!(peers["peers"]["bob"]["port"], pair.bob_addr.port());
    alice.stop().await;
    bob.stop().await;
}

#[actix_rt::test]
async fn the_same_relay_twice_is_stored_once_and_answered_the_same() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    let e = Envelope::text("alice", "bob", "once");
    let (s1, a1) = post_json(&format!("{}/api/v1/relay", bob.url), &e).await;
    let (s2, a2) = post_json(&format!("{}/api/v1/relay", bob.url), &e).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a1, json!({"id": e.id.as_str(), "duplicate": false}));
    assert_eq!(a2, json!({"id": e.id.as_str(), "duplicate": true}));
    // A later message on the same lane arrives after anything queued before it.
    let marker = Envelope::text("alice", "bob", "marker");
    post_json(&format!("{}/api/v1/relay", bob.url), &marker).await;
    eventually("the marker arrived", || pair.bob_peer.stored_count() == 2).await;
    assert_eq!(pair.bob_peer.raw_counts()[e.id.as_str()], 1);
    assert_eq!(pair.bob_peer.texts(), ["once", "marker"]);
    // A relay for someone else is refused and stores nothing.
    let stray = Envelope::text("alice", "carol", "not yours");
    let (s, v) = post_json(&format!("{}/api/v1/relay", bob.url), &stray).await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"status": "error", "message": "Unknown peer: carol"})
        )
    );
    assert_eq!(outbox_queued(&bob.url).await, 0);
    bob.stop().await;
}

#[actix_rt::test]
async fn a_submitted_batch_gets_a_verdict_per_message_and_the_accepted_travel_in_order() {
    let mut pair = Pair::new(|_| {});
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    let first = Envelope::text("alice", "bob", "first");
    let stray = Envelope::text("alice", "zed", "to nobody");
    let spoof = Envelope::text("carol", "bob", "not alice's");
    let last = Envelope::text("alice", "bob", "last");
    let batch = vec![first.clone(), stray.clone(), spoof.clone(), last.clone()];
    let url = format!("{}/api/v1/outbox/batch", alice.url);
    let (s, v) = post_json(&url, &batch).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!([
            {"id": first.id.as_str(), "state": "pending"},
            {"id": stray.id.as_str(), "status": 404, "message": "Unknown peer: zed"},
            {"id": spoof.id.as_str(), "status": 403, "message": "this proxy sends only for alice; `from` was `carol`"},
            {"id": last.id.as_str(), "state": "pending"},
        ])
    );
    // Retried whole, nothing new is queued: the accepted ones were stored once.
    let (s, _) = post_json(&url, &batch).await;
    assert_eq!(s, 200);
    eventually("bob's peer stored both", || {
        pair.bob_peer.stored_count() == 2
    })
    .await;
    assert_eq!(pair.bob_peer.texts(), ["first", "last"]);
    assert!(pair.bob_peer.raw_counts().values().all(|n| *n == 1));
    // An empty batch is refused.
    let (s, v) = post_json(&url, &Vec::<Envelope>::new()).await;
    assert_eq!((s, v["status"].as_str()), (400, Some("error")));
    alice.stop().await;
    bob.stop().await;
}

#[actix_rt::test]
async fn an_original_peer_behind_our_proxy_gets_messages_in_its_own_format() {
    // compat: a peer of the original has only `POST /message` (no `/api/v1/inbox`).
    let got: Arc<Mutex<Vec<legacy::Message>>> = Arc::default();
    let data = web::Data::from(got.clone());
    let (peer_addr, _handle) = start_fake(move |cfg| {
        cfg.app_data(data.clone()).route(
            "/message",
            web::post().to(
                |got: web::Data<Mutex<Vec<legacy::Message>>>, m: web::Json<legacy::Message>| async move {
                    got.lock().unwrap().push(m.into_inner());
                    HttpResponse::Ok().json(json!({"status": "success"}))
                },
            ),
        );
    });
    let mut pair = Pair::new(|c| c.set_instance_listeners("bob", Some(peer_addr), None));
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    let e = Envelope::text("alice", "bob", "hello, original");
    submit(&alice.url, &e).await;
    eventually("bob's original peer got it", || {
        got.lock().unwrap().len() == 1
    })
    .await;
    let m = got.lock().unwrap()[0].clone();
    assert_eq!(
        (m.message.as_deref(), m.from.as_deref()),
        (Some("hello, original"), Some("alice"))
    );
    eventually("alice learns it was delivered", || {
        pair.alice_peer.receipt_for(e.id.as_str()) == Some(DeliveryState::Delivered)
    })
    .await;
    alice.stop().await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_destination_down_for_long_cannot_make_its_queue_grow_without_bound() {
    let mut pair = Pair::new(|c| {
        c.delivery.max_queued_per_destination = 2;
        // bob's peer is down: what bob's proxy accepts for it stays queued.
        c.set_instance_listeners("bob", Some(dead_addr()), None);
    });
    let bob = pair.bob().await;
    let relay = format!("{}/api/v1/relay", bob.url);
    let queued = [
        Envelope::text("alice", "bob", "one"),
        Envelope::text("alice", "bob", "two"),
    ];
    for e in &queued {
        let (s, v) = post_json(&relay, e).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = post_json(&relay, &Envelope::text("alice", "bob", "three")).await;
    assert_eq!(s, 503, "full: the sender is told to retry later: {v}");
    assert_eq!(
        v["message"],
        "2 messages are already queued for bob's chat app; try again later"
    );
    // A resend of a message already queued is the same message: answered, not refused.
    let (s, v) = post_json(&relay, &queued[0]).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(outbox_queued(&bob.url).await, 2);
    bob.stop().await;
}

#[actix_rt::test]
async fn a_relay_in_our_users_name_with_an_unstorable_sender_or_a_wild_time_is_refused() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    let relay = format!("{}/api/v1/relay", bob.url);
    // Nobody but bob's own peer speaks for bob.
    let (s, v) = post_json(&relay, &Envelope::text("BOB", "bob", "it's me, honest")).await;
    assert_eq!(s, 403, "{v}");
    // A sender name the peer could not store is refused to the sender, not dropped later.
    let (s, v) = post_json(&relay, &Envelope::text("Bob Smith", "bob", "hi")).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("from: "), "{v}");
    // A time past year 9999 (which used to panic the history) is refused.
    let mut far = Envelope::text("alice", "bob", "from the future");
    far.sent_at_ms = u64::MAX;
    let (s, v) = post_json(&relay, &far).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("future"), "{v}");
    assert_eq!(outbox_queued(&bob.url).await, 0);
    assert_eq!(pair.bob_peer.stored_count(), 0);
    // A page of another origin in the user's browser cannot post to the proxy (CSRF).
    let res = awc::Client::default()
        .post(&relay)
        .insert_header(("sec-fetch-site", "same-site"))
        .send_json(&Envelope::text("alice", "bob", "from a web page"))
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(outbox_queued(&bob.url).await, 0);
    bob.stop().await;
}

/// `POST {proxy}/` with `Host: host` and a raw body.
async fn legacy_post(proxy: &str, host: &str, body: &str) -> (u16, Value) {
    let mut res = client()
        .post(format!("{proxy}/"))
        .insert_header(("Host", host))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_string())
        .await
        .expect("POST / answers");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[actix_rt::test]
async fn the_originals_wire_format_works_in_both_directions() {
    let mut pair = Pair::new(|_| {});
    let original = FakeOriginal::start();
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    let mut table = EndpointTable::new();
    table.insert("bob".into(), peer_endpoint(pair.bob_addr, true));
    table.insert("carol".into(), peer_endpoint(original.addr, false));
    // An original proxy taken for one of ours (e.g. listed before it registered).
    table.insert("dave".into(), peer_endpoint(original.addr, true));
    let controller = FakeController::start(table, &[]);
    // Restart alice with the controller that knows carol (an original proxy).
    alice.stop().await;
    controller.configure(&mut pair.config);
    let alice = pair.alice().await;
    eventually_json("alice knows carol", &format!("{}/peers", alice.url), |v| {
        v["peers"]["carol"].is_object()
    })
    .await;

    // An original proxy posts to ours: to its own user, Host with a port, any path.
    let body = r#"{"message":"hello from the original","from":"carol","timestamp":"2026-11-24T08:41:31.123456"}"#;
    let (s, v) = legacy_post(&bob.url, "BOB:10002", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "success");
    // The very same post retried is stored once.
    assert_eq!(legacy_post(&bob.url, "bob", body).await.0, 200);
    // An original peer of alice's hands her message to ours, her proxy, for bob.
    let (s, _) = legacy_post(
        &alice.url,
        "bob",
        r#"{"message":"relayed legacy","from":"alice","timestamp":"2026-11-24T08:41:32"}"#,
    )
    .await;
    assert_eq!(s, 200);
    // fixes original: nobody else may send through alice's proxy in another's name.
    let (s, v) = legacy_post(
        &alice.url,
        "bob",
        r#"{"message":"spoofed","from":"carol","timestamp":"2026-11-24T08:41:33"}"#,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["status"], "error");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("only alice's messages"),
        "{v}"
    );
    eventually("bob's peer got both, once each", || {
        pair.bob_peer.stored_count() == 2
    })
    .await;
    assert_eq!(
        pair.bob_peer.texts(),
        ["hello from the original", "relayed legacy"]
    );
    let first = pair
        .bob_peer
        .log
        .lock()
        .unwrap()
        .stored
        .values()
        .next()
        .cloned()
        .unwrap();
    assert!(first.id.as_str().starts_with("legacy-"));
    assert!(pair.bob_peer.raw_counts().values().all(|n| *n == 1));
    let marker = Envelope::text("alice", "bob", "marker");
    submit(&alice.url, &marker).await;
    eventually("the marker arrived after them", || {
        pair.bob_peer.stored_count() == 3
    })
    .await;
    assert_eq!(
        pair.bob_peer.stored_count(),
        3,
        "the retried legacy post was stored once"
    );

    // Ours delivers to an original proxy: POST / with Host: carol; its 200 counts as delivered.
    let e = Envelope::text("alice", "carol", "to the original");
    submit(&alice.url, &e).await;
    eventually("carol's original proxy got it", || {
        original.posts.lock().unwrap().len() == 1
    })
    .await;
    let (host, msg) = original.posts.lock().unwrap()[0].clone();
    assert_eq!(host, "carol");
    assert_eq!(msg.message.as_deref(), Some("to the original"));
    assert_eq!(msg.from.as_deref(), Some("alice"));
    assert!(msg.timestamp.is_some());
    eventually("alice learns it was delivered", || {
        pair.alice_peer.receipt_for(e.id.as_str()) == Some(DeliveryState::Delivered)
    })
    .await;
    // Taken for ours, it answers our route as the original does (404 for its own host): ours
    // falls back to the original's format at once, and it is delivered, not refused.
    let e = Envelope::text("alice", "dave", "to an original taken for ours");
    submit(&alice.url, &e).await;
    eventually("dave's original proxy got it", || {
        original.posts.lock().unwrap().len() == 2
    })
    .await;
    let (host, msg) = original.posts.lock().unwrap()[1].clone();
    assert_eq!(host, "dave");
    assert_eq!(
        msg.message.as_deref(),
        Some("to an original taken for ours")
    );
    eventually("alice learns that one was delivered too", || {
        pair.alice_peer.receipt_for(e.id.as_str()) == Some(DeliveryState::Delivered)
    })
    .await;

    // Bad legacy posts: the original's error shape, naming what is wrong.
    let (s, v) = legacy_post(&bob.url, "bob", r#"{"from":"carol"}"#).await;
    assert_eq!(
        (s, v),
        (
            400,
            json!({"status": "error", "message": "Missing required fields: message"})
        )
    );
    let (s, v) = legacy_post(&bob.url, "bob", "{}").await;
    assert_eq!(v["message"], "Missing required fields: message, from");
    assert_eq!(s, 400);
    let (s, v) = legacy_post(&bob.url, "zed:1", r#"{"message":"x","from":"carol"}"#).await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"status": "error", "message": "Unknown peer: zed"})
        )
    );
    alice.stop().await;
    bob.stop().await;
    controller.stop().await;
}

#[actix_rt::test]
async fn bad_input_is_refused_with_a_clear_answer_and_nothing_is_stored() {
    let mut pair = Pair::new(|c| {
        c.delivery.max_body_bytes = 4096;
        c.delivery.max_message_bytes = 1000;
    });
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    let outbox = format!("{}/api/v1/outbox", alice.url);

    let (s, v) = post_json(&outbox, &Envelope::text("alice", "zed", "hi")).await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"status": "error", "message": "Unknown peer: zed"})
        )
    );
    let (s, v) = post_json(&outbox, &Envelope::text("mallory", "bob", "hi")).await;
    assert_eq!(s, 403);
    assert_eq!(v["status"], "error");
    assert!(
        v["message"].as_str().unwrap().contains("only for alice"),
        "{v}"
    );
    let (s, v) = post_json(&outbox, &Envelope::text("alice", "bob", "x".repeat(1001))).await;
    assert_eq!(s, 413);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("limit is 1000 bytes"),
        "{v}"
    );
    let (s, _) = post_json(&outbox, &Envelope::text("alice", "bob", "x".repeat(5000))).await;
    assert_eq!(s, 413);
    let mut res = client()
        .post(&outbox)
        .insert_header(("Content-Type", "application/json"))
        .send_body("{\"id\":")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let v: Value = res.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("JSON"), "{v}");
    let (s, v) = post_json(&outbox, &json!({"from": "alice", "to": "bob"})).await;
    assert_eq!(s, 400);
    assert!(
        v["message"].as_str().unwrap().contains("missing field"),
        "{v}"
    );
    let (s, _) = post_json(&outbox, &json!({"id": "a b", "from": "alice"})).await;
    assert_eq!(s, 400);
    let (s, _) = legacy_post(
        &bob.url,
        "bob",
        &format!(r#"{{"message":"{}","from":"carol"}}"#, "y".repeat(5000)),
    )
    .await;
    assert_eq!(s, 413);
    let (s, v) = legacy_post(&bob.url, "bob", "not json").await;
    assert_eq!(s, 400);
    assert!(
        v["message"].as_str().unwrap().starts_with("invalid JSON"),
        "{v}"
    );

    assert_eq!(outbox_queued(&alice.url).await, 0);
    // Anything queued by the bad requests would arrive before this marker (one FIFO lane).
    let marker = Envelope::text("alice", "bob", "marker");
    submit(&alice.url, &marker).await;
    eventually("the marker arrived", || pair.bob_peer.stored_count() == 1).await;
    assert_eq!(pair.bob_peer.texts(), ["marker"]);
    alice.stop().await;
    bob.stop().await;
}

#[actix_rt::test]
async fn get_peers_answers_the_legacy_shape_and_the_directory_lists_kinds() {
    let mut pair = Pair::new(|c| {
        let ai: AiEndpointConfig =
            serde_yaml::from_str("{name: GPT, provider: openai, model: gpt-4o-mini}").unwrap();
        c.ai_endpoints.push(ai);
    });
    let alice = pair.alice().await;
    let v = get_json(&format!("{}/peers", alice.url)).await;
    assert_eq!(v["instance"], "alice");
    let peers = v["peers"].as_object().unwrap();
    assert_eq!(peers.keys().collect::<Vec<_>>(), ["GPT", "bob"]);
    assert_eq!(peers["bob"]["host"], "127.0.0.1");
    assert_eq!(peers["bob"]["port"], pair.bob_addr.port());
    assert_eq!(peers["GPT"]["is_api"], true);
    assert!(v.as_object().unwrap().len() == 2);
    let d = get_json(&format!("{}/api/v1/directory", alice.url)).await;
    assert_eq!(
        d,
        json!([{"name": "GPT", "kind": "ai", "online": null},
               {"name": "bob", "kind": "person", "online": null}])
    );
    alice.stop().await;
}

#[actix_rt::test]
async fn the_sender_learns_why_a_message_failed() {
    let mut pair = Pair::new(|c| {
        c.delivery.expire_after_secs = 1;
    });
    drop(pair.bob_listener.take()); // bob's proxy never comes
                                    // dave's table entry points at a proxy that is not dave's: it refuses (404).
    let refuser = FakePeer::start();
    let mut extra = pair.config.instances[1].clone();
    extra.name = overlay::config::InstanceName::parse("dave").unwrap();
    pair.config.instances.push(extra);
    let other_proxy = {
        // Another proxy of ours (a second one for bob): it answers relays for dave with 404.
        let mut c = pair.config.clone();
        c.set_instance_listeners("bob", Some(refuser.addr), None);
        let l = free_listener();
        let addr = l.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = spawn_proxy(&c, "bob", dir.path(), l).await;
        (s, addr, dir)
    };
    pair.config
        .set_instance_listeners("dave", None, Some(other_proxy.1));
    let alice = pair.alice().await;

    // (An AI endpoint's failure is a message in the conversation: see tests/it/ai_e2e.rs.)
    let to_bob = Envelope::text("alice", "bob", "into the void");
    let to_dave = Envelope::text("alice", "dave", "wrong door");
    for e in [&to_bob, &to_dave] {
        submit(&alice.url, e).await;
    }
    eventually("two failed receipts", || {
        [&to_bob, &to_dave].iter().all(|e| {
            matches!(
                pair.alice_peer.receipt_for(e.id.as_str()),
                Some(DeliveryState::Failed { .. })
            )
        })
    })
    .await;
    let reason = |e: &Envelope| match pair.alice_peer.receipt_for(e.id.as_str()) {
        Some(DeliveryState::Failed { reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert!(
        reason(&to_bob).starts_with("bob's proxy has been unreachable for 1s"),
        "{}",
        reason(&to_bob)
    );
    assert_eq!(
        reason(&to_dave),
        "dave's proxy refused it: Unknown peer: dave (404)"
    );
    assert_eq!(
        pair.alice_peer.receipts().len(),
        2,
        "one receipt each, none delivered"
    );
    eventually_json(
        "alice's outbox is empty",
        &format!("{}/api/v1/outbox", alice.url),
        |v| v["queued"] == 0,
    )
    .await;
    alice.stop().await;
    other_proxy.0.stop().await;
}

#[actix_rt::test]
async fn a_queued_batch_with_one_refused_message_delivers_the_others_in_order() {
    let mut pair = Pair::new(|_| {});
    let bob_listener = pair.bob_listener.take().unwrap();
    drop(bob_listener); // bob's proxy is down while alice queues
    let alice = pair.alice().await;
    let texts = ["one", "two", &"x".repeat(500), "four", "five"];
    let sent: Vec<Envelope> = texts
        .iter()
        .map(|t| Envelope::text("alice", "bob", *t))
        .collect();
    for e in &sent {
        submit(&alice.url, e).await;
    }
    eventually_json(
        "all five queued and tried",
        &format!("{}/api/v1/outbox", alice.url),
        |v| v["queued"] == 5 && v["lanes"][0]["head_attempts"].as_u64().unwrap_or(0) >= 1,
    )
    .await;
    // Bob's proxy comes back with a smaller text limit: the batch of five is refused as a
    // whole, then each message gets its own verdict.
    let mut strict = pair.config.clone();
    strict.delivery.max_message_bytes = 100;
    let bob = spawn_proxy(
        &strict,
        "bob",
        pair.bob_dir.path(),
        TcpListener::bind(pair.bob_addr).unwrap(),
    )
    .await;
    eventually("alice learns the fate of all five", || {
        sent.iter()
            .all(|e| pair.alice_peer.receipt_for(e.id.as_str()).is_some())
    })
    .await;
    assert_eq!(pair.bob_peer.texts(), ["one", "two", "four", "five"]);
    match pair.alice_peer.receipt_for(sent[2].id.as_str()) {
        Some(DeliveryState::Failed { reason }) => assert_eq!(
            reason,
            "bob's proxy refused it: message text is 500 bytes; the limit is 100 bytes (413)"
        ),
        other => panic!("{other:?}"),
    }
    // The relay batch route itself: one transaction, duplicates reported per envelope.
    let a = Envelope::text("alice", "bob", "batch a");
    let b = Envelope::text("alice", "bob", "batch b");
    let (s, v) = post_json(&format!("{}/api/v1/relay/batch", bob.url), &[&a, &b, &a]).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!([{"id": a.id.as_str(), "duplicate": false},
               {"id": b.id.as_str(), "duplicate": false},
               {"id": a.id.as_str(), "duplicate": true}])
    );
    eventually("the batch reached bob's peer once each", || {
        pair.bob_peer.stored_count() == 6
    })
    .await;
    assert!(pair.bob_peer.raw_counts().values().all(|n| *n == 1));
    alice.stop().await;
    bob.stop().await;
}

#[actix_rt::test]
async fn without_the_table_stream_the_proxy_polls_and_a_new_address_is_tried_at_once() {
    let mut pair = Pair::new(|c| {
        // Backoff far longer than the test: only the table change can make it retry in time.
        c.delivery.retry_initial_ms = 120_000;
        c.delivery.retry_max_ms = 120_000;
    });
    let bob = pair.bob().await;
    let mut table = EndpointTable::new();
    table.insert("bob".into(), peer_endpoint(dead_addr(), true));
    let controller = FakeController::start_with(table, &[], false);
    controller.configure(&mut pair.config);
    let alice = pair.alice().await;
    eventually("alice registered", || {
        !controller.log.lock().unwrap().registers.is_empty()
    })
    .await;
    let e = Envelope::text("alice", "bob", "after the move");
    submit(&alice.url, &e).await;
    eventually_json(
        "the first attempt failed",
        &format!("{}/api/v1/outbox", alice.url),
        |v| v["lanes"][0]["head_attempts"].as_u64().unwrap_or(0) >= 1,
    )
    .await;
    // Bob's proxy "moves" to its real address; only polling can tell alice.
    controller
        .log
        .lock()
        .unwrap()
        .table
        .insert("bob".into(), peer_endpoint(pair.bob_addr, true));
    eventually("alice polled and delivered", || {
        pair.bob_peer.order() == [e.id.to_string()]
    })
    .await;
    assert!(controller.log.lock().unwrap().polls >= 1);
    alice.stop().await;
    bob.stop().await;
    controller.stop().await;
}

/// Any web server at all: answers every POST 200, in turn with `{}` and with an HTML page, and
/// records each request's path.
fn start_any_web_server(listener: TcpListener) -> (Arc<Mutex<Vec<String>>>, ServerHandle) {
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let data = web::Data::from(paths.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).default_service(web::to(
            |req: HttpRequest, paths: web::Data<Mutex<Vec<String>>>| async move {
                let mut paths = paths.lock().unwrap();
                paths.push(req.path().to_string());
                if paths.len() % 2 == 1 {
                    HttpResponse::Ok().json(json!({}))
                } else {
                    HttpResponse::Ok()
                        .content_type("text/html")
                        .body("<html><body>It works!</body></html>")
                }
            },
        ))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (paths, handle)
}

#[actix_rt::test]
async fn a_2xx_that_is_not_an_ack_is_a_failed_attempt_and_the_message_stays_queued() {
    // Bob's table entry points at some web server, not a proxy of ours.
    let mut pair = Pair::new(|c| {
        c.delivery.retry_initial_ms = 20;
        c.delivery.retry_max_ms = 100;
    });
    let (relays, web) = start_any_web_server(pair.bob_listener.take().unwrap());
    let alice = pair.alice().await;
    let e = Envelope::text("alice", "bob", "eaten?");
    submit(&alice.url, &e).await;
    let status = eventually_json(
        "alice's proxy has tried the web server with both answers",
        &format!("{}/api/v1/outbox", alice.url),
        |v| v["lanes"][0]["head_attempts"].as_u64().unwrap_or(0) >= 3,
    )
    .await;
    assert_eq!(status["queued"], 1, "still queued: {status}");
    let error = status["lanes"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.starts_with("bob's proxy: ") && error.contains("not an acknowledgement"),
        "{status}"
    );
    assert!(relays.lock().unwrap().iter().all(|p| p == "/api/v1/relay"));
    assert!(
        pair.alice_peer.receipt_for(e.id.as_str()).is_none(),
        "not delivered: {:?}",
        pair.alice_peer.receipts()
    );
    alice.stop().await;

    // The own peer's inbox is checked the same way: a note to self to a web server.
    let mut pair = Pair::new(|c| {
        c.delivery.retry_initial_ms = 20;
        c.delivery.retry_max_ms = 100;
    });
    let page = free_listener();
    pair.config
        .set_instance_listeners("alice", Some(page.local_addr().unwrap()), None);
    let (posts, web2) = start_any_web_server(page);
    let alice = pair.alice().await;
    let note = Envelope::text("alice", "ALICE", "note to self");
    submit(&alice.url, &note).await;
    let status = eventually_json(
        "alice's proxy has tried the inbox with both answers",
        &format!("{}/api/v1/outbox", alice.url),
        |v| {
            v["lanes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["head_attempts"].as_u64().unwrap_or(0) >= 3)
        },
    )
    .await;
    assert_eq!(status["queued"], 1, "still queued: {status}");
    assert!(
        status.to_string().contains("not an acknowledgement"),
        "{status}"
    );
    assert!(
        !posts.lock().unwrap().iter().any(|p| p.contains("receipts")),
        "no receipt says delivered: {:?}",
        posts.lock().unwrap()
    );
    alice.stop().await;
    web.stop(false).await;
    web2.stop(false).await;
}

/// A client that sends `head` (request line and headers, announcing a body) and then `start` of
/// the body, and either nothing more or (`trickle`) those bytes every 100 ms while the
/// connection lasts. Runs on its own threads (blocking sockets); the handle answers everything the server
/// sent until it closed the connection.
fn slow_client(
    addr: SocketAddr,
    head: String,
    start: &'static str,
    trickle: Option<&'static [u8]>,
) -> std::thread::JoinHandle<String> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connects");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(start.as_bytes()).unwrap();
        let writer = trickle.map(|bytes| {
            let mut w = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let started = Instant::now();
                while started.elapsed() < PATIENCE
                    && w.write_all(bytes).and_then(|_| w.flush()).is_ok()
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        let mut answer = Vec::new();
        // Until the server closes it (EOF or reset); a read timeout leaves the answer empty.
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {
                    let got = String::from_utf8_lossy(&answer).into_owned();
                    return format!("never closed, after: {got}");
                }
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
        if let Some(w) = writer {
            let _ = w.join();
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
}

fn post_head(path: &str, host: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

/// Waits (without blocking the test's event loop) for a slow client's answer.
async fn answer_of(client: std::thread::JoinHandle<String>) -> String {
    eventually("the slow client's connection ended", || {
        client.is_finished()
    })
    .await;
    client.join().expect("the slow client ran")
}

#[actix_rt::test]
async fn slow_bodies_on_one_port_are_cut_off_at_their_deadline_and_stop_nothing_else() {
    let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
    config.server.body_timeout_secs = 1;
    config.server.max_connections = 30;
    let o = crate::helpers::spawn_overlay(config).await;
    let proxy = o.server("proxy/alice").addr;

    // 50 clients on alice's proxy announce a body and never finish it: half send nothing more,
    // half trickle a byte now and then (which used to keep the connection alive forever).
    let slow: Vec<_> = (0..50)
        .map(|i| {
            let head = if i % 2 == 0 {
                post_head("/api/v1/relay", "127.0.0.1", 1000)
            } else {
                post_head("/", "alice", 1000) // the original's route
            };
            slow_client(
                proxy,
                head,
                "{\"message\":",
                (i % 4 < 2).then_some(&b" "[..]),
            )
        })
        .collect();
    // A body announced chunked, on a route that ignores bodies, trickled forever.
    let chunked = slow_client(
        o.server("peer/alice").addr,
        "POST /clear_all_chats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_string(),
        "",
        Some(b"1\r\n \r\n"),
    );

    // The other ports answer meanwhile, and so does the flooded one (once slots free up).
    for label in [
        "controller",
        "peer/alice",
        "proxy/bob",
        "peer/bob",
        "proxy/alice",
    ] {
        let health = get_json(&format!("{}/healthz", o.url(label))).await;
        assert!(health["role"].is_string(), "{label}: {health}");
    }
    // A normal post to the flooded port is served as ever.
    let e = Envelope::text("alice", "bob", "while flooded");
    submit(&o.url("proxy/alice"), &e).await;

    // Every slow connection was answered 408 (the body's deadline) and closed.
    for client in slow {
        let answer = answer_of(client).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive within 1s"), "{answer}");
    }
    let answer = answer_of(chunked).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");

    let mut o = o;
    for label in [
        "proxy/alice",
        "proxy/bob",
        "peer/alice",
        "peer/bob",
        "controller",
    ] {
        o.stop(label).await;
    }
}

#[actix_rt::test]
async fn a_body_declared_over_the_limit_is_refused_before_it_comes_on_every_role() {
    let mut config = config_for(&[("alice", &[])]);
    // Long enough that a refusal cannot be the deadline's.
    config.server.body_timeout_secs = 600;
    let mut o = crate::helpers::spawn_overlay(config).await;
    let too_big = 10 * 1024 * 1024;
    for (label, path, host) in [
        ("proxy/alice", "/", "alice"),
        ("proxy/alice", "/api/v1/relay", "x"),
        ("proxy/alice", "/api/v1/outbox", "x"),
        ("peer/alice", "/message", "x"),
        ("peer/alice", "/send_message", "x"),
        ("peer/alice", "/api/v1/inbox", "x"),
        ("controller", "/api/register", "x"),
        ("controller", "/api/update_proxy_endpoints/p", "x"),
    ] {
        let client = slow_client(
            o.server(label).addr,
            post_head(path, host, too_big),
            "",
            None,
        );
        let answer = answer_of(client).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{label} {path}: {answer}"
        );
    }
    for label in ["proxy/alice", "peer/alice", "controller"] {
        o.stop(label).await;
    }
}

#[actix_rt::test]
async fn the_own_peer_cannot_submit_a_message_with_a_wild_time() {
    let mut pair = Pair::new(|_| {});
    let alice = pair.alice().await;
    let outbox = format!("{}/api/v1/outbox", alice.url);
    for (sent_at_ms, says) in [
        (u64::MAX, "future"),
        (overlay::wire::now_ms() + 2 * 24 * 3600 * 1000, "future"),
        (0, "before"),
        (86_400_000, "before"),
    ] {
        let mut e = Envelope::text("alice", "bob", "when?");
        e.sent_at_ms = sent_at_ms;
        let (s, v) = post_json(&outbox, &e).await;
        assert_eq!(s, 400, "{sent_at_ms}: {v}");
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains("sent_at_ms") && message.contains(says),
            "{v}"
        );
        let (s, v) = post_json(&format!("{outbox}/batch"), &[e]).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v[0]["status"], 400, "{v}");
    }
    // An original peer handing its user's message over: the same rules.
    for ts in ["1970-01-01T00:00:00", "2999-01-01T00:00:00"] {
        let body = format!(r#"{{"message":"when?","from":"alice","timestamp":"{ts}"}}"#);
        let (s, v) = legacy_post(&alice.url, "bob", &body).await;
        assert_eq!(s, 400, "{ts}: {v}");
        assert!(v["message"].as_str().unwrap().contains("sent_at_ms"), "{v}");
    }
    assert_eq!(outbox_queued(&alice.url).await, 0);
    alice.stop().await;
}

#[actix_rt::test]
async fn only_the_receivers_own_proxy_marks_an_ai_error() {
    let mut pair = Pair::new(|_| {});
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    // The own peer may not claim an error report: refused, naming the field.
    let mut own = Envelope::text("alice", "bob", "⚠ BOT could not answer");
    own.error = true;
    let (s, v) = post_json(&format!("{}/api/v1/outbox", alice.url), &own).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("`error`"), "{v}");
    let (s, v) = post_json(&format!("{}/api/v1/outbox/batch", alice.url), &[own]).await;
    assert_eq!((s, v[0]["status"].as_u64()), (200, Some(400)), "{v}");
    // Another proxy relays a message marked as an error and an auto-reply: it arrives as the
    // person's own (auto-)reply, never as an error of bob's AI.
    let mut relayed = Envelope::text("alice", "bob", "⚠ alice could not answer");
    relayed.error = true;
    relayed.auto_reply = true;
    let (s, v) = post_json(&format!("{}/api/v1/relay", bob.url), &relayed).await;
    assert_eq!(s, 200, "{v}");
    let mut batched = Envelope::text("alice", "bob", "⚠ in a batch");
    batched.error = true;
    let (s, v) = post_json(&format!("{}/api/v1/relay/batch", bob.url), &[batched]).await;
    assert_eq!(s, 200, "{v}");
    eventually("both arrived", || pair.bob_peer.stored_count() == 2).await;
    let stored = pair.bob_peer.log.lock().unwrap().stored.clone();
    assert!(stored.values().all(|e| !e.error), "{stored:?}");
    assert!(stored[&relayed.id.to_string()].auto_reply);
    alice.stop().await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_person_entry_naming_this_proxy_its_peer_or_the_controller_is_never_posted_to() {
    let mut pair = Pair::new(|_| {});
    let own = pair.alice_listener.as_ref().unwrap().local_addr().unwrap();
    let (own_peer, controller) = (pair.alice_peer.addr, pair.config.controller.listen);
    for (name, proxy) in [("carol", own), ("dave", own_peer), ("erin", controller)] {
        let mut extra = pair.config.instances[1].clone();
        extra.name = overlay::config::InstanceName::parse(name).unwrap();
        pair.config.instances.push(extra);
        pair.config.set_instance_listeners(name, None, Some(proxy));
    }
    let alice = pair.alice().await;
    let sent: Vec<Envelope> = ["carol", "dave", "erin"]
        .iter()
        .map(|to| Envelope::text("alice", to, "hello?"))
        .collect();
    for e in &sent {
        submit(&alice.url, e).await;
    }
    eventually("three failed receipts", || {
        sent.iter().all(|e| {
            matches!(
                pair.alice_peer.receipt_for(e.id.as_str()),
                Some(DeliveryState::Failed { .. })
            )
        })
    })
    .await;
    for (e, whose) in sent
        .iter()
        .zip(["this proxy's own", "your chat app's", "the controller's"])
    {
        let Some(DeliveryState::Failed { reason }) = pair.alice_peer.receipt_for(e.id.as_str())
        else {
            unreachable!()
        };
        assert!(
            reason.starts_with(&format!("{}'s address in the controller's table", e.to))
                && reason.contains(whose),
            "{reason}"
        );
    }
    assert_eq!(
        pair.alice_peer.stored_count(),
        0,
        "nothing posted to the own peer"
    );
    assert_eq!(outbox_queued(&alice.url).await, 0);
    alice.stop().await;
}

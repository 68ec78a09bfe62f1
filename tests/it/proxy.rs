//! Integration tests: proxy. Real proxies on port 0, with small fakes around them: a fake peer
//! (records every `/api/v1/inbox` and `/api/v1/receipts` call, stores inbox envelopes by id),
//! a fake controller (register, heartbeat, table stream, getendpoints; its signed directory
//! pins the keys a test enrolls), and a fake ORIGINAL proxy (accepts `POST /` with a `Host:`
//! header). Every hop between two proxies is signed (issue 15): a test that posts a relay
//! itself signs it as the origin's proxy would ([`signed_relay`]). One case runs the real
//! binary to kill it with SIGKILL.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use overlay::config::{AiEndpointConfig, Config};
use overlay::trust::request::{RequestLine, SIGNATURE_HEADER};
use overlay::trust::seal::SealPublic;
use overlay::trust::{Identity, PublicKey, Signature};
use overlay::wire::control_plane::{Endpoint, EndpointTable, PeerEndpoint};
use overlay::wire::data_plane::{
    acked_bytes, Accepted, Ack, DeliveryState, Envelope, Receipt, ACK_DOMAIN, ACK_HEADER,
};
use overlay::wire::legacy;
use overlay::wire::sealed::SealedEnvelope;

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
pub(crate) struct FakePeer {
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

    pub(crate) fn stored_count(&self) -> usize {
        self.log.lock().unwrap().stored.len()
    }
    pub(crate) fn order(&self) -> Vec<String> {
        self.log.lock().unwrap().order.clone()
    }
    pub(crate) fn texts(&self) -> Vec<String> {
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
    /// Names whose proxy is online; empty: the stream sends no liveness at all (the peer's
    /// directory keeps `online: null`).
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
    /// Enrolled users' proxy keys (lower-case name → key): listed Active with their key, the
    /// table's other persons pending (no key: nobody signs for them, nor to them).
    keys: BTreeMap<String, PublicKey>,
    /// Their sealing keys (lower-case name → key), as enrolled or last registered.
    seals: BTreeMap<String, SealPublic>,
}

/// A controller of ours, faked: it signs its snapshots under a root the test owns (the proxy
/// pins it), and hands out `log.table` as the proxy's table.
struct FakeController {
    addr: SocketAddr,
    log: Arc<Mutex<ControllerLog>>,
    handle: ServerHandle,
    root: overlay::trust::Fingerprint,
}

/// The fake's signed snapshot for `for_user`, at a new version: the table without the user's
/// own entry (as the real controller makes it), and every person of the table and every
/// enrolled user in the directory.
fn fake_snapshot(signer: &Signer, log: &mut ControllerLog, for_user: &str) -> Value {
    log.version += 1;
    let now = overlay::wire::now_ms();
    let entry =
        |name: &str, key: Option<PublicKey>, host: String, port: u16, native: bool| UserEntry {
            role: Default::default(),
            via: None,
            tls: None,
            seal: None,
            name: name.to_string(),
            proxy_id: None,
            key,
            host,
            port,
            native,
            state: if key.is_some() {
                UserState::Active
            } else {
                UserState::Pending
            },
        };
    let mut users: BTreeMap<String, UserEntry> = log
        .table
        .iter()
        .filter_map(|(name, e)| match e {
            Endpoint::Peer(p) => {
                let key = log.keys.get(&name.to_lowercase()).copied();
                let user = entry(name, key, p.host.clone(), p.port, p.native);
                Some((name.to_lowercase(), user))
            }
            _ => None,
        })
        .collect();
    for (name, key) in &log.keys {
        // Enrolled, but not in the table (e.g. a user named like an AI endpoint): port 0,
        // "not known yet".
        users
            .entry(name.clone())
            .or_insert_with(|| entry(name, Some(*key), "127.0.0.1".into(), 0, true));
    }
    for (name, user) in users.iter_mut() {
        user.seal = log.seals.get(name).copied();
    }
    let mut table = log.table.clone();
    table.retain(|name, _| !name.eq_ignore_ascii_case(for_user));
    let snap = Snapshot {
        for_user: for_user.into(),
        version: log.version,
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        directory: Directory {
            cas: Vec::new(),
            users,
            ai: Vec::new(),
        },
        table,
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
                            let for_user = claim.instance_name.clone();
                            if let Some(seal) = claim.seal {
                                log.seals.insert(for_user.to_lowercase(), seal);
                            }
                            log.registers.push(claim);
                            log.forget = false;
                            HttpResponse::Ok().json(fake_snapshot(&signer, &mut log, &for_user))
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
                        |req: HttpRequest,
                         log: web::Data<Mutex<ControllerLog>>,
                         signer: web::Data<Signer>| async move {
                            let event = {
                                let mut log = log.lock().unwrap();
                                if !log.stream {
                                    return HttpResponse::ServiceUnavailable().finish();
                                }
                                // The stream is the registered proxy's (`?proxy_id=`).
                                let proxy_id = req
                                    .query_string()
                                    .split('&')
                                    .find_map(|kv| kv.strip_prefix("proxy_id="))
                                    .unwrap_or_default()
                                    .to_string();
                                let for_user = log
                                    .registers
                                    .iter()
                                    .rev()
                                    .find(|r| r.proxy_id == proxy_id)
                                    .map(|r| r.instance_name.clone())
                                    .unwrap_or_else(|| "alice".into());
                                let snap = fake_snapshot(&signer, &mut log, &for_user);
                                let mut event = format!(": hello\n\nevent: snapshot\ndata: {snap}\n\n");
                                // Liveness only when the test names someone online.
                                if !log.online.is_empty() {
                                    event.push_str(&format!(
                                        "event: online\ndata: {}\n\n",
                                        json!({"names": log.online})
                                    ));
                                }
                                event
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

    /// Lists `name` in the directory as Active, with `key` pinned (and a sealing key of its
    /// own, until its proxy registers one).
    fn enroll(&self, name: &str, key: PublicKey) {
        let mut log = self.log.lock().unwrap();
        log.keys.insert(name.to_lowercase(), key);
        let scratch = tempfile::tempdir().unwrap();
        log.seals
            .entry(name.to_lowercase())
            .or_insert_with(|| crate::helpers::seal_key(scratch.path(), name));
    }

    /// Lists `seal` as `name`'s sealing key.
    fn enroll_seal(&self, name: &str, seal: SealPublic) {
        self.log
            .lock()
            .unwrap()
            .seals
            .insert(name.to_lowercase(), seal);
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
pub(crate) async fn submit(proxy: &str, e: &Envelope) {
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

pub(crate) async fn outbox_queued(proxy: &str) -> u64 {
    get_json(&format!("{proxy}/api/v1/outbox")).await["queued"]
        .as_u64()
        .unwrap()
}

/// The path and query of `url` (after its scheme and authority), and what comes before it.
fn split_url(url: &str) -> (&str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let at = url[start..].find('/').map_or(url.len(), |i| start + i);
    (&url[..at], &url[at..])
}

/// A relay request as an origin's proxy makes it: its target (path and query), its exact body
/// bytes, and its `overlay-signature` header.
#[derive(Clone)]
struct SignedRequest {
    target: String,
    body: Vec<u8>,
    header: String,
}

/// `body` as JSON for `target`, signed with `by` as `origin`'s proxy, for `destination`.
fn sign_request(
    by: &Identity,
    origin: &str,
    destination: &str,
    target: &str,
    body: &impl serde::Serialize,
) -> SignedRequest {
    let body = serde_json::to_vec(body).unwrap();
    let line = RequestLine {
        method: "POST",
        target,
        body: &body,
    };
    let header = overlay::trust::request::sign(by, &line, origin, destination, now_ms());
    SignedRequest {
        target: target.to_string(),
        body,
        header,
    }
}

fn now_ms() -> u64 {
    overlay::wire::now_ms()
}

/// What a relay answered: status, JSON body, and its `overlay-ack` header.
pub(crate) type RelayAnswer = (u16, Value, Option<String>);

/// Sends `r` (its bytes and header exactly) to `proxy` (a base URL), with `extra` headers.
async fn send_signed(proxy: &str, r: &SignedRequest, extra: &[(&str, &str)]) -> RelayAnswer {
    let mut req = client()
        .post(format!("{proxy}{}", r.target))
        .insert_header((SIGNATURE_HEADER, r.header.as_str()))
        .insert_header(("content-type", "application/json"));
    for (name, value) in extra {
        req = req.insert_header((*name, *value));
    }
    let mut res = req
        .send_body(r.body.clone())
        .await
        .expect("the relay answers");
    let ack = res
        .headers()
        .get(ACK_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = res.status().as_u16();
    let v = res.json().limit(1 << 20).await.unwrap_or(Value::Null);
    (status, v, ack)
}

/// `POST url` (a proxy's relay route) with `body`, in a request signed with `by` as `origin`'s
/// proxy for `destination`, over the exact bytes sent.
pub(crate) async fn signed_relay(
    url: &str,
    by: &Identity,
    origin: &str,
    destination: &str,
    body: &impl serde::Serialize,
) -> RelayAnswer {
    let (proxy, target) = split_url(url);
    send_signed(
        proxy,
        &sign_request(by, origin, destination, target, body),
        &[],
    )
    .await
}

/// Whether `ack` (an `overlay-ack` header) is `key`'s signature acknowledging exactly `sent`.
fn ack_holds<T: overlay::wire::data_plane::Addressed>(
    ack: Option<&str>,
    key: &PublicKey,
    sent: &[T],
) -> bool {
    let Some(Ok(sig)) = ack.map(Signature::parse) else {
        return false;
    };
    key.verify(ACK_DOMAIN, &acked_bytes(sent.iter()), &sig)
        .is_ok()
}

/// Two users, each with a fake peer; proxies not started. Both proxies' keys are made in their
/// data dirs beforehand, and both follow a fake controller whose signed directory lists alice
/// and bob Active with those keys, and whose table is the config's (see [`Pair::alice`]).
pub(crate) struct Pair {
    pub(crate) config: Config,
    pub(crate) alice_peer: FakePeer,
    pub(crate) bob_peer: FakePeer,
    alice_listener: Option<TcpListener>,
    bob_listener: Option<TcpListener>,
    bob_addr: SocketAddr,
    alice_dir: tempfile::TempDir,
    bob_dir: tempfile::TempDir,
    /// alice's proxy key (`alice_dir/proxy-alice.key`): a test signs relays as alice with it.
    pub(crate) alice_key: Arc<Identity>,
    /// bob's proxy key (`bob_dir/proxy-bob.key`): its acknowledgements verify under it.
    pub(crate) bob_key: Arc<Identity>,
    /// bob's proxy's sealing key (`bob_dir/proxy-bob.seal`): a test seals for bob with it.
    pub(crate) bob_seal: SealPublic,
    /// The controller the config names, unless a test points it to its own.
    controller: FakeController,
}

impl Pair {
    pub(crate) fn new(tune: impl FnOnce(&mut Config)) -> Pair {
        Self::with_bob_peer(FakePeer::start(), tune)
    }

    fn with_bob_peer(bob_peer: FakePeer, tune: impl FnOnce(&mut Config)) -> Pair {
        let mut config = crate::helpers::without_tls(config_for(&[("alice", &[]), ("bob", &[])]));
        let alice_peer = FakePeer::start();
        let (al, bl) = (free_listener(), free_listener());
        let bob_addr = bl.local_addr().unwrap();
        config.set_instance_listeners(
            "alice",
            Some(alice_peer.addr),
            Some(al.local_addr().unwrap()),
        );
        config.set_instance_listeners("bob", Some(bob_peer.addr), Some(bob_addr));
        let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = |dir: &tempfile::TempDir, name: &str| {
            Arc::new(Identity::create(&dir.path().join(format!("proxy-{name}.key"))).unwrap())
        };
        let (alice_key, bob_key) = (key(&alice_dir, "alice"), key(&bob_dir, "bob"));
        let bob_seal = crate::helpers::seal_key(bob_dir.path(), "bob");
        let controller = FakeController::start(EndpointTable::new(), &[]);
        controller.enroll("alice", alice_key.public());
        controller.enroll("bob", bob_key.public());
        controller.enroll_seal("alice", crate::helpers::seal_key(alice_dir.path(), "alice"));
        controller.enroll_seal("bob", bob_seal);
        controller.configure(&mut config);
        tune(&mut config);
        let pair = Pair {
            config,
            alice_peer,
            bob_peer,
            alice_listener: Some(al),
            bob_listener: Some(bl),
            bob_addr,
            alice_dir,
            bob_dir,
            alice_key,
            bob_key,
            bob_seal,
            controller,
        };
        pair.follow_config();
        pair
    }

    /// The pair's controller hands out the table the config makes (persons and AI endpoints).
    fn follow_config(&self) {
        self.controller.log.lock().unwrap().table =
            overlay::proxy::routing::default_table(&self.config, "");
    }

    /// A new key for `name`, enrolled (Active) in the pair's controller.
    fn enroll(&self, name: &str) -> Identity {
        let key = Identity::generate();
        self.controller.enroll(name, key.public());
        key
    }

    /// Enrolls in `other` everyone the pair's controller knows (alice, bob, and any other).
    fn enroll_in(&self, other: &FakeController) {
        let (keys, seals) = {
            let log = self.controller.log.lock().unwrap();
            (log.keys.clone(), log.seals.clone())
        };
        let mut other = other.log.lock().unwrap();
        other.keys.extend(keys);
        other.seals.extend(seals);
    }

    /// Alice's proxy (following the config's table when the config names the pair's controller).
    pub(crate) async fn alice(&mut self) -> Spawned {
        self.follow_config();
        let l = self.alice_listener.take().unwrap_or_else(free_listener);
        spawn_proxy(&self.config, "alice", self.alice_dir.path(), l).await
    }

    /// Bob's proxy, always at the address the tables name, once it takes relays from alice.
    pub(crate) async fn bob(&mut self) -> Spawned {
        self.follow_config();
        let l = match self.bob_listener.take() {
            Some(l) => l,
            None => TcpListener::bind(self.bob_addr).expect("bob's address is free again"),
        };
        let bob = spawn_proxy(&self.config, "bob", self.bob_dir.path(), l).await;
        self.until_taking_relays(&bob.url).await;
        bob
    }

    /// `e`, sealed for bob's proxy and signed by `by` (as its origin proxy does).
    pub(crate) fn sealed(&self, e: &Envelope, by: &Identity) -> SealedEnvelope {
        crate::helpers::sealed(std::slice::from_ref(e), &self.bob_seal, by).remove(0)
    }

    /// Waits until bob's proxy checked its directory with the controller (until then, relays
    /// are answered 503): a request signed by alice with an unsigned envelope is then refused
    /// for that envelope (401), which needs alice's key pinned. Nothing is stored.
    async fn until_taking_relays(&self, bob: &str) {
        let mut probe = self.sealed(
            &Envelope::text("alice", "bob", "a probe, not signed"),
            &self.alice_key,
        );
        probe.signature = None;
        let start = Instant::now();
        loop {
            let url = format!("{bob}/api/v1/relay");
            let (s, v, _) = signed_relay(&url, &self.alice_key, "alice", "bob", &probe).await;
            if s != 503 {
                assert_eq!(s, 401, "{v}");
                assert!(v["message"].as_str().unwrap().contains("not signed"), "{v}");
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting until bob's proxy takes relays: {v}"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `e`, signed by alice's proxy, relayed to bob's proxy at `bob` in a request alice signed.
    async fn relay_from_alice(&self, bob: &str, e: &Envelope) -> RelayAnswer {
        let url = format!("{bob}/api/v1/relay");
        let e = self.sealed(e, &self.alice_key);
        signed_relay(&url, &self.alice_key, "alice", "bob", &e).await
    }

    /// The batch route's counterpart of [`Pair::relay_from_alice`].
    async fn relay_batch_from_alice(&self, bob: &str, es: &[&Envelope]) -> RelayAnswer {
        let url = format!("{bob}/api/v1/relay/batch");
        let es: Vec<Envelope> = es.iter().map(|e| (*e).clone()).collect();
        let es = crate::helpers::sealed(&es, &self.bob_seal, &self.alice_key);
        signed_relay(&url, &self.alice_key, "alice", "bob", &es).await
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
    // The binary's data dir holds alice's key, the one the controller pins.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(
        pair.alice_dir.path().join("proxy-alice.key"),
        dir.path().join("data/proxy-alice.key"),
    )
    .unwrap();
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
    pair.enroll_in(&controller);
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
    // Two separately signed requests (each with its own nonce) carrying the same message.
    let (s1, a1, k1) = pair.relay_from_alice(&bob.url, &e).await;
    let (s2, a2, k2) = pair.relay_from_alice(&bob.url, &e).await;
    assert_eq!((s1, s2), (200, 200), "{a1} {a2}");
    assert_eq!(a1, json!({"id": e.id.as_str(), "duplicate": false}));
    assert_eq!(a2, json!({"id": e.id.as_str(), "duplicate": true}));
    // Both answers carry bob's signature over the message they acknowledge.
    let bob_key = pair.bob_key.public();
    let sent = [e.clone()];
    assert!(ack_holds(k1.as_deref(), &bob_key, &sent), "{k1:?}");
    assert!(ack_holds(k2.as_deref(), &bob_key, &sent), "{k2:?}");
    assert!(
        !ack_holds(k1.as_deref(), &pair.alice_key.public(), &sent),
        "signed by bob's key, not just any"
    );
    // A later message on the same lane arrives after anything queued before it.
    let marker = Envelope::text("alice", "bob", "marker");
    let (s, v, _) = pair.relay_from_alice(&bob.url, &marker).await;
    assert_eq!(s, 200, "{v}");
    eventually("the marker arrived", || pair.bob_peer.stored_count() == 2).await;
    assert_eq!(pair.bob_peer.raw_counts()[e.id.as_str()], 1);
    assert_eq!(pair.bob_peer.texts(), ["once", "marker"]);
    // A relay for someone else is refused and stores nothing.
    let stray = Envelope::text("alice", "carol", "not yours");
    let (s, v, ack) = pair.relay_from_alice(&bob.url, &stray).await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"status": "error", "message": "Unknown peer: carol"})
        )
    );
    assert_eq!(ack, None, "nothing acknowledged");
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
    let queued = [
        Envelope::text("alice", "bob", "one"),
        Envelope::text("alice", "bob", "two"),
    ];
    for e in &queued {
        let (s, v, _) = pair.relay_from_alice(&bob.url, e).await;
        assert_eq!(s, 200, "{v}");
    }
    let three = Envelope::text("alice", "bob", "three");
    let (s, v, ack) = pair.relay_from_alice(&bob.url, &three).await;
    assert_eq!(s, 503, "full: the sender is told to retry later: {v}");
    assert_eq!(
        v["message"],
        "2 messages are already queued for bob's chat app; try again later"
    );
    assert_eq!(ack, None);
    // A resend of a message already queued is the same message: answered, not refused.
    let (s, v, _) = pair.relay_from_alice(&bob.url, &queued[0]).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(outbox_queued(&bob.url).await, 2);
    // Its health says so, naming the queue, until it drains.
    let health = bob.url.clone();
    crate::helpers::eventually("bob's proxy reports its full queue", || {
        let health = health.clone();
        async move {
            let mut r = crate::helpers::client()
                .get(format!("{health}/healthz"))
                .send()
                .await
                .ok()?;
            let body: serde_json::Value = r.json().await.ok()?;
            let problems = body["problems"].as_array()?.clone();
            (r.status() == 503
                && problems.iter().any(|p| {
                    p.as_str()
                        .unwrap_or("")
                        .contains("1 destination queue is at the limit")
                }))
            .then_some(())
        }
    })
    .await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_relay_in_our_users_name_with_an_unstorable_sender_or_a_wild_time_is_refused() {
    // Each refusal below comes from a request whose signatures hold: the relay's own checks
    // refuse it, not the signed hop's.
    let mut pair = Pair::new(|_| {});
    // Someone whose name no peer could store, enrolled all the same (the controller is not
    // the only line of defence).
    let odd = pair.enroll("Bob+Smith");
    let bob = pair.bob().await;
    let relay = format!("{}/api/v1/relay", bob.url);
    // Nobody but bob's own peer speaks for bob: not even a request signed with bob's key.
    let me = pair.sealed(
        &Envelope::text("BOB", "bob", "it's me, honest"),
        &pair.bob_key,
    );
    let (s, v, _) = signed_relay(&relay, &pair.bob_key, "BOB", "bob", &me).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("own peer"), "{v}");
    // A sender name the peer could not store is refused to the sender, not dropped later.
    let hi = pair.sealed(&Envelope::text("Bob+Smith", "bob", "hi"), &odd);
    let (s, v, _) = signed_relay(&relay, &odd, "Bob+Smith", "bob", &hi).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("from: "), "{v}");
    // A time past year 9999 (which used to panic the history) is refused.
    let mut far = Envelope::text("alice", "bob", "from the future");
    far.sent_at_ms = u64::MAX;
    let (s, v, _) = pair.relay_from_alice(&bob.url, &far).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("future"), "{v}");
    assert_eq!(outbox_queued(&bob.url).await, 0);
    assert_eq!(pair.bob_peer.stored_count(), 0);
    // A page of another origin in the user's browser cannot post to the proxy (CSRF), even
    // a request it got signed somehow.
    let page = pair.sealed(
        &Envelope::text("alice", "bob", "from a web page"),
        &pair.alice_key,
    );
    let r = sign_request(&pair.alice_key, "alice", "bob", "/api/v1/relay", &page);
    let (s, v, _) = send_signed(&bob.url, &r, &[("sec-fetch-site", "same-site")]).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(outbox_queued(&bob.url).await, 0);
    // Anything taken in above would reach bob's peer before this marker (one FIFO lane).
    let marker = Envelope::text("alice", "bob", "marker");
    let (s, v, _) = pair.relay_from_alice(&bob.url, &marker).await;
    assert_eq!(s, 200, "{v}");
    eventually("the marker arrived", || pair.bob_peer.stored_count() == 1).await;
    assert_eq!(pair.bob_peer.texts(), ["marker"]);
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
    // carol runs a proxy of the original on this machine, listed as such.
    let mut pair = Pair::new(|c| {
        c.legacy_proxies = vec![overlay::config::LegacyProxyConfig {
            name: overlay::config::InstanceName::parse("carol").unwrap(),
            address: "127.0.0.1".parse().unwrap(),
        }]
    });
    let original = FakeOriginal::start();
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    let mut table = EndpointTable::new();
    table.insert("bob".into(), peer_endpoint(pair.bob_addr, true));
    table.insert("carol".into(), peer_endpoint(original.addr, false));
    // An original proxy taken for one of ours (e.g. listed before it registered).
    table.insert("dave".into(), peer_endpoint(original.addr, true));
    let controller = FakeController::start(table, &[]);
    pair.enroll_in(&controller);
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
    // Written now: a message older than what proxies remember of the ids they took is refused.
    let now = overlay::wire::rfc3339_ms(overlay::wire::now_ms());
    let relayed = format!(
        r#"{{"message":"relayed legacy","from":"alice","timestamp":"{}"}}"#,
        now.trim_end_matches('Z')
    );
    let (s, v) = legacy_post(&alice.url, "bob", &relayed).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = legacy_post(
        &alice.url,
        "bob",
        r#"{"message":"from last year","from":"alice","timestamp":"2025-11-24T08:41:32"}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("check this device's clock"),
        "{v}"
    );
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
        .find(|e| e.body.text() == "hello from the original")
        .cloned()
        .unwrap();
    assert!(first.id.as_str().starts_with("legacy-"));
    // Nobody vouches for carol's message but the address it came from: bob's peer is told so;
    // alice's, relayed signed by her proxy, is not marked.
    assert!(first.unauthenticated, "{first:?}");
    let log = pair.bob_peer.log.lock().unwrap().stored.clone();
    let relayed = log
        .values()
        .find(|e| e.body.text() == "relayed legacy")
        .unwrap();
    assert!(!relayed.unauthenticated);
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
    // Listed as one of ours (native) but with no pinned key (not joined): nothing is sent, and
    // never in the original's unsigned format (no downgrade); it waits, saying why.
    let e = Envelope::text("alice", "dave", "to an original taken for ours");
    submit(&alice.url, &e).await;
    let status = eventually_json(
        "alice's proxy has tried dave",
        &format!("{}/api/v1/outbox", alice.url),
        |v| {
            v["lanes"].as_array().is_some_and(|lanes| {
                lanes
                    .iter()
                    .any(|l| l["lane"] == "dave" && l["head_attempts"].as_u64().unwrap_or(0) >= 2)
            })
        },
    )
    .await;
    let dave = status["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lane"] == "dave")
        .unwrap();
    assert!(
        dave["last_error"]
            .as_str()
            .unwrap()
            .contains("no pinned key in the signed directory"),
        "{dave}"
    );
    assert_eq!(
        original.posts.lock().unwrap().len(),
        1,
        "nothing sent to dave"
    );
    assert_eq!(
        pair.alice_peer.receipt_for(e.id.as_str()),
        None,
        "still pending"
    );

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
                                    // dave (enrolled) has a table entry pointing at a proxy of ours that is not dave's: it
                                    // refuses a request signed for dave. erin has not joined (no key): nothing is sent to her.
    let refuser = FakePeer::start();
    let erins_listener = free_listener();
    let erins_addr = erins_listener.local_addr().unwrap();
    let (erins, erins_server) = start_any_web_server(erins_listener);
    for (name, proxy) in [("dave", None), ("erin", Some(erins_addr))] {
        let mut extra = pair.config.instances[1].clone();
        extra.name = overlay::config::InstanceName::parse(name).unwrap();
        pair.config.instances.push(extra);
        if let Some(addr) = proxy {
            pair.config.set_instance_listeners(name, None, Some(addr));
        }
    }
    pair.enroll("dave");
    let other_proxy = {
        // Another proxy of ours (a second one for bob).
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
    let to_erin = Envelope::text("alice", "erin", "not joined");
    let all = [&to_bob, &to_dave, &to_erin];
    for e in all {
        submit(&alice.url, e).await;
    }
    eventually("three failed receipts", || {
        all.iter().all(|e| {
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
    // The proxy at dave's address is bob's: a request signed for dave is not for it.
    let why = reason(&to_dave);
    assert!(
        why.starts_with("dave's proxy has been unreachable for 1s") && why.contains("not for bob"),
        "{why}"
    );
    let why = reason(&to_erin);
    assert!(
        why.starts_with("erin's proxy has been unreachable for 1s")
            && why.contains("erin has no pinned key in the signed directory"),
        "{why}"
    );
    assert!(
        erins.lock().unwrap().is_empty(),
        "nothing is sent unsigned to a proxy of ours without a key"
    );
    assert_eq!(
        pair.alice_peer.receipts().len(),
        3,
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
    erins_server.stop(false).await;
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
    let (s, v, ack) = pair.relay_batch_from_alice(&bob.url, &[&a, &b, &a]).await;
    assert_eq!(s, 200, "{v}");
    let sent = [a.clone(), b.clone(), a.clone()];
    assert!(
        ack_holds(ack.as_deref(), &pair.bob_key.public(), &sent),
        "{ack:?}"
    );
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
    pair.enroll_in(&controller);
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

/// What an [`AckForger`] shares with its handler.
struct ForgerState {
    /// The key of the proxy it poses as (bob's), used once `honest`.
    bob: Arc<Identity>,
    /// A key that is not bob's.
    other: Identity,
    honest: AtomicBool,
    /// What each answer's `overlay-ack` was, in order.
    answers: Mutex<Vec<&'static str>>,
}

/// A proxy of ours in appearance: it stores nothing, and answers every relay (single or batch)
/// 200 with a well-formed Ack of the ids sent; its `overlay-ack` is in turn missing, not a
/// signature, and another key's signature over the right messages; once `honest`, bob's.
struct AckForger {
    state: Arc<ForgerState>,
    handle: ServerHandle,
}

impl AckForger {
    fn start(listener: TcpListener, bob: Arc<Identity>) -> AckForger {
        let state = Arc::new(ForgerState {
            bob,
            other: Identity::generate(),
            honest: AtomicBool::new(false),
            answers: Mutex::default(),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new().app_data(data.clone()).default_service(web::to(
                |req: HttpRequest, body: web::Bytes, state: web::Data<ForgerState>| async move {
                    let batch = req.path().ends_with("/batch");
                    let sent: Vec<SealedEnvelope> = if batch {
                        serde_json::from_slice(&body).unwrap_or_default()
                    } else {
                        serde_json::from_slice(&body).into_iter().collect()
                    };
                    let acks: Vec<Ack> = sent
                        .iter()
                        .map(|e| Ack {
                            id: e.header.id.clone(),
                            duplicate: false,
                        })
                        .collect();
                    let mut res = HttpResponse::Ok();
                    let mut answers = state.answers.lock().unwrap();
                    let bytes = acked_bytes(sent.iter());
                    let (what, ack) = if state.honest.load(Ordering::SeqCst) {
                        (
                            "bob's",
                            Some(state.bob.sign(ACK_DOMAIN, &bytes).to_string()),
                        )
                    } else {
                        match answers.len() % 3 {
                            0 => ("none", None),
                            1 => ("not a signature", Some("sig-of-nobody".to_string())),
                            _ => (
                                "another key's",
                                Some(state.other.sign(ACK_DOMAIN, &bytes).to_string()),
                            ),
                        }
                    };
                    answers.push(what);
                    if let Some(ack) = ack {
                        res.insert_header((ACK_HEADER, ack));
                    }
                    if batch {
                        res.json(acks)
                    } else {
                        res.json(acks.first())
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
        AckForger { state, handle }
    }
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
    eventually(
        "alice's proxy has tried the web server with both answers",
        || relays.lock().unwrap().len() >= 3,
    )
    .await;
    let status = get_json(&format!("{}/api/v1/outbox", alice.url)).await;
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

    // A proxy at bob's address answers with a well-formed Ack of the right id, but its
    // `overlay-ack` is missing, not a signature, or signed by a key that is not bob's: a
    // forged acknowledgement, so the message stays pending.
    let mut pair = Pair::new(|c| {
        c.delivery.retry_initial_ms = 20;
        c.delivery.retry_max_ms = 100;
    });
    let forger = AckForger::start(pair.bob_listener.take().unwrap(), pair.bob_key.clone());
    let alice = pair.alice().await;
    let e = Envelope::text("alice", "bob", "acknowledged by whom?");
    submit(&alice.url, &e).await;
    eventually("the forger gave each of its answers", || {
        forger.state.answers.lock().unwrap().len() >= 4
    })
    .await;
    let status = get_json(&format!("{}/api/v1/outbox", alice.url)).await;
    assert_eq!(status["queued"], 1, "still queued: {status}");
    let error = status["lanes"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.starts_with("bob's proxy: ") && error.contains("acknowledgement"),
        "{status}"
    );
    assert!(
        pair.alice_peer.receipt_for(e.id.as_str()).is_none(),
        "not delivered on a forged acknowledgement: {:?} after {:?}",
        pair.alice_peer.receipts(),
        forger.state.answers.lock().unwrap()
    );
    // The very same answer signed by bob's pinned key is an acknowledgement: only the
    // signature was missing.
    forger.state.honest.store(true, Ordering::SeqCst);
    eventually("alice learns it was delivered", || {
        pair.alice_peer.receipt_for(e.id.as_str()) == Some(DeliveryState::Delivered)
    })
    .await;
    eventually_json(
        "alice's outbox is empty",
        &format!("{}/api/v1/outbox", alice.url),
        |v| v["queued"] == 0,
    )
    .await;
    alice.stop().await;
    forger.handle.stop(false).await;

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
    let mut config = crate::helpers::without_tls(config_for(&[("alice", &[]), ("bob", &[])]));
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
        "POST /clear_all_chats HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
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
    let mut config = crate::helpers::without_tls(config_for(&[("alice", &[])]));
    // Long enough that a refusal cannot be the deadline's.
    config.server.body_timeout_secs = 600;
    let mut o = crate::helpers::spawn_overlay(config).await;
    let too_big = 10 * 1024 * 1024;
    for (label, path, host) in [
        ("proxy/alice", "/", "alice"),
        ("proxy/alice", "/api/v1/relay", "127.0.0.1"),
        ("proxy/alice", "/api/v1/outbox", "127.0.0.1"),
        ("peer/alice", "/message", "127.0.0.1"),
        ("peer/alice", "/send_message", "127.0.0.1"),
        ("peer/alice", "/api/v1/inbox", "127.0.0.1"),
        ("controller", "/api/register", "127.0.0.1"),
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
    // (Both signed by alice's proxy as they are: the flags are part of what it signs.)
    let mut relayed = Envelope::text("alice", "bob", "⚠ alice could not answer");
    relayed.error = true;
    relayed.auto_reply = true;
    let (s, v, _) = pair.relay_from_alice(&bob.url, &relayed).await;
    assert_eq!(s, 200, "{v}");
    let mut batched = Envelope::text("alice", "bob", "⚠ in a batch");
    batched.error = true;
    let (s, v, _) = pair.relay_batch_from_alice(&bob.url, &[&batched]).await;
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

// ---------------------------------------------------------------- signed hops (issue 15)

/// Waits until bob's peer has the last of `texts` (relayed last: on bob's one FIFO lane to
/// its peer, anything taken in before it arrives first), then checks it holds exactly
/// `texts`, in order, each posted once.
async fn only_these_arrived(pair: &Pair, texts: &[&str]) {
    eventually("the last message arrived", || {
        pair.bob_peer.texts().last().map(String::as_str) == texts.last().copied()
    })
    .await;
    assert_eq!(pair.bob_peer.texts(), texts);
    assert!(
        pair.bob_peer.raw_counts().values().all(|n| *n == 1),
        "{:?}",
        pair.bob_peer.raw_counts()
    );
}

#[actix_rt::test]
async fn a_relay_validly_signed_by_another_enrolled_proxy_claiming_someone_else_is_refused() {
    let mut pair = Pair::new(|_| {});
    let carol = pair.enroll("carol");
    let bob = pair.bob().await;
    let relay = format!("{}/api/v1/relay", bob.url);
    // carol's proxy signs, as carol and with carol's key, a message that says it is alice's.
    let forged = pair.sealed(
        &Envelope::text("alice", "bob", "it's alice, honest"),
        &carol,
    );
    let (s, v, ack) = signed_relay(&relay, &carol, "carol", "bob", &forged).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("only carol's messages"),
        "{v}"
    );
    assert_eq!(ack, None, "nothing acknowledged");
    assert_eq!(outbox_queued(&bob.url).await, 0);
    // In a batch, the one message claiming alice is named, and none of the batch is taken.
    let batch: Vec<SealedEnvelope> = [("carol", "one"), ("alice", "two"), ("carol", "three")]
        .iter()
        .map(|(from, text)| pair.sealed(&Envelope::text(from, "bob", *text), &carol))
        .collect();
    let batch_url = format!("{}/api/v1/relay/batch", bob.url);
    let (s, v, ack) = signed_relay(&batch_url, &carol, "carol", "bob", &batch).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("message 2 of 3"),
        "{v}"
    );
    assert_eq!(ack, None);
    assert_eq!(outbox_queued(&bob.url).await, 0);
    // carol's key signing as alice: not the key pinned to alice.
    let as_alice = pair.sealed(&Envelope::text("alice", "bob", "signed by carol"), &carol);
    let (s, v, ack) = signed_relay(&relay, &carol, "alice", "bob", &as_alice).await;
    assert!(s == 401 || s == 503, "{s} {v}");
    assert!(v["message"].as_str().unwrap().contains("key"), "{v}");
    assert_eq!(ack, None);
    assert_eq!(outbox_queued(&bob.url).await, 0);
    // carol's own message is taken: nothing refused above reached bob's peer before it.
    let own = pair.sealed(&Envelope::text("carol", "bob", "really carol's"), &carol);
    let (s, v, _) = signed_relay(&relay, &carol, "carol", "bob", &own).await;
    assert_eq!(s, 200, "{v}");
    only_these_arrived(&pair, &["really carol's"]).await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_body_path_or_destination_swapped_under_a_valid_signature_is_refused() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    let alice = &pair.alice_key;
    let e = pair.sealed(&Envelope::text("alice", "bob", "as signed"), alice);
    let valid = sign_request(alice, "alice", "bob", "/api/v1/relay", &e);
    // One byte more (white space: the envelope and its own signature are unchanged).
    let mut longer = valid.clone();
    longer.body.push(b' ');
    let (s, v, _) = send_signed(&bob.url, &longer, &[]).await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("does not hold"),
        "{v}"
    );
    // One byte changed, in the sealed text.
    let mut changed = valid.clone();
    let at = changed
        .body
        .windows(6)
        .position(|w| w == b"\"ct\":\"")
        .unwrap()
        + 6;
    changed.body[at] = if changed.body[at] == b'A' { b'B' } else { b'A' };
    let (s, v, _) = send_signed(&bob.url, &changed, &[]).await;
    assert_eq!(s, 401, "{v}");
    // Signed for `/api/v1/relay`, posted to the batch route.
    let e2 = pair.sealed(&Envelope::text("alice", "bob", "other path"), alice);
    let mut moved = sign_request(alice, "alice", "bob", "/api/v1/relay", &[&e2]);
    moved.target = "/api/v1/relay/batch".into();
    let (s, v, _) = send_signed(&bob.url, &moved, &[]).await;
    assert_eq!(s, 401, "{v}");
    // Signed for carol's proxy, posted to bob's.
    let e3 = pair.sealed(&Envelope::text("alice", "bob", "meant for carol's"), alice);
    let for_carol = sign_request(alice, "alice", "carol", "/api/v1/relay", &e3);
    let (s, v, _) = send_signed(&bob.url, &for_carol, &[]).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("not for bob"),
        "{v}"
    );
    assert_eq!(outbox_queued(&bob.url).await, 0);
    // The request as signed is taken (its nonce was not spent by the refused copies), and it
    // alone reaches bob's peer.
    let (s, v, ack) = send_signed(&bob.url, &valid, &[]).await;
    assert_eq!(s, 200, "{v}");
    assert!(ack_holds(ack.as_deref(), &pair.bob_key.public(), &[e]));
    only_these_arrived(&pair, &["as signed"]).await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_replayed_relay_is_refused_also_after_the_receiver_restarts() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    let e = pair.sealed(
        &Envelope::text("alice", "bob", "only once"),
        &pair.alice_key,
    );
    let request = sign_request(&pair.alice_key, "alice", "bob", "/api/v1/relay", &e);
    let (s, v, _) = send_signed(&bob.url, &request, &[]).await;
    assert_eq!(s, 200, "{v}");
    // The same bytes and header again: a replay.
    let (s, v, ack) = send_signed(&bob.url, &request, &[]).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("replay"), "{v}");
    assert_eq!(ack, None);
    eventually("bob's peer has it", || pair.bob_peer.stored_count() == 1).await;

    // Bob's proxy restarts (its nonces are gone): the old request is still refused. (Once its
    // hand-over to the peer is stored as done: a stop before that hands it over again, which
    // a real peer takes once, but this test counts posts.)
    let outbox = format!("{}/api/v1/outbox", bob.url);
    crate::helpers::eventually("bob's proxy stored the hand-over as done", || {
        let outbox = outbox.clone();
        async move {
            let mut r = crate::helpers::client().get(outbox).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            (v["queued"] == 0).then_some(())
        }
    })
    .await;
    bob.stop().await;
    let bob = pair.bob().await;
    let (s, v, ack) = send_signed(&bob.url, &request, &[]).await;
    let why = v["message"].as_str().unwrap_or_default();
    assert!(
        (s == 503 && why.contains("before this process started"))
            || (s == 401 && why.contains("replay")),
        "{s} {v}"
    );
    assert_eq!(ack, None);
    let marker = Envelope::text("alice", "bob", "after the restart");
    let (s, v, _) = pair.relay_from_alice(&bob.url, &marker).await;
    assert_eq!(s, 200, "{v}");
    // Stored once each. (A stop within the store's wait for its next commit, at most 20 ms,
    // can leave the hand-over of "only once" to be made again after the restart: a real peer
    // takes an id once, and this fake, which counts posts, stores by id too.)
    eventually("the last message arrived", || {
        pair.bob_peer.texts().last().map(String::as_str) == Some("after the restart")
    })
    .await;
    assert_eq!(pair.bob_peer.texts(), ["only once", "after the restart"]);
    bob.stop().await;
}

#[actix_rt::test]
async fn a_retry_after_a_dropped_ack_is_stored_once_and_gets_the_same_ack() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    let relay = format!("{}/api/v1/relay", bob.url);
    let e = pair.sealed(&Envelope::text("alice", "bob", "ack lost"), &pair.alice_key);
    // The first answer never reaches alice's proxy (only the test looks at it).
    let (s, _, lost) = signed_relay(&relay, &pair.alice_key, "alice", "bob", &e).await;
    assert_eq!(s, 200);
    // The retry is a new request (a new nonce) with the same message.
    let (s, v, ack) = signed_relay(&relay, &pair.alice_key, "alice", "bob", &e).await;
    assert_eq!(
        (s, v),
        (200, json!({"id": e.header.id.as_str(), "duplicate": true}))
    );
    assert!(ack.is_some());
    assert_eq!(ack, lost, "the same acknowledgement, signed again");
    assert!(ack_holds(
        ack.as_deref(),
        &pair.bob_key.public(),
        std::slice::from_ref(&e)
    ));
    let marker = Envelope::text("alice", "bob", "marker");
    let (s, v, _) = pair.relay_from_alice(&bob.url, &marker).await;
    assert_eq!(s, 200, "{v}");
    only_these_arrived(&pair, &["ack lost", "marker"]).await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_relay_from_a_user_named_like_an_ai_endpoint_is_refused() {
    let mut pair = Pair::new(|c| {
        let ai: AiEndpointConfig =
            serde_yaml::from_str("{name: BOT, provider: openai, model: gpt-4o-mini}").unwrap();
        c.ai_endpoints.push(ai);
    });
    // A user BOT joined (its key is pinned); on bob's proxy, BOT is an AI endpoint.
    let bot = pair.enroll("BOT");
    let bob = pair.bob().await;
    let peers = get_json(&format!("{}/peers", bob.url)).await;
    assert_eq!(peers["peers"]["BOT"]["is_api"], true, "{peers}");
    let e = pair.sealed(
        &Envelope::text("BOT", "bob", "I am your AI, trust me"),
        &bot,
    );
    let url = format!("{}/api/v1/relay", bob.url);
    let (s, v, ack) = signed_relay(&url, &bot, "BOT", "bob", &e).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("AI endpoint"),
        "{v}"
    );
    assert_eq!(ack, None);
    assert_eq!(outbox_queued(&bob.url).await, 0);
    let marker = Envelope::text("alice", "bob", "marker");
    let (s, v, _) = pair.relay_from_alice(&bob.url, &marker).await;
    assert_eq!(s, 200, "{v}");
    only_these_arrived(&pair, &["marker"]).await;
    bob.stop().await;
}

#[actix_rt::test]
async fn a_delivered_message_was_signed_and_verified_at_both_ends() {
    let mut pair = Pair::new(|_| {});
    let (alice, bob) = (pair.alice().await, pair.bob().await);
    let e = Envelope::text("alice", "bob", "counted");
    submit(&alice.url, &e).await;
    eventually("alice learns it was delivered", || {
        pair.alice_peer.receipt_for(e.id.as_str()) == Some(DeliveryState::Delivered)
    })
    .await;
    assert_eq!(pair.bob_peer.texts(), ["counted"]);
    let at_bob = get_json(&format!("{}/api/v1/signatures", bob.url)).await;
    for counter in ["requests_verified", "envelopes_verified", "acks_signed"] {
        assert!(
            at_bob[counter].as_u64().unwrap() >= 1,
            "{counter}: {at_bob}"
        );
    }
    let at_alice = get_json(&format!("{}/api/v1/signatures", alice.url)).await;
    for counter in ["acks_verified", "requests_signed", "envelopes_signed"] {
        assert!(
            at_alice[counter].as_u64().unwrap() >= 1,
            "{counter}: {at_alice}"
        );
    }
    alice.stop().await;
    bob.stop().await;
}

//! Integration tests of issue 17, encryption in transit, on real servers (port 0) as `overlay
//! up` runs them (TLS on by default): who may register and deliver (a certificate from the
//! overlay's CA for the pinned key, nothing else), what a sender accepts at a destination's
//! address (its certificate, not carol's, and never plain HTTP, not even after a failed
//! handshake), revocation reaching the handshake, certificates renewed before and after they
//! expire (the test plants certificates dated by its own clock), a CSR's extra names ignored,
//! and the bytes a proxy puts on the wire (a TLS handshake, no message text).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    client, config_for, eventually, overlay_client_as, proxy_identity, relay_over_tls,
    signed_post_with, spawn_overlay, spawn_proxy, tls_url, Spawned, TestOverlay, TestPins,
};
use overlay::config::Config;
use overlay::proxy::outbox::OutboxStatus;
use overlay::trust::tls::{client_config, Leaf, OverlayVerifier};
use overlay::trust::x509::{self, tls_name, Ca};
use overlay::trust::{Identity, Signed};
use overlay::wire::data_plane::Envelope;
use overlay::wire::directory::{RegisterClaim, REGISTER_DOMAIN};
use overlay::wire::now_ms;
use overlay::wire::sealed::SealedEnvelope;

const HOUR: u64 = 3_600_000;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// `users` run as `overlay up` runs them, TLS on; `tls_advertise` sets where the directory says
/// a user's proxy takes TLS (a test's stand-in), instead of its own listener.
async fn overlay_of(users: &[&str], tls_advertise: &[(&str, SocketAddr)]) -> TestOverlay {
    let with: Vec<(&str, &[&str])> = users.iter().map(|u| (*u, &[][..])).collect();
    let mut config = config_for(&with);
    for (name, at) in tls_advertise {
        let inst = config
            .instances
            .iter_mut()
            .find(|i| i.name.as_str() == *name)
            .expect("a user of the config");
        inst.proxy.tls_advertise = Some(at.to_string());
    }
    spawn_overlay(config).await
}

/// Waits until `name`'s proxy holds its certificate (made by the controller's CA at join).
async fn certified(o: &TestOverlay, name: &str) {
    let cert = o.data_dir.path().join(format!("proxy-{name}.crt"));
    eventually(&format!("{name}'s proxy has its certificate"), || {
        let there = cert.exists();
        async move { there.then_some(()) }
    })
    .await;
}

/// A message from `from` to `to`, sealed for `to`'s proxy and signed by `from`'s proxy key.
fn envelope(o: &TestOverlay, from: &str, to: &str, text: &str) -> SealedEnvelope {
    let dir = o.data_dir.path();
    let e = Envelope::text(from, to, text);
    crate::helpers::sealed(
        &[e],
        &crate::helpers::seal_key(dir, to),
        &proxy_identity(dir, from),
    )
    .remove(0)
}

/// `POST /send_message` on `name`'s peer.
pub(crate) async fn send(o: &TestOverlay, name: &str, to: &str, text: &str) {
    let mut r = client()
        .post(format!("{}/send_message", o.url(&format!("peer/{name}"))))
        .send_json(&json!({"peer_id": to, "message": text}))
        .await
        .expect("the peer answers");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.body().await);
}

/// The outbox of `name`'s proxy.
pub(crate) async fn outbox(o: &TestOverlay, name: &str) -> OutboxStatus {
    let mut r = client()
        .get(format!("{}/api/v1/outbox", o.url(&format!("proxy/{name}"))))
        .send()
        .await
        .expect("the proxy answers");
    r.json().await.expect("an outbox status")
}

/// The texts `name`'s peer holds from `from`.
pub(crate) async fn texts(o: &TestOverlay, name: &str, from: &str) -> Vec<String> {
    let mut r = client()
        .get(format!(
            "{}/get_chat_history/{from}",
            o.url(&format!("peer/{name}"))
        ))
        .send()
        .await
        .expect("the peer answers");
    let v: Vec<Value> = r.json().limit(1 << 22).await.unwrap_or_default();
    v.iter()
        .filter(|e| e["sender"] == from)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A root and an overlay CA of the test's own: the right names, the wrong authority.
fn other_ca() -> Ca {
    let root = Identity::generate();
    let key = Identity::generate();
    Ca::new(
        &key,
        x509::ca_cert(&root, &key.public(), now_ms()).unwrap(),
        x509::root_cert(&root, now_ms()).unwrap(),
    )
    .unwrap()
}

/// The overlay's own CA, as the controller keeps it in the data dir.
fn overlay_ca(dir: &Path) -> Ca {
    let root = overlay::controller::trust::root_fingerprint(dir).unwrap();
    overlay::controller::trust::load_ca(dir, &root)
        .unwrap()
        .0
        .expect("the controller made its CA")
}

/// An overlay client presenting `chain` for `identity`, checking servers against `dir`'s root.
fn client_presenting(
    dir: &Path,
    identity: &Identity,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    users: &[&str],
) -> awc::Client {
    let root = overlay::controller::trust::root_fingerprint(dir).unwrap();
    let leaf = Leaf::new();
    leaf.set(identity, chain).unwrap();
    let pins = TestPins(
        users
            .iter()
            .map(|u| (u.to_string(), proxy_identity(dir, u).public()))
            .collect(),
    );
    overlay::hop::overlay::client(
        client_config(leaf, OverlayVerifier::new(root, Arc::new(pins), false)),
        Rc::new(|_: &str| Some("127.0.0.1".to_string())),
        std::time::Duration::from_secs(5),
    )
}

/// A TCP listener that records every connection's first bytes and answers each in plain HTTP
/// (as a web server that is not the proxy would), or forwards it to `forward` when that is set.
/// Bytes per connection, as a tap records them.
type Recorded = Rc<RefCell<Vec<Vec<u8>>>>;

pub(crate) struct Tap {
    pub(crate) addr: SocketAddr,
    /// Per connection: the bytes the client sent.
    seen: Recorded,
    /// Per connection: the bytes the server answered (when forwarded).
    answered: Recorded,
    pub(crate) forward: Rc<RefCell<Option<SocketAddr>>>,
}

/// Copies `from` to `to` until either ends, handing each chunk to `record`; then shuts `to`.
async fn pipe(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut record: impl FnMut(&[u8]),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

impl Tap {
    pub(crate) async fn start() -> Tap {
        let listener = actix_rt::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let answered = Rc::new(RefCell::new(Vec::new()));
        let forward: Rc<RefCell<Option<SocketAddr>>> = Rc::new(RefCell::new(None));
        let (s, a, f) = (seen.clone(), answered.clone(), forward.clone());
        actix_rt::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let i = {
                    let mut all = s.borrow_mut();
                    all.push(Vec::new());
                    a.borrow_mut().push(Vec::new());
                    all.len() - 1
                };
                let target = *f.borrow();
                actix_rt::spawn(Tap::serve(conn, i, (s.clone(), a.clone()), target));
            }
        });
        Tap {
            addr,
            seen,
            answered,
            forward,
        }
    }

    async fn serve(
        mut conn: actix_rt::net::TcpStream,
        i: usize,
        (seen, answered): (Recorded, Recorded),
        target: Option<SocketAddr>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some(target) = target else {
            let mut buf = vec![0u8; 4096];
            if let Ok(n) = conn.read(&mut buf).await {
                seen.borrow_mut()[i].extend_from_slice(&buf[..n]);
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await;
            return;
        };
        let Ok(mut up) = actix_rt::net::TcpStream::connect(target).await else {
            return;
        };
        let (mut cr, mut cw) = conn.split();
        let (mut ur, mut uw) = up.split();
        let to_server = async {
            pipe(&mut cr, &mut uw, |b| {
                seen.borrow_mut()[i].extend_from_slice(b)
            })
            .await;
        };
        let to_client = async {
            pipe(&mut ur, &mut cw, |b| {
                answered.borrow_mut()[i].extend_from_slice(b)
            })
            .await;
        };
        futures_util::future::join(to_server, to_client).await;
    }

    pub(crate) fn connections(&self) -> Vec<Vec<u8>> {
        self.seen.borrow().clone()
    }

    /// Per connection: what the client sent and what the server answered.
    pub(crate) fn both_ways(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.seen
            .borrow()
            .iter()
            .cloned()
            .zip(self.answered.borrow().iter().cloned())
            .collect()
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A TLS handshake record: content type 22, version 3.x.
fn starts_tls(bytes: &[u8]) -> bool {
    bytes.len() > 5 && bytes[0] == 0x16 && bytes[1] == 0x03
}

// ---------------------------------------------------------------------------------------------
// Who may register and deliver.

#[actix_web::test]
async fn a_proxy_without_a_certificate_from_the_ca_cannot_register_or_deliver() {
    let o = overlay_of(&["alice", "bob"], &[]).await;
    let dir = o.data_dir.path();
    certified(&o, "bob").await;
    // With alice's certificate from the CA, bob takes her relay (the control).
    let e = envelope(&o, "alice", "bob", "with a certificate");
    let r = relay_over_tls(&o, "alice", "bob", "/api/v1/relay", &e).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let alice = proxy_identity(dir, "alice");
    let bob_tls = tls_url(&o, "bob");
    // No certificate at all: bob's handshake refuses it; no route is reached.
    let bare = overlay_client_as(dir, None, &["alice", "bob"]);
    let e = envelope(&o, "alice", "bob", "no certificate");
    let r = signed_post_with(&bare, &bob_tls, "/api/v1/relay", &alice, "alice", "bob", &e).await;
    assert_eq!(r.status, 0, "answered without a certificate: {}", r.body);
    // alice's key and name, certified by another CA: refused the same way.
    let forged = other_ca()
        .issue(&alice.public(), &tls_name("alice"), now_ms(), HOUR)
        .unwrap();
    let other = client_presenting(dir, &alice, forged.clone(), &["alice", "bob"]);
    let e = envelope(&o, "alice", "bob", "another CA");
    let r = signed_post_with(
        &other,
        &bob_tls,
        "/api/v1/relay",
        &alice,
        "alice",
        "bob",
        &e,
    )
    .await;
    assert_eq!(
        r.status, 0,
        "answered with another CA's certificate: {}",
        r.body
    );
    assert!(!texts(&o, "bob", "alice")
        .await
        .contains(&"another CA".to_string()));

    // Registering: at the controller's TLS listener without a certificate, 401; in plain
    // HTTP, 403 naming where to go; with another CA's certificate, no handshake.
    let claim = Signed::sign(
        REGISTER_DOMAIN,
        &RegisterClaim {
            role: Default::default(),
            via: None,
            auto: false,
            proxy_id: "alice-proxy-forged".into(),
            instance_name: "alice".into(),
            host: "127.0.0.1".into(),
            port: 1,
            protocol: "overlay/1".into(),
            root: overlay::controller::trust::root_fingerprint(dir).unwrap(),
            time_ms: now_ms(),
            api_keys: None,
            seal: None,
            tls: None,
        },
        &alice,
    );
    let ctl_tls = o.server("controller").tls_addr.expect("a TLS listener");
    let url = format!(
        "https://{}:{}/api/v1/register",
        x509::CONTROLLER_TLS_NAME,
        ctl_tls.port()
    );
    let mut r = bare.post(&url).send_json(&claim).await.expect("an answer");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("certificate from the overlay CA"),
        "{v}"
    );
    assert!(other.post(&url).send_json(&claim).await.is_err());
    let mut r = client()
        .post(format!("{}/api/v1/register", o.url("controller")))
        .send_json(&claim)
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("over TLS"), "{v}");
    // And the directory never learned the forged registration's address.
    let mut r = client()
        .get(format!("{}/api/v1/admin/trust", o.url("controller")))
        .bearer_auth(
            std::fs::read_to_string(dir.join("admin.token"))
                .unwrap()
                .trim(),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(!v.to_string().contains("alice-proxy-forged"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// What a sender accepts at a destination's address.

#[actix_web::test]
async fn carols_valid_certificate_served_at_bobs_address_is_refused() {
    // The directory says bob takes TLS at an address where carol's proxy answers, with her
    // real, valid certificate.
    let impostor = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = impostor.local_addr().unwrap();
    let o = overlay_of(&["alice", "bob", "carol"], &[("bob", at)]).await;
    certified(&o, "carol").await;
    let dir = o.data_dir.path();
    let carol = proxy_identity(dir, "carol");
    let chain = x509::from_pem(&std::fs::read(dir.join("proxy-carol.crt")).unwrap()).unwrap();
    let leaf = Leaf::new();
    leaf.set(&carol, chain).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(leaf);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let reached = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r2 = reached.clone();
    let server = actix_web::HttpServer::new(move || {
        let r = r2.clone();
        actix_web::App::new().default_service(actix_web::web::to(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { actix_web::HttpResponse::Ok().finish() }
        }))
    })
    .workers(1)
    .listen_rustls_0_23(impostor, config)
    .unwrap()
    .run();
    let _impostor = Spawned::spawn_server(server, at);
    send(&o, "alice", "bob", "for bob only").await;
    let status = eventually("alice's proxy has met the impostor twice", || async {
        let s = outbox(&o, "alice").await;
        s.lanes.into_iter().find(|l| {
            l.lane.contains("bob")
                && l.head_attempts >= 2
                && l.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("certificate"))
        })
    })
    .await;
    let why = status.last_error.unwrap_or_default();
    assert!(why.contains("does not name bob.proxy.overlay"), "{why}");
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request reached the impostor"
    );
    assert!(texts(&o, "bob", "alice").await.is_empty());
}

#[actix_web::test]
async fn a_failed_handshake_is_retried_over_tls_and_never_in_plain_http() {
    // bob's TLS address leads to a plain web server answering 200 to anything.
    let tap = Tap::start().await;
    let o = overlay_of(&["alice", "bob"], &[("bob", tap.addr)]).await;
    certified(&o, "alice").await;
    send(&o, "alice", "bob", "secret words").await;
    eventually("three attempts at bob's address", || async {
        let n = tap.connections().iter().filter(|c| !c.is_empty()).count();
        (n >= 3).then_some(())
    })
    .await;
    for c in tap.connections().iter().filter(|c| !c.is_empty()) {
        assert!(
            starts_tls(c),
            "a connection began {:?}",
            &c[..c.len().min(16)]
        );
        assert!(!contains(c, b"POST") && !contains(c, b"secret words"));
    }
    let s = outbox(&o, "alice").await;
    assert_eq!(s.queued, 1, "the message is still queued: {s:?}");
    assert!(texts(&o, "bob", "alice").await.is_empty());
}

#[actix_web::test]
async fn a_proxy_hop_starts_with_a_tls_handshake_and_carries_no_message_text() {
    let tap = Tap::start().await;
    let o = overlay_of(&["alice", "bob"], &[("bob", tap.addr)]).await;
    *tap.forward.borrow_mut() = o.server("proxy/bob").tls_addr;
    send(&o, "alice", "bob", "words only bob reads").await;
    eventually("bob has alice's message", || async {
        texts(&o, "bob", "alice")
            .await
            .contains(&"words only bob reads".to_string())
            .then_some(())
    })
    .await;
    let used: Vec<Vec<u8>> = tap
        .connections()
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    assert!(!used.is_empty());
    for c in &used {
        assert!(
            starts_tls(c),
            "a connection began {:?}",
            &c[..c.len().min(16)]
        );
        assert!(!contains(c, b"words only bob reads"));
        assert!(
            !contains(c, b"alice"),
            "the sender's name went in the clear"
        );
    }
}

#[actix_web::test]
async fn every_proxy_acknowledges_the_directory_it_applied_also_right_after_joining() {
    // A proxy joins before it has its certificate; an acknowledgement made then was refused,
    // and the last to join never acknowledged anything (the dashboard showed it behind).
    let o = overlay_of(&["alice", "bob", "carol"], &[]).await;
    let admin = std::fs::read_to_string(o.data_dir.path().join("admin.token")).unwrap();
    let url = format!("{}/api/v1/proxies", o.url("controller"));
    eventually("every proxy acknowledged the current directory", || {
        let (url, admin) = (url.clone(), admin.trim().to_string());
        async move {
            let mut r = client().get(url).bearer_auth(admin).send().await.ok()?;
            let proxies: Vec<Value> = r.json().await.ok()?;
            (proxies.len() == 3
                && proxies
                    .iter()
                    .all(|p| p["applied_version"] == p["current_version"]))
            .then_some(())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Revocation and renewal.

#[actix_web::test]
async fn a_revoked_proxy_with_an_unexpired_certificate_is_refused_after_one_directory_push() {
    let o = overlay_of(&["alice", "bob", "carol"], &[]).await;
    let e = envelope(&o, "carol", "bob", "before");
    let r = relay_over_tls(&o, "carol", "bob", "/api/v1/relay", &e).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let dir = o.data_dir.path();
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let mut r = client()
        .post(format!("{}/api/v1/admin/revoke", o.url("controller")))
        .bearer_auth(admin.trim())
        .send_json(&json!({"name": "carol", "reason": "laptop stolen"}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.body().await);
    // Her certificate is still unexpired; bob's next directory makes his handshake refuse it.
    let carol = proxy_identity(dir, "carol");
    let bob_tls = tls_url(&o, "bob");
    let o = &o;
    // Until bob has the directory that revokes her, her relays are still taken (or refused
    // for the revocation, 403, once the directory is there but before a new handshake).
    eventually("bob refuses carol's handshake", || {
        // A new client each time: a new connection, a new handshake.
        let client = overlay_client_as(dir, Some("carol"), &["alice", "bob", "carol"]);
        let (url, carol) = (&bob_tls, &carol);
        async move {
            let e = envelope(o, "carol", "bob", "during");
            let r =
                signed_post_with(&client, url, "/api/v1/relay", carol, "carol", "bob", &e).await;
            (r.status == 0).then_some(())
        }
    })
    .await;
    // From then on, every new connection of hers is refused at the handshake.
    let fresh = overlay_client_as(dir, Some("carol"), &["alice", "bob", "carol"]);
    let e = envelope(o, "carol", "bob", "after");
    let r = signed_post_with(
        &fresh,
        &bob_tls,
        "/api/v1/relay",
        &carol,
        "carol",
        "bob",
        &e,
    )
    .await;
    assert_eq!(r.status, 0, "{}", r.body);
    let (from, to) = x509::validity_ms(
        &x509::from_pem(&std::fs::read(dir.join("proxy-carol.crt")).unwrap()).unwrap()[0],
    )
    .unwrap();
    assert!(
        from < now_ms() && now_ms() < to,
        "the certificate is still valid"
    );
    assert!(!texts(o, "bob", "carol")
        .await
        .contains(&"after".to_string()));
}

/// The config `o` runs with, at the addresses it bound (to start a proxy again there).
fn bound_config(o: &TestOverlay, users: &[&str]) -> Config {
    let with: Vec<(&str, &[&str])> = users.iter().map(|u| (*u, &[][..])).collect();
    let mut config = config_for(&with);
    config.controller.listen = o.server("controller").addr;
    config.controller.url = o
        .server("controller")
        .tls_addr
        .map(|a| format!("https://{a}"));
    for name in users {
        let peer = o.server(&format!("peer/{name}")).addr;
        let proxy = o.server(&format!("proxy/{name}")).addr;
        config.set_instance_listeners(name, Some(peer), Some(proxy));
    }
    config
}

fn validity_of(dir: &Path, name: &str) -> (u64, u64) {
    let pem = std::fs::read(dir.join(format!("proxy-{name}.crt"))).unwrap();
    x509::validity_ms(&x509::from_pem(&pem).unwrap()[0]).unwrap()
}

#[actix_web::test]
async fn a_certificate_is_renewed_before_and_after_it_expires() {
    let users = ["alice", "bob"];
    let mut o = overlay_of(&users, &[]).await;
    certified(&o, "alice").await;
    let config = bound_config(&o, &users);
    let dir = o.data_dir.path().to_path_buf();
    let ca = overlay_ca(&dir);
    let alice = proxy_identity(&dir, "alice");
    let addr = o.server("proxy/alice").addr;
    let mut proxy: Option<Spawned> = None;
    o.stop("proxy/alice").await;
    // The test's clock: a day's certificate issued 30 h ago (expired while "the laptop was
    // off"), one issued 13 h ago (past half its life), one issued an hour ago (fresh).
    for (issued_hours_ago, renewed) in [(30, true), (13, true), (1, false)] {
        if let Some(p) = proxy.take() {
            p.stop().await;
        }
        let issued = now_ms() - issued_hours_ago * HOUR;
        let chain = ca
            .issue(&alice.public(), &tls_name("alice"), issued, 24 * HOUR)
            .unwrap();
        std::fs::write(dir.join("proxy-alice.crt"), x509::to_pem(&chain)).unwrap();
        let planted = validity_of(&dir, "alice");
        let listener = std::net::TcpListener::bind(addr).expect("alice's address is free again");
        proxy = Some(spawn_proxy(&config, "alice", &dir, listener).await);
        let text = format!("after a {issued_hours_ago} h old certificate");
        send(&o, "alice", "bob", &text).await;
        eventually(&format!("bob has: {text}"), || async {
            texts(&o, "bob", "alice")
                .await
                .contains(&text)
                .then_some(())
        })
        .await;
        let now = validity_of(&dir, "alice");
        if renewed {
            assert!(now.0 > planted.0, "{issued_hours_ago} h: not renewed");
            assert!(
                now.1 > now_ms() + 20 * HOUR,
                "{issued_hours_ago} h: {now:?}"
            );
        } else {
            assert_eq!(now, planted, "a fresh certificate was replaced");
        }
    }
}

#[actix_web::test]
async fn a_csr_asking_for_extra_names_gets_only_its_own() {
    use base64::Engine;
    let o = overlay_of(&["alice", "bob"], &[]).await;
    certified(&o, "alice").await;
    let dir = o.data_dir.path();
    let alice = proxy_identity(dir, "alice");
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8(dir, "alice")),
        &rcgen::PKCS_ED25519,
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::new(vec![
        "alice.proxy.overlay".to_string(),
        "bob.proxy.overlay".to_string(),
        "controller.overlay".to_string(),
        "www.example.com".to_string(),
    ])
    .unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap();
    let body = serde_json::to_vec(&json!({
        "instance_name": "alice",
        "csr": base64::engine::general_purpose::STANDARD.encode(csr.der()),
    }))
    .unwrap();
    let ctl_tls = o.server("controller").tls_addr.unwrap();
    let base = format!("https://{}:{}", x509::CONTROLLER_TLS_NAME, ctl_tls.port());
    let path = "/api/v1/certificate";
    let root = overlay::controller::trust::root_fingerprint(dir).unwrap();
    let line = overlay::trust::request::RequestLine {
        method: "POST",
        target: path,
        body: &body,
    };
    let header = overlay::trust::request::sign(&alice, &line, "alice", root.as_str(), now_ms());
    // No client certificate needed: this is how an expired one is renewed.
    let bare = overlay_client_as(dir, None, &["alice", "bob"]);
    let mut r = bare
        .post(format!("{base}{path}"))
        .insert_header((overlay::trust::request::SIGNATURE_HEADER, header))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.body().await);
    let v: Value = r.json().await.unwrap();
    let chain = x509::from_pem(v["chain_pem"].as_str().unwrap().as_bytes()).unwrap();
    x509::check_name(&chain[0], "alice.proxy.overlay").unwrap();
    for other in ["bob.proxy.overlay", "controller.overlay", "www.example.com"] {
        assert!(x509::check_name(&chain[0], other).is_err(), "{other}");
    }
    assert_eq!(x509::key_of(&chain[0]).unwrap(), alice.public());
    // A leaf it was given cannot sign for anyone: it is no CA (checked by chain, not trust).
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    assert!(!leaf.is_ca());
}

/// PKCS#8 (RFC 8410, v1) of `name`'s proxy key, read from its key file, to sign a CSR with.
fn pkcs8(dir: &Path, name: &str) -> Vec<u8> {
    use base64::Engine;
    let text = std::fs::read_to_string(dir.join(format!("proxy-{name}.key"))).unwrap();
    let seed = text
        .lines()
        .filter_map(|l| {
            base64::engine::general_purpose::STANDARD
                .decode(l.trim())
                .ok()
        })
        .find(|b| b.len() == 32)
        .expect("a seed line");
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    der
}

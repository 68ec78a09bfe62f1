//! The relay role in-process on loopback: proxies that cannot be reached directly get their
//! messages through a relay they attach to, both ways, exactly once and in order, across a
//! relay restart; unknown keys can neither attach nor send. (Through a real NAT:
//! `chaos/nat.rs`.)

mod hostile;

use serde_json::Value;

use crate::helpers::{client, config_for, eventually, spawn_overlay, Spawned, TestOverlay};
use crate::tls::{send, texts};
use overlay::config::Config;

/// `config` with relay `relay1` (its listeners on port 0), and `behind` reached through it
/// only: their directory entries name a TLS address where nothing listens, so a direct hop
/// cannot work, and the relay is the only way in.
pub(crate) fn behind_relay(mut config: Config, behind: &[&str]) -> Config {
    let relay: overlay::config::RelayConfig =
        serde_yaml::from_str("{name: relay1, relay: {listen: 127.0.0.1:0}, ping_every_secs: 1}")
            .expect("a relay config");
    config.relays.push(relay);
    let dead = crate::helpers::free_listener().local_addr().unwrap();
    for inst in config.instances.iter_mut() {
        if behind.contains(&inst.name.as_str()) {
            inst.proxy.reachable = overlay::config::Reachable::Relay;
            inst.proxy.tls_advertise = Some(dead.to_string());
        }
    }
    config
}

/// The relay's status (its plain listener, from loopback).
pub(crate) async fn relay_status(url: &str) -> Value {
    let mut r = client()
        .get(format!("{url}/relay/v1/status"))
        .send()
        .await
        .expect("the relay answers");
    assert!(r.status().is_success(), "{:?}", r.status());
    r.json().await.expect("a status")
}

/// Waits until every one of `names` is attached to the relay at `url`.
pub(crate) async fn attached(url: &str, names: &[&str]) {
    eventually(&format!("{names:?} attached to the relay"), || async {
        let s = relay_status(url).await;
        let now: Vec<&str> = s["attached"]
            .as_array()?
            .iter()
            .filter_map(|a| a["name"].as_str())
            .collect();
        names.iter().all(|n| now.contains(n)).then_some(())
    })
    .await;
}

async fn signatures(o: &TestOverlay, name: &str) -> Value {
    let mut r = client()
        .get(format!(
            "{}/api/v1/signatures",
            o.url(&format!("proxy/{name}"))
        ))
        .send()
        .await
        .expect("the proxy answers");
    r.json().await.expect("counters")
}

async fn until_texts(o: &TestOverlay, to: &str, from: &str, want: &[String]) {
    eventually(&format!("{to} holds {want:?} from {from}"), || async {
        (texts(o, to, from).await == want).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_proxy_behind_a_relay_gets_messages_and_answers_through_it_once_and_in_order() {
    let users = [
        ("alice", &["Hi! This is Alice's automated response."][..]),
        ("bob", &[][..]),
    ];
    let o = spawn_overlay(behind_relay(config_for(&users), &["alice"])).await;
    let relay = o.url("relay/relay1");
    attached(&relay, &["alice"]).await;
    let sent: Vec<String> = (1..=6).map(|i| format!("through the relay #{i}")).collect();
    for text in &sent {
        send(&o, "bob", "alice", text).await;
    }
    until_texts(&o, "alice", "bob", &sent).await;
    // Alice's auto-replies reach bob (bob is reachable: directly).
    eventually("bob has alice's auto-replies", || async {
        (texts(&o, "bob", "alice").await.len() == sent.len()).then_some(())
    })
    .await;
    // Bob's messages count as delivered only by alice's signed acknowledgement, carried back.
    eventually("bob's outbox is empty", || async {
        let mut r = client()
            .get(format!("{}/api/v1/outbox", o.url("proxy/bob")))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        (v["queued"] == 0).then_some(())
    })
    .await;
    let status = relay_status(&relay).await;
    let carried = status["counters"]["messages_carried"].as_u64().unwrap();
    let opened = signatures(&o, "alice").await["opened"].as_u64().unwrap();
    assert!(carried >= sent.len() as u64, "{status}");
    assert_eq!(
        carried, opened,
        "every envelope alice opened came through the relay, and every one carried was opened"
    );
    assert_eq!(
        status["counters"]["answers_carried"],
        status["counters"]["requests_carried"]
    );
}

#[actix_web::test]
async fn when_both_ends_are_behind_the_relay_a_relay_restart_only_delays() {
    let users = [("alice", &["alice auto-reply"][..]), ("bob", &[][..])];
    let config = behind_relay(config_for(&users), &["alice", "bob"]);
    let mut o = spawn_overlay(config.clone()).await;
    let relay = o.url("relay/relay1");
    attached(&relay, &["alice", "bob"]).await;
    let first: Vec<String> = (1..=3)
        .map(|i| format!("before the restart #{i}"))
        .collect();
    for text in &first {
        send(&o, "bob", "alice", text).await;
    }
    until_texts(&o, "alice", "bob", &first).await;
    // The relay goes away (its TLS port kept, as a restarted service has), messages queue.
    let tls = o.server("relay/relay1").tls_addr.expect("a TLS listener");
    let plain = o.server("relay/relay1").addr;
    o.stop("relay/relay1").await;
    let second: Vec<String> = (1..=3).map(|i| format!("while it was down #{i}")).collect();
    for text in &second {
        send(&o, "bob", "alice", text).await;
    }
    send(&o, "alice", "bob", "alice while it was down").await;
    let mut config = config;
    config.relays[0].relay.listen = plain;
    config.relays[0].relay.tls_listen = Some(tls);
    config.controller.url = Some(format!(
        "https://{}",
        o.server("controller")
            .tls_addr
            .expect("the controller's TLS")
    ));
    config.controller.root =
        Some(overlay::controller::trust::root_fingerprint(o.data_dir.path()).unwrap());
    let settings = config
        .relay_settings("relay1", o.data_dir.path())
        .expect("the relay's settings");
    let l = std::net::TcpListener::bind(plain).expect("the relay's port again");
    o.servers.push(Spawned::spawn(
        overlay::relay::start(settings, l)
            .await
            .expect("the relay starts again"),
    ));
    attached(&relay, &["alice", "bob"]).await;
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    until_texts(&o, "alice", "bob", &all).await;
    // Alice's own message, and an auto-reply for each of bob's, reach bob through the relay
    // (he is behind it too), each once.
    eventually("bob has alice's message and auto-replies", || async {
        let got = texts(&o, "bob", "alice").await;
        let replies = got.iter().filter(|t| *t == "alice auto-reply").count();
        let own = got
            .iter()
            .filter(|t| *t == "alice while it was down")
            .count();
        (replies == all.len() && own == 1).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_hostile_relay_changes_nothing_anyone_sees_but_the_time_it_takes() {
    let users = [("alice", &[][..]), ("bob", &[][..]), ("carol", &[][..])];
    let names = ["alice", "bob", "carol"];
    let mut o = spawn_overlay(behind_relay(config_for(&users), &names)).await;
    attached(&o.url("relay/relay1"), &names).await;
    // The relay is taken over: its key and certificate now serve the double, at its address.
    let dir = o.data_dir.path().to_path_buf();
    let tls = o
        .server("relay/relay1")
        .tls_addr
        .expect("the relay's TLS listener");
    o.stop("relay/relay1").await;
    let key = overlay::trust::Identity::load(&dir.join("relay-relay1.key")).expect("its key");
    let leaf = overlay::trust::tls::Leaf::new();
    let pem = std::fs::read(dir.join("relay-relay1.crt")).expect("its certificate");
    leaf.set(&key, overlay::trust::x509::from_pem(&pem).unwrap())
        .expect("the certificate is the key's");
    let double = hostile::Hostile::new(key, &dir);
    let served = double.clone();
    let server = actix_web::HttpServer::new(move || {
        let served = served.clone();
        actix_web::App::new().configure(move |cfg| served.configure(cfg))
    })
    .workers(1)
    .disable_signals()
    .listen_rustls_0_23(
        std::net::TcpListener::bind(tls).expect("the relay's port"),
        overlay::trust::tls::server_config_without_clients(leaf),
    )
    .expect("the double listens")
    .run();
    o.servers.push(Spawned::spawn_server(server, tls));
    eventually("everyone attached to the double", || async {
        (double.attached() == names).then_some(())
    })
    .await;

    let sent = |from: &str, to: &str| -> Vec<String> {
        (1..=8).map(|i| format!("{from} to {to} #{i}")).collect()
    };
    let pairs = [("alice", "bob"), ("bob", "carol"), ("carol", "alice")];
    for i in 0..8 {
        for (from, to) in pairs {
            send(&o, from, to, &sent(from, to)[i]).await;
        }
    }
    for (from, to) in pairs {
        until_texts(&o, to, from, &sent(from, to)).await;
    }
    // Each sender's copies turned delivered, none failed: only signed acknowledgements count.
    for (from, to) in pairs {
        eventually(&format!("{from}'s copies to {to} delivered"), || async {
            let mut r = client()
                .get(format!(
                    "{}/get_chat_history/{to}",
                    o.url(&format!("peer/{from}"))
                ))
                .send()
                .await
                .ok()?;
            let h: Vec<Value> = r.json().limit(1 << 22).await.ok()?;
            let mine: Vec<&Value> = h.iter().filter(|e| e["sender"] == from).collect();
            assert!(
                mine.iter().all(|e| e["status"] != "failed"),
                "a message shown failed: {mine:?}"
            );
            (mine.len() == 8 && mine.iter().all(|e| e["status"] == "delivered")).then_some(())
        })
        .await;
    }
    // Nobody got the relay's own message, nor anything twice.
    for name in names {
        assert!(
            texts(&o, name, "relay1").await.is_empty(),
            "{name} took the injection"
        );
    }
    for (from, to) in pairs {
        assert_eq!(
            texts(&o, to, from).await,
            sent(from, to),
            "{to} from {from}"
        );
    }
    for trick in [
        hostile::Trick::ForgeAck,
        hostile::Trick::Drop,
        hostile::Trick::Replay,
        hostile::Trick::CarryLate,
        hostile::Trick::Swap,
        hostile::Trick::Inject,
        hostile::Trick::Refuse,
    ] {
        assert!(double.played(trick) > 0, "{trick:?} was never played");
    }
}

/// An overlay client with no certificate of its own, checking the relay's by its key.
fn stranger_client(o: &TestOverlay) -> awc::Client {
    use overlay::trust::tls::{client_config, Leaf, OverlayVerifier};
    let dir = o.data_dir.path();
    let root = overlay::controller::trust::root_fingerprint(dir).expect("a root");
    let relay = overlay::trust::Identity::load(&dir.join("relay-relay1.key")).expect("its key");
    let pins = crate::helpers::TestPins(vec![("relay1".into(), relay.public())]);
    let verifier = OverlayVerifier::new(root, std::sync::Arc::new(pins), false);
    overlay::hop::overlay::client(
        client_config(Leaf::new(), verifier),
        std::rc::Rc::new(|_: &str| Some("127.0.0.1".to_string())),
        std::time::Duration::from_secs(10),
    )
}

#[actix_web::test]
async fn strangers_can_neither_attach_nor_send_and_are_slowed_before_any_signature() {
    use overlay::wire::relay::{AttachProof, Challenge, ATTACH_HEADER, TARGET_HEADER};
    let users = [("alice", &[][..]), ("bob", &[][..])];
    let o = spawn_overlay(behind_relay(config_for(&users), &["alice"])).await;
    let plain = o.url("relay/relay1");
    attached(&plain, &["alice"]).await;
    let tls_port = o.server("relay/relay1").tls_addr.unwrap().port();
    let base = overlay::hop::overlay::base_url(&overlay::trust::x509::tls_name("relay1"), tls_port);
    let c = stranger_client(&o);
    let status = |r: &awc::ClientResponse<_>| r.status().as_u16();

    // Never in plain HTTP.
    let r = client()
        .post(format!("{plain}/relay/v1/to/alice"))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(status(&r), 403);

    let challenge = || async {
        let mut r = c
            .get(format!("{base}/relay/v1/challenge"))
            .send()
            .await
            .unwrap();
        assert_eq!(status(&r), 200);
        r.json::<Challenge>().await.unwrap()
    };
    let attach = |proof: AttachProof| {
        let c = c.clone();
        let url = format!("{base}/relay/v1/attach");
        async move {
            let mut r = c
                .get(url)
                .insert_header((ATTACH_HEADER, proof.header()))
                .send()
                .await
                .unwrap();
            if status(&r) == 200 {
                // An attached stream: it does not end.
                return (200, String::new());
            }
            let body = r.body().await.unwrap_or_default();
            (status(&r), String::from_utf8_lossy(&body).into_owned())
        }
    };
    let stranger = overlay::trust::Identity::generate();
    let now = overlay::wire::now_ms;
    // A name the directory does not list.
    let ch = challenge().await;
    let (code, body) = attach(AttachProof::sign(&stranger, "mallory", "m1", &ch, now())).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("does not list mallory"), "{body}");
    // Alice's name, the wrong key.
    let ch = challenge().await;
    let (code, body) = attach(AttachProof::sign(&stranger, "alice", "m1", &ch, now())).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("does not hold for alice's pinned key"),
        "{body}"
    );
    // Refused proofs spend no nonce; one that held spends it (this test has alice's key file,
    // as a second process of hers would), so it is taken once.
    let alice = crate::helpers::proxy_identity(o.data_dir.path(), "alice");
    let (code, body) = attach(AttachProof::sign(&alice, "alice", "a2", &ch, now())).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = attach(AttachProof::sign(&alice, "alice", "a2", &ch, now())).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("used already"), "{body}");
    // A nonce this relay never gave.
    let made_up = Challenge {
        nonce: "made-up".into(),
        ..ch
    };
    let (code, _) = attach(AttachProof::sign(&alice, "alice", "a2", &made_up, now())).await;
    assert_eq!(code, 401);

    // Sending: signed by a key the directory does not list, or posing as bob.
    let body = r#"{"header":{}}"#;
    for (origin, expected) in [("mallory", 503), ("bob", 401)] {
        let line = overlay::trust::request::RequestLine {
            method: "POST",
            target: "/api/v1/relay",
            body: body.as_bytes(),
        };
        let sig = overlay::trust::request::sign(&stranger, &line, origin, "alice", now());
        let mut r = c
            .post(format!("{base}/relay/v1/to/alice"))
            .insert_header((TARGET_HEADER, "/api/v1/relay"))
            .insert_header((overlay::trust::request::SIGNATURE_HEADER, sig))
            .send_body(body)
            .await
            .unwrap();
        let text = r.body().await.unwrap_or_default();
        assert_eq!(status(&r), expected, "{origin}: {text:?}");
    }
    let s = relay_status(&plain).await;
    assert_eq!(s["counters"]["requests_carried"], 0, "{s}");
    assert!(s["counters"]["sends_refused"].as_u64() >= Some(2), "{s}");
    assert!(s["counters"]["attaches_refused"].as_u64() >= Some(4), "{s}");

    // One address asking too fast is refused before anything is checked.
    let asks = (0..400).map(|_| {
        let c = c.clone();
        let url = format!("{base}/relay/v1/challenge");
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let codes: Vec<u16> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    assert!(
        codes.contains(&429),
        "400 challenges at once were all answered: {codes:?}"
    );
    let s = relay_status(&plain).await;
    assert!(s["counters"]["rate_limited"].as_u64() >= Some(1), "{s}");
}

/// The controller's `GET /api/v1/proxies` (admin).
async fn proxies(o: &TestOverlay) -> Vec<Value> {
    let admin = std::fs::read_to_string(o.data_dir.path().join("admin.token")).expect("admin");
    let mut r = client()
        .get(format!("{}/api/v1/proxies", o.url("controller")))
        .bearer_auth(admin.trim())
        .send()
        .await
        .expect("the controller answers");
    r.json().limit(1 << 22).await.expect("proxies")
}

async fn entry(o: &TestOverlay, name: &str) -> Value {
    proxies(o)
        .await
        .into_iter()
        .find(|p| p["instance_name"] == name)
        .unwrap_or(Value::Null)
}

#[actix_web::test]
async fn auto_is_direct_where_the_controller_reaches_the_proxy_and_relayed_where_not() {
    let users = [("alice", &[][..]), ("bob", &[][..]), ("carol", &[][..])];
    // Bob's TLS address is one where nothing answers, as behind a NAT.
    let mut config = behind_relay(config_for(&users), &["bob"]);
    for inst in config.instances.iter_mut() {
        if ["alice", "bob"].contains(&inst.name.as_str()) {
            inst.proxy.reachable = overlay::config::Reachable::Auto;
        }
    }
    let o = spawn_overlay(config).await;
    let relay = o.url("relay/relay1");
    // Both keep a stream to the relay; the probe decides how each is reached.
    attached(&relay, &["alice", "bob"]).await;
    let version = eventually("alice direct, bob through the relay", || async {
        let (alice, bob) = (entry(&o, "alice").await, entry(&o, "bob").await);
        (alice["via"].is_null() && bob["via"] == "relay1" && alice["proxy_id"].is_string())
            .then(|| alice["current_version"].as_u64())
            .flatten()
    })
    .await;
    eventually("carol applied that directory", || async {
        (entry(&o, "carol").await["applied_version"].as_u64() >= Some(version)).then_some(())
    })
    .await;
    let to =
        |name: &str| -> Vec<String> { (1..=3).map(|i| format!("carol to {name} #{i}")).collect() };
    for i in 0..3 {
        send(&o, "carol", "alice", &to("alice")[i]).await;
        send(&o, "carol", "bob", &to("bob")[i]).await;
    }
    until_texts(&o, "alice", "carol", &to("alice")).await;
    until_texts(&o, "bob", "carol", &to("bob")).await;
    let s = relay_status(&relay).await;
    assert_eq!(
        s["counters"]["messages_carried"], 3,
        "bob's three through the relay, alice's direct: {s}"
    );
}

#[actix_web::test]
async fn a_refusal_the_relay_carries_is_signed_by_the_receiver_for_that_request() {
    use overlay::wire::relay::TARGET_HEADER;
    let users = [("alice", &[][..]), ("bob", &[][..])];
    let o = spawn_overlay(behind_relay(config_for(&users), &["alice"])).await;
    attached(&o.url("relay/relay1"), &["alice"]).await;
    let tls_port = o.server("relay/relay1").tls_addr.unwrap().port();
    let base = overlay::hop::overlay::base_url(&overlay::trust::x509::tls_name("relay1"), tls_port);
    let dir = o.data_dir.path();
    let bob = crate::helpers::proxy_identity(dir, "bob");
    let send = |body: String| {
        let line = overlay::trust::request::RequestLine {
            method: "POST",
            target: "/api/v1/relay",
            body: body.as_bytes(),
        };
        let sig =
            overlay::trust::request::sign(&bob, &line, "bob", "alice", overlay::wire::now_ms());
        let digest =
            overlay::proxy::signed_hop::request_digest(&sig, "/api/v1/relay", body.as_bytes())
                .unwrap();
        let c = stranger_client(&o);
        let url = format!("{base}/relay/v1/to/alice");
        async move {
            let mut r = c
                .post(url)
                .insert_header((TARGET_HEADER, "/api/v1/relay"))
                .insert_header((overlay::trust::request::SIGNATURE_HEADER, sig))
                .send_body(body)
                .await
                .expect("the relay answers");
            assert!(r
                .headers()
                .contains_key(overlay::wire::relay::RELAYED_HEADER));
            (r.status().as_u16(), r.body().await.unwrap(), digest)
        }
    };
    use overlay::proxy::signed_hop::refusal_signed_by;
    let alice = crate::helpers::proxy_identity(dir, "alice").public();
    // Bob's own, signed and new, refused for good (sent a month ago: a possible replay):
    // alice's answer to that very request, signed.
    let mut old = overlay::wire::data_plane::Envelope::text("bob", "alice", "from last month");
    old.sent_at_ms = overlay::wire::now_ms() - 30 * 24 * 3600 * 1000;
    let sealed = crate::helpers::sealed(&[old], &crate::helpers::seal_key(dir, "alice"), &bob);
    let (status, answer, digest) = send(serde_json::to_string(&sealed[0]).unwrap()).await;
    assert_eq!(status, 403, "{answer:?}");
    assert!(
        refusal_signed_by(&alice, &digest, status, &answer),
        "alice signed her refusal: {answer:?}"
    );
    assert!(!refusal_signed_by(
        &alice,
        "another request",
        status,
        &answer
    ));
    assert!(!refusal_signed_by(&bob.public(), &digest, status, &answer));
    // What a relay could make up (no envelope in it) is refused before anything is checked:
    // not signed, so not believed.
    let (status, answer, digest) = send(r#"{"header":{}}"#.to_string()).await;
    assert_eq!(status, 400, "{answer:?}");
    assert!(!refusal_signed_by(&alice, &digest, status, &answer));
}

/// A TLS connection of its own to relay1's one TLS port, as a proxy opens one.
async fn relay_connection(
    o: &TestOverlay,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use overlay::trust::tls::{client_config, Leaf, OverlayVerifier};
    let dir = o.data_dir.path();
    let root = overlay::controller::trust::root_fingerprint(dir).expect("a root");
    let relay = overlay::trust::Identity::load(&dir.join("relay-relay1.key")).expect("its key");
    let pins = crate::helpers::TestPins(vec![("relay1".into(), relay.public())]);
    let verifier = OverlayVerifier::new(root, std::sync::Arc::new(pins), false);
    let connector = tokio_rustls::TlsConnector::from(client_config(Leaf::new(), verifier));
    let port = o.server("relay/relay1").tls_addr.unwrap().port();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the relay listens");
    let name = overlay::trust::x509::tls_name("relay1");
    connector
        .connect(name.try_into().expect("a TLS name"), tcp)
        .await
        .expect("the relay's handshake")
}

/// Reads from `io` until what was read contains `needle` (or the connection ends): all of it.
async fn read_until<R: tokio::io::AsyncRead + Unpin>(io: &mut R, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = actix_rt::time::timeout(std::time::Duration::from_secs(30), io.read(&mut buf))
            .await
            .expect("the relay answers within 30 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A challenge asked on `io`, which stays open for more.
async fn challenge_on<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut T,
) -> overlay::wire::relay::Challenge {
    use tokio::io::AsyncWriteExt;
    io.write_all(b"GET /relay/v1/challenge HTTP/1.1\r\nhost: relay1\r\n\r\n")
        .await
        .unwrap();
    // The challenge is one line of JSON: its end is its closing brace.
    let answer = read_until(io, "}").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).expect("a challenge")
}

fn attach_head(proof: &overlay::wire::relay::AttachProof) -> String {
    format!(
        "GET /relay/v1/attach HTTP/1.1\r\nhost: relay1\r\n{}: {}\r\n\r\n",
        overlay::wire::relay::ATTACH_HEADER,
        proof.header()
    )
}

#[actix_web::test]
async fn an_attach_is_served_on_the_one_tls_port_as_a_connections_first_request_or_a_later_one() {
    use overlay::wire::relay::AttachProof;
    use tokio::io::AsyncWriteExt;
    let users = [("alice", &[][..]), ("bob", &[][..])];
    let o = spawn_overlay(behind_relay(config_for(&users), &["alice"])).await;
    let plain = o.url("relay/relay1");
    attached(&plain, &["alice"]).await;
    // This test holds alice's key file, as a second process of hers would.
    let alice = crate::helpers::proxy_identity(o.data_dir.path(), "alice");
    let now = overlay::wire::now_ms;

    // First request of a new connection: held by the front. Its answer is the stream's head,
    // then the chunked events, sealed with the key taken from rustls (the client reads them).
    let mut other = relay_connection(&o).await;
    let ch = challenge_on(&mut other).await;
    let mut lean = relay_connection(&o).await;
    let proof = AttachProof::sign(&alice, "alice", "probe", &ch, now());
    lean.write_all(attach_head(&proof).as_bytes())
        .await
        .unwrap();
    let opened = read_until(&mut lean, "event: attached").await;
    assert!(
        opened.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"),
        "{opened}"
    );
    assert!(opened.contains("transfer-encoding: chunked"), "{opened}");
    // Not actix-http's answer (which has a `date`): the front's own.
    assert!(
        !opened.to_ascii_lowercase().contains("\r\ndate:"),
        "{opened}"
    );
    // Its keep-alives come down the same way (ping_every_secs: 1).
    assert!(read_until(&mut lean, ": keep-alive")
        .await
        .contains(": keep-alive"));
    let s = relay_status(&plain).await;
    assert_eq!(s["counters"]["superseded"], 1, "{s}");
    // The proxy leaving ends the stream: alice is no longer attached.
    lean.shutdown().await.unwrap();
    drop(lean);
    eventually(
        "alice's held stream let go once its connection closed",
        || async {
            let s = relay_status(&plain).await;
            s["attached"].as_array()?.is_empty().then_some(())
        },
    )
    .await;

    // After another request on a connection kept alive: served by the routes, the same stream.
    let mut other = relay_connection(&o).await;
    let ch = challenge_on(&mut other).await;
    let proof = AttachProof::sign(&alice, "alice", "probe", &ch, now());
    other
        .write_all(attach_head(&proof).as_bytes())
        .await
        .unwrap();
    let opened = read_until(&mut other, "event: attached").await;
    assert!(opened.starts_with("HTTP/1.1 200 OK"), "{opened}");
    assert!(
        opened.to_ascii_lowercase().contains("\r\ndate:"),
        "{opened}"
    );
    attached(&plain, &["alice"]).await;

    // An attach with more behind it in the same flight, its head ending right where the
    // front's first read does (1 KiB): not one to hold leanly; actix-http reads both.
    let mut third = relay_connection(&o).await;
    let ch = challenge_on(&mut third).await;
    let proof = AttachProof::sign(&alice, "alice", "probe", &ch, now());
    let mut piped = attach_head(&proof);
    let pad = 1024 - piped.len() - "x-pad: \r\n".len();
    piped.insert_str(piped.len() - 2, &format!("x-pad: {}\r\n", "a".repeat(pad)));
    assert_eq!(piped.len(), 1024);
    piped.push_str("GET /healthz HTTP/1.1\r\nhost: relay1\r\n\r\n");
    let mut pipelining = relay_connection(&o).await;
    pipelining.write_all(piped.as_bytes()).await.unwrap();
    let opened = read_until(&mut pipelining, "event: attached").await;
    assert!(opened.starts_with("HTTP/1.1 200 OK"), "{opened}");
    assert!(
        opened.to_ascii_lowercase().contains("\r\ndate:"),
        "{opened}"
    );

    // A refusal on a new connection is the routes' refusal, in their JSON shape.
    let ch = challenge_on(&mut third).await;
    let stranger = overlay::trust::Identity::generate();
    let mut refused = relay_connection(&o).await;
    let proof = AttachProof::sign(&stranger, "alice", "m1", &ch, now());
    refused
        .write_all(attach_head(&proof).as_bytes())
        .await
        .unwrap();
    let answer = read_until(&mut refused, "\"}").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).expect("JSON");
    assert_eq!(body["status"], "error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not hold for alice's pinned key"),
        "{body}"
    );
}

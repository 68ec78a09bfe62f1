//! The relay role in-process on loopback: proxies that cannot be reached directly get their
//! messages through a relay they attach to, both ways, exactly once and in order, across a
//! relay restart; unknown keys can neither attach nor send. (Through a real NAT:
//! `chaos/nat.rs`.)

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

//! Sealed bodies between proxies (HPKE for the receiver's sealing key) and the sequences that
//! keep a conversation in order: on real proxies, with a test standing in for a carrier that
//! replays, drops, swaps or re-signs what it carries.

use awc::http::StatusCode;
use serde_json::Value;

use crate::chaos::relay::Relay;
use crate::helpers::{
    client, config_for, eventually, free_listener, overlay_client_as, proxy_identity,
    relay_over_tls, seal_key, sealed, signed_post_with, spawn_overlay, tls_url, without_tls,
    RelayAnswer, TestOverlay,
};
use crate::proxy::{signed_relay, Pair};
use crate::tls::{contains, outbox, send, texts, Tap};
use overlay::wire::data_plane::Envelope;

/// `GET {proxy}{path}`, an own-peer route (this test calls from loopback), as JSON.
async fn own_get(proxy: &str, path: &str) -> Value {
    let mut r = client()
        .get(format!("{proxy}{path}"))
        .send()
        .await
        .expect("the proxy answers");
    r.json().await.expect("a JSON answer")
}

/// This proxy's sealing keys (`GET /api/v1/seal`).
async fn seal_status(proxy: &str) -> Value {
    own_get(proxy, "/api/v1/seal").await
}

/// What this proxy sealed, opened and refused (`GET /api/v1/signatures`).
async fn counters(proxy: &str) -> Value {
    own_get(proxy, "/api/v1/signatures").await
}

/// `envelopes` signed again together by `by` (a carrier holding `by`'s key, or `by` itself).
fn resign(envelopes: &mut [overlay::wire::sealed::SealedEnvelope], by: &overlay::trust::Identity) {
    overlay::wire::data_plane::sign_together(envelopes, by, overlay::wire::sealed::SEALED_DOMAIN);
}

#[actix_web::test]
async fn a_sealed_body_moved_to_another_destination_or_resigned_by_another_proxy_is_refused() {
    let users = [("alice", &[][..]), ("bob", &[][..]), ("carol", &[][..])];
    let o = spawn_overlay(config_for(&users)).await;
    let dir = o.data_dir.path();
    let (alice, carol) = (proxy_identity(dir, "alice"), proxy_identity(dir, "carol"));
    let (bob_seal, carol_seal) = (seal_key(dir, "bob"), seal_key(dir, "carol"));

    // Alice's own envelope, as she sealed and signed it, is taken (and bob takes relays now).
    let from_alice = sealed(
        &[Envelope::text("alice", "bob", "alice's words")],
        &bob_seal,
        &alice,
    );
    let r = relay_over_tls(&o, "alice", "bob", "/api/v1/relay", &from_alice[0]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let to_bob = |me: &'static str, body: overlay::wire::sealed::SealedEnvelope| {
        let (o, key) = (&o, proxy_identity(dir, me));
        async move {
            let client = overlay_client_as(dir, Some(me), &["alice", "bob", "carol"]);
            let url = tls_url(o, "bob");
            signed_post_with(&client, &url, "/api/v1/relay", &key, me, "bob", &body).await
        }
    };
    let refused = |r: &RelayAnswer, status: u16, why: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let message = r.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{}", r.body);
        assert_eq!(r.ack, None, "nothing acknowledged");
    };

    // Alice's body sealed for carol, moved into an envelope to bob that alice signs again:
    // sealed to a key bob does not hold (worth sealing again for the right one), not stored.
    let for_carol = sealed(
        &[Envelope::text("alice", "carol", "for carol only")],
        &carol_seal,
        &alice,
    );
    let mut moved = sealed(
        &[Envelope::text("alice", "bob", "cover")],
        &bob_seal,
        &alice,
    );
    moved[0].sealed = for_carol[0].sealed.clone();
    resign(&mut moved, &alice);
    refused(
        &to_bob("alice", moved[0].clone()).await,
        503,
        "does not hold",
    );
    // The same, naming bob's key: it does not open.
    let mut renamed = moved.clone();
    renamed[0].sealed.key = bob_seal.id();
    resign(&mut renamed, &alice);
    refused(
        &to_bob("alice", renamed[0].clone()).await,
        403,
        "does not open",
    );
    // Carol takes alice's sealed body for bob and sends it as her own, signed by her.
    let mut as_carol = from_alice.clone();
    as_carol[0].header.id = overlay::wire::data_plane::MessageId::new();
    as_carol[0].header.from = "carol".into();
    as_carol[0].header.conversation = overlay::wire::data_plane::conversation_id("carol", "bob");
    resign(&mut as_carol, &carol);
    refused(
        &to_bob("carol", as_carol[0].clone()).await,
        403,
        "does not open",
    );

    eventually("bob has alice's message", || async {
        texts(&o, "bob", "alice")
            .await
            .contains(&"alice's words".to_string())
            .then_some(())
    })
    .await;
    assert_eq!(texts(&o, "bob", "alice").await, ["alice's words"]);
    assert!(texts(&o, "bob", "carol").await.is_empty());
    let c = counters(&o.url("proxy/bob")).await;
    assert_eq!(c["not_opened"], 3, "{c}");
    assert_eq!(c["opened"], 1, "{c}");
}

#[actix_web::test]
async fn a_replayed_envelope_is_refused_after_a_restart() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    let url = format!("{}/api/v1/relay", bob.url);
    let alice = pair.alice_key.clone();
    // Sealed first, never delivered (a carrier kept it): numbered below what follows.
    let kept = pair.sealed(&Envelope::text("alice", "bob", "kept back"), &alice);
    let once = pair.sealed(&Envelope::text("alice", "bob", "once"), &alice);
    let (s, v, _) = signed_relay(&url, &alice, "alice", "bob", &once).await;
    assert_eq!(
        (s, v["duplicate"].clone()),
        (200, Value::Bool(false)),
        "{v}"
    );
    eventually_stored(&pair, 1).await;
    bob.stop().await;

    let bob = pair.bob().await;
    // The same envelope again (a carrier's copy, in a request it could only replay whole; the
    // test signs a fresh one so that only the envelope is old): taken once, never twice.
    let (s, v, _) = signed_relay(&url, &alice, "alice", "bob", &once).await;
    assert_eq!((s, v["duplicate"].clone()), (200, Value::Bool(true)), "{v}");
    // The one kept back, now older than what bob took from alice since: refused for good.
    let (s, v, _) = signed_relay(&url, &alice, "alice", "bob", &kept).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("not after"), "{v}");
    // One sent before what bob remembers of the ids it took: it cannot tell it from a replay.
    let mut old = Envelope::text("alice", "bob", "from last month");
    old.sent_at_ms = overlay::wire::now_ms() - 30 * 24 * 3600 * 1000;
    let old = pair.sealed(&old, &alice);
    let (s, v, _) = signed_relay(&url, &alice, "alice", "bob", &old).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("replay"), "{v}");
    // What bob's peer holds: "once", once.
    let marker = pair.sealed(&Envelope::text("alice", "bob", "marker"), &alice);
    let (s, v, _) = signed_relay(&url, &alice, "alice", "bob", &marker).await;
    assert_eq!(s, 200, "{v}");
    eventually_stored(&pair, 2).await;
    assert_eq!(pair.bob_peer.texts(), ["once", "marker"]);
    bob.stop().await;
}

/// Waits until bob's fake peer stored `n` messages.
async fn eventually_stored(pair: &Pair, n: usize) {
    eventually(&format!("bob's peer stored {n}"), || {
        let stored = pair.bob_peer.stored_count();
        async move { (stored >= n).then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn a_dropped_middle_message_holds_later_ones_until_it_arrives_and_all_are_stored_in_order() {
    let mut pair = Pair::new(|_| {});
    let bob = pair.bob().await;
    let url = format!("{}/api/v1/relay", bob.url);
    let alice = pair.alice_key.clone();
    // One batch as alice's proxy seals it: m2 follows m1, m3 follows m2. A carrier splits it,
    // drops m2 and hands on m3.
    let es: Vec<Envelope> = ["m1", "m2", "m3"]
        .iter()
        .map(|t| Envelope::text("alice", "bob", *t))
        .collect();
    let batch = sealed(&es, &pair.bob_seal, &alice);
    let relay = |i: usize| {
        let (url, alice, e) = (url.clone(), alice.clone(), batch[i].clone());
        async move { signed_relay(&url, &alice, "alice", "bob", &e).await }
    };
    assert_eq!(relay(0).await.0, 200);
    let (s, v, ack) = relay(2).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("waits until that one arrives"),
        "{v}"
    );
    assert_eq!(ack, None, "nothing acknowledged");
    // Held, not stored: bob's peer has m1 only, and nothing waits in bob's outbox.
    eventually_stored(&pair, 1).await;
    assert_eq!(crate::proxy::outbox_queued(&bob.url).await, 0);
    assert_eq!(pair.bob_peer.texts(), ["m1"]);
    // The missing one arrives; the later one, tried again, follows it.
    assert_eq!(relay(1).await.0, 200);
    assert_eq!(relay(2).await.0, 200);
    eventually_stored(&pair, 3).await;
    assert_eq!(pair.bob_peer.texts(), ["m1", "m2", "m3"]);
    bob.stop().await;
}

#[actix_web::test]
async fn after_a_sealing_key_rotation_messages_queued_before_it_are_delivered_in_order() {
    // Bob's proxy takes TLS behind a relay the test can cut.
    let bob_tls = free_listener().local_addr().unwrap();
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), bob_tls).expect("relay starts");
    let mut config = config_for(&[("alice", &[]), ("bob", &[])]);
    config.delivery.retry_initial_ms = 50;
    config.delivery.retry_max_ms = 300;
    config.set_proxy_tls("bob", Some(bob_tls), Some(relay.addr.to_string()), None);
    let o = spawn_overlay(config).await;
    let (alice_proxy, bob_proxy) = (o.url("proxy/alice"), o.url("proxy/bob"));
    send(&o, "alice", "bob", "before").await;
    until_texts(&o, &["before"]).await;

    relay.block();
    for t in ["queued 1", "queued 2", "queued 3"] {
        send(&o, "alice", "bob", t).await;
    }
    eventually("alice's proxy holds the three, tried", || async {
        let lanes = outbox(&o, "alice").await.lanes;
        lanes
            .iter()
            .any(|l| l.lane == "bob" && l.queued == 3 && l.head_attempts > 0)
            .then_some(())
    })
    .await;

    let old = seal_status(&bob_proxy).await["id"].clone();
    let mut r = client()
        .post(format!("{bob_proxy}/api/v1/seal/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rotated: Value = r.json().await.unwrap();
    let new = rotated["id"].clone();
    assert_ne!(new, old);
    assert_eq!(rotated["retired"], serde_json::json!([old]));
    // The controller publishes it; alice's proxy applies it.
    eventually("alice's proxy seals for bob's new key", || async {
        (seal_status(&alice_proxy).await["members"]["bob"] == new).then_some(())
    })
    .await;

    relay.unblock();
    until_texts(&o, &["before", "queued 1", "queued 2", "queued 3"]).await;
    // Sealed afresh for the new key at each attempt: none needed the retired key.
    let c = counters(&bob_proxy).await;
    assert_eq!(c["opened_with_retired_key"], 0, "{c}");
    assert!(c["opened"].as_u64().unwrap() >= 4, "{c}");
}

/// Waits until bob's peer holds exactly `want` from alice, in that order.
async fn until_texts(o: &TestOverlay, want: &[&str]) {
    eventually(&format!("bob holds {want:?}"), || async {
        (texts(o, "bob", "alice").await == want).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn no_proxy_to_proxy_request_or_answer_carries_message_text() {
    // TLS off, so the test sees what sealing alone hides: every byte between the proxies
    // passes through a tap in front of each one.
    let (tap_alice, tap_bob) = (Tap::start().await, Tap::start().await);
    let users = [("alice", &[][..]), ("bob", &[][..])];
    let mut config = without_tls(config_for(&users));
    for (name, tap) in [("alice", &tap_alice), ("bob", &tap_bob)] {
        let listen = free_listener().local_addr().unwrap();
        config.set_instance_listeners(name, None, Some(listen));
        *tap.forward.borrow_mut() = Some(listen);
        let inst = config
            .instances
            .iter_mut()
            .find(|i| i.name.as_str() == name)
            .unwrap();
        inst.proxy.advertise = Some(tap.addr.to_string());
    }
    let o = spawn_overlay(config).await;
    let texts_sent = [
        ("alice", "bob", "the plum tree blooms at dawn"),
        ("alice", "bob", "meet by the old mill"),
        ("bob", "alice", "bring the blue lantern"),
    ];
    for (from, to, text) in texts_sent {
        send(&o, from, to, text).await;
    }
    for (from, to, text) in texts_sent {
        eventually(&format!("{to} has {text:?}"), || async {
            texts(&o, to, from)
                .await
                .contains(&text.to_string())
                .then_some(())
        })
        .await;
    }
    // Every connection carrying a relay (the own peers reach their proxies through the taps
    // too, with the text, as they should: that hop stays on the user's machine).
    let mut relays = 0;
    for tap in [&tap_alice, &tap_bob] {
        for (sent, answered) in tap.both_ways() {
            if !contains(&sent, b"POST /api/v1/relay") {
                continue;
            }
            relays += 1;
            assert!(
                !contains(&sent, b"/api/v1/outbox"),
                "a relay connection only"
            );
            for (_, _, text) in texts_sent {
                assert!(
                    !contains(&sent, text.as_bytes()),
                    "{text:?} went in a request"
                );
                assert!(
                    !contains(&answered, text.as_bytes()),
                    "{text:?} came back in an answer"
                );
            }
            assert!(contains(&sent, b"\"sealed\""), "a sealed envelope went");
        }
    }
    assert!(
        relays >= 2,
        "both directions went through the taps: {relays}"
    );
}

#[actix_web::test]
async fn a_sender_whose_numbers_went_back_moves_past_what_the_receiver_took() {
    let mut pair = Pair::new(|c| {
        c.delivery.retry_initial_ms = 20;
        c.delivery.retry_max_ms = 100;
    });
    let bob = pair.bob().await;
    // As if alice's proxy had numbered with its clock an hour fast: bob took that number.
    let ahead_us = overlay::wire::now_ms() * 1000 + 3_600 * 1_000_000;
    let fast = Envelope::text("alice", "bob", "from a fast clock");
    let fast = overlay::wire::sealed::seal(&[fast], || ahead_us, &pair.bob_seal, &pair.alice_key)
        .expect("sealed");
    let url = format!("{}/api/v1/relay", bob.url);
    let (s, v, _) = signed_relay(&url, &pair.alice_key, "alice", "bob", &fast[0]).await;
    assert_eq!(s, 200, "{v}");
    // Alice's proxy, numbering from its clock now, is told it is behind (409 with bob's last
    // number), numbers above it and delivers: nothing is given up.
    let alice = pair.alice().await;
    let later = Envelope::text("alice", "bob", "after the clock went back");
    crate::proxy::submit(&alice.url, &later).await;
    eventually_stored(&pair, 2).await;
    assert_eq!(
        pair.bob_peer.texts(),
        ["from a fast clock", "after the clock went back"]
    );
    alice.stop().await;
    bob.stop().await;
}

#[actix_web::test]
async fn a_sealing_key_not_yet_registered_is_not_rotated_away() {
    // The controller cannot be reached: the proxy's sealing key is not registered, and a
    // rotation now would retire the key others are still given (two would drop it).
    let dead = free_listener().local_addr().unwrap();
    let mut pair = Pair::new(|c| c.controller.listen = dead);
    let alice = pair.alice().await;
    let before = seal_status(&alice.url).await;
    let mut r = client()
        .post(format!("{}/api/v1/seal/rotate", alice.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("not registered"),
        "{v}"
    );
    assert_eq!(seal_status(&alice.url).await["id"], before["id"]);
    alice.stop().await;
}

//! Upgrades: a data dir written by the previous release opens with every message, state, AI
//! memory and queued item intact, and what was queued is delivered exactly once, in order.
//!
//! The fixtures were written by earlier releases with `tests/fixtures/make-data.sh`, which says
//! what is in them; their roles were killed with SIGKILL, so the logs hold groups to apply again
//! at open. `data-v0.1.0`: the release before the storage kit (commit 8ff3cdf). `data-v0.2.0`:
//! the release before trust (commit eccea16): no keys and no pinned names, so its proxies join
//! (`overlay up` gives them tokens) and the directory replaces their unsigned cached tables.
//! `data-v0.3.0`: the release before sealed bodies (commit 0d2d0d9): keys pinned, the overlay
//! CA and certificates, no sealing keys; its proxies make and register one, and what was queued
//! goes sealed.

use std::path::Path;
use std::time::{Duration, Instant};

use overlay::config::Config;
use serde_json::Value;

use crate::helpers::client;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Copies fixture `name` into `to`, every file 0600 as a data dir's secrets are (git keeps no
/// such mode: a fresh clone has the key files 0644, which the roles refuse).
fn copy_fixture(name: &str, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let from = Path::new(FIXTURES).join(name);
    for entry in std::fs::read_dir(from).expect("the fixture data dir") {
        let entry = entry.unwrap();
        let copy = to.join(entry.file_name());
        std::fs::copy(entry.path(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// The fixture's users on free ports, with BOT an AI endpoint nobody answers (as it was).
fn config() -> Config {
    let yaml = r#"
controller: { listen: 127.0.0.1:0, liveness: { heartbeat_every_secs: 1 } }
instances:
  - name: behrooz
    peer:  { listen: 127.0.0.1:0 }
    proxy: { listen: 127.0.0.1:0 }
  - name: alice
    peer:  { listen: 127.0.0.1:0 }
    proxy: { listen: 127.0.0.1:0 }
    auto_reply: { enabled: true, lines: ["Hi! This is Alice's automated response."] }
ai_endpoints:
  - name: BOT
    provider: openai_compatible
    base_url: http://127.0.0.1:9/v1
    model: none
delivery: { retry_initial_ms: 20, retry_max_ms: 200, attempt_timeout_secs: 2 }
"#;
    Config::parse(yaml, "upgrade test config").expect("valid")
}

/// `(sender, message, status)` of each entry of `peer`'s legacy history with `with`.
async fn history(peer: &str, with: &str) -> Vec<(String, String, String)> {
    let mut res = client()
        .get(format!("{peer}/get_chat_history/{with}"))
        .send()
        .await
        .expect("history answers");
    let rows: Vec<Value> = res.json().limit(1 << 20).await.expect("history JSON");
    rows.iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("sender"), s("message"), s("status"))
        })
        .collect()
}

fn texts(rows: &[(String, String, String)], sender: &str) -> Vec<String> {
    rows.iter()
        .filter(|(s, _, _)| s == sender)
        .map(|(_, m, _)| m.clone())
        .collect()
}

#[actix_rt::test]
async fn a_data_dir_of_the_release_before_trust_opens_intact_and_delivers_what_was_queued() {
    opens_intact_and_delivers_what_was_queued("data-v0.2.0").await;
}

#[actix_rt::test]
async fn a_data_dir_of_the_release_before_sealed_bodies_opens_intact_and_delivers_what_was_queued()
{
    opens_intact_and_delivers_what_was_queued("data-v0.3.0").await;
}

#[actix_rt::test]
async fn a_data_dir_of_the_release_before_the_storage_kit_opens_intact_and_delivers() {
    opens_intact_and_delivers_what_was_queued("data-v0.1.0").await;
}

async fn opens_intact_and_delivers_what_was_queued(fixture: &str) {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(fixture, dir.path());
    let servers = overlay::up::start_all(config(), dir.path(), 1)
        .await
        .expect("the old data dir opens");
    let url = |label: &str| {
        servers
            .iter()
            .find(|s| s.label == label)
            .map(|s| s.url())
            .unwrap()
    };
    let (behrooz, alice) = (url("peer/behrooz"), url("peer/alice"));
    let (proxy, alice_proxy) = (url("proxy/behrooz"), url("proxy/alice"));
    let handles: Vec<_> = servers
        .into_iter()
        .map(|s| {
            let h = s.handle();
            (h, actix_rt::spawn(s.serve()))
        })
        .collect();

    // What was queued in behrooz's proxy when alice went away reaches her once alice is
    // back (her new address comes with the new controller's table), exactly once, in order.
    let queued = ["queued 1", "queued 2", "queued 3"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let alice_rows = loop {
        let rows = history(&alice, "behrooz").await;
        if texts(&rows, "behrooz").len() >= 6 || Instant::now() > deadline {
            break rows;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        texts(&alice_rows, "behrooz"),
        ["before 1", "before 2", "before 3", queued[0], queued[1], queued[2]],
        "alice has every message of behrooz once, in order: {alice_rows:?}"
    );

    // behrooz's store has the conversation as it was, and the queued ones end delivered.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = history(&behrooz, "alice").await;
        let settled = rows
            .iter()
            .filter(|(s, _, _)| s == "behrooz")
            .all(|(_, _, status)| status == "delivered");
        if settled || Instant::now() > deadline {
            break rows;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        texts(&rows, "behrooz"),
        ["before 1", "before 2", "before 3", queued[0], queued[1], queued[2]],
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .filter(|(s, _, _)| s == "behrooz")
            .all(|(_, _, status)| status == "delivered"),
        "{rows:?}"
    );
    let before_upgrade = rows
        .iter()
        .position(|(_, m, _)| m == queued[0])
        .unwrap_or(rows.len());
    assert_eq!(
        texts(&rows[..before_upgrade], "alice"),
        vec!["Hi! This is Alice's automated response."; 3],
        "alice's auto-replies from before the upgrade: {rows:?}"
    );

    // What was queued went sealed, for the sealing key alice's proxy made at the upgrade.
    let mut res = client()
        .get(format!("{alice_proxy}/api/v1/signatures"))
        .send()
        .await
        .unwrap();
    let counters: Value = res.json().await.unwrap();
    assert!(counters["opened"].as_u64().unwrap() >= 3, "{counters}");
    assert!(dir.path().join("proxy-alice.seal").exists());

    // The AI conversation: behrooz's message failed, BOT's error report is kept.
    let bot = history(&behrooz, "BOT").await;
    assert_eq!(bot.len(), 2, "{bot:?}");
    assert_eq!(
        (bot[0].1.as_str(), bot[0].2.as_str()),
        ("hello bot", "failed")
    );
    assert_eq!(bot[1].0, "BOT");

    // The AI memory kept behrooz's turn: forgetting it says so.
    let mut res = client()
        .post(format!("{proxy}/api/v1/forget"))
        .send_json(&serde_json::json!({ "with": "BOT" }))
        .await
        .unwrap();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["message"], "Forgot the conversation with BOT (1 remembered turns)",
        "{answer}"
    );

    for (handle, task) in handles {
        handle.stop(true).await;
        let _ = task.await;
    }
}

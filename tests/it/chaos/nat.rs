//! A proxy behind a real NAT, in network namespaces: alice's proxy and peer at home, behind a
//! router that masquerades and lets in only what home asked for (`shared/tools/nat-lab.sh`),
//! and forgets a connection idle for 30 s; bob, the relay and the controller public. The real
//! `overlay` binary runs every role, as on separate machines.
//!
//! - With the NAT, alice cannot be reached directly (nor at the router's address: no port
//!   forward), and everything reaches her through the relay: messages both ways, receipts and
//!   auto-replies, exactly once and in order; the relay's counters equal what it carried (a
//!   port-forward would not count); the stream outlives the router's idle timeout (its
//!   keep-alives hold the mapping); the relay is killed and started again mid-run and nothing
//!   is lost.
//! - The same lab without the NAT (the control): alice is reached directly, and the relay
//!   carries nothing.
//!
//! Needs root, `ip` and `nft`. Without them the tests print why in capitals and stop; under
//! CI (`CI=true`, where they are installed and the job runs as root) they fail instead.

use std::cell::RefCell;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};

use super::cluster::{ensure_up, Kind, Role};
use super::free_ports;
use super::netlab::Lab;

/// The router's conntrack timeout for established TCP: the mapping's life without traffic.
const NAT_IDLE_SECS: u64 = 30;
/// The relay's keep-alive period (well inside the idle timeout).
const PING_SECS: u64 = 10;

/// The lab, or None (having said why) where namespaces cannot be made; under CI, a failure.
fn lab(hosts: usize) -> Option<Lab> {
    let why = match Lab::unavailable() {
        None => match Lab::create(hosts) {
            Ok(lab) => return Some(lab),
            Err(e) => format!("could not create network namespaces: {e}"),
        },
        Some(why) => why,
    };
    assert!(
        !crate::helpers::under_ci(),
        "the NAT test needs network namespaces (root, ip, nft) and CI has them: {why}"
    );
    crate::helpers::say_loudly(&format!(
        "*** NAT TEST NOT RUN: {why}. IT NEEDS ROOT WITH `ip` AND `nft` \
         (sudo cargo test --test it nat::) ***"
    ));
    None
}

/// Hosts of the lab.
const CONTROLLER: usize = 0;
const RELAY: usize = 1;
const BOB: usize = 2;
const ALICE: usize = 3;

struct World {
    lab: Lab,
    roles: RefCell<Vec<Role>>,
    dir: tempfile::TempDir,
    controller: SocketAddr,
    peer: [SocketAddr; 2],
    alice_tls: SocketAddr,
}

impl World {
    /// Alice behind the NAT (`nat`), or plainly routed and reachable (the control).
    async fn start(nat: bool) -> Option<World> {
        let lab = lab(4)?;
        if nat {
            lab.put_behind_nat(ALICE, NAT_IDLE_SECS)
                .expect("the NAT's rules load");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let p = free_ports(11);
        let at = |host: usize, i: usize| SocketAddr::new(IpAddr::V4(lab.host_addr(host)), p[i]);
        let (ctrl, ctrl_tls) = (at(CONTROLLER, 0), at(CONTROLLER, 1));
        let (relay, relay_tls) = (at(RELAY, 2), at(RELAY, 3));
        let (bob_peer, bob_proxy, bob_tls) = (at(BOB, 4), at(BOB, 5), at(BOB, 6));
        let (alice_peer, alice_proxy, alice_tls) = (at(ALICE, 7), at(ALICE, 8), at(ALICE, 9));
        let reach = if nat { ", reachable: relay" } else { "" };
        let yaml = format!(
            "controller:\n  listen: \"{ctrl}\"\n  tls_listen: \"{ctrl_tls}\"\n  liveness: {{heartbeat_every_secs: 1}}\n\
             relays:\n  - name: relay1\n    relay: {{listen: \"{relay}\", tls_listen: \"{relay_tls}\"}}\n    ping_every_secs: {PING_SECS}\n\
             instances:\n\
             \x20 - name: alice\n    peer: {{listen: \"{alice_peer}\"}}\n    proxy: {{listen: \"{alice_proxy}\", tls_listen: \"{alice_tls}\"{reach}}}\n\
             \x20   auto_reply: {{enabled: true, lines: [\"alice auto\"]}}\n\
             \x20 - name: bob\n    peer: {{listen: \"{bob_peer}\"}}\n    proxy: {{listen: \"{bob_proxy}\", tls_listen: \"{bob_tls}\"}}\n\
             \x20   auto_reply: {{enabled: true, lines: [\"bob auto\"]}}\n\
             delivery: {{retry_initial_ms: 50, retry_max_ms: 1000, attempt_timeout_secs: 5}}\n\
             server: {{pages_without_login: true, pages_plain_http: true}}\n"
        );
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let data = dir.path().join("data");
        let provision = dir.path().join("provision");
        let argv = |host: usize, args: &[String]| -> Vec<OsString> {
            let mut v: Vec<OsString> = lab.exec_in(host).into_iter().map(Into::into).collect();
            v.push(env!("CARGO_BIN_EXE_overlay").into());
            v.extend([
                "--config".into(),
                config.clone().into_os_string(),
                "--data-dir".into(),
                data.clone().into_os_string(),
            ]);
            v.extend(args.iter().map(Into::into));
            v
        };
        let trust = |name: &str| -> Vec<String> {
            vec![
                "--controller-root-file".into(),
                provision.join("root.fingerprint").display().to_string(),
                "--join-file".into(),
                provision.join(format!("{name}.join")).display().to_string(),
            ]
        };
        let log = |label: &str| dir.path().join(format!("{}.log", label.replace('/', "-")));
        let mut roles = vec![Role::new(
            "controller",
            Kind::Controller,
            ctrl,
            argv(
                CONTROLLER,
                &[
                    "controller".into(),
                    "--provision-dir".into(),
                    provision.display().to_string(),
                ],
            ),
            log("controller"),
        )];
        let mut relay_args = vec!["relay".to_string(), "--name".into(), "relay1".into()];
        relay_args.extend(trust("relay1"));
        roles.push(Role::new(
            "relay/relay1",
            Kind::Relay,
            relay,
            argv(RELAY, &relay_args),
            log("relay"),
        ));
        for (name, host, peer) in [("bob", BOB, bob_peer), ("alice", ALICE, alice_peer)] {
            // A peer with its own proxy in one process, on the user's machine.
            let mut args = vec!["peer".to_string(), "--name".into(), name.into()];
            args.extend(trust(name));
            roles.push(Role::new(
                &format!("peer/{name}"),
                Kind::Peer,
                peer,
                argv(host, &args),
                log(name),
            ));
        }
        let world = World {
            lab,
            roles: RefCell::new(roles),
            dir,
            controller: ctrl,
            peer: [alice_peer, bob_peer],
            alice_tls,
        };
        let n = world.roles.borrow().len();
        for i in 0..n {
            ensure_up(&world.roles, i, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        Some(world)
    }

    fn peer_url(&self, name: &str) -> String {
        let at = if name == "alice" {
            self.peer[0]
        } else {
            self.peer[1]
        };
        format!("http://{at}")
    }

    /// `GET /api/v1/proxies` of the controller (admin), entry of `name`.
    async fn registered(&self, name: &str) -> Option<Value> {
        let admin = std::fs::read_to_string(self.dir.path().join("data/admin.token")).ok()?;
        let mut r = http()
            .get(format!("http://{}/api/v1/proxies", self.controller))
            .bearer_auth(admin.trim())
            .send()
            .await
            .ok()?;
        let all: Vec<Value> = r.json().limit(1 << 22).await.ok()?;
        all.into_iter().find(|p| p["instance_name"] == name)
    }

    /// The relay's report, as its heartbeats bring it to the controller.
    async fn relay_report(&self) -> Option<Value> {
        Some(self.registered("relay1").await?["relay"].clone()).filter(|r| !r.is_null())
    }

    /// Waits until the relay reports `pred` true of its report.
    async fn relay_until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        crate::helpers::eventually(what, || async {
            self.relay_report().await.filter(|r| pred(r))
        })
        .await
    }

    /// Whether a TCP connection from host `from` to `to` opens (within 3 s).
    fn connects(&self, from: usize, to: SocketAddr) -> bool {
        let mut cmd: Vec<String> = self.lab.exec_in(from);
        cmd.extend([
            "timeout".into(),
            "3".into(),
            "bash".into(),
            "-c".into(),
            format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port()),
        ]);
        std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    async fn send(&self, from: &str, to: &str, text: &str) {
        let mut r = http()
            .post(format!("{}/send_message", self.peer_url(from)))
            .send_json(&json!({"peer_id": to, "message": text}))
            .await
            .expect("the peer answers");
        assert_eq!(r.status(), 200, "{:?}", r.body().await);
    }

    /// `name`'s conversation with `with`: (sender, text, status), oldest first.
    async fn history(&self, name: &str, with: &str) -> Vec<(String, String, String)> {
        let Ok(mut r) = http()
            .get(format!("{}/get_chat_history/{with}", self.peer_url(name)))
            .send()
            .await
        else {
            return Vec::new();
        };
        let v: Vec<Value> = r.json().limit(1 << 22).await.unwrap_or_default();
        v.iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("sender"), s("message"), s("status"))
            })
            .collect()
    }

    /// What `name` holds from `from`, in order.
    async fn texts(&self, name: &str, from: &str) -> Vec<String> {
        self.history(name, from)
            .await
            .into_iter()
            .filter(|(s, _, _)| s == from)
            .map(|(_, t, _)| t)
            .collect()
    }

    /// Waits until `to` holds exactly `want` from `from` (apart from `from`'s auto-replies,
    /// `auto`), and every one of `from`'s copies shows delivered (the receipt came back).
    async fn until_delivered(&self, from: &str, to: &str, want: &[String], auto: &str) {
        crate::helpers::eventually(&format!("{to} holds {want:?} from {from}"), || async {
            let got: Vec<String> = self
                .texts(to, from)
                .await
                .into_iter()
                .filter(|t| t != auto)
                .collect();
            let mine = self.history(from, to).await;
            let delivered = want.iter().all(|w| {
                mine.iter()
                    .any(|(s, t, st)| s == from && t == w && st == "delivered")
            });
            (got == want && delivered).then_some(())
        })
        .await;
    }

    /// Waits until `name` holds `n` of `from`'s auto-replies, and checks it holds no more.
    async fn auto_replies(&self, name: &str, from: &str, auto: &str, n: usize) {
        crate::helpers::eventually(&format!("{name} has {n} auto-replies"), || async {
            let got = self.texts(name, from).await;
            (got.iter().filter(|t| *t == auto).count() == n).then_some(())
        })
        .await;
    }
}

impl Drop for World {
    /// A failed run shows what each process said last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for role in self.roles.borrow().iter() {
                eprintln!("--- {} (last lines) ---\n{}", role.label, role.log_tail(40));
            }
        }
    }
}

fn http() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix} #{i}")).collect()
}

#[actix_web::test]
async fn behind_a_real_nat_a_proxy_gets_everything_through_its_relay_exactly_once() {
    let Some(w) = World::start(true).await else {
        return;
    };
    // Alice cannot be reached: not at her address, not at the router's (no port forward).
    assert!(
        !w.connects(BOB, w.alice_tls),
        "bob reached alice's TLS listener through the NAT"
    );
    let router = SocketAddr::new(IpAddr::V4(w.lab.router_addr(BOB)), w.alice_tls.port());
    assert!(
        !w.connects(BOB, router),
        "the router forwards a port to alice"
    );
    // Her entry says so, and she is attached to the relay.
    crate::helpers::eventually("alice is listed via relay1", || async {
        (w.registered("alice").await?["via"] == "relay1").then_some(())
    })
    .await;
    w.relay_until("alice is attached", |r| r["attached"] == json!(["alice"]))
        .await;

    // Both ways, with receipts and auto-replies.
    let to_alice = texts("bob to alice", 4);
    let to_bob = texts("alice to bob", 3);
    for (a, b) in to_alice.iter().zip(to_bob.iter().chain([&String::new()])) {
        w.send("bob", "alice", a).await;
        if !b.is_empty() {
            w.send("alice", "bob", b).await;
        }
    }
    w.until_delivered("bob", "alice", &to_alice, "bob auto")
        .await;
    w.until_delivered("alice", "bob", &to_bob, "alice auto")
        .await;
    w.auto_replies("bob", "alice", "alice auto", to_alice.len())
        .await;
    w.auto_replies("alice", "bob", "bob auto", to_bob.len())
        .await;
    // Into alice came bob's messages and his auto-replies, every one through the relay.
    let into_alice = (to_alice.len() + to_bob.len()) as u64;
    let report = w
        .relay_until("the relay reports what it carried", |r| {
            r["messages_carried"].as_u64() >= Some(into_alice)
        })
        .await;
    assert_eq!(
        report["messages_carried"].as_u64(),
        Some(into_alice),
        "the relay carried each message to alice once: {report}"
    );
    let attaches = report["attaches"].as_u64().unwrap();
    let first_relay = report["started_ms"].as_u64().unwrap();

    // Silent for longer than the router keeps an idle mapping: the keep-alives hold it.
    actix_rt::time::sleep(Duration::from_secs(NAT_IDLE_SECS + 5)).await;
    let after_idle = texts("after the idle time", 1);
    w.send("bob", "alice", &after_idle[0]).await;
    let all: Vec<String> = to_alice.iter().chain(&after_idle).cloned().collect();
    w.until_delivered("bob", "alice", &all, "bob auto").await;
    let report = w
        .relay_until("the relay counts it", |r| {
            r["messages_carried"].as_u64() >= Some(into_alice + 1)
        })
        .await;
    assert_eq!(
        report["attaches"].as_u64(),
        Some(attaches),
        "alice's stream lived through the idle time (no new attach): {report}"
    );

    // The relay dies and comes back; what was sent meanwhile arrives once, in order.
    w.roles.borrow_mut()[1].kill9();
    let while_down = texts("while the relay was down", 3);
    for t in &while_down {
        w.send("bob", "alice", t).await;
    }
    w.send("alice", "bob", "alice while the relay was down")
        .await;
    ensure_up(&w.roles, 1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let all: Vec<String> = all.iter().chain(&while_down).cloned().collect();
    w.until_delivered("bob", "alice", &all, "bob auto").await;
    let to_bob: Vec<String> = to_bob
        .iter()
        .cloned()
        .chain(["alice while the relay was down".to_string()])
        .collect();
    w.until_delivered("alice", "bob", &to_bob, "alice auto")
        .await;
    w.auto_replies("bob", "alice", "alice auto", all.len())
        .await;
    w.auto_replies("alice", "bob", "bob auto", to_bob.len())
        .await;
    // The new relay process carried what came after its start: the three, and bob's reply.
    let report = w
        .relay_until("the restarted relay reports", |r| {
            r["started_ms"].as_u64() > Some(first_relay)
                && r["messages_carried"].as_u64() >= Some(4)
        })
        .await;
    assert_eq!(report["messages_carried"].as_u64(), Some(4), "{report}");
}

#[actix_web::test]
async fn without_the_nat_the_same_proxy_is_reached_directly() {
    let Some(w) = World::start(false).await else {
        return;
    };
    assert!(w.connects(BOB, w.alice_tls), "alice is reachable (control)");
    let to_alice = texts("direct to alice", 3);
    for t in &to_alice {
        w.send("bob", "alice", t).await;
    }
    w.until_delivered("bob", "alice", &to_alice, "bob auto")
        .await;
    w.auto_replies("bob", "alice", "alice auto", to_alice.len())
        .await;
    let alice = w.registered("alice").await.expect("alice registered");
    assert!(alice["via"].is_null(), "{alice}");
    let report = w
        .relay_until("the relay reports", |r| r["attached"] == json!([]))
        .await;
    assert_eq!(report["messages_carried"], 0, "{report}");
}

//! The relay's figures: what carrying through a relay costs against a direct hop, and the
//! memory one relay needs per proxy attached to it.
//!
//! The memory figure holds [`ATTACHED`] streams over TLS, each attached with a signed
//! challenge for its own key, as many proxies behind NAT would: the relay (its routes, hub and
//! TLS listener, as `overlay relay` serves them) runs in this process with a directory of that
//! many members; the proxies' side runs in a child process (this binary again,
//! [`CHILD_ENV`]), so this process's resident memory is the relay's. The per-address rate
//! limit of attaches is lifted for it (they all come from 127.0.0.1); both processes raise
//! their open-file limit as the binary does, and need one file per connection.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlay::proxy::router::Published;
use overlay::trust::{Identity, PublicKey};
use overlay::wire::directory::{Directory, Role, UserEntry, UserState};
use overlay::wire::relay::{AttachProof, Challenge, ATTACH_HEADER};

/// Streams attached for the memory figure.
pub const ATTACHED: usize = 10_000;
/// Set in the child that plays the proxies: `port root-fingerprint relay-key count`.
pub const CHILD_ENV: &str = "OVERLAY_BENCH_RELAY_CHILD";

/// Member `i`'s key (the child derives the same).
fn member(i: usize) -> Identity {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Identity::from_seed(seed)
}

fn member_name(i: usize) -> String {
    format!("m{i}")
}

/// This process's resident memory, bytes.
pub fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[derive(Debug)]
struct OnlyRelay(String, PublicKey);

impl overlay::trust::tls::Pins for OnlyRelay {
    fn key_of(&self, tls_name: &str) -> Option<PublicKey> {
        (tls_name == self.0).then_some(self.1)
    }
    fn user_of(&self, _: &PublicKey) -> Option<String> {
        None
    }
    fn cas(&self) -> Option<Vec<overlay::trust::Fingerprint>> {
        None
    }
}

/// What the memory run found.
pub struct Held {
    pub attached: usize,
    pub before: u64,
    pub after: u64,
    pub took: Duration,
}

/// Serves a relay in this process, has the child attach [`ATTACHED`] members, and measures.
pub async fn hold_idle(count: usize) -> Held {
    overlay::web::raise_open_file_limit();
    let now = overlay::wire::now_ms();
    let root = Identity::generate();
    let ca_key = Identity::generate();
    let root_der = overlay::trust::x509::root_cert(&root, now - 60_000).expect("root");
    let ca_der = overlay::trust::x509::ca_cert(&root, &ca_key.public(), now - 60_000).expect("ca");
    let ca = overlay::trust::x509::Ca::new(&ca_key, ca_der, root_der).expect("CA");
    let relay = Identity::generate();
    let name = overlay::trust::x509::tls_name("relay1");
    let chain = ca
        .issue(&relay.public(), &name, now - 60_000, 3_600_000)
        .expect("leaf");
    let leaf = overlay::trust::tls::Leaf::new();
    leaf.set(&relay, chain).expect("the leaf is the relay's");
    let tls = overlay::trust::tls::server_config_without_clients(leaf);

    let mut users = BTreeMap::new();
    for i in 0..count {
        let n = member_name(i);
        users.insert(
            n.clone(),
            UserEntry {
                name: n,
                proxy_id: None,
                key: Some(member(i).public()),
                host: String::new(),
                port: 0,
                native: true,
                tls: None,
                seal: None,
                role: Role::User,
                via: Some("relay1".into()),
                state: UserState::Active,
            },
        );
    }
    let directory = Directory {
        users,
        ..Default::default()
    };
    let (_tx, published) = tokio::sync::watch::channel(Arc::new(Published {
        directory,
        checked: true,
    }));
    let hub = actix::Actor::start(overlay::relay::hub::Hub::new(
        "relay1",
        Duration::from_secs(15),
    ));
    let mut state = overlay::relay::routes::RelayState::new(
        "relay1",
        hub.clone(),
        published,
        256 * 1024,
        Duration::from_secs(15),
    );
    state.attach_limit = Arc::new(Mutex::new(overlay::trust::limiter::RateLimiter::new(
        u32::MAX,
        u32::MAX,
    )));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // The relay's own server (its TLS front included), as `overlay relay` runs it.
    let server = overlay::relay::serve(
        move || {
            let state = state.clone();
            let app = actix_web::App::new().configure({
                let state = state.clone();
                move |cfg| overlay::relay::routes::configure(cfg, state)
            });
            (app, state)
        },
        plain,
        listener,
        tls,
        1,
        1_000,
    )
    .expect("listen");
    let handle = server.handle();
    actix_rt::spawn(server);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let before = rss();
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .env(
            CHILD_ENV,
            format!("{port} {} {} {count}", root.fingerprint(), relay.public()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the proxies' process");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let attached = loop {
        let status = hub
            .send(overlay::relay::hub::Status)
            .await
            .expect("the hub answers");
        let attached = status.attached.len();
        if attached >= count || started.elapsed() > Duration::from_secs(600) {
            break attached;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    // Settled: a few keep-alives in.
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    handle.stop(false).await;
    Held {
        attached,
        before,
        after,
        took,
    }
}

/// The child: attaches `count` members to the relay at 127.0.0.1:`port` and holds their
/// streams until its stdin closes.
pub async fn child(args: &str) {
    overlay::web::raise_open_file_limit();
    let parts: Vec<&str> = args.split_whitespace().collect();
    let port: u16 = parts[0].parse().expect("port");
    let root = overlay::trust::Fingerprint::parse(parts[1]).expect("root");
    let relay_key = PublicKey::parse(parts[2]).expect("relay key");
    let count: usize = parts[3].parse().expect("count");
    let name = overlay::trust::x509::tls_name("relay1");
    let verifier = overlay::trust::tls::OverlayVerifier::new(
        root,
        Arc::new(OnlyRelay(name.clone(), relay_key)),
        false,
    );
    let config = overlay::trust::tls::client_config(overlay::trust::tls::Leaf::new(), verifier);
    let tcp = actix_tls::connect::Connector::new(actix_tls::connect::Resolver::custom(Loopback))
        .service();
    let make = move || {
        awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .connector(tcp.clone())
                    .rustls_0_23(config.clone())
                    .limit(0)
                    .timeout(Duration::from_secs(30))
                    .handshake_timeout(Duration::from_secs(30)),
            )
            .timeout(Duration::from_secs(3600))
            .finish()
    };
    let client = make();
    let base = format!("https://{name}:{port}");
    let streams = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let next = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (client, base, streams, next, make) = (
                client.clone(),
                base.clone(),
                streams.clone(),
                next.clone(),
                make.clone(),
            );
            actix_rt::spawn(async move {
                loop {
                    let i = next.get();
                    next.set(i + 1);
                    if i >= count {
                        break;
                    }
                    let mut c = client
                        .get(format!("{base}/relay/v1/challenge"))
                        .send()
                        .await
                        .expect("a challenge");
                    let ch: Challenge = c.json().await.expect("a challenge's body");
                    let proof = AttachProof::sign(
                        &member(i),
                        &member_name(i),
                        "bench",
                        &ch,
                        overlay::wire::now_ms(),
                    );
                    // A new connection per stream, as a proxy opens it: the attach holds it.
                    let res = make()
                        .get(format!("{base}/relay/v1/attach"))
                        .insert_header((ATTACH_HEADER, proof.header()))
                        .send()
                        .await
                        .expect("attached");
                    assert!(res.status().is_success(), "{:?}", res.status());
                    streams.borrow_mut().push(res);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("an attaching task");
    }
    println!("attached {count}");
    let _ = std::io::stdout().flush();
    // Hold them until the parent has measured (it closes our stdin).
    let _ = actix_web::web::block(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await;
    drop(streams);
}

struct Loopback;

impl actix_tls::connect::Resolve for Loopback {
    fn lookup<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
    ) -> futures_util::future::LocalBoxFuture<
        'a,
        Result<Vec<std::net::SocketAddr>, Box<dyn std::error::Error>>,
    > {
        Box::pin(async move { Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))]) })
    }
}

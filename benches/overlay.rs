//! `cargo bench --bench overlay`: overlay's speed and memory, printed as a table with the floors
//! of issue 7 beside each figure, and written to `bench-results/` (Markdown table + SVG chart).
//!
//! Everything runs on this machine over loopback: a real two-user overlay (controller, two
//! proxies, two peers) started in-process on free ports, driven through the peers' own HTTP API,
//! and the real `overlay up` binary for memory and start-up time. Every message counted as
//! delivered was durably committed by the sender's peer, both proxies and the receiver's peer.
//!
//! `OVERLAY_BENCH_SCALE=0.2 cargo bench --bench overlay` runs a smaller, quicker version (its
//! results go to `target/bench-results-scaled/`, never over the published ones);
//! `OVERLAY_BENCH_ONLY=delivery` runs only the delivery and latency figures, and
//! `OVERLAY_BENCH_ONLY=throughput` only the delivery at concurrency 16 (for profiling), and
//! `OVERLAY_BENCH_ONLY=relay` only the relay's figures (through a relay against direct, and
//! the memory of 10,000 proxies attached to one relay), `OVERLAY_BENCH_ONLY=relay-memory` only
//! that memory; none of them writes to
//! `bench-results/`.

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use overlay::config::Config;
use support::{percentile, Figure, UpProcess};

fn scale() -> f64 {
    std::env::var("OVERLAY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// `OVERLAY_BENCH_ONLY`: run only part of the benchmark.
fn only() -> Option<&'static str> {
    match std::env::var("OVERLAY_BENCH_ONLY").ok()?.as_str() {
        "delivery" => Some("delivery"),
        "throughput" => Some("throughput"),
        "relay" => Some("relay"),
        "relay-memory" => Some("relay-memory"),
        other => panic!(
            "OVERLAY_BENCH_ONLY={other}: expected delivery, throughput, relay or relay-memory"
        ),
    }
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(10)
}

/// A two-user overlay (alice → bob, no auto-reply) running in this process, as `overlay up`
/// would run it: controller, two proxies, two peers, each on a free port.
struct Pair {
    alice: String,
    bob: String,
    alice_proxy: String,
    bob_proxy: String,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start() -> Pair {
        Pair::start_with(false).await
    }

    /// With `relayed`, bob's proxy is reached only through a relay (its directory entry names
    /// a TLS address where nothing answers, as behind a NAT), in the same process.
    async fn start_with(relayed: bool) -> Pair {
        let mut yaml = "controller: {listen: 127.0.0.1:0}
instances:
  - {name: alice, peer: {listen: 127.0.0.1:0}, proxy: {listen: 127.0.0.1:0}}
"
        .to_string();
        if relayed {
            let dead = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            yaml.push_str(&format!(
                "  - {{name: bob, peer: {{listen: 127.0.0.1:0}}, proxy: {{listen: 127.0.0.1:0, \
                 reachable: relay, tls_advertise: \"{dead}\"}}}}\n\
                 relays:\n  - {{name: relay1, relay: {{listen: 127.0.0.1:0}}}}\n"
            ));
        } else {
            yaml.push_str(
                "  - {name: bob, peer: {listen: 127.0.0.1:0}, proxy: {listen: 127.0.0.1:0}}\n",
            );
        }
        let config = Config::parse(&yaml, "bench config").expect("bench config");
        let dir = tempfile::tempdir().expect("temp dir");
        let servers = overlay::up::start_all(config, dir.path(), 1)
            .await
            .expect("overlay starts");
        let url = |label: &str| {
            servers
                .iter()
                .find(|s| s.label == label)
                .map(|s| s.url())
                .expect("server")
        };
        let pair = Pair {
            alice: url("peer/alice"),
            bob: url("peer/bob"),
            alice_proxy: url("proxy/alice"),
            bob_proxy: url("proxy/bob"),
            _dir: dir,
        };
        for s in servers {
            actix_rt::spawn(s.serve());
        }
        pair.wait_until_routed().await;
        pair
    }

    /// What the proxies signed and verified so far (`GET /api/v1/signatures`), in words.
    async fn signatures(&self) -> String {
        let get = |url: String| async move {
            let mut r = client().get(url).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        };
        let (a, b) = (
            get(format!("{}/api/v1/signatures", self.alice_proxy)).await,
            get(format!("{}/api/v1/signatures", self.bob_proxy)).await,
        );
        match (a, b) {
            (Some(a), Some(b)) => format!(
                "bob's proxy verified {} requests and {} envelopes (refused {}, batch fallbacks \
                 {}) and opened {} sealed bodies; alice's proxy sealed {} bodies and signed {} \
                 envelopes in {} requests and verified {} acks",
                b["requests_verified"],
                b["envelopes_verified"],
                b["refused"],
                b["batch_fallbacks"],
                b["opened"].as_u64().unwrap_or(0),
                a["sealed"].as_u64().unwrap_or(0),
                a["envelopes_signed"],
                a["requests_signed"],
                a["acks_verified"]
            ),
            _ => "no signature counters (a release before signed hops)".to_string(),
        }
    }

    /// TLS connections so far: bob's proxy accepted, alice's proxy opened (`GET /api/v1/tls`);
    /// none from a release before TLS.
    async fn tls_connections(&self) -> Option<(u64, u64)> {
        let get = |url: String| async move {
            let mut r = client().get(url).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        };
        let b = get(format!("{}/api/v1/tls", self.bob_proxy)).await?;
        let a = get(format!("{}/api/v1/tls", self.alice_proxy)).await?;
        Some((b["accepted"].as_u64()?, a["opened"].as_u64()?))
    }

    /// TLS handshakes per 1,000 messages over `n` messages sent since `before`, in words.
    async fn handshakes(&self, before: Option<(u64, u64)>, n: usize) -> String {
        match (before, self.tls_connections().await) {
            (Some((b0, a0)), Some((b1, a1))) => format!(
                "TLS handshakes: {:.1} per 1,000 messages ({} accepted by bob's proxy, {} opened \
                 by alice's, for {n} messages; connections are kept)",
                (b1 - b0) as f64 * 1000.0 / n as f64,
                b1 - b0,
                a1 - a0
            ),
            _ => "TLS handshakes: none (a release before TLS: plain HTTP)".to_string(),
        }
    }

    /// Waits until alice's proxy has a table naming bob.
    async fn wait_until_routed(&self) {
        let client = client();
        for _ in 0..5000 {
            if let Ok(mut r) = client.get(format!("{}/peers", self.alice)).send().await {
                let body = r.body().await.unwrap_or_default();
                if String::from_utf8_lossy(&body).contains("\"bob\"") {
                    return;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("alice's proxy never learned a route to bob");
    }
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(256))
        .finish()
}

/// Sends one message from the peer at `from_url` to `to` through its legacy `/send_message`,
/// which answers only once the sender's proxy has it durably queued.
async fn send(client: &awc::Client, from_url: &str, to: &str, text: &str) {
    let mut res = client
        .post(format!("{from_url}/send_message"))
        .send_json(&serde_json::json!({"peer_id": to, "message": text}))
        .await
        .expect("send_message answers");
    // Read to the end, so the connection is kept for the next send (as a browser does).
    let body = res.body().await.unwrap_or_default();
    if !res.status().is_success() {
        panic!(
            "send_message failed: {} {}",
            res.status(),
            String::from_utf8_lossy(&body)
        );
    }
}

/// Arrival times, by text, of messages stored by the peer at `url` (from its live event feed).
type Arrivals = Rc<RefCell<HashMap<String, Instant>>>;

/// Subscribes to the peer's event feed and records each stored incoming message's arrival.
async fn watch(url: &str) -> Arrivals {
    let arrivals: Arrivals = Rc::new(RefCell::new(HashMap::new()));
    let res = client()
        .get(format!("{url}/api/v1/events"))
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("event feed");
    let sink = arrivals.clone();
    actix_rt::spawn(async move {
        let mut res = res;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = res.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(end) = find(&buf, b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                for line in String::from_utf8_lossy(&event).lines() {
                    let Some(data) = line.strip_prefix("data:") else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                        continue;
                    };
                    if v["type"] == "message" && v["message"]["outgoing"] == false {
                        if let Some(text) = v["message"]["text"].as_str() {
                            sink.borrow_mut().insert(text.to_string(), Instant::now());
                        }
                    }
                }
            }
        }
        panic!("the event feed closed (the watcher fell behind, or the peer stopped)");
    });
    arrivals
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Waits until every text of `texts` has arrived; returns the time the last one arrived.
async fn all_arrived(arrivals: &Arrivals, texts: &[String]) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if Instant::now() > deadline {
            let missing = texts
                .iter()
                .filter(|t| !arrivals.borrow().contains_key(*t))
                .count();
            panic!(
                "{missing} of {} messages never arrived at the receiver",
                texts.len()
            );
        }
        {
            let a = arrivals.borrow();
            if texts.iter().all(|t| a.contains_key(t)) {
                return texts.iter().map(|t| a[t]).max().expect("non-empty");
            }
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Messages per second from alice to bob, `n` messages over `concurrency` senders.
async fn throughput(
    pair: &Pair,
    arrivals: &Arrivals,
    tag: &str,
    n: usize,
    concurrency: usize,
) -> f64 {
    let texts: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let client = client();
    let start = Instant::now();
    let per = n.div_ceil(concurrency);
    let tasks: Vec<_> = texts
        .chunks(per)
        .map(|chunk| {
            let (client, alice, chunk) = (client.clone(), pair.alice.clone(), chunk.to_vec());
            actix_rt::spawn(async move {
                for t in chunk {
                    send(&client, &alice, "bob", &t).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    let last = all_arrived(arrivals, &texts).await;
    n as f64 / (last - start).as_secs_f64()
}

/// Latency from send to stored at bob, at a fixed offered load of `rate` msg/s for `n` messages.
async fn latency(pair: &Pair, arrivals: &Arrivals, rate: f64, n: usize) -> (Vec<Duration>, f64) {
    let client = client();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            actix_rt::time::sleep(due - now).await;
        }
        let text = format!("lat-{i}");
        sent.push((text.clone(), due));
        let (client, alice) = (client.clone(), pair.alice.clone());
        tasks.push(actix_rt::spawn(async move {
            send(&client, &alice, "bob", &text).await
        }));
    }
    let offered = n as f64 / start.elapsed().as_secs_f64();
    for t in tasks {
        t.await.expect("sender");
    }
    let texts: Vec<String> = sent.iter().map(|(t, _)| t.clone()).collect();
    all_arrived(arrivals, &texts).await;
    let a = arrivals.borrow();
    let mut lat: Vec<Duration> = sent.iter().map(|(t, due)| a[t] - *due).collect();
    lat.sort();
    (lat, offered)
}

/// Stores `count` messages from `from` in bob's conversation with them, directly through bob's
/// inbox (as bob's proxy would), `start` numbering them.
async fn fill(bob: &str, from: &'static str, start: usize, count: usize) {
    let client = client();
    let concurrency = 32;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, bob) = (client.clone(), bob.to_string());
            actix_rt::spawn(async move {
                let mut i = start + w;
                while i < start + count {
                    let env = overlay::wire::data_plane::Envelope::text(
                        from,
                        "bob",
                        format!("history message number {i} with a little text in it"),
                    );
                    let mut res = client
                        .post(format!("{bob}/api/v1/inbox"))
                        .send_json(&env)
                        .await
                        .expect("inbox answers");
                    // Read to the end, so the connection is kept.
                    let _ = res.body().await;
                    assert!(res.status().is_success(), "inbox: {}", res.status());
                    i += concurrency;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("filler");
    }
}

/// Median time of `runs` GETs of `url`, checking each answer is 200.
async fn median_get(url: &str, runs: usize) -> Duration {
    let client = client();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let mut res = client.get(url).send().await.expect("GET answers");
        let body = res.body().limit(512 * 1024 * 1024).await.expect("body");
        assert!(
            res.status().is_success() && !body.is_empty(),
            "GET {url}: {}",
            res.status()
        );
        times.push(t.elapsed());
    }
    times.sort();
    times[runs / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {mem_gb:.0} GiB RAM, Linux")
}

/// The same allocator as the `overlay` binary (src/main.rs), so the in-process figures are its.
/// Delivered msg/s through a relay against direct, side by side in this process (each at
/// concurrency 16 and 1, after a warm-up), and the memory of one relay holding
/// [`support::relay::ATTACHED`] attached proxies over TLS.
async fn relay_figures(figures: &mut Vec<Figure>) {
    // Memory first, while this process holds nothing else: what it grows by is the relay's.
    relay_memory(figures).await;
    if only() != Some("relay-memory") {
        relay_speed(figures).await;
    }
}

/// Delivered msg/s through a relay against direct.
async fn relay_speed(figures: &mut Vec<Figure>) {
    let n = scaled(3_000);
    let mut rates = Vec::new();
    for relayed in [false, true] {
        let pair = Pair::start_with(relayed).await;
        let arrivals = watch(&pair.bob).await;
        let tag = if relayed { "relay" } else { "direct" };
        throughput(&pair, &arrivals, &format!("{tag}-warm"), scaled(500), 16).await;
        let c16 = throughput(&pair, &arrivals, &format!("{tag}-c16"), n * 2, 16).await;
        let c1 = throughput(&pair, &arrivals, &format!("{tag}-c1"), n / 3, 1).await;
        eprintln!("  {tag}: concurrency 16 {c16:.0} msg/s, concurrency 1 {c1:.0} msg/s");
        eprintln!("  {tag}: {}", pair.signatures().await);
        rates.push((c16, c1));
    }
    let ((d16, d1), (r16, r1)) = (rates[0], rates[1]);
    for (name, direct, relayed, floor) in [
        ("concurrency 16", d16, r16, Some((">=", 50.0))),
        ("concurrency 1", d1, r1, None),
    ] {
        figures.push(Figure {
            section: "relay",
            name: format!("through a relay, msg/s at {name}, % of direct"),
            value: relayed / direct * 100.0,
            unit: "%",
            floor,
            note: format!(
                "{relayed:.0} msg/s through the relay against {direct:.0} direct: the same signed \
                 request carried down the receiver's stream, its answer posted back up"
            ),
        });
    }
}

/// The memory of one relay holding [`support::relay::ATTACHED`] attached proxies over TLS.
async fn relay_memory(figures: &mut Vec<Figure>) {
    let held = support::relay::hold_idle(support::relay::ATTACHED).await;
    let grown = held.after.saturating_sub(held.before);
    eprintln!(
        "  relay: {} proxies attached over TLS in {:.1} s; resident memory {:.1} MB before, \
         {:.1} MB after ({:.1} KB each)",
        held.attached,
        held.took.as_secs_f64(),
        held.before as f64 / 1e6,
        held.after as f64 / 1e6,
        grown as f64 / 1e3 / held.attached.max(1) as f64
    );
    figures.push(Figure {
        section: "relay",
        name: format!(
            "resident memory of one relay, {} proxies attached",
            held.attached
        ),
        value: held.after as f64 / 1e6,
        unit: "MB",
        floor: Some(("<=", 100.0)),
        note: format!(
            "each an attached stream over its own TLS connection, signed in with its own key; \
             {:.1} KB per proxy over the relay's {:.1} MB before",
            grown as f64 / 1e3 / held.attached.max(1) as f64,
            held.before as f64 / 1e6
        ),
    });
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_rt::main]
async fn main() {
    if let Ok(args) = std::env::var(support::relay::CHILD_ENV) {
        support::relay::child(&args).await;
        return;
    }
    let mut figures: Vec<Figure> = Vec::new();
    if std::env::var_os("RUST_LOG").is_some() {
        // The roles' warnings (refusals, retries), when asked for.
        overlay::logging::init();
    }
    eprintln!("overlay benchmark on {} (scale {})", machine(), scale());

    if matches!(only(), Some("relay" | "relay-memory")) {
        relay_figures(&mut figures).await;
        println!("\n{}", support::text_table(&figures));
        return;
    }

    // ---- delivery through both proxies, in-process ----
    let pair = Pair::start().await;
    let arrivals = watch(&pair.bob).await;
    throughput(&pair, &arrivals, "warmup", scaled(500), 16).await;

    fill(&pair.bob, "alice", 0, 1_000 - scaled(500).min(1000)).await;
    let n = scaled(3_000);
    if only() == Some("throughput") {
        let before = pair.tls_connections().await;
        let c16 = throughput(&pair, &arrivals, "c16", n * 3, 16).await;
        println!("concurrency 16: {c16:.0} msg/s");
        eprintln!("  signatures: {}", pair.signatures().await);
        eprintln!("  {}", pair.handshakes(before, n * 3).await);
        return;
    }
    let c1 = throughput(&pair, &arrivals, "c1", n / 3, 1).await;
    eprintln!("  concurrency 1: {c1:.0} msg/s");
    let before = pair.tls_connections().await;
    let c16_1k = throughput(&pair, &arrivals, "c16a", n * 3, 16).await;
    eprintln!("  concurrency 16 (≈1k stored): {c16_1k:.0} msg/s");
    eprintln!("  signatures: {}", pair.signatures().await);
    eprintln!("  {}", pair.handshakes(before, n * 3).await);
    figures.push(Figure {
        section: "delivery",
        name: "msg/s person to person, concurrency 1".into(),
        value: c1,
        unit: "msg/s",
        floor: None,
        note: "one message in flight: the sum of every hop's latency (4 HTTP hops; 3 log flushes in \
               turn: the sender's store beside its proxy's, the receiver's proxy, the receiver's store)"
            .into(),
    });
    figures.push(Figure {
        section: "delivery",
        name: "msg/s person to person, concurrency 16".into(),
        value: c16_1k,
        unit: "msg/s",
        floor: Some((">=", 5_000.0)),
        note: "16 in flight, each waiting for its proxy to log it (one fdatasync, ~0.3 ms under \
               load; its own store's flush runs beside) behind the hand-over already in flight: \
               the disk's flush latency more than CPU (~1.5 of 2 cores busy, ~290 µs of CPU per \
               message with the load generator)"
            .into(),
    });

    let rate = 1_000.0;
    let (lat, offered) = latency(&pair, &arrivals, rate, scaled(5_000)).await;
    eprintln!(
        "  latency at {offered:.0} msg/s offered: p50 {:?} p99 {:?}",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0)
    );
    eprintln!("  signatures: {}", pair.signatures().await);
    for (name, p, floor) in [
        ("p50", 50.0, None),
        ("p99", 99.0, Some(("<=", 20.0))),
        ("max", 100.0, None),
    ] {
        figures.push(Figure {
            section: "latency at 1,000 msg/s",
            name: format!("{name}, send → stored at receiver"),
            value: ms(percentile(&lat, p)),
            unit: "ms",
            floor,
            note: format!(
                "offered {offered:.0} msg/s open loop; 4 HTTP hops and 3 log flushes in turn; the \
                 tail: the disk's flush stalls and redb checkpoints (a durable commit every 4096 \
                 groups)"
            ),
        });
    }

    if only() == Some("delivery") {
        println!("\n{}", support::text_table(&figures));
        return;
    }

    // ---- history reads as a conversation grows (bob's with carol, grown to each size) ----
    let mut stored = 0;
    for target in [1_000usize, 10_000, 100_000] {
        fill(&pair.bob, "carol", stored, target - stored).await;
        stored = target;
        let page = median_get(
            &format!("{}/api/v1/conversations/carol/messages?limit=50", pair.bob),
            101,
        )
        .await;
        let whole = median_get(
            &format!("{}/get_chat_history/carol", pair.bob),
            if target >= 100_000 { 5 } else { 21 },
        )
        .await;
        eprintln!("  history {stored}: newest page {page:?}, whole {whole:?}");
        figures.push(Figure {
            section: "history",
            name: format!("newest page (50) of a {}k conversation", target / 1000),
            value: ms(page),
            unit: "ms",
            floor: (target == 100_000).then_some(("<=", 5.0)),
            note: "a range scan of the (conversation, seq) key: independent of history size".into(),
        });
        figures.push(Figure {
            section: "history",
            name: format!("whole history of a {}k conversation", target / 1000),
            value: ms(whole),
            unit: "ms",
            floor: None,
            note: "linear in size: JSON encoding and transfer of every message".into(),
        });
    }
    let c16_100k = throughput(&pair, &arrivals, "c16b", n * 3, 16).await;
    eprintln!("  concurrency 16 (≈100k stored): {c16_100k:.0} msg/s");
    figures.push(Figure {
        section: "delivery",
        name: "msg/s with 100k more messages stored, vs before".to_string(),
        value: c16_100k / c16_1k * 100.0,
        unit: "%",
        floor: Some((">=", 80.0)),
        note: format!("{c16_100k:.0} msg/s vs {c16_1k:.0} msg/s: B-tree inserts are O(log n)"),
    });

    // ---- the real binary: start-up and memory ----
    let mut ready = Vec::new();
    let mut idle_rss = 0.0;
    let mut load_rss = 0.0;
    for run in 0..5 {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = support::port_zero_demo_config(dir.path());
        let up = UpProcess::start(&config, &dir.path().join("data")).await;
        ready.push(up.ready_after);
        if run == 0 {
            actix_rt::time::sleep(Duration::from_millis(500)).await;
            idle_rss = support::rss_mb(up.child.id()).expect("rss").0;
            // Load: behrooz → bob (bob auto-replies), 16 senders.
            let behrooz = up.url("peer/behrooz");
            let client = client();
            let texts: Vec<String> = (0..scaled(5_000)).map(|i| format!("load-{i}")).collect();
            let tasks: Vec<_> = texts
                .chunks(texts.len().div_ceil(16))
                .map(|chunk| {
                    let (client, behrooz, chunk) =
                        (client.clone(), behrooz.clone(), chunk.to_vec());
                    actix_rt::spawn(async move {
                        for t in chunk {
                            send(&client, &behrooz, "bob", &t).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("sender");
            }
            load_rss = support::rss_mb(up.child.id()).expect("rss").1;
        }
        up.stop();
    }
    ready.sort();
    let ready_ms = ms(ready[ready.len() / 2]);
    eprintln!("  overlay up: ready in {ready_ms:.0} ms, idle {idle_rss:.1} MB, peak under load {load_rss:.1} MB");
    figures.push(Figure {
        section: "overlay up",
        name: "start to all 9 listeners answering (median of 5)".into(),
        value: ready_ms,
        unit: "ms",
        floor: Some(("<=", 1_000.0)),
        note: "process start, config parse, 9 binds, 9 stores opened (8 with their logs)".into(),
    });
    figures.push(Figure {
        section: "overlay up",
        name: "resident memory, idle".into(),
        value: idle_rss,
        unit: "MB",
        floor: Some(("<=", 50.0)),
        note: "9 servers × 1 worker thread (each role's actors on it), redb page caches, mimalloc arenas (no huge pages)".into(),
    });
    figures.push(Figure {
        section: "overlay up",
        name: "peak resident memory under load".into(),
        value: load_rss,
        unit: "MB",
        floor: None,
        note: "redb caches grow with use; connection buffers".into(),
    });

    // ---- report ----
    let table = support::text_table(&figures);
    println!("\noverlay benchmark — {}\n\n{table}", machine());
    let failed = figures.iter().filter(|f| f.passes() == Some(false)).count();
    println!(
        "{} floors met, {failed} missed",
        figures.iter().filter(|f| f.passes() == Some(true)).count()
    );

    // Only a whole run is published: a smaller one (OVERLAY_BENCH_SCALE below 1) goes beside
    // it, in target/, so it never replaces the figures the README quotes.
    let out = results_dir(scale());
    std::fs::create_dir_all(&out).expect("create the results directory");
    let mut md = format!(
        "# overlay benchmark results\n\nMachine: {}. Command: `cargo bench --bench overlay`.\n\n",
        machine()
    );
    md.push_str(&support::markdown_table(&figures));
    md.push_str("\nWhat bounds each figure:\n\n");
    for f in &figures {
        md.push_str(&format!("- {}: {}: {}\n", f.section, f.name, f.note));
    }
    std::fs::write(out.join("results.md"), md).expect("write results.md");
    std::fs::write(
        out.join("chart.svg"),
        support::svg_chart(&figures, "overlay: each figure against its floor"),
    )
    .expect("write chart.svg");
    println!(
        "written: {0}/results.md, {0}/chart.svg",
        out.strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&out)
            .display()
    );
}

/// Where a run's results go: `bench-results/` for a whole run, `target/bench-results-scaled/`
/// for a smaller one.
fn results_dir(scale: f64) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if scale >= 1.0 {
        root.join("bench-results")
    } else {
        root.join("target").join("bench-results-scaled")
    }
}

//! `GET /metrics` of every role, read with a Prometheus text-format parser
//! (`prometheus-parse`): the series exist on each role's own registry and move with real
//! traffic (a message through a relay, a destination down); a caller beyond loopback is
//! refused without the token and answered with it; and the Grafana dashboard in
//! `deploy/grafana/` names only series some role serves.

use std::collections::BTreeSet;

use prometheus_parse::{Scrape, Value};

use crate::helpers::{
    client, config_for, eventually, say_loudly, spawn_overlay, spawn_proxy, TestOverlay,
};
use crate::relay::{attached, behind_relay};
use crate::tls::{send, texts};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `GET {url}/metrics` as a loopback caller: its status and body.
async fn get_metrics(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client().get(format!("{url}/metrics"));
    for h in headers {
        req = req.insert_header(*h);
    }
    let mut r = req.send().await.expect("the role answers");
    let body = r.body().limit(8 << 20).await.expect("a body");
    (
        r.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A role's `/metrics`, parsed.
pub(crate) async fn scrape(url: &str) -> Scrape {
    let (status, text) = get_metrics(url, &[]).await;
    assert_eq!(status, 200, "{url}/metrics: {text}");
    parse(&text)
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e}\n{text}"))
}

/// The families a scrape declares (`# HELP` names), as exported.
fn families(s: &Scrape) -> BTreeSet<String> {
    s.docs.keys().cloned().collect()
}

/// The sum of `metric`'s samples whose labels include `labels` (a histogram: its count).
pub(crate) fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Polls `label`'s `/metrics` until `metric{labels}` satisfies `ok`.
async fn until(
    o: &TestOverlay,
    label: &str,
    metric: &str,
    labels: &[(&str, &str)],
    ok: fn(f64) -> bool,
) {
    let url = o.url(label);
    let what = format!("{label}: {metric}{labels:?}");
    eventually(&what, || {
        let url = url.clone();
        async move {
            let s = scrape(&url).await;
            ok(value(&s, metric, labels)).then_some(())
        }
    })
    .await;
}

/// What every role serves (once it has answered a request), and what each role adds.
const EVERY_ROLE: &[&str] = &[
    "overlay_http_requests_total",
    "overlay_http_request_duration_seconds",
];
const BY_ROLE: &[(&str, &[&str])] = &[
    (
        "controller",
        &[
            "overlay_registry_proxies",
            "overlay_table_version",
            "overlay_sse_listeners",
            "overlay_store_commit_duration_seconds",
        ],
    ),
    (
        "proxy/bob",
        &[
            "overlay_outbox_pending_messages",
            "overlay_outbox_oldest_age_seconds",
            "overlay_outbox_pending_destinations",
            "overlay_delivery_attempts_total",
            "overlay_deliveries_total",
            "overlay_delivery_expired_total",
            "overlay_dedup_duplicates_total",
            "overlay_delivery_latency_seconds",
            "overlay_store_commit_duration_seconds",
            "overlay_wal_flush_duration_seconds",
        ],
    ),
    (
        "relay/relay1",
        &[
            "overlay_relay_clients",
            "overlay_relay_dropped_total",
            "overlay_relay_carried_messages_total",
            "overlay_sse_listeners",
            "overlay_store_commit_duration_seconds",
            "overlay_wal_flush_duration_seconds",
        ],
    ),
    (
        "peer/bob",
        &[
            "overlay_sse_listeners",
            "overlay_sse_slow_consumers_total",
            "overlay_store_commit_duration_seconds",
            "overlay_wal_flush_duration_seconds",
        ],
    ),
    (
        "proxy/alice",
        &[
            "overlay_ai_requests_total",
            "overlay_ai_request_duration_seconds",
            "overlay_ai_time_to_first_token_seconds",
            "overlay_ai_tokens_total",
        ],
    ),
];

#[actix_web::test]
async fn every_roles_metrics_parse_and_move_with_a_message_through_a_relay_and_a_destination_down()
{
    let users = [("alice", &[][..]), ("bob", &[][..])];
    let mut config = behind_relay(config_for(&users), &["alice"]);
    // An AI endpoint nobody calls: its series are there, at zero, from the start.
    config.ai_endpoints.push(
        serde_yaml::from_str(
            "{name: BOT, provider: openai_compatible, model: m, base_url: 'http://127.0.0.1:9/v1', auth_style: none}",
        )
        .expect("an AI endpoint"),
    );
    let mut o = spawn_overlay(config).await;
    let relay = o.url("relay/relay1");
    attached(&relay, &["alice"]).await;

    // Every role has its own registry: its `role` label, and its own series.
    let mut all = BTreeSet::new();
    for (label, own) in BY_ROLE {
        // A scrape is a request too: the HTTP series show from the second one on.
        scrape(&o.url(label)).await;
        let s = scrape(&o.url(label)).await;
        let have = families(&s);
        for family in EVERY_ROLE.iter().chain(own.iter()) {
            assert!(have.contains(*family), "{label} lacks {family}: {have:?}");
        }
        let role = label.split('/').next().unwrap();
        assert!(
            s.samples.iter().all(|x| x.labels.get("role") == Some(role)),
            "{label}: every series says role={role}"
        );
        all.extend(have);
    }
    assert!(
        !families(&scrape(&o.url("controller")).await).contains("overlay_outbox_pending_messages"),
        "the controller's registry is its own, not the proxies'"
    );

    // A message from bob to alice, who is behind the relay.
    send(&o, "bob", "alice", "counted on the way").await;
    eventually("alice has bob's message", || async {
        (texts(&o, "alice", "bob").await.len() == 1).then_some(())
    })
    .await;
    let delivered = [("lane", "remote"), ("outcome", "delivered")];
    until(
        &o,
        "proxy/bob",
        "overlay_deliveries_total",
        &delivered,
        |v| v >= 1.0,
    )
    .await;
    let attempt = [("lane", "remote"), ("result", "delivered")];
    until(
        &o,
        "proxy/bob",
        "overlay_delivery_attempts_total",
        &attempt,
        |v| v >= 1.0,
    )
    .await;
    until(
        &o,
        "proxy/bob",
        "overlay_delivery_latency_seconds",
        &[],
        |v| v >= 1.0,
    )
    .await;
    // Alice's proxy handed it to her own peer.
    let to_peer = [("lane", "peer_inbox"), ("outcome", "delivered")];
    until(
        &o,
        "proxy/alice",
        "overlay_deliveries_total",
        &to_peer,
        |v| v >= 1.0,
    )
    .await;
    // The peer's send went through its own route and its proxy's, counted by template.
    let send_route = [
        ("route", "/send_message"),
        ("method", "POST"),
        ("code", "200"),
    ];
    until(
        &o,
        "peer/bob",
        "overlay_http_requests_total",
        &send_route,
        |v| v >= 1.0,
    )
    .await;
    // bob's peer stored it, and counts the clients of its page's event stream.
    let s = scrape(&o.url("peer/bob")).await;
    assert!(value(&s, "overlay_store_commit_duration_seconds", &[]) >= 1.0);
    assert!(value(&s, "overlay_wal_flush_duration_seconds", &[]) >= 1.0);
    let page = [("stream", "page")];
    assert_eq!(value(&s, "overlay_sse_listeners", &page), 0.0);
    let events = crate::helpers::subscribe(&format!("{}/api/v1/events", o.url("peer/bob"))).await;
    until(&o, "peer/bob", "overlay_sse_listeners", &page, |v| v == 1.0).await;
    drop(events);
    // A request its Host check refuses (a rebound name) is counted too.
    let r = client()
        .get(format!("{}/", o.url("peer/bob")))
        .insert_header(("host", "evil.example"))
        .send()
        .await
        .expect("bob's peer answers");
    assert_eq!(r.status().as_u16(), 403);
    until(
        &o,
        "peer/bob",
        "overlay_http_requests_total",
        &[("code", "403")],
        |v| v >= 1.0,
    )
    .await;
    let s = scrape(&o.url("proxy/bob")).await;
    let submitted: f64 = ["/api/v1/outbox", "/api/v1/outbox/batch"]
        .iter()
        .map(|r| {
            value(
                &s,
                "overlay_http_requests_total",
                &[("route", r), ("method", "POST"), ("code", "202")],
            )
        })
        .sum();
    let counted: Vec<String> = s
        .samples
        .iter()
        .filter(|x| x.metric == "overlay_http_requests_total")
        .map(|x| format!("{:?} {:?}", x.labels, x.value))
        .collect();
    assert!(
        submitted >= 1.0,
        "bob's proxy counted his peer's submission: {counted:#?}"
    );
    assert!(value(&s, "overlay_store_commit_duration_seconds", &[]) >= 1.0);
    assert!(value(&s, "overlay_wal_flush_duration_seconds", &[]) >= 1.0);
    // The relay carried it, and counts alice's stream.
    until(&o, "relay/relay1", "overlay_relay_clients", &[], |v| {
        v == 1.0
    })
    .await;
    let attach = [("stream", "relay_attach")];
    until(&o, "relay/relay1", "overlay_sse_listeners", &attach, |v| {
        v == 1.0
    })
    .await;
    until(
        &o,
        "relay/relay1",
        "overlay_relay_carried_messages_total",
        &[],
        |v| v >= 1.0,
    )
    .await;
    // The controller: both proxies and the relay registered and alive, their directory
    // streams open.
    let active = [("state", "active")];
    until(&o, "controller", "overlay_registry_proxies", &active, |v| {
        v >= 3.0
    })
    .await;
    let dir = [("stream", "directory")];
    until(&o, "controller", "overlay_sse_listeners", &dir, |v| {
        v >= 2.0
    })
    .await;
    until(&o, "controller", "overlay_table_version", &[], |v| v > 0.0).await;
    // Registering them was written to the controller's store, each commit timed.
    until(
        &o,
        "controller",
        "overlay_store_commit_duration_seconds",
        &[],
        |v| v >= 1.0,
    )
    .await;

    // A submit retried under the same id is stored once, and counted as a duplicate.
    let again = overlay::wire::data_plane::Envelope::text("bob", "alice", "sent twice");
    for _ in 0..2 {
        let r = client()
            .post(format!("{}/api/v1/outbox", o.url("proxy/bob")))
            .send_json(&again)
            .await
            .expect("bob's proxy answers");
        assert_eq!(r.status().as_u16(), 202);
    }
    until(
        &o,
        "proxy/bob",
        "overlay_dedup_duplicates_total",
        &[],
        |v| v == 1.0,
    )
    .await;
    // ... and handed on (the first message and this one), before alice's proxy goes down.
    until(
        &o,
        "proxy/bob",
        "overlay_deliveries_total",
        &delivered,
        |v| v >= 2.0,
    )
    .await;

    // Alice's proxy down: bob's message waits in his queue for her, and is retried.
    o.stop("proxy/alice").await;
    send(&o, "bob", "alice", "waits for alice").await;
    let alice = [("destination", "alice")];
    until(
        &o,
        "proxy/bob",
        "overlay_outbox_pending_messages",
        &alice,
        |v| v == 1.0,
    )
    .await;
    until(
        &o,
        "proxy/bob",
        "overlay_outbox_oldest_age_seconds",
        &alice,
        |v| v > 0.0,
    )
    .await;
    let retry = [("lane", "remote"), ("result", "retry")];
    until(
        &o,
        "proxy/bob",
        "overlay_delivery_attempts_total",
        &retry,
        |v| v >= 1.0,
    )
    .await;

    // The dashboard names only series some role serves.
    let dashboard = std::fs::read_to_string(format!("{ROOT}/deploy/grafana/overlay.json"))
        .expect("deploy/grafana/overlay.json");
    let json: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is valid JSON");
    let named = dashboard_series(&json);
    assert!(named.len() >= 10, "{named:?}");
    let missing: Vec<&String> = named.iter().filter(|n| !all.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard names series no role serves: {missing:?}"
    );
}

/// The series a Grafana dashboard's queries name (`overlay_…`, without a histogram's
/// `_bucket`, `_sum` or `_count`).
fn dashboard_series(json: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => names_in(e, out),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    fn names_in(expr: &str, out: &mut BTreeSet<String>) {
        let mut rest = expr;
        while let Some(at) = rest.find("overlay_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
            rest = &tail[end..];
        }
    }
    let mut out = BTreeSet::new();
    walk(json, &mut out);
    out
}

/// An address of this machine beyond loopback, if it has one (to call a listener as a
/// remote caller would).
fn beyond_loopback() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[actix_web::test]
async fn metrics_are_refused_beyond_loopback_and_under_a_rebound_name_unless_the_token_is_sent() {
    let var = format!("OVERLAY_IT_METRICS_TOKEN_{}", std::process::id());
    // The test's own variable: no other test reads it.
    std::env::set_var(&var, "scrape-me-0123456789");
    let mut config = config_for(&[("alice", &[][..])]);
    config.server.metrics_token_env = Some(var);
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy = spawn_proxy(&config, "alice", dir.path(), listener).await;
    let local = format!("http://127.0.0.1:{port}");

    // On loopback, under an address: answered, no token needed (the first request shows in
    // the second answer).
    assert_eq!(get_metrics(&local, &[]).await.0, 200);
    let (status, text) = get_metrics(&local, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(families(&parse(&text)).contains("overlay_http_requests_total"));
    assert!(!text.contains("scrape-me-0123456789"), "never the token");
    // Under a name that is not this server's (a page of another site, rebound to 127.0.0.1).
    let (status, text) = get_metrics(&local, &[("host", "evil.example")]).await;
    assert_eq!(status, 403, "{text}");
    // A wrong token is refused; the right one is answered under any name.
    let wrong = ("authorization", "Bearer guess");
    assert_eq!(get_metrics(&local, &[wrong]).await.0, 401);
    let right = ("authorization", "Bearer scrape-me-0123456789");
    let (status, _) = get_metrics(&local, &[right, ("host", "metrics.example")]).await;
    assert_eq!(status, 200);

    match beyond_loopback() {
        Some(ip) => {
            let remote = format!("http://{}", std::net::SocketAddr::new(ip, port));
            let (status, text) = get_metrics(&remote, &[]).await;
            assert_eq!(
                status, 401,
                "a caller beyond loopback without the token: {text}"
            );
            assert!(!text.contains("overlay_"), "{text}");
            let (status, text) = get_metrics(&remote, &[right]).await;
            assert_eq!(status, 200, "{text}");
            assert!(families(&parse(&text)).contains("overlay_outbox_pending_messages"));
        }
        None => say_loudly(
            "metrics: this machine has no address beyond loopback; the remote caller's case is \
             covered by the unit tests of src/web/metrics.rs only",
        ),
    }
    proxy.stop().await;
}

//! Integration tests: controller. The original's API row by row (errors included), live table
//! push, liveness, restart persistence, bad input on every endpoint, and the dashboard in a
//! headless Chromium. The original's API answers only proxies listed under `legacy_proxies`:
//! the tests that use it list the names they register at 127.0.0.1, and some check who is
//! refused (an unlisted name, a listed name from another address, unsigned calls from an
//! unlisted address) and how the dashboard labels a listed one.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use overlay::config::{Config, InstanceName, LegacyProxyConfig};
use serde_json::{json, Value};

use crate::helpers::{client, config_for, free_listener, spawn_controller, Spawned};

/// alice, bob and BOT, plus the AI endpoints BOT (OpenAI, key variable set) and GEMINI (unset);
/// the names the tests register through the original's API listed as legacy proxies at
/// 127.0.0.1 (see [`list_legacy`]).
fn config() -> Config {
    let mut c =
        crate::helpers::without_tls(config_for(&[("alice", &[]), ("bob", &[]), ("BOT", &[])]));
    c.ai_endpoints = serde_yaml::from_str(
        "- {name: BOT, provider: openai, model: gpt-4o-mini, api_key_env: PATH}\n\
         - {name: GEMINI, provider: gemini, model: gemini-2.5-flash, api_key_env: OVERLAY_TEST_UNSET_KEY_VAR}\n",
    )
    .unwrap();
    list_legacy(&mut c, &["alice", "bob", "BOT", "stranger"], "127.0.0.1");
    c
}

/// Lists `names` under `legacy_proxies` at `address`, so the original's API answers them from
/// there (users of `instances` who run the original's proxy, as these tests have them).
fn list_legacy(c: &mut Config, names: &[&str], address: &str) {
    for name in names {
        c.legacy_proxies.push(LegacyProxyConfig {
            name: InstanceName::parse(name).unwrap(),
            address: address.parse().unwrap(),
        });
    }
}

/// A config without instances whose `legacy_proxies` are `entries` (name, address), through
/// config.yaml, as an operator writes it.
fn legacy_config(entries: &[(&str, &str)]) -> Config {
    let mut yaml = String::from(
        "controller: {listen: 127.0.0.1:0}\n\
         tls: {enabled: false}\n\
         ai_endpoints:\n  - {name: BOT, provider: openai, model: m, api_key_env: PATH}\n\
         legacy_proxies:\n",
    );
    for (name, address) in entries {
        yaml.push_str(&format!("  - {{name: {name}, address: {address}}}\n"));
    }
    Config::parse(&yaml, "legacy test config").expect("a valid config")
}

struct Ctl {
    server: Spawned,
    dir: tempfile::TempDir,
}

async fn start(config: &Config) -> Ctl {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_controller(config, dir.path(), free_listener()).await;
    Ctl { server, dir }
}

impl Ctl {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    /// The admin token of this controller (its data dir, or the `ctl` dir inside it).
    fn token(&self) -> String {
        let dir = self.dir.path();
        let file = [dir.join("admin.token"), dir.join("ctl").join("admin.token")]
            .into_iter()
            .find(|f| f.exists())
            .expect("the controller wrote its admin token");
        std::fs::read_to_string(file).unwrap().trim().to_string()
    }

    /// `req` as the admin sends it (the dashboard, its feeds and every change need a login).
    fn authed(&self, req: awc::ClientRequest) -> awc::ClientRequest {
        req.insert_header(("Authorization", format!("Bearer {}", self.token())))
    }

    async fn events(&self, path: &str) -> Events {
        Events::open_as(&self.url(path), Some(&self.token())).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let mut res = self
            .authed(client().post(self.url(path)))
            .send_json(&body)
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().limit(1 << 22).await.unwrap(),
        )
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let mut res = self
            .authed(client().post(self.url(path)))
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().limit(1 << 22).await.unwrap(),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let mut res = self
            .authed(client().get(self.url(path)))
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().limit(1 << 22).await.unwrap(),
        )
    }

    async fn register(&self, id: &str, name: &str, port: u16) -> Value {
        let (status, body) = self
            .post(
                "/api/register",
                json!({"proxy_id": id, "instance_name": name, "host": "127.0.0.1",
                       "port": port, "protocol": "overlay/1"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Everything the controller holds, as `GET /api/v1/proxies` shows it.
    async fn state(&self) -> Value {
        let (status, body) = self.get("/api/v1/proxies").await;
        assert_eq!(status, 200);
        body
    }
}

fn error(message: &str) -> Value {
    json!({"status": "error", "message": message})
}

/// A minimal SSE client over awc: yields (event, data) pairs, skipping comments.
struct Events {
    body: Pin<Box<dyn Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>>>,
    buf: String,
}

impl Events {
    async fn open_as(url: &str, token: Option<&str>) -> Events {
        let mut req = client().get(url);
        if let Some(t) = token {
            req = req.insert_header(("Authorization", format!("Bearer {t}")));
        }
        let res = req
            .insert_header(("accept", "text/event-stream"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{url}");
        let ct = res.headers().get("content-type").unwrap().to_str().unwrap();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Events {
            body: Box::pin(res),
            buf: String::new(),
        }
    }

    /// The next event, or `None` if none arrives within `within` (or the stream ends).
    async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = actix_rt::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut event = "message".to_string();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((event, serde_json::from_str(&data).unwrap()));
            }
            let left = deadline.saturating_duration_since(actix_rt::time::Instant::now());
            let chunk = actix_rt::time::timeout(left, self.body.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                _ => return None,
            }
        }
    }

    /// The next event named `name` (others skipped), within `within`.
    async fn next_named(&mut self, name: &str, within: Duration) -> Option<Value> {
        let deadline = actix_rt::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(actix_rt::time::Instant::now());
            let (event, data) = self.next(left).await?;
            if event == name {
                return Some(data);
            }
        }
    }
}

const SOON: Duration = Duration::from_secs(5);

// ---- POST /api/register ----

#[actix_web::test]
async fn register_answers_success_with_the_table_of_the_other_users_and_the_ai_endpoints() {
    let ctl = start(&config()).await;
    ctl.register("bob-1", "bob", 4002).await;
    let body = ctl.register("alice-1", "alice", 4001).await;
    assert_eq!(body["status"], "success");
    assert!(body["message"].as_str().unwrap().contains("alice-1"));
    let endpoints = body["endpoints"].as_object().unwrap();
    let names: Vec<&str> = endpoints.keys().map(String::as_str).collect();
    // BOT is the AI endpoint (it takes the instance's name); alice is not in her own table.
    assert_eq!(names, ["BOT", "GEMINI", "bob"]);
    assert_eq!(
        endpoints["bob"],
        json!({"host": "127.0.0.1", "port": 4002, "native": true})
    );
    assert_eq!(endpoints["BOT"]["is_api"], true);
    assert_eq!(endpoints["BOT"]["transform_request"], "openai_chat");
    assert_eq!(endpoints["BOT"]["api_key_env"], "PATH");
}

#[actix_web::test]
async fn an_original_proxy_registers_without_protocol_and_is_not_native() {
    let ctl = start(&config()).await;
    let (status, _) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-bob", "instance_name": "bob", "host": "127.0.0.1", "port": 4002}),
        )
        .await;
    assert_eq!(status, 200);
    let body = ctl.register("p-alice", "alice", 4001).await;
    assert_eq!(
        body["endpoints"]["bob"],
        json!({"host": "127.0.0.1", "port": 4002})
    );
}

#[actix_web::test]
async fn register_accepts_the_port_as_a_numeric_string() {
    let ctl = start(&config()).await;
    let (status, body) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p1", "instance_name": "bob", "host": "10.1.2.3", "port": "4002"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctl.state().await[0]["port"], 4002);
}

#[actix_web::test]
async fn register_without_a_required_field_is_400_missing_required_fields() {
    let ctl = start(&config()).await;
    let full =
        json!({"proxy_id": "p1", "instance_name": "alice", "host": "127.0.0.1", "port": 4001});
    for field in ["proxy_id", "instance_name", "host", "port"] {
        let mut body = full.clone();
        body.as_object_mut().unwrap().remove(field);
        let (status, answer) = ctl.post("/api/register", body).await;
        assert_eq!(status, 400);
        assert_eq!(answer["status"], "error");
        assert_eq!(answer["message"], "Missing required fields");
        assert_eq!(answer["missing"], json!([field]));
    }
    assert_eq!(ctl.state().await, json!([]));
}

#[actix_web::test]
async fn register_refuses_hosts_that_are_no_host_and_look_alike_names_naming_the_field() {
    let ctl = start(&config()).await;
    let full =
        json!({"proxy_id": "p1", "instance_name": "alice", "host": "127.0.0.1", "port": 4001});
    let cases = [
        ("host", "evil.example/x"),
        ("host", "http://bob.lan"),
        ("host", "<script>"),
        ("host", "bob\u{202e}nal.evil"),
        ("host", "b\u{200b}ob.lan"),
        ("host", "\u{1f600}.example"),
        ("host", "a..b"),
        ("proxy_id", "p\u{202e}1"),
        ("proxy_id", "p\u{200b}1"),
        ("proxy_id", "p\u{1f600}"),
        ("instance_name", "ali\u{200b}ce"),
        ("instance_name", "\u{202e}ecila"),
        ("instance_name", "alice\u{1f600}"),
    ];
    for (field, value) in cases {
        let mut body = full.clone();
        body[field] = json!(value);
        let (status, answer) = ctl.post("/api/register", body).await;
        assert_eq!(status, 400, "{field} {value:?}: {answer}");
        assert_eq!(answer["status"], "error");
        let msg = answer["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{field} {value:?}: {msg}");
        assert!(
            !msg.contains('\u{202e}') && !msg.contains('\u{200b}'),
            "an invisible character is echoed: {msg:?}"
        );
    }
    assert_eq!(ctl.state().await, json!([]), "nothing was registered");
    // Names and addresses in every form our proxies and the original's send are still accepted.
    for (i, host) in [
        "10.1.2.3",
        "::1",
        "[::1]",
        "bob.lan",
        "localhost",
        "my_box-2",
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"proxy_id": format!("p{i}"), "instance_name": "bob", "host": host,
                          "port": 4002 + i});
        let (status, answer) = ctl.post("/api/register", body).await;
        assert_eq!(status, 200, "{host}: {answer}");
    }
}

#[actix_web::test]
async fn an_unknown_instance_gets_the_bot_endpoint_alone() {
    let ctl = start(&config()).await;
    // compat: the original gives an instance without its own table the BOT endpoint alone.
    let body = ctl.register("p-x", "stranger", 4009).await;
    let names: Vec<&String> = body["endpoints"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["BOT"]);
}

#[actix_web::test]
async fn a_proxy_restarted_under_a_new_id_replaces_its_old_entry() {
    let ctl = start(&config()).await;
    ctl.register("alice-old", "alice", 4001).await;
    ctl.register("bob-1", "bob", 4002).await;
    ctl.register("alice-new", "alice", 4001).await;
    let ids: Vec<Value> = ctl
        .state()
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["proxy_id"].clone())
        .collect();
    assert_eq!(ids, [json!("alice-new"), json!("bob-1")]);
    let (status, _) = ctl.get("/api/getendpoints?proxy_id=alice-old").await;
    assert_eq!(status, 404);
}

// ---- who the original's API answers: listed legacy proxies ----

#[actix_web::test]
async fn an_unlisted_name_is_refused_by_the_originals_register_and_nothing_is_registered() {
    let ctl = start(&legacy_config(&[("carol", "127.0.0.1")])).await;
    let (status, answer) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-dave", "instance_name": "dave", "host": "127.0.0.1", "port": 4004}),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["status"], "error");
    let msg = answer["message"].as_str().unwrap();
    for says in [
        "listed under `legacy_proxies` in config.yaml",
        "dave from 127.0.0.1 is not listed",
        "`- {name: dave, address: 127.0.0.1}`",
        "overlay token create --name dave",
    ] {
        assert!(msg.contains(says), "does not say {says:?}: {msg}");
    }
    assert_eq!(ctl.state().await, json!([]), "nothing was registered");
    let (status, body) = ctl.get("/api/getendpoints?proxy_id=p-dave").await;
    assert_eq!((status, body), (404, error("Unknown proxy")));
    assert!(!dashboard(&ctl).await.contains("proxy-p-dave"));
    // The listed name, from its address, is answered as the original's API always was.
    let (status, answer) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-carol", "instance_name": "carol", "host": "127.0.0.1", "port": 4003}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "success");
    assert_eq!(ctl.state().await[0]["proxy_id"], "p-carol");
}

#[actix_web::test]
async fn a_listed_name_from_another_address_is_refused() {
    // carol is listed at 192.0.2.1; the test connects from 127.0.0.1.
    let ctl = start(&legacy_config(&[("carol", "192.0.2.1")])).await;
    let (status, answer) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-carol", "instance_name": "carol", "host": "192.0.2.1", "port": 4003}),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["status"], "error");
    let msg = answer["message"].as_str().unwrap();
    assert!(msg.contains("carol from 127.0.0.1 is not listed"), "{msg}");
    assert_eq!(ctl.state().await, json!([]), "nothing was registered");
}

#[actix_web::test]
async fn unsigned_heartbeats_and_table_fetches_are_answered_only_from_a_listed_address() {
    // carol registers from 127.0.0.1 while she is listed there ...
    let listed = legacy_config(&[("carol", "127.0.0.1")]);
    let ctl = start(&listed).await;
    let (status, answer) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-carol", "instance_name": "carol", "host": "127.0.0.1", "port": 4003}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = ctl
        .post("/api/heartbeat", json!({"proxy_id": "p-carol"}))
        .await;
    assert_eq!(status, 200);
    let Ctl { server, dir } = ctl;
    server.stop().await;

    // ... then the operator lists her at another address: her record is still there, but
    // nothing unsigned from 127.0.0.1 is answered any more.
    let moved = legacy_config(&[("carol", "192.0.2.1")]);
    let ctl = Ctl {
        server: spawn_controller(&moved, dir.path(), free_listener()).await,
        dir,
    };
    let before = ctl.state().await;
    assert_eq!(before[0]["proxy_id"], "p-carol");
    for (what, (status, answer)) in [
        (
            "heartbeat",
            ctl.post("/api/heartbeat", json!({"proxy_id": "p-carol"}))
                .await,
        ),
        (
            "getendpoints",
            ctl.get("/api/getendpoints?proxy_id=p-carol").await,
        ),
        // An unknown id from an unlisted address is refused too (not told it is unknown).
        (
            "heartbeat of an unknown id",
            ctl.post("/api/heartbeat", json!({"proxy_id": "ghost"}))
                .await,
        ),
        (
            "getendpoints of an unknown id",
            ctl.get("/api/getendpoints?proxy_id=ghost").await,
        ),
    ] {
        assert_eq!(status, 403, "{what}: {answer}");
        assert_eq!(answer["status"], "error", "{what}");
        let msg = answer["message"].as_str().unwrap();
        assert!(
            msg.contains("only from addresses listed under `legacy_proxies`")
                && msg.contains("127.0.0.1 is not one"),
            "{what}: {msg}"
        );
        assert!(answer.get("endpoints").is_none(), "{what}: {answer}");
    }
    // The refusals were no sign of life.
    assert_eq!(
        ctl.state().await[0]["last_seen_ms"],
        before[0]["last_seen_ms"]
    );
}

#[actix_web::test]
async fn an_unsigned_call_speaks_only_for_the_proxy_listed_at_its_address() {
    // carol and dave are both listed, at 127.0.0.1 and 192.0.2.4; dave's record came from an
    // earlier configuration that listed him at 127.0.0.1.
    let dir = tempfile::tempdir().unwrap();
    {
        let earlier = legacy_config(&[("dave", "127.0.0.1")]);
        let ctl = spawn_controller(&earlier, dir.path(), free_listener()).await;
        let mut res = client()
            .post(format!("{}/api/register", ctl.url))
            .send_json(&json!({"proxy_id": "p-dave", "instance_name": "dave",
                               "host": "127.0.0.1", "port": 4004}))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{:?}", res.body().await);
        ctl.stop().await;
    }
    let now = legacy_config(&[("carol", "127.0.0.1"), ("dave", "192.0.2.4")]);
    let ctl = Ctl {
        server: spawn_controller(&now, dir.path(), free_listener()).await,
        dir,
    };
    // From carol's address, a heartbeat for dave's proxy is refused.
    let (status, answer) = ctl
        .post("/api/heartbeat", json!({"proxy_id": "p-dave"}))
        .await;
    assert_eq!(status, 403, "{answer}");
    let msg = answer["message"].as_str().unwrap();
    assert!(
        msg.contains("proxy p-dave is dave, which is not listed at 127.0.0.1"),
        "{msg}"
    );
    let (status, _) = ctl.get("/api/getendpoints?proxy_id=p-dave").await;
    assert_eq!(status, 403);
    // An unknown id from a listed address is the original's 404.
    let (status, body) = ctl
        .post("/api/heartbeat", json!({"proxy_id": "ghost"}))
        .await;
    assert_eq!((status, body), (404, error("Unknown proxy")));
}

#[actix_web::test]
async fn the_dashboard_labels_a_listed_legacy_proxy_unauthenticated() {
    let ctl = start(&legacy_config(&[("carol", "127.0.0.1")])).await;
    let (status, answer) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-carol", "instance_name": "carol", "host": "127.0.0.1", "port": 4003}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let html = dashboard(&ctl).await;
    let row = html
        .split("<section class=\"proxy\"")
        .find(|r| r.contains("id=\"proxy-p-carol\""))
        .unwrap_or_else(|| panic!("no row for p-carol: {html}"));
    let head = &row[..row.find("</div>").unwrap()];
    let label = head
        .find(">unauthenticated<")
        .unwrap_or_else(|| panic!("no unauthenticated label in carol's row: {head}"));
    let title = &head[..label];
    let title = &title[title.rfind("title=\"").unwrap()..];
    assert!(
        title.contains("its messages are unsigned")
            && title.contains("nothing vouches for them but the address they come from"),
        "{title}"
    );
    // And in the users table.
    let users = &html[html.find("id=\"users\"").unwrap()..];
    let carol = &users[users.find("data-name=\"carol\"").unwrap()..];
    let carol = &carol[..carol.find("</tr>").unwrap()];
    assert!(carol.contains(">unauthenticated<"), "{carol}");
}

// ---- GET /api/getendpoints ----

#[actix_web::test]
async fn getendpoints_answers_the_table_and_404_for_an_unknown_proxy() {
    let ctl = start(&config()).await;
    let registered = ctl.register("p-alice", "alice", 4001).await;
    let (status, body) = ctl.get("/api/getendpoints?proxy_id=p-alice").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "success");
    assert_eq!(body["endpoints"], registered["endpoints"]);

    let (status, body) = ctl.get("/api/getendpoints?proxy_id=nobody").await;
    assert_eq!((status, body), (404, error("Unknown proxy")));
    let (status, body) = ctl.get("/api/getendpoints").await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "Missing required fields");
}

#[actix_web::test]
async fn getendpoints_and_heartbeat_count_as_signs_of_life() {
    let ctl = start(&config()).await;
    ctl.register("p-alice", "alice", 4001).await;
    let mut dash = ctl.events("/api/v1/dashboard/stream").await;
    dash.next_named("snapshot", SOON).await.unwrap();

    let (status, _) = ctl.get("/api/getendpoints?proxy_id=p-alice").await;
    assert_eq!(status, 200);
    let seen = dash.next_named("seen", SOON).await.expect("a seen event");
    assert_eq!(seen["id"], "p-alice");

    let (status, body) = ctl
        .post("/api/heartbeat", json!({"proxy_id": "p-alice"}))
        .await;
    assert_eq!((status, &body["status"]), (200, &json!("success")));
    let seen = dash.next_named("seen", SOON).await.expect("a seen event");
    assert_eq!(seen["id"], "p-alice");
}

// ---- POST /api/heartbeat ----

#[actix_web::test]
async fn heartbeat_of_an_unknown_proxy_is_404_and_without_id_is_400() {
    let ctl = start(&config()).await;
    let (status, body) = ctl
        .post("/api/heartbeat", json!({"proxy_id": "ghost"}))
        .await;
    assert_eq!((status, body), (404, error("Unknown proxy")));
    let (status, body) = ctl.post("/api/heartbeat", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "Missing required fields");
    let (status, body) = ctl.post("/api/heartbeat", json!({"proxy_id": 7})).await;
    assert_eq!(status, 400);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("proxy_id must be a string"));
}

// ---- POST /api/update_proxy_endpoints/{id} ----

#[actix_web::test]
async fn an_edit_is_deep_merged_and_answered_with_the_merged_table() {
    let ctl = start(&config()).await;
    ctl.register("p-bob", "bob", 4002).await;
    ctl.register("p-alice", "alice", 4001).await;
    let (status, body) = ctl
        .post(
            "/api/update_proxy_endpoints/p-alice",
            json!({"endpoints": {"bob": {"port": 4102}, "BOT": {"model_config": {"temperature": 0.2}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    let e = &body["endpoints"];
    assert_eq!(e["bob"]["host"], "127.0.0.1");
    assert_eq!(e["bob"]["port"], 4102);
    assert_eq!(e["BOT"]["model_config"]["model"], "gpt-4o-mini");
    assert_eq!(e["BOT"]["model_config"]["temperature"], 0.2);
    let (_, now) = ctl.get("/api/getendpoints?proxy_id=p-alice").await;
    assert_eq!(now["endpoints"], body["endpoints"]);
    // Bob's own table is untouched.
    let (_, bob) = ctl.get("/api/getendpoints?proxy_id=p-bob").await;
    assert_eq!(
        bob["endpoints"]["BOT"]["model_config"].get("temperature"),
        None
    );
}

#[actix_web::test]
async fn an_edit_may_be_a_json_string_and_null_removes_an_entry() {
    let ctl = start(&config()).await;
    ctl.register("p-alice", "alice", 4001).await;
    let (status, body) = ctl
        .post(
            "/api/update_proxy_endpoints/p-alice",
            json!({"endpoints": "{\"carol\": {\"host\": \"10.0.0.9\", \"port\": 4444}, \"GEMINI\": null}"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["endpoints"]["carol"],
        json!({"host": "10.0.0.9", "port": 4444})
    );
    assert!(body["endpoints"].get("GEMINI").is_none());
}

#[actix_web::test]
async fn an_edit_of_an_unknown_proxy_is_404() {
    let ctl = start(&config()).await;
    let (status, body) = ctl
        .post(
            "/api/update_proxy_endpoints/ghost",
            json!({"endpoints": {}}),
        )
        .await;
    assert_eq!((status, body), (404, error("Unknown proxy")));
}

#[actix_web::test]
async fn invalid_edits_are_refused_with_a_reason_and_change_nothing() {
    let ctl = start(&config()).await;
    ctl.register("p-alice", "alice", 4001).await;
    let before = ctl.state().await;
    let cases = [
        (
            json!({"endpoints": "{not json"}),
            "endpoints is a string but not valid JSON",
        ),
        (
            json!({"endpoints": [1, 2]}),
            "endpoints must be a JSON object",
        ),
        (json!({"endpoints": 5}), "endpoints must be a JSON object"),
        (
            json!({"endpoints": {"carol": {"host": "h"}}}),
            "`carol`: port is missing",
        ),
        (
            json!({"endpoints": {"carol": {"host": "h", "port": 70000}}}),
            "port must be a whole number from 1 to 65535",
        ),
        (
            json!({"endpoints": {"carol": {"host": "", "port": 1}}}),
            "host is empty",
        ),
        (json!({"endpoints": {"carol": "h:1"}}), "must be an object"),
        (
            json!({"endpoints": {"BOT": {"transform_request": "magic"}}}),
            "transform_request `magic` is unknown",
        ),
        (
            json!({"endpoints": {"BOT": {"provider": "openia"}}}),
            "unknown variant `openia`",
        ),
        (
            json!({"endpoints": {"bad name": {"host": "h", "port": 1}}}),
            "not a valid name",
        ),
    ];
    for (edit, expected) in cases {
        let (status, body) = ctl
            .post("/api/update_proxy_endpoints/p-alice", edit.clone())
            .await;
        assert_eq!(status, 400, "{edit}: {body}");
        assert_eq!(body["status"], "error");
        let msg = body["message"].as_str().unwrap();
        assert!(msg.contains(expected), "{edit}: {msg}");
    }
    let (status, body) = ctl
        .post("/api/update_proxy_endpoints/p-alice", json!({"table": {}}))
        .await;
    assert_eq!(
        (status, &body["message"]),
        (400, &json!("Missing required fields"))
    );
    assert_eq!(ctl.state().await, before);
}

#[actix_web::test]
async fn an_edit_with_unknown_fields_is_refused_naming_them_and_only_typed_fields_are_stored() {
    let ctl = start(&config()).await;
    ctl.register("p-bob", "bob", 4002).await;
    ctl.register("p-alice", "alice", 4001).await;
    let before = ctl.state().await;
    let junk = "x".repeat(200 * 1024);
    let db = ctl.dir.path().join("controller.redb");
    let size_before = std::fs::metadata(&db).unwrap().len();
    for _ in 0..20 {
        let (status, body) = ctl
            .post(
                "/api/update_proxy_endpoints/p-alice",
                json!({"endpoints": {"BOT": {"junk": junk, "model_config": {"colour": "blue"}},
                                     "bob": {"port": 4102, "system_prompt": "hi"}}}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let msg = body["message"].as_str().unwrap();
        for field in [
            "`BOT.junk`",
            "`BOT.model_config.colour`",
            "`bob.system_prompt`",
        ] {
            assert!(msg.contains(field), "{field} not named: {msg}");
        }
        assert!(msg.len() < 2_000, "the junk is echoed: {} bytes", msg.len());
    }
    assert_eq!(ctl.state().await, before, "a refused edit changes nothing");
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        size_before,
        "refused edits do not grow the store"
    );

    // A valid edit: what is stored is its typed part, without removals of nothing.
    let (status, body) = ctl
        .post(
            "/api/update_proxy_endpoints/p-alice",
            json!({"endpoints": {"BOT": {"model_config": {"temperature": 0.3}}, "ghost": null}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let Ctl { server, dir } = ctl;
    server.stop().await;
    let store = overlay::controller::store::Store::open(dir.path())
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    let stored: Value = serde_json::from_str(&loaded.edits["alice"].to_json()).unwrap();
    assert_eq!(
        stored,
        json!({"BOT": {"model_config": {"temperature": 0.3}}})
    );
}

#[actix_web::test]
async fn an_edit_stored_with_unknown_fields_before_is_cut_to_its_typed_part_at_start() {
    use overlay::controller::{store::Store, tables::TablePatch};
    let dir = tempfile::tempdir().unwrap();
    {
        // What an earlier controller stored for alice: junk beside a real change.
        let store = Store::open(dir.path()).await.unwrap();
        let old = json!({"BOT": {"junk": "x".repeat(100_000), "model_config": {"temperature": 0.4}},
                         "ghost": null});
        store
            .put_edits("alice".into(), TablePatch::from_value(old).unwrap())
            .await
            .unwrap();
    }
    let ctl = Ctl {
        server: spawn_controller(&config(), dir.path(), free_listener()).await,
        dir,
    };
    let body = ctl.register("p-alice", "alice", 4001).await;
    assert_eq!(body["endpoints"]["BOT"]["model_config"]["temperature"], 0.4);
    let Ctl { server, dir } = ctl;
    server.stop().await;
    let loaded = Store::open(dir.path()).await.unwrap().load().await.unwrap();
    let stored: Value = serde_json::from_str(&loaded.edits["alice"].to_json()).unwrap();
    assert_eq!(
        stored,
        json!({"BOT": {"model_config": {"temperature": 0.4}}})
    );
}

#[actix_web::test]
async fn an_edit_that_puts_a_key_in_a_table_is_refused() {
    let ctl = start(&config()).await;
    ctl.register("p-alice", "alice", 4001).await;
    let before = ctl.state().await;
    for edit in [
        json!({"BOT": {"headers": {"Authorization": "Bearer sk-live-123"}}}),
        json!({"BOT": {"headers": {"x-api-key": "abc"}}}),
        json!({"GEMINI": {"params": {"key": "AIzaSyA0123456789abcdefghijklmnopqrs"}}}),
        json!({"BOT": {"api_key_env": "sk-proj-0123456789abcdefghijKLMN"}}),
    ] {
        let (status, body) = ctl
            .post(
                "/api/update_proxy_endpoints/p-alice",
                json!({"endpoints": edit}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.contains("put the key in an environment variable and name it in api_key_env"),
            "{msg}"
        );
        assert!(
            !msg.contains("sk-") && !msg.contains("AIza"),
            "the key is echoed: {msg}"
        );
    }
    assert_eq!(ctl.state().await, before);
}

// ---- POST /api/remove_proxy/{id} ----

#[actix_web::test]
async fn remove_answers_200_then_404() {
    let ctl = start(&config()).await;
    ctl.register("p-alice", "alice", 4001).await;
    let (status, body) = ctl.post("/api/remove_proxy/p-alice", json!({})).await;
    assert_eq!((status, &body["status"]), (200, &json!("success")));
    assert_eq!(ctl.state().await, json!([]));
    let (status, body) = ctl.post("/api/remove_proxy/p-alice", json!({})).await;
    assert_eq!((status, body), (404, error("Unknown proxy")));
    let (status, _) = ctl.get("/api/getendpoints?proxy_id=p-alice").await;
    assert_eq!(status, 404);
}

// ---- GET / ----

#[actix_web::test]
async fn the_dashboard_lists_proxies_and_never_shows_a_key() {
    // BOT's key variable is PATH: set in every environment, and its value must not show.
    let ctl = start(&config()).await;
    ctl.register("0123456789abcdef", "alice", 4001).await;
    let mut res = ctl.authed(client().get(ctl.url("/"))).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(
        html.contains("alice") && html.contains(">01234567<"),
        "{html}"
    );
    assert!(html.contains("127.0.0.1:4001"));
    assert!(html.contains(">Active<"));
    assert!(html.contains("<code>PATH</code>") && html.contains(">set<"));
    assert!(html.contains("OVERLAY_TEST_UNSET_KEY_VAR") && html.contains(">not set<"));
    let value = std::env::var("PATH").unwrap();
    assert!(!html.contains(&value), "a key's value is on the page");
    assert!(html.contains("/assets/dashboard.css") && html.contains("/assets/dashboard.js"));
    for asset in [
        "/assets/dashboard.css",
        "/assets/dashboard.js",
        "/assets/style.css",
    ] {
        let res = client().get(ctl.url(asset)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{asset}");
    }
}

/// The key cell of endpoint `name` in the dashboard row of proxy `proxy_id`.
fn key_cell(html: &str, proxy_id: &str, name: &str) -> String {
    let row = html
        .split("<section class=\"proxy\"")
        .find(|r| r.contains(&format!("id=\"proxy-{proxy_id}\"")))
        .unwrap_or_else(|| panic!("no row for {proxy_id}: {html}"));
    let tr = row
        .split("<tr>")
        .find(|r| r.contains(&format!(">{name}<")))
        .unwrap_or_else(|| panic!("no {name} in the row of {proxy_id}: {row}"));
    // The key is the row's last cell.
    let cell = tr.rsplit("<td").next().unwrap();
    cell.split("</td>").next().unwrap().to_string()
}

async fn dashboard(ctl: &Ctl) -> String {
    let mut res = ctl.authed(client().get(ctl.url("/"))).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    String::from_utf8(res.body().limit(1 << 22).await.unwrap().to_vec()).unwrap()
}

#[actix_web::test]
async fn the_dashboard_shows_the_keys_each_proxy_reports_not_the_controllers_environment() {
    // BOT's variable (PATH) is set in the controller's environment, GEMINI's is not; the
    // proxies say otherwise, and they are the ones calling the APIs.
    let ctl = start(&config()).await;
    let (status, body) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-alice", "instance_name": "alice", "host": "127.0.0.1",
                   "port": 4001, "protocol": "overlay/1",
                   "api_keys": {"BOT": false, "GEMINI": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // An original proxy reports nothing: the controller's environment, labelled as such.
    let (status, _) = ctl
        .post(
            "/api/register",
            json!({"proxy_id": "p-bob", "instance_name": "bob", "host": "127.0.0.1", "port": 4002}),
        )
        .await;
    assert_eq!(status, 200);

    let html = dashboard(&ctl).await;
    let cell = key_cell(&html, "p-alice", "GEMINI");
    assert!(
        cell.contains(">set<") && !cell.contains("not set"),
        "{cell}"
    );
    let cell = key_cell(&html, "p-alice", "BOT");
    assert!(
        cell.contains("<code>PATH</code>") && cell.contains(">not set<"),
        "{cell}"
    );
    let cell = key_cell(&html, "p-bob", "BOT");
    assert!(
        cell.contains(">set<") && cell.contains("controller"),
        "{cell}"
    );
    let cell = key_cell(&html, "p-bob", "GEMINI");
    assert!(
        cell.contains(">not set<") && cell.contains("controller"),
        "{cell}"
    );

    // A heartbeat carries the proxy's current report: a key set since shows at once.
    let mut dash = ctl.events("/api/v1/dashboard/stream").await;
    dash.next_named("snapshot", SOON).await.unwrap();
    let (status, _) = ctl
        .post(
            "/api/heartbeat",
            json!({"proxy_id": "p-alice", "api_keys": {"BOT": true, "GEMINI": true}}),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = actix_rt::time::Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(actix_rt::time::Instant::now());
        let row = dash
            .next_named("proxy", left)
            .await
            .expect("alice's row is re-sent with BOT set");
        if row["id"] == "p-alice" {
            let html = row["html"].as_str().unwrap();
            assert!(key_cell(html, "p-alice", "BOT").contains(">set<"), "{html}");
            break;
        }
    }
    let html = dashboard(&ctl).await;
    assert!(key_cell(&html, "p-alice", "BOT").contains(">set<"));

    // A report that is not names and booleans is refused, naming the field.
    for bad in [json!(["BOT"]), json!({"BOT": "yes"}), json!({"B OT": true})] {
        let (status, answer) = ctl
            .post(
                "/api/heartbeat",
                json!({"proxy_id": "p-alice", "api_keys": bad}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer["message"].as_str().unwrap().starts_with("api_keys"));
    }
}

#[actix_web::test]
async fn a_real_proxy_reports_which_of_its_endpoints_have_a_key_where_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("anthropic.key");
    std::fs::write(&key_file, "sk-ant-test-0123456789\n").unwrap();
    let mut c = crate::helpers::without_tls(config_for(&[("alice", &[]), ("bob", &[])]));
    c.ai_endpoints = serde_yaml::from_str(&format!(
        "- {{name: CLAUDE, provider: anthropic, model: m, api_key_file: '{}'}}\n\
         - {{name: GEMINI, provider: gemini, model: g, api_key_file: '{}'}}\n",
        key_file.display(),
        dir.path().join("missing.key").display()
    ))
    .unwrap();
    let ctl_listener = free_listener();
    c.controller.listen = ctl_listener.local_addr().unwrap();
    let proxy_listener = free_listener();
    c.set_instance_listeners("alice", None, Some(proxy_listener.local_addr().unwrap()));
    let ctl = Ctl {
        server: spawn_controller(&c, &dir.path().join("ctl"), ctl_listener).await,
        dir,
    };
    let proxy =
        // The controller's data dir: the proxy pins its root and gets a token from there.
        crate::helpers::spawn_proxy(&c, "alice", &ctl.dir.path().join("ctl"), proxy_listener).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let html = loop {
        let html = dashboard(&ctl).await;
        if html.contains("class=\"proxy\"") {
            break html;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not register"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    let id = ctl.state().await[0]["proxy_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cell = key_cell(&html, &id, "CLAUDE");
    assert!(
        cell.contains(">set<") && !cell.contains("controller"),
        "{cell}"
    );
    let cell = key_cell(&html, &id, "GEMINI");
    assert!(cell.contains(">not set<"), "{cell}");
    assert!(!html.contains("sk-ant-test"), "a key is on the page");
    proxy.stop().await;
}

// ---- bad input on every endpoint ----

#[actix_web::test]
async fn bad_bodies_get_a_legacy_error_and_change_nothing() {
    let ctl = start(&config()).await;
    ctl.register("p-alice", "alice", 4001).await;
    let before = ctl.state().await;
    let huge = {
        let mut v = b"{\"proxy_id\":\"".to_vec();
        v.extend(std::iter::repeat_n(b'x', 300 * 1024));
        v.extend(b"\"}");
        v
    };
    let paths = [
        "/api/register",
        "/api/heartbeat",
        "/api/update_proxy_endpoints/p-alice",
    ];
    for path in paths {
        let cases: [(Vec<u8>, u16, &str); 5] = [
            (b"{\"proxy_id\": ".to_vec(), 400, "invalid JSON"),
            (
                vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
                400,
                "not valid UTF-8",
            ),
            (
                b"[1,2]".to_vec(),
                400,
                "expected a JSON object body, got an array",
            ),
            (Vec::new(), 400, "got an empty body"),
            (huge.clone(), 413, "larger than the limit"),
        ];
        for (body, code, expected) in cases {
            let (status, answer) = ctl.post_raw(path, body).await;
            assert_eq!(status, code, "{path}: {answer}");
            assert_eq!(answer["status"], "error", "{path}");
            let msg = answer["message"].as_str().unwrap();
            assert!(msg.contains(expected), "{path}: {msg}");
        }
    }
    // Wrong types.
    for (body, expected) in [
        (
            json!({"proxy_id": 1, "instance_name": "a", "host": "h", "port": 1}),
            "proxy_id must be a string",
        ),
        (
            json!({"proxy_id": "a/b", "instance_name": "a", "host": "h", "port": 1}),
            "proxy_id must be at most 128 characters without `/`",
        ),
        (
            json!({"proxy_id": "p", "instance_name": "a", "host": "h", "port": "eighty"}),
            "port must be a whole number",
        ),
        (
            json!({"proxy_id": "p", "instance_name": "a", "host": "h", "port": 0}),
            "port must be a whole number",
        ),
        (
            json!({"proxy_id": "p", "instance_name": "a", "host": "h", "port": 1.5}),
            "port must be a whole number",
        ),
        (
            json!({"proxy_id": "p", "instance_name": "a/b", "host": "h", "port": 1}),
            "not a valid name",
        ),
        (
            json!({"proxy_id": "p", "instance_name": "a", "host": ["h"], "port": 1}),
            "host must be a string",
        ),
        (
            json!({"proxy_id": "p", "instance_name": "a", "host": "h", "port": 1, "protocol": 5}),
            "protocol must be",
        ),
    ] {
        let (status, answer) = ctl.post("/api/register", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        let msg = answer["message"].as_str().unwrap();
        assert!(msg.contains(expected), "{body}: {msg}");
    }
    // Non-UTF-8 in a query, a wrong method, an unknown route.
    let (status, answer) = ctl.get("/api/getendpoints?proxy_id=%FF%FE").await;
    assert!(status == 400 || status == 404, "{status}: {answer}");
    assert_eq!(answer["status"], "error");
    let (status, answer) = ctl.get("/api/register").await;
    assert_eq!(status, 405);
    assert_eq!(answer["status"], "error");
    let (status, answer) = ctl.get("/api/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(answer["status"], "error");
    assert_eq!(ctl.state().await, before);
}

// ---- live push ----

#[actix_web::test]
async fn a_subscribed_proxy_receives_an_edit_without_polling() {
    let ctl = start(&config()).await;
    ctl.register("p-alice", "alice", 4001).await;
    let mut table = ctl.events("/api/v1/proxies/p-alice/table/stream").await;
    let (event, first) = table.next(SOON).await.expect("the current table first");
    assert_eq!(event, "table");
    assert!(first["endpoints"]["BOT"].is_object());
    let v0 = first["version"].as_u64().unwrap();

    let (status, _) = ctl
        .post(
            "/api/update_proxy_endpoints/p-alice",
            json!({"endpoints": {"carol": {"host": "10.0.0.9", "port": 4444}}}),
        )
        .await;
    assert_eq!(status, 200);
    // Pushed at once: the event is already on its way when the edit is answered.
    let update = table
        .next_named("table", Duration::from_secs(1))
        .await
        .expect("the edit is pushed within a second");
    assert!(update["version"].as_u64().unwrap() > v0);
    assert_eq!(
        update["endpoints"]["carol"],
        json!({"host": "10.0.0.9", "port": 4444})
    );

    // Another user registering somewhere new changes alice's table too, and bob comes online.
    ctl.register("p-bob", "bob", 4002).await;
    let update = table.next_named("table", SOON).await.unwrap();
    assert_eq!(update["endpoints"]["bob"]["port"], 4002);
    assert_eq!(update["online"], json!(["bob"]));
}

#[actix_web::test]
async fn the_table_stream_of_an_unknown_proxy_is_404_and_removal_ends_it() {
    let ctl = start(&config()).await;
    let (status, body) = ctl.get("/api/v1/proxies/ghost/table/stream").await;
    assert_eq!((status, body), (404, error("Unknown proxy")));

    ctl.register("p-alice", "alice", 4001).await;
    let mut table = ctl.events("/api/v1/proxies/p-alice/table/stream").await;
    table.next(SOON).await.unwrap();
    ctl.post("/api/remove_proxy/p-alice", json!({})).await;
    assert!(table.next(SOON).await.is_none(), "the stream ends");
}

#[actix_web::test]
async fn a_silent_proxy_goes_stale_leaves_the_online_set_and_is_dropped() {
    let mut c = config();
    c.controller.liveness.warning_after_secs = 1;
    c.controller.liveness.stale_after_secs = 1;
    c.controller.liveness.drop_after_secs = 2;
    let ctl = start(&c).await;
    ctl.register("p-alice", "alice", 4001).await;
    ctl.register("p-bob", "bob", 4002).await;
    let mut table = ctl.events("/api/v1/proxies/p-alice/table/stream").await;
    let mut dash = ctl.events("/api/v1/dashboard/stream").await;
    let (_, first) = table.next(SOON).await.unwrap();
    assert_eq!(first["online"], json!(["bob"]));

    // Alice keeps heartbeating; bob says nothing.
    let mut bob_offline = false;
    let mut bob_stale_row = false;
    let mut bob_dropped = false;
    for _ in 0..150 {
        let (status, _) = ctl
            .post("/api/heartbeat", json!({"proxy_id": "p-alice"}))
            .await;
        assert_eq!(status, 200);
        while let Some((event, data)) = dash.next(Duration::from_millis(50)).await {
            match event.as_str() {
                "proxy" if data["id"] == "p-bob" => {
                    bob_stale_row |= data["html"].as_str().unwrap().contains(">Stale<")
                }
                "removed" if data["id"] == "p-bob" => bob_dropped = true,
                _ => {}
            }
        }
        while let Some((_, data)) = table.next(Duration::from_millis(50)).await {
            if data["online"] == json!([]) {
                bob_offline = true;
            }
        }
        if bob_offline && bob_stale_row && bob_dropped {
            break;
        }
    }
    assert!(bob_stale_row, "the dashboard shows bob Stale");
    assert!(bob_offline, "alice is told bob is offline");
    assert!(bob_dropped, "bob is dropped");
    let ids: Vec<Value> = ctl
        .state()
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["proxy_id"].clone())
        .collect();
    assert_eq!(ids, [json!("p-alice")]);
}

#[actix_web::test]
async fn the_dashboard_stream_announces_new_proxies_edits_and_removals() {
    let ctl = start(&config()).await;
    let mut dash = ctl.events("/api/v1/dashboard/stream").await;
    let snap = dash.next_named("snapshot", SOON).await.unwrap();
    assert_eq!(snap["html"], "");
    ctl.register("p-alice", "alice", 4001).await;
    let row = dash.next_named("proxy", SOON).await.unwrap();
    assert_eq!(row["id"], "p-alice");
    assert!(row["html"]
        .as_str()
        .unwrap()
        .contains("id=\"proxy-p-alice\""));
    ctl.post(
        "/api/update_proxy_endpoints/p-alice",
        json!({"endpoints": {"carol": {"host": "10.0.0.9", "port": 4444}}}),
    )
    .await;
    let row = dash.next_named("proxy", SOON).await.unwrap();
    assert!(row["html"].as_str().unwrap().contains("10.0.0.9:4444"));
    ctl.post("/api/remove_proxy/p-alice", json!({})).await;
    let gone = dash.next_named("removed", SOON).await.unwrap();
    assert_eq!(gone["id"], "p-alice");
}

// ---- persistence ----

#[actix_web::test]
async fn registrations_and_edits_survive_a_restart() {
    let c = config();
    let ctl = start(&c).await;
    ctl.register("p-alice", "alice", 4001).await;
    let (status, _) = ctl
        .post(
            "/api/update_proxy_endpoints/p-alice",
            json!({"endpoints": {"carol": {"host": "10.0.0.9", "port": 4444}}}),
        )
        .await;
    assert_eq!(status, 200);
    let Ctl { server, dir } = ctl;
    server.stop().await;

    let again = Ctl {
        server: spawn_controller(&c, dir.path(), free_listener()).await,
        dir,
    };
    let (status, body) = again.get("/api/getendpoints?proxy_id=p-alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["endpoints"]["carol"],
        json!({"host": "10.0.0.9", "port": 4444})
    );
    let state = again.state().await;
    assert_eq!(state[0]["instance_name"], "alice");
    assert_eq!(state[0]["port"], 4001);
    assert_eq!(state[0]["protocol"], "overlay/1");
}

// ---- the dashboard in a browser ----

#[actix_web::test]
async fn browser_dashboard_shows_proxies_and_a_new_one_appears_without_reload() {
    use fantoccini::{ClientBuilder, Locator};

    let Some(chromedriver) = crate::helpers::chromedriver("DASHBOARD BROWSER TEST").await else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let ctl = start(&config()).await;
    ctl.register("a11ce000-1111-2222-3333-444455556666", "alice", 10001)
        .await;
    ctl.register("b0b00000-1111-2222-3333-444455556666", "bob", 10002)
        .await;

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1500",
            format!("--user-data-dir={}", profile.path().display())
        ]}),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&chromedriver.url)
        .await
        .expect("a chromium session");
    let token = ctl.token();
    let result = async {
        // The dashboard asks for a login first: the admin token, as a person pastes it.
        browser.goto(&ctl.url("/")).await?;
        let field = browser.find(Locator::Css("input[name=token]")).await?;
        field.send_keys(&token).await?;
        browser
            .find(Locator::Css("form button[type=submit]"))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#proxies"))
            .await?;
        let rows = browser.find_all(Locator::Css("section.proxy")).await?;
        assert_eq!(rows.len(), 2);
        let text = browser.find(Locator::Css("#proxies")).await?.text().await?;
        assert!(text.contains("alice") && text.contains("bob"), "{text}");
        assert!(text.contains("a11ce000"), "{text}");
        // The page is live before the new proxy registers.
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#live.on"))
            .await?;
        browser
            .execute("window.__marker = 'no reload';", vec![])
            .await?;

        ctl.register("b07b07b0-1111-2222-3333-444455556666", "BOT", 10003)
            .await;
        let row = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("proxy-b07b07b0-1111-2222-3333-444455556666"))
            .await?;
        assert!(row.text().await?.contains("BOT"));
        let marker = browser.execute("return window.__marker;", vec![]).await?;
        assert_eq!(marker, json!("no reload"), "the page was reloaded");
        let count = browser
            .find(Locator::Id("count-proxies"))
            .await?
            .text()
            .await?;
        assert_eq!(count, "3");

        // An invalid edit is refused with the reason, and nothing changes.
        let alice = "#proxy-a11ce000-1111-2222-3333-444455556666";
        browser
            .find(Locator::Css(&format!("{alice} details.editor summary")))
            .await?
            .click()
            .await?;
        let textarea = browser
            .find(Locator::Css(&format!("{alice} textarea.table-json")))
            .await?;
        textarea.clear().await?;
        textarea.send_keys(r#"{"bob": {"port": 70000}}"#).await?;
        browser
            .find(Locator::Css(&format!("{alice} button.save")))
            .await?
            .click()
            .await?;
        let msg = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&format!("{alice} .edit-msg.bad")))
            .await?
            .text()
            .await?;
        assert!(
            msg.contains("port must be a whole number from 1 to 65535"),
            "{msg}"
        );
        assert!(msg.contains("Nothing was changed"), "{msg}");
        let (_, table) = ctl
            .get("/api/getendpoints?proxy_id=a11ce000-1111-2222-3333-444455556666")
            .await;
        assert_eq!(table["endpoints"]["bob"]["port"], 10002);
        // Keep a picture: three proxies (the new one included) and a refused edit.
        let png = browser.screenshot().await?;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dashboard.png"), png).unwrap();

        // A valid one is applied and the row shows it.
        let textarea = browser
            .find(Locator::Css(&format!("{alice} textarea.table-json")))
            .await?;
        textarea.clear().await?;
        textarea.send_keys(r#"{"bob": {"port": 10102}}"#).await?;
        browser
            .find(Locator::Css(&format!("{alice} button.save")))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&format!("{alice} .edit-msg.ok")))
            .await?;
        let (_, table) = ctl
            .get("/api/getendpoints?proxy_id=a11ce000-1111-2222-3333-444455556666")
            .await;
        assert_eq!(table["endpoints"]["bob"]["port"], 10102);

        // Remove asks first; accepting removes the row.
        browser
            .find(Locator::Css(
                "#proxy-b07b07b0-1111-2222-3333-444455556666 button.remove",
            ))
            .await?
            .click()
            .await?;
        browser.accept_alert().await?;
        for _ in 0..100 {
            let left = browser.find_all(Locator::Css("section.proxy")).await?.len();
            if left == 2 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            browser.find_all(Locator::Css("section.proxy")).await?.len(),
            2
        );
        let (status, _) = ctl
            .get("/api/getendpoints?proxy_id=b07b07b0-1111-2222-3333-444455556666")
            .await;
        assert_eq!(status, 404);

        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let _ = browser.close().await;
    result.expect("the dashboard works in a browser");
}

// ---- the dashboard's trust sections (issue #14) ----

/// The body of `GET {url}/`.
async fn dashboard_html(url: &str, admin: &str) -> String {
    let mut r = client()
        .get(format!("{url}/"))
        .insert_header(("Authorization", format!("Bearer {admin}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    String::from_utf8(r.body().limit(4 << 20).await.unwrap().to_vec()).unwrap()
}

/// The users table's row of `name` on the page.
fn user_row(html: &str, name: &str) -> String {
    let start = html
        .find(&format!("<tr class=\"user\" data-name=\"{name}\">"))
        .unwrap_or_else(|| panic!("no row for {name}: {html}"));
    let end = html[start..].find("</tr>").unwrap() + start;
    html[start..end].to_string()
}

/// Waits until `overlay up` has joined every user of `names` (they join in the background).
async fn until_all_active(url: &str, admin: &str, names: &[&str]) -> Value {
    for _ in 0..200 {
        let mut r = client()
            .get(format!("{url}/api/v1/admin/trust"))
            .insert_header(("Authorization", format!("Bearer {admin}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let active = names.iter().all(|n| {
            v["users"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["name"] == *n && u["state"] == "active" && u["key"].is_string())
        });
        if active {
            return v;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the users of `overlay up` did not all become active");
}

#[actix_rt::test]
async fn the_dashboard_shows_the_root_every_user_active_with_its_key_and_a_revocation() {
    let o = crate::helpers::spawn_overlay(config_for(&[("alice", &[]), ("bob", &[])])).await;
    let url = o.url("controller");
    let dir = o.data_dir.path();
    let admin = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let trust = until_all_active(&url, &admin, &["alice", "bob"]).await;

    let root = overlay::controller::trust::root_fingerprint(dir).unwrap();
    let html = dashboard_html(&url, &admin).await;
    assert!(
        html.contains(&format!("id=\"root-fp\">{root}</code>")),
        "{html}"
    );
    assert!(html.contains("--controller-root"));
    for name in ["alice", "bob"] {
        let row = user_row(&html, name);
        assert!(row.contains("st-active\">active<"), "{row}");
        let key = trust["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        let fp = overlay::trust::PublicKey::parse(&key)
            .unwrap()
            .fingerprint();
        assert!(
            row.contains(&format!("title=\"{fp}\">{}…<", fp.short())),
            "{row}"
        );
        assert!(row.contains(&format!("data-name=\"{name}\"")) && row.contains(">Revoke<"));
    }
    assert!(!html.contains("No pinned key"), "{html}");
    // No secret of any kind on the page.
    assert!(!html.contains(&admin));

    // Revoked through the admin API: the page shows it with its reason, and no Revoke button.
    let mut r = client()
        .post(format!("{url}/api/v1/admin/revoke"))
        .insert_header(("Authorization", format!("Bearer {admin}")))
        .send_json(&json!({"name": "bob", "reason": "laptop <lost>"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body().await);
    let html = dashboard_html(&url, &admin).await;
    let row = user_row(&html, "bob");
    assert!(row.contains("st-revoked\">revoked<"), "{row}");
    assert!(row.contains("laptop &lt;lost&gt;"), "{row}");
    assert!(!row.contains(">Revoke<"), "{row}");
    assert!(html.contains("class=\"notice bad\""), "{html}");
    assert!(user_row(&html, "alice").contains("st-active"));
    // The audit log says so.
    let audit = &html[html.find("id=\"audit\"").unwrap()..];
    assert!(
        audit.contains(">revoke<") && audit.contains(">bob<"),
        "{audit}"
    );
}

#[actix_rt::test]
async fn the_admin_api_without_the_token_is_401_and_the_page_still_shows_the_user_active() {
    let o = crate::helpers::spawn_overlay(config_for(&[("alice", &[])])).await;
    let url = o.url("controller");
    let admin = std::fs::read_to_string(o.data_dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    until_all_active(&url, &admin, &["alice"]).await;

    let body = json!({"name": "alice", "reason": "no"});
    let r = client()
        .post(format!("{url}/api/v1/admin/revoke"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(format!("{url}/api/v1/admin/revoke"))
        .insert_header(("Authorization", "Bearer not-the-token"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(format!("{url}/api/v1/admin/tokens"))
        .send_json(&json!({"name": "mallory", "ttl": "1h", "replace": false}))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let html = dashboard_html(&url, &admin).await;
    assert!(
        user_row(&html, "alice").contains("st-active\">active<"),
        "{html}"
    );
    assert!(
        !html.contains("st-revoked") && !html.contains("mallory"),
        "{html}"
    );
}

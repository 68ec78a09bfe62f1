//! Start roles in-process on port 0 with a temporary data dir; used by every integration test.
//!
//! - [`config_for`]: a config with the given users, every listener on `127.0.0.1:0`.
//! - [`spawn_overlay`]: the whole of a config (controller, proxies, peers), as `overlay up` runs it.
//! - [`spawn_controller`], [`spawn_proxy`], [`spawn_peer`]: one role at a time.
//! - [`Spawned`]: a running server: its URL, and `stop()` to take it down mid-test.
//! - [`subscribe`] / [`SseReader`]: a Server-Sent Events feed, event by event.
//! - [`run_binary`]: the real `overlay` binary, for the cases where the process is the subject.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;

use overlay::config::Config;
use overlay::web::Running;

/// A config with `users` (name, auto-reply lines), controller and all listeners on port 0.
pub fn config_for(users: &[(&str, &[&str])]) -> Config {
    let mut yaml = String::from(
        "controller:\n  listen: 127.0.0.1:0\n  liveness: {heartbeat_every_secs: 1}\ninstances:\n",
    );
    for (name, lines) in users {
        yaml.push_str(&format!(
            "  - name: {name}\n    peer: {{listen: 127.0.0.1:0}}\n    proxy: {{listen: 127.0.0.1:0}}\n"
        ));
        if !lines.is_empty() {
            yaml.push_str("    auto_reply:\n      enabled: true\n      lines:\n");
            for l in *lines {
                yaml.push_str(&format!("        - {l:?}\n"));
            }
        }
    }
    yaml.push_str("delivery: {retry_initial_ms: 20, retry_max_ms: 200, attempt_timeout_secs: 2}\n");
    Config::parse(&yaml, "test config").expect("test config is valid")
}

/// `config` with `tls.enabled: false`: for tests of what the hops carry (signatures,
/// envelopes, the controller's trust rules) through plain HTTP posts of their own; TLS itself
/// is tested in `tls.rs` and by every test that runs `overlay up` as shipped.
pub fn without_tls(mut config: Config) -> Config {
    config.tls.enabled = false;
    config
}

/// A loopback listener on a free port.
pub fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A role server running in the test's actix system.
pub struct Spawned {
    pub label: String,
    pub url: String,
    pub addr: std::net::SocketAddr,
    /// The TLS listener for overlay members (the controller's, a proxy's), if any.
    pub tls_addr: Option<std::net::SocketAddr>,
    handle: actix_web::dev::ServerHandle,
    task: Option<actix_rt::task::JoinHandle<std::io::Result<()>>>,
}

impl Spawned {
    pub fn spawn(running: Running) -> Spawned {
        let handle = running.handle();
        let label = running.label.clone();
        let url = running.url();
        let addr = running.addr;
        let tls_addr = running.tls_addr;
        let task = actix_rt::spawn(running.serve());
        Spawned {
            label,
            url,
            addr,
            tls_addr,
            handle,
            task: Some(task),
        }
    }

    /// A server a test made itself (a stand-in at some address), run like a role's.
    pub fn spawn_server(server: actix_web::dev::Server, addr: std::net::SocketAddr) -> Spawned {
        let handle = server.handle();
        let task = actix_rt::spawn(server);
        Spawned {
            label: "stand-in".into(),
            url: format!("https://{addr}"),
            addr,
            tls_addr: Some(addr),
            handle,
            task: Some(task),
        }
    }

    /// Stops the server (gracefully) and waits until it and its stores are closed.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Everything a config runs, started as `overlay up` starts it.
pub struct TestOverlay {
    pub servers: Vec<Spawned>,
    pub data_dir: tempfile::TempDir,
}

impl TestOverlay {
    /// The server labelled `label` (`controller`, `proxy/alice`, `peer/alice`).
    pub fn server(&self, label: &str) -> &Spawned {
        self.servers
            .iter()
            .find(|s| s.label == label)
            .unwrap_or_else(|| panic!("no server labelled {label}"))
    }
    pub fn url(&self, label: &str) -> String {
        self.server(label).url.clone()
    }
    /// Removes `label` from the overlay and stops it.
    pub async fn stop(&mut self, label: &str) {
        let i = self
            .servers
            .iter()
            .position(|s| s.label == label)
            .unwrap_or_else(|| panic!("no server labelled {label}"));
        self.servers.remove(i).stop().await;
    }
}

/// Starts every role of `config` in this test's actix system, with a fresh data dir.
/// Returns once every proxy is up as `overlay up` promises: its directory checked with the
/// controller and, with TLS, its certificate from the controller's CA.
pub async fn spawn_overlay(config: Config) -> TestOverlay {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let tls = config.tls.enabled;
    let users: Vec<String> = config
        .instances
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    let servers = overlay::up::start_all(config, data_dir.path(), 1)
        .await
        .expect("overlay starts");
    let o = TestOverlay {
        servers: servers.into_iter().map(Spawned::spawn).collect(),
        data_dir,
    };
    let proxies: Vec<String> = o
        .servers
        .iter()
        .filter(|s| s.label.starts_with("proxy/"))
        .map(|s| s.url.clone())
        .collect();
    for url in proxies {
        wait_ready(&url, tls, &users).await;
    }
    o
}

/// Waits until the proxy at `url` has checked its directory and (with `tls`) holds its
/// certificate and can reach every one of `users` over TLS (`GET /api/v1/tls`).
pub async fn wait_ready(url: &str, tls: bool, users: &[String]) {
    eventually(&format!("{url} is ready"), || async move {
        let mut r = client()
            .get(format!("{url}/api/v1/tls"))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        let members: Vec<&str> = v["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        let certified = !tls
            || (v["not_after_ms"].is_u64() && users.iter().all(|u| members.contains(&u.as_str())));
        (v["directory_checked"] == true && certified).then_some(())
    })
    .await;
}

/// Starts a controller for `config` on `listener`.
pub async fn spawn_controller(config: &Config, data_dir: &Path, listener: TcpListener) -> Spawned {
    let mut config = config.clone();
    config.controller.tls_listen = Some(config.controller_tls_listen());
    config.controller.listen = listener.local_addr().unwrap();
    let settings = config.controller_settings(data_dir);
    Spawned::spawn(
        overlay::controller::start(settings, listener)
            .await
            .expect("controller starts"),
    )
}

/// Starts `name`'s proxy on `listener`; `config` must already name the real addresses
/// (see [`Config::set_instance_listeners`]).
pub async fn spawn_proxy(
    config: &Config,
    name: &str,
    data_dir: &Path,
    listener: TcpListener,
) -> Spawned {
    let mut settings = config
        .proxy_settings(name, data_dir)
        .expect("instance exists");
    provision(&mut settings, config, data_dir).await;
    Spawned::spawn(
        overlay::proxy::start(settings, listener)
            .await
            .expect("proxy starts"),
    )
}

/// When a controller keeps its data in `data_dir` (as `overlay up` does), the proxy pins its
/// root and gets a join token from its admin API, as an operator would give it (a proxy that
/// joined already does not need it: the controller refuses to make one, and that is fine).
pub async fn provision(
    settings: &mut overlay::config::ProxySettings,
    config: &Config,
    data_dir: &Path,
) {
    let Ok(root) = overlay::controller::trust::root_fingerprint(data_dir) else {
        return;
    };
    settings.root = Some(root);
    let Ok(admin) = std::fs::read_to_string(data_dir.join("admin.token")) else {
        return;
    };
    let admin_url = format!(
        "http://{}",
        overlay::config::reachable(config.controller.listen)
    );
    let answer = client()
        .post(format!("{admin_url}/api/v1/admin/tokens"))
        .bearer_auth(admin.trim())
        .send_json(&serde_json::json!({"name": settings.name.as_str(), "ttl": "1h"}))
        .await;
    if let Ok(mut res) = answer {
        if res.status().is_success() {
            let t: serde_json::Value = res.json().await.expect("a token answer");
            let token = t["token"]
                .as_str()
                .expect("a token")
                .parse()
                .expect("a join token");
            settings.join = Some(token);
        }
    }
}

/// Starts `name`'s peer on `listener`.
pub async fn spawn_peer(
    config: &Config,
    name: &str,
    data_dir: &Path,
    listener: TcpListener,
) -> Spawned {
    let settings = config
        .peer_settings(name, data_dir)
        .expect("instance exists");
    Spawned::spawn(
        overlay::peer::start(settings, listener)
            .await
            .expect("peer starts"),
    )
}

/// Polls `check` until it returns Some (bounded: 20 s, polling every 20 ms), or fails naming
/// `what`. Waiting on a condition, never on a fixed time.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1000 {
        if let Some(v) = check().await {
            return v;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// An HTTP client for tests.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .finish()
}

/// The body of an SSE response.
type SseBody = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>>,
>;

/// Reads `data:` events from an SSE response, skipping keep-alive comments and retry hints.
pub struct SseReader {
    stream: SseBody,
    buf: String,
}

impl SseReader {
    /// The next event's data, parsed (bounded wait: 10 s).
    pub async fn next<T: serde::de::DeserializeOwned>(&mut self) -> T {
        self.next_within(std::time::Duration::from_secs(10)).await
    }

    /// The next event's data, parsed; fails the test if none arrives `within`.
    pub async fn next_within<T: serde::de::DeserializeOwned>(
        &mut self,
        within: std::time::Duration,
    ) -> T {
        use futures_util::StreamExt;
        let read = async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let event: String = self.buf.drain(..end + 2).collect();
                    let data: Vec<&str> = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                        .collect();
                    if data.is_empty() {
                        continue; // a comment (keep-alive) or a retry hint
                    }
                    let data = data.join("\n");
                    return serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("bad event {data}: {e}"));
                }
                match self.stream.next().await {
                    Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                    Some(Err(e)) => panic!("SSE stream failed: {e}"),
                    None => panic!("SSE stream ended"),
                }
            }
        };
        actix_rt::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {within:?}"))
    }
}

/// Opens the SSE feed at `url`, checking it answers 200 `text/event-stream`.
pub async fn subscribe(url: &str) -> SseReader {
    let r = client()
        .get(url)
        .insert_header(("accept", "text/event-stream"))
        .send()
        .await
        .expect("subscribe");
    assert_eq!(r.status(), awc::http::StatusCode::OK, "{url}");
    assert!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "{url} is not an event stream"
    );
    SseReader {
        stream: Box::pin(r),
        buf: String::new(),
    }
}

/// The real `overlay` binary running `role` (e.g. `["peer", "--name", "alice"]`) with `config`
/// (written to `dir`) and its data in `dir/data`; answers it and the URL of the server `label`
/// (e.g. `peer/alice`) from the table it prints. Its log goes to `dir/stderr.log`, shown if it
/// does not start.
pub async fn run_binary(
    config: &Config,
    dir: &Path,
    role: &[&str],
    label: &str,
) -> (std::process::Child, String) {
    let file = dir.join("config.yaml");
    std::fs::write(&file, serde_yaml::to_string(config).unwrap()).unwrap();
    let stderr = dir.join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_overlay"))
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(role)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("the overlay binary runs");
    let stdout = child.stdout.take().unwrap();
    let label = label.to_string();
    let url = actix_rt::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.contains(&label) {
                let url = line.split_whitespace().last().unwrap().to_string();
                // Keep draining stdout so the child never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return Some(url);
            }
        }
        None
    })
    .await
    .unwrap()
    .unwrap_or_else(|| {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        panic!("the binary did not print its URL table; its log:\n{log}")
    });
    (child, url)
}

/// The identity key of `name`'s proxy in `data_dir` (an `overlay up` data dir, or a proxy's).
pub fn proxy_identity(data_dir: &Path, name: &str) -> overlay::trust::Identity {
    overlay::trust::Identity::load(&data_dir.join(format!("proxy-{name}.key")))
        .unwrap_or_else(|e| panic!("{name}'s proxy key in {}: {e}", data_dir.display()))
}

/// `name`'s proxy's sealing key in `data_dir` (`proxy-NAME.seal`), made when missing (so a test
/// can enroll it before the proxy starts).
pub fn seal_key(data_dir: &Path, name: &str) -> overlay::trust::seal::SealPublic {
    let path = data_dir.join(format!("proxy-{name}.seal"));
    overlay::trust::seal::SealKeys::load_or_create(&path, overlay::wire::now_ms())
        .unwrap_or_else(|e| panic!("{name}'s sealing key in {}: {e}", data_dir.display()))
        .0
        .current()
        .0
}

/// A sequence number for an envelope a test seals: growing, and above any a proxy gave
/// before (they start from the clock in µs).
pub fn test_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now_us = overlay::wire::now_ms() * 1000;
    let next = |last: u64| (last + 1).max(now_us);
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(next(last))
        })
        .unwrap_or_else(|last| last);
    next(previous)
}

/// `envelopes` (one batch) sealed for the proxy whose sealing key is `to`, numbered, and signed
/// together by `by` (as its origin proxy does).
pub fn sealed(
    envelopes: &[overlay::wire::data_plane::Envelope],
    to: &overlay::trust::seal::SealPublic,
    by: &overlay::trust::Identity,
) -> Vec<overlay::wire::sealed::SealedEnvelope> {
    overlay::wire::sealed::seal(envelopes, test_seq, to, by).expect("sealed")
}

/// What a relay answered: status, JSON body, and its `overlay-ack` header.
pub struct RelayAnswer {
    pub status: u16,
    pub body: serde_json::Value,
    pub ack: Option<String>,
}

/// `POST {proxy}{path}` with `body` (JSON), as `origin`'s proxy signs it with `by` for
/// `destination` (envelopes in `body` are sent as they are: seal and sign them with
/// [`sealed`] first to make them valid).
pub async fn signed_post(
    proxy: &str,
    path: &str,
    by: &overlay::trust::Identity,
    origin: &str,
    destination: &str,
    body: &impl serde::Serialize,
) -> RelayAnswer {
    signed_post_with(&client(), proxy, path, by, origin, destination, body).await
}

/// Who is who, as a test's fake proxy checks the members it meets: user → pinned key.
#[derive(Debug)]
pub struct TestPins(pub Vec<(String, overlay::trust::PublicKey)>);

impl overlay::trust::tls::Pins for TestPins {
    fn key_of(&self, tls_name: &str) -> Option<overlay::trust::PublicKey> {
        self.0
            .iter()
            .find(|(u, _)| overlay::trust::x509::tls_name(u) == tls_name)
            .map(|(_, k)| *k)
    }
    fn user_of(&self, key: &overlay::trust::PublicKey) -> Option<String> {
        self.0
            .iter()
            .find(|(_, k)| k == key)
            .map(|(u, _)| u.clone())
    }
    fn cas(&self) -> Option<Vec<overlay::trust::Fingerprint>> {
        None
    }
}

/// An overlay client acting as `me`'s proxy of an `overlay up` data dir (its key and the
/// certificate the controller issued it; `None`: no certificate at all), that reaches every
/// member's TLS name at `host` (loopback in tests), checking servers against the data dir's
/// root and the keys of `users`.
pub fn overlay_client_as(data_dir: &Path, me: Option<&str>, users: &[&str]) -> awc::Client {
    use overlay::trust::tls::{client_config, Leaf, OverlayVerifier};
    let root = overlay::controller::trust::root_fingerprint(data_dir).expect("a root");
    let leaf = Leaf::new();
    if let Some(me) = me {
        let pem = std::fs::read(data_dir.join(format!("proxy-{me}.crt")))
            .unwrap_or_else(|e| panic!("{me}'s certificate: {e}"));
        let chain = overlay::trust::x509::from_pem(&pem).expect("PEM");
        leaf.set(&proxy_identity(data_dir, me), chain)
            .expect("the certificate is for the key");
    }
    let pins = TestPins(
        users
            .iter()
            .map(|u| (u.to_string(), proxy_identity(data_dir, u).public()))
            .collect(),
    );
    let verifier = OverlayVerifier::new(root, std::sync::Arc::new(pins), false);
    overlay::hop::overlay::client(
        client_config(leaf, verifier),
        std::rc::Rc::new(|_: &str| Some("127.0.0.1".to_string())),
        std::time::Duration::from_secs(10),
    )
}

/// `POST` of `body` to `dest`'s proxy's TLS listener as `me`'s proxy (its key and
/// certificate), signed, once `me` has its certificate and `dest` takes it in (it answers no
/// 503 "starting", and its handshake knows `me`): what a sending proxy's retries would get.
pub async fn relay_over_tls(
    o: &TestOverlay,
    me: &str,
    dest: &str,
    path: &str,
    body: &impl serde::Serialize,
) -> RelayAnswer {
    let dir = o.data_dir.path();
    let cert = dir.join(format!("proxy-{me}.crt"));
    eventually(&format!("{me}'s proxy has its certificate"), || {
        let exists = cert.exists();
        async move { exists.then_some(()) }
    })
    .await;
    let key = proxy_identity(dir, me);
    let client = overlay_client_as(dir, Some(me), &[me, dest]);
    let url = tls_url(o, dest);
    let mut last = None;
    for _ in 0..250 {
        let r = signed_post_with(&client, &url, path, &key, me, dest, body).await;
        if r.status != 0 && r.status != 503 {
            return r;
        }
        last = Some(r.body);
        actix_rt::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    panic!("{dest}'s proxy never took {me}'s relay: {last:?}");
}

/// The base URL of `name`'s proxy's TLS listener in `o`: its TLS name, its port.
pub fn tls_url(o: &TestOverlay, name: &str) -> String {
    let addr = o
        .server(&format!("proxy/{name}"))
        .tls_addr
        .unwrap_or_else(|| panic!("{name}'s proxy has no TLS listener"));
    overlay::hop::overlay::base_url(&overlay::trust::x509::tls_name(name), addr.port())
}

/// [`signed_post`] with `client` (e.g. [`overlay_client_as`] to a TLS URL).
pub async fn signed_post_with(
    client: &awc::Client,
    proxy: &str,
    path: &str,
    by: &overlay::trust::Identity,
    origin: &str,
    destination: &str,
    body: &impl serde::Serialize,
) -> RelayAnswer {
    use overlay::trust::request::{sign, RequestLine, SIGNATURE_HEADER};
    let bytes = serde_json::to_vec(body).expect("JSON");
    let line = RequestLine {
        method: "POST",
        target: path,
        body: &bytes,
    };
    let header = sign(by, &line, origin, destination, overlay::wire::now_ms());
    let res = client
        .post(format!("{proxy}{path}"))
        .insert_header((SIGNATURE_HEADER, header))
        .insert_header(("content-type", "application/json"))
        .send_body(bytes)
        .await;
    let mut res = match res {
        Ok(res) => res,
        // No answer at all (e.g. a refused TLS handshake): status 0, the error as the body.
        Err(e) => {
            return RelayAnswer {
                status: 0,
                body: serde_json::Value::String(e.to_string()),
                ack: None,
            }
        }
    };
    let ack = res
        .headers()
        .get(overlay::wire::data_plane::ACK_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    RelayAnswer {
        status: res.status().as_u16(),
        body: res
            .json()
            .limit(1 << 22)
            .await
            .unwrap_or(serde_json::Value::Null),
        ack,
    }
}

/// Whether this run is CI's: `CI` set to anything but empty, `0`, `false` or `no`.
pub fn under_ci() -> bool {
    is_ci(std::env::var("CI").ok().as_deref())
}

fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        )
    })
}

/// Writes `line` where a person running `cargo test` sees it, passing or not: straight to the
/// standard error, past the test harness's capture (which holds what the print macros write).
pub fn say_loudly(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn ci_is_any_value_of_ci_but_the_ones_that_say_no() {
    for yes in ["true", "1", "yes", "TRUE", "github"] {
        assert!(is_ci(Some(yes)), "{yes}");
    }
    for no in ["false", "0", "", "no", "False", " false "] {
        assert!(!is_ci(Some(no)), "{no:?}");
    }
    assert!(!is_ci(None));
}

/// A chromedriver process, in a process group of its own with the browsers it starts: all of
/// them are killed when it is dropped (a session a failed test never closed included).
pub struct ChromeDriver {
    child: std::process::Child,
    pub url: String,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group's id is the child's pid (process_group(0) below).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free port and waits (bounded) until it is ready; `None` (the
/// test skipped, saying so loudly as `what`) when it is not installed, unless this is CI.
pub async fn chromedriver(what: &str) -> Option<ChromeDriver> {
    use std::os::unix::process::CommandExt;
    const PATH: &str = "/usr/bin/chromedriver";
    if !std::path::Path::new(PATH).exists() {
        if under_ci() {
            panic!("chromedriver is not installed at {PATH}; the CI image must have it (apt-get install chromium chromium-driver)");
        }
        say_loudly(&format!(
            "*** {what} NOT RUN: no chromedriver at {PATH} (apt-get install chromium \
             chromium-driver) ***"
        ));
        return None;
    }
    let port = free_listener().local_addr().unwrap().port();
    let child = std::process::Command::new(PATH)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver starts");
    let driver = ChromeDriver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if let Ok(mut r) = client().get(format!("{}/status", driver.url)).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["value"]["ready"] == true {
                    return Some(driver);
                }
            }
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not become ready on {}", driver.url);
}

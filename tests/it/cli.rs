//! The `overlay` binary as a user runs it: `--help`, `--check`, bad configs (exit code 2 and a
//! message naming the problem), `overlay up` serving all nine listeners, clean shutdown on
//! SIGTERM, and docker-compose.yml's commands checked against the shipped config.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml");

fn overlay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_overlay"));
    c.env_remove("OVERLAY_CONFIG")
        .env_remove("OVERLAY_DATA_DIR");
    c
}

fn run(args: &[&str]) -> Output {
    overlay().args(args).output().expect("overlay runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("overlay.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = run(&["--config", SHIPPED, "--check", "up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("would run").count(), 9, "{stdout}");
}

/// A valid two-user config to break in each bad-config test.
const GOOD: &str = "\
controller:
  listen: 127.0.0.1:18000
instances:
  - name: alice
    peer: { listen: 127.0.0.1:15001 }
    proxy: { listen: 127.0.0.1:19001 }
  - name: bob
    peer: { listen: 127.0.0.1:15002 }
    proxy: { listen: 127.0.0.1:19002 }
ai_endpoints:
  - name: BOT
    provider: openai
    model: gpt-4o-mini
    api_key_env: OPENAI_API_KEY
";

/// Runs `overlay up` (both with --check and for real) on a broken config; both must refuse it
/// with exit code 2 before listening on anything, with a message containing every `needle`.
fn assert_refused(text: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    let p = path.to_str().unwrap();
    let data = dir.path().join("data");
    for args in [
        vec!["--config", p, "--check", "up"],
        vec!["--config", p, "--data-dir", data.to_str().unwrap(), "up"],
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(p), "the message names the file: {err}");
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
        assert_eq!(err.trim().lines().count(), 1, "one message: {err}");
    }
    assert!(!data.exists(), "nothing was started or written");
}

#[test]
fn the_good_config_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), GOOD);
    let out = run(&["--config", path.to_str().unwrap(), "--check", "up"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_yaml_syntax_error_is_refused_naming_the_line() {
    assert_refused(
        &GOOD.replace("model: gpt-4o-mini", "model: \"gpt-4o-mini"),
        &["line 13", "quoted scalar", "fix the YAML"],
    );
}

#[test]
fn an_unknown_field_is_refused_naming_its_path() {
    assert_refused(
        &GOOD.replace(
            "proxy: { listen: 127.0.0.1:19002 }",
            "proxy: { listen: 127.0.0.1:19002, prot: 1 }",
        ),
        &[
            "instances[1].proxy",
            "unknown field `prot`",
            "line 9",
            "expected",
        ],
    );
}

#[test]
fn a_missing_field_is_refused_naming_it() {
    assert_refused(
        &GOOD.replace("    model: gpt-4o-mini\n", ""),
        &["ai_endpoints[0]", "missing field `model`", "add that field"],
    );
}

#[test]
fn a_duplicate_port_is_refused_naming_both_listeners() {
    assert_refused(
        &GOOD.replace("19002", "15001"),
        &[
            "instances[1].proxy.listen",
            "port 15001",
            "instances[0].peer.listen",
            "own port",
        ],
    );
}

#[test]
fn an_unknown_provider_is_refused_listing_the_known_ones() {
    assert_refused(
        &GOOD.replace("provider: openai", "provider: openia"),
        &[
            "ai_endpoints[0].provider",
            "unknown variant `openia`",
            "`anthropic`",
            "`gemini`",
        ],
    );
}

#[test]
fn a_missing_config_file_is_refused_with_the_flag_to_use() {
    let out = run(&["--config", "/nonexistent/overlay.yaml", "up"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/overlay.yaml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn an_unknown_instance_name_is_refused_listing_the_known_ones() {
    let out = run(&["--config", SHIPPED, "--check", "peer", "--name", "carol"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("carol") && err.contains("behrooz, alice, bob, BOT"),
        "{err}"
    );
}

#[test]
fn help_describes_every_flag_of_every_command() {
    let top = String::from_utf8(run(&["--help"]).stdout).unwrap();
    for needle in [
        "controller",
        "proxy",
        "peer",
        "up",
        "--config",
        "--data-dir",
        "--check",
        "--workers",
    ] {
        assert!(top.contains(needle), "overlay --help lacks {needle}: {top}");
    }
    let expected: &[(&str, &[&str])] = &[
        ("controller", &["--listen", "--provision-dir"]),
        (
            "proxy",
            &[
                "--name",
                "--listen",
                "--advertise",
                "--controller-url",
                "--peer-url",
                "--controller-root",
                "--controller-root-file",
                "--join",
                "--join-file",
            ],
        ),
        (
            "peer",
            &[
                "--name",
                "--listen",
                "--advertise",
                "--proxy-url",
                "--proxy-listen",
                "--proxy-advertise",
                "--controller-url",
                "--controller-root",
                "--join-file",
            ],
        ),
        ("up", &["--host"]),
        ("id", &["--name"]),
        ("revoke", &["--reason", "--controller-url"]),
    ];
    for (cmd, flags) in expected {
        let out = run(&[cmd, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        for flag in *flags {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("overlay {cmd} --help lacks {flag}: {help}"));
            // Each flag's line (or the next one, when wrapped) carries a description.
            let described = line.split_whitespace().count() > 2
                || help
                    .lines()
                    .skip_while(|l| l != &line)
                    .nth(1)
                    .is_some_and(|n| !n.trim().is_empty());
            assert!(described, "{cmd} {flag} has no description: {help}");
        }
        for global in ["--config", "--data-dir", "--check"] {
            assert!(help.contains(global), "overlay {cmd} --help lacks {global}");
        }
    }
}

/// The four-user demo with every listener on a free port (port 0), for running the real binary.
fn port_zero_config(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    let mut text = String::new();
    for line in shipped.lines() {
        // `listen: 127.0.0.1:NNNN` → `listen: 127.0.0.1:0`
        match line.find("127.0.0.1:") {
            Some(i) => {
                let rest = &line[i + "127.0.0.1:".len()..];
                let digits = rest.chars().take_while(char::is_ascii_digit).count();
                text.push_str(&format!("{}127.0.0.1:0{}\n", &line[..i], &rest[digits..]));
            }
            None => text.push_str(&format!("{line}\n")),
        }
    }
    write_config(dir, &text)
}

/// Reads the start-up table from the child's stdout: (label, url) for each server.
fn read_url_table(child: &mut Child) -> Vec<(String, String)> {
    let stdout = child.stdout.take().unwrap();
    let mut rows = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("Press Ctrl-C") {
            break;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let url = cols.iter().find(|c| c.starts_with("http://"));
        if let (Some(label), Some(url)) = (cols.first(), url) {
            rows.push((label.to_string(), url.to_string()));
        }
    }
    rows
}

#[actix_web::test]
async fn up_serves_all_nine_listeners_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = port_zero_config(dir.path());
    let mut child = overlay()
        .args(["--config", config.to_str().unwrap()])
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "up",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rows = read_url_table(&mut child);
    let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels.len(), 9, "{rows:?}");
    assert_eq!(labels[0], "controller");
    for name in ["alice", "bob", "behrooz", "BOT"] {
        assert!(
            labels.contains(&format!("proxy/{name}").as_str()),
            "{labels:?}"
        );
        assert!(
            labels.contains(&format!("peer/{name}").as_str()),
            "{labels:?}"
        );
    }
    let client = awc::Client::default();
    for (label, url) in &rows {
        let mut res = client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{label} at {url} does not answer: {e}"));
        assert_eq!(res.status(), 200, "{label}");
        let health: overlay::web::Health = res.json().await.unwrap();
        let (role, instance) = label.split_once('/').unwrap_or((label, ""));
        assert_eq!(health.role, role);
        assert_eq!(health.instance.as_deref().unwrap_or(""), instance);
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "exit after SIGTERM: {:?}\n{err}",
        out.status
    );
    assert!(
        err.contains("shutting down 9 servers") && err.contains("stopped"),
        "{err}"
    );
}

#[test]
fn a_taken_port_stops_start_up_with_a_message_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &GOOD.replace("18000", &port.to_string()));
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "controller",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("controller.listen"),
        "{err}"
    );
}

#[test]
fn every_docker_compose_service_runs_a_valid_overlay_command() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let services = compose["services"].as_mapping().expect("services");
    assert_eq!(services.len(), 5, "controller + behrooz, alice, bob, BOT");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["overlay"]"#),
        "the image's entrypoint is overlay"
    );
    assert!(
        dockerfile.contains("USER "),
        "the image runs as a non-root user"
    );
    // The build stage needs every path the manifest names (the bench target) and the binary
    // embeds (assets/): no Docker engine runs here, so check the COPY lines instead.
    for needed in ["Cargo.lock", "src", "assets", "benches", "config.yaml"] {
        let copied = dockerfile.lines().any(|l| {
            l.starts_with("COPY ")
                && l.split_whitespace()
                    .any(|w| w.trim_end_matches('/') == needed)
        });
        assert!(copied, "the Dockerfile does not copy {needed}");
    }
    assert!(
        !dockerfile.contains("|| true"),
        "a failing build step must fail the image build"
    );
    let mut published = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let command: Vec<String> = svc["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: command must be a list"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        // The image bakes config.yaml in and names it with OVERLAY_CONFIG; check against ours.
        let out = overlay()
            .env("OVERLAY_CONFIG", SHIPPED)
            .args(&command)
            .arg("--check")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: `overlay {}` is invalid: {}",
            command.join(" "),
            stderr(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if name != "controller" {
            assert!(
                stdout.contains("would run peer") && stdout.contains("would run proxy"),
                "{name}: {stdout}"
            );
            assert!(
                command.iter().any(|a| a == "https://controller:8443"),
                "{name} reaches the controller's TLS listener by service name"
            );
        }
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            published.push(p.as_str().unwrap().to_string());
        }
    }
    for port in ["8000", "5000", "5001", "5002", "5003"] {
        assert!(
            published.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "port {port} is published: {published:?}"
        );
    }
}

/// `overlay --data-dir DIR ARGS...`, without a config file (the tools need none).
fn run_in(data: &Path, args: &[&str]) -> Output {
    overlay()
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("overlay runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `sha256:…` word of `text`.
fn fingerprint_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {text}"))
        .to_string()
}

#[test]
fn controller_init_is_idempotent_and_id_prints_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let before = run_in(&data, &["id"]);
    assert_eq!(before.status.code(), Some(1));
    assert!(
        stderr(&before).contains("overlay controller init"),
        "{}",
        stderr(&before)
    );

    let first = run_in(&data, &["controller", "init"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.contains("controller-root.key") && text.contains("offline"),
        "{text}"
    );
    assert!(text.contains("--controller-root"), "{text}");
    let fp = fingerprint_in(&text);

    let second = run_in(&data, &["controller", "init"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("nothing to do"),
        "{}",
        stdout(&second)
    );
    assert_eq!(fingerprint_in(&stdout(&second)), fp);

    let id = run_in(&data, &["id"]);
    assert!(id.status.success(), "{}", stderr(&id));
    assert_eq!(stdout(&id).trim(), fp);
}

#[test]
fn id_with_a_name_makes_a_private_key_and_never_prints_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run_in(&data, &["id", "--name", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = data.join("proxy-alice.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let line = stdout(&out);
    assert!(
        line.trim().starts_with("sha256:") && line.trim().lines().count() == 1,
        "{line}"
    );
    assert!(
        stderr(&out).contains("proxy-alice.key"),
        "says it made the key"
    );
    let text = std::fs::read_to_string(&key).unwrap();
    let seed = text
        .lines()
        .nth(1)
        .expect("the key file's seed line")
        .trim();
    assert!(seed.len() >= 40, "{seed}");
    let again = run_in(&data, &["id", "--name", "alice"]);
    assert_eq!(stdout(&again), line, "the same key, not a new one");
    for o in [&out, &again] {
        assert!(!stdout(o).contains(seed) && !stderr(o).contains(seed));
    }
}

#[test]
fn a_world_readable_proxy_key_stops_the_proxy_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run_in(&data, &["id", "--name", "alice"]).status.success());
    let key = data.join("proxy-alice.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = port_zero_config(dir.path());
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "proxy",
        "--name",
        "alice",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

#[test]
fn a_bad_controller_root_or_join_token_is_refused_naming_the_flag() {
    let out = run(&[
        "--config",
        SHIPPED,
        "--check",
        "proxy",
        "--name",
        "alice",
        "--controller-root",
        "nonsense",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--controller-root") && err.contains("sha256:"),
        "{err}"
    );
    let secret = "zzzzzzzzzzzzzzzzzzzzzzzzz";
    let out = run(&[
        "--config", SHIPPED, "--check", "peer", "--name", "alice", "--join", secret,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--join") && !err.contains(secret), "{err}");
    let out = run(&[
        "--config",
        SHIPPED,
        "--check",
        "peer",
        "--name",
        "alice",
        "--proxy-url",
        "http://127.0.0.1:1",
        "--controller-root-file",
        "/x",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the remote proxy has its own root"
    );
}

#[test]
fn token_create_and_revoke_talk_to_a_running_controller() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = port_zero_config(dir.path());
    let mut child = overlay()
        .args(["--config", config.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap(), "controller"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rows = read_url_table(&mut child);
    let url = rows
        .iter()
        .find(|(l, _)| l == "controller")
        .map(|(_, u)| u.clone())
        .expect("the controller's URL");
    let tool = |args: &[&str]| {
        overlay()
            .args(["--config", config.to_str().unwrap()])
            .args(["--data-dir", data.to_str().unwrap()])
            .args(args)
            .args(["--controller-url", &url])
            .output()
            .unwrap()
    };
    let out = tool(&["token", "create", "--name", "alice", "--ttl", "2h"]);
    let text = stdout(&out);
    let fp = std::fs::read_to_string(data.join("root.fingerprint")).unwrap();
    // Checked with the controller still running; it is stopped whatever the outcome.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(out.status.success(), "{}", stderr(&out));
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("join token for alice: "))
            .unwrap_or_else(|| panic!("{text}"));
        overlay::trust::JoinToken::parse(token.trim()).expect("a join token");
        let command = text
            .lines()
            .find(|l| l.trim_start().starts_with("overlay peer"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            command.contains(&format!("--controller-root {}", fp.trim()))
                && command.contains("--controller-url https://127.0.0.1:")
                && !command.contains(&format!("--controller-url {url}"))
                && command.contains(&format!("--join {}", token.trim())),
            "{command}"
        );

        let revoked = tool(&["revoke", "bob", "--reason", "lost laptop"]);
        assert_eq!(revoked.status.code(), Some(1));
        assert!(
            stderr(&revoked).contains("the controller refused"),
            "{}",
            stderr(&revoked)
        );

        // A wrong admin token file: the controller's 401 message.
        let admin = data.join("admin.token");
        let real = std::fs::read(&admin).unwrap();
        std::fs::remove_file(&admin).unwrap();
        overlay::trust::private_file::create(&admin, b"wrong-wrong-wrong-wrong-wrong\n").unwrap();
        let refused = tool(&["token", "create", "--name", "bob"]);
        std::fs::remove_file(&admin).unwrap();
        overlay::trust::private_file::create(&admin, &real).unwrap();
        assert_eq!(refused.status.code(), Some(1));
        let err = stderr(&refused);
        assert!(
            err.contains("401") && err.contains("admin token is wrong"),
            "{err}"
        );
    }));
    child.kill().unwrap();
    child.wait().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn tools_say_when_the_controller_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    overlay::controller::trust::load(&data).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = run_in(
        &data,
        &["revoke", "alice", "--reason", "x", "--controller-url", &url],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "cannot reach the controller at {url}: is it running?"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn provision_dir_gets_the_root_and_a_private_join_token_per_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let provision = dir.path().join("provision");
    std::fs::create_dir(&provision).unwrap();
    let config = port_zero_config(dir.path());
    let mut child = overlay()
        .args(["--config", config.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap(), "controller"])
        .args(["--provision-dir", provision.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The table is printed after provisioning.
    let rows = read_url_table(&mut child);
    let result = std::panic::catch_unwind(|| {
        assert_eq!(rows.len(), 1, "{rows:?}");
        let root = std::fs::read_to_string(provision.join("root.fingerprint")).unwrap();
        let expected = std::fs::read_to_string(data.join("root.fingerprint")).unwrap();
        assert_eq!(root.trim(), expected.trim());
        for name in ["behrooz", "alice", "bob", "BOT"] {
            let path = provision.join(format!("{name}.join"));
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
            let text = std::fs::read_to_string(&path).unwrap();
            overlay::trust::JoinToken::parse(text.trim()).expect("a join token");
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_relay_is_checked_like_every_role_and_a_proxy_behind_nat_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let with_relay = format!(
        "{GOOD}relays:\n  - name: relay1\n    relay: {{ listen: 127.0.0.1:17000, tls_listen: 0.0.0.0:17443, tls_advertise: relay.example.org:17443 }}\n"
    );
    let config = write_config(dir.path(), &with_relay);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--check",
        "relay",
        "--name",
        "relay1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would run relay relay1 on 127.0.0.1:17000")
            && stdout.contains("advertised as relay.example.org:17443"),
        "{stdout}"
    );
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--check",
        "relay",
        "--name",
        "relay2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no relay named `relay2`"),
        "{}",
        stderr(&out)
    );
    // A proxy behind NAT with no relay to go through: named, with the fix.
    let behind = GOOD.replace(
        "proxy: { listen: 127.0.0.1:19001 }",
        "proxy: { listen: 127.0.0.1:19001, reachable: relay }",
    );
    let config = write_config(dir.path(), &behind);
    let out = run(&["--config", config.to_str().unwrap(), "--check", "up"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("instances[0].proxy.reachable: `relay` and `auto` need a relay"),
        "{}",
        stderr(&out)
    );
}

#[actix_web::test]
async fn health_asks_a_role_and_exits_by_its_answer() {
    let o = crate::helpers::spawn_overlay(crate::helpers::config_for(&[("alice", &[])])).await;
    let url = format!("{}/healthz", o.url("peer/alice"));
    let run = |url: String| {
        actix_web::web::block(move || overlay().args(["health", &url]).output().expect("runs"))
    };
    let ok = run(url).await.unwrap();
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{said}");
    let health: serde_json::Value = serde_json::from_str(said.trim()).expect("its JSON");
    assert_eq!(
        (health["role"].as_str(), health["status"].as_str()),
        (Some("peer"), Some("ok"))
    );
    let dead = crate::helpers::free_listener().local_addr().unwrap();
    let down = run(format!("http://{dead}/healthz")).await.unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("does not answer"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let bad = run("localhost:1/healthz".into()).await.unwrap();
    assert_eq!(bad.status.code(), Some(2));
    // Several at once (a container with a page and a proxy): all must answer.
    let (page, proxy) = (
        format!("{}/healthz", o.url("peer/alice")),
        format!("{}/healthz", o.url("proxy/alice")),
    );
    let both = actix_web::web::block(move || {
        overlay()
            .args(["health", &page, &proxy])
            .output()
            .expect("runs")
    })
    .await
    .unwrap();
    assert!(
        both.status.success(),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    let page = format!("{}/healthz", o.url("peer/alice"));
    let one_down = actix_web::web::block(move || {
        overlay()
            .args(["health", &page, &format!("http://{dead}/healthz")])
            .output()
            .expect("runs")
    })
    .await
    .unwrap();
    assert_eq!(one_down.status.code(), Some(1));
}

//! The one-shot admin commands of the command line ([`crate::cli::Tool`]): `overlay id`,
//! `overlay controller init`, `overlay token create`, `overlay revoke` and `overlay
//! rotate-key`; what they print, and
//! the small HTTP client of the controller's admin API (bearer auth with the `admin.token` of
//! the data directory, a timeout, and errors worded for the user).
//!
//! Nothing here prints a private key; a join token is printed only by `token create`, whose
//! purpose it is.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cli::Tool;
use crate::controller::routes::TokenAnswer;
use crate::controller::trust::{self as keys, Init, ADMIN_TOKEN_FILE};
use crate::trust::{private_file, Fingerprint, Identity, KeyError};

/// How long one admin request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong talking to the controller's admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No answer at all: nothing listens there, or the network is down.
    #[error("cannot reach the controller at {url}: is it running? ({why})")]
    Unreachable { url: String, why: String },
    /// The controller answered with an error; `message` is its own.
    #[error("the controller refused (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    /// The controller answered something that is not what this command expects.
    #[error("the controller at {url} answered something unexpected: {why}")]
    BadAnswer { url: String, why: String },
    /// The admin token file could not be read.
    #[error("{0}")]
    AdminToken(String),
}

/// A client of one controller's admin API.
pub struct AdminClient {
    url: String,
    token: String,
    client: awc::Client,
}

impl AdminClient {
    /// A client for the controller at `url`, with the admin token of `data_dir` (refused when
    /// group or others can read it).
    pub fn new(url: &str, data_dir: &Path) -> Result<AdminClient, AdminError> {
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        let bytes = private_file::read(&path, 1024).map_err(|e| match e {
            KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                AdminError::AdminToken(format!(
                    "there is no admin token at {}: run this on the controller's machine with \
                     its --data-dir (the controller writes the token when it first starts)",
                    path.display()
                ))
            }
            e => AdminError::AdminToken(format!("the admin token: {e}")),
        })?;
        let token = String::from_utf8(bytes)
            .map_err(|_| AdminError::AdminToken(format!("{} is not text", path.display())))?
            .trim()
            .to_string();
        Ok(AdminClient {
            url: url.trim_end_matches('/').to_string(),
            token,
            // A dashboard beyond loopback is HTTPS, with this data dir's page CA (or a
            // certificate the system's roots vouch for).
            client: awc::Client::builder()
                .timeout(TIMEOUT)
                .connector(
                    awc::Connector::new().rustls_0_23(crate::web::page_tls::client(data_dir)),
                )
                .finish(),
        })
    }

    /// A client without the admin token, for what a proxy's own key authorises (a rotation).
    pub fn anonymous(url: &str) -> AdminClient {
        AdminClient {
            url: url.trim_end_matches('/').to_string(),
            token: String::new(),
            client: awc::Client::builder().timeout(TIMEOUT).finish(),
        }
    }

    /// POSTs `body` as JSON to `path` and parses the answer as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, AdminError> {
        let mut req = self.client.post(format!("{}{path}", self.url));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let mut res = req
            .send_json(body)
            .await
            .map_err(|e| AdminError::Unreachable {
                url: self.url.clone(),
                why: e.to_string(),
            })?;
        let bad = |why: String| AdminError::BadAnswer {
            url: self.url.clone(),
            why,
        };
        let bytes = res
            .body()
            .limit(64 * 1024)
            .await
            .map_err(|e| bad(e.to_string()))?;
        if !res.status().is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(AdminError::Refused {
                status: res.status().as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
    }
}

/// `overlay health URL`: the role's answer on stdout; an error unless it is 200.
async fn health(url: &str, data_dir: &Path) -> anyhow::Result<()> {
    let tls = crate::web::page_tls::client(data_dir);
    let client = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(tls))
        .timeout(Duration::from_secs(5))
        .finish();
    let mut res = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url} does not answer: {e}"))?;
    let body = res.body().limit(64 * 1024).await.unwrap_or_default();
    println!("{}", String::from_utf8_lossy(&body));
    if res.status().is_success() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{url} answered {}", res.status()))
    }
}

/// Runs `tool`, printing its result on stdout (notes on stderr).
pub async fn run(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::Id { data_dir, name } => id(&data_dir, name.as_deref()),
        Tool::Health { urls, data_dir } => {
            let mut failed = Vec::new();
            for url in &urls {
                if let Err(e) = health(url, &data_dir).await {
                    failed.push(e.to_string());
                }
            }
            match failed.is_empty() {
                true => Ok(()),
                false => Err(anyhow::anyhow!("{}", failed.join("; "))),
            }
        }
        Tool::AdminPassword { data_dir } => {
            let password = read_password()?;
            let path = crate::controller::admin::set_password(&data_dir, &password)?;
            println!(
                "set the admin password (its argon2id hash is in {}, mode 0600); it logs in on \
                 the dashboard from this machine (beyond it, use the admin token until the \
                 overlay serves HTTPS)",
                path.display()
            );
            Ok(())
        }
        Tool::ControllerInit {
            data_dir,
            root_key,
            new_ca: false,
        } => init(&data_dir, root_key.as_deref()),
        Tool::ControllerInit {
            data_dir,
            root_key,
            new_ca: true,
        } => new_ca(&data_dir, root_key.as_deref()),
        Tool::TokenCreate {
            data_dir,
            name,
            ttl,
            replace,
            controller_url,
        } => {
            let url = controller_url.unwrap_or_default();
            let client = AdminClient::new(&url, &data_dir)?;
            let answer: TokenAnswer = client
                .post(
                    "/api/v1/admin/tokens",
                    &serde_json::json!({"name": name, "ttl": ttl, "replace": replace}),
                )
                .await?;
            println!("{}", token_instructions(&answer, &url, &ttl));
            Ok(())
        }
        Tool::Revoke {
            data_dir,
            name,
            reason,
            controller_url,
        } => {
            let url = controller_url.unwrap_or_default();
            let client = AdminClient::new(&url, &data_dir)?;
            let answer: serde_json::Value = client
                .post(
                    "/api/v1/admin/revoke",
                    &serde_json::json!({"name": name, "reason": reason}),
                )
                .await?;
            match answer["message"].as_str() {
                Some(m) => println!("{m}"),
                None => println!("the key of {name} is revoked"),
            }
            Ok(())
        }
        Tool::RotateKey {
            data_dir,
            name,
            controller_url,
            root,
        } => {
            let root = root.ok_or_else(|| anyhow::anyhow!("no controller root given"))?;
            rotate(&data_dir, &name, &controller_url.unwrap_or_default(), &root).await
        }
    }
}

/// `overlay rotate-key`: a new key for `name`'s proxy, in `proxy-NAME.key.new` until the
/// controller accepted the rotation (signed by the old key and by the new one), then moved over
/// the old key. Run again after an interruption, it reuses the new key it made.
async fn rotate(data_dir: &Path, name: &str, url: &str, root: &Fingerprint) -> anyhow::Result<()> {
    use crate::wire::directory::{RotateClaim, RotateRequest, ROTATE_DOMAIN};
    let path = data_dir.join(format!("proxy-{name}.key"));
    let old = Identity::load(&path)?;
    let next_path = data_dir.join(format!("proxy-{name}.key.new"));
    let (new, _) = Identity::load_or_create(&next_path)?;
    let claim = serde_json::to_string(&RotateClaim {
        instance_name: name.to_string(),
        old_key: old.public(),
        new_key: new.public(),
        root: root.clone(),
        time_ms: crate::wire::now_ms(),
    })?;
    let request = RotateRequest {
        old_sig: old.sign(ROTATE_DOMAIN, claim.as_bytes()),
        new_sig: new.sign(ROTATE_DOMAIN, claim.as_bytes()),
        claim,
    };
    let answer: Result<serde_json::Value, AdminError> = AdminClient::anonymous(url)
        .post("/api/v1/rotate", &request)
        .await;
    match answer {
        Ok(_) => {
            std::fs::rename(&next_path, &path).map_err(|e| {
                anyhow::anyhow!(
                    "moving {} over {}: {e}",
                    next_path.display(),
                    path.display()
                )
            })?;
            println!(
                "{name}'s proxy key is now {} (was {}); start the proxy again to use it",
                new.fingerprint(),
                old.fingerprint()
            );
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "{e}\n(the new key stays in {} for another try; if the controller already pins it, \
             move it over {})",
            next_path.display(),
            path.display()
        )),
    }
}

/// `overlay id`: the root fingerprint, or with a name that proxy's key's (made if missing).
fn id(data_dir: &Path, name: Option<&str>) -> anyhow::Result<()> {
    match name {
        Some(name) => {
            let path = data_dir.join(format!("proxy-{name}.key"));
            let (identity, created) = Identity::load_or_create(&path)?;
            if created {
                eprintln!("made the identity key {} (mode 0600)", path.display());
            }
            println!("{}", identity.fingerprint());
        }
        None => {
            let fp = root_fingerprint(data_dir)?;
            println!("{fp}");
        }
    }
    Ok(())
}

fn root_fingerprint(data_dir: &Path) -> anyhow::Result<Fingerprint> {
    keys::root_fingerprint(data_dir).map_err(|e| match e {
        KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::anyhow!(
                "{} has no controller root ({} is missing): run `overlay controller init` \
                 (or pass the controller's --data-dir)",
                data_dir.display(),
                keys::FINGERPRINT_FILE
            )
        }
        e => e.into(),
    })
}

/// `overlay controller init`.
fn init(data_dir: &Path, root_key: Option<&Path>) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", data_dir.display()))?;
    let (what, fp) = keys::init(data_dir, root_key)?;
    let root_path = root_key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join(keys::ROOT_KEY_FILE));
    match what {
        Init::NewRoot => {
            println!(
                "made a new root key {} and an online key certified by it",
                root_path.display()
            );
            println!("root fingerprint: {fp}");
            println!(
                "Back up {} and keep it offline: it is needed again only to certify a new \
                 online key. Proxies pin the fingerprint with --controller-root {fp}",
                keys::ROOT_KEY_FILE
            );
        }
        Init::NewOnlineKey => {
            println!(
                "certified a new online key with the root key {}; proxies need no change",
                root_path.display()
            );
            println!("root fingerprint: {fp}");
        }
        Init::Nothing => {
            println!("nothing to do: the controller's keys are in place");
            println!("root fingerprint: {fp}");
        }
    }
    Ok(())
}

/// `overlay controller init --new-ca`: a new overlay CA certified by the root key (which must
/// be this controller's root); the old CA stays trusted until its certificates have expired.
fn new_ca(data_dir: &Path, root_key: Option<&Path>) -> anyhow::Result<()> {
    let root_path = root_key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join(keys::ROOT_KEY_FILE));
    let root = crate::trust::Identity::load(&root_path)?;
    let pinned = keys::root_fingerprint(data_dir)?;
    if root.fingerprint() != pinned {
        anyhow::bail!(
            "{} is the key of root {}, but this controller's root is {pinned}: give its root key",
            root_path.display(),
            root.fingerprint()
        );
    }
    keys::make_ca(data_dir, &root, true)?;
    println!(
        "made a new overlay CA ({}) under root {pinned}: restart the controller; proxies renew \
         their certificates from it, and the old CA stays trusted until its certificates \
         expire (at most 72 h). Back up {} with the root key.",
        data_dir.join(keys::CA_KEY_FILE).display(),
        keys::CA_KEY_FILE
    );
    Ok(())
}

/// What `overlay token create` prints: the token, its expiry, and the command that uses it.
fn token_instructions(a: &TokenAnswer, url: &str, ttl: &str) -> String {
    let expires = SystemTime::UNIX_EPOCH + Duration::from_millis(a.expires_at_ms);
    // Proxies reach the controller at its TLS listener, on the host the admin reached.
    let url = match a.tls_port {
        Some(port) => {
            let (host, _, _) = crate::wire::control_plane::split_url(url);
            format!(
                "https://{}",
                crate::wire::host_port::HostPort { host, port }
            )
        }
        None => url.to_string(),
    };
    let flags = format!(
        "--name {} --controller-url {url} --controller-root {} --join {}",
        a.name, a.root, a.token
    );
    let replace = if a.replace {
        " It may replace the key now pinned to the name."
    } else {
        ""
    };
    format!(
        "join token for {name}: {token}\n\
         valid until {expires} ({ttl}), for one join.{replace}\n\
         On {name}'s machine run (the peer runs its proxy in the same process):\n  \
         overlay peer {flags}\n\
         or, for the proxy alone:\n  \
         overlay proxy {flags}\n\
         (or put the token in a 0600 file and pass --join-file PATH instead of --join)",
        name = a.name,
        token = a.token,
        expires = humantime::format_rfc3339_seconds(expires),
    )
}

/// The admin password from stdin: one line (typed, without echo on a terminal, and asked twice
/// there; or piped).
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let echo = |on: bool| {
        if tty {
            // Without a crate for it: the terminal's own switch.
            let _ = std::process::Command::new("stty")
                .arg(if on { "echo" } else { "-echo" })
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    };
    let read = |prompt: &str| -> anyhow::Result<String> {
        if tty {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
        }
        echo(false);
        let mut line = String::new();
        let got = stdin.lock().read_line(&mut line);
        echo(true);
        if tty {
            eprintln!();
        }
        got?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let password = read("admin password: ")?;
    if tty && read("again: ")? != password {
        anyhow::bail!("the two passwords differ; nothing was changed");
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instructions_name_the_root_the_url_and_the_token() {
        let a = TokenAnswer {
            token: "abcdef.0123456789abcdefghij".into(),
            name: "alice".into(),
            root: format!("sha256:{}", "ab".repeat(32)),
            expires_at_ms: 86_400_000,
            replace: false,
            tls_port: None,
        };
        let text = token_instructions(&a, "http://c:8000", "24h");
        assert!(text.contains("1970-01-02T00:00:00Z"), "{text}");
        let expected = format!(
            "overlay peer --name alice --controller-url http://c:8000 --controller-root {} \
             --join abcdef.0123456789abcdefghij",
            a.root
        );
        assert!(text.contains(&expected), "{text}");
        assert!(text.contains("overlay proxy --name alice"), "{text}");
        // With TLS, proxies are sent to the controller's TLS listener on the same host.
        let tls = TokenAnswer {
            tls_port: Some(8443),
            ..a
        };
        let text = token_instructions(&tls, "http://c.example.org:8000", "24h");
        assert!(
            text.contains("--controller-url https://c.example.org:8443 "),
            "{text}"
        );
    }
}

//! Starting and stopping a set of role servers in one process: every role of config.yaml for
//! `overlay up`, a peer with its proxy for `overlay peer`, or one role alone.
//!
//! Owns the order of start-up (bind every listener first, so port 0 works and a taken port
//! fails before anything runs; then the controller, the proxies, the peers), the table of URLs
//! printed for the user, and the clean shutdown on Ctrl-C / SIGTERM. The roles themselves are
//! started through their own `start()`; nothing here knows their insides. Also the trust
//! plumbing around them: a proxy's `--join-file` / `--controller-root-file` (waited for), and
//! the controller's `--provision-dir`, which writes those files for the config's users.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use crate::cli::{Plan, Provision, TrustFiles};
use crate::config::{reachable, Config, ProxySettings};
use crate::web::{bind, Running};
use crate::{controller, peer, proxy};

/// Runs the plan until Ctrl-C or SIGTERM, then stops every server and closes the stores.
pub async fn serve(plan: Plan, data_dir: PathBuf) -> anyhow::Result<()> {
    Plan::prepare_data_dir(&data_dir)?;
    let servers = start(plan).await?;
    println!("{}", url_table(&servers));
    let handles: Vec<_> = servers.iter().map(|s| s.handle()).collect();
    let tasks: Vec<_> = servers
        .into_iter()
        .map(|s| actix_rt::spawn(s.serve()))
        .collect();
    wait_for_shutdown_signal().await;
    log::info!("shutting down {} servers", handles.len());
    futures_util::future::join_all(handles.iter().map(|h| h.stop(true))).await;
    for task in tasks {
        if let Ok(Err(e)) = task.await {
            log::warn!("a server stopped with an error: {e}");
        }
    }
    log::info!("stopped");
    Ok(())
}

/// Binds every listener of the plan, then starts its servers: controller, proxies, peers.
pub async fn start(plan: Plan) -> anyhow::Result<Vec<Running>> {
    match plan {
        Plan::Controller {
            settings,
            listen,
            provision,
        } => {
            let l = bind("the controller", listen, "controller.listen")?;
            let (running, handle) = controller::start_with_handle(settings, l).await?;
            if let Some(p) = provision {
                provision_dir(&handle, &p).await?;
            }
            Ok(vec![running])
        }
        Plan::Proxy {
            mut settings,
            listen,
            files,
        } => {
            let l = bind(&format!("proxy {}", settings.name), listen, "proxy.listen")?;
            fix_port_zero(&mut settings.advertise, l.local_addr()?);
            read_trust_files(&mut settings, &files).await?;
            Ok(vec![proxy::start(settings, l).await?])
        }
        Plan::Peer {
            mut settings,
            listen,
            proxy,
        } => {
            let peer_l = bind(&format!("peer {}", settings.name), listen, "peer.listen")?;
            let peer_addr = peer_l.local_addr()?;
            let mut servers = Vec::new();
            if let Some((mut p, proxy_listen, files)) = proxy {
                let proxy_l = bind(&format!("proxy {}", p.name), proxy_listen, "proxy.listen")?;
                read_trust_files(&mut p, &files).await?;
                let proxy_addr = proxy_l.local_addr()?;
                fix_port_zero(&mut p.advertise, proxy_addr);
                fix_port_zero(&mut p.peer_url, peer_addr);
                settings.proxy_url = format!("http://{}", reachable(proxy_addr));
                servers.push(proxy::start(p, proxy_l).await?);
            }
            servers.push(peer::start(settings, peer_l).await?);
            Ok(servers)
        }
        Plan::Relay {
            mut settings,
            listen,
            files,
        } => {
            let l = bind(&format!("relay {}", settings.name), listen, "relay.listen")?;
            fix_port_zero(&mut settings.advertise, l.local_addr()?);
            read_trust_files(&mut settings, &files).await?;
            Ok(vec![crate::relay::start(settings, l).await?])
        }
        Plan::Up {
            config,
            data_dir,
            workers,
        } => start_all(config, &data_dir, workers).await,
    }
}

/// `overlay up`: every listener bound first, then the controller, every relay, every proxy,
/// every peer.
pub async fn start_all(
    mut config: Config,
    data_dir: &Path,
    workers: usize,
) -> anyhow::Result<Vec<Running>> {
    let controller_l = bind(
        "the controller",
        config.controller.listen,
        "controller.listen",
    )?;
    // The TLS listener's default port follows the configured one (port 0: any), not the bound.
    config.controller.tls_listen = Some(config.controller_tls_listen());
    config.controller.listen = controller_l.local_addr()?;
    let mut bound: Vec<(String, TcpListener, TcpListener)> = Vec::new();
    for (i, inst) in config.instances.clone().iter().enumerate() {
        let proxy_l = bind(
            &format!("proxy {}", inst.name),
            inst.proxy.listen,
            &format!("instances[{i}].proxy.listen"),
        )?;
        let peer_l = bind(
            &format!("peer {}", inst.name),
            inst.peer.listen,
            &format!("instances[{i}].peer.listen"),
        )?;
        config.set_instance_listeners(
            inst.name.as_str(),
            Some(peer_l.local_addr()?),
            Some(proxy_l.local_addr()?),
        );
        bound.push((inst.name.to_string(), proxy_l, peer_l));
    }
    let mut relays = Vec::new();
    for (i, r) in config.relays.clone().iter().enumerate() {
        let l = bind(
            &format!("relay {}", r.name),
            r.relay.listen,
            &format!("relays[{i}].relay.listen"),
        )?;
        relays.push((r.name.to_string(), l));
    }

    let mut servers = Vec::new();
    let mut cs = config.controller_settings(data_dir);
    cs.workers = workers;
    let (running, handle) = controller::start_with_handle(cs, controller_l).await?;
    servers.push(running);
    // The proxies reach the controller at its TLS listener (bound above, perhaps on port 0),
    // unless the config names a URL.
    if let (None, Some(url)) = (&config.controller.url, &handle.tls_url) {
        config.controller.url = Some(url.clone());
    }
    for (name, l) in relays {
        let mut rs = config
            .relay_settings(&name, data_dir)
            .map_err(anyhow::Error::msg)?;
        fix_port_zero(&mut rs.advertise, l.local_addr()?);
        rs.workers = workers;
        provision(&handle, &mut rs).await?;
        servers.push(crate::relay::start(rs, l).await?);
    }
    let mut peers = Vec::new();
    for (name, proxy_l, peer_l) in bound {
        let mut ps = config
            .proxy_settings(&name, data_dir)
            .map_err(anyhow::Error::msg)?;
        ps.workers = workers;
        provision(&handle, &mut ps).await?;
        servers.push(proxy::start(ps, proxy_l).await?);
        let mut ps = config
            .peer_settings(&name, data_dir)
            .map_err(anyhow::Error::msg)?;
        ps.workers = workers;
        peers.push((ps, peer_l));
    }
    for (ps, peer_l) in peers {
        servers.push(peer::start(ps, peer_l).await?);
    }
    Ok(servers)
}

/// `overlay up` runs the controller, so it provisions its own users: each proxy pins the
/// controller's root, and one that has not joined gets a join token (as `overlay token create`
/// makes), so no manual step is needed. A proxy whose key file was lost gets a replace token;
/// a revoked one gets nothing (revocation stands until an admin makes a replace token).
async fn provision(handle: &controller::Handle, ps: &mut impl Member) -> anyhow::Result<()> {
    use controller::registry::{IssueToken, Pinned};
    let (name, key_path) = ps.key_file();
    let (root, join) = ps.trust();
    *root = Some(handle.root.clone());
    let (identity, _) = crate::trust::Identity::load_or_create(&key_path)
        .map_err(|e| anyhow::anyhow!("{name}: its identity key: {e}"))?;
    let replace = match handle.registry.send(Pinned { name: name.clone() }).await? {
        Some((key, _)) if key == identity.public() => return Ok(()),
        Some((_, true)) => {
            log::warn!("the key of {name} is revoked: its proxy is not joined again");
            return Ok(());
        }
        Some((key, false)) => {
            log::warn!(
                "{name} is pinned to key {}, not to the one in {} ({}): `overlay up` runs the \
                 controller, so it replaces the lost key",
                key.fingerprint(),
                key_path.display(),
                identity.fingerprint()
            );
            true
        }
        None => false,
    };
    let issued = handle
        .registry
        .send(IssueToken {
            name: name.clone(),
            ttl: std::time::Duration::from_secs(3600),
            replace,
            source: "overlay up".into(),
        })
        .await?
        .map_err(|e| anyhow::anyhow!("a join token for {name}: {e}"))?;
    *join = Some(issued.token);
    Ok(())
}

/// A member that joins the controller: a proxy, or a relay.
pub(crate) trait Member {
    /// Its name, and its identity key's file.
    fn key_file(&self) -> (String, PathBuf);
    /// Its pinned root and join token, to fill in.
    fn trust(
        &mut self,
    ) -> (
        &mut Option<crate::trust::Fingerprint>,
        &mut Option<crate::trust::JoinToken>,
    );
}

impl Member for ProxySettings {
    fn key_file(&self) -> (String, PathBuf) {
        let name = self.name.to_string();
        let path = self.data_dir.join(format!("proxy-{name}.key"));
        (name, path)
    }
    fn trust(
        &mut self,
    ) -> (
        &mut Option<crate::trust::Fingerprint>,
        &mut Option<crate::trust::JoinToken>,
    ) {
        (&mut self.root, &mut self.join)
    }
}

impl Member for crate::config::RelaySettings {
    fn key_file(&self) -> (String, PathBuf) {
        let name = self.name.to_string();
        let path = self.data_dir.join(format!("relay-{name}.key"));
        (name, path)
    }
    fn trust(
        &mut self,
    ) -> (
        &mut Option<crate::trust::Fingerprint>,
        &mut Option<crate::trust::JoinToken>,
    ) {
        (&mut self.root, &mut self.join)
    }
}

/// `overlay controller --provision-dir DIR`: the controller writes `DIR/root.fingerprint` and,
/// for each user (and relay) of the config whose proxy has not joined, a join token `DIR/NAME.join` (0600,
/// valid 1 h), which that proxy reads with `--join-file` (docker-compose's shared volume). A
/// joined or revoked name gets no new token: its file, if any, is left as it is.
async fn provision_dir(handle: &controller::Handle, p: &Provision) -> anyhow::Result<()> {
    use crate::trust::private_file;
    use controller::registry::{IssueToken, Pinned};
    let fp_path = p.dir.join("root.fingerprint");
    private_file::replace(&fp_path, format!("{}\n", handle.root).as_bytes(), 0o644)
        .map_err(|e| anyhow::anyhow!("--provision-dir: {e}"))?;
    for name in &p.names {
        if handle
            .registry
            .send(Pinned { name: name.clone() })
            .await?
            .is_some()
        {
            continue;
        }
        let issued = handle
            .registry
            .send(IssueToken {
                name: name.clone(),
                ttl: std::time::Duration::from_secs(3600),
                replace: false,
                source: "provision-dir".into(),
            })
            .await?
            .map_err(|e| anyhow::anyhow!("--provision-dir: a join token for {name}: {e}"))?;
        let path = p.dir.join(format!("{name}.join"));
        private_file::replace(&path, format!("{}\n", issued.token).as_bytes(), 0o600)
            .map_err(|e| anyhow::anyhow!("--provision-dir: {e}"))?;
        log::info!(
            "wrote a join token for {name} to {} (valid 1 h)",
            path.display()
        );
    }
    Ok(())
}

/// How long `--join-file` / `--controller-root-file` wait for their file to appear.
const TRUST_FILE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const TRUST_FILE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Reads `--controller-root-file` and `--join-file` into `ps`. A missing file is waited for
/// (it comes from another container: the controller's `--provision-dir`), polled every
/// 200 ms for up to 60 s.
async fn read_trust_files(ps: &mut impl Member, files: &TrustFiles) -> anyhow::Result<()> {
    let (root, join) = ps.trust();
    if let Some(path) = &files.root {
        let text = wait_for_file(path, "--controller-root-file", |p| {
            std::fs::read_to_string(p).map_err(|e| (e.kind(), e.to_string()))
        })
        .await?;
        *root = Some(
            crate::trust::Fingerprint::parse(text.trim())
                .map_err(|e| anyhow::anyhow!("--controller-root-file {}: {e}", path.display()))?,
        );
    }
    if let Some(path) = &files.join {
        let bytes = wait_for_file(path, "--join-file", |p| {
            crate::trust::private_file::read(p, 1024).map_err(|e| match &e {
                crate::trust::KeyError::Io { source, .. } => (source.kind(), e.to_string()),
                _ => (std::io::ErrorKind::Other, e.to_string()),
            })
        })
        .await?;
        let text = String::from_utf8_lossy(&bytes);
        *join = Some(
            crate::trust::JoinToken::parse(text.trim())
                .map_err(|e| anyhow::anyhow!("--join-file {}: {e}", path.display()))?,
        );
    }
    Ok(())
}

/// `read(path)`, retried while the file does not exist (logged once), up to [`TRUST_FILE_WAIT`].
async fn wait_for_file<T>(
    path: &Path,
    flag: &str,
    read: impl Fn(&Path) -> Result<T, (std::io::ErrorKind, String)>,
) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        match read(path) {
            Ok(v) => return Ok(v),
            Err((std::io::ErrorKind::NotFound, _)) if started.elapsed() < TRUST_FILE_WAIT => {
                if !told {
                    log::info!(
                        "{flag}: waiting for {} to appear (up to {} s)",
                        path.display(),
                        TRUST_FILE_WAIT.as_secs()
                    );
                    told = true;
                }
                actix_rt::time::sleep(TRUST_FILE_POLL).await;
            }
            Err((_, e)) => anyhow::bail!("{flag} {}: {e}", path.display()),
        }
    }
}

/// An address or URL whose port is 0 gets the port actually bound.
pub(crate) fn fix_port_zero(s: &mut String, bound: SocketAddr) {
    if let Some(head) = s.strip_suffix(":0") {
        *s = format!("{head}:{}", bound.port());
    }
}

/// The table printed at start-up: what each server is and where to open it.
pub fn url_table(servers: &[Running]) -> String {
    let mut out = String::from("overlay is running:\n");
    let width = servers.iter().map(|s| s.label.len()).max().unwrap_or(0);
    for s in servers {
        let what = if s.label == "controller" {
            "dashboard"
        } else if s.label.starts_with("peer/") {
            "chat page"
        } else if s.label.starts_with("relay/") {
            "relay"
        } else {
            "proxy"
        };
        let tls = match s.tls_addr {
            Some(a) => format!(
                "  (members over TLS: {})",
                crate::web::shown_url("", a, s.tls_advertised.as_deref()).trim_start_matches("://")
            ),
            None => String::new(),
        };
        let url = s.url();
        let bound = if url == crate::web::shown_url(s.scheme, s.addr, None) {
            String::new()
        } else {
            format!("  (bound to {})", s.addr)
        };
        out.push_str(&format!(
            "  {:<width$}  {:<9}  {url}{bound}{tls}\n",
            s.label,
            what,
            width = width
        ));
    }
    out.push_str("Press Ctrl-C to stop.");
    out
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C will stop overlay");
                let _ = actix_rt::signal::ctrl_c().await;
                return;
            }
        };
        let ctrl_c = Box::pin(actix_rt::signal::ctrl_c());
        let term = Box::pin(term.recv());
        futures_util::future::select(ctrl_c, term).await;
    }
    #[cfg(not(unix))]
    {
        let _ = actix_rt::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_replaced_by_the_bound_port() {
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let mut url = "http://127.0.0.1:0".to_string();
        fix_port_zero(&mut url, bound);
        assert_eq!(url, "http://127.0.0.1:4242");
        let mut adv = "example.org:10001".to_string();
        fix_port_zero(&mut adv, bound);
        assert_eq!(adv, "example.org:10001");
    }
}

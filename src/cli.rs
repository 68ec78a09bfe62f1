//! The command line: `overlay [--config F] [--data-dir D] [--check] controller [init] | proxy |
//! peer | up | id | token create | revoke`.
//!
//! Owns the flags and their help text, and turns flags + config.yaml into a checked [`Plan`]
//! (the servers) or [`Tool`] (the one-shot admin commands) before anything listens or is
//! written. It runs nothing itself: [`crate::up`] starts the servers, [`crate::admin_client`]
//! runs the tools.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ControllerSettings, PeerSettings, ProxySettings, RelaySettings};

/// Self-hosted chat overlay where people and AI models talk as peers.
///
/// Each user has a peer (chat page + local store) that talks only to its own proxy; proxies
/// route messages to each other and to AI APIs; the controller hands every proxy its endpoint
/// table and shows a live dashboard.
#[derive(Debug, Parser)]
#[command(name = "overlay", version, propagate_version = true)]
pub struct Cli {
    /// The config file (YAML) describing the controller, the users and the AI endpoints.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "config.yaml",
        env = "OVERLAY_CONFIG"
    )]
    pub config: PathBuf,

    /// Directory where the stores (redb files) live; created if missing.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "data",
        env = "OVERLAY_DATA_DIR"
    )]
    pub data_dir: PathBuf,

    /// Check the config and this command's flags, print what would run, and exit
    /// (0 when valid, 2 when not) without listening on anything.
    #[arg(long, global = true)]
    pub check: bool,

    /// HTTP worker threads per server (default 1; each handles many connections).
    #[arg(long, global = true, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (registry of proxies, signed directory, dashboard); `controller init`
    /// makes its keys.
    Controller(ControllerArgs),
    /// Run one user's proxy: routes that user's messages to other proxies and to AI APIs.
    Proxy(ProxyArgs),
    /// Run one user's chat app (page + store), and that user's proxy unless --proxy-url is given.
    Peer(PeerArgs),
    /// Run a relay: carries messages to proxies behind NAT, which keep a stream open to it.
    Relay(RelayArgs),
    /// Run every role of the config in one process: the controller, and each user's proxy and peer.
    Up(UpArgs),
    /// Print a public key's fingerprint: the controller's root, or with --name a proxy's.
    Id(IdArgs),
    /// Join tokens: `token create --name NAME` lets that user's proxy join the controller.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke the key pinned to a user's name (asks the running controller).
    Revoke(RevokeArgs),
    /// Replace a proxy's identity key with a new one, signed by the old key (stop the proxy
    /// first; start it again after).
    RotateKey(RotateArgs),
    /// The controller's admin: `admin password` sets the dashboard's admin password.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Ask running roles' /healthz (e.g. http://127.0.0.1:5001/healthz): prints each answer, and
    /// exits 0 when every one can do its job, 1 when one cannot or does not answer (a
    /// container's healthcheck; the image has no curl).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Each role's health URL: http://, or https:// for a role serving its pages beyond
    /// loopback (checked against the system's roots and --data-dir's page CA).
    #[arg(value_name = "URL", required = true)]
    pub urls: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set the admin password (read from stdin, at least 12 characters; kept as an argon2id
    /// hash in admin.password in the controller's data directory). It logs in from this
    /// machine only until the overlay serves HTTPS; the admin token works from anywhere.
    Password,
}

#[derive(Debug, Subcommand)]
pub enum ControllerCommand {
    /// Make whatever is missing of the root key, the online key and its certificate, and print
    /// the root fingerprint that proxies pin; with --root-key, certify a new online key.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The root key file, e.g. its offline copy brought back to replace a lost online key
    /// (default: controller-root.key in the data directory).
    #[arg(long, value_name = "PATH")]
    pub root_key: Option<PathBuf>,
    /// Make a new overlay CA under the root (a rotation): certificates of the old CA stay
    /// trusted until they expire (at most 72 h), proxies renew from the new one.
    #[arg(long)]
    pub new_ca: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The user whose proxy key to show (data-dir/proxy-NAME.key, made if missing);
    /// without it, the controller's root fingerprint.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Ask the running controller for a join token for NAME and print the command that uses it.
    Create(TokenCreateArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The user (an instance name of the config) the token lets join.
    #[arg(long)]
    pub name: String,
    /// How long the token is valid: e.g. 30m, 24h, 7d.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub ttl: String,
    /// The token may replace a key already pinned to the name (its key file was lost).
    #[arg(long)]
    pub replace: bool,
    /// The controller's URL, instead of controller.url of the config.
    #[arg(long, value_name = "URL")]
    pub controller_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The user whose pinned key is revoked.
    pub name: String,
    /// Why, for the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// The controller's URL, instead of controller.url of the config.
    #[arg(long, value_name = "URL")]
    pub controller_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The user whose proxy key (data-dir/proxy-NAME.key) is replaced.
    #[arg(long)]
    pub name: String,
    /// The controller's URL, instead of controller.url of the config.
    #[arg(long, value_name = "URL")]
    pub controller_url: Option<String>,
    /// The controller's root fingerprint, instead of controller.root of the config.
    #[arg(long, value_name = "FINGERPRINT", env = "OVERLAY_CONTROLLER_ROOT")]
    pub controller_root: Option<String>,
}

/// How a proxy trusts the controller: the pinned root and, to join, a token.
#[derive(Debug, Args, Default)]
pub struct TrustArgs {
    /// The controller's root fingerprint to pin (sha256:…, printed by `overlay controller
    /// init`), instead of controller.root of the config.
    #[arg(
        long,
        value_name = "FINGERPRINT",
        env = "OVERLAY_CONTROLLER_ROOT",
        conflicts_with = "controller_root_file"
    )]
    pub controller_root: Option<String>,
    /// Read the root fingerprint from this file (waits up to 60 s for it to appear: another
    /// container may write it).
    #[arg(long, value_name = "PATH")]
    pub controller_root_file: Option<PathBuf>,
    /// The join token (from `overlay token create`) this proxy joins with, once.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "OVERLAY_JOIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "join_file"
    )]
    pub join: Option<String>,
    /// Read the join token from this file, mode 0600 (waits up to 60 s for it to appear).
    #[arg(long, value_name = "PATH")]
    pub join_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControllerArgs {
    /// Address to listen on, instead of controller.listen (e.g. 0.0.0.0:8000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the TLS listener proxies use, instead of controller.tls_listen
    /// (e.g. 0.0.0.0:8443).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// Write root.fingerprint and a join token NAME.join (valid 1 h) for every user of the
    /// config whose proxy has not joined yet into DIR, for proxies that share it
    /// (docker-compose's provision volume).
    #[arg(long, value_name = "DIR")]
    pub provision_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<ControllerCommand>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The user (an instance name of the config) whose proxy this is.
    #[arg(long)]
    pub name: String,
    /// Address to listen on, instead of the instance's proxy.listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// host:port other proxies use to reach this one, instead of proxy.advertise.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Address of the TLS listener other proxies use, instead of proxy.tls_listen.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// host:port other proxies reach the TLS listener at, instead of proxy.tls_advertise.
    #[arg(long, value_name = "HOST:PORT")]
    pub tls_advertise: Option<String>,
    /// The controller's URL, instead of controller.url (e.g. https://controller:8443).
    #[arg(long, value_name = "URL")]
    pub controller_url: Option<String>,
    /// This user's peer's URL, instead of the instance's peer address.
    #[arg(long, value_name = "URL")]
    pub peer_url: Option<String>,
    /// A file (0600) with the token the peer and this proxy share, for a peer on another
    /// machine: without it, the own-peer API answers loopback callers only.
    #[arg(long, value_name = "PATH", env = "OVERLAY_LINK_TOKEN_FILE")]
    pub link_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The relay's name (one of `relays:` in the config).
    #[arg(long)]
    pub name: String,
    /// Address of its plain listener (health, and its status for loopback callers), instead
    /// of relay.listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the TLS listener proxies attach and send to, instead of relay.tls_listen.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// host:port proxies reach the TLS listener at, instead of relay.tls_advertise.
    #[arg(long, value_name = "HOST:PORT")]
    pub tls_advertise: Option<String>,
    /// The controller's URL, instead of controller.url (e.g. https://controller:8443).
    #[arg(long, value_name = "URL")]
    pub controller_url: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct PeerArgs {
    /// The user (an instance name of the config) whose chat app this is.
    #[arg(long)]
    pub name: String,
    /// Address the chat page listens on, instead of the instance's peer.listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// host:port the proxy uses to reach this peer, instead of peer.advertise.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Use the proxy at this URL instead of starting this user's proxy in the same process
    /// (that proxy has its own root and token: the trust flags do not apply).
    #[arg(long, value_name = "URL", conflicts_with = "TrustArgs")]
    pub proxy_url: Option<String>,
    /// Address the in-process proxy listens on, instead of the instance's proxy.listen.
    #[arg(long, value_name = "ADDR", conflicts_with = "proxy_url")]
    pub proxy_listen: Option<SocketAddr>,
    /// host:port other proxies use to reach the in-process proxy, instead of proxy.advertise.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "proxy_url")]
    pub proxy_advertise: Option<String>,
    /// Address of the in-process proxy's TLS listener, instead of proxy.tls_listen.
    #[arg(long, value_name = "ADDR", conflicts_with = "proxy_url")]
    pub proxy_tls_listen: Option<SocketAddr>,
    /// host:port other proxies reach its TLS listener at, instead of proxy.tls_advertise.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "proxy_url")]
    pub proxy_tls_advertise: Option<String>,
    /// The controller's URL for the in-process proxy, instead of controller.url.
    #[arg(long, value_name = "URL", conflicts_with = "proxy_url")]
    pub controller_url: Option<String>,
    /// A file (0600) with the token this peer and its proxy share (with --proxy-url, for a
    /// proxy on another machine; started together they make one of their own).
    #[arg(long, value_name = "PATH", env = "OVERLAY_LINK_TOKEN_FILE")]
    pub link_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Bind every listener on this IP instead of the one in the config (ports unchanged),
    /// e.g. 0.0.0.0 to accept other machines.
    #[arg(long, value_name = "IP")]
    pub host: Option<std::net::IpAddr>,
}

/// What a command line resolved to, checked, before anything listens.
// One per process, built once: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Plan {
    Controller {
        settings: ControllerSettings,
        listen: SocketAddr,
        provision: Option<Provision>,
    },
    Proxy {
        settings: ProxySettings,
        listen: SocketAddr,
        files: TrustFiles,
    },
    Relay {
        settings: RelaySettings,
        listen: SocketAddr,
        files: TrustFiles,
    },
    /// A peer, with its own proxy unless `proxy` is None (then `settings.proxy_url` is remote).
    Peer {
        settings: PeerSettings,
        listen: SocketAddr,
        proxy: Option<(ProxySettings, SocketAddr, TrustFiles)>,
    },
    Up {
        config: Config,
        data_dir: PathBuf,
        workers: usize,
    },
}

/// Files a proxy reads its root and join token from as it starts (`--controller-root-file`,
/// `--join-file`): they may not exist yet when another container writes them, so they are
/// read then, not when the command line is checked.
#[derive(Debug, Default, Clone)]
pub struct TrustFiles {
    pub root: Option<PathBuf>,
    pub join: Option<PathBuf>,
}

/// `overlay controller --provision-dir DIR`: where to write join tokens for the config's users.
#[derive(Debug, Clone)]
pub struct Provision {
    pub dir: PathBuf,
    pub names: Vec<String>,
}

/// A one-shot admin command: it starts no server (see [`crate::admin_client`]).
#[derive(Debug)]
pub enum Tool {
    /// `overlay id [--name NAME]`.
    Id {
        data_dir: PathBuf,
        name: Option<String>,
    },
    /// `overlay controller init [--root-key PATH]`.
    ControllerInit {
        data_dir: PathBuf,
        root_key: Option<PathBuf>,
        new_ca: bool,
    },
    /// `overlay token create`.
    TokenCreate {
        data_dir: PathBuf,
        name: String,
        ttl: String,
        replace: bool,
        controller_url: Option<String>,
    },
    /// `overlay revoke NAME --reason TEXT`.
    Revoke {
        data_dir: PathBuf,
        name: String,
        reason: String,
        controller_url: Option<String>,
    },
    /// `overlay admin password`.
    AdminPassword { data_dir: PathBuf },
    /// `overlay health URL`: an https:// page is checked against the system's roots and the
    /// data dir's page CA (a page beyond loopback serves that CA's certificate).
    Health {
        urls: Vec<String>,
        data_dir: PathBuf,
    },
    /// `overlay rotate-key --name NAME`.
    RotateKey {
        data_dir: PathBuf,
        name: String,
        controller_url: Option<String>,
        /// From the flag, else the config's controller.root.
        root: Option<crate::trust::Fingerprint>,
    },
}

impl Tool {
    /// The command line as a tool, if it is one; the error is for the user, as one line.
    pub fn from_cli(cli: &Cli) -> Option<Result<Tool, String>> {
        let data_dir = cli.data_dir.clone();
        let url = |u: &Option<String>| -> Result<Option<String>, String> {
            u.as_deref()
                .map(|u| check_url("--controller-url", u))
                .transpose()
        };
        let tool = match &cli.command {
            Command::Controller(ControllerArgs {
                command: Some(ControllerCommand::Init(a)),
                ..
            }) => Ok(Tool::ControllerInit {
                data_dir,
                root_key: a.root_key.clone(),
                new_ca: a.new_ca,
            }),
            Command::Id(a) => match &a.name {
                Some(n) if !is_file_safe(n) => Err(format!(
                    "--name: `{n}` is not a user name (letters, digits, `-`, `_` and `.`)"
                )),
                name => Ok(Tool::Id {
                    data_dir,
                    name: name.clone(),
                }),
            },
            Command::Token(TokenCommand::Create(a)) => humantime::parse_duration(a.ttl.trim())
                .map_err(|e| format!("--ttl `{}`: {e}; write e.g. 30m, 24h or 7d", a.ttl))
                .and_then(|_| {
                    Ok(Tool::TokenCreate {
                        data_dir,
                        name: a.name.clone(),
                        ttl: a.ttl.trim().to_string(),
                        replace: a.replace,
                        controller_url: url(&a.controller_url)?,
                    })
                }),
            Command::Revoke(a) => url(&a.controller_url).map(|controller_url| Tool::Revoke {
                data_dir,
                name: a.name.clone(),
                reason: a.reason.clone(),
                controller_url,
            }),
            Command::Admin(AdminCommand::Password) => Ok(Tool::AdminPassword { data_dir }),
            Command::Health(a) => a
                .urls
                .iter()
                .map(|u| check_url("URL", u))
                .collect::<Result<Vec<_>, _>>()
                .map(|urls| Tool::Health { urls, data_dir }),
            Command::RotateKey(a) if !is_file_safe(&a.name) => Err(format!(
                "--name: `{}` is not a user name (letters, digits, `-`, `_` and `.`)",
                a.name
            )),
            Command::RotateKey(a) => (|| {
                let root = a
                    .controller_root
                    .as_deref()
                    .map(|f| {
                        crate::trust::Fingerprint::parse(f.trim()).map_err(|e| {
                            format!("--controller-root (or OVERLAY_CONTROLLER_ROOT): {e}")
                        })
                    })
                    .transpose()?;
                Ok(Tool::RotateKey {
                    data_dir,
                    name: a.name.clone(),
                    controller_url: url(&a.controller_url)?,
                    root,
                })
            })(),
            _ => return None,
        };
        Some(tool)
    }

    /// The controller URL still to be taken from the config (the flag was not given).
    pub fn missing_controller_url(&mut self) -> Option<&mut Option<String>> {
        match self {
            Tool::TokenCreate { controller_url, .. }
            | Tool::Revoke { controller_url, .. }
            | Tool::RotateKey { controller_url, .. }
                if controller_url.is_none() =>
            {
                Some(controller_url)
            }
            _ => None,
        }
    }

    /// What the tool would do, for `--check`.
    pub fn describe(&self) -> String {
        match self {
            Tool::AdminPassword { data_dir } => format!(
                "set the admin password of the controller in {}",
                data_dir.display()
            ),
            Tool::Health { urls, .. } => {
                format!("ask {} whether each can do its job", urls.join(", "))
            }
            Tool::Id { name: None, .. } => "print the controller's root fingerprint".into(),
            Tool::Id { name: Some(n), .. } => format!("print the fingerprint of {n}'s proxy key"),
            Tool::ControllerInit { data_dir, .. } => {
                format!(
                    "make the controller's missing keys in {}",
                    data_dir.display()
                )
            }
            Tool::TokenCreate {
                name,
                controller_url,
                ..
            } => format!(
                "ask the controller at {} for a join token for {name}",
                controller_url.as_deref().unwrap_or("?")
            ),
            Tool::Revoke {
                name,
                controller_url,
                ..
            } => format!(
                "ask the controller at {} to revoke the key of {name}",
                controller_url.as_deref().unwrap_or("?")
            ),
            Tool::RotateKey {
                name,
                controller_url,
                ..
            } => format!(
                "replace {name}'s proxy key, signed by the old one, at the controller at {}",
                controller_url.as_deref().unwrap_or("?")
            ),
        }
    }

    /// The root still to be taken from the config (`rotate-key` without --controller-root).
    pub fn missing_root(&mut self) -> Option<&mut Option<crate::trust::Fingerprint>> {
        match self {
            Tool::RotateKey { root, .. } if root.is_none() => Some(root),
            _ => None,
        }
    }
}

/// `--link-token-file`: the token in it (a 0600 file of this user), or none.
fn link_token(file: Option<&Path>) -> Result<crate::hop::link::LinkToken, String> {
    let Some(file) = file else {
        return Ok(Default::default());
    };
    let bytes = crate::trust::private_file::read(file, 4096)
        .map_err(|e| format!("--link-token-file: {e}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("--link-token-file {}: not text", file.display()))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(format!(
            "--link-token-file {}: the token is shorter than 16 characters; write a long random \
             one, e.g. `head -c 30 /dev/urandom | base64 > FILE; chmod 600 FILE`",
            file.display()
        ));
    }
    Ok(crate::hop::link::LinkToken::new(Some(token.to_string())))
}

/// A name that can be part of a file name in the data directory (`proxy-NAME.key`).
fn is_file_safe(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Applies `--controller-root` / `--join` to `s` (a bad value is one line naming the flag and
/// the expected form, never echoing a token) and answers the files to read at start.
fn apply_trust(s: &mut impl crate::up::Member, t: &TrustArgs) -> Result<TrustFiles, String> {
    let (root, join) = s.trust();
    if let Some(fp) = &t.controller_root {
        *root = Some(
            crate::trust::Fingerprint::parse(fp.trim())
                .map_err(|e| format!("--controller-root (or OVERLAY_CONTROLLER_ROOT): {e}"))?,
        );
    }
    if let Some(token) = &t.join {
        *join = Some(
            crate::trust::JoinToken::parse(token.trim())
                .map_err(|e| format!("--join (or OVERLAY_JOIN_TOKEN): {e}"))?,
        );
    }
    Ok(TrustFiles {
        root: t.controller_root_file.clone(),
        join: t.join_file.clone(),
    })
}

fn check_url(flag: &str, url: &str) -> Result<String, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(format!(
            "{flag}: `{url}` is not an http(s) URL; write e.g. http://127.0.0.1:8000"
        ))
    }
}

impl Plan {
    /// Resolves the command line against the config; the error is for the user, as one line.
    pub fn new(cli: &Cli, mut config: Config) -> Result<Plan, String> {
        let data_dir = cli.data_dir.clone();
        let workers = usize::from(cli.workers);
        Ok(match &cli.command {
            Command::Controller(a) => {
                if let Some(l) = a.listen {
                    config.controller.listen = l;
                }
                if let Some(t) = a.tls_listen {
                    config.controller.tls_listen = Some(t);
                }
                let listen = config.controller.listen;
                let mut settings = config.controller_settings(&data_dir);
                settings.workers = workers;
                let provision = a.provision_dir.as_ref().map(|dir| Provision {
                    dir: dir.clone(),
                    names: config
                        .instances
                        .iter()
                        .map(|i| i.name.to_string())
                        .chain(config.relays.iter().map(|r| r.name.to_string()))
                        .collect(),
                });
                Plan::Controller {
                    settings,
                    listen,
                    provision,
                }
            }
            Command::Proxy(a) => {
                let name = config.instance(&a.name)?.name.to_string();
                config.set_instance_listeners(&name, None, a.listen);
                config.set_proxy_tls(
                    &name,
                    a.tls_listen,
                    a.tls_advertise.clone(),
                    a.advertise.as_deref(),
                );
                let listen = config.instance(&name)?.proxy.listen;
                let mut s = config.proxy_settings(&name, &data_dir)?;
                if let Some(adv) = &a.advertise {
                    s.advertise = adv.clone();
                }
                if let Some(u) = &a.controller_url {
                    s.controller_url = check_url("--controller-url", u)?;
                }
                if let Some(u) = &a.peer_url {
                    s.peer_url = check_url("--peer-url", u)?;
                }
                s.workers = workers;
                s.link = link_token(a.link_token_file.as_deref())?;
                let files = apply_trust(&mut s, &a.trust)?;
                Plan::Proxy {
                    settings: s,
                    listen,
                    files,
                }
            }
            Command::Relay(a) => {
                if let Some(r) = config.relays.iter_mut().find(|r| r.name.matches(&a.name)) {
                    if let Some(l) = a.listen {
                        r.relay.listen = l;
                    }
                    if let Some(t) = a.tls_listen {
                        r.relay.tls_listen = Some(t);
                    }
                    if let Some(t) = &a.tls_advertise {
                        r.relay.tls_advertise = Some(t.clone());
                    }
                }
                let mut s = config.relay_settings(&a.name, &data_dir)?;
                if let Some(u) = &a.controller_url {
                    s.controller_url = check_url("--controller-url", u)?;
                }
                s.workers = workers;
                let listen = config
                    .relays
                    .iter()
                    .find(|r| r.name.matches(&a.name))
                    .map(|r| r.relay.listen)
                    .ok_or_else(|| format!("no relay named `{}` in the config", a.name))?;
                let files = apply_trust(&mut s, &a.trust)?;
                Plan::Relay {
                    settings: s,
                    listen,
                    files,
                }
            }
            Command::Peer(a) => {
                let name = config.instance(&a.name)?.name.to_string();
                config.set_instance_listeners(&name, a.listen, a.proxy_listen);
                config.set_proxy_tls(
                    &name,
                    a.proxy_tls_listen,
                    a.proxy_tls_advertise.clone(),
                    a.proxy_advertise.as_deref(),
                );
                let inst = config.instance(&name)?.clone();
                let mut peer = config.peer_settings(&name, &data_dir)?;
                peer.workers = workers;
                if let Some(adv) = &a.advertise {
                    peer.advertise = adv.clone();
                }
                let proxy = match &a.proxy_url {
                    Some(u) => {
                        peer.proxy_url = check_url("--proxy-url", u)?;
                        peer.link = link_token(a.link_token_file.as_deref())?;
                        None
                    }
                    None => {
                        let mut p = config.proxy_settings(&name, &data_dir)?;
                        if let Some(adv) = &a.proxy_advertise {
                            p.advertise = adv.clone();
                        }
                        if let Some(u) = &a.controller_url {
                            p.controller_url = check_url("--controller-url", u)?;
                        }
                        if let Some(adv) = &a.advertise {
                            p.peer_url =
                                format!("{}://{adv}", config.page_scheme(inst.peer.listen));
                        }
                        p.workers = workers;
                        // Started together: they share a token made now, so the hop works on
                        // any address (a container's own name, say), and no one else has it.
                        let link = match a.link_token_file.as_deref() {
                            Some(f) => link_token(Some(f))?,
                            None => crate::hop::link::LinkToken::random(),
                        };
                        (p.link, peer.link) = (link.clone(), link);
                        let files = apply_trust(&mut p, &a.trust)?;
                        Some((p, inst.proxy.listen, files))
                    }
                };
                Plan::Peer {
                    settings: peer,
                    listen: inst.peer.listen,
                    proxy,
                }
            }
            Command::Up(a) => {
                if let Some(ip) = a.host {
                    let mut tls = config.controller_tls_listen();
                    tls.set_ip(ip);
                    config.controller.tls_listen = Some(tls);
                    config.controller.listen.set_ip(ip);
                    for inst in &mut config.instances {
                        inst.peer.listen.set_ip(ip);
                        inst.proxy.listen.set_ip(ip);
                        if let Some(t) = &mut inst.proxy.tls_listen {
                            t.set_ip(ip);
                        }
                    }
                }
                Plan::Up {
                    config,
                    data_dir,
                    workers,
                }
            }
            Command::Id(_)
            | Command::Token(_)
            | Command::Revoke(_)
            | Command::RotateKey(_)
            | Command::Health(_)
            | Command::Admin(_) => {
                return Err("this command starts no server (see Tool::from_cli)".into())
            }
        })
    }

    /// One line per server this plan would start, for `--check`.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Plan::Controller {
                listen, provision, ..
            } => {
                let mut lines = vec![format!("controller on {listen}")];
                if let Some(p) = provision {
                    lines.push(format!(
                        "provisioning of {} into {}",
                        p.names.join(", "),
                        p.dir.display()
                    ));
                }
                lines
            }
            Plan::Proxy {
                settings, listen, ..
            } => vec![format!(
                "proxy {} on {listen} (advertised as {}, controller {}, peer {})",
                settings.name, settings.advertise, settings.controller_url, settings.peer_url
            )],
            Plan::Relay {
                settings, listen, ..
            } => vec![format!(
                "relay {} on {listen}, proxies attach on {} (advertised as {}, controller {})",
                settings.name, settings.tls.listen, settings.tls.advertise, settings.controller_url
            )],
            Plan::Peer {
                settings,
                listen,
                proxy,
            } => {
                let mut lines = vec![format!(
                    "peer {} on {listen} (proxy {})",
                    settings.name, settings.proxy_url
                )];
                if let Some((p, l, _)) = proxy {
                    lines.push(format!(
                        "proxy {} on {l} (advertised as {}, controller {})",
                        p.name, p.advertise, p.controller_url
                    ));
                }
                lines
            }
            Plan::Up { config, .. } => {
                let mut lines = vec![format!("controller on {}", config.controller.listen)];
                for r in &config.relays {
                    lines.push(format!("relay {} on {}", r.name, r.relay.listen));
                }
                for i in &config.instances {
                    lines.push(format!("proxy {} on {}", i.name, i.proxy.listen));
                    lines.push(format!("peer {} on {}", i.name, i.peer.listen));
                }
                lines
            }
        }
    }

    /// Creates the data directory (with a message that names it when that fails).
    pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}; pass a writable one with --data-dir DIR",
                dir.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help_text() {
        let root = Cli::command();
        let mut cmds = vec![root.clone()];
        cmds.extend(root.get_subcommands().cloned());
        for cmd in cmds {
            for arg in cmd.get_arguments() {
                assert!(
                    arg.get_help().is_some() || arg.get_id() == "help" || arg.get_id() == "version",
                    "{} --{} has no help",
                    cmd.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}

//! The command line: `overlay [--config F] [--data-dir D] [--check] controller | proxy | peer | up`.
//!
//! Owns the flags and their help text, and turns flags + config.yaml into a checked [`Plan`]
//! before anything listens. It does not run servers itself: [`Plan::run`] hands over to the
//! roles (and to [`crate::up`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ControllerSettings, PeerSettings, ProxySettings};

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
    /// Run the controller: registry of proxies, endpoint tables, dashboard.
    Controller(ControllerArgs),
    /// Run one user's proxy: routes that user's messages to other proxies and to AI APIs.
    Proxy(ProxyArgs),
    /// Run one user's chat app (page + store), and that user's proxy unless --proxy-url is given.
    Peer(PeerArgs),
    /// Run every role of the config in one process: the controller, and each user's proxy and peer.
    Up(UpArgs),
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Address to listen on, instead of controller.listen (e.g. 0.0.0.0:8000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
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
    /// The controller's URL, instead of controller.url (e.g. http://controller:8000).
    #[arg(long, value_name = "URL")]
    pub controller_url: Option<String>,
    /// This user's peer's URL, instead of the instance's peer address.
    #[arg(long, value_name = "URL")]
    pub peer_url: Option<String>,
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
    /// Use the proxy at this URL instead of starting this user's proxy in the same process.
    #[arg(long, value_name = "URL")]
    pub proxy_url: Option<String>,
    /// Address the in-process proxy listens on, instead of the instance's proxy.listen.
    #[arg(long, value_name = "ADDR", conflicts_with = "proxy_url")]
    pub proxy_listen: Option<SocketAddr>,
    /// host:port other proxies use to reach the in-process proxy, instead of proxy.advertise.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "proxy_url")]
    pub proxy_advertise: Option<String>,
    /// The controller's URL for the in-process proxy, instead of controller.url.
    #[arg(long, value_name = "URL", conflicts_with = "proxy_url")]
    pub controller_url: Option<String>,
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
    },
    Proxy {
        settings: ProxySettings,
        listen: SocketAddr,
    },
    /// A peer, with its own proxy unless `proxy` is None (then `settings.proxy_url` is remote).
    Peer {
        settings: PeerSettings,
        listen: SocketAddr,
        proxy: Option<(ProxySettings, SocketAddr)>,
    },
    Up {
        config: Config,
        data_dir: PathBuf,
        workers: usize,
    },
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
                let listen = config.controller.listen;
                let mut settings = config.controller_settings(&data_dir);
                settings.workers = workers;
                Plan::Controller { settings, listen }
            }
            Command::Proxy(a) => {
                let name = config.instance(&a.name)?.name.to_string();
                config.set_instance_listeners(&name, None, a.listen);
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
                Plan::Proxy {
                    settings: s,
                    listen,
                }
            }
            Command::Peer(a) => {
                let name = config.instance(&a.name)?.name.to_string();
                config.set_instance_listeners(&name, a.listen, a.proxy_listen);
                let inst = config.instance(&name)?.clone();
                let mut peer = config.peer_settings(&name, &data_dir)?;
                peer.workers = workers;
                let proxy = match &a.proxy_url {
                    Some(u) => {
                        peer.proxy_url = check_url("--proxy-url", u)?;
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
                            p.peer_url = format!("http://{adv}");
                        }
                        p.workers = workers;
                        Some((p, inst.proxy.listen))
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
                    config.controller.listen.set_ip(ip);
                    for inst in &mut config.instances {
                        inst.peer.listen.set_ip(ip);
                        inst.proxy.listen.set_ip(ip);
                    }
                }
                Plan::Up {
                    config,
                    data_dir,
                    workers,
                }
            }
        })
    }

    /// One line per server this plan would start, for `--check`.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Plan::Controller { listen, .. } => vec![format!("controller on {listen}")],
            Plan::Proxy { settings, listen } => vec![format!(
                "proxy {} on {listen} (advertised as {}, controller {}, peer {})",
                settings.name, settings.advertise, settings.controller_url, settings.peer_url
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
                if let Some((p, l)) = proxy {
                    lines.push(format!(
                        "proxy {} on {l} (advertised as {}, controller {})",
                        p.name, p.advertise, p.controller_url
                    ));
                }
                lines
            }
            Plan::Up { config, .. } => {
                let mut lines = vec![format!("controller on {}", config.controller.listen)];
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

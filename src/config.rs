//! `config.yaml` → checked, typed configuration, and the per-role settings derived from it.
//!
//! Owns: the file format (every field, its default, and the error a user sees when it is wrong),
//! the cross-field checks serde cannot do (duplicate names and ports), and the derivation of
//! each role's settings. It never opens a socket or a store.
//!
//! The `ai_endpoints:` section and what each AI provider is ([`ProviderSpec`]) are in `config/ai.rs`.
//!
//! Secrets are never written in the file: an AI endpoint names the environment variable (or
//! file) that holds its key, and only the proxy that calls the API ever reads it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod ai;

pub use crate::wire::control_plane::{AiTimeouts, AuthStyle, HistoryConfig, Provider};
pub use ai::{AiEndpointConfig, ApiVersion, ChatDialect, ProviderSpec, WireFormat, PROVIDERS};

/// The whole of `config.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub controller: ControllerConfig,
    /// The users of the overlay, each with a chat page (peer) and a proxy.
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    /// AI models reachable as peers: by name, through every proxy.
    #[serde(default)]
    pub ai_endpoints: Vec<AiEndpointConfig>,
    /// How proxies deliver messages: retries, expiry, body limits.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// What every role's HTTP listener allows its clients: body deadline, connections.
    #[serde(default)]
    pub server: ServerConfig,
    /// Proxies of the original (which sign nothing) this overlay still talks to, each bound to
    /// the address its requests come from. Without an entry here, unsigned message posts from
    /// other proxies are refused, and the controller's original API answers nobody.
    #[serde(default)]
    pub legacy_proxies: Vec<LegacyProxyConfig>,
    /// Encryption between the overlay's members: on unless this says otherwise.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Relays for proxies behind NAT (`overlay relay --name NAME`; `overlay up` runs them).
    #[serde(default)]
    pub relays: Vec<RelayConfig>,
}

/// `relays[i]`: a relay, which carries requests for proxies that cannot be reached directly.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Its name in the directory (joined with a token like a proxy).
    pub name: InstanceName,
    /// Its listeners: `listen` serves `/healthz` and, to loopback callers, its status;
    /// `tls_listen` / `tls_advertise` is where proxies attach and send (public).
    pub relay: ListenerConfig,
    /// How often an attached stream gets a keep-alive, which holds NAT mappings open
    /// (default 15).
    #[serde(default = "default_ping_secs")]
    pub ping_every_secs: u64,
}

fn default_ping_secs() -> u64 {
    15
}

/// `instances[i].proxy.reachable`: how other proxies reach this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachable {
    /// At its advertised TLS address.
    #[default]
    Direct,
    /// Through a relay it keeps a stream open to (behind NAT: no inbound port needed).
    Relay,
    /// Directly when the controller can reach its TLS address (a handshake showing its own
    /// certificate), else through the relay; it keeps a stream open to the relay either way.
    Auto,
}

/// `tls:`: mutual TLS between proxies and with the controller, with certificates the overlay's
/// own CA issues (see `crate::trust::x509`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `false`: this config's controller and proxies take each other in plain HTTP (still
    /// signed, but readable on the path). Hops to a member whose directory entry names a TLS
    /// address stay TLS whatever this says.
    pub enabled: bool,
    /// How long a proxy's certificate lives (at most 72); it is renewed at half its life.
    pub leaf_hours: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            leaf_hours: 24,
        }
    }
}

impl TlsConfig {
    /// A leaf's lifetime in ms.
    pub fn leaf_ms(&self) -> u64 {
        self.leaf_hours * 3600 * 1000
    }
}

/// `legacy_proxies[i]`: a proxy of the original, by name and the source address it posts from.
/// Its messages are shown as unauthenticated: nobody vouches for them but that address. It may
/// be a user of `instances` who runs the original's proxy; once a key is pinned to that name
/// (the user joined), the listing no longer speaks for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyProxyConfig {
    /// Its instance name: the `from` of its messages, the name it registers under.
    pub name: InstanceName,
    /// The IP address its requests come from (no port), e.g. `192.0.2.7`.
    pub address: IpAddr,
}

impl Config {
    /// The listed legacy proxy `name` whose requests come from `source`, if any.
    pub fn legacy_proxy(&self, name: &str, source: IpAddr) -> Option<&LegacyProxyConfig> {
        let source = source.to_canonical();
        self.legacy_proxies
            .iter()
            .find(|l| l.name.matches(name) && l.address.to_canonical() == source)
    }

    /// Whether any legacy proxy is listed at `source`.
    pub fn is_legacy_address(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.legacy_proxies
            .iter()
            .any(|l| l.address.to_canonical() == source)
    }
}

/// `controller:`: where the controller listens and how it judges liveness.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address the controller binds, e.g. `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// Address of the controller's TLS listener, which proxies use (join, register, heartbeat,
    /// directory); default: `listen`'s IP, port 8443 (port 0 when `listen`'s is 0).
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// URL proxies use to reach the controller; defaults to `https://` + `tls_listen` (with
    /// `tls.enabled: false`, `http://` + `listen`).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub liveness: LivenessConfig,
    /// The controller's root fingerprint (`sha256:…`, printed by `overlay controller init`),
    /// which proxies pin: they believe only directories signed under it. `overlay up` needs
    /// none (it runs the controller itself).
    #[serde(default)]
    pub root: Option<crate::trust::Fingerprint>,
}

/// `controller.liveness:` thresholds, in seconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// A proxy sends a heartbeat this often.
    pub heartbeat_every_secs: u64,
    /// Seen less than this long ago: Active; longer: Warning.
    pub warning_after_secs: u64,
    /// Seen longer ago than this: Stale.
    pub stale_after_secs: u64,
    /// Silent for longer than this: dropped from the registry.
    pub drop_after_secs: u64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        // compat: the original's 30 s heartbeat, 60 s / 120 s badges, drop after 2 minutes.
        Self {
            heartbeat_every_secs: 30,
            warning_after_secs: 60,
            stale_after_secs: 120,
            drop_after_secs: 120,
        }
    }
}

/// One user: `instances[i]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub name: InstanceName,
    /// Name shown on pages; defaults to `name`.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The chat page and the peer's JSON API.
    pub peer: ListenerConfig,
    /// The user's proxy.
    pub proxy: ListenerConfig,
    #[serde(default)]
    pub auto_reply: AutoReplyConfig,
}

impl InstanceConfig {
    pub fn display_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(self.name.as_str())
    }
}

/// A server's address: where it binds and how others reach it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind, e.g. `127.0.0.1:5001` (`0.0.0.0:5001` to accept other machines).
    pub listen: SocketAddr,
    /// `host:port` other machines use to reach it; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// A proxy's TLS listener for other proxies; default: `listen`'s IP, any free port (the
    /// signed directory tells the others). Proxies only.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// `host:port` other proxies reach the TLS listener at; default: `advertise`'s host (else
    /// `tls_listen`'s) with `tls_listen`'s port. Proxies only.
    #[serde(default)]
    pub tls_advertise: Option<String>,
    /// `direct` (default), `relay` (behind NAT: reached through a relay), or `auto` (directly
    /// when the controller can reach it, else through the relay). Proxies only.
    #[serde(default)]
    pub reachable: Reachable,
    /// The relay (by name) a `reachable: relay` proxy uses; default: the only one of `relays`.
    #[serde(default)]
    pub relay: Option<InstanceName>,
}

impl ListenerConfig {
    /// `host:port` others should use: `advertise`, else `listen` with a wildcard IP made loopback.
    pub fn advertised(&self) -> String {
        match &self.advertise {
            Some(a) => a.clone(),
            None => reachable(self.listen).to_string(),
        }
    }
}

/// `auto_reply:` of an instance.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoReplyConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Lines answered, in turn, to a person's message.
    #[serde(default)]
    pub lines: Vec<String>,
}

/// `delivery:`: store-and-forward between proxies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// First retry delay; doubles per attempt (full jitter) up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// A message not delivered within this time is marked failed.
    pub expire_after_secs: u64,
    /// Largest accepted request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Largest chat message text, in bytes (413 above it).
    pub max_message_bytes: usize,
    /// Timeout of one delivery attempt to another proxy or a peer.
    pub attempt_timeout_secs: u64,
    /// Most messages queued for one destination; past it new ones get 503 (retry later), so a
    /// peer or proxy that is down for long cannot make its queue grow without bound.
    pub max_queued_per_destination: usize,
}

/// `server:`: what every role's HTTP listener allows its clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Longest a request body may take to arrive once its headers have (every role, every
    /// route); past it: 408 and the connection is closed.
    pub body_timeout_secs: u64,
    /// Most connections one listener (controller, each proxy, each peer) keeps open at once;
    /// more wait to be accepted, so one flooded port cannot use up the open-file limit.
    pub max_connections: usize,
    /// Names (beside IP addresses, localhost, and each server's advertised name) under which
    /// browsers may open the pages and the dashboard, e.g. `chat.example.org`: a guard against
    /// DNS rebinding (see `crate::web::host`).
    pub allowed_hosts: Vec<String>,
    /// A peer listening beyond loopback serves its page without its token (see
    /// `crate::peer::login`); warned about at every start.
    pub pages_without_login: bool,
    /// The certificate pages beyond loopback are served with (PEM files); without it, one from
    /// the data dir's page CA (see `crate::web::page_tls`).
    pub page_tls: Option<PageTlsConfig>,
    /// Pages beyond loopback in plain HTTP anyway (warned about at every start).
    pub pages_plain_http: bool,
    /// The name of an environment variable holding a token: with it, `GET /metrics` answers
    /// any caller sending `Authorization: Bearer TOKEN`; without, loopback callers only (see
    /// `crate::web::metrics::MetricsAccess`).
    pub metrics_token_env: Option<String>,
}

/// `server.page_tls`: a certificate for the pages, as PEM files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PageTlsConfig {
    /// The certificate, then its chain.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            body_timeout_secs: 15,
            max_connections: 512,
            allowed_hosts: Vec::new(),
            pages_without_login: false,
            page_tls: None,
            pages_plain_http: false,
            metrics_token_env: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            expire_after_secs: 24 * 3600,
            max_body_bytes: 256 * 1024,
            max_message_bytes: 64 * 1024,
            attempt_timeout_secs: 10,
            max_queued_per_destination: 100_000,
        }
    }
}

/// A user or endpoint name: 1 to 64 of `A-Z a-z 0-9 _ - .`, compared case-insensitively
/// (a [`PeerName`](crate::wire::PeerName) checked once).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct InstanceName(crate::wire::PeerName);

impl InstanceName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(format!(
                "`{s}` is not a valid name: use 1 to 64 letters, digits, `_`, `-` or `.`"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
    /// Same name, ignoring case (routing is case-insensitive).
    pub fn matches(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        InstanceName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A config that could not be used: names the file, where in it, and what to write instead.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!(
                "cannot read it ({e}); pass the right file with --config PATH \
                 (the shipped demo is config.yaml at the repository root)"
            ),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and checks config text; `file` only names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            message: explain_yaml_error(&e),
        })?;
        config.check().map_err(|message| ConfigError {
            file: file.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: unique names, unique ports, sane numbers.
    fn check(&self) -> Result<(), String> {
        let mut names: BTreeMap<crate::wire::PeerName, String> = BTreeMap::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let here = format!("instances[{i}].name");
            if let Some(first) = names.insert(inst.name.as_str().into(), here.clone()) {
                return Err(format!(
                    "{here}: `{}` is already the name of {first} (names are compared ignoring case); \
                     give every instance its own name",
                    inst.name
                ));
            }
            if inst.auto_reply.enabled && inst.auto_reply.lines.iter().all(|l| l.trim().is_empty())
            {
                return Err(format!(
                    "instances[{i}].auto_reply.lines: auto-reply is enabled but has no lines; \
                     add at least one line, or set `enabled: false`"
                ));
            }
        }
        let mut ai_names: BTreeMap<crate::wire::PeerName, String> = BTreeMap::new();
        for (i, ai) in self.ai_endpoints.iter().enumerate() {
            let here = format!("ai_endpoints[{i}].name");
            if let Some(first) = ai_names.insert(ai.name.as_str().into(), here.clone()) {
                return Err(format!(
                    "{here}: `{}` is already the name of {first}; give every AI endpoint its own name",
                    ai.name
                ));
            }
            ai.check(i)?;
        }
        let mut legacy: BTreeMap<crate::wire::PeerName, String> = BTreeMap::new();
        for (i, l) in self.legacy_proxies.iter().enumerate() {
            let here = format!("legacy_proxies[{i}].name");
            if let Some(first) = legacy.insert(l.name.as_str().into(), here.clone()) {
                return Err(format!(
                    "{here}: `{}` is already listed at {first}; list every legacy proxy once",
                    l.name
                ));
            }
        }
        let l = &self.controller.liveness;
        if !(l.heartbeat_every_secs > 0
            && l.warning_after_secs <= l.stale_after_secs
            && l.stale_after_secs <= l.drop_after_secs.max(l.stale_after_secs))
        {
            return Err(
                "controller.liveness: expected heartbeat_every_secs > 0 and \
                 warning_after_secs <= stale_after_secs; fix the numbers"
                    .to_string(),
            );
        }
        let d = &self.delivery;
        if d.retry_initial_ms == 0 || d.retry_max_ms < d.retry_initial_ms {
            return Err(
                "delivery: expected 0 < retry_initial_ms <= retry_max_ms; fix the numbers"
                    .to_string(),
            );
        }
        if d.max_queued_per_destination == 0 {
            return Err(
                "delivery.max_queued_per_destination: must be above 0 (default 100000)".to_string(),
            );
        }
        if self.server.body_timeout_secs == 0 || self.server.max_connections == 0 {
            return Err(
                "server: body_timeout_secs and max_connections must be above 0 \
                 (defaults 15 and 512)"
                    .to_string(),
            );
        }
        if self.tls.leaf_hours == 0
            || self.tls.leaf_hours * 3600 * 1000 > crate::trust::x509::MAX_LEAF_MS
        {
            return Err(
                "tls.leaf_hours: a certificate lives 1 to 72 hours (default 24); fix the number"
                    .to_string(),
            );
        }
        for (i, r) in self.relays.iter().enumerate() {
            let here = format!("relays[{i}].name");
            if let Some(first) = names.insert(r.name.as_str().into(), here.clone()) {
                return Err(format!(
                    "{here}: `{}` is already the name of {first} (names are compared ignoring \
                     case); give the relay its own name",
                    r.name
                ));
            }
            if r.ping_every_secs == 0 {
                return Err(format!(
                    "relays[{i}].ping_every_secs: must be above 0 (default 15)"
                ));
            }
            if !self.tls.enabled {
                return Err(format!(
                    "relays[{i}]: a relay takes proxies over TLS only, and `tls.enabled` is \
                     false; enable TLS or remove the relay"
                ));
            }
        }
        for (i, inst) in self.instances.iter().enumerate() {
            if inst.peer.reachable != Reachable::Direct || inst.peer.relay.is_some() {
                return Err(format!(
                    "instances[{i}].peer: reachable and relay belong to the proxy \
                     (instances[{i}].proxy); move them there"
                ));
            }
            if inst.proxy.reachable != Reachable::Direct {
                self.relay_of(i)?;
            }
        }
        for (i, inst) in self.instances.iter().enumerate() {
            if inst.peer.tls_listen.is_some() || inst.peer.tls_advertise.is_some() {
                return Err(format!(
                    "instances[{i}].peer: tls_listen and tls_advertise belong to the proxy \
                     (instances[{i}].proxy); move them there"
                ));
            }
        }
        if d.max_body_bytes < 1024 || d.max_message_bytes == 0 {
            return Err(
                "delivery: max_body_bytes must be at least 1024 and max_message_bytes above 0"
                    .to_string(),
            );
        }
        check_ports(&self.listeners())
    }

    /// Every listener of the file, with its field path.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut all = vec![("controller.listen".to_string(), self.controller.listen)];
        if self.tls.enabled {
            all.push((
                "controller.tls_listen".to_string(),
                self.controller_tls_listen(),
            ));
        }
        for (i, inst) in self.instances.iter().enumerate() {
            all.push((format!("instances[{i}].peer.listen"), inst.peer.listen));
            all.push((format!("instances[{i}].proxy.listen"), inst.proxy.listen));
            if let (true, Some(t)) = (self.tls.enabled, inst.proxy.tls_listen) {
                all.push((format!("instances[{i}].proxy.tls_listen"), t));
            }
        }
        for (i, r) in self.relays.iter().enumerate() {
            all.push((format!("relays[{i}].relay.listen"), r.relay.listen));
            if let Some(t) = r.relay.tls_listen {
                all.push((format!("relays[{i}].relay.tls_listen"), t));
            }
        }
        all
    }

    /// The relay instance `i` is reached through (`reachable: relay`): the one its
    /// `proxy.relay` names, or the only one of `relays`.
    fn relay_of(&self, i: usize) -> Result<String, String> {
        let inst = &self.instances[i];
        match (&inst.proxy.relay, self.relays.as_slice()) {
            (Some(name), _) => Ok(name.to_string()),
            (None, [only]) => Ok(only.name.to_string()),
            (None, []) => Err(format!(
                "instances[{i}].proxy.reachable: `relay` and `auto` need a relay: add one under `relays:`, \
                 or name a relay the controller lists with instances[{i}].proxy.relay"
            )),
            (None, _) => Err(format!(
                "instances[{i}].proxy.relay: several relays are configured; name the one this \
                 proxy attaches to"
            )),
        }
    }

    /// Settings of relay `name`.
    pub fn relay_settings(&self, name: &str, data_dir: &Path) -> Result<RelaySettings, String> {
        let r = self
            .relays
            .iter()
            .find(|r| r.name.matches(name))
            .ok_or_else(|| {
                format!(
                    "no relay named `{name}` in the config (relays: {}); add it under `relays:`",
                    self.relays
                        .iter()
                        .map(|r| r.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let tls_listen = r
            .relay
            .tls_listen
            .unwrap_or_else(|| SocketAddr::new(r.relay.listen.ip(), 0));
        let tls_advertise = r
            .relay
            .tls_advertise
            .clone()
            .unwrap_or_else(|| Self::tls_advertised(&r.relay, tls_listen));
        Ok(RelaySettings {
            name: r.name.clone(),
            advertise: r.relay.advertised(),
            controller_url: self.controller_url(),
            data_dir: data_dir.to_path_buf(),
            max_body_bytes: self.delivery.max_body_bytes,
            liveness: self.controller.liveness.clone(),
            server: self.server.clone(),
            workers: 1,
            root: self.controller.root.clone(),
            join: None,
            tls: TlsListener {
                listen: tls_listen,
                advertise: tls_advertise,
                leaf_ms: self.tls.leaf_ms(),
            },
            ping_every: std::time::Duration::from_secs(r.ping_every_secs),
        })
    }

    /// `host:port` for a TLS listener on `listen` when no `tls_advertise` is given:
    /// `advertise`'s host (else `tls_listen`'s) with `tls_listen`'s port.
    fn tls_advertised(l: &ListenerConfig, listen: SocketAddr) -> String {
        let host = match &l.advertise {
            Some(a) => crate::wire::host_port::HostPort::host_of(a),
            None => reachable(listen)
                .to_string()
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_default(),
        };
        crate::wire::host_port::HostPort {
            host,
            port: listen.port(),
        }
        .to_string()
    }

    /// Where the controller takes proxies over TLS.
    pub fn controller_tls_listen(&self) -> SocketAddr {
        self.controller.tls_listen.unwrap_or_else(|| {
            let listen = self.controller.listen;
            let port = if listen.port() == 0 { 0 } else { 8443 };
            SocketAddr::new(listen.ip(), port)
        })
    }

    /// The instance with this name (case-insensitive), or an error listing the known ones.
    pub fn instance(&self, name: &str) -> Result<&InstanceConfig, String> {
        self.instances
            .iter()
            .find(|i| i.name.matches(name))
            .ok_or_else(|| {
                let known: Vec<&str> = self.instances.iter().map(|i| i.name.as_str()).collect();
                format!(
                    "no instance named `{name}` in instances; known: {}; add one or pick one of these",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }

    /// `https` for a page listener on `listen` beyond loopback (unless `pages_plain_http`), else
    /// `http` (see `crate::web::page_tls`).
    pub fn page_scheme(&self, listen: SocketAddr) -> &'static str {
        if listen.ip().is_loopback() || self.server.pages_plain_http {
            "http"
        } else {
            "https"
        }
    }

    /// URL proxies use to reach the controller.
    pub fn controller_url(&self) -> String {
        self.controller.url.clone().unwrap_or_else(|| {
            if self.tls.enabled {
                format!("https://{}", reachable(self.controller_tls_listen()))
            } else {
                format!("http://{}", reachable(self.controller.listen))
            }
        })
    }
}

/// Two listeners may not share a port on overlapping addresses (port 0 means "any free one").
fn check_ports(listeners: &[(String, SocketAddr)]) -> Result<(), String> {
    for (i, (path, addr)) in listeners.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        for (first, other) in &listeners[..i] {
            let overlap = addr.ip() == other.ip()
                || addr.ip().is_unspecified()
                || other.ip().is_unspecified();
            if other.port() == addr.port() && overlap {
                return Err(format!(
                    "{path}: port {} is already used by {first}; give each listener its own port",
                    addr.port()
                ));
            }
        }
    }
    Ok(())
}

/// Turns serde_yaml's message into one that says what to write instead.
fn explain_yaml_error(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    let hint = if msg.contains("unknown field") {
        "remove or rename that field (see the config reference in README.md)"
    } else if msg.contains("missing field") {
        "add that field (see the config reference in README.md)"
    } else if msg.contains("unknown variant") {
        "use one of the values listed"
    } else if msg.contains("invalid socket address") {
        "write an IP address and port, e.g. `127.0.0.1:5000` or `0.0.0.0:5000`"
    } else if msg.contains("invalid type") {
        "write a value of the expected type"
    } else {
        "fix the YAML at that line (check indentation, quoting and `key: value` pairs)"
    };
    let mut out = msg;
    if let Some(loc) = e.location() {
        if !out.contains(" at line ") {
            out = format!("line {} column {}: {out}", loc.line(), loc.column());
        }
    }
    format!("{out}; {hint}")
}

/// A bound address as others on this machine reach it: a wildcard IP becomes loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// What the controller needs to run.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// The whole config: the initial endpoint tables are built from its instances and AI endpoints.
    pub config: Config,
    /// Where `controller.redb` lives.
    pub data_dir: PathBuf,
    pub workers: usize,
}

/// What one user's proxy needs to run.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub name: InstanceName,
    /// `host:port` other proxies use to reach this one (sent to the controller).
    pub advertise: String,
    pub controller_url: String,
    /// Base URL of this user's own peer.
    pub peer_url: String,
    /// Where `proxy-NAME.redb` lives.
    pub data_dir: PathBuf,
    pub delivery: DeliveryConfig,
    pub liveness: LivenessConfig,
    /// The whole config: used to build a routing table until the controller (or the cache) has one.
    pub config: Config,
    pub workers: usize,
    /// The controller's root fingerprint; without one the proxy follows no controller.
    pub root: Option<crate::trust::Fingerprint>,
    /// A join token for the first registration (or a replacement of a lost key).
    pub join: Option<crate::trust::JoinToken>,
    /// The token of the hop with its own peer (none: loopback callers only).
    pub link: crate::hop::link::LinkToken,
    /// Its TLS listener for other proxies (none: `tls.enabled: false`): where to bind, and the
    /// `host:port` to advertise (port 0: the bound one).
    pub tls: Option<TlsListener>,
    /// The relay it is reached through (`reachable: relay` or `auto`), by name; none:
    /// directly.
    pub via: Option<String>,
    /// `reachable: auto`: directly when the controller can reach it, else through `via`.
    pub auto: bool,
}

/// What a relay needs to run.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub name: InstanceName,
    /// `host:port` of its plain listener (health, status).
    pub advertise: String,
    pub controller_url: String,
    /// Where `relay-NAME.*` live.
    pub data_dir: PathBuf,
    /// The largest request it carries.
    pub max_body_bytes: usize,
    pub liveness: LivenessConfig,
    pub server: ServerConfig,
    pub workers: usize,
    pub root: Option<crate::trust::Fingerprint>,
    pub join: Option<crate::trust::JoinToken>,
    /// Where proxies attach (always TLS).
    pub tls: TlsListener,
    /// The keep-alive period of attached streams.
    pub ping_every: std::time::Duration,
}

/// A proxy's TLS listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub advertise: String,
    /// Its certificate's lifetime.
    pub leaf_ms: u64,
}

/// What one user's peer (chat page + store) needs to run.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub name: InstanceName,
    pub display_name: String,
    /// Base URL of this user's proxy.
    pub proxy_url: String,
    /// Where `peer-NAME.redb` lives.
    pub data_dir: PathBuf,
    pub auto_reply: AutoReplyConfig,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    /// `server:`, as for every role.
    pub server: ServerConfig,
    /// `host:port` its proxy and browsers reach it at (`peer.advertise`, or `--advertise`).
    pub advertise: String,
    pub workers: usize,
    /// A message the proxy could not be reached for is handed over again until this old
    /// (`delivery.expire_after_secs`), then marked failed.
    pub expire_after_secs: u64,
    /// First and longest wait between hand-over attempts (`delivery.retry_*_ms`, capped at
    /// `u32::MAX` ms: 49 days).
    pub retry_initial_ms: u32,
    pub retry_max_ms: u32,
    /// The token of the hop with its proxy (none: the proxy must call from loopback).
    pub link: crate::hop::link::LinkToken,
}

impl Config {
    pub fn controller_settings(&self, data_dir: &Path) -> ControllerSettings {
        ControllerSettings {
            config: self.clone(),
            data_dir: data_dir.to_path_buf(),
            workers: 1,
        }
    }

    /// Settings of `name`'s proxy; the instance must exist (see [`Config::instance`]).
    pub fn proxy_settings(&self, name: &str, data_dir: &Path) -> Result<ProxySettings, String> {
        let inst = self.instance(name)?;
        Ok(ProxySettings {
            name: inst.name.clone(),
            advertise: inst.proxy.advertised(),
            controller_url: self.controller_url(),
            peer_url: format!(
                "{}://{}",
                self.page_scheme(inst.peer.listen),
                inst.peer.advertised()
            ),
            data_dir: data_dir.to_path_buf(),
            delivery: self.delivery.clone(),
            liveness: self.controller.liveness.clone(),
            config: self.clone(),
            workers: 1,
            root: self.controller.root.clone(),
            join: None,
            link: Default::default(),
            tls: self.tls.enabled.then(|| {
                let listen = inst
                    .proxy
                    .tls_listen
                    .unwrap_or_else(|| SocketAddr::new(inst.proxy.listen.ip(), 0));
                let advertise = inst
                    .proxy
                    .tls_advertise
                    .clone()
                    .unwrap_or_else(|| Self::tls_advertised(&inst.proxy, listen));
                TlsListener {
                    listen,
                    advertise,
                    leaf_ms: self.tls.leaf_ms(),
                }
            }),
            auto: inst.proxy.reachable == Reachable::Auto,
            via: match inst.proxy.reachable {
                Reachable::Direct => None,
                Reachable::Relay | Reachable::Auto => {
                    let i = self
                        .instances
                        .iter()
                        .position(|i| i.name.matches(name))
                        .unwrap_or_default();
                    Some(self.relay_of(i)?)
                }
            },
        })
    }

    /// Settings of `name`'s peer; the instance must exist (see [`Config::instance`]).
    pub fn peer_settings(&self, name: &str, data_dir: &Path) -> Result<PeerSettings, String> {
        let inst = self.instance(name)?;
        Ok(PeerSettings {
            name: inst.name.clone(),
            display_name: inst.display_name().to_string(),
            proxy_url: format!("http://{}", inst.proxy.advertised()),
            data_dir: data_dir.to_path_buf(),
            auto_reply: inst.auto_reply.clone(),
            max_body_bytes: self.delivery.max_body_bytes,
            max_message_bytes: self.delivery.max_message_bytes,
            server: self.server.clone(),
            advertise: inst.peer.advertised(),
            workers: 1,
            expire_after_secs: self.delivery.expire_after_secs,
            retry_initial_ms: u32::try_from(self.delivery.retry_initial_ms).unwrap_or(u32::MAX),
            retry_max_ms: u32::try_from(self.delivery.retry_max_ms).unwrap_or(u32::MAX),
            link: Default::default(),
        })
    }

    /// A proxy's TLS listener from the command line: `listen` and `advertise` replace the
    /// config's; a plain `--advertise` host is the TLS one's too unless it is given.
    pub fn set_proxy_tls(
        &mut self,
        name: &str,
        listen: Option<SocketAddr>,
        advertise: Option<String>,
        plain_advertise: Option<&str>,
    ) {
        if let Some(inst) = self.instances.iter_mut().find(|i| i.name.matches(name)) {
            if let Some(l) = listen {
                inst.proxy.tls_listen = Some(l);
            }
            match (advertise, plain_advertise) {
                (Some(a), _) => inst.proxy.tls_advertise = Some(a),
                (None, Some(plain)) if inst.proxy.tls_advertise.is_none() => {
                    inst.proxy.advertise = Some(plain.to_string());
                }
                _ => {}
            }
        }
    }

    /// Replaces every listen address whose port is 0 (or that was overridden) by the bound one,
    /// so advertised addresses and tables name real ports.
    pub fn set_instance_listeners(
        &mut self,
        name: &str,
        peer: Option<SocketAddr>,
        proxy: Option<SocketAddr>,
    ) {
        if let Some(inst) = self.instances.iter_mut().find(|i| i.name.matches(name)) {
            if let Some(p) = peer {
                inst.peer.listen = p;
            }
            if let Some(p) = proxy {
                inst.proxy.listen = p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config.yaml");

    #[test]
    fn the_shipped_demo_config_is_valid() {
        let c = Config::parse(SHIPPED, "config.yaml").expect("shipped config parses");
        let names: Vec<&str> = c.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["behrooz", "alice", "bob", "BOT"]);
        assert_eq!(c.controller.listen.port(), 8000);
        let ports: Vec<(u16, u16)> = c
            .instances
            .iter()
            .map(|i| (i.peer.listen.port(), i.proxy.listen.port()))
            .collect();
        assert_eq!(
            ports,
            [(5000, 10000), (5001, 10001), (5002, 10002), (5003, 10003)]
        );
        let auto: Vec<bool> = c.instances.iter().map(|i| i.auto_reply.enabled).collect();
        assert_eq!(auto, [false, true, true, false]);
        let ai: Vec<(&str, Provider)> = c
            .ai_endpoints
            .iter()
            .map(|a| (a.name.as_str(), a.provider))
            .collect();
        assert_eq!(
            ai,
            [
                ("BOT", Provider::Openai),
                ("ANTHROPIC", Provider::Anthropic),
                ("GEMINI", Provider::Gemini),
                ("MISTRAL", Provider::Mistral)
            ]
        );
        assert!(c.ai_endpoints.iter().all(|a| a.api_key_env.is_some()));
    }

    fn err(text: &str) -> String {
        Config::parse(text, "bad.yaml").unwrap_err().to_string()
    }

    const MINI: &str = "controller: {listen: 127.0.0.1:8000}\ninstances:\n  - name: a\n    peer: {listen: 127.0.0.1:5000}\n    proxy: {listen: 127.0.0.1:10000}\n";

    #[test]
    fn a_minimal_config_is_valid() {
        assert!(Config::parse(MINI, "x").is_ok());
    }

    #[test]
    fn legacy_proxies_are_found_by_name_and_address_only() {
        let c = Config::parse(
            &format!(
                "{MINI}legacy_proxies:\n  - {{name: carol, address: 192.0.2.7}}\n  - {{name: a, address: '::1'}}\n"
            ),
            "x",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c.legacy_proxy("CAROL", ip("192.0.2.7")).is_some());
        assert!(c.legacy_proxy("carol", ip("::ffff:192.0.2.7")).is_some());
        assert!(c.legacy_proxy("carol", ip("192.0.2.8")).is_none());
        assert!(c.legacy_proxy("dave", ip("192.0.2.7")).is_none());
        assert!(c.is_legacy_address(ip("::1")) && !c.is_legacy_address(ip("127.0.0.1")));
        let twice = err(&format!(
            "{MINI}legacy_proxies:\n  - {{name: carol, address: 192.0.2.7}}\n  - {{name: Carol, address: 192.0.2.8}}\n"
        ));
        assert!(
            twice.contains("legacy_proxies[1].name") && twice.contains("already listed"),
            "{twice}"
        );
        let bad = err(&format!(
            "{MINI}legacy_proxies:\n  - {{name: carol, address: 192.0.2.7:80}}\n"
        ));
        assert!(bad.contains("legacy_proxies[0].address"), "{bad}");
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path_and_line() {
        let e = err(&MINI.replace("proxy: {listen", "proxy: {lisen"));
        assert!(
            e.starts_with("bad.yaml: instances[0].proxy: unknown field `lisen`"),
            "{e}"
        );
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("expected one of `listen`"), "{e}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = err("controller: {listen: 127.0.0.1:8000}\ninstances:\n  - name: a\n    peer: {listen: 127.0.0.1:5000}\n");
        assert!(e.contains("instances[0]: missing field `proxy`"), "{e}");
        assert!(e.contains("add that field"), "{e}");
    }

    #[test]
    fn a_duplicate_port_names_both_listeners() {
        let e = err(&MINI.replace("10000", "5000"));
        assert!(
            e.contains(
                "instances[0].proxy.listen: port 5000 is already used by instances[0].peer.listen"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_wildcard_address_overlaps_every_address() {
        let e = err(&MINI.replace(
            "proxy: {listen: 127.0.0.1:10000",
            "proxy: {listen: 0.0.0.0:8000",
        ));
        assert!(
            e.contains("port 8000 is already used by controller.listen"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_provider_lists_the_known_ones() {
        let e = err(&format!(
            "{MINI}ai_endpoints:\n  - name: X\n    provider: openia\n    model: m\n"
        ));
        assert!(
            e.contains("ai_endpoints[0].provider: unknown variant `openia`"),
            "{e}"
        );
        assert!(
            e.contains("`openai`") && e.contains("`openai_compatible`"),
            "{e}"
        );
    }

    #[test]
    fn a_yaml_syntax_error_names_the_line() {
        let e = err("controller: {listen: 127.0.0.1:8000\ninstances: [\n");
        assert!(e.starts_with("bad.yaml: "), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn a_key_written_where_its_variable_name_belongs_is_refused() {
        let e = err(&format!(
            "{MINI}ai_endpoints:\n  - name: X\n    provider: openai\n    model: m\n    api_key_env: sk-abc123\n"
        ));
        assert!(e.contains("ai_endpoints[0].api_key_env"), "{e}");
        assert!(e.contains("never the key itself"), "{e}");
    }

    #[test]
    fn names_are_unique_ignoring_case() {
        let twice = format!(
            "{MINI}  - name: A\n    peer: {{listen: 127.0.0.1:5001}}\n    proxy: {{listen: 127.0.0.1:10001}}\n"
        );
        let e = err(&twice);
        assert!(
            e.contains("instances[1].name: `A` is already the name of instances[0].name"),
            "{e}"
        );
    }

    #[test]
    fn port_zero_may_repeat() {
        let zeros = MINI
            .replace(":5000", ":0")
            .replace(":10000", ":0")
            .replace(":8000", ":0");
        assert!(Config::parse(&zeros, "x").is_ok());
    }

    #[test]
    fn a_wildcard_listen_is_advertised_as_loopback() {
        let l = ListenerConfig {
            reachable: Default::default(),
            relay: None,
            tls_advertise: None,
            tls_listen: None,
            listen: "0.0.0.0:5000".parse().unwrap(),
            advertise: None,
        };
        assert_eq!(l.advertised(), "127.0.0.1:5000");
    }
}

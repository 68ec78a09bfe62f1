//! Control plane: what proxies and the controller say to each other.
//!
//! The legacy routes (`/api/register`, `/api/getendpoints`, `/api/heartbeat`,
//! `/api/update_proxy_endpoints/{id}`, `/api/remove_proxy/{id}`) keep the original's field names;
//! ours add `GET /api/v1/proxies/{proxy_id}/table/stream` (SSE of [`TableUpdate`]), so a table edit
//! reaches the proxy at once instead of after a 60 s poll.
//!
//! An endpoint table maps a name (another user, or an AI model) to where it is reached.
//! Tables never hold secrets: an AI endpoint names the environment variable of its key.
//! The entries are types only: config.yaml's endpoints become entries in `config`, and the
//! proxy resolves an entry into a call in `proxy::ai::target`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::host_port::HostPort;

/// The protocol tag our proxies send when registering; the original sends none.
pub const NATIVE_PROTOCOL: &str = "overlay/1";

/// `POST /api/register` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisterRequest {
    pub proxy_id: String,
    pub instance_name: String,
    pub host: String,
    pub port: u16,
    /// Ours only: [`NATIVE_PROTOCOL`] when the proxy speaks the native envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Ours only: which of this proxy's AI endpoints have a key where it runs. Absent from the
    /// original's proxies and older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<KeyReport>,
    /// Ours only: the TLS listener other proxies reach it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::directory::TlsAddress>,
    /// Ours only: the key other proxies seal message bodies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<crate::trust::seal::SealPublic>,
    /// Ours only: a relay registers as one.
    #[serde(default, skip_serializing_if = "super::directory::Role::is_user")]
    pub role: super::directory::Role,
    /// Ours only: the relay this proxy is reached through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Ours only: `reachable: auto` (directly if the controller can reach it, else `via`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
}

/// `POST /api/heartbeat` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatRequest {
    pub proxy_id: String,
    /// Ours only: as in [`RegisterRequest::api_keys`], so a key set or removed later shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<KeyReport>,
    /// Ours only, from a relay: who is attached and what it carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayReport>,
}

/// A relay's report to the controller (with each heartbeat): shown on the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayReport {
    /// When this relay process started (Unix ms): its counters count from then.
    #[serde(default)]
    pub started_ms: u64,
    /// The names attached now.
    pub attached: Vec<String>,
    /// Names refused for fighting (a cloned key).
    #[serde(default)]
    pub flagged: Vec<String>,
    /// Streams attached since it started (a reconnect counts again).
    #[serde(default)]
    pub attaches: u64,
    pub requests_carried: u64,
    pub messages_carried: u64,
    pub bytes_carried: u64,
    pub dropped: u64,
    pub not_here: u64,
    pub refused: u64,
}

/// AI endpoint name → whether the proxy has that endpoint's API key now (never the key, never
/// where it is). Only endpoints that take a key are listed.
pub type KeyReport = BTreeMap<String, bool>;

/// Name → endpoint, as handed to one proxy.
pub type EndpointTable = BTreeMap<String, Endpoint>;

/// Where a name is reached: another user's proxy, or an AI API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Endpoint {
    Ai(Box<AiEndpoint>),
    Peer(PeerEndpoint),
}

impl<'de> Deserialize<'de> for Endpoint {
    /// `is_api: true` picks [`AiEndpoint`]; anything else is a [`PeerEndpoint`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        let is_api = v.get("is_api").and_then(|x| x.as_bool()).unwrap_or(false);
        if is_api {
            serde_json::from_value(v)
                .map(|a| Endpoint::Ai(Box::new(a)))
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(v)
                .map(Endpoint::Peer)
                .map_err(D::Error::custom)
        }
    }
}

/// Another user's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEndpoint {
    pub host: String,
    pub port: u16,
    /// Ours only: the proxy there speaks the native envelope (`POST /api/v1/relay`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub native: bool,
}

impl PeerEndpoint {
    pub fn base_url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

/// An AI API, in the original's shape plus our own fields. Never carries a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiEndpoint {
    // compat: the original's fields.
    pub host: String,
    pub port: u16,
    pub is_api: bool,
    #[serde(default)]
    pub path: String,
    /// Extra, non-secret headers. Secret-looking values are refused by the controller.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub transform_request: String,
    #[serde(default)]
    pub transform_response: String,
    /// Total timeout in seconds (the original's single timeout).
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub model_config: ModelConfig,
    // ours
    /// Provider family; when absent it is inferred from `transform_request` and `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// API base URL (scheme, host, port, version prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Environment variable holding the key, read by the proxy that calls the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// File holding the key, read by the proxy that calls the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Which header carries the key; when absent, the provider's usual one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_style: Option<AuthStyle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default = "yes")]
    pub stream: bool,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub timeouts: AiTimeouts,
}

fn yes() -> bool {
    true
}

/// compat: the original's `model_config` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
}

/// The AI API families overlay speaks, by their name in config.yaml and tables.
///
/// What each one is (URL, key header, request format…) is its descriptor,
/// [`crate::config::ProviderSpec`]: adding a provider is a variant here and a row there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Openai,
    Anthropic,
    Gemini,
    Mistral,
    /// Any OpenAI-compatible server: Ollama, vLLM, LiteLLM, llama.cpp...
    OpenaiCompatible,
}

/// Which request header carries an AI endpoint's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI, Mistral, OpenAI-compatible servers, newest Anthropic SDKs).
    Bearer,
    /// `x-api-key: KEY` (Anthropic's classic header).
    XApiKey,
    /// `x-goog-api-key: KEY` (Gemini; never `?key=` in the URL, which leaks into logs).
    XGoogApiKey,
    /// No key at all (local servers such as Ollama).
    #[serde(rename = "none")]
    NoAuth,
}

/// How much of the conversation an AI endpoint is sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub max_turns: usize,
    pub max_chars: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_turns: 40,
            max_chars: 24_000,
        }
    }
}

/// Timeouts of one AI call, in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiTimeouts {
    pub connect_secs: u64,
    pub first_token_secs: u64,
    pub idle_secs: u64,
    pub total_secs: u64,
    /// Optional millisecond overrides of the fields above (sub-second timeouts, e.g. in tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

impl AiTimeouts {
    /// Time allowed to open the connection (DNS, TCP, TLS).
    pub fn connect(&self) -> Duration {
        ms_or_secs(self.connect_ms, self.connect_secs)
    }
    /// Time allowed from sending the request to the first token of the reply.
    pub fn first_token(&self) -> Duration {
        ms_or_secs(self.first_token_ms, self.first_token_secs)
    }
    /// Longest silence allowed while a reply streams.
    pub fn idle(&self) -> Duration {
        ms_or_secs(self.idle_ms, self.idle_secs)
    }
    /// Time allowed for the whole call, retries included.
    pub fn total(&self) -> Duration {
        ms_or_secs(self.total_ms, self.total_secs)
    }
}

fn ms_or_secs(ms: Option<u64>, secs: u64) -> Duration {
    match ms {
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_secs(secs),
    }
}

impl Default for AiTimeouts {
    fn default() -> Self {
        Self {
            connect_secs: 10,
            first_token_secs: 60,
            idle_secs: 30,
            total_secs: 300,
            connect_ms: None,
            first_token_ms: None,
            idle_ms: None,
            total_ms: None,
        }
    }
}

/// `scheme://host[:port]/prefix` → (host, port, "/prefix"), with the scheme's default port.
pub fn split_url(url: &str) -> (String, u16, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let addr = HostPort::parse_or(authority, default_port).unwrap_or_else(|_| HostPort {
        host: authority.to_string(),
        port: default_port,
    });
    (addr.host, addr.port, prefix)
}

/// One event of `GET /api/v1/proxies/{proxy_id}/table/stream`: the proxy's whole current table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableUpdate {
    /// Increases with every change of this proxy's table.
    pub version: u64,
    pub endpoints: EndpointTable,
    /// Names in `endpoints` whose proxy the controller currently sees as alive.
    #[serde(default)]
    pub online: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_entry_and_an_ai_entry_are_told_apart_by_is_api() {
        let t: EndpointTable = serde_json::from_str(
            r#"{"alice":{"host":"127.0.0.1","port":10001},
                "BOT":{"host":"api.openai.com","port":443,"is_api":true,"path":"/v1/chat/completions",
                       "transform_request":"openai_chat","transform_response":"openai_chat",
                       "model_config":{"model":"gpt-4o-mini","temperature":0.7}}}"#,
        )
        .unwrap();
        assert!(matches!(t["alice"], Endpoint::Peer(_)));
        match &t["BOT"] {
            Endpoint::Ai(a) => assert_eq!(a.model_config.model, "gpt-4o-mini"),
            other => panic!("expected an AI endpoint, got {other:?}"),
        }
    }

    #[test]
    fn urls_split_into_host_port_and_prefix() {
        assert_eq!(
            split_url("https://api.openai.com/v1"),
            ("api.openai.com".into(), 443, "/v1".into())
        );
        assert_eq!(
            split_url("http://127.0.0.1:11434/v1/"),
            ("127.0.0.1".into(), 11434, "/v1".into())
        );
        assert_eq!(split_url("http://h"), ("h".into(), 80, "".into()));
    }
}

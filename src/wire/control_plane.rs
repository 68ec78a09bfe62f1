//! Control plane: what proxies and the controller say to each other.
//!
//! The legacy routes (`/api/register`, `/api/getendpoints`, `/api/heartbeat`,
//! `/api/update_proxy_endpoints/{id}`, `/api/remove_proxy/{id}`) keep the original's field names;
//! ours add `GET /api/v1/proxies/{proxy_id}/table/stream` (SSE of [`TableUpdate`]), so a table edit
//! reaches the proxy at once instead of after a 60 s poll.
//!
//! An endpoint table maps a name (another user, or an AI model) to where it is reached.
//! Tables never hold secrets: an AI endpoint names the environment variable of its key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::host_port::HostPort;
use crate::config::{AiEndpointConfig, AiTimeouts, AuthStyle, HistoryConfig, Provider};

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
}

/// `POST /api/heartbeat` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatRequest {
    pub proxy_id: String,
}

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

impl AiEndpoint {
    /// The table entry for an AI endpoint of config.yaml.
    pub fn from_config(c: &AiEndpointConfig) -> AiEndpoint {
        let base = c
            .base_url
            .clone()
            .unwrap_or_else(|| c.provider.default_base_url().to_string());
        let (host, port, prefix) = split_url(&base);
        let path = match c.provider {
            Provider::Anthropic => format!("{prefix}/messages"),
            Provider::Gemini => format!("{prefix}/models/{}:generateContent", c.model),
            _ => format!("{prefix}/chat/completions"),
        };
        AiEndpoint {
            host,
            port,
            is_api: true,
            path,
            headers: BTreeMap::new(),
            params: BTreeMap::new(),
            transform_request: c.provider.legacy_transform().to_string(),
            transform_response: c.provider.legacy_transform().to_string(),
            timeout: Some(c.timeouts.total_secs as f64),
            model_config: ModelConfig {
                model: c.model.clone(),
                temperature: c.temperature,
                max_tokens: c.max_tokens,
                top_p: c.top_p,
            },
            provider: Some(c.provider),
            base_url: Some(base),
            api_key_env: c.api_key_env.clone(),
            api_key_file: c.api_key_file.as_ref().map(|p| p.display().to_string()),
            api_version: c.api_version.clone(),
            auth_style: c.auth_style,
            system_prompt: c.system_prompt.clone(),
            stream: c.stream,
            history: c.history.clone(),
            timeouts: c.timeouts.clone(),
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

    #[test]
    fn a_config_endpoint_becomes_a_table_entry_without_secrets() {
        let c: AiEndpointConfig = serde_yaml::from_str(
            "{name: GEMINI, provider: gemini, model: gemini-2.5-flash, api_key_env: GEMINI_API_KEY}",
        )
        .unwrap();
        let e = AiEndpoint::from_config(&c);
        assert_eq!(e.host, "generativelanguage.googleapis.com");
        assert_eq!(e.path, "/v1beta/models/gemini-2.5-flash:generateContent");
        assert_eq!(e.transform_request, "gemini_chat");
        assert_eq!(e.api_key_env.as_deref(), Some("GEMINI_API_KEY"));
        assert!(e.headers.is_empty() && e.params.is_empty());
    }
}

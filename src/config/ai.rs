//! The `ai_endpoints:` of config.yaml, and what overlay knows about each AI provider.
//!
//! Owns [`ProviderSpec`], the one descriptor per [`Provider`] (names, default URL, key header and
//! variable, request format, version, error hints): every other module reads it instead of
//! matching on the provider, so adding a provider is a variant of the enum and a row of
//! [`PROVIDERS`] (with its arm in [`Provider::spec`]). Also the checks of one endpoint and its table entry ([`AiEndpoint::from_config`]),
//! in the original's shape with our own fields. Pure: no I/O, never reads a key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::wire::control_plane::{
    split_url, AiEndpoint, AiTimeouts, AuthStyle, HistoryConfig, ModelConfig, Provider,
};

use super::InstanceName;

/// Everything that differs between providers, in one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSpec {
    pub provider: Provider,
    /// Its name in config.yaml and tables (`provider: openai_compatible`).
    pub name: &'static str,
    /// Its name in the messages users see.
    pub label: &'static str,
    /// The API's base URL when the config names none.
    pub default_base_url: &'static str,
    /// The header that carries its key when the endpoint names none.
    pub default_auth: AuthStyle,
    /// The environment variable its key is read from when the endpoint names no source
    /// (none: it needs no key).
    pub key_env: Option<&'static str>,
    /// How its requests and answers are written.
    pub format: WireFormat,
    /// How the API version is sent.
    pub version: ApiVersion,
    /// compat: how its API host ends, which tells the original's entries (that name no
    /// provider) apart.
    pub host_suffix: Option<&'static str>,
    /// What else a 401 from it can mean, added to the message the user sees.
    pub unauthorized_hint: Option<&'static str>,
    /// Words (lower case) of an error message that mean a used-up quota, not a passing limit.
    pub quota_words: &'static [&'static str],
}

/// How an API's requests and answers are written; the proxy has one module per format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Chat Completions (`/chat/completions`), in one of its dialects.
    OpenaiChat(ChatDialect),
    /// Anthropic Messages (`/messages`).
    AnthropicChat,
    /// Gemini `generateContent` (`/models/{model}:generateContent`).
    GeminiChat,
}

/// Which fields a Chat Completions server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatDialect {
    /// OpenAI: `max_completion_tokens`, reasoning models, `stream_options`.
    OpenAi,
    /// Mistral: only the classic fields (unknown ones get 422).
    Mistral,
    /// Ollama, vLLM, LiteLLM, llama.cpp…: `max_tokens`, `stream_options`.
    Compatible,
}

/// How a provider is told which version of its API a call is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// It is not told.
    Unversioned,
    /// A request header, with the value sent when the endpoint names none.
    Header {
        name: &'static str,
        default: &'static str,
    },
    /// A segment of the base URL (`/v1beta`), added when the base URL has no path.
    PathSegment { default: &'static str },
}

/// One row per [`Provider`], in the enum's order ([`Provider::spec`] picks the row; a test
/// checks that each row is its provider's).
pub const PROVIDERS: [ProviderSpec; 5] = [
    ProviderSpec {
        provider: Provider::Openai,
        name: "openai",
        label: "OpenAI",
        default_base_url: "https://api.openai.com/v1",
        default_auth: AuthStyle::Bearer,
        key_env: Some("OPENAI_API_KEY"),
        format: WireFormat::OpenaiChat(ChatDialect::OpenAi),
        version: ApiVersion::Unversioned,
        host_suffix: Some("openai.com"),
        unauthorized_hint: None,
        quota_words: &[],
    },
    ProviderSpec {
        provider: Provider::Anthropic,
        name: "anthropic",
        label: "Anthropic",
        default_base_url: "https://api.anthropic.com/v1",
        default_auth: AuthStyle::XApiKey,
        key_env: Some("ANTHROPIC_API_KEY"),
        format: WireFormat::AnthropicChat,
        version: ApiVersion::Header {
            name: "anthropic-version",
            default: "2023-06-01",
        },
        host_suffix: Some("anthropic.com"),
        unauthorized_hint: None,
        quota_words: &[],
    },
    ProviderSpec {
        provider: Provider::Gemini,
        name: "gemini",
        label: "Gemini",
        default_base_url: "https://generativelanguage.googleapis.com/v1beta",
        default_auth: AuthStyle::XGoogApiKey,
        key_env: Some("GEMINI_API_KEY"),
        format: WireFormat::GeminiChat,
        version: ApiVersion::PathSegment { default: "v1beta" },
        host_suffix: Some("googleapis.com"),
        unauthorized_hint: None,
        // Its free tier's daily limits come back as 429 RESOURCE_EXHAUSTED, like a rate limit.
        quota_words: &["per day", "perday"],
    },
    ProviderSpec {
        provider: Provider::Mistral,
        name: "mistral",
        label: "Mistral",
        default_base_url: "https://api.mistral.ai/v1",
        default_auth: AuthStyle::Bearer,
        key_env: Some("MISTRAL_API_KEY"),
        format: WireFormat::OpenaiChat(ChatDialect::Mistral),
        version: ApiVersion::Unversioned,
        host_suffix: Some("mistral.ai"),
        unauthorized_hint: Some("Mistral answers the same when the plan's quota is used up"),
        quota_words: &[],
    },
    ProviderSpec {
        provider: Provider::OpenaiCompatible,
        name: "openai_compatible",
        label: "The AI server",
        default_base_url: "http://127.0.0.1:11434/v1",
        default_auth: AuthStyle::Bearer,
        key_env: None,
        format: WireFormat::OpenaiChat(ChatDialect::Compatible),
        version: ApiVersion::Unversioned,
        host_suffix: None,
        unauthorized_hint: None,
        quota_words: &[],
    },
];

impl Provider {
    /// What overlay knows about this provider.
    pub fn spec(self) -> &'static ProviderSpec {
        // Exhaustive, so a new variant does not compile without its row.
        let row = match self {
            Provider::Openai => 0,
            Provider::Anthropic => 1,
            Provider::Gemini => 2,
            Provider::Mistral => 3,
            Provider::OpenaiCompatible => 4,
        };
        &PROVIDERS[row]
    }

    /// Its name in config.yaml and tables.
    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    /// The API's base URL when the config names none.
    pub fn default_base_url(self) -> &'static str {
        self.spec().default_base_url
    }
}

impl ProviderSpec {
    /// compat: whether `host` (in any case) is this provider's API.
    pub fn serves(&self, host: &str) -> bool {
        self.host_suffix
            .is_some_and(|s| host.to_ascii_lowercase().ends_with(s))
    }

    /// Whether an error message of this provider means a used-up quota (in any case).
    pub fn says_quota(&self, message: &str) -> bool {
        let message = message.to_ascii_lowercase();
        self.quota_words.iter().any(|w| message.contains(w))
    }
}

impl WireFormat {
    /// compat: the original's `transform_request` / `transform_response` name.
    pub fn legacy_name(self) -> &'static str {
        match self {
            WireFormat::OpenaiChat(_) => "openai_chat",
            WireFormat::AnthropicChat => "anthropic_chat",
            WireFormat::GeminiChat => "gemini_chat",
        }
    }

    /// Where a chat call's path starts, under the base URL.
    pub fn path_start(self) -> &'static str {
        match self {
            WireFormat::OpenaiChat(_) => "/chat/completions",
            WireFormat::AnthropicChat => "/messages",
            WireFormat::GeminiChat => "/models/",
        }
    }

    /// The path of a chat call under the base URL (Gemini's names the model, and differs
    /// when streamed).
    pub fn call_path(self, model: &str, stream: bool) -> String {
        match self {
            WireFormat::GeminiChat if stream => format!("/models/{model}:streamGenerateContent"),
            WireFormat::GeminiChat => format!("/models/{model}:generateContent"),
            other => other.path_start().to_string(),
        }
    }

    /// The query parameter a streamed call adds (Gemini's `alt=sse`).
    pub fn stream_query(self) -> Option<(&'static str, &'static str)> {
        match self {
            WireFormat::GeminiChat => Some(("alt", "sse")),
            _ => None,
        }
    }
}

/// One AI model reachable as a peer: `ai_endpoints[i]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AiEndpointConfig {
    /// The name people pick in the chat, e.g. `BOT`, `ANTHROPIC`.
    pub name: InstanceName,
    pub provider: Provider,
    pub model: String,
    /// API base URL; defaults per provider (plain `http://` is fine for local servers).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the API key (read by the proxy that calls the API).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the API key, as an alternative to `api_key_env`.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Provider API version header/path segment, where the provider has one.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Which header carries the key; defaults per provider (see [`AuthStyle`]).
    #[serde(default)]
    pub auth_style: Option<AuthStyle>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Stream replies token by token (default true).
    #[serde(default = "yes")]
    pub stream: bool,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub timeouts: AiTimeouts,
    /// Allows a `http://` base URL on another machine while a key may be sent: it crosses the
    /// network readable (default false: only loopback, or `auth_style: none`).
    #[serde(default)]
    pub allow_plain_http: bool,
}

fn yes() -> bool {
    true
}

impl AiEndpointConfig {
    /// What serde cannot check of `ai_endpoints[i]` (names are checked by the caller).
    pub(super) fn check(&self, i: usize) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err(format!(
                "ai_endpoints[{i}].model: is empty; write the model's name, e.g. `model: gpt-4o-mini`"
            ));
        }
        if let Some(url) = &self.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "ai_endpoints[{i}].base_url: `{url}` is not an http(s) URL; \
                     write e.g. `base_url: http://127.0.0.1:11434/v1`"
                ));
            }
        }
        if let Some(url) = self
            .base_url
            .as_deref()
            .filter(|u| u.starts_with("http://"))
        {
            let (host, _, _) = crate::wire::control_plane::split_url(url);
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare.to_ascii_lowercase().ends_with(".localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            let keyless = self.auth_style == Some(AuthStyle::NoAuth);
            if !loopback && !keyless && !self.allow_plain_http {
                return Err(format!(
                    "ai_endpoints[{i}].base_url: `{url}` is plain HTTP to another machine, so \
                     the API key would cross the network readable; use https://, or \
                     `auth_style: none` for a server that takes no key, or set \
                     `allow_plain_http: true` on this endpoint if that network is yours"
                ));
            }
        }
        if self.api_key_env.is_some() && self.api_key_file.is_some() {
            return Err(format!(
                "ai_endpoints[{i}]: both api_key_env and api_key_file are set; keep one of them"
            ));
        }
        if let Some(var) = &self.api_key_env {
            let valid = !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !var.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "ai_endpoints[{i}].api_key_env: `{var}` is not an environment variable name; \
                     write the variable's name (e.g. `OPENAI_API_KEY`), never the key itself"
                ));
            }
        }
        Ok(())
    }
}

impl AiEndpoint {
    /// The table entry of an endpoint of config.yaml: the original's fields (so its proxies
    /// can call the API too) and ours, never a key.
    pub fn from_config(c: &AiEndpointConfig) -> AiEndpoint {
        let spec = c.provider.spec();
        let base = c
            .base_url
            .clone()
            .unwrap_or_else(|| spec.default_base_url.to_string());
        let (host, port, prefix) = split_url(&base);
        AiEndpoint {
            host,
            port,
            is_api: true,
            path: format!("{prefix}{}", spec.format.call_path(&c.model, false)),
            headers: BTreeMap::new(),
            params: BTreeMap::new(),
            transform_request: spec.format.legacy_name().to_string(),
            transform_response: spec.format.legacy_name().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_has_its_own_row_in_the_enums_order() {
        for (i, spec) in PROVIDERS.iter().enumerate() {
            assert_eq!(spec.provider.spec(), spec, "row {i}");
        }
    }

    #[test]
    fn a_providers_name_is_its_name_in_config_yaml() {
        for spec in &PROVIDERS {
            let yaml = serde_yaml::to_string(&spec.provider).unwrap();
            assert_eq!(yaml.trim(), spec.name);
            let back: Provider = serde_yaml::from_str(spec.name).unwrap();
            assert_eq!(back, spec.provider);
        }
    }

    #[test]
    fn every_default_base_url_is_an_http_url_with_a_host() {
        for spec in &PROVIDERS {
            let url = spec.default_base_url;
            assert!(
                url.starts_with("https://") || url.starts_with("http://"),
                "{url}"
            );
            let (host, port, _) = split_url(url);
            assert!(!host.is_empty() && port > 0, "{url}");
            if let Some(suffix) = spec.host_suffix {
                assert!(
                    spec.serves(&host),
                    "{} is not served by {suffix}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn a_provider_that_needs_no_key_sends_none_and_the_others_name_their_variable() {
        for spec in &PROVIDERS {
            assert_ne!(spec.default_auth, AuthStyle::NoAuth, "{}", spec.name);
            if let Some(var) = spec.key_env {
                assert!(var.ends_with("_API_KEY"), "{var}");
            }
        }
        assert_eq!(Provider::OpenaiCompatible.spec().key_env, None);
    }

    #[test]
    fn a_version_header_is_a_lower_case_header_name() {
        for spec in &PROVIDERS {
            if let ApiVersion::Header { name, default } = spec.version {
                assert!(
                    name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                    "{name}"
                );
                assert!(!default.is_empty());
            }
        }
    }

    #[test]
    fn hosts_and_quota_words_are_matched_in_any_case() {
        assert!(Provider::Mistral.spec().serves("API.Mistral.AI"));
        assert!(!Provider::OpenaiCompatible.spec().serves("localhost"));
        let gemini = Provider::Gemini.spec();
        assert!(gemini.says_quota("Quota exceeded for GenerateRequestsPerDay"));
        assert!(!gemini.says_quota("Resource has been exhausted"));
        assert!(!Provider::Openai.spec().says_quota("requests per day"));
    }

    #[test]
    fn no_host_is_claimed_by_two_providers() {
        for a in &PROVIDERS {
            for b in PROVIDERS.iter().filter(|b| b.provider != a.provider) {
                if let (Some(x), Some(y)) = (a.host_suffix, b.host_suffix) {
                    assert!(!x.ends_with(y) && !y.ends_with(x), "{x} ~ {y}");
                }
            }
        }
    }

    #[test]
    fn the_call_path_starts_with_the_formats_path_start() {
        for spec in &PROVIDERS {
            let f = spec.format;
            for stream in [false, true] {
                assert!(f.call_path("m", stream).starts_with(f.path_start()));
            }
        }
        assert_eq!(
            WireFormat::GeminiChat.call_path("g", true),
            "/models/g:streamGenerateContent"
        );
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

    #[test]
    fn each_provider_gets_its_own_call_path_and_transform() {
        let entry = |p: &str| {
            let c: AiEndpointConfig =
                serde_yaml::from_str(&format!("{{name: X, provider: {p}, model: m}}")).unwrap();
            let e = AiEndpoint::from_config(&c);
            (e.path, e.transform_request)
        };
        assert_eq!(
            entry("openai"),
            ("/v1/chat/completions".into(), "openai_chat".into())
        );
        assert_eq!(
            entry("anthropic"),
            ("/v1/messages".into(), "anthropic_chat".into())
        );
        assert_eq!(
            entry("mistral"),
            ("/v1/chat/completions".into(), "openai_chat".into())
        );
        assert_eq!(
            entry("openai_compatible"),
            ("/v1/chat/completions".into(), "openai_chat".into())
        );
    }
}

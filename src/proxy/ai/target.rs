//! An endpoint-table entry ([`AiEndpoint`]) resolved into everything one call needs: provider,
//! URLs, model, where the key comes from, which header carries it, parameters and timeouts.
//!
//! Owns the compatibility rules for the original's entries: provider inferred from
//! `transform_request` and the host, base URL from host/port/path, a key in `headers`
//! (`Authorization: Bearer`, `x-api-key`) or `params.key`, the single `timeout`. Pure: it never
//! reads the environment or a file (keys are read at call time by [`KeySource::load`]).
//! What differs per provider is read from its descriptor ([`Provider::spec`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    AiTimeouts, ApiVersion, AuthStyle, HistoryConfig, Provider, ProviderSpec, WireFormat, PROVIDERS,
};
use crate::wire::control_plane::AiEndpoint;

use super::error::AiError;
use super::keys::{ApiKey, KeySource};

/// One endpoint, ready to call.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub provider: Provider,
    pub model: String,
    /// Full URL of a non-streamed call.
    pub url: String,
    /// Full URL of a streamed call (Gemini's differs).
    pub stream_url: String,
    /// Query parameters of every call (`alt=sse` is added for Gemini streams).
    pub query: Vec<(String, String)>,
    /// `host:port`, for errors.
    pub host: String,
    pub auth: AuthStyle,
    pub key: KeySource,
    /// The version the endpoint names (sent as its provider's [`ApiVersion`] says).
    pub api_version: Option<String>,
    /// Non-secret extra headers from the original's entry.
    pub extra_headers: Vec<(String, String)>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub history: HistoryConfig,
    pub timeouts: Timeouts,
}

/// The effective time limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl Timeouts {
    fn from(t: &AiTimeouts, legacy_total: Option<f64>) -> Timeouts {
        let mut total = t.total();
        // compat: the original's single `timeout` (seconds) bounds the whole call.
        if let Some(secs) = legacy_total.filter(|s| s.is_finite() && *s > 0.0) {
            total = total.min(Duration::from_secs_f64(secs));
        }
        Timeouts {
            connect: t.connect(),
            first_token: t.first_token(),
            idle: t.idle(),
            total,
        }
    }
}

/// Headers that carry a key in the original's entries, lower-case.
const KEY_HEADERS: [&str; 4] = ["authorization", "x-api-key", "x-goog-api-key", "api-key"];
/// Headers we always set ourselves.
const OWN_HEADERS: [&str; 4] = ["content-type", "content-length", "host", "accept"];

fn bad(detail: impl Into<String>) -> AiError {
    AiError::Config {
        detail: detail.into(),
    }
}

/// Which provider an entry is: `provider`, else the original's transform name and host.
pub fn infer_provider(e: &AiEndpoint) -> Result<Provider, AiError> {
    if let Some(p) = e.provider {
        return Ok(p);
    }
    let host = e
        .base_url
        .as_deref()
        .map(|u| crate::wire::control_plane::split_url(u).0)
        .unwrap_or_else(|| e.host.clone());
    // compat: the original names a format, not a provider (openai_chat for Mistral too): the
    // provider of that format whose host this is, else its catch-all (no host of its own), else
    // the only one. An unknown format: the provider whose host this is.
    let serving = |s: &&ProviderSpec| s.serves(&host);
    let family: Vec<&ProviderSpec> = PROVIDERS
        .iter()
        .filter(|s| s.format.legacy_name() == e.transform_request)
        .collect();
    let found = match family.first() {
        None => PROVIDERS.iter().find(serving),
        Some(first) => family
            .iter()
            .copied()
            .find(serving)
            .or_else(|| family.iter().copied().find(|s| s.host_suffix.is_none()))
            .or(Some(*first)),
    };
    found.map(|s| s.provider).ok_or_else(|| {
        bad(format!(
            "cannot tell which API `{}` speaks; set `provider` ({})",
            e.host,
            provider_names()
        ))
    })
}

/// `openai, anthropic, gemini, mistral or openai_compatible`.
fn provider_names() -> String {
    let names: Vec<&str> = PROVIDERS.iter().map(|s| s.name).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// `v1`, `v1beta`, `v2alpha`…
fn is_version_segment(seg: &str) -> bool {
    seg.strip_prefix('v')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// An API version that is a segment of the base URL (Gemini's): `api_version` replaces a
/// version segment there (or is appended); a base URL that is only a host gets `default`.
fn versioned_prefix(base: &str, version: Option<&str>, default: &str) -> String {
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    let has_path = after_scheme.contains('/');
    let (head, last) = base.rsplit_once('/').unwrap_or((base, ""));
    match version
        .map(|v| v.trim_matches('/'))
        .filter(|v| !v.is_empty())
    {
        Some(v) if has_path && is_version_segment(last) => format!("{head}/{v}"),
        Some(v) => format!("{base}/{v}"),
        None if !has_path => format!("{base}/{default}"),
        None => base.to_string(),
    }
}

/// Resolves an entry of the endpoint table.
pub fn resolve(e: &AiEndpoint) -> Result<Target, AiError> {
    let provider = infer_provider(e)?;
    let spec = provider.spec();
    let format = spec.format;
    let mut model = e.model_config.model.trim().to_string();

    // Base URL: ours, else the original's host/port/path with the provider's tail cut off.
    let (base, legacy_path) = match &e.base_url {
        Some(b) => (b.trim_end_matches('/').to_string(), None),
        None => {
            if e.host.trim().is_empty() {
                return Err(bad("it has neither `base_url` nor `host`; set `base_url`"));
            }
            let scheme = if e.port == 443 { "https" } else { "http" };
            let authority = if e.port == 443 || e.port == 80 || e.port == 0 {
                e.host.clone()
            } else {
                format!("{}:{}", e.host, e.port)
            };
            let path = e.path.trim();
            let path = if path.is_empty() || path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
            (format!("{scheme}://{authority}"), Some(path))
        }
    };
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(bad(format!(
            "base URL `{base}` is not an http(s) URL; write e.g. `http://127.0.0.1:11434/v1`"
        )));
    }

    let (prefix, full_path) = match (legacy_path, spec.version) {
        (None, ApiVersion::PathSegment { default }) => (
            versioned_prefix(&base, e.api_version.as_deref(), default),
            None,
        ),
        (None, _) => (base.clone(), None),
        (Some(p), _) => match p.find(format.path_start()) {
            Some(i) => (format!("{base}{}", &p[..i]), None),
            None if p.is_empty() => (base.clone(), None),
            // A path of another shape is taken as the complete endpoint path.
            None => (base.clone(), Some(format!("{base}{p}"))),
        },
    };
    if format == WireFormat::GeminiChat && model.is_empty() {
        // compat: the original's Gemini path names the model: /v1beta/models/{model}:generateContent.
        if let Some(rest) = e.path.split("/models/").nth(1) {
            model = rest.split(':').next().unwrap_or_default().to_string();
        }
    }
    let model = model.strip_prefix("models/").unwrap_or(&model).to_string();
    if model.is_empty() {
        return Err(bad("no model is set; set `model` (e.g. gpt-4o-mini)"));
    }
    let (url, stream_url) = match full_path {
        Some(full) if format == WireFormat::GeminiChat => {
            let stream = full.replace(":generateContent", ":streamGenerateContent");
            (full, stream)
        }
        Some(full) => (full.clone(), full),
        None => (
            format!("{prefix}{}", format.call_path(&model, false)),
            format!("{prefix}{}", format.call_path(&model, true)),
        ),
    };

    // Keys: ours (env / file), else one written in the original's entry, else the usual variable.
    let mut legacy_key: Option<(String, ApiKey, AuthStyle)> = None;
    let mut extra_headers = Vec::new();
    for (name, value) in &e.headers {
        let lower = name.to_ascii_lowercase();
        if KEY_HEADERS.contains(&lower.as_str()) {
            let (key, style) = match lower.as_str() {
                "authorization" => match value.trim().strip_prefix("Bearer ") {
                    Some(k) => (k, AuthStyle::Bearer),
                    None => continue,
                },
                "x-api-key" | "api-key" => (value.as_str(), AuthStyle::XApiKey),
                _ => (value.as_str(), AuthStyle::XGoogApiKey),
            };
            if !key.trim().is_empty() {
                legacy_key = Some((format!("headers.{name}"), ApiKey::new(key), style));
            }
        } else if !OWN_HEADERS.contains(&lower.as_str()) {
            extra_headers.push((lower, value.clone()));
        }
    }
    let mut query = Vec::new();
    for (name, value) in &e.params {
        if name == "key" {
            // fixes original: the Gemini key in `params` is put on the request, as a header.
            if !value.trim().is_empty() {
                legacy_key = Some((
                    "params.key".into(),
                    ApiKey::new(value),
                    AuthStyle::XGoogApiKey,
                ));
            }
        } else if format.stream_query().is_none_or(|(ours, _)| name != ours) {
            query.push((name.clone(), value.clone()));
        }
    }
    let default_auth = spec.default_auth;
    let (key, auth) = match (&e.api_key_env, &e.api_key_file, legacy_key) {
        (Some(var), _, _) => (KeySource::Env(var.clone()), default_auth),
        (None, Some(file), _) => (KeySource::File(PathBuf::from(file)), default_auth),
        (None, None, Some((field, key, style))) => {
            // A key found in a provider's own header keeps that header; Gemini takes its key
            // in its own header only.
            let style = if format == WireFormat::GeminiChat {
                default_auth
            } else {
                style
            };
            (KeySource::Legacy { field, key }, style)
        }
        (None, None, None) => match spec.key_env {
            Some(var) => (KeySource::Env(var.to_string()), default_auth),
            None => (KeySource::NoKey, AuthStyle::NoAuth),
        },
    };
    let auth = e.auth_style.unwrap_or(auth);
    let key = if auth == AuthStyle::NoAuth {
        KeySource::NoKey
    } else {
        key
    };
    // A version header written in the original's entry is ours to send (or not).
    let is_version_header = |n: &str| {
        PROVIDERS
            .iter()
            .any(|s| matches!(s.version, ApiVersion::Header { name, .. } if name == n))
    };
    let api_version = e.api_version.clone().or_else(|| {
        extra_headers
            .iter()
            .find(|(n, _)| is_version_header(n))
            .map(|(_, v)| v.clone())
    });
    extra_headers.retain(|(n, _)| !is_version_header(n));

    let timeouts = Timeouts::from(&e.timeouts, e.timeout);
    for (name, d) in [
        ("connect", timeouts.connect),
        ("first_token", timeouts.first_token),
        ("idle", timeouts.idle),
        ("total", timeouts.total),
    ] {
        if d.is_zero() {
            return Err(bad(format!(
                "timeouts.{name} is 0; give it a positive number of seconds"
            )));
        }
    }

    Ok(Target {
        provider,
        model,
        url,
        stream_url,
        query,
        host: base
            .split("://")
            .nth(1)
            .unwrap_or(&base)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        auth,
        key,
        api_version,
        extra_headers,
        system_prompt: e.system_prompt.clone().filter(|s| !s.trim().is_empty()),
        temperature: e.model_config.temperature,
        top_p: e.model_config.top_p,
        max_tokens: e.model_config.max_tokens,
        stream: e.stream,
        history: e.history.clone(),
        timeouts,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The target of an endpoint written as config YAML (shared by the providers' tests).
    pub(crate) fn target(yaml: &str) -> Target {
        let c: crate::config::AiEndpointConfig = serde_yaml::from_str(yaml).unwrap();
        resolve(&AiEndpoint::from_config(&c)).unwrap()
    }
    use crate::config::AiEndpointConfig;

    fn legacy(json: &str) -> AiEndpoint {
        serde_json::from_str(json).unwrap()
    }

    fn ours(yaml: &str) -> AiEndpoint {
        let c: AiEndpointConfig = serde_yaml::from_str(yaml).unwrap();
        AiEndpoint::from_config(&c)
    }

    #[test]
    fn an_original_openai_entry_resolves_with_its_bearer_key() {
        let t = resolve(&legacy(
            r#"{"host":"api.openai.com","port":443,"is_api":true,"path":"/v1/chat/completions",
                "headers":{"Authorization":"Bearer sk-legacy","Content-Type":"application/json"},
                "transform_request":"openai_chat","model_config":{"model":"gpt-4o-mini","temperature":0.7}}"#,
        ))
        .unwrap();
        assert_eq!(t.provider, Provider::Openai);
        assert_eq!(t.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(t.auth, AuthStyle::Bearer);
        assert!(matches!(&t.key, KeySource::Legacy { key, .. } if key.expose() == "sk-legacy"));
        assert!(t.extra_headers.is_empty());
        assert_eq!(t.temperature, Some(0.7));
    }

    #[test]
    fn an_original_openai_chat_entry_on_mistral_ai_is_mistral() {
        let t = resolve(&legacy(
            r#"{"host":"api.mistral.ai","port":443,"is_api":true,"path":"/v1/chat/completions",
                "transform_request":"openai_chat","model_config":{"model":"mistral-small-latest"}}"#,
        ))
        .unwrap();
        assert_eq!(t.provider, Provider::Mistral);
        assert_eq!(t.key, KeySource::Env("MISTRAL_API_KEY".into()));
    }

    #[test]
    fn an_original_gemini_entry_puts_its_params_key_in_the_header() {
        let t = resolve(&legacy(
            r#"{"host":"generativelanguage.googleapis.com","port":443,"is_api":true,
                "path":"/v1beta/models/gemini-pro:generateContent","params":{"key":"AIza-legacy"},
                "transform_request":"gemini_chat","model_config":{}}"#,
        ))
        .unwrap();
        assert_eq!(t.provider, Provider::Gemini);
        assert_eq!(t.model, "gemini-pro");
        assert_eq!(
            t.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-pro:generateContent"
        );
        assert_eq!(
            t.stream_url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-pro:streamGenerateContent"
        );
        assert_eq!(t.auth, AuthStyle::XGoogApiKey);
        assert!(t.query.is_empty(), "the key never goes in the URL");
        assert!(matches!(&t.key, KeySource::Legacy { key, .. } if key.expose() == "AIza-legacy"));
    }

    #[test]
    fn an_original_anthropic_entry_keeps_its_version_header() {
        let t = resolve(&legacy(
            r#"{"host":"api.anthropic.com","port":443,"is_api":true,"path":"/v1/messages",
                "headers":{"x-api-key":"sk-ant-legacy","anthropic-version":"2023-01-01","anthropic-beta":"x"},
                "transform_request":"anthropic_chat","model_config":{"model":"claude"}}"#,
        ))
        .unwrap();
        assert_eq!(t.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(t.auth, AuthStyle::XApiKey);
        assert_eq!(t.api_version.as_deref(), Some("2023-01-01"));
        assert_eq!(t.extra_headers, [("anthropic-beta".into(), "x".into())]);
    }

    #[test]
    fn a_config_endpoint_uses_its_base_url_and_key_variable() {
        let t = resolve(&ours(
            "{name: L, provider: openai_compatible, model: llama3, base_url: 'http://127.0.0.1:11434/v1/'}",
        ))
        .unwrap();
        assert_eq!(t.url, "http://127.0.0.1:11434/v1/chat/completions");
        assert_eq!(t.key, KeySource::NoKey);
        assert_eq!(t.auth, AuthStyle::NoAuth);
        let t = resolve(&ours(
            "{name: G, provider: gemini, model: gemini-2.5-flash, base_url: 'http://h:9/v1', api_key_env: G_KEY}",
        ))
        .unwrap();
        assert_eq!(
            t.url,
            "http://h:9/v1/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(t.key, KeySource::Env("G_KEY".into()));
        assert_eq!(t.host, "h:9");
    }

    #[test]
    fn the_gemini_api_version_is_taken_from_the_base_url_or_api_version() {
        let url = |yaml: &str| resolve(&ours(yaml)).unwrap().url;
        assert_eq!(
            url("{name: G, provider: gemini, model: m}"),
            "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent"
        );
        assert_eq!(
            url("{name: G, provider: gemini, model: m, api_version: v1}"),
            "https://generativelanguage.googleapis.com/v1/models/m:generateContent"
        );
        assert_eq!(
            url("{name: G, provider: gemini, model: m, base_url: 'http://h:1'}"),
            "http://h:1/v1beta/models/m:generateContent"
        );
        assert_eq!(
            url("{name: G, provider: gemini, model: m, base_url: 'http://h:1/proxy', api_version: v1}"),
            "http://h:1/proxy/v1/models/m:generateContent"
        );
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let e = resolve(&ours(
            "{name: A, provider: openai, model: m, timeouts: {idle_secs: 0}}",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("timeouts.idle is 0"), "{e}");
    }

    #[test]
    fn the_auth_style_can_be_chosen() {
        let t = resolve(&ours(
            "{name: A, provider: anthropic, model: c, api_key_env: K, auth_style: bearer}",
        ))
        .unwrap();
        assert_eq!(t.auth, AuthStyle::Bearer);
    }

    #[test]
    fn the_original_single_timeout_bounds_the_total() {
        let mut e = ours("{name: A, provider: openai, model: m}");
        e.timeout = Some(7.0);
        assert_eq!(resolve(&e).unwrap().timeouts.total, Duration::from_secs(7));
    }

    #[test]
    fn an_entry_that_names_no_provider_and_an_unknown_host_is_refused() {
        let e = resolve(&legacy(
            r#"{"host":"example.org","port":443,"is_api":true,"model_config":{"model":"m"}}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("set `provider`"), "{e}");
    }

    #[test]
    fn an_entry_without_a_model_is_refused() {
        let e = resolve(&ours("{name: A, provider: openai, model: ' '}")).unwrap_err();
        assert!(e.to_string().contains("no model is set"), "{e}");
    }
}

//! API keys: where an endpoint's key comes from, reading it at call time, and keeping it secret.
//!
//! Owns the [`ApiKey`] wrapper (whose `Debug`/`Display` print `***`), the [`KeySource`] an
//! endpoint names, and [`redact`] which scrubs keys out of any provider text we show or log.
//! It never logs, stores or returns a key in clear; only the request builder calls
//! [`ApiKey::expose`].

use std::fmt;
use std::path::PathBuf;

use crate::config::Provider;

use super::error::AiError;

/// A secret API key. Printing it, in any way, shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; surrounding whitespace (a file's trailing newline) is dropped.
    pub fn new(key: &str) -> ApiKey {
        ApiKey(key.trim().to_string())
    }
    /// The key itself, for the one place that puts it on a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where an endpoint's key is read from, at call time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable of this proxy's process.
    Env(String),
    /// A file holding the key (surrounding whitespace ignored).
    File(PathBuf),
    /// compat: a key written in the original's endpoint entry (`headers` or `params.key`).
    Legacy { field: String, key: ApiKey },
    /// No key: the server needs none (local OpenAI-compatible servers).
    NoKey,
}

impl KeySource {
    /// Where the key comes from, in words a user can act on (never the key).
    pub fn describe(&self) -> String {
        match self {
            KeySource::Env(var) => format!("the environment variable {var} of this proxy"),
            KeySource::File(path) => format!("the key file {}", path.display()),
            KeySource::Legacy { field, .. } => format!("the endpoint's `{field}` entry"),
            KeySource::NoKey => "the endpoint's configuration (it sends no key)".to_string(),
        }
    }

    /// Reads the key now. `Ok(None)` only for [`KeySource::NoKey`]; a configured source that
    /// is unset or empty is an error telling the user what to set.
    pub async fn load(&self, provider: Provider) -> Result<Option<ApiKey>, AiError> {
        match self {
            KeySource::NoKey => Ok(None),
            KeySource::Legacy { key, .. } => Ok(Some(key.clone())),
            KeySource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(ApiKey::new(&v))),
                _ => Err(AiError::MissingKey {
                    provider: provider.spec().label,
                    var: var.clone(),
                }),
            },
            KeySource::File(path) => {
                let p = path.clone();
                let read = actix_web::web::block(move || std::fs::read_to_string(p)).await;
                let shown = path.display().to_string();
                match read {
                    Ok(Ok(text)) if !text.trim().is_empty() => Ok(Some(ApiKey::new(&text))),
                    Ok(Ok(_)) => Err(AiError::KeyFile {
                        path: shown,
                        reason: "it is empty; write the key in it".to_string(),
                    }),
                    Ok(Err(e)) => Err(AiError::KeyFile {
                        path: shown,
                        reason: e.to_string(),
                    }),
                    Err(e) => Err(AiError::KeyFile {
                        path: shown,
                        reason: e.to_string(),
                    }),
                }
            }
        }
    }
}

/// `text` with `key`, and anything that looks like an API key, replaced by `***`.
pub fn redact(text: &str, key: Option<&ApiKey>) -> String {
    let mut out = text.to_string();
    if let Some(k) = key {
        if !k.expose().is_empty() {
            out = out.replace(k.expose(), "***");
        }
    }
    out.split_inclusive(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '='))
        .map(|piece| {
            let word = piece.trim_end_matches(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '=')
            });
            if looks_like_key(word) {
                piece.replacen(word, "***", 1)
            } else {
                piece.to_string()
            }
        })
        .collect()
}

/// A token shaped like a provider key: `sk-…` (OpenAI, Anthropic), `AIza…` (Google).
fn looks_like_key(word: &str) -> bool {
    let w = word.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    (w.starts_with("sk-") || w.starts_with("AIza")) && w.len() >= 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_prints_as_stars_in_debug_and_display() {
        let k = ApiKey::new(" sk-secret-123456789 \n");
        assert_eq!(format!("{k:?} {k}"), "*** ***");
        assert_eq!(k.expose(), "sk-secret-123456789");
        let source = KeySource::Legacy {
            field: "headers.x-api-key".into(),
            key: k,
        };
        assert!(!format!("{source:?}").contains("secret"));
    }

    #[test]
    fn redact_removes_the_key_and_key_shaped_tokens() {
        let k = ApiKey::new("my-local-key-xyz");
        let text =
            "bad key my-local-key-xyz, also sk-proj-abcdefghijklmnop and AIzaSyA1234567890abcdef.";
        let r = redact(text, Some(&k));
        assert_eq!(r, "bad key ***, also *** and ***");
    }

    #[test]
    fn redact_leaves_ordinary_text_alone() {
        assert_eq!(
            redact("Rate limit exceeded, sk- is short", None),
            "Rate limit exceeded, sk- is short"
        );
    }

    #[test]
    fn a_missing_environment_variable_says_what_to_set() {
        let source = KeySource::Env("OVERLAY_TEST_SURELY_UNSET_VAR".into());
        let e = futures_util::FutureExt::now_or_never(source.load(Provider::Openai))
            .expect("env lookup does not wait")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("set OVERLAY_TEST_SURELY_UNSET_VAR in the environment of this proxy"),
            "{e}"
        );
    }
}

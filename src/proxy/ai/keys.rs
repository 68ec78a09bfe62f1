//! API keys: where an endpoint's key comes from, reading it at call time, and keeping it secret.
//!
//! Owns the [`ApiKey`] wrapper (whose `Debug`/`Display` print `***`), the [`KeySource`] an
//! endpoint names, [`redact`] which scrubs keys (and their common encodings) out of any
//! provider text we show or log, and the [`StreamRedactor`] that does so for a reply arriving
//! in pieces.
//! It never logs, stores or returns a key in clear; only the request builder calls
//! [`ApiKey::expose`].

use std::fmt;
use std::path::PathBuf;

use crate::config::Provider;

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
    pub async fn load(&self, provider: Provider) -> Result<Option<ApiKey>, KeyError> {
        match self {
            KeySource::NoKey => Ok(None),
            KeySource::Legacy { key, .. } => Ok(Some(key.clone())),
            KeySource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(ApiKey::new(&v))),
                _ => Err(KeyError::Missing {
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
                    Ok(Ok(_)) => Err(KeyError::File {
                        path: shown,
                        reason: "it is empty; write the key in it".to_string(),
                    }),
                    Ok(Err(e)) => Err(KeyError::File {
                        path: shown,
                        reason: e.to_string(),
                    }),
                    Err(e) => Err(KeyError::File {
                        path: shown,
                        reason: e.to_string(),
                    }),
                }
            }
        }
    }
}

/// Why a configured key could not be read (the AI error says it to the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The environment variable `var` is unset or empty.
    Missing { provider: &'static str, var: String },
    /// The key file at `path` could not be read, or is empty.
    File { path: String, reason: String },
}

/// `text` with `key` (raw, or in a common encoding: base64 standard or URL-safe, with or
/// without padding, at any alignment; hex; percent-encoded), and anything that looks like an
/// API key, replaced by `***`.
///
/// Issue 13, defect 11: a server that echoes the key, even base64-encoded, in a successful
/// reply must not put it on the page; every text from a provider goes through here.
pub fn redact(text: &str, key: Option<&ApiKey>) -> String {
    redact_shapes(&redact_forms(
        text,
        key.map(forms_of).as_deref().unwrap_or_default(),
    ))
}

/// `text` with every one of `forms` replaced by `***`.
fn redact_forms(text: &str, forms: &[String]) -> String {
    let mut out = text.to_string();
    for form in forms {
        out = out.replace(form, "***");
    }
    out
}

/// `text` with every key-shaped word replaced by `***`.
fn redact_shapes(text: &str) -> String {
    text.split_inclusive(is_delimiter)
        .map(|piece| {
            let word = piece.trim_end_matches(is_delimiter);
            if looks_like_key(word) {
                piece.replacen(word, "***", 1)
            } else {
                piece.to_string()
            }
        })
        .collect()
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '=')
}

/// Shortest key whose encodings are looked for: a shorter "key" would match ordinary text.
const MIN_KEY_FORM: usize = 8;

/// The texts that give `key` away: itself and its encodings, longest first.
fn forms_of(key: &ApiKey) -> Vec<String> {
    let raw = key.expose().as_bytes();
    if raw.is_empty() {
        return Vec::new();
    }
    let mut forms = vec![key.expose().to_string()];
    if raw.len() >= MIN_KEY_FORM {
        for alphabet in [B64_STD, B64_URL] {
            for offset in 0..3 {
                forms.push(base64_core(raw, offset, alphabet));
            }
        }
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        forms.push(hex.to_ascii_uppercase());
        forms.push(hex);
        let pct: String = raw.iter().map(|b| format!("%{b:02X}")).collect();
        forms.push(pct.to_ascii_lowercase());
        forms.push(pct);
        forms.push(percent_encoded(raw));
    }
    forms.retain(|f| !f.is_empty());
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The base64 characters that depend on `key` alone when it starts `offset` bytes into a
/// 3-byte group: they appear in the encoding of any text holding the key at that alignment
/// (padded or not); the one or two characters at each end that mix in neighbouring bytes are
/// left out.
fn base64_core(key: &[u8], offset: usize, alphabet: &[u8; 64]) -> String {
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(key);
    let bits = |i: usize| -> u8 {
        let (byte, shift) = (i / 8, 7 - i % 8);
        bytes.get(byte).map_or(0, |b| (b >> shift) & 1)
    };
    let start = (8 * offset).div_ceil(6);
    let end = 8 * bytes.len() / 6;
    (start..end)
        .map(|c| {
            let v = (0..6).fold(0u8, |v, b| (v << 1) | bits(6 * c + b));
            alphabet[usize::from(v)] as char
        })
        .collect()
}

/// `key` as a URL's query or a form encodes it (unreserved characters kept).
fn percent_encoded(key: &[u8]) -> String {
    key.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Redacts a reply that arrives in pieces (streamed deltas), so that a key split across two
/// pieces is caught too.
///
/// A piece goes on at once unless its end could be the start of the key (or of one of its
/// encodings) or of a key-shaped word: that tail is held back until the next piece decides
/// it. A tail matching fewer than [`MIN_HELD_PREFIX`] bytes of a form goes on (holding back
/// every letter that starts a key would hold back ordinary text); if the next piece completes
/// the key, its rest is hidden. So at most the first 3 bytes of a form can show, e.g. `sk-`.
pub struct StreamRedactor {
    /// The key's forms, longest first.
    forms: Vec<String>,
    /// The end of what was handed on (as handed on), to catch a key begun there.
    shown: String,
    /// Received, not yet handed on.
    pending: String,
}

/// Shortest start of a key's form that is held back at the end of a piece.
const MIN_HELD_PREFIX: usize = 4;
/// Longest key-shaped word held back whole (beyond, it is cut and judged in parts).
const MAX_WORD_HOLD: usize = 512;
/// How much of what was handed on is remembered.
const KEEP_SHOWN: usize = 1024;

impl StreamRedactor {
    pub fn new(key: Option<&ApiKey>) -> StreamRedactor {
        StreamRedactor {
            forms: key.map(forms_of).unwrap_or_default(),
            shown: String::new(),
            pending: String::new(),
        }
    }

    /// Takes the next piece; answers what may be shown now (possibly nothing).
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        self.take(false)
    }

    /// The text held back, redacted: the end of the reply.
    pub fn finish(&mut self) -> String {
        self.take(true)
    }

    fn take(&mut self, at_end: bool) -> String {
        self.pending = redact_forms(&self.pending, &self.forms);
        // A form begun in what was handed on: its rest is hidden.
        for form in &self.forms {
            let begun = (1..MIN_HELD_PREFIX.min(form.len()))
                .filter(|&j| form.is_char_boundary(j) && self.shown.ends_with(&form[..j]));
            for j in begun {
                let rest = &form[j..];
                if self.pending.starts_with(rest) {
                    self.pending.replace_range(..rest.len(), "***");
                } else if !at_end && rest.starts_with(self.pending.as_str()) {
                    return String::new();
                }
            }
        }
        let mut cut = self.pending.len();
        if !at_end {
            cut -= self.held_form_start();
            cut = cut.min(self.held_word_start());
        }
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        let out = self.shapes(&out);
        self.shown.push_str(&out);
        if self.shown.len() > KEEP_SHOWN {
            let mut from = self.shown.len() - KEEP_SHOWN;
            while !self.shown.is_char_boundary(from) {
                from += 1;
            }
            self.shown.drain(..from);
        }
        out
    }

    /// Length of the longest end of `pending` that starts a form ([`MIN_HELD_PREFIX`] bytes
    /// or more), else 0.
    fn held_form_start(&self) -> usize {
        let p = &self.pending;
        self.forms
            .iter()
            .filter_map(|f| {
                (MIN_HELD_PREFIX..f.len().min(p.len() + 1))
                    .rev()
                    .find(|&k| f.is_char_boundary(k) && p.ends_with(&f[..k]))
            })
            .max()
            .unwrap_or(0)
    }

    /// Where the last word of `pending` starts, if it (with its start already handed on)
    /// begins like a provider key; else the end of `pending`.
    fn held_word_start(&self) -> usize {
        let p = &self.pending;
        let start = p
            .rfind(is_delimiter)
            .map_or(0, |i| i + p[i..].chars().next().map_or(1, char::len_utf8));
        let word = if start == 0 {
            format!("{}{p}", trailing_word(&self.shown))
        } else {
            p[start..].to_string()
        };
        let w = word.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        let begins_like_a_key = w.starts_with("sk-") || w.starts_with("AIza");
        if begins_like_a_key && p.len() - start <= MAX_WORD_HOLD {
            start
        } else {
            p.len()
        }
    }

    /// `out` with key-shaped words redacted, its first word judged with the end of the word
    /// handed on before it.
    fn shapes(&self, out: &str) -> String {
        let before = trailing_word(&self.shown);
        let first_end = out.find(is_delimiter).unwrap_or(out.len());
        if !before.is_empty() && first_end > 0 {
            let joined = format!("{before}{}", &out[..first_end]);
            if looks_like_key(&joined) {
                return format!("***{}", redact_shapes(&out[first_end..]));
            }
        }
        redact_shapes(out)
    }
}

/// The last word of `text` (after its last delimiter).
fn trailing_word(text: &str) -> &str {
    match text.rfind(is_delimiter) {
        Some(i) => text[i..].trim_start_matches(is_delimiter),
        None => text,
    }
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

    const KEY: &str = "sk-test-fake-key-0123456789";

    fn b64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..=chunk.len() {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
            if pad {
                out.push_str(&"=".repeat(3 - chunk.len()));
            }
        }
        out
    }

    #[test]
    fn the_test_encoder_agrees_with_known_base64() {
        assert_eq!(
            b64(b"any carnal pleas", B64_STD, true),
            "YW55IGNhcm5hbCBwbGVhcw=="
        );
        assert_eq!(b64(b"\xfb\xff", B64_URL, false), "-_8");
    }

    #[test]
    fn redact_removes_the_key_in_base64_hex_and_percent_encoding_at_any_alignment() {
        let k = ApiKey::new(KEY);
        for prefix in ["", "a", "ab", "key: ", "Authorization: Bearer "] {
            let framed = format!("{prefix}{KEY} trailing");
            for alphabet in [B64_STD, B64_URL] {
                for pad in [true, false] {
                    let encoded = b64(framed.as_bytes(), alphabet, pad);
                    let r = redact(&format!("echo {encoded}!"), Some(&k));
                    assert!(r.contains("***"), "{prefix:?} {pad}: {r}");
                    assert!(
                        !r.contains(&base64_core(KEY.as_bytes(), (prefix.len()) % 3, alphabet)),
                        "{r}"
                    );
                    assert!(r.len() < encoded.len(), "{r}");
                }
            }
        }
        let hex: String = KEY.bytes().map(|b| format!("{b:02x}")).collect();
        let pct: String = KEY.bytes().map(|b| format!("%{b:02X}")).collect();
        for text in [
            hex.clone(),
            hex.to_uppercase(),
            pct.clone(),
            pct.to_lowercase(),
        ] {
            assert_eq!(redact(&format!("it is {text}."), Some(&k)), "it is ***.");
        }
    }

    #[test]
    fn a_key_split_across_streamed_pieces_never_shows() {
        let k = ApiKey::new(KEY);
        let encoded = b64(KEY.as_bytes(), B64_STD, true);
        let text = format!("Your key is {KEY}, or {encoded} encoded. Bye now, friend.");
        for size in [1, 2, 3, 4, 5, 7, 11, 40, 1000] {
            let mut r = StreamRedactor::new(Some(&k));
            let chars: Vec<char> = text.chars().collect();
            let mut shown = Vec::new();
            for piece in chars.chunks(size) {
                shown.push(r.push(&piece.iter().collect::<String>()));
            }
            shown.push(r.finish());
            let all = shown.concat();
            assert!(
                !all.contains("sk-t") && !all.contains("est-fake"),
                "{size}: {shown:?}"
            );
            assert!(!all.contains(&encoded[4..]), "{size}: {all}");
            assert!(all.starts_with("Your key is ") && all.ends_with(" encoded. Bye now, friend."));
        }
    }

    #[test]
    fn ordinary_text_streams_on_piece_by_piece() {
        let k = ApiKey::new(KEY);
        let mut r = StreamRedactor::new(Some(&k));
        for piece in ["The answer", " is", " 4.", " Bye"] {
            assert_eq!(r.push(piece), piece);
        }
        assert_eq!(r.finish(), "");
    }

    #[test]
    fn a_key_shaped_word_split_across_pieces_is_judged_whole() {
        let mut r = StreamRedactor::new(None);
        assert_eq!(r.push("a sk-proj-abcdefgh"), "a ");
        assert_eq!(r.push("ijklmnop is it"), "*** is it");
        assert_eq!(r.push(" sk"), " sk");
        assert_eq!(r.push("-proj-abcdefgh"), "");
        assert_eq!(r.push("ijklmnop ok"), "*** ok");
        assert_eq!(r.push(" AIzaSyA1234"), " ");
        assert_eq!(r.push("567890abcdef"), "");
        assert_eq!(r.finish(), "***");
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
        // What the user is told: the AI error it becomes.
        let e = super::super::error::AiError::from(e);
        assert!(
            e.to_string().contains(
                "Start the proxy again with OVERLAY_TEST_SURELY_UNSET_VAR set in its environment"
            ),
            "{e}"
        );
    }
}

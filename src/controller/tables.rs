//! Endpoint tables as pure functions: the table config.yaml gives an instance, the deep merge of
//! edits on top of it, and the checks an edit must pass (only the fields a typed entry has, a
//! valid table, and no secrets).
//!
//! Owns the rules; holds no state and does no I/O. The registry decides when to call them.

use serde_json::{Map, Value};

use crate::config::{Config, InstanceName};
use crate::wire::control_plane::{AiEndpoint, Endpoint, EndpointTable, PeerEndpoint};
use crate::wire::directory::{Directory, UserState};
use crate::wire::PeerName;

use super::error::ControllerError;

/// The transforms a proxy knows (the original's names).
pub const KNOWN_TRANSFORMS: &[&str] = &["openai_chat", "anthropic_chat", "gemini_chat"];

/// An edit of a table as JSON: endpoint name → (partial) endpoint, deep-merged over the table.
/// `null` removes what it names (as in JSON Merge Patch, RFC 7396).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TablePatch(Map<String, Value>);

impl TablePatch {
    /// Parses a patch from JSON text: it must be a JSON object.
    pub fn parse(text: &str) -> Result<TablePatch, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        TablePatch::from_value(v)
    }

    /// compat: the original accepts `endpoints` as an object or as a JSON string of one.
    pub fn from_value(v: Value) -> Result<TablePatch, String> {
        match v {
            Value::Object(m) => Ok(TablePatch(m)),
            Value::String(s) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Object(m)) => Ok(TablePatch(m)),
                Ok(other) => Err(format!(
                    "endpoints must be a JSON object of name → endpoint, got {}",
                    kind(&other)
                )),
                Err(e) => Err(format!("endpoints is a string but not valid JSON: {e}")),
            },
            other => Err(format!(
                "endpoints must be a JSON object of name → endpoint, got {}",
                kind(&other)
            )),
        }
    }

    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This patch with `later` merged on top (nulls kept, so they still delete from the table).
    pub fn then(&self, later: &TablePatch) -> TablePatch {
        let mut acc = Value::Object(self.0.clone());
        merge(&mut acc, &Value::Object(later.0.clone()), true);
        match acc {
            Value::Object(m) => TablePatch(m),
            _ => TablePatch::default(),
        }
    }

    /// This patch cut down to what a typed table holds: the fields of each entry's kind (the
    /// original's and ours, see [`PEER`] and [`AI`]) and removals (`null`) of what `base` has or
    /// of an entry `may_appear` says could come back (a configured instance not registered yet).
    /// Also answers the paths of the unknown fields it left out (`BOT.junk`).
    ///
    /// fixes original: an edit's unknown fields were kept forever, so a few large junk edits
    /// grew the store and the controller's memory without limit.
    pub fn typed(
        &self,
        base: &EndpointTable,
        may_appear: &dyn Fn(&str) -> bool,
    ) -> (TablePatch, Vec<String>) {
        let base = match serde_json::to_value(base) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut unknown = Vec::new();
        let mut out = Map::new();
        for (name, entry) in &self.0 {
            let base_entry = base.get(name);
            if entry.is_null() {
                if base_entry.is_some() || may_appear(name) {
                    out.insert(name.clone(), Value::Null);
                }
                continue;
            }
            let is_api = entry
                .get("is_api")
                .or_else(|| base_entry.and_then(|b| b.get("is_api")))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let shape = if is_api { AI } else { PEER };
            if let Some(v) = strip(entry, base_entry, shape, &shown(name), &mut unknown) {
                out.insert(name.clone(), v);
            }
        }
        (TablePatch(out), unknown)
    }

    /// Refuses a patch that puts a secret in a table; `Err` names where it is.
    pub fn check_no_secrets(&self) -> Result<(), ControllerError> {
        for (name, entry) in &self.0 {
            find_secret(entry, name)?;
        }
        Ok(())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a part of an endpoint entry may hold.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A value the typed entry checks (a string, a number, a boolean).
    Value,
    /// An object with these fields only.
    Fields(&'static [(&'static str, Shape)]),
    /// An object with any names (`headers`, `params`), each a value.
    AnyNames,
}

/// A peer entry: the original's `host`, `port` (and `is_api: false`), and our `native`.
pub const PEER: Shape = Shape::Fields(&[
    ("host", Shape::Value),
    ("port", Shape::Value),
    ("is_api", Shape::Value),
    ("native", Shape::Value),
]);

/// compat: the original's `model_config` fields, those our proxies use.
const MODEL_CONFIG: Shape = Shape::Fields(&[
    ("model", Shape::Value),
    ("temperature", Shape::Value),
    ("max_tokens", Shape::Value),
    ("top_p", Shape::Value),
]);

const HISTORY: Shape = Shape::Fields(&[("max_turns", Shape::Value), ("max_chars", Shape::Value)]);

const TIMEOUTS: Shape = Shape::Fields(&[
    ("connect_secs", Shape::Value),
    ("first_token_secs", Shape::Value),
    ("idle_secs", Shape::Value),
    ("total_secs", Shape::Value),
    ("connect_ms", Shape::Value),
    ("first_token_ms", Shape::Value),
    ("idle_ms", Shape::Value),
    ("total_ms", Shape::Value),
]);

/// An AI entry: the original's fields, then ours (the fields of [`AiEndpoint`]).
pub const AI: Shape = Shape::Fields(&[
    ("host", Shape::Value),
    ("port", Shape::Value),
    ("is_api", Shape::Value),
    ("path", Shape::Value),
    ("headers", Shape::AnyNames),
    ("params", Shape::AnyNames),
    ("transform_request", Shape::Value),
    ("transform_response", Shape::Value),
    ("timeout", Shape::Value),
    ("model_config", MODEL_CONFIG),
    ("provider", Shape::Value),
    ("base_url", Shape::Value),
    ("api_key_env", Shape::Value),
    ("api_key_file", Shape::Value),
    ("api_version", Shape::Value),
    ("auth_style", Shape::Value),
    ("system_prompt", Shape::Value),
    ("stream", Shape::Value),
    ("history", HISTORY),
    ("timeouts", TIMEOUTS),
]);

impl Shape {
    /// The field names of a [`Shape::Fields`], for messages.
    pub fn names(self) -> Vec<&'static str> {
        match self {
            Shape::Fields(f) => f.iter().map(|(n, _)| *n).collect(),
            _ => Vec::new(),
        }
    }
}

/// `patch` (part of an entry) cut to `shape`; `None` drops it (a removal of nothing).
/// Values of the wrong type are kept: the typed check refuses them with a reason.
fn strip(
    patch: &Value,
    base: Option<&Value>,
    shape: Shape,
    path: &str,
    unknown: &mut Vec<String>,
) -> Option<Value> {
    if patch.is_null() {
        return base.filter(|b| !b.is_null()).map(|_| Value::Null);
    }
    let (Value::Object(fields), Shape::Fields(_) | Shape::AnyNames) = (patch, shape) else {
        return Some(patch.clone());
    };
    let mut out = Map::new();
    for (k, v) in fields {
        let here = format!("{path}.{}", shown(k));
        let sub = match shape {
            Shape::Value | Shape::AnyNames => Shape::Value,
            Shape::Fields(known) => match known.iter().find(|(n, _)| n == k) {
                Some((_, sub)) => *sub,
                None => {
                    unknown.push(here);
                    continue;
                }
            },
        };
        if let Some(x) = strip(v, base.and_then(|b| b.get(k)), sub, &here, unknown) {
            out.insert(k.clone(), x);
        }
    }
    Some(Value::Object(out))
}

/// A name as a message shows it: invisible characters escaped, at most 64 characters.
pub fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Deep merge: objects merge key by key; `null` deletes (or, with `keep_nulls`, is kept so a
/// later merge deletes); anything else replaces.
pub fn merge(target: &mut Value, patch: &Value, keep_nulls: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if pv.is_null() && !keep_nulls {
                    t.remove(k);
                } else if let Some(tv) = t.get_mut(k) {
                    merge(tv, pv, keep_nulls);
                } else {
                    let mut fresh = if pv.is_object() {
                        Value::Object(Map::new())
                    } else {
                        Value::Null
                    };
                    merge(&mut fresh, pv, keep_nulls);
                    t.insert(k.clone(), fresh);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Header names whose value is a credential.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cookie",
];
/// Query parameters whose value is a credential.
const SECRET_PARAMS: &[&str] = &["key", "api_key", "apikey", "access_token", "token"];
/// Field names that hold a credential wherever they appear.
const SECRET_FIELDS: &[&str] = &[
    "api_key",
    "apikey",
    "secret",
    "password",
    "token",
    "access_token",
];

fn find_secret(v: &Value, path: &str) -> Result<(), ControllerError> {
    let refuse = |what: String| Err(ControllerError::SecretInTable { what });
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let here = format!("{path}.{k}");
                let lk = k.to_ascii_lowercase();
                let filled = !(child.is_null() || child.as_str().is_some_and(str::is_empty));
                if filled && SECRET_FIELDS.contains(&lk.as_str()) {
                    return refuse(format!("`{here}`"));
                }
                if lk == "api_key_env" {
                    if let Some(s) = child.as_str() {
                        if !is_env_var_name(s) {
                            return refuse(format!(
                                "`{here}` is not an environment variable name and"
                            ));
                        }
                    }
                }
                if lk == "headers" || lk == "params" {
                    let names = if lk == "headers" {
                        SECRET_HEADERS
                    } else {
                        SECRET_PARAMS
                    };
                    if let Value::Object(inner) = child {
                        for (name, val) in inner {
                            let filled = !(val.is_null() || val.as_str() == Some(""));
                            if filled && names.contains(&name.to_ascii_lowercase().as_str()) {
                                return refuse(format!("`{here}.{name}`"));
                            }
                        }
                    }
                }
                find_secret(child, &here)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_secret(item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Value::String(s) if looks_like_key(s) => refuse(format!("the value of `{path}`")),
        _ => Ok(()),
    }
}

/// A name an environment variable can have: letters, digits, `_`, not starting with a digit.
pub fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// A string that looks like an API key or a credential.
pub fn looks_like_key(s: &str) -> bool {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("bearer ") || lower.starts_with("basic ") {
        return true;
    }
    let prefixed = [
        "sk-",
        "sk_",
        "xai-",
        "gsk_",
        "hf_",
        "pk_",
        "rk_",
        "ghp_",
        "github_pat_",
    ]
    .iter()
    .any(|p| t.starts_with(p))
        && t.len() >= 20;
    if prefixed || (t.starts_with("AIza") && t.len() >= 30) {
        return true;
    }
    // A long run of random-looking token characters (mixed case and digits, no spaces).
    t.len() >= 32
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && t.chars().any(|c| c.is_ascii_digit())
        && t.chars().any(|c| c.is_ascii_lowercase())
        && t.chars().any(|c| c.is_ascii_uppercase())
}

/// The table config.yaml and the directory give `for_instance`: every other user the config
/// names or that joined with a key, as a peer at its directory address, and every AI endpoint.
/// An AI endpoint named like a user takes that name; revoked users and users without an address
/// yet are left out.
pub fn base_table(config: &Config, directory: &Directory, for_instance: &str) -> EndpointTable {
    let mut table = EndpointTable::new();
    let joined = directory
        .user(for_instance)
        .is_some_and(|u| u.state == UserState::Active);
    let configured = config
        .instances
        .iter()
        .any(|i| i.name.matches(for_instance));
    if !configured && !joined {
        // compat: an instance without its own table gets the `BOT` endpoint alone.
        if let Some(bot) = config.ai_endpoints.iter().find(|a| a.name.matches("BOT")) {
            if !bot.name.matches(for_instance) {
                table.insert(
                    bot.name.to_string(),
                    Endpoint::Ai(Box::new(AiEndpoint::from_config(bot))),
                );
            }
        }
        return table;
    }
    for user in directory.users.values() {
        let name = PeerName::from(user.name.as_str());
        let taken_by_ai = config
            .ai_endpoints
            .iter()
            .any(|a| a.name.matches(&user.name));
        let listed = user.state == UserState::Active
            || config.instances.iter().any(|i| i.name.matches(&user.name));
        if name == for_instance
            || taken_by_ai
            || !listed
            || matches!(user.state, UserState::Revoked { .. })
            // A relay carries messages; nobody talks to it.
            || !user.role.is_user()
            // A proxy bound to port 0 that has not registered yet has no address anyone can use.
            || user.port == 0
        {
            continue;
        }
        table.insert(
            user.name.clone(),
            Endpoint::Peer(PeerEndpoint {
                host: user.host.clone(),
                port: user.port,
                native: user.native,
            }),
        );
    }
    for ai in &config.ai_endpoints {
        if !ai.name.matches(for_instance) {
            table.insert(
                ai.name.to_string(),
                Endpoint::Ai(Box::new(AiEndpoint::from_config(ai))),
            );
        }
    }
    table
}

/// `base` with `patch` merged on top, checked entry by entry.
pub fn apply(base: &EndpointTable, patch: &TablePatch) -> Result<EndpointTable, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    merge(&mut merged, &Value::Object(patch.0.clone()), false);
    check_table(merged)
}

/// Like [`apply`], but an entry the patch broke (its base entry went away since) is left out
/// with a warning instead of failing the whole table.
pub fn apply_lenient(base: &EndpointTable, patch: &TablePatch) -> EndpointTable {
    let mut merged = match serde_json::to_value(base) {
        Ok(v) => v,
        Err(_) => return base.clone(),
    };
    merge(&mut merged, &Value::Object(patch.0.clone()), false);
    let mut out = EndpointTable::new();
    if let Value::Object(m) = merged {
        for (name, entry) in m {
            match check_entry(&name, entry) {
                Ok(e) => {
                    out.insert(name, e);
                }
                Err(msg) => log::warn!("leaving an edited endpoint out of a table: {msg}"),
            }
        }
    }
    out
}

/// The most endpoints one table may have (every change sends the whole table to its proxy).
pub const MAX_ENTRIES: usize = 1024;
/// The most `headers` or `params` one AI endpoint may have.
pub const MAX_NAMED: usize = 64;

/// A merged table as JSON → a typed table, or what is wrong with it.
pub fn check_table(v: Value) -> Result<EndpointTable, String> {
    let Value::Object(m) = v else {
        return Err(format!("the table must be a JSON object, got {}", kind(&v)));
    };
    if m.len() > MAX_ENTRIES {
        return Err(format!(
            "a table may have at most {MAX_ENTRIES} endpoints; this edit makes {}",
            m.len()
        ));
    }
    let mut out = EndpointTable::new();
    for (name, entry) in m {
        let e = check_entry(&name, entry)?;
        out.insert(name, e);
    }
    Ok(out)
}

fn check_entry(name: &str, entry: Value) -> Result<Endpoint, String> {
    InstanceName::parse(name).map_err(|e| format!("endpoint name {e}"))?;
    let Value::Object(fields) = &entry else {
        return Err(format!(
            "endpoint `{name}` must be an object with host and port, got {}",
            kind(&entry)
        ));
    };
    match fields.get("host") {
        Some(Value::String(h)) if !h.trim().is_empty() => {}
        Some(Value::String(_)) => return Err(format!("endpoint `{name}`: host is empty")),
        Some(other) => {
            return Err(format!(
                "endpoint `{name}`: host must be a string, got {}",
                kind(other)
            ))
        }
        None => return Err(format!("endpoint `{name}`: host is missing")),
    }
    match fields.get("port") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => {}
        Some(other) => {
            return Err(format!(
                "endpoint `{name}`: port must be a whole number from 1 to 65535, got {other}"
            ))
        }
        None => return Err(format!("endpoint `{name}`: port is missing")),
    }
    if let Some(v) = fields.get("is_api") {
        if !v.is_boolean() {
            return Err(format!(
                "endpoint `{name}`: is_api must be true or false, got {v}"
            ));
        }
    }
    let endpoint: Endpoint =
        serde_json::from_value(entry).map_err(|e| format!("endpoint `{name}`: {e}"))?;
    if let Endpoint::Ai(ai) = &endpoint {
        for (field, t) in [
            ("transform_request", &ai.transform_request),
            ("transform_response", &ai.transform_response),
        ] {
            if !KNOWN_TRANSFORMS.contains(&t.as_str()) {
                return Err(format!(
                    "endpoint `{name}`: {field} `{t}` is unknown; use one of {}",
                    KNOWN_TRANSFORMS.join(", ")
                ));
            }
        }
        for (field, n) in [("headers", ai.headers.len()), ("params", ai.params.len())] {
            if n > MAX_NAMED {
                return Err(format!(
                    "endpoint `{name}`: {field} may have at most {MAX_NAMED} entries, got {n}"
                ));
            }
        }
        if let Some(var) = &ai.api_key_env {
            if !is_env_var_name(var) {
                return Err(format!(
                    "endpoint `{name}`: api_key_env `{var}` is not an environment variable name"
                ));
            }
        }
    }
    Ok(endpoint)
}

/// At most this many unknown fields are named in one answer.
const NAMED_AT_MOST: usize = 10;

/// The refusal of an edit naming `fields`, which no endpoint has, and what an endpoint has.
pub fn unknown_fields(fields: &[String]) -> ControllerError {
    ControllerError::UnknownFields(unknown_fields_message(fields))
}

fn unknown_fields_message(fields: &[String]) -> String {
    let mut named: Vec<String> = fields
        .iter()
        .take(NAMED_AT_MOST)
        .map(|f| format!("`{f}`"))
        .collect();
    if fields.len() > NAMED_AT_MOST {
        named.push(format!("and {} more", fields.len() - NAMED_AT_MOST));
    }
    format!(
        "unknown field{} {}: a peer endpoint has {}; an AI endpoint has {}",
        if fields.len() == 1 { "" } else { "s" },
        named.join(", "),
        PEER.names().join(", "),
        AI.names().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::parse(
            "controller: {listen: 127.0.0.1:8000}\ninstances:\n\
             - {name: alice, peer: {listen: 127.0.0.1:5001}, proxy: {listen: 127.0.0.1:10001}}\n\
             - {name: bob, peer: {listen: 127.0.0.1:5002}, proxy: {listen: 127.0.0.1:10002, advertise: 'bob.lan:9000'}}\n\
             - {name: BOT, peer: {listen: 127.0.0.1:5003}, proxy: {listen: 127.0.0.1:10003}}\n\
             ai_endpoints:\n\
             - {name: BOT, provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}\n\
             - {name: GEMINI, provider: gemini, model: gemini-2.5-flash}\n",
            "test",
        )
        .unwrap()
    }

    fn patch(v: Value) -> TablePatch {
        TablePatch::from_value(v).unwrap()
    }

    #[test]
    fn an_instance_gets_the_others_and_the_ai_endpoints_but_not_itself() {
        let t = base_table(&config(), &dir(&config()), "alice");
        let names: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(names, ["BOT", "GEMINI", "bob"]);
        assert_eq!(
            t["bob"],
            Endpoint::Peer(PeerEndpoint {
                host: "bob.lan".into(),
                port: 9000,
                native: true
            })
        );
        assert!(matches!(t["BOT"], Endpoint::Ai(_)));
    }

    fn dir(c: &Config) -> Directory {
        crate::controller::directory::build(
            c,
            &Default::default(),
            &Default::default(),
            &Default::default(),
        )
    }

    #[test]
    fn a_registered_address_wins_over_the_config_and_an_original_proxy_is_not_native() {
        let rec = crate::controller::store::ProxyRecord {
            role: Default::default(),
            via: None,
            auto: false,
            tls: None,
            seal: None,
            proxy_id: "p".into(),
            instance_name: "BOB".into(),
            host: "10.0.0.2".into(),
            port: 4242,
            protocol: None,
            api_keys: None,
            registered_at_ms: 1,
            last_seen_ms: 1,
        };
        let proxies = [("p".to_string(), rec)].into();
        let d = crate::controller::directory::build(
            &config(),
            &proxies,
            &Default::default(),
            &Default::default(),
        );
        let t = base_table(&config(), &d, "alice");
        assert_eq!(
            t["bob"],
            Endpoint::Peer(PeerEndpoint {
                host: "10.0.0.2".into(),
                port: 4242,
                native: false
            })
        );
    }

    #[test]
    fn an_unregistered_proxy_on_port_zero_is_left_out() {
        let mut c = config();
        c.instances[1].proxy.advertise = None;
        c.instances[1].proxy.listen = "127.0.0.1:0".parse().unwrap();
        assert!(!base_table(&c, &dir(&c), "alice").contains_key("bob"));
    }

    #[test]
    fn an_unknown_instance_gets_the_bot_endpoint_alone() {
        let t = base_table(&config(), &dir(&config()), "stranger");
        assert_eq!(t.keys().collect::<Vec<_>>(), ["BOT"]);
    }

    #[test]
    fn a_deep_merge_changes_only_the_fields_it_names() {
        let base = base_table(&config(), &dir(&config()), "alice");
        let t = apply(&base, &patch(json!({"bob": {"port": 9100}}))).unwrap();
        match &t["bob"] {
            Endpoint::Peer(p) => assert_eq!((p.host.as_str(), p.port), ("bob.lan", 9100)),
            other => panic!("{other:?}"),
        }
        let t = apply(
            &base,
            &patch(json!({"BOT": {"model_config": {"temperature": 0.1}}})),
        )
        .unwrap();
        match &t["BOT"] {
            Endpoint::Ai(a) => {
                assert_eq!(a.model_config.model, "gpt-4o-mini");
                assert_eq!(a.model_config.temperature, Some(0.1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn null_removes_an_entry_even_after_accumulating_patches() {
        let base = base_table(&config(), &dir(&config()), "alice");
        let acc = patch(json!({"GEMINI": {"timeout": 5.0}})).then(&patch(json!({"GEMINI": null})));
        let t = apply(&base, &acc).unwrap();
        assert!(!t.contains_key("GEMINI"));
    }

    #[test]
    fn a_new_entry_needs_a_host_and_a_port_in_range() {
        let base = EndpointTable::new();
        let e = apply(&base, &patch(json!({"carol": {"host": "h"}}))).unwrap_err();
        assert!(e.contains("`carol`: port is missing"), "{e}");
        let e = apply(
            &base,
            &patch(json!({"carol": {"host": "h", "port": 70000}})),
        )
        .unwrap_err();
        assert!(
            e.contains("port must be a whole number from 1 to 65535"),
            "{e}"
        );
        let e = apply(&base, &patch(json!({"carol": {"port": 1}}))).unwrap_err();
        assert!(e.contains("host is missing"), "{e}");
        assert!(apply(&base, &patch(json!({"carol": {"host": "h", "port": 1}}))).is_ok());
    }

    #[test]
    fn an_unknown_transform_or_provider_is_refused() {
        let base = base_table(&config(), &dir(&config()), "alice");
        let e = apply(
            &base,
            &patch(json!({"BOT": {"transform_request": "magic"}})),
        )
        .unwrap_err();
        assert!(e.contains("transform_request `magic` is unknown"), "{e}");
        let e = apply(&base, &patch(json!({"BOT": {"provider": "openia"}}))).unwrap_err();
        assert!(e.contains("unknown variant `openia`"), "{e}");
    }

    #[test]
    fn a_bad_endpoint_name_is_refused() {
        let e = apply(
            &EndpointTable::new(),
            &patch(json!({"no spaces": {"host": "h", "port": 1}})),
        )
        .unwrap_err();
        assert!(e.contains("not a valid name"), "{e}");
    }

    #[test]
    fn endpoints_may_be_a_json_string_of_an_object() {
        let p = TablePatch::from_value(json!("{\"bob\":{\"port\":1}}")).unwrap();
        assert!(!p.is_empty());
        assert!(TablePatch::from_value(json!("{nope")).is_err());
        assert!(TablePatch::from_value(json!([1])).is_err());
    }

    fn nothing_else(_: &str) -> bool {
        false
    }

    #[test]
    fn unknown_fields_are_named_and_left_out_at_every_level() {
        let base = base_table(&config(), &dir(&config()), "alice");
        let p = patch(json!({
            "BOT": {"junk": "x", "model_config": {"temperature": 0.2, "colour": "blue"},
                    "headers": {"OpenAI-Beta": "v2"}, "timeouts": {"idle_secs": 5, "nap": 1}},
            "bob": {"port": 4102, "model_config": {"model": "m"}},
        }));
        let (typed, unknown) = p.typed(&base, &nothing_else);
        assert_eq!(
            unknown,
            [
                "BOT.junk",
                "BOT.model_config.colour",
                "BOT.timeouts.nap",
                "bob.model_config"
            ]
        );
        assert_eq!(
            typed,
            patch(json!({
                "BOT": {"model_config": {"temperature": 0.2}, "headers": {"OpenAI-Beta": "v2"},
                        "timeouts": {"idle_secs": 5}},
                "bob": {"port": 4102},
            }))
        );
    }

    #[test]
    fn a_removal_is_kept_only_when_it_removes_something() {
        let base = base_table(&config(), &dir(&config()), "alice");
        let p = patch(json!({
            "GEMINI": null, "ghost": null, "BOT": {"system_prompt": null, "timeout": null,
                                                   "headers": {"X-Nothing": null}},
        }));
        let (typed, unknown) = p.typed(&base, &nothing_else);
        assert!(unknown.is_empty());
        assert_eq!(
            typed,
            patch(json!({"GEMINI": null, "BOT": {"timeout": null, "headers": {}}}))
        );
        // A configured instance missing from the table now may come back: its removal stays.
        let (typed, _) = patch(json!({"carol": null})).typed(&base, &|n| n == "carol");
        assert_eq!(typed, patch(json!({"carol": null})));
    }

    #[test]
    fn an_entry_and_its_removal_leave_nothing_behind() {
        let base = base_table(&config(), &dir(&config()), "alice");
        let added = patch(json!({"carol": {"host": "10.0.0.9", "port": 4444}}));
        let both = added.then(&patch(json!({"carol": null})));
        assert_eq!(both.typed(&base, &nothing_else).0, TablePatch::default());
    }

    #[test]
    fn the_shapes_name_every_field_of_the_typed_entries() {
        fn keys(v: &Value) -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        }
        fn sorted(mut v: Vec<&str>) -> Vec<String> {
            v.sort();
            v.into_iter().map(String::from).collect()
        }
        let ai: AiEndpoint = serde_json::from_value(json!({
            "host": "h", "port": 1, "is_api": true, "timeout": 1.0,
            "model_config": {"model": "m", "temperature": 0.1, "max_tokens": 5, "top_p": 0.5},
            "provider": "openai", "base_url": "http://h", "api_key_env": "K", "api_key_file": "f",
            "api_version": "v", "auth_style": "bearer", "system_prompt": "s",
            "timeouts": {"connect_ms": 1, "first_token_ms": 1, "idle_ms": 1, "total_ms": 1},
        }))
        .unwrap();
        let v = serde_json::to_value(&ai).unwrap();
        assert_eq!(keys(&v), sorted(AI.names()));
        let Shape::Fields(ai_fields) = AI else {
            panic!("AI is a set of fields")
        };
        for (name, shape) in ai_fields {
            if let Shape::Fields(_) = shape {
                assert_eq!(keys(&v[*name]), sorted(shape.names()), "{name}");
            }
        }
        let peer = PeerEndpoint {
            host: "h".into(),
            port: 1,
            native: true,
        };
        let mut peer_fields = keys(&serde_json::to_value(&peer).unwrap());
        peer_fields.push("is_api".into());
        peer_fields.sort();
        assert_eq!(peer_fields, sorted(PEER.names()));
    }

    #[test]
    fn secrets_are_refused_wherever_they_hide() {
        for bad in [
            json!({"BOT": {"headers": {"Authorization": "Bearer abc"}}}),
            json!({"BOT": {"headers": {"X-Api-Key": "whatever"}}}),
            json!({"GEMINI": {"params": {"key": "k"}}}),
            json!({"BOT": {"api_key": "x"}}),
            json!({"BOT": {"api_key_env": "sk-proj-0123456789abcdefghij"}}),
            json!({"BOT": {"path": "sk-proj-0123456789abcdefghij"}}),
            json!({"BOT": {"system_prompt": "AIzaSyA0123456789abcdefghijklmnopqrs"}}),
        ] {
            let e = patch(bad.clone()).check_no_secrets().unwrap_err();
            assert!(
                e.to_string().contains("name it in api_key_env"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn ordinary_values_are_not_mistaken_for_secrets() {
        let ok = patch(json!({"BOT": {
            "api_key_env": "OPENAI_API_KEY",
            "headers": {"OpenAI-Beta": "assistants=v2", "Authorization": null},
            "path": "/v1beta/models/gemini-2.5-flash:generateContent",
            "system_prompt": "You are a helpful assistant in a group chat. Be concise.",
            "model_config": {"model": "claude-sonnet-4-5-20250929"}
        }}));
        assert!(ok.check_no_secrets().is_ok());
    }
}

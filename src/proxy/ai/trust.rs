//! Trust in the controller's AI entries: which origins this proxy calls at all
//! ([`call_refusal`]: only those its OWN config.yaml names) and which of its keys may go to
//! which endpoint (a key of this proxy's environment or files goes only where its own
//! config.yaml sends it: [`with_local_keys`]). It reads no key itself.

use crate::config::{AiEndpointConfig, AuthStyle};
use crate::wire::control_plane::{split_url, AiEndpoint};

/// The endpoint as this proxy will call it, with key sources from its OWN config only.
///
/// Tables come from the controller, which anyone who can reach it may edit; were a table's
/// `api_key_env` / `api_key_file` honoured, an edit could make the proxy read any variable or
/// file and send it to any URL. So: a key of this proxy's environment or files is sent only to
/// the origin (scheme, host, port) its own config.yaml names for that endpoint, from the key
/// source that config names. An endpoint the local config does not know, or moved to another
/// origin, is called without a local key (a key written in the original's table entry itself,
/// in `headers` or `params`, is still used: it is the table's own, not ours).
pub fn with_local_keys(name: &str, table: &AiEndpoint, local: &[AiEndpointConfig]) -> AiEndpoint {
    let mut e = table.clone();
    let trusted = local
        .iter()
        .find(|c| c.name.matches(name))
        .filter(|c| origin_of_config(c) == origin_of_entry(table));
    match trusted {
        Some(c) => {
            e.api_key_env = c.api_key_env.clone();
            e.api_key_file = c.api_key_file.as_ref().map(|p| p.display().to_string());
        }
        None => {
            e.api_key_env = None;
            e.api_key_file = None;
            // A key written in the table entry itself is the table's own and may be used; the
            // resolver says whether there is a usable one (exactly as it would read it).
            // Otherwise nothing of ours goes out: not even the provider's usual variable.
            let own_key = matches!(
                super::target::resolve(&e).map(|t| t.key),
                Ok(super::keys::KeySource::Legacy { .. })
            );
            if !own_key {
                e.auth_style = Some(AuthStyle::NoAuth);
            }
        }
    }
    e
}

/// Why this proxy will not call table entry `name` at all, if it will not: the URL it would
/// call (base URL, or the original's host/port/path) is at an origin (scheme, host, port) that
/// no AI endpoint of this proxy's own config names.
///
/// Issue 13, defect 5: tables come from the controller, which anyone who reaches it may edit;
/// an entry that may name any URL makes the proxy POST anywhere (the controller's own routes
/// included). The original's entries for endpoints this proxy's config names keep working:
/// they are at the same origins. An entry that does not resolve is not refused here: it calls
/// nothing, and the adapter says what is wrong with it.
pub fn call_refusal(name: &str, table: &AiEndpoint, local: &[AiEndpointConfig]) -> Option<String> {
    let target = super::target::resolve(table).ok()?;
    let allowed: Vec<_> = local.iter().map(origin_of_config).collect();
    let outside = [&target.url, &target.stream_url]
        .into_iter()
        .any(|url| !allowed.contains(&origin(url)));
    outside.then(|| {
        format!(
            "{name}'s address in the controller's table is not one this proxy's config \
             allows; to use it, add it to ai_endpoints in this proxy's config.yaml"
        )
    })
}

/// (scheme, host, port) of a URL, lower-cased.
fn origin(url: &str) -> (String, String, u16) {
    let scheme = url
        .split_once("://")
        .map_or("http", |(s, _)| s)
        .to_ascii_lowercase();
    let (host, port, _) = split_url(url);
    (scheme, host.to_ascii_lowercase(), port)
}

fn origin_of_config(c: &AiEndpointConfig) -> (String, String, u16) {
    origin(
        c.base_url
            .as_deref()
            .unwrap_or(c.provider.default_base_url()),
    )
}

fn origin_of_entry(e: &AiEndpoint) -> (String, String, u16) {
    match &e.base_url {
        Some(b) => origin(b),
        None => {
            let scheme = if e.port == 443 { "https" } else { "http" };
            (scheme.to_string(), e.host.to_ascii_lowercase(), e.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(yaml: &str) -> Vec<AiEndpointConfig> {
        vec![serde_yaml::from_str(yaml).unwrap()]
    }

    #[test]
    fn a_table_entry_matching_the_local_config_uses_the_local_key_source() {
        let mine = local("{name: BOT, provider: openai, model: m, api_key_env: MY_OPENAI_KEY}");
        let mut table = AiEndpoint::from_config(&mine[0]);
        table.api_key_env = Some("AWS_SECRET_ACCESS_KEY".into());
        table.model_config.model = "gpt-5".into();
        let e = with_local_keys("bot", &table, &mine);
        assert_eq!(e.api_key_env.as_deref(), Some("MY_OPENAI_KEY"));
        assert_eq!(e.model_config.model, "gpt-5", "other edits apply");
        assert_eq!(e.auth_style, None);
    }

    #[test]
    fn an_entry_moved_to_another_origin_gets_no_local_key() {
        let mine = local("{name: BOT, provider: openai, model: m, api_key_env: MY_OPENAI_KEY}");
        let mut table = AiEndpoint::from_config(&mine[0]);
        table.base_url = Some("http://evil.example/v1".into());
        table.api_key_file = Some("/root/.ssh/id_rsa".into());
        let e = with_local_keys("BOT", &table, &mine);
        assert_eq!((e.api_key_env, e.api_key_file), (None, None));
        assert_eq!(
            e.auth_style,
            Some(AuthStyle::NoAuth),
            "not even OPENAI_API_KEY by default"
        );
    }

    #[test]
    fn an_endpoint_unknown_to_the_local_config_gets_no_local_key() {
        let theirs = local("{name: X, provider: openai_compatible, model: m, base_url: 'http://h:1/v1', api_key_env: HOME}");
        let e = with_local_keys("X", &AiEndpoint::from_config(&theirs[0]), &[]);
        assert_eq!(e.api_key_env, None);
        assert_eq!(e.auth_style, Some(AuthStyle::NoAuth));
    }

    #[test]
    fn an_empty_or_unusable_key_in_a_table_entry_brings_no_local_key_along() {
        let theirs =
            local("{name: G, provider: gemini, model: m, base_url: 'https://evil.example/v1beta'}");
        for (header, value) in [
            ("x-goog-api-key", ""),
            ("authorization", "bearer lowercase"),
        ] {
            let mut table = AiEndpoint::from_config(&theirs[0]);
            table.headers.insert(header.into(), value.into());
            let e = with_local_keys("G", &table, &[]);
            assert_eq!(e.auth_style, Some(AuthStyle::NoAuth), "{header}: {value:?}");
        }
        let mut table = AiEndpoint::from_config(&theirs[0]);
        table.params.insert("key".into(), " ".into());
        assert_eq!(
            with_local_keys("G", &table, &[]).auth_style,
            Some(AuthStyle::NoAuth)
        );
    }

    #[test]
    fn an_entry_at_an_origin_of_the_local_config_is_called_and_any_other_is_not() {
        let mine =
            local("{name: BOT, provider: openai, model: m, base_url: 'http://127.0.0.1:7000/v1'}");
        let mut table = AiEndpoint::from_config(&mine[0]);
        assert_eq!(call_refusal("BOT", &table, &mine), None);
        table.base_url = Some("http://127.0.0.1:7000/other/v1".into());
        assert_eq!(call_refusal("BOT", &table, &mine), None, "same origin");
        for moved in [
            "http://127.0.0.1:7001/v1",
            "https://127.0.0.1:7000/v1",
            "http://localhost:7000/v1",
            "http://user@127.0.0.1:7000/v1",
        ] {
            table.base_url = Some(moved.into());
            let why = call_refusal("BOT", &table, &mine).unwrap_or_else(|| panic!("{moved}"));
            assert!(
                why.starts_with(
                    "BOT's address in the controller's table is not one this proxy's config allows"
                ),
                "{why}"
            );
        }
        assert!(
            call_refusal("BOT", &table, &[]).is_some(),
            "no AI in the config"
        );
    }

    #[test]
    fn an_original_entry_with_host_port_path_is_held_to_the_same_origins() {
        let mine = local("{name: BOT, provider: openai_compatible, model: m, base_url: 'http://127.0.0.1:7000/v1'}");
        let entry = |port: u16, path: &str| -> AiEndpoint {
            serde_json::from_value(serde_json::json!({
                "host": "127.0.0.1", "port": port, "is_api": true, "path": path,
                "transform_request": "openai_chat", "model_config": {"model": "m"}
            }))
            .unwrap()
        };
        assert_eq!(
            call_refusal("BOT", &entry(7000, "/v1/chat/completions"), &mine),
            None
        );
        // The controller's remove route, say.
        assert!(call_refusal("BOT", &entry(9000, "/remove_proxy/p-bob"), &mine).is_some());
    }

    #[test]
    fn a_key_written_in_an_original_table_entry_is_still_used() {
        let theirs = local("{name: G, provider: gemini, model: m}");
        let mut table = AiEndpoint::from_config(&theirs[0]);
        table.params.insert("key".into(), "AIza-table".into());
        let e = with_local_keys("G", &table, &[]);
        assert_eq!(e.auth_style, None, "the table's own key goes out as before");
    }
}

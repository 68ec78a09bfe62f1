//! The dashboard's HTML, as pure maud functions of what the registry hands over: the page, and
//! one row per proxy (the same row function renders the page and the live SSE updates, so there
//! is one renderer).
//!
//! Never shows a key: an AI endpoint shows the name of its environment variable (or key file)
//! and whether the proxy has the key, as the proxy reported it (for a proxy that does not
//! report, whether the variable is set in the controller's environment, labelled as such).
//! Does no I/O.

use std::collections::BTreeMap;

use maud::{html, Markup};

use crate::layout::layout;

use crate::wire::control_plane::{Endpoint, EndpointTable};

use super::liveness::Badge;

/// Whether an AI endpoint's key is there (never the key), and who says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    pub set: bool,
    pub witness: KeyWitness,
}

/// Who knows whether a key is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWitness {
    /// The proxy that calls the API reported it.
    Proxy,
    /// The proxy does not report its keys (the original's, an older one): the controller's own
    /// environment, right only when both run in one process (`overlay up`).
    ControllerEnvironment,
}

/// One proxy, as shown.
#[derive(Debug, Clone)]
pub struct ProxyView {
    pub proxy_id: String,
    pub instance_name: String,
    /// The instance is one of config.yaml's.
    pub in_config: bool,
    pub host: String,
    pub port: u16,
    pub protocol: Option<String>,
    pub registered_at_ms: u64,
    pub last_seen_ms: u64,
    /// How long ago that was, when the view was made (the page's script keeps it ticking).
    pub age_secs: u64,
    pub badge: Badge,
    pub table: EndpointTable,
    /// AI endpoint name → whether its key is there (see `registry::key_statuses`).
    pub keys: BTreeMap<String, KeyStatus>,
    /// Its user's state in the directory (`active`, `pending`, `legacy`, `revoked`).
    pub trust: &'static str,
    /// The pinned key's fingerprint, when there is one.
    pub fingerprint: Option<String>,
    /// The directory version it said it applied, and the newest one.
    pub applied_version: Option<u64>,
    pub current_version: u64,
}

impl ProxyView {
    /// It acknowledged a directory version older than the newest (or none while joined).
    pub fn behind(&self) -> bool {
        self.trust == "active" && self.applied_version.is_none_or(|v| v < self.current_version)
    }
}

impl ProxyView {
    /// The first 8 characters of the id.
    pub fn short_id(&self) -> &str {
        match self.proxy_id.char_indices().nth(8) {
            Some((i, _)) => &self.proxy_id[..i],
            None => &self.proxy_id,
        }
    }
}

/// The whole page at `GET /`.
pub fn page(proxies: &[ProxyView], instances: usize, ai_endpoints: usize) -> Markup {
    layout(
        "overlay · controller",
        "/assets/dashboard.css",
        html! {
            body.dashboard {
                header.dash-header {
                    div.brand {
                        img src="/assets/favicon.svg" alt="" width="28" height="28";
                        div {
                            h1 { "overlay controller" }
                            p.sub { "Registered proxies and the endpoint tables they route with" }
                        }
                    }
                    div.stats {
                        span.stat { b #count-proxies { (proxies.len()) } " proxies" }
                        span.stat { b { (instances) } " users in config" }
                        span.stat { b { (ai_endpoints) } " AI endpoints" }
                        span #live.live.off title="live updates" { span.dot {} span.live-text { "connecting" } }
                    }
                }
                main.dash-main {
                    p #empty.empty hidden[!proxies.is_empty()] {
                        "No proxy has registered yet. Start one with "
                        code { "overlay proxy --name NAME" } " or " code { "overlay up" } "."
                    }
                    div #proxies.proxies { (proxy_rows(proxies)) }
                }
                footer.dash-footer {
                    "Tables are deep-merged on edit; set an entry to " code { "null" } " to remove it. "
                    "API keys never reach the controller: each AI endpoint names the environment variable "
                    "that holds its key, read by the proxy that calls the API."
                }
                script src="/assets/dashboard.js" defer {}
            }
        },
    )
}

/// Every row, in order.
pub fn proxy_rows(proxies: &[ProxyView]) -> Markup {
    html! { @for p in proxies { (proxy_row(p)) } }
}

/// `just now`, `12 s ago`, `3 min ago`, `2 h 5 min ago` (as the page's script writes it).
pub fn ago(secs: u64) -> String {
    match secs {
        0..=2 => "just now".to_string(),
        3..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        _ => format!("{} h {} min ago", secs / 3600, secs / 60 % 60),
    }
}

fn badge_class(b: Badge) -> &'static str {
    match b {
        Badge::Active => "badge ok",
        Badge::Warning => "badge warn",
        Badge::Stale => "badge bad",
    }
}

/// One proxy: summary line, its endpoint table, the JSON editor, the remove button.
pub fn proxy_row(p: &ProxyView) -> Markup {
    let table_json = serde_json::to_string_pretty(&p.table).unwrap_or_else(|_| "{}".into());
    html! {
        section.proxy id={ "proxy-" (p.proxy_id) } data-id=(p.proxy_id) data-name=(p.instance_name)
            data-seen=(p.last_seen_ms) data-badge=(p.badge.as_str()) {
            div.proxy-head {
                div.who {
                    span.name { (p.instance_name) }
                    code.pid title=(p.proxy_id) { (p.short_id()) }
                    @if !p.in_config { span.tag title="not in config.yaml: gets the BOT endpoint alone, plus edits" { "not in config" } }
                    @if p.protocol.is_some() { span.tag.native title="speaks the native protocol" { (p.protocol.as_deref().unwrap_or_default()) } }
                    @else { span.tag title="registered without a protocol: an original proxy" { "legacy" } }
                }
                div.where {
                    span.addr { (p.host) ":" (p.port) }
                    span.seen title="last sign of life" { "seen " span.ago { (ago(p.age_secs)) } }
                    span class=(badge_class(p.badge)) { (p.badge.as_str()) }
                }
                button.remove type="button" title="remove this proxy from the registry" { "Remove" }
            }
            (endpoint_table(p))
            details.editor {
                summary { "Edit table as JSON" }
                textarea.table-json spellcheck="false" rows=(table_json.lines().count().clamp(6, 18)) { (table_json) }
                div.editor-actions {
                    button.save type="button" { "Validate and save" }
                    span.edit-msg role="status" {}
                }
            }
        }
    }
}

fn endpoint_table(p: &ProxyView) -> Markup {
    html! {
        @if p.table.is_empty() {
            p.no-endpoints { "No endpoints: this proxy can reach nobody." }
        } @else {
            table.endpoints {
                thead { tr { th { "Name" } th { "Kind" } th { "Where" } th { "Details" } th { "API key" } } }
                tbody {
                    @for (name, e) in &p.table {
                        @match e {
                            Endpoint::Peer(peer) => tr {
                                td.ep-name { (name) }
                                td { span.kind.peer { "peer" } }
                                td { code { (peer.host) ":" (peer.port) } }
                                td.muted { @if peer.native { "native relay" } @else { "legacy POST /" } }
                                td.muted { "—" }
                            },
                            Endpoint::Ai(ai) => tr {
                                td.ep-name { (name) }
                                td { span.kind.ai { (ai.provider.map(|p| p.as_str()).unwrap_or("ai")) } }
                                td { code { (ai.host) ":" (ai.port) } }
                                td { (ai.model_config.model) span.muted { " · " (ai.transform_request) } }
                                td.key { (key_cell(ai.api_key_env.as_deref(), ai.api_key_file.as_deref(), p.keys.get(name))) }
                            },
                        }
                    }
                }
            }
        }
    }
}

fn key_cell(env: Option<&str>, file: Option<&str>, status: Option<&KeyStatus>) -> Markup {
    html! {
        @if let Some(var) = env {
            code { (var) } " "
        } @else if let Some(f) = file {
            "file " code { (f) } " "
        }
        @match status {
            Some(KeyStatus { set: true, witness: KeyWitness::Proxy }) => {
                span.keystate.set title="this proxy has the key where it runs (as it reported)" { "set" }
            }
            Some(KeyStatus { set: false, witness: KeyWitness::Proxy }) => {
                span.keystate.unset title="this proxy has no key for this endpoint where it runs (as it reported)" { "not set" }
            }
            Some(KeyStatus { set, witness: KeyWitness::ControllerEnvironment }) => {
                @if *set {
                    span.keystate.set title="set in the controller's environment; this proxy does not report its keys" { "set" }
                } @else {
                    span.keystate.unset title="not set in the controller's environment; this proxy does not report its keys and may still have it" { "not set" }
                }
                " " span.muted.witness { "(controller's environment)" }
            }
            None => {
                @if env.is_some() || file.is_some() {
                    span.muted title="this proxy did not report this endpoint's key" { "not reported" }
                } @else {
                    span.muted { "none" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AiEndpointConfig;
    use crate::wire::control_plane::{AiEndpoint, PeerEndpoint};

    fn view() -> ProxyView {
        let ai: AiEndpointConfig = serde_yaml::from_str(
            "{name: BOT, provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}",
        )
        .unwrap();
        let mut table = EndpointTable::new();
        table.insert(
            "BOT".into(),
            Endpoint::Ai(Box::new(AiEndpoint::from_config(&ai))),
        );
        table.insert(
            "bob".into(),
            Endpoint::Peer(PeerEndpoint {
                host: "127.0.0.1".into(),
                port: 10002,
                native: true,
            }),
        );
        ProxyView {
            proxy_id: "0123456789abcdef".into(),
            instance_name: "alice<script>".into(),
            in_config: true,
            host: "127.0.0.1".into(),
            port: 10001,
            protocol: Some("overlay/1".into()),
            registered_at_ms: 1,
            last_seen_ms: 2,
            age_secs: 75,
            badge: Badge::Warning,
            table,
            keys: [(
                "BOT".to_string(),
                KeyStatus {
                    set: true,
                    witness: KeyWitness::Proxy,
                },
            )]
            .into(),
            trust: "active",
            fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
            applied_version: Some(7),
            current_version: 7,
        }
    }

    #[test]
    fn a_row_shows_name_short_id_address_and_badge_and_escapes_names() {
        let html = proxy_row(&view()).into_string();
        assert!(html.contains("alice&lt;script&gt;"), "{html}");
        assert!(html.contains(">01234567<"), "{html}");
        assert!(html.contains("1 min ago"), "{html}");
        assert!(html.contains("127.0.0.1:10001"), "{html}");
        assert!(
            html.contains("badge warn") && html.contains(">Warning<"),
            "{html}"
        );
    }

    /// The key cell of the BOT row.
    fn bot_key_cell(v: &ProxyView) -> String {
        let html = proxy_row(v).into_string();
        let row = html
            .split("<tr>")
            .find(|r| r.contains(">BOT<"))
            .unwrap_or_else(|| panic!("no BOT row: {html}"));
        let cell = row.split("<td class=\"key\">").nth(1).unwrap();
        cell.split("</td>").next().unwrap().to_string()
    }

    #[test]
    fn an_ai_endpoint_shows_its_key_variable_and_whether_its_proxy_has_the_key() {
        let mut v = view();
        let cell = bot_key_cell(&v);
        assert!(cell.contains("<code>OPENAI_API_KEY</code>"), "{cell}");
        assert!(
            cell.contains(">set<") && !cell.contains("controller"),
            "{cell}"
        );
        v.keys.get_mut("BOT").unwrap().set = false;
        assert!(bot_key_cell(&v).contains(">not set<"));
        v.keys.clear();
        assert!(bot_key_cell(&v).contains(">not reported<"));
    }

    #[test]
    fn what_the_controller_environment_says_is_labelled_as_such() {
        let mut v = view();
        v.keys.insert(
            "BOT".into(),
            KeyStatus {
                set: false,
                witness: KeyWitness::ControllerEnvironment,
            },
        );
        let cell = bot_key_cell(&v);
        assert!(cell.contains(">not set<"), "{cell}");
        assert!(cell.contains("(controller's environment)"), "{cell}");
    }

    #[test]
    fn the_page_says_when_no_proxy_has_registered() {
        let html = page(&[], 4, 4).into_string();
        assert!(html.contains("No proxy has registered yet"));
        assert!(!html.contains("id=\"empty\" hidden"));
    }
}

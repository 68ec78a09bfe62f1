//! The dashboard's HTML, as pure maud functions of what the registry hands over: the page, and
//! one row per proxy (the same row function renders the page and the live SSE updates, so there
//! is one renderer).
//!
//! Never shows a key: an AI endpoint shows the name of its environment variable (or key file)
//! and whether the proxy has the key, as the proxy reported it (for a proxy that does not
//! report, whether the variable is set in the controller's environment, labelled as such).
//! Does no I/O.
//!
//! Trust (issue #14): the root fingerprint and directory version, notices (users without a
//! pinned key, proxies behind, revocations), every directory user, open join tokens (id, name,
//! expiry: never a secret, which the controller does not have) and the newest audit entries.
//! A proxy registered through the original's API (a `legacy` user, or no `protocol`) and a
//! `legacy` user carry an "unauthenticated" label: their messages are unsigned, and only the
//! address listed under `legacy_proxies` vouches for them.
//! Each trust part carries `data-trust` and an id: the script re-fetches `GET /` and swaps
//! those parts in when the audit log grows. The admin forms call the admin API from the
//! script, with the admin token the user typed (kept in the tab's sessionStorage only).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use maud::{html, Markup};

use crate::layout::layout;

use crate::wire::control_plane::{Endpoint, EndpointTable};
use crate::wire::directory::{UserEntry, UserState};

use super::liveness::Badge;
use super::registry::TrustView;
use super::store::{AuditEntry, TokenRecord};

/// How many audit entries the page shows (newest first).
pub const AUDIT_ON_PAGE: usize = 50;

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
    /// A relay, or a user's proxy.
    pub role: crate::wire::directory::Role,
    /// The relay a proxy behind NAT is reached through.
    pub via: Option<String>,
    /// A relay's last report: who is attached, what it carried.
    pub relay: Option<crate::wire::control_plane::RelayReport>,
    /// The names of its table reached through a relay (name → relay), as the directory says.
    pub relayed: BTreeMap<String, String>,
}

impl ProxyView {
    /// It acknowledged a directory version older than the newest (or none while joined).
    pub fn behind(&self) -> bool {
        self.trust == "active"
            && self
                .applied_version
                .is_none_or(|v| v < self.current_version)
    }
}

impl ProxyView {
    /// It registered through the original's API: its user has no key in the directory
    /// (`legacy`), or it named no protocol (an original proxy).
    pub fn unauthenticated(&self) -> bool {
        self.trust == "legacy" || self.protocol.is_none()
    }

    /// The first 8 characters of the id.
    pub fn short_id(&self) -> &str {
        match self.proxy_id.char_indices().nth(8) {
            Some((i, _)) => &self.proxy_id[..i],
            None => &self.proxy_id,
        }
    }
}

/// The whole page at `GET /`.
pub fn page(
    proxies: &[ProxyView],
    trust: &TrustView,
    instances: usize,
    ai_endpoints: usize,
) -> Markup {
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
                    (root_strip(trust))
                    (notices(proxies, trust))
                    h2.section-title { "Proxies" }
                    p #empty.empty hidden[!proxies.is_empty()] {
                        "No proxy has registered yet. Start one with "
                        code { "overlay proxy --name NAME" } " or " code { "overlay up" } "."
                    }
                    div #proxies.proxies { (proxy_rows(proxies)) }
                    (admin_bar())
                    (users_panel(trust))
                    (tokens_panel(trust))
                    (audit_panel(trust))
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

/// What the "unauthenticated" label's tooltip says.
pub const UNAUTHENTICATED_TITLE: &str = "registered through the original's API: its messages are \
     unsigned, and nothing vouches for them but the address they come from (listed under \
     legacy_proxies in config.yaml)";

/// The label of a proxy or user that signs nothing.
fn unauthenticated_label() -> Markup {
    html! {
        span.state.st-legacy.unauthenticated title=(UNAUTHENTICATED_TITLE) { "unauthenticated" }
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
                    @if p.unauthenticated() { (unauthenticated_label()) }
                    @if !p.in_config { span.tag title="not in config.yaml: gets the BOT endpoint alone, plus edits" { "not in config" } }
                    @if !p.role.is_user() { span.tag.native title="carries messages for proxies behind NAT" { "relay" } }
                    @if p.protocol.is_some() { span.tag.native title="speaks the native protocol" { (p.protocol.as_deref().unwrap_or_default()) } }
                    @else { span.tag title="registered without a protocol: an original proxy" { "legacy" } }
                }
                div.where {
                    span.addr { (p.host) ":" (p.port) }
                    span.seen title="last sign of life" { "seen " span.ago { (ago(p.age_secs)) } }
                    span class=(badge_class(p.badge)) { (p.badge.as_str()) }
                    span class={ "state st-" (p.trust) } title=(proxy_trust_title(p)) { "key " (p.trust) }
                    @if p.behind() {
                        span.state.st-behind title=(behind_text(p)) { "behind" }
                    }
                    @if let Some(relay) = &p.via {
                        span.tag.via title="behind NAT: other proxies reach it through this relay" { "via " (relay) }
                    }
                }
                button.remove type="button" title="remove this proxy from the registry" { "Remove" }
            }
            @if p.role.is_user() {
                (endpoint_table(p))
                details.editor {
                    summary { "Edit table as JSON" }
                    textarea.table-json spellcheck="false" rows=(table_json.lines().count().clamp(6, 18)) { (table_json) }
                    div.editor-actions {
                        button.save type="button" { "Validate and save" }
                        span.edit-msg role="status" {}
                    }
                }
            } @else {
                (relay_panel(p))
            }
        }
    }
}

/// A byte count for people: bytes, KiB or MiB.
fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} bytes"),
        1024..1_048_576 => format!("{} KiB", n / 1024),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A relay's row: the proxies attached to it and what it carried, as of its last heartbeat.
fn relay_panel(p: &ProxyView) -> Markup {
    html! {
        div.relay {
            @match &p.relay {
                None => p.empty { "No report yet (it reports with each heartbeat)." },
                Some(r) => {
                    p.relay-attached {
                        "Attached: "
                        @if r.attached.is_empty() { "none" }
                        @for (i, name) in r.attached.iter().enumerate() {
                            @if i > 0 { ", " }
                            span.name { (name) }
                        }
                    }
                    p.relay-traffic {
                        "Since " (time(r.started_ms)) ": " (r.messages_carried) " messages carried in " (r.requests_carried)
                        " requests (" (bytes(r.bytes_carried)) "); dropped (queue full) "
                        (r.dropped) ", receiver not attached " (r.not_here) ", refused "
                        (r.refused)
                    }
                    @if !r.flagged.is_empty() {
                        p.state.st-revoked title="two processes with one key took turns attaching: a cloned key" {
                            "Refused for a cloned key: " (r.flagged.join(", "))
                        }
                    }
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
                                @match p.relayed.get(&name.to_ascii_lowercase()) {
                                    Some(relay) => {
                                        td { "via " code { (relay) } }
                                        td.muted title="behind NAT: reached through that relay only" { "through a relay" }
                                    }
                                    None => {
                                        td { code { (peer.host) ":" (peer.port) } }
                                        td.muted { @if peer.native { "native relay" } @else { "legacy POST /" } }
                                    }
                                }
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

fn proxy_trust_title(p: &ProxyView) -> String {
    match &p.fingerprint {
        Some(fp) => format!("its user's state in the directory; key {fp}"),
        None => "its user's state in the directory; no key pinned".to_string(),
    }
}

/// `acknowledged version N of M` (or none yet).
fn behind_text(p: &ProxyView) -> String {
    match p.applied_version {
        Some(v) => format!("acknowledged version {v} of {}", p.current_version),
        None => format!("acknowledged no version yet of {}", p.current_version),
    }
}

/// `2026-11-30 23:35:47 UTC` (the script shows it in local time).
pub fn utc(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
        .replace('Z', " UTC")
}

fn time(ms: u64) -> Markup {
    html! { time data-ms=(ms) title=(utc(ms)) { (utc(ms)) } }
}

/// The root fingerprint (full, selectable) and the directory version.
pub fn root_strip(trust: &TrustView) -> Markup {
    html! {
        section #trust-root.root-strip data-trust {
            div.root-fp {
                span.label { "Controller root" }
                code.fp.select-all #root-fp { (trust.root) }
                span.hint { "Proxies pin it with " code { "--controller-root" } " (or " code { "controller.root" } " in config.yaml)." }
            }
            div.root-version {
                span.label { "Directory version" }
                b #dir-version { (trust.version) }
            }
        }
    }
}

/// What needs attention: users without a pinned key, proxies behind, revoked users.
pub fn notices(proxies: &[ProxyView], trust: &TrustView) -> Markup {
    let legacy: Vec<&UserEntry> = trust
        .users
        .iter()
        .filter(|u| u.state == UserState::Legacy)
        .collect();
    let behind: Vec<&ProxyView> = proxies.iter().filter(|p| p.behind()).collect();
    let revoked: Vec<(&UserEntry, u64, &str)> = trust
        .users
        .iter()
        .filter_map(|u| match &u.state {
            UserState::Revoked { at_ms, reason } => Some((u, *at_ms, reason.as_str())),
            _ => None,
        })
        .collect();
    html! {
        div #notices.notices data-trust {
            @if !legacy.is_empty() {
                div.notice.warn {
                    b { "No pinned key: " }
                    "these users are unauthenticated. A proxy of ours that registered before keys "
                    "were pinned needs a join token; an original proxy (listed under "
                    code { "legacy_proxies" } ") cannot sign and stays unauthenticated: "
                    ul {
                        @for u in &legacy {
                            li { span.uname { (u.name) } ": " code.select-all { "overlay token create --name " (u.name) } }
                        }
                    }
                }
            }
            @if !behind.is_empty() {
                div.notice.warn {
                    b { "Behind: " }
                    @for (i, p) in behind.iter().enumerate() {
                        @if i > 0 { "; " }
                        span.uname { (p.instance_name) } " " (behind_text(p))
                    }
                    "."
                }
            }
            @if !revoked.is_empty() {
                div.notice.bad {
                    b { "Revoked: " }
                    @for (i, (u, at, reason)) in revoked.iter().enumerate() {
                        @if i > 0 { "; " }
                        span.uname { (u.name) } " (" (reason) ", " (time(*at)) ")"
                    }
                    ". Messages from their keys are refused everywhere."
                }
            }
        }
    }
}

/// A short fingerprint with the full one in its title (or a dash).
fn fingerprint_cell(fp: Option<String>) -> Markup {
    html! {
        @match fp {
            Some(full) => {
                @let short = crate::trust::Fingerprint::parse(&full)
                    .map(|f| f.short().to_string())
                    .unwrap_or_else(|_| full.clone());
                code.fp title=(full) { (short) "…" }
            }
            None => span.muted { "no key" },
        }
    }
}

fn state_badge(state: &UserState) -> Markup {
    html! {
        span class={ "state st-" (state.as_str()) } { (state.as_str()) }
        @if let UserState::Revoked { at_ms, reason } = state {
            span.revoked-why { " " (reason) " · " (time(*at_ms)) }
        }
    }
}

/// Who is logged in, and the way out (the forms below act with this login's session cookie).
fn admin_bar() -> Markup {
    html! {
        section #admin.admin-bar {
            span { "Logged in as the admin" }
            form method="post" action="/logout" {
                button.ghost type="submit" { "Log out" }
            }
        }
    }
}

/// `GET /login`: the admin's login, with the admin token, or (from this machine, when one is
/// set) the admin password; `error` says what went wrong with the last try.
pub fn login_page(error: Option<&str>, password: bool) -> Markup {
    layout(
        "overlay · controller login",
        "/assets/dashboard.css",
        html! {
            body.dashboard {
                main.login-card {
                    img src="/assets/favicon.svg" alt="" width="40" height="40";
                    h1 { "overlay controller" }
                    p { "Log in with the admin token from " code { "admin.token" } " in the controller's data directory." }
                    @if let Some(e) = error { p.login-error role="alert" { (e) } }
                    form method="post" action="/login" {
                        input type="password" name="token" autocomplete="off" placeholder="admin token" aria-label="admin token";
                        button.primary type="submit" { "Log in" }
                    }
                    @if password {
                        form method="post" action="/login" {
                            input type="password" name="password" autocomplete="current-password" placeholder="admin password" aria-label="admin password";
                            button.primary type="submit" { "Log in" }
                        }
                    }
                }
            }
        },
    )
}

/// Every directory user, with a Revoke button on active ones.
pub fn users_panel(trust: &TrustView) -> Markup {
    html! {
        section #users-panel.panel {
            h2.section-title { "Users" }
            (users_table(trust))
            p #users-msg.admin-msg role="status" {}
        }
    }
}

fn users_table(trust: &TrustView) -> Markup {
    html! {
        div #users data-trust {
            @if trust.users.is_empty() {
                p.empty { "No user in the directory yet." }
            } @else {
                table.grid {
                    thead { tr { th { "Name" } th { "State" } th { "Key" } th { "Sealing key" } th { "Address" } th {} } }
                    tbody {
                        @for u in &trust.users {
                            tr.user data-name=(u.name) {
                                td.ep-name { (u.name) }
                                td {
                                    (state_badge(&u.state))
                                    @if u.state == UserState::Legacy { " " (unauthenticated_label()) }
                                }
                                td { (fingerprint_cell(u.key.as_ref().map(|k| k.fingerprint().to_string()))) }
                                td {
                                    @match &u.seal {
                                        Some(seal) => code.seal title=(seal.to_string()) { (seal.id()) },
                                        None if u.state == UserState::Active => span.muted title="its proxy has registered no sealing key (not started since its upgrade, or of an older release): nothing is sent to it" { "none yet" },
                                        None => span.muted { "–" },
                                    }
                                }
                                td {
                                    @if u.port == 0 { span.muted { "not known yet" } }
                                    @else { code { (u.host) ":" (u.port) } }
                                }
                                td.actions {
                                    @if u.state == UserState::Active {
                                        button.revoke type="button" data-name=(u.name) title="revoke this user's key (asks for a reason)" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Open join tokens (never a secret), the admin token input and the form to create one.
pub fn tokens_panel(trust: &TrustView) -> Markup {
    html! {
        section #tokens-panel.panel {
            h2.section-title { "Join tokens" }
            form #token-form.token-form {
                label { "Name " input name="name" required maxlength="64" autocomplete="off" placeholder="alice"; }
                label { "Valid for "
                    select name="ttl" {
                        option value="1h" { "1 hour" }
                        option value="24h" selected { "24 hours" }
                        option value="7d" { "7 days" }
                    }
                }
                label.check { input type="checkbox" name="replace"; " may replace a pinned key (lost key)" }
                button.save type="submit" { "Create token" }
                span #token-msg.admin-msg role="status" {}
            }
            div #token-created.created hidden {
                p { b { "Shown once." } " Give it to the user over a channel you trust; it cannot be shown again." }
                div.copy-line { code #created-token.select-all {} button.copy type="button" data-copy="created-token" { "Copy" } }
                p.small { "They run:" }
                div.copy-line { code #created-command.select-all {} button.copy type="button" data-copy="created-command" { "Copy" } }
            }
            (tokens_table(&trust.tokens))
        }
    }
}

fn tokens_table(tokens: &[TokenRecord]) -> Markup {
    html! {
        div #tokens data-trust {
            @if tokens.is_empty() {
                p.muted.small { "No open token." }
            } @else {
                table.grid {
                    thead { tr { th { "Id" } th { "Name" } th { "Expires" } th { "Replace" } } }
                    tbody {
                        @for t in tokens {
                            tr.token {
                                td { code { (t.id) } }
                                td.ep-name { (t.name) }
                                td { (time(t.expires_at_ms)) }
                                td { @if t.replace { "yes" } @else { span.muted { "no" } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The newest [`AUDIT_ON_PAGE`] audit entries.
pub fn audit_panel(trust: &TrustView) -> Markup {
    html! {
        section #audit-panel.panel {
            h2.section-title { "Audit log" }
            (audit_table(&trust.audit))
        }
    }
}

fn audit_table(audit: &[AuditEntry]) -> Markup {
    html! {
        div #audit data-trust {
            @if audit.is_empty() {
                p.muted.small { "Nothing yet." }
            } @else {
                table.grid.audit {
                    thead { tr { th { "Time" } th { "Kind" } th { "Name" } th { "Source" } th { "Detail" } } }
                    tbody {
                        @for e in audit.iter().take(AUDIT_ON_PAGE) {
                            tr {
                                td.nowrap { (time(e.at_ms)) }
                                td { span class={ "kind k-" (e.kind) } { (e.kind) } }
                                td.ep-name { (e.name) }
                                td.muted.source { (e.source) }
                                td.detail { (e.detail) }
                            }
                        }
                    }
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
            role: Default::default(),
            via: None,
            relay: None,
            relayed: BTreeMap::new(),
        }
    }

    #[test]
    fn a_relay_row_shows_who_is_attached_what_it_carried_and_any_cloned_key() {
        let mut v = view();
        v.role = crate::wire::directory::Role::Relay;
        v.instance_name = "relay1".into();
        let html = proxy_row(&v).into_string();
        assert!(html.contains("No report yet"), "{html}");
        v.relay = Some(crate::wire::control_plane::RelayReport {
            attached: vec!["alice".into(), "carol<b>".into()],
            flagged: vec!["mallory".into()],
            started_ms: 1,
            attaches: 4,
            requests_carried: 3,
            messages_carried: 7,
            bytes_carried: 4096,
            dropped: 1,
            not_here: 2,
            refused: 5,
        });
        let html = proxy_row(&v).into_string();
        assert!(
            html.contains(">alice<") && html.contains("carol&lt;b&gt;"),
            "{html}"
        );
        assert!(
            html.contains("7 messages carried in 3 requests (4 KiB)"),
            "{html}"
        );
        assert_eq!(bytes(699), "699 bytes");
        assert!(html.contains("cloned key: mallory"), "{html}");
        assert!(
            !html.contains("endpoint"),
            "a relay has no endpoint table: {html}"
        );
        let mut p = view();
        p.via = Some("relay1".into());
        assert!(proxy_row(&p).into_string().contains("via relay1"));
        // In another proxy's table, a user behind a relay shows the relay, not its address.
        let mut p = view();
        p.relayed.insert("bob".into(), "relay1".into());
        let html = proxy_row(&p).into_string();
        assert!(html.contains("via <code>relay1</code>"), "{html}");
        assert!(!html.contains("127.0.0.1:10002"), "{html}");
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
        let html = page(&[], &trust_view(), 4, 4).into_string();
        assert!(html.contains("No proxy has registered yet"));
        assert!(!html.contains("id=\"empty\" hidden"));
    }

    fn fp() -> crate::trust::Fingerprint {
        crate::trust::Fingerprint::parse(&format!("sha256:{}", "cd".repeat(32))).unwrap()
    }

    fn user(name: &str, state: UserState, key: bool) -> UserEntry {
        UserEntry {
            role: Default::default(),
            via: None,
            tls: None,
            seal: None,
            name: name.into(),
            proxy_id: None,
            key: key.then(|| crate::trust::Identity::from_seed([7; 32]).public()),
            host: "127.0.0.1".into(),
            port: 10001,
            native: true,
            state,
        }
    }

    fn trust_view() -> TrustView {
        TrustView {
            root: fp(),
            version: 12,
            users: vec![],
            tokens: vec![],
            audit: vec![],
        }
    }

    #[test]
    fn the_page_shows_the_full_root_fingerprint_and_the_directory_version() {
        let html = page(&[], &trust_view(), 1, 0).into_string();
        assert!(html.contains(&fp().to_string()), "{html}");
        assert!(html.contains("--controller-root"), "{html}");
        assert!(html.contains("id=\"dir-version\">12<"), "{html}");
    }

    #[test]
    fn a_legacy_user_gets_a_notice_with_the_command_that_fixes_it() {
        let mut t = trust_view();
        assert!(!notices(&[], &t).into_string().contains("class=\"notice "));
        t.users.push(user("carol", UserState::Legacy, false));
        let html = notices(&[], &t).into_string();
        assert!(
            html.contains("No pinned key: ") && html.contains("needs a join token"),
            "{html}"
        );
        assert!(html.contains("overlay token create --name carol"), "{html}");
    }

    /// The "unauthenticated" label in `html`, with its tooltip, if there is one.
    fn unauthenticated_in(html: &str) -> bool {
        html.contains(&format!(
            "title=\"{UNAUTHENTICATED_TITLE}\">unauthenticated<"
        ))
    }

    #[test]
    fn a_proxy_of_the_original_is_labelled_unauthenticated_and_a_joined_one_is_not() {
        assert!(UNAUTHENTICATED_TITLE.contains("unsigned"));
        assert!(!unauthenticated_in(&proxy_row(&view()).into_string()));
        let mut legacy = view();
        legacy.trust = "legacy";
        legacy.fingerprint = None;
        let html = proxy_row(&legacy).into_string();
        assert!(unauthenticated_in(&html), "{html}");
        // A record without a protocol came through the original's API, whatever its user.
        let mut no_protocol = view();
        no_protocol.protocol = None;
        assert!(unauthenticated_in(&proxy_row(&no_protocol).into_string()));
    }

    #[test]
    fn a_legacy_user_is_labelled_unauthenticated_in_the_users_table() {
        let mut t = trust_view();
        t.users.push(user("carol", UserState::Legacy, false));
        t.users.push(user("erin", UserState::Active, true));
        let html = users_panel(&t).into_string();
        let row = |name: &str| {
            let start = html
                .find(&format!("data-name=\"{name}\">"))
                .unwrap_or_else(|| panic!("no row for {name}: {html}"));
            html[start..start + html[start..].find("</tr>").unwrap()].to_string()
        };
        assert!(unauthenticated_in(&row("carol")), "{html}");
        assert!(!unauthenticated_in(&row("erin")), "{html}");
    }

    #[test]
    fn the_users_table_shows_each_sealing_key_id_or_that_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) =
            crate::trust::seal::SealKeys::load_or_create(&dir.path().join("s"), 1).unwrap();
        let mut t = trust_view();
        let mut erin = user("erin", UserState::Active, true);
        erin.seal = Some(keys.current().0);
        t.users.push(erin);
        t.users.push(user("frank", UserState::Active, true));
        let html = users_panel(&t).into_string();
        assert!(html.contains(&keys.current().0.id()), "{html}");
        assert!(html.contains("none yet"), "{html}");
    }

    #[test]
    fn a_proxy_behind_gets_a_notice_and_a_badge() {
        let mut v = view();
        v.applied_version = Some(5);
        let html = notices(std::slice::from_ref(&v), &trust_view()).into_string();
        assert!(html.contains("acknowledged version 5 of 7"), "{html}");
        let row = proxy_row(&v).into_string();
        assert!(
            row.contains("st-behind") && row.contains(">key active<"),
            "{row}"
        );
        assert!(!proxy_row(&view()).into_string().contains("st-behind"));
    }

    #[test]
    fn a_revoked_user_shows_its_reason_and_no_revoke_button() {
        let mut t = trust_view();
        t.users.push(user(
            "dave",
            UserState::Revoked {
                at_ms: 1_700_000_000_000,
                reason: "laptop stolen".into(),
            },
            true,
        ));
        let html = users_panel(&t).into_string();
        assert!(
            html.contains(">revoked<") && html.contains("laptop stolen"),
            "{html}"
        );
        assert!(html.contains("2023-11-14 22:13:20 UTC"), "{html}");
        assert!(!html.contains("class=\"revoke\""), "{html}");
        assert!(notices(&[], &t).into_string().contains("laptop stolen"));
    }

    #[test]
    fn a_key_shows_its_short_fingerprint_with_the_full_one_in_the_title() {
        let mut t = trust_view();
        t.users.push(user("erin", UserState::Active, true));
        let full = crate::trust::Identity::from_seed([7; 32])
            .public()
            .fingerprint();
        let html = users_panel(&t).into_string();
        assert!(
            html.contains(&format!("title=\"{full}\">{}…<", full.short())),
            "{html}"
        );
        assert!(
            html.contains("class=\"revoke\" type=\"button\" data-name=\"erin\""),
            "{html}"
        );
    }

    #[test]
    fn a_token_row_shows_id_name_and_expiry_and_never_a_secret() {
        let token = crate::trust::JoinToken::generate();
        let verifier = token.verifier();
        let verifier_hex = serde_json::to_string(&verifier).unwrap();
        let mut t = trust_view();
        t.tokens.push(TokenRecord {
            id: token.id().to_string(),
            name: "frank".into(),
            verifier,
            created_at_ms: 1,
            expires_at_ms: 1_700_000_000_000,
            replace: true,
            used: None,
        });
        let html = page(&[], &t, 1, 0).into_string();
        let whole = token.to_string();
        let secret = whole.split('.').nth(1).unwrap();
        assert!(
            html.contains(&format!("<code>{}</code>", token.id())),
            "{html}"
        );
        assert!(html.contains(">frank<") && html.contains("2023-11-14 22:13:20 UTC"));
        assert!(!html.contains(secret), "the secret is on the page");
        assert!(
            !html.contains(verifier_hex.trim_matches('"')),
            "the verifier is on the page"
        );
        let table = tokens_table(&t.tokens).into_string();
        assert!(
            !table.contains("secret") && !table.contains("verifier"),
            "{table}"
        );
    }

    #[test]
    fn hostile_names_are_escaped_everywhere() {
        let evil = "<img src=x onerror=alert(1)>";
        let mut t = trust_view();
        t.users.push(user(evil, UserState::Legacy, false));
        t.users.push(user(
            evil,
            UserState::Revoked {
                at_ms: 1,
                reason: "</td><script>x</script>".into(),
            },
            false,
        ));
        t.audit.push(AuditEntry {
            seq: 1,
            at_ms: 1,
            kind: "join\"><b>".into(),
            name: evil.into(),
            source: "<i>".into(),
            detail: "<script>".into(),
        });
        let html = page(&[], &t, 1, 0).into_string();
        assert!(
            !html.contains("<img src=x") && !html.contains("<script>x"),
            "{html}"
        );
        assert!(
            !html.contains("<i>") && !html.contains("join\"><b>"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
    }

    #[test]
    fn the_audit_log_shows_the_newest_fifty() {
        let mut t = trust_view();
        t.audit = (0..60u64)
            .rev()
            .map(|seq| AuditEntry {
                seq,
                at_ms: seq,
                kind: "token".into(),
                name: format!("user{seq}"),
                source: "cli".into(),
                detail: "d".into(),
            })
            .collect();
        let html = audit_panel(&t).into_string();
        assert!(
            html.contains(">user59<") && html.contains(">user10<"),
            "{html}"
        );
        assert!(!html.contains(">user9<"), "{html}");
    }
}

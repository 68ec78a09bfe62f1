//! The chat page, as pure maud functions of their data: no I/O, no actors.
//!
//! The page is a shell with the contact list rendered here; `assets/chat.js` loads the
//! selected conversation, keeps it live over `/api/v1/events`, and re-renders contacts with the
//! same markup. maud escapes every value, so a message or name containing `<script>` is text.
//! fixes original: styles and script are served by the binary (no CDN): the page works offline.

use maud::{html, Markup, PreEscaped};

use super::contacts::{AiNames, Contact, ContactList};
use super::store::StoredMessage;
use crate::layout::layout;
use crate::wire::data_plane::PeerKind;

/// A fixed, inline picture for the empty conversation (no emoji font needed).
const CHAT_ICON: &str = r##"<svg width="56" height="56" viewBox="0 0 24 24" fill="none" stroke="#2f6fed" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true"><path d="M21 12a8 8 0 0 1-11.6 7.1L4 20.5l1.4-4.6A8 8 0 1 1 21 12z" fill="#e8effe"/><path d="M8.5 10.5h7M8.5 13.5h4.5"/></svg>"##;

/// The line under a contact's name: the last message, else what it is.
/// `m` as the page shows it: an AI model's reply (not an error report) with its Markdown
/// rendered, anything else as it is.
pub fn shown(mut m: StoredMessage, ai: &AiNames) -> StoredMessage {
    // Not one that came unsigned (through an original proxy): its sender's name proves nothing.
    if !m.outgoing && !m.error && !m.unauthenticated && ai.contains(m.from.as_str()) {
        m.html = Some(super::markdown::render(&m.text));
    }
    m
}

pub fn contact_subtitle(c: &Contact) -> String {
    if let Some(t) = c.last_text.as_deref().filter(|t| !t.is_empty()) {
        return t.to_string();
    }
    match (c.kind, c.online, c.reachable) {
        (_, _, false) => "not reachable now".into(),
        (PeerKind::Ai, _, _) => "AI model".into(),
        (PeerKind::Person, Some(true), _) => "online".into(),
        (PeerKind::Person, Some(false), _) => "offline".into(),
        (PeerKind::Person, None, _) => "person".into(),
    }
}

/// What the page is rendered from.
pub struct PageData<'a> {
    pub name: &'a str,
    pub display_name: &'a str,
    pub auto_reply: bool,
    pub contacts: &'a ContactList,
}

/// The first letter of a name, for its avatar.
fn initial(name: &str) -> String {
    name.chars()
        .next()
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_default()
}

/// An avatar colour for a name (a class `hue-0`..`hue-5`); chat.js picks the same one.
pub fn hue(name: &str) -> String {
    let sum: u32 = crate::wire::PeerName::from(name)
        .key()
        .bytes()
        .map(u32::from)
        .sum();
    format!("hue-{}", sum % 6)
}

/// One contact button; `chat.js` builds the same markup when it refreshes the list.
pub fn contact(c: &Contact) -> Markup {
    let kind = match c.kind {
        PeerKind::Person => "person",
        PeerKind::Ai => "ai",
    };
    let (presence, presence_label) = match c.online {
        Some(true) => ("online", "online"),
        Some(false) => ("offline", "offline"),
        None => ("unknown", ""),
    };
    html! {
        button.contact.unreachable[!c.reachable] type="button" data-peer=(c.name) data-display=(c.display) data-kind=(kind)
            data-last=(c.last_text.as_deref().unwrap_or("")) data-reachable=(c.reachable)
            title={ (c.name) @if kind == "ai" { " (AI)" } @if !presence_label.is_empty() { " · " (presence_label) } } {
            span.avatar.(kind).(hue(&c.name)) { (initial(&c.name)) }
            span.who {
                span.name { (c.display) @if c.kind == PeerKind::Ai { span.tag { "AI" } } }
                span.preview { (contact_subtitle(c)) }
            }
            span.presence.(presence) aria-label=(presence_label) {}
        }
    }
}

/// The contact list: people first, then AI models.
pub fn contact_list(list: &ContactList) -> Markup {
    let people: Vec<&Contact> = list
        .contacts
        .iter()
        .filter(|c| c.kind == PeerKind::Person)
        .collect();
    let ais: Vec<&Contact> = list
        .contacts
        .iter()
        .filter(|c| c.kind == PeerKind::Ai)
        .collect();
    html! {
        @if let Some(e) = &list.error {
            p.contacts-error { "Could not reach your proxy: " (e) }
        }
        h2.group { "People" }
        div.group-list data-group="person" {
            @for c in &people { (contact(c)) }
            @if people.is_empty() { p.none { "No one yet" } }
        }
        h2.group { "AI models" }
        div.group-list data-group="ai" {
            @for c in &ais { (contact(c)) }
            @if ais.is_empty() { p.none { "None configured" } }
        }
    }
}

/// `GET /`: the chat page.
pub fn chat_page(d: &PageData) -> Markup {
    layout(
        &format!("{} · overlay chat", d.display_name),
        "/assets/chat.css",
        html! {
            body.chat data-me=(d.name) data-display=(d.display_name) {
                div.app #app {
                    aside.sidebar #sidebar {
                        header.me {
                            span.avatar.self { (initial(d.display_name)) }
                            div.who {
                                span.name { (d.display_name) }
                                span.sub {
                                    span.live-dot #live title="live updates" {}
                                    span #live-label { "connecting…" }
                                    @if d.auto_reply { span.badge title="Auto-reply is on for this user" { "auto-reply" } }
                                }
                            }
                        }
                        form.side-search method="get" action="/search" role="search" {
                            input type="search" name="q" placeholder="Search messages"
                                aria-label="Search every conversation" maxlength="200";
                        }
                        nav.contacts #contacts aria-label="Contacts" { (contact_list(d.contacts)) }
                        footer.sidebar-foot {
                            button.ghost #notify type="button" hidden
                                title="Show a desktop notification for a message that arrives while this page is in the background" {
                                "Turn on notifications"
                            }
                            button.ghost.danger #clear-all type="button" { "Clear all chats" }
                        }
                    }
                    div.scrim #scrim {}
                    main.conversation #conversation {
                        header.conv-head {
                            button.icon #toggle-contacts type="button" aria-label="Show contacts" { "☰" }
                            span.avatar #conv-avatar hidden {}
                            div.conv-title {
                                span.name #conv-name { "Pick someone to chat with" }
                                span.sub #conv-sub {}
                            }
                            span.exports #exports hidden {
                                a.ghost #export-md download title="This conversation as Markdown" { "Export .md" }
                                a.ghost #export-json download title="This conversation as JSON" { "Export .json" }
                            }
                            button.ghost.danger #clear-chat type="button" hidden { "Clear chat" }
                        }
                        section.messages #messages aria-live="polite" {
                            div.empty #empty {
                                p.big { (PreEscaped(CHAT_ICON)) }
                                p { "Choose a person or an AI model on the left to start." }
                            }
                        }
                        button.new-below #new-below type="button" hidden { "New messages ↓" }
                        div.reply-tools #reply-tools hidden {
                            button.ghost #stop-reply type="button" hidden
                                title="Stop the reply being written (what arrived is kept)" {
                                "■ Stop"
                            }
                            button.ghost #regenerate type="button" hidden
                                title="Ask for another answer to your last message" {
                                "↻ Regenerate"
                            }
                        }
                        p.send-error #send-error role="alert" hidden {}
                        form.composer #composer autocomplete="off" {
                            textarea #input rows="1" placeholder="Type a message" disabled
                                aria-label="Message" {}
                            button.send #send type="submit" disabled aria-label="Send" { "Send" }
                        }
                        p.hint { "Enter sends · Shift+Enter adds a line" }
                    }
                }
                script src="/assets/chat.js" {}
            }
        },
    )
}

/// What the page of search results shows.
pub struct SearchData<'a> {
    pub display_name: &'a str,
    /// The words searched for; None before a search.
    pub query: Option<&'a str>,
    /// The messages found, newest first; or why the search could not be made.
    pub found: Result<&'a [StoredMessage], &'a str>,
}

/// `text` around the first place `query` is in it (any case): before, the words, after.
fn excerpt<'t>(text: &'t str, query: &str) -> (String, &'t str, String) {
    const AROUND: usize = 60;
    let lower = text.to_lowercase();
    // Lower-casing may change lengths: past that, the excerpt starts at the beginning.
    let at = (lower.len() == text.len())
        .then(|| lower.find(&query.to_lowercase()))
        .flatten()
        .filter(|&i| text.is_char_boundary(i) && text.is_char_boundary(i + query.len()));
    let Some(at) = at else {
        let head: String = text.chars().take(AROUND * 2).collect();
        let more = if head.len() < text.len() { "…" } else { "" };
        return (String::new(), "", format!("{head}{more}"));
    };
    let before = &text[..at];
    let words = &text[at..at + query.len()];
    let after = &text[at + query.len()..];
    let skipped = before.chars().count().saturating_sub(AROUND);
    let before: String = before.chars().skip(skipped).collect();
    let after_cut: String = after.chars().take(AROUND).collect();
    (
        format!("{}{before}", if skipped > 0 { "…" } else { "" }),
        words,
        format!(
            "{after_cut}{}",
            if after_cut.len() < after.len() {
                "…"
            } else {
                ""
            }
        ),
    )
}

/// `GET /search`: a search box, and the messages found, each opening its conversation there.
pub fn search_page(d: &SearchData) -> Markup {
    let title = match d.query {
        Some(q) => format!("“{q}” · search · {}", d.display_name),
        None => format!("Search · {}", d.display_name),
    };
    layout(
        &title,
        "/assets/chat.css",
        html! {
            body.search-page {
                main.search {
                    header.search-head {
                        a.back href="/" { "← Back to the chat" }
                        form.search-form method="get" action="/search" role="search" {
                            input #search-q type="search" name="q" value=(d.query.unwrap_or(""))
                                placeholder="Search every conversation" aria-label="Search every conversation"
                                maxlength="200" autofocus;
                            button.send type="submit" { "Search" }
                        }
                    }
                    @match (d.query, d.found) {
                        (_, Err(why)) => p.search-error role="alert" { (why) },
                        (None, Ok(_)) => p.search-note { "Finds messages in every conversation whose text contains what you type (any case)." },
                        (Some(q), Ok([])) => p.search-note { "No message contains “" (q) "”." },
                        (Some(q), Ok(found)) => {
                            p.search-note {
                                (found.len()) @if found.len() == 1 { " message contains “" } @else { " messages contain “" }
                                (q) "”, newest first."
                            }
                            ol.results {
                                @for m in found {
                                    @let (before, words, after) = excerpt(&m.text, q);
                                    @let with = super::contacts::display_of(&m.peer);
                                    li {
                                        a.result href=(format!("/#{}?at={}", m.peer, m.seq)) data-seq=(m.seq) {
                                            span.result-head {
                                                span.result-who {
                                                    @if m.outgoing { "You to " (with) } @else { (with) }
                                                }
                                                time.result-time datetime=(crate::wire::rfc3339_ms(m.sent_at_ms)) {
                                                    (crate::wire::rfc3339_ms(m.sent_at_ms).get(..16).unwrap_or("").replace('T', " ")) " UTC"
                                                }
                                            }
                                            span.result-text { (before) mark { (words) } (after) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A conversation as Markdown, oldest first: a heading per message (who, when, what became of
/// ours), and its text quoted line by line (an AI reply's Markdown stays Markdown within the
/// quote; no message can open a heading of its own).
pub fn conversation_markdown(
    me: &str,
    with: &str,
    messages: &[StoredMessage],
    exported_ms: u64,
) -> String {
    let mut out = format!(
        "# Conversation between {me} and {with}\n\nExported {} from {me}'s overlay chat; {} \
         message{}, oldest first, times in UTC.\n",
        crate::wire::rfc3339_ms(exported_ms),
        messages.len(),
        if messages.len() == 1 { "" } else { "s" }
    );
    for m in messages {
        let when = crate::wire::rfc3339_ms(m.sent_at_ms);
        let when = when.get(..19).unwrap_or(&when).replace('T', " ");
        let mut notes = Vec::new();
        if m.auto_reply {
            notes.push("auto-reply".to_string());
        }
        if m.error {
            notes.push("could not answer".to_string());
        }
        match &m.state {
            super::store::MessageState::Failed { reason } => {
                notes.push(format!("not delivered: {reason}"))
            }
            super::store::MessageState::Pending if m.outgoing => {
                notes.push("not delivered yet".to_string())
            }
            _ => {}
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        out.push_str(&format!("\n## {} · {when}{notes}\n\n", m.from));
        // Quoted, each line: a message cannot make a heading of its own and pass for another.
        for line in m.text.trim_end().lines() {
            out.push_str(if line.is_empty() { ">" } else { "> " });
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The page shown instead of the chat to a browser without the page's token (a peer listening
/// beyond this machine): where the token is, and a field to paste it into.
pub fn login_page(token_file: &str) -> Markup {
    layout(
        "overlay chat · sign in",
        "/assets/chat.css",
        html! {
            body.chat {
                main.login {
                    p.big { (PreEscaped(CHAT_ICON)) }
                    h1 { "This chat needs its token" }
                    p {
                        "Open the link this chat printed when it started, or paste the token "
                        "kept in " code { (token_file) } "."
                    }
                    form method="get" action="/" {
                        input type="password" name="token" autocomplete="current-password"
                            placeholder="page token" aria-label="page token" required;
                        button.primary type="submit" { "Open" }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_signed_ai_reply_is_rendered() {
        let ai = AiNames::default();
        ai.learn(&[crate::wire::data_plane::DirectoryEntry {
            name: "BOT".into(),
            kind: PeerKind::Ai,
            online: None,
        }]);
        let reply = StoredMessage::incoming(
            &crate::wire::data_plane::Envelope::text("BOT", "alice", "**hi**"),
            "alice",
        );
        assert_eq!(
            shown(reply.clone(), &ai).html.as_deref(),
            Some("<p><strong>hi</strong></p>")
        );
        let forged = StoredMessage {
            unauthenticated: true,
            ..reply.clone()
        };
        assert_eq!(shown(forged, &ai).html, None);
        let person = StoredMessage::incoming(
            &crate::wire::data_plane::Envelope::text("bob", "alice", "**hi**"),
            "alice",
        );
        assert_eq!(shown(person, &ai).html, None);
    }

    #[test]
    fn a_name_with_markup_is_shown_as_text() {
        let list = ContactList {
            contacts: vec![Contact {
                name: "x".into(),
                display: "X".into(),
                kind: PeerKind::Person,
                online: Some(true),
                reachable: true,
                last_text: Some("<script>alert(1)</script>".into()),
                last_at_ms: Some(1),
            }],
            error: None,
        };
        let html = contact_list(&list).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn people_and_ai_models_are_listed_apart() {
        let c = |name: &str, kind| Contact {
            name: name.into(),
            display: name.into(),
            kind,
            online: None,
            reachable: true,
            last_text: None,
            last_at_ms: None,
        };
        let list = ContactList {
            contacts: vec![c("BOT", PeerKind::Ai), c("bob", PeerKind::Person)],
            error: None,
        };
        let html = contact_list(&list).into_string();
        let people = html.find("data-group=\"person\"").unwrap();
        let ai = html.find("data-group=\"ai\"").unwrap();
        let bob = html.find("data-peer=\"bob\"").unwrap();
        let bot = html.find("data-peer=\"BOT\"").unwrap();
        assert!(people < bob && bob < ai && ai < bot, "{html}");
    }
}

//! The contact list as data: who the page lists (the proxy's directory, then anyone with a
//! conversation here who is not in it), and how a name is shown. Pure; the routes fetch, the
//! views render.

use serde::{Deserialize, Serialize};

use super::store::ConversationSummary;
use crate::wire::data_plane::PeerKind;
use crate::wire::PeerName;

/// The names of the AI models the proxy's directory lists, as last read (each time the contact
/// list is): their replies are shown rendered from Markdown ([`crate::peer::views::shown`]).
#[derive(Debug, Clone, Default)]
pub struct AiNames(std::sync::Arc<std::sync::RwLock<std::collections::HashSet<String>>>);

impl AiNames {
    pub fn learn(&self, directory: &[crate::wire::data_plane::DirectoryEntry]) {
        let names = directory
            .iter()
            .filter(|e| e.kind == PeerKind::Ai)
            .map(|e| e.name.to_lowercase())
            .collect();
        if let Ok(mut known) = self.0.write() {
            *known = names;
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0
            .read()
            .map(|known| known.contains(&name.to_lowercase()))
            .unwrap_or(false)
    }
}

/// compat: the original shows a name with its first letter in capitals.
pub fn display_of(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Someone in the contact list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    /// The name shown: a person's with its first letter in capitals (as `/peers` shows it),
    /// an AI endpoint's as written.
    pub display: String,
    pub kind: PeerKind,
    /// None when unknown.
    pub online: Option<bool>,
    /// In the proxy's directory (reachable); false for an old conversation only.
    pub reachable: bool,
    /// The last message of the conversation, if any.
    pub last_text: Option<String>,
    pub last_at_ms: Option<u64>,
}

/// `GET /api/v1/contacts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactList {
    pub contacts: Vec<Contact>,
    /// Why the directory could not be read, if it could not.
    pub error: Option<String>,
}

/// Everyone the proxy's directory lists (not ourselves), then anyone we have a conversation
/// with who is not listed.
pub fn merge_contacts(
    me: &str,
    directory: &[crate::wire::data_plane::DirectoryEntry],
    conversations: &[ConversationSummary],
) -> Vec<Contact> {
    let summary_of = |name: &str| {
        let name = PeerName::from(name);
        conversations.iter().find(|c| name == c.peer.as_str())
    };
    let me = PeerName::from(me);
    let mut out: Vec<Contact> = directory
        .iter()
        .filter(|e| me != e.name.as_str())
        .map(|e| {
            let s = summary_of(&e.name);
            Contact {
                name: e.name.clone(),
                display: match e.kind {
                    PeerKind::Person => display_of(&e.name),
                    PeerKind::Ai => e.name.clone(),
                },
                kind: e.kind,
                online: e.online,
                reachable: true,
                last_text: s.map(|s| s.last_text.clone()),
                last_at_ms: s.map(|s| s.last_at_ms),
            }
        })
        .collect();
    for c in conversations {
        let peer = PeerName::from(c.peer.as_str());
        if !out.iter().any(|o| peer == o.name.as_str()) {
            out.push(Contact {
                name: c.peer.clone(),
                display: display_of(&c.peer),
                kind: PeerKind::Person,
                online: None,
                reachable: false,
                last_text: Some(c.last_text.clone()),
                last_at_ms: Some(c.last_at_ms),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data_plane::DirectoryEntry;

    #[test]
    fn names_are_shown_with_a_capital() {
        assert_eq!(display_of("alice"), "Alice");
        assert_eq!(display_of("BOT"), "BOT");
    }

    #[test]
    fn contacts_list_the_directory_then_old_conversations_without_ourselves() {
        let dir = vec![
            DirectoryEntry {
                name: "alice".into(),
                kind: PeerKind::Person,
                online: Some(true),
            },
            DirectoryEntry {
                name: "bob".into(),
                kind: PeerKind::Person,
                online: Some(false),
            },
            DirectoryEntry {
                name: "BOT".into(),
                kind: PeerKind::Ai,
                online: None,
            },
        ];
        let convs = vec![
            ConversationSummary {
                peer: "Bob".into(),
                count: 1,
                last_seq: 1,
                last_at_ms: 5,
                last_text: "yo".into(),
            },
            ConversationSummary {
                peer: "zed".into(),
                count: 1,
                last_seq: 2,
                last_at_ms: 6,
                last_text: "old".into(),
            },
        ];
        let c = merge_contacts("alice", &dir, &convs);
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["bob", "BOT", "zed"]);
        assert_eq!(c[0].last_text.as_deref(), Some("yo"));
        assert!(!c[2].reachable);
    }
}

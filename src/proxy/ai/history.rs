//! A conversation, as overlay stores it (many speakers), mapped to the two roles providers know.
//!
//! Owns the pure rules: the endpoint's own past turns become the assistant (model); every other
//! speaker, person or AI, becomes the user with the speaker's name in the text (`[alice]: …`,
//! since only OpenAI has a `name` field and Mistral rejects it); empty texts are dropped;
//! consecutive same-role turns are merged with a blank line; the list starts and ends with the
//! user; only the newest turns within `history.max_turns` and `history.max_chars` are kept.
//! No I/O, no provider JSON: each provider module turns [`RoleMsg`]s into its own shape.

use crate::config::HistoryConfig;
use crate::wire::PeerName;

use super::Turn;

/// The two roles every provider has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    /// The endpoint itself (`assistant`; Gemini: `model`).
    Assistant,
}

/// One provider-side message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMsg {
    pub role: Role,
    pub text: String,
}

/// Maps `history` (oldest first) to provider roles for the endpoint named `me`.
///
/// The result is empty when no person said anything that can be answered.
pub fn to_roles(history: &[Turn], me: &str, limits: &HistoryConfig) -> Vec<RoleMsg> {
    let me = PeerName::from(me.trim());
    let mine = |t: &Turn| me == t.speaker.trim();
    // Keep the newest turns within both bounds; the newest turn always stays.
    let usable: Vec<&Turn> = history
        .iter()
        .filter(|t| !t.text.trim().is_empty())
        .collect();
    let mut kept: Vec<&Turn> = Vec::new();
    let mut chars = 0usize;
    for t in usable.iter().rev() {
        let len = t.text.chars().count();
        if !kept.is_empty() && (kept.len() >= limits.max_turns || chars + len > limits.max_chars) {
            break;
        }
        chars += len;
        kept.push(t);
    }
    kept.reverse();

    let mut out: Vec<RoleMsg> = Vec::new();
    for t in kept {
        let (role, text) = if mine(t) {
            (Role::Assistant, t.text.trim().to_string())
        } else {
            (
                Role::User,
                format!("[{}]: {}", t.speaker.trim(), t.text.trim()),
            )
        };
        match out.last_mut() {
            Some(last) if last.role == role => {
                last.text.push_str("\n\n");
                last.text.push_str(&text);
            }
            _ => out.push(RoleMsg { role, text }),
        }
    }
    // Start and end with the user: a leading reply has no question, a trailing one is ours.
    while out.first().is_some_and(|m| m.role == Role::Assistant) {
        out.remove(0);
    }
    while out.last().is_some_and(|m| m.role == Role::Assistant) {
        out.pop();
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// alice asks, the endpoint answers, alice asks again (shared by the providers' tests).
    pub(crate) fn three_turns() -> Vec<RoleMsg> {
        vec![
            RoleMsg {
                role: Role::User,
                text: "[alice]: hi".into(),
            },
            RoleMsg {
                role: Role::Assistant,
                text: "hello".into(),
            },
            RoleMsg {
                role: Role::User,
                text: "[alice]: 2+2?".into(),
            },
        ]
    }

    fn t(speaker: &str, text: &str) -> Turn {
        Turn {
            speaker: speaker.into(),
            text: text.into(),
        }
    }

    fn roles(msgs: &[RoleMsg]) -> Vec<(Role, &str)> {
        msgs.iter().map(|m| (m.role, m.text.as_str())).collect()
    }

    const WIDE: HistoryConfig = HistoryConfig {
        max_turns: 100,
        max_chars: 100_000,
    };

    #[test]
    fn own_turns_become_the_assistant_and_others_the_user_with_their_name() {
        let h = [
            t("alice", "hi"),
            t("BOT", "hello alice"),
            t("alice", "2+2?"),
        ];
        assert_eq!(
            roles(&to_roles(&h, "bot", &WIDE)),
            [
                (Role::User, "[alice]: hi"),
                (Role::Assistant, "hello alice"),
                (Role::User, "[alice]: 2+2?")
            ]
        );
    }

    #[test]
    fn other_ais_are_users_too() {
        let h = [t("GEMINI", "I think 5"), t("alice", "BOT, you?")];
        assert_eq!(
            roles(&to_roles(&h, "BOT", &WIDE)),
            [(Role::User, "[GEMINI]: I think 5\n\n[alice]: BOT, you?")]
        );
    }

    #[test]
    fn consecutive_same_role_turns_merge_and_empty_texts_are_dropped() {
        let h = [
            t("alice", "one"),
            t("BOT", "  "),
            t("alice", "two"),
            t("BOT", "a"),
            t("BOT", "b"),
            t("alice", "three"),
        ];
        assert_eq!(
            roles(&to_roles(&h, "BOT", &WIDE)),
            [
                (Role::User, "[alice]: one\n\n[alice]: two"),
                (Role::Assistant, "a\n\nb"),
                (Role::User, "[alice]: three")
            ]
        );
    }

    #[test]
    fn the_list_starts_and_ends_with_the_user() {
        let h = [t("BOT", "welcome"), t("alice", "hi"), t("BOT", "stale")];
        assert_eq!(
            roles(&to_roles(&h, "BOT", &WIDE)),
            [(Role::User, "[alice]: hi")]
        );
    }

    #[test]
    fn only_the_newest_turns_within_max_turns_are_kept() {
        let h = [
            t("alice", "1"),
            t("BOT", "2"),
            t("alice", "3"),
            t("BOT", "4"),
            t("alice", "5"),
        ];
        let limits = HistoryConfig {
            max_turns: 3,
            max_chars: 1000,
        };
        assert_eq!(
            roles(&to_roles(&h, "BOT", &limits)),
            [
                (Role::User, "[alice]: 3"),
                (Role::Assistant, "4"),
                (Role::User, "[alice]: 5")
            ]
        );
    }

    #[test]
    fn only_the_newest_turns_within_max_chars_are_kept() {
        let h = [
            t("alice", "aaaaaaaaaa"),
            t("BOT", "bbbbb"),
            t("alice", "ccccc"),
        ];
        let limits = HistoryConfig {
            max_turns: 10,
            max_chars: 12,
        };
        assert_eq!(
            roles(&to_roles(&h, "BOT", &limits)),
            [(Role::User, "[alice]: ccccc")]
        );
    }

    #[test]
    fn the_newest_turn_stays_even_when_it_alone_is_over_the_limit() {
        let h = [t("alice", "old"), t("alice", "a very long message")];
        let limits = HistoryConfig {
            max_turns: 10,
            max_chars: 5,
        };
        assert_eq!(
            roles(&to_roles(&h, "BOT", &limits)),
            [(Role::User, "[alice]: a very long message")]
        );
    }

    #[test]
    fn a_conversation_without_a_person_maps_to_nothing() {
        assert!(to_roles(&[t("BOT", "hi")], "BOT", &WIDE).is_empty());
        assert!(to_roles(&[], "BOT", &WIDE).is_empty());
    }
}

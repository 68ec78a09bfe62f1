//! The chaos suite's checker: pure functions from the two histories (what the clients sent and
//! were told, what the receivers stored) to a [`Verdict`]: lost, duplicated, reordered and
//! phantom messages. No I/O here, so every rule is unit-tested on hand-made histories.
//!
//! The rules, from what a user is promised:
//! - a send answered 200, or 502 "kept; will be sent when your proxy is back", is *promised*;
//! - every promised message is stored exactly once at its receiver (else *lost*);
//! - no message (promised or not) is stored twice (else *duplicated*);
//! - a client's promised messages are stored in the order it sent them (a message stored after
//!   a later one of the same client is *reordered*, "overtaken"), "kept" ones included;
//! - nothing is stored that no client tried to send, or at another receiver or from another
//!   sender than the one it was sent to/from (else *phantom*);
//! - a user's auto-replies to one person are stored in the order they were written (their
//!   `sent_at_ms`; an auto-reply stored after a later-written one is *auto-reply reordered*).
//!   Auto-replies are nobody's promise, so they are not counted lost.

use std::collections::{BTreeMap, HashMap};

/// What the answer to `/send_message` told the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200: the proxy holds it.
    Sent,
    /// 502 "kept; will be sent when your proxy is back": the peer holds it and will hand it over.
    Kept,
    /// Anything else (refused, timeout, connection broken): not promised, may or may not arrive.
    Failed(String),
}

impl Outcome {
    /// Whether the user was told the message would be sent.
    pub fn promised(&self) -> bool {
        matches!(self, Outcome::Sent | Outcome::Kept)
    }
}

/// One send of the history: client `client`'s `seq`-th message, from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub client: u32,
    pub seq: u32,
    pub from: String,
    pub to: String,
    pub outcome: Outcome,
}

/// One message as the receiver stored it, with its position in the receiver's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub receiver: String,
    pub from: String,
    pub text: String,
    pub position: u64,
    /// Marked as an auto-reply by its sender.
    pub auto_reply: bool,
    /// When its sender wrote it, Unix ms.
    pub sent_at_ms: u64,
}

/// The text client `client` sends as its `seq`-th message.
pub fn text_of(client: u32, seq: u32) -> String {
    format!("chaos c{client} s{seq}")
}

/// (client, seq) of a text written by [`text_of`]; None for any other text.
pub fn parse_text(text: &str) -> Option<(u32, u32)> {
    let rest = text.strip_prefix("chaos c")?;
    let (client, seq) = rest.split_once(" s")?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(client) || !all_digits(seq) {
        return None;
    }
    Some((client.parse().ok()?, seq.parse().ok()?))
}

/// A message of the history: (client, seq).
pub type MsgRef = (u32, u32);

/// What the histories prove.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Sends attempted.
    pub sends: usize,
    /// Sends answered 200 or 502 "kept".
    pub promised: usize,
    /// Of those, answered 502 "kept".
    pub kept: usize,
    /// Messages of ours stored at the receivers (each copy counted).
    pub stored: usize,
    /// Promised, never stored.
    pub lost: Vec<MsgRef>,
    /// Stored more than once, with the number of copies.
    pub duplicated: Vec<(MsgRef, usize)>,
    /// Promised and stored after a later promised message of the same client.
    pub reordered: Vec<MsgRef>,
    /// For each of `reordered`: its position, and the earliest-stored later message of the
    /// same client that overtook it, with its position.
    pub overtaken_by: Vec<(u64, MsgRef, u64)>,
    /// Of `reordered`, those answered "kept".
    pub reordered_kept: usize,
    /// Stored, but never sent, or at the wrong receiver, or from the wrong sender (the texts).
    pub phantom: Vec<String>,
    /// Auto-replies stored.
    pub auto_replies: usize,
    /// Auto-replies stored after one their sender wrote later to the same person (overtaken):
    /// (sender, receiver, position, written at ms).
    pub auto_reordered: Vec<(String, String, u64, u64)>,
}

impl Verdict {
    /// Lost = duplicated = reordered = phantom = ∅.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.phantom.is_empty()
            && self.auto_reordered.is_empty()
    }

    /// One line of figures.
    pub fn figures(&self) -> String {
        format!(
            "sends {}, promised {} (kept {}), stored {}, lost {}, duplicated {}, reordered {} (of them kept {}), phantom {}; auto-replies {}, of them reordered {}",
            self.sends,
            self.promised,
            self.kept,
            self.stored,
            self.lost.len(),
            self.duplicated.len(),
            self.reordered.len(),
            self.reordered_kept,
            self.phantom.len(),
            self.auto_replies,
            self.auto_reordered.len()
        )
    }

    /// The figures and the first few of each kind of fault, for a failure message.
    pub fn explain(&self) -> String {
        let first = |v: &[MsgRef]| -> Vec<String> {
            v.iter().take(10).map(|(c, s)| text_of(*c, *s)).collect()
        };
        format!(
            "{}\n  lost (first 10): {:?}\n  duplicated (first 10): {:?}\n  reordered (first 10): {:?}\n  phantom (first 10): {:?}\n  auto-replies reordered (first 10: from, to, position, written at): {:?}",
            self.figures(),
            first(&self.lost),
            self.duplicated.iter().take(10).collect::<Vec<_>>(),
            self.reordered
                .iter()
                .zip(&self.overtaken_by)
                .take(10)
                .map(|((c, s), (at, (bc, bs), by_at))| format!(
                    "{} stored at {at}, after {} at {by_at}",
                    text_of(*c, *s),
                    text_of(*bc, *bs)
                ))
                .collect::<Vec<_>>(),
            self.phantom.iter().take(10).collect::<Vec<_>>(),
            self.auto_reordered.iter().take(10).collect::<Vec<_>>()
        )
    }
}

/// Checks the receivers' stores against what the clients sent and were told.
pub fn check(sends: &[Sent], stored: &[Stored]) -> Verdict {
    let by_ref: HashMap<MsgRef, &Sent> = sends.iter().map(|s| ((s.client, s.seq), s)).collect();
    let mut v = Verdict {
        sends: sends.len(),
        promised: sends.iter().filter(|s| s.outcome.promised()).count(),
        kept: sends.iter().filter(|s| s.outcome == Outcome::Kept).count(),
        ..Verdict::default()
    };

    // Where each message of ours was stored (positions), phantoms aside.
    let mut copies: BTreeMap<MsgRef, Vec<u64>> = BTreeMap::new();
    // Auto-replies per (sender, receiver): (position, written at).
    let mut autos: BTreeMap<(&str, &str), Vec<(u64, u64)>> = BTreeMap::new();
    for m in stored {
        if m.auto_reply && parse_text(&m.text).is_none() {
            v.auto_replies += 1;
            autos
                .entry((&m.from, &m.receiver))
                .or_default()
                .push((m.position, m.sent_at_ms));
            continue;
        }
        let sent = parse_text(&m.text).and_then(|r| by_ref.get(&r).map(|s| (r, *s)));
        match sent {
            Some((r, s)) if s.from == m.from && s.to == m.receiver => {
                v.stored += 1;
                copies.entry(r).or_default().push(m.position);
            }
            _ => v.phantom.push(m.text.clone()),
        }
    }
    for (r, positions) in &copies {
        if positions.len() > 1 {
            v.duplicated.push((*r, positions.len()));
        }
    }

    // Per client, its promised messages in the order sent, with where each was stored.
    let mut per_client: BTreeMap<u32, Vec<&Sent>> = BTreeMap::new();
    for s in sends.iter().filter(|s| s.outcome.promised()) {
        per_client.entry(s.client).or_default().push(s);
    }
    for list in per_client.values_mut() {
        list.sort_by_key(|s| s.seq);
        let mut arrived: Vec<(&Sent, u64)> = Vec::new();
        for s in list.iter() {
            match copies.get(&(s.client, s.seq)) {
                None => v.lost.push((s.client, s.seq)),
                // The first copy is the one the user sees in place.
                Some(p) => arrived.push((s, p.iter().copied().min().unwrap_or(0))),
            }
        }
        // Overtaken: some later message of the client was stored before it.
        let mut earliest_later: Option<(&Sent, u64)> = None;
        let mut overtaken = Vec::new();
        for (s, position) in arrived.iter().rev() {
            match earliest_later {
                Some((later, at)) if *position > at => {
                    overtaken.push((*s, *position, (later.client, later.seq), at));
                }
                _ => earliest_later = Some((s, *position)),
            }
        }
        overtaken.reverse();
        for (s, position, by, at) in overtaken {
            v.reordered.push((s.client, s.seq));
            v.overtaken_by.push((position, by, at));
            if s.outcome == Outcome::Kept {
                v.reordered_kept += 1;
            }
        }
    }
    for ((from, to), mut list) in autos {
        // In the order written, newest first; overtaken: one written strictly later (equal
        // times are no order) was stored before it.
        list.sort_unstable_by_key(|(position, written)| (std::cmp::Reverse(*written), *position));
        let mut earliest_stored_later_written = u64::MAX;
        let mut overtaken = Vec::new();
        for group in list.chunk_by(|a, b| a.1 == b.1) {
            for (position, written) in group {
                if *position > earliest_stored_later_written {
                    overtaken.push((from.to_string(), to.to_string(), *position, *written));
                }
            }
            for (position, _) in group {
                earliest_stored_later_written = earliest_stored_later_written.min(*position);
            }
        }
        overtaken.sort_by_key(|o| o.2);
        v.auto_reordered.extend(overtaken);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(client: u32, seq: u32, outcome: Outcome) -> Sent {
        Sent {
            client,
            seq,
            from: format!("u{client}"),
            to: "rx".into(),
            outcome,
        }
    }

    fn stored(client: u32, seq: u32, position: u64) -> Stored {
        Stored {
            receiver: "rx".into(),
            from: format!("u{client}"),
            text: text_of(client, seq),
            position,
            auto_reply: false,
            sent_at_ms: 1_000 + u64::from(seq),
        }
    }

    fn auto(from: &str, position: u64, written: u64) -> Stored {
        Stored {
            receiver: "rx".into(),
            from: from.into(),
            text: "Hi! This is an automated response.".into(),
            position,
            auto_reply: true,
            sent_at_ms: written,
        }
    }

    #[test]
    fn a_text_round_trips_and_other_texts_are_not_ours() {
        assert_eq!(parse_text(&text_of(3, 1207)), Some((3, 1207)));
        assert_eq!(parse_text("chaos c3 s"), None);
        assert_eq!(parse_text("chaos c3 s12x"), None);
        assert_eq!(parse_text("Hi! This is Alice's automated response."), None);
    }

    #[test]
    fn a_clean_history_is_clean() {
        let sends = vec![
            sent(1, 1, Outcome::Sent),
            sent(1, 2, Outcome::Kept),
            sent(1, 3, Outcome::Sent),
            sent(2, 1, Outcome::Sent),
        ];
        let at_rx = vec![
            stored(2, 1, 1),
            stored(1, 1, 2),
            stored(1, 2, 5),
            stored(1, 3, 9),
        ];
        let v = check(&sends, &at_rx);
        assert!(v.is_clean(), "{}", v.explain());
        assert_eq!((v.sends, v.promised, v.kept, v.stored), (4, 4, 1, 4));
    }

    #[test]
    fn a_promised_message_never_stored_is_lost_and_an_unpromised_one_is_not() {
        let sends = vec![
            sent(1, 1, Outcome::Sent),
            sent(1, 2, Outcome::Kept),
            sent(1, 3, Outcome::Failed("connection refused".into())),
        ];
        let v = check(&sends, &[stored(1, 1, 1)]);
        assert_eq!(v.lost, vec![(1, 2)]);
        assert!(v.duplicated.is_empty() && v.reordered.is_empty() && v.phantom.is_empty());
        assert!(!v.is_clean());
    }

    #[test]
    fn a_message_stored_twice_is_duplicated_even_when_it_was_not_promised() {
        let sends = vec![
            sent(1, 1, Outcome::Sent),
            sent(1, 2, Outcome::Failed("timeout".into())),
        ];
        let v = check(&sends, &[stored(1, 1, 1), stored(1, 2, 2), stored(1, 2, 3)]);
        assert_eq!(v.duplicated, vec![((1, 2), 2)]);
        assert!(v.lost.is_empty() && v.reordered.is_empty() && v.phantom.is_empty());
    }

    #[test]
    fn a_kept_message_overtaken_by_a_later_one_is_reordered() {
        let sends = vec![
            sent(1, 1, Outcome::Sent),
            sent(1, 2, Outcome::Kept),
            sent(1, 3, Outcome::Kept),
            sent(1, 4, Outcome::Sent),
        ];
        // s2 and s3 arrive after s4.
        let at_rx = vec![
            stored(1, 1, 1),
            stored(1, 4, 2),
            stored(1, 2, 3),
            stored(1, 3, 4),
        ];
        let v = check(&sends, &at_rx);
        assert_eq!(v.reordered, vec![(1, 2), (1, 3)]);
        assert_eq!(v.overtaken_by, vec![(3, (1, 4), 2), (4, (1, 4), 2)]);
        assert_eq!(v.reordered_kept, 2);
        assert!(v.lost.is_empty() && v.duplicated.is_empty());
    }

    #[test]
    fn order_is_per_client_and_unpromised_messages_may_arrive_late() {
        let sends = vec![
            sent(1, 1, Outcome::Sent),
            sent(2, 1, Outcome::Sent),
            sent(1, 2, Outcome::Failed("connection reset".into())),
            sent(1, 3, Outcome::Sent),
            sent(2, 2, Outcome::Sent),
        ];
        // Client 2 interleaves freely with client 1; c1 s2 (not promised) comes last.
        let at_rx = vec![
            stored(2, 1, 1),
            stored(1, 1, 2),
            stored(2, 2, 3),
            stored(1, 3, 4),
            stored(1, 2, 5),
        ];
        let v = check(&sends, &at_rx);
        assert!(v.is_clean(), "{}", v.explain());
    }

    #[test]
    fn a_message_never_sent_or_stored_at_the_wrong_place_is_a_phantom() {
        let sends = vec![sent(1, 1, Outcome::Sent)];
        let mut wrong_receiver = stored(1, 1, 2);
        wrong_receiver.receiver = "elsewhere".into();
        let mut wrong_sender = stored(1, 1, 3);
        wrong_sender.from = "mallory".into();
        let never_sent = stored(1, 2, 4);
        let not_ours = Stored {
            text: "hello".into(),
            ..stored(1, 1, 5)
        };
        let v = check(
            &sends,
            &[
                stored(1, 1, 1),
                wrong_receiver,
                wrong_sender,
                never_sent,
                not_ours,
            ],
        );
        assert_eq!(v.phantom.len(), 4, "{}", v.explain());
        assert!(v.lost.is_empty() && v.duplicated.is_empty() && v.reordered.is_empty());
    }

    #[test]
    fn auto_replies_stored_in_the_order_written_are_clean_and_never_phantoms() {
        let sends = vec![sent(1, 1, Outcome::Sent)];
        // Equal times are no order; another sender's auto-replies interleave freely.
        let at_rx = vec![
            stored(1, 1, 1),
            auto("bob", 2, 500),
            auto("bob", 3, 500),
            auto("carol", 4, 100),
            auto("bob", 5, 501),
        ];
        let v = check(&sends, &at_rx);
        assert!(v.is_clean(), "{}", v.explain());
        assert_eq!(v.auto_replies, 4);
    }

    #[test]
    fn an_auto_reply_stored_after_a_later_written_one_is_reordered() {
        let at_rx = vec![
            auto("bob", 1, 500),
            auto("bob", 2, 700),
            auto("bob", 3, 600),
            auto("bob", 4, 800),
        ];
        let v = check(&[], &at_rx);
        // The one written at 600 is stored after the one written at 700.
        assert_eq!(
            v.auto_reordered,
            vec![("bob".to_string(), "rx".to_string(), 3, 600)]
        );
        assert!(!v.is_clean());
    }

    #[test]
    fn a_message_of_ours_marked_as_an_auto_reply_is_still_checked_as_ours() {
        let sends = vec![sent(1, 1, Outcome::Sent)];
        let mut marked = stored(1, 1, 1);
        marked.auto_reply = true;
        let v = check(&sends, &[marked]);
        assert!(v.is_clean(), "{}", v.explain());
        assert_eq!((v.stored, v.auto_replies), (1, 0));
    }
}

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;

use super::*;
use crate::peer::error::PeerError;
use crate::peer::updates::Updates;
use crate::storage::{SharedDb, Wal};
use crate::wire::data_plane::Receipt;

fn msg(id: &str, peer: &str, text: &str) -> StoredMessage {
    let mut e = Envelope::text(peer, "me", text);
    e.id = MessageId::parse(id).unwrap();
    StoredMessage::incoming(&e, "me")
}

fn open(dir: &Path) -> (Arc<SharedDb>, Wal) {
    crate::storage::open(
        &mut ChatSchema,
        &dir.join("t.redb"),
        &dir.join("t.wal"),
        "t",
    )
    .unwrap()
}

fn store() -> (tempfile::TempDir, ChatStore) {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = open(dir.path());
    (dir, ChatStore::new(db))
}

fn write(store: &ChatStore, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome, PeerError>> {
    store
        .db
        .with(|db| crate::storage::apply_group(&mut ChatSchema, db, &ops, 0, true))
        .unwrap()
}

fn page(store: &ChatStore, peer: &str, before: Option<u64>, limit: usize) -> HistoryPage {
    store.page(peer, before, limit).unwrap()
}

/// Groups the log has but the database lost (a crash before the next checkpoint) are
/// applied again, in order, when the store opens; and only once.
#[actix_rt::test]
async fn groups_logged_but_lost_by_the_database_are_applied_again_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut mine = Envelope::text("me", "bob", "hello");
    mine.id = MessageId::parse("m1").unwrap();
    let groups = vec![
        vec![WriteOp::Append {
            message: StoredMessage::outgoing(&mine),
        }],
        vec![
            WriteOp::Append {
                message: msg("m2", "bob", "hi back"),
            },
            WriteOp::SetState {
                id: mine.id.clone(),
                state: DeliveryState::Delivered,
            },
        ],
    ];
    {
        let (_, mut wal) = open(dir.path());
        for group in &groups {
            wal.append(&serde_json::to_vec(group).unwrap())
                .await
                .unwrap();
        }
    }
    let check = |db: Arc<SharedDb>| {
        let store = ChatStore::new(db);
        let page = page(&store, "bob", None, 10);
        let texts: Vec<(&str, MessageState, u64)> = page
            .messages
            .iter()
            .map(|m| (m.text.as_str(), m.state.clone(), m.seq))
            .collect();
        assert_eq!(
            texts,
            vec![
                ("hi back", MessageState::Received, 2),
                ("hello", MessageState::Delivered, 1)
            ]
        );
        assert!(store.unsent().unwrap().is_empty());
        assert_eq!(store.conversations().unwrap()[0].count, 2);
    };
    let (db, wal) = open(dir.path());
    check(db.clone());
    db.close();
    drop(wal);
    let (db, _) = open(dir.path());
    check(db);
}

/// Bookkeeping alone (no urgent write to ride along with) is still committed, after
/// `RIDE_ALONG`; and receipts are answered only once committed.
#[actix_rt::test]
async fn writes_that_are_not_urgent_are_committed_without_an_urgent_one() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, wal) = open(dir.path());
    let store = {
        let shared = shared.clone();
        SyncArbiter::start(1, move || ChatStore::new(shared.clone()))
    };
    let writes = writer((shared, wal), Updates::new(Default::default()).start()).start();
    let mut e = Envelope::text("me", "bob", "hello");
    e.id = MessageId::parse("m1").unwrap();
    writes
        .send(AppendMessage {
            message: StoredMessage::outgoing(&e),
        })
        .await
        .unwrap()
        .unwrap();
    let handed = writes.send(SetHandOver {
        id: e.id.clone(),
        waiting: None,
    });
    handed.await.unwrap().unwrap();
    assert!(store.send(ListUnsent).await.unwrap().unwrap().is_empty());
    let applied = writes
        .send(ApplyReceipts {
            receipts: vec![
                Receipt {
                    id: e.id.clone(),
                    state: DeliveryState::Delivered,
                },
                Receipt {
                    id: MessageId::parse("unknown").unwrap(),
                    state: DeliveryState::Delivered,
                },
            ],
        })
        .await
        .unwrap();
    assert_eq!(applied[0].as_ref().unwrap().state, MessageState::Delivered);
    assert!(matches!(applied[1], Err(PeerError::UnknownMessage(_))));
    let page = store
        .send(GetPage {
            peer: "bob".into(),
            before: None,
            limit: 10,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.messages[0].state, MessageState::Delivered);
}

#[test]
fn a_pending_message_leaves_the_unsent_index_when_handed_over_or_given_a_final_state() {
    let (_d, s) = store();
    let ours = |id: &str| {
        let mut e = Envelope::text("me", "bob", id);
        e.id = MessageId::parse(id).unwrap();
        StoredMessage::outgoing(&e)
    };
    let id = |x: &str| MessageId::parse(x).unwrap();
    write(
        &s,
        vec![
            WriteOp::Append { message: ours("a") },
            WriteOp::Append { message: ours("b") },
            WriteOp::Append { message: ours("c") },
            WriteOp::Append {
                message: msg("d", "bob", "theirs"),
            },
        ],
    );
    let unsent = |s: &ChatStore| -> Vec<String> {
        s.unsent()
            .unwrap()
            .iter()
            .map(|m| m.id.to_string())
            .collect()
    };
    assert_eq!(unsent(&s), ["a", "b", "c"]);
    write(
        &s,
        vec![
            WriteOp::SetHandOver {
                id: id("a"),
                waiting: Some("waiting for your proxy: down".into()),
            },
            WriteOp::SetHandOver {
                id: id("b"),
                waiting: None,
            },
            WriteOp::SetState {
                id: id("c"),
                state: DeliveryState::Failed {
                    reason: "no".into(),
                },
            },
        ],
    );
    let left = s.unsent().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].waiting.as_deref(),
        Some("waiting for your proxy: down")
    );
    write(
        &s,
        vec![WriteOp::SetState {
            id: id("a"),
            state: DeliveryState::Delivered,
        }],
    );
    assert!(unsent(&s).is_empty());
    let page = page(&s, "bob", None, 10);
    assert!(page.messages.iter().all(|m| m.waiting.is_none()));
}

#[test]
fn a_receipt_never_moves_a_message_back_or_off_delivered() {
    let failed = DeliveryState::Failed { reason: "x".into() };
    assert_eq!(
        MessageState::Pending.after_receipt(&DeliveryState::Delivered),
        Some(MessageState::Delivered)
    );
    assert_eq!(
        MessageState::Delivered.after_receipt(&DeliveryState::Pending),
        None
    );
    assert_eq!(MessageState::Delivered.after_receipt(&failed), None);
    assert_eq!(
        MessageState::Failed { reason: "x".into() }.after_receipt(&DeliveryState::Delivered),
        Some(MessageState::Delivered)
    );
    assert_eq!(
        MessageState::Received.after_receipt(&DeliveryState::Delivered),
        None
    );
}

#[test]
fn the_same_id_is_stored_once() {
    let (_d, s) = store();
    let out = write(
        &s,
        vec![
            WriteOp::Append {
                message: msg("m1", "bob", "hi"),
            },
            WriteOp::Append {
                message: msg("m1", "bob", "hi"),
            },
        ],
    );
    assert!(matches!(
        out[0],
        Ok(WriteOutcome::Appended {
            duplicate: false,
            ..
        })
    ));
    assert!(matches!(
        out[1],
        Ok(WriteOutcome::Appended {
            duplicate: true,
            ..
        })
    ));
    assert_eq!(page(&s, "bob", None, 10).messages.len(), 1);
}

#[test]
fn conversations_are_keyed_ignoring_case_and_paged_newest_first() {
    let (_d, s) = store();
    let ops = (0..5)
        .map(|i| WriteOp::Append {
            message: msg(
                &format!("m{i}"),
                if i % 2 == 0 { "Bob" } else { "bob" },
                &i.to_string(),
            ),
        })
        .chain(std::iter::once(WriteOp::Append {
            message: msg("x", "carol", "other"),
        }))
        .collect();
    write(&s, ops);
    let first = page(&s, "BOB", None, 2);
    let texts: Vec<&str> = first.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["4", "3"]);
    let second = page(&s, "bob", first.next_before, 10);
    let texts: Vec<&str> = second.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["2", "1", "0"]);
    assert_eq!(second.next_before, None);
}

#[test]
fn clearing_one_conversation_keeps_the_others() {
    let (_d, s) = store();
    write(
        &s,
        vec![
            WriteOp::Append {
                message: msg("a", "bob", "1"),
            },
            WriteOp::Append {
                message: msg("b", "carol", "2"),
            },
            WriteOp::Clear {
                peer: Some("BOB".into()),
            },
        ],
    );
    assert!(page(&s, "bob", None, 10).messages.is_empty());
    assert_eq!(page(&s, "carol", None, 10).messages.len(), 1);
    // The cleared id may be stored again.
    let out = write(
        &s,
        vec![WriteOp::Append {
            message: msg("a", "bob", "1"),
        }],
    );
    assert!(matches!(
        out[0],
        Ok(WriteOutcome::Appended {
            duplicate: false,
            ..
        })
    ));
}

#[test]
fn a_receipt_for_an_unknown_id_is_an_error_that_writes_nothing() {
    let (_d, s) = store();
    let out = write(
        &s,
        vec![WriteOp::SetState {
            id: MessageId::parse("nope").unwrap(),
            state: DeliveryState::Delivered,
        }],
    );
    assert!(matches!(out[0], Err(PeerError::UnknownMessage(_))));
}

/// The auto-reply's place is a logged write like any other: kept, and applied again from the
/// log when the database lost it; a store that never kept one answers 0.
#[actix_rt::test]
async fn the_auto_reply_place_is_kept_and_replayed_from_the_log() {
    let (_dir, fresh) = store();
    assert_eq!(fresh.auto_reply_next().unwrap(), 0);
    write(&fresh, vec![WriteOp::SetAutoReplyNext { next: 2 }]);
    assert_eq!(fresh.auto_reply_next().unwrap(), 2);

    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut wal) = open(dir.path());
        let group = vec![WriteOp::SetAutoReplyNext { next: 5 }];
        wal.append(&serde_json::to_vec(&group).unwrap())
            .await
            .unwrap();
    }
    let (db, _) = open(dir.path());
    assert_eq!(ChatStore::new(db).auto_reply_next().unwrap(), 5);
}

#[test]
fn a_search_finds_text_in_every_conversation_ignoring_case_newest_first_up_to_its_limit() {
    let (_dir, store) = store();
    let mut ops = Vec::new();
    for i in 0..300 {
        let (peer, text) = match i % 3 {
            0 => ("bob", format!("Plan {i}: the Rust relay")),
            1 => ("BOT", format!("reply {i} about rust")),
            _ => ("carol", format!("nothing {i}")),
        };
        ops.push(WriteOp::Append {
            message: msg(&format!("m{i}"), peer, &text),
        });
    }
    for r in write(&store, ops) {
        r.unwrap();
    }
    let found = store.search("RUST", 5).unwrap();
    let texts: Vec<&str> = found.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "reply 298 about rust",
            "Plan 297: the Rust relay",
            "reply 295 about rust",
            "Plan 294: the Rust relay",
            "reply 292 about rust"
        ]
    );
    assert_eq!(store.search("rust", 1000).unwrap().len(), 200);
    assert!(store.search("no such words", 10).unwrap().is_empty());
    // Only the text: a sender's name is not found.
    assert!(store.search("carol", 10).unwrap().is_empty());
}

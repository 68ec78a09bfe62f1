//! The directory's versions and what each proxy's directory stream is sent: a signed snapshot
//! on subscribing (or a delta from the version in its `Last-Event-ID`, while that version is
//! still in the history), then a signed delta per change, and `online` (unsigned: liveness is
//! not trust). A new version is stored before any proxy is told of it.

use std::sync::Arc;

use actix::prelude::*;
use actix_web_lab::sse;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::wire::directory::Online;
use crate::wire::now_ms;

use super::super::directory::{self as dir, Version};
use super::super::error::ControllerError;
use super::super::store::Change;
use super::{instance_key, send, Registry};

/// A proxy following its directory stream.
pub(super) struct DirSubscriber {
    proxy_id: String,
    /// The user the proxy is for.
    user: String,
    events: mpsc::Sender<sse::Event>,
    /// The version it was last sent (0: none yet).
    sent: u64,
    /// The online names it was last sent.
    online: Option<Vec<String>>,
}

impl DirSubscriber {
    /// Whether its stream is still held open.
    pub(super) fn is_open(&self) -> bool {
        !self.events.is_closed()
    }
}

/// `GET /api/v1/directory/stream?proxy_id=`: follow the directory.
#[derive(Message)]
#[rtype(result = "Result<(), ControllerError>")]
pub struct SubscribeDirectory {
    pub proxy_id: String,
    /// The request, signed by the proxy's key.
    pub call: Option<super::SignedCall>,
    /// The version the proxy has (from `Last-Event-ID`): it gets a delta from there if it can.
    pub last_event_id: Option<u64>,
    pub events: mpsc::Sender<sse::Event>,
}

/// `POST /api/v1/directory/ack`: the version a proxy applied.
#[derive(Message)]
#[rtype(result = "Result<(), ControllerError>")]
pub struct AckDirectory {
    pub proxy_id: String,
    /// The request, signed by the proxy's key.
    pub call: Option<super::SignedCall>,
    pub version: u64,
}

fn event(name: &str, id: Option<u64>, data: &impl Serialize) -> sse::Event {
    match sse::Data::new_json(data) {
        Ok(d) => {
            let d = d.event(name.to_string());
            sse::Event::Data(match id {
                Some(id) => d.id(id.to_string()),
                None => d,
            })
        }
        Err(e) => sse::Event::Comment(format!("unencodable {name}: {e}").into()),
    }
}

impl Registry {
    /// A new directory version, if the directory or an edit changed: stored, then sent.
    pub(super) fn publish(&mut self, ctx: &mut Context<Self>) {
        let directory = self.directory();
        if let Some(cur) = self.history.current() {
            if *cur.directory == directory && *cur.edits == self.edits {
                return;
            }
            self.version += 1;
        }
        let number = self.version;
        let directory = Arc::new(directory);
        self.tls.publish(directory.clone());
        self.history.push(Version {
            number,
            directory,
            edits: Arc::new(self.edits.clone()),
        });
        let store = self.store.clone();
        // `wait`: no other change (nor any subscriber) sees the registry before the version
        // is stored, so a restarted controller never hands out a version it handed out before.
        ctx.wait(
            async move { store.commit(vec![Change::Version(number)]).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    if let Err(e) = res {
                        log::warn!("could not store directory version {number}: {e}");
                    }
                    act.send_directory();
                }),
        );
    }

    /// The current version to every subscriber that has not had it.
    fn send_directory(&mut self) {
        let Some(cur) = self.history.current().cloned() else {
            return;
        };
        let mut subs = std::mem::take(&mut self.dir_subs);
        subs.retain_mut(|sub| {
            if !self.proxies.contains_key(&sub.proxy_id) {
                return false; // removed: dropping the sender ends its stream
            }
            if sub.sent == cur.number {
                return !sub.events.is_closed();
            }
            let ev = self.document_event(&sub.user, sub.sent, &cur);
            sub.sent = cur.number;
            send(&sub.events, ev)
        });
        self.dir_subs = subs;
    }

    /// A delta from `from` to `cur` when `from` is still known, else a snapshot of `cur`.
    fn document_event(&self, user: &str, from: u64, cur: &Version) -> sse::Event {
        let now = now_ms();
        match self.history.get(from).filter(|_| from != 0) {
            Some(old) => {
                let delta = dir::delta(&self.config, old, cur, user, now);
                event("delta", Some(cur.number), &self.signer.delta(&delta))
            }
            None => {
                let snap = dir::snapshot(&self.config, cur, user, now);
                event("snapshot", Some(cur.number), &self.signer.snapshot(&snap))
            }
        }
    }

    /// The signed snapshot of `user`'s view now (the answer to a join or registration).
    pub(super) fn current_snapshot(
        &self,
        user: &str,
    ) -> crate::wire::directory::Certified<crate::wire::directory::Snapshot> {
        let cur = self.history.current().cloned().unwrap_or_else(|| Version {
            number: self.version,
            directory: Arc::new(self.directory()),
            edits: Arc::new(self.edits.clone()),
        });
        self.signer
            .snapshot(&dir::snapshot(&self.config, &cur, user, now_ms()))
    }

    /// Online names changed (or a subscriber has none yet): tell each subscriber its own.
    pub(super) fn send_online(&mut self) {
        let now = now_ms();
        let mut subs = std::mem::take(&mut self.dir_subs);
        subs.retain_mut(|sub| {
            let table = self.table_of_instance(&sub.user);
            let names = self.online_in(&table, now);
            if sub.online.as_ref() == Some(&names) {
                return !sub.events.is_closed();
            }
            let ev = event(
                "online",
                None,
                &Online {
                    names: names.clone(),
                },
            );
            sub.online = Some(names);
            send(&sub.events, ev)
        });
        self.dir_subs = subs;
    }

    /// The version each proxy acknowledged, by proxy id.
    pub(super) fn acked(&self, proxy_id: &str) -> Option<u64> {
        self.acked.get(proxy_id).copied()
    }
}

impl Handler<SubscribeDirectory> for Registry {
    type Result = Result<(), ControllerError>;

    fn handle(&mut self, msg: SubscribeDirectory, _: &mut Context<Self>) -> Self::Result {
        // A revoked proxy may still read its directory: that is how it learns it was revoked.
        self.check_call_of(&msg.proxy_id, msg.call.as_ref(), true)?;
        let rec = self
            .proxies
            .get(&msg.proxy_id)
            .ok_or_else(|| Self::unknown(&msg.proxy_id))?;
        let user = rec.instance_name.clone();
        if !self.pins.contains_key(&instance_key(&user)) {
            return Err(ControllerError::Forbidden(format!(
                "{user} has not joined (no pinned key): its proxy gets the directory once it \
                 joins with a token (`overlay token create --name {user}`)"
            )));
        }
        let Some(cur) = self.history.current().cloned() else {
            return Err(ControllerError::Unavailable(
                "the directory is starting".into(),
            ));
        };
        let from = msg.last_event_id.unwrap_or(0);
        if from != cur.number && !send(&msg.events, self.document_event(&user, from, &cur)) {
            return Ok(());
        }
        self.dir_subs.push(DirSubscriber {
            proxy_id: msg.proxy_id,
            user,
            events: msg.events,
            sent: cur.number,
            online: None,
        });
        self.send_online();
        Ok(())
    }
}

impl Handler<AckDirectory> for Registry {
    type Result = Result<(), ControllerError>;

    fn handle(&mut self, msg: AckDirectory, _: &mut Context<Self>) -> Self::Result {
        self.check_call(&msg.proxy_id, msg.call.as_ref())?;
        if msg.version > self.version {
            return Err(ControllerError::BadRequest(format!(
                "version {} was never handed out (the newest is {})",
                msg.version, self.version
            )));
        }
        let before = self.acked.insert(msg.proxy_id.clone(), msg.version);
        if before != Some(msg.version) {
            self.refresh_row(&msg.proxy_id);
        }
        Ok(())
    }
}

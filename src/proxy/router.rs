//! The [`Router`] actor: the one owner of this proxy's endpoint table and of the directory view
//! it came with (from the controller's signed documents, else the store's copy of the last one,
//! else the config). It applies snapshots and deltas in version order and never goes back to
//! an older version (no rollback to a revoked key), stores each view before saying it was
//! applied, answers the peer's directory and the legacy table, and hands each new table, as one
//! shared snapshot, to the actors that subscribed ([`TableChanged`]): the outbox (which routes
//! from it) and the AI desk (which keeps one adapter per AI entry). The directory itself is
//! published on a watch channel, read by the routes that take messages in (a revoked sender is
//! refused there).
//!
//! It never delivers anything, never talks to the controller and checks no signature: the
//! controller link verifies documents and hands them over ([`ApplyView`]). Route choice itself
//! is the pure [`super::routing`].

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::watch;

use super::routing::{choose_route, directory, Route};
use super::store::{SaveView, Store};
use crate::config::InstanceName;
use crate::wire::control_plane::EndpointTable;
use crate::wire::data_plane::DirectoryEntry;
use crate::wire::directory::{Delta, Directory, Snapshot};

/// Where the table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    /// A signed view from the controller, in this run.
    Controller,
    /// The store's copy of the last view (or, from a release before the signed directory, of
    /// the last table).
    Cache,
    /// Built from config.yaml.
    Config,
}

/// A verified document from the controller.
#[derive(Debug)]
pub enum ViewUpdate {
    Snapshot(Snapshot),
    Delta(Delta),
}

/// Why a document was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewRefused {
    /// Older than what was applied: a replay, or a controller restored from an old backup.
    #[error("directory version {got} is older than version {have}, applied already")]
    Older { got: u64, have: u64 },
    /// A delta that does not start at the applied version: a snapshot is needed.
    #[error("a delta from version {from} does not apply to {}", have.map(|v| format!("version {v}")).unwrap_or_else(|| "no view".into()))]
    Gap { from: u64, have: Option<u64> },
    /// The view could not be stored, so it is not applied.
    #[error("could not store the directory view: {0}")]
    Storage(String),
}

/// Applies a verified document; answers the version now applied once it is stored.
#[derive(Message)]
#[rtype(result = "Result<u64, ViewRefused>")]
pub struct ApplyView(pub ViewUpdate);

/// The controller link's first registration of this run is over (done, or the controller is
/// unreachable): from now on the view is as fresh as it can be, and messages are taken in.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settled;

/// What the routes that take messages in read: the directory (who is revoked), and whether it
/// was checked with the controller in this run. Until then a stored view may predate a
/// revocation, so incoming messages are asked to come back shortly (503).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    pub directory: Directory,
    pub checked: bool,
}

/// Names whose proxy the controller sees alive.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetOnline(pub Vec<String>);

/// The table changed: the new one, shared (sent to every subscriber, and at once on subscribing).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct TableChanged {
    pub endpoints: Arc<EndpointTable>,
}

/// Sends `subscriber` the current table now and every new one from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeTable {
    pub subscriber: Recipient<TableChanged>,
}

/// Where a message for `name` goes (the check of a submission: is it someone we know).
#[derive(Message)]
#[rtype(result = "Route")]
pub struct ResolveRoute {
    pub name: String,
}

/// The directory for this proxy's peer.
#[derive(Message)]
#[rtype(result = "Vec<DirectoryEntry>")]
pub struct ListDirectory;

/// The whole table (for the legacy `GET /peers`).
#[derive(Message)]
#[rtype(result = "Arc<EndpointTable>")]
pub struct GetTable;

/// The version of the view applied (None before the first).
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct AppliedVersion;

/// The actor.
pub struct Router {
    me: InstanceName,
    endpoints: Arc<EndpointTable>,
    online: Option<Vec<String>>,
    source: TableSource,
    /// The signed view applied last; its version is the floor.
    view: Option<Snapshot>,
    store: Addr<Store>,
    subscribers: Vec<Recipient<TableChanged>>,
    published: watch::Sender<Arc<Published>>,
}

impl Router {
    /// A router starting from `view` (the stored one) when there is one, else from `endpoints`.
    /// `checked`: no controller to check with (no root pinned), so the view is as good as it gets.
    pub fn new(
        me: InstanceName,
        endpoints: EndpointTable,
        source: TableSource,
        view: Option<Snapshot>,
        store: Addr<Store>,
        checked: bool,
    ) -> Router {
        let (endpoints, source) = match &view {
            Some(v) => (v.table.clone(), TableSource::Cache),
            None => (endpoints, source),
        };
        let dir = view
            .as_ref()
            .map(|v| v.directory.clone())
            .unwrap_or_default();
        Router {
            me,
            endpoints: Arc::new(endpoints),
            online: None,
            source,
            view,
            store,
            subscribers: Vec::new(),
            published: watch::Sender::new(Arc::new(Published {
                directory: dir,
                checked,
            })),
        }
    }

    /// The table now (the snapshot subscribers get).
    pub fn table(&self) -> Arc<EndpointTable> {
        self.endpoints.clone()
    }

    /// Publishes through `tx` (made before the router, for the TLS verifier) from now on.
    pub fn with_published(mut self, tx: watch::Sender<Arc<Published>>) -> Router {
        tx.send_replace(self.published.borrow().clone());
        self.published = tx;
        self
    }

    /// The directory as the router will publish it; routes keep the receiver.
    pub fn published(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    fn publish(&self, directory: Option<&Directory>, checked: bool) {
        let now = self.published.borrow().clone();
        let directory = directory.unwrap_or(&now.directory);
        if now.directory != *directory || now.checked != checked {
            self.published.send_replace(Arc::new(Published {
                directory: directory.clone(),
                checked,
            }));
        }
    }

    fn changed(&self) -> TableChanged {
        TableChanged {
            endpoints: self.endpoints.clone(),
        }
    }

    fn adopt(&mut self, view: Snapshot) {
        if view.table != *self.endpoints || self.source != TableSource::Controller {
            log::info!(
                "directory version {}: {} names to route",
                view.version,
                view.table.len()
            );
        }
        if view.table != *self.endpoints {
            self.endpoints = Arc::new(view.table.clone());
            let news = self.changed();
            self.subscribers.retain(|s| s.connected());
            self.subscribers
                .iter()
                .for_each(|s| s.do_send(news.clone()));
        }
        self.publish(Some(&view.directory), true);
        self.source = TableSource::Controller;
        self.view = Some(view);
    }
}

/// The view `update` makes of the current one, or why it is refused.
fn next_view(view: Option<&Snapshot>, update: ViewUpdate) -> Result<Option<Snapshot>, ViewRefused> {
    let have = view.map(|v| v.version);
    match update {
        ViewUpdate::Snapshot(s) => match have {
            Some(h) if s.version < h => Err(ViewRefused::Older {
                got: s.version,
                have: h,
            }),
            Some(h) if s.version == h => Ok(None),
            _ => Ok(Some(s)),
        },
        ViewUpdate::Delta(d) => match (view, have) {
            (_, Some(h)) if d.to <= h => Err(ViewRefused::Older { got: d.to, have: h }),
            (Some(v), Some(h)) if d.from == h => {
                let mut next = v.clone();
                d.apply_to(&mut next);
                Ok(Some(next))
            }
            _ => Err(ViewRefused::Gap { from: d.from, have }),
        },
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        log::info!(
            "routing {} names for {} (table from {:?}{})",
            self.endpoints.len(),
            self.me,
            self.source,
            match &self.view {
                Some(v) => format!(", directory version {}", v.version),
                None => String::new(),
            }
        );
    }
}

impl Handler<SubscribeTable> for Router {
    type Result = ();

    fn handle(&mut self, msg: SubscribeTable, _: &mut Context<Self>) {
        msg.subscriber.do_send(self.changed());
        self.subscribers.push(msg.subscriber);
    }
}

impl Handler<ApplyView> for Router {
    type Result = ResponseActFuture<Self, Result<u64, ViewRefused>>;

    fn handle(&mut self, msg: ApplyView, _: &mut Context<Self>) -> Self::Result {
        let next = match next_view(self.view.as_ref(), msg.0) {
            Ok(Some(v)) => v,
            Ok(None) => {
                let v = self.view.as_ref().map(|v| v.version).unwrap_or(0);
                self.source = TableSource::Controller;
                return Box::pin(fut::ready(Ok(v)));
            }
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let save = self.store.send(SaveView { view: next.clone() });
        Box::pin(save.into_actor(self).map(move |res, act, _| match res {
            Ok(Ok(())) => {
                // Another document may have been applied while this one was stored.
                if act.view.as_ref().is_some_and(|v| v.version >= next.version) {
                    return Ok(act.view.as_ref().map(|v| v.version).unwrap_or(0));
                }
                let version = next.version;
                act.adopt(next);
                Ok(version)
            }
            Ok(Err(e)) => Err(ViewRefused::Storage(e.to_string())),
            Err(e) => Err(ViewRefused::Storage(e.to_string())),
        }))
    }
}

impl Handler<Settled> for Router {
    type Result = ();

    fn handle(&mut self, _: Settled, _: &mut Context<Self>) {
        if !self.published.borrow().checked {
            log::info!("taking incoming messages: the directory was checked with the controller");
        }
        self.publish(None, true);
    }
}

impl Handler<SetOnline> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetOnline, _: &mut Context<Self>) {
        self.online = Some(msg.0);
    }
}

impl Handler<ResolveRoute> for Router {
    type Result = MessageResult<ResolveRoute>;

    fn handle(&mut self, msg: ResolveRoute, _: &mut Context<Self>) -> Self::Result {
        MessageResult(choose_route(&self.endpoints, self.me.as_str(), &msg.name))
    }
}

impl Handler<ListDirectory> for Router {
    type Result = MessageResult<ListDirectory>;

    fn handle(&mut self, _: ListDirectory, _: &mut Context<Self>) -> Self::Result {
        MessageResult(directory(&self.endpoints, self.online.as_deref()))
    }
}

impl Handler<GetTable> for Router {
    type Result = MessageResult<GetTable>;

    fn handle(&mut self, _: GetTable, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.endpoints.clone())
    }
}

impl Handler<AppliedVersion> for Router {
    type Result = Option<u64>;

    fn handle(&mut self, _: AppliedVersion, _: &mut Context<Self>) -> Self::Result {
        self.view.as_ref().map(|v| v.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::directory::{UserEntry, UserState};

    fn snap(version: u64) -> Snapshot {
        Snapshot {
            for_user: "alice".into(),
            version,
            issued_at_ms: 1,
            expires_at_ms: 2,
            directory: Directory::default(),
            table: EndpointTable::new(),
        }
    }

    fn delta(from: u64, to: u64) -> Delta {
        let bob = UserEntry {
            role: Default::default(),
            via: None,
            tls: None,
            seal: None,
            name: "bob".into(),
            proxy_id: None,
            key: None,
            host: "h".into(),
            port: 1,
            native: true,
            state: UserState::Pending,
        };
        Delta {
            cas: None,
            for_user: "alice".into(),
            from,
            to,
            issued_at_ms: 3,
            expires_at_ms: 4,
            users: [("bob".to_string(), Some(bob))].into(),
            ai: None,
            table: Default::default(),
        }
    }

    #[test]
    fn an_older_snapshot_or_delta_is_refused_and_a_gap_asks_for_a_snapshot() {
        let ten = snap(10);
        let r = Some(&ten);
        assert_eq!(
            next_view(r, ViewUpdate::Snapshot(snap(9))),
            Err(ViewRefused::Older { got: 9, have: 10 })
        );
        assert_eq!(
            next_view(r, ViewUpdate::Delta(delta(8, 9))),
            Err(ViewRefused::Older { got: 9, have: 10 })
        );
        assert_eq!(
            next_view(r, ViewUpdate::Delta(delta(11, 12))),
            Err(ViewRefused::Gap {
                from: 11,
                have: Some(10)
            })
        );
        let next = next_view(r, ViewUpdate::Delta(delta(10, 12)))
            .unwrap()
            .unwrap();
        assert_eq!(next.version, 12);
        assert!(next.directory.user("bob").is_some());
        assert!(next_view(r, ViewUpdate::Snapshot(snap(11)))
            .unwrap()
            .is_some());
        assert_eq!(
            next_view(None, ViewUpdate::Delta(delta(1, 2))),
            Err(ViewRefused::Gap {
                from: 1,
                have: None
            })
        );
    }
}

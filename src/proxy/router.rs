//! The [`Router`] actor: the one owner of this proxy's endpoint table (from the controller, else
//! the redb cache, else the config). It keeps the table, caches a controller's table in the
//! store, answers the peer's directory and the legacy table, and hands each new table, as one
//! shared snapshot, to the actors that subscribed ([`TableChanged`]): the outbox (which routes
//! from it) and the AI desk (which keeps one adapter per AI entry).
//!
//! It never delivers anything and never talks to the controller: the controller link hands it
//! tables ([`SetTable`]). Route choice itself is the pure [`super::routing`].

use std::sync::Arc;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, Recipient};

use super::routing::{choose_route, directory, Route};
use super::store::{SaveTable, Store};
use crate::config::InstanceName;
use crate::wire::control_plane::{EndpointTable, TableUpdate};
use crate::wire::data_plane::DirectoryEntry;

/// Where a table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    /// The controller (register answer, stream, or poll): cached in redb.
    Controller,
    /// The redb cache of an earlier run.
    Cache,
    /// Built from config.yaml.
    Config,
}

/// Replaces the table.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTable {
    pub endpoints: EndpointTable,
    /// Names whose proxy the controller sees alive; None when unknown.
    pub online: Option<Vec<String>>,
    pub version: u64,
    pub source: TableSource,
}

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

/// The actor.
pub struct Router {
    me: InstanceName,
    endpoints: Arc<EndpointTable>,
    online: Option<Vec<String>>,
    source: TableSource,
    store: Addr<Store>,
    subscribers: Vec<Recipient<TableChanged>>,
}

impl Router {
    pub fn new(
        me: InstanceName,
        endpoints: EndpointTable,
        source: TableSource,
        store: Addr<Store>,
    ) -> Router {
        Router {
            me,
            endpoints: Arc::new(endpoints),
            online: None,
            source,
            store,
            subscribers: Vec::new(),
        }
    }

    /// The table now (the snapshot subscribers get).
    pub fn table(&self) -> Arc<EndpointTable> {
        self.endpoints.clone()
    }

    fn changed(&self) -> TableChanged {
        TableChanged {
            endpoints: self.endpoints.clone(),
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        log::info!(
            "routing {} names for {} (table from {:?})",
            self.endpoints.len(),
            self.me,
            self.source
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

impl Handler<SetTable> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetTable, ctx: &mut Context<Self>) {
        let changed = msg.endpoints != *self.endpoints;
        if changed || msg.source != self.source {
            log::info!(
                "endpoint table v{} from {:?}: {} names",
                msg.version,
                msg.source,
                msg.endpoints.len()
            );
        }
        if changed {
            self.endpoints = Arc::new(msg.endpoints);
            let news = self.changed();
            self.subscribers.retain(|s| s.connected());
            self.subscribers
                .iter()
                .for_each(|s| s.do_send(news.clone()));
        }
        self.online = msg.online;
        self.source = msg.source;
        if msg.source == TableSource::Controller {
            let save = self.store.send(SaveTable {
                table: TableUpdate {
                    version: msg.version,
                    endpoints: (*self.endpoints).clone(),
                    online: Vec::new(),
                },
            });
            ctx.spawn(actix::fut::wrap_future(async move {
                match save.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::warn!("cannot cache the endpoint table: {e}"),
                    Err(e) => log::warn!("cannot cache the endpoint table: {e}"),
                }
            }));
        }
    }
}

impl Handler<ResolveRoute> for Router {
    type Result = actix::MessageResult<ResolveRoute>;

    fn handle(&mut self, msg: ResolveRoute, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(choose_route(&self.endpoints, self.me.as_str(), &msg.name))
    }
}

impl Handler<ListDirectory> for Router {
    type Result = actix::MessageResult<ListDirectory>;

    fn handle(&mut self, _: ListDirectory, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(directory(&self.endpoints, self.online.as_deref()))
    }
}

impl Handler<GetTable> for Router {
    type Result = actix::MessageResult<GetTable>;

    fn handle(&mut self, _: GetTable, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.endpoints.clone())
    }
}

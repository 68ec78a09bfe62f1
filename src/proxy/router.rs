//! The [`Router`] actor: owns this proxy's endpoint table (from the controller, else the redb
//! cache, else the config) and answers, per destination name and ignoring case, where a message
//! goes: this proxy's own peer, another user's proxy, or an AI endpoint.
//!
//! It never delivers anything and never talks to the controller: the controller link hands it
//! tables ([`SetTable`]), and it hands each new table on to the outbox ([`TableChanged`]) and to
//! the store (cache). Route choice itself is the pure [`choose_route`].

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};

use super::outbox::{Outbox, TableChanged};
use super::store::{SaveTable, Store};
use crate::config::{Config, InstanceName};
use crate::wire::control_plane::{AiEndpoint, Endpoint, EndpointTable, PeerEndpoint, TableUpdate};
use crate::wire::data_plane::{DirectoryEntry, PeerKind};

/// Where a message for one name goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// This proxy's own peer.
    OwnPeer,
    /// Another user's proxy; `name` as the table spells it.
    Proxy {
        name: String,
        endpoint: PeerEndpoint,
    },
    /// An AI endpoint, handed to the AI adapter.
    Ai {
        name: String,
        endpoint: Box<AiEndpoint>,
    },
    Unknown,
}

/// The route for `to`, as the proxy of `me` with `table` sees it (names compared ignoring case).
pub fn choose_route(table: &EndpointTable, me: &str, to: &str) -> Route {
    if me.eq_ignore_ascii_case(to) {
        return Route::OwnPeer;
    }
    match table.iter().find(|(name, _)| name.eq_ignore_ascii_case(to)) {
        Some((name, Endpoint::Peer(p))) => Route::Proxy {
            name: name.clone(),
            endpoint: p.clone(),
        },
        Some((name, Endpoint::Ai(a))) => Route::Ai {
            name: name.clone(),
            endpoint: a.clone(),
        },
        None => Route::Unknown,
    }
}

/// The table of `me` built from the config alone (no controller, no cache): every other
/// instance's proxy (ours, so native), then every AI endpoint; an AI endpoint named like an
/// instance takes that name.
pub fn default_table(config: &Config, me: &str) -> EndpointTable {
    let mut table = EndpointTable::new();
    for inst in config.instances.iter().filter(|i| !i.name.matches(me)) {
        let advertised = inst.proxy.advertised();
        let Some((host, port)) = advertised.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        table.insert(
            inst.name.to_string(),
            Endpoint::Peer(PeerEndpoint {
                host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
                port,
                native: true,
            }),
        );
    }
    for ai in &config.ai_endpoints {
        table.retain(|name, _| !ai.name.matches(name));
        table.insert(
            ai.name.to_string(),
            Endpoint::Ai(Box::new(AiEndpoint::from_config(ai))),
        );
    }
    table
}

/// The directory a peer shows: every name of the table, persons with their liveness when known.
pub fn directory(table: &EndpointTable, online: Option<&[String]>) -> Vec<DirectoryEntry> {
    table
        .iter()
        .map(|(name, e)| match e {
            Endpoint::Ai(_) => DirectoryEntry {
                name: name.clone(),
                kind: PeerKind::Ai,
                online: None,
            },
            Endpoint::Peer(_) => DirectoryEntry {
                name: name.clone(),
                kind: PeerKind::Person,
                online: online.map(|o| o.iter().any(|n| n.eq_ignore_ascii_case(name))),
            },
        })
        .collect()
}

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

/// Where a message for `name` goes.
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
#[rtype(result = "EndpointTable")]
pub struct GetTable;

/// The actor.
pub struct Router {
    me: InstanceName,
    endpoints: EndpointTable,
    online: Option<Vec<String>>,
    source: TableSource,
    outbox: Addr<Outbox>,
    store: Addr<Store>,
}

impl Router {
    pub fn new(
        me: InstanceName,
        endpoints: EndpointTable,
        source: TableSource,
        outbox: Addr<Outbox>,
        store: Addr<Store>,
    ) -> Router {
        Router {
            me,
            endpoints,
            online: None,
            source,
            outbox,
            store,
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

impl Handler<SetTable> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetTable, ctx: &mut Context<Self>) {
        let changed = msg.endpoints != self.endpoints;
        if changed || msg.source != self.source {
            log::info!(
                "endpoint table v{} from {:?}: {} names",
                msg.version,
                msg.source,
                msg.endpoints.len()
            );
        }
        self.endpoints = msg.endpoints;
        self.online = msg.online;
        self.source = msg.source;
        if changed {
            self.outbox.do_send(TableChanged {
                endpoints: self.endpoints.clone(),
            });
        }
        if msg.source == TableSource::Controller {
            let save = self.store.send(SaveTable {
                table: TableUpdate {
                    version: msg.version,
                    endpoints: self.endpoints.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> EndpointTable {
        serde_json::from_str(
            r#"{"Bob":{"host":"127.0.0.1","port":10002,"native":true},
                "carol":{"host":"10.0.0.3","port":10003},
                "BOT":{"host":"api.openai.com","port":443,"is_api":true}}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_own_name_routes_to_the_own_peer_in_any_case() {
        assert_eq!(choose_route(&table(), "alice", "ALICE"), Route::OwnPeer);
    }

    #[test]
    fn another_user_routes_to_its_proxy_ignoring_case() {
        match choose_route(&table(), "alice", "bob") {
            Route::Proxy { name, endpoint } => {
                assert_eq!(name, "Bob");
                assert!(endpoint.native);
                assert_eq!(endpoint.port, 10002);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            choose_route(&table(), "alice", "CAROL"),
            Route::Proxy {
                endpoint: PeerEndpoint { native: false, .. },
                ..
            }
        ));
    }

    #[test]
    fn an_ai_entry_routes_to_the_ai_adapter() {
        assert!(
            matches!(choose_route(&table(), "alice", "bot"), Route::Ai { name, .. } if name == "BOT")
        );
    }

    #[test]
    fn a_name_not_in_the_table_is_unknown() {
        assert_eq!(choose_route(&table(), "alice", "zed"), Route::Unknown);
    }

    #[test]
    fn the_config_table_lists_other_users_and_lets_an_ai_endpoint_win_its_name() {
        let config = Config::parse(include_str!("../../config.yaml"), "config.yaml").unwrap();
        let t = default_table(&config, "alice");
        let names: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["ANTHROPIC", "BOT", "GEMINI", "MISTRAL", "behrooz", "bob"]
        );
        assert!(matches!(&t["bob"], Endpoint::Peer(p) if p.port == 10002 && p.native));
        assert!(matches!(&t["BOT"], Endpoint::Ai(_)));
    }

    #[test]
    fn the_directory_shows_liveness_of_persons_only_when_known() {
        let online = vec!["bob".to_string()];
        let d = directory(&table(), Some(&online));
        let bob = d.iter().find(|e| e.name == "Bob").unwrap();
        assert_eq!((bob.kind, bob.online), (PeerKind::Person, Some(true)));
        let carol = d.iter().find(|e| e.name == "carol").unwrap();
        assert_eq!(carol.online, Some(false));
        let bot = d.iter().find(|e| e.name == "BOT").unwrap();
        assert_eq!((bot.kind, bot.online), (PeerKind::Ai, None));
        assert!(directory(&table(), None).iter().all(|e| e.online.is_none()));
    }
}

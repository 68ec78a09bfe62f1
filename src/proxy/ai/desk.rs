//! The [`AiDesk`] actor: this proxy's one way to its AI endpoints. Owns the adapters (one
//! [`AiAdapter`] actor per AI entry of the current table: started, updated, stopped with the
//! table, which it follows as a subscriber of the router) and the AI memory's use (through the
//! store's one writer). The outbox asks it to deliver a user's message ([`Converse`]) and gets
//! the reply back as the answer; the own peer's "clear chat" asks it to forget
//! ([`ForgetConversation`]).
//!
//! It does not own the outbox's lanes or retries, and never logs a key.

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};

use super::conversation::{converse, memory_key, turns_to_keep, AiTurn, Conversed};
use super::trust::{call_refusal, with_local_keys};
use super::{AiAdapter, UpdateEndpoint};
use crate::config::AiEndpointConfig;
use crate::proxy::error::ProxyError;
use crate::proxy::router::TableChanged;
use crate::proxy::store::{ForgetMemory, Store};
use crate::wire::control_plane::{AiEndpoint, Endpoint, EndpointTable};
use crate::wire::data_plane::Envelope;

/// Delivers the own user's `envelope` to AI endpoint `name` (as the table has it); answers the
/// outcome and the reply to queue for the own peer (see [`converse`]).
#[derive(Message)]
#[rtype(result = "Conversed")]
pub struct Converse {
    pub name: String,
    pub endpoint: Box<AiEndpoint>,
    pub envelope: Envelope,
}

/// Forgets the AI memory of the own user's chat with `with` (every AI chat when None): the
/// next message starts a fresh context. Answers how many remembered turns went.
#[derive(Message)]
#[rtype(result = "Result<u64, ProxyError>")]
pub struct ForgetConversation {
    pub with: Option<String>,
}

/// What the desk needs to know about its proxy.
#[derive(Debug, Clone)]
pub struct DeskSettings {
    /// This proxy's user.
    pub me: String,
    /// The own peer, where stream chunks go.
    pub peer_url: String,
    /// The AI endpoints of this proxy's own config.yaml: the only place keys are named.
    pub local_ai: Vec<AiEndpointConfig>,
    /// Bound of one stream chunk post, and of waiting for the last ones after the reply.
    pub chunk_timeout: Duration,
    /// Longest message text the peer takes (`delivery.max_message_bytes`).
    pub max_text_bytes: usize,
}

/// The actor.
pub struct AiDesk {
    settings: DeskSettings,
    adapters: AiAdapters,
    store: Addr<Store>,
    /// The proxy's HTTP client (the outbox's), for stream chunks.
    client: awc::Client,
}

impl AiDesk {
    /// Must be built on the thread of `client` (awc clients are per thread): the outbox's,
    /// shared, as building one costs about a megabyte.
    pub fn new(settings: DeskSettings, store: Addr<Store>, client: awc::Client) -> AiDesk {
        AiDesk {
            adapters: AiAdapters::new(settings.local_ai.clone()),
            settings,
            store,
            client,
        }
    }
}

impl Actor for AiDesk {
    type Context = Context<Self>;
}

impl Handler<TableChanged> for AiDesk {
    type Result = ();

    fn handle(&mut self, msg: TableChanged, _: &mut Context<Self>) {
        self.adapters.sync(&msg.endpoints);
    }
}

impl Handler<Converse> for AiDesk {
    type Result = ResponseFuture<Conversed>;

    fn handle(&mut self, msg: Converse, _: &mut Context<Self>) -> Self::Result {
        let s = &self.settings;
        // Issue 13, defect 5: an entry at an origin this proxy's config does not name is not
        // called at all; the user is told why instead.
        if let Some(why) = call_refusal(&msg.name, &msg.endpoint, &s.local_ai) {
            log::warn!("message {} to {}: {why}", msg.envelope.id, msg.name);
            return Box::pin(std::future::ready(Conversed::refused(
                &msg.name, &s.me, why,
            )));
        }
        let turn = AiTurn {
            me: s.me.clone(),
            adapter: self.adapters.adapter(&msg.name, &msg.endpoint),
            keep: turns_to_keep(&msg.endpoint),
            name: msg.name,
            store: self.store.clone(),
            client: self.client.clone(),
            peer_url: s.peer_url.clone(),
            chunk_timeout: s.chunk_timeout,
            max_text_bytes: s.max_text_bytes,
        };
        Box::pin(converse(turn, msg.envelope))
    }
}

impl Handler<ForgetConversation> for AiDesk {
    type Result = ResponseFuture<Result<u64, ProxyError>>;

    fn handle(&mut self, msg: ForgetConversation, _: &mut Context<Self>) -> Self::Result {
        let conversation = msg.with.map(|with| memory_key(&self.settings.me, &with));
        let forget = self.store.send(ForgetMemory { conversation });
        Box::pin(async move { forget.await.map_err(ProxyError::unavailable)? })
    }
}

/// The adapters of the AI entries of the current table, by the table's name.
#[derive(Default)]
pub struct AiAdapters {
    by_name: HashMap<String, (AiEndpoint, Addr<AiAdapter>)>,
    /// The AI endpoints of this proxy's own config: where its keys may be sent.
    local: Vec<AiEndpointConfig>,
}

impl AiAdapters {
    pub fn new(local: Vec<AiEndpointConfig>) -> AiAdapters {
        AiAdapters {
            by_name: HashMap::new(),
            local,
        }
    }

    /// Matches the adapters to `table`: starts one per new AI entry, updates changed ones, and
    /// stops those whose entry went away (dropping the last address stops an actor once the
    /// calls it has under way are answered). Call from an actor on the role's arbiter: that
    /// is where new adapters run.
    pub fn sync(&mut self, table: &EndpointTable) {
        self.by_name.retain(|name, _| {
            let keep = matches!(table.get(name), Some(Endpoint::Ai(_)));
            if !keep {
                // Routine (the proxy of a user named like an AI endpoint never calls it): not
                // worth a line at the default level.
                log::debug!("AI endpoint {name} is no longer in the table: its adapter stops");
            }
            keep
        });
        for (name, entry) in table {
            let Endpoint::Ai(endpoint) = entry else {
                continue;
            };
            self.adapter(name, endpoint);
        }
    }

    /// The adapter of AI endpoint `name`, started or updated to `endpoint` if needed.
    pub fn adapter(&mut self, name: &str, endpoint: &AiEndpoint) -> Addr<AiAdapter> {
        let endpoint = &with_local_keys(name, endpoint, &self.local);
        match self.by_name.get_mut(name) {
            Some((current, addr)) => {
                if current != endpoint {
                    log::info!("AI endpoint {name} changed: its adapter is updated");
                    addr.do_send(UpdateEndpoint {
                        endpoint: endpoint.clone(),
                    });
                    *current = endpoint.clone();
                }
                addr.clone()
            }
            None => {
                let addr = AiAdapter::new(name.to_string(), endpoint.clone()).start();
                self.by_name
                    .insert(name.to_string(), (endpoint.clone(), addr.clone()));
                addr
            }
        }
    }

    /// The names with a running adapter, sorted (for tests and logs).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(base_url: Option<&str>) -> EndpointTable {
        let mut t = EndpointTable::new();
        if let Some(url) = base_url {
            let c: crate::config::AiEndpointConfig = serde_yaml::from_str(&format!(
                "{{name: BOT, provider: openai, model: m, base_url: '{url}'}}"
            ))
            .unwrap();
            t.insert(
                "BOT".into(),
                Endpoint::Ai(Box::new(AiEndpoint::from_config(&c))),
            );
        }
        t
    }

    #[actix_rt::test]
    async fn adapters_follow_the_table_started_updated_in_place_and_stopped() {
        let mut adapters = AiAdapters::new(Vec::new());
        adapters.sync(&table(Some("http://127.0.0.1:1/v1")));
        assert_eq!(adapters.names(), ["BOT"]);
        let first = adapters.by_name["BOT"].1.clone();
        let weak = first.downgrade();
        drop(first);

        adapters.sync(&table(Some("http://127.0.0.1:2/v1")));
        let (endpoint, addr) = &adapters.by_name["BOT"];
        assert_eq!(endpoint.base_url.as_deref(), Some("http://127.0.0.1:2/v1"));
        assert!(
            weak.upgrade().is_some_and(|a| &a == addr),
            "the same adapter, updated"
        );

        adapters.sync(&table(None));
        assert!(adapters.names().is_empty());
        // Its last address is gone: it stops once its loop runs.
        for _ in 0..200 {
            if weak.upgrade().is_none() {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the adapter of a removed endpoint did not stop");
    }
}

//! The proxy role: one per user. Takes that user's messages from its own peer, stores them
//! durably (outbox), and delivers them, with retries, to other users' proxies, to AI endpoints,
//! or back to its own peer; receives messages relayed by other proxies (and by proxies of the
//! original, in their legacy format) and delivers them to its own peer.
//!
//! [`start`] is the role's one door: the binary and the tests both call it with a bound
//! listener (port 0 in tests) and get back a [`Running`] server.
//!
//! Modules: [`routes`] (HTTP, thin) → [`router`] (the table, route choice) and [`outbox`]
//! (durable queue, delivery, receipts) → [`store`] (redb, on a SyncArbiter) and [`delivery`]
//! (one HTTP attempt). [`controller_link`] keeps the table fresh. [`compat`] reads the
//! original's posts; [`backoff`] times retries; [`error`] maps every failure to an answer.
//! [`ai`] (one adapter per AI endpoint) and [`ai_chat`] (memory, streaming, the reply) are the
//! outbox's way to an AI endpoint.

pub mod ai_chat;
pub mod backoff;
pub mod compat;
pub mod controller_link;
pub mod delivery;
pub mod error;
pub mod outbox;
pub mod router;
pub mod routes;
pub mod store;

use std::net::TcpListener;
use std::time::Duration;

use actix::{Actor, SyncArbiter};
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::config::ProxySettings;
use crate::web::{common_routes, Health, Running};
use controller_link::{ControllerLink, LinkSettings};
use outbox::{Outbox, OutboxSettings};
use router::{default_table, Router, TableSource};
use routes::ProxyState;
use store::{LoadAll, Store};

pub mod ai;

/// Starts the proxy on `listener`. Must be called inside an actix system.
pub async fn start(settings: ProxySettings, listener: TcpListener) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let label = format!("proxy/{}", settings.name);
    let instance: Option<String> = Some(settings.name.to_string());

    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "creating the data directory {} for {label}",
            settings.data_dir.display()
        )
    })?;
    let path = settings
        .data_dir
        .join(format!("proxy-{}.redb", settings.name));
    let shown = path.display().to_string();
    let db = web::block(move || store::open(&path))
        .await
        .map_err(|e| anyhow::anyhow!("opening {shown}: {e}"))??;
    let store_tag = label.clone();
    let shared = db.clone();
    let store = SyncArbiter::start(1, move || Store::new(shared.clone(), &store_tag));
    let loaded = store
        .send(LoadAll {
            name: settings.name.to_string(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("the store of {label} did not start: {e}"))??;

    let (endpoints, source) = match loaded.table {
        Some(t) => (t.endpoints, TableSource::Cache),
        None => (
            default_table(&settings.config, settings.name.as_str()),
            TableSource::Config,
        ),
    };
    let arbiter = crate::web::role_arbiter(&label);
    let outbox = {
        let settings = OutboxSettings {
            me: settings.name.clone(),
            peer_url: settings.peer_url.trim_end_matches('/').to_string(),
            delivery: settings.delivery.clone(),
            local_ai: settings.config.ai_endpoints.clone(),
        };
        let (endpoints, store, items) = (endpoints.clone(), store.clone(), loaded.items);
        Outbox::start_in_arbiter(&arbiter.handle(), move |_| {
            Outbox::new(settings, endpoints, store, items)
        })
    };
    let router = {
        let (me, outbox, store) = (settings.name.clone(), outbox.clone(), store.clone());
        Router::start_in_arbiter(&arbiter.handle(), move |_| {
            Router::new(me, endpoints, source, outbox, store)
        })
    };
    {
        let link = LinkSettings {
            controller_url: settings.controller_url.trim_end_matches('/').to_string(),
            proxy_id: loaded.proxy_id.clone(),
            instance_name: settings.name.to_string(),
            advertise: settings.advertise.clone(),
            heartbeat_every: Duration::from_secs(settings.liveness.heartbeat_every_secs.max(1)),
        };
        let router = router.clone();
        ControllerLink::start_in_arbiter(&arbiter.handle(), move |_| {
            ControllerLink::new(link, router)
        });
    }

    let state = ProxyState {
        me: settings.name.clone(),
        router,
        outbox,
        store,
        max_body_bytes: settings.delivery.max_body_bytes,
        max_message_bytes: settings.delivery.max_message_bytes,
    };
    let tag = label.clone();
    let server = HttpServer::new(move || {
        crate::logging::tag_thread(&tag);
        let state = state.clone();
        App::new()
            .wrap(actix_web::middleware::from_fn(
                crate::web::refuse_cross_site,
            ))
            .configure(|cfg| common_routes(cfg, Health::new("proxy", instance.as_deref())))
            .configure(move |cfg| routes::configure(cfg, state))
    })
    .workers(settings.workers)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    log::info!("{label} listening on {addr} (proxy id {})", loaded.proxy_id);
    let on_stop: Box<dyn FnOnce() + Send> = Box::new(move || {
        // Stop delivering (drops the actors), then release the store file.
        arbiter.stop();
        let _ = arbiter.join();
        store::close(&db);
    });
    Ok(Running {
        label,
        addr,
        server,
        on_stop: vec![on_stop],
    })
}

//! The peer role: one user's chat page, local store and auto-reply; it talks only to its own
//! proxy. See the crate docs for its place in the picture.
//!
//! [`start`] is the role's one door: the binary and the tests both call it with a bound
//! listener (port 0 in tests) and get back a [`Running`] server.
//!
//! Modules: [`store`] (redb, group commit) · [`updates`] (SSE to open pages) ·
//! [`auto_reply`] · [`login`] (the page's token beyond loopback) · [`outgoing`] (sending: the line of what the proxy has not taken, in order,
//! handed over and handed over again) · [`proxy_client`] (plain HTTP calls to the proxy) ·
//! [`routes`] (HTTP) · [`views`] (maud) · [`error`].

pub mod auto_reply;
pub mod contacts;
pub mod error;
pub mod login;
pub mod markdown;
pub mod outgoing;
pub mod presence;
pub mod proxy_client;
pub mod routes;
pub mod store;
pub mod updates;
pub mod views;

use std::net::TcpListener;
use std::sync::Arc;

use actix::{Actor, SyncArbiter};
use actix_web::{web, HttpServer};
use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::PeerSettings;
use crate::storage::{SharedDb, Wal};
use crate::web::{common_routes, Health, Running};
use auto_reply::{AutoReply, AutoReplyLinks};
use outgoing::{Outgoing, OutgoingSettings};
use proxy_client::ProxyApi;
use routes::PeerState;
use store::{ChatSchema, ChatStore};
use updates::Updates;

/// Threads doing blocking redb work: one for the write transaction in progress, the others
/// for reads, so a page of history never waits behind a commit.
const STORE_THREADS: usize = 3;

/// Starts the peer on `listener`. Must be called inside an actix system.
pub async fn start(settings: PeerSettings, listener: TcpListener) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let label = format!("peer/{}", settings.name);

    let path = settings
        .data_dir
        .join(format!("peer-{}.redb", settings.name));
    let log = settings
        .data_dir
        .join(format!("peer-{}.wal", settings.name));
    let (opening, tag) = (path.clone(), label.clone());
    let (db, wal) = web::block(move || crate::storage::open(&mut ChatSchema, &opening, &log, &tag))
        .await
        .context("opening the chat store")?
        .with_context(|| format!("{label}: cannot open its chat store {}", path.display()))?;
    let store = {
        let (db, tag) = (db.clone(), label.clone());
        SyncArbiter::start(STORE_THREADS, move || {
            crate::logging::tag_thread(&tag);
            ChatStore::new(db.clone())
        })
    };

    let health = Health::new("peer", Some(settings.name.as_str())).check(
        crate::web::health::store(&format!("{}'s chat store", settings.name), wal.health()),
    );
    // Its `/metrics`: the store's timings, and the clients of its two event streams.
    let metrics = health.metrics();
    metrics.watch_store(&wal.timings());
    let counted = (
        (
            metrics.sse_listeners("page"),
            metrics.sse_listeners("message_updates"),
        ),
        (
            metrics.sse_slow_consumers("page"),
            metrics.sse_slow_consumers("message_updates"),
        ),
    );
    // The actors are started on the HTTP worker's thread, where the handlers run.
    let state = {
        let (store, settings, db) = (store.clone(), settings.clone(), db.clone());
        crate::web::on_worker(move || {
            web::Data::new(start_actors(&settings, store, db, wal, counted))
        })
    };

    let tag = label.clone();
    let max_body = settings.max_body_bytes;
    let proxy_url = settings.proxy_url.clone();
    let link = settings.link.clone();
    let guard = web::Data::new(crate::hop::link::LinkGuard {
        token: settings.link.clone(),
        who: settings.name.to_string(),
        other: "proxy",
    });
    // Browsers open it by address, localhost, its advertised name or an allowed one; what its
    // proxy calls is exempt (guarded by the link).
    let hosts = web::Data::new(crate::web::host::HostCheck::new(
        std::iter::once(settings.advertise.as_str())
            .chain(settings.server.allowed_hosts.iter().map(String::as_str)),
        routes::FROM_PROXY,
    ));
    // Beyond loopback, the page is HTTPS (see `crate::web::page_tls`).
    let mut names = vec![settings.advertise.clone()];
    names.extend(settings.server.allowed_hosts.iter().cloned());
    let serving = crate::web::page_tls::for_listener(
        &label,
        addr,
        &names,
        settings.server.page_tls.as_ref(),
        settings.server.pages_plain_http,
        &settings.data_dir,
    )?;
    let https = matches!(serving, crate::web::page_tls::PageServing::Https(_));
    let login = web::Data::new(login::PageLogin::setup(&settings, addr, https)?);
    let limits = crate::web::ServerLimits::of(&settings.server);
    let server = HttpServer::new(move || {
        crate::logging::tag_thread(&tag);
        crate::web::guarded_app(limits)
            .app_data((*state).clone())
            // The handlers' reads from the proxy: one client per worker, built on its thread.
            .app_data(web::Data::new(ProxyApi::new(&proxy_url, &link)))
            .app_data(guard.clone())
            .app_data(hosts.clone())
            .app_data(login.clone())
            .wrap(actix_web::middleware::from_fn(login::require))
            .wrap(actix_web::middleware::from_fn(crate::web::host::require))
            // Outermost: what the login and the Host check refuse is counted too.
            .wrap(actix_web::middleware::from_fn(
                crate::web::metrics::count_http,
            ))
            .configure(|cfg| common_routes(cfg, health.clone()))
            .configure(|cfg| routes::configure(cfg, max_body))
    })
    .workers(settings.workers)
    .max_connections(limits.max_connections)
    .disable_signals()
    .shutdown_timeout(5);
    let server = match serving {
        crate::web::page_tls::PageServing::Https(config) => {
            server.listen_rustls_0_23(listener, (*config).clone())?
        }
        crate::web::page_tls::PageServing::Plain => server.listen(listener)?,
    }
    .run();
    log::info!(
        "{label} listening on {addr}, store {}, proxy {}",
        path.display(),
        settings.proxy_url
    );

    let stop_label = label.clone();
    let on_stop: Box<dyn FnOnce() + Send> = Box::new(move || {
        // The actors stop with the server's worker; the database is closed here (after the
        // write in progress, if any), so a restart in the same process can open the file again.
        db.close();
        log::info!("{stop_label}: chat store closed");
    });
    Ok(Running {
        advertised: Some(settings.advertise.clone()),
        tls_advertised: None,
        tls_addr: None,
        scheme: if https { "https" } else { "http" },
        label,
        addr,
        server,
        on_stop: vec![on_stop],
    })
}

/// Starts the peer's actors on the current thread (an HTTP worker's), around the store: its
/// readers (`store`), the database and its log (for the one writer), and the gauges of its
/// event streams' clients.
fn start_actors(
    settings: &PeerSettings,
    store: actix::Addr<ChatStore>,
    db: Arc<SharedDb>,
    wal: Wal,
    (listeners, slow): ((Gauge, Gauge), (Counter, Counter)),
) -> PeerState {
    let ai = contacts::AiNames::default();
    let updates = Updates::new(ai.clone()).counted_in(listeners, slow).start();
    let writes = store::writer((db, wal), updates.clone()).start();
    let timing = OutgoingSettings {
        expire_after_secs: settings.expire_after_secs,
        retry_initial_ms: u64::from(settings.retry_initial_ms),
        retry_max_ms: u64::from(settings.retry_max_ms),
    };
    let proxy = ProxyApi::new(&settings.proxy_url, &settings.link);
    let outgoing = Outgoing::new(store.clone(), writes.clone(), proxy.clone(), timing).start();
    presence::Presence::new(
        settings.name.as_str(),
        proxy.clone(),
        updates.clone(),
        ai.clone(),
    )
    .start();
    let auto_reply = AutoReply::new(
        settings.name.as_str(),
        settings.auto_reply.clone(),
        AutoReplyLinks {
            outgoing: outgoing.clone(),
            proxy,
            store: store.clone(),
            writes: writes.clone(),
        },
    )
    .start();
    PeerState {
        ai,
        name: settings.name.clone(),
        display_name: settings.display_name.clone(),
        max_body_bytes: settings.max_body_bytes,
        max_message_bytes: settings.max_message_bytes,
        store,
        writes,
        updates,
        outgoing,
        auto_reply,
    }
}

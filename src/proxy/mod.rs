//! The proxy role: one per user. Takes that user's messages from its own peer, stores them
//! durably (outbox), and delivers them, with retries, to other users' proxies, to AI endpoints,
//! or back to its own peer; receives messages relayed by other proxies (and by proxies of the
//! original, in their legacy format) and delivers them to its own peer.
//!
//! [`start`] is the role's one door: the binary and the tests both call it with a bound
//! listener (port 0 in tests) and get back a [`Running`] server.
//!
//! One way through: [`routes`] (HTTP, thin) → [`outbox`] (durable queue, delivery, receipts)
//! → [`delivery`] (one HTTP attempt) or [`ai`] (the AI desk: adapters, memory, streaming; its
//! reply comes back to the outbox as the answer) → [`store`] (redb, its one writer, observed
//! by the outbox). [`controller_link`] → [`router`] (the one owner of the table) → the table's
//! subscribers (outbox, AI desk), routing by the pure [`routing`]. [`error`] maps every failure
//! to an answer. [`metrics`]: what it counts for `/metrics` (deliveries, queues, AI calls).
//! Posting, retry timing and SSE come from [`crate::hop`]. Behind NAT
//! (`reachable: relay`), [`relay_link`] keeps a stream open to the relay, and takes what it
//! carries through the same relay routes' checks.

pub mod controller_link;
pub mod delivery;
pub mod error;
pub mod metrics;
pub mod outbox;
pub mod relay_link;
pub mod router;
pub mod routes;
pub mod routing;
pub mod signed_hop;
pub mod store;
pub mod tls;

use std::net::TcpListener;
use std::time::Duration;

use actix::{Actor, AsyncContext};
use actix_web::{web, HttpServer};
use anyhow::Context as _;

use crate::config::ProxySettings;
use crate::web::{common_routes, Health, Running};
use crate::wire::host_port::HostPort;
use ai::desk::{AiDesk, DeskSettings};
use controller_link::{ControllerLink, LinkSettings};
use outbox::{Outbox, OutboxSettings};
use router::{Router, SubscribeTable, TableSource};
use routes::ProxyState;
use routing::default_table;
use store::Store;

pub mod ai;

/// Starts the proxy on `listener`. Must be called inside an actix system.
pub async fn start(settings: ProxySettings, listener: TcpListener) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let label = format!("proxy/{}", settings.name);
    let instance: Option<String> = Some(settings.name.to_string());

    let (db, wal, loaded, identity) =
        open_member(&label, &settings.data_dir, "proxy", settings.name.as_str()).await?;
    let seal_path = settings
        .data_dir
        .join(format!("proxy-{}.seal", settings.name));
    let (seal, created) =
        crate::trust::seal::SealKeys::load_or_create(&seal_path, crate::wire::now_ms())
            .map_err(|e| anyhow::anyhow!("{label}: its sealing key: {e}"))?;
    if created {
        log::info!(
            "{label}: made its sealing key {} (id {})",
            seal_path.display(),
            seal.current().0.id()
        );
    }
    let seal = std::sync::Arc::new(seal);
    // What the router applies, readable by the TLS verifier from the first handshake.
    let (applied_tx, applied_rx) =
        tokio::sync::watch::channel(std::sync::Arc::new(router::Published::default()));
    let overlay = settings.root.clone().map(|root| {
        tls::ProxyTls::new(
            settings
                .data_dir
                .join(format!("proxy-{}.crt", settings.name)),
            &identity,
            root,
            applied_rx,
        )
    });
    // The TLS listener for other proxies (unless tls.enabled is false).
    let tls_listener = match (&overlay, &settings.tls) {
        (Some(_), Some(t)) => {
            let l = crate::web::bind(&label, t.listen, "proxy.tls_listen")?;
            let bound = l.local_addr()?;
            let mut advertise = t.advertise.clone();
            crate::up::fix_port_zero(&mut advertise, bound);
            let at = HostPort::parse(&advertise)
                .map_err(|e| anyhow::anyhow!("{label}: proxy.tls_advertise: {e}"))?;
            Some((
                l,
                crate::wire::directory::TlsAddress {
                    host: at.host,
                    port: at.port,
                },
            ))
        }
        (None, Some(_)) => {
            log::warn!("{label}: no controller root is pinned, so it has no certificate and no TLS listener");
            None
        }
        (_, None) => None,
    };
    let tls_address = tls_listener.as_ref().map(|(_, a)| a.clone());
    let (endpoints, source) = match loaded.table {
        Some(t) => (t.endpoints, TableSource::Cache),
        None => (
            default_table(&settings.config, settings.name.as_str()),
            TableSource::Config,
        ),
    };
    // What `/healthz` checks: its store, and that the controller answers (when it has one).
    let contact = settings.root.is_some().then(|| {
        crate::web::health::ControllerContact::new(settings.controller_url.trim_end_matches('/'))
    });
    let full_queues = crate::web::health::FullQueues::default();
    let mut health = Health::new("proxy", instance.as_deref())
        .check(crate::web::health::store(
            &format!("{}'s outbox store", settings.name),
            wal.health(),
        ))
        .check(full_queues.check());
    if let Some(c) = &contact {
        health = health.check(c.check(Duration::from_secs(
            settings.liveness.heartbeat_every_secs.max(1),
        )));
    }
    // Its `/metrics`: the store's timings, deliveries, queues and AI calls.
    health.metrics().watch_store(&wal.timings());
    let metrics = metrics::ProxyMetrics::register(
        health.metrics(),
        settings.config.ai_endpoints.iter().map(|a| a.name.as_str()),
    );
    // The actors are started on the HTTP worker's thread, where the handlers run.
    let state = {
        let boot = Boot {
            settings: settings.clone(),
            endpoints,
            source,
            opened: (db.clone(), wal),
            items: loaded.items,
            view: loaded.view,
            identity,
            seal: seal.clone(),
            proxy_id: loaded.proxy_id.clone(),
            listening: addr,
            overlay: overlay.clone(),
            applied: applied_tx,
            tls_address: tls_address.clone(),
            contact: contact.clone(),
            full_queues: full_queues.clone(),
            metrics,
        };
        crate::web::on_worker(move || boot.start_actors())
    };
    let tag = label.clone();
    let limits = crate::web::ServerLimits::of(&settings.config.server);
    let tls_on = tls_listener.is_some();
    let server = HttpServer::new(move || {
        crate::logging::tag_thread(&tag);
        let state = (*state).clone();
        crate::web::guarded_app(limits)
            .wrap(actix_web::middleware::from_fn(tls::split))
            .configure(|cfg| {
                if tls_on {
                    cfg.app_data(web::Data::new(tls::TlsListening));
                }
            })
            .configure(|cfg| common_routes(cfg, health.clone()))
            .configure(move |cfg| routes::configure(cfg, state))
            // Outermost: a request the TLS split refuses is counted too.
            .wrap(actix_web::middleware::from_fn(
                crate::web::metrics::count_http,
            ))
    })
    .workers(settings.workers)
    .max_connections(limits.max_connections)
    .disable_signals()
    .shutdown_timeout(5)
    .on_connect(tls::on_connect(
        overlay.as_ref().map(|o| o.counters.clone()),
    ))
    .listen(listener)?;
    let tls_addr = tls_listener
        .as_ref()
        .map(|(l, _)| l.local_addr())
        .transpose()?;
    let server = match (tls_listener, &overlay) {
        (Some((l, at)), Some(o)) => {
            let bound = l.local_addr()?;
            let server = server.listen_rustls_0_23(l, (*o.server).clone())?;
            log::info!(
                "{label} takes other proxies over mutual TLS on {bound} (advertised as {}:{})",
                at.host,
                at.port
            );
            server
        }
        _ => server,
    }
    .run();
    log::info!("{label} listening on {addr} (proxy id {})", loaded.proxy_id);
    let on_stop: Box<dyn FnOnce() + Send> = Box::new(move || {
        // The actors stop with the server's worker; release the store file (after the write in
        // progress, if any), so a restart in the same process can open it again.
        db.close();
    });
    Ok(Running {
        advertised: Some(settings.advertise.clone()),
        tls_advertised: tls_address
            .as_ref()
            .map(|t| format!("{}:{}", t.host, t.port)),
        tls_addr,
        // Its plain listener is its own peer's and the original's: no pages.
        scheme: "http",
        label,
        addr,
        server,
        on_stop: vec![on_stop],
    })
}

/// This proxy's own addresses: where it listens, and where it says it can be reached.
/// Opens what a member (a proxy, or a relay: `kind`) keeps in `data_dir` as `KIND-NAME.*`:
/// its store (`.redb` with its `.wal`, repaired after a crash) and what it loaded, and its
/// identity key (`.key`, made on first start, and said so).
pub(crate) async fn open_member(
    label: &str,
    data_dir: &std::path::Path,
    kind: &str,
    name: &str,
) -> anyhow::Result<(
    std::sync::Arc<crate::storage::SharedDb>,
    crate::storage::Wal,
    store::Loaded,
    std::sync::Arc<crate::trust::Identity>,
)> {
    std::fs::create_dir_all(data_dir).with_context(|| {
        format!(
            "creating the data directory {} for {label}",
            data_dir.display()
        )
    })?;
    let file = |ext: &str| data_dir.join(format!("{kind}-{name}.{ext}"));
    let (path, log) = (file("redb"), file("wal"));
    let shown = path.display().to_string();
    let (tag, who) = (label.to_string(), name.to_string());
    let (db, wal, loaded) = web::block(move || {
        let (db, wal) = store::open(&path, &log, &tag)?;
        let loaded = store::load(&db, &who)?;
        Ok::<_, error::ProxyError>((db, wal, loaded))
    })
    .await
    .map_err(|e| anyhow::anyhow!("opening {shown}: {e}"))??;
    let key_path = file("key");
    let (identity, created) = crate::trust::Identity::load_or_create(&key_path)
        .map_err(|e| anyhow::anyhow!("{label}: its identity key: {e}"))?;
    if created {
        log::info!(
            "{label}: made its identity key {} (fingerprint {})",
            key_path.display(),
            identity.fingerprint()
        );
    }
    Ok((db, wal, loaded, std::sync::Arc::new(identity)))
}

fn own_addresses(listening: std::net::SocketAddr, advertise: &str) -> Vec<HostPort> {
    let mut own = vec![HostPort {
        host: listening.ip().to_string(),
        port: listening.port(),
    }];
    own.extend(HostPort::parse(advertise).ok());
    own
}

/// What the proxy's actors start from.
struct Boot {
    settings: ProxySettings,
    endpoints: crate::wire::control_plane::EndpointTable,
    source: TableSource,
    /// The database and its log, for the store's one writer.
    opened: (
        std::sync::Arc<crate::storage::SharedDb>,
        crate::storage::Wal,
    ),
    items: Vec<(u64, store::Record)>,
    /// The directory view stored last.
    view: Option<crate::wire::directory::Snapshot>,
    identity: std::sync::Arc<crate::trust::Identity>,
    seal: std::sync::Arc<crate::trust::seal::SealKeys>,
    proxy_id: String,
    /// The listener's address: a table entry naming it would have this proxy post to itself.
    listening: std::net::SocketAddr,
    /// Its certificate and TLS configs (none without a pinned root).
    overlay: Option<tls::ProxyTls>,
    /// Where the router publishes what it applied (the TLS verifier reads it).
    applied: tokio::sync::watch::Sender<std::sync::Arc<router::Published>>,
    /// Its TLS listener's address as other proxies reach it.
    tls_address: Option<crate::wire::directory::TlsAddress>,
    /// When the controller last answered (none without a pinned root: no controller then).
    contact: Option<crate::web::health::ControllerContact>,
    /// Where the outbox tells which queues are at their limit.
    full_queues: crate::web::health::FullQueues,
    /// What it counts for `/metrics`, registered in its role's registry.
    metrics: metrics::ProxyMetrics,
}

impl Boot {
    /// Starts the proxy's actors on the current thread (an HTTP worker's).
    fn start_actors(self) -> ProxyState {
        let Boot {
            settings,
            endpoints,
            source,
            opened,
            items,
            view,
            identity,
            seal,
            proxy_id,
            listening,
            overlay,
            applied,
            tls_address,
            contact,
            full_queues,
            metrics,
        } = self;
        let peer_url = settings.peer_url.trim_end_matches('/').to_string();
        let hops = std::sync::Arc::new(signed_hop::SignedHops::new(
            settings.name.as_str(),
            identity.clone(),
            seal.clone(),
            crate::wire::now_ms(),
        ));
        // The outbox observes the writer (it learns of its committed changes from there).
        let outbox_ctx = actix::Context::<Outbox>::new();
        let store: actix::Addr<Store> = store::writer(opened)
            .observed_by(outbox_ctx.address().recipient())
            .start();
        // One HTTP client for the outbox and the AI desk (a client costs about a megabyte), and
        // one more for the own peer only when the hop has a link token to send.
        let attempt_timeout = Duration::from_secs(settings.delivery.attempt_timeout_secs.max(1));
        let client = awc::Client::builder().timeout(attempt_timeout).finish();
        let router = Router::new(
            settings.name.clone(),
            endpoints,
            source,
            view,
            store.clone(),
            settings.root.is_none(),
        )
        .with_published(applied);
        let published = router.published();
        let controller_url = settings.controller_url.trim_end_matches('/').to_string();
        // Overlay hops: to members by their TLS names, found in the directory (proxies) or
        // the configured URL (the controller).
        let overlay_for_state = overlay.clone();
        let overlay_client = overlay
            .as_ref()
            .map(|o| tls::overlay_clients(o, published.clone(), &controller_url, attempt_timeout));
        let (overlay_client, fresh_client) = match overlay_client {
            Some((c, f)) => (Some(c), Some(f)),
            None => (None, None),
        };
        // The own peer's page beyond loopback is HTTPS: checked against the system's roots and
        // this data dir's page CA (never the overlay's).
        let page_tls = peer_url
            .starts_with("https://")
            .then(|| crate::web::page_tls::client(&settings.data_dir));
        let clients = outbox::Clients {
            own_peer: if settings.link.is_set() || page_tls.is_some() {
                crate::hop::link::client_with(&settings.link, attempt_timeout, page_tls)
            } else {
                client.clone()
            },
            others: client,
            overlay: overlay_client.clone(),
            signer: hops.signer(),
            directory: published.clone(),
        };
        let desk = AiDesk::new(
            DeskSettings {
                me: settings.name.to_string(),
                peer_url: peer_url.clone(),
                local_ai: settings.config.ai_endpoints.clone(),
                chunk_timeout: attempt_timeout,
                max_text_bytes: settings.delivery.max_message_bytes,
                metrics: metrics.ai.clone(),
            },
            store.clone(),
            clients.own_peer.clone(),
        )
        .start();
        let outbox = outbox_ctx.run(Outbox::new(
            OutboxSettings {
                me: settings.name.clone(),
                peer_url: peer_url.clone(),
                delivery: settings.delivery.clone(),
                not_peers: routing::not_peers(
                    &own_addresses(listening, &settings.advertise),
                    &peer_url,
                    &settings.controller_url,
                ),
                full: full_queues,
                metrics: metrics.delivery.clone(),
                queues: metrics.queues.clone(),
            },
            router.table(),
            store.clone(),
            desk.clone(),
            clients,
            items,
        ));
        let router = router.start();
        router.do_send(SubscribeTable {
            subscriber: outbox.clone().recipient(),
        });
        router.do_send(SubscribeTable {
            subscriber: desk.clone().recipient(),
        });
        let for_relay = (
            overlay_client.clone().zip(fresh_client.clone()),
            identity.clone(),
            published.clone(),
        );
        let controller = match (settings.root.clone(), contact) {
            (Some(root), Some(contact)) => {
                let link = LinkSettings {
                    contact,
                    controller_url,
                    proxy_id,
                    instance_name: settings.name.to_string(),
                    advertise: settings.advertise.clone(),
                    heartbeat_every: Duration::from_secs(
                        settings.liveness.heartbeat_every_secs.max(1),
                    ),
                    ai_endpoints: settings.config.ai_endpoints.clone(),
                    identity,
                    seal: Some(seal),
                    root,
                    join: settings.join.clone(),
                    tls: overlay.zip(overlay_client.zip(fresh_client)).map(
                        |(tls, (client, fresh))| controller_link::LinkTls {
                            tls,
                            client,
                            fresh,
                            address: tls_address,
                        },
                    ),
                    role: Default::default(),
                    via: settings.via.clone(),
                    auto: settings.auto,
                    relay_report: None,
                };
                Some(ControllerLink::new(link, router.clone()).start())
            }
            _ => {
                log::error!(
                    "proxy {}: no controller root is pinned, so it follows no controller (a \
                     table nobody vouches for is not believed) and routes from its stored or \
                     configured table. Pin the root with --controller-root sha256:… or \
                     controller.root in config.yaml (`overlay controller init` prints it)",
                    settings.name
                );
                None
            }
        };
        let state = ProxyState {
            me: settings.name.clone(),
            router,
            outbox,
            desk,
            max_body_bytes: settings.delivery.max_body_bytes,
            max_message_bytes: settings.delivery.max_message_bytes,
            replay_horizon_ms: outbox::seen_horizon_ms(&settings.delivery),
            controller,
            published,
            link: settings.link.clone(),
            hops,
            tls: overlay_for_state,
            legacy: settings.config.legacy_proxies.clone().into(),
            hosts: crate::web::host::HostCheck::new(
                std::iter::once(settings.advertise.as_str()).chain(
                    settings
                        .config
                        .server
                        .allowed_hosts
                        .iter()
                        .map(String::as_str),
                ),
                &[],
            ),
            local_ai: settings
                .config
                .ai_endpoints
                .iter()
                .map(|a| a.name.to_string())
                .collect(),
        };
        match (&settings.via, for_relay) {
            (Some(relay), (Some((client, fresh)), identity, published)) => {
                relay_link::RelayLink::new(relay_link::RelayLinkSettings {
                    me: settings.name.to_string(),
                    relay: relay.clone(),
                    identity,
                    client,
                    fresh,
                    published,
                    state: state.clone(),
                })
                .start();
            }
            (Some(relay), (None, ..)) => log::error!(
                "proxy {}: it is to be reached through relay {relay}, but has no TLS to reach \
                 it (no controller root pinned): nothing reaches it",
                settings.name
            ),
            (None, _) => {}
        }
        state
    }
}

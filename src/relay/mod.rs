//! The relay role (`overlay relay --name NAME`): carries requests to proxies that cannot be
//! reached directly (behind NAT). Such a proxy keeps one stream open to the relay; other
//! proxies send to it through the relay, which forwards by key and holds nothing durable.
//!
//! A relay is a member of the overlay like a proxy: it joins with its own token, registers
//! (as a relay) and is listed in the signed directory, gets its TLS certificate from the
//! controller's CA, and follows the directory to know whose keys may attach and send. It
//! connects out to nothing but the controller at its configured URL: never to an address a
//! client or the directory gives it.
//!
//! - [`hub`]: the [`hub::Hub`] actor: attachments, carried requests, queues, counters.
//! - [`routes`]: the HTTP routes, thin (rate, proof, then the hub).
//! - [`front`]: the TLS listener: attached streams served leanly, the rest by the routes.
//! - [`events`]: an attached stream's events as bytes, with its keep-alives.
//! - [`records`]: an attached stream's TLS once rustls has let it go: its key alone.
//! - [`error`]: its error type.
//! - [`metrics`]: its series for `/metrics`, read from the hub's report.

pub mod error;
pub mod events;
pub mod front;
pub mod hub;
pub mod metrics;
pub mod records;
pub mod routes;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_service::{map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::AppConfig;

use crate::config::RelaySettings;
use crate::proxy::controller_link::{ControllerLink, LinkSettings, LinkTls};
use crate::proxy::router::{Published, Router, TableSource};
use crate::proxy::{store, tls::ProxyTls};
use crate::web::{common_routes, Health, Running};
use crate::wire::directory::{Role, TlsAddress};
use crate::wire::host_port::HostPort;

/// Starts relay `settings.name`: its plain listener on `listener`, its TLS listener as
/// configured.
pub async fn start(settings: RelaySettings, listener: TcpListener) -> anyhow::Result<Running> {
    let label = format!("relay/{}", settings.name);
    let root = settings.root.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{label}: a relay needs the controller's root pinned (--controller-root sha256:… or \
             controller.root in config.yaml; `overlay controller init` prints it): it serves \
             only keys the signed directory lists"
        )
    })?;
    let addr = listener.local_addr()?;
    let name = settings.name.to_string();
    let file = |ext: &str| settings.data_dir.join(format!("relay-{name}.{ext}"));
    let (db, wal, loaded, identity) =
        crate::proxy::open_member(&label, &settings.data_dir, "relay", &name).await?;
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(Arc::new(Published::default()));
    let overlay = ProxyTls::new(file("crt"), &identity, root.clone(), applied_rx);
    let tls_listener = crate::web::bind(&label, settings.tls.listen, "relays[].relay.tls_listen")?;
    let bound = tls_listener.local_addr()?;
    let mut advertise = settings.tls.advertise.clone();
    crate::up::fix_port_zero(&mut advertise, bound);
    let at = HostPort::parse(&advertise)
        .map_err(|e| anyhow::anyhow!("{label}: relays[].relay.tls_advertise: {e}"))?;
    let tls_address = TlsAddress {
        host: at.host,
        port: at.port,
    };
    let server_tls = crate::trust::tls::server_config_without_clients(overlay.leaf.clone());
    // Its report rides on heartbeats: a few seconds old at most on the dashboard.
    let heartbeat_every = Duration::from_secs(settings.liveness.heartbeat_every_secs.clamp(1, 5));
    let contact =
        crate::web::health::ControllerContact::new(settings.controller_url.trim_end_matches('/'));
    let health = Health::new("relay", Some(name.as_str()))
        .check(crate::web::health::store(
            &format!("relay {name}'s store"),
            wal.health(),
        ))
        .check(contact.check(heartbeat_every));
    // Its `/metrics`: the store's timings, and the hub's report read at each scrape.
    health.metrics().watch_store(&wal.timings());
    let (report_tx, report_rx) = tokio::sync::watch::channel(Default::default());
    health
        .metrics()
        .register_collector(Box::new(metrics::RelayCollector(report_rx.clone())));
    let listeners = health.metrics().sse_listeners("relay_attach");
    let state = {
        let (settings, identity, overlay) = (settings.clone(), identity.clone(), overlay.clone());
        let proxy_id = loaded.proxy_id.clone();
        crate::web::on_worker(move || {
            let store = store::writer((db, wal)).start();
            let router = Router::new(
                settings.name.clone(),
                Default::default(),
                TableSource::Config,
                loaded.view,
                store,
                false,
            )
            .with_published(applied_tx);
            let published = router.published();
            let router = router.start();
            let controller_url = settings.controller_url.trim_end_matches('/').to_string();
            let (client, fresh) = crate::proxy::tls::overlay_clients(
                &overlay,
                published.clone(),
                &controller_url,
                Duration::from_secs(10),
            );
            let hub = hub::Hub::new(settings.name.as_str(), settings.ping_every)
                .with_report(report_tx)
                .with_listeners(listeners)
                .with_directory(published.clone())
                .start();
            let link = LinkSettings {
                contact,
                controller_url,
                proxy_id,
                instance_name: settings.name.to_string(),
                advertise: settings.advertise.clone(),
                heartbeat_every,
                ai_endpoints: Vec::new(),
                identity,
                seal: None,
                root,
                join: settings.join.clone(),
                tls: Some(LinkTls {
                    tls: overlay,
                    client,
                    fresh,
                    address: Some(tls_address),
                }),
                role: Role::Relay,
                via: None,
                auto: false,
                relay_report: Some(report_rx),
            };
            ControllerLink::new(link, router).start();
            routes::RelayState::new(
                settings.name.as_str(),
                hub,
                published,
                settings.max_body_bytes,
                settings.ping_every,
            )
        })
    };
    let tag = label.clone();
    let limits = crate::web::ServerLimits::of(&settings.server);
    let app = move || {
        crate::logging::tag_thread(&tag);
        let state = (*state).clone();
        let health = health.clone();
        (
            crate::web::guarded_app(limits)
                .configure(|cfg| common_routes(cfg, health))
                .configure({
                    let state = state.clone();
                    move |cfg| routes::configure(cfg, state)
                }),
            state,
        )
    };
    let server = serve(
        app,
        listener,
        tls_listener,
        server_tls,
        settings.workers,
        limits.max_connections,
    )?;
    log::info!(
        "{label} listening on {addr}; proxies attach over TLS on {bound} (advertised as \
         {advertise})"
    );
    Ok(Running {
        advertised: Some(settings.advertise.clone()),
        tls_advertised: Some(advertise.clone()),
        tls_addr: Some(bound),
        scheme: "http",
        label,
        addr,
        server,
        on_stop: vec![],
    })
}

/// Keep-alive and request timeouts of the relay's HTTP connections, and how long one lingers
/// after its answer, as actix-web's `HttpServer` has them.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const LINGER: Duration = Duration::from_secs(1);

/// The relay's server: `plain` and its TLS listener (`tls` with `server_tls`, through
/// [`front`]), each worker with the app and state `app` makes. Attached streams are long-lived
/// (a relay holds one per proxy behind NAT) and live in tasks of their own, outside
/// `max_connections` (at least 50,000 a worker), which bounds the other connections.
pub fn serve<F, T>(
    app: F,
    plain: TcpListener,
    tls: TcpListener,
    mut server_tls: rustls::ServerConfig,
    workers: usize,
    max_connections: usize,
) -> std::io::Result<actix_web::dev::Server>
where
    F: Fn() -> (actix_web::App<T>, routes::RelayState) + Send + Clone + 'static,
    T: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<actix_web::body::BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    // An attached stream keeps only its traffic key once its answer has gone (front.rs).
    server_tls.enable_secret_extraction = true;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    // The app reads nothing of its config (host, scheme): the default is as good as any.
    let plain_app = app.clone();
    Ok(actix_server::Server::build()
        .workers(workers)
        // Many proxies share a relay: each sender's and answerer's kept-alive connection, and
        // every handshake under way, holds a place (attached streams do not).
        .max_concurrent_connections(max_connections.max(50_000))
        .disable_signals()
        .shutdown_timeout(2)
        .listen("relay-plain", plain, move || {
            let (app, _) = plain_app();
            // As actix-web's HttpServer sets them (keep-alive and request timeouts, and a
            // second to linger after a refusal so the client reads it rather than a reset).
            actix_http::HttpService::build()
                .keep_alive(HTTP_TIMEOUT)
                .client_request_timeout(HTTP_TIMEOUT)
                .client_disconnect_timeout(LINGER)
                .finish(map_config(
                    app.into_factory()
                        .map_err(|e: actix_web::Error| e.error_response()),
                    |_| AppConfig::default(),
                ))
                .tcp()
        })?
        .listen("relay-tls", tls, move || {
            let (app, state) = app();
            let h1 = actix_http::HttpService::build()
                .keep_alive(HTTP_TIMEOUT)
                .client_request_timeout(HTTP_TIMEOUT)
                .client_disconnect_timeout(LINGER)
                .on_connect_ext(|_: &front::Conn, ext: &mut actix_web::dev::Extensions| {
                    ext.insert(crate::trust::tls::OverTls);
                })
                .h1(map_config(
                    app.into_factory()
                        .map_err(|e: actix_web::Error| e.error_response()),
                    |_| AppConfig::default(),
                ));
            let acceptor = acceptor.clone();
            actix_service::fn_factory(move || {
                let made = actix_service::ServiceFactory::new_service(&h1, ());
                let (acceptor, state) = (acceptor.clone(), state.clone());
                async move {
                    let h1 = std::rc::Rc::new(made.await?);
                    Ok::<_, ()>(actix_service::fn_service(move |tcp| {
                        front::serve(tcp, acceptor.clone(), state.clone(), h1.clone())
                    }))
                }
            })
        })?
        .run())
}

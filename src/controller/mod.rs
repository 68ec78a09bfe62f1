//! The controller role: the registry of proxies, their endpoint tables (pushed live to proxies
//! that subscribe), the original's control-plane API (for the proxies of the original listed
//! under `legacy_proxies` only), and the live dashboard.
//!
//! - [`registry`]: the `Registry` actor, owner of all mutable state, and the liveness rules.
//! - [`tables`]: pure table logic: config → table, deep-merged edits, validation, secret refusal.
//! - [`directory`]: the directory (pure), its versions and the signed documents.
//! - [`trust`]: the controller's keys on disk (root, online key, certificate, admin token).
//! - [`store`]: redb persistence of registrations, edits, pins, tokens, audit and version.
//! - [`routes`]: the HTTP routes (legacy and `/api/v1/`), thin.
//! - [`dashboard`]: the maud views.
//! - [`error`]: the role's error type and its legacy-shaped answers.
//! - [`metrics`]: its series for `/metrics` (proxies by state, streams, directory version).
//!
//! [`start`] is the role's one door: the binary and the tests both call it with a bound
//! listener (port 0 in tests) and get back a [`Running`] server. It never carries chat traffic.

pub mod admin;
pub mod dashboard;
pub mod directory;
pub mod error;
pub mod liveness;
pub mod metrics;
pub mod registry;
pub mod routes;
pub mod store;
pub mod tables;
pub mod tls;
pub mod trust;

use std::net::TcpListener;
use std::sync::Arc;

use actix::Actor;
use actix_web::{web, HttpServer};

use crate::config::ControllerSettings;
use crate::web::{common_routes, role_arbiter, Health, Running};

use self::registry::Registry;
use self::routes::AppState;
use self::store::Store;
use crate::wire::directory::Directory;

/// What a process that runs the controller may ask of it directly (`overlay up` provisions its
/// own users through it): the root fingerprint and the registry.
#[derive(Clone)]
pub struct Handle {
    pub root: crate::trust::Fingerprint,
    pub registry: actix::Addr<Registry>,
    /// `https://…` of the TLS listener proxies use (none: TLS is off or there is no CA).
    pub tls_url: Option<String>,
}

/// Starts the controller on `listener`. Must be called inside an actix system.
pub async fn start(settings: ControllerSettings, listener: TcpListener) -> anyhow::Result<Running> {
    Ok(start_with_handle(settings, listener).await?.0)
}

/// [`start`], and a [`Handle`] on the running controller.
pub async fn start_with_handle(
    settings: ControllerSettings,
    listener: TcpListener,
) -> anyhow::Result<(Running, Handle)> {
    let addr = listener.local_addr()?;
    let label = "controller".to_string();
    let keys = trust::load(&settings.data_dir)
        .map_err(|e| anyhow::anyhow!("the controller's keys: {e}"))?;
    log::info!(
        "controller root fingerprint {} (proxies pin it with --controller-root)",
        keys.root
    );
    let store = Store::open(&settings.data_dir).await?;
    let health = Health::new("controller", None).check(crate::web::health::store(
        "the controller's store",
        store.health(),
    ));
    health.metrics().watch_commits(store.commit_timing());
    let loaded = store
        .load()
        .await
        .map_err(|e| anyhow::anyhow!("reading the controller store: {e}"))?;
    let arbiter = role_arbiter(&label);
    let config = settings.config.clone();
    let root = keys.root.clone();
    let signer = directory::Signer {
        online: keys.online,
        cert: keys.cert,
    };
    // TLS for proxies: on by default, once the overlay CA exists.
    let ca = keys.ca.map(Arc::new);
    let (pins_tx, pins_rx) = tokio::sync::watch::channel(Arc::new(Directory::default()));
    let tls_listener = match (&ca, settings.config.tls.enabled) {
        (Some(_), true) => {
            let want = settings.config.controller_tls_listen();
            Some(crate::web::bind(
                "the controller (TLS)",
                want,
                "controller.tls_listen",
            )?)
        }
        (None, true) => {
            log::error!(
                "the controller has no overlay CA and the root key is not in {}: proxies cannot \
                 get TLS certificates, so none can register; bring the root key back and run \
                 `overlay controller init --root-key PATH` (README, Trust)",
                settings.data_dir.display()
            );
            None
        }
        (_, false) => {
            log::warn!(
                "tls.enabled is false: proxies reach this controller in plain HTTP (signed, \
                 but readable on the path)"
            );
            None
        }
    };
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let desk = registry::CaDesk::new(
        ca.clone(),
        keys.previous_ca.clone(),
        tls_addr.is_some(),
        settings.config.tls.leaf_ms(),
        pins_tx,
    );
    let gauges = metrics::RegistryGauges::register(health.metrics());
    let registry = Registry::start_in_arbiter(&arbiter.handle(), move |_| {
        Registry::new(config, store, loaded, root, signer)
            .with_tls(desk)
            .with_gauges(gauges)
    });
    let handle = Handle {
        root: keys.root.clone(),
        registry: registry.clone(),
        tls_url: tls_addr.map(|a| format!("https://{}", crate::config::reachable(a))),
    };
    let tls_url = web::Data::new(tls::TlsUrl(handle.tls_url.clone()));
    // The names browsers open the dashboard by: the controller's URL's host, the allowed
    // ones. Its HTTPS certificate beyond loopback names them (see `crate::web::page_tls`), and
    // the Host check takes them.
    let (url_host, _, _) = crate::wire::control_plane::split_url(&settings.config.controller_url());
    let mut names = settings.config.server.allowed_hosts.clone();
    names.push(url_host);
    let serving = crate::web::page_tls::for_listener(
        &label,
        addr,
        &names,
        settings.config.server.page_tls.as_ref(),
        settings.config.server.pages_plain_http,
        &settings.data_dir,
    )?;
    let https = matches!(serving, crate::web::page_tls::PageServing::Https(_));
    let gate = web::Data::new(
        admin::AdminGate::new(keys.admin_token, &settings.data_dir).secure_cookie(https),
    );
    let registry_data = web::Data::new(registry.clone());
    let keys_root = keys.root.clone();
    let state = web::Data::new(AppState {
        registry,
        root: keys.root,
        max_body_bytes: settings.config.delivery.max_body_bytes,
        instances: settings.config.instances.len(),
        ai_endpoints: settings.config.ai_endpoints.len(),
    });
    let tag = label.clone();
    // Browsers open the dashboard by address, localhost or one of `names`; what proxies call
    // is exempt (signed, or the original's listed addresses), and `/metrics` (its own check).
    let hosts = web::Data::new(crate::web::host::HostCheck::new(
        names.iter().map(String::as_str),
        routes::NOT_BROWSER_FACING,
    ));
    let limits = crate::web::ServerLimits::of(&settings.config.server);
    let server = HttpServer::new(move || {
        crate::logging::tag_thread(&tag);
        crate::web::guarded_app(limits)
            .app_data(state.clone())
            .app_data(hosts.clone())
            .app_data(gate.clone())
            .app_data(registry_data.clone())
            .app_data(tls_url.clone())
            .wrap(actix_web::middleware::from_fn(admin::require))
            .wrap(actix_web::middleware::from_fn(tls::split))
            .wrap(actix_web::middleware::from_fn(crate::web::host::require))
            .configure(|cfg| common_routes(cfg, health.clone()))
            .configure(routes::configure)
            .default_service(web::to(routes::no_route))
            // Outermost: requests the checks above refuse are counted too.
            .wrap(actix_web::middleware::from_fn(
                crate::web::metrics::count_http,
            ))
    })
    .workers(settings.workers)
    .max_connections(limits.max_connections)
    .disable_signals()
    // Every request but the SSE streams ends in milliseconds, and the streams (every proxy
    // holds one) never end by themselves: a graceful stop waits this long for them, no longer.
    .shutdown_timeout(1)
    .on_connect(tls::on_connect(tls_addr.map(|a| a.port())));
    let server = match serving {
        crate::web::page_tls::PageServing::Https(config) => {
            server.listen_rustls_0_23(listener, (*config).clone())?
        }
        crate::web::page_tls::PageServing::Plain => server.listen(listener)?,
    };
    let server = match (tls_listener, ca) {
        (Some(l), Some(ca)) => {
            let config = tls::server_config(ca, keys_root, pins_rx)?;
            server.listen_rustls_0_23(l, config)?
        }
        _ => server,
    }
    .run();
    log::info!("{label} listening on {addr}");
    if let Some(url) = &handle.tls_url {
        log::info!("{label} takes proxies over TLS at {url} (their --controller-url)");
    }
    Ok((
        Running {
            advertised: None,
            tls_advertised: None,
            tls_addr,
            scheme: if https { "https" } else { "http" },
            label,
            addr,
            server,
            // Stopping the registry's arbiter drops the registry and with it the store, so the
            // redb file is free for the next controller on this data directory.
            on_stop: vec![Box::new(move || {
                arbiter.stop();
                let _ = arbiter.join();
            })],
        },
        handle,
    ))
}

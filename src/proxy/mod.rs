//! The proxy role: see the crate docs for its place in the picture.
//!
//! [`start`] is the role's one door: the binary and the tests both call it with a bound
//! listener (port 0 in tests) and get back a [`Running`] server.

use std::net::TcpListener;

use actix_web::{App, HttpServer};

use crate::config::ProxySettings;
use crate::web::{common_routes, Health, Running};

pub mod ai;

/// Starts the proxy on `listener`. Must be called inside an actix system.
pub async fn start(settings: ProxySettings, listener: TcpListener) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let label = format!("proxy/{}", settings.name);
    let instance: Option<String> = Some(settings.name.to_string());
    let tag = label.clone();
    let server = HttpServer::new(move || {
        crate::logging::tag_thread(&tag);
        App::new().configure(|cfg| common_routes(cfg, Health::new("proxy", instance.as_deref())))
    })
    .workers(settings.workers)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    log::info!("{label} listening on {addr}");
    Ok(Running {
        label,
        addr,
        server,
        on_stop: Vec::new(),
    })
}

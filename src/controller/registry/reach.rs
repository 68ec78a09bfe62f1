//! `reachable: auto`: whether the controller reaches a proxy at its advertised TLS address.
//! The probe is a TLS handshake in which that proxy must show its own certificate (the overlay
//! CA's, for its pinned key) and prove it holds the key ([`crate::trust::tls::answers_as`]):
//! a port that merely accepts connections, or another member answering there, is not it.
//!
//! Probes are bounded: at most one per proxy per [`PROBE_EVERY_MS`] (a proxy registers again
//! at each reconnect), but for a probe that failed, tried again after 1 s, 2 s, 4 s… up to
//! that (a proxy is probed as it joins, before its certificate is installed); at most
//! [`MAX_IN_FLIGHT`] at once, each within [`PROBE_TIMEOUT`]; never to an address of the
//! controller's own listeners, nor to an unspecified, broadcast or multicast one. Until a probe says otherwise, the directory sends such a proxy's messages
//! through its relay, which works from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{ActorFutureExt, AsyncContext, Context};

use super::Registry;
use crate::wire::now_ms;

/// The least time between two probes of one proxy.
pub const PROBE_EVERY_MS: u64 = 60_000;
/// Probes under way at most.
const MAX_IN_FLIGHT: usize = 4;
/// How long a probe may take, all of it (however slowly a server answers).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Addresses of one name tried at most.
const MAX_ADDRESSES: usize = 4;

/// What the probes found.
#[derive(Debug, Default)]
pub struct Probes {
    /// Proxy ids reached directly at their last probe.
    pub direct: BTreeSet<String>,
    /// Proxy id → the earliest time (ms) it may be probed again.
    next_at: BTreeMap<String, u64>,
    /// Proxy id → probes that failed in a row.
    failures: BTreeMap<String, u32>,
    /// Proxy ids being probed now.
    probing: BTreeSet<String>,
    in_flight: usize,
}

impl Probes {
    /// Whether proxy `id` may be probed at `now`.
    fn due(&self, id: &str, now: u64) -> bool {
        self.in_flight < MAX_IN_FLIGHT
            && !self.probing.contains(id)
            && self.next_at.get(id).is_none_or(|at| now >= *at)
    }

    /// Notes a probe of `id` that ended at `now`; answers when to probe again (failed).
    fn ended(&mut self, id: &str, reached: bool, now: u64) -> Option<u64> {
        self.in_flight -= 1;
        self.probing.remove(id);
        if reached {
            self.failures.remove(id);
            return None;
        }
        let n = self.failures.entry(id.to_string()).or_default();
        *n = n.saturating_add(1);
        let wait = (1000u64 << (*n - 1).min(16)).min(PROBE_EVERY_MS);
        self.next_at.insert(id.to_string(), now + wait);
        Some(wait)
    }

    /// Forgets `id` (it left the registry).
    pub fn forget(&mut self, id: &str) {
        self.probing.remove(id);
        self.direct.remove(id);
        self.next_at.remove(id);
        self.failures.remove(id);
    }
}

/// The addresses of `host:port` worth a probe: resolved, without `own` (the controller's
/// listeners; an unspecified IP there stands for every address at that port) and without
/// addresses no proxy is at. Err says why none is left.
fn targets(host: &str, port: u16, own: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let found: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port} does not resolve: {e}"))?
        .collect();
    let mine = |a: &SocketAddr| {
        own.iter()
            .any(|o| o.port() == a.port() && (o.ip() == a.ip() || o.ip().is_unspecified()))
    };
    let nowhere = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    let left: Vec<SocketAddr> = found
        .iter()
        .filter(|a| !mine(a) && !nowhere(a.ip()))
        .copied()
        .take(MAX_ADDRESSES)
        .collect();
    if left.is_empty() {
        return Err(format!(
            "{host}:{port} is the controller's own address, or no address at all: not probed"
        ));
    }
    Ok(left)
}

impl Registry {
    /// Probes `reachable: auto` proxy `proxy_id` when it is due; the directory follows.
    pub(super) fn probe(&mut self, proxy_id: &str, ctx: &mut Context<Self>) {
        let now = now_ms();
        let Some(rec) = self.proxies.get(proxy_id) else {
            return;
        };
        if !rec.auto {
            return;
        }
        if !self.reach.due(proxy_id, now) {
            // Four under way: this one when a place is free (its own timing, when not due).
            if self.reach.in_flight >= MAX_IN_FLIGHT && !self.reach.probing.contains(proxy_id) {
                let again = proxy_id.to_string();
                ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                    act.probe(&again, ctx)
                });
            }
            return;
        }
        let (Some(tls), Some(verifier)) = (rec.tls.clone(), self.tls.verifier(&self.root)) else {
            return;
        };
        self.reach
            .next_at
            .insert(proxy_id.to_string(), now + PROBE_EVERY_MS);
        self.reach.in_flight += 1;
        self.reach.probing.insert(proxy_id.to_string());
        let probed_tls = tls.clone();
        let own = [
            self.config.controller.listen,
            self.config.controller_tls_listen(),
        ];
        let name = crate::trust::x509::tls_name(&rec.instance_name);
        let (id, user) = (proxy_id.to_string(), rec.instance_name.clone());
        let probe = actix_web::web::block(move || {
            let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
            let mut last = String::new();
            for addr in targets(&tls.host, tls.port, &own)? {
                match crate::trust::tls::answers_as(verifier.clone(), &name, addr, deadline) {
                    Ok(()) => return Ok(addr),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        ctx.spawn(wrap_future(probe).map(move |res, act: &mut Self, ctx| {
            // It left, or moved, meanwhile: this result is of no one.
            let current = act
                .proxies
                .get(&id)
                .is_some_and(|r| r.auto && r.tls.as_ref() == Some(&probed_tls));
            if !current {
                act.reach.in_flight -= 1;
                act.reach.probing.remove(&id);
                return;
            }
            let reached = match res {
                Ok(Ok(addr)) => {
                    log::info!("{user}'s proxy answers at {addr}: reached directly");
                    true
                }
                Ok(Err(why)) => {
                    log::info!("{user}'s proxy is reached through its relay: {why}");
                    false
                }
                Err(e) => {
                    log::warn!("could not probe {user}'s proxy: {e}");
                    false
                }
            };
            if let Some(wait) = act.reach.ended(&id, reached, now_ms()) {
                let again = id.clone();
                ctx.run_later(Duration::from_millis(wait), move |act, ctx| {
                    act.probe(&again, ctx)
                });
            }
            let changed = if reached {
                act.reach.direct.insert(id)
            } else {
                act.reach.direct.remove(&id)
            };
            if changed {
                act.changed(ctx);
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_own_addresses_and_nowhere_are_never_probed() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:8000".parse().unwrap(),
            "0.0.0.0:8443".parse().unwrap(),
        ];
        assert!(targets("127.0.0.1", 8000, &own).is_err());
        assert!(
            targets("10.1.2.3", 8443, &own).is_err(),
            "0.0.0.0 is every address"
        );
        assert!(targets("0.0.0.0", 9000, &own).is_err());
        assert!(targets("255.255.255.255", 9000, &own).is_err());
        assert!(targets("224.0.0.1", 9000, &own).is_err());
        assert_eq!(
            targets("127.0.0.1", 9000, &own).unwrap(),
            vec!["127.0.0.1:9000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(targets("[::1]", 9000, &own).unwrap().len(), 1);
    }

    #[test]
    fn a_proxy_is_probed_at_most_once_a_minute_sooner_after_a_failure_and_a_few_at_a_time() {
        let mut p = Probes::default();
        assert!(p.due("a", 1_000));
        p.next_at.insert("a".into(), 1_000 + PROBE_EVERY_MS);
        p.in_flight = 1;
        assert!(!p.due("a", 1_000 + PROBE_EVERY_MS - 1));
        // Reached: nothing more until the minute is over.
        assert_eq!(p.ended("a", true, 2_000), None);
        assert!(p.due("a", 1_000 + PROBE_EVERY_MS));
        // Failed: again after 1 s, 2 s, 4 s…, never more often than that, at most a minute.
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                p.in_flight += 1;
                p.ended("b", false, 0).unwrap()
            })
            .collect();
        assert_eq!(&waits[..4], &[1_000, 2_000, 4_000, 8_000]);
        assert_eq!(waits[7], PROBE_EVERY_MS);
        assert!(!p.due("b", PROBE_EVERY_MS - 1));
        p.in_flight = MAX_IN_FLIGHT;
        assert!(!p.due("c", 1_000));
        // Never two probes of one proxy at once, however long the first takes.
        p.in_flight = 0;
        p.probing.insert("d".into());
        assert!(!p.due("d", u64::MAX));
    }
}

//! The `Registry` actor: every registered proxy (id, instance, address, last seen), every
//! instance's table edits, the liveness sweep, and the live subscribers (proxies watching their
//! table, dashboards watching everything).
//!
//! Owns all mutable controller state. A change is answered as success only after the store has
//! it. It never parses HTTP and never renders a whole page (rows only, for the live dashboard).
//!
//! - [`trust`]: joining with a token, signed registration, rotation, tokens, revocation, the
//!   audit log, and who the original's API answers (listed `legacy_proxies`, never a pinned
//!   name).
//! - [`publish`]: the directory's versions and the signed snapshots and deltas each proxy's
//!   stream is sent; acknowledgements.

mod publish;
mod reach;
mod tls;
mod trust;

pub use publish::{AckDirectory, SubscribeDirectory};
pub use tls::{CaDesk, IssueCertificate};
pub use trust::{
    IssueToken, IssuedToken, Join, Pinned, RecordAudit, RegisterSigned, Revoke, Rotate,
    TrustOverview, TrustView,
};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use actix::prelude::*;
use actix_web_lab::sse;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{Config, LivenessConfig};
use crate::trust::{Fingerprint, RateLimiter};
use crate::wire::control_plane::{
    Endpoint, EndpointTable, KeyReport, RegisterRequest, TableUpdate, NATIVE_PROTOCOL,
};
use crate::wire::directory::Directory;
use crate::wire::{now_ms, PeerName};

use super::dashboard::{self, KeyStatus, KeyWitness, ProxyView};
use super::directory::{self as dir, History, Signer};
use super::error::ControllerError;
use super::liveness::{age, badge, should_drop, Badge};
use super::store::{AuditEntry, Loaded, PinRecord, ProxyRecord, Store, TokenRecord};
use super::tables::{self, TablePatch};

/// How often liveness is re-judged.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Events a slow subscriber may fall behind before it is dropped (it reconnects and catches up).
pub const SUBSCRIBER_BUFFER: usize = 64;

fn instance_key(name: &str) -> String {
    PeerName::from(name).key()
}

// ---- messages ----

/// `POST /api/register`: add or replace a proxy; replies with its table. Unsigned: only a
/// proxy listed under `legacy_proxies` (name and address), never for a pinned name.
#[derive(Message)]
#[rtype(result = "Result<EndpointTable, ControllerError>")]
pub struct RegisterProxy {
    pub request: RegisterRequest,
    /// The address it came from: it must be the one listed for its name.
    pub source: IpAddr,
}

/// `GET /api/getendpoints`: a proxy's table; counts as a sign of life.
#[derive(Message)]
#[rtype(result = "Result<EndpointTable, ControllerError>")]
pub struct GetEndpoints {
    pub proxy_id: String,
    /// Its signature, if any (see [`Heartbeat::call`]).
    pub call: Option<SignedCall>,
    /// The address it came from: unsigned, it must be a listed legacy proxy's.
    pub source: IpAddr,
}

/// `POST /api/heartbeat`: a sign of life, perhaps with the proxy's current key report.
#[derive(Message)]
#[rtype(result = "Result<(), ControllerError>")]
pub struct Heartbeat {
    pub proxy_id: String,
    pub api_keys: Option<KeyReport>,
    /// A relay's report.
    pub relay: Option<crate::wire::control_plane::RelayReport>,
    /// Its signature: required from a proxy whose user has a pinned key (an original proxy
    /// has none and sends none).
    pub call: Option<SignedCall>,
    /// The address it came from: unsigned, it must be a listed legacy proxy's.
    pub source: IpAddr,
}

/// A request as its signature covers it (see [`crate::trust::request`]).
#[derive(Debug, Clone)]
pub struct SignedCall {
    /// The `overlay-signature` header, as sent.
    pub header: String,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub body: actix_web::web::Bytes,
    /// The key of the caller's TLS client certificate (none: plain HTTP, or no certificate).
    pub tls_key: Option<crate::trust::PublicKey>,
}

/// `POST /api/update_proxy_endpoints/{id}`: deep-merge an edit into that proxy's instance table.
#[derive(Message)]
#[rtype(result = "Result<EndpointTable, ControllerError>")]
pub struct UpdateEndpoints {
    pub proxy_id: String,
    pub patch: TablePatch,
}

/// `POST /api/remove_proxy/{id}`: forget a proxy (its instance's edits stay).
#[derive(Message)]
#[rtype(result = "Result<(), ControllerError>")]
pub struct RemoveProxy {
    pub proxy_id: String,
}

/// A proxy watches its table: the current one is sent at once, then one per change.
#[derive(Message)]
#[rtype(result = "Result<(), ControllerError>")]
pub struct SubscribeTable {
    pub proxy_id: String,
    pub events: mpsc::Sender<sse::Event>,
}

/// A dashboard watches everything: a `snapshot` at once, then `proxy` / `removed` / `seen`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeDashboard {
    pub events: mpsc::Sender<sse::Event>,
}

/// Every proxy as the dashboard shows it.
#[derive(Message)]
#[rtype(result = "Vec<ProxyView>")]
pub struct ListProxies;

// ---- dashboard event payloads ----

/// `event: proxy` (a row to insert or replace) and `event: snapshot` (all rows).
#[derive(Debug, Serialize)]
pub struct RowEvent {
    pub id: String,
    pub html: String,
}

/// `event: removed`.
#[derive(Debug, Serialize)]
pub struct RemovedEvent {
    pub id: String,
}

/// `event: seen`: a sign of life, so the page's "last seen" stays right between row updates.
#[derive(Debug, Serialize)]
pub struct SeenEvent {
    pub id: String,
    pub last_seen_ms: u64,
}

// ---- the actor ----

struct TableSubscriber {
    proxy_id: String,
    events: mpsc::Sender<sse::Event>,
    /// What it was last sent, so unchanged tables are not re-sent.
    last: Option<(EndpointTable, Vec<String>)>,
}

pub struct Registry {
    config: Config,
    store: Store,
    proxies: BTreeMap<String, ProxyRecord>,
    /// Instance key (lower-case name) → accumulated edit.
    edits: BTreeMap<String, TablePatch>,
    /// Last badge per proxy, to notice changes.
    badges: BTreeMap<String, Badge>,
    /// The directory version: increases with every change of the directory or of an edit;
    /// stored, and never below the clock at start, so it grows across restarts and restores.
    version: u64,
    table_subs: Vec<TableSubscriber>,
    dashboard_subs: Vec<mpsc::Sender<sse::Event>>,
    /// Instance keys whose stored edit held more than its typed part: rewritten at start.
    untyped_edits: Vec<String>,
    /// The root's fingerprint (what proxies pin) and the online key that signs for it.
    root: Fingerprint,
    signer: Signer,
    /// User key (lower-case name) → pinned identity key.
    pins: BTreeMap<String, PinRecord>,
    /// Token id → token (its verifier only).
    tokens: BTreeMap<String, TokenRecord>,
    /// The newest audit entries (the store keeps more), oldest first.
    audit: std::collections::VecDeque<AuditEntry>,
    audit_seq: u64,
    /// Audit entries not stored yet (stored together, shortly).
    pending_audit: Vec<AuditEntry>,
    /// The last versions, for deltas.
    history: History,
    dir_subs: Vec<publish::DirSubscriber>,
    /// Proxy id → the directory version it last said it applied.
    acked: BTreeMap<String, u64>,
    /// Each relay's last report (proxy id → report), from its heartbeats; not stored.
    relay_reports: BTreeMap<String, crate::wire::control_plane::RelayReport>,
    /// Which `reachable: auto` proxies the controller reached directly.
    reach: reach::Probes,
    /// Join, rotation and signed-registration attempts per source address.
    limiter: RateLimiter,
    /// Nonces of signed calls seen in the replay window, and when this registry started
    /// (calls dated before are refused: the nonces of an earlier run are gone).
    nonces: crate::trust::request::NonceCache,
    started_ms: u64,
    /// The overlay CA and what TLS asks of proxies ([`tls::CaDesk`]).
    tls: tls::CaDesk,
    /// Its series for `/metrics`, set at every sweep.
    gauges: crate::controller::metrics::RegistryGauges,
}

/// Audit entries kept in memory for the dashboard.
const AUDIT_SHOWN: usize = 200;

impl Registry {
    /// A registry over what the store had. Loaded proxies count as seen now: the controller
    /// being down is not their fault, and silent ones are dropped after `drop_after_secs`.
    /// With TLS: signed calls must come over it, with the caller's certificate; the CA issues.
    pub fn with_tls(mut self, desk: tls::CaDesk) -> Registry {
        self.tls = desk;
        self
    }

    /// Sets `gauges` (registered in the controller's metrics) at every sweep.
    pub fn with_gauges(mut self, gauges: crate::controller::metrics::RegistryGauges) -> Registry {
        self.gauges = gauges;
        self
    }

    /// Sets its gauges: proxies by badge, the version, the streams still open.
    fn count(&self) {
        let mut c = crate::controller::metrics::RegistryCounts {
            version: self.version,
            dashboards: self
                .dashboard_subs
                .iter()
                .filter(|t| !t.is_closed())
                .count() as i64,
            tables: self
                .table_subs
                .iter()
                .filter(|t| !t.events.is_closed())
                .count() as i64,
            directories: self.dir_subs.iter().filter(|d| d.is_open()).count() as i64,
            ..Default::default()
        };
        for id in self.proxies.keys() {
            match self.badges.get(id) {
                Some(Badge::Warning) => c.warning += 1,
                Some(Badge::Stale) => c.stale += 1,
                _ => c.active += 1,
            }
        }
        self.gauges.set(c);
    }

    pub fn new(
        config: Config,
        store: Store,
        loaded: Loaded,
        root: Fingerprint,
        signer: Signer,
    ) -> Registry {
        let now = now_ms();
        let proxies = loaded
            .proxies
            .into_iter()
            .map(|mut p| {
                p.last_seen_ms = p.last_seen_ms.max(now);
                (p.proxy_id.clone(), p)
            })
            .collect::<BTreeMap<_, _>>();
        let badges = proxies.keys().map(|k| (k.clone(), Badge::Active)).collect();
        let mut registry = Registry {
            config,
            store,
            proxies,
            edits: BTreeMap::new(),
            badges,
            version: loaded.version.saturating_add(1).max(now),
            table_subs: Vec::new(),
            dashboard_subs: Vec::new(),
            untyped_edits: Vec::new(),
            root,
            signer,
            pins: loaded.pins,
            tokens: loaded.tokens,
            audit_seq: loaded.audit.last().map(|a| a.seq).unwrap_or(0),
            audit: loaded
                .audit
                .into_iter()
                .rev()
                .take(AUDIT_SHOWN)
                .rev()
                .collect(),
            pending_audit: Vec::new(),
            history: History::default(),
            dir_subs: Vec::new(),
            acked: BTreeMap::new(),
            relay_reports: BTreeMap::new(),
            reach: Default::default(),
            limiter: RateLimiter::new(20, 20),
            nonces: Default::default(),
            started_ms: now,
            tls: tls::CaDesk::default(),
            gauges: Default::default(),
        };
        // fixes original: edits stored before unknown fields were refused may carry some;
        // only their typed part is kept (and written back when the registry starts).
        for (key, patch) in loaded.edits {
            let base = registry.base_for(&key);
            let (typed, unknown) = patch.typed(&base, &|name| registry.configured(name));
            if typed != patch {
                log::info!(
                    "the stored edit of {key} had {} unknown fields or empty removals; \
                     keeping its typed part",
                    unknown.len()
                );
                registry.untyped_edits.push(key.clone());
            }
            registry.edits.insert(key, typed);
        }
        registry
    }

    fn liveness(&self) -> &LivenessConfig {
        &self.config.controller.liveness
    }

    fn unknown(proxy_id: &str) -> ControllerError {
        ControllerError::UnknownProxy {
            proxy_id: proxy_id.to_string(),
        }
    }

    /// `name` is an instance or AI endpoint of config.yaml (so it may be in a table later).
    fn configured(&self, name: &str) -> bool {
        self.config.instances.iter().any(|i| i.name.matches(name))
            || self
                .config
                .ai_endpoints
                .iter()
                .any(|a| a.name.matches(name))
    }

    /// The directory now: config, registrations, pinned keys.
    fn directory(&self) -> Directory {
        let mut d = dir::build(&self.config, &self.proxies, &self.pins, &self.reach.direct);
        d.cas = self.tls.trusted();
        d
    }

    /// The directory as last published (every change publishes at once), else built now.
    fn dir_now(&self) -> std::sync::Arc<Directory> {
        match self.history.current() {
            Some(v) => v.directory.clone(),
            None => std::sync::Arc::new(self.directory()),
        }
    }

    fn base_for(&self, instance: &str) -> EndpointTable {
        tables::base_table(&self.config, &self.dir_now(), instance)
    }

    /// The table of `instance`: config, directory, and its edits.
    fn table_of_instance(&self, instance: &str) -> EndpointTable {
        dir::table_for(&self.config, &self.dir_now(), &self.edits, instance)
    }

    fn table_of(&self, proxy_id: &str) -> Result<EndpointTable, ControllerError> {
        let rec = self
            .proxies
            .get(proxy_id)
            .ok_or_else(|| Self::unknown(proxy_id))?;
        Ok(self.table_of_instance(&rec.instance_name))
    }

    /// Names in `table` (peers only) whose proxy is currently not Stale.
    fn online_in(&self, table: &EndpointTable, now: u64) -> Vec<String> {
        table
            .iter()
            .filter(|(_, e)| matches!(e, Endpoint::Peer(_)))
            .filter(|(name, _)| {
                let name = PeerName::from(name.as_str());
                self.proxies.values().any(|p| {
                    name == p.instance_name
                        && badge(age(p.last_seen_ms, now), self.liveness()) != Badge::Stale
                })
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn view_of(&self, rec: &ProxyRecord, now: u64) -> ProxyView {
        let table = self.table_of_instance(&rec.instance_name);
        let directory = self.dir_now();
        let directory_user = directory.user(&rec.instance_name);
        let keys = key_statuses(&table, rec.api_keys.as_ref(), |var| {
            std::env::var_os(var).is_some_and(|v| !v.is_empty())
        });
        ProxyView {
            proxy_id: rec.proxy_id.clone(),
            instance_name: rec.instance_name.clone(),
            in_config: self
                .config
                .instances
                .iter()
                .any(|i| i.name.matches(&rec.instance_name))
                || self
                    .config
                    .relays
                    .iter()
                    .any(|r| r.name.matches(&rec.instance_name)),
            host: rec.host.clone(),
            port: rec.port,
            protocol: rec.protocol.clone(),
            registered_at_ms: rec.registered_at_ms,
            last_seen_ms: rec.last_seen_ms,
            age_secs: age(rec.last_seen_ms, now).as_secs(),
            badge: badge(age(rec.last_seen_ms, now), self.liveness()),
            table,
            keys,
            trust: directory_user.map(|u| u.state.as_str()).unwrap_or("legacy"),
            fingerprint: directory_user
                .and_then(|u| u.key)
                .map(|k| k.fingerprint().to_string()),
            applied_version: self.acked(&rec.proxy_id),
            current_version: self.version,
            role: rec.role,
            // As the directory says (for `reachable: auto`, what the probe found).
            via: directory_user.and_then(|u| u.via.clone()),
            relay: self.relay_reports.get(&rec.proxy_id).cloned(),
            relayed: directory
                .users
                .iter()
                .filter_map(|(k, u)| u.via.clone().map(|r| (k.clone(), r)))
                .collect(),
        }
    }

    fn views(&self, now: u64) -> Vec<ProxyView> {
        let mut v: Vec<ProxyView> = self
            .proxies
            .values()
            .map(|r| self.view_of(r, now))
            .collect();
        v.sort_by_cached_key(|v| (PeerName::from(v.instance_name.as_str()), v.registered_at_ms));
        v
    }

    fn update_for(&self, table: EndpointTable, now: u64) -> TableUpdate {
        let online = self.online_in(&table, now);
        TableUpdate {
            version: self.version,
            endpoints: table,
            online,
        }
    }

    /// Something changed: push new tables to the proxies whose table (or online set) changed,
    /// and re-send every dashboard row.
    fn changed(&mut self, ctx: &mut Context<Self>) {
        self.publish(ctx);
        let now = now_ms();
        let mut subs = std::mem::take(&mut self.table_subs);
        subs.retain_mut(|sub| {
            let Some(rec) = self.proxies.get(&sub.proxy_id) else {
                return false; // removed: dropping the sender ends its stream
            };
            let table = self.table_of_instance(&rec.instance_name);
            let update = self.update_for(table, now);
            let state = (update.endpoints.clone(), update.online.clone());
            if sub.last.as_ref() == Some(&state) {
                return !sub.events.is_closed();
            }
            sub.last = Some(state);
            send(&sub.events, table_event(&update))
        });
        self.table_subs = subs;
        let rows: Vec<RowEvent> = self
            .views(now)
            .iter()
            .map(|v| RowEvent {
                id: v.proxy_id.clone(),
                html: dashboard::proxy_row(v).into_string(),
            })
            .collect();
        for row in rows {
            self.tell_dashboards("proxy", &row);
        }
        self.send_online();
    }

    /// Re-sends one proxy's dashboard row.
    fn refresh_row(&mut self, proxy_id: &str) {
        let Some(rec) = self.proxies.get(proxy_id) else {
            return;
        };
        let row = RowEvent {
            id: proxy_id.to_string(),
            html: dashboard::proxy_row(&self.view_of(rec, now_ms())).into_string(),
        };
        self.tell_dashboards("proxy", &row);
    }

    fn tell_dashboards(&mut self, event: &str, data: &impl Serialize) {
        let Ok(d) = sse::Data::new_json(data) else {
            return;
        };
        let ev = sse::Event::Data(d.event(event.to_string()));
        self.dashboard_subs.retain(|tx| send(tx, ev.clone()));
    }

    fn seen(&mut self, proxy_id: &str, ctx: &mut Context<Self>) -> Result<(), ControllerError> {
        let now = now_ms();
        let rec = self
            .proxies
            .get_mut(proxy_id)
            .ok_or_else(|| Self::unknown(proxy_id))?;
        rec.last_seen_ms = now;
        let ev = SeenEvent {
            id: proxy_id.to_string(),
            last_seen_ms: now,
        };
        self.tell_dashboards("seen", &ev);
        // A sign of life can turn a Warning or Stale badge back to Active.
        self.sweep_badges(now, ctx);
        Ok(())
    }

    /// Re-judges every badge; pushes when one changed. Returns the proxies to drop.
    fn sweep_badges(&mut self, now: u64, ctx: &mut Context<Self>) -> Vec<String> {
        let l = self.liveness().clone();
        let mut any = false;
        let mut drop = Vec::new();
        for (id, rec) in &self.proxies {
            let a = age(rec.last_seen_ms, now);
            if should_drop(a, &l) {
                drop.push(id.clone());
            }
            let b = badge(a, &l);
            if self.badges.insert(id.clone(), b) != Some(b) {
                any = true;
            }
        }
        if any {
            self.changed(ctx);
        }
        drop
    }

    fn forget(&mut self, proxy_id: &str, ctx: &mut Context<Self>) {
        self.proxies.remove(proxy_id);
        self.badges.remove(proxy_id);
        self.tell_dashboards(
            "removed",
            &RemovedEvent {
                id: proxy_id.to_string(),
            },
        );
        self.acked.remove(proxy_id);
        self.reach.forget(proxy_id);
        self.relay_reports.remove(proxy_id);
        self.changed(ctx);
    }

    /// Drops proxies silent for longer than `drop_after_secs`.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let drop = self.sweep_badges(now_ms(), ctx);
        self.count();
        for id in drop {
            log::info!(
                "dropping proxy {id}: no sign of life for over {} s",
                self.liveness().drop_after_secs
            );
            self.forget(&id, ctx);
            let store = self.store.clone();
            // `wait`, not `spawn`: no message (a re-registration of this id) runs before the
            // deletion is stored, so it cannot delete the newer record.
            ctx.wait(
                async move {
                    if let Err(e) = store.delete_proxy(id.clone()).await {
                        log::warn!("could not delete dropped proxy {id} from the store: {e}");
                    }
                }
                .into_actor(self),
            );
        }
    }
}

/// AI endpoint name → whether its key is there, for the dashboard: as the proxy reported it
/// (the only place that knows), or, for a proxy that does not report (the original's, an older
/// one), whether the entry's `api_key_env` is set in the controller's environment (`env_set`),
/// labelled as such. An endpoint a reporting proxy did not list is left out.
///
/// fixes original (and our first version): "key set" was read from the controller's own
/// environment only, which is right only when every role runs in one process.
pub fn key_statuses(
    table: &EndpointTable,
    report: Option<&KeyReport>,
    env_set: impl Fn(&str) -> bool,
) -> BTreeMap<String, KeyStatus> {
    table
        .iter()
        .filter_map(|(name, e)| match e {
            Endpoint::Ai(a) => Some((name, a)),
            Endpoint::Peer(_) => None,
        })
        .filter_map(|(name, ai)| {
            let status = match report {
                Some(r) => {
                    let name = PeerName::from(name.as_str());
                    r.iter()
                        .find(|(n, _)| name == n.as_str())
                        .map(|(_, &set)| KeyStatus {
                            set,
                            witness: KeyWitness::Proxy,
                        })?
                }
                None => KeyStatus {
                    set: env_set(ai.api_key_env.as_deref()?),
                    witness: KeyWitness::ControllerEnvironment,
                },
            };
            Some((name.clone(), status))
        })
        .collect()
}

fn send(tx: &mpsc::Sender<sse::Event>, ev: sse::Event) -> bool {
    // A full or closed channel means a gone or hopelessly slow client: drop it; it reconnects.
    tx.try_send(ev).is_ok()
}

fn table_event(update: &TableUpdate) -> sse::Event {
    match sse::Data::new_json(update) {
        Ok(d) => sse::Event::Data(d.event("table")),
        Err(e) => sse::Event::Comment(format!("unencodable table: {e}").into()),
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::info!(
            "registry started with {} proxies and {} edited tables",
            self.proxies.len(),
            self.edits.len()
        );
        ctx.run_interval(SWEEP_EVERY, |act, ctx| act.sweep(ctx));
        self.publish(ctx);
        for p in self.proxies.values() {
            let key = instance_key(&p.instance_name);
            if !self.pins.contains_key(&key) && p.protocol.as_deref() == Some(NATIVE_PROTOCOL) {
                log::warn!(
                    "proxy {} ({}) registered before keys were pinned: it is not trusted on \
                     first use; it needs a join token (`overlay token create --name {}`)",
                    p.proxy_id,
                    p.instance_name,
                    p.instance_name
                );
            }
        }
        let rewrite: Vec<(String, TablePatch)> = std::mem::take(&mut self.untyped_edits)
            .into_iter()
            .filter_map(|k| self.edits.get(&k).map(|p| (k, p.clone())))
            .collect();
        if !rewrite.is_empty() {
            let store = self.store.clone();
            // `wait`: no edit of these instances is handled before their rewrite is stored.
            ctx.wait(
                async move {
                    for (key, patch) in rewrite {
                        if let Err(e) = store.put_edits(key.clone(), patch).await {
                            log::warn!("could not rewrite the stored edit of {key}: {e}");
                        }
                    }
                }
                .into_actor(self),
            );
        }
    }
}

impl Registry {
    /// The record a registration makes, and the records it replaces.
    ///
    /// fixes original: a proxy restarted under a new id showed twice until the old entry was
    /// dropped; a registration from the same instance at the same address replaces it.
    fn registration(&self, r: RegisterRequest) -> (ProxyRecord, Vec<String>) {
        let now = now_ms();
        let registered_at_ms = self
            .proxies
            .get(&r.proxy_id)
            .map(|p| p.registered_at_ms)
            .unwrap_or(now);
        let record = ProxyRecord {
            tls: r.tls,
            seal: r.seal,
            role: r.role,
            via: r.via,
            auto: r.auto,
            proxy_id: r.proxy_id,
            instance_name: r.instance_name,
            host: r.host,
            port: r.port,
            protocol: r.protocol,
            api_keys: r.api_keys,
            registered_at_ms,
            last_seen_ms: now,
        };
        let instance = PeerName::from(record.instance_name.as_str());
        let replaces: Vec<String> = self
            .proxies
            .values()
            .filter(|p| {
                p.proxy_id != record.proxy_id
                    && instance == p.instance_name
                    && p.host == record.host
                    && p.port == record.port
            })
            .map(|p| p.proxy_id.clone())
            .collect();
        (record, replaces)
    }

    /// Stores a registration (and deletes the records it replaces), then applies it.
    fn store_registration(
        &mut self,
        request: RegisterRequest,
    ) -> impl ActorFuture<Self, Output = Result<(), ControllerError>> {
        let (record, replaces) = self.registration(request);
        let store = self.store.clone();
        let (stored, gone) = (record.clone(), replaces.clone());
        async move { store.put_proxy(stored, gone).await }
            .into_actor(self)
            .map(move |res, act, ctx| {
                res?;
                act.registered(record, &replaces, ctx);
                Ok(())
            })
    }

    /// A stored registration takes effect.
    fn registered(&mut self, record: ProxyRecord, replaces: &[String], ctx: &mut Context<Self>) {
        for old in replaces {
            log::info!("proxy {old} replaced by {}", record.proxy_id);
            self.forget(old, ctx);
        }
        log::info!(
            "registered proxy {} ({}) at {}:{}",
            record.proxy_id,
            record.instance_name,
            record.host,
            record.port
        );
        let id = record.proxy_id.clone();
        self.badges.insert(id.clone(), Badge::Active);
        let probe = record.auto;
        self.proxies.insert(id.clone(), record);
        self.changed(ctx);
        if probe {
            self.probe(&id, ctx);
        }
    }

    /// Checks a proxy's call to the controller: signed by the key pinned to its user, for this
    /// controller (destination: the root fingerprint), fresh and never seen before. (Who may
    /// call the original's API unsigned is [`trust`]'s question.)
    fn check_call(
        &mut self,
        proxy_id: &str,
        call: Option<&SignedCall>,
    ) -> Result<(), ControllerError> {
        self.check_call_of(proxy_id, call, false)
    }

    /// [`Registry::check_call`]; with `revoked_too`, a proxy whose key was revoked passes as
    /// well (to read the directory that tells it so: other proxies refuse it at their
    /// handshakes, which say no reason).
    fn check_call_of(
        &mut self,
        proxy_id: &str,
        call: Option<&SignedCall>,
        revoked_too: bool,
    ) -> Result<(), ControllerError> {
        use crate::trust::request::{self, RequestLine};
        let rec = self
            .proxies
            .get(proxy_id)
            .ok_or_else(|| Self::unknown(proxy_id))?;
        let pin = self
            .pins
            .get(&instance_key(&rec.instance_name))
            .filter(|p| revoked_too || p.revoked.is_none());
        let refuse =
            |e: request::RequestError| ControllerError::Forbidden(format!("proxy {proxy_id}: {e}"));
        let (pin, call) = match (pin, call) {
            (Some(pin), Some(call)) => (pin, call),
            (Some(_), None) => return Err(refuse(request::RequestError::Missing)),
            (None, _) => {
                return Err(ControllerError::Forbidden(format!(
                    "{} has no pinned key: it joins first",
                    rec.instance_name
                )))
            }
        };
        let h = request::parse(&call.header).map_err(refuse)?;
        let line = RequestLine {
            method: &call.method,
            target: &call.target,
            body: &call.body,
        };
        let now = now_ms();
        request::verify(
            &h,
            &line,
            self.root.as_str(),
            &rec.instance_name,
            &pin.key,
            now,
            self.started_ms,
        )
        .map_err(refuse)?;
        self.tls
            .check_caller(&rec.instance_name, &pin.key, call.tls_key.as_ref())?;
        self.nonces.check(&h, now).map_err(refuse)
    }

    /// Refuses an unsigned registration that would speak for a name with a pinned key, or
    /// replace the record of a proxy whose name has one.
    fn check_unsigned(&self, r: &RegisterRequest) -> Result<(), ControllerError> {
        let taken = |name: &str| self.pins.get(&instance_key(name));
        let by_id = self
            .proxies
            .get(&r.proxy_id)
            .and_then(|p| taken(&p.instance_name).map(|pin| (p, pin)));
        if let Some(pin) = taken(&r.instance_name) {
            return Err(ControllerError::Forbidden(format!(
                "{} has a pinned key ({}): its registrations must be signed with that key \
                 (overlay/1 proxies do so); an unsigned registration cannot speak for it",
                pin.name,
                pin.key.fingerprint()
            )));
        }
        if let Some((p, pin)) = by_id {
            return Err(ControllerError::Forbidden(format!(
                "proxy id {} belongs to {}, which has a pinned key ({}): an unsigned \
                 registration cannot take it over",
                p.proxy_id,
                pin.name,
                pin.key.fingerprint()
            )));
        }
        Ok(())
    }
}

impl Handler<RegisterProxy> for Registry {
    type Result = AtomicResponse<Self, Result<EndpointTable, ControllerError>>;

    fn handle(&mut self, msg: RegisterProxy, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_legacy_registration(&msg.request, msg.source) {
            self.record_audit(
                "refused",
                &msg.request.instance_name,
                &msg.source.to_canonical().to_string(),
                &e.to_string(),
                ctx,
            );
            return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
        }
        let id = msg.request.proxy_id.clone();
        AtomicResponse::new(Box::pin(self.store_registration(msg.request).map(
            move |res, act, _| {
                res?;
                act.table_of(&id)
            },
        )))
    }
}

impl Handler<GetEndpoints> for Registry {
    type Result = Result<EndpointTable, ControllerError>;

    fn handle(&mut self, msg: GetEndpoints, ctx: &mut Self::Context) -> Self::Result {
        self.check_original_call(&msg.proxy_id, msg.call.as_ref(), msg.source)?;
        self.seen(&msg.proxy_id, ctx)?;
        self.table_of(&msg.proxy_id)
    }
}

impl Handler<Heartbeat> for Registry {
    type Result = Result<(), ControllerError>;

    fn handle(&mut self, msg: Heartbeat, ctx: &mut Self::Context) -> Self::Result {
        self.check_original_call(&msg.proxy_id, msg.call.as_ref(), msg.source)?;
        self.seen(&msg.proxy_id, ctx)?;
        if let Some(report) = msg.relay {
            let is_relay = self
                .proxies
                .get(&msg.proxy_id)
                .is_some_and(|r| !r.role.is_user());
            if is_relay && self.relay_reports.get(&msg.proxy_id) != Some(&report) {
                self.relay_reports.insert(msg.proxy_id.clone(), report);
                self.refresh_row(&msg.proxy_id);
            }
        }
        if let Some(report) = msg.api_keys {
            if let Some(rec) = self.proxies.get_mut(&msg.proxy_id) {
                if rec.api_keys.as_ref() != Some(&report) {
                    rec.api_keys = Some(report);
                    self.changed(ctx);
                }
            }
        }
        Ok(())
    }
}

impl Handler<UpdateEndpoints> for Registry {
    type Result = AtomicResponse<Self, Result<EndpointTable, ControllerError>>;

    fn handle(&mut self, msg: UpdateEndpoints, _ctx: &mut Self::Context) -> Self::Result {
        let checked = (|| {
            let rec = self
                .proxies
                .get(&msg.proxy_id)
                .ok_or_else(|| Self::unknown(&msg.proxy_id))?;
            msg.patch.check_no_secrets()?;
            let base = self.base_for(&rec.instance_name);
            let may_appear = |name: &str| self.configured(name);
            let (_, unknown) = msg.patch.typed(&base, &may_appear);
            if !unknown.is_empty() {
                return Err(super::tables::unknown_fields(&unknown));
            }
            let key = instance_key(&rec.instance_name);
            let combined = match self.edits.get(&key) {
                Some(old) => old.then(&msg.patch),
                None => msg.patch.clone(),
            };
            // Stored: typed fields only, and removals of what is there (older junk goes too).
            let (combined, _) = combined.typed(&base, &may_appear);
            let table = tables::apply(&base, &combined).map_err(ControllerError::InvalidEdit)?;
            Ok((key, combined, table))
        })();
        let (key, combined, table) = match checked {
            Ok(x) => x,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let store = self.store.clone();
        let (k, c) = (key.clone(), combined.clone());
        AtomicResponse::new(Box::pin(
            async move { store.put_edits(k, c).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    res?;
                    log::info!("endpoint table of {key} edited");
                    act.edits.insert(key, combined);
                    act.changed(ctx);
                    Ok(table)
                }),
        ))
    }
}

impl Handler<RemoveProxy> for Registry {
    type Result = AtomicResponse<Self, Result<(), ControllerError>>;

    fn handle(&mut self, msg: RemoveProxy, _ctx: &mut Self::Context) -> Self::Result {
        if !self.proxies.contains_key(&msg.proxy_id) {
            return AtomicResponse::new(Box::pin(fut::ready(Err(Self::unknown(&msg.proxy_id)))));
        }
        let store = self.store.clone();
        let id = msg.proxy_id;
        let stored = id.clone();
        AtomicResponse::new(Box::pin(
            async move { store.delete_proxy(stored).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    res?;
                    log::info!("removed proxy {id}");
                    act.forget(&id, ctx);
                    Ok(())
                }),
        ))
    }
}

impl Handler<SubscribeTable> for Registry {
    type Result = Result<(), ControllerError>;

    fn handle(&mut self, msg: SubscribeTable, _ctx: &mut Self::Context) -> Self::Result {
        let table = self.table_of(&msg.proxy_id)?;
        let update = self.update_for(table, now_ms());
        if send(&msg.events, table_event(&update)) {
            self.table_subs.push(TableSubscriber {
                proxy_id: msg.proxy_id,
                events: msg.events,
                last: Some((update.endpoints, update.online)),
            });
        }
        Ok(())
    }
}

impl Handler<SubscribeDashboard> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SubscribeDashboard, _ctx: &mut Self::Context) {
        let views = self.views(now_ms());
        let snapshot = RowEvent {
            id: String::new(),
            html: dashboard::proxy_rows(&views).into_string(),
        };
        if let Ok(d) = sse::Data::new_json(&snapshot) {
            if send(&msg.events, sse::Event::Data(d.event("snapshot"))) {
                self.dashboard_subs.push(msg.events);
            }
        }
    }
}

impl Handler<ListProxies> for Registry {
    type Result = MessageResult<ListProxies>;

    fn handle(&mut self, _msg: ListProxies, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.views(now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ai_table() -> EndpointTable {
        let ai: Vec<crate::config::AiEndpointConfig> = serde_yaml::from_str(
            "- {name: BOT, provider: openai, model: m, api_key_env: CTL_HAS_IT}\n\
             - {name: GEMINI, provider: gemini, model: g, api_key_env: CTL_LACKS_IT}\n",
        )
        .unwrap();
        ai.iter()
            .map(|c| {
                let e = crate::wire::control_plane::AiEndpoint::from_config(c);
                (c.name.to_string(), Endpoint::Ai(Box::new(e)))
            })
            .collect()
    }

    fn status(set: bool, witness: KeyWitness) -> KeyStatus {
        KeyStatus { set, witness }
    }

    #[test]
    fn a_proxys_own_report_wins_over_the_controllers_environment() {
        let report: KeyReport = [("bot".to_string(), false), ("GEMINI".to_string(), true)].into();
        let keys = key_statuses(&ai_table(), Some(&report), |var| var == "CTL_HAS_IT");
        assert_eq!(keys["BOT"], status(false, KeyWitness::Proxy));
        assert_eq!(keys["GEMINI"], status(true, KeyWitness::Proxy));
        // An endpoint the proxy did not list is not guessed at.
        let report: KeyReport = [("GEMINI".to_string(), true)].into();
        let keys = key_statuses(&ai_table(), Some(&report), |_| true);
        assert_eq!(keys.get("BOT"), None);
    }

    #[test]
    fn a_proxy_that_does_not_report_gets_the_controllers_environment_labelled_as_such() {
        let keys = key_statuses(&ai_table(), None, |var| var == "CTL_HAS_IT");
        assert_eq!(keys["BOT"], status(true, KeyWitness::ControllerEnvironment));
        assert_eq!(
            keys["GEMINI"],
            status(false, KeyWitness::ControllerEnvironment)
        );
    }

    #[test]
    fn a_clock_going_backwards_counts_as_just_seen() {
        assert_eq!(age(2_000, 1_000), Duration::ZERO);
    }
}

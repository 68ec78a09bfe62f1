//! The controller's durable state in redb (`{data_dir}/controller.redb`): registered proxies,
//! the endpoint-table edits made through the dashboard or `update_proxy_endpoints`, the pinned
//! identity keys, the join tokens (their verifiers, never their secrets), the audit log and the
//! directory version.
//!
//! Every change is one [`Change`] list written in one transaction, so redeeming a token and
//! pinning the key it was redeemed for are stored together or not at all.
//!
//! Owns the file, its tables and the record encoding. Every call runs on the blocking pool
//! (`web::block`), never on an event loop. It knows nothing of liveness, tables or HTTP.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::trust::{PublicKey, TokenVerifier};
use crate::wire::control_plane::KeyReport;

use super::error::ControllerError;
use super::tables::TablePatch;

/// proxy_id → JSON of [`ProxyRecord`].
const PROXIES: TableDefinition<&str, &str> = TableDefinition::new("proxies");
/// instance key (lower-case instance name) → JSON of the accumulated edit patch.
const EDITS: TableDefinition<&str, &str> = TableDefinition::new("edits");
/// user key (lower-case name) → JSON of [`PinRecord`].
const PINS: TableDefinition<&str, &str> = TableDefinition::new("pins");
/// token id → JSON of [`TokenRecord`].
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
/// sequence number → JSON of [`AuditEntry`].
const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");
/// `version` → the directory version last handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The audit log keeps this many entries; older ones are deleted as new ones come.
pub const AUDIT_KEEP: u64 = 2_000;

/// A name's pinned key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The name as spelled when it joined.
    pub name: String,
    pub key: PublicKey,
    pub pinned_at_ms: u64,
    /// Set when the key was revoked: when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// When and why a key was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at_ms: u64,
    pub reason: String,
}

/// A join token as kept: its verifier, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// The name it may join as.
    pub name: String,
    pub verifier: TokenVerifier,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// It may replace a key already pinned to the name (recovery of a lost key).
    #[serde(default)]
    pub replace: bool,
    /// Set once redeemed: when, and the key it pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<TokenUse>,
}

/// When a token was redeemed and for which key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    pub at_ms: u64,
    pub key: PublicKey,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    /// `join`, `replace`, `rotate`, `revoke`, `token`, `refused`, `register`.
    pub kind: String,
    /// The user it is about.
    pub name: String,
    /// Where the request came from (`cli`, an IP address...).
    pub source: String,
    pub detail: String,
}

/// One write of a [`Change`] list.
#[derive(Debug, Clone)]
pub enum Change {
    PutProxy(ProxyRecord),
    DeleteProxy(String),
    PutEdits(String, TablePatch),
    PutPin(String, PinRecord),
    PutToken(TokenRecord),
    DeleteToken(String),
    Audit(AuditEntry),
    Version(u64),
}

/// A registered proxy as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub proxy_id: String,
    pub instance_name: String,
    pub host: String,
    pub port: u16,
    /// `overlay/1` for our proxies; absent for the original's.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Which of its AI endpoints have a key where the proxy runs, as it last reported;
    /// absent for the original's proxies and older ones (heartbeat updates are not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<KeyReport>,
    /// Ours only: its TLS listener for other proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::wire::directory::TlsAddress>,
    /// Ours only: its sealing key (published in the directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<crate::trust::seal::SealPublic>,
    /// Ours only: a relay, not a user's proxy.
    #[serde(default, skip_serializing_if = "crate::wire::directory::Role::is_user")]
    pub role: crate::wire::directory::Role,
    /// Ours only: the relay it is reached through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Ours only: `reachable: auto`: directly when the controller's probe reaches it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
    /// Milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
    /// Milliseconds since the Unix epoch (not persisted on every heartbeat; see `Registry`).
    pub last_seen_ms: u64,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub proxies: Vec<ProxyRecord>,
    pub edits: BTreeMap<String, TablePatch>,
    pub pins: BTreeMap<String, PinRecord>,
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Oldest first.
    pub audit: Vec<AuditEntry>,
    /// The directory version last handed out (0: never).
    pub version: u64,
}

/// A cheap handle on the open database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// Whether its writes go through (for `/healthz`).
    health: crate::storage::StoreHealth,
    /// How long each write's commit takes (for `/metrics`).
    commits: prometheus_client::metrics::histogram::Histogram,
}

fn storage(e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Storage(e.to_string())
}

impl Store {
    /// Opens (or creates) `controller.redb` in `data_dir`. A previous controller on the same
    /// directory that is still closing gets a few seconds to let go of the file.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Store> {
        let path = data_dir.join("controller.redb");
        std::fs::create_dir_all(data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            )
        })?;
        for attempt in 0..50 {
            let p = path.clone();
            let opened = actix_web::web::block(move || Database::create(&p))
                .await
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            match opened {
                Ok(db) => {
                    let store = Store {
                        db: Arc::new(db),
                        health: Default::default(),
                        commits: crate::storage::StoreTimings::default().commit,
                    };
                    store.init().await?;
                    return Ok(store);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempt < 49 => {
                    actix_rt::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "cannot open the controller store {}: {e}; is another controller using \
                         this data directory?",
                        path.display()
                    ))
                }
            }
        }
        Err(anyhow::anyhow!(
            "cannot open the controller store {}: still in use",
            path.display()
        ))
    }

    async fn init(&self) -> anyhow::Result<()> {
        let db = self.db.clone();
        actix_web::web::block(move || -> Result<(), ControllerError> {
            let tx = db.begin_write().map_err(storage)?;
            tx.open_table(PROXIES).map_err(storage)?;
            tx.open_table(EDITS).map_err(storage)?;
            tx.open_table(PINS).map_err(storage)?;
            tx.open_table(TOKENS).map_err(storage)?;
            tx.open_table(AUDIT).map_err(storage)?;
            tx.open_table(META).map_err(storage)?;
            tx.commit().map_err(storage)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
        Ok(())
    }

    /// Reads every proxy and edit. Records that no longer parse are skipped with a warning.
    pub async fn load(&self) -> Result<Loaded, ControllerError> {
        let db = self.db.clone();
        actix_web::web::block(move || -> Result<Loaded, ControllerError> {
            let tx = db.begin_read().map_err(storage)?;
            let mut loaded = Loaded::default();
            let proxies = tx.open_table(PROXIES).map_err(storage)?;
            for row in proxies.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                match serde_json::from_str::<ProxyRecord>(v.value()) {
                    Ok(r) => loaded.proxies.push(r),
                    Err(e) => log::warn!("skipping unreadable proxy record {}: {e}", k.value()),
                }
            }
            let edits = tx.open_table(EDITS).map_err(storage)?;
            for row in edits.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                match TablePatch::parse(v.value()) {
                    Ok(p) => {
                        loaded.edits.insert(k.value().to_string(), p);
                    }
                    Err(e) => log::warn!("skipping unreadable edit of {}: {e}", k.value()),
                }
            }
            let pins = tx.open_table(PINS).map_err(storage)?;
            for row in pins.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                match serde_json::from_str::<PinRecord>(v.value()) {
                    Ok(p) => {
                        loaded.pins.insert(k.value().to_string(), p);
                    }
                    // A pin that cannot be read must not turn into "not pinned" (that would let
                    // anyone with a token take the name): refuse to start instead.
                    Err(e) => {
                        return Err(ControllerError::Storage(format!(
                            "the pinned key of {} is unreadable ({e}); restore controller.redb                              from a backup",
                            k.value()
                        )))
                    }
                }
            }
            let tokens = tx.open_table(TOKENS).map_err(storage)?;
            for row in tokens.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                match serde_json::from_str::<TokenRecord>(v.value()) {
                    Ok(t) => {
                        loaded.tokens.insert(k.value().to_string(), t);
                    }
                    Err(e) => log::warn!("skipping unreadable join token {}: {e}", k.value()),
                }
            }
            let audit = tx.open_table(AUDIT).map_err(storage)?;
            for row in audit.iter().map_err(storage)? {
                let (_, v) = row.map_err(storage)?;
                if let Ok(a) = serde_json::from_str::<AuditEntry>(v.value()) {
                    loaded.audit.push(a);
                }
            }
            let meta = tx.open_table(META).map_err(storage)?;
            loaded.version = meta
                .get("version")
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0);
            Ok(loaded)
        })
        .await
        .map_err(storage)?
    }

    /// Stores (or replaces) a proxy and deletes the records it `replaces`, in one transaction;
    /// returns once it is durable.
    pub async fn put_proxy(
        &self,
        record: ProxyRecord,
        replaces: Vec<String>,
    ) -> Result<(), ControllerError> {
        let mut changes: Vec<Change> = replaces.into_iter().map(Change::DeleteProxy).collect();
        changes.push(Change::PutProxy(record));
        self.commit(changes).await
    }

    /// Deletes a proxy; returns once it is durable.
    pub async fn delete_proxy(&self, proxy_id: String) -> Result<(), ControllerError> {
        self.commit(vec![Change::DeleteProxy(proxy_id)]).await
    }

    /// Stores the whole accumulated edit patch of an instance; returns once it is durable.
    pub async fn put_edits(&self, key: String, patch: TablePatch) -> Result<(), ControllerError> {
        self.commit(vec![Change::PutEdits(key, patch)]).await
    }

    /// Writes every change in one transaction; returns once it is durable. The audit log is
    /// trimmed to its last [`AUDIT_KEEP`] entries in the same transaction.
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), ControllerError> {
        let mut encoded = Vec::with_capacity(changes.len());
        for c in changes {
            let json = match &c {
                Change::PutProxy(r) => serde_json::to_string(r).map_err(storage)?,
                Change::PutEdits(_, p) => p.to_json(),
                Change::PutPin(_, p) => serde_json::to_string(p).map_err(storage)?,
                Change::PutToken(t) => serde_json::to_string(t).map_err(storage)?,
                Change::Audit(a) => serde_json::to_string(a).map_err(storage)?,
                Change::DeleteProxy(_) | Change::DeleteToken(_) | Change::Version(_) => {
                    String::new()
                }
            };
            encoded.push((c, json));
        }
        self.write(move |tx| {
            for (change, json) in &encoded {
                match change {
                    Change::PutProxy(r) => {
                        let mut t = tx.open_table(PROXIES).map_err(storage)?;
                        t.insert(r.proxy_id.as_str(), json.as_str())
                            .map_err(storage)?;
                    }
                    Change::DeleteProxy(id) => {
                        let mut t = tx.open_table(PROXIES).map_err(storage)?;
                        t.remove(id.as_str()).map_err(storage)?;
                    }
                    Change::PutEdits(key, _) => {
                        let mut t = tx.open_table(EDITS).map_err(storage)?;
                        t.insert(key.as_str(), json.as_str()).map_err(storage)?;
                    }
                    Change::PutPin(key, _) => {
                        let mut t = tx.open_table(PINS).map_err(storage)?;
                        t.insert(key.as_str(), json.as_str()).map_err(storage)?;
                    }
                    Change::PutToken(tok) => {
                        let mut t = tx.open_table(TOKENS).map_err(storage)?;
                        t.insert(tok.id.as_str(), json.as_str()).map_err(storage)?;
                    }
                    Change::DeleteToken(id) => {
                        let mut t = tx.open_table(TOKENS).map_err(storage)?;
                        t.remove(id.as_str()).map_err(storage)?;
                    }
                    Change::Audit(a) => {
                        let mut t = tx.open_table(AUDIT).map_err(storage)?;
                        t.insert(a.seq, json.as_str()).map_err(storage)?;
                        if a.seq > AUDIT_KEEP {
                            t.retain_in(..a.seq - AUDIT_KEEP, |_, _| false)
                                .map_err(storage)?;
                        }
                    }
                    Change::Version(v) => {
                        let mut t = tx.open_table(META).map_err(storage)?;
                        t.insert("version", *v).map_err(storage)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), ControllerError> + Send + 'static,
    ) -> Result<(), ControllerError> {
        let (db, commits) = (self.db.clone(), self.commits.clone());
        let written = actix_web::web::block(move || {
            let tx = db.begin_write().map_err(storage)?;
            f(&tx)?;
            let started = std::time::Instant::now();
            let committed = tx.commit().map_err(storage);
            commits.observe(started.elapsed().as_secs_f64());
            committed
        })
        .await
        .map_err(storage)
        .and_then(|r| r);
        match &written {
            Ok(()) => self.health.record(Ok(())),
            Err(e) => self.health.record(Err(&e.to_string())),
        }
        written
    }

    /// Whether its writes go through.
    pub fn health(&self) -> crate::storage::StoreHealth {
        self.health.clone()
    }

    /// How long its commits take (`overlay_store_commit_duration_seconds`).
    pub fn commit_timing(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commits.clone()
    }
}

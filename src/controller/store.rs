//! The controller's durable state in redb (`{data_dir}/controller.redb`): registered proxies and
//! the endpoint-table edits made through the dashboard or `update_proxy_endpoints`.
//!
//! Owns the file, its tables and the record encoding. Every call runs on the blocking pool
//! (`web::block`), never on an event loop. It knows nothing of liveness, tables or HTTP.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::wire::control_plane::KeyReport;

use super::error::ControllerError;
use super::tables::TablePatch;

/// proxy_id → JSON of [`ProxyRecord`].
const PROXIES: TableDefinition<&str, &str> = TableDefinition::new("proxies");
/// instance key (lower-case instance name) → JSON of the accumulated edit patch.
const EDITS: TableDefinition<&str, &str> = TableDefinition::new("edits");

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
}

/// A cheap handle on the open database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
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
                    let store = Store { db: Arc::new(db) };
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
        let json = serde_json::to_string(&record).map_err(storage)?;
        self.write(move |tx| {
            let mut t = tx.open_table(PROXIES).map_err(storage)?;
            for old in &replaces {
                t.remove(old.as_str()).map_err(storage)?;
            }
            t.insert(record.proxy_id.as_str(), json.as_str())
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    /// Deletes a proxy; returns once it is durable.
    pub async fn delete_proxy(&self, proxy_id: String) -> Result<(), ControllerError> {
        self.write(move |tx| {
            let mut t = tx.open_table(PROXIES).map_err(storage)?;
            t.remove(proxy_id.as_str()).map_err(storage)?;
            Ok(())
        })
        .await
    }

    /// Stores the whole accumulated edit patch of an instance; returns once it is durable.
    pub async fn put_edits(&self, key: String, patch: TablePatch) -> Result<(), ControllerError> {
        let json = patch.to_json();
        self.write(move |tx| {
            let mut t = tx.open_table(EDITS).map_err(storage)?;
            t.insert(key.as_str(), json.as_str()).map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), ControllerError> + Send + 'static,
    ) -> Result<(), ControllerError> {
        let db = self.db.clone();
        actix_web::web::block(move || {
            let tx = db.begin_write().map_err(storage)?;
            f(&tx)?;
            tx.commit().map_err(storage)
        })
        .await
        .map_err(storage)?
    }
}

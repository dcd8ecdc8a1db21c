//! Uploaded plugins and plugin states, kept in PostgreSQL and the object
//! store so that they survive restarts.

use std::sync::Arc;

use sqlx::PgPool;

use super::{Plugin, PluginRegistry, PluginSource};
use crate::firmware::store::FirmwareStore;

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    storage_key: Option<String>,
    enabled: bool,
    disabled_reason: Option<String>,
}

/// Loads uploaded plugins and applies saved states. A plugin that no longer
/// loads is logged and skipped.
pub async fn restore(
    registry: &Arc<PluginRegistry>,
    pool: &PgPool,
    store: &FirmwareStore,
) -> anyhow::Result<()> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, storage_key, enabled, disabled_reason FROM plugins ORDER BY updated_at",
    )
    .fetch_all(pool)
    .await?;
    for row in rows {
        if let Some(key) = &row.storage_key {
            let loaded = match store.read_all(key).await {
                Ok(bytes) => {
                    let registry = registry.clone();
                    tokio::task::spawn_blocking(move || {
                        registry
                            .load(&bytes, PluginSource::Uploaded)
                            .and_then(|plugin| registry.admit(plugin))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                }
                Err(error) => Err(format!("{error:#}")),
            };
            if let Err(error) = loaded {
                tracing::error!(plugin = %row.name, %error, "uploaded plugin not loaded");
                continue;
            }
        }
        registry.set_enabled(&row.name, row.enabled, row.disabled_reason);
    }
    Ok(())
}

/// Stores an uploaded plugin's component and records it.
pub async fn save_upload(
    pool: &PgPool,
    store: &FirmwareStore,
    bytes: bytes::Bytes,
    plugin: &Plugin,
    actor: &str,
) -> anyhow::Result<()> {
    let key = format!("plugins/{}.wasm", plugin.sha256);
    store.put_bytes(&key, bytes).await?;
    sqlx::query(
        "INSERT INTO plugins (name, kind, version, sha256, storage_key, enabled, updated_by)
         VALUES ($1, $2, $3, $4, $5, true, $6)
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, version = excluded.version,
             sha256 = excluded.sha256, storage_key = excluded.storage_key, enabled = true,
             disabled_reason = NULL, updated_by = excluded.updated_by, updated_at = now()",
    )
    .bind(&plugin.name)
    .bind(plugin.kind.as_str())
    .bind(&plugin.version)
    .bind(&plugin.sha256)
    .bind(&key)
    .bind(actor)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records an admin's enable/disable so that it survives restarts.
pub async fn save_state(
    conn: &mut sqlx::PgConnection,
    name: &str,
    enabled: bool,
    reason: Option<&str>,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plugins (name, enabled, disabled_reason, updated_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled,
             disabled_reason = excluded.disabled_reason, updated_by = excluded.updated_by, updated_at = now()",
    )
    .bind(name)
    .bind(enabled)
    .bind(reason)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(())
}

//! Uploaded plugins and plugin states, kept in PostgreSQL and the object
//! store so that they survive restarts; the services behind the admin's
//! plugin routes, each writing its event and audit record.

use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;

use super::{Plugin, PluginError, PluginSource, PluginView, Plugins};
use crate::store::FirmwareStore;
use crate::{audit, outbox};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Not a plugin Rollway can load, or one that clashes.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Loads an uploaded component, stores and records it, and admits it to
/// the registry (replacing a plugin of the same name and kind), with its
/// `plugin.uploaded` event and audit record.
pub async fn upload(
    plugins: &Plugins,
    pool: &PgPool,
    store: &FirmwareStore,
    bytes: bytes::Bytes,
    actor: &str,
) -> Result<Arc<Plugin>, UploadError> {
    let plugin = plugins.load(bytes.to_vec(), PluginSource::Uploaded).await?;
    // Refused before its bytes are kept.
    plugins.admissible(&plugin)?;
    // The bytes first, outside any transaction; then the row, its event
    // and its audit record together; then the registry.
    let key = format!("plugins/{}.wasm", plugin.sha256);
    store.put_bytes(&key, bytes).await?;
    let details = json!({ "name": plugin.name, "version": plugin.version, "kind": plugin.kind, "sha256": plugin.sha256, "wit_version": plugin.wit_version });
    let mut tx = pool.begin().await?;
    save_upload(&mut tx, &key, &plugin, actor).await?;
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::PluginUploaded,
            aggregate_id: &plugin.name,
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        actor,
        "plugin.upload",
        "plugin",
        &plugin.name,
        details,
    )
    .await?;
    tx.commit().await?;
    let admitted = plugins.admit(plugin)?;
    tracing::info!(plugin = %admitted.name, version = %admitted.version, "plugin uploaded");
    Ok(admitted)
}

/// Enables or disables a plugin, durably, with its `plugin.state.changed`
/// event and audit record. `None` when there is no such plugin.
pub async fn set_state(
    plugins: &Plugins,
    pool: &PgPool,
    name: &str,
    enabled: bool,
    actor: &str,
) -> Result<Option<PluginView>, sqlx::Error> {
    if plugins.get(name).is_none() {
        return Ok(None);
    }
    let reason = (!enabled).then(|| format!("disabled by {actor}"));
    let mut tx = pool.begin().await?;
    save_state(&mut tx, name, enabled, reason.as_deref(), actor).await?;
    let details = json!({ "name": name, "enabled": enabled });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::PluginStateChanged,
            aggregate_id: name,
            payload: details.clone(),
        },
    )
    .await?;
    let action = if enabled {
        "plugin.enable"
    } else {
        "plugin.disable"
    };
    audit::record(&mut tx, actor, action, "plugin", name, details).await?;
    tx.commit().await?;
    Ok(plugins.set_enabled(name, enabled, reason))
}

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
    registry: &super::Plugins,
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
                Ok(bytes) => registry
                    .load(bytes.to_vec(), PluginSource::Uploaded)
                    .await
                    .and_then(|plugin| registry.admit(plugin))
                    .map_err(|e| e.to_string()),
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
async fn save_upload(
    conn: &mut sqlx::PgConnection,
    key: &str,
    plugin: &Plugin,
    actor: &str,
) -> Result<(), sqlx::Error> {
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
    .bind(key)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an admin's enable/disable so that it survives restarts.
async fn save_state(
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

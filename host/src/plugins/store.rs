//! Uploaded plugins, plugin states and plugin settings, kept in
//! PostgreSQL and the object store so that they survive restarts and reach
//! every replica; the services behind the admin's plugin routes, each
//! writing its event and audit record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::{ConfigInForce, Plugin, PluginError, PluginSource, PluginView, Plugins};
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
    let plugin = Arc::new(plugins.load(bytes.to_vec(), PluginSource::Uploaded).await?);
    // Refused before its bytes are kept: a clash, or settings in force
    // that this version does not take.
    plugins.admissible(&plugin)?;
    let settings = plugins.config_of(&plugin.name);
    if settings.version > 0 {
        plugins
            .validate_config(plugin.clone(), settings.text.to_string())
            .await
            .map_err(|error| {
                PluginError::Invalid(format!(
                    "this version refuses the plugin's settings in force (version {}): {error}; \
                     set settings it takes first",
                    settings.version
                ))
            })?;
    }
    let plugin = Arc::into_inner(plugin)
        .ok_or_else(|| PluginError::Invalid("the plugin is still in use by its check".into()))?;
    // The bytes first, outside any transaction; then the row, its event
    // and its audit record together; then the registry.
    // A key of its own per upload: deleting an old version's bytes never
    // takes those of the same component uploaded again meanwhile.
    let key = format!(
        "plugins/{}-{}.wasm",
        plugin.sha256,
        uuid::Uuid::now_v7().simple()
    );
    store.put_bytes(&key, bytes).await?;
    let details = json!({ "name": plugin.name, "version": plugin.version, "kind": plugin.kind, "sha256": plugin.sha256, "wit_version": plugin.wit_version });
    let mut tx = pool.begin().await?;
    // The settings it was checked against must still be the ones in force
    // (another replica may have set new ones meanwhile).
    lock_settings(&mut tx, &plugin.name).await?;
    let latest = settings_version(&mut tx, &plugin.name).await?;
    if latest != settings.version {
        drop(tx);
        forget_component(store, &key).await;
        return Err(UploadError::Plugin(PluginError::Invalid(format!(
            "the settings of '{}' changed while this upload was checked (version {latest} now); upload it again",
            plugin.name
        ))));
    }
    save_upload(&mut tx, &key, &plugin, actor).await?;
    // The same component uploaded before: its earlier bytes go once this
    // upload's are recorded.
    let earlier: Option<String> =
        sqlx::query_scalar("SELECT storage_key FROM plugin_versions WHERE sha256 = $1 FOR UPDATE")
            .bind(&plugin.sha256)
            .fetch_optional(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO plugin_versions (sha256, name, kind, version, storage_key, uploaded_by)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (sha256) DO UPDATE SET storage_key = excluded.storage_key",
    )
    .bind(&plugin.sha256)
    .bind(&plugin.name)
    .bind(plugin.kind.as_str())
    .bind(&plugin.version)
    .bind(&key)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
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
    if let Some(earlier) = earlier.filter(|earlier| *earlier != key) {
        forget_component(store, &earlier).await;
    }
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

/// Most bytes of a plugin's settings, as JSON.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// One version of a plugin's settings.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct PluginConfig {
    pub plugin: String,
    /// 1 for the first settings an admin set, then one more each time; 0
    /// (with `{}`) for a plugin never configured.
    pub version: i64,
    /// A JSON object: a device plugin's settings, passed to each of its
    /// calls; a rollout plugin's defaults, under each new job's
    /// `rollout.config`.
    #[schema(value_type = Object)]
    pub config: sqlx::types::Json<Value>,
    /// Who set it; absent for version 0.
    pub set_by: Option<String>,
    pub set_at: Option<DateTime<Utc>>,
}

impl PluginConfig {
    fn unset(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            version: 0,
            config: sqlx::types::Json(json!({})),
            set_by: None,
            set_at: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("no plugin '{0}'")]
    NotFound(String),
    /// Not an object, too large, or refused by the plugin.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Plugin(PluginError),
    /// The settings changed since the version the caller saw.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Sets a plugin's settings: checked by the plugin's `validate-config`,
/// saved as a new version with its `plugin.config.changed` event and audit
/// record, then in force here at once and on the other replicas at their
/// next [`follow`] round. With `expected_version`, refused when another
/// version was set since.
pub async fn configure(
    plugins: &Plugins,
    pool: &PgPool,
    name: &str,
    config: Value,
    expected_version: Option<i64>,
    actor: &str,
) -> Result<PluginConfig, ConfigureError> {
    let plugin = plugins
        .get(name)
        .ok_or_else(|| ConfigureError::NotFound(name.to_owned()))?;
    if !config.is_object() {
        return Err(ConfigureError::Invalid("must be a JSON object".into()));
    }
    let text = config.to_string();
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigureError::Invalid(format!(
            "must be at most {MAX_CONFIG_BYTES} bytes of JSON"
        )));
    }
    let checked = plugin.sha256.clone();
    plugins
        .validate_config(plugin, text)
        .await
        .map_err(ConfigureError::Plugin)?;
    let mut tx = pool.begin().await?;
    // One writer at a time per plugin: the lock orders versions, and
    // uploads of the plugin wait for it.
    lock_settings(&mut tx, name).await?;
    let uploaded: Option<Option<String>> =
        sqlx::query_scalar("SELECT sha256 FROM plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(Some(in_force)) = uploaded
        && in_force != checked
    {
        return Err(ConfigureError::Conflict(format!(
            "a new version of '{name}' was uploaded while these settings were checked; set them again"
        )));
    }
    let current = settings_version(&mut tx, name).await?;
    if let Some(expected) = expected_version
        && expected != current
    {
        return Err(ConfigureError::Conflict(format!(
            "the settings of '{name}' are at version {current}, not {expected}; read them again"
        )));
    }
    let saved: PluginConfig = sqlx::query_as(
        "INSERT INTO plugin_configs (plugin, version, config, set_by) VALUES ($1, $2, $3, $4)
         RETURNING plugin, version, config, set_by, set_at",
    )
    .bind(name)
    .bind(current + 1)
    .bind(sqlx::types::Json(&config))
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?;
    let details = json!({ "name": name, "version": saved.version, "config": saved.config.0 });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::PluginConfigChanged,
            aggregate_id: name,
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(&mut tx, actor, "plugin.configure", "plugin", name, details).await?;
    tx.commit().await?;
    plugins.set_config(
        name,
        ConfigInForce {
            version: saved.version,
            text: Arc::from(saved.config.0.to_string()),
        },
    );
    tracing::info!(plugin = %name, version = saved.version, %actor, "plugin settings set");
    Ok(saved)
}

/// Serializes the writers of one plugin's settings and uploads, for the
/// transaction.
async fn lock_settings(conn: &mut sqlx::PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('plugin_configs'), hashtext($1))")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// The latest version of a plugin's settings (0: never set).
async fn settings_version(conn: &mut sqlx::PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM plugin_configs WHERE plugin = $1")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// The settings in force for `name` as saved (version 0 and `{}` when
/// never set).
pub async fn current_config(pool: &PgPool, name: &str) -> Result<PluginConfig, sqlx::Error> {
    let saved: Option<PluginConfig> = sqlx::query_as(
        "SELECT plugin, version, config, set_by, set_at FROM plugin_configs
         WHERE plugin = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(saved.unwrap_or_else(|| PluginConfig::unset(name)))
}

/// Versions of a plugin's settings, newest first, below `before`.
pub async fn config_history(
    pool: &PgPool,
    name: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<PluginConfig>, sqlx::Error> {
    sqlx::query_as(
        "SELECT plugin, version, config, set_by, set_at FROM plugin_configs
         WHERE plugin = $1 AND ($2::bigint IS NULL OR version < $2)
         ORDER BY version DESC LIMIT $3",
    )
    .bind(name)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How often a replica reads plugin changes other replicas made.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// What a replica has applied of the `plugins` table: each row's
/// `updated_at`, so that a round applies only what changed since (a
/// plugin this replica disabled for trapping stays so until an admin acts).
#[derive(Default)]
pub struct Followed {
    rows: HashMap<String, DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    sha256: Option<String>,
    storage_key: Option<String>,
    enabled: bool,
    disabled_reason: Option<String>,
    updated_at: DateTime<Utc>,
}

/// Loads uploaded plugins and applies saved states and settings, at start.
/// A plugin that no longer loads is logged and skipped.
pub async fn restore(
    registry: &Plugins,
    pool: &PgPool,
    store: &FirmwareStore,
) -> anyhow::Result<Followed> {
    let mut followed = Followed::default();
    catch_up(registry, pool, store, &mut followed).await?;
    Ok(followed)
}

/// Keeps this replica's plugins as the database says, every
/// [`FOLLOW_INTERVAL`]: uploads, states and settings set through another
/// replica take effect here within that time.
pub async fn follow(
    registry: Plugins,
    pool: PgPool,
    store: FirmwareStore,
    mut followed: Followed,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
        if let Err(error) = catch_up(&registry, &pool, &store, &mut followed).await {
            tracing::warn!(error = %format!("{error:#}"), "reading plugin changes");
        }
    }
}

/// One round of [`follow`].
async fn catch_up(
    registry: &Plugins,
    pool: &PgPool,
    store: &FirmwareStore,
    followed: &mut Followed,
) -> anyhow::Result<()> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, sha256, storage_key, enabled, disabled_reason, updated_at
         FROM plugins ORDER BY updated_at",
    )
    .fetch_all(pool)
    .await?;
    // Uploaded plugins deleted through another replica.
    let gone: Vec<String> = followed
        .rows
        .keys()
        .filter(|name| !rows.iter().any(|row| &row.name == *name))
        .cloned()
        .collect();
    for name in gone {
        if registry
            .get(&name)
            .is_some_and(|p| p.source == PluginSource::Uploaded)
        {
            // Followed again next round if this fails.
            registry.remove(&name)?;
            tracing::info!(plugin = %name, "plugin deleted");
        }
        followed.rows.remove(&name);
    }
    for row in rows {
        if followed.rows.get(&row.name) == Some(&row.updated_at) {
            continue;
        }
        followed.rows.insert(row.name.clone(), row.updated_at);
        if let Some(key) = &row.storage_key {
            let loaded_here = registry
                .get(&row.name)
                .is_some_and(|p| Some(&p.sha256) == row.sha256.as_ref());
            if !loaded_here {
                let loaded = load_component(registry, store, key)
                    .await
                    .and_then(|plugin| registry.admit(plugin).map_err(|e| e.to_string()));
                if let Err(error) = loaded {
                    tracing::error!(plugin = %row.name, %error, "uploaded plugin not loaded");
                    continue;
                }
            }
        }
        registry.set_enabled(&row.name, row.enabled, row.disabled_reason);
    }
    keep_pinned_versions(registry, pool, store).await?;
    let configs: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (plugin) plugin, version, config::text FROM plugin_configs
         ORDER BY plugin, version DESC",
    )
    .fetch_all(pool)
    .await?;
    for (plugin, version, text) in configs {
        // The same text as the writer's: the database's JSON, re-encoded.
        let text = serde_json::from_str::<Value>(&text)
            .map(|v| v.to_string())
            .unwrap_or(text);
        if registry.set_config(
            &plugin,
            ConfigInForce {
                version,
                text: Arc::from(text),
            },
        ) {
            tracing::info!(%plugin, version, "plugin settings in force");
        }
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

/// Reads an uploaded component from the object store and loads it (not
/// admitted); the error as text for the log.
async fn load_component(
    registry: &Plugins,
    store: &FirmwareStore,
    key: &str,
) -> Result<Plugin, String> {
    let bytes = store.read_all(key).await.map_err(|e| format!("{e:#}"))?;
    registry
        .load(bytes.to_vec(), PluginSource::Uploaded)
        .await
        .map_err(|e| e.to_string())
}

/// Loads the rollout plugin versions unfinished jobs run on that are not
/// loaded here, and drops those no such job names any more.
async fn keep_pinned_versions(
    registry: &Plugins,
    pool: &PgPool,
    store: &FirmwareStore,
) -> anyhow::Result<()> {
    let pinned: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT j.rollout_plugin_sha256, v.storage_key
         FROM jobs j LEFT JOIN plugin_versions v ON v.sha256 = j.rollout_plugin_sha256
         WHERE j.status IN ('scheduled', 'running', 'paused') AND j.rollout_plugin_sha256 IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    for (sha256, key) in &pinned {
        let Some(key) = key else { continue };
        if registry.has_version(sha256) {
            continue;
        }
        match load_component(registry, store, key).await {
            Ok(plugin) => {
                tracing::info!(plugin = %plugin.name, %sha256, "plugin version loaded for the jobs that run on it");
                registry.retain(Arc::new(plugin));
            }
            Err(error) => {
                tracing::error!(%sha256, %error, "a plugin version jobs run on is not loaded")
            }
        }
    }
    let pinned: std::collections::HashSet<String> =
        pinned.into_iter().map(|(sha256, _)| sha256).collect();
    registry.forget_versions_except(&pinned);
    Ok(())
}

/// One uploaded version of a plugin, and the unfinished jobs that run on
/// it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct PluginVersion {
    pub sha256: String,
    pub name: String,
    /// The plugin's own version (`info().version`).
    pub version: String,
    pub uploaded_by: String,
    pub uploaded_at: DateTime<Utc>,
    /// Unfinished jobs (scheduled, running or paused) created with this
    /// version: while there are any, it cannot be deleted.
    pub unfinished_jobs: i64,
    /// Whether it is the version in force (new jobs get it).
    #[sqlx(default)]
    pub in_force: bool,
    /// Whether the replica that answered has it loaded (in force, or kept
    /// for the jobs that run on it).
    #[sqlx(default)]
    pub loaded: bool,
}

/// The uploaded versions of a plugin, newest first.
pub async fn versions(
    plugins: &Plugins,
    pool: &PgPool,
    name: &str,
) -> Result<Vec<PluginVersion>, sqlx::Error> {
    let mut rows: Vec<PluginVersion> = sqlx::query_as(
        "SELECT v.sha256, v.name, v.version, v.uploaded_by, v.uploaded_at,
                (SELECT count(*) FROM jobs j WHERE j.rollout_plugin_sha256 = v.sha256
                   AND j.status IN ('scheduled', 'running', 'paused')) AS unfinished_jobs
         FROM plugin_versions v WHERE v.name = $1 ORDER BY v.uploaded_at DESC, v.sha256",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let current = plugins.get(name).map(|p| p.sha256.clone());
    for row in &mut rows {
        row.in_force = current.as_deref() == Some(row.sha256.as_str());
        row.loaded = plugins.has_version(&row.sha256);
    }
    Ok(rows)
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0}")]
    NotFound(String),
    /// In force, shipped, or in use by unfinished jobs.
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Registry(#[from] anyhow::Error),
}

/// Deletes an uploaded version that is not in force and that no unfinished
/// job runs on, with its `plugin.version.deleted` event and audit record;
/// its component leaves the object store.
pub async fn delete_version(
    plugins: &Plugins,
    pool: &PgPool,
    store: &FirmwareStore,
    name: &str,
    sha256: &str,
    actor: &str,
) -> Result<(), DeleteError> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT storage_key, version FROM plugin_versions WHERE name = $1 AND sha256 = $2 FOR UPDATE",
    )
    .bind(name)
    .bind(sha256)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((key, version)) = row else {
        return Err(DeleteError::NotFound(format!(
            "no uploaded version {sha256} of the plugin '{name}'"
        )));
    };
    let in_force: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM plugins WHERE name = $1 AND sha256 = $2)")
            .bind(name)
            .bind(sha256)
            .fetch_one(&mut *tx)
            .await?;
    if in_force {
        return Err(DeleteError::InUse(format!(
            "version {version} ({sha256}) is the one in force: upload another version first, or delete the plugin"
        )));
    }
    refuse_if_jobs_run_on(&mut tx, "rollout_plugin_sha256 = $1", sha256).await?;
    sqlx::query("DELETE FROM plugin_versions WHERE sha256 = $1")
        .bind(sha256)
        .execute(&mut *tx)
        .await?;
    let details = json!({ "name": name, "sha256": sha256, "version": version });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::PluginVersionDeleted,
            aggregate_id: name,
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        actor,
        "plugin.version.delete",
        "plugin",
        name,
        details,
    )
    .await?;
    tx.commit().await?;
    forget_component(store, &key).await;
    plugins.forget_version(sha256);
    tracing::info!(plugin = %name, %sha256, %actor, "plugin version deleted");
    Ok(())
}

/// Deletes an uploaded plugin with all its uploaded versions (its settings
/// history stays), with its `plugin.deleted` event and audit record. A
/// shipped plugin it replaced is in force again. Refused while unfinished
/// jobs run on it (a rollout plugin) or update its families (a device
/// plugin).
pub async fn delete_plugin(
    plugins: &Plugins,
    pool: &PgPool,
    store: &FirmwareStore,
    name: &str,
    actor: &str,
) -> Result<(), DeleteError> {
    let Some(plugin) = plugins.get(name) else {
        return Err(DeleteError::NotFound(format!("plugin '{name}'")));
    };
    if plugin.source != PluginSource::Uploaded {
        return Err(DeleteError::InUse(format!(
            "'{name}' is shipped with Rollway: disable it instead"
        )));
    }
    let mut tx = pool.begin().await?;
    match plugin.kind {
        super::PluginKind::Rollout => {
            refuse_if_jobs_run_on(&mut tx, "rollout_plugin = $1", name).await?
        }
        super::PluginKind::Device => {
            let families = plugin.families.join(",");
            refuse_if_jobs_run_on(
                &mut tx,
                "firmware_id IN (SELECT id FROM firmware WHERE family = ANY(string_to_array($1, ',')))",
                &families,
            )
            .await?
        }
    }
    let keys: Vec<String> =
        sqlx::query_scalar("DELETE FROM plugin_versions WHERE name = $1 RETURNING storage_key")
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("DELETE FROM plugins WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let details = json!({ "name": name, "version": plugin.version, "sha256": plugin.sha256 });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::PluginDeleted,
            aggregate_id: name,
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(&mut tx, actor, "plugin.delete", "plugin", name, details).await?;
    tx.commit().await?;
    plugins.remove(name)?;
    for key in keys {
        forget_component(store, &key).await;
    }
    tracing::info!(plugin = %name, %actor, "plugin deleted");
    Ok(())
}

/// Refuses with the number of unfinished jobs matching `condition` (on
/// `jobs`, with `$1` bound to `value`).
async fn refuse_if_jobs_run_on(
    tx: &mut sqlx::PgConnection,
    condition: &'static str,
    value: &str,
) -> Result<(), DeleteError> {
    let jobs: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM jobs WHERE status IN ('scheduled', 'running', 'paused') AND {condition}"
    )))
    .bind(value)
    .fetch_one(&mut *tx)
    .await?;
    if jobs > 0 {
        return Err(DeleteError::InUse(format!(
            "{jobs} unfinished job(s) run on it: wait for them to end, or cancel them"
        )));
    }
    Ok(())
}

/// Removes a component from the object store; a failure is logged (the
/// bytes are unreachable anyway).
async fn forget_component(store: &FirmwareStore, key: &str) {
    if let Err(error) = store.delete(key).await {
        tracing::warn!(%key, error = %format!("{error:#}"), "removing a deleted plugin component");
    }
}

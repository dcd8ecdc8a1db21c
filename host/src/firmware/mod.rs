//! Firmware images: records in PostgreSQL, bytes in the object store.

pub mod range;
pub mod upload;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{audit, outbox};

/// A stored firmware image.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Firmware {
    pub id: Uuid,
    pub family: String,
    pub version: String,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    #[serde(skip)]
    pub storage_key: String,
    /// What the family's device plugin extracted from the image.
    #[schema(value_type = Object)]
    pub metadata: Json<Value>,
    /// Anti-rollback counter: devices refuse an image whose counter is below
    /// the one they run.
    pub security_counter: i64,
    /// The admin who allowed this image to lower devices' security counter
    /// (a deliberate downgrade); `None`: it may not.
    pub downgrade_allowed_by: Option<String>,
    pub downgrade_allowed_at: Option<DateTime<Utc>>,
    pub downgrade_reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, family, version, sha256, size, storage_key, metadata, security_counter, \
     downgrade_allowed_by, downgrade_allowed_at, downgrade_reason, created_by, created_at";

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Firmware>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM firmware WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn version_exists(
    pool: &PgPool,
    family: &str,
    version: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM firmware WHERE family = $1 AND version = $2)")
        .bind(family)
        .bind(version)
        .fetch_one(pool)
        .await
}

/// Newest first, after `before` (the last id seen).
pub async fn list(
    pool: &PgPool,
    family: Option<&str>,
    version: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Firmware>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM firmware
         WHERE ($1::text IS NULL OR family = $1) AND ($2::text IS NULL OR version = $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(family)
    .bind(version)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn insert(conn: &mut PgConnection, firmware: &Firmware) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO firmware (id, family, version, sha256, size, storage_key, metadata, created_by,
                               created_at, security_counter)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(firmware.id)
    .bind(&firmware.family)
    .bind(&firmware.version)
    .bind(&firmware.sha256)
    .bind(firmware.size)
    .bind(&firmware.storage_key)
    .bind(&firmware.metadata)
    .bind(&firmware.created_by)
    .bind(firmware.created_at)
    .bind(firmware.security_counter)
    .execute(conn)
    .await?;
    Ok(())
}

/// Allows an image as a downgrade (`reason`: why) or withdraws that
/// (`None`), with its `firmware.downgrade.changed` event and audit record.
/// `None` when there is no such firmware.
pub async fn change_downgrade(
    pool: &PgPool,
    id: Uuid,
    actor: &str,
    reason: Option<&str>,
) -> Result<Option<Firmware>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let record = match reason {
        Some(reason) => allow_downgrade(&mut tx, id, actor, reason).await?,
        None => forbid_downgrade(&mut tx, id).await?,
    };
    let Some(record) = record else {
        return Ok(None);
    };
    let allowed = reason.is_some();
    let details = json!({
        "firmware_id": record.id, "family": record.family, "version": record.version,
        "security_counter": record.security_counter, "reason": record.downgrade_reason,
        "downgrade_allowed": allowed,
    });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::FirmwareDowngradeChanged,
            aggregate_id: &record.id.to_string(),
            payload: details.clone(),
        },
    )
    .await?;
    let action = if allowed {
        "firmware.allow_downgrade"
    } else {
        "firmware.forbid_downgrade"
    };
    audit::record(
        &mut tx,
        actor,
        action,
        "firmware",
        &record.id.to_string(),
        details,
    )
    .await?;
    tx.commit().await?;
    if allowed {
        tracing::warn!(firmware_id = %id, family = %record.family, version = %record.version, actor, reason, "firmware allowed as a downgrade");
    }
    Ok(Some(record))
}

/// Deletes a firmware record no job uses, with its `firmware.deleted`
/// event and audit record, then its bytes if no other record shares them.
pub async fn remove(
    pool: &PgPool,
    store: &crate::store::FirmwareStore,
    id: Uuid,
    actor: &str,
) -> Result<Firmware, DeleteError> {
    let mut tx = pool.begin().await?;
    let (record, unreferenced) = delete(&mut tx, id).await?;
    let details = json!({
        "firmware_id": record.id, "family": record.family, "version": record.version,
        "sha256": record.sha256,
    });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::FirmwareDeleted,
            aggregate_id: &id.to_string(),
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        actor,
        "firmware.delete",
        "firmware",
        &id.to_string(),
        details,
    )
    .await?;
    tx.commit().await?;
    // Bytes go only after the record is gone; a failure here leaves an
    // unreferenced blob, never a record without bytes.
    if unreferenced && let Err(error) = store.delete(&record.storage_key).await {
        tracing::warn!(error = format!("{error:#}"), key = %record.storage_key, "firmware blob left behind");
    }
    Ok(record)
}

/// Marks an image as an allowed downgrade (who, why). Returns the record,
/// `None` when there is no such firmware.
async fn allow_downgrade(
    conn: &mut PgConnection,
    id: Uuid,
    actor: &str,
    reason: &str,
) -> Result<Option<Firmware>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE firmware SET downgrade_allowed_by = $2, downgrade_allowed_at = now(),
                downgrade_reason = $3
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(actor)
    .bind(reason)
    .fetch_optional(conn)
    .await
}

/// Withdraws an allowed downgrade: jobs created later may not lower a
/// device's counter with this image.
async fn forbid_downgrade(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Firmware>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE firmware SET downgrade_allowed_by = NULL, downgrade_allowed_at = NULL,
                downgrade_reason = NULL
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("firmware not found")]
    NotFound,
    #[error("firmware is used by {0} job(s) and cannot be deleted")]
    InUse(i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Deletes a record no job refers to. Returns it and whether its bytes are
/// now unreferenced (another record may share the same image).
async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(Firmware, bool), DeleteError> {
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE firmware_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    if jobs > 0 {
        return Err(DeleteError::InUse(jobs));
    }
    let deleted: Option<Firmware> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM firmware WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let deleted = deleted.ok_or(DeleteError::NotFound)?;
    let shared: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM firmware WHERE storage_key = $1)")
            .bind(&deleted.storage_key)
            .fetch_one(&mut *conn)
            .await?;
    Ok((deleted, !shared))
}

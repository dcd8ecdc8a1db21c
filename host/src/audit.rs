//! The audit log: who did what to which object. Written in the same
//! transaction as the change it records; read by admins, newest first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

pub async fn record(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    target_type: &str,
    target_id: &str,
    details: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target_type, target_id, details)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(target_type)
    .bind(target_id)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// One audit record.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    #[schema(value_type = Object)]
    pub details: sqlx::types::Json<Value>,
}

/// Which records to read.
#[derive(Debug, Default)]
pub struct Filter {
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// Only records older than this one (keyset pagination).
    pub before: Option<i64>,
}

/// Records matching `filter`, newest first, at most `limit`.
pub async fn list(pool: &PgPool, filter: &Filter, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target_type, target_id, details FROM audit_log
         WHERE ($1::text IS NULL OR target_type = $1) AND ($2::text IS NULL OR target_id = $2)
           AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(&filter.target_type)
    .bind(&filter.target_id)
    .bind(filter.before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

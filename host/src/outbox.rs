//! The transactional outbox: every state change writes its event here in the
//! same transaction as the change, so that no change is published without
//! having happened and none that happened goes unpublished.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// One event as it will be published.
pub struct Event<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    /// Dotted name, e.g. `job.created`, `execution.status.changed`.
    pub event_type: &'a str,
    pub payload: Value,
}

pub async fn enqueue(conn: &mut PgConnection, event: Event<'_>) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(event.aggregate_type)
    .bind(event.aggregate_id)
    .bind(event.event_type)
    .bind(event.payload)
    .execute(conn)
    .await?;
    Ok(id)
}

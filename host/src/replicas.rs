//! Replicas: the host processes that share one database, as the
//! `replicas` table records them. Each replica's MQTT session is
//! persistent and named after its instance id ([`client_id`]); `failover.rs`
//! keeps the heartbeats and adopts the sessions of replicas that went
//! silent.

use std::time::Duration;

use sqlx::PgPool;

/// A replica as operators see it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReplicaView {
    pub instance_id: String,
    pub version: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    /// Whether its heartbeat is younger than `ROLLWAY_REPLICA_TIMEOUT`.
    pub alive: bool,
    /// The replica serving its MQTT session while it is away.
    pub adopted_by: Option<String>,
    pub adopted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every replica that ever ran on this database.
pub async fn list(pool: &PgPool, timeout: Duration) -> Result<Vec<ReplicaView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT instance_id, version, started_at, heartbeat_at,
                heartbeat_at >= now() - make_interval(secs => $1) AS alive, adopted_by, adopted_at
         FROM replicas ORDER BY instance_id",
    )
    .bind(timeout.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// The MQTT client id of a replica's session.
pub fn client_id(instance_id: &str) -> String {
    format!("rollway-{instance_id}")
}

/// Records this replica as started. A session adopted while it was away is
/// handed back before it returns (up to a few seconds), so the two do not
/// take the session from each other.
pub async fn register(
    pool: &PgPool,
    instance_id: &str,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO replicas (instance_id, version) VALUES ($1, $2)
         ON CONFLICT (instance_id) DO UPDATE
         SET started_at = now(), heartbeat_at = now(), version = excluded.version",
    )
    .bind(instance_id)
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(pool)
    .await?;
    let started = tokio::time::Instant::now();
    while started.elapsed() < timeout.min(Duration::from_secs(5)) {
        let adopted: Option<String> =
            sqlx::query_scalar("SELECT adopted_by FROM replicas WHERE instance_id = $1")
                .bind(instance_id)
                .fetch_one(pool)
                .await?;
        match adopted {
            None => return Ok(()),
            Some(adopter) if adopter == instance_id => return Ok(()),
            Some(adopter) => {
                tracing::info!(adopter, "waiting for the replica that adopted our session");
                sqlx::query("UPDATE replicas SET heartbeat_at = now() WHERE instance_id = $1")
                    .bind(instance_id)
                    .execute(pool)
                    .await?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    Ok(())
}

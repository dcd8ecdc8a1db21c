//! Retention: the rows that only exist to make delivery exactly-once in
//! effect are deleted once no redelivery can need them.
//!
//! - `processed_messages`: every status message's id, so that a repeat is
//!   ignored. A repeat comes from a QoS 1 redelivery or a device agent
//!   resending what it had not seen acked, hours or days later at worst
//!   (a truck out of coverage). After the retention window a repeat is
//!   still refused by the state machine (a status moves an execution only
//!   forward, and only for its current attempt); the id is the first guard,
//!   not the only one.
//! - `event_outbox` rows already sent to Kafka: kept for the live feed's
//!   catch-up and for operators looking back, then deleted.
//!
//! Executions, their status log, jobs and the audit log are history and
//! are never deleted here. Every replica runs the sweep; deletes are in
//! chunks (no long lock, no huge transaction), and two replicas deleting at
//! once only share the work.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Rows deleted per statement.
const CHUNK: i64 = 10_000;

#[derive(Clone)]
pub struct Retention {
    pub pool: PgPool,
    pub metrics: Metrics,
    /// How long a processed message id and a sent event are kept.
    pub keep: Duration,
}

impl Retention {
    /// How often the sweep runs: a tenth of the retention window, between
    /// a second and an hour.
    pub fn period(&self) -> Duration {
        (self.keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let never = Notify::new();
        crate::worker::run_rounds(
            "retention sweep",
            self.period(),
            CHUNK as usize,
            &never,
            &shutdown,
            || self.sweep_once(),
        )
        .await;
    }

    /// Deletes at most a chunk of each kind of expired row; returns the
    /// larger count, so that the caller goes on while a chunk was full.
    pub async fn sweep_once(&self) -> anyhow::Result<usize> {
        let keep_secs = self.keep.as_secs_f64();
        // Through the BRIN index on processed_at: the oldest block ranges.
        let messages = sqlx::query(
            "DELETE FROM processed_messages WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM processed_messages
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2))",
        )
        .bind(keep_secs)
        .bind(CHUNK)
        .execute(&self.pool)
        .await?
        .rows_affected();
        // Through the BRIN index on occurred_at (an event is sent after it
        // occurred); unsent events stay, however old.
        let events = sqlx::query(
            "DELETE FROM event_outbox WHERE id = ANY(ARRAY(
                 SELECT id FROM event_outbox
                 WHERE occurred_at < now() - make_interval(secs => $1)
                   AND sent_at < now() - make_interval(secs => $1)
                 LIMIT $2))",
        )
        .bind(keep_secs)
        .bind(CHUNK)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let deleted = &self.metrics.retention_deleted_total;
        deleted
            .with_label_values(&["processed_messages"])
            .inc_by(messages);
        deleted.with_label_values(&["event_outbox"]).inc_by(events);
        if messages + events > 0 {
            tracing::debug!(messages, events, "retention sweep");
        }
        Ok(messages.max(events) as usize)
    }
}

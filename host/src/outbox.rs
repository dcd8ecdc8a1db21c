//! The transactional outbox: every state change writes its event here in the
//! same transaction as the change, so that no change is published without
//! having happened and none that happened goes unpublished.
//!
//! This module owns the events as consumers see them (docs/EVENTS.md): the
//! kinds ([`EventType`]), the envelope the relay publishes ([`Envelope`]),
//! the channel on which sent events are announced to every replica
//! ([`CHANNEL`]), the reads of sent events, and the dead letter table.
//! `relay.rs` moves events from here to Kafka; `live.rs` to stream clients.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The version of every payload's shape, in the payload's `schema` field.
/// A consumer reading a higher number than it knows should expect new
/// fields; a field's meaning never changes within one number.
pub const SCHEMA: u32 = 1;

/// The `NOTIFY` channel on which the relay announces the `seq`s it marked
/// sent, in the statement that marks them.
pub const CHANNEL: &str = "rollway_events";

/// What an event is about; its id is the envelope's `aggregate_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    Job,
    /// A device, with its executions.
    Device,
    Firmware,
    Plugin,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Job => "job",
            Aggregate::Device => "device",
            Aggregate::Firmware => "firmware",
            Aggregate::Plugin => "plugin",
        }
    }
}

/// Every kind of event Rollway publishes. docs/EVENTS.md documents each
/// with its payload; a test holds the two together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    JobCreated,
    JobStatusChanged,
    JobBatchStarted,
    JobRolloutDecision,
    ExecutionStatusChanged,
    DeviceDriftDetected,
    FirmwareUploaded,
    FirmwareDowngradeChanged,
    FirmwareDeleted,
    PluginUploaded,
    PluginStateChanged,
    PluginConfigChanged,
    PluginVersionDeleted,
    PluginDeleted,
    /// An event of the same aggregate was dead-lettered: a gap in its
    /// stream.
    EventDeadLettered,
}

impl EventType {
    pub const ALL: [EventType; 15] = [
        EventType::JobCreated,
        EventType::JobStatusChanged,
        EventType::JobBatchStarted,
        EventType::JobRolloutDecision,
        EventType::ExecutionStatusChanged,
        EventType::DeviceDriftDetected,
        EventType::FirmwareUploaded,
        EventType::FirmwareDowngradeChanged,
        EventType::FirmwareDeleted,
        EventType::PluginUploaded,
        EventType::PluginStateChanged,
        EventType::PluginConfigChanged,
        EventType::PluginVersionDeleted,
        EventType::PluginDeleted,
        EventType::EventDeadLettered,
    ];

    /// The envelope's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::JobCreated => "job.created",
            EventType::JobStatusChanged => "job.status.changed",
            EventType::JobBatchStarted => "job.batch.started",
            EventType::JobRolloutDecision => "job.rollout.decision",
            EventType::ExecutionStatusChanged => "execution.status.changed",
            EventType::DeviceDriftDetected => "device.drift.detected",
            EventType::FirmwareUploaded => "firmware.uploaded",
            EventType::FirmwareDowngradeChanged => "firmware.downgrade.changed",
            EventType::FirmwareDeleted => "firmware.deleted",
            EventType::PluginUploaded => "plugin.uploaded",
            EventType::PluginStateChanged => "plugin.state.changed",
            EventType::PluginConfigChanged => "plugin.config.changed",
            EventType::PluginVersionDeleted => "plugin.version.deleted",
            EventType::PluginDeleted => "plugin.deleted",
            EventType::EventDeadLettered => "event.dead_lettered",
        }
    }

    /// The aggregate events of this kind belong to; `None` for a marker
    /// that belongs to the aggregate of the event it is about ([`bury`]).
    pub fn aggregate(self) -> Option<Aggregate> {
        match self {
            EventType::JobCreated
            | EventType::JobStatusChanged
            | EventType::JobBatchStarted
            | EventType::JobRolloutDecision => Some(Aggregate::Job),
            EventType::ExecutionStatusChanged | EventType::DeviceDriftDetected => {
                Some(Aggregate::Device)
            }
            EventType::FirmwareUploaded
            | EventType::FirmwareDowngradeChanged
            | EventType::FirmwareDeleted => Some(Aggregate::Firmware),
            EventType::PluginUploaded
            | EventType::PluginStateChanged
            | EventType::PluginConfigChanged
            | EventType::PluginVersionDeleted
            | EventType::PluginDeleted => Some(Aggregate::Plugin),
            EventType::EventDeadLettered => None,
        }
    }
}

/// One event as it will be published.
pub struct Event<'a> {
    pub kind: EventType,
    pub aggregate_id: &'a str,
    /// The payload's fields; [`enqueue`] adds `schema`.
    pub payload: Value,
}

/// Writes an event in the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, event: Event<'_>) -> Result<Uuid, sqlx::Error> {
    let Some(aggregate) = event.kind.aggregate() else {
        return Err(sqlx::Error::Protocol(format!(
            "{} events are written with the event they are about",
            event.kind.as_str()
        )));
    };
    let id = Uuid::now_v7();
    let mut payload = event.payload;
    if let Value::Object(fields) = &mut payload {
        fields.insert("schema".into(), SCHEMA.into());
    }
    sqlx::query(
        "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(aggregate.as_str())
    .bind(event.aggregate_id)
    .bind(event.kind.as_str())
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(id)
}

/// An event as published: the JSON envelope.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Envelope {
    pub id: Uuid,
    /// Publication order.
    pub seq: i64,
    #[serde(rename = "type")]
    #[sqlx(rename = "event_type")]
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: sqlx::types::Json<serde_json::Value>,
    #[serde(skip)]
    pub attempts: i32,
}

impl Envelope {
    /// The Kafka record key, `{aggregate_type}:{aggregate_id}`: one
    /// aggregate's events share a partition.
    pub fn key(&self) -> String {
        format!("{}:{}", self.aggregate_type, self.aggregate_id)
    }

    /// Whether the event concerns the job: the job's own events and the
    /// status changes of its executions.
    pub fn concerns_job(&self, job_id: &str) -> bool {
        (self.aggregate_type == Aggregate::Job.as_str() && self.aggregate_id == job_id)
            || self.payload.0.get("job_id").and_then(|v| v.as_str()) == Some(job_id)
    }
}

const ENVELOPE_COLUMNS: &str =
    "id, seq, event_type, aggregate_type, aggregate_id, occurred_at, payload, attempts";

/// The sent events among `seqs`, in `seq` order: what an announcement on
/// [`CHANNEL`] names.
pub async fn sent_by_seq(pool: &PgPool, seqs: &[i64]) -> Result<Vec<Envelope>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENVELOPE_COLUMNS} FROM event_outbox
         WHERE seq = ANY($1) AND sent_at IS NOT NULL ORDER BY seq"
    )))
    .bind(seqs)
    .fetch_all(pool)
    .await
}

/// Sent events after `after` (a client's `Last-Event-ID`), oldest first, at
/// most `limit`: what a reconnecting client missed.
pub async fn sent_after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<Envelope>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENVELOPE_COLUMNS} FROM event_outbox
         WHERE seq > $1 AND sent_at IS NOT NULL ORDER BY seq LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A dead-lettered event.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    /// Its place in the stream, which a replay keeps (null for events
    /// dead-lettered by versions before this field).
    pub seq: Option<i64>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    #[schema(value_type = Object)]
    pub payload: sqlx::types::Json<serde_json::Value>,
    pub occurred_at: DateTime<Utc>,
    /// How many times Kafka refused it for what it is.
    pub attempts: i32,
    pub last_error: String,
    pub failed_at: DateTime<Utc>,
}

/// The dead letters, oldest first (in `seq` order, the order to replay
/// them in).
pub async fn dead_letters(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, occurred_at, attempts, last_error, failed_at
         FROM event_dead_letter ORDER BY seq NULLS LAST, failed_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Moves an event that failed too often to the dead letter table, and
/// writes an `event.dead_lettered` marker in its place on its aggregate's
/// stream (a small event, published after the ones of its key that waited
/// behind it), so that consumers see the gap.
pub async fn bury(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH dead AS (DELETE FROM event_outbox WHERE id = $1 RETURNING *),
              buried AS (
                  INSERT INTO event_dead_letter (id, seq, aggregate_type, aggregate_id, event_type, payload,
                                                 occurred_at, attempts, last_error)
                  SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, occurred_at, refusals,
                         last_error
                  FROM dead
                  RETURNING id, seq, aggregate_type, aggregate_id, event_type, last_error)
         INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
         SELECT $2, aggregate_type, aggregate_id, $3,
                jsonb_build_object('schema', $4::int, 'event_id', id, 'event_type', event_type,
                                   'seq', seq, 'reason', last_error)
         FROM buried",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(EventType::EventDeadLettered.as_str())
    .bind(SCHEMA as i32)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts the dead-lettered event `id` back into the outbox, or all of them
/// (`None`, in one transaction, so the relay sees them together); returns
/// how many. Each keeps its id and `seq`, and the failures it had: the
/// relay finds it among the retries below its floor, in `seq` order with
/// the other replayed events, and one more failure that counts buries it
/// again. (One dead-lettered before `seq` was kept takes a new number, in
/// the order they failed.)
pub async fn replay(conn: &mut PgConnection, id: Option<Uuid>) -> Result<u64, sqlx::Error> {
    let moved = sqlx::query(
        "WITH dead AS (DELETE FROM event_dead_letter WHERE $1::uuid IS NULL OR id = $1 RETURNING *)
         INSERT INTO event_outbox (id, seq, aggregate_type, aggregate_id, event_type, payload, occurred_at,
                                   attempts, refusals, last_error)
         SELECT id, coalesce(seq, rollway_outbox_seq()), aggregate_type, aggregate_id, event_type, payload,
                occurred_at, CASE WHEN seq IS NULL THEN 0 ELSE 1 END, attempts, last_error
         FROM (SELECT * FROM dead ORDER BY seq NULLS LAST, failed_at) ordered",
    )
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(moved)
}

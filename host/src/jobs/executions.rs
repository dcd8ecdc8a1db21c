//! Every change of an execution's status, written in one place.
//!
//! An execution moves when the dispatcher claims it (`queued` →
//! `dispatched`), when its device reports (forward through `init`,
//! `downloading`, `flashing`, `rebooting` to `done` or `error`), when its
//! command cannot be sent (→ `error`), when its connected device makes no
//! progress (→ `timed_out`, or back to `queued` while retries are left),
//! when the job's delivery deadline passes (→ `expired`) and when its
//! job is cancelled or aborted (→ `cancelled`). Callers choose which
//! executions move and where to; this module writes each move: the
//! execution row (its `version` bumped), a status-log row and one
//! `execution.status.changed` event of one payload shape (docs/EVENTS.md),
//! in the caller's statement or transaction.
//!
//! Two forms. Set-based moves chosen in SQL (a claim, a sweep, a cancel of a
//! million executions) go through [`statement`]: the caller's CTE `moves`
//! names the executions, this module's SQL moves them and records each.
//! Moves computed in the host (status ingestion folds many statuses of one
//! execution in a batch) go through [`record`].

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ExecutionStatus;
use crate::outbox::{Aggregate, EventType, SCHEMA};

/// Why an execution moved: the event's `cause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The dispatcher claimed it: an attempt begins.
    Dispatch,
    /// Its device reported.
    Device,
    /// Its command could not be built or published.
    DispatchFailed,
    /// Its device, connected, made no progress within the job's timeout.
    Timeout,
    /// The job's delivery deadline passed before its device finished.
    Deadline,
    /// Its job was cancelled or aborted, or an operator cancelled it.
    Cancel,
    /// An operator asked for it to be tried again.
    Retry,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Dispatch => "dispatch",
            Cause::Device => "device",
            Cause::DispatchFailed => "dispatch_failed",
            Cause::Timeout => "timeout",
            Cause::Deadline => "deadline",
            Cause::Cancel => "cancel",
            Cause::Retry => "retry",
        }
    }
}

/// The fields of an `execution.status.changed` payload (besides `schema`),
/// each with the column of a move that fills it: the one shape, built in
/// SQL for set-based moves ([`statement`]) and in the host for moves the
/// host computed ([`Move::payload`]; PostgreSQL is the busier process).
const PAYLOAD: [(&str, &str); 11] = [
    ("execution_id", "id"),
    ("job_id", "job_id"),
    ("device_id", "device_id"),
    ("attempt", "attempt"),
    ("from", "from_status"),
    ("to", "to_status"),
    ("reported", "reported"),
    ("reason", "reason"),
    ("message_id", "message_id"),
    ("progress", "progress"),
    ("cause", "cause"),
];

/// The payload as SQL over a move's columns.
fn payload_sql() -> String {
    let fields: Vec<String> = PAYLOAD
        .iter()
        .map(|(field, column)| format!("'{field}', {column}"))
        .collect();
    format!(
        "jsonb_build_object('schema', {SCHEMA}, {})",
        fields.join(", ")
    )
}

/// Writes the status-log rows and events of the moves in `source` (a CTE
/// with the columns of [`PAYLOAD`] and `ord`; `event_id` and `payload` are
/// SQL expressions over it), in `ord` order when `ordered` (one
/// execution's moves must keep theirs), and only `when` the condition
/// holds (SQL; `true` for none).
fn record_moved(source: &str, event_id: &str, payload: &str, ordered: bool, when: &str) -> String {
    let order = if ordered { "ORDER BY ord" } else { "" };
    format!(
        "logged AS (
             INSERT INTO execution_status_log (execution_id, status, progress, message, message_id)
             SELECT id, coalesce(reported, to_status), progress,
                    coalesce(reason, CASE WHEN cause = 'dispatch' THEN 'attempt ' || attempt END),
                    message_id
             FROM {source} WHERE {when} {order}
         ), events AS (
             INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
             SELECT {event_id}, '{aggregate}', device_id, '{event}', {payload}
             FROM {source} WHERE {when} {order}
         )",
        aggregate = Aggregate::Device.as_str(),
        event = EventType::ExecutionStatusChanged.as_str(),
    )
}

/// A statement that moves the executions a caller chooses. `choose` is SQL
/// defining CTEs, one named `moves`, with the columns `id` (an
/// execution the caller has locked), `previous` (its status now), `next`,
/// `reason` (text or NULL: its `last_error` and the log's message) and
/// `cause` (a [`Cause`]), and `dispatcher` (the replica claiming, for a
/// move to `dispatched`). The CTE `changed` then holds the moved executions (`id`,
/// `job_id`, `device_id`, `attempt`, `to_status`, ...) for `select`, the
/// statement's final query.
pub fn statement(choose: &str, select: &str) -> String {
    format!(
        "WITH {choose},
         changed AS (
             UPDATE executions e
             SET status = m.next,
                 attempts = e.attempts + CASE WHEN m.next = 'dispatched' THEN 1 ELSE 0 END,
                 dispatched_at = CASE WHEN m.next = 'dispatched' THEN now() ELSE e.dispatched_at END,
                 dispatched_by = CASE WHEN m.next = 'dispatched' THEN m.dispatcher ELSE e.dispatched_by END,
                 progress = CASE WHEN m.next = 'dispatched' THEN NULL ELSE e.progress END,
                 -- A retry keeps the error it retries; the log says who retried.
                 last_error = CASE WHEN m.cause = 'retry' THEN e.last_error
                                   ELSE coalesce(m.reason, e.last_error) END,
                 finished_at = CASE WHEN m.next IN ('done', 'error', 'timed_out', 'expired', 'cancelled')
                                    THEN now() END,
                 -- Only a device's own status makes it wait.
                 waiting_reason = NULL,
                 -- A device that has its command is told of its cancel.
                 cancel_delivery = CASE WHEN m.next = 'cancelled' AND e.stage = 'in_flight'
                                        THEN 'pending' ELSE e.cancel_delivery END,
                 updated_at = now(), version = e.version + 1
             FROM moves m WHERE e.id = m.id
             RETURNING e.id, e.job_id, e.device_id, e.attempts AS attempt,
                       m.previous AS from_status, e.status AS to_status, NULL::text AS reported,
                       m.reason, NULL::text AS message_id, NULL::int2 AS progress, m.cause
         ),
         {record}
         {select}",
        record = record_moved("changed", "rollway_uuid_v7()", &payload_sql(), false, "true"),
    )
}

/// One move computed in the host.
#[derive(Debug, Clone)]
pub struct Move {
    pub execution_id: i64,
    pub job_id: Uuid,
    pub device_id: String,
    /// The attempt the execution is at.
    pub attempt: i32,
    pub from: ExecutionStatus,
    /// What is stored.
    pub to: ExecutionStatus,
    /// What the device said, when a device moved it (an `error` with
    /// retries left is stored as `queued`).
    pub reported: Option<ExecutionStatus>,
    pub reason: Option<String>,
    pub message_id: Option<String>,
    pub progress: Option<i16>,
    pub cause: Cause,
}

impl Move {
    /// The event's payload: [`PAYLOAD`]'s fields, as SQL builds them.
    pub fn payload(&self) -> serde_json::Value {
        let values = [
            json!(self.execution_id),
            json!(self.job_id),
            json!(self.device_id),
            json!(self.attempt),
            json!(self.from.as_str()),
            json!(self.to.as_str()),
            json!(self.reported.map(ExecutionStatus::as_str)),
            json!(self.reason),
            json!(self.message_id),
            json!(self.progress),
            json!(self.cause.as_str()),
        ];
        let mut payload = serde_json::Map::with_capacity(PAYLOAD.len() + 1);
        payload.insert("schema".into(), json!(SCHEMA));
        for ((field, _), value) in PAYLOAD.iter().zip(values) {
            payload.insert((*field).into(), value);
        }
        serde_json::Value::Object(payload)
    }
}

/// An execution's row after the host's moves.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    /// The version read (and locked) before the moves.
    pub loaded_version: i64,
    pub status: ExecutionStatus,
    pub progress: Option<i16>,
    pub last_error: Option<String>,
    /// Why its device waits (`waiting`), else none.
    pub waiting_reason: Option<String>,
}

/// Writes rows and their moves (a row may have several, in order, or none
/// when only its progress changed) in one statement, in the caller's
/// transaction. Returns how many rows were still at their loaded version
/// and so updated: fewer than given means another writer got there first,
/// and the caller rolls back.
pub async fn record(
    conn: &mut PgConnection,
    rows: &[Row],
    moves: &[Move],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() && moves.is_empty() {
        return Ok(0);
    }
    let mut r = RowColumns::default();
    for row in rows {
        r.ids.push(row.id);
        r.statuses.push(row.status.as_str());
        r.progress.push(row.progress);
        r.errors.push(row.last_error.as_deref());
        r.waiting.push(row.waiting_reason.as_deref());
        r.finished.push(row.status.is_terminal());
        r.loaded.push(row.loaded_version);
    }
    let mut m = MoveColumns::default();
    for one in moves {
        m.ids.push(one.execution_id);
        m.jobs.push(one.job_id);
        m.devices.push(one.device_id.as_str());
        m.attempts.push(one.attempt);
        m.from.push(one.from.as_str());
        m.to.push(one.to.as_str());
        m.reported.push(one.reported.map(ExecutionStatus::as_str));
        m.reasons.push(one.reason.as_deref());
        m.message_ids.push(one.message_id.as_deref());
        m.progress.push(one.progress);
        m.causes.push(one.cause.as_str());
        // Time-ordered, made here: as cheap as a counter, where the SQL
        // function costs a few microseconds an event.
        m.event_ids.push(Uuid::now_v7());
        m.payloads.push(one.payload());
    }
    let updated: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH rows AS (
             UPDATE executions e
             SET status = u.status, progress = u.progress, last_error = u.last_error,
                 waiting_reason = u.waiting_reason,
                 finished_at = CASE WHEN u.finished THEN now() ELSE NULL END, reported_at = now(),
                 updated_at = now(), version = u.loaded + 1
             FROM unnest($1::bigint[], $2::text[], $3::int2[], $4::text[], $5::bool[], $6::bigint[],
                         $21::text[])
                  AS u(id, status, progress, last_error, finished, loaded, waiting_reason)
             WHERE e.id = u.id AND e.version = u.loaded
             RETURNING e.id
         ), moved AS (
             SELECT * FROM unnest($7::bigint[], $8::uuid[], $9::text[], $10::int[], $11::text[],
                                  $12::text[], $13::text[], $14::text[], $15::text[], $16::int2[],
                                  $17::text[], $18::uuid[], $19::jsonb[])
                  WITH ORDINALITY AS m(id, job_id, device_id, attempt, from_status, to_status,
                                       reported, reason, message_id, progress, cause, event_id,
                                       payload, ord)
         ),
         {record}
         SELECT count(*) FROM rows",
        // A row another writer changed first is not updated; then nothing
        // of the statement's log rows and events may stand either.
        record = record_moved(
            "moved",
            "event_id",
            "payload",
            true,
            "(SELECT count(*) FROM rows) = $20"
        ),
    )))
    .bind(&r.ids)
    .bind(&r.statuses)
    .bind(&r.progress)
    .bind(&r.errors)
    .bind(&r.finished)
    .bind(&r.loaded)
    .bind(&m.ids)
    .bind(&m.jobs)
    .bind(&m.devices)
    .bind(&m.attempts)
    .bind(&m.from)
    .bind(&m.to)
    .bind(&m.reported)
    .bind(&m.reasons)
    .bind(&m.message_ids)
    .bind(&m.progress)
    .bind(&m.causes)
    .bind(&m.event_ids)
    .bind(&m.payloads)
    .bind(rows.len() as i64)
    .bind(&r.waiting)
    .fetch_one(conn)
    .await?;
    Ok(updated as u64)
}

#[derive(Default)]
struct RowColumns<'a> {
    ids: Vec<i64>,
    statuses: Vec<&'static str>,
    progress: Vec<Option<i16>>,
    errors: Vec<Option<&'a str>>,
    waiting: Vec<Option<&'a str>>,
    finished: Vec<bool>,
    loaded: Vec<i64>,
}

#[derive(Default)]
struct MoveColumns<'a> {
    ids: Vec<i64>,
    jobs: Vec<Uuid>,
    devices: Vec<&'a str>,
    attempts: Vec<i32>,
    from: Vec<&'static str>,
    to: Vec<&'static str>,
    reported: Vec<Option<&'static str>>,
    reasons: Vec<Option<&'a str>>,
    message_ids: Vec<Option<&'a str>>,
    progress: Vec<Option<i16>>,
    causes: Vec<&'static str>,
    event_ids: Vec<Uuid>,
    payloads: Vec<serde_json::Value>,
}

/// Asks for the commands of the executions in flight on `devices`, which
/// just said hello (for themselves, or through their gateway), to be sent
/// again: a device back from a shift out of coverage, or back with a clean
/// session, has lost its command or holds one whose manifest has expired.
/// The dispatcher sends each again with a freshly signed manifest, for the
/// same attempt. So are the cancels those devices have not answered, while
/// the job's delivery deadline, counted from the cancel, holds. Returns
/// how many commands and cancels.
pub async fn resend_to<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    devices: &[&str],
) -> Result<u64, sqlx::Error> {
    if devices.is_empty() {
        return Ok(0);
    }
    // In device and id order, as status ingestion locks executions. The
    // command counts as sent from now: the device's earlier statuses do
    // not make it stalled before the dispatcher sends it again.
    let resent = sqlx::query(
        "WITH picked AS (
             SELECT x.id, (x.stage = 'in_flight') AS command
             FROM executions x
             WHERE x.device_id = ANY($1)
               AND ((x.stage = 'in_flight' AND NOT x.resend)
                    OR (x.cancel_delivery = 'sent'
                        -- The job, only for a cancel.
                        AND x.finished_at > now() - make_interval(secs => (
                            SELECT j.delivery_deadline_secs FROM jobs j WHERE j.id = x.job_id))))
             ORDER BY x.device_id, x.id
             FOR UPDATE
         )
         UPDATE executions e
         SET resend = e.resend OR p.command,
             dispatched_at = CASE WHEN p.command THEN now() ELSE e.dispatched_at END,
             cancel_delivery = CASE WHEN p.command THEN e.cancel_delivery ELSE 'pending' END,
             updated_at = now(), version = e.version + 1
         FROM picked p WHERE e.id = p.id",
    )
    .bind(devices)
    .execute(executor)
    .await?;
    Ok(resent.rows_affected())
}

/// Records that the devices of `executions` answered their cancel (they
/// stopped, or reached `done` or `error` all the same): it is not sent
/// again. In the caller's transaction, which holds the rows.
pub async fn cancel_answered(
    conn: &mut PgConnection,
    executions: &[i64],
) -> Result<u64, sqlx::Error> {
    if executions.is_empty() {
        return Ok(0);
    }
    let answered = sqlx::query(
        "UPDATE executions SET cancel_delivery = 'answered'
         WHERE id = ANY($1) AND cancel_delivery IN ('pending', 'sent')",
    )
    .bind(executions)
    .execute(conn)
    .await?;
    Ok(answered.rows_affected())
}

/// Moves a job's executions that `which` selects (SQL over `executions`,
/// `$1` the job) to `next`, each with `reason` and `cause`, in device
/// order (the order status ingestion locks them in). Returns how many.
async fn move_all(
    conn: &mut PgConnection,
    job_id: Uuid,
    which: &str,
    next: ExecutionStatus,
    reason: &str,
    cause: Cause,
) -> Result<i64, sqlx::Error> {
    let sql = statement(
        &format!(
            "moves AS (
                 SELECT id, status AS previous, $2::text AS next, $3::text AS reason,
                        $4::text AS cause, NULL::text AS dispatcher
                 FROM executions
                 WHERE job_id = $1 AND {which}
                 ORDER BY device_id
                 FOR UPDATE
             )"
        ),
        "SELECT count(*) FROM changed",
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(job_id)
        .bind(next.as_str())
        .bind(reason)
        .bind(cause.as_str())
        .fetch_one(conn)
        .await
}

/// Cancels every unfinished execution of a job in one statement.
pub async fn cancel_all(
    conn: &mut PgConnection,
    job_id: Uuid,
    reason: &str,
) -> Result<i64, sqlx::Error> {
    let which = "stage <> 'finished'";
    move_all(
        conn,
        job_id,
        which,
        ExecutionStatus::Cancelled,
        reason,
        Cause::Cancel,
    )
    .await
}

/// Queues a job's failed, timed-out and expired executions again: each is
/// dispatched anew as its next attempt. Returns how many.
pub async fn retry_failed(
    conn: &mut PgConnection,
    job_id: Uuid,
    reason: &str,
) -> Result<i64, sqlx::Error> {
    let which = "status IN ('error', 'timed_out', 'expired')";
    move_all(
        conn,
        job_id,
        which,
        ExecutionStatus::Queued,
        reason,
        Cause::Retry,
    )
    .await
}

/// Cancels a job's unfinished execution on one device. Returns its status
/// before, `None` when the job has no unfinished execution on the device.
pub async fn cancel_one(
    conn: &mut PgConnection,
    job_id: Uuid,
    device_id: &str,
    reason: &str,
) -> Result<Option<ExecutionStatus>, sqlx::Error> {
    let sql = statement(
        "moves AS (
             SELECT id, status AS previous, 'cancelled' AS next, $3::text AS reason,
                    'cancel' AS cause, NULL::text AS dispatcher
             FROM executions
             WHERE job_id = $1 AND device_id = $2 AND stage <> 'finished'
             FOR UPDATE
         )",
        "SELECT from_status FROM changed",
    );
    let previous: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(job_id)
        .bind(device_id)
        .bind(reason)
        .fetch_optional(conn)
        .await?;
    previous
        .map(|s| ExecutionStatus::parse(&s).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_builds_the_payload_sql_builds() {
        let one = Move {
            execution_id: 7,
            job_id: Uuid::nil(),
            device_id: "VIN-1".into(),
            attempt: 2,
            from: ExecutionStatus::Flashing,
            to: ExecutionStatus::Queued,
            reported: Some(ExecutionStatus::Error),
            reason: Some("flash failed (will retry)".into()),
            message_id: Some("7-2-4-error".into()),
            progress: None,
            cause: Cause::Device,
        };
        // Each value under its own field (the host pairs them by position).
        assert_eq!(
            one.payload(),
            json!({
                "schema": SCHEMA, "execution_id": 7, "job_id": Uuid::nil(), "device_id": "VIN-1",
                "attempt": 2, "from": "flashing", "to": "queued", "reported": "error",
                "reason": "flash failed (will retry)", "message_id": "7-2-4-error",
                "progress": null, "cause": "device",
            })
        );
        // SQL builds the same fields from the columns PAYLOAD names.
        assert_eq!(
            payload_sql(),
            format!(
                "jsonb_build_object('schema', {SCHEMA}, 'execution_id', id, 'job_id', job_id, \
                 'device_id', device_id, 'attempt', attempt, 'from', from_status, 'to', to_status, \
                 'reported', reported, 'reason', reason, 'message_id', message_id, \
                 'progress', progress, 'cause', cause)"
            )
        );
    }
}

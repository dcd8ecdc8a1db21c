//! Applying a whole batch of parsed statuses with a few set-based
//! statements instead of several round trips per message.
//!
//! The rules are those of the per-message [`super::apply`]: a spoofed report
//! is refused, a message id is applied once (`processed_messages`), a status
//! is matched to its execution, checked against the firmware and the state
//! machine, and written with its log row and outbox event. Here the batch's
//! executions are read once and locked (`FOR UPDATE`, in device order, the
//! order every batch and job action uses), the messages are folded over
//! them in memory in their arrival order, and the results are written with
//! one statement per table. Because the rows are locked, the version checks
//! of the final update cannot fail; if they do anyway, the batch reports a
//! conflict and the caller applies it message by message.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Outcome, Refusal, stale_attempt, state_of};
use crate::domain::ExecutionStatus;
use crate::plugins::StatusReport;

/// A status the family plugin parsed, with where it came from.
pub(super) struct Parsed {
    /// Position in the batch as received.
    pub index: usize,
    /// The device named by the topic (the sender).
    pub topic_device: String,
    pub report: StatusReport,
    /// The attempt the status answers, when the device said.
    pub attempt: Option<u32>,
}

/// What the batch did, for the caller to report after the commit.
#[derive(Default)]
pub(super) struct Applied {
    pub outcomes: Vec<(usize, Outcome)>,
    pub jobs: HashSet<Uuid>,
    /// Dispatch-to-done times of finished updates, in seconds.
    pub durations: Vec<f64>,
    /// Device-to-host lags of applied statuses, in seconds.
    pub lags: Vec<f64>,
    pub device_errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("{0} execution(s) changed although locked")]
    Conflict(u64),
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    job_id: Uuid,
    device_id: String,
    status: String,
    version: i64,
    attempts: i32,
    max_retries: i32,
    progress: Option<i16>,
    last_error: Option<String>,
    dispatched_at: Option<DateTime<Utc>>,
    firmware_id: String,
    firmware_version: String,
    security_counter: i64,
}

/// An execution as the batch changes it.
struct Execution {
    row: Row,
    status: ExecutionStatus,
    loaded_version: i64,
    finished: bool,
    changed: bool,
}

pub(super) async fn apply(tx: &mut PgConnection, items: &[Parsed]) -> Result<Applied, BatchError> {
    let mut applied = Applied::default();

    // A device reports for itself, or a gateway for the devices behind it.
    let reported_for_others: Vec<&str> = items
        .iter()
        .filter(|p| p.report.device_id != p.topic_device)
        .map(|p| p.report.device_id.as_str())
        .collect();
    let gateways: HashMap<String, Option<String>> = if reported_for_others.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT id, gateway_id FROM devices WHERE id = ANY($1)",
        )
        .bind(&reported_for_others)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let mut candidates: Vec<&Parsed> = Vec::with_capacity(items.len());
    for item in items {
        let device = item.report.device_id.as_str();
        if device != item.topic_device
            && gateways.get(device).and_then(Option::as_deref) != Some(item.topic_device.as_str())
        {
            let outcome = Outcome::refused(
                Refusal::Spoofed,
                format!("{} reported for {device}", item.topic_device),
            );
            applied.outcomes.push((item.index, outcome));
        } else {
            candidates.push(item);
        }
    }

    // Each message id once, whatever becomes of the message.
    let keys: Vec<String> = candidates
        .iter()
        .map(|p| format!("{}/{}", p.report.device_id, p.report.message_id))
        .collect();
    let mut fresh: HashSet<String> = sqlx::query_scalar(
        "INSERT INTO processed_messages (message_id)
         SELECT k FROM unnest($1::text[]) AS k ORDER BY k
         ON CONFLICT DO NOTHING RETURNING message_id",
    )
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut work = Vec::with_capacity(candidates.len());
    for (item, key) in candidates.into_iter().zip(keys) {
        // The first of repeats within the batch is the fresh one.
        if fresh.remove(&key) {
            work.push(item);
        } else {
            applied.outcomes.push((item.index, Outcome::Duplicate));
        }
    }
    if work.is_empty() {
        return Ok(applied);
    }

    // The executions the statuses name, or the devices' in-flight ones,
    // locked in device order.
    let named: Vec<i64> = work
        .iter()
        .filter_map(|p| p.report.execution_id.map(|id| id as i64))
        .collect();
    let devices: Vec<&str> = work
        .iter()
        .filter(|p| p.report.execution_id.is_none())
        .map(|p| p.report.device_id.as_str())
        .collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.id, e.job_id, e.device_id, e.status, e.version, e.attempts, j.max_retries,
                e.progress, e.last_error, e.dispatched_at, j.firmware_id::text AS firmware_id,
                f.version AS firmware_version, f.security_counter
         FROM executions e JOIN jobs j ON j.id = e.job_id JOIN firmware f ON f.id = j.firmware_id
         WHERE e.id = ANY($1) OR (e.device_id = ANY($2) AND e.stage = 'in_flight')
         ORDER BY e.device_id, e.id
         FOR UPDATE OF e",
    )
    .bind(&named)
    .bind(&devices)
    .fetch_all(&mut *tx)
    .await?;
    let mut executions: HashMap<i64, Execution> = HashMap::with_capacity(rows.len());
    let mut in_flight: HashMap<String, i64> = HashMap::new();
    for row in rows {
        let status =
            ExecutionStatus::parse(&row.status).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if status.is_in_flight() {
            in_flight.insert(row.device_id.clone(), row.id);
        }
        executions.insert(
            row.id,
            Execution {
                status,
                loaded_version: row.version,
                finished: status.is_terminal(),
                changed: false,
                row,
            },
        );
    }

    let mut log = LogRows::default();
    let mut events = EventRows::default();
    // Device → the version and security counter it now runs.
    let mut installed: HashMap<String, (String, i64)> = HashMap::new();
    let now_ms = Utc::now().timestamp_millis();
    for item in work {
        let report = &item.report;
        let device = report.device_id.as_str();
        let id = match report.execution_id {
            Some(id) => Some(id as i64),
            None => in_flight.get(device).copied(),
        };
        let execution = id
            .and_then(|id| executions.get_mut(&id))
            .filter(|e| e.row.device_id == device)
            // Without an id, only an execution still in flight matches.
            .filter(|e| report.execution_id.is_some() || e.status.is_in_flight());
        let Some(execution) = execution else {
            applied.outcomes.push((
                item.index,
                Outcome::refused(Refusal::NoExecution, "no execution matches"),
            ));
            continue;
        };
        let outcome = fold(execution, report, item.attempt, &mut log, &mut events);
        if outcome == Outcome::Applied {
            applied.jobs.insert(execution.row.job_id);
            if state_of(report) == ExecutionStatus::Done {
                let row = &execution.row;
                installed.insert(
                    device.to_owned(),
                    (row.firmware_version.clone(), row.security_counter),
                );
                if let Some(dispatched) = execution.row.dispatched_at {
                    let took = (Utc::now() - dispatched).num_milliseconds().max(0);
                    applied.durations.push(took as f64 / 1000.0);
                }
            }
            if state_of(report) == ExecutionStatus::Error {
                applied.device_errors += 1;
            }
            if let Some(sent) = report.sent_at {
                applied
                    .lags
                    .push((now_ms - sent as i64).max(0) as f64 / 1000.0);
            }
        }
        applied.outcomes.push((item.index, outcome));
    }

    write_executions(tx, executions.values().filter(|e| e.changed)).await?;
    log.insert(tx).await?;
    events.insert(tx).await?;
    if !installed.is_empty() {
        let (ids, (versions, counters)): (Vec<String>, (Vec<String>, Vec<i64>)) =
            installed.into_iter().unzip();
        sqlx::query(
            "UPDATE devices d SET firmware_version = u.version, security_counter = u.counter,
                    last_seen = now()
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(id, version, counter)
             WHERE d.id = u.id",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(&counters)
        .execute(&mut *tx)
        .await?;
    }
    Ok(applied)
}

/// Applies one status to its execution in memory: the rules of
/// [`super::apply`] without the round trips.
fn fold(
    execution: &mut Execution,
    report: &StatusReport,
    attempt: Option<u32>,
    log: &mut LogRows,
    events: &mut EventRows,
) -> Outcome {
    let row = &mut execution.row;
    if let Some(stale) = stale_attempt(row.id, attempt, row.attempts) {
        return stale;
    }
    if let Some(firmware) = &report.firmware_id
        && *firmware != row.firmware_id
    {
        return Outcome::refused(
            Refusal::WrongFirmware,
            format!("firmware {firmware} is not the one of execution {}", row.id),
        );
    }
    let from = execution.status;
    if from == ExecutionStatus::Queued {
        return Outcome::refused(
            Refusal::NotDispatched,
            format!(
                "execution {} is not dispatched (a late status of an earlier attempt?)",
                row.id
            ),
        );
    }
    let next = state_of(report);
    if let Err(reason) = from.check_transition(next) {
        return Outcome::refused(Refusal::StateMachine, reason);
    }
    let progress = report.progress.map(i16::from);
    if from == next {
        // More progress in the same state: no state change, no event.
        if progress.is_some() && progress != row.progress {
            row.progress = progress;
            row.version += 1;
            execution.changed = true;
        }
        return Outcome::Progress;
    }
    // An error with retries left sends the execution back to the queue.
    let retry = next == ExecutionStatus::Error && row.attempts <= row.max_retries;
    let stored = if retry { ExecutionStatus::Queued } else { next };
    let message = match (&report.error, retry) {
        (Some(e), true) => Some(format!("{e} (will retry)")),
        (e, _) => e.clone(),
    };
    row.progress = progress.or(if stored == ExecutionStatus::Done {
        Some(100)
    } else {
        row.progress
    });
    if message.is_some() {
        row.last_error.clone_from(&message);
    }
    row.version += 1;
    execution.status = stored;
    execution.finished = stored.is_terminal();
    execution.changed = true;
    log.push(row.id, next, progress, message.clone(), &report.message_id);
    events.push(
        &row.device_id,
        json!({
            "execution_id": row.id, "job_id": row.job_id, "device_id": row.device_id,
            "from": from.as_str(), "to": stored.as_str(), "reported": next.as_str(),
            "reason": message, "message_id": report.message_id,
        }),
    );
    Outcome::Applied
}

async fn write_executions<'a>(
    tx: &mut PgConnection,
    changed: impl Iterator<Item = &'a Execution>,
) -> Result<(), BatchError> {
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    let mut progress = Vec::new();
    let mut errors = Vec::new();
    let mut finished = Vec::new();
    let mut loaded = Vec::new();
    let mut versions = Vec::new();
    for e in changed {
        ids.push(e.row.id);
        statuses.push(e.status.as_str());
        progress.push(e.row.progress);
        errors.push(e.row.last_error.as_deref());
        finished.push(e.finished);
        loaded.push(e.loaded_version);
        versions.push(e.row.version);
    }
    if ids.is_empty() {
        return Ok(());
    }
    let updated = sqlx::query(
        "UPDATE executions e SET status = u.status, progress = u.progress, last_error = u.last_error,
                finished_at = CASE WHEN u.finished THEN now() ELSE NULL END,
                updated_at = now(), version = u.version
         FROM unnest($1::bigint[], $2::text[], $3::int2[], $4::text[], $5::bool[], $6::bigint[], $7::bigint[])
              AS u(id, status, progress, last_error, finished, loaded, version)
         WHERE e.id = u.id AND e.version = u.loaded",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&progress)
    .bind(&errors)
    .bind(&finished)
    .bind(&loaded)
    .bind(&versions)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let expected = ids.len() as u64;
    if updated != expected {
        return Err(BatchError::Conflict(expected - updated));
    }
    Ok(())
}

/// `execution_status_log` rows, written in one statement in batch order.
#[derive(Default)]
struct LogRows {
    executions: Vec<i64>,
    statuses: Vec<&'static str>,
    progress: Vec<Option<i16>>,
    messages: Vec<Option<String>>,
    message_ids: Vec<String>,
}

impl LogRows {
    fn push(
        &mut self,
        execution: i64,
        status: ExecutionStatus,
        progress: Option<i16>,
        message: Option<String>,
        message_id: &str,
    ) {
        self.executions.push(execution);
        self.statuses.push(status.as_str());
        self.progress.push(progress);
        self.messages.push(message);
        self.message_ids.push(message_id.to_owned());
    }

    async fn insert(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.executions.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO execution_status_log (execution_id, status, progress, message, message_id)
             SELECT u.execution_id, u.status, u.progress, u.message, u.message_id
             FROM unnest($1::bigint[], $2::text[], $3::int2[], $4::text[], $5::text[])
                  WITH ORDINALITY AS u(execution_id, status, progress, message, message_id, n)
             ORDER BY u.n",
        )
        .bind(&self.executions)
        .bind(&self.statuses)
        .bind(&self.progress)
        .bind(&self.messages)
        .bind(&self.message_ids)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// `execution.status.changed` outbox events, written in one statement in
/// batch order (so their `seq` follows the order they happened in).
#[derive(Default)]
struct EventRows {
    ids: Vec<Uuid>,
    devices: Vec<String>,
    payloads: Vec<serde_json::Value>,
}

impl EventRows {
    fn push(&mut self, device: &str, payload: serde_json::Value) {
        self.ids.push(Uuid::now_v7());
        self.devices.push(device.to_owned());
        self.payloads.push(payload);
    }

    async fn insert(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
             SELECT u.id, 'device', u.device, 'execution.status.changed', u.payload
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) WITH ORDINALITY AS u(id, device, payload, n)
             ORDER BY u.n",
        )
        .bind(&self.ids)
        .bind(&self.devices)
        .bind(&self.payloads)
        .execute(tx)
        .await?;
        Ok(())
    }
}

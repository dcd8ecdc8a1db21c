//! Applying parsed statuses with a few set-based statements instead of
//! several round trips per message: a spoofed report is refused, a message
//! id is applied once (`processed_messages`), each status is matched to its
//! execution, and [`decide`](super::decide::decide) says what it does. The
//! batch's executions are read once and locked (`FOR UPDATE`, in device
//! order, the order every batch and job action uses), the messages are
//! folded over them in memory in their arrival order, and the moves are
//! written by `jobs::executions::record` in one statement. Because the rows
//! are locked, its version checks cannot fail; if they do anyway, the batch
//! reports a conflict. A batch of one message is how the slow path applies
//! each message on its own.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::decide::{self, Decision};
use super::{Outcome, Refusal};
use crate::domain::ExecutionStatus;
use crate::jobs::executions::{self, Cause, Move};
use crate::plugins::{ParsedStatus, StatusReport};

/// A status the family plugin parsed, with where it came from.
pub(super) struct Parsed {
    /// Position in the batch as received.
    pub index: usize,
    /// The device named by the topic (the sender).
    pub topic_device: String,
    pub report: StatusReport,
    /// What the device reports it is doing (the report's own `state` is
    /// superseded by it).
    pub state: ExecutionStatus,
    /// Why it waits or stopped, when it says.
    pub reason: Option<String>,
    /// The attempt the status answers, when the device said.
    pub attempt: Option<u32>,
}

impl Parsed {
    pub(super) fn from_plugin(index: usize, topic_device: String, parsed: ParsedStatus) -> Self {
        Parsed {
            index,
            topic_device,
            state: super::state_of(parsed.state),
            reason: parsed.reason,
            report: parsed.report,
            attempt: parsed.attempt,
        }
    }
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
    /// Whether an execution went back to `queued` for a retry: the
    /// dispatcher has a command to send.
    pub requeued: bool,
    /// Devices whose execution row the batch wrote (its `reported_at` is
    /// now) or whose installed version it recorded: the write already
    /// says when they were last heard from.
    pub reported: HashSet<String>,
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
    waiting_reason: Option<String>,
    dispatched_at: Option<DateTime<Utc>>,
    firmware_id: String,
    firmware_version: String,
    security_counter: i64,
}

/// An execution as the batch changes it.
struct Execution {
    row: Row,
    current: decide::Current,
    last_error: Option<String>,
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
                e.progress, e.last_error, e.waiting_reason, e.dispatched_at, j.firmware_id::text AS firmware_id,
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
        let current = decide::Current {
            id: row.id,
            status,
            attempts: row.attempts,
            max_retries: row.max_retries,
            firmware_id: row.firmware_id.clone(),
            progress: row.progress,
            waiting_reason: row.waiting_reason.clone(),
        };
        executions.insert(
            row.id,
            Execution {
                last_error: row.last_error.clone(),
                current,
                changed: false,
                row,
            },
        );
    }

    let mut moves: Vec<Move> = Vec::new();
    // Cancelled executions whose device answered: it stopped, or says
    // where it got to.
    let mut answered: Vec<i64> = Vec::new();
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
            .filter(|e| report.execution_id.is_some() || e.current.status.is_in_flight());
        let Some(execution) = execution else {
            applied.outcomes.push((
                item.index,
                Outcome::refused(Refusal::NoExecution, "no execution matches"),
            ));
            continue;
        };
        let outcome = fold(execution, item, &mut moves);
        let of_this_attempt = !matches!(
            outcome,
            Outcome::Refused(Refusal::StaleAttempt | Refusal::WrongFirmware, _)
        );
        if execution.current.status == ExecutionStatus::Cancelled
            && matches!(
                item.state,
                ExecutionStatus::Done | ExecutionStatus::Error | ExecutionStatus::Cancelled
            )
            && of_this_attempt
        {
            answered.push(execution.row.id);
        }
        if outcome.taken() {
            applied.jobs.insert(execution.row.job_id);
            if item.state == ExecutionStatus::Done {
                let row = &execution.row;
                installed.insert(
                    device.to_owned(),
                    (row.firmware_version.clone(), row.security_counter),
                );
                if outcome == Outcome::Applied
                    && let Some(dispatched) = execution.row.dispatched_at
                {
                    let took = (Utc::now() - dispatched).num_milliseconds().max(0);
                    applied.durations.push(took as f64 / 1000.0);
                }
            }
            if item.state == ExecutionStatus::Error {
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

    let rows: Vec<executions::Row> = executions
        .values()
        .filter(|e| e.changed)
        .map(|e| executions::Row {
            id: e.row.id,
            loaded_version: e.row.version,
            status: e.current.status,
            progress: e.current.progress,
            last_error: e.last_error.clone(),
            waiting_reason: e.current.waiting_reason.clone(),
        })
        .collect();
    applied.requeued = moves.iter().any(|m| m.to == ExecutionStatus::Queued);
    let updated = executions::record(tx, &rows, &moves).await?;
    if updated != rows.len() as u64 {
        return Err(BatchError::Conflict(rows.len() as u64 - updated));
    }
    executions::cancel_answered(tx, &answered).await?;
    applied.reported = executions
        .values()
        .filter(|e| e.changed)
        .map(|e| e.row.device_id.clone())
        .chain(installed.keys().cloned())
        .collect();
    if !installed.is_empty() {
        // Device rows are locked in id order, as every writer of several
        // devices locks them.
        let mut installed: Vec<(String, (String, i64))> = installed.into_iter().collect();
        installed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (ids, (versions, counters)): (Vec<String>, (Vec<String>, Vec<i64>)) =
            installed.into_iter().unzip();
        sqlx::query(
            "WITH locked AS (
                 SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE
             )
             UPDATE devices d SET firmware_version = u.version, expected_version = u.version,
                    security_counter = u.counter, last_seen = now(), online = true
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(id, version, counter), locked
             WHERE d.id = u.id AND locked.id = d.id",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(&counters)
        .execute(&mut *tx)
        .await?;
    }
    Ok(applied)
}

/// Applies one status to its execution in memory, collecting its move.
fn fold(execution: &mut Execution, item: &Parsed, moves: &mut Vec<Move>) -> Outcome {
    let report = &item.report;
    let reported = decide::Reported {
        state: item.state,
        attempt: item.attempt,
        firmware_id: report.firmware_id.as_deref(),
        progress: report.progress.map(i16::from),
        error: report.error.as_deref(),
        reason: item.reason.as_deref(),
    };
    let decision = decide::decide(&execution.current, &reported);
    let from = execution.current.status;
    execution.current.apply(&decision);
    match decision {
        Decision::Refuse(cause, detail) => Outcome::Refused(cause, detail),
        Decision::Progress(progress) => {
            execution.changed |= progress.is_some();
            Outcome::Progress
        }
        Decision::Installed => Outcome::Installed,
        Decision::Move {
            to, reason, late, ..
        } => {
            execution.changed = true;
            // Why a device waits is not an error.
            if reason.is_some() && to != ExecutionStatus::Waiting {
                execution.last_error.clone_from(&reason);
            }
            let row = &execution.row;
            moves.push(Move {
                execution_id: row.id,
                job_id: row.job_id,
                device_id: row.device_id.clone(),
                attempt: row.attempts,
                from,
                to,
                reported: Some(reported.state),
                reason,
                message_id: Some(report.message_id.clone()),
                progress: reported.progress,
                cause: Cause::Device,
            });
            if late {
                Outcome::Late
            } else {
                Outcome::Applied
            }
        }
    }
}

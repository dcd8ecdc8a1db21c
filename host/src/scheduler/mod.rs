//! The scheduler and the rollout engine.
//!
//! - `start_due_jobs` claims scheduled jobs whose time has come (emergency
//!   first) with `FOR UPDATE SKIP LOCKED`, so that replicas never start a job
//!   twice. Jobs are planned when they are created (`jobs::create`: the
//!   rollout plugin's `plan` splits the executions into batch groups), so
//!   starting one is a status change.
//! - `evaluate_due_jobs` asks the rollout plugin about each running job whose
//!   evaluation is due, and acts: release the next batch, wait, pause, abort
//!   or complete.
//! - `sweep_timeouts` times out executions whose connected device stalled
//!   (or re-queues them while retries are left), and expires what is still
//!   undelivered at a job's delivery deadline.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::JobStatus;
use crate::jobs::executions::{self, cancel_all};
use crate::jobs::{
    ChangedBy, CreateError, StatusChange, next_evaluation, plan_queued, release_batch,
    rollout_decided, set_status,
};
use crate::metrics::Metrics;
use crate::plugins::strategy::{
    Batch, DispatchRate, FailureClass, Halt, RateChange, Situation, Verdict, verdict_json,
};
use crate::plugins::{PluginError, Plugins};

/// What the background loops share.
#[derive(Clone)]
pub struct Scheduler {
    pub pool: PgPool,
    pub plugins: Plugins,
    pub metrics: Metrics,
    /// Woken when a batch is released (the dispatcher listens).
    pub dispatch_wakeup: Arc<Notify>,
    /// Woken when statuses changed jobs (this engine listens).
    pub evaluate_wakeup: Arc<Notify>,
}

const TICK: Duration = Duration::from_millis(500);
/// How often stalled devices and expired deliveries are looked for. The
/// stall sweep reads every in-flight execution sent longer ago than the
/// shortest progress timeout (when it was last heard from is in the row,
/// unindexed, so that status updates stay heap-only): a fleet updating
/// for longer than that is read whole on each sweep.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Scheduler {
    /// Runs the three loops until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                () = self.evaluate_wakeup.notified() => {},
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = self.start_due_jobs().await {
                tracing::error!(error = format!("{error:#}"), "starting due jobs");
            }
            if let Err(error) = self.evaluate_due_jobs().await {
                tracing::error!(error = format!("{error:#}"), "evaluating rollouts");
            }
            // Timeouts are minutes long: sweeping every few seconds is
            // enough, however often ingestion wakes the loop.
            if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(tokio::time::Instant::now());
                if let Err(error) = self.sweep_timeouts().await {
                    tracing::error!(error = format!("{error:#}"), "sweeping timeouts");
                }
            }
        }
    }

    /// Starts jobs whose start time has come. Returns how many started.
    pub async fn start_due_jobs(&self) -> anyhow::Result<usize> {
        let mut started = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let due: Option<(Uuid, String, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
                "SELECT id, rollout_plugin, rollout_config FROM jobs
                 WHERE status = 'scheduled' AND start_at <= now()
                 ORDER BY (kind = 'emergency') DESC, start_at, id
                 LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some((job_id, plugin, config)) = due else {
                return Ok(started);
            };
            // Jobs are planned when they are created; one created by an
            // earlier version of Rollway is planned now.
            let planned: Option<i64> =
                sqlx::query_scalar("SELECT sum(size)::bigint FROM job_batches WHERE job_id = $1")
                    .bind(job_id)
                    .fetch_one(&mut *tx)
                    .await?;
            match planned {
                Some(devices) => {
                    set_status(
                        &mut tx,
                        StatusChange::new(
                            job_id,
                            JobStatus::Scheduled,
                            JobStatus::Running,
                            ChangedBy::Scheduler,
                        ),
                    )
                    .await?;
                    tracing::info!(%job_id, devices, "job started");
                }
                None => {
                    self.plan_and_start(&mut tx, job_id, plugin, config.0)
                        .await?
                }
            }
            tx.commit().await?;
            started += 1;
            self.evaluate_wakeup.notify_one();
        }
    }

    /// Plans a job whose executions have no batch group yet, and starts it
    /// (or fails it when the rollout cannot be planned).
    async fn plan_and_start(
        &self,
        tx: &mut PgConnection,
        job_id: Uuid,
        plugin: String,
        config: serde_json::Value,
    ) -> anyhow::Result<()> {
        // Jobs of an earlier version of Rollway name no plugin version.
        let config = config.to_string();
        let plan = |population| {
            let (plugins, plugin, config) = (self.plugins.clone(), plugin.clone(), config.clone());
            async move {
                plugins
                    .plan(&plugin, None, &config, population)
                    .await
                    .map_err(CreateError::Plan)
            }
        };
        match plan_queued(tx, job_id, plan).await {
            Ok((batches, total)) => {
                set_status(
                    tx,
                    StatusChange::new(
                        job_id,
                        JobStatus::Scheduled,
                        JobStatus::Running,
                        ChangedBy::Scheduler,
                    ),
                )
                .await?;
                tracing::info!(%job_id, batches, devices = total, "job started");
            }
            Err(CreateError::Db(error)) => return Err(error.into()),
            Err(error) => {
                let reason = error.to_string();
                let cancelled = cancel_all(tx, job_id, &reason).await?;
                set_status(
                    tx,
                    StatusChange::new(
                        job_id,
                        JobStatus::Scheduled,
                        JobStatus::Failed,
                        ChangedBy::Scheduler,
                    )
                    .because(&reason)
                    .cancelling(cancelled),
                )
                .await?;
                tracing::warn!(%job_id, %reason, "job failed to start");
            }
        }
        Ok(())
    }

    /// Evaluates running jobs whose evaluation is due.
    pub async fn evaluate_due_jobs(&self) -> anyhow::Result<()> {
        loop {
            let mut tx = self.pool.begin().await?;
            let due: Option<RunningJob> = sqlx::query_as(
                "SELECT id, rollout_plugin, rollout_plugin_sha256, rollout_config, started_at,
                        (SELECT f.family FROM firmware f WHERE f.id = jobs.firmware_id) AS family
                 FROM jobs
                 WHERE status = 'running' AND next_evaluation_at <= now()
                 ORDER BY next_evaluation_at, id
                 LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some(RunningJob {
                id: job_id,
                rollout_plugin: plugin,
                rollout_plugin_sha256: pinned,
                rollout_config: config,
                started_at,
                family,
            }) = due
            else {
                return Ok(());
            };
            let counting = std::time::Instant::now();
            let situation = self
                .situation(
                    &mut tx,
                    job_id,
                    family.as_deref(),
                    started_at.unwrap_or_else(Utc::now),
                )
                .await?;
            let gap = evaluation_gap(counting.elapsed());
            let mut decision = self
                .plugins
                .decide(
                    &plugin,
                    pinned.as_deref(),
                    &config.0.to_string(),
                    situation.clone(),
                )
                .await;
            if let Err(PluginError::VersionNotLoaded { sha256, .. }) = &decision {
                match version_kept(&mut tx, sha256).await? {
                    Some(true) => {
                        // Uploaded through another replica a moment ago:
                        // this replica loads it within seconds.
                        next_evaluation(&mut tx, job_id, VERSION_WAIT, Duration::ZERO).await?;
                        tx.commit().await?;
                        continue;
                    }
                    Some(false) => {
                        // Kept, yet not loaded long after: it cannot be.
                        decision = Err(PluginError::Invalid(format!(
                            "its version {sha256} of {plugin} cannot be loaded here (see the host's log)"
                        )));
                    }
                    None => {}
                }
            }
            if let Err(PluginError::VersionNotLoaded { sha256, .. }) = &decision {
                // A shipped version of an earlier Rollway: gone with it, so
                // the job goes on with the version in force.
                tracing::warn!(%job_id, %plugin, %sha256, "the job's rollout plugin version is gone; going on with the version in force");
                decision = self
                    .plugins
                    .decide(&plugin, None, &config.0.to_string(), situation.clone())
                    .await;
            }
            let decision = match decision {
                Ok(decision) => decision,
                Err(error) => Verdict::Pause(Halt {
                    reason: format!("the rollout plugin failed: {error}"),
                    class: None,
                }),
            };
            self.act(&mut tx, job_id, &situation, decision, gap).await?;
            tx.commit().await?;
        }
    }

    async fn act(
        &self,
        tx: &mut PgConnection,
        job_id: Uuid,
        situation: &Situation,
        decision: Verdict,
        gap: Duration,
    ) -> anyhow::Result<()> {
        let class = |halt: &Halt| halt.class.map(FailureClass::as_str);
        let decision_json = verdict_json(&decision);
        match decision {
            Verdict::StartNextBatch => {
                let next = situation
                    .batches
                    .iter()
                    .find(|b| b.started_at.is_none())
                    .map(|b| b.group as i32);
                match next {
                    Some(group) => {
                        release_batch(tx, job_id, Some(group)).await?;
                        next_evaluation(tx, job_id, Duration::from_millis(200), gap).await?;
                        self.dispatch_wakeup.notify_waiters();
                    }
                    None => next_evaluation(tx, job_id, Duration::from_secs(5), gap).await?,
                }
            }
            Verdict::Wait(ms) => {
                let after = Duration::from_millis(ms.clamp(100, 3_600_000));
                next_evaluation(tx, job_id, after, gap).await?;
            }
            Verdict::SetRate(RateChange {
                per_minute,
                then_wait,
            }) => {
                set_rate(tx, job_id, per_minute).await?;
                let after = Duration::from_millis(then_wait.clamp(100, 3_600_000));
                next_evaluation(tx, job_id, after, gap).await?;
                self.dispatch_wakeup.notify_waiters();
            }
            Verdict::Pause(halt) => {
                set_status(
                    tx,
                    StatusChange::new(
                        job_id,
                        JobStatus::Running,
                        JobStatus::Paused,
                        ChangedBy::Rollout,
                    )
                    .because(&halt.reason)
                    .of_class(class(&halt)),
                )
                .await?;
                tracing::info!(%job_id, reason = %halt.reason, class = ?class(&halt), "rollout paused the job");
            }
            Verdict::Abort(halt) => {
                let cancelled =
                    cancel_all(tx, job_id, &format!("rollout aborted: {}", halt.reason)).await?;
                set_status(
                    tx,
                    StatusChange::new(
                        job_id,
                        JobStatus::Running,
                        JobStatus::Failed,
                        ChangedBy::Rollout,
                    )
                    .because(&halt.reason)
                    .of_class(class(&halt))
                    .cancelling(cancelled),
                )
                .await?;
                tracing::warn!(%job_id, reason = %halt.reason, class = ?class(&halt), "rollout aborted the job");
            }
            Verdict::Complete => {
                let unfinished: u32 = situation
                    .batches
                    .iter()
                    .map(|b| b.pending + b.in_flight)
                    .sum();
                if unfinished > 0 {
                    // A plugin may not complete a job with devices still updating.
                    next_evaluation(tx, job_id, Duration::from_secs(1), gap).await?;
                } else {
                    let done: u32 = situation.batches.iter().map(|b| b.succeeded).sum();
                    let failed: u32 = situation
                        .batches
                        .iter()
                        .map(|b| b.failed + b.timed_out)
                        .sum();
                    let reason = format!("{done} updated, {failed} failed");
                    set_status(
                        tx,
                        StatusChange::new(
                            job_id,
                            JobStatus::Running,
                            JobStatus::Completed,
                            ChangedBy::Rollout,
                        )
                        .because(&reason),
                    )
                    .await?;
                    tracing::info!(%job_id, done, failed, "job completed");
                }
            }
        }
        rollout_decided(tx, job_id, decision_json).await?;
        Ok(())
    }

    /// The state of a running job for its rollout plugin: its batches
    /// counted (with their failures classified by the family's device
    /// plugin, and their times from dispatch to success), its windows, its
    /// end and its dispatch rate.
    async fn situation(
        &self,
        tx: &mut PgConnection,
        job_id: Uuid,
        family: Option<&str>,
        started_at: DateTime<Utc>,
    ) -> anyhow::Result<Situation> {
        let rows: Vec<BatchRow> = sqlx::query_as(
            "SELECT b.batch_group, b.size, b.started_at, b.label,
                    count(*) FILTER (WHERE e.status = 'queued') AS pending,
                    count(*) FILTER (WHERE e.stage = 'in_flight') AS in_flight,
                    count(*) FILTER (WHERE e.status = 'done') AS done,
                    count(*) FILTER (WHERE e.status = 'error') AS error,
                    -- Expired counts as timed out for rollout plugins (WIT
                    -- 0.1.x knows no `expired`): the device never finished.
                    count(*) FILTER (WHERE e.status IN ('timed_out', 'expired')) AS timed_out,
                    count(*) FILTER (WHERE e.status = 'cancelled') AS cancelled,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.finished_at - e.dispatched_at))
                        FILTER (WHERE e.status = 'done' AND e.dispatched_at IS NOT NULL) AS median_secs,
                    percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM e.finished_at - e.dispatched_at))
                        FILTER (WHERE e.status = 'done' AND e.dispatched_at IS NOT NULL) AS p90_secs
             FROM job_batches b LEFT JOIN executions e ON e.job_id = b.job_id AND e.batch_group = b.batch_group
             WHERE b.job_id = $1 GROUP BY b.batch_group, b.size, b.started_at, b.label
             ORDER BY b.batch_group",
        )
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        // The failures a device reported, by text: a few distinct texts,
        // the most common first; a device plugin classifies each.
        let reported: Vec<(i32, Option<String>, i64)> = sqlx::query_as(
            "SELECT batch_group, last_error, count(*) FROM executions
             WHERE job_id = $1 AND status = 'error' AND batch_group IS NOT NULL
             GROUP BY 1, 2 ORDER BY 3 DESC",
        )
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        let classes = self.classify(family, &reported).await;
        let state: JobTimes = sqlx::query_as(
            "SELECT j.windows IS NULL OR rollway_window_open(j.windows, now()) AS window_open,
                    CASE WHEN j.windows IS NOT NULL AND NOT rollway_window_open(j.windows, now())
                         THEN rollway_next_window(j.windows, now()) END AS next_window_at,
                    j.end_at, j.dispatch_rate,
                    (SELECT count(*) FROM executions e
                     WHERE e.job_id = j.id AND e.dispatched_at > now() - interval '60 seconds') AS last_minute
             FROM jobs j WHERE j.id = $1",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await?;
        let ms = |t: DateTime<Utc>| t.timestamp_millis().max(0) as u64;
        let secs_ms = |s: Option<f64>| s.map(|s| (s.max(0.0) * 1000.0).round() as u64);
        Ok(Situation {
            now: ms(Utc::now()),
            job_started_at: ms(started_at),
            batches: rows
                .into_iter()
                .map(|r| {
                    let mut failures: Vec<(FailureClass, u32)> = Vec::new();
                    let mut count = |class: FailureClass, n: u32| {
                        if n == 0 {
                            return;
                        }
                        match failures.iter_mut().find(|(c, _)| *c == class) {
                            Some((_, total)) => *total += n,
                            None => failures.push((class, n)),
                        }
                    };
                    for ((group, _, n), class) in reported.iter().zip(&classes) {
                        if *group == r.batch_group {
                            count(*class, *n as u32);
                        }
                    }
                    count(FailureClass::Timeout, r.timed_out as u32);
                    failures.sort_by_key(|(class, _)| *class as u8);
                    Batch {
                        group: r.batch_group as u32,
                        label: r.label.unwrap_or_default(),
                        total: r.size as u32,
                        pending: r.pending as u32,
                        in_flight: r.in_flight as u32,
                        succeeded: r.done as u32,
                        failed: r.error as u32,
                        timed_out: r.timed_out as u32,
                        cancelled: r.cancelled as u32,
                        started_at: r.started_at.map(ms),
                        failures,
                        median_ms: secs_ms(r.median_secs),
                        p90_ms: secs_ms(r.p90_secs),
                    }
                })
                .collect(),
            window_open: state.window_open,
            next_window_at: state.next_window_at.map(ms),
            ends_at: state.end_at.map(ms),
            rate: DispatchRate {
                limit: state.dispatch_rate.map(|r| r.max(1) as u32),
                last_minute: state.last_minute as u32,
            },
        })
    }

    /// The class of each reported failure text (`other` for what cannot
    /// be classified: more texts than [`MAX_CLASSIFIED`], no family, a
    /// plugin that failed).
    async fn classify(
        &self,
        family: Option<&str>,
        reported: &[(i32, Option<String>, i64)],
    ) -> Vec<FailureClass> {
        let mut classes = vec![FailureClass::Other; reported.len()];
        let Some(family) = family else {
            return classes;
        };
        let (indexes, texts): (Vec<usize>, Vec<String>) = reported
            .iter()
            .enumerate()
            .filter_map(|(i, (_, text, _))| Some((i, text.clone()?)))
            .take(MAX_CLASSIFIED)
            .unzip();
        if texts.is_empty() {
            return classes;
        }
        match self.plugins.classify(family, texts).await {
            Ok(classified) => {
                for (i, class) in indexes.into_iter().zip(classified) {
                    classes[i] = class;
                }
            }
            Err(error) => {
                tracing::warn!(%family, %error, "failures could not be classified; counted as other");
            }
        }
        classes
    }

    /// Times out executions whose connected device made no progress within
    /// the job's timeout, counted from its last status that moved the
    /// update on; re-queues them while retries are left. A device stalls
    /// only once it has answered the command it holds (a status since the
    /// command was last sent): one that never did may not have it, and one
    /// that is away is not stalled. Both wait for the device's next hello
    /// (which sends the command again), or the job's delivery deadline,
    /// which expires what is still undelivered. A device that said it is
    /// `waiting` for a safe moment to install is not stalled either: a
    /// truck may drive for a shift; the deadline bounds that wait too.
    pub async fn sweep_timeouts(&self) -> anyhow::Result<u64> {
        let stalled = executions::statement(
            "moves AS (
                 SELECT e.id, e.status AS previous,
                        CASE WHEN e.attempts <= j.max_retries THEN 'queued' ELSE 'timed_out' END AS next,
                        'the device made no progress in time' AS reason, 'timeout' AS cause,
                        NULL::text AS dispatcher
                 FROM executions e JOIN jobs j ON j.id = e.job_id JOIN devices d ON d.id = e.device_id
                 WHERE e.stage = 'in_flight'
                   -- An index range first: sent before the shortest timeout
                   -- of any active job; then each job's own timeout, from
                   -- the device's last status since the command was sent.
                   AND e.dispatched_at < now() - make_interval(secs => (
                       SELECT coalesce(min(device_timeout_secs), 0) FROM jobs
                       WHERE status IN ('running', 'paused')))
                   AND e.reported_at > e.dispatched_at
                   AND e.reported_at < now() - make_interval(secs => j.device_timeout_secs)
                   AND d.online
                   AND e.status <> 'waiting'
                 ORDER BY e.dispatched_at LIMIT 1000
                 FOR UPDATE OF e SKIP LOCKED
             )",
            "SELECT job_id, to_status FROM changed",
        );
        // The jobs past their deadline first (nearly always none), then
        // their executions: a join the planner may start from the
        // executions' end reads them all on every sweep.
        let expired = executions::statement(
            "due AS MATERIALIZED (
                 SELECT id, CASE WHEN end_at <= now() THEN 'not delivered by the job''s end time'
                                 ELSE 'not delivered by the job''s delivery deadline' END AS reason
                 FROM jobs
                 WHERE status IN ('running', 'paused')
                   AND (started_at < now() - make_interval(secs => delivery_deadline_secs)
                        OR end_at <= now())
             ), moves AS (
                 SELECT e.id, e.status AS previous, 'expired' AS next, due.reason,
                        'deadline' AS cause, NULL::text AS dispatcher
                 FROM due JOIN executions e ON e.job_id = due.id
                 WHERE e.stage <> 'finished'
                 LIMIT 1000
                 FOR UPDATE OF e SKIP LOCKED
             )",
            "SELECT job_id, to_status FROM changed",
        );
        let mut changed: Vec<(Uuid, String)> = sqlx::query_as(sqlx::AssertSqlSafe(stalled))
            .fetch_all(&self.pool)
            .await?;
        changed.extend(
            sqlx::query_as::<_, (Uuid, String)>(sqlx::AssertSqlSafe(expired))
                .fetch_all(&self.pool)
                .await?,
        );
        if changed.is_empty() {
            return Ok(0);
        }
        for (status, reason) in [("timed_out", "timeout"), ("expired", "deadline")] {
            let count = changed.iter().filter(|(_, s)| s == status).count() as u64;
            self.metrics
                .update_errors_total
                .with_label_values(&[reason])
                .inc_by(count);
        }
        let jobs: Vec<Uuid> = changed.iter().map(|(j, _)| *j).collect();
        crate::jobs::touch_jobs(&self.pool, &jobs).await?;
        self.dispatch_wakeup.notify_waiters();
        Ok(changed.len() as u64)
    }
}

/// How long a job waits for its rollout plugin version to load here.
const VERSION_WAIT: Duration = Duration::from_secs(2);

/// Whether an uploaded component of this digest is kept (so a replica
/// can load it), and if so whether it was uploaded moments ago (a replica
/// may not have loaded it yet).
async fn version_kept(tx: &mut PgConnection, sha256: &str) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT uploaded_at > now() - interval '1 minute' FROM plugin_versions WHERE sha256 = $1",
    )
    .bind(sha256)
    .fetch_optional(tx)
    .await
}

#[derive(sqlx::FromRow)]
struct RunningJob {
    id: Uuid,
    rollout_plugin: String,
    rollout_plugin_sha256: Option<String>,
    rollout_config: sqlx::types::Json<serde_json::Value>,
    started_at: Option<DateTime<Utc>>,
    family: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobTimes {
    window_open: bool,
    next_window_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    dispatch_rate: Option<i32>,
    last_minute: i64,
}

/// Most distinct failure texts classified per evaluation; the rest count
/// as `other`.
const MAX_CLASSIFIED: usize = 200;

#[derive(sqlx::FromRow)]
struct BatchRow {
    batch_group: i32,
    size: i32,
    started_at: Option<DateTime<Utc>>,
    label: Option<String>,
    median_secs: Option<f64>,
    p90_secs: Option<f64>,
    pending: i64,
    in_flight: i64,
    done: i64,
    error: i64,
    timed_out: i64,
    cancelled: i64,
}

/// Evaluations of a job are at least this many times as far apart as
/// reading its snapshot took, so that counting its executions takes at most
/// a tenth of a database connection's time (231 ms a snapshot at 150,000
/// executions, twice a second, was the rollout engine's cost before).
const EVALUATION_COST_SHARE: u32 = 10;
const MIN_EVALUATION_GAP: Duration = Duration::from_millis(500);
const MAX_EVALUATION_GAP: Duration = Duration::from_secs(30);

/// The least time between two evaluations of a job whose snapshot took
/// `counting` to read.
fn evaluation_gap(counting: Duration) -> Duration {
    (counting * EVALUATION_COST_SHARE).clamp(MIN_EVALUATION_GAP, MAX_EVALUATION_GAP)
}

/// Sets a job's dispatch rate (shown in its view) and its token bucket,
/// which starts empty when the rate changes (a strategy that says the same
/// rate again changes nothing).
async fn set_rate(
    tx: &mut PgConnection,
    job_id: Uuid,
    per_minute: Option<u32>,
) -> Result<(), sqlx::Error> {
    let per_minute = per_minute.map(|r| r.clamp(1, i32::MAX as u32) as i32);
    let changed = sqlx::query(
        "UPDATE jobs SET dispatch_rate = $2 WHERE id = $1 AND dispatch_rate IS DISTINCT FROM $2",
    )
    .bind(job_id)
    .bind(per_minute)
    .execute(&mut *tx)
    .await?;
    if changed.rows_affected() > 0 {
        sqlx::query(
            "INSERT INTO job_dispatch_limits (job_id, per_minute) VALUES ($1, $2)
             ON CONFLICT (job_id) DO UPDATE
             SET per_minute = excluded.per_minute, allowance = 0, updated_at = now()",
        )
        .bind(job_id)
        .bind(per_minute)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_of_costly_jobs_are_further_apart() {
        assert_eq!(evaluation_gap(Duration::from_millis(3)), MIN_EVALUATION_GAP);
        assert_eq!(
            evaluation_gap(Duration::from_millis(231)),
            Duration::from_millis(2310)
        );
        assert_eq!(evaluation_gap(Duration::from_secs(9)), MAX_EVALUATION_GAP);
    }
}

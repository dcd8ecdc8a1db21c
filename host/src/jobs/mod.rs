//! Update jobs: a firmware, the devices it targets, when it starts and how it
//! rolls out. Creating a job creates one execution per targeted device;
//! `executions.rs` writes every change of an execution's status.

pub mod dry_run;
pub mod executions;
pub mod plan;
mod request;
pub mod windows;

pub(crate) use request::with_defaults;
pub use request::{
    DEFAULT_ROLLOUT_PLUGIN, FilterRequest, Invalid, JobRequest, Prepared, SubmitError,
    create_prepared, prepare, submit,
};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{DeviceId, ExecutionStatus, InstallPolicy, JobStatus};
use crate::outbox;
use crate::plugins::strategy::{Amount, Filled, Group, Population};

/// Which devices a job updates.
#[derive(Debug, Clone)]
pub enum Targets {
    Devices(Vec<DeviceId>),
    Filter(TargetFilter),
}

/// Devices matching every given field (the family is the firmware's).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetFilter {
    pub model: Option<String>,
    pub gateway_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Immediate,
    Scheduled,
    Emergency,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Immediate => "immediate",
            JobKind::Scheduled => "scheduled",
            JobKind::Emergency => "emergency",
        }
    }
}

/// A validated job request.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: Option<String>,
    pub firmware_id: Uuid,
    pub family: String,
    pub targets: Targets,
    /// The targets as the operator wrote them, kept for the record.
    pub targets_json: Value,
    pub kind: JobKind,
    pub start_at: DateTime<Utc>,
    pub rollout_plugin: String,
    /// The rollout plugin's component the job runs on, to its end.
    pub rollout_plugin_sha256: Option<String>,
    pub rollout_config: Value,
    pub device_timeout_secs: i32,
    pub max_retries: i32,
    pub delivery_deadline_secs: i32,
    pub install: InstallPolicy,
    /// Maintenance windows as stored (see [`windows::check`]).
    pub windows: Option<Value>,
    /// When the job is over, whatever is left.
    pub end_at: Option<DateTime<Utc>>,
    pub created_by: String,
    /// The firmware's security counter, and whether an admin allowed it to
    /// lower the counter of the devices it goes to.
    pub security_counter: i64,
    pub downgrade_allowed: bool,
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub name: Option<String>,
    pub firmware_id: Uuid,
    /// `immediate`, `scheduled` or `emergency`.
    pub kind: String,
    pub start_at: DateTime<Utc>,
    pub status: String,
    /// Why the job reached its status (e.g. the rollout's abort reason).
    pub status_reason: Option<String>,
    #[schema(value_type = Object)]
    pub targets: Json<Value>,
    pub rollout_plugin: String,
    /// The SHA-256 of the rollout plugin's component the job was created
    /// with: it plans and decides with that version to its end, whatever
    /// is uploaded meanwhile (absent for jobs older than this field).
    pub rollout_plugin_sha256: Option<String>,
    #[schema(value_type = Object)]
    pub rollout_config: Json<Value>,
    /// How long a connected device that answered its command may go
    /// without progress (from its last status) before the attempt times
    /// out.
    pub device_timeout_secs: i32,
    pub max_retries: i32,
    /// How long after the job's start its devices may still be updated:
    /// an absent device waits until then, and what is undelivered at the
    /// deadline ends `expired`.
    pub delivery_deadline_secs: i32,
    /// When devices may flash: `immediate`, or `when-safe` (download now,
    /// flash at a safe moment the device judges).
    pub install: String,
    /// When the job may dispatch (`time_zone` and weekly `times`); absent:
    /// always. Outside its windows nothing new is sent; devices already
    /// updating finish.
    #[schema(value_type = Option<Object>)]
    pub windows: Option<Json<Value>>,
    /// Whether one of its windows is open now (always true without any).
    pub window_open: bool,
    /// When its next window opens, while none is open.
    pub next_window_at: Option<DateTime<Utc>>,
    /// Its end time: nothing is sent after it, and what is not finished
    /// then ends `expired`.
    pub end_at: Option<DateTime<Utc>>,
    /// The dispatch rate its rollout strategy set, in devices per minute
    /// across every replica (absent: no limit).
    pub dispatch_rate: Option<i32>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub version: i64,
}

/// Most device ids one job may list explicitly (use a filter beyond that).
pub const MAX_TARGET_IDS: usize = 100_000;

const JOB_COLUMNS: &str = "id, name, firmware_id, kind, start_at, status, status_reason, targets, \
     rollout_plugin, rollout_plugin_sha256, rollout_config, device_timeout_secs, max_retries, delivery_deadline_secs, install, \
     windows, rollway_window_open(windows, now()) AS window_open, \
     rollway_next_window(windows, now()) AS next_window_at, end_at, dispatch_rate, created_by, created_at, updated_at, started_at, finished_at, version";

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the targets match no {0} device")]
    NoTargets(String),
    #[error("unknown devices: {}", .0.join(", "))]
    UnknownDevices(Vec<String>),
    #[error("devices of another family than the firmware's ({family}): {}", .devices.join(", "))]
    WrongFamily {
        family: String,
        devices: Vec<String>,
    },
    #[error(
        "{devices} targeted device(s) run firmware with a security counter above this image's \
         {counter} (e.g. {}); installing it would be a rollback, which an admin must allow \
         for this firmware first",
        .examples.join(", ")
    )]
    Rollback {
        counter: i64,
        devices: i64,
        examples: Vec<String>,
    },
    #[error("the rollout could not be planned: {0}")]
    Plan(#[from] crate::plugins::PluginError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The devices a job targets, as `FROM … WHERE …` with its parameters
/// numbered from `first`: the family, then the ids or the filter's model,
/// gateway and tags (bound by `bind_targets!`). Ids and filters are two
/// statements, so that a job by ids always probes the primary key.
fn target_clause(targets: &Targets, first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    match targets {
        Targets::Devices(_) => format!(
            "FROM devices d WHERE d.family = {} AND d.id = ANY({}::text[])",
            p(0),
            p(1)
        ),
        Targets::Filter(_) => {
            let (model, gateway, tags) = (p(1), p(2), p(3));
            format!(
                "FROM devices d WHERE d.family = {}
                   AND ({model}::text IS NULL OR d.model = {model})
                   AND ({gateway}::text IS NULL OR d.gateway_id = {gateway})
                   AND ({tags}::jsonb IS NULL OR d.tags @> {tags})",
                p(0)
            )
        }
    }
}

/// Binds the parameters of `target_clause` to `$query`.
macro_rules! bind_targets {
    ($query:expr, $new:expr, $ids:expr) => {{
        let query = $query.bind(&$new.family);
        match &$new.targets {
            Targets::Devices(_) => query.bind($ids),
            Targets::Filter(filter) => query
                .bind(&filter.model)
                .bind(&filter.gateway_id)
                .bind((!filter.tags.is_empty()).then_some(Json(&filter.tags))),
        }
    }};
}

/// Creates the job and its executions (all `queued`) in one transaction,
/// with its `job.created` event. `plan` splits the targeted devices into
/// batch groups (the rollout plugin's `plan`); each execution is created
/// in its batch group. A plugin that plans `by_attributes` (WIT 0.1.8)
/// gets the devices counted by attribute and gives groups with selectors
/// (see `plan`); one that does not gets the total (in a population of
/// nothing else) and gives groups of counts.
pub async fn create<F>(
    conn: &mut PgConnection,
    new: &NewJob,
    by_attributes: bool,
    plan: impl FnOnce(Population) -> F,
) -> Result<(Job, i64), CreateError>
where
    F: Future<Output = Result<Vec<Group>, CreateError>>,
{
    let id = Uuid::now_v7();
    let job: Job = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO jobs (id, name, firmware_id, kind, start_at, status, targets, rollout_plugin,
                           rollout_config, device_timeout_secs, max_retries, created_by,
                           delivery_deadline_secs, install, rollout_plugin_sha256, windows, end_at)
         VALUES ($1, $2, $3, $4, $5, 'scheduled', $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         RETURNING {JOB_COLUMNS}"
    )))
    .bind(id)
    .bind(&new.name)
    .bind(new.firmware_id)
    .bind(new.kind.as_str())
    .bind(new.start_at)
    .bind(&new.targets_json)
    .bind(&new.rollout_plugin)
    .bind(&new.rollout_config)
    .bind(new.device_timeout_secs)
    .bind(new.max_retries)
    .bind(&new.created_by)
    .bind(new.delivery_deadline_secs)
    .bind(new.install.as_str())
    .bind(&new.rollout_plugin_sha256)
    .bind(new.windows.as_ref().map(Json))
    .bind(new.end_at)
    .fetch_one(&mut *conn)
    .await?;

    // The rollout is planned before the executions exist, so that each is
    // inserted with its batch group: a second pass over a million rows to
    // assign them costs more than creating them. Devices are selected
    // server-side: a job over a million devices never ships a million ids
    // back and forth.
    let ids: Vec<&str> = match &new.targets {
        Targets::Devices(ids) => ids.iter().map(DeviceId::as_str).collect(),
        Targets::Filter(_) => Vec::new(),
    };
    // No device is deleted while its execution is created.
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(crate::db::DEVICE_SET_LOCK)
        .execute(&mut *conn)
        .await?;
    let (counted, ahead): (i64, i64) = bind_targets!(
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE d.security_counter > $1) {}",
            target_clause(&new.targets, 2)
        )))
        .bind(new.security_counter),
        new,
        &ids
    )
    .fetch_one(&mut *conn)
    .await?;
    if matches!(new.targets, Targets::Devices(_)) && counted < ids.len() as i64 {
        return Err(explain_missing(conn, &ids, &new.family).await);
    }
    if counted == 0 {
        return Err(CreateError::NoTargets(new.family.clone()));
    }
    if ahead > 0 && !new.downgrade_allowed {
        let examples: Vec<String> = bind_targets!(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT d.id || ' (' || d.security_counter || ')' {} AND d.security_counter > $1
                 ORDER BY d.id LIMIT 5",
                target_clause(&new.targets, 2)
            )))
            .bind(new.security_counter),
            new,
            &ids
        )
        .fetch_all(&mut *conn)
        .await?;
        return Err(CreateError::Rollback {
            counter: new.security_counter,
            devices: ahead,
            examples,
        });
    }
    if by_attributes {
        let total = create_by_attributes(conn, id, new, &ids, plan).await?;
        enqueue_created(conn, id, new, total).await?;
        return Ok((job, total));
    }
    let groups = plan(Population {
        total: u32::try_from(counted).unwrap_or(u32::MAX),
        families: Vec::new(),
        models: Vec::new(),
        versions: Vec::new(),
        behind_gateway: 0,
        tags: Vec::new(),
    })
    .await?;
    let planned: Vec<u32> = groups
        .iter()
        .map(|g| match g.take {
            Amount::Count(n) => n,
            Amount::All | Amount::Share(_) => u32::MAX,
        })
        .collect();
    let bounds = cumulative(&planned);
    // Batches are filled in a stable pseudo-random order, so each samples
    // the whole fleet; the rows are inserted in device order, which keeps
    // the device-keyed indexes (and later claims) local: in rank order
    // they cost half as much again. The digests are ranked bytewise
    // (`COLLATE "C"`): any order of them is as good, and the database's
    // collation is slower. A plan of one batch needs no ranking at all (a
    // third of the insert's time). A device registered between the count
    // and the insert lands in the last group; the recorded sizes are those
    // inserted.
    let inserted = if planned.len() == 1 {
        let insert = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO executions (job_id, device_id, batch_group)
             SELECT $1, d.id, 0 {} ORDER BY d.id",
            target_clause(&new.targets, 2)
        )))
        .bind(id);
        bind_targets!(insert, new, &ids).execute(&mut *conn).await?
    } else {
        let insert = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO executions (job_id, device_id, batch_group)
             SELECT $1, t.id, least(width_bucket(t.rn - 1, $2::bigint[]), $3)
             FROM (SELECT d.id, row_number() OVER (ORDER BY md5($1::text || d.id) COLLATE \"C\", d.id) AS rn
                   {}) t
             ORDER BY t.id",
            target_clause(&new.targets, 4)
        )))
        .bind(id)
        .bind(&bounds)
        .bind(planned.len() as i32 - 1);
        bind_targets!(insert, new, &ids).execute(&mut *conn).await?
    };
    let total = inserted.rows_affected() as i64;
    if total == 0 {
        return Err(CreateError::NoTargets(new.family.clone()));
    }
    record_batches(conn, id, &filled_sizes(&bounds, total), None).await?;
    enqueue_created(conn, id, new, total).await?;
    Ok((job, total))
}

/// The executions of a job whose strategy plans by attributes: its
/// targets staged, counted, planned and filled in SQL (`plan`). Returns
/// how many were created.
async fn create_by_attributes<F>(
    conn: &mut PgConnection,
    id: Uuid,
    new: &NewJob,
    ids: &[&str],
    plan: impl FnOnce(Population) -> F,
) -> Result<i64, CreateError>
where
    F: Future<Output = Result<Vec<Group>, CreateError>>,
{
    sqlx::query(plan::STAGE_TABLE).execute(&mut *conn).await?;
    let stage = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO plan_targets SELECT {} {}",
        plan::STAGE_COLUMNS,
        target_clause(&new.targets, 2)
    )))
    .bind(id);
    bind_targets!(stage, new, ids).execute(&mut *conn).await?;
    let population = plan::population(conn).await?;
    if population.total == 0 {
        return Err(CreateError::NoTargets(new.family.clone()));
    }
    let groups = plan(population).await?;
    let filled = plan::fill_staged(conn, &groups).await?;
    let inserted = sqlx::query(
        "INSERT INTO executions (job_id, device_id, batch_group)
         SELECT $1, t.id, ($2::int4[])[t.rn] FROM plan_targets t ORDER BY t.id",
    )
    .bind(id)
    .bind(&filled.group_of)
    .execute(&mut *conn)
    .await?;
    record_batches(conn, id, &filled.sizes, Some(&filled)).await?;
    Ok(inserted.rows_affected() as i64)
}

async fn enqueue_created(
    conn: &mut PgConnection,
    id: Uuid,
    new: &NewJob,
    total: i64,
) -> Result<(), sqlx::Error> {
    outbox::enqueue(
        conn,
        outbox::Event {
            kind: outbox::EventType::JobCreated,
            aggregate_id: &id.to_string(),
            payload: json!({
                "job_id": id, "firmware_id": new.firmware_id, "kind": new.kind.as_str(),
                "start_at": new.start_at, "status": "scheduled", "executions": total,
                "rollout_plugin": new.rollout_plugin,
            }),
        },
    )
    .await
    .map(|_| ())
}

/// The cumulative sums of batch sizes: the rank at which each group ends.
pub(crate) fn cumulative(sizes: &[u32]) -> Vec<i64> {
    sizes
        .iter()
        .scan(0i64, |sum, size| {
            *sum += i64::from(*size);
            Some(*sum)
        })
        .collect()
}

/// The group sizes when `total` rows were ranked against `bounds`, the
/// overflow past the last bound counted in the last group. Groups left
/// empty (devices that stopped matching between the count and the insert)
/// are always the last ones, and are dropped: a batch has a device or more.
fn filled_sizes(bounds: &[i64], total: i64) -> Vec<i32> {
    let mut start = 0;
    let mut sizes: Vec<i32> = bounds
        .iter()
        .map(|&end| {
            let size = end.min(total) - start.min(total);
            start = end;
            size as i32
        })
        .collect();
    if let (Some(last), Some(&end)) = (sizes.last_mut(), bounds.last()) {
        *last += (total - end).max(0) as i32;
    }
    while sizes.last() == Some(&0) {
        sizes.pop();
    }
    sizes
}

/// Records a job's batch groups and their sizes; a plan by attributes
/// gives each its label and spread too.
pub(crate) async fn record_batches(
    conn: &mut PgConnection,
    job_id: Uuid,
    sizes: &[i32],
    filled: Option<&Filled>,
) -> Result<(), sqlx::Error> {
    let groups: Vec<i32> = (0..sizes.len() as i32).collect();
    let (labels, keys, limits): (&[_], &[_], &[_]) = match filled {
        Some(f) => (&f.labels, &f.spread_keys, &f.spread_limits),
        None => (&[], &[], &[]),
    };
    // A group spread over a tag makes the job's dispatch limited: its
    // limits row is what replicas take turns on.
    sqlx::query(
        "WITH batches AS (
             INSERT INTO job_batches (job_id, batch_group, size, label, spread_key, spread_limit)
             SELECT $1, g, s, l, k, n
             FROM unnest($2::int[], $3::int[], $4::text[], $5::text[], $6::int[]) AS t(g, s, l, k, n)
         )
         INSERT INTO job_dispatch_limits (job_id)
         SELECT $1 WHERE EXISTS (SELECT 1 FROM unnest($5::text[]) AS k WHERE k IS NOT NULL)",
    )
    .bind(job_id)
    .bind(&groups)
    .bind(sizes)
    .bind(labels)
    .bind(keys)
    .bind(limits)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn explain_missing(conn: &mut PgConnection, ids: &[&str], family: &str) -> CreateError {
    let unknown: Result<Vec<String>, _> = sqlx::query_scalar(
        "SELECT x FROM unnest($1::text[]) AS x
         WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = x) LIMIT 20",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await;
    match unknown {
        Ok(unknown) if !unknown.is_empty() => CreateError::UnknownDevices(unknown),
        Ok(_) => match sqlx::query_scalar(
            "SELECT id || ' (' || family || ')' FROM devices
             WHERE id = ANY($1::text[]) AND family <> $2 ORDER BY id LIMIT 20",
        )
        .bind(ids)
        .bind(family)
        .fetch_all(&mut *conn)
        .await
        {
            Ok(devices) => CreateError::WrongFamily {
                family: family.to_owned(),
                devices,
            },
            Err(e) => e.into(),
        },
        Err(e) => e.into(),
    }
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Newest first, after `before` (the last id seen).
pub async fn list(
    pool: &PgPool,
    status: Option<JobStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Job>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs
         WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    )))
    .bind(status.map(JobStatus::as_str))
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Executions by status, for the whole job and per batch group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobCounts {
    pub total: i64,
    /// Every execution status with its count (zeros included).
    pub counts: BTreeMap<String, i64>,
    /// The devices that wait to install (`waiting`), by the reason they
    /// give (`unspecified` when they give none).
    pub waiting_reasons: BTreeMap<String, i64>,
    pub batches: Vec<BatchCounts>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchCounts {
    /// Batch group in rollout order; absent until the rollout has planned the job.
    pub batch_group: Option<i32>,
    /// What the rollout strategy called the group (strategies that plan
    /// by attributes name their groups, e.g. `internal` or `site q7`).
    pub label: Option<String>,
    pub total: i64,
    pub counts: BTreeMap<String, i64>,
}

fn zeroed() -> BTreeMap<String, i64> {
    ExecutionStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect()
}

pub async fn counts(pool: &PgPool, job_id: Uuid) -> Result<JobCounts, sqlx::Error> {
    // One pass over the job's executions; waiting ones also by reason.
    let rows: Vec<(Option<i32>, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT batch_group, status,
                CASE WHEN status = 'waiting' THEN coalesce(waiting_reason, 'unspecified') END,
                count(*)
         FROM executions WHERE job_id = $1
         GROUP BY 1, 2, 3 ORDER BY batch_group NULLS LAST",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    let mut result = JobCounts {
        total: 0,
        counts: zeroed(),
        waiting_reasons: BTreeMap::new(),
        batches: Vec::new(),
    };
    for (batch_group, status, reason, n) in rows {
        if let Some(reason) = reason {
            *result.waiting_reasons.entry(reason).or_default() += n;
        }
        result.total += n;
        *result.counts.entry(status.clone()).or_default() += n;
        if result.batches.last().map(|b| b.batch_group) != Some(batch_group) {
            result.batches.push(BatchCounts {
                batch_group,
                label: None,
                total: 0,
                counts: zeroed(),
            });
        }
        if let Some(batch) = result.batches.last_mut() {
            batch.total += n;
            *batch.counts.entry(status).or_default() += n;
        }
    }
    let labels: Vec<(i32, String)> = sqlx::query_as(
        "SELECT batch_group, label FROM job_batches WHERE job_id = $1 AND label IS NOT NULL",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    for (group, label) in labels {
        if let Some(batch) = result
            .batches
            .iter_mut()
            .find(|b| b.batch_group == Some(group))
        {
            batch.label = Some(label);
        }
    }
    Ok(result)
}

/// An operator's request to change a job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    Pause,
    Resume,
    Cancel,
}

impl JobAction {
    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::Pause => "pause",
            JobAction::Resume => "resume",
            JobAction::Cancel => "cancel",
        }
    }

    fn target(self) -> JobStatus {
        match self {
            JobAction::Pause => JobStatus::Paused,
            JobAction::Resume => JobStatus::Running,
            JobAction::Cancel => JobStatus::Cancelled,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("job not found")]
    NotFound,
    #[error("cannot {action} the job: {reason}")]
    Invalid {
        action: &'static str,
        reason: String,
    },
    #[error("the job changed concurrently; retry")]
    Contended,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Applies an operator action under optimistic locking on `jobs.version`.
/// Cancelling also cancels every unfinished execution, each with its log
/// entry and event.
pub async fn apply_action(
    pool: &PgPool,
    id: Uuid,
    action: JobAction,
    actor: &str,
) -> Result<Job, TransitionError> {
    let next = action.target();
    for _ in 0..3 {
        match try_action(pool, id, action, next, actor).await {
            Err(TransitionError::Db(error)) if crate::db::is_transient(&error) => {
                tracing::info!(%error, job_id = %id, "job action hit a transient error; retrying");
            }
            Ok(None) => {} // the job changed concurrently
            Ok(Some(job)) => return Ok(job),
            Err(other) => return Err(other),
        }
    }
    Err(TransitionError::Contended)
}

/// One try of `apply_action`; `None` when the job's version moved on.
async fn try_action(
    pool: &PgPool,
    id: Uuid,
    action: JobAction,
    next: JobStatus,
    actor: &str,
) -> Result<Option<Job>, TransitionError> {
    let mut tx = pool.begin().await?;
    let current: Option<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT status, version, paused_by FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (status, version, paused_by) = current.ok_or(TransitionError::NotFound)?;
    let status = JobStatus::parse(&status).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    if action == JobAction::Resume && status != JobStatus::Paused {
        return Err(TransitionError::Invalid {
            action: action.as_str(),
            reason: format!("only a paused job can be resumed; this job is {status}"),
        });
    }
    status
        .check_transition(next)
        .map_err(|reason| TransitionError::Invalid {
            action: action.as_str(),
            reason,
        })?;
    let updated: Option<Job> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET status = $3, status_reason = $4, version = version + 1, updated_at = now(),
                         finished_at = CASE WHEN $5 THEN now() ELSE finished_at END,
                         next_evaluation_at = CASE WHEN $3 = 'running' THEN now() ELSE NULL END,
                         paused_by = CASE WHEN $3 = 'paused' THEN 'operator' ELSE NULL END
         WHERE id = $1 AND version = $2 RETURNING {JOB_COLUMNS}"
    )))
    .bind(id)
    .bind(version)
    .bind(next.as_str())
    .bind(format!("{} by {actor}", past_tense(action)))
    .bind(next.is_terminal())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = updated else {
        return Ok(None);
    };
    let cancelled = if action == JobAction::Cancel {
        executions::cancel_all(&mut tx, id, "job cancelled").await?
    } else {
        0
    };
    // Resuming a job its rollout paused (not an operator) approves the
    // next batch: the operator looked and decided to go on.
    let mut released: Option<i32> = None;
    if action == JobAction::Resume && paused_by.as_deref() == Some("rollout") {
        released = mark_released(&mut tx, id, None).await?;
    }
    status_changed(
        &mut tx,
        StatusChange {
            job_id: id,
            from: status,
            to: next,
            reason: job.status_reason.as_deref(),
            by: ChangedBy::Operator,
            executions_cancelled: (action == JobAction::Cancel).then_some(cancelled),
            batch_released: released,
            failure_class: None,
        },
    )
    .await?;
    // The job runs again before its batch starts, in the events' order too.
    if let Some(group) = released {
        batch_started(&mut tx, id, group).await?;
    }
    crate::audit::record(
        &mut tx,
        actor,
        &format!("job.{}", action.as_str()),
        "job",
        &id.to_string(),
        json!({ "from": status.as_str(), "to": next.as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(job))
}

/// What `retry_failed` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retried {
    /// Executions queued again.
    pub executions: i64,
    /// Whether the job, finished, runs again for them.
    pub reopened: bool,
}

/// Queues a job's failed, timed-out and expired executions again, each as
/// a new attempt, and gives them a delivery window of `window_secs` (the
/// job's own when `None`) from now: the job's delivery deadline moves out
/// so far if it is nearer. A finished (`completed` or `failed`) job with
/// executions to retry runs again; a cancelled job, or one not started,
/// has nothing to retry.
pub async fn retry_failed(
    pool: &PgPool,
    id: Uuid,
    window_secs: Option<i32>,
    actor: &str,
) -> Result<Retried, TransitionError> {
    const ACTION: &str = "retry";
    let mut tx = pool.begin().await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let status = status.ok_or(TransitionError::NotFound)?;
    let status = JobStatus::parse(&status).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let reopen = match status {
        JobStatus::Running | JobStatus::Paused => false,
        JobStatus::Completed | JobStatus::Failed => true,
        JobStatus::Scheduled | JobStatus::Cancelled => {
            return Err(TransitionError::Invalid {
                action: ACTION,
                reason: format!("a {status} job has nothing to retry"),
            });
        }
    };
    let reason = format!("retried by {actor}");
    let executions = executions::retry_failed(&mut tx, id, &reason).await?;
    if executions == 0 {
        return Ok(Retried {
            executions,
            reopened: false,
        });
    }
    // One write of the job: the deadline moved out for the retried
    // executions, an evaluation soon, and a finished job running again.
    sqlx::query(
        "UPDATE jobs SET
             delivery_deadline_secs = GREATEST(delivery_deadline_secs,
                 ceil(extract(epoch FROM now() - started_at))::int
                 + coalesce($2, delivery_deadline_secs)),
             next_evaluation_at = CASE WHEN status = 'running' OR $3 THEN now() ELSE next_evaluation_at END,
             status = CASE WHEN $3 THEN 'running' ELSE status END,
             status_reason = CASE WHEN $3 THEN $4 ELSE status_reason END,
             finished_at = CASE WHEN $3 THEN NULL ELSE finished_at END,
             version = version + 1, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(window_secs)
    .bind(reopen)
    .bind(&reason)
    .execute(&mut *tx)
    .await?;
    if reopen {
        status_changed(
            &mut tx,
            StatusChange::new(id, status, JobStatus::Running, ChangedBy::Operator).because(&reason),
        )
        .await?;
    }
    crate::audit::record(
        &mut tx,
        actor,
        "job.retry_failed",
        "job",
        &id.to_string(),
        json!({ "executions": executions, "reopened": reopen }),
    )
    .await?;
    tx.commit().await?;
    Ok(Retried {
        executions,
        reopened: reopen,
    })
}

/// Cancels a job's unfinished execution on one device, with its log entry
/// and event. Returns the status it had.
pub async fn cancel_execution(
    pool: &PgPool,
    id: Uuid,
    device_id: &str,
    actor: &str,
) -> Result<ExecutionStatus, TransitionError> {
    const ACTION: &str = "cancel the execution";
    let mut tx = pool.begin().await?;
    let reason = format!("cancelled by {actor}");
    let Some(previous) = executions::cancel_one(&mut tx, id, device_id, &reason).await? else {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM executions WHERE job_id = $1 AND device_id = $2",
        )
        .bind(id)
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        return Err(match status {
            None => TransitionError::NotFound,
            Some(status) => TransitionError::Invalid {
                action: ACTION,
                reason: format!("the execution is already {status}"),
            },
        });
    };
    touch_jobs(&mut *tx, &[id]).await?;
    crate::audit::record(
        &mut tx,
        actor,
        "execution.cancel",
        "job",
        &id.to_string(),
        json!({ "device_id": device_id, "from": previous.as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok(previous)
}

/// Who changed a job's status: the event's `by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangedBy {
    /// An operator's action (the reason names the token).
    Operator,
    /// The rollout strategy's decision.
    Rollout,
    /// The scheduler starting it, or failing to.
    Scheduler,
}

impl ChangedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangedBy::Operator => "operator",
            ChangedBy::Rollout => "rollout",
            ChangedBy::Scheduler => "scheduler",
        }
    }
}

/// A job's status change, as the one `job.status.changed` event says it.
pub struct StatusChange<'a> {
    pub job_id: Uuid,
    pub from: JobStatus,
    pub to: JobStatus,
    pub reason: Option<&'a str>,
    pub by: ChangedBy,
    /// Executions the change cancelled, for a job cancelled or aborted.
    pub executions_cancelled: Option<i64>,
    /// The batch a resume released, when it did.
    pub batch_released: Option<i32>,
    /// The class of failures that made a rollout strategy pause or abort
    /// the job, when it named one.
    pub failure_class: Option<&'static str>,
}

impl<'a> StatusChange<'a> {
    pub fn new(job_id: Uuid, from: JobStatus, to: JobStatus, by: ChangedBy) -> Self {
        Self {
            job_id,
            from,
            to,
            reason: None,
            by,
            executions_cancelled: None,
            batch_released: None,
            failure_class: None,
        }
    }

    pub fn of_class(self, class: Option<&'static str>) -> Self {
        Self {
            failure_class: class,
            ..self
        }
    }

    pub fn because(self, reason: &'a str) -> Self {
        Self {
            reason: Some(reason),
            ..self
        }
    }

    pub fn cancelling(self, executions: i64) -> Self {
        Self {
            executions_cancelled: Some(executions),
            ..self
        }
    }
}

/// Writes a job's `job.status.changed` event in the caller's transaction.
async fn status_changed(
    conn: &mut PgConnection,
    change: StatusChange<'_>,
) -> Result<(), sqlx::Error> {
    outbox::enqueue(
        conn,
        outbox::Event {
            kind: outbox::EventType::JobStatusChanged,
            aggregate_id: &change.job_id.to_string(),
            payload: json!({
                "job_id": change.job_id, "from": change.from.as_str(), "to": change.to.as_str(),
                "reason": change.reason, "by": change.by.as_str(),
                "executions_cancelled": change.executions_cancelled,
                "batch_released": change.batch_released,
                "failure_class": change.failure_class,
            }),
        },
    )
    .await?;
    Ok(())
}

/// Moves a job from `change.from` to `change.to` (if it is still at
/// `from`) with its event: the scheduler's and the rollout engine's
/// changes.
pub async fn set_status(
    tx: &mut PgConnection,
    change: StatusChange<'_>,
) -> Result<(), sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE jobs SET status = $3, status_reason = coalesce($4, status_reason), version = version + 1,
                updated_at = now(),
                started_at = CASE WHEN $3 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $3 IN ('completed', 'failed', 'cancelled') THEN now() ELSE finished_at END,
                next_evaluation_at = CASE WHEN $3 = 'running' THEN now() ELSE NULL END,
                paused_by = CASE WHEN $3 = 'paused' THEN 'rollout' ELSE NULL END
         WHERE id = $1 AND status = $2",
    )
    .bind(change.job_id)
    .bind(change.from.as_str())
    .bind(change.to.as_str())
    .bind(change.reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 1 {
        status_changed(tx, change).await?;
    }
    Ok(())
}

/// Releases a batch of a job (`group`, or the first one not released yet)
/// with its `job.batch.started` event; its devices may then be
/// dispatched. Returns the batch released, `None` when there was none.
pub async fn release_batch(
    tx: &mut PgConnection,
    job_id: Uuid,
    group: Option<i32>,
) -> Result<Option<i32>, sqlx::Error> {
    let released = mark_released(tx, job_id, group).await?;
    if let Some(group) = released {
        batch_started(tx, job_id, group).await?;
    }
    Ok(released)
}

/// Marks a batch released (see [`release_batch`]), without its event.
async fn mark_released(
    tx: &mut PgConnection,
    job_id: Uuid,
    group: Option<i32>,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE job_batches SET started_at = now()
         WHERE job_id = $1 AND started_at IS NULL AND batch_group = coalesce($2, (
             SELECT min(batch_group) FROM job_batches WHERE job_id = $1 AND started_at IS NULL))
         RETURNING batch_group",
    )
    .bind(job_id)
    .bind(group)
    .fetch_optional(&mut *tx)
    .await
}

/// The `job.batch.started` event of a released batch.
async fn batch_started(tx: &mut PgConnection, job_id: Uuid, group: i32) -> Result<(), sqlx::Error> {
    outbox::enqueue(
        tx,
        outbox::Event {
            kind: outbox::EventType::JobBatchStarted,
            aggregate_id: &job_id.to_string(),
            payload: json!({ "job_id": job_id, "batch_group": group }),
        },
    )
    .await?;
    tracing::info!(%job_id, batch_group = group, "batch released");
    Ok(())
}

/// Records a rollout strategy's decision about a job
/// (`job.rollout.decision`).
pub async fn rollout_decided(
    tx: &mut PgConnection,
    job_id: Uuid,
    decision: Value,
) -> Result<(), sqlx::Error> {
    outbox::enqueue(
        tx,
        outbox::Event {
            kind: outbox::EventType::JobRolloutDecision,
            aggregate_id: &job_id.to_string(),
            payload: json!({ "job_id": job_id, "decision": decision }),
        },
    )
    .await?;
    Ok(())
}

/// Plans a job whose queued executions have no batch group yet (created
/// by an earlier version of Rollway, which planned when a job started):
/// its devices staged, counted, planned and filled as at creation (see
/// `plan`). Returns the number of batch groups and of devices.
pub async fn plan_queued<F>(
    tx: &mut PgConnection,
    job_id: Uuid,
    plan: impl FnOnce(Population) -> F,
) -> Result<(usize, i64), CreateError>
where
    F: Future<Output = Result<Vec<Group>, CreateError>>,
{
    sqlx::query(plan::STAGE_TABLE).execute(&mut *tx).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO plan_targets SELECT {}
         FROM executions e JOIN devices d ON d.id = e.device_id
         WHERE e.job_id = $1 AND e.stage = 'queued'",
        plan::STAGE_COLUMNS
    )))
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    let population = plan::population(tx).await?;
    let groups = plan(population).await?;
    let filled = plan::fill_staged(tx, &groups).await?;
    let assigned = sqlx::query(
        "UPDATE executions e SET batch_group = ($2::int4[])[t.rn]
         FROM plan_targets t
         WHERE e.job_id = $1 AND e.stage = 'queued' AND e.device_id = t.id",
    )
    .bind(job_id)
    .bind(&filled.group_of)
    .execute(&mut *tx)
    .await?;
    record_batches(tx, job_id, &filled.sizes, Some(&filled)).await?;
    Ok((filled.sizes.len(), assigned.rows_affected() as i64))
}

/// Schedules a job's next evaluation `after` from now, no sooner than
/// `gap`, and records `gap` for [`touch_jobs`].
pub async fn next_evaluation(
    tx: &mut PgConnection,
    job_id: Uuid,
    after: std::time::Duration,
    gap: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET next_evaluation_at = now() + make_interval(secs => $2),
                evaluation_gap_ms = $3
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(after.max(gap).as_secs_f64())
    .bind(gap.as_millis().min(i32::MAX as u128) as i32)
    .execute(tx)
    .await?;
    Ok(())
}

/// Asks for a prompt evaluation of running jobs whose executions changed.
pub async fn touch_jobs<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    jobs: &[Uuid],
) -> Result<(), sqlx::Error> {
    // Brought forward to the job's evaluation gap ahead, not to now:
    // statuses arrive in a stream, and counting a large job's executions
    // takes a while (hundreds of milliseconds at 150,000), so a job is
    // evaluated at most once a gap however fast its statuses come.
    sqlx::query(
        "UPDATE jobs SET next_evaluation_at = now() + make_interval(secs => evaluation_gap_ms / 1000.0)
         WHERE id = ANY($1) AND status = 'running'
           AND next_evaluation_at > now() + make_interval(secs => evaluation_gap_ms / 1000.0)",
    )
    .bind(jobs)
    .execute(executor)
    .await?;
    Ok(())
}

fn past_tense(action: JobAction) -> &'static str {
    match action {
        JobAction::Pause => "paused",
        JobAction::Resume => "resumed",
        JobAction::Cancel => "cancelled",
    }
}

/// One device's update within a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Execution {
    pub id: i64,
    pub job_id: Uuid,
    pub device_id: String,
    pub batch_group: Option<i32>,
    pub status: String,
    pub attempts: i32,
    /// Download progress in percent, when the device reports it.
    pub progress: Option<i16>,
    pub last_error: Option<String>,
    /// Why the device waits to install (`waiting`).
    pub waiting_reason: Option<String>,
    /// Whether the device was told of its cancel: `pending` (to be sent),
    /// `sent` (sent, no answer yet: sent again at its next hello),
    /// `answered` (it stopped, or reported where it got to); null when it
    /// had nothing to be told (its command was never sent) or its family's
    /// plugin cannot tell it.
    pub cancel_delivery: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub version: i64,
}

const EXECUTION_COLUMNS: &str = "id, job_id, device_id, batch_group, status, attempts, progress, \
     last_error, waiting_reason, cancel_delivery, created_at, updated_at, dispatched_at, \
     finished_at, version";

pub async fn list_executions(
    pool: &PgPool,
    job_id: Uuid,
    status: Option<ExecutionStatus>,
    batch_group: Option<i32>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Execution>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions
         WHERE job_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::int IS NULL OR batch_group = $3) AND ($4::bigint IS NULL OR id > $4)
         ORDER BY id LIMIT $5"
    )))
    .bind(job_id)
    .bind(status.map(ExecutionStatus::as_str))
    .bind(batch_group)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One device's executions, newest first, before `before` (an execution id).
pub async fn device_executions(
    pool: &PgPool,
    device_id: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Execution>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions
         WHERE device_id = $1 AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    )))
    .bind(device_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A job's execution on one device.
pub async fn job_execution(
    pool: &PgPool,
    job_id: Uuid,
    device_id: &str,
) -> Result<Option<Execution>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE job_id = $1 AND device_id = $2"
    )))
    .bind(job_id)
    .bind(device_id)
    .fetch_optional(pool)
    .await
}

pub async fn get_execution(pool: &PgPool, id: i64) -> Result<Option<Execution>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One state change of an execution.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct StatusLogEntry {
    pub status: String,
    pub progress: Option<i16>,
    pub message: Option<String>,
    pub at: DateTime<Utc>,
}

pub async fn execution_log(pool: &PgPool, id: i64) -> Result<Vec<StatusLogEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, progress, message, at FROM execution_status_log
         WHERE execution_id = $1 ORDER BY id LIMIT 1000",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::{cumulative, filled_sizes};

    #[test]
    fn batch_sizes_follow_what_was_inserted() {
        let bounds = cumulative(&[1, 4, 5]);
        assert_eq!(bounds, [1, 5, 10]);
        assert_eq!(filled_sizes(&bounds, 10), [1, 4, 5]);
        // Devices registered between the count and the insert join the last group.
        assert_eq!(filled_sizes(&bounds, 12), [1, 4, 7]);
        // Devices that stopped matching meanwhile leave the last groups
        // short, or out.
        assert_eq!(filled_sizes(&bounds, 7), [1, 4, 2]);
        assert_eq!(filled_sizes(&bounds, 4), [1, 3]);
        assert_eq!(filled_sizes(&bounds, 1), [1]);
    }
}

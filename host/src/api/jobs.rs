//! `/api/v1/jobs` and `/api/v1/executions`: create, list, read, steer jobs
//! and read per-device executions with their logs.

use std::collections::{BTreeMap, HashSet};

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult, FieldError};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::domain::{DeviceId, ExecutionStatus, JobStatus};
use crate::jobs::{
    self, CreateError, Execution, Job, JobAction, JobCounts, JobKind, MAX_TARGET_IDS, NewJob,
    StatusLogEntry, TargetFilter, Targets, TransitionError,
};
use crate::plugins::PluginError;
use crate::{audit, firmware};

/// Largest rollout configuration, as JSON text.
pub const MAX_ROLLOUT_CONFIG_BYTES: usize = 64 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(list_executions))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(cancel_job))
        .routes(routes!(get_execution))
}

/// Targets: exactly one of `devices` or `filter`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub struct TargetsInput {
    /// Device ids (1 to 100,000, each once).
    #[schema(schema_with = super::schema::device_ids)]
    devices: Option<Vec<String>>,
    filter: Option<FilterInput>,
}

/// Devices matching every given field.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterInput {
    /// Must be the firmware's family when given.
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z][a-z0-9-]*$")]
    family: Option<String>,
    #[schema(min_length = 1, max_length = 64)]
    model: Option<String>,
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    gateway_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = super::schema::tags)]
    tags: BTreeMap<String, String>,
}

/// The rollout strategy plugin and its configuration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutInput {
    #[schema(
        example = "rollout-percent",
        min_length = 1,
        max_length = 64,
        pattern = "^[a-z0-9-]+$"
    )]
    plugin: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    config: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    /// A label for operators, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    firmware_id: Uuid,
    targets: TargetsInput,
    /// `now` (default), `emergency` (now, ahead of everything), or an RFC 3339 time.
    #[schema(
        example = "now",
        pattern = "^(now|emergency|\\d{4}-\\d{2}-\\d{2}[Tt ]\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?([Zz]|[+-]\\d{2}:\\d{2}))$"
    )]
    start: Option<String>,
    /// Defaults to `rollout-percent` with its default configuration.
    rollout: Option<RolloutInput>,
    /// How long a device may take once dispatched (default 3600 s).
    #[schema(minimum = 1, maximum = 604_800)]
    device_timeout_secs: Option<i32>,
    /// Re-dispatches after an error or timeout (0 to 10, default 0).
    #[schema(minimum = 0, maximum = 10)]
    max_retries: Option<i32>,
}

/// A job with its execution counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    #[serde(flatten)]
    pub counts: JobCounts,
}

const DEFAULT_ROLLOUT_PLUGIN: &str = "rollout-percent";

fn plugin_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_start(raw: Option<&str>, now: DateTime<Utc>) -> Result<(JobKind, DateTime<Utc>), String> {
    match raw.unwrap_or("now") {
        "now" => Ok((JobKind::Immediate, now)),
        "emergency" => Ok((JobKind::Emergency, now)),
        other => DateTime::parse_from_rfc3339(other)
            .map(|at| (JobKind::Scheduled, at.with_timezone(&Utc)))
            .map_err(|_| format!("'{other}' is not 'now', 'emergency' or an RFC 3339 time")),
    }
}

/// Create a job: its executions are created at once, all `queued`.
#[utoipa::path(
    post, path = "/jobs", tag = "jobs",
    request_body = CreateJobRequest,
    responses(
        (status = 201, body = JobView),
        (status = 409, description = "The job would lower the security counter of targeted devices (a rollback) and no admin allowed this firmware as a downgrade", body = super::error::Problem),
        (status = 422, description = "Invalid job, unknown firmware or devices, no target", body = super::error::Problem),
    ),
    security(("bearer" = ["operator"]))
)]
async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateJobRequest>,
) -> ApiResult<(StatusCode, axum::Json<JobView>)> {
    let principal = &caller.0;
    let mut errors = Vec::new();
    let firmware = firmware::get(&state.pool, request.firmware_id).await?;
    if firmware.is_none() {
        errors.push(FieldError::new("firmware_id", "no such firmware"));
    }
    let family = firmware
        .as_ref()
        .map(|f| f.family.clone())
        .unwrap_or_default();

    let devices = request.targets.devices;
    let targets_json = json!({
        "devices": devices,
        "filter": request.targets.filter,
    });
    let targets = match (devices, request.targets.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_TARGET_IDS {
                errors.push(FieldError::new(
                    "targets.devices",
                    format!("must list 1 to {MAX_TARGET_IDS} device ids"),
                ));
            }
            let mut seen = HashSet::new();
            let mut parsed = Vec::with_capacity(ids.len());
            for (i, raw) in ids.iter().enumerate() {
                match DeviceId::parse(raw) {
                    Ok(id) if seen.insert(id.clone()) => parsed.push(id),
                    Ok(_) => errors.push(FieldError::new(
                        format!("targets.devices[{i}]"),
                        "listed twice",
                    )),
                    Err(e) => errors.push(FieldError::new(format!("targets.devices[{i}]"), e.0)),
                }
                if errors.len() > 20 {
                    break;
                }
            }
            Some(Targets::Devices(parsed))
        }
        (None, Some(filter)) => {
            if let Some(f) = &filter.family
                && firmware.is_some()
                && *f != family
            {
                errors.push(FieldError::new(
                    "targets.filter.family",
                    format!("the firmware is for {family}, not {f}"),
                ));
            }
            Some(Targets::Filter(TargetFilter {
                model: filter.model,
                gateway_id: filter.gateway_id,
                tags: filter.tags,
            }))
        }
        _ => {
            errors.push(FieldError::new(
                "targets",
                "give exactly one of 'devices' or 'filter'",
            ));
            None
        }
    };

    let now = Utc::now();
    let (kind, start_at) = parse_start(request.start.as_deref(), now)
        .map_err(|e| errors.push(FieldError::new("start", e)))
        .unwrap_or((JobKind::Immediate, now));
    let (rollout_plugin, rollout_config) = match request.rollout {
        Some(r) => (
            r.plugin,
            if r.config.is_null() {
                json!({})
            } else {
                r.config
            },
        ),
        None => (DEFAULT_ROLLOUT_PLUGIN.to_owned(), json!({})),
    };
    if !plugin_name_ok(&rollout_plugin) {
        errors.push(FieldError::new("rollout.plugin", "is not a plugin name"));
    }
    if !rollout_config.is_object() {
        errors.push(FieldError::new("rollout.config", "must be a JSON object"));
    } else if rollout_config.to_string().len() > MAX_ROLLOUT_CONFIG_BYTES {
        // It goes to the plugin on every evaluation of the job.
        errors.push(FieldError::new(
            "rollout.config",
            format!("must be at most {MAX_ROLLOUT_CONFIG_BYTES} bytes of JSON"),
        ));
    }
    let device_timeout_secs = request.device_timeout_secs.unwrap_or(3600);
    if !(1..=604_800).contains(&device_timeout_secs) {
        errors.push(FieldError::new(
            "device_timeout_secs",
            "must be between 1 and 604800",
        ));
    }
    let max_retries = request.max_retries.unwrap_or(0);
    if !(0..=10).contains(&max_retries) {
        errors.push(FieldError::new("max_retries", "must be between 0 and 10"));
    }
    if let Some(name) = &request.name
        && (name.is_empty() || name.chars().count() > 200)
    {
        errors.push(FieldError::new("name", "must be 1 to 200 characters long"));
    }
    let (Some(targets), true) = (targets, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };

    let registry = state.plugins.clone();
    let (plugin, config_text) = (rollout_plugin.clone(), rollout_config.to_string());
    tokio::task::spawn_blocking(move || registry.validate_rollout_config(&plugin, &config_text))
        .await
        .map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context("validating a rollout config"))
        })?
        .map_err(|e| match e {
            PluginError::NotFound { .. } | PluginError::Disabled(..) => {
                ApiError::from_plugin("rollout.plugin", e)
            }
            other => ApiError::from_plugin("rollout.config", other),
        })?;

    let new = NewJob {
        name: request.name,
        firmware_id: request.firmware_id,
        family,
        targets,
        targets_json,
        kind,
        start_at,
        rollout_plugin,
        rollout_config,
        device_timeout_secs,
        max_retries,
        created_by: principal.actor(),
        security_counter: firmware.as_ref().map_or(0, |f| f.security_counter),
        downgrade_allowed: firmware
            .as_ref()
            .is_some_and(|f| f.downgrade_allowed_at.is_some()),
    };
    let mut tx = state.pool.begin().await?;
    let plan = |total: u32| {
        let (registry, plugin) = (state.plugins.clone(), new.rollout_plugin.clone());
        let config = new.rollout_config.to_string();
        let plugin_name = plugin.clone();
        async move {
            tokio::task::spawn_blocking(move || registry.plan(&plugin, &config, total))
                .await
                .map_err(|e| {
                    CreateError::Plan(PluginError::Failed {
                        plugin: plugin_name,
                        what: format!("plan: {e}"),
                    })
                })?
                .map_err(CreateError::Plan)
        }
    };
    let (job, total) = jobs::create(&mut tx, &new, plan)
        .await
        .map_err(|e| match e {
            CreateError::Db(db) => ApiError::from(db),
            CreateError::Plan(error) => ApiError::from_plugin("rollout.config", error),
            e @ CreateError::Rollback { .. } => ApiError::Rollback(e.to_string()),
            other => ApiError::validation("targets", other.to_string()),
        })?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "job.create",
        "job",
        &job.id.to_string(),
        json!({ "firmware_id": job.firmware_id, "kind": job.kind, "executions": total }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(job_id = %job.id, kind = %job.kind, executions = total, "job created");
    if job.start_at <= Utc::now() {
        state.scheduler_wakeup.notify_one();
    }
    let counts = jobs::counts(&state.pool, job.id).await?;
    Ok((StatusCode::CREATED, axum::Json(JobView { job, counts })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListJobsQuery {
    /// Only jobs in this status.
    #[param(inline)]
    status: Option<JobStatus>,
    /// `next_cursor` of the previous page (a job id).
    cursor: Option<Uuid>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// List jobs, newest first.
#[utoipa::path(
    get, path = "/jobs", tag = "jobs",
    params(ListJobsQuery),
    responses((status = 200, body = Page<Job>), (status = 422, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn list_jobs(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListJobsQuery>,
) -> ApiResult<axum::Json<Page<Job>>> {
    let limit = pagination::limit(query.limit)?;
    let status = query.status;
    let before = query.cursor;
    let rows = jobs::list(&state.pool, status, before, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |j| {
        j.id.to_string()
    })))
}

async fn view(state: &AppState, id: Uuid) -> ApiResult<JobView> {
    let job = jobs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let counts = jobs::counts(&state.pool, id).await?;
    Ok(JobView { job, counts })
}

/// Read a job with its executions counted by status and by batch.
#[utoipa::path(
    get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn get_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<axum::Json<JobView>> {
    Ok(axum::Json(view(&state, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListExecutionsQuery {
    /// Only executions in this status.
    #[param(inline)]
    status: Option<ExecutionStatus>,
    batch_group: Option<i32>,
    /// `next_cursor` of the previous page (an execution id).
    cursor: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// List a job's executions.
#[utoipa::path(
    get, path = "/jobs/{id}/executions", tag = "jobs",
    params(("id" = Uuid, Path), ListExecutionsQuery),
    responses((status = 200, body = Page<Execution>), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn list_executions(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ListExecutionsQuery>,
) -> ApiResult<axum::Json<Page<Execution>>> {
    let limit = pagination::limit(query.limit)?;
    let status = query.status;
    let after = query.cursor;
    if jobs::get(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("job {id}")));
    }
    let rows =
        jobs::list_executions(&state.pool, id, status, query.batch_group, after, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |e| {
        e.id.to_string()
    })))
}

async fn act(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    action: JobAction,
) -> ApiResult<axum::Json<JobView>> {
    let principal = &caller.0;
    jobs::apply_action(&state.pool, id, action, &principal.actor())
        .await
        .map_err(|e| match e {
            TransitionError::NotFound => ApiError::NotFound(format!("job {id}")),
            TransitionError::Invalid { .. } => ApiError::InvalidTransition(e.to_string()),
            TransitionError::Contended => ApiError::Conflict(e.to_string()),
            TransitionError::Db(db) => db.into(),
        })?;
    tracing::info!(job_id = %id, action = action.as_str(), "job steered");
    // A resumed job is evaluated at once rather than at the next tick.
    state.scheduler_wakeup.notify_one();
    Ok(axum::Json(view(state, id).await?))
}

/// Pause a running job: nothing new is dispatched until it resumes.
#[utoipa::path(
    post, path = "/jobs/{id}/pause", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = ["operator"]))
)]
async fn pause_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<axum::Json<JobView>> {
    act(&state, &caller, id, JobAction::Pause).await
}

/// Resume a paused job.
#[utoipa::path(
    post, path = "/jobs/{id}/resume", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = ["operator"]))
)]
async fn resume_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<axum::Json<JobView>> {
    act(&state, &caller, id, JobAction::Resume).await
}

/// Cancel a job; its unfinished executions are cancelled.
#[utoipa::path(
    post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = ["operator"]))
)]
async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<axum::Json<JobView>> {
    act(&state, &caller, id, JobAction::Cancel).await
}

/// An execution with its status log.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    #[serde(flatten)]
    pub execution: Execution,
    pub log: Vec<StatusLogEntry>,
}

/// Read one device execution with its status log.
#[utoipa::path(
    get, path = "/executions/{id}", tag = "jobs",
    params(("id" = i64, Path)),
    responses((status = 200, body = ExecutionView), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn get_execution(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<ExecutionView>> {
    let execution = jobs::get_execution(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("execution {id}")))?;
    let log = jobs::execution_log(&state.pool, id).await?;
    Ok(axum::Json(ExecutionView { execution, log }))
}

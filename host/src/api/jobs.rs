//! `/api/v1/jobs` and `/api/v1/executions`: create, list, read, steer jobs
//! and read per-device executions with their logs.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult, FieldError};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::domain::{ExecutionStatus, InstallPolicy, JobStatus};
use crate::jobs::{
    self, CreateError, Execution, FilterRequest, Job, JobAction, JobCounts, JobRequest,
    StatusLogEntry, SubmitError, TransitionError,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(list_executions))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_failed))
        .routes(routes!(cancel_execution))
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
#[derive(Debug, Deserialize, ToSchema)]
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
    /// The progress timeout (also accepted as `progress_timeout_secs`):
    /// how long a connected device that answered its command may go
    /// without progress, counted from its last status, before the attempt
    /// times out (default 3600 s). A device that is away, or never
    /// answered, is not timed out: it waits for its next hello or the
    /// delivery deadline.
    #[serde(alias = "progress_timeout_secs")]
    #[schema(minimum = 1, maximum = 604_800)]
    device_timeout_secs: Option<i32>,
    /// Re-dispatches after an error or a stall (0 to 10, default 0).
    #[schema(minimum = 0, maximum = 10)]
    max_retries: Option<i32>,
    /// How long after the job starts its devices may still be updated
    /// (default 14 days); what is undelivered then ends `expired`.
    #[schema(minimum = 1, maximum = 31_536_000)]
    delivery_deadline_secs: Option<i32>,
    /// When devices may flash: `immediate` (default), or `when-safe`:
    /// download now, flash at a safe moment the device judges (a vehicle
    /// parked with its engine off). Signed into every command's manifest.
    install: Option<InstallPolicy>,
    /// Maintenance windows: local times of the week in an IANA time zone
    /// when the job may dispatch, e.g. Mon–Fri 22:00–05:00 Europe/Moscow.
    /// Outside them nothing new is sent (a released batch waits; devices
    /// already updating finish). Default: always.
    windows: Option<crate::jobs::windows::Windows>,
    /// An RFC 3339 time by which the job is over: nothing is sent after
    /// it, and what is not finished then ends `expired` (as at the delivery
    /// deadline, whichever comes first). Default: none.
    #[schema(example = "2030-01-01T06:00:00Z")]
    end: Option<String>,
}

/// A job with its execution counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    #[serde(flatten)]
    pub counts: JobCounts,
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
    let (job, _) = jobs::submit(
        &state.pool,
        &state.plugins,
        request.into(),
        &caller.0.actor(),
    )
    .await
    .map_err(|e| submit_error(e, ""))?;
    if job.start_at <= Utc::now() {
        state.scheduler_wakeup.notify_one();
    }
    let counts = jobs::counts(&state.pool, job.id).await?;
    Ok((StatusCode::CREATED, axum::Json(JobView { job, counts })))
}

/// The problem of a job that cannot be created; its fields are named
/// under `prefix` (e.g. `fleet.job.`).
pub(super) fn submit_error(error: SubmitError, prefix: &str) -> ApiError {
    let field = |name: &str| format!("{prefix}{name}");
    match error {
        SubmitError::Invalid(errors) => ApiError::Validation(
            errors
                .into_iter()
                .map(|e| FieldError::new(field(&e.field), e.message))
                .collect(),
        ),
        SubmitError::Plugin { field: name, error } => ApiError::from_plugin(&field(name), error),
        SubmitError::Create(CreateError::Db(db)) | SubmitError::Db(db) => ApiError::from(db),
        SubmitError::Create(CreateError::Plan(error)) => {
            ApiError::from_plugin(&field("rollout.config"), error)
        }
        SubmitError::Create(e @ CreateError::Rollback { .. }) => ApiError::Rollback(e.to_string()),
        SubmitError::Create(other) => ApiError::validation(field("targets"), other.to_string()),
    }
}

impl From<CreateJobRequest> for JobRequest {
    fn from(request: CreateJobRequest) -> Self {
        let (rollout_plugin, rollout_config) = match request.rollout {
            Some(rollout) => (Some(rollout.plugin), Some(rollout.config)),
            None => (None, None),
        };
        JobRequest {
            name: request.name,
            firmware_id: request.firmware_id,
            devices: request.targets.devices,
            filter: request.targets.filter.map(|f| FilterRequest {
                family: f.family,
                model: f.model,
                gateway_id: f.gateway_id,
                tags: f.tags,
            }),
            start: request.start,
            rollout_plugin,
            rollout_config,
            device_timeout_secs: request.device_timeout_secs,
            max_retries: request.max_retries,
            delivery_deadline_secs: request.delivery_deadline_secs,
            install: request.install,
            windows: request.windows,
            end: request.end,
        }
    }
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
        .map_err(|e| transition_error(id, e))?;
    tracing::info!(job_id = %id, action = action.as_str(), "job steered");
    // A resumed job is evaluated at once rather than at the next tick.
    state.scheduler_wakeup.notify_one();
    Ok(axum::Json(view(state, id).await?))
}

fn transition_error(id: Uuid, error: TransitionError) -> ApiError {
    match error {
        TransitionError::NotFound => ApiError::NotFound(format!("job {id}")),
        TransitionError::Invalid { .. } => ApiError::InvalidTransition(error.to_string()),
        TransitionError::Contended => ApiError::Conflict(error.to_string()),
        TransitionError::Db(db) => db.into(),
    }
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

/// How long retried executions may still be delivered.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RetryQuery {
    /// Seconds from now the retried executions may still be delivered
    /// (default: the job's `delivery_deadline_secs`); the job's delivery
    /// deadline moves out so far if it is nearer.
    #[param(minimum = 1, maximum = 31_536_000)]
    delivery_window_secs: Option<i32>,
}

/// What a retry queued, and the job after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryView {
    /// Executions queued again, each as a new attempt.
    pub retried: i64,
    /// Whether the job, finished, runs again for them.
    pub reopened: bool,
    pub job: JobView,
}

/// Queue a job's failed, timed-out and expired executions again.
///
/// Each is dispatched anew as its next attempt. A completed or failed job
/// with executions to retry runs again; a job with none is left as it is.
#[utoipa::path(
    post, path = "/jobs/{id}/retry-failed", tag = "jobs",
    params(("id" = Uuid, Path), RetryQuery),
    responses(
        (status = 200, body = RetryView),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "The job is cancelled or has not started", body = super::error::Problem),
        (status = 422, body = super::error::Problem),
    ),
    security(("bearer" = ["operator"]))
)]
async fn retry_failed(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<RetryQuery>,
) -> ApiResult<axum::Json<RetryView>> {
    if let Some(window) = query.delivery_window_secs
        && !(1..=31_536_000).contains(&window)
    {
        return Err(ApiError::Validation(vec![FieldError::new(
            "delivery_window_secs",
            "must be 1 to 31536000 seconds",
        )]));
    }
    let retried = jobs::retry_failed(
        &state.pool,
        id,
        query.delivery_window_secs,
        &caller.0.actor(),
    )
    .await
    .map_err(|e| transition_error(id, e))?;
    tracing::info!(job_id = %id, executions = retried.executions, reopened = retried.reopened,
        "failed executions retried");
    state.scheduler_wakeup.notify_one();
    Ok(axum::Json(RetryView {
        retried: retried.executions,
        reopened: retried.reopened,
        job: view(&state, id).await?,
    }))
}

/// Cancel one device's execution of a job.
///
/// The execution ends `cancelled` at once. A device that has not started
/// flashing stops; one that is flashing finishes and reports what it runs.
#[utoipa::path(
    post, path = "/jobs/{id}/executions/{device_id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path), ("device_id" = String, Path, description = "Device id")),
    responses(
        (status = 200, body = Execution),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "The execution has already finished", body = super::error::Problem),
    ),
    security(("bearer" = ["operator"]))
)]
async fn cancel_execution(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, device_id)): ApiPath<(Uuid, String)>,
) -> ApiResult<axum::Json<Execution>> {
    let previous = jobs::cancel_execution(&state.pool, id, &device_id, &caller.0.actor())
        .await
        .map_err(|e| match e {
            TransitionError::NotFound => {
                ApiError::NotFound(format!("an execution of job {id} on device '{device_id}'"))
            }
            other => transition_error(id, other),
        })?;
    tracing::info!(job_id = %id, %device_id, from = previous.as_str(), "execution cancelled");
    state.scheduler_wakeup.notify_one();
    let execution = jobs::job_execution(&state.pool, id, &device_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("an execution of job {id} on device '{device_id}'"))
        })?;
    Ok(axum::Json(execution))
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

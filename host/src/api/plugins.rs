//! `/api/v1/plugins`: list, upload, enable, disable and configure plugins.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::jobs::{self, JobRequest};
use crate::plugins::dry_run::{self, Timeline};
use crate::plugins::store::{ConfigureError, DeleteError, PluginConfig, PluginVersion};
use crate::plugins::strategy::{self, FailureClass};
use crate::plugins::{MAX_COMPONENT_BYTES, PluginKind, PluginView, store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plugins, upload_plugin))
        .routes(routes!(enable_plugin))
        .routes(routes!(disable_plugin))
        .routes(routes!(get_plugin_config, set_plugin_config))
        .routes(routes!(list_plugin_configs))
        .routes(routes!(delete_plugin))
        .routes(routes!(list_plugin_versions))
        .routes(routes!(delete_plugin_version))
        .routes(routes!(simulate_plugin))
}

/// List loaded plugins with their WIT version, state and call counts.
#[utoipa::path(
    get, path = "/plugins", tag = "plugins",
    responses((status = 200, body = Page<PluginView>)),
    security(("bearer" = ["viewer"]))
)]
async fn list_plugins(State(state): State<AppState>) -> ApiResult<axum::Json<Page<PluginView>>> {
    // Every plugin on one page: a host loads tens, not thousands.
    Ok(axum::Json(Page {
        items: state.plugins.list(),
        next_cursor: None,
    }))
}

/// Upload a plugin component (`.wasm`). Its world and WIT version are
/// checked; a plugin of the same name is replaced.
#[utoipa::path(
    post, path = "/plugins", tag = "plugins",
    request_body(content(
        (Vec<u8> = "application/wasm"),
        (Vec<u8> = "application/octet-stream"),
    )),
    responses(
        (status = 201, body = PluginView),
        (status = 413, body = super::error::Problem),
        (status = 422, description = "Not a Rollway plugin, unsupported WIT version, or a family clash", body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn upload_plugin(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<PluginView>)> {
    let bytes = axum::body::to_bytes(body, MAX_COMPONENT_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            limit: MAX_COMPONENT_BYTES as u64,
        })?;
    if bytes.is_empty() {
        return Err(ApiError::validation(
            "body",
            "the plugin component is empty",
        ));
    }
    let admitted = store::upload(
        &state.plugins,
        &state.pool,
        &state.store,
        bytes,
        &caller.0.actor(),
    )
    .await
    .map_err(|e| match e {
        store::UploadError::Plugin(error) => ApiError::from_plugin("body", error),
        store::UploadError::Store(error) => ApiError::Internal(error),
        store::UploadError::Db(error) => error.into(),
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(state.plugins.view(&admitted)),
    ))
}

async fn set_state(
    state: &AppState,
    caller: &Caller,
    name: &str,
    enabled: bool,
) -> ApiResult<axum::Json<PluginView>> {
    store::set_state(
        &state.plugins,
        &state.pool,
        name,
        enabled,
        &caller.0.actor(),
    )
    .await?
    .map(axum::Json)
    .ok_or_else(|| ApiError::NotFound(format!("plugin '{name}'")))
}

/// Enable a plugin (also after it was disabled for trapping).
#[utoipa::path(
    post, path = "/plugins/{name}/enable", tag = "plugins",
    params(("name" = String, Path)),
    responses((status = 200, body = PluginView), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn enable_plugin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<PluginView>> {
    set_state(&state, &caller, &name, true).await
}

/// Disable a plugin: calls to it are refused until it is enabled again.
#[utoipa::path(
    post, path = "/plugins/{name}/disable", tag = "plugins",
    params(("name" = String, Path)),
    responses((status = 200, body = PluginView), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn disable_plugin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<PluginView>> {
    set_state(&state, &caller, &name, false).await
}

/// New settings for a plugin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPluginConfig {
    /// A JSON object of at most 64 KiB, checked by the plugin's
    /// `validate-config`: a device plugin's settings, passed to each of its
    /// calls; a rollout plugin's defaults, under each new job's
    /// `rollout.config` (a job's own keys win).
    #[schema(value_type = Object)]
    pub config: Value,
    /// The version these settings replace, as last read: refused with 409
    /// when another was set since. Without it the settings are set
    /// whatever the version.
    #[schema(minimum = 0)]
    pub expected_version: Option<i64>,
}

fn not_a_plugin(name: &str) -> ApiError {
    ApiError::NotFound(format!("plugin '{name}'"))
}

/// Read the settings in force for a plugin (version 0 and `{}` when
/// never set).
#[utoipa::path(
    get, path = "/plugins/{name}/config", tag = "plugins",
    params(("name" = String, Path)),
    responses((status = 200, body = PluginConfig), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn get_plugin_config(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<PluginConfig>> {
    if state.plugins.get(&name).is_none() {
        return Err(not_a_plugin(&name));
    }
    Ok(axum::Json(store::current_config(&state.pool, &name).await?))
}

/// Set a plugin's settings: checked by the plugin, kept as a new version,
/// audited, published as `plugin.config.changed`, and in force for the
/// plugin's calls on every replica within seconds. Earlier versions stay
/// readable; setting one again is a rollback.
#[utoipa::path(
    put, path = "/plugins/{name}/config", tag = "plugins",
    params(("name" = String, Path)),
    request_body = SetPluginConfig,
    responses(
        (status = 200, body = PluginConfig),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "Another version was set since `expected_version`", body = super::error::Problem),
        (status = 422, description = "Not an object, too large, or refused by the plugin", body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn set_plugin_config(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<SetPluginConfig>,
) -> ApiResult<axum::Json<PluginConfig>> {
    if request.expected_version.is_some_and(|v| v < 0) {
        return Err(ApiError::validation(
            "expected_version",
            "must be 0 or more",
        ));
    }
    store::configure(
        &state.plugins,
        &state.pool,
        &name,
        request.config,
        request.expected_version,
        &caller.0.actor(),
    )
    .await
    .map(axum::Json)
    .map_err(|error| match error {
        ConfigureError::NotFound(name) => not_a_plugin(&name),
        ConfigureError::Invalid(reason) => ApiError::validation("config", reason),
        ConfigureError::Plugin(error) => ApiError::from_plugin("config", error),
        ConfigureError::Conflict(reason) => ApiError::Conflict(reason),
        ConfigureError::Db(error) => error.into(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListConfigsQuery {
    /// `next_cursor` of the previous page (a settings version).
    #[param(minimum = 1)]
    cursor: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Every version of a plugin's settings, newest first.
#[utoipa::path(
    get, path = "/plugins/{name}/configs", tag = "plugins",
    params(("name" = String, Path), ListConfigsQuery),
    responses((status = 200, body = Page<PluginConfig>), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn list_plugin_configs(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListConfigsQuery>,
) -> ApiResult<axum::Json<Page<PluginConfig>>> {
    if state.plugins.get(&name).is_none() {
        return Err(not_a_plugin(&name));
    }
    let limit = pagination::limit(query.limit)?;
    let rows = store::config_history(&state.pool, &name, query.cursor, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |c| {
        c.version.to_string()
    })))
}

fn delete_error(error: DeleteError) -> ApiError {
    match error {
        DeleteError::NotFound(what) => ApiError::NotFound(what),
        DeleteError::InUse(reason) => ApiError::Conflict(reason),
        DeleteError::Db(error) => error.into(),
        DeleteError::Registry(error) => ApiError::Internal(error),
    }
}

/// Delete an uploaded plugin with every uploaded version of it; a shipped
/// plugin of the same name is in force again. Refused while unfinished
/// jobs run on it (or, for a device plugin, update its families).
#[utoipa::path(
    delete, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "Shipped, or unfinished jobs use it", body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn delete_plugin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    store::delete_plugin(
        &state.plugins,
        &state.pool,
        &state.store,
        &name,
        &caller.0.actor(),
    )
    .await
    .map_err(delete_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The uploaded versions of a plugin, newest first, each with the
/// unfinished jobs that run on it. A job runs on the rollout plugin version
/// it was created with to its end.
#[utoipa::path(
    get, path = "/plugins/{name}/versions", tag = "plugins",
    params(("name" = String, Path)),
    responses((status = 200, body = Page<PluginVersion>), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn list_plugin_versions(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<Page<PluginVersion>>> {
    if state.plugins.get(&name).is_none() {
        return Err(not_a_plugin(&name));
    }
    // Every version on one page: a plugin has a handful.
    Ok(axum::Json(Page {
        items: store::versions(&state.plugins, &state.pool, &name).await?,
        next_cursor: None,
    }))
}

/// Delete an uploaded version of a plugin that is not in force and that no
/// unfinished job runs on.
#[utoipa::path(
    delete, path = "/plugins/{name}/versions/{sha256}", tag = "plugins",
    params(("name" = String, Path), ("sha256" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "In force, or unfinished jobs run on it", body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn delete_plugin_version(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, sha256)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    store::delete_version(
        &state.plugins,
        &state.pool,
        &state.store,
        &name,
        &sha256,
        &caller.0.actor(),
    )
    .await
    .map_err(delete_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The simulated fleet of a dry run: exactly one of `devices`, `job_id`
/// or `job`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub struct FleetInput {
    /// A synthetic fleet of this many devices without attributes (groups
    /// that select by attributes select nobody in it).
    #[schema(minimum = 1, maximum = 100_000)]
    devices: Option<u32>,
    /// An existing job, run as it is planned: its groups and their
    /// devices, its strategy version and configuration.
    job_id: Option<uuid::Uuid>,
    /// A job not created yet, as `POST /jobs` takes it: its targets
    /// selected, counted and grouped by the strategy as they would be, then
    /// forgotten. Its `rollout.plugin`, if given, must be this plugin.
    job: Option<Box<super::jobs::CreateJobRequest>>,
}

/// The share of attempts failing with each class, each 0 to 1, together
/// at most 1. A `timeout` device goes silent mid-update and times out
/// after the device timeout.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FailRates {
    #[schema(minimum = 0, maximum = 1)]
    download: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    verification: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    incompatible: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    flash: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    power: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    rejected_by_device: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    timeout: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    other: Option<f64>,
}

impl FailRates {
    /// The rates in the failure classes' order, checked.
    fn rates(&self) -> ApiResult<Vec<(FailureClass, f64)>> {
        let given = [
            self.download,
            self.verification,
            self.incompatible,
            self.flash,
            self.power,
            self.rejected_by_device,
            self.timeout,
            self.other,
        ];
        let mut rates = Vec::new();
        for (class, rate) in strategy::CLASSES.into_iter().zip(given) {
            let Some(rate) = rate else { continue };
            if !(0.0..=1.0).contains(&rate) {
                return Err(ApiError::validation(
                    format!("fail_rates.{}", class.as_str()),
                    format!("must be between 0 and 1, not {rate}"),
                ));
            }
            rates.push((class, rate));
        }
        let sum: f64 = rates.iter().map(|(_, r)| r).sum();
        if sum > 1.0 + 1e-9 {
            return Err(ApiError::validation(
                "fail_rates",
                format!("the rates add up to {sum}; at most 1"),
            ));
        }
        Ok(rates)
    }
}

/// A dry run of a rollout strategy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    fleet: FleetInput,
    /// The strategy's configuration, over the plugin's settings as a new
    /// job's is (default `{}`). Not with `fleet.job_id`: a job keeps its
    /// own.
    #[schema(value_type = Option<Object>)]
    config: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    fail_rates: FailRates,
    /// Which devices fail (default 1): the same seed and inputs give the
    /// same timeline, and a simulated fleet given the seed
    /// (`rollway sim --seed`) fails the same devices.
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    seed: Option<u64>,
    /// Average seconds from a device's command to its last status (default
    /// 300); each device takes half to one and a half times it.
    #[schema(minimum = 1, maximum = 86_400)]
    update_secs: Option<u32>,
    /// The device timeout (default: the job's, or 3600).
    #[schema(minimum = 1, maximum = 604_800)]
    device_timeout_secs: Option<u32>,
    /// Attempts after the first of a failed device (default: the job's,
    /// or 0).
    #[schema(minimum = 0, maximum = 10)]
    max_retries: Option<u32>,
}

/// A dry run's answer: what it ran, and its timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunView {
    pub plugin: String,
    /// The strategy's version (SHA-256 of its component).
    pub sha256: String,
    /// The configuration it ran with.
    #[schema(value_type = Object)]
    pub config: Value,
    pub seed: u64,
    /// Devices in the simulated fleet.
    pub devices: u32,
    #[serde(flatten)]
    pub timeline: Timeline,
}

/// Most devices of a synthetic fleet.
const MAX_SYNTHETIC_DEVICES: u32 = 100_000;

/// Dry runs at once on one replica: each keeps a thread busy.
static DRY_RUNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Run a rollout strategy against a simulated fleet in virtual time (a
/// dry run): a synthetic fleet, an existing job's plan, or the plan a job
/// not created yet would get. Returns the plan and the timeline of the
/// strategy's decisions with the counts at each step. Nothing is sent and
/// nothing is kept.
#[utoipa::path(
    post, path = "/plugins/{name}/simulate", tag = "plugins",
    params(("name" = String, Path)),
    request_body = SimulateRequest,
    responses(
        (status = 200, body = DryRunView),
        (status = 404, body = super::error::Problem),
        (status = 422, description = "Not a rollout plugin, a configuration or job it refuses, or failure rates over 1", body = super::error::Problem),
        (status = 503, description = "Other dry runs keep this replica busy; try again", body = super::error::Problem),
    ),
    security(("bearer" = ["operator"]))
)]
async fn simulate_plugin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<SimulateRequest>,
) -> ApiResult<axum::Json<DryRunView>> {
    let plugin = state
        .plugins
        .get(&name)
        .ok_or_else(|| not_a_plugin(&name))?;
    if plugin.kind != PluginKind::Rollout {
        return Err(ApiError::validation(
            "name",
            format!("'{name}' is a device plugin; dry runs are of rollout strategies"),
        ));
    }
    let fail_rates = request.fail_rates.rates()?;
    let _running = DRY_RUNS.try_acquire().map_err(|_| {
        ApiError::Unavailable("other dry runs keep this replica busy; try again".into())
    })?;
    let config = request.config.map(Value::Object);
    let FleetInput {
        devices,
        job_id,
        job,
    } = request.fleet;
    let (fleet, sha256, config, timeout, retries) = match (devices, job_id, job) {
        (Some(devices), None, None) => {
            if !(1..=MAX_SYNTHETIC_DEVICES).contains(&devices) {
                return Err(ApiError::validation(
                    "fleet.devices",
                    format!("1 to {MAX_SYNTHETIC_DEVICES} devices (plan a job for more)"),
                ));
            }
            let config = jobs::with_defaults(
                &state.plugins.config_of(&name).text,
                config.unwrap_or_else(|| Value::Object(Default::default())),
            );
            let text = config.to_string();
            let rollout = state
                .plugins
                .rollout_plugin(&name)
                .map_err(|e| ApiError::from_plugin("name", e))?;
            let sha256 = rollout.sha256.clone();
            state
                .plugins
                .validate_config(rollout, text.clone())
                .await
                .map_err(|e| ApiError::from_plugin("config", e))?;
            let groups = state
                .plugins
                .plan(
                    &name,
                    Some(&sha256),
                    &text,
                    dry_run::synthetic_population(devices),
                )
                .await
                .map_err(|e| ApiError::from_plugin("config", e))?;
            let fleet = dry_run::synthetic_fleet(devices, &groups);
            (fleet, Some(sha256), config, 3600, 0)
        }
        (None, Some(id), None) => {
            if config.is_some() {
                return Err(ApiError::validation(
                    "config",
                    "a job keeps its own configuration; leave config out",
                ));
            }
            let job = jobs::get(&state.pool, id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
            if job.rollout_plugin != name {
                return Err(ApiError::validation(
                    "fleet.job_id",
                    format!(
                        "job {id} rolls out with '{}', not '{name}'",
                        job.rollout_plugin
                    ),
                ));
            }
            let mut conn = state.pool.acquire().await?;
            let fleet = jobs::dry_run::job_fleet(&mut conn, id)
                .await?
                .ok_or_else(|| {
                    ApiError::Conflict(format!("job {id} is planned when it starts; try then"))
                })?;
            (
                fleet,
                job.rollout_plugin_sha256,
                job.rollout_config.0,
                job.device_timeout_secs,
                job.max_retries,
            )
        }
        (None, None, Some(job)) => {
            let mut job: JobRequest = (*job).into();
            if job.rollout_plugin.as_ref().is_some_and(|p| *p != name) {
                return Err(ApiError::validation(
                    "fleet.job.rollout.plugin",
                    format!("this is a dry run of '{name}'"),
                ));
            }
            job.rollout_plugin = Some(name.clone());
            if config.is_some() {
                job.rollout_config = config;
            }
            let prepared = jobs::prepare(&state.pool, &state.plugins, job, &caller.0.actor())
                .await
                .map_err(|e| super::jobs::submit_error(e, "fleet.job."))?;
            let fleet = jobs::dry_run::planned_fleet(&state.pool, &state.plugins, &prepared)
                .await
                .map_err(|e| super::jobs::submit_error(e, "fleet.job."))?;
            let new = prepared.new;
            (
                fleet,
                new.rollout_plugin_sha256,
                new.rollout_config,
                new.device_timeout_secs,
                new.max_retries,
            )
        }
        _ => {
            return Err(ApiError::validation(
                "fleet",
                "give exactly one of devices, job_id or job",
            ));
        }
    };
    let seed = request.seed.unwrap_or(1);
    let outlook = dry_run::Outlook {
        fail_rates,
        seed,
        update_secs: request.update_secs.unwrap_or(300).clamp(1, 86_400),
        device_timeout_secs: request
            .device_timeout_secs
            .unwrap_or(timeout.max(1) as u32)
            .clamp(1, 604_800),
        max_retries: request.max_retries.unwrap_or(retries.max(0) as u32).min(10),
    };
    let devices = fleet.iter().map(|g| g.devices.len() as u32).sum();
    let timeline = jobs::dry_run::simulate(
        &state.plugins,
        &name,
        sha256.as_deref(),
        &config.to_string(),
        fleet,
        outlook,
    )
    .await
    .map_err(|e| ApiError::from_plugin("name", e))?;
    Ok(axum::Json(DryRunView {
        plugin: name,
        sha256: sha256.unwrap_or_else(|| plugin.sha256.clone()),
        config,
        seed,
        devices,
        timeline,
    }))
}

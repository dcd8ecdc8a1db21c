//! `/api/v1/plugins`: list, upload, enable, disable and configure plugins.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::plugins::store::{ConfigureError, DeleteError, PluginConfig, PluginVersion};
use crate::plugins::{MAX_COMPONENT_BYTES, PluginView, store};

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

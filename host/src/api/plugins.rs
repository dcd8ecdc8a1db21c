//! `/api/v1/plugins`: list, upload, enable and disable plugins.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, Caller};
use super::pagination::Page;
use crate::plugins::{MAX_COMPONENT_BYTES, PluginView, store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plugins, upload_plugin))
        .routes(routes!(enable_plugin))
        .routes(routes!(disable_plugin))
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
    Ok((StatusCode::CREATED, axum::Json(admitted.view())))
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

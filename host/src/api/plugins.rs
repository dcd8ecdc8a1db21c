//! `/api/v1/plugins`: list, upload, enable and disable plugins.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, Caller};
use crate::plugins::{MAX_COMPONENT_BYTES, PluginError, PluginSource, PluginView, store};
use crate::{audit, outbox};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plugins, upload_plugin))
        .routes(routes!(enable_plugin))
        .routes(routes!(disable_plugin))
}

/// List loaded plugins with their WIT version, state and call counts.
#[utoipa::path(
    get, path = "/plugins", tag = "plugins",
    responses((status = 200, body = Vec<PluginView>)),
    security(("bearer" = ["viewer"]))
)]
async fn list_plugins(State(state): State<AppState>) -> ApiResult<axum::Json<Vec<PluginView>>> {
    Ok(axum::Json(state.plugins.list()))
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
    let principal = &caller.0;
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
    let registry = state.plugins.clone();
    let loading = bytes.clone();
    let plugin =
        tokio::task::spawn_blocking(move || registry.load(&loading, PluginSource::Uploaded))
            .await
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("loading a plugin")))?
            .map_err(|e| ApiError::from_plugin("body", e))?;
    if let Some(existing) = state.plugins.get(&plugin.name)
        && existing.kind != plugin.kind
    {
        return Err(ApiError::from_plugin(
            "body",
            PluginError::Invalid(format!(
                "'{}' is a {} plugin; it cannot be replaced by a {} plugin",
                plugin.name,
                existing.kind.as_str(),
                plugin.kind.as_str()
            )),
        ));
    }
    store::save_upload(
        &state.pool,
        &state.store,
        bytes,
        &plugin,
        &principal.actor(),
    )
    .await?;
    let details = json!({ "name": plugin.name, "version": plugin.version, "kind": plugin.kind, "sha256": plugin.sha256, "wit_version": plugin.wit_version });
    let admitted = state
        .plugins
        .admit(plugin)
        .map_err(|e| ApiError::from_plugin("body", e))?;
    let mut tx = state.pool.begin().await?;
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: crate::outbox::EventType::PluginUploaded,
            aggregate_id: &admitted.name,
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "plugin.upload",
        "plugin",
        &admitted.name,
        details,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(plugin = %admitted.name, version = %admitted.version, "plugin uploaded");
    Ok((StatusCode::CREATED, axum::Json(admitted.view())))
}

async fn set_state(
    state: &AppState,
    caller: &Caller,
    name: &str,
    enabled: bool,
) -> ApiResult<axum::Json<PluginView>> {
    let principal = &caller.0;
    if state.plugins.get(name).is_none() {
        return Err(ApiError::NotFound(format!("plugin '{name}'")));
    }
    let reason = (!enabled).then(|| format!("disabled by {}", principal.actor()));
    let mut tx = state.pool.begin().await?;
    store::save_state(
        &mut tx,
        name,
        enabled,
        reason.as_deref(),
        &principal.actor(),
    )
    .await?;
    let details = json!({ "name": name, "enabled": enabled });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: crate::outbox::EventType::PluginStateChanged,
            aggregate_id: name,
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        &principal.actor(),
        if enabled {
            "plugin.enable"
        } else {
            "plugin.disable"
        },
        "plugin",
        name,
        details,
    )
    .await?;
    tx.commit().await?;
    let view = state
        .plugins
        .set_enabled(name, enabled, reason)
        .ok_or_else(|| ApiError::NotFound(format!("plugin '{name}'")))?;
    Ok(axum::Json(view))
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

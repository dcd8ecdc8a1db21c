//! The operator REST API under `/api/v1`, plus health, readiness, metrics and
//! the OpenAPI document. Handlers validate input, call the domain modules
//! and map their errors; they never talk to MQTT or Kafka.

mod access;
mod admin;
mod dashboard;
mod devices;
pub mod error;
mod events;
mod extract;
mod firmware;
mod jobs;
mod openapi;
mod pagination;
mod plugins;
mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::metrics::Metrics;
use crate::plugins::Plugins;
use crate::settings::Settings;
use crate::store::FirmwareStore;
use error::{ApiError, ProblemCode};

/// Largest JSON request body.
pub const JSON_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub store: FirmwareStore,
    pub metrics: Metrics,
    pub settings: Arc<Settings>,
    pub plugins: Plugins,
    /// The manifest signing keys.
    pub keys: crate::signing::Keyring,
    /// Published outbox events of this replica's live feed (`live.rs`).
    pub events: crate::live::Sender,
    /// Failed authentications by client address.
    pub auth_failures: crate::auth::FailureLimiter,
    /// Wakes this replica's scheduler (a job was created or steered).
    pub scheduler_wakeup: Arc<tokio::sync::Notify>,
    /// This replica's MQTT connection, up or down.
    pub mqtt: crate::mqtt::LinkState,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rollway",
        description = "Over-the-air firmware updates for vehicle fleets: devices, firmware, jobs and rollouts.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "devices", description = "The fleet"),
        (name = "firmware", description = "Firmware images"),
        (name = "jobs", description = "Update jobs and per-device executions"),
        (name = "admin", description = "Tokens and audit log"),
        (name = "plugins", description = "Rollout and device-family plugins"),
        (name = "events", description = "Published state changes, live"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            access::BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`rw_…`); each operation names the least role it needs: viewer, operator or admin",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            access::DOWNLOAD_TOKEN,
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Query(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "token",
                    "A device's download token, from its update command",
                ),
            )),
        );
    }
}

/// The whole HTTP surface of the host.
pub fn router(state: AppState) -> Router {
    let (api, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(devices::router())
        .merge(firmware::router())
        .merge(jobs::router())
        .merge(admin::router())
        .merge(plugins::router())
        .merge(events::router())
        .split_for_parts();
    // Paths in the document carry their real prefix.
    let paths = std::mem::take(&mut openapi.paths.paths);
    openapi.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (format!("/api/v1{path}"), item))
        .collect();
    let mut openapi = serde_json::to_value(&openapi).expect("the OpenAPI document serializes");
    openapi::complete(&mut openapi);
    let policy = access::Policy::from_openapi(&openapi)
        .unwrap_or_else(|mistake| panic!("the OpenAPI document's security: {mistake}"));
    let openapi = Arc::new(openapi);
    let api = api
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), policy),
            access::authorize,
        ))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));

    Router::new()
        .nest("/api/v1", api)
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let openapi = openapi.clone();
                async move { Json(openapi.as_ref().clone()) }
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(dashboard::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and, when a broker is configured, the
/// MQTT connection is up (without it no command leaves and no status is
/// applied). The event backlog is reported too: events waiting for Kafka
/// make nobody wait, so they do not make the host unready.
async fn readyz(State(state): State<AppState>) -> Response {
    let check = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await;
    match check {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: database check failed");
            return ApiError::Unavailable("database is not reachable".into()).into_response();
        }
        Err(_) => {
            return ApiError::Unavailable("database did not answer within 2 s".into())
                .into_response();
        }
    }
    match state.mqtt.connected() {
        Some(false) => ApiError::Unavailable("the MQTT connection is down".into()).into_response(),
        connected => Json(json!({
            "status": "ready",
            "database": "ok",
            "mqtt": if connected.is_some() { "ok" } else { "not configured" },
            "events": {
                "pending": state.metrics.outbox_pending_total.get(),
                "oldest_pending_seconds": state.metrics.outbox_oldest_pending_seconds.get(),
            },
        }))
        .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}

/// Counts and times every request by its route template (low cardinality),
/// and counts problem responses by type.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status();
    state
        .metrics
        .http_requests_total
        .with_label_values(&[method.as_str(), &route, status.as_str()])
        .inc();
    state
        .metrics
        .http_request_duration_seconds
        .with_label_values(&[method.as_str(), &route])
        .observe(started.elapsed().as_secs_f64());
    if let Some(ProblemCode(code)) = response.extensions().get::<ProblemCode>() {
        state
            .metrics
            .api_errors_total
            .with_label_values(&[code])
            .inc();
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        state
            .metrics
            .api_errors_total
            .with_label_values(&["method-not-allowed"])
            .inc();
    }
    response
}

/// Parses a family and checks that a device plugin serves it.
pub fn known_family(state: &AppState, raw: &str) -> Result<crate::domain::Family, String> {
    let family = crate::domain::Family::parse(raw).map_err(|e| e.0)?;
    if state.plugins.has_family(family.as_str()) {
        Ok(family)
    } else {
        Err(format!(
            "unknown device family '{raw}' (known: {})",
            state.plugins.families().join(", ")
        ))
    }
}

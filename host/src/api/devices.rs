//! `/api/v1/devices`: register, list, read, retag and delete devices.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult, FieldError};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::audit;
use crate::domain::{DeviceId, Tags};
use crate::fleet::{
    self, DeleteError, Device, DeviceFilter, DeviceView, FleetError, FleetSummary, NewDevice,
    UpsertCounts,
};
use crate::jobs::{self, Execution};

/// Most devices accepted in one registration request.
pub const MAX_BULK: usize = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_devices, list_devices))
        .routes(routes!(get_device, update_device, delete_device))
        .routes(routes!(device_executions))
        .routes(routes!(fleet_summary))
        .routes(routes!(fleet_versions))
}

/// The fleet by family, model, installed firmware version and the status
/// of each device's newest execution.
#[utoipa::path(
    get, path = "/fleet/summary", tag = "devices",
    responses((status = 200, body = FleetSummary), (status = 401, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn fleet_summary(State(state): State<AppState>) -> ApiResult<axum::Json<FleetSummary>> {
    Ok(axum::Json(fleet::summary(&state.pool).await?))
}

/// The devices a fleet query selects.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FleetQuery {
    /// Only devices of this family.
    family: Option<String>,
    /// Only devices of this model.
    model: Option<String>,
    /// Only devices behind this gateway.
    gateway_id: Option<String>,
    /// Only devices that run this firmware version (as they last said).
    installed_version: Option<String>,
    /// Tags the device must carry, `key:value` pairs separated by commas.
    #[param(
        example = "site:north,zone:b",
        pattern = "^([^,\\x00]*:[^,\\x00]*)?(,([^,\\x00]*:[^,\\x00]*)?)*$"
    )]
    tags: Option<String>,
    /// Devices whose id starts with this text.
    q: Option<String>,
    /// Only devices connected (`true`) or away (`false`).
    online: Option<bool>,
    /// Only devices flashed outside Rollway (`true`: they run another
    /// version than Rollway installed or was told) or not (`false`).
    drift: Option<bool>,
}

impl FleetQuery {
    fn filter(self) -> ApiResult<DeviceFilter> {
        let mut tags = BTreeMap::new();
        for pair in self
            .tags
            .iter()
            .flat_map(|t| t.split(','))
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once(':').ok_or_else(|| {
                ApiError::validation("tags", format!("'{pair}' is not key:value"))
            })?;
            tags.insert(key.to_owned(), value.to_owned());
        }
        Ok(DeviceFilter {
            family: self.family,
            model: self.model,
            gateway_id: self.gateway_id,
            firmware_version: self.installed_version,
            tags,
            id_prefix: self.q,
            online: self.online,
            drift: self.drift,
        })
    }
}

/// The fleet's version distribution: devices per family, model and
/// installed version (with how many of them are online), among the
/// devices the query selects, as the device list filters them.
#[utoipa::path(
    get, path = "/fleet/versions", tag = "devices",
    params(FleetQuery),
    responses((status = 200, body = Vec<fleet::VersionGroup>), (status = 422, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn fleet_versions(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FleetQuery>,
) -> ApiResult<axum::Json<Vec<fleet::VersionGroup>>> {
    Ok(axum::Json(
        fleet::versions(&state.pool, &query.filter()?).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeviceExecutionsQuery {
    /// `next_cursor` of the previous page (an execution id).
    cursor: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A device's executions (its update history), newest first.
#[utoipa::path(
    get, path = "/devices/{id}/executions", tag = "devices",
    params(("id" = String, Path, description = "Device id"), DeviceExecutionsQuery),
    responses((status = 200, body = Page<Execution>), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn device_executions(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeviceExecutionsQuery>,
) -> ApiResult<axum::Json<Page<Execution>>> {
    let limit = pagination::limit(query.limit)?;
    let before = query.cursor;
    if fleet::get(&state.pool, &id).await?.is_none() {
        return Err(ApiError::NotFound(format!("device '{id}'")));
    }
    let rows = jobs::device_executions(&state.pool, &id, before, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |e| {
        e.id.to_string()
    })))
}

/// A device registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceInput {
    /// VIN, serial number or board id: letters, digits, `-_.:`.
    #[schema(
        example = "VIN123",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._:-]+$"
    )]
    pub id: String,
    /// Device family: `esp32`, `stm32`, `jetson`, or one a plugin adds
    /// (`GET /api/v1/plugins`).
    #[schema(
        example = "esp32",
        min_length = 1,
        max_length = 32,
        pattern = "^[a-z][a-z0-9-]*$"
    )]
    pub family: String,
    /// Chip or board model, e.g. `esp32s3`, `stm32f407`, `orin-nx`.
    #[schema(min_length = 1, max_length = 64)]
    pub model: Option<String>,
    /// The gateway device this one is reached through.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    pub gateway_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = super::schema::tags)]
    pub tags: BTreeMap<String, String>,
    /// The firmware version the device runs, when known at registration
    /// (e.g. from the factory). Absent: what was recorded stays. The
    /// device's own presence messages replace it.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f]+$")]
    pub installed_version: Option<String>,
    /// The security counter of the firmware it runs: it may raise the one
    /// recorded, never lower it (absent: kept, 0 for a new device). The
    /// device's own presence messages replace it.
    #[schema(minimum = 0)]
    pub security_counter: Option<i64>,
}

/// One device, or an array of 1 to 10,000 (the body of a registration).
pub struct DeviceRegistration;

impl utoipa::PartialSchema for DeviceRegistration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::schema::one_or_many::<DeviceInput>(MAX_BULK)
    }
}

impl ToSchema for DeviceRegistration {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            DeviceInput::name().into_owned(),
            <DeviceInput as utoipa::PartialSchema>::schema(),
        ));
        DeviceInput::schemas(schemas);
    }
}

fn parse_input(
    state: &AppState,
    prefix: &str,
    input: DeviceInput,
    errors: &mut Vec<FieldError>,
) -> Option<NewDevice> {
    let id = DeviceId::parse(&input.id)
        .map_err(|e| errors.push(FieldError::new(format!("{prefix}id"), e.0)))
        .ok();
    let family = super::known_family(state, &input.family)
        .map_err(|e| errors.push(FieldError::new(format!("{prefix}family"), e)))
        .ok();
    let gateway_id = match input.gateway_id {
        Some(raw) => match DeviceId::parse(&raw) {
            Ok(gw) if Some(&gw) == id.as_ref() => {
                errors.push(FieldError::new(
                    format!("{prefix}gateway_id"),
                    "a device cannot be its own gateway",
                ));
                None
            }
            Ok(gw) => Some(gw),
            Err(e) => {
                errors.push(FieldError::new(format!("{prefix}gateway_id"), e.0));
                None
            }
        },
        None => None,
    };
    if let Some(model) = &input.model
        && (model.is_empty() || model.chars().count() > 64)
    {
        errors.push(FieldError::new(
            format!("{prefix}model"),
            "must be 1 to 64 characters long",
        ));
    }
    if let Some(version) = &input.installed_version
        && (version.is_empty()
            || version.chars().count() > 64
            || version.chars().any(|c| c.is_ascii_control()))
    {
        errors.push(FieldError::new(
            format!("{prefix}installed_version"),
            "must be 1 to 64 characters long, without control characters",
        ));
    }
    if input.security_counter.is_some_and(|c| c < 0) {
        errors.push(FieldError::new(
            format!("{prefix}security_counter"),
            "must not be negative",
        ));
    }
    let tags = Tags::parse(input.tags)
        .map_err(|e| errors.push(FieldError::new(format!("{prefix}tags"), e.0)))
        .ok();
    Some(NewDevice {
        id: id?,
        family: family?,
        model: input.model,
        gateway_id,
        tags: tags?,
        installed_version: input.installed_version,
        security_counter: input.security_counter,
    })
}

/// What `POST /devices` answers with 200: the device when one was
/// updated, the counts for a batch (documentation: the handler builds
/// each answer itself).
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Registered {
    One(Box<Device>),
    Batch(UpsertCounts),
}

/// Register or update one device (an object) or many (an array).
#[utoipa::path(
    post, path = "/devices", tag = "devices",
    request_body(content = DeviceRegistration, description = "One device object, or an array of up to 10,000"),
    responses(
        (status = 201, description = "One device registered", body = Device),
        (status = 200, description = "One device updated (the device), or a batch registered (the counts)", body = Registered),
        (status = 422, description = "Invalid device", body = super::error::Problem),
    ),
    security(("bearer" = ["operator"]))
)]
async fn register_devices(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let principal = &caller.0;
    let single = !body.is_array();
    let raw: Vec<Value> = match body {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => {
            return Err(ApiError::validation(
                "body",
                "expected a device object or an array of them",
            ));
        }
    };
    if raw.is_empty() {
        return Err(ApiError::validation("body", "the array is empty"));
    }
    if raw.len() > MAX_BULK {
        return Err(ApiError::validation(
            "body",
            format!("at most {MAX_BULK} devices per request, got {}", raw.len()),
        ));
    }
    let mut errors = Vec::new();
    let mut devices = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for (i, value) in raw.into_iter().enumerate() {
        let prefix = if single {
            String::new()
        } else {
            format!("[{i}].")
        };
        match serde_json::from_value::<DeviceInput>(value) {
            Ok(input) => {
                if let Some(device) = parse_input(&state, &prefix, input, &mut errors) {
                    if !seen.insert(device.id.clone()) {
                        errors.push(FieldError::new(
                            format!("{prefix}id"),
                            format!("'{}' appears twice in the request", device.id),
                        ));
                    }
                    devices.push(device);
                }
            }
            Err(e) => {
                let field = if single {
                    "body".to_owned()
                } else {
                    format!("[{i}]")
                };
                errors.push(FieldError::new(field, e.to_string()));
            }
        }
        if errors.len() >= 50 {
            break;
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    let mut tx = state.pool.begin().await?;
    let counts = fleet::upsert(&mut tx, &devices)
        .await
        .map_err(|e| match e {
            FleetError::Db(db) => ApiError::from(db),
            other => ApiError::validation("gateway_id", other.to_string()),
        })?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "device.register",
        "device",
        devices[0].id.as_str(),
        json!({
            "count": devices.len(),
            "created": counts.created,
            "updated": counts.updated,
            "ids": devices.iter().take(100).map(|d| d.id.as_str()).collect::<Vec<_>>(),
        }),
    )
    .await?;
    commit_devices(tx).await?;

    if single {
        let device = fleet::get(&state.pool, devices[0].id.as_str())
            .await?
            .ok_or_else(|| ApiError::NotFound("device".into()))?;
        let status = if counts.created == 1 {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, axum::Json(device)).into_response())
    } else {
        Ok((StatusCode::OK, axum::Json(counts)).into_response())
    }
}

/// Commits, turning a deferred gateway foreign-key failure into a 422.
async fn commit_devices(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> ApiResult<()> {
    tx.commit()
        .await
        .map_err(|e| match crate::db::constraint_violation(&e) {
            Some((crate::db::ViolationKind::ForeignKey, _)) => {
                ApiError::validation("gateway_id", "the gateway is not a registered device")
            }
            _ => ApiError::from(e),
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListDevicesQuery {
    /// Only devices of this family.
    family: Option<String>,
    /// Only devices of this model.
    model: Option<String>,
    /// Only devices behind this gateway.
    gateway_id: Option<String>,
    /// Only devices that run this firmware version (as they last said).
    installed_version: Option<String>,
    /// The same as `installed_version`, its earlier name.
    firmware_version: Option<String>,
    /// Tags the device must carry, `key:value` pairs separated by commas.
    #[param(
        example = "site:north,zone:b",
        pattern = "^([^,\\x00]*:[^,\\x00]*)?(,([^,\\x00]*:[^,\\x00]*)?)*$"
    )]
    tags: Option<String>,
    /// Devices whose id starts with this text.
    q: Option<String>,
    /// Only devices connected (`true`) or away (`false`).
    online: Option<bool>,
    /// Only devices flashed outside Rollway (`true`: they run another
    /// version than Rollway installed or was told) or not (`false`).
    drift: Option<bool>,
    /// `next_cursor` of the previous page (a device id).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// List devices, filtered, in pages ordered by id.
#[utoipa::path(
    get, path = "/devices", tag = "devices",
    params(ListDevicesQuery),
    responses((status = 200, body = Page<DeviceView>), (status = 422, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn list_devices(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListDevicesQuery>,
) -> ApiResult<axum::Json<Page<DeviceView>>> {
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .map(|c| DeviceId::parse(&c).map(|_| c))
        .transpose()
        .map_err(|e| ApiError::validation("cursor", e.0))?;
    let filter = FleetQuery {
        family: query.family,
        model: query.model,
        gateway_id: query.gateway_id,
        installed_version: query.installed_version.or(query.firmware_version),
        tags: query.tags,
        q: query.q,
        online: query.online,
        drift: query.drift,
    }
    .filter()?;
    let rows = fleet::list(&state.pool, &filter, after.as_deref(), limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |d| {
        d.device.id.clone()
    })))
}

/// Read one device.
#[utoipa::path(
    get, path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceView), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn get_device(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<DeviceView>> {
    fleet::get(&state.pool, &id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound(format!("device '{id}'")))
}

/// Changes to a device; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// Replaces all tags (`null` is refused: leave it out to keep them).
    #[serde(default, deserialize_with = "present_or_null")]
    #[schema(schema_with = super::schema::tags)]
    tags: Option<Option<BTreeMap<String, String>>>,
    /// Replaces the model; `null` clears it.
    #[serde(default, deserialize_with = "present_or_null")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64)]
    model: Option<Option<String>>,
}

/// Replace a device's tags or model.
#[utoipa::path(
    patch, path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    request_body = DevicePatch,
    responses((status = 200, body = Device), (status = 404, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = ["operator"]))
)]
async fn update_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<DevicePatch>,
) -> ApiResult<axum::Json<Device>> {
    let principal = &caller.0;
    let tags = patch
        .tags
        .map(|tags| {
            tags.ok_or_else(|| {
                ApiError::validation("tags", "must be an object; leave it out to keep the tags")
            })
        })
        .transpose()?
        .map(Tags::parse)
        .transpose()
        .map_err(|e| ApiError::validation("tags", e.0))?;
    if let Some(Some(model)) = &patch.model
        && (model.is_empty() || model.chars().count() > 64)
    {
        return Err(ApiError::validation(
            "model",
            "must be 1 to 64 characters long",
        ));
    }
    let mut tx = state.pool.begin().await?;
    let device = fleet::update(
        &mut tx,
        &id,
        tags.as_ref(),
        patch.model.as_ref().map(|m| m.as_deref()),
    )
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("device '{id}'")))?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "device.update",
        "device",
        &id,
        json!({ "tags": tags.map(|t| t.to_json()), "model": patch.model }),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(device))
}

/// Delete a device that has no update in progress and serves as no gateway.
#[utoipa::path(
    delete, path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 204), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = ["operator"]))
)]
async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    fleet::delete(&mut tx, &id).await.map_err(|e| match e {
        DeleteError::NotFound => ApiError::NotFound(format!("device '{id}'")),
        DeleteError::Db(db) => ApiError::from(db),
        other => ApiError::Conflict(other.to_string()),
    })?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "device.delete",
        "device",
        &id,
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

//! `/api/v1/firmware`: upload (streamed, hashed on the way), list, read,
//! download with ranges, presign, delete.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::domain::FirmwareVersion;
use crate::firmware::range::{self, RangeRequest};
use crate::firmware::upload::{self, Upload, UploadError};
use crate::firmware::{self, DeleteError, Firmware};
use crate::store::FirmwareStore;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_firmware, list_firmware))
        .routes(routes!(get_firmware, delete_firmware))
        .routes(routes!(download_firmware))
        .routes(routes!(firmware_url))
        .routes(routes!(allow_downgrade, forbid_downgrade))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Device family the image is for.
    #[param(
        example = "esp32",
        min_length = 1,
        max_length = 32,
        pattern = "^[a-z][a-z0-9-]*$"
    )]
    family: String,
    /// Version of the image (default: the one the device plugin reads
    /// from it).
    #[param(
        example = "1.4.0",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._+-]+$"
    )]
    version: Option<String>,
    /// Anti-rollback security counter of the image (default: the one the
    /// device plugin read from the image, else 0). Devices refuse an image
    /// whose counter is below the one they run; raise it with a release
    /// that fixes a vulnerability.
    #[param(example = 3)]
    security_counter: Option<i64>,
}

/// Upload a firmware image (the raw bytes as the body).
#[utoipa::path(
    post, path = "/firmware", tag = "firmware",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = Firmware),
        (status = 409, description = "This family already has this version", body = super::error::Problem),
        (status = 413, description = "Image above ROLLWAY_MAX_FIRMWARE_BYTES", body = super::error::Problem),
        (status = 422, body = super::error::Problem),
    ),
    security(("bearer" = ["operator"]))
)]
async fn upload_firmware(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let family = super::known_family(&state, &query.family)
        .map_err(|e| ApiError::validation("family", e))?;
    let version = query
        .version
        .as_deref()
        .map(FirmwareVersion::parse)
        .transpose()
        .map_err(|e| ApiError::validation("version", e.0))?;
    let limit = state.settings.max_firmware_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let request = Upload {
        family,
        version,
        security_counter: query.security_counter,
        limit,
        actor: caller.0.actor(),
    };
    let context = upload::Context {
        pool: &state.pool,
        store: &state.store,
        plugins: &state.plugins,
        metrics: &state.metrics,
    };
    let body = body.into_data_stream();
    let record = upload::upload(context, request, body, |error: &axum::Error| {
        super::extract::body_timed_out(error)
    })
    .await
    .map_err(|e| match e {
        UploadError::Invalid(field, message) => ApiError::validation(field, message),
        UploadError::Exists(message) => ApiError::Conflict(message),
        UploadError::TooLarge { limit } => ApiError::PayloadTooLarge { limit },
        UploadError::Interrupted {
            timed_out: true, ..
        } => ApiError::RequestTimeout,
        e @ UploadError::Interrupted { .. } => ApiError::BadRequest(e.to_string()),
        UploadError::Plugin(error) => ApiError::from_plugin("body", error),
        UploadError::Store(error) => ApiError::Internal(error),
        UploadError::Db(error) => error.into(),
    })?;
    Ok((StatusCode::CREATED, axum::Json(record)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListFirmwareQuery {
    family: Option<String>,
    /// Only this exact version.
    version: Option<String>,
    /// `next_cursor` of the previous page (a firmware id).
    cursor: Option<Uuid>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// List firmware, newest first.
#[utoipa::path(
    get, path = "/firmware", tag = "firmware",
    params(ListFirmwareQuery),
    responses((status = 200, body = Page<Firmware>)),
    security(("bearer" = ["viewer"]))
)]
async fn list_firmware(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListFirmwareQuery>,
) -> ApiResult<axum::Json<Page<Firmware>>> {
    let limit = pagination::limit(query.limit)?;
    let before = query.cursor;
    let rows = firmware::list(
        &state.pool,
        query.family.as_deref(),
        query.version.as_deref(),
        before,
        limit + 1,
    )
    .await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |f| {
        f.id.to_string()
    })))
}

async fn find(state: &AppState, id: Uuid) -> ApiResult<Firmware> {
    firmware::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("firmware {id}")))
}

/// Read one firmware record.
#[utoipa::path(
    get, path = "/firmware/{id}", tag = "firmware",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Firmware), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn get_firmware(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<axum::Json<Firmware>> {
    Ok(axum::Json(find(&state, id).await?))
}

/// Why an admin allows an image to lower devices' security counter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowDowngrade {
    /// Recorded with the approval and in the audit log: 1 to 1000
    /// characters, not only spaces.
    #[schema(
        example = "3.1 bricks the CAN transceiver on rev B boards; back to 3.0",
        min_length = 1,
        max_length = 1000,
        pattern = "^[^\\x00]*[^\\x00\\s][^\\x00]*$"
    )]
    pub reason: String,
}

/// Allow this image as a downgrade: jobs may then install it on devices
/// whose security counter is higher, and its manifests tell devices so.
/// Admins only; audited.
#[utoipa::path(
    post, path = "/firmware/{id}/allow-downgrade", tag = "firmware",
    params(("id" = Uuid, Path)),
    request_body = AllowDowngrade,
    responses(
        (status = 200, body = Firmware),
        (status = 403, body = super::error::Problem),
        (status = 404, body = super::error::Problem),
        (status = 422, body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn allow_downgrade(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<AllowDowngrade>,
) -> ApiResult<axum::Json<Firmware>> {
    let reason = request.reason.trim();
    if reason.is_empty() || request.reason.chars().count() > 1000 {
        return Err(ApiError::validation(
            "reason",
            "must say why, in 1 to 1000 characters",
        ));
    }
    let record = firmware::change_downgrade(&state.pool, id, &caller.0.actor(), Some(reason))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("firmware {id}")))?;
    Ok(axum::Json(record))
}

/// Withdraw an allowed downgrade. Jobs created before keep it.
#[utoipa::path(
    delete, path = "/firmware/{id}/allow-downgrade", tag = "firmware",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Firmware),
        (status = 403, body = super::error::Problem),
        (status = 404, body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn forbid_downgrade(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<axum::Json<Firmware>> {
    let record = firmware::change_downgrade(&state.pool, id, &caller.0.actor(), None)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("firmware {id}")))?;
    Ok(axum::Json(record))
}

/// Delete firmware no job uses.
#[utoipa::path(
    delete, path = "/firmware/{id}", tag = "firmware",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = ["operator"]))
)]
async fn delete_firmware(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    firmware::remove(&state.pool, &state.store, id, &caller.0.actor())
        .await
        .map_err(|e| match e {
            DeleteError::NotFound => ApiError::NotFound(format!("firmware {id}")),
            DeleteError::InUse(_) => ApiError::Conflict(e.to_string()),
            DeleteError::Db(db) => db.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download an image; supports `Range` (one range), `If-Range` and
/// `If-None-Match` so interrupted downloads resume where they stopped.
#[utoipa::path(
    get, path = "/firmware/{id}/download", tag = "firmware",
    params(
        ("id" = Uuid, Path),
        DownloadQuery,
        ("Range" = Option<String>, Header, description = "e.g. bytes=1024-"),
        ("If-Range" = Option<String>, Header, description = "The ETag the client holds"),
    ),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304), (status = 404, body = super::error::Problem), (status = 416, body = super::error::Problem),
    ),
    security(("bearer" = ["viewer"]), ("download_token" = []))
)]
async fn download_firmware(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<DownloadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // Devices present the download token from their command; people a bearer token.
    let by_token = query
        .token
        .as_deref()
        .is_some_and(|t| crate::manifest::verify_download_token(&state.keys, id, t));
    if !by_token {
        // Without a download token, the bearer token (checked by
        // `access::authorize` when present) is required.
        caller?;
    }
    let record = find(&state, id).await?;
    serve_image(&state.store, &record, &headers).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DownloadQuery {
    /// A device's download token (from its update command), instead of a bearer token.
    token: Option<String>,
}

/// Answers a GET for an image, honouring conditional and range headers.
pub async fn serve_image(
    store: &FirmwareStore,
    record: &Firmware,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let size = record.size as u64;
    let etag = format!("\"{}\"", record.sha256);
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };

    if let Some(tags) = header_str(header::IF_NONE_MATCH)
        && tags.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // A range is honoured only if the client's copy is this very image.
    let range_header = match header_str(header::IF_RANGE) {
        Some(validator) if validator.trim() != etag => None,
        _ => header_str(header::RANGE),
    };
    let (status, range) = match range::parse(range_header, size) {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    let body = if size == 0 {
        Body::empty()
    } else {
        let stream = store.stream(&record.storage_key, range.clone()).await?;
        Body::from_stream(stream.map_err(std::io::Error::other))
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}-{}.bin\"",
                record.family, record.version
            ),
        );
    if let Some(r) = &range {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        );
    }
    response.body(body).map_err(|e| {
        ApiError::Internal(anyhow::Error::new(e).context("building a download response"))
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UrlQuery {
    /// Lifetime of a presigned URL in seconds, 1 to 604800 (default 3600).
    #[param(minimum = 1, maximum = 604_800)]
    ttl_secs: Option<u64>,
}

/// Where a client fetches an image from.
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadUrl {
    pub url: String,
    /// True for a presigned object-store URL that needs no token.
    pub presigned: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub sha256: String,
    pub size: i64,
}

/// A download URL: presigned when the store is S3, else the host endpoint.
#[utoipa::path(
    get, path = "/firmware/{id}/url", tag = "firmware",
    params(("id" = Uuid, Path), UrlQuery),
    responses((status = 200, body = DownloadUrl), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn firmware_url(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<UrlQuery>,
) -> ApiResult<axum::Json<DownloadUrl>> {
    let ttl = query.ttl_secs.unwrap_or(3600);
    if !(1..=604_800).contains(&ttl) {
        return Err(ApiError::validation(
            "ttl_secs",
            "must be between 1 and 604800",
        ));
    }
    let record = find(&state, id).await?;
    let presigned = state
        .store
        .presigned_get(&record.storage_key, Duration::from_secs(ttl))
        .await?;
    Ok(axum::Json(match presigned {
        Some(url) => DownloadUrl {
            url: url.to_string(),
            presigned: true,
            expires_at: Some(Utc::now() + chrono::Duration::seconds(ttl as i64)),
            sha256: record.sha256,
            size: record.size,
        },
        None => DownloadUrl {
            url: format!("/api/v1/firmware/{id}/download"),
            presigned: false,
            expires_at: None,
            sha256: record.sha256,
            size: record.size,
        },
    }))
}

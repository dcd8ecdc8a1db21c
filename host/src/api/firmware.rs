//! `/api/v1/firmware`: upload (streamed, hashed on the way), list, read,
//! download with ranges, presign, delete.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::domain::{Family, FirmwareDigest, FirmwareVersion};
use crate::firmware::range::{self, RangeRequest};
use crate::firmware::store::FirmwareStore;
use crate::firmware::{self, DeleteError, Firmware};
use crate::plugins::runtime::ImageSource;
use crate::{audit, outbox};
use std::sync::Arc;

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
    let principal = &caller.0;
    let family = super::known_family(&state, &query.family)
        .map_err(|e| ApiError::validation("family", e))?;
    let given_version = query
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
    if query.security_counter.is_some_and(|c| c < 0) {
        return Err(ApiError::validation(
            "security_counter",
            "must be zero or more",
        ));
    }
    if let Some(version) = &given_version {
        ensure_new_version(&state, &family, version.as_str()).await?;
    }

    let id = Uuid::now_v7();
    let (digest, size, temp_key) = receive_image(&state, body, &id.to_string(), limit).await?;
    let checked = check_image(&state, &family, &temp_key, size, given_version).await;
    let (version, metadata) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            if let Err(cleanup) = state.store.delete(&temp_key).await {
                tracing::warn!(error = format!("{cleanup:#}"), key = %temp_key, "temporary upload left behind");
            }
            return Err(error);
        }
    };
    let security_counter = match query.security_counter {
        Some(counter) => counter,
        None => image_security_counter(&metadata)?,
    };
    let storage_key = FirmwareStore::image_key(&digest);
    state.store.promote(&temp_key, &storage_key).await?;

    let record = Firmware {
        id,
        family: family.as_str().to_owned(),
        version: version.clone(),
        sha256: digest.as_str().to_owned(),
        size: size as i64,
        storage_key,
        metadata: sqlx::types::Json(metadata),
        security_counter,
        downgrade_allowed_by: None,
        downgrade_allowed_at: None,
        downgrade_reason: None,
        created_by: principal.actor(),
        created_at: Utc::now(),
    };
    let mut tx = state.pool.begin().await?;
    if let Err(error) = firmware::insert(&mut tx, &record).await {
        return Err(match crate::db::constraint_violation(&error) {
            Some((crate::db::ViolationKind::Unique, _)) => {
                ApiError::Conflict(format!("{family} firmware {version} already exists"))
            }
            _ => error.into(),
        });
    }
    let event = json!({
        "firmware_id": record.id, "family": record.family, "version": record.version,
        "sha256": record.sha256, "size": record.size, "security_counter": record.security_counter,
    });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: crate::outbox::EventType::FirmwareUploaded,
            aggregate_id: &record.id.to_string(),
            payload: event.clone(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "firmware.upload",
        "firmware",
        &record.id.to_string(),
        event,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(firmware_id = %record.id, family = %record.family, version = %record.version, size, sha256 = %record.sha256, "firmware uploaded");
    Ok((StatusCode::CREATED, axum::Json(record)).into_response())
}

/// The security counter a device plugin read from the image (the detail
/// `security_counter`), 0 when it read none.
fn image_security_counter(metadata: &serde_json::Value) -> ApiResult<i64> {
    match metadata["details"]["security_counter"].as_str() {
        None => Ok(0),
        Some(text) => text.trim().parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| {
            ApiError::validation(
                "security_counter",
                format!("the image's security counter '{text}' is not a whole number of zero or more"),
            )
        }),
    }
}

async fn ensure_new_version(state: &AppState, family: &Family, version: &str) -> ApiResult<()> {
    if firmware::version_exists(&state.pool, family.as_str(), version).await? {
        return Err(ApiError::Conflict(format!(
            "{family} firmware {version} already exists"
        )));
    }
    Ok(())
}

/// An image in the store, read by a device plugin from a blocking thread.
struct StoredImage {
    store: FirmwareStore,
    key: String,
    size: u64,
    runtime: tokio::runtime::Handle,
}

impl ImageSource for StoredImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = (offset + u64::from(len)).min(self.size);
        self.runtime
            .block_on(self.store.read_range(&self.key, offset..end))
            .map(|bytes| bytes.to_vec())
            .map_err(|e| format!("reading the image: {e:#}"))
    }
}

/// Runs the family's `validate-image` on an uploaded image; returns the
/// version to record and the metadata the plugin extracted.
async fn check_image(
    state: &AppState,
    family: &Family,
    key: &str,
    size: u64,
    given: Option<FirmwareVersion>,
) -> ApiResult<(String, serde_json::Value)> {
    if size == 0 {
        return Err(ApiError::validation("body", "the firmware image is empty"));
    }
    let source: Arc<dyn ImageSource> = Arc::new(StoredImage {
        store: state.store.clone(),
        key: key.to_owned(),
        size,
        runtime: tokio::runtime::Handle::current(),
    });
    let registry = state.plugins.clone();
    let fam = family.as_str().to_owned();
    let info = tokio::task::spawn_blocking(move || registry.validate_image(&fam, "{}", source))
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("validating an image")))?
        .map_err(|e| ApiError::from_plugin("body", e))?;
    let version = match (given, &info.version) {
        (Some(given), Some(found)) if given.as_str() != found => {
            return Err(ApiError::validation(
                "version",
                format!(
                    "'{}' was given but the image says '{found}'",
                    given.as_str()
                ),
            ));
        }
        (Some(given), _) => given.as_str().to_owned(),
        (None, Some(found)) => {
            let parsed = FirmwareVersion::parse(found).map_err(|e| {
                ApiError::validation("version", format!("the image's version '{found}' {}", e.0))
            })?;
            ensure_new_version(state, family, parsed.as_str()).await?;
            parsed.as_str().to_owned()
        }
        (None, None) => {
            return Err(ApiError::validation(
                "version",
                "is required: the image carries no version the plugin could read",
            ));
        }
    };
    let details: serde_json::Map<String, serde_json::Value> = info
        .details
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    Ok((
        version,
        json!({ "target": info.target, "image_version": info.version, "details": details }),
    ))
}

/// Streams the body into the store under a temporary key while hashing it;
/// aborts the upload when the body passes `limit` or breaks off.
async fn receive_image(
    state: &AppState,
    body: Body,
    upload_id: &str,
    limit: u64,
) -> ApiResult<(FirmwareDigest, u64, String)> {
    let mut upload = state.store.begin_upload(upload_id).await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                upload.abort().await;
                if super::extract::body_timed_out(&error) {
                    return Err(ApiError::RequestTimeout);
                }
                return Err(ApiError::BadRequest(format!("upload interrupted: {error}")));
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            upload.abort().await;
            return Err(ApiError::PayloadTooLarge { limit });
        }
        state
            .metrics
            .firmware_bytes_uploaded_total
            .inc_by(chunk.len() as u64);
        hasher.update(&chunk);
        if let Err(error) = upload.write(chunk).await {
            upload.abort().await;
            return Err(error.into());
        }
    }
    let key = upload.key.clone();
    upload.finish().await?;
    Ok((
        FirmwareDigest::from_bytes(&hasher.finalize().into()),
        size,
        key,
    ))
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
    let principal = &caller.0;
    let reason = request.reason.trim();
    if reason.is_empty() || request.reason.chars().count() > 1000 {
        return Err(ApiError::validation(
            "reason",
            "must say why, in 1 to 1000 characters",
        ));
    }
    let mut tx = state.pool.begin().await?;
    let record = firmware::allow_downgrade(&mut tx, id, &principal.actor(), reason)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("firmware {id}")))?;
    record_downgrade_change(&mut tx, &principal.actor(), &record, true).await?;
    tx.commit().await?;
    tracing::warn!(firmware_id = %id, family = %record.family, version = %record.version, actor = %principal.actor(), reason, "firmware allowed as a downgrade");
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
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    let record = firmware::forbid_downgrade(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("firmware {id}")))?;
    record_downgrade_change(&mut tx, &principal.actor(), &record, false).await?;
    tx.commit().await?;
    Ok(axum::Json(record))
}

async fn record_downgrade_change(
    tx: &mut sqlx::PgConnection,
    actor: &str,
    record: &Firmware,
    allowed: bool,
) -> Result<(), sqlx::Error> {
    let details = json!({
        "firmware_id": record.id, "family": record.family, "version": record.version,
        "security_counter": record.security_counter, "reason": record.downgrade_reason,
        "downgrade_allowed": allowed,
    });
    outbox::enqueue(
        tx,
        outbox::Event {
            kind: crate::outbox::EventType::FirmwareDowngradeChanged,
            aggregate_id: &record.id.to_string(),
            payload: details.clone(),
        },
    )
    .await?;
    let action = if allowed {
        "firmware.allow_downgrade"
    } else {
        "firmware.forbid_downgrade"
    };
    audit::record(
        tx,
        actor,
        action,
        "firmware",
        &record.id.to_string(),
        details,
    )
    .await
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
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    let (record, unreferenced) = firmware::delete(&mut tx, id).await.map_err(|e| match e {
        DeleteError::NotFound => ApiError::NotFound(format!("firmware {id}")),
        DeleteError::InUse(_) => ApiError::Conflict(e.to_string()),
        DeleteError::Db(db) => db.into(),
    })?;
    let details = json!({
        "firmware_id": record.id, "family": record.family, "version": record.version,
        "sha256": record.sha256,
    });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: crate::outbox::EventType::FirmwareDeleted,
            aggregate_id: &id.to_string(),
            payload: details.clone(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "firmware.delete",
        "firmware",
        &id.to_string(),
        details,
    )
    .await?;
    tx.commit().await?;
    // Bytes go only after the record is gone; a failure here leaves an
    // unreferenced blob, never a record without bytes.
    if unreferenced && let Err(error) = state.store.delete(&record.storage_key).await {
        tracing::warn!(error = format!("{error:#}"), key = %record.storage_key, "firmware blob left behind");
    }
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
        .is_some_and(|t| crate::dispatch::manifest::verify_download_token(&state.keys, id, t));
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

//! Uploading an image: the service behind `POST /api/v1/firmware`. The
//! bytes are streamed to the store under a temporary key while hashed,
//! the family's device plugin validates them where they lie, they move to
//! their content address, and only then is the record written, with its
//! `firmware.uploaded` event and audit record, in one transaction.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Firmware;
use crate::domain::{Family, FirmwareDigest, FirmwareVersion};
use crate::metrics::Metrics;
use crate::outbox;
use crate::plugins::runtime::ImageSource;
use crate::plugins::{PluginError, Plugins};
use crate::store::FirmwareStore;

/// An upload as asked for.
#[derive(Debug, Clone)]
pub struct Upload {
    pub family: Family,
    /// The version the operator gives; else the one the plugin reads.
    pub version: Option<FirmwareVersion>,
    /// The counter the operator gives; else the one the plugin reads, else 0.
    pub security_counter: Option<i64>,
    /// Bytes accepted at most.
    pub limit: u64,
    pub actor: String,
}

/// What an upload needs of the host.
pub struct Context<'a> {
    pub pool: &'a sqlx::PgPool,
    pub store: &'a FirmwareStore,
    pub plugins: &'a Plugins,
    pub metrics: &'a Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A field is wrong (`field`, why).
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    #[error("{0}")]
    Exists(String),
    #[error("the image is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The body broke off (`timed_out`: it stalled).
    #[error("upload interrupted: {reason}")]
    Interrupted { reason: String, timed_out: bool },
    /// The family's plugin refused the image or failed.
    #[error(transparent)]
    Plugin(PluginError),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Refuses an upload whose version the family already has.
pub async fn ensure_new_version(
    pool: &sqlx::PgPool,
    family: &Family,
    version: &str,
) -> Result<(), UploadError> {
    if super::version_exists(pool, family.as_str(), version).await? {
        return Err(UploadError::Exists(format!(
            "{family} firmware {version} already exists"
        )));
    }
    Ok(())
}

/// Receives, validates, stores and records an image. `timed_out` tells a
/// body that stalled from one that broke.
pub async fn upload<S, E>(
    ctx: Context<'_>,
    request: Upload,
    body: S,
    timed_out: impl Fn(&E) -> bool,
) -> Result<Firmware, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if request.security_counter.is_some_and(|c| c < 0) {
        return Err(UploadError::Invalid(
            "security_counter",
            "must be zero or more".into(),
        ));
    }
    if let Some(version) = &request.version {
        ensure_new_version(ctx.pool, &request.family, version.as_str()).await?;
    }
    let id = Uuid::now_v7();
    let (digest, size, temp_key) =
        receive(&ctx, body, &id.to_string(), request.limit, timed_out).await?;
    let checked = async {
        let (version, metadata) = check(&ctx, &request, &temp_key, size).await?;
        let security_counter = match request.security_counter {
            Some(counter) => counter,
            None => image_security_counter(&metadata)?,
        };
        Ok((version, metadata, security_counter))
    };
    // A refused image leaves nothing behind.
    let (version, metadata, security_counter) = match checked.await {
        Ok(checked) => checked,
        Err(error) => {
            if let Err(cleanup) = ctx.store.delete(&temp_key).await {
                tracing::warn!(error = format!("{cleanup:#}"), key = %temp_key, "temporary upload left behind");
            }
            return Err(error);
        }
    };
    let storage_key = FirmwareStore::image_key(&digest);
    ctx.store.promote(&temp_key, &storage_key).await?;

    let record = Firmware {
        id,
        family: request.family.as_str().to_owned(),
        version,
        sha256: digest.as_str().to_owned(),
        size: size as i64,
        storage_key,
        metadata: sqlx::types::Json(metadata),
        security_counter,
        downgrade_allowed_by: None,
        downgrade_allowed_at: None,
        downgrade_reason: None,
        created_by: request.actor.clone(),
        created_at: Utc::now(),
    };
    let mut tx = ctx.pool.begin().await?;
    if let Err(error) = super::insert(&mut tx, &record).await {
        return Err(match crate::db::constraint_violation(&error) {
            Some((crate::db::ViolationKind::Unique, _)) => UploadError::Exists(format!(
                "{} firmware {} already exists",
                record.family, record.version
            )),
            _ => error.into(),
        });
    }
    let details = json!({
        "firmware_id": record.id, "family": record.family, "version": record.version,
        "sha256": record.sha256, "size": record.size, "security_counter": record.security_counter,
    });
    outbox::enqueue(
        &mut tx,
        outbox::Event {
            kind: outbox::EventType::FirmwareUploaded,
            aggregate_id: &record.id.to_string(),
            payload: details.clone(),
        },
    )
    .await?;
    crate::audit::record(
        &mut tx,
        &request.actor,
        "firmware.upload",
        "firmware",
        &record.id.to_string(),
        details,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(firmware_id = %record.id, family = %record.family, version = %record.version, size, sha256 = %record.sha256, "firmware uploaded");
    Ok(record)
}

/// Streams the body into the store under a temporary key while hashing it;
/// aborts the upload when the body passes `limit` or breaks off.
async fn receive<S, E>(
    ctx: &Context<'_>,
    mut body: S,
    upload_id: &str,
    limit: u64,
    timed_out: impl Fn(&E) -> bool,
) -> Result<(FirmwareDigest, u64, String), UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut upload = ctx.store.begin_upload(upload_id).await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                upload.abort().await;
                return Err(UploadError::Interrupted {
                    timed_out: timed_out(&error),
                    reason: error.to_string(),
                });
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            upload.abort().await;
            return Err(UploadError::TooLarge { limit });
        }
        ctx.metrics
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

/// Runs the family's `validate-image` on an uploaded image; returns the
/// version to record and the metadata the plugin extracted.
async fn check(
    ctx: &Context<'_>,
    request: &Upload,
    key: &str,
    size: u64,
) -> Result<(String, serde_json::Value), UploadError> {
    if size == 0 {
        return Err(UploadError::Invalid(
            "body",
            "the firmware image is empty".into(),
        ));
    }
    let source: Arc<dyn ImageSource> = Arc::new(StoredImage {
        store: ctx.store.clone(),
        key: key.to_owned(),
        size,
        runtime: tokio::runtime::Handle::current(),
    });
    let info = ctx
        .plugins
        .validate_image(request.family.as_str(), source)
        .await
        .map_err(UploadError::Plugin)?;
    let version = match (&request.version, &info.version) {
        (Some(given), Some(found)) if given.as_str() != found => {
            return Err(UploadError::Invalid(
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
                UploadError::Invalid("version", format!("the image's version '{found}' {}", e.0))
            })?;
            ensure_new_version(ctx.pool, &request.family, parsed.as_str()).await?;
            parsed.as_str().to_owned()
        }
        (None, None) => {
            return Err(UploadError::Invalid(
                "version",
                "is required: the image carries no version the plugin could read".into(),
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

/// The security counter a device plugin read from the image (the detail
/// `security_counter`), 0 when it read none.
fn image_security_counter(metadata: &serde_json::Value) -> Result<i64, UploadError> {
    match metadata["details"][crate::plugins::SECURITY_COUNTER_DETAIL].as_str() {
        None => Ok(0),
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|c| *c >= 0)
            .ok_or_else(|| {
                UploadError::Invalid(
                    "security_counter",
                    format!(
                        "the image's security counter '{text}' is not a whole number from 0 to 9223372036854775807 (2^63 - 1)"
                    ),
                )
            }),
    }
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

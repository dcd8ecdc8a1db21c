//! Blobs in object storage (`file://` or `s3://`), one code path through
//! `object_store`: firmware images, content-addressed (`firmware/<sha256>`),
//! and uploaded plugin components (`plugins/<sha256>.wasm`).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use url::Url;

use crate::domain::FirmwareDigest;

#[derive(Debug, Clone)]
pub struct FirmwareStore {
    inner: Arc<dyn ObjectStore>,
    /// Present when the store can presign URLs (S3).
    s3: Option<Arc<AmazonS3>>,
    prefix: Path,
    /// The store URL without credentials, for logs.
    display: String,
}

impl FirmwareStore {
    /// Opens `file:///dir` (created when missing) or `s3://bucket[/prefix]`.
    /// For S3 the credentials, region and endpoint come from the usual
    /// `AWS_*` variables (`AWS_ENDPOINT_URL` for MinIO and other servers).
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let parsed =
            Url::parse(url).with_context(|| format!("ROLLWAY_STORE '{url}' is not a URL"))?;
        match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| {
                    anyhow::anyhow!("ROLLWAY_STORE '{url}' is not an absolute file URL")
                })?;
                std::fs::create_dir_all(&dir).with_context(|| {
                    format!("creating firmware store directory {}", dir.display())
                })?;
                let local = LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("opening firmware store {}", dir.display()))?;
                Ok(Self {
                    inner: Arc::new(local),
                    s3: None,
                    prefix: Path::default(),
                    display: url.to_owned(),
                })
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .with_context(|| format!("ROLLWAY_STORE '{url}' names no bucket"))?;
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok();
                if let Some(endpoint) = &endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    builder = builder.with_region("us-east-1");
                }
                let s3 = Arc::new(
                    builder
                        .build()
                        .context("configuring the S3 firmware store")?,
                );
                Ok(Self {
                    inner: s3.clone(),
                    s3: Some(s3),
                    prefix: Path::from(parsed.path().trim_matches('/')),
                    display: format!("s3://{bucket}{}", parsed.path()),
                })
            }
            other => {
                bail!("ROLLWAY_STORE scheme '{other}' is not supported (use file:// or s3://)")
            }
        }
    }

    pub fn is_s3(&self) -> bool {
        self.s3.is_some()
    }

    pub fn describe(&self) -> &str {
        &self.display
    }

    fn key(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/') {
            path = path.join(part);
        }
        path
    }

    /// The permanent key of an image.
    pub fn image_key(digest: &FirmwareDigest) -> String {
        format!("firmware/{digest}")
    }

    /// Starts a streamed upload under a temporary key.
    pub async fn begin_upload(&self, upload_id: &str) -> anyhow::Result<Upload> {
        let key = format!("uploads/{upload_id}");
        let multipart = self
            .inner
            .put_multipart(&self.key(&key))
            .await
            .context("starting the firmware upload")?;
        Ok(Upload {
            key,
            writer: WriteMultipart::new_with_chunk_size(multipart, 8 * 1024 * 1024),
        })
    }

    /// Moves a finished upload to its permanent key (idempotent: the same
    /// bytes always land on the same key).
    pub async fn promote(&self, temp_key: &str, final_key: &str) -> anyhow::Result<()> {
        self.inner
            .rename(&self.key(temp_key), &self.key(final_key))
            .await
            .with_context(|| format!("storing firmware under {final_key}"))
    }

    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self.inner.delete(&self.key(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {key}")),
        }
    }

    /// Stores a small object whole (plugin components).
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.inner
            .put(&self.key(key), bytes.into())
            .await
            .with_context(|| format!("storing {key}"))?;
        Ok(())
    }

    /// Reads a small object whole.
    pub async fn read_all(&self, key: &str) -> anyhow::Result<Bytes> {
        let result = self
            .inner
            .get(&self.key(key))
            .await
            .with_context(|| format!("reading {key}"))?;
        result
            .bytes()
            .await
            .with_context(|| format!("reading {key}"))
    }

    /// Reads a byte range (for plugins validating an image).
    pub async fn read_range(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.inner
            .get_range(&self.key(key), range)
            .await
            .with_context(|| format!("reading {key}"))
    }

    /// Streams an object, whole or a byte range.
    pub async fn stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> anyhow::Result<BoxStream<'static, object_store::Result<Bytes>>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self
            .inner
            .get_opts(&self.key(key), options)
            .await
            .with_context(|| format!("reading {key}"))?;
        Ok(result.into_stream())
    }

    /// A presigned GET URL, when the store is S3.
    pub async fn presigned_get(&self, key: &str, ttl: Duration) -> anyhow::Result<Option<Url>> {
        let Some(s3) = &self.s3 else {
            return Ok(None);
        };
        let url = s3
            .signed_url(http::Method::GET, &self.key(key), ttl)
            .await
            .context("presigning a firmware URL")?;
        Ok(Some(url))
    }

    /// Checks that the store answers (for `/readyz` and at start).
    pub async fn check(&self) -> anyhow::Result<()> {
        match self.inner.head(&self.key("rollway-readiness-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("firmware store {} is not reachable", self.display))
            }
        }
    }
}

/// A streamed upload in progress.
pub struct Upload {
    pub key: String,
    writer: WriteMultipart,
}

impl Upload {
    pub async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        // Bounded buffering: wait while more than a few parts are in flight.
        self.writer
            .wait_for_capacity(4)
            .await
            .context("uploading firmware part")?;
        self.writer.put(chunk);
        Ok(())
    }

    pub async fn finish(self) -> anyhow::Result<()> {
        self.writer
            .finish()
            .await
            .context("completing the firmware upload")?;
        Ok(())
    }

    pub async fn abort(self) {
        if let Err(error) = self.writer.abort().await {
            tracing::warn!(%error, "aborting a firmware upload");
        }
    }
}

//! The ed25519 keys that sign update manifests and download tokens, kept in
//! PostgreSQL so that every replica signs with the same key. The first start
//! creates one; an admin rotates it (`POST /api/v1/signing-keys/rotate`).
//!
//! Rotation: the new key becomes the signing key and is *endorsed* by the
//! one it replaces (the new public key signed with the old private key), so
//! a device that trusts the old key can accept the new one from the
//! published list without another channel. The old key stays published
//! and trusted until an admin retires it, so commands signed before the
//! rotation still verify.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::RngCore as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;

/// How long a replica signs with the key it loaded before it looks again
/// (another replica may have rotated it).
const REFRESH_AFTER: Duration = Duration::from_secs(10);

/// The key that signs, with its id.
#[derive(Clone)]
pub struct ManifestSigner {
    pub key_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ManifestSigner {
    /// Signs bytes; the signature is base64.
    pub fn sign(&self, message: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.sign(message).to_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

/// A published verification key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicKey {
    /// Key id carried in every signed command.
    pub id: String,
    pub algorithm: &'static str,
    /// The 32-byte ed25519 public key, base64.
    pub public_key: String,
    /// Whether this key signs new manifests.
    pub active: bool,
    /// The key this one replaced, which endorsed it.
    pub endorsed_by: Option<String>,
    /// This key's 32 public bytes signed by `endorsed_by`, base64.
    pub endorsement: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A key id: the first 8 bytes of the public key's SHA-256, hex.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no signing key {0}")]
    NotFound(String),
    #[error("key {0} signs new manifests; rotate it before retiring it")]
    Active(String),
    #[error("another rotation ran at the same time; try again")]
    Raced,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Corrupt(String),
}

struct Loaded {
    signer: ManifestSigner,
    /// The keys download tokens may be signed with: every key not retired.
    trusted: Vec<VerifyingKey>,
    at: Instant,
}

/// This replica's view of the keys: the signing key and the trusted ones,
/// reloaded every few seconds. The lock is never held across a query.
#[derive(Clone)]
pub struct Keyring {
    pool: PgPool,
    loaded: Arc<RwLock<Arc<Loaded>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("signer", &self.snapshot().signer)
            .finish_non_exhaustive()
    }
}

fn random_key() -> SigningKey {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    SigningKey::from_bytes(&secret)
}

impl Keyring {
    /// Loads the keys, creating the first signing key if there is none.
    /// Concurrent first starts agree on one key: at most one key is active
    /// (a unique index) and the insert gives way to another's.
    pub async fn load_or_create(pool: &PgPool) -> anyhow::Result<Self> {
        if load(pool).await?.is_none() {
            let key = random_key();
            let public = key.verifying_key();
            sqlx::query(
                "INSERT INTO signing_keys (id, public_key, private_key)
                 SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE active)
                 ON CONFLICT DO NOTHING",
            )
            .bind(key_id(&public))
            .bind(public.as_bytes().as_slice())
            .bind(key.to_bytes().as_slice())
            .execute(pool)
            .await?;
        }
        let loaded = load(pool)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no active signing key after creating one"))?;
        Ok(Self {
            pool: pool.clone(),
            loaded: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    /// Like [`Keyring::load_or_create`], with the signing key given by the
    /// operator (`ROLLWAY_SIGNING_KEY_FILE`): a key not known yet becomes
    /// the signing key (endorsed by the one it replaces, as a rotation);
    /// the signing key already is left alone; a key rotated away or
    /// retired is refused, so a stale file cannot bring it back.
    pub async fn load_with_file(pool: &PgPool, path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read(path)
            .with_context(|| format!("reading ROLLWAY_SIGNING_KEY_FILE {}", path.display()))?;
        let key = parse_key_file(&text)
            .with_context(|| format!("ROLLWAY_SIGNING_KEY_FILE {}", path.display()))?;
        let id = key_id(&key.verifying_key());
        for _ in 0..3 {
            let known: Option<(bool, bool)> = sqlx::query_as(
                "SELECT active, retired_at IS NOT NULL FROM signing_keys WHERE id = $1",
            )
            .bind(&id)
            .fetch_optional(pool)
            .await?;
            match known {
                Some((true, _)) => return Self::load_or_create(pool).await,
                Some((false, retired)) => anyhow::bail!(
                    "ROLLWAY_SIGNING_KEY_FILE holds key {id}, which was {}; give the current key or none",
                    if retired { "retired" } else { "rotated away" }
                ),
                None => {}
            }
            let mut tx = pool.begin().await?;
            let has_active: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys WHERE active)")
                    .fetch_one(&mut *tx)
                    .await?;
            let imported = if has_active {
                replace_active(&mut tx, key.clone()).await.map(|_| ())
            } else {
                let public = key.verifying_key();
                sqlx::query(
                    "INSERT INTO signing_keys (id, public_key, private_key) VALUES ($1, $2, $3)",
                )
                .bind(&id)
                .bind(public.as_bytes().as_slice())
                .bind(key.to_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .map(|_| ())
                .map_err(KeyError::Db)
            };
            match imported {
                Ok(()) => {
                    tx.commit().await?;
                    tracing::warn!(key_id = %id, "signing key imported from ROLLWAY_SIGNING_KEY_FILE");
                    return Self::load_or_create(pool).await;
                }
                // Another replica imported or rotated at the same time: look again.
                Err(KeyError::Raced) => continue,
                Err(KeyError::Db(error)) if crate::db::constraint_violation(&error).is_some() => {
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        }
        anyhow::bail!("could not import the signing key: the keys kept changing")
    }

    fn snapshot(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, loaded: Loaded) {
        let mut guard = match self.loaded.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(loaded);
    }

    /// Reloads the keys from the database now.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        if let Some(loaded) = load(&self.pool).await? {
            self.store(loaded);
        }
        Ok(())
    }

    /// The signing key, reloaded first when the one held is a few seconds
    /// old. A failed reload keeps the held key (and is logged).
    pub async fn signer(&self) -> ManifestSigner {
        let held = self.snapshot();
        if held.at.elapsed() >= REFRESH_AFTER
            && let Err(error) = self.refresh().await
        {
            tracing::warn!(error = format!("{error:#}"), "reloading the signing keys");
        }
        self.snapshot().signer.clone()
    }

    /// The id of the key that signs now (as last loaded).
    pub fn signing_key_id(&self) -> String {
        self.snapshot().signer.key_id.clone()
    }

    /// Whether `signature` over `message` is by a trusted key.
    pub fn verify(&self, message: &[u8], signature: &ed25519_dalek::Signature) -> bool {
        self.snapshot()
            .trusted
            .iter()
            .any(|key| key.verify_strict(message, signature).is_ok())
    }

    /// Makes a new key the signing key, endorsed by the current one.
    /// Returns the new key.
    pub async fn rotate(&self, conn: &mut sqlx::PgConnection) -> Result<PublicKey, KeyError> {
        replace_active(conn, random_key()).await
    }

    /// Stops publishing and trusting a key that no longer signs.
    pub async fn retire(&self, conn: &mut sqlx::PgConnection, id: &str) -> Result<(), KeyError> {
        let active: Option<bool> = sqlx::query_scalar(
            "SELECT active FROM signing_keys WHERE id = $1 AND retired_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        match active {
            None => Err(KeyError::NotFound(id.to_owned())),
            Some(true) => Err(KeyError::Active(id.to_owned())),
            Some(false) => {
                sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
        }
    }
}

/// Makes `key` the signing key in `conn`'s transaction, endorsed by the
/// key that signed until now.
async fn replace_active(
    conn: &mut sqlx::PgConnection,
    key: SigningKey,
) -> Result<PublicKey, KeyError> {
    let current: Option<(String, Vec<u8>)> =
        sqlx::query_as("SELECT id, private_key FROM signing_keys WHERE active FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await?;
    let (old_id, old_private) = current.ok_or(KeyError::Raced)?;
    let old = signing_key(&old_id, old_private)?;
    let public = key.verifying_key();
    let endorsement = old.sign(public.as_bytes()).to_bytes();
    sqlx::query("UPDATE signing_keys SET active = false WHERE id = $1")
        .bind(&old_id)
        .execute(&mut *conn)
        .await?;
    let (id, created_at): (String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO signing_keys (id, public_key, private_key, endorsed_by, endorsement)
         VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at",
    )
    .bind(key_id(&public))
    .bind(public.as_bytes().as_slice())
    .bind(key.to_bytes().as_slice())
    .bind(&old_id)
    .bind(endorsement.as_slice())
    .fetch_one(&mut *conn)
    .await?;
    Ok(PublicKey {
        id,
        algorithm: "ed25519",
        public_key: base64::engine::general_purpose::STANDARD.encode(public.as_bytes()),
        active: true,
        endorsed_by: Some(old_id),
        endorsement: Some(base64::engine::general_purpose::STANDARD.encode(endorsement)),
        created_at,
    })
}

/// An ed25519 secret key file: its 32 raw bytes, or those bytes as hex or
/// base64 text (e.g. `openssl rand -hex 32`).
fn parse_key_file(content: &[u8]) -> anyhow::Result<SigningKey> {
    // Text first: 32 random bytes are never all hex or base64 characters
    // in practice, while a 32-character text could pass for raw bytes.
    let text = std::str::from_utf8(content).ok().map(str::trim);
    let decoded = text.and_then(|text| {
        hex::decode(text)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
    });
    let bytes = match decoded {
        Some(bytes) => bytes,
        None if content.len() == 32 => content.to_vec(),
        None => anyhow::bail!("holds neither 32 raw bytes nor hex or base64 text"),
    };
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("does not hold a 32-byte ed25519 secret key"))?;
    Ok(SigningKey::from_bytes(&secret))
}

fn signing_key(id: &str, private: Vec<u8>) -> Result<SigningKey, KeyError> {
    let secret: [u8; 32] = private
        .try_into()
        .map_err(|_| KeyError::Corrupt(format!("signing key {id} is not 32 bytes")))?;
    Ok(SigningKey::from_bytes(&secret))
}

async fn load(pool: &PgPool) -> anyhow::Result<Option<Loaded>> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT id, public_key, private_key, active FROM signing_keys
         WHERE retired_at IS NULL ORDER BY created_at DESC, id",
    )
    .fetch_all(pool)
    .await?;
    let mut signer = None;
    let mut trusted = Vec::with_capacity(rows.len());
    for (id, public, private, active) in rows {
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| anyhow::anyhow!("public key {id} is not 32 bytes"))?;
        trusted.push(VerifyingKey::from_bytes(&public)?);
        if active {
            signer = Some(ManifestSigner {
                key: signing_key(&id, private)?,
                key_id: id,
            });
        }
    }
    Ok(signer.map(|signer| Loaded {
        signer,
        trusted,
        at: Instant::now(),
    }))
}

/// Every published key (all but the retired), newest first.
pub async fn public_keys(pool: &PgPool) -> Result<Vec<PublicKey>, sqlx::Error> {
    type Row = (
        String,
        Vec<u8>,
        bool,
        Option<String>,
        Option<Vec<u8>>,
        chrono::DateTime<chrono::Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, public_key, active, endorsed_by, endorsement, created_at FROM signing_keys
         WHERE retired_at IS NULL ORDER BY created_at DESC, id",
    )
    .fetch_all(pool)
    .await?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(rows
        .into_iter()
        .map(
            |(id, public, active, endorsed_by, endorsement, created_at)| PublicKey {
                id,
                algorithm: "ed25519",
                public_key: b64(&public),
                active,
                endorsed_by,
                endorsement: endorsement.as_deref().map(b64),
                created_at,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_hold_raw_hex_or_base64_secrets() {
        let secret = [7u8; 32];
        let expected = SigningKey::from_bytes(&secret).verifying_key();
        let hex_text = format!("{}\n", hex::encode(secret));
        let base64_text = base64::engine::general_purpose::STANDARD.encode(secret);
        for content in [&secret[..], hex_text.as_bytes(), base64_text.as_bytes()] {
            let key = parse_key_file(content).unwrap();
            assert_eq!(key.verifying_key(), expected);
        }
        assert!(parse_key_file(b"too short").is_err());
        assert!(parse_key_file(&[0xff; 31]).is_err());
        assert!(parse_key_file(b"  \n").is_err());
        assert!(parse_key_file(hex::encode([1u8; 16]).as_bytes()).is_err());
    }
}

//! The ed25519 keys that sign update manifests, kept in PostgreSQL so that
//! every replica signs with the same key. The first start creates one.

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::RngCore as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;

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
    pub created_at: chrono::DateTime<chrono::Utc>,
}

fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

impl ManifestSigner {
    /// The newest active key, created if there is none. Concurrent first
    /// starts agree on one key: the insert is idempotent on the id and the
    /// newest row wins.
    pub async fn load_or_create(pool: &PgPool) -> anyhow::Result<Self> {
        if let Some(signer) = Self::load(pool).await? {
            return Ok(signer);
        }
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = SigningKey::from_bytes(&secret);
        let public = key.verifying_key();
        sqlx::query(
            "INSERT INTO signing_keys (id, public_key, private_key)
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE active)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(key_id(&public))
        .bind(public.as_bytes().as_slice())
        .bind(secret.as_slice())
        .execute(pool)
        .await?;
        Self::load(pool)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no active signing key after creating one"))
    }

    async fn load(pool: &PgPool) -> anyhow::Result<Option<Self>> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, private_key FROM signing_keys WHERE active ORDER BY created_at DESC, id LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        let Some((id, private)) = row else {
            return Ok(None);
        };
        let secret: [u8; 32] = private
            .try_into()
            .map_err(|_| anyhow::anyhow!("signing key {id} is not 32 bytes"))?;
        Ok(Some(Self {
            key_id: id,
            key: SigningKey::from_bytes(&secret),
        }))
    }

    /// Signs bytes; the signature is base64.
    pub fn sign(&self, message: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.sign(message).to_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

/// Every published key, newest first.
pub async fn public_keys(pool: &PgPool) -> Result<Vec<PublicKey>, sqlx::Error> {
    let rows: Vec<(String, Vec<u8>, bool, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, public_key, active, created_at FROM signing_keys ORDER BY created_at DESC, id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, public, active, created_at)| PublicKey {
            id,
            algorithm: "ed25519",
            public_key: base64::engine::general_purpose::STANDARD.encode(public),
            active,
            created_at,
        })
        .collect())
}

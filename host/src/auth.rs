//! API tokens: bearer secrets of the form `rw_<43 base64url chars>`, stored
//! only as their SHA-256. Tokens are random 256-bit values, so a plain hash
//! (not a password KDF) is the right tool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::Role;

const PREFIX: &str = "rw_";

/// Who is calling: the token's id, name and role.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    pub name: String,
    pub role: Role,
    /// When the token stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Principal {
    /// How the principal appears in the audit log and in `created_by`.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }
}

pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Resolves a bearer secret to its principal, if the token exists, is not
/// revoked and has not expired.
pub async fn authenticate(pool: &PgPool, secret: &str) -> Result<Option<Principal>, sqlx::Error> {
    let row: Option<(Uuid, String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, name, role, expires_at FROM api_tokens
         WHERE token_hash = $1 AND revoked_at IS NULL
           AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(hash_secret(secret))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(token_id, name, role, expires_at)| {
        Some(Principal {
            token_id,
            name,
            role: Role::parse(&role).ok()?,
            expires_at,
        })
    }))
}

/// Whether a token still works: not revoked and not expired. Long-lived
/// responses (the event stream) ask again while they run.
pub async fn still_valid(pool: &PgPool, token_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE id = $1 AND revoked_at IS NULL
                          AND (expires_at IS NULL OR expires_at > now()))",
    )
    .bind(token_id)
    .fetch_one(pool)
    .await
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a token and returns its record and the secret, shown once.
pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    role: Role,
    created_by: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(TokenRecord, String), sqlx::Error> {
    let secret = generate_secret();
    let record = sqlx::query_as::<_, TokenRecord>(
        "INSERT INTO api_tokens (id, name, role, token_hash, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, name, role, created_by, created_at, expires_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(role.as_str())
    .bind(hash_secret(&secret))
    .bind(created_by)
    .bind(expires_at)
    .fetch_one(conn)
    .await?;
    Ok((record, secret))
}

/// Makes sure an admin token with exactly this secret exists and is usable.
pub async fn ensure_bootstrap(pool: &PgPool, secret: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_tokens (id, name, role, token_hash, created_by)
         VALUES ($1, 'bootstrap', 'admin', $2, 'system')
         ON CONFLICT (token_hash) DO UPDATE
           SET role = 'admin', revoked_at = NULL, expires_at = NULL",
    )
    .bind(Uuid::now_v7())
    .bind(hash_secret(secret))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, role, created_by, created_at, expires_at, revoked_at
         FROM api_tokens ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
}

/// Revokes a token; `None` when there is no such token.
pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<Option<TokenRecord>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
         RETURNING id, name, role, created_by, created_at, expires_at, revoked_at",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Counts failed authentications per client address in fixed one-minute
/// windows; an address past the limit is refused (429) until its window
/// ends, valid token or not, so that guessing tokens is slow. Per replica
/// and in memory: behind a load balancer, the limit applies per replica.
#[derive(Debug, Clone)]
pub struct FailureLimiter {
    limit: u32,
    windows: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl FailureLimiter {
    /// `limit` failures per window; 0 disables the limit.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: Arc::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<IpAddr, (Instant, u32)>) -> T) -> T {
        let mut guard = match self.windows.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// When `address` may try again, if it is refused now.
    pub fn refused(&self, address: IpAddr) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        self.with(|windows| {
            let (started, failures) = *windows.get(&address)?;
            let elapsed = started.elapsed();
            (elapsed < FAILURE_WINDOW && failures >= self.limit)
                .then(|| FAILURE_WINDOW.saturating_sub(elapsed))
        })
    }

    /// Records a failure of `address`.
    pub fn failed(&self, address: IpAddr) {
        if self.limit == 0 {
            return;
        }
        self.with(|windows| {
            let now = Instant::now();
            // Forget windows that ended, so the map stays as small as the
            // set of addresses failing right now.
            if windows.len() > 10_000 {
                windows.retain(|_, (started, _)| started.elapsed() < FAILURE_WINDOW);
            }
            let entry = windows.entry(address).or_insert((now, 0));
            if entry.0.elapsed() >= FAILURE_WINDOW {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_prefixed() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.starts_with("rw_") && a.len() == 3 + 43);
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}

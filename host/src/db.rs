//! PostgreSQL connection pool and migrations.

use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub async fn connect(url: &SecretString, pool_size: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url
        .expose_secret()
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let options = without_jit(options);
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    Ok(pool)
}

/// Turns PostgreSQL's JIT compilation off for Rollway's sessions, unless
/// the URL's `options` say otherwise. Rollway's statements are short; the
/// planner's estimates for its set-based statements over large tables
/// pass `jit_above_cost` nonetheless, and compiling them cost a quarter of
/// PostgreSQL's CPU time while dispatching (BENCHMARKS.md, item 21).
pub fn without_jit(options: PgConnectOptions) -> PgConnectOptions {
    if options.get_options().is_some_and(|o| o.contains("jit")) {
        return options;
    }
    options.options([("jit", "off")])
}

/// The advisory lock that keeps the set of devices still while a job's
/// executions are created from it: job creation holds it shared, device
/// deletion exclusive (executions carry no foreign key to devices; see the
/// migration `bulk_job_creation`).
pub const DEVICE_SET_LOCK: i64 = 0x526f_6c6c_7761_7944; // "RollwayD"

/// Applies pending migrations. Safe with several replicas starting at once:
/// sqlx serialises them with an advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}

/// Maps a unique or foreign-key violation to its constraint name, so that
/// callers can turn it into a 409 or 422 where it happens.
/// Errors that go away when the transaction is tried again: a deadlock, a
/// serialization failure, a lock not available, a lost connection.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40P01" | "40001" | "55P03"))
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

pub fn constraint_violation(error: &sqlx::Error) -> Option<(ViolationKind, String)> {
    let db = error.as_database_error()?;
    let kind = match db.code()?.as_ref() {
        "23505" => ViolationKind::Unique,
        "23503" => ViolationKind::ForeignKey,
        "23514" => ViolationKind::Check,
        _ => return None,
    };
    Some((kind, db.constraint().unwrap_or_default().to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    Unique,
    ForeignKey,
    Check,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_of(url: &str) -> String {
        let options: PgConnectOptions = url.parse().unwrap();
        without_jit(options).get_options().unwrap_or("").to_owned()
    }

    #[test]
    fn jit_is_off_unless_the_url_says_otherwise() {
        assert!(options_of("postgres://rollway@db/rollway").contains("jit=off"));
        let kept = options_of("postgres://rollway@db/rollway?options=-c%20jit%3Don");
        assert!(
            kept.contains("jit=on") && !kept.contains("jit=off"),
            "{kept}"
        );
        let other = options_of("postgres://rollway@db/rollway?options=-c%20work_mem%3D64MB");
        assert!(
            other.contains("work_mem=64MB") && other.contains("jit=off"),
            "{other}"
        );
    }
}

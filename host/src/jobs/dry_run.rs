//! Dry runs of a job's rollout (see `plugins::dry_run` for the engine):
//! the fleet of an existing job, or of a job not created yet, and the
//! strategy run over it on a thread of its own.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Prepared, SubmitError, create_prepared};
use crate::plugins::dry_run::{FleetDevice, FleetGroup, Outlook, Timeline, run};
use crate::plugins::{PluginError, Plugins};

/// The fleet a job would have: the request planned as `POST /jobs` plans
/// it (its devices selected, counted and grouped by its strategy), in a
/// transaction that is rolled back. Groups are filled in a pseudo-random
/// order seeded by the job's id, so the job created later has groups of
/// the same sizes, not of the same devices.
pub async fn planned_fleet(
    pool: &PgPool,
    plugins: &Plugins,
    prepared: &Prepared,
) -> Result<Vec<FleetGroup>, SubmitError> {
    let mut tx = pool.begin().await?;
    let (job, _) = create_prepared(&mut tx, plugins, prepared).await?;
    let fleet = job_fleet(&mut tx, job.id).await?.unwrap_or_default();
    tx.rollback().await?;
    Ok(fleet)
}

/// Runs the rollout plugin `name` at version `sha256` with `config` over
/// `fleet` (see [`run`]) on a thread of its own; the strategy sees the job
/// start now.
pub async fn simulate(
    plugins: &Plugins,
    name: &str,
    sha256: Option<&str>,
    config: &str,
    fleet: Vec<FleetGroup>,
    outlook: Outlook,
) -> Result<Timeline, PluginError> {
    let decide = plugins.decider(name, sha256, config)?;
    let start = chrono::Utc::now().timestamp_millis().max(0) as u64;
    tokio::task::spawn_blocking(move || run(&fleet, &outlook, start, decide))
        .await
        .map_err(|e| PluginError::Failed {
            plugin: name.to_owned(),
            what: format!("the dry run's thread failed: {e}"),
        })
}

/// A job's plan as its fleet: its groups, and their devices in the order
/// the dispatcher takes them (execution ids). `None` when the job has no
/// plan (created by an earlier Rollway, planned when it starts).
pub async fn job_fleet(
    conn: &mut PgConnection,
    job_id: Uuid,
) -> Result<Option<Vec<FleetGroup>>, sqlx::Error> {
    let groups: Vec<(i32, Option<String>, Option<i32>)> = sqlx::query_as(
        "SELECT batch_group, label, spread_limit FROM job_batches
         WHERE job_id = $1 ORDER BY batch_group",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    if groups.is_empty() {
        return Ok(None);
    }
    let index: HashMap<i32, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, (group, ..))| (*group, i))
        .collect();
    let mut fleet: Vec<FleetGroup> = groups
        .into_iter()
        .map(|(_, label, limit)| FleetGroup {
            label: label.unwrap_or_default(),
            devices: Vec::new(),
            spread_limit: limit.map(|l| l.max(0) as u32),
        })
        .collect();
    let devices: Vec<(Option<i32>, String, Option<String>)> = sqlx::query_as(
        "SELECT e.batch_group, e.device_id,
                CASE WHEN b.spread_key IS NOT NULL THEN d.tags ->> b.spread_key END
         FROM executions e
         LEFT JOIN job_batches b ON b.job_id = e.job_id AND b.batch_group = e.batch_group
         LEFT JOIN devices d ON d.id = e.device_id
         WHERE e.job_id = $1 ORDER BY e.id",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    for (group, id, spread) in devices {
        let Some(&i) = group.and_then(|g| index.get(&g)) else {
            return Ok(None);
        };
        fleet[i].devices.push(FleetDevice { id, spread });
    }
    fleet.retain(|g| !g.devices.is_empty());
    Ok(Some(fleet))
}

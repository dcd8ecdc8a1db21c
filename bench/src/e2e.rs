//! Benchmark 5, end to end: a simulated ESP32 fleet updated through the
//! whole pipeline (scheduler, rollout plugin, dispatcher, signed manifests,
//! resumable downloads from the host, statuses, ingestion), timed from the
//! job's creation to its completion.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rollway::sim::{SimOptions, Simulator};
use serde_json::json;

use crate::Sizes;
use crate::host::{self, Env, Host};
use crate::report::{self, Report, Row};

pub async fn run(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let name = "e2e";
    let devices = sizes.e2e_devices;
    eprintln!("== e2e: {devices} simulated devices");
    let database = env.fresh_database().await?;
    let prefix = host::topic_prefix("e2e");
    let host = Host::start(env, &database, "e2e", &prefix, true).await?;
    let pool = database.pool(2).await?;
    let firmware = host.upload_esp32("1.0.0-bench").await?;
    let registering = Instant::now();
    let simulator = Simulator::start(SimOptions {
        families: vec!["esp32".into()],
        step: Duration::ZERO,
        interruptions: 0.0,
        topic_prefix: prefix.clone(),
        // The update alone, comparable with earlier runs: the fleet's
        // announcements on connection are measured on their own.
        presence: false,
        ..SimOptions::new(&host.base, &host.token, &env.mqtt_url, devices)
    })
    .await
    .context("starting the simulated fleet")?;
    eprintln!(
        "   fleet registered through the API and connected in {}",
        report::seconds(registering.elapsed().as_secs_f64())
    );
    // The default rollout: rollout-percent with 10 %, 50 %, 100 % batches,
    // each released once 95 % of the one before succeeded.
    let request = json!({
        "name": "benchmark e2e",
        "firmware_id": firmware,
        "targets": { "filter": { "tags": { "fleet": "simulated" } } },
        "start": "now",
    });
    let started = Instant::now();
    let outcome = async {
        let job = host.create_job(&request).await?;
        host::wait_job_status(
            &pool,
            job,
            "completed",
            Duration::from_secs(if sizes.full { 1200 } else { 300 }),
            Duration::from_millis(100),
        )
        .await?;
        anyhow::Ok(job)
    }
    .await;
    let wall = started.elapsed();
    let truth = simulator.truth.snapshot();
    simulator.stop().await;
    let job = outcome?;

    let (total, done): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM executions WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(&pool)
    .await?;
    let updated = truth.values().filter(|t| t.state == "done").count();
    if total != i64::from(devices) || done != total || updated != devices as usize {
        bail!(
            "e2e: {done} of {total} executions done and {updated} of {devices} devices updated, expected all {devices}"
        );
    }
    pool.close().await;
    host.stop().await?;
    eprintln!(
        "   {devices} devices updated in {}",
        report::seconds(wall.as_secs_f64())
    );
    report.detail(
        name,
        "run",
        json!({ "devices": devices, "wall_s": wall.as_secs_f64(), "firmware_bytes": 64 * 1024 }),
    );
    report.push(Row {
        benchmark: format!(
            "e2e: {} simulated devices updated",
            report::thousands(f64::from(devices))
        ),
        figure: report::seconds(wall.as_secs_f64()),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "< 60 s".into(),
        met: Some(wall < Duration::from_secs(60)),
    });
    Ok(())
}

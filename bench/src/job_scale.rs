//! Benchmark 3, the scale of one job: creating and planning a job over a
//! million registered devices, and the host's peak memory meanwhile.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::Sizes;
use crate::host::{self, Env, Host};
use crate::report::{self, Report, Row};

pub async fn run(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let name = "job-scale";
    let devices = sizes.job_devices;
    eprintln!("== job-scale: a job over {devices} devices");
    let database = env.fresh_database().await?;
    // Without MQTT_URL the host plans jobs and sends nothing.
    let host = Host::start(
        env,
        &database,
        "job-scale",
        &host::topic_prefix("job-scale"),
        false,
    )
    .await?;
    let pool = database.pool(2).await?;
    let firmware = host.upload_esp32("1.0.0-bench").await?;
    let seeded = host::seed_devices(&pool, "BENCH-", devices, "bench").await?;
    eprintln!(
        "   {devices} devices registered with SQL in {}",
        report::seconds(seeded.as_secs_f64())
    );
    let rss_before = host.peak_rss_bytes()?;
    let rollout = json!({ "plugin": "rollout-percent", "config": { "batches": [1, 10, 50, 100] } });
    let started = Instant::now();
    let job = host
        .create_job(&host::job_request(&firmware, "bench", Some(rollout), None))
        .await?;
    let created = started.elapsed();
    host::wait_job_status(
        &pool,
        job,
        "running",
        Duration::from_secs(900),
        Duration::from_millis(50),
    )
    .await?;
    let wall = started.elapsed();
    let rss = host.peak_rss_bytes()?;

    // Planned: every execution in a batch group, the groups recorded.
    let (executions, unplanned): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE batch_group IS NULL) FROM executions WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(&pool)
    .await?;
    let (groups, planned): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(size)::bigint FROM job_batches WHERE job_id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await?;
    if executions != i64::from(devices) || unplanned != 0 {
        bail!(
            "job-scale: {executions} executions, {unplanned} without a batch group, for {devices} devices"
        );
    }
    if groups != 4 || planned != Some(i64::from(devices)) {
        bail!(
            "job-scale: {groups} batch groups planning {} devices, expected 4 for {devices}",
            planned.unwrap_or_default()
        );
    }

    // The same fleet planned by attributes: rings by a tag, spread over
    // sites (WIT 0.1.8). The host counts the devices by attribute, the
    // strategy answers groups, and the host fills them in SQL.
    let rings = json!({ "plugin": "rollout-rings", "config": {
        "rings": ["internal", "0", "1"], "max_per_site": 50 } });
    let started = Instant::now();
    let by_rings = host
        .create_job(&host::job_request(&firmware, "bench", Some(rings), None))
        .await?;
    host::wait_job_status(
        &pool,
        by_rings,
        "running",
        Duration::from_secs(900),
        Duration::from_millis(50),
    )
    .await?;
    let rings_wall = started.elapsed();
    let rss = rss.max(host.peak_rss_bytes()?);
    let sizes: Vec<(Option<String>, i32)> = sqlx::query_as(
        "SELECT label, size FROM job_batches WHERE job_id = $1 ORDER BY batch_group",
    )
    .bind(by_rings)
    .fetch_all(&pool)
    .await?;
    let expected = [
        ("ring internal", devices.div_ceil(100)),
        ("ring 0", devices.div_ceil(10) - devices.div_ceil(100)),
        ("ring 1", devices - devices.div_ceil(10)),
    ];
    let matches = sizes.len() == 3
        && sizes
            .iter()
            .zip(expected)
            .all(|((label, size), (l, s))| label.as_deref() == Some(l) && *size as u32 == s);
    if !matches {
        bail!("job-scale: the rings job planned {sizes:?}, expected {expected:?}");
    }
    pool.close().await;
    host.stop().await?;

    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "   created in {}, running in {}; host peak RSS {:.0} MB (before the job {:.0} MB)",
        report::seconds(created.as_secs_f64()),
        report::seconds(wall.as_secs_f64()),
        mb(rss),
        mb(rss_before)
    );
    report.detail(
        name,
        "job",
        json!({
            "devices": devices,
            "create_request_s": created.as_secs_f64(),
            "create_and_plan_s": wall.as_secs_f64(),
            "create_and_plan_by_attributes_s": rings_wall.as_secs_f64(),
            "peak_rss_bytes": rss,
            "peak_rss_before_job_bytes": rss_before,
            "seed_s": seeded.as_secs_f64(),
        }),
    );
    let label = report::thousands(f64::from(devices));
    report.push(Row {
        benchmark: format!("job-scale: create + plan {label} devices"),
        figure: report::seconds(wall.as_secs_f64()),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "< 30 s".into(),
        met: Some(wall < Duration::from_secs(30)),
    });
    report.push(Row {
        benchmark: format!("job-scale: create + plan {label} devices by attributes (rings)"),
        figure: report::seconds(rings_wall.as_secs_f64()),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "< 30 s".into(),
        met: Some(rings_wall < Duration::from_secs(30)),
    });
    report.push(Row {
        benchmark: format!("job-scale: host peak RSS ({label} devices)"),
        figure: format!("{:.0} MB", mb(rss)),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "< 300 MB".into(),
        met: Some(mb(rss) < 300.0),
    });
    Ok(())
}

//! Benchmark 1, status ingestion: device statuses through the real MQTT
//! broker into PostgreSQL with every exactly-once rule (dedupe, state
//! machine, versioned updates, an outbox row per change).
//!
//! Measured in one run, each on a fresh database and topic prefix:
//! - the broker's raw QoS 1 rate: the same load generator, a subscriber
//!   that only receives;
//! - pgbench: a single-row UPDATE like a status's, and a status's whole
//!   write set, one transaction each;
//! - the host: statuses/s with a bounded backlog, then publish→commit
//!   latency at a fixed share of that rate;
//! - the naive design: the host's logic for one message, one transaction
//!   per message, acked after its commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rumqttc::Publish;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Sizes;
use crate::host::{self, Database, Env, Host};
use crate::mqtt::{self, LinkOptions, Message, Pace};
use crate::report::{self, Report, Row};

/// The statuses a device sends during one update, in order (as the
/// simulator does without faults).
const STEPS: [(&str, Option<u8>); 5] = [
    ("init", None),
    ("downloading", Some(50)),
    ("flashing", None),
    ("rebooting", None),
    ("done", None),
];
/// State changes written per execution: dispatched → init → downloading
/// → flashing → rebooting → done.
const CHANGES: i64 = STEPS.len() as i64;
/// No progress for this long is a failure.
const STALL: Duration = Duration::from_secs(60);
/// How often the commit observer reads new log rows.
const OBSERVE_EVERY: Duration = Duration::from_millis(10);
const OBSERVE_PAGE: i64 = 20_000;
/// How long an id the observer has not seen yet is looked for.
const HOLE_PATIENCE: Duration = Duration::from_secs(30);

/// One device and its execution.
#[derive(Debug, Clone)]
struct Target {
    device: String,
    execution: i64,
}

/// The messages of a load, spread over connections ("lanes"): every
/// device stays on one lane, so its statuses arrive in order.
struct Load {
    lanes: Vec<Vec<Message>>,
    /// Message ids, aligned with `lanes`.
    ids: Vec<Vec<String>>,
    total: usize,
}

/// Every device's five statuses in the simulator's format, round-robin
/// over devices per step (consecutive messages hit different executions).
fn load(prefix: &str, targets: &[Target], lanes: usize) -> Load {
    let lanes = lanes.max(1);
    let mut out: Vec<Vec<Message>> = (0..lanes).map(|_| Vec::new()).collect();
    let mut ids: Vec<Vec<String>> = (0..lanes).map(|_| Vec::new()).collect();
    // `ts` is when the load was prepared; the host only feeds a lag metric
    // with it.
    let ts = mqtt::now_us() / 1000;
    for (step, (state, progress)) in STEPS.iter().enumerate() {
        for (d, target) in targets.iter().enumerate() {
            let message_id = format!("{}-1-{}-{state}", target.execution, step + 1);
            let payload = json!({
                "message_id": message_id,
                "device_id": target.device,
                "state": state,
                "progress": progress,
                "error": null,
                "execution_id": target.execution,
                "attempt": 1,
                "ts": ts,
            });
            out[d % lanes].push(Message {
                topic: format!("{prefix}/{}/update/status", target.device),
                payload: serde_json::to_vec(&payload).unwrap_or_default(),
            });
            ids[d % lanes].push(message_id);
        }
    }
    Load {
        lanes: out,
        ids,
        total: targets.len() * STEPS.len(),
    }
}

pub async fn run(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let name = "ingest";
    eprintln!("== ingest: the broker's raw QoS 1 rate");
    let raw = raw_broker(env, sizes)
        .await
        .context("measuring the broker's raw QoS 1 rate")?;
    eprintln!(
        "   {} messages in {} → {}",
        raw.messages,
        report::seconds(raw.window_s),
        report::per_second(raw.rate)
    );
    report.detail(name, "raw_qos1", raw.json());

    eprintln!("== ingest: pgbench (the database's ceiling)");
    let pg = match pgbench(env, sizes).await {
        Ok(pg) => {
            eprintln!(
                "   single-row UPDATE {} tps, status write set {} tps",
                report::thousands(pg.single_row_tps),
                report::thousands(pg.write_set_tps)
            );
            report.detail(
                name,
                "pgbench",
                json!({
                    "single_row_update_tps": pg.single_row_tps,
                    "status_write_set_tps": pg.write_set_tps,
                    "rows": pg.rows, "seconds": pg.seconds, "clients": 4, "threads": 2,
                }),
            );
            Some(pg)
        }
        Err(error) => {
            report.fail("ingest (pgbench baseline)", &error);
            None
        }
    };

    eprintln!("== ingest: the host");
    let by_host = host_run(env, sizes)
        .await
        .context("ingestion by the host")?;
    report.detail(name, "host", by_host.json());
    let rate = by_host.throughput.rate;
    let (text, value) = report::ratio(rate, raw.rate);
    report.push(Row {
        benchmark: "ingest: host vs broker's raw QoS 1".into(),
        figure: report::per_second(rate),
        baseline: report::per_second(raw.rate),
        ratio: text,
        target: "≥ 0.60x".into(),
        met: value.map(|r| r >= 0.6),
    });
    if let Some(pg) = &pg {
        for (label, tps) in [
            ("ingest: host vs pgbench 1-row UPDATE", pg.single_row_tps),
            ("ingest: host vs pgbench status write set", pg.write_set_tps),
        ] {
            report.push(Row {
                benchmark: label.into(),
                figure: report::per_second(rate),
                baseline: format!("{} tps", report::thousands(tps)),
                ratio: report::ratio(rate, tps).0,
                target: "—".into(),
                met: None,
            });
        }
    }
    if let Some(latency) = &by_host.latency {
        report.push(Row::info(
            "ingest: publish→commit latency",
            format!(
                "p50 {}, p99 {} at {}",
                report::millis(latency.latency.p50),
                report::millis(latency.latency.p99),
                report::per_second(by_host.latency_rate)
            ),
        ));
    }

    if sizes.naive_devices == 0 {
        // Left out (`--naive-devices 0`): side-by-side runs of two hosts,
        // where it would load the cluster before one side's next benchmark
        // and not the other's.
        return Ok(());
    }
    eprintln!("== ingest: the naive design (one transaction per message)");
    let naive = naive_run(env, sizes).await.context("the naive baseline")?;
    report.detail(name, "naive", naive.json());
    let (text, value) = report::ratio(rate, naive.rate);
    report.push(Row {
        benchmark: "ingest: host vs naive design".into(),
        figure: report::per_second(rate),
        baseline: report::per_second(naive.rate),
        ratio: text,
        target: "≥ 5x".into(),
        met: value.map(|r| r >= 5.0),
    });
    Ok(())
}

/// Latency percentiles in µs: up to the moment the commit was seen, and up
/// to the start of the transaction that applied the status (`at`).
#[derive(Debug, Clone, Default)]
struct Latency {
    samples: usize,
    p50: f64,
    p99: f64,
    max: f64,
    tx_start_p50: f64,
    tx_start_p99: f64,
}

impl Latency {
    fn json(&self) -> Value {
        json!({
            "samples": self.samples,
            "commit_seen_p50_ms": self.p50 / 1000.0,
            "commit_seen_p99_ms": self.p99 / 1000.0,
            "commit_seen_max_ms": self.max / 1000.0,
            "transaction_start_p50_ms": self.tx_start_p50 / 1000.0,
            "transaction_start_p99_ms": self.tx_start_p99 / 1000.0,
        })
    }
}

/// One measured load.
#[derive(Debug, Clone)]
struct Measured {
    statuses: u64,
    /// First publish to the last commit, in seconds.
    window_s: f64,
    /// `statuses / window_s`.
    rate: f64,
    /// Between the 10th and the 90th percentile of commits.
    steady_rate: Option<f64>,
    latency: Latency,
    /// Log rows the observer only found in its final pass.
    unobserved: usize,
}

impl Measured {
    fn json(&self) -> Value {
        json!({
            "statuses": self.statuses,
            "window_s": self.window_s,
            "statuses_per_s": self.rate,
            "steady_statuses_per_s": self.steady_rate,
            "latency": self.latency.json(),
            "unobserved_commits": self.unobserved,
        })
    }
}

/// A log row applied by a status, and when the observer saw it committed.
struct Commit {
    message_id: String,
    /// The row's `at` (its transaction's start), µs since the epoch.
    at_us: i64,
    seen_us: i64,
}

/// Reads `execution_status_log` rows as they commit, every 10 ms: the
/// moment a row first shows is its commit time, give or take one poll.
/// The host applies statuses one transaction at a time, so row ids grow in
/// commit order; `finish` reads everything again to catch any exception.
struct Observer {
    seen: Arc<AtomicU64>,
    from: i64,
    pool: PgPool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<Vec<Commit>>>,
}

impl Observer {
    async fn start(pool: &PgPool) -> anyhow::Result<Self> {
        let from: i64 =
            sqlx::query_scalar("SELECT coalesce(max(id), 0)::bigint FROM execution_status_log")
                .fetch_one(pool)
                .await
                .context("reading execution_status_log")?;
        let seen = Arc::new(AtomicU64::new(0));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = {
            let pool = pool.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut commits: Vec<Commit> = Vec::new();
                let mut last = from;
                // Ids below `last` not seen yet. The host applies several
                // batches at once, so a row can become visible after rows
                // with higher ids: those ids are read again until they
                // show up (ids of rolled-back rows are given up on after a
                // while).
                let mut holes: BTreeMap<i64, Instant> = BTreeMap::new();
                let mut stopping = false;
                loop {
                    let now = Instant::now();
                    holes.retain(|_, since| now.duration_since(*since) < HOLE_PATIENCE);
                    let wanted: Vec<i64> = holes.keys().copied().collect();
                    // Two index lookups: as one `id > $1 OR id = ANY($3)`,
                    // the planner walked the primary key from its start,
                    // and the observer took milliseconds of PostgreSQL's
                    // time every 10 ms from the host it measures.
                    let mut rows: Vec<(i64, Option<String>, i64)> = sqlx::query_as(
                        "(SELECT id, message_id, (extract(epoch FROM at) * 1000000)::bigint
                          FROM execution_status_log WHERE id > $1 ORDER BY id LIMIT $2)
                         UNION ALL
                         (SELECT id, message_id, (extract(epoch FROM at) * 1000000)::bigint
                          FROM execution_status_log WHERE id = ANY($3))",
                    )
                    .bind(last)
                    .bind(OBSERVE_PAGE)
                    .bind(&wanted)
                    .fetch_all(&pool)
                    .await
                    .context("reading new execution_status_log rows")?;
                    let seen_us = mqtt::now_us();
                    let full =
                        rows.iter().filter(|(id, ..)| *id > last).count() as i64 == OBSERVE_PAGE;
                    rows.sort_unstable_by_key(|(id, ..)| *id);
                    for (id, message_id, at_us) in rows {
                        if holes.remove(&id).is_none() {
                            for missing in (last + 1)..id {
                                holes.insert(missing, now);
                            }
                        }
                        last = last.max(id);
                        // Rows of the dispatcher carry no message id.
                        if let Some(message_id) = message_id {
                            commits.push(Commit {
                                message_id,
                                at_us,
                                seen_us,
                            });
                        }
                    }
                    seen.store(commits.len() as u64, Ordering::Relaxed);
                    if full {
                        continue;
                    }
                    if stopping {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(OBSERVE_EVERY) => {}
                        _ = &mut stop_rx => stopping = true,
                    }
                }
                anyhow::Ok(commits)
            })
        };
        Ok(Self {
            seen,
            from,
            pool: pool.clone(),
            stop: Some(stop_tx),
            task,
        })
    }

    /// Log rows with a message id above the starting point, counted.
    async fn count_all(&self) -> anyhow::Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM execution_status_log WHERE id > $1 AND message_id IS NOT NULL",
        )
        .bind(self.from)
        .fetch_one(&self.pool)
        .await?;
        Ok(count as u64)
    }

    /// Stops, then adds the rows the incremental reads missed (seen now).
    async fn finish(mut self) -> anyhow::Result<(Vec<Commit>, usize)> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let mut commits = (&mut self.task)
            .await
            .context("the commit observer failed")??;
        let all: Vec<(String, i64)> = sqlx::query_as(
            "SELECT message_id, (extract(epoch FROM at) * 1000000)::bigint
             FROM execution_status_log WHERE id > $1 AND message_id IS NOT NULL",
        )
        .bind(self.from)
        .fetch_all(&self.pool)
        .await
        .context("reading execution_status_log")?;
        let mut missing = Vec::new();
        if all.len() > commits.len() {
            let known: HashSet<&str> = commits.iter().map(|c| c.message_id.as_str()).collect();
            let now = mqtt::now_us();
            for (message_id, at_us) in all {
                if !known.contains(message_id.as_str()) {
                    missing.push(Commit {
                        message_id,
                        at_us,
                        seen_us: now,
                    });
                }
            }
        }
        let unobserved = missing.len();
        commits.extend(missing);
        Ok((commits, unobserved))
    }
}

/// Fails when `progress` has not moved for `STALL`.
struct StallGuard {
    last: u64,
    since: Instant,
}

impl StallGuard {
    fn new() -> Self {
        Self {
            last: 0,
            since: Instant::now(),
        }
    }

    fn idle(&self) -> Duration {
        self.since.elapsed()
    }

    fn check(&mut self, now: u64, target: u64, what: &str) -> anyhow::Result<()> {
        if now != self.last {
            self.last = now;
            self.since = Instant::now();
        } else if now < target && self.since.elapsed() > STALL {
            bail!("{what}: no progress for {STALL:?}, at {now} of {target}");
        }
        Ok(())
    }
}

/// Publishes while watching that `progress` keeps moving.
#[allow(clippy::too_many_arguments)]
async fn publish_watching(
    url: &str,
    label: &str,
    lanes: Vec<Vec<Message>>,
    pace: Pace,
    timeout: Duration,
    progress: &AtomicU64,
    target: u64,
    what: &str,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let publishing = mqtt::publish(url, label, lanes, pace, timeout);
    tokio::pin!(publishing);
    let mut guard = StallGuard::new();
    loop {
        tokio::select! {
            result = &mut publishing => return result,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                guard.check(progress.load(Ordering::Relaxed), target, what)?;
            }
        }
    }
}

/// A generous bound for `statuses` at a few hundred per second.
fn timeout_for(statuses: u64) -> Duration {
    Duration::from_secs(300 + statuses / 200)
}

/// How the generator paces a measured load.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    /// Flat out with at most `Sizes::window` statuses not yet applied.
    Window,
    /// This many statuses per second.
    Rate(f64),
}

/// Publishes every target's statuses on `prefix` and measures until every
/// one is committed (as `execution_status_log` shows).
async fn measure(
    env: &Env,
    sizes: &Sizes,
    pool: &PgPool,
    prefix: &str,
    targets: &[Target],
    pacing: Pacing,
    label: &str,
) -> anyhow::Result<Measured> {
    let Load { lanes, ids, total } = load(prefix, targets, sizes.publishers);
    let expected = total as u64;
    let observer = Observer::start(pool).await?;
    let pace = match pacing {
        Pacing::Window => Pace::Window {
            limit: sizes.window,
            done: observer.seen.clone(),
        },
        Pacing::Rate(rate) => Pace::Rate(rate),
    };
    let what = format!("{label}: statuses applied");
    let times = publish_watching(
        &env.mqtt_url,
        label,
        lanes,
        pace,
        timeout_for(expected),
        &observer.seen,
        expected,
        &what,
    )
    .await?;
    // Every status published and taken by the broker; wait for the commits.
    let started = Instant::now();
    let mut guard = StallGuard::new();
    let mut counted = Instant::now();
    loop {
        let seen = observer.seen.load(Ordering::Relaxed);
        if seen >= expected {
            break;
        }
        // Rows the incremental reads might have skipped are counted too.
        if guard.idle() > Duration::from_secs(3) && counted.elapsed() > Duration::from_secs(1) {
            counted = Instant::now();
            if observer.count_all().await? >= expected {
                break;
            }
        }
        guard.check(seen, expected, &what)?;
        if started.elapsed() > timeout_for(expected) {
            bail!(
                "{what}: only {seen} of {expected} within {:?}",
                timeout_for(expected)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (commits, unobserved) = observer.finish().await?;

    let mut published: HashMap<&str, i64> = HashMap::with_capacity(total);
    for (lane_ids, lane_times) in ids.iter().zip(&times) {
        for (id, at) in lane_ids.iter().zip(lane_times) {
            published.insert(id.as_str(), *at);
        }
    }
    let first_publish = times
        .iter()
        .flat_map(|lane| lane.first())
        .copied()
        .min()
        .ok_or_else(|| anyhow!("{label}: nothing was published"))?;
    let mut upper = Vec::with_capacity(total);
    let mut lower = Vec::with_capacity(total);
    let mut seen_at = Vec::with_capacity(total);
    for commit in &commits {
        if let Some(sent) = published.get(commit.message_id.as_str()) {
            upper.push((commit.seen_us - sent).max(0));
            lower.push((commit.at_us - sent).max(0));
            seen_at.push(commit.seen_us);
        }
    }
    if seen_at.len() as u64 != expected {
        bail!(
            "{label}: {} of {expected} published statuses were applied ({} log rows in all)",
            seen_at.len(),
            commits.len()
        );
    }
    upper.sort_unstable();
    lower.sort_unstable();
    seen_at.sort_unstable();
    let last_commit = seen_at.last().copied().unwrap_or(first_publish);
    let window_s = ((last_commit - first_publish) as f64 / 1e6).max(1e-6);
    let steady_rate = if seen_at.len() >= 10 {
        let (a, b) = (seen_at.len() / 10, seen_at.len() * 9 / 10);
        let span = (seen_at[b] - seen_at[a]) as f64 / 1e6;
        (b > a && span > 0.0).then(|| (b - a) as f64 / span)
    } else {
        None
    };
    let pct = |v: &[i64], p: f64| report::percentile(v, p).unwrap_or_default() as f64;
    let (upper, lower) = (&upper[..], &lower[..]);
    Ok(Measured {
        statuses: expected,
        window_s,
        rate: expected as f64 / window_s,
        steady_rate,
        latency: Latency {
            samples: upper.len(),
            p50: pct(upper, 50.0),
            p99: pct(upper, 99.0),
            max: pct(upper, 100.0),
            tx_start_p50: pct(lower, 50.0),
            tx_start_p99: pct(lower, 99.0),
        },
        unobserved,
    })
}

/// A database with a host, firmware, `devices` devices and one job whose
/// executions the host has all dispatched (nobody answers the commands).
struct Prepared {
    database: Database,
    host: Host,
    pool: PgPool,
    targets: Vec<Target>,
    seed_s: f64,
    dispatch_s: f64,
    outbox_drained: bool,
}

async fn prepare(env: &Env, label: &str, devices: u32) -> anyhow::Result<Prepared> {
    let database = env.fresh_database().await?;
    let prefix = host::topic_prefix(label);
    let host = Host::start(env, &database, label, &prefix, true).await?;
    let pool = database.pool(4).await?;
    let firmware = host.upload_esp32("1.0.0-bench").await?;
    let seeded = host::seed_devices(&pool, "BENCH-", devices, "bench").await?;
    eprintln!(
        "   {devices} devices registered with SQL in {}",
        report::seconds(seeded.as_secs_f64())
    );
    mark_connected(&pool).await?;
    // One batch of every device, nothing can pause or abort it, and no
    // device times out while the load is prepared.
    let rollout = json!({
        "plugin": "rollout-percent",
        "config": { "batches": [100], "success_threshold": 0, "failure_threshold": 100 },
    });
    let job = host
        .create_job(&host::job_request(
            &firmware,
            "bench",
            Some(rollout),
            Some(86_400),
        ))
        .await?;
    let dispatched = host::wait_dispatched(
        &pool,
        job,
        u64::from(devices),
        Duration::from_secs(300 + u64::from(devices) / 100),
    )
    .await?;
    eprintln!(
        "   every execution dispatched by the host in {}",
        report::seconds(dispatched.as_secs_f64())
    );
    let outbox_drained = host::wait_outbox_drained(&pool, Duration::from_secs(300)).await?;
    let targets: Vec<Target> = sqlx::query_as::<_, (String, i64)>(
        "SELECT device_id, id FROM executions WHERE job_id = $1 ORDER BY device_id",
    )
    .bind(job)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|(device, execution)| Target { device, execution })
    .collect();
    Ok(Prepared {
        database,
        host,
        pool,
        targets,
        seed_s: seeded.as_secs_f64(),
        dispatch_s: dispatched.as_secs_f64(),
        outbox_drained,
    })
}

/// Records every device as connected, as the hello a device sends each
/// time it connects does (docs/PROTOCOL.md): the benchmark measures the
/// statuses of a connected fleet. (A device that reports without saying
/// hello first costs one write of its row on its first status, once per
/// connection.) A host whose schema has no presence (one built before it)
/// has nothing to record.
async fn mark_connected(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DO $$ BEGIN
             IF EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = 'devices' AND column_name = 'online') THEN
                 UPDATE devices SET online = true, last_seen = now();
             END IF;
         END $$",
    )
    .execute(pool)
    .await
    .context("recording the devices as connected")?;
    sqlx::raw_sql("VACUUM ANALYZE devices")
        .execute(pool)
        .await
        .context("VACUUM ANALYZE devices")?;
    Ok(())
}

/// Every target done, with one log row and one outbox event per state
/// change and no duplicate.
async fn check_applied(pool: &PgPool, targets: &[Target], what: &str) -> anyhow::Result<()> {
    let ids: Vec<i64> = targets.iter().map(|t| t.execution).collect();
    let n = ids.len() as i64;
    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE id = ANY($1) AND status = 'done'",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    if done != n {
        bail!("{what}: {done} of {n} executions are done");
    }
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT message_id) FROM execution_status_log
         WHERE execution_id = ANY($1) AND message_id IS NOT NULL",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    if rows != CHANGES * n || distinct != rows {
        bail!(
            "{what}: {rows} status log rows ({distinct} distinct messages) for {n} executions, expected {}",
            CHANGES * n
        );
    }
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_outbox
         WHERE event_type = 'execution.status.changed' AND payload->>'message_id' IS NOT NULL
           AND (payload->>'execution_id')::bigint = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    if events != CHANGES * n {
        bail!(
            "{what}: {events} outbox events for {n} executions, expected {}",
            CHANGES * n
        );
    }
    Ok(())
}

/// Dedupe rows: one per status applied in the whole database.
async fn check_processed(pool: &PgPool, statuses: u64, what: &str) -> anyhow::Result<()> {
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages")
        .fetch_one(pool)
        .await?;
    if processed as u64 != statuses {
        bail!("{what}: {processed} processed_messages rows for {statuses} statuses");
    }
    Ok(())
}

struct HostRun {
    devices: usize,
    throughput: Measured,
    latency: Option<Measured>,
    latency_devices: usize,
    latency_rate: f64,
    seed_s: f64,
    dispatch_s: f64,
    outbox_drained: bool,
}

impl HostRun {
    fn json(&self) -> Value {
        json!({
            "devices": self.devices,
            "throughput": self.throughput.json(),
            "latency_run": self.latency.as_ref().map(Measured::json),
            "latency_run_devices": self.latency_devices,
            "latency_run_offered_per_s": self.latency_rate,
            "seed_s": self.seed_s,
            "dispatch_s": self.dispatch_s,
            "outbox_drained_before": self.outbox_drained,
        })
    }
}

/// The host ingests: first with a bounded backlog (its capacity), then
/// paced at `latency_load` of that rate (its latency).
async fn host_run(env: &Env, sizes: &Sizes) -> anyhow::Result<HostRun> {
    let devices = sizes.ingest_devices as usize;
    let prepared = prepare(env, "ingest", sizes.ingest_devices + sizes.latency_devices).await?;
    let (throughput_targets, latency_targets) = prepared
        .targets
        .split_at(devices.min(prepared.targets.len()));
    let prefix = prepared.host.topic_prefix.clone();
    let throughput = measure(
        env,
        sizes,
        &prepared.pool,
        &prefix,
        throughput_targets,
        Pacing::Window,
        "ingest-host",
    )
    .await?;
    print_measured("host", &throughput);
    if sizes.full && throughput.window_s < 30.0 {
        eprintln!(
            "   note: the window is {} (< 30 s); raise --ingest-devices",
            report::seconds(throughput.window_s)
        );
    }
    check_applied(&prepared.pool, throughput_targets, "ingest (host)").await?;

    let latency_rate = sizes.latency_load * throughput.rate;
    let wanted = ((latency_rate * sizes.latency_secs) / STEPS.len() as f64).ceil() as usize;
    let latency_targets = &latency_targets[..latency_targets.len().min(wanted.max(1))];
    let latency = if latency_targets.is_empty() {
        None
    } else {
        eprintln!(
            "   latency run: {} devices at {}",
            latency_targets.len(),
            report::per_second(latency_rate)
        );
        let measured = measure(
            env,
            sizes,
            &prepared.pool,
            &prefix,
            latency_targets,
            Pacing::Rate(latency_rate),
            "ingest-latency",
        )
        .await?;
        print_measured("host (paced)", &measured);
        check_applied(&prepared.pool, latency_targets, "ingest (host, paced)").await?;
        Some(measured)
    };
    let statuses = throughput.statuses + latency.as_ref().map_or(0, |m| m.statuses);
    check_processed(&prepared.pool, statuses, "ingest (host)").await?;
    let run = HostRun {
        devices: throughput_targets.len(),
        latency_devices: latency_targets.len(),
        latency_rate,
        throughput,
        latency,
        seed_s: prepared.seed_s,
        dispatch_s: prepared.dispatch_s,
        outbox_drained: prepared.outbox_drained,
    };
    prepared.pool.close().await;
    prepared.host.stop().await?;
    Ok(run)
}

fn print_measured(who: &str, m: &Measured) {
    eprintln!(
        "   {who}: {} statuses in {} → {} (steady {}); publish→commit p50 {}, p99 {}",
        m.statuses,
        report::seconds(m.window_s),
        report::per_second(m.rate),
        m.steady_rate.map_or("—".into(), report::per_second),
        report::millis(m.latency.p50),
        report::millis(m.latency.p99),
    );
}

struct NaiveRun {
    devices: usize,
    measured: Measured,
    rate: f64,
    outcomes: HashMap<String, u64>,
}

impl NaiveRun {
    fn json(&self) -> Value {
        json!({
            "devices": self.devices,
            "throughput": self.measured.json(),
            "outcomes": self.outcomes,
        })
    }
}

/// The naive design: the same load on a prefix the host does not listen
/// to, applied by this process one message per transaction.
async fn naive_run(env: &Env, sizes: &Sizes) -> anyhow::Result<NaiveRun> {
    let prepared = prepare(env, "naive", sizes.naive_devices).await?;
    let prefix = host::topic_prefix("naive-status");
    let client_id = format!("bench-naive-{}", mqtt::suffix());
    let consumer = Naive::start(env, &prepared.database, &prefix, &client_id).await?;
    let measured = measure(
        env,
        sizes,
        &prepared.pool,
        &prefix,
        &prepared.targets,
        Pacing::Window,
        "ingest-naive",
    )
    .await;
    let outcomes = consumer.stop().await;
    if let Err(error) = mqtt::discard_session(&env.mqtt_url, &client_id).await {
        eprintln!("   note: could not discard the naive consumer's session: {error:#}");
    }
    let measured = measured?;
    let outcomes = outcomes?;
    print_measured("naive", &measured);
    check_applied(&prepared.pool, &prepared.targets, "ingest (naive)").await?;
    check_processed(&prepared.pool, measured.statuses, "ingest (naive)").await?;
    prepared.pool.close().await;
    prepared.host.stop().await?;
    Ok(NaiveRun {
        devices: prepared.targets.len(),
        rate: measured.rate,
        measured,
        outcomes,
    })
}

/// A first version of ingestion: one subscriber with manual acks; for each
/// message, in order: look up the device's family, parse with its plugin,
/// apply with the host's own logic for one message
/// (`rollway::ingest::apply_one`: dedupe, state machine, update, log row,
/// outbox event) in a transaction of its own, commit, ack.
struct Naive {
    link: mqtt::Link<mpsc::UnboundedSender<Publish>>,
    worker: JoinHandle<anyhow::Result<HashMap<String, u64>>>,
}

impl Naive {
    async fn start(
        env: &Env,
        database: &Database,
        prefix: &str,
        client_id: &str,
    ) -> anyhow::Result<Self> {
        let metrics =
            rollway::metrics::Metrics::new().map_err(|e| anyhow!("registering metrics: {e}"))?;
        let registry = {
            tokio::task::spawn_blocking(move || {
                rollway::plugins::PluginRegistry::with_builtins(
                    metrics,
                    rollway::plugins::runtime::Limits::default(),
                )
            })
            .await
            .context("loading the plugins")??
        };
        let mut conn = PgConnection::connect(&database.url)
            .await
            .context("connecting the naive consumer to PostgreSQL")?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
        let link = mqtt::connect(
            &env.mqtt_url,
            client_id,
            LinkOptions {
                subscribe: Some(format!("{prefix}/+/update/status")),
                manual_acks: true,
                persistent: true,
            },
            tx,
            |tx, publish| {
                let _ = tx.send(publish);
            },
        )
        .await?;
        let client = link.client.clone();
        let prefix = prefix.to_owned();
        let worker = tokio::spawn(async move {
            let mut outcomes: HashMap<String, u64> = HashMap::new();
            while let Some(publish) = rx.recv().await {
                let outcome = naive_apply(&mut conn, &registry, &prefix, &publish).await?;
                *outcomes.entry(outcome).or_default() += 1;
                // Fails only once the connection is closed at the end.
                let _ = client.ack(&publish).await;
            }
            let _ = conn.close().await;
            anyhow::Ok(outcomes)
        });
        Ok(Self { link, worker })
    }

    async fn stop(self) -> anyhow::Result<HashMap<String, u64>> {
        // Dropping the channel's sender ends the worker.
        let sender = self.link.finish().await;
        drop(sender);
        self.worker.await.context("the naive consumer failed")?
    }
}

async fn naive_apply(
    conn: &mut PgConnection,
    registry: &rollway::plugins::PluginRegistry,
    prefix: &str,
    publish: &Publish,
) -> anyhow::Result<String> {
    let device = publish
        .topic
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_suffix("/update/status"));
    let Some(device) = device else {
        return Ok("malformed".into());
    };
    let family: Option<String> = sqlx::query_scalar("SELECT family FROM devices WHERE id = $1")
        .bind(device)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(family) = family else {
        return Ok("unknown_device".into());
    };
    let Ok(parsed) = registry.parse_status(&family, "{}", device, &publish.payload) else {
        return Ok("malformed".into());
    };
    loop {
        let mut tx = conn.begin().await?;
        match rollway::ingest::apply_one(&mut tx, device, parsed.clone()).await {
            Ok(outcome) => {
                tx.commit().await?;
                return Ok(outcome.label().to_owned());
            }
            // A deadlock or serialization failure: try again.
            Err(error) if rollway::db::is_transient(&error) => {
                let _ = tx.rollback().await;
            }
            Err(error) => return Err(error).context("applying a status (naive design)"),
        }
    }
}

struct RawRate {
    messages: u64,
    window_s: f64,
    rate: f64,
}

impl RawRate {
    fn json(&self) -> Value {
        json!({ "messages": self.messages, "window_s": self.window_s, "messages_per_s": self.rate })
    }
}

/// The same generator and message sizes into a subscriber that only
/// receives (QoS 1, a persistent session like the host's, acks on receipt).
async fn raw_broker(env: &Env, sizes: &Sizes) -> anyhow::Result<RawRate> {
    let prefix = host::topic_prefix("raw-status");
    let devices = (sizes.raw_messages as usize).div_ceil(STEPS.len());
    let targets: Vec<Target> = (0..devices)
        .map(|i| Target {
            device: format!("BENCH-{i:07}"),
            execution: 1_000_000 + i as i64,
        })
        .collect();
    let Load { lanes, total, .. } = load(&prefix, &targets, sizes.publishers);
    let expected = total as u64;
    let client_id = format!("bench-raw-sub-{}", mqtt::suffix());
    let subscriber = mqtt::connect(
        &env.mqtt_url,
        &client_id,
        LinkOptions {
            subscribe: Some(format!("{prefix}/+/update/status")),
            manual_acks: false,
            persistent: true,
        },
        0i64,
        |last, _| *last = mqtt::now_us(),
    )
    .await?;
    let pace = Pace::Window {
        limit: sizes.window,
        done: subscriber.received.clone(),
    };
    let times = publish_watching(
        &env.mqtt_url,
        "bench-raw",
        lanes,
        pace,
        timeout_for(expected),
        &subscriber.received,
        expected,
        "raw QoS 1 messages received",
    )
    .await?;
    mqtt::wait_count(
        "raw QoS 1 messages received",
        &subscriber.received,
        expected,
        STALL,
        timeout_for(expected),
        || subscriber.is_closed(),
    )
    .await?;
    let last = subscriber.finish().await?;
    if let Err(error) = mqtt::discard_session(&env.mqtt_url, &client_id).await {
        eprintln!("   note: could not discard the subscriber's session: {error:#}");
    }
    let first = times
        .iter()
        .flat_map(|lane| lane.first())
        .copied()
        .min()
        .ok_or_else(|| anyhow!("nothing was published"))?;
    let window_s = ((last - first) as f64 / 1e6).max(1e-6);
    Ok(RawRate {
        messages: expected,
        window_s,
        rate: expected as f64 / window_s,
    })
}

struct Pgbench {
    single_row_tps: f64,
    write_set_tps: f64,
    rows: u32,
    seconds: u32,
}

/// pgbench on a table like `executions` (same columns and indexes) with as
/// many rows as the host run has devices, 4 clients, 2 threads: a
/// single-row status UPDATE per transaction, then a status's whole write
/// set (dedupe row, read, update, log row, outbox row) per transaction.
async fn pgbench(env: &Env, sizes: &Sizes) -> anyhow::Result<Pgbench> {
    let rows = sizes.ingest_devices.max(1);
    let database = env.fresh_database().await?;
    let pool = database.pool(2).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE bench_exec (
             id bigint PRIMARY KEY, job_id uuid NOT NULL, device_id text NOT NULL,
             batch_group integer, status text NOT NULL, attempts integer NOT NULL DEFAULT 1,
             progress smallint, last_error text, created_at timestamptz NOT NULL DEFAULT now(),
             updated_at timestamptz NOT NULL DEFAULT now(), dispatched_at timestamptz,
             finished_at timestamptz, version bigint NOT NULL DEFAULT 0, dispatched_by text,
             resend boolean NOT NULL DEFAULT false,
             stage text NOT NULL GENERATED ALWAYS AS (
                 CASE WHEN status = 'queued' THEN 'queued'
                      WHEN status IN ('dispatched', 'init', 'downloading', 'flashing', 'rebooting')
                      THEN 'in_flight' ELSE 'finished' END) STORED)
             WITH (fillfactor = 80);
         CREATE UNIQUE INDEX ON bench_exec (device_id) WHERE stage = 'in_flight';
         CREATE INDEX ON bench_exec (job_id, batch_group);
         CREATE INDEX ON bench_exec (device_id, id);
         CREATE INDEX ON bench_exec (job_id, batch_group, id) WHERE stage = 'queued';
         CREATE INDEX ON bench_exec (dispatched_at) WHERE stage = 'in_flight';
         CREATE INDEX ON bench_exec (id) WHERE resend;
         INSERT INTO bench_exec (id, job_id, device_id, batch_group, status, dispatched_at)
             SELECT i, '00000000-0000-0000-0000-000000000001', 'BENCH-' || lpad(i::text, 7, '0'),
                    0, 'dispatched', now()
             FROM generate_series(1, {rows}) AS i;
         CREATE TABLE bench_processed (message_id text PRIMARY KEY,
             processed_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE bench_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             execution_id bigint NOT NULL, status text NOT NULL, progress smallint, message text,
             message_id text, at timestamptz NOT NULL DEFAULT now());
         CREATE INDEX ON bench_log (execution_id, id);
         CREATE TABLE bench_outbox (id uuid PRIMARY KEY, aggregate_type text NOT NULL,
             aggregate_id text NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL,
             occurred_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz,
             seq bigint GENERATED ALWAYS AS IDENTITY);
         CREATE INDEX ON bench_outbox (seq) WHERE sent_at IS NULL;"
    )))
    .execute(&pool)
    .await
    .context("creating the pgbench tables")?;
    sqlx::raw_sql("VACUUM ANALYZE bench_exec")
        .execute(&pool)
        .await
        .context("VACUUM ANALYZE bench_exec")?;
    pool.close().await;

    let dir = env.dir("pgbench")?;
    let single = dir.join("single-row-update.sql");
    std::fs::write(
        &single,
        format!(
            "\\set id random(1, {rows})\n\
             UPDATE bench_exec SET status = 'flashing', version = version + 1, updated_at = now() WHERE id = :id;\n"
        ),
    )
    .context("writing the pgbench script")?;
    let write_set = dir.join("status-write-set.sql");
    std::fs::write(
        &write_set,
        format!(
            "\\set id random(1, {rows})\n\
             BEGIN;\n\
             INSERT INTO bench_processed (message_id) VALUES (gen_random_uuid()::text);\n\
             SELECT status, version, attempts, progress, dispatched_at FROM bench_exec WHERE id = :id;\n\
             UPDATE bench_exec SET status = 'flashing', progress = coalesce(progress, 0), updated_at = now(), version = version + 1 WHERE id = :id;\n\
             INSERT INTO bench_log (execution_id, status, message_id) VALUES (:id, 'flashing', gen_random_uuid()::text);\n\
             INSERT INTO bench_outbox (id, aggregate_type, aggregate_id, event_type, payload) \
             VALUES (gen_random_uuid(), 'device', 'BENCH-' || :id, 'execution.status.changed', \
             jsonb_build_object('execution_id', :id, 'from', 'downloading', 'to', 'flashing', 'reported', 'flashing', 'message_id', gen_random_uuid()::text));\n\
             END;\n"
        ),
    )
    .context("writing the pgbench script")?;
    let single_row_tps = run_pgbench(&database.url, &single, sizes.pgbench_secs).await?;
    let write_set_tps = run_pgbench(&database.url, &write_set, sizes.pgbench_secs).await?;
    Ok(Pgbench {
        single_row_tps,
        write_set_tps,
        rows,
        seconds: sizes.pgbench_secs,
    })
}

async fn run_pgbench(url: &str, script: &std::path::Path, secs: u32) -> anyhow::Result<f64> {
    let duration = secs.to_string();
    let output = tokio::time::timeout(
        Duration::from_secs(u64::from(secs) + 120),
        tokio::process::Command::new("pgbench")
            .args(["-n", "-T", duration.as_str(), "-c", "4", "-j", "2", "-f"])
            .arg(script)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("pgbench did not finish within {} s", u64::from(secs) + 120))?
    .context("running pgbench (Debian: apt-get install postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let failed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if failed > 0 {
        bail!("pgbench: {failed} transactions failed:\n{stdout}");
    }
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no 'tps = ' in pgbench's output:\n{stdout}"))
}

//! `rollway-bench`: Rollway's benchmark suite. It runs, against the real
//! PostgreSQL and MQTT broker and a real `rollway serve` process, the six
//! benchmarks of BENCHMARKS.md (ingest, dispatch, reconnect, job-scale,
//! plugins, e2e),
//! each with its baseline measured in the same run, and prints one table of
//! figures, baselines, ratios and targets.
//!
//! Exit status: 0 when every benchmark ran and passed its correctness
//! checks, whether or not it met its target; 1 otherwise.

mod dispatch;
mod e2e;
mod host;
mod ingest;
mod job_scale;
mod mqtt;
mod plugins;
mod reconnect;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

use host::Env;
use report::Report;

const BENCHMARKS: [&str; 6] = [
    "ingest",
    "dispatch",
    "reconnect",
    "job-scale",
    "plugins",
    "e2e",
];

/// Rollway's benchmarks against the real services. Environment:
/// ROLLWAY_TEST_DATABASE_URL (a PostgreSQL URL allowed to create databases),
/// MQTT_URL, ROLLWAY_BIN (the `rollway` binary to run as the host).
#[derive(Debug, Parser)]
#[command(name = "rollway-bench", version)]
struct Args {
    /// Small sizes: a smoke test that every benchmark still runs (CI).
    #[arg(long)]
    quick: bool,
    /// Run only these benchmarks: ingest, dispatch, reconnect, job-scale,
    /// plugins, e2e.
    #[arg(long, value_delimiter = ',', value_name = "NAME[,NAME]")]
    only: Vec<String>,
    /// Also write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Devices of the host's ingestion run (five statuses each).
    #[arg(long, value_name = "N")]
    ingest_devices: Option<u32>,
    /// Devices of the naive ingestion baseline (five statuses each); 0
    /// leaves the baseline out.
    #[arg(long, value_name = "N")]
    naive_devices: Option<u32>,
    /// Timed calls of each plugin function (longer runs for a profiler).
    #[arg(long, value_name = "N")]
    plugin_calls: Option<usize>,
}

/// Sizes and settings of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Full sizes (not `--quick`).
    pub full: bool,
    /// Devices whose statuses measure the host's ingestion rate.
    pub ingest_devices: u32,
    /// Further devices for the latency run, paced below that rate.
    pub latency_devices: u32,
    /// The latency run's rate, as a share of the measured ingestion rate.
    pub latency_load: f64,
    /// At most this many seconds of statuses in the latency run.
    pub latency_secs: f64,
    /// Devices of the naive baseline.
    pub naive_devices: u32,
    /// Messages of the broker's raw QoS 1 baseline.
    pub raw_messages: u32,
    /// Publishing connections of the load generator.
    pub publishers: usize,
    /// Most statuses published and not yet applied (received, for the
    /// raw baseline) while measuring a rate.
    pub window: u64,
    /// Duration of each pgbench run.
    pub pgbench_secs: u32,
    pub dispatch_devices: u32,
    /// Devices back from away that say hello with their command pending.
    pub reconnect_devices: u32,
    pub job_devices: u32,
    pub plugin_calls: usize,
    pub plugin_warmup: usize,
    pub e2e_devices: u32,
}

impl Sizes {
    fn new(args: &Args) -> Self {
        let full = !args.quick;
        let pick = |full_size: u32, quick_size: u32| if full { full_size } else { quick_size };
        Self {
            full,
            ingest_devices: args.ingest_devices.unwrap_or(pick(200_000, 2_000)),
            latency_devices: pick(30_000, 500),
            latency_load: 0.7,
            latency_secs: if full { 15.0 } else { 3.0 },
            naive_devices: args.naive_devices.unwrap_or(pick(20_000, 1_000)),
            raw_messages: pick(200_000, 5_000),
            publishers: 3,
            window: if full { 10_000 } else { 2_000 },
            pgbench_secs: pick(10, 3),
            dispatch_devices: pick(100_000, 2_000),
            reconnect_devices: pick(100_000, 2_000),
            job_devices: pick(1_000_000, 20_000),
            plugin_calls: args.plugin_calls.unwrap_or(if full { 20_000 } else { 500 }),
            plugin_warmup: if full { 1_000 } else { 50 },
            e2e_devices: pick(10_000, 300),
        }
    }

    fn json(&self) -> Value {
        json!({
            "mode": if self.full { "full" } else { "quick" },
            "ingest": {
                "devices": self.ingest_devices, "statuses": u64::from(self.ingest_devices) * 5,
                "latency_run_devices_at_most": self.latency_devices,
                "latency_run_load": self.latency_load, "latency_run_seconds_at_most": self.latency_secs,
                "naive_devices": self.naive_devices, "naive_statuses": u64::from(self.naive_devices) * 5,
                "raw_qos1_messages": self.raw_messages, "publisher_connections": self.publishers,
                "unapplied_window": self.window, "pgbench_seconds": self.pgbench_secs,
                "pgbench_clients": 4, "pgbench_threads": 2,
            },
            "dispatch": { "devices": self.dispatch_devices, "rollout_batches": [100] },
            "reconnect": { "devices": self.reconnect_devices, "hello_connections": self.publishers },
            "job_scale": { "devices": self.job_devices, "rollout_batches": [1, 10, 50, 100] },
            "plugins": { "calls": self.plugin_calls, "warmup_calls": self.plugin_warmup },
            "e2e": { "devices": self.e2e_devices, "firmware_bytes": 64 * 1024, "rollout": "rollout-percent defaults" },
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("rollway-bench: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the selected benchmarks; returns whether all of them ran and
/// passed their checks.
async fn run(args: Args) -> anyhow::Result<bool> {
    for name in &args.only {
        if !BENCHMARKS.contains(&name.as_str()) {
            bail!(
                "unknown benchmark '{name}'; choose among {}",
                BENCHMARKS.join(", ")
            );
        }
    }
    let selected: Vec<&str> = BENCHMARKS
        .into_iter()
        .filter(|b| args.only.is_empty() || args.only.iter().any(|o| o == b))
        .collect();
    let sizes = Sizes::new(&args);
    let env = Env::from_environment()?;
    let mut report = Report {
        environment: environment(&env, &sizes).await?,
        ..Report::default()
    };
    print_environment(&report.environment);

    for name in &selected {
        let started = std::time::Instant::now();
        let outcome = match *name {
            "ingest" => ingest::run(&env, &sizes, &mut report).await,
            "dispatch" => dispatch::run(&env, &sizes, &mut report).await,
            "reconnect" => reconnect::run(&env, &sizes, &mut report).await,
            "job-scale" => job_scale::run(&env, &sizes, &mut report).await,
            "plugins" => plugins::run(&sizes, &mut report).await,
            "e2e" => e2e::run(&env, &sizes, &mut report).await,
            _ => Ok(()),
        };
        if let Err(error) = outcome {
            report.fail(name, &error);
        }
        eprintln!(
            "   ({name} took {})",
            report::seconds(started.elapsed().as_secs_f64())
        );
    }
    env.drop_databases().await;

    println!();
    println!(
        "Results ({} mode)",
        if sizes.full { "full" } else { "quick" }
    );
    println!();
    print!("{}", report.table());
    if !report.failures.is_empty() {
        println!();
        println!("Failed (could not run, or a correctness check failed):");
        for (benchmark, error) in &report.failures {
            println!("  {benchmark}: {error}");
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).context("encoding JSON")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!();
        println!("JSON: {}", path.display());
    }
    let ok = report.failures.is_empty();
    if ok {
        host::remove_dir(&env.work_dir);
    } else {
        println!("Host logs and scripts kept in {}", env.work_dir.display());
    }
    Ok(ok)
}

/// The machine, the services' versions and the settings.
async fn environment(env: &Env, sizes: &Sizes) -> anyhow::Result<Value> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kb = host::kib_field(&meminfo, "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();

    let mut conn = env.admin().await?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await
        .context("reading PostgreSQL's version")?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, current_setting(name) FROM unnest(ARRAY['max_connections', 'shared_buffers',
             'fsync', 'synchronous_commit', 'full_page_writes', 'wal_level', 'max_wal_size',
             'checkpoint_timeout', 'track_commit_timestamp']) AS name",
    )
    .fetch_all(&mut conn)
    .await
    .context("reading PostgreSQL's settings")?;
    let _ = sqlx::Connection::close(conn).await;

    let broker = match mqtt::broker_version(&env.mqtt_url).await {
        Some(version) => version,
        None => mosquitto_help().unwrap_or_else(|| "unknown".into()),
    };
    let host_profile = if env
        .rollway_bin
        .components()
        .any(|c| c.as_os_str() == "release")
    {
        "release"
    } else if env
        .rollway_bin
        .components()
        .any(|c| c.as_os_str() == "debug")
    {
        "debug"
    } else {
        "unknown"
    };
    let settings_map: serde_json::Map<String, Value> = settings
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(json!({
        "machine": {
            "cpu": cpu, "cores": cores, "memory_bytes": memory_kb * 1024, "kernel": kernel,
        },
        "postgresql": { "version": version, "settings": settings_map },
        "broker": { "version": broker, "url": env.mqtt_url },
        "rollway": {
            "binary": env.rollway_bin.display().to_string(),
            "build": host_profile,
            "bench_build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "version": env!("CARGO_PKG_VERSION"),
            "host_settings": {
                "db_pool_size": 16, "log": "RUST_LOG=warn", "store": "file",
                "kafka": "none (outbox events are marked sent by the relay)",
            },
        },
        "settings": sizes.json(),
    }))
}

/// The first line of `mosquitto -h` (its version), when installed here.
fn mosquitto_help() -> Option<String> {
    for program in ["mosquitto", "/usr/sbin/mosquitto"] {
        if let Ok(output) = std::process::Command::new(program).arg("-h").output() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if let Some(line) = text.lines().find(|l| !l.trim().is_empty()) {
                return Some(line.trim().to_owned());
            }
        }
    }
    None
}

fn print_environment(environment: &Value) {
    let machine = &environment["machine"];
    println!("Rollway benchmarks");
    println!(
        "  machine:    {} cores, {:.1} GiB, {} (Linux {})",
        machine["cores"],
        machine["memory_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0 * 1024.0),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
    );
    println!(
        "  PostgreSQL: {}",
        environment["postgresql"]["version"].as_str().unwrap_or("?")
    );
    if let Some(settings) = environment["postgresql"]["settings"].as_object() {
        let list: Vec<String> = settings
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
            .collect();
        println!("              {}", list.join(" "));
    }
    println!(
        "  broker:     {} at {}",
        environment["broker"]["version"].as_str().unwrap_or("?"),
        environment["broker"]["url"].as_str().unwrap_or("?")
    );
    println!(
        "  host:       {} ({} build)",
        environment["rollway"]["binary"].as_str().unwrap_or("?"),
        environment["rollway"]["build"].as_str().unwrap_or("?")
    );
    println!("  settings:   {}", environment["settings"]);
    println!();
}

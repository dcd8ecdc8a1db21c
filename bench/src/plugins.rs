//! Benchmark 4, plugin overhead: the per-call cost of the rollout
//! strategy's `evaluate` and the ESP32 family's `parse-status` through the
//! host's plugin registry (a fresh sandboxed instance per call, as in
//! production), against the same Rust logic called natively.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use rollway::plugins::{BatchCounts, Decision, PluginRegistry, Snapshot, StatusReport};
use rollway_plugin_sdk::device::DeviceFamily;
use rollway_plugin_sdk::rollout::RolloutStrategy;
use serde_json::json;

use crate::Sizes;
use crate::report::{self, Report, Row};

/// A job's rollout configuration as operators write it.
const CONFIG: &str = r#"{"batches":[1,10,50,100],"success_threshold":95,"failure_threshold":10}"#;
const DEVICE: &str = "BENCH-0004217";

/// A running job over 10,000 devices: two batches finished, the third
/// under way, the last not released.
fn snapshot() -> Snapshot {
    let batch = |group: u32, total, pending, in_flight, succeeded, failed, started: Option<u64>| {
        BatchCounts {
            group,
            total,
            pending,
            in_flight,
            succeeded,
            failed,
            timed_out: 0,
            cancelled: 0,
            started_at: started,
        }
    };
    let t0 = 1_764_000_000_000u64;
    Snapshot {
        now: t0 + 1_800_000,
        job_started_at: t0,
        batches: vec![
            batch(0, 100, 0, 0, 99, 1, Some(t0)),
            batch(1, 900, 0, 0, 893, 7, Some(t0 + 300_000)),
            batch(2, 4000, 100, 3000, 880, 20, Some(t0 + 1_200_000)),
            batch(3, 5000, 5000, 0, 0, 0, None),
        ],
    }
}

/// A status as the simulator sends it.
fn payload() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "message_id": "48213-1-2-downloading",
        "device_id": DEVICE,
        "state": "downloading",
        "progress": 50,
        "error": null,
        "execution_id": 48213,
        "attempt": 1,
        "ts": 1_764_000_123_456u64,
    }))
    .unwrap_or_default()
}

/// The same input in the SDK's types, converted as the component does.
fn native_snapshot(snapshot: &Snapshot) -> rollway_plugin_sdk::rollout::Snapshot {
    rollway_plugin_sdk::rollout::Snapshot {
        now: snapshot.now,
        job_started_at: snapshot.job_started_at,
        batches: snapshot
            .batches
            .iter()
            .map(|b| rollway_plugin_sdk::rollout::Batch {
                group: b.group,
                total: b.total,
                pending: b.pending,
                in_flight: b.in_flight,
                succeeded: b.succeeded,
                failed: b.failed,
                timed_out: b.timed_out,
                cancelled: b.cancelled,
                started_at: b.started_at,
            })
            .collect(),
    }
}

/// What the component's `evaluate` runs: parse and check the
/// configuration, take the snapshot, decide.
fn native_evaluate(
    config: &str,
    snapshot: &Snapshot,
) -> Result<rollway_plugin_sdk::rollout::Decision, String> {
    let config =
        rollway_plugin_sdk::rollout::load_config::<rollout_percent::RolloutPercent>(config)?;
    let snapshot = native_snapshot(snapshot);
    Ok(<rollout_percent::RolloutPercent as RolloutStrategy>::evaluate(&config, &snapshot))
}

/// What the component's `parse-status` runs.
fn native_parse(
    topic_device: &str,
    payload: &[u8],
) -> Result<rollway_plugin_sdk::status::Status, String> {
    let config = rollway_plugin_sdk::device::load_config::<device_esp32::Esp32>("{}")?;
    <device_esp32::Esp32 as DeviceFamily>::parse_status(&config, topic_device, payload)
}

fn describe_wasm(decision: &Decision) -> String {
    match decision {
        Decision::StartNextBatch => "start-next-batch".into(),
        Decision::Wait(ms) => format!("wait {ms}"),
        Decision::Pause(reason) => format!("pause: {reason}"),
        Decision::Abort(reason) => format!("abort: {reason}"),
        Decision::Complete => "complete".into(),
    }
}

fn describe_native(decision: &rollway_plugin_sdk::rollout::Decision) -> String {
    use rollway_plugin_sdk::rollout::Decision as D;
    match decision {
        D::StartNextBatch => "start-next-batch".into(),
        D::Wait(ms) => format!("wait {ms}"),
        D::Pause(reason) => format!("pause: {reason}"),
        D::Abort(reason) => format!("abort: {reason}"),
        D::Complete => "complete".into(),
    }
}

/// Per-call times in µs.
struct Timing {
    calls: usize,
    mean: f64,
    p50: f64,
    p99: f64,
}

impl Timing {
    fn json(&self) -> serde_json::Value {
        json!({ "calls": self.calls, "mean_us": self.mean, "p50_us": self.p50, "p99_us": self.p99 })
    }
}

/// Times `calls` calls of `f` after `warmup` untimed ones.
fn time<T, E: std::fmt::Display>(
    warmup: usize,
    calls: usize,
    mut f: impl FnMut() -> Result<T, E>,
) -> anyhow::Result<Timing> {
    for _ in 0..warmup {
        black_box(f().map_err(|e| anyhow!("{e}"))?);
    }
    let mut micros = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let result = f();
        let took = started.elapsed();
        black_box(result.map_err(|e| anyhow!("{e}"))?);
        micros.push(took.as_secs_f64() * 1e6);
    }
    let mean = report::mean(&micros);
    micros.sort_by(f64::total_cmp);
    Ok(Timing {
        calls,
        mean,
        p50: report::percentile(&micros, 50.0).unwrap_or_default(),
        p99: report::percentile(&micros, 99.0).unwrap_or_default(),
    })
}

struct Results {
    evaluate_wasm: Timing,
    evaluate_native: Timing,
    parse_wasm: Timing,
    parse_native: Timing,
    /// `parse-statuses` of [`BATCH`] statuses a call, per status.
    parse_batched: Timing,
    decision: String,
}

/// Statuses a batched call parses: an ingestion lane's batch.
const BATCH: usize = 500;

/// Runs on a blocking thread: plugin calls are synchronous, as the host
/// makes them (`spawn_blocking`).
fn measure(sizes: &Sizes) -> anyhow::Result<Results> {
    let metrics =
        rollway::metrics::Metrics::new().map_err(|e| anyhow!("registering metrics: {e}"))?;
    let registry =
        PluginRegistry::with_builtins(metrics, rollway::plugins::runtime::Limits::default())
            .context("loading the shipped plugins")?;
    let snapshot = snapshot();
    let payload = payload();

    // The same answers both ways, or the comparison means nothing.
    let wasm = registry
        .evaluate("rollout-percent", CONFIG, &snapshot)
        .map_err(|e| anyhow!("evaluate: {e}"))?;
    let native = native_evaluate(CONFIG, &snapshot).map_err(|e| anyhow!("native evaluate: {e}"))?;
    let decision = describe_wasm(&wasm);
    if decision != describe_native(&native) {
        bail!(
            "evaluate differs: the plugin says {decision:?}, the native logic {:?}",
            describe_native(&native)
        );
    }
    let parsed: StatusReport = registry
        .parse_status("esp32", "{}", DEVICE, &payload)
        .map_err(|e| anyhow!("parse-status: {e}"))?
        .report;
    let status = native_parse(DEVICE, &payload).map_err(|e| anyhow!("native parse: {e}"))?;
    if parsed.message_id != status.message_id
        || parsed.device_id != status.device_id
        || parsed.progress != status.progress
        || parsed.execution_id != status.execution_id
        || parsed.state.as_str() != "downloading"
    {
        bail!("parse-status differs between the plugin and the native logic");
    }

    let batch: Vec<(&str, &[u8])> = vec![(DEVICE, payload.as_slice()); BATCH];
    let batched = registry.parse_statuses("esp32", "{}", &batch);
    if batched.len() != BATCH
        || batched
            .iter()
            .any(|p| p.as_ref().map(|p| &p.report.message_id).ok() != Some(&status.message_id))
    {
        bail!("parse-statuses differs from parse-status");
    }

    let (warmup, calls) = (sizes.plugin_warmup, sizes.plugin_calls);
    let batches = (calls / BATCH).max(10);
    let mut parse_batched = time(warmup / BATCH + 1, batches, || {
        let parsed = registry.parse_statuses("esp32", "{}", black_box(&batch));
        match parsed.iter().find_map(|p| p.as_ref().err()) {
            Some(error) => Err(anyhow!("parse-statuses: {error}")),
            None => Ok(parsed),
        }
    })?;
    for t in [
        &mut parse_batched.mean,
        &mut parse_batched.p50,
        &mut parse_batched.p99,
    ] {
        *t /= BATCH as f64;
    }
    parse_batched.calls *= BATCH;
    Ok(Results {
        parse_batched,
        evaluate_wasm: time(warmup, calls, || {
            registry.evaluate("rollout-percent", black_box(CONFIG), black_box(&snapshot))
        })?,
        evaluate_native: time(warmup, calls, || {
            native_evaluate(black_box(CONFIG), black_box(&snapshot))
        })?,
        parse_wasm: time(warmup, calls, || {
            registry.parse_status("esp32", "{}", black_box(DEVICE), black_box(&payload))
        })?,
        parse_native: time(warmup, calls, || {
            native_parse(black_box(DEVICE), black_box(&payload))
        })?,
        decision,
    })
}

pub async fn run(sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let name = "plugins";
    eprintln!(
        "== plugins: {} calls each after {} warm-up calls",
        sizes.plugin_calls, sizes.plugin_warmup
    );
    let owned = sizes.clone();
    let results = tokio::task::spawn_blocking(move || measure(&owned))
        .await
        .context("the plugin benchmark panicked")??;
    for (label, wasm, native) in [
        ("evaluate", &results.evaluate_wasm, &results.evaluate_native),
        ("parse-status", &results.parse_wasm, &results.parse_native),
    ] {
        eprintln!(
            "   {label}: plugin mean {:.1} µs (p99 {:.1}), native mean {:.2} µs (p99 {:.2})",
            wasm.mean, wasm.p99, native.mean, native.p99
        );
    }
    report.detail(
        name,
        "evaluate",
        json!({
            "plugin": results.evaluate_wasm.json(), "native": results.evaluate_native.json(),
            "decision": results.decision, "config": CONFIG,
        }),
    );
    eprintln!(
        "   parse-statuses, {BATCH} a call: plugin mean {:.2} µs a status",
        results.parse_batched.mean
    );
    report.detail(
        name,
        "parse_status",
        json!({
            "plugin": results.parse_wasm.json(), "native": results.parse_native.json(),
            "plugin_batched": { "statuses_per_call": BATCH, "per_status": results.parse_batched.json() },
        }),
    );
    for (label, wasm, native, target) in [
        (
            "plugins: rollout evaluate per call",
            &results.evaluate_wasm,
            &results.evaluate_native,
            50.0,
        ),
        (
            "plugins: esp32 parse-status per call",
            &results.parse_wasm,
            &results.parse_native,
            10.0,
        ),
    ] {
        report.push(Row {
            benchmark: label.into(),
            figure: format!("{:.1} µs (p99 {:.1})", wasm.mean, wasm.p99),
            baseline: format!("native {:.2} µs", native.mean),
            ratio: report::ratio(wasm.mean, native.mean).0,
            target: format!("< {target:.0} µs"),
            met: Some(wasm.mean < target),
        });
    }
    // How ingestion calls it: one instance for a lane's batch.
    report.push(Row {
        benchmark: format!("plugins: esp32 parse-statuses, {BATCH} a call"),
        figure: format!("{:.2} µs a status", results.parse_batched.mean),
        baseline: format!("native {:.2} µs", results.parse_native.mean),
        ratio: report::ratio(results.parse_batched.mean, results.parse_native.mean).0,
        target: "—".into(),
        met: None,
    });
    Ok(())
}

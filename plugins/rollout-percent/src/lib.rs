//! `rollout-percent`: releases a job in batches given as cumulative
//! percentages of the fleet (or as a fixed size), starts the next batch once
//! enough of the current one succeeded (after an optional soak time), and
//! aborts or pauses when a batch's failures pass a threshold.
//!
//! Configuration (all optional):
//! ```json
//! {"batches": [10, 50, 100], "success_threshold": 95, "failure_threshold": 10,
//!  "on_failure": "abort", "min_soak_secs": 0}
//! ```
//! or `{"batch_size": 500, ...}` instead of `batches`.

wit_bindgen::generate!({ world: "rollout-strategy-settings", path: "../../wit" });

use rollway_plugin_sdk::rollout::{Decision, RolloutStrategy, Snapshot};
use serde::Deserialize;

/// Most batch groups a plan may have.
const MAX_GROUPS: usize = 1000;
/// How long to wait between evaluations when nothing else is due.
const IDLE_WAIT_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnFailure {
    Abort,
    Pause,
}

/// The job's rollout configuration (public so that benchmarks can run the
/// same logic natively; parse it with `rollway_plugin_sdk::rollout::load_config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    batches: Option<Vec<f64>>,
    batch_size: Option<u32>,
    success_threshold: f64,
    failure_threshold: f64,
    on_failure: OnFailure,
    min_soak_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batches: None,
            batch_size: None,
            success_threshold: 95.0,
            failure_threshold: 10.0,
            on_failure: OnFailure::Abort,
            min_soak_secs: 0,
        }
    }
}

fn check(config: &Config) -> Result<(), String> {
    if config.batches.is_some() && config.batch_size.is_some() {
        return Err("give either 'batches' or 'batch_size', not both".into());
    }
    if let Some(batches) = &config.batches {
        if batches.is_empty() || batches.len() > MAX_GROUPS {
            return Err(format!("'batches' must list 1 to {MAX_GROUPS} percentages"));
        }
        let mut previous = 0.0;
        for p in batches {
            if !(*p > previous && *p <= 100.0) {
                return Err(format!(
                    "'batches' must be increasing cumulative percentages in (0, 100]; {p} follows {previous}"
                ));
            }
            previous = *p;
        }
        if previous != 100.0 {
            return Err(format!("the last of 'batches' must be 100, not {previous}"));
        }
    }
    if config.batch_size == Some(0) {
        return Err("'batch_size' must be at least 1".into());
    }
    for (name, value) in [
        ("success_threshold", config.success_threshold),
        ("failure_threshold", config.failure_threshold),
    ] {
        if !(0.0..=100.0).contains(&value) {
            return Err(format!("'{name}' must be between 0 and 100, not {value}"));
        }
    }
    Ok(())
}

fn plan(config: &Config, total: u32) -> Result<Vec<u32>, String> {
    if total == 0 {
        return Ok(Vec::new());
    }
    let sizes: Vec<u32> = if let Some(size) = config.batch_size {
        let groups = total.div_ceil(size) as usize;
        if groups > MAX_GROUPS {
            return Err(format!(
                "batch_size {size} makes {groups} batches for {total} devices; at most {MAX_GROUPS}"
            ));
        }
        (0..groups as u32)
            .map(|g| size.min(total - g * size))
            .collect()
    } else {
        let percents = config
            .batches
            .clone()
            .unwrap_or_else(|| vec![10.0, 50.0, 100.0]);
        let mut sizes = Vec::with_capacity(percents.len());
        let mut released: u32 = 0;
        for p in percents {
            let bound = ((f64::from(total) * p / 100.0).ceil() as u32).clamp(released, total);
            if bound > released {
                sizes.push(bound - released);
                released = bound;
            }
        }
        sizes
    };
    Ok(sizes)
}

fn evaluate(config: &Config, snapshot: &Snapshot) -> Decision {
    let batches = &snapshot.batches;
    let Some((current_index, current)) = snapshot.current() else {
        return if batches.is_empty() {
            Decision::Complete
        } else {
            Decision::StartNextBatch
        };
    };
    let failed = current.failure_percent();
    if failed > config.failure_threshold {
        let reason = format!(
            "batch {} has {:.1}% failed or timed out devices, above the {}% threshold",
            current.group, failed, config.failure_threshold
        );
        return match config.on_failure {
            OnFailure::Abort => Decision::Abort(reason),
            OnFailure::Pause => Decision::Pause(reason),
        };
    }
    if current_index + 1 == batches.len() {
        return if snapshot.all_finished() {
            Decision::Complete
        } else {
            Decision::Wait(IDLE_WAIT_MS)
        };
    }
    let succeeded = current.success_percent();
    if succeeded >= config.success_threshold {
        let soak_ms = config.min_soak_secs.saturating_mul(1000);
        let since = snapshot
            .now
            .saturating_sub(current.started_at.unwrap_or(snapshot.now));
        if since < soak_ms {
            return Decision::Wait(soak_ms - since);
        }
        return Decision::StartNextBatch;
    }
    if current.finished() {
        return Decision::Pause(format!(
            "batch {} finished with {:.1}% succeeded, below the {}% needed to continue",
            current.group, succeeded, config.success_threshold
        ));
    }
    Decision::Wait(IDLE_WAIT_MS)
}

/// The strategy (public so that benchmarks can call it natively).
pub struct RolloutPercent;

impl RolloutStrategy for RolloutPercent {
    type Config = Config;
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "rollout-percent configuration",
  "type": "object",
  "additionalProperties": false,
  "not": { "required": ["batches", "batch_size"] },
  "properties": {
    "batches": {
      "type": "array", "minItems": 1, "maxItems": 1000,
      "items": { "type": "number", "exclusiveMinimum": 0, "maximum": 100 },
      "description": "Cumulative percentages of the fleet released batch by batch, increasing, the last 100 (e.g. 10, 50, 100). Not with batch_size."
    },
    "batch_size": {
      "type": "integer", "minimum": 1,
      "description": "Devices per batch, instead of batches."
    },
    "success_threshold": {
      "type": "number", "minimum": 0, "maximum": 100, "default": 95,
      "description": "Percent of a batch that must succeed before the next is released."
    },
    "failure_threshold": {
      "type": "number", "minimum": 0, "maximum": 100, "default": 10,
      "description": "Percent of a batch failed or timed out beyond which the job stops (see on_failure)."
    },
    "on_failure": {
      "type": "string", "enum": ["abort", "pause"], "default": "abort",
      "description": "What passing the failure threshold does: abort the job, or pause it for an operator."
    },
    "min_soak_secs": {
      "type": "integer", "minimum": 0, "default": 0,
      "description": "Seconds a batch runs at least before the next is released."
    }
  }
}"#,
    );

    fn check(config: &Config) -> Result<(), String> {
        check(config)
    }

    fn plan(config: &Config, total: u32) -> Result<Vec<u32>, String> {
        plan(config, total)
    }

    fn evaluate(config: &Config, snapshot: &Snapshot) -> Decision {
        evaluate(config, snapshot)
    }
}

rollway_plugin_sdk::rollout_plugin!(
    RolloutPercent,
    name: "rollout-percent",
    description: "Batches by cumulative percentage; next batch on success threshold, abort on failure threshold",
);
rollway_plugin_sdk::rollout_settings!(RolloutPercent);

#[cfg(test)]
mod tests {
    use super::*;
    use rollway_plugin_sdk::rollout::Batch;

    fn batch(group: u32, total: u32, started: bool) -> Batch {
        Batch {
            group,
            total,
            pending: if started { 0 } else { total },
            in_flight: if started { total } else { 0 },
            succeeded: 0,
            failed: 0,
            timed_out: 0,
            cancelled: 0,
            started_at: started.then_some(1_000),
        }
    }

    fn snapshot(batches: Vec<Batch>) -> Snapshot {
        Snapshot {
            now: 61_000,
            job_started_at: 1_000,
            batches,
        }
    }

    fn config(text: &str) -> Result<Config, String> {
        rollway_plugin_sdk::rollout::load_config::<RolloutPercent>(text)
    }

    fn cfg(text: &str) -> Config {
        config(text).unwrap()
    }

    #[test]
    fn plans_cumulative_percentages() {
        assert_eq!(plan(&cfg("{}"), 1000), Ok(vec![100, 400, 500]));
        assert_eq!(
            plan(&cfg(r#"{"batches":[10,50,100]}"#), 3),
            Ok(vec![1, 1, 1])
        );
        assert_eq!(plan(&cfg(r#"{"batches":[1,100]}"#), 10), Ok(vec![1, 9]));
        assert_eq!(plan(&cfg(r#"{"batches":[50,100]}"#), 1), Ok(vec![1]));
        assert_eq!(
            plan(&cfg(r#"{"batch_size":300}"#), 1000),
            Ok(vec![300, 300, 300, 100])
        );
        assert_eq!(plan(&cfg("{}"), 0), Ok(vec![]));
        assert!(plan(&cfg(r#"{"batch_size":1}"#), 5000).is_err());
        for total in [1u32, 7, 99, 1000, 1_000_000] {
            let sizes = plan(&cfg(r#"{"batches":[1,5,25,100]}"#), total).unwrap_or_default();
            assert_eq!(sizes.iter().sum::<u32>(), total);
            assert!(sizes.iter().all(|s| *s > 0));
        }
    }

    #[test]
    fn refuses_bad_configs() {
        for bad in [
            r#"{"batches":[]}"#,
            r#"{"batches":[50,40,100]}"#,
            r#"{"batches":[10,50]}"#,
            r#"{"batches":[10,100],"batch_size":5}"#,
            r#"{"batch_size":0}"#,
            r#"{"success_threshold":120}"#,
            r#"{"on_failure":"explode"}"#,
            r#"{"unknown":1}"#,
            "[1]",
        ] {
            assert!(config(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn starts_the_first_batch_then_waits_for_success() {
        let c = cfg("{}");
        let fresh = snapshot(vec![batch(0, 10, false), batch(1, 40, false)]);
        assert_eq!(evaluate(&c, &fresh), Decision::StartNextBatch);
        let mut running = snapshot(vec![batch(0, 10, true), batch(1, 40, false)]);
        assert_eq!(evaluate(&c, &running), Decision::Wait(IDLE_WAIT_MS));
        running.batches[0].in_flight = 0;
        running.batches[0].succeeded = 10;
        assert_eq!(evaluate(&c, &running), Decision::StartNextBatch);
    }

    #[test]
    fn soaks_before_the_next_batch() {
        let c = cfg(r#"{"min_soak_secs":120,"success_threshold":50}"#);
        let mut s = snapshot(vec![batch(0, 10, true), batch(1, 10, false)]);
        s.batches[0].succeeded = 5;
        s.batches[0].in_flight = 5;
        assert_eq!(evaluate(&c, &s), Decision::Wait(60_000));
    }

    #[test]
    fn aborts_or_pauses_on_failures() {
        let mut s = snapshot(vec![batch(0, 10, true), batch(1, 10, false)]);
        s.batches[0].failed = 2;
        s.batches[0].in_flight = 8;
        assert!(matches!(evaluate(&cfg("{}"), &s), Decision::Abort(r) if r.contains("20.0%")));
        assert!(matches!(
            evaluate(&cfg(r#"{"on_failure":"pause"}"#), &s),
            Decision::Pause(_)
        ));
        assert_eq!(
            evaluate(&cfg(r#"{"failure_threshold":25}"#), &s),
            Decision::Wait(IDLE_WAIT_MS)
        );
    }

    #[test]
    fn completes_when_the_last_batch_is_done_and_pauses_when_stuck() {
        let mut s = snapshot(vec![batch(0, 10, true), batch(1, 10, true)]);
        for b in &mut s.batches {
            b.in_flight = 0;
            b.succeeded = 10;
        }
        assert_eq!(evaluate(&cfg("{}"), &s), Decision::Complete);
        let mut stuck = snapshot(vec![batch(0, 10, true), batch(1, 10, false)]);
        stuck.batches[0].in_flight = 0;
        stuck.batches[0].succeeded = 9;
        stuck.batches[0].cancelled = 1;
        assert!(matches!(evaluate(&cfg("{}"), &stuck), Decision::Pause(_)));
    }
}

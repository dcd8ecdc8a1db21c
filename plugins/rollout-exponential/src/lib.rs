//! `rollout-exponential`: releases every device at once and paces the job
//! by its dispatch rate, as AWS IoT Jobs' exponential rollouts do. The
//! rate starts at `base_per_minute` and is multiplied by
//! `increment_factor` each time `increase_every` more devices succeeded
//! (or `increase_every_percent` of the fleet), up to `max_per_minute`.
//! Abort criteria stop the job when a class of failures passes its share
//! of the finished devices, once enough have finished.
//!
//! Configuration (all optional):
//! ```json
//! {"base_per_minute": 60, "increment_factor": 2, "increase_every": 50,
//!  "max_per_minute": 1000,
//!  "abort": [{"class": "flash", "threshold_percent": 10, "min_finished": 20}]}
//! ```
//! A criterion's `class` is a failure class (`download`, `verification`,
//! `incompatible`, `flash`, `power`, `rejected-by-device`, `timeout`,
//! `other`) or `any`; its `action` is `abort` (the default) or `pause`.

wit_bindgen::generate!({ world: "rollout-strategy-rules", path: "../../wit" });

use rollway_plugin_sdk::failure::FailureClass;
use rollway_plugin_sdk::strategy::{
    Amount, Group, Halt, Population, Selector, Situation, Strategy, Verdict,
};
use serde::Deserialize;

/// How long to wait between evaluations when nothing else is due.
const IDLE_WAIT_MS: u64 = 2_000;
/// How soon to look again after changing the rate.
const AFTER_RATE_MS: u64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum Action {
    #[default]
    Abort,
    Pause,
}

/// When failures stop the job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// A failure class, or `any`.
    class: String,
    threshold_percent: f64,
    #[serde(default)]
    min_finished: u32,
    #[serde(default)]
    action: Action,
}

/// The job's rollout configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    base_per_minute: u32,
    increment_factor: f64,
    increase_every: Option<u32>,
    increase_every_percent: Option<f64>,
    max_per_minute: u32,
    abort: Vec<Criterion>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_per_minute: 60,
            increment_factor: 2.0,
            increase_every: None,
            increase_every_percent: None,
            max_per_minute: 1_000,
            abort: vec![Criterion {
                class: "flash".into(),
                threshold_percent: 10.0,
                min_finished: 20,
                action: Action::Abort,
            }],
        }
    }
}

fn check(config: &Config) -> Result<(), String> {
    if config.base_per_minute == 0 {
        return Err("'base_per_minute' must be at least 1".into());
    }
    if config.max_per_minute < config.base_per_minute {
        return Err(format!(
            "'max_per_minute' ({}) must be at least 'base_per_minute' ({})",
            config.max_per_minute, config.base_per_minute
        ));
    }
    if !(config.increment_factor > 1.0 && config.increment_factor <= 5.0) {
        return Err(format!(
            "'increment_factor' must be above 1 and at most 5, not {}",
            config.increment_factor
        ));
    }
    match (config.increase_every, config.increase_every_percent) {
        (Some(_), Some(_)) => {
            return Err("give 'increase_every' or 'increase_every_percent', not both".into());
        }
        (Some(0), None) => return Err("'increase_every' must be at least 1".into()),
        (None, Some(p)) if !(p > 0.0 && p <= 100.0) => {
            return Err(format!(
                "'increase_every_percent' must be in (0, 100], not {p}"
            ));
        }
        _ => {}
    }
    for criterion in &config.abort {
        if criterion.class != "any" && FailureClass::parse(&criterion.class).is_none() {
            return Err(format!(
                "unknown failure class '{}' (one of download, verification, incompatible, flash, \
                 power, rejected-by-device, timeout, other, or any)",
                criterion.class
            ));
        }
        if !(criterion.threshold_percent > 0.0 && criterion.threshold_percent <= 100.0) {
            return Err(format!(
                "'threshold_percent' must be in (0, 100], not {}",
                criterion.threshold_percent
            ));
        }
    }
    Ok(())
}

/// Devices that must succeed for each step up of the rate.
fn step(config: &Config, total: u32) -> u32 {
    match (config.increase_every, config.increase_every_percent) {
        (Some(n), _) => n,
        (None, Some(p)) => ((f64::from(total) * p / 100.0).ceil() as u32).max(1),
        // By default: every 10% of the fleet.
        (None, None) => total.div_ceil(10).max(1),
    }
}

/// The rate after `succeeded` devices succeeded out of `total`.
pub fn rate(config: &Config, total: u32, succeeded: u32) -> u32 {
    let steps = succeeded / step(config, total);
    let rate =
        f64::from(config.base_per_minute) * config.increment_factor.powi(steps.min(64) as i32);
    if rate >= f64::from(config.max_per_minute) {
        config.max_per_minute
    } else {
        (rate.floor() as u32).max(1)
    }
}

fn evaluate(config: &Config, situation: &Situation) -> Verdict {
    let finished = situation.finished_devices();
    for criterion in &config.abort {
        if finished == 0 || finished < criterion.min_finished {
            continue;
        }
        let class = FailureClass::parse(&criterion.class);
        let failures = match class {
            Some(class) => situation.failures_of(class),
            None => situation
                .batches
                .iter()
                .map(|b| b.failed + b.timed_out)
                .sum(),
        };
        let percent = f64::from(failures) * 100.0 / f64::from(finished);
        if percent >= criterion.threshold_percent {
            let halt = Halt {
                reason: format!(
                    "{failures} of {finished} finished devices failed with {} ({percent:.1}%, \
                     the limit is {}%)",
                    criterion.class, criterion.threshold_percent
                ),
                class,
            };
            return match criterion.action {
                Action::Abort => Verdict::Abort(halt),
                Action::Pause => Verdict::Pause(halt),
            };
        }
    }
    let total: u32 = situation.batches.iter().map(|b| b.total).sum();
    let wanted = rate(config, total, situation.succeeded());
    if situation.rate_limit != Some(wanted) {
        return Verdict::SetRate {
            per_minute: Some(wanted),
            then_wait_ms: AFTER_RATE_MS,
        };
    }
    if situation.batches.iter().any(|b| b.started_at.is_none()) {
        return Verdict::StartNextBatch;
    }
    if situation.all_finished() {
        return Verdict::Complete;
    }
    Verdict::Wait(IDLE_WAIT_MS)
}

/// The strategy (public so that benchmarks can call it natively).
pub struct RolloutExponential;

impl Strategy for RolloutExponential {
    type Config = Config;
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "rollout-exponential configuration",
  "type": "object",
  "additionalProperties": false,
  "not": { "required": ["increase_every", "increase_every_percent"] },
  "properties": {
    "base_per_minute": {
      "type": "integer", "minimum": 1, "default": 60,
      "description": "Devices sent their command per minute at first."
    },
    "increment_factor": {
      "type": "number", "exclusiveMinimum": 1, "maximum": 5, "default": 2,
      "description": "What the rate is multiplied by at each step up."
    },
    "increase_every": {
      "type": "integer", "minimum": 1,
      "description": "The rate steps up each time this many more devices succeeded (default: every 10% of the fleet)."
    },
    "increase_every_percent": {
      "type": "number", "exclusiveMinimum": 0, "maximum": 100,
      "description": "Or each time this percentage of the fleet more succeeded."
    },
    "max_per_minute": {
      "type": "integer", "minimum": 1, "default": 1000,
      "description": "The rate never goes above this."
    },
    "abort": {
      "type": "array",
      "description": "When failures stop the job: a class (or any) passing a percentage of the finished devices, once enough finished.",
      "items": {
        "type": "object", "additionalProperties": false, "required": ["class", "threshold_percent"],
        "properties": {
          "class": {
            "type": "string",
            "enum": ["any", "download", "verification", "incompatible", "flash", "power", "rejected-by-device", "timeout", "other"],
            "description": "The failure class counted."
          },
          "threshold_percent": {
            "type": "number", "exclusiveMinimum": 0, "maximum": 100,
            "description": "Percent of the finished devices failed with the class that stops the job."
          },
          "min_finished": {
            "type": "integer", "minimum": 0, "default": 0,
            "description": "Finished devices needed before the criterion applies."
          },
          "action": {
            "type": "string", "enum": ["abort", "pause"], "default": "abort",
            "description": "Abort the job, or pause it for an operator."
          }
        }
      }
    }
  }
}"#,
    );

    fn check(config: &Config) -> Result<(), String> {
        check(config)
    }

    fn plan(_config: &Config, population: &Population) -> Result<Vec<Group>, String> {
        Ok(vec![Group::new(
            format!("all {} devices", population.total),
            Selector::any(),
            Amount::All,
        )])
    }

    fn evaluate(config: &Config, situation: &Situation) -> Verdict {
        evaluate(config, situation)
    }
}

rollway_plugin_sdk::strategy_plugin!(
    RolloutExponential,
    name: "rollout-exponential",
    description: "Every device at once, paced: the dispatch rate grows by a factor as devices succeed; aborts on a class of failures",
);

#[cfg(test)]
mod tests {
    use super::*;
    use rollway_plugin_sdk::strategy::Batch;

    fn cfg(text: &str) -> Config {
        rollway_plugin_sdk::strategy::load_config::<RolloutExponential>(text).unwrap()
    }

    fn situation(total: u32, succeeded: u32, failures: Vec<(FailureClass, u32)>) -> Situation {
        let failed: u32 = failures.iter().map(|(_, n)| n).sum();
        Situation {
            now: 60_000,
            job_started_at: 0,
            batches: vec![Batch {
                group: 0,
                total,
                in_flight: total - succeeded - failed,
                succeeded,
                failed,
                started_at: Some(0),
                failures,
                ..Batch::default()
            }],
            window_open: true,
            rate_limit: Some(60),
            ..Situation::default()
        }
    }

    #[test]
    fn the_rate_grows_by_the_factor_up_to_the_maximum() {
        let c = cfg(
            r#"{"base_per_minute":60,"increment_factor":2,"increase_every":10,"max_per_minute":300}"#,
        );
        assert_eq!(rate(&c, 1000, 0), 60);
        assert_eq!(rate(&c, 1000, 9), 60);
        assert_eq!(rate(&c, 1000, 10), 120);
        assert_eq!(rate(&c, 1000, 25), 240);
        assert_eq!(rate(&c, 1000, 30), 300);
        assert_eq!(rate(&c, 1000, 999), 300);
        let by_share = cfg(r#"{"increase_every_percent":5}"#);
        assert_eq!(rate(&by_share, 1000, 49), 60);
        assert_eq!(rate(&by_share, 1000, 50), 120);
    }

    #[test]
    fn sets_the_rate_then_releases_everyone() {
        let c = cfg(r#"{"base_per_minute":30}"#);
        let mut s = situation(100, 0, Vec::new());
        s.batches[0].started_at = None;
        s.batches[0].pending = 100;
        s.batches[0].in_flight = 0;
        s.rate_limit = None;
        assert_eq!(
            evaluate(&c, &s),
            Verdict::SetRate {
                per_minute: Some(30),
                then_wait_ms: AFTER_RATE_MS
            }
        );
        s.rate_limit = Some(30);
        assert_eq!(evaluate(&c, &s), Verdict::StartNextBatch);
    }

    #[test]
    fn flash_failures_abort_and_power_failures_do_not() {
        let c = cfg(
            r#"{"abort":[{"class":"flash","threshold_percent":10,"min_finished":20}],"increase_every":1000}"#,
        );
        let flash = situation(100, 20, vec![(FailureClass::Flash, 5)]);
        assert!(matches!(
            evaluate(&c, &flash),
            Verdict::Abort(Halt { class: Some(FailureClass::Flash), ref reason }) if reason.contains("5 of 25")
        ));
        let power = situation(100, 20, vec![(FailureClass::Power, 5)]);
        assert_eq!(evaluate(&c, &power), Verdict::Wait(IDLE_WAIT_MS));
        // Too few finished yet.
        let early = situation(100, 5, vec![(FailureClass::Flash, 5)]);
        assert_eq!(evaluate(&c, &early), Verdict::Wait(IDLE_WAIT_MS));
    }

    #[test]
    fn refuses_bad_configs() {
        for bad in [
            r#"{"base_per_minute":0}"#,
            r#"{"base_per_minute":100,"max_per_minute":50}"#,
            r#"{"increment_factor":1}"#,
            r#"{"increase_every":5,"increase_every_percent":5}"#,
            r#"{"abort":[{"class":"lightning","threshold_percent":5}]}"#,
            r#"{"abort":[{"class":"flash","threshold_percent":0}]}"#,
        ] {
            assert!(
                rollway_plugin_sdk::strategy::load_config::<RolloutExponential>(bad).is_err(),
                "{bad}"
            );
        }
    }
}

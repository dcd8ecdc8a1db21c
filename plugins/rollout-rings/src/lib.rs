//! `rollout-rings`: releases a job ring by ring, a ring being the devices
//! with one value of a tag (`ring` = `internal`, `0`, `1`, `2`, or one
//! site after another with `"tag": "site"`), each with its own success
//! threshold and soak time; within every ring at most `max_per_site`
//! devices of one site update at once. Devices in no ring go last.
//!
//! Configuration (all optional):
//! ```json
//! {"tag": "ring",
//!  "rings": [{"value": "internal", "success_threshold": 100, "soak_secs": 600},
//!            "0", "1", "2"],
//!  "success_threshold": 95, "soak_secs": 0,
//!  "site_tag": "site", "max_per_site": 2,
//!  "failure_threshold": 10, "ignore": ["power"], "on_failure": "pause"}
//! ```
//! Without `rings`, every value of the tag is a ring, the most common
//! first. A ring's failures are its failed and timed-out devices, leaving
//! out the classes in `ignore` (a flat battery says nothing of the image).
//! The next ring starts once the current one's successes reach its
//! threshold and its soak time has passed since it was released, and
//! only while a maintenance window is open.

wit_bindgen::generate!({ world: "rollout-strategy-rules", path: "../../wit" });

use rollway_plugin_sdk::failure::FailureClass;
use rollway_plugin_sdk::strategy::{
    Amount, Batch, Group, Halt, Population, Selector, Situation, Strategy, Verdict,
};
use serde::Deserialize;

/// How long to wait between evaluations when nothing else is due.
const IDLE_WAIT_MS: u64 = 5_000;
/// Most rings.
const MAX_RINGS: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum OnFailure {
    Abort,
    #[default]
    Pause,
}

/// One ring: a value of the tag, with thresholds of its own.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Ring {
    Value(String),
    Detailed {
        value: String,
        success_threshold: Option<f64>,
        soak_secs: Option<u64>,
    },
}

impl Ring {
    fn value(&self) -> &str {
        match self {
            Ring::Value(value) | Ring::Detailed { value, .. } => value,
        }
    }
}

/// The job's rollout configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    tag: String,
    rings: Option<Vec<Ring>>,
    success_threshold: f64,
    soak_secs: u64,
    site_tag: String,
    max_per_site: Option<u32>,
    failure_threshold: f64,
    ignore: Vec<String>,
    on_failure: OnFailure,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tag: "ring".into(),
            rings: None,
            success_threshold: 95.0,
            soak_secs: 0,
            site_tag: "site".into(),
            max_per_site: None,
            failure_threshold: 10.0,
            ignore: vec!["power".into()],
            on_failure: OnFailure::Pause,
        }
    }
}

fn percent_ok(name: &str, value: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("'{name}' must be between 0 and 100, not {value}"))
    }
}

fn check(config: &Config) -> Result<(), String> {
    if config.tag.is_empty() || config.site_tag.is_empty() {
        return Err("'tag' and 'site_tag' must name a tag".into());
    }
    percent_ok("success_threshold", config.success_threshold)?;
    percent_ok("failure_threshold", config.failure_threshold)?;
    if config.max_per_site == Some(0) {
        return Err("'max_per_site' must be at least 1".into());
    }
    if let Some(rings) = &config.rings {
        if rings.is_empty() || rings.len() > MAX_RINGS {
            return Err(format!("'rings' must list 1 to {MAX_RINGS} rings"));
        }
        for (i, ring) in rings.iter().enumerate() {
            if rings[..i].iter().any(|r| r.value() == ring.value()) {
                return Err(format!("ring '{}' is listed twice", ring.value()));
            }
            if let Ring::Detailed {
                success_threshold: Some(t),
                ..
            } = ring
            {
                percent_ok("success_threshold", *t)?;
            }
        }
    }
    for class in &config.ignore {
        if FailureClass::parse(class).is_none() {
            return Err(format!("'ignore' names no failure class: '{class}'"));
        }
    }
    Ok(())
}

/// The label of a ring's group: what `evaluate` finds the ring by.
fn label(value: &str) -> String {
    format!("ring {value}")
}

fn plan(config: &Config, population: &Population) -> Result<Vec<Group>, String> {
    let values: Vec<String> = match &config.rings {
        Some(rings) => rings.iter().map(|r| r.value().to_owned()).collect(),
        None => population
            .tag(&config.tag)
            .map(|t| t.values.iter().map(|v| v.value.clone()).collect())
            .unwrap_or_default(),
    };
    let spread = |group: Group| match config.max_per_site {
        Some(n) => group.spread(&config.site_tag, n),
        None => group,
    };
    let mut groups: Vec<Group> = values
        .iter()
        .map(|value| {
            spread(Group::new(
                label(value),
                Selector::any().tag(&config.tag, [value.as_str()]),
                Amount::All,
            ))
        })
        .collect();
    // Devices in no ring: last, under the same limits.
    groups.push(spread(Group::new("rest", Selector::any(), Amount::All)));
    Ok(groups)
}

/// The success threshold and soak time of the ring of `batch`.
fn thresholds(config: &Config, batch: &Batch) -> (f64, u64) {
    let ring = config
        .rings
        .iter()
        .flatten()
        .find(|r| label(r.value()) == batch.label);
    match ring {
        Some(Ring::Detailed {
            success_threshold,
            soak_secs,
            ..
        }) => (
            success_threshold.unwrap_or(config.success_threshold),
            soak_secs.unwrap_or(config.soak_secs),
        ),
        _ => (config.success_threshold, config.soak_secs),
    }
}

/// A ring's failures that count, and the class most of them have.
fn counted_failures(config: &Config, batch: &Batch) -> (u32, Option<FailureClass>) {
    let counted: Vec<(FailureClass, u32)> = batch
        .failures
        .iter()
        .filter(|(class, _)| !config.ignore.iter().any(|i| i == class.as_str()))
        .copied()
        .collect();
    let total = counted.iter().map(|(_, n)| n).sum();
    let most = counted.iter().max_by_key(|(_, n)| *n).map(|(c, _)| *c);
    (total, most)
}

fn evaluate(config: &Config, situation: &Situation) -> Verdict {
    let batches = &situation.batches;
    let Some((index, current)) = situation.current() else {
        return if batches.is_empty() {
            Verdict::Complete
        } else {
            Verdict::StartNextBatch
        };
    };
    let (failures, class) = counted_failures(config, current);
    let failed = f64::from(failures) * 100.0 / f64::from(current.total.max(1));
    if failed > config.failure_threshold {
        let halt = Halt {
            reason: format!(
                "{} has {failed:.1}% failed devices ({failures} of {}), above the {}% threshold",
                current.label, current.total, config.failure_threshold
            ),
            class,
        };
        return match config.on_failure {
            OnFailure::Abort => Verdict::Abort(halt),
            OnFailure::Pause => Verdict::Pause(halt),
        };
    }
    if index + 1 == batches.len() {
        return if situation.all_finished() {
            Verdict::Complete
        } else {
            Verdict::Wait(IDLE_WAIT_MS)
        };
    }
    let (threshold, soak_secs) = thresholds(config, current);
    let succeeded = f64::from(current.succeeded) * 100.0 / f64::from(current.total.max(1));
    if succeeded >= threshold {
        let since = situation
            .now
            .saturating_sub(current.started_at.unwrap_or(situation.now));
        let soak_ms = soak_secs.saturating_mul(1000);
        if since < soak_ms {
            return Verdict::Wait(soak_ms - since);
        }
        if !situation.window_open {
            // The next ring waits for the next window.
            let until = situation
                .next_window_at
                .map_or(60_000, |at| at.saturating_sub(situation.now));
            return Verdict::Wait(until.clamp(1_000, 600_000));
        }
        return Verdict::StartNextBatch;
    }
    if current.finished() {
        return Verdict::Pause(Halt {
            reason: format!(
                "{} finished with {succeeded:.1}% succeeded, below the {threshold}% needed to go on",
                current.label
            ),
            class: None,
        });
    }
    Verdict::Wait(IDLE_WAIT_MS)
}

/// The strategy (public so that benchmarks can call it natively).
pub struct RolloutRings;

impl Strategy for RolloutRings {
    type Config = Config;
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "rollout-rings configuration",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "tag": {
      "type": "string", "minLength": 1, "default": "ring",
      "description": "The device tag whose values are the rings (e.g. ring, or site for one site after another)."
    },
    "rings": {
      "type": "array", "minItems": 1, "maxItems": 1000,
      "description": "The rings in order: values of the tag, or objects with a value and thresholds of their own. Default: every value, the most common first.",
      "items": {
        "anyOf": [
          { "type": "string" },
          {
            "type": "object", "additionalProperties": false, "required": ["value"],
            "properties": {
              "value": { "type": "string" },
              "success_threshold": { "type": "number", "minimum": 0, "maximum": 100 },
              "soak_secs": { "type": "integer", "minimum": 0 }
            }
          }
        ]
      }
    },
    "success_threshold": {
      "type": "number", "minimum": 0, "maximum": 100, "default": 95,
      "description": "Percent of a ring that must succeed before the next starts."
    },
    "soak_secs": {
      "type": "integer", "minimum": 0, "default": 0,
      "description": "Seconds a ring runs at least before the next starts."
    },
    "site_tag": {
      "type": "string", "minLength": 1, "default": "site",
      "description": "The device tag that names a device's site."
    },
    "max_per_site": {
      "type": "integer", "minimum": 1,
      "description": "At most this many devices of one site update at once (default: no limit)."
    },
    "failure_threshold": {
      "type": "number", "minimum": 0, "maximum": 100, "default": 10,
      "description": "Percent of a ring failed beyond which the job stops (see on_failure)."
    },
    "ignore": {
      "type": "array", "default": ["power"],
      "items": { "type": "string", "enum": ["download", "verification", "incompatible", "flash", "power", "rejected-by-device", "timeout", "other"] },
      "description": "Failure classes that do not count against a ring."
    },
    "on_failure": {
      "type": "string", "enum": ["abort", "pause"], "default": "pause",
      "description": "What passing the failure threshold does."
    }
  }
}"#,
    );

    fn check(config: &Config) -> Result<(), String> {
        check(config)
    }

    fn plan(config: &Config, population: &Population) -> Result<Vec<Group>, String> {
        plan(config, population)
    }

    fn evaluate(config: &Config, situation: &Situation) -> Verdict {
        evaluate(config, situation)
    }
}

rollway_plugin_sdk::strategy_plugin!(
    RolloutRings,
    name: "rollout-rings",
    description: "Ring by ring (a tag's values, e.g. internal, 0, 1, 2, or one site after another), each with its threshold and soak, at most N per site at once",
);

#[cfg(test)]
mod tests {
    use super::*;
    use rollway_plugin_sdk::strategy::{TagValues, ValueCount};

    fn cfg(text: &str) -> Config {
        rollway_plugin_sdk::strategy::load_config::<RolloutRings>(text).unwrap()
    }

    fn batch(label: &str, total: u32, started: bool) -> Batch {
        Batch {
            label: label.into(),
            total,
            pending: if started { 0 } else { total },
            in_flight: if started { total } else { 0 },
            started_at: started.then_some(0),
            ..Batch::default()
        }
    }

    fn situation(batches: Vec<Batch>) -> Situation {
        Situation {
            now: 60_000,
            batches,
            window_open: true,
            ..Situation::default()
        }
    }

    #[test]
    fn plans_one_group_per_ring_then_the_rest() {
        let population = Population {
            total: 10,
            tags: vec![TagValues {
                key: "ring".into(),
                values: vec![
                    ValueCount {
                        value: "1".into(),
                        devices: 6,
                    },
                    ValueCount {
                        value: "internal".into(),
                        devices: 2,
                    },
                ],
                unlisted: 0,
            }],
            ..Population::default()
        };
        let groups = plan(
            &cfg(r#"{"rings":["internal","1"],"max_per_site":2}"#),
            &population,
        )
        .unwrap();
        let labels: Vec<&str> = groups.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["ring internal", "ring 1", "rest"]);
        assert_eq!(
            groups[0].select.tags,
            vec![("ring".to_owned(), vec!["internal".to_owned()])]
        );
        assert!(groups.iter().all(|g| g.spread == Some(("site".into(), 2))));
        // Without rings, the population's values in its order.
        let groups = plan(&cfg("{}"), &population).unwrap();
        assert_eq!(groups[0].label, "ring 1");
        assert_eq!(groups[0].spread, None);
    }

    #[test]
    fn each_ring_has_its_threshold_and_soak() {
        let c =
            cfg(r#"{"rings":[{"value":"internal","success_threshold":100,"soak_secs":120},"0"]}"#);
        let mut s = situation(vec![
            batch("ring internal", 10, true),
            batch("ring 0", 90, false),
        ]);
        s.batches[0].in_flight = 1;
        s.batches[0].succeeded = 9;
        assert_eq!(evaluate(&c, &s), Verdict::Wait(IDLE_WAIT_MS));
        s.batches[0].in_flight = 0;
        s.batches[0].succeeded = 10;
        assert_eq!(evaluate(&c, &s), Verdict::Wait(60_000), "soaks for 120 s");
        s.now = 120_000;
        assert_eq!(evaluate(&c, &s), Verdict::StartNextBatch);
        s.window_open = false;
        s.next_window_at = Some(150_000);
        assert_eq!(
            evaluate(&c, &s),
            Verdict::Wait(30_000),
            "waits for the window"
        );
    }

    #[test]
    fn power_failures_do_not_count_against_a_ring() {
        let c = cfg(r#"{"failure_threshold":10,"on_failure":"abort"}"#);
        let mut s = situation(vec![batch("ring 0", 20, true), batch("rest", 5, false)]);
        s.batches[0].failed = 5;
        s.batches[0].in_flight = 15;
        s.batches[0].failures = vec![(FailureClass::Power, 5)];
        assert_eq!(evaluate(&c, &s), Verdict::Wait(IDLE_WAIT_MS));
        s.batches[0].failures = vec![(FailureClass::Flash, 4), (FailureClass::Power, 1)];
        assert!(matches!(
            evaluate(&c, &s),
            Verdict::Abort(Halt {
                class: Some(FailureClass::Flash),
                ..
            })
        ));
    }

    #[test]
    fn refuses_bad_configs() {
        for bad in [
            r#"{"rings":[]}"#,
            r#"{"rings":["a","a"]}"#,
            r#"{"max_per_site":0}"#,
            r#"{"ignore":["lightning"]}"#,
            r#"{"success_threshold":101}"#,
            r#"{"tag":""}"#,
        ] {
            assert!(
                rollway_plugin_sdk::strategy::load_config::<RolloutRings>(bad).is_err(),
                "{bad}"
            );
        }
    }
}

//! Template rollout strategy, "canary then everyone": a few devices first,
//! a soak time, then the rest. Copy this crate to start your own strategy.
//!
//! Configuration: `{"canary": 5, "soak_secs": 600}`, described by
//! `CONFIG_SCHEMA` (the host checks configurations against it and the
//! dashboard draws its form from it).

wit_bindgen::generate!({ world: "rollout-strategy-settings", path: "../../wit" });

use rollway_plugin_sdk::rollout::{Decision, RolloutStrategy, Snapshot};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Devices in the canary batch.
    canary: u32,
    /// Time the canary must run without failure before everyone else.
    soak_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            canary: 5,
            soak_secs: 600,
        }
    }
}

struct Canary;

impl RolloutStrategy for Canary {
    type Config = Config;
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "canary": { "type": "integer", "minimum": 1, "default": 5,
                "description": "Devices in the canary batch." },
    "soak_secs": { "type": "integer", "minimum": 0, "default": 600,
                   "description": "Seconds the canary must run without failure before everyone else." }
  }
}"#,
    );

    fn check(config: &Config) -> Result<(), String> {
        if config.canary == 0 {
            return Err("'canary' must be at least 1".into());
        }
        Ok(())
    }

    fn plan(config: &Config, total: u32) -> Result<Vec<u32>, String> {
        let canary = config.canary.min(total);
        Ok([canary, total - canary]
            .into_iter()
            .filter(|n| *n > 0)
            .collect())
    }

    fn evaluate(config: &Config, snapshot: &Snapshot) -> Decision {
        decide(config, snapshot)
    }
}

rollway_plugin_sdk::rollout_plugin!(
    Canary,
    name: "rollout-canary",
    description: "Canary batch, soak, then everyone (template)",
);
rollway_plugin_sdk::rollout_settings!(Canary);

/// Writes to the host's log (the `log` import exists only in the component;
/// native unit tests print instead).
fn note(message: &str) {
    #[cfg(target_arch = "wasm32")]
    rollway::plugin::log::write(rollway::plugin::types::LogLevel::Info, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{message}");
}

fn decide(config: &Config, snapshot: &Snapshot) -> Decision {
    let [canary, rest @ ..] = snapshot.batches.as_slice() else {
        return Decision::Complete;
    };
    let Some(started) = canary.started_at else {
        return Decision::StartNextBatch;
    };
    if canary.failed + canary.timed_out > 0 {
        return Decision::Abort(format!(
            "{} canary device(s) failed",
            canary.failed + canary.timed_out
        ));
    }
    let everyone = rest.first();
    match everyone {
        Some(batch) if batch.started_at.is_none() => {
            if canary.succeeded < canary.total {
                return Decision::Wait(5_000);
            }
            let soaked = snapshot.now.saturating_sub(started);
            let soak = config.soak_secs * 1000;
            if soaked < soak {
                Decision::Wait(soak - soaked)
            } else {
                note("canary healthy, releasing everyone");
                Decision::StartNextBatch
            }
        }
        _ if snapshot
            .batches
            .iter()
            .all(|b| b.pending == 0 && b.in_flight == 0) =>
        {
            Decision::Complete
        }
        _ => Decision::Wait(10_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollway_plugin_sdk::rollout::{Batch, load_config};

    #[test]
    fn canary_then_everyone() {
        let config = load_config::<Canary>(r#"{"canary": 2, "soak_secs": 60}"#).unwrap();
        assert_eq!(Canary::plan(&config, 10).unwrap(), [2, 8]);
        let canary = Batch {
            group: 0,
            total: 2,
            succeeded: 2,
            started_at: Some(0),
            ..Batch::default()
        };
        let rest = Batch {
            group: 1,
            total: 8,
            pending: 8,
            ..Batch::default()
        };
        let at = |now| Snapshot {
            now,
            job_started_at: 0,
            batches: vec![canary, rest],
        };
        assert_eq!(
            Canary::evaluate(&config, &at(30_000)),
            Decision::Wait(30_000)
        );
        assert_eq!(
            Canary::evaluate(&config, &at(60_000)),
            Decision::StartNextBatch
        );
        assert!(load_config::<Canary>(r#"{"canary": 0}"#).is_err());
    }
}

//! Template rollout strategy, "canary then everyone": a few devices first,
//! a soak time, then the rest. Copy this crate to start your own strategy.
//!
//! Configuration: `{"canary": 5, "soak_secs": 600}`.

wit_bindgen::generate!({ world: "rollout-strategy", path: "../../wit" });

use exports::rollway::plugin::rollout::{Decision, Guest, Snapshot};
use rollway::plugin::log::write as log;
use rollway::plugin::types::{LogLevel, PluginInfo};
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

fn config(text: &str) -> Result<Config, String> {
    let config: Config = rollway_plugin_sdk::config::parse(text)?;
    if config.canary == 0 {
        return Err("'canary' must be at least 1".into());
    }
    Ok(config)
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
                log(LogLevel::Info, "canary healthy, releasing everyone");
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

struct Canary;

impl Guest for Canary {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "rollout-canary".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Canary batch, soak, then everyone (template)".into(),
        }
    }

    fn validate_config(text: String) -> Result<(), String> {
        config(&text).map(|_| ())
    }

    fn plan(text: String, total: u32) -> Result<Vec<u32>, String> {
        let canary = config(&text)?.canary.min(total);
        Ok([canary, total - canary]
            .into_iter()
            .filter(|n| *n > 0)
            .collect())
    }

    fn evaluate(text: String, snapshot: Snapshot) -> Result<Decision, String> {
        Ok(decide(&config(&text)?, &snapshot))
    }
}

#[cfg(target_arch = "wasm32")]
export!(Canary);

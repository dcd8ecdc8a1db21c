//! Test fixture: a rollout strategy named `rollout-halves`, built against
//! `rollway:plugin@0.1.2` (a frozen copy of that release's WIT is in
//! `wit/`). It exports `rollout` only, as every strategy did before 0.1.8:
//! it plans by a count and sees a snapshot of counts. It splits a job in
//! two halves and releases the second once the first has finished.

wit_bindgen::generate!({ world: "rollout-strategy", path: "wit" });

use exports::rollway::plugin::rollout::{Decision, Guest, Snapshot};
use rollway::plugin::types::PluginInfo;

struct Halves;

impl Guest for Halves {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "rollout-halves".into(),
            version: "0.1.2".into(),
            description: "Two halves, one after the other (WIT 0.1.2 test fixture)".into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        match config.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("takes no configuration, got {other}")),
        }
    }

    fn plan(_config: String, total: u32) -> Result<Vec<u32>, String> {
        Ok(match total {
            0 => Vec::new(),
            1 => vec![1],
            n => vec![n / 2, n - n / 2],
        })
    }

    fn evaluate(_config: String, snapshot: Snapshot) -> Result<Decision, String> {
        let started = snapshot.batches.iter().filter(|b| b.started_at.is_some());
        let finished = |b: &&exports::rollway::plugin::rollout::BatchCounts| {
            b.pending == 0 && b.in_flight == 0
        };
        Ok(
            match snapshot.batches.iter().find(|b| b.started_at.is_none()) {
                Some(_) if started.clone().all(|b| finished(&b)) => Decision::StartNextBatch,
                Some(_) => Decision::Wait(500),
                None if snapshot.batches.iter().all(|b| finished(&b)) => Decision::Complete,
                None => Decision::Wait(500),
            },
        )
    }
}

export!(Halves);

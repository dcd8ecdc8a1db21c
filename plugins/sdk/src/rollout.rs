//! The rollout-strategy side: a typed trait for strategies and the
//! `rollout_plugin!` macro that exports one as a component.

use serde::de::DeserializeOwned;

/// Executions of one batch group, counted by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batch {
    pub group: u32,
    pub total: u32,
    pub pending: u32,
    pub in_flight: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub timed_out: u32,
    pub cancelled: u32,
    /// When the batch was released (ms since the epoch).
    pub started_at: Option<u64>,
}

impl Batch {
    /// Nothing left to send and nothing in flight.
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.in_flight == 0
    }

    /// Failed and timed-out devices, in percent of the batch.
    pub fn failure_percent(&self) -> f64 {
        percent(self.failed + self.timed_out, self.total)
    }

    /// Succeeded devices, in percent of the batch.
    pub fn success_percent(&self) -> f64 {
        percent(self.succeeded, self.total)
    }
}

fn percent(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(whole)
    }
}

/// The state of a running job at one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub now: u64,
    pub job_started_at: u64,
    pub batches: Vec<Batch>,
}

impl Snapshot {
    /// The last released batch and its index.
    pub fn current(&self) -> Option<(usize, &Batch)> {
        self.batches
            .iter()
            .enumerate()
            .rev()
            .find(|(_, b)| b.started_at.is_some())
    }

    pub fn all_finished(&self) -> bool {
        self.batches.iter().all(Batch::finished)
    }
}

/// What the host should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    StartNextBatch,
    /// Evaluate again after this many milliseconds at the latest.
    Wait(u64),
    Pause(String),
    Abort(String),
    Complete,
}

/// A rollout strategy with a typed configuration.
pub trait RolloutStrategy {
    /// The job's rollout configuration; an empty config parses as `{}`.
    type Config: DeserializeOwned;

    /// A JSON Schema of [`Config`](Self::Config) (`settings.config-schema`,
    /// WIT 0.1.7), exported by [`rollout_settings!`](crate::rollout_settings):
    /// the host checks configurations against it first and the dashboard
    /// draws a form from it.
    const CONFIG_SCHEMA: Option<&'static str> = None;

    /// Rules serde cannot express; the error is shown to the operator.
    fn check(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Sizes of the ordered batch groups, positive and summing to `total`.
    fn plan(config: &Self::Config, total: u32) -> Result<Vec<u32>, String>;

    /// What to do next.
    fn evaluate(config: &Self::Config, snapshot: &Snapshot) -> Decision;
}

/// Parses and checks a configuration for `S`.
pub fn load_config<S: RolloutStrategy>(text: &str) -> Result<S::Config, String> {
    let config: S::Config = crate::config::parse(text)?;
    S::check(&config)?;
    Ok(config)
}

/// Exports a [`RolloutStrategy`] as the plugin's component. Invoke it at the
/// crate root after `wit_bindgen::generate!({ world: "rollout-strategy-settings", .. })`
/// (or `"rollout-strategy"` for a plugin without a schema), then
/// [`rollout_settings!`](crate::rollout_settings) with the settings world.
#[macro_export]
macro_rules! rollout_plugin {
    ($strategy:ty, name: $name:expr, description: $description:expr $(,)?) => {
        struct RollwayRolloutGuest;

        impl exports::rollway::plugin::rollout::Guest for RollwayRolloutGuest {
            fn info() -> rollway::plugin::types::PluginInfo {
                rollway::plugin::types::PluginInfo {
                    name: ($name).into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    description: ($description).into(),
                }
            }

            fn validate_config(config: String) -> Result<(), String> {
                $crate::rollout::load_config::<$strategy>(&config).map(|_| ())
            }

            fn plan(config: String, total: u32) -> Result<Vec<u32>, String> {
                let config = $crate::rollout::load_config::<$strategy>(&config)?;
                <$strategy as $crate::rollout::RolloutStrategy>::plan(&config, total)
            }

            fn evaluate(
                config: String,
                snapshot: exports::rollway::plugin::rollout::Snapshot,
            ) -> Result<exports::rollway::plugin::rollout::Decision, String> {
                use exports::rollway::plugin::rollout::Decision as D;
                let config = $crate::rollout::load_config::<$strategy>(&config)?;
                let snapshot = $crate::rollout::Snapshot {
                    now: snapshot.now,
                    job_started_at: snapshot.job_started_at,
                    batches: snapshot
                        .batches
                        .iter()
                        .map(|b| $crate::rollout::Batch {
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
                };
                Ok(
                    match <$strategy as $crate::rollout::RolloutStrategy>::evaluate(
                        &config, &snapshot,
                    ) {
                        $crate::rollout::Decision::StartNextBatch => D::StartNextBatch,
                        $crate::rollout::Decision::Wait(ms) => D::Wait(ms),
                        $crate::rollout::Decision::Pause(reason) => D::Pause(reason),
                        $crate::rollout::Decision::Abort(reason) => D::Abort(reason),
                        $crate::rollout::Decision::Complete => D::Complete,
                    },
                )
            }
        }

        // Exported only in the component build; native builds are for unit tests.
        #[cfg(target_arch = "wasm32")]
        export!(RollwayRolloutGuest);
    };
}

/// Exports the strategy's [`RolloutStrategy::CONFIG_SCHEMA`] (the
/// `settings` interface, WIT 0.1.7). Invoke it after
/// [`rollout_plugin!`](crate::rollout_plugin) when the plugin is built
/// against the `rollout-strategy-settings` world.
#[macro_export]
macro_rules! rollout_settings {
    ($strategy:ty $(,)?) => {
        impl exports::rollway::plugin::settings::Guest for RollwayRolloutGuest {
            fn config_schema() -> Option<String> {
                <$strategy as $crate::rollout::RolloutStrategy>::CONFIG_SCHEMA.map(str::to_owned)
            }
        }
    };
}

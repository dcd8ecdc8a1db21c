//! Rollout strategies of the 0.1.8 contract (`strategy`, world
//! `rollout-strategy-rules`): a typed trait and the `strategy_plugin!`
//! macro that exports one as a component.
//!
//! A strategy plans by what the devices are — groups with a [`Selector`]
//! on model, installed version, gateway and tags, each taking an
//! [`Amount`] of what earlier groups left — and evaluates a [`Situation`]
//! with failure classes, times to success, maintenance windows and the
//! dispatch rate, answering a [`Verdict`].

use serde::de::DeserializeOwned;

pub use crate::failure::FailureClass;

/// How many target devices share one value of an attribute.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValueCount {
    pub value: String,
    pub devices: u32,
}

/// The values one tag key takes among the target devices, the most common
/// first (at most 100 listed; `unlisted` devices have another value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagValues {
    pub key: String,
    pub values: Vec<ValueCount>,
    pub unlisted: u32,
}

/// A job's target devices, counted by attribute.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Population {
    pub total: u32,
    pub families: Vec<ValueCount>,
    pub models: Vec<ValueCount>,
    pub versions: Vec<ValueCount>,
    pub behind_gateway: u32,
    pub tags: Vec<TagValues>,
}

impl Population {
    /// The values of the tag `key`, if any target device has it.
    pub fn tag(&self, key: &str) -> Option<&TagValues> {
        self.tags.iter().find(|t| t.key == key)
    }
}

/// Which devices a group may take: every condition given holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub models: Vec<String>,
    pub versions: Vec<String>,
    pub behind_gateway: Option<bool>,
    /// For each key, the device's value is one of the values (any value
    /// when the list is empty).
    pub tags: Vec<(String, Vec<String>)>,
}

impl Selector {
    /// Any device.
    pub fn any() -> Self {
        Self::default()
    }

    /// Devices whose tag `key` is one of `values`.
    pub fn tag<I, S>(mut self, key: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags
            .push((key.to_owned(), values.into_iter().map(Into::into).collect()));
        self
    }

    /// Devices of one of these models.
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }
}

/// How many of the devices a group may take it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    All,
    Count(u32),
    /// A share in (0, 1], rounded up.
    Share(f64),
}

/// One batch group of a plan: filled in order, each taking its amount of
/// the devices that match its selector and that no earlier group took.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub label: String,
    pub select: Selector,
    pub take: Amount,
    /// At most this many of the group's devices that share a value of
    /// this tag (one site) update at once.
    pub spread: Option<(String, u32)>,
}

impl Group {
    pub fn new(label: impl Into<String>, select: Selector, take: Amount) -> Self {
        Self {
            label: label.into(),
            select,
            take,
            spread: None,
        }
    }

    /// At most `devices` devices of one value of the tag `key` at once.
    pub fn spread(mut self, key: &str, devices: u32) -> Self {
        self.spread = Some((key.to_owned(), devices));
        self
    }
}

/// One batch group of a running job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub group: u32,
    pub label: String,
    pub total: u32,
    pub pending: u32,
    pub in_flight: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub timed_out: u32,
    pub cancelled: u32,
    pub started_at: Option<u64>,
    /// Failed and timed-out devices by class.
    pub failures: Vec<(FailureClass, u32)>,
    /// From the last dispatch to success: median and 90th percentile.
    pub median_ms: Option<u64>,
    pub p90_ms: Option<u64>,
}

impl Batch {
    /// Nothing left to send and nothing in flight.
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.in_flight == 0
    }

    /// Devices that finished, one way or another (cancelled ones aside).
    pub fn finished_devices(&self) -> u32 {
        self.succeeded + self.failed + self.timed_out
    }

    /// The failures of one class.
    pub fn failures_of(&self, class: FailureClass) -> u32 {
        self.failures
            .iter()
            .filter(|(c, _)| *c == class)
            .map(|(_, n)| *n)
            .sum()
    }
}

/// The state of a running job at one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Situation {
    pub now: u64,
    pub job_started_at: u64,
    pub batches: Vec<Batch>,
    pub window_open: bool,
    pub next_window_at: Option<u64>,
    pub ends_at: Option<u64>,
    /// The dispatch rate in force (devices per minute), if any.
    pub rate_limit: Option<u32>,
    /// Devices sent their command in the last minute.
    pub sent_last_minute: u32,
}

impl Situation {
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

    /// Sums over every batch.
    pub fn succeeded(&self) -> u32 {
        self.batches.iter().map(|b| b.succeeded).sum()
    }

    pub fn finished_devices(&self) -> u32 {
        self.batches.iter().map(Batch::finished_devices).sum()
    }

    pub fn failures_of(&self, class: FailureClass) -> u32 {
        self.batches.iter().map(|b| b.failures_of(class)).sum()
    }
}

/// Why a strategy stops a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub reason: String,
    pub class: Option<FailureClass>,
}

/// What the host should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    StartNextBatch,
    /// Evaluate again after this many milliseconds at the latest.
    Wait(u64),
    Pause(Halt),
    Abort(Halt),
    Complete,
    /// Limit (or, with `None`, stop limiting) how fast commands go out,
    /// in devices per minute; evaluate again after `then_wait_ms`.
    SetRate {
        per_minute: Option<u32>,
        then_wait_ms: u64,
    },
}

/// A rollout strategy of the 0.1.8 contract with a typed configuration.
pub trait Strategy {
    /// The job's rollout configuration; an empty config parses as `{}`.
    type Config: DeserializeOwned;

    /// A JSON Schema of [`Config`](Self::Config): the host checks
    /// configurations against it first and the dashboard draws a form.
    const CONFIG_SCHEMA: Option<&'static str> = None;

    /// Rules serde cannot express; the error is shown to the operator.
    fn check(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// The ordered groups of the job's devices.
    fn plan(config: &Self::Config, population: &Population) -> Result<Vec<Group>, String>;

    /// What to do next.
    fn evaluate(config: &Self::Config, situation: &Situation) -> Verdict;
}

/// Parses and checks a configuration for `S`.
pub fn load_config<S: Strategy>(text: &str) -> Result<S::Config, String> {
    let config: S::Config = crate::config::parse(text)?;
    S::check(&config)?;
    Ok(config)
}

/// Exports a [`Strategy`] as the plugin's component. Invoke it at the crate
/// root after `wit_bindgen::generate!({ world: "rollout-strategy-rules", .. })`.
#[macro_export]
macro_rules! strategy_plugin {
    ($strategy:ty, name: $name:expr, description: $description:expr $(,)?) => {
        struct RollwayStrategyGuest;

        mod rollway_strategy_bridge {
            use super::exports::rollway::plugin::strategy as w;
            use super::rollway::plugin::types::FailureClass as C;
            use $crate::failure::FailureClass as F;
            use $crate::strategy as s;

            pub fn class_in(c: C) -> F {
                match c {
                    C::Download => F::Download,
                    C::Verification => F::Verification,
                    C::Incompatible => F::Incompatible,
                    C::Flash => F::Flash,
                    C::Power => F::Power,
                    C::RejectedByDevice => F::RejectedByDevice,
                    C::Timeout => F::Timeout,
                    C::Other => F::Other,
                }
            }

            pub fn class_out(c: F) -> C {
                match c {
                    F::Download => C::Download,
                    F::Verification => C::Verification,
                    F::Incompatible => C::Incompatible,
                    F::Flash => C::Flash,
                    F::Power => C::Power,
                    F::RejectedByDevice => C::RejectedByDevice,
                    F::Timeout => C::Timeout,
                    F::Other => C::Other,
                }
            }

            fn counts(values: Vec<w::ValueCount>) -> Vec<s::ValueCount> {
                values
                    .into_iter()
                    .map(|v| s::ValueCount {
                        value: v.value,
                        devices: v.devices,
                    })
                    .collect()
            }

            pub fn population(p: w::Population) -> s::Population {
                s::Population {
                    total: p.total,
                    families: counts(p.families),
                    models: counts(p.models),
                    versions: counts(p.versions),
                    behind_gateway: p.behind_gateway,
                    tags: p
                        .tags
                        .into_iter()
                        .map(|t| s::TagValues {
                            key: t.key,
                            values: counts(t.values),
                            unlisted: t.unlisted,
                        })
                        .collect(),
                }
            }

            pub fn group(g: s::Group) -> w::Group {
                w::Group {
                    label: g.label,
                    select: w::Selector {
                        models: g.select.models,
                        versions: g.select.versions,
                        behind_gateway: g.select.behind_gateway,
                        tags: g
                            .select
                            .tags
                            .into_iter()
                            .map(|(key, values)| w::TagMatch { key, values })
                            .collect(),
                    },
                    take: match g.take {
                        s::Amount::All => w::Amount::All,
                        s::Amount::Count(n) => w::Amount::Count(n),
                        s::Amount::Share(share) => w::Amount::Share(share),
                    },
                    spread: g.spread.map(|(key, devices)| w::Spread { key, devices }),
                }
            }

            pub fn situation(x: w::Situation) -> s::Situation {
                s::Situation {
                    now: x.now,
                    job_started_at: x.job_started_at,
                    batches: x
                        .batches
                        .into_iter()
                        .map(|b| s::Batch {
                            group: b.group,
                            label: b.label,
                            total: b.total,
                            pending: b.pending,
                            in_flight: b.in_flight,
                            succeeded: b.succeeded,
                            failed: b.failed,
                            timed_out: b.timed_out,
                            cancelled: b.cancelled,
                            started_at: b.started_at,
                            failures: b
                                .failures
                                .into_iter()
                                .map(|(c, n)| (class_in(c), n))
                                .collect(),
                            median_ms: b.median_ms,
                            p90_ms: b.p90_ms,
                        })
                        .collect(),
                    window_open: x.window_open,
                    next_window_at: x.next_window_at,
                    ends_at: x.ends_at,
                    rate_limit: x.rate.limit,
                    sent_last_minute: x.rate.last_minute,
                }
            }

            pub fn verdict(v: s::Verdict) -> w::Verdict {
                let halt = |h: s::Halt| w::Halt {
                    reason: h.reason,
                    class: h.class.map(class_out),
                };
                match v {
                    s::Verdict::StartNextBatch => w::Verdict::StartNextBatch,
                    s::Verdict::Wait(ms) => w::Verdict::Wait(ms),
                    s::Verdict::Pause(h) => w::Verdict::Pause(halt(h)),
                    s::Verdict::Abort(h) => w::Verdict::Abort(halt(h)),
                    s::Verdict::Complete => w::Verdict::Complete,
                    s::Verdict::SetRate {
                        per_minute,
                        then_wait_ms,
                    } => w::Verdict::SetRate(w::RateChange {
                        per_minute,
                        then_wait: then_wait_ms,
                    }),
                }
            }
        }

        impl exports::rollway::plugin::strategy::Guest for RollwayStrategyGuest {
            fn info() -> rollway::plugin::types::PluginInfo {
                rollway::plugin::types::PluginInfo {
                    name: ($name).into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    description: ($description).into(),
                }
            }

            fn validate_config(config: String) -> Result<(), String> {
                $crate::strategy::load_config::<$strategy>(&config).map(|_| ())
            }

            fn plan(
                config: String,
                population: exports::rollway::plugin::strategy::Population,
            ) -> Result<Vec<exports::rollway::plugin::strategy::Group>, String> {
                let config = $crate::strategy::load_config::<$strategy>(&config)?;
                let population = rollway_strategy_bridge::population(population);
                Ok(
                    <$strategy as $crate::strategy::Strategy>::plan(&config, &population)?
                        .into_iter()
                        .map(rollway_strategy_bridge::group)
                        .collect(),
                )
            }

            fn evaluate(
                config: String,
                situation: exports::rollway::plugin::strategy::Situation,
            ) -> Result<exports::rollway::plugin::strategy::Verdict, String> {
                let config = $crate::strategy::load_config::<$strategy>(&config)?;
                let situation = rollway_strategy_bridge::situation(situation);
                Ok(rollway_strategy_bridge::verdict(
                    <$strategy as $crate::strategy::Strategy>::evaluate(&config, &situation),
                ))
            }
        }

        impl exports::rollway::plugin::settings::Guest for RollwayStrategyGuest {
            fn config_schema() -> Option<String> {
                <$strategy as $crate::strategy::Strategy>::CONFIG_SCHEMA.map(str::to_owned)
            }
        }

        // Exported only in the component build; native builds are for unit tests.
        #[cfg(target_arch = "wasm32")]
        export!(RollwayStrategyGuest);
    };
}

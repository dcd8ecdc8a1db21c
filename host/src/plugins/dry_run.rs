//! Dry runs: a rollout strategy run against a simulated fleet in virtual
//! time, before it touches a truck.
//!
//! The fleet is a plan (groups of devices in dispatch order, each group's
//! spread limit) made the way a job is made: a synthetic one of `n`
//! devices without attributes, a job not created yet (planned in a
//! transaction that is rolled back), or an existing job's own plan. The
//! engine plays the scheduler and the dispatcher as they run a job (see
//! [`run`]): the strategy is asked what to do at each evaluation, a
//! released group is dispatched in device order within the job's rate and
//! spread limits, and each device's outcome is drawn from the failure
//! rates by [`fate`], seeded: the same inputs give the same timeline. A
//! simulated fleet given the same seed (`rollway sim --seed`) fails the
//! same devices, so a real job over it takes the decisions its dry run
//! foretold.
//!
//! The fleets of jobs are read in `jobs::dry_run`.
//!
//! What the dry run does not model: maintenance windows (the window is
//! always open), devices away, and status latency (an evaluation follows
//! a status change within a second of virtual time).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::strategy::{
    self, Batch, DispatchRate, FailureClass, Group, Population, Situation, Verdict, verdict_json,
};

/// Most evaluations in one dry run: a strategy that waits for ever stops
/// there (the outcome is `unfinished`).
pub const MAX_EVALUATIONS: u32 = 20_000;
/// Most virtual time in one dry run: 90 days.
pub const MAX_VIRTUAL_MS: u64 = 90 * 24 * 3_600_000;
/// The scheduler evaluates a job again when statuses change it; in the
/// dry run, not sooner than this after the last evaluation.
const STATUS_GRAIN_MS: u64 = 1_000;

/// A device of the simulated fleet.
#[derive(Debug, Clone)]
pub struct FleetDevice {
    pub id: String,
    /// Its value of its group's spread key, if the group has one.
    pub spread: Option<String>,
}

/// A planned group: its devices in dispatch order.
#[derive(Debug, Clone, Default)]
pub struct FleetGroup {
    pub label: String,
    pub devices: Vec<FleetDevice>,
    /// At most this many devices of one spread value in flight at once.
    pub spread_limit: Option<u32>,
}

/// How the simulated devices behave.
#[derive(Debug, Clone)]
pub struct Outlook {
    /// The share of attempts failing with each class (together at most 1).
    /// `timeout` stands for a device that goes silent mid-update: it times
    /// out after `device_timeout_secs`.
    pub fail_rates: Vec<(FailureClass, f64)>,
    pub seed: u64,
    /// How long a device takes from its command to its last status, on
    /// average (each device takes between half and one and a half times it).
    pub update_secs: u32,
    pub device_timeout_secs: u32,
    /// Attempts after the first for a device that failed or timed out.
    pub max_retries: u32,
}

/// A uniform draw in [0, 1), the same on every machine for the same seed,
/// device, attempt and purpose (`what`: 0 the outcome, 1 the duration).
/// The simulated fleet (`SimOptions::seed`) draws its failures with it.
pub fn fate(seed: u64, device: &str, attempt: u64, what: u64) -> f64 {
    // FNV-1a over the device id, then SplitMix64's finaliser over all.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = hash
        ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ attempt.wrapping_mul(0xbf58_476d_1ce4_e5b9)
        ^ what.wrapping_mul(0x94d0_49bb_1331_11eb);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Executions by state, and the failures by class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct DryRunCounts {
    /// Not sent yet (in groups not released, or waiting for their turn).
    pub pending: u32,
    pub in_flight: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub timed_out: u32,
    /// Groups released so far.
    pub groups_started: u32,
    /// The dispatch rate the strategy set (devices a minute), if any.
    pub rate_per_minute: Option<u32>,
    /// Failed and timed-out devices by failure class.
    pub failures: BTreeMap<String, u32>,
}

/// One step of a dry run's timeline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DryRunStep {
    /// Seconds of virtual time since the job started.
    pub at_secs: f64,
    /// The strategy's decision, as `job.rollout.decision` carries it.
    #[schema(value_type = Object)]
    pub decision: Value,
    /// The group a `start-next-batch` released.
    pub group: Option<u32>,
    /// Evaluations this step stands for: consecutive waits are one step,
    /// its counts those of the last.
    pub evaluations: u32,
    pub counts: DryRunCounts,
}

/// A planned group as the dry run ran it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DryRunGroup {
    pub group: u32,
    pub label: String,
    pub size: u32,
    pub spread_limit: Option<u32>,
}

/// What a strategy would do: its plan and the timeline of its decisions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Timeline {
    pub plan: Vec<DryRunGroup>,
    pub steps: Vec<DryRunStep>,
    pub evaluations: u32,
    /// `completed`, `failed` (aborted), `paused`, or `unfinished` (neither
    /// after `MAX_EVALUATIONS` evaluations or 90 days).
    pub outcome: String,
    /// Why the job paused or failed, as the strategy said.
    pub reason: Option<String>,
    /// The failure class the strategy named when it stopped the job.
    pub failure_class: Option<String>,
    /// Virtual time from start to outcome.
    pub duration_secs: f64,
    pub counts: DryRunCounts,
}

/// A synthetic fleet of `devices` devices without attributes, planned by
/// `groups` (as a job's plan is filled: groups that select by attributes
/// select nobody here).
pub fn synthetic_fleet(devices: u32, groups: &[Group]) -> Vec<FleetGroup> {
    let (selectors, selector_of) = strategy::distinct_selectors(groups);
    let mask = selectors
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.models.is_empty()
                && s.versions.is_empty()
                && s.behind_gateway.is_none()
                && s.tags.is_empty()
        })
        .fold(0i64, |mask, (i, _)| mask | (1i64 << i));
    let filled = strategy::fill(&vec![mask; devices as usize], groups, &selector_of);
    let mut fleet: Vec<FleetGroup> = filled
        .labels
        .iter()
        .map(|label| FleetGroup {
            label: label.clone().unwrap_or_default(),
            ..FleetGroup::default()
        })
        .collect();
    for (rank, group) in filled.group_of.iter().enumerate() {
        if let Some(fleet_group) = usize::try_from(*group).ok().and_then(|g| fleet.get_mut(g)) {
            fleet_group.devices.push(FleetDevice {
                id: format!("SIM-{:07}", rank + 1),
                spread: None,
            });
        }
    }
    fleet.retain(|g| !g.devices.is_empty());
    fleet
}

/// The population a synthetic fleet of `devices` devices shows a plan.
pub fn synthetic_population(devices: u32) -> Population {
    Population {
        total: devices,
        families: Vec::new(),
        models: Vec::new(),
        versions: Vec::new(),
        behind_gateway: 0,
        tags: Vec::new(),
    }
}

struct Device {
    group: usize,
    /// Its place in its group's devices.
    offset: usize,
    attempts: u32,
    /// How its attempt under way ends: `None` a success.
    outcome: Option<FailureClass>,
    /// When its attempt under way was sent.
    sent_at: u64,
}

#[derive(Default)]
struct GroupState {
    released_at: Option<u64>,
    pending: u32,
    in_flight: u32,
    succeeded: u32,
    failed: u32,
    timed_out: u32,
    failures: BTreeMap<u8, u32>,
    /// Milliseconds from dispatch to success of each succeeded device.
    durations: Vec<u64>,
    /// The median and p90 of `durations`, when it had this many.
    percentiles: (usize, Option<u64>, Option<u64>),
    /// Devices waiting for their turn, by spread value (`None`: no value).
    waiting: BTreeMap<Option<String>, VecDeque<usize>>,
    busy: HashMap<String, u32>,
}

/// The dispatch rate the strategy set: a token bucket holding up to two
/// seconds' worth, empty when the rate changes (as the dispatcher keeps it).
struct Rate {
    per_minute: u32,
    allowance: f64,
    at: u64,
}

impl Rate {
    fn refill(&mut self, now: u64) {
        let cap = (f64::from(self.per_minute) / 30.0).max(1.0);
        let gained = f64::from(self.per_minute) * (now.saturating_sub(self.at)) as f64 / 60_000.0;
        self.allowance = (self.allowance + gained).min(cap);
        self.at = now;
    }

    /// When the bucket holds a whole device again.
    fn next_token_at(&self) -> u64 {
        let missing = (1.0 - self.allowance).max(0.0);
        self.at + (missing * 60_000.0 / f64::from(self.per_minute)).ceil() as u64
    }
}

struct Engine<'a> {
    fleet: &'a [FleetGroup],
    outlook: &'a Outlook,
    devices: Vec<Device>,
    groups: Vec<GroupState>,
    /// Devices finishing, by time: (at, device, attempt).
    finishing: BinaryHeap<Reverse<(u64, usize, u32)>>,
    rate: Option<Rate>,
    /// When the rate lets the next device go, if one waits for it.
    next_token: Option<u64>,
    /// Dispatch times of the last minute.
    dispatched: VecDeque<u64>,
}

impl<'a> Engine<'a> {
    fn new(fleet: &'a [FleetGroup], outlook: &'a Outlook) -> Self {
        let mut devices = Vec::new();
        let mut groups = Vec::new();
        for (g, group) in fleet.iter().enumerate() {
            groups.push(GroupState {
                pending: group.devices.len() as u32,
                ..GroupState::default()
            });
            devices.extend((0..group.devices.len()).map(|offset| Device {
                group: g,
                offset,
                attempts: 0,
                outcome: None,
                sent_at: 0,
            }));
        }
        Engine {
            fleet,
            outlook,
            devices,
            groups,
            finishing: BinaryHeap::new(),
            rate: None,
            next_token: None,
            dispatched: VecDeque::new(),
        }
    }

    fn device(&self, index: usize) -> &FleetDevice {
        let Device { group, offset, .. } = self.devices[index];
        &self.fleet[group].devices[offset]
    }

    fn release(&mut self, group: usize, now: u64) {
        let start: usize = self.fleet[..group].iter().map(|g| g.devices.len()).sum();
        let spread = self.fleet[group].spread_limit.is_some();
        let state = &mut self.groups[group];
        state.released_at = Some(now);
        for (offset, device) in self.fleet[group].devices.iter().enumerate() {
            let key = if spread { device.spread.clone() } else { None };
            state
                .waiting
                .entry(key)
                .or_default()
                .push_back(start + offset);
        }
    }

    /// Sends what may go now: released groups in order, each device in
    /// order, within the rate and each group's spread limit.
    fn dispatch(&mut self, now: u64) {
        if let Some(rate) = &mut self.rate {
            rate.refill(now);
        }
        self.next_token = None;
        for g in 0..self.groups.len() {
            if self.groups[g].released_at.is_none() {
                continue;
            }
            let limit = self.fleet[g].spread_limit;
            let keys: Vec<Option<String>> = self.groups[g].waiting.keys().cloned().collect();
            for key in keys {
                loop {
                    if let Some(rate) = &self.rate
                        && rate.allowance < 1.0
                    {
                        self.next_token = Some(rate.next_token_at());
                        return;
                    }
                    let state = &mut self.groups[g];
                    if let (Some(limit), Some(value)) = (limit, &key)
                        && state.busy.get(value).copied().unwrap_or(0) >= limit
                    {
                        break;
                    }
                    let Some(index) = state.waiting.get_mut(&key).and_then(VecDeque::pop_front)
                    else {
                        break;
                    };
                    if let (Some(_), Some(value)) = (limit, &key) {
                        *state.busy.entry(value.clone()).or_default() += 1;
                    }
                    if let Some(rate) = &mut self.rate {
                        rate.allowance -= 1.0;
                    }
                    self.send(index, now);
                }
            }
        }
    }

    fn send(&mut self, index: usize, now: u64) {
        let outlook = self.outlook;
        let id = self.device(index).id.clone();
        let device = &mut self.devices[index];
        device.attempts += 1;
        device.sent_at = now;
        let attempt = device.attempts;
        let group = &mut self.groups[device.group];
        group.pending -= 1;
        group.in_flight += 1;
        self.dispatched.push_back(now);
        let class = outcome_class(
            &outlook.fail_rates,
            fate(outlook.seed, &id, u64::from(attempt), 0),
        );
        self.devices[index].outcome = class;
        let at = if class == Some(FailureClass::Timeout) {
            now + u64::from(outlook.device_timeout_secs) * 1000
        } else {
            let spread = 0.5 + fate(outlook.seed, &id, u64::from(attempt), 1);
            now + (f64::from(outlook.update_secs) * 1000.0 * spread).round() as u64
        };
        self.finishing.push(Reverse((at, index, attempt)));
    }

    fn finish(&mut self, index: usize, attempt: u32, now: u64) {
        let spread = self.device(index).spread.clone();
        let Device {
            group: group_index,
            outcome: class,
            ..
        } = self.devices[index];
        let limited = self.fleet[group_index].spread_limit.is_some();
        let retry = class.is_some() && attempt <= self.outlook.max_retries;
        let group = &mut self.groups[group_index];
        group.in_flight -= 1;
        if limited
            && let Some(value) = &spread
            && let Some(busy) = group.busy.get_mut(value)
        {
            *busy = busy.saturating_sub(1);
        }
        match class {
            _ if retry => {
                group.pending += 1;
                let key = if limited { spread } else { None };
                group.waiting.entry(key).or_default().push_back(index);
            }
            None => {
                group.succeeded += 1;
                group.durations.push(now - self.devices[index].sent_at);
            }
            Some(FailureClass::Timeout) => {
                group.timed_out += 1;
                *group
                    .failures
                    .entry(FailureClass::Timeout as u8)
                    .or_default() += 1;
            }
            Some(class) => {
                group.failed += 1;
                *group.failures.entry(class as u8).or_default() += 1;
            }
        }
    }

    /// Lets virtual time run to `until`: devices finish, freed places and
    /// the rate's tokens send more.
    fn advance(&mut self, until: u64) {
        loop {
            let finish = self.finishing.peek().map(|Reverse((at, ..))| *at);
            let next = match (finish, self.next_token) {
                (Some(f), Some(t)) => f.min(t),
                (Some(f), None) => f,
                (None, Some(t)) => t,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            if finish == Some(next) {
                let Some(Reverse((at, index, attempt))) = self.finishing.pop() else {
                    break;
                };
                self.finish(index, attempt, at);
            }
            self.dispatch(next);
        }
        while self
            .dispatched
            .front()
            .is_some_and(|at| *at + 60_000 <= until)
        {
            self.dispatched.pop_front();
        }
    }

    fn counts(&self) -> DryRunCounts {
        let mut counts = DryRunCounts {
            rate_per_minute: self.rate.as_ref().map(|r| r.per_minute),
            ..DryRunCounts::default()
        };
        for group in &self.groups {
            counts.pending += group.pending;
            counts.in_flight += group.in_flight;
            counts.succeeded += group.succeeded;
            counts.failed += group.failed;
            counts.timed_out += group.timed_out;
            counts.groups_started += u32::from(group.released_at.is_some());
            for (class, n) in &group.failures {
                *counts
                    .failures
                    .entry(strategy::CLASSES[*class as usize].as_str().to_owned())
                    .or_default() += n;
            }
        }
        counts
    }

    fn situation(&mut self, now: u64, start: u64) -> Situation {
        let mut batches = Vec::with_capacity(self.groups.len());
        for (g, group) in self.groups.iter_mut().enumerate() {
            // Recounted as they change; in a big group once they grew by
            // a hundredth (sorting a million times over costs minutes).
            let (counted, now_len) = (group.percentiles.0, group.durations.len());
            if now_len != counted && (now_len < 10_000 || now_len >= counted + counted / 100) {
                group.durations.sort_unstable();
                group.percentiles = (
                    group.durations.len(),
                    percentile(&group.durations, 0.5),
                    percentile(&group.durations, 0.9),
                );
            }
            batches.push(Batch {
                group: g as u32,
                label: self.fleet[g].label.clone(),
                total: self.fleet[g].devices.len() as u32,
                pending: group.pending,
                in_flight: group.in_flight,
                succeeded: group.succeeded,
                failed: group.failed,
                timed_out: group.timed_out,
                cancelled: 0,
                started_at: group.released_at.map(|at| start + at),
                failures: group
                    .failures
                    .iter()
                    .map(|(class, n)| (strategy::CLASSES[*class as usize], *n))
                    .collect(),
                median_ms: group.percentiles.1,
                p90_ms: group.percentiles.2,
            });
        }
        Situation {
            now: start + now,
            job_started_at: start,
            batches,
            window_open: true,
            next_window_at: None,
            ends_at: None,
            rate: DispatchRate {
                limit: self.rate.as_ref().map(|r| r.per_minute),
                last_minute: self.dispatched.len() as u32,
            },
        }
    }
}

/// The class of an attempt whose draw is `outcome`, by cumulative rates;
/// `None` when it succeeds.
fn outcome_class(rates: &[(FailureClass, f64)], outcome: f64) -> Option<FailureClass> {
    let mut bound = 0.0;
    for (class, rate) in rates {
        bound += rate;
        if outcome < bound {
            return Some(*class);
        }
    }
    None
}

/// PostgreSQL's `percentile_cont` over sorted values.
fn percentile(sorted: &[u64], fraction: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    let position = fraction * last as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    let between = position - low as f64;
    Some((sorted[low] as f64 + (sorted[high] as f64 - sorted[low] as f64) * between).round() as u64)
}

/// Runs a strategy (`decide`) over `fleet` as the scheduler and the
/// dispatcher would run its job, from virtual time 0 (`start`, Unix
/// milliseconds, is what the strategy sees as the job's start). A failing
/// `decide` pauses the job, as it does a real one.
pub fn run<E: std::fmt::Display>(
    fleet: &[FleetGroup],
    outlook: &Outlook,
    start: u64,
    mut decide: impl FnMut(&Situation) -> Result<Verdict, E>,
) -> Timeline {
    let mut engine = Engine::new(fleet, outlook);
    let plan = fleet
        .iter()
        .enumerate()
        .map(|(g, group)| DryRunGroup {
            group: g as u32,
            label: group.label.clone(),
            size: group.devices.len() as u32,
            spread_limit: group.spread_limit,
        })
        .collect();
    let mut timeline = Timeline {
        plan,
        steps: Vec::new(),
        evaluations: 0,
        outcome: "unfinished".into(),
        reason: None,
        failure_class: None,
        duration_secs: 0.0,
        counts: DryRunCounts::default(),
    };
    let mut now = 0u64;
    while timeline.evaluations < MAX_EVALUATIONS && now <= MAX_VIRTUAL_MS {
        engine.advance(now);
        let situation = engine.situation(now, start);
        timeline.evaluations += 1;
        let verdict = decide(&situation).unwrap_or_else(|error| {
            Verdict::Pause(strategy::Halt {
                reason: format!("the rollout plugin failed: {error}"),
                class: None,
            })
        });
        let mut group = None;
        let mut after = match &verdict {
            Verdict::StartNextBatch => {
                if let Some(next) = engine.groups.iter().position(|g| g.released_at.is_none()) {
                    engine.release(next, now);
                    engine.dispatch(now);
                    group = Some(next as u32);
                    200
                } else {
                    5_000
                }
            }
            Verdict::Wait(ms) => (*ms).clamp(100, 3_600_000),
            Verdict::SetRate(change) => {
                let per_minute = change.per_minute.map(|r| r.max(1));
                if engine.rate.as_ref().map(|r| r.per_minute) != per_minute {
                    engine.rate = per_minute.map(|per_minute| Rate {
                        per_minute,
                        allowance: 0.0,
                        at: now,
                    });
                }
                engine.dispatch(now);
                change.then_wait.clamp(100, 3_600_000)
            }
            Verdict::Complete => 1_000,
            Verdict::Pause(_) | Verdict::Abort(_) => 0,
        };
        let counts = engine.counts();
        let waiting = matches!(verdict, Verdict::Wait(_));
        match timeline.steps.last_mut() {
            Some(last) if waiting && last.decision["decision"] == "wait" => {
                last.evaluations += 1;
                last.decision = verdict_json(&verdict);
                last.counts = counts.clone();
            }
            _ => timeline.steps.push(DryRunStep {
                at_secs: now as f64 / 1000.0,
                decision: verdict_json(&verdict),
                group,
                evaluations: 1,
                counts: counts.clone(),
            }),
        }
        timeline.counts = counts;
        timeline.duration_secs = now as f64 / 1000.0;
        if matches!(verdict, Verdict::Complete)
            && timeline.counts.pending + timeline.counts.in_flight == 0
        {
            timeline.outcome = "completed".into();
            return timeline;
        }
        let stopped = match verdict {
            Verdict::Pause(halt) => Some(("paused", halt)),
            Verdict::Abort(halt) => Some(("failed", halt)),
            _ => None,
        };
        if let Some((outcome, halt)) = stopped {
            timeline.outcome = outcome.into();
            timeline.reason = Some(halt.reason);
            timeline.failure_class = halt.class.map(|c| c.as_str().to_owned());
            return timeline;
        }
        // Statuses wake the scheduler: it evaluates again once devices
        // finish, if that comes before the wait is over.
        if let Some(Reverse((first, ..))) = engine.finishing.peek() {
            after = after.min(first.saturating_sub(now).max(STATUS_GRAIN_MS));
        }
        now += after.max(1);
    }
    timeline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(sizes: &[usize]) -> Vec<FleetGroup> {
        let mut n = 0;
        sizes
            .iter()
            .map(|size| FleetGroup {
                label: String::new(),
                devices: (0..*size)
                    .map(|_| {
                        n += 1;
                        FleetDevice {
                            id: format!("D-{n}"),
                            spread: None,
                        }
                    })
                    .collect(),
                spread_limit: None,
            })
            .collect()
    }

    fn outlook(flash: f64) -> Outlook {
        Outlook {
            fail_rates: vec![(FailureClass::Flash, flash)],
            seed: 7,
            update_secs: 60,
            device_timeout_secs: 600,
            max_retries: 0,
        }
    }

    /// Next batch once the current one finished; abort past 20 % failed.
    fn halves(situation: &Situation) -> Result<Verdict, String> {
        let current = situation
            .batches
            .iter()
            .rev()
            .find(|b| b.started_at.is_some());
        let Some(current) = current else {
            return Ok(Verdict::StartNextBatch);
        };
        if (current.failed + current.timed_out) * 5 > current.total {
            return Ok(Verdict::Abort(strategy::Halt {
                reason: format!("batch {} failed", current.group),
                class: Some(FailureClass::Flash),
            }));
        }
        if current.pending + current.in_flight > 0 {
            return Ok(Verdict::Wait(10_000));
        }
        if situation.batches.iter().all(|b| b.started_at.is_some()) {
            Ok(Verdict::Complete)
        } else {
            Ok(Verdict::StartNextBatch)
        }
    }

    #[test]
    fn fates_are_uniform_and_the_same_for_the_same_inputs() {
        let draws: Vec<f64> = (0..10_000)
            .map(|i| fate(7, &format!("D-{i}"), 1, 0))
            .collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below = draws.iter().filter(|d| **d < 0.25).count();
        assert!((2300..2700).contains(&below), "{below}");
        assert_eq!(fate(7, "D-1", 1, 0), fate(7, "D-1", 1, 0));
        assert_ne!(fate(7, "D-1", 1, 0), fate(8, "D-1", 1, 0));
        assert_ne!(fate(7, "D-1", 1, 0), fate(7, "D-1", 2, 0));
    }

    #[test]
    fn a_healthy_fleet_completes_group_by_group() {
        let fleet = fleet(&[10, 40, 50]);
        let timeline = run(&fleet, &outlook(0.0), 0, halves);
        assert_eq!(timeline.outcome, "completed");
        let decisions: Vec<&str> = timeline
            .steps
            .iter()
            .filter_map(|s| s.decision["decision"].as_str())
            .filter(|d| *d != "wait")
            .collect();
        assert_eq!(
            decisions,
            [
                "start-next-batch",
                "start-next-batch",
                "start-next-batch",
                "complete"
            ]
        );
        assert_eq!(timeline.counts.succeeded, 100);
        // Each group takes between half and one and a half update times.
        assert!(
            (90.0..=300.0).contains(&timeline.duration_secs),
            "{}",
            timeline.duration_secs
        );
    }

    #[test]
    fn failures_stop_it_and_the_same_seed_gives_the_same_timeline() {
        let fleet = fleet(&[50, 50]);
        let first = run(&fleet, &outlook(0.5), 0, halves);
        assert_eq!(first.outcome, "failed");
        assert_eq!(first.failure_class.as_deref(), Some("flash"));
        assert_eq!(first.counts.groups_started, 1);
        let again = run(&fleet, &outlook(0.5), 0, halves);
        assert_eq!(
            serde_json::to_value(&first).unwrap(),
            serde_json::to_value(&again).unwrap()
        );
    }

    #[test]
    fn retries_and_timeouts_follow_the_outlook() {
        let fleet = fleet(&[200]);
        let mut outlook = outlook(0.0);
        outlook.fail_rates = vec![(FailureClass::Timeout, 0.1)];
        let timeline = run(&fleet, &outlook, 0, |_: &Situation| {
            Ok::<_, String>(Verdict::StartNextBatch)
        });
        // Without a decision to end it, it runs to its limit.
        assert_eq!(timeline.outcome, "unfinished");
        assert_eq!(timeline.counts.in_flight, 0);
        let timed_out = timeline.counts.timed_out;
        assert!((5..40).contains(&timed_out), "{timed_out}");
        assert_eq!(timeline.counts.failures["timeout"], timed_out);
        outlook.max_retries = 3;
        let retried = run(&fleet, &outlook, 0, |_: &Situation| {
            Ok::<_, String>(Verdict::StartNextBatch)
        });
        assert!(retried.counts.timed_out < timed_out / 5 + 1);
    }

    #[test]
    fn a_rate_and_a_spread_limit_hold_devices_back() {
        let mut groups = fleet(&[120]);
        for (i, device) in groups[0].devices.iter_mut().enumerate() {
            device.spread = Some(format!("site-{}", i % 3));
        }
        groups[0].spread_limit = Some(2);
        let mut set = false;
        let mut most_in_flight = 0;
        let timeline = run(&groups, &outlook(0.0), 0, |s: &Situation| {
            most_in_flight = most_in_flight.max(s.batches[0].in_flight);
            if !set {
                set = true;
                return Ok::<_, String>(Verdict::SetRate(strategy::RateChange {
                    per_minute: Some(30),
                    then_wait: 1_000,
                }));
            }
            Ok(match s.batches[0].started_at {
                None => Verdict::StartNextBatch,
                Some(_) if s.batches[0].succeeded == 120 => Verdict::Complete,
                Some(_) => Verdict::Wait(5_000),
            })
        });
        assert_eq!(timeline.outcome, "completed");
        // Three sites, two at a time each.
        assert_eq!(most_in_flight, 6);
        // 120 devices at 30 a minute: four minutes at least.
        assert!(
            timeline.duration_secs >= 230.0,
            "{}",
            timeline.duration_secs
        );
        assert_eq!(timeline.counts.rate_per_minute, Some(30));
    }

    #[test]
    fn percentiles_are_postgres_s() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[10], 0.9), Some(10));
        assert_eq!(percentile(&[10, 20, 30, 40], 0.5), Some(25));
        assert_eq!(percentile(&[0, 100], 0.9), Some(90));
    }

    #[test]
    fn synthetic_fleets_follow_the_plan() {
        let groups = vec![
            Group {
                label: "first".into(),
                select: strategy::Selector {
                    models: Vec::new(),
                    versions: Vec::new(),
                    behind_gateway: None,
                    tags: Vec::new(),
                },
                take: strategy::Amount::Count(10),
                spread: None,
            },
            Group {
                label: "rest".into(),
                select: strategy::Selector {
                    models: Vec::new(),
                    versions: Vec::new(),
                    behind_gateway: None,
                    tags: Vec::new(),
                },
                take: strategy::Amount::All,
                spread: None,
            },
        ];
        let fleet = synthetic_fleet(100, &groups);
        let sizes: Vec<usize> = fleet.iter().map(|g| g.devices.len()).collect();
        assert_eq!(sizes, [10, 90]);
        assert_eq!(fleet[0].label, "first");
    }
}

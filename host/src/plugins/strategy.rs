//! The rollout contract of WIT 0.1.8 (`strategy`), and how the host runs
//! strategies of either contract through it.
//!
//! The scheduler and the job planner speak only this contract: they give a
//! [`Population`] or a [`Situation`] and get [`Group`]s or a [`Verdict`].
//! A strategy of 0.1.0–0.1.7 (`rollout`) is asked for sizes with the
//! population's total, and for a decision with the situation projected to
//! its `snapshot` (what it always saw, nothing more); its sizes become
//! groups of counts and its decision a verdict. So both contracts follow
//! one path through the host, and a strategy of either behaves as it did.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::bindings::rollout::exports::rollway::plugin::rollout as ro;
use super::seal::{Feed, Seal, Sealed};
use super::{MAX_BATCH_GROUPS, Plugin, PluginError, PluginRegistry, Pre};

pub use super::bindings::rollout::rollway::plugin::types::FailureClass;
pub use super::bindings::strategy::exports::rollway::plugin::strategy::{
    Amount, Batch, DispatchRate, Group, Halt, Population, RateChange, Selector, Situation, Spread,
    TagMatch, TagValues, ValueCount, Verdict,
};

/// Most different selectors in one plan (the host matches each device
/// against all of them in one pass, one bit each).
pub const MAX_SELECTORS: usize = 64;
/// Most characters of a group's label.
pub const MAX_LABEL_CHARS: usize = 100;
/// Most values in one list of a selector, and most tag conditions.
const MAX_SELECTOR_VALUES: usize = 1000;
/// Most characters of a halt's reason.
const MAX_REASON_BYTES: usize = 1024;

/// Every failure class, in the WIT's order.
pub const CLASSES: [FailureClass; 8] = [
    FailureClass::Download,
    FailureClass::Verification,
    FailureClass::Incompatible,
    FailureClass::Flash,
    FailureClass::Power,
    FailureClass::RejectedByDevice,
    FailureClass::Timeout,
    FailureClass::Other,
];

impl FailureClass {
    /// The class's name in the WIT, in events and in the API (the SDK's
    /// names: both enums follow the WIT's order).
    pub fn as_str(self) -> &'static str {
        rollway_plugin_sdk::failure::FailureClass::ALL[self as usize].as_str()
    }

    /// The class named `name` (as [`as_str`](Self::as_str) gives it).
    pub fn parse(name: &str) -> Option<Self> {
        CLASSES.into_iter().find(|c| c.as_str() == name)
    }
}

/// A verdict as events (`job.rollout.decision`) and dry runs show it.
pub fn verdict_json(verdict: &Verdict) -> serde_json::Value {
    use serde_json::json;
    let class = |halt: &Halt| halt.class.map(FailureClass::as_str);
    match verdict {
        Verdict::StartNextBatch => json!({ "decision": "start-next-batch" }),
        Verdict::Wait(ms) => json!({ "decision": "wait", "ms": ms }),
        Verdict::Pause(h) => {
            json!({ "decision": "pause", "reason": h.reason, "failure_class": class(h) })
        }
        Verdict::Abort(h) => {
            json!({ "decision": "abort", "reason": h.reason, "failure_class": class(h) })
        }
        Verdict::Complete => json!({ "decision": "complete" }),
        Verdict::SetRate(r) => {
            json!({ "decision": "set-rate", "per_minute": r.per_minute, "ms": r.then_wait })
        }
    }
}

/// The verdict a 0.1.x `rollout` decision stands for.
fn verdict_of(decision: ro::Decision) -> Verdict {
    let halt = |reason: String| Halt {
        reason,
        class: None,
    };
    match decision {
        ro::Decision::StartNextBatch => Verdict::StartNextBatch,
        ro::Decision::Wait(ms) => Verdict::Wait(ms),
        ro::Decision::Pause(reason) => Verdict::Pause(halt(reason)),
        ro::Decision::Abort(reason) => Verdict::Abort(halt(reason)),
        ro::Decision::Complete => Verdict::Complete,
    }
}

/// What a 0.1.x `rollout` strategy sees of a situation: its snapshot.
pub fn snapshot_of(situation: &Situation) -> ro::Snapshot {
    ro::Snapshot {
        now: situation.now,
        job_started_at: situation.job_started_at,
        batches: situation
            .batches
            .iter()
            .map(|b| ro::BatchCounts {
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

/// A situation is small and rare (one per evaluation): all of it.
impl Sealed for Situation {
    fn feed(&self, to: &mut Feed) {
        to.bytes(format!("{self:?}").as_bytes());
    }
}

/// A population is bounded (100 values a tag, 50 tags): all of it.
impl Sealed for Population {
    fn feed(&self, to: &mut Feed) {
        to.bytes(format!("{self:?}").as_bytes());
    }
}

/// Why a plan cannot be used, if it cannot.
pub fn plan_problem(groups: &[Group]) -> Option<String> {
    if groups.is_empty() {
        return Some("plan returned no group".into());
    }
    if groups.len() > MAX_BATCH_GROUPS {
        return Some(format!(
            "plan returned {} groups (at most {MAX_BATCH_GROUPS})",
            groups.len()
        ));
    }
    for (i, group) in groups.iter().enumerate() {
        if group.label.chars().count() > MAX_LABEL_CHARS {
            return Some(format!(
                "group {i}: its label is longer than {MAX_LABEL_CHARS} characters"
            ));
        }
        if let Amount::Share(share) = group.take
            && !(share > 0.0 && share <= 1.0)
        {
            return Some(format!("group {i}: share {share} is not in (0, 1]"));
        }
        if let Some(spread) = &group.spread
            && (spread.key.is_empty()
                || spread.key.len() > 256
                || spread.devices == 0
                || spread.devices > i32::MAX as u32)
        {
            return Some(format!(
                "group {i}: a spread needs a tag key and at least one device"
            ));
        }
        let s = &group.select;
        let lists = [s.models.len(), s.versions.len(), s.tags.len()]
            .into_iter()
            .chain(s.tags.iter().map(|t| t.values.len()));
        if lists.into_iter().any(|n| n > MAX_SELECTOR_VALUES) {
            return Some(format!(
                "group {i}: a selector lists more than {MAX_SELECTOR_VALUES} values"
            ));
        }
    }
    let selectors = distinct_selectors(groups).0.len();
    if selectors > MAX_SELECTORS {
        return Some(format!(
            "plan uses {selectors} different selectors (at most {MAX_SELECTORS})"
        ));
    }
    None
}

/// The plan's different selectors, and for each group the index of its
/// selector among them.
pub fn distinct_selectors(groups: &[Group]) -> (Vec<&Selector>, Vec<usize>) {
    let mut keys: Vec<String> = Vec::new();
    let mut selectors: Vec<&Selector> = Vec::new();
    let indexes = groups
        .iter()
        .map(|group| {
            let key = format!("{:?}", group.select);
            match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    keys.push(key);
                    selectors.push(&group.select);
                    selectors.len() - 1
                }
            }
        })
        .collect();
    (selectors, indexes)
}

fn bounded(halt: Halt) -> Halt {
    if halt.reason.len() <= MAX_REASON_BYTES {
        return halt;
    }
    Halt {
        reason: halt.reason.chars().take(1000).collect(),
        class: halt.class,
    }
}

/// A plan filled with devices.
#[derive(Debug, PartialEq, Eq)]
pub struct Filled {
    /// The batch group of each device, by rank (the rank `rn` is at
    /// `rn - 1`).
    pub group_of: Vec<i32>,
    /// The size and label of each batch group; groups that took nothing
    /// are left out, devices no group took are the last one (`rest`).
    pub sizes: Vec<i32>,
    pub labels: Vec<Option<String>>,
    /// The tag each group is spread over, and its limit.
    pub spread_keys: Vec<Option<String>>,
    pub spread_limits: Vec<Option<i32>>,
}

/// Fills `groups` (their selectors numbered by `selector_of`) with devices
/// given in rank order by the selectors they match.
pub fn fill(matches: &[i64], groups: &[Group], selector_of: &[usize]) -> Filled {
    // The devices of each distinct set of matched selectors, by rank: a
    // group takes the lowest ranks of its queues, merged.
    let mut queue_of: HashMap<i64, usize> = HashMap::new();
    let mut queues: Vec<(u64, VecDeque<u32>)> = Vec::new();
    for (rank, &mask) in matches.iter().enumerate() {
        let index = *queue_of.entry(mask).or_insert_with(|| {
            queues.push((mask as u64, VecDeque::new()));
            queues.len() - 1
        });
        queues[index].1.push_back(rank as u32);
    }
    const NONE: u32 = u32::MAX;
    let mut raw = vec![NONE; matches.len()];
    let mut taken = vec![0usize; groups.len()];
    for (g, group) in groups.iter().enumerate() {
        let bit = 1u64 << selector_of[g];
        let eligible: Vec<usize> = (0..queues.len())
            .filter(|&q| queues[q].0 & bit != 0 && !queues[q].1.is_empty())
            .collect();
        let available: usize = eligible.iter().map(|&q| queues[q].1.len()).sum();
        let want = match group.take {
            Amount::All => available,
            Amount::Count(n) => n as usize,
            Amount::Share(share) => (share * available as f64).ceil() as usize,
        }
        .min(available);
        if want == available {
            for &q in &eligible {
                for rank in queues[q].1.drain(..) {
                    raw[rank as usize] = g as u32;
                }
            }
        } else {
            let mut heads: BinaryHeap<Reverse<(u32, usize)>> = eligible
                .iter()
                .filter_map(|&q| queues[q].1.front().map(|&rank| Reverse((rank, q))))
                .collect();
            for _ in 0..want {
                let Some(Reverse((rank, q))) = heads.pop() else {
                    break;
                };
                queues[q].1.pop_front();
                raw[rank as usize] = g as u32;
                if let Some(&next) = queues[q].1.front() {
                    heads.push(Reverse((next, q)));
                }
            }
        }
        taken[g] = want;
    }
    // Groups that took nothing are left out; what is left is `rest`.
    let mut compact = vec![NONE; groups.len()];
    let mut sizes = Vec::new();
    let mut labels = Vec::new();
    let mut spread_keys = Vec::new();
    let mut spread_limits = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        if taken[g] > 0 {
            compact[g] = sizes.len() as u32;
            sizes.push(taken[g] as i32);
            labels.push((!group.label.is_empty()).then(|| group.label.clone()));
            spread_keys.push(group.spread.as_ref().map(|s| s.key.clone()));
            spread_limits.push(group.spread.as_ref().map(|s| s.devices as i32));
        }
    }
    let rest = raw.iter().filter(|&&g| g == NONE).count();
    if rest > 0 {
        sizes.push(rest as i32);
        labels.push(Some("rest".into()));
        spread_keys.push(None);
        spread_limits.push(None);
    }
    let rest_group = sizes.len() as i32 - 1;
    let group_of = raw
        .into_iter()
        .map(|g| {
            if g == NONE {
                rest_group
            } else {
                compact[g as usize] as i32
            }
        })
        .collect();
    Filled {
        group_of,
        sizes,
        labels,
        spread_keys,
        spread_limits,
    }
}

impl Plugin {
    /// Whether the rollout plugin plans by attributes (WIT 0.1.8
    /// `strategy`) rather than by a count.
    pub fn plans_by_attributes(&self) -> bool {
        matches!(self.pre, Pre::Strategy(_))
    }

    /// Whether the device plugin classifies failures (WIT 0.1.8 `failures`).
    pub fn classifies_failures(&self) -> bool {
        self.classify.is_some()
    }
}

impl PluginRegistry {
    /// Plans a job over `population` with one version of a rollout plugin:
    /// a strategy of 0.1.8 gives groups; one of 0.1.x gives sizes for the
    /// total, which become groups of counts over every device.
    pub fn plan_groups_with(
        &self,
        plugin: &Plugin,
        config: &str,
        population: &Population,
    ) -> Result<Vec<Group>, PluginError> {
        if !plugin.plans_by_attributes() {
            let sizes = self.plan_with(plugin, config, population.total)?;
            return Ok(sizes
                .into_iter()
                .map(|size| Group {
                    label: String::new(),
                    select: Selector {
                        models: Vec::new(),
                        versions: Vec::new(),
                        behind_gateway: None,
                        tags: Vec::new(),
                    },
                    take: Amount::Count(size),
                    spread: None,
                })
                .collect());
        }
        let seal = Seal::new("plan", 0, &[&config, population]);
        let groups = self
            .strategy_call(plugin, "plan", seal, |store, i| {
                i.rollway_plugin_strategy()
                    .call_plan(store, config, population)
            })?
            .map_err(|reason| Self::refused(plugin, reason))?;
        match plan_problem(&groups) {
            Some(problem) => Err(Self::nonsense(plugin, problem)),
            None => Ok(groups),
        }
    }

    /// Asks one version of a rollout plugin what to do next.
    pub fn decide_with(
        &self,
        plugin: &Plugin,
        config: &str,
        situation: &Situation,
    ) -> Result<Verdict, PluginError> {
        if !plugin.plans_by_attributes() {
            return self
                .evaluate_with(plugin, config, &snapshot_of(situation))
                .map(verdict_of);
        }
        // The one call with a time of its own: the situation's.
        let seal = Seal::new("evaluate", situation.now, &[&config, situation]);
        let verdict = self
            .strategy_call(plugin, "evaluate", seal, |store, i| {
                i.rollway_plugin_strategy()
                    .call_evaluate(store, config, situation)
            })?
            .map_err(|reason| Self::refused(plugin, reason))?;
        Ok(match verdict {
            Verdict::Pause(halt) => Verdict::Pause(bounded(halt)),
            Verdict::Abort(halt) => Verdict::Abort(bounded(halt)),
            Verdict::SetRate(RateChange {
                per_minute: Some(0),
                ..
            }) => {
                return Err(Self::nonsense(
                    plugin,
                    "set-rate of 0 devices a minute (pause the job instead)".into(),
                ));
            }
            other => other,
        })
    }

    /// The class of each failure text, by the device plugin of `family`
    /// under `config` (`other` for all of them when it does not classify).
    pub fn classify(
        &self,
        family: &str,
        config: &str,
        errors: &[String],
    ) -> Result<Vec<FailureClass>, PluginError> {
        let plugin = self.device_plugin(family)?;
        let Some(index) = plugin.classify else {
            return Ok(vec![FailureClass::Other; errors.len()]);
        };
        errors
            .iter()
            .map(|error| {
                let seal = Seal::new("classify", 0, &[&config, &error.as_str()]);
                self.instance_call(&plugin, "classify", seal, |store, instance| {
                    let function = instance
                        .get_typed_func::<(&str, &str), (FailureClass,)>(&mut *store, index)?;
                    let (class,) = function.call(&mut *store, (config, error))?;
                    Ok(class)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anyone(label: &str, take: Amount) -> Group {
        group(label, &[], take)
    }

    fn group(label: &str, models: &[&str], take: Amount) -> Group {
        Group {
            label: label.into(),
            select: Selector {
                models: models.iter().map(|m| (*m).into()).collect(),
                versions: Vec::new(),
                behind_gateway: None,
                tags: Vec::new(),
            },
            take,
            spread: None,
        }
    }

    #[test]
    fn counts_fill_in_rank_order_as_plans_by_sizes_did() {
        let filled = fill(
            &[1; 10],
            &[anyone("a", Amount::Count(2)), anyone("b", Amount::All)],
            &[0, 0],
        );
        assert_eq!(filled.group_of, vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(filled.sizes, vec![2, 8]);
        assert_eq!(filled.labels, vec![Some("a".into()), Some("b".into())]);
    }

    #[test]
    fn each_group_takes_from_what_earlier_groups_left() {
        // Selector 0: ring internal (bit 1); selector 1: anyone (bit 2).
        // Devices by rank: internal at ranks 1 and 4.
        let masks = [2, 3, 2, 2, 3, 2];
        let groups = [
            anyone("internal", Amount::All),
            anyone("half", Amount::Share(0.5)),
            anyone("rest of them", Amount::All),
        ];
        let filled = fill(&masks, &groups, &[0, 1, 1]);
        assert_eq!(filled.group_of, vec![1, 0, 1, 2, 0, 2]);
        assert_eq!(filled.sizes, vec![2, 2, 2]);
    }

    #[test]
    fn empty_groups_are_left_out_and_the_untaken_are_the_rest() {
        // Nobody matches selector 0 (bit 1); selector 1 (bit 2) matches
        // ranks 0 and 2.
        let masks = [2, 0, 2, 0];
        let groups = [
            anyone("nobody", Amount::All),
            anyone("some", Amount::Count(1)),
        ];
        let filled = fill(&masks, &groups, &[0, 1]);
        assert_eq!(filled.group_of, vec![0, 1, 1, 1]);
        assert_eq!(filled.sizes, vec![1, 3]);
        assert_eq!(
            filled.labels,
            vec![Some("some".into()), Some("rest".into())]
        );
    }

    #[test]
    fn a_share_rounds_up_and_never_takes_more_than_is_left() {
        let filled = fill(&[1; 3], &[anyone("a", Amount::Share(0.1))], &[0]);
        assert_eq!(filled.sizes, vec![1, 2]);
        let filled = fill(&[1; 3], &[anyone("a", Amount::Count(99))], &[0]);
        assert_eq!(filled.sizes, vec![3]);
    }

    #[test]
    fn failure_classes_have_the_wit_s_names() {
        let names: Vec<&str> = CLASSES.into_iter().map(FailureClass::as_str).collect();
        for class in CLASSES {
            assert_eq!(FailureClass::parse(class.as_str()), Some(class));
        }
        assert_eq!(FailureClass::parse("battery"), None);
        assert_eq!(
            names,
            [
                "download",
                "verification",
                "incompatible",
                "flash",
                "power",
                "rejected-by-device",
                "timeout",
                "other"
            ]
        );
    }

    #[test]
    fn plans_are_checked_before_they_are_filled() {
        assert_eq!(plan_problem(&[group("a", &[], Amount::All)]), None);
        assert!(plan_problem(&[]).unwrap().contains("no group"));
        assert!(
            plan_problem(&[group("a", &[], Amount::Share(1.5))])
                .unwrap()
                .contains("not in (0, 1]")
        );
        assert!(
            plan_problem(&[group("a", &[], Amount::Share(f64::NAN))])
                .unwrap()
                .contains("not in (0, 1]")
        );
        assert!(
            plan_problem(&[group(&"x".repeat(101), &[], Amount::All)])
                .unwrap()
                .contains("label")
        );
        let many: Vec<Group> = (0..65)
            .map(|i| group("g", &[&format!("m{i}")], Amount::All))
            .collect();
        assert!(
            plan_problem(&many)
                .unwrap()
                .contains("65 different selectors")
        );
    }

    #[test]
    fn groups_share_their_selectors() {
        let groups = [
            group("a", &["x"], Amount::Count(1)),
            group("b", &[], Amount::All),
            group("c", &["x"], Amount::All),
        ];
        let (selectors, indexes) = distinct_selectors(&groups);
        assert_eq!(selectors.len(), 2);
        assert_eq!(indexes, vec![0, 1, 0]);
    }
}

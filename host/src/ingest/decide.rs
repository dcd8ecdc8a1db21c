//! What one status report does to one execution: the rule, pure, in one
//! place. Ingestion folds a device's statuses over its execution with it,
//! whether a batch is applied in one transaction or message by message.
//!
//! In order: a status of another attempt than the execution's current one
//! is stale; one naming another firmware than the job's is refused; an
//! execution that is queued (not dispatched) takes no status; a terminal
//! one takes none; a status never moves an execution backwards; the same
//! state again only updates the progress (or, for `waiting`, why it
//! waits); a failure with retries left sends the execution back to the
//! queue. A device that stopped an update (`cancelled`) ends its
//! execution cancelled; one already cancelled takes it as the device's
//! confirmation.
//!
//! The device is the truth: a `done` or `error` of the current attempt that
//! arrives after the host gave up (`timed_out`, `expired`, or `queued` again for a
//! retry after a timeout) moves the execution to what the device says; a
//! `done` after a cancel leaves the execution cancelled but still says
//! what the device now runs. Nothing moves a `done` execution backwards.

use super::Refusal;
use crate::domain::ExecutionStatus;

/// An execution as a status finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub id: i64,
    pub status: ExecutionStatus,
    /// Dispatches so far: the current attempt's number.
    pub attempts: i32,
    pub max_retries: i32,
    pub firmware_id: String,
    pub progress: Option<i16>,
    /// Why its device waits, when it does.
    pub waiting_reason: Option<String>,
}

/// What a device says in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported<'a> {
    pub state: ExecutionStatus,
    /// The attempt the status answers, when the device says.
    pub attempt: Option<u32>,
    pub firmware_id: Option<&'a str>,
    pub progress: Option<i16>,
    pub error: Option<&'a str>,
    /// Why it waits (`waiting`) or stopped (`cancelled`).
    pub reason: Option<&'a str>,
}

/// What the status does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: refused for this cause.
    Refuse(Refusal, String),
    /// The state it is in again: only the progress, when it changed
    /// (no state change, no event).
    Progress(Option<i16>),
    /// A state change. `to` is what is stored: `queued` for a failure with
    /// retries left (the reported state is the status's own). `reason`:
    /// the failure's, or why the device waits or stopped. `late`: the
    /// host had given up on the attempt, and the device finished it. (A
    /// waiting device that waits for another reason moves from `waiting`
    /// to `waiting`.)
    Move {
        to: ExecutionStatus,
        reason: Option<String>,
        progress: Option<i16>,
        late: bool,
    },
    /// The execution stays as it is (cancelled), but the device installed
    /// the job's firmware all the same: what it runs changes.
    Installed,
}

/// Decides what `status` does to `current`.
pub fn decide(current: &Current, status: &Reported<'_>) -> Decision {
    if let Some(attempt) = status.attempt
        && i64::from(attempt) != i64::from(current.attempts)
    {
        return Decision::Refuse(
            Refusal::StaleAttempt,
            format!(
                "status of attempt {attempt}, execution {} is at attempt {}",
                current.id, current.attempts
            ),
        );
    }
    if let Some(firmware) = status.firmware_id
        && firmware != current.firmware_id
    {
        return Decision::Refuse(
            Refusal::WrongFirmware,
            format!(
                "firmware {firmware} is not the one of execution {}",
                current.id
            ),
        );
    }
    let from = current.status;
    let next = status.state;
    // The current attempt's own last word, after the host gave up on it.
    let of_this_attempt = status.attempt.is_some() || from != ExecutionStatus::Queued;
    let finished = matches!(next, ExecutionStatus::Done | ExecutionStatus::Error);
    let gave_up = matches!(from, ExecutionStatus::TimedOut | ExecutionStatus::Expired)
        || (from == ExecutionStatus::Queued
            && next == ExecutionStatus::Done
            && current.attempts > 0);
    if gave_up && finished && of_this_attempt {
        return Decision::Move {
            to: next,
            reason: status.error.map(str::to_owned),
            progress: status.progress.or(if next == ExecutionStatus::Done {
                Some(100)
            } else {
                current.progress
            }),
            late: true,
        };
    }
    if from == ExecutionStatus::Cancelled && next == ExecutionStatus::Done {
        return Decision::Installed;
    }
    if from == ExecutionStatus::Cancelled && next == ExecutionStatus::Cancelled {
        // The device confirms the cancel.
        return Decision::Progress(None);
    }
    if from == ExecutionStatus::Queued {
        return Decision::Refuse(
            Refusal::NotDispatched,
            format!(
                "execution {} is not dispatched (a late status of an earlier attempt?)",
                current.id
            ),
        );
    }
    if let Err(reason) = from.check_transition(next) {
        return Decision::Refuse(Refusal::StateMachine, reason);
    }
    let waits_otherwise =
        next == ExecutionStatus::Waiting && status.reason != current.waiting_reason.as_deref();
    if from == next && !waits_otherwise {
        let changed = status.progress.is_some() && status.progress != current.progress;
        return Decision::Progress(if changed { status.progress } else { None });
    }
    let retry = next == ExecutionStatus::Error && current.attempts <= current.max_retries;
    let to = if retry { ExecutionStatus::Queued } else { next };
    let reason = match (next, status.error, retry) {
        (ExecutionStatus::Waiting, ..) => status.reason.map(str::to_owned),
        (ExecutionStatus::Cancelled, error, _) => status.reason.or(error).map(str::to_owned),
        (_, Some(error), true) => Some(format!("{error} (will retry)")),
        (_, error, _) => error.map(str::to_owned),
    };
    let progress = status.progress.or(if to == ExecutionStatus::Done {
        Some(100)
    } else {
        current.progress
    });
    Decision::Move {
        to,
        reason,
        progress,
        late: false,
    }
}

impl Current {
    /// The execution after `decision`.
    pub fn apply(&mut self, decision: &Decision) {
        match decision {
            Decision::Refuse(..) | Decision::Installed => {}
            Decision::Progress(progress) => {
                if progress.is_some() {
                    self.progress = *progress;
                }
            }
            Decision::Move {
                to,
                progress,
                reason,
                ..
            } => {
                self.status = *to;
                self.progress = *progress;
                self.waiting_reason = if *to == ExecutionStatus::Waiting {
                    reason.clone()
                } else {
                    None
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use ExecutionStatus as S;

    fn current(status: ExecutionStatus, attempts: i32, max_retries: i32) -> Current {
        Current {
            id: 7,
            status,
            attempts,
            max_retries,
            firmware_id: "fw".into(),
            progress: None,
            waiting_reason: None,
        }
    }

    fn reported(state: ExecutionStatus, attempt: Option<u32>) -> Reported<'static> {
        Reported {
            state,
            attempt,
            firmware_id: None,
            progress: None,
            error: None,
            reason: None,
        }
    }

    /// What each reported state does to each stored one, for a status of
    /// the current attempt (or naming none): M moves, L moves a late
    /// report (the host had given up), P only progresses, I leaves the
    /// execution but changes what the device runs, N refused as not
    /// dispatched, S refused by the state machine. `x/y`: x when the
    /// status names no attempt, y when it names the current one.
    const TABLE: [(ExecutionStatus, &str); 12] = [
        //              init down wait flash reboot done error cancelled
        (S::Queued, "N N N N N N/L N N"),
        (S::Dispatched, "M M M M M M M M"),
        (S::Init, "P M M M M M M M"),
        (S::Downloading, "S P M M M M M M"),
        (S::Waiting, "S S P M M M M M"),
        (S::Flashing, "S S S P M M M M"),
        (S::Rebooting, "S S S S P M M M"),
        (S::Done, "S S S S S S S S"),
        (S::Error, "S S S S S S S S"),
        (S::TimedOut, "S S S S S L L S"),
        (S::Expired, "S S S S S L L S"),
        (S::Cancelled, "S S S S S I S P"),
    ];
    const REPORTED: [ExecutionStatus; 8] = [
        S::Init,
        S::Downloading,
        S::Waiting,
        S::Flashing,
        S::Rebooting,
        S::Done,
        S::Error,
        S::Cancelled,
    ];

    fn kind(decision: &Decision) -> &'static str {
        match decision {
            Decision::Move { late: false, .. } => "M",
            Decision::Move { late: true, .. } => "L",
            Decision::Installed => "I",
            Decision::Progress(_) => "P",
            Decision::Refuse(Refusal::NotDispatched, _) => "N",
            Decision::Refuse(Refusal::StateMachine, _) => "S",
            Decision::Refuse(Refusal::StaleAttempt, _) => "stale",
            Decision::Refuse(..) => "other",
        }
    }

    #[test]
    fn every_pair_of_states_and_attempts() {
        for (stored, row) in TABLE {
            let expected: Vec<&str> = row.split_whitespace().collect();
            for (state, want) in REPORTED.into_iter().zip(expected) {
                let execution = current(stored, 2, 0);
                // The current attempt, or none named: the table.
                let (unnamed, named) = want.split_once('/').unwrap_or((want, want));
                for (attempt, want) in [(None, unnamed), (Some(2), named)] {
                    let got = decide(&execution, &reported(state, attempt));
                    assert_eq!(
                        kind(&got),
                        want,
                        "{stored} <- {state} ({attempt:?}): {got:?}"
                    );
                }
                // An earlier or a later attempt: stale, whatever the states.
                for attempt in [1, 3] {
                    let got = decide(&execution, &reported(state, Some(attempt)));
                    assert_eq!(
                        kind(&got),
                        "stale",
                        "{stored} <- {state} (attempt {attempt})"
                    );
                }
            }
        }
    }

    #[test]
    fn failures_with_retries_left_go_back_to_the_queue() {
        let failing = Reported {
            error: Some("flash failed"),
            ..reported(S::Error, Some(1))
        };
        assert_eq!(
            decide(&current(S::Flashing, 1, 1), &failing),
            Decision::Move {
                to: S::Queued,
                reason: Some("flash failed (will retry)".into()),
                progress: None,
                late: false,
            }
        );
        // The last attempt's failure is final.
        let last = Reported {
            attempt: Some(2),
            ..failing
        };
        assert_eq!(
            decide(&current(S::Flashing, 2, 1), &last),
            Decision::Move {
                to: S::Error,
                reason: Some("flash failed".into()),
                progress: None,
                late: false,
            }
        );
    }

    #[test]
    fn the_device_is_the_truth_after_the_host_gave_up() {
        // Timed out, no retries: the device finished after all.
        let done = reported(S::Done, Some(1));
        assert_eq!(
            decide(&current(S::TimedOut, 1, 0), &done),
            Decision::Move {
                to: S::Done,
                reason: None,
                progress: Some(100),
                late: true,
            }
        );
        // A late failure is final: the retry is for stalls, not for this.
        let failed = Reported {
            error: Some("flash failed"),
            ..reported(S::Error, Some(1))
        };
        assert!(matches!(
            decide(&current(S::TimedOut, 1, 3), &failed),
            Decision::Move {
                to: S::Error,
                late: true,
                ..
            }
        ));
        // Queued again after a timeout, before the next dispatch: the
        // attempt that timed out is done, no second attempt is needed.
        assert!(matches!(
            decide(&current(S::Queued, 1, 1), &done),
            Decision::Move {
                to: S::Done,
                late: true,
                ..
            }
        ));
        // Never queued yet: nothing of it can be late.
        assert!(matches!(
            decide(&current(S::Queued, 0, 1), &reported(S::Done, None)),
            Decision::Refuse(Refusal::NotDispatched, _)
        ));
        // Done stays done.
        assert!(matches!(
            decide(&current(S::Done, 1, 0), &failed),
            Decision::Refuse(Refusal::StateMachine, _)
        ));
        let mut cancelled = current(S::Cancelled, 1, 0);
        let decision = decide(&cancelled, &done);
        assert_eq!(decision, Decision::Installed);
        cancelled.apply(&decision);
        assert_eq!(cancelled.status, S::Cancelled);
    }

    #[test]
    fn the_firmware_a_status_names_must_be_the_jobs() {
        let other = Reported {
            firmware_id: Some("other"),
            ..reported(S::Done, None)
        };
        let got = decide(&current(S::Downloading, 1, 0), &other);
        assert!(matches!(got, Decision::Refuse(Refusal::WrongFirmware, _)));
        let same = Reported {
            firmware_id: Some("fw"),
            ..other
        };
        assert!(matches!(
            decide(&current(S::Downloading, 1, 0), &same),
            Decision::Move {
                to: S::Done,
                progress: Some(100),
                ..
            }
        ));
    }

    #[test]
    fn a_waiting_device_says_why_and_the_reason_moves_with_it() {
        let mut execution = current(S::Downloading, 1, 0);
        let parked = Reported {
            reason: Some("engine-running"),
            ..reported(S::Waiting, Some(1))
        };
        let first = decide(&execution, &parked);
        assert_eq!(
            first,
            Decision::Move {
                to: S::Waiting,
                reason: Some("engine-running".into()),
                progress: None,
                late: false,
            }
        );
        execution.apply(&first);
        assert_eq!(execution.waiting_reason.as_deref(), Some("engine-running"));
        // The same reason again changes nothing; another one is a move.
        assert_eq!(decide(&execution, &parked), Decision::Progress(None));
        let driving = Reported {
            reason: Some("driving"),
            ..parked.clone()
        };
        let second = decide(&execution, &driving);
        assert!(matches!(second, Decision::Move { to: S::Waiting, .. }));
        execution.apply(&second);
        assert_eq!(execution.waiting_reason.as_deref(), Some("driving"));
        // Flashing at last: the reason is gone.
        let flashing = decide(&execution, &reported(S::Flashing, Some(1)));
        execution.apply(&flashing);
        assert_eq!(
            (execution.status, execution.waiting_reason),
            (S::Flashing, None)
        );
    }

    #[test]
    fn a_device_that_stopped_ends_cancelled() {
        let stopped = Reported {
            reason: Some("cancelled by the operator"),
            ..reported(S::Cancelled, Some(1))
        };
        assert_eq!(
            decide(&current(S::Waiting, 1, 3), &stopped),
            Decision::Move {
                to: S::Cancelled,
                reason: Some("cancelled by the operator".into()),
                progress: None,
                late: false,
            }
        );
        // Already cancelled by the host: the device's word confirms it.
        assert_eq!(
            decide(&current(S::Cancelled, 1, 0), &stopped),
            Decision::Progress(None)
        );
    }

    #[test]
    fn progress_in_the_same_state_is_kept_once() {
        let mut execution = current(S::Downloading, 1, 0);
        let status = Reported {
            progress: Some(40),
            ..reported(S::Downloading, None)
        };
        let first = decide(&execution, &status);
        assert_eq!(first, Decision::Progress(Some(40)));
        execution.apply(&first);
        assert_eq!(decide(&execution, &status), Decision::Progress(None));
    }

    /// A device's statuses of one attempt, in the order it sends them.
    fn sequence() -> impl Strategy<Value = Vec<Reported<'static>>> {
        let ending = prop_oneof![
            Just(S::Done),
            Just(S::Error),
            Just(S::Rebooting),
            Just(S::Cancelled)
        ];
        (
            proptest::collection::vec(0..5usize, 0..6),
            ending,
            0..101i16,
        )
            .prop_map(|(steps, ending, progress)| {
                let mut states: Vec<ExecutionStatus> =
                    steps.into_iter().map(|i| REPORTED[i]).collect();
                states.sort();
                states.push(ending);
                states
                    .into_iter()
                    .map(|state| Reported {
                        progress: (state == S::Downloading).then_some(progress),
                        error: (state == S::Error).then_some("failed"),
                        ..reported(state, Some(1))
                    })
                    .collect()
            })
    }

    fn fold(statuses: &[Reported<'_>], max_retries: i32) -> ExecutionStatus {
        let mut execution = current(S::Dispatched, 1, max_retries);
        for status in statuses {
            let decision = decide(&execution, status);
            execution.apply(&decision);
        }
        execution.status
    }

    proptest! {
        /// Statuses arrive out of order and repeated (replicas share a
        /// subscription, brokers redeliver): whatever the order, an
        /// execution ends where the statuses in order take it.
        #[test]
        fn any_order_with_repeats_ends_where_the_order_does(
            statuses in sequence(),
            repeats in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            order in any::<u64>(),
            max_retries in 0..2i32,
        ) {
            let in_order = fold(&statuses, max_retries);
            let mut shuffled = statuses.clone();
            for index in &repeats {
                shuffled.push(index.get(&statuses).clone());
            }
            // A permutation drawn from `order` (Fisher-Yates on a small LCG).
            let mut seed = order;
            for i in (1..shuffled.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (seed >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(fold(&shuffled, max_retries), in_order);
        }
    }
}

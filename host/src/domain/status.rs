//! The two state machines of Rollway: a job's and a device execution's.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ParseError;

/// The life of a job.
///
/// ```text
/// scheduled ──> running <──> paused
///     │            │            │
///     │            ├──> completed / failed
///     └────────────┴────────────┴──> cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Scheduled,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Scheduled,
        JobStatus::Running,
        JobStatus::Paused,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| ParseError(format!("unknown job status '{raw}'")))
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Whether a job may move from `self` to `next`; `Err` explains why not.
    pub fn check_transition(self, next: JobStatus) -> Result<(), String> {
        use JobStatus::*;
        let allowed = matches!(
            (self, next),
            (Scheduled, Running | Cancelled)
                | (Running, Paused | Completed | Failed | Cancelled)
                | (Paused, Running | Cancelled)
        );
        if allowed {
            Ok(())
        } else if self.is_terminal() {
            Err(format!(
                "job is already {self}; a finished job cannot change"
            ))
        } else {
            Err(format!("a {self} job cannot become {next}"))
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The life of one device's update within a job. Progress states only move
/// forward (a device may skip some, e.g. when an `init` message is lost);
/// terminal states are final. A retry re-queues a failed execution
/// explicitly, never through a status report.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Dispatched,
    Init,
    Downloading,
    /// The device holds the downloaded image until it may install (the
    /// job's install policy `when-safe`), for a reason it gives.
    Waiting,
    Flashing,
    Rebooting,
    Done,
    Error,
    TimedOut,
    /// Not delivered by the job's delivery deadline: the device stayed
    /// away. Final for the host; a device's late `done` still counts.
    Expired,
    Cancelled,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 12] = [
        ExecutionStatus::Queued,
        ExecutionStatus::Dispatched,
        ExecutionStatus::Init,
        ExecutionStatus::Downloading,
        ExecutionStatus::Waiting,
        ExecutionStatus::Flashing,
        ExecutionStatus::Rebooting,
        ExecutionStatus::Done,
        ExecutionStatus::Error,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Expired,
        ExecutionStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Dispatched => "dispatched",
            ExecutionStatus::Init => "init",
            ExecutionStatus::Downloading => "downloading",
            ExecutionStatus::Waiting => "waiting",
            ExecutionStatus::Flashing => "flashing",
            ExecutionStatus::Rebooting => "rebooting",
            ExecutionStatus::Done => "done",
            ExecutionStatus::Error => "error",
            ExecutionStatus::TimedOut => "timed_out",
            ExecutionStatus::Expired => "expired",
            ExecutionStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| ParseError(format!("unknown execution status '{raw}'")))
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Done
                | ExecutionStatus::Error
                | ExecutionStatus::TimedOut
                | ExecutionStatus::Expired
                | ExecutionStatus::Cancelled
        )
    }

    /// Statuses in which the device is working on the update.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Dispatched
                | ExecutionStatus::Init
                | ExecutionStatus::Downloading
                | ExecutionStatus::Waiting
                | ExecutionStatus::Flashing
                | ExecutionStatus::Rebooting
        )
    }

    /// Whether a status report may move an execution from `self` to `next`.
    /// Re-reporting the current progress state (e.g. more download progress)
    /// is allowed; moving backwards or leaving a terminal state is not.
    pub fn check_transition(self, next: ExecutionStatus) -> Result<(), String> {
        if self.is_terminal() {
            return Err(format!(
                "execution is already {self}; it cannot become {next}"
            ));
        }
        if next.is_terminal() {
            return Ok(());
        }
        if next >= self {
            Ok(())
        } else {
            Err(format!("execution cannot go back from {self} to {next}"))
        }
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_transitions() {
        use JobStatus::*;
        assert!(Scheduled.check_transition(Running).is_ok());
        assert!(Running.check_transition(Paused).is_ok());
        assert!(Paused.check_transition(Running).is_ok());
        assert!(Paused.check_transition(Cancelled).is_ok());
        assert!(Scheduled.check_transition(Paused).is_err());
        assert!(
            Completed
                .check_transition(Cancelled)
                .unwrap_err()
                .contains("finished")
        );
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()).unwrap(), s);
        }
    }

    #[test]
    fn execution_transitions_only_move_forward() {
        use ExecutionStatus::*;
        assert!(Dispatched.check_transition(Downloading).is_ok());
        assert!(Downloading.check_transition(Downloading).is_ok());
        assert!(Flashing.check_transition(Downloading).is_err());
        assert!(Downloading.check_transition(Waiting).is_ok());
        assert!(Waiting.check_transition(Flashing).is_ok());
        assert!(Waiting.check_transition(Downloading).is_err());
        assert!(Downloading.check_transition(Error).is_ok());
        assert!(Done.check_transition(Error).is_err());
        assert!(Error.check_transition(Done).is_err());
        for s in ExecutionStatus::ALL {
            assert_eq!(ExecutionStatus::parse(s.as_str()).unwrap(), s);
        }
    }
}

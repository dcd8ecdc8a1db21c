//! The standard JSON status message devices send on
//! `{prefix}/{device_id}/update/status`:
//!
//! ```json
//! {"message_id": "m-17", "state": "downloading", "progress": 42,
//!  "execution_id": 1234, "firmware_id": "…", "job_id": "…",
//!  "error": null, "version": "1.4.0", "ts": 1764000000000,
//!  "device_id": "VIN123", "attempt": 2}
//! ```
//!
//! `attempt` echoes the command's `attempt`: the host refuses a status of
//! an attempt other than the execution's current one (a late status of a
//! timed-out attempt, say).
//!
//! `device_id` defaults to the topic's device (a gateway names its child);
//! `status` is accepted for `state`.
//!
//! `waiting` (the device holds the downloaded image until it may install,
//! a job whose install policy is `when-safe`) and `cancelled` (it stopped
//! the update before flashing) carry a `reason` (at most 256 characters),
//! e.g. `{"message_id": "m-18", "state": "waiting", "reason":
//! "engine-running", "execution_id": 1234, "attempt": 1}`.

use serde::Deserialize;

/// Largest status payload accepted.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Longest reason a waiting or cancelled device gives.
pub const MAX_REASON: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Init,
    Downloading,
    /// Holds the downloaded image until it may install.
    Waiting,
    Flashing,
    Rebooting,
    Done,
    Error,
    /// Stopped the update before flashing, as a cancel told it to.
    Cancelled,
}

/// A parsed status in plain Rust types.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub device_id: String,
    pub message_id: String,
    pub state: State,
    pub progress: Option<u8>,
    pub error: Option<String>,
    pub job_id: Option<String>,
    pub execution_id: Option<u64>,
    pub firmware_id: Option<String>,
    pub installed_version: Option<String>,
    pub sent_at: Option<u64>,
    /// The attempt of the command this status answers.
    pub attempt: Option<u32>,
    /// Why the device waits (`waiting`) or stopped (`cancelled`).
    pub reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    message_id: String,
    #[serde(alias = "status")]
    state: State,
    device_id: Option<String>,
    progress: Option<u8>,
    error: Option<String>,
    job_id: Option<String>,
    execution_id: Option<u64>,
    firmware_id: Option<String>,
    version: Option<String>,
    ts: Option<u64>,
    attempt: Option<u32>,
    reason: Option<String>,
}

fn short(field: &str, value: &Option<String>, max: usize) -> Result<(), String> {
    match value {
        Some(v) if v.len() > max => Err(format!("{field} is longer than {max} characters")),
        _ => Ok(()),
    }
}

/// Parses and checks a standard status payload.
pub fn parse_json(topic_device_id: &str, payload: &[u8]) -> Result<Status, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "status payload of {} bytes exceeds {MAX_PAYLOAD}",
            payload.len()
        ));
    }
    let wire: Wire =
        serde_json::from_slice(payload).map_err(|e| format!("malformed status JSON: {e}"))?;
    if wire.message_id.is_empty() || wire.message_id.len() > 128 {
        return Err("message_id must be 1 to 128 characters".into());
    }
    if let Some(p) = wire.progress
        && p > 100
    {
        return Err(format!("progress {p} is above 100"));
    }
    short("error", &wire.error, 1024)?;
    short("job_id", &wire.job_id, 64)?;
    short("firmware_id", &wire.firmware_id, 64)?;
    short("version", &wire.version, 64)?;
    short("device_id", &wire.device_id, 64)?;
    short("reason", &wire.reason, MAX_REASON)?;
    if let Some(reason) = &wire.reason
        && (reason.is_empty() || reason.chars().any(char::is_control))
    {
        return Err("reason must be 1 to 256 characters without control characters".into());
    }
    let error = match (wire.state, wire.error) {
        (State::Error, None) => Some("device reported an error without a reason".to_owned()),
        (_, e) => e,
    };
    Ok(Status {
        device_id: wire.device_id.unwrap_or_else(|| topic_device_id.to_owned()),
        message_id: wire.message_id,
        state: wire.state,
        progress: wire.progress,
        error,
        job_id: wire.job_id,
        execution_id: wire.execution_id,
        firmware_id: wire.firmware_id,
        installed_version: wire.version,
        sent_at: wire.ts,
        attempt: wire.attempt,
        reason: wire.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_standard_message() {
        let s = parse_json(
            "VIN1",
            br#"{"message_id":"m1","status":"downloading","progress":42,"execution_id":7}"#,
        )
        .unwrap();
        assert_eq!(s.device_id, "VIN1");
        assert_eq!(s.state, State::Downloading);
        assert_eq!(s.progress, Some(42));
        assert_eq!(s.execution_id, Some(7));
        assert_eq!(s.attempt, None);
        let retried = parse_json(
            "VIN1",
            br#"{"message_id":"m3","state":"init","execution_id":7,"attempt":2}"#,
        )
        .unwrap();
        assert_eq!(retried.attempt, Some(2));
        let e = parse_json(
            "GW",
            br#"{"message_id":"m2","state":"error","device_id":"MCU"}"#,
        )
        .unwrap();
        assert_eq!(e.device_id, "MCU");
        assert!(e.error.is_some());
        let parked = parse_json(
            "VIN1",
            br#"{"message_id":"m4","state":"waiting","reason":"engine-running","execution_id":7}"#,
        )
        .unwrap();
        assert_eq!(parked.state, State::Waiting);
        assert_eq!(parked.reason.as_deref(), Some("engine-running"));
        let stopped = parse_json("VIN1", br#"{"message_id":"m5","state":"cancelled"}"#).unwrap();
        assert_eq!(stopped.state, State::Cancelled);
    }

    #[test]
    fn refuses_bad_messages() {
        for bad in [
            &b"not json"[..],
            br#"{"state":"done"}"#,
            br#"{"message_id":"","state":"done"}"#,
            br#"{"message_id":"m","state":"exploded"}"#,
            br#"{"message_id":"m","state":"downloading","progress":101}"#,
            br#"{"message_id":"m","state":"done","extra":1}"#,
            br#"{"message_id":"m","state":"done","attempt":-1}"#,
            br#"{"message_id":"m","state":"waiting","reason":""}"#,
            br#"{"message_id":"m","state":"waiting","reason":"a\nb"}"#,
        ] {
            assert!(
                parse_json("D", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_json("D", &vec![b' '; MAX_PAYLOAD + 1]).is_err());
    }
}

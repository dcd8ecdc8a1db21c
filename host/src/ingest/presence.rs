//! Presence messages: what devices say about themselves when they
//! (re)connect (`{prefix}/{device}/presence`), and the last wills their
//! broker publishes there when they drop off.
//!
//! A message is parsed by its family's plugin when it exports `presence`
//! (WIT 0.1.3), else read as the standard presence JSON. A device speaks
//! for itself, a gateway for itself and the devices behind it; what it
//! says (online or away, the version and security counter it runs, its
//! hardware facts) replaces what was recorded. Presence never moves an
//! execution: statuses do. A hello of a device with an update in flight
//! has its command sent again.

use std::collections::HashMap;

use bytes::Bytes;
use sqlx::PgConnection;

use super::batch::Parsed;
use super::{Ingest, Outcome, Refusal};
use crate::domain::{DeviceId, ExecutionStatus};
use crate::fleet::{self, Seen};
use crate::outbox;
use crate::plugins::{PluginError, Presence};

/// Largest presence payload accepted.
pub const MAX_PAYLOAD: usize = rollway_plugin_sdk::presence::MAX_PAYLOAD;
/// Longest version and hardware text kept.
const MAX_TEXT: usize = 256;
/// Most hardware facts of one device.
const MAX_HARDWARE: usize = rollway_plugin_sdk::presence::MAX_HARDWARE;

/// One presence message of a registered sender.
pub(super) struct Item {
    pub index: usize,
    pub sender: String,
    pub family: String,
    pub payload: Bytes,
}

/// One device's entry of a presence message, with the message's index.
pub(super) type Entry = (usize, Seen);

impl Ingest {
    /// Parses and checks presence messages, outside any transaction (a
    /// plugin call may take its time). A message refused here gets its
    /// outcome; the others' entries are returned, in order.
    pub(super) async fn parse_presences(
        &self,
        items: Vec<Item>,
        outcomes: &mut [Option<Outcome>],
    ) -> Vec<Entry> {
        let mut entries = Vec::new();
        for item in items {
            let parsed = self
                .plugins
                .parse_presence(&item.family, &item.sender, item.payload.clone())
                .await;
            let devices = match parsed {
                Ok(devices) => devices,
                Err(PluginError::Refused { reason, .. }) => {
                    let cause =
                        if serde_json::from_slice::<serde::de::IgnoredAny>(&item.payload).is_ok() {
                            Refusal::Schema
                        } else {
                            Refusal::BadJson
                        };
                    outcomes[item.index] = Some(Outcome::refused(cause, reason));
                    continue;
                }
                Err(other) => {
                    outcomes[item.index] =
                        Some(Outcome::refused(Refusal::PluginFailed, other.to_string()));
                    continue;
                }
            };
            match checked(&item.sender, devices) {
                Ok(seen) => entries.extend(seen.into_iter().map(|s| (item.index, s))),
                Err(detail) => {
                    outcomes[item.index] = Some(Outcome::refused(Refusal::BadText, detail));
                }
            }
        }
        entries
    }

    /// Records presence entries in `conn`. Each message's outcome goes to
    /// `outcomes[index]`: `Recorded` when what the sender said of itself
    /// was recorded, even if some device it spoke for was refused (that one
    /// is logged and counted apart, as spoofed). Returns the devices that
    /// said hello, for their updates in flight to be sent again
    /// ([`crate::jobs::executions::resend_to`], after the commit: it locks
    /// executions, which every writer takes before devices).
    pub(super) async fn record_presences(
        &self,
        conn: &mut PgConnection,
        entries: Vec<Entry>,
        outcomes: &mut [Option<Outcome>],
    ) -> anyhow::Result<Vec<String>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (owners, seen): (Vec<usize>, Vec<Seen>) = entries.into_iter().unzip();
        let fleet::Recorded { allowed, drifted } = fleet::record_presence(conn, &seen).await?;
        for device in &drifted {
            // Flashed outside Rollway: what it runs stands, and is flagged.
            outbox::enqueue(
                conn,
                outbox::Event {
                    kind: outbox::EventType::DeviceDriftDetected,
                    aggregate_id: &device.id,
                    payload: serde_json::json!({
                        "device_id": device.id,
                        "installed_version": device.firmware_version,
                        "expected_version": device.expected_version,
                    }),
                },
            )
            .await?;
            tracing::info!(device_id = %device.id, installed = ?device.firmware_version,
                expected = ?device.expected_version, "device runs a version Rollway did not install");
        }
        self.metrics.device_drift_total.inc_by(drifted.len() as u64);
        let hellos: Vec<String> = seen
            .iter()
            .zip(&allowed)
            .filter(|(s, allowed)| s.online && **allowed)
            .map(|(s, _)| s.device_id.clone())
            .collect();
        for ((entry, owner), allowed) in seen.iter().zip(owners).zip(allowed) {
            let own = entry.device_id == entry.sender;
            match (own, allowed) {
                (true, true) => outcomes[owner] = Some(Outcome::Recorded),
                (true, false) => {
                    // The sender was registered when the batch began; it
                    // has been removed since.
                    outcomes[owner] = Some(Outcome::refused(
                        Refusal::UnknownDevice,
                        format!("device {:?} is no longer registered", entry.sender),
                    ));
                }
                (false, true) => {}
                (false, false) => {
                    let detail = format!(
                        "{:?} spoke for {:?}, which is not behind it",
                        entry.sender, entry.device_id
                    );
                    self.metrics
                        .presence_messages_total
                        .with_label_values(&[Refusal::Spoofed.result(), Refusal::Spoofed.reason()])
                        .inc();
                    self.refusals.record(Refusal::Spoofed, &detail);
                }
            }
        }
        Ok(hellos)
    }
}

/// Presence entries as if applied in arrival order after the statuses of
/// the same batch: an entry that came before an applied `done` of its
/// device no longer says what the device runs (the `done` does).
pub(super) fn before_done(
    mut entries: Vec<Entry>,
    statuses: &[Parsed],
    outcomes: &[Option<Outcome>],
) -> Vec<Entry> {
    let mut done_at: HashMap<&str, usize> = HashMap::new();
    for status in statuses {
        if status.state == ExecutionStatus::Done
            && outcomes[status.index].as_ref().is_some_and(Outcome::taken)
        {
            let at = done_at
                .entry(status.report.device_id.as_str())
                .or_insert(status.index);
            *at = (*at).max(status.index);
        }
    }
    for (index, entry) in &mut entries {
        if done_at
            .get(entry.device_id.as_str())
            .is_some_and(|done| done > index)
        {
            entry.installed_version = None;
            entry.security_counter = None;
        }
    }
    entries
}

/// Checks what a plugin made of a presence message: the sender first,
/// ids of the right syntax, short texts without control characters.
fn checked(sender: &str, devices: Vec<Presence>) -> Result<Vec<Seen>, String> {
    match devices.first() {
        Some(first) if first.device_id == sender => {}
        _ => {
            return Err(format!(
                "a presence must speak for its sender {sender:?} first"
            ));
        }
    }
    let text = |name: &str, value: &str| -> Result<(), String> {
        if value.is_empty() || value.len() > MAX_TEXT || value.chars().any(char::is_control) {
            Err(format!(
                "{name} must be 1 to {MAX_TEXT} bytes without control characters"
            ))
        } else {
            Ok(())
        }
    };
    devices
        .into_iter()
        .map(|device| {
            DeviceId::parse(&device.device_id)
                .map_err(|e| format!("device id {:?}: {e}", device.device_id))?;
            if let Some(version) = &device.installed_version {
                text("installed version", version)?;
            }
            if device.hardware.len() > MAX_HARDWARE {
                return Err(format!("at most {MAX_HARDWARE} hardware facts a device"));
            }
            for (key, value) in &device.hardware {
                text("a hardware key", key)?;
                text("a hardware value", value)?;
            }
            let security_counter = device
                .security_counter
                .map(i64::try_from)
                .transpose()
                .map_err(|_| "security counter is out of range".to_owned())?;
            Ok(Seen {
                sender: sender.to_owned(),
                device_id: device.device_id,
                online: device.online,
                installed_version: device.installed_version,
                security_counter,
                hardware: device.hardware.into_iter().collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(id: &str) -> Presence {
        Presence {
            device_id: id.into(),
            online: true,
            installed_version: Some("1.0.0".into()),
            security_counter: Some(1),
            hardware: vec![("board".into(), "rev-b".into())],
        }
    }

    fn status(index: usize, device: &str, state: crate::plugins::StatusState) -> Parsed {
        let parsed = crate::plugins::ParsedStatus {
            state: state.into(),
            reason: None,
            attempt: None,
            report: crate::plugins::StatusReport {
                device_id: device.into(),
                message_id: format!("m{index}"),
                state,
                progress: None,
                error: None,
                job_id: None,
                execution_id: None,
                firmware_id: None,
                installed_version: None,
                sent_at: None,
            },
        };
        Parsed::from_plugin(index, device.into(), parsed)
    }

    #[test]
    fn a_presence_before_an_applied_done_no_longer_names_the_version() {
        use crate::plugins::StatusState as S;
        let entry =
            |index: usize, id: &str| (index, checked(id, vec![presence(id)]).unwrap().remove(0));
        let statuses = [
            status(1, "A", S::Done),
            status(3, "B", S::Done),
            status(5, "C", S::Rebooting),
            status(6, "D", S::Done),
        ];
        let mut outcomes = vec![None; 8];
        for i in [1, 3, 5] {
            outcomes[i] = Some(Outcome::Applied);
        }
        // D's done was refused: it changes nothing.
        outcomes[6] = Some(Outcome::refused(Refusal::StateMachine, "final"));
        let kept = before_done(
            vec![entry(0, "A"), entry(4, "B"), entry(2, "C"), entry(0, "D")],
            &statuses,
            &outcomes,
        );
        let versions: Vec<Option<&str>> = kept
            .iter()
            .map(|(_, s)| s.installed_version.as_deref())
            .collect();
        assert_eq!(
            versions,
            [None, Some("1.0.0"), Some("1.0.0"), Some("1.0.0")]
        );
        assert_eq!(kept[0].1.security_counter, None);
        // What else it said still counts.
        assert!(kept[0].1.online);
        assert_eq!(kept[0].1.hardware.len(), 1);
    }

    #[test]
    fn the_sender_speaks_first_with_clean_texts() {
        assert_eq!(
            checked("GW", vec![presence("GW"), presence("MCU-1")])
                .unwrap()
                .len(),
            2
        );
        assert!(checked("GW", vec![presence("MCU-1")]).is_err());
        assert!(checked("GW", vec![]).is_err());
        let mut bad = presence("GW");
        bad.installed_version = Some("1.0\u{0}".into());
        assert!(checked("GW", vec![bad]).is_err());
        let mut bad = presence("GW");
        bad.hardware = vec![("board".into(), "x\ny".into())];
        assert!(checked("GW", vec![bad]).is_err());
        let mut bad = presence("GW");
        bad.security_counter = Some(u64::MAX);
        assert!(checked("GW", vec![bad]).is_err());
        assert!(checked("GW", vec![presence("GW"), presence("bad id")]).is_err());
    }
}

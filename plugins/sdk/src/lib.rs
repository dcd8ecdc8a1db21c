//! Helpers for Rollway plugins.
//!
//! A plugin crate generates its bindings with `wit_bindgen::generate!` for
//! one world of `wit/plugin.wit`, implements [`rollout::RolloutStrategy`] or
//! [`device::DeviceFamily`] on a type of its own with a typed configuration,
//! and exports it with [`rollout_plugin!`] or [`device_plugin!`]:
//!
//! ```ignore
//! wit_bindgen::generate!({ world: "rollout-strategy-settings", path: "wit" });
//! struct Canary;
//! impl rollway_plugin_sdk::rollout::RolloutStrategy for Canary { /* … */ }
//! rollway_plugin_sdk::rollout_plugin!(Canary, name: "rollout-canary", description: "…");
//! rollway_plugin_sdk::rollout_settings!(Canary); // its CONFIG_SCHEMA
//! ```
//!
//! This crate is plain Rust with no bindings of its own (each plugin
//! generates those for its one world), so strategies and validators are
//! unit-tested natively; the macros bridge its types to the generated ones.

pub mod cancel;
pub mod command;
pub mod config;
pub mod device;
pub mod failure;
pub mod image;
pub mod presence;
pub mod rollout;
pub mod status;
pub mod strategy;

/// Whether an image built for `target` suits a device whose model is
/// `model`. Comparison ignores case and `-`/`_`; a model names a chip or a
/// module (`esp32s3-wroom-1`), so the target must be a prefix of it.
/// Unknown on either side is not a mismatch.
pub fn targets_match(target: Option<&str>, model: Option<&str>) -> bool {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    };
    match (target, model) {
        (Some(target), Some(model)) => norm(model).starts_with(&norm(target)),
        _ => true,
    }
}

/// Defines, in a device plugin crate, conversions between this crate's
/// types and the bindings generated for the `device-protocol-attempts`
/// world:
/// `to_report(status::Status) -> StatusReport` (in the six states of
/// `device.status-state`) and `to_request(&CommandRequest) -> command::Request`.
#[macro_export]
macro_rules! device_conversions {
    () => {
        fn to_report(s: $crate::status::Status) -> exports::rollway::plugin::device::StatusReport {
            use exports::rollway::plugin::device::StatusState;
            use $crate::status::State;
            exports::rollway::plugin::device::StatusReport {
                device_id: s.device_id,
                message_id: s.message_id,
                // The nearest of the six states of `device.status-state`:
                // a waiting device is still downloading, a cancelled one
                // did not update (`control` reports the state itself).
                state: match s.state {
                    State::Init => StatusState::Init,
                    State::Downloading | State::Waiting => StatusState::Downloading,
                    State::Flashing => StatusState::Flashing,
                    State::Rebooting => StatusState::Rebooting,
                    State::Done => StatusState::Done,
                    State::Error | State::Cancelled => StatusState::Error,
                },
                progress: s.progress,
                error: s.error,
                job_id: s.job_id,
                execution_id: s.execution_id,
                firmware_id: s.firmware_id,
                installed_version: s.installed_version,
                sent_at: s.sent_at,
            }
        }

        fn to_request(
            r: &exports::rollway::plugin::device::CommandRequest,
        ) -> $crate::command::Request {
            $crate::command::Request {
                device_id: r.device.id.clone(),
                model: r.device.model.clone(),
                gateway_id: r.device.gateway_id.clone(),
                firmware_id: r.firmware.id.clone(),
                version: r.firmware.version.clone(),
                sha256: r.firmware.sha256.clone(),
                size: r.firmware.size,
                target: r.firmware.target.clone(),
                job_id: r.job_id.clone(),
                execution_id: r.execution_id,
                attempt: r.attempt,
                download_url: r.download_url.clone(),
                manifest: r.manifest.clone(),
                signature: r.signature.clone(),
                key_id: r.key_id.clone(),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chips_match_modules_of_the_same_chip() {
        assert!(targets_match(Some("esp32s3"), Some("ESP32-S3-WROOM-1")));
        assert!(targets_match(Some("esp32"), Some("esp32")));
        assert!(!targets_match(Some("esp32c3"), Some("esp32s3")));
        assert!(targets_match(None, Some("esp32s3")));
        assert!(targets_match(Some("esp32s3"), None));
    }
}

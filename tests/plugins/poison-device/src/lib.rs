//! Test fixture: a device plugin for the family `poison`, built with the
//! SDK (it exports `batch`). It speaks Rollway's standard JSON commands and
//! statuses, but panics (a trap) on a status payload containing `poison`
//! and on a command for a device whose id contains `POISON`, so that a
//! batch holding one fails as a whole and the host must find the culprit.

wit_bindgen::generate!({ world: "device-protocol-attempts", path: "../../../wit" });

use rollway_plugin_sdk::command::Request;
use rollway_plugin_sdk::device::{DeviceFamily, Image, ImageFacts};
use rollway_plugin_sdk::status::Status;

struct Poison;

impl DeviceFamily for Poison {
    type Config = serde_json::Value;
    const FAMILIES: &'static [&'static str] = &["poison"];

    fn validate_image(
        _config: &Self::Config,
        _image: &mut Image<'_>,
    ) -> Result<ImageFacts, String> {
        Ok(ImageFacts::default())
    }

    // The SDK builds the standard command around these fields.
    fn command_fields(
        _config: &Self::Config,
        request: &Request,
    ) -> Result<serde_json::Value, String> {
        if request.device_id.contains("POISON") {
            panic!("a poisoned device");
        }
        Ok(serde_json::json!({}))
    }

    fn parse_status(
        _config: &Self::Config,
        topic_device_id: &str,
        payload: &[u8],
    ) -> Result<Status, String> {
        if payload.windows(6).any(|w| w == b"poison") {
            panic!("a poisoned status");
        }
        rollway_plugin_sdk::status::parse_json(topic_device_id, payload)
    }
}

rollway_plugin_sdk::device_plugin!(Poison, name: "device-poison", description: "Traps on poison (test fixture)");

//! Test fixture: a device plugin for the family `legacy`, built against
//! `rollway:plugin@0.1.0` (a frozen copy of that release's WIT is in
//! `wit/`). It exports `device` only, as every plugin did before 0.1.1:
//! its statuses name no attempt. It accepts any image and speaks Rollway's
//! standard JSON commands and statuses.

wit_bindgen::generate!({ world: "device-protocol", path: "wit" });

use exports::rollway::plugin::device::{Command, CommandRequest, Guest, ImageInfo, StatusReport};
use rollway::plugin::image::Image;
use rollway::plugin::types::PluginInfo;

rollway_plugin_sdk::device_conversions!();

struct Legacy;

impl Guest for Legacy {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "device-legacy".into(),
            version: "0.1.0".into(),
            description: "A device family of WIT 0.1.0 (test fixture)".into(),
        }
    }

    fn families() -> Vec<String> {
        vec!["legacy".into()]
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn validate_image(_config: String, image: &Image) -> Result<ImageInfo, String> {
        Ok(ImageInfo {
            version: None,
            target: None,
            details: vec![("size".into(), image.size().to_string())],
        })
    }

    fn build_command(_config: String, request: CommandRequest) -> Result<Command, String> {
        let request = to_request(&request);
        Ok(Command {
            topic: request.topic(),
            payload: request.payload(serde_json::json!({})),
            qos: 1,
        })
    }

    fn parse_status(
        _config: String,
        topic_device_id: String,
        payload: Vec<u8>,
    ) -> Result<StatusReport, String> {
        rollway_plugin_sdk::status::parse_json(&topic_device_id, &payload).map(to_report)
    }
}

#[cfg(target_arch = "wasm32")]
export!(Legacy);

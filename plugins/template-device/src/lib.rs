//! Template device-family plugin for a fictional "acme" controller whose
//! images start with the 8-byte header `ACMEFW01` followed by a 16-byte,
//! NUL-padded version. Copy this crate to add your own family.

wit_bindgen::generate!({ world: "device-protocol", path: "../../wit" });

use exports::rollway::plugin::device::{Command, CommandRequest, Guest, ImageInfo, StatusReport};
use rollway::plugin::image::Image;
use rollway::plugin::types::PluginInfo;
use rollway_plugin_sdk::image::Reader;

// Conversions between the SDK's plain types and the generated ones.
rollway_plugin_sdk::device_conversions!();

const MAGIC: &[u8; 8] = b"ACMEFW01";

struct Acme;

impl Guest for Acme {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "device-acme".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "ACME controllers (template)".into(),
        }
    }

    fn families() -> Vec<String> {
        vec!["acme".into()]
    }

    fn validate_config(config: String) -> Result<(), String> {
        rollway_plugin_sdk::config::parse::<serde_json::Value>(&config).map(|_| ())
    }

    fn validate_image(_config: String, image: &Image) -> Result<ImageInfo, String> {
        let mut reader = Reader::new(image.size(), |offset, len| image.read(offset, len));
        let header = reader.read_at(0, 24)?;
        if &header[..8] != MAGIC {
            return Err("not an ACME image: the header must start with ACMEFW01".into());
        }
        let version = rollway_plugin_sdk::image::c_string(&header[8..24]);
        Ok(ImageInfo {
            version: (!version.is_empty()).then_some(version),
            target: None,
            details: vec![("format".into(), "acme-fw-1".into())],
        })
    }

    fn build_command(_config: String, request: CommandRequest) -> Result<Command, String> {
        let request = to_request(&request);
        request.check_target()?;
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
export!(Acme);

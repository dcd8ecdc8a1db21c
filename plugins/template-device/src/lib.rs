//! Template device-family plugin for a fictional "acme" controller whose
//! images start with the 8-byte header `ACMEFW01` followed by a 16-byte,
//! NUL-padded version. Copy this crate to add your own family.

wit_bindgen::generate!({ world: "device-protocol-attempts", path: "../../wit" });

use rollway_plugin_sdk::device::{DeviceFamily, Image, ImageFacts};

const MAGIC: &[u8; 8] = b"ACMEFW01";

struct Acme;

/// Commands and statuses use Rollway's standard JSON messages (the trait's
/// defaults); only the image format is the family's own.
impl DeviceFamily for Acme {
    type Config = serde_json::Value;
    const FAMILIES: &'static [&'static str] = &["acme"];

    fn validate_image(_config: &Self::Config, image: &mut Image<'_>) -> Result<ImageFacts, String> {
        let header = image.read_at(0, 24)?;
        if &header[..8] != MAGIC {
            return Err("not an ACME image: the header must start with ACMEFW01".into());
        }
        let version = rollway_plugin_sdk::image::c_string(&header[8..24]);
        Ok(ImageFacts {
            version: (!version.is_empty()).then_some(version),
            target: None,
            security_counter: None,
            details: vec![("format".into(), "acme-fw-1".into())],
        })
    }
}

rollway_plugin_sdk::device_plugin!(Acme, name: "device-acme", description: "ACME controllers (template)");

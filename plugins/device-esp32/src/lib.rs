//! `device-esp32`: ESP-IDF application images for the ESP32 family.
//!
//! Validates the image header (magic 0xE9, segment count, the extended
//! header's chip id), walks the segments, and reads `esp_app_desc_t`
//! (magic 0xABCD5432) at the start of the first segment for the version,
//! project name, IDF version and secure version. Refuses to build a
//! command for a device whose chip differs from the image's.

wit_bindgen::generate!({ world: "device-protocol-attempts", path: "../../wit" });

use rollway_plugin_sdk::command::Request;
use rollway_plugin_sdk::device::{DeviceFamily, Image, ImageFacts};
use rollway_plugin_sdk::image::Reader;
use serde::Deserialize;
use serde_json::json;

const IMAGE_MAGIC: u8 = 0xE9;
const APP_DESC_MAGIC: u32 = 0xABCD_5432;
const HEADER_LEN: u64 = 24;
const SEGMENT_HEADER_LEN: u64 = 8;
const APP_DESC_LEN: usize = 256;
const MAX_SEGMENTS: u8 = 16;

/// Chip ids of the image extended header (ESP-IDF `esp_chip_id_t`).
fn chip_name(id: u16) -> Option<&'static str> {
    Some(match id {
        0x0000 => "esp32",
        0x0002 => "esp32s2",
        0x0005 => "esp32c3",
        0x0009 => "esp32s3",
        0x000C => "esp32c2",
        0x000D => "esp32c6",
        0x0010 => "esp32h2",
        0x0012 => "esp32p4",
        0x0014 => "esp32c61",
        0x0017 => "esp32c5",
        _ => return None,
    })
}

/// The family's configuration (public so that benchmarks can run the same
/// logic natively; parse it with `rollway_plugin_sdk::device::load_config`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ask devices to verify the image signature with secure boot keys too.
    require_secure_boot: bool,
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn c_string(bytes: &[u8], field: &str) -> Result<String, String> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end])
        .map(|s| s.trim().to_owned())
        .map_err(|_| format!("esp_app_desc_t.{field} is not UTF-8"))
}

/// Validates an image read through `reader`.
pub fn validate<F>(reader: &mut Reader<F>) -> Result<ImageFacts, String>
where
    F: FnMut(u64, u32) -> Result<Vec<u8>, String>,
{
    let size = reader.size();
    if size < HEADER_LEN + SEGMENT_HEADER_LEN + APP_DESC_LEN as u64 {
        return Err(format!(
            "image of {size} bytes is too small for an ESP-IDF application"
        ));
    }
    let header = reader.read_at(0, HEADER_LEN as usize)?;
    if header[0] != IMAGE_MAGIC {
        return Err(format!(
            "not an ESP-IDF application image: magic byte is 0x{:02X}, expected 0xE9",
            header[0]
        ));
    }
    let segments = header[1];
    if segments == 0 || segments > MAX_SEGMENTS {
        return Err(format!(
            "segment count {segments} is outside 1..={MAX_SEGMENTS}"
        ));
    }
    let chip_id = u16_le(&header, 12);
    let chip = chip_name(chip_id)
        .ok_or_else(|| format!("unknown chip id 0x{chip_id:04X} in the extended header"))?;

    // Walk the segments: each must lie inside the image.
    let mut offset = HEADER_LEN;
    let mut first_segment_data = 0;
    for index in 0..segments {
        if offset + SEGMENT_HEADER_LEN > size {
            return Err(format!(
                "segment {index} header at byte {offset} is past the end of the image"
            ));
        }
        let seg = reader.read_at(offset, SEGMENT_HEADER_LEN as usize)?;
        let len = u64::from(u32_le(&seg, 4));
        if index == 0 {
            first_segment_data = offset + SEGMENT_HEADER_LEN;
            if len < APP_DESC_LEN as u64 {
                return Err("the first segment is too small to hold esp_app_desc_t".into());
            }
        }
        offset += SEGMENT_HEADER_LEN + len;
        if offset > size {
            return Err(format!(
                "segment {index} of {len} bytes runs past the end of the image ({size} bytes)"
            ));
        }
    }

    let desc = reader.read_at(first_segment_data, APP_DESC_LEN)?;
    let magic = u32_le(&desc, 0);
    if magic != APP_DESC_MAGIC {
        return Err(format!(
            "esp_app_desc_t magic is 0x{magic:08X}, expected 0xABCD5432 (is this an application image?)"
        ));
    }
    let secure_version = u32_le(&desc, 4);
    let version = c_string(&desc[16..48], "version")?;
    let project = c_string(&desc[48..80], "project_name")?;
    let idf = c_string(&desc[112..144], "idf_ver")?;
    Ok(ImageFacts {
        version: (!version.is_empty()).then_some(version),
        target: Some(chip.to_owned()),
        // ESP-IDF's anti-rollback counter (eFuse-backed on the chip).
        security_counter: Some(u64::from(secure_version)),
        details: vec![
            ("format".into(), "esp-idf-app".into()),
            ("chip".into(), chip.into()),
            ("project_name".into(), project),
            ("idf_version".into(), idf),
            ("secure_version".into(), secure_version.to_string()),
            ("segments".into(), segments.to_string()),
            (
                "entry_address".into(),
                format!("0x{:08X}", u32_le(&header, 4)),
            ),
        ],
    })
}

/// The family (public so that benchmarks can call it natively).
pub struct Esp32;

impl DeviceFamily for Esp32 {
    type Config = Config;
    const FAMILIES: &'static [&'static str] = &["esp32"];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "ESP32 family settings",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "require_secure_boot": {
      "type": "boolean", "default": false,
      "description": "Ask devices to verify the image signature with their secure boot keys too."
    }
  }
}"#,
    );

    fn validate_image(_config: &Config, image: &mut Image<'_>) -> Result<ImageFacts, String> {
        validate(image)
    }

    fn command_fields(config: &Config, _request: &Request) -> Result<serde_json::Value, String> {
        Ok(json!({
            "ota": { "partition": "next", "require_secure_boot": config.require_secure_boot }
        }))
    }
}

rollway_plugin_sdk::device_plugin!(Esp32, name: "device-esp32", description: "ESP32 family: ESP-IDF application images, OTA over MQTT");

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid image: header, one segment holding esp_app_desc_t.
    fn image(chip: u16, version: &str) -> Vec<u8> {
        let mut img = vec![0u8; 24];
        img[0] = IMAGE_MAGIC;
        img[1] = 1;
        img[4..8].copy_from_slice(&0x4008_0000u32.to_le_bytes());
        img[12..14].copy_from_slice(&chip.to_le_bytes());
        img.extend_from_slice(&0x3F40_0020u32.to_le_bytes());
        img.extend_from_slice(&(APP_DESC_LEN as u32).to_le_bytes());
        let mut desc = vec![0u8; APP_DESC_LEN];
        desc[0..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
        desc[16..16 + version.len()].copy_from_slice(version.as_bytes());
        desc[48..52].copy_from_slice(b"brak");
        desc[112..118].copy_from_slice(b"v5.2.1");
        img.extend_from_slice(&desc);
        img
    }

    fn check(bytes: Vec<u8>) -> Result<ImageFacts, String> {
        let size = bytes.len() as u64;
        let mut reader = Reader::new(size, move |off, len| {
            let start = (off as usize).min(bytes.len());
            let end = (start + len as usize).min(bytes.len());
            Ok(bytes[start..end].to_vec())
        });
        validate(&mut reader)
    }

    #[test]
    fn reads_chip_and_version() {
        let info = check(image(0x0009, "1.4.0")).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(info.version.as_deref(), Some("1.4.0"));
        assert_eq!(info.target.as_deref(), Some("esp32s3"));
        assert!(
            info.details
                .contains(&("idf_version".into(), "v5.2.1".into()))
        );
    }

    #[test]
    fn names_what_is_broken() {
        let mut bad_magic = image(9, "1");
        bad_magic[0] = 0x7F;
        assert!(check(bad_magic).unwrap_err().contains("magic byte"));
        let mut no_segments = image(9, "1");
        no_segments[1] = 0;
        assert!(check(no_segments).unwrap_err().contains("segment count"));
        assert!(
            check(image(0x0077, "1"))
                .unwrap_err()
                .contains("unknown chip")
        );
        let mut bad_desc = image(9, "1");
        bad_desc[32] = 0;
        assert!(check(bad_desc).unwrap_err().contains("esp_app_desc_t"));
        let mut long_segment = image(9, "1");
        long_segment[28..32].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(check(long_segment).unwrap_err().contains("past the end"));
        assert!(
            check(vec![IMAGE_MAGIC; 40])
                .unwrap_err()
                .contains("too small")
        );
    }
}

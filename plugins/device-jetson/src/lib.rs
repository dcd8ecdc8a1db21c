//! `device-jetson`: NVIDIA Jetson OTA payloads.
//!
//! A payload is a gzip-compressed tar archive with `manifest.json` at its
//! root naming the board and the L4T (and JetPack) version:
//! ```json
//! {"board": "jetson-orin-nx", "l4t_version": "36.3.0", "jetpack_version": "6.0", "version": "2.1.0"}
//! ```
//! Every entry path must stay inside the archive. Commands tell the device
//! to install into its inactive A/B slot and fall back when the new slot
//! fails to boot.

wit_bindgen::generate!({ world: "device-protocol-attempts", path: "../../wit" });

use std::io::Read;

use rollway_plugin_sdk::command::Request;
use rollway_plugin_sdk::device::{DeviceFamily, Image, ImageFacts};
use serde::Deserialize;
use serde_json::json;

const MANIFEST: &str = "manifest.json";
const MAX_MANIFEST: u64 = 64 * 1024;
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How long the new slot has to boot and report before the device
    /// falls back to the old one.
    boot_verify_timeout_secs: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            boot_verify_timeout_secs: 300,
        }
    }
}

fn check(config: &Config) -> Result<(), String> {
    if !(30..=3600).contains(&config.boot_verify_timeout_secs) {
        return Err("boot_verify_timeout_secs must be between 30 and 3600".into());
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Manifest {
    board: String,
    l4t_version: String,
    jetpack_version: Option<String>,
    version: Option<String>,
}

fn field_ok(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 64 || value.chars().any(|c| c.is_control()) {
        return Err(format!(
            "manifest field '{name}' must be 1 to 64 printable characters"
        ));
    }
    Ok(())
}

/// Validates a payload read from `source`.
pub fn validate(source: impl Read) -> Result<ImageFacts, String> {
    let mut magic_checked = source;
    let mut magic = [0u8; 2];
    magic_checked
        .read_exact(&mut magic)
        .map_err(|e| format!("cannot read the payload: {e}"))?;
    if magic != [0x1F, 0x8B] {
        return Err("not a Jetson OTA payload: expected a gzip-compressed tar archive".into());
    }
    let stream = std::io::Cursor::new(magic).chain(magic_checked);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(stream));
    let mut manifest: Option<Manifest> = None;
    let mut entries = 0usize;
    let mut payload_bytes = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| format!("corrupt archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("corrupt archive: {e}"))?;
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries in the archive"));
        }
        let path = entry
            .path()
            .map_err(|e| format!("bad entry path: {e}"))?
            .into_owned();
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "entry '{}' points outside the archive",
                path.display()
            ));
        }
        payload_bytes += entry.size();
        if path == std::path::Path::new(MANIFEST) || path == std::path::Path::new("./manifest.json")
        {
            if entry.size() > MAX_MANIFEST {
                return Err(format!("{MANIFEST} is larger than {MAX_MANIFEST} bytes"));
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| format!("{MANIFEST} is unreadable: {e}"))?;
            let parsed: Manifest =
                serde_json::from_str(&text).map_err(|e| format!("{MANIFEST} is invalid: {e}"))?;
            field_ok("board", &parsed.board)?;
            field_ok("l4t_version", &parsed.l4t_version)?;
            manifest = Some(parsed);
        }
    }
    let manifest = manifest.ok_or_else(|| format!("the archive has no {MANIFEST}"))?;
    let mut details = vec![
        ("format".into(), "jetson-ota-tar-gz".into()),
        ("board".into(), manifest.board.clone()),
        ("l4t_version".into(), manifest.l4t_version.clone()),
        ("entries".into(), entries.to_string()),
        ("payload_bytes".into(), payload_bytes.to_string()),
    ];
    if let Some(jetpack) = &manifest.jetpack_version {
        details.push(("jetpack_version".into(), jetpack.clone()));
    }
    Ok(ImageFacts {
        version: Some(manifest.version.unwrap_or(manifest.l4t_version)),
        target: Some(manifest.board),
        security_counter: None,
        details,
    })
}

pub struct Jetson;

impl DeviceFamily for Jetson {
    type Config = Config;
    const FAMILIES: &'static [&'static str] = &["jetson"];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Jetson family settings",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "boot_verify_timeout_secs": {
      "type": "integer", "minimum": 30, "maximum": 3600, "default": 300,
      "description": "Seconds the new slot has to boot and report before the module falls back to the old one."
    }
  }
}"#,
    );

    fn check(config: &Config) -> Result<(), String> {
        check(config)
    }

    fn validate_image(_config: &Config, image: &mut Image<'_>) -> Result<ImageFacts, String> {
        validate(image)
    }

    /// Install into the inactive A/B slot; fall back if it fails to boot.
    fn command_fields(config: &Config, request: &Request) -> Result<serde_json::Value, String> {
        Ok(json!({
            "ab": {
                "target_slot": "inactive",
                "rollback_on_boot_failure": true,
                "boot_verify_timeout_secs": config.boot_verify_timeout_secs,
            },
            "board": request.target,
        }))
    }
}

rollway_plugin_sdk::device_plugin!(Jetson, name: "device-jetson", description: "NVIDIA Jetson: OTA payloads (tar.gz + manifest), A/B slot updates");

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<Config, String> {
        rollway_plugin_sdk::device::load_config::<Jetson>(text)
    }

    fn payload(files: &[(&str, &[u8])]) -> Vec<u8> {
        // Headers are filled by hand (not `append_data`) so that the tests
        // can build archives with hostile paths such as `../etc/passwd`.
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, data) in files {
            let mut header = tar::Header::new_ustar();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    const MANIFEST_OK: &[u8] = br#"{"board":"jetson-orin-nx","l4t_version":"36.3.0","jetpack_version":"6.0","version":"2.1.0"}"#;

    #[test]
    fn configs() {
        assert!(config("{}").is_ok());
        assert!(config(r#"{"boot_verify_timeout_secs": 5}"#).is_err());
        assert!(config(r#"{"slot": "a"}"#).is_err());
    }

    #[test]
    fn reads_the_manifest() {
        let info =
            validate(&payload(&[("manifest.json", MANIFEST_OK), ("rootfs.img", &[7u8; 3000])])[..])
                .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(info.version.as_deref(), Some("2.1.0"));
        assert_eq!(info.target.as_deref(), Some("jetson-orin-nx"));
        assert!(info.details.contains(&("entries".into(), "2".into())));
    }

    #[test]
    fn names_what_is_broken() {
        assert!(
            validate(&b"PK\x03\x04 not gzip"[..])
                .unwrap_err()
                .contains("gzip")
        );
        assert!(
            validate(&payload(&[("rootfs.img", &[1u8; 10])])[..])
                .unwrap_err()
                .contains("no manifest.json")
        );
        assert!(
            validate(&payload(&[("manifest.json", b"{\"board\":1}")])[..])
                .unwrap_err()
                .contains("invalid")
        );
        assert!(
            validate(&payload(&[("manifest.json", MANIFEST_OK), ("../etc/passwd", b"x")])[..])
                .unwrap_err()
                .contains("outside")
        );
        let mut truncated = payload(&[("manifest.json", MANIFEST_OK), ("big", &[9u8; 5000])]);
        truncated.truncate(truncated.len() / 2);
        assert!(validate(&truncated[..]).is_err());
    }
}

//! `device-stm32`: STM32 application images, raw binary or Intel HEX.
//!
//! Checks the Cortex-M vector table: the initial stack pointer must point
//! into SRAM and the reset handler into the image in flash, with the Thumb
//! bit set. STM32 boards usually sit behind a Jetson gateway on the CAN bus:
//! their commands go to the gateway's topic with relay instructions and a
//! chunk size suited to the bus.

wit_bindgen::generate!({ world: "device-protocol-attempts", path: "../../wit" });

use rollway_plugin_sdk::cancel::CancelRequest;
use rollway_plugin_sdk::command::Request;
use rollway_plugin_sdk::device::{DeviceFamily, Image, ImageFacts};
use rollway_plugin_sdk::image::Reader;
use serde::Deserialize;
use serde_json::json;

/// Where STM32 flash is mapped.
const FLASH: std::ops::Range<u32> = 0x0800_0000..0x0840_0000;
/// SRAM regions an initial stack pointer may point into (its top may be
/// one past the end): CCM/DTCM, SRAM, and the H7's AXI SRAM.
const SRAM: [std::ops::RangeInclusive<u32>; 3] = [
    0x1000_0000..=0x1001_0000,
    0x2000_0000..=0x2010_0000,
    0x2400_0000..=0x2410_0000,
];
/// Largest Intel HEX file parsed.
const MAX_HEX: u64 = 16 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bytes per transfer block the gateway sends over the bus (ISO-TP
    /// blocks carry at most 4095 bytes).
    chunk_size: u32,
    /// `can` or `can-fd`.
    bus: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            chunk_size: 2048,
            bus: "can".into(),
        }
    }
}

fn check(config: &Config) -> Result<(), String> {
    if !(8..=4095).contains(&config.chunk_size) {
        return Err(format!(
            "chunk_size {} must be between 8 and 4095",
            config.chunk_size
        ));
    }
    if config.bus != "can" && config.bus != "can-fd" {
        return Err(format!("bus '{}' must be 'can' or 'can-fd'", config.bus));
    }
    Ok(())
}

/// The image's first bytes, where it is meant to be loaded, and its length.
struct Layout {
    format: &'static str,
    base: u32,
    head: Vec<u8>,
    length: u64,
}

/// The value of one hexadecimal digit.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parses Intel HEX, returning the first 8 bytes at the lowest address.
fn parse_hex(text: &str) -> Result<Layout, String> {
    let mut upper: u32 = 0;
    let mut lowest: Option<u32> = None;
    let mut highest: u32 = 0;
    let mut bytes: std::collections::BTreeMap<u32, u8> = std::collections::BTreeMap::new();
    let mut ended = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if ended {
            return Err(format!("line {}: data after the end-of-file record", n + 1));
        }
        let hex = line
            .strip_prefix(':')
            .ok_or_else(|| format!("line {}: does not start with ':'", n + 1))?;
        if hex.len() % 2 != 0 || hex.len() < 10 {
            return Err(format!("line {}: malformed record", n + 1));
        }
        // Pairs of bytes, not of characters: a multi-byte character must
        // be refused, not split (found by fuzzing, SECURITY.md).
        let raw: Vec<u8> = hex
            .as_bytes()
            .chunks_exact(2)
            .map(|pair| Some((hex_digit(pair[0])? << 4) | hex_digit(pair[1])?))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("line {}: not hexadecimal", n + 1))?;
        let count = raw[0] as usize;
        if raw.len() != count + 5 {
            return Err(format!(
                "line {}: byte count {count} does not match the record",
                n + 1
            ));
        }
        if raw.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
            return Err(format!("line {}: checksum mismatch", n + 1));
        }
        let offset = u32::from(u16::from_be_bytes([raw[1], raw[2]]));
        let data = &raw[4..4 + count];
        match raw[3] {
            0x00 => {
                let address = upper.wrapping_add(offset);
                let low = lowest.map_or(address, |l| l.min(address));
                lowest = Some(low);
                highest = highest.max(address.saturating_add(count as u32));
                // Keep only the 8 bytes at the lowest address seen so far.
                let window = low.saturating_add(8);
                for (i, b) in data.iter().enumerate() {
                    let at = address.wrapping_add(i as u32);
                    if at < window {
                        bytes.insert(at, *b);
                    }
                }
                bytes.retain(|at, _| *at < window);
            }
            0x01 => ended = true,
            0x02 if count == 2 => upper = u32::from(u16::from_be_bytes([data[0], data[1]])) << 4,
            0x04 if count == 2 => upper = u32::from(u16::from_be_bytes([data[0], data[1]])) << 16,
            0x03 | 0x05 => {}
            other => return Err(format!("line {}: unknown record type {other:02X}", n + 1)),
        }
    }
    if !ended {
        return Err("missing the end-of-file record".into());
    }
    let base = lowest.ok_or("the HEX file holds no data")?;
    let head: Vec<u8> = (0..8)
        .map(|i| bytes.get(&(base + i)).copied().unwrap_or(0xFF))
        .collect();
    Ok(Layout {
        format: "intel-hex",
        base,
        head,
        length: u64::from(highest - base),
    })
}

fn check_vectors(layout: &Layout) -> Result<(u32, u32), String> {
    let sp = u32::from_le_bytes([
        layout.head[0],
        layout.head[1],
        layout.head[2],
        layout.head[3],
    ]);
    let reset = u32::from_le_bytes([
        layout.head[4],
        layout.head[5],
        layout.head[6],
        layout.head[7],
    ]);
    if !SRAM.iter().any(|r| r.contains(&sp)) {
        return Err(format!(
            "initial stack pointer 0x{sp:08X} does not point into SRAM: not an STM32 application image (or not linked for flash at 0x08000000)"
        ));
    }
    if reset & 1 == 0 {
        return Err(format!("reset handler 0x{reset:08X} lacks the Thumb bit"));
    }
    let entry = reset & !1;
    if !FLASH.contains(&entry) {
        return Err(format!(
            "reset handler 0x{reset:08X} is not in flash (0x08000000..0x08400000)"
        ));
    }
    if u64::from(entry) >= u64::from(layout.base) + layout.length || entry < layout.base {
        return Err(format!(
            "reset handler 0x{reset:08X} lies outside the image (0x{:08X}, {} bytes)",
            layout.base, layout.length
        ));
    }
    Ok((sp, reset))
}

pub fn validate<F>(reader: &mut Reader<F>) -> Result<ImageFacts, String>
where
    F: FnMut(u64, u32) -> Result<Vec<u8>, String>,
{
    let size = reader.size();
    if size < 8 {
        return Err(format!(
            "image of {size} bytes is too small for a vector table"
        ));
    }
    let first = reader.read_at(0, 1)?;
    let layout = if first[0] == b':' {
        if size > MAX_HEX {
            return Err(format!("Intel HEX file of {size} bytes exceeds {MAX_HEX}"));
        }
        let text = reader.read_at(0, size as usize)?;
        let text = std::str::from_utf8(&text)
            .map_err(|_| "Intel HEX file is not ASCII text".to_owned())?;
        parse_hex(text)?
    } else {
        Layout {
            format: "binary",
            base: FLASH.start,
            head: reader.read_at(0, 8)?,
            length: size,
        }
    };
    let (sp, reset) = check_vectors(&layout)?;
    Ok(ImageFacts {
        version: None,
        target: None,
        security_counter: None,
        details: vec![
            ("format".into(), layout.format.into()),
            ("load_address".into(), format!("0x{:08X}", layout.base)),
            ("initial_sp".into(), format!("0x{sp:08X}")),
            ("reset_handler".into(), format!("0x{reset:08X}")),
            ("flash_bytes".into(), layout.length.to_string()),
        ],
    })
}

pub struct Stm32;

impl DeviceFamily for Stm32 {
    type Config = Config;
    const FAMILIES: &'static [&'static str] = &["stm32"];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "STM32 family settings",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "chunk_size": {
      "type": "integer", "minimum": 8, "maximum": 4095, "default": 2048,
      "description": "Bytes per transfer block the gateway sends over the bus (ISO-TP blocks carry at most 4095)."
    },
    "bus": {
      "type": "string", "enum": ["can", "can-fd"], "default": "can",
      "description": "The bus between the gateway and the MCU."
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

    /// Behind a gateway, the command tells it how to relay over the bus.
    fn command_fields(config: &Config, request: &Request) -> Result<serde_json::Value, String> {
        Ok(match &request.gateway_id {
            Some(gateway) => json!({
                "relay": { "via": gateway, "bus": config.bus, "target": request.device_id, "chunk_size": config.chunk_size }
            }),
            None => json!({}),
        })
    }

    /// The gateway that relays the MCU's update is told which bus and
    /// target to stop.
    fn cancel_fields(
        config: &Config,
        request: &CancelRequest,
    ) -> Result<serde_json::Value, String> {
        Ok(match &request.gateway_id {
            Some(gateway) => json!({
                "relay": { "via": gateway, "bus": config.bus, "target": request.device_id }
            }),
            None => json!({}),
        })
    }
}

rollway_plugin_sdk::device_plugin!(Stm32, name: "device-stm32", description: "STM32 family: raw binary or Intel HEX, relayed over CAN by a gateway");

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<Config, String> {
        rollway_plugin_sdk::device::load_config::<Stm32>(text)
    }

    fn binary(sp: u32, reset: u32, len: usize) -> Vec<u8> {
        let mut img = vec![0u8; len];
        img[0..4].copy_from_slice(&sp.to_le_bytes());
        img[4..8].copy_from_slice(&reset.to_le_bytes());
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

    fn hex_record(kind: u8, offset: u16, data: &[u8]) -> String {
        let mut raw = vec![data.len() as u8, (offset >> 8) as u8, offset as u8, kind];
        raw.extend_from_slice(data);
        let sum = raw.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        raw.push(sum.wrapping_neg());
        format!(
            ":{}\n",
            raw.iter().map(|b| format!("{b:02X}")).collect::<String>()
        )
    }

    #[test]
    fn accepts_a_raw_binary() {
        let info =
            check(binary(0x2002_0000, 0x0800_0199, 4096)).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(
            info.details
                .contains(&("reset_handler".into(), "0x08000199".into()))
        );
    }

    #[test]
    fn accepts_intel_hex() {
        let head = binary(0x2001_0000, 0x0800_0101, 16);
        let mut text = hex_record(0x04, 0, &[0x08, 0x00]);
        text += &hex_record(0x00, 0, &head);
        text += &hex_record(0x00, 0x100, &[0u8; 16]);
        text += &hex_record(0x01, 0, &[]);
        let info = check(text.into_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(
            info.details
                .contains(&("format".into(), "intel-hex".into()))
        );
        assert!(
            info.details
                .contains(&("load_address".into(), "0x08000000".into()))
        );
    }

    #[test]
    fn names_what_is_broken() {
        assert!(
            check(binary(0x0000_1000, 0x0800_0101, 1024))
                .unwrap_err()
                .contains("stack pointer")
        );
        assert!(
            check(binary(0x2000_1000, 0x0800_0100, 1024))
                .unwrap_err()
                .contains("Thumb")
        );
        assert!(
            check(binary(0x2000_1000, 0x0000_0101, 1024))
                .unwrap_err()
                .contains("not in flash")
        );
        assert!(
            check(binary(0x2000_1000, 0x0801_0001, 1024))
                .unwrap_err()
                .contains("outside the image")
        );
        let mut text = hex_record(0x00, 0, &binary(0x2001_0000, 0x0800_0101, 8));
        text += &hex_record(0x01, 0, &[]);
        let corrupt = text.replacen("00", "01", 1);
        assert!(check(corrupt.into_bytes()).unwrap_err().contains("line 1"));
        assert!(
            check(b":00000001FF\n".to_vec())
                .unwrap_err()
                .contains("no data")
        );
        let unterminated = hex_record(0x00, 0, &binary(0x2001_0000, 0x0800_0101, 8));
        assert!(
            check(unterminated.into_bytes())
                .unwrap_err()
                .contains("end-of-file")
        );
    }

    #[test]
    fn a_multi_byte_character_in_a_hex_record_is_refused() {
        // Found by the stm32_image fuzz target: slicing the record by
        // character pairs panicked inside the 'ο'.
        let mut image = b":2222222222222222222".to_vec();
        image.extend_from_slice("ο".as_bytes());
        image.extend_from_slice(b"2\n:00000001FF\n");
        assert!(check(image).unwrap_err().contains("not hexadecimal"));
    }

    #[test]
    fn configs() {
        assert!(config("{}").is_ok());
        assert!(config(r#"{"chunk_size": 4}"#).is_err());
        assert!(config(r#"{"bus": "lin"}"#).is_err());
    }
}

//! The standard JSON presence message devices publish on
//! `{prefix}/{device_id}/presence` when they (re)connect, and as their
//! MQTT last will:
//!
//! ```json
//! {"state": "online", "installed_version": "1.4.0", "security_counter": 3,
//!  "hardware": {"board": "rev-b"}, "ts": 1764000000000,
//!  "children": [{"device_id": "MCU-1", "installed_version": "2.0.1", "security_counter": 1}]}
//! ```
//!
//! A gateway lists the devices behind it in `children`; the last will is
//! `{"state": "offline"}` (a gateway's takes its children with it).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Largest presence payload accepted.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Most devices one presence message speaks for (a gateway and its children).
pub const MAX_DEVICES: usize = 64;
/// Most hardware facts one device gives.
pub const MAX_HARDWARE: usize = 32;

/// One device's presence, in plain Rust types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub device_id: String,
    /// False: it went away.
    pub online: bool,
    pub installed_version: Option<String>,
    pub security_counter: Option<u64>,
    pub hardware: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Online,
    Offline,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    state: State,
    installed_version: Option<String>,
    security_counter: Option<u64>,
    #[serde(default)]
    hardware: BTreeMap<String, String>,
    #[serde(default)]
    children: Vec<Child>,
    #[allow(dead_code)] // When the device sent it; the host's clock decides.
    ts: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Child {
    device_id: String,
    installed_version: Option<String>,
    security_counter: Option<u64>,
    #[serde(default)]
    hardware: BTreeMap<String, String>,
}

fn facts(hardware: BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    if hardware.len() > MAX_HARDWARE {
        return Err(format!("at most {MAX_HARDWARE} hardware facts"));
    }
    for (key, value) in &hardware {
        if key.is_empty() || key.len() > 64 || value.len() > 256 {
            return Err(format!(
                "hardware fact {key:?}: keys are 1 to 64 bytes, values at most 256"
            ));
        }
    }
    Ok(hardware.into_iter().collect())
}

fn version(value: &Option<String>) -> Result<(), String> {
    match value {
        Some(v) if v.is_empty() || v.len() > 64 => {
            Err("installed_version must be 1 to 64 characters".into())
        }
        _ => Ok(()),
    }
}

/// Parses and checks a standard presence payload: the sender first, then
/// the devices behind it.
pub fn parse_json(topic_device_id: &str, payload: &[u8]) -> Result<Vec<Presence>, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "presence payload of {} bytes exceeds {MAX_PAYLOAD}",
            payload.len()
        ));
    }
    let wire: Wire =
        serde_json::from_slice(payload).map_err(|e| format!("malformed presence JSON: {e}"))?;
    if wire.children.len() >= MAX_DEVICES {
        return Err(format!(
            "a presence speaks for at most {MAX_DEVICES} devices"
        ));
    }
    let online = wire.state == State::Online;
    version(&wire.installed_version)?;
    let mut devices = vec![Presence {
        device_id: topic_device_id.to_owned(),
        online,
        installed_version: wire.installed_version,
        security_counter: wire.security_counter,
        hardware: facts(wire.hardware)?,
    }];
    for child in wire.children {
        if child.device_id.is_empty() || child.device_id.len() > 64 {
            return Err("a child's device_id must be 1 to 64 characters".into());
        }
        version(&child.installed_version)?;
        devices.push(Presence {
            device_id: child.device_id,
            online,
            installed_version: child.installed_version,
            security_counter: child.security_counter,
            hardware: facts(child.hardware)?,
        });
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_gateway_and_its_children() {
        let parsed = parse_json(
            "JET-1",
            br#"{"state":"online","installed_version":"5.1","security_counter":2,
                 "hardware":{"board":"orin-nx"},
                 "children":[{"device_id":"MCU-1","installed_version":"1.0.0"}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].device_id, "JET-1");
        assert_eq!(parsed[0].security_counter, Some(2));
        assert_eq!(
            parsed[0].hardware,
            [("board".to_owned(), "orin-nx".to_owned())]
        );
        assert_eq!(parsed[1].device_id, "MCU-1");
        assert!(parsed[1].online);
        assert_eq!(parsed[1].installed_version.as_deref(), Some("1.0.0"));
    }

    #[test]
    fn a_last_will_is_offline() {
        let parsed = parse_json("VIN1", br#"{"state":"offline"}"#).unwrap();
        assert_eq!(parsed.len(), 1);
        assert!(!parsed[0].online);
        assert_eq!(parsed[0].installed_version, None);
    }

    #[test]
    fn refuses_bad_messages() {
        for bad in [
            &b"not json"[..],
            br#"{"state":"asleep"}"#,
            br#"{"state":"online","extra":1}"#,
            br#"{"state":"online","installed_version":""}"#,
            br#"{"state":"online","security_counter":-1}"#,
            br#"{"state":"online","children":[{"device_id":""}]}"#,
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

//! Parsed, validated values shared by every layer: once a value has one of
//! these types it is known to be well formed.

mod status;

pub use status::{ExecutionStatus, JobStatus};

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a raw value was refused; names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A device id: a VIN, a serial number, or a board id. It appears in MQTT
/// topics, so it must be a single topic level without wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(ParseError(format!(
                "must be 1 to {} characters long",
                Self::MAX_LEN
            )));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(ParseError(
                "may contain only ASCII letters, digits, '-', '_', '.' and ':'".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device family (`esp32`, `stm32`, `jetson`, or one a vendor plugin
/// adds). Parsing checks the syntax; whether a plugin serves the family is
/// the plugin registry's to say.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Family(String);

impl Family {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = !raw.is_empty()
            && raw.len() <= 32
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(ParseError(
                "must be 1 to 32 lowercase letters, digits or '-', starting with a letter".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A firmware version as the operator or the device plugin names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FirmwareVersion(String);

impl FirmwareVersion {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(ParseError("must be 1 to 64 characters long".into()));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
        {
            return Err(ParseError(
                "may contain only ASCII letters, digits, '.', '-', '_' and '+'".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A SHA-256 digest, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct FirmwareDigest(String);

impl FirmwareDigest {
    pub fn from_bytes(digest: &[u8; 32]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FirmwareDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Device tags: a flat object of string keys to string values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(std::collections::BTreeMap<String, String>);

impl Tags {
    pub const MAX_TAGS: usize = 32;
    /// Longest key, in characters.
    pub const MAX_KEY: usize = 64;
    /// Longest value, in characters.
    pub const MAX_VALUE: usize = 256;

    pub fn parse(map: std::collections::BTreeMap<String, String>) -> Result<Self, ParseError> {
        if map.len() > Self::MAX_TAGS {
            return Err(ParseError(format!("at most {} tags", Self::MAX_TAGS)));
        }
        for (key, value) in &map {
            let length = key.chars().count();
            if length == 0 || length > Self::MAX_KEY {
                return Err(ParseError(format!(
                    "tag key '{key}' must be 1 to {} characters",
                    Self::MAX_KEY
                )));
            }
            if value.chars().count() > Self::MAX_VALUE {
                return Err(ParseError(format!(
                    "tag '{key}' value exceeds {} characters",
                    Self::MAX_VALUE
                )));
            }
        }
        Ok(Self(map))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }
}

/// What an API token may do. Each role includes the ones below it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Uploads firmware, manages devices and jobs.
    Operator,
    /// Manages tokens and plugins.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(ParseError(format!(
                "unknown role '{other}' (expected viewer, operator or admin)"
            ))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a device may flash an update it holds: a job's install policy,
/// signed into every command's manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstallPolicy {
    /// As soon as the image is downloaded and checked.
    #[default]
    Immediate,
    /// Download now, flash at a safe moment the device judges (a vehicle
    /// parked with its engine off); meanwhile it reports `waiting`.
    WhenSafe,
}

impl InstallPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallPolicy::Immediate => "immediate",
            InstallPolicy::WhenSafe => "when-safe",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "immediate" => Ok(InstallPolicy::Immediate),
            "when-safe" => Ok(InstallPolicy::WhenSafe),
            other => Err(ParseError(format!(
                "unknown install policy '{other}' (expected immediate or when-safe)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_single_topic_levels() {
        assert!(DeviceId::parse("VIN-1HGCM82633A004352").is_ok());
        for bad in ["", "a/b", "a+b", "a#", "a b", &"x".repeat(65)] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn families_are_lowercase_names() {
        assert_eq!(Family::parse("esp32").unwrap().as_str(), "esp32");
        assert!(Family::parse("ESP32").is_err());
        assert!(Family::parse("9lives").is_err());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(Role::parse("operator").unwrap(), Role::Operator);
        assert!(Role::parse("root").is_err());
    }
}

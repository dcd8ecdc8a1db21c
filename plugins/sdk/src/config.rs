//! Plugin configuration arrives as JSON text.

use serde::de::DeserializeOwned;

/// Parses a configuration; an empty string means `{}`. Unknown fields are
/// refused when `T` says `#[serde(deny_unknown_fields)]`.
pub fn parse<T: DeserializeOwned>(config: &str) -> Result<T, String> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(text).map_err(|e| format!("invalid configuration: {e}"))
}

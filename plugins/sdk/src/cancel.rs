//! The standard JSON cancel devices receive on their update command topic
//! (`{prefix}/{device_id}/update/command`, or their gateway's): a signed
//! word to stop one execution's update.

use serde_json::{Value, json};

/// What the host tells a plugin about one cancel, in plain Rust types.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelRequest {
    pub device_id: String,
    pub model: Option<String>,
    pub gateway_id: Option<String>,
    pub job_id: String,
    pub execution_id: u64,
    /// The attempt cancelled: the latest sent to the device.
    pub attempt: u32,
    /// The signed cancel (JSON) and its signature, base64.
    pub manifest: String,
    pub signature: String,
    pub key_id: String,
}

impl CancelRequest {
    /// The topic (relative to the prefix) that reaches the device: the one
    /// its update command came on.
    pub fn topic(&self) -> String {
        let via = self.gateway_id.as_deref().unwrap_or(&self.device_id);
        format!("{via}/update/command")
    }

    /// The standard cancel payload, with family-specific fields merged in.
    pub fn payload(&self, extra: Value) -> Vec<u8> {
        let body = json!({
            "type": "cancel",
            "device_id": self.device_id,
            "job_id": self.job_id,
            "execution_id": self.execution_id,
            "attempt": self.attempt,
            "manifest": self.manifest,
            "signature": self.signature,
            "key_id": self.key_id,
        });
        crate::command::with_fields(body, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_goes_where_the_command_went() {
        let cancel = CancelRequest {
            device_id: "MCU-1".into(),
            model: None,
            gateway_id: Some("JET-1".into()),
            job_id: "j".into(),
            execution_id: 5,
            attempt: 2,
            manifest: r#"{"kind":"cancel"}"#.into(),
            signature: "sig".into(),
            key_id: "k1".into(),
        };
        assert_eq!(cancel.topic(), "JET-1/update/command");
        let payload: Value =
            serde_json::from_slice(&cancel.payload(json!({"bus": "can"}))).unwrap();
        assert_eq!(payload["type"], "cancel");
        assert_eq!(payload["device_id"], "MCU-1");
        assert_eq!(payload["attempt"], 2);
        assert_eq!(payload["bus"], "can");
    }
}

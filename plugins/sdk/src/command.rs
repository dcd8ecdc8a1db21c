//! The standard JSON update command devices receive on
//! `{prefix}/{device_id}/update/command` (or their gateway's topic).

use serde_json::{Value, json};

/// What the host tells a plugin about one dispatch, in plain Rust types.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub device_id: String,
    pub model: Option<String>,
    pub gateway_id: Option<String>,
    pub firmware_id: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub target: Option<String>,
    pub job_id: String,
    pub execution_id: u64,
    pub attempt: u32,
    pub download_url: String,
    pub manifest: String,
    pub signature: String,
    pub key_id: String,
}

impl Request {
    /// The topic (relative to the prefix) that reaches the device: its own,
    /// or its gateway's.
    pub fn topic(&self) -> String {
        let via = self.gateway_id.as_deref().unwrap_or(&self.device_id);
        format!("{via}/update/command")
    }

    /// Refuses an image built for another chip than the device's.
    pub fn check_target(&self) -> Result<(), String> {
        if crate::targets_match(self.target.as_deref(), self.model.as_deref()) {
            Ok(())
        } else {
            Err(format!(
                "image is built for {}, but device {} is {}",
                self.target.as_deref().unwrap_or("?"),
                self.device_id,
                self.model.as_deref().unwrap_or("?")
            ))
        }
    }

    /// The standard command payload, with family-specific fields merged in.
    pub fn payload(&self, extra: Value) -> Vec<u8> {
        let body = json!({
            "type": "update",
            "device_id": self.device_id,
            "job_id": self.job_id,
            "execution_id": self.execution_id,
            "attempt": self.attempt,
            "firmware": {
                "id": self.firmware_id,
                "version": self.version,
                "sha256": self.sha256,
                "size": self.size,
                "url": self.download_url,
            },
            "manifest": self.manifest,
            "signature": self.signature,
            "key_id": self.key_id,
        });
        with_fields(body, extra)
    }
}

/// `body` with the object `extra`'s fields merged in, as bytes.
pub(crate) fn with_fields(mut body: Value, extra: Value) -> Vec<u8> {
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            device_id: "MCU-1".into(),
            model: Some("stm32f407".into()),
            gateway_id: Some("JET-1".into()),
            firmware_id: "f".into(),
            version: "1.0".into(),
            sha256: "ab".into(),
            size: 10,
            target: None,
            job_id: "j".into(),
            execution_id: 5,
            attempt: 1,
            download_url: "http://x".into(),
            manifest: "{}".into(),
            signature: "sig".into(),
            key_id: "k1".into(),
        }
    }

    #[test]
    fn devices_behind_gateways_are_reached_through_them() {
        let r = request();
        assert_eq!(r.topic(), "JET-1/update/command");
        let payload: Value =
            serde_json::from_slice(&r.payload(json!({"relay": {"bus": "can"}}))).unwrap();
        assert_eq!(payload["device_id"], "MCU-1");
        assert_eq!(payload["relay"]["bus"], "can");
        assert_eq!(payload["firmware"]["size"], 10);
    }
}

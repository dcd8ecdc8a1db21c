//! The signed update manifest, the signed cancel and download tokens: what
//! the dispatcher signs into every command, the firmware download endpoint
//! checks, and a device agent (the simulator, docs/PROTOCOL.md) verifies.
//!
//! A manifest is a JSON object signed (ed25519) as the exact bytes sent; the
//! device checks the signature with a key from `/api/v1/signing-keys`, then
//! the device id, execution, expiry, security counter, digest and size
//! before flashing.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::InstallPolicy;
use crate::signing::{Keyring, ManifestSigner};

/// The manifest format this host writes (2: with the security counter;
/// 3: with the install policy).
pub const FORMAT: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub v: u32,
    pub device_id: String,
    pub execution_id: i64,
    pub job_id: Uuid,
    pub firmware_id: Uuid,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    /// The image's security counter: a device refuses it when below the
    /// counter of the firmware it runs (rollback attacks)…
    pub security_counter: i64,
    /// …unless an admin allowed this image as a downgrade.
    pub downgrade: bool,
    /// When the device may flash: `immediate`, or `when-safe` (at a safe
    /// moment it judges, reporting `waiting` meanwhile). Absent before
    /// format 3: `immediate`.
    #[serde(default)]
    pub install: InstallPolicy,
    /// A device refuses the manifest after this time (freeze attacks).
    pub expires_at: DateTime<Utc>,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The format of the signed cancel this host writes.
pub const CANCEL_FORMAT: u32 = 1;

/// A signed cancel: tells one device to stop one execution's update. Its
/// `kind` keeps it from being read as an update manifest, and an update
/// manifest (which has none) from being read as a cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelManifest {
    /// Format version.
    pub v: u32,
    /// Always `cancel`.
    pub kind: String,
    pub device_id: String,
    pub execution_id: i64,
    pub job_id: Uuid,
    /// The attempt cancelled.
    pub attempt: i32,
    /// A device refuses the cancel after this time (a replayed cancel);
    /// the host signs a fresh one each time it sends it again.
    pub expires_at: DateTime<Utc>,
}

impl CancelManifest {
    pub const KIND: &str = "cancel";

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn token_message(firmware_id: Uuid, expires: i64) -> String {
    format!("rollway-download:{firmware_id}:{expires}")
}

/// A token that lets a device download one image until `expires_at`
/// without an API token: `{unix expiry}.{signature}`.
pub fn download_token(
    signer: &ManifestSigner,
    firmware_id: Uuid,
    expires_at: DateTime<Utc>,
) -> String {
    let expires = expires_at.timestamp();
    let signature = signer.sign(token_message(firmware_id, expires).as_bytes());
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map(|raw| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
        .unwrap_or_default();
    format!("{expires}.{signature}")
}

/// Checks a download token for `firmware_id` against every trusted key
/// (a token signed before a key rotation stays good until it expires).
pub fn verify_download_token(keys: &Keyring, firmware_id: Uuid, token: &str) -> bool {
    let Some((expires, signature)) = token.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return false;
    };
    if expires < Utc::now().timestamp() {
        return false;
    }
    let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let Ok(raw) = <[u8; 64]>::try_from(raw.as_slice()) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(&raw);
    keys.verify(token_message(firmware_id, expires).as_bytes(), &signature)
}

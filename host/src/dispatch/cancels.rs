//! Cancels that reach devices: a device that had its update command when
//! the update was cancelled is sent a signed cancel through its family's
//! plugin (`cancels`, WIT 0.1.5), as it was sent the command.
//!
//! A cancelled execution owes its device a cancel (`cancel_delivery =
//! 'pending'`, set by the move to `cancelled`, `jobs::executions`). Each
//! round claims the pending ones (`'sent'`) and commits before publishing;
//! a cancel whose publication fails is pending again for the next round.
//! The device's answer (`cancelled`, or the `done` or `error` it reached)
//! makes it `answered`; until then its next hello makes it pending again
//! (`executions::resend_to`). A replica that stops between the claim and
//! the publication leaves the cancel to that next hello.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::{Dispatcher, qos};
use crate::manifest::CancelManifest;
use crate::plugins::{CancelRequest, Command, DeviceInfo, PluginError};

/// Cancels claimed per round.
const CLAIM: i64 = 500;
/// How long a signed cancel stays valid when `ROLLWAY_MANIFEST_TTL_SECS`
/// does not say: each send signs a fresh one.
const VALIDITY: Duration = Duration::from_secs(3600);

/// One cancel to send.
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: i64,
    job_id: Uuid,
    device_id: String,
    attempts: i32,
    family: String,
    model: Option<String>,
    gateway_id: Option<String>,
    gateway_family: Option<String>,
}

impl Dispatcher {
    /// Claims and sends one round of cancels; returns how many were claimed.
    pub(super) async fn send_cancels(&self) -> anyhow::Result<usize> {
        let claimed: Vec<Claimed> = sqlx::query_as(
            "WITH picked AS (
                 SELECT id FROM executions WHERE cancel_delivery = 'pending'
                 ORDER BY id LIMIT $1
                 FOR UPDATE SKIP LOCKED
             ), sent AS (
                 UPDATE executions e SET cancel_delivery = 'sent'
                 FROM picked p WHERE e.id = p.id
                 RETURNING e.id, e.job_id, e.device_id, e.attempts
             )
             SELECT s.id, s.job_id, s.device_id, s.attempts, d.family, d.model, d.gateway_id,
                    g.family AS gateway_family
             FROM sent s
             JOIN devices d ON d.id = s.device_id
             LEFT JOIN devices g ON g.id = d.gateway_id
             ORDER BY s.id",
        )
        .bind(CLAIM)
        .fetch_all(&self.pool)
        .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let count = claimed.len();
        let signer = self.keys.signer().await;
        let expires_at =
            Utc::now() + chrono::Duration::from_std(self.manifest_ttl.unwrap_or(VALIDITY))?;
        let mut by_family: HashMap<String, Vec<CancelRequest>> = HashMap::new();
        for c in claimed {
            let manifest = CancelManifest {
                v: crate::manifest::CANCEL_FORMAT,
                kind: CancelManifest::KIND.into(),
                device_id: c.device_id.clone(),
                execution_id: c.id,
                job_id: c.job_id,
                attempt: c.attempts,
                expires_at,
            }
            .to_json();
            let signature = signer.sign(manifest.as_bytes());
            by_family
                .entry(c.family.clone())
                .or_default()
                .push(CancelRequest {
                    device: DeviceInfo {
                        id: c.device_id,
                        family: c.family,
                        model: c.model,
                        gateway_id: c.gateway_id,
                        gateway_family: c.gateway_family,
                    },
                    job_id: c.job_id.to_string(),
                    execution_id: c.id as u64,
                    attempt: c.attempts as u32,
                    manifest,
                    signature,
                    key_id: signer.key_id.clone(),
                });
        }
        for (family, requests) in by_family {
            let ids: Vec<i64> = requests.iter().map(|r| r.execution_id as i64).collect();
            let sends = self
                .plugins
                .device_plugin(&family)
                .is_ok_and(|p| p.sends_cancels());
            if !sends {
                // Nothing to tell the device with: what it reports later
                // is still recorded.
                self.cancels_settled(&ids, "unsupported").await?;
                tracing::info!(
                    family,
                    count = ids.len(),
                    "cancels not sent: the family's plugin predates cancels (WIT 0.1.5)"
                );
                continue;
            }
            let built = self.plugins.build_cancels(&family, requests).await?;
            for (execution_id, cancel) in ids.into_iter().zip(built) {
                self.send_cancel(execution_id, cancel).await?;
            }
        }
        Ok(count)
    }

    /// Publishes one built cancel, or records why it cannot be.
    async fn send_cancel(
        &self,
        execution_id: i64,
        cancel: Result<Command, PluginError>,
    ) -> anyhow::Result<()> {
        let command = match cancel {
            Ok(command) => command,
            Err(error) => {
                tracing::warn!(execution_id, %error, "cancel not built");
                return Ok(self.cancels_settled(&[execution_id], "refused").await?);
            }
        };
        let topic = format!("{}/{}", self.topic_prefix, command.topic);
        let sent = self
            .publish(&topic, qos(command.qos), command.payload)
            .await;
        let result = match sent {
            Ok(()) => "sent",
            Err(reason) => {
                tracing::warn!(execution_id, reason, "cancel not sent; retrying");
                sqlx::query(
                    "UPDATE executions SET cancel_delivery = 'pending'
                     WHERE id = $1 AND cancel_delivery = 'sent'",
                )
                .bind(execution_id)
                .execute(&self.pool)
                .await?;
                "publish_failed"
            }
        };
        self.metrics
            .cancel_commands_total
            .with_label_values(&[result])
            .inc();
        Ok(())
    }

    /// Cancels that cannot be sent: not sent again either.
    async fn cancels_settled(&self, ids: &[i64], result: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE executions SET cancel_delivery = NULL
             WHERE id = ANY($1) AND cancel_delivery = 'sent'",
        )
        .bind(ids)
        .execute(&self.pool)
        .await?;
        self.metrics
            .cancel_commands_total
            .with_label_values(&[result])
            .inc_by(ids.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_is_not_an_update_manifest() {
        let cancel = CancelManifest {
            v: crate::manifest::CANCEL_FORMAT,
            kind: CancelManifest::KIND.into(),
            device_id: "VIN-1".into(),
            execution_id: 7,
            job_id: Uuid::nil(),
            attempt: 2,
            expires_at: Utc::now(),
        }
        .to_json();
        // A device reading it as an update finds no image to install.
        assert!(serde_json::from_str::<crate::manifest::Manifest>(&cancel).is_err());
        let back: CancelManifest = serde_json::from_str(&cancel).unwrap();
        assert_eq!((back.kind.as_str(), back.attempt), ("cancel", 2));
        // Nor is an update manifest, which has no kind, a cancel.
        let update = serde_json::json!({
            "v": 3, "device_id": "VIN-1", "execution_id": 7, "job_id": Uuid::nil(),
            "expires_at": Utc::now(),
        });
        assert!(serde_json::from_value::<CancelManifest>(update).is_err());
    }
}

//! The dispatcher: claims released executions, builds each device's
//! command with its family plugin, signs the update manifest and publishes
//! the command over MQTT at QoS 1; and tells devices of their cancelled
//! updates (`cancels`).
//!
//! Executions are claimed (`queued` → `dispatched`) and committed before
//! anything is published: no transaction is open during network I/O. A
//! device that never receives its command is caught by the device timeout
//! and retried under the job's retry policy.

mod cancels;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng as _;
use rumqttc::QoS;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::InstallPolicy;
use crate::jobs::executions;
use crate::manifest::{self, Manifest};
use crate::metrics::Metrics;
use crate::mqtt::MqttLink;
use crate::plugins::{CommandRequest, DeviceInfo, FirmwareRef, PluginError, Plugins};
use crate::signing::{Keyring, ManifestSigner};
use crate::store::FirmwareStore;

/// Executions claimed per round.
const CLAIM: i64 = 500;
/// Publish attempts before an execution fails.
const PUBLISH_ATTEMPTS: u32 = 5;
/// What a command needs, for the claimed executions in `claimed` (a
/// relation of `id, job_id, device_id, attempts`).
fn claimed_details(claimed: &str) -> String {
    format!(
        "SELECT c.id, c.job_id, c.device_id, c.attempts, d.family, d.model, d.gateway_id,
                g.family AS gateway_family, f.id AS firmware_id, f.version AS firmware_version,
                f.sha256, f.size, f.storage_key, f.metadata->>'target' AS target, j.device_timeout_secs, j.install,
                f.security_counter, (f.downgrade_allowed_at IS NOT NULL) AS downgrade_allowed
         FROM {claimed} c
         JOIN devices d ON d.id = c.device_id
         LEFT JOIN devices g ON g.id = d.gateway_id
         JOIN jobs j ON j.id = c.job_id
         JOIN firmware f ON f.id = j.firmware_id
         ORDER BY c.id"
    )
}

#[derive(Clone)]
pub struct Dispatcher {
    pub pool: PgPool,
    pub plugins: Plugins,
    pub metrics: Metrics,
    pub keys: Keyring,
    /// How long a signed manifest (and its download URL) stays valid;
    /// `None`: the job's device timeout plus an hour.
    pub manifest_ttl: Option<Duration>,
    pub store: FirmwareStore,
    pub mqtt: MqttLink,
    pub topic_prefix: String,
    /// Base URL devices download from when the store cannot presign.
    pub public_url: String,
    pub wakeup: Arc<Notify>,
    /// This replica's name, recorded on every claim.
    pub instance_id: String,
}

/// One claimed execution with what its command needs.
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
    firmware_id: Uuid,
    firmware_version: String,
    sha256: String,
    size: i64,
    storage_key: String,
    target: Option<String>,
    device_timeout_secs: i32,
    install: String,
    security_counter: i64,
    downgrade_allowed: bool,
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let wakeup = self.wakeup.clone();
        crate::worker::run_rounds(
            "dispatching",
            Duration::from_millis(250),
            CLAIM as usize,
            &wakeup,
            &shutdown,
            || self.dispatch_round(),
        )
        .await;
    }

    /// Sends one round of cancels, then of commands (a device whose update
    /// was cancelled hears it before its next job's command); returns how
    /// many were claimed.
    pub async fn dispatch_round(&self) -> anyhow::Result<usize> {
        let cancels = self.send_cancels().await?;
        Ok(cancels + self.send_commands().await?)
    }

    /// Claims and sends one round of commands; returns how many were claimed.
    async fn send_commands(&self) -> anyhow::Result<usize> {
        let (claimed, resent) = self.claim().await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let count = claimed.len();
        // The download URL names the image, not the device: one per
        // firmware and expiry second serves the whole round, instead of a
        // signature (or a presigned URL) per command.
        let mut urls = HashMap::new();
        let signer = self.keys.signer().await;
        let mut requests = Vec::with_capacity(count);
        for c in &claimed {
            requests.push(self.request(c, &signer, &mut urls).await?);
        }
        // Each family's commands in one call of its plugin (one instance
        // per round when the plugin takes batches).
        let mut by_family: HashMap<String, (Vec<usize>, Vec<CommandRequest>)> = HashMap::new();
        for (position, (family, request)) in requests.into_iter().enumerate() {
            let (positions, requests) = by_family.entry(family).or_default();
            positions.push(position);
            requests.push(request);
        }
        // Published in the order claimed.
        let mut built: Vec<Option<_>> = (0..count).map(|_| None).collect();
        for (family, (positions, requests)) in by_family {
            let executions: Vec<u64> = requests.iter().map(|r| r.execution_id).collect();
            let commands = self.plugins.build_commands(&family, requests).await?;
            for ((position, execution), command) in
                positions.into_iter().zip(executions).zip(commands)
            {
                // The commands sent again come first in the claim.
                built[position] = Some((execution, position < resent, command));
            }
        }
        let built: Vec<_> = built.into_iter().flatten().collect();
        for (execution_id, again, command) in built {
            match command {
                Ok(command) => {
                    let topic = format!("{}/{}", self.topic_prefix, command.topic);
                    let qos = qos(command.qos);
                    if let Err(reason) = self.publish(&topic, qos, command.payload).await {
                        if again {
                            // The device has its update under way: the
                            // command is sent again next round, not failed.
                            self.resend_later(execution_id as i64, &reason).await?;
                        } else {
                            self.fail(execution_id as i64, "publish-failed", &reason)
                                .await?;
                        }
                    } else if again {
                        self.metrics.update_commands_resent_total.inc();
                    } else {
                        self.metrics.update_requests_total.inc();
                    }
                }
                Err(error) => {
                    let reason = match &error {
                        PluginError::Refused { .. } => "plugin-refused",
                        PluginError::Failed { .. } => "plugin-failed",
                        _ => "no-plugin",
                    };
                    self.fail(execution_id as i64, reason, &error.to_string())
                        .await?;
                }
            }
        }
        Ok(count)
    }

    /// Publishes with retries, exponential backoff and jitter.
    async fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) -> Result<(), String> {
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        for _ in 0..PUBLISH_ATTEMPTS {
            match self
                .mqtt
                .client
                .publish(topic, qos, false, payload.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) => {
                    self.metrics
                        .dispatcher_mqtt_errors_total
                        .with_label_values(&["publish"])
                        .inc();
                    last = error.to_string();
                    let jitter = rand::rng().random_range(0..=delay.as_millis() as u64 / 2);
                    tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        Err(format!(
            "publishing the command failed {PUBLISH_ATTEMPTS} times: {last}"
        ))
    }

    /// Claims commands to send: first those to send again (see
    /// `resend_orphans`, and devices back online: `executions::resend_to`),
    /// then released executions of running jobs, one
    /// per device (a device never has two updates in flight), emergency
    /// jobs first.
    /// Returns the claims and how many of them, at the front, are sent
    /// again.
    async fn claim(&self) -> Result<(Vec<Claimed>, usize), sqlx::Error> {
        let mut claimed: Vec<Claimed> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH answered AS (
                 -- A command marked to be sent again that its device has
                 -- answered since (a status after the send, or after the
                 -- mark) is not sent: sending it would make the device's
                 -- answer older than the send, and a device that never
                 -- answered is not timed out (it waits for its hello), so
                 -- an update whose later statuses were lost would wait for
                 -- ever instead of being timed out and retried.
                 UPDATE executions e SET resend = false
                 WHERE e.id IN (
                     SELECT x.id FROM executions x
                     WHERE x.resend AND x.stage = 'in_flight' AND x.reported_at > x.dispatched_at
                     FOR UPDATE SKIP LOCKED)
             ), picked AS (
                 -- Through the (nearly always empty) partial index: this
                 -- runs every round, and a join with jobs here let the
                 -- planner scan every dispatched execution instead.
                 SELECT e.id FROM executions e
                 WHERE e.resend AND e.stage = 'in_flight'
                   AND (e.reported_at IS NULL OR e.reported_at <= e.dispatched_at)
                   AND (SELECT j.status FROM jobs j WHERE j.id = e.job_id) = 'running'
                 ORDER BY e.id LIMIT $1
                 FOR UPDATE OF e SKIP LOCKED
             ), claimed AS (
                 -- The device's time to answer counts from this send.
                 UPDATE executions e
                 SET resend = false, dispatched_by = $2, dispatched_at = now(),
                     updated_at = now(), version = e.version + 1
                 FROM picked p WHERE e.id = p.id
                 RETURNING e.id, e.job_id, e.device_id, e.attempts
             )
             {details}",
            details = claimed_details("claimed")
        )))
        .bind(CLAIM)
        .bind(&self.instance_id)
        .fetch_all(&self.pool)
        .await?;
        let resent = claimed.len();
        let room = CLAIM - resent as i64;
        if room == 0 {
            return Ok((claimed, resent));
        }
        // The head of every released batch in the partial `queued` index
        // order, one ordered index scan per batch that stops at `room`: a
        // short, predictable read however large the batch. (A statement
        // that sorted every queued execution cost 120 ms a round at
        // 100,000 devices; ids read first and claimed by `id = ANY(...)` in
        // a second statement let the planner, on statistics not yet
        // updated after the job's creation, scan the whole queued index
        // again: 27 of a claim's 40 ms.) Of those, the ones whose device
        // has nothing in flight, one per device, emergency jobs first; a
        // device busy with another job waits for a later round. Rows
        // another worker holds are skipped.
        let sql = executions::statement(
            "sending AS (
                 SELECT j.id, j.kind,
                        EXISTS (SELECT 1 FROM job_dispatch_limits l WHERE l.job_id = j.id) AS guarded
                 FROM jobs j
                 WHERE j.status = 'running'
                   -- Outside its maintenance windows a job sends nothing new.
                   AND (j.windows IS NULL OR rollway_window_open(j.windows, now()))
                   AND (j.end_at IS NULL OR j.end_at > now())
             ), guarded AS (
                 -- A job with a dispatch rate or a group spread over a
                 -- tag: one replica at a time claims for it (the one
                 -- holding its limits row, `$3`; the others skip it this
                 -- round), so that replicas together keep to its limits.
                 -- A rate allows what its token bucket holds: what was
                 -- left, and the rate since, up to two seconds' worth.
                 -- (`least` and `greatest` skip NULLs: no rate, no allowance.)
                 SELECT l.job_id AS id, l.per_minute,
                        CASE WHEN l.per_minute IS NOT NULL THEN
                            least(greatest(1.0, l.per_minute / 30.0)::float8,
                                  l.allowance + l.per_minute
                                    * extract(epoch FROM now() - l.updated_at)::float8 / 60.0)
                        END AS allowance
                 FROM job_dispatch_limits l
                 WHERE l.job_id = ANY($3::uuid[])
             ), released AS (
                 SELECT b.job_id, b.batch_group, (s.kind = 'emergency') AS urgent,
                        floor(g.allowance)::bigint AS allowance, b.spread_key, b.spread_limit
                 FROM sending s
                 JOIN job_batches b ON b.job_id = s.id AND b.started_at IS NOT NULL
                 LEFT JOIN guarded g ON g.id = s.id
                 WHERE NOT s.guarded OR (g.id IS NOT NULL AND (g.per_minute IS NULL OR g.allowance >= 1))
             ), candidates AS (
                 SELECT q.id, q.job_id, q.device_id, q.batch_group, q.site, q.room, r.urgent, r.allowance
                 FROM released r CROSS JOIN LATERAL (
                     SELECT e.id, e.job_id, e.device_id, e.batch_group, w.site, w.room
                     FROM executions e
                     -- In a group spread over a tag: the device's value of
                     -- the tag, and how many more devices of that value may
                     -- update now (nothing is looked up elsewhere).
                     CROSS JOIN LATERAL (
                         SELECT CASE WHEN r.spread_key IS NOT NULL THEN
                                    (SELECT d.tags ->> r.spread_key FROM devices d WHERE d.id = e.device_id)
                                END AS site
                     ) v
                     CROSS JOIN LATERAL (
                         SELECT v.site, CASE WHEN v.site IS NOT NULL THEN
                                    r.spread_limit - (
                                        SELECT count(*) FROM executions x JOIN devices dx ON dx.id = x.device_id
                                        WHERE x.job_id = e.job_id AND x.batch_group = e.batch_group
                                          AND x.status IN ('dispatched', 'init', 'downloading', 'waiting',
                                                           'flashing', 'rebooting')
                                          AND dx.tags ->> r.spread_key = v.site)
                                END AS room
                     ) w
                     WHERE e.job_id = r.job_id AND e.batch_group = r.batch_group
                       AND e.stage = 'queued'
                       -- A probe of the in-flight index per candidate. (As
                       -- NOT EXISTS, the planner could compare every
                       -- candidate with every execution in flight on a
                       -- fresh table; the sweep's index on `dispatched_at`
                       -- has a predicate this does not imply, so that it
                       -- cannot serve the probe either: migration
                       -- 20261210000002.)
                       AND (SELECT 1 FROM executions x WHERE x.device_id = e.device_id
                            AND x.stage = 'in_flight'
                            LIMIT 1) IS NULL
                       AND (w.room IS NULL OR w.room > 0)
                     ORDER BY e.id LIMIT least($1, coalesce(r.allowance, $1))
                     FOR UPDATE OF e SKIP LOCKED
                 ) q
                 ORDER BY r.urgent DESC, q.id LIMIT $1
             ), one_per_device AS (
                 SELECT DISTINCT ON (device_id) id, job_id, batch_group, site, room, allowance
                 FROM candidates ORDER BY device_id, urgent DESC, id
             ), within_spread AS (
                 -- A round takes no more of one value of the tag than may go.
                 SELECT id, job_id, allowance FROM (
                     SELECT id, job_id, allowance, room,
                            row_number() OVER (PARTITION BY job_id, batch_group, site ORDER BY id) AS n
                     FROM one_per_device
                 ) c WHERE c.room IS NULL OR c.n <= c.room
             ), within_rate AS (
                 -- A job of many released batches keeps to its allowance too.
                 SELECT id, job_id FROM (
                     SELECT id, job_id, allowance,
                            row_number() OVER (PARTITION BY job_id ORDER BY id) AS n
                     FROM within_spread
                 ) c WHERE c.allowance IS NULL OR c.n <= c.allowance
             ), moves AS (
                 SELECT c.id, 'queued' AS previous, 'dispatched' AS next, NULL::text AS reason,
                        'dispatch' AS cause, $2::text AS dispatcher, c.job_id
                 FROM within_rate c
                 WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id AND j.status = 'running')
             ), charged AS (
                 -- What a rate-limited job sent now comes off its bucket.
                 UPDATE job_dispatch_limits l
                 SET allowance = g.allowance - (SELECT count(*) FROM moves m WHERE m.job_id = l.job_id),
                     updated_at = now()
                 FROM guarded g WHERE l.job_id = g.id AND g.per_minute IS NOT NULL
             )",
            &claimed_details("(SELECT id, job_id, device_id, attempt AS attempts FROM changed)"),
        );
        // The limits of rate-limited and spread jobs are taken first, in a
        // statement of their own, so that the claim's snapshot (taken
        // after) sees what the previous holder committed: taken in the
        // claim itself, a lock waited out or skipped into would leave the
        // claim counting in-flight devices as they were before.
        let mut tx = self.pool.begin().await?;
        let held: Vec<Uuid> = sqlx::query_scalar(
            "SELECT l.job_id FROM job_dispatch_limits l JOIN jobs j ON j.id = l.job_id
             WHERE j.status = 'running'
             FOR NO KEY UPDATE OF l SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let fresh: Vec<Claimed> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(room)
            .bind(&self.instance_id)
            .bind(&held)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        claimed.extend(fresh);
        Ok((claimed, resent))
    }

    async fn request(
        &self,
        c: &Claimed,
        signer: &ManifestSigner,
        urls: &mut HashMap<(Uuid, i64), String>,
    ) -> anyhow::Result<(String, CommandRequest)> {
        let validity = self
            .manifest_ttl
            .unwrap_or_else(|| Duration::from_secs(c.device_timeout_secs.max(60) as u64 + 3600));
        let expires_at = Utc::now() + chrono::Duration::from_std(validity)?;
        let manifest = Manifest {
            v: manifest::FORMAT,
            device_id: c.device_id.clone(),
            execution_id: c.id,
            job_id: c.job_id,
            firmware_id: c.firmware_id,
            version: c.firmware_version.clone(),
            sha256: c.sha256.clone(),
            size: c.size,
            security_counter: c.security_counter,
            downgrade: c.downgrade_allowed,
            install: InstallPolicy::parse(&c.install)?,
            expires_at,
        }
        .to_json();
        let signature = signer.sign(manifest.as_bytes());
        let download_url = match urls.entry((c.firmware_id, expires_at.timestamp())) {
            Entry::Occupied(url) => url.get().clone(),
            Entry::Vacant(slot) => {
                let url = match self.store.presigned_get(&c.storage_key, validity).await? {
                    Some(url) => url.to_string(),
                    None => format!(
                        "{}/api/v1/firmware/{}/download?token={}",
                        self.public_url.trim_end_matches('/'),
                        c.firmware_id,
                        manifest::download_token(signer, c.firmware_id, expires_at)
                    ),
                };
                slot.insert(url).clone()
            }
        };
        Ok((
            c.family.clone(),
            CommandRequest {
                device: DeviceInfo {
                    id: c.device_id.clone(),
                    family: c.family.clone(),
                    model: c.model.clone(),
                    gateway_id: c.gateway_id.clone(),
                    gateway_family: c.gateway_family.clone(),
                },
                firmware: FirmwareRef {
                    id: c.firmware_id.to_string(),
                    version: c.firmware_version.clone(),
                    sha256: c.sha256.clone(),
                    size: c.size as u64,
                    target: c.target.clone(),
                },
                job_id: c.job_id.to_string(),
                execution_id: c.id as u64,
                attempt: c.attempts as u32,
                download_url,
                manifest,
                signature,
                key_id: signer.key_id.clone(),
            },
        ))
    }

    /// Marks a command that was to be sent again, and could not be, for
    /// the next round.
    async fn resend_later(&self, execution_id: i64, detail: &str) -> Result<(), sqlx::Error> {
        self.metrics
            .dispatcher_mqtt_errors_total
            .with_label_values(&["publish-failed"])
            .inc();
        tracing::warn!(execution_id, detail, "command not sent again; retrying");
        sqlx::query("UPDATE executions SET resend = true WHERE id = $1 AND stage = 'in_flight'")
            .bind(execution_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Fails an execution whose command cannot be sent (not retried).
    async fn fail(
        &self,
        execution_id: i64,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), sqlx::Error> {
        self.metrics
            .dispatcher_mqtt_errors_total
            .with_label_values(&[reason])
            .inc();
        self.metrics
            .update_errors_total
            .with_label_values(&["dispatch"])
            .inc();
        tracing::warn!(execution_id, reason, detail, "command not sent");
        let message = format!("dispatch failed: {detail}");
        let sql = executions::statement(
            "moves AS (
                 SELECT id, status AS previous, 'error' AS next, $2::text AS reason,
                        'dispatch_failed' AS cause, NULL::text AS dispatcher
                 FROM executions WHERE id = $1 AND status = 'dispatched'
                 FOR UPDATE
             )",
            "SELECT job_id FROM changed",
        );
        let job: Option<(Uuid,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(execution_id)
            .bind(&message)
            .fetch_optional(&self.pool)
            .await?;
        if let Some((job_id,)) = job {
            crate::jobs::touch_jobs(&self.pool, &[job_id]).await?;
        }
        Ok(())
    }
}

/// The MQTT QoS a plugin asked for (0, 1 or 2; checked when built).
fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Marks for sending again the commands `instance` claimed whose device has
/// not spoken since: that replica stopped (or restarted) and cannot tell
/// whether they left it. They keep their status and attempt; the device
/// sees the same command again and ignores the repeat if it had it.
/// Returns how many were marked.
pub async fn resend_orphans(pool: &PgPool, instance: &str) -> Result<u64, sqlx::Error> {
    let marked = sqlx::query(
        "UPDATE executions SET resend = true, dispatched_by = NULL
         WHERE status = 'dispatched' AND dispatched_by = $1",
    )
    .bind(instance)
    .execute(pool)
    .await?
    .rows_affected();
    if marked > 0 {
        tracing::warn!(
            instance,
            count = marked,
            "commands claimed by a stopped replica are sent again"
        );
    }
    Ok(marked)
}

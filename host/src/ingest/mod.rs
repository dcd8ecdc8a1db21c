//! Status ingestion: device statuses, from MQTT (shared subscription, manual
//! acks) or another source, applied exactly once in effect; and presence
//! messages (`presence.rs`), what devices say about themselves.
//!
//! Each message is parsed by its family's plugin, checked against its topic
//! (a device reports only for itself, a gateway for its children), matched
//! to the device's execution, deduplicated by message id, checked against the
//! state machine (`decide.rs`) and applied with its log row and outbox event
//! (`jobs::executions`). A batch of messages is applied in one transaction
//! with a few set-based statements (`batch.rs`); should that fail for
//! anything but a deadlock, the batch is applied again message by message,
//! the same way, a savepoint each. Acks go out only after the commit.

mod batch;
mod decide;
pub mod kafka;
mod presence;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{DeviceId, ExecutionStatus};
use crate::metrics::Metrics;
use crate::mqtt::{Incoming, MqttLink};
use crate::plugins::{ParsedStatus, PluginError, Plugins, ReportState};

/// Largest status payload accepted.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most messages applied in one transaction.
const BATCH: usize = 500;
/// Batches applied at once. Each device's messages always go to the same
/// lane (by topic), so they are applied in the order they came; while the
/// database works on one lane's batch, the others are parsed, sent and
/// acked. Lanes lock disjoint executions, in device order as always.
const LANES: usize = 4;

/// The lane of a message: by the sending device (the topic level after
/// the prefix), so that its statuses and presence keep their order.
fn lane_of(topic_prefix: &str, topic: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let device = topic
        .strip_prefix(topic_prefix)
        .and_then(|rest| rest.split('/').nth(1))
        .unwrap_or(topic);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    device.hash(&mut hasher);
    (hasher.finish() % LANES as u64) as usize
}

/// What a message on a device's topic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Status,
    Presence,
}

/// What the fleet knew of a sender's connection when its batch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Connected, and noted so within `fleet::SEEN_EVERY`.
    Fresh,
    /// Connected, last noted longer ago.
    Connected,
    /// Away (its last will, or never heard from).
    Away,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Applied after the host had given up on the attempt (timed out):
    /// the device finished it, and its word stands.
    Late,
    /// A `done` of a cancelled execution: the execution stays cancelled,
    /// what the device runs changes.
    Installed,
    Progress,
    Duplicate,
    /// A presence message, recorded.
    Recorded,
    /// Not applied, for this cause, with a detail for the log.
    Refused(Refusal, String),
}

impl Outcome {
    pub(crate) fn refused(cause: Refusal, detail: impl Into<String>) -> Self {
        Outcome::Refused(cause, detail.into())
    }

    /// Whether the status was taken: it moved its execution or changed
    /// what its device runs.
    pub fn taken(&self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Late | Outcome::Installed)
    }

    /// The `result` label of `status_messages_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Late => "late",
            Outcome::Installed => "installed",
            Outcome::Progress => "progress",
            Outcome::Duplicate => "duplicate",
            Outcome::Recorded => "recorded",
            Outcome::Refused(cause, _) => cause.result(),
        }
    }

    /// The `reason` label of `status_messages_total`: empty unless refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Refused(cause, _) => cause.reason(),
            _ => "",
        }
    }
}

/// Why a status message was not applied. Each cause has its own `reason`
/// label and belongs to one `result` of `status_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The topic is not `{prefix}/{device}/update/status` (or
    /// `/presence`) with a valid id.
    BadTopic,
    /// The payload is larger than [`MAX_PAYLOAD`] (a presence, than
    /// [`presence::MAX_PAYLOAD`]).
    Oversized,
    /// The plugin refused a payload that is not even JSON.
    BadJson,
    /// The plugin refused the payload (a field missing or of the wrong type).
    Schema,
    /// A field the plugin returned breaks the host's rules (a NUL or a
    /// control character, an id of the wrong syntax, an overlong text).
    BadText,
    /// The plugin trapped, ran out of time, or is disabled.
    PluginFailed,
    UnknownDevice,
    /// A device reported for a device that is not behind it.
    Spoofed,
    NoExecution,
    /// A status of an attempt other than the execution's current one: a
    /// late status of a timed-out or failed attempt.
    StaleAttempt,
    /// A status for an execution that is queued, not dispatched.
    NotDispatched,
    /// The state machine refuses the move (backwards, or out of a final state).
    StateMachine,
    /// The status names another firmware than the execution's job.
    WrongFirmware,
    /// The execution kept changing under a concurrent writer.
    Conflict,
    /// The database refused the write.
    Database,
}

impl Refusal {
    pub fn result(self) -> &'static str {
        use Refusal::*;
        match self {
            BadTopic | BadJson | Schema | BadText | PluginFailed => "malformed",
            Oversized => "oversized",
            UnknownDevice => "unknown_device",
            Spoofed => "spoofed",
            NoExecution => "no_execution",
            StaleAttempt => "stale_attempt",
            NotDispatched | StateMachine | WrongFirmware | Conflict | Database => "rejected",
        }
    }

    pub fn reason(self) -> &'static str {
        use Refusal::*;
        match self {
            BadTopic => "bad_topic",
            Oversized => "size",
            BadJson => "bad_json",
            Schema => "schema",
            BadText => "bad_text",
            PluginFailed => "plugin_failed",
            UnknownDevice => "unknown_device",
            Spoofed => "topic_mismatch",
            NoExecution => "no_execution",
            StaleAttempt => "stale_attempt",
            NotDispatched => "not_dispatched",
            StateMachine => "state_machine",
            WrongFirmware => "wrong_firmware",
            Conflict => "conflict",
            Database => "database",
        }
    }
}

/// A raw message from any source.
#[derive(Debug, Clone)]
pub struct RawStatus {
    pub topic: String,
    pub payload: bytes::Bytes,
}

#[derive(Clone)]
pub struct Ingest {
    pub pool: PgPool,
    pub plugins: Plugins,
    pub metrics: Metrics,
    pub topic_prefix: String,
    pub evaluate_wakeup: Arc<Notify>,
    pub dispatch_wakeup: Arc<Notify>,
    pub refusals: RefusalLog,
}

impl Ingest {
    /// The MQTT topic filters the host subscribes with: statuses and
    /// presence, shared between replicas. One share group per filter:
    /// some brokers (rumqttd, the embedded one) keep one delivery cursor
    /// per group name, so two filters in one group starve each other.
    pub fn subscriptions(topic_prefix: &str) -> Vec<String> {
        vec![
            format!("$share/rollway/{topic_prefix}/+/update/status"),
            format!("$share/rollway-presence/{topic_prefix}/+/presence"),
        ]
    }

    /// Applies MQTT messages in batches and acks each after its commit.
    pub async fn run_mqtt(
        self,
        mut rx: mpsc::Receiver<Incoming>,
        link: MqttLink,
        shutdown: CancellationToken,
    ) {
        let mut lanes = Vec::with_capacity(LANES);
        let mut workers = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, lane) = mpsc::channel(BATCH * 2);
            lanes.push(tx);
            workers.push(tokio::spawn(self.clone().run_lane(
                lane,
                link.clone(),
                shutdown.clone(),
            )));
        }
        loop {
            let message = tokio::select! {
                message = rx.recv() => match message { Some(m) => m, None => break },
                () = shutdown.cancelled() => break,
            };
            let lane = lane_of(&self.topic_prefix, &message.publish.topic);
            if lanes[lane].send(message).await.is_err() {
                break;
            }
        }
        drop(lanes);
        for worker in workers {
            let _ = worker.await;
        }
    }

    /// One lane: batches its messages, applies each batch and acks it
    /// after the commit.
    async fn run_lane(
        self,
        mut rx: mpsc::Receiver<Incoming>,
        link: MqttLink,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                message = rx.recv() => match message { Some(m) => m, None => break },
                () = shutdown.cancelled() => break,
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(10);
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(message)) => batch.push(message),
                    _ => break,
                }
            }
            let raw: Vec<RawStatus> = batch
                .iter()
                .map(|m| RawStatus {
                    topic: m.publish.topic.clone(),
                    payload: m.publish.payload.clone(),
                })
                .collect();
            if !self.process_until_applied(raw, &shutdown).await {
                return;
            }
            for message in &batch {
                link.ack(message);
            }
        }
    }

    /// Applies a batch, retrying while the database fails (nothing was
    /// committed then; the source redelivers if the host dies). Returns
    /// false when shut down first.
    pub async fn process_until_applied(
        &self,
        raw: Vec<RawStatus>,
        shutdown: &CancellationToken,
    ) -> bool {
        loop {
            match self.process(raw.clone()).await {
                Ok(_) => return true,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "applying statuses; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {},
                        () = shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }

    /// Parses and applies a batch; returns each message's outcome. Only
    /// database errors are errors: bad input is an outcome.
    pub async fn process(&self, batch: Vec<RawStatus>) -> anyhow::Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut topic_devices = Vec::with_capacity(batch.len());
        let mut kinds = Vec::with_capacity(batch.len());
        for (i, message) in batch.iter().enumerate() {
            let parsed = self.topic_device(&message.topic);
            let kind = parsed.as_ref().map_or(Kind::Status, |(_, kind)| *kind);
            let limit = match kind {
                Kind::Status => MAX_PAYLOAD,
                Kind::Presence => presence::MAX_PAYLOAD,
            };
            if parsed.is_none() {
                outcomes[i] = Some(Outcome::refused(
                    Refusal::BadTopic,
                    format!("unexpected topic {:?}", message.topic),
                ));
            } else if message.payload.len() > limit {
                outcomes[i] = Some(Outcome::refused(
                    Refusal::Oversized,
                    format!(
                        "{} bytes on {:?}, at most {limit} are read",
                        message.payload.len(),
                        message.topic
                    ),
                ));
            }
            topic_devices.push(parsed.map(|(device, _)| device).unwrap_or_default());
            kinds.push(kind);
        }
        let ids: Vec<&str> = topic_devices.iter().map(String::as_str).collect();
        // Each sender's family, whether it is connected, and whether it was
        // noted connected within `fleet::seen`'s interval (then its
        // statuses need no write for it).
        let devices: HashMap<String, (String, Connection)> =
            sqlx::query_as::<_, (String, String, bool, bool)>(
                "SELECT id, family, online,
                        coalesce(online AND last_seen >= now() - make_interval(secs => $2), false)
                 FROM devices WHERE id = ANY($1)",
            )
            .bind(&ids)
            .bind(crate::fleet::SEEN_EVERY.as_secs_f64())
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(id, family, online, fresh)| {
                let connection = match (online, fresh) {
                    (_, true) => Connection::Fresh,
                    (true, false) => Connection::Connected,
                    (false, _) => Connection::Away,
                };
                (id, (family, connection))
            })
            .collect();
        let mut work = Vec::new();
        let mut presences = Vec::new();
        for (i, message) in batch.into_iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            match devices.get(&topic_devices[i]) {
                Some((family, _)) if kinds[i] == Kind::Presence => presences.push(presence::Item {
                    index: i,
                    sender: topic_devices[i].clone(),
                    family: family.clone(),
                    payload: message.payload,
                }),
                Some((family, _)) => {
                    work.push((i, family.clone(), topic_devices[i].clone(), message.payload));
                }
                None => {
                    outcomes[i] = Some(Outcome::refused(
                        Refusal::UnknownDevice,
                        format!("no device {:?} is registered", topic_devices[i]),
                    ))
                }
            }
        }
        let started = std::time::Instant::now();
        // Each family's statuses in one call of its plugin (one instance
        // per batch when the plugin takes batches).
        let mut by_family: HashMap<String, Vec<(usize, String, bytes::Bytes)>> = HashMap::new();
        for (i, family, device, payload) in work {
            by_family
                .entry(family)
                .or_default()
                .push((i, device, payload));
        }
        let mut parsed = Vec::new();
        for (family, statuses) in by_family {
            let items: Vec<(String, bytes::Bytes)> = statuses
                .iter()
                .map(|(_, device, payload)| (device.clone(), payload.clone()))
                .collect();
            let reports = self.plugins.parse_statuses(&family, items).await?;
            parsed.extend(
                statuses
                    .into_iter()
                    .zip(reports)
                    .map(|((i, device, payload), report)| (i, device, report, payload)),
            );
        }
        // Rows are locked in device order, the same in every batch, so that
        // two batches (two replicas, or an adopted session) never deadlock.
        // The sort is stable: one device's statuses keep their order.
        parsed.sort_by(|a, b| {
            let key = |device: &String, report: &Result<ParsedStatus, PluginError>| {
                report
                    .as_ref()
                    .map(|r| r.report.device_id.clone())
                    .unwrap_or_else(|_| device.clone())
            };
            key(&a.1, &a.2).cmp(&key(&b.1, &b.2))
        });

        let mut items = Vec::with_capacity(parsed.len());
        for (index, topic_device, report, payload) in parsed {
            match report {
                Ok(parsed) => match check_report(&parsed) {
                    Ok(()) => items.push(batch::Parsed::from_plugin(index, topic_device, parsed)),
                    Err(detail) => {
                        outcomes[index] = Some(Outcome::refused(Refusal::BadText, detail));
                    }
                },
                Err(PluginError::Refused { reason, .. }) => {
                    // JSON the plugin did not accept, or not JSON at all.
                    let cause = if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok()
                    {
                        Refusal::Schema
                    } else {
                        Refusal::BadJson
                    };
                    outcomes[index] = Some(Outcome::refused(cause, reason));
                }
                Err(other) => {
                    outcomes[index] =
                        Some(Outcome::refused(Refusal::PluginFailed, other.to_string()));
                }
            }
        }

        let presences = self.parse_presences(presences, &mut outcomes).await;
        let parsed_in = started.elapsed();
        // Every registered device whose last message here is a status is
        // connected: it just spoke. (A presence says so itself, online or
        // not.) One noted recently needs no write.
        let mut last_kind: HashMap<&str, (Kind, Connection)> = HashMap::new();
        for (device, kind) in topic_devices.iter().zip(&kinds) {
            if let Some((_, connection)) = devices.get(device)
                && *connection != Connection::Fresh
            {
                last_kind.insert(device.as_str(), (*kind, *connection));
            }
        }
        let mut senders: Vec<(&str, Connection)> = last_kind
            .into_iter()
            .filter(|(_, (kind, _))| *kind == Kind::Status)
            .map(|(device, (_, connection))| (device, connection))
            .collect();

        let mut tx = self.pool.begin().await?;
        let applied: Vec<batch::Applied> = match batch::apply(&mut tx, &items).await {
            Ok(applied) => vec![applied],
            Err(batch::BatchError::Db(error)) if crate::db::is_transient(&error) => {
                // A deadlock or serialization failure: the whole batch rolls
                // back and is applied again.
                return Err(error.into());
            }
            Err(error) => {
                tx.rollback().await?;
                tracing::warn!(%error, "applying a batch of statuses failed; applying them one by one");
                self.metrics.status_batch_fallbacks_total.inc();
                tx = self.pool.begin().await?;
                self.apply_one_by_one(&mut tx, &items, &mut outcomes)
                    .await?
            }
        };
        for (index, outcome) in applied.iter().flat_map(|a| &a.outcomes) {
            outcomes[*index] = Some(outcome.clone());
        }
        // Presence after the statuses (rows are locked executions first,
        // then devices, in every writer), as if in arrival order: a
        // presence that came before its device's applied `done` names the
        // version the device ran before it.
        let presences = presence::before_done(presences, &items, &outcomes);
        let hellos = self
            .record_presences(&mut tx, presences, &mut outcomes)
            .await?;
        // A connected device whose own execution the batch wrote needs no
        // write of its own: its `reported_at` says when it was heard from
        // (the device view shows the later of the two).
        senders.retain(|(device, connection)| {
            *connection == Connection::Away || !applied.iter().any(|a| a.reported.contains(*device))
        });
        let senders: Vec<&str> = senders.into_iter().map(|(device, _)| device).collect();
        crate::fleet::seen(&mut *tx, &senders).await?;
        tx.commit().await?;
        // Devices back online get their updates in flight again, in a
        // statement of its own: executions are locked before devices in
        // every transaction. (The hello is acknowledged after this: a crash
        // before it has the broker deliver it again.)
        let hellos: Vec<&str> = hellos.iter().map(String::as_str).collect();
        let resent = crate::jobs::executions::resend_to(&self.pool, &hellos).await?;
        let mut touched = HashSet::new();
        let mut requeued = false;
        for applied in applied {
            self.observe(&applied);
            touched.extend(applied.jobs);
            requeued |= applied.requeued;
        }
        // Prompt the rollout engine after the commit, in a statement of its
        // own: taking job rows after execution rows in one transaction would
        // invert the lock order of job actions and deadlock with them.
        tracing::debug!(
            messages = outcomes.len(),
            parse_ms = parsed_in.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "status batch applied"
        );
        if resent > 0 {
            tracing::debug!(resent, "devices back online get their commands again");
        }
        // The dispatcher is woken only when it has commands to send: a
        // retry, or commands to send again. (A device whose update ended
        // and that has another job's update queued gets it on the
        // dispatcher's next tick: waking it for every batch of statuses
        // cost PostgreSQL a claim per batch, BENCHMARKS.md item 32.)
        if resent > 0 || requeued {
            self.dispatch_wakeup.notify_one();
        }
        let jobs: Vec<Uuid> = touched.into_iter().collect();
        if !jobs.is_empty() {
            crate::jobs::touch_jobs(&self.pool, &jobs).await?;
            self.evaluate_wakeup.notify_one();
        }

        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::refused(Refusal::PluginFailed, "no answer")))
            .collect();
        for (outcome, kind) in outcomes.iter().zip(&kinds) {
            let counter = match kind {
                Kind::Status => &self.metrics.status_messages_total,
                Kind::Presence => &self.metrics.presence_messages_total,
            };
            counter
                .with_label_values(&[outcome.label(), outcome.reason()])
                .inc();
            if let Outcome::Refused(cause, detail) = outcome {
                self.refusals.record(*cause, detail);
            }
        }
        Ok(outcomes)
    }

    /// The slow path: each message in a savepoint of its own in `tx`, so
    /// that one message's failure cannot poison the others.
    async fn apply_one_by_one(
        &self,
        tx: &mut PgConnection,
        items: &[batch::Parsed],
        outcomes: &mut [Option<Outcome>],
    ) -> anyhow::Result<Vec<batch::Applied>> {
        let mut applied = Vec::with_capacity(items.len());
        for item in items {
            let mut one = sqlx::Connection::begin(&mut *tx).await?;
            match batch::apply(&mut one, std::slice::from_ref(item)).await {
                Ok(done) => {
                    one.commit().await?;
                    applied.push(done);
                }
                Err(batch::BatchError::Db(error)) if crate::db::is_transient(&error) => {
                    return Err(error.into());
                }
                Err(error) => {
                    one.rollback().await?;
                    tracing::error!(%error, device = item.topic_device, "applying a status failed");
                    let cause = match error {
                        batch::BatchError::Conflict(_) => Refusal::Conflict,
                        batch::BatchError::Db(_) => Refusal::Database,
                    };
                    outcomes[item.index] = Some(Outcome::refused(cause, error.to_string()));
                }
            }
        }
        Ok(applied)
    }

    /// Records what an applied batch measured.
    fn observe(&self, applied: &batch::Applied) {
        for took in &applied.durations {
            self.metrics.download_duration_seconds.observe(*took);
        }
        for lag in &applied.lags {
            self.metrics.event_processing_lag_seconds.observe(*lag);
        }
        self.metrics
            .update_errors_total
            .with_label_values(&["device"])
            .inc_by(applied.device_errors);
    }

    /// The device a topic belongs to, and what its messages are.
    fn topic_device(&self, topic: &str) -> Option<(String, Kind)> {
        let rest = topic.strip_prefix(&self.topic_prefix)?.strip_prefix('/')?;
        let (device, kind) = match rest.strip_suffix("/update/status") {
            Some(device) => (device, Kind::Status),
            None => (rest.strip_suffix("/presence")?, Kind::Presence),
        };
        DeviceId::parse(device)
            .ok()
            .map(|_| (device.to_owned(), kind))
    }
}

/// Applies one parsed status in the caller's transaction, as the slow
/// path does (benchmarks compare a per-message design with it). An
/// execution that changed under it is an error: roll the transaction back
/// (its duplicate guard included) and try again.
pub async fn apply_one(
    conn: &mut PgConnection,
    topic_device: &str,
    parsed: ParsedStatus,
) -> Result<Outcome, sqlx::Error> {
    let item = batch::Parsed::from_plugin(0, topic_device.to_owned(), parsed);
    match batch::apply(conn, std::slice::from_ref(&item)).await {
        Ok(applied) => Ok(applied.outcomes.into_iter().next().map_or_else(
            || Outcome::refused(Refusal::Conflict, "no outcome"),
            |(_, o)| o,
        )),
        Err(batch::BatchError::Db(error)) => Err(error),
        Err(error @ batch::BatchError::Conflict(_)) => {
            Err(sqlx::Error::Protocol(error.to_string()))
        }
    }
}

/// Longest message id a status may carry.
const MAX_MESSAGE_ID: usize = 200;
/// Longest text field (error, ids, version) a status may carry.
const MAX_TEXT: usize = 4096;
/// Longest reason a waiting or cancelled device may give.
const MAX_REASON: usize = 256;

/// Checks what a plugin parsed against the host's own rules before any of
/// it reaches the database: ids of the right syntax, no NUL (PostgreSQL
/// refuses it in text and JSON) and no other control character in ids,
/// bounded texts. A plugin's answer is never trusted as is.
fn check_report(parsed: &ParsedStatus) -> Result<(), String> {
    let report = &parsed.report;
    DeviceId::parse(&report.device_id)
        .map_err(|e| format!("device id {:?}: {e}", report.device_id))?;
    let id = &report.message_id;
    if id.is_empty() || id.len() > MAX_MESSAGE_ID || id.chars().any(char::is_control) {
        return Err(format!(
            "message id must be 1 to {MAX_MESSAGE_ID} bytes without control characters"
        ));
    }
    let texts = [
        ("error", report.error.as_deref()),
        ("job id", report.job_id.as_deref()),
        ("firmware id", report.firmware_id.as_deref()),
        ("installed version", report.installed_version.as_deref()),
        ("reason", parsed.reason.as_deref()),
    ];
    for (name, text) in texts {
        let Some(text) = text else { continue };
        if text.len() > MAX_TEXT {
            return Err(format!("{name} is longer than {MAX_TEXT} bytes"));
        }
        if name == "reason" && (text.len() > MAX_REASON || text.chars().any(char::is_control)) {
            return Err(format!(
                "reason must be at most {MAX_REASON} bytes without control characters"
            ));
        }
        if text.contains('\0') {
            return Err(format!("{name} contains a NUL character"));
        }
    }
    if report.execution_id.is_some_and(|id| id > i64::MAX as u64) {
        return Err("execution id is out of range".into());
    }
    Ok(())
}

/// Refused statuses in the log: the first of each cause at once, then at
/// most one line per cause and [`RefusalLog::EVERY`] with how many there
/// were, so that a flood of bad messages cannot flood the log. Every one
/// is counted in `status_messages_total{result, reason}` and logged at
/// debug level.
#[derive(Clone, Default)]
pub struct RefusalLog {
    causes: Arc<std::sync::Mutex<HashMap<Refusal, CauseLog>>>,
}

/// One cause's refusals since its last log line.
#[derive(Default)]
struct CauseLog {
    count: u64,
    example: String,
    last_line: Option<std::time::Instant>,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn record(&self, cause: Refusal, detail: &str) {
        tracing::debug!(
            result = cause.result(),
            reason = cause.reason(),
            detail,
            "status refused"
        );
        let line = {
            let Ok(mut causes) = self.causes.lock() else {
                return;
            };
            let entry = causes.entry(cause).or_default();
            entry.count += 1;
            if entry.count == 1 {
                entry.example = detail.chars().take(300).collect();
            }
            if entry
                .last_line
                .is_none_or(|last| last.elapsed() >= Self::EVERY)
            {
                entry.last_line = Some(std::time::Instant::now());
                Some((
                    std::mem::take(&mut entry.count),
                    std::mem::take(&mut entry.example),
                ))
            } else {
                None
            }
        };
        if let Some((count, example)) = line {
            tracing::warn!(
                result = cause.result(),
                reason = cause.reason(),
                count,
                example,
                "status messages refused"
            );
        }
    }
}

fn state_of(state: ReportState) -> ExecutionStatus {
    match state {
        ReportState::Init => ExecutionStatus::Init,
        ReportState::Downloading => ExecutionStatus::Downloading,
        ReportState::Waiting => ExecutionStatus::Waiting,
        ReportState::Flashing => ExecutionStatus::Flashing,
        ReportState::Rebooting => ExecutionStatus::Rebooting,
        ReportState::Done => ExecutionStatus::Done,
        ReportState::Error => ExecutionStatus::Error,
        ReportState::Cancelled => ExecutionStatus::Cancelled,
    }
}

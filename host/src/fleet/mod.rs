//! The fleet: registered devices, their families, gateways and tags.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::domain::{DeviceId, Family, Tags};

/// A registered device.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Device {
    /// VIN, serial number or board id.
    pub id: String,
    pub family: String,
    pub model: Option<String>,
    /// The gateway (e.g. a Jetson) through which this device is reached.
    pub gateway_id: Option<String>,
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: Json<BTreeMap<String, String>>,
    /// The firmware version the device runs, as it last said (its
    /// presence, a finished update, its registration). Also given as
    /// `firmware_version`, its earlier name.
    pub installed_version: Option<String>,
    pub firmware_version: Option<String>,
    /// Security counter of the firmware the device runs, as it last said
    /// or as Rollway last installed: a job may not lower it without an
    /// admin's approval.
    pub security_counter: i64,
    /// What Rollway expects it to run: the version Rollway last installed
    /// there, else what its registration or first report said.
    pub expected_version: Option<String>,
    /// It runs another version than Rollway expects: it was flashed
    /// outside Rollway. Cleared when Rollway next installs a version.
    pub drift: bool,
    /// When any message of the device last arrived (to within
    /// [`SEEN_EVERY`]; a status of its newest update counts to the moment).
    pub last_seen: Option<DateTime<Utc>>,
    /// Whether it is connected: it said hello, or sent anything since its
    /// last will.
    pub online: bool,
    /// When it last announced its presence.
    pub presence_at: Option<DateTime<Utc>>,
    /// What it says about itself (board revision, bootloader, ...).
    #[schema(value_type = BTreeMap<String, String>)]
    pub hardware: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A device's columns, `last_seen` as the device view shows it (a status
/// of its newest update counts).
const DEVICE_COLUMNS: &str = "id, family, model, gateway_id, tags, firmware_version AS installed_version, \
     firmware_version, expected_version, drift, security_counter, \
     greatest(last_seen, (SELECT e.reported_at FROM executions e WHERE e.device_id = devices.id \
                          ORDER BY e.id DESC LIMIT 1)) AS last_seen, \
     online, presence_at, hardware, created_at, updated_at";

/// A device with its newest execution, as listed and read.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct DeviceView {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub device: Device,
    /// Status of the device's newest execution; absent when it never had one.
    pub last_status: Option<String>,
    pub last_job_id: Option<uuid::Uuid>,
    pub last_execution_id: Option<i64>,
    pub last_error: Option<String>,
    /// Download progress of the newest execution, in percent.
    pub last_progress: Option<i16>,
}

/// `devices d` joined with its newest execution `x`.
const DEVICE_VIEW_FROM: &str = "SELECT d.id, d.family, d.model, d.gateway_id, d.tags, \
     d.firmware_version AS installed_version, d.firmware_version, d.expected_version, d.drift, \
     d.security_counter, greatest(d.last_seen, x.reported_at) AS last_seen, \
     d.online, d.presence_at, d.hardware, d.created_at, d.updated_at, x.status AS last_status, \
     x.job_id AS last_job_id, x.id AS last_execution_id, x.last_error, x.progress AS last_progress \
     FROM devices d LEFT JOIN LATERAL (SELECT e.id, e.job_id, e.status, e.last_error, e.progress, e.reported_at \
     FROM executions e WHERE e.device_id = d.id ORDER BY e.id DESC LIMIT 1) x ON true";

/// A validated registration.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: DeviceId,
    pub family: Family,
    pub model: Option<String>,
    pub gateway_id: Option<DeviceId>,
    pub tags: Tags,
    /// What it runs, when the registration says (else kept as it was).
    pub installed_version: Option<String>,
    pub security_counter: Option<i64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct UpsertCounts {
    pub created: u64,
    pub updated: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("gateway '{0}' is not a registered device")]
    UnknownGateway(String),
    #[error(
        "device '{device}' cannot use '{gateway}' as its gateway: it is itself behind a gateway"
    )]
    NestedGateway { device: String, gateway: String },
    #[error(
        "device '{device}' cannot use '{gateway}' as its gateway: '{device}' is a gateway for other devices"
    )]
    GatewayHasGateway { device: String, gateway: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Registers or updates devices in one statement. Gateways are checked at the
/// end of the transaction, so a batch may list children before gateways.
pub async fn upsert(
    conn: &mut PgConnection,
    devices: &[NewDevice],
) -> Result<UpsertCounts, FleetError> {
    // Rows are inserted (and locked) in id order, as every other writer of
    // several devices locks them.
    let mut sorted: Vec<&NewDevice> = devices.iter().collect();
    sorted.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let devices = sorted;
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    let families: Vec<&str> = devices.iter().map(|d| d.family.as_str()).collect();
    let models: Vec<Option<&str>> = devices.iter().map(|d| d.model.as_deref()).collect();
    let gateways: Vec<Option<&str>> = devices
        .iter()
        .map(|d| d.gateway_id.as_ref().map(DeviceId::as_str))
        .collect();
    let tags: Vec<serde_json::Value> = devices.iter().map(|d| d.tags.to_json()).collect();
    let versions: Vec<Option<&str>> = devices
        .iter()
        .map(|d| d.installed_version.as_deref())
        .collect();
    let counters: Vec<Option<i64>> = devices.iter().map(|d| d.security_counter).collect();

    // A version given replaces the one recorded, none keeps it. A counter
    // given may raise the one recorded, never lower it: lowering what a
    // device accepts is a downgrade, which only an admin allows, per
    // firmware.
    let inserted: Vec<(bool,)> = sqlx::query_as(
        "INSERT INTO devices (id, family, model, gateway_id, tags, firmware_version, expected_version,
                              security_counter)
         SELECT u.id, u.family, u.model, u.gateway, u.tags, u.version, u.version, coalesce(u.counter, 0)
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::bigint[])
              AS u(id, family, model, gateway, tags, version, counter)
         ON CONFLICT (id) DO UPDATE SET
             family = excluded.family, model = excluded.model,
             gateway_id = excluded.gateway_id, tags = excluded.tags,
             firmware_version = coalesce(excluded.firmware_version, devices.firmware_version),
             -- The operator says what it runs: that is what is expected.
             expected_version = coalesce(excluded.firmware_version, devices.expected_version),
             security_counter = greatest(devices.security_counter, excluded.security_counter),
             updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(&ids)
    .bind(&families)
    .bind(&models)
    .bind(&gateways)
    .bind(&tags)
    .bind(&versions)
    .bind(&counters)
    .fetch_all(&mut *conn)
    .await?;
    // One level of gateways: a gateway is not behind another gateway, and a
    // device that serves as gateway is not itself behind one.
    let problem: Option<(String, Option<String>, Option<String>, bool)> = sqlx::query_as(
        "SELECT d.id, d.gateway_id, g.id, g.gateway_id IS NOT NULL
         FROM devices d LEFT JOIN devices g ON g.id = d.gateway_id
         WHERE (d.id = ANY($1) OR d.gateway_id = ANY($1))
           AND d.gateway_id IS NOT NULL
           AND (g.id IS NULL OR g.gateway_id IS NOT NULL)
         LIMIT 1",
    )
    .bind(&ids)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((device, gateway, found, nested)) = problem {
        let gateway = gateway.unwrap_or_default();
        return Err(if found.is_none() {
            FleetError::UnknownGateway(gateway)
        } else if nested && ids.contains(&device.as_str()) {
            FleetError::NestedGateway { device, gateway }
        } else {
            FleetError::GatewayHasGateway {
                device: gateway.clone(),
                gateway: device,
            }
        });
    }

    let created = inserted.iter().filter(|(new,)| *new).count() as u64;
    Ok(UpsertCounts {
        created,
        updated: inserted.len() as u64 - created,
    })
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Option<DeviceView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DEVICE_VIEW_FROM} WHERE d.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Filters of the device list; every field narrows the result.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    pub family: Option<String>,
    pub model: Option<String>,
    pub gateway_id: Option<String>,
    pub firmware_version: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Devices whose id starts with this text.
    pub id_prefix: Option<String>,
    /// Only devices connected (`true`) or away (`false`).
    pub online: Option<bool>,
    /// Only devices flashed outside Rollway (`true`) or not (`false`).
    pub drift: Option<bool>,
}

/// One page of devices ordered by id, after `cursor` (the last id seen).
pub async fn list(
    pool: &PgPool,
    filter: &DeviceFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceView>, sqlx::Error> {
    let mut query = QueryBuilder::new(format!("{DEVICE_VIEW_FROM} WHERE true"));
    push_filter(&mut query, filter);
    if let Some(after) = after {
        query.push(" AND d.id > ").push_bind(after);
    }
    query.push(" ORDER BY d.id LIMIT ").push_bind(limit);
    query.build_query_as().fetch_all(pool).await
}

/// How many devices run each version, by family and model.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct VersionGroup {
    pub family: String,
    pub model: Option<String>,
    /// Absent for devices that never said what they run.
    pub installed_version: Option<String>,
    pub devices: i64,
    /// Of them, connected now.
    pub online: i64,
    /// Of them, flashed outside Rollway (`drift`).
    pub drifted: i64,
}

/// The fleet's version distribution: devices per family, model and
/// installed version, among those `filter` selects.
pub async fn versions(
    pool: &PgPool,
    filter: &DeviceFilter,
) -> Result<Vec<VersionGroup>, sqlx::Error> {
    let mut query = QueryBuilder::new(
        "SELECT d.family, d.model, d.firmware_version AS installed_version, count(*) AS devices,
                count(*) FILTER (WHERE d.online) AS online,
                count(*) FILTER (WHERE d.drift) AS drifted
         FROM devices d WHERE true",
    );
    push_filter(&mut query, filter);
    query.push(
        " GROUP BY d.family, d.model, d.firmware_version
          ORDER BY d.family, d.model NULLS LAST, d.firmware_version NULLS LAST",
    );
    query.build_query_as().fetch_all(pool).await
}

/// `filter`'s conditions on `devices d`.
fn push_filter(query: &mut QueryBuilder<sqlx::Postgres>, filter: &DeviceFilter) {
    if let Some(family) = &filter.family {
        query.push(" AND d.family = ").push_bind(family);
    }
    if let Some(model) = &filter.model {
        query.push(" AND d.model = ").push_bind(model);
    }
    if let Some(gateway) = &filter.gateway_id {
        query.push(" AND d.gateway_id = ").push_bind(gateway);
    }
    if let Some(version) = &filter.firmware_version {
        query.push(" AND d.firmware_version = ").push_bind(version);
    }
    if !filter.tags.is_empty() {
        query
            .push(" AND d.tags @> ")
            .push_bind(Json(&filter.tags))
            .push("::jsonb");
    }
    if let Some(prefix) = &filter.id_prefix {
        let escaped = prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        query
            .push(" AND d.id LIKE ")
            .push_bind(format!("{escaped}%"));
    }
    if let Some(online) = filter.online {
        query.push(" AND d.online = ").push_bind(online);
    }
    if let Some(drift) = filter.drift {
        query.push(" AND d.drift = ").push_bind(drift);
    }
}

/// A device's presence as its message said, with the device that sent it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The sender (the topic's device): the device itself or its gateway.
    pub sender: String,
    pub device_id: String,
    pub online: bool,
    pub installed_version: Option<String>,
    pub security_counter: Option<i64>,
    pub hardware: BTreeMap<String, String>,
}

/// Records what devices said about themselves. A device may speak for
/// itself and a gateway for the devices behind it; other entries change
/// nothing. Of the entries a sender may make, the last of each device in
/// the slice wins.
pub async fn record_presence(
    conn: &mut PgConnection,
    seen: &[Seen],
) -> Result<Recorded, sqlx::Error> {
    if seen.is_empty() {
        return Ok(Recorded::default());
    }
    // Who may speak for whom: the device itself, or its gateway.
    let ids: Vec<&str> = seen.iter().map(|s| s.device_id.as_str()).collect();
    let gateways: std::collections::HashMap<String, Option<String>> =
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT id, gateway_id FROM devices WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
    let allowed: Vec<bool> = seen
        .iter()
        .map(|s| match gateways.get(&s.device_id) {
            Some(gateway) => s.device_id == s.sender || gateway.as_deref() == Some(&s.sender),
            None => false,
        })
        .collect();
    // The last allowed entry of each device, in id order.
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, entry) in seen.iter().enumerate() {
        if allowed[i] {
            last.insert(entry.device_id.as_str(), i);
        }
    }
    if last.is_empty() {
        return Ok(Recorded {
            allowed,
            drifted: Vec::new(),
        });
    }
    let kept: Vec<&Seen> = last.values().map(|&i| &seen[i]).collect();
    let senders: Vec<&str> = kept.iter().map(|s| s.sender.as_str()).collect();
    let devices: Vec<&str> = kept.iter().map(|s| s.device_id.as_str()).collect();
    let online: Vec<bool> = kept.iter().map(|s| s.online).collect();
    let versions: Vec<Option<&str>> = kept
        .iter()
        .map(|s| s.installed_version.as_deref())
        .collect();
    let counters: Vec<Option<i64>> = kept.iter().map(|s| s.security_counter).collect();
    let hardware: Vec<serde_json::Value> = kept
        .iter()
        .map(|s| serde_json::to_value(&s.hardware).unwrap_or_default())
        .collect();
    // Rows are locked in id order, as every other writer of several
    // devices does, and without the key lock that registering executions
    // (their foreign key) would wait for. A gateway that went away takes
    // the devices behind it along (its last will cannot list them); an
    // online entry also notes the message. The sender is checked again
    // against the locked row: a gateway changed meanwhile speaks for no
    // one.
    let drifted: Vec<Drifted> = sqlx::query_as(
        "WITH u AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::bigint[], $6::jsonb[])
                  AS u(sender, device, online, version, counter, hardware)
         ), e AS (
             SELECT * FROM u
             UNION ALL
             SELECT u.sender, c.id, false, NULL, NULL, '{}'::jsonb
             FROM u JOIN devices c ON c.gateway_id = u.sender
             WHERE NOT u.online AND u.device = u.sender
               AND NOT EXISTS (SELECT 1 FROM u AS listed WHERE listed.device = c.id)
         ), locked AS (
             SELECT d.id, d.drift AS was_drift FROM devices d JOIN e ON d.id = e.device
             WHERE d.id = e.sender OR d.gateway_id = e.sender
             ORDER BY d.id FOR NO KEY UPDATE OF d
         ), updated AS (
         UPDATE devices d SET online = e.online,
                last_seen = CASE WHEN e.online THEN now() ELSE d.last_seen END,
                presence_at = now(),
                firmware_version = coalesce(e.version, d.firmware_version),
                -- A first report says what the device runs; later ones
                -- that differ from it (and from what Rollway installed)
                -- are drift.
                expected_version = coalesce(d.expected_version, e.version),
                security_counter = coalesce(e.counter, d.security_counter),
                hardware = CASE WHEN e.hardware = '{}'::jsonb THEN d.hardware ELSE e.hardware END,
                updated_at = now()
         FROM e, locked WHERE d.id = e.device AND locked.id = d.id
         RETURNING d.id, d.firmware_version, d.expected_version, d.drift, locked.was_drift
         )
         SELECT id, firmware_version, expected_version FROM updated WHERE drift AND NOT was_drift
         ORDER BY id",
    )
    .bind(&senders)
    .bind(&devices)
    .bind(&online)
    .bind(&versions)
    .bind(&counters)
    .bind(&hardware)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Recorded { allowed, drifted })
}

/// What [`record_presence`] recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Per entry, whether its sender may speak for its device (the entry
    /// was recorded, or superseded by a later one).
    pub allowed: Vec<bool>,
    /// Devices that now run another version than Rollway expects, and
    /// did not before.
    pub drifted: Vec<Drifted>,
}

/// A device found running a version Rollway did not install.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Drifted {
    pub id: String,
    pub firmware_version: Option<String>,
    pub expected_version: Option<String>,
}

/// How often at most `seen` writes a device's `last_seen`.
pub const SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Notes that messages of `devices` arrived: they are connected. Written
/// at most every [`SEEN_EVERY`] a device (a stream of statuses costs one
/// write).
pub async fn seen<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    devices: &[&str],
) -> Result<(), sqlx::Error> {
    if devices.is_empty() {
        return Ok(());
    }
    // A row another transaction holds is skipped: the device's next
    // message notes it.
    sqlx::query(
        "UPDATE devices SET last_seen = now(), online = true
         WHERE id IN (SELECT id FROM devices
                      WHERE id = ANY($1)
                        AND (NOT online OR last_seen IS NULL
                             OR last_seen < now() - make_interval(secs => $2))
                      ORDER BY id FOR NO KEY UPDATE SKIP LOCKED)",
    )
    .bind(devices)
    .bind(SEEN_EVERY.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(())
}

/// How the fleet is made up: devices by family, model, installed version
/// and the status of their newest execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetSummary {
    pub total: i64,
    /// Devices connected now.
    pub online: i64,
    pub by_family: Vec<FamilyCount>,
    pub by_model: Vec<ModelCount>,
    pub by_version: Vec<VersionCount>,
    pub by_last_status: Vec<StatusCount>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct FamilyCount {
    pub family: String,
    pub devices: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct ModelCount {
    pub family: String,
    pub model: Option<String>,
    pub devices: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct VersionCount {
    pub family: String,
    /// Absent for devices that never reported a version.
    pub firmware_version: Option<String>,
    pub devices: i64,
    /// Of them, connected now.
    pub online: i64,
    /// Of them, flashed outside Rollway (`drift`).
    pub drifted: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct StatusCount {
    /// Absent for devices that never had an execution.
    pub status: Option<String>,
    pub devices: i64,
}

pub async fn summary(pool: &PgPool) -> Result<FleetSummary, sqlx::Error> {
    let by_model: Vec<ModelCount> = sqlx::query_as(
        "SELECT family, model, count(*) AS devices FROM devices
         GROUP BY family, model ORDER BY family, model NULLS LAST",
    )
    .fetch_all(pool)
    .await?;
    let by_version: Vec<VersionCount> = sqlx::query_as(
        "SELECT family, firmware_version, count(*) AS devices,
                count(*) FILTER (WHERE online) AS online,
                count(*) FILTER (WHERE drift) AS drifted FROM devices
         GROUP BY family, firmware_version ORDER BY family, firmware_version NULLS LAST",
    )
    .fetch_all(pool)
    .await?;
    let by_last_status: Vec<StatusCount> = sqlx::query_as(
        "SELECT x.status, count(*) AS devices FROM devices d
         LEFT JOIN LATERAL (SELECT e.status FROM executions e WHERE e.device_id = d.id
                            ORDER BY e.id DESC LIMIT 1) x ON true
         GROUP BY x.status ORDER BY x.status NULLS FIRST",
    )
    .fetch_all(pool)
    .await?;
    // Families from the model breakdown: one scan fewer.
    let mut by_family: Vec<FamilyCount> = Vec::new();
    for row in &by_model {
        match by_family.last_mut() {
            Some(last) if last.family == row.family => last.devices += row.devices,
            _ => by_family.push(FamilyCount {
                family: row.family.clone(),
                devices: row.devices,
            }),
        }
    }
    Ok(FleetSummary {
        total: by_family.iter().map(|f| f.devices).sum(),
        online: by_version.iter().map(|v| v.online).sum(),
        by_family,
        by_model,
        by_version,
        by_last_status,
    })
}

/// Replaces a device's tags and/or model; `None` when there is no such device.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    tags: Option<&Tags>,
    model: Option<Option<&str>>,
) -> Result<Option<Device>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE devices SET
             tags = coalesce($2, tags),
             model = CASE WHEN $3 THEN $4 ELSE model END,
             updated_at = now()
         WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
    )))
    .bind(id)
    .bind(tags.map(Tags::to_json))
    .bind(model.is_some())
    .bind(model.flatten())
    .fetch_optional(conn)
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("device not found")]
    NotFound,
    #[error("device '{0}' has an update in progress; cancel its job first")]
    Busy(String),
    #[error("device '{0}' is the gateway of {1} device(s); move or delete them first")]
    IsGateway(String, i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Deletes a device and its executions (with their logs), in the caller's
/// transaction; refused while it has an update in progress or is a gateway.
pub async fn delete(conn: &mut PgConnection, id: &str) -> Result<(), DeleteError> {
    // No job is being created over the devices meanwhile.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::db::DEVICE_SET_LOCK)
        .execute(&mut *conn)
        .await?;
    let busy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM executions e JOIN jobs j ON j.id = e.job_id
                        WHERE e.device_id = $1
                          AND e.stage <> 'finished'
                          AND j.status IN ('scheduled', 'running', 'paused'))",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    if busy {
        return Err(DeleteError::Busy(id.to_owned()));
    }
    let children: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE gateway_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    if children > 0 {
        return Err(DeleteError::IsGateway(id.to_owned(), children));
    }
    // Two statements, so that the second sees every log row committed
    // before the first removed the executions.
    let executions: Vec<i64> =
        sqlx::query_scalar("DELETE FROM executions WHERE device_id = $1 RETURNING id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query("DELETE FROM execution_status_log WHERE execution_id = ANY($1)")
        .bind(&executions)
        .execute(&mut *conn)
        .await?;
    let deleted = sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(DeleteError::NotFound);
    }
    Ok(())
}

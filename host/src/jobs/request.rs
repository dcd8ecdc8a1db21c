//! A job as an operator asks for it: checked into a [`NewJob`] and
//! submitted, with its audit record and event. The service behind
//! `POST /api/v1/jobs`.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{CreateError, Job, JobKind, MAX_TARGET_IDS, NewJob, TargetFilter, Targets};
use crate::domain::{DeviceId, InstallPolicy};
use crate::plugins::{PluginError, Plugins};

/// Largest rollout configuration, as JSON text: it goes to the plugin on
/// every evaluation of the job.
pub const MAX_ROLLOUT_CONFIG_BYTES: usize = 64 * 1024;
/// The rollout strategy of a job that names none.
pub const DEFAULT_ROLLOUT_PLUGIN: &str = "rollout-percent";

/// A job request, unchecked.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    pub name: Option<String>,
    pub firmware_id: Uuid,
    /// Explicit device ids; exactly one of `devices` and `filter`.
    pub devices: Option<Vec<String>>,
    pub filter: Option<FilterRequest>,
    /// `now`, `emergency` or an RFC 3339 time.
    pub start: Option<String>,
    pub rollout_plugin: Option<String>,
    pub rollout_config: Option<Value>,
    pub device_timeout_secs: Option<i32>,
    pub max_retries: Option<i32>,
    pub delivery_deadline_secs: Option<i32>,
    /// When devices may flash (default `immediate`).
    pub install: Option<InstallPolicy>,
    /// When the job may dispatch (default: always).
    pub windows: Option<super::windows::Windows>,
    /// An RFC 3339 time by which the job is over (default: none).
    pub end: Option<String>,
}

/// A target filter, unchecked.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FilterRequest {
    pub family: Option<String>,
    pub model: Option<String>,
    pub gateway_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// A field of the request that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid job")]
    Invalid(Vec<Invalid>),
    /// The rollout plugin is unknown or disabled, or refused the
    /// configuration (`field` says which).
    #[error("{error}")]
    Plugin {
        field: &'static str,
        error: PluginError,
    },
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn plugin_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_start(raw: Option<&str>, now: DateTime<Utc>) -> Result<(JobKind, DateTime<Utc>), String> {
    match raw.unwrap_or("now") {
        "now" => Ok((JobKind::Immediate, now)),
        "emergency" => Ok((JobKind::Emergency, now)),
        other => DateTime::parse_from_rfc3339(other)
            .map(|at| (JobKind::Scheduled, at.with_timezone(&Utc)))
            .map_err(|_| format!("'{other}' is not 'now', 'emergency' or an RFC 3339 time")),
    }
}

/// What the request says, checked on its own (no database): the targets,
/// the start, the rollout and the limits. The firmware's facts come after.
struct Checked {
    targets: Targets,
    filter_family: Option<String>,
    kind: JobKind,
    start_at: DateTime<Utc>,
    rollout_plugin: String,
    rollout_config: Value,
    device_timeout_secs: i32,
    max_retries: i32,
    delivery_deadline_secs: i32,
    windows: Option<Value>,
    end_at: Option<DateTime<Utc>>,
}

/// The default delivery deadline: 14 days.
pub const DEFAULT_DELIVERY_DEADLINE_SECS: i32 = 14 * 86_400;
/// The longest: a year.
pub const MAX_DELIVERY_DEADLINE_SECS: i32 = 365 * 86_400;

fn check(request: &JobRequest, now: DateTime<Utc>, errors: &mut Vec<Invalid>) -> Option<Checked> {
    let targets = match (&request.devices, &request.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_TARGET_IDS {
                errors.push(Invalid::new(
                    "targets.devices",
                    format!("must list 1 to {MAX_TARGET_IDS} device ids"),
                ));
            }
            let mut seen = HashSet::new();
            let mut parsed = Vec::with_capacity(ids.len());
            for (i, raw) in ids.iter().enumerate() {
                match DeviceId::parse(raw) {
                    Ok(id) if seen.insert(id.clone()) => parsed.push(id),
                    Ok(_) => errors.push(Invalid::new(
                        format!("targets.devices[{i}]"),
                        "listed twice",
                    )),
                    Err(e) => errors.push(Invalid::new(format!("targets.devices[{i}]"), e.0)),
                }
                if errors.len() > 20 {
                    break;
                }
            }
            Some(Targets::Devices(parsed))
        }
        (None, Some(filter)) => Some(Targets::Filter(TargetFilter {
            model: filter.model.clone(),
            gateway_id: filter.gateway_id.clone(),
            tags: filter.tags.clone(),
        })),
        _ => {
            errors.push(Invalid::new(
                "targets",
                "give exactly one of 'devices' or 'filter'",
            ));
            None
        }
    };
    let (kind, start_at) = parse_start(request.start.as_deref(), now)
        .map_err(|e| errors.push(Invalid::new("start", e)))
        .unwrap_or((JobKind::Immediate, now));
    let rollout_plugin = request
        .rollout_plugin
        .clone()
        .unwrap_or_else(|| DEFAULT_ROLLOUT_PLUGIN.to_owned());
    let rollout_config = match &request.rollout_config {
        None | Some(Value::Null) => json!({}),
        Some(config) => config.clone(),
    };
    if !plugin_name_ok(&rollout_plugin) {
        errors.push(Invalid::new("rollout.plugin", "is not a plugin name"));
    }
    if !rollout_config.is_object() {
        errors.push(Invalid::new("rollout.config", "must be a JSON object"));
    } else if rollout_config.to_string().len() > MAX_ROLLOUT_CONFIG_BYTES {
        errors.push(Invalid::new(
            "rollout.config",
            format!("must be at most {MAX_ROLLOUT_CONFIG_BYTES} bytes of JSON"),
        ));
    }
    let device_timeout_secs = request.device_timeout_secs.unwrap_or(3600);
    if !(1..=604_800).contains(&device_timeout_secs) {
        errors.push(Invalid::new(
            "device_timeout_secs",
            "must be between 1 and 604800",
        ));
    }
    let max_retries = request.max_retries.unwrap_or(0);
    if !(0..=10).contains(&max_retries) {
        errors.push(Invalid::new("max_retries", "must be between 0 and 10"));
    }
    let delivery_deadline_secs = request
        .delivery_deadline_secs
        .unwrap_or(DEFAULT_DELIVERY_DEADLINE_SECS);
    if !(1..=MAX_DELIVERY_DEADLINE_SECS).contains(&delivery_deadline_secs) {
        errors.push(Invalid::new(
            "delivery_deadline_secs",
            format!("must be between 1 and {MAX_DELIVERY_DEADLINE_SECS}"),
        ));
    }
    if let Some(name) = &request.name
        && (name.is_empty() || name.chars().count() > 200)
    {
        errors.push(Invalid::new("name", "must be 1 to 200 characters long"));
    }
    let end_at = match request.end.as_deref().map(DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(end)) => {
            let end = end.with_timezone(&Utc);
            if end <= start_at.max(now) {
                errors.push(Invalid::new(
                    "end",
                    "must be after the start (and after now)",
                ));
            }
            Some(end)
        }
        Some(Err(_)) => {
            errors.push(Invalid::new("end", "is not an RFC 3339 time"));
            None
        }
    };
    let windows = match &request.windows {
        None => None,
        Some(windows) => match super::windows::check(windows) {
            Ok(stored) => Some(stored),
            Err(problems) => {
                errors.extend(problems.into_iter().map(|(f, m)| Invalid::new(f, m)));
                None
            }
        },
    };
    Some(Checked {
        targets: targets?,
        filter_family: request.filter.as_ref().and_then(|f| f.family.clone()),
        kind,
        start_at,
        rollout_plugin,
        rollout_config,
        device_timeout_secs,
        max_retries,
        delivery_deadline_secs,
        windows,
        end_at,
    })
}

/// A job's rollout configuration over its plugin's defaults (an admin's
/// `PUT /plugins/{name}/config`): the job's top-level keys win.
pub(crate) fn with_defaults(defaults: &str, config: Value) -> Value {
    match (serde_json::from_str::<Value>(defaults), config) {
        (Ok(Value::Object(mut merged)), Value::Object(own)) => {
            merged.extend(own);
            Value::Object(merged)
        }
        (_, config) => config,
    }
}

/// Checks a request against the firmware and the rollout plugin, creates
/// the job with its executions and plan, and records who asked, all in one
/// transaction. Returns the job and how many executions it has.
pub async fn submit(
    pool: &PgPool,
    plugins: &Plugins,
    request: JobRequest,
    actor: &str,
) -> Result<(Job, i64), SubmitError> {
    let prepared = prepare(pool, plugins, request, actor).await?;
    let mut tx = pool.begin().await?;
    let (job, total) = create_prepared(&mut tx, plugins, &prepared).await?;
    crate::audit::record(
        &mut tx,
        actor,
        "job.create",
        "job",
        &job.id.to_string(),
        json!({ "firmware_id": job.firmware_id, "kind": job.kind, "executions": total }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(job_id = %job.id, kind = %job.kind, executions = total, "job created");
    Ok((job, total))
}

/// A job request checked against the firmware and the rollout plugin, its
/// configuration over the plugin's defaults: what `create_prepared` makes
/// a job of.
pub struct Prepared {
    pub new: NewJob,
    uploaded_rollout: bool,
    by_attributes: bool,
}

/// Checks a request (see [`Prepared`]); writes nothing.
pub async fn prepare(
    pool: &PgPool,
    plugins: &Plugins,
    request: JobRequest,
    actor: &str,
) -> Result<Prepared, SubmitError> {
    let mut errors = Vec::new();
    let firmware = crate::firmware::get(pool, request.firmware_id).await?;
    if firmware.is_none() {
        errors.push(Invalid::new("firmware_id", "no such firmware"));
    }
    let family = firmware
        .as_ref()
        .map(|f| f.family.clone())
        .unwrap_or_default();
    let checked = check(&request, Utc::now(), &mut errors);
    if let Some(Checked {
        filter_family: Some(wanted),
        ..
    }) = &checked
        && firmware.is_some()
        && *wanted != family
    {
        errors.push(Invalid::new(
            "targets.filter.family",
            format!("the firmware is for {family}, not {wanted}"),
        ));
    }
    if let Some(Checked {
        windows: Some(windows),
        ..
    }) = &checked
    {
        let zone = windows["time_zone"].as_str().unwrap_or_default();
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
                .bind(zone)
                .fetch_one(pool)
                .await?;
        if !known {
            errors.push(Invalid::new(
                "windows.time_zone",
                format!("'{zone}' is not an IANA time zone (e.g. Europe/Moscow, UTC)"),
            ));
        }
    }
    let (Some(mut checked), true) = (checked, errors.is_empty()) else {
        return Err(SubmitError::Invalid(errors));
    };
    // The job keeps the configuration it ran with: the plugin's defaults
    // of the moment, under its own keys.
    let defaults = plugins.config_of(&checked.rollout_plugin);
    checked.rollout_config = with_defaults(&defaults.text, checked.rollout_config);
    // The version in force now is the job's to its end: it checks the
    // configuration, plans, and decides.
    let rollout = plugins
        .rollout_plugin(&checked.rollout_plugin)
        .map_err(|error| SubmitError::Plugin {
            field: "rollout.plugin",
            error,
        })?;
    let rollout_plugin_sha256 = Some(rollout.sha256.clone());
    let uploaded_rollout = rollout.source == crate::plugins::PluginSource::Uploaded;
    let by_attributes = rollout.plans_by_attributes();
    plugins
        .validate_config(rollout, checked.rollout_config.to_string())
        .await
        .map_err(|error| SubmitError::Plugin {
            field: "rollout.config",
            error,
        })?;

    let targets_json = json!({ "devices": request.devices, "filter": request.filter });
    let new = NewJob {
        name: request.name,
        firmware_id: request.firmware_id,
        family,
        targets: checked.targets,
        targets_json,
        kind: checked.kind,
        start_at: checked.start_at,
        rollout_plugin: checked.rollout_plugin,
        rollout_plugin_sha256,
        rollout_config: checked.rollout_config,
        device_timeout_secs: checked.device_timeout_secs,
        max_retries: checked.max_retries,
        delivery_deadline_secs: checked.delivery_deadline_secs,
        install: request.install.unwrap_or_default(),
        windows: checked.windows,
        end_at: checked.end_at,
        created_by: actor.to_owned(),
        security_counter: firmware.as_ref().map_or(0, |f| f.security_counter),
        downgrade_allowed: firmware
            .as_ref()
            .is_some_and(|f| f.downgrade_allowed_at.is_some()),
    };
    Ok(Prepared {
        new,
        uploaded_rollout,
        by_attributes,
    })
}

/// Creates a prepared job with its executions and plan in `tx`. Returns
/// the job and how many executions it has.
pub async fn create_prepared(
    tx: &mut PgConnection,
    plugins: &Plugins,
    prepared: &Prepared,
) -> Result<(Job, i64), SubmitError> {
    let new = &prepared.new;
    // An uploaded version is kept while the job exists: held against its
    // deletion until this transaction ends, and refused if it went first.
    if prepared.uploaded_rollout {
        let kept: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM plugin_versions WHERE sha256 = $1 FOR SHARE")
                .bind(&new.rollout_plugin_sha256)
                .fetch_optional(&mut *tx)
                .await?;
        if kept.is_none() {
            return Err(SubmitError::Plugin {
                field: "rollout.plugin",
                error: PluginError::Invalid(format!(
                    "the version of '{}' in force here was deleted meanwhile; try again",
                    new.rollout_plugin
                )),
            });
        }
    }
    let config = new.rollout_config.to_string();
    let plan = |population| {
        let (plugins, plugin, sha256, config) = (
            plugins.clone(),
            new.rollout_plugin.clone(),
            new.rollout_plugin_sha256.clone(),
            config.clone(),
        );
        async move {
            plugins
                .plan(&plugin, sha256.as_deref(), &config, population)
                .await
                .map_err(CreateError::Plan)
        }
    };
    Ok(super::create(tx, new, prepared.by_attributes, plan).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> JobRequest {
        JobRequest {
            devices: Some(vec!["VIN-1".into()]),
            ..JobRequest::default()
        }
    }

    fn fields(request: &JobRequest) -> Vec<String> {
        let mut errors = Vec::new();
        check(request, Utc::now(), &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_plain_request_is_fine() {
        assert!(fields(&request()).is_empty());
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (
                JobRequest {
                    devices: None,
                    ..request()
                },
                "targets",
            ),
            (
                JobRequest {
                    devices: Some(vec![]),
                    ..request()
                },
                "targets.devices",
            ),
            (
                JobRequest {
                    devices: Some(vec!["A".into(), "A".into()]),
                    ..request()
                },
                "targets.devices[1]",
            ),
            (
                JobRequest {
                    filter: Some(FilterRequest::default()),
                    ..request()
                },
                "targets",
            ),
            (
                JobRequest {
                    start: Some("tomorrow".into()),
                    ..request()
                },
                "start",
            ),
            (
                JobRequest {
                    rollout_plugin: Some("../etc".into()),
                    ..request()
                },
                "rollout.plugin",
            ),
            (
                JobRequest {
                    rollout_config: Some(json!([1])),
                    ..request()
                },
                "rollout.config",
            ),
            (
                JobRequest {
                    device_timeout_secs: Some(0),
                    ..request()
                },
                "device_timeout_secs",
            ),
            (
                JobRequest {
                    max_retries: Some(11),
                    ..request()
                },
                "max_retries",
            ),
            (
                JobRequest {
                    name: Some(String::new()),
                    ..request()
                },
                "name",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(fields(&request), [field], "{request:?}");
        }
    }

    #[test]
    fn starts_are_now_emergency_or_a_time() {
        let now = Utc::now();
        assert_eq!(parse_start(None, now).unwrap(), (JobKind::Immediate, now));
        assert_eq!(
            parse_start(Some("emergency"), now).unwrap().0,
            JobKind::Emergency
        );
        let (kind, at) = parse_start(Some("2030-01-02T03:04:05Z"), now).unwrap();
        assert_eq!(
            (kind, at.to_rfc3339()),
            (JobKind::Scheduled, "2030-01-02T03:04:05+00:00".into())
        );
        assert!(parse_start(Some("soon"), now).is_err());
    }

    #[test]
    fn a_job_s_own_keys_win_over_the_plugin_s_defaults() {
        let merged = with_defaults(
            r#"{"batches":[10,100],"min_soak_secs":600}"#,
            json!({"batches": [50, 100]}),
        );
        assert_eq!(merged, json!({"batches": [50, 100], "min_soak_secs": 600}));
        assert_eq!(with_defaults("{}", json!({"a": 1})), json!({"a": 1}));
    }
}

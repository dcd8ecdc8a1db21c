//! Plugins: rollout strategies and device-family protocols as sandboxed
//! WebAssembly components (`wit/plugin.wit`).
//!
//! The registry holds every loaded plugin by name: the six shipped ones
//! (embedded at build time), those in `ROLLWAY_PLUGINS_DIR`, and those an
//! admin uploaded. Each call runs in a fresh store with a memory cap and a
//! deadline; a plugin that traps too often in a row is disabled.

pub mod bindings;
pub mod check;
pub mod dry_run;
pub mod runtime;
pub mod scaffold;
pub mod seal;
pub mod store;
pub mod strategy;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, Resource};

use bindings::device::exports::rollway::plugin::device as dev;
use bindings::device::{DeviceProtocol, DeviceProtocolPre};
use bindings::rollout::exports::rollway::plugin::rollout as ro;
use bindings::rollout::{RolloutStrategy, RolloutStrategyPre};
use bindings::strategy::{RolloutStrategyRules, RolloutStrategyRulesPre};
use runtime::{ImageHandle, ImageSource, Limits, Runtime, State};
use seal::{Seal, Sealed};

use crate::metrics::Metrics;
pub use rollway_plugin_sdk::presence::Presence;

pub use bindings::device::exports::rollway::plugin::device::{
    Command, CommandRequest, DeviceInfo, FirmwareRef, ImageInfo, StatusReport, StatusState,
};
pub use bindings::rollout::exports::rollway::plugin::rollout::{BatchCounts, Decision, Snapshot};

/// The WIT package this host implements; plugins built against any 0.1.x load.
pub const WIT_PACKAGE: &str = "rollway:plugin";
pub const WIT_VERSION: (u64, u64, u64) = (0, 1, 8);

/// The optional export of device plugins since 0.1.1 (`attempts`), found
/// by semver-compatible lookup.
const ATTEMPTS_INTERFACE: &str = "rollway:plugin/attempts@0.1.1";
/// The optional export of device plugins since 0.1.2 (`batch`).
const BATCH_INTERFACE: &str = "rollway:plugin/batch@0.1.2";
/// The optional export of device plugins since 0.1.3 (`presence`).
const PRESENCE_INTERFACE: &str = "rollway:plugin/presence@0.1.3";
/// The optional export of device plugins since 0.1.4 (`control`).
const CONTROL_INTERFACE: &str = "rollway:plugin/control@0.1.4";
/// The optional export of device plugins since 0.1.5 (`cancels`).
const CANCELS_INTERFACE: &str = "rollway:plugin/cancels@0.1.5";
/// The optional export of device plugins since 0.1.6 (`inspect`).
const INSPECT_INTERFACE: &str = "rollway:plugin/inspect@0.1.6";
/// The optional export of every plugin since 0.1.7 (`settings`).
const SETTINGS_INTERFACE: &str = "rollway:plugin/settings@0.1.7";
/// The export of rollout strategies of 0.1.8 (`strategy`).
const STRATEGY_INTERFACE: &str = "rollway:plugin/strategy@0.1.8";
/// The optional export of device plugins since 0.1.8 (`failures`).
const FAILURES_INTERFACE: &str = "rollway:plugin/failures@0.1.8";
/// Most bytes of a plugin's settings schema.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most schema violations named in one refusal.
const MAX_SCHEMA_ERRORS: usize = 8;
/// The `details` key that carries an image's security counter for device
/// plugins without `inspect` (and where the host keeps it).
pub const SECURITY_COUNTER_DETAIL: &str = "security_counter";
/// Most items in one batched plugin call, and most status payload bytes:
/// a batch shares the call's memory budget.
const BATCH_ITEMS: usize = 512;
const BATCH_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// A status as its family's plugin parsed it.
#[derive(Debug, Clone)]
pub struct ParsedStatus {
    /// The report; its `state` is superseded by `state`.
    pub report: StatusReport,
    /// What the device reports it is doing.
    pub state: ReportState,
    /// Why it waits (`waiting`), from plugins exporting `control`.
    pub reason: Option<String>,
    /// The attempt the status answers, from plugins exporting `attempts`
    /// whose device said.
    pub attempt: Option<u32>,
}

impl ParsedStatus {
    /// A report of a plugin before 0.1.4, in its own six states.
    fn of(report: StatusReport, attempt: Option<u32>) -> Self {
        let state = ReportState::from(report.state);
        ParsedStatus {
            report,
            state,
            reason: None,
            attempt,
        }
    }
}

/// `control.report-state`: every state a device reports (0.1.4).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, wasmtime::component::ComponentType, wasmtime::component::Lift,
)]
#[component(enum)]
#[repr(u8)]
pub enum ReportState {
    #[component(name = "init")]
    Init,
    #[component(name = "downloading")]
    Downloading,
    #[component(name = "waiting")]
    Waiting,
    #[component(name = "flashing")]
    Flashing,
    #[component(name = "rebooting")]
    Rebooting,
    #[component(name = "done")]
    Done,
    #[component(name = "error")]
    Error,
    #[component(name = "cancelled")]
    Cancelled,
}

impl ReportState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportState::Init => "init",
            ReportState::Downloading => "downloading",
            ReportState::Waiting => "waiting",
            ReportState::Flashing => "flashing",
            ReportState::Rebooting => "rebooting",
            ReportState::Done => "done",
            ReportState::Error => "error",
            ReportState::Cancelled => "cancelled",
        }
    }
}

impl From<StatusState> for ReportState {
    fn from(state: StatusState) -> Self {
        match state {
            StatusState::Init => ReportState::Init,
            StatusState::Downloading => ReportState::Downloading,
            StatusState::Flashing => ReportState::Flashing,
            StatusState::Rebooting => ReportState::Rebooting,
            StatusState::Done => ReportState::Done,
            StatusState::Error => ReportState::Error,
        }
    }
}

/// `control.report`, lifted from a plugin's answer.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
struct Report {
    status: StatusReport,
    state: ReportState,
    reason: Option<String>,
    attempt: Option<u32>,
}

impl From<Report> for ParsedStatus {
    fn from(report: Report) -> Self {
        ParsedStatus {
            report: report.status,
            state: report.state,
            reason: report.reason,
            attempt: report.attempt,
        }
    }
}

/// The plugins Rollway ships, built from `plugins/` by `build.rs`.
pub const BUILT_IN: [(&str, &[u8]); 6] = [
    (
        "rollout-percent",
        include_bytes!(concat!(env!("OUT_DIR"), "/rollout_percent.wasm")),
    ),
    (
        "rollout-exponential",
        include_bytes!(concat!(env!("OUT_DIR"), "/rollout_exponential.wasm")),
    ),
    (
        "rollout-rings",
        include_bytes!(concat!(env!("OUT_DIR"), "/rollout_rings.wasm")),
    ),
    (
        "device-esp32",
        include_bytes!(concat!(env!("OUT_DIR"), "/device_esp32.wasm")),
    ),
    (
        "device-stm32",
        include_bytes!(concat!(env!("OUT_DIR"), "/device_stm32.wasm")),
    ),
    (
        "device-jetson",
        include_bytes!(concat!(env!("OUT_DIR"), "/device_jetson.wasm")),
    ),
];

/// Largest plugin component accepted.
pub const MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;
/// Largest command payload a device plugin may build.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Most batch groups a rollout plan may have.
pub const MAX_BATCH_GROUPS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Rollout,
    Device,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Rollout => "rollout",
            PluginKind::Device => "device",
        }
    }
}

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginSource {
    /// Shipped inside the host binary.
    Builtin,
    /// Loaded from `ROLLWAY_PLUGINS_DIR`.
    Directory,
    /// Uploaded by an admin.
    Uploaded,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("no {kind} plugin named '{name}'")]
    NotFound { kind: &'static str, name: String },
    #[error("no device plugin handles the family '{0}'")]
    NoFamily(String),
    #[error("plugin '{0}' is disabled: {1}")]
    Disabled(String, String),
    /// The plugin answered with an error of its own: the input is refused.
    #[error("{reason}")]
    Refused { plugin: String, reason: String },
    /// The plugin trapped, timed out, ran out of memory or answered nonsense.
    #[error("plugin '{plugin}' failed: {what}")]
    Failed { plugin: String, what: String },
    /// A component that cannot be loaded as a plugin.
    #[error("{0}")]
    Invalid(String),
    /// A job's rollout plugin version is not loaded on this replica (yet:
    /// replicas load the versions unfinished jobs name within seconds).
    #[error("version {sha256} of the plugin '{name}' is not loaded here")]
    VersionNotLoaded { name: String, sha256: String },
}

enum Pre {
    Rollout(RolloutStrategyPre<State>),
    /// A rollout strategy of the 0.1.8 contract (`strategy`).
    Strategy(RolloutStrategyRulesPre<State>),
    Device(DeviceProtocolPre<State>),
}

/// A loaded plugin.
pub struct Plugin {
    pub name: String,
    pub kind: PluginKind,
    pub version: String,
    pub description: String,
    /// Version of the WIT package the plugin was built against.
    pub wit_version: String,
    pub sha256: String,
    pub source: PluginSource,
    /// Device families (device plugins).
    pub families: Vec<String>,
    /// Where its machine code came from, and how long that took.
    pub compiled: Compiled,
    pub compile_time: Duration,
    pre: Pre,
    /// `attempts.parse-status-attempt`, when the device plugin exports it.
    parse_status_attempt: Option<ComponentExportIndex>,
    /// `batch.parse-statuses` and `batch.build-commands` (0.1.2).
    parse_statuses: Option<ComponentExportIndex>,
    build_commands: Option<ComponentExportIndex>,
    /// `presence.parse-presence` (0.1.3).
    parse_presence: Option<ComponentExportIndex>,
    /// `control.parse-reports` (0.1.4).
    parse_reports: Option<ComponentExportIndex>,
    /// `cancels.build-cancels` (0.1.5).
    build_cancels: Option<ComponentExportIndex>,
    /// `inspect.inspect-image` (0.1.6).
    inspect_image: Option<ComponentExportIndex>,
    /// What `settings.config-schema` (0.1.7) gave, read once at load.
    config_schema: Option<Arc<ConfigSchema>>,
    /// `failures.classify` (0.1.8).
    classify: Option<ComponentExportIndex>,
    enabled: AtomicBool,
    disabled_reason: Mutex<Option<String>>,
    calls: AtomicU64,
    traps: AtomicU64,
    consecutive_traps: AtomicU32,
}

/// A plugin as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub kind: PluginKind,
    pub version: String,
    pub description: String,
    pub wit_version: String,
    pub sha256: String,
    pub source: PluginSource,
    pub families: Vec<String>,
    /// Whether the plugin's statuses name their attempt (a device plugin
    /// exporting `attempts`, WIT 0.1.1): the host then refuses late
    /// statuses of earlier attempts.
    pub reports_attempts: bool,
    /// Whether the device plugin takes many statuses and commands per call
    /// (exporting `batch`, WIT 0.1.2): the host then parses an ingestion
    /// batch and builds a dispatch round in one instance.
    pub takes_batches: bool,
    /// Whether the device plugin parses its devices' presence messages
    /// (exporting `presence`, WIT 0.1.3); without it the host reads the
    /// standard presence JSON.
    pub parses_presence: bool,
    /// Whether the device plugin reports every state, `waiting` and
    /// `cancelled` too (exporting `control`, WIT 0.1.4).
    pub reports_every_state: bool,
    /// Whether the device plugin tells its devices to stop an update that
    /// is cancelled (exporting `cancels`, WIT 0.1.5); without it the
    /// devices are not told.
    pub sends_cancels: bool,
    /// Whether the device plugin says an image's security counter in a
    /// field of its own (exporting `inspect`, WIT 0.1.6); without it the
    /// counter is read from the `security_counter` detail.
    pub inspects_images: bool,
    /// Whether the device plugin says why its devices' updates failed
    /// (exporting `failures`, WIT 0.1.8); without it every failure a
    /// device reports is of the class `other`.
    pub classifies_failures: bool,
    /// Whether the rollout plugin plans by device attributes and evaluates
    /// with failure classes, timings, windows and a dispatch rate (a
    /// `strategy` of WIT 0.1.8); otherwise it plans by a count.
    pub plans_by_attributes: bool,
    /// `enabled` or `disabled`.
    pub state: String,
    pub disabled_reason: Option<String>,
    pub calls: u64,
    pub traps: u64,
    /// Version of the plugin's settings in force on this replica
    /// (`GET /plugins/{name}/config`); 0 when never set.
    pub config_version: i64,
    /// The JSON Schema of the plugin's `config` (its settings, or a job's
    /// rollout configuration), when the plugin gives one (exporting
    /// `settings`, WIT 0.1.7): configurations are checked against it, and
    /// the dashboard draws its forms from it.
    #[schema(value_type = Option<Object>)]
    pub config_schema: Option<serde_json::Value>,
}

/// A plugin's JSON Schema of its `config`, compiled.
pub struct ConfigSchema {
    pub json: serde_json::Value,
    validator: jsonschema::Validator,
}

impl ConfigSchema {
    /// Reads a plugin's schema: JSON, at most 64 KiB, a valid schema with
    /// no reference outside itself.
    fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_SCHEMA_BYTES {
            return Err(format!(
                "its config-schema is {} bytes, more than {MAX_SCHEMA_BYTES}",
                text.len()
            ));
        }
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("its config-schema is not JSON: {e}"))?;
        if !json.is_object() {
            return Err("its config-schema is not a JSON Schema object".into());
        }
        let validator = jsonschema::validator_for(&json)
            .map_err(|e| format!("its config-schema is not a valid JSON Schema: {e}"))?;
        Ok(Self { json, validator })
    }

    /// Checks a configuration; the refusal names each violation (the first
    /// few) with where it is.
    pub fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(config)
            .take(MAX_SCHEMA_ERRORS)
            .map(|error| {
                let at = error.instance_path().as_str().to_owned();
                if at.is_empty() {
                    error.to_string()
                } else {
                    format!("{at}: {error}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Plugin {
    /// The plugin as the API shows it; the registry's
    /// [`view`](PluginRegistry::view) adds its settings' version.
    fn view(&self) -> PluginView {
        let enabled = self.enabled.load(Ordering::Relaxed);
        PluginView {
            name: self.name.clone(),
            kind: self.kind,
            version: self.version.clone(),
            description: self.description.clone(),
            wit_version: self.wit_version.clone(),
            sha256: self.sha256.clone(),
            source: self.source.clone(),
            families: self.families.clone(),
            reports_attempts: self.reports_attempts(),
            takes_batches: self.takes_batches(),
            parses_presence: self.parses_presence(),
            reports_every_state: self.reports_every_state(),
            sends_cancels: self.sends_cancels(),
            inspects_images: self.inspects_images(),
            classifies_failures: self.classifies_failures(),
            plans_by_attributes: self.plans_by_attributes(),
            state: if enabled { "enabled" } else { "disabled" }.into(),
            disabled_reason: if enabled { None } else { self.reason() },
            calls: self.calls.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            config_version: 0,
            config_schema: self.config_schema.as_ref().map(|s| s.json.clone()),
        }
    }

    /// Whether the device plugin exports `attempts` (WIT 0.1.1).
    pub fn reports_attempts(&self) -> bool {
        self.parse_status_attempt.is_some()
    }

    /// Whether the device plugin exports `batch` (WIT 0.1.2).
    pub fn takes_batches(&self) -> bool {
        self.parse_statuses.is_some() && self.build_commands.is_some()
    }

    /// Whether the device plugin exports `presence` (WIT 0.1.3).
    pub fn parses_presence(&self) -> bool {
        self.parse_presence.is_some()
    }

    /// Whether the device plugin exports `control` (WIT 0.1.4).
    pub fn reports_every_state(&self) -> bool {
        self.parse_reports.is_some()
    }

    /// Whether the device plugin exports `cancels` (WIT 0.1.5).
    pub fn sends_cancels(&self) -> bool {
        self.build_cancels.is_some()
    }

    /// The plugin's JSON Schema of its `config`, when it gives one.
    pub fn config_schema(&self) -> Option<&ConfigSchema> {
        self.config_schema.as_deref()
    }

    /// Whether the device plugin exports `inspect` (WIT 0.1.6).
    pub fn inspects_images(&self) -> bool {
        self.inspect_image.is_some()
    }

    fn reason(&self) -> Option<String> {
        self.disabled_reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or(None)
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn set_enabled(&self, enabled: bool, reason: Option<String>) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.consecutive_traps.store(0, Ordering::Relaxed);
        if let Ok(mut slot) = self.disabled_reason.lock() {
            *slot = if enabled { None } else { reason };
        }
    }
}

/// Compiled components by SHA-256: compiling is the costly part of loading.
static COMPILED: Mutex<Option<HashMap<String, Component>>> = Mutex::new(None);

/// Where a plugin's machine code came from when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled already by this process.
    InMemory,
    /// Read from the compile cache on disk (`ROLLWAY_PLUGIN_CACHE_DIR`).
    FromCache,
    /// Compiled now (and kept in the cache on disk, when there is one).
    Now,
}

impl Compiled {
    pub fn as_str(self) -> &'static str {
        match self {
            Compiled::InMemory => "in_memory",
            Compiled::FromCache => "from_cache",
            Compiled::Now => "compiled",
        }
    }
}

fn compile(
    runtime: &Runtime,
    bytes: &[u8],
    sha256: &str,
) -> Result<(Component, Compiled, Duration), PluginError> {
    let started = std::time::Instant::now();
    if let Some(component) = COMPILED
        .lock()
        .ok()
        .and_then(|cache| cache.as_ref().and_then(|c| c.get(sha256).cloned()))
    {
        return Ok((component, Compiled::InMemory, started.elapsed()));
    }
    let before = runtime.compile_counts();
    let component = Component::new(runtime.engine(), bytes)
        .map_err(|e| PluginError::Invalid(format!("not a valid WebAssembly component: {e:#}")))?;
    // Another thread's compilation in between can only blur the label of
    // this one, never the component.
    let how = match (before, runtime.compile_counts()) {
        (Some(before), Some(after)) if after.cached > before.cached => Compiled::FromCache,
        _ => Compiled::Now,
    };
    if let Ok(mut cache) = COMPILED.lock() {
        cache
            .get_or_insert_with(HashMap::new)
            .insert(sha256.to_owned(), component.clone());
    }
    Ok((component, how, started.elapsed()))
}

/// Finds which world a component implements, and the WIT version.
fn world_of(runtime: &Runtime, component: &Component) -> Result<(PluginKind, String), PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(runtime.engine())
        .map(|(name, _)| name.to_owned())
        .collect();
    for (kind, interface) in [
        (PluginKind::Rollout, "strategy"),
        (PluginKind::Rollout, "rollout"),
        (PluginKind::Device, "device"),
    ] {
        let prefix = format!("{WIT_PACKAGE}/{interface}@");
        if let Some(export) = exports.iter().find(|e| e.starts_with(&prefix)) {
            let version = &export[prefix.len()..];
            let parts: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
            let compatible =
                parts.len() == 3 && parts[0] == WIT_VERSION.0 && parts[1] == WIT_VERSION.1;
            if !compatible {
                return Err(PluginError::Invalid(format!(
                    "the plugin is built against {WIT_PACKAGE}@{version}, which this host does not support \
                     (it supports {WIT_PACKAGE}@{}.{}.x)",
                    WIT_VERSION.0, WIT_VERSION.1
                )));
            }
            return Ok((kind, version.to_owned()));
        }
    }
    Err(PluginError::Invalid(format!(
        "not a Rollway plugin: the component exports none of {WIT_PACKAGE}/strategy, {WIT_PACKAGE}/rollout \
         and {WIT_PACKAGE}/device \
         (it exports: {})",
        if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        }
    )))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Why a call failed, as a short label for metrics.
fn classify(error: &wasmtime::Error) -> &'static str {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => "timeout",
            wasmtime::Trap::UnreachableCodeReached => "panic",
            wasmtime::Trap::StackOverflow => "stack-overflow",
            _ => "trap",
        };
    }
    let text = format!("{error:#}");
    if text.contains("memory") {
        "memory"
    } else {
        "trap"
    }
}

fn describe(reason: &str, limits: &Limits, timeout: Duration) -> String {
    match reason {
        "timeout" => format!("ran longer than its {} ms budget", timeout.as_millis()),
        "memory" => format!(
            "exceeded its {} MiB memory limit",
            limits.memory_bytes / (1024 * 1024)
        ),
        "panic" => "panicked".to_owned(),
        "stack-overflow" => "overflowed its stack".to_owned(),
        _ => "trapped".to_owned(),
    }
}

/// Every loaded plugin, by name.
pub struct PluginRegistry {
    runtime: Arc<Runtime>,
    limits: Limits,
    metrics: Metrics,
    max_consecutive_traps: u32,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// The settings in force, by plugin name (kept across a plugin's
    /// replacement); a plugin without any gets `{}`.
    configs: RwLock<BTreeMap<String, Arc<ConfigInForce>>>,
    /// Rollout plugin versions replaced by a newer one, by SHA-256, kept
    /// while unfinished jobs run on them.
    retained: RwLock<HashMap<String, Arc<Plugin>>>,
}

/// A plugin's settings in force on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigInForce {
    /// 0 for a plugin never configured.
    pub version: i64,
    /// The configuration as its calls get it: a JSON object.
    pub text: Arc<str>,
}

impl Default for ConfigInForce {
    fn default() -> Self {
        Self {
            version: 0,
            text: Arc::from("{}"),
        }
    }
}

impl PluginRegistry {
    pub fn new(metrics: Metrics, limits: Limits) -> anyhow::Result<Self> {
        Ok(Self {
            runtime: Runtime::shared()?,
            limits,
            metrics,
            max_consecutive_traps: 5,
            plugins: RwLock::new(BTreeMap::new()),
            configs: RwLock::new(BTreeMap::new()),
            retained: RwLock::new(HashMap::new()),
        })
    }

    /// A registry with the shipped plugins loaded.
    pub fn with_builtins(metrics: Metrics, limits: Limits) -> anyhow::Result<Self> {
        let registry = Self::new(metrics, limits)?;
        for (name, bytes) in BUILT_IN {
            let plugin = registry
                .load(bytes, PluginSource::Builtin)
                .map_err(|e| anyhow::anyhow!("loading the shipped plugin {name}: {e}"))?;
            registry.insert(plugin);
        }
        Ok(registry)
    }

    /// Loads every `*.wasm` of a directory; a plugin that fails to load is
    /// logged and skipped so that one bad file cannot stop the host.
    pub fn load_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("reading ROLLWAY_PLUGINS_DIR {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                continue;
            }
            let loaded = std::fs::read(&path)
                .map_err(|e| PluginError::Invalid(e.to_string()))
                .and_then(|bytes| self.load(&bytes, PluginSource::Directory));
            match loaded.and_then(|plugin| self.admit(plugin)) {
                Ok(plugin) => {
                    tracing::info!(plugin = %plugin.name, version = %plugin.version, file = %path.display(), "plugin loaded")
                }
                Err(error) => tracing::error!(%error, file = %path.display(), "plugin not loaded"),
            }
        }
        Ok(())
    }

    /// Compiles and inspects a component: its world, WIT version, name and
    /// families. Does not register it.
    pub fn load(&self, bytes: &[u8], source: PluginSource) -> Result<Plugin, PluginError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(PluginError::Invalid(format!(
                "component of {} bytes exceeds {MAX_COMPONENT_BYTES}",
                bytes.len()
            )));
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, compiled, compile_time) = compile(&self.runtime, bytes, &sha256)?;
        if compiled != Compiled::InMemory {
            self.metrics
                .plugin_compilations_total
                .with_label_values(&[compiled.as_str()])
                .inc();
            tracing::debug!(%sha256, how = compiled.as_str(), seconds = compile_time.as_secs_f64(), "plugin component ready");
        }
        let (kind, wit_version) = world_of(&self.runtime, &component)?;
        let strategy_export = component.get_export_index(None, STRATEGY_INTERFACE);
        let pre = match kind {
            PluginKind::Rollout if strategy_export.is_some() => self
                .runtime
                .rollout_linker()
                .instantiate_pre(&component)
                .and_then(RolloutStrategyRulesPre::new)
                .map(Pre::Strategy),
            PluginKind::Rollout => self
                .runtime
                .rollout_linker()
                .instantiate_pre(&component)
                .and_then(RolloutStrategyPre::new)
                .map(Pre::Rollout),
            PluginKind::Device => self
                .runtime
                .device_linker()
                .instantiate_pre(&component)
                .and_then(DeviceProtocolPre::new)
                .map(Pre::Device),
        }
        .map_err(|e| PluginError::Invalid(format!("the component cannot be linked: {e:#}")))?;
        let export = |interface: &str, function: &str| match kind {
            PluginKind::Device => component
                .get_export_index(None, interface)
                .and_then(|index| component.get_export_index(Some(&index), function)),
            PluginKind::Rollout => None,
        };
        let parse_status_attempt = export(ATTEMPTS_INTERFACE, "parse-status-attempt");
        let parse_statuses = export(BATCH_INTERFACE, "parse-statuses");
        let build_commands = export(BATCH_INTERFACE, "build-commands");
        let parse_presence = export(PRESENCE_INTERFACE, "parse-presence");
        let parse_reports = export(CONTROL_INTERFACE, "parse-reports");
        let build_cancels = export(CANCELS_INTERFACE, "build-cancels");
        let inspect_image = export(INSPECT_INTERFACE, "inspect-image");
        let classify = export(FAILURES_INTERFACE, "classify");
        // Every kind may describe its settings.
        let config_schema_export = component
            .get_export_index(None, SETTINGS_INTERFACE)
            .and_then(|index| component.get_export_index(Some(&index), "config-schema"));
        let mut plugin = Plugin {
            name: "(loading)".into(),
            kind,
            version: String::new(),
            description: String::new(),
            wit_version,
            sha256,
            source,
            families: Vec::new(),
            compiled,
            compile_time,
            pre,
            parse_status_attempt,
            parse_statuses,
            build_commands,
            parse_presence,
            parse_reports,
            build_cancels,
            inspect_image,
            config_schema: None,
            classify,
            enabled: AtomicBool::new(true),
            disabled_reason: Mutex::new(None),
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            consecutive_traps: AtomicU32::new(0),
        };
        let info = match kind {
            PluginKind::Rollout if plugin.plans_by_attributes() => self
                .strategy_call(&plugin, "info", Seal::new("info", 0, &[]), |store, i| {
                    i.rollway_plugin_strategy().call_info(store)
                })
                .map(|i| (i.name, i.version, i.description))?,
            PluginKind::Rollout => self
                .rollout_call(&plugin, "info", Seal::new("info", 0, &[]), |store, i| {
                    i.rollway_plugin_rollout().call_info(store)
                })
                .map(|i| (i.name, i.version, i.description))?,
            PluginKind::Device => self
                .device_call(
                    &plugin,
                    "info",
                    None,
                    Seal::new("info", 0, &[]),
                    |store, i| i.rollway_plugin_device().call_info(store),
                )
                .map(|i| (i.name, i.version, i.description))?,
        };
        if !valid_name(&info.0) {
            return Err(PluginError::Invalid(format!(
                "plugin name '{}' must be 1 to 64 lowercase letters, digits or '-'",
                info.0
            )));
        }
        (plugin.name, plugin.version, plugin.description) = info;
        plugin.description.truncate(200);
        plugin.version.truncate(64);
        if kind == PluginKind::Device {
            let families = self.device_call(
                &plugin,
                "families",
                None,
                Seal::new("families", 0, &[]),
                |store, i| i.rollway_plugin_device().call_families(store),
            )?;
            if families.is_empty()
                || families.len() > 16
                || families.iter().any(|f| !valid_name(f) || f.len() > 32)
            {
                return Err(PluginError::Invalid(
                    "a device plugin must name 1 to 16 families of lowercase letters, digits or '-'".into(),
                ));
            }
            plugin.families = families;
        }
        if let Some(index) = config_schema_export {
            let seal = Seal::new("config-schema", 0, &[]);
            let text = self.instance_call(&plugin, "config-schema", seal, |store, instance| {
                let function =
                    instance.get_typed_func::<(), (Option<String>,)>(&mut *store, index)?;
                let (answer,) = function.call(&mut *store, ())?;
                Ok(answer)
            })?;
            if let Some(text) = text {
                let schema = ConfigSchema::parse(&text).map_err(|reason| {
                    PluginError::Invalid(format!("plugin '{}': {reason}", plugin.name))
                })?;
                plugin.config_schema = Some(Arc::new(schema));
            }
        }
        Ok(plugin)
    }

    /// Registers a plugin, replacing one of the same name. A device plugin
    /// may not take a family another plugin serves.
    pub fn admit(&self, plugin: Plugin) -> Result<Arc<Plugin>, PluginError> {
        self.admissible(&plugin)?;
        Ok(self.insert(plugin))
    }

    /// Whether [`admit`](Self::admit) would take the plugin: it may replace
    /// one of its name and kind only, and take no family another serves.
    pub fn admissible(&self, plugin: &Plugin) -> Result<(), PluginError> {
        if let Some(other) = self.list_plugins().into_iter().find(|p| {
            p.name != plugin.name && p.families.iter().any(|f| plugin.families.contains(f))
        }) {
            return Err(PluginError::Invalid(format!(
                "the families {:?} are already served by the plugin '{}'",
                plugin.families, other.name
            )));
        }
        if let Some(existing) = self.get(&plugin.name)
            && existing.kind != plugin.kind
        {
            return Err(PluginError::Invalid(format!(
                "'{}' is a {} plugin; it cannot be replaced by a {} plugin",
                plugin.name,
                existing.kind.as_str(),
                plugin.kind.as_str()
            )));
        }
        Ok(())
    }

    /// Puts `plugin` in force under its name. A rollout plugin it replaces
    /// is retained: the jobs created with it go on with it.
    fn insert(&self, plugin: Plugin) -> Arc<Plugin> {
        let plugin = Arc::new(plugin);
        let replaced = self
            .plugins
            .write()
            .ok()
            .and_then(|mut map| map.insert(plugin.name.clone(), plugin.clone()));
        if let Some(old) = replaced
            && old.kind == PluginKind::Rollout
            && old.sha256 != plugin.sha256
        {
            self.retain(old);
        }
        if let Ok(mut retained) = self.retained.write() {
            retained.remove(&plugin.sha256);
        }
        plugin
    }

    /// Keeps a rollout plugin version that is not (or no longer) in force,
    /// for the jobs that run on it.
    pub fn retain(&self, plugin: Arc<Plugin>) {
        if let Ok(mut retained) = self.retained.write() {
            retained.insert(plugin.sha256.clone(), plugin);
        }
    }

    /// Drops retained versions that no unfinished job names any more.
    pub fn forget_versions_except(&self, pinned: &std::collections::HashSet<String>) {
        if let Ok(mut retained) = self.retained.write() {
            retained.retain(|sha256, _| pinned.contains(sha256));
        }
    }

    /// Drops one retained version.
    pub fn forget_version(&self, sha256: &str) {
        if let Ok(mut retained) = self.retained.write() {
            retained.remove(sha256);
        }
    }

    /// Whether the component `sha256` is loaded here, in force or retained.
    pub fn has_version(&self, sha256: &str) -> bool {
        self.list_plugins().iter().any(|p| p.sha256 == sha256)
            || self
                .retained
                .read()
                .is_ok_and(|retained| retained.contains_key(sha256))
    }

    /// Removes an uploaded plugin; the shipped plugin of the same name, if
    /// any, is in force again. Whether it was there.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        // The shipped plugin is ready before the uploaded one leaves, and
        // takes its place in one write: no call finds the name missing.
        let shipped = match BUILT_IN.iter().find(|(builtin, _)| *builtin == name) {
            Some((_, bytes)) => Some(Arc::new(
                self.load(bytes, PluginSource::Builtin)
                    .map_err(|e| anyhow::anyhow!("loading the shipped plugin {name}: {e}"))?,
            )),
            None => None,
        };
        let Ok(mut map) = self.plugins.write() else {
            return Ok(false);
        };
        let removed = map.remove(name);
        if let Some(shipped) = shipped {
            map.insert(shipped.name.clone(), shipped);
        }
        Ok(removed.is_some())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.read().ok().and_then(|m| m.get(name).cloned())
    }

    pub fn list_plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn list(&self) -> Vec<PluginView> {
        self.list_plugins().iter().map(|p| self.view(p)).collect()
    }

    /// A plugin as the API shows it, with the version of its settings.
    pub fn view(&self, plugin: &Plugin) -> PluginView {
        PluginView {
            config_version: self.config_of(&plugin.name).version,
            ..plugin.view()
        }
    }

    /// Enables or disables a plugin; `None` when there is no such plugin.
    pub fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        reason: Option<String>,
    ) -> Option<PluginView> {
        let plugin = self.get(name)?;
        plugin.set_enabled(enabled, reason);
        Some(self.view(&plugin))
    }

    /// The settings in force for the plugin `name`.
    pub fn config_of(&self, name: &str) -> Arc<ConfigInForce> {
        self.configs
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .unwrap_or_default()
    }

    /// Puts a plugin's settings in force, unless a later version already is
    /// (replicas learn of versions in any order). Whether it was taken.
    pub fn set_config(&self, name: &str, config: ConfigInForce) -> bool {
        let Ok(mut map) = self.configs.write() else {
            return false;
        };
        match map.get(name) {
            Some(current) if current.version >= config.version => false,
            _ => {
                map.insert(name.to_owned(), Arc::new(config));
                true
            }
        }
    }

    /// The settings of the device plugin serving `family` (`{}` when there
    /// is none: its calls then fail on the missing plugin).
    pub fn family_config(&self, family: &str) -> Arc<str> {
        self.list_plugins()
            .iter()
            .find(|p| p.kind == PluginKind::Device && p.families.iter().any(|f| f == family))
            .map(|p| self.config_of(&p.name).text.clone())
            .unwrap_or_else(|| Arc::from("{}"))
    }

    /// Whether a device plugin serves `family`.
    pub fn has_family(&self, family: &str) -> bool {
        self.list_plugins()
            .iter()
            .any(|p| p.families.iter().any(|f| f == family))
    }

    pub fn families(&self) -> Vec<String> {
        let mut families: Vec<String> = self
            .list_plugins()
            .iter()
            .flat_map(|p| p.families.clone())
            .collect();
        families.sort();
        families
    }

    fn usable(&self, plugin: Arc<Plugin>) -> Result<Arc<Plugin>, PluginError> {
        if plugin.is_enabled() {
            Ok(plugin)
        } else {
            Err(PluginError::Disabled(
                plugin.name.clone(),
                plugin
                    .reason()
                    .unwrap_or_else(|| "disabled by an admin".into()),
            ))
        }
    }

    /// The rollout plugin `name` at version `sha256` (a job's), or in force
    /// when `None`. A retained version is usable while the plugin is.
    pub fn rollout_version(
        &self,
        name: &str,
        sha256: Option<&str>,
    ) -> Result<Arc<Plugin>, PluginError> {
        let current = self.rollout_plugin(name)?;
        let Some(sha256) = sha256.filter(|sha| *sha != current.sha256) else {
            return Ok(current);
        };
        let retained = self
            .retained
            .read()
            .ok()
            .and_then(|retained| retained.get(sha256).cloned())
            .filter(|plugin| plugin.name == name)
            .ok_or_else(|| PluginError::VersionNotLoaded {
                name: name.to_owned(),
                sha256: sha256.to_owned(),
            })?;
        // Its own trap accounting counts too.
        self.usable(retained)
    }

    pub fn rollout_plugin(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        match self.get(name) {
            Some(p) if p.kind == PluginKind::Rollout => self.usable(p),
            _ => Err(PluginError::NotFound {
                kind: "rollout",
                name: name.to_owned(),
            }),
        }
    }

    pub fn device_plugin(&self, family: &str) -> Result<Arc<Plugin>, PluginError> {
        let plugin = self
            .list_plugins()
            .into_iter()
            .find(|p| p.kind == PluginKind::Device && p.families.iter().any(|f| f == family))
            .ok_or_else(|| PluginError::NoFamily(family.to_owned()))?;
        self.usable(plugin)
    }

    /// Runs one call in a fresh store, with metrics, trap accounting and
    /// the automatic disabling of a plugin that keeps trapping.
    fn guarded<R>(
        &self,
        plugin: &Plugin,
        function: &'static str,
        timeout: Duration,
        seal: Seal,
        body: impl FnOnce(&mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.metrics
            .plugin_calls_total
            .with_label_values(&[&plugin.name, function])
            .inc();
        plugin.calls.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = Arc::from(plugin.name.as_str());
        let started = std::time::Instant::now();
        let (mut store, stderr) = self.runtime.store(&name, &self.limits, timeout, &seal);
        let result = body(&mut store);
        self.metrics
            .plugin_call_duration_seconds
            .with_label_values(&[&plugin.name, function])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(result) => {
                plugin.consecutive_traps.store(0, Ordering::Relaxed);
                Ok(result)
            }
            Err(error) => {
                let reason = classify(&error);
                self.metrics
                    .plugin_traps_total
                    .with_label_values(&[&plugin.name, reason])
                    .inc();
                plugin.traps.fetch_add(1, Ordering::Relaxed);
                let in_a_row = plugin.consecutive_traps.fetch_add(1, Ordering::Relaxed) + 1;
                let what = describe(reason, &self.limits, timeout);
                let stderr = String::from_utf8_lossy(&stderr.contents())
                    .trim()
                    .to_owned();
                tracing::error!(
                    plugin = %plugin.name, function, reason, in_a_row,
                    error = format!("{error:#}"), stderr = %stderr,
                    "plugin call failed"
                );
                if in_a_row >= self.max_consecutive_traps && plugin.is_enabled() {
                    let why = format!("{in_a_row} failed calls in a row, the last: {what}");
                    tracing::error!(plugin = %plugin.name, "plugin disabled: {why}");
                    plugin.set_enabled(false, Some(why));
                }
                Err(PluginError::Failed {
                    plugin: plugin.name.clone(),
                    what: format!("{function}: {what}"),
                })
            }
        }
    }

    fn rollout_call<R>(
        &self,
        plugin: &Plugin,
        function: &'static str,
        seal: Seal,
        body: impl FnOnce(&mut Store<State>, &RolloutStrategy) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let Pre::Rollout(pre) = &plugin.pre else {
            return Err(PluginError::Invalid(format!(
                "'{}' is not a rollout plugin",
                plugin.name
            )));
        };
        self.guarded(plugin, function, self.limits.call_timeout, seal, |store| {
            let instance = pre.instantiate(&mut *store)?;
            body(store, &instance)
        })
    }

    fn strategy_call<R>(
        &self,
        plugin: &Plugin,
        function: &'static str,
        seal: Seal,
        body: impl FnOnce(&mut Store<State>, &RolloutStrategyRules) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let Pre::Strategy(pre) = &plugin.pre else {
            return Err(PluginError::Invalid(format!(
                "'{}' is not a rollout strategy of WIT 0.1.8",
                plugin.name
            )));
        };
        self.guarded(plugin, function, self.limits.call_timeout, seal, |store| {
            let instance = pre.instantiate(&mut *store)?;
            body(store, &instance)
        })
    }

    fn device_pre(plugin: &Plugin) -> Result<&DeviceProtocolPre<State>, PluginError> {
        match &plugin.pre {
            Pre::Device(pre) => Ok(pre),
            Pre::Rollout(_) | Pre::Strategy(_) => Err(PluginError::Invalid(format!(
                "'{}' is not a device plugin",
                plugin.name
            ))),
        }
    }

    fn device_call<R>(
        &self,
        plugin: &Plugin,
        function: &'static str,
        timeout: Option<Duration>,
        seal: Seal,
        body: impl FnOnce(&mut Store<State>, &DeviceProtocol) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let pre = Self::device_pre(plugin)?;
        let timeout = timeout.unwrap_or(self.limits.call_timeout);
        self.guarded(plugin, function, timeout, seal, |store| {
            let instance = pre.instantiate(&mut *store)?;
            body(store, &instance)
        })
    }

    /// A call on the bare instance of a plugin of either kind: for the
    /// exports a plugin may lack, which the generated bindings do not
    /// cover.
    fn instance_call<R>(
        &self,
        plugin: &Plugin,
        function: &'static str,
        seal: Seal,
        body: impl FnOnce(&mut Store<State>, &wasmtime::component::Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.guarded(plugin, function, self.limits.call_timeout, seal, |store| {
            let instance = match &plugin.pre {
                Pre::Device(pre) => pre.instance_pre().instantiate(&mut *store)?,
                Pre::Rollout(pre) => pre.instance_pre().instantiate(&mut *store)?,
                Pre::Strategy(pre) => pre.instance_pre().instantiate(&mut *store)?,
            };
            body(store, &instance)
        })
    }

    fn refused(plugin: &Plugin, reason: String) -> PluginError {
        let mut reason = reason;
        if reason.len() > 1024 {
            let mut cut = 1024;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        PluginError::Refused {
            plugin: plugin.name.clone(),
            reason,
        }
    }

    fn nonsense(plugin: &Plugin, what: String) -> PluginError {
        PluginError::Failed {
            plugin: plugin.name.clone(),
            what,
        }
    }

    /// Asks a plugin, loaded or not yet admitted, whether it takes `config`:
    /// against its JSON Schema first when it gives one, then its
    /// `validate-config`, whatever its kind and state.
    pub fn validate_config(&self, plugin: &Plugin, config: &str) -> Result<(), PluginError> {
        if let Some(schema) = plugin.config_schema() {
            let value: serde_json::Value = serde_json::from_str(config)
                .map_err(|e| Self::refused(plugin, format!("not JSON: {e}")))?;
            schema.check(&value).map_err(|reason| {
                Self::refused(plugin, format!("{reason} (by its JSON Schema)"))
            })?;
        }
        let seal = Seal::new("validate-config", 0, &[&config]);
        match plugin.kind {
            PluginKind::Rollout if plugin.plans_by_attributes() => {
                self.strategy_call(plugin, "validate-config", seal, |store, i| {
                    i.rollway_plugin_strategy()
                        .call_validate_config(store, config)
                })
            }
            PluginKind::Rollout => {
                self.rollout_call(plugin, "validate-config", seal, |store, i| {
                    i.rollway_plugin_rollout()
                        .call_validate_config(store, config)
                })
            }
            PluginKind::Device => {
                self.device_call(plugin, "validate-config", None, seal, |store, i| {
                    i.rollway_plugin_device()
                        .call_validate_config(store, config)
                })
            }
        }?
        .map_err(|reason| Self::refused(plugin, reason))
    }

    /// Checks a job's rollout configuration with its plugin (and its
    /// schema).
    pub fn validate_rollout_config(&self, name: &str, config: &str) -> Result<(), PluginError> {
        let plugin = self.rollout_plugin(name)?;
        self.validate_config(&plugin, config)
    }

    /// Splits `total` devices into batch sizes with the rollout plugin
    /// `name` of 0.1.0–0.1.7 (`rollout`) in force.
    pub fn plan(&self, name: &str, config: &str, total: u32) -> Result<Vec<u32>, PluginError> {
        let plugin = self.rollout_plugin(name)?;
        self.plan_with(&plugin, config, total)
    }

    /// Asks the rollout plugin `name` of 0.1.0–0.1.7 (`rollout`) in force
    /// what to do next.
    pub fn evaluate(
        &self,
        name: &str,
        config: &str,
        snapshot: &Snapshot,
    ) -> Result<Decision, PluginError> {
        let plugin = self.rollout_plugin(name)?;
        self.evaluate_with(&plugin, config, snapshot)
    }

    /// Splits `total` devices into batch sizes with one version of a
    /// rollout plugin of 0.1.x (`rollout`).
    pub fn plan_with(
        &self,
        plugin: &Plugin,
        config: &str,
        total: u32,
    ) -> Result<Vec<u32>, PluginError> {
        let plan_seal = Seal::new("plan", 0, &[&config, &u64::from(total)]);
        let sizes = self
            .rollout_call(plugin, "plan", plan_seal, |store, i| {
                i.rollway_plugin_rollout().call_plan(store, config, total)
            })?
            .map_err(|reason| Self::refused(plugin, reason))?;
        let sum: u64 = sizes.iter().map(|s| u64::from(*s)).sum();
        if sum != u64::from(total) || sizes.len() > MAX_BATCH_GROUPS || sizes.contains(&0) {
            return Err(Self::nonsense(
                plugin,
                format!(
                    "plan returned {} batches summing to {sum} for {total} devices (sizes must be positive, at most {MAX_BATCH_GROUPS} batches)",
                    sizes.len()
                ),
            ));
        }
        Ok(sizes)
    }

    /// Asks one version of a rollout plugin of 0.1.x (`rollout`) what to
    /// do next.
    pub fn evaluate_with(
        &self,
        plugin: &Plugin,
        config: &str,
        snapshot: &Snapshot,
    ) -> Result<Decision, PluginError> {
        // The one call with a time of its own: the snapshot's.
        let evaluate_seal = Seal::new("evaluate", snapshot.now, &[&config, snapshot]);
        let decision = self
            .rollout_call(plugin, "evaluate", evaluate_seal, |store, i| {
                i.rollway_plugin_rollout()
                    .call_evaluate(store, config, snapshot)
            })?
            .map_err(|reason| Self::refused(plugin, reason))?;
        Ok(match decision {
            ro::Decision::Pause(r) if r.len() > 1024 => {
                ro::Decision::Pause(r.chars().take(1000).collect())
            }
            ro::Decision::Abort(r) if r.len() > 1024 => {
                ro::Decision::Abort(r.chars().take(1000).collect())
            }
            other => other,
        })
    }

    /// Validates an image with its family's plugin.
    pub fn validate_image(
        &self,
        family: &str,
        config: &str,
        image: Arc<dyn ImageSource>,
    ) -> Result<ImageInfo, PluginError> {
        let plugin = self.device_plugin(family)?;
        let seal = Seal::new("validate-image", 0, &[&config, &image.size()]);
        let timeout = Some(self.limits.image_timeout);
        let info = match &plugin.inspect_image {
            Some(index) => {
                type Answer = Result<ImageFacts, String>;
                let pre = Self::device_pre(&plugin)?;
                self.guarded(
                    &plugin,
                    "inspect-image",
                    self.limits.image_timeout,
                    seal,
                    |store| {
                        let instance = pre.instance_pre().instantiate(&mut *store)?;
                        let handle = Runtime::push_image(store, image)?;
                        let function = instance
                            .get_typed_func::<(&str, Resource<ImageHandle>), (Answer,)>(
                                &mut *store,
                                index,
                            )?;
                        let (answer,) = function.call(&mut *store, (config, handle))?;
                        Ok(answer)
                    },
                )?
                .map(ImageFacts::into_info)
            }
            None => self.device_call(&plugin, "validate-image", timeout, seal, |store, i| {
                let handle = Runtime::push_image(store, image)?;
                i.rollway_plugin_device()
                    .call_validate_image(store, config, handle)
            })?,
        }
        .map_err(|reason| Self::refused(&plugin, reason))?;
        let too_long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > 128);
        let details_size: usize = info.details.iter().map(|(k, v)| k.len() + v.len()).sum();
        if too_long(&info.version)
            || too_long(&info.target)
            || info.details.len() > 64
            || details_size > 16 * 1024
        {
            return Err(Self::nonsense(
                &plugin,
                "validate-image returned oversized metadata".into(),
            ));
        }
        Ok(info)
    }

    /// Checks a family's settings with its plugin (and its schema).
    pub fn validate_device_config(&self, family: &str, config: &str) -> Result<(), PluginError> {
        let plugin = self.device_plugin(family)?;
        self.validate_config(&plugin, config)
    }

    /// Builds one device's update command.
    pub fn build_command(
        &self,
        family: &str,
        config: &str,
        request: &CommandRequest,
    ) -> Result<Command, PluginError> {
        let plugin = self.device_plugin(family)?;
        let seal = Seal::new("build-command", 0, &[&config, request]);
        let command = self
            .device_call(&plugin, "build-command", None, seal, |store, i| {
                i.rollway_plugin_device()
                    .call_build_command(store, config, request)
            })?
            .map_err(|reason| Self::refused(&plugin, reason))?;
        Self::checked_command(&plugin, "build-command", &request.device, command)
    }

    /// Builds the commands of many devices of `family`: in one instance per
    /// batch when the plugin exports `batch`, else one by one. A batch that
    /// fails is built again one by one, so that one poisonous request fails
    /// alone. One answer per request, in order.
    pub fn build_commands(
        &self,
        family: &str,
        config: &str,
        requests: &[CommandRequest],
    ) -> Vec<Result<Command, PluginError>> {
        let plugin = match self.device_plugin(family) {
            Ok(plugin) => plugin,
            Err(error) => return requests.iter().map(|_| Err(error.clone())).collect(),
        };
        let one_by_one = |requests: &[CommandRequest]| -> Vec<Result<Command, PluginError>> {
            requests
                .iter()
                .map(|request| self.build_command(family, config, request))
                .collect()
        };
        let Some(index) = &plugin.build_commands else {
            return one_by_one(requests);
        };
        self.in_batches(
            &plugin,
            "build-commands",
            index,
            config,
            requests.chunks(BATCH_ITEMS).collect(),
            one_by_one,
            |request, answer: Result<Command, String>| {
                answer
                    .map_err(|reason| Self::refused(&plugin, reason))
                    .and_then(|command| {
                        Self::checked_command(&plugin, "build-command", &request.device, command)
                    })
            },
        )
    }

    /// Builds the cancel messages of many devices of `family` (`cancels`,
    /// WIT 0.1.5): in one instance per batch, and a batch that fails again
    /// request by request, so that one poisonous request fails alone. One
    /// answer per request, in order; every one refused when the plugin
    /// does not export `cancels` (see [`Plugin::sends_cancels`]).
    pub fn build_cancels(
        &self,
        family: &str,
        config: &str,
        requests: &[CancelRequest],
    ) -> Vec<Result<Command, PluginError>> {
        let plugin = match self.device_plugin(family) {
            Ok(plugin) => plugin,
            Err(error) => return requests.iter().map(|_| Err(error.clone())).collect(),
        };
        let Some(index) = &plugin.build_cancels else {
            let error = Self::refused(
                &plugin,
                "the plugin does not send cancels (it predates WIT 0.1.5)".into(),
            );
            return requests.iter().map(|_| Err(error.clone())).collect();
        };
        let answer = |request: &CancelRequest, answer: Result<Command, String>| {
            answer
                .map_err(|reason| Self::refused(&plugin, reason))
                .and_then(|command| {
                    Self::checked_command(&plugin, "build-cancels", &request.device, command)
                })
        };
        // The export takes batches only: a batch that failed is asked
        // again one request at a time.
        let one_by_one = |requests: &[CancelRequest]| -> Vec<Result<Command, PluginError>> {
            requests
                .iter()
                .map(|request| {
                    let alone = std::slice::from_ref(request);
                    let built = self.call_batch(&plugin, "build-cancels", index, config, alone)?;
                    match <[_; 1]>::try_from(built) {
                        Ok([one]) => answer(request, one),
                        Err(built) => Err(Self::nonsense(
                            &plugin,
                            format!("build-cancels answered {} items for one", built.len()),
                        )),
                    }
                })
                .collect()
        };
        self.in_batches(
            &plugin,
            "build-cancels",
            index,
            config,
            requests.chunks(BATCH_ITEMS).collect(),
            one_by_one,
            answer,
        )
    }

    /// Calls the `batch` function at `index` once per chunk of `items`,
    /// turning each item's answer into a result with `answer`. A chunk
    /// whose call fails, or answers another number of items than it was
    /// given, is handed to `one_by_one`.
    #[allow(clippy::too_many_arguments)]
    fn in_batches<'a, I, A, R>(
        &self,
        plugin: &Plugin,
        function: &'static str,
        index: &ComponentExportIndex,
        config: &str,
        chunks: Vec<&'a [I]>,
        one_by_one: impl Fn(&'a [I]) -> Vec<Result<R, PluginError>>,
        answer: impl Fn(&I, A) -> Result<R, PluginError>,
    ) -> Vec<Result<R, PluginError>>
    where
        I: wasmtime::component::Lower + Sealed,
        A: wasmtime::component::Lift + Send + Sync + 'static,
    {
        let mut answers = Vec::new();
        for chunk in chunks {
            match self.call_batch(plugin, function, index, config, chunk) {
                Ok(batch) if batch.len() == chunk.len() => {
                    answers.extend(chunk.iter().zip(batch).map(|(item, a)| answer(item, a)));
                }
                Ok(batch) => {
                    tracing::warn!(
                        plugin = %plugin.name, function, asked = chunk.len(), answered = batch.len(),
                        "a batch call answered another number of items; calling item by item"
                    );
                    answers.extend(one_by_one(chunk));
                }
                Err(_) => answers.extend(one_by_one(chunk)),
            }
        }
        answers
    }

    /// Calls the batch export at `index` (`function(config, items)`) in a
    /// fresh instance; its answers, one per item if the plugin keeps to
    /// its contract.
    fn call_batch<I, A>(
        &self,
        plugin: &Plugin,
        function: &'static str,
        index: &ComponentExportIndex,
        config: &str,
        items: &[I],
    ) -> Result<Vec<A>, PluginError>
    where
        I: wasmtime::component::Lower + Sealed,
        A: wasmtime::component::Lift + Send + Sync + 'static,
    {
        let seal = Seal::new(function, 0, &[&config, &items]);
        self.instance_call(plugin, function, seal, |store, instance| {
            let function =
                instance.get_typed_func::<(&str, &[I]), (Vec<A>,)>(&mut *store, index)?;
            let (answers,) = function.call(&mut *store, (config, items))?;
            Ok(answers)
        })
    }

    /// Checks a command a plugin built: its topic names the device or its
    /// gateway, its size and QoS are in bounds.
    fn checked_command(
        plugin: &Plugin,
        function: &str,
        device: &DeviceInfo,
        command: Command,
    ) -> Result<Command, PluginError> {
        let topic_ok = !command.topic.is_empty()
            && command.topic.len() <= 256
            && !command.topic.starts_with('/')
            && !command.topic.contains(['+', '#', '\0']);
        if !topic_ok {
            return Err(Self::nonsense(
                plugin,
                format!("{function} returned an invalid topic {:?}", command.topic),
            ));
        }
        let own = [Some(device.id.as_str()), device.gateway_id.as_deref()];
        let first = command.topic.split('/').next();
        if !own.contains(&first) {
            return Err(Self::nonsense(
                plugin,
                format!(
                    "{function} addressed {:?}, which is neither the device nor its gateway",
                    command.topic
                ),
            ));
        }
        if command.payload.len() > MAX_COMMAND_BYTES || command.qos > 2 {
            return Err(Self::nonsense(
                plugin,
                format!("{function} returned an oversized payload or a QoS above 2"),
            ));
        }
        Ok(command)
    }

    /// Parses a status payload with its family's plugin: with
    /// `control.parse-reports` when the plugin exports it (0.1.4), else
    /// with `attempts.parse-status-attempt` when it exports that (0.1.1),
    /// else with `device.parse-status`.
    pub fn parse_status(
        &self,
        family: &str,
        config: &str,
        topic_device_id: &str,
        payload: &[u8],
    ) -> Result<ParsedStatus, PluginError> {
        let plugin = self.device_plugin(family)?;
        let seal = |function| Seal::new(function, 0, &[&config, &topic_device_id, &payload]);
        if let Some(index) = &plugin.parse_reports {
            type Answer = Result<Report, String>;
            let mut answers = self.instance_call(
                &plugin,
                "parse-reports",
                seal("parse-reports"),
                |store, instance| {
                    let function = instance
                        .get_typed_func::<(&str, &[(&str, &[u8])]), (Vec<Answer>,)>(
                            &mut *store,
                            index,
                        )?;
                    let (answers,) =
                        function.call(&mut *store, (config, &[(topic_device_id, payload)]))?;
                    Ok(answers)
                },
            )?;
            if answers.len() != 1 {
                return Err(Self::nonsense(
                    &plugin,
                    format!("parse-reports answered {} items for 1", answers.len()),
                ));
            }
            return answers
                .remove(0)
                .map(ParsedStatus::from)
                .map_err(|reason| Self::refused(&plugin, reason));
        }
        let parsed = match &plugin.parse_status_attempt {
            Some(index) => self.instance_call(
                &plugin,
                "parse-status",
                seal("parse-status"),
                |store, instance| {
                    type Answer = Result<(StatusReport, Option<u32>), String>;
                    let function = instance
                        .get_typed_func::<(&str, &str, &[u8]), (Answer,)>(&mut *store, index)?;
                    let (answer,) =
                        function.call(&mut *store, (config, topic_device_id, payload))?;
                    Ok(answer)
                },
            )?,
            None => self
                .device_call(
                    &plugin,
                    "parse-status",
                    None,
                    seal("parse-status"),
                    |store, i| {
                        i.rollway_plugin_device().call_parse_status(
                            store,
                            config,
                            topic_device_id,
                            payload,
                        )
                    },
                )?
                .map(|report| (report, None)),
        };
        parsed
            .map(|(report, attempt)| ParsedStatus::of(report, attempt))
            .map_err(|reason| Self::refused(&plugin, reason))
    }

    /// Parses many status payloads of `family`, each `(topic device id,
    /// payload)`: in one instance per batch when the plugin exports
    /// `batch`, else one by one. A batch that fails is parsed again one by
    /// one, so that one poisonous payload fails alone. One answer per
    /// status, in order.
    pub fn parse_statuses(
        &self,
        family: &str,
        config: &str,
        statuses: &[(&str, &[u8])],
    ) -> Vec<Result<ParsedStatus, PluginError>> {
        let plugin = match self.device_plugin(family) {
            Ok(plugin) => plugin,
            Err(error) => return statuses.iter().map(|_| Err(error.clone())).collect(),
        };
        let one_by_one = |statuses: &[(&str, &[u8])]| -> Vec<Result<ParsedStatus, PluginError>> {
            statuses
                .iter()
                .map(|(device, payload)| self.parse_status(family, config, device, payload))
                .collect()
        };
        if let Some(index) = &plugin.parse_reports {
            return self.in_batches(
                &plugin,
                "parse-reports",
                index,
                config,
                batches(statuses, |(_, payload)| payload.len()),
                one_by_one,
                |_, answer: Result<Report, String>| {
                    answer
                        .map(ParsedStatus::from)
                        .map_err(|reason| Self::refused(&plugin, reason))
                },
            );
        }
        let Some(index) = &plugin.parse_statuses else {
            return one_by_one(statuses);
        };
        type Answer = Result<(StatusReport, Option<u32>), String>;
        self.in_batches(
            &plugin,
            "parse-statuses",
            index,
            config,
            batches(statuses, |(_, payload)| payload.len()),
            one_by_one,
            |_, answer: Answer| {
                answer
                    .map(|(report, attempt)| ParsedStatus::of(report, attempt))
                    .map_err(|reason| Self::refused(&plugin, reason))
            },
        )
    }
}

/// The registry as the host's tasks use it. A call into a plugin is CPU
/// work under a deadline (wasmtime's calls are synchronous), so each runs
/// on a blocking thread, handed off here, once, and never on the async
/// runtime's workers. Reads of the registry (`get`, `families`, …) go
/// through to it. The synchronous calls stay for `rollway plugin check`
/// and the benchmarks.
#[derive(Clone)]
pub struct Plugins(Arc<PluginRegistry>);

impl std::ops::Deref for Plugins {
    type Target = PluginRegistry;

    fn deref(&self) -> &PluginRegistry {
        &self.0
    }
}

impl Plugins {
    pub fn new(registry: Arc<PluginRegistry>) -> Self {
        Self(registry)
    }

    /// Runs `call` with the registry on a blocking thread.
    async fn blocking<R: Send + 'static>(
        &self,
        call: impl FnOnce(&PluginRegistry) -> R + Send + 'static,
    ) -> Result<R, PluginError> {
        let registry = self.0.clone();
        tokio::task::spawn_blocking(move || call(&registry))
            .await
            .map_err(|e| PluginError::Failed {
                plugin: "(any)".into(),
                what: format!("the call's thread failed: {e}"),
            })
    }

    pub async fn load(&self, bytes: Vec<u8>, source: PluginSource) -> Result<Plugin, PluginError> {
        self.blocking(move |r| r.load(&bytes, source)).await?
    }

    /// See [`PluginRegistry::validate_config`].
    pub async fn validate_config(
        &self,
        plugin: Arc<Plugin>,
        config: String,
    ) -> Result<(), PluginError> {
        self.blocking(move |r| r.validate_config(&plugin, &config))
            .await?
    }

    /// Whether the rollout plugin `name` at version `sha256` (in force
    /// when `None`) plans by device attributes (WIT 0.1.8).
    pub fn plans_by_attributes(
        &self,
        name: &str,
        sha256: Option<&str>,
    ) -> Result<bool, PluginError> {
        Ok(self.rollout_version(name, sha256)?.plans_by_attributes())
    }

    /// Plans over `population` with the rollout plugin `name` at version
    /// `sha256` (a job's; in force when `None`).
    pub async fn plan(
        &self,
        name: &str,
        sha256: Option<&str>,
        config: &str,
        population: strategy::Population,
    ) -> Result<Vec<strategy::Group>, PluginError> {
        let plugin = self.rollout_version(name, sha256)?;
        let config = config.to_owned();
        self.blocking(move |r| r.plan_groups_with(&plugin, &config, &population))
            .await?
    }

    /// Asks the rollout plugin `name` at version `sha256` what to do next.
    pub async fn decide(
        &self,
        name: &str,
        sha256: Option<&str>,
        config: &str,
        situation: strategy::Situation,
    ) -> Result<strategy::Verdict, PluginError> {
        let plugin = self.rollout_version(name, sha256)?;
        let config = config.to_owned();
        self.blocking(move |r| r.decide_with(&plugin, &config, &situation))
            .await?
    }

    /// The rollout plugin `name` at version `sha256` as a function of a
    /// situation, for callers that ask it many times on a thread of their
    /// own (dry runs: `tokio::task::spawn_blocking`).
    pub fn decider(
        &self,
        name: &str,
        sha256: Option<&str>,
        config: &str,
    ) -> Result<
        impl FnMut(&strategy::Situation) -> Result<strategy::Verdict, PluginError> + Send + 'static,
        PluginError,
    > {
        let plugin = self.rollout_version(name, sha256)?;
        let (registry, config) = (self.0.clone(), config.to_owned());
        Ok(
            move |situation: &strategy::Situation| {
                registry.decide_with(&plugin, &config, situation)
            },
        )
    }

    /// The class of each failure text, by the device plugin of `family`
    /// under its settings in force.
    pub async fn classify(
        &self,
        family: &str,
        errors: Vec<String>,
    ) -> Result<Vec<strategy::FailureClass>, PluginError> {
        let (family, config) = (family.to_owned(), self.family_config(family));
        self.blocking(move |r| r.classify(&family, &config, &errors))
            .await?
    }

    /// Validates an image with its family's plugin, under the plugin's
    /// settings in force.
    pub async fn validate_image(
        &self,
        family: &str,
        image: Arc<dyn ImageSource>,
    ) -> Result<ImageInfo, PluginError> {
        let (family, config) = (family.to_owned(), self.family_config(family));
        self.blocking(move |r| r.validate_image(&family, &config, image))
            .await?
    }

    /// The commands of many requests of one family, in order. `Err` only
    /// when the call's thread itself failed: the caller tries the whole
    /// round again rather than failing every item. Under the plugin's
    /// settings in force, as every device call.
    pub async fn build_commands(
        &self,
        family: &str,
        requests: Vec<CommandRequest>,
    ) -> Result<Vec<Result<Command, PluginError>>, PluginError> {
        let (family, config) = (family.to_owned(), self.family_config(family));
        self.blocking(move |r| r.build_commands(&family, &config, &requests))
            .await
    }

    /// The cancel messages of many requests of one family, in order (see
    /// [`PluginRegistry::build_cancels`]). `Err` only when the call's
    /// thread itself failed.
    pub async fn build_cancels(
        &self,
        family: &str,
        requests: Vec<CancelRequest>,
    ) -> Result<Vec<Result<Command, PluginError>>, PluginError> {
        let (family, config) = (family.to_owned(), self.family_config(family));
        self.blocking(move |r| r.build_cancels(&family, &config, &requests))
            .await
    }

    /// The devices a presence payload speaks for (see
    /// [`PluginRegistry::parse_presence`]).
    pub async fn parse_presence(
        &self,
        family: &str,
        topic_device_id: &str,
        payload: bytes::Bytes,
    ) -> Result<Vec<Presence>, PluginError> {
        let config = self.family_config(family);
        // Only a plugin's own parser runs WebAssembly: the standard JSON is
        // read here, without a hand-off to a blocking thread.
        if !self.device_plugin(family)?.parses_presence() {
            return self
                .0
                .parse_presence(family, &config, topic_device_id, &payload);
        }
        let (family, device) = (family.to_owned(), topic_device_id.to_owned());
        self.blocking(move |r| r.parse_presence(&family, &config, &device, &payload))
            .await?
    }

    /// Many statuses of one family, each `(topic device id, payload)`, in
    /// order. `Err` only when the call's thread itself failed: the caller
    /// tries the whole batch again rather than refusing every status.
    pub async fn parse_statuses(
        &self,
        family: &str,
        statuses: Vec<(String, bytes::Bytes)>,
    ) -> Result<Vec<Result<ParsedStatus, PluginError>>, PluginError> {
        let (family, config) = (family.to_owned(), self.family_config(family));
        self.blocking(move |r| {
            let items: Vec<(&str, &[u8])> = statuses
                .iter()
                .map(|(device, payload)| (device.as_str(), payload.as_ref()))
                .collect();
            r.parse_statuses(&family, &config, &items)
        })
        .await
    }
}

/// `inspect.image-facts` (0.1.6), lifted from a plugin's answer.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
struct ImageFacts {
    version: Option<String>,
    target: Option<String>,
    #[component(name = "security-counter")]
    security_counter: Option<u64>,
    details: Vec<(String, String)>,
}

impl ImageFacts {
    /// The facts as the host keeps them: the counter, when the image says
    /// one, as the `security_counter` detail (in place of any such detail
    /// the plugin also gave).
    fn into_info(self) -> ImageInfo {
        let mut details = self.details;
        if let Some(counter) = self.security_counter {
            details.retain(|(key, _)| key != SECURITY_COUNTER_DETAIL);
            details.push((SECURITY_COUNTER_DETAIL.to_owned(), counter.to_string()));
        }
        ImageInfo {
            version: self.version,
            target: self.target,
            details,
        }
    }
}

/// `cancels.cancel-request` (0.1.5): what a device plugin is told about
/// one cancel.
#[derive(Debug, Clone, wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
pub struct CancelRequest {
    pub device: DeviceInfo,
    #[component(name = "job-id")]
    pub job_id: String,
    #[component(name = "execution-id")]
    pub execution_id: u64,
    /// The attempt cancelled: the latest sent to the device.
    pub attempt: u32,
    /// The signed cancel (JSON) and its signature, base64.
    pub manifest: String,
    pub signature: String,
    #[component(name = "key-id")]
    pub key_id: String,
}

/// `presence.device-presence`, lifted from a plugin's answer.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
struct DevicePresence {
    #[component(name = "device-id")]
    device_id: String,
    online: bool,
    #[component(name = "installed-version")]
    installed_version: Option<String>,
    #[component(name = "security-counter")]
    security_counter: Option<u64>,
    hardware: Vec<(String, String)>,
}

impl PluginRegistry {
    /// Parses a presence payload received on `topic_device_id`'s presence
    /// topic with its family's plugin when it exports `presence` (0.1.3),
    /// else as Rollway's standard presence JSON: the devices it speaks for,
    /// sender first.
    pub fn parse_presence(
        &self,
        family: &str,
        config: &str,
        topic_device_id: &str,
        payload: &[u8],
    ) -> Result<Vec<Presence>, PluginError> {
        let plugin = self.device_plugin(family)?;
        let Some(index) = &plugin.parse_presence else {
            return rollway_plugin_sdk::presence::parse_json(topic_device_id, payload)
                .map_err(|reason| Self::refused(&plugin, reason));
        };
        type Answer = Result<Vec<DevicePresence>, String>;
        let seal = Seal::new("parse-presence", 0, &[&config, &topic_device_id, &payload]);
        let answer = self.instance_call(&plugin, "parse-presence", seal, |store, instance| {
            let function =
                instance.get_typed_func::<(&str, &str, &[u8]), (Answer,)>(&mut *store, index)?;
            let (answer,) = function.call(&mut *store, (config, topic_device_id, payload))?;
            Ok(answer)
        })?;
        let devices = answer.map_err(|reason| Self::refused(&plugin, reason))?;
        if devices.is_empty() || devices.len() > rollway_plugin_sdk::presence::MAX_DEVICES {
            return Err(Self::nonsense(
                &plugin,
                format!(
                    "parse-presence answered {} devices (1 to {} allowed)",
                    devices.len(),
                    rollway_plugin_sdk::presence::MAX_DEVICES
                ),
            ));
        }
        Ok(devices
            .into_iter()
            .map(|d| Presence {
                device_id: d.device_id,
                online: d.online,
                installed_version: d.installed_version,
                security_counter: d.security_counter,
                hardware: d.hardware,
            })
            .collect())
    }
}

/// Splits `items` into runs of at most [`BATCH_ITEMS`] items and
/// [`BATCH_PAYLOAD_BYTES`] bytes (as `bytes` counts them; one larger item
/// is a run of its own).
fn batches<T>(items: &[T], bytes: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, item) in items.iter().enumerate() {
        let n = bytes(item);
        if i > start && (i - start == BATCH_ITEMS || size + n > BATCH_PAYLOAD_BYTES) {
            runs.push(&items[start..i]);
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

impl dev::StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            dev::StatusState::Init => "init",
            dev::StatusState::Downloading => "downloading",
            dev::StatusState::Flashing => "flashing",
            dev::StatusState::Rebooting => "rebooting",
            dev::StatusState::Done => "done",
            dev::StatusState::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_s_schema_must_be_a_sealed_json_schema() {
        let refused = |text: &str| ConfigSchema::parse(text).err().unwrap_or_default();
        assert!(refused("{").contains("not JSON"));
        assert!(refused("[1]").contains("not a JSON Schema object"));
        assert!(refused(r#"{"type": 12}"#).contains("not a valid JSON Schema"));
        // No reference leaves the schema: plugins are sealed.
        assert!(
            refused(r#"{"$ref": "https://example.com/settings.json"}"#)
                .contains("not a valid JSON Schema")
        );
        let huge = format!(r#"{{"description": "{}"}}"#, "x".repeat(MAX_SCHEMA_BYTES));
        assert!(refused(&huge).contains("more than"));

        let schema = ConfigSchema::parse(
            r##"{"type": "object", "additionalProperties": false, "$defs": {"n": {"type": "integer", "minimum": 1}},
                "properties": {"canary": {"$ref": "#/$defs/n"}, "mode": {"enum": ["a", "b"]}}}"##,
        )
        .unwrap();
        assert!(
            schema
                .check(&serde_json::json!({"canary": 3, "mode": "a"}))
                .is_ok()
        );
        let said = schema
            .check(&serde_json::json!({"canary": 0, "mode": "c", "extra": true}))
            .unwrap_err();
        for part in [
            "/canary: 0 is less than the minimum of 1",
            "/mode:",
            "'extra' was unexpected",
        ] {
            assert!(said.contains(part), "{said}");
        }
    }

    #[test]
    fn batches_are_bounded_by_items_and_bytes() {
        let small = vec![10usize; 1200];
        let runs = batches(&small, |n| *n);
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [BATCH_ITEMS, BATCH_ITEMS, 1200 - 2 * BATCH_ITEMS]
        );
        let large = vec![
            BATCH_PAYLOAD_BYTES / 2,
            BATCH_PAYLOAD_BYTES / 2,
            1,
            BATCH_PAYLOAD_BYTES * 2,
            1,
        ];
        let runs = batches(&large, |n| *n);
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [2, 1, 1, 1]
        );
        assert!(batches(&Vec::<usize>::new(), |n| *n).is_empty());
    }
}

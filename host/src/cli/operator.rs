//! The operator commands, `rollway firmware|jobs|devices` and the API
//! side of `rollway plugin`: clients of the REST API (`client.rs`) that print a summary, or the raw JSON with
//! `--json`, and draw progress on stderr when it is a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{HumanBytes, ProgressBar};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{UPLOAD_TEMPLATE, WATCH_TEMPLATE, progress_style};
use crate::client::{ApiClient, ApiProblem};
use crate::domain::{ExecutionStatus, JobStatus};
use crate::jobs::DEFAULT_ROLLOUT_PLUGIN;

// How the operator commands (`firmware`, `jobs`, `devices`) reach the API
// and print its answers. (A plain comment: a doc comment here would become
// the help text of the commands it is flattened into.)
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ApiArgs {
    /// Base URL of the Rollway API.
    #[arg(long, env = "ROLLWAY_API", default_value = crate::client::DEFAULT_API, global = true)]
    api: String,
    /// An API token: viewer to read; operator to upload, create and steer.
    #[arg(long, env = "ROLLWAY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON answer, pretty, on stdout (for scripts) instead
    /// of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum FirmwareCommand {
    /// Upload an image: the family's device plugin checks it and reads its
    /// version; prints the stored record (id, sha256, size, metadata).
    #[command(
        after_help = "Examples:\n  rollway firmware upload build/app.bin --family esp32\n  rollway firmware upload app.bin --family stm32 --version 1.4.0\n  FW=$(rollway firmware upload app.bin --family esp32 --json | jq -r .id)"
    )]
    Upload {
        /// The image file.
        file: PathBuf,
        /// Device family the image is for (esp32, stm32, jetson, or a
        /// plugin's family).
        #[arg(long)]
        family: String,
        /// The image's version; required when the family's plugin cannot
        /// read one from the image, and must match the one it reads.
        #[arg(long)]
        version: Option<String>,
        /// Anti-rollback security counter (default: the one the plugin
        /// reads from the image, else 0). Raise it with a release that
        /// fixes a vulnerability: devices then refuse older images.
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        security_counter: Option<i64>,
    },
    /// Allow an image to lower devices' security counter (admins; audited).
    #[command(
        after_help = "Example:\n  rollway firmware allow-downgrade <id> --reason '3.1 bricks rev B boards; back to 3.0'"
    )]
    AllowDowngrade {
        /// The firmware id.
        id: String,
        /// Why: kept with the approval and in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// List firmware, newest first.
    #[command(
        after_help = "Examples:\n  rollway firmware list\n  rollway firmware list --family esp32 --json | jq -r '.items[0].id'"
    )]
    List {
        /// Only firmware for this family.
        #[arg(long)]
        family: Option<String>,
        /// Most records to show.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum JobsCommand {
    /// Create a job: a firmware for listed devices, or for every device a
    /// filter matches (--family, --model, --tag).
    #[command(
        after_help = "Examples:\n  rollway jobs create --firmware <id> --device VIN123 --device VIN124\n  rollway jobs create --firmware <id> --family esp32 --tag site=north --watch\n  rollway jobs create --firmware <id> --family stm32 --name 'brake fix' \\\n      --rollout-config '{\"batches\":[10,50,100],\"success_threshold\":80}' --max-retries 2\n  rollway jobs create --firmware <id> --family jetson --start 2030-01-01T02:00:00Z\n  rollway jobs create --firmware <id> --device VIN123 --start emergency\n  rollway jobs create --firmware <id> --family esp32 --window 'mon-fri 22:00-05:00' --time-zone Europe/Moscow"
    )]
    Create(Box<JobCreateArgs>),
    /// List jobs, newest first.
    #[command(
        after_help = "Examples:\n  rollway jobs list\n  rollway jobs list --status running --json | jq -r '.items[].id'"
    )]
    List {
        /// Only jobs in this status.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(JobStatus::ALL.map(JobStatus::as_str)))]
        status: Option<String>,
        /// Most jobs to show.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// Show a job with its executions counted by status and by batch.
    #[command(
        after_help = "Examples:\n  rollway jobs show <id>\n  rollway jobs show <id> --watch             until it ends; fails when the job failed or was cancelled\n  rollway jobs show <id> --watch --json      prints the final job only"
    )]
    Show {
        /// The job's id.
        id: Uuid,
        /// Poll every second, with a progress bar of finished executions,
        /// until the job is completed, failed or cancelled; exits non-zero
        /// when it failed or was cancelled.
        #[arg(long)]
        watch: bool,
    },
    /// Pause a running job: nothing new is dispatched until it resumes.
    #[command(after_help = "Example:\n  rollway jobs pause <id>")]
    Pause {
        /// The job's id.
        id: Uuid,
    },
    /// Resume a paused job (a job its rollout paused goes on with the next
    /// batch).
    #[command(after_help = "Example:\n  rollway jobs resume <id>")]
    Resume {
        /// The job's id.
        id: Uuid,
    },
    /// Cancel a job; its unfinished executions are cancelled.
    #[command(after_help = "Example:\n  rollway jobs cancel <id>")]
    Cancel {
        /// The job's id.
        id: Uuid,
    },
    /// Queue a job's failed, timed-out and expired executions again, each
    /// as a new attempt (a finished job runs again for them).
    #[command(
        after_help = "Examples:\n  rollway jobs retry-failed <id>\n  rollway jobs retry-failed <id> --delivery-window 259200   three more days to reach them"
    )]
    RetryFailed {
        /// The job's id.
        id: Uuid,
        /// Seconds from now the retried executions may still be delivered
        /// (default: the job's delivery deadline, in seconds).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=31_536_000))]
        delivery_window: Option<u32>,
    },
    /// Cancel one device's execution of a job.
    #[command(after_help = "Example:\n  rollway jobs cancel-device <id> VIN123")]
    CancelDevice {
        /// The job's id.
        id: Uuid,
        /// The device.
        device: String,
    },
}

// What `rollway jobs create` sends; the server checks it and fills in the
// defaults the flags name.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("targets")
        .required(true)
        .multiple(true)
        .args(["devices", "family", "model", "tags"])
))]
pub(super) struct JobCreateArgs {
    /// The firmware to install (its id, from `rollway firmware list`).
    #[arg(long, value_name = "ID")]
    firmware: Uuid,
    /// A device to update; repeat for more.
    #[arg(long = "device", value_name = "ID", conflicts_with_all = ["family", "model", "tags"])]
    devices: Vec<String>,
    /// Update the devices of this family (the firmware's own), narrowed by
    /// --model and --tag.
    #[arg(long)]
    family: Option<String>,
    /// Only devices of this model.
    #[arg(long)]
    model: Option<String>,
    /// Only devices carrying this tag; repeat for more (all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    tags: Vec<(String, String)>,
    /// A label for operators.
    #[arg(long)]
    name: Option<String>,
    /// `now`, `emergency` (now, ahead of every other job) or an RFC 3339
    /// time.
    #[arg(long, default_value = "now")]
    start: String,
    /// The rollout strategy plugin (the server's default: rollout-percent).
    #[arg(long, value_name = "PLUGIN")]
    rollout_plugin: Option<String>,
    /// The rollout plugin's configuration, a JSON object.
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    rollout_config: Option<Value>,
    /// Seconds a connected device that answered its command may go
    /// without progress, from its last status (the server's default: 3600).
    /// A device that is away, or never answered, waits for its next hello.
    #[arg(long, alias = "progress-timeout", value_name = "SECS")]
    device_timeout: Option<u32>,
    /// Seconds after the job's start that its devices may still be
    /// updated; what is undelivered then ends `expired` (the server's
    /// default: 1209600, 14 days).
    #[arg(long, value_name = "SECS")]
    delivery_deadline: Option<u32>,
    /// When devices may flash: `immediate`, or `when-safe` (download now,
    /// flash when the vehicle is parked with its engine off; the server's
    /// default: immediate).
    #[arg(long, value_parser = ["immediate", "when-safe"])]
    install: Option<String>,
    /// Re-dispatches after an error or a timeout, 0 to 10 (the server's
    /// default: 0).
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// A maintenance window, `DAYS FROM-TO` in --time-zone: the job sends
    /// nothing new outside its windows (repeat for more; e.g. 'mon-fri
    /// 22:00-05:00', 'weekends 00:00-23:59', 'daily 01:00-04:00').
    #[arg(long = "window", value_name = "SPEC", value_parser = crate::jobs::windows::parse)]
    windows: Vec<crate::jobs::windows::Window>,
    /// The IANA time zone of the windows (default: UTC).
    #[arg(long, value_name = "ZONE", requires = "windows")]
    time_zone: Option<String>,
    /// An RFC 3339 time by which the job is over: nothing is sent after
    /// it, and what is not finished then ends `expired`.
    #[arg(long, value_name = "TIME")]
    end: Option<String>,
    /// Then follow the job until it ends, as `rollway jobs show --watch`.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum DevicesCommand {
    /// List devices, filtered, ordered by id.
    #[command(
        after_help = "Examples:\n  rollway devices list --family stm32 --tag site:north --tag zone:b\n  rollway devices list --q VIN12 --limit 20\n  rollway devices list --installed-version 1.4.0 --away\n  rollway devices list --gateway JET-1 --json | jq -r '.items[].id'"
    )]
    List {
        /// Only devices of this family.
        #[arg(long)]
        family: Option<String>,
        /// Only devices of this model.
        #[arg(long)]
        model: Option<String>,
        /// Only devices reached through this gateway.
        #[arg(long, value_name = "ID")]
        gateway: Option<String>,
        /// Only devices whose id starts with this text.
        #[arg(long, value_name = "PREFIX")]
        q: Option<String>,
        /// Only devices that run this firmware version.
        #[arg(long, value_name = "VERSION")]
        installed_version: Option<String>,
        /// Only devices connected now.
        #[arg(long, conflicts_with = "away")]
        online: bool,
        /// Only devices away (not connected).
        #[arg(long)]
        away: bool,
        /// Only devices flashed outside Rollway: they run another version
        /// than Rollway installed or was told.
        #[arg(long)]
        drift: bool,
        /// Only devices carrying this tag; repeat for more (all must match).
        #[arg(long = "tag", value_name = "KEY:VALUE", value_parser = parse_tag_filter)]
        tags: Vec<String>,
        /// Most devices to show.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
}

/// Most results one list request asks for (the API's largest page).
const MAX_PAGE: u32 = 1000;
/// Failed polls in a row a watch tolerates while the API is unreachable or
/// answers 5xx.
const WATCH_RETRIES: u32 = 30;

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let token = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .context("no API token: pass --token or set ROLLWAY_TOKEN")?;
        ApiClient::new(&self.api, token)
    }

    /// Progress is drawn on stderr, only when it is a terminal and never
    /// with --json.
    fn progress(&self) -> bool {
        !self.json && std::io::stderr().is_terminal()
    }
}

/// `KEY=VALUE` (a tag of a job's target filter).
fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("'{raw}' is not KEY=VALUE")),
    }
}

/// `KEY:VALUE` (a tag filter of the device list, as the API takes it).
fn parse_tag_filter(raw: &str) -> Result<String, String> {
    match raw.split_once(':') {
        Some((key, _)) if !key.is_empty() && !raw.contains(',') => Ok(raw.to_owned()),
        Some(_) if raw.contains(',') => Err(format!(
            "'{raw}': a tag filter cannot contain ','; repeat --tag instead"
        )),
        _ => Err(format!("'{raw}' is not KEY:VALUE")),
    }
}

/// The API side of `rollway plugin`: what the host has loaded, and the
/// admin's actions on it.
#[derive(Debug, Subcommand)]
pub(super) enum PluginApiCommand {
    /// List the host's plugins: kind, version, state, families and the
    /// version of their settings.
    #[command(
        after_help = "Examples:\n  rollway plugin list\n  rollway plugin list --json | jq -r '.items[].name'"
    )]
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Upload a plugin component (admins): a new plugin, or a new version
    /// of one (it must take the plugin's settings in force).
    #[command(
        after_help = "Example:\n  rollway plugin upload target/wasm32-wasip2/release/device_nrf52.wasm"
    )]
    Upload {
        /// The component (`.wasm`).
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a plugin's uploaded versions: which is in force, and how many
    /// unfinished jobs run on each (a job keeps the rollout version it was
    /// created with).
    #[command(after_help = "Example:\n  rollway plugin versions rollout-canary")]
    Versions {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete an uploaded plugin (admins), or with --version one old
    /// version of it; refused while unfinished jobs use it.
    #[command(
        after_help = "Examples:\n  rollway plugin delete rollout-canary --version 3f2a…\n  rollway plugin delete device-nrf52"
    )]
    Delete {
        name: String,
        /// The SHA-256 of the version to delete (`rollway plugin versions`).
        #[arg(long, value_name = "SHA256")]
        version: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Enable a plugin (admins), also one disabled for trapping.
    Enable {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Disable a plugin (admins): its calls are refused until enabled.
    Disable {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a plugin's settings in force, set new ones (admins; checked by
    /// the plugin, versioned, audited, in force on every replica within
    /// seconds), or list every version.
    #[command(
        after_help = "Examples:\n  rollway plugin config device-stm32\n  rollway plugin config device-stm32 --set '{\"chunk_size\":512,\"bus\":\"can-fd\"}'\n  rollway plugin config rollout-percent --set-file defaults.json --expected-version 3\n  rollway plugin config device-stm32 --history\n\nA device plugin's settings go to each of its calls; a rollout plugin's are\nthe defaults under each new job's --rollout-config (the job's keys win)."
    )]
    Config {
        /// The plugin's name.
        name: String,
        /// New settings, a JSON object (replacing the whole settings).
        #[arg(long, value_parser = parse_json_object, conflicts_with_all = ["set_file", "history"])]
        set: Option<Value>,
        /// New settings from a JSON file.
        #[arg(long, value_name = "FILE", conflicts_with = "history")]
        set_file: Option<PathBuf>,
        /// Refuse the change when the settings are no longer at this
        /// version (someone else changed them).
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<i64>,
        /// List every version, newest first.
        #[arg(long)]
        history: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Dry-run a rollout strategy: run it against a simulated fleet in
    /// virtual time and print its plan and the timeline of its decisions
    /// with the counts at each step. Nothing is sent, nothing is kept.
    #[command(
        after_help = "Examples:\n  rollway plugin simulate rollout-percent --config percent.json --devices 1000 --fail-rate flash=0.03\n  rollway plugin simulate rollout-rings --job 0193…  --fail-rate power=0.05 --fail-rate flash=0.01 --seed 7\n  rollway plugin simulate rollout-exponential --devices 5000 --speed 600\n\nClasses: download, verification, incompatible, flash, power, rejected-by-device,\ntimeout (a device that goes silent mid-update), other. The same seed gives the\nsame timeline; `rollway sim --seed` fails the devices it foretells."
    )]
    Simulate {
        /// The rollout plugin's name.
        name: String,
        /// The strategy's configuration, a JSON file (its settings fill in
        /// what it leaves out, as for a new job).
        #[arg(long, value_name = "FILE", conflicts_with = "job")]
        config: Option<PathBuf>,
        /// A synthetic fleet of N devices without attributes (default 1000).
        #[arg(long, value_name = "N", conflicts_with = "job")]
        devices: Option<u32>,
        /// An existing job, run as it is planned (its groups and devices,
        /// strategy version and configuration).
        #[arg(long, value_name = "ID")]
        job: Option<Uuid>,
        /// The share of attempts failing with a class, CLASS=RATE;
        /// repeat for more.
        #[arg(long = "fail-rate", value_name = "CLASS=RATE", value_parser = parse_fail_rate)]
        fail_rates: Vec<(String, f64)>,
        /// Which devices fail (default 1).
        #[arg(long)]
        seed: Option<u64>,
        /// Average seconds from a device's command to its last status
        /// (default 300).
        #[arg(long, value_name = "SECS")]
        update_secs: Option<u32>,
        /// Attempts after the first of a failed device (default: the
        /// job's, or 0).
        #[arg(long)]
        max_retries: Option<u32>,
        /// Play the timeline back X times faster than real time (e.g. 600:
        /// ten minutes a second); default: print it at once.
        #[arg(long, value_name = "X", value_parser = parse_speed)]
        speed: Option<f64>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `CLASS=RATE` of `--fail-rate`.
fn parse_fail_rate(raw: &str) -> Result<(String, f64), String> {
    let (class, rate) = raw
        .split_once('=')
        .ok_or_else(|| format!("'{raw}' is not CLASS=RATE (e.g. flash=0.02)"))?;
    let rate: f64 = rate
        .trim()
        .parse()
        .map_err(|_| format!("'{rate}' is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("the rate {rate} is not between 0 and 1"));
    }
    Ok((class.trim().to_owned(), rate))
}

fn parse_speed(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(speed) if speed > 0.0 && speed.is_finite() => Ok(speed),
        _ => Err(format!("'{raw}' is not a positive number")),
    }
}

pub(super) async fn run_plugin_api(command: PluginApiCommand) -> anyhow::Result<()> {
    match command {
        PluginApiCommand::List { api } => {
            let page = api
                .client()?
                .get("/plugins", &[])
                .await
                .context("listing plugins")?;
            if api.json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = items(&page)
                .iter()
                .map(|p| {
                    let families = p["families"].as_array().map_or_else(String::new, |f| {
                        f.iter().map(text).collect::<Vec<_>>().join(",")
                    });
                    vec![
                        text(&p["name"]),
                        text(&p["kind"]),
                        text(&p["version"]),
                        text(&p["state"]),
                        if families.is_empty() {
                            "-".to_owned()
                        } else {
                            families
                        },
                        text(&p["config_version"]),
                    ]
                })
                .collect();
            print_table(
                &["NAME", "KIND", "VERSION", "STATE", "FAMILIES", "SETTINGS"],
                &rows,
                "no plugins",
            );
            Ok(())
        }
        PluginApiCommand::Upload { file, api } => {
            let client = api.client()?;
            let opened = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = opened.metadata().await?.len();
            let plugin = client
                .post_file("/plugins", &[], opened, len, |_| {})
                .await
                .with_context(|| format!("uploading {}", file.display()))?;
            if api.json {
                return print_json(&plugin);
            }
            println!(
                "{} {} ({} plugin, WIT {}), sha256 {}",
                text(&plugin["name"]),
                text(&plugin["version"]),
                text(&plugin["kind"]),
                text(&plugin["wit_version"]),
                text(&plugin["sha256"])
            );
            Ok(())
        }
        PluginApiCommand::Versions { name, api } => {
            let page = api
                .client()?
                .get(&format!("/plugins/{name}/versions"), &[])
                .await
                .with_context(|| format!("listing the versions of {name}"))?;
            if api.json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = items(&page)
                .iter()
                .map(|v| {
                    vec![
                        text(&v["sha256"]),
                        text(&v["version"]),
                        when(&v["uploaded_at"]),
                        if v["in_force"] == true {
                            "in force"
                        } else {
                            "kept"
                        }
                        .to_owned(),
                        text(&v["unfinished_jobs"]),
                    ]
                })
                .collect();
            print_table(
                &["SHA256", "VERSION", "UPLOADED", "STATE", "UNFINISHED JOBS"],
                &rows,
                "no uploaded version (a shipped plugin)",
            );
            Ok(())
        }
        PluginApiCommand::Simulate {
            name,
            config,
            devices,
            job,
            fail_rates,
            seed,
            update_secs,
            max_retries,
            speed,
            api,
        } => {
            let mut options = json!({});
            for (key, value) in [
                ("seed", seed.map(|s| json!(s))),
                ("update_secs", update_secs.map(|s| json!(s))),
                ("max_retries", max_retries.map(|s| json!(s))),
            ] {
                if let Some(value) = value {
                    options[key] = value;
                }
            }
            simulate(
                &api,
                &name,
                config.as_deref(),
                devices,
                job,
                &fail_rates,
                options,
                speed,
            )
            .await
        }
        PluginApiCommand::Delete { name, version, api } => {
            let path = match &version {
                Some(sha256) => format!("/plugins/{name}/versions/{sha256}"),
                None => format!("/plugins/{name}"),
            };
            api.client()?
                .delete(&path)
                .await
                .with_context(|| format!("deleting {name}"))?;
            match version {
                Some(sha256) => eprintln!("{name}: version {sha256} deleted"),
                None => eprintln!("{name}: deleted"),
            }
            Ok(())
        }
        PluginApiCommand::Enable { name, api } => plugin_state(&api, &name, "enable").await,
        PluginApiCommand::Disable { name, api } => plugin_state(&api, &name, "disable").await,
        PluginApiCommand::Config {
            name,
            set,
            set_file,
            expected_version,
            history,
            api,
        } => {
            let client = api.client()?;
            let path = format!("/plugins/{name}/config");
            if history {
                let page = list_pages(
                    &client,
                    &format!("/plugins/{name}/configs"),
                    Vec::new(),
                    1000,
                )
                .await
                .with_context(|| format!("listing the settings of {name}"))?;
                if api.json {
                    return print_json(&page);
                }
                let rows: Vec<Vec<String>> = items(&page)
                    .iter()
                    .map(|c| {
                        vec![
                            text(&c["version"]),
                            when(&c["set_at"]),
                            text(&c["set_by"]),
                            c["config"].to_string(),
                        ]
                    })
                    .collect();
                print_table(&["VERSION", "SET AT", "BY", "SETTINGS"], &rows, "never set");
                return Ok(());
            }
            let new = match (set, set_file) {
                (Some(config), _) => Some(config),
                (None, Some(file)) => {
                    let raw = tokio::fs::read_to_string(&file)
                        .await
                        .with_context(|| format!("reading {}", file.display()))?;
                    Some(
                        parse_json_object(&raw)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
                    )
                }
                (None, None) => None,
            };
            let answer = match new {
                Some(config) => {
                    let mut body = json!({ "config": config });
                    if let Some(version) = expected_version {
                        body["expected_version"] = json!(version);
                    }
                    client
                        .put_json(&path, &body)
                        .await
                        .with_context(|| format!("setting the settings of {name}"))?
                }
                None => client
                    .get(&path, &[])
                    .await
                    .with_context(|| format!("reading the settings of {name}"))?,
            };
            if api.json {
                return print_json(&answer);
            }
            match answer["version"].as_i64() {
                Some(0) => eprintln!("{name}: never set; its calls get {{}}"),
                _ => eprintln!(
                    "{name}: version {}, set by {} at {}",
                    text(&answer["version"]),
                    text(&answer["set_by"]),
                    when(&answer["set_at"])
                ),
            }
            print_json(&answer["config"])
        }
    }
}

/// `rollway plugin simulate`: the dry run's request, and its answer
/// printed (played back at `speed` times real time when given).
#[allow(clippy::too_many_arguments)]
async fn simulate(
    api: &ApiArgs,
    name: &str,
    config: Option<&Path>,
    devices: Option<u32>,
    job: Option<Uuid>,
    fail_rates: &[(String, f64)],
    options: Value,
    speed: Option<f64>,
) -> anyhow::Result<()> {
    let mut body = options;
    body["fleet"] = match job {
        Some(id) => json!({ "job_id": id }),
        None => json!({ "devices": devices.unwrap_or(1000) }),
    };
    if let Some(file) = config {
        let raw =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        body["config"] =
            parse_json_object(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    let rates: serde_json::Map<String, Value> = fail_rates
        .iter()
        .map(|(class, rate)| (class.clone(), json!(rate)))
        .collect();
    body["fail_rates"] = Value::Object(rates);
    let answer = api
        .client()?
        .post_json(&format!("/plugins/{name}/simulate"), &body)
        .await
        .with_context(|| format!("the dry run of {name}"))?;
    if api.json {
        return print_json(&answer);
    }
    let plan: Vec<String> = array(&answer["plan"])
        .iter()
        .map(|g| match g["label"].as_str() {
            Some(label) if !label.is_empty() => format!("{label} {}", text(&g["size"])),
            _ => text(&g["size"]),
        })
        .collect();
    println!(
        "{name} over {} devices (seed {}): {} groups [{}]",
        text(&answer["devices"]),
        text(&answer["seed"]),
        plan.len(),
        plan.join(", ")
    );
    let mut shown = 0.0;
    for step in array(&answer["steps"]) {
        let at = step["at_secs"].as_f64().unwrap_or_default();
        if let Some(speed) = speed {
            let gap = ((at - shown) / speed).clamp(0.0, 3600.0);
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            shown = at;
        }
        let decision = &step["decision"];
        let mut what = text(&decision["decision"]);
        match what.as_str() {
            "wait" if step["evaluations"].as_u64().unwrap_or(1) > 1 => {
                what = format!("wait ×{}", text(&step["evaluations"]));
            }
            "start-next-batch" => what = format!("start group {}", text(&step["group"])),
            "set-rate" => what = format!("set rate {}/min", text(&decision["per_minute"])),
            "pause" | "abort" => what = format!("{what}: {}", text(&decision["reason"])),
            _ => {}
        }
        let counts = &step["counts"];
        println!(
            "{:>9}  {what:<40}  pending {} · in flight {} · done {} · failed {} · timed out {}",
            duration_text(at),
            text(&counts["pending"]),
            text(&counts["in_flight"]),
            text(&counts["succeeded"]),
            text(&counts["failed"]),
            text(&counts["timed_out"]),
        );
    }
    println!(
        "{} after {} ({} evaluations){}",
        text(&answer["outcome"]),
        duration_text(answer["duration_secs"].as_f64().unwrap_or_default()),
        text(&answer["evaluations"]),
        answer["reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// Virtual time as `t+1h02m05s`.
fn duration_text(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("t+{s}s"),
        (0, m, s) => format!("t+{m}m{s:02}s"),
        (h, m, s) => format!("t+{h}h{m:02}m{s:02}s"),
    }
}

async fn plugin_state(api: &ApiArgs, name: &str, action: &str) -> anyhow::Result<()> {
    let plugin = api
        .client()?
        .post(&format!("/plugins/{name}/{action}"))
        .await
        .with_context(|| format!("{action} {name}"))?;
    if api.json {
        return print_json(&plugin);
    }
    println!("{name}: {}", text(&plugin["state"]));
    Ok(())
}

/// A JSON object (a rollout plugin's configuration, a plugin's settings).
fn parse_json_object(raw: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(raw) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("must be a JSON object, e.g. '{\"batches\":[10,100]}'".to_owned()),
        Err(error) => Err(format!("not JSON: {error}")),
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(super) async fn run_firmware(api: &ApiArgs, command: FirmwareCommand) -> anyhow::Result<()> {
    let client = api.client()?;
    match command {
        FirmwareCommand::Upload {
            file,
            family,
            version,
            security_counter,
        } => {
            let mut query = vec![("family", family)];
            if let Some(version) = version {
                query.push(("version", version));
            }
            if let Some(counter) = security_counter {
                query.push(("security_counter", counter.to_string()));
            }
            let record = upload_firmware(&client, &file, &query, api.progress()).await?;
            if api.json {
                return print_json(&record);
            }
            print_firmware(&record);
            Ok(())
        }
        FirmwareCommand::AllowDowngrade { id, reason } => {
            let record = client
                .post_json(
                    &format!("/firmware/{id}/allow-downgrade"),
                    &serde_json::json!({ "reason": reason }),
                )
                .await
                .context("allowing the downgrade")?;
            if api.json {
                return print_json(&record);
            }
            print_firmware(&record);
            Ok(())
        }
        FirmwareCommand::List { family, limit } => {
            let mut query = Vec::new();
            if let Some(family) = family {
                query.push(("family", family));
            }
            let page = list_pages(&client, "/firmware", query, limit)
                .await
                .context("listing firmware")?;
            if api.json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = items(&page)
                .iter()
                .map(|f| {
                    vec![
                        text(&f["id"]),
                        text(&f["family"]),
                        text(&f["version"]),
                        HumanBytes(f["size"].as_u64().unwrap_or(0)).to_string(),
                        f["sha256"].as_str().map_or_else(
                            || "-".to_owned(),
                            |s| s.chars().take(16).collect::<String>(),
                        ),
                        when(&f["created_at"]),
                    ]
                })
                .collect();
            print_table(
                &["ID", "FAMILY", "VERSION", "SIZE", "SHA256", "CREATED"],
                &rows,
                "no firmware",
            );
            more_hint(&page);
            Ok(())
        }
    }
}

/// Streams `file` to `POST /firmware`, with a progress bar on stderr
/// counting the bytes handed to the HTTP client.
async fn upload_firmware(
    client: &ApiClient,
    file: &Path,
    query: &[(&str, String)],
    progress: bool,
) -> anyhow::Result<Value> {
    let handle = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let metadata = handle
        .metadata()
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    if !metadata.is_file() {
        anyhow::bail!("{} is not a file", file.display());
    }
    let len = metadata.len();
    let bar = if progress {
        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let bar = ProgressBar::new(len)
            .with_style(progress_style(UPLOAD_TEMPLATE))
            .with_prefix(name);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let counter = bar.clone();
    let result = client
        .post_file("/firmware", query, handle, len, move |n| {
            counter.inc(n as u64);
            if counter.position() >= len {
                counter.set_message("sent; the server is checking the image");
            }
        })
        .await;
    bar.finish_and_clear();
    result.with_context(|| format!("uploading {}", file.display()))
}

fn print_firmware(record: &Value) {
    let size = record["size"].as_u64().unwrap_or(0);
    let mut metadata = Vec::new();
    flatten("", &record["metadata"], &mut metadata);
    print_fields(&[
        ("id", text(&record["id"])),
        ("family", text(&record["family"])),
        ("version", text(&record["version"])),
        ("sha256", text(&record["sha256"])),
        ("size", format!("{size} bytes ({})", HumanBytes(size))),
        ("security counter", text(&record["security_counter"])),
        (
            "downgrade",
            match record["downgrade_allowed_by"].as_str() {
                Some(by) => format!(
                    "allowed by {by}: {}",
                    record["downgrade_reason"].as_str().unwrap_or("-")
                ),
                None => "not allowed".to_owned(),
            },
        ),
        (
            "metadata",
            if metadata.is_empty() {
                "-".to_owned()
            } else {
                metadata.join(", ")
            },
        ),
    ]);
}

pub(super) async fn run_jobs(api: &ApiArgs, command: JobsCommand) -> anyhow::Result<()> {
    let client = api.client()?;
    match command {
        JobsCommand::Create(args) => {
            let watch = args.watch;
            let request = job_request(*args)?;
            let job = client
                .post_json("/jobs", &request)
                .await
                .context("creating the job")?;
            if !watch {
                if api.json {
                    return print_json(&job);
                }
                print_job(&job);
                return Ok(());
            }
            let id = job["id"]
                .as_str()
                .context("the API answered without a job id")?
                .to_owned();
            if !api.json {
                eprintln!("created job {id}; watching it (Ctrl-C stops watching, not the job)");
            }
            let last = watch_job(&client, &id, api).await?;
            job_outcome(&last, api.json)
        }
        JobsCommand::List { status, limit } => {
            let mut query = Vec::new();
            if let Some(status) = status {
                query.push(("status", status));
            }
            let page = list_pages(&client, "/jobs", query, limit)
                .await
                .context("listing jobs")?;
            if api.json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = items(&page)
                .iter()
                .map(|j| {
                    vec![
                        text(&j["id"]),
                        text(&j["status"]),
                        text(&j["kind"]),
                        when(&j["start_at"]),
                        text(&j["name"]),
                    ]
                })
                .collect();
            print_table(&["ID", "STATUS", "KIND", "START", "NAME"], &rows, "no jobs");
            more_hint(&page);
            Ok(())
        }
        JobsCommand::Show { id, watch } => {
            if watch {
                let last = watch_job(&client, &id.to_string(), api).await?;
                return job_outcome(&last, api.json);
            }
            let job = client
                .get(&format!("/jobs/{id}"), &[])
                .await
                .with_context(|| format!("reading job {id}"))?;
            if api.json {
                return print_json(&job);
            }
            print_job(&job);
            Ok(())
        }
        JobsCommand::Pause { id } => steer_job(&client, id, "pause", "pausing", api.json).await,
        JobsCommand::Resume { id } => steer_job(&client, id, "resume", "resuming", api.json).await,
        JobsCommand::Cancel { id } => {
            steer_job(&client, id, "cancel", "cancelling", api.json).await
        }
        JobsCommand::RetryFailed {
            id,
            delivery_window,
        } => {
            let mut path = format!("/jobs/{id}/retry-failed");
            if let Some(secs) = delivery_window {
                path.push_str(&format!("?delivery_window_secs={secs}"));
            }
            let answer = client
                .post(&path)
                .await
                .with_context(|| format!("retrying job {id}"))?;
            if api.json {
                return print_json(&answer);
            }
            println!(
                "{} executions queued again{}",
                answer["retried"],
                if answer["reopened"] == Value::Bool(true) {
                    "; the job runs again"
                } else {
                    ""
                }
            );
            print_job(&answer["job"]);
            Ok(())
        }
        JobsCommand::CancelDevice { id, device } => {
            let execution = client
                .post(&format!("/jobs/{id}/executions/{device}/cancel"))
                .await
                .with_context(|| format!("cancelling {device}'s execution of job {id}"))?;
            if api.json {
                return print_json(&execution);
            }
            println!("{device}: {}", execution["status"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

/// The body of `POST /jobs` from the command line.
fn job_request(args: JobCreateArgs) -> anyhow::Result<Value> {
    let targets = if args.devices.is_empty() {
        let mut filter = serde_json::Map::new();
        if let Some(family) = args.family {
            filter.insert("family".to_owned(), Value::String(family));
        }
        if let Some(model) = args.model {
            filter.insert("model".to_owned(), Value::String(model));
        }
        let mut tags = BTreeMap::new();
        for (key, value) in args.tags {
            if tags.insert(key.clone(), value).is_some() {
                anyhow::bail!("--tag {key} is given twice");
            }
        }
        if !tags.is_empty() {
            filter.insert("tags".to_owned(), json!(tags));
        }
        json!({ "filter": filter })
    } else {
        json!({ "devices": args.devices })
    };
    let mut request = json!({
        "firmware_id": args.firmware,
        "targets": targets,
        "start": args.start,
    });
    if let Some(name) = args.name {
        request["name"] = json!(name);
    }
    if args.rollout_plugin.is_some() || args.rollout_config.is_some() {
        request["rollout"] = json!({
            "plugin": args.rollout_plugin.as_deref().unwrap_or(DEFAULT_ROLLOUT_PLUGIN),
            "config": args.rollout_config.unwrap_or_else(|| json!({})),
        });
    }
    if let Some(secs) = args.device_timeout {
        request["device_timeout_secs"] = json!(secs);
    }
    if let Some(retries) = args.max_retries {
        request["max_retries"] = json!(retries);
    }
    if let Some(install) = &args.install {
        request["install"] = json!(install);
    }
    if let Some(secs) = args.delivery_deadline {
        request["delivery_deadline_secs"] = json!(secs);
    }
    if let Some(end) = &args.end {
        request["end"] = json!(end);
    }
    if !args.windows.is_empty() {
        request["windows"] = json!(crate::jobs::windows::Windows {
            time_zone: args.time_zone,
            times: args.windows,
        });
    }
    Ok(request)
}

/// `POST /jobs/{id}/{action}` and the job as it is afterwards.
async fn steer_job(
    client: &ApiClient,
    id: Uuid,
    action: &str,
    doing: &str,
    json: bool,
) -> anyhow::Result<()> {
    let job = client
        .post(&format!("/jobs/{id}/{action}"))
        .await
        .with_context(|| format!("{doing} job {id}"))?;
    if json {
        return print_json(&job);
    }
    print_job(&job);
    Ok(())
}

/// Polls `GET /jobs/{id}` every second until the job is completed, failed
/// or cancelled, and returns its last view. A bar of finished executions
/// over the total is drawn on a terminal; elsewhere (without --json) a line
/// goes to stderr whenever the counts change.
async fn watch_job(client: &ApiClient, id: &str, api: &ApiArgs) -> anyhow::Result<Value> {
    let path = format!("/jobs/{id}");
    let bar = if api.progress() {
        let bar = ProgressBar::new(0).with_style(progress_style(WATCH_TEMPLATE));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };
    let log_changes = !api.json && bar.is_hidden();
    let mut last_line = String::new();
    let mut failures = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let job = match client.get(&path, &[]).await {
            Ok(job) => {
                failures = 0;
                job
            }
            Err(error) if is_transient(&error) && failures < WATCH_RETRIES => {
                failures += 1;
                bar.set_message(format!("no answer from the API ({failures}); retrying"));
                if log_changes {
                    eprintln!("job {id}: no answer from the API ({error:#}); retrying");
                }
                continue;
            }
            Err(error) => {
                bar.finish_and_clear();
                return Err(error.context(format!("watching job {id}")));
            }
        };
        let status = job["status"].as_str().unwrap_or("?").to_owned();
        let total = job["total"].as_u64().unwrap_or(0);
        let finished = finished_executions(&job["counts"]);
        let line = format!("{status}: {}", count_summary(&job["counts"]));
        bar.set_length(total);
        bar.set_position(finished);
        bar.set_message(line.clone());
        if log_changes && line != last_line {
            eprintln!("job {id}: {finished}/{total} finished; {line}");
            last_line = line;
        }
        if JobStatus::parse(&status).is_ok_and(JobStatus::is_terminal) {
            bar.finish_and_clear();
            return Ok(job);
        }
    }
}

/// An error worth another poll: no answer at all, or a 5xx.
fn is_transient(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<ApiProblem>() {
        Some(problem) => problem.status.is_server_error(),
        None => true,
    }
}

/// Prints a watched job's last view; an error when it failed or was
/// cancelled, so that the exit status tells.
fn job_outcome(job: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(job)?;
    } else {
        print_job(job);
    }
    match job["status"].as_str() {
        Some(status @ ("failed" | "cancelled")) => {
            let reason = job["status_reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            anyhow::bail!("job {} ended {status}{reason}", text(&job["id"]))
        }
        _ => Ok(()),
    }
}

/// Executions in a final status (done, error, timed out, cancelled).
fn finished_executions(counts: &Value) -> u64 {
    ExecutionStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .filter_map(|s| counts[s.as_str()].as_u64())
        .sum()
}

/// `queued 2, downloading 1` in the life order of an execution, zeros left
/// out; `none` when all are zero.
fn count_summary(counts: &Value) -> String {
    let Some(map) = counts.as_object() else {
        return "none".to_owned();
    };
    let known: Vec<&str> = ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
    let mut parts: Vec<String> = known
        .iter()
        .filter_map(|name| map.get(*name).and_then(Value::as_u64).map(|n| (name, n)))
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    for (name, n) in map {
        if !known.contains(&name.as_str()) && n.as_u64().is_some_and(|n| n > 0) {
            parts.push(format!("{name} {n}"));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn print_job(job: &Value) {
    let mut fields = vec![("job", text(&job["id"]))];
    if let Some(name) = job["name"].as_str() {
        fields.push(("name", name.to_owned()));
    }
    let status = match job["status_reason"].as_str() {
        Some(reason) => format!("{} ({reason})", text(&job["status"])),
        None => text(&job["status"]),
    };
    fields.push(("status", status));
    fields.push((
        "start",
        format!("{}, {}", text(&job["kind"]), when(&job["start_at"])),
    ));
    fields.push(("firmware", text(&job["firmware_id"])));
    fields.push((
        "rollout",
        format!(
            "{} {}",
            text(&job["rollout_plugin"]),
            job.get("rollout_config").unwrap_or(&Value::Null)
        ),
    ));
    fields.push((
        "executions",
        format!(
            "{} total: {}",
            text(&job["total"]),
            count_summary(&job["counts"])
        ),
    ));
    if let Some(reasons) = job["waiting_reasons"].as_object().filter(|r| !r.is_empty()) {
        let reasons: Vec<String> = reasons
            .iter()
            .map(|(reason, n)| format!("{reason} {}", text(n)))
            .collect();
        fields.push(("waiting", reasons.join(", ")));
    }
    print_fields(&fields);
    if let Some(batches) = job["batches"].as_array().filter(|b| !b.is_empty()) {
        println!("batches:");
        for batch in batches {
            let group = batch["batch_group"]
                .as_i64()
                .map_or_else(|| "unplanned".to_owned(), |g| format!("#{g}"));
            println!(
                "  {group:<10} {} total: {}",
                text(&batch["total"]),
                count_summary(&batch["counts"])
            );
        }
    }
}

pub(super) async fn run_devices(api: &ApiArgs, command: DevicesCommand) -> anyhow::Result<()> {
    let client = api.client()?;
    match command {
        DevicesCommand::List {
            family,
            model,
            gateway,
            q,
            installed_version,
            online,
            away,
            drift,
            tags,
            limit,
        } => {
            let mut query = Vec::new();
            let connected = match (online, away) {
                (true, _) => Some("true".to_owned()),
                (_, true) => Some("false".to_owned()),
                _ => None,
            };
            for (key, value) in [
                ("family", family),
                ("model", model),
                ("gateway_id", gateway),
                ("q", q),
                ("installed_version", installed_version),
                ("online", connected),
                ("drift", drift.then(|| "true".to_owned())),
            ] {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            if !tags.is_empty() {
                query.push(("tags", tags.join(",")));
            }
            let page = list_pages(&client, "/devices", query, limit)
                .await
                .context("listing devices")?;
            if api.json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = items(&page)
                .iter()
                .map(|d| {
                    let tags = d["tags"].as_object().map_or_else(String::new, |tags| {
                        tags.iter()
                            .map(|(k, v)| format!("{k}={}", text(v)))
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                    vec![
                        text(&d["id"]),
                        text(&d["family"]),
                        text(&d["model"]),
                        text(&d["gateway_id"]),
                        if d["drift"] == true {
                            format!(
                                "{} (drift: expected {})",
                                text(&d["installed_version"]),
                                text(&d["expected_version"])
                            )
                        } else {
                            text(&d["installed_version"])
                        },
                        if d["online"] == true {
                            "online"
                        } else {
                            "away"
                        }
                        .to_owned(),
                        when(&d["last_seen"]),
                        if tags.is_empty() {
                            "-".to_owned()
                        } else {
                            tags
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "FAMILY",
                    "MODEL",
                    "GATEWAY",
                    "FIRMWARE",
                    "CONNECTION",
                    "LAST SEEN",
                    "TAGS",
                ],
                &rows,
                "no devices",
            );
            more_hint(&page);
            Ok(())
        }
    }
}

/// Reads pages of a list endpoint until `limit` items or the last page;
/// returns them as one page, `{items, next_cursor}`, the API's own shape.
async fn list_pages(
    client: &ApiClient,
    path: &str,
    query: Vec<(&'static str, String)>,
    limit: u32,
) -> anyhow::Result<Value> {
    let wanted = limit as usize;
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_size = (wanted - items.len()).min(MAX_PAGE as usize);
        let mut page_query = query.clone();
        page_query.push(("limit", page_size.to_string()));
        if let Some(cursor) = &cursor {
            page_query.push(("cursor", cursor.clone()));
        }
        let mut page = client.get(path, &page_query).await?;
        if let Some(Value::Array(batch)) = page.get_mut("items").map(Value::take) {
            items.extend(batch);
        }
        cursor = page
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if cursor.is_none() || items.len() >= wanted {
            break;
        }
    }
    Ok(json!({ "items": items, "next_cursor": cursor }))
}

fn items(page: &Value) -> &[Value] {
    array(&page["items"])
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn more_hint(page: &Value) {
    if page["next_cursor"].is_string() {
        eprintln!("(there are more; raise --limit to see them)");
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time from the API as `2025-01-31 12:00:00Z`.
fn when(value: &Value) -> String {
    match value.as_str() {
        Some(raw) => chrono::DateTime::parse_from_rfc3339(raw).map_or_else(
            |_| raw.to_owned(),
            |t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%SZ")
                    .to_string()
            },
        ),
        None => text(value),
    }
}

/// `key=value` lines of a JSON object, nested keys joined with dots.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        other if prefix.is_empty() => out.push(text(other)),
        other => out.push(format!("{prefix}={}", text(other))),
    }
}

/// `name:  value` lines, the values aligned.
fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (key, value) in fields {
        println!("{:<width$} {value}", format!("{key}:"));
    }
}

/// Rows under headers, columns aligned; `empty` when there are no rows.
fn print_table(headers: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        println!("{empty}");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = width.saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        println!("{}", out.trim_end());
    };
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    line(header.as_slice());
    for row in rows {
        line(row.as_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    #[test]
    fn job_targets_are_devices_or_a_filter() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["rollway", "jobs", "create"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv)
        };
        let firmware = "0190a000-0000-7000-8000-000000000000";
        assert!(parse(&["--firmware", firmware]).is_err(), "no target");
        assert!(
            parse(&["--firmware", firmware, "--device", "A", "--family", "esp32"]).is_err(),
            "devices and a filter"
        );
        let cli = parse(&[
            "--firmware",
            firmware,
            "--family",
            "esp32",
            "--tag",
            "site=north",
            "--rollout-config",
            r#"{"batches":[50,100]}"#,
            "--json",
        ])
        .unwrap();
        let Command::Jobs {
            api,
            command: JobsCommand::Create(args),
        } = cli.command
        else {
            panic!("parsed as another command");
        };
        assert!(api.json);
        let request = job_request(*args).unwrap();
        assert_eq!(
            request["targets"],
            json!({ "filter": { "family": "esp32", "tags": { "site": "north" } } })
        );
        assert_eq!(request["rollout"]["plugin"], DEFAULT_ROLLOUT_PLUGIN);
        assert_eq!(
            request["rollout"]["config"],
            json!({ "batches": [50, 100] })
        );
        assert_eq!(request["start"], "now");
        assert_eq!(request["firmware_id"], firmware);
    }

    #[test]
    fn flag_values_are_checked() {
        assert_eq!(
            parse_key_value("site=north=1").unwrap(),
            ("site".to_owned(), "north=1".to_owned())
        );
        assert!(parse_key_value("=x").is_err() && parse_key_value("site").is_err());
        assert_eq!(parse_tag_filter("site:north").unwrap(), "site:north");
        assert!(parse_tag_filter("site=north").is_err());
        assert!(parse_tag_filter("site:a,b").is_err());
        assert!(parse_json_object("{}").is_ok());
        assert!(parse_json_object("[1]").is_err() && parse_json_object("{").is_err());
    }

    #[test]
    fn counts_read_in_the_life_order_of_an_execution() {
        let counts =
            json!({ "cancelled": 1, "done": 3, "downloading": 0, "queued": 2, "timed_out": 1 });
        assert_eq!(
            count_summary(&counts),
            "queued 2, done 3, timed_out 1, cancelled 1"
        );
        assert_eq!(finished_executions(&counts), 5);
        assert_eq!(count_summary(&json!({ "queued": 0 })), "none");
    }
}

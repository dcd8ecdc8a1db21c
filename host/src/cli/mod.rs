//! The `rollway` command line: the host (`serve`, `migrate`, `up`), the
//! simulator, plugin checks, tokens, and the operator commands
//! (`operator.rs`).

mod operator;

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::domain::Role;
use crate::settings::{Settings, SettingsArgs};
use crate::startup::{Application, shutdown_signal};
use crate::up;
use crate::{auth, db, telemetry};
use operator::{ApiArgs, DevicesCommand, FirmwareCommand, JobsCommand};

#[derive(Debug, Parser)]
#[command(
    name = "rollway",
    version,
    about = "Over-the-air firmware updates for vehicle fleets",
    after_help = "Examples:\n  rollway up                          first look: private database, file store\n  DATABASE_URL=postgres://… rollway serve\n  rollway token create --role operator --name ci\n  export ROLLWAY_TOKEN=rw_…           the operator commands talk to ROLLWAY_API (http://127.0.0.1:8080)\n  rollway firmware upload app.bin --family esp32\n  rollway jobs create --firmware <id> --family esp32 --tag site=north --watch\n  rollway devices list --family esp32 --tag site:north"
)]
pub struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host against DATABASE_URL (migrates on start).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Everything on embedded defaults for a first look: a private
    /// PostgreSQL when DATABASE_URL is unset, an embedded MQTT broker when
    /// MQTT_URL is unset, a file store in the data directory, demo firmware
    /// for every family; prints the URL and an admin token.
    #[command(
        after_help = "Examples:\n  rollway up                      the host alone\n  rollway up --simulate 200       with 200 simulated devices, connected and ready\n  ROLLWAY_LISTEN=0.0.0.0:8080 rollway up --simulate 50"
    )]
    Up(UpArgs),
    /// Run a simulated fleet against a Rollway host until Ctrl-C.
    #[command(
        after_help = "Example:\n  rollway sim --api http://127.0.0.1:8080 --token rw_… --mqtt mqtt://127.0.0.1:1883 --devices 100 --truth truth.json"
    )]
    Sim(SimArgs),
    /// Upload and list firmware images, through the REST API.
    #[command(
        after_help = "Examples:\n  rollway firmware upload build/app.bin --family esp32\n  rollway firmware list --family stm32\n\nThe API comes from --api or ROLLWAY_API, the token from --token or ROLLWAY_TOKEN."
    )]
    Firmware {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: FirmwareCommand,
    },
    /// Create, watch and steer update jobs, through the REST API.
    #[command(
        after_help = "Examples:\n  rollway jobs create --firmware <id> --device VIN123 --device VIN124\n  rollway jobs list --status running\n  rollway jobs show <id> --watch\n  rollway jobs pause <id>\n\nThe API comes from --api or ROLLWAY_API, the token from --token or ROLLWAY_TOKEN."
    )]
    Jobs {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// List the fleet's devices, through the REST API.
    #[command(
        after_help = "Examples:\n  rollway devices list --family stm32 --tag site:north\n  rollway devices list --q VIN12 --limit 20\n\nThe API comes from --api or ROLLWAY_API, the token from --token or ROLLWAY_TOKEN."
    )]
    Devices {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Start, check, upload and configure plugins: `new` and `check` work
    /// on files here; the others go through the REST API.
    #[command(
        after_help = "Examples:\n  rollway plugin new device device-nrf52\n  rollway plugin check device_nrf52.wasm --image app.bin\n  rollway plugin upload device_nrf52.wasm\n  rollway plugin config device-stm32 --set '{\"bus\":\"can-fd\"}'\n\nThe API comes from --api or ROLLWAY_API, the token from --token or ROLLWAY_TOKEN."
    )]
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Manage API tokens directly in the database.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Register and connect this many simulated devices (Jetson gateways
    /// with STM32s behind them, and ESP32s), tagged `fleet=simulated`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=5000))]
    simulate: Option<u32>,
    /// Share of simulated updates that fail, 0 to 1.
    #[arg(long, default_value_t = 0.0, requires = "simulate")]
    sim_fail_rate: f64,
    /// Milliseconds between a simulated device's statuses.
    #[arg(long, default_value_t = 400, requires = "simulate")]
    sim_step_ms: u64,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Base URL of the Rollway API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// An operator (or admin) API token, to register the devices.
    #[arg(long, env = "ROLLWAY_TOKEN", hide_env_values = true)]
    token: String,
    /// The MQTT broker the host uses.
    #[arg(long = "mqtt", default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,
    /// How many devices to simulate.
    #[arg(long, default_value_t = 100)]
    devices: u32,
    /// Families, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "esp32,stm32,jetson")]
    families: Vec<String>,
    /// Share of updates that fail, 0 to 1: one rate for all, or per family
    /// (`esp32=0.1,stm32=0.02`).
    #[arg(long, default_value = "0")]
    fail_rate: String,
    /// Share of updates during which the device drops off the network for
    /// a few seconds, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    dropouts: f64,
    /// Share of statuses sent twice, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share of updates that also send a stale, backward status, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Share of downloads interrupted and resumed, 0 to 1.
    #[arg(long, default_value_t = 0.2)]
    interruptions: f64,
    /// Share of devices that go silent on their first command, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    silent: f64,
    /// Share of devices whose first attempt fails, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    fail_first: f64,
    /// What a failing update reports, its failure class first (`flash: …`,
    /// `power: …`; the device plugins classify it).
    #[arg(long, default_value = "flash: write failed at 0x08004000 (simulated)")]
    failure: String,
    /// Seeds which updates fail: the devices a dry run of the same seed
    /// (`rollway plugin simulate --seed`) foretells. Random without it.
    #[arg(long)]
    seed: Option<u64>,
    /// Milliseconds between a device's statuses.
    #[arg(long, default_value_t = 50)]
    step_ms: u64,
    /// Prefix of the simulated device ids.
    #[arg(long, default_value = "SIM-")]
    id_prefix: String,
    /// The security counter the devices start with: they refuse images
    /// whose counter is lower (unless allowed as a downgrade).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    security_counter: i64,
    /// The firmware version the devices start with, as they say when they
    /// connect.
    #[arg(long)]
    installed_version: Option<String>,
    /// Devices do not announce their presence (agents that predate it).
    #[arg(long)]
    no_presence: bool,
    /// Share of devices away (out of coverage) when their command is sent,
    /// 0 to 1: their last will says so, and they come back later.
    #[arg(long, default_value_t = 0.0)]
    offline: f64,
    /// How long an away device stays away, in seconds: MIN..MAX.
    #[arg(long, value_name = "MIN..MAX", default_value = "30..120", value_parser = parse_seconds_range)]
    offline_for: (u64, u64),
    /// Share of returning devices whose broker forgot their session (the
    /// queued command is lost; their hello brings it again), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    clean_session: f64,
    /// Devices, spread over the fleet, that come back from a repair shop
    /// just after connecting, running `{installed-version}-shop`, a
    /// version nobody sent them (Rollway flags them as drifted).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        requires = "installed_version"
    )]
    hand_flashed: u32,
    /// Share of devices that, under a job whose install policy is
    /// `when-safe`, hold the downloaded image (`waiting`, reason
    /// `engine-running`) until they are parked, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    wait_parked: f64,
    /// How long a waiting device waits to be parked, in seconds: MIN..MAX.
    #[arg(long, value_name = "MIN..MAX", default_value = "5..20", value_parser = parse_seconds_range)]
    parked_after: (u64, u64),
    /// How long flashing takes, in seconds (a cancel that arrives meanwhile
    /// is ignored: the device finishes and reports its truth).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    flash_secs: f64,
    /// Write each device's final state here (JSON) when stopped.
    #[arg(long)]
    truth: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    #[command(flatten)]
    Api(operator::PluginApiCommand),
    /// Start a plugin project of its own: Cargo.toml, the WIT contract, the
    /// SDK (vendored) and a template to edit. It builds anywhere with
    /// `cargo build --release --target wasm32-wasip2`.
    #[command(
        after_help = "Examples:\n  rollway plugin new rollout rollout-quarry-by-quarry\n  rollway plugin new device device-nrf52 --dir ~/src/nrf52-plugin"
    )]
    New {
        /// What the plugin implements.
        kind: crate::plugins::scaffold::Kind,
        /// The plugin's name: lowercase letters, digits and '-', starting
        /// with a letter (e.g. `rollout-rings`, `device-nrf52`).
        name: String,
        /// Where to write the project (a new or empty folder; default:
        /// ./NAME).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Load a plugin with production limits, print its world and version,
    /// and exercise it: a rollout plugin runs a synthetic fleet, a device
    /// plugin builds commands and parses sample statuses.
    #[command(
        after_help = "Examples:\n  rollway plugin check target/wasm32-wasip2/release/my_rollout.wasm\n  rollway plugin check my_rollout.wasm --devices 10000 --failure-rate 0.05\n  rollway plugin check device_nrf52.wasm --image app-1.2.0.bin --image app-1.3.0.bin"
    )]
    Check {
        /// The component (`.wasm`).
        file: std::path::PathBuf,
        /// Devices in the synthetic fleet (rollout plugins).
        #[arg(long, default_value_t = 1000)]
        devices: u32,
        /// Share of devices that fail in the synthetic fleet, 0 to 1.
        #[arg(long, default_value_t = 0.02)]
        failure_rate: f64,
        /// The plugin configuration (JSON).
        #[arg(long = "plugin-config", default_value = "{}")]
        plugin_config: String,
        /// An image the device plugin's `validate-image` must accept (what
        /// it finds is printed); repeat for more.
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown once).
    #[command(
        after_help = "Examples:\n  DATABASE_URL=postgres://… rollway token create --role operator --name ci\n  rollway token create --role viewer --name wallboard --expires-in-secs 86400"
    )]
    Create {
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// A name to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime in seconds (no expiry when absent).
        #[arg(long)]
        expires_in_secs: Option<i64>,
    },
}

pub fn main() -> ExitCode {
    let command = SettingsArgs::out_of_short_help(Cli::command());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let settings = match Settings::load(&cli.settings) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("rollway: {error:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rollway: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rollway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            connect_migrated(&settings).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Up(args) => {
            if !(0.0..=1.0).contains(&args.sim_fail_rate) {
                anyhow::bail!("--sim-fail-rate must be between 0 and 1");
            }
            up::run(
                settings,
                up::UpOptions {
                    simulate: args.simulate,
                    sim_fail_rate: args.sim_fail_rate,
                    sim_step: std::time::Duration::from_millis(args.sim_step_ms),
                },
            )
            .await
        }
        Command::Sim(args) => run_sim(args, &settings).await,
        Command::Firmware { api, command } => operator::run_firmware(&api, command).await,
        Command::Jobs { api, command } => operator::run_jobs(&api, command).await,
        Command::Devices { api, command } => operator::run_devices(&api, command).await,
        Command::Plugin {
            command: PluginCommand::Api(command),
        } => operator::run_plugin_api(command).await,
        Command::Plugin {
            command: PluginCommand::New { kind, name, dir },
        } => {
            let dir = dir.unwrap_or_else(|| std::path::PathBuf::from(&name));
            let files = crate::plugins::scaffold::create(kind, &name, &dir)?;
            for file in files {
                println!("{}", dir.join(file).display());
            }
            eprintln!(
                "next: cd {} && cargo build --release --target wasm32-wasip2 \
                 (once: rustup target add wasm32-wasip2)",
                dir.display()
            );
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    devices,
                    failure_rate,
                    plugin_config,
                    images,
                },
        } => {
            if !(0.0..=1.0).contains(&failure_rate) {
                anyhow::bail!("--failure-rate must be between 0 and 1");
            }
            crate::plugins::runtime::cache_compiled_in(settings.plugin_cache_dir.clone());
            let options = crate::plugins::check::CheckOptions {
                devices,
                failure_rate,
                config: plugin_config,
                images,
            };
            let passed = tokio::task::spawn_blocking(move || {
                crate::plugins::check::check_file(&file, &options)
            })
            .await
            .context("checking the plugin")??;
            if passed {
                Ok(())
            } else {
                anyhow::bail!("plugin check failed")
            }
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    role,
                    name,
                    expires_in_secs,
                },
        } => {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let pool = connect_migrated(&settings).await?;
            let expires_at =
                expires_in_secs.map(|s| chrono::Utc::now() + chrono::Duration::seconds(s));
            let mut conn = pool.acquire().await?;
            let (record, secret) = auth::create(&mut conn, &name, role, "cli", expires_at).await?;
            eprintln!("created {} token '{}' ({})", role, record.name, record.id);
            println!("{secret}");
            Ok(())
        }
    }
}

/// `MIN..MAX` seconds, MIN at most MAX.
fn parse_seconds_range(raw: &str) -> Result<(u64, u64), String> {
    let (least, most) = raw
        .split_once("..")
        .ok_or_else(|| format!("'{raw}' is not MIN..MAX"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("'{s}' is not a number of seconds"))
    };
    let (least, most) = (parse(least)?, parse(most)?);
    if least > most {
        return Err(format!("{least} is more than {most}"));
    }
    Ok((least, most))
}

async fn run_sim(args: SimArgs, settings: &Settings) -> anyhow::Result<()> {
    let (fail_rate, family_fail_rates) = parse_fail_rates(&args.fail_rate)?;
    for (name, value) in [
        ("--dropouts", args.dropouts),
        ("--duplicates", args.duplicates),
        ("--out-of-order", args.out_of_order),
        ("--interruptions", args.interruptions),
        ("--silent", args.silent),
        ("--fail-first", args.fail_first),
        ("--offline", args.offline),
        ("--clean-session", args.clean_session),
    ] {
        if !(0.0..=1.0).contains(&value) {
            anyhow::bail!("{name} must be between 0 and 1");
        }
    }
    let options = crate::sim::SimOptions {
        api: args.api,
        token: args.token,
        mqtt_url: args.mqtt,
        devices: args.devices,
        families: args.families,
        fail_rate,
        family_fail_rates,
        dropouts: args.dropouts,
        duplicates: args.duplicates,
        out_of_order: args.out_of_order,
        interruptions: args.interruptions,
        silent: args.silent,
        fail_first: args.fail_first,
        failure: args.failure,
        seed: args.seed,
        tags: None,
        step: std::time::Duration::from_millis(args.step_ms),
        topic_prefix: settings.topic_prefix.clone(),
        id_prefix: args.id_prefix,
        security_counter: args.security_counter,
        installed_version: args.installed_version,
        presence: !args.no_presence,
        offline: args.offline,
        offline_for: (
            std::time::Duration::from_secs(args.offline_for.0),
            std::time::Duration::from_secs(args.offline_for.1),
        ),
        clean_session: args.clean_session,
        hand_flashed: args.hand_flashed,
        wait_parked: args.wait_parked,
        parked_after: (
            std::time::Duration::from_secs(args.parked_after.0),
            std::time::Duration::from_secs(args.parked_after.1),
        ),
        flash_time: std::time::Duration::try_from_secs_f64(args.flash_secs)
            .map_err(|_| anyhow::anyhow!("--flash-secs must be 0 or more seconds"))?,
    };
    let sim = crate::sim::Simulator::start(options).await?;
    for id in &sim.device_ids {
        println!("{id}");
    }
    eprintln!(
        "{} simulated devices connected; Ctrl-C to stop",
        sim.device_ids.len()
    );
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| sim_progress(sim.truth.clone(), sim.device_ids.len()));
    shutdown_signal().await;
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    let truth = sim.truth.snapshot();
    let done = truth.values().filter(|t| t.state == "done").count();
    let failed = truth.values().filter(|t| t.state == "error").count();
    eprintln!(
        "{done} updated, {failed} failed, {} idle",
        truth.len() - done - failed
    );
    if let Some(path) = args.truth {
        std::fs::write(&path, serde_json::to_vec_pretty(&truth)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    sim.stop().await;
    Ok(())
}

/// `0.1`, or `esp32=0.1,stm32=0.02` (families not named never fail).
fn parse_fail_rates(text: &str) -> anyhow::Result<(f64, std::collections::HashMap<String, f64>)> {
    let check = |v: f64| -> anyhow::Result<f64> {
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            anyhow::bail!("--fail-rate values must be between 0 and 1")
        }
    };
    if let Ok(rate) = text.parse::<f64>() {
        return Ok((check(rate)?, Default::default()));
    }
    let mut rates = std::collections::HashMap::new();
    for pair in text.split(',') {
        let (family, rate) = pair
            .split_once('=')
            .with_context(|| format!("--fail-rate: '{pair}' is not family=rate"))?;
        let rate = rate
            .parse::<f64>()
            .with_context(|| format!("--fail-rate: '{rate}' is not a number"))?;
        rates.insert(family.trim().to_owned(), check(rate)?);
    }
    Ok((0.0, rates))
}

/// A small pool on DATABASE_URL with the migrations applied.
async fn connect_migrated(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let url = settings
        .database_url
        .as_ref()
        .context("DATABASE_URL is not set")?;
    let pool = db::connect(url, 2).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// The simulated fleet by what its devices are doing, as far as the
/// simulator's `Truth` tells. The truth keeps outcomes only (`idle`, `done`,
/// `error`, `silent`) and the commands each device acted on, so a device
/// that acted on a command but has no outcome yet counts as updating; a
/// device that finished an update and is updating again counts under its
/// last outcome until the new one is known.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SimCounts {
    idle: usize,
    updating: usize,
    done: usize,
    failed: usize,
    silent: usize,
}

impl SimCounts {
    fn of(truth: &BTreeMap<String, crate::sim::DeviceTruth>) -> Self {
        let mut counts = Self::default();
        for device in truth.values() {
            match device.state.as_str() {
                "done" => counts.done += 1,
                "error" => counts.failed += 1,
                "silent" => counts.silent += 1,
                _ if device.commands > 0 => counts.updating += 1,
                _ => counts.idle += 1,
            }
        }
        counts
    }
}

impl fmt::Display for SimCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} idle, {} updating, {} done, {} failed",
            self.idle, self.updating, self.done, self.failed
        )?;
        if self.silent > 0 {
            write!(f, ", {} silent", self.silent)?;
        }
        Ok(())
    }
}

const SIM_TEMPLATE: &str =
    "{spinner} {elapsed_precise} {prefix} [{bar:30}] {pos}/{len} updated or failed  {msg}";
const UPLOAD_TEMPLATE: &str =
    "{prefix} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta}) {msg}";
const WATCH_TEMPLATE: &str = "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} finished  {msg}";

/// A progress style from one of the templates above (checked by a test).
fn progress_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A bar on stderr: how many of the simulated devices have finished an
/// update (done or failed), with the fleet's counts, refreshed every 500 ms
/// until the task is aborted.
fn sim_progress(
    truth: crate::sim::Truth,
    devices: usize,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(devices as u64)
        .with_style(progress_style(SIM_TEMPLATE))
        .with_prefix(format!("{devices} simulated devices"));
    bar.enable_steady_tick(Duration::from_millis(100));
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let counts = SimCounts::of(&truth.snapshot());
            shown.set_position((counts.done + counts.failed) as u64);
            shown.set_message(counts.to_string());
        }
    });
    (bar, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn progress_templates_parse() {
        for template in [SIM_TEMPLATE, UPLOAD_TEMPLATE, WATCH_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn simulated_devices_are_counted_by_what_they_do() {
        let device = |state: &str, commands: u32| crate::sim::DeviceTruth {
            state: state.to_owned(),
            version: None,
            reason: None,
            commands,
            ..Default::default()
        };
        let truth: BTreeMap<String, crate::sim::DeviceTruth> = [
            ("A", device("idle", 0)),
            ("B", device("idle", 1)),
            ("C", device("done", 1)),
            ("D", device("error", 2)),
            ("E", device("silent", 1)),
        ]
        .into_iter()
        .map(|(id, t)| (id.to_owned(), t))
        .collect();
        let counts = SimCounts::of(&truth);
        assert_eq!(
            counts,
            SimCounts {
                idle: 1,
                updating: 1,
                done: 1,
                failed: 1,
                silent: 1
            }
        );
        assert_eq!(
            counts.to_string(),
            "1 idle, 1 updating, 1 done, 1 failed, 1 silent"
        );
    }

    #[test]
    fn fail_rates_are_global_or_per_family() {
        assert_eq!(parse_fail_rates("0.25").unwrap().0, 0.25);
        let (global, per_family) = parse_fail_rates("esp32=0.1, stm32=0.5").unwrap();
        assert_eq!(global, 0.0);
        assert_eq!(per_family["esp32"], 0.1);
        assert_eq!(per_family["stm32"], 0.5);
        assert!(parse_fail_rates("1.5").is_err());
        assert!(parse_fail_rates("esp32").is_err());
        assert!(parse_fail_rates("esp32=x").is_err());
    }
}

//! The `rollway` command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::domain::Role;
use crate::settings::{Settings, SettingsArgs};
use crate::startup::{Application, shutdown_signal};
use crate::up::{self, PrivatePostgres};
use crate::{auth, db, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "rollway",
    version,
    about = "Over-the-air firmware updates for vehicle fleets",
    after_help = "Examples:\n  rollway up                          first look: private database, file store\n  DATABASE_URL=postgres://… rollway serve\n  rollway token create --role operator --name ci"
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
    /// PostgreSQL when DATABASE_URL is unset, a file store in the data
    /// directory; prints the URL and an admin token.
    Up,
    /// Run a simulated fleet against a Rollway host until Ctrl-C.
    #[command(
        after_help = "Example:\n  rollway sim --api http://127.0.0.1:8080 --token rw_… --mqtt mqtt://127.0.0.1:1883 --devices 100 --truth truth.json"
    )]
    Sim(SimArgs),
    /// Work with plugin components.
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
    /// Milliseconds between a device's statuses.
    #[arg(long, default_value_t = 50)]
    step_ms: u64,
    /// Prefix of the simulated device ids.
    #[arg(long, default_value = "SIM-")]
    id_prefix: String,
    /// Write each device's final state here (JSON) when stopped.
    #[arg(long)]
    truth: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load a plugin with production limits, print its world and version,
    /// and exercise it: a rollout plugin runs a synthetic fleet, a device
    /// plugin builds commands and parses sample statuses.
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
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown once).
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
    let cli = Cli::parse();
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
        Command::Up => run_up(settings).await,
        Command::Sim(args) => run_sim(args, &settings).await,
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    devices,
                    failure_rate,
                    plugin_config,
                },
        } => {
            if !(0.0..=1.0).contains(&failure_rate) {
                anyhow::bail!("--failure-rate must be between 0 and 1");
            }
            let options = crate::plugins::check::CheckOptions {
                devices,
                failure_rate,
                config: plugin_config,
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

async fn run_sim(args: SimArgs, settings: &Settings) -> anyhow::Result<()> {
    let (fail_rate, family_fail_rates) = parse_fail_rates(&args.fail_rate)?;
    for (name, value) in [
        ("--dropouts", args.dropouts),
        ("--duplicates", args.duplicates),
        ("--out-of-order", args.out_of_order),
        ("--interruptions", args.interruptions),
        ("--silent", args.silent),
        ("--fail-first", args.fail_first),
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
        step: std::time::Duration::from_millis(args.step_ms),
        topic_prefix: settings.topic_prefix.clone(),
        id_prefix: args.id_prefix,
    };
    let sim = crate::sim::Simulator::start(options).await?;
    for id in &sim.device_ids {
        println!("{id}");
    }
    eprintln!(
        "{} simulated devices connected; Ctrl-C to stop",
        sim.device_ids.len()
    );
    shutdown_signal().await;
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

async fn run_up(mut settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "creating the data directory {}",
            settings.data_dir.display()
        )
    })?;
    let mut private = None;
    if settings.database_url.is_none() {
        let data_dir = settings.data_dir.clone();
        let postgres = tokio::task::spawn_blocking(move || PrivatePostgres::start(&data_dir))
            .await
            .context("starting the private PostgreSQL")??;
        postgres.ensure_database().await?;
        settings.database_url = Some(postgres.database_url());
        private = Some(postgres);
    }
    let data_dir = settings.data_dir.clone();
    let bootstrap = settings.bootstrap_token.clone();
    let result = async {
        let app = Application::build(settings).await?;
        let token = up::admin_token(app.pool(), &data_dir, bootstrap.as_ref()).await?;
        let url = format!("http://{}/", app.address());
        println!("Rollway is up.");
        println!("  URL:         {url}");
        println!("  Admin token: {token}");
        println!("  Data:        {}", data_dir.display());
        println!("Press Ctrl-C to stop.");
        app.run_until_stopped(shutdown_signal()).await
    }
    .await;
    if let Some(mut postgres) = private {
        tokio::task::spawn_blocking(move || postgres.stop())
            .await
            .context("stopping the private PostgreSQL")??;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::parse_fail_rates;

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

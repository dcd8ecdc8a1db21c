//! `rollway up`: everything on embedded defaults for a first look. Without
//! `DATABASE_URL` it runs a private PostgreSQL cluster from the system's
//! `initdb`/`pg_ctl` inside the data directory and stops it on exit; without
//! `MQTT_URL` an embedded MQTT broker (rumqttd) on a free loopback port. It
//! uploads demo firmware for every family through the API and, with
//! `--simulate N`, registers and connects a simulated fleet, so a newcomer
//! can create a job in the dashboard and watch it roll out.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

use crate::settings::{Settings, is_root};
use crate::startup::{Application, shutdown_signal};

/// What `rollway up` adds to the host.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Simulated devices to register and connect.
    pub simulate: Option<u32>,
    pub sim_fail_rate: f64,
    pub sim_step: Duration,
}

/// The version of the demo firmware `up` uploads for every family.
pub const DEMO_VERSION: &str = "1.0.0-demo";

/// Runs the host on embedded defaults until Ctrl-C or SIGTERM.
pub async fn run(mut settings: Settings, options: UpOptions) -> anyhow::Result<()> {
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
    if settings.mqtt_url.is_none() {
        let address = start_broker().await?;
        settings.mqtt_url = Some(SecretString::from(format!("mqtt://{address}")));
    }
    let result = serve(settings, &options).await;
    if let Some(mut postgres) = private {
        tokio::task::spawn_blocking(move || postgres.stop())
            .await
            .context("stopping the private PostgreSQL")??;
    }
    result
}

async fn serve(settings: Settings, options: &UpOptions) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let bootstrap = settings.bootstrap_token.clone();
    let mqtt_url = settings
        .mqtt_url
        .as_ref()
        .map(|url| url.expose_secret().to_owned());
    let topic_prefix = settings.topic_prefix.clone();
    let app = Application::build(settings).await?;
    let token = admin_token(app.pool(), &data_dir, bootstrap.as_ref()).await?;
    let address = app.address();
    // The address clients on this machine reach the host at.
    let local = if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    };
    let api = format!("http://{local}");
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(app.run_until_stopped({
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = stop.cancelled() => {}
            }
        }
    }));
    let setup = async {
        upload_demo_firmware(&api, &token).await?;
        let simulator = match (options.simulate, &mqtt_url) {
            (Some(devices), Some(mqtt_url)) => {
                let sim = crate::sim::Simulator::start(crate::sim::SimOptions {
                    fail_rate: options.sim_fail_rate,
                    step: options.sim_step,
                    topic_prefix,
                    ..crate::sim::SimOptions::new(&api, &token, mqtt_url, devices)
                })
                .await
                .context("starting the simulated fleet")?;
                Some(sim)
            }
            _ => None,
        };
        anyhow::Ok(simulator)
    };
    let simulator = match setup.await {
        Ok(simulator) => simulator,
        Err(error) => {
            stop.cancel();
            let _ = served.await;
            return Err(error);
        }
    };
    println!("Rollway is up.");
    println!("  URL:         http://{local}/");
    println!("  Admin token: {token}");
    println!("  Data:        {}", data_dir.display());
    if let Some(url) = &mqtt_url {
        println!("  MQTT:        {url}");
    }
    println!("  Firmware:    demo images {DEMO_VERSION} for esp32, stm32 and jetson");
    if let Some(sim) = &simulator {
        println!(
            "  Simulated:   {} devices tagged fleet=simulated, connected",
            sim.device_ids.len()
        );
    }
    println!("Open the URL, sign in with the token, and create a job. Ctrl-C stops.");
    let result = served.await.context("the host task failed")?;
    if let Some(sim) = simulator {
        sim.stop().await;
    }
    result
}

/// Uploads the demo firmware of every family through the API, as an
/// operator would; images already there (a restart on the same data dir)
/// are kept. It asks first rather than relying on the upload's 409: the
/// host refuses a duplicate before reading its body, and a client still
/// writing the body sees a broken pipe instead of the answer.
async fn upload_demo_firmware(api: &str, token: &str) -> anyhow::Result<()> {
    let client = crate::client::ApiClient::new(api, token)?;
    for (family, image) in crate::demo::firmware(DEMO_VERSION) {
        let query = [
            ("family", family.to_owned()),
            ("version", DEMO_VERSION.to_owned()),
        ];
        let existing = client
            .get("/firmware", &query)
            .await
            .with_context(|| format!("looking up the {family} demo firmware"))?;
        if existing["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
        {
            continue;
        }
        let len = image.len() as u64;
        client
            .post_bytes("/firmware", &query, image.into(), len)
            .await
            .with_context(|| format!("uploading the {family} demo firmware"))?;
    }
    Ok(())
}

/// Starts an embedded MQTT broker on a free loopback port, on threads of its
/// own; it lives as long as the process. Returns its address once it accepts
/// connections.
async fn start_broker() -> anyhow::Result<SocketAddr> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let server = ServerSettings {
        name: "rollway-up".into(),
        listen: address,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("rollway".to_owned(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "the embedded MQTT broker stopped");
            }
        })
        .context("starting the embedded MQTT broker")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            tracing::info!(%address, "embedded MQTT broker started");
            return Ok(address);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the embedded MQTT broker did not open {address}")
}

/// A PostgreSQL cluster owned by this process.
pub struct PrivatePostgres {
    bin_dir: PathBuf,
    data: PathBuf,
    port: u16,
    run_as_postgres: bool,
    stopped: bool,
}

impl PrivatePostgres {
    /// Initialises (first time) and starts the cluster in `data_dir/postgres`
    /// on a free loopback port, and makes sure the `rollway` database exists.
    pub fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_server_binaries()?;
        let data = data_dir.join("postgres");
        // PostgreSQL refuses to run as root: as root, the cluster belongs to
        // the `postgres` system user.
        let run_as_postgres = is_root();
        if run_as_postgres
            && Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        {
            bail!(
                "running as root, the private PostgreSQL needs the 'postgres' system user (Debian: apt-get install postgresql), or set DATABASE_URL"
            );
        }
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let mut this = Self {
            bin_dir,
            data,
            port: free_port()?,
            run_as_postgres,
            stopped: true,
        };
        if run_as_postgres {
            // The cluster directory and the way to it must be open to `postgres`.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("opening {} to the postgres user", data_dir.display()))?;
            this.run(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&this.data),
            )?;
        }
        if !this.data.join("PG_VERSION").exists() {
            tracing::info!(dir = %this.data.display(), "initialising a private PostgreSQL cluster");
            let mut initdb = this.pg_command("initdb");
            initdb.arg("-D").arg(&this.data).args([
                "-U",
                "rollway",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ]);
            this.run("initdb", &mut initdb)?;
        }
        // A cluster left running by a killed `up` is stopped first.
        let mut status = this.pg_command("pg_ctl");
        status.arg("-D").arg(&this.data).arg("status");
        if status.output().map(|o| o.status.success()).unwrap_or(false) {
            let mut stop = this.pg_command("pg_ctl");
            stop.arg("-D")
                .arg(&this.data)
                .args(["-m", "fast", "-w", "stop"]);
            this.run("pg_ctl stop", &mut stop)?;
        }
        let mut start = this.pg_command("pg_ctl");
        start
            .arg("-D")
            .arg(&this.data)
            .arg("-l")
            .arg(this.data.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200 -c fsync=on",
                this.port,
                this.data.display()
            ))
            .arg("start");
        this.run("pg_ctl start", &mut start)?;
        this.stopped = false;
        tracing::info!(port = this.port, "private PostgreSQL started");
        Ok(this)
    }

    /// URL of the server's maintenance database.
    fn admin_url(&self) -> String {
        format!("postgres://rollway@127.0.0.1:{}/postgres", self.port)
    }

    pub fn database_url(&self) -> SecretString {
        SecretString::from(format!(
            "postgres://rollway@127.0.0.1:{}/rollway",
            self.port
        ))
    }

    /// Creates the `rollway` database when missing.
    pub async fn ensure_database(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .context("connecting to the private PostgreSQL")?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'rollway')",
        )
        .fetch_one(&mut conn)
        .await?;
        if !exists {
            sqlx::query("CREATE DATABASE rollway")
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Stops the cluster (fast shutdown: clients are disconnected, data is safe).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        let mut stop = self.pg_command("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        self.run("pg_ctl stop", &mut stop)?;
        self.stopped = true;
        tracing::info!("private PostgreSQL stopped");
        Ok(())
    }

    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        if self.run_as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn run(&self, what: &str, command: &mut Command) -> anyhow::Result<()> {
        let output = command
            .current_dir("/")
            .output()
            .with_context(|| format!("running {what}"))?;
        if !output.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("rollway: stopping the private PostgreSQL: {error:#}");
        }
    }
}

/// Finds `initdb` and `pg_ctl`: on PATH, else the newest Debian install.
fn find_server_binaries() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    on_path
        .chain(debian.into_iter().rev())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .context(
            "the PostgreSQL server programs (initdb, pg_ctl) were not found; \
             install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL",
        )
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The admin token `up` prints: the bootstrap token when set, else one kept
/// in the data directory (created on first run, mode 0600).
pub async fn admin_token(
    pool: &sqlx::PgPool,
    data_dir: &Path,
    bootstrap: Option<&SecretString>,
) -> anyhow::Result<String> {
    if let Some(token) = bootstrap {
        return Ok(token.expose_secret().to_owned());
    }
    let path = data_dir.join("admin-token");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim().to_owned();
        if crate::auth::authenticate(pool, &saved).await?.is_some() {
            return Ok(saved);
        }
    }
    let mut conn = pool.acquire().await?;
    let (_, secret) = crate::auth::create(
        &mut conn,
        "up-admin",
        crate::domain::Role::Admin,
        "rollway up",
        None,
    )
    .await?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(file, "{secret}")?;
    }
    Ok(secret)
}

//! What every benchmark stands on: the services from the environment, fresh
//! databases, a `rollway serve` child process, seeding a fleet with SQL,
//! and polling with timeouts.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The services and binary the benchmarks use, from the environment.
pub struct Env {
    /// PostgreSQL URL allowed to create databases (`ROLLWAY_TEST_DATABASE_URL`).
    pub admin_url: String,
    /// `MQTT_URL`.
    pub mqtt_url: String,
    /// The `rollway` binary to run as the host (`ROLLWAY_BIN`).
    pub rollway_bin: PathBuf,
    /// Logs, stores and scripts of this run.
    pub work_dir: PathBuf,
    databases: Mutex<Vec<String>>,
}

impl Env {
    pub fn from_environment() -> anyhow::Result<Self> {
        let admin_url = std::env::var("ROLLWAY_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mqtt_url =
            std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:18830".to_owned());
        let rollway_bin = match std::env::var_os("ROLLWAY_BIN") {
            Some(path) => PathBuf::from(path),
            // Next to this binary, as cargo builds them.
            None => std::env::current_exe()
                .context("locating rollway-bench")?
                .with_file_name("rollway"),
        };
        if !rollway_bin.is_file() {
            bail!(
                "the host binary {} does not exist; build it (cargo build --release -p rollway-host) \
                 or set ROLLWAY_BIN",
                rollway_bin.display()
            );
        }
        for (name, url) in [
            ("ROLLWAY_TEST_DATABASE_URL", &admin_url),
            ("MQTT_URL", &mqtt_url),
        ] {
            let parsed = url::Url::parse(url).with_context(|| format!("{name} is not a URL"))?;
            // No host: a Unix socket, local too.
            let local = matches!(
                parsed.host_str(),
                None | Some("" | "127.0.0.1" | "localhost" | "::1" | "[::1]")
            );
            if !local {
                bail!("{name} must point at loopback: the benchmarks send nothing off the machine");
            }
        }
        let work_dir =
            std::env::temp_dir().join(format!("rollway-bench-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Self {
            admin_url,
            mqtt_url,
            rollway_bin,
            work_dir,
            databases: Mutex::new(Vec::new()),
        })
    }

    /// A directory of this run for `label`.
    pub fn dir(&self, label: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work_dir.join(format!(
            "{label}-{}",
            &Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// A fresh, empty database `rollway_bench_<uuid>`, dropped by
    /// `drop_databases` at the end of the run.
    pub async fn fresh_database(&self) -> anyhow::Result<Database> {
        let name = format!("rollway_bench_{}", Uuid::new_v4().simple());
        let mut conn = self.admin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating the database {name}"))?;
        let _ = conn.close().await;
        if let Ok(mut list) = self.databases.lock() {
            list.push(name.clone());
        }
        let mut url = url::Url::parse(&self.admin_url).context("ROLLWAY_TEST_DATABASE_URL")?;
        url.set_path(&name);
        Ok(Database {
            name,
            url: url.to_string(),
        })
    }

    /// A connection with the admin URL.
    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        tokio::time::timeout(
            Duration::from_secs(15),
            PgConnection::connect(&self.admin_url),
        )
        .await
        .map_err(|_| anyhow!("PostgreSQL at ROLLWAY_TEST_DATABASE_URL did not answer within 15 s"))?
        .context("connecting to PostgreSQL (ROLLWAY_TEST_DATABASE_URL)")
    }

    /// Drops every database this run created.
    pub async fn drop_databases(&self) {
        let names: Vec<String> = self
            .databases
            .lock()
            .map(|mut list| std::mem::take(&mut *list))
            .unwrap_or_default();
        if names.is_empty() {
            return;
        }
        let Ok(mut conn) = self.admin().await else {
            eprintln!("could not connect to drop the benchmark databases: {names:?}");
            return;
        };
        for name in names {
            if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            {
                eprintln!("dropping the database {name}: {error}");
            }
        }
        let _ = conn.close().await;
    }
}

/// One benchmark's database.
pub struct Database {
    pub name: String,
    pub url: String,
}

impl Database {
    pub async fn pool(&self, size: u32) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to the database {}", self.name))
    }
}

/// A topic prefix of its own, so that runs never see each other's messages.
pub fn topic_prefix(label: &str) -> String {
    format!("bench-{label}-{}", crate::mqtt::suffix())
}

/// A free loopback port (bound, then released for the host to take).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A `rollway serve` child process.
pub struct Host {
    child: tokio::process::Child,
    pub pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The admin token (`ROLLWAY_BOOTSTRAP_TOKEN`).
    pub token: String,
    pub topic_prefix: String,
    pub log: PathBuf,
    http: reqwest::Client,
}

impl Host {
    /// Starts the host on a fresh database and waits for `/readyz`. With
    /// `mqtt`, it dispatches and ingests on `topic_prefix`; without, it
    /// plans jobs and sends nothing.
    pub async fn start(
        env: &Env,
        database: &Database,
        label: &str,
        topic_prefix: &str,
        mqtt: bool,
    ) -> anyhow::Result<Self> {
        let dir = env.dir(label)?;
        let port = free_port()?;
        let token = format!("rw_bench_{}", Uuid::new_v4().simple());
        let log = dir.join("host.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("host log")?;
        let mut command = tokio::process::Command::new(&env.rollway_bin);
        command
            .arg("serve")
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &database.url)
            .env("ROLLWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "ROLLWAY_STORE",
                format!("file://{}", dir.join("store").display()),
            )
            .env("ROLLWAY_DATA_DIR", dir.join("data"))
            .env("ROLLWAY_BOOTSTRAP_TOKEN", &token)
            .env("ROLLWAY_TOPIC_PREFIX", topic_prefix)
            .env(
                "ROLLWAY_INSTANCE_ID",
                format!("bench-{label}-{}", crate::mqtt::suffix()),
            )
            // ROLLWAY_BENCH_HOST_LOG sets the host's RUST_LOG, to look
            // inside a run (e.g. `rollway::ingest=debug`).
            .env(
                "RUST_LOG",
                std::env::var("ROLLWAY_BENCH_HOST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        if mqtt {
            command.env("MQTT_URL", &env.mqtt_url);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} serve", env.rollway_bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the host exited at once; see {}", log.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .context("building the HTTP client")?;
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("watching the host")? {
                bail!(
                    "the host exited ({status}) before it was ready; see {}",
                    log.display()
                );
            }
            let ready = http
                .get(format!("{base}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = ready
                && response.status().is_success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(180) {
                bail!(
                    "the host did not answer /readyz within 180 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            child,
            pid,
            base,
            token,
            topic_prefix: topic_prefix.to_owned(),
            log,
            http,
        })
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 20 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "the host did not stop within 20 s of SIGTERM; see {}",
                    self.log.display()
                )
            }
        }
    }

    /// Peak resident set size (`VmHWM`) in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        kib_field(&status, "VmHWM:")
            .map(|kb| kb * 1024)
            .ok_or_else(|| anyhow!("no VmHWM in {path}"))
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Uploads a 64 KiB ESP32-S3 image through the API; returns its id.
    pub async fn upload_esp32(&self, version: &str) -> anyhow::Result<String> {
        let image = rollway::demo::esp32(rollway::demo::ESP32S3, version, 64 * 1024);
        let response = self
            .http
            .post(self.url(&format!("/firmware?family=esp32&version={version}")))
            .bearer_auth(&self.token)
            .body(image)
            .send()
            .await
            .context("uploading firmware")?;
        let body = answer(response, "uploading firmware").await?;
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the firmware upload answered without an id: {body}"))
    }

    /// Creates a job; returns its id.
    pub async fn create_job(&self, request: &Value) -> anyhow::Result<Uuid> {
        let response = self
            .http
            .post(self.url("/jobs"))
            .bearer_auth(&self.token)
            .json(request)
            .send()
            .await
            .context("creating a job")?;
        let body = answer(response, "creating a job").await?;
        body["id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| anyhow!("the job was created without an id: {body}"))
    }
}

async fn answer(response: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{what}: {status} {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: the answer is not JSON: {text}"))
}

/// A job request over the devices tagged `fleet`, with an optional rollout
/// and device timeout.
pub fn job_request(
    firmware_id: &str,
    fleet: &str,
    rollout: Option<Value>,
    device_timeout_secs: Option<i32>,
) -> Value {
    let mut request = json!({
        "name": format!("benchmark {fleet}"),
        "firmware_id": firmware_id,
        "targets": { "filter": { "family": "esp32", "tags": { "fleet": fleet } } },
        "start": "now",
    });
    if let Some(rollout) = rollout {
        request["rollout"] = rollout;
    }
    if let Some(secs) = device_timeout_secs {
        request["device_timeout_secs"] = json!(secs);
    }
    request
}

/// Registers `count` ESP32-S3 devices `{id_prefix}0000000…` tagged
/// `fleet`, a `ring` (1% `internal`, 9% `0`, the rest `1`) and one of ten
/// `site`s, with SQL (the host has migrated the database), then vacuums and
/// analyzes the table as autovacuum would have on a real fleet. Returns the
/// time it took (which no benchmark counts).
pub async fn seed_devices(
    pool: &PgPool,
    id_prefix: &str,
    count: u32,
    fleet: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let chunk = 100_000u32;
    let mut first = 0u32;
    while first < count {
        let end = (first + chunk).min(count);
        sqlx::query(
            "INSERT INTO devices (id, family, model, tags)
             SELECT $1 || lpad(i::text, 7, '0'), 'esp32', 'esp32s3',
                    jsonb_build_object('fleet', $2::text,
                        'ring', CASE WHEN i % 100 = 0 THEN 'internal' WHEN i % 10 = 0 THEN '0' ELSE '1' END,
                        'site', 'quarry-' || (i % 10))
             FROM generate_series($3::int, $4::int) AS i",
        )
        .bind(id_prefix)
        .bind(fleet)
        .bind(first as i32)
        .bind(end as i32 - 1)
        .execute(pool)
        .await
        .with_context(|| format!("registering devices {first}..{end} with SQL"))?;
        first = end;
    }
    sqlx::raw_sql("VACUUM ANALYZE devices")
        .execute(pool)
        .await
        .context("VACUUM ANALYZE devices")?;
    Ok(started.elapsed())
}

/// A host on a fresh database with an ESP32 image uploaded and `devices`
/// devices (`{id_prefix}0000000`, …) registered with SQL, for the
/// benchmarks that send commands to a whole fleet.
pub struct Fleet {
    pub host: Host,
    pub pool: PgPool,
    /// The uploaded firmware's id.
    pub firmware: String,
    pub prefix: String,
    /// How long registering the devices took.
    pub seeded: Duration,
}

impl Fleet {
    pub async fn start(
        env: &Env,
        label: &str,
        id_prefix: &str,
        devices: u32,
    ) -> anyhow::Result<Self> {
        let database = env.fresh_database().await?;
        let prefix = topic_prefix(label);
        let host = Host::start(env, &database, label, &prefix, true).await?;
        let pool = database.pool(2).await?;
        let firmware = host.upload_esp32("1.0.0-bench").await?;
        let seeded = seed_devices(&pool, id_prefix, devices, "bench").await?;
        eprintln!(
            "   {devices} devices registered with SQL in {}",
            crate::report::seconds(seeded.as_secs_f64())
        );
        Ok(Self {
            host,
            pool,
            firmware,
            prefix,
            seeded,
        })
    }

    /// A subscriber to every command the host sends the fleet, each handed
    /// to `on_command` with `state`.
    pub async fn listen<S, F>(
        &self,
        env: &Env,
        label: &str,
        state: S,
        on_command: F,
    ) -> anyhow::Result<crate::mqtt::Link<S>>
    where
        S: Send + 'static,
        F: FnMut(&mut S, rumqttc::Publish) + Send + 'static,
    {
        crate::mqtt::connect(
            &env.mqtt_url,
            &format!("bench-{label}-sub-{}", crate::mqtt::suffix()),
            crate::mqtt::LinkOptions {
                subscribe: Some(format!("{}/+/update/command", self.prefix)),
                ..crate::mqtt::LinkOptions::default()
            },
            state,
            on_command,
        )
        .await
    }
}

/// One job over a whole fleet of `firmware`'s family in one batch that
/// nothing stops.
pub async fn fleet_job(host: &Host, firmware: &str) -> anyhow::Result<Uuid> {
    let rollout = serde_json::json!({
        "plugin": "rollout-percent",
        "config": { "batches": [100], "success_threshold": 0, "failure_threshold": 100 },
    });
    host.create_job(&job_request(firmware, "bench", Some(rollout), Some(86_400)))
        .await
}

/// The state of something polled.
pub enum Check {
    Done,
    /// Not yet, with a word on how far it got (shown on timeout).
    Waiting(String),
}

/// Polls `check` every `every` until it is done; fails after `timeout`
/// with the last progress note.
pub async fn wait_for<F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check>>,
{
    let started = Instant::now();
    loop {
        match check()
            .await
            .with_context(|| format!("waiting for {what}"))?
        {
            Check::Done => return Ok(()),
            Check::Waiting(note) => {
                if started.elapsed() > timeout {
                    bail!("{what}: not done within {timeout:?} ({note})");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until every execution of `job` is `dispatched` (the host's
/// dispatcher claimed it and published its command).
pub async fn wait_dispatched(
    pool: &PgPool,
    job: Uuid,
    total: u64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wait_for(
        "every execution dispatched",
        timeout,
        Duration::from_millis(250),
        || async move {
            let (dispatched, failed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'dispatched'),
                    count(*) FILTER (WHERE status IN ('error', 'timed_out', 'cancelled'))
             FROM executions WHERE job_id = $1",
            )
            .bind(job)
            .fetch_one(pool)
            .await?;
            if failed > 0 {
                bail!("{failed} executions failed while being dispatched");
            }
            anyhow::Ok(if dispatched as u64 >= total {
                Check::Done
            } else {
                Check::Waiting(format!("{dispatched} of {total} dispatched"))
            })
        },
    )
    .await?;
    Ok(started.elapsed())
}

/// Waits until the relay has handled every outbox event, so that a
/// backlog of earlier work does not weigh on a measurement. Returns
/// whether it drained in time.
pub async fn wait_outbox_drained(pool: &PgPool, timeout: Duration) -> anyhow::Result<bool> {
    let drained = wait_for(
        "the outbox relay",
        timeout,
        Duration::from_millis(250),
        || async move {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE sent_at IS NULL")
                    .fetch_one(pool)
                    .await?;
            anyhow::Ok(if pending == 0 {
                Check::Done
            } else {
                Check::Waiting(format!("{pending} events pending"))
            })
        },
    )
    .await;
    match drained {
        Ok(()) => Ok(true),
        Err(error) => {
            eprintln!("   note: {error:#}; measuring anyway");
            Ok(false)
        }
    }
}

/// Waits until the job is `wanted`; fails when it becomes paused or
/// reaches another final status.
pub async fn wait_job_status(
    pool: &PgPool,
    job: Uuid,
    wanted: &'static str,
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    wait_for(
        &format!("the job to be {wanted}"),
        timeout,
        every,
        || async move {
            let (status, reason): (String, Option<String>) =
                sqlx::query_as("SELECT status, status_reason FROM jobs WHERE id = $1")
                    .bind(job)
                    .fetch_one(pool)
                    .await?;
            if status == wanted {
                return anyhow::Ok(Check::Done);
            }
            if matches!(
                status.as_str(),
                "failed" | "cancelled" | "paused" | "completed"
            ) {
                bail!(
                    "the job became {status} instead of {wanted}: {}",
                    reason.unwrap_or_default()
                );
            }
            anyhow::Ok(Check::Waiting(format!("the job is {status}")))
        },
    )
    .await
}

/// Removes a directory of this run, quietly.
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A `Name:  1234 kB` field of a `/proc` file (`status`, `meminfo`), in KiB.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

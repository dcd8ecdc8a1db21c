//! Real processes for the fault and replica tests: `rollway serve` hosts and
//! private brokers that a test may kill, stop and restart without touching
//! the services other tests share.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Client;
use sqlx::PgPool;

use crate::helpers::{TestApp, fresh_database, temp_dir};

/// A free loopback port (bound, then released for the process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

async fn wait_port(port: u16, open: bool, what: &str, timeout: Duration) {
    let started = Instant::now();
    while port_open(port) != open {
        assert!(
            started.elapsed() < timeout,
            "{what} on port {port} did not {} within {timeout:?}",
            if open { "open" } else { "close" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process, its log file, and how to start it again.
pub struct Service {
    pub name: String,
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
    env: HashMap<String, String>,
    /// Working directory (and where its log goes).
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    fn new(
        name: &str,
        port: u16,
        program: impl Into<PathBuf>,
        args: &[String],
        dir: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            port,
            program: program.into(),
            args: args.to_vec(),
            env: HashMap::new(),
            dir: dir.to_owned(),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        wait_port(self.port, false, &self.name, Duration::from_secs(15)).await;
    }

    pub async fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        while !port_open(self.port) {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            assert!(
                started.elapsed() < timeout,
                "{} did not start within {timeout:?}; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private Mosquitto with persistence, like the shared test broker.
pub async fn mosquitto(dir: &Path) -> Service {
    let data = dir.join("mosquitto");
    std::fs::create_dir_all(&data).expect("mosquitto dir");
    // A narrow in-flight window: Mosquitto 2.0 drops the QoS 1 messages in
    // flight to a client when it stops, and a device on its last retry
    // whose final status is dropped ends `timed_out` (ARCHITECTURE.md,
    // "Delivery guarantees"). Restarts still drop statuses here, which
    // timeouts and retries must recover; fewer of them at once.
    mosquitto_with(dir, |port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n\
             max_inflight_messages 50\npersistence true\npersistence_location {}/\n\
             autosave_interval 1\n",
            data.display()
        )
    })
    .await
}

/// A private Mosquitto on a free port with the configuration `config`
/// writes for that port.
pub async fn mosquitto_with(dir: &Path, config: impl FnOnce(u16) -> String) -> Service {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, format!("{}user root\n", config(port))).expect("mosquitto.conf");
    let program = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let mut service = Service::new(
        "mosquitto",
        port,
        program,
        &["-c".into(), conf.display().to_string()],
        dir,
    );
    service.start();
    service.wait_ready(Duration::from_secs(10)).await;
    service
}

/// A private Kafka-API broker (tansu) keeping its data in an SQLite file in
/// `dir`, so that it can be stopped and started again without losing topics.
pub async fn kafka(dir: &Path) -> Service {
    kafka_with(dir, free_port(), "sqlite://tansu.db").await
}

/// A Kafka-API broker of its own on `port`, storing in `storage`
/// (`memory://tansu/` forgets everything when it stops: a fresh broker).
pub async fn kafka_with(dir: &Path, port: u16, storage: &str) -> Service {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut service = Service::new(
        "tansu",
        port,
        "tansu",
        &[
            "broker".into(),
            "--listener-url".into(),
            url.clone(),
            "--advertised-listener-url".into(),
            url,
            "--storage-engine".into(),
            // A file path is relative to the working directory.
            storage.into(),
            "--cluster-id".into(),
            format!("rollway-test-{}", uuid::Uuid::new_v4().simple()),
        ],
        dir,
    );
    service.start();
    service.wait_ready(Duration::from_secs(30)).await;
    service
}

/// What every host of one test shares.
pub struct Cluster {
    pub dir: PathBuf,
    pub database_url: String,
    pub token: String,
    pub topic_prefix: String,
    pub mqtt_url: String,
    pub kafka_brokers: Option<String>,
    pub events_topic: String,
    /// Where devices download from (the first host, standing for a load
    /// balancer).
    pub public_url: Option<String>,
}

impl Cluster {
    pub async fn new(mqtt_url: String, kafka_brokers: Option<String>) -> Self {
        Self {
            dir: temp_dir("cluster"),
            database_url: fresh_database().await,
            token: format!("rw_test_{}", uuid::Uuid::new_v4().simple()),
            topic_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            mqtt_url,
            kafka_brokers,
            events_topic: format!("events-{}", uuid::Uuid::new_v4().simple()),
            public_url: None,
        }
    }

    /// A `rollway serve` process named `instance` (not started).
    pub fn host(&self, instance: &str, extra: &[(&str, &str)]) -> Service {
        let port = free_port();
        let program = PathBuf::from(env!("CARGO_BIN_EXE_rollway"));
        let mut service = Service::new(instance, port, program, &["serve".into()], &self.dir);
        let public = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        let env = [
            ("DATABASE_URL", self.database_url.clone()),
            ("ROLLWAY_LISTEN", format!("127.0.0.1:{port}")),
            ("ROLLWAY_PUBLIC_URL", public),
            (
                "ROLLWAY_STORE",
                format!("file://{}", self.dir.join("store").display()),
            ),
            (
                "ROLLWAY_DATA_DIR",
                self.dir.join("data").display().to_string(),
            ),
            ("ROLLWAY_BOOTSTRAP_TOKEN", self.token.clone()),
            ("ROLLWAY_TOPIC_PREFIX", self.topic_prefix.clone()),
            ("ROLLWAY_EVENTS_TOPIC", self.events_topic.clone()),
            ("ROLLWAY_INSTANCE_ID", instance.to_owned()),
            ("ROLLWAY_DB_POOL_SIZE", "12".to_owned()),
            ("MQTT_URL", self.mqtt_url.clone()),
            (
                "ROLLWAY_MQTT_DROPPED_TOPIC",
                rollway::mqtt::MOSQUITTO_DROPPED_TOPIC.to_owned(),
            ),
            ("RUST_LOG", "info".to_owned()),
        ];
        for (key, value) in env {
            service.env.insert(key.into(), value);
        }
        if let Some(brokers) = &self.kafka_brokers {
            service.env.insert("KAFKA_BROKERS".into(), brokers.clone());
        }
        for (key, value) in extra {
            service.env.insert((*key).into(), (*value).into());
        }
        service
    }

    /// A client of one host, with a pool on the shared database.
    pub async fn client(&self, host: &Service) -> TestApp {
        TestApp {
            base: format!("http://127.0.0.1:{}", host.port),
            admin_token: self.token.clone(),
            client: Client::new(),
            pool: PgPool::connect(&self.database_url)
                .await
                .expect("connecting to the test database"),
            store_url: format!("file://{}", self.dir.join("store").display()),
            database_url: self.database_url.clone(),
        }
    }
}

/// Starts a host and waits until it answers `/readyz`.
pub async fn start_host(host: &mut Service) {
    host.start();
    host.wait_ready(Duration::from_secs(60)).await;
    let url = format!("http://127.0.0.1:{}/readyz", host.port);
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(&url).await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} is not ready; see {}",
            host.name,
            host.log_path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

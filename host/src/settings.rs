//! Typed settings. Each value comes from, in order of precedence: a command
//! line flag, its environment variable (README.md lists them), the optional
//! TOML config file, and finally a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

/// Flags shared by `serve`, `migrate`, `up` and `token`. Every flag also reads
/// an environment variable and a key of the config file.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
#[command(
    next_help_heading = "Settings of every command (also environment variables and config file keys; `-h` hides them)"
)]
pub struct SettingsArgs {
    /// TOML config file whose keys are the long flag names in snake_case.
    #[arg(long, env = "ROLLWAY_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// PostgreSQL URL, e.g. postgres://rollway@db/rollway.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// Address the HTTP API and dashboard listen on.
    #[arg(long, env = "ROLLWAY_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// Firmware store: file:///var/lib/rollway/store or s3://bucket[/prefix]
    /// (credentials and endpoint from the usual AWS_* variables).
    #[arg(long, env = "ROLLWAY_STORE", global = true)]
    pub store: Option<String>,

    /// MQTT broker URL, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, env = "MQTT_URL", hide_env_values = true, global = true)]
    pub mqtt_url: Option<String>,

    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,

    /// Directory with extra plugin components (*.wasm).
    #[arg(long, env = "ROLLWAY_PLUGINS_DIR", global = true)]
    pub plugins_dir: Option<PathBuf>,

    /// Where compiled plugins are kept between starts (default: the data
    /// directory's `plugin-cache`). A directory of its own: what the cache
    /// does not know there is deleted. Its contents run as code: writable
    /// by Rollway's user only.
    #[arg(long, env = "ROLLWAY_PLUGIN_CACHE_DIR", global = true)]
    pub plugin_cache_dir: Option<PathBuf>,

    /// Where `rollway up` keeps its private database, files and keys.
    #[arg(long, env = "ROLLWAY_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// When set, an admin API token with exactly this value exists after start.
    #[arg(
        long,
        env = "ROLLWAY_BOOTSTRAP_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub bootstrap_token: Option<String>,

    /// Prefix of the MQTT topics.
    #[arg(long, env = "ROLLWAY_TOPIC_PREFIX", global = true)]
    pub topic_prefix: Option<String>,

    /// Largest firmware image accepted, in bytes.
    #[arg(long, env = "ROLLWAY_MAX_FIRMWARE_BYTES", global = true)]
    pub max_firmware_bytes: Option<u64>,

    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "ROLLWAY_DB_POOL_SIZE", global = true)]
    pub db_pool_size: Option<u32>,

    /// Base URL devices download firmware from (when the store cannot
    /// presign), e.g. https://ota.example.com. Defaults to the listen address.
    #[arg(long, env = "ROLLWAY_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Where device statuses come from: `mqtt` (a shared subscription) or
    /// `kafka` (a consumer group on ROLLWAY_STATUS_TOPIC, for brokers that
    /// bridge MQTT to Kafka).
    #[arg(long, env = "ROLLWAY_STATUS_SOURCE", global = true)]
    pub status_source: Option<String>,

    /// Kafka topic of device statuses when the source is `kafka`.
    #[arg(long, env = "ROLLWAY_STATUS_TOPIC", global = true)]
    pub status_topic: Option<String>,

    /// Kafka topic the outbox relay publishes events to.
    #[arg(long, env = "ROLLWAY_EVENTS_TOPIC", global = true)]
    pub events_topic: Option<String>,

    /// Partitions of the events topic when Rollway creates it (at start,
    /// when it is missing).
    #[arg(long, env = "ROLLWAY_EVENTS_TOPIC_PARTITIONS", global = true)]
    pub events_topic_partitions: Option<i32>,

    /// Replicas of each partition of the events topic when Rollway creates
    /// it; -1, the default, takes the broker's `default.replication.factor`.
    #[arg(long, env = "ROLLWAY_EVENTS_TOPIC_REPLICATION", global = true)]
    pub events_topic_replication: Option<i32>,

    /// Refusals of an event for what it is (too large, invalid) before it
    /// moves to the dead letter table; outages and a missing topic do not
    /// count.
    #[arg(long, env = "ROLLWAY_OUTBOX_MAX_ATTEMPTS", global = true)]
    pub outbox_max_attempts: Option<i32>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "ROLLWAY_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    /// This replica's stable name (default: the host name). It names the
    /// host's MQTT session, so a restarted replica resumes its own queue of
    /// statuses; every replica needs a different one.
    #[arg(long, env = "ROLLWAY_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,

    /// Seconds without a heartbeat after which a replica counts as gone and
    /// a live one adopts its MQTT session.
    #[arg(long, env = "ROLLWAY_REPLICA_TIMEOUT", global = true)]
    pub replica_timeout: Option<u64>,

    /// A file holding the ed25519 key that signs manifests (32 bytes, raw,
    /// hex or base64). Without it the first start generates one; with it,
    /// the key becomes the signing key (as a rotation) if it is new.
    #[arg(long, env = "ROLLWAY_SIGNING_KEY_FILE", global = true)]
    pub signing_key_file: Option<PathBuf>,

    /// A PEM file of the certificate authority that signed the MQTT
    /// broker's certificate (with an `mqtts://` MQTT_URL), when it is not
    /// one the system trusts.
    #[arg(long, env = "ROLLWAY_MQTT_CA_FILE", global = true)]
    pub mqtt_ca_file: Option<PathBuf>,

    /// Seconds a signed update manifest (and its download link) stays
    /// valid; a device refuses it later (freeze attacks). Default: the
    /// job's device timeout plus an hour.
    #[arg(long, env = "ROLLWAY_MANIFEST_TTL", global = true)]
    pub manifest_ttl: Option<u64>,

    /// Failed authentications one client address may make per minute
    /// before it is refused with 429 for the rest of the minute (0: no limit).
    #[arg(long, env = "ROLLWAY_AUTH_FAILURE_LIMIT", global = true)]
    pub auth_failure_limit: Option<u32>,

    /// Seconds a processed status message id (the duplicate guard) and an
    /// outbox event already sent to Kafka are kept before they are
    /// deleted. Default: 30 days.
    #[arg(long, env = "ROLLWAY_RETENTION", global = true)]
    pub retention: Option<u64>,

    /// The broker's topic counting the messages it dropped, mirrored in
    /// `mqtt_broker_messages_dropped`: `$SYS/broker/publish/messages/dropped`
    /// on Mosquitto (docs/BROKER-ACL.md). Unset: not watched.
    #[arg(long, env = "ROLLWAY_MQTT_DROPPED_TOPIC", global = true)]
    pub mqtt_dropped_topic: Option<String>,

    /// Seconds a client has to send a request's headers before its
    /// connection is closed (slow or half-open clients).
    #[arg(long, env = "ROLLWAY_HTTP_HEADER_TIMEOUT", global = true)]
    pub http_header_timeout: Option<u64>,

    /// Seconds a request body may stall (no bytes) before the request is
    /// answered 408 and its connection closed. Uploads of any size go on
    /// for as long as bytes keep coming.
    #[arg(long, env = "ROLLWAY_HTTP_BODY_TIMEOUT", global = true)]
    pub http_body_timeout: Option<u64>,
}

/// Resolved settings of one host process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Option<SecretString>,
    pub listen: SocketAddr,
    pub store: String,
    pub mqtt_url: Option<SecretString>,
    pub kafka_brokers: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub plugin_cache_dir: PathBuf,
    pub data_dir: PathBuf,
    pub bootstrap_token: Option<SecretString>,
    pub topic_prefix: String,
    pub max_firmware_bytes: u64,
    pub db_pool_size: u32,
    pub log_json: bool,
    pub public_url: Option<String>,
    pub status_source: StatusSource,
    pub status_topic: String,
    pub events_topic: String,
    /// How the events topic is created when it is missing.
    pub events_topic_spec: crate::kafka::TopicSpec,
    pub outbox_max_attempts: i32,
    pub instance_id: String,
    pub replica_timeout: std::time::Duration,
    pub manifest_ttl: Option<std::time::Duration>,
    pub auth_failure_limit: u32,
    pub mqtt_ca_file: Option<PathBuf>,
    pub signing_key_file: Option<PathBuf>,
    pub retention: std::time::Duration,
    pub http_header_timeout: std::time::Duration,
    pub http_body_timeout: std::time::Duration,
    pub mqtt_dropped_topic: Option<String>,
}

/// Where device statuses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusSource {
    Mqtt,
    Kafka,
}

impl SettingsArgs {
    /// `command` with these settings, every command's, out of its short
    /// help (`-h`): each command's own options stand alone there, and
    /// `--help` shows everything.
    pub fn out_of_short_help(command: clap::Command) -> clap::Command {
        use clap::Args as _;
        let ids: Vec<clap::Id> = Self::augment_args(clap::Command::new("settings"))
            .get_arguments()
            .map(|arg| arg.get_id().clone())
            .collect();
        command.mut_args(|arg| {
            if ids.contains(arg.get_id()) {
                arg.hide_short_help(true)
            } else {
                arg
            }
        })
    }
}

impl Settings {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_TOPIC_PREFIX: &'static str = "fleet";
    pub const DEFAULT_MAX_FIRMWARE_BYTES: u64 = 512 * 1024 * 1024;
    /// Failed authentications per client address and minute.
    pub const DEFAULT_AUTH_FAILURE_LIMIT: u32 = 30;

    /// Merges flags/environment over the config file over defaults.
    pub fn load(args: &SettingsArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => SettingsArgs::default(),
        };
        let pick = |flag: &Option<String>, file: &Option<String>| -> Option<String> {
            flag.clone()
                .or_else(|| file.clone())
                .filter(|v| !v.is_empty())
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let store = pick(&args.store, &file.store)
            .unwrap_or_else(|| format!("file://{}", data_dir.join("store").display()));
        let topic_prefix = pick(&args.topic_prefix, &file.topic_prefix)
            .unwrap_or_else(|| Self::DEFAULT_TOPIC_PREFIX.to_owned());
        validate_topic_prefix(&topic_prefix)?;
        let log_format = pick(&args.log_format, &file.log_format).unwrap_or_else(|| "text".into());
        let log_json = match log_format.as_str() {
            "text" => false,
            "json" => true,
            other => bail!("ROLLWAY_LOG_FORMAT must be 'text' or 'json', not '{other}'"),
        };
        let max_firmware_bytes = args
            .max_firmware_bytes
            .or(file.max_firmware_bytes)
            .unwrap_or(Self::DEFAULT_MAX_FIRMWARE_BYTES);
        if max_firmware_bytes == 0 {
            bail!("ROLLWAY_MAX_FIRMWARE_BYTES must be positive");
        }
        let db_pool_size = args.db_pool_size.or(file.db_pool_size).unwrap_or(16);
        if db_pool_size == 0 {
            bail!("ROLLWAY_DB_POOL_SIZE must be positive");
        }
        let instance_id =
            pick(&args.instance_id, &file.instance_id).unwrap_or_else(default_instance_id);
        validate_instance_id(&instance_id)?;
        Ok(Self {
            database_url: pick(&args.database_url, &file.database_url).map(SecretString::from),
            listen: match args.listen.or(file.listen) {
                Some(addr) => addr,
                None => Self::DEFAULT_LISTEN
                    .parse()
                    .context("default listen address")?,
            },
            store,
            mqtt_url: pick(&args.mqtt_url, &file.mqtt_url).map(SecretString::from),
            kafka_brokers: pick(&args.kafka_brokers, &file.kafka_brokers),
            plugins_dir: args.plugins_dir.clone().or(file.plugins_dir),
            plugin_cache_dir: match args.plugin_cache_dir.clone().or(file.plugin_cache_dir) {
                // The cache deletes what it does not know in its directory.
                Some(dir) if data_dir.starts_with(&dir) => bail!(
                    "ROLLWAY_PLUGIN_CACHE_DIR must be a directory of its own, not {} (which holds the data directory)",
                    dir.display()
                ),
                Some(dir) => dir,
                None => data_dir.join("plugin-cache"),
            },
            data_dir,
            bootstrap_token: pick(&args.bootstrap_token, &file.bootstrap_token)
                .map(SecretString::from),
            topic_prefix,
            max_firmware_bytes,
            db_pool_size,
            log_json,
            public_url: pick(&args.public_url, &file.public_url),
            status_source: match pick(&args.status_source, &file.status_source).as_deref() {
                None | Some("mqtt") => StatusSource::Mqtt,
                Some("kafka") => StatusSource::Kafka,
                Some(other) => {
                    bail!("ROLLWAY_STATUS_SOURCE must be 'mqtt' or 'kafka', not '{other}'")
                }
            },
            status_topic: pick(&args.status_topic, &file.status_topic)
                .unwrap_or_else(|| "rollway.device-status".to_owned()),
            events_topic: pick(&args.events_topic, &file.events_topic)
                .unwrap_or_else(|| "rollway.events".to_owned()),
            events_topic_spec: crate::kafka::TopicSpec {
                partitions: match args
                    .events_topic_partitions
                    .or(file.events_topic_partitions)
                    .unwrap_or(6)
                {
                    n if n >= 1 => n,
                    _ => bail!("ROLLWAY_EVENTS_TOPIC_PARTITIONS must be at least 1"),
                },
                replication: match args
                    .events_topic_replication
                    .or(file.events_topic_replication)
                    .unwrap_or(-1)
                {
                    n if n == -1 || n >= 1 => n,
                    _ => bail!(
                        "ROLLWAY_EVENTS_TOPIC_REPLICATION must be at least 1, or -1 for the broker's default"
                    ),
                },
            },
            outbox_max_attempts: match args
                .outbox_max_attempts
                .or(file.outbox_max_attempts)
                .unwrap_or(10)
            {
                n if n >= 1 => n,
                _ => bail!("ROLLWAY_OUTBOX_MAX_ATTEMPTS must be at least 1"),
            },
            instance_id,
            replica_timeout: match args.replica_timeout.or(file.replica_timeout).unwrap_or(15) {
                n if n >= 2 => std::time::Duration::from_secs(n),
                _ => bail!("ROLLWAY_REPLICA_TIMEOUT must be at least 2 seconds"),
            },
            manifest_ttl: match args.manifest_ttl.or(file.manifest_ttl) {
                None => None,
                Some(n) if n >= 1 => Some(std::time::Duration::from_secs(n)),
                Some(_) => bail!("ROLLWAY_MANIFEST_TTL must be at least 1 second"),
            },
            auth_failure_limit: args
                .auth_failure_limit
                .or(file.auth_failure_limit)
                .unwrap_or(Self::DEFAULT_AUTH_FAILURE_LIMIT),
            mqtt_ca_file: args.mqtt_ca_file.clone().or(file.mqtt_ca_file),
            signing_key_file: args.signing_key_file.clone().or(file.signing_key_file),
            retention: match args.retention.or(file.retention).unwrap_or(30 * 24 * 3600) {
                n if n >= 1 => std::time::Duration::from_secs(n),
                _ => bail!("ROLLWAY_RETENTION must be at least 1 second"),
            },
            mqtt_dropped_topic: pick(&args.mqtt_dropped_topic, &file.mqtt_dropped_topic),
            http_header_timeout: match args
                .http_header_timeout
                .or(file.http_header_timeout)
                .unwrap_or(10)
            {
                n if n >= 1 => std::time::Duration::from_secs(n),
                _ => bail!("ROLLWAY_HTTP_HEADER_TIMEOUT must be at least 1 second"),
            },
            http_body_timeout: match args
                .http_body_timeout
                .or(file.http_body_timeout)
                .unwrap_or(30)
            {
                n if n >= 1 => std::time::Duration::from_secs(n),
                _ => bail!("ROLLWAY_HTTP_BODY_TIMEOUT must be at least 1 second"),
            },
        })
    }
}

fn read_config_file(path: &Path) -> anyhow::Result<SettingsArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// `/var/lib/rollway` for root (a system service), otherwise the user's data
/// directory.
fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/rollway");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("rollway");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/rollway"),
        None => PathBuf::from("rollway-data"),
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The host name, which differs between replicas on different machines.
fn default_instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| validate_instance_id(name).is_ok())
        .unwrap_or_else(|| "rollway".to_owned())
}

/// An instance id goes into MQTT client ids: short, no separators or wildcards.
fn validate_instance_id(id: &str) -> anyhow::Result<()> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 64 || !id.chars().all(fine) {
        bail!(
            "ROLLWAY_INSTANCE_ID '{id}' must be 1-64 characters of letters, digits, '-', '_' or '.'"
        );
    }
    Ok(())
}

fn validate_topic_prefix(prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty()
        || prefix.starts_with('/')
        || prefix.ends_with('/')
        || prefix.contains(['+', '#', '\0'])
        || prefix.starts_with('$')
    {
        bail!(
            "ROLLWAY_TOPIC_PREFIX '{prefix}' is not a valid MQTT topic prefix \
             (no wildcards, no leading '$' or '/', no trailing '/')"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("rollway-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rollway.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ntopic_prefix = \"quarry\"\nstore = \"file:///srv/fw\"\n",
        )
        .unwrap();
        let args = SettingsArgs {
            config: Some(path),
            store: Some("s3://firmware".into()),
            ..Default::default()
        };
        let settings = Settings::load(&args).unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.topic_prefix, "quarry");
        assert_eq!(settings.store, "s3://firmware");
        assert_eq!(
            settings.max_firmware_bytes,
            Settings::DEFAULT_MAX_FIRMWARE_BYTES
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_config_keys_and_bad_prefixes_are_refused() {
        assert!(toml::from_str::<SettingsArgs>("lisen = \"x\"").is_err());
        for bad in ["", "a/#", "$SYS", "/fleet", "fleet/"] {
            assert!(validate_topic_prefix(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_topic_prefix("fleet/eu").is_ok());
        for bad in ["", "a/b", "a+", "x y"] {
            assert!(validate_instance_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_instance_id("rollway-0.eu_1").is_ok());
    }

    #[test]
    fn secrets_are_not_printed() {
        let args = SettingsArgs {
            database_url: Some("postgres://u:hunter2@db/x".into()),
            bootstrap_token: Some("rw_secret".into()),
            ..Default::default()
        };
        let printed = format!("{:?}", Settings::load(&args).unwrap());
        assert!(!printed.contains("hunter2") && !printed.contains("rw_secret"));
    }
}

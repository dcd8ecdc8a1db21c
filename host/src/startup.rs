//! Building and running one host process: `Application::build` connects,
//! migrates and binds; `run_until_stopped` serves until the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::failover::{Adopter, Replicas};
use crate::ingest::Ingest;
use crate::mqtt;
use crate::relay::Relay;
use crate::scheduler::Scheduler;

use crate::api::{self, AppState};
use crate::metrics::Metrics;
use crate::plugins::runtime::Limits;
use crate::plugins::{self, PluginRegistry, Plugins};
use crate::settings::{Settings, StatusSource};
use crate::signing::Keyring;
use crate::store::FirmwareStore;
use crate::{auth, db};

/// Dispatch rounds run at once.
const DISPATCH_WORKERS: usize = 2;

pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    state: AppState,
    /// The relay's Kafka producer, when KAFKA_BROKERS is set.
    kafka: Option<Arc<crate::relay::Kafka>>,
    /// What the start applied of the plugin tables, where following them
    /// goes on.
    followed: std::sync::Mutex<Option<plugins::store::Followed>>,
}

impl Application {
    /// Connects to PostgreSQL and the firmware store, applies migrations,
    /// ensures the bootstrap token, and binds the listener (port 0 picks a
    /// free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let url = settings
            .database_url
            .clone()
            .context("DATABASE_URL is not set (or use `rollway up` for a private database)")?;
        let pool = db::connect(&url, settings.db_pool_size).await?;
        Self::build_with_pool(settings, pool).await
    }

    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        db::migrate(&pool).await?;
        if let Some(token) = &settings.bootstrap_token {
            auth::ensure_bootstrap(&pool, token.expose_secret())
                .await
                .context("creating the bootstrap token")?;
        }
        crate::replicas::register(&pool, &settings.instance_id, settings.replica_timeout)
            .await
            .context("registering this replica")?;
        // What this replica's previous run claimed and may not have sent.
        crate::dispatch::resend_orphans(&pool, &settings.instance_id)
            .await
            .context("re-queueing unsent commands")?;
        let store = FirmwareStore::open(&settings.store)?;
        store.check().await?;
        let metrics = Metrics::new().context("registering metrics")?;
        let (plugins, followed) = load_plugins(&settings, &pool, &store, &metrics).await?;
        let keys = match &settings.signing_key_file {
            Some(path) => Keyring::load_with_file(&pool, path).await,
            None => Keyring::load_or_create(&pool).await,
        }
        .context("loading the manifest signing key")?;
        let kafka = match &settings.kafka_brokers {
            Some(brokers) => {
                let kafka = crate::relay::Kafka::connect(brokers, settings.events_topic_spec)?;
                // A broker that refuses to create the topic stops the start;
                // one that does not answer leaves it to the relay.
                match kafka.make_topic(&settings.events_topic).await {
                    Ok(()) => {}
                    Err(error @ crate::kafka::TopicError::Refused { .. }) => {
                        return Err(anyhow::Error::new(error).context(format!(
                            "the events topic {} (ROLLWAY_EVENTS_TOPIC) is missing and cannot be created",
                            settings.events_topic
                        )));
                    }
                    Err(error) => tracing::warn!(
                        %error,
                        topic = settings.events_topic,
                        "the events topic could not be made sure of; the relay tries again"
                    ),
                }
                Some(Arc::new(kafka))
            }
            None => {
                tracing::info!(
                    "KAFKA_BROKERS is not set: outbox events reach the live stream only"
                );
                None
            }
        };
        let auth_failures = crate::auth::FailureLimiter::new(settings.auth_failure_limit);
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let address = listener.local_addr().context("reading the bound address")?;
        tracing::info!(%address, store = store.describe(), "rollway host ready");
        Ok(Self {
            listener,
            address,
            state: AppState {
                pool,
                store,
                metrics,
                settings: Arc::new(settings),
                plugins,
                keys,
                events: crate::live::channel(),
                auth_failures,
                scheduler_wakeup: Arc::new(Notify::new()),
                mqtt: mqtt::LinkState::not_configured(),
            },
            kafka,
            followed: std::sync::Mutex::new(Some(followed)),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and
    /// stops the background workers.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let workers = CancellationToken::new();
        let handles = self.start_workers(&workers)?;
        let router = api::router(self.state.clone());
        let timeouts = Timeouts {
            header: self.state.settings.http_header_timeout,
            body: self.state.settings.http_body_timeout,
        };
        let served = serve(self.listener, router, timeouts, shutdown).await;
        workers.cancel();
        for handle in handles {
            if tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .is_err()
            {
                tracing::warn!("a background worker did not stop in time");
            }
        }
        self.state.pool.close().await;
        served
    }

    /// The scheduler and rollout engine always; the dispatcher and MQTT
    /// status ingestion when an MQTT broker is configured.
    fn start_workers(&self, token: &CancellationToken) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let state = &self.state;
        let settings = &state.settings;
        let dispatch_wakeup = Arc::new(Notify::new());
        let evaluate_wakeup = state.scheduler_wakeup.clone();
        let mut handles = Vec::new();
        let scheduler = Scheduler {
            pool: state.pool.clone(),
            plugins: state.plugins.clone(),
            metrics: state.metrics.clone(),
            dispatch_wakeup: dispatch_wakeup.clone(),
            evaluate_wakeup: evaluate_wakeup.clone(),
        };
        handles.push(tokio::spawn(scheduler.run(token.clone())));
        let followed = self
            .followed
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or_default();
        handles.push(tokio::spawn(plugins::store::follow(
            state.plugins.clone(),
            state.pool.clone(),
            state.store.clone(),
            followed,
            token.clone(),
        )));
        let retention = crate::retention::Retention {
            pool: state.pool.clone(),
            metrics: state.metrics.clone(),
            keep: settings.retention,
        };
        handles.push(tokio::spawn(retention.run(token.clone())));
        let relay = Relay {
            pool: state.pool.clone(),
            metrics: state.metrics.clone(),
            kafka: self.kafka.clone(),
            topic: settings.events_topic.clone(),
            max_attempts: settings.outbox_max_attempts,
            wakeup: Arc::new(Notify::new()),
            holder: settings.instance_id.clone(),
            floor: Default::default(),
        };
        handles.push(tokio::spawn(relay.run(token.clone())));
        handles.push(tokio::spawn(crate::live::run(
            state.pool.clone(),
            state.events.clone(),
            token.clone(),
        )));
        let mut replicas = Replicas::new(
            &state.pool,
            settings.instance_id.clone(),
            settings.replica_timeout,
            state.metrics.clone(),
        );
        let Some(url) = &settings.mqtt_url else {
            tracing::warn!(
                "MQTT_URL is not set: jobs are planned but no command is sent and no status received"
            );
            handles.push(tokio::spawn(replicas.run(token.clone())));
            return Ok(handles);
        };
        let mqtt_ca = match &settings.mqtt_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading ROLLWAY_MQTT_CA_FILE {}", path.display()))?,
            ),
            None => None,
        };
        let options = mqtt::options(
            url.expose_secret(),
            &crate::replicas::client_id(&settings.instance_id),
            mqtt_ca.as_deref(),
        )?;
        let (incoming_tx, incoming_rx) = mpsc::channel(10_000);
        let from_mqtt = settings.status_source == StatusSource::Mqtt;
        let subscriptions = if from_mqtt {
            Ingest::subscriptions(&settings.topic_prefix)
        } else {
            Vec::new()
        };
        let link = mqtt::spawn(
            options,
            subscriptions,
            from_mqtt.then_some(incoming_tx),
            state.metrics.clone(),
            state.mqtt.clone(),
            settings.mqtt_dropped_topic.clone(),
            token.clone(),
        );
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.address));
        let dispatcher = Dispatcher {
            pool: state.pool.clone(),
            plugins: state.plugins.clone(),
            metrics: state.metrics.clone(),
            keys: state.keys.clone(),
            manifest_ttl: settings.manifest_ttl,
            store: state.store.clone(),
            mqtt: link.clone(),
            topic_prefix: settings.topic_prefix.clone(),
            public_url,
            wakeup: dispatch_wakeup.clone(),
            instance_id: settings.instance_id.clone(),
        };
        // Concurrent dispatch rounds: claims skip each other's locked rows,
        // so while one round writes its claims, another signs and
        // publishes. A device has at most one execution in flight (a
        // unique index), so no device gets two commands at once.
        for _ in 0..DISPATCH_WORKERS {
            handles.push(tokio::spawn(dispatcher.clone().run(token.clone())));
        }
        let ingest = Ingest {
            pool: state.pool.clone(),
            plugins: state.plugins.clone(),
            metrics: state.metrics.clone(),
            topic_prefix: settings.topic_prefix.clone(),
            evaluate_wakeup,
            dispatch_wakeup,
            refusals: Default::default(),
        };
        if from_mqtt {
            replicas.adopter = Some(Adopter {
                mqtt_url: url.clone(),
                mqtt_ca,
                subscriptions: Ingest::subscriptions(&settings.topic_prefix),
                ingest: ingest.clone(),
            });
            handles.push(tokio::spawn(ingest.run_mqtt(
                incoming_rx,
                link.clone(),
                token.clone(),
            )));
        } else {
            let brokers = settings
                .kafka_brokers
                .clone()
                .context("ROLLWAY_STATUS_SOURCE=kafka needs KAFKA_BROKERS")?;
            let topic = settings.status_topic.clone();
            let token = token.clone();
            handles.push(tokio::spawn(async move {
                let spec = crate::kafka::TopicSpec {
                    partitions: 4,
                    replication: -1,
                };
                let wait = Duration::from_secs(10);
                if let Err(error) = crate::kafka::ensure_topic(&brokers, &topic, spec, wait).await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        topic,
                        "the status topic could not be created"
                    );
                }
                ingest
                    .run_kafka(brokers, topic, "rollway-status".into(), token)
                    .await;
            }));
        }
        handles.push(tokio::spawn(replicas.run(token.clone())));
        Ok(handles)
    }
}

/// How long a client may take to send a request.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// For all the headers of a request.
    header: Duration,
    /// Without any byte of the body arriving.
    body: Duration,
}

/// Longest a graceful shutdown waits for open requests (event streams
/// never end by themselves).
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` until `shutdown` resolves, then lets open requests
/// finish (at most [`DRAIN`]). Unlike `axum::serve`, it bounds how long a
/// client may take to send its headers and how long its body may stall: a
/// slow or half-open client otherwise holds a connection for ever.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a little rather than spin.
                    tracing::warn!(%error, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(address));
                let request = request.map(|body| {
                    axum::body::Body::new(tower_http::timeout::TimeoutBody::new(
                        timeouts.body,
                        body,
                    ))
                });
                router.clone().oneshot(request)
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %address, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("closing the HTTP connections still open after {DRAIN:?}");
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "listening for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "listening for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// The shipped plugins, those of `ROLLWAY_PLUGINS_DIR`, and the uploaded
/// ones, with the enabled/disabled state and the settings admins set.
async fn load_plugins(
    settings: &Settings,
    pool: &PgPool,
    store: &FirmwareStore,
    metrics: &Metrics,
) -> anyhow::Result<(Plugins, plugins::store::Followed)> {
    let metrics = metrics.clone();
    let dir = settings.plugins_dir.clone();
    crate::plugins::runtime::cache_compiled_in(settings.plugin_cache_dir.clone());
    let registry = tokio::task::spawn_blocking(move || -> anyhow::Result<PluginRegistry> {
        let registry = PluginRegistry::with_builtins(metrics, Limits::default())?;
        if let Some(dir) = dir {
            registry.load_dir(&dir)?;
        }
        Ok(registry)
    })
    .await
    .context("loading plugins")??;
    let registry = Plugins::new(Arc::new(registry));
    let followed = plugins::store::restore(&registry, pool, store).await?;
    Ok((registry, followed))
}

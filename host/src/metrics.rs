//! Prometheus metrics of one host process. The names are a contract with
//! the operators' dashboards and alerts: keep them.
//!
//! Each `Application` owns its registry (tests run many in one process). The
//! prometheus types are thread-safe: no mutex is ever put around them.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub update_requests_total: IntCounter,
    pub update_commands_resent_total: IntCounter,
    pub cancel_commands_total: IntCounterVec,
    pub update_errors_total: IntCounterVec,
    pub download_duration_seconds: Histogram,
    pub dispatcher_mqtt_errors_total: IntCounterVec,
    pub outbox_pending_total: IntGauge,
    pub outbox_oldest_pending_seconds: Gauge,
    pub outbox_errors_total: IntCounter,
    pub mqtt_sessions_adopted: IntGauge,
    pub mqtt_broker_messages_dropped: IntGauge,
    pub live_stream_clients: IntGauge,
    pub event_processing_lag_seconds: Histogram,
    pub status_messages_total: IntCounterVec,
    pub presence_messages_total: IntCounterVec,
    pub device_drift_total: IntCounter,
    pub status_batch_fallbacks_total: IntCounter,
    pub plugin_calls_total: IntCounterVec,
    pub plugin_traps_total: IntCounterVec,
    pub plugin_call_duration_seconds: HistogramVec,
    pub plugin_compilations_total: IntCounterVec,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub api_errors_total: IntCounterVec,
    pub firmware_bytes_uploaded_total: IntCounter,
    pub retention_deleted_total: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
                let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };

        let outbox_pending_total = IntGauge::new(
            "outbox_pending_total",
            "Events written to the outbox and not yet published",
        )?;
        registry.register(Box::new(outbox_pending_total.clone()))?;
        let outbox_oldest_pending_seconds = Gauge::new(
            "outbox_oldest_pending_seconds",
            "Age of the oldest event not yet published (the relay's lag; 0 when none waits)",
        )?;
        registry.register(Box::new(outbox_oldest_pending_seconds.clone()))?;
        let live_stream_clients = IntGauge::new(
            "live_stream_clients",
            "Clients connected to /api/v1/events/stream on this replica",
        )?;
        registry.register(Box::new(live_stream_clients.clone()))?;
        let mqtt_sessions_adopted = IntGauge::new(
            "mqtt_sessions_adopted",
            "MQTT sessions of silent replicas this replica serves",
        )?;
        registry.register(Box::new(mqtt_sessions_adopted.clone()))?;
        let mqtt_broker_messages_dropped = IntGauge::new(
            "mqtt_broker_messages_dropped",
            "Messages the MQTT broker says it dropped since it started (queue and in-flight limits; Mosquitto's $SYS/broker/publish/messages/dropped)",
        )?;
        registry.register(Box::new(mqtt_broker_messages_dropped.clone()))?;
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer an HTTP request",
            ),
            &["method", "route"],
        )?;
        registry.register(Box::new(http_request_duration_seconds.clone()))?;
        // A call is tens of microseconds (a status), milliseconds (a batch
        // of commands) or up to its budget (an image, a runaway plugin).
        let plugin_call_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "plugin_call_duration_seconds",
                "Time of a plugin call, fresh instance included, failed calls too",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 120.0,
            ]),
            &["plugin", "function"],
        )?;
        registry.register(Box::new(plugin_call_duration_seconds.clone()))?;

        Ok(Self {
            update_requests_total: counter(
                "update_requests_total",
                "Update commands requested for devices",
            )?,
            update_commands_resent_total: counter(
                "update_commands_resent_total",
                "Update commands sent again for the same attempt: to devices back online, \
                 or claimed by a replica that stopped before it could tell they left",
            )?,
            cancel_commands_total: counter_vec(
                "cancel_commands_total",
                "Cancels for devices that had their update command, by result: sent, \
                 publish_failed (sent again later), refused (by the family's plugin), \
                 unsupported (the family's plugin predates cancels)",
                &["result"],
            )?,
            update_errors_total: counter_vec(
                "update_errors_total",
                "Device updates that ended in an error, by reason",
                &["reason"],
            )?,
            download_duration_seconds: histogram(
                "download_duration_seconds",
                "Time devices took to download firmware",
                vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ],
            )?,
            dispatcher_mqtt_errors_total: counter_vec(
                "dispatcher_mqtt_errors_total",
                "Failures to publish update commands over MQTT, by reason",
                &["reason"],
            )?,
            outbox_pending_total,
            outbox_oldest_pending_seconds,
            live_stream_clients,
            mqtt_sessions_adopted,
            mqtt_broker_messages_dropped,
            outbox_errors_total: counter(
                "outbox_errors_total",
                "Failures to publish outbox events",
            )?,
            event_processing_lag_seconds: histogram(
                "event_processing_lag_seconds",
                "Time from a device status being sent to it being applied",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            )?,
            status_messages_total: counter_vec(
                "status_messages_total",
                "Device status messages received, by result and, for those not applied, the reason",
                &["result", "reason"],
            )?,
            presence_messages_total: counter_vec(
                "presence_messages_total",
                "Device presence messages received, by result and, for those not recorded, the reason; \
                 a device a gateway may not speak for counts apart as spoofed",
                &["result", "reason"],
            )?,
            device_drift_total: counter(
                "device_drift_total",
                "Devices found running a firmware version Rollway did not install (flashed outside Rollway)",
            )?,
            status_batch_fallbacks_total: counter(
                "status_batch_fallbacks_total",
                "Status batches the database refused as a whole and that were applied again message by message",
            )?,
            plugin_calls_total: counter_vec(
                "plugin_calls_total",
                "Calls into plugins",
                &["plugin", "function"],
            )?,
            plugin_compilations_total: counter_vec(
                "plugin_compilations_total",
                "Plugin components made ready to run, by how: compiled, or from_cache \
                 (read from ROLLWAY_PLUGIN_CACHE_DIR, compiled by an earlier start)",
                &["result"],
            )?,
            plugin_traps_total: counter_vec(
                "plugin_traps_total",
                "Plugin calls that trapped, timed out or exceeded their memory",
                &["plugin", "reason"],
            )?,
            http_requests_total: counter_vec(
                "http_requests_total",
                "HTTP requests answered, by route and status code",
                &["method", "route", "status"],
            )?,
            http_request_duration_seconds,
            plugin_call_duration_seconds,
            api_errors_total: counter_vec(
                "api_errors_total",
                "API requests refused or failed, by problem type",
                &["type"],
            )?,
            firmware_bytes_uploaded_total: counter(
                "firmware_bytes_uploaded_total",
                "Bytes of firmware images received",
            )?,
            retention_deleted_total: counter_vec(
                "retention_deleted_total",
                "Rows deleted after the retention window, by table",
                &["table"],
            )?,
            registry,
        })
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

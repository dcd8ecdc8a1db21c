//! The update pipeline end to end: jobs start, roll out batch by batch to a
//! simulated fleet over the real MQTT broker, and statuses come back and are
//! applied exactly once in effect.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rollway::sim::{SimOptions, Simulator};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, metric, spawn_app_with};
use crate::images;

pub fn mqtt_url() -> String {
    std::env::var("MQTT_URL").expect("MQTT_URL is not set; run the tests through scripts/test.sh")
}

/// Options of a test's own client (named `{role}-…`) of the test broker.
pub fn test_client_options(role: &str) -> MqttOptions {
    let url = url::Url::parse(&mqtt_url()).unwrap();
    let mut options = MqttOptions::new(
        format!("{role}-{}", Uuid::new_v4().simple()),
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(1883),
    );
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    options
}

/// A host with MQTT on a topic prefix of its own.
pub async fn spawn_pipeline() -> (TestApp, String) {
    spawn_pipeline_with(|_| {}).await
}

/// Like `spawn_pipeline`, letting the test adjust the settings first.
pub async fn spawn_pipeline_with(
    configure: impl FnOnce(&mut rollway::Settings),
) -> (TestApp, String) {
    let prefix = format!("t{}", Uuid::new_v4().simple());
    let topic_prefix = prefix.clone();
    let app = spawn_app_with(move |s| {
        s.mqtt_url = Some(mqtt_url().into());
        s.topic_prefix = topic_prefix;
        s.mqtt_dropped_topic = Some(rollway::mqtt::MOSQUITTO_DROPPED_TOPIC.into());
        configure(s);
    })
    .await;
    (app, prefix)
}

pub fn sim_options(app: &TestApp, prefix: &str, devices: u32, families: &[&str]) -> SimOptions {
    SimOptions {
        families: families.iter().map(|f| (*f).to_owned()).collect(),
        topic_prefix: prefix.to_owned(),
        ..SimOptions::new(&app.base, &app.admin_token, &mqtt_url(), devices)
    }
}

pub async fn create_job(app: &TestApp, firmware: &Value, rollout: Value) -> String {
    let response = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware["id"], "targets": { "filter": { "tags": { "fleet": "simulated" } } }, "rollout": rollout }),
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Polls a job until it reaches one of `statuses`.
pub async fn wait_for(app: &TestApp, job: &str, statuses: &[&str], timeout: Duration) -> Value {
    wait_until(app, job, timeout, |view| {
        statuses.contains(&view["status"].as_str().unwrap_or_default())
    })
    .await
}

/// Polls a job's view until `reached` says so, and returns that view.
pub async fn wait_until(
    app: &TestApp,
    job: &str,
    timeout: Duration,
    reached: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let view: Value = app.json(&format!("/api/v1/jobs/{job}")).await;
        if reached(&view) {
            return view;
        }
        assert!(
            started.elapsed() < timeout,
            "job {job} still {} after {timeout:?}: {view}",
            view["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_thousand_devices_update_batch_by_batch() {
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, 1000, &["esp32", "stm32", "jetson"]);
    options.duplicates = 0.1;
    options.out_of_order = 0.1;
    options.dropouts = 0.02;
    let sim = Simulator::start(options).await.unwrap();

    let esp = app.upload_esp32("2.0.0").await;
    let stm = app.upload("stm32", "2.0.0", images::stm32(4096, 11)).await;
    let jet = app
        .upload("jetson", "2.0.0", images::jetson("jetson-orin-nx", "2.0.0"))
        .await;
    let rollout = json!({ "plugin": "rollout-percent", "config": { "batches": [10, 50, 100], "success_threshold": 90 } });
    let mut jobs = Vec::new();
    for firmware in [&esp, &stm, &jet] {
        jobs.push(create_job(&app, firmware, rollout.clone()).await);
    }
    for job in &jobs {
        let view = wait_for(
            &app,
            job,
            &["completed", "failed", "paused", "cancelled"],
            Duration::from_secs(180),
        )
        .await;
        assert_eq!(view["status"], "completed", "{view}");
        let total = view["total"].as_i64().unwrap();
        assert!(total >= 333, "{view}");
        assert_eq!(view["counts"]["done"], total, "{view}");
        let batches = view["batches"].as_array().unwrap();
        assert_eq!(batches.len(), 3, "{view}");
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(batch["batch_group"], i as i64);
        }
        // Each batch was released only after the one before met its threshold.
        let released: Vec<(i32, chrono::DateTime<chrono::Utc>, i32)> = sqlx::query_as(
            "SELECT batch_group, started_at, size FROM job_batches WHERE job_id = $1::uuid ORDER BY batch_group",
        )
        .bind(job)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        for pair in released.windows(2) {
            let (previous, next) = (&pair[0], &pair[1]);
            assert!(next.1 >= previous.1, "batches released out of order");
            let done_before: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM executions WHERE job_id = $1::uuid AND batch_group = $2 AND status = 'done' AND finished_at <= $3",
            )
            .bind(job)
            .bind(previous.0)
            .bind(next.1)
            .fetch_one(&app.pool)
            .await
            .unwrap();
            assert!(
                done_before * 100 >= i64::from(previous.2) * 90,
                "batch {} released after {done_before} of {} done",
                next.0,
                previous.2
            );
        }
    }
    // The server's view equals the devices' own.
    let truth = sim.truth.snapshot();
    assert_eq!(truth.len(), 1000);
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT e.device_id, e.status, d.firmware_version FROM executions e JOIN devices d ON d.id = e.device_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1000);
    for (device, status, version) in rows {
        let t = &truth[&device];
        assert_eq!(
            (t.state.as_str(), status.as_str()),
            ("done", "done"),
            "{device}"
        );
        assert_eq!(version.as_deref(), Some("2.0.0"), "{device}");
        assert_eq!(t.commands, 1, "{device} got more than one command");
    }
    // Duplicates were ignored, stale statuses refused, nothing else lost.
    assert!(metric(&app, "status_messages_total", &[("result", "duplicate")]).await > 0.0);
    assert!(metric(&app, "status_messages_total", &[("result", "rejected")]).await > 0.0);
    assert_eq!(metric(&app, "update_requests_total", &[]).await, 1000.0);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE event_type = 'execution.status.changed' AND payload->>'to' = 'done'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 1000);
    sim.stop().await;
}

#[tokio::test]
async fn too_many_failures_abort_the_rollout() {
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, 100, &["esp32", "jetson"]);
    // ESP32s fail often; the Jetsons (not in this job) never do.
    options.family_fail_rates = [("esp32".to_owned(), 0.6), ("jetson".to_owned(), 0.0)].into();
    let sim = Simulator::start(options).await.unwrap();
    let fw = app.upload_esp32("3.0.0").await;
    let job = create_job(&app, &fw, json!({ "plugin": "rollout-percent", "config": { "batches": [20, 100], "failure_threshold": 10 } })).await;
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed", "paused"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(view["status"], "failed", "{view}");
    assert!(
        view["status_reason"]
            .as_str()
            .unwrap()
            .contains("above the 10% threshold"),
        "{view}"
    );
    // The second batch was never dispatched, and nothing more goes out.
    let second = &view["batches"][1];
    assert_eq!(second["counts"]["cancelled"], second["total"], "{view}");
    let dispatched_later: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE job_id = $1::uuid AND batch_group = 1 AND attempts > 0")
        .bind(&job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(dispatched_later, 0);
    let sent = metric(&app, "update_requests_total", &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&app, "update_requests_total", &[]).await, sent);
    sim.stop().await;
}

#[tokio::test]
async fn pause_resume_and_cancel_mid_rollout() {
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, 60, &["esp32"]);
    options.step = Duration::from_millis(30);
    let sim = Simulator::start(options).await.unwrap();
    let fw = app.upload_esp32("4.0.0").await;
    let job = create_job(&app, &fw, json!({ "plugin": "rollout-percent", "config": { "batches": [10, 50, 100], "success_threshold": 100, "min_soak_secs": 1 } })).await;
    wait_for(&app, &job, &["running"], Duration::from_secs(20)).await;
    let paused: Value = app.act(&format!("/api/v1/jobs/{job}/pause")).await;
    assert_eq!(paused["status"], "paused", "{paused}");
    // While paused, no new command goes out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = metric(&app, "update_requests_total", &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&app, "update_requests_total", &[]).await, sent);
    assert!(sent < 60.0);
    let resumed: Value = app.act(&format!("/api/v1/jobs/{job}/resume")).await;
    assert_eq!(resumed["status"], "running");
    let done = wait_for(&app, &job, &["completed"], Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["done"], 60, "{done}");

    // A second job is cancelled while its first batch runs.
    let fw2 = app.upload_esp32("4.0.1").await;
    let job2 = create_job(&app, &fw2, json!({ "plugin": "rollout-percent", "config": { "batches": [50, 100], "success_threshold": 100, "min_soak_secs": 30 } })).await;
    wait_for(&app, &job2, &["running"], Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled: Value = app.act(&format!("/api/v1/jobs/{job2}/cancel")).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let view: Value = app
        .get(&format!("/api/v1/jobs/{job2}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "cancelled");
    let second = &view["batches"][1];
    assert_eq!(second["counts"]["cancelled"], second["total"], "{view}");
    sim.stop().await;
}

#[tokio::test]
async fn spoofed_and_malformed_statuses_change_nothing() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-A", "family": "esp32", "model": "esp32s3" }, { "id": "VIN-B", "family": "esp32", "model": "esp32s3" }])).await;
    let fw = app.upload_esp32("5.0.0").await;
    let job = app
        .post_json("/api/v1/jobs", &json!({ "firmware_id": fw["id"], "targets": { "devices": ["VIN-A", "VIN-B"] }, "rollout": { "plugin": "rollout-percent", "config": { "batches": [100] } } }))
        .await;
    let job: Value = job.json().await.unwrap();
    let job = job["id"].as_str().unwrap().to_owned();
    // No simulator: the executions stay dispatched, waiting for statuses.
    wait_until(&app, &job, Duration::from_secs(20), |view| {
        view["counts"]["dispatched"] == 2
    })
    .await;
    let (client, mut eventloop) = AsyncClient::new(test_client_options("attacker"), 100);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let send = |device: &str, body: Vec<u8>| {
        let client = client.clone();
        let topic = format!("{prefix}/{device}/update/status");
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .unwrap()
        }
    };
    // VIN-A claims VIN-B is done; garbage; an unknown device; an oversized payload.
    send(
        "VIN-A",
        br#"{"message_id":"x1","state":"done","device_id":"VIN-B"}"#.to_vec(),
    )
    .await;
    send("VIN-A", b"{not json".to_vec()).await;
    send("GHOST", br#"{"message_id":"x2","state":"done"}"#.to_vec()).await;
    send("VIN-A", vec![b' '; 70 * 1024]).await;
    // A legitimate status, twice, then a backward one.
    send(
        "VIN-A",
        br#"{"message_id":"a1","state":"flashing"}"#.to_vec(),
    )
    .await;
    send(
        "VIN-A",
        br#"{"message_id":"a1","state":"flashing"}"#.to_vec(),
    )
    .await;
    send(
        "VIN-A",
        br#"{"message_id":"a2","state":"downloading","progress":5}"#.to_vec(),
    )
    .await;
    let started = Instant::now();
    while metric(&app, "status_messages_total", &[]).await < 7.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "statuses not processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (result, n) in [
        ("spoofed", 1.0),
        ("malformed", 1.0),
        ("unknown_device", 1.0),
        ("oversized", 1.0),
        ("applied", 1.0),
        ("duplicate", 1.0),
        ("rejected", 1.0),
    ] {
        assert_eq!(
            metric(&app, "status_messages_total", &[("result", result)]).await,
            n,
            "{result}"
        );
    }
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT device_id, status FROM executions ORDER BY device_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        [
            ("VIN-A".to_owned(), "flashing".to_owned()),
            ("VIN-B".to_owned(), "dispatched".to_owned())
        ]
    );
}

#[tokio::test]
async fn silent_devices_time_out_and_failed_attempts_are_retried() {
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, 40, &["esp32"]);
    options.silent = 0.25;
    options.fail_first = 0.25;
    let sim = Simulator::start(options).await.unwrap();
    let fw = app.upload_esp32("6.0.0").await;
    // One retry: silent devices time out and succeed the second time. The
    // timeout leaves room for a loaded machine.
    let job = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": fw["id"], "targets": { "filter": {} }, "device_timeout_secs": 8, "max_retries": 1,
                     "rollout": { "plugin": "rollout-percent", "config": { "batches": [100], "failure_threshold": 100 } } }),
        )
        .await;
    let job: Value = job.json().await.unwrap();
    let job = job["id"].as_str().unwrap().to_owned();
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["counts"]["done"], 40, "{view}");
    let truth = sim.truth.snapshot();
    let retried: Vec<&String> = truth
        .iter()
        .filter(|(_, t)| t.commands == 2)
        .map(|(d, _)| d)
        .collect();
    assert!(!retried.is_empty(), "no device needed a retry");
    let attempts: Vec<(String, i32)> = sqlx::query_as("SELECT device_id, attempts FROM executions WHERE job_id = $1::uuid AND attempts > 1 ORDER BY device_id")
        .bind(&job)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut expected: Vec<(String, i32)> = retried.iter().map(|d| ((*d).clone(), 2)).collect();
    expected.sort();
    assert_eq!(attempts, expected);
    assert!(truth.values().all(|t| t.state == "done"));

    // Devices that never answer may never have had their command: they
    // are waited for until the deadline, not timed out (the fleet is gone).
    let fw2 = app.upload_esp32("6.0.1").await;
    sim.stop().await;
    let job2 = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": fw2["id"], "targets": { "devices": ["SIM-ESP32-000000", "SIM-ESP32-000001"] }, "device_timeout_secs": 1,
                     "delivery_deadline_secs": 4,
                     "rollout": { "plugin": "rollout-percent", "config": { "batches": [100], "failure_threshold": 100 } } }),
        )
        .await;
    let job2: Value = job2.json().await.unwrap();
    let view = wait_for(
        &app,
        job2["id"].as_str().unwrap(),
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (&view["counts"]["timed_out"], &view["counts"]["expired"]),
        (&json!(0), &json!(2)),
        "{view}"
    );
    assert!(metric(&app, "update_errors_total", &[("reason", "deadline")]).await >= 2.0);
}

/// Forwards device statuses from MQTT to Kafka, as a broker's bridge would:
/// the MQTT topic in the `mqtt_topic` header and as the key.
fn start_bridge(prefix: &str, brokers: &str, kafka_topic: &str) -> tokio::task::JoinHandle<()> {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let (client, mut eventloop) = AsyncClient::new(test_client_options("bridge"), 10_000);
    let filter = format!("{prefix}/+/update/status");
    let kafka_topic = kafka_topic.to_owned();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let headers = OwnedHeaders::new().insert(Header {
                        key: "mqtt_topic",
                        value: Some(p.topic.as_bytes()),
                    });
                    let record = FutureRecord::to(&kafka_topic)
                        .key(p.topic.as_str())
                        .payload(p.payload.as_ref())
                        .headers(headers);
                    producer
                        .send(record, Duration::from_secs(10))
                        .await
                        .unwrap();
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

#[tokio::test]
async fn the_kafka_status_path_gives_the_same_result() {
    let brokers = std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS is not set; run the tests through scripts/test.sh");
    let prefix = format!("t{}", Uuid::new_v4().simple());
    let kafka_topic = format!("statuses-{}", Uuid::new_v4().simple());
    crate::relay::make_topic(&brokers, &kafka_topic, 4).await;
    let bridge = start_bridge(&prefix, &brokers, &kafka_topic);
    let (topic_prefix, status_topic, kafka) =
        (prefix.clone(), kafka_topic.clone(), brokers.clone());
    let app = spawn_app_with(move |s| {
        s.mqtt_url = Some(mqtt_url().into());
        s.topic_prefix = topic_prefix;
        s.status_source = rollway::settings::StatusSource::Kafka;
        s.status_topic = status_topic;
        s.kafka_brokers = Some(kafka);
    })
    .await;
    let mut options = sim_options(&app, &prefix, 90, &["esp32", "stm32", "jetson"]);
    options.duplicates = 0.2;
    let sim = Simulator::start(options).await.unwrap();
    let esp = app.upload_esp32("7.0.0").await;
    let stm = app.upload("stm32", "7.0.0", images::stm32(4096, 12)).await;
    let jet = app
        .upload("jetson", "7.0.0", images::jetson("jetson-orin-nx", "7.0.0"))
        .await;
    let rollout = json!({ "plugin": "rollout-percent", "config": { "batches": [30, 100] } });
    for firmware in [&esp, &stm, &jet] {
        let job = create_job(&app, firmware, rollout.clone()).await;
        let view = wait_for(
            &app,
            &job,
            &["completed", "failed", "paused"],
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(view["status"], "completed", "{view}");
        assert_eq!(view["counts"]["done"], 30, "{view}");
    }
    let truth = sim.truth.snapshot();
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE firmware_version = '7.0.0'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(done, 90);
    assert!(truth.values().all(|t| t.state == "done" && t.commands == 1));
    assert!(metric(&app, "status_messages_total", &[("result", "duplicate")]).await > 0.0);
    sim.stop().await;
    bridge.abort();
}

#[tokio::test]
async fn resuming_a_rollout_paused_job_releases_the_next_batch() {
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, 10, &["esp32"]);
    options.fail_rate = 1.0;
    let sim = Simulator::start(options).await.unwrap();
    let fw = app.upload_esp32("8.0.0").await;
    // Failures never abort here, but a batch must fully succeed to go on.
    let job = create_job(&app, &fw, json!({ "plugin": "rollout-percent", "config": { "batches": [50, 100], "success_threshold": 100, "failure_threshold": 100 } })).await;
    let paused = wait_for(
        &app,
        &job,
        &["paused", "completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(paused["status"], "paused", "{paused}");
    assert!(
        paused["status_reason"]
            .as_str()
            .unwrap()
            .contains("below the 100% needed"),
        "{paused}"
    );
    assert_eq!(paused["batches"][1]["counts"]["queued"], 5, "{paused}");
    // The operator looked, and goes on: the next batch is released.
    let resumed = app.act(&format!("/api/v1/jobs/{job}/resume")).await;
    assert_eq!(resumed["status"], "running", "{resumed}");
    let done = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["error"], 10, "{done}");
    assert_eq!(done["status_reason"], "0 updated, 10 failed");
    sim.stop().await;
}

/// A device the test drives by hand over the broker: the commands it
/// receives, and the statuses it is told to send.
pub struct ManualDevice {
    pub client: AsyncClient,
    status_topic: String,
    commands: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl ManualDevice {
    /// Connects and subscribes to the device's command topic; returns once
    /// the broker acknowledged the subscription.
    pub async fn connect(prefix: &str, device: &str) -> Self {
        Self::connect_with(test_client_options("device"), prefix, device).await
    }

    /// Like `connect`, with client options of the test's own (another broker).
    pub async fn connect_with(options: MqttOptions, prefix: &str, device: &str) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (commands_tx, commands) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let filter = format!("{prefix}/{device}/update/command");
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let command = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if commands_tx.send(command).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("the broker acknowledged no subscription")
            .unwrap();
        Self {
            client,
            status_topic: format!("{prefix}/{device}/update/status"),
            commands,
        }
    }

    /// The next command, if one comes within `timeout`.
    pub async fn try_command(&mut self, timeout: Duration) -> Option<Value> {
        tokio::time::timeout(timeout, self.commands.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn next_command(&mut self, timeout: Duration) -> Value {
        tokio::time::timeout(timeout, self.commands.recv())
            .await
            .unwrap_or_else(|_| panic!("no command within {timeout:?}"))
            .unwrap()
    }

    /// Reports `init` and `done` for (execution, attempt), with message ids
    /// `{ids}-init` and `{ids}-done`, and waits for the one-device job to
    /// complete.
    pub async fn finish(
        &self,
        app: &TestApp,
        job: &str,
        execution: &Value,
        attempt: u32,
        ids: &str,
    ) {
        for state in ["init", "done"] {
            self.report(
                json!({ "message_id": format!("{ids}-{state}"), "state": state,
                                "execution_id": execution, "attempt": attempt }),
            )
            .await;
        }
        let view = wait_for(app, job, &["completed", "failed"], Duration::from_secs(30)).await;
        assert_eq!(view["counts"]["done"], 1, "{view}");
    }

    pub async fn report(&self, status: Value) {
        self.client
            .publish(
                self.status_topic.clone(),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&status).unwrap(),
            )
            .await
            .unwrap();
    }
}

/// Waits until the host counted `n` statuses with the result `result`.
pub async fn wait_results(app: &TestApp, result: &str, n: f64) {
    let started = Instant::now();
    while metric(app, "status_messages_total", &[("result", result)]).await < n {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fewer than {n} statuses {result}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn one_device_job(app: &TestApp, firmware: &Value, device: &str, extra: Value) -> String {
    devices_job(app, firmware, &[device], extra).await
}

/// A job for `devices` in one batch that no failure stops, with `extra`'s
/// fields.
pub async fn devices_job(
    app: &TestApp,
    firmware: &Value,
    devices: &[&str],
    extra: Value,
) -> String {
    let mut body = json!({ "firmware_id": firmware["id"], "targets": { "devices": devices },
                           "rollout": { "plugin": "rollout-percent", "config": { "batches": [100], "failure_threshold": 100 } } });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let response = app.post_json("/api/v1/jobs", &body).await;
    let status = response.status();
    let job: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

/// The device's execution events in the order written, each
/// `from -> to (cause)`.
pub async fn execution_moves(app: &TestApp, device: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT (payload->>'from') || ' -> ' || (payload->>'to') || ' (' || (payload->>'cause') || ')'
         FROM event_outbox
         WHERE event_type = 'execution.status.changed' AND aggregate_id = $1 ORDER BY seq",
    )
    .bind(device)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The message ids of the statuses applied to the device's executions, in
/// the order they were applied.
async fn applied_messages(app: &TestApp, device: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT l.message_id FROM execution_status_log l JOIN executions e ON e.id = l.execution_id
         WHERE e.device_id = $1 AND l.message_id IS NOT NULL ORDER BY l.id",
    )
    .bind(device)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn late_statuses_of_an_earlier_attempt_are_refused() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-R", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let fw = app.upload_esp32("7.0.0").await;
    let mut device = ManualDevice::connect(&prefix, "VIN-R").await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-R",
        json!({ "device_timeout_secs": 2, "max_retries": 1 }),
    )
    .await;

    let first = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(first["attempt"], 1, "{first}");
    let execution = first["execution_id"].clone();
    device
        .report(json!({ "message_id": "a1-init", "state": "init", "execution_id": execution, "attempt": 1 }))
        .await;
    // The device goes quiet: the timeout dispatches the second attempt.
    let second = device.next_command(Duration::from_secs(30)).await;
    assert_eq!(
        (&second["execution_id"], &second["attempt"]),
        (&execution, &json!(2)),
        "{second}"
    );
    // The first attempt's `done` arrives late, and so does a status of an
    // attempt that was never sent: neither finishes the execution.
    device
        .report(json!({ "message_id": "a1-done", "state": "done", "execution_id": execution, "attempt": 1 }))
        .await;
    device
        .report(json!({ "message_id": "a3-done", "state": "done", "execution_id": execution, "attempt": 3 }))
        .await;
    wait_results(&app, "stale_attempt", 2.0).await;
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM executions WHERE device_id = 'VIN-R'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("dispatched", 2));

    // The second attempt's own statuses finish it.
    device.finish(&app, &job, &execution, 2, "a2").await;
    assert_eq!(
        applied_messages(&app, "VIN-R").await,
        ["a1-init", "a2-init", "a2-done"]
    );
}

#[tokio::test]
async fn device_plugins_of_wit_0_1_0_still_update_their_devices() {
    let (app, prefix) = spawn_pipeline().await;
    let uploaded =
        crate::plugins::upload_plugin(&app, crate::plugins::fixture("legacy_device_plugin.wasm"))
            .await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let legacy = crate::plugins::plugin(&app, "device-legacy").await;
    assert_eq!(
        (
            &legacy["wit_version"],
            &legacy["reports_attempts"],
            &legacy["takes_batches"]
        ),
        (&json!("0.1.0"), &json!(false), &json!(false)),
        "{legacy}"
    );
    app.register(json!([{ "id": "OLD-1", "family": "legacy" }]))
        .await;
    let fw = app
        .upload("legacy", "2.0.0", b"an image of the legacy family".to_vec())
        .await;
    let mut device = ManualDevice::connect(&prefix, "OLD-1").await;
    let job = one_device_job(&app, &fw, "OLD-1", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(command["attempt"], 1, "{command}");
    // A plugin of 0.1.0 names no attempt: its statuses apply to the
    // current one, whatever the payload says.
    device
        .finish(&app, &job, &command["execution_id"], 9, "o")
        .await;
    assert_eq!(applied_messages(&app, "OLD-1").await, ["o-init", "o-done"]);
    assert_eq!(
        metric(
            &app,
            "status_messages_total",
            &[("result", "stale_attempt")]
        )
        .await,
        0.0
    );
    assert_eq!(legacy["sends_cancels"], false, "{legacy}");
    // Its devices cannot be told of a cancel: the cancel stands, counted,
    // and nothing is sent.
    let fw = app
        .upload(
            "legacy",
            "2.0.1",
            b"another image of the legacy family".to_vec(),
        )
        .await;
    let job = one_device_job(&app, &fw, "OLD-1", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;
    app.act(&format!("/api/v1/jobs/{job}/cancel")).await;
    let started = Instant::now();
    while metric(&app, "cancel_commands_total", &[("result", "unsupported")]).await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no cancel settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = app
        .json(&format!("/api/v1/executions/{}", command["execution_id"]))
        .await;
    assert_eq!(
        (&view["status"], &view["cancel_delivery"]),
        (&json!("cancelled"), &Value::Null),
        "{view}"
    );
    assert!(
        device
            .try_command(Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn expired_duplicate_guards_and_sent_events_are_deleted_and_repeats_still_refused() {
    let (app, prefix) = spawn_pipeline_with(|s| s.retention = Duration::from_secs(2)).await;
    app.register(json!([{ "id": "VIN-K", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let fw = app.upload_esp32("7.1.0").await;
    let mut device = ManualDevice::connect(&prefix, "VIN-K").await;
    let job = one_device_job(&app, &fw, "VIN-K", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;
    let execution = command["execution_id"].clone();
    device.finish(&app, &job, &execution, 1, "k").await;

    // Past the retention window, the message ids and the sent events go.
    let started = Instant::now();
    loop {
        let (ids, events): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM processed_messages WHERE message_id LIKE 'VIN-K/%'),
                    (SELECT count(*) FROM event_outbox)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if ids == 0 && events == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{ids} message ids and {events} events left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deleted = |table: &'static str| {
        let app = &app;
        async move { metric(app, "retention_deleted_total", &[("table", table)]).await }
    };
    assert!(deleted("processed_messages").await >= 2.0);
    assert!(deleted("event_outbox").await >= 3.0);
    let version = || async {
        sqlx::query_scalar::<_, i64>("SELECT version FROM executions WHERE device_id = 'VIN-K'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let before = version().await;

    // A repeat that comes later than that is no longer known by its id;
    // the state machine refuses it all the same.
    let refused = metric(&app, "status_messages_total", &[("result", "rejected")]).await;
    for state in ["init", "done"] {
        device
            .report(json!({ "message_id": format!("k-{state}"), "state": state,
                            "execution_id": execution, "attempt": 1 }))
            .await;
    }
    wait_results(&app, "rejected", refused + 2.0).await;
    assert_eq!(applied_messages(&app, "VIN-K").await, ["k-init", "k-done"]);
    assert_eq!(version().await, before);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "a refused repeat wrote an event");
}

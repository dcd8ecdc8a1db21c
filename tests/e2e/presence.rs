//! Presence: what devices say about themselves when they connect (the
//! version and security counter they run, their hardware), their last
//! wills, gateways speaking for the devices behind them, and the fleet's
//! view of who is connected.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use serde_json::{Value, json};

use crate::helpers::{TestApp, metric};
use crate::pipeline::{sim_options, spawn_pipeline, test_client_options};
use rollway::sim::{SimOptions, Simulator};

/// A device's MQTT session with its last will on its presence topic.
struct Session {
    client: AsyncClient,
    topic: String,
    driver: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn connect(prefix: &str, device: &str) -> Self {
        let topic = format!("{prefix}/{device}/presence");
        let mut options: MqttOptions = test_client_options("device");
        options.set_last_will(LastWill::new(
            &topic,
            br#"{"state":"offline"}"#.to_vec(),
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let driver = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected)
            .await
            .expect("the broker accepted no connection")
            .unwrap();
        Self {
            client,
            topic,
            driver,
        }
    }

    async fn say(&self, presence: Value) {
        self.say_bytes(serde_json::to_vec(&presence).unwrap()).await;
    }

    async fn say_bytes(&self, payload: Vec<u8>) {
        self.client
            .publish(&self.topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Drops off the network without a word: the broker publishes the
    /// last will.
    fn vanish(self) {
        self.driver.abort();
    }
}

async fn device(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/devices/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Waits until the device's record satisfies `ok`.
async fn wait_device(app: &TestApp, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let seen = device(app, id).await;
        if ok(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{id}: {what} did not happen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_metric(app: &TestApp, labels: &[(&str, &str)], n: f64) {
    let started = Instant::now();
    while metric(app, "presence_messages_total", labels).await < n {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fewer than {n} presence messages {labels:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let page: Value = app
        .get(&format!("/api/v1/devices?{query}"))
        .await
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_device_says_what_it_runs_when_it_connects_and_its_will_when_it_drops() {
    let (app, prefix) = spawn_pipeline().await;
    // Registered with what the workshop flashed.
    let response = app
        .post_json(
            "/api/v1/devices",
            &json!({ "id": "VIN-P1", "family": "esp32", "model": "esp32s3",
                     "installed_version": "1.0.0", "security_counter": 2 }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let registered: Value = response.json().await.unwrap();
    assert_eq!(
        (
            &registered["installed_version"],
            &registered["security_counter"],
            &registered["online"]
        ),
        (&json!("1.0.0"), &json!(2), &json!(false)),
        "{registered}"
    );
    app.register(json!([{ "id": "VIN-P2", "family": "esp32" }]))
        .await;

    let session = Session::connect(&prefix, "VIN-P1").await;
    session
        .say(json!({ "state": "online", "installed_version": "1.2.0", "security_counter": 3,
                     "hardware": { "board": "rev-b", "flash": "8MB" }, "ts": 1_764_000_000_000_u64 }))
        .await;
    let seen = wait_device(&app, "VIN-P1", "hello", |d| d["online"] == true).await;
    assert_eq!(seen["installed_version"], "1.2.0", "{seen}");
    assert_eq!(seen["firmware_version"], "1.2.0", "{seen}");
    assert_eq!(seen["security_counter"], 3, "{seen}");
    assert_eq!(
        seen["hardware"],
        json!({ "board": "rev-b", "flash": "8MB" }),
        "{seen}"
    );
    assert!(seen["presence_at"].is_string(), "{seen}");
    assert!(seen["last_seen"].is_string(), "{seen}");
    assert_eq!(
        metric(&app, "presence_messages_total", &[("result", "recorded")]).await,
        1.0
    );

    // The fleet's view: who is connected, and who runs what.
    assert_eq!(ids(&app, "online=true").await, ["VIN-P1"]);
    assert_eq!(ids(&app, "online=false").await, ["VIN-P2"]);
    assert_eq!(ids(&app, "installed_version=1.2.0").await, ["VIN-P1"]);
    let summary: Value = app.get("/api/v1/fleet/summary").await.json().await.unwrap();
    assert_eq!(summary["online"], 1, "{summary}");
    let running = summary["by_version"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["firmware_version"] == "1.2.0")
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(
        (&running["devices"], &running["online"]),
        (&json!(1), &json!(1))
    );

    let versions: Value = app
        .get("/api/v1/fleet/versions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        versions,
        json!([
            { "family": "esp32", "model": "esp32s3", "installed_version": "1.2.0", "devices": 1, "online": 1, "drifted": 1 },
            { "family": "esp32", "model": null, "installed_version": null, "devices": 1, "online": 0, "drifted": 0 },
        ])
    );
    let away: Value = app
        .get("/api/v1/fleet/versions?online=false&family=esp32")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(away.as_array().map(Vec::len), Some(1), "{away}");
    assert_eq!(away[0]["installed_version"], Value::Null, "{away}");

    // A registration that does not say what the device runs keeps what it
    // said itself.
    app.register(json!([{ "id": "VIN-P1", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let kept = device(&app, "VIN-P1").await;
    assert_eq!(
        (&kept["installed_version"], &kept["security_counter"]),
        (&json!("1.2.0"), &json!(3)),
        "{kept}"
    );

    // Gone without a word: its broker says so; what it runs stays known.
    session.vanish();
    let gone = wait_device(&app, "VIN-P1", "last will", |d| d["online"] == false).await;
    assert_eq!(gone["installed_version"], "1.2.0", "{gone}");
    assert_eq!(gone["hardware"]["board"], "rev-b", "{gone}");
    assert_eq!(gone["last_seen"], seen["last_seen"], "{gone}");
}

#[tokio::test]
async fn a_gateway_speaks_for_the_devices_behind_it_and_no_others() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([
        { "id": "JET-G", "family": "jetson", "model": "orin-nx" },
        { "id": "MCU-G1", "family": "stm32", "gateway_id": "JET-G" },
        { "id": "MCU-G2", "family": "stm32", "gateway_id": "JET-G" },
        { "id": "ESP-X", "family": "esp32", "installed_version": "3.0.0" },
    ]))
    .await;
    let gateway = Session::connect(&prefix, "JET-G").await;
    gateway
        .say(json!({ "state": "online", "installed_version": "36.4",
                     "children": [
                         { "device_id": "MCU-G1", "installed_version": "2.0.1", "security_counter": 4,
                           "hardware": { "bootloader": "1.1" } },
                         { "device_id": "ESP-X", "installed_version": "6.6.6" },
                     ] }))
        .await;
    wait_metric(&app, &[("result", "recorded")], 1.0).await;
    let child = device(&app, "MCU-G1").await;
    assert_eq!(
        (
            &child["online"],
            &child["installed_version"],
            &child["security_counter"],
            &child["hardware"]["bootloader"]
        ),
        (&json!(true), &json!("2.0.1"), &json!(4), &json!("1.1")),
        "{child}"
    );
    assert_eq!(device(&app, "JET-G").await["installed_version"], "36.4");
    // A device that is not behind the gateway is not its to speak for.
    let stranger = device(&app, "ESP-X").await;
    assert_eq!(
        (&stranger["online"], &stranger["installed_version"]),
        (&json!(false), &json!("3.0.0")),
        "{stranger}"
    );
    assert_eq!(
        metric(
            &app,
            "presence_messages_total",
            &[("result", "spoofed"), ("reason", "topic_mismatch")]
        )
        .await,
        1.0
    );
    // The one it did not mention is untouched.
    assert_eq!(device(&app, "MCU-G2").await["online"], false);

    // The gateway's last will takes the devices behind it along.
    gateway.vanish();
    wait_device(&app, "JET-G", "last will", |d| d["online"] == false).await;
    let child = device(&app, "MCU-G1").await;
    assert_eq!(
        (&child["online"], &child["installed_version"]),
        (&json!(false), &json!("2.0.1")),
        "{child}"
    );
}

#[tokio::test]
async fn bad_presence_is_refused_counted_and_stops_nothing() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-B", "family": "esp32", "installed_version": "1.0.0" }]))
        .await;
    let session = Session::connect(&prefix, "VIN-B").await;
    let bad: [(&[u8], &str); 6] = [
        (b"not json", "bad_json"),
        (br#"{"state":"asleep"}"#, "schema"),
        (br#"{"state":"online","installed_version":5}"#, "schema"),
        (
            br#"{"state":"online","installed_version":"1.0\u0000"}"#,
            "bad_text",
        ),
        (
            br#"{"state":"online","children":[{"device_id":"no spaces"}]}"#,
            "bad_text",
        ),
        (&[b' '; 20 * 1024], "size"),
    ];
    for (payload, _) in &bad {
        session.say_bytes(payload.to_vec()).await;
    }
    for reason in ["bad_json", "schema", "bad_text"] {
        let n = bad.iter().filter(|(_, r)| *r == reason).count() as f64;
        wait_metric(&app, &[("result", "malformed"), ("reason", reason)], n).await;
    }
    wait_metric(&app, &[("result", "oversized"), ("reason", "size")], 1.0).await;
    let unchanged = device(&app, "VIN-B").await;
    assert_eq!(
        (&unchanged["online"], &unchanged["installed_version"]),
        (&json!(false), &json!("1.0.0")),
        "{unchanged}"
    );
    // An unregistered device's presence changes nothing either.
    let stranger = Session::connect(&prefix, "VIN-UNKNOWN").await;
    stranger.say(json!({ "state": "online" })).await;
    wait_metric(&app, &[("result", "unknown_device")], 1.0).await;

    // The next good word is heard.
    session
        .say(json!({ "state": "online", "installed_version": "1.0.1" }))
        .await;
    wait_device(&app, "VIN-B", "hello", |d| {
        d["online"] == true && d["installed_version"] == "1.0.1"
    })
    .await;
    assert_eq!(metric(&app, "status_batch_fallbacks_total", &[]).await, 0.0);
}

#[tokio::test]
async fn devices_of_a_plugin_older_than_presence_are_read_with_the_standard_message() {
    let (app, prefix) = spawn_pipeline().await;
    let uploaded =
        crate::plugins::upload_plugin(&app, crate::plugins::fixture("legacy_device_plugin.wasm"))
            .await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let legacy = crate::plugins::plugin(&app, "device-legacy").await;
    assert_eq!(legacy["parses_presence"], false, "{legacy}");
    app.register(json!([{ "id": "OLD-P", "family": "legacy" }]))
        .await;
    let session = Session::connect(&prefix, "OLD-P").await;
    session
        .say(json!({ "state": "online", "installed_version": "0.9.9" }))
        .await;
    wait_device(&app, "OLD-P", "hello", |d| {
        d["online"] == true && d["installed_version"] == "0.9.9"
    })
    .await;
}

#[tokio::test]
async fn a_status_shows_its_sender_connected() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-S", "family": "esp32" }]))
        .await;
    assert!(device(&app, "VIN-S").await["last_seen"].is_null());
    // A status without an execution is refused, but its sender spoke.
    let device_link = crate::pipeline::ManualDevice::connect(&prefix, "VIN-S").await;
    device_link
        .report(json!({ "message_id": "s-1", "state": "init" }))
        .await;
    let seen = wait_device(&app, "VIN-S", "a status", |d| d["online"] == true).await;
    assert!(seen["last_seen"].is_string(), "{seen}");
    assert!(seen["presence_at"].is_null(), "{seen}");
}

#[tokio::test]
async fn the_simulated_fleet_announces_itself_on_connection() {
    let (app, prefix) = spawn_pipeline().await;
    let sim = Simulator::start(SimOptions {
        id_prefix: "ANN-".into(),
        installed_version: Some("0.9.0".into()),
        security_counter: 2,
        ..sim_options(&app, &prefix, 9, &["esp32", "stm32", "jetson"])
    })
    .await
    .unwrap();
    let started = Instant::now();
    loop {
        let summary: Value = app.get("/api/v1/fleet/summary").await.json().await.unwrap();
        if summary["online"] == 9 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not every simulated device is online: {summary}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &sim.device_ids {
        let seen = device(&app, id).await;
        assert_eq!(
            (&seen["installed_version"], &seen["security_counter"]),
            (&json!("0.9.0"), &json!(2)),
            "{seen}"
        );
    }
    // The distribution equals what the devices run.
    let versions: Value = app
        .get("/api/v1/fleet/versions?q=ANN-")
        .await
        .json()
        .await
        .unwrap();
    let mut by_family: Vec<(String, String, i64, i64)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["family"].as_str().unwrap().to_owned(),
                v["installed_version"].as_str().unwrap_or("?").to_owned(),
                v["devices"].as_i64().unwrap(),
                v["online"].as_i64().unwrap(),
            )
        })
        .collect();
    by_family.sort();
    assert_eq!(
        by_family,
        ["esp32", "jetson", "stm32"].map(|f| (f.to_owned(), "0.9.0".to_owned(), 3, 3)),
        "{versions}"
    );
    // Six messages: the ESP32s and the Jetsons, each Jetson for the
    // STM32s behind it too.
    assert_eq!(
        metric(&app, "presence_messages_total", &[("result", "recorded")]).await,
        6.0
    );
    sim.stop().await;
}

fn expires_at(command: &Value) -> chrono::DateTime<chrono::Utc> {
    let manifest: Value =
        serde_json::from_str(command["manifest"].as_str().expect("a manifest")).unwrap();
    manifest["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_device_back_online_gets_its_command_again_with_a_fresh_manifest() {
    use crate::pipeline::{ManualDevice, one_device_job};
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-BACK", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let fw = app.upload_esp32("8.0.0").await;
    let mut device = ManualDevice::connect(&prefix, "VIN-BACK").await;
    let job = one_device_job(&app, &fw, "VIN-BACK", json!({ "device_timeout_secs": 600 })).await;
    let first = device.next_command(Duration::from_secs(20)).await;
    device
        .report(
            json!({ "message_id": "b-down", "state": "downloading", "progress": 30,
                        "execution_id": first["execution_id"], "attempt": 1 }),
        )
        .await;
    // Out of coverage for a while; then back, on the same session.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hello = json!({ "state": "online", "installed_version": "1.0.0" });
    let presence = format!("{prefix}/VIN-BACK/presence");
    device
        .client
        .publish(&presence, QoS::AtLeastOnce, false, hello.to_string())
        .await
        .unwrap();
    let again = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(
        (&again["execution_id"], &again["attempt"]),
        (&first["execution_id"], &json!(1)),
        "{again}"
    );
    assert!(
        expires_at(&again) > expires_at(&first),
        "the manifest is signed afresh: {} then {}",
        expires_at(&first),
        expires_at(&again)
    );
    // Back with a clean session (the broker forgot it): a hello on the new
    // session brings the command again too.
    drop(device);
    let mut device = ManualDevice::connect(&prefix, "VIN-BACK").await;
    device
        .client
        .publish(&presence, QoS::AtLeastOnce, false, hello.to_string())
        .await
        .unwrap();
    let third = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(third["execution_id"], first["execution_id"], "{third}");
    assert_eq!(metric(&app, "update_requests_total", &[]).await, 1.0);
    assert_eq!(metric(&app, "update_commands_resent_total", &[]).await, 2.0);
    // The update goes on in the same attempt, from where it was.
    device
        .finish(&app, &job, &first["execution_id"], 1, "b")
        .await;
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM executions WHERE device_id = 'VIN-BACK'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
    // A hello with nothing in flight sends nothing.
    device
        .client
        .publish(&presence, QoS::AtLeastOnce, false, hello.to_string())
        .await
        .unwrap();
    wait_metric(&app, &[("result", "recorded")], 3.0).await;
    let none = device.try_command(Duration::from_secs(2)).await;
    assert!(none.is_none(), "a command with nothing in flight: {none:?}");
}

#[tokio::test]
async fn a_device_flashed_outside_rollway_is_flagged_until_rollway_installs_again() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([
        { "id": "VIN-SHOP", "family": "esp32", "model": "esp32s3", "installed_version": "1.0.0" },
        { "id": "VIN-NEW", "family": "esp32", "model": "esp32s3" },
    ]))
    .await;
    // A device registered without a version: its first word is the truth
    // Rollway expects, not drift.
    let fresh = Session::connect(&prefix, "VIN-NEW").await;
    fresh
        .say(json!({ "state": "online", "installed_version": "1.0.0" }))
        .await;
    let new = wait_device(&app, "VIN-NEW", "hello", |d| d["online"] == true).await;
    assert_eq!(
        (&new["drift"], &new["expected_version"]),
        (&json!(false), &json!("1.0.0")),
        "{new}"
    );

    // Back from the repair shop with a version nobody sent it.
    let shop = Session::connect(&prefix, "VIN-SHOP").await;
    shop.say(json!({ "state": "online", "installed_version": "0.9.7-shop" }))
        .await;
    let flagged = wait_device(&app, "VIN-SHOP", "drift", |d| d["drift"] == true).await;
    assert_eq!(
        (&flagged["installed_version"], &flagged["expected_version"]),
        (&json!("0.9.7-shop"), &json!("1.0.0")),
        "{flagged}"
    );
    assert_eq!(ids(&app, "drift=true").await, ["VIN-SHOP"]);
    assert_eq!(ids(&app, "drift=false").await, ["VIN-NEW"]);
    assert_eq!(metric(&app, "device_drift_total", &[]).await, 1.0);
    let versions: Value = app
        .get("/api/v1/fleet/versions?drift=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        versions,
        json!([{ "family": "esp32", "model": "esp32s3", "installed_version": "0.9.7-shop",
                 "devices": 1, "online": 1, "drifted": 1 }])
    );
    // Saying it again is not a new finding.
    shop.say(json!({ "state": "online", "installed_version": "0.9.7-shop" }))
        .await;
    wait_metric(&app, &[("result", "recorded")], 3.0).await;
    let events: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM event_outbox WHERE event_type = 'device.drift.detected' ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["device_id"], "VIN-SHOP");
    assert_eq!(events[0]["installed_version"], "0.9.7-shop");
    assert_eq!(events[0]["expected_version"], "1.0.0");

    // Rollway installs a version there: what it runs is what is expected.
    let fw = app.upload_esp32("2.0.0").await;
    let mut device = crate::pipeline::ManualDevice::connect(&prefix, "VIN-SHOP").await;
    let job = crate::pipeline::one_device_job(&app, &fw, "VIN-SHOP", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;
    device
        .finish(&app, &job, &command["execution_id"], 1, "shop")
        .await;
    let cleared = wait_device(&app, "VIN-SHOP", "install", |d| d["drift"] == false).await;
    assert_eq!(
        (&cleared["installed_version"], &cleared["expected_version"]),
        (&json!("2.0.0"), &json!("2.0.0")),
        "{cleared}"
    );
}

#[tokio::test]
async fn the_simulated_fleets_hand_flashed_devices_show_as_drift() {
    let (app, prefix) = spawn_pipeline().await;
    let sim = Simulator::start(SimOptions {
        id_prefix: "SHOP-".into(),
        installed_version: Some("1.0.0".into()),
        hand_flashed: 4,
        ..sim_options(&app, &prefix, 12, &["esp32", "stm32", "jetson"])
    })
    .await
    .unwrap();
    let flashed: Vec<String> = sim
        .truth
        .snapshot()
        .into_iter()
        .filter(|(_, t)| t.hand_flashed)
        .map(|(id, _)| id)
        .collect();
    let started = Instant::now();
    loop {
        let drifted = ids(&app, "drift=true&q=SHOP-").await;
        let truth: Vec<String> = sim
            .truth
            .snapshot()
            .into_iter()
            .filter(|(_, t)| t.hand_flashed)
            .map(|(id, _)| id)
            .collect();
        if truth.len() == 4 && drifted == truth {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "drift {drifted:?}, hand-flashed {truth:?} (at start {flashed:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the API says each device runs is what it runs.
    for (id, truth) in sim.truth.snapshot() {
        let seen = device(&app, &id).await;
        assert_eq!(seen["installed_version"], json!(truth.version), "{seen}");
        assert_eq!(seen["expected_version"], "1.0.0", "{seen}");
    }
    assert_eq!(metric(&app, "device_drift_total", &[]).await, 4.0);
    sim.stop().await;
}

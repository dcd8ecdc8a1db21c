//! `rollway up` from nothing: a private PostgreSQL is initialised, the host
//! serves, and Ctrl-C stops both; with `--simulate`, a whole first look.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{fresh_database, metric_at, temp_dir};

/// `rollway up ARGS` with its stdout piped, as a newcomer would run it:
/// no database, broker, bootstrap token or store configured (but what `env`
/// sets), `data_dir` for its files.
fn spawn_up(args: &[&str], data_dir: &std::path::Path, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rollway"));
    command
        .arg("up")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("MQTT_URL")
        .env_remove("KAFKA_BROKERS")
        .env_remove("ROLLWAY_BOOTSTRAP_TOKEN")
        .env_remove("ROLLWAY_STORE")
        .env("ROLLWAY_DATA_DIR", data_dir)
        .env("ROLLWAY_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawning rollway up")
}

#[tokio::test]
async fn up_starts_a_private_database_and_stops_it_on_ctrl_c() {
    let base = temp_dir("up");
    let data_dir = base.join("data");
    for round in 0..2 {
        let mut child = spawn_up(&[], &data_dir, &[]);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut token) = (None, None);
        let read = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(u) = line.trim().strip_prefix("URL:") {
                    url = Some(u.trim().to_owned());
                }
                if let Some(t) = line.trim().strip_prefix("Admin token:") {
                    token = Some(t.trim().to_owned());
                }
                if url.is_some() && token.is_some() {
                    break;
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "rollway up did not print its URL and token in time"
        );
        let (url, token) = (url.unwrap(), token.unwrap());
        let client = reqwest::Client::new();
        let health = client.get(format!("{url}healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let ready = client.get(format!("{url}readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let devices = client
            .post(format!("{url}api/v1/devices"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "id": format!("UP-{round}"), "family": "jetson" }))
            .send()
            .await
            .unwrap();
        assert_eq!(devices.status(), StatusCode::CREATED);
        // The second start reuses the cluster: the first round's device is there.
        let listed: serde_json::Value = client
            .get(format!("{url}api/v1/devices"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), round + 1);

        let pid = child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("rollway up did not stop");
        assert!(exit.unwrap().success());
        let pidfile = data_dir.join("postgres/postmaster.pid");
        assert!(!pidfile.exists(), "the private PostgreSQL is still running");
    }
    std::fs::remove_dir_all(base).ok();
}

/// The first look: `rollway up --simulate N` with nothing configured but a
/// database runs its own MQTT broker, uploads demo firmware and connects a
/// simulated fleet, so a job against the demo firmware rolls out at once.
#[tokio::test]
async fn up_with_a_simulated_fleet_rolls_out_the_demo_firmware() {
    let base = temp_dir("up-sim");
    let mut child = spawn_up(
        &["--simulate", "30", "--sim-step-ms", "20"],
        &base.join("data"),
        &[
            ("DATABASE_URL", fresh_database().await),
            (
                "ROLLWAY_INSTANCE_ID",
                format!("up-{}", uuid::Uuid::new_v4().simple()),
            ),
        ],
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let stop = line.starts_with("Open the URL");
            banner.push(line);
            if stop {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "rollway up did not finish starting: {banner:?}"
    );
    let field = |name: &str| {
        banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no '{name}' line in {banner:?}"))
    };
    let (url, token) = (field("URL:"), field("Admin token:"));
    assert!(
        field("MQTT:").starts_with("mqtt://127.0.0.1:"),
        "{banner:?}"
    );
    assert!(field("Simulated:").starts_with("30 devices"), "{banner:?}");
    let client = reqwest::Client::new();
    let get = |path: String| {
        let request = client.get(format!("{url}{path}")).bearer_auth(&token);
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let firmware = get("api/v1/firmware".into()).await;
    let demo: Vec<&serde_json::Value> = firmware["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["version"] == "1.0.0-demo")
        .collect();
    assert_eq!(demo.len(), 3, "demo firmware of every family: {firmware}");
    let esp32 = demo.iter().find(|f| f["family"] == "esp32").unwrap();
    let summary = get("api/v1/fleet/summary".into()).await;
    assert_eq!(summary["total"], 30, "{summary}");
    let plugins = get("api/v1/plugins".into()).await;
    let mut loaded: Vec<&str> = plugins["items"]
        .as_array()
        .expect("a plugin list")
        .iter()
        .filter(|p| p["state"] == "enabled")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    loaded.sort_unstable();
    assert_eq!(
        loaded,
        [
            "device-esp32",
            "device-jetson",
            "device-stm32",
            "rollout-exponential",
            "rollout-percent",
            "rollout-rings"
        ],
        "{plugins}"
    );
    // The images live in the file store under the data dir.
    let images = std::fs::read_dir(base.join("data/store/firmware"))
        .expect("the file store under ROLLWAY_DATA_DIR")
        .count();
    assert_eq!(images, 3, "one stored image per demo firmware");

    let created: serde_json::Value = client
        .post(format!("{url}api/v1/jobs"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "firmware_id": esp32["id"],
            "targets": { "filter": { "family": "esp32", "tags": { "fleet": "simulated" } } },
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = created["id"].as_str().expect("a job id").to_owned();
    let done = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let view = get(format!("api/v1/jobs/{job}")).await;
            if view["status"] == "completed" {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the demo job did not complete in time");
    let devices = get("api/v1/devices?family=esp32".into()).await;
    let esp32s = devices["items"].as_array().unwrap();
    assert!(esp32s.len() >= 5, "{devices}");
    assert_eq!(done["counts"]["done"], esp32s.len(), "{done}");
    // Statuses of many devices are committed by concurrent ingest lanes;
    // their acks still leave in order, or the embedded broker (rumqttd)
    // drops the connection.
    let lost = metric_at(
        &client,
        &format!("{url}metrics"),
        "dispatcher_mqtt_errors_total",
        &[("reason", "connection")],
    )
    .await;
    assert_eq!(lost, 0.0, "the host lost its MQTT connection {lost} times");
    for device in esp32s {
        assert_eq!(device["firmware_version"], "1.0.0-demo", "{device}");
        assert_eq!(device["last_status"], "done", "{device}");
        // Presence travels the embedded broker beside statuses (one share
        // group each: rumqttd keeps one cursor per group).
        assert_eq!(device["online"], true, "{device}");
        assert!(device["hardware"].is_object(), "{device}");
    }

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("rollway up did not stop");
    assert!(exit.unwrap().success());
    std::fs::remove_dir_all(base).ok();
}

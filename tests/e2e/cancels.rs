//! A cancel reaches the devices: each device that had its update command
//! is sent a signed cancel through its family's plugin, and again when it
//! says hello, until it answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rollway::sim::Simulator;
use serde_json::{Value, json};

use crate::away::say;
use crate::helpers::{TestApp, metric};
use crate::images;
use crate::pipeline::{ManualDevice, one_device_job, sim_options, spawn_pipeline, wait_until};

/// Every execution of `job`, through the API.
async fn executions(app: &TestApp, job: &str) -> Vec<Value> {
    let page = app
        .json(&format!("/api/v1/jobs/{job}/executions?limit=1000"))
        .await;
    page["items"].as_array().expect("a page").clone()
}

#[tokio::test]
async fn a_cancel_mid_rollout_stops_the_devices_that_had_not_flashed() {
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, 36, &["esp32", "stm32", "jetson"]);
    // A third of the links (ESP32s, Jetson gateways with their STM32s) are
    // out of coverage from their command until well after the cancel;
    // half come back with a session their broker forgot.
    options.offline = 0.35;
    options.offline_for = (Duration::from_secs(12), Duration::from_secs(14));
    options.clean_session = 0.5;
    // Half of the others hold the image until parked (long after the
    // cancel); the rest flash at once, which takes a while.
    options.wait_parked = 0.5;
    options.parked_after = (Duration::from_secs(300), Duration::from_secs(300));
    options.flash_time = Duration::from_secs(8);
    options.interruptions = 0.0;
    let sim = Simulator::start(options).await.unwrap();
    let firmware = [
        ("esp32", app.upload_esp32("4.0.0").await),
        (
            "stm32",
            app.upload("stm32", "4.0.0", images::stm32(4096, 12)).await,
        ),
        (
            "jetson",
            app.upload("jetson", "4.0.0", images::jetson("jetson-orin-nx", "4.0.0"))
                .await,
        ),
    ];
    let mut jobs = Vec::new();
    for (family, fw) in &firmware {
        let job: Value = app
            .post_json(
                "/api/v1/jobs",
                &json!({ "firmware_id": fw["id"], "targets": { "filter": { "family": family } },
                         "progress_timeout_secs": 300, "max_retries": 0, "install": "when-safe",
                         "rollout": { "plugin": "rollout-percent",
                                      "config": { "batches": [100], "failure_threshold": 100 } } }),
            )
            .await
            .json()
            .await
            .unwrap();
        jobs.push(job["id"].as_str().expect("a job").to_owned());
    }
    // Cancel once every command is out and a device is flashing (it will
    // finish), while the waiting ones hold their image and the away ones
    // are away.
    let started = Instant::now();
    loop {
        let (mut queued, mut flashing) = (0, 0);
        for job in &jobs {
            let view = app.json(&format!("/api/v1/jobs/{job}")).await;
            queued += view["counts"]["queued"].as_i64().unwrap_or(0);
            flashing += view["counts"]["flashing"].as_i64().unwrap_or(0);
        }
        if queued == 0 && flashing > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no device flashed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for job in &jobs {
        let cancelled = app.act(&format!("/api/v1/jobs/{job}/cancel")).await;
        assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    }
    // Every device that had its command answers its cancel: the waiting
    // ones stop, the flashing ones finish, the away ones on their return.
    let started = Instant::now();
    let all: Vec<Value> = loop {
        let mut all = Vec::new();
        for job in &jobs {
            all.extend(executions(&app, job).await);
        }
        let unanswered = all
            .iter()
            .filter(|e| matches!(e["cancel_delivery"].as_str(), Some("pending" | "sent")))
            .count();
        if unanswered == 0 {
            break all;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{unanswered} cancels unanswered: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let truth = sim.truth.snapshot();
    let by_device: BTreeMap<&str, &Value> = all
        .iter()
        .map(|e| (e["device_id"].as_str().unwrap(), e))
        .collect();
    assert_eq!(by_device.len(), 36);
    let (mut stopped, mut finished, mut away) = (0, 0, 0);
    for (device, execution) in &by_device {
        let t = &truth[*device];
        let status = execution["status"].as_str().unwrap();
        // Nothing stays in flight.
        assert!(
            matches!(status, "done" | "cancelled"),
            "{device}: {execution} {t:?}"
        );
        match t.state.as_str() {
            "cancelled" => {
                stopped += 1;
                assert_eq!(status, "cancelled", "{device}: {t:?}");
                assert_eq!(execution["cancel_delivery"], "answered", "{device}");
                assert!(t.cancels >= 1, "{device}: {t:?}");
            }
            "done" => {
                // The device's truth: what it runs now.
                finished += 1;
                assert_eq!(t.version.as_deref(), Some("4.0.0"), "{device}");
                let seen = app.json(&format!("/api/v1/devices/{device}")).await;
                assert_eq!(seen["installed_version"], "4.0.0", "{device}: {seen}");
                if status == "cancelled" {
                    assert_eq!(execution["cancel_delivery"], "answered", "{device}");
                }
            }
            other => panic!("{device} ended {other}: {t:?} {execution}"),
        }
        if t.away_secs > 0 {
            // Away during the cancel: it got the cancel on its return.
            away += 1;
            assert_eq!(t.state, "cancelled", "{device}: {t:?}");
        }
    }
    assert!(
        stopped > 0 && finished > 0,
        "{stopped} stopped, {finished} finished"
    );
    assert!(away > 0, "no device was away");
    assert!(
        truth
            .values()
            .any(|t| t.cancelled_while_flashing && t.state == "done"),
        "no device was flashing when its cancel came: {truth:#?}"
    );
    assert!(metric(&app, "cancel_commands_total", &[("result", "sent")]).await >= stopped as f64);
    sim.stop().await;
}

#[tokio::test]
async fn a_device_away_during_a_cancel_is_told_when_it_says_hello() {
    let (app, prefix) = spawn_pipeline().await;
    let fw = app.upload_esp32("4.1.0").await;
    app.register(json!([{ "id": "VIN-GONE", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let mut device = ManualDevice::connect(&prefix, "VIN-GONE").await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-GONE",
        json!({ "progress_timeout_secs": 300, "max_retries": 0 }),
    )
    .await;
    let command = device.next_command(Duration::from_secs(20)).await;
    let execution = command["execution_id"].as_i64().unwrap();
    device
        .report(json!({ "message_id": "g-init", "state": "init",
                        "execution_id": execution, "attempt": 1 }))
        .await;
    // The operator cancels this one device; the cancel is signed and says
    // which execution and attempt to stop.
    let response = app
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/jobs/{job}/executions/VIN-GONE/cancel"),
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let cancel = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(cancel["type"], "cancel", "{cancel}");
    assert_eq!(
        (cancel["execution_id"].as_i64(), cancel["attempt"].as_i64()),
        (Some(execution), Some(1))
    );
    let signed: Value = serde_json::from_str(cancel["manifest"].as_str().unwrap()).unwrap();
    assert_eq!(signed["kind"], "cancel");
    assert_eq!(signed["device_id"], "VIN-GONE");
    assert_eq!(signed["execution_id"], execution);
    assert!(cancel["signature"].as_str().is_some_and(|s| !s.is_empty()));
    let view = app.json(&format!("/api/v1/executions/{execution}")).await;
    assert_eq!(view["cancel_delivery"], "sent", "{view}");
    // The device was gone (a clean session lost the cancel): its hello
    // brings the cancel again, freshly signed.
    say(&device, &prefix, "VIN-GONE", "online").await;
    let again = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(again["type"], "cancel", "{again}");
    assert_eq!(again["execution_id"].as_i64(), Some(execution));
    // Its answer settles it: no further hello brings it again.
    device
        .report(
            json!({ "message_id": "g-stop", "state": "cancelled", "reason": "stopped",
                        "execution_id": execution, "attempt": 1 }),
        )
        .await;
    let started = Instant::now();
    loop {
        let view = app.json(&format!("/api/v1/executions/{execution}")).await;
        if view["cancel_delivery"] == "answered" {
            assert_eq!(view["status"], "cancelled");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&device, &prefix, "VIN-GONE", "online").await;
    let repeat = device.try_command(Duration::from_secs(2)).await;
    assert!(
        repeat.is_none(),
        "an answered cancel was sent again: {repeat:?}"
    );
    let job_view = wait_until(&app, &job, Duration::from_secs(20), |v| {
        v["status"] != "running"
    })
    .await;
    assert_eq!(job_view["counts"]["cancelled"], 1, "{job_view}");
}

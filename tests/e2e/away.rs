//! A device being away is the normal case: its update waits for it until
//! the job's delivery deadline, and only a connected device that makes no
//! progress times out.

use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::{Value, json};

use crate::helpers::{TestApp, metric};
use crate::pipeline::{ManualDevice, one_device_job, spawn_pipeline, wait_for};

async fn status_of(app: &TestApp, device: &str) -> String {
    sqlx::query_scalar("SELECT status FROM executions WHERE device_id = $1")
        .bind(device)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Publishes `id`'s presence (`online` or `offline`) from `device`'s link.
pub async fn say(device: &ManualDevice, prefix: &str, id: &str, state: &str) {
    device
        .client
        .publish(
            format!("{prefix}/{id}/presence"),
            QoS::AtLeastOnce,
            false,
            json!({ "state": state }).to_string(),
        )
        .await
        .unwrap();
}

async fn wait_online(app: &TestApp, id: &str, online: bool) {
    let started = Instant::now();
    loop {
        let device: Value = app
            .get(&format!("/api/v1/devices/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if device["online"] == online {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{device}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An ESP32 registered as `id`, connected and announced.
async fn connected(app: &TestApp, prefix: &str, id: &str) -> ManualDevice {
    app.register(json!([{ "id": id, "family": "esp32", "model": "esp32s3" }]))
        .await;
    let device = ManualDevice::connect(prefix, id).await;
    say(&device, prefix, id, "online").await;
    wait_online(app, id, true).await;
    device
}

/// A connected ESP32 `id` with a job of its own (`extra`'s settings) and
/// the command it received; returns the app, the topic prefix, the
/// device, the job and the execution id.
async fn device_with_a_job(
    id: &str,
    extra: Value,
) -> (TestApp, String, ManualDevice, String, Value) {
    let (app, prefix) = spawn_pipeline().await;
    let fw = app.upload_esp32("9.0.0").await;
    let mut device = connected(&app, &prefix, id).await;
    let job = one_device_job(&app, &fw, id, extra).await;
    let first = device.next_command(Duration::from_secs(20)).await;
    let execution = first["execution_id"].clone();
    (app, prefix, device, job, execution)
}

#[tokio::test]
async fn an_away_device_is_not_timed_out_and_updates_when_it_is_back() {
    let (app, prefix, mut device, job, execution) = device_with_a_job(
        "VIN-AWAY",
        json!({ "progress_timeout_secs": 4, "max_retries": 0, "delivery_deadline_secs": 600 }),
    )
    .await;
    device
        .report(
            json!({ "message_id": "a-down", "state": "downloading", "progress": 10,
                        "execution_id": execution, "attempt": 1 }),
        )
        .await;
    crate::pipeline::wait_results(&app, "applied", 1.0).await;
    // The truck leaves coverage (its broker publishes its will).
    say(&device, &prefix, "VIN-AWAY", "offline").await;
    wait_online(&app, "VIN-AWAY", false).await;
    // Past its progress timeout it is still waited for.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(status_of(&app, "VIN-AWAY").await, "downloading");
    // Back: the command again, and the update finishes in its one attempt.
    say(&device, &prefix, "VIN-AWAY", "online").await;
    let again = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(again["execution_id"], execution, "{again}");
    device.finish(&app, &job, &execution, 1, "a").await;
    assert_eq!(status_of(&app, "VIN-AWAY").await, "done");
    assert_eq!(
        metric(&app, "update_errors_total", &[("reason", "timeout")]).await,
        0.0
    );

    // A connected device that answered and then makes no progress is
    // stalled: that times out.
    let fw = app.upload_esp32("9.0.1").await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-AWAY",
        json!({ "progress_timeout_secs": 1, "max_retries": 0 }),
    )
    .await;
    let stalled = device.next_command(Duration::from_secs(20)).await;
    device
        .report(json!({ "message_id": "s-init", "state": "init",
                        "execution_id": stalled["execution_id"], "attempt": 1 }))
        .await;
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(view["counts"]["timed_out"], 1, "{view}");
}

/// A broker restart lost a device's statuses, its final one included: the
/// host heard nothing of its command, and a connected device that never
/// answered is not timed out (the command may not have reached it). Its
/// hello brings the command again; the device, which finished that
/// attempt, answers the repeat with its final status again, and the update
/// ends as the device says, in its one attempt.
#[tokio::test]
async fn a_final_status_lost_in_a_broker_restart_comes_back_with_the_hello() {
    let (app, prefix, mut device, job, execution) = device_with_a_job(
        "VIN-HUSH",
        json!({ "progress_timeout_secs": 2, "max_retries": 1, "delivery_deadline_secs": 600 }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status_of(&app, "VIN-HUSH").await, "dispatched");
    say(&device, &prefix, "VIN-HUSH", "online").await;
    let again = device.next_command(Duration::from_secs(20)).await;
    assert_eq!(
        (&again["execution_id"], &again["attempt"]),
        (&execution, &json!(1)),
        "{again}"
    );
    device.finish(&app, &job, &execution, 1, "h").await;
    assert_eq!(status_of(&app, "VIN-HUSH").await, "done");
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM executions WHERE device_id = 'VIN-HUSH'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn what_is_undelivered_at_the_deadline_expires() {
    let (app, prefix) = spawn_pipeline().await;
    // Registered at the workshop, never connected since.
    app.register(json!([{ "id": "VIN-GONE", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let fw = app.upload_esp32("9.1.0").await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-GONE",
        json!({ "progress_timeout_secs": 1, "delivery_deadline_secs": 3 }),
    )
    .await;
    let stored: Value = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(
        (
            &stored["delivery_deadline_secs"],
            &stored["device_timeout_secs"]
        ),
        (&json!(3), &json!(1)),
        "{stored}"
    );
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(view["counts"]["expired"], 1, "{view}");
    assert_eq!(status_of(&app, "VIN-GONE").await, "expired");
    assert!(metric(&app, "update_errors_total", &[("reason", "deadline")]).await >= 1.0);
    assert_eq!(
        metric(&app, "update_errors_total", &[("reason", "timeout")]).await,
        0.0
    );
    let cause: String = sqlx::query_scalar(
        "SELECT payload->>'cause' FROM event_outbox
         WHERE event_type = 'execution.status.changed' AND payload->>'to' = 'expired'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(cause, "deadline");

    // It turns up weeks later and says it installed the update after all
    // (it had the command from an earlier session): its word stands.
    let device = ManualDevice::connect(&prefix, "VIN-GONE").await;
    let execution: i64 =
        sqlx::query_scalar("SELECT id FROM executions WHERE device_id = 'VIN-GONE'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    device
        .report(json!({ "message_id": "g-done", "state": "done", "execution_id": execution, "attempt": 1 }))
        .await;
    crate::pipeline::wait_results(&app, "late", 1.0).await;
    assert_eq!(status_of(&app, "VIN-GONE").await, "done");
}

#[tokio::test]
async fn a_waiting_device_is_not_timed_out_and_the_job_says_why() {
    let (app, prefix) = spawn_pipeline().await;
    let fw = app.upload_esp32("9.1.0").await;
    let mut device = connected(&app, &prefix, "VIN-PARK").await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-PARK",
        json!({ "progress_timeout_secs": 1, "max_retries": 0, "install": "when-safe" }),
    )
    .await;
    let command = device.next_command(Duration::from_secs(20)).await;
    let execution = command["execution_id"].clone();
    let report = |id: &str, state: &str, reason: Option<&str>| {
        let mut status = json!({ "message_id": id, "state": state,
                                 "execution_id": execution, "attempt": 1 });
        if let Some(reason) = reason {
            status["reason"] = json!(reason);
        }
        status
    };
    device.report(report("p-down", "downloading", None)).await;
    device
        .report(report("p-wait", "waiting", Some("engine-running")))
        .await;
    crate::pipeline::wait_results(&app, "applied", 2.0).await;
    let view: Value = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(view["counts"]["waiting"], 1, "{view}");
    assert_eq!(
        view["waiting_reasons"],
        json!({ "engine-running": 1 }),
        "{view}"
    );
    // The truck drives on for many progress timeouts (and sweeps): it is
    // not stalled, it waits.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(status_of(&app, "VIN-PARK").await, "waiting");
    // It says why again (nothing changes), then for another reason.
    device
        .report(report("p-wait-2", "waiting", Some("engine-running")))
        .await;
    device
        .report(report("p-wait-3", "waiting", Some("driving")))
        .await;
    crate::pipeline::wait_results(&app, "applied", 3.0).await;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT waiting_reason FROM executions WHERE device_id = 'VIN-PARK'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("driving"));
    assert_eq!(
        metric(&app, "status_messages_total", &[("result", "progress")]).await,
        1.0
    );
    // Parked: it flashes and finishes; the reason is gone, and no error
    // was recorded for the wait.
    for state in ["flashing", "rebooting", "done"] {
        device
            .report(report(&format!("p-{state}"), state, None))
            .await;
    }
    let view = wait_for(&app, &job, &["completed"], Duration::from_secs(30)).await;
    assert_eq!(view["counts"]["done"], 1, "{view}");
    assert_eq!(view["waiting_reasons"], json!({}), "{view}");
    let (reason, error): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT waiting_reason, last_error FROM executions WHERE device_id = 'VIN-PARK'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((reason, error), (None, None));
    assert_eq!(
        metric(&app, "update_errors_total", &[("reason", "timeout")]).await,
        0.0
    );
    let history = crate::pipeline::execution_moves(&app, "VIN-PARK").await;
    assert!(
        history.iter().any(|e| e.starts_with("waiting -> waiting")),
        "{history:?}"
    );

    // A device that stops an update on its own word ends it cancelled.
    let fw = app.upload_esp32("9.1.1").await;
    one_device_job(
        &app,
        &fw,
        "VIN-PARK",
        json!({ "progress_timeout_secs": 1, "max_retries": 0, "install": "when-safe" }),
    )
    .await;
    let command = device.next_command(Duration::from_secs(20)).await;
    device
        .report(json!({ "message_id": "c-stop", "state": "cancelled",
                        "reason": "stopped at the truck", "execution_id": command["execution_id"],
                        "attempt": 1 }))
        .await;
    crate::pipeline::wait_results(&app, "applied", 7.0).await;
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, last_error FROM executions WHERE id = $1")
            .bind(command["execution_id"].as_i64())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), error.as_deref()),
        ("cancelled", Some("stopped at the truck"))
    );
}

#[tokio::test]
async fn a_fleet_that_comes_and_goes_updates_without_a_timeout() {
    use crate::images;
    use crate::pipeline::sim_options;
    use rollway::sim::Simulator;
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, 1000, &["esp32", "stm32", "jetson"]);
    // A third of the trucks are out of coverage when their update is
    // released, for half a minute to two; half of them come back with a
    // session their broker forgot.
    options.offline = 0.3;
    options.offline_for = (Duration::from_secs(30), Duration::from_secs(120));
    options.clean_session = 0.5;
    // A fifth of them hold the image until parked, longer than the
    // progress timeout.
    options.wait_parked = 0.2;
    options.parked_after = (Duration::from_secs(25), Duration::from_secs(40));
    let sim = Simulator::start(options).await.unwrap();
    let esp = app.upload_esp32("3.0.0").await;
    let stm = app.upload("stm32", "3.0.0", images::stm32(4096, 12)).await;
    let jet = app
        .upload("jetson", "3.0.0", images::jetson("jetson-orin-nx", "3.0.0"))
        .await;
    let mut jobs = Vec::new();
    for firmware in [&esp, &stm, &jet] {
        let response = app
            .post_json(
                "/api/v1/jobs",
                &json!({ "firmware_id": firmware["id"], "targets": { "filter": { "tags": { "fleet": "simulated" } } },
                         "progress_timeout_secs": 20, "max_retries": 0, "install": "when-safe",
                         "rollout": { "plugin": "rollout-percent", "config": { "batches": [100], "failure_threshold": 100 } } }),
            )
            .await;
        let job: Value = response.json().await.unwrap();
        jobs.push(job["id"].as_str().expect("a job").to_owned());
    }
    for job in &jobs {
        let view = wait_for(
            &app,
            job,
            &["completed", "failed"],
            Duration::from_secs(400),
        )
        .await;
        let total = view["total"].as_i64().unwrap();
        assert_eq!(view["counts"]["done"], total, "{view}");
        assert_eq!(
            view["counts"].get("timed_out").cloned().unwrap_or(json!(0)),
            json!(0)
        );
    }
    let truth = sim.truth.snapshot();
    let away = truth.values().filter(|t| t.away_secs > 0).count();
    let clean = truth.values().filter(|t| t.clean_session).count();
    assert!(away >= 100, "{away} devices away");
    assert!(
        clean > 0 && clean < away,
        "{clean} of {away} with a clean session"
    );
    let parked = truth.values().filter(|t| t.waited_secs >= 25).count();
    assert!(parked >= 100, "{parked} devices waited to be parked");
    assert!(truth.values().all(|t| t.state == "done"));
    // Each device acted on one command, the one attempt.
    let attempts: i32 = sqlx::query_scalar("SELECT max(attempts) FROM executions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    assert!(metric(&app, "update_commands_resent_total", &[]).await >= away as f64 / 2.0);
    // The fleet's version distribution is the devices' own.
    let groups: Value = app
        .get("/api/v1/fleet/versions")
        .await
        .json()
        .await
        .unwrap();
    let mut served: Vec<(String, String, i64)> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["family"].as_str().unwrap().to_owned(),
                g["installed_version"].as_str().unwrap_or("").to_owned(),
                g["devices"].as_i64().unwrap(),
            )
        })
        .collect();
    served.sort();
    let mut counted: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for (id, t) in &truth {
        let family = id.split('-').nth(1).unwrap().to_lowercase();
        *counted
            .entry((family, t.version.clone().unwrap_or_default()))
            .or_default() += 1;
    }
    let expected: Vec<(String, String, i64)> =
        counted.into_iter().map(|((f, v), n)| (f, v, n)).collect();
    assert_eq!(served, expected);
    sim.stop().await;
}

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

async fn say(device: &ManualDevice, prefix: &str, id: &str, state: &str) {
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

#[tokio::test]
async fn an_away_device_is_not_timed_out_and_updates_when_it_is_back() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-AWAY", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let fw = app.upload_esp32("9.0.0").await;
    let mut device = ManualDevice::connect(&prefix, "VIN-AWAY").await;
    say(&device, &prefix, "VIN-AWAY", "online").await;
    wait_online(&app, "VIN-AWAY", true).await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-AWAY",
        json!({ "progress_timeout_secs": 1, "max_retries": 0, "delivery_deadline_secs": 600 }),
    )
    .await;
    let first = device.next_command(Duration::from_secs(20)).await;
    let execution = first["execution_id"].clone();
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
    // Many progress timeouts later it is still waited for.
    tokio::time::sleep(Duration::from_secs(4)).await;
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

    // A connected device that makes no progress is stalled: that times out.
    let fw = app.upload_esp32("9.0.1").await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-AWAY",
        json!({ "progress_timeout_secs": 1, "max_retries": 0 }),
    )
    .await;
    device.next_command(Duration::from_secs(20)).await;
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(view["counts"]["timed_out"], 1, "{view}");
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
    let stored: Value = app
        .get(&format!("/api/v1/jobs/{job}"))
        .await
        .json()
        .await
        .unwrap();
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

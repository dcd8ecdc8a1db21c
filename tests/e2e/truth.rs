//! What a device says about itself stands, even after the host gave up on
//! its execution or the job was cancelled.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, metric};
use crate::pipeline::{
    ManualDevice, execution_moves as moves, one_device_job, spawn_pipeline, wait_for, wait_results,
};

async fn execution_of(app: &TestApp, device: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM executions WHERE device_id = $1")
        .bind(device)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn stored_device(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/devices/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_done_after_the_timeout_ends_done_and_the_device_runs_it() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-LATE", "family": "esp32", "model": "esp32s3", "installed_version": "1.0.0" }]))
        .await;
    let fw = app.upload_esp32("7.1.0").await;
    let mut device = ManualDevice::connect(&prefix, "VIN-LATE").await;
    let job = one_device_job(
        &app,
        &fw,
        "VIN-LATE",
        json!({ "device_timeout_secs": 1, "max_retries": 0 }),
    )
    .await;
    let command = device.next_command(Duration::from_secs(20)).await;
    let execution = command["execution_id"].clone();
    device
        .report(json!({ "message_id": "l-init", "state": "init", "execution_id": execution, "attempt": 1 }))
        .await;
    // The truck leaves coverage; the host gives up on it.
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(view["counts"]["timed_out"], 1, "{view}");
    assert_eq!(
        stored_device(&app, "VIN-LATE").await["installed_version"],
        "1.0.0"
    );

    // Back in coverage, it reports that it finished.
    device
        .report(json!({ "message_id": "l-done", "state": "done", "execution_id": execution, "attempt": 1 }))
        .await;
    wait_results(&app, "late", 1.0).await;
    assert_eq!(execution_of(&app, "VIN-LATE").await, ("done".into(), 1));
    let stored = stored_device(&app, "VIN-LATE").await;
    assert_eq!(stored["installed_version"], "7.1.0", "{stored}");
    assert_eq!(
        moves(&app, "VIN-LATE").await,
        [
            "queued -> dispatched (dispatch)",
            "dispatched -> init (device)",
            "init -> timed_out (timeout)",
            "timed_out -> done (device)"
        ]
    );
    let view: Value = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(
        (&view["counts"]["done"], &view["counts"]["timed_out"]),
        (&json!(1), &json!(0)),
        "{view}"
    );

    // Nothing moves a done execution backwards.
    device
        .report(json!({ "message_id": "l-error", "state": "error", "execution_id": execution, "attempt": 1, "error": "late noise" }))
        .await;
    wait_results(&app, "rejected", 1.0).await;
    assert_eq!(execution_of(&app, "VIN-LATE").await, ("done".into(), 1));
}

#[tokio::test]
async fn a_done_after_a_cancel_still_says_what_the_device_runs() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-CXL", "family": "esp32", "model": "esp32s3", "installed_version": "1.0.0" }]))
        .await;
    let fw = app.upload_esp32("7.3.0").await;
    let mut device = ManualDevice::connect(&prefix, "VIN-CXL").await;
    let job = one_device_job(&app, &fw, "VIN-CXL", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;
    let execution = command["execution_id"].clone();
    device
        .report(json!({ "message_id": "c-flash", "state": "flashing", "execution_id": execution, "attempt": 1 }))
        .await;
    wait_results(&app, "applied", 1.0).await;
    let cancelled = app.act(&format!("/api/v1/jobs/{job}/cancel")).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // The device was already flashing: it finishes and says so.
    device
        .report(json!({ "message_id": "c-done", "state": "done", "execution_id": execution, "attempt": 1 }))
        .await;
    wait_results(&app, "installed", 1.0).await;
    assert_eq!(execution_of(&app, "VIN-CXL").await, ("cancelled".into(), 1));
    let started = Instant::now();
    loop {
        let stored = stored_device(&app, "VIN-CXL").await;
        if stored["installed_version"] == "7.3.0" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{stored}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(&app, "status_messages_total", &[("result", "installed")]).await,
        1.0
    );
}

//! An operator steers single executions: retries what failed, cancels one
//! device's update.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};
use crate::pipeline::{
    ManualDevice, devices_job, execution_moves as moves, spawn_pipeline, wait_for, wait_results,
};

async fn post(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let response = app.request(Method::POST, path).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn retry_failed_sends_again_exactly_the_failed_devices() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([
        { "id": "VIN-RF-1", "family": "esp32", "model": "esp32s3" },
        { "id": "VIN-RF-2", "family": "esp32", "model": "esp32s3" },
    ]))
    .await;
    let fw = app.upload_esp32("8.0.0").await;
    let mut failing = ManualDevice::connect(&prefix, "VIN-RF-1").await;
    let mut fine = ManualDevice::connect(&prefix, "VIN-RF-2").await;
    let job = devices_job(
        &app,
        &fw,
        &["VIN-RF-1", "VIN-RF-2"],
        json!({ "max_retries": 0 }),
    )
    .await;
    let first = failing.next_command(Duration::from_secs(20)).await;
    let other = fine.next_command(Duration::from_secs(20)).await;
    failing
        .report(
            json!({ "message_id": "rf1-error", "state": "error", "error": "flash verify failed",
                        "execution_id": first["execution_id"], "attempt": 1 }),
        )
        .await;
    fine.report(json!({ "message_id": "rf2-done", "state": "done",
                        "execution_id": other["execution_id"], "attempt": 1 }))
        .await;
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (&view["counts"]["done"], &view["counts"]["error"]),
        (&json!(1), &json!(1)),
        "{view}"
    );

    let (status, retried) = post(
        &app,
        &format!("/api/v1/jobs/{job}/retry-failed?delivery_window_secs=3600"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(
        (&retried["retried"], &retried["reopened"]),
        (&json!(1), &json!(true)),
        "{retried}"
    );
    assert_eq!(retried["job"]["status"], "running", "{retried}");

    // The failed device gets its next attempt; the updated one nothing.
    let second = failing.next_command(Duration::from_secs(20)).await;
    assert_eq!(second["execution_id"], first["execution_id"]);
    assert_eq!(second["attempt"], 2, "{second}");
    failing
        .report(json!({ "message_id": "rf1-done", "state": "done",
                        "execution_id": second["execution_id"], "attempt": 2 }))
        .await;
    let view = wait_for(&app, &job, &["completed"], Duration::from_secs(30)).await;
    assert_eq!(view["counts"]["done"], 2, "{view}");
    assert!(fine.try_command(Duration::from_millis(500)).await.is_none());
    assert!(
        moves(&app, "VIN-RF-1")
            .await
            .contains(&"error -> queued (retry)".to_owned())
    );
    let last_error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM executions WHERE device_id = 'VIN-RF-1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(last_error.as_deref(), Some("flash verify failed"));

    // Nothing failed any more: the job stays as it is.
    let (status, again) = post(&app, &format!("/api/v1/jobs/{job}/retry-failed")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["retried"], &again["job"]["status"]),
        (&json!(0), &json!("completed")),
        "{again}"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'job.retry_failed' AND target_id = $1",
    )
    .bind(&job)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);

    // A window out of range, a job that does not exist, a cancelled job.
    let response = app
        .request(
            Method::POST,
            &format!("/api/v1/jobs/{job}/retry-failed?delivery_window_secs=0"),
        )
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let response = app
        .request(
            Method::POST,
            &format!("/api/v1/jobs/{}/retry-failed", uuid::Uuid::now_v7()),
        )
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test]
async fn a_retry_of_a_cancelled_job_is_refused() {
    let (app, _prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-RC-1", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let fw = app.upload_esp32("8.0.1").await;
    let job = devices_job(
        &app,
        &fw,
        &["VIN-RC-1"],
        json!({ "start": "2099-01-01T00:00:00Z" }),
    )
    .await;
    let response = app
        .request(Method::POST, &format!("/api/v1/jobs/{job}/retry-failed"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::CONFLICT, "invalid-transition").await;
    app.act(&format!("/api/v1/jobs/{job}/cancel")).await;
    let response = app
        .request(Method::POST, &format!("/api/v1/jobs/{job}/retry-failed"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, StatusCode::CONFLICT, "invalid-transition").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("cancelled"),
        "{problem}"
    );
}

#[tokio::test]
async fn cancelling_one_device_leaves_the_others_updating() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([
        { "id": "VIN-C1-1", "family": "esp32", "model": "esp32s3" },
        { "id": "VIN-C1-2", "family": "esp32", "model": "esp32s3" },
    ]))
    .await;
    let fw = app.upload_esp32("8.1.0").await;
    let mut stopped = ManualDevice::connect(&prefix, "VIN-C1-1").await;
    let mut going = ManualDevice::connect(&prefix, "VIN-C1-2").await;
    let job = devices_job(&app, &fw, &["VIN-C1-1", "VIN-C1-2"], json!({})).await;
    let first = stopped.next_command(Duration::from_secs(20)).await;
    let other = going.next_command(Duration::from_secs(20)).await;
    stopped
        .report(json!({ "message_id": "c1-init", "state": "init",
                        "execution_id": first["execution_id"], "attempt": 1 }))
        .await;
    wait_results(&app, "applied", 1.0).await;

    let (status, execution) = post(
        &app,
        &format!("/api/v1/jobs/{job}/executions/VIN-C1-1/cancel"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{execution}");
    assert_eq!(
        (&execution["status"], &execution["device_id"]),
        (&json!("cancelled"), &json!("VIN-C1-1")),
        "{execution}"
    );
    assert!(
        moves(&app, "VIN-C1-1")
            .await
            .contains(&"init -> cancelled (cancel)".to_owned())
    );

    // Finished: a second cancel is a conflict; an unknown device is not found.
    let response = app
        .request(
            Method::POST,
            &format!("/api/v1/jobs/{job}/executions/VIN-C1-1/cancel"),
        )
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::CONFLICT, "invalid-transition").await;
    let response = app
        .request(
            Method::POST,
            &format!("/api/v1/jobs/{job}/executions/VIN-NOBODY/cancel"),
        )
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;

    // The job goes on with the other device and ends with its result.
    going
        .report(json!({ "message_id": "c2-done", "state": "done",
                        "execution_id": other["execution_id"], "attempt": 1 }))
        .await;
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (&view["counts"]["done"], &view["counts"]["cancelled"]),
        (&json!(1), &json!(1)),
        "{view}"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'execution.cancel' AND details->>'device_id' = 'VIN-C1-1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn the_install_policy_travels_signed_in_the_manifest() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([
        { "id": "VIN-IP-1", "family": "esp32", "model": "esp32s3" },
        { "id": "VIN-IP-2", "family": "esp32", "model": "esp32s3" },
    ]))
    .await;
    let fw = app.upload_esp32("8.2.0").await;
    let mut parked = ManualDevice::connect(&prefix, "VIN-IP-1").await;
    let mut plain = ManualDevice::connect(&prefix, "VIN-IP-2").await;
    let job = devices_job(&app, &fw, &["VIN-IP-1"], json!({ "install": "when-safe" })).await;
    let view: Value = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(view["install"], "when-safe", "{view}");
    devices_job(&app, &fw, &["VIN-IP-2"], json!({})).await;
    for (device, install) in [(&mut parked, "when-safe"), (&mut plain, "immediate")] {
        let command = device.next_command(Duration::from_secs(20)).await;
        let manifest: Value =
            serde_json::from_str(command["manifest"].as_str().expect("a manifest")).unwrap();
        assert_eq!(
            (&manifest["install"], &manifest["v"]),
            (&json!(install), &json!(3)),
            "{manifest}"
        );
    }
    let response = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": fw["id"], "targets": { "devices": ["VIN-IP-1"] }, "install": "later" }),
        )
        .await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
}

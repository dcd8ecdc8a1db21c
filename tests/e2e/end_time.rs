//! A job's end time: nothing is sent after it, and what is unfinished
//! then ends `expired` with the end time named.

use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::assert_problem;
use crate::pipeline::{devices_job, spawn_pipeline, wait_for};

#[tokio::test]
async fn what_is_unfinished_at_a_job_s_end_time_expires() {
    let (app, _prefix) = spawn_pipeline().await;
    // Registered, never connected: its command waits at the broker.
    app.register(json!([{ "id": "END-1", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let firmware = app.upload_esp32("9.1.0").await;
    for (end, says) in [
        ("yesterday", "RFC 3339"),
        ("2001-01-01T00:00:00Z", "after the start"),
    ] {
        let refused = app
            .post_json(
                "/api/v1/jobs",
                &json!({ "firmware_id": firmware["id"], "targets": { "devices": ["END-1"] }, "end": end }),
            )
            .await;
        let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
        assert_eq!(problem["errors"][0]["field"], "end", "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    let end = Utc::now() + chrono::Duration::seconds(4);
    let job = devices_job(
        &app,
        &firmware,
        &["END-1"],
        json!({ "end": end.to_rfc3339() }),
    )
    .await;
    let view = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(
        view["end_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap()
            .timestamp_millis()
            / 1000,
        end.timestamp(),
        "{view}"
    );
    let started = Instant::now();
    let done = wait_for(
        &app,
        &job,
        &["completed", "failed", "cancelled"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        Utc::now() >= end,
        "the job ended before its end time: {done}"
    );
    assert_eq!(done["counts"]["expired"], 1, "{done}");
    let (reason, cause): (String, String) = sqlx::query_as(
        "SELECT payload->>'reason', payload->>'cause' FROM event_outbox
         WHERE event_type = 'execution.status.changed' AND payload->>'to' = 'expired'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (reason.as_str(), cause.as_str()),
        ("not delivered by the job's end time", "deadline")
    );
    eprintln!(
        "ended {:.1} s after creation",
        started.elapsed().as_secs_f64()
    );
}

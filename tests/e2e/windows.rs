//! Maintenance windows: a job sends nothing new outside them, and starts
//! sending when one opens, in the job's own time zone.

use std::time::Duration;

use chrono::{FixedOffset, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::assert_problem;
use crate::pipeline::{ManualDevice, devices_job, spawn_pipeline};

#[tokio::test]
async fn a_job_dispatches_only_inside_its_maintenance_windows() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "WIN-1", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let mut device = ManualDevice::connect(&prefix, "WIN-1").await;
    let firmware = app.upload_esp32("8.0.0").await;
    let job_with = |windows: Value| json!({ "firmware_id": firmware["id"], "targets": { "devices": ["WIN-1"] }, "windows": windows });
    for (windows, field) in [
        (
            json!({ "time_zone": "Mars/Olympus", "times": [{ "days": ["mon"], "from": "01:00", "to": "02:00" }] }),
            "windows.time_zone",
        ),
        (
            json!({ "times": [{ "days": ["someday"], "from": "01:00", "to": "02:00" }] }),
            "windows.times[0].days",
        ),
        (
            json!({ "times": [{ "days": ["mon"], "from": "1am", "to": "02:00" }] }),
            "windows.times[0].from",
        ),
        (json!({ "times": [] }), "windows.times"),
    ] {
        let refused = app
            .post_json("/api/v1/jobs", &job_with(windows.clone()))
            .await;
        let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
        assert_eq!(problem["errors"][0]["field"], field, "{windows}: {problem}");
    }

    // A window that opens 6 s from now, for two hours, written in India's
    // time (UTC+05:30): the host reads it in the job's zone.
    let india = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
    let opens = (Utc::now() + chrono::Duration::seconds(6)).with_timezone(&india);
    let closes = opens + chrono::Duration::hours(2);
    let day = opens.format("%a").to_string().to_lowercase();
    let windows = json!({ "time_zone": "Asia/Kolkata", "times": [{ "days": [day],
        "from": opens.format("%H:%M:%S").to_string(), "to": closes.format("%H:%M:%S").to_string() }] });
    let job = devices_job(&app, &firmware, &["WIN-1"], json!({ "windows": windows })).await;
    let view = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(view["window_open"], false, "{view}");
    let next: chrono::DateTime<Utc> = view["next_window_at"].as_str().unwrap().parse().unwrap();
    let expected = opens.with_timezone(&Utc).timestamp();
    assert_eq!(next.timestamp(), expected, "{view}");

    // Released, and yet nothing is sent while the window is closed.
    assert!(
        device.try_command(Duration::from_secs(3)).await.is_none(),
        "a command was sent outside the job's window"
    );
    let command = device.next_command(Duration::from_secs(30)).await;
    assert!(
        Utc::now().timestamp() >= expected,
        "sent before the window opened: {command}"
    );
    assert_eq!(command["job_id"], job.as_str(), "{command}");
    let view = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(
        (view["window_open"].clone(), view["next_window_at"].clone()),
        (json!(true), Value::Null),
        "{view}"
    );
}

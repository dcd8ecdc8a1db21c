use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};

async fn wait_until_running(app: &TestApp, id: &str) -> Value {
    for _ in 0..100 {
        let view: Value = app
            .get(&format!("/api/v1/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if view["status"] == "running" {
            return view;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("job {id} did not start");
}

/// A fleet of 30 ESP32s (north/south), 10 STM32s behind 2 Jetsons, and
/// firmware for ESP32; returns the firmware id.
async fn fleet(app: &TestApp) -> String {
    let mut devices = vec![
        json!({ "id": "JET-1", "family": "jetson" }),
        json!({ "id": "JET-2", "family": "jetson" }),
    ];
    for i in 0..30 {
        let site = if i < 20 { "north" } else { "south" };
        devices.push(json!({ "id": format!("ESP-{i:02}"), "family": "esp32", "model": "esp32s3", "tags": { "site": site } }));
    }
    for i in 0..10 {
        devices.push(json!({ "id": format!("STM-{i:02}"), "family": "stm32", "gateway_id": if i < 5 { "JET-1" } else { "JET-2" } }));
    }
    app.register(Value::Array(devices)).await;
    let firmware = app.upload_esp32("1.4.0").await;
    firmware["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_job_by_ids_and_read_its_counts() {
    let app = spawn_app().await;
    let firmware = fleet(&app).await;
    let response = app
        .post_json(
            "/api/v1/jobs",
            &json!({
                "name": "brake controller fix",
                "firmware_id": firmware,
                "targets": { "devices": ["ESP-00", "ESP-01", "ESP-02"] },
                "start": "now",
                "rollout": { "plugin": "rollout-percent", "config": { "batches": [50, 100] } },
                "device_timeout_secs": 900,
                "max_retries": 2
            }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "scheduled");
    assert_eq!(job["kind"], "immediate");
    assert_eq!(job["total"], 3);
    assert_eq!(job["counts"]["queued"], 3);
    assert_eq!(job["counts"]["done"], 0);
    assert_eq!(job["rollout_config"], json!({ "batches": [50, 100] }));
    assert_eq!(job["max_retries"], 2);

    let id = job["id"].as_str().unwrap();
    // The scheduler starts the job and plans it: 50% of 3, then the rest.
    let read = wait_until_running(&app, id).await;
    assert_eq!(read["name"], "brake controller fix");
    let batches: Vec<(i64, i64)> = read["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["batch_group"].as_i64().unwrap(),
                b["total"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(batches, [(0, 2), (1, 1)]);

    let executions: Value = app
        .get(&format!("/api/v1/jobs/{id}/executions?limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(executions["items"].as_array().unwrap().len(), 2);
    assert_eq!(executions["items"][0]["status"], "queued");
    assert_eq!(executions["items"][0]["version"], 0);
    let cursor = executions["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .get(&format!("/api/v1/jobs/{id}/executions?cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());

    let exec_id = executions["items"][0]["id"].as_i64().unwrap();
    let execution: Value = app
        .get(&format!("/api/v1/executions/{exec_id}"))
        .await
        .json()
        .await
        .unwrap();
    // Executions are created in device order, whatever their batch.
    assert_eq!(execution["device_id"], "ESP-00");
    assert!(execution["log"].as_array().unwrap().is_empty());

    // The job's first event is its creation (the scheduler's follow).
    let event: (String, Value) = sqlx::query_as(
        "SELECT event_type, payload FROM event_outbox WHERE aggregate_type = 'job' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(event.0, "job.created");
    assert_eq!(event.1["executions"], 3);
}

#[tokio::test]
async fn create_job_by_filter_emergency_and_scheduled() {
    let app = spawn_app().await;
    let firmware = fleet(&app).await;
    let north: Value = app
        .post_json("/api/v1/jobs", &json!({ "firmware_id": firmware, "targets": { "filter": { "family": "esp32", "tags": { "site": "north" } } }, "start": "emergency" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(north["total"], 20, "{north}");
    assert_eq!(north["kind"], "emergency");
    assert_eq!(north["rollout_plugin"], "rollout-percent");

    let later: Value = app
        .post_json("/api/v1/jobs", &json!({ "firmware_id": firmware, "targets": { "filter": { "model": "esp32s3" } }, "start": "2030-01-01T03:00:00Z" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later["total"], 30);
    assert_eq!(later["kind"], "scheduled");
    assert_eq!(later["start_at"], "2030-01-01T03:00:00Z");

    // The emergency job starts at once; the scheduled one waits for its time.
    let north = wait_until_running(&app, north["id"].as_str().unwrap()).await;
    assert_eq!(north["kind"], "emergency");
    let listed: Value = app
        .get("/api/v1/jobs?status=scheduled")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [later["id"].as_str().unwrap()]);
    let running: Value = app
        .get("/api/v1/jobs?status=running")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(running["items"].as_array().unwrap().len(), 1);
    let bad = app.get("/api/v1/jobs?status=exploded").await;
    assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
}

#[tokio::test]
async fn invalid_jobs_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let firmware = fleet(&app).await;
    let cases = [
        (
            json!({ "firmware_id": uuid::Uuid::new_v4(), "targets": { "devices": ["ESP-00"] } }),
            "firmware_id",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00", "GHOST-1"] } }),
            "targets",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00", "STM-01"] } }),
            "targets",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": [] } }),
            "targets.devices",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00", "ESP-00"] } }),
            "targets.devices[1]",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "filter": { "tags": { "site": "moon" } } } }),
            "targets",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "filter": { "family": "stm32" } } }),
            "targets.filter.family",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"], "filter": {} } }),
            "targets",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"] }, "start": "tomorrow" }),
            "start",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"] }, "max_retries": 11 }),
            "max_retries",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"] }, "device_timeout_secs": 0 }),
            "device_timeout_secs",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"] }, "rollout": { "plugin": "../etc", "config": {} } }),
            "rollout.plugin",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"] }, "rollout": { "plugin": "rollout-percent", "config": [1] } }),
            "rollout.config",
        ),
        (
            json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"] }, "rollout": { "plugin": "rollout-percent", "config": { "note": "x".repeat(70_000) } } }),
            "rollout.config",
        ),
    ];
    for (body, field) in cases {
        let response = app.post_json("/api/v1/jobs", &body).await;
        let problem =
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
        assert!(
            problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "expected an error on {field} for {body}: {problem}"
        );
    }
    // JSON nested deeper than the parser's limit is refused as malformed.
    let deep = format!(
        "{{\"firmware_id\":\"{}\",\"targets\":{{\"devices\":[\"ESP-00\"]}},\"rollout\":{{\"plugin\":\"rollout-percent\",\"config\":{{\"a\":{}1{}}}}}}}",
        firmware,
        "[".repeat(200),
        "]".repeat(200)
    );
    let response = app
        .request(reqwest::Method::POST, "/api/v1/jobs")
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "bad-request").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{problem}"
    );
    let unknown = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00", "GHOST-1"] } }),
        )
        .await;
    let problem = assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("GHOST-1"),
        "{problem}"
    );
    let wrong_family = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware, "targets": { "devices": ["STM-01"] } }),
        )
        .await;
    let problem =
        assert_problem(wrong_family, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("STM-01 (stm32)"),
        "{problem}"
    );

    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let executions: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((jobs, executions), (0, 0));

    let viewer = app.token("viewer").await;
    let forbidden = app
        .request_as(&viewer, Method::POST, "/api/v1/jobs")
        .json(&json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00"] } }))
        .send()
        .await
        .unwrap();
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn the_job_state_machine_is_enforced() {
    let app = spawn_app().await;
    let firmware = fleet(&app).await;
    let job: Value = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware, "targets": { "filter": {} }, "start": "2031-01-01T00:00:00Z" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["total"], 30);

    // A job that has not started cannot be paused or resumed.
    let pause = app
        .request(Method::POST, &format!("/api/v1/jobs/{id}/pause"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(pause, StatusCode::CONFLICT, "invalid-transition").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("scheduled job cannot become paused"),
        "{problem}"
    );
    let resume = app
        .request(Method::POST, &format!("/api/v1/jobs/{id}/resume"))
        .send()
        .await
        .unwrap();
    assert_problem(resume, StatusCode::CONFLICT, "invalid-transition").await;

    let operator = app.token("operator").await;
    let cancelled = app
        .request_as(
            &operator,
            Method::POST,
            &format!("/api/v1/jobs/{id}/cancel"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["counts"]["cancelled"], 30);
    assert_eq!(cancelled["counts"]["queued"], 0);
    assert!(cancelled["finished_at"].is_string());
    assert_eq!(
        cancelled["status_reason"],
        "cancelled by token:operator-test"
    );

    let again = app
        .request(Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(again, StatusCode::CONFLICT, "invalid-transition").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already cancelled"),
        "{problem}"
    );

    // Every execution change has its log row and its event, in the same transaction.
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM execution_status_log WHERE status = 'cancelled'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_outbox WHERE event_type = 'execution.status.changed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let job_events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM event_outbox WHERE aggregate_type = 'job' ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!((logged, events), (30, 30));
    assert_eq!(job_events, ["job.created", "job.status.changed"]);
    let versions: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT version FROM executions")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, [1]);

    let missing = app
        .request(
            Method::POST,
            &format!("/api/v1/jobs/{}/cancel", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
    let viewer = app.token("viewer").await;
    let forbidden = app
        .request_as(&viewer, Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn pause_and_resume_a_running_job() {
    let app = spawn_app().await;
    let firmware = fleet(&app).await;
    let job: Value = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-05"] } }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    let running = wait_until_running(&app, id).await;
    let version = running["version"].as_i64().unwrap();
    let paused: Value = app.act(&format!("/api/v1/jobs/{id}/pause")).await;
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["status_reason"], "paused by token:bootstrap");
    let resumed: Value = app.act(&format!("/api/v1/jobs/{id}/resume")).await;
    assert_eq!(resumed["status"], "running");
    assert_eq!(resumed["version"], version + 2);
    let unknown = app
        .get(&format!("/api/v1/jobs/{}/executions", uuid::Uuid::new_v4()))
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not-found").await;
}

/// A job is planned when it is created: a scheduled job shows its batches
/// before it starts. A job stored without a plan (as earlier versions of
/// Rollway left them) is planned when it starts.
#[tokio::test]
async fn jobs_are_planned_at_creation_and_unplanned_ones_at_start() {
    let app = spawn_app().await;
    let firmware = fleet(&app).await;
    let create = |start: &'static str| {
        json!({
            "firmware_id": firmware, "targets": { "filter": { "tags": { "site": "north" } } },
            "start": start,
            "rollout": { "plugin": "rollout-percent", "config": { "batches": [10, 50, 100] } }
        })
    };
    let later: Value = app
        .post_json("/api/v1/jobs", &create("2030-01-01T03:00:00Z"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later["status"], "scheduled");
    let read: Value = app
        .get(&format!("/api/v1/jobs/{}", later["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(batch_totals(&read), [2, 8, 10], "{read}");
    let groups: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT batch_group, count(*) FROM executions WHERE job_id = $1::uuid
         GROUP BY batch_group ORDER BY batch_group",
    )
    .bind(later["id"].as_str().unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(groups, [(0, 2), (1, 8), (2, 10)]);

    // Stored the way an earlier version did: no batch groups yet, and due.
    let id = later["id"].as_str().unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    for statement in [
        "DELETE FROM job_batches WHERE job_id = $1::uuid",
        "UPDATE executions SET batch_group = NULL WHERE job_id = $1::uuid",
        "UPDATE jobs SET start_at = now() WHERE id = $1::uuid",
    ] {
        sqlx::query(statement)
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let started = wait_until_running(&app, id).await;
    assert_eq!(batch_totals(&started), [2, 8, 10], "{started}");
    let unassigned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE job_id = $1::uuid AND batch_group IS NULL",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(unassigned, 0);
}

fn batch_totals(job: &Value) -> Vec<i64> {
    job["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["total"].as_i64().unwrap())
        .collect()
}

/// A device in a job that is not over cannot be deleted; once the job is
/// over, deleting the device deletes its executions and their logs.
#[tokio::test]
async fn deleting_a_device_deletes_its_finished_executions() {
    let app = spawn_app().await;
    let firmware = fleet(&app).await;
    let job: Value = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-00", "ESP-01"] },
                     "start": "2030-01-01T00:00:00Z" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    let busy = app
        .request(Method::DELETE, "/api/v1/devices/ESP-00")
        .send()
        .await
        .unwrap();
    assert_problem(busy, StatusCode::CONFLICT, "conflict").await;

    let cancelled = app
        .request(Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let history: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM executions WHERE device_id = 'ESP-00'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(history.len(), 1);
    let deleted = app
        .request(Method::DELETE, "/api/v1/devices/ESP-00")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = app
        .get(&format!("/api/v1/executions/{}", history[0].0))
        .await;
    assert_problem(gone, StatusCode::NOT_FOUND, "not-found").await;
    let left: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM executions WHERE device_id = 'ESP-00'),
                (SELECT count(*) FROM execution_status_log WHERE execution_id = $1)",
    )
    .bind(history[0].0)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0));
    // The other device keeps its history, and the job its count.
    let read: Value = app
        .get(&format!("/api/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["counts"]["cancelled"], 1, "{read}");
}

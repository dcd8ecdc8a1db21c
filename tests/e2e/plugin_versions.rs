//! Plugin versions: a job runs on the rollout plugin version it was created
//! with, on every replica, whatever is uploaded meanwhile; an old version
//! is deleted once no unfinished job runs on it, and an uploaded plugin
//! once nothing uses it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};
use crate::pipeline::{create_job, sim_options, spawn_pipeline, wait_for};
use crate::plugins::{fixture, upload_plugin};

/// `component` with a custom section appended: the same plugin, another
/// component digest (a rebuild).
pub fn rebuilt(mut component: Vec<u8>, note: &str) -> Vec<u8> {
    let name = b"rollway-test";
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(note.as_bytes());
    component.push(0);
    let mut size = content.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            component.push(byte);
            break;
        }
        component.push(byte | 0x80);
    }
    component.extend(content);
    component
}

async fn uploaded(app: &TestApp, bytes: Vec<u8>) -> String {
    let response = upload_plugin(app, bytes).await;
    let status = response.status();
    let view: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{view}");
    view["sha256"].as_str().unwrap().to_owned()
}

async fn delete(app: &TestApp, path: &str) -> reqwest::Response {
    app.request(Method::DELETE, path).send().await.unwrap()
}

/// A second replica on the same database and object store.
async fn replica_of(app: &TestApp) -> TestApp {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&crate::helpers::admin_database_url()).unwrap();
    url.set_path(&database);
    let store = app.store_url.clone();
    crate::helpers::spawn_app_with(move |s| {
        s.database_url = Some(url.to_string().into());
        s.bootstrap_token = None;
        s.store = store;
    })
    .await
}

/// Waits until `app` (with `token`) answers `check` true on `path`.
async fn until(
    app: &TestApp,
    token: &str,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let seen = app.json_as(token, path).await;
        if check(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn version<'a>(page: &'a Value, sha256: &str) -> &'a Value {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["sha256"] == sha256)
        .unwrap_or_else(|| panic!("no version {sha256} in {page}"))
}

#[tokio::test]
async fn a_job_keeps_its_rollout_version_to_its_end_and_old_versions_go_once_unused() {
    let (app, prefix) = spawn_pipeline().await;
    let first = uploaded(&app, fixture("template_rollout.wasm")).await;
    let sim = rollway::sim::Simulator::start(sim_options(&app, &prefix, 6, &["esp32"]))
        .await
        .unwrap();
    let firmware = app.upload_esp32("7.0.0").await;
    // A canary of 2, then a soak long enough to upload a new version.
    let job = create_job(
        &app,
        &firmware,
        json!({ "plugin": "rollout-canary", "config": { "canary": 2, "soak_secs": 6 } }),
    )
    .await;
    let view = app.json(&format!("/api/v1/jobs/{job}")).await;
    // The job view flattens the job's fields.
    assert_eq!(view["rollout_plugin_sha256"], first.as_str(), "{view}");

    let second = uploaded(&app, rebuilt(fixture("template_rollout.wasm"), "2")).await;
    assert_ne!(first, second);
    let versions = app.json("/api/v1/plugins/rollout-canary/versions").await;
    assert_eq!(
        version(&versions, &first)["unfinished_jobs"],
        1,
        "{versions}"
    );
    assert_eq!(version(&versions, &first)["in_force"], false, "{versions}");
    assert_eq!(version(&versions, &first)["loaded"], true, "{versions}");
    assert_eq!(version(&versions, &second)["in_force"], true, "{versions}");
    // New jobs get the version in force.
    let newer = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware["id"], "targets": { "devices": ["SIM-ESP32-000000"] },
                     "start": "2099-01-01T00:00:00Z", "rollout": { "plugin": "rollout-canary", "config": {} } }),
        )
        .await;
    let newer: Value = newer.json().await.unwrap();
    assert_eq!(newer["rollout_plugin_sha256"], second.as_str(), "{newer}");
    app.act(&format!(
        "/api/v1/jobs/{}/cancel",
        newer["id"].as_str().unwrap()
    ))
    .await;

    // A replica started now loads the version the running job needs.
    let other = replica_of(&app).await;
    until(
        &other,
        &app.admin_token,
        "/api/v1/plugins/rollout-canary/versions",
        "the old version loaded on a new replica",
        |page| {
            version(page, &first)["loaded"] == true && version(page, &second)["in_force"] == true
        },
    )
    .await;

    // Neither the old version nor the one in force goes while in use.
    let busy = delete(
        &app,
        &format!("/api/v1/plugins/rollout-canary/versions/{first}"),
    )
    .await;
    let problem = assert_problem(busy, StatusCode::CONFLICT, "conflict").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("1 unfinished job"),
        "{problem}"
    );
    let in_force = delete(
        &app,
        &format!("/api/v1/plugins/rollout-canary/versions/{second}"),
    )
    .await;
    assert_problem(in_force, StatusCode::CONFLICT, "conflict").await;
    let used = delete(&app, "/api/v1/plugins/rollout-canary").await;
    assert_problem(used, StatusCode::CONFLICT, "conflict").await;

    let done = wait_for(
        &app,
        &job,
        &["completed", "failed", "paused", "cancelled"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["done"], 6, "{done}");
    sim.stop().await;

    let gone = delete(
        &app,
        &format!("/api/v1/plugins/rollout-canary/versions/{first}"),
    )
    .await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let versions = app.json("/api/v1/plugins/rollout-canary/versions").await;
    assert_eq!(versions["items"].as_array().unwrap().len(), 1, "{versions}");
    let missing = delete(
        &app,
        &format!("/api/v1/plugins/rollout-canary/versions/{first}"),
    )
    .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;

    // Shipped plugins are disabled, not deleted; an uploaded one goes, on
    // every replica.
    let shipped = delete(&app, "/api/v1/plugins/rollout-percent").await;
    let problem = assert_problem(shipped, StatusCode::CONFLICT, "conflict").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("disable it instead"),
        "{problem}"
    );
    let deleted = delete(&app, "/api/v1/plugins/rollout-canary").await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    for replica in [&app, &other] {
        until(
            replica,
            &app.admin_token,
            "/api/v1/plugins",
            "the deleted plugin gone",
            |page| {
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["name"] != "rollout-canary")
            },
        )
        .await;
    }
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM event_outbox WHERE aggregate_id = 'rollout-canary' ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "plugin.uploaded",
            "plugin.uploaded",
            "plugin.version.deleted",
            "plugin.deleted"
        ]
    );
    let audit = app
        .json("/api/v1/audit?target_type=plugin&target_id=rollout-canary")
        .await;
    assert_eq!(audit["items"][0]["action"], "plugin.delete", "{audit}");
    assert_eq!(
        audit["items"][1]["action"], "plugin.version.delete",
        "{audit}"
    );
}

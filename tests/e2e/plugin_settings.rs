//! Plugin settings: set over REST by an admin, checked by the plugin,
//! versioned, audited and evented, and in force for the plugin's calls on
//! every replica.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};
use crate::images;
use crate::pipeline::{ManualDevice, devices_job, spawn_pipeline_with};

async fn put_config(app: &TestApp, token: &str, plugin: &str, body: Value) -> reqwest::Response {
    app.request_as(
        token,
        Method::PUT,
        &format!("/api/v1/plugins/{plugin}/config"),
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

async fn configured(app: &TestApp, plugin: &str, body: Value) -> Value {
    let response = put_config(app, &app.admin_token, plugin, body).await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// Waits until `app` lists `plugin` with settings of `version`.
async fn in_force(app: &TestApp, token: &str, plugin: &str, version: i64) {
    let started = Instant::now();
    loop {
        let listed = app.json_as(token, "/api/v1/plugins").await;
        let found = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == plugin)
            .map(|p| p["config_version"].clone());
        if found == Some(json!(version)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{plugin} never reached settings version {version}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_family_s_settings_change_its_commands_on_the_wire_on_every_replica() {
    // The replica that takes the admin's change has no broker; the one
    // that dispatches learns of the change from the database.
    let api = spawn_app().await;
    let database_url = api.database_url.clone();
    let (dispatcher, prefix) = spawn_pipeline_with(move |s| {
        s.database_url = Some(database_url.into());
        s.bootstrap_token = None;
    })
    .await;
    api.register(json!([
        { "id": "SET-GW", "family": "jetson", "model": "orin-nx" },
        { "id": "SET-MCU", "family": "stm32", "model": "stm32h7", "gateway_id": "SET-GW" },
    ]))
    .await;
    let mut gateway = ManualDevice::connect(&prefix, "SET-GW").await;
    let firmware = api.upload("stm32", "5.0.0", images::stm32(4096, 21)).await;

    // Never configured: the plugin's own defaults.
    let unset = api.json("/api/v1/plugins/device-stm32/config").await;
    assert_eq!(unset["version"], 0, "{unset}");
    assert_eq!(unset["config"], json!({}));
    let job = devices_job(&api, &firmware, &["SET-MCU"], json!({})).await;
    let command = gateway.next_command(Duration::from_secs(20)).await;
    assert_eq!(
        command["relay"],
        json!({ "via": "SET-GW", "bus": "can", "target": "SET-MCU", "chunk_size": 2048 }),
        "{command}"
    );
    api.act(&format!("/api/v1/jobs/{job}/cancel")).await;

    let set = configured(
        &api,
        "device-stm32",
        json!({ "config": { "chunk_size": 512, "bus": "can-fd" }, "expected_version": 0 }),
    )
    .await;
    assert_eq!(set["version"], 1, "{set}");
    assert_eq!(set["set_by"], "token:bootstrap", "{set}");
    in_force(&dispatcher, &api.admin_token, "device-stm32", 1).await;
    devices_job(&api, &firmware, &["SET-MCU"], json!({})).await;
    // The cancel of the first job may come first.
    let started = Instant::now();
    let command = loop {
        let command = gateway.next_command(Duration::from_secs(20)).await;
        if command["type"] != "cancel" && command["relay"]["chunk_size"] != 2048 {
            break command;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{command}");
    };
    assert_eq!(
        command["relay"],
        json!({ "via": "SET-GW", "bus": "can-fd", "target": "SET-MCU", "chunk_size": 512 }),
        "{command}"
    );

    // Kept, audited and published.
    let audit = api
        .json("/api/v1/audit?target_type=plugin&target_id=device-stm32")
        .await;
    assert_eq!(audit["items"][0]["action"], "plugin.configure", "{audit}");
    assert_eq!(audit["items"][0]["details"]["version"], 1, "{audit}");
    let events: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM event_outbox WHERE aggregate_id = 'device-stm32' ORDER BY seq",
    )
    .fetch_all(&api.pool)
    .await
    .unwrap();
    let (kind, payload) = events.last().expect("no plugin event");
    assert_eq!(kind, "plugin.config.changed");
    assert_eq!(payload["version"], 1, "{payload}");
    assert_eq!(
        payload["config"],
        json!({ "chunk_size": 512, "bus": "can-fd" })
    );
}

#[tokio::test]
async fn settings_are_checked_versioned_and_admin_only() {
    let app = spawn_app().await;
    let operator = app.token("operator").await;
    let refused = put_config(&app, &operator, "device-stm32", json!({ "config": {} })).await;
    assert_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let missing = put_config(
        &app,
        &app.admin_token,
        "device-nothing",
        json!({ "config": {} }),
    )
    .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
    for (body, says) in [
        (json!({ "config": [1] }), "object"),
        // The plugin's JSON Schema answers first, in its words.
        (
            json!({ "config": { "bus": "lin" } }),
            "/bus: \"lin\" is not one of",
        ),
        (
            json!({ "config": { "chunk_size": 4 } }),
            "/chunk_size: 4 is less than the minimum of 8",
        ),
        (
            json!({ "config": { "speed": 9 } }),
            "'speed' was unexpected",
        ),
        (
            json!({ "config": { "x": "y".repeat(70_000) } }),
            "65536 bytes",
        ),
    ] {
        let answer = assert_problem(
            put_config(&app, &app.admin_token, "device-stm32", body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert!(
            answer["detail"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let unknown_field = put_config(
        &app,
        &app.admin_token,
        "device-stm32",
        json!({ "config": {}, "when": 1 }),
    )
    .await;
    assert!(unknown_field.status().is_client_error());
    // Nothing refused was kept.
    assert_eq!(
        app.json("/api/v1/plugins/device-stm32/config").await["version"],
        0
    );

    configured(
        &app,
        "device-stm32",
        json!({ "config": { "bus": "can-fd" } }),
    )
    .await;
    configured(
        &app,
        "device-stm32",
        json!({ "config": { "chunk_size": 64 }, "expected_version": 1 }),
    )
    .await;
    let stale = put_config(
        &app,
        &app.admin_token,
        "device-stm32",
        json!({ "config": { "chunk_size": 128 }, "expected_version": 1 }),
    )
    .await;
    let problem = assert_problem(stale, StatusCode::CONFLICT, "conflict").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("version 2"),
        "{problem}"
    );

    let current = app.json("/api/v1/plugins/device-stm32/config").await;
    assert_eq!(
        (current["version"].clone(), current["config"].clone()),
        (json!(2), json!({ "chunk_size": 64 }))
    );
    let history = app
        .json("/api/v1/plugins/device-stm32/configs?limit=1")
        .await;
    assert_eq!(history["items"][0]["version"], 2, "{history}");
    let older = app
        .json(&format!(
            "/api/v1/plugins/device-stm32/configs?cursor={}",
            history["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        older["items"][0]["config"],
        json!({ "bus": "can-fd" }),
        "{older}"
    );
    assert!(older["next_cursor"].is_null());
    // A restart keeps the settings in force.
    let listed = app.json("/api/v1/plugins").await;
    let stm = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "device-stm32")
        .unwrap();
    assert_eq!(stm["config_version"], 2);
}

#[tokio::test]
async fn a_rollout_plugin_s_settings_are_the_defaults_of_new_jobs() {
    let app = spawn_app().await;
    app.register(json!([{ "id": "DEF-1", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let firmware = app.upload_esp32("6.1.0").await;
    let refused = put_config(
        &app,
        &app.admin_token,
        "rollout-percent",
        json!({ "config": { "batches": [50, 20] } }),
    )
    .await;
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    configured(
        &app,
        "rollout-percent",
        json!({ "config": { "batches": [50, 100], "min_soak_secs": 600 } }),
    )
    .await;
    let create = |rollout: Value| {
        let app = &app;
        let firmware = firmware["id"].clone();
        async move {
            let mut body = json!({ "firmware_id": firmware, "targets": { "devices": ["DEF-1"] } });
            if !rollout.is_null() {
                body["rollout"] = rollout;
            }
            let response = app.post_json("/api/v1/jobs", &body).await;
            let status = response.status();
            let job: Value = response.json().await.unwrap();
            assert_eq!(status, StatusCode::CREATED, "{job}");
            app.act(&format!(
                "/api/v1/jobs/{}/cancel",
                job["id"].as_str().unwrap()
            ))
            .await;
            job
        }
    };
    // The merged configuration meets the plugin's JSON Schema, or the job
    // is refused with the schema's words.
    let bad = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware["id"], "targets": { "devices": ["DEF-1"] },
                     "rollout": { "plugin": "rollout-percent", "config": { "batches": [10, "x"] } } }),
        )
        .await;
    let problem = assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(problem["errors"][0]["field"], "rollout.config", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("/batches/1"),
        "{problem}"
    );
    let defaults = create(Value::Null).await;
    assert_eq!(
        defaults["rollout_config"],
        json!({ "batches": [50, 100], "min_soak_secs": 600 }),
        "{defaults}"
    );
    let own = create(json!({ "plugin": "rollout-percent", "config": { "batches": [100] } })).await;
    assert_eq!(
        own["rollout_config"],
        json!({ "batches": [100], "min_soak_secs": 600 }),
        "{own}"
    );
}

//! The event stream's contract (docs/EVENTS.md) against what the code
//! emits: every kind of event is documented, and every event a rollout,
//! a timeout, a retry, a cancel, a device's drift and firmware and plugin
//! changes write carries exactly the documented fields.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use rollway::outbox::EventType;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::pipeline::{ManualDevice, one_device_job, spawn_pipeline, wait_for};

/// Each documented type with its fields, from the headings
/// (### `type`) and the first column of their field tables.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text = include_str!("../../docs/EVENTS.md");
    let mut types = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### `") {
            let name = heading.trim_end_matches('`').to_owned();
            types.insert(name.clone(), BTreeSet::new());
            current = Some(name);
        } else if line.starts_with("## ") {
            current = None;
        } else if let (Some(name), Some(row)) = (&current, line.strip_prefix("| `")) {
            let field = row.split('`').next().unwrap_or_default().to_owned();
            types.get_mut(name).unwrap().insert(field);
        }
    }
    types
}

#[test]
fn every_kind_of_event_is_documented() {
    let documented: BTreeSet<String> = documented().into_keys().collect();
    let emitted: BTreeSet<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(documented, emitted, "docs/EVENTS.md and EventType differ");
}

#[tokio::test]
async fn every_event_written_has_exactly_its_documented_fields() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-EV", "family": "esp32", "model": "esp32s3" }]))
        .await;
    // Firmware: uploaded, allowed as a downgrade and back, one deleted.
    let firmware = app.upload_esp32("10.0.0").await;
    let fw = firmware["id"].as_str().unwrap();
    let path = format!("/api/v1/firmware/{fw}/allow-downgrade");
    let allowed = app
        .post_json(&path, &json!({ "reason": "a field fix" }))
        .await;
    assert_eq!(allowed.status(), StatusCode::OK);
    let forbidden = app.request(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(forbidden.status(), StatusCode::OK);
    let spare = app.upload_esp32("10.0.1").await;
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/api/v1/firmware/{}", spare["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    // A plugin: uploaded, disabled, enabled.
    let uploaded =
        crate::plugins::upload_plugin(&app, crate::plugins::fixture("legacy_device_plugin.wasm"))
            .await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let name = uploaded.json::<Value>().await.unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for action in ["disable", "enable"] {
        let changed = app.act(&format!("/api/v1/plugins/{name}/{action}")).await;
        assert!(changed["name"].is_string(), "{changed}");
    }
    // Configured, rebuilt, its old version deleted, then itself.
    let configured = app
        .request(Method::PUT, &format!("/api/v1/plugins/{name}/config"))
        .json(&json!({ "config": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(configured.status(), StatusCode::OK);
    let legacy = crate::plugins::fixture("legacy_device_plugin.wasm");
    let old = hex::encode(sha2::Sha256::digest(&legacy));
    let rebuilt = crate::plugin_versions::rebuilt(legacy, "2");
    let replaced = crate::plugins::upload_plugin(&app, rebuilt).await;
    assert_eq!(replaced.status(), StatusCode::CREATED);
    for path in [
        format!("/api/v1/plugins/{name}/versions/{old}"),
        format!("/api/v1/plugins/{name}"),
    ] {
        let deleted = app.request(Method::DELETE, &path).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT, "{path}");
    }

    // A job the device finishes: created, started, batch, decisions,
    // dispatched, device statuses, completed.
    let mut device = ManualDevice::connect(&prefix, "VIN-EV").await;
    let job = one_device_job(&app, &firmware, "VIN-EV", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;
    device
        .finish(&app, &job, &command["execution_id"], 1, "ev")
        .await;
    // A job whose device stalls after accepting its command: the timeout
    // fails it.
    let job = one_device_job(
        &app,
        &firmware,
        "VIN-EV",
        json!({ "device_timeout_secs": 1, "max_retries": 0 }),
    )
    .await;
    let command = device.next_command(Duration::from_secs(20)).await;
    device
        .report(json!({ "message_id": "ev-stall-init", "state": "init",
                        "execution_id": command["execution_id"], "attempt": 1 }))
        .await;
    wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(30),
    )
    .await;
    // An operator retries it, and cancels it while its command is out.
    let retried = app.act(&format!("/api/v1/jobs/{job}/retry-failed")).await;
    assert_eq!(retried["retried"], 1, "{retried}");
    device.next_command(Duration::from_secs(20)).await;
    let cancelled = app.act(&format!("/api/v1/jobs/{job}/cancel")).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // Flashed outside Rollway: it says it runs what nobody sent it.
    device
        .client
        .publish(
            format!("{prefix}/VIN-EV/presence"),
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"state":"online","installed_version":"9.9.9-shop"}"#.to_vec(),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while app
        .get("/api/v1/devices/VIN-EV")
        .await
        .json::<Value>()
        .await
        .unwrap()["drift"]
        != true
    {
        assert!(started.elapsed() < Duration::from_secs(20), "no drift");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An event Kafka refused for good leaves a marker in its place.
    let refused: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM event_outbox WHERE event_type = 'execution.status.changed' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    crate::relay::bury_as_refused(&app, &refused.to_string()).await;

    let documented = documented();
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT event_type, payload FROM event_outbox ORDER BY seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let mut seen = BTreeSet::new();
    let mut causes = BTreeSet::new();
    for (kind, payload) in &events {
        let fields: BTreeSet<String> = payload.as_object().unwrap().keys().cloned().collect();
        let want = documented
            .get(kind)
            .unwrap_or_else(|| panic!("{kind} is not documented: {payload}"));
        assert_eq!(&fields, want, "{kind}: {payload}");
        assert_eq!(payload["schema"], 1, "{kind}: {payload}");
        if kind == "execution.status.changed" {
            causes.insert(payload["cause"].as_str().unwrap().to_owned());
        }
        seen.insert(kind.clone());
    }
    let all: BTreeSet<String> = documented.into_keys().collect();
    assert_eq!(seen, all, "some kind of event was not written");
    for cause in ["dispatch", "device", "timeout", "cancel", "retry"] {
        assert!(
            causes.contains(cause),
            "no execution moved for {cause}: {causes:?}"
        );
    }
}

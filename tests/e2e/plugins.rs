//! The plugin platform seen from outside: shipped plugins at work on
//! uploads and jobs, uploads of new plugins, and hostile plugins contained.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use rollway::metrics::Metrics;
use rollway::plugins::runtime::Limits;
use rollway::plugins::{
    BatchCounts, CommandRequest, Decision, DeviceInfo, FirmwareRef, PluginError, PluginRegistry,
    PluginSource, Snapshot,
};

use crate::helpers::{TestApp, assert_problem, metric, spawn_app};
use crate::images;

/// Builds the fixture plugins (`tests/plugins/*`) once per test run and
/// returns the directory holding the components.
fn fixtures() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../wasm-plugins");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--target",
                    "wasm32-wasip2",
                ])
                .args([
                    "-p",
                    "hostile-plugin",
                    "-p",
                    "future-plugin",
                    "-p",
                    "not-a-plugin",
                    "-p",
                    "template-rollout",
                    "-p",
                    "template-device",
                    "-p",
                    "legacy-device-plugin",
                    "-p",
                    "legacy-rollout-plugin",
                    "-p",
                    "poison-device-plugin",
                    "--target-dir",
                ])
                .arg(&target)
                .env_remove("RUSTC_WRAPPER")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("CARGO_TARGET_DIR")
                .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
                .env("CARGO_PROFILE_RELEASE_STRIP", "true")
                .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
                .env("CARGO_PROFILE_RELEASE_LTO", "true")
                .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
                .status()
                .expect("running cargo for the fixture plugins");
            assert!(status.success(), "building the fixture plugins failed");
            target.join("wasm32-wasip2/release")
        })
        .clone()
}

/// Builds the plugins in other languages (`scripts/build-examples.sh`:
/// the Python example strategy and probe) once per test run and returns
/// the directory holding the components.
fn examples() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("examples");
            let status = std::process::Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../scripts/build-examples.sh"
                ))
                .arg(&out)
                .status()
                .expect("running scripts/build-examples.sh");
            assert!(status.success(), "building the example plugins failed");
            out
        })
        .clone()
}

fn example(file: &str) -> Vec<u8> {
    std::fs::read(examples().join(file)).unwrap_or_else(|e| panic!("reading example {file}: {e}"))
}

pub fn fixture(file: &str) -> Vec<u8> {
    let dir = fixtures();
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("reading fixture {file}: {e}"))
}

pub async fn upload_plugin(app: &TestApp, bytes: Vec<u8>) -> reqwest::Response {
    app.post_bytes("/api/v1/plugins", bytes).await
}

/// Uploads `bytes` to `path` and expects a validation problem whose detail
/// contains `text`.
async fn assert_upload_refused(
    app: &TestApp,
    path: &str,
    bytes: impl Into<reqwest::Body>,
    text: &str,
) {
    let refused = app.post_bytes(path, bytes).await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        problem["detail"].as_str().unwrap().contains(text),
        "{problem}"
    );
}

pub async fn plugin(app: &TestApp, name: &str) -> Value {
    let list: Value = app.get("/api/v1/plugins").await.json().await.unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn shipped_plugins_are_loaded() {
    let app = spawn_app().await;
    let viewer = app.token("viewer").await;
    let list: Value = app.json_as(&viewer, "/api/v1/plugins").await;
    // A list like every other: one page of items, no next one.
    assert!(list["next_cursor"].is_null(), "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "device-esp32",
            "device-jetson",
            "device-stm32",
            "rollout-exponential",
            "rollout-percent",
            "rollout-rings"
        ]
    );
    for p in list["items"].as_array().unwrap() {
        assert_eq!(p["wit_version"], "0.1.8", "{p}");
        // Each describes its settings, and takes none at all.
        let schema = &p["config_schema"];
        assert_eq!(schema["type"], "object", "{p}");
        assert!(!schema["properties"].as_object().unwrap().is_empty(), "{p}");
        assert_eq!(p["config_version"], 0, "{p}");
        // Every shipped device plugin's statuses name their attempt, each
        // takes statuses and commands in batches, parses presence, reports
        // every state, tells its devices of cancels and says images'
        // security counters.
        assert_eq!(p["reports_attempts"], p["kind"] == "device", "{p}");
        assert_eq!(p["takes_batches"], p["kind"] == "device", "{p}");
        assert_eq!(p["parses_presence"], p["kind"] == "device", "{p}");
        assert_eq!(p["reports_every_state"], p["kind"] == "device", "{p}");
        assert_eq!(p["sends_cancels"], p["kind"] == "device", "{p}");
        assert_eq!(p["inspects_images"], p["kind"] == "device", "{p}");
        assert_eq!(p["classifies_failures"], p["kind"] == "device", "{p}");
        // The percent strategy keeps the contract of counts.
        assert_eq!(
            p["plans_by_attributes"],
            p["name"] == "rollout-rings" || p["name"] == "rollout-exponential",
            "{p}"
        );
        assert_eq!(p["state"], "enabled");
        assert_eq!(p["source"], "builtin");
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
    }
    let esp = plugin(&app, "device-esp32").await;
    assert_eq!(esp["kind"], "device");
    assert_eq!(esp["families"], json!(["esp32"]));
}

#[tokio::test]
async fn device_plugins_validate_uploads_and_extract_metadata() {
    let app = spawn_app().await;
    // ESP32: version and chip come from the image.
    let esp = app
        .post_bytes(
            "/api/v1/firmware?family=esp32",
            images::esp32(images::ESP32S3, "2.3.1", 10_000),
        )
        .await;
    assert_eq!(esp.status(), StatusCode::CREATED);
    let esp: Value = esp.json().await.unwrap();
    assert_eq!(esp["version"], "2.3.1");
    assert_eq!(esp["metadata"]["target"], "esp32s3");
    assert_eq!(esp["metadata"]["details"]["project_name"], "brake-ecu");
    assert_eq!(esp["metadata"]["details"]["idf_version"], "v5.2.1");
    assert_eq!(esp["security_counter"], 0, "{esp}");
    // The image's anti-rollback counter (ESP-IDF's secure_version, in
    // esp_app_desc_t after the image and segment headers) is the
    // firmware's, unless the operator gives one.
    let mut secured = images::esp32(images::ESP32S3, "2.4.0", 10_000);
    secured[36..40].copy_from_slice(&3u32.to_le_bytes());
    let from_image: Value = app
        .post_bytes("/api/v1/firmware?family=esp32", secured.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(from_image["security_counter"], 3, "{from_image}");
    assert_eq!(
        from_image["metadata"]["details"]["security_counter"], "3",
        "{from_image}"
    );
    secured[16 + 32..16 + 32 + 5].copy_from_slice(b"2.4.1");
    let given: Value = app
        .post_bytes("/api/v1/firmware?family=esp32&security_counter=5", secured)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(given["security_counter"], 5, "{given}");

    let mut broken = images::esp32(images::ESP32S3, "2.3.2", 10_000);
    broken[0] = 0x7F;
    assert_upload_refused(
        &app,
        "/api/v1/firmware?family=esp32",
        broken,
        "device-esp32: not an ESP-IDF application image",
    )
    .await;

    let mismatch = app
        .post_bytes(
            "/api/v1/firmware?family=esp32&version=9.9.9",
            images::esp32(images::ESP32S3, "2.3.3", 10_000),
        )
        .await;
    let problem = assert_problem(mismatch, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(problem["errors"][0]["field"], "version");

    // STM32: the vector table is checked; the version comes from the operator.
    let stm: Value = app.upload("stm32", "4.0.0", images::stm32(8192, 9)).await;
    assert_eq!(stm["metadata"]["details"]["reset_handler"], "0x08000199");
    let mut bad_sp = images::stm32(8192, 9);
    bad_sp[3] = 0x90;
    assert_upload_refused(
        &app,
        "/api/v1/firmware?family=stm32&version=4.0.1",
        bad_sp,
        "stack pointer",
    )
    .await;
    // An Intel HEX record with a multi-byte character (a fuzzing find that
    // trapped the plugin) is an invalid image, not a plugin failure.
    let hostile = format!(":{}ο2\n:00000001FF\n", "2".repeat(19));
    assert_upload_refused(
        &app,
        "/api/v1/firmware?family=stm32&version=4.0.2",
        hostile,
        "not hexadecimal",
    )
    .await;

    // Jetson: the payload's manifest names board and version.
    let jet = app
        .post_bytes(
            "/api/v1/firmware?family=jetson",
            images::jetson("jetson-orin-nx", "7.1.0"),
        )
        .await;
    assert_eq!(jet.status(), StatusCode::CREATED);
    let jet: Value = jet.json().await.unwrap();
    assert_eq!(jet["version"], "7.1.0");
    assert_eq!(jet["metadata"]["target"], "jetson-orin-nx");
    assert_eq!(jet["metadata"]["details"]["l4t_version"], "36.3.0");
    let no_manifest = images::jetson_files(&[("rootfs.img", b"data")]);
    assert_upload_refused(
        &app,
        "/api/v1/firmware?family=jetson&version=1",
        no_manifest,
        "no manifest.json",
    )
    .await;
    let traversal = images::jetson_files(&[
        ("manifest.json", br#"{"board":"b","l4t_version":"1"}"#),
        ("../../etc/shadow", b"x"),
    ]);
    let refused = app
        .post_bytes("/api/v1/firmware?family=jetson&version=2", traversal)
        .await;
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    // Refused images leave neither records nor temporary objects.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM firmware")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        count, 5,
        "the ESP32, STM32 and Jetson images and the two with counters"
    );
    let uploads =
        std::path::Path::new(app.store_url.strip_prefix("file://").unwrap()).join("uploads");
    assert_eq!(
        std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0),
        0
    );
    assert!(
        metric(
            &app,
            "plugin_calls_total",
            &[("plugin", "device-esp32"), ("function", "inspect-image")]
        )
        .await
            >= 3.0,
        "the ESP32 plugin validates with inspect-image (WIT 0.1.6 and later)"
    );
}

async fn job_with_rollout(app: &TestApp, firmware: &str, rollout: Value) -> reqwest::Response {
    app.post_json(
        "/api/v1/jobs",
        &json!({ "firmware_id": firmware, "targets": { "devices": ["ESP-1"] }, "rollout": rollout }),
    )
    .await
}

async fn esp_fleet(app: &TestApp) -> String {
    app.register(json!({ "id": "ESP-1", "family": "esp32", "model": "esp32s3" }))
        .await;
    let fw = app.upload_esp32("1.0.0").await;
    fw["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rollout_configs_are_checked_by_their_plugin() {
    let app = spawn_app().await;
    let fw = esp_fleet(&app).await;
    let ok = job_with_rollout(&app, &fw, json!({ "plugin": "rollout-percent", "config": { "batches": [20, 100], "failure_threshold": 5 } })).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let bad = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "rollout-percent", "config": { "batches": [50, 40, 100] } }),
    )
    .await;
    let problem = assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(problem["errors"][0]["field"], "rollout.config");
    assert!(
        problem["detail"].as_str().unwrap().contains("increasing"),
        "{problem}"
    );
    let unknown = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "rollout-magic", "config": {} }),
    )
    .await;
    let problem = assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(problem["errors"][0]["field"], "rollout.plugin");

    // A disabled plugin is refused until it is enabled again.
    let operator = app.token("operator").await;
    let forbidden = app
        .request_as(
            &operator,
            Method::POST,
            "/api/v1/plugins/rollout-percent/disable",
        )
        .send()
        .await
        .unwrap();
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;
    let disabled: Value = app
        .request(Method::POST, "/api/v1/plugins/rollout-percent/disable")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disabled["state"], "disabled");
    let refused = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "rollout-percent", "config": {} }),
    )
    .await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("disabled"),
        "{problem}"
    );
    let enabled: Value = app
        .request(Method::POST, "/api/v1/plugins/rollout-percent/enable")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["state"], "enabled");
    assert_eq!(
        job_with_rollout(
            &app,
            &fw,
            json!({ "plugin": "rollout-percent", "config": {} })
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    let missing = app
        .request(Method::POST, "/api/v1/plugins/nope/enable")
        .send()
        .await
        .unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
    let stored: bool =
        sqlx::query_scalar("SELECT enabled FROM plugins WHERE name = 'rollout-percent'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(stored);
}

#[tokio::test]
async fn hostile_plugins_are_contained() {
    let app = spawn_app().await;
    let fw = esp_fleet(&app).await;
    let uploaded = upload_plugin(&app, fixture("hostile_plugin.wasm")).await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let view: Value = uploaded.json().await.unwrap();
    assert_eq!(
        (
            view["name"].as_str(),
            view["source"].as_str(),
            view["kind"].as_str()
        ),
        (Some("hostile"), Some("uploaded"), Some("rollout"))
    );

    let healthy = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "hostile", "config": { "mode": "ok" } }),
    )
    .await;
    assert_eq!(healthy.status(), StatusCode::CREATED);
    // Cancelled at once: the evaluations of a running job would succeed
    // between the failures counted in a row below.
    let healthy: Value = healthy.json().await.unwrap();
    let cancelled = app
        .act(&format!(
            "/api/v1/jobs/{}/cancel",
            healthy["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    for (mode, expect) in [
        ("loop", "budget"),
        ("bomb", "memory"),
        ("panic", "panicked"),
    ] {
        let started = Instant::now();
        let response = job_with_rollout(
            &app,
            &fw,
            json!({ "plugin": "hostile", "config": { "mode": mode } }),
        )
        .await;
        let problem = assert_problem(response, StatusCode::BAD_GATEWAY, "plugin-failed").await;
        assert!(
            problem["detail"].as_str().unwrap().contains(expect),
            "{mode}: {problem}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{mode} took {:?}",
            started.elapsed()
        );
        // The host keeps serving.
        let health = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    // A plugin reads no clock and no entropy of the host's: a call
    // without a time of its own sees the Unix epoch, stopped.
    let probe = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "hostile", "config": { "mode": "probe" } }),
    )
    .await;
    let problem = assert_problem(probe, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("wall_ms=0 monotonic_ns=0 elapsed_ns=0 "),
        "{problem}"
    );

    // An enormous answer is cut down to size.
    let huge = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "hostile", "config": { "mode": "huge" } }),
    )
    .await;
    let problem = assert_problem(huge, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(problem["detail"].as_str().unwrap().len() < 2048);

    for reason in ["timeout", "memory", "panic"] {
        let traps = metric(
            &app,
            "plugin_traps_total",
            &[("plugin", "hostile"), ("reason", reason)],
        )
        .await;
        assert!(traps >= 1.0, "no {reason} trap counted");
    }
    // Every call is timed, a runaway one at its budget.
    let timed = metric(
        &app,
        "plugin_call_duration_seconds_count",
        &[("plugin", "hostile"), ("function", "validate-config")],
    )
    .await;
    assert!(timed >= 6.0, "{timed} calls timed");
    let slowest = metric(
        &app,
        "plugin_call_duration_seconds_bucket",
        &[
            ("plugin", "hostile"),
            ("function", "validate-config"),
            ("le", "1"),
        ],
    )
    .await;
    assert!(slowest < timed, "the endless loop ran to its 2 s budget");

    // Five failures in a row disable the plugin.
    for _ in 0..5 {
        job_with_rollout(
            &app,
            &fw,
            json!({ "plugin": "hostile", "config": { "mode": "panic" } }),
        )
        .await;
    }
    let state = plugin(&app, "hostile").await;
    assert_eq!(state["state"], "disabled", "{state}");
    assert!(
        state["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("in a row"),
        "{state}"
    );
    assert!(state["traps"].as_u64().unwrap() >= 8);
    let refused = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "hostile", "config": { "mode": "ok" } }),
    )
    .await;
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    app.request(Method::POST, "/api/v1/plugins/hostile/enable")
        .send()
        .await
        .unwrap();
    let again = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "hostile", "config": { "mode": "ok" } }),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    // Other plugins were never affected.
    assert_eq!(plugin(&app, "rollout-percent").await["traps"], 0);
}

#[tokio::test]
async fn uploads_that_are_not_plugins_are_refused_clearly() {
    let app = spawn_app().await;
    let wrong_world = upload_plugin(&app, fixture("not-a-plugin.wasm")).await;
    let problem = assert_problem(wrong_world, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not a Rollway plugin"),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("wasi:cli/run"),
        "{problem}"
    );

    let future = upload_plugin(&app, fixture("future_plugin.wasm")).await;
    let problem = assert_problem(future, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("rollway:plugin@0.2.0"),
        "{problem}"
    );

    let garbage = upload_plugin(&app, b"\0asm but not really".to_vec()).await;
    assert_problem(garbage, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let empty = upload_plugin(&app, Vec::new()).await;
    assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let operator = app.token("operator").await;
    let forbidden = app
        .request_as(&operator, Method::POST, "/api/v1/plugins")
        .body(fixture("hostile_plugin.wasm"))
        .send()
        .await
        .unwrap();
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;

    // Uploading a plugin of a name already loaded replaces it.
    let shipped = rollway::plugins::BUILT_IN
        .iter()
        .find(|(n, _)| *n == "device-stm32")
        .unwrap()
        .1
        .to_vec();
    let replaced = upload_plugin(&app, shipped).await;
    assert_eq!(
        replaced.status(),
        StatusCode::CREATED,
        "re-uploading a plugin replaces it"
    );
    assert_eq!(plugin(&app, "device-stm32").await["source"], "uploaded");
    let list: Value = app.get("/api/v1/plugins").await.json().await.unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        rollway::plugins::BUILT_IN.len()
    );
}

#[tokio::test]
async fn uploaded_plugins_survive_a_restart() {
    let app = spawn_app().await;
    assert_eq!(
        upload_plugin(&app, fixture("hostile_plugin.wasm"))
            .await
            .status(),
        StatusCode::CREATED
    );
    app.request(Method::POST, "/api/v1/plugins/device-jetson/disable")
        .send()
        .await
        .unwrap();
    // A second host on the same database and store sees the same plugins.
    let url: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let admin = crate::helpers::admin_database_url();
    let mut db_url = url::Url::parse(&admin).unwrap();
    db_url.set_path(&url);
    let store = app.store_url.clone();
    let second = crate::helpers::spawn_app_with(move |s| {
        s.database_url = Some(db_url.to_string().into());
        s.store = store;
    })
    .await;
    assert_eq!(plugin(&second, "hostile").await["source"], "uploaded");
    assert_eq!(plugin(&second, "device-jetson").await["state"], "disabled");
}

#[tokio::test]
async fn plugin_check_gives_a_verdict() {
    let dir = crate::helpers::temp_dir("check");
    for (name, bytes) in rollway::plugins::BUILT_IN {
        let file = dir.join(format!("{name}.wasm"));
        std::fs::write(&file, bytes).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(["plugin", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}");
        assert!(stdout.contains(&format!("plugin:      {name}")), "{stdout}");
        assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
    }
    // The templates plugin authors copy pass the check as they are.
    for template in ["template_rollout.wasm", "template_device.wasm"] {
        let file = dir.join(template);
        std::fs::write(&file, fixture(template)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(["plugin", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim_end().ends_with("OK"),
            "{template}: {stdout}"
        );
    }
    // A device plugin's validator runs on the images given.
    let good = dir.join("app-2.1.0.bin");
    std::fs::write(&good, images::esp32(images::ESP32S3, "2.1.0", 64 * 1024)).unwrap();
    let bad = dir.join("random.bin");
    std::fs::write(&bad, rollway::demo::pseudo_random_bytes(4096, 7)).unwrap();
    let checked = |image: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(["plugin", "check"])
            .arg(dir.join("device-esp32.wasm"))
            .arg("--image")
            .arg(image)
            .output()
            .unwrap()
    };
    let out = checked(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("app-2.1.0.bin: version 2.1.0, target esp32s3"),
        "{stdout}"
    );
    let out = checked(&bad);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAIL: validate-image")
            && stdout.contains("not an ESP-IDF application image"),
        "the plugin's reason is shown: {stdout}"
    );
    let abort = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
        .args(["plugin", "check", "--failure-rate", "0.5"])
        .arg(dir.join("rollout-percent.wasm"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&abort.stdout).contains("abort: batch 0"));
    let not_plugin = dir.join("not.wasm");
    std::fs::write(&not_plugin, fixture("not-a-plugin.wasm")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
        .args(["plugin", "check"])
        .arg(&not_plugin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}

/// A compiled plugin is kept on disk: the next process that loads it reads
/// its machine code from the compile cache instead of compiling it again.
#[test]
fn compiled_plugins_are_kept_for_the_next_start() {
    let dir = crate::helpers::temp_dir("compile-cache");
    let file = dir.join("template_rollout.wasm");
    std::fs::write(&file, fixture("template_rollout.wasm")).unwrap();
    let cache = dir.join("cache");
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(["plugin", "check"])
            .arg(&file)
            .env("ROLLWAY_PLUGIN_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout
            .lines()
            .find(|line| line.starts_with("compiled:"))
            .unwrap_or_else(|| panic!("no compile line in {stdout}"))
            .to_owned()
    };
    let first = check();
    assert!(!first.contains("from the compile cache"), "{first}");
    assert!(std::fs::read_dir(&cache).unwrap().next().is_some());
    let second = check();
    assert!(second.contains("from the compile cache"), "{second}");
}

/// A project of `rollway plugin new` builds outside the repository with
/// plain cargo (its own manifest, WIT and SDK), its unit tests run
/// natively, and its component passes `rollway plugin check`.
#[test]
fn a_new_plugin_project_builds_on_its_own() {
    let _cores = crate::helpers::CORES.blocking_lock();
    let root = crate::helpers::temp_dir("plugin-new");
    // One target directory for both projects and every run: the second
    // build and later runs reuse the dependencies.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-new-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo = |dir: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(&cargo)
            .current_dir(dir)
            .args(args)
            // The registry's crates are on this machine already.
            .arg("--offline")
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?} in {}:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (kind, name) in [("rollout", "rollout-mine"), ("device", "device-mine")] {
        let dir = root.join(name);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(["plugin", "new", kind, name, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("wit/plugin.wit"));
        cargo(&dir, &["build", "--release", "--target", "wasm32-wasip2"]);
        let component = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(["plugin", "check"])
            .arg(&component)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("plugin:      {name} ")),
            "{name}: {stdout}"
        );
        // A second project in the same place is refused, not merged.
        let again = std::process::Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(["plugin", "new", kind, name, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!again.status.success());
    }
    cargo(&root.join("rollout-mine"), &["test", "--lib"]);
}

#[tokio::test]
async fn plugins_dir_is_loaded_at_start() {
    let dir = crate::helpers::temp_dir("plugins-dir");
    std::fs::write(dir.join("canary.wasm"), fixture("template_rollout.wasm")).unwrap();
    std::fs::write(dir.join("broken.wasm"), b"not a component").unwrap();
    std::fs::write(dir.join("README.txt"), b"not a plugin either").unwrap();
    let app = crate::helpers::spawn_app_with(move |s| s.plugins_dir = Some(dir)).await;
    let canary = plugin(&app, "rollout-canary").await;
    assert_eq!(canary["source"], "directory", "{canary}");
    let list: Value = app.get("/api/v1/plugins").await.json().await.unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        rollway::plugins::BUILT_IN.len() + 1
    );
    let fw = esp_fleet(&app).await;
    let job = job_with_rollout(
        &app,
        &fw,
        json!({ "plugin": "rollout-canary", "config": { "canary": 1 } }),
    )
    .await;
    assert_eq!(job.status(), StatusCode::CREATED);
}

fn command_request(
    family: &str,
    model: Option<&str>,
    gateway: Option<&str>,
    target: Option<&str>,
) -> CommandRequest {
    CommandRequest {
        device: DeviceInfo {
            id: "DEV-1".into(),
            family: family.into(),
            model: model.map(Into::into),
            gateway_id: gateway.map(Into::into),
            gateway_family: gateway.map(|_| "jetson".into()),
        },
        firmware: FirmwareRef {
            id: "fw-1".into(),
            version: "2.0.0".into(),
            sha256: "ab".repeat(32),
            size: 4096,
            target: target.map(Into::into),
        },
        job_id: "job-1".into(),
        execution_id: 77,
        attempt: 2,
        download_url: "https://rollway.example/dl/fw-1".into(),
        manifest: "{\"device_id\":\"DEV-1\"}".into(),
        signature: "c2ln".into(),
        key_id: "k1".into(),
    }
}

#[test]
fn device_plugins_build_commands_and_parse_statuses() {
    let registry =
        PluginRegistry::with_builtins(Metrics::new().unwrap(), Limits::default()).unwrap();

    let esp = registry
        .build_command(
            "esp32",
            "{}",
            &command_request("esp32", Some("esp32s3-wroom-1"), None, Some("esp32s3")),
        )
        .unwrap();
    assert_eq!((esp.topic.as_str(), esp.qos), ("DEV-1/update/command", 1));
    let payload: Value = serde_json::from_slice(&esp.payload).unwrap();
    assert_eq!(payload["execution_id"], 77);
    assert_eq!(payload["firmware"]["sha256"], "ab".repeat(32));
    assert_eq!(payload["manifest"], "{\"device_id\":\"DEV-1\"}");
    let wrong_chip = registry
        .build_command(
            "esp32",
            "{}",
            &command_request("esp32", Some("esp32s3"), None, Some("esp32c3")),
        )
        .unwrap_err();
    assert!(
        matches!(wrong_chip, PluginError::Refused { .. }),
        "{wrong_chip}"
    );
    assert!(
        wrong_chip.to_string().contains("built for esp32c3"),
        "{wrong_chip}"
    );

    // An MCU behind a Jetson gateway is reached on the gateway's topic,
    // with relay instructions for the CAN bus.
    let stm = registry
        .build_command(
            "stm32",
            r#"{"chunk_size": 1024}"#,
            &command_request("stm32", None, Some("JET-9"), None),
        )
        .unwrap();
    assert_eq!(stm.topic, "JET-9/update/command");
    let payload: Value = serde_json::from_slice(&stm.payload).unwrap();
    assert_eq!(
        payload["relay"],
        json!({ "via": "JET-9", "bus": "can", "target": "DEV-1", "chunk_size": 1024 })
    );
    let bad_config = registry.build_command(
        "stm32",
        r#"{"chunk_size": 1}"#,
        &command_request("stm32", None, None, None),
    );
    assert!(matches!(bad_config, Err(PluginError::Refused { .. })));

    let jet = registry
        .build_command(
            "jetson",
            "{}",
            &command_request(
                "jetson",
                Some("jetson-orin-nx"),
                None,
                Some("jetson-orin-nx"),
            ),
        )
        .unwrap();
    let payload: Value = serde_json::from_slice(&jet.payload).unwrap();
    assert_eq!(payload["ab"]["target_slot"], "inactive");

    // Statuses: a gateway may name its child; garbage is refused.
    let parsed = registry
        .parse_status(
            "stm32",
            "{}",
            "JET-9",
            br#"{"message_id":"m-1","state":"flashing","device_id":"DEV-1","execution_id":77,"attempt":3}"#,
        )
        .unwrap();
    let report = &parsed.report;
    assert_eq!(
        (
            report.device_id.as_str(),
            report.state.as_str(),
            report.execution_id,
            parsed.attempt
        ),
        ("DEV-1", "flashing", Some(77), Some(3))
    );
    for garbage in [
        &b"{"[..],
        br#"{"message_id":"m","state":"teleporting"}"#,
        &[0xFF; 100_000][..],
    ] {
        assert!(matches!(
            registry.parse_status("esp32", "{}", "DEV-1", garbage),
            Err(PluginError::Refused { .. })
        ));
    }
    assert!(matches!(
        registry.parse_status("avr", "{}", "DEV-1", b"{}"),
        Err(PluginError::NoFamily(_))
    ));
}

#[test]
fn batches_take_one_instance_and_a_poisonous_item_fails_alone() {
    let registry = PluginRegistry::new(Metrics::new().unwrap(), Limits::default()).unwrap();
    let plugin = registry
        .load(
            &fixture("poison_device_plugin.wasm"),
            PluginSource::Uploaded,
        )
        .unwrap();
    assert!(plugin.takes_batches());
    registry.admit(plugin).unwrap();
    let view = || registry.view(&registry.get("device-poison").unwrap());
    let status = |n: u32, state: &str| {
        format!(r#"{{"message_id":"m{n}","device_id":"DEV-{n}","state":"{state}","attempt":1}}"#)
            .into_bytes()
    };
    let (one, two, poison) = (
        status(1, "init"),
        status(2, "done"),
        b"{\"device_id\":\"DEV-3\",\"state\":\"poison\"}".to_vec(),
    );

    // Healthy statuses: one call, one fresh instance, for the whole batch.
    let calls = view().calls;
    let parsed = registry.parse_statuses("poison", "{}", &[("DEV-1", &one), ("DEV-2", &two)]);
    assert_eq!(view().calls, calls + 1);
    let parsed: Vec<_> = parsed.into_iter().map(Result::unwrap).collect();
    assert_eq!(parsed[0].report.device_id, "DEV-1");
    assert_eq!(parsed[1].report.message_id, "m2");
    assert_eq!(parsed[1].attempt, Some(1));

    // One poisonous status traps the batch; parsed again one by one, it
    // fails alone and the others are answered, in order.
    let parsed = registry.parse_statuses(
        "poison",
        "{}",
        &[("DEV-1", &one), ("DEV-3", &poison), ("DEV-2", &two)],
    );
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[0].as_ref().unwrap().report.device_id, "DEV-1");
    assert!(
        matches!(&parsed[1], Err(PluginError::Failed { .. })),
        "{:?}",
        parsed[1]
    );
    assert_eq!(parsed[2].as_ref().unwrap().report.device_id, "DEV-2");
    assert_eq!(view().traps, 2, "the batch and the poisonous status");

    // Commands likewise.
    let mut poisoned = command_request("poison", None, None, None);
    poisoned.device.id = "DEV-POISON".into();
    let healthy = command_request("poison", None, None, None);
    let calls = view().calls;
    let built = registry.build_commands("poison", "{}", &[healthy.clone(), healthy.clone()]);
    assert_eq!(view().calls, calls + 1);
    assert!(built.iter().all(Result::is_ok));
    let built = registry.build_commands("poison", "{}", &[healthy.clone(), poisoned, healthy]);
    assert_eq!(built[0].as_ref().unwrap().topic, "DEV-1/update/command");
    assert!(matches!(&built[1], Err(PluginError::Failed { .. })));
    assert!(built[2].is_ok());
    assert_eq!(view().traps, 4);
    // Failures in a row never reached the limit: healthy calls came between.
    assert_eq!(view().state, "enabled");
}

/// A registry as one replica holds it, with the component `bytes` loaded.
fn replica_with(bytes: &[u8]) -> PluginRegistry {
    let registry = PluginRegistry::new(Metrics::new().unwrap(), Limits::default()).unwrap();
    let plugin = registry.load(bytes, PluginSource::Uploaded).unwrap();
    registry.admit(plugin).unwrap();
    registry
}

/// The value of `name=` in a probe's readings (`wall_ms=0 monotonic_ns=0 …`).
fn reading(readings: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    readings
        .split(' ')
        .find_map(|f| f.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {readings}"))
        .to_owned()
}

/// What a probe answered `validate-config` with: its readings.
fn validated(registry: &PluginRegistry, plugin: &str, config: &str) -> String {
    match registry.validate_rollout_config(plugin, config) {
        Err(PluginError::Refused { reason, .. }) => reason,
        other => panic!("{other:?}"),
    }
}

/// What a probe plugin on two replicas answers `validate-config` with
/// (`configs.0`), after checking it: the call returns at once though the
/// probe sleeps 30 s (a wait on the sealed clock is over at once); it
/// reads the Unix epoch on clocks that do not move; it reads the same
/// again and on the other replica; and with other inputs (`configs.1`)
/// each of the `random` readings differs.
fn sealed_at_rest(
    (one, two): (&PluginRegistry, &PluginRegistry),
    plugin: &str,
    configs: (&str, &str),
    random: &[&str],
) -> String {
    let started = Instant::now();
    let first = validated(one, plugin, configs.0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for name in ["wall_ms", "monotonic_ns", "elapsed_ns"] {
        assert_eq!(reading(&first, name), "0", "{first}");
    }
    assert_eq!(validated(one, plugin, configs.0), first);
    assert_eq!(validated(two, plugin, configs.0), first);
    let other = validated(one, plugin, configs.1);
    for name in random {
        assert_ne!(reading(&other, name), reading(&first, name), "{name}");
    }
    first
}

/// A plugin is sealed: the WASI clocks answer the call's logical time and
/// never move, the random interfaces a stream seeded by the call's inputs;
/// the same call answers the same on every replica.
#[test]
fn plugins_see_their_calls_time_and_chance_seeded_by_its_inputs() {
    let hostile = fixture("hostile_plugin.wasm");
    let (one, two) = (replica_with(&hostile), replica_with(&hostile));
    let config = r#"{"mode": "probe"}"#;
    let first = sealed_at_rest(
        (&one, &two),
        "hostile",
        (config, r#"{"mode": "probe", "other": 1}"#),
        &["random", "insecure", "seed", "hash"],
    );
    // Each random interface its own stream.
    assert_ne!(reading(&first, "random"), reading(&first, "insecure"));

    // `evaluate` lives at its snapshot's time.
    let at = |now: u64| Snapshot {
        now,
        job_started_at: 1_765_000_000_000,
        batches: vec![],
    };
    let evaluated = |registry: &PluginRegistry, snapshot: &Snapshot| match registry
        .evaluate("hostile", config, snapshot)
        .unwrap()
    {
        Decision::Pause(reason) => reason,
        other => panic!("{other:?}"),
    };
    let now = evaluated(&one, &at(1_765_000_000_123));
    assert_eq!(reading(&now, "wall_ms"), "1765000000123");
    assert_eq!(reading(&now, "monotonic_ns"), "1765000000123000000");
    assert_eq!(reading(&now, "elapsed_ns"), "0");
    assert_eq!(evaluated(&two, &at(1_765_000_000_123)), now);
    let later = evaluated(&one, &at(1_765_000_000_124));
    assert_ne!(reading(&later, "random"), reading(&now, "random"));
}

/// Python's clocks and entropy (`time`, `os.urandom`, `uuid`) are the
/// call's too: the same readings on two replicas, the snapshot's time in
/// `evaluate`.
#[test]
fn a_python_plugin_is_sealed_too() {
    let bytes = example("python_probe.wasm");
    let (one, two) = (replica_with(&bytes), replica_with(&bytes));
    sealed_at_rest(
        (&one, &two),
        "python-probe",
        ("{}", "{ }"),
        &["urandom", "random", "uuid"],
    );
    let snapshot = Snapshot {
        now: 1_765_000_000_123,
        job_started_at: 1_765_000_000_000,
        batches: vec![],
    };
    let evaluated = |registry: &PluginRegistry| match registry
        .evaluate("python-probe", "{}", &snapshot)
        .unwrap()
    {
        Decision::Pause(reason) => reason,
        other => panic!("{other:?}"),
    };
    let started = Instant::now();
    let now = evaluated(&one);
    eprintln!("a Python evaluate call: {:?}", started.elapsed());
    assert_eq!(reading(&now, "wall_ms"), "1765000000123");
    assert_eq!(evaluated(&two), now);
}

/// The Python example strategy (`examples/rollout-python`, componentize-py)
/// runs a real job: waves of 3, then 9, then the 18 devices left.
#[tokio::test]
async fn a_python_strategy_runs_a_job() {
    strategy_runs_a_job(
        "rollout_waves.wasm",
        "rollout-waves",
        json!({ "growth": 0.5 }),
        "'growth'",
        json!({ "first": 3, "growth": 3, "soak_secs": 0 }),
        &[3, 9, 18],
    )
    .await;
}

/// The JavaScript example strategy (`examples/rollout-js`,
/// componentize-js) runs a real job: steps of 4, then 10, then the 16
/// devices left.
#[tokio::test]
async fn a_javascript_strategy_runs_a_job() {
    strategy_runs_a_job(
        "rollout_steps.wasm",
        "rollout-steps",
        json!({ "steps": [0] }),
        "'steps'",
        json!({ "steps": [4, 10] }),
        &[4, 10, 16],
    )
    .await;
}

/// Uploads the example component `file` (plugin `name`) over the API; a
/// job with `bad` configuration is refused with `refusal` in its detail;
/// a job with `config` over 30 simulated devices completes in batches of
/// `sizes`.
async fn strategy_runs_a_job(
    file: &str,
    name: &str,
    bad: Value,
    refusal: &str,
    config: Value,
    sizes: &[i64],
) {
    use crate::pipeline::{create_job, sim_options, spawn_pipeline, wait_for};
    let (app, prefix) = spawn_pipeline().await;
    let uploaded = upload_plugin(&app, example(file)).await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let view: Value = uploaded.json().await.unwrap();
    assert_eq!(view["name"], name, "{view}");
    let sim = rollway::sim::Simulator::start(sim_options(&app, &prefix, 30, &["esp32"]))
        .await
        .unwrap();
    let firmware = app.upload_esp32("2.0.0").await;
    let refused = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware["id"], "targets": { "filter": { "tags": { "fleet": "simulated" } } },
                     "rollout": { "plugin": name, "config": bad } }),
        )
        .await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        problem["detail"].as_str().unwrap().contains(refusal),
        "{problem}"
    );
    let job = create_job(&app, &firmware, json!({ "plugin": name, "config": config })).await;
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed", "paused", "cancelled"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    let planned: Vec<i64> = view["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["total"].as_i64().unwrap())
        .collect();
    assert_eq!(planned, sizes, "{view}");
    assert_eq!(view["counts"]["done"], 30, "{view}");
    let labels = [("plugin", name), ("function", "evaluate")];
    let calls = metric(&app, "plugin_call_duration_seconds_count", &labels).await;
    let seconds = metric(&app, "plugin_call_duration_seconds_sum", &labels).await;
    assert!(calls >= sizes.len() as f64, "{calls} evaluations");
    eprintln!(
        "{name}: {calls} evaluations, {:.1} ms each on average",
        seconds * 1000.0 / calls
    );
    sim.stop().await;
}

#[test]
fn rollout_percent_plans_and_decides_through_the_sandbox() {
    let registry =
        PluginRegistry::with_builtins(Metrics::new().unwrap(), Limits::default()).unwrap();
    let config = r#"{"batches": [10, 50, 100], "success_threshold": 90}"#;
    assert_eq!(
        registry.plan("rollout-percent", config, 1000).unwrap(),
        [100, 400, 500]
    );
    let batch = |group: u32, total: u32, succeeded: u32, started: bool| BatchCounts {
        group,
        total,
        pending: if started { 0 } else { total },
        in_flight: if started { total - succeeded } else { 0 },
        succeeded,
        failed: 0,
        timed_out: 0,
        cancelled: 0,
        started_at: started.then_some(1_000),
    };
    let snapshot = |batches| Snapshot {
        now: 5_000,
        job_started_at: 1_000,
        batches,
    };
    let decide = |batches| {
        registry
            .evaluate("rollout-percent", config, &snapshot(batches))
            .unwrap()
    };
    assert!(matches!(
        decide(vec![batch(0, 100, 0, false), batch(1, 400, 0, false)]),
        Decision::StartNextBatch
    ));
    assert!(matches!(
        decide(vec![batch(0, 100, 50, true), batch(1, 400, 0, false)]),
        Decision::Wait(_)
    ));
    assert!(matches!(
        decide(vec![batch(0, 100, 95, true), batch(1, 400, 0, false)]),
        Decision::StartNextBatch
    ));
    let mut failing = batch(0, 100, 50, true);
    failing.failed = 20;
    failing.in_flight = 30;
    assert!(
        matches!(decide(vec![failing, batch(1, 400, 0, false)]), Decision::Abort(r) if r.contains("20.0%"))
    );
}

//! The operator dashboard: its embedded assets, and an operator's session in
//! a real browser (headless Chromium driven by `tests/browser/dashboard.mjs`)
//! against a host rolling out to a simulated fleet.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use rollway::sim::Simulator;
use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app, temp_dir};
use crate::images;
use crate::pipeline::{sim_options, spawn_pipeline, wait_for};

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/app.js"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from the internet"
    );

    let script = app
        .client
        .get(app.url("/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = script.headers()["etag"].clone();
    let cached = app
        .client
        .get(app.url("/assets/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    let missing = app
        .client
        .get(app.url("/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
}

/// Where screenshots are kept: `ROLLWAY_TEST_ARTIFACTS` (the test script
/// sets it) or a temporary directory.
fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("ROLLWAY_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp_dir("artifacts"));
    std::fs::create_dir_all(&dir).expect("creating the artifacts directory");
    dir
}

#[tokio::test]
async fn an_operator_rolls_out_from_the_dashboard_in_a_browser() {
    const DEVICES: u32 = 12;
    let (app, prefix) = spawn_pipeline().await;
    let mut options = sim_options(&app, &prefix, DEVICES, &["esp32"]);
    // Slow enough that the operator can pause the job while it runs.
    options.step = Duration::from_millis(300);
    let sim = Simulator::start(options).await.unwrap();
    let operator = app.token("operator").await;
    let viewer = app.token("viewer").await;
    let artifacts = artifacts_dir();
    let firmware = artifacts.join("brake-ecu-2.0.0.bin");
    std::fs::write(&firmware, images::esp32(images::ESP32S3, "2.0.0", 300_000)).unwrap();
    let plugin = artifacts.join("template_rollout.wasm");
    std::fs::write(&plugin, crate::plugins::fixture("template_rollout.wasm")).unwrap();

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/browser/dashboard.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .current_dir(root.join("tests/browser"))
        .env("ROLLWAY_URL", format!("{}/", app.base))
        .env("ROLLWAY_ADMIN_TOKEN", &app.admin_token)
        .env("ROLLWAY_OPERATOR_TOKEN", &operator)
        .env("ROLLWAY_VIEWER_TOKEN", &viewer)
        .env("ROLLWAY_FIRMWARE", &firmware)
        .env("ROLLWAY_FIRMWARE_VERSION", "2.0.0")
        .env("ROLLWAY_SIM_DEVICES", DEVICES.to_string())
        .env("ROLLWAY_ARTIFACTS", &artifacts)
        .env("ROLLWAY_PLUGIN", &plugin)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser test did not finish within 5 minutes")
        .expect("running node (the test script installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let screenshot =
        std::fs::metadata(artifacts.join("job-page.png")).expect("the job page screenshot is kept");
    assert!(screenshot.len() > 10_000);
    println!("screenshot: {}", artifacts.join("job-page.png").display());

    // What the browser saw is what the server holds.
    let jobs: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    let statuses: Vec<&str> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["status"].as_str().unwrap())
        .collect();
    // Newest first: the scheduled job the operator cancelled, then the rollout.
    assert_eq!(statuses, ["cancelled", "completed"]);
    let job = jobs["items"][1]["id"]
        .as_str()
        .expect("the job created in the browser");
    let view = wait_for(&app, job, &["completed"], Duration::from_secs(10)).await;
    assert_eq!(view["counts"]["done"], DEVICES);
    let truth = sim.truth.snapshot();
    assert!(
        truth
            .values()
            .all(|t| t.state == "done" && t.version.as_deref() == Some("2.0.0"))
    );
    sim.stop().await;
}

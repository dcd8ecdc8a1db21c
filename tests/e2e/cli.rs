//! The operator commands (`rollway firmware`, `jobs`, `devices`) run as the
//! real binary against a host, as an operator runs them from a shell.

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::helpers::{TestApp, spawn_app, temp_dir};
use crate::images;
use rollway::demo::pseudo_random_bytes;

/// What one run of the binary printed, and whether it succeeded.
pub(crate) struct Run {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Stdout as JSON, after checking that the run succeeded.
    pub(crate) fn json(&self) -> Value {
        assert!(
            self.success,
            "rollway failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Stderr, after checking that the run failed.
    fn failure(&self) -> &str {
        assert!(
            !self.success,
            "rollway succeeded:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stderr
    }
}

/// Runs `rollway ARGS` (without the caller's ROLLWAY_API / ROLLWAY_TOKEN).
async fn rollway<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(env!("CARGO_BIN_EXE_rollway"))
            .args(args)
            .env_remove("ROLLWAY_API")
            .env_remove("ROLLWAY_TOKEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("rollway did not finish within 120 s")
    .expect("running rollway");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `rollway ARGS --api <the app> --token <token>`.
async fn rollway_as(app: &TestApp, token: &str, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--api", app.base.as_str(), "--token", token]);
    rollway(all).await
}

/// `rollway ARGS` with the app's admin token.
pub(crate) async fn operator(app: &TestApp, args: &[&str]) -> Run {
    rollway_as(app, &app.admin_token, args).await
}

#[tokio::test]
async fn firmware_upload_streams_the_file_and_reports_refusals() {
    let app = spawn_app().await;
    let dir = temp_dir("cli-firmware");
    let image = images::esp32(images::ESP32S3, "1.2.3", 40_000);
    let file = dir.join("app.bin");
    std::fs::write(&file, &image).unwrap();
    let file = file.to_str().unwrap();

    let record = operator(
        &app,
        &[
            "firmware",
            "upload",
            file,
            "--family",
            "esp32",
            "--version",
            "1.2.3",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(record["sha256"], hex::encode(Sha256::digest(&image)));
    assert_eq!(record["size"], image.len());
    assert_eq!(record["family"], "esp32");
    assert_eq!(record["version"], "1.2.3");
    let id = record["id"].as_str().expect("a firmware id");

    let listed = operator(&app, &["firmware", "list", "--family", "esp32", "--json"])
        .await
        .json();
    assert_eq!(listed["items"][0]["id"], id);
    let table = operator(&app, &["firmware", "list"]).await;
    assert!(
        table.success && table.stdout.contains(id) && table.stdout.contains("1.2.3"),
        "{}{}",
        table.stdout,
        table.stderr
    );

    let again = operator(
        &app,
        &[
            "firmware",
            "upload",
            file,
            "--family",
            "esp32",
            "--version",
            "1.2.3",
        ],
    )
    .await;
    let stderr = again.failure();
    assert!(
        stderr.contains("409 Conflict") && stderr.contains("already exists"),
        "{stderr}"
    );

    let junk = dir.join("junk.bin");
    let mut bytes = pseudo_random_bytes(20_000, 11);
    bytes[0] = 0;
    std::fs::write(&junk, &bytes).unwrap();
    let refused = operator(
        &app,
        &[
            "firmware",
            "upload",
            junk.to_str().unwrap(),
            "--family",
            "esp32",
            "--version",
            "2.0.0",
        ],
    )
    .await;
    let stderr = refused.failure();
    assert!(
        stderr.contains("422") && stderr.contains("not an ESP-IDF application image"),
        "{stderr}"
    );

    let wrong_token = rollway_as(
        &app,
        "rw_not_a_real_token",
        &[
            "firmware",
            "upload",
            file,
            "--family",
            "esp32",
            "--version",
            "1.2.4",
        ],
    )
    .await;
    let stderr = wrong_token.failure();
    assert!(
        stderr.contains("401") && stderr.contains("token was refused"),
        "{stderr}"
    );

    // Nothing was stored by the refused uploads.
    let listed = operator(&app, &["firmware", "list", "--json"]).await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
}

#[tokio::test]
async fn an_absent_host_or_token_is_named() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let unreachable = rollway(["devices", "list", "--api", api.as_str(), "--token", "rw_x"]).await;
    let stderr = unreachable.failure();
    assert!(
        stderr.contains("cannot reach the Rollway API") && stderr.contains(&api),
        "{stderr}"
    );

    let no_token = rollway(["jobs", "list", "--api", api.as_str()]).await;
    let stderr = no_token.failure();
    assert!(stderr.contains("no API token"), "{stderr}");
}

#[tokio::test]
async fn jobs_are_created_shown_and_steered() {
    let app = spawn_app().await;
    app.register(json!([
        { "id": "CLI-ESP-A", "family": "esp32", "model": "esp32s3" },
        { "id": "CLI-ESP-B", "family": "esp32", "model": "esp32s3" },
    ]))
    .await;
    let firmware = app.upload_esp32("1.4.0").await;
    let firmware = firmware["id"].as_str().unwrap();

    // Devices and a filter at once are refused before anything is sent.
    let both = operator(
        &app,
        &[
            "jobs",
            "create",
            "--firmware",
            firmware,
            "--device",
            "CLI-ESP-A",
            "--family",
            "esp32",
        ],
    )
    .await;
    both.failure();

    // A start far ahead keeps the job scheduled: the scheduler leaves it
    // alone, and without a broker nothing is dispatched anyway.
    let job = operator(
        &app,
        &[
            "jobs",
            "create",
            "--firmware",
            firmware,
            "--device",
            "CLI-ESP-A",
            "--device",
            "CLI-ESP-B",
            "--name",
            "cli test",
            "--start",
            "2099-01-01T00:00:00Z",
            "--window",
            "fri-mon 22:00-05:00",
            "--window",
            "weekdays 12:00-12:30",
            "--time-zone",
            "Europe/Moscow",
            "--json",
        ],
    )
    .await
    .json();
    let id = job["id"].as_str().expect("a job id").to_owned();
    assert_eq!(
        job["windows"],
        json!({ "time_zone": "Europe/Moscow", "times": [
            { "days": ["mon", "fri", "sat", "sun"], "from": "22:00:00", "to": "05:00:00" },
            { "days": ["mon", "tue", "wed", "thu", "fri"], "from": "12:00:00", "to": "12:30:00" },
        ] }),
        "{job}"
    );
    assert!(job["window_open"].is_boolean(), "{job}");
    assert_eq!(job["status"], "scheduled");
    assert_eq!(job["kind"], "scheduled");
    assert_eq!(job["name"], "cli test");
    assert_eq!(job["total"], 2);

    let shown = operator(&app, &["jobs", "show", id.as_str(), "--json"])
        .await
        .json();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["total"], 2);
    assert_eq!(shown["counts"]["queued"], 2);
    assert_eq!(shown["counts"]["done"], 0);

    let summary = operator(&app, &["jobs", "show", id.as_str()]).await;
    assert!(
        summary.success && summary.stdout.contains(&id) && summary.stdout.contains("queued 2"),
        "{}{}",
        summary.stdout,
        summary.stderr
    );

    let listed = operator(&app, &["jobs", "list", "--status", "scheduled", "--json"])
        .await
        .json();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    let pause = operator(&app, &["jobs", "pause", id.as_str()]).await;
    let stderr = pause.failure();
    assert!(
        stderr.contains("409") && stderr.contains("cannot pause the job"),
        "{stderr}"
    );

    let cancelled = operator(&app, &["jobs", "cancel", id.as_str(), "--json"])
        .await
        .json();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["counts"]["cancelled"], 2);
    assert_eq!(cancelled["counts"]["queued"], 0);

    // Watching a job that ended cancelled prints it and fails.
    let watched = operator(&app, &["jobs", "show", id.as_str(), "--watch", "--json"]).await;
    let stderr = watched.failure().to_owned();
    let last: Value =
        serde_json::from_str(&watched.stdout).unwrap_or_else(|e| panic!("{e}: {}", watched.stdout));
    assert_eq!(last["status"], "cancelled");
    assert!(stderr.contains("ended cancelled"), "{stderr}");
}

#[tokio::test]
async fn devices_are_listed_with_filters() {
    let app = spawn_app().await;
    app.register(json!([
        { "id": "CLI-JET-1", "family": "jetson" },
        { "id": "CLI-ESP-A", "family": "esp32", "tags": { "site": "north" } },
        { "id": "CLI-ESP-B", "family": "esp32", "tags": { "site": "south" } },
        { "id": "CLI-STM-1", "family": "stm32", "gateway_id": "CLI-JET-1" },
    ]))
    .await;
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_owned))
            .collect()
    };

    let esp32 = operator(&app, &["devices", "list", "--family", "esp32", "--json"])
        .await
        .json();
    assert_eq!(ids(&esp32), ["CLI-ESP-A", "CLI-ESP-B"]);

    let north = operator(&app, &["devices", "list", "--tag", "site:north", "--json"])
        .await
        .json();
    assert_eq!(ids(&north), ["CLI-ESP-A"]);

    let behind = operator(
        &app,
        &["devices", "list", "--gateway", "CLI-JET-1", "--json"],
    )
    .await
    .json();
    assert_eq!(ids(&behind), ["CLI-STM-1"]);

    let first = operator(&app, &["devices", "list", "--limit", "1", "--json"])
        .await
        .json();
    assert_eq!(ids(&first), ["CLI-ESP-A"]);
    assert!(first["next_cursor"].is_string(), "{first}");

    let table = operator(&app, &["devices", "list", "--q", "CLI-ESP"]).await;
    assert!(
        table.success
            && table.stdout.contains("CLI-ESP-A")
            && table.stdout.contains("site=north")
            && !table.stdout.contains("CLI-JET-1"),
        "{}{}",
        table.stdout,
        table.stderr
    );
}

#[tokio::test]
async fn plugins_are_listed_and_configured() {
    let app = spawn_app().await;
    let listed = operator(&app, &["plugin", "list"]).await;
    assert!(listed.success, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("device-stm32") && listed.stdout.contains("SETTINGS"),
        "{}",
        listed.stdout
    );

    let unset = operator(&app, &["plugin", "config", "device-stm32", "--json"])
        .await
        .json();
    assert_eq!(unset["version"], 0, "{unset}");
    let set = operator(
        &app,
        &[
            "plugin",
            "config",
            "device-stm32",
            "--set",
            r#"{"bus":"can-fd"}"#,
            "--expected-version",
            "0",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(
        (set["version"].clone(), set["config"].clone()),
        (json!(1), json!({ "bus": "can-fd" }))
    );
    // A plain run prints the settings in force, and who set them.
    let shown = operator(&app, &["plugin", "config", "device-stm32"]).await;
    assert!(shown.success, "{}", shown.stderr);
    assert!(
        shown.stderr.contains("version 1, set by token:bootstrap"),
        "{}",
        shown.stderr
    );
    assert_eq!(
        serde_json::from_str::<Value>(&shown.stdout).unwrap(),
        json!({ "bus": "can-fd" })
    );
    // Refusals are the API's: the schema's words, a stale version.
    let refused = operator(
        &app,
        &[
            "plugin",
            "config",
            "device-stm32",
            "--set",
            r#"{"chunk_size":4}"#,
        ],
    )
    .await;
    assert!(
        refused.failure().contains("minimum of 8"),
        "{}",
        refused.stderr
    );
    let stale = operator(
        &app,
        &[
            "plugin",
            "config",
            "device-stm32",
            "--set",
            "{}",
            "--expected-version",
            "0",
        ],
    )
    .await;
    assert!(
        stale.failure().contains("version 1, not 0"),
        "{}",
        stale.stderr
    );
    let history = operator(&app, &["plugin", "config", "device-stm32", "--history"]).await;
    assert!(
        history.success && history.stdout.contains(r#"{"bus":"can-fd"}"#),
        "{}",
        history.stdout
    );
    let versions = operator(&app, &["plugin", "versions", "rollout-percent"]).await;
    assert!(
        versions.success && versions.stdout.contains("no uploaded version"),
        "{}",
        versions.stdout
    );
    let shipped = operator(&app, &["plugin", "delete", "rollout-percent"]).await;
    assert!(
        shipped.failure().contains("disable it instead"),
        "{}",
        shipped.stderr
    );
    let viewer = app.token("viewer").await;
    let forbidden = rollway_as(
        &app,
        &viewer,
        &["plugin", "config", "device-stm32", "--set", "{}"],
    )
    .await;
    assert!(
        forbidden.failure().contains("admin"),
        "{}",
        forbidden.stderr
    );
}

#[tokio::test]
async fn help_shows_examples() {
    let cases: [&[&str]; 11] = [
        &["plugin", "config", "--help"],
        &["--help"],
        &["jobs", "create", "--help"],
        &["jobs", "show", "--help"],
        &["jobs", "pause", "--help"],
        &["firmware", "upload", "--help"],
        &["devices", "list", "--help"],
        &["up", "--help"],
        &["sim", "--help"],
        &["plugin", "check", "--help"],
        &["token", "create", "--help"],
    ];
    for args in cases {
        let run = rollway(args).await;
        assert!(run.success, "{args:?}: {}", run.stderr);
        assert!(run.stdout.contains("Example"), "{args:?}: {}", run.stdout);
    }
    let top = rollway(["--help"]).await;
    assert!(
        top.stdout.contains("rollway firmware upload") && top.stdout.contains("jobs"),
        "{}",
        top.stdout
    );
}

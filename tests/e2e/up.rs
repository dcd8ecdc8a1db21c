//! `rollway up` from nothing: a private PostgreSQL is initialised, the host
//! serves, and Ctrl-C stops both.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::temp_dir;

#[tokio::test]
async fn up_starts_a_private_database_and_stops_it_on_ctrl_c() {
    let base = temp_dir("up");
    let data_dir = base.join("data");
    for round in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rollway"))
            .arg("up")
            .env_remove("DATABASE_URL")
            .env_remove("ROLLWAY_BOOTSTRAP_TOKEN")
            .env_remove("ROLLWAY_STORE")
            .env("ROLLWAY_DATA_DIR", &data_dir)
            .env("ROLLWAY_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning rollway up");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut token) = (None, None);
        let read = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(u) = line.trim().strip_prefix("URL:") {
                    url = Some(u.trim().to_owned());
                }
                if let Some(t) = line.trim().strip_prefix("Admin token:") {
                    token = Some(t.trim().to_owned());
                }
                if url.is_some() && token.is_some() {
                    break;
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "rollway up did not print its URL and token in time"
        );
        let (url, token) = (url.unwrap(), token.unwrap());
        let client = reqwest::Client::new();
        let health = client.get(format!("{url}healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let ready = client.get(format!("{url}readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let devices = client
            .post(format!("{url}api/v1/devices"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "id": format!("UP-{round}"), "family": "jetson" }))
            .send()
            .await
            .unwrap();
        assert_eq!(devices.status(), StatusCode::CREATED);
        // The second start reuses the cluster: the first round's device is there.
        let listed: serde_json::Value = client
            .get(format!("{url}api/v1/devices"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), round + 1);

        let pid = child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("rollway up did not stop");
        assert!(exit.unwrap().success());
        let pidfile = data_dir.join("postgres/postmaster.pid");
        assert!(!pidfile.exists(), "the private PostgreSQL is still running");
    }
    std::fs::remove_dir_all(base).ok();
}

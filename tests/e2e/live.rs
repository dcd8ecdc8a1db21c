//! `/api/v1/events/stream`: published state changes as Server-Sent Events,
//! on any replica, with replay after a reconnection and per-job filtering.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, metric, spawn_app, spawn_app_with};

/// One parsed SSE message.
#[derive(Debug, Clone)]
struct Message {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// Reads SSE messages off a streaming response, as the documented client
/// does: after a `resync` (events may have been missed) it reconnects with
/// the last event id it saw, and the stream replays what followed.
struct EventReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    request: reqwest::RequestBuilder,
    last_id: Option<i64>,
}

impl EventReader {
    async fn open(app: &TestApp, token: &str, query: &str, last_event_id: Option<i64>) -> Self {
        let request = app.request_as(token, Method::GET, &format!("/api/v1/events/stream{query}"));
        let mut reader = Self {
            stream: futures::stream::empty().boxed(),
            buffer: String::new(),
            request,
            last_id: last_event_id,
        };
        reader.connect().await;
        reader
    }

    async fn connect(&mut self) {
        let mut request = self.request.try_clone().expect("a request without a body");
        if let Some(id) = self.last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("opening the stream");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        self.stream = response.bytes_stream().boxed();
        self.buffer.clear();
    }

    /// The next message that is not a keep-alive comment, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(Message { id, event, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(_) | Err(_) => return None,
            }
        }
    }

    /// Messages until one satisfies `done`, failing after `timeout`. A
    /// `resync` is kept in what was seen, and the stream is reopened from
    /// the last event seen (from the start when none was).
    async fn until(&mut self, timeout: Duration, done: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.next(left).await.unwrap_or_else(|| {
                panic!("the awaited event did not come within {timeout:?}; saw {seen:#?}")
            });
            let stop = done(&message);
            if message.id.is_some() {
                self.last_id = message.id;
            }
            let resync = message.event == "resync";
            seen.push(message);
            if stop {
                return seen;
            }
            if resync {
                self.last_id = Some(self.last_id.unwrap_or(0));
                self.connect().await;
            }
        }
    }
}

async fn create_job(app: &TestApp, firmware_id: &Value, device: &str) -> String {
    let response = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware_id, "targets": { "devices": [device] } }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_stream_carries_every_change_in_order_and_replays_what_was_missed() {
    let app = spawn_app().await;
    let viewer = app.token("viewer").await;
    let mut stream = EventReader::open(&app, &viewer, "", None).await;
    assert!(metric(&app, "live_stream_clients", &[]).await >= 1.0);

    app.register(json!([{ "id": "LIVE-1", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let firmware = app.upload_esp32("3.1.0").await;
    let job = create_job(&app, &firmware["id"], "LIVE-1").await;

    let seen = stream
        .until(Duration::from_secs(20), |m| {
            m.event == "job.created" && m.data["aggregate_id"] == job.as_str()
        })
        .await;
    let uploaded = seen
        .iter()
        .find(|m| m.event == "firmware.uploaded")
        .expect("firmware.uploaded before job.created");
    assert_eq!(uploaded.data["payload"]["version"], "3.1.0");
    assert_eq!(uploaded.data["type"], "firmware.uploaded");
    let created = seen.last().unwrap();
    assert_eq!(created.data["payload"]["job_id"], job.as_str());
    assert_eq!(created.data["seq"].as_i64(), created.id);
    let ids: Vec<i64> = seen.iter().filter_map(|m| m.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "seqs rise: {ids:?}");

    // A client that saw the upload and reconnects gets what followed it.
    let mut again = EventReader::open(&app, &viewer, "", uploaded.id).await;
    let replayed = again
        .until(Duration::from_secs(20), |m| m.event == "job.created")
        .await;
    assert!(replayed.iter().all(|m| m.id > uploaded.id), "{replayed:#?}");
    assert_eq!(replayed.last().unwrap().data["aggregate_id"], job.as_str());
}

#[tokio::test]
async fn a_job_stream_carries_only_that_job() {
    let app = spawn_app().await;
    app.register(json!([
        { "id": "LIVE-A", "family": "esp32", "model": "esp32s3" },
        { "id": "LIVE-B", "family": "esp32", "model": "esp32s3" },
    ]))
    .await;
    let firmware = app.upload_esp32("3.2.0").await;
    let a = create_job(&app, &firmware["id"], "LIVE-A").await;
    let mut stream = EventReader::open(&app, &app.admin_token, &format!("?job_id={a}"), None).await;
    let b = create_job(&app, &firmware["id"], "LIVE-B").await;
    let cancelled = app
        .request(Method::POST, &format!("/api/v1/jobs/{b}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled = app
        .request(Method::POST, &format!("/api/v1/jobs/{a}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    // The job's change and its execution's, in one transaction.
    let is_job_cancel =
        |m: &Message| m.event == "job.status.changed" && m.data["payload"]["to"] == "cancelled";
    let is_execution_cancel = |m: &Message| {
        m.event == "execution.status.changed" && m.data["payload"]["to"] == "cancelled"
    };
    let mut seen = stream.until(Duration::from_secs(20), is_job_cancel).await;
    if !seen.iter().any(is_execution_cancel) {
        seen.extend(
            stream
                .until(Duration::from_secs(20), is_execution_cancel)
                .await,
        );
    }
    // A `resync` (the replica's listener connecting after this client
    // subscribed) is about no job and may come at any time.
    for message in seen.iter().filter(|m| m.event != "resync") {
        let about = message.data["payload"]["job_id"]
            .as_str()
            .or(message.data["aggregate_id"].as_str());
        assert_eq!(about, Some(a.as_str()), "{message:#?}");
    }
    let execution = seen.iter().find(|m| is_execution_cancel(m)).unwrap();
    assert_eq!(execution.data["aggregate_id"], "LIVE-A");
}

#[tokio::test]
async fn every_replica_streams_the_changes_of_all() {
    let first = spawn_app().await;
    let database_url = first.database_url.clone();
    let second = spawn_app_with(move |s| {
        s.database_url = Some(database_url.into());
        s.bootstrap_token = None;
    })
    .await;
    // The second replica's clients use a token of the shared database.
    let mut stream = EventReader::open(&second, &first.admin_token, "", None).await;
    let mut own = EventReader::open(&first, &first.admin_token, "", None).await;
    first
        .register(json!([{ "id": "LIVE-R", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let firmware = first.upload_esp32("3.3.0").await;
    let job = create_job(&first, &firmware["id"], "LIVE-R").await;
    for reader in [&mut stream, &mut own] {
        reader
            .until(Duration::from_secs(30), |m| {
                m.event == "job.created" && m.data["aggregate_id"] == job.as_str()
            })
            .await;
    }
}

#[tokio::test]
async fn the_stream_refuses_bad_requests() {
    let app = spawn_app().await;
    let anonymous = app
        .client
        .get(app.url("/api/v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let bad_id = app
        .request(Method::GET, "/api/v1/events/stream")
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_problem(bad_id, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let bad_type = app
        .get("/api/v1/events/stream?aggregate_type=weather")
        .await;
    assert_problem(bad_type, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let bad_job = app.get("/api/v1/events/stream?job_id=42").await;
    assert_problem(bad_job, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
}

//! Hostile input and slow clients: what an outside abuse test tries. No
//! single message, of any size or content, stops ingestion; strings
//! PostgreSQL refuses are refused at the edge; unauthorised callers learn
//! nothing of the input rules; slow clients are cut; event streams end
//! with their token.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{TestApp, assert_problem, metric, spawn_app_with, temp_dir};
use crate::pipeline::{ManualDevice, one_device_job, spawn_pipeline, test_client_options};
use crate::procs::mosquitto_with;

/// A broker without a packet limit: the worst case the host must survive.
async fn unlimited_broker(dir: &std::path::Path) -> crate::procs::Service {
    mosquitto_with(dir, |port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
    })
    .await
}

fn options_for(port: u16, role: &str) -> MqttOptions {
    let mut options = MqttOptions::new(
        format!("{role}-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
    options
}

/// Publishes at QoS 1 and waits until the broker acknowledged everything.
async fn publish_all(options: MqttOptions, topic: &str, payloads: Vec<Vec<u8>>, per_second: u32) {
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let total = payloads.len();
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(error) => panic!("publisher lost its broker: {error}"),
            }
        }
    });
    let started = Instant::now();
    for (i, payload) in payloads.into_iter().enumerate() {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        if per_second > 0 {
            let due = Duration::from_secs_f64(i as f64 / f64::from(per_second));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(120), driver)
        .await
        .expect("the broker acknowledged every message")
        .unwrap();
}

async fn ready(app: &TestApp) -> (StatusCode, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn one_oversized_status_does_not_stop_ingestion() {
    let dir = temp_dir("oversized");
    let broker = unlimited_broker(&dir).await;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let topic_prefix = prefix.clone();
    let app = spawn_app_with(move |s| {
        s.mqtt_url = Some(url.into());
        s.topic_prefix = topic_prefix;
    })
    .await;
    app.register(json!([{ "id": "VIN-BIG", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let firmware = app.upload_esp32("8.0.0").await;
    let mut device =
        ManualDevice::connect_with(options_for(broker.port, "device"), &prefix, "VIN-BIG").await;
    let job = one_device_job(&app, &firmware, "VIN-BIG", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;

    // 1 MiB at QoS 1 on the device's own status topic: more than the
    // host reads of a status, less than what the broker lets through.
    publish_all(
        options_for(broker.port, "attacker"),
        &format!("{prefix}/VIN-BIG/update/status"),
        vec![vec![b'x'; 1024 * 1024]],
        0,
    )
    .await;
    crate::pipeline::wait_results(&app, "oversized", 1.0).await;
    assert_eq!(
        metric(
            &app,
            "status_messages_total",
            &[("result", "oversized"), ("reason", "size")]
        )
        .await,
        1.0
    );
    // The link stayed up, and the device's own statuses still apply.
    let (status, body) = ready(&app).await;
    assert_eq!(
        (status, &body["mqtt"]),
        (StatusCode::OK, &json!("ok")),
        "{body}"
    );
    device
        .finish(&app, &job, &command["execution_id"], 1, "big")
        .await;
    // Acked: the broker does not send it again on a reconnection.
    assert_eq!(
        metric(&app, "status_messages_total", &[("result", "oversized")]).await,
        1.0
    );
}

#[tokio::test]
async fn readiness_follows_the_mqtt_link() {
    let dir = temp_dir("ready-mqtt");
    let mut broker = unlimited_broker(&dir).await;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let app = spawn_app_with(move |s| s.mqtt_url = Some(url.into())).await;
    let wait_ready = |want: StatusCode| {
        let app = &app;
        async move {
            let started = Instant::now();
            loop {
                let (status, body) = ready(app).await;
                if status == want {
                    return body;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "/readyz still {status}: {body}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let body = wait_ready(StatusCode::OK).await;
    assert_eq!(body["mqtt"], "ok", "{body}");
    broker.stop().await;
    let body = wait_ready(StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body["detail"].as_str().unwrap().contains("MQTT"), "{body}");
    broker.start();
    broker.wait_ready(Duration::from_secs(10)).await;
    wait_ready(StatusCode::OK).await;
}

#[tokio::test]
async fn nul_statuses_at_speed_are_refused_on_the_fast_path() {
    let (app, prefix) = spawn_pipeline().await;
    app.register(json!([{ "id": "VIN-NUL", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let firmware = app.upload_esp32("8.1.0").await;
    let mut device = ManualDevice::connect(&prefix, "VIN-NUL").await;
    let job = one_device_job(&app, &firmware, "VIN-NUL", json!({})).await;
    let command = device.next_command(Duration::from_secs(20)).await;
    let dropped_before = metric(&app, "mqtt_broker_messages_dropped", &[]).await;

    // 15,000 statuses at 3,000 a second, each with a string PostgreSQL
    // refuses: a NUL in the error text, or a control character in the id.
    let n = 15_000;
    let payloads = (0..n)
        .map(|i| {
            let status = if i % 2 == 0 {
                json!({ "message_id": format!("nul-{i}"), "state": "error", "error": "bad\u{0}news" })
            } else {
                json!({ "message_id": format!("nul-\u{0}{i}"), "state": "init" })
            };
            serde_json::to_vec(&status).unwrap()
        })
        .collect();
    publish_all(
        test_client_options("flood"),
        &format!("{prefix}/VIN-NUL/update/status"),
        payloads,
        3_000,
    )
    .await;
    crate::pipeline::wait_results(&app, "malformed", f64::from(n)).await;
    assert_eq!(
        metric(&app, "status_messages_total", &[("reason", "bad_text")]).await,
        f64::from(n)
    );
    // Refused before the database: no batch fell back to the slow path,
    // and the broker dropped nothing.
    assert_eq!(metric(&app, "status_batch_fallbacks_total", &[]).await, 0.0);
    assert_eq!(
        metric(&app, "mqtt_broker_messages_dropped", &[]).await,
        dropped_before
    );
    // Nothing of it reached the execution; the device's real statuses do.
    device
        .finish(&app, &job, &command["execution_id"], 1, "real")
        .await;
}

/// Every place of the REST API that takes text, given a NUL character.
#[tokio::test]
async fn nul_characters_in_rest_input_are_refused_not_failed() {
    let app = spawn_app_with(|_| {}).await;
    app.register(json!([{ "id": "VIN-1", "family": "esp32" }]))
        .await;
    let firmware = app.upload_esp32("8.2.0").await;
    let fw = firmware["id"].as_str().unwrap().to_owned();
    let gets = [
        "/api/v1/devices/VIN%00".to_owned(),
        "/api/v1/devices/%00/executions".to_owned(),
        "/api/v1/devices?family=%00".to_owned(),
        "/api/v1/devices?model=a%00".to_owned(),
        "/api/v1/devices?gateway_id=%00".to_owned(),
        "/api/v1/devices?firmware_version=%00".to_owned(),
        "/api/v1/devices?tags=site:%00".to_owned(),
        "/api/v1/devices?q=%00".to_owned(),
        "/api/v1/devices?cursor=%00".to_owned(),
        "/api/v1/devices?cursor=VIN%00".to_owned(),
        "/api/v1/firmware?family=%00".to_owned(),
        "/api/v1/firmware?version=%00".to_owned(),
        "/api/v1/jobs?status=%00".to_owned(),
        "/api/v1/audit?target_type=%00".to_owned(),
        "/api/v1/audit?target_id=%00".to_owned(),
        "/api/v1/signing-keys/%00".to_owned(),
    ];
    for path in &gets {
        let response = app.get(path).await;
        let status = response.status();
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::NOT_FOUND,
            "GET {path}: {status} {}",
            response.text().await.unwrap()
        );
    }
    let bodies = [
        (
            Method::POST,
            "/api/v1/devices".to_owned(),
            json!({ "id": "VIN-2", "family": "esp32", "model": "s3\u{0}" }),
        ),
        (
            Method::POST,
            "/api/v1/devices".to_owned(),
            json!({ "id": "VIN-2", "family": "esp32", "tags": { "site": "n\u{0}" } }),
        ),
        (
            Method::POST,
            "/api/v1/devices".to_owned(),
            json!({ "id": "VIN-2", "family": "esp32", "tags": { "s\u{0}": "n" } }),
        ),
        (
            Method::PATCH,
            "/api/v1/devices/VIN-1".to_owned(),
            json!({ "tags": { "site": "\u{0}" } }),
        ),
        (
            Method::POST,
            "/api/v1/tokens".to_owned(),
            json!({ "name": "ci\u{0}", "role": "viewer" }),
        ),
        (
            Method::POST,
            "/api/v1/jobs".to_owned(),
            json!({ "firmware_id": fw, "name": "a\u{0}", "targets": { "devices": ["VIN-1"] } }),
        ),
        (
            Method::POST,
            "/api/v1/jobs".to_owned(),
            json!({ "firmware_id": fw, "targets": { "filter": { "tags": { "site": "\u{0}" } } } }),
        ),
        (
            Method::POST,
            "/api/v1/jobs".to_owned(),
            json!({ "firmware_id": fw, "targets": { "devices": ["VIN\u{0}"] } }),
        ),
        (
            Method::POST,
            format!("/api/v1/firmware/{fw}/allow-downgrade"),
            json!({ "reason": "field fix\u{0}" }),
        ),
    ];
    for (method, path, body) in bodies {
        let response = app
            .request(method.clone(), &path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem =
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
        assert!(
            problem["detail"].as_str().unwrap().contains("NUL"),
            "{method} {path}: {problem}"
        );
    }
    assert_eq!(
        metric(&app, "api_errors_total", &[("type", "internal")]).await,
        0.0
    );
}

#[tokio::test]
async fn callers_are_authorised_before_their_input_is_read() {
    let app = spawn_app_with(|_| {}).await;
    let viewer = app.token("viewer").await;
    // A viewer's invalid registration: refused for the role, not the body.
    let refused = app
        .request_as(&viewer, Method::POST, "/api/v1/devices")
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .unwrap();
    assert_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let refused = app
        .request_as(&viewer, Method::POST, "/api/v1/tokens")
        .json(&json!({ "role": null }))
        .send()
        .await
        .unwrap();
    assert_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
    // No token at all: 401 whatever the body or the path.
    let refused = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(refused, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let refused = app
        .client
        .get(app.url("/api/v1/jobs/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_problem(refused, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // Scheme names are case-insensitive.
    for scheme in ["BEARER", "bearer", "Bearer"] {
        let response = app
            .client
            .get(app.url("/api/v1/me"))
            .header("authorization", format!("{scheme} {}", app.admin_token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    // Well-formed JSON of the wrong shape is invalid input (422), and
    // only malformed JSON is a bad request (400).
    let invalid = app
        .post_json("/api/v1/tokens", &json!({ "name": "x", "role": null }))
        .await;
    assert_problem(invalid, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let malformed = app
        .request(Method::POST, "/api/v1/tokens")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, StatusCode::BAD_REQUEST, "bad-request").await;
}

/// Reads an event stream until it ends; panics if it does not within
/// `within`.
async fn read_until_closed(response: reqwest::Response, within: Duration) -> String {
    let mut text = String::new();
    let mut response = response;
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) | Ok(Err(_)) => return text,
            Err(_) => panic!("the stream is still open after {within:?}: {text}"),
        }
    }
}

#[tokio::test]
async fn event_streams_end_with_their_token() {
    let app = spawn_app_with(|_| {}).await;
    let viewer = app.token("viewer").await;
    let stream = app
        .request_as(&viewer, Method::GET, "/api/v1/events/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let tokens: Value = app.get("/api/v1/tokens").await.json().await.unwrap();
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "viewer-test")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = app
        .request(Method::DELETE, &format!("/api/v1/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let text = read_until_closed(stream, Duration::from_secs(10)).await;
    assert!(text.contains("event: closed"), "{text}");

    // A token that expires while its stream is open.
    let created: Value = app
        .post_json(
            "/api/v1/tokens",
            &json!({ "name": "short", "role": "viewer", "expires_in_secs": 2 }),
        )
        .await
        .json()
        .await
        .unwrap();
    let stream = app
        .request_as(
            created["secret"].as_str().unwrap(),
            Method::GET,
            "/api/v1/events/stream",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let text = read_until_closed(stream, Duration::from_secs(10)).await;
    assert!(text.contains("event: closed"), "{text}");
}

#[tokio::test]
async fn slow_clients_are_cut() {
    let app = spawn_app_with(|s| {
        s.http_header_timeout = Duration::from_secs(1);
        s.http_body_timeout = Duration::from_secs(1);
    })
    .await;
    let address = app.base.trim_start_matches("http://").to_owned();

    // Headers that never end: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "half-sent headers kept the connection open");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body that stalls: 408, and the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        app.admin_token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "a stalled body kept the connection open");
    let answer = String::from_utf8_lossy(&buffer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Many at once do not keep the server from answering others.
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut closed = 0;
    for mut stream in held {
        let mut buffer = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "half-sent requests still open after 3 s");
}

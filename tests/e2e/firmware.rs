use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, assert_problem, metric, s3_store_url, spawn_app, spawn_app_with};
use crate::images;

async fn download(app: &TestApp, id: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.request(Method::GET, &format!("/api/v1/firmware/{id}/download"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Upload, full and ranged downloads, a resumed download and conditional
/// requests, byte-exact, against whichever store the app uses.
async fn round_trip(app: &TestApp) {
    let image = images::esp32(images::ESP32S3, "1.4.0", 3 * 1024 * 1024 + 123);
    let record = app.upload("esp32", "1.4.0", image.clone()).await;
    let sha = hex::encode(Sha256::digest(&image));
    assert_eq!(record["sha256"], sha);
    assert_eq!(record["size"], image.len());
    assert_eq!(record["family"], "esp32");
    assert_eq!(record["version"], "1.4.0");
    let id = record["id"].as_str().unwrap();

    let full = download(app, id, &[]).await;
    assert_eq!(full.status(), StatusCode::OK);
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.bytes().await.unwrap().as_ref(), image.as_slice());

    let part = download(app, id, &[("range", "bytes=100-1099")]).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-1099/{}", image.len())
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &image[100..1100]);

    // A device that lost its connection after 1 MiB resumes from there.
    let cut = 1024 * 1024;
    let mut resumed = image[..cut].to_vec();
    let rest = download(
        app,
        id,
        &[("range", &format!("bytes={cut}-")), ("if-range", &etag)],
    )
    .await;
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    resumed.extend_from_slice(&rest.bytes().await.unwrap());
    assert_eq!(resumed, image);

    let suffix = download(app, id, &[("range", "bytes=-10")]).await;
    assert_eq!(
        suffix.bytes().await.unwrap().as_ref(),
        &image[image.len() - 10..]
    );

    // A stale validator gets the whole, current image.
    let stale = download(app, id, &[("range", "bytes=0-9"), ("if-range", "\"0000\"")]).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.unwrap().len(), image.len());

    let cached = download(app, id, &[("if-none-match", &etag)]).await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    let beyond = download(app, id, &[("range", &format!("bytes={}-", image.len()))]).await;
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{}", image.len())
    );
    assert_problem(
        beyond,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range-not-satisfiable",
    )
    .await;
}

#[tokio::test]
async fn firmware_round_trip_on_the_file_store() {
    let app = spawn_app().await;
    round_trip(&app).await;
    let url: Value = app
        .get(&format!(
            "/api/v1/firmware/{}/url",
            first_firmware(&app).await
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(url["presigned"], false);
}

async fn first_firmware(app: &TestApp) -> String {
    let list: Value = app.get("/api/v1/firmware").await.json().await.unwrap();
    list["items"][0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn firmware_round_trip_on_s3_with_presigned_urls() {
    let store = s3_store_url();
    let app = spawn_app_with(|s| s.store = store).await;
    assert!(app.store_url.starts_with("s3://"));
    round_trip(&app).await;

    let id = first_firmware(&app).await;
    let record: Value = app
        .get(&format!("/api/v1/firmware/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let url: Value = app
        .get(&format!("/api/v1/firmware/{id}/url?ttl_secs=120"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(url["presigned"], true);
    let presigned = url["url"].as_str().unwrap();
    // The presigned URL needs no token and serves ranges too.
    let plain = reqwest::Client::new();
    let whole = plain.get(presigned).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    let bytes = whole.bytes().await.unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        record["sha256"].as_str().unwrap()
    );
    let ranged = plain
        .get(presigned)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &bytes[10..20]);
    // The S3 server checks signatures: a tampered URL is refused.
    let tampered = presigned.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert!(
        plain
            .get(&tampered)
            .send()
            .await
            .unwrap()
            .status()
            .is_client_error()
    );
}

#[tokio::test]
async fn upload_refusals() {
    let app = spawn_app_with(|s| s.max_firmware_bytes = 64 * 1024).await;
    let too_big = app
        .post_bytes(
            "/api/v1/firmware?family=stm32&version=2.0.0",
            vec![0u8; 64 * 1024 + 1],
        )
        .await;
    assert_problem(too_big, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    // Streamed without a length, the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![1u8; 8 * 1024])).collect();
    let streamed = app
        .post_bytes(
            "/api/v1/firmware?family=stm32&version=2.0.1",
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_problem(streamed, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;

    let empty = app
        .request(Method::POST, "/api/v1/firmware?family=stm32&version=2.0.0")
        .send()
        .await
        .unwrap();
    assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let no_version = app
        .post_bytes("/api/v1/firmware?family=stm32", images::stm32(1024, 1))
        .await;
    let body = assert_problem(no_version, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["errors"][0]["field"], "version");
    let bad_family = app
        .post_bytes("/api/v1/firmware?family=z80&version=1", vec![1u8; 10])
        .await;
    assert_problem(bad_family, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let no_family = app
        .post_bytes("/api/v1/firmware?version=1", vec![1u8; 10])
        .await;
    assert_problem(no_family, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    app.upload("stm32", "2.0.0", images::stm32(1000, 7)).await;
    let duplicate = app
        .post_bytes("/api/v1/firmware?family=stm32&version=2.0.0", vec![8u8; 10])
        .await;
    assert_problem(duplicate, StatusCode::CONFLICT, "conflict").await;

    let viewer = app.token("viewer").await;
    let forbidden = app
        .request_as(
            &viewer,
            Method::POST,
            "/api/v1/firmware?family=stm32&version=3",
        )
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM firmware")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert!(metric(&app, "api_errors_total", &[("type", "payload-too-large")]).await >= 2.0);
    // Aborted uploads leave no temporary objects behind.
    let store_dir = app.store_url.strip_prefix("file://").unwrap();
    let uploads = std::path::Path::new(store_dir).join("uploads");
    let leftovers = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        leftovers,
        0,
        "temporary uploads left in {}",
        uploads.display()
    );
}

#[tokio::test]
async fn list_read_and_delete_firmware() {
    let app = spawn_app().await;
    let a = app.upload("stm32", "3.0.0", images::stm32(700, 5)).await;
    let b = app.upload("stm32", "3.0.1", images::stm32(700, 5)).await;
    app.upload("esp32", "5.0", images::esp32(images::ESP32C3, "5.0", 1000))
        .await;
    assert_eq!(a["sha256"], b["sha256"]);

    let stm: Value = app
        .get("/api/v1/firmware?family=stm32")
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<&str> = stm["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["3.0.1", "3.0.0"]);
    assert!(stm["items"][0].get("storage_key").is_none());

    let missing = app
        .get(&format!("/api/v1/firmware/{}", uuid::Uuid::new_v4()))
        .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
    let not_uuid = app.get("/api/v1/firmware/abc").await;
    assert_problem(not_uuid, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    // Both records share one blob: deleting one keeps the other downloadable.
    let a_id = a["id"].as_str().unwrap();
    let b_id = b["id"].as_str().unwrap();
    assert_eq!(
        app.request(Method::DELETE, &format!("/api/v1/firmware/{a_id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let still = download(&app, b_id, &[]).await;
    assert_eq!(still.status(), StatusCode::OK);
    assert_eq!(still.bytes().await.unwrap().len(), 700);

    // Firmware a job uses cannot be deleted.
    app.register(json!({ "id": "J1", "family": "stm32" })).await;
    let job = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": b_id, "targets": { "devices": ["J1"] } }),
        )
        .await;
    assert_eq!(job.status(), StatusCode::CREATED);
    let in_use = app
        .request(Method::DELETE, &format!("/api/v1/firmware/{b_id}"))
        .send()
        .await
        .unwrap();
    assert_problem(in_use, StatusCode::CONFLICT, "conflict").await;

    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM event_outbox WHERE aggregate_type = 'firmware' ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "firmware.uploaded",
            "firmware.uploaded",
            "firmware.uploaded",
            "firmware.deleted"
        ]
    );
}

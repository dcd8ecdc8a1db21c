use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn register_then_update_one_device() {
    let app = spawn_app().await;
    let device = json!({ "id": "VIN123", "family": "esp32", "model": "esp32s3", "gateway_id": null, "tags": { "site": "north" } });
    let created = app.post_json("/api/v1/devices", &device).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["id"], "VIN123");
    assert_eq!(body["model"], "esp32s3");
    assert_eq!(body["tags"]["site"], "north");

    let again = app
        .post_json(
            "/api/v1/devices",
            &json!({ "id": "VIN123", "family": "esp32", "tags": { "site": "south" } }),
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let read: Value = app
        .get("/api/v1/devices/VIN123")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["tags"]["site"], "south");
    assert_eq!(read["model"], Value::Null);
}

#[tokio::test]
async fn bulk_registration_with_gateways() {
    let app = spawn_app().await;
    // Children listed before their gateway: checked at commit.
    let mut devices = vec![];
    for i in 0..50 {
        devices.push(json!({ "id": format!("MCU-{i:03}"), "family": if i % 2 == 0 { "stm32" } else { "esp32" }, "gateway_id": "JET-1", "tags": { "site": "quarry-7" } }));
    }
    devices.push(json!({ "id": "JET-1", "family": "jetson", "model": "orin-nx" }));
    let response = app
        .post_json("/api/v1/devices", &Value::Array(devices))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let counts: Value = response.json().await.unwrap();
    assert_eq!(counts, json!({ "created": 51, "updated": 0 }));

    let behind: Value = app
        .get("/api/v1/devices?gateway_id=JET-1&limit=1000")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(behind["items"].as_array().unwrap().len(), 50);
    let stm: Value = app
        .get("/api/v1/devices?family=stm32&tags=site:quarry-7")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stm["items"].as_array().unwrap().len(), 25);
    let none: Value = app
        .get("/api/v1/devices?tags=site:elsewhere")
        .await
        .json()
        .await
        .unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());
    let prefix: Value = app
        .get("/api/v1/devices?q=MCU-01")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(prefix["items"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn cursor_pagination_visits_every_device_once() {
    let app = spawn_app().await;
    let devices: Vec<Value> = (0..237)
        .map(|i| json!({ "id": format!("D{i:04}"), "family": "esp32" }))
        .collect();
    app.register(Value::Array(devices)).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/devices?limit=50&cursor={c}"),
            None => "/api/v1/devices?limit=50".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..237).map(|i| format!("D{i:04}")).collect();
    assert_eq!(seen, expected);
    let bad = app.get("/api/v1/devices?cursor=%%%").await;
    assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let big = app.get("/api/v1/devices?limit=5000").await;
    assert_problem(big, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
}

#[tokio::test]
async fn invalid_registrations_name_their_fields() {
    let app = spawn_app().await;
    let bad_family = app
        .post_json("/api/v1/devices", &json!({ "id": "X1", "family": "avr" }))
        .await;
    let body = assert_problem(bad_family, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["errors"][0]["field"], "family");

    let bad_id = app
        .post_json(
            "/api/v1/devices",
            &json!([{ "id": "ok-1", "family": "esp32" }, { "id": "fleet/+/x", "family": "esp32" }]),
        )
        .await;
    let body = assert_problem(bad_id, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["errors"][0]["field"], "[1].id");

    let twice = app
        .post_json(
            "/api/v1/devices",
            &json!([{ "id": "A", "family": "esp32" }, { "id": "A", "family": "esp32" }]),
        )
        .await;
    assert_problem(twice, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    let unknown_field = app
        .post_json(
            "/api/v1/devices",
            &json!({ "id": "A", "family": "esp32", "colour": "red" }),
        )
        .await;
    let body = assert_problem(
        unknown_field,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("colour"),
        "{body}"
    );

    let unknown_gateway = app
        .post_json(
            "/api/v1/devices",
            &json!({ "id": "A", "family": "stm32", "gateway_id": "GHOST" }),
        )
        .await;
    let body = assert_problem(
        unknown_gateway,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "gateway_id");

    let own_gateway = app
        .post_json(
            "/api/v1/devices",
            &json!({ "id": "A", "family": "stm32", "gateway_id": "A" }),
        )
        .await;
    assert_problem(own_gateway, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    app.register(json!([{ "id": "GW", "family": "jetson" }, { "id": "MCU", "family": "stm32", "gateway_id": "GW" }])).await;
    let nested = app
        .post_json(
            "/api/v1/devices",
            &json!({ "id": "DEEP", "family": "stm32", "gateway_id": "MCU" }),
        )
        .await;
    let body = assert_problem(nested, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("behind a gateway"),
        "{body}"
    );
    let gateway_behind = app
        .post_json(
            "/api/v1/devices",
            &json!({ "id": "GW", "family": "jetson", "gateway_id": "MCU" }),
        )
        .await;
    assert_problem(
        gateway_behind,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;

    let malformed = app
        .request(Method::POST, "/api/v1/devices")
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, StatusCode::BAD_REQUEST, "bad-request").await;
    let not_json = app
        .request(Method::POST, "/api/v1/devices")
        .body("id=A")
        .send()
        .await
        .unwrap();
    assert_problem(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported").await;
    let empty = app.post_json("/api/v1/devices", &json!([])).await;
    assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({ "id": format!("N{i}"), "family": "esp32" }))
        .collect();
    let too_many = app
        .post_json("/api/v1/devices", &Value::Array(too_many))
        .await;
    assert_problem(too_many, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    // A JSON body above the API's 16 MiB limit is refused before parsing.
    let huge = format!("[\"{}\"]", "x".repeat(17 * 1024 * 1024));
    let huge = app
        .request(Method::POST, "/api/v1/devices")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(huge, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;

    // Nothing of the refused requests was stored.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn patch_and_delete() {
    let app = spawn_app().await;
    app.register(json!([{ "id": "GW", "family": "jetson" }, { "id": "MCU", "family": "stm32", "gateway_id": "GW", "model": "f407" }])).await;
    let patched = app
        .request(Method::PATCH, "/api/v1/devices/MCU")
        .json(&json!({ "tags": { "truck": "T-42" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let body: Value = patched.json().await.unwrap();
    assert_eq!(body["tags"], json!({ "truck": "T-42" }));
    assert_eq!(body["model"], "f407");
    let cleared: Value = app
        .request(Method::PATCH, "/api/v1/devices/MCU")
        .json(&json!({ "model": null }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["model"], Value::Null);
    assert_eq!(cleared["tags"], json!({ "truck": "T-42" }));

    // An array is not a patch, though serde would read one field by field.
    let array = app
        .request(Method::PATCH, "/api/v1/devices/MCU")
        .json(&json!([null, null]))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(array, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert!(problem.to_string().contains("not an array"), "{problem}");
    let null_tags = app
        .request(Method::PATCH, "/api/v1/devices/MCU")
        .json(&json!({ "model": "f407", "tags": null }))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(null_tags, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(problem["errors"][0]["field"], "tags", "{problem}");
    // The document says what a 200 of a registration is: the device, or
    // the counts of a batch.
    let openapi = app.json("/api/v1/openapi.json").await;
    let registered = &openapi["paths"]["/api/v1/devices"]["post"]["responses"]["200"];
    assert!(
        registered.to_string().contains("Registered"),
        "{registered}"
    );
    assert!(
        openapi["components"]["schemas"]["Registered"]["oneOf"].is_array(),
        "{}",
        openapi["components"]["schemas"]["Registered"]
    );

    let missing = app
        .request(Method::PATCH, "/api/v1/devices/NOPE")
        .json(&json!({ "tags": {} }))
        .send()
        .await
        .unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;

    let gateway = app
        .request(Method::DELETE, "/api/v1/devices/GW")
        .send()
        .await
        .unwrap();
    let body = assert_problem(gateway, StatusCode::CONFLICT, "conflict").await;
    assert!(
        body["detail"].as_str().unwrap().contains("gateway"),
        "{body}"
    );
    assert_eq!(
        app.request(Method::DELETE, "/api/v1/devices/MCU")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.request(Method::DELETE, "/api/v1/devices/GW")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let gone = app.get("/api/v1/devices/GW").await;
    assert_problem(gone, StatusCode::NOT_FOUND, "not-found").await;
}

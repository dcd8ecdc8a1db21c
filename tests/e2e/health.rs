use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_problem, metric, spawn_app};

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    // The event backlog is reported, and does not make the host unready.
    assert_eq!(body["events"]["pending"], 0, "{body}");
    assert!(
        body["events"]["oldest_pending_seconds"].is_number(),
        "{body}"
    );
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = spawn_app().await;
    app.pool.close().await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_problem(ready, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

#[tokio::test]
async fn metrics_expose_the_names_operators_alert_on() {
    let app = spawn_app().await;
    // Produce one problem so the error counter has a sample.
    let unauthenticated = app
        .client
        .get(app.url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "update_requests_total",
        "download_duration_seconds",
        "outbox_pending_total",
        "outbox_oldest_pending_seconds",
        "outbox_errors_total",
        "event_processing_lag_seconds",
        "http_requests_total",
        "api_errors_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics"
        );
    }
    assert_eq!(
        metric(&app, "api_errors_total", &[("type", "unauthenticated")]).await,
        1.0
    );
    assert!(
        metric(
            &app,
            "http_requests_total",
            &[("route", "/api/v1/devices"), ("status", "401")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expect = [
        ("/api/v1/devices", "post"),
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{id}", "get"),
        ("/api/v1/devices/{id}", "patch"),
        ("/api/v1/devices/{id}", "delete"),
        ("/api/v1/firmware", "post"),
        ("/api/v1/firmware", "get"),
        ("/api/v1/firmware/{id}", "get"),
        ("/api/v1/firmware/{id}", "delete"),
        ("/api/v1/firmware/{id}/download", "get"),
        ("/api/v1/firmware/{id}/url", "get"),
        ("/api/v1/jobs", "post"),
        ("/api/v1/jobs", "get"),
        ("/api/v1/jobs/{id}", "get"),
        ("/api/v1/jobs/{id}/executions", "get"),
        ("/api/v1/jobs/{id}/pause", "post"),
        ("/api/v1/jobs/{id}/resume", "post"),
        ("/api/v1/jobs/{id}/cancel", "post"),
        ("/api/v1/executions/{id}", "get"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/tokens", "get"),
        ("/api/v1/tokens/{id}", "delete"),
        ("/api/v1/audit", "get"),
        ("/api/v1/signing-keys", "get"),
        ("/api/v1/signing-keys/rotate", "post"),
        ("/api/v1/signing-keys/{id}", "delete"),
        ("/api/v1/firmware/{id}/allow-downgrade", "post"),
        ("/api/v1/firmware/{id}/allow-downgrade", "delete"),
        ("/api/v1/events/dead-letter", "get"),
        ("/api/v1/events/dead-letter/{id}/replay", "post"),
        ("/api/v1/events/dead-letter/replay", "post"),
        ("/api/v1/plugins", "get"),
        ("/api/v1/plugins", "post"),
        ("/api/v1/plugins/{name}/enable", "post"),
        ("/api/v1/plugins/{name}/disable", "post"),
    ];
    for (path, method) in expect {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn unknown_routes_are_problems() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/nope").await;
    assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
}

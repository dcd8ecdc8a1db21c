use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let app = spawn_app().await;
    let none = app
        .client
        .get(app.url("/api/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        none.headers()["www-authenticate"],
        "Bearer realm=\"rollway\""
    );
    assert_problem(none, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let wrong = app
        .request_as("rw_not-a-token", Method::GET, "/api/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_problem(wrong, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let basic = app
        .client
        .get(app.url("/api/v1/jobs"))
        .basic_auth("admin", Some(&app.admin_token))
        .send()
        .await
        .unwrap();
    assert_problem(basic, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do() {
    let app = spawn_app().await;
    let viewer = app.token("viewer").await;
    let operator = app.token("operator").await;

    let listed = app
        .request_as(&viewer, Method::GET, "/api/v1/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let device = json!({ "id": "VIN1", "family": "esp32" });
    let refused = app
        .request_as(&viewer, Method::POST, "/api/v1/devices")
        .json(&device)
        .send()
        .await
        .unwrap();
    let body = assert_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(
        body["detail"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    let allowed = app
        .request_as(&operator, Method::POST, "/api/v1/devices")
        .json(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::CREATED);

    let token = app
        .request_as(&operator, Method::POST, "/api/v1/tokens")
        .json(&json!({ "name": "sneaky", "role": "admin" }))
        .send()
        .await
        .unwrap();
    assert_problem(token, StatusCode::FORBIDDEN, "forbidden").await;
    let audit = app
        .request_as(&operator, Method::GET, "/api/v1/audit")
        .send()
        .await
        .unwrap();
    assert_problem(audit, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn tokens_are_listed_without_secrets_revoked_and_expire() {
    let app = spawn_app().await;
    let created: Value = app
        .post_json(
            "/api/v1/tokens",
            &json!({ "name": "ci", "role": "operator" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("rw_"));
    let tokens = app.get("/api/v1/tokens").await.text().await.unwrap();
    assert!(tokens.contains("\"ci\"") && !tokens.contains(&secret));
    // Secrets are stored hashed.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE token_hash = convert_to($1, 'UTF8')",
    )
    .bind(&secret)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);

    let ok = app
        .request_as(&secret, Method::GET, "/api/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let id = created["id"].as_str().unwrap();
    let revoked = app
        .request(Method::DELETE, &format!("/api/v1/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let after = app
        .request_as(&secret, Method::GET, "/api/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_problem(after, StatusCode::UNAUTHORIZED, "unauthenticated").await;

    let short: Value = app
        .post_json(
            "/api/v1/tokens",
            &json!({ "name": "short", "role": "viewer", "expires_in_secs": 1 }),
        )
        .await
        .json()
        .await
        .unwrap();
    let short = short["secret"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let expired = app
        .request_as(&short, Method::GET, "/api/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_problem(expired, StatusCode::UNAUTHORIZED, "unauthenticated").await;

    let bad_role = app
        .post_json("/api/v1/tokens", &json!({ "name": "x", "role": "root" }))
        .await;
    assert_problem(bad_role, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let missing = app
        .request(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test]
async fn mutating_calls_are_audited() {
    let app = spawn_app().await;
    let operator = app.token("operator").await;
    let created = app
        .request_as(&operator, Method::POST, "/api/v1/devices")
        .json(&json!({ "id": "VIN-A", "family": "stm32" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let deleted = app
        .request_as(&operator, Method::DELETE, "/api/v1/devices/VIN-A")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let page: Value = app
        .get("/api/v1/audit?target_type=device&target_id=VIN-A")
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["device.delete", "device.register"]);
    assert_eq!(page["items"][0]["actor"], "token:operator-test");
    let all: Value = app.get("/api/v1/audit?limit=1").await.json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    assert!(all["next_cursor"].is_string());
}

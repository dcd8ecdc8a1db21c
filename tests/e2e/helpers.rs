//! `spawn_app` and friends.

use std::path::PathBuf;

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use rollway::Application;
use rollway::settings::{Settings, SettingsArgs};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Server URL of PostgreSQL with the right to create databases.
pub fn admin_database_url() -> String {
    std::env::var("ROLLWAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh, empty database; returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_database_url();
    let name = format!("rollway_test_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL for tests is not reachable; run the tests through scripts/test.sh");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("creating a test database");
    let mut url = url::Url::parse(&admin).expect("test database URL");
    url.set_path(&name);
    url.to_string()
}

/// Held by the tests that time a rollout under injected faults and by
/// the tests that build a project with cargo (every core for minutes), so
/// that they never run at once: starved of CPU by a compiler, a fault
/// test's waits would measure the machine, not Rollway.
pub static CORES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rollway-{label}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

pub struct TestApp {
    pub base: String,
    pub admin_token: String,
    pub client: Client,
    pub pool: PgPool,
    pub store_url: String,
    pub database_url: String,
}

/// Starts the host on a free port with a file store and a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like `spawn_app`, letting the test adjust the settings first.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let admin_token = format!("rw_test_{}", Uuid::new_v4().simple());
    let settings = test_settings(&admin_token, configure).await;
    let store_url = settings.store.clone();
    let database_url = secrecy::ExposeSecret::expose_secret(
        settings.database_url.as_ref().expect("a database URL"),
    )
    .to_owned();
    let app = Application::build(settings)
        .await
        .expect("building the app");
    let base = format!("http://{}", app.address());
    let pool = app.pool().clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        base,
        admin_token,
        client: Client::new(),
        pool,
        store_url,
        database_url,
    }
}

/// A test host's settings: a fresh database, a private store and data
/// directory, `admin_token` as the bootstrap token; then `configure`.
pub async fn test_settings(admin_token: &str, configure: impl FnOnce(&mut Settings)) -> Settings {
    let data_dir = temp_dir("data");
    let args = SettingsArgs {
        database_url: Some(fresh_database().await),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        store: Some(format!("file://{}", data_dir.join("store").display())),
        data_dir: Some(data_dir),
        bootstrap_token: Some(admin_token.to_owned()),
        db_pool_size: Some(16),
        // Its own MQTT session: test hosts share one broker.
        instance_id: Some(format!("test-{}", Uuid::new_v4().simple())),
        ..SettingsArgs::default()
    };
    let mut settings = Settings::load(&args).expect("test settings");
    configure(&mut settings);
    settings
}

/// The S3 store URL for tests, when the S3 server is configured.
pub fn s3_store_url() -> String {
    let bucket = std::env::var("ROLLWAY_TEST_S3_BUCKET")
        .expect("ROLLWAY_TEST_S3_BUCKET is not set; run the tests through scripts/test.sh");
    format!("s3://{bucket}/t{}", Uuid::new_v4().simple())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the admin token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_as(&self.admin_token, method, path)
    }

    pub fn request_as(&self, token: &str, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("request")
    }

    /// GETs `path` and returns the JSON answer.
    pub async fn json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON answer")
    }

    /// GETs `path` with `token` and returns the JSON answer.
    pub async fn json_as(&self, token: &str, path: &str) -> Value {
        self.request_as(token, Method::GET, path)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates a token with `role` and returns its secret.
    pub async fn token(&self, role: &str) -> String {
        let response = self
            .post_json(
                "/api/v1/tokens",
                &json!({ "name": format!("{role}-test"), "role": role }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["secret"].as_str().unwrap().to_owned()
    }

    pub async fn register(&self, devices: Value) {
        let response = self.post_json("/api/v1/devices", &devices).await;
        let status = response.status();
        assert!(
            status.is_success(),
            "registering devices: {status} {}",
            response.text().await.unwrap()
        );
    }

    /// POSTs raw bytes (firmware images, plugin components) with the admin token.
    pub async fn post_bytes(&self, path: &str, bytes: impl Into<reqwest::Body>) -> Response {
        self.request(Method::POST, path)
            .body(bytes)
            .send()
            .await
            .expect("request")
    }

    /// Uploads a valid ESP32-S3 image of `version` and returns the record.
    pub async fn upload_esp32(&self, version: &str) -> Value {
        let image = crate::images::esp32(crate::images::ESP32S3, version, 2048);
        self.upload("esp32", version, image).await
    }

    /// POSTs without a body (job and plugin actions) and returns the JSON answer.
    pub async fn act(&self, path: &str) -> Value {
        self.request(Method::POST, path)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON")
    }

    /// Uploads an image and returns the firmware record.
    pub async fn upload(&self, family: &str, version: &str, bytes: Vec<u8>) -> Value {
        let response = self
            .post_bytes(
                &format!("/api/v1/firmware?family={family}&version={version}"),
                bytes,
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

/// Asserts an RFC 9457 problem response and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode, type_code: &str) -> Value {
    let actual = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(actual, status, "{body}");
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(
        body["type"],
        format!("urn:rollway:problem:{type_code}"),
        "{body}"
    );
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

/// Reads one counter/gauge sample from `/metrics`, matching a label subset.
pub async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_at(&app.client, &app.url("/metrics"), name, labels).await
}

/// Like `metric`, from the `/metrics` at `url`: the sum of the samples of
/// `name` carrying `labels` (0 when there is none).
pub async fn metric_at(client: &Client, url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter(|line| {
            let rest = &line[name.len()..];
            rest.starts_with(' ') || rest.starts_with('{')
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

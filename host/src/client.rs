//! A small client of Rollway's operator REST API (`/api/v1`), used by the
//! operator commands of the `rollway` binary (`firmware`, `jobs`,
//! `devices`).
//!
//! Answers are JSON values, so that a command can print them as they came
//! (`--json`) or summarise them. A problem document (RFC 9457,
//! `application/problem+json`, see `api/error.rs`) becomes an [`ApiProblem`]
//! error that reads like the server's answer, e.g. `409 Conflict: esp32
//! firmware 1.2.3 already exists`; a server that cannot be reached is said
//! to be so, with the address that was tried.

use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

/// Where the operator commands look for the API unless told otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:8080";

/// How long an ordinary request (anything but an upload) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of the chunks a file upload is read and sent in.
const UPLOAD_CHUNK: usize = 64 * 1024;
/// Longest piece of a non-problem error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 300;

/// A client of one Rollway host, authenticated with one API token.
#[derive(Clone)]
pub struct ApiClient {
    /// Scheme, authority and any path prefix, without a trailing slash and
    /// without `/api/v1`, e.g. `http://127.0.0.1:8080`.
    base: String,
    token: String,
    http: reqwest::Client,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client of the host at `base` (`http://host:port`, optionally with a
    /// path prefix; a trailing `/api/v1` is accepted and ignored).
    pub fn new(base: &str, token: impl Into<String>) -> anyhow::Result<Self> {
        let base = normalize_base(base)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("rollway/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base,
            token: token.into(),
            http,
        })
    }

    /// The host's base URL as normalised by [`ApiClient::new`].
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of an API path such as `/jobs`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// `GET /api/v1{path}?{query}`.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let request = self
            .request(Method::GET, path)
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `POST /api/v1{path}` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self
            .request(Method::POST, path)
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `PUT /api/v1{path}` with a JSON body.
    pub async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self
            .request(Method::PUT, path)
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `DELETE /api/v1{path}`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.request(Method::DELETE, path).timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `POST /api/v1{path}` without a body (job actions).
    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.request(Method::POST, path).timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `POST /api/v1{path}?{query}` with `body` as raw bytes of exactly `len`
    /// bytes. The length is declared up front (`Content-Length`), so the
    /// server can refuse an over-large body before it is sent. No overall
    /// timeout: a large image on a slow link takes what it takes.
    pub async fn post_bytes(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: reqwest::Body,
        len: u64,
    ) -> anyhow::Result<Value> {
        let request = self
            .request(Method::POST, path)
            .query(query)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(body);
        self.send(request).await
    }

    /// Streams an open file of `len` bytes as the body of `POST
    /// /api/v1{path}?{query}`, in chunks; `on_chunk` is called with the size
    /// of each chunk as it is handed to the HTTP client.
    pub async fn post_file(
        &self,
        path: &str,
        query: &[(&str, String)],
        file: tokio::fs::File,
        len: u64,
        mut on_chunk: impl FnMut(usize) + Send + 'static,
    ) -> anyhow::Result<Value> {
        let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK).inspect(
            move |chunk: &std::io::Result<bytes::Bytes>| {
                if let Ok(bytes) = chunk {
                    on_chunk(bytes.len());
                }
            },
        );
        self.post_bytes(path, query, reqwest::Body::wrap_stream(stream), len)
            .await
    }

    /// Sends a request and reads its JSON answer; a non-2xx answer becomes
    /// an [`ApiProblem`], an empty 2xx answer `Value::Null`.
    async fn send(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let is_problem = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(ApiProblem::from_answer(status, is_problem, &body).into());
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{} answered {status} with a body that is not JSON",
                self.base
            )
        })
    }

    /// Explains a failure to talk to the server at all.
    fn transport_error(&self, error: reqwest::Error) -> anyhow::Error {
        let what = if error.is_connect() {
            format!(
                "cannot reach the Rollway API at {} (is the host running? set --api or ROLLWAY_API)",
                self.base
            )
        } else if error.is_timeout() {
            format!("the Rollway API at {} did not answer in time", self.base)
        } else {
            format!("talking to the Rollway API at {} failed", self.base)
        };
        anyhow::Error::new(error).context(what)
    }
}

/// `http://host:port[/prefix]` without a trailing slash or `/api/v1`.
fn normalize_base(raw: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(raw.trim())
        .with_context(|| format!("the API address '{raw}' is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("the API address '{raw}' must start with http:// or https://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("the API address '{raw}' names no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("the API address '{raw}' must not carry a query or fragment");
    }
    let text = url.as_str().trim_end_matches('/');
    let text = text.strip_suffix("/api/v1").unwrap_or(text);
    Ok(text.to_owned())
}

/// One field a validation problem names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemField {
    pub field: String,
    pub message: String,
}

/// A refusal from the API: the HTTP status and, when the server sent a
/// problem document, its contents.
#[derive(Debug, Clone)]
pub struct ApiProblem {
    pub status: StatusCode,
    /// The problem `type`, e.g. `urn:rollway:problem:conflict`.
    pub problem_type: Option<String>,
    pub title: Option<String>,
    /// The problem's `detail`, or the start of a body that was no problem
    /// document (e.g. from a proxy in front of the host).
    pub detail: Option<String>,
    /// The fields a validation problem names.
    pub errors: Vec<ProblemField>,
}

impl ApiProblem {
    /// Reads an error answer; `is_problem` tells whether it was labelled
    /// `application/problem+json` (a JSON body with a `title` is read as
    /// one too).
    pub fn from_answer(status: StatusCode, is_problem: bool, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<Value>(body)
            .ok()
            .filter(|v| v.is_object() && (is_problem || v.get("title").is_some()));
        let Some(doc) = parsed else {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let detail = (!text.is_empty()).then(|| {
                let mut quoted: String = text.chars().take(MAX_QUOTED_BODY).collect();
                if quoted.len() < text.len() {
                    quoted.push('…');
                }
                quoted
            });
            return Self {
                status,
                problem_type: None,
                title: None,
                detail,
                errors: Vec::new(),
            };
        };
        let text = |key: &str| {
            doc.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let errors = doc
            .get("errors")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|e| ProblemField {
                        field: e
                            .get("field")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned(),
                        message: e
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            status,
            problem_type: text("type"),
            title: text("title"),
            detail: text("detail"),
            errors,
        }
    }

    /// The stable code of a Rollway problem type (`conflict`, `validation`,
    /// …), when the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.problem_type
            .as_deref()
            .and_then(|t| t.strip_prefix("urn:rollway:problem:"))
    }
}

impl fmt::Display for ApiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status.as_u16())?;
        if let Some(reason) = self.status.canonical_reason() {
            write!(f, " {reason}")?;
        }
        if self.errors.is_empty() {
            if let Some(text) = self.detail.as_deref().or(self.title.as_deref()) {
                write!(f, ": {text}")?;
            }
        } else {
            write!(
                f,
                ": {} (",
                self.title.as_deref().unwrap_or("invalid input")
            )?;
            for (i, error) in self.errors.iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "field {}: {}", error.field, error.message)?;
            }
            f.write_str(")")?;
        }
        if self.status == StatusCode::UNAUTHORIZED {
            f.write_str("; the API token was refused (check --token or ROLLWAY_TOKEN)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiProblem {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() {
        for (raw, want) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/api/v1", "http://127.0.0.1:8080"),
            (
                "https://ota.example.com/rollway/",
                "https://ota.example.com/rollway",
            ),
        ] {
            assert_eq!(normalize_base(raw).unwrap(), want, "{raw}");
        }
        for bad in ["127.0.0.1:8080", "ftp://x", "http://x/?a=b", "not a url"] {
            assert!(normalize_base(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn problems_read_like_the_server_answer() {
        let body = br#"{"type":"urn:rollway:problem:conflict","title":"Conflict","status":409,"detail":"esp32 firmware 1.2.3 already exists"}"#;
        let problem = ApiProblem::from_answer(StatusCode::CONFLICT, true, body);
        assert_eq!(problem.code(), Some("conflict"));
        assert_eq!(
            problem.to_string(),
            "409 Conflict: esp32 firmware 1.2.3 already exists"
        );

        let body = br#"{"type":"urn:rollway:problem:validation","title":"Invalid input","status":422,
            "detail":"version: is required","errors":[{"field":"version","message":"is required"}]}"#;
        let problem = ApiProblem::from_answer(StatusCode::UNPROCESSABLE_ENTITY, true, body);
        assert_eq!(
            problem.to_string(),
            "422 Unprocessable Entity: Invalid input (field version: is required)"
        );

        let problem = ApiProblem::from_answer(StatusCode::UNAUTHORIZED, true, b"{}");
        assert!(problem.to_string().contains("token was refused"));

        let problem = ApiProblem::from_answer(StatusCode::BAD_GATEWAY, false, b"<html>oops</html>");
        assert_eq!(problem.to_string(), "502 Bad Gateway: <html>oops</html>");
        assert_eq!(problem.code(), None);
    }
}

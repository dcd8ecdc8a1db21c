//! The API's one error type, rendered once as RFC 9457 problem details
//! (`application/problem+json`) with a stable `type` per kind of problem.
//! Internal errors are logged with their cause and shown to the client only
//! as an opaque 500.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A field that failed validation and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path or query parameter of the offending value, e.g. `targets.devices[3]`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:rollway:problem:validation`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Present on validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid: {0}")]
    BadRequest(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("the request body stalled; send it without pauses")]
    RequestTimeout,
    #[error("role {have} may not {action}; {need} or higher is required")]
    Forbidden {
        have: crate::domain::Role,
        need: crate::domain::Role,
        action: String,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidTransition(String),
    /// The change would lower devices' security counter.
    #[error("{0}")]
    Rollback(String),
    #[error("payload exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("too many failed authentications from this address; try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A plugin trapped, timed out or answered nonsense.
    #[error("{0}")]
    PluginFailed(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// The stable problem type code; also the `type` label of `api_errors_total`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Validation(_) => "validation",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::RequestTimeout => "request-timeout",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::InvalidTransition(_) => "invalid-transition",
            ApiError::Rollback(_) => "rollback-refused",
            ApiError::PayloadTooLarge { .. } => "payload-too-large",
            ApiError::RangeNotSatisfiable { .. } => "range-not-satisfiable",
            ApiError::Unsupported(_) => "unsupported",
            ApiError::TooManyRequests { .. } => "too-many-requests",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::PluginFailed(_) => "plugin-failed",
            ApiError::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InvalidTransition(_) | ApiError::Rollback(_) => {
                StatusCode::CONFLICT
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PluginFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "Malformed request",
            ApiError::Validation(_) => "Invalid input",
            ApiError::Unauthenticated => "Authentication required",
            ApiError::RequestTimeout => "Request timeout",
            ApiError::Forbidden { .. } => "Not allowed",
            ApiError::NotFound(_) => "Not found",
            ApiError::Conflict(_) => "Conflict",
            ApiError::InvalidTransition(_) => "Invalid state transition",
            ApiError::Rollback(_) => "Rollback refused",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::RangeNotSatisfiable { .. } => "Range not satisfiable",
            ApiError::Unsupported(_) => "Unsupported media type",
            ApiError::TooManyRequests { .. } => "Too many requests",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::PluginFailed(_) => "Plugin failed",
            ApiError::Internal(_) => "Internal error",
        }
    }
}

/// Extension put on error responses so the metrics layer can count them by type.
#[derive(Clone, Copy)]
pub struct ProblemCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                "the server failed to handle the request; the incident was logged".to_owned()
            }
            ApiError::Validation(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        let code = self.code();
        let extra_header = match &self {
            ApiError::RangeNotSatisfiable { size } => Some((
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).ok(),
            )),
            ApiError::TooManyRequests { retry_after } => Some((
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after.to_string()).ok(),
            )),
            ApiError::Unauthenticated => Some((
                header::WWW_AUTHENTICATE,
                Some(HeaderValue::from_static("Bearer realm=\"rollway\"")),
            )),
            _ => None,
        };
        let problem = Problem {
            type_: format!("urn:rollway:problem:{code}"),
            title: self.title(),
            status: status.as_u16(),
            detail,
            errors: match self {
                ApiError::Validation(errors) => errors,
                _ => Vec::new(),
            },
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some((name, Some(value))) = extra_header {
            response.headers_mut().insert(name, value);
        }
        response.extensions_mut().insert(ProblemCode(code));
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => ApiError::Unavailable("database is busy".into()),
            other => ApiError::Internal(anyhow::Error::new(other).context("database")),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                // serde's message names the path of the offending field.
                ApiError::Validation(vec![FieldError::new("body", e.body_text())])
            }
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::Unsupported("expected Content-Type: application/json".into())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge {
                    limit: super::JSON_BODY_LIMIT as u64,
                }
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::validation("query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::validation("path", rejection.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A plugin's answer as an API error: refusals and unknown or disabled
    /// plugins are the caller's input problem (naming `field`); a plugin
    /// that failed is a 502.
    pub fn from_plugin(field: &str, error: crate::plugins::PluginError) -> Self {
        use crate::plugins::PluginError;
        match error {
            PluginError::Failed { .. } => ApiError::PluginFailed(error.to_string()),
            PluginError::Refused { plugin, reason } => {
                ApiError::validation(field, format!("refused by {plugin}: {reason}"))
            }
            other => ApiError::validation(field, other.to_string()),
        }
    }
}

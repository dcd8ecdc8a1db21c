//! Extractors whose rejections are problem documents, and the caller's
//! identity.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::{self, Principal};
use crate::domain::Role;

/// `axum::Json` with problem-document rejections.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` with problem-document rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` with problem-document rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The authenticated caller of an `/api/v1` route.
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses the call unless the caller's role is at least `need`.
    pub fn require(&self, need: Role, action: &'static str) -> Result<&Principal, ApiError> {
        if self.0.role >= need {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden {
                have: self.0.role,
                need,
                action,
            })
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|secret| !secret.is_empty() && secret.len() <= 256);
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        if let Some(wait) = address.and_then(|a| state.auth_failures.refused(a)) {
            return Err(ApiError::TooManyRequests {
                retry_after: wait.as_secs().max(1),
            });
        }
        // A request without a token is not a guess; a wrong token is.
        let secret = secret.ok_or(ApiError::Unauthenticated)?;
        match auth::authenticate(&state.pool, secret).await? {
            Some(principal) => Ok(Caller(principal)),
            None => {
                if let Some(address) = address {
                    state.auth_failures.failed(address);
                    tracing::info!(%address, "authentication failed");
                }
                Err(ApiError::Unauthenticated)
            }
        }
    }
}

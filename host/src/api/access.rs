//! Who may call what, checked before a handler reads anything of the
//! request.
//!
//! Each operation's role is the scope of its OpenAPI security requirement
//! (`security(("bearer" = ["operator"]))`), so the published document and
//! the check are one table. [`authorize`] runs on every matched `/api/v1`
//! route ahead of the extractors: an unauthenticated or under-privileged
//! caller gets 401 or 403 whatever the body or parameters hold, and learns
//! nothing of the input rules. It also refuses URLs whose decoded path or
//! query holds a NUL character (PostgreSQL cannot store one) with 422.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::auth;
use crate::domain::Role;

/// The security scheme of bearer tokens in the OpenAPI document.
pub const BEARER: &str = "bearer";
/// The security scheme of a device's download token (`?token=`).
pub const DOWNLOAD_TOKEN: &str = "download_token";

/// What an operation asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    /// The least role of a bearer token.
    role: Role,
    /// A device's download token will do instead (the handler checks it).
    or_download_token: bool,
}

/// Every secured operation's rule, by method and path template.
#[derive(Clone, Debug, Default)]
pub struct Policy(Arc<HashMap<(Method, String), Rule>>);

impl Policy {
    /// Reads the rules from the OpenAPI document (paths with their full
    /// `/api/v1` prefix). A bearer requirement that does not name exactly
    /// one role is a mistake in the code: the error says where.
    pub fn from_openapi(document: &serde_json::Value) -> Result<Self, String> {
        let mut rules = HashMap::new();
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        for (path, item) in paths {
            let Some(operations) = item.as_object() else {
                continue;
            };
            for (method, operation) in operations {
                let Ok(method) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                let Some(requirements) = operation["security"].as_array() else {
                    continue;
                };
                let mut rule: Option<Rule> = None;
                let mut or_download_token = false;
                for requirement in requirements {
                    if let Some(scopes) = requirement[BEARER].as_array() {
                        let [scope] = scopes.as_slice() else {
                            return Err(format!(
                                "{method} {path}: the bearer requirement must name one role"
                            ));
                        };
                        let role = scope
                            .as_str()
                            .and_then(|s| Role::parse(s).ok())
                            .ok_or_else(|| format!("{method} {path}: {scope} is not a role"))?;
                        rule = Some(Rule {
                            role,
                            or_download_token: false,
                        });
                    }
                    if requirement.get(DOWNLOAD_TOKEN).is_some() {
                        or_download_token = true;
                    }
                }
                if let Some(mut rule) = rule {
                    rule.or_download_token = or_download_token;
                    rules.insert((method, path.clone()), rule);
                }
            }
        }
        Ok(Self(Arc::new(rules)))
    }

    fn rule(&self, method: &Method, path: &str) -> Option<Rule> {
        // HEAD is served by the GET route.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.0.get(&(method.clone(), path.to_owned())).copied()
    }

    /// The role an operation needs, if it is secured.
    #[cfg(test)]
    fn role(&self, method: &Method, path: &str) -> Option<Role> {
        self.rule(method, path).map(|r| r.role)
    }
}

/// The bearer secret of a request, if it carries one. The scheme name is
/// case-insensitive (RFC 9110, 11.1).
pub fn bearer_secret(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.trim_start().split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty() && secret.len() <= 256)
        .then_some(secret)
}

/// The middleware: authenticates and authorises per [`Policy`], and puts
/// the caller's [`auth::Principal`] into the request's extensions for the
/// `Caller` extractor.
pub async fn authorize(
    State((state, policy)): State<(AppState, Policy)>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Err(error) = check_url(&request) {
        return error.into_response();
    }
    let Some(path) = request.extensions().get::<MatchedPath>().map(|p| {
        let path = p.as_str();
        if path.starts_with("/api/v1/") {
            path.to_owned()
        } else {
            format!("/api/v1{path}")
        }
    }) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let Some(rule) = policy.rule(&method, &path) else {
        return next.run(request).await;
    };
    let secret = bearer_secret(request.headers()).map(str::to_owned);
    if secret.is_none() && rule.or_download_token {
        // A device's download token is checked by the handler.
        return next.run(request).await;
    }
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    match authenticate(&state, address, secret.as_deref()).await {
        Ok(principal) if principal.role >= rule.role => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Ok(principal) => ApiError::Forbidden {
            have: principal.role,
            need: rule.role,
            action: format!("{method} {path}"),
        }
        .into_response(),
        Err(error) => error.into_response(),
    }
}

async fn authenticate(
    state: &AppState,
    address: Option<std::net::IpAddr>,
    secret: Option<&str>,
) -> Result<auth::Principal, ApiError> {
    if let Some(wait) = address.and_then(|a| state.auth_failures.refused(a)) {
        return Err(ApiError::TooManyRequests {
            retry_after: wait.as_secs().max(1),
        });
    }
    // A request without a token is not a guess; a wrong token is.
    let secret = secret.ok_or(ApiError::Unauthenticated)?;
    match auth::authenticate(&state.pool, secret).await? {
        Some(principal) => Ok(principal),
        None => {
            if let Some(address) = address {
                state.auth_failures.failed(address);
                tracing::info!(%address, "authentication failed");
            }
            Err(ApiError::Unauthenticated)
        }
    }
}

/// Refuses a URL whose decoded path or query holds a NUL character: no id,
/// filter or cursor can contain one, and PostgreSQL refuses it in text.
fn check_url(request: &Request) -> Result<(), ApiError> {
    let uri = request.uri();
    let decoded = |raw: &str| -> bool { percent_encoding::percent_decode_str(raw).any(|b| b == 0) };
    if decoded(uri.path()) {
        return Err(ApiError::validation(
            "path",
            "must not contain a NUL character",
        ));
    }
    if uri.query().is_some_and(decoded) {
        return Err(ApiError::validation(
            "query",
            "must not contain a NUL character",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        for value in [
            "Bearer rw_x",
            "bearer rw_x",
            "BEARER rw_x",
            "BeArEr   rw_x ",
        ] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_secret(&headers), Some("rw_x"), "{value}");
        }
        for value in ["Basic rw_x", "Bearer", "Bearer ", "Bearerrw_x"] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_secret(&headers), None, "{value}");
        }
    }

    #[test]
    fn rules_come_from_security_scopes() {
        let document = serde_json::json!({ "paths": {
            "/api/v1/a": {
                "get": { "security": [{ "bearer": ["viewer"] }] },
                "post": { "security": [{ "bearer": ["operator"] }] },
            },
            "/api/v1/b": { "get": { "security": [{ "bearer": ["viewer"] }, { "download_token": [] }] } },
            "/api/v1/keys": { "get": {} },
        }});
        let policy = Policy::from_openapi(&document).unwrap();
        assert_eq!(policy.role(&Method::GET, "/api/v1/a"), Some(Role::Viewer));
        assert_eq!(policy.role(&Method::HEAD, "/api/v1/a"), Some(Role::Viewer));
        assert_eq!(
            policy.role(&Method::POST, "/api/v1/a"),
            Some(Role::Operator)
        );
        assert!(
            policy
                .rule(&Method::GET, "/api/v1/b")
                .unwrap()
                .or_download_token
        );
        assert_eq!(policy.role(&Method::GET, "/api/v1/keys"), None);
    }

    #[test]
    fn a_scope_must_name_a_role() {
        let document = serde_json::json!({ "paths": {
            "/api/v1/a": { "get": { "security": [{ "bearer": ["root"] }] } },
        }});
        let error = Policy::from_openapi(&document).unwrap_err();
        assert_eq!(error, r#"GET /api/v1/a: "root" is not a role"#);
        let two = serde_json::json!({ "paths": {
            "/api/v1/a": { "get": { "security": [{ "bearer": ["viewer", "admin"] }] } },
        }});
        assert!(
            Policy::from_openapi(&two)
                .unwrap_err()
                .contains("must name one role")
        );
    }
}

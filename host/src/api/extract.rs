//! Extractors whose rejections are problem documents, and the caller's
//! identity.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::Principal;

/// A JSON request body with problem-document rejections: 415 without a
/// JSON content type, 413 past the body limit, 400 for malformed JSON,
/// 422 for well-formed JSON of the wrong shape and for any string (or
/// object key) holding a NUL character, which PostgreSQL cannot store.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::Unsupported(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: super::JSON_BODY_LIMIT as u64,
                    }
                } else if body_timed_out(&rejection) {
                    ApiError::RequestTimeout
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        if let Some(field) = nul_in_json(&bytes) {
            return Err(ApiError::validation(
                field,
                "must not contain a NUL character",
            ));
        }
        // Serde fills a struct from an array too, field by field: a body
        // whose type is an object must be one.
        if bytes.trim_ascii_start().starts_with(b"[") && wants_object::<T>() {
            return Err(ApiError::validation(
                "body",
                "expected a JSON object, not an array",
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            // Well-formed JSON (within the nesting limit) that does not fit
            // is invalid input, not a malformed request, whatever serde
            // calls it.
            Err(JsonRejection::JsonSyntaxError(error))
                if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() =>
            {
                Err(ApiError::validation("body", error.body_text()))
            }
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// What a type asks of the deserializer first: `object` for a struct or a
/// map, `any` for everything else (a `Value`, a list).
#[derive(Debug)]
struct Shape(&'static str);

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Shape {}

impl serde::de::Error for Shape {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Shape("other")
    }
}

/// A deserializer that only says what it was asked for.
struct ShapeProbe;

impl<'de> serde::Deserializer<'de> for ShapeProbe {
    type Error = Shape;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Shape> {
        Err(Shape("any"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Shape> {
        Err(Shape("object"))
    }

    fn deserialize_map<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Shape> {
        Err(Shape("object"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct enum
        identifier ignored_any
    }
}

/// Whether `T` is read from a JSON object (a struct or a map).
fn wants_object<T: DeserializeOwned>() -> bool {
    matches!(T::deserialize(ShapeProbe), Err(Shape("object")))
}

/// Whether reading a body failed because it stalled past
/// `ROLLWAY_HTTP_BODY_TIMEOUT`.
pub fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// `application/json` or any `application/…+json`, with parameters.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// The path of the first string or key holding a NUL character, if any.
/// JSON can only carry one as the escape `\u0000`, so bodies without that
/// sequence are not parsed twice.
fn nul_in_json(bytes: &[u8]) -> Option<String> {
    const ESCAPE: &[u8] = b"\\u0000";
    if !bytes.windows(ESCAPE.len()).any(|w| w == ESCAPE) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    fn walk(value: &serde_json::Value, path: &mut String) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            serde_json::Value::Object(map) => map.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.replace('\0', "\\u0000"));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(&value, &mut path).then(|| if path.is_empty() { "body".into() } else { path })
}

/// `axum::extract::Query` with problem-document rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` with problem-document rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The authenticated caller of an `/api/v1` route, as `access::authorize`
/// found it (that middleware also checked the operation's role).
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or(ApiError::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_and_maps_want_objects_and_the_rest_does_not() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Patch {
            model: Option<String>,
        }
        assert!(wants_object::<Patch>());
        assert!(wants_object::<std::collections::BTreeMap<String, u32>>());
        assert!(!wants_object::<serde_json::Value>());
        assert!(!wants_object::<Vec<Patch>>());
    }

    #[test]
    fn nul_characters_are_found_with_their_path() {
        assert_eq!(nul_in_json(br#"{"a":"b"}"#), None);
        // An escaped backslash followed by u0000 is text, not a NUL.
        assert_eq!(nul_in_json(br#"{"a":"\\u0000"}"#), None);
        assert_eq!(nul_in_json(br#""x\u0000""#).as_deref(), Some("body"));
        assert_eq!(
            nul_in_json(br#"{"tags":{"site":"n\u0000"}}"#).as_deref(),
            Some("tags.site")
        );
        assert_eq!(
            nul_in_json(br#"[{"id":"a"},{"id":"\u0000"}]"#).as_deref(),
            Some("[1].id")
        );
        assert!(nul_in_json(br#"{"tags":{"\u0000":"v"}}"#).is_some());
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        for (value, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/json", false),
            ("application/octet-stream", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(json_content_type(&headers), json, "{value}");
        }
    }
}

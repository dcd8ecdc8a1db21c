//! The operator dashboard: a single page at `/` and its assets at
//! `/assets/{name}`, embedded in the binary (nothing is fetched from the
//! internet). The page talks to `/api/v1` with the operator's token and
//! follows `/api/v1/events/stream` for live updates.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

/// `(name, content type, bytes)` of every file in `src/dashboard/assets`
/// (listed by `build.rs`).
const FILES: &[(&str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// The page may load only its own scripts and styles and talk only to its
/// own origin.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

struct Asset {
    content_type: &'static str,
    bytes: &'static [u8],
    etag: HeaderValue,
}

static ASSETS: LazyLock<Vec<(&'static str, Asset)>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(name, content_type, bytes)| {
            let digest = hex::encode(&Sha256::digest(bytes)[..12]);
            let etag = HeaderValue::from_str(&format!("\"{digest}\""))
                .unwrap_or(HeaderValue::from_static("\"0\""));
            (
                name,
                Asset {
                    content_type,
                    bytes,
                    etag,
                },
            )
        })
        .collect()
});

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    if name == "index.html" {
        return ApiError::NotFound(format!("asset {name}")).into_response();
    }
    serve(&name, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some((_, asset)) = ASSETS.iter().find(|(n, _)| *n == name) else {
        return ApiError::NotFound("asset".into()).into_response();
    };
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tag| tag == asset.etag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.bytes,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, asset.etag.clone());
    // Revalidated on every load: a new release is picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    #[test]
    fn every_asset_has_a_distinct_etag() {
        let mut tags: Vec<_> = ASSETS.iter().map(|(_, a)| a.etag.clone()).collect();
        tags.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }
}

//! Admin routes: API tokens and the audit log.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::pagination::{self, Page};
use crate::audit;
use crate::auth::{self, TokenRecord};
use crate::domain::Role;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(list_audit))
        .routes(routes!(signing_keys))
        .routes(routes!(rotate_signing_key))
        .routes(routes!(retire_signing_key))
        .routes(routes!(list_dead_letters))
        .routes(routes!(replay_dead_letter))
        .routes(routes!(replay_dead_letters))
        .routes(routes!(list_replicas))
        .routes(routes!(whoami))
}

/// The caller's token: what the dashboard shows after sign-in.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub token_id: Uuid,
    pub name: String,
    pub role: Role,
}

/// Who the bearer token belongs to, and its role.
#[utoipa::path(
    get, path = "/me", tag = "admin",
    responses((status = 200, body = Me), (status = 401, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn whoami(caller: Caller) -> axum::Json<Me> {
    let principal = caller.0;
    axum::Json(Me {
        token_id: principal.token_id,
        name: principal.name,
        role: principal.role,
    })
}

/// The host replicas sharing this database: alive or not, and who serves
/// the MQTT session of one that is away.
#[utoipa::path(
    get, path = "/replicas", tag = "admin",
    responses((status = 200, body = Vec<crate::replicas::ReplicaView>), (status = 401, body = super::error::Problem)),
    security(("bearer" = ["viewer"]))
)]
async fn list_replicas(
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Vec<crate::replicas::ReplicaView>>> {
    Ok(axum::Json(
        crate::replicas::list(&state.pool, state.settings.replica_timeout).await?,
    ))
}

/// An API token as listed (the secret is shown only at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<TokenRecord> for TokenView {
    fn from(r: TokenRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            role: Role::parse(&r.role).unwrap_or(Role::Viewer),
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A label for people: 1 to 100 characters, not only spaces.
    #[schema(
        example = "ci-pipeline",
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00]*[^\\x00\\s][^\\x00]*$"
    )]
    name: String,
    role: Role,
    /// Lifetime in seconds; no expiry when absent.
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_secs: Option<i64>,
}

/// A new token with its secret (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// The bearer secret. Store it now: it cannot be read again.
    pub secret: String,
}

/// Create an API token.
#[utoipa::path(
    post, path = "/tokens", tag = "admin",
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 403, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedToken>)> {
    let principal = &caller.0;
    let name = request.name.trim();
    if name.is_empty() || request.name.chars().count() > 100 {
        return Err(ApiError::validation(
            "name",
            "must be 1 to 100 characters long",
        ));
    }
    let expires_at = match request.expires_in_secs {
        Some(secs) if !(1..=10 * 365 * 86_400).contains(&secs) => {
            return Err(ApiError::validation(
                "expires_in_secs",
                "must be between 1 and 315360000",
            ));
        }
        Some(secs) => Some(Utc::now() + chrono::Duration::seconds(secs)),
        None => None,
    };
    let mut tx = state.pool.begin().await?;
    let (record, secret) =
        auth::create(&mut tx, name, request.role, &principal.actor(), expires_at).await?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "token.create",
        "token",
        &record.id.to_string(),
        json!({ "name": name, "role": request.role, "expires_at": expires_at }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            token: record.into(),
            secret,
        }),
    ))
}

/// List API tokens.
#[utoipa::path(
    get, path = "/tokens", tag = "admin",
    responses((status = 200, body = Vec<TokenView>), (status = 403, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn list_tokens(State(state): State<AppState>) -> ApiResult<axum::Json<Vec<TokenView>>> {
    let tokens = auth::list(&state.pool).await?;
    Ok(axum::Json(
        tokens.into_iter().map(TokenView::from).collect(),
    ))
}

/// Revoke an API token; it stops working at once.
#[utoipa::path(
    delete, path = "/tokens/{id}", tag = "admin",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = TokenView), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<axum::Json<TokenView>> {
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    let record = auth::revoke(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("token {id}")))?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "token.revoke",
        "token",
        &id.to_string(),
        json!({ "name": record.name }),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(record.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    target_type: Option<String>,
    target_id: Option<String>,
    /// `next_cursor` of the previous page (an audit entry id).
    cursor: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Read the audit log, newest first.
#[utoipa::path(
    get, path = "/audit", tag = "admin",
    params(AuditQuery),
    responses((status = 200, body = Page<audit::Entry>), (status = 403, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn list_audit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<axum::Json<Page<audit::Entry>>> {
    let limit = pagination::limit(query.limit)?;
    let before = query.cursor;
    let filter = audit::Filter {
        target_type: query.target_type,
        target_id: query.target_id,
        before,
    };
    let rows = audit::list(&state.pool, &filter, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |e| {
        e.id.to_string()
    })))
}

/// The published manifest keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningKeys {
    pub keys: Vec<crate::signing::PublicKey>,
    /// The key that signs new manifests.
    pub signing_key_id: String,
}

/// The public ed25519 keys that verify update manifests. No token needed:
/// devices and their gateways fetch them.
#[utoipa::path(
    get, path = "/signing-keys", tag = "admin",
    responses((status = 200, body = SigningKeys))
)]
async fn signing_keys(State(state): State<AppState>) -> ApiResult<axum::Json<SigningKeys>> {
    let keys = crate::signing::public_keys(&state.pool).await?;
    // The key that signs is the active one in the database, which another
    // replica may have just rotated.
    let signing_key_id = keys
        .iter()
        .find(|k| k.active)
        .map(|k| k.id.clone())
        .unwrap_or_else(|| state.keys.signing_key_id());
    Ok(axum::Json(SigningKeys {
        keys,
        signing_key_id,
    }))
}

fn key_error(error: crate::signing::KeyError) -> ApiError {
    use crate::signing::KeyError;
    match error {
        KeyError::NotFound(id) => ApiError::NotFound(format!("signing key {id}")),
        e @ (KeyError::Active(_) | KeyError::Raced) => ApiError::Conflict(e.to_string()),
        KeyError::Db(e) => e.into(),
        KeyError::Corrupt(e) => ApiError::Internal(anyhow::anyhow!(e)),
    }
}

/// Rotate the manifest signing key: a new key signs from now on, endorsed
/// by the one it replaces (see `endorsement`). The old key stays published
/// and trusted until retired, so commands already sent still verify.
#[utoipa::path(
    post, path = "/signing-keys/rotate", tag = "admin",
    responses(
        (status = 201, body = crate::signing::PublicKey),
        (status = 403, body = super::error::Problem),
        (status = 409, description = "Another rotation ran at the same time", body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn rotate_signing_key(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<(StatusCode, axum::Json<crate::signing::PublicKey>)> {
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    let key = state.keys.rotate(&mut tx).await.map_err(key_error)?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "signing_key.rotate",
        "signing_key",
        &key.id,
        json!({ "replaces": key.endorsed_by }),
    )
    .await?;
    tx.commit().await?;
    state.keys.refresh().await.map_err(ApiError::Internal)?;
    tracing::warn!(key_id = %key.id, replaces = ?key.endorsed_by, actor = %principal.actor(), "manifest signing key rotated");
    Ok((StatusCode::CREATED, axum::Json(key)))
}

/// Retire a signing key that no longer signs: it is no longer published,
/// and download links it signed stop working. Devices should drop it too.
#[utoipa::path(
    delete, path = "/signing-keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204),
        (status = 403, body = super::error::Problem),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "The key still signs", body = super::error::Problem),
    ),
    security(("bearer" = ["admin"]))
)]
async fn retire_signing_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    state.keys.retire(&mut tx, &id).await.map_err(key_error)?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "signing_key.retire",
        "signing_key",
        &id,
        json!({}),
    )
    .await?;
    tx.commit().await?;
    state.keys.refresh().await.map_err(ApiError::Internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Events that failed to publish too often, oldest first (`seq` order).
#[utoipa::path(
    get, path = "/events/dead-letter", tag = "admin",
    responses((status = 200, body = Vec<crate::outbox::DeadLetter>), (status = 403, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn list_dead_letters(
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Vec<crate::outbox::DeadLetter>>> {
    Ok(axum::Json(
        crate::outbox::dead_letters(&state.pool, 1000).await?,
    ))
}

/// Puts a dead-lettered event back into the outbox to be published again,
/// with its own id and `seq`; one more failure that counts buries it again.
#[utoipa::path(
    post, path = "/events/dead-letter/{id}/replay", tag = "admin",
    params(("id" = Uuid, Path)),
    responses((status = 202), (status = 404, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn replay_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    if crate::outbox::replay(&mut tx, Some(id)).await? == 0 {
        return Err(ApiError::NotFound(format!("dead-lettered event {id}")));
    }
    audit::record(
        &mut tx,
        &principal.actor(),
        "event.replay",
        "event",
        &id.to_string(),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::ACCEPTED)
}

/// How many dead letters a replay put back.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

/// Puts every dead-lettered event back into the outbox at once, each with
/// its own id and `seq`: the relay publishes them in `seq` order, one
/// aggregate's events in the order they happened.
#[utoipa::path(
    post, path = "/events/dead-letter/replay", tag = "admin",
    responses((status = 200, body = Replayed), (status = 403, body = super::error::Problem)),
    security(("bearer" = ["admin"]))
)]
async fn replay_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<Replayed>> {
    let principal = &caller.0;
    let mut tx = state.pool.begin().await?;
    let replayed = crate::outbox::replay(&mut tx, None).await?;
    audit::record(
        &mut tx,
        &principal.actor(),
        "event.replay",
        "event",
        "*",
        json!({ "replayed": replayed }),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(Replayed { replayed }))
}

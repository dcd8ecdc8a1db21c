//! `/api/v1/events/stream`: published state changes as Server-Sent Events,
//! fed by this replica's live feed (`live.rs`).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, Caller};
use crate::live::Live;
use crate::outbox::{self, Envelope};

/// Most missed events sent again to a reconnecting client; past that it is
/// told to reload instead.
const REPLAY_LIMIT: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream_events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only the events of this job: its own and its executions' changes.
    job_id: Option<Uuid>,
    /// Only events of this aggregate type.
    #[param(inline)]
    aggregate_type: Option<AggregateType>,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AggregateType {
    Job,
    Device,
    Firmware,
    Plugin,
}

impl AggregateType {
    fn as_str(self) -> &'static str {
        match self {
            AggregateType::Job => "job",
            AggregateType::Device => "device",
            AggregateType::Firmware => "firmware",
            AggregateType::Plugin => "plugin",
        }
    }
}

struct Filter {
    job_id: Option<String>,
    aggregate_type: Option<String>,
}

impl Filter {
    fn accepts(&self, event: &Envelope) -> bool {
        self.job_id
            .as_deref()
            .is_none_or(|job| event.concerns_job(job))
            && self
                .aggregate_type
                .as_deref()
                .is_none_or(|t| event.aggregate_type == t)
    }
}

/// How often an open stream checks that its token still works.
const TOKEN_CHECK: Duration = Duration::from_secs(2);

/// An open stream: its subscription, filter and caller.
struct Open {
    receiver: tokio::sync::broadcast::Receiver<Live>,
    filter: Arc<Filter>,
    replayed: HashSet<i64>,
    _guard: ClientGuard,
    pool: sqlx::PgPool,
    token_id: Uuid,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    check: tokio::time::Interval,
    closed: bool,
}

impl Open {
    /// Whether the caller's token is still neither revoked nor expired. A
    /// database that does not answer keeps the stream open: the next
    /// check asks again.
    async fn token_works(&self) -> bool {
        if self.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
            return false;
        }
        crate::auth::still_valid(&self.pool, self.token_id)
            .await
            .unwrap_or(true)
    }
}

/// Counts a connected client for as long as its stream lives.
struct ClientGuard(prometheus::IntGauge);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn sse_event(envelope: &Envelope) -> Event {
    let data = serde_json::to_string(envelope).unwrap_or_else(|_| "{}".to_owned());
    Event::default()
        .id(envelope.seq.to_string())
        .event(envelope.event_type.as_str())
        .data(data)
}

fn resync() -> Event {
    Event::default().event("resync").data("{}")
}

/// Stream published events (Server-Sent Events).
///
/// Each message has the event's `seq` as its id, its type as the event
/// name and the JSON envelope `{id, seq, type, aggregate_type,
/// aggregate_id, occurred_at, payload}` as data. A client reconnecting with
/// `Last-Event-ID` first gets the events it missed (up to 1000). An event
/// named `resync` means events may have been missed: reload state from the
/// REST API. A comment is sent every 15 s to keep proxies from closing the
/// connection. The stream ends, after an event named `closed`, within
/// two seconds of its token being revoked or expiring.
#[utoipa::path(
    get, path = "/events/stream", tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "The last event seq the client saw"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", description = "An endless stream of events"),
        (status = 401, body = super::error::Problem),
        (status = 422, body = super::error::Problem),
    ),
    security(("bearer" = ["viewer"]))
)]
async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let last_seen = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::validation("Last-Event-ID", "must be an event seq"))
        })
        .transpose()?;
    let filter = Arc::new(Filter {
        job_id: query.job_id.map(|id| id.to_string()),
        aggregate_type: query.aggregate_type.map(|t| t.as_str().to_owned()),
    });
    // Subscribe before reading what was missed, so nothing falls between.
    let receiver = state.events.subscribe();
    let mut first = Vec::new();
    let mut replayed = HashSet::new();
    if let Some(after) = last_seen {
        let mut missed = outbox::sent_after(&state.pool, after, REPLAY_LIMIT + 1).await?;
        let overflow = missed.len() as i64 > REPLAY_LIMIT;
        missed.truncate(REPLAY_LIMIT as usize);
        for event in &missed {
            replayed.insert(event.seq);
            if filter.accepts(event) {
                first.push(sse_event(event));
            }
        }
        if overflow {
            first.push(resync());
        }
    }
    state.metrics.live_stream_clients.inc();
    let mut check = tokio::time::interval(TOKEN_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let open = Open {
        receiver,
        filter,
        replayed,
        _guard: ClientGuard(state.metrics.live_stream_clients.clone()),
        pool: state.pool.clone(),
        token_id: caller.0.token_id,
        expires_at: caller.0.expires_at,
        check,
        closed: false,
    };
    let live = stream::unfold(open, |mut open| async move {
        if open.closed {
            return None;
        }
        loop {
            let event = tokio::select! {
                received = open.receiver.recv() => match received {
                    Ok(Live::Event(event)) => {
                        if open.replayed.contains(&event.seq) || !open.filter.accepts(&event) {
                            continue;
                        }
                        sse_event(&event)
                    }
                    Ok(Live::Resync) | Err(RecvError::Lagged(_)) => resync(),
                    Err(RecvError::Closed) => return None,
                },
                _ = open.check.tick() => {
                    if open.token_works().await {
                        continue;
                    }
                    open.closed = true;
                    Event::default()
                        .event("closed")
                        .data(r#"{"reason":"the token was revoked or has expired"}"#)
                }
            };
            return Some((event, open));
        }
    });
    let events = stream::iter(first).chain(live).map(Ok);
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

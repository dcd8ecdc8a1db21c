//! The outbox relay: publishes `event_outbox` rows to Kafka, marks them
//! sent (announcing them to every replica's live feed, `live.rs`), retries
//! failures with backoff and moves an event that failed `max_attempts` times
//! to `event_dead_letter`.
//!
//! One host relays at a time, holding a lease row in `relay_leases` (a value
//! with an expiry, not a database lock), so events of one aggregate leave in
//! their order. Rows are read without locks and updated after the broker
//! acknowledged them: no transaction is open while publishing. A relay that
//! dies after publishing and before marking re-publishes on its successor;
//! consumers deduplicate by the event id.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::outbox::{self, Envelope};

/// Events read per round.
const BATCH: i64 = 500;
const LEASE: &str = "outbox";
const LEASE_SECS: f64 = 15.0;
/// How often `outbox_pending_total` is counted. Counting reads the whole
/// backlog: after every round, that cost PostgreSQL 50 ms a round under a
/// backlog, the largest single cost of status ingestion (BENCHMARKS.md,
/// item 22).
const PENDING_EVERY: Duration = Duration::from_secs(2);
/// Above this many sequence numbers from the floor, the backlog is not
/// counted row by row but from the numbers (see [`pending`]).
const COUNT_UP_TO: i64 = 10_000;

#[derive(Clone)]
pub struct Relay {
    pub pool: PgPool,
    pub metrics: Metrics,
    /// `None`: no Kafka, events are only marked sent and announced to the
    /// live feeds.
    pub kafka: Option<Arc<Kafka>>,
    pub topic: String,
    pub max_attempts: i32,
    pub wakeup: Arc<Notify>,
    pub holder: String,
    /// Where this replica's relay reads from; see [`Floor`].
    pub floor: Arc<Mutex<Floor>>,
}

/// Every event below `seq` is sent, dead-lettered, or failed and waiting
/// for its retry (found through `event_outbox_retry_idx`, `attempts > 0`).
/// The relay reads unsent events from there in `seq` order, so the cost of
/// a round does not grow with the events already sent.
///
/// Sequence numbers are taken by concurrent transactions and become
/// visible in commit order, not in number order, so the floor may only
/// pass a number once no running transaction can still commit it. Every
/// transaction takes its transaction id before a sequence number (the
/// column's default, `rollway_outbox_seq()`); so once the oldest running
/// transaction is younger than every transaction that was running when
/// the sequence stood at `last`, each number up to `last` is committed or
/// never will be. `horizon` is such a `last` waiting for that moment, with
/// a transaction id taken after reading it: once no transaction older than
/// that id runs, the numbers up to `last` are settled.
#[derive(Debug, Default)]
pub struct Floor {
    seq: i64,
    horizon: Option<(i64, u64)>,
}

/// The relay's Kafka producer, replaced when it fails fatally (an
/// idempotent producer fenced or out of sequence cannot send again).
pub struct Kafka {
    brokers: String,
    producer: std::sync::RwLock<FutureProducer>,
}

impl Kafka {
    pub fn connect(brokers: &str) -> anyhow::Result<Self> {
        Ok(Self {
            brokers: brokers.to_owned(),
            producer: std::sync::RwLock::new(producer(brokers)?),
        })
    }

    fn current(&self) -> FutureProducer {
        match self.producer.read() {
            Ok(producer) => producer.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the producer if it failed fatally or the broker no longer
    /// knows its identity (`identity_lost`); returns whether it did.
    fn renew(&self, used: &FutureProducer, identity_lost: bool) -> bool {
        use rdkafka::producer::Producer as _;
        let reason = match used.client().fatal_error() {
            Some((code, reason)) => format!("{code:?}: {reason}"),
            None if identity_lost => "the broker refused the producer's identity".to_owned(),
            None => return false,
        };
        tracing::warn!(
            reason,
            "the Kafka producer cannot send again; creating a new one"
        );
        match producer(&self.brokers) {
            Ok(fresh) => {
                match self.producer.write() {
                    Ok(mut slot) => *slot = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                }
                true
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "recreating the Kafka producer"
                );
                true
            }
        }
    }
}

/// A Kafka producer for events: idempotent, acks from all replicas.
fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "5000")
        // A missing topic fails a delivery within seconds, not the default 30 s.
        .set("topic.metadata.propagation.max.ms", "3000")
        // and a topic created later is seen within seconds.
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| anyhow::anyhow!("creating the Kafka producer: {e}"))
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        let wakeup = self.wakeup.clone();
        let counted_at: Mutex<Option<Instant>> = Mutex::new(None);
        crate::worker::run_rounds(
            "relaying the outbox",
            Duration::from_millis(250),
            BATCH as usize,
            &wakeup,
            &shutdown,
            || async {
                let count = self.round().await?;
                let due = {
                    let mut at = counted_at.lock().unwrap_or_else(|e| e.into_inner());
                    let due = at.is_none_or(|t| t.elapsed() >= PENDING_EVERY);
                    if due {
                        *at = Some(Instant::now());
                    }
                    due
                };
                if due {
                    self.metrics
                        .outbox_pending_total
                        .set(pending(&self.pool).await?);
                }
                Ok(count)
            },
        )
        .await;
    }

    fn floor(&self) -> MutexGuard<'_, Floor> {
        self.floor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes or renews the relay lease, recording this relay's floor;
    /// returns the floor to read from (the higher of this relay's and the
    /// one recorded), or `None` when another host holds the lease.
    async fn lead(&self) -> Result<Option<i64>, sqlx::Error> {
        let mine = self.floor().seq;
        let floor: Option<i64> = sqlx::query_scalar(
            "INSERT INTO relay_leases (name, holder, until, floor_seq)
             VALUES ($1, $2, now() + make_interval(secs => $3), $4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until,
                 floor_seq = greatest(relay_leases.floor_seq, excluded.floor_seq)
             WHERE relay_leases.until < now() OR relay_leases.holder = excluded.holder
             RETURNING floor_seq",
        )
        .bind(LEASE)
        .bind(&self.holder)
        .bind(LEASE_SECS)
        .bind(mine)
        .fetch_optional(&self.pool)
        .await?;
        Ok(floor.map(|recorded| {
            let mut floor = self.floor();
            floor.seq = floor.seq.max(recorded);
            floor.seq
        }))
    }

    /// Raises the floor past the sequence numbers that have settled (see
    /// [`Floor`]), and takes the next horizon to wait for.
    async fn raise_floor(&self) -> Result<(), sqlx::Error> {
        let parse = |x: &str| {
            x.parse::<u64>()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        // The oldest running transaction, and the sequence, read before
        // any transaction id this round takes (below).
        let (xmin, last): (String, i64) = sqlx::query_as(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text,
                    coalesce(pg_sequence_last_value('event_outbox_seq'), 0)",
        )
        .fetch_one(&self.pool)
        .await?;
        let xmin = parse(&xmin)?;
        let (floor, horizon) = {
            let floor = self.floor();
            (floor.seq, floor.horizon)
        };
        if let Some((settled, until)) = horizon {
            if xmin < until {
                return Ok(()); // a transaction that may hold a number still runs
            }
            // Numbers up to `settled` are final: the floor goes to the
            // first one still unsent that is not waiting for a retry.
            let mut tx = in_seq_order(&self.pool).await?;
            let next: i64 = sqlx::query_scalar(
                "SELECT coalesce((SELECT seq FROM event_outbox
                                  WHERE seq >= $1 AND seq <= $2 AND sent_at IS NULL AND attempts = 0
                                  ORDER BY seq LIMIT 1), $2 + 1)",
            )
            .bind(floor)
            .bind(settled)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            let mut state = self.floor();
            state.seq = state.seq.max(next);
            state.horizon = None;
        }
        // Numbers at or above the floor to settle: a new horizon, with a
        // transaction id of our own taken after reading the sequence. Every
        // transaction that took one of the numbers up to `last` had its id
        // before ours. (Not a snapshot's xmax: that is the newest
        // *completed* id plus one, and a transaction that took its id after
        // the last one completed runs at or above it; waiting for xmin to
        // reach xmax let the floor pass such a transaction's number.) An
        // idle relay takes no id.
        if last >= self.floor().seq {
            let until: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
                .fetch_one(&self.pool)
                .await?;
            self.floor().horizon = Some((last, parse(&until)?));
        }
        Ok(())
    }

    /// Publishes one round of due events; returns how many were read.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let Some(floor) = self.lead().await? else {
            return Ok(0);
        };
        // From the floor, and the failed ones below it due for a retry.
        // Each part stops at BATCH rows in seq order: as one sorted union,
        // the planner read the whole backlog and sorted it every round.
        // Planned for the floor at hand, not prepared once: a generic plan
        // cannot tell how close the floor is to the newest events.
        let mut tx = in_seq_order(&self.pool).await?;
        let events: Vec<Envelope> = sqlx::query_as(
            "(SELECT id, seq, event_type, aggregate_type, aggregate_id, occurred_at, payload, attempts
              FROM event_outbox WHERE seq >= $2 AND sent_at IS NULL AND next_attempt_at <= now()
              ORDER BY seq LIMIT $1)
             UNION ALL
             (SELECT id, seq, event_type, aggregate_type, aggregate_id, occurred_at, payload, attempts
              FROM event_outbox WHERE seq < $2 AND attempts > 0 AND sent_at IS NULL
                AND next_attempt_at <= now()
              ORDER BY seq LIMIT $1)
             ORDER BY seq LIMIT $1",
        )
        .bind(BATCH)
        .bind(floor)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        self.raise_floor().await?;
        let count = events.len();
        if count == 0 {
            return Ok(0);
        }
        let mut sent = Vec::with_capacity(count);
        let mut failed: Vec<(Uuid, String)> = Vec::new();
        // An aggregate whose event failed keeps its later events back.
        let mut blocked: HashSet<String> = HashSet::new();
        // Whether the broker refused the producer's identity this round.
        let mut identity_lost_seen = false;
        let producer = self.kafka.as_ref().map(|kafka| kafka.current());
        match &producer {
            Some(producer) => {
                let mut pending = Vec::with_capacity(count);
                for event in &events {
                    if blocked.contains(&event.aggregate_id) {
                        continue;
                    }
                    let body = serde_json::to_vec(event)?;
                    let producer = producer.clone();
                    let topic = self.topic.clone();
                    let key = format!("{}:{}", event.aggregate_type, event.aggregate_id);
                    pending.push((
                        event,
                        tokio::spawn(async move {
                            let delivery = producer.send(
                                FutureRecord::to(&topic).key(&key).payload(&body),
                                Duration::from_secs(5),
                            );
                            match tokio::time::timeout(Duration::from_secs(15), delivery).await {
                                Ok(Ok(delivery)) => {
                                    tracing::debug!(
                                        partition = delivery.partition,
                                        offset = delivery.offset,
                                        "event delivered"
                                    );
                                    Ok(())
                                }
                                Ok(Err((e, _))) => Err((e.to_string(), identity_lost(&e))),
                                Err(_) => Err(("no delivery report within 15 s".to_owned(), false)),
                            }
                        }),
                    ));
                }
                for (event, handle) in pending {
                    let result = handle.await.unwrap_or_else(|e| Err((e.to_string(), false)));
                    match result {
                        Ok(()) if !blocked.contains(&event.aggregate_id) => sent.push(event),
                        Ok(()) => {
                            failed.push((event.id, "held back behind an earlier event".into()))
                        }
                        Err((error, lost)) => {
                            identity_lost_seen |= lost;
                            blocked.insert(event.aggregate_id.clone());
                            failed.push((event.id, error));
                        }
                    }
                }
            }
            None => sent.extend(events.iter()),
        }
        let ids: Vec<Uuid> = sent.iter().map(|e| e.id).collect();
        // Marked and announced to every replica's live feed together. At
        // most BATCH seqs of up to 12 digits fit PostgreSQL's 8000-byte
        // notification payload.
        sqlx::query(
            "WITH marked AS (UPDATE event_outbox SET sent_at = now() WHERE id = ANY($1) RETURNING seq)
             SELECT pg_notify($2, string_agg(seq::text, ',' ORDER BY seq)) FROM marked HAVING count(*) > 0",
        )
        .bind(&ids)
        .bind(outbox::CHANNEL)
        .execute(&self.pool)
        .await?;
        // A broker outage, or a producer that failed fatally, is nobody's
        // event's fault: such failures do not count towards the dead letter
        // table, however long they last.
        let outage = match (&self.kafka, &producer, failed.is_empty()) {
            (Some(kafka), Some(producer), false) => {
                kafka.renew(producer, identity_lost_seen) || !broker_reachable(producer).await
            }
            _ => false,
        };
        if outage {
            tracing::warn!(
                failed = failed.len(),
                "the Kafka brokers are unreachable; events wait in the outbox"
            );
        }
        for (id, error) in failed {
            self.metrics.outbox_errors_total.inc();
            tracing::warn!(event_id = %id, %error, "publishing an event failed");
            self.record_failure(id, &error, !outage).await?;
        }
        Ok(count)
    }

    /// Records a failure. A counted one backs off exponentially, and after
    /// `max_attempts` the event moves to the dead letter table in the same
    /// transaction; one during an outage is retried in a few seconds.
    async fn record_failure(
        &self,
        id: Uuid,
        error: &str,
        counted: bool,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let attempts: Option<i32> = sqlx::query_scalar(
            "UPDATE event_outbox
             SET attempts = attempts + CASE WHEN $3 THEN 1 ELSE 0 END, last_error = $2,
                 next_attempt_at = now() + CASE WHEN $3 THEN make_interval(secs => least(60, 0.1 * power(2, attempts)))
                                                 ELSE interval '2 seconds' END
             WHERE id = $1 RETURNING attempts",
        )
        .bind(id)
        .bind(error)
        .bind(counted)
        .fetch_optional(&mut *tx)
        .await?;
        if attempts.is_some_and(|n| n >= self.max_attempts) {
            outbox::bury(&mut tx, id).await?;
            tracing::error!(event_id = %id, attempts, "event moved to the dead letter table");
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Events not sent yet: from the recorded floor, and the failed ones below
/// it waiting for a retry. Up to [`COUNT_UP_TO`] sequence numbers from the
/// floor, the unsent rows there are counted; above, every number from the
/// floor to the newest counts as an event not sent. The relay sends in
/// `seq` order from the floor, so of those numbers only the ones sent since
/// the floor last rose (a round's worth) and those of rolled-back
/// transactions are not events waiting: the figure is that close, and
/// costs nothing where a count read every row of the backlog (300 ms every
/// 2 s under a backlog of a million events, BENCHMARKS.md item 32).
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH f AS (SELECT coalesce((SELECT floor_seq FROM relay_leases WHERE name = $1), 0) AS seq),
              numbers AS (SELECT greatest(coalesce(pg_sequence_last_value('event_outbox_seq'), 0)
                                          - f.seq + 1, 0) AS n FROM f)
         SELECT CASE WHEN numbers.n > $2 THEN numbers.n
                     ELSE (SELECT count(*) FROM event_outbox, f
                           WHERE event_outbox.seq >= f.seq AND sent_at IS NULL) END
              + (SELECT count(*) FROM event_outbox, f
                 WHERE event_outbox.seq < f.seq AND attempts > 0 AND sent_at IS NULL)
         FROM numbers",
    )
    .bind(LEASE)
    .bind(COUNT_UP_TO)
    .persistent(false)
    .fetch_one(pool)
    .await
}

/// A transaction whose reads of `event_outbox` walk `event_outbox_seq_idx`
/// in order and stop at their `LIMIT`. The planner cannot know that the
/// unsent events sit together at the top of the table: its statistics say
/// almost every event is sent, so it expected a handful of unsent ones in
/// any range and chose to fetch the whole range from the floor and sort it.
/// Under a backlog that is every unsent event, payloads included: 5-8 ms a
/// round where the ordered scan takes well under one (BENCHMARKS.md,
/// item 28).
async fn in_seq_order(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Errors after which an idempotent producer cannot send again: the broker
/// fenced it or lost its id and sequence (after a broker restart, say).
fn identity_lost(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::ProducerFenced
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber
                | C::InvalidProducerEpoch
                | C::InvalidProducerIdMapping
        )
    )
}

/// Whether any broker answers a metadata request within a few seconds.
async fn broker_reachable(producer: &FutureProducer) -> bool {
    use rdkafka::producer::Producer as _;
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(3))
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

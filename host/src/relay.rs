//! The outbox relay: publishes `event_outbox` rows to Kafka, marks them
//! sent (announcing them to every replica's live feed, `live.rs`), retries
//! failures, and moves an event the broker refused for what it is (too
//! large, invalid) `max_attempts` times to `event_dead_letter`. Outages, a
//! missing topic (created again) and a producer the broker no longer knows
//! (replaced) are nobody's event's fault: those events wait. A key whose
//! event failed holds its later events back until it is sent or buried.
//!
//! One host relays at a time, holding a lease row in `relay_leases` (a value
//! with an expiry, not a database lock), so events of one aggregate leave in
//! their order. Rows are read without locks and updated after the broker
//! acknowledged them: no transaction is open while publishing. A relay that
//! dies after publishing and before marking re-publishes on its successor;
//! consumers deduplicate by the event id.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::kafka::{TopicError, TopicSpec};
use crate::metrics::Metrics;
use crate::outbox::{self, Envelope};

/// Events read per round.
const BATCH: i64 = 500;
const LEASE: &str = "outbox";
const LEASE_SECS: f64 = 15.0;
/// How long creating the events topic may take, and how often the relay
/// tries while no broker answers.
const TOPIC_WAIT: Duration = Duration::from_secs(5);
const TOPIC_RETRY: Duration = Duration::from_secs(5);
/// How long the relay waits for the broker to acknowledge a round's events
/// (the producer gives up on one after 5 s): with the broker check after
/// failures (3 s), a round ends well within its lease (`LEASE_SECS`).
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// How often `outbox_pending_total` is counted (within a second or two of
/// the truth, outage or not). Counting reads the whole
/// backlog: after every round, that cost PostgreSQL 50 ms a round under a
/// backlog, the largest single cost of status ingestion (BENCHMARKS.md,
/// item 22).
const PENDING_EVERY: Duration = Duration::from_secs(2);
/// Above this many sequence numbers from the floor, the backlog is not
/// counted row by row but from the numbers (see [`backlog`]).
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

/// Every event below `seq` is sent, dead-lettered, or failed (or held back
/// behind an earlier event of its key) and waiting for its retry, found
/// through `event_outbox_retry_idx` (`attempts > 0`; sending resets it,
/// which leaves the index and keeps the index small).
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
/// idempotent producer fenced or out of sequence cannot send again), and
/// how to create the events topic.
pub struct Kafka {
    brokers: String,
    producer: std::sync::RwLock<FutureProducer>,
    spec: TopicSpec,
    topic: Mutex<Topic>,
}

impl Kafka {
    pub fn connect(brokers: &str, spec: TopicSpec) -> anyhow::Result<Self> {
        Ok(Self {
            brokers: brokers.to_owned(),
            producer: std::sync::RwLock::new(producer(brokers)?),
            spec,
            topic: Mutex::new(Topic::Unknown),
        })
    }

    /// Creates `topic` when it is missing. A broker that refuses is an
    /// error; one that does not answer leaves the topic to the relay, which
    /// tries again before it publishes.
    pub async fn make_topic(&self, topic: &str) -> Result<(), TopicError> {
        match crate::kafka::ensure_topic(&self.brokers, topic, self.spec, TOPIC_WAIT).await {
            Ok(created) => {
                if created {
                    tracing::info!(
                        topic,
                        partitions = self.spec.partitions,
                        replication = self.spec.replication,
                        "created the events topic"
                    );
                }
                *self.topic.lock().unwrap_or_else(|e| e.into_inner()) = Topic::Exists;
                Ok(())
            }
            Err(error) => {
                *self.topic.lock().unwrap_or_else(|e| e.into_inner()) =
                    Topic::TriedAt(Instant::now());
                Err(error)
            }
        }
    }

    /// The topic was found missing (deleted, or a new broker without it):
    /// created again before the next publication.
    fn forget_topic(&self) {
        *self.topic.lock().unwrap_or_else(|e| e.into_inner()) = Topic::Unknown;
    }

    /// Whether the topic is known to exist; else tries to create it (at
    /// most every few seconds) and says whether that worked.
    async fn topic_ready(&self, topic: &str) -> bool {
        let due = match *self.topic.lock().unwrap_or_else(|e| e.into_inner()) {
            Topic::Exists => return true,
            Topic::Unknown => true,
            Topic::TriedAt(at) => at.elapsed() >= TOPIC_RETRY,
        };
        if !due {
            return false;
        }
        match self.make_topic(topic).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, topic, "the events topic is not there yet; events wait");
                false
            }
        }
    }

    fn current(&self) -> FutureProducer {
        match self.producer.read() {
            Ok(producer) => producer.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the producer if it failed fatally, or for `reason`.
    fn renew(&self, used: &FutureProducer, reason: Option<&str>) {
        use rdkafka::producer::Producer as _;
        let reason = match (used.client().fatal_error(), reason) {
            (Some((code, fatal)), _) => format!("{code:?}: {fatal}"),
            (None, Some(reason)) => reason.to_owned(),
            (None, None) => return,
        };
        tracing::warn!(
            reason,
            "the Kafka producer cannot send again; creating a new one"
        );
        match producer(&self.brokers) {
            Ok(fresh) => match self.producer.write() {
                Ok(mut slot) => *slot = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            },
            Err(error) => tracing::error!(
                error = format!("{error:#}"),
                "recreating the Kafka producer"
            ),
        }
    }
}

/// What the relay knows of the events topic.
#[derive(Debug, Clone, Copy)]
enum Topic {
    Unknown,
    /// Creating it failed then (no broker answered, or one refused).
    TriedAt(Instant),
    Exists,
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
        // The backlog is counted on a clock of its own: during an outage a
        // round waits on the broker for seconds, and the gauges must not
        // wait with it.
        let counting = tokio::spawn(count_backlog(
            self.pool.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        let wakeup = self.wakeup.clone();
        crate::worker::run_rounds(
            "relaying the outbox",
            Duration::from_millis(250),
            BATCH as usize,
            &wakeup,
            &shutdown,
            || self.round(),
        )
        .await;
        let _ = counting.await;
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
        // Before the lease is taken or renewed: making sure of the topic
        // may take seconds, and a round must end within the lease.
        if let Some(kafka) = &self.kafka
            && !kafka.topic_ready(&self.topic).await
        {
            return Ok(0);
        }
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
        // Keys with an earlier event that failed and waits for its retry
        // (or is held back itself), and the first such `seq`: their later
        // events wait behind it, in this round and the next ones.
        let waiting: Vec<(String, i64)> = match (&self.kafka, events.last()) {
            (Some(_), Some(last)) => {
                // Two index ranges, as the round reads: from the floor to
                // the round's last event, and the retries below the floor.
                sqlx::query_as(
                    "SELECT aggregate_type || ':' || aggregate_id, min(seq) FROM (
                         SELECT aggregate_type, aggregate_id, seq FROM event_outbox
                         WHERE seq >= $1 AND seq <= $2 AND sent_at IS NULL AND next_attempt_at > now()
                         UNION ALL
                         SELECT aggregate_type, aggregate_id, seq FROM event_outbox
                         WHERE seq < $1 AND attempts > 0 AND sent_at IS NULL AND next_attempt_at > now()
                     ) w GROUP BY 1",
                )
                .bind(floor)
                .bind(last.seq)
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?
            }
            _ => Vec::new(),
        };
        tx.commit().await?;
        self.raise_floor().await?;
        let count = events.len();
        if count == 0 {
            return Ok(0);
        }
        let waiting: HashMap<String, i64> = waiting.into_iter().collect();
        let mut sent = Vec::with_capacity(count);
        // Failed events, and later events of their keys held back behind
        // them (not their own failure: not counted).
        let mut failed: Vec<(Uuid, String, Failure)> = Vec::new();
        let mut held: Vec<Uuid> = Vec::new();
        // Keys whose event failed: their later events are held back.
        let mut blocked: HashSet<String> = HashSet::new();
        let producer = self.kafka.as_ref().map(|kafka| kafka.current());
        match &producer {
            Some(producer) => {
                // Enqueued in `seq` order by this one task: the producer
                // keeps a partition's records in the order they were
                // enqueued (through its own retries too, being idempotent),
                // so the events of one key reach Kafka in `seq` order. (A
                // task per event enqueued them in scheduling order.) The
                // deliveries are awaited after all are enqueued.
                let mut deliveries = Vec::with_capacity(count);
                for event in &events {
                    let key = event.key();
                    if blocked.contains(&key) || waiting.get(&key).is_some_and(|&w| w < event.seq) {
                        held.push(event.id);
                        continue;
                    }
                    let body = serde_json::to_vec(event)?;
                    match producer
                        .send_result(FutureRecord::to(&self.topic).key(&key).payload(&body))
                    {
                        Ok(delivery) => deliveries.push((event, key, delivery)),
                        Err((error, _)) => {
                            failed.push((event.id, error.to_string(), Failure::of(&error)));
                            blocked.insert(key);
                        }
                    }
                }
                let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
                for (event, key, delivery) in deliveries {
                    let result = match tokio::time::timeout_at(deadline, delivery).await {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err((error, _)))) => Err((error.to_string(), Failure::of(&error))),
                        Ok(Err(_)) => Err((
                            "the producer dropped the delivery".to_owned(),
                            Failure::Transient,
                        )),
                        Err(_) => Err((
                            format!("no delivery report within {DELIVERY_WAIT:?}"),
                            Failure::TimedOut,
                        )),
                    };
                    match result {
                        // Delivered after an earlier event of its key failed:
                        // sent again once that one is.
                        Ok(()) if blocked.contains(&key) => held.push(event.id),
                        Ok(()) => sent.push(event),
                        Err((error, kind)) => {
                            blocked.insert(key);
                            failed.push((event.id, error, kind));
                        }
                    }
                }
            }
            None => sent.extend(events.iter()),
        }
        let ids: Vec<Uuid> = sent.iter().map(|e| e.id).collect();
        // Marked and announced to every replica's live feed together. At
        // most BATCH seqs of up to 12 digits fit PostgreSQL's 8000-byte
        // notification payload. `attempts` back to 0 leaves the retry
        // index; for the (nearly all) events already at 0 it changes no
        // indexed value, and the update stays heap-only.
        sqlx::query(
            "WITH marked AS (UPDATE event_outbox SET sent_at = now(), attempts = 0 WHERE id = ANY($1) RETURNING seq)
             SELECT pg_notify($2, string_agg(seq::text, ',' ORDER BY seq)) FROM marked HAVING count(*) > 0",
        )
        .bind(&ids)
        .bind(outbox::CHANNEL)
        .execute(&self.pool)
        .await?;
        if let (Some(kafka), Some(producer), false) = (&self.kafka, &producer, failed.is_empty()) {
            self.recover(kafka, producer, &failed).await;
        }
        // Only an event refused for what it is counts towards the dead
        // letter table. An outage, a missing topic, a producer the broker
        // no longer knows are nobody's event's fault: the events wait,
        // however long that lasts.
        let mut waits: Vec<(Uuid, String)> = Vec::with_capacity(failed.len() + held.len());
        for (id, error, kind) in failed {
            self.metrics.outbox_errors_total.inc();
            tracing::warn!(event_id = %id, %error, ?kind, "publishing an event failed");
            if kind == Failure::Poison {
                self.record_refusal(id, &error).await?;
            } else {
                waits.push((id, error));
            }
        }
        waits.extend(held.into_iter().map(|id| {
            (
                id,
                "held back behind an earlier event of its key".to_owned(),
            )
        }));
        self.record_waits(&waits).await?;
        Ok(count)
    }

    /// After failures: a producer that failed fatally, that the broker no
    /// longer recognises, or whose sends time out while a broker answers
    /// (a replaced broker that does not know its idempotent identity) is
    /// replaced; a topic found missing is created again before the next
    /// publication.
    async fn recover(
        &self,
        kafka: &Kafka,
        producer: &FutureProducer,
        failed: &[(Uuid, String, Failure)],
    ) {
        let any = |kind: Failure| failed.iter().any(|(_, _, k)| *k == kind);
        if any(Failure::TopicMissing) {
            kafka.forget_topic();
        }
        let reason = if any(Failure::IdentityLost) {
            Some("the broker refused the producer's identity")
        } else if any(Failure::TimedOut) {
            if broker_reachable(producer).await {
                Some("sends time out while a broker answers")
            } else {
                tracing::warn!(
                    failed = failed.len(),
                    "the Kafka brokers are unreachable; events wait in the outbox"
                );
                None
            }
        } else {
            None
        };
        kafka.renew(producer, reason);
    }

    /// Records a refusal of the event for what it is: it backs off
    /// exponentially, and at `max_attempts` refusals moves to the dead
    /// letter table in the same transaction.
    async fn record_refusal(&self, id: Uuid, error: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // `attempts` too: out of the floor's way, into the retry index.
        let refusals: Option<i32> = sqlx::query_scalar(
            "UPDATE event_outbox
             SET attempts = attempts + 1, refusals = refusals + 1, last_error = $2,
                 next_attempt_at = now() + make_interval(secs => least(60, 0.1 * power(2, refusals)))
             WHERE id = $1 RETURNING refusals",
        )
        .bind(id)
        .bind(error)
        .fetch_optional(&mut *tx)
        .await?;
        if refusals.is_some_and(|n| n >= self.max_attempts) {
            outbox::bury(&mut tx, id).await?;
            tracing::error!(event_id = %id, refusals, "event moved to the dead letter table");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records the events that failed through no fault of their own, or
    /// waited behind an earlier event of their key, in one statement: they
    /// leave the floor's way (the retry index) and are tried again in a
    /// few seconds, counting towards nothing.
    async fn record_waits(&self, waits: &[(Uuid, String)]) -> Result<(), sqlx::Error> {
        if waits.is_empty() {
            return Ok(());
        }
        let (ids, errors): (Vec<Uuid>, Vec<&str>) = waits
            .iter()
            .map(|(id, error)| (*id, error.as_str()))
            .unzip();
        sqlx::query(
            "UPDATE event_outbox e
             SET attempts = e.attempts + 1, last_error = w.error,
                 next_attempt_at = now() + interval '2 seconds'
             FROM unnest($1::uuid[], $2::text[]) AS w(id, error)
             WHERE e.id = w.id",
        )
        .bind(&ids)
        .bind(&errors)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Sets `outbox_pending_total` and `outbox_oldest_pending_seconds` every
/// [`PENDING_EVERY`] until shutdown.
async fn count_backlog(pool: PgPool, metrics: Metrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PENDING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match backlog(&pool).await {
            Ok((pending, oldest)) => {
                metrics.outbox_pending_total.set(pending);
                metrics.outbox_oldest_pending_seconds.set(oldest);
            }
            Err(error) => tracing::warn!(%error, "counting the outbox backlog"),
        }
    }
}

/// Events not sent yet, and the age in seconds of the oldest of them (0
/// when none): from the recorded floor, and the failed ones below it
/// waiting for a retry. Up to [`COUNT_UP_TO`] sequence numbers from the
/// floor, the unsent rows there are counted; above, every number from the
/// floor to the newest counts as an event not sent. The relay sends in
/// `seq` order from the floor, so of those numbers only the ones sent since
/// the floor last rose (a round's worth) and those of rolled-back
/// transactions are not events waiting: the figure is that close, and
/// costs nothing where a count read every row of the backlog (300 ms every
/// 2 s under a backlog of a million events, BENCHMARKS.md item 32). The
/// oldest is the first unsent event from the floor (the relay sends in
/// `seq` order) or an older one waiting for its retry.
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "WITH f AS (SELECT coalesce((SELECT floor_seq FROM relay_leases WHERE name = $1), 0) AS seq),
              numbers AS (SELECT greatest(coalesce(pg_sequence_last_value('event_outbox_seq'), 0)
                                          - f.seq + 1, 0) AS n FROM f),
              oldest AS (
                  SELECT least(
                      (SELECT e.occurred_at FROM event_outbox e, f
                       WHERE e.seq >= f.seq AND e.sent_at IS NULL ORDER BY e.seq LIMIT 1),
                      (SELECT min(e.occurred_at) FROM event_outbox e, f
                       WHERE e.seq < f.seq AND e.attempts > 0 AND e.sent_at IS NULL)) AS at)
         SELECT CASE WHEN numbers.n > $2 THEN numbers.n
                     ELSE (SELECT count(*) FROM event_outbox, f
                           WHERE event_outbox.seq >= f.seq AND sent_at IS NULL) END
              + (SELECT count(*) FROM event_outbox, f
                 WHERE event_outbox.seq < f.seq AND attempts > 0 AND sent_at IS NULL),
                coalesce(extract(epoch FROM now() - oldest.at)::float8, 0)
         FROM numbers, oldest",
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

/// Why a publication failed, as far as the relay acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The broker (or the producer) refuses the record for what it is: too
    /// large, invalid. The only kind that counts towards dead-lettering.
    Poison,
    /// The topic does not exist (yet, or any more).
    TopicMissing,
    /// The broker fenced the producer or lost its id and sequence (after
    /// a broker restart or replacement): it cannot send again.
    IdentityLost,
    /// No acknowledgement in time.
    TimedOut,
    /// Anything else (no broker, a leader change, not enough replicas,
    /// authorisation): it waits.
    Transient,
}

impl Failure {
    fn of(error: &rdkafka::error::KafkaError) -> Self {
        use rdkafka::types::RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(
                C::MessageSizeTooLarge
                | C::MessageBatchTooLarge
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidDifferentRecord
                | C::InvalidTimestamp
                | C::UnsupportedForMessageFormat
                | C::BadMessage,
            ) => Self::Poison,
            Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownTopicId) => {
                Self::TopicMissing
            }
            Some(
                C::ProducerFenced
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber
                | C::InvalidProducerEpoch
                | C::InvalidProducerIdMapping,
            ) => Self::IdentityLost,
            Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut) => Self::TimedOut,
            _ => Self::Transient,
        }
    }
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

//! The outbox relay against the real Kafka-API broker.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use rollway::sim::Simulator;

use crate::helpers::{TestApp, metric, spawn_app_with};
use crate::pipeline::{create_job, sim_options, spawn_pipeline_with, wait_for};

/// Creates `topic` with `partitions` partitions, unless it exists.
pub async fn make_topic(brokers: &str, topic: &str, partitions: i32) {
    let spec = rollway::kafka::TopicSpec {
        partitions,
        replication: 1,
    };
    rollway::kafka::ensure_topic(brokers, topic, spec, Duration::from_secs(10))
        .await
        .unwrap();
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS is not set; run the tests through scripts/test.sh")
}

async fn spawn_with_topic(topic: &str, max_attempts: i32) -> TestApp {
    let (topic, kafka) = (topic.to_owned(), brokers());
    spawn_app_with(move |s| {
        s.kafka_brokers = Some(kafka);
        s.events_topic = topic;
        s.outbox_max_attempts = max_attempts;
    })
    .await
}

/// Some state changes: devices, firmware, a job and its cancellation.
async fn make_events(app: &TestApp) {
    app.register(json!([{ "id": "EV-1", "family": "esp32", "model": "esp32s3" }, { "id": "EV-2", "family": "esp32", "model": "esp32s3" }])).await;
    let fw = app.upload_esp32("9.0.0").await;
    let job: Value = app
        .post_json("/api/v1/jobs", &json!({ "firmware_id": fw["id"], "targets": { "devices": ["EV-1", "EV-2"] }, "start": "2032-01-01T00:00:00Z" }))
        .await
        .json()
        .await
        .unwrap();
    app.act(&format!(
        "/api/v1/jobs/{}/cancel",
        job["id"].as_str().unwrap()
    ))
    .await;
}

async fn outbox_ids(app: &TestApp) -> HashSet<String> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM event_outbox")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    ids.into_iter().map(|id| id.to_string()).collect()
}

/// Waits until every outbox event was published and the gauge says so.
pub async fn wait_all_sent(app: &TestApp, timeout: Duration) {
    let started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE sent_at IS NULL")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if pending == 0 && metric(app, "outbox_pending_total", &[]).await == 0.0 {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{pending} events still pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the topic from the start until `expected` distinct events arrived.
async fn consume(topic: &str, expected: &HashSet<String>) -> Vec<Value> {
    consume_from(&brokers(), topic, expected, Duration::from_secs(30)).await
}

/// Reads `topic` of `brokers` from the start until `expected` distinct
/// events arrived; returns every envelope read, duplicates included.
pub async fn consume_from(
    brokers: &str,
    topic: &str,
    expected: &HashSet<String>,
    timeout: Duration,
) -> Vec<Value> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Partitions assigned directly: no consumer-group rebalance to wait for.
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut seen = HashSet::new();
    let mut envelopes = Vec::new();
    let started = Instant::now();
    while !expected.is_subset(&seen) {
        assert!(
            started.elapsed() < timeout,
            "only {} of {} events on {topic}",
            seen.len(),
            expected.len()
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        {
            let envelope: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            seen.insert(envelope["id"].as_str().unwrap().to_owned());
            envelopes.push(envelope);
        }
    }
    envelopes
}

#[tokio::test]
async fn every_state_change_reaches_kafka_once_in_effect_and_in_order() {
    let topic = format!("events-{}", Uuid::new_v4().simple());
    make_topic(&brokers(), &topic, 3).await;
    let app = spawn_with_topic(&topic, 10).await;
    make_events(&app).await;
    wait_all_sent(&app, Duration::from_secs(30)).await;
    let expected = outbox_ids(&app).await;
    assert!(expected.len() >= 5, "{expected:?}");
    let envelopes = consume(&topic, &expected).await;
    // Deduplicated by id, the topic holds exactly the outbox.
    let ids: HashSet<String> = envelopes
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected);
    let types: HashSet<&str> = envelopes
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in [
        "firmware.uploaded",
        "job.created",
        "job.status.changed",
        "execution.status.changed",
    ] {
        assert!(types.contains(t), "{t} missing: {types:?}");
    }
    // Events of one aggregate arrive in the order they happened.
    let mut last_seq: std::collections::HashMap<String, i64> = Default::default();
    for e in &envelopes {
        let key = format!("{}:{}", e["aggregate_type"], e["aggregate_id"]);
        let seq = e["seq"].as_i64().unwrap();
        if let Some(previous) = last_seq.insert(key.clone(), seq) {
            assert!(seq > previous, "{key} out of order");
        }
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM event_dead_letter")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

/// Writes an outbox event of `test:{key}` directly, with a payload of
/// about `bytes` bytes, due in `wait` seconds; returns its id and seq.
async fn insert_event(app: &TestApp, key: &str, bytes: usize, wait: f64) -> (String, i64) {
    let id = Uuid::now_v7();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload, next_attempt_at)
         VALUES ($1, 'test', $2, 'test.order', jsonb_build_object('pad', repeat('x', $3)),
                 now() + make_interval(secs => $4))
         RETURNING seq",
    )
    .bind(id)
    .bind(key)
    .bind(bytes as i32)
    .bind(wait)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    (id.to_string(), seq)
}

/// Moves the outbox event `id` to the dead letters as the relay does after
/// the broker refused it three times.
pub async fn bury_as_refused(app: &TestApp, id: &str) {
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE event_outbox SET attempts = 3, refusals = 3, last_error = 'refused' WHERE id = $1::uuid",
    )
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    rollway::outbox::bury(&mut tx, id.parse().unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn dead_ids(app: &TestApp) -> Vec<String> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM event_dead_letter ORDER BY seq")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    ids.into_iter().map(|id| id.to_string()).collect()
}

#[tokio::test]
async fn only_poison_is_dead_lettered_and_its_key_goes_on() {
    let topic = format!("events-{}", Uuid::new_v4().simple());
    let app = spawn_with_topic(&topic, 2).await;
    make_events(&app).await;
    // Larger than any broker takes (the producer refuses over 1 MB): the
    // event itself is at fault. The next event of its key waits behind it,
    // then goes on.
    let (poison, poison_seq) = insert_event(&app, "poisoned", 1_200_000, 0.0).await;
    let (after, _) = insert_event(&app, "poisoned", 10, 0.0).await;
    let started = Instant::now();
    while dead_ids(&app).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_all_sent(&app, Duration::from_secs(30)).await;
    assert_eq!(dead_ids(&app).await, std::slice::from_ref(&poison));
    assert!(metric(&app, "outbox_errors_total", &[]).await >= 2.0);
    let listed: Value = app
        .get("/api/v1/events/dead-letter")
        .await
        .json()
        .await
        .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], poison);
    assert_eq!(listed[0]["attempts"], 2);
    assert!(
        listed[0]["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("size"),
        "{}",
        listed[0]
    );
    let operator = app.token("operator").await;
    let forbidden = app
        .request_as(&operator, Method::GET, "/api/v1/events/dead-letter")
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    // Everything else, the poisoned key's next event included, is on the
    // topic.
    let mut expected = outbox_ids(&app).await;
    assert!(expected.contains(&after));
    expected.remove(&poison);
    let envelopes = consume(&topic, &expected).await;
    assert!(envelopes.iter().all(|e| e["id"] != poison));
    // In its place on its key's stream, a marker says what is missing.
    let marker = envelopes
        .iter()
        .find(|e| e["type"] == "event.dead_lettered")
        .expect("a dead letter marker");
    assert_eq!(
        (
            &marker["aggregate_type"],
            &marker["aggregate_id"],
            &marker["payload"]["event_id"],
            &marker["payload"]["seq"],
        ),
        (
            &json!("test"),
            &json!("poisoned"),
            &json!(poison),
            &json!(poison_seq)
        ),
        "{marker}"
    );
}

#[tokio::test]
async fn a_replayed_dead_letter_keeps_its_id_and_seq() {
    let topic = format!("events-{}", Uuid::new_v4().simple());
    let app = spawn_with_topic(&topic, 3).await;
    make_events(&app).await;
    wait_all_sent(&app, Duration::from_secs(30)).await;
    // Two events of one key that failed for good earlier, oldest first.
    let mut buried = Vec::new();
    for _ in 0..2 {
        let (id, seq) = insert_event(&app, "buried", 10, 3600.0).await;
        bury_as_refused(&app, &id).await;
        buried.push((id, seq));
    }
    let listed: Value = app.json("/api/v1/events/dead-letter").await;
    let listed: Vec<(String, i64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, buried, "dead letters are listed oldest first");
    // An operator may not replay them; an admin replays them all at once.
    let operator = app.token("operator").await;
    let forbidden = app
        .request_as(&operator, Method::POST, "/api/v1/events/dead-letter/replay")
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let replayed = app.act("/api/v1/events/dead-letter/replay").await;
    assert_eq!(replayed["replayed"], 2, "{replayed}");
    let missing = app
        .request(
            Method::POST,
            &format!("/api/v1/events/dead-letter/{}/replay", Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // One replayed by its id.
    let (single, single_seq) = insert_event(&app, "single", 10, 3600.0).await;
    bury_as_refused(&app, &single).await;
    let replayed = app
        .request(
            Method::POST,
            &format!("/api/v1/events/dead-letter/{single}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::ACCEPTED);
    wait_all_sent(&app, Duration::from_secs(30)).await;
    let mut expected: HashSet<String> = buried.iter().map(|(id, _)| id.clone()).collect();
    expected.insert(single.clone());
    let envelopes = consume(&topic, &expected).await;
    assert!(
        envelopes
            .iter()
            .any(|e| e["id"] == single && e["seq"] == single_seq),
        "the event replayed by id lost its seq"
    );
    let published: Vec<(String, i64)> = envelopes
        .iter()
        // (The markers of the gaps are on the same key.)
        .filter(|e| e["aggregate_id"] == "buried" && e["type"] == "test.order")
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(published, buried);
    assert!(dead_ids(&app).await.is_empty());
}

#[tokio::test]
async fn a_missing_events_topic_is_created_at_start() {
    let topic = format!("created-{}", Uuid::new_v4().simple());
    let kafka = brokers();
    let events_topic = topic.clone();
    let app = spawn_app_with(move |s| {
        s.kafka_brokers = Some(kafka);
        s.events_topic = events_topic;
        s.events_topic_spec.partitions = 2;
        s.outbox_max_attempts = 1;
    })
    .await;
    make_events(&app).await;
    wait_all_sent(&app, Duration::from_secs(30)).await;
    let expected = outbox_ids(&app).await;
    let envelopes = consume(&topic, &expected).await;
    assert_eq!(envelopes.len(), expected.len());
    assert!(dead_ids(&app).await.is_empty());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "topic-check")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 2);

    // A topic that cannot be created as asked (more partitions than Kafka
    // allows) stops the start, saying why.
    let settings = crate::helpers::test_settings("rw_test_refused", |s| {
        s.kafka_brokers = Some(brokers());
        s.events_topic = format!("refused-{}", Uuid::new_v4().simple());
        s.events_topic_spec.partitions = 200_000;
    })
    .await;
    let refused = rollway::startup::Application::build(settings).await;
    let error = format!("{:#}", refused.err().expect("the start is refused"));
    assert!(error.contains("cannot be created"), "{error}");
}

/// The relay's recorded floor: every event below it is settled.
async fn floor_seq(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT floor_seq FROM relay_leases WHERE name = 'outbox'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_event_committed_after_later_ones_is_still_relayed() {
    let topic = format!("events-{}", Uuid::new_v4().simple());
    make_topic(&brokers(), &topic, 1).await;
    let app = spawn_with_topic(&topic, 10).await;
    // A transaction takes a sequence number and stays open while later
    // events are written, committed and relayed.
    let late_id = Uuid::now_v7();
    let mut held = app.pool.begin().await.unwrap();
    let late_seq: i64 = sqlx::query_scalar(
        "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, 'test', 'late', 'test.late', '{}') RETURNING seq",
    )
    .bind(late_id)
    .fetch_one(&mut *held)
    .await
    .unwrap();
    make_events(&app).await;
    let started = Instant::now();
    loop {
        let (later, unsent): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL) FROM event_outbox WHERE seq > $1",
        )
        .bind(late_seq)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if later >= 5 && unsent == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{unsent} of {later} later events unsent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The later events left, but the relay's floor waits for the open
    // transaction's number.
    let floor = floor_seq(&app).await;
    assert!(
        floor <= late_seq,
        "floor {floor} passed open seq {late_seq}"
    );
    held.commit().await.unwrap();
    wait_all_sent(&app, Duration::from_secs(30)).await;
    let expected = outbox_ids(&app).await;
    assert!(expected.contains(&late_id.to_string()));
    let envelopes = consume(&topic, &expected).await;
    assert!(envelopes.iter().any(|e| e["id"] == late_id.to_string()));
    // Once settled, the floor passes it.
    let started = Instant::now();
    loop {
        let floor = floor_seq(&app).await;
        if floor > late_seq {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "floor stays at {floor}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every key's envelopes, in the order they arrived (one key lives in one
/// partition, whose order the consumer keeps), repeats dropped.
fn arrival_by_key(envelopes: &[Value]) -> HashMap<String, Vec<i64>> {
    let mut seen = HashSet::new();
    let mut keys: HashMap<String, Vec<i64>> = HashMap::new();
    for e in envelopes {
        if seen.insert(e["id"].as_str().unwrap().to_owned()) {
            let key = format!(
                "{}:{}",
                e["aggregate_type"].as_str().unwrap(),
                e["aggregate_id"].as_str().unwrap()
            );
            keys.entry(key)
                .or_default()
                .push(e["seq"].as_i64().unwrap());
        }
    }
    keys
}

#[tokio::test]
async fn each_key_arrives_in_seq_order_under_a_rollout() {
    let topic = format!("events-{}", Uuid::new_v4().simple());
    make_topic(&brokers(), &topic, 3).await;
    let kafka = brokers();
    let events_topic = topic.clone();
    let (app, prefix) = spawn_pipeline_with(move |s| {
        s.kafka_brokers = Some(kafka);
        s.events_topic = events_topic;
    })
    .await;
    let mut options = sim_options(&app, &prefix, 200, &["esp32"]);
    options.fail_rate = 0.2;
    options.duplicates = 0.1;
    options.out_of_order = 0.1;
    let sim = Simulator::start(options).await.unwrap();
    let firmware = app.upload_esp32("7.1.0").await;
    let rollout = json!({ "plugin": "rollout-percent", "config": { "batches": [25, 100], "success_threshold": 50 } });
    let job = create_job(&app, &firmware, rollout).await;
    rollout_settles(&app, &job, sim).await;
    let expected = outbox_ids(&app).await;
    let envelopes = consume(&topic, &expected).await;
    let keys = assert_keys_in_seq_order(&envelopes);
    assert!(keys > 200, "{keys} keys");
}

/// Waits for the simulated fleet's job to end, stops the fleet, and waits
/// for the relay to send every event.
async fn rollout_settles(app: &TestApp, job: &str, sim: Simulator) {
    wait_for(
        app,
        job,
        &["completed", "failed", "paused"],
        Duration::from_secs(240),
    )
    .await;
    sim.stop().await;
    wait_all_sent(app, Duration::from_secs(120)).await;
}

/// Each key's envelopes arrived in `seq` order; returns how many keys.
pub fn assert_keys_in_seq_order(envelopes: &[Value]) -> usize {
    let keys = arrival_by_key(envelopes);
    let inversions: Vec<String> = keys
        .iter()
        .filter(|(_, seqs)| seqs.windows(2).any(|w| w[0] > w[1]))
        .map(|(key, seqs)| format!("{key}: {seqs:?}"))
        .collect();
    assert!(inversions.is_empty(), "out of seq order: {inversions:?}");
    keys.len()
}

#[tokio::test]
async fn a_key_waits_behind_its_event_that_waits_for_a_retry() {
    let topic = format!("events-{}", Uuid::new_v4().simple());
    make_topic(&brokers(), &topic, 1).await;
    let app = spawn_with_topic(&topic, 10).await;
    // An event of key test:held that failed and waits for its retry, then
    // a later event of the same key and one of another key.
    let (first, _) = insert_event(&app, "held", 10, 3600.0).await;
    sqlx::query(
        "UPDATE event_outbox SET attempts = 1, last_error = 'no leader' WHERE id = $1::uuid",
    )
    .bind(&first)
    .execute(&app.pool)
    .await
    .unwrap();
    let (second, _) = insert_event(&app, "held", 10, 0.0).await;
    let (other, other_seq) = insert_event(&app, "free", 10, 0.0).await;
    let unsent = |id: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT sent_at IS NULL FROM event_outbox WHERE id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let started = Instant::now();
    while unsent(other.clone()).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing relayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other key went out; the later event of the waiting key waits,
    // and waiting is no failure.
    assert!(unsent(second.clone()).await);
    assert!(unsent(first.clone()).await);
    assert_eq!(metric(&app, "outbox_errors_total", &[]).await, 0.0);
    // The relay's floor passes the waiting events (they are found again
    // through the retry index): its reads do not grow while they wait.
    let started = Instant::now();
    while floor_seq(&app).await <= other_seq {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the floor stays behind the waiting events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The relay's lag shows, and goes when the events leave.
    let started = Instant::now();
    while metric(&app, "outbox_oldest_pending_seconds", &[]).await <= 0.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no lag shown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unsent(first.clone()).await);
    // Its retry is due: both leave, in order.
    sqlx::query("UPDATE event_outbox SET next_attempt_at = now() WHERE id = $1::uuid")
        .bind(&first)
        .execute(&app.pool)
        .await
        .unwrap();
    wait_all_sent(&app, Duration::from_secs(30)).await;
    let started = Instant::now();
    while metric(&app, "outbox_oldest_pending_seconds", &[]).await > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "lag still shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: HashSet<String> = [first.clone(), second.clone(), other].into();
    let envelopes = consume(&topic, &expected).await;
    let order: Vec<String> = envelopes
        .iter()
        .filter(|e| e["aggregate_id"] == "held")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, [first, second]);
    assert_eq!(metric(&app, "outbox_errors_total", &[]).await, 0.0);
    let attempts: i64 =
        sqlx::query_scalar("SELECT coalesce(max(attempts), 0)::int8 FROM event_outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 0);
}

/// The broker is replaced mid-rollout by a fresh one (no topic, no
/// producer ids): the relay creates the topic again and replaces its
/// producer; nothing is dead-lettered, and every event sent after the
/// replacement is on the new broker, each key in `seq` order.
#[tokio::test]
async fn a_replaced_broker_gets_every_later_event_and_none_is_buried() {
    let port = crate::procs::free_port();
    let mut first = crate::procs::kafka_with(
        &crate::helpers::temp_dir("kafka-a"),
        port,
        "memory://tansu/",
    )
    .await;
    let kafka = format!("127.0.0.1:{port}");
    let topic = format!("events-{}", Uuid::new_v4().simple());
    let (events_topic, brokers) = (topic.clone(), kafka.clone());
    let (app, prefix) = spawn_pipeline_with(move |s| {
        s.kafka_brokers = Some(brokers);
        s.events_topic = events_topic;
        s.events_topic_spec.partitions = 3;
        s.outbox_max_attempts = 2;
    })
    .await;
    let mut options = sim_options(&app, &prefix, 200, &["esp32"]);
    options.fail_rate = 0.2;
    let sim = Simulator::start(options).await.unwrap();
    let firmware = app.upload_esp32("7.2.0").await;
    let rollout = json!({ "plugin": "rollout-percent", "config": { "batches": [30, 100], "success_threshold": 50 } });
    let job = create_job(&app, &firmware, rollout).await;
    let started = Instant::now();
    loop {
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM event_outbox WHERE sent_at IS NOT NULL AND event_type = 'execution.status.changed'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if sent >= 100 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{sent} sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill();
    // Events written from now on cannot have reached the dead broker.
    let last_before: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM event_outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // While no broker answers, the backlog shows within seconds (a round
    // waits on the broker far longer).
    let down = Instant::now();
    while metric(&app, "outbox_pending_total", &[]).await == 0.0 {
        assert!(
            down.elapsed() < Duration::from_secs(8),
            "the backlog did not show"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _second = crate::procs::kafka_with(
        &crate::helpers::temp_dir("kafka-b"),
        port,
        "memory://tansu/",
    )
    .await;
    rollout_settles(&app, &job, sim).await;
    assert!(dead_ids(&app).await.is_empty(), "events were dead-lettered");
    let later: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM event_outbox WHERE seq > $1")
        .bind(last_before)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(
        later.len() >= 50,
        "{} events after the replacement",
        later.len()
    );
    let expected: HashSet<String> = later.iter().map(ToString::to_string).collect();
    let envelopes = consume_from(&kafka, &topic, &expected, Duration::from_secs(60)).await;
    assert_keys_in_seq_order(&envelopes);
}

//! The outbox relay against the real Kafka-API broker.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, metric, spawn_app_with};

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
    rollway::ingest::kafka::ensure_topic(&brokers(), &topic, 3)
        .await
        .unwrap();
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

#[tokio::test]
async fn failing_events_are_dead_lettered_and_can_be_replayed() {
    // The topic does not exist (the broker does not create topics), so
    // every publication fails.
    let topic = format!("missing-{}", Uuid::new_v4().simple());
    let app = spawn_with_topic(&topic, 2).await;
    make_events(&app).await;
    let started = Instant::now();
    let expected = loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE sent_at IS NULL")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let dead: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM event_dead_letter")
            .fetch_all(&app.pool)
            .await
            .unwrap();
        if pending == 0 && !dead.is_empty() {
            break dead
                .into_iter()
                .map(|id| id.to_string())
                .collect::<HashSet<_>>();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{pending} pending, {} dead",
            dead.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(metric(&app, "outbox_errors_total", &[]).await >= expected.len() as f64);
    let listed: Value = app
        .get("/api/v1/events/dead-letter")
        .await
        .json()
        .await
        .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), expected.len());
    assert_eq!(listed[0]["attempts"], 2);
    assert!(!listed[0]["last_error"].as_str().unwrap().is_empty());
    let operator = app.token("operator").await;
    let forbidden = app
        .request_as(&operator, Method::GET, "/api/v1/events/dead-letter")
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    // Once the topic exists, replayed events are published.
    rollway::ingest::kafka::ensure_topic(&brokers(), &topic, 1)
        .await
        .unwrap();
    // Give the relay's producer a metadata refresh to learn of the topic.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in &expected {
        let replayed = app
            .request(
                Method::POST,
                &format!("/api/v1/events/dead-letter/{id}/replay"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(replayed.status(), StatusCode::ACCEPTED);
    }
    let missing = app
        .request(
            Method::POST,
            &format!("/api/v1/events/dead-letter/{}/replay", Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    wait_all_sent(&app, Duration::from_secs(30)).await;
    let resent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE sent_at IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        resent as usize,
        expected.len(),
        "replayed events were not published"
    );
    let envelopes = consume(&topic, &expected).await;
    let ids: HashSet<String> = envelopes
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected);
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
    rollway::ingest::kafka::ensure_topic(&brokers(), &topic, 1)
        .await
        .unwrap();
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

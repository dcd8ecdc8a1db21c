//! Device statuses from Kafka, for brokers that bridge MQTT to Kafka (EMQX
//! rules, Kafka Connect MQTT sources). Each record carries the MQTT topic
//! the device published on (header `mqtt_topic`, else the record key) and
//! the raw payload. A consumer group shares the partitions between
//! replicas; offsets are committed only after the database commit.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{BATCH, Ingest, RawStatus};

fn topic_of(message: &OwnedMessage) -> String {
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            if header.key == "mqtt_topic"
                && let Some(value) = header.value
            {
                return String::from_utf8_lossy(value).into_owned();
            }
        }
    }
    message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default()
}

impl Ingest {
    /// Consumes `topic` in the group `group`, applying records in batches
    /// and committing their offsets after each database commit.
    pub async fn run_kafka(
        self,
        brokers: String,
        topic: String,
        group: String,
        shutdown: CancellationToken,
    ) {
        let consumer: StreamConsumer = match ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .create()
        {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::error!(%error, "creating the Kafka status consumer");
                return;
            }
        };
        if let Err(error) = consumer.subscribe(&[&topic]) {
            tracing::error!(%error, topic, "subscribing to the Kafka status topic");
            return;
        }
        tracing::info!(topic, group, "consuming device statuses from Kafka");
        loop {
            let first = tokio::select! {
                message = consumer.recv() => message,
                () = shutdown.cancelled() => break,
            };
            let first = match first {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(%error, "receiving from Kafka");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(10);
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(message)) => batch.push(message.detach()),
                    _ => break,
                }
            }
            let raw: Vec<RawStatus> = batch
                .iter()
                .map(|m| RawStatus {
                    topic: topic_of(m),
                    payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                })
                .collect();
            if !self.process_until_applied(raw, &shutdown).await {
                return;
            }
            // The next offset to read, per partition, now that the batch is committed.
            let mut next: HashMap<(String, i32), i64> = HashMap::new();
            for m in &batch {
                let entry = next
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_insert(0);
                *entry = (*entry).max(m.offset() + 1);
            }
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), offset) in next {
                if let Err(error) =
                    offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))
                {
                    tracing::warn!(%error, "recording a Kafka offset");
                }
            }
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                // The records will be redelivered and found to be duplicates.
                tracing::warn!(%error, "committing Kafka offsets");
            }
        }
    }
}

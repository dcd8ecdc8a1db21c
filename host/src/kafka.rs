//! Kafka topic administration shared by the outbox relay (the events
//! topic) and the Kafka status source (the status topic): Rollway creates
//! its topics when they are missing, as production brokers do not create
//! topics on demand.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as Code;

/// How a topic is to be created when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    pub partitions: i32,
    /// Replicas of each partition; -1: the broker's default
    /// (`default.replication.factor`).
    pub replication: i32,
}

/// Why a topic could not be made sure of.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// No broker answered in time, or the cluster is between leaders: try
    /// again later.
    #[error("no Kafka broker answered: {0}")]
    Unreachable(String),
    /// A broker answered and refused (not authorised, an invalid partition
    /// count or replication factor, a policy): trying again will not help.
    #[error("the Kafka broker refused to create topic {topic}: {reason}")]
    Refused { topic: String, reason: String },
}

/// Creates `topic` when it does not exist; returns whether it created it.
/// The topic is looked up first: an account that may produce but not
/// create topics is refused a creation even of a topic that exists.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    spec: TopicSpec,
    wait: Duration,
) -> Result<bool, TopicError> {
    if exists(brokers, topic, wait).await? {
        return Ok(false);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| TopicError::Refused {
            topic: topic.to_owned(),
            reason: format!("the admin client could not be created: {e}"),
        })?;
    let replication = TopicReplication::Fixed(spec.replication);
    let topics = [NewTopic::new(topic, spec.partitions, replication)];
    let options = AdminOptions::new()
        .request_timeout(Some(wait))
        .operation_timeout(Some(wait));
    let request = admin.create_topics(&topics, &options);
    let results = match tokio::time::timeout(wait + Duration::from_secs(1), request).await {
        Ok(Ok(results)) => results,
        Ok(Err(error)) => return Err(classify(topic, &error)),
        Err(_) => {
            return Err(TopicError::Unreachable(format!(
                "no answer within {wait:?}"
            )));
        }
    };
    let mut created = false;
    for result in results {
        match result {
            Ok(_) => created = true,
            Err((_, Code::TopicAlreadyExists)) => {}
            Err((_, code)) if transient(code) => {
                return Err(TopicError::Unreachable(code.to_string()));
            }
            Err((name, code)) => {
                return Err(TopicError::Refused {
                    topic: name,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(created)
}

/// Whether the cluster knows `topic` (without asking it to create it).
async fn exists(brokers: &str, topic: &str, wait: Duration) -> Result<bool, TopicError> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| TopicError::Unreachable(format!("a metadata client: {e}")))?;
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || client.fetch_metadata(Some(&name), wait))
        .await
        .map_err(|e| TopicError::Unreachable(e.to_string()))?
        .map_err(|e| TopicError::Unreachable(e.to_string()))?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

fn classify(topic: &str, error: &KafkaError) -> TopicError {
    if let KafkaError::AdminOpCreation(reason) = error {
        // The client refused the request itself (a partition count or
        // replication factor out of range).
        return TopicError::Refused {
            topic: topic.to_owned(),
            reason: reason.clone(),
        };
    }
    match error.rdkafka_error_code() {
        Some(code) if !transient(code) => TopicError::Refused {
            topic: topic.to_owned(),
            reason: code.to_string(),
        },
        _ => TopicError::Unreachable(error.to_string()),
    }
}

/// Codes a later try may not meet: no broker, no controller, time.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::OperationTimedOut
            | Code::RequestTimedOut
            | Code::TimedOutQueue
            | Code::BrokerTransportFailure
            | Code::BrokerDestroy
            | Code::AllBrokersDown
            | Code::Resolve
            | Code::NotController
            | Code::LeaderNotAvailable
            | Code::BrokerNotAvailable
            | Code::NetworkException
            | Code::CoordinatorNotAvailable
            | Code::NotCoordinator
    )
}

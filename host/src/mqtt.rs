//! The host's MQTT connection: one rumqttc client per process whose event
//! loop runs on its own task and is never blocked by database work.
//! Incoming status messages go to the ingest worker through a channel; acks
//! are sent by the worker after its database commit (manual acks), and
//! leave in the order the messages arrived, as MQTT 3.1.1 (4.6) requires,
//! however the ingest lanes' commits interleave.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// QoS 0 messages held for a consumer that is behind, at most.
const MAX_HELD_QOS0: usize = 10_000;

/// The largest packet MQTT can express (a remaining length of 268,435,455
/// bytes plus the fixed header). The host's client accepts anything the
/// broker forwards: a packet over the client's limit would fail the whole
/// connection, and the broker would redeliver the unacked message on every
/// reconnection, so one device could stop ingestion and dispatch for good.
/// Oversized statuses are refused (and acked) by ingestion instead; the
/// broker's own `max_packet_size` (docs/BROKER-ACL.md) is what bounds the
/// memory one message can take.
pub const MAX_INCOMING_PACKET: usize = 268_435_455 + 5;

/// Where Mosquitto publishes how many messages it dropped (queue and
/// in-flight limits) since it started; retained, and sent again on change.
/// With `ROLLWAY_MQTT_DROPPED_TOPIC` set to it, the host mirrors the count
/// in `mqtt_broker_messages_dropped`, so that loss the broker causes is
/// visible beside Rollway's own metrics. Off by default: some brokers
/// (rumqttd, EMQX with `deny_action = disconnect`) drop a client that
/// subscribes to a `$SYS` topic it may not read.
pub const MOSQUITTO_DROPPED_TOPIC: &str = "$SYS/broker/publish/messages/dropped";

/// Largest packet the host publishes (commands are checked far below it).
const MAX_OUTGOING_PACKET: usize = 256 * 1024;

/// Whether the host's MQTT connection is up, for `/readyz`.
#[derive(Clone, Debug)]
pub struct LinkState(Arc<AtomicU8>);

impl LinkState {
    const NOT_CONFIGURED: u8 = 0;
    const DOWN: u8 = 1;
    const UP: u8 = 2;

    /// No broker is configured: nothing to wait for.
    pub fn not_configured() -> Self {
        Self(Arc::new(AtomicU8::new(Self::NOT_CONFIGURED)))
    }

    fn set(&self, up: bool) {
        self.0
            .store(if up { Self::UP } else { Self::DOWN }, Ordering::Release);
    }

    /// `None` without a broker; else whether the connection is up.
    pub fn connected(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            Self::NOT_CONFIGURED => None,
            state => Some(state == Self::UP),
        }
    }
}

/// Chooses the process's TLS crypto provider (ring), once. Rustls cannot
/// pick one itself when the dependency tree enables two, and MQTT over
/// TLS needs one; anything that opens an MQTT connection calls this first.
pub fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another part of the process installed one first; fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Options from an `mqtt://` (or `mqtts://`) URL; credentials may be in the
/// URL. `mqtts://` verifies the broker against the system's root
/// certificates, or against `ca` (PEM) when given.
pub fn options(url: &str, client_id: &str, ca: Option<&[u8]>) -> anyhow::Result<MqttOptions> {
    tls_provider();
    let mut parsed = url::Url::parse(url).context("MQTT_URL is not a URL")?;
    // The client id names the replica's persistent session (see
    // `replicas`): it is never taken from the URL.
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "client_id")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("client_id", client_id);
    let tls = matches!(parsed.scheme(), "mqtts" | "ssl");
    let mut options =
        MqttOptions::parse_url(parsed.as_str()).map_err(|e| anyhow::anyhow!("MQTT_URL: {e}"))?;
    match (tls, ca) {
        (true, Some(ca)) => {
            options.set_transport(rumqttc::Transport::tls(ca.to_vec(), None, None));
        }
        (false, Some(_)) => {
            anyhow::bail!("ROLLWAY_MQTT_CA_FILE is set but MQTT_URL is not mqtts://")
        }
        _ => {}
    }
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(200)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_request_channel_capacity(10_000);
    Ok(options)
}

/// A running connection.
#[derive(Clone)]
pub struct MqttLink {
    pub client: AsyncClient,
    /// Counts connections: bumped on every CONNACK.
    generation: Arc<AtomicU64>,
    /// Committed messages on their way to the acker (`ack_in_order`).
    acks: mpsc::UnboundedSender<Committed>,
    /// Up or down, as the event loop last saw it.
    state: LinkState,
}

/// A received message and the connection it came on.
#[derive(Debug)]
pub struct Incoming {
    pub publish: Publish,
    generation: u64,
    /// Its place among the connection's QoS 1 and 2 messages (none for
    /// QoS 0, which is not acked).
    order: Option<u64>,
}

/// A message whose status is committed, to be acked in its turn.
struct Committed {
    generation: u64,
    order: u64,
    publish: Publish,
}

impl MqttLink {
    /// Acks a message after its commit, on the connection it came on only
    /// and after every message that arrived before it. A packet id is only
    /// meaningful on its own connection: after a reconnection the broker
    /// sends unacked messages again (acked then, as duplicates), and an old
    /// id acked on the new connection could acknowledge a different message
    /// that was never applied.
    pub fn ack(&self, message: &Incoming) {
        let Some(order) = message.order else {
            return;
        };
        // The acker lives as long as the link's client.
        let _ = self.acks.send(Committed {
            generation: message.generation,
            order,
            publish: message.publish.clone(),
        });
    }
}

/// Sends the acks of committed messages in the order they arrived: ingest
/// lanes commit concurrently, and a broker may drop a client whose acks
/// come out of order (rumqttd does). Runs until every link is dropped.
async fn ack_in_order(
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    mut committed: mpsc::UnboundedReceiver<Committed>,
) {
    let mut current = 0u64;
    let mut next = 0u64;
    let mut ready: BTreeMap<u64, Publish> = BTreeMap::new();
    while let Some(message) = committed.recv().await {
        if message.generation < current {
            continue; // Its connection is gone; the broker sends it again.
        }
        if message.generation > current {
            current = message.generation;
            next = 0;
            ready.clear();
        }
        ready.insert(message.order, message.publish);
        while let Some(publish) = ready.remove(&next) {
            next += 1;
            if generation.load(Ordering::Acquire) != current {
                continue;
            }
            if let Err(error) = client.ack(&publish).await {
                tracing::warn!(%error, "acking a message");
            }
        }
    }
}

/// Connects and drives the event loop until `shutdown`. `subscriptions` are
/// (re)made on every connection; incoming publishes go to `incoming`.
pub fn spawn(
    options: MqttOptions,
    subscriptions: Vec<String>,
    incoming: Option<mpsc::Sender<Incoming>>,
    metrics: Metrics,
    state: LinkState,
    dropped_topic: Option<String>,
    shutdown: CancellationToken,
) -> MqttLink {
    let (client, eventloop) = AsyncClient::new(options, 10_000);
    let (acks, committed) = mpsc::unbounded_channel();
    state.set(false);
    let link = MqttLink {
        client,
        generation: Arc::new(AtomicU64::new(0)),
        acks,
        state,
    };
    tokio::spawn(ack_in_order(
        link.client.clone(),
        link.generation.clone(),
        committed,
    ));
    tokio::spawn(drive(
        eventloop,
        link.clone(),
        subscriptions,
        incoming,
        metrics,
        dropped_topic,
        shutdown,
    ));
    link
}

async fn drive(
    mut eventloop: EventLoop,
    link: MqttLink,
    subscriptions: Vec<String>,
    incoming: Option<mpsc::Sender<Incoming>>,
    metrics: Metrics,
    dropped_topic: Option<String>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    // Messages received and not yet taken by the consumer. The event loop
    // must never wait for the consumer: the consumer's acks (and every
    // publish) go out only while it is polled, so a loop blocked on a full
    // channel and a consumer blocked on its acks would wait on each other
    // for ever. QoS 1 messages here are bounded by the broker's in-flight
    // window; QoS 0 ones beyond `MAX_HELD_QOS0` are dropped, as QoS 0 allows.
    let mut held: VecDeque<Incoming> = VecDeque::new();
    let mut held_qos0 = 0usize;
    // The place of the next QoS 1 or 2 message on this connection.
    let mut order = 0u64;
    loop {
        if let Some(tx) = &incoming {
            while let Some(message) = held.pop_front() {
                let qos0 = message.publish.qos == QoS::AtMostOnce;
                match tx.try_send(message) {
                    Ok(()) => held_qos0 -= usize::from(qos0),
                    Err(mpsc::error::TrySendError::Full(message)) => {
                        held.push_front(message);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
        let room = async {
            match &incoming {
                Some(tx) if !held.is_empty() => tx.reserve().await.is_ok(),
                _ => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = eventloop.poll() => event,
            // The consumer has room again: hand over what is held.
            _ = room => continue,
            () = shutdown.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                if !connack.session_present {
                    // A new session: whatever the broker held for us is gone
                    // (first start, or a broker that lost its state).
                    tracing::warn!(
                        "MQTT session is new; the broker kept no state for this replica"
                    );
                }
                link.generation.fetch_add(1, Ordering::AcqRel);
                link.state.set(true);
                order = 0;
                backoff = Duration::from_millis(200);
                for topic in &subscriptions {
                    // try_subscribe: never wait on our own request channel here.
                    if let Err(error) = link.client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                        tracing::error!(%error, topic, "subscribing");
                    }
                }
                if let Some(topic) = &dropped_topic
                    && let Err(error) = link.client.try_subscribe(topic, QoS::AtMostOnce)
                {
                    tracing::warn!(%error, "subscribing to the broker's dropped-message count");
                }
                tracing::info!("MQTT connected");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if dropped_topic.as_deref() == Some(publish.topic.as_str()) {
                    if let Some(dropped) = std::str::from_utf8(&publish.payload)
                        .ok()
                        .and_then(|text| text.trim().parse::<i64>().ok())
                    {
                        let before = metrics.mqtt_broker_messages_dropped.get();
                        metrics.mqtt_broker_messages_dropped.set(dropped);
                        if dropped > before {
                            tracing::warn!(
                                dropped,
                                since = before,
                                "the MQTT broker reports dropped messages (queue or in-flight limits); see docs/BROKER-ACL.md"
                            );
                        }
                    }
                    continue;
                }
                if incoming.is_none() {
                    continue;
                }
                let qos0 = publish.qos == QoS::AtMostOnce;
                if qos0 && held_qos0 >= MAX_HELD_QOS0 {
                    metrics
                        .status_messages_total
                        .with_label_values(&["dropped_qos0", "held_queue_full"])
                        .inc();
                    continue;
                }
                held_qos0 += usize::from(qos0);
                let place = (!qos0).then(|| {
                    order += 1;
                    order - 1
                });
                held.push_back(Incoming {
                    publish,
                    generation: link.generation.load(Ordering::Acquire),
                    order: place,
                });
            }
            Ok(_) => {}
            Err(error) => {
                link.state.set(false);
                metrics
                    .dispatcher_mqtt_errors_total
                    .with_label_values(&["connection"])
                    .inc();
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    link.state.set(false);
    let _ = link.client.try_disconnect();
}

//! The host's MQTT connection: one rumqttc client per process whose event
//! loop runs on its own task and is never blocked by database work.
//! Incoming status messages go to the ingest worker through a channel; acks
//! are sent by the worker after its database commit (manual acks).

use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Options from an `mqtt://` (or `mqtts://`) URL; credentials may be in the URL.
pub fn options(url: &str, client_id: &str) -> anyhow::Result<MqttOptions> {
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
    let mut options =
        MqttOptions::parse_url(parsed.as_str()).map_err(|e| anyhow::anyhow!("MQTT_URL: {e}"))?;
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(200)
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_request_channel_capacity(10_000);
    Ok(options)
}

/// A running connection.
#[derive(Clone)]
pub struct MqttLink {
    pub client: AsyncClient,
}

/// Connects and drives the event loop until `shutdown`. `subscriptions` are
/// (re)made on every connection; incoming publishes go to `incoming`.
pub fn spawn(
    options: MqttOptions,
    subscriptions: Vec<String>,
    incoming: Option<mpsc::Sender<Publish>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> MqttLink {
    let (client, eventloop) = AsyncClient::new(options, 10_000);
    tokio::spawn(drive(
        eventloop,
        client.clone(),
        subscriptions,
        incoming,
        metrics,
        shutdown,
    ));
    MqttLink { client }
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    incoming: Option<mpsc::Sender<Publish>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            () = shutdown.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                for topic in &subscriptions {
                    // try_subscribe: never wait on our own request channel here.
                    if let Err(error) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                        tracing::error!(%error, topic, "subscribing");
                    }
                }
                tracing::info!("MQTT connected");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(tx) = &incoming
                    && tx.send(publish).await.is_err()
                {
                    break;
                }
            }
            Ok(_) => {}
            Err(error) => {
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
    let _ = client.try_disconnect();
}

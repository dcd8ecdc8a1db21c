//! MQTT for the benchmarks: a connection whose event loop runs on its own
//! task (`Link`), the load generator (`publish`: several connections, QoS 1,
//! flat out, paced at a rate, or with a bounded number of statuses not yet
//! applied), and the broker's version.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Outgoing QoS 1 messages one connection may have unacknowledged.
pub const INFLIGHT: u16 = 1000;

/// Wall-clock microseconds since the Unix epoch: comparable with
/// PostgreSQL's `now()` on the same machine.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// A short random suffix for client ids and topic prefixes.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Options from an `mqtt://host:port` URL with our own client id: the
/// host's URL handling (`rollway::mqtt::options`), with the load
/// generator's windows. Callers set acks and session persistence.
pub fn options(url: &str, client_id: &str) -> anyhow::Result<MqttOptions> {
    let mut options = rollway::mqtt::options(url, client_id, None)?;
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(INFLIGHT)
        .set_max_packet_size(1024 * 1024, 1024 * 1024)
        .set_request_channel_capacity(1000);
    Ok(options)
}

/// How a connection is set up.
#[derive(Debug, Clone, Default)]
pub struct LinkOptions {
    /// Subscribed to at QoS 1 before `connect` returns.
    pub subscribe: Option<String>,
    /// Acks are sent by the caller (`client.ack`) instead of on receipt.
    pub manual_acks: bool,
    /// A session the broker keeps (clean session off), as the host's.
    pub persistent: bool,
}

/// A connection whose event loop runs on its own task. Incoming messages
/// go to a callback with a state of the caller's, returned by `finish`.
pub struct Link<S> {
    pub client: AsyncClient,
    pub client_id: String,
    /// PUBACKs received: our QoS 1 messages the broker has taken.
    pub acked: Arc<AtomicU64>,
    /// Messages received.
    pub received: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<S>>,
}

/// Connects and waits for the CONNACK (and the SUBACK when subscribing).
pub async fn connect<S, F>(
    url: &str,
    client_id: &str,
    setup: LinkOptions,
    state: S,
    on_publish: F,
) -> anyhow::Result<Link<S>>
where
    S: Send + 'static,
    F: FnMut(&mut S, Publish) + Send + 'static,
{
    let mut options = options(url, client_id)?;
    options
        .set_manual_acks(setup.manual_acks)
        .set_clean_session(!setup.persistent);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    if let Some(filter) = &setup.subscribe {
        client
            .subscribe(filter.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|e| anyhow!("subscribing to {filter}: {e}"))?;
    }
    let wants_suback = setup.subscribe.is_some();
    let acked = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let task = {
        let acked = acked.clone();
        let received = received.clone();
        let id = client_id.to_owned();
        let mut state = state;
        let mut on_publish = on_publish;
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                let event = tokio::select! {
                    event = eventloop.poll() => event,
                    _ = &mut stop_rx => break,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if !wants_suback && let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        received.fetch_add(1, Ordering::Relaxed);
                        on_publish(&mut state, publish);
                    }
                    Ok(_) => {}
                    Err(error) => bail!("MQTT connection {id} lost: {error}"),
                }
            }
            Ok(state)
        })
    };
    let mut link = Link {
        client,
        client_id: client_id.to_owned(),
        acked,
        received,
        stop: Some(stop_tx),
        task,
    };
    match tokio::time::timeout(Duration::from_secs(15), ready_rx).await {
        Ok(Ok(())) => Ok(link),
        _ => {
            if link.task.is_finished() {
                let error = link
                    .finish_inner()
                    .await
                    .err()
                    .unwrap_or_else(|| anyhow!("the connection closed"));
                return Err(error.context(format!("connecting to the MQTT broker at {url}")));
            }
            link.task.abort();
            bail!(
                "the MQTT broker at {url} did not accept client {client_id}{} within 15 s",
                if wants_suback {
                    " and its subscription"
                } else {
                    ""
                }
            )
        }
    }
}

impl<S> Link<S> {
    /// Whether the event loop stopped (a lost connection is an error).
    pub fn is_closed(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the event loop and returns the state.
    pub async fn finish(mut self) -> anyhow::Result<S> {
        self.finish_inner().await
    }

    async fn finish_inner(&mut self) -> anyhow::Result<S> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .with_context(|| format!("the MQTT task of {} failed", self.client_id))?
    }
}

/// Ends the persistent session `client_id` left on the broker: connecting
/// with a clean session discards it.
pub async fn discard_session(url: &str, client_id: &str) -> anyhow::Result<()> {
    let link = connect(url, client_id, LinkOptions::default(), (), |_, _| {}).await?;
    link.finish().await
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// How fast the generator publishes.
#[derive(Debug, Clone)]
pub enum Pace {
    /// As fast as the broker takes QoS 1 messages.
    FlatOut,
    /// This many messages per second over all connections.
    Rate(f64),
    /// Flat out while fewer than `limit` published messages are not yet
    /// counted in `done` (applied, or received): the broker's queue stays
    /// bounded, the consumer's capacity sets the pace.
    Window { limit: u64, done: Arc<AtomicU64> },
}

/// Publishes every lane on a connection of its own, all starting together,
/// and returns when the broker acknowledged every message. Returns the
/// instant (µs since the epoch) each message was handed to its client, per
/// lane in lane order. Messages of one lane keep their order.
pub async fn publish(
    url: &str,
    label: &str,
    lanes: Vec<Vec<Message>>,
    pace: Pace,
    timeout: Duration,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let lane_count = lanes.len().max(1);
    let mut links = Vec::with_capacity(lanes.len());
    let run = suffix();
    for i in 0..lanes.len() {
        let id = format!("{label}-pub{i}-{run}");
        links.push(connect(url, &id, LinkOptions::default(), (), |_, _| {}).await?);
    }
    let published = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(lanes.len());
    for (link, lane) in links.into_iter().zip(lanes) {
        let pace = pace.clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            publish_lane(link, lane, pace, lane_count, start, published).await
        }));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut times = Vec::with_capacity(tasks.len());
    for i in 0..tasks.len() {
        let outcome = tokio::time::timeout_at(deadline, &mut tasks[i]).await;
        match outcome {
            Ok(Ok(Ok(lane_times))) => times.push(lane_times),
            Ok(Ok(Err(error))) => {
                tasks.iter().for_each(|t| t.abort());
                return Err(error.context(format!("publishing ({label})")));
            }
            Ok(Err(join)) => {
                tasks.iter().for_each(|t| t.abort());
                bail!("a publishing task failed ({label}): {join}");
            }
            Err(_) => {
                tasks.iter().for_each(|t| t.abort());
                bail!(
                    "publishing did not finish within {timeout:?} ({label}): {} messages handed to the clients",
                    published.load(Ordering::Relaxed)
                );
            }
        }
    }
    Ok(times)
}

async fn publish_lane(
    link: Link<()>,
    lane: Vec<Message>,
    pace: Pace,
    lanes: usize,
    start: Instant,
    published: Arc<AtomicU64>,
) -> anyhow::Result<Vec<i64>> {
    let total = lane.len() as u64;
    let mut times = Vec::with_capacity(lane.len());
    for (i, message) in lane.into_iter().enumerate() {
        match &pace {
            Pace::FlatOut => {}
            Pace::Rate(rate) => {
                let per_lane = (rate / lanes as f64).max(0.001);
                let due = start + Duration::from_secs_f64(i as f64 / per_lane);
                if due > Instant::now() {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                }
            }
            Pace::Window { limit, done } => {
                while published
                    .load(Ordering::Relaxed)
                    .saturating_sub(done.load(Ordering::Relaxed))
                    >= *limit
                {
                    if link.is_closed() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        times.push(now_us());
        published.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = link
            .client
            .publish(message.topic, QoS::AtLeastOnce, false, message.payload)
            .await
        {
            let cause = if link.is_closed() {
                link.finish().await.err()
            } else {
                None
            };
            return Err(cause.unwrap_or_else(|| anyhow!("publishing failed: {error}")));
        }
    }
    // Done when the broker has taken every message.
    while link.acked.load(Ordering::Relaxed) < total {
        if link.is_closed() {
            return Err(link
                .finish()
                .await
                .err()
                .unwrap_or_else(|| anyhow!("the connection closed before every PUBACK")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    link.finish().await?;
    Ok(times)
}

/// Waits until `count` reaches `target`; fails when nothing moves for
/// `stall` or when `timeout` passes, saying how far it got.
pub async fn wait_count(
    what: &str,
    count: &AtomicU64,
    target: u64,
    stall: Duration,
    timeout: Duration,
    closed: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = count.load(Ordering::Relaxed);
    let mut moved = Instant::now();
    loop {
        let now = count.load(Ordering::Relaxed);
        if now >= target {
            return Ok(());
        }
        if now != last {
            last = now;
            moved = Instant::now();
        }
        if closed() {
            bail!("{what}: the connection closed after {now} of {target}");
        }
        if moved.elapsed() > stall {
            bail!("{what}: stuck at {now} of {target} for {stall:?}");
        }
        if started.elapsed() > timeout {
            bail!("{what}: only {now} of {target} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The broker's `$SYS/broker/version`, when it publishes one.
pub async fn broker_version(url: &str) -> Option<String> {
    let id = format!("rollway-bench-version-{}", suffix());
    let link = connect(
        url,
        &id,
        LinkOptions {
            subscribe: Some("$SYS/broker/version".into()),
            ..LinkOptions::default()
        },
        None::<String>,
        |state, publish| {
            *state = Some(String::from_utf8_lossy(&publish.payload).into_owned());
        },
    )
    .await
    .ok()?;
    let started = Instant::now();
    while link.received.load(Ordering::Relaxed) == 0 && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link.finish().await.ok().flatten()
}

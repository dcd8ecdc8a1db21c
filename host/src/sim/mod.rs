//! `rollway sim`: a simulated fleet. It registers its devices through the
//! API (Jetson gateways with STM32s behind them on a simulated CAN bus, and
//! ESP32s on their own), listens for commands over MQTT, checks each signed
//! manifest as a real device agent must (see SECURITY.md): signature by a
//! trusted key, device, execution, expiry, security counter; downloads the
//! firmware (resuming with `Range` after an injected interruption) reading
//! no more than the manifest's size, verifies digest and size, and reports `init`,
//! `downloading`, `flashing`, `rebooting`, then `done` or `error`. Faults on
//! demand: failures, duplicate and out-of-order statuses, latency.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use rand::Rng as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::domain::InstallPolicy;
use crate::manifest::{CancelManifest, Manifest};

/// What a device that stopped an update says.
const CANCEL_REASON: &str = "cancelled by the operator";

/// Why an update did not finish.
enum Stop {
    Failed(String),
    /// A cancel came before flashing.
    Cancelled,
}

impl From<String> for Stop {
    fn from(reason: String) -> Self {
        Stop::Failed(reason)
    }
}

impl From<&str> for Stop {
    fn from(reason: &str) -> Self {
        Stop::Failed(reason.to_owned())
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub api: String,
    pub token: String,
    pub mqtt_url: String,
    pub devices: u32,
    pub families: Vec<String>,
    /// Share of updates that fail.
    pub fail_rate: f64,
    /// Per-family failure rates, overriding `fail_rate`.
    pub family_fail_rates: HashMap<String, f64>,
    /// What a failing update reports (its class first, as device plugins
    /// classify it: `flash: …`, `power: …`).
    pub failure: String,
    /// Seeds which updates fail: each device's attempt fails by the draw a
    /// dry run of the same seed makes (`jobs::dry_run::fate`), so a job
    /// over this fleet fails the devices its dry run foretold. Without it
    /// failures are random.
    pub seed: Option<u64>,
    /// Tags of the device at each index, besides `fleet: simulated`
    /// (e.g. a site and a ring).
    pub tags: Option<fn(usize) -> serde_json::Map<String, Value>>,
    /// Share of updates during which the device drops off the network for
    /// a few seconds, then carries on (a truck in a tunnel).
    pub dropouts: f64,
    /// Share of statuses sent twice.
    pub duplicates: f64,
    /// Share of updates that also send a stale, backward status.
    pub out_of_order: f64,
    /// Share of downloads interrupted half-way and resumed with `Range`.
    pub interruptions: f64,
    /// Share of devices that go silent on their first command (after `init`).
    pub silent: f64,
    /// Share of devices whose first attempt fails (a later one succeeds).
    pub fail_first: f64,
    /// Delay between a device's statuses.
    pub step: Duration,
    pub topic_prefix: String,
    /// Prefix of the simulated device ids.
    pub id_prefix: String,
    /// The security counter the devices start with (as flashed at the
    /// workshop): they refuse images below it.
    pub security_counter: i64,
    /// The firmware version the devices start with.
    pub installed_version: Option<String>,
    /// Whether devices announce their presence on each connection (agents
    /// that predate presence do not).
    pub presence: bool,
    /// Share of devices that are away when their command is sent (a truck
    /// out of coverage): their broker publishes their last will, they
    /// come back after `offline_for` and say hello. A gateway's devices
    /// are away with it.
    pub offline: f64,
    /// How long an away device stays away, at least and at most.
    pub offline_for: (Duration, Duration),
    /// Share of returning devices whose broker forgot their session: the
    /// command queued while they were away is lost, and only the host's
    /// answer to their hello brings it.
    pub clean_session: f64,
    /// Devices that come back from a repair shop, a moment after they
    /// first announced themselves, running a version nobody sent them
    /// (`{installed_version}-shop`): they say so in a new hello. Needs
    /// `installed_version` (what they ran before).
    pub hand_flashed: u32,
    /// Share of devices that, under a job whose install policy is
    /// `when-safe`, report `waiting` (reason `engine-running`) once the
    /// image is downloaded and flash only after `parked_after`; the others
    /// find the moment safe at once.
    pub wait_parked: f64,
    /// How long a waiting device waits, at least and at most.
    pub parked_after: (Duration, Duration),
    /// How long flashing takes (a cancel that arrives meanwhile is
    /// ignored: the device finishes and reports its truth).
    pub flash_time: Duration,
}

impl SimOptions {
    /// A well-behaved fleet of `devices` (Jetsons, STM32s behind them,
    /// ESP32s) on the default topic prefix: no faults but resumed downloads
    /// (20 %), no delay between statuses. Adjust fields for more.
    pub fn new(api: &str, token: &str, mqtt_url: &str, devices: u32) -> Self {
        Self {
            api: api.to_owned(),
            token: token.to_owned(),
            mqtt_url: mqtt_url.to_owned(),
            devices,
            families: vec!["esp32".into(), "stm32".into(), "jetson".into()],
            fail_rate: 0.0,
            family_fail_rates: HashMap::new(),
            failure: "flash: write failed at 0x08004000 (simulated)".into(),
            seed: None,
            tags: None,
            dropouts: 0.0,
            duplicates: 0.0,
            out_of_order: 0.0,
            interruptions: 0.2,
            silent: 0.0,
            fail_first: 0.0,
            step: Duration::ZERO,
            topic_prefix: "fleet".into(),
            id_prefix: "SIM-".into(),
            security_counter: 0,
            installed_version: None,
            presence: true,
            offline: 0.0,
            offline_for: (Duration::from_secs(30), Duration::from_secs(120)),
            clean_session: 0.0,
            hand_flashed: 0,
            wait_parked: 0.0,
            parked_after: (Duration::from_secs(5), Duration::from_secs(20)),
            flash_time: Duration::ZERO,
        }
    }
}

/// A device's final state as the simulator saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTruth {
    /// `done`, `error`, `cancelled` (it stopped an update, as a cancel
    /// told it), or `idle` when no update was asked.
    pub state: String,
    pub version: Option<String>,
    pub reason: Option<String>,
    /// Commands acted on (a repeat of the same command is not counted).
    pub commands: u32,
    /// The id of the last status the device published, and when (Unix
    /// milliseconds): what a test needs to tell a status the network lost
    /// from one the host mishandled.
    #[serde(default)]
    pub last_status: Option<(String, i64)>,
    /// Downloads cut before the end (a reset connection, a host restart,
    /// a body that ended early) and resumed with `Range`.
    #[serde(default)]
    pub resumed_downloads: u32,
    /// Seconds the device was away (out of coverage) when its command was
    /// sent, and whether it came back with a clean session.
    #[serde(default)]
    pub away_secs: u64,
    #[serde(default)]
    pub clean_session: bool,
    /// Flashed outside Rollway (`--hand-flashed`): `version` was nobody's
    /// update until Rollway installed one.
    #[serde(default)]
    pub hand_flashed: bool,
    /// Seconds the device held its downloaded image (`waiting`) before it
    /// was parked and flashed (`--wait-parked`).
    #[serde(default)]
    pub waited_secs: u64,
    /// Signed cancels the device accepted, and whether one came while it
    /// was flashing (it finished).
    #[serde(default)]
    pub cancels: u32,
    #[serde(default)]
    pub cancelled_while_flashing: bool,
}

#[derive(Clone, Default)]
pub struct Truth(Arc<Mutex<BTreeMap<String, DeviceTruth>>>);

impl Truth {
    pub fn snapshot(&self) -> BTreeMap<String, DeviceTruth> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn snapshot_of(&self, device: &str) -> Option<DeviceTruth> {
        self.0.lock().ok().and_then(|m| m.get(device).cloned())
    }

    fn update(&self, device: &str, f: impl FnOnce(&mut DeviceTruth)) {
        if let Ok(mut map) = self.0.lock()
            && let Some(entry) = map.get_mut(device)
        {
            f(entry);
        }
    }
}

#[derive(Debug, Clone)]
struct SimDevice {
    /// Its place in the fleet (what `SimOptions::tags` is given).
    index: usize,
    id: String,
    family: String,
    gateway: Option<String>,
}

/// The registered fleet and its running loop.
pub struct Simulator {
    pub device_ids: Vec<String>,
    pub truth: Truth,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Registers the fleet and connects it. Returns once subscribed.
    pub async fn start(options: SimOptions) -> anyhow::Result<Self> {
        // A link that goes quiet is a cut link: the download resumes.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .build()?;
        let devices = fleet(&options);
        register(&http, &options, &devices).await?;
        let keys = fetch_keys(&http, &options.api).await?;
        let truth = Truth::default();
        if let Ok(mut map) = truth.0.lock() {
            for d in &devices {
                map.insert(
                    d.id.clone(),
                    DeviceTruth {
                        state: "idle".into(),
                        version: options.installed_version.clone(),
                        ..DeviceTruth::default()
                    },
                );
            }
        }
        let by_id: HashMap<String, SimDevice> =
            devices.iter().map(|d| (d.id.clone(), d.clone())).collect();
        crate::mqtt::tls_provider();
        let client_id = format!("rollway-sim-{}", uuid::Uuid::new_v4().simple());
        let mut mqtt = MqttOptions::parse_url(format!(
            "{}{}client_id={client_id}",
            options.mqtt_url,
            if options.mqtt_url.contains('?') {
                "&"
            } else {
                "?"
            }
        ))
        .map_err(|e| anyhow::anyhow!("--mqtt: {e}"))?;
        // A persistent session: commands published while the broker restarts
        // or the link is down are delivered on reconnection, as to a real
        // device.
        mqtt.set_keep_alive(Duration::from_secs(15))
            .set_clean_session(false)
            .set_inflight(1000)
            .set_request_channel_capacity(100_000);
        let (client, mut eventloop) = AsyncClient::new(mqtt, 100_000);
        let topic = format!("{}/+/update/command", options.topic_prefix);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stop = CancellationToken::new();
        let (replay_tx, mut replay_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let shared = Arc::new(Shared {
            options: options.clone(),
            http,
            keys: Mutex::new(keys),
            counters: Mutex::new(HashMap::new()),
            key_fetch: Mutex::new(None),
            client: client.clone(),
            truth: truth.clone(),
            devices: by_id,
            commands: Mutex::new(HashMap::new()),
            finals: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            flashing: Mutex::new(std::collections::HashSet::new()),
            away: Mutex::new(Away::default()),
            replay: replay_tx,
        });
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                let event = tokio::select! {
                    event = eventloop.poll() => event,
                    Some(payload) = replay_rx.recv() => {
                        let shared = shared.clone();
                        tokio::spawn(async move { shared.handle_command(&payload).await });
                        continue;
                    }
                    () = token.cancelled() => break,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        if !connack.session_present && ready.is_none() {
                            tracing::warn!("simulator: the broker lost our session");
                        }
                        let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                        // Each (re)connection: every device says it is
                        // back and what it runs, as a real one does.
                        if shared.options.presence {
                            let shared = shared.clone();
                            tokio::spawn(async move { shared.announce(None).await });
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                            if shared.options.hand_flashed > 0 {
                                let shared = shared.clone();
                                tokio::spawn(async move { shared.back_from_the_shop().await });
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let shared = shared.clone();
                        tokio::spawn(async move { shared.handle_command(&publish.payload).await });
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "simulator: MQTT connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .context("the simulator could not subscribe to its command topic")??;
        Ok(Self {
            device_ids: devices.into_iter().map(|d| d.id).collect(),
            truth,
            stop,
            task,
        })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The fleet: Jetsons are gateways for the STM32s; ESP32s stand alone.
fn fleet(options: &SimOptions) -> Vec<SimDevice> {
    let families: Vec<&str> = options.families.iter().map(String::as_str).collect();
    let mut devices: Vec<SimDevice> = (0..options.devices as usize)
        .map(|i| {
            let family = families[i % families.len()];
            SimDevice {
                index: i,
                id: format!("{}{}-{i:06}", options.id_prefix, family.to_uppercase()),
                family: family.to_owned(),
                gateway: None,
            }
        })
        .collect();
    let gateways: Vec<String> = devices
        .iter()
        .filter(|d| d.family == "jetson")
        .map(|d| d.id.clone())
        .collect();
    if !gateways.is_empty() {
        for (k, d) in devices
            .iter_mut()
            .filter(|d| d.family == "stm32")
            .enumerate()
        {
            d.gateway = Some(gateways[k % gateways.len()].clone());
        }
    }
    devices
}

fn model(family: &str) -> &'static str {
    match family {
        "esp32" => "esp32s3",
        "stm32" => "stm32f407",
        "jetson" => "jetson-orin-nx",
        _ => "generic",
    }
}

async fn register(
    http: &reqwest::Client,
    options: &SimOptions,
    devices: &[SimDevice],
) -> anyhow::Result<()> {
    // Gateways first, then the rest, in chunks the API accepts.
    let mut ordered: Vec<&SimDevice> = devices.iter().filter(|d| d.family == "jetson").collect();
    ordered.extend(devices.iter().filter(|d| d.family != "jetson"));
    for chunk in ordered.chunks(5000) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|d| {
                let mut tags = options.tags.map(|tags| tags(d.index)).unwrap_or_default();
                tags.insert("fleet".into(), json!("simulated"));
                let mut device = json!({ "id": d.id, "family": d.family, "model": model(&d.family), "gateway_id": d.gateway, "tags": tags });
                if let Some(version) = &options.installed_version {
                    device["installed_version"] = json!(version);
                }
                device
            })
            .collect();
        let response = http
            .post(format!(
                "{}/api/v1/devices",
                options.api.trim_end_matches('/')
            ))
            .bearer_auth(&options.token)
            .json(&body)
            .send()
            .await
            .context("registering simulated devices")?;
        if !response.status().is_success() {
            bail!(
                "registering simulated devices: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// A published key: its id, public key and endorsement by the key it replaced.
struct Published {
    id: String,
    key: VerifyingKey,
    endorsed_by: Option<String>,
    endorsement: Option<Signature>,
}

async fn published_keys(http: &reqwest::Client, api: &str) -> anyhow::Result<Vec<Published>> {
    let body: Value = http
        .get(format!("{}/api/v1/signing-keys", api.trim_end_matches('/')))
        .send()
        .await
        .context("fetching signing keys")?
        .json()
        .await?;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.decode(text);
    let mut keys = Vec::new();
    for key in body["keys"].as_array().into_iter().flatten() {
        let (Some(id), Some(public)) = (key["id"].as_str(), key["public_key"].as_str()) else {
            continue;
        };
        let raw: [u8; 32] = b64(public)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("key {id} is not 32 bytes"))?;
        let endorsement = key["endorsement"]
            .as_str()
            .and_then(|s| b64(s).ok())
            .and_then(|raw| <[u8; 64]>::try_from(raw.as_slice()).ok())
            .map(|raw| Signature::from_bytes(&raw));
        keys.push(Published {
            id: id.to_owned(),
            key: VerifyingKey::from_bytes(&raw)?,
            endorsed_by: key["endorsed_by"].as_str().map(str::to_owned),
            endorsement,
        });
    }
    Ok(keys)
}

/// The keys a device trusts when it is provisioned: the published ones.
async fn fetch_keys(
    http: &reqwest::Client,
    api: &str,
) -> anyhow::Result<HashMap<String, VerifyingKey>> {
    Ok(published_keys(http, api)
        .await?
        .into_iter()
        .map(|k| (k.id, k.key))
        .collect())
}

/// Adds to `trusted` every published key endorsed, directly or through a
/// chain of rotations, by a key already trusted. A key that is merely
/// published is not trusted: whoever controls the network could publish one.
fn extend_trust(trusted: &mut HashMap<String, VerifyingKey>, published: &[Published]) {
    loop {
        let before = trusted.len();
        for key in published {
            if trusted.contains_key(&key.id) {
                continue;
            }
            let endorsed = match (&key.endorsed_by, &key.endorsement) {
                (Some(by), Some(signature)) => trusted
                    .get(by)
                    .is_some_and(|old| old.verify_strict(key.key.as_bytes(), signature).is_ok()),
                _ => false,
            };
            if endorsed {
                trusted.insert(key.id.clone(), key.key);
            }
        }
        if trusted.len() == before {
            return;
        }
    }
}

/// A request for the published keys that several devices may await.
type KeyFetch = futures::future::Shared<
    futures::future::BoxFuture<'static, Result<Arc<Vec<Published>>, String>>,
>;

/// How long devices reuse a look at the published keys.
const KEY_FETCH_REUSE: Duration = Duration::from_secs(2);

struct Shared {
    options: SimOptions,
    http: reqwest::Client,
    /// The keys the fleet trusts.
    keys: Mutex<HashMap<String, VerifyingKey>>,
    /// Each device's installed security counter, once it changed from
    /// `options.security_counter`.
    counters: Mutex<HashMap<String, i64>>,
    /// The latest look at the published keys and when it started: devices
    /// meeting an unknown key at once (after a rotation, or a flood of
    /// forged commands) share one request.
    key_fetch: Mutex<Option<(std::time::Instant, KeyFetch)>>,
    client: AsyncClient,
    truth: Truth,
    devices: HashMap<String, SimDevice>,
    /// Each device's latest command (execution, attempt), to recognise a
    /// repeat.
    commands: Mutex<HashMap<String, (Option<u64>, u64)>>,
    /// Each device's last final status (execution, attempt, topic,
    /// message), sent again when a repeat of that command arrives.
    finals: Mutex<HashMap<String, FinalStatus>>,
    /// Each device's cancelled execution, the latest, and the executions
    /// it is flashing now.
    cancels: Mutex<HashMap<String, u64>>,
    flashing: Mutex<std::collections::HashSet<(String, u64)>>,
    /// Links (a device, or a gateway with the devices behind it) that have
    /// been drawn for `offline`, and the commands queued for those away now.
    away: Mutex<Away>,
    /// Commands a returning link's session kept, handed back to the loop.
    replay: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Default)]
struct Away {
    drawn: std::collections::HashSet<String>,
    queued: HashMap<String, Vec<Vec<u8>>>,
}

impl Shared {
    /// `hand_flashed` devices, spread over the fleet, come back from a
    /// repair shop a moment after the fleet first announced itself, with
    /// a version nobody sent them, and say so.
    async fn back_from_the_shop(&self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut ids: Vec<&SimDevice> = self.devices.values().collect();
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        let n = (self.options.hand_flashed as usize).min(ids.len());
        if n == 0 {
            return;
        }
        let step = ids.len() / n;
        let mut links = Vec::new();
        for device in ids.into_iter().step_by(step).take(n) {
            let before = self.options.installed_version.as_deref().unwrap_or("0.0.0");
            self.truth.update(&device.id, |t| {
                t.version = Some(format!("{before}-shop"));
                t.hand_flashed = true;
            });
            let link = device.gateway.clone().unwrap_or_else(|| device.id.clone());
            if !links.contains(&link) {
                links.push(link);
            }
        }
        if self.options.presence {
            for link in links {
                self.announce(Some(&link)).await;
            }
        }
    }

    /// Publishes every device's presence (or only that of the link `only`):
    /// standalone devices for themselves, gateways for themselves and the
    /// devices behind them.
    async fn announce(&self, only: Option<&str>) {
        let mut children: HashMap<&str, Vec<&SimDevice>> = HashMap::new();
        for device in self.devices.values() {
            if let Some(gateway) = &device.gateway {
                children.entry(gateway.as_str()).or_default().push(device);
            }
        }
        let counter = |id: &str| self.installed_counter(id);
        let version = |id: &str| self.truth.snapshot_of(id).and_then(|t| t.version);
        // A link away now says nothing until it is back.
        let away: Vec<String> = self
            .away
            .lock()
            .map(|a| a.queued.keys().cloned().collect())
            .unwrap_or_default();
        for device in self
            .devices
            .values()
            .filter(|d| d.gateway.is_none() && only.map_or(!away.contains(&d.id), |id| id == d.id))
        {
            let behind: Vec<Value> = children
                .get(device.id.as_str())
                .into_iter()
                .flatten()
                .map(|child| {
                    json!({
                        "device_id": child.id,
                        "installed_version": version(&child.id),
                        "security_counter": counter(&child.id),
                    })
                })
                .collect();
            let message = json!({
                "state": "online",
                "installed_version": version(&device.id),
                "security_counter": counter(&device.id),
                "hardware": { "board": model(&device.family) },
                "children": behind,
                "ts": chrono::Utc::now().timestamp_millis(),
            });
            let topic = format!("{}/{}/presence", self.options.topic_prefix, device.id);
            let payload = serde_json::to_vec(&message).unwrap_or_default();
            if let Err(error) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
            {
                tracing::warn!(%error, "simulator: publishing a presence");
                return;
            }
        }
    }

    /// Whether the command finds its device's link away: then it waits in
    /// the (persistent) session, or is lost with a clean one. A link is
    /// drawn once, at its first command, to be away for a while.
    async fn away(self: &Arc<Self>, link: &str, payload: &[u8]) -> bool {
        let leaves = {
            let Ok(mut away) = self.away.lock() else {
                return false;
            };
            if let Some(queued) = away.queued.get_mut(link) {
                queued.push(payload.to_vec());
                return true;
            }
            if !away.drawn.insert(link.to_owned())
                || !rand::rng().random_bool(self.options.offline.clamp(0.0, 1.0))
            {
                return false;
            }
            away.queued.insert(link.to_owned(), vec![payload.to_vec()]);
            true
        };
        if leaves {
            self.leave(link).await;
        }
        true
    }

    /// The link drops off: its broker publishes its will; it comes back
    /// after a while, says hello, and acts on what its session kept.
    async fn leave(self: &Arc<Self>, link: &str) {
        let (least, most) = self.options.offline_for;
        let gone = if most > least {
            rand::rng().random_range(least..=most)
        } else {
            least
        };
        let clean = rand::rng().random_bool(self.options.clean_session.clamp(0.0, 1.0));
        for device in self
            .devices
            .values()
            .filter(|d| d.id == link || d.gateway.as_deref() == Some(link))
        {
            self.truth.update(&device.id, |t| {
                t.away_secs = gone.as_secs();
                t.clean_session = clean;
            });
        }
        let will = format!("{}/{link}/presence", self.options.topic_prefix);
        if let Err(error) = self
            .client
            .publish(
                will,
                QoS::AtLeastOnce,
                false,
                br#"{"state":"offline"}"#.to_vec(),
            )
            .await
        {
            tracing::warn!(%error, "simulator: publishing a last will");
        }
        let shared = self.clone();
        let link = link.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(gone).await;
            let queued = shared
                .away
                .lock()
                .ok()
                .and_then(|mut away| away.queued.remove(&link))
                .unwrap_or_default();
            if shared.options.presence {
                shared.announce(Some(&link)).await;
            }
            // A clean session lost what was queued: the hello brings it.
            if !clean {
                for payload in queued {
                    let _ = shared.replay.send(payload);
                }
            }
        });
    }

    async fn handle_command(self: &Arc<Self>, payload: &[u8]) {
        let Ok(command) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        let Some(device_id) = command["device_id"].as_str() else {
            return;
        };
        let Some(device) = self.devices.get(device_id).cloned() else {
            return;
        };
        let link = device.gateway.clone().unwrap_or_else(|| device.id.clone());
        if self.options.offline > 0.0 && self.away(&link, payload).await {
            return;
        }
        if command["type"] == "cancel" {
            self.handle_cancel(&device, &command).await;
            return;
        }
        let execution_id = command["execution_id"].as_u64();
        let attempt = command["attempt"].as_u64().unwrap_or(1);
        let first = attempt == 1;
        let mut reporter = Reporter {
            shared: self,
            device: &device,
            execution_id,
            attempt,
            sequence: 0,
        };
        // A device acts on a command once: a repeat (a redelivery, or a
        // server that could not tell whether the command left) is ignored,
        // and so is a late command of an attempt older than the latest of
        // the same execution. A newer attempt supersedes one under way.
        let fresh = self
            .commands
            .lock()
            .map(|mut commands| match commands.get(&device.id) {
                Some(&(latest, seen)) if latest == execution_id && attempt <= seen => false,
                _ => {
                    commands.insert(device.id.clone(), (execution_id, attempt));
                    true
                }
            })
            .unwrap_or(true);
        if !fresh {
            self.answer_repeat(&device.id, execution_id, attempt).await;
            return;
        }
        self.truth.update(&device.id, |t| t.commands += 1);
        self.act(&device, &command, &mut reporter, first).await;
    }

    /// Answers the repeat of a command the device finished with its final
    /// status again, the same message (a broker restart may have lost it);
    /// a repeat of one under way changes nothing.
    async fn answer_repeat(&self, device: &str, execution_id: Option<u64>, attempt: u64) {
        let last = self.finals.lock().ok().and_then(|finals| {
            finals
                .get(device)
                .filter(|f| f.execution_id == execution_id && f.attempt == attempt)
                .cloned()
        });
        let Some(last) = last else {
            return;
        };
        if let Err(error) = self
            .client
            .publish(last.topic, QoS::AtLeastOnce, false, last.payload)
            .await
        {
            tracing::warn!(%error, "simulator: publishing a final status again");
        }
    }

    /// A signed cancel: checked as a manifest is (signature, device,
    /// execution, expiry). A device that has not started flashing the
    /// execution's image stops and reports `cancelled`; one that is
    /// flashing finishes and reports its truth. A cancel of an execution
    /// whose command never reached the device (it was away, its session
    /// lost) is answered `cancelled` at once, and its command, should it
    /// come later, is ignored.
    async fn handle_cancel(&self, device: &SimDevice, command: &Value) {
        let cancel = match self.verify_cancel(device, command).await {
            Ok(cancel) => cancel,
            Err(reason) => {
                tracing::warn!(device = %device.id, reason, "simulator: cancel refused");
                return;
            }
        };
        let execution = cancel.execution_id as u64;
        let attempt = cancel.attempt.max(1) as u64;
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.insert(device.id.clone(), execution);
        }
        let flashing = self
            .flashing
            .lock()
            .is_ok_and(|f| f.contains(&(device.id.clone(), execution)));
        self.truth.update(&device.id, |t| {
            t.cancels += 1;
            t.cancelled_while_flashing |= flashing;
        });
        // Whether the device ever had this execution's command: then the
        // update under way stops itself before flashing (or finished).
        let known = self
            .commands
            .lock()
            .map(|mut commands| match commands.get(&device.id) {
                Some(&(Some(latest), _)) if latest == execution => true,
                _ => {
                    commands.insert(device.id.clone(), (Some(execution), attempt));
                    false
                }
            })
            .unwrap_or(true);
        if known {
            return;
        }
        let mut reporter = Reporter {
            shared: self,
            device,
            execution_id: Some(execution),
            attempt,
            sequence: 0,
        };
        if reporter.stopped(CANCEL_REASON).await {
            self.truth.update(&device.id, |t| {
                t.state = "cancelled".into();
                t.reason = Some(CANCEL_REASON.into());
            });
        }
    }

    /// Whether the device was told to cancel `execution`.
    fn is_cancelled(&self, device: &str, execution: Option<u64>) -> bool {
        execution.is_some_and(|execution| {
            self.cancels
                .lock()
                .is_ok_and(|c| c.get(device) == Some(&execution))
        })
    }

    /// Whether (execution, attempt) is still the device's latest command;
    /// a superseded attempt stops reporting and changes nothing.
    fn is_current(&self, device: &str, execution_id: Option<u64>, attempt: u64) -> bool {
        self.commands
            .lock()
            .map(|commands| commands.get(device) == Some(&(execution_id, attempt)))
            .unwrap_or(true)
    }

    /// Carries out a new command.
    async fn act(
        &self,
        device: &SimDevice,
        command: &Value,
        reporter: &mut Reporter<'_>,
        first: bool,
    ) {
        // A superseded attempt's last status is not sent, and its outcome
        // is not the device's truth: the newer attempt's will be.
        if first && rand::rng().random_bool(self.options.silent.clamp(0.0, 1.0)) {
            // Lost in a quarry: says init, then nothing.
            if reporter.send("init", None, None).await {
                self.truth.update(&device.id, |t| t.state = "silent".into());
            }
            return;
        }
        if first && rand::rng().random_bool(self.options.fail_first.clamp(0.0, 1.0)) {
            let reason = "transient failure on the first attempt (simulated)";
            if reporter.send("error", None, Some(reason)).await {
                self.truth.update(&device.id, |t| {
                    t.state = "error".into();
                    t.reason = Some(reason.into());
                });
            }
            return;
        }
        let result = self.update(device, command, reporter).await;
        if let Some(execution) = reporter.execution_id
            && let Ok(mut flashing) = self.flashing.lock()
        {
            flashing.remove(&(device.id.clone(), execution));
        }
        match result {
            Ok(version) => {
                if reporter.send("done", None, None).await {
                    self.truth.update(&device.id, |t| {
                        t.state = "done".into();
                        t.version = Some(version);
                        t.reason = None;
                    });
                }
            }
            Err(Stop::Cancelled) => {
                if reporter.stopped(CANCEL_REASON).await {
                    self.truth.update(&device.id, |t| {
                        t.state = "cancelled".into();
                        t.reason = Some(CANCEL_REASON.into());
                    });
                }
            }
            Err(Stop::Failed(reason)) => {
                if reporter.send("error", None, Some(&reason)).await {
                    self.truth.update(&device.id, |t| {
                        t.state = "error".into();
                        t.reason = Some(reason);
                    });
                }
            }
        }
    }

    /// The device's side of an update; returns the installed version. A
    /// cancel stops it until it starts flashing.
    async fn update(
        &self,
        device: &SimDevice,
        command: &Value,
        reporter: &mut Reporter<'_>,
    ) -> Result<String, Stop> {
        let execution = reporter.execution_id;
        let stop_if_cancelled = || {
            if self.is_cancelled(&device.id, execution) {
                Err(Stop::Cancelled)
            } else {
                Ok(())
            }
        };
        stop_if_cancelled()?;
        let manifest = self.verify(device, command).await?;
        reporter.send("init", None, None).await;
        let url = command["firmware"]["url"]
            .as_str()
            .ok_or("the command has no download URL")?;
        let interrupted = rand::rng().random_bool(self.options.interruptions.clamp(0.0, 1.0));
        let bytes = self
            .download(url, manifest.size as u64, interrupted, reporter)
            .await?;
        if bytes.len() as i64 != manifest.size {
            return Err(Stop::Failed(format!(
                "downloaded {} bytes, the manifest says {}",
                bytes.len(),
                manifest.size
            )));
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != manifest.sha256 {
            return Err(Stop::Failed(format!("digest mismatch: got {digest}")));
        }
        stop_if_cancelled()?;
        if rand::rng().random_bool(self.options.dropouts.clamp(0.0, 1.0)) {
            let gap = Duration::from_millis(rand::rng().random_range(1000..3000));
            tokio::time::sleep(gap).await;
        }
        if manifest.install == InstallPolicy::WhenSafe
            && rand::rng().random_bool(self.options.wait_parked.clamp(0.0, 1.0))
        {
            // The truck is on the road: it holds the image until parked.
            let (least, most) = self.options.parked_after;
            let wait = rand::rng()
                .random_range(least.as_millis()..=most.as_millis().max(least.as_millis()));
            let wait = Duration::from_millis(wait as u64);
            reporter.wait("engine-running").await;
            let parked = tokio::time::Instant::now() + wait;
            while tokio::time::Instant::now() < parked {
                stop_if_cancelled()?;
                tokio::time::sleep(Duration::from_millis(100).min(wait)).await;
            }
            self.truth
                .update(&device.id, |t| t.waited_secs = wait.as_secs());
        }
        stop_if_cancelled()?;
        if let Some(execution) = execution
            && let Ok(mut flashing) = self.flashing.lock()
        {
            flashing.insert((device.id.clone(), execution));
        }
        let fail_rate = self
            .options
            .family_fail_rates
            .get(&device.family)
            .copied()
            .unwrap_or(self.options.fail_rate);
        let failing = match self.options.seed {
            // The draw a dry run makes for the same seed, device and attempt.
            Some(seed) => {
                crate::plugins::dry_run::fate(seed, &device.id, reporter.attempt, 0) < fail_rate
            }
            None => rand::rng().random_bool(fail_rate.clamp(0.0, 1.0)),
        };
        if failing {
            reporter.send("flashing", None, None).await;
            return Err(Stop::Failed(self.options.failure.clone()));
        }
        reporter.send("flashing", None, None).await;
        if !self.options.flash_time.is_zero() {
            tokio::time::sleep(self.options.flash_time).await;
        }
        if rand::rng().random_bool(self.options.out_of_order.clamp(0.0, 1.0)) {
            // A stale status arriving late: the host must refuse to go back.
            reporter.send("downloading", Some(100), None).await;
        }
        reporter.send("rebooting", None, None).await;
        if let Ok(mut counters) = self.counters.lock() {
            counters.insert(device.id.clone(), manifest.security_counter);
        }
        Ok(manifest.version)
    }

    fn installed_counter(&self, device: &str) -> i64 {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(device).copied())
            .unwrap_or(self.options.security_counter)
    }

    /// The trusted key `id`; an unknown id makes the device look at the
    /// published keys for one endorsed by a key it trusts (a rotation).
    async fn key(&self, id: &str) -> Result<VerifyingKey, String> {
        let known = |keys: &Mutex<HashMap<String, VerifyingKey>>| {
            keys.lock().ok().and_then(|k| k.get(id).copied())
        };
        if let Some(key) = known(&self.keys) {
            return Ok(key);
        }
        match self.key_fetch().await {
            Ok(published) => {
                if let Ok(mut trusted) = self.keys.lock() {
                    extend_trust(&mut trusted, &published);
                }
            }
            Err(error) => tracing::warn!(error, "simulator: fetching keys"),
        }
        known(&self.keys).ok_or_else(|| format!("manifest signed with untrusted key '{id}'"))
    }

    /// The published keys, from a request started at most
    /// `KEY_FETCH_REUSE` ago or a new one. The lock only guards the
    /// handle, never the request.
    fn key_fetch(&self) -> KeyFetch {
        use futures::FutureExt as _;
        let mut slot = match self.key_fetch.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((started, fetch)) = slot.as_ref()
            && started.elapsed() < KEY_FETCH_REUSE
        {
            return fetch.clone();
        }
        let (http, api) = (self.http.clone(), self.options.api.clone());
        let fetch = async move {
            published_keys(&http, &api)
                .await
                .map(Arc::new)
                .map_err(|e| format!("{e:#}"))
        }
        .boxed()
        .shared();
        *slot = Some((std::time::Instant::now(), fetch.clone()));
        fetch
    }

    /// A device's checks of a command's manifest, in order: signature by a
    /// trusted key, then the signed fields against the device and the
    /// command (mix-and-match), expiry (freeze), counter (rollback).
    async fn verify(&self, device: &SimDevice, command: &Value) -> Result<Manifest, String> {
        let text = self.signed(command).await?;
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| format!("manifest unreadable: {e}"))?;
        if manifest.device_id != device.id {
            return Err(format!(
                "manifest is for {}, not {}",
                manifest.device_id, device.id
            ));
        }
        if command["execution_id"].as_i64() != Some(manifest.execution_id) {
            return Err(format!(
                "manifest is for execution {}, the command for {}",
                manifest.execution_id, command["execution_id"]
            ));
        }
        if manifest.expires_at < chrono::Utc::now() {
            return Err(format!("manifest expired at {}", manifest.expires_at));
        }
        let installed = self.installed_counter(&device.id);
        if manifest.security_counter < installed && !manifest.downgrade {
            return Err(format!(
                "rollback refused: security counter {} is below the installed {installed}",
                manifest.security_counter
            ));
        }
        if command["firmware"]["size"]
            .as_i64()
            .is_some_and(|size| size != manifest.size)
        {
            return Err("the command's image size differs from the signed manifest's".into());
        }
        Ok(manifest)
    }

    /// The signed text of a command (an update's manifest, a cancel), once
    /// its signature by a trusted key is checked.
    async fn signed<'c>(&self, command: &'c Value) -> Result<&'c str, String> {
        let text = command["manifest"]
            .as_str()
            .ok_or("the command has no manifest")?;
        let key_id = command["key_id"].as_str().unwrap_or_default();
        let key = self.key(key_id).await?;
        let signature = command["signature"]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|raw| <[u8; 64]>::try_from(raw.as_slice()).ok())
            .ok_or("the manifest signature is malformed")?;
        key.verify_strict(text.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| "manifest signature rejected".to_owned())?;
        Ok(text)
    }

    /// A cancel's checks: signature by a trusted key, a cancel (not an
    /// update manifest), for this device and the command's execution, not
    /// expired.
    async fn verify_cancel(
        &self,
        device: &SimDevice,
        command: &Value,
    ) -> Result<CancelManifest, String> {
        let text = self.signed(command).await?;
        let cancel: CancelManifest =
            serde_json::from_str(text).map_err(|e| format!("cancel unreadable: {e}"))?;
        if cancel.kind != CancelManifest::KIND {
            return Err(format!("a signed {:?} is not a cancel", cancel.kind));
        }
        if cancel.device_id != device.id {
            return Err(format!(
                "cancel is for {}, not {}",
                cancel.device_id, device.id
            ));
        }
        if command["execution_id"].as_i64() != Some(cancel.execution_id) {
            return Err("the cancel names another execution than its command".into());
        }
        if cancel.expires_at < chrono::Utc::now() {
            return Err(format!("cancel expired at {}", cancel.expires_at));
        }
        Ok(cancel)
    }

    /// Downloads an image of `size` bytes as a device on a poor link does:
    /// whatever cuts a transfer (a reset connection, a host restart, a body
    /// that ends early, a server error), it resumes with `Range` from the
    /// bytes it has until it holds the signed size, giving up only after
    /// [`DOWNLOAD_PATIENCE`] without progress. `interrupted` cuts the first
    /// transfer half-way on purpose.
    async fn download(
        &self,
        url: &str,
        size: u64,
        interrupted: bool,
        reporter: &mut Reporter<'_>,
    ) -> Result<Vec<u8>, String> {
        reporter.send("downloading", Some(0), None).await;
        let mut bytes = Vec::with_capacity(size as usize);
        let mut cut_at = (interrupted && size > 1).then_some(size / 2);
        let mut halfway_reported = false;
        let mut delay = Duration::from_millis(200);
        let mut last_progress = std::time::Instant::now();
        let mut last_error = String::new();
        // Whether the transfer is failing since its last progress: one cut
        // counts once, however many tries the resumption takes.
        let mut failing = false;
        while (bytes.len() as u64) < size {
            let from = bytes.len() as u64;
            let mut request = self.http.get(url);
            if from > 0 {
                request = request.header("range", format!("bytes={from}-"));
            }
            let read = match request.send().await {
                Ok(response) if from > 0 && response.status().as_u16() == 206 => {
                    read_capped(response, &mut bytes, size, cut_at.take()).await
                }
                Ok(response) if response.status().as_u16() == 200 => {
                    // A fresh start (or a server that ignored the range).
                    bytes.clear();
                    read_capped(response, &mut bytes, size, cut_at.take()).await
                }
                Ok(response)
                    if response.status().is_server_error() || response.status().as_u16() == 429 =>
                {
                    Err(Cut::Transient(format!(
                        "server answered {}",
                        response.status()
                    )))
                }
                Ok(response) => {
                    return Err(format!("download failed: {}", response.status()));
                }
                Err(error) => Err(Cut::Transient(error.to_string())),
            };
            if bytes.len() as u64 > from {
                last_progress = std::time::Instant::now();
                delay = Duration::from_millis(200);
                failing = false;
            }
            if !halfway_reported && bytes.len() as u64 >= size / 2 && bytes.len() as u64 != size {
                halfway_reported = true;
                reporter.send("downloading", Some(50), None).await;
            }
            match read {
                Ok(()) => {}
                Err(Cut::Fatal(reason)) => return Err(reason),
                Err(Cut::Transient(reason)) => {
                    if !std::mem::replace(&mut failing, true) {
                        self.truth
                            .update(&reporter.device.id, |t| t.resumed_downloads += 1);
                    }
                    if last_progress.elapsed() > DOWNLOAD_PATIENCE {
                        return Err(format!(
                            "download failed: no progress for {DOWNLOAD_PATIENCE:?} ({reason})"
                        ));
                    }
                    if reason != last_error {
                        tracing::debug!(
                            url,
                            reason,
                            have = bytes.len(),
                            "simulator: download cut; resuming"
                        );
                        last_error = reason;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
            }
        }
        reporter.send("downloading", Some(100), None).await;
        Ok(bytes)
    }
}

/// How long a simulated device keeps trying to resume a download that
/// makes no progress (a real one would go on until its manifest expires).
const DOWNLOAD_PATIENCE: Duration = Duration::from_secs(180);

/// Why a transfer stopped before the end.
enum Cut {
    /// The link or the server failed: resume.
    Transient(String),
    /// The server sent more than the signed size: stop for good.
    Fatal(String),
}

/// Appends a response body to `bytes`, reading no further than `cap` bytes
/// in all: a server sending endless data is cut off (Uptane's endless-data
/// attack), whatever its headers say. With `cut_at`, the transfer breaks
/// off there (a simulated link loss). A body that ends early is not an
/// error here: the caller resumes from what it has.
async fn read_capped(
    mut response: reqwest::Response,
    bytes: &mut Vec<u8>,
    cap: u64,
    cut_at: Option<u64>,
) -> Result<(), Cut> {
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(error) => return Err(Cut::Transient(format!("body cut: {error}"))),
        };
        if (bytes.len() + chunk.len()) as u64 > cap {
            return Err(Cut::Fatal(format!(
                "download exceeds the manifest's size ({cap} bytes); stopped reading"
            )));
        }
        if let Some(at) = cut_at
            && (bytes.len() + chunk.len()) as u64 >= at
        {
            let keep = (at as usize).saturating_sub(bytes.len());
            bytes.extend_from_slice(&chunk[..keep]);
            return Err(Cut::Transient("connection dropped (simulated)".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
}

/// Sends one device's statuses, as the device or through its gateway.
struct Reporter<'a> {
    shared: &'a Shared,
    device: &'a SimDevice,
    execution_id: Option<u64>,
    attempt: u64,
    sequence: u32,
}

impl Reporter<'_> {
    /// Sends a status of this attempt; false, sending nothing, once a newer
    /// attempt superseded it.
    async fn send(&mut self, state: &str, progress: Option<u8>, error: Option<&str>) -> bool {
        self.publish(state, progress, error, None).await
    }

    /// Says the device holds its downloaded image, and why.
    async fn wait(&mut self, reason: &str) -> bool {
        self.publish("waiting", None, None, Some(reason)).await
    }

    /// Says the device stopped the update, as a cancel told it.
    async fn stopped(&mut self, reason: &str) -> bool {
        self.publish("cancelled", None, None, Some(reason)).await
    }

    async fn publish(
        &mut self,
        state: &str,
        progress: Option<u8>,
        error: Option<&str>,
        reason: Option<&str>,
    ) -> bool {
        self.sequence += 1;
        let options = &self.shared.options;
        if !options.step.is_zero() {
            tokio::time::sleep(options.step).await;
        }
        if !self
            .shared
            .is_current(&self.device.id, self.execution_id, self.attempt)
        {
            return false;
        }
        let via = self.device.gateway.as_deref().unwrap_or(&self.device.id);
        let topic = format!("{}/{via}/update/status", options.topic_prefix);
        let message_id = format!(
            "{}-{}-{}-{}",
            self.execution_id.unwrap_or(0),
            self.attempt,
            self.sequence,
            state
        );
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut message = json!({
            "message_id": message_id,
            "device_id": self.device.id,
            "state": state,
            "progress": progress,
            "error": error,
            "execution_id": self.execution_id,
            "attempt": self.attempt,
            "ts": now_ms,
        });
        if let Some(reason) = reason {
            message["reason"] = json!(reason);
        }
        let payload = serde_json::to_vec(&message).unwrap_or_default();
        let times = if rand::rng().random_bool(options.duplicates.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..times {
            if let Err(error) = self
                .shared
                .client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .await
            {
                tracing::warn!(%error, "simulator: publishing a status");
            }
        }
        if ["done", "error", "cancelled"].contains(&state)
            && let Ok(mut finals) = self.shared.finals.lock()
        {
            finals.insert(
                self.device.id.clone(),
                FinalStatus {
                    execution_id: self.execution_id,
                    attempt: self.attempt,
                    topic,
                    payload,
                },
            );
        }
        self.shared.truth.update(&self.device.id, |t| {
            t.last_status = Some((message_id, now_ms));
        });
        true
    }
}

/// A device's last final status, as it was published.
#[derive(Clone)]
struct FinalStatus {
    execution_id: Option<u64>,
    attempt: u64,
    topic: String,
    payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    fn published(key: &SigningKey, endorser: Option<(&str, &SigningKey)>) -> Published {
        let public = key.verifying_key();
        Published {
            id: crate::signing::key_id(&public),
            key: public,
            endorsed_by: endorser.map(|(id, _)| id.to_owned()),
            endorsement: endorser.map(|(_, by)| by.sign(public.as_bytes())),
        }
    }

    #[test]
    fn trust_follows_endorsements_only() {
        let first = SigningKey::from_bytes(&[1; 32]);
        let second = SigningKey::from_bytes(&[2; 32]);
        let third = SigningKey::from_bytes(&[3; 32]);
        let stranger = SigningKey::from_bytes(&[4; 32]);
        let first_id = crate::signing::key_id(&first.verifying_key());
        let second_id = crate::signing::key_id(&second.verifying_key());
        // Two rotations, listed newest first; a key endorsed by a stranger;
        // a key that claims the first's endorsement with a bad signature.
        let mut forged = published(&stranger, Some((&first_id, &stranger)));
        forged.id = "forged".into();
        let list = vec![
            published(&third, Some((&second_id, &second))),
            published(&second, Some((&first_id, &first))),
            published(
                &SigningKey::from_bytes(&[5; 32]),
                Some(("unknown", &stranger)),
            ),
            forged,
            published(&stranger, None),
        ];
        let mut trusted = HashMap::from([(first_id.clone(), first.verifying_key())]);
        extend_trust(&mut trusted, &list);
        let mut ids: Vec<&String> = trusted.keys().collect();
        ids.sort();
        let mut expected = vec![&first_id, &second_id, &list[0].id];
        expected.sort();
        assert_eq!(ids, expected);
    }
}

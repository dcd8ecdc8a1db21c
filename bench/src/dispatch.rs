//! Benchmark 2, dispatch: commands built by the device plugin, signed and
//! published at QoS 1 for one batch of every device, against raw QoS 1
//! publishing of the same payloads to the same broker.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::json;

use crate::Sizes;
use crate::host::{self, Env};
use crate::mqtt::{self, LinkOptions, Message, Pace};
use crate::report::{self, Report, Row};

/// What the command subscriber saw.
#[derive(Default)]
struct Seen {
    per_topic: HashMap<String, u32>,
    first_us: Option<i64>,
    last_us: i64,
    sample: Option<Vec<u8>>,
}

fn on_command(seen: &mut Seen, publish: rumqttc::Publish) {
    seen.last_us = mqtt::now_us();
    seen.first_us.get_or_insert(seen.last_us);
    if seen.sample.is_none() {
        seen.sample = Some(publish.payload.to_vec());
    }
    *seen.per_topic.entry(publish.topic).or_default() += 1;
}

/// Every device got exactly one command.
fn check_once(seen: &Seen, devices: u64, what: &str) -> anyhow::Result<()> {
    let repeated = seen.per_topic.values().filter(|n| **n > 1).count();
    if seen.per_topic.len() as u64 != devices || repeated > 0 {
        bail!(
            "{what}: {} devices got commands ({repeated} more than one), expected {devices} exactly once",
            seen.per_topic.len()
        );
    }
    Ok(())
}

pub async fn run(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let name = "dispatch";
    let devices = sizes.dispatch_devices;
    let expected = u64::from(devices);
    let timeout = Duration::from_secs(300 + expected / 100);
    let stall = Duration::from_secs(60);

    eprintln!("== dispatch: {devices} commands from the host");
    let fleet = host::Fleet::start(env, "dispatch", "BENCH-", devices).await?;
    let subscriber = fleet
        .listen(env, "dispatch", Seen::default(), on_command)
        .await?;
    let host::Fleet {
        host,
        pool,
        firmware,
        seeded,
        ..
    } = fleet;
    let created_us = mqtt::now_us();
    let job = host::fleet_job(&host, &firmware).await?;
    let answered_us = mqtt::now_us();
    mqtt::wait_count(
        "commands received",
        &subscriber.received,
        expected,
        stall,
        timeout,
        || subscriber.is_closed(),
    )
    .await?;
    // A repeated command would arrive right behind the others.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = subscriber.finish().await?;
    check_once(&seen, expected, "dispatch (host)")?;
    let dispatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE job_id = $1 AND status = 'dispatched'",
    )
    .bind(job)
    .fetch_one(&pool)
    .await?;
    if dispatched as u64 != expected {
        bail!("dispatch (host): {dispatched} of {expected} executions are dispatched");
    }
    let window_s = ((seen.last_us - created_us) as f64 / 1e6).max(1e-6);
    let rate = expected as f64 / window_s;
    // Where the window goes: the job's creation (its executions, planned),
    // the scheduler's start and the batch's release, then the stream of
    // commands.
    let answered_s = (answered_us - created_us) as f64 / 1e6;
    let first_s = (seen.first_us.unwrap_or(seen.last_us) - created_us) as f64 / 1e6;
    let streaming_s = (window_s - first_s).max(1e-6);
    let streaming_rate = (expected - 1) as f64 / streaming_s;
    let sample = seen
        .sample
        .clone()
        .ok_or_else(|| anyhow!("no command payload was received"))?;
    eprintln!(
        "   host: {expected} commands in {} → {} ({} bytes each)",
        report::seconds(window_s),
        report::per_second(rate),
        sample.len()
    );
    eprintln!(
        "   job created in {}, first command at {}, then {} for {}",
        report::seconds(answered_s),
        report::seconds(first_s),
        report::per_second(streaming_rate),
        report::seconds(streaming_s)
    );
    pool.close().await;
    host.stop().await?;

    eprintln!("== dispatch: raw QoS 1 publishing of the same payloads");
    let raw_prefix = host::topic_prefix("dispatch-raw");
    let raw_id = format!("bench-dispatch-raw-sub-{}", mqtt::suffix());
    let raw_subscriber = mqtt::connect(
        &env.mqtt_url,
        &raw_id,
        LinkOptions {
            subscribe: Some(format!("{raw_prefix}/+/update/command")),
            ..LinkOptions::default()
        },
        Seen::default(),
        on_command,
    )
    .await?;
    let messages: Vec<Message> = (0..devices)
        .map(|i| Message {
            topic: format!("{raw_prefix}/BENCH-{i:07}/update/command"),
            payload: sample.clone(),
        })
        .collect();
    let times = mqtt::publish(
        &env.mqtt_url,
        "bench-dispatch-raw",
        vec![messages],
        Pace::FlatOut,
        timeout,
    )
    .await
    .context("raw QoS 1 publishing")?;
    mqtt::wait_count(
        "raw commands received",
        &raw_subscriber.received,
        expected,
        stall,
        timeout,
        || raw_subscriber.is_closed(),
    )
    .await?;
    let raw_seen = raw_subscriber.finish().await?;
    check_once(&raw_seen, expected, "dispatch (raw)")?;
    let first = times
        .iter()
        .flat_map(|lane| lane.first())
        .copied()
        .min()
        .ok_or_else(|| anyhow!("nothing was published"))?;
    let raw_window_s = ((raw_seen.last_us - first) as f64 / 1e6).max(1e-6);
    let raw_rate = expected as f64 / raw_window_s;
    eprintln!(
        "   raw: {expected} messages in {} → {}",
        report::seconds(raw_window_s),
        report::per_second(raw_rate)
    );

    report.detail(
        name,
        "host",
        json!({
            "commands": expected, "window_s": window_s, "commands_per_s": rate,
            "payload_bytes": sample.len(), "seed_s": seeded.as_secs_f64(),
            "job_created_s": answered_s, "first_command_s": first_s,
            "after_first_command_per_s": streaming_rate,
        }),
    );
    report.detail(
        name,
        "raw_qos1",
        json!({ "messages": expected, "window_s": raw_window_s, "messages_per_s": raw_rate }),
    );
    report.push(Row {
        benchmark: format!(
            "dispatch: {} devices",
            report::thousands(f64::from(devices))
        ),
        figure: report::per_second(rate),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "≥ 20,000/s".into(),
        met: Some(rate >= 20_000.0),
    });
    let (text, value) = report::ratio(rate, raw_rate);
    report.push(Row {
        benchmark: "dispatch: host vs raw QoS 1 publishing".into(),
        figure: report::per_second(rate),
        baseline: report::per_second(raw_rate),
        ratio: text,
        target: "≥ 0.50x".into(),
        met: value.map(|r| r >= 0.5),
    });
    Ok(())
}

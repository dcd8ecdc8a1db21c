//! Benchmark 6, reconnect: a fleet that was away comes back. Every device
//! of a job got its command while it was out of coverage (nobody
//! answered); then all of them reconnect within seconds and say hello.
//! Measured: the time from the first hello until every command has been
//! published again (with a freshly signed manifest), and the host's peak
//! RSS. The baseline is the first dispatch of the same commands in the
//! same run.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use crate::Sizes;
use crate::host::{self, Env};
use crate::mqtt::{self, Message, Pace};
use crate::report::{self, Report, Row};

/// Commands per device as they arrive, and when the last did.
#[derive(Default)]
struct Seen {
    per_topic: HashMap<String, u32>,
    last_us: i64,
}

fn on_command(seen: &mut Seen, publish: rumqttc::Publish) {
    seen.last_us = mqtt::now_us();
    *seen.per_topic.entry(publish.topic).or_default() += 1;
}

pub async fn run(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let name = "reconnect";
    let devices = sizes.reconnect_devices;
    let expected = u64::from(devices);
    let timeout = Duration::from_secs(300 + expected / 100);
    let stall = Duration::from_secs(60);

    eprintln!("== reconnect: {devices} devices back from away say hello with work pending");
    let fleet = host::Fleet::start(env, "reconnect", "AWAY-", devices).await?;
    let subscriber = fleet
        .listen(env, "reconnect", Seen::default(), on_command)
        .await?;
    let host::Fleet {
        host,
        pool,
        firmware,
        prefix,
        seeded,
    } = fleet;
    // The first dispatch: every command goes out while its truck is away.
    let created_us = mqtt::now_us();
    host::fleet_job(&host, &firmware).await?;
    mqtt::wait_count(
        "first commands received",
        &subscriber.received,
        expected,
        stall,
        timeout,
        || subscriber.is_closed(),
    )
    .await?;
    let first_done_us = mqtt::now_us();
    let first_s = ((first_done_us - created_us) as f64 / 1e6).max(1e-6);
    eprintln!(
        "   first dispatch: {expected} commands in {}",
        report::seconds(first_s)
    );

    // Back in coverage, all of them within seconds.
    let lanes = sizes.publishers.max(1);
    let mut hellos: Vec<Vec<Message>> = (0..lanes).map(|_| Vec::new()).collect();
    for i in 0..devices {
        hellos[i as usize % lanes].push(Message {
            topic: format!("{prefix}/AWAY-{i:07}/presence"),
            payload: br#"{"state":"online"}"#.to_vec(),
        });
    }
    let times = mqtt::publish(
        &env.mqtt_url,
        "bench-reconnect-hello",
        hellos,
        Pace::FlatOut,
        timeout,
    )
    .await?;
    let hello_first_us = times
        .iter()
        .flat_map(|lane| lane.first())
        .copied()
        .min()
        .unwrap_or(first_done_us);
    let hello_last_us = times
        .iter()
        .flat_map(|lane| lane.last())
        .copied()
        .max()
        .unwrap_or(hello_first_us);
    mqtt::wait_count(
        "commands sent again",
        &subscriber.received,
        2 * expected,
        stall,
        timeout,
        || subscriber.is_closed(),
    )
    .await?;
    // A third command would arrive right behind the others.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = subscriber.finish().await?;
    let not_twice = seen.per_topic.values().filter(|n| **n != 2).count();
    if seen.per_topic.len() as u64 != expected || not_twice > 0 {
        bail!(
            "{} devices got commands, {not_twice} of them not exactly twice; expected {expected} twice",
            seen.per_topic.len()
        );
    }
    let resent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE status = 'dispatched' AND NOT resend",
    )
    .fetch_one(&pool)
    .await?;
    if resent as u64 != expected {
        bail!("{resent} of {expected} executions are dispatched with no resend left");
    }
    let rss = host.peak_rss_bytes()?;
    let hellos_s = (hello_last_us - hello_first_us) as f64 / 1e6;
    let window_s = ((seen.last_us - hello_first_us) as f64 / 1e6).max(1e-6);
    eprintln!(
        "   {expected} hellos published in {}; every command sent again {} after the first \
         ({}); host peak RSS {} MB",
        report::seconds(hellos_s),
        report::seconds(window_s),
        report::per_second(expected as f64 / window_s),
        rss / 1_000_000
    );
    pool.close().await;
    host.stop().await?;

    report.detail(
        name,
        "host",
        json!({
            "devices": expected, "hellos_published_s": hellos_s, "resent_window_s": window_s,
            "first_dispatch_s": first_s, "peak_rss_bytes": rss, "seed_s": seeded.as_secs_f64(),
        }),
    );
    let (text, _) = report::ratio(window_s, first_s);
    report.push(Row {
        benchmark: format!(
            "reconnect: {} hellos → every command sent again",
            report::thousands(f64::from(devices))
        ),
        figure: report::seconds(window_s),
        baseline: format!("first dispatch {}", report::seconds(first_s)),
        ratio: text,
        target: "—".into(),
        met: None,
    });
    report.push(Row {
        benchmark: format!(
            "reconnect: host peak RSS ({} devices)",
            report::thousands(f64::from(devices))
        ),
        figure: format!("{} MB", rss / 1_000_000),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "—".into(),
        met: None,
    });
    Ok(())
}

//! Rollout strategies of the 0.1.8 contract, shipped and run through real
//! jobs on a simulated fleet: `rollout-rings` (plans by tags, spreads a
//! ring over sites), `rollout-exponential` (a dispatch rate that grows,
//! kept by every replica together; aborts on a class of failures), a
//! strategy of WIT 0.1.2 that runs unchanged; and dry runs, which foretell
//! a real job decision for decision.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rollway::sim::{SimOptions, Simulator};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app_with};
use crate::pipeline::{mqtt_url, sim_options, spawn_pipeline, wait_for};

/// Creates a job over the simulated fleet with `rollout`.
async fn fleet_job(app: &TestApp, firmware: &Value, rollout: Value) -> String {
    crate::pipeline::create_job(app, firmware, rollout).await
}

/// Three sites; 60 devices of the `internal` ring, then ring 1 (a third of
/// the rest) and ring 2.
fn site_and_ring(index: usize) -> Map<String, Value> {
    let ring = match index {
        i if i < 60 => "internal",
        i if i % 3 == 0 => "1",
        _ => "2",
    };
    let mut tags = Map::new();
    tags.insert("site".into(), json!(format!("quarry-{}", (index / 7) % 3)));
    tags.insert("ring".into(), json!(ring));
    tags
}

#[tokio::test]
async fn rings_go_in_order_and_keep_to_the_site_limit() {
    let (app, prefix) = spawn_pipeline().await;
    let sim = Simulator::start(SimOptions {
        tags: Some(site_and_ring),
        ..sim_options(&app, &prefix, 3000, &["esp32"])
    })
    .await
    .unwrap();
    let firmware = app.upload_esp32("9.1.0").await;
    let job = fleet_job(
        &app,
        &firmware,
        json!({ "plugin": "rollout-rings", "config": {
            "rings": ["internal", { "value": "1", "success_threshold": 100 }, "2"],
            "success_threshold": 100, "max_per_site": 40 } }),
    )
    .await;
    let view = app.json(&format!("/api/v1/jobs/{job}")).await;
    let planned: Vec<(Value, Value)> = view["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["label"].clone(), b["total"].clone()))
        .collect();
    assert_eq!(
        planned,
        [
            (json!("ring internal"), json!(60)),
            (json!("ring 1"), json!(980)),
            (json!("ring 2"), json!(1960)),
        ],
        "the rest group takes nobody and is left out: {view}"
    );

    // Without a list of rings, every value of the tag is one, the most
    // common first: what the plugin sees of the fleet, counted in SQL.
    // (Scheduled years ahead: it is looked at, never run.)
    let by_count = app
        .post_json(
            "/api/v1/jobs",
            &json!({ "firmware_id": firmware["id"], "targets": { "filter": { "tags": { "fleet": "simulated" } } },
                     "start": "2099-01-01T00:00:00Z", "rollout": { "plugin": "rollout-rings" } }),
        )
        .await;
    assert_eq!(by_count.status(), reqwest::StatusCode::CREATED);
    let by_count: Value = by_count.json().await.unwrap();
    let labels: Vec<(Value, Value)> = by_count["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["label"].clone(), b["total"].clone()))
        .collect();
    assert_eq!(
        labels,
        [
            (json!("ring 2"), json!(1960)),
            (json!("ring 1"), json!(980)),
            (json!("ring internal"), json!(60)),
        ],
        "{by_count}"
    );

    // While it runs: never more than 40 devices of one site in flight.
    let started = Instant::now();
    let mut most = 0i64;
    loop {
        let by_site: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT d.tags ->> 'site', count(*) FROM executions e JOIN devices d ON d.id = e.device_id
             WHERE e.job_id = $1::uuid AND e.stage = 'in_flight' GROUP BY 1",
        )
        .bind(&job)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        for (site, n) in &by_site {
            assert!(*n <= 40, "{n} devices of {site:?} in flight at once");
            most = most.max(*n);
        }
        let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
            .bind(&job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if status != "running" && status != "scheduled" {
            assert_eq!(status, "completed");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the rings job still runs after 4 minutes"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(most >= 20, "the site limit was never approached ({most})");

    // Ring by ring: nobody of a ring was sent a command before the ring
    // before it was done.
    let rings: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT b.label, min(e.dispatched_at), max(e.finished_at)
         FROM job_batches b JOIN executions e ON e.job_id = b.job_id AND e.batch_group = b.batch_group
         WHERE b.job_id = $1::uuid GROUP BY b.batch_group, b.label ORDER BY b.batch_group",
    )
    .bind(&job)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rings.len(), 3, "{rings:?}");
    for pair in rings.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "{} started before {} was done: {rings:?}",
            pair[1].0,
            pair[0].0
        );
    }
    let done = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(done["counts"]["done"], 3000, "{done}");
    sim.stop().await;
}

/// The dispatch rate of `job` as it changes, until the job ends: the time
/// each rate came into force.
async fn rates_until_done(app: &TestApp, job: &str) -> Vec<(DateTime<Utc>, Option<i32>)> {
    let started = Instant::now();
    let mut rates: Vec<(DateTime<Utc>, Option<i32>)> = Vec::new();
    loop {
        let (status, rate, now): (String, Option<i32>, DateTime<Utc>) =
            sqlx::query_as("SELECT status, dispatch_rate, now() FROM jobs WHERE id = $1::uuid")
                .bind(job)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if rates.last().map(|(_, r)| *r) != Some(rate) {
            rates.push((now, rate));
        }
        if status != "running" && status != "scheduled" {
            assert_eq!(status, "completed", "{rates:?}");
            return rates;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "{rates:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_exponential_rate_grows_by_its_factor_across_two_replicas() {
    let (app, prefix) = spawn_pipeline().await;
    // A second replica dispatching for the same job: the rate is the
    // job's, not each replica's.
    let database_url = app.database_url.clone();
    let second_prefix = prefix.clone();
    let store = app.store_url.clone();
    let replica = spawn_app_with(move |s| {
        s.database_url = Some(database_url.into());
        s.bootstrap_token = None;
        s.mqtt_url = Some(mqtt_url().into());
        s.topic_prefix = second_prefix;
        s.mqtt_dropped_topic = Some(rollway::mqtt::MOSQUITTO_DROPPED_TOPIC.into());
        // The same object store: devices download from either.
        s.store = store;
    })
    .await;
    let sim = Simulator::start(sim_options(&app, &prefix, 400, &["esp32"]))
        .await
        .unwrap();
    let firmware = app.upload_esp32("9.2.0").await;
    // 5 a second, then 10 after 60 successes, then at most 15.
    let job = fleet_job(
        &app,
        &firmware,
        json!({ "plugin": "rollout-exponential", "config": {
            "base_per_minute": 300, "increment_factor": 2, "increase_every": 60,
            "max_per_minute": 900 } }),
    )
    .await;
    let rates = rates_until_done(&app, &job).await;
    let in_force: Vec<Option<i32>> = rates.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        in_force,
        [None, Some(300), Some(600), Some(900)],
        "{rates:?}"
    );
    let sent: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT dispatched_at FROM executions WHERE job_id = $1::uuid ORDER BY dispatched_at",
    )
    .bind(&job)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let end = *sent.last().unwrap();
    // Each rate, measured over its time in force (its first second left
    // out: the bucket starts empty and rounds are 250 ms apart).
    for (i, (from, rate)) in rates.iter().enumerate().skip(1) {
        let rate = f64::from(rate.unwrap());
        let until = rates.get(i + 1).map_or(end, |(at, _)| *at);
        let from = *from + chrono::Duration::seconds(1);
        let seconds = (until - from).num_milliseconds() as f64 / 1000.0;
        if seconds < 3.0 {
            continue;
        }
        let n = sent.iter().filter(|t| **t >= from && **t < until).count() as f64;
        let measured = n / seconds * 60.0;
        assert!(
            (measured - rate).abs() <= rate * 0.1,
            "{measured:.0} a minute measured while {rate} was in force ({n} in {seconds:.1} s): {rates:?}"
        );
    }
    // Never above the maximum: in any twenty seconds, at most twenty
    // seconds' worth and the bucket's two.
    for (i, first) in sent.iter().enumerate() {
        let within = sent[i..]
            .iter()
            .take_while(|t| **t < *first + chrono::Duration::seconds(20))
            .count();
        assert!(
            within as f64 <= 900.0 / 60.0 * 22.0,
            "{within} sent in the twenty seconds from {first}"
        );
    }
    let by: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT dispatched_by, count(*) FROM executions WHERE job_id = $1::uuid GROUP BY 1",
    )
    .bind(&job)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(by.len(), 2, "both replicas dispatched: {by:?}");
    sim.stop().await;
    drop(replica);
}

#[tokio::test]
async fn flash_failures_abort_an_exponential_job_and_power_failures_do_not() {
    let rollout = json!({ "plugin": "rollout-exponential", "config": {
        "base_per_minute": 6000, "max_per_minute": 6000,
        "abort": [{ "class": "flash", "threshold_percent": 15, "min_finished": 40 }] } });
    let mut outcomes = BTreeMap::new();
    for failure in [
        "flash: write failed at 0x08004000 (simulated)",
        "power: battery at 10.9 V (simulated)",
    ] {
        let (app, prefix) = spawn_pipeline().await;
        let sim = Simulator::start(SimOptions {
            fail_rate: 0.3,
            failure: failure.into(),
            ..sim_options(&app, &prefix, 200, &["esp32"])
        })
        .await
        .unwrap();
        let firmware = app.upload_esp32("9.3.0").await;
        let job = fleet_job(&app, &firmware, rollout.clone()).await;
        let view = wait_for(
            &app,
            &job,
            &["completed", "failed", "paused"],
            Duration::from_secs(120),
        )
        .await;
        let event: Option<Value> = sqlx::query_scalar(
            "SELECT payload FROM event_outbox WHERE event_type = 'job.status.changed'
               AND payload ->> 'job_id' = $1 AND payload ->> 'to' = 'failed'",
        )
        .bind(&job)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        outcomes.insert(
            failure.split(':').next().unwrap().to_owned(),
            (
                view["status"].clone(),
                event.map(|e| e["failure_class"].clone()),
            ),
        );
        sim.stop().await;
    }
    assert_eq!(
        outcomes["flash"],
        (json!("failed"), Some(json!("flash"))),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes["power"],
        (json!("completed"), None),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_strategy_of_wit_0_1_2_runs_unchanged() {
    let (app, prefix) = spawn_pipeline().await;
    let uploaded =
        crate::plugins::upload_plugin(&app, crate::plugins::fixture("legacy_rollout_plugin.wasm"))
            .await;
    assert_eq!(uploaded.status(), reqwest::StatusCode::CREATED);
    let plugin = crate::plugins::plugin(&app, "rollout-halves").await;
    assert_eq!(
        (&plugin["wit_version"], &plugin["plans_by_attributes"]),
        (&json!("0.1.2"), &json!(false)),
        "{plugin}"
    );
    let sim = Simulator::start(sim_options(&app, &prefix, 40, &["esp32"]))
        .await
        .unwrap();
    let firmware = app.upload_esp32("9.4.0").await;
    let job = fleet_job(&app, &firmware, json!({ "plugin": "rollout-halves" })).await;
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    let halves: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT size, label FROM job_batches WHERE job_id = $1::uuid ORDER BY batch_group",
    )
    .bind(Uuid::parse_str(&job).unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(halves, [(20, None), (20, None)]);
    sim.stop().await;
}

/// The decisions of a timeline or of `job.rollout.decision` events that
/// are not waits, by name.
fn acts<'a>(decisions: impl Iterator<Item = &'a Value>) -> Vec<String> {
    decisions
        .filter_map(|d| d["decision"].as_str())
        .filter(|d| *d != "wait")
        .map(str::to_owned)
        .collect()
}

async fn dry_run(app: &TestApp, plugin: &str, body: Value) -> (reqwest::StatusCode, Value) {
    let response = app
        .post_json(&format!("/api/v1/plugins/{plugin}/simulate"), &body)
        .await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_dry_run_foretells_the_real_job_decision_for_decision() {
    let (app, prefix) = spawn_pipeline().await;
    // The same seed fails the same devices in the fleet and in the dry run.
    let (seed, rate) = (11, 0.15);
    let sim = Simulator::start(SimOptions {
        fail_rate: rate,
        seed: Some(seed),
        ..sim_options(&app, &prefix, 300, &["esp32"])
    })
    .await
    .unwrap();
    let firmware = app.upload_esp32("9.5.0").await;
    let rollout = json!({ "plugin": "rollout-percent", "config": {
        "batches": [10, 40, 70, 100], "success_threshold": 80, "failure_threshold": 20 } });
    let jobs_before = app.json("/api/v1/jobs").await["items"]
        .as_array()
        .unwrap()
        .len();

    // A job not created yet: planned as it would be, then forgotten.
    let (status, planned) = dry_run(
        &app,
        "rollout-percent",
        json!({ "fleet": { "job": { "firmware_id": firmware["id"],
                    "targets": { "filter": { "tags": { "fleet": "simulated" } } } } },
                "config": rollout["config"], "fail_rates": { "flash": rate }, "seed": seed }),
    )
    .await;
    assert_eq!(status, 200, "{planned}");
    let sizes: Vec<u64> = planned["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [30, 90, 90, 90], "{planned}");
    assert_eq!(planned["devices"], 300);
    assert_eq!(
        app.json("/api/v1/jobs").await["items"]
            .as_array()
            .unwrap()
            .len(),
        jobs_before,
        "a dry run keeps nothing"
    );

    // The real job, and the dry run of its own plan: the strategy decides
    // the same, step by step.
    let job = fleet_job(&app, &firmware, rollout).await;
    let (status, foretold) = dry_run(
        &app,
        "rollout-percent",
        json!({ "fleet": { "job_id": job }, "fail_rates": { "flash": rate }, "seed": seed }),
    )
    .await;
    assert_eq!(status, 200, "{foretold}");
    let view = wait_for(
        &app,
        &job,
        &["completed", "failed", "paused"],
        Duration::from_secs(180),
    )
    .await;
    let decisions: Vec<Value> = sqlx::query_scalar(
        "SELECT payload -> 'decision' FROM event_outbox
         WHERE event_type = 'job.rollout.decision' AND aggregate_id = $1 ORDER BY id",
    )
    .bind(&job)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let real = acts(decisions.iter());
    let dry = acts(
        foretold["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["decision"]),
    );
    assert_eq!(dry, real, "dry run {foretold}\nreal job {view}");
    assert!(
        dry.iter().filter(|d| *d == "start-next-batch").count() >= 2,
        "{dry:?}"
    );
    let outcome = foretold["outcome"].as_str().unwrap();
    assert_eq!(outcome, view["status"], "{foretold}");
    if outcome == "completed" {
        // Every device ended as foretold.
        let done = |v: &Value| v.as_u64().unwrap();
        assert_eq!(
            done(&foretold["counts"]["succeeded"]),
            done(&view["counts"]["done"]),
            "{foretold}\n{view}"
        );
        assert_eq!(
            foretold["counts"]["failures"]["flash"], view["counts"]["error"],
            "{foretold}\n{view}"
        );
    }
    sim.stop().await;

    // A synthetic fleet: the same inputs, the same timeline; a failing
    // fleet is stopped where the strategy says.
    let body = json!({ "fleet": { "devices": 500 }, "config": { "batches": [10, 100] },
                       "fail_rates": { "flash": 0.4, "power": 0.1 }, "seed": 3 });
    let (status, first) = dry_run(&app, "rollout-percent", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = dry_run(&app, "rollout-percent", body).await;
    assert_eq!(first, again);
    assert_eq!(first["outcome"], "failed", "{first}");
    assert_eq!(
        acts(
            first["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| &s["decision"])
        ),
        ["start-next-batch", "abort"]
    );
    let failures = &first["steps"].as_array().unwrap().last().unwrap()["counts"]["failures"];
    assert!(failures["flash"].as_u64().unwrap() > failures["power"].as_u64().unwrap());

    // What a dry run refuses, and why.
    for (plugin, body, status, field) in [
        (
            "rollout-percent",
            json!({ "fleet": { "devices": 10 }, "fail_rates": { "flash": 0.7, "power": 0.5 } }),
            422,
            "fail_rates",
        ),
        (
            "rollout-percent",
            json!({ "fleet": { "devices": 10 }, "config": { "batches": [50] } }),
            422,
            "config",
        ),
        (
            "rollout-percent",
            json!({ "fleet": { "job_id": job }, "config": {} }),
            422,
            "config",
        ),
        (
            "device-esp32",
            json!({ "fleet": { "devices": 10 } }),
            422,
            "name",
        ),
        (
            "rollout-nothing",
            json!({ "fleet": { "devices": 10 } }),
            404,
            "",
        ),
        (
            "rollout-percent",
            json!({ "fleet": { "devices": 10, "job_id": job } }),
            422,
            "",
        ),
    ] {
        let (got, problem) = dry_run(&app, plugin, body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        if !field.is_empty() {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }

    // The CLI prints the timeline.
    let run = crate::cli::operator(
        &app,
        &[
            "plugin",
            "simulate",
            "rollout-percent",
            "--devices",
            "200",
            "--fail-rate",
            "flash=0.5",
            "--seed",
            "5",
        ],
    )
    .await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("rollout-percent over 200 devices (seed 5)")
            && run.stdout.contains("start group 0")
            && run.stdout.contains("failed after"),
        "{}",
        run.stdout
    );
}

//! The update path under attack: a man in the middle on the MQTT network
//! tampers with commands, swaps them between devices, holds them back, or
//! points devices at a server sending endless data, and the simulated
//! devices (which check manifests as SECURITY.md asks of device agents)
//! refuse each, visibly in the job. Anti-rollback on both sides, admin
//! approved downgrades, and signing key rotation.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use reqwest::{Method, StatusCode};
use rollway::sim::{SimOptions, Simulator};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem, spawn_app_with};
use crate::pipeline::{
    mqtt_url, sim_options, spawn_pipeline, test_client_options, wait_for, wait_until,
};

/// Sits between the host's topics and the devices': statuses pass
/// unchanged, commands come to the test, which delivers what it likes.
struct Mitm {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<(String, Value)>,
    device_prefix: String,
}

impl Mitm {
    async fn start(host_prefix: &str) -> Self {
        let device_prefix = format!("m{}", Uuid::new_v4().simple());
        let (client, mut eventloop) = AsyncClient::new(test_client_options("mitm"), 1000);
        let (tx, commands) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (host, device) = (host_prefix.to_owned(), device_prefix.clone());
        let forwarder = client.clone();
        let subscriptions = [
            format!("{host}/+/update/command"),
            format!("{device}/+/update/status"),
        ];
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut acks = 0;
            loop {
                let Ok(event) = eventloop.poll().await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                match event {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        for topic in &subscriptions {
                            let _ = forwarder.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        acks += 1;
                        if acks == subscriptions.len()
                            && let Some(ready) = ready.take()
                        {
                            let _ = ready.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(publish)) => {
                        let parts: Vec<&str> = publish.topic.split('/').collect();
                        let (Some(prefix), Some(who)) = (parts.first(), parts.get(1)) else {
                            continue;
                        };
                        if *prefix == device {
                            let topic = format!("{host}/{who}/update/status");
                            let _ = forwarder.try_publish(
                                topic,
                                QoS::AtLeastOnce,
                                false,
                                publish.payload.to_vec(),
                            );
                        } else if let Ok(command) = serde_json::from_slice(&publish.payload) {
                            let _ = tx.send(((*who).to_owned(), command));
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("the relay subscribes")
            .unwrap();
        Self {
            client,
            commands,
            device_prefix,
        }
    }

    /// The next `n` commands, by device.
    async fn take(&mut self, n: usize) -> HashMap<String, Value> {
        let mut taken = HashMap::new();
        while taken.len() < n {
            let (device, command) =
                tokio::time::timeout(Duration::from_secs(30), self.commands.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{} of {n} commands came", taken.len()))
                    .unwrap();
            taken.insert(device, command);
        }
        taken
    }

    async fn deliver(&self, device: &str, command: &Value) {
        self.client
            .publish(
                format!("{}/{device}/update/command", self.device_prefix),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(command).unwrap(),
            )
            .await
            .unwrap();
    }

    fn sim_options(&self, app: &TestApp, prefix: &str, devices: u32) -> SimOptions {
        SimOptions {
            id_prefix: prefix.to_owned(),
            interruptions: 0.0,
            ..sim_options(app, &self.device_prefix, devices, &["esp32"])
        }
    }
}

fn device(prefix: &str, i: usize) -> String {
    format!("{prefix}ESP32-{i:06}")
}

/// One batch, never aborted: every device's outcome is seen.
fn one_batch_job(firmware: &Value, prefix: &str) -> Value {
    json!({
        "firmware_id": firmware["id"],
        "targets": { "filter": { "tags": { "fleet": "simulated" } } },
        "rollout": { "plugin": "rollout-percent", "config": { "batches": [100], "failure_threshold": 100 } },
        "name": prefix,
    })
}

async fn create(app: &TestApp, body: &Value) -> String {
    let response = app.post_json("/api/v1/jobs", body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Each execution's (status, last error) by device, once the job ended.
async fn outcomes(app: &TestApp, job: &str) -> HashMap<String, (String, String)> {
    wait_for(
        app,
        job,
        &["completed", "failed", "cancelled"],
        Duration::from_secs(90),
    )
    .await;
    let page: Value = app
        .get(&format!("/api/v1/jobs/{job}/executions?limit=100"))
        .await
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["device_id"].as_str().unwrap().to_owned(),
                (
                    e["status"].as_str().unwrap().to_owned(),
                    e["last_error"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect()
}

fn assert_refused(outcomes: &HashMap<String, (String, String)>, device: &str, reason: &str) {
    let (status, error) = &outcomes[device];
    assert_eq!(status, "error", "{device}: {outcomes:#?}");
    assert!(
        error.contains(reason),
        "{device} failed with '{error}', expected '{reason}'"
    );
}

/// A server that answers every request with endless bytes.
async fn endless_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async {
        let chunk = bytes::Bytes::from(vec![0u8; 64 * 1024]);
        axum::body::Body::from_stream(futures::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/firmware.bin")
}

#[tokio::test]
async fn devices_refuse_tampered_swapped_and_endless_updates() {
    let (app, host_prefix) = spawn_pipeline().await;
    let mut mitm = Mitm::start(&host_prefix).await;
    let sim = Simulator::start(mitm.sim_options(&app, "SEC-", 6))
        .await
        .unwrap();
    let firmware = app.upload_esp32("7.0.0").await;
    let job = create(&app, &one_batch_job(&firmware, "tampered")).await;
    let mut commands = mitm.take(6).await;
    let d: Vec<String> = (0..6).map(|i| device("SEC-", i)).collect();

    // d0: one signed byte changed.
    let c = commands.get_mut(&d[0]).unwrap();
    let tampered = c["manifest"].as_str().unwrap().replace("7.0.0", "7.0.1");
    c["manifest"] = tampered.into();
    // d1, d2: each gets the other's (valid) manifest.
    let (m1, s1) = (
        commands[&d[1]]["manifest"].clone(),
        commands[&d[1]]["signature"].clone(),
    );
    let (m2, s2) = (
        commands[&d[2]]["manifest"].clone(),
        commands[&d[2]]["signature"].clone(),
    );
    commands.get_mut(&d[1]).unwrap()["manifest"] = m2;
    commands.get_mut(&d[1]).unwrap()["signature"] = s2;
    commands.get_mut(&d[2]).unwrap()["manifest"] = m1;
    commands.get_mut(&d[2]).unwrap()["signature"] = s1;
    // d3: a download link to endless data.
    commands.get_mut(&d[3]).unwrap()["firmware"]["url"] = endless_server().await.into();
    // d4: re-signed by a key of the attacker's.
    let attacker = SigningKey::from_bytes(&[7u8; 32]);
    let c = commands.get_mut(&d[4]).unwrap();
    let forged = c["manifest"].as_str().unwrap().to_owned();
    c["signature"] = base64::engine::general_purpose::STANDARD
        .encode(attacker.sign(forged.as_bytes()).to_bytes())
        .into();
    c["key_id"] = "0123456789abcdef".into();
    // d5: passed on untouched.
    for (device, command) in &commands {
        mitm.deliver(device, command).await;
    }

    let outcomes = outcomes(&app, &job).await;
    assert_refused(&outcomes, &d[0], "manifest signature rejected");
    assert_refused(
        &outcomes,
        &d[1],
        &format!("manifest is for {}, not {}", d[2], d[1]),
    );
    assert_refused(
        &outcomes,
        &d[2],
        &format!("manifest is for {}, not {}", d[1], d[2]),
    );
    assert_refused(&outcomes, &d[3], "download exceeds the manifest's size");
    assert_refused(&outcomes, &d[4], "untrusted key '0123456789abcdef'");
    assert_eq!(outcomes[&d[5]].0, "done", "{outcomes:#?}");
    let truth = sim.truth.snapshot();
    assert_eq!(truth[&d[5]].version.as_deref(), Some("7.0.0"));
    assert!(d[..5].iter().all(|d| truth[d].version.is_none()));
    sim.stop().await;
}

#[tokio::test]
async fn a_held_back_command_expires() {
    let prefix = format!("t{}", Uuid::new_v4().simple());
    let topic_prefix = prefix.clone();
    let app = spawn_app_with(move |s| {
        s.mqtt_url = Some(mqtt_url().into());
        s.topic_prefix = topic_prefix;
        s.manifest_ttl = Some(Duration::from_secs(2));
    })
    .await;
    let mut mitm = Mitm::start(&prefix).await;
    let sim = Simulator::start(mitm.sim_options(&app, "FRZ-", 1))
        .await
        .unwrap();
    let firmware = app.upload_esp32("7.1.0").await;
    let job = create(&app, &one_batch_job(&firmware, "frozen")).await;
    let commands = mitm.take(1).await;
    let (device, command) = commands.iter().next().unwrap();
    let manifest: Value = serde_json::from_str(command["manifest"].as_str().unwrap()).unwrap();
    let expires: chrono::DateTime<chrono::Utc> =
        manifest["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires <= chrono::Utc::now() + chrono::Duration::seconds(3));
    // A freeze attack: the command arrives after its manifest expired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    mitm.deliver(device, command).await;
    let outcomes = outcomes(&app, &job).await;
    assert_refused(&outcomes, device, "manifest expired");
    sim.stop().await;
}

async fn upload_with_counter(app: &TestApp, version: &str, counter: i64) -> Value {
    let image = crate::images::esp32(crate::images::ESP32S3, version, 2048);
    let response = app
        .post_bytes(
            &format!("/api/v1/firmware?family=esp32&version={version}&security_counter={counter}"),
            image,
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["security_counter"], counter, "{body}");
    body
}

#[tokio::test]
async fn rollbacks_are_refused_unless_an_admin_allows_the_downgrade() {
    let (app, prefix) = spawn_pipeline().await;
    // The device was flashed at the workshop with counter 5 and does not
    // announce it: the host does not know it.
    let sim = Simulator::start(SimOptions {
        id_prefix: "RB-".into(),
        security_counter: 5,
        // An agent that does not say what it runs when it connects.
        presence: false,
        ..sim_options(&app, &prefix, 1, &["esp32"])
    })
    .await
    .unwrap();
    let dev = device("RB-", 0);

    // The device is the last line of defence.
    let old = upload_with_counter(&app, "8.0.0", 3).await;
    let job = create(&app, &one_batch_job(&old, "old")).await;
    let outcome = outcomes(&app, &job).await;
    assert_refused(
        &outcome,
        &dev,
        "rollback refused: security counter 3 is below the installed 5",
    );

    // A newer image installs; the host learns the device's counter.
    let new = upload_with_counter(&app, "8.2.0", 7).await;
    let job = create(&app, &one_batch_job(&new, "new")).await;
    assert_eq!(outcomes(&app, &job).await[&dev].0, "done");
    let seen: Value = app
        .get(&format!("/api/v1/devices/{dev}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["security_counter"], 7, "{seen}");
    assert_eq!(seen["firmware_version"], "8.2.0", "{seen}");

    // Going back is refused at job creation, for operators and admins alike.
    let back = upload_with_counter(&app, "8.1.0", 6).await;
    let allow = format!(
        "/api/v1/firmware/{}/allow-downgrade",
        back["id"].as_str().unwrap()
    );
    let refused = app
        .post_json("/api/v1/jobs", &one_batch_job(&back, "back"))
        .await;
    let problem = assert_problem(refused, StatusCode::CONFLICT, "rollback-refused").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{dev} (7)")),
        "{problem}"
    );
    let operator = app.token("operator").await;
    let denied = app
        .request_as(&operator, Method::POST, &allow)
        .json(&json!({ "reason": "trust me" }))
        .send()
        .await
        .unwrap();
    assert_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;
    let no_reason = app.post_json(&allow, &json!({ "reason": "  " })).await;
    assert_problem(no_reason, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    // An admin allows it, with a reason; the manifest then says so and the
    // device accepts it.
    let allowed = app
        .post_json(
            &allow,
            &json!({ "reason": "8.2 drains the battery on rev B boards" }),
        )
        .await;
    assert_eq!(allowed.status(), StatusCode::OK);
    let allowed: Value = allowed.json().await.unwrap();
    assert_eq!(
        allowed["downgrade_allowed_by"], "token:bootstrap",
        "{allowed}"
    );
    let job = create(&app, &one_batch_job(&back, "back")).await;
    assert_eq!(outcomes(&app, &job).await[&dev].0, "done");
    assert_eq!(sim.truth.snapshot()[&dev].version.as_deref(), Some("8.1.0"));
    let audit: Value = app
        .get(&format!(
            "/api/v1/audit?target_type=firmware&target_id={}",
            back["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let entry = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "firmware.allow_downgrade")
        .unwrap_or_else(|| panic!("no audit entry: {audit}"));
    assert_eq!(
        entry["details"]["reason"],
        "8.2 drains the battery on rev B boards"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_trusted_through_its_endorsement() {
    let (app, prefix) = spawn_pipeline().await;
    let sim = Simulator::start(SimOptions {
        id_prefix: "KR-".into(),
        ..sim_options(&app, &prefix, 1, &["esp32"])
    })
    .await
    .unwrap();
    let before: Value = app.get("/api/v1/signing-keys").await.json().await.unwrap();
    let old = before["signing_key_id"].as_str().unwrap().to_owned();

    let operator = app.token("operator").await;
    let denied = app
        .request_as(&operator, Method::POST, "/api/v1/signing-keys/rotate")
        .send()
        .await
        .unwrap();
    assert_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;
    let rotated = app
        .request(Method::POST, "/api/v1/signing-keys/rotate")
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::CREATED);
    let rotated: Value = rotated.json().await.unwrap();
    let new = rotated["id"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["endorsed_by"], old.as_str());
    let after: Value = app.get("/api/v1/signing-keys").await.json().await.unwrap();
    assert_eq!(after["signing_key_id"], new.as_str());
    assert_eq!(after["keys"].as_array().unwrap().len(), 2, "{after}");

    // The device learns the new key from the list, trusting it because the
    // old key endorsed it, and installs what it signed.
    let firmware = app.upload_esp32("9.0.0").await;
    let job = create(&app, &one_batch_job(&firmware, "rotated")).await;
    let outcome = outcomes(&app, &job).await;
    assert_eq!(outcome[&device("KR-", 0)].0, "done", "{outcome:#?}");

    // The signing key cannot be retired; the old one can, and is gone.
    let active = app
        .request(Method::DELETE, &format!("/api/v1/signing-keys/{new}"))
        .send()
        .await
        .unwrap();
    assert_problem(active, StatusCode::CONFLICT, "conflict").await;
    let retired = app
        .request(Method::DELETE, &format!("/api/v1/signing-keys/{old}"))
        .send()
        .await
        .unwrap();
    assert_eq!(retired.status(), StatusCode::NO_CONTENT);
    let after: Value = app.get("/api/v1/signing-keys").await.json().await.unwrap();
    let ids: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [new.as_str()]);
    let audit: Value = app
        .get("/api/v1/audit?target_type=signing_key")
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"signing_key.rotate"), "{audit}");
    assert!(actions.contains(&"signing_key.retire"), "{audit}");
    sim.stop().await;
}

#[tokio::test]
async fn guessing_tokens_is_throttled() {
    let app = spawn_app_with(|s| s.auth_failure_limit = 3).await;
    // No token at all is not a guess.
    for _ in 0..5 {
        let anonymous = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    }
    for i in 0..3 {
        let guess = app
            .request_as(&format!("rw_guess{i}"), Method::GET, "/api/v1/me")
            .send()
            .await
            .unwrap();
        assert_problem(guess, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    }
    // Past the limit the address is refused, even with a valid token,
    // until its minute ends.
    for token in ["rw_guess4", app.admin_token.as_str()] {
        let refused = app
            .request_as(token, Method::GET, "/api/v1/me")
            .send()
            .await
            .unwrap();
        let wait: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "retry after {wait}");
        assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "too-many-requests").await;
    }
    assert_eq!(
        crate::helpers::metric(&app, "api_errors_total", &[("type", "too-many-requests")]).await,
        2.0
    );
}

/// Runs a command of the test's setup, failing the test if it fails.
fn run(dir: &std::path::Path, program: &str, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate authority and a broker certificate for 127.0.0.1.
fn certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        &ec[..],
        &["-x509", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"],
    ];
    run(
        dir,
        "openssl",
        &[
            &["req"][..],
            &ca.concat(),
            &["-subj", "/CN=Rollway test CA"],
        ]
        .concat(),
    );
    run(
        dir,
        "openssl",
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "broker.key",
                "-out",
                "broker.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(
        dir,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "broker.crt",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    );
}

/// A device's own MQTT connection over TLS.
fn device_client(
    port: u16,
    ca: &[u8],
    user: &str,
    password: &str,
) -> (AsyncClient, rumqttc::EventLoop) {
    rollway::mqtt::tls_provider();
    let mut options = MqttOptions::new(
        format!("{user}-{}", Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options.set_credentials(user, password);
    options.set_transport(rumqttc::Transport::tls(ca.to_vec(), None, None));
    AsyncClient::new(options, 100)
}

#[tokio::test]
async fn mqtt_over_tls_with_credentials_and_acls() {
    let dir = crate::helpers::temp_dir("mqtt-tls");
    certificates(&dir);
    let prefix = format!("t{}", Uuid::new_v4().simple());
    run(
        &dir,
        "mosquitto_passwd",
        &["-b", "-c", "passwd", "rollway-host", "host-secret"],
    );
    for device in ["TLS-1", "TLS-2"] {
        run(
            &dir,
            "mosquitto_passwd",
            &["-b", "passwd", device, "device-secret"],
        );
    }
    // The ACLs of docs/BROKER-ACL.md.
    std::fs::write(
        dir.join("acl"),
        format!(
            "user rollway-host\ntopic write {prefix}/+/update/command\ntopic read {prefix}/+/update/status\n\
             topic read {prefix}/+/presence\ntopic read $SYS/broker/publish/messages/dropped\n\n\
             pattern read {prefix}/%u/update/command\npattern write {prefix}/%u/update/status\n\
             pattern write {prefix}/%u/presence\n"
        ),
    )
    .unwrap();
    let d = dir.display();
    let _broker = crate::procs::mosquitto_with(&dir, |port| {
        format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/acl\n\
             listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/broker.crt\nkeyfile {d}/broker.key\n"
        )
    })
    .await;
    let port = _broker.port;
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();

    // A wrong password is refused.
    let (_, mut intruder) = device_client(port, &ca, "TLS-1", "guess");
    let refused = loop {
        match intruder.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => panic!("connected: {ack:?}"),
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    assert!(
        matches!(
            refused,
            rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword
                    | rumqttc::ConnectReturnCode::NotAuthorized
            )
        ),
        "{refused:?}"
    );

    let (url, ca_file, topic_prefix) = (
        format!("mqtts://rollway-host:host-secret@127.0.0.1:{port}"),
        dir.join("ca.crt"),
        prefix.clone(),
    );
    let app = spawn_app_with(move |s| {
        s.mqtt_url = Some(url.into());
        s.mqtt_ca_file = Some(ca_file);
        s.topic_prefix = topic_prefix;
    })
    .await;
    app.register(json!([
        { "id": "TLS-1", "family": "esp32", "model": "esp32s3" },
        { "id": "TLS-2", "family": "esp32", "model": "esp32s3" },
    ]))
    .await;

    // TLS-1 listens on its own command topic, and tries TLS-2's.
    let (client, mut events) = device_client(port, &ca, "TLS-1", "device-secret");
    let (tx, mut commands) = mpsc::unbounded_channel::<(String, Value)>();
    let subscriber = client.clone();
    let own = format!("{prefix}/TLS-1/update/command");
    let other = format!("{prefix}/TLS-2/update/command");
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let mut acks = 0;
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    for topic in [&own, &other] {
                        subscriber
                            .subscribe(topic.clone(), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    acks += 1;
                    if acks == 2 {
                        let _ = subscribed_tx.take().map(|tx| tx.send(()));
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), serde_json::from_slice(&p.payload).unwrap()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), subscribed)
        .await
        .expect("the device subscribes")
        .unwrap();

    let firmware = app.upload_esp32("9.9.0").await;
    let job = create(
        &app,
        &json!({
            "firmware_id": firmware["id"],
            "targets": { "devices": ["TLS-1", "TLS-2"] },
            "rollout": { "plugin": "rollout-percent", "config": { "batches": [100], "failure_threshold": 100 } },
        }),
    )
    .await;
    let (topic, command) = tokio::time::timeout(Duration::from_secs(30), commands.recv())
        .await
        .expect("the host's command reaches the device over TLS")
        .unwrap();
    assert_eq!(topic, format!("{prefix}/TLS-1/update/command"));
    let execution = command["execution_id"].as_i64().unwrap();
    let publish = |device: &str, state: &str, execution: i64| {
        let (client, topic) = (client.clone(), format!("{prefix}/{device}/update/status"));
        let body = json!({ "message_id": format!("{execution}-{state}"), "state": state, "execution_id": execution });
        async move {
            client
                .publish(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&body).unwrap(),
                )
                .await
                .unwrap()
        }
    };
    // TLS-1 also claims TLS-2's update done, on TLS-2's topic: the broker
    // drops it.
    let page: Value = app
        .get(&format!("/api/v1/jobs/{job}/executions"))
        .await
        .json()
        .await
        .unwrap();
    let other_execution = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["device_id"] == "TLS-2")
        .and_then(|e| e["id"].as_i64())
        .unwrap();
    publish("TLS-2", "done", other_execution).await;
    publish("TLS-1", "init", execution).await;
    publish("TLS-1", "done", execution).await;

    let view = wait_until(&app, &job, Duration::from_secs(30), |view| {
        view["counts"]["done"] == 1
    })
    .await;
    let counts = &view["counts"];
    assert_eq!(counts["dispatched"], 1, "TLS-2 still waits: {counts}");
    // TLS-2's command never reached TLS-1, nor its forged status the host.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view: Value = app.json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(view["counts"]["done"], 1, "{view}");
    while let Ok((topic, _)) = commands.try_recv() {
        assert!(!topic.contains("TLS-2"), "TLS-1 read {topic}");
    }

    // TLS-1 says what it runs on its presence topic, and claims TLS-2's
    // on TLS-2's: the broker drops the second.
    for device in ["TLS-2", "TLS-1"] {
        client
            .publish(
                format!("{prefix}/{device}/presence"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&json!({ "state": "online", "installed_version": "9.9.0-tls" }))
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    loop {
        let seen: Value = app.get("/api/v1/devices/TLS-1").await.json().await.unwrap();
        if seen["installed_version"] == "9.9.0-tls" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other: Value = app.get("/api/v1/devices/TLS-2").await.json().await.unwrap();
    assert_eq!(other["installed_version"], Value::Null, "{other}");
}

#[tokio::test]
async fn postgres_over_tls_only() {
    let dir = crate::helpers::temp_dir("pg-tls");
    let postgres = rollway::up::PrivatePostgres::start(&dir).unwrap();
    postgres.ensure_database().await.unwrap();
    let url = secrecy::ExposeSecret::expose_secret(&postgres.database_url()).to_owned();
    let data = dir.join("postgres");
    certificates(&dir);
    for (from, to) in [("broker.crt", "server.crt"), ("broker.key", "server.key")] {
        std::fs::copy(dir.join(from), data.join(to)).unwrap();
        run(&data, "chmod", &["600", to]);
        if rollway::settings::is_root() {
            run(&data, "chown", &["postgres:postgres", to]);
        }
    }
    // TLS on, and every TCP connection must use it.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    for statement in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(statement).execute(&mut admin).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plain =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{url}?sslmode=disable")).await;
    assert!(plain.is_err(), "a connection without TLS was accepted");

    let ca = dir.join("ca.crt");
    let tls_url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let app = spawn_app_with(move |s| s.database_url = Some(tls_url.into())).await;
    app.register(json!([{ "id": "PGTLS-1", "family": "esp32", "model": "esp32s3" }]))
        .await;
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(encrypted);
}

#[tokio::test]
async fn an_operator_given_signing_key_is_imported_once() {
    let dir = crate::helpers::temp_dir("keyfile");
    let (first, second) = (dir.join("first.key"), dir.join("second.key"));
    std::fs::write(&first, hex::encode([9u8; 32])).unwrap();
    std::fs::write(&second, [0xfe; 32]).unwrap();
    let id =
        |seed: u8| rollway::signing::key_id(&SigningKey::from_bytes(&[seed; 32]).verifying_key());

    let path = first.clone();
    let app = spawn_app_with(move |s| s.signing_key_file = Some(path)).await;
    let keys: Value = app.get("/api/v1/signing-keys").await.json().await.unwrap();
    assert_eq!(keys["signing_key_id"], id(9), "{keys}");
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "{keys}");

    // A new key file on the next start: a rotation, endorsed by the first.
    let (database_url, path) = (app.database_url.clone(), second.clone());
    let next = spawn_app_with(move |s| {
        s.database_url = Some(database_url.into());
        s.bootstrap_token = None;
        s.signing_key_file = Some(path);
    })
    .await;
    let keys: Value = next.json_as(&app.admin_token, "/api/v1/signing-keys").await;
    assert_eq!(keys["signing_key_id"], id(0xfe), "{keys}");
    assert_eq!(keys["keys"][0]["endorsed_by"], id(9), "{keys}");

    // The first file again is stale: the host refuses to start with it.
    let mut settings = rollway::Settings::load(&rollway::settings::SettingsArgs {
        database_url: Some(app.database_url.clone()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .unwrap();
    settings.signing_key_file = Some(first);
    let refused = rollway::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{refused:#}").contains("rotated away"),
        "{refused:#}"
    );
}

//! `rollway plugin check <file.wasm>`: loads a plugin with production
//! limits, prints what it is, and exercises it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::dry_run;
use super::runtime::{ImageSource, Limits};
use super::strategy::FailureClass;
use super::{
    CancelRequest, CommandRequest, DeviceInfo, FirmwareRef, PluginKind, PluginRegistry,
    PluginSource,
};
use crate::metrics::Metrics;

/// How the synthetic rollout behaves.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub devices: u32,
    pub failure_rate: f64,
    pub config: String,
    /// Images a device plugin's `validate-image` must accept.
    pub images: Vec<PathBuf>,
}

/// Prints the verdict to stdout; returns whether the plugin passed.
pub fn check_file(path: &Path, options: &CheckOptions) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let registry = PluginRegistry::new(Metrics::new()?, Limits::default())?;
    let plugin = match registry.load(&bytes, PluginSource::Directory) {
        Ok(plugin) => plugin,
        Err(error) => {
            println!("FAIL {}: {error}", path.display());
            return Ok(false);
        }
    };
    println!("plugin:      {} {}", plugin.name, plugin.version);
    println!(
        "compiled:    {:.2} s{}",
        plugin.compile_time.as_secs_f64(),
        match plugin.compiled {
            super::Compiled::FromCache => " (from the compile cache)",
            _ => "",
        }
    );
    println!("description: {}", plugin.description);
    println!(
        "world:       rollway:plugin/{}@{}",
        match (plugin.kind, plugin.reports_attempts()) {
            (PluginKind::Rollout, _) if plugin.plans_by_attributes() => "rollout-strategy-rules",
            (PluginKind::Rollout, _) if plugin.config_schema().is_some() => {
                "rollout-strategy-settings"
            }
            (PluginKind::Rollout, _) => "rollout-strategy",
            (PluginKind::Device, true) => "device-protocol-attempts",
            (PluginKind::Device, false) => "device-protocol",
        },
        plugin.wit_version
    );
    println!("sha256:      {}", plugin.sha256);
    if plugin.kind == PluginKind::Device && !plugin.reports_attempts() {
        println!(
            "note:        statuses do not name their attempt; build against the world \
             device-protocol-attempts (WIT 0.1.1) so that late statuses of earlier attempts are refused"
        );
    }
    if plugin.kind == PluginKind::Device && plugin.reports_attempts() && !plugin.takes_batches() {
        println!(
            "note:        one status or command per call; build against WIT 0.1.2, whose \
             device-protocol-attempts world exports batch, for a fresh instance per batch instead"
        );
    }
    if plugin.kind == PluginKind::Device && plugin.reports_attempts() && !plugin.parses_presence() {
        println!(
            "note:        presence messages are read as Rollway's standard JSON; build against \
             WIT 0.1.3, whose device-protocol-attempts world exports presence, to parse your devices' own"
        );
    }
    if plugin.kind == PluginKind::Device
        && plugin.reports_attempts()
        && !plugin.reports_every_state()
    {
        println!(
            "note:        devices cannot report waiting or cancelled; build against WIT 0.1.4, \
             whose device-protocol-attempts world exports control, so that they can"
        );
    }
    if plugin.kind == PluginKind::Device && plugin.reports_attempts() && !plugin.sends_cancels() {
        println!(
            "note:        devices are not told when their update is cancelled; build against \
             WIT 0.1.5, whose device-protocol-attempts world exports cancels, so that they are"
        );
    }
    if plugin.kind == PluginKind::Device && plugin.reports_attempts() && !plugin.inspects_images() {
        println!(
            "note:        images' security counters are read from a 'security_counter' detail; \
             build against WIT 0.1.6, whose device-protocol-attempts world exports inspect, \
             to say them in a field of their own"
        );
    }
    if plugin.kind == PluginKind::Rollout && !plugin.plans_by_attributes() {
        println!(
            "note:        plans by a count and sees counts only; build against WIT 0.1.8, whose \
             rollout-strategy-rules world exports strategy, to plan by device attributes and \
             weigh failure classes, timings, windows and a dispatch rate"
        );
    }
    if plugin.kind == PluginKind::Device
        && plugin.reports_attempts()
        && !plugin.classifies_failures()
    {
        println!(
            "note:        every failure its devices report counts as 'other'; build against \
             WIT 0.1.8, whose device-protocol-attempts world exports failures, to classify them"
        );
    }
    match plugin.config_schema() {
        Some(schema) => println!(
            "settings:    a JSON Schema of {} properties ({}); configurations are checked against it",
            schema.json["properties"].as_object().map_or(0, |p| p.len()),
            schema.json["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ),
        None => println!(
            "note:        no JSON Schema of its configuration; export settings (WIT 0.1.7, the \
             {} world) so that the host checks configurations against it and the dashboard \
             draws a form",
            match plugin.kind {
                PluginKind::Rollout => "rollout-strategy-settings",
                PluginKind::Device => "device-protocol-attempts",
            }
        ),
    }
    let kind = plugin.kind;
    let plugin = registry.admit(plugin).map_err(|e| anyhow::anyhow!("{e}"))?;
    let result = match kind {
        PluginKind::Rollout if !options.images.is_empty() => Err(anyhow::anyhow!(
            "--image is for device plugins; this is a rollout strategy"
        )),
        PluginKind::Rollout => check_rollout(&registry, &plugin.name, options),
        PluginKind::Device => check_device(&registry, &plugin.families, options),
    };
    match result {
        Ok(()) => {
            println!("OK");
            Ok(true)
        }
        Err(error) => {
            println!("FAIL: {error:#}");
            Ok(false)
        }
    }
}

fn check_rollout(
    registry: &PluginRegistry,
    name: &str,
    options: &CheckOptions,
) -> anyhow::Result<()> {
    registry.validate_rollout_config(name, &options.config)?;
    println!("validate-config: ok ({})", options.config);
    let plugin = registry.rollout_plugin(name)?;
    // A synthetic fleet of devices without attributes: only groups that
    // select anyone take devices.
    let groups = registry.plan_groups_with(
        &plugin,
        &options.config,
        &dry_run::synthetic_population(options.devices),
    )?;
    let fleet = dry_run::synthetic_fleet(options.devices, &groups);
    let sizes: Vec<usize> = fleet.iter().map(|g| g.devices.len()).collect();
    println!(
        "plan: {} devices in {} batches {sizes:?}",
        options.devices,
        sizes.len()
    );
    let outlook = dry_run::Outlook {
        fail_rates: vec![(FailureClass::Other, options.failure_rate)],
        seed: 42,
        update_secs: 30,
        device_timeout_secs: 3600,
        max_retries: 0,
    };
    let timeline = dry_run::run(&fleet, &outlook, 1_700_000_000_000, |situation| {
        registry.decide_with(&plugin, &options.config, situation)
    });
    for step in &timeline.steps {
        let decision = &step.decision;
        let what = match decision["decision"].as_str().unwrap_or_default() {
            "start-next-batch" => format!(
                "start batch {} ({} devices)",
                step.group.unwrap_or_default(),
                step.group
                    .and_then(|g| sizes.get(g as usize))
                    .copied()
                    .unwrap_or_default()
            ),
            "wait" => format!("wait {} ms (×{})", decision["ms"], step.evaluations),
            "set-rate" => format!("set rate {} a minute", decision["per_minute"]),
            "pause" | "abort" => format!(
                "{}: {}",
                decision["decision"].as_str().unwrap_or_default(),
                decision["reason"].as_str().unwrap_or_default()
            ),
            other => other.to_owned(),
        };
        println!("t+{:>5}s  {what}", step.at_secs.round());
    }
    match timeline.outcome.as_str() {
        "completed" => {
            println!(
                "complete: {} of {} succeeded",
                timeline.counts.succeeded, options.devices
            );
            Ok(())
        }
        "unfinished" => anyhow::bail!(
            "the rollout neither completed nor stopped after {} evaluations",
            timeline.evaluations
        ),
        _ => Ok(()),
    }
}

/// An image file, read in pieces as the plugin asks.
struct FileImage {
    file: std::fs::File,
    size: u64,
}

impl ImageSource for FileImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        let len = u64::from(len).min(self.size.saturating_sub(offset));
        let mut buffer = vec![0; len as usize];
        self.file
            .read_exact_at(&mut buffer, offset)
            .map_err(|e| e.to_string())?;
        Ok(buffer)
    }
}

fn check_device(
    registry: &PluginRegistry,
    families: &[String],
    options: &CheckOptions,
) -> anyhow::Result<()> {
    let family = families.first().context("the plugin names no family")?;
    println!("families: {}", families.join(", "));
    registry.validate_device_config(family, &options.config)?;
    println!("validate-config: ok ({})", options.config);
    for path in &options.images {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata()?.len();
        let info = registry
            .validate_image(family, &options.config, Arc::new(FileImage { file, size }))
            .with_context(|| format!("validate-image {}", path.display()))?;
        let details: Vec<String> = info
            .details
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "validate-image {}: version {}, target {}{}",
            path.display(),
            info.version.as_deref().unwrap_or("(none)"),
            info.target.as_deref().unwrap_or("(none)"),
            if details.is_empty() {
                String::new()
            } else {
                format!(", {}", details.join(", "))
            }
        );
    }
    for (device, gateway) in [("SAMPLE-1", None), ("SAMPLE-2", Some("GATEWAY-1"))] {
        let request = CommandRequest {
            device: DeviceInfo {
                id: device.into(),
                family: family.clone(),
                model: None,
                gateway_id: gateway.map(Into::into),
                gateway_family: gateway.map(|_| "jetson".into()),
            },
            firmware: FirmwareRef {
                id: "00000000-0000-0000-0000-000000000001".into(),
                version: "1.0.0".into(),
                sha256: "0".repeat(64),
                size: 1024,
                target: None,
            },
            job_id: "00000000-0000-0000-0000-000000000002".into(),
            execution_id: 1,
            attempt: 1,
            download_url: "https://rollway.example/firmware/1".into(),
            manifest: "{}".into(),
            signature: "c2ln".into(),
            key_id: "k1".into(),
        };
        let command = registry.build_command(family, &options.config, &request)?;
        println!(
            "build-command {device}{}: topic {}, {} bytes, QoS {}",
            gateway
                .map(|g| format!(" (behind {g})"))
                .unwrap_or_default(),
            command.topic,
            command.payload.len(),
            command.qos
        );
        if registry
            .device_plugin(family)
            .is_ok_and(|p| p.sends_cancels())
        {
            let cancel = CancelRequest {
                device: request.device.clone(),
                job_id: request.job_id.clone(),
                execution_id: request.execution_id,
                attempt: request.attempt,
                manifest: r#"{"kind":"cancel"}"#.into(),
                signature: "c2ln".into(),
                key_id: "k1".into(),
            };
            let built = registry
                .build_cancels(family, &options.config, std::slice::from_ref(&cancel))
                .into_iter()
                .next()
                .context("build-cancels answered nothing")??;
            println!(
                "build-cancels {device}: topic {}, {} bytes, QoS {}",
                built.topic,
                built.payload.len(),
                built.qos
            );
        }
    }
    let waiting = registry
        .device_plugin(family)
        .is_ok_and(|p| p.reports_every_state());
    let mut samples = vec![
        (
            "downloading",
            r#"{"message_id":"check-1","state":"downloading","progress":50,"execution_id":1,"attempt":1}"#,
        ),
        (
            "done",
            r#"{"message_id":"check-2","state":"done","execution_id":1,"version":"1.0.0"}"#,
        ),
        (
            "error",
            r#"{"message_id":"check-3","state":"error","error":"flash verify failed","execution_id":1}"#,
        ),
    ];
    if waiting {
        samples.push((
            "waiting",
            r#"{"message_id":"check-4","state":"waiting","reason":"engine-running","execution_id":1}"#,
        ));
    }
    for (state, payload) in samples {
        match registry.parse_status(family, &options.config, "SAMPLE-1", payload.as_bytes()) {
            Ok(super::ParsedStatus {
                report,
                state: parsed,
                attempt,
                ..
            }) if parsed.as_str() == state && report.device_id == "SAMPLE-1" => {
                let attempt = attempt
                    .map(|a| format!(", attempt {a}"))
                    .unwrap_or_default();
                println!(
                    "parse-status {state}: ok (message {}{attempt})",
                    report.message_id
                );
            }
            Ok(super::ParsedStatus {
                report,
                state: parsed,
                ..
            }) => anyhow::bail!(
                "parse-status read a standard '{state}' status as '{}' for device {}",
                parsed.as_str(),
                report.device_id
            ),
            Err(super::PluginError::Refused { reason, .. }) => {
                println!(
                    "parse-status {state}: refused the standard JSON status ({reason}); fine if the family has its own format"
                );
            }
            Err(other) => return Err(other.into()),
        }
    }
    let hello = br#"{"state":"online","installed_version":"1.0.0","security_counter":1,"children":[{"device_id":"SAMPLE-2"}]}"#;
    match registry.parse_presence(family, &options.config, "SAMPLE-1", hello) {
        Ok(devices)
            if devices
                .first()
                .is_some_and(|d| d.device_id == "SAMPLE-1" && d.online) =>
        {
            let source = if registry.device_plugin(family)?.parses_presence() {
                "the plugin"
            } else {
                "the host's standard reader"
            };
            println!(
                "parse-presence: ok ({} devices, read by {source})",
                devices.len()
            );
        }
        Ok(devices) => anyhow::bail!(
            "parse-presence did not answer for the sender SAMPLE-1 first, online: {devices:?}"
        ),
        Err(super::PluginError::Refused { reason, .. }) => {
            println!(
                "parse-presence: refused the standard JSON presence ({reason}); fine if the family has its own format"
            );
        }
        Err(other) => return Err(other.into()),
    }
    let garbage = registry.parse_status(
        family,
        &options.config,
        "SAMPLE-1",
        b"\xff\x00 not a status",
    );
    match garbage {
        Err(super::PluginError::Refused { .. }) => {
            println!("parse-status garbage: refused, as it should")
        }
        Ok(_) => println!("parse-status garbage: accepted (check that this is intended)"),
        Err(other) => return Err(other.into()),
    }
    Ok(())
}

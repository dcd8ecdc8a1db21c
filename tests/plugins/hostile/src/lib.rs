//! Test fixture: a rollout plugin whose `validate-config` misbehaves as its
//! configuration asks: `{"mode": "loop" | "bomb" | "panic" | "huge" | "ok"}`;
//! with `"probe"`, `validate-config` refuses and `evaluate` pauses with what
//! the plugin read from the WASI clocks and random interfaces.

wit_bindgen::generate!({ world: "rollout-strategy", path: "../../../wit" });

use exports::rollway::plugin::rollout::{Decision, Guest, Snapshot};
use rollway::plugin::types::PluginInfo;

fn mode(config: &str) -> String {
    serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v.get("mode").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Everything a plugin can read of time and chance, through the standard
/// library and through each WASI interface.
fn probe() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(u128::MAX);
    let started = Instant::now();
    let mut spin: u64 = 0;
    for i in 0..100_000u64 {
        spin = std::hint::black_box(spin ^ i);
    }
    // A sleep far beyond the call's budget: over at once in the sandbox.
    std::thread::sleep(std::time::Duration::from_secs(30));
    let elapsed = started.elapsed().as_nanos();
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (seed_a, seed_b) = wasip2::random::insecure_seed::insecure_seed();
    let hashed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "wall_ms={wall} monotonic_ns={} elapsed_ns={elapsed} random={} insecure={} seed={seed_a:x}{seed_b:x} hash={hashed:x}",
        wasip2::clocks::monotonic_clock::now(),
        hex(wasip2::random::random::get_random_bytes(16)),
        hex(wasip2::random::insecure::get_insecure_random_bytes(16)),
    )
}

struct Hostile;

impl Guest for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: "6.6.6".into(),
            description: "misbehaves on purpose".into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        match mode(&config).as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => {
                eprintln!("hostile: about to panic");
                panic!("hostile plugin panics on purpose")
            }
            "huge" => Err("x".repeat(40 << 20)),
            "probe" => Err(probe()),
            _ => Ok(()),
        }
    }

    fn plan(_config: String, total: u32) -> Result<Vec<u32>, String> {
        Ok(vec![total])
    }

    fn evaluate(config: String, snapshot: Snapshot) -> Result<Decision, String> {
        if mode(&config) == "probe" {
            return Ok(Decision::Pause(format!("{} now={}", probe(), snapshot.now)));
        }
        Ok(Decision::Complete)
    }
}

#[cfg(target_arch = "wasm32")]
export!(Hostile);

//! Test fixture: a rollout plugin whose `validate-config` misbehaves as its
//! configuration asks: `{"mode": "loop" | "bomb" | "panic" | "huge" | "ok"}`.

wit_bindgen::generate!({ world: "rollout-strategy", path: "../../../wit" });

use exports::rollway::plugin::rollout::{Decision, Guest, Snapshot};
use rollway::plugin::types::PluginInfo;

fn mode(config: &str) -> String {
    serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v.get("mode").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default()
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
            _ => Ok(()),
        }
    }

    fn plan(_config: String, total: u32) -> Result<Vec<u32>, String> {
        Ok(vec![total])
    }

    fn evaluate(_config: String, _snapshot: Snapshot) -> Result<Decision, String> {
        Ok(Decision::Complete)
    }
}

#[cfg(target_arch = "wasm32")]
export!(Hostile);

//! Builds the plugins Rollway ships (`plugins/*`) as WebAssembly components
//! and embeds them, so a plain `cargo build` of the host carries them; and
//! lists the dashboard's files (`src/dashboard/assets`) for embedding.
//!
//! The plugins are built by a nested `cargo build --target wasm32-wasip2`
//! into `<target>/wasm-plugins`, apart from the host's own build.

use std::path::{Path, PathBuf};
use std::process::Command;

const SHIPPED: [&str; 6] = [
    "rollout-percent",
    "rollout-exponential",
    "rollout-rings",
    "device-esp32",
    "device-stm32",
    "device-jetson",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-plugins");

    for dir in ["wit", "plugins"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    dashboard_assets(&manifest_dir.join("src/dashboard/assets"), &out_dir);

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for plugin in SHIPPED {
        command.args(["-p", plugin]);
    }
    // The nested build is a plain one: no wrapper (clippy), no host flags.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
    ] {
        command.env_remove(var);
    }
    command
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        // For speed, not size: the guest's own work is a part of every
        // status parsed and command built.
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        // A 128 KiB stack instead of Rust's 1 MiB: a fresh instance starts
        // with 3 pages of linear memory instead of 17, and the host resets
        // less of it after each call (BENCHMARKS.md, item 24).
        .env(
            "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
            "-Clink-arg=-zstack-size=131072",
        );
    let status = command.status().expect("running cargo for the plugins");
    if !status.success() {
        panic!(
            "building the shipped plugins for wasm32-wasip2 failed ({status}); \
             is the target installed? `rustup target add wasm32-wasip2`"
        );
    }
    let built = target_dir.join("wasm32-wasip2/release");
    for plugin in SHIPPED {
        let file = format!("{}.wasm", plugin.replace('-', "_"));
        std::fs::copy(built.join(&file), out_dir.join(&file))
            .unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
}

/// Writes `dashboard_assets.rs`: a `(name, content type, bytes)` entry per
/// file of the dashboard, in name order.
fn dashboard_assets(dir: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut table = String::from("&[\n");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let content_type = match path.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("js" | "mjs") => "text/javascript; charset=utf-8",
            Some("svg") => "image/svg+xml",
            Some("png") => "image/png",
            Some("ico") => "image/x-icon",
            Some("json") => "application/json",
            _ => panic!("dashboard asset {name}: unknown content type"),
        };
        table.push_str(&format!(
            "    ({name:?}, {content_type:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    table.push(']');
    std::fs::write(out_dir.join("dashboard_assets.rs"), table)
        .expect("writing dashboard_assets.rs");
}

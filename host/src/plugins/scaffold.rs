//! `rollway plugin new`: a plugin project that builds on its own, outside
//! this repository, with plain `cargo build --release --target
//! wasm32-wasip2`. It holds its own `Cargo.toml` (no workspace
//! inheritance, `wit-bindgen` pinned to the version the shipped plugins
//! build with), the WIT contract this host implements, the SDK vendored
//! next to it and the template of its kind, renamed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The `wit-bindgen` the shipped plugins build with (a test compares it
/// with `Cargo.lock`).
pub const WIT_BINDGEN: &str = "0.61.1";

const WIT: &str = include_str!("../../../wit/plugin.wit");
const ROLLOUT_TEMPLATE: &str = include_str!("../../../plugins/template-rollout/src/lib.rs");
const DEVICE_TEMPLATE: &str = include_str!("../../../plugins/template-device/src/lib.rs");
const SDK: [(&str, &str); 11] = [
    ("lib.rs", include_str!("../../../plugins/sdk/src/lib.rs")),
    (
        "cancel.rs",
        include_str!("../../../plugins/sdk/src/cancel.rs"),
    ),
    (
        "command.rs",
        include_str!("../../../plugins/sdk/src/command.rs"),
    ),
    (
        "config.rs",
        include_str!("../../../plugins/sdk/src/config.rs"),
    ),
    (
        "device.rs",
        include_str!("../../../plugins/sdk/src/device.rs"),
    ),
    (
        "failure.rs",
        include_str!("../../../plugins/sdk/src/failure.rs"),
    ),
    (
        "image.rs",
        include_str!("../../../plugins/sdk/src/image.rs"),
    ),
    (
        "presence.rs",
        include_str!("../../../plugins/sdk/src/presence.rs"),
    ),
    (
        "rollout.rs",
        include_str!("../../../plugins/sdk/src/rollout.rs"),
    ),
    (
        "status.rs",
        include_str!("../../../plugins/sdk/src/status.rs"),
    ),
    (
        "strategy.rs",
        include_str!("../../../plugins/sdk/src/strategy.rs"),
    ),
];

/// Names Cargo refuses for a package, or that clash with the vendored SDK.
const CARGO_REFUSES: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc-macro",
    "pub",
    "ref",
    "return",
    "rollway-plugin-sdk",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// What a new project implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A rollout strategy (world `rollout-strategy-settings`).
    Rollout,
    /// A device family's protocol (world `device-protocol-attempts`).
    Device,
}

/// Writes a new project for plugin `name` into `dir` (which must not
/// exist or be empty); returns the files written, relative to `dir`.
pub fn create(kind: Kind, name: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !super::valid_name(name) {
        bail!(
            "plugin name '{name}' must be 1 to 64 lowercase letters, digits or '-', starting with a letter"
        );
    }
    if CARGO_REFUSES.contains(&name) {
        bail!(
            "'{name}' cannot name a Cargo package (a Rust keyword, a standard crate or the SDK's own name); choose another, e.g. 'rollout-{name}'"
        );
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", dir.display());
    }
    let files = files(kind, name);
    for (path, contents) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// The project's files and their contents.
fn files(kind: Kind, name: &str) -> Vec<(PathBuf, String)> {
    let (template, template_name, what) = match kind {
        Kind::Rollout => (ROLLOUT_TEMPLATE, "rollout-canary", "rollout strategy"),
        Kind::Device => (DEVICE_TEMPLATE, "device-acme", "device-family protocol"),
    };
    let lib = template
        .replace(r#"path: "../../wit""#, r#"path: "wit""#)
        .replace(
            &format!(r#"name: "{template_name}""#),
            &format!(r#"name: "{name}""#),
        );
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), manifest(name, what)),
        (PathBuf::from("src/lib.rs"), lib),
        (PathBuf::from("wit/plugin.wit"), WIT.to_owned()),
        (PathBuf::from("sdk/Cargo.toml"), sdk_manifest()),
        (PathBuf::from(".gitignore"), "/target\n".to_owned()),
        (PathBuf::from("README.md"), readme(name, what)),
    ];
    files.extend(
        SDK.iter()
            .map(|(file, text)| (Path::new("sdk/src").join(file), (*text).to_owned())),
    );
    files
}

fn manifest(name: &str, what: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
description = "A Rollway {what}"
version = "0.1.0"
edition = "2024"
rust-version = "1.85"
publish = false

[lib]
crate-type = ["cdylib"]

[lints.clippy]
unwrap_used = "deny"
expect_used = "deny"
panic = "deny"

[dependencies]
rollway-plugin-sdk = {{ path = "sdk" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
# The bindings generator of the WIT contract in wit/; keep it pinned.
wit-bindgen = {{ version = "={WIT_BINDGEN}", default-features = false, features = ["macros", "realloc", "std"] }}

# A small component: Rollway compiles each plugin it loads.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# A project of its own, whatever folder it sits in.
[workspace]
"#
    )
}

fn sdk_manifest() -> String {
    format!(
        r#"[package]
name = "rollway-plugin-sdk"
description = "Helpers for writing Rollway plugins (rollout strategies and device families)"
version = "{version}"
edition = "2024"
license = "Apache-2.0"

[lib]
doctest = false

[dependencies]
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
"#,
        version = env!("CARGO_PKG_VERSION")
    )
}

fn readme(name: &str, what: &str) -> String {
    format!(
        r#"# {name}

A Rollway {what}, made by `rollway plugin new`.

- `src/lib.rs`: the plugin. Its logic is plain Rust: `cargo test` runs
  its unit tests natively.
- `wit/plugin.wit`: the contract (`rollway:plugin@{major}.{minor}.{patch}`), every
  function documented.
- `sdk/`: the Rollway plugin SDK, vendored.

Build, check, load:

```sh
rustup target add wasm32-wasip2   # once
cargo build --release --target wasm32-wasip2
rollway plugin check target/wasm32-wasip2/release/{file}.wasm
curl -H "Authorization: Bearer $TOKEN" --data-binary @target/wasm32-wasip2/release/{file}.wasm \
  http://localhost:8080/api/v1/plugins
```
"#,
        major = super::WIT_VERSION.0,
        minor = super::WIT_VERSION.1,
        patch = super::WIT_VERSION.2,
        file = name.replace('-', "_"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_sdk_is_vendored() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/src");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut vendored: Vec<String> = SDK.iter().map(|(file, _)| (*file).to_owned()).collect();
        vendored.sort();
        assert_eq!(
            vendored, files,
            "plugins/sdk/src and the SDK `rollway plugin new` writes"
        );
    }

    #[test]
    fn wit_bindgen_is_the_version_the_shipped_plugins_build_with() {
        let lock = include_str!("../../../Cargo.lock");
        assert!(
            lock.contains(&format!(
                "name = \"wit-bindgen\"\nversion = \"{WIT_BINDGEN}\""
            )),
            "Cargo.lock has no wit-bindgen {WIT_BINDGEN}"
        );
    }

    #[test]
    fn a_project_names_its_plugin_and_reads_its_own_wit() {
        for kind in [Kind::Rollout, Kind::Device] {
            let files = files(kind, "my-plugin");
            let lib = &files
                .iter()
                .find(|(p, _)| p == Path::new("src/lib.rs"))
                .unwrap()
                .1;
            assert!(lib.contains(r#"path: "wit""#), "{kind:?}");
            assert!(lib.contains(r#"name: "my-plugin""#), "{kind:?}");
            let cargo = &files[0].1;
            assert!(!cargo.contains(".workspace"), "{kind:?}");
        }
        let dir = std::env::temp_dir().join(format!("rollway-scaffold-{}", std::process::id()));
        assert!(create(Kind::Rollout, "Bad_Name", &dir).is_err());
        assert!(create(Kind::Device, "test", &dir).is_err());
        assert!(create(Kind::Device, "rollway-plugin-sdk", &dir).is_err());
        assert!(!dir.exists(), "nothing written for a refused name");
    }
}

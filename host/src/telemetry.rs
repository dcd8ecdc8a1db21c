//! Structured logging with `tracing`.

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is not set. The embedded broker of `rollway
/// up` (rumqttd) reports every client disconnection, clean or not, as an
/// error of its `server::broker` module; its router's errors stay visible.
const DEFAULT_FILTER: &str =
    "info,sqlx=warn,tower_http=warn,rumqttd=warn,rumqttd::server::broker=off";

/// Installs the global subscriber; `RUST_LOG` overrides the default filter.
/// Safe to call more than once (later calls are ignored).
pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

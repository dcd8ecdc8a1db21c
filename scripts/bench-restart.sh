#!/usr/bin/env bash
# How long a host takes to start, from exec to a ready /readyz, with the
# Python example strategy (scripts/build-examples.sh, an 18 MB component) in
# ROLLWAY_PLUGINS_DIR: with an empty compile cache (every plugin compiled,
# as on a first start), with the cache an earlier start filled (a
# restart), and without the Python plugin, for reference. Each start is
# `rollway up` on one data directory (its private PostgreSQL started by
# each run alike), stopped before the next. BENCHMARKS.md holds the
# figures.
#
#   scripts/bench-restart.sh [ROUNDS]    ROLLWAY_BIN (default: the release
#                                        build in CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."

ROLLWAY_CACHE=${ROLLWAY_CACHE:-/var/cache/rollway}
rounds=${1:-3}
binary=${ROLLWAY_BIN:-${CARGO_TARGET_DIR:-$ROLLWAY_CACHE/target}/release/rollway}
[ -x "$binary" ] || { echo "bench-restart: no rollway binary at $binary (cargo build --release first)" >&2; exit 2; }

work=$(mktemp -d /tmp/rollway-bench-restart.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
bash scripts/build-examples.sh "$work/examples" >/dev/null
mkdir -p "$work/plugins" "$work/none"
cp "$work/examples/rollout_waves.wasm" "$work/plugins/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# start PLUGINS_DIR CACHE_DIR: seconds from exec to ready, host stopped.
start() {
    local began pid ms
    began=$(date +%s%N)
    env -u KAFKA_BROKERS -u MQTT_URL -u DATABASE_URL -u ROLLWAY_STATUS_SOURCE \
        ROLLWAY_DATA_DIR="$work/data" ROLLWAY_LISTEN="127.0.0.1:$port" \
        ROLLWAY_PLUGINS_DIR="$1" ROLLWAY_PLUGIN_CACHE_DIR="$2" RUST_LOG=warn \
        setsid "$binary" up >>"$work/host.log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$work/host.log" >&2; exit 1; }
        sleep 0.02
    done
    ms=$((($(date +%s%N) - began) / 1000000))
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10))
}

# The data directory's first start (PostgreSQL's initdb, migrations, the
# demo firmware) is not what is measured; it also fills the cache.
start "$work/plugins" "$work/cache" >/dev/null
echo "| round | empty cache | filled cache (restart) | no Python plugin |"
echo "|-------|-------------|------------------------|------------------|"
for round in $(seq "$rounds"); do
    rm -rf "$work/cold"
    cold=$(start "$work/plugins" "$work/cold")
    warm=$(start "$work/plugins" "$work/cache")
    bare=$(start "$work/none" "$work/cache")
    echo "| $round | $cold s | $warm s | $bare s |"
done

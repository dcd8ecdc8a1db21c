#!/usr/bin/env bash
# Makes sure the services Rollway's tests talk to are running on loopback:
# PostgreSQL, Mosquitto, a Kafka-API broker (tansu) and an S3 server that
# checks signatures (s3s-fs). A service already answering is reused; one
# that is missing is installed (Debian packages, crates.io) and started.
# The fault tests also start private Mosquitto and tansu processes from the
# binaries installed here.
#
#   source scripts/services.sh && services_up   # exports the addresses
#   services_down                               # stops what services_up started
#
# Everything installed or kept lives outside the clone, under
# ROLLWAY_CACHE (default /var/cache/rollway).

ROLLWAY_CACHE=${ROLLWAY_CACHE:-/var/cache/rollway}
ROLLWAY_SERVICES_DIR=${ROLLWAY_SERVICES_DIR:-$ROLLWAY_CACHE/services}
export PATH="$HOME/.cargo/bin:$PATH"

_STARTED_PIDS=()
_STARTED_PG=""
_STARTED_BENCH_PG=""

_log() { echo "services: $*" >&2; }

_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_wait_port() {
    local port=$1 name=$2 tries=${3:-100}
    for _ in $(seq "$tries"); do
        _port_open "$port" && return 0
        sleep 0.1
    done
    _log "$name did not open port $port"
    return 1
}

_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

_APT_UPDATED=""
_apt_install() {
    if [ -z "$_APT_UPDATED" ]; then
        _sudo apt-get update -qq >&2
        _APT_UPDATED=1
    fi
    _log "installing $*"
    DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "$@" >&2
}

ensure_build_deps() {
    # librdkafka is built from source by the rdkafka crate (cmake-build).
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    [ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || missing+=(libcurl4-openssl-dev)
    command -v cc >/dev/null || missing+=(build-essential)
    if [ ${#missing[@]} -gt 0 ]; then _apt_install "${missing[@]}"; fi
}

ensure_toolchain() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        _log "adding the wasm32-wasip2 target"
        rustup target add wasm32-wasip2 >&2
    fi
}

_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

ensure_postgres() {
    if [ -n "${ROLLWAY_TEST_DATABASE_URL:-}" ]; then return 0; fi
    if _port_open 5432 && psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
        export ROLLWAY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
        _log "reusing PostgreSQL on 5432"
        return 0
    fi
    local port=55432
    export ROLLWAY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    if _port_open "$port"; then _log "reusing PostgreSQL on $port"; return 0; fi
    [ -n "$(_pg_bin)" ] || _apt_install postgresql
    local bin dir=$ROLLWAY_SERVICES_DIR/postgres
    bin=$(_pg_bin)
    local run=()
    if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir" && chmod 755 "$ROLLWAY_SERVICES_DIR"
    if [ ! -f "$dir/PG_VERSION" ]; then
        "${run[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    "${run[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=off" start >/dev/null
    _STARTED_PG="$bin/pg_ctl -D $dir"
    _log "started PostgreSQL on $port"
}

ensure_mosquitto() {
    # Our own broker, not a system one on 1883, set up as
    # docs/BROKER-ACL.md ("Limits and queues") recommends: a packet limit,
    # queues and in-flight windows far above Mosquitto's defaults (which
    # drop QoS 1 messages past 1000 queued), and persistence for restart
    # tests. The in-flight window bounds a subscriber's rate (window /
    # commit latency, since the host acks after its commit): the
    # benchmarks need it wide.
    if [ -n "${MQTT_URL:-}" ]; then return 0; fi
    local port=18830
    export MQTT_URL="mqtt://127.0.0.1:$port"
    if _port_open "$port"; then _log "reusing the MQTT broker on $port"; return 0; fi
    command -v mosquitto >/dev/null || _apt_install mosquitto mosquitto-clients
    local dir=$ROLLWAY_SERVICES_DIR/mosquitto
    mkdir -p "$dir/data"
    cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
max_inflight_messages 10000
max_packet_size 1048576
persistence true
persistence_location $dir/data/
autosave_interval 1
user root
log_dest file $dir/mosquitto.log
CONF
    setsid mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 &
    _STARTED_PIDS+=($!)
    _wait_port "$port" mosquitto
    _log "started Mosquitto on $port"
}

ensure_s3() {
    local port=19000
    export ROLLWAY_TEST_S3_BUCKET=${ROLLWAY_TEST_S3_BUCKET:-rollway-test}
    export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-rollway-test}
    export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-rollway-test-secret}
    export AWS_REGION=${AWS_REGION:-us-east-1}
    export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://127.0.0.1:$port}
    local dir=$ROLLWAY_SERVICES_DIR/s3
    mkdir -p "$dir/$ROLLWAY_TEST_S3_BUCKET"
    if _port_open "$port"; then _log "reusing the S3 server on $port"; return 0; fi
    if ! command -v s3s-fs >/dev/null; then
        _log "building s3s-fs (once, ~3 min)"
        cargo install s3s-fs@0.14.1 --features binary --locked >&2
    fi
    setsid s3s-fs --host 127.0.0.1 --port "$port" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$dir" \
        >"$ROLLWAY_SERVICES_DIR/s3s-fs.log" 2>&1 &
    _STARTED_PIDS+=($!)
    _wait_port "$port" s3s-fs
    _log "started s3s-fs on $port"
}

ensure_tansu() {
    # tansu with in-memory storage (the shared broker) and SQLite storage
    # (the fault tests' private broker, which must keep its topics across a
    # restart), in a root of its own.
    local root=$ROLLWAY_CACHE/tools/tansu
    export PATH="$root/bin:$PATH"
    if [ ! -x "$root/bin/tansu" ]; then
        _log "building tansu (once, ~20 min)"
        cargo install tansu@0.6.0 --locked --features dynostore,libsql --root "$root" >&2
    fi
}

ensure_kafka() {
    local port=19092
    export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:$port}
    if _port_open "$port"; then _log "reusing the Kafka-API broker on $port"; return 0; fi
    setsid tansu broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$ROLLWAY_SERVICES_DIR/tansu.log" 2>&1 &
    _STARTED_PIDS+=($!)
    _wait_port "$port" tansu 300
    _log "started tansu on $port"
}

ensure_node() {
    local missing=()
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then _apt_install "${missing[@]}"; fi
}

ensure_browser() {
    # The dashboard's browser tests: Debian's Chromium, Node.js, and
    # playwright-core from npm (it drives the installed Chromium; it never
    # downloads a browser).
    command -v chromium >/dev/null || _apt_install chromium
    ensure_node
    export CHROMIUM=${CHROMIUM:-$(command -v chromium)}
    local dir=tests/browser
    if [ ! -f "$dir/node_modules/playwright-core/package.json" ] \
        || ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json"; then
        _log "installing the browser test driver (npm ci)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
}

ensure_bench_postgres() {
    # The benchmarks' own cluster, set up as for a write-heavy server: WAL
    # buffers and checkpoint distance sized for sustained status
    # ingestion. Durability stays as in production (fsync, synchronous
    # commit, full-page writes on). ROLLWAY_BENCH_DATABASE_URL overrides.
    if [ -n "${ROLLWAY_BENCH_DATABASE_URL:-}" ]; then return 0; fi
    local port=55433 dir=$ROLLWAY_SERVICES_DIR/postgres-bench
    export ROLLWAY_BENCH_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    if _port_open "$port"; then _log "reusing the benchmark PostgreSQL on $port"; return 0; fi
    [ -n "$(_pg_bin)" ] || _apt_install postgresql
    local bin run=()
    bin=$(_pg_bin)
    if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir" && chmod 755 "$ROLLWAY_SERVICES_DIR"
    if [ ! -f "$dir/PG_VERSION" ]; then
        "${run[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    "${run[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -o "-c listen_addresses=127.0.0.1 -p $port -k $dir \
        -c max_connections=300 -c shared_buffers=1GB -c wal_buffers=64MB -c max_wal_size=8GB \
        -c checkpoint_timeout=15min -c checkpoint_completion_target=0.9 \
        -c fsync=on -c synchronous_commit=on -c full_page_writes=on" start >/dev/null
    _STARTED_BENCH_PG="$bin/pg_ctl -D $dir"
    _log "started the benchmark PostgreSQL on $port"
}

services_up() {
    mkdir -p "$ROLLWAY_SERVICES_DIR"
    command -v psql >/dev/null || _apt_install postgresql-client
    ensure_build_deps
    ensure_toolchain
    ensure_postgres
    ensure_mosquitto
    ensure_s3
    ensure_tansu
    ensure_kafka
}

services_down() {
    local pid
    for pid in "${_STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    local run=()
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    for pg in "$_STARTED_PG" "$_STARTED_BENCH_PG"; do
        if [ -n "$pg" ]; then
            # shellcheck disable=SC2086
            "${run[@]}" $pg -m fast stop >/dev/null 2>&1 || true
        fi
    done
    return 0
}

#!/usr/bin/env bash
# Fuzzes Rollway's REST API from its own OpenAPI document with schemathesis
# (PyPI), every check on, the stateful phase included, against a running
# `rollway up` (private PostgreSQL, embedded MQTT broker, demo firmware and
# a simulated fleet, so that operations meet real data). Any failure fails
# the run; the report is kept in ROLLWAY_CACHE/artifacts/api-fuzz. An
# exception inside schemathesis itself (its "Runtime Error", no failed
# check) is printed with its traceback and the fuzzing runs once more,
# with another seed, which decides.
#
#   scripts/api-fuzz.sh               ROLLWAY_API_FUZZ_SECONDS (180) of fuzzing
#   ROLLWAY_BIN=path/to/rollway scripts/api-fuzz.sh
#
# tests/api/schemathesis.toml lists what the document cannot state (an
# image's contents, references to records that must exist) and why.
set -euo pipefail
cd "$(dirname "$0")/.."

ROLLWAY_CACHE=${ROLLWAY_CACHE:-/var/cache/rollway}
source scripts/pip-tool.sh
ensure_pip_tool schemathesis 4.32.5
venv=$ROLLWAY_CACHE/schemathesis

binary=${ROLLWAY_BIN:-${CARGO_TARGET_DIR:-$ROLLWAY_CACHE/target}/debug/rollway}
[ -x "$binary" ] || { echo "api-fuzz: no rollway binary at $binary (build it first)" >&2; exit 2; }

data=$(mktemp -d /tmp/rollway-api-fuzz.XXXXXX)
chmod 755 "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="rw_apifuzz_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
report=$ROLLWAY_CACHE/artifacts/api-fuzz
rm -rf "$report" && mkdir -p "$report"

host_pid=""
stop() {
    if [ -n "$host_pid" ]; then
        kill -INT "$host_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$host_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$host_pid" 2>/dev/null || true
    fi
    cp "$data/host.log" "$report/host.log" 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT

# Failed authentications are part of the run (ignored_auth): no lockout.
# Embedded defaults whatever the caller's environment holds: the test
# services' broker addresses (scripts/services.sh) would point the host at
# a Kafka topic nobody created.
env -u KAFKA_BROKERS -u MQTT_URL -u DATABASE_URL -u ROLLWAY_STATUS_SOURCE \
    ROLLWAY_DATA_DIR=$data ROLLWAY_LISTEN=127.0.0.1:$port ROLLWAY_BOOTSTRAP_TOKEN=$token \
    ROLLWAY_AUTH_FAILURE_LIMIT=0 ROLLWAY_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn,rumqttd=off} \
    setsid "$binary" up --simulate 20 >"$data/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$host_pid" 2>/dev/null || { cat "$data/host.log" >&2; exit 1; }
    sleep 0.1
done

# One schemathesis run: fuzz RUN SEED; its output in $report/RUN/run.txt.
fuzz() {
    echo "api-fuzz: schemathesis against http://127.0.0.1:$port for ${ROLLWAY_API_FUZZ_SECONDS:-180}s (seed $2)" >&2
    mkdir -p "$report/$1"
    "$venv/bin/schemathesis" --config-file tests/api/schemathesis.toml run \
        "http://127.0.0.1:$port/api/v1/openapi.json" \
        --url "http://127.0.0.1:$port" \
        -H "Authorization: Bearer $token" \
        --checks all \
        --phases examples,coverage,fuzzing,stateful \
        --max-time "${ROLLWAY_API_FUZZ_SECONDS:-180}" \
        --workers 2 \
        --request-timeout 20 \
        --report junit,ndjson --report-dir "$report/$1" \
        --seed "$2" \
        >"$report/$1/run.txt" 2>&1
}

# Only schemathesis's own exceptions: errors of its "Runtime Error" kind
# (an exception inside the tool, not an answer of the API) and no failed
# check. Network errors, schema errors and every failure count.
tool_errors_only() {
    local errors
    grep -q '^Failures:' "$1" && return 1
    errors=$(sed -n '/^Errors:/,/^$/p' "$1" | grep -E ': [0-9]+$' || true)
    [ -n "$errors" ] && ! grep -qv 'Runtime Error: ' <<<"$errors"
}

status=0
fuzz 1 "${ROLLWAY_API_FUZZ_SEED:-$RANDOM}" || status=$?
# A failed run prints whole (its errors come before the summary), with
# the tracebacks of the JUnit report.
if [ "$status" = 0 ]; then tail -40 "$report/1/run.txt"; else
    cat "$report/1/run.txt"
    grep -h -A40 '<error' "$report"/1/junit-*.xml 2>/dev/null | head -120 || true
    # A fault of the tool is reported above and gets one more run, with
    # another seed, which decides.
    if tool_errors_only "$report/1/run.txt"; then
        echo "api-fuzz: schemathesis itself failed (above); running it once more" >&2
        status=0
        fuzz 2 "$RANDOM" || status=$?
        if [ "$status" = 0 ]; then tail -40 "$report/2/run.txt"; else
            cat "$report/2/run.txt"
            grep -h -A40 '<error' "$report"/2/junit-*.xml 2>/dev/null | head -120 || true
        fi
    fi
fi
# A server error the checks did not see is still a failure.
if grep '"level":"ERROR"' "$data/host.log" | grep -q '"target":"rollway'; then
    echo "api-fuzz: the host logged errors:" >&2
    grep '"level":"ERROR"' "$data/host.log" | grep '"target":"rollway' | head -20 >&2
    status=1
fi
echo "api-fuzz: report in $report" >&2
exit "$status"

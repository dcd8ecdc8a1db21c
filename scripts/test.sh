#!/usr/bin/env bash
# Runs all of Rollway's tests against real services, installing and starting
# the ones that are not running (see scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROLLWAY_CACHE/target}
mkdir -p "$ROLLWAY_CACHE"

trap services_down EXIT
services_up
ensure_browser
# Screenshots of the browser tests are kept here.
export ROLLWAY_TEST_ARTIFACTS=${ROLLWAY_TEST_ARTIFACTS:-$ROLLWAY_CACHE/artifacts}
mkdir -p "$ROLLWAY_TEST_ARTIFACTS"

# Test databases of earlier runs.
psql "$ROLLWAY_TEST_DATABASE_URL" -tAc \
    "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ';' FROM pg_database WHERE datname LIKE 'rollway_test_%'" \
    | psql "$ROLLWAY_TEST_DATABASE_URL" -q >/dev/null 2>&1 || true

log="$ROLLWAY_CACHE/last-test.log"
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
# The REST API fuzzed from its OpenAPI document by schemathesis, every
# check on, for ROLLWAY_API_FUZZ_SECONDS (180) against a running host.
if [ "$status" = 0 ] && [ $# = 0 ]; then
    bash scripts/api-fuzz.sh 2>&1 | tee -a "$log" || status=$?
fi
# The fuzz smoke run (SECURITY.md): CI sets ROLLWAY_FUZZ_SECONDS; each
# target runs that long from its corpus.
if [ "$status" = 0 ] && [ "${ROLLWAY_FUZZ_SECONDS:-0}" -gt 0 ] && [ $# = 0 ]; then
    bash scripts/fuzz.sh || status=$?
fi
echo "browser test screenshots: $ROLLWAY_TEST_ARTIFACTS"
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"

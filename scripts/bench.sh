#!/usr/bin/env bash
# Builds Rollway and its benchmark suite and runs the benchmarks against the
# real services (PostgreSQL, Mosquitto; see scripts/services.sh), printing a
# table of figures, baselines, ratios and targets. See BENCHMARKS.md.
#
#   ./scripts/bench.sh                       # full sizes, release build
#   ./scripts/bench.sh --quick               # small sizes, debug build (CI smoke test)
#   ./scripts/bench.sh --only ingest,plugins --json results.json
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROLLWAY_CACHE/target}
mkdir -p "$ROLLWAY_CACHE"

trap services_down EXIT
services_up
ensure_bench_postgres
export ROLLWAY_TEST_DATABASE_URL=$ROLLWAY_BENCH_DATABASE_URL

# pgbench (the database's ceiling) comes with the PostgreSQL client.
command -v pgbench >/dev/null || _apt_install postgresql-client

# Benchmark databases of earlier, interrupted runs.
psql "$ROLLWAY_TEST_DATABASE_URL" -tAc \
    "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'rollway_bench_%'" \
    | psql "$ROLLWAY_TEST_DATABASE_URL" -q >/dev/null 2>&1 || true

quick=""
for arg in "$@"; do
    if [ "$arg" = "--quick" ]; then quick=1; fi
done
if [ -n "$quick" ]; then
    # The smoke test reuses the test build (debug profile).
    cargo build --locked -p rollway-host -p rollway-bench
    profile=debug
else
    cargo build --release --locked -p rollway-host -p rollway-bench
    profile=release
fi

export ROLLWAY_BIN="$CARGO_TARGET_DIR/$profile/rollway"
"$CARGO_TARGET_DIR/$profile/rollway-bench" "$@"

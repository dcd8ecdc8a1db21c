#!/usr/bin/env bash
# Compares two `rollway` host binaries on this machine: the same benchmark
# binary runs against each in turn, ROUNDS times (A B A B …), so that the
# drift of a machine over an hour falls on both alike. BENCHMARKS.md's
# before/after figures of a change come from here.
#
#   scripts/bench-ab.sh OLD_ROLLWAY NEW_ROLLWAY [ROUNDS] [--only ingest,dispatch]
#
# Build each side with `cargo build --release -p rollway-host` from its own
# checkout and copy its target/release/rollway aside first; the benchmark
# binary is this checkout's (`cargo build --release -p rollway-bench`), or
# ROLLWAY_BENCH_BIN's when set (a copy built before, so that changes in the
# work tree do not rebuild it).
# Every run's JSON goes to ROLLWAY_CACHE/bench-ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
old=$(realpath "$1")
new=$(realpath "$2")
shift 2
rounds=2
if [ $# -ge 1 ] && [[ "$1" =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
only=(--only ingest,dispatch)
[ $# -ge 1 ] && only=("$@")

source scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROLLWAY_CACHE/target}
trap services_down EXIT
services_up
ensure_bench_postgres
export ROLLWAY_TEST_DATABASE_URL=$ROLLWAY_BENCH_DATABASE_URL
bench=${ROLLWAY_BENCH_BIN:-}
if [ -z "$bench" ]; then
    cargo build --release --locked -p rollway-bench >&2
    bench="$CARGO_TARGET_DIR/release/rollway-bench"
fi
out=$ROLLWAY_CACHE/bench-ab/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
for round in $(seq "$rounds"); do
    for side in old new; do
        binary=$old
        [ "$side" = new ] && binary=$new
        echo "== round $round: $side ($binary)" >&2
        ROLLWAY_BIN=$binary "$bench" "${only[@]}" --json "$out/$side-$round.json" \
            | grep -E '^\| (ingest|dispatch|job-scale|plugins|e2e)' || true
    done
done
echo "JSON of every run: $out" >&2

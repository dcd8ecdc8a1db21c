#!/usr/bin/env bash
# The kill test on its own, repeated: three SIGKILLs of `rollway serve`
# during a 200-device rollout, RUNS times in a row (default 10). CI runs it
# 5 times within scripts/test.sh; this is the longer check of a change to
# dispatch, ingestion or the simulator's downloads.
#
#   scripts/kill-test.sh          10 runs
#   scripts/kill-test.sh 30
set -euo pipefail
cd "$(dirname "$0")/.."
export ROLLWAY_KILL_RUNS=${1:-10}
exec bash scripts/test.sh -p rollway-host --test e2e faults::a_rollout_survives_three_host_kills -- --nocapture

#!/usr/bin/env bash
# First look at Rollway: installs what `rollway up` needs when it is missing
# (the PostgreSQL server programs), builds the host and runs `rollway up`.
# Arguments are passed to `rollway up`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROLLWAY_CACHE/target}
mkdir -p "$ROLLWAY_CACHE" 2>/dev/null || export CARGO_TARGET_DIR=target
if [ -z "${DATABASE_URL:-}" ] && [ -z "$(_pg_bin)" ] && ! command -v initdb >/dev/null; then
    _apt_install postgresql
fi
ensure_build_deps
ensure_toolchain
exec cargo run --locked --bin rollway -- up "$@"

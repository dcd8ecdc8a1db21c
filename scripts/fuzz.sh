#!/usr/bin/env bash
# Runs Rollway's fuzz targets (fuzz/, see SECURITY.md) for a bounded time
# each, starting from their committed corpus.
#
#   scripts/fuzz.sh                 every target, ROLLWAY_FUZZ_SECONDS (60) each
#   scripts/fuzz.sh status 600      one target, ten minutes
#
# cargo-fuzz needs nightly compiler flags (sanitizers, coverage); on the
# stable toolchain RUSTC_BOOTSTRAP=1 allows them for this build only.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run:
# reproduce it with `scripts/fuzz.sh <target>` after fixing, and add the
# input to the corpus.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$HOME/.cargo/bin:$PATH"
ROLLWAY_CACHE=${ROLLWAY_CACHE:-/var/cache/rollway}
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz (once)" >&2
    cargo install cargo-fuzz --locked --version 0.13.2 >&2
fi
export RUSTC_BOOTSTRAP=1
# One build directory per checkout: the fuzz crate and the plugins it links
# are path dependencies, and two checkouts sharing one directory end up
# linking one's plugin SDK against the other's.
checkout=$(pwd -P | sha256sum | cut -c1-12)
export CARGO_TARGET_DIR=${ROLLWAY_FUZZ_TARGET_DIR:-$ROLLWAY_CACHE/fuzz-target/$checkout}

targets=(status esp32_image stm32_image jetson_image)
seconds=${ROLLWAY_FUZZ_SECONDS:-60}
if [ $# -ge 1 ]; then
    targets=("$1")
    seconds=${2:-$seconds}
fi

for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s" >&2
    # The committed corpus is read-only input; new finds go to a scratch
    # directory, so a run leaves the tree clean.
    scratch="$CARGO_TARGET_DIR/corpus/$target"
    mkdir -p "$scratch"
    log="$CARGO_TARGET_DIR/$target.log"
    status=0
    cargo fuzz run --fuzz-dir fuzz "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E "^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|==[0-9]+==ERROR)" "$log" >&2 || true
    if [ "$status" != 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz: $target failed (exit $status); crash inputs are in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "fuzz: no crash in ${targets[*]}" >&2

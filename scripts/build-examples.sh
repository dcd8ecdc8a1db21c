#!/usr/bin/env bash
# Builds the plugins written in other languages than Rust into OUT (default
# $ROLLWAY_CACHE/examples): the Python example strategy (examples/
# rollout-python) and the Python test probe (tests/plugins/python-probe),
# with componentize-py from PyPI, installed once into a virtualenv of the
# cache. The tests call it; plugin authors can read it as a recipe.
#
#   scripts/build-examples.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."

ROLLWAY_CACHE=${ROLLWAY_CACHE:-/var/cache/rollway}
out=${1:-$ROLLWAY_CACHE/examples}
mkdir -p "$out"

source scripts/pip-tool.sh
ensure_pip_tool componentize-py 0.25.1
venv=$ROLLWAY_CACHE/componentize-py

# componentize_python SOURCE_DIR OUTPUT: a rollout strategy whose module is app.py.
componentize_python() {
    local tmp
    tmp=$(mktemp "$out/.$2.XXXXXX")
    "$venv/bin/componentize-py" -d wit -w rollout-strategy componentize -p "$1" app -o "$tmp" >/dev/null
    mv "$tmp" "$out/$2"
}

componentize_python examples/rollout-python rollout_waves.wasm
componentize_python tests/plugins/python-probe python_probe.wasm
echo "$out"

#!/usr/bin/env bash
# Builds the plugins written in other languages than Rust into OUT (default
# $ROLLWAY_CACHE/examples): the Python example strategy (examples/
# rollout-python) and the Python test probe (tests/plugins/python-probe)
# with componentize-py from PyPI, installed once into a virtualenv of the
# cache; the JavaScript example strategy (examples/rollout-js) with
# componentize-js from npm, installed once into the cache. The tests call
# it; plugin authors can read it as a recipe.
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

source scripts/services.sh
ensure_node
COMPONENTIZE_JS_VERSION=0.23.0
js=$ROLLWAY_CACHE/componentize-js
if [ "$(cat "$js/version" 2>/dev/null)" != "$COMPONENTIZE_JS_VERSION" ]; then
    echo "installing componentize-js $COMPONENTIZE_JS_VERSION from npm (once)" >&2
    rm -rf "$js" && mkdir -p "$js"
    npm install --prefix "$js" --no-audit --no-fund --silent \
        "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" >&2
    echo "$COMPONENTIZE_JS_VERSION" >"$js/version"
fi
# The host links WASI 0.2 without wasi:http: the engine's HTTP features off.
tmp=$(mktemp "$out/.rollout_steps.wasm.XXXXXX")
node "$js/node_modules/@bytecodealliance/componentize-js/src/cli.js" examples/rollout-js/strategy.js \
    --wit wit --world-name rollout-strategy --disable http fetch-event -o "$tmp" >/dev/null
mv "$tmp" "$out/rollout_steps.wasm"


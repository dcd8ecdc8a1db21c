# Sourced by scripts that run a Python tool from PyPI.
#
#   ensure_pip_tool PACKAGE VERSION   the tool PACKAGE==VERSION in the
#                                     virtualenv $ROLLWAY_CACHE/PACKAGE,
#                                     installed there once (its binary is
#                                     $ROLLWAY_CACHE/PACKAGE/bin/PACKAGE)
ensure_pip_tool() {
    local venv=${ROLLWAY_CACHE:-/var/cache/rollway}/$1
    if "$venv/bin/$1" --version 2>/dev/null | grep -q "$2"; then
        return 0
    fi
    echo "installing $1 $2 from PyPI (once)" >&2
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q "$1==$2" >&2
}

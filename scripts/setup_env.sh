#!/usr/bin/env bash
# Shared setup for demo.sh and test.sh: everything a fresh machine needs, installed here.
# Idempotent and quick when nothing changed (a stamp records what was installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "PyFed needs Python >= 3.10 (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi

# System tools the tests use: iproute2 (`ip netns`, the LAN test) and openssl (a self-signed
# certificate for the TLS test). Install only what is missing, and only where we may.
missing=""
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing$missing ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null \
        || echo "warning: could not install$missing; the tests that need them will skip" >&2
fi

if [ ! -x .venv/bin/python ]; then
    echo "creating .venv ..."
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.pyfed-installed
want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import pyfed' 2>/dev/null; then
    echo "installing PyFed and its dependencies into .venv (first time: a few minutes) ..."
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test,ray]"
    echo "$want" > "$stamp"
fi
# TensorFlow's C++ start-up chatter hides the output people came for.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

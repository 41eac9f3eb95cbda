#!/usr/bin/env bash
# Run the test suite on a fresh machine: sets up .venv and dependencies, then pytest.
#   scripts/test.sh               # everything
#   scripts/test.sh -k protocol   # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"

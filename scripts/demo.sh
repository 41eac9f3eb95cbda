#!/usr/bin/env bash
# The demo: federated learning on scikit-learn's digits with 3 clients, every party a separate
# process talking over real TCP sockets on 127.0.0.1 (`pyfed experiment`). It prints each
# round's progress and the final test accuracy, then where the TensorBoard logs are.
#   scripts/demo.sh                 # 3 clients, 5 rounds
#   scripts/demo.sh --rounds 10     # any other `pyfed experiment` options
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

LOGDIR=pyfed_logs
echo
echo "== PyFed demo: 1 server + 3 clients as separate processes, digits, 5 rounds =="
echo

# TensorFlow's native start-up lines (oneDNN, CUDA probing) ignore TF_CPP_MIN_LOG_LEVEL in this
# version; filter exactly those out of stderr and let everything else through. With pipefail,
# the command's exit status is kept (the filter itself always succeeds).
tf_noise='^[IWE][0-9]{4} [0-9:. ]+ +[0-9]+ [a-z_]+\.cc:[0-9]+\]|^WARNING: All log messages before absl::InitializeLog|^To enable the following instructions'
{ .venv/bin/pyfed experiment --dataset digits --clients 3 --rounds 5 --logdir "$LOGDIR" \
      --port "${PYFED_PORT:-54321}" "$@" 2>&1 1>&3 3>&- \
  | { grep -Ev "$tf_noise" || true; } >&2; } 3>&1

echo
echo "Done. The TensorBoard logs of every run are in $(pwd)/$LOGDIR/<run>/ (server/ and clients/<name>/)."
echo "Open them with: .venv/bin/tensorboard --logdir $LOGDIR   (then browse http://localhost:6006/)"

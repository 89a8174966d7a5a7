#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv (pinned installs, the FANNG op
# build) and then runs the demo, the tests or a benchmark.
#   ./dev.sh demo            fine-tune, hybrid heads, export, verify (the main job)
#   ./dev.sh test [ARGS]     the test suite (ARGS go to pytest)
#   ./dev.sh bench SCRIPT    a benchmark script under benchmarks/, with its peers installed
#   ./dev.sh setup [SET]     only set up (SET: runtime, test or bench)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
VENV=.venv

setup() {  # $1: runtime | test | bench
  local set=$1
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
  fi
  # Reinstall only when the requirement files changed since the last install.
  local stamp="$VENV/.installed-$set"
  local digest
  digest=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "[setup] installing requirements/$set.txt (pinned)"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
      -r "requirements/$set.txt" -c requirements/constraints.txt
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$digest" > "$stamp"
  fi
  "$VENV/bin/python" -m hybrid_keras.fanng.build --if-stale
}

cmd=${1:-}
shift || true
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
case "$cmd" in
  demo)  setup runtime; exec "$VENV/bin/hybrid-keras" demo "$@" ;;
  test)  setup test; exec "$VENV/bin/python" -m pytest "$@" ;;
  bench) setup bench; script=$1; shift; exec "$VENV/bin/python" "$script" "$@" ;;
  setup) setup "${1:-test}" ;;
  *) echo "usage: ./dev.sh demo | test [pytest args] | bench SCRIPT [args] | setup [runtime|test|bench]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv (pinned installs, the FANNG op
# build) and then runs the demo, the tests or a benchmark.
#   ./dev.sh demo            fine-tune, hybrid heads, export, verify (the main job)
#   ./dev.sh test [ARGS]     the test suite on TensorFlow, JAX and PyTorch (ARGS go to each pytest run)
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

# The test matrix: the whole suite under TensorFlow, then the tests marked
# backend_agnostic under JAX and under PyTorch, each its own pytest process (Keras picks
# its backend once per process). ARGS go to every run. Ends with one line per backend
# and the totals, and fails if any run failed.
test_matrix() {
  local counts rc start line status passed failed errors skipped total_passed=0 total_failed=0 total_skipped=0 failed_runs=0
  local -a summary=()
  counts=$(mktemp)
  for backend in tensorflow jax torch; do
    local -a args=("$@") marker=()
    if [ "$backend" = tensorflow ]; then
      echo "==== [tensorflow] all tests (KERAS_BACKEND=tensorflow) ===="
    else
      marker=(-m backend_agnostic)
      echo "==== [$backend] tests marked backend_agnostic (KERAS_BACKEND=$backend, TensorFlow hidden) ===="
      if ! agnostic_args args "$@"; then
        echo "no backend_agnostic tests in the given test paths"
        summary+=("[$backend] nothing to run: no backend_agnostic tests in the given test paths")
        continue
      fi
    fi
    : > "$counts"
    start=$SECONDS
    rc=0
    HYBRID_KERAS_TEST_COUNTS="$counts" KERAS_BACKEND=$backend \
      "$VENV/bin/python" -m pytest "${marker[@]}" "${args[@]}" || rc=$?
    # pytest exits 5 when it selects no test: fine for a path with no backend_agnostic tests.
    if [ "$rc" -eq 5 ] && [ "$backend" != tensorflow ]; then rc=0; fi
    read -r passed failed errors skipped < <(tail -n 1 "$counts") || true
    passed=${passed:-0} failed=$(( ${failed:-0} + ${errors:-0} )) skipped=${skipped:-0}
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # e.g. a crash or a usage error
    status=ok; [ "$rc" -eq 0 ] || { status="FAILED (pytest exit $rc)"; failed_runs=$((failed_runs + 1)); }
    line="[$backend] $passed passed, $failed failed, $skipped skipped in $((SECONDS - start)) s: $status"
    summary+=("$line")
    total_passed=$((total_passed + passed)) total_failed=$((total_failed + failed))
    total_skipped=$((total_skipped + skipped))
  done
  rm -f "$counts"
  echo "==== summary ===="
  printf '%s\n' "${summary[@]}"
  echo "$total_passed passed, $total_failed failed, $total_skipped skipped"
  [ "$failed_runs" -eq 0 ]
}

# For a JAX/PyTorch run: ARGS less the test files (and FILE::test node ids) with no
# backend_agnostic test; pytest would not find those node ids there, as conftest.py does
# not import such files. Returns 1 when ARGS named test paths and none is left.
agnostic_args() {
  local -n kept=$1
  shift
  local arg named=0 left=0
  kept=()
  for arg in "$@"; do
    if [ -e "${arg%%::*}" ]; then
      named=1
      if [ -f "${arg%%::*}" ] && ! grep -q backend_agnostic "${arg%%::*}"; then continue; fi
      left=1
    fi
    kept+=("$arg")
  done
  [ "$named" -eq 0 ] || [ "$left" -eq 1 ]
}

cmd=${1:-}
shift || true
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
case "$cmd" in
  demo)  setup runtime; exec "$VENV/bin/hybrid-keras" demo "$@" ;;
  test)  setup test; test_matrix "$@" ;;
  bench) setup bench; script=$1; shift; exec "$VENV/bin/python" "$script" "$@" ;;
  setup) setup "${1:-test}" ;;
  *) echo "usage: ./dev.sh demo | test [pytest args] | bench SCRIPT [args] | setup [runtime|test|bench]" >&2; exit 2 ;;
esac

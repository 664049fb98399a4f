#!/usr/bin/env bash
# ./run_local.sh [pipeline flags...]   set up .venv, make sample images, run the job locally
# ./run_local.sh test [pytest args...] set up .venv and run the tests
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.requirements.sha256"

setup_venv() {
  local want
  want=$(sha256sum requirements.lock requirements-test.lock setup.py | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return
  fi
  echo "Setting up $VENV (pinned versions from requirements-test.lock; about a minute)..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements-test.lock
  # (setuptools warns about same-named folders in the working tree: they are the packages.)
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" > "$STAMP"
}

setup_venv
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

if [ "${1:-}" = "test" ]; then
  shift
  # Two test processes (pytest-xdist), each taking whole files in the order tests/conftest.py
  # gives them (longest first; xdist would reorder by test count); TEST_WORKERS=0 runs one.
  if [ "${TEST_WORKERS:-2}" != 0 ]; then
    set -- -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
  fi
  exec "$VENV/bin/python" -m pytest "$@"
fi

SAMPLES=${SAMPLES:-data/sample}
if [ ! -f "$SAMPLES/annotations.json" ]; then
  echo "Generating 24 sample wafer images in $SAMPLES ..." >&2
  "$VENV/bin/python" -m training.generate --output "$SAMPLES" --num_images 24 --seed 7
fi
# The bundled detector declares its own score threshold (models/README.md): no --min_score.
exec "$VENV/bin/python" -m beam_pipeline --input "$SAMPLES/images" --output output/sample \
  --overwrite "$@"

#!/usr/bin/env bash
# One entry point that sets itself up: creates .venv, installs charrnn with its test
# extra, then runs the requested job.
#   ./run.sh demo   train briefly on the default corpus (tinyshakespeare), then print a sample
#   ./run.sh test   run the test suite
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "run.sh: error: charrnn needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Install (editable, so code changes need no reinstall) only when charrnn is missing or
# pyproject.toml changed since the last install: once installed, run.sh works offline.
stamp=.venv/.charrnn-pyproject.sha256
if [ ! -x .venv/bin/charrnn-train ] || ! sha256sum --check --status "$stamp" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
  sha256sum pyproject.toml > "$stamp"
fi

case "${1:-}" in
  demo)
    # Small enough to train in a couple of minutes on a laptop CPU; run it again and it
    # resumes (or, once finished, goes straight to sampling).
    .venv/bin/charrnn-train --run_dir=runs/demo --embedding_dim=64 --rnn_units=256 \
      --learning_rate=0.003 --max_steps=400 --checkpoint_every=100
    .venv/bin/charrnn-sample --run_dir=runs/demo --prime="ROMEO: " --num_chars=500 --temperature=0.5 --seed=0
    echo "As a web page: .venv/bin/charrnn-export --run_dir=runs/demo --export_dir=exports/demo --format=web" \
      "&& python3 -m http.server --directory exports/demo 8000 (then open http://localhost:8000/)"
    ;;
  test)
    tests/web_setup.sh  # Chromium, playwright-core and the web page's runtime packages, for tests/test_web.py
    .venv/bin/ruff check charrnn benchmarks tests  # the lint gate (pyproject.toml's [tool.ruff])
    .venv/bin/mypy                                   # the type gate ([tool.mypy])
    .venv/bin/python -m pytest -q -n auto --dist worksteal tests  # long tests do not pile up on one worker
    ;;
  *)
    echo "usage: ./run.sh demo|test" >&2
    exit 2
    ;;
esac

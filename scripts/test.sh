#!/usr/bin/env bash
# The checks of every change, in the order a reviewer cares about them: formatting, lint (with
# a complexity limit), types, then the whole test suite. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff format --check platform tests bench scripts
.venv/bin/ruff check platform tests bench scripts
.venv/bin/mypy
# --durations: every run, CI's included, ends with the 25 slowest tests (the suite has a time budget).
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"

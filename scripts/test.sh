#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (real slides are read from ../shared/slides).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-browser.sh
.venv/bin/ruff check tileserver sample_data tests benchmarks
.venv/bin/python -m pytest "$@"

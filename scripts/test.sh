#!/usr/bin/env bash
# Set up, lint, type-check, and run the whole test suite (real slides: ../shared/slides).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-browser.sh
scripts/setup-services.sh
.venv/bin/ruff check tileserver sample_data tests benchmarks
.venv/bin/ruff format --check tileserver sample_data tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"

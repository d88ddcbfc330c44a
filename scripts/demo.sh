#!/usr/bin/env bash
# Set up, generate a synthetic Aperio SVS sample slide and describe it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p demo-out
slide=demo-out/sample.svs
[ -f "$slide" ] || .venv/bin/python -m sample_data svs "$slide" --size 8000x6000 --seed 1
.venv/bin/tileserver info "$slide"

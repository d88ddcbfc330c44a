#!/usr/bin/env bash
# Set up, generate a synthetic Aperio SVS sample slide, convert it to an encrypted store.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TILESERVER_HOME=${TILESERVER_HOME:-$PWD/demo-out/home}
mkdir -p demo-out
slide=demo-out/sample.svs
[ -f "$slide" ] || .venv/bin/python -m sample_data svs "$slide" --size 8000x6000 --seed 1
.venv/bin/tileserver info "$slide"
.venv/bin/tileserver keys init
.venv/bin/tileserver convert "$slide" --out demo-out/stores

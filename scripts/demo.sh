#!/usr/bin/env bash
# Set up, generate a synthetic Aperio SVS sample slide, convert it into an encrypted store,
# and serve it over HTTPS on loopback with a one-time login link (Ctrl-C stops the server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-browser.sh --viewer-only
export TILESERVER_HOME=${TILESERVER_HOME:-$PWD/demo-out/home}
port=${PORT:-8443}
ts=.venv/bin/tileserver
mkdir -p demo-out
slide=demo-out/sample.svs
[ -f "$slide" ] || .venv/bin/python -m sample_data svs "$slide" --size 8000x6000 --seed 1
$ts info "$slide"
$ts keys init
$ts convert "$slide" --out demo-out/stores --collection demo --keep-associated
$ts users list | grep -q '^demo-pathologist ' || $ts users add demo-pathologist --url "https://127.0.0.1:$port" > /dev/null
$ts users grant demo-pathologist demo --labels > /dev/null
echo
echo "Open the one-time login link printed below (your browser will warn about the"
echo "self-signed certificate made for this machine: accept it for 127.0.0.1)."
exec $ts serve demo-out/stores --port "$port" --login-link demo-pathologist

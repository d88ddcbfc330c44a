#!/usr/bin/env bash
# Set up, generate a synthetic Aperio SVS sample slide, convert it into an encrypted store,
# and serve it on loopback (Ctrl-C stops the server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TILESERVER_HOME=${TILESERVER_HOME:-$PWD/demo-out/home}
port=${PORT:-8080}
mkdir -p demo-out
slide=demo-out/sample.svs
[ -f "$slide" ] || .venv/bin/python -m sample_data svs "$slide" --size 8000x6000 --seed 1
.venv/bin/tileserver info "$slide"
.venv/bin/tileserver keys init
.venv/bin/tileserver convert "$slide" --out demo-out/stores
id=$(ls demo-out/stores | grep -E '^[0-9a-f]{32}$' | head -n 1)
cat <<MSG

Open in a browser once the server says it is serving:
  http://127.0.0.1:$port/api/slides/$id/thumbnail?max=1024    (thumbnail)
  http://127.0.0.1:$port/deepzoom/$id.dzi                    (DeepZoom descriptor)
  http://127.0.0.1:$port/iiif/3/$id/info.json                (IIIF Image API 3)
  http://127.0.0.1:$port/api/openapi.json                    (REST API)
MSG
exec .venv/bin/tileserver serve demo-out/stores --port "$port"

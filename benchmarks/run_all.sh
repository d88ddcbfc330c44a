#!/usr/bin/env bash
# Regenerate benchmarks/RESULTS.md (and the plots in benchmarks/results/) in one go. Needs a
# quiet machine: about 45 minutes on 2 cores, plus ~10 minutes the first time to generate the
# synthetic slides in benchmarks/.data/. Every load targets 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
py=.venv/bin/python
$py benchmarks/bench_convert.py --size 40000x30000 --repeats 3 "$@"
$py benchmarks/bench_server.py --size 20000x15000 --traces pan,random --concurrency 1,8,32 \
    --max-requests 1500 --max-seconds 30
$py benchmarks/bench_store.py --size 20000x15000 --repeats 15 --rounds 6
$py benchmarks/bench_formats.py --size 20000x15000 --traces pan,random --concurrency 1,8,32 \
    --caches 0 --rounds 7 --max-requests 3000 --max-seconds 30 --pan-centres 4
$py benchmarks/bench_s3.py --size 20000x15000 --convert-size 40000x30000 --convert-repeats 3 \
    --rounds 5 --thumbnails 15 --max-requests 3000
$py benchmarks/bench_detection.py --size 20000x15000 --rounds 6
.venv/bin/pytest benchmarks/bench_kernels.py benchmarks/bench_hot_paths.py --benchmark-only -q \
    -p no:cacheprovider --benchmark-json benchmarks/results/micro.json

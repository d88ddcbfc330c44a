#!/usr/bin/env bash
# What the browser viewer and its tests need beyond scripts/setup.sh, idempotently:
#  - OpenSeadragon from the npm registry, pinned by package-lock.json, into node_modules/
#    (served by `tileserver serve` under /static/vendor/openseadragon/; never committed);
#  - Debian's Chromium for the Playwright tests in tests/viewer (no browser download).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v npm >/dev/null || { echo "setup-browser: npm is required (Node 18+)" >&2; exit 1; }
lock_stamp=node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)
if [ ! -f node_modules/openseadragon/build/openseadragon/openseadragon.min.js ] || [ ! -f "$lock_stamp" ]; then
  echo "setup-browser: installing OpenSeadragon (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  rm -f node_modules/.installed-*
  touch "$lock_stamp"
fi

# The demo needs only the viewer's npm packages; the tests need the browser too.
[ "${1:-}" = "--viewer-only" ] && exit 0

[ -x /usr/bin/chromium ] || scripts/apt-install.sh setup-browser chromium

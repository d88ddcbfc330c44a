#!/usr/bin/env bash
# What the browser viewer and its tests need beyond scripts/setup.sh, idempotently:
#  - the viewers' npm packages, pinned by package-lock.json, into node_modules/ (never
#    committed): OpenSeadragon (served under /static/vendor/openseadragon/) and
#    dicom-microscopy-viewer with dicomweb-client (under /static/vendor/dicom-microscopy-viewer/
#    and /static/vendor/dicomweb-client/, for the DICOMweb compatibility page);
#  - Debian's Chromium for the Playwright tests in tests/viewer (no browser download).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v npm >/dev/null || { echo "setup-browser: npm is required (Node 18+)" >&2; exit 1; }
lock_stamp=node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)
# One file each package serves: a package removed by hand is reinstalled even if the stamp says
# this lock was installed.
served=(
  node_modules/openseadragon/build/openseadragon/openseadragon.min.js
  node_modules/dicom-microscopy-viewer/dist/dynamic-import/dicomMicroscopyViewer.min.js
  node_modules/dicomweb-client/build/dicomweb-client.js
)
missing=0
for file in "${served[@]}"; do [ -f "$file" ] || missing=1; done
if [ "$missing" = 1 ] || [ ! -f "$lock_stamp" ]; then
  echo "setup-browser: installing the viewers' npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  rm -f node_modules/.installed-*
  touch "$lock_stamp"
fi

# The demo needs only the viewer's npm packages; the tests need the browser too.
[ "${1:-}" = "--viewer-only" ] && exit 0

[ -x /usr/bin/chromium ] || scripts/apt-install.sh setup-browser chromium

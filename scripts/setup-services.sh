#!/usr/bin/env bash
# Debian packages the tests start real servers from, idempotently: SoftHSM2 (a PKCS#11 token
# for key-encryption keys). SeaweedFS (S3) and Dask come as Python packages (setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -f /usr/lib/softhsm/libsofthsm2.so ] || scripts/apt-install.sh setup-services softhsm2

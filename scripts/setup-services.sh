#!/usr/bin/env bash
# Debian packages the tests start real servers from, idempotently: SoftHSM2 (a PKCS#11 token
# for key-encryption keys). SeaweedFS (S3) and Dask come as Python packages (setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -f /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-services: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup-services: installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

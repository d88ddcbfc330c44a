#!/usr/bin/env bash
# Debian packages the tests start real servers from, idempotently: SoftHSM2 (a PKCS#11 token
# for key-encryption keys), PostgreSQL (shared server state) and HAProxy (the load balancer
# of the multi-host test); for benchmarks/bench_secure_path.py, lighttpd with its TLS module
# (the static-file comparator) and wrk (the load generator); dicom3tools' dciodvfy validates
# exported DICOM (tests/test_export.py). SeaweedFS (S3) and Dask come as Python packages
# (setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -f /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -x /usr/sbin/lighttpd ] || missing+=(lighttpd)
[ -f /usr/lib/lighttpd/mod_openssl.so ] || missing+=(lighttpd-mod-openssl)
command -v wrk >/dev/null || missing+=(wrk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
[ ${#missing[@]} -eq 0 ] || scripts/apt-install.sh setup-services "${missing[@]}"

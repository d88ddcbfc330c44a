#!/usr/bin/env bash
# Install Debian packages for the set-up scripts: as root with apt-get, or say what to run.
# Usage: scripts/apt-install.sh WHO PACKAGE...   (WHO prefixes the messages)
set -euo pipefail
who=$1
shift
if [ "$(id -u)" -ne 0 ]; then
  echo "$who: missing $*; run: sudo apt-get install -y $*" >&2
  exit 1
fi
echo "$who: installing $* from Debian"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "$@" >/dev/null

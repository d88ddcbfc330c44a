#!/usr/bin/env bash
# Set up, generate a synthetic Aperio SVS sample slide, convert it into an encrypted store,
# and serve it over HTTPS on loopback (Ctrl-C stops the server). Prints the demo
# pathologist's one-time enrolment link (password + authenticator app) and a one-time login
# link. Everything lives in demo-out/ (DEMO_OUT); the demo's home (keys, accounts, audit
# trail) is demo-out/home unless TILESERVER_HOME says otherwise.
#   scripts/demo.sh [--no-setup]     PORT=8443 by default; --no-setup: already set up
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--no-setup" ]; then
  scripts/setup.sh
  scripts/setup-browser.sh --viewer-only
fi
out=${DEMO_OUT:-$PWD/demo-out}
export TILESERVER_HOME=${TILESERVER_HOME:-$out/home}
port=${PORT:-8443}
url="https://127.0.0.1:$port"
user=demo-pathologist
ts=$PWD/.venv/bin/tileserver
mkdir -p "$out"
slide=$out/sample.svs
[ -f "$slide" ] || .venv/bin/python -m sample_data svs "$slide" --size 8000x6000 --seed 1
"$ts" info "$slide"
"$ts" keys init
"$ts" convert "$slide" --out "$out/stores" --collection demo --keep-associated
# A new pathologist gets an enrolment link; one who never finished enrolling gets a fresh one
# (the earlier may have expired); one who enrolled signs in with password and code.
state=$("$ts" users list | awk -v u="$user" '$1 == u { print $3 }')
enrol=""
if [ -z "$state" ]; then
  enrol=$("$ts" users add "$user" --role pathologist --url "$url")
elif [ "$state" = enrolling ]; then
  enrol=$("$ts" users reset "$user" --url "$url")
fi
"$ts" users grant "$user" demo --labels > /dev/null
echo
echo "The demo's home (keys, accounts, audit trail): $TILESERVER_HOME"
if [ -n "$enrol" ]; then
  echo "Set up the demo pathologist: open the $enrol"
  echo "(choose a password, scan the QR code with an authenticator app, enter its code)."
else
  echo "$user has enrolled: sign in at $url/login with the password and authenticator code."
fi
echo "A fresh one-time login link (10 minutes, this machine only), any time:"
printf '  TILESERVER_HOME=%q %q users login-link %s --url %s\n' "$TILESERVER_HOME" "$ts" "$user" "$url"
echo "Your browser will warn about the self-signed certificate made for this machine:"
echo "accept it for 127.0.0.1. Or sign in at once with the one-time login link below."
echo
exec "$ts" serve "$out/stores" --port "$port" --login-link "$user"

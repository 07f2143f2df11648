#!/bin/sh
set -eu
out=${MERCURE_OUT_DIR:-/tmp/output}
for a in "$@"; do printf '%s\n' "$a"; done >"$out/args.txt"
env | sort >"$out/env.txt"
for f in /var/run/secrets/*; do
  [ -f "$f" ] && printf '%s=%s\n' "$(basename "$f")" "$(cat "$f")"
done >"$out/secrets.txt"
ls "${MERCURE_IN_DIR:-/tmp/data}" >"$out/inputs.txt"
id >"$out/id.txt"
# The persistence folder, when Mercure mounts one (a root module without capabilities may not write there).
if [ -n "${MODULE_PERSISTENCE_DIR:-}" ]; then
  ls -ld "$MODULE_PERSISTENCE_DIR" >"$out/persistence.txt"
fi
echo "recorded $# arguments"

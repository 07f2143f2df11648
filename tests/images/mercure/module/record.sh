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
if [ -n "${MODULE_PERSISTENCE_DIR:-}" ]; then
  echo "run" >>"$MODULE_PERSISTENCE_DIR/runs.txt"
  cp "$MODULE_PERSISTENCE_DIR/runs.txt" "$out/persistence.txt"
fi
echo "recorded $# arguments"

